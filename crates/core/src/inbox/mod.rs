//! The webhook inbox and audit log (SPEC §1.3).
//!
//! A bridge hands [`Inbox::record`] what arrived (source, dedupe key, raw body, headers) and
//! gets back [`Recorded::New`] or [`Recorded::Duplicate`] only after the row is durably
//! committed — so the 2xx that follows never acknowledges something a crash could lose.
//!
//! Commits are grouped: concurrent `record` calls queue for a writer that inserts a whole
//! batch in one transaction, so many acks share one fsync. On SQLite that writer is a thread of
//! its own with its own connection (`inbox/sqlite_writer.rs`); on PostgreSQL, a few tasks on
//! the pool (`inbox/postgres_writer.rs`). The row itself is the unit of work. Handing new rows
//! to the job queue is the dispatcher's job ([`dispatch_pending`], `inbox/dispatch.rs`), in its
//! own larger transactions in the processes that run workers, so that under load job rows and
//! their indexes stay off the ack path. One exception, on SQLite: while this process's worker
//! has room for more, the writer writes a new row's job, taken by that worker, and claims the
//! row for it in the ack's own commit ([`Inbox::hand_to`]), since a lone message otherwise
//! waited for a second commit before its work began. A row stays `dispatched_at IS NULL` until
//! its job is committed, so a crash at any point leaves it to be handed over again.

use std::{collections::HashMap, sync::Arc, time::Instant};

use axum::http::HeaderMap;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{
    db::{Db, now_ms},
    jobs::EnqueueInTx,
    on_pool,
};
use process::AsTx as _;

mod dispatch;
mod postgres_writer;
mod process;
mod sqlite_writer;

pub use dispatch::{dispatch_pending, spawn_dispatcher};
pub use process::{
    OutcomeWrite, ProcessEvent, ProcessOutcome, Processor, Processors, write_with_outcome,
};

/// What became of an inbound call. Stored as lower-case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Received,
    Processed,
    Duplicate,
    Skipped,
    Rejected,
    Failed,
    BlockedWindow,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Received,
        Status::Processed,
        Status::Duplicate,
        Status::Skipped,
        Status::Rejected,
        Status::Failed,
        Status::BlockedWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Processed => "processed",
            Status::Duplicate => "duplicate",
            Status::Skipped => "skipped",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::BlockedWindow => "blocked_window",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// One inbound call as a bridge describes it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub request_id: String,
    /// `meta`, `bitrix`, `wabridges`, … — each source has its own dedupe key space.
    pub source: String,
    pub route: String,
    /// `None` for calls that are not deduplicated (rejected calls, envelopes).
    pub dedupe_key: Option<String>,
    pub body: Vec<u8>,
    /// The kept headers as JSON object text ([`crate::http::audit_headers`]).
    pub headers: String,
    /// `Received` for work to do; `Rejected`/`Skipped` are recorded and not processed.
    pub status: Status,
    pub error: Option<String>,
    /// When the request started, for the audit row's duration.
    pub started: Instant,
    /// Set when `body` holds only the head of what arrived: the whole body's length in bytes
    /// and its SHA-256 (hex).
    pub body_size: Option<i64>,
    pub body_sha256: Option<String>,
}

/// How much of a refused call's body is kept. Anyone can send one, so its body is not stored
/// whole (that let strangers fill the disk); the head shows what it was.
pub const REFUSED_HEAD_BYTES: usize = 4096;

impl Incoming {
    pub fn new(
        request_id: &str,
        source: &str,
        route: &str,
        body: &[u8],
        headers: &HeaderMap,
    ) -> Self {
        Self {
            request_id: request_id.to_string(),
            source: source.to_string(),
            route: route.to_string(),
            dedupe_key: None,
            body: body.to_vec(),
            headers: crate::http::audit_headers(headers),
            status: Status::Received,
            error: None,
            started: Instant::now(),
            body_size: None,
            body_sha256: None,
        }
    }

