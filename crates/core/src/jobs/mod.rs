//! The durable job queue: apalis on `apalis-sqlite` / `apalis-postgres`.
//!
//! One job type ([`Job`]: a kind name, a JSON payload and the request id it descends from)
//! travels through one queue; bridges register a handler per kind in a [`JobRegistry`]. That
//! keeps the retry schedule, dead letters, `jobs list|retry` and the metrics in one place.
//!
//! Retries are durable, not in-memory sleeps: a failed attempt moves the job's `run_at` forward
//! by the schedule (10 s, 30 s, 60 s, 60 s) before apalis records the failure, so the fetcher
//! takes it again when due — from any process, even after a crash. After the fifth failed
//! attempt (or a [`JobError::Permanent`]) the job stays in the table as a dead letter until
//! `jobs retry`.
//!
//! Pickup latency: SQLite workers are woken in-process on every push and after every finished
//! job, with a one-second tick as the safety net (due retries, pushes from another process);
//! PostgreSQL workers use apalis' LISTEN/NOTIFY, so a job pushed by any process starts at once.
//!
//! Outages: apalis stops a worker for good on the first database error of its heartbeat, fetch
//! or acknowledgement. [`run_workers`] supervises it: a stopped worker is replaced by a new one
//! (new name) after a backoff of 1 s doubling to 30 s, and `/health` says `degraded` meanwhile
//! ([`Jobs::workers_health`]).
//!
//! One job, one runner: a job belongs to the worker that fetched it for as long as that
//! worker's row in apalis' workers table is fresh; after [`LEASE`] without a heartbeat, any
//! process's worker takes it over. So every job's hold is kept by a heartbeat of our own that
//! does nothing else (apalis' own heartbeat dies with its worker), and a job whose hold could
//! not be renewed is stopped [`LEASE_MARGIN`] before it lapses — cut off from the database,
//! a worker gives up its job before anyone else can start it, instead of calling out beside
//! the taker. Jobs of a stopped worker keep that hold until they finish; then their rows are
//! handed back at once rather than after the lease.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use futures::{
    channel::mpsc::{UnboundedSender, unbounded},
    future::BoxFuture,
};
use serde::{Deserialize, Serialize};

use crate::{
    db::{Db, now_ms},
    on_pool,
};

// The dispatcher and the processing job live with the inbox; these are their old paths.
pub use crate::inbox::{ProcessEvent, dispatch_pending, spawn_dispatcher};

/// Queue name in apalis' table, shared by every process of one deployment.
pub const QUEUE: &str = "switchboard";

/// Attempts in all before a job is dead-lettered (SPEC §1.2).
pub const MAX_ATTEMPTS: usize = 5;

/// Wait before attempt n+1 after attempt n failed (SPEC §1.2: 10 s, 30 s, 60 s, then 60 s).
pub const RETRY_DELAYS_SECS: [u64; 4] = [10, 30, 60, 60];

pub fn retry_delay(failed_attempt: usize) -> Duration {
    let i = failed_attempt
        .saturating_sub(1)
        .min(RETRY_DELAYS_SECS.len() - 1);
    Duration::from_secs(RETRY_DELAYS_SECS[i])
}

/// The one job type on the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub kind: String,
    pub payload: serde_json::Value,
    pub request_id: String,
}

/// A typed job a bridge defines: its struct is the payload, `KIND` routes it to the handler.
pub trait JobKind: Serialize + serde::de::DeserializeOwned + Send + 'static {
    /// `bridge.verb-object`, e.g. `bitrix-connector.relay-to-bitrix`.
    const KIND: &'static str;
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth trying again later (network, 5xx, rate limit).
    #[error("{0}")]
    Retry(String),
    /// Trying again can't help (bad credentials, rejected payload): dead-letter now.
    #[error("{0}")]
    Permanent(String),
}

/// What a running job knows about itself.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub task_id: String,
    pub attempt: usize,
    pub request_id: String,
}

type Handler = Arc<
    dyn Fn(serde_json::Value, JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync,
>;

/// Job kind → handler. Built by the binary from every bridge's `register` before workers start.
#[derive(Clone, Default)]
pub struct JobRegistry {
    handlers: HashMap<&'static str, Handler>,
}

impl JobRegistry {
    pub fn register<J, F, Fut>(&mut self, handler: F)
    where
        J: JobKind,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.handlers.insert(
            J::KIND,
            Arc::new(move |payload, ctx| {
                let handler = handler.clone();
                Box::pin(async move {
                    let job: J = serde_json::from_value(payload).map_err(|e| {
                        JobError::Permanent(format!("payload of {} does not parse: {e}", J::KIND))
                    })?;
                    handler(job, ctx).await
                })
            }),
        );
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<_> = self.handlers.keys().copied().collect();
        k.sort_unstable();
        k
    }
}

#[derive(Clone)]
enum Storage {
    Sqlite(SqliteStorage<Job>),
    Postgres(PostgresStorage<Job>),
}

