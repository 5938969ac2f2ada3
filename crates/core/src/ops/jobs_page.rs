//! `/admin/jobs`: queue depth, running jobs, dead letters with their last error, and retry of
//! one dead letter or all of them.

use axum::{
    Form, Json,
    extract::{Query, State},
    http::{HeaderMap, Uri},
    response::{IntoResponse, Response},
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
    /// Show the jobs this request (an inbox event's request id) caused.
    request: Option<String>,
}

impl Notice {
    fn request(&self) -> Option<&str> {
        self.request
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
    }
}

/// The page's data: the counts, the dead letters, recent jobs, and the jobs of the request
/// asked for.
async fn load(
    s: &OpsState,
    n: &Notice,
) -> Result<
    (
        crate::jobs::QueueStats,
        Vec<JobRow>,
        Vec<JobRow>,
        Vec<JobRow>,
    ),
    crate::jobs::QueueError,
> {
    let of_request = match n.request() {
        Some(r) => s.core.jobs.for_requests(&[r.to_string()]).await?,
        None => Vec::new(),
    };
    Ok((
        s.core.jobs.stats().await?,
        s.core.jobs.list(true, 200).await?,
        s.core.jobs.list(false, 25).await?,
        of_request,
    ))
}

pub(super) async fn show_jobs(
    State(s): State<OpsState>,
    admin: AdminSession,
    Query(notice): Query<Notice>,
) -> Response {
    let (stats, dead, recent, of_request) = match load(&s, &notice).await {
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
        @if let Some(r) = notice.request() {
            h2 #request { "Jobs of request " code { (r) } }
            p { a href=(event_url(r)) { "The event that caused them" } }
            @if of_request.is_empty() {
                p.card.muted { "No jobs carry this request id." }
            } @else {
                (table(&of_request, Some(csrf), ""))
            }
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
            (table(&dead, Some(csrf), "dead-"))
        }
        h2 { "Recent jobs" }
        (table(&recent, None, "recent-"))
    };
    layout::ok("Jobs", Nav::Jobs, body)
}

/// Where the event that caused the jobs of `request_id` is shown.
fn event_url(request_id: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("q", request_id)
        .finish();
    format!("/admin/events?{q}")
}

fn job_event_url(j: &JobRow) -> String {
    let base = event_url(&j.request_id);
    match j.event_id {
        Some(id) => format!("{base}#event-{id}"),
        None => base,
    }
}

fn when(ms: Option<i64>) -> Markup {
    html! {
        @match ms {
            Some(ms) => time datetime=(ms) { (layout::time(ms)) },
            None => span.muted { "—" },
        }
    }
}

/// `anchor` prefixes each row's id, so one job listed twice on the page keeps unique ids; the
/// rows of the request asked for carry the bare `job-<id>` that links from events point at.
fn table(rows: &[JobRow], retry_csrf: Option<&str>, anchor: &str) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr { th { "Job" } th { "State" } th { "Attempts" } th { "Created" } th { "Last attempt" } th { "Next attempt" } th { "Last error" } th { "Event" } @if retry_csrf.is_some() { th {} } } }
                tbody {
                    @for j in rows {
                        tr id={ (anchor) "job-" (j.id) } data-job=(j.id) data-state=(j.state) {
                            td { code { (j.kind) } br; small.muted { (j.id) } }
                            td { span.badge { (j.state) } }
                            td { (j.attempts) "/" (j.max_attempts) }
                            td { (when(j.created_at)) }
                            td { (when(j.last_attempt_at)) }
                            td { (when(j.next_attempt_at)) }
                            td.error { (j.last_error.as_deref().unwrap_or("")) }
                            td { a.event-link href=(job_event_url(j)) { code { (j.request_id) } } }
                            @if let Some(csrf) = retry_csrf {
                                td {
                                    @if j.is_dead() {
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
}

/// GET `/api/jobs`: the jobs page as JSON (`?request=` for one event's jobs), behind the admin
/// token.
#[utoipa::path(
    get,
    path = "/api/jobs",
    tag = "operations",
    params(
        ("request" = Option<String>, Query, description = "Also list the jobs this request (an event's request id) caused"),
    ),
    responses(
        (status = 200, description = "The queue's counts, dead letters, recent jobs", body = super::openapi::JobsPage),
        (status = 400, description = "A query parameter is malformed", body = crate::http::ErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = crate::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = crate::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub(super) async fn jobs_json(
    State(s): State<OpsState>,
    headers: HeaderMap,
    uri: Uri,
    crate::http::Query(notice): crate::http::Query<Notice>,
) -> Response {
    if let Err(refused) =
        crate::http::check_admin(s.core.config.admin_token().as_ref(), &headers, uri.query())
    {
        return refused;
    }
    let with_links = |rows: Vec<JobRow>| -> Vec<serde_json::Value> {
        rows.iter()
            .map(|j| {
                let mut v = serde_json::to_value(j).unwrap_or_default();
                v["event_url"] = job_event_url(j).into();
                v
            })
            .collect()
    };
    match load(&s, &notice).await {
        Ok((stats, dead, recent, of_request)) => Json(super::openapi::JobsPage {
            queue: stats,
            dead_letters: with_links(dead),
            recent: with_links(recent),
            request: notice.request().map(|_| with_links(of_request)),
        })
        .into_response(),
        Err(e) => crate::http::internal_error(&e),
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
