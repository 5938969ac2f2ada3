//! The push side of the queue and its admin view ([`Jobs`]): enqueue, stats, the job list,
//! dead-letter retry, and the few moves bridges make on waiting jobs (postpone, make due).
//! What these read or write in apalis' tables is in `apalis_sql.rs`.

use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use serde::Serialize;

use super::{
    Job, JobKind, MAX_ATTEMPTS, QUEUE, apalis_sql,
    worker::{HEARTBEAT, Lane, MISSED_HEARTBEATS, WorkerStatus, defer, held_by_current},
};
use crate::{db::Db, on_pool};

#[derive(Clone)]
pub(super) enum Storage {
    Sqlite(SqliteStorage<Job>),
    Postgres(PostgresStorage<Job>),
}

/// Push side of the queue and its admin view. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    pub(super) db: Db,
    pub(super) storage: Storage,
    /// Wakes this process's current SQLite worker; each worker gets a fresh channel.
    pub(super) wake: Arc<std::sync::Mutex<UnboundedSender<()>>>,
    /// Asks for the wake-up to be repeated shortly (see `worker.rs`).
    pub(super) wake_again: Arc<tokio::sync::Notify>,
    pub(super) status: Arc<std::sync::Mutex<WorkerStatus>>,
    /// The current worker's lane for the dispatcher's jobs, while this process runs one.
    pub(super) lane: Arc<std::sync::Mutex<Option<Lane>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job queue: {0}")]
    Push(String),
    #[error("job queue database: {0}")]
    Db(#[from] sqlx::Error),
}

/// One row of `jobs list` and `/admin/jobs`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    /// The queue's own word for the state (`Pending`, `Failed`, `Killed`…).
    pub status: String,
    /// The state in an operator's words: `waiting`, `running`, `done`, `retrying` or
    /// `dead letter`.
    #[schema(value_type = String)]
    pub state: &'static str,
    pub attempts: i64,
    pub max_attempts: i64,
    /// The last attempt's error as the handler wrote it; `None` after a success.
    pub last_error: Option<String>,
    /// The request that caused the job: the inbox event's request id.
    pub request_id: String,
    /// The inbox event the job processes (inbox processing jobs only; others link by
    /// `request_id`).
    pub event_id: Option<i64>,
    /// The inbox source of the event an inbox processing job processes.
    pub source: Option<String>,
    /// Unix milliseconds.
    pub created_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    /// When a waiting or retrying job runs next.
    pub next_attempt_at: Option<i64>,
}

impl JobRow {
    pub fn is_dead(&self) -> bool {
        self.state == DEAD_LETTER
    }

    fn from_listed(l: apalis_sql::ListedJob) -> Self {
        let job: Option<Job> = serde_json::from_str(&l.job).ok();
        let dead = l.status == "Killed" || (l.status == "Failed" && l.attempts >= l.max_attempts);
        let state = match l.status.as_str() {
            _ if dead => DEAD_LETTER,
            "Done" => "done",
            "Failed" => "retrying",
            "Queued" | "Running" => "running",
            _ => "waiting",
        };
        let is_process_event = job
            .as_ref()
            .is_some_and(|j| j.kind == crate::inbox::ProcessEvent::KIND);
        let payload = job
            .as_ref()
            .map(|j| &j.payload)
            .filter(|_| is_process_event);
        let secs = |s: Option<i64>| s.map(|s| s * 1000);
        JobRow {
            kind: job.as_ref().map(|j| j.kind.clone()).unwrap_or_default(),
            request_id: job
                .as_ref()
                .map(|j| j.request_id.clone())
                .unwrap_or_default(),
            event_id: payload.and_then(|p| p.get("event_id")?.as_i64()),
            source: payload.and_then(|p| Some(p.get("source")?.as_str()?.to_string())),
            created_at: ulid::Ulid::from_string(&l.id)
                .ok()
                .map(|u| u.timestamp_ms() as i64),
            last_attempt_at: match state {
                "running" => secs(l.lock_at),
                _ if l.attempts > 0 => secs(l.done_at),
                _ => None,
            },
            next_attempt_at: matches!(state, "waiting" | "retrying")
                .then(|| secs(l.run_at))
                .flatten(),
            last_error: l.last_result.as_deref().and_then(error_text),
            id: l.id,
            status: l.status,
            state,
            attempts: l.attempts,
            max_attempts: l.max_attempts,
        }
    }
}

