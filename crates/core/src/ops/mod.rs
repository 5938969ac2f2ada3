//! The operations surface (SPEC §1.5): `/health` and `/metrics` for machines, and the operator
//! pages — `/` landing, `/docs`, `/setup`, `/admin/credentials`, `/admin/events`,
//! `/admin/jobs` — for people. Bridges appear here only as [`BridgeInfo`] values the binary
//! passes in; core names no bridge.
//!
//! Pages are server-rendered HTML (maud) with one stylesheet and no JavaScript. `/setup` and
//! `/admin/*` are gated by `SWITCHBOARD_ADMIN_TOKEN` through a session cookie and every POST
//! carries a CSRF token (`session.rs`). Read the route table in [`router`], then the page
//! modules in the same order.

mod bridge_page;
mod credentials_form;
mod docs_page;
mod events_page;
mod jobs_page;
mod landing;
mod layout;
pub mod openapi;
pub mod redact;
mod session;
mod setup;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::future::BoxFuture;

use crate::Core;

/// A bridge's answer to "are you ready?": `configured` plus the settings still missing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub configured: bool,
    pub missing: Vec<&'static str>,
}

pub type ReadinessFn = Arc<dyn Fn() -> BoxFuture<'static, Readiness> + Send + Sync>;

/// One row of the `/setup` checklist: what is checked, whether it holds, and what the operator
/// does when it doesn't (shown only on a failing row, so write it as an instruction).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub label: String,
    pub ok: bool,
    pub fix: String,
    /// Values the operator pastes elsewhere (a callback URL for Meta, say), shown on the row
    /// whatever its state, each with what it is for.
    pub copy: Vec<(String, String)>,
    /// What this product can do about a failing row itself: a button on the row.
    pub action: Option<Action>,
}

/// A button on a `/setup` row. Pressing it posts to `/setup/{bridge}/{name}` (admin session
/// and CSRF token required), which runs the bridge's action of that name (see
/// [`BridgeInfo::with_actions`]) and shows its result above the checklist.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Action {
    pub name: String,
    pub button: String,
    /// When not empty, a list to pick from first, posted as the `choice` field: (value, text).
    pub choices: Vec<(String, String)>,
}

impl Action {
    pub fn new(name: impl Into<String>, button: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            button: button.into(),
            choices: Vec::new(),
        }
    }

    pub fn with_choices(mut self, choices: Vec<(String, String)>) -> Self {
        self.choices = choices;
        self
    }
}

impl Check {
    pub fn new(label: impl Into<String>, ok: bool, fix: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            ok,
            fix: fix.into(),
            copy: Vec::new(),
            action: None,
        }
    }

    /// Shows `value` on the row to copy, introduced by `what` ("Callback URL").
    pub fn with_copy(mut self, what: impl Into<String>, value: impl Into<String>) -> Self {
        self.copy.push((what.into(), value.into()));
        self
    }

    /// Offers `action` as a button while the row fails.
    pub fn with_action(mut self, action: Action) -> Self {
        self.action = Some(action);
        self
    }
}

/// The outcome of a `/setup` button: a report to show, or what went wrong with its fix.
pub type ActionResult = Result<String, String>;

/// Runs the bridge's action `name` with the posted `choice`; `None` when it has no such action.
pub type ActionsFn =
    Arc<dyn Fn(String, Option<String>) -> BoxFuture<'static, Option<ActionResult>> + Send + Sync>;

pub type ChecksFn = Arc<dyn Fn() -> BoxFuture<'static, Vec<Check>> + Send + Sync>;

