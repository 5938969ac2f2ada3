//! Operator replies → WhatsApp. The `bitrix` processor splits a stored event into messages,
//! dedupes each on its Bitrix id and applies the 24-hour window guard (a blocked reply is the
//! audit status `blocked_window` plus a note in the chat); [`relay_to_whatsapp`] sends the rest,
//! confirms delivery to Bitrix and keeps the id ↔ wamid map for Meta's later statuses.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_core::{
    JobContext, JobError, JobKind, db::now_ms, inbox::StoredEvent, processing::Outcome,
};

use crate::{
    bbcode,
    events::{self, OperatorMessage},
    jobs::Relay,
    media::{self, Media},
    meta::{MetaClient, MetaError},
    notes, outbound, php_form,
    portal_file::{self, FileError, Limit},
    setting_values::{public_link, required},
    store,
};

const WINDOW_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayToWhatsapp {
    pub message: OperatorMessage,
}

impl JobKind for RelayToWhatsapp {
    const KIND: &'static str = "bitrix-connector.relay-to-whatsapp";
}

fn retry_db(e: sqlx::Error) -> JobError {
    JobError::Retry(format!("database: {e}"))
}

/// `/template NAME` on the reply's last line asks for a configured approved template, which may
/// be sent outside the window. The last line, because the operator signature prefix
/// (`[b]Name:[/b][br]`) may come first.
fn template_command(text: &str) -> Option<String> {
    let plain = bbcode::to_whatsapp(text);
    let line = plain.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let name = line.strip_prefix("/template")?;
    // `/templates` or `/templateX` is not the command.
    if !name.is_empty() && !name.starts_with(char::is_whitespace) {
        return None;
    }
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

pub async fn process_bitrix_event(
    relay: &Relay,
    event: StoredEvent,
    _ctx: JobContext,
) -> Result<Outcome, JobError> {
    let db = &relay.core.db;
    let form = php_form::parse(&event.body).map_err(JobError::Permanent)?;
    let msgs = events::messages(&form);
    let mut pushed = 0;
    let mut blocked = None;
    for m in msgs {
        store::record_outbound(db, &m.message_id, &m.chat_id, &m.customer)
            .await
            .map_err(retry_db)?;
        let row = store::outbound_by_message(db, &m.message_id)
            .await
            .map_err(retry_db)?;
        if row.is_some_and(|r| r.state != "received") {
            continue;
        }
        let last = store::last_inbound_at(db, &m.customer)
            .await
            .map_err(retry_db)?;
        let open = last.is_some_and(|t| now_ms() - t < WINDOW_MS);
        if !open && template_command(&m.text).is_none() {
            let why = "reply outside WhatsApp's 24-hour window: not sent".to_string();
            notes::post(&relay.bitrix, &m.chat_id, &format!("⚠ This reply was not sent: the customer's last WhatsApp message is more than 24 hours old. {}", crate::error::fix::META_131047))
                .await
                .map_err(|e| e.into_job_error())?;
            store::set_outbound(db, &m.message_id, "blocked_window", None, Some(&why))
                .await
                .map_err(retry_db)?;
            blocked = Some(why);
            continue;
        }
        let key = format!("reply:{}", m.message_id);
        relay
            .core
            .jobs
            .push_once(&RelayToWhatsapp { message: m }, &event.request_id, &key)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        pushed += 1;
    }
    Ok(match (blocked, pushed) {
        (Some(why), _) => Outcome::BlockedWindow(why),
        (None, 0) => Outcome::Skipped("duplicate: every message was handled before".into()),
        _ => Outcome::Processed,
    })
}

/// Graph message type for a Bitrix file.
fn media_type(kind: &str, mime: &str) -> &'static str {
    match (kind, mime.split('/').next().unwrap_or("")) {
        ("image", _) | (_, "image") if mime != "image/webp" => "image",
        ("video", _) | (_, "video") => "video",
        ("audio", _) | (_, "audio") => "audio",
        _ => "document",
    }
}

const MB: u64 = 1024 * 1024;

/// What WhatsApp accepts per Graph media type (protocol Meta §4); Meta would refuse more after
/// accepting the send, so a larger file is refused before it is downloaded whole.
fn whatsapp_limit(media_type: &str) -> Limit {
    match media_type {
        "image" => Limit {
            bytes: 5 * MB,
            what: "an image",
        },
        "video" => Limit {
            bytes: 16 * MB,
            what: "a video",
        },
        "audio" => Limit {
            bytes: 16 * MB,
            what: "audio",
        },
        _ => Limit {
            bytes: 100 * MB,
            what: "a document",
        },
    }
}