/// Push side of the queue and its admin view. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    db: Db,
    storage: Storage,
    /// Wakes this process's current SQLite worker; each worker gets a fresh channel.
    wake: Arc<std::sync::Mutex<UnboundedSender<()>>>,
    status: Arc<std::sync::Mutex<WorkerStatus>>,
}

/// What `/health` says about this process's workers.
#[derive(Debug, Clone, Serialize)]
pub struct WorkersHealth {
    /// `off` (this process runs none), `starting`, `running`, or `restarting` after they
    /// stopped with an error.
    pub state: &'static str,
    /// Why the workers are not doing their work, when they aren't.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How often they were restarted since the process started.
    pub restarts: u64,
}

impl WorkersHealth {
    /// Acknowledged work is not being processed (or not handed to the queue).
    pub fn degraded(&self) -> bool {
        self.reason.is_some()
    }
}

#[derive(Debug, Default)]
struct WorkerStatus {
    state: WorkerState,
    /// The last worker error while `Restarting`.
    error: Option<String>,
    restarts: u64,
    /// Consecutive failures of the inbox dispatcher, and the last one's error.
    dispatch_failures: u32,
    dispatch_error: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    #[default]
    Off,
    Starting,
    Running,
    Restarting,
}

/// What went wrong, in words that reveal nothing about the deployment (no host, path or query).
fn failure_kind(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("locked") || e.contains("busy") {
        "the database is locked"
    } else if [
        "connect",
        "communicating",
        "timed out",
        "refused",
        "reset",
        "closed",
        "io error",
    ]
    .iter()
    .any(|k| e.contains(k))
    {
        "the database is unreachable"
    } else {
        "a database error; see the log"
    }
}

/// Failed dispatch rounds in a row before `/health` reports them (one can be a blip).
const DISPATCH_FAILURES_REPORTED: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job queue: {0}")]
    Push(String),
    #[error("job queue database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Writes jobs into the queue inside the caller's transaction, so a row's hand-off and the job
/// that processes it are committed together or not at all.
pub(crate) trait EnqueueInTx {
    async fn enqueue(&mut self, jobs: Vec<(Job, String)>) -> Result<(), sqlx::Error>;
}

fn task_for(job: &Job, key: String) -> Result<Task<Vec<u8>>, sqlx::Error> {
    let bytes = serde_json::to_vec(job).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    Ok(TaskBuilder::new(bytes)
        .max_attempts(MAX_ATTEMPTS)
        .idempotency_key(key)
        .build())
}

/// Rows per multi-row INSERT into apalis' table. SQLite looks bind parameters up by a linear
/// scan, so one giant statement costs quadratic time; chunks keep it linear.
const SQLITE_JOBS_PER_INSERT: usize = 64;

impl EnqueueInTx for sqlx::Transaction<'_, sqlx::Sqlite> {
    /// The same rows `apalis_sqlite::queries::push_tasks` writes, but as multi-row INSERTs: a
    /// dispatch of 256 rows is 4 statements, not 256 round trips.
    async fn enqueue(&mut self, jobs: Vec<(Job, String)>) -> Result<(), sqlx::Error> {
        let tasks = jobs
            .iter()
            .map(|(j, k)| task_for(j, k.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for chunk in tasks.chunks(SQLITE_JOBS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, ?, ?, 'Pending', 0, ?, ?, ?, ?, ?)");
            }
            sql.push_str(" ON CONFLICT (job_type, idempotency_key) DO NOTHING");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for task in chunk {
                let id = task
                    .task_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| ulid::Ulid::generate().to_string());
                q = q
                    .bind(task.args.clone())
                    .bind(id)
                    .bind(QUEUE)
                    .bind(task.max_attempts().unwrap_or(MAX_ATTEMPTS) as i64)
                    .bind(task.run_at().unwrap_or(now) as i64)
                    .bind(task.priority().unwrap_or_default() as i64)
                    .bind(serde_json::to_string(task.metadata()).unwrap_or_default())
                    .bind(task.idempotency_key());
            }
            q.execute(&mut **self).await?;
        }
        Ok(())
    }
}

impl EnqueueInTx for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn enqueue(&mut self, jobs: Vec<(Job, String)>) -> Result<(), sqlx::Error> {
        let tasks = jobs
            .iter()
            .map(|(j, k)| task_for(j, k.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        apalis_postgres::queries::push_tasks(&mut **self, QUEUE, tasks)
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("enqueue: {e}")))
    }
}

/// Applies apalis' own migrations without its `setup()`, which would also switch one pooled
/// SQLite connection to `synchronous = OFF` and so quietly weaken the inbox's durability.
pub(crate) async fn migrate(db: &Db) -> Result<(), sqlx::migrate::MigrateError> {
    match db {
        Db::Sqlite(p) => {
            let mut m = SqliteStorage::<()>::migrations();
            m.set_ignore_missing(true);
            m.run(p).await
        }
        Db::Postgres(p) => PostgresStorage::<()>::setup(p)
            .await
            .map_err(|e| sqlx::migrate::MigrateError::Source(Box::new(e))),
    }
}