/// How a bridge describes itself to the ops pages.
#[derive(Clone)]
pub struct BridgeInfo {
    pub name: &'static str,
    pub title: &'static str,
    pub routes: &'static [&'static str],
    pub readiness: ReadinessFn,
    checks: Option<ChecksFn>,
    actions: Option<ActionsFn>,
    /// Settings (by environment name) that one of its `/setup` buttons sets.
    set_by_actions: &'static [&'static str],
    traffic: Option<TrafficFn>,
    /// The inbox sources it records (its events and their traffic).
    pub sources: &'static [&'static str],
    /// The prefix of its job kinds (`bitrix-connector.`): its failing jobs make it degraded.
    pub job_prefix: Option<&'static str>,
    /// Its events are a record of calls already answered, not work: nothing replays them.
    pub record_only: bool,
    alerts: Option<AlertsFn>,
    /// Its routes' OpenAPI description, merged into `/openapi.json`.
    api: Option<utoipa::openapi::OpenApi>,
    /// Its own admin pages, at `/admin/pages/{name}/{slug}`.
    pub pages: Vec<BridgePage>,
}

/// What a bridge page shows: plain text, escaped by the page.
#[derive(Debug, Clone, Default)]
pub struct PageView {
    /// Paragraphs above the table.
    pub intro: Vec<String>,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// Shown instead of an empty table.
    pub empty: String,
}

