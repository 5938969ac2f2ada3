//! The pieces a webhook is made of: who wrote (`Customer`), what they sent (`InboundMessage`,
//! every type of protocol §2.3) and what became of a business message (`Status`, §2.4). Their
//! JSON is assembled into the envelope by `payload.rs`.

use serde_json::{Value, json};

use super::errors::async_error;

/// A WhatsApp user as the webhook names them.
#[derive(Debug, Clone)]
pub struct Customer {
    pub wa_id: String,
    pub name: String,
}

impl Customer {
    pub fn new(wa_id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            wa_id: wa_id.into(),
            name: name.into(),
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
