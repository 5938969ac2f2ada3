//! Bitrix24 connector: relays WhatsApp Cloud API messages into a Bitrix24 Open Channel and
//! operator replies back. Owns `/webhook/whatsapp`, `/bitrix/*`, `/media/{id}`, the relay jobs
//! and the Meta and Bitrix clients, and the `bitrix …` / `whatsapp …` CLI commands
//! ([`commands`]). Must not touch SQL except through `switchboard_core`'s pools and its own
//! tables (`store.rs`, `media.rs`, `templates/stored.rs`), depend on another bridge, or start
//! workers itself (the binary does).
//!
//! # Layout
//!
//! - `routes`: the HTTP route table, its body limits and `/media/{id}`; start here.
//! - [`relay`]: what both directions share: handler state, inbox sources, idempotency keys.
//! - [`channels`]: which WhatsApp number relays into which Open Channel line.
//! - [`to_bitrix`]: WhatsApp → Bitrix24: Meta's webhook, the customer-order gate, the relay
//!   of messages into the Open Channel, CRM leads, Meta's statuses reported to Bitrix.
//! - [`to_whatsapp`]: Bitrix24 → WhatsApp: operator events, the 24-hour window, sends to
//!   Meta, BBCode, portal files, templates, failed replies explained to the operator.
//! - [`meta`]: talking to Meta's Cloud API: Graph client, webhook payload, signature check.
//! - [`bitrix`]: talking to Bitrix24: REST client, OAuth grant, rate limit, errors, PHP
//!   forms, events, install, chat notes.
//! - [`store`]: this bridge's tables: inbound order, outbound map, customers, leads.
//! - [`templates`]: the account's message templates: synced from Meta into their own table,
//!   filled from an operator's `/template` lines, listed and sent first over the admin API.
//! - [`media`]: re-hosted copies of media in either direction, served at `/media/{id}`.
//! - [`commands`]: the `bitrix …` / `whatsapp …` CLI commands.
//! - [`setup`]: this bridge's rows on `/setup`, with their live probes.
//! - [`catalogue`]: this bridge's settings: keys, defaults, help texts.
//! - `setting_values`, `error`: settings read through core, the HTTP error type and fix texts.

pub mod bitrix;
pub mod catalogue;
pub mod channels;
pub mod commands;
mod error;
pub mod media;
pub mod meta;
mod openapi;
pub mod relay;
mod routes;
mod setting_values;
pub mod setup;
pub mod store;
pub mod templates;
pub mod to_bitrix;
pub mod to_whatsapp;

use axum::Router;
use switchboard_core::{
    JobRegistry,
    config::Setting,
    inbox::Processors,
    ops::{BridgeInfo, Readiness},
    scheduler::{Task, When},
};

pub use error::{Error, fix};

/// Settings without which nothing can be relayed.
const REQUIRED: &[&Setting] = &[
    catalogue::META_APP_SECRET,
    catalogue::META_ACCESS_TOKEN,
    catalogue::META_PHONE_NUMBER_ID,
    catalogue::META_VERIFY_TOKEN,
    catalogue::BITRIX_PORTAL_URL,
    catalogue::BITRIX_CLIENT_ID,
    catalogue::BITRIX_CLIENT_SECRET,
    catalogue::BITRIX_LINE_ID,
];

/// Settings `/setup`'s buttons set: the verify token (generated when the webhook is
/// registered) and the line (picked from the portal's list).
const SET_BY_BUTTONS: &[&str] = &[
    catalogue::META_VERIFY_TOKEN.env,
    catalogue::BITRIX_LINE_ID.env,
];

/// The settings that form the one channel when the config file lists none.
const SINGLE_CHANNEL: &[&Setting] = &[catalogue::META_PHONE_NUMBER_ID, catalogue::BITRIX_LINE_ID];

pub use relay::Relay;

/// `/webhook/whatsapp`, `/bitrix/install`, `/bitrix/events`, `/media/{id}`.
pub fn router(relay: &Relay) -> Router {
    routes::router(relay)
}

