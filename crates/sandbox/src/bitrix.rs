//! Fake Bitrix24 portal plus its OAuth server (`shared/protocols/bitrix24-open-channels.md`).
//!
//! One loopback server plays both `https://<portal>/` (REST under `/rest/`, signed file links)
//! and `https://oauth.bitrix.info/` (`/oauth/token/`), so `portal_url()` and `oauth_url()` are
//! the same origin. It keeps real state — rotating tokens, registered connectors and their line
//! status, Open Lines chats with customer, operator and system messages, CRM leads, event
//! bindings — and behaves like the portal where products usually go wrong: nested `result` on
//! register, `NOT_ACTIVE_LINE` before activation, `expired_token` vs `invalid_token`, PHP `[]`
//! for empty results, form-encoded events sent once and never retried, files fetched by the
//! portal itself without credentials, a leaky-bucket rate limit.
//!
//! `batch` is served as the portal serves it: up to 50 `"method?query"` commands run in order
//! under one admission (one unit of the rate limit, one token check, one outage check), each
//! command otherwise exactly the call it names, answered in `result`/`result_error`/
//! `result_total`/`result_next`/`result_time` with PHP's `[]` for empty maps, `halt`, and
//! `$result[key][FIELD]` references to earlier scalar results. `batch.rs` lists what is not
//! served; those cases fail loudly instead of passing.
//!
//! `pages.rs` is what a person clicks in the sandbox: the local application's install and the
//! Open Channels with their chats.
//!
//! Read `rest.rs` (dispatch, auth, limits), then `batch.rs`, `connector.rs` and `inbound.rs`.

mod batch;
mod connector;
mod crm;
mod events;
mod files;
mod inbound;
mod install;
mod oauth;
pub mod pages;
mod php;
mod rest;
mod state;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::{
    Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{any, get},
};

use crate::{Recorder, Served};

pub use events::OperatorReply;
pub use install::{InstallOutcome, UiInstallOutcome};
pub use state::{
    BoundEvent, Chat, ChatMessage, Connector, ConnectorStatus, CustomerFile, CustomerMessage,
    Delivery, FileKind, Grant, Lead, OperatorMessage, StoredFile, SystemNote,
};

/// Portal and app identity plus knobs. Defaults are test values shaped like real ones.
#[derive(Debug, Clone)]
pub struct BitrixConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Stable portal id, sent in every grant and event.
    pub member_id: String,
    /// Constant per install; events carry it as `auth[application_token]`.
    pub application_token: String,
    /// The Open Channel that exists on the portal.
    pub line_id: i64,
    /// Further existing Open Channels.
    pub extra_lines: Vec<i64>,
    pub access_ttl_secs: i64,
    /// Scopes granted to the app; REST methods outside them answer `insufficient_scope`.
    pub scope: String,
    /// Leaky bucket: requests drained per second and how many may queue before 503.
    pub rate_drain_per_sec: f64,
    pub rate_capacity: f64,
    /// Whether the app counts as installed before any `install_*` call (events flow only then).
    pub preinstalled: bool,
    /// Bitrix user id of the operator who answers in `operator_reply`.
    pub operator_user_id: u64,
    /// Users with portal administrator rights (`user.admin` answers `true` for them). The
    /// install is made by user 1.
    pub admin_user_ids: Vec<u64>,
    /// Operator name prefixed as `[b]Name:[/b][br] ` when the connector has NEED_SIGNATURE on.
    pub operator_signature: Option<String>,
    /// Line setting CRM_CREATE=lead: Open Lines creates a lead itself for a new customer.
    pub openlines_creates_leads: bool,
    /// How long the event sender waits for a handler before giving up (no retry either way).
    pub event_timeout: Duration,
}

