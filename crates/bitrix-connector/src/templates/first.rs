//! Writing first: a template sent to a phone number that may never have written (or whose
//! window closed), then the conversation opened in the channel's Open Channel line so the
//! operators see what went out. The customer's answer arrives like any message from them, from
//! the same `user.id` and `chat.id`, and so joins that chat.

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_core::{JobContext, JobError, JobKind, db::now_ms};

use crate::{
    bitrix::{BitrixError, id_text, truthy},
    relay::{Relay, retry_db},
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
    /// Its row in the outbound map ([`new_message_id`]).
    pub message_id: String,
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

/// A template sent first stands in the outbound map under an id of its own (it has no
/// Bitrix24 message), recorded before the send and echoed by Meta in the send's statuses, so
/// a `failed` status however early reaches the chat as a note.
pub fn new_message_id() -> String {
    format!("{FIRST_PREFIX}{:032x}", rand::random::<u128>())
}

const FIRST_PREFIX: &str = "first:";

/// Whether an outbound row is a template sent first: its statuses have no Bitrix24 message to
/// mark delivered or read.
pub fn is_first(bitrix_message_id: &str) -> bool {
    bitrix_message_id.starts_with(FIRST_PREFIX)
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
    // Meta's later `failed` status is told in this chat; one that came before it opened, now.
    if let Some(chat_id) = id_text(first.and_then(|r| r.pointer("/session/CHAT_ID"))) {
        let db = &relay.core.db;
        let id = job.message_id.clone();
        crate::store::set_outbound_chat(db, &id, &chat_id)
            .await
            .map_err(retry_db)?;
        let failed = crate::store::outbound_by_message(db, &id)
            .await
            .map_err(retry_db)?
            .is_some_and(|r| r.state == "failed");
        if failed
            && let Some(note) = crate::store::outbound_error(db, &id)
                .await
                .map_err(retry_db)?
        {
            crate::bitrix::notes::post(&relay.bitrix, &chat_id, &note)
                .await
                .map_err(BitrixError::into_job_error)?;
        }
    }
    Ok(())
}
