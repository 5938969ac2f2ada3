//! The pieces a webhook is made of: who wrote (`Customer`), what they sent (`InboundMessage`,
//! every type of protocol §2.3) and what became of a business message (`Status`, §2.4). Their
//! JSON is assembled into the envelope by `payload.rs`.

use serde_json::{Value, json};

use super::errors::async_error;

/// A WhatsApp user as the webhook names them.
#[derive(Debug, Clone)]
pub struct Customer {
    /// Empty for a user who hides their number behind a username (§2.5): the webhook then
    /// carries no `from`/`wa_id`, only the business-scoped user id.
    pub wa_id: String,
    pub name: String,
    /// The business-scoped user id (`from_user_id`, `contacts[].user_id`), e.g.
    /// `US.13491208655302741918`.
    pub user_id: Option<String>,
    /// `contacts[].profile.username`.
    pub username: Option<String>,
}

impl Customer {
    pub fn new(wa_id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            wa_id: wa_id.into(),
            name: name.into(),
            user_id: None,
            username: None,
        }
    }

    /// A user who set a username and hides their number: only the business-scoped user id
    /// and the username reach the business; the profile name may be empty.
    pub fn hidden(user_id: impl Into<String>, username: impl Into<String>, name: &str) -> Self {
        Self {
            wa_id: String::new(),
            name: name.into(),
            user_id: Some(user_id.into()),
            username: Some(username.into()),
        }
    }

    /// Adds the business-scoped user id Meta sends next to the number from 2026 on.
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// The id Meta keys this user by towards the business: the number, else the user id.
    pub fn key(&self) -> &str {
        if self.wa_id.is_empty() {
            self.user_id.as_deref().unwrap_or("")
        } else {
            &self.wa_id
        }
    }
}

/// A media object a customer "sent"; see `FakeMeta::add_inbound_media`.
#[derive(Debug, Clone)]
pub struct InboundMedia {
    pub id: String,
    pub mime_type: String,
    pub sha256: String,
}

impl InboundMedia {
    fn object(&self) -> Value {
        json!({"mime_type": self.mime_type, "sha256": self.sha256, "id": self.id})
    }
}

/// One `value.messages[]` entry before it is placed in a payload.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    pub(super) kind: String,
    pub(super) content: Option<Value>,
    pub(super) id: Option<String>,
    pub(super) timestamp: Option<u64>,
    pub(super) context: Option<String>,
    pub(super) errors: Option<Value>,
    /// `context.forwarded` / `context.frequently_forwarded`.
    pub(super) forwarded: Option<&'static str>,
    pub(super) referral: Option<Value>,
}

impl InboundMessage {
    fn new(kind: &str, content: Value) -> Self {
        Self {
            kind: kind.into(),
            content: Some(content),
            id: None,
            timestamp: None,
            context: None,
            errors: None,
            forwarded: None,
            referral: None,
        }
    }

    pub fn text(body: impl Into<String>) -> Self {
        Self::new("text", json!({"body": body.into()}))
    }

    pub fn image(media: &InboundMedia, caption: Option<&str>) -> Self {
        Self::new("image", with_caption(media.object(), caption))
    }

    pub fn video(media: &InboundMedia, caption: Option<&str>) -> Self {
        Self::new("video", with_caption(media.object(), caption))
    }

    pub fn audio(media: &InboundMedia) -> Self {
        Self::new("audio", media.object())
    }

    /// A push-to-talk note: `audio` with `voice: true` (register the media as
    /// `audio/ogg; codecs=opus`, which is what phones record).
    pub fn voice(media: &InboundMedia) -> Self {
        let mut obj = media.object();
        obj["voice"] = json!(true);
        Self::new("audio", obj)
    }

    pub fn document(media: &InboundMedia, filename: &str, caption: Option<&str>) -> Self {
        let mut obj = with_caption(media.object(), caption);
        obj["filename"] = json!(filename);
        Self::new("document", obj)
    }

    pub fn sticker(media: &InboundMedia, animated: bool) -> Self {
        let mut obj = media.object();
        obj["animated"] = json!(animated);
        Self::new("sticker", obj)
    }

