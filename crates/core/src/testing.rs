//! Test support: a fresh, migrated database per test on the engine CI asks for.
//!
//! `SWITCHBOARD_TEST_DATABASE=postgres` (CI's second pass) gives each test its own new
//! PostgreSQL database on `SWITCHBOARD_TEST_POSTGRES_URL` (default the machine's local server);
//! anything else gives a temporary SQLite file.

use crate::{
    Config, Core, Db,
    config::{Catalogue, catalogue::DATABASE_URL},
};

pub struct TestDb {
    pub url: String,
    pub db: Db,
    _dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A temp folder removed on drop, without pulling tempfile into core's normal deps.
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn wants_postgres() -> bool {
    std::env::var("SWITCHBOARD_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

pub fn postgres_admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A database URL for a test, on a freshly created, empty database (not migrated).
pub async fn fresh_database_url() -> (String, Option<tempfile_dir::TempDir>) {
    if wants_postgres() {
        let admin = postgres_admin_url();
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(&admin)
            .await
            .expect("SWITCHBOARD_TEST_DATABASE=postgres but PostgreSQL is unreachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("create test database");
        pool.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        (format!("{base}/{name}"), None)
    } else {
        let dir = std::env::temp_dir().join(format!("sb-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}/switchboard.db", dir.display());
        (url, Some(tempfile_dir::TempDir(dir)))
    }
}

impl TestDb {
    pub async fn new() -> Self {
        let (url, dir) = fresh_database_url().await;
        let db = Db::connect(&url).await.expect("connect test database");
        Core::migrate(&db).await.expect("migrate test database");
        Self { url, db, _dir: dir }
    }

    /// A fresh database with Switchboard's own migrations applied up to `version` only, as an
    /// older release left it; `Core::migrate` then brings it up to date as start-up does.
    pub async fn at_version(version: i64) -> Self {
        let (url, dir) = fresh_database_url().await;
        let db = Db::connect(&url).await.expect("connect test database");
        db.migrate_own_tables_to(version)
            .await
            .expect("migrate test database part way");
        Self { url, db, _dir: dir }
    }

    /// A `Core` over this database with `config` (its database URL is replaced).
    pub fn core(&self, mut config: Config) -> Core {
        config
            .set(DATABASE_URL, &self.url)
            .expect("test database url is valid");
        crate::metrics::install();
        Core::with_db(config, self.db.clone())
    }
}

/// A configuration of core's own settings built only from `pairs` (no process environment,
/// no file).
pub fn config(pairs: &[(&str, &str)]) -> Config {
    config_with(Catalogue::core_only(), pairs)
}

/// [`config`] against `catalogue`, for tests that set a bridge's settings.
pub fn config_with(catalogue: Catalogue, pairs: &[(&str, &str)]) -> Config {
    let env = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_sources(catalogue, None, &env).expect("test configuration is valid")
}

/// Runs `body` while this process's job workers and inbox dispatcher run, then stops them and
/// lets in-flight jobs finish. (apalis' worker future can't be `tokio::spawn`ed from generic
/// code, so tests run it beside their body instead.)
pub async fn with_workers<B: Future<Output = ()>>(
    core: &Core,
    registry: crate::JobRegistry,
    body: B,
) {
    let dispatcher = crate::inbox::spawn_dispatcher(core.inbox.clone(), core.jobs.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let workers = crate::jobs::run_workers(core.jobs.clone(), registry, 4, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(workers);
    tokio::select! {
        _ = &mut workers => panic!("workers stopped early"),
        _ = body => {}
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), workers).await;
    dispatcher.abort();
}
