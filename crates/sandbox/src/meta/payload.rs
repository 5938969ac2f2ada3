//! Webhook envelopes exactly as Meta shapes them (protocol §2.2–§2.6): the
//! `whatsapp_business_account` envelope, string timestamps, bare-digit numbers, `contacts[]` next
//! to `messages[]`, and Meta's byte encoding (non-ASCII and `/` escaped), so a product that hashes
//! re-serialized JSON instead of the raw body fails here as it would in production.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use super::{
    errors::async_error,
    messages::{Customer, InboundMessage, Status},
};

/// An inbound message placed in a payload: what the fake must remember once it is delivered.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub wamid: String,
    pub wa_id: String,
    pub timestamp: u64,
}

/// A whole webhook POST: one or more entries, each with one or more `changes[]`.
#[derive(Debug, Clone)]
pub struct WebhookPayload {
    waba_id: String,
    metadata: Value,
    business_number: String,
    now: u64,
    entries: Vec<Vec<Value>>,
    inbound: Vec<InboundRecord>,
}

impl WebhookPayload {
    /// Usually obtained from `WebhookSender::payload`, which fills in the fake's own ids.
    pub fn new(waba_id: &str, phone_number_id: &str, display_phone_number: &str, now: u64) -> Self {
        Self {
            waba_id: waba_id.into(),
            metadata: json!({
                "display_phone_number": display_phone_number,
                "phone_number_id": phone_number_id,
            }),
            business_number: display_phone_number.into(),
            now,
            entries: vec![Vec::new()],
            inbound: Vec::new(),
        }
    }

    /// The business number the payload is for (`metadata.phone_number_id`).
    pub fn phone_number_id(&self) -> &str {
        self.metadata["phone_number_id"].as_str().unwrap_or("")
    }

    /// Adds a change with `messages[]` from one customer and its `contacts[]` entry.
    pub fn messages(
        mut self,
        from: &Customer,
        messages: impl IntoIterator<Item = InboundMessage>,
    ) -> Self {
        let mut out = Vec::new();
        for m in messages {
            let wamid = m.id.clone().unwrap_or_else(|| wamid(from.key(), true));
            let ts = m.timestamp.unwrap_or(self.now);
            let mut obj = json!({"id": wamid, "timestamp": ts.to_string(), "type": m.kind});
            if !from.wa_id.is_empty() {
                obj["from"] = json!(from.wa_id);
            }
            if let Some(user_id) = &from.user_id {
                obj["from_user_id"] = json!(user_id);
            }
            if let Some(ctx) = &m.context {
                obj["context"] = json!({"from": self.business_number, "id": ctx});
            }
            if let Some(flag) = m.forwarded {
                obj["context"][flag] = json!(true);
            }
            if let Some(referral) = m.referral {
                obj["referral"] = referral;
            }
            if let Some(content) = m.content {
                obj[m.kind.as_str()] = content;
            }
            if let Some(errors) = m.errors {
                obj["errors"] = errors;
            }
            self.inbound.push(InboundRecord {
                wamid,
                wa_id: from.key().to_string(),
                timestamp: ts,
            });
            out.push(obj);
        }
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": self.metadata,
            "contacts": [contact(from)],
            "messages": out,
        });
        self.push_change(value)
    }

    /// Shorthand for one message.
    pub fn message(self, from: &Customer, message: InboundMessage) -> Self {
        self.messages(from, [message])
    }

    /// Adds a change with `statuses[]`.
    pub fn statuses(self, statuses: impl IntoIterator<Item = Status>) -> Self {
        let now = self.now;
        let list: Vec<Value> = statuses
            .into_iter()
            .map(|s| {
                let mut obj = json!({
                    "id": s.wamid, "status": s.status,
                    "timestamp": s.timestamp.unwrap_or(now).to_string(),
                    "recipient_id": s.recipient_id,
                });
                if let Some(d) = s.biz_opaque_callback_data {
                    obj["biz_opaque_callback_data"] = json!(d);
                }
                if let Some(p) = s.pricing {
                    obj["pricing"] = p;
                }
                if let Some(e) = s.errors {
                    obj["errors"] = e;
                }
                obj
            })
            .collect();
        let value =
            json!({"messaging_product": "whatsapp", "metadata": self.metadata, "statuses": list});
        self.push_change(value)
    }

    /// Adds a change with top-level `value.errors[]` (out-of-band errors).
    pub fn errors(self, codes: &[u32]) -> Self {
        let list: Vec<Value> = codes.iter().map(|c| async_error(*c, None)).collect();
        let value =
            json!({"messaging_product": "whatsapp", "metadata": self.metadata, "errors": list});
        self.push_change(value)
    }

    /// Starts a new `entry[]`; later changes go there. Meta batches across entries too.
    pub fn next_entry(mut self) -> Self {
        self.entries.push(Vec::new());
        self
    }

    /// The wamids of the inbound messages, in order.
    pub fn wamids(&self) -> Vec<String> {
        self.inbound.iter().map(|r| r.wamid.clone()).collect()
    }

    pub fn inbound(&self) -> &[InboundRecord] {
        &self.inbound
    }

    pub fn to_json(&self) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .filter(|changes| !changes.is_empty())
            .map(|changes| json!({"id": self.waba_id, "changes": changes}))
            .collect();
        json!({"object": "whatsapp_business_account", "entry": entries})
    }

    /// The bytes Meta would put on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        meta_json_bytes(&self.to_json())
    }

    fn push_change(mut self, value: Value) -> Self {
        self.entries
            .last_mut()
            .expect("payload always has an entry")
            .push(json!({"field": "messages", "value": value}));
        self
    }
}

