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

use std::{collections::HashMap, sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use futures::{
    channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded},
    future::BoxFuture,
};
use serde::{Deserialize, Serialize};

use crate::{
    db::{Db, now_ms},
    inbox::Inbox,
    on_pool,
};

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
    wake: UnboundedSender<()>,
    wake_rx: Arc<std::sync::Mutex<Option<UnboundedReceiver<()>>>>,
}

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

/// The job that processes inbox row `id` on its `replays`-th dispatch, with its idempotency key.
pub(crate) fn process_event_job(
    id: i64,
    source: &str,
    request_id: &str,
    replays: i64,
) -> (Job, String) {
    (
        Job {
            kind: ProcessEvent::KIND.to_string(),
            payload: serde_json::json!({ "event_id": id, "source": source }),
            request_id: request_id.to_string(),
        },
        format!("inbox:{id}:{replays}"),
    )
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
            .heartbeat_interval(Duration::from_secs(5))
            .missed_heartbeats(3);
        let storage = match &db {
            Db::Sqlite(p) => Storage::Sqlite(SqliteStorage::new(p).with_config(config_sqlite)),
            Db::Postgres(p) => Storage::Postgres(
                PostgresStorage::new(p).with_config(
                    apalis_postgres::Config::default()
                        .queue(QUEUE)
                        .batch_size(16)
                        .heartbeat_interval(Duration::from_secs(5))
                        // A killed worker's jobs are taken over after ~15 s, not apalis' default 5 min.
                        .missed_heartbeats(3),
                ),
            ),
        };
        let (wake, rx) = unbounded();
        Self {
            db,
            storage,
            wake,
            wake_rx: Arc::new(std::sync::Mutex::new(Some(rx))),
        }
    }

    /// Wakes this process's workers now (SQLite; PostgreSQL workers hear NOTIFY).
    pub fn wake(&self) {
        let _ = self.wake.unbounded_send(());
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
        let _ = self.wake.unbounded_send(());
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
        let _ = self.wake.unbounded_send(());
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
        let _ = self.wake.unbounded_send(());
        Ok(())
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

/// State shared by every job a worker runs.
#[derive(Clone)]
struct Runtime {
    registry: Arc<JobRegistry>,
    jobs: Jobs,
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
    let _wake_after = WakeOnDrop(rt.jobs.wake.clone());
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
    let result = tracing::Instrument::instrument(handler(job.payload, ctx), span.clone()).await;
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
struct WakeOnDrop(UnboundedSender<()>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        let _ = self.0.unbounded_send(());
    }
}

/// Runs this process's workers until `shutdown` resolves; in-flight jobs finish first.
pub async fn run_workers(
    jobs: Jobs,
    registry: JobRegistry,
    concurrency: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let rt = Runtime {
        registry: Arc::new(registry),
        jobs: jobs.clone(),
    };
    let name = format!(
        "switchboard-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let signal = async move {
        shutdown.await;
        Ok::<(), std::io::Error>(())
    };
    match jobs.storage.clone() {
        Storage::Sqlite(s) => {
            let rx = jobs
                .wake_rx
                .lock()
                .expect("wake receiver lock")
                .take()
                .expect("run_workers is called once per Jobs");
            let tick = jobs.wake.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    if tick.unbounded_send(()).is_err() {
                        break;
                    }
                }
            });
            WorkerBuilder::new(name)
                .backend(s.poll_with_stream(rx))
                .data(rt)
                .concurrency(concurrency)
                .parallelize(|fut| tokio::spawn(fut))
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
                .build(run_job)
                .run_until(signal)
                .await
        }
    }
}

/// Inbox processing job: hands stored row `event_id` to the processor of its source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessEvent {
    pub event_id: i64,
    pub source: String,
}

impl JobKind for ProcessEvent {
    const KIND: &'static str = "core.process-event";
}

/// Hands stored rows that have no job yet to the queue: every new row (the ack commits the row
/// alone) and every replayed one. Runs in each process that runs workers; several dispatchers
/// on one PostgreSQL skip each other's locked rows, and the idempotency key makes a hand-off
/// done twice a no-op.
pub fn spawn_dispatcher(inbox: Inbox, jobs: Jobs) -> tokio::task::JoinHandle<()> {
    tokio::spawn(dispatch_loop(inbox, jobs))
}

/// How often a dispatcher looks for rows stored by another process (`serve --no-workers`
/// beside `switchboard worker`). Rows stored by this process wake it at once.
const DISPATCH_POLL: Duration = Duration::from_millis(100);

/// Rows per dispatch transaction.
const DISPATCH_BATCH: i64 = 256;

async fn dispatch_loop(inbox: Inbox, jobs: Jobs) {
    loop {
        if inbox.db().is_closed() {
            // Shutting down: nothing can be dispatched any more, and saying so every poll
            // would only fill the log.
            return;
        }
        match dispatch_pending(&inbox, &jobs).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "inbox dispatch failed; will retry"),
        }
        tokio::select! {
            _ = inbox.new_work.notified() => {}
            _ = tokio::time::sleep(DISPATCH_POLL) => {}
        }
    }
}

/// Pushes a `ProcessEvent` job for every undispatched inbox row. Returns how many.
pub async fn dispatch_pending(inbox: &Inbox, jobs: &Jobs) -> Result<usize, QueueError> {
    let mut total = 0;
    loop {
        let n = dispatch_batch(inbox.db()).await?;
        if n > 0 {
            jobs.wake();
        }
        total += n;
        if (n as i64) < DISPATCH_BATCH {
            return Ok(total);
        }
    }
}

/// Marks up to [`DISPATCH_BATCH`] rows dispatched and enqueues their jobs, in one transaction:
/// a crash before the commit leaves both undone, so the rows are handed over again.
async fn dispatch_batch(db: &Db) -> Result<usize, sqlx::Error> {
    // A plain read first: the poll is usually empty, and an UPDATE would take SQLite's write
    // lock (and make the inbox writer wait) even when it matches nothing.
    let waiting: bool = on_pool!(db, |p| {
        sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM inbox_events WHERE dispatched_at IS NULL AND status = 'received')"
    )
    .fetch_one(p)
    .await
    })?;
    if !waiting {
        return Ok(0);
    }
    let skip_locked = match db {
        Db::Sqlite(_) => "",
        Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
    };
    let sql = format!(
        "UPDATE inbox_events SET dispatched_at = $1 WHERE id IN (
           SELECT id FROM inbox_events WHERE dispatched_at IS NULL AND status = 'received'
           ORDER BY id LIMIT $2{skip_locked})
         RETURNING id, source, request_id, replays"
    );
    on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(DISPATCH_BATCH)
            .fetch_all(&mut *tx)
            .await?;
        let n = rows.len();
        if n > 0 {
            let jobs = rows
                .iter()
                .map(|(id, source, request_id, replays)| {
                    process_event_job(*id, source, request_id, *replays)
                })
                .collect();
            tx.enqueue(jobs).await?;
        }
        tx.commit().await?;
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn schedule_is_the_specs() {
        let d: Vec<u64> = (1..=4).map(|a| super::retry_delay(a).as_secs()).collect();
        assert_eq!(d, vec![10, 30, 60, 60]);
        assert_eq!(super::MAX_ATTEMPTS, 5);
    }
}
