//! `/setup`: the live readiness checklist. Core computes the platform rows; each bridge adds a
//! "configured" row from its [`super::Readiness`] and its own rows through
//! [`super::BridgeInfo::with_checks`]. Every failing row says what to do, and where the product
//! can do it, a button runs the bridge's action (`POST /setup/{bridge}/{action}`).

use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use maud::html;

use super::{
    Check, OpsState,
    layout::{self, Nav},
    session::{AdminSession, CSRF_FIELD},
};
use crate::{Core, config::Catalogue, db::Db, on_pool};

/// A worker whose heartbeat (every 5 s, apalis' `last_seen`) is older than this is gone.
const WORKER_SILENCE_SECS: i64 = 30;

pub(super) async fn show_setup(State(s): State<OpsState>, admin: AdminSession) -> Response {
    render(&s, &admin, None, StatusCode::OK).await
}

/// Longest action name and `choice` taken from the form; anything longer is no action of ours.
const MAX_ACTION_NAME: usize = 64;
const MAX_CHOICE: usize = 200;

/// `POST /setup/{bridge}/{action}`: one of a bridge's buttons. The result (with its fix when
/// it failed) is shown above the checklist, which is re-checked after the action ran.
pub(super) async fn run_action(
    State(s): State<OpsState>,
    admin: AdminSession,
    Path((bridge, action)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = admin.verify_csrf(&fields) {
        return refused;
    }
    let not_found = || {
        layout::error_page(
            StatusCode::NOT_FOUND,
            "No such action",
            "This setup step has no such button.",
            html! { a href="/setup" { "Back to the setup checklist" } },
        )
    };
    if action.len() > MAX_ACTION_NAME {
        return not_found();
    }
    let Some(b) = s.bridges.iter().find(|b| b.name == bridge) else {
        return not_found();
    };
    let choice = fields
        .iter()
        .find(|(k, _)| k == "choice")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if choice.as_ref().is_some_and(|c| c.len() > MAX_CHOICE) {
        return layout::error_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choice too long",
            "The value picked is longer than any this page offers.",
            html! { a href="/setup" { "Back to the setup checklist" } },
        );
    }
    let Some(result) = b.act(action.clone(), choice).await else {
        return not_found();
    };
    match &result {
        Ok(_) => tracing::info!(bridge = b.name, action = %action, "setup action done"),
        Err(e) => {
            tracing::warn!(bridge = b.name, action = %action, error = %e, "setup action failed")
        }
    }
    let status = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render(&s, &admin, Some((b.title, result)), status).await
}

