//! Media (protocol §4): multipart upload, the media node with its short-lived lookaside URL,
//! the authenticated download, and delete. The URL is signed with the expiry inside it, like
//! Meta's `lookaside.fbsbx.com` links, so a product that caches it past 5 minutes gets refused.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Multipart, Path, RawQuery, State, multipart::MultipartRejection},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use bytes::Bytes;
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    errors::GraphError,
    graph::{authorize, check_phone_path, check_version},
    sender::hmac_sha256_hex,
    state::{MediaOrigin, Shared, StoredMedia},
};

const MB: usize = 1024 * 1024;

/// Accepted mime types and their size limits (§4 table); parameters like `; codecs=opus` are
/// ignored when matching.
fn size_limit(mime: &str) -> Option<usize> {
    let base = mime.split(';').next().unwrap_or("").trim();
    Some(match base {
        "audio/aac" | "audio/amr" | "audio/mpeg" | "audio/mp4" | "audio/ogg" => 16 * MB,
        "text/plain"
        | "application/pdf"
        | "application/msword"
        | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.ms-excel"
        | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        | "application/vnd.ms-powerpoint"
        | "application/vnd.openxmlformats-officedocument.presentationml.presentation" => 100 * MB,
        "image/jpeg" | "image/png" => 5 * MB,
        // Animated stickers may reach 500 KB; static ones 100 KB. The fake cannot tell them apart.
        "image/webp" => 500 * 1024,
        "video/mp4" | "video/3gpp" => 16 * MB,
        _ => return None,
    })
}

/// Stores media and returns its Graph id (numeric, 15–16 digits like Meta's).
pub fn store(
    s: &Shared,
    bytes: Bytes,
    mime: &str,
    filename: Option<String>,
    origin: MediaOrigin,
) -> StoredMedia {
    let id = rand::rng()
        .random_range(1_000_000_000_000_000u64..10_000_000_000_000_000)
        .to_string();
    let media = StoredMedia {
        id,
        mime_type: mime.to_string(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
        filename,
        origin,
    };
    s.state().media.push(media.clone());
    media
}

pub async fn upload_media(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, GraphError> {
    check_phone_path(&s, &headers, query.as_deref(), &version, &id, "post")?;
    // Without a multipart body Graph sees no parameters at all.
    let mut form = multipart.map_err(|_| GraphError::param_required("messaging_product"))?;
    let (mut file, mut mime, mut product) = (None, None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| GraphError::invalid_parameter(format!("Malformed multipart body: {e}")))?
    {
        let unreadable = |e| GraphError::invalid_parameter(format!("Unreadable form field: {e}"));
        match field.name().unwrap_or("") {
            "file" => {
                let name = field.file_name().map(str::to_string);
                file = Some((field.bytes().await.map_err(unreadable)?, name));
            }
            "type" => mime = Some(field.text().await.map_err(unreadable)?),
            "messaging_product" => product = Some(field.text().await.map_err(unreadable)?),
            _ => {}
        }
    }
    match product.as_deref() {
        None => return Err(GraphError::param_required("messaging_product")),
        Some("whatsapp") => {}
        Some(other) => {
            return Err(GraphError::invalid_parameter(format!(
                "Param messaging_product must be one of {{WHATSAPP}} - got \"{other}\"."
            )));
        }
    }
    let (bytes, filename) = file.ok_or_else(|| GraphError::param_required("file"))?;
    let mime = mime.ok_or_else(|| GraphError::param_required("type"))?;
    let limit = size_limit(&mime).ok_or_else(|| {
        GraphError::for_code(131_053).with_details(format!(
            "Param file must be a file with one of the supported media types; got {mime}."
        ))
    })?;
    if bytes.is_empty() || bytes.len() > limit {
        return Err(GraphError::for_code(131_053).with_details(format!(
            "File size {} bytes is outside the allowed range for {mime} (1..={limit}).",
            bytes.len()
        )));
    }
    let media = store(&s, bytes, &mime, filename, MediaOrigin::Uploaded);
    Ok(Json(json!({"id": media.id})))
}

/// `GET /{ver}/{media-id}`: the media node with a fresh download URL.
pub fn media_node(s: &Shared, id: &str, query: Option<&str>) -> Result<Value, GraphError> {
    let owner_ok = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "phone_number_id")
        .is_none_or(|(_, v)| s.cfg.owns_number(&v));
    let media = s
        .state()
        .media
        .iter()
        .find(|m| m.id == id)
        .cloned()
        .filter(|_| owner_ok)
        .ok_or_else(|| GraphError::unknown_object("get", id))?;
    let expires = s.clock.now() + s.cfg.media_url_ttl.as_secs();
    let hash = url_hash(s, &media.id, expires);
    let url = format!(
        "{}/lookaside/whatsapp_business/attachments/?mid={}&ext={expires}&hash={hash}",
        s.base_url(),
        media.id
    );
    Ok(json!({
        "messaging_product": "whatsapp",
        "url": url,
        "mime_type": media.mime_type,
        "sha256": media.sha256,
        "file_size": media.bytes.len().to_string(),
        "id": media.id,
    }))
}

pub async fn delete_media(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, GraphError> {
    authorize(&s, &headers, query.as_deref())?;
    check_version(&s, &version, "delete")?;
    let mut st = s.state();
    let before = st.media.len();
    st.media.retain(|m| m.id != id);
    if st.media.len() == before {
        return Err(GraphError::unknown_object("delete", &id));
    }
    Ok(Json(json!({"success": true})))
}

/// The lookaside download. Errors are HTML pages, not Graph JSON, as on Meta's CDN host.
pub async fn download_media(
    State(s): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // Only the header works here; Graph's `access_token` parameter is not honoured by the CDN.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(s.state().access_token.as_str()) {
        return html_error(
            StatusCode::UNAUTHORIZED,
            "Sorry, this content isn't available right now",
        );
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(mid), Some(ext), Some(hash)) = (param("mid"), param("ext"), param("hash")) else {
        return html_error(StatusCode::BAD_REQUEST, "Bad URL");
    };
    let Ok(expires) = ext.parse::<u64>() else {
        return html_error(StatusCode::BAD_REQUEST, "Bad URL");
    };
    if url_hash(&s, mid, expires) != hash {
        return html_error(StatusCode::FORBIDDEN, "URL signature mismatch");
    }
    if s.clock.now() > expires {
        return html_error(StatusCode::FORBIDDEN, "URL signature expired");
    }
    let Some(media) = s.state().media.iter().find(|m| m.id == mid).cloned() else {
        return html_error(
            StatusCode::NOT_FOUND,
            "Sorry, this content isn't available right now",
        );
    };
    ([(header::CONTENT_TYPE, media.mime_type)], media.bytes).into_response()
}

fn url_hash(s: &Shared, mid: &str, expires: u64) -> String {
    hmac_sha256_hex(&s.lookaside_key, format!("{mid}:{expires}").as_bytes())
}

fn html_error(status: StatusCode, text: &str) -> Response {
    let page = format!(
        "<!DOCTYPE html><html><head><title>Error</title></head><body><h1>{text}</h1></body></html>"
    );
    (status, Html(page)).into_response()
}
