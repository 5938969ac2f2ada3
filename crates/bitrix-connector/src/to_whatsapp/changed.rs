//! Bitrix24 events other than a new operator message. An operator who edits or deletes a
//! message already relayed gets a note in the chat: WhatsApp's Cloud API can't edit or delete a
//! message a business sent, so the customer still sees the original. A deleted Open Channel line
//! or a connector disconnected from one raises an alert: `/health` says the bridge is degraded
//! and why, `/setup` shows a failing row, and the log an error, until the connector is activated
//! on a line again.

use serde_json::Value;
use switchboard_core::{JobError, inbox::ProcessOutcome};

use crate::{
    bitrix::{events, id_text, notes, php_form},
    relay::{Relay, retry_db},
    setting_values::required,
    store,
};

/// What the operator reads after editing a relayed message.
pub const EDIT_NOTE: &str = "⚠ WhatsApp can't edit a message that was already sent: the customer still sees the original. Send the correction as a new message.";
/// What the operator reads after deleting a relayed message.
pub const DELETE_NOTE: &str = "⚠ WhatsApp can't delete a message that was already sent: the customer still sees it. If it must be taken back, tell the customer in a new message.";

/// `OnImConnectorMessageUpdate` / `…Delete`: a note in each message's chat.
pub async fn operator_changed(
    relay: &Relay,
    form: &Value,
    event: &str,
) -> Result<ProcessOutcome, JobError> {
    let note = if event == events::MESSAGE_UPDATE {
        EDIT_NOTE
    } else {
        DELETE_NOTE
    };
    let mut noted = 0;
    for m in php_form::items(form.pointer("/data/MESSAGES")) {
        let Some(chat_id) = id_text(m.pointer("/im/chat_id")) else {
            continue;
        };
        notes::post(&relay.bitrix, &chat_id, note)
            .await
            .map_err(|e| e.into_job_error())?;
        noted += 1;
    }
    Ok(if noted == 0 {
        ProcessOutcome::Skipped("an edit or deletion without a chat: nothing to tell".into())
    } else {
        ProcessOutcome::Processed
    })
}

/// The alert of one line: raised by these events, cleared by activating the line again.
pub fn line_alert(line: &str) -> String {
    format!("line:{line}")
}

/// `OnImConnectorLineDelete` / `OnImConnectorStatusDelete` for a line this bridge relays into:
/// an alert until the connector is activated again.
pub async fn connector_gone(
    relay: &Relay,
    form: &Value,
    event: &str,
) -> Result<ProcessOutcome, JobError> {
    let field = |k: &str| {
        id_text(form.pointer(&format!("/data/{k}")))
            .or_else(|| id_text(form.pointer(&format!("/data/{}", k.to_ascii_uppercase()))))
    };
    let (line, connector) = if event == events::LINE_DELETE {
        (id_text(form.get("data")), None)
    } else {
        (field("line"), field("connector"))
    };
    let Some(line) = line.filter(|l| !l.is_empty()) else {
        return Ok(ProcessOutcome::Skipped(format!(
            "{event} without a line: nothing to do"
        )));
    };
    let ours = required(&relay.core, crate::catalogue::BITRIX_CONNECTOR_ID)
        .await
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    if connector
        .as_deref()
        .is_some_and(|c| !c.eq_ignore_ascii_case(&ours))
    {
        return Ok(ProcessOutcome::Skipped(format!(
            "another connector left line {line}: not this bridge's"
        )));
    }
    let served = crate::channels::all(relay)
        .await
        .map_err(crate::to_bitrix::split::config_error)?;
    if !served.iter().any(|c| c.line == line) {
        return Ok(ProcessOutcome::Skipped(format!(
            "line {line} is not one this bridge relays into"
        )));
    }
    let reason = if event == events::LINE_DELETE {
        format!(
            "Open Channel line {line} was deleted in Bitrix24: customer messages for it are not delivered. Create a line, connect the WhatsApp connector to it in Contact Center, save its id in the channel, then run `switchboard bitrix activate-connector`."
        )
    } else {
        format!(
            "the WhatsApp connector was disconnected from Open Channel line {line} in Bitrix24: customer messages for it are not delivered. Connect it again in Contact Center, then run `switchboard bitrix activate-connector --line {line}`."
        )
    };
    tracing::error!(line = %line, event = %event, "{reason}");
    store::raise_alert(&relay.core.db, &line_alert(&line), &reason)
        .await
        .map_err(retry_db)?;
    Ok(ProcessOutcome::Processed)
}