/// One row of `jobs list` and `/admin/jobs`.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub last_error: Option<String>,
    pub request_id: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// Waiting (queued, or stored and not yet queued) or due for a retry.
    pub pending: i64,
    pub running: i64,
    pub dead: i64,
}

impl Jobs {
    pub fn new(db: Db) -> Self {
        let config_sqlite = apalis_sqlite::Config::default()
            .queue(QUEUE)
            .batch_size(16)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS as usize);
        let storage = match &db {
            Db::Sqlite(p) => Storage::Sqlite(SqliteStorage::new(p).with_config(config_sqlite)),
            Db::Postgres(p) => Storage::Postgres(
                PostgresStorage::new(p).with_config(
                    apalis_postgres::Config::default()
                        .queue(QUEUE)
                        .batch_size(16)
                        .heartbeat_interval(HEARTBEAT)
                        // A killed worker's jobs are taken over after ~15 s, not apalis' default 5 min.
                        .missed_heartbeats(MISSED_HEARTBEATS as usize),
                ),
            ),
        };
        let (wake, _) = unbounded();
        Self {
            db,
            storage,
            wake: Arc::new(std::sync::Mutex::new(wake)),
            status: Arc::default(),
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut WorkerStatus)) {
        f(&mut self.status.lock().expect("worker status lock"));
    }

    /// A dispatch round went through: whatever failed before is over.
    pub(crate) fn dispatch_succeeded(&self) {
        self.set_status(|s| {
            s.dispatch_failures = 0;
            s.dispatch_error = None;
        });
    }

    /// A dispatch round failed with `error`; `/health` reports it once it keeps happening.
    pub(crate) fn dispatch_failed(&self, error: String) {
        self.set_status(|s| {
            s.dispatch_failures = s.dispatch_failures.saturating_add(1);
            s.dispatch_error = Some(error);
        });
    }

    /// This process's workers and inbox dispatcher as `/health` shows them.
    pub fn workers_health(&self) -> WorkersHealth {
        let s = self.status.lock().expect("worker status lock");
        let state = match s.state {
            WorkerState::Off => "off",
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Restarting => "restarting",
        };
        // `/health` is public: the kind of failure only; the log has the error itself.
        let mut reasons = Vec::new();
        if s.state == WorkerState::Restarting {
            reasons.push(format!(
                "job workers stopped ({}); restarting",
                failure_kind(s.error.as_deref().unwrap_or_default())
            ));
        }
        if s.dispatch_failures >= DISPATCH_FAILURES_REPORTED
            && let Some(e) = &s.dispatch_error
        {
            reasons.push(format!(
                "stored events are not being handed to the job queue ({})",
                failure_kind(e)
            ));
        }
        WorkersHealth {
            state,
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            restarts: s.restarts,
        }
    }

    /// Wakes this process's workers now (SQLite; PostgreSQL workers hear NOTIFY).
    pub fn wake(&self) {
        let _ = self.wake.lock().expect("wake lock").unbounded_send(());
    }

    /// Enqueues a typed job.
    pub async fn push<J: JobKind>(&self, job: &J, request_id: &str) -> Result<(), QueueError> {
        self.push_raw(
            J::KIND,
            serde_json::to_value(job).map_err(|e| QueueError::Push(e.to_string()))?,
            request_id,
            None,
        )
        .await
    }

    /// Enqueues a typed job at most once per `key`: a second push with the same key is a no-op
    /// (apalis' idempotency key), which makes "push, crash, push again" safe.
    pub async fn push_once<J: JobKind>(
        &self,
        job: &J,
        request_id: &str,
        key: &str,
    ) -> Result<(), QueueError> {
        self.push_raw(
            J::KIND,
            serde_json::to_value(job).map_err(|e| QueueError::Push(e.to_string()))?,
            request_id,
            Some(key),
        )
        .await
    }

    pub async fn push_raw(
        &self,
        kind: &str,
        payload: serde_json::Value,
        request_id: &str,
        key: Option<&str>,
    ) -> Result<(), QueueError> {
        let job = Job {
            kind: kind.to_string(),
            payload,
            request_id: request_id.to_string(),
        };
        let mut builder = TaskBuilder::new(job).max_attempts(MAX_ATTEMPTS);
        if let Some(k) = key {
            builder = builder.idempotency_key(k);
        }
        let task = builder.build();
        match self.storage.clone() {
            Storage::Sqlite(mut s) => s
                .push_task(task)
                .await
                .map_err(|e| QueueError::Push(e.to_string()))?,
            Storage::Postgres(mut s) => match s.push_task(task).await {
                Ok(()) => {}
                // PostgreSQL reports a repeated idempotency key as a unique violation (SQLite
                // ignores it): either way the job is already queued.
                Err(e) if key.is_some() && is_duplicate_key(&e.to_string()) => return Ok(()),
                Err(e) => return Err(QueueError::Push(e.to_string())),
            },
        }
        metrics::counter!("switchboard_jobs_pushed_total", "kind" => kind.to_string()).increment(1);
        self.wake();
        Ok(())
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let sql = match self.db {
            Db::Sqlite(_) => "SELECT
                COALESCE(SUM(CASE WHEN status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts) THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN status IN ('Queued', 'Running') THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts) THEN 1 ELSE 0 END), 0)
                FROM Jobs WHERE job_type = $1",
            Db::Postgres(_) => "SELECT
                COALESCE(SUM(CASE WHEN status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts) THEN 1 ELSE 0 END), 0)::BIGINT,
                COALESCE(SUM(CASE WHEN status IN ('Queued', 'Running') THEN 1 ELSE 0 END), 0)::BIGINT,
                COALESCE(SUM(CASE WHEN status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts) THEN 1 ELSE 0 END), 0)::BIGINT
                FROM apalis.jobs WHERE job_type = $1",
        };
        let (pending, running, dead): (i64, i64, i64) =
            on_pool!(&self.db, |p| sqlx::query_as(sql)
                .bind(QUEUE)
                .fetch_one(p)
                .await)?;
        // Stored events not yet handed to the queue are waiting work too (with `serve
        // --no-workers` they wait here until a worker process dispatches them).
        let undispatched: i64 = on_pool!(&self.db, |p| {
            sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox_events WHERE dispatched_at IS NULL AND status = 'received'"
        )
        .fetch_one(p)
        .await
        })?;
        Ok(QueueStats {
            pending: pending + undispatched,
            running,
            dead,
        })
    }

    /// Jobs, newest first; `dead_only` lists the dead letters.
    pub async fn list(&self, dead_only: bool, limit: i64) -> Result<Vec<JobRow>, QueueError> {
        let (table, job_text, err_text) = match self.db {
            Db::Sqlite(_) => ("Jobs", "CAST(job AS TEXT)", "CAST(last_result AS TEXT)"),
            Db::Postgres(_) => (
                "apalis.jobs",
                "convert_from(job, 'UTF8')",
                "last_result::text",
            ),
        };
        let filter = if dead_only {
            "AND (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))"
        } else {
            ""
        };
        let order = match self.db {
            Db::Sqlite(_) => "ORDER BY rowid DESC",
            Db::Postgres(_) => "ORDER BY run_at DESC, id DESC",
        };
        let sql = format!(
            "SELECT id, {job_text}, status, CAST(attempts AS BIGINT), CAST(max_attempts AS BIGINT), {err_text}
             FROM {table} WHERE job_type = $1 {filter} {order} LIMIT $2"
        );
        let rows: Vec<(String, String, String, i64, i64, Option<String>)> = on_pool!(
            &self.db,
            |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(QUEUE)
                .bind(limit.clamp(1, 1000))
                .fetch_all(p)
                .await
        )?;
        Ok(rows
            .into_iter()
            .map(|(id, job, status, attempts, max_attempts, err)| {
                let job: Option<Job> = serde_json::from_str(&job).ok();
                JobRow {
                    id,
                    kind: job.as_ref().map(|j| j.kind.clone()).unwrap_or_default(),
                    request_id: job.map(|j| j.request_id).unwrap_or_default(),
                    status,
                    attempts,
                    max_attempts,
                    last_error: err.map(|e| clean_error(&e)),
                }
            })
            .collect())
    }

    /// Puts dead letters (all, or one id) back on the queue with a fresh attempt budget.
    pub async fn retry(&self, id: Option<&str>) -> Result<u64, QueueError> {
        let sql = match self.db {
            Db::Sqlite(_) => {
                "UPDATE Jobs SET status = 'Pending', attempts = 0, run_at = strftime('%s', 'now'),
                lock_by = NULL, lock_at = NULL, done_at = NULL
                WHERE job_type = $1 AND ($2 IS NULL OR id = $2)
                  AND (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))"
            }
            Db::Postgres(_) => {
                "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = now(),
                lock_by = NULL, lock_at = NULL, done_at = NULL
                WHERE job_type = $1 AND ($2::text IS NULL OR id = $2)
                  AND (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))"
            }
        };
        let n = on_pool!(&self.db, |p| sqlx::query(sql)
            .bind(QUEUE)
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        self.wake();
        Ok(n)
    }

    /// Moves a failed job's next attempt `delay` into the future (durable backoff).
    async fn defer(&self, task_id: &str, delay: Duration) -> Result<(), sqlx::Error> {
        let at_secs = (now_ms() / 1000) + delay.as_secs() as i64;
        let sql = match self.db {
            Db::Sqlite(_) => "UPDATE Jobs SET run_at = $1 WHERE id = $2",
            Db::Postgres(_) => "UPDATE apalis.jobs SET run_at = to_timestamp($1) WHERE id = $2",
        };
        on_pool!(&self.db, |p| sqlx::query(sql)
            .bind(at_secs)
            .bind(task_id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Seconds until a job's next attempt (tests and the admin page).
    pub async fn next_run_in_secs(&self, task_id: &str) -> Result<Option<i64>, QueueError> {
        let sql = match self.db {
            Db::Sqlite(_) => {
                "SELECT run_at - CAST(strftime('%s', 'now') AS INTEGER) FROM Jobs WHERE id = $1"
            }
            Db::Postgres(_) => {
                "SELECT CAST(EXTRACT(EPOCH FROM run_at - now()) AS BIGINT) FROM apalis.jobs WHERE id = $1"
            }
        };
        let row: Option<(i64,)> = on_pool!(&self.db, |p| sqlx::query_as(sql)
            .bind(task_id)
            .fetch_optional(p)
            .await)?;
        Ok(row.map(|(s,)| s))
    }

    /// Makes every waiting retry due now (tests use it instead of sleeping through backoff).
    pub async fn make_due_now(&self) -> Result<(), QueueError> {
        let sql = match self.db {
            Db::Sqlite(_) => {
                "UPDATE Jobs SET run_at = strftime('%s', 'now') WHERE job_type = $1 AND status IN ('Pending', 'Failed')"
            }
            Db::Postgres(_) => {
                "UPDATE apalis.jobs SET run_at = now() WHERE job_type = $1 AND status IN ('Pending', 'Failed')"
            }
        };
        on_pool!(&self.db, |p| sqlx::query(sql)
            .bind(QUEUE)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        self.wake();
        Ok(())
    }
}

impl Jobs {
    /// Puts the running job `task_id` back in the queue, due after `after`, without spending
    /// one of its attempts: for work that has to wait its turn (say, behind an earlier message
    /// of the same chat). The handler returns `Ok(())` after it; what runs later is a copy with
    /// the same payload, attempts and idempotency key, so [`Jobs::make_due_by_key`] finds it.
    ///
    /// The running row is replaced, not updated: apalis may still apply this run's late "lock"
    /// and "done" events to a row of that id, and finds none.
    pub async fn postpone(&self, task_id: &str, after: Duration) -> Result<(), QueueError> {
        let copy = ulid::Ulid::generate().to_string();
        let (table, run_at) = match self.db {
            Db::Sqlite(_) => ("Jobs", "CAST(strftime('%s', 'now') AS INTEGER) + $3"),
            Db::Postgres(_) => ("apalis.jobs", "now() + make_interval(secs => $3)"),
        };
        // The copy is written first, without the key (unique per queue) that the original
        // still holds: an SQLite transaction that reads before it writes can't wait for the
        // write lock, it fails "database is locked" at once when another writer came first.
        let copy_sql = format!(
            "INSERT INTO {table} (job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata)
             SELECT job, $2, job_type, 'Pending', attempts, max_attempts, {run_at}, priority, metadata
             FROM {table} WHERE id = $1"
        );
        let drop_sql = format!("DELETE FROM {table} WHERE id = $1 RETURNING idempotency_key");
        let key_sql = format!("UPDATE {table} SET idempotency_key = $2 WHERE id = $1");
        let secs = after.as_secs_f64().max(1.0);
        on_pool!(&self.db, |p| {
            let mut tx = p.begin().await?;
            let q = sqlx::query(sqlx::AssertSqlSafe(copy_sql))
                .bind(task_id)
                .bind(&copy);
            let q = match self.db {
                Db::Sqlite(_) => q.bind(secs.ceil() as i64),
                Db::Postgres(_) => q.bind(secs),
            };
            q.execute(&mut *tx).await?;
            let key: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(drop_sql))
                .bind(task_id)
                .fetch_optional(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(key_sql))
                .bind(&copy)
                .bind(key.flatten())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// Makes the waiting job with idempotency key `key` due now (a postponed job whose turn
    /// has come), and wakes the workers of every process.
    pub async fn make_due_by_key(&self, key: &str) -> Result<(), QueueError> {
        match &self.db {
            Db::Sqlite(p) => {
                sqlx::query(
                    "UPDATE Jobs SET run_at = strftime('%s', 'now')
                     WHERE job_type = $1 AND idempotency_key = $2 AND status = 'Pending'",
                )
                .bind(QUEUE)
                .bind(key)
                .execute(p)
                .await?;
            }
            // A changed run_at raises no NOTIFY of apalis' own (only inserts do): send its.
            Db::Postgres(p) => {
                sqlx::query(
                    "WITH due AS (
                       UPDATE apalis.jobs SET run_at = now()
                       WHERE job_type = $1 AND idempotency_key = $2 AND status = 'Pending'
                       RETURNING id)
                     SELECT pg_notify('apalis::job::insert',
                                      json_build_object('job_type', $1::text, 'id', due.id)::text)
                     FROM due",
                )
                .bind(QUEUE)
                .bind(key)
                .fetch_all(p)
                .await?;
            }
        }
        self.wake();
        Ok(())
    }

    /// Whether any job with one of these idempotency keys is still to run: waiting, running,
    /// or failed with attempts left. Done jobs and dead letters are not.
    pub async fn any_live(&self, keys: &[String]) -> Result<bool, QueueError> {
        if keys.is_empty() {
            return Ok(false);
        }
        const LIVE: &str = "(status IN ('Pending', 'Queued', 'Running')
                              OR (status = 'Failed' AND attempts < max_attempts))";
        let live = match &self.db {
            Db::Sqlite(p) => {
                let keys = serde_json::to_string(keys).unwrap_or_default();
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT 1 FROM Jobs WHERE job_type = $1
                       AND idempotency_key IN (SELECT value FROM json_each($2)) AND {LIVE})"
                )))
                .bind(QUEUE)
                .bind(keys)
                .fetch_one(p)
                .await?
            }
            Db::Postgres(p) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT 1 FROM apalis.jobs WHERE job_type = $1
                       AND idempotency_key = ANY($2) AND {LIVE})"
                )))
                .bind(QUEUE)
                .bind(keys)
                .fetch_one(p)
                .await?
            }
        };
        Ok(live)
    }

    /// Whether an inbox row of `source` stored before row `before`, whose raw body contains
    /// `needle`, still has processing ahead of it: not yet handed to the queue, or its job
    /// waiting, running or due for a retry. Rows whose job is a dead letter don't count: they
    /// wait for an operator, and nothing should wait for them.
    pub async fn inbox_work_before(
        &self,
        source: &str,
        before: i64,
        needle: &str,
    ) -> Result<bool, QueueError> {
        let (jobs, contains) = match self.db {
            Db::Sqlite(_) => ("Jobs", "instr(e.body, $3) > 0"),
            Db::Postgres(_) => ("apalis.jobs", "position($3 IN e.body) > 0"),
        };
        let sql = format!(
            "SELECT EXISTS (
               SELECT 1 FROM inbox_events e
               WHERE e.status IN ('received', 'failed') AND e.source = $1 AND e.id < $2 AND {contains}
                 AND (e.dispatched_at IS NULL OR EXISTS (
                   SELECT 1 FROM {jobs} j
                   WHERE j.job_type = $4
                     AND j.idempotency_key = 'inbox:' || e.id || ':' || e.replays
                     AND (j.status IN ('Pending', 'Queued', 'Running')
                          OR (j.status = 'Failed' AND j.attempts < j.max_attempts)))))"
        );
        let waiting: bool = on_pool!(&self.db, |p| sqlx::query_scalar(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(source)
        .bind(before)
        .bind(needle.as_bytes())
        .bind(QUEUE)
        .fetch_one(p)
        .await)?;
        Ok(waiting)
    }

    /// Renews worker `name`'s hold on its jobs (apalis' `last_seen`). `false`: no such worker
    /// (not registered yet).
    async fn renew(&self, name: &str) -> Result<bool, sqlx::Error> {
        let sql = match self.db {
            Db::Sqlite(_) => {
                "UPDATE Workers SET last_seen = strftime('%s', 'now') WHERE id = $1 AND worker_type = $2"
            }
            Db::Postgres(_) => {
                "UPDATE apalis.workers SET last_seen = now() WHERE id = $1 AND worker_type = $2"
            }
        };
        let n = on_pool!(&self.db, |p| sqlx::query(sql)
            .bind(name)
            .bind(QUEUE)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Hands the unfinished jobs of stopped worker `name` back to the queue. Only once none of
    /// them runs in this process any more: they are then free, but nobody else may take them
    /// before the worker's lease lapses.
    async fn release(&self, name: &str) -> Result<u64, sqlx::Error> {
        let table = match self.db {
            Db::Sqlite(_) => "Jobs",
            Db::Postgres(_) => "apalis.jobs",
        };
        let sql = format!(
            "UPDATE {table} SET status = 'Pending', lock_by = NULL, lock_at = NULL
             WHERE lock_by = $1 AND status IN ('Queued', 'Running')"
        );
        on_pool!(&self.db, |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(name)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
    }
}

fn is_duplicate_key(msg: &str) -> bool {
    msg.contains("duplicate key") || msg.contains("idempotency")
}

/// apalis stores the handler's error as JSON (`{"Err": "..."}` or a quoted string); show the text.
fn clean_error(raw: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(m)) => m
            .get("Err")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| raw.to_string()),
        _ => raw.to_string(),
    }
}