pub fn info(relay: &Relay) -> BridgeInfo {
    let settings = relay.core.settings.clone();
    let listed = channels::listed(relay);
    let probing = relay.clone();
    let counting = relay.clone();
    let alerting = relay.clone();
    let acting = relay.clone();
    BridgeInfo::new(
        "bitrix",
        "Bitrix24 connector (WhatsApp ⇄ Open Channel)",
        &[
            "/webhook/whatsapp",
            "/bitrix/events",
            "/bitrix/install",
            "/media/{id}",
            templates::api::TEMPLATES,
            templates::api::TEMPLATES_SYNC,
            templates::api::CONVERSATIONS,
        ],
        move || {
            let settings = settings.clone();
            async move {
                let mut missing = Vec::new();
                for setting in REQUIRED {
                    // Listed channels name their numbers and lines themselves.
                    if listed && SINGLE_CHANNEL.iter().any(|s| s.key == setting.key) {
                        continue;
                    }
                    if !matches!(settings.get(setting).await, Ok(Some(_))) {
                        missing.push(setting.env);
                    }
                }
                Readiness {
                    configured: missing.is_empty(),
                    missing,
                }
            }
        },
    )
    .with_checks(move || {
        let relay = probing.clone();
        async move { setup::checks(&relay).await }
    })
    .with_settings_set_by_actions(SET_BY_BUTTONS)
    .with_actions(move |name, choice| {
        let relay = acting.clone();
        async move { setup::run_action(&relay, &name, choice).await }
    })
    .with_traffic(move || {
        let relay = counting.clone();
        async move { channels::traffic(&relay).await }
    })
    .with_alerts(move || {
        let db = alerting.core.db.clone();
        async move {
            store::alerts(&db)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(_, reason)| reason)
                .collect()
        }
    })
    .with_work(
        &[relay::META_SOURCE, relay::BITRIX_SOURCE],
        Some("bitrix-connector."),
    )
    .with_api(<openapi::Api as utoipa::OpenApi>::openapi())
    .with_page(templates::page::page(relay))
}

/// Registers this bridge's job handlers and inbox processors (called by the binary).
pub fn register(relay: &Relay, jobs: &mut JobRegistry, processors: &mut Processors) {
    let r = relay.clone();
    processors.register(relay::META_SOURCE, move |event, ctx| {
        let r = r.clone();
        async move { to_bitrix::split::process_meta_event(&r, event, ctx).await }
    });
    let r = relay.clone();
    jobs.register(move |job: to_bitrix::message::RelayToBitrix, ctx| {
        let r = r.clone();
        async move { to_bitrix::message::relay_to_bitrix(&r, job, ctx).await }
    });
    let r = relay.clone();
    processors.register(relay::BITRIX_SOURCE, move |event, ctx| {
        let r = r.clone();
        async move { to_whatsapp::split::process_bitrix_event(&r, event, ctx).await }
    });
    let r = relay.clone();
    jobs.register(move |job: to_whatsapp::send::RelayToWhatsapp, ctx| {
        let r = r.clone();
        async move { to_whatsapp::send::relay_to_whatsapp(&r, job, ctx).await }
    });
    let r = relay.clone();
    jobs.register(move |job: templates::first::OpenConversation, ctx| {
        let r = r.clone();
        async move { templates::first::open_conversation(&r, job, ctx).await }
    });
    let r = relay.clone();
    jobs.register(move |job: to_bitrix::status::RelayStatusToBitrix, ctx| {
        let r = r.clone();
        async move { to_bitrix::status::relay_status_to_bitrix(&r, job, ctx).await }
    });
}

/// Refresh tokens live 180 days (older docs: 28); refreshing when none happened for this long
/// keeps a quiet install alive without the blind timed refresh Bitrix warns against.
const KEEP_ALIVE_AFTER_SECS: i64 = 20 * 24 * 3600;

/// This bridge's periodic work (called by the binary).
pub fn scheduled(relay: &Relay) -> Vec<Task> {
    let db = relay.core.db.clone();
    let r = relay.clone();
    let syncing = relay.clone();
    let synced_here = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    vec![
        // Looks every few minutes: the first look after start syncs, then once a day.
        Task::new(
            "bitrix.sync-templates",
            When::Every(std::time::Duration::from_secs(300)),
            move || {
                let r = syncing.clone();
                let synced_here = synced_here.clone();
                async move { templates::sync::when_due(&r, &synced_here).await }
            },
        ),
        Task::new(
            "bitrix.prune-media",
            When::Every(std::time::Duration::from_secs(3600)),
            move || {
                let db = db.clone();
                async move {
                    media::prune(&db)
                        .await
                        .map(|n| format!("deleted {n} expired media copies"))
                        .map_err(|e| e.to_string())
                }
            },
        ),
        Task::new(
            "bitrix.keep-grant-alive",
            When::Every(std::time::Duration::from_secs(6 * 3600)),
            move || {
                let r = r.clone();
                async move {
                    let grant = match bitrix::oauth::load(&r.core).await {
                        Ok(Some(g)) => g,
                        Ok(None) => return Ok("not installed; nothing to keep alive".into()),
                        Err(e) => return Err(e.explained()),
                    };
                    if bitrix::oauth::now_secs() - grant.issued_at < KEEP_ALIVE_AFTER_SECS {
                        return Ok("grant refreshed recently; nothing to do".into());
                    }
                    r.bitrix
                        .oauth
                        .refresh_replacing(&grant.access_token)
                        .await
                        .map(|_| "grant refreshed to keep the refresh token alive".into())
                        .map_err(|e| e.explained())
                }
            },
        ),
    ]
}