pub type PageFn = Arc<dyn Fn() -> BoxFuture<'static, Result<PageView, String>> + Send + Sync>;
/// A page's action: what it did, or why it could not.
pub type ActionFn = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// An admin page of a bridge, behind the admin sign-in like the others.
#[derive(Clone)]
pub struct BridgePage {
    pub slug: &'static str,
    pub title: &'static str,
    pub load: PageFn,
    /// One button (its label) posted with the session's CSRF token.
    pub action: Option<(&'static str, ActionFn)>,
}

impl BridgePage {
    pub fn new<F, Fut>(slug: &'static str, title: &'static str, load: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<PageView, String>> + Send + 'static,
    {
        let load = Arc::new(load);
        Self {
            slug,
            title,
            load: Arc::new(move || {
                let l = load.clone();
                Box::pin(async move { l().await })
            }),
            action: None,
        }
    }

    pub fn with_action<F, Fut>(mut self, label: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.action = Some((
            label,
            Arc::new(move || {
                let f = f.clone();
                Box::pin(async move { f().await })
            }),
        ));
        self
    }
}

/// Problems a bridge knows of that no job shows (say, its Bitrix24 line was deleted): each
/// makes it `degraded` on `/health`, with the text as the reason.
pub type AlertsFn = Arc<dyn Fn() -> BoxFuture<'static, Vec<String>> + Send + Sync>;

/// Lines of recent traffic a bridge shows in its card on `/`.
pub type TrafficFn = Arc<dyn Fn() -> BoxFuture<'static, Vec<String>> + Send + Sync>;

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
            checks: None,
            actions: None,
            set_by_actions: &[],
            traffic: None,
            sources: &[],
            job_prefix: None,
            record_only: false,
            alerts: None,
            api: None,
            pages: Vec::new(),
        }
    }

    /// Adds an admin page of the bridge at `/admin/pages/{name}/{slug}`, linked from `/`.
    pub fn with_page(mut self, page: BridgePage) -> Self {
        self.pages.push(page);
        self
    }

    /// Adds the bridge's standing alerts: while `f` returns any, `/health` reports the bridge
    /// `degraded` with them as the reason. Each must be fit for a public page (no secrets,
    /// hosts or customers' numbers), and `f` cheap: it runs on every `/health`.
    pub fn with_alerts<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<String>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.alerts = Some(Arc::new(move || {
            let f = f.clone();
            Box::pin(async move { f().await })
        }));
        self
    }

    /// The OpenAPI description of the bridge's JSON routes (`MyApi::openapi()` of a
    /// `#[derive(utoipa::OpenApi)]`), merged into `/openapi.json` and `/docs/api`. Every JSON
    /// route a bridge serves must be in it: a test compares the document with the route table.
    pub fn with_api(mut self, api: utoipa::openapi::OpenApi) -> Self {
        self.api = Some(api);
        self
    }

    /// The inbox sources this bridge records and the prefix of its job kinds, so its events,
    /// traffic and failing jobs are counted as its own on `/health` and the pages.
    pub fn with_work(
        mut self,
        sources: &'static [&'static str],
        job_prefix: Option<&'static str>,
    ) -> Self {
        self.sources = sources;
        self.job_prefix = job_prefix;
        self
    }

    /// This bridge's events record calls it answered at once (`sources`): shown in the audit
    /// log, never replayed.
    pub fn with_records(mut self, sources: &'static [&'static str]) -> Self {
        self.sources = sources;
        self.record_only = true;
        self
    }

    /// Adds the bridge's own rows to the `/setup` checklist, shown under its title after the
    /// row core derives from [`Readiness`] ("configured", with the missing settings as the fix).
    /// `f` runs on every `/setup` view, so it should answer in well under a second: wrap a
    /// live probe (a call to Meta or Bitrix24) in a [`ProbeCache`]. A row's `fix` is the
    /// instruction shown when `ok` is false — name the command, the setting or the page, e.g.
    ///
    /// ```ignore
    /// let probe = ProbeCache::new(Duration::from_secs(60));
    /// BridgeInfo::new("bitrix", "Bitrix24 connector", ROUTES, readiness).with_checks(move || {
    ///     let (settings, probe) = (settings.clone(), probe.clone());
    ///     async move {
    ///         let token = settings.get(catalogue::META_ACCESS_TOKEN).await.ok().flatten();
    ///         vec![
    ///             Check::new("Webhook verify token set", has_verify_token,
    ///                 "Set Webhook Verify Token in /admin/credentials and type the same string in Meta's webhook settings."),
    ///             probe.get_or_probe(token.as_deref().unwrap_or("").as_bytes(), meta_token_check(token)).await,
    ///         ]
    ///     }
    /// })
    /// ```
    ///
    /// A check must never put a secret in `label` or `fix`. Without this call a bridge shows
    /// only its readiness row.
    pub fn with_checks<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Check>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.checks = Some(Arc::new(move || {
            let f = f.clone();
            Box::pin(async move { f().await })
        }));
        self
    }

    /// The bridge's `/setup` buttons: `f(name, choice)` runs the action a [`Check`] offered
    /// through [`Check::with_action`] and answers `None` for a name it doesn't know. Core calls
    /// it only for a signed-in operator whose form carries the CSRF token, so `f` needn't check
    /// either; it should drop its probe caches so the page shows the new state at once. The
    /// report and error texts are shown on the page: no secrets in them.
    pub fn with_actions<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String, Option<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<ActionResult>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.actions = Some(Arc::new(move |name, choice| {
            let f = f.clone();
            Box::pin(async move { f(name, choice).await })
        }));
        self
    }

    /// Settings (by environment name) that its `/setup` buttons set, so the "configured" row
    /// sends the operator to the button instead of the credentials form for them.
    pub fn with_settings_set_by_actions(mut self, settings: &'static [&'static str]) -> Self {
        self.set_by_actions = settings;
        self
    }

    /// Runs the bridge's action `name`; `None` if it has none of that name.
    pub async fn act(&self, name: String, choice: Option<String>) -> Option<ActionResult> {
        match &self.actions {
            Some(f) => f(name, choice).await,
            None => None,
        }
    }

    /// Adds lines of recent traffic to the bridge's card on `/` (say, messages per channel in
    /// the last 24 hours). `/` is public: a line must hold counts and names an operator chose,
    /// never a value, a payload or a customer's number, and `f` must be cheap (it runs on every
    /// view).
    pub fn with_traffic<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<String>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.traffic = Some(Arc::new(move || {
            let f = f.clone();
            Box::pin(async move { f().await })
        }));
        self
    }

    /// The bridge's traffic lines (none unless it called [`BridgeInfo::with_traffic`]).
    pub async fn traffic(&self) -> Vec<String> {
        match &self.traffic {
            Some(f) => f().await,
            None => Vec::new(),
        }
    }

    /// The bridge's own checklist rows (none unless it called [`BridgeInfo::with_checks`]).
    pub async fn checks(&self) -> Vec<Check> {
        match &self.checks {
            Some(f) => f().await,
            None => Vec::new(),
        }
    }
}

