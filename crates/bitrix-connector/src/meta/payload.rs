//! What Meta posts to `/webhook/whatsapp` (protocol §2.2–2.4), read leniently: unknown fields
//! are ignored, and each message keeps its raw JSON so a type Meta adds later is still relayed
//! as far as it can be. [`units`] splits one POST into independent pieces of work.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub value: ChangeValue,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChangeValue {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub messages: Vec<Value>,
    #[serde(default)]
    pub statuses: Vec<Value>,
    #[serde(default)]
    pub errors: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub phone_number_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub name: Option<String>,
    /// The WhatsApp username of a customer who set one (§2.5).
    #[serde(default)]
    pub username: Option<String>,
}

/// One customer message, as much as the relay needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboundUnit {
    pub wamid: String,
    /// `wa_id`, or the business-scoped user id for customers with a username (§2.5).
    pub customer: String,
    pub name: Option<String>,
    pub timestamp: i64,
    pub phone_number_id: String,
    /// The business-scoped user id (`from_user_id`, `contacts[].user_id`), when Meta gave one.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The customer's WhatsApp username, when they set one.
    #[serde(default)]
    pub username: Option<String>,
    /// The whole `messages[]` object.
    pub message: Value,
}

/// One status of a business message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusUnit {
    pub wamid: String,
    pub status: String,
    pub recipient: String,
    pub errors: Vec<Value>,
    /// `biz_opaque_callback_data` echoed from the send: which operator message and part.
    #[serde(default)]
    pub callback_data: Option<String>,
    /// The business number that sent the message (`metadata.phone_number_id`); empty in a
    /// job queued before channels, which belongs to the single-number channel.
    #[serde(default)]
    pub phone_number_id: String,
}

#[derive(Debug, Default)]
pub struct Units {
    pub messages: Vec<InboundUnit>,
    pub statuses: Vec<StatusUnit>,
    /// `value.errors[]`: out-of-band problems not tied to one message, logged only.
    pub errors: Vec<Value>,
}

pub fn parse(body: &[u8]) -> Result<Envelope, String> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        format!(
            "body is not a Meta webhook: {}",
            msg.split(" at line").next().unwrap_or(&msg)
        )
    })?;
    Ok(env)
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn units(env: &Envelope) -> Units {
    let mut out = Units::default();
    for change in env.entry.iter().flat_map(|e| &e.changes) {
        if change.field != "messages" {
            continue;
        }
        let v = &change.value;
        let phone_number_id = v
            .metadata
            .as_ref()
            .map(|m| m.phone_number_id.clone())
            .unwrap_or_default();
        for m in &v.messages {
            let Some(wamid) = str_of(m, "id") else {
                continue;
            };
            let from_user_id = str_of(m, "from_user_id");
            let Some(customer) = str_of(m, "from").or_else(|| from_user_id.clone()) else {
                continue;
            };
            let contact = v
                .contacts
                .iter()
                .find(|c| {
                    c.wa_id.as_deref() == Some(&customer) || c.user_id.as_deref() == Some(&customer)
                })
                .or(v.contacts.first());
            let profile = contact.and_then(|c| c.profile.as_ref());
            let name = profile
                .and_then(|p| p.name.clone())
                .filter(|n| !n.is_empty());
            let username = profile
                .and_then(|p| p.username.clone())
                .filter(|n| !n.is_empty());
            let user_id = from_user_id
                .or_else(|| contact.and_then(|c| c.user_id.clone()))
                .filter(|u| !u.is_empty());
            let timestamp = str_of(m, "timestamp")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            out.messages.push(InboundUnit {
                wamid,
                customer,
                name,
                timestamp,
                phone_number_id: phone_number_id.clone(),
                user_id,
                username,
                message: m.clone(),
            });
        }
        for s in &v.statuses {
            let (Some(wamid), Some(status)) = (str_of(s, "id"), str_of(s, "status")) else {
                continue;
            };
            out.statuses.push(StatusUnit {
                wamid,
                status,
                recipient: str_of(s, "recipient_id")
                    .or_else(|| str_of(s, "recipient_user_id"))
                    .unwrap_or_default(),
                errors: s
                    .get("errors")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                callback_data: str_of(s, "biz_opaque_callback_data"),
                phone_number_id: phone_number_id.clone(),
            });
        }
        out.errors.extend(v.errors.iter().cloned());
    }
    out
}

/// The inbox key of a whole POST: the wamid when it carries one message and nothing else (the
/// common case, so a redelivery shows as `duplicate` in the audit log), `(id, status)` for a
/// lone status, else a hash of the bytes (Meta retries resend the same bytes). Overlapping
/// batches are caught per unit by the processor.
pub fn envelope_key(units: &Units, body: &[u8]) -> String {
    match (units.messages.as_slice(), units.statuses.as_slice()) {
        ([m], []) => m.wamid.clone(),
        ([], [s]) => format!("status:{}:{}", s.wamid, s.status),
        _ => format!("sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
      "metadata":{"display_phone_number":"1","phone_number_id":"112"},
      "contacts":[{"profile":{"name":"Anna Schmidt"},"wa_id":"491"}],
      "messages":[{"from":"491","id":"wamid.A","timestamp":"1767259200","type":"text","text":{"body":"hi"}},
                  {"from":"491","id":"wamid.B","timestamp":"1767259201","type":"text","text":{"body":"again"}}],
      "statuses":[{"id":"wamid.X","status":"read","timestamp":"1","recipient_id":"491"}]}}]}]}"#;

    #[test]
    fn one_post_becomes_one_unit_per_message_and_status() {
        let env = parse(BATCH.as_bytes()).unwrap();
        let u = units(&env);
        assert_eq!(u.messages.len(), 2);
        assert_eq!(u.messages[1].wamid, "wamid.B");
        assert_eq!(u.messages[0].name.as_deref(), Some("Anna Schmidt"));
        assert_eq!(u.messages[0].timestamp, 1_767_259_200);
        assert_eq!(u.statuses[0].status, "read");
        assert!(envelope_key(&u, BATCH.as_bytes()).starts_with("sha256:"));
    }

    #[test]
    fn a_lone_message_is_keyed_by_its_wamid() {
        let body = BATCH.replace(
            r#",
                  {"from":"491","id":"wamid.B","timestamp":"1767259201","type":"text","text":{"body":"again"}}"#,
            "",
        );
        let body = body.replace(
            r#"{"id":"wamid.X","status":"read","timestamp":"1","recipient_id":"491"}"#,
            "",
        );
        let u = units(&parse(body.as_bytes()).unwrap());
        assert_eq!(envelope_key(&u, body.as_bytes()), "wamid.A");
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(b"{\"entry\": 5}").is_err());
        let u = units(&parse(br#"{"entry":[{"changes":[{"field":"messages","value":{"messages":[{"id":5},{}]}}]}]}"#).unwrap());
        assert!(u.messages.is_empty());
    }
}
