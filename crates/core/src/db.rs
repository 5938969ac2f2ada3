//! Database access for both engines: SQLite (embedded default) and PostgreSQL (scale-out).
//!
//! Queries are written once, with `$1` placeholders that both engines accept, and run through
//! [`on_pool!`], which expands the same code for each concrete pool. Only portable types cross
//! the boundary (i64, String, Vec<u8>, Option); times are Unix milliseconds.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either engine.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

/// An open transaction's connection, of either engine: for writes a caller adds to a
/// transaction that someone else begins and commits.
pub enum Tx<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

/// Runs `$body` with `$conn` bound to the concrete connection of a [`Tx`], as [`on_pool!`]
/// does for a pool.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite($conn) => $body,
            $crate::db::Tx::Postgres($conn) => $body,
        }
    };
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Held by [`Db::lock_across_processes`].
#[must_use = "the lock is released when this is dropped"]
pub struct ProcessLock {
    held: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
}

impl ProcessLock {
    /// Releases the lock now. Dropping also releases it, once the pool runs the rollback.
    pub async fn release(self) {
        if let Some(tx) = self.held {
            // Ending the transaction ends the lock; if this fails, the connection is broken
            // and the server drops the lock with it.
            let _ = tx.commit().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("creating the folder for {0}: {1}")]
    Folder(String, std::io::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "this database is PostgreSQL: back it up with its own tools (pg_dump, or your provider's snapshots)"
    )]
    Postgres,
    #[error("{0} exists already; choose a new file name")]
    Exists(String),
    #[error("{0} is not a usable file name")]
    Path(String),
    #[error("writing the backup to {0}: {1}")]
    Write(String, #[source] sqlx::Error),
}

/// Our migrations. On SQLite the job queue's migrations share the `_sqlx_migrations` table, so
/// each migrator must ignore the other's versions instead of calling them "missing".
fn migrator(engine: &Db) -> sqlx::migrate::Migrator {
    let mut m = match engine {
        Db::Sqlite(_) => sqlx::migrate!("../../migrations/sqlite"),
        Db::Postgres(_) => sqlx::migrate!("../../migrations/postgres"),
    };
    m.set_ignore_missing(true);
    m
}

impl Db {
    /// Opens the database named by `url`, creating an SQLite file (and its folder) on first run.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Self::open(url, true).await
    }

    /// Opens the database named by `url` as it is: no SQLite file is created (commands that
    /// only read it, such as a backup, must not leave an empty database behind a typo).
    pub async fn connect_existing(url: &str) -> Result<Self, DbError> {
        Self::open(url, false).await
    }

    async fn open(url: &str, create: bool) -> Result<Self, DbError> {
        let redacted = redact_url(url);
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|source| DbError::Connect {
                    url: redacted.clone(),
                    source,
                })?
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an acknowledged webhook survives power loss, not just a process crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            if let Some(parent) = Path::new(opts.get_filename()).parent()
                && !parent.as_os_str().is_empty()
                && create
            {
                std::fs::create_dir_all(parent)
                    .map_err(|e| DbError::Folder(redacted.clone(), e))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(opts)
                .await
                .map_err(|source| DbError::Connect {
                    url: redacted,
                    source,
                })?;
            Ok(Db::Sqlite(pool))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|source| DbError::Connect {
                    url: redacted,
                    source,
                })?;
            Ok(Db::Postgres(pool))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Applies Switchboard's own migrations only: the job queue's tables are apalis', migrated
    /// after these by [`crate::Core::migrate`].
    pub async fn migrate_own_tables(&self) -> Result<(), DbError> {
        let ours = migrator(self);
        match self {
            Db::Sqlite(p) => ours.run(p).await?,
            Db::Postgres(p) => ours.run(p).await?,
        }
        Ok(())
    }

    /// Applies Switchboard's own migrations up to `version` only: the schema an older release
    /// left behind, for tests of what the later migrations do to its rows.
    pub async fn migrate_own_tables_to(&self, version: i64) -> Result<(), DbError> {
        let ours = migrator(self);
        match self {
            Db::Sqlite(p) => ours.run_to(version, p).await?,
            Db::Postgres(p) => ours.run_to(version, p).await?,
        }
        Ok(())
    }