/// How often a worker's hold on its jobs is renewed, and how many renewals may be missed
/// before another worker takes them over: a killed process's jobs run again after ~15 s.
const HEARTBEAT: Duration = Duration::from_secs(5);
const MISSED_HEARTBEATS: u32 = 3;
/// How long a worker's jobs stay its own after a renewal began.
pub const LEASE: Duration = Duration::from_secs(HEARTBEAT.as_secs() * MISSED_HEARTBEATS as u64);
/// A job whose hold was not renewed is stopped this long before the hold lapses: room for the
/// clocks (SQLite counts `last_seen` in whole seconds) and for the stop itself.
pub const LEASE_MARGIN: Duration = Duration::from_secs(3);

/// The first wait before a stopped worker is replaced, doubled on each further stop up to
/// [`RESTART_MAX`]; back to the first after a worker that ran for [`RESTART_RESET`].
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
const RESTART_RESET: Duration = Duration::from_secs(60);

/// How long one worker's jobs may still run: until `until`, pushed forward by every renewal.
struct Lease {
    until: std::sync::Mutex<Instant>,
}

impl Lease {
    /// A worker registers (and so starts its lease) after this is made: a safe first bound.
    fn new() -> Self {
        Self {
            until: std::sync::Mutex::new(Instant::now() + LEASE - LEASE_MARGIN),
        }
    }

