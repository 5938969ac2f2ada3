//! A wabridges sender: what the wabridges SaaS POSTs to a bridge's `webhook_url`. The seed
//! (`seeds/wabridges-webhooks.txt`) is the whole protocol: a JSON object whose `event` string
//! names one of eleven types, answered with 200 within 10 seconds or dropped, never retried,
//! occasionally delivered twice after network failures.
//!
//! - [`example`] gives the seed's example payload of each type, byte for byte in content.
//! - [`Traffic`] generates a deterministic, realistic stream of deliveries from a seed.
//! - [`Sender`] posts them to a loopback URL the way wabridges would, and reports acks.

mod sender;
mod traffic;
mod world;

pub use sender::{SendReport, Sender};
pub use traffic::{Delivery, Traffic};

use serde_json::{Value, json};

/// The eleven event types of the seed, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Message,
    Connected,
    Disconnected,
    Typing,
    PollVote,
    EventResponse,
    CallIncoming,
    CallTerminated,
    OfflineSyncPreview,
    OfflineSyncCompleted,
    ProfilePictureUpdated,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::Message,
        EventType::Connected,
        EventType::Disconnected,
        EventType::Typing,
        EventType::PollVote,
        EventType::EventResponse,
        EventType::CallIncoming,
        EventType::CallTerminated,
        EventType::OfflineSyncPreview,
        EventType::OfflineSyncCompleted,
        EventType::ProfilePictureUpdated,
    ];

    /// The value of the `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Message => "message",
            EventType::Connected => "connected",
            EventType::Disconnected => "disconnected",
            EventType::Typing => "typing",
            EventType::PollVote => "poll_vote",
            EventType::EventResponse => "event_response",
            EventType::CallIncoming => "call_incoming",
            EventType::CallTerminated => "call_terminated",
            EventType::OfflineSyncPreview => "offline_sync_preview",
            EventType::OfflineSyncCompleted => "offline_sync_completed",
            EventType::ProfilePictureUpdated => "profile_picture_updated",
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The seed's "Fields:" line, in its order. `profile_picture_updated`'s `picture_id` is
    /// optional (the seed writes `picture_id?`): it is absent when `remove` is true.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            EventType::Message => &[
                "event",
                "message_id",
                "contact_id",
                "phone",
                "chat_id",
                "name",
                "body",
                "type",
                "media_type",
                "is_group",
                "from_me",
                "timestamp",
            ],
            EventType::Connected => &["event", "phone"],
            EventType::Disconnected => &["event"],
            EventType::Typing => &["event", "contact_id", "chat_id", "state", "mode"],
            EventType::PollVote => &[
                "event",
                "contact_id",
                "phone",
                "chat_id",
                "poll_id",
                "message_id",
                "name",
                "from_me",
                "timestamp",
                "selected_options",
            ],
            EventType::EventResponse => &[
                "event",
                "contact_id",
                "phone",
                "chat_id",
                "event_id",
                "message_id",
                "name",
                "from_me",
                "timestamp",
                "response",
                "extra_guest_count",
            ],
            EventType::CallIncoming => &["event", "call_id", "contact_id", "platform", "timestamp"],
            EventType::CallTerminated => &["event", "call_id", "contact_id", "reason", "timestamp"],
            EventType::OfflineSyncPreview => &[
                "event",
                "total",
                "messages",
                "notifications",
                "receipts",
                "app_data_changes",
            ],
            EventType::OfflineSyncCompleted => &["event", "count"],
            EventType::ProfilePictureUpdated => &["event", "remove", "picture_id", "timestamp"],
        }
    }
}

/// The seed's example payload for `event_type`, field for field and value for value.
pub fn example(event_type: EventType) -> Value {
    match event_type {
        EventType::Message => json!({
            "event": "message", "message_id": "ACE41E...",
            "contact_id": "15550001234@s.whatsapp.net", "phone": "15550001234",
            "chat_id": "15550001234@s.whatsapp.net", "name": "Alice", "body": "Hello!",
            "type": "text", "media_type": "", "is_group": false, "from_me": false,
            "timestamp": 1777180605
        }),
        EventType::Connected => json!({"event": "connected", "phone": "15550001234"}),
        EventType::Disconnected => json!({"event": "disconnected"}),
        EventType::Typing => json!({
            "event": "typing", "contact_id": "15550001234@s.whatsapp.net",
            "chat_id": "15550001234@s.whatsapp.net", "state": "composing", "mode": "text"
        }),
        EventType::PollVote => json!({
            "event": "poll_vote", "contact_id": "15550001234@s.whatsapp.net",
            "phone": "15550001234", "chat_id": "15550001234@s.whatsapp.net",
            "poll_id": "ACPOLL0001", "message_id": "ACVOTE0001", "name": "Alice",
            "from_me": false, "timestamp": 1777330500, "selected_options": ["Red"]
        }),
        EventType::EventResponse => json!({
            "event": "event_response", "contact_id": "15550001234@s.whatsapp.net",
            "phone": "15550001234", "chat_id": "15550009999@g.us", "event_id": "ACEVENT0001",
            "message_id": "ACEVRESP0001", "name": "Alice", "from_me": false,
            "timestamp": 1777330700, "response": "going", "extra_guest_count": 0
        }),
        EventType::CallIncoming => json!({
            "event": "call_incoming", "call_id": "ABCDEF123456",
            "contact_id": "15550001234@s.whatsapp.net", "platform": "android",
            "timestamp": 1777180605
        }),
        EventType::CallTerminated => json!({
            "event": "call_terminated", "call_id": "ABCDEF123456",
            "contact_id": "15550001234@s.whatsapp.net", "reason": "hangup",
            "timestamp": 1777180720
        }),
        EventType::OfflineSyncPreview => json!({
            "event": "offline_sync_preview", "total": 142, "messages": 120,
            "notifications": 8, "receipts": 14, "app_data_changes": 0
        }),
        EventType::OfflineSyncCompleted => json!({"event": "offline_sync_completed", "count": 142}),
        EventType::ProfilePictureUpdated => json!({
            "event": "profile_picture_updated", "remove": false, "picture_id": "12345678901",
            "timestamp": 1777180605
        }),
    }
}
