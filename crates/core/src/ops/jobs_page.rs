//! `/admin/jobs`: queue depth, running jobs, dead letters with their last error, and retry of
//! one dead letter or all of them.

use axum::{
    Form,
    extract::{Query, State},
    response::Response,
};
use maud::{Markup, html};

use super::{
    OpsState,
    layout::{self, Nav},
    session::{self, AdminSession, CSRF_FIELD},
};
use crate::jobs::JobRow;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Notice {
    retried: Option<u64>,
}

pub(super) async fn show_jobs(
    State(s): State<OpsState>,
    admin: AdminSession,
    Query(notice): Query<Notice>,
) -> Response {
    let loaded = async {
        Ok::<_, crate::jobs::QueueError>((
            s.core.jobs.stats().await?,
            s.core.jobs.list(true, 200).await?,
            s.core.jobs.list(false, 25).await?,
        ))
    };
    let (stats, dead, recent) = match loaded.await {
        Ok(x) => x,
        Err(e) => return layout::internal(e),
    };
    let csrf = admin.csrf();
    let body = html! {
        h1 { "Jobs" }
        @if let Some(n) = notice.retried {
            p.notice.ok role="status" { (n) " dead letter(s) put back on the queue." }
        }
        div.grid {
            div.card { div.stat #queue-depth { (stats.pending) } div.muted { "waiting (incl. retries not yet due)" } }
            div.card { div.stat #running { (stats.running) } div.muted { "running" } }
            div.card { div.stat #dead-letters { (stats.dead) } div.muted { "dead letters" } }
        }
        h2 { "Dead letters" }
        @if dead.is_empty() {
            p.card.muted { "None. Jobs that fail five times (or can't succeed) wait here for a retry." }
        } @else {
            form.inline method="post" action="/admin/jobs/retry" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                input type="hidden" name="id" value="all";
                button type="submit" { "Retry all " (dead.len()) }
            }
            p.muted { "Fix the cause shown as the last error first, or the job dies again." }
            (table(&dead, Some(csrf)))
        }
        h2 { "Recent jobs" }
        (table(&recent, None))
    };
    layout::ok("Jobs", Nav::Jobs, body)
}

fn table(rows: &[JobRow], retry_csrf: Option<&str>) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr { th { "Job" } th { "Status" } th { "Attempts" } th { "Last error" } th { "Request id" } @if retry_csrf.is_some() { th {} } } }
                tbody {
                    @for j in rows {
                        tr data-job=(j.id) {
                            td { code { (j.kind) } br; small.muted { (j.id) } }
                            td { span.badge { (j.status) } }
                            td { (j.attempts) "/" (j.max_attempts) }
                            td { (j.last_error.as_deref().unwrap_or("")) }
                            td { code { (j.request_id) } }
                            @if let Some(csrf) = retry_csrf {
                                td {
                                    form.inline method="post" action="/admin/jobs/retry" {
                                        input type="hidden" name=(CSRF_FIELD) value=(csrf);
                                        input type="hidden" name="id" value=(j.id);
                                        button.secondary type="submit" { "Retry" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// POST `/admin/jobs/retry` with `id` = a job id or `all`.
pub(super) async fn retry_jobs(
    State(s): State<OpsState>,
    admin: AdminSession,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = admin.verify_csrf(&fields) {
        return refused;
    }
    let target = fields
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str())
        .unwrap_or("all");
    let id = (target != "all").then_some(target);
    match s.core.jobs.retry(id).await {
        Ok(n) => {
            tracing::info!(
                target,
                retried = n,
                "dead letters retried from the admin page"
            );
            session::see_other(&format!("/admin/jobs?retried={n}"))
        }
        Err(e) => layout::internal(e),
    }
}
