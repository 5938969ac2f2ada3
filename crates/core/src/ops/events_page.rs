//! `/admin/events`: the audit log, newest first, filterable by source and status, paged by id;
//! each row opens to its headers and the start of its payload (credentials masked) and can be
//! replayed. The whole payload is on its own route, `/admin/events/{id}/payload`, so a page
//! of large bodies costs the page's size, not the bodies'.

use axum::{
    Form, Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};

use super::{
    OpsState,
    layout::{self, Nav},
    redact,
    session::{self, AdminSession, CSRF_FIELD},
};
use crate::{
    inbox::{EventPreview, EventQuery, Status},
    jobs::JobRow,
};

const PAGE_SIZE: i64 = 50;
/// Characters of each payload and error shown on the list.
const PREVIEW_CHARS: usize = 400;
const ERROR_CHARS: usize = 1000;
/// Dead letters whose events the `failed` filter finds; more wait for the jobs page.
const FAILED_REQUESTS_MAX: i64 = 1000;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Filter {
    source: Option<String>,
    status: Option<String>,
    /// Request id, dedupe key, or text in the payload: a phone number, wamid or Bitrix id.
    q: Option<String>,
    /// `YYYY-MM-DDTHH:MM` (a browser's datetime-local, read as UTC) or RFC 3339.
    from: Option<String>,
    to: Option<String>,
    before: Option<String>,
    /// Set after a replay, to say what happened.
    replayed: Option<String>,
    queued: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A time typed in the filter form, in Unix milliseconds.
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .map(|t| t.and_utc().timestamp_millis())
}

impl Filter {
    fn source(&self) -> Option<&str> {
        non_empty(&self.source)
    }
    fn status(&self) -> Option<&str> {
        self.status
            .as_deref()
            .filter(|s| Status::parse(s).is_some() || *s == PROCESSING)
    }
    fn text(&self) -> Option<&str> {
        non_empty(&self.q)
    }
    fn from(&self) -> Option<&str> {
        non_empty(&self.from)
    }
    fn to(&self) -> Option<&str> {
        non_empty(&self.to)
    }
    fn before(&self) -> Option<i64> {
        self.before.as_deref().and_then(|b| b.parse().ok())
    }
    fn any(&self) -> bool {
        self.source().is_some()
            || self.status().is_some()
            || self.text().is_some()
            || self.from().is_some()
            || self.to().is_some()
    }
    /// A time that does not parse, to say so rather than ignore it.
    fn bad_time(&self) -> Option<&str> {
        [self.from(), self.to()]
            .into_iter()
            .flatten()
            .find(|t| parse_time(t).is_none())
    }

    /// The query string of these filters with `before` replaced.
    fn query(&self, before: Option<i64>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("source", self.source()),
            ("status", self.status()),
            ("q", self.text()),
            ("from", self.from()),
            ("to", self.to()),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if let Some(b) = before {
            q.append_pair("before", &b.to_string());
        }
        q.finish()
    }
}

/// Shown, not stored: the event's own processing is done and a job it caused is still to run.
const PROCESSING: &str = "processing";

/// An event with the status its work earned and the jobs it caused.
#[derive(Debug, serde::Serialize)]
pub(super) struct EventView {
    #[serde(flatten)]
    pub event: crate::inbox::StoredEvent,
    /// What the row itself says, before its jobs are counted.
    pub stored_status: String,
    pub jobs: Vec<JobRow>,
    #[serde(skip)]
    pub stored_len: i64,
    #[serde(skip)]
    pub preview: Vec<u8>,
}

/// The status an event's work earned: `failed` with the job's error while a job it caused is
/// a dead letter, `processing` while one is still to run after the event itself was
/// processed, else what its row says.
pub(super) fn effective_status(stored: &str, jobs: &[JobRow]) -> (String, Option<String>) {
    if let Some(dead) = jobs.iter().find(|j| j.is_dead()) {
        let error = dead
            .last_error
            .clone()
            .unwrap_or_else(|| "a job failed for good".to_string());
        return (
            Status::Failed.as_str().to_string(),
            Some(format!("{}: {error}", dead.kind)),
        );
    }
    if stored == Status::Processed.as_str()
        && let Some(open) = jobs.iter().find(|j| j.state != "done")
    {
        return (PROCESSING.to_string(), open.last_error.clone());
    }
    (stored.to_string(), None)
}

/// A page of events with, when the page was full, the id the next page starts before.
pub(super) struct Page {
    pub events: Vec<EventView>,
    pub older: Option<i64>,
}

