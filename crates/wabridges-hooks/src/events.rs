//! What a wabridges bridge posts to its `webhook_url` (seed `wabridges-webhooks.txt`): a JSON
//! object whose `event` string names one of eleven types, each with the fields the seed lists.
//!
//! Parsing is strict where meaning depends on it (a known type must carry every documented
//! field with the documented JSON type) and open where the sender may grow: extra fields are
//! ignored, an enum value the seed doesn't list is kept as [`Other`](CallReason::Other) rather
//! than refused, and an unknown `event` type is [`Parsed::Unknown`], stored raw and answered 200.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The eleven documented types, in the seed's order.
pub const EVENT_TYPES: [&str; 11] = [
    "message",
    "connected",
    "disconnected",
    "typing",
    "poll_vote",
    "event_response",
    "call_incoming",
    "call_terminated",
    "offline_sync_preview",
    "offline_sync_completed",
    "profile_picture_updated",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Message(Message),
    Connected(Connected),
    Disconnected(Disconnected),
    Typing(Typing),
    PollVote(PollVote),
    EventResponse(EventResponse),
    CallIncoming(CallIncoming),
    CallTerminated(CallTerminated),
    OfflineSyncPreview(OfflineSyncPreview),
    OfflineSyncCompleted(OfflineSyncCompleted),
    ProfilePictureUpdated(ProfilePictureUpdated),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub message_id: String,
    /// Sender's JID; the bridge's own JID when `from_me`.
    pub contact_id: String,
    pub phone: String,
    /// Where it was said: a contact JID or a `…@g.us` group.
    pub chat_id: String,
    /// The sender's push name; may be empty.
    pub name: String,
    /// Text, or the caption of a media message.
    pub body: String,
    /// `text`, `media`, `poll`, `reaction`… (whatsmeow's vocabulary, kept open).
    #[serde(rename = "type")]
    pub kind: String,
    /// Media kind (`image`, `video`, `ptt`, `document`…); empty for text.
    pub media_type: String,
    pub is_group: bool,
    pub from_me: bool,
    /// Unix seconds.
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connected {
    /// The bridge's own number.
    pub phone: String,
}

/// Carries nothing: which bridge disconnected is known only from the URL (SPEC §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disconnected {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Typing {
    pub contact_id: String,
    pub chat_id: String,
    pub state: TypingState,
    pub mode: TypingMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    Composing,
    Paused,
    #[serde(untagged)]
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingMode {
    Text,
    Voice,
    #[serde(untagged)]
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollVote {
    pub contact_id: String,
    pub phone: String,
    pub chat_id: String,
    /// The poll message voted on.
    pub poll_id: String,
    /// The vote's own message id (the dedupe key).
    pub message_id: String,
    pub name: String,
    pub from_me: bool,
    pub timestamp: i64,
    /// Empty when a vote is withdrawn; several on a multi-select poll.
    pub selected_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventResponse {
    pub contact_id: String,
    pub phone: String,
    pub chat_id: String,
    /// The WhatsApp event (invitation) answered.
    pub event_id: String,
    pub message_id: String,
    pub name: String,
    pub from_me: bool,
    pub timestamp: i64,
    pub response: Response,
    pub extra_guest_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Going,
    NotGoing,
    Maybe,
    #[serde(untagged)]
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallIncoming {
    pub call_id: String,
    pub contact_id: String,
    /// Caller's client: `android`, `iphone`, `smba`, `web`…
    pub platform: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallTerminated {
    pub call_id: String,
    pub contact_id: String,
    pub reason: CallReason,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallReason {
    Timeout,
    Hangup,
    Decline,
    Busy,
    #[serde(untagged)]
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineSyncPreview {
    pub total: u64,
    pub messages: u64,
    pub notifications: u64,
    pub receipts: u64,
    pub app_data_changes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineSyncCompleted {
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfilePictureUpdated {
    pub remove: bool,
    /// Absent when the picture was removed (the seed's `picture_id?`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture_id: Option<String>,
    pub timestamp: i64,
}

macro_rules! as_str_enum {
    ($($t:ident { $($v:ident => $s:literal),* }),*) => {$(
        impl $t {
            pub fn as_str(&self) -> &str {
                match self {
                    $($t::$v => $s,)*
                    $t::Other(s) => s,
                }
            }
        }
    )*};
}

as_str_enum!(
    TypingState { Composing => "composing", Paused => "paused" },
    TypingMode { Text => "text", Voice => "voice" },
    Response { Going => "going", NotGoing => "not_going", Maybe => "maybe" },
    CallReason { Timeout => "timeout", Hangup => "hangup", Decline => "decline", Busy => "busy" }
);

/// A body that passed the envelope check.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Known(Event),
    /// An `event` type the seed doesn't list: stored raw and counted (SPEC §3.2).
    Unknown(String),
}

impl Parsed {
    pub fn event_type(&self) -> &str {
        match self {
            Parsed::Known(e) => e.event_type(),
            Parsed::Unknown(t) => t,
        }
    }
}

/// Why a body was refused, worded for the 400 and the audit row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object")]
    NotObject,
    #[error("body has no `event` field")]
    NoEvent,
    #[error("`event` must be a string")]
    EventNotString,
    #[error("{event} event: {problem}")]
    BadField { event: String, problem: String },
}

impl Malformed {
    /// The field to name in the error body, when one is to blame.
    pub fn field(&self) -> Option<String> {
        match self {
            Malformed::NoEvent | Malformed::EventNotString => Some("event".into()),
            Malformed::BadField { problem, .. } => problem
                .split('`')
                .nth(1)
                .filter(|_| problem.starts_with("missing field"))
                .map(str::to_string),
            _ => None,
        }
    }
}

/// Checks the envelope (a JSON object with a string `event`), then the type's fields.
pub fn parse(body: &[u8]) -> Result<Parsed, Malformed> {
    // Every delivery takes this path, so well-formed bodies are read straight into their type;
    // anything that fails is read again by the slower path, whose messages say exactly what is
    // wrong.
    parse_well_formed(body).map_or_else(|| parse_explaining(body), Ok)
}

/// The ack path's parse: the envelope's `event` (the rest skipped), then the body straight into
/// that type's struct, with no intermediate `Value` or buffered tagged enum. `None` for any
/// body it does not accept.
fn parse_well_formed(body: &[u8]) -> Option<Parsed> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        event: std::borrow::Cow<'a, str>,
    }
    fn typed<'a, T: Deserialize<'a>>(body: &'a str, wrap: fn(T) -> Event) -> Option<Parsed> {
        serde_json::from_str(body)
            .ok()
            .map(|t| Parsed::Known(wrap(t)))
    }
    // UTF-8 checked once for the whole body: reading bytes, serde_json checks every string it
    // meets, in both passes.
    let body = std::str::from_utf8(body).ok()?;
    let envelope: Envelope = serde_json::from_str(body).ok()?;
    match envelope.event.as_ref() {
        "message" => typed(body, Event::Message),
        "connected" => typed(body, Event::Connected),
        "disconnected" => typed(body, Event::Disconnected),
        "typing" => typed(body, Event::Typing),
        "poll_vote" => typed(body, Event::PollVote),
        "event_response" => typed(body, Event::EventResponse),
        "call_incoming" => typed(body, Event::CallIncoming),
        "call_terminated" => typed(body, Event::CallTerminated),
        "offline_sync_preview" => typed(body, Event::OfflineSyncPreview),
        "offline_sync_completed" => typed(body, Event::OfflineSyncCompleted),
        "profile_picture_updated" => typed(body, Event::ProfilePictureUpdated),
        _ => Some(Parsed::Unknown(envelope.event.into_owned())),
    }
}

/// The envelope as a `Value` first, so each way of being wrong gets its own message.
fn parse_explaining(body: &[u8]) -> Result<Parsed, Malformed> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Malformed::NotJson(
            e.to_string()
                .split(" at line")
                .next()
                .unwrap_or_default()
                .to_string()
                + &format!(" (line {}, column {})", e.line(), e.column()),
        )
    })?;
    let obj = value.as_object().ok_or(Malformed::NotObject)?;
    let event = match obj.get("event") {
        None => return Err(Malformed::NoEvent),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Err(Malformed::EventNotString),
    };
    if !EVENT_TYPES.contains(&event.as_str()) {
        return Ok(Parsed::Unknown(event));
    }
    serde_json::from_value::<Event>(value)
        .map(Parsed::Known)
        .map_err(|e| Malformed::BadField {
            event,
            problem: e.to_string(),
        })
}

/// Bodies that carry no time of their own: identical bytes recur legitimately (a second
/// `disconnected` next week), so their hash keys are scoped to a window.
pub const UNTIMED_DEDUPE_WINDOW_SECS: i64 = 60;

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Message(_) => "message",
            Event::Connected(_) => "connected",
            Event::Disconnected(_) => "disconnected",
            Event::Typing(_) => "typing",
            Event::PollVote(_) => "poll_vote",
            Event::EventResponse(_) => "event_response",
            Event::CallIncoming(_) => "call_incoming",
            Event::CallTerminated(_) => "call_terminated",
            Event::OfflineSyncPreview(_) => "offline_sync_preview",
            Event::OfflineSyncCompleted(_) => "offline_sync_completed",
            Event::ProfilePictureUpdated(_) => "profile_picture_updated",
        }
    }

    fn has_timestamp(&self) -> bool {
        matches!(
            self,
            Event::Message(_)
                | Event::PollVote(_)
                | Event::EventResponse(_)
                | Event::CallIncoming(_)
                | Event::CallTerminated(_)
                | Event::ProfilePictureUpdated(_)
        )
    }
}

