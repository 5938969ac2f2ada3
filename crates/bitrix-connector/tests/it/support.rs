//! `TestApp`: the connector's router over a fresh database (SQLite, or PostgreSQL with
//! `SWITCHBOARD_TEST_DATABASE=postgres`), served on a loopback port, with settings aimed at a
//! fake Meta and a fake Bitrix24 portal, plus scenario helpers.
#![allow(dead_code)]

use bitrix_connector::commands;
use sandbox::{
    bitrix::{BitrixConfig, ChatMessage, CustomerMessage, FakeBitrix},
    meta::{FakeMeta, MetaConfig},
};
use switchboard_core::{
    Config, Core, JobRegistry,
    config::Catalogue,
    credentials::generate_master_key,
    inbox::Processors,
    testing::{TestDb, config_with},
};

/// Core's settings and this bridge's.
pub fn catalogue() -> Catalogue {
    Catalogue::new(&[bitrix_connector::catalogue::SETTINGS])
        .with_tables(bitrix_connector::catalogue::TABLES)
}

/// Core's settings and this bridge's, from `pairs` alone.
fn config(pairs: &[(&str, &str)]) -> Config {
    config_with(catalogue(), pairs)
}

pub const VERIFY_TOKEN: &str = "verify-me-please";
pub const ANNA: &str = "4917612345678";
/// The admin token of apps started [`TestApp::start_with_account`].
pub const ADMIN_TOKEN: &str = "admin-token-for-the-template-tests";