    /// Waits until no other process on this database holds the lock `name`, then holds it until
    /// [`ProcessLock::release`] (or drop). For work that must not run twice at once across
    /// processes, such as redeeming a refresh token that the other side rotates on use.
    ///
    /// On PostgreSQL it is a transaction-scoped advisory lock, so a crashed holder's lock goes
    /// with its connection. On SQLite it holds nothing: an SQLite deployment is one machine,
    /// where callers keep their in-process lock and must cope with the rare second process.
    pub async fn lock_across_processes(&self, name: &str) -> Result<ProcessLock, sqlx::Error> {
        match self {
            Db::Sqlite(_) => Ok(ProcessLock { held: None }),
            Db::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                Ok(ProcessLock { held: Some(tx) })
            }
        }
    }

    /// Writes a consistent copy of the whole SQLite database to a new file at `to`, while
    /// the product keeps running: a read transaction of its own (WAL: writers go on), so every
    /// write committed before it began is in the copy. The file must not exist yet. PostgreSQL
    /// has its own tools for this ([`BackupError::Postgres`]).
    pub async fn backup_into(&self, to: &Path) -> Result<u64, BackupError> {
        let Db::Sqlite(pool) = self else {
            return Err(BackupError::Postgres);
        };
        if to.exists() {
            return Err(BackupError::Exists(to.display().to_string()));
        }
        let target = to
            .to_str()
            .ok_or_else(|| BackupError::Path(to.display().to_string()))?;
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(pool)
            .await
            .map_err(|e| BackupError::Write(target.to_string(), e))?;
        Ok(std::fs::metadata(to).map(|m| m.len()).unwrap_or(0))
    }

    /// Cheap liveness probe for `/health`.
    pub async fn ping(&self) -> bool {
        on_pool!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .is_ok()
    }

    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }

    pub fn is_closed(&self) -> bool {
        on_pool!(self, |p| p.is_closed())
    }
}

/// The URL with its credentials masked, for errors, logs and everywhere settings are shown:
/// the password of `scheme://user:password@host` and the value of any credential-looking
/// query parameter (`?password=…`, `?token=…`). Text that is not a URL comes back unchanged.
pub fn redact_url(url: &str) -> String {
    use crate::{ops::redact::is_sensitive_key, secret::MASK};
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    // The user info ends at the last `@`: a password may hold `/`, `?` or `@` unencoded, and
    // masking too much (an `@` later in the path) is the safe mistake.
    let mut out = String::with_capacity(url.len() + MASK.len());
    let mut rest = url;
    if let Some(at) = url[scheme_end..].rfind('@').map(|i| scheme_end + i)
        && let Some(colon) = url[scheme_end..at].find(':').map(|i| scheme_end + i)
    {
        out.push_str(&url[..=colon]);
        out.push_str(MASK);
        rest = &url[at..];
    }
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    out.push_str(&rest[..query_start]);
    let rest = &rest[query_start..];
    let Some(query) = rest.strip_prefix('?') else {
        out.push_str(rest);
        return out;
    };
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    out.push('?');
    for (n, pair) in query.split('&').enumerate() {
        if n > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if is_sensitive_key(key) => {
                out.push_str(key);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:••••••••@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        // A password holding `/` or `@`, one in the query, and nothing to mask.
        for (url, shown) in [
            (
                "postgres://u:p/w@d@h/db?sslmode=require",
                "postgres://u:••••••••@h/db?sslmode=require",
            ),
            (
                "postgresql://h/db?user=u&password=pw#x",
                "postgresql://h/db?user=u&password=••••••••#x",
            ),
            ("postgres://u:p?w@h/db", "postgres://u:••••••••@h/db"),
            ("https://u@h:8443/api?x=1", "https://u@h:8443/api?x=1"),
            ("https://h/a/b", "https://h/a/b"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("/api/,/v2/", "/api/,/v2/"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