    pub fn dedupe(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// A refused call: kept as its first [`REFUSED_HEAD_BYTES`] (cut back to a character
    /// boundary when that falls inside one; bytes that are not UTF-8 are kept as they are) with
    /// the whole body's size and SHA-256.
    pub fn rejected(mut self, why: impl Into<String>) -> Self {
        use sha2::Digest;
        self.status = Status::Rejected;
        self.error = Some(why.into());
        self.body_size = Some(self.body.len() as i64);
        self.body_sha256 = Some(hex::encode(sha2::Sha256::digest(&self.body)));
        self.body.truncate(head_len(&self.body, REFUSED_HEAD_BYTES));
        self.body.shrink_to_fit();
        self
    }

    pub fn skipped(mut self, why: impl Into<String>) -> Self {
        self.status = Status::Skipped;
        self.error = Some(why.into());
        self
    }
}

/// Where to cut `body` to keep at most `max` bytes: before a UTF-8 character the cut would split.
fn head_len(body: &[u8], max: usize) -> usize {
    if body.len() <= max {
        return body.len();
    }
    match std::str::from_utf8(&body[..max]) {
        // Only the last character is incomplete: the text up to it is whole.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => max,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First time this key was seen: process row `id`.
    New(i64),
    /// Already seen: the audit row `id` is marked duplicate, nothing downstream.
    Duplicate(i64),
    /// Stored as rejected or skipped; nothing to process.
    Logged(i64),
}

impl Recorded {
    pub fn id(self) -> i64 {
        match self {
            Recorded::New(id) | Recorded::Duplicate(id) | Recorded::Logged(id) => id,
        }
    }
}

/// A stored event as processors and the admin pages see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    pub id: i64,
    pub request_id: String,
    pub source: String,
    pub route: String,
    pub dedupe_key: Option<String>,
    pub status: String,
    #[serde(skip)]
    pub body: Vec<u8>,
    pub headers: String,
    pub received_at: i64,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub attempts: i64,
    pub processed_at: Option<i64>,
    /// Set when `body` is only the head of what arrived (a refused call): the whole body's
    /// length and SHA-256 (hex).
    pub body_size: Option<i64>,
    pub body_sha256: Option<String>,
}

/// What the event list selects; every part is optional.
#[derive(Debug, Default, Clone)]
pub struct EventQuery<'a> {
    /// Compared without regard to case.
    pub source: Option<&'a str>,
    pub status: Option<Status>,
    /// Request ids whose work failed for good (their jobs' dead letters): their events count
    /// as `failed` whatever their own row says.
    pub failed_requests: &'a [String],
    /// Received at or after, Unix milliseconds.
    pub since_ms: Option<i64>,
    /// Received before, Unix milliseconds.
    pub until_ms: Option<i64>,
    /// A request id or dedupe key, or text anywhere in the stored body (a phone number, a
    /// wamid, a Bitrix id).
    pub text: Option<&'a str>,
    /// Rows older than this id (paging).
    pub before: Option<i64>,
}

/// A value bound into [`Inbox::list_previews`]'s statement.
enum Bind {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    List(Vec<String>),
}

/// One source's recent traffic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Traffic {
    pub source: String,
    pub last_hour: i64,
    pub last_day: i64,
    pub last_received_at: Option<i64>,
}

/// A row as the event list shows it: `event.body` holds only the first bytes of the stored body.
#[derive(Debug, Clone)]
pub struct EventPreview {
    pub event: StoredEvent,
    /// Length of the stored body in bytes.
    pub stored_len: i64,
}

impl StoredEvent {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Every column but the body, which is read whole ([`Inbox::get`]) or as a preview.
const EVENT_COLUMNS: &str = "id, request_id, source, route, COALESCE(dedupe_key, dedupe_ref) AS dedupe_key, status, headers, received_at, duration_ms, error, attempts, processed_at, body_size, body_sha256";

/// How much of each body the event list reads. A constant in the SQL text: PostgreSQL's
/// `substr(bytea, int, int)` would not take a bound `int8`.
pub const PREVIEW_BYTES: usize = 512;

fn event_from_row<R>(r: &R) -> Result<StoredEvent, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredEvent {
        id: r.try_get("id")?,
        request_id: r.try_get("request_id")?,
        source: r.try_get("source")?,
        route: r.try_get("route")?,
        dedupe_key: r.try_get("dedupe_key")?,
        status: r.try_get("status")?,
        body: r.try_get("body")?,
        headers: r.try_get("headers")?,
        received_at: r.try_get("received_at")?,
        duration_ms: r.try_get("duration_ms")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        processed_at: r.try_get("processed_at")?,
        body_size: r.try_get("body_size")?,
        body_sha256: r.try_get("body_sha256")?,
    })
}

