//! Reads the account's templates from Meta, page by page, into [`super::stored`]: at start and
//! daily by the scheduled task, and on demand (`POST /api/bitrix/templates/sync`).

use serde_json::Value;

use super::{Approved, stored};
use crate::{
    Error,
    catalogue::META_WABA_ID,
    meta::{MetaClient, MetaError},
    relay::Relay,
    setting_values::optional,
};

/// A page holds up to 100; 50 pages is far beyond any account's templates and stops a cursor
/// that never ends.
const MAX_PAGES: usize = 50;
/// Longest name, language and category kept; Meta's own limits are lower.
const MAX_FIELD_CHARS: usize = 512;
/// A template's components as JSON: Meta's largest (1024-character body, ten buttons, examples)
/// stay well under this.
const MAX_COMPONENTS_BYTES: usize = 32 * 1024;

/// What a sync found.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Synced {
    /// Templates stored, in every status.
    pub templates: usize,
    /// Of them, the approved ones: those an operator may send.
    pub approved: usize,
    /// Pages read from Meta.
    pub pages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "meta.waba_id is not configured: set the WhatsApp Business Account id (WhatsApp Manager → Account tools) to load its templates"
    )]
    NoWaba,
    #[error("{0}")]
    Settings(#[from] Error),
    #[error("Meta refused the template list: {}", .0.explained())]
    Meta(#[from] MetaError),
    #[error("Meta's template list did not end after {MAX_PAGES} pages")]
    TooManyPages,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Reads every page and replaces the stored list.
pub async fn run(relay: &Relay) -> Result<Synced, SyncError> {
    let waba = optional(&relay.core, META_WABA_ID)
        .await?
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .ok_or(SyncError::NoWaba)?;
    let meta = MetaClient::from_settings(&relay.core).await?;
    let mut templates = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        if pages == MAX_PAGES {
            return Err(SyncError::TooManyPages);
        }
        let page = meta.message_templates(&waba, after.as_deref()).await?;
        pages += 1;
        for t in page["data"].as_array().into_iter().flatten() {
            if let Some(t) = read_template(t) {
                templates.push(t);
            }
        }
        // Graph gives `next` only while more pages follow; the cursor says where they start.
        let next = page.pointer("/paging/next").and_then(Value::as_str);
        let cursor = page
            .pointer("/paging/cursors/after")
            .and_then(Value::as_str);
        match (next, cursor) {
            (Some(_), Some(c)) if after.as_deref() != Some(c) => after = Some(c.to_string()),
            _ => break,
        }
    }
    stored::replace_all(&relay.core.db, &templates).await?;
    let approved = templates.iter().filter(|t| t.is_approved()).count();
    tracing::info!(
        templates = templates.len(),
        approved,
        pages,
        "templates synced from the WhatsApp Business Account"
    );
    Ok(Synced {
        templates: templates.len(),
        approved,
        pages,
    })
}

/// A listed template, or `None` for one without a name or language, or out of bounds.
fn read_template(t: &Value) -> Option<Approved> {
    let field = |k: &str| {
        t[k].as_str()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.chars().count() <= MAX_FIELD_CHARS)
            .map(str::to_string)
    };
    let components = t.get("components").cloned().unwrap_or(Value::Array(vec![]));
    if components.to_string().len() > MAX_COMPONENTS_BYTES {
        tracing::warn!(
            template = field("name").unwrap_or_default(),
            "a template's components are too large to keep; left out"
        );
        return None;
    }
    Some(Approved {
        name: field("name")?,
        language: field("language")?,
        category: field("category").unwrap_or_else(|| "UTILITY".into()),
        status: field("status").unwrap_or_else(|| "APPROVED".into()),
        components,
    })
}

/// For the scheduled task: syncs when this process has not synced yet, or the last sync is a
/// day old. Quiet (`Ok`) while no account id is configured.
pub async fn when_due(
    relay: &Relay,
    synced_here: &std::sync::atomic::AtomicBool,
) -> Result<String, String> {
    use std::sync::atomic::Ordering;
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let last = stored::last_synced(&relay.core.db)
        .await
        .map_err(|e| e.to_string())?;
    let fresh = last.is_some_and(|at| switchboard_core::db::now_ms() - at < DAY_MS);
    if synced_here.load(Ordering::SeqCst) && fresh {
        return Ok("templates synced within the day; nothing to do".into());
    }
    match run(relay).await {
        Ok(s) => {
            synced_here.store(true, Ordering::SeqCst);
            Ok(format!(
                "{} templates synced ({} approved)",
                s.templates, s.approved
            ))
        }
        Err(SyncError::NoWaba) => {
            synced_here.store(true, Ordering::SeqCst);
            Ok("meta.waba_id is not set; templates come from the config file only".into())
        }
        Err(e) => Err(e.to_string()),
    }
}
