//! The SQLite group-commit writer: one thread that owns its own connection and writes each
//! batch synchronously, start to commit.
//!
//! Not through sqlx: sqlx-sqlite runs every statement on a per-connection worker thread and
//! sends each result row back over a channel, so one commit was a dozen thread hand-offs. With
//! both cores busy serving HTTP every hand-off waited for a time slice, and that wait, not the
//! fsync, set the ack rate (measured: 2.7 ms per 16-row commit against a 0.35 ms fsync). Here
//! the thread that takes a batch off the queue is the one that writes it, and the rest of the
//! product keeps using sqlx. Both link the same SQLite library (`libsqlite3-sys`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{Notify, mpsc};

use super::{
    HandOff, Incoming, MAX_BATCH, Preclaimed, RecordResult, Recorded, Reply, Status, StoredEvent,
    deliver,
};
use crate::{
    db::now_ms,
    jobs::{Job, Lane, LaneSlot},
};

/// As long as the sqlx pool waits for the lock, so both sides give up alike.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the writer retries a write lock that a worker holds.
const LOCK_POLL: Duration = Duration::from_micros(200);

/// Every row of a batch goes through this one statement: new work, duplicates, refusals.
/// A keyed row that conflicts inserts nothing and is stored again as a duplicate.
///
/// No RETURNING: SQLite implements it as a trigger that fills a temporary table, and a statement
/// with a trigger gets a statement journal that copies every page it touches. Together they
/// were about a third of the writer's instructions (callgrind); the row count and the last
/// rowid say the same.
const INSERT_ONE: &str = "INSERT INTO inbox_events (request_id, source, route, dedupe_key, dedupe_ref, status, body, headers, received_at, duration_ms, error, dispatched_at, body_size, body_sha256)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (source, dedupe_key) DO NOTHING";

/// What the writer tells, and hands new rows to, once a batch is committed.
pub(super) struct Writer {
    pub(super) new_work: Arc<Notify>,
    pub(super) hand_off: HandOff,
    pub(super) preclaimed: Preclaimed,
}

pub(super) fn spawn(
    path: PathBuf,
    rx: mpsc::Receiver<(Incoming, Reply)>,
    writer: Writer,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("inbox-writer".into())
        .spawn(move || run(&path, rx, &writer))
        .map(drop)
}

/// A new row whose job was written in the batch's transaction, taken by this process's worker,
/// with the row claimed for it: run once the commit lands.
struct Handed {
    task_id: String,
    job: Job,
    slot: LaneSlot,
    event: StoredEvent,
}

/// Ends when every [`super::Inbox`] handle is gone. The connection is not the pool's, so
/// closing the pool at shutdown never waits for this thread.
fn run(path: &Path, mut rx: mpsc::Receiver<(Incoming, Reply)>, writer: &Writer) {
    let mut conn: Option<Connection> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<Incoming>, Vec<Reply>) = batch.drain(..).unzip();
        let began = Instant::now();
        let lane = writer.hand_off.get().and_then(|jobs| jobs.lane());
        let mut handed = Vec::new();
        let outcomes: Vec<RecordResult> =
            match commit(&mut conn, path, &items, lane.as_ref(), &mut handed) {
                Ok(recorded) => recorded.into_iter().map(Ok).collect(),
                Err(e) => {
                    // Start the next batch on a fresh connection: this one may be in any state.
                    conn = None;
                    // Nothing of the batch was stored: its slots go back unused.
                    handed.clear();
                    let e: Arc<str> = e.to_string().into();
                    items.iter().map(|_| Err(e.clone())).collect()
                }
            };
        let handed_n = handed.len();
        if let Some(lane) = &lane {
            for h in handed {
                // Kept before the job can start, so it finds its row claimed.
                super::keep_preclaimed(&writer.preclaimed, h.task_id.clone(), h.event);
                lane.run(h.task_id, h.job, h.slot);
            }
        }
        deliver(began, outcomes, items, replies, &writer.new_work, handed_n);
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    // The pool opened (and migrated) the file first and set it to WAL, which the file keeps.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // SQLite's own wait sleeps 1, 2, 5, 10 … 100 ms between tries, sized for contention that
    // lasts. Workers hold the lock for well under a millisecond, and every ack in the batch
    // waits out the writer's sleep: poll in short steps instead, so acks go first.
    conn.busy_handler(Some(wait_for_write_lock))?;
    // FULL: an acknowledged webhook survives power loss, not just a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn wait_for_write_lock(attempt: i32) -> bool {
    std::thread::sleep(LOCK_POLL);
    (attempt as u128) < BUSY_TIMEOUT.as_micros() / LOCK_POLL.as_micros()
}