const DEAD_LETTER: &str = "dead letter";

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
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
            .missed_heartbeats(MISSED_HEARTBEATS as usize)
            // The fetch already marks a job taken by this worker (`Queued`, `lock_by`), which
            // is all the leases and the orphan recovery read. apalis' extra "lock" write only
            // turned that into `Running`: a second write transaction per job, contending for
            // SQLite's one write lock with the job's own first write. (PostgreSQL keeps it:
            // there a job fetched on NOTIFY gets its `lock_by` from that write.)
            .lock_tasks(false);
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
            wake_again: Arc::default(),
            status: Arc::default(),
            lane: Arc::default(),
        }
    }

    /// This process's worker lane, if it runs a worker now.
    pub(crate) fn lane(&self) -> Option<Lane> {
        self.lane.lock().expect("lane lock").clone()
    }

    /// Wakes this process's workers now (SQLite; PostgreSQL workers hear NOTIFY).
    pub fn wake(&self) {
        self.wake_now();
        self.wake_again.notify_one();
    }

    pub(super) fn wake_now(&self) {
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

    /// [`Jobs::push_once`] for a job that should run right after the one pushing it. Called
    /// from a job's handler, the new job is written already taken by this worker, and runs in
    /// the same task as soon as that handler returns: no wake-up, no fetch, no second trip
    /// through the queue. It is an ordinary row of the queue all the same: its key keeps it
    /// single, a failure schedules its retry like any job's, and if this process dies first,
    /// the worker's lease runs out and any process's worker runs it. Called from anywhere
    /// else, it is [`Jobs::push_once`].
    pub async fn push_once_here<J: JobKind>(
        &self,
        job: &J,
        request_id: &str,
        key: &str,
    ) -> Result<(), QueueError> {
        if held_by_current().is_none() {
            return self.push_once(job, request_id, key).await;
        }
        let job = Job {
            kind: J::KIND.to_string(),
            payload: serde_json::to_value(job).map_err(|e| QueueError::Push(e.to_string()))?,
            request_id: request_id.to_string(),
        };
        metrics::counter!("switchboard_jobs_pushed_total", "kind" => job.kind.clone()).increment(1);
        // Written with the pushing job's last write (an event's outcome), or on its own right
        // after the handler: one commit fewer on a message's way. A key pushed before (a
        // replay, a repeated split) is then a no-op, as with `push_once`: that job runs or ran
        // on its own.
        defer(ulid::Ulid::generate().to_string(), job, key.to_string());
        Ok(())
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
        let (pending, running, dead) = apalis_sql::count_by_state(&self.db).await?;
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

    /// How long the oldest waiting work has been due: a job whose run time has passed (a
    /// retry's backoff is not waiting), or a stored event not yet handed to the queue. Zero
    /// when nothing is due. A queue that drains keeps this near zero however deep it is.
    pub async fn oldest_due_age(&self) -> Result<Duration, QueueError> {
        let now_ms = crate::db::now_ms();
        let job_secs = apalis_sql::oldest_due(&self.db).await?;
        let event_ms: Option<i64> = on_pool!(&self.db, |p| {
            sqlx::query_scalar(
                "SELECT MIN(received_at) FROM inbox_events WHERE dispatched_at IS NULL AND status = 'received'",
            )
            .fetch_one(p)
            .await
        })?;
        let oldest_ms = [job_secs.map(|s| s * 1000), event_ms]
            .into_iter()
            .flatten()
            .min();
        Ok(oldest_ms
            .map(|at| Duration::from_millis(now_ms.saturating_sub(at).max(0) as u64))
            .unwrap_or_default())
    }

    /// Jobs, newest first; `dead_only` lists the dead letters.
    pub async fn list(&self, dead_only: bool, limit: i64) -> Result<Vec<JobRow>, QueueError> {
        let select = if dead_only {
            apalis_sql::Select::Dead
        } else {
            apalis_sql::Select::All
        };
        self.select(select, limit).await
    }

    /// Dead letters and the jobs whose last attempt failed, newest first.
    pub async fn failing(&self, limit: i64) -> Result<Vec<JobRow>, QueueError> {
        self.select(apalis_sql::Select::Failing, limit).await
    }

    /// The jobs the inbox events with these request ids caused, newest first.
    pub async fn for_requests(&self, request_ids: &[String]) -> Result<Vec<JobRow>, QueueError> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.select(apalis_sql::Select::Requests(request_ids), 1000)
            .await
    }

    /// The request ids of the dead letters (at most `limit`): the events whose work failed.
    pub async fn dead_request_ids(&self, limit: i64) -> Result<Vec<String>, QueueError> {
        Ok(apalis_sql::dead_request_ids(&self.db, limit).await?)
    }

    async fn select(
        &self,
        select: apalis_sql::Select<'_>,
        limit: i64,
    ) -> Result<Vec<JobRow>, QueueError> {
        let rows = apalis_sql::list(&self.db, select, limit.clamp(1, 1000)).await?;
        Ok(rows.into_iter().map(JobRow::from_listed).collect())
    }

    /// Puts dead letters (all, or one id) back on the queue with a fresh attempt budget.
    pub async fn retry(&self, id: Option<&str>) -> Result<u64, QueueError> {
        let n = apalis_sql::revive_dead(&self.db, id).await?;
        self.wake();
        Ok(n)
    }

    /// Seconds until a job's next attempt (tests and the admin page).
    pub async fn next_run_in_secs(&self, task_id: &str) -> Result<Option<i64>, QueueError> {
        Ok(apalis_sql::secs_until_run(&self.db, task_id).await?)
    }

    /// Makes every waiting retry due now (tests use it instead of sleeping through backoff).
    pub async fn make_due_now(&self) -> Result<(), QueueError> {
        apalis_sql::make_waiting_due(&self.db).await?;
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
        let secs = after.as_secs_f64().max(1.0);
        apalis_sql::replace_by_waiting_copy(&self.db, task_id, &copy, secs).await?;
        Ok(())
    }

    /// Makes the waiting job with idempotency key `key` due now (a postponed job whose turn
    /// has come), and wakes the workers of every process.
    pub async fn make_due_by_key(&self, key: &str) -> Result<(), QueueError> {
        apalis_sql::make_due_by_key(&self.db, key).await?;
        self.wake();
        Ok(())
    }

    /// Whether any job with one of these idempotency keys is still to run: waiting, running,
    /// or failed with attempts left. Done jobs and dead letters are not.
    pub async fn any_live(&self, keys: &[String]) -> Result<bool, QueueError> {
        if keys.is_empty() {
            return Ok(false);
        }
        Ok(apalis_sql::any_live(&self.db, keys).await?)
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
        Ok(apalis_sql::inbox_work_before(&self.db, source, before, needle).await?)
    }
}

