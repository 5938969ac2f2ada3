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
    settings::public_link,
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

/// `/template NAME` asks for a configured approved template (it may be sent outside the window).
fn template_command(text: &str) -> Option<&str> {
    let plain = bbcode::to_whatsapp(text);
    let line = plain.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let name = line.strip_prefix("/template")?.trim();
    (!name.is_empty()).then_some(name).map(|n| {
        let start = text.find(n).unwrap_or(0);
        &text[start..start + n.len()]
    })
}

pub async fn process_bitrix_event(
    relay: &Relay,
    event: StoredEvent,
    _ctx: JobContext,
) -> Result<Outcome, JobError> {
    let db = &relay.core.db;
    let form = php_form::parse(&event.body);
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
    let wamid = match (row.state.as_str(), row.wamid.clone()) {
        ("sent", Some(w)) => w,
        ("received", _) => send(relay, &m, &row).await?,
        _ => return Ok(()),
    };
    confirm_delivery(relay, &m, &wamid).await
}

/// Sends the reply; on a Meta refusal the operator gets a note and the job ends or retries.
async fn send(
    relay: &Relay,
    m: &OperatorMessage,
    row: &store::OutboundRow,
) -> Result<String, JobError> {
    let db = &relay.core.db;
    let meta = MetaClient::from_settings(&relay.core)
        .await
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let bodies = match template_command(&m.text) {
        Some(name) => match template_body(relay, m, name) {
            Some(b) => vec![b],
            None => {
                let names: Vec<&str> = relay
                    .core
                    .config
                    .bitrix_templates
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect();
                let note = format!(
                    "⚠ No template named \"{name}\" is configured. Configured: {}.",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
                notes::post(&relay.bitrix, &m.chat_id, &note)
                    .await
                    .map_err(|e| e.into_job_error())?;
                store::set_outbound(db, &m.message_id, "failed", None, Some(&note))
                    .await
                    .map_err(retry_db)?;
                return Err(JobError::Permanent(note));
            }
        },
        None => content_bodies(relay, m).await?,
    };
    let mut last = None;
    for body in bodies {
        match meta.send(&body).await {
            Ok(w) => last = Some(w),
            Err(e) => return Err(refused(relay, row, e).await),
        }
    }
    let wamid =
        last.ok_or_else(|| JobError::Permanent("an empty reply: nothing to send".into()))?;
    store::set_outbound(db, &m.message_id, "sent", Some(&wamid), None)
        .await
        .map_err(retry_db)?;
    metrics::counter!("switchboard_bitrix_relayed_total", "direction" => "outbound").increment(1);
    Ok(wamid)
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
    if e.code() == Some(131047) {
        // Not a fault of the bridge: recorded as blocked_window, the operator has the note.
        return JobError::Permanent(e.explained());
    }
    JobError::Permanent(e.explained())
}

fn template_body(relay: &Relay, m: &OperatorMessage, name: &str) -> Option<Value> {
    let t = relay
        .core
        .config
        .bitrix_templates
        .iter()
        .find(|t| t.name == name)?;
    let mut template = json!({"name": t.name, "language": {"code": t.language}});
    if !t.body_parameters.is_empty() {
        let params: Vec<Value> = t
            .body_parameters
            .iter()
            .map(|p| json!({"type": "text", "text": p}))
            .collect();
        template["components"] = json!([{"type": "body", "parameters": params}]);
    }
    Some(
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": m.customer, "type": "template", "template": template}),
    )
}

/// Text, or one media send per file with the text as the first file's caption.
async fn content_bodies(relay: &Relay, m: &OperatorMessage) -> Result<Vec<Value>, JobError> {
    let text = bbcode::to_whatsapp(&m.text);
    let base =
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": m.customer});
    let mut out = Vec::new();
    for (n, f) in m.files.iter().enumerate() {
        let link = f.link.split('#').next().unwrap_or(&f.link);
        let resp = relay.core.http.get(link).send().await.map_err(|e| {
            JobError::Retry(format!(
                "downloading the Bitrix file failed: {}",
                e.without_url()
            ))
        })?;
        if !resp.status().is_success() {
            return Err(JobError::Retry(format!(
                "Bitrix file link answered HTTP {}",
                resp.status()
            )));
        }
        let mime = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.starts_with("application/octet-stream"))
            .map(str::to_string)
            .unwrap_or_else(|| mime_from_name(&f.name).to_string());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        let copy = Media {
            mime: mime.clone(),
            filename: media::safe_filename(&f.name),
            bytes: bytes.to_vec(),
        };
        let id = media::put(
            &relay.core.db,
            &format!("bitrix:{}:{n}", m.message_id),
            &copy,
        )
        .await
        .map_err(retry_db)?;
        let kind = media_type(&f.kind, &mime);
        let mut obj = json!({"link": public_link(&relay.core, &format!("/media/{id}"))});
        if n == 0 && !text.is_empty() && kind != "audio" {
            obj["caption"] = json!(text);
        }
        if kind == "document" {
            obj["filename"] = json!(copy.filename);
        }
        let mut body = base.clone();
        body["type"] = json!(kind);
        body[kind] = obj;
        out.push(body);
    }
    if out.is_empty() || (!text.is_empty() && out.first().is_some_and(|b| b["type"] == "audio")) {
        if text.is_empty() {
            return Err(JobError::Permanent(
                "an empty reply: nothing to send".into(),
            ));
        }
        let mut body = base;
        body["type"] = json!("text");
        body["text"] = json!({"preview_url": false, "body": text});
        out.insert(0, body);
    }
    Ok(out)
}

/// Without this the operator sees the reply stuck as "sending" (protocol §5.2).
async fn confirm_delivery(relay: &Relay, m: &OperatorMessage, wamid: &str) -> Result<(), JobError> {
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
                "message": {"id": [wamid], "date": now_ms() / 1000},
                "chat": {"id": m.customer},
            }]}),
        )
        .await
        .map_err(|e| e.into_job_error())?;
    store::set_outbound(&relay.core.db, &m.message_id, "delivered", None, None)
        .await
        .map_err(retry_db)
}
