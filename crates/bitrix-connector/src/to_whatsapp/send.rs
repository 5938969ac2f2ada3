//! Operator replies → WhatsApp: the send job. [`relay_to_whatsapp`] sends what the `bitrix`
//! processor let through, part by part, confirms delivery to Bitrix and keeps the id ↔ wamid
//! map for Meta's later statuses.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_core::{JobContext, JobError, JobKind, db::now_ms};

use super::{
    bbcode, failed, files, portal_file,
    template::{self, template_body, template_command},
};
use crate::templates::fill::Command;
use crate::{
    bitrix::events::OperatorMessage,
    channels::Channel,
    meta::{MetaClient, MetaError},
    relay::{Relay, retry_db},
    store,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayToWhatsapp {
    pub message: OperatorMessage,
}

impl JobKind for RelayToWhatsapp {
    const KIND: &'static str = "bitrix-connector.relay-to-whatsapp";
}

pub async fn relay_to_whatsapp(
    relay: &Relay,
    job: RelayToWhatsapp,
    _ctx: JobContext,
) -> Result<(), JobError> {
    let m = job.message;
    let db = &relay.core.db;
    let Some(row) = store::outbound_by_message(db, &m.message_id)
        .await
        .map_err(retry_db)?
    else {
        return Ok(());
    };
    match row.state.as_str() {
        "received" => match send(relay, &m, &row).await {
            Ok(true) => mark_read(relay, &m).await,
            Ok(false) => return Ok(()),
            Err(e) => {
                // 131047 refused at once is settled like the window guard: blocked_window and
                // the operator's note, nothing a retry or a dead letter could fix.
                let now = store::outbound_by_message(db, &m.message_id)
                    .await
                    .map_err(retry_db)?;
                if now.is_some_and(|r| r.state == "blocked_window") {
                    return Ok(());
                }
                return Err(e);
            }
        },
        // Sent, but Bitrix was not told yet (it failed, or the worker died in between).
        "sent" => {}
        _ => return Ok(()),
    }
    let row = store::outbound_by_message(db, &m.message_id)
        .await
        .map_err(retry_db)?
        .unwrap_or(row);
    let wamids = store::wamids_of(db, &row).await.map_err(retry_db)?;
    confirm_delivery(relay, &m, &wamids).await
}

/// The channel the reply goes out through: the one of the line the operator wrote in.
async fn channel_of(relay: &Relay, m: &OperatorMessage) -> Result<Channel, JobError> {
    crate::channels::for_reply(relay, m.line.as_deref())
        .await
        .map_err(crate::to_bitrix::split::config_error)?
        .ok_or_else(|| {
            JobError::Permanent(format!(
                "Open Channel line {} has no WhatsApp number: add it to [[bitrix.channels]], then retry",
                m.line.as_deref().unwrap_or("?")
            ))
        })
}

/// One send to Meta: `part` 0 is text on its own (or the template), `n` the n-th file.
struct Part {
    index: i64,
    body: Value,
}

/// Sends the reply's parts that Meta has not accepted yet, recording each as it is accepted,
/// so a retry after a failed later part never repeats an earlier one. `false` when nothing
/// was sent: the operator's template command was answered with a note instead.
async fn send(
    relay: &Relay,
    m: &OperatorMessage,
    row: &store::OutboundRow,
) -> Result<bool, JobError> {
    let db = &relay.core.db;
    let channel = channel_of(relay, m).await?;
    let meta = MetaClient::for_number(&relay.core, &channel.phone_number_id)
        .await
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let done: Vec<i64> = store::sent_parts(db, &m.message_id)
        .await
        .map_err(retry_db)?
        .into_iter()
        .map(|(part, _)| part)
        .collect();
    let address = store::address_of(db, &m.customer).await.map_err(retry_db)?;
    let context = quoted_wamid(relay, &channel, m).await?;
    let mut sender = PartSender {
        relay,
        meta: &meta,
        m,
        row,
        done: &done,
        address: &address,
        context: context.as_deref(),
    };
    match template_command(&m.text) {
        Some(Command::Send {
            name,
            language,
            given,
        }) => match template_body(relay, m, &name, language.as_deref(), &given).await? {
            Ok(body) => sender.send(Part { index: 0, body }).await?,
            Err(note) => {
                template::refuse(relay, m, &note).await?;
                return Ok(false);
            }
        },
        Some(Command::List) => {
            template::list(relay, m).await?;
            return Ok(false);
        }
        None => send_content(relay, m, &mut sender).await?,
    }
    let first = store::sent_parts(db, &m.message_id)
        .await
        .map_err(retry_db)?
        .into_iter()
        .next()
        .map(|(_, w)| w)
        .ok_or_else(|| JobError::Permanent("an empty reply: nothing to send".into()))?;
    store::set_outbound(db, &m.message_id, "sent", Some(&first), None)
        .await
        .map_err(retry_db)?;
    metrics::counter!("switchboard_bitrix_relayed_total", "direction" => "outbound").increment(1);
    Ok(true)
}

struct PartSender<'a> {
    relay: &'a Relay,
    meta: &'a MetaClient,
    m: &'a OperatorMessage,
    row: &'a store::OutboundRow,
    done: &'a [i64],
    /// Where the customer is reached now: their number, or their business-scoped user id.
    address: &'a store::Address,
    /// The customer's message the operator quoted, shown by WhatsApp above the reply.
    context: Option<&'a str>,
}