/// One transaction for the whole batch, rows in arrival order, so a key repeated within the
/// batch is new once and a duplicate after that, as across batches.
fn commit(
    conn: &mut Option<Connection>,
    path: &Path,
    items: &[Incoming],
    lane: Option<&Lane>,
    handed: &mut Vec<Handed>,
) -> rusqlite::Result<Vec<Recorded>> {
    let conn = match conn {
        Some(c) => c,
        None => conn.insert(open(path)?),
    };
    let now = now_ms();
    // Prepared once per connection, not parsed per batch. On an error the caller drops the
    // connection, which rolls back whatever is open.
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let mut out = Vec::with_capacity(items.len());
    {
        let mut insert = conn.prepare_cached(INSERT_ONE)?;
        // Every row binds the item's own columns; only these five differ between the cases.
        let mut store = |i: &Incoming,
                         key: Option<&str>,
                         dedupe_ref: Option<&str>,
                         status: Status,
                         error: Option<&str>,
                         dispatched_at: Option<i64>|
         -> rusqlite::Result<Option<i64>> {
            let inserted = insert.execute(params![
                i.request_id,
                i.source,
                i.route,
                key,
                dedupe_ref,
                status.as_str(),
                i.body,
                i.headers,
                now,
                i.started.elapsed().as_millis() as i64,
                error,
                dispatched_at,
                i.body_size,
                i.body_sha256,
            ])? == 1;
            Ok(inserted.then(|| conn.last_insert_rowid()))
        };
        for i in items {
            let work = i.status == Status::Received;
            if work && let Some(key) = i.dedupe_key.as_deref() {
                let new = store(
                    i,
                    Some(key),
                    Some(key),
                    Status::Received,
                    i.error.as_deref(),
                    None,
                )?;
                if let Some(id) = new {
                    out.push(Recorded::New(id));
                    if let Some(h) = hand(conn, lane, i, id, now)? {
                        handed.push(h);
                    }
                    continue;
                }
                // Seen before: kept for the audit log under dedupe_ref only, nothing to do.
                let id = store(i, None, Some(key), Status::Duplicate, None, Some(now))?
                    .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                out.push(Recorded::Duplicate(id));
                continue;
            }
            // Keyless work, or a refusal; a NULL key never conflicts. Rows with nothing to do
            // are stored as already dispatched, so the dispatcher's index never sees them.
            let id = store(
                i,
                None,
                i.dedupe_key.as_deref(),
                i.status,
                i.error.as_deref(),
                (!work).then_some(now),
            )?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            out.push(if work {
                if let Some(h) = hand(conn, lane, i, id, now)? {
                    handed.push(h);
                }
                Recorded::New(id)
            } else {
                Recorded::Logged(id)
            });
        }
    }
    conn.prepare_cached("COMMIT")?.execute([])?;
    Ok(out)
}

/// Marks new row `id` dispatched and claimed, and writes its job taken by `lane`'s worker, in
/// the batch's transaction, if the worker has room for one more job now. As the dispatcher
/// does it, in the ack's commit instead of a commit of its own.
///
/// Never fails the batch: the acknowledgements must not depend on the job queue. A hand-off
/// that can't be written (the worker, just restarted after an outage, is not registered yet,
/// and its job row would name an unknown worker) is undone alone, and the row waits for the
/// dispatcher as it would have.
fn hand(
    conn: &Connection,
    lane: Option<&Lane>,
    incoming: &Incoming,
    id: i64,
    now: i64,
) -> rusqlite::Result<Option<Handed>> {
    let Some((lane, slot)) = lane.and_then(|l| l.try_slot().map(|s| (l, s))) else {
        return Ok(None);
    };
    conn.prepare_cached("SAVEPOINT hand_off")?.execute([])?;
    match write_hand_off(conn, lane, slot, incoming, id, now) {
        Ok(handed) => {
            conn.prepare_cached("RELEASE hand_off")?.execute([])?;
            Ok(handed)
        }
        Err(e) => {
            tracing::debug!(error = %e, "new inbox row left to the dispatcher");
            conn.prepare_cached("ROLLBACK TO hand_off")?.execute([])?;
            conn.prepare_cached("RELEASE hand_off")?.execute([])?;
            Ok(None)
        }
    }
}

fn write_hand_off(
    conn: &Connection,
    lane: &Lane,
    slot: LaneSlot,
    incoming: &Incoming,
    id: i64,
    now: i64,
) -> rusqlite::Result<Option<Handed>> {
    let (job, key) =
        super::dispatch::process_event_job(id, &incoming.source, &incoming.request_id, 0);
    let task_id = ulid::Ulid::generate().to_string();
    let bytes = crate::jobs::job_bytes(&job)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let written = conn.prepare_cached(taken_job_sql())?.execute(params![
        bytes,
        task_id,
        crate::jobs::QUEUE,
        crate::jobs::MAX_ATTEMPTS as i64,
        key,
        lane.worker,
    ])? == 1;
    if !written {
        // Its key was taken before (a copy of this database restored over a newer queue?):
        // the dispatcher hands the row over as it would any other.
        return Ok(None);
    }
    let lease_end = now + super::process::CLAIM_LEASE_MS;
    conn.prepare_cached(CLAIM_NEW)?
        .execute(params![now, lease_end, id])?;
    let event = StoredEvent {
        id,
        request_id: incoming.request_id.clone(),
        source: incoming.source.clone(),
        route: incoming.route.clone(),
        dedupe_key: incoming.dedupe_key.clone(),
        status: Status::Received.as_str().to_string(),
        body: incoming.body.clone(),
        headers: incoming.headers.clone(),
        received_at: now,
        duration_ms: Some(incoming.started.elapsed().as_millis() as i64),
        error: incoming.error.clone(),
        attempts: 1,
        processed_at: None,
        body_size: incoming.body_size,
        body_sha256: incoming.body_sha256.clone(),
    };
    Ok(Some(Handed {
        task_id,
        job,
        slot,
        event,
    }))
}

/// A new row handed to a worker: dispatched, and claimed for its job as the dispatcher's claim
/// would ([`super::claim_sql`]).
const CLAIM_NEW: &str = "UPDATE inbox_events SET dispatched_at = ?1, claimed_until = ?2, attempts = attempts + 1 WHERE id = ?3";

/// The job queue's own statement for a row taken by a worker, built once.
fn taken_job_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| crate::jobs::insert_taken_sql(true))
}