    pub fn location(
        latitude: f64,
        longitude: f64,
        name: Option<&str>,
        address: Option<&str>,
    ) -> Self {
        let mut obj = json!({"latitude": latitude, "longitude": longitude});
        if let Some(n) = name {
            obj["name"] = json!(n);
        }
        if let Some(a) = address {
            obj["address"] = json!(a);
        }
        Self::new("location", obj)
    }

    /// A shared contact card with one phone; `contacts` is an array under the `contacts` key.
    pub fn contact_card(formatted_name: &str, phone: &str, wa_id: Option<&str>) -> Self {
        let first = formatted_name
            .split_whitespace()
            .next()
            .unwrap_or(formatted_name);
        let mut phone_obj = json!({"phone": phone, "type": "CELL"});
        if let Some(w) = wa_id {
            phone_obj["wa_id"] = json!(w);
        }
        Self::new(
            "contacts",
            json!([{
                "name": {"formatted_name": formatted_name, "first_name": first},
                "phones": [phone_obj],
            }]),
        )
    }

    pub fn button_reply(id: &str, title: &str) -> Self {
        Self::new(
            "interactive",
            json!({"type": "button_reply", "button_reply": {"id": id, "title": title}}),
        )
    }

    pub fn list_reply(id: &str, title: &str, description: &str) -> Self {
        Self::new(
            "interactive",
            json!({"type": "list_reply",
                   "list_reply": {"id": id, "title": title, "description": description}}),
        )
    }

    /// A template quick-reply tap; Meta always sends these with `context` naming the template
    /// message, so pair it with `replying_to`.
    pub fn button(payload: &str, text: &str) -> Self {
        Self::new("button", json!({"payload": payload, "text": text}))
    }

    /// `emoji: None` is a removed reaction (Meta omits the key).
    pub fn reaction(message_id: &str, emoji: Option<&str>) -> Self {
        let mut obj = json!({"message_id": message_id});
        if let Some(e) = emoji {
            obj["emoji"] = json!(e);
        }
        Self::new("reaction", obj)
    }

    /// A message type the Cloud API cannot represent: no content, an `errors[]` with 131051.
    pub fn unsupported() -> Self {
        Self {
            kind: "unsupported".into(),
            content: None,
            id: None,
            timestamp: None,
            context: None,
            forwarded: None,
            referral: None,
            errors: Some(json!([{
                "code": 131_051,
                "title": "Message type unknown",
                "message": "Message type unknown",
                "error_data": {"details": "Message type is currently not supported."},
            }])),
        }
    }

    /// Any other type (`order`, `system`, `request_welcome`, …) with its object as given.
    pub fn custom(kind: &str, content: Option<Value>) -> Self {
        Self {
            content,
            ..Self::new(kind, Value::Null)
        }
    }

    /// Fixes the wamid instead of generating one (to replay a message Meta already sent).
    pub fn with_id(mut self, wamid: impl Into<String>) -> Self {
        self.id = Some(wamid.into());
        self
    }

    /// Sets `timestamp` (Unix seconds); default is the fake's clock when added to a payload.
    pub fn at(mut self, unix_secs: u64) -> Self {
        self.timestamp = Some(unix_secs);
        self
    }

    /// Adds `context` quoting a business message (`context.from` is the business number).
    pub fn replying_to(mut self, wamid: impl Into<String>) -> Self {
        self.context = Some(wamid.into());
        self
    }

    /// Marks it forwarded (`context.forwarded: true`), or forwarded many times
    /// (`context.frequently_forwarded: true`).
    pub fn forwarded(mut self, frequently: bool) -> Self {
        self.forwarded = Some(if frequently {
            "frequently_forwarded"
        } else {
            "forwarded"
        });
        self
    }

    /// The first message after a click on a click-to-WhatsApp ad: `referral` with the ad's
    /// `source_url`, `source_id`, `source_type: "ad"`, `headline`, `body`, `media_type` and
    /// `ctwa_clid`.
    pub fn from_ad(mut self, source_id: &str, headline: &str, body: &str) -> Self {
        self.referral = Some(json!({
            "source_url": format!("https://fb.me/{source_id}"),
            "source_id": source_id,
            "source_type": "ad",
            "headline": headline,
            "body": body,
            "media_type": "image",
            "image_url": format!("https://scontent.xx.fbcdn.net/{source_id}.jpg"),
            "ctwa_clid": format!("ARAk{source_id}"),
        }));
        self
    }