/// Caches one live probe's [`Check`] for a short time, keyed by a fingerprint of what it
/// probed (e.g. the token), so `/setup` doesn't call an outside API on every view, a changed
/// credential is probed again at once, and concurrent views share one probe.
#[derive(Clone)]
pub struct ProbeCache {
    ttl: Duration,
    slot: Arc<tokio::sync::Mutex<Option<CachedProbe>>>,
}

/// When the probe ran, the hash of what it probed, and its result.
type CachedProbe = (Instant, [u8; 32], Check);

impl ProbeCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slot: Arc::default(),
        }
    }

    /// The cached result for `fingerprint` if fresh, else the result of `probe` (awaited while
    /// holding the slot, which is what makes concurrent views share it). The fingerprint is
    /// hashed before it is kept, so a token passed here is not held in memory longer.
    pub async fn get_or_probe(
        &self,
        fingerprint: &[u8],
        probe: impl Future<Output = Check>,
    ) -> Check {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(fingerprint).into();
        let mut slot = self.slot.lock().await;
        if let Some((at, k, check)) = slot.as_ref()
            && *k == key
            && at.elapsed() < self.ttl
        {
            return check.clone();
        }
        let check = probe.await;
        *slot = Some((Instant::now(), key, check.clone()));
        check
    }

    /// Forgets the cached result, so the next view probes again (after a `/setup` button
    /// changed what the probe looks at).
    pub async fn clear(&self) {
        *self.slot.lock().await = None;
    }
}

#[derive(Clone)]
struct OpsState {
    core: Core,
    bridges: Arc<Vec<BridgeInfo>>,
    /// `/openapi.json`, rendered once.
    openapi: Arc<str>,
}

impl OpsState {
    fn new(core: &Core, bridges: Vec<BridgeInfo>) -> Self {
        let openapi = openapi::document(&bridges)
            .to_json()
            .expect("the OpenAPI document serializes");
        Self {
            core: core.clone(),
            bridges: Arc::new(bridges),
            openapi: openapi.into(),
        }
    }
}

impl OpsState {
    /// Whether events of `source` are work that a replay does again.
    fn replayable(&self, source: &str) -> bool {
        !self
            .bridges
            .iter()
            .any(|b| b.record_only && b.sources.contains(&source))
    }
}

/// Every ops route. The binary merges this with the bridges' routers.
pub fn router(core: &Core, bridges: Vec<BridgeInfo>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/", get(landing::show_landing))
        .route("/docs", get(docs_page::show_docs_index))
        .route("/docs/api", get(openapi::show_api))
        .route("/docs/{name}", get(docs_page::show_doc))
        .route("/openapi.json", get(openapi::openapi_json))
        .route(layout::STYLESHEET_PATH, get(layout::stylesheet))
        .route("/setup", get(setup::show_setup))
        .route("/setup/{bridge}/{action}", post(setup::run_action))
        .route("/admin", get(|| async { session::see_other("/setup") }))
        .route("/admin/sign-in", post(session::sign_in_form))
        .route(
            "/admin/credentials",
            get(credentials_form::show_credentials).post(credentials_form::save_credentials),
        )
        .route("/admin/events", get(events_page::show_events))
        .route("/admin/events/replay", post(events_page::replay_event))
        .route("/admin/events/{id}/payload", get(events_page::show_payload))
        .route("/admin/jobs", get(jobs_page::show_jobs))
        .route("/admin/jobs/retry", post(jobs_page::retry_jobs))
        .route(
            "/admin/pages/{bridge}/{page}",
            get(bridge_page::show_page).post(bridge_page::run_action),
        )
        .route("/api/events", get(events_page::events_json))
        .route("/api/jobs", get(jobs_page::jobs_json))
        .with_state(OpsState::new(core, bridges))
}

/// `/health` and `/metrics` only: what a worker process, which serves no bridge, shows its
/// orchestrator and its metrics scraper.
pub fn probe_router(core: &Core, bridges: Vec<BridgeInfo>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(OpsState::new(core, bridges))
}