/// The `contacts[]` entry of `from`: `wa_id` only when the number is shared, `user_id` and
/// `profile.username` when Meta gives them (§2.5).
fn contact(from: &Customer) -> Value {
    let mut c = json!({"profile": {"name": from.name}});
    if !from.wa_id.is_empty() {
        c["wa_id"] = json!(from.wa_id);
    }
    if let Some(user_id) = &from.user_id {
        c["user_id"] = json!(user_id);
    }
    if let Some(username) = &from.username {
        c["profile"]["username"] = json!(username);
    }
    c
}

/// Serializes like Meta's PHP encoder: every non-ASCII character as `\uXXXX` (UTF-16 units, so
/// emoji become surrogate pairs) and `/` as `\/`. The result is valid JSON whose bytes differ
/// from what serde would re-serialize, which is the point (§2.1).
pub fn meta_json_bytes(value: &Value) -> Vec<u8> {
    let plain = serde_json::to_string(value).expect("Value always serializes");
    let mut out = String::with_capacity(plain.len() + plain.len() / 8);
    // Outside strings JSON is pure ASCII without '/', so a blind pass only touches string text.
    for ch in plain.chars() {
        if ch == '/' {
            out.push_str("\\/");
        } else if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

/// A wamid in Meta's format: `wamid.` + base64 of a small binary record holding the customer's
/// number and a random hex id (decoding §2.6's examples shows this layout). Inbound ids carry
/// 20 hex chars, outbound 18; the base64 brings `+`, `/` and `=` that careless URL handling breaks.
pub fn wamid(wa_id: &str, inbound: bool) -> String {
    let (marker, hex_len) = if inbound { (0x12u8, 20) } else { (0x11u8, 18) };
    let random: [u8; 10] = rand::random();
    let hex_id = hex::encode_upper(random)[..hex_len].to_string();
    let mut raw = vec![0x1c, 0x18, wa_id.len() as u8];
    raw.extend_from_slice(wa_id.as_bytes());
    raw.extend_from_slice(&[0x15, 0x02, 0x00, marker, 0x18, hex_len as u8]);
    raw.extend_from_slice(hex_id.as_bytes());
    raw.push(0x00);
    format!("wamid.{}", STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_bytes_escape_non_ascii_and_slash_yet_parse_back() {
        let v = json!({"body": "Grüße 👍 a/b \\ \"q\""});
        let bytes = meta_json_bytes(&v);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.is_ascii());
        assert!(text.contains("Gr\\u00fc\\u00dfe \\ud83d\\udc4d a\\/b"));
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), v);
    }

    #[test]
    fn wamid_decodes_to_the_customer_number() {
        let id = wamid("4917612345678", true);
        let raw = STANDARD.decode(id.strip_prefix("wamid.").unwrap()).unwrap();
        assert_eq!(&raw[3..16], b"4917612345678");
        assert!(id.starts_with("wamid.HBgN"));
    }

    #[test]
    fn envelope_matches_protocol_example_shape() {
        let p = WebhookPayload::new(
            "104829365520117",
            "112233445566778",
            "4930123456789",
            1_767_259_200,
        )
        .message(
            &Customer::new("4917612345678", "Anna Schmidt"),
            InboundMessage::text("Hi"),
        );
        let v = p.to_json();
        let value = &v["entry"][0]["changes"][0]["value"];
        assert_eq!(v["object"], "whatsapp_business_account");
        assert_eq!(v["entry"][0]["id"], "104829365520117");
        assert_eq!(v["entry"][0]["changes"][0]["field"], "messages");
        assert_eq!(value["metadata"]["phone_number_id"], "112233445566778");
        assert_eq!(value["contacts"][0]["profile"]["name"], "Anna Schmidt");
        assert_eq!(value["messages"][0]["timestamp"], "1767259200");
        assert_eq!(value["messages"][0]["text"]["body"], "Hi");
        assert_eq!(value["messages"][0]["id"], p.wamids()[0].as_str());
    }
}
