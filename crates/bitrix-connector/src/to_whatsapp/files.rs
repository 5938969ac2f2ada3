//! The files operators attach to replies: fetched from the portal within what WhatsApp takes
//! for their kind, re-hosted under `/media/…` for Meta to fetch, or refused with a note the
//! operator can act on.

use serde_json::{Value, json};
use switchboard_core::JobError;

use super::portal_file::{self, FileError, Limit};
use crate::{
    bitrix::{
        events::{OperatorFile, OperatorMessage},
        notes,
    },
    media::{self, Media},
    relay::{Relay, bitrix_file_key, retry_db},
    setting_values::{public_link, required},
    store,
};

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

/// `bitrix.portal_url`: the one origin operators' file links may point to.
pub(super) async fn portal_url(relay: &Relay) -> Result<reqwest::Url, JobError> {
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
    f: &OperatorFile,
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
pub(super) async fn fetch_file(
    relay: &Relay,
    portal: &reqwest::Url,
    row: &store::OutboundRow,
    m: &OperatorMessage,
    n: usize,
    f: &OperatorFile,
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
    let id = media::put(&relay.core.db, &bitrix_file_key(&m.message_id, n), &copy)
        .await
        .map_err(retry_db)?;
    let obj = json!({"link": public_link(&relay.core, &format!("/media/{id}"))});
    Ok((kind, obj, copy.filename))
}

/// A file that could not be fetched. Unreachable for now: retried. Refused (the bridge will
/// not fetch it, or WhatsApp would not take it): the operator gets a note saying which and
/// why, the reply is `failed`, and the job a dead letter carrying the reason (retrying cannot
/// help, and a link leading off the portal is worth a look).
pub(super) async fn file_failed(
    relay: &Relay,
    row: &store::OutboundRow,
    f: &OperatorFile,
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
