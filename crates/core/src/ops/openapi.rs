//! `/openapi.json` (OpenAPI 3.1) and `/docs/api`, its page for people.
//!
//! The document is generated from the code: core's routes are annotated where they are handled
//! (`#[utoipa::path]` on the handler, `ToSchema` on the bodies) and listed in [`CoreApi`]; each
//! bridge describes its own routes the same way and hands the result over with
//! [`super::BridgeInfo::with_api`]. [`document`] merges them, so core names no bridge's route.
//! A test compares the paths here with the router's route table: a JSON route added without a
//! description fails it.

use std::collections::BTreeMap;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use serde_json::Value;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{
    OpsState,
    layout::{self, Nav},
};
use crate::{http::ErrorBody, jobs::JobRow, jobs::QueueStats};

/// The security scheme of the admin JSON APIs: `Authorization: Bearer <SWITCHBOARD_ADMIN_TOKEN>`.
pub const ADMIN_TOKEN: &str = "admin_token";
/// The same token as `?token=`, for clients that cannot set a header.
pub const ADMIN_TOKEN_QUERY: &str = "admin_token_query";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "The JSON routes of one Switchboard process: the bridges' webhooks and \
                       APIs, the operations API behind the admin token, and `/health`. Every \
                       error body is an `ErrorBody`.",
        license(name = "MIT"),
    ),
    paths(
        super::health,
        super::metrics,
        super::events_page::events_json,
        super::jobs_page::jobs_json,
        openapi_json,
    ),
    components(schemas(
        ErrorBody, Health, HealthStatus, DatabaseHealth, QueueHealth, super::BridgeHealth,
        EventsPage, JobsPage, QueueStats, JobRow,
    )),
    modifiers(&AdminToken),
    tags(
        (name = "operations", description = "Health, metrics and the state of the work, for machines and operators."),
    ),
)]
struct CoreApi;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("SWITCHBOARD_ADMIN_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "SWITCHBOARD_ADMIN_TOKEN as a query parameter",
            ))),
        );
    }
}

/// Core's description merged with every bridge's.
pub fn document(bridges: &[super::BridgeInfo]) -> utoipa::openapi::OpenApi {
    let mut doc = CoreApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    for b in bridges {
        if let Some(api) = &b.api {
            doc.merge(api.clone());
        }
    }
    doc
}

/// What `/health` answers.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct Health {
    /// `healthy`; `degraded` while acknowledged work is not (all) being done; `unhealthy`
    /// while the database is unreachable (then with status 503).
    pub status: HealthStatus,
    pub database: DatabaseHealth,
    /// The queue's counts; `null` while the database is unreachable.
    pub queue: Option<QueueHealth>,
    /// This process's workers: `state` (`off`, `starting`, `running`, `restarting`), `reason`,
    /// `restarts`.
    #[schema(value_type = Object)]
    pub workers: crate::jobs::WorkersHealth,
    /// Each bridge's state by name (empty while the database is unreachable).
    pub bridges: BTreeMap<String, super::BridgeHealth>,
    pub uptime_secs: u64,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct DatabaseHealth {
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub reachable: bool,
}

#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct QueueHealth {
    /// Jobs waiting or due for a retry, and stored events not yet queued.
    pub depth: i64,
    pub running: i64,
    pub dead_letters: i64,
}

/// `/api/events`: the audit log, newest first.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct EventsPage {
    /// Each event with its status, its jobs (each with a `url`) and `url`, its place on
    /// `/admin/events`.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// The next (older) page, with the same filters; `null` on the last page.
    pub next: Option<String>,
}

/// `/api/jobs`: the queue's counts, its dead letters, recent jobs and one request's jobs.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct JobsPage {
    pub queue: QueueStats,
    /// Each with `event_url`, where its event is shown.
    #[schema(value_type = Vec<JobRow>)]
    pub dead_letters: Vec<Value>,
    #[schema(value_type = Vec<JobRow>)]
    pub recent: Vec<Value>,
    /// The jobs of `?request=`; `null` without it.
    #[schema(value_type = Option<Vec<JobRow>>)]
    pub request: Option<Vec<Value>>,
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of every JSON route", body = Object)),
)]
pub(super) async fn openapi_json(State(s): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.to_string(),
    )
        .into_response()
}

