//! Switchboard core: everything the three bridges share and nothing specific to any of them —
//! configuration, the database and its migrations, the webhook inbox/audit log with dedupe,
//! the durable job queue, the encrypted credential store, metrics, tracing, the JSON error
//! shape and the operations surface (`/health`, `/metrics` and the operator pages).
//!
//! Must not name a bridge, a bridge's route or a bridge's payload: bridges describe themselves
//! to core through [`ops::BridgeInfo`] and register their work through [`jobs::JobRegistry`]
//! and [`inbox::Processors`].
//!
//! Start with [`Core`], then follow an event through the pipeline: `inbox/` stores it
//! ([`Inbox::record`], one group-commit writer per engine), `inbox/dispatch.rs` hands stored
//! rows to the job queue, `inbox/process.rs` runs them through the bridge's processor. `jobs/`
//! is the queue: job types and the retry schedule (`mod.rs`), the push side and admin view
//! (`queue.rs`), the worker runtime with its leases (`worker.rs`), and every statement on
//! apalis' tables (`apalis_sql.rs`). [`Core::migrate`] runs our migrations, then apalis'.

pub mod client_addr;
pub mod config;
pub mod credentials;
pub mod db;
pub mod http;
pub mod inbox;
pub mod jobs;
pub mod metrics;
pub mod ops;
pub mod scheduler;
pub mod secret;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::Arc;

pub use config::Config;
pub use credentials::SettingsResolver;
pub use db::Db;
pub use inbox::{Inbox, Incoming, Recorded, Status};
pub use jobs::{JobContext, JobError, JobKind, JobRegistry, Jobs};
pub use secret::Secret;

/// The shared handle every bridge receives: one reference count to clone, as every request's
/// handler state does.
#[derive(Clone)]
pub struct Core(Arc<CoreParts>);

impl std::ops::Deref for Core {
    type Target = CoreParts;

    fn deref(&self) -> &CoreParts {
        &self.0
    }
}

pub struct CoreParts {
    pub config: Arc<Config>,
    pub db: Db,
    pub inbox: Inbox,
    pub jobs: Jobs,
    pub settings: SettingsResolver,
    /// One HTTP client for all outbound calls (connection reuse across bridges).
    pub http: reqwest::Client,
    /// Each bridge's last outside call from this process, for `/health`.
    pub calls: ops::OutsideCalls,
    pub started_at: std::time::Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("job queue migrations: {0}")]
    QueueMigrate(String),
}

impl Core {
    /// Connects, migrates and starts the inbox writer. Workers are started separately
    /// ([`jobs::run_workers`]) so `serve --no-workers` can leave them out.
    pub async fn start(config: Config) -> Result<Self, CoreError> {
        crate::metrics::install();
        let db = Db::connect(config.database_url()).await?;
        Self::migrate(&db).await?;
        Ok(Self::with_db(config, db))
    }

    /// Brings `db` up to date: Switchboard's tables first, then apalis' job queue tables.
    pub async fn migrate(db: &Db) -> Result<(), CoreError> {
        db.migrate_own_tables().await?;
        jobs::migrate(db)
            .await
            .map_err(|e| CoreError::QueueMigrate(e.to_string()))
    }

    pub fn with_db(config: Config, db: Db) -> Self {
        let config = Arc::new(config);
        let jobs = Jobs::new(db.clone());
        Self(Arc::new(CoreParts {
            inbox: Inbox::start(db.clone()),
            jobs,
            settings: SettingsResolver::new(db.clone(), config.clone()),
            http: http_client(),
            calls: ops::OutsideCalls::default(),
            config,
            db,
            started_at: std::time::Instant::now(),
        }))
    }
}

/// Outbound HTTP client: bounded connect time, a product user agent, rustls.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("static reqwest client configuration")
}