/// The page of events `f` selects, each with its jobs and the status they earn it.
pub(super) async fn load(s: &OpsState, f: &Filter) -> Result<Page, String> {
    let wanted = f.status();
    // Failed and processed depend on the jobs too: the dead letters' requests go into the
    // query so the page is filled with matching rows.
    let failed_requests = if matches!(wanted, Some("failed" | "processed" | PROCESSING)) {
        s.core
            .jobs
            .dead_request_ids(FAILED_REQUESTS_MAX)
            .await
            .map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let status = match wanted {
        Some(PROCESSING) => Some(Status::Processed),
        other => other.and_then(Status::parse),
    };
    let query = EventQuery {
        source: f.source(),
        status,
        failed_requests: &failed_requests,
        since_ms: f.from().and_then(parse_time),
        until_ms: f.to().and_then(parse_time),
        text: f.text(),
        before: f.before(),
    };
    let rows = s
        .core
        .inbox
        .list_previews(&query, PAGE_SIZE)
        .await
        .map_err(|e| e.to_string())?;
    // Paged by the rows read, not the rows kept: a page thinned by the jobs' statuses still
    // leads on to older rows.
    let older = (rows.len() as i64 == PAGE_SIZE)
        .then(|| rows.last().map(|r| r.event.id))
        .flatten();
    let request_ids: Vec<String> = rows.iter().map(|r| r.event.request_id.clone()).collect();
    let mut jobs = s
        .core
        .jobs
        .for_requests(&request_ids)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let EventPreview {
            mut event,
            stored_len,
        } = row;
        let (mine, rest): (Vec<JobRow>, Vec<JobRow>) = jobs
            .into_iter()
            .partition(|j| j.request_id == event.request_id);
        jobs = rest;
        let stored_status = event.status.clone();
        let (status, error) = effective_status(&stored_status, &mine);
        if wanted == Some(PROCESSING) && status != PROCESSING {
            continue;
        }
        if wanted == Some("processed") && status != "processed" {
            continue;
        }
        event.status = status;
        if error.is_some() {
            event.error = error;
        }
        let preview = std::mem::take(&mut event.body);
        out.push(EventView {
            event,
            stored_status,
            jobs: mine,
            stored_len,
            preview,
        });
    }
    Ok(Page { events: out, older })
}

pub(super) async fn show_events(
    State(s): State<OpsState>,
    admin: AdminSession,
    Query(f): Query<Filter>,
) -> Response {
    let Page { events, older } = match load(&s, &f).await {
        Ok(p) => p,
        Err(e) => return layout::internal(e),
    };
    let traffic = s.traffic().await.unwrap_or_default();
    let sources: Vec<&str> = s
        .bridges
        .iter()
        .flat_map(|b| b.sources.iter().copied())
        .collect();
    let body = html! {
        h1 { "Events" }
        @if let Some(id) = &f.replayed {
            @if f.queued.as_deref() == Some("0") {
                p.notice.bad role="status" { "Event #" (id) " was not replayed: duplicates and rejected calls are never processed." }
            } @else {
                p.notice.ok role="status" { "Event #" (id) " queued for reprocessing." }
            }
        }
        @if !traffic.is_empty() {
            div.table-wrap {
                table #traffic {
                    thead { tr { th { "Bridge" } th { "Source" } th { "Last hour" } th { "Last 24 h" } th { "Last received" } } }
                    tbody {
                        @for t in &traffic {
                            tr data-traffic=(t.source) {
                                td { (t.bridge) }
                                td { a href={ "/admin/events?source=" (t.source) } { code { (t.source) } } }
                                td.hour { (t.last_hour) }
                                td.day { (t.last_day) }
                                td { @match t.last_received_at { Some(at) => (layout::time(at)), None => span.muted { "never" } } }
                            }
                        }
                    }
                }
            }
        }
        form.filters method="get" action="/admin/events" {
            label { "Search" input type="search" name="q" value=[f.text()] placeholder="phone, wa_id, wamid, Bitrix id or request id"; }
            label { "Source"
                select name="source" {
                    option value="" { "any" }
                    @for src in &sources {
                        option value=(src) selected[f.source().is_some_and(|x| x.eq_ignore_ascii_case(src))] { (src) }
                    }
                }
            }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for st in Status::ALL.iter().map(|s| s.as_str()).chain([PROCESSING]) {
                        option value=(st) selected[f.status() == Some(st)] { (st) }
                    }
                }
            }
            label { "From (UTC)" input type="datetime-local" name="from" value=[f.from()]; }
            label { "To (UTC)" input type="datetime-local" name="to" value=[f.to()]; }
            button type="submit" { "Filter" }
            @if f.any() { a href="/admin/events" { "Clear" } }
        }
        @if let Some(t) = f.bad_time() {
            p.notice.bad role="status" { "`" (t) "` is not a time; write it like 2026-11-25T10:00." }
        }
        @if events.is_empty() {
            p.card.muted { "No events" @if f.before().is_some() { " older than this" } " match." }
        }
        @for e in &events { (event(e, &f, admin.csrf(), s.replayable(&e.event.source))) }
        nav.pager {
            @if f.before().is_some() { a href={ "/admin/events?" (f.query(None)) } { "← Newest" } }
            @if let Some(b) = older { a href={ "/admin/events?" (f.query(Some(b))) } { "Older →" } }
        }
    };
    layout::ok("Events", Nav::Events, body)
}