/// The result of trying to claim a row for processing.
#[derive(Debug)]
pub enum Claim {
    Mine(Box<StoredEvent>),
    /// Already processed (or gone): a repeated hand-off, nothing to do.
    Finished,
    /// Someone holds a live claim — possibly a worker that died mid-job, whose lease must run
    /// out before the row can be taken over. Try again later; never drop the row.
    HeldElsewhere,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("inbox database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("inbox writer stopped")]
    WriterGone,
    #[error("inbox commit failed: {0}")]
    Commit(Arc<str>),
}

/// The answer travels with the caller's own [`Incoming`], so its buffers are freed by the thread
/// that allocated them. Freed on the writer's thread instead, each one took the allocating
/// arena's lock and contended with the HTTP workers (profiled: glibc's `_int_free` was the
/// writer's biggest cost after SQLite).
type Reply = oneshot::Sender<(RecordResult, Incoming)>;

/// One caller's answer. The error is the batch's: the whole batch failed together.
type RecordResult = Result<Recorded, Arc<str>>;

/// How many waiting calls one commit takes at most. Large enough to amortise the fsync, small
/// enough that one transaction never holds the SQLite write lock for long.
const MAX_BATCH: usize = 256;

#[derive(Clone)]
pub struct Inbox {
    db: Db,
    tx: mpsc::Sender<(Incoming, Reply)>,
    /// Wakes this process's dispatcher when rows need handing to the job queue.
    pub(crate) new_work: Arc<Notify>,
    /// Rows the dispatcher claimed in the transaction that handed them to this process's
    /// worker, by the task id of their job: that job starts on them without a claim of its
    /// own, one commit fewer between the ack and the work.
    preclaimed: Preclaimed,
    /// This process's jobs, once it runs workers: the SQLite writer hands new rows straight
    /// to their worker ([`Inbox::hand_to`]).
    hand_off: HandOff,
}

/// Rows claimed for a job when it was handed over, by the job's task id, with when.
type Preclaimed = Arc<std::sync::Mutex<HashMap<String, (Instant, StoredEvent)>>>;

/// Keeps `event`, claimed for job `task_id`, for that job to start on. An entry whose job never
/// started (its worker stopped first) is dropped once its claim has lapsed: the job, run later
/// by any worker, claims the row again.
fn keep_preclaimed(held: &Preclaimed, task_id: String, event: StoredEvent) {
    let lease = std::time::Duration::from_millis(process::CLAIM_LEASE_MS as u64);
    let mut held = held.lock().expect("preclaimed lock");
    held.retain(|_, (at, _)| at.elapsed() < lease);
    held.insert(task_id, (Instant::now(), event));
}

/// The jobs a writer hands new rows to, set once the process runs workers.
type HandOff = Arc<std::sync::OnceLock<crate::jobs::Jobs>>;

impl Inbox {
    /// Starts the group-commit writer. The dispatcher is woken after each commit that stored
    /// new work.
    pub fn start(db: Db) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let new_work = Arc::new(Notify::new());
        let preclaimed = Preclaimed::default();
        let hand_off = HandOff::default();
        match &db {
            // SQLite has one writer at a time whatever we do, so one thread batches best.
            Db::Sqlite(pool) => {
                let path = pool.connect_options().get_filename().to_path_buf();
                let writer = sqlite_writer::Writer {
                    new_work: new_work.clone(),
                    hand_off: hand_off.clone(),
                    preclaimed: preclaimed.clone(),
                };
                if let Err(e) = sqlite_writer::spawn(path, rx, writer) {
                    // Every record() then fails with WriterGone: acks answer 5xx, nothing is
                    // acknowledged unstored.
                    tracing::error!(error = %e, "inbox writer thread failed to start");
                }
            }
            // PostgreSQL commits concurrent transactions in parallel: a few writers keep its
            // round trips and fsyncs overlapping (dedupe stays exact: the unique index
            // arbitrates between them).
            Db::Postgres(pool) => {
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                for _ in 0..postgres_writer::WRITERS {
                    tokio::spawn(postgres_writer::run(
                        pool.clone(),
                        rx.clone(),
                        new_work.clone(),
                    ));
                }
            }
        }
        Self {
            db,
            tx,
            new_work,
            preclaimed,
            hand_off,
        }
    }

