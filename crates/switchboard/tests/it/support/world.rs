//! The whole outside world of the fault tests: fake Meta, fake Bitrix24 (installed, connector
//! registered and active), fake AstraPBX and a forwarding subscriber, the environment that aims
//! `switchboard` at them, the traffic each bridge takes, and the downstream counts the tests
//! compare with what was acknowledged.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, response::IntoResponse};
use sandbox::{
    bitrix::{BitrixConfig, ChatMessage, FakeBitrix},
    meta::{Customer, FakeMeta, InboundMessage, MetaConfig},
    pbx::FakePbx,
};
use switchboard_core::{Db, Jobs, credentials::generate_master_key};

use super::Subscriber;

pub const WABRIDGES_TOKEN: &str = "fault-hook-token";
pub const ADMIN_TOKEN: &str = "fault-admin-token";
pub const PBX_KEY: &str = "org_fault_tests";
pub const PBX_SECRET: &str = "secret_fault_tests";

pub struct World {
    pub meta: FakeMeta,
    pub bitrix: FakeBitrix,
    pub pbx: FakePbx,
    pub subscriber: Subscriber,
    pub env: Vec<(String, String)>,
    pub database_url: String,
}

impl World {
    /// Starts the fakes. `public_url` is where Bitrix will post events and fetch media: the
    /// process itself, or the round-robin front of several.
    pub async fn start(dir: &Path, database_url: &str, public_url: &str) -> World {
        // Status webhooks after each send would be traffic the test did not count; the reply
        // path is asserted at the fake Meta's send log instead.
        let meta = FakeMeta::start(MetaConfig {
            auto_statuses: false,
            ..MetaConfig::default()
        })
        .await;
        let bitrix = FakeBitrix::start(BitrixConfig::default()).await;
        let pbx = FakePbx::start().await;
        pbx.add_org(PBX_KEY, PBX_SECRET, "FaultTests");
        let (subscriber, sub_url) = Subscriber::default().start().await;
        let config = dir.join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "[[wabridges.forward]]\nurl = \"{sub_url}\"\nsecret = \"whsec_ZmF1bHQtdGVzdHM=\"\n"
            ),
        )
        .unwrap();
        let env = [
            ("DATABASE_URL", database_url.to_string()),
            ("SWITCHBOARD_CONFIG", config.display().to_string()),
            ("SWITCHBOARD_PUBLIC_URL", public_url.to_string()),
            ("SWITCHBOARD_MASTER_KEY", generate_master_key()),
            ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("SWITCHBOARD_WABRIDGES_TOKEN", WABRIDGES_TOKEN.into()),
            ("SWITCHBOARD_PBX_BASE_URL", pbx.url()),
            ("SWITCHBOARD_META_VERIFY_TOKEN", "fault-verify".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(sandbox::harness::fakes_env(&meta, &bitrix))
        .collect();
        World {
            meta,
            bitrix,
            pbx,
            subscriber,
            env,
            database_url: database_url.to_string(),
        }
    }

    /// Installs the Bitrix app through `public_url`, registers and activates the connector
    /// with the real CLI, and points Meta's webhooks at `public_url`.
    pub async fn install(&self, dir: &Path, public_url: &str) {
        let installed = self
            .bitrix
            .install_into(&format!("{public_url}/bitrix/install"))
            .await;
        assert_eq!(installed.status, Some(200), "{}", installed.body);
        for args in [
            ["bitrix", "register-connector"],
            ["bitrix", "activate-connector"],
        ] {
            let out = self.cli(dir, &args).await;
            assert!(
                out.status.success(),
                "switchboard {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.meta
            .set_webhook_target(format!("{public_url}/webhook/whatsapp"));
    }

    /// Runs a CLI command without blocking the runtime that serves the fakes it talks to.
    pub async fn cli(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        super::cli(dir, &self.env, args).await
    }

    /// A signed Meta notification carrying one text message: (wamid, body, signature).
    pub fn meta_inbound(&self, customer: &Customer, text: &str) -> (String, Vec<u8>, String) {
        let sender = self.meta.webhooks();
        let payload = sender
            .payload()
            .message(customer, InboundMessage::text(text));
        let body = payload.to_bytes();
        let signature = sender.sign(&body);
        // Meta knows the customer wrote, whether or not the product acks: the window is open.
        self.meta.set_last_inbound(&customer.wa_id, self.meta.now());
        (payload.wamids().remove(0), body, signature)
    }

    /// Customer messages in the fake Bitrix by wamid (`message.id`), with how often each came.
    /// Each customer writes once; returns when Bitrix shows their messages and one lead each,
    /// so later traffic finds chats (for operator replies) and leads already made.
    pub async fn warm_up(&self, customers: &[Customer]) {
        for c in customers {
            let sent = self
                .meta
                .webhooks()
                .send_inbound(c, InboundMessage::text("hallo"))
                .await
                .unwrap();
            assert_eq!(sent.status, 200);
        }
        super::eventually("warm-up messages and leads in Bitrix", 60, || async {
            self.bitrix_inbound().len() == customers.len()
                && self.bitrix.leads().len() == customers.len()
        })
        .await;
    }

    pub fn bitrix_inbound(&self) -> HashMap<String, usize> {
        let mut by_wamid = HashMap::new();
        for chat in self.bitrix.chats() {
            for m in chat.messages {
                if let ChatMessage::Customer(c) = m {
                    let id = c.external_id.unwrap_or_default();
                    *by_wamid.entry(id).or_default() += 1;
                }
            }
        }
        by_wamid
    }

    /// Texts the fake Meta accepted for sending, with how often each came.
    pub fn meta_sends(&self) -> HashMap<String, usize> {
        let mut by_text = HashMap::new();
        for m in self.meta.sent_messages() {
            let text = m.body["text"]["body"].as_str().unwrap_or("").to_string();
            *by_text.entry(text).or_default() += 1;
        }
        by_text
    }

    /// Click-to-calls the fake PBX placed, by `from` number.
    pub fn pbx_calls(&self) -> HashMap<String, usize> {
        let mut by_from = HashMap::new();
        for c in self.pbx.calls() {
            *by_from.entry(c.from).or_default() += 1;
        }
        by_from
    }

    /// Test-only time travel: makes every job waiting out a retry backoff due now, on the
    /// test's own connection to the product's database (the binary has no such command).
    pub async fn make_retries_due(&self) {
        let db = Db::connect(&self.database_url).await.expect("connect");
        Jobs::new(db.clone())
            .make_due_now()
            .await
            .expect("make jobs due");
        db.close().await;
    }

    /// Test-only time travel for CRM lead claims, as `make_retries_due` is for the queue: a
    /// claim taken before `before_ms` belongs to a process since killed, and is aged past its
    /// 60 s staleness so retries made due early find it stale instead of dead-lettering on it.
    /// Claims taken later belong to live jobs and are left alone.
    pub async fn age_lead_claims_from_before(&self, before_ms: i64) {
        let db = Db::connect(&self.database_url).await.expect("connect");
        switchboard_core::on_pool!(&db, |p| sqlx::query(
            "UPDATE bitrix_leads SET claimed_at = claimed_at - 61000
             WHERE lead_id IS NULL AND claimed_at < $1"
        )
        .bind(before_ms)
        .execute(p)
        .await
        .map(drop))
        .expect("age lead claims");
        db.close().await;
    }

    /// Every job row (newest first, up to 1,000), read from the product's database.
    pub async fn jobs(&self) -> Vec<switchboard_core::jobs::JobRow> {
        let db = Db::connect(&self.database_url).await.expect("connect");
        let rows = Jobs::new(db.clone())
            .list(false, 1000)
            .await
            .expect("list jobs");
        db.close().await;
        rows
    }

    /// Dead letters as (kind, last error), read from the product's database.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let db = Db::connect(&self.database_url).await.expect("connect");
        let rows = Jobs::new(db.clone())
            .list(true, 1000)
            .await
            .expect("list dead letters");
        db.close().await;
        rows.into_iter()
            .map(|r| (r.kind, r.last_error.unwrap_or_default()))
            .collect()
    }
}

/// Sum of counts and number of keys of a count map: (distinct, total).
pub fn distinct_total(m: &HashMap<String, usize>) -> (usize, usize) {
    (m.len(), m.values().sum())
}

/// The MSG91 flow's click-to-call body, with a unique caller so each call can be counted.
pub fn pbx_click_to_call(i: usize) -> serde_json::Value {
    serde_json::json!({
        "api_key": PBX_KEY,
        "api_secret": PBX_SECRET,
        "endpoint": "/api/v1/calls/click-to-call",
        "body": {
            "from": format!("98{i:08}"), "from_type": "external", "to": "5001",
            "to_type": "queue", "caller_id": "08065978002", "timeout": 30
        }
    })
}

pub fn pbx_from(i: usize) -> String {
    format!("98{i:08}")
}

/// A round-robin HTTP front for several `switchboard` processes, as a load balancer would be:
/// each request goes to the next backend, answered with that backend's status and body.
#[derive(Clone)]
pub struct RoundRobin {
    backends: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl RoundRobin {
    pub async fn start(backends: Vec<String>) -> String {
        let rr = RoundRobin {
            backends: Arc::new(backends),
            next: Arc::new(AtomicUsize::new(0)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        let app = Router::new().fallback(forward).with_state(rr);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

async fn forward(
    State(rr): State<RoundRobin>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let i = rr.next.fetch_add(1, Ordering::SeqCst) % rr.backends.len();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = rr
        .http
        .request(method, format!("{}{path}", rr.backends[i]))
        .body(body);
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            let ct = r.headers().get("content-type").cloned();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut resp = (status, bytes).into_response();
            if let Some(ct) = ct {
                resp.headers_mut().insert("content-type", ct);
            }
            resp
        }
        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
    }
}
