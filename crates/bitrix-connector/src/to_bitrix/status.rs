//! Meta's statuses of an operator's message (delivered, read, failed), reported to Bitrix so
//! the operator sees them on the reply.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_core::{JobContext, JobError, JobKind};

use crate::{
    bitrix::BitrixError,
    meta::payload::StatusUnit,
    relay::{Relay, retry_db},
    store,
};

/// A Meta status of an operator's message, to report to Bitrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayStatusToBitrix {
    pub unit: StatusUnit,
}

impl JobKind for RelayStatusToBitrix {
    const KIND: &'static str = "bitrix-connector.relay-status-to-bitrix";
}

pub async fn relay_status_to_bitrix(
    relay: &Relay,
    job: RelayStatusToBitrix,
    _ctx: JobContext,
) -> Result<(), JobError> {
    let unit = job.unit;
    let db = &relay.core.db;
    let mut found = store::outbound_by_wamid(db, &unit.wamid)
        .await
        .map_err(retry_db)?;
    if found.is_none()
        && let Some((message_id, part)) = unit
            .callback_data
            .as_deref()
            .and_then(crate::to_whatsapp::send::parse_callback_data)
    {
        // Meta's status overtook the send job's record of this part: record it from here.
        if store::outbound_by_message(db, message_id)
            .await
            .map_err(retry_db)?
            .is_some()
        {
            store::record_part(db, message_id, part, &unit.wamid)
                .await
                .map_err(retry_db)?;
            found = store::outbound_by_wamid(db, &unit.wamid)
                .await
                .map_err(retry_db)?;
        }
    }
    let Some(row) = found else {
        // Not a message this bridge sent for an operator (or sent before the map existed).
        return Ok(());
    };
    if crate::templates::first::is_first(&row.bitrix_message_id) {
        return first_status(relay, &row, &unit).await;
    }
    if row.state == "received" && unit.status != "failed" {
        // The reply's send job is still at work (a later part pending or retrying): it
        // confirms delivery with every part's wamid when done, and `read` changes nothing in
        // Bitrix (protocol §5.2). Reporting now would mark it delivered with a partial id list.
        return Ok(());
    }
    let connector = relay
        .bitrix
        .connector()
        .await
        .map_err(BitrixError::into_job_error)?;
    // The status comes from the number that sent the reply: its channel's line is the chat's.
    let channel = if unit.phone_number_id.is_empty() {
        Some(
            crate::channels::v1(relay)
                .await
                .map_err(super::split::config_error)?,
        )
    } else {
        crate::channels::for_number(relay, &unit.phone_number_id)
            .await
            .map_err(super::split::config_error)?
    };
    let Some(line) = channel.map(|c| c.line) else {
        tracing::warn!(phone_number_id = %unit.phone_number_id, "a status for a number that has no channel any more; not reported");
        return Ok(());
    };
    // All of the message's wamids, not just this part's: Bitrix replaces the message's
    // CONNECTOR_MID with what it is given.
    let wamids = store::wamids_of(db, &row).await.map_err(retry_db)?;
    let item = |with_date: bool| {
        let mut message = json!({"id": wamids});
        if with_date {
            message["date"] = json!(crate::bitrix::oauth::now_secs());
        }
        json!({
            "im": {"chat_id": row.bitrix_chat_id, "message_id": row.bitrix_message_id},
            "message": message,
            "chat": {"id": row.wa_id},
        })
    };
    let call = |method: &'static str, with_date: bool| {
        let params = json!({"CONNECTOR": connector, "LINE": line, "MESSAGES": [item(with_date)]});
        async move { relay.bitrix.call(method, params).await }
    };
    match unit.status.as_str() {
        "delivered" => {
            call("imconnector.send.status.delivery", true)
                .await
                .map_err(BitrixError::into_job_error)?;
        }
        "read" => {
            // `read` may arrive without `delivered` (protocol §2.4); delivery also clears
            // "sending", so confirm it first when it is still outstanding.
            if row.state != "delivered" && row.state != "read" {
                call("imconnector.send.status.delivery", true)
                    .await
                    .map_err(BitrixError::into_job_error)?;
            }
            call("imconnector.send.status.reading", false)
                .await
                .map_err(BitrixError::into_job_error)?;
        }
        "failed" => {
            let code = unit
                .errors
                .first()
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64);
            crate::to_whatsapp::failed::report_failed_status(relay, &row, code, &unit.errors)
                .await?;
            return Ok(());
        }
        _ => return Ok(()),
    }
    if row.state != "failed" && row.state != "blocked_window" {
        let state = if unit.status == "read" {
            "read"
        } else {
            "delivered"
        };
        store::set_outbound(db, &row.bitrix_message_id, state, None, None)
            .await
            .map_err(retry_db)?;
    }
    Ok(())
}

/// A status of a template sent first: no Bitrix24 message to mark, so `delivered` and `read`
/// are only kept; `failed` is told in the chat once it is open.
async fn first_status(
    relay: &Relay,
    row: &store::OutboundRow,
    unit: &StatusUnit,
) -> Result<(), JobError> {
    match unit.status.as_str() {
        "failed" => {
            let code = unit
                .errors
                .first()
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64);
            if row.bitrix_chat_id.is_empty() {
                // Before its conversation opened: kept, and told when it opens.
                let detail = unit
                    .errors
                    .first()
                    .and_then(|e| {
                        e.pointer("/error_data/details")
                            .or_else(|| e.get("message"))
                    })
                    .and_then(Value::as_str)
                    .unwrap_or("no details");
                let note = crate::to_whatsapp::failed::note_for(code, detail);
                if store::fail_unopened(&relay.core.db, &row.bitrix_message_id, &note)
                    .await
                    .map_err(retry_db)?
                {
                    return Ok(());
                }
            }
            let row = store::outbound_by_message(&relay.core.db, &row.bitrix_message_id)
                .await
                .map_err(retry_db)?
                .unwrap_or_else(|| row.clone());
            crate::to_whatsapp::failed::report_failed_status(relay, &row, code, &unit.errors).await
        }
        "delivered" | "read" if row.state != "failed" => store::set_outbound(
            &relay.core.db,
            &row.bitrix_message_id,
            &unit.status,
            None,
            None,
        )
        .await
        .map_err(retry_db),
        _ => Ok(()),
    }
}
