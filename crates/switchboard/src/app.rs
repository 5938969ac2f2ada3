//! The one place routers meet. Path → this file → the crate's `routes.rs` table → handler.

use std::time::Duration;

use axum::{
    Router,
    extract::MatchedPath,
    http::{HeaderName, Request, Response},
};
use switchboard_core::{
    Core, config::Catalogue, http::ErrorCause, inbox::Processors, jobs::JobRegistry,
    ops::BridgeInfo, scheduler,
};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::Span;

/// Every setting this binary knows: core's, then each bridge's, in the order `credentials
/// list` shows them. The admin form puts the groups the credential store holds first, in the
/// order an operator fills them in.
pub fn catalogue() -> Catalogue {
    use bitrix_connector::catalogue::{BITRIX_GROUP, META_GROUP};
    use switchboard_core::config::catalogue::{DATABASE_GROUP, SERVER_GROUP};
    Catalogue::new(&[
        pbx_bridge::catalogue::SETTINGS,
        wabridges_hooks::catalogue::SETTINGS,
        bitrix_connector::catalogue::SETTINGS,
    ])
    .with_tables(wabridges_hooks::catalogue::TABLES)
    .with_tables(bitrix_connector::catalogue::TABLES)
    .with_form_order(&[
        META_GROUP,
        BITRIX_GROUP,
        wabridges_hooks::catalogue::WABRIDGES_GROUP,
        pbx_bridge::catalogue::PBX_GROUP,
        SERVER_GROUP,
        DATABASE_GROUP,
    ])
}

/// The core and the bridges' values that must exist once per process (the Bitrix24 client, with
/// its rate bucket and refresh lock), built once and shared by the router, the workers, the
/// scheduler and the commands.
#[derive(Clone)]
pub struct Wiring {
    pub core: Core,
    pub bitrix: bitrix_connector::Relay,
}

impl Wiring {
    pub fn new(core: &Core) -> Self {
        Self {
            core: core.clone(),
            bitrix: bitrix_connector::Relay::new(core),
        }
    }
}

pub fn bridges(w: &Wiring) -> Vec<BridgeInfo> {
    vec![
        pbx_bridge::info(&w.core),
        wabridges_hooks::info(&w.core),
        bitrix_connector::info(&w.bitrix),
    ]
}

pub fn router(w: &Wiring) -> Router {
    let core = &w.core;
    let x_request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .merge(switchboard_core::ops::router(core, bridges(w))) // /health /metrics / /docs /setup /admin/*
        .merge(pbx_bridge::router(core)) // POST /whatsapp-bridge
        .merge(wabridges_hooks::router(core)) // POST /wabridges/hooks/{bridge}, /api/wabridges/*
        .merge(bitrix_connector::router(&w.bitrix)) // /webhook/whatsapp /bitrix/* /media/{id}
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let path = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(MatchedPath::as_str)
                        .unwrap_or("unmatched");
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), route = path, request_id)
                })
                .on_request(())
                .on_response(|resp: &Response<_>, latency: Duration, _span: &Span| {
                    let status = resp.status().as_u16();
                    metrics::histogram!("switchboard_http_request_duration_seconds").record(latency.as_secs_f64());
                    // Successful calls are logged at debug only: every webhook call already has
                    // its audit row (status, duration, request id), and a log line per ack cost
                    // about a third of the ack throughput. Refusals and failures stay visible.
                    match resp.extensions().get::<ErrorCause>() {
                        Some(cause) => tracing::error!(status, latency_ms = latency.as_millis() as u64, cause = %cause.0, "request failed"),
                        None if status >= 400 => tracing::info!(status, latency_ms = latency.as_millis() as u64, "request refused"),
                        None => tracing::debug!(status, latency_ms = latency.as_millis() as u64, "request"),
                    }
                })
                .on_failure(()),
        )
        .layer(axum::middleware::from_fn(count_request))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
}

/// Counts each request under its route template (`/wabridges/hooks/{bridge}`, never the path
/// itself, which callers choose) and its status class.
async fn count_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route: metrics::SharedString = match req.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_string().into(),
        None => "unmatched".into(),
    };
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("switchboard_http_requests_total", "route" => route, "status" => class)
        .increment(1);
    resp
}