/// The inbox dedupe key (SPEC §3.3), prefixed with the bridge so keys are per bridge (`:` can't
/// occur in a bridge name, so the prefix is unambiguous).
///
/// `message`, `poll_vote`, `event_response` → `message_id`; calls → event + `call_id`; anything
/// else → SHA-256 of the raw body. A body without a time of its own (`connected`,
/// `disconnected`, `typing`, the offline-sync pair, unknown types) also gets the minute it
/// arrived in: otherwise a bridge's second `disconnected` ever would be a "duplicate" of its
/// first and the state would show it connected. A network re-send arrives within seconds.
pub fn dedupe_key(bridge: &str, parsed: &Parsed, body: &[u8], received_unix_secs: i64) -> String {
    let hashed = |windowed: bool| {
        let hash = hex::encode(Sha256::digest(body));
        if windowed {
            format!(
                "{bridge}:sha256:{hash}:{}",
                received_unix_secs / UNTIMED_DEDUPE_WINDOW_SECS
            )
        } else {
            format!("{bridge}:sha256:{hash}")
        }
    };
    match parsed {
        Parsed::Known(Event::Message(m)) => format!("{bridge}:msg:{}", m.message_id),
        Parsed::Known(Event::PollVote(v)) => format!("{bridge}:msg:{}", v.message_id),
        Parsed::Known(Event::EventResponse(r)) => format!("{bridge}:msg:{}", r.message_id),
        Parsed::Known(Event::CallIncoming(c)) => format!("{bridge}:call_incoming:{}", c.call_id),
        Parsed::Known(Event::CallTerminated(c)) => {
            format!("{bridge}:call_terminated:{}", c.call_id)
        }
        Parsed::Known(e) => hashed(!e.has_timestamp()),
        Parsed::Unknown(_) => hashed(true),
    }
}