    /// The notice Meta posts from the old number when a customer changes number: `system`
    /// with `type: "user_changed_number"`, the new `wa_id` and a body naming both.
    pub fn number_changed(name: &str, old: &str, new: &str) -> Self {
        Self::new(
            "system",
            json!({
                "body": format!("{name} changed from {old} to {new}"),
                "wa_id": new,
                "type": "user_changed_number",
            }),
        )
    }

    /// A WhatsApp Flow's submission: `interactive` of type `nfm_reply` with the form's fields
    /// as the JSON string `response_json`.
    pub fn flow_reply(response: &Value) -> Self {
        Self::new(
            "interactive",
            json!({"type": "nfm_reply", "nfm_reply": {
                "response_json": response.to_string(), "body": "Sent", "name": "flow",
            }}),
        )
    }

    /// An order from the catalog: `order` with `catalog_id`, `text` and `product_items[]` of
    /// (`product_retailer_id`, `quantity`, `item_price`, `currency`).
    pub fn order(catalog_id: &str, text: Option<&str>, items: &[(&str, u32, f64, &str)]) -> Self {
        let items: Vec<Value> = items
            .iter()
            .map(|(id, q, price, currency)| {
                json!({"product_retailer_id": id, "quantity": q, "item_price": price, "currency": currency})
            })
            .collect();
        let mut obj = json!({"catalog_id": catalog_id, "product_items": items});
        if let Some(t) = text {
            obj["text"] = json!(t);
        }
        Self::new("order", obj)
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }
}

fn with_caption(mut obj: Value, caption: Option<&str>) -> Value {
    if let Some(c) = caption {
        obj["caption"] = json!(c);
    }
    obj
}

/// One `value.statuses[]` entry.
#[derive(Debug, Clone)]
pub struct Status {
    pub wamid: String,
    pub status: &'static str,
    pub recipient_id: String,
    pub timestamp: Option<u64>,
    pub errors: Option<Value>,
    pub pricing: Option<Value>,
    pub biz_opaque_callback_data: Option<String>,
}

impl Status {
    fn new(wamid: &str, status: &'static str, recipient: &str) -> Self {
        Self {
            wamid: wamid.into(),
            status,
            recipient_id: recipient.into(),
            timestamp: None,
            errors: None,
            pricing: None,
            biz_opaque_callback_data: None,
        }
    }

    /// `sent`, priced as a free in-window service reply (change with `with_pricing`).
    pub fn sent(wamid: &str, recipient: &str) -> Self {
        Self::new(wamid, "sent", recipient).with_pricing("service")
    }

    pub fn delivered(wamid: &str, recipient: &str) -> Self {
        Self::new(wamid, "delivered", recipient).with_pricing("service")
    }

    pub fn read(wamid: &str, recipient: &str) -> Self {
        Self::new(wamid, "read", recipient)
    }

    /// `failed` with one error object of the §2.6 shape for `code`.
    pub fn failed(wamid: &str, recipient: &str, code: u32) -> Self {
        Self::failed_with(wamid, recipient, code, None)
    }

    pub fn failed_with(wamid: &str, recipient: &str, code: u32, details: Option<&str>) -> Self {
        let mut s = Self::new(wamid, "failed", recipient);
        s.errors = Some(json!([async_error(code, details)]));
        s
    }

    /// PMP pricing for a category (`service`, `utility`, `marketing`, `authentication`).
    pub fn with_pricing(mut self, category: &str) -> Self {
        let (billable, kind) = match category {
            "service" => (false, "free_customer_service"),
            _ => (true, "regular"),
        };
        self.pricing = Some(json!({
            "billable": billable, "pricing_model": "PMP", "type": kind, "category": category,
        }));
        self
    }

    pub fn at(mut self, unix_secs: u64) -> Self {
        self.timestamp = Some(unix_secs);
        self
    }

    pub fn with_callback_data(mut self, data: Option<String>) -> Self {
        self.biz_opaque_callback_data = data;
        self
    }
}