impl Default for BitrixConfig {
    fn default() -> Self {
        BitrixConfig {
            client_id: "local.6650d1a2b3c4d5.12345678".into(),
            client_secret: "Yq9wP3sTf0Lr7Kx2Vb8Nm4Hc6Jd1Zg5Ae0Ru3Ti".into(),
            member_id: "5f1d4c0a9e8b7a6c5d4e3f2a1b0c9d8e".into(),
            application_token: "c2f7e1d9a4b8c3e6f0a1b2c3d4e5f6a7".into(),
            line_id: 3,
            extra_lines: Vec::new(),
            access_ttl_secs: 3600,
            scope: "crm,imconnector,imopenlines,im".into(),
            rate_drain_per_sec: 1000.0,
            rate_capacity: 10_000.0,
            preinstalled: true,
            operator_user_id: 12,
            admin_user_ids: vec![1],
            operator_signature: None,
            openlines_creates_leads: false,
            event_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the fake lives, known only once it is bound.
pub(crate) struct Urls {
    pub base: String,
    pub host: String,
}

impl Urls {
    pub fn client_endpoint(&self) -> String {
        format!("{}/rest/", self.base)
    }
    pub fn server_endpoint(&self) -> String {
        format!("{}/rest/", self.base)
    }
}

#[derive(Clone)]
pub(crate) struct Shared {
    portal: Arc<Mutex<state::Portal>>,
    urls: Arc<OnceLock<Urls>>,
    /// Outbound client: no default headers, so file fetches carry no credentials (as Bitrix).
    http: reqwest::Client,
}

impl Shared {
    pub fn portal(&self) -> MutexGuard<'_, state::Portal> {
        self.portal.lock().expect("bitrix portal lock")
    }
    pub fn urls(&self) -> &Urls {
        self.urls
            .get()
            .expect("urls are set before serving requests")
    }
}

/// What an unreachable portal looks like from outside: a proxy's 503 page, not JSON.
pub(crate) fn outage() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "text/html")],
        "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
    )
        .into_response()
}

pub struct FakeBitrix {
    shared: Shared,
    recorder: Recorder,
    served: Served,
}