impl PartSender<'_> {
    fn is_done(&self, index: i64) -> bool {
        self.done.contains(&index)
    }

    async fn send(&mut self, part: Part) -> Result<(), JobError> {
        if self.is_done(part.index) {
            return Ok(());
        }
        let mut body = part.body;
        body["biz_opaque_callback_data"] = json!(callback_data(&self.m.message_id, part.index));
        // The text goes as part 0, or as the first file's caption.
        if let Some(wamid) = self.context
            && part.index <= 1
        {
            body["context"] = json!({"message_id": wamid});
        }
        // A customer who changed number is reached at the new one; one who hides their number
        // by `recipient` (protocol §2.5: `to` would win if both were given).
        if let Some(fields) = body.as_object_mut() {
            match self.address {
                store::Address::Phone(phone) => {
                    fields.insert("to".into(), json!(phone));
                }
                store::Address::UserId(user_id) => {
                    fields.remove("to");
                    fields.insert("recipient".into(), json!(user_id));
                }
            }
        }
        match self.meta.send(&body).await {
            Ok(wamid) => {
                store::record_part(&self.relay.core.db, &self.m.message_id, part.index, &wamid)
                    .await
                    .map_err(retry_db)
            }
            Err(e) => Err(refused(self.relay, self.row, e).await),
        }
    }
}

/// How many of the customer's latest messages an operator's quote is looked for in.
const QUOTE_SEARCH: i64 = 50;

/// The wamid of the customer's message the operator quoted (Bitrix puts a quote in the text as
/// a block, which arrives here as `> ` lines): the latest one whose kept text the quote holds.
async fn quoted_wamid(
    relay: &Relay,
    channel: &Channel,
    m: &OperatorMessage,
) -> Result<Option<String>, JobError> {
    let text = bbcode::to_whatsapp(&m.text);
    let quoted: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("> ").or_else(|| l.strip_prefix('>')))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if quoted.is_empty() {
        return Ok(None);
    }
    let quoted = quoted.join("\n");
    let recent = store::recent_bodies(
        &relay.core.db,
        &channel.phone_number_id,
        &m.customer,
        QUOTE_SEARCH,
    )
    .await
    .map_err(retry_db)?;
    Ok(recent.into_iter().find_map(|(wamid, body)| {
        let body = body.trim();
        (!body.is_empty() && quoted.contains(body)).then_some(wamid)
    }))
}

/// Marks the customer's latest message read at Meta once the operator answered it, so the
/// customer sees blue ticks (setting `bitrix.mark_read`, on by default). A refusal only logs:
/// the reply itself went out.
async fn mark_read(relay: &Relay, m: &OperatorMessage) {
    let on = crate::setting_values::optional(&relay.core, crate::catalogue::BITRIX_MARK_READ)
        .await
        .ok()
        .flatten()
        .is_none_or(|v| {
            !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "false" | "no" | "off" | "0"
            )
        });
    if !on {
        return;
    }
    let Ok(channel) = channel_of(relay, m).await else {
        return;
    };
    let latest = store::latest_inbound(&relay.core.db, &channel.phone_number_id, &m.customer).await;
    let Ok(Some(wamid)) = latest else {
        return;
    };
    let marked = match MetaClient::for_number(&relay.core, &channel.phone_number_id).await {
        Ok(meta) => meta.mark_read(&wamid).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = marked {
        tracing::warn!(error = %e, "could not mark the customer's message read at Meta");
    }
}

/// Echoed by Meta in every status of the part, so a status that arrives before the send job
/// recorded the part's wamid still finds its message.
pub(crate) fn callback_data(bitrix_message_id: &str, part: i64) -> String {
    format!("{CALLBACK_PREFIX}{bitrix_message_id}:{part}")
}

