//! Fake AstraPBX: the org login that trades `api_key` + `api_secret` for an HS256 JWT, and the
//! Bearer-protected API the PBX bridge forwards to (click-to-call, users, call records).
//!
//! Built for the failures the seed says the bridge must survive: token expiry (24 h by default,
//! configurable down to "already expired"), PBX restarts (every outstanding token turns 401),
//! secret rotations (old secret refused, tokens issued under it 401), spurious 401s, slowness and
//! the PBX being down. Which field carries the token in the login answer is configurable, because
//! SPEC §2 makes the bridge accept `token`, `access_token` and `data.token`.
//!
//! Read `routes.rs` for the HTTP surface; this file is the test-facing handle and the state.

mod jwt;
mod routes;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::Recorder;

/// Where the login answer puts the JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenField {
    /// `{"token": "..."}`
    #[default]
    Token,
    /// `{"access_token": "...", "token_type": "Bearer"}`
    AccessToken,
    /// `{"success": true, "data": {"token": "..."}}`
    DataToken,
}

/// A click-to-call the fake accepted, as the PBX would have dialled it.
#[derive(Debug, Clone, Serialize)]
pub struct PlacedCall {
    pub call_id: String,
    /// `api_key` of the org whose token placed the call.
    #[serde(skip)]
    pub org: String,
    pub from: String,
    pub to: String,
    pub from_type: String,
    pub to_type: String,
    pub caller_id: Option<String>,
    pub timeout: Option<u64>,
    pub status: &'static str,
    pub created_at: u64,
    /// The request body exactly as received, for asserting on fields the fake does not model.
    #[serde(skip)]
    pub body: Value,
}

/// A PBX user (an extension) whose ring target the API can change.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub extension: String,
    pub ring_target: String,
}

/// Handle on a running fake PBX. Dropping it stops the server.
pub struct FakePbx {
    addr: SocketAddr,
    state: Arc<Pbx>,
    recorder: Recorder,
    server: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl FakePbx {
    /// Serves a fresh PBX with no orgs on a random loopback port.
    pub async fn start() -> FakePbx {
        let state = Arc::new(Pbx::default());
        let recorder = Recorder::default();
        let app = routes::router(state.clone(), recorder.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback for the fake PBX");
        let addr = listener.local_addr().expect("bound address");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        // Graceful shutdown rather than `crate::serve`'s abort: aborting leaves keep-alive
        // connections in the bridge's pool answering, so "PBX down" would not look down.
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
        FakePbx {
            addr,
            state,
            recorder,
            server: Mutex::new(Some((stop_tx, task))),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received, login included, with query strings.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Stops listening and closes idle connections, so the next request to `url()` is refused.
    /// A request stuck in `set_delay` gets at most one second before the server is abandoned.
    pub async fn shutdown(&self) {
        let Some((stop, mut task)) = self.server.lock().expect("server lock").take() else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// A loopback URL nothing listens on, for "PBX unreachable" without starting a fake.
    pub fn unreachable_url() -> String {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback for a free port");
        let addr = listener.local_addr().expect("bound address");
        drop(listener);
        format!("http://{addr}")
    }

    /// Creates an org with two users, as AstraPBX's org onboarding does before handing out keys.
    pub fn add_org(&self, api_key: &str, api_secret: &str, name: &str) {
        let users = [("Reception", "1001"), ("Front Office", "1002")]
            .into_iter()
            .map(|(name, ext)| User {
                id: uuid::Uuid::new_v4().to_string(),
                name: name.to_string(),
                extension: ext.to_string(),
                ring_target: "extension".to_string(),
            })
            .collect();
        self.state.lock().orgs.insert(
            api_key.to_string(),
            Org {
                secret: api_secret.to_string(),
                name: name.to_string(),
                secret_generation: 0,
                login_attempts: 0,
                users,
            },
        );
    }

    /// Replaces the org's secret: the old one no longer logs in and tokens issued under it 401.
    pub fn rotate_secret(&self, api_key: &str, new_secret: &str) {
        let mut pbx = self.state.lock();
        let org = pbx
            .orgs
            .get_mut(api_key)
            .expect("rotate_secret: unknown org");
        org.secret = new_secret.to_string();
        org.secret_generation += 1;
    }

    /// Login requests naming `api_key`, accepted or refused.
    pub fn login_count(&self, api_key: &str) -> u64 {
        self.state
            .lock()
            .orgs
            .get(api_key)
            .map_or(0, |o| o.login_attempts)
    }

    pub fn set_token_field(&self, field: TokenField) {
        self.state.lock().token_field = field;
    }

    /// Life of tokens issued from now on; `0` issues tokens that are already expired.
    pub fn set_token_ttl(&self, secs: u64) {
        self.state.lock().token_ttl = secs;
    }

    /// Every token issued so far is treated as past its `exp`; new logins work normally.
    pub fn expire_all_tokens(&self) {
        let mut pbx = self.state.lock();
        pbx.expired_below = pbx.next_seq;
    }

    /// The next `n` API calls answer 401 whatever their token, as a PBX behind a restarting
    /// load balancer does. Login is not affected.
    pub fn force_401_next(&self, n: u32) {
        self.state.lock().force_401 = n;
    }

    /// Simulates a PBX restart: a new signing key and no sessions, so every token issued before
    /// is refused, while orgs, users and call records survive (they live in its database).
    pub fn restart(&self) {
        let mut pbx = self.state.lock();
        pbx.signing_key = rand::random();
        pbx.sessions.clear();
    }

    /// Delay before answering every request, login included (for the bridge's 504 and
    /// single-flight tests).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// Click-to-calls accepted, oldest first.
    pub fn calls(&self) -> Vec<PlacedCall> {
        self.state.lock().calls.clone()
    }

    pub fn users(&self, api_key: &str) -> Vec<User> {
        self.state
            .lock()
            .orgs
            .get(api_key)
            .map(|o| o.users.clone())
            .unwrap_or_default()
    }
}

impl Drop for FakePbx {
    fn drop(&mut self) {
        if let Some((_, task)) = self.server.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Shared by the handle and the handlers. One lock: no handler holds it across an await.
struct Pbx {
    inner: Mutex<PbxState>,
}

struct PbxState {
    signing_key: [u8; 32],
    orgs: HashMap<String, Org>,
    /// Issued tokens by `jti`; a token not in here was issued before a restart.
    sessions: HashMap<String, Session>,
    token_field: TokenField,
    token_ttl: u64,
    /// Issue order of the next token; tokens below `expired_below` count as expired.
    next_seq: u64,
    expired_below: u64,
    force_401: u32,
    delay: Duration,
    calls: Vec<PlacedCall>,
}

struct Org {
    secret: String,
    name: String,
    secret_generation: u64,
    login_attempts: u64,
    users: Vec<User>,
}

struct Session {
    api_key: String,
    secret_generation: u64,
    seq: u64,
}

/// The seed: "tokens expire after 24 hours".
const DEFAULT_TOKEN_TTL: u64 = 24 * 60 * 60;

impl Default for Pbx {
    fn default() -> Self {
        Pbx {
            inner: Mutex::new(PbxState {
                signing_key: rand::random(),
                orgs: HashMap::new(),
                sessions: HashMap::new(),
                token_field: TokenField::default(),
                token_ttl: DEFAULT_TOKEN_TTL,
                next_seq: 0,
                expired_below: 0,
                force_401: 0,
                delay: Duration::ZERO,
                calls: Vec::new(),
            }),
        }
    }
}

impl Pbx {
    fn lock(&self) -> MutexGuard<'_, PbxState> {
        self.inner.lock().expect("fake PBX state lock")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