impl FakeBitrix {
    /// Starts the portal with one live grant (see `current_tokens`) and no connector yet.
    pub async fn start(cfg: BitrixConfig) -> FakeBitrix {
        let shared = Shared {
            portal: Arc::new(Mutex::new(state::Portal::new(cfg))),
            urls: Arc::new(OnceLock::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
        };
        let recorder = Recorder::default();
        let app = Router::new()
            .route("/oauth/token/", any(oauth::issue_token))
            .route("/oauth/token", any(oauth::issue_token))
            .route("/rest/{method}", any(rest::call_method))
            .route("/pub/im.file.php", get(files::serve_signed))
            .route(
                pages::LOCAL_APP_PATH,
                get(pages::local_app).post(pages::install),
            )
            .route(pages::OPEN_LINES_PATH, get(pages::open_lines))
            // Short links are `/~<code>`: not a whole-segment route parameter.
            .fallback(files::short_link)
            .with_state(shared.clone())
            .layer(axum::middleware::from_fn_with_state(
                recorder.clone(),
                crate::recorder::record,
            ));
        let served = crate::serve(app).await;
        let _ = shared.urls.set(Urls {
            base: served.url(),
            host: served.addr.to_string(),
        });
        {
            let mut portal = shared.portal();
            oauth::mint_grant(&mut portal, 1);
        }
        FakeBitrix {
            shared,
            recorder,
            served,
        }
    }

    /// The portal origin (`https://acme.bitrix24.com` in production); REST is under `/rest/`.
    pub fn portal_url(&self) -> String {
        self.served.url()
    }

    /// The OAuth server origin (`https://oauth.bitrix.info`); tokens at `/oauth/token/`.
    pub fn oauth_url(&self) -> String {
        self.served.url()
    }

    /// `client_endpoint` of every grant: `<portal>/rest/`.
    pub fn client_endpoint(&self) -> String {
        self.shared.urls().client_endpoint()
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub fn config(&self) -> BitrixConfig {
        self.shared.portal().cfg.clone()
    }

    /// The newest grant the OAuth server issued and not yet revoked.
    pub fn current_tokens(&self) -> Option<Grant> {
        self.shared.portal().current.clone()
    }

    /// The tokens Bitrix hands `user_id`'s browser when that user opens the app (the frame's
    /// `AUTH_ID`/`REFRESH_ID`): valid for REST and refreshable, but the app's own grant
    /// (`current_tokens`) stays what it was.
    pub fn user_grant(&self, user_id: u64) -> Grant {
        oauth::mint_pair(&mut self.shared.portal(), user_id)
    }

    /// A code for `grant_type=authorization_code`, valid 30 s of fake time.
    pub fn issue_authorization_code(&self) -> String {
        let mut portal = self.shared.portal();
        let code = state::random_hex(16);
        let now = portal.now();
        portal.auth_codes.insert(code.clone(), (now, false));
        code
    }

    /// Moves the portal's clock (token expiry, event `ts`) forward.
    pub fn advance_clock(&self, secs: i64) {
        self.shared.portal().clock_offset += secs;
    }

    /// Every access token issued so far is now past its lifetime: calls get `expired_token`.
    pub fn expire_access_tokens(&self) {
        let mut portal = self.shared.portal();
        let now = portal.now();
        for t in portal.access.values_mut() {
            t.expires_at = t.expires_at.min(now);
        }
    }

    /// Every refresh token dies (`invalid_grant`), as after 180 days or an uninstall.
    pub fn revoke_refresh_tokens(&self) {
        let mut portal = self.shared.portal();
        for s in portal.refresh.values_mut() {
            *s = state::RefreshState::Revoked;
        }
    }

    /// Every token becomes unknown to the portal (`invalid_token`), as after a re-install.
    pub fn revoke_all_tokens(&self) {
        oauth::revoke_all(&mut self.shared.portal());
    }

    /// While down, every request (REST, OAuth, files) gets a non-JSON 503.
    pub fn set_down(&self, down: bool) {
        self.shared.portal().down = down;
    }

    /// The next `count` calls of `method` (e.g. `imconnector.send.messages`) fail with
    /// `{"error": code}` and `http_status`, before auth and rate limiting are looked at. A
    /// command of that method inside a `batch` meets the failure when its turn comes, as its
    /// `result_error` entry; `fail_next("batch", …)` fails whole batch requests.
    pub fn fail_next(&self, method: &str, code: &str, http_status: u16, count: u32) {
        self.shared
            .portal()
            .inject
            .entry(rest::normalize_method(method))
            .or_default()
            .push(state::Injected {
                code: code.into(),
                status: http_status,
                remaining: count,
            });
    }

    /// Every later call of `method` waits a random time between `min` and `max` before the
    /// portal acts on it, as a busy portal does; concurrent calls then finish in any order. Inside
    /// a `batch` each such command waits its turn, one after the other.
    pub fn set_latency(&self, method: &str, min: Duration, max: Duration) {
        self.shared
            .portal()
            .latency
            .insert(rest::normalize_method(method), (min, max));
    }

    /// Customer message ids inside an `imconnector.send.messages` call being answered now.
    pub fn sending_now(&self) -> Vec<String> {
        self.shared.portal().sending.keys().cloned().collect()
    }

    /// Customer message ids that were inside two `imconnector.send.messages` calls at the same
    /// moment: one message sent twice at once. A call whose client gave up stops counting.
    pub fn overlapping_sends(&self) -> Vec<String> {
        self.shared.portal().overlapping.clone()
    }

    pub fn set_rate_limit(&self, drain_per_sec: f64, capacity: f64) {
        let mut portal = self.shared.portal();
        portal.bucket.drain_per_sec = drain_per_sec;
        portal.bucket.capacity = capacity;
        portal.bucket.level = 0.0;
    }

    /// The cloud's non-Enterprise limits: 2 req/s drain, 50 queued.
    pub fn strict_rate_limit(&self) {
        self.set_rate_limit(2.0, 50.0);
    }

    /// How many requests the rate limit has refused with 503 `QUERY_LIMIT_EXCEEDED` (failures
    /// queued with `fail_next` not included).
    pub fn limit_refusals(&self) -> u64 {
        self.shared.portal().limit_refusals
    }

    /// `(requests, commands)`: how many `batch` requests got past the rate limit and token
    /// check, and how many `cmd` entries they carried in all.
    pub fn batches(&self) -> (u64, u64) {
        let portal = self.shared.portal();
        (portal.batch_requests, portal.batch_commands)
    }

    pub fn add_line(&self, line: i64) {
        self.shared.portal().cfg.extra_lines.push(line);
    }

    pub fn installed(&self) -> bool {
        self.shared.portal().installed
    }

    pub fn connectors(&self) -> Vec<Connector> {
        self.shared.portal().connectors.values().cloned().collect()
    }

    pub fn connector_status(&self, connector: &str, line: i64) -> Option<ConnectorStatus> {
        self.shared
            .portal()
            .statuses
            .get(&(connector.to_lowercase(), line))
            .cloned()
    }

    pub fn chats(&self) -> Vec<Chat> {
        self.shared.portal().chats.clone()
    }

    /// The dialog whose external `chat.id` is `external_chat_id`.
    pub fn chat(&self, external_chat_id: &str) -> Option<Chat> {
        self.shared
            .portal()
            .chats
            .iter()
            .find(|c| c.external_chat_id == external_chat_id)
            .cloned()
    }

    /// The dialog of `external_chat_id` on Open Channel `line`.
    pub fn chat_on(&self, line: i64, external_chat_id: &str) -> Option<Chat> {
        self.shared
            .portal()
            .chats
            .iter()
            .find(|c| c.external_chat_id == external_chat_id && c.line == line)
            .cloned()
    }

    pub fn messages_in_chat(&self, external_chat_id: &str) -> Vec<ChatMessage> {
        self.chat(external_chat_id)
            .map(|c| c.messages)
            .unwrap_or_default()
    }

    pub fn leads(&self) -> Vec<Lead> {
        self.shared.portal().leads.clone()
    }

    pub fn bound_events(&self) -> Vec<BoundEvent> {
        self.shared.portal().events.clone()
    }

    /// Every event delivery attempt, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.portal().deliveries.clone()
    }

    /// An operator answers in the dialog of `external_chat_id`: the message is stored and
    /// `OnImConnectorMessageAdd` goes once to every bound handler (protocol §5.2).
    pub async fn operator_reply(
        &self,
        external_chat_id: &str,
        text_bbcode: &str,
        files: Vec<OperatorFile>,
    ) -> OperatorReply {
        events::operator_reply(&self.shared, None, external_chat_id, text_bbcode, files).await
    }

    /// [`FakeBitrix::operator_reply`] in the dialog of `external_chat_id` on Open Channel
    /// `line`: a customer who wrote to two numbers has a dialog on each of their lines.
    pub async fn operator_reply_on(
        &self,
        line: i64,
        external_chat_id: &str,
        text_bbcode: &str,
        files: Vec<OperatorFile>,
    ) -> OperatorReply {
        events::operator_reply(
            &self.shared,
            Some(line),
            external_chat_id,
            text_bbcode,
            files,
        )
        .await
    }

    /// The operator edits a reply already relayed: `OnImConnectorMessageUpdate` goes to every
    /// bound handler.
    pub async fn operator_edit(&self, bitrix_message_id: u64, new_text: &str) -> Vec<Delivery> {
        events::operator_change(&self.shared, bitrix_message_id, Some(new_text)).await
    }

    /// The operator deletes a reply already relayed: `OnImConnectorMessageDelete`.
    pub async fn operator_delete(&self, bitrix_message_id: u64) -> Vec<Delivery> {
        events::operator_change(&self.shared, bitrix_message_id, None).await
    }

    /// An administrator deletes Open Channel `line`: `OnImConnectorLineDelete`.
    pub async fn delete_line(&self, line: i64) -> Vec<Delivery> {
        events::line_deleted(&self.shared, line).await
    }

    /// An administrator disconnects `connector` from `line`: `OnImConnectorStatusDelete`.
    pub async fn disable_connector(&self, connector: &str, line: i64) -> Vec<Delivery> {
        events::connector_disabled(&self.shared, connector, line).await
    }

    /// A link on the portal, shaped like a file's short link, that answers 302 to `location`:
    /// stands for any redirect a portal can be made to serve (an open redirect, a proxy rule),
    /// so a test can check what the product does with where a portal link leads.
    pub fn redirecting_link(&self, location: &str) -> String {
        let mut portal = self.shared.portal();
        let code = format!("r{}", portal.next("redirect"));
        portal.redirects.insert(code.clone(), location.to_string());
        format!("{}/~{code}", self.shared.urls().base)
    }

    /// Script-only install: POSTs `ONAPPINSTALL` with a fresh grant to `install_url`.
    pub async fn install_into(&self, install_url: &str) -> InstallOutcome {
        install::script_only(&self.shared, install_url).await
    }

    /// Install with UI: POSTs the iframe fields; installed only if the page calls
    /// `BX24.installFinish()` and may be framed.
    pub async fn install_ui_into(&self, install_url: &str) -> UiInstallOutcome {
        install::with_ui(&self.shared, install_url).await
    }

    /// `ONAPPUNINSTALL` to `handler_url` (no tokens in it); the portal forgets the app.
    pub async fn uninstall_from(&self, handler_url: &str) -> Option<u16> {
        install::uninstall(&self.shared, handler_url).await
    }
}

/// A file the operator attaches to a reply.
#[derive(Debug, Clone)]
pub struct OperatorFile {
    pub name: String,
    pub kind: FileKind,
    pub bytes: Vec<u8>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

impl OperatorFile {
    pub fn document(name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        OperatorFile {
            name: name.into(),
            kind: FileKind::File,
            bytes: bytes.into(),
            width: None,
            height: None,
        }
    }

    pub fn image(name: &str, bytes: impl Into<Vec<u8>>, width: u32, height: u32) -> Self {
        OperatorFile {
            name: name.into(),
            kind: FileKind::Image,
            bytes: bytes.into(),
            width: Some(width),
            height: Some(height),
        }
    }
}