    /// A renewal that began at `began` succeeded.
    fn renewed(&self, began: Instant) {
        let mut until = self.until.lock().expect("lease lock");
        *until = (*until).max(began + LEASE - LEASE_MARGIN);
    }

    /// Resolves when the hold may be lost: the job must stop.
    async fn lapsed(&self) {
        loop {
            let until = *self.until.lock().expect("lease lock");
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// One apalis worker's life: its name (the key of its jobs' lock), its lease, its jobs running
/// in this process.
struct Generation {
    name: String,
    lease: Lease,
    running: AtomicUsize,
    /// Set when the worker is gone: once `running` is zero, its lease is no longer kept.
    retired: std::sync::atomic::AtomicBool,
    /// Registration succeeded: renew now rather than at the next tick.
    registered: tokio::sync::Notify,
}

impl Generation {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            name: format!(
                "switchboard-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            lease: Lease::new(),
            running: AtomicUsize::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
            registered: tokio::sync::Notify::new(),
        })
    }
}

/// Keeps `generation`'s jobs its own while any of them runs here, independently of apalis'
/// worker loop (which stops on its first database error). After a stop, hands the worker's
/// unfinished jobs back to the queue.
async fn keep_lease(jobs: Jobs, generation: Arc<Generation>) {
    let mut renewed_once = false;
    loop {
        if generation.retired.load(Ordering::SeqCst)
            && generation.running.load(Ordering::SeqCst) == 0
        {
            break;
        }
        let began = Instant::now();
        match jobs.renew(&generation.name).await {
            Ok(true) => {
                generation.lease.renewed(began);
                renewed_once = true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, worker = %generation.name, "lease renewal failed")
            }
        }
        let every = if renewed_once && !generation.retired.load(Ordering::SeqCst) {
            HEARTBEAT
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = generation.registered.notified() => {}
        }
    }
    // Nothing of this worker runs here any more; what it held goes back now, not after its
    // lease (which another process's worker would wait for).
    for _ in 0..20 {
        match jobs.release(&generation.name).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(jobs = n, worker = %generation.name, "jobs of the stopped worker handed back to the queue");
                }
                return;
            }
            Err(_) => tokio::time::sleep(HEARTBEAT).await,
        }
    }
}