    /// From now on, new rows may go straight to `jobs`' worker: the SQLite writer writes each
    /// one's job, taken by that worker and with the row claimed for it, in the commit that
    /// stores the row, while the worker has room. A message then waits for one commit before
    /// it is processed, not two (the ack's, then the dispatcher's). PostgreSQL's writers store
    /// a batch in one statement without a transaction of their own, and leave new rows to the
    /// dispatcher.
    pub(crate) fn hand_to(&self, jobs: &crate::jobs::Jobs) {
        let _ = self.hand_off.set(jobs.clone());
    }

    /// Keeps `event`, claimed for job `task_id`, for that job to start on.
    fn preclaimed(&self, task_id: String, event: StoredEvent) {
        keep_preclaimed(&self.preclaimed, task_id, event);
    }

    /// The row claimed for job `task_id` when it was handed over, if it is row `id`.
    fn take_preclaimed(&self, task_id: &str, id: i64) -> Option<StoredEvent> {
        let mut held = self.preclaimed.lock().expect("preclaimed lock");
        if held.get(task_id).is_some_and(|(_, e)| e.id == id) {
            held.remove(task_id).map(|(_, e)| e)
        } else {
            None
        }
    }

    /// Durably records one inbound call. Returns only after the commit.
    pub async fn record(&self, incoming: Incoming) -> Result<Recorded, InboxError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((incoming, reply))
            .await
            .map_err(|_| InboxError::WriterGone)?;
        let (outcome, incoming) = wait.await.map_err(|_| InboxError::WriterGone)?;
        drop(incoming);
        let recorded = outcome.map_err(InboxError::Commit)?;
        if let Recorded::New(_) = recorded {
            metrics::counter!("switchboard_webhooks_total", "outcome" => "new").increment(1);
        } else if let Recorded::Duplicate(_) = recorded {
            metrics::counter!("switchboard_webhooks_total", "outcome" => "duplicate").increment(1);
        } else {
            metrics::counter!("switchboard_webhooks_total", "outcome" => "logged").increment(1);
        }
        Ok(recorded)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn get(&self, id: i64) -> Result<Option<StoredEvent>, InboxError> {
        let sql = format!("SELECT {EVENT_COLUMNS}, body FROM inbox_events WHERE id = $1");
        Ok(on_pool!(&self.db, |p| {
            match sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .fetch_optional(p)
                .await?
            {
                Some(r) => Some(event_from_row(&r)?),
                None => None,
            }
        }))
    }

