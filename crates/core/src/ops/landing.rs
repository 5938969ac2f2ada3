//! `/`: what is running and each bridge's state at a glance. Public, like `/health`, so it shows
//! nothing `/health` doesn't: no values, no payloads.

use axum::{extract::State, response::Response};
use maud::html;

use super::{
    OpsState,
    layout::{self, Nav},
};

pub(super) async fn show_landing(State(s): State<OpsState>) -> Response {
    let db_ok = s.core.db.ping().await;
    let stats = if db_ok {
        s.core.jobs.stats().await.ok()
    } else {
        None
    };
    let mut bridges = Vec::new();
    if db_ok {
        for (b, h) in s.bridge_health().await {
            let traffic = b.traffic().await;
            bridges.push((b, h, traffic));
        }
    }
    let uptime = s.core.started_at.elapsed().as_secs();
    let body = html! {
        h1 { "Switchboard" }
        p.muted { "Three WhatsApp bridges on one durable core. Version " (env!("CARGO_PKG_VERSION"))
            ", up " (uptime / 3600) " h " (uptime / 60 % 60) " min." }
        div.grid {
            div.card {
                h2 { "Database" }
                p { (layout::mark(db_ok)) (s.core.db.backend()) " — " (if db_ok { "reachable" } else { "unreachable" }) }
            }
            div.card {
                h2 { "Job queue" }
                @if let Some(q) = &stats {
                    p { span.stat { (q.pending) } " waiting · " (q.running) " running" }
                    p { (layout::mark(q.dead == 0)) a href="/admin/jobs" { (q.dead) " dead letter(s)" } }
                } @else {
                    p { (layout::mark(false)) "unavailable while the database is unreachable" }
                }
            }
        }
        h2 { "Bridges" }
        div.grid {
            @for (b, h, traffic) in &bridges {
                div.card data-bridge=(b.name) data-state=(h.state) {
                    h2 { (layout::mark(h.state == "ready")) (b.title) }
                    @match h.state {
                        "ready" => p { span.badge.ok { "ready" } },
                        "degraded" => p { span.badge.bad { "degraded" } },
                        _ => p { span.badge.bad { "off" } },
                    }
                    @if !h.configured {
                        p.muted { "Missing: " @for (i, m) in h.missing.iter().enumerate() { @if i > 0 { ", " } code { (m) } } }
                    } @else if let Some(reason) = &h.reason {
                        p.muted { (reason) }
                    }
                    @for line in traffic { p { (line) } }
                    @for page in &b.pages {
                        p { a href=(format!("/admin/pages/{}/{}", b.name, page.slug)) { (page.title) } }
                    }
                    p.muted { "Routes: " @for (i, route) in b.routes.iter().enumerate() { @if i > 0 { ", " } code { (route) } } }
                }
            }
        }
        h2 { "Operator pages" }
        ul {
            li { a href="/setup" { "Setup checklist" } " — what is ready and the fix for what isn't" }
            li { a href="/admin/credentials" { "Credentials" } " — Meta, Bitrix24 and wabridges settings, stored encrypted" }
            li { a href="/admin/events" { "Events" } " — every inbound webhook, with replay" }
            li { a href="/admin/jobs" { "Jobs" } " — queue and dead letters, with retry" }
            li { a href="/docs" { "Documentation" } }
        }
        p.muted { "The admin pages ask once for " code { "SWITCHBOARD_ADMIN_TOKEN" } "; a session cookie keeps you signed in." }
    };
    layout::ok("Overview", Nav::Home, body)
}