/// A bridge's state as `/health` and `/` report it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BridgeHealth {
    /// `ready`, `degraded` or `off`.
    #[schema(value_type = String, pattern = "^(ready|degraded|off)$")]
    pub state: &'static str,
    /// Why it is not `ready`.
    pub reason: Option<String>,
    pub configured: bool,
    /// The settings still to set.
    #[schema(value_type = Vec<String>)]
    pub missing: Vec<&'static str>,
}

/// How far back a failed outside call still makes a bridge `degraded` when nothing has
/// succeeded since.
const RECENT_FAILURE: Duration = Duration::from_secs(15 * 60);

impl OpsState {
    /// Each bridge's state: `off` until configured; `degraded` while a job of its own (or the
    /// processing of one of its events) is a dead letter or failing, or its last outside
    /// call failed; else `ready`.
    async fn bridge_health(&self) -> Vec<(&BridgeInfo, BridgeHealth)> {
        let failing = self.core.jobs.failing(1000).await.unwrap_or_default();
        let mut out = Vec::with_capacity(self.bridges.len());
        for b in self.bridges.iter() {
            let r = (b.readiness)().await;
            let health = |state, reason| BridgeHealth {
                state,
                reason,
                configured: r.configured,
                missing: r.missing.clone(),
            };
            if !r.configured {
                let reason = format!("not configured: set {}", r.missing.join(", "));
                out.push((b, health("off", Some(reason))));
                continue;
            }
            let mine: Vec<&crate::jobs::JobRow> = failing
                .iter()
                .filter(|j| {
                    b.job_prefix.is_some_and(|p| j.kind.starts_with(p))
                        || j.source.as_deref().is_some_and(|s| b.sources.contains(&s))
                })
                .collect();
            let dead = mine.iter().filter(|j| j.is_dead()).count();
            // `/health` and `/` are public: the kinds of job only. A job's error can hold a host,
            // a customer's number or worse; it is on `/admin/jobs`, behind the admin token.
            let kinds = |dead_only: bool| {
                let mut kinds: Vec<&str> = mine
                    .iter()
                    .filter(|j| !dead_only || j.is_dead())
                    .map(|j| j.kind.as_str())
                    .collect();
                kinds.sort_unstable();
                kinds.dedup();
                kinds.join(", ")
            };
            let alerts = match &b.alerts {
                Some(f) => f().await,
                None => Vec::new(),
            };
            let reason = if !alerts.is_empty() {
                Some(alerts.join("; "))
            } else if dead > 0 {
                Some(format!(
                    "{dead} dead letter(s) ({}); the errors are on /admin/jobs",
                    kinds(true)
                ))
            } else if !mine.is_empty() {
                Some(format!(
                    "{} job(s) failing and being retried ({}); the errors are on /admin/jobs",
                    mine.len(),
                    kinds(false)
                ))
            } else {
                self.core
                    .calls
                    .last(b.name)
                    .filter(|c| !c.ok && c.at.elapsed() < RECENT_FAILURE)
                    .map(|c| format!("last outside call failed: {}", c.detail))
            };
            out.push(match reason {
                Some(reason) => (b, health("degraded", Some(reason))),
                None => (b, health("ready", None)),
            });
        }
        out
    }

    /// Recent traffic of every bridge's sources, with the bridge's title.
    pub(super) async fn traffic(&self) -> Result<Vec<BridgeTraffic>, crate::inbox::InboxError> {
        let now = crate::db::now_ms();
        let mut out = Vec::new();
        for b in self.bridges.iter() {
            for t in self
                .core
                .inbox
                .traffic(b.sources, now - 3_600_000, now - 86_400_000)
                .await?
            {
                out.push(BridgeTraffic {
                    bridge: b.title,
                    source: t.source,
                    last_hour: t.last_hour,
                    last_day: t.last_day,
                    last_received_at: t.last_received_at,
                });
            }
        }
        Ok(out)
    }
}

/// One source's recent traffic, under its bridge's title.
#[derive(Debug, Clone, Default)]
pub(super) struct BridgeTraffic {
    pub bridge: &'static str,
    pub source: String,
    pub last_hour: i64,
    pub last_day: i64,
    pub last_received_at: Option<i64>,
}