/// State shared by every job a worker runs.
#[derive(Clone)]
struct Runtime {
    registry: Arc<JobRegistry>,
    jobs: Jobs,
    generation: Arc<Generation>,
}

/// Counts a job as running in its generation while it lives.
struct Running(Arc<Generation>);

impl Running {
    fn start(generation: &Arc<Generation>) -> Self {
        generation.running.fetch_add(1, Ordering::SeqCst);
        Self(generation.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_job(
    job: Job,
    attempt: Attempt,
    task_id: TaskId,
    rt: Data<Runtime>,
) -> Result<(), BoxDynError> {
    let attempt = attempt.current();
    let task_id = task_id.to_string();
    let span = tracing::info_span!("job", job = %job.kind, request_id = %job.request_id, attempt, task_id = %task_id);
    let _running = Running::start(&rt.generation);
    let _wake_after = WakeOnDrop(rt.jobs.clone());
    let Some(handler) = rt.registry.handlers.get(job.kind.as_str()).cloned() else {
        tracing::error!(parent: &span, "no handler registered for this job kind");
        return Err(AbortError::new(format!("no handler for job kind {}", job.kind)).into());
    };
    let ctx = JobContext {
        task_id: task_id.clone(),
        attempt,
        request_id: job.request_id.clone(),
    };
    let started = std::time::Instant::now();
    let work = tracing::Instrument::instrument(handler(job.payload, ctx), span.clone());
    let result = tokio::select! {
        result = work => result,
        () = rt.generation.lease.lapsed() => {
            tracing::warn!(parent: &span, "job stopped: its worker could not renew its hold on it (database unreachable?), and another worker may take it over");
            Err(JobError::Retry("stopped: the worker lost its hold on the job; it runs again".into()))
        }
    };
    metrics::histogram!("switchboard_job_duration_seconds", "kind" => job.kind.clone())
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            metrics::counter!("switchboard_jobs_total", "kind" => job.kind, "outcome" => "ok")
                .increment(1);
            Ok(())
        }
        Err(JobError::Permanent(msg)) => {
            tracing::error!(parent: &span, error = %msg, "job failed permanently; dead-lettered");
            metrics::counter!("switchboard_jobs_total", "kind" => job.kind, "outcome" => "dead")
                .increment(1);
            Err(AbortError::new(msg).into())
        }
        Err(JobError::Retry(msg)) if attempt < MAX_ATTEMPTS => {
            let delay = retry_delay(attempt);
            if let Err(e) = rt.jobs.defer(&task_id, delay).await {
                tracing::warn!(parent: &span, error = %e, "could not schedule the retry; it will run sooner");
            }
            tracing::warn!(parent: &span, error = %msg, retry_in_secs = delay.as_secs(), "job failed; will retry");
            metrics::counter!("switchboard_jobs_total", "kind" => job.kind, "outcome" => "retry")
                .increment(1);
            Err(msg.into())
        }
        Err(JobError::Retry(msg)) => {
            tracing::error!(parent: &span, error = %msg, "job failed on its last attempt; dead-lettered");
            metrics::counter!("switchboard_jobs_total", "kind" => job.kind, "outcome" => "dead")
                .increment(1);
            Err(msg.into())
        }
    }
}

/// A finished job may have freed the way for others already waiting: ask the fetcher to look
/// again rather than wait for the next tick.
struct WakeOnDrop(Jobs);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.wake();
    }
}