async fn render(
    s: &OpsState,
    admin: &AdminSession,
    outcome: Option<(&str, super::ActionResult)>,
    status: StatusCode,
) -> Response {
    let mut sections = vec![("Platform".to_string(), platform_checks(&s.core).await)];
    for b in s.bridges.iter() {
        let r = (b.readiness)().await;
        let mut rows = vec![Check::new(
            format!("{}: configured", b.title),
            r.configured,
            missing_fix(s.core.config.catalogue(), &r.missing, b.set_by_actions),
        )];
        rows.extend(b.checks().await);
        sections.push((b.title.to_string(), rows));
    }
    let total: usize = sections.iter().map(|(_, r)| r.len()).sum();
    let passing: usize = sections
        .iter()
        .flat_map(|(_, r)| r)
        .filter(|c| c.ok)
        .count();
    let names: Vec<&str> = std::iter::once("")
        .chain(s.bridges.iter().map(|b| b.name))
        .collect();
    let body = html! {
        h1 { "Setup checklist" }
        @if let Some((title, result)) = &outcome {
            @match result {
                Ok(report) => {
                    div.notice.ok #action-result role="status" data-ok="true" {
                        strong { (title) ": done." } pre { (report) }
                    }
                }
                Err(problem) => {
                    div.notice.bad #action-result role="alert" data-ok="false" {
                        strong { (title) ": that did not work." } pre { (problem) }
                    }
                }
            }
        }
        @if passing == total {
            p.notice.ok { "All " (total) " checks pass." }
        } @else {
            p.notice.bad { (passing) " of " (total) " checks pass. Each ✗ says what to do." }
        }
        @for (i, (title, rows)) in sections.iter().enumerate() {
            h2 { (title) }
            ul.checks {
                @for c in rows {
                    li data-ok=(c.ok) {
                        (layout::mark(c.ok))
                        div {
                            div.label { (c.label) }
                            @if !c.ok { div.fix { (c.fix) } }
                            @for (what, value) in &c.copy {
                                div.copy { (what) ": " input.copy type="text" readonly value=(value) aria-label=(what); }
                            }
                            @if let (false, Some(a), Some(bridge)) = (c.ok, &c.action, names.get(i).filter(|n| !n.is_empty())) {
                                form.action method="post" action={ "/setup/" (bridge) "/" (a.name) } {
                                    input type="hidden" name=(CSRF_FIELD) value=(admin.csrf());
                                    @if !a.choices.is_empty() {
                                        select name="choice" aria-label="choose" {
                                            @for (value, text) in &a.choices { option value=(value) { (text) } }
                                        }
                                        " "
                                    }
                                    button type="submit" { (a.button) }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Live: every view re-checks. Live probes of outside APIs are cached for a short time." }
    };
    layout::html(status, layout::page("Setup", Nav::Setup, body))
}

/// Where each missing setting can be set: the form takes storable ones; the others need the
/// environment or the config file, and a restart.
fn missing_fix(catalogue: &Catalogue, missing: &[&str], by_button: &[&str]) -> String {
    let (buttons, missing): (Vec<&str>, Vec<&str>) =
        missing.iter().partition(|name| by_button.contains(name));
    let (form, env): (Vec<&str>, Vec<&str>) = missing
        .iter()
        .partition(|name| catalogue.find_by_env(name).is_some_and(|s| s.storable));
    let mut parts = Vec::new();
    if !form.is_empty() {
        parts.push(format!("Set {} in /admin/credentials.", form.join(", ")));
    }
    if !env.is_empty() {
        parts.push(format!(
            "Set {} in the environment or the config file, then restart.",
            env.join(", ")
        ));
    }
    if !buttons.is_empty() {
        parts.push(format!("The buttons below set {}.", buttons.join(", ")));
    }
    parts.join(" ")
}

async fn platform_checks(core: &Core) -> Vec<Check> {
    let cfg = &core.config;
    let db_ok = core.db.ping().await;
    let mut rows = vec![Check::new(
        "Database reachable",
        db_ok,
        format!(
            "Check DATABASE_URL ({}) and that the database server is running.",
            crate::db::redact_url(cfg.database_url())
        ),
    )];
    rows.push(Check::new(
        "Master key set (SWITCHBOARD_MASTER_KEY)",
        cfg.master_key().is_some(),
        "Run `switchboard keys generate`, put the output in SWITCHBOARD_MASTER_KEY and restart. Back the key up with the database: stored secrets can't be read without it.",
    ));
    if db_ok {
        let readable = core.settings.list().await.err();
        rows.push(Check::new(
            "Stored credentials readable",
            readable.is_none(),
            readable.map(|e| e.to_string()).unwrap_or_default(),
        ));
    }
    rows.push(Check::new(
        "Admin token set (SWITCHBOARD_ADMIN_TOKEN)",
        cfg.admin_token().is_some(),
        "Set SWITCHBOARD_ADMIN_TOKEN to a long random string.",
    ));
    rows.push(Check::new(
        "Public URL is https (SWITCHBOARD_PUBLIC_URL)",
        cfg.public_url().starts_with("https://"),
        format!(
            "Meta and Bitrix24 only call https addresses: set SWITCHBOARD_PUBLIC_URL to this server's public https URL (now {}).",
            cfg.public_url()
        ),
    ));
    if db_ok {
        let workers = live_workers(&core.db).await;
        if let Err(e) = &workers {
            tracing::warn!(error = %e, "reading the worker heartbeats failed");
        }
        rows.push(Check::new(
            "Job workers running",
            workers.as_ref().is_ok_and(|n| *n > 0),
            if workers.is_ok() {
                "No worker has reported in the last 30 s: run `switchboard serve` (without --no-workers) or `switchboard worker` on this database."
            } else {
                "The workers' heartbeat table could not be read; see the server log."
            },
        ));
        let dead = core.jobs.stats().await.map(|s| s.dead).unwrap_or(-1);
        rows.push(Check::new(
            "No dead letters",
            dead == 0,
            if dead < 0 {
                "The job queue could not be read; see the server log.".to_string()
            } else {
                format!(
                    "{dead} job(s) gave up: open /admin/jobs, fix the cause shown as the last error, then retry."
                )
            },
        ));
    }
    rows
}

/// Worker processes whose heartbeat is recent, from apalis' own worker table (each worker
/// updates `last_seen` every heartbeat), so it counts workers of every process on the database.
async fn live_workers(db: &Db) -> Result<i64, sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT COUNT(*) FROM Workers WHERE last_seen >= CAST(strftime('%s', 'now') AS INTEGER) - $1"
        }
        Db::Postgres(_) => {
            "SELECT COUNT(*) FROM apalis.workers WHERE last_seen >= now() - $1 * interval '1 second'"
        }
    };
    let (n,): (i64,) = on_pool!(db, |p| sqlx::query_as(sql)
        .bind(WORKER_SILENCE_SECS)
        .fetch_one(p)
        .await)?;
    Ok(n)
}
