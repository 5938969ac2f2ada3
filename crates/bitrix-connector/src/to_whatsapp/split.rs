//! The `bitrix` processor: a stored event becomes one send job per operator message, each
//! deduped on its Bitrix id, except replies the 24-hour window guard stops (the audit status
//! `blocked_window` plus a note in the chat). The window is the one of the channel the operator
//! wrote in: the customer's message to another number opened no window on this one.

use switchboard_core::{
    JobContext, JobError,
    db::now_ms,
    inbox::{ProcessOutcome, StoredEvent},
};

use super::{send::RelayToWhatsapp, template::template_command};
use crate::templates::fill::{self, Command};
use crate::{
    bitrix::{events, notes, php_form},
    relay::{Relay, reply_key, retry_db},
    store,
};

/// WhatsApp lets a business answer freely for 24 hours after the customer's last message;
/// after that only an approved template goes out.
const WINDOW_MS: i64 = 24 * 3600 * 1000;

pub async fn process_bitrix_event(
    relay: &Relay,
    event: StoredEvent,
    _ctx: JobContext,
) -> Result<ProcessOutcome, JobError> {
    let db = &relay.core.db;
    let form = php_form::parse(&event.body).map_err(JobError::Permanent)?;
    let name = php_form::text(&form, &["event"])
        .unwrap_or(events::MESSAGE_ADD)
        .to_ascii_uppercase();
    match name.as_str() {
        events::MESSAGE_UPDATE | events::MESSAGE_DELETE => {
            return super::changed::operator_changed(relay, &form, &name).await;
        }
        events::LINE_DELETE | events::STATUS_DELETE => {
            return super::changed::connector_gone(relay, &form, &name).await;
        }
        _ => {}
    }
    let msgs = events::messages(&form);
    let mut pushed = 0;
    let mut blocked = None;
    let mut unrouted = None;
    let mut answered = 0;
    for m in msgs {
        let channel = crate::channels::for_reply(relay, m.line.as_deref())
            .await
            .map_err(crate::to_bitrix::split::config_error)?;
        let number = channel.as_ref().map_or("", |c| c.phone_number_id.as_str());
        store::record_outbound_from(db, &m.message_id, &m.chat_id, &m.customer, number)
            .await
            .map_err(retry_db)?;
        let said = super::bbcode::to_whatsapp(&m.text);
        if !said.trim().is_empty() {
            store::set_outbound_body(db, &m.message_id, &said)
                .await
                .map_err(retry_db)?;
        }
        let row = store::outbound_by_message(db, &m.message_id)
            .await
            .map_err(retry_db)?;
        if row.is_some_and(|r| r.state != "received") {
            continue;
        }
        let Some(channel) = channel else {
            // Sending it from some other number would reach the customer from a stranger.
            let line = m.line.as_deref().unwrap_or("?");
            let why = format!(
                "reply in Open Channel line {line}, which no WhatsApp number is bound to: not sent"
            );
            notes::post(&relay.bitrix, &m.chat_id, &format!("⚠ This reply was not sent: Open Channel line {line} has no WhatsApp number. Add it to [[bitrix.channels]] in Switchboard's config file with its phone_number_id, restart, and send the reply again."))
                .await
                .map_err(|e| e.into_job_error())?;
            store::set_outbound(db, &m.message_id, "failed", None, Some(&why))
                .await
                .map_err(retry_db)?;
            unrouted = Some(why);
            continue;
        };
        let last = store::last_inbound_to(db, &channel.phone_number_id, &m.customer)
            .await
            .map_err(retry_db)?;
        let open = last.is_some_and(|t| now_ms() - t < WINDOW_MS);
        let command = template_command(&m.text);
        if !open && command.is_none() {
            let why = "reply outside WhatsApp's 24-hour window: not sent".to_string();
            // The note offers what can go out now: the approved templates.
            super::template::synced_once(relay).await;
            let offer = fill::listing(relay).await;
            notes::post(&relay.bitrix, &m.chat_id, &format!("⚠ This reply was not sent: the customer's last WhatsApp message is more than 24 hours old. {}\n{offer}", crate::error::fix::META_131047))
                .await
                .map_err(|e| e.into_job_error())?;
            store::set_outbound(db, &m.message_id, "blocked_window", None, Some(&why))
                .await
                .map_err(retry_db)?;
            blocked = Some(why);
            continue;
        }
        if command == Some(Command::List) {
            // Answered here with a note: nothing goes to the customer, in or out of the window.
            super::template::list(relay, &m).await?;
            answered += 1;
            continue;
        }
        let key = reply_key(&m.message_id);
        relay
            .core
            .jobs
            .push_once(&RelayToWhatsapp { message: m }, &event.request_id, &key)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        pushed += 1;
    }
    Ok(match (blocked, pushed) {
        (Some(why), _) => ProcessOutcome::BlockedWindow(why),
        (None, 0) if answered > 0 => ProcessOutcome::Processed,
        (None, 0) if let Some(why) = unrouted => ProcessOutcome::Skipped(why),
        (None, 0) => ProcessOutcome::Skipped("duplicate: every message was handled before".into()),
        _ => ProcessOutcome::Processed,
    })
}
