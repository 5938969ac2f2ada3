//! Portal file links (protocol §5.2): the event carries `/~<code>`, which redirects to a
//! signed `/pub/im.file.php?FILE_ID=…&SIGN=…` that serves the bytes without auth. Without a
//! valid SIGN the file is refused, so a product that rebuilds or strips the URL fails here.

use axum::{
    extract::{Query, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::Shared;

pub(crate) async fn short_link(State(s): State<Shared>, uri: Uri) -> Response {
    let portal = s.portal();
    if portal.down {
        return super::outage();
    }
    let Some(code) = uri.path().strip_prefix("/~") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(location) = portal.redirects.get(code) {
        return (StatusCode::FOUND, [(header::LOCATION, location.clone())]).into_response();
    }
    let Some(file) = portal.files.values().find(|f| f.short_code == code) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let location = format!(
        "{}/pub/im.file.php?FILE_ID={}&SIGN={}",
        s.urls().base,
        file.file_id,
        sign(&portal.file_sign_key, file.file_id)
    );
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

#[derive(Deserialize)]
pub(crate) struct SignedFile {
    #[serde(rename = "FILE_ID")]
    file_id: Option<u64>,
    #[serde(rename = "SIGN")]
    sign: Option<String>,
}

pub(crate) async fn serve_signed(State(s): State<Shared>, Query(q): Query<SignedFile>) -> Response {
    let portal = s.portal();
    if portal.down {
        return super::outage();
    }
    let (Some(file_id), Some(given)) = (q.file_id, q.sign) else {
        return (StatusCode::FORBIDDEN, "Access denied").into_response();
    };
    if given != sign(&portal.file_sign_key, file_id) {
        return (StatusCode::FORBIDDEN, "Access denied").into_response();
    }
    let Some(file) = portal.files.get(&file_id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type(&file.name).to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", file.name),
            ),
        ],
        file.bytes.clone(),
    )
        .into_response()
}

fn sign(key: &[u8; 32], file_id: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length works for HMAC");
    mac.update(file_id.to_string().as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" | "jpe" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "ogg" | "oga" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}