fn is_duplicate_key(msg: &str) -> bool {
    msg.contains("duplicate key") || msg.contains("idempotency")
}

/// The error of a stored result, in the handler's words: apalis stores `{"Ok": null}` for a
/// success and `{"Err": "..."}` for a failure, and may prefix its own error type's name.
fn error_text(raw: &str) -> Option<String> {
    let text = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Null) => return None,
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(m)) if m.contains_key("Ok") => return None,
        Ok(serde_json::Value::Object(m)) => match m.get("Err") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => raw.to_string(),
        },
        _ => raw.to_string(),
    };
    let mut text = text.trim();
    // apalis' wrappers say how it treated the error, which the job's state already shows.
    for prefix in [
        "AbortError: ",
        "FailedError: ",
        "RetryError: ",
        "Abort: ",
        "Failed: ",
        "Task Failed: ",
        "Task Aborted: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim();
        }
    }
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[test]
    fn stored_results_read_as_the_handlers_words() {
        assert_eq!(error_text(r#"{"Ok":null}"#), None);
        assert_eq!(error_text("null"), None);
        assert_eq!(
            error_text(r#"{"Err":"AbortError: Bitrix24 app is not installed"}"#).as_deref(),
            Some("Bitrix24 app is not installed")
        );
        assert_eq!(error_text(r#""timed out""#).as_deref(), Some("timed out"));
    }
}