/// Marks the callback data as this bridge's: `bitrix:<message id>:<part>`.
const CALLBACK_PREFIX: &str = "bitrix:";

/// The (Bitrix message id, part) of [`callback_data`].
pub(crate) fn parse_callback_data(data: &str) -> Option<(&str, i64)> {
    let (id, part) = data.strip_prefix(CALLBACK_PREFIX)?.rsplit_once(':')?;
    Some((id, part.parse().ok()?)).filter(|(id, _)| !id.is_empty())
}

async fn refused(relay: &Relay, row: &store::OutboundRow, e: MetaError) -> JobError {
    if e.is_retryable() {
        return e.into_job_error();
    }
    tracing::error!(error = %e.explained(), "Meta refused an operator reply");
    let errors = [json!({"message": e.to_string()})];
    if let Err(je) = failed::report_failed_status(relay, row, e.code(), &errors).await {
        return je;
    }
    // Terminal: a dead letter carrying the fix (131047, now blocked_window, is settled by the
    // caller instead).
    JobError::Permanent(e.explained())
}

/// Text alone (part 0), or one media send per file (part n+1) with the text as the first
/// file's caption; audio takes no caption, so then the text goes first on its own.
async fn send_content(
    relay: &Relay,
    m: &OperatorMessage,
    sender: &mut PartSender<'_>,
) -> Result<(), JobError> {
    let text = bbcode::to_whatsapp(&m.text);
    let base =
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": m.customer});
    let text_body = || {
        let mut body = base.clone();
        body["type"] = json!("text");
        body["text"] = json!({"preview_url": false, "body": text});
        Part { index: 0, body }
    };
    if m.files.is_empty() {
        if text.is_empty() {
            return Err(JobError::Permanent(
                "an empty reply: nothing to send".into(),
            ));
        }
        return sender.send(text_body()).await;
    }
    let portal = files::portal_url(relay).await?;
    // Every link is checked before the first part goes out, so a reply with a link off the
    // portal sends nothing at all.
    for f in &m.files {
        if let Err(e) = portal_file::resolve(&portal, &f.link) {
            return Err(files::file_failed(relay, sender.row, f, e).await);
        }
    }
    for (n, f) in m.files.iter().enumerate() {
        let index = n as i64 + 1;
        // Sent before: skip the download too. (If the first file is done and part 0 is not,
        // the text went as its caption.)
        if sender.is_done(index) {
            continue;
        }
        let (kind, mut obj, filename) =
            files::fetch_file(relay, &portal, sender.row, m, n, f).await?;
        if n == 0 && !text.is_empty() {
            if kind == "audio" {
                sender.send(text_body()).await?;
            } else if !sender.is_done(0) {
                obj["caption"] = json!(text);
            }
        }
        if kind == "document" {
            obj["filename"] = json!(filename);
        }
        let mut body = base.clone();
        body["type"] = json!(kind);
        body[kind] = obj;
        sender.send(Part { index, body }).await?;
    }
    Ok(())
}

/// Without this the operator sees the reply stuck as "sending" (protocol §5.2). `message.id`
/// carries every part's wamid, so update/delete events and statuses of any part correlate.
async fn confirm_delivery(
    relay: &Relay,
    m: &OperatorMessage,
    wamids: &[String],
) -> Result<(), JobError> {
    let connector = relay
        .bitrix
        .connector()
        .await
        .map_err(|e| e.into_job_error())?;
    let line = channel_of(relay, m).await?.line;
    relay
        .bitrix
        .call(
            "imconnector.send.status.delivery",
            json!({"CONNECTOR": connector, "LINE": line, "MESSAGES": [{
                "im": {"chat_id": m.chat_id, "message_id": m.message_id},
                "message": {"id": wamids, "date": now_ms() / 1000},
                "chat": {"id": m.customer},
            }]}),
        )
        .await
        .map_err(|e| e.into_job_error())?;
    store::set_outbound(&relay.core.db, &m.message_id, "delivered", None, None)
        .await
        .map_err(retry_db)
}

#[cfg(test)]
mod tests {
    use super::{callback_data, parse_callback_data};

    #[test]
    fn callback_data_round_trips() {
        let data = callback_data("98711", 2);
        assert_eq!(parse_callback_data(&data), Some(("98711", 2)));
        assert_eq!(parse_callback_data("bitrix::1"), None);
        assert_eq!(parse_callback_data("other:1:2"), None);
        assert_eq!(parse_callback_data("bitrix:1:x"), None);
    }
}