/// `/docs/api`: the same document as a page.
pub(super) async fn show_api(State(s): State<OpsState>) -> Response {
    let doc: Value = serde_json::from_str(&s.openapi).unwrap_or_default();
    layout::ok(
        "HTTP API",
        Nav::Docs,
        html! {
            (super::docs_page::nav("api"))
            article.doc.card { (render(&doc)) }
        },
    )
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn render(doc: &Value) -> Markup {
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .unwrap_or(&empty);
    let schemas = doc["components"]["schemas"].as_object().unwrap_or(&empty);
    html! {
        h1 { "HTTP API" }
        p { (doc["info"]["description"].as_str().unwrap_or_default()) }
        p { "Machine-readable: " a href="/openapi.json" { code { "/openapi.json" } } " (OpenAPI 3.1)." }
        h2 { "Routes" }
        ul {
            @for (path, item) in paths {
                @for m in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                    li { a href={ "#" (anchor(m, path)) } { code { (m.to_uppercase()) " " (path) } } }
                }
            }
        }
        @for (path, item) in paths {
            @for m in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                (operation(m, path, &item[*m]))
            }
        }
        h2 { "Authentication" }
        dl {
            @for (name, s) in schemes {
                dt { code { (name) } }
                dd { (scheme_text(s)) }
            }
        }
        h2 { "Bodies" }
        @for (name, s) in schemas {
            h3 id={ "schema-" (name) } { (name) }
            @if let Some(d) = s["description"].as_str() { p { (d) } }
            (schema_table(s))
        }
    }
}

fn anchor(method: &str, path: &str) -> String {
    let slug: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{method}{slug}")
}

fn operation(method: &str, path: &str, op: &Value) -> Markup {
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    let security: Vec<String> = op["security"]
        .as_array()
        .map(|alts| {
            alts.iter()
                .filter_map(|a| a.as_object())
                .flat_map(|a| a.keys().cloned())
                .collect()
        })
        .unwrap_or_default();
    let responses = op["responses"].as_object().cloned().unwrap_or_default();
    html! {
        h3 id=(anchor(method, path)) { code { (method.to_uppercase()) " " (path) } }
        @if let Some(s) = op["summary"].as_str() { p { strong { (s) } } }
        @if let Some(d) = op["description"].as_str() { p { (d) } }
        @if !security.is_empty() {
            p { "Authentication (any one): " @for (i, s) in security.iter().enumerate() { @if i > 0 { ", " } code { (s) } } }
        }
        @if !params.is_empty() {
            table {
                thead { tr { th { "Parameter" } th { "In" } th { "Type" } th { "Description" } } }
                tbody {
                    @for p in &params {
                        tr {
                            td { code { (p["name"].as_str().unwrap_or_default()) } @if p["required"] == true { " (required)" } }
                            td { (p["in"].as_str().unwrap_or_default()) }
                            td { (type_text(&p["schema"])) }
                            td { (p["description"].as_str().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        @if let Some(content) = op["requestBody"]["content"].as_object() {
            p { "Body: "
                @for (i, (ct, c)) in content.iter().enumerate() {
                    @if i > 0 { "; " }
                    code { (ct) } " " (type_text(&c["schema"]))
                }
            }
        }
        table {
            thead { tr { th { "Status" } th { "Means" } th { "Body" } } }
            tbody {
                @for (status, r) in &responses {
                    tr {
                        td { (status) }
                        td { (r["description"].as_str().unwrap_or_default()) }
                        td {
                            @if let Some(content) = r["content"].as_object() {
                                @for (i, (ct, c)) in content.iter().enumerate() {
                                    @if i > 0 { "; " }
                                    code { (ct) } " " (type_text(&c["schema"]))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn scheme_text(s: &Value) -> String {
    let what = match (s["type"].as_str(), s["scheme"].as_str(), s["in"].as_str()) {
        (Some("http"), Some(scheme), _) => format!("HTTP {scheme}"),
        (Some("apiKey"), _, Some(place)) => {
            format!("{} in the {place}", s["name"].as_str().unwrap_or_default())
        }
        (Some(t), _, _) => t.to_string(),
        _ => String::new(),
    };
    match s["description"].as_str() {
        Some(d) => format!("{what}: {d}"),
        None => what,
    }
}

/// A schema in a few words: a `$ref`'s name, `array of X`, a type, or its enum values.
fn type_text(s: &Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    if let Some(values) = s["enum"].as_array() {
        return values
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if let Some(alts) = s["oneOf"].as_array().or(s["anyOf"].as_array()) {
        return alts.iter().map(type_text).collect::<Vec<_>>().join(" or ");
    }
    match &s["type"] {
        Value::String(t) if t == "array" => format!("array of {}", type_text(&s["items"])),
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .map(|t| {
                if t == "array" {
                    format!("array of {}", type_text(&s["items"]))
                } else {
                    t.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_string(),
    }
}

fn schema_table(s: &Value) -> Markup {
    let Some(props) = s["properties"].as_object() else {
        return html! { p { (type_text(s)) } };
    };
    let required: Vec<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    html! {
        table {
            thead { tr { th { "Field" } th { "Type" } th { "Description" } } }
            tbody {
                @for (name, p) in props {
                    tr {
                        td { code { (name) } @if !required.contains(&name.as_str()) { " (optional)" } }
                        td { (type_text(p)) }
                        td { (p["description"].as_str().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}
