//! Re-hosted media: Meta's files need the access token and Bitrix's links are short-lived, so
//! each side gets a copy it can fetch without credentials at `/media/{id}`. The id is 128
//! random bits (unguessable) and every copy expires.

use rand::RngCore;
use switchboard_core::{Db, db::now_ms, on_pool};

/// How long a re-hosted copy stays fetchable.
pub const MEDIA_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone)]
pub struct Media {
    pub mime: String,
    pub filename: String,
    pub bytes: Vec<u8>,
}

fn new_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Stores `media` once per `source_key` (a retry of the same relay reuses the first copy) and
/// returns its id.
pub async fn put(db: &Db, source_key: &str, media: &Media) -> Result<String, sqlx::Error> {
    let now = now_ms();
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO bitrix_media (id, source_key, mime, filename, bytes, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source_key) DO NOTHING"
    )
    .bind(new_id())
    .bind(source_key)
    .bind(&media.mime)
    .bind(&media.filename)
    .bind(&media.bytes)
    .bind(now)
    .bind(now + MEDIA_TTL_MS)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    let (id,): (String,) = on_pool!(db, |p| sqlx::query_as(
        "SELECT id FROM bitrix_media WHERE source_key = $1"
    )
    .bind(source_key)
    .fetch_one(p)
    .await)?;
    Ok(id)
}

/// The copy under `id`, unless it is unknown or expired.
pub async fn get(db: &Db, id: &str) -> Result<Option<Media>, sqlx::Error> {
    let row: Option<(String, String, Vec<u8>)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT mime, filename, bytes FROM bitrix_media WHERE id = $1 AND expires_at > $2"
    )
    .bind(id)
    .bind(now_ms())
    .fetch_optional(p)
    .await)?;
    Ok(row.map(|(mime, filename, bytes)| Media {
        mime,
        filename,
        bytes,
    }))
}

pub async fn prune(db: &Db) -> Result<u64, sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "DELETE FROM bitrix_media WHERE expires_at <= $1"
    )
    .bind(now_ms())
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
}

/// `Image/JPEG; q=1` → `image/jpeg`.
fn base_type(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Extension for a mime type. WhatsApp photos, voice notes and stickers come without a file
/// name, and Bitrix decides inline preview by extension (protocol §2.3, §4.1).
pub fn extension(mime: &str) -> &'static str {
    let base = base_type(mime);
    match base.as_str() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "video/3gpp" => "3gp",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/mp4" => "m4a",
        "audio/aac" => "aac",
        "audio/amr" => "amr",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "application/vnd.ms-powerpoint" => "ppt",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => "pptx",
        _ => "bin",
    }
}

/// How a copy is served at `/media/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub content_type: &'static str,
    /// Shown in the browser (`inline`) rather than downloaded (`attachment`).
    pub inline: bool,
}

/// `/media/{id}` shares its origin with the admin pages, and a customer picks the type of
/// what they send: anything a browser could run there (HTML, SVG, XML, scripts…) must not
/// render. Only inert image, audio and video types show inline; the document types WhatsApp
/// accepts keep their type but download; every other type is served as plain bytes.
pub fn served_as(mime: &str) -> Served {
    let base = base_type(mime);
    let inline = |content_type| Served {
        content_type,
        inline: true,
    };
    let download = |content_type| Served {
        content_type,
        inline: false,
    };
    match base.as_str() {
        "image/jpeg" => inline("image/jpeg"),
        "image/png" => inline("image/png"),
        "image/webp" => inline("image/webp"),
        "image/gif" => inline("image/gif"),
        "video/mp4" => inline("video/mp4"),
        "video/3gpp" => inline("video/3gpp"),
        "audio/ogg" => inline("audio/ogg"),
        "audio/mpeg" => inline("audio/mpeg"),
        "audio/mp4" => inline("audio/mp4"),
        "audio/aac" => inline("audio/aac"),
        "audio/amr" => inline("audio/amr"),
        "application/pdf" => download("application/pdf"),
        "text/plain" => download("text/plain"),
        "application/msword" => download("application/msword"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => {
            download("application/vnd.openxmlformats-officedocument.wordprocessingml.document")
        }
        "application/vnd.ms-excel" => download("application/vnd.ms-excel"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => {
            download("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
        }
        "application/vnd.ms-powerpoint" => download("application/vnd.ms-powerpoint"),
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
            download("application/vnd.openxmlformats-officedocument.presentationml.presentation")
        }
        _ => download("application/octet-stream"),
    }
}

/// A file name safe for a `Content-Disposition` header and a Bitrix file list.
pub fn safe_filename(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '/'))
        .take(120)
        .collect();
    if cleaned.trim().is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn names() {
        assert_eq!(extension("audio/ogg; codecs=opus"), "ogg");
        assert_eq!(extension("IMAGE/JPEG"), "jpg");
        assert_eq!(safe_filename("a\"b\r\n/c.pdf"), "abc.pdf");
        assert_eq!(safe_filename("\n"), "file");
    }

    #[test]
    fn only_inert_media_is_served_inline_and_active_types_are_bytes() {
        for mime in [
            "image/jpeg",
            "IMAGE/PNG",
            "audio/ogg; codecs=opus",
            "video/mp4",
        ] {
            assert!(served_as(mime).inline, "{mime}");
        }
        assert_eq!(
            served_as("audio/ogg; codecs=opus").content_type,
            "audio/ogg"
        );
        assert_eq!(
            served_as("application/pdf"),
            Served {
                content_type: "application/pdf",
                inline: false
            }
        );
        for mime in [
            "text/html",
            "TEXT/HTML; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
            "text/javascript",
            "application/javascript",
            "multipart/x-mixed-replace; boundary=x",
            "text/html\r\nX-Injected: 1",
            "",
        ] {
            assert_eq!(
                served_as(mime),
                Served {
                    content_type: "application/octet-stream",
                    inline: false
                },
                "{mime:?}"
            );
        }
    }
}