/// GET `/api/events`: the events page as JSON (same filters), behind the admin token.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "operations",
    params(
        ("source" = Option<String>, Query, description = "Only events of this source (`meta`, `bitrix`, `wabridges`, `pbx`…)"),
        ("status" = Option<String>, Query, description = "Only events in this status (`received`, `processing`, `processed`, `failed`, `rejected`, `duplicate`…)"),
        ("q" = Option<String>, Query, description = "A request id, dedupe key, or text in the payload: a phone number, wamid or Bitrix id"),
        ("from" = Option<String>, Query, description = "Received at or after: RFC 3339 or `YYYY-MM-DDTHH:MM` (UTC)"),
        ("to" = Option<String>, Query, description = "Received before: RFC 3339 or `YYYY-MM-DDTHH:MM` (UTC)"),
        ("before" = Option<String>, Query, description = "Where a page starts: take it from the previous page's `next`"),
    ),
    responses(
        (status = 200, description = "A page of the audit log, newest first", body = super::openapi::EventsPage),
        (status = 400, description = "A query parameter is malformed", body = crate::http::ErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = crate::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = crate::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub(super) async fn events_json(
    State(s): State<OpsState>,
    headers: HeaderMap,
    uri: Uri,
    crate::http::Query(f): crate::http::Query<Filter>,
) -> Response {
    if let Err(refused) =
        crate::http::check_admin(s.core.config.admin_token().as_ref(), &headers, uri.query())
    {
        return refused;
    }
    match load(&s, &f).await {
        Ok(Page { events, older }) => {
            let events: Vec<serde_json::Value> = events
                .iter()
                .map(|e| {
                    let mut v = serde_json::to_value(e).unwrap_or_default();
                    v["url"] = format!(
                        "/admin/events?q={}#event-{}",
                        e.event.request_id, e.event.id
                    )
                    .into();
                    if let Some(jobs) = v["jobs"].as_array_mut() {
                        for j in jobs {
                            let id = j["id"].as_str().unwrap_or_default().to_string();
                            j["url"] = job_url(&e.event.request_id, &id).into();
                        }
                    }
                    v
                })
                .collect();
            let next = older.map(|b| format!("/api/events?{}", f.query(Some(b))));
            Json(super::openapi::EventsPage { events, next }).into_response()
        }
        Err(e) => crate::http::internal_error(&e),
    }
}

/// Where job `id`, caused by the event with `request_id`, is shown.
pub(super) fn job_url(request_id: &str, id: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("request", request_id)
        .finish();
    format!("/admin/jobs?{q}#job-{id}")
}

fn event(e: &EventView, f: &Filter, csrf: &str, replayable: bool) -> Markup {
    let ev = &e.event;
    let whole = e.stored_len <= e.preview.len() as i64;
    let headers = serde_json::from_str::<serde_json::Value>(&ev.headers)
        .map(|mut v| {
            redact::redact_json(&mut v);
            serde_json::to_string_pretty(&v).unwrap_or_default()
        })
        .unwrap_or_default();
    let replayable = replayable && !matches!(e.stored_status.as_str(), "duplicate" | "rejected");
    html! {
        details.event id={ "event-" (ev.id) } data-request=(ev.request_id) {
            summary {
                strong { "#" (ev.id) }
                span { (layout::time(ev.received_at)) }
                span.badge { (ev.source) }
                span.badge.(ev.status) data-status=(ev.status) { (ev.status) }
                code { (ev.route) }
                @if let Some(err) = &ev.error { span.muted { (truncate(err, 80)) } }
            }
            div.body {
                dl {
                    dt { "Request id" } dd { code { (ev.request_id) } }
                    @if let Some(k) = &ev.dedupe_key { dt { "Dedupe key" } dd { code { (k) } } }
                    @if let Some(d) = ev.duration_ms { dt { "Duration" } dd { (d) " ms" } }
                    dt { "Attempts" } dd { (ev.attempts) }
                    @if let Some(p) = ev.processed_at { dt { "Finished" } dd { (layout::time(p)) } }
                    @if let Some(err) = &ev.error { dt { "Error" } dd { (truncate(err, ERROR_CHARS)) } }
                    @if let (Some(size), Some(hash)) = (ev.body_size, &ev.body_sha256) {
                        dt { "Body" }
                        dd { "refused call: first " (e.stored_len) " of " (size) " bytes kept · SHA-256 " code { (hash) } }
                    }
                }
                @if !e.jobs.is_empty() {
                    h3 { "Jobs" }
                    ul.jobs {
                        @for j in &e.jobs {
                            li data-job=(j.id) {
                                a href=(job_url(&ev.request_id, &j.id)) { code { (j.kind) } }
                                " " span.badge.(j.state.replace(' ', "-")) { (j.state) }
                                " " (j.attempts) "/" (j.max_attempts) " attempts"
                                @if let Some(err) = &j.last_error { " — " span.muted { (truncate(err, 200)) } }
                            }
                        }
                    }
                }
                h3 { "Headers" }
                pre { (headers) }
                h3 { "Payload " a href={ "/admin/events/" (ev.id) "/payload" } { "(all " (e.stored_len) " stored bytes)" } }
                pre { (redact::preview(&e.preview, whole, PREVIEW_CHARS)) }
                @if replayable {
                    form.inline method="post" action="/admin/events/replay" {
                        input type="hidden" name=(CSRF_FIELD) value=(csrf);
                        input type="hidden" name="id" value=(ev.id);
                        @if let Some(s) = f.source() { input type="hidden" name="source" value=(s); }
                        @if let Some(s) = f.status() { input type="hidden" name="status" value=(s); }
                        button type="submit" { "Replay" }
                    }
                }
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// GET `/admin/events/{id}/payload`: the stored body, credentials masked, as plain text. Never
/// rendered by the browser: the body is whatever the sender chose.
pub(super) async fn show_payload(
    State(s): State<OpsState>,
    _admin: AdminSession,
    Path(id): Path<i64>,
) -> Response {
    let event = match s.core.inbox.get(id).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            return layout::error_page(
                StatusCode::NOT_FOUND,
                "No such event",
                "There is no stored event with that id; it may have been pruned.",
                html! { p { a href="/admin/events" { "Back to events" } } },
            );
        }
        Err(e) => return layout::internal(e),
    };
    let mut resp = redact::redact_body(&event.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// POST `/admin/events/replay`: the row back to `received`, handed to the workers at once.
pub(super) async fn replay_event(
    State(s): State<OpsState>,
    admin: AdminSession,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = admin.verify_csrf(&fields) {
        return refused;
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Some(id) = field("id").and_then(|v| v.parse::<i64>().ok()) else {
        return layout::error_page(
            axum::http::StatusCode::BAD_REQUEST,
            "Nothing to replay",
            "The form named no event id.",
            html! { p { a href="/admin/events" { "Back to events" } } },
        );
    };
    let record_only = match s.core.inbox.get(id).await {
        Ok(e) => e.is_some_and(|e| !s.replayable(&e.source)),
        Err(e) => return layout::internal(e),
    };
    if record_only {
        return layout::error_page(
            axum::http::StatusCode::BAD_REQUEST,
            "Not replayable",
            "This event records a call that was answered at once; there is nothing to do again.",
            html! { p { a href="/admin/events" { "Back to events" } } },
        );
    }
    let queued = match s.core.inbox.replay(&[id]).await {
        Ok(n) => n,
        Err(e) => return layout::internal(e),
    };
    if let Err(e) = crate::inbox::dispatch_pending(&s.core.inbox, &s.core.jobs).await {
        // The row is already back to `received`; the dispatcher hands it over within seconds.
        tracing::warn!(event_id = id, error = %e, "replayed event not dispatched at once");
    }
    tracing::info!(event_id = id, queued, "event replayed from the admin page");
    let back = Filter {
        source: field("source"),
        status: field("status"),
        ..Filter::default()
    };
    let mut q = back.query(None);
    if !q.is_empty() {
        q.push('&');
    }
    session::see_other(&format!(
        "/admin/events?{q}replayed={id}&queued={queued}#event-{id}"
    ))
}