fn mime_from_name(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
        .as_str()
    {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "ogg" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "txt" => "text/plain",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
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
            Ok(true) => {}
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

/// One send to Meta: `part` 0 is text on its own (or the template), `n` the n-th file.
struct Part {
    index: i64,
    body: Value,
}

/// Sends the reply's parts that Meta has not accepted yet, recording each as it is accepted,
/// so a retry after a failed later part never repeats an earlier one. `false` when nothing
/// was sent because the operator asked for a template that is not configured.
async fn send(
    relay: &Relay,
    m: &OperatorMessage,
    row: &store::OutboundRow,
) -> Result<bool, JobError> {
    let db = &relay.core.db;
    let meta = MetaClient::from_settings(&relay.core)
        .await
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let done: Vec<i64> = store::sent_parts(db, &m.message_id)
        .await
        .map_err(retry_db)?
        .into_iter()
        .map(|(part, _)| part)
        .collect();
    let mut sender = PartSender {
        relay,
        meta: &meta,
        m,
        row,
        done: &done,
    };
    match template_command(&m.text) {
        Some(name) => match template_body(relay, m, &name).await? {
            Some(body) => sender.send(Part { index: 0, body }).await?,
            None => {
                unknown_template(relay, m, &name).await?;
                return Ok(false);
            }
        },
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

/// Echoed by Meta in every status of the part, so a status that arrives before the send job
/// recorded the part's wamid still finds its message.
fn callback_data(bitrix_message_id: &str, part: i64) -> String {
    format!("bitrix:{bitrix_message_id}:{part}")
}

/// The (Bitrix message id, part) of [`callback_data`].
pub(crate) fn parse_callback_data(data: &str) -> Option<(&str, i64)> {
    let (id, part) = data.strip_prefix("bitrix:")?.rsplit_once(':')?;
    Some((id, part.parse().ok()?)).filter(|(id, _)| !id.is_empty())
}

/// The operator typed a template name that is not in `[[bitrix.templates]]`: nothing is sent,
/// and the note lists what is configured. Not a dead letter: there is nothing to retry.
async fn unknown_template(relay: &Relay, m: &OperatorMessage, name: &str) -> Result<(), JobError> {
    let names: Vec<&str> = relay
        .core
        .config
        .bitrix_templates
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let note = format!(
        "⚠ Not sent: no template named \"{name}\" is configured. Configured templates: {}.",
        if names.is_empty() {
            "none (add them as [[bitrix.templates]] in the config file)".to_string()
        } else {
            names.join(", ")
        }
    );
    tracing::warn!(bitrix_message_id = %m.message_id, template = name, "unknown template requested");
    notes::post(&relay.bitrix, &m.chat_id, &note)
        .await
        .map_err(|e| e.into_job_error())?;
    store::set_outbound(&relay.core.db, &m.message_id, "failed", None, Some(&note))
        .await
        .map_err(retry_db)
}

async fn refused(relay: &Relay, row: &store::OutboundRow, e: MetaError) -> JobError {
    if e.is_retryable() {
        return e.into_job_error();
    }
    tracing::error!(error = %e.explained(), "Meta refused an operator reply");
    let errors = [json!({"message": e.to_string()})];
    if let Err(je) = outbound::report_failed_status(relay, row, e.code(), &errors).await {
        return je;
    }
    // Terminal: a dead letter carrying the fix (131047, now blocked_window, is settled by the
    // caller instead).
    JobError::Permanent(e.explained())
}

/// The configured template, its `{name}` parameters filled with the customer's name.
async fn template_body(
    relay: &Relay,
    m: &OperatorMessage,
    name: &str,
) -> Result<Option<Value>, JobError> {
    let Some(t) = relay
        .core
        .config
        .bitrix_templates
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
    else {
        return Ok(None);
    };
    let mut template = json!({"name": t.name, "language": {"code": t.language}});
    if !t.body_parameters.is_empty() {
        let customer = store::customer_name(&relay.core.db, &m.customer)
            .await
            .map_err(retry_db)?
            .unwrap_or_else(|| m.customer.clone());
        let params: Vec<Value> = t
            .body_parameters
            .iter()
            .map(|p| json!({"type": "text", "text": p.replace("{name}", &customer)}))
            .collect();
        template["components"] = json!([{"type": "body", "parameters": params}]);
    }
    Ok(Some(
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": m.customer, "type": "template", "template": template}),
    ))
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
    let portal = portal_url(relay).await?;
    // Every link is checked before the first part goes out, so a reply with a link off the
    // portal sends nothing at all.
    for f in &m.files {
        if let Err(e) = portal_file::resolve(&portal, &f.link) {
            return Err(file_failed(relay, sender.row, f, e).await);
        }
    }
    for (n, f) in m.files.iter().enumerate() {
        let index = n as i64 + 1;
        // Sent before: skip the download too. (If the first file is done and part 0 is not,
        // the text went as its caption.)
        if sender.is_done(index) {
            continue;
        }
        let (kind, mut obj, filename) = fetch_file(relay, &portal, sender.row, m, n, f).await?;
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

/// `bitrix.portal_url`: the one origin operators' file links may point to.
async fn portal_url(relay: &Relay) -> Result<reqwest::Url, JobError> {
    let configured = required(&relay.core, crate::catalogue::BITRIX_PORTAL_URL)
        .await
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    reqwest::Url::parse(configured.trim())
        .map_err(|e| JobError::Permanent(format!("bitrix.portal_url is not a URL: {e}")))
}

/// Downloads a Bitrix file from the portal (see [`portal_file`]): its mime type, Graph media
/// type and bytes.
async fn download(
    portal: &reqwest::Url,
    f: &crate::events::OperatorFile,
) -> Result<(String, &'static str, Vec<u8>), FileError> {
    let resp = portal_file::open(portal, portal_file::resolve(portal, &f.link)?).await?;
    let mime = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.starts_with("application/octet-stream"))
        .map(str::to_string)
        .unwrap_or_else(|| mime_from_name(&f.name).to_string());
    let kind = media_type(&f.kind, &mime);
    let bytes = portal_file::read_capped(resp, whatsapp_limit(kind)).await?;
    Ok((mime, kind, bytes))
}

/// Downloads a Bitrix file and re-hosts it under `/media/…` for Meta to fetch: (Graph media
/// type, media object with the link, safe file name).
async fn fetch_file(
    relay: &Relay,
    portal: &reqwest::Url,
    row: &store::OutboundRow,
    m: &OperatorMessage,
    n: usize,
    f: &crate::events::OperatorFile,
) -> Result<(&'static str, Value, String), JobError> {
    let (mime, kind, bytes) = match download(portal, f).await {
        Ok(downloaded) => downloaded,
        Err(e) => return Err(file_failed(relay, row, f, e).await),
    };
    let copy = Media {
        mime,
        filename: media::safe_filename(&f.name),
        bytes,
    };
    let id = media::put(
        &relay.core.db,
        &format!("bitrix:{}:{n}", m.message_id),
        &copy,
    )
    .await
    .map_err(retry_db)?;
    let obj = json!({"link": public_link(&relay.core, &format!("/media/{id}"))});
    Ok((kind, obj, copy.filename))
}

/// A file that could not be fetched. Unreachable for now: retried. Refused (the bridge will
/// not fetch it, or WhatsApp would not take it): the operator gets a note saying which and
/// why, the reply is `failed`, and the job a dead letter carrying the reason (retrying cannot
/// help, and a link leading off the portal is worth a look).
async fn file_failed(
    relay: &Relay,
    row: &store::OutboundRow,
    f: &crate::events::OperatorFile,
    e: FileError,
) -> JobError {
    if !e.is_final() {
        return JobError::Retry(format!("downloading the Bitrix file: {e}"));
    }
    let what_now = match e {
        FileError::TooLarge(_) => "Send a smaller file, or a link to it in the text.",
        _ => {
            "The bridge fetches files only from this portal; if the file did come from it, \
             tell your administrator."
        }
    };
    let sent_before = match store::sent_parts(&relay.core.db, &row.bitrix_message_id).await {
        Ok(parts) => !parts.is_empty(),
        Err(db) => return retry_db(db),
    };
    let name = media::safe_filename(&f.name);
    let note = if sent_before {
        format!(
            "⚠ Only part of this reply was sent to WhatsApp, because of the file \"{name}\": {e}. {what_now}"
        )
    } else {
        format!(
            "⚠ This reply was not sent to WhatsApp, because of the file \"{name}\": {e}. {what_now}"
        )
    };
    tracing::warn!(
        bitrix_message_id = %row.bitrix_message_id,
        reason = %e,
        "an operator's file was refused"
    );
    if let Err(je) = notes::post(&relay.bitrix, &row.bitrix_chat_id, &note).await {
        return je.into_job_error();
    }
    if let Err(db) = store::set_outbound(
        &relay.core.db,
        &row.bitrix_message_id,
        "failed",
        None,
        Some(&e.to_string()),
    )
    .await
    {
        return retry_db(db);
    }
    JobError::Permanent(format!("file \"{name}\" refused: {e}"))
}

/// Without this the operator sees the reply stuck as "sending" (protocol §5.2). `message.id`
/// carries every part's wamid, so update/delete events and statuses of any part correlate.
async fn confirm_delivery(
    relay: &Relay,
    m: &OperatorMessage,
    wamids: &[String],
) -> Result<(), JobError> {
    let (connector, line) = relay
        .bitrix
        .connector_and_line()
        .await
        .map_err(|e| e.into_job_error())?;
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
    use super::{callback_data, parse_callback_data, template_command};

    #[test]
    fn the_template_command_is_the_last_line() {
        assert_eq!(
            template_command("[b]Maria:[/b][br] /template order_update").as_deref(),
            Some("order_update")
        );
        assert_eq!(
            template_command("/TEMPLATE x").as_deref(),
            None,
            "commands are lower-case, like Bitrix's own"
        );
        assert_eq!(template_command("/templates"), None);
        assert_eq!(template_command("/template   "), None);
        assert_eq!(template_command("/template a\nthanks"), None);
    }

    #[test]
    fn callback_data_round_trips() {
        let data = callback_data("98711", 2);
        assert_eq!(parse_callback_data(&data), Some(("98711", 2)));
        assert_eq!(parse_callback_data("bitrix::1"), None);
        assert_eq!(parse_callback_data("other:1:2"), None);
        assert_eq!(parse_callback_data("bitrix:1:x"), None);
    }
}