/// Runs this process's workers until `shutdown` resolves; in-flight jobs finish first. A
/// worker that stops with an error (its database unreachable or locked) is replaced after a
/// backoff; `/health` reports the workers `restarting` until the new one has registered.
pub async fn run_workers(
    jobs: Jobs,
    registry: JobRegistry,
    concurrency: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let registry = Arc::new(registry);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    // SQLite's safety-net tick (see the module notes).
    let ticker = matches!(jobs.storage, Storage::Sqlite(_)).then(|| {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                jobs.wake();
            }
        })
    });
    jobs.set_status(|s| s.state = WorkerState::Starting);
    let mut backoff = RESTART_FIRST;
    let result = loop {
        let generation = Generation::new();
        tokio::spawn(keep_lease(jobs.clone(), generation.clone()));
        let began = Instant::now();
        let result = run_worker(
            &jobs,
            Runtime {
                registry: registry.clone(),
                jobs: jobs.clone(),
                generation: generation.clone(),
            },
            concurrency,
            stopped(stop.clone()),
        )
        .await;
        generation.retired.store(true, Ordering::SeqCst);
        if *stop.borrow() {
            break result;
        }
        if began.elapsed() >= RESTART_RESET {
            backoff = RESTART_FIRST;
        }
        let error = match &result {
            Err(e) => e.to_string(),
            Ok(()) => "the worker ended by itself".to_string(),
        };
        tracing::error!(
            error = %error,
            restart_in_secs = backoff.as_secs(),
            running_jobs = generation.running.load(Ordering::SeqCst),
            "job workers stopped; restarting them"
        );
        jobs.set_status(|s| {
            s.state = WorkerState::Restarting;
            s.error = Some(error);
            s.restarts += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(stop.clone()) => break Ok(()),
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    };
    stopper.abort();
    if let Some(t) = ticker {
        t.abort();
    }
    jobs.set_status(|s| s.state = WorkerState::Off);
    result
}

/// One apalis worker, under a name of its own, until `signal` or its first backend error.
async fn run_worker(
    jobs: &Jobs,
    rt: Runtime,
    concurrency: usize,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let generation = rt.generation.clone();
    let name = generation.name.clone();
    let status = jobs.clone();
    // apalis reports each successful registration and heartbeat.
    let on_event = move |_: &WorkerContext, event: &Event| {
        if matches!(event, Event::HeartBeat) {
            status.set_status(|s| {
                if s.state != WorkerState::Running {
                    s.state = WorkerState::Running;
                    s.error = None;
                    generation.registered.notify_one();
                }
            });
        }
    };
    let signal = async move {
        signal.await;
        Ok::<(), std::io::Error>(())
    };
    match jobs.storage.clone() {
        Storage::Sqlite(s) => {
            let (wake, rx) = unbounded();
            *jobs.wake.lock().expect("wake lock") = wake;
            WorkerBuilder::new(name)
                .backend(s.poll_with_stream(rx))
                .data(rt)
                .concurrency(concurrency)
                .parallelize(|fut| tokio::spawn(fut))
                .on_event(on_event)
                .build(run_job)
                .run_until(signal)
                .await
        }
        Storage::Postgres(s) => {
            WorkerBuilder::new(name)
                .backend(s.with_pubsub())
                .data(rt)
                .concurrency(concurrency)
                .parallelize(|fut| tokio::spawn(fut))
                .on_event(on_event)
                .build(run_job)
                .run_until(signal)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn schedule_is_the_specs() {
        let d: Vec<u64> = (1..=4).map(|a| super::retry_delay(a).as_secs()).collect();
        assert_eq!(d, vec![10, 30, 60, 60]);
        assert_eq!(super::MAX_ATTEMPTS, 5);
    }

    #[test]
    fn health_names_the_kind_of_failure_only() {
        use super::failure_kind;
        assert_eq!(
            failure_kind("error returned from database: (code: 5) database is locked"),
            "the database is locked"
        );
        assert_eq!(
            failure_kind("error communicating with database: Connection refused (os error 111)"),
            "the database is unreachable"
        );
        assert_eq!(
            failure_kind("relation \"secret_table\" does not exist"),
            "a database error; see the log"
        );
    }
}
