//! `/admin/events`: the audit log, newest first, filterable by source and status, paged by id;
//! each row opens to its headers and the start of its payload (credentials masked) and can be
//! replayed. The whole payload is on its own route, `/admin/events/{id}/payload`, so a page
//! of large bodies costs the page's size, not the bodies'.

use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};

use super::{
    OpsState,
    layout::{self, Nav},
    redact,
    session::{self, AdminSession, CSRF_FIELD},
};
use crate::inbox::{EventPreview, Status};

const PAGE_SIZE: i64 = 50;
/// Characters of each payload and error shown on the list.
const PREVIEW_CHARS: usize = 400;
const ERROR_CHARS: usize = 1000;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Filter {
    source: Option<String>,
    status: Option<String>,
    before: Option<String>,
    /// Set after a replay, to say what happened.
    replayed: Option<String>,
    queued: Option<String>,
}

impl Filter {
    fn source(&self) -> Option<&str> {
        self.source
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
    fn status(&self) -> Option<&str> {
        self.status
            .as_deref()
            .filter(|s| Status::parse(s).is_some())
    }
    fn before(&self) -> Option<i64> {
        self.before.as_deref().and_then(|b| b.parse().ok())
    }

    /// The query string of these filters with `before` replaced.
    fn query(&self, before: Option<i64>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = self.source() {
            q.append_pair("source", s);
        }
        if let Some(s) = self.status() {
            q.append_pair("status", s);
        }
        if let Some(b) = before {
            q.append_pair("before", &b.to_string());
        }
        q.finish()
    }
}

pub(super) async fn show_events(
    State(s): State<OpsState>,
    admin: AdminSession,
    Query(f): Query<Filter>,
) -> Response {
    let events = match s
        .core
        .inbox
        .list_previews(f.source(), f.status(), f.before(), PAGE_SIZE)
        .await
    {
        Ok(e) => e,
        Err(e) => return layout::internal(e),
    };
    let older = (events.len() as i64 == PAGE_SIZE)
        .then(|| events.last().map(|e| e.event.id))
        .flatten();
    let body = html! {
        h1 { "Events" }
        @if let Some(id) = &f.replayed {
            @if f.queued.as_deref() == Some("0") {
                p.notice.bad role="status" { "Event #" (id) " was not replayed: duplicates and rejected calls are never processed." }
            } @else {
                p.notice.ok role="status" { "Event #" (id) " queued for reprocessing." }
            }
        }
        form.filters method="get" action="/admin/events" {
            label { "Source" input type="search" name="source" value=[f.source()] placeholder="any (meta, bitrix, wabridges…)"; }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for st in Status::ALL {
                        option value=(st.as_str()) selected[f.status() == Some(st.as_str())] { (st.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
            @if f.source().is_some() || f.status().is_some() { a href="/admin/events" { "Clear" } }
        }
        @if events.is_empty() {
            p.card.muted { "No events" @if f.before().is_some() { " older than this" } " match." }
        }
        @for e in &events { (event(e, &f, admin.csrf())) }
        nav.pager {
            @if f.before().is_some() { a href={ "/admin/events?" (f.query(None)) } { "← Newest" } }
            @if let Some(b) = older { a href={ "/admin/events?" (f.query(Some(b))) } { "Older →" } }
        }
    };
    layout::ok("Events", Nav::Events, body)
}

fn event(row: &EventPreview, f: &Filter, csrf: &str) -> Markup {
    let e = &row.event;
    let whole = row.stored_len <= e.body.len() as i64;
    let headers = serde_json::from_str::<serde_json::Value>(&e.headers)
        .map(|mut v| {
            redact::redact_json(&mut v);
            serde_json::to_string_pretty(&v).unwrap_or_default()
        })
        .unwrap_or_default();
    let replayable = !matches!(e.status.as_str(), "duplicate" | "rejected");
    html! {
        details.event id={ "event-" (e.id) } {
            summary {
                strong { "#" (e.id) }
                span { (layout::time(e.received_at)) }
                span.badge { (e.source) }
                span.badge.(e.status) { (e.status) }
                code { (e.route) }
                @if let Some(err) = &e.error { span.muted { (truncate(err, 80)) } }
            }
            div.body {
                dl {
                    dt { "Request id" } dd { code { (e.request_id) } }
                    @if let Some(k) = &e.dedupe_key { dt { "Dedupe key" } dd { code { (k) } } }
                    @if let Some(d) = e.duration_ms { dt { "Duration" } dd { (d) " ms" } }
                    dt { "Attempts" } dd { (e.attempts) }
                    @if let Some(p) = e.processed_at { dt { "Finished" } dd { (layout::time(p)) } }
                    @if let Some(err) = &e.error { dt { "Error" } dd { (truncate(err, ERROR_CHARS)) } }
                    @if let (Some(size), Some(hash)) = (e.body_size, &e.body_sha256) {
                        dt { "Body" }
                        dd { "refused call: first " (row.stored_len) " of " (size) " bytes kept · SHA-256 " code { (hash) } }
                    }
                }
                h3 { "Headers" }
                pre { (headers) }
                h3 { "Payload " a href={ "/admin/events/" (e.id) "/payload" } { "(all " (row.stored_len) " stored bytes)" } }
                pre { (redact::preview(&e.body, whole, PREVIEW_CHARS)) }
                @if replayable {
                    form.inline method="post" action="/admin/events/replay" {
                        input type="hidden" name=(CSRF_FIELD) value=(csrf);
                        input type="hidden" name="id" value=(e.id);
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
