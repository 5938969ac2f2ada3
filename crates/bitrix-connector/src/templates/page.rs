//! The admin page of templates (`/admin/pages/bitrix/templates`, linked from `/`): each one
//! with its status and variables, and a button that syncs from Meta now.

use switchboard_core::{
    db::now_ms,
    ops::{BridgePage, PageView},
};

use super::{Slot, stored, sync};
use crate::relay::Relay;

pub fn page(relay: &Relay) -> BridgePage {
    let loading = relay.clone();
    let syncing = relay.clone();
    BridgePage::new("templates", "Message templates", move || {
        let r = loading.clone();
        async move { view(&r).await.map_err(|e| format!("database: {e}")) }
    })
    .with_action("Sync from WhatsApp now", move || {
        let r = syncing.clone();
        async move {
            sync::run(&r)
                .await
                .map(|s| {
                    format!(
                        "Synced {} templates ({} approved) in {} page(s).",
                        s.templates, s.approved, s.pages
                    )
                })
                .map_err(|e| e.to_string())
        }
    })
}

async fn view(relay: &Relay) -> Result<PageView, sqlx::Error> {
    let db = &relay.core.db;
    let templates = stored::all(db).await?;
    let synced = match stored::last_synced(db).await? {
        Some(at) => format!(
            "Loaded from the WhatsApp Business Account {} minute(s) ago; synced again daily.",
            (now_ms() - at).max(0) / 60_000
        ),
        None => "Not loaded from the WhatsApp Business Account yet (set meta.waba_id, then sync)."
            .into(),
    };
    let configured: Vec<String> = crate::to_whatsapp::template::templates(&relay.core)
        .iter()
        .map(|t| format!("{} ({})", t.name, t.language))
        .collect();
    let mut intro = vec![
        synced,
        "Operators send one from a Bitrix24 chat with /template NAME and one key=value line per variable; /templates lists them there.".into(),
    ];
    if !configured.is_empty() {
        intro.push(format!(
            "Overridden in the config file: {}.",
            configured.join(", ")
        ));
    }
    let rows = templates
        .into_iter()
        .map(|t| {
            let vars: Vec<String> = t
                .variables()
                .into_iter()
                .map(|v| match v.slot {
                    Slot::HeaderMedia { format } => format!("{} ({format} link)", v.key),
                    Slot::HeaderText => format!("{} (header text)", v.key),
                    Slot::Body => v.key,
                    Slot::Button { sub_type, .. } => format!("{} ({sub_type})", v.key),
                })
                .collect();
            vec![
                t.name.clone(),
                t.language.clone(),
                t.category.clone(),
                t.status.clone(),
                if vars.is_empty() {
                    "—".into()
                } else {
                    vars.join(", ")
                },
                t.body_text().unwrap_or("").to_string(),
            ]
        })
        .collect();
    Ok(PageView {
        intro,
        columns: vec![
            "Name",
            "Language",
            "Category",
            "Status",
            "Variables",
            "Body",
        ],
        rows,
        empty: "No templates loaded.".into(),
    })
}
