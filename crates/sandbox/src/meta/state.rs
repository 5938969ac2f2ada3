//! What the fake Meta remembers between requests: the current token, every accepted send, media,
//! which inbound messages it delivered (mark-read only works on those) and when each customer
//! last wrote (the 24-hour window, protocol §6). One mutex, never held across an await.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde_json::Value;

use super::{MetaConfig, Template};

/// Wall clock plus a test-controlled offset, so window and URL-expiry tests need no sleeping.
#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64;
        (real + self.offset_secs.load(Ordering::SeqCst)).max(0) as u64
    }

    pub fn advance(&self, by: Duration) {
        self.offset_secs
            .fetch_add(by.as_secs() as i64, Ordering::SeqCst);
    }
}

/// A `/messages` body the fake accepted.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// The `wamid.` the fake answered with; statuses for this send carry it.
    pub wamid: String,
    /// Recipient as a bare wa_id (digits), derived from `to` like Meta's `contacts[].wa_id`.
    pub wa_id: String,
    /// The `type` of the send (`text`, `template`, …).
    pub kind: String,
    /// The request body exactly as parsed.
    pub body: Value,
    /// The Graph version segment of the request path.
    pub graph_version: String,
    /// The business number it was sent from (`/{phone_number_id}/messages`).
    pub from_phone_number_id: String,
}

/// Where a media object came from: uploaded by the product, or "sent" by a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaOrigin {
    Uploaded,
    Inbound,
}

#[derive(Debug, Clone)]
pub struct StoredMedia {
    pub id: String,
    pub mime_type: String,
    /// Lowercase hex SHA-256 of `bytes`, as Meta reports it.
    pub sha256: String,
    pub bytes: Bytes,
    /// Name of the uploaded file part, when the product gave one.
    pub filename: Option<String>,
    pub origin: MediaOrigin,
}

/// One webhook POST the fake made on its own (status notifications after a send).
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub body: Value,
    /// Attempts made, including the one that succeeded.
    pub attempts: usize,
    /// The product answered 200 before the fake gave up.
    pub acked: bool,
}

#[derive(Debug, Default)]
pub struct State {
    pub access_token: String,
    /// Tokens replaced by `set_access_token`: presenting one is "expired" (subcode 463), not
    /// "cannot parse".
    pub retired_tokens: Vec<String>,
    pub sent: Vec<SentMessage>,
    pub marked_read: Vec<String>,
    /// In upload order, so `uploaded_media()` lists them as the product sent them.
    pub media: Vec<StoredMedia>,
    /// Inbound wamid → sender wa_id, for every message delivered through the webhook sender.
    pub inbound: HashMap<String, String>,
    /// (business number, wa_id) → Unix seconds of that customer's newest inbound message to
    /// that number: each number has its own 24-hour windows.
    pub last_inbound: HashMap<(String, String), u64>,
    pub sync_failures: VecDeque<u32>,
    /// Send attempts so far (refused ones included), and failures due at a given attempt.
    pub send_attempts: usize,
    pub failures_at_attempt: HashMap<usize, u32>,
    pub async_failures: VecDeque<u32>,
    pub webhook_target: Option<String>,
    /// The app's webhooks, as `POST /{app-id}/subscriptions` saved them.
    pub app_subscriptions: Vec<super::subscriptions::AppSubscription>,
    pub auto_statuses: bool,
    pub subscribed: bool,
    pub graph_versions: Vec<String>,
    pub webhook_log: Vec<WebhookDelivery>,
    /// The account's templates as they stand now (a template may be paused after a sync).
    pub templates: Vec<Template>,
    /// The most templates one `message_templates` page holds, whatever `limit` asks.
    pub templates_page_size: usize,
}

/// Everything handlers and the webhook sender share.
#[derive(Debug)]
pub struct Shared {
    pub cfg: MetaConfig,
    pub clock: Clock,
    pub http: reqwest::Client,
    /// Signs lookaside URLs so an expired or edited URL cannot be replayed.
    pub lookaside_key: [u8; 32],
    /// The fake's own base URL, known only once it is bound.
    pub base_url: OnceLock<String>,
    state: Mutex<State>,
}

impl Shared {
    pub fn new(cfg: MetaConfig) -> Arc<Self> {
        let state = State {
            access_token: cfg.access_token.clone(),
            auto_statuses: cfg.auto_statuses,
            subscribed: cfg.subscribed,
            templates: cfg.templates.clone(),
            templates_page_size: 100,
            ..State::default()
        };
        Arc::new(Self {
            cfg,
            clock: Clock::default(),
            http: reqwest::Client::builder()
                // Meta refuses to follow redirects when fetching `link` media (protocol §3).
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client"),
            lookaside_key: rand::random(),
            base_url: OnceLock::new(),
            state: Mutex::new(state),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("meta state lock")
    }

    pub fn base_url(&self) -> &str {
        self.base_url.get().map(String::as_str).unwrap_or("")
    }
}