/// Every bridge's jobs and inbox processors, plus core's own.
pub fn job_registry(w: &Wiring) -> JobRegistry {
    let (mut registry, processors) = registered(w);
    processors.install(w.core.inbox.clone(), &mut registry);
    registry
}

/// The inbox sources some bridge processes (`meta`, `bitrix`, `wabridges`…), sorted.
pub fn event_sources(w: &Wiring) -> Vec<String> {
    registered(w).1.sources()
}

fn registered(w: &Wiring) -> (JobRegistry, Processors) {
    let mut registry = JobRegistry::default();
    let mut processors = Processors::default();
    pbx_bridge::register(&w.core, &mut registry, &mut processors);
    wabridges_hooks::register(&w.core, &mut registry, &mut processors);
    bitrix_connector::register(&w.bitrix, &mut registry, &mut processors);
    (registry, processors)
}

/// How long the daily prune keeps finished audit rows (`events prune --older-than 30d` by hand).
const DEFAULT_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// Periodic work: core's retention prune, then each bridge's.
pub fn scheduled(w: &Wiring) -> Vec<scheduler::Task> {
    let core = &w.core;
    let inbox = core.inbox.clone();
    let mut tasks = vec![scheduler::Task::new(
        "core.prune-events",
        scheduler::When::DailyAt { hour: 3 },
        move || {
            let inbox = inbox.clone();
            async move {
                inbox
                    .prune(DEFAULT_RETENTION_MS)
                    .await
                    .map(|n| format!("pruned {n} audit rows"))
                    .map_err(|e| e.to_string())
            }
        },
    )];
    tasks.extend(pbx_bridge::scheduled(core));
    tasks.extend(wabridges_hooks::scheduled(core));
    tasks.extend(bitrix_connector::scheduled(&w.bitrix));
    tasks
}

#[cfg(test)]
mod tests {
    use switchboard_core::config::check_kind;

    use super::catalogue;

    /// The annotated example must list every setting with its real default, or operators are
    /// told something the binary doesn't do.
    #[test]
    fn example_file_lists_every_setting() {
        let text = include_str!("../../../config/switchboard.example.toml");
        for s in catalogue().iter() {
            let line = format!("{} = ", s.name());
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches('#').trim_start().starts_with(&line)),
                "{} missing from config/switchboard.example.toml",
                s.key
            );
            assert!(text.contains(s.env), "{} not named in the example", s.env);
        }
    }

    /// README's settings table is where a stranger reads the defaults: each setting has its
    /// row, and the row's last column is the default the code uses (`—` for none).
    #[test]
    fn readme_states_every_default() {
        let text = include_str!("../../../README.md");
        for s in catalogue().iter() {
            let start = format!("| `{}` |", s.env);
            let row = text
                .lines()
                .find(|l| l.starts_with(&start))
                .unwrap_or_else(|| panic!("{} has no row in README's settings table", s.env));
            let stated = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
            let expected = match s.default {
                Some(d) => format!("`{d}`"),
                None => "—".to_string(),
            };
            assert_eq!(stated, expected, "README's default for {}", s.env);
        }
    }

    /// Keys and environment names are how operators and the store name a setting: two entries
    /// sharing one would shadow each other. A default that fails its own check would stop
    /// every start-up that leaves it alone.
    #[test]
    fn entries_are_unique_and_defaults_valid() {
        let all: Vec<_> = catalogue().iter().collect();
        for (i, s) in all.iter().enumerate() {
            assert!(all[..i].iter().all(|o| o.key != s.key), "{} twice", s.key);
            assert!(all[..i].iter().all(|o| o.env != s.env), "{} twice", s.env);
            if let Some(d) = s.default {
                assert_eq!(check_kind(s, d), Ok(()), "{}", s.key);
            }
        }
    }

    /// Same fieldsets in the same order as before the catalogue was split across crates.
    #[test]
    fn admin_form_groups_keep_their_order() {
        assert_eq!(
            catalogue().form_groups(),
            [
                "Meta WhatsApp",
                "Bitrix24",
                "wabridges hooks",
                "PBX bridge",
                "Server",
                "Database"
            ]
        );
    }
}
