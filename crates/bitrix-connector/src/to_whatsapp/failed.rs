//! Operator replies that did not make it to WhatsApp: the state kept in the message map and
//! the note the operator sees. Shared by the send job and by Meta's later `failed` statuses,
//! since Meta reports most failures (131047 above all) only after accepting the send.

use serde_json::Value;
use switchboard_core::JobError;

use crate::{bitrix::notes, error::fix, relay::Relay, store};

/// The operator-facing explanation of a Meta error code. For the codes with a known fix the
/// note is the same whether Meta refused the send or reported it `failed` later (their
/// wording differs; the detail goes to the log and the stored error instead).
pub fn note_for(code: Option<i64>, detail: &str) -> String {
    let known = match code {
        Some(131047) => Some(fix::META_131047),
        Some(190) | Some(0) => Some(fix::META_190),
        Some(131030) => Some(fix::META_131030),
        Some(132000) => Some(fix::META_132000),
        Some(132001) => Some(fix::META_132001),
        Some(132012) => Some(fix::META_132012),
        Some(132015) => Some(fix::META_132015),
        Some(132016) => Some(fix::META_132016),
        _ => None,
    };
    let code_text = code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
    match known {
        Some(fix_text) => {
            format!("⚠ WhatsApp did not deliver this reply (Meta error {code_text}). {fix_text}")
        }
        None => format!(
            "⚠ WhatsApp did not deliver this reply (Meta error {code_text}: {detail}). Check the bridge's dead letters (`switchboard jobs list --dead`) and retry after fixing the cause."
        ),
    }
}

/// A `failed` status for an operator's message: mark it, and tell the operator once.
pub async fn report_failed_status(
    relay: &Relay,
    row: &store::OutboundRow,
    code: Option<i64>,
    errors: &[Value],
) -> Result<(), JobError> {
    if row.state == "failed" || row.state == "blocked_window" {
        return Ok(());
    }
    let detail = errors
        .first()
        .and_then(|e| {
            e.pointer("/error_data/details")
                .or_else(|| e.get("message"))
                .or_else(|| e.get("title"))
        })
        .and_then(Value::as_str)
        .unwrap_or("no details");
    let state = if code == Some(131047) {
        "blocked_window"
    } else {
        "failed"
    };
    tracing::warn!(
        bitrix_message_id = %row.bitrix_message_id,
        code,
        detail,
        "Meta reported an operator reply as failed"
    );
    notes::post(&relay.bitrix, &row.bitrix_chat_id, &note_for(code, detail))
        .await
        .map_err(|e| e.into_job_error())?;
    store::set_outbound(
        &relay.core.db,
        &row.bitrix_message_id,
        state,
        None,
        Some(detail),
    )
    .await
    .map_err(|e| JobError::Retry(format!("database: {e}")))
}