    /// Newest first, optionally filtered; `before` pages by id.
    pub async fn list(
        &self,
        source: Option<&str>,
        status: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, InboxError> {
        let query = EventQuery {
            source,
            status: status.and_then(Status::parse),
            before,
            ..EventQuery::default()
        };
        let rows = self.select_page("body", &query, limit).await?;
        Ok(rows.into_iter().map(|(event, _)| event).collect())
    }

    /// The rows `query` selects, newest first, with only the first [`PREVIEW_BYTES`] of each
    /// body, cut by the database: a page of large bodies costs the page's size, not the bodies'.
    pub async fn list_previews(
        &self,
        query: &EventQuery<'_>,
        limit: i64,
    ) -> Result<Vec<EventPreview>, InboxError> {
        let body = format!("substr(body, 1, {PREVIEW_BYTES}) AS body");
        let rows = self.select_page(&body, query, limit).await?;
        Ok(rows
            .into_iter()
            .map(|(event, stored_len)| EventPreview { event, stored_len })
            .collect())
    }

    /// A page of rows with `body` read as the expression `body_column`, and each stored
    /// body's length.
    async fn select_page(
        &self,
        body_column: &str,
        query: &EventQuery<'_>,
        limit: i64,
    ) -> Result<Vec<(StoredEvent, i64)>, InboxError> {
        let postgres = matches!(self.db, Db::Postgres(_));
        let mut binds: Vec<Bind> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        let param = |b: Bind, binds: &mut Vec<Bind>| {
            binds.push(b);
            format!("${}", binds.len())
        };
        let in_list = |p: &str| {
            if postgres {
                format!("request_id = ANY({p})")
            } else {
                format!("request_id IN (SELECT value FROM json_each({p}))")
            }
        };
        if let Some(source) = query.source.map(str::trim).filter(|s| !s.is_empty()) {
            let p = param(Bind::Text(source.to_lowercase()), &mut binds);
            conditions.push(format!("lower(source) = {p}"));
        }
        match query.status {
            // Failed: processing failed, or a job it caused is a dead letter.
            Some(Status::Failed) if !query.failed_requests.is_empty() => {
                let p = param(Bind::List(query.failed_requests.to_vec()), &mut binds);
                conditions.push(format!("(status = 'failed' OR {})", in_list(&p)));
            }
            Some(Status::Processed) if !query.failed_requests.is_empty() => {
                let p = param(Bind::List(query.failed_requests.to_vec()), &mut binds);
                conditions.push(format!("status = 'processed' AND NOT {}", in_list(&p)));
            }
            Some(status) => {
                let p = param(Bind::Text(status.as_str().to_string()), &mut binds);
                conditions.push(format!("status = {p}"));
            }
            None => {}
        }
        if let Some(since) = query.since_ms {
            let p = param(Bind::Int(since), &mut binds);
            conditions.push(format!("received_at >= {p}"));
        }
        if let Some(until) = query.until_ms {
            let p = param(Bind::Int(until), &mut binds);
            conditions.push(format!("received_at < {p}"));
        }
        if let Some(text) = query.text.map(str::trim).filter(|s| !s.is_empty()) {
            // A request id or dedupe key whole, or a phone number, wamid or Bitrix id
            // anywhere in the stored body.
            let exact = param(Bind::Text(text.to_string()), &mut binds);
            let bytes = param(Bind::Bytes(text.as_bytes().to_vec()), &mut binds);
            let contains = if postgres {
                format!("position({bytes} IN body) > 0")
            } else {
                format!("instr(body, {bytes}) > 0")
            };
            conditions.push(format!(
                "(request_id = {exact} OR dedupe_key = {exact} OR dedupe_ref = {exact} OR {contains})"
            ));
        }
        if let Some(before) = query.before {
            let p = param(Bind::Int(before), &mut binds);
            conditions.push(format!("id < {p}"));
        }
        let limit = param(Bind::Int(limit.clamp(1, 500)), &mut binds);
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, {body_column}, CAST(length(body) AS BIGINT) AS stored_len
             FROM inbox_events {filter} ORDER BY id DESC LIMIT {limit}"
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let rows = match &self.db {
            Db::Sqlite(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = match b {
                        Bind::Int(v) => q.bind(v),
                        Bind::Text(v) => q.bind(v),
                        Bind::Bytes(v) => q.bind(v),
                        Bind::List(v) => q.bind(serde_json::to_string(&v).unwrap_or_default()),
                    };
                }
                let rows = q.fetch_all(p).await?;
                rows.iter()
                    .map(|r| Ok((event_from_row(r)?, sqlx::Row::try_get(r, "stored_len")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Db::Postgres(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = match b {
                        Bind::Int(v) => q.bind(v),
                        Bind::Text(v) => q.bind(v),
                        Bind::Bytes(v) => q.bind(v),
                        Bind::List(v) => q.bind(v),
                    };
                }
                let rows = q.fetch_all(p).await?;
                rows.iter()
                    .map(|r| Ok((event_from_row(r)?, sqlx::Row::try_get(r, "stored_len")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        };
        Ok(rows)
    }

    /// Per source: events received since `day_ms` and since `hour_ms`, and when the last one
    /// arrived (at any time).
    pub async fn traffic(
        &self,
        sources: &[&str],
        hour_ms: i64,
        day_ms: i64,
    ) -> Result<Vec<Traffic>, InboxError> {
        let mut out = Vec::with_capacity(sources.len());
        for source in sources {
            let (day, hour): (i64, i64) = on_pool!(&self.db, |p| {
                sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN received_at >= $2 THEN 1 ELSE 0 END), 0)
                 FROM inbox_events WHERE source = $1 AND received_at >= $3"
            )
            .bind(*source)
            .bind(hour_ms)
            .bind(day_ms)
            .fetch_one(p)
            .await
            })?;
            // Ids grow with time: the newest row of a source is the first one met walking the
            // primary key down, with no scan of the whole table for a busy source.
            let last: Option<(i64,)> = on_pool!(&self.db, |p| {
                sqlx::query_as(
                "SELECT received_at FROM inbox_events WHERE source = $1 ORDER BY id DESC LIMIT 1"
            )
            .bind(*source)
            .fetch_optional(p)
            .await
            })?;
            out.push(Traffic {
                source: source.to_string(),
                last_hour: hour,
                last_day: day,
                last_received_at: last.map(|(t,)| t),
            });
        }
        Ok(out)
    }

    pub async fn count_by_status(&self) -> Result<HashMap<String, i64>, InboxError> {
        let rows: Vec<(String, i64)> = on_pool!(&self.db, |p| sqlx::query_as(
            "SELECT status, COUNT(*) FROM inbox_events GROUP BY status"
        )
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().collect())
    }

    /// Claims row `id` for processing for `lease_ms`. A row the dispatcher claimed for job
    /// `task_id` when it handed it over ([`Inbox::preclaimed`]) is this job's already.
    pub async fn claim(&self, id: i64, lease_ms: i64, task_id: &str) -> Result<Claim, InboxError> {
        if let Some(event) = self.take_preclaimed(task_id, id) {
            return Ok(Claim::Mine(Box::new(event)));
        }
        let now = now_ms();
        let sql = claim_sql();
        let claimed = on_pool!(&self.db, |p| {
            match sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(now + lease_ms)
                .bind(id)
                .bind(now)
                .fetch_optional(p)
                .await?
            {
                Some(r) => Some(event_from_row(&r)?),
                None => None,
            }
        });
        if let Some(event) = claimed {
            return Ok(Claim::Mine(Box::new(event)));
        }
        Ok(match self.get(id).await? {
            Some(ev) if ev.status == "received" || ev.status == "failed" => Claim::HeldElsewhere,
            _ => Claim::Finished,
        })
    }

    /// Records the outcome of processing and releases the claim. Called from the job that
    /// processed the event, it also writes, in the same transaction, what processing left for
    /// it ([`write_with_outcome`]) and the jobs it pushed to run next
    /// ([`crate::jobs::Jobs::push_once_here`]): the outcome, what was learnt and the work it
    /// leads to are committed together, in one commit instead of one each.
    pub async fn finish(
        &self,
        id: i64,
        status: Status,
        error: Option<&str>,
    ) -> Result<(), InboxError> {
        const SQL: &str = "UPDATE inbox_events SET status = $1, error = $2, processed_at = $3, claimed_until = NULL WHERE id = $4";
        let processed_at = (status != Status::Failed).then(now_ms);
        // Taken out now: if this fails, the event is processed again and pushes them again.
        let carried = crate::jobs::take_unwritten();
        let writes = process::take_outcome_writes();
        let written = on_pool!(&self.db, |p| {
            let mut tx = p.begin().await?;
            for write in writes {
                write(tx.as_tx()).await?;
            }
            sqlx::query(SQL)
                .bind(status.as_str())
                .bind(error)
                .bind(processed_at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // Per carried job: written now (false: its key was pushed before).
            let mut written = Vec::new();
            if let Some((worker, jobs)) = &carried {
                for u in jobs {
                    written.push(tx.enqueue_taken(&u.job, &u.key, &u.task_id, worker).await?);
                }
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(written)
        })?;
        for (u, written) in carried.into_iter().flat_map(|(_, jobs)| jobs).zip(written) {
            if written {
                crate::jobs::hold(u.task_id, u.job);
            }
        }
        metrics::counter!("switchboard_events_processed_total", "status" => status.as_str())
            .increment(1);
        Ok(())
    }

    /// Puts stored rows back to `received` and undispatched so they are processed again.
    /// Replay is idempotent because every processor deduplicates its own effects.
    pub async fn replay(&self, ids: &[i64]) -> Result<u64, InboxError> {
        let mut n = 0;
        for id in ids {
            n += on_pool!(&self.db, |p| {
                sqlx::query(
                "UPDATE inbox_events SET status = 'received', dispatched_at = NULL, claimed_until = NULL, error = NULL, replays = replays + 1
                 WHERE id = $1 AND status NOT IN ('duplicate', 'rejected')"
            )
            .bind(id)
            .execute(p)
            .await.map(|r| r.rows_affected())
            })?;
        }
        self.new_work.notify_one();
        Ok(n)
    }

    /// Ids matching a replay selection (source and/or since a time), oldest first.
    pub async fn select_for_replay(
        &self,
        source: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<i64>, InboxError> {
        let rows: Vec<(i64,)> = on_pool!(&self.db, |p| {
            sqlx::query_as(
            "SELECT id FROM inbox_events WHERE ($1 IS NULL OR source = $1) AND ($2 IS NULL OR received_at >= $2)
               AND status NOT IN ('duplicate', 'rejected') ORDER BY id"
        )
        .bind(source)
        .bind(since_ms)
        .fetch_all(p)
        .await
        })?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Deletes finished rows older than the cut-off (PII retention), refused calls included.
    /// Unfinished and failed rows are kept whatever their age: deleting them would lose work.
    pub async fn prune(&self, older_than_ms: i64) -> Result<u64, InboxError> {
        let cutoff = now_ms() - older_than_ms;
        Ok(on_pool!(&self.db, |p| {
            sqlx::query(
                "DELETE FROM inbox_events WHERE received_at < $1
                 AND status IN ('processed', 'duplicate', 'skipped', 'rejected', 'blocked_window')",
            )
            .bind(cutoff)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })?)
    }
}

/// The claim of row `$2` for `$1` (lease end) at time `$3`; it hands the row back in the same
/// statement, so no second read stands between the claim and the processing.
fn claim_sql() -> String {
    format!(
        "UPDATE inbox_events SET claimed_until = $1, attempts = attempts + 1
         WHERE id = $2 AND status IN ('received', 'failed')
           AND (claimed_until IS NULL OR claimed_until < $3)
         RETURNING {EVENT_COLUMNS}, body"
    )
}

/// Metrics, the dispatcher's wake-up, the log line for a failed commit, then each caller's
/// answer: the same for both engines' writers. `handed`: how many of the new rows the writer
/// handed to a worker itself; the dispatcher is woken only for the rest.
fn deliver(
    began: Instant,
    outcomes: Vec<RecordResult>,
    items: Vec<Incoming>,
    replies: Vec<Reply>,
    new_work: &Notify,
    handed: usize,
) {
    metrics::histogram!("switchboard_inbox_commit_seconds").record(began.elapsed().as_secs_f64());
    metrics::histogram!("switchboard_inbox_batch_size").record(outcomes.len() as f64);
    let new = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Recorded::New(_))))
        .count();
    if new > handed {
        new_work.notify_one();
    }
    if let Some(Err(e)) = outcomes.iter().find(|o| o.is_err()) {
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        tracing::error!(error = %e, rows = failed, "inbox batch commit failed");
    }
    for ((reply, outcome), item) in replies.into_iter().zip(outcomes).zip(items) {
        let _ = reply.send((outcome, item));
    }
}