/// 1–64 of `A-Za-z0-9_-` (SPEC §3.1).
pub fn valid_bridge_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_errors_say_what_is_wrong() {
        assert!(matches!(parse(b"{nope"), Err(Malformed::NotJson(_))));
        assert_eq!(parse(b"[1]"), Err(Malformed::NotObject));
        assert_eq!(parse(br#"{"phone":"1"}"#), Err(Malformed::NoEvent));
        assert_eq!(parse(br#"{"event":7}"#), Err(Malformed::EventNotString));
        let e = parse(br#"{"event":"message","message_id":"A"}"#).unwrap_err();
        assert!(
            e.to_string().starts_with("message event: missing field"),
            "{e}"
        );
        assert!(e.field().is_some());
        let e = parse(br#"{"event":"connected","phone":5}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    /// The fast path must take every well-formed delivery (or acks silently pay for the slow
    /// one), agree with the explaining path on all of them, and leave every malformed body to it.
    #[test]
    fn the_fast_path_takes_every_well_formed_body_and_agrees() {
        use sandbox::wabridges::{EventType, Traffic, example};
        let mut bodies: Vec<Vec<u8>> = EventType::ALL
            .into_iter()
            .map(|t| serde_json::to_vec(&example(t)).unwrap())
            .collect();
        bodies.extend(Traffic::new(3).take(500).map(|d| d.body.to_vec()));
        bodies.push(br#"{"event":"label_added","x":1}"#.to_vec());
        bodies.push(br#"{"x":[1,{"y":2}],"event":"disconnected","z":null}"#.to_vec());
        for body in &bodies {
            let text = String::from_utf8_lossy(body);
            let fast =
                parse_well_formed(body).unwrap_or_else(|| panic!("fast path refused {text}"));
            assert_eq!(Ok(fast), parse_explaining(body), "{text}");
        }
        for bad in [
            &b"{nope"[..],
            b"[1]",
            br#"{"phone":"1"}"#,
            br#"{"event":7}"#,
            br#"{"event":"message","message_id":"A"}"#,
            br#"{"event":"connected","phone":5}"#,
            br#"{"event":"disconnected"} trailing"#,
        ] {
            assert_eq!(
                parse_well_formed(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(parse(bad).is_err());
        }
    }

    #[test]
    fn unknown_types_and_values_are_kept() {
        assert_eq!(
            parse(br#"{"event":"label_added","x":1}"#).unwrap(),
            Parsed::Unknown("label_added".into())
        );
        let Parsed::Known(Event::CallTerminated(c)) = parse(
            br#"{"event":"call_terminated","call_id":"c","contact_id":"x","reason":"missed","timestamp":1}"#,
        )
        .unwrap() else {
            panic!("a call_terminated")
        };
        assert_eq!(c.reason, CallReason::Other("missed".into()));
        assert_eq!(c.reason.as_str(), "missed");
    }

    #[test]
    fn dedupe_keys_follow_the_spec_per_bridge() {
        let msg = br#"{"event":"message","message_id":"M1","contact_id":"c","phone":"p","chat_id":"c","name":"","body":"","type":"text","media_type":"","is_group":false,"from_me":false,"timestamp":1}"#;
        let p = parse(msg).unwrap();
        assert_eq!(dedupe_key("a", &p, msg, 0), "a:msg:M1");
        assert_eq!(dedupe_key("b", &p, msg, 0), "b:msg:M1");
        let call = br#"{"event":"call_incoming","call_id":"C1","contact_id":"c","platform":"web","timestamp":1}"#;
        assert_eq!(
            dedupe_key("a", &parse(call).unwrap(), call, 0),
            "a:call_incoming:C1"
        );
        let disc = br#"{"event":"disconnected"}"#;
        let p = parse(disc).unwrap();
        assert_eq!(
            dedupe_key("a", &p, disc, 100),
            dedupe_key("a", &p, disc, 110)
        );
        assert_ne!(
            dedupe_key("a", &p, disc, 100),
            dedupe_key("a", &p, disc, 100 + 3600),
            "a disconnect an hour later is a new event"
        );
        let pic = br#"{"event":"profile_picture_updated","remove":true,"timestamp":5}"#;
        let p = parse(pic).unwrap();
        assert_eq!(
            dedupe_key("a", &p, pic, 0),
            dedupe_key("a", &p, pic, 99_999)
        );
    }

    #[test]
    fn bridge_names() {
        assert!(valid_bridge_name("hotel-1_A"));
        assert!(valid_bridge_name(&"x".repeat(64)));
        assert!(!valid_bridge_name(&"x".repeat(65)));
        assert!(!valid_bridge_name(""));
        assert!(!valid_bridge_name("a:b"));
        assert!(!valid_bridge_name("a b"));
        assert!(!valid_bridge_name("é"));
    }
}
