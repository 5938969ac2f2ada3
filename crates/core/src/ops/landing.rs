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
    let mut bridges = Vec::with_capacity(s.bridges.len());
    for b in s.bridges.iter() {
        let traffic = if db_ok { b.traffic().await } else { Vec::new() };
        bridges.push((b, (b.readiness)().await, traffic));
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
            @for (b, r, traffic) in &bridges {
                div.card data-bridge=(b.name) {
                    h2 { (layout::mark(r.configured)) (b.title) }
                    @if r.configured {
                        p { span.badge.ok { "configured" } }
                    } @else {
                        p { span.badge.bad { "not configured" } }
                        p.muted { "Missing: " @for (i, m) in r.missing.iter().enumerate() { @if i > 0 { ", " } code { (m) } } }
                    }
                    @for line in traffic { p { (line) } }
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
