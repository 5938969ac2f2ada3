//! Writing first: a template sent to a phone number that may never have written (or whose
//! window closed), then the conversation opened in the channel's Open Channel line so the
//! operators see what went out. The customer's answer arrives like any message from them, from
//! the same `user.id` and `chat.id`, and so joins that chat.

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_core::{JobContext, JobError, JobKind, db::now_ms};

use crate::{
    bitrix::{BitrixError, id_text, truthy},
    relay::Relay,
    to_bitrix::render::split_name,
};

/// The template Meta accepted, to show in the Open Channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenConversation {
    /// The customer's wa_id.
    pub customer: String,
    pub line: String,
    /// The template send's wamid: the message's id in Bitrix24, so a second run is the same
    /// message.
    pub wamid: String,
    /// What the operators read: which template, and its body as filled.
    pub text: String,
    /// The customer's name, when the caller gave one.
    pub name: Option<String>,
}

impl JobKind for OpenConversation {
    const KIND: &'static str = "bitrix-connector.open-conversation";
}

/// The idempotency key of the job that opens the chat for a template sent first.
pub fn open_key(wamid: &str) -> String {
    format!("first:{wamid}")
}

/// A template sent first stands in the outbound map under this id (it has no Bitrix24 message
/// of its own), so Meta's `failed` status for it reaches the chat as a note.
pub fn message_id(wamid: &str) -> String {
    format!("{FIRST_PREFIX}{wamid}")
}

const FIRST_PREFIX: &str = "first:";

/// Whether an outbound row is a template sent first: its statuses have no Bitrix24 message to
/// mark delivered or read.
pub fn is_first(bitrix_message_id: &str) -> bool {
    bitrix_message_id.starts_with(FIRST_PREFIX)
}

/// Records the accepted template in the outbound map, its chat still unknown.
pub async fn record_sent(
    db: &switchboard_core::Db,
    wamid: &str,
    customer: &str,
    phone_number_id: &str,
) -> Result<(), sqlx::Error> {
    let id = message_id(wamid);
    crate::store::record_outbound_from(db, &id, "", customer, phone_number_id).await?;
    crate::store::set_outbound(db, &id, "sent", Some(wamid), None).await
}

pub async fn open_conversation(
    relay: &Relay,
    job: OpenConversation,
    _ctx: JobContext,
) -> Result<(), JobError> {
    let connector = relay
        .bitrix
        .connector()
        .await
        .map_err(BitrixError::into_job_error)?;
    let (first, last) = split_name(job.name.as_deref());
    let mut user = json!({"id": job.customer, "phone": format!("+{}", job.customer), "skip_phone_validate": "Y"});
    if !first.is_empty() {
        user["name"] = json!(first);
    }
    if !last.is_empty() {
        user["last_name"] = json!(last);
    }
    let mut chat = json!({"id": job.customer, "url": format!("https://wa.me/{}", job.customer)});
    if let Some(n) = &job.name {
        chat["name"] = json!(n);
    }
    let item = json!({
        "user": user,
        "message": {"id": job.wamid, "date": now_ms() / 1000, "text": job.text},
        "chat": chat,
    });
    let result = relay
        .bitrix
        .call(
            "imconnector.send.messages",
            json!({"CONNECTOR": connector, "LINE": job.line, "MESSAGES": [item]}),
        )
        .await
        .map_err(BitrixError::into_job_error)?;
    let first = result.pointer("/DATA/RESULT/0");
    if !truthy(result.get("SUCCESS")) || !truthy(first.and_then(|r| r.get("SUCCESS"))) {
        return Err(JobError::Permanent(format!(
            "Bitrix24 did not open the conversation with {}: {}",
            job.customer,
            first
                .and_then(|r| r.get("ERRORS"))
                .map(|e| e.to_string())
                .unwrap_or_default()
        )));
    }
    // Meta's later `failed` status is told in this chat.
    if let Some(chat_id) = id_text(first.and_then(|r| r.pointer("/session/CHAT_ID"))) {
        crate::store::set_outbound_chat(&relay.core.db, &message_id(&job.wamid), &chat_id)
            .await
            .map_err(crate::relay::retry_db)?;
    }
    Ok(())
}
