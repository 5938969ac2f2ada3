//! Operations routes every deployment has: `/health` for monitors and load balancers,
//! `/metrics` for Prometheus. Bridges appear here only as [`BridgeInfo`] values the binary
//! passes in.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::future::BoxFuture;
use serde_json::json;

use crate::Core;

/// A bridge's answer to "are you ready?": `configured` plus the settings still missing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub configured: bool,
    pub missing: Vec<&'static str>,
}

pub type ReadinessFn = Arc<dyn Fn() -> BoxFuture<'static, Readiness> + Send + Sync>;

/// How a bridge describes itself to the ops pages.
#[derive(Clone)]
pub struct BridgeInfo {
    pub name: &'static str,
    pub title: &'static str,
    pub routes: &'static [&'static str],
    pub readiness: ReadinessFn,
}

impl BridgeInfo {
    pub fn new<F, Fut>(
        name: &'static str,
        title: &'static str,
        routes: &'static [&'static str],
        readiness: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Readiness> + Send + 'static,
    {
        let readiness = Arc::new(readiness);
        Self {
            name,
            title,
            routes,
            readiness: Arc::new(move || {
                let r = readiness.clone();
                Box::pin(async move { r().await })
            }),
        }
    }
}

#[derive(Clone)]
struct OpsState {
    core: Core,
    bridges: Arc<Vec<BridgeInfo>>,
}

pub fn router(core: &Core, bridges: Vec<BridgeInfo>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            core: core.clone(),
            bridges: Arc::new(bridges),
        })
}

async fn health(State(s): State<OpsState>) -> Response {
    let db_ok = s.core.db.ping().await;
    let stats = if db_ok {
        s.core.jobs.stats().await.ok()
    } else {
        None
    };
    let mut bridges = serde_json::Map::new();
    for b in s.bridges.iter() {
        let r = (b.readiness)().await;
        bridges.insert(
            b.name.to_string(),
            json!({ "configured": r.configured, "missing": r.missing }),
        );
    }
    if let Some(st) = &stats {
        metrics::gauge!("switchboard_queue_depth").set(st.pending as f64);
        metrics::gauge!("switchboard_dead_letters").set(st.dead as f64);
    }
    let status = if db_ok { "healthy" } else { "unhealthy" };
    let body = json!({
        "status": status,
        "database": { "backend": s.core.db.backend(), "reachable": db_ok },
        "queue": stats.as_ref().map(|q| json!({ "depth": q.pending, "running": q.running, "dead_letters": q.dead })),
        "bridges": bridges,
        "uptime_secs": s.core.started_at.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<OpsState>) -> Response {
    if let Ok(st) = s.core.jobs.stats().await {
        metrics::gauge!("switchboard_queue_depth").set(st.pending as f64);
        metrics::gauge!("switchboard_jobs_running").set(st.running as f64);
        metrics::gauge!("switchboard_dead_letters").set(st.dead as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}