pub struct TestApp {
    pub core: Core,
    /// The connector value, built once as the binary builds it.
    pub relay: bitrix_connector::Relay,
    pub meta: FakeMeta,
    pub bitrix: FakeBitrix,
    /// The app's base URL.
    pub url: String,
    pub db: TestDb,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(BitrixConfig::default(), &[]).await
    }

    /// Sets `bitrix.application_token` to the portal's, as an operator would by hand, so events
    /// authenticate without an install.
    pub async fn configure_application_token(&self) {
        self.core
            .settings
            .set(
                bitrix_connector::catalogue::BITRIX_APPLICATION_TOKEN,
                &self.bitrix.config().application_token,
            )
            .await
            .unwrap();
    }

    /// `omit` lists env names to leave unset (to test "not configured").
    pub async fn start_with(bitrix_cfg: BitrixConfig, omit: &[&str]) -> Self {
        Self::start_full(MetaConfig::default(), bitrix_cfg, omit, None, None, &[]).await
    }

    /// Over `db` (say, one an older release left behind, already brought up to date), with a
    /// config file holding `file_toml` when given.
    pub async fn start_on(db: TestDb, meta_cfg: MetaConfig, file_toml: Option<&str>) -> Self {
        Self::start_full(
            meta_cfg,
            BitrixConfig::default(),
            &[],
            file_toml,
            Some(db),
            &[],
        )
        .await
    }

    /// With a config file holding `file_toml` (say, `[[bitrix.templates]]`), loaded the way
    /// the binary loads it, and a fake Meta configured as `meta_cfg`.
    pub async fn start_with_file(meta_cfg: MetaConfig, file_toml: &str) -> Self {
        Self::start_full(
            meta_cfg,
            BitrixConfig::default(),
            &[],
            Some(file_toml),
            None,
            &[],
        )
        .await
    }

    /// With the account's id (so templates sync from `meta_cfg`'s) and an admin token for the
    /// JSON API, plus a config file holding `file_toml` when given.
    pub async fn start_with_account(meta_cfg: MetaConfig, file_toml: Option<&str>) -> Self {
        let waba = meta_cfg.waba_id.clone();
        Self::start_full(
            meta_cfg,
            BitrixConfig::default(),
            &[],
            file_toml,
            None,
            &[
                ("SWITCHBOARD_META_WABA_ID", &waba),
                ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN),
            ],
        )
        .await
    }

    async fn start_full(
        meta_cfg: MetaConfig,
        bitrix_cfg: BitrixConfig,
        omit: &[&str],
        file_toml: Option<&str>,
        db: Option<TestDb>,
        extra: &[(&str, &str)],
    ) -> Self {
        let meta = FakeMeta::start(meta_cfg).await;
        let bitrix = FakeBitrix::start(bitrix_cfg).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mc = meta.config().clone();
        let bc = bitrix.config();
        let key = generate_master_key();
        let pairs: Vec<(&str, String)> = vec![
            ("SWITCHBOARD_PUBLIC_URL", url.clone()),
            ("SWITCHBOARD_MASTER_KEY", key),
            ("SWITCHBOARD_META_GRAPH_URL", meta.url()),
            ("SWITCHBOARD_META_APP_SECRET", mc.app_secret.clone()),
            ("SWITCHBOARD_META_ACCESS_TOKEN", mc.access_token.clone()),
            (
                "SWITCHBOARD_META_PHONE_NUMBER_ID",
                mc.phone_number_id.clone(),
            ),
            ("SWITCHBOARD_META_VERIFY_TOKEN", VERIFY_TOKEN.to_string()),
            ("SWITCHBOARD_BITRIX_PORTAL_URL", bitrix.portal_url()),
            ("SWITCHBOARD_BITRIX_OAUTH_URL", bitrix.oauth_url()),
            ("SWITCHBOARD_BITRIX_CLIENT_ID", bc.client_id.clone()),
            ("SWITCHBOARD_BITRIX_CLIENT_SECRET", bc.client_secret.clone()),
            ("SWITCHBOARD_BITRIX_LINE_ID", bc.line_id.to_string()),
        ];
        let pairs: Vec<(&str, String)> = pairs
            .into_iter()
            .chain(extra.iter().map(|(k, v)| (*k, v.to_string())))
            .collect();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .filter(|(k, _)| !omit.contains(k))
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let config = match file_toml {
            None => config(&pairs),
            Some(toml) => config_with_file(&pairs, toml),
        };
        let db = match db {
            Some(db) => db,
            None => TestDb::new().await,
        };
        let core = db.core(config);
        let relay = bitrix_connector::Relay::new(&core);
        let app = bitrix_connector::router(&relay);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        meta.set_webhook_target(format!("{url}/webhook/whatsapp"));
        Self {
            core,
            relay,
            meta,
            bitrix,
            url,
            db,
            server,
        }
    }

    /// Job handlers and processors as the binary registers them.
    pub fn registry(&self) -> JobRegistry {
        let mut registry = JobRegistry::default();
        let mut processors = Processors::default();
        bitrix_connector::register(&self.relay, &mut registry, &mut processors);
        processors.install(self.core.inbox.clone(), &mut registry);
        registry
    }

    pub async fn install(&self) {
        let out = self
            .bitrix
            .install_into(&format!("{}/bitrix/install", self.url))
            .await;
        assert_eq!(out.status, Some(200), "install answered: {}", out.body);
    }

    pub async fn register_connector(&self) {
        commands::register_connector(&self.relay, false)
            .await
            .expect("register-connector");
    }

    /// Installed, registered and activated on the line: ready to relay.
    pub async fn ready(&self) {
        self.install().await;
        self.register_connector().await;
        let report = commands::activate_connector(&self.relay, None)
            .await
            .expect("activate-connector");
        assert!(report.contains("STATUS:true, CONFIGURED:true"), "{report}");
    }

    /// Meta's side as `/setup`'s buttons do it: the WABA and app ids saved, the app subscribed
    /// to the WABA and the webhook registered (Meta verifies it against this server).
    pub async fn meta_set_up(&self) {
        let mc = self.meta.config().clone();
        for (setting, value) in [
            (bitrix_connector::catalogue::META_WABA_ID, &mc.waba_id),
            (bitrix_connector::catalogue::META_APP_ID, &mc.app_id),
        ] {
            self.core.settings.set(setting, value).await.unwrap();
        }
        let info = bitrix_connector::info(&self.relay);
        for action in ["subscribe-waba", "register-webhook"] {
            info.act(action.to_string(), None)
                .await
                .expect("a known action")
                .unwrap_or_else(|e| panic!("{action}: {e}"));
        }
    }

    pub fn customer_messages(&self, wa_id: &str) -> Vec<CustomerMessage> {
        self.bitrix
            .messages_in_chat(wa_id)
            .into_iter()
            .filter_map(|m| match m {
                ChatMessage::Customer(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// Dead letters' errors, newest first.
    pub async fn dead_letters(&self) -> Vec<String> {
        self.core
            .jobs
            .list(true, 50)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.last_error.unwrap_or_default())
            .collect()
    }

    /// Inbox rows not yet finished, plus queued or running jobs.
    pub async fn idle(&self) -> bool {
        let counts = self.core.inbox.count_by_status().await.unwrap();
        let stats = self.core.jobs.stats().await.unwrap();
        counts.get("received").copied().unwrap_or(0) == 0
            && stats.pending == 0
            && stats.running == 0
    }

    /// POSTs `pairs` form-encoded to `path` (say, `/bitrix/events?x=1`).
    pub async fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// How many times the product called Bitrix's `method`, alone or inside a `batch`.
    pub fn bitrix_calls(&self, method: &str) -> usize {
        self.bitrix
            .recorder()
            .all()
            .iter()
            .map(|r| {
                if r.path.ends_with(&format!("/{method}.json"))
                    || r.path.ends_with(&format!("/{method}"))
                {
                    1
                } else if r.path.ends_with("/batch.json") || r.path.ends_with("/batch") {
                    String::from_utf8_lossy(&r.body)
                        .matches(&format!("{method}?"))
                        .count()
                } else {
                    0
                }
            })
            .sum()
    }

    pub async fn stored_grant(&self) -> Option<bitrix_connector::bitrix::Grant> {
        bitrix_connector::bitrix::oauth::load(&self.core)
            .await
            .unwrap()
    }

    pub async fn post_raw(&self, body: &[u8], signature: Option<String>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(format!("{}/webhook/whatsapp", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        req.send().await.unwrap()
    }
}

/// `Config::from_sources` over a temporary file with `toml` and the env `pairs`.
fn config_with_file(pairs: &[(&str, &str)], toml: &str) -> Config {
    let path = std::env::temp_dir().join(format!(
        "switchboard-bitrix-test-{}.toml",
        rand::random::<u64>()
    ));
    std::fs::write(&path, toml).expect("write the test config file");
    let env = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let loaded = Config::from_sources(catalogue(), Some(path.clone()), &env);
    let _ = std::fs::remove_file(&path);
    loaded.expect("test config file is valid")
}