/// The last outside call each bridge made from this process (a call to Meta, Bitrix24, the
/// PBX, a subscriber): whether it succeeded and what failed. Bridges record through
/// [`crate::Core`]'s `calls`; `/health` reads it.
#[derive(Clone, Default)]
pub struct OutsideCalls(Arc<std::sync::Mutex<std::collections::HashMap<&'static str, LastCall>>>);

#[derive(Debug, Clone)]
pub struct LastCall {
    pub ok: bool,
    /// What failed, in words fit for a public page: no secrets, payloads, hosts or numbers.
    pub detail: String,
    pub at: Instant,
}

impl OutsideCalls {
    pub fn succeeded(&self, bridge: &'static str) {
        self.set(bridge, true, String::new());
    }

    pub fn failed(&self, bridge: &'static str, detail: impl Into<String>) {
        self.set(bridge, false, detail.into());
    }

    fn set(&self, bridge: &'static str, ok: bool, detail: String) {
        self.0.lock().expect("outside calls lock").insert(
            bridge,
            LastCall {
                ok,
                detail,
                at: Instant::now(),
            },
        );
    }

    pub fn last(&self, bridge: &str) -> Option<LastCall> {
        self.0
            .lock()
            .expect("outside calls lock")
            .get(bridge)
            .cloned()
    }
}

/// The process's state: database, queue, workers and each bridge. 200 while the database
/// answers (a degraded bridge is reported, not a reason to take the process out), else 503.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers; `status` says whether all work is being done", body = openapi::Health),
        (status = 503, description = "The database is unreachable", body = openapi::Health),
    ),
)]
async fn health(State(s): State<OpsState>) -> Response {
    use openapi::{DatabaseHealth, Health, HealthStatus, QueueHealth};
    let db_ok = s.core.db.ping().await;
    let stats = if db_ok {
        s.core.jobs.stats().await.ok()
    } else {
        None
    };
    let mut bridges = std::collections::BTreeMap::new();
    let mut any_degraded = false;
    if db_ok {
        for (b, h) in s.bridge_health().await {
            any_degraded |= h.state == "degraded";
            bridges.insert(b.name.to_string(), h);
        }
    }
    if let Some(st) = &stats {
        metrics::gauge!("switchboard_queue_depth").set(st.pending as f64);
        metrics::gauge!("switchboard_dead_letters").set(st.dead as f64);
    }
    // Degraded: up and acknowledging, but what it acknowledges is not (all) being done.
    let workers = s.core.jobs.workers_health();
    let status = if !db_ok {
        HealthStatus::Unhealthy
    } else if workers.degraded() || any_degraded {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    let body = Health {
        status,
        database: DatabaseHealth {
            backend: s.core.db.backend().to_string(),
            reachable: db_ok,
        },
        queue: stats.as_ref().map(|q| QueueHealth {
            depth: q.pending,
            running: q.running,
            dead_letters: q.dead,
        }),
        workers,
        bridges,
        uptime_secs: s.core.started_at.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // Only the database makes the process unable to take work: a bridge's trouble is
    // reported, not a reason for a load balancer to take the process out.
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus text exposition of the process's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")),
)]
async fn metrics(State(s): State<OpsState>) -> Response {
    if let Ok(st) = s.core.jobs.stats().await {
        metrics::gauge!("switchboard_queue_depth").set(st.pending as f64);
        metrics::gauge!("switchboard_jobs_running").set(st.running as f64);
        metrics::gauge!("switchboard_dead_letters").set(st.dead as f64);
        if let Ok(age) = s.core.jobs.oldest_due_age().await {
            metrics::gauge!("switchboard_queue_oldest_due_age_seconds").set(age.as_secs_f64());
        }
        // Each bridge's state as `/health` says it, one series per state (1 for the current
        // one), so an alert can wait on `degraded` without parsing JSON.
        for (b, h) in s.bridge_health().await {
            for state in ["ready", "degraded", "off"] {
                metrics::gauge!("switchboard_bridge_state", "bridge" => b.name, "state" => state)
                    .set(if h.state == state { 1.0 } else { 0.0 });
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}
