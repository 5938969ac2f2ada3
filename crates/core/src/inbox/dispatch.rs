//! The dispatcher: turns stored inbox rows into `core.process-event` jobs. The ack commits the
//! row (on SQLite, with its job when this process's worker had room: see [`Inbox::hand_to`]);
//! this hands the rest to the job queue later, in larger transactions of its own, in the
//! processes that run workers.

use std::time::Duration;

use super::{Inbox, process::ProcessEvent};
use crate::{
    db::{Db, now_ms},
    jobs::{EnqueueInTx, Job, JobKind, Jobs, QueueError},
    on_pool,
};

/// Hands stored rows that have no job yet to the queue: every new row (the ack commits the row
/// alone) and every replayed one. Runs in each process that runs workers; several dispatchers
/// on one PostgreSQL skip each other's locked rows, and the idempotency key makes a hand-off
/// done twice a no-op.
pub fn spawn_dispatcher(inbox: Inbox, jobs: Jobs) -> tokio::task::JoinHandle<()> {
    inbox.hand_to(&jobs);
    tokio::spawn(dispatch_loop(inbox, jobs))
}

/// How often a dispatcher looks for rows stored by another process (`serve --no-workers`
/// beside `switchboard worker`). Rows stored by this process wake it at once.
const DISPATCH_POLL: Duration = Duration::from_millis(100);

/// Rows per dispatch transaction.
const DISPATCH_BATCH: i64 = 256;

/// Longest pause between dispatch attempts while they fail (the database is down): the
/// attempts back off from [`DISPATCH_POLL`] so an outage fills neither the log nor the CPU.
const DISPATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn dispatch_loop(inbox: Inbox, jobs: Jobs) {
    let mut pause = DISPATCH_POLL;
    // Woken by this process's inbox writer: it committed new work, no need to look for it.
    let mut told = false;
    loop {
        if inbox.db().is_closed() {
            // Shutting down: nothing can be dispatched any more, and saying so every poll
            // would only fill the log.
            return;
        }
        match dispatch_rounds(&inbox, &jobs, told).await {
            Ok(_) => {
                if pause != DISPATCH_POLL {
                    tracing::info!("inbox dispatch works again");
                }
                pause = DISPATCH_POLL;
                jobs.dispatch_succeeded();
            }
            Err(e) => {
                if pause == DISPATCH_POLL {
                    tracing::warn!(error = %e, "inbox dispatch failed; will retry");
                }
                pause = (pause * 2).min(DISPATCH_BACKOFF_MAX);
                jobs.dispatch_failed(e.to_string());
            }
        }
        told = tokio::select! {
            _ = inbox.new_work.notified() => true,
            _ = tokio::time::sleep(pause) => false,
        };
    }
}

/// Pushes a `ProcessEvent` job for every undispatched inbox row. Returns how many.
pub async fn dispatch_pending(inbox: &Inbox, jobs: &Jobs) -> Result<usize, QueueError> {
    dispatch_rounds(inbox, jobs, false).await
}

/// [`dispatch_pending`]; `told`: rows are known to be waiting, so the first round skips the
/// look that keeps an empty poll from taking SQLite's write lock.
async fn dispatch_rounds(inbox: &Inbox, jobs: &Jobs, told: bool) -> Result<usize, QueueError> {
    let mut total = 0;
    let mut look = !told;
    loop {
        let (n, queued) = dispatch_batch(inbox, jobs, look).await?;
        // A full batch leaves more behind: the next round needn't look either.
        look = false;
        // Only for jobs left in the queue: a fetch that finds nothing still takes SQLite's
        // write lock, in the way of the jobs just handed to the worker.
        if queued > 0 {
            jobs.wake();
        }
        total += n;
        if (n as i64) < DISPATCH_BATCH {
            return Ok(total);
        }
    }
}

/// Marks up to [`DISPATCH_BATCH`] rows dispatched and enqueues their jobs, in one transaction:
/// a crash before the commit leaves both undone, so the rows are handed over again. As many
/// as this process's worker has room for are written taken by it and run at once, without a
/// trip through the queue, their rows claimed for them in the same transaction; if this
/// process dies first, the worker's lease and the claim run out and any worker runs them.
async fn dispatch_batch(
    inbox: &Inbox,
    jobs: &Jobs,
    look: bool,
) -> Result<(usize, usize), sqlx::Error> {
    let db = inbox.db();
    if look && !any_waiting(db).await? {
        return Ok((0, 0));
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
    let lane = jobs.lane();
    let claim = super::claim_sql();
    let now = now_ms();
    let (n, handed, queued) = on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        let mut rows: Vec<(i64, String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(DISPATCH_BATCH)
            .fetch_all(&mut *tx)
            .await?;
        // RETURNING gives no order: the oldest run first.
        rows.sort_unstable_by_key(|r| r.0);
        let n = rows.len();
        let mut handed = Vec::new();
        let mut queued = Vec::new();
        for (id, source, request_id, replays) in &rows {
            let (job, key) = process_event_job(*id, source, request_id, *replays);
            match lane.as_ref().and_then(|l| l.try_slot().map(|s| (l, s))) {
                Some((lane, slot)) => {
                    let task_id = ulid::Ulid::generate().to_string();
                    if tx.enqueue_taken(&job, &key, &task_id, &lane.worker).await? {
                        // Not claimable (held by a job of an earlier hand-off): the job
                        // claims it itself, and waits its turn as it would have.
                        let event = match sqlx::query(sqlx::AssertSqlSafe(claim.clone()))
                            .bind(now + super::process::CLAIM_LEASE_MS)
                            .bind(id)
                            .bind(now)
                            .fetch_optional(&mut *tx)
                            .await?
                        {
                            Some(r) => Some(super::event_from_row(&r)?),
                            None => None,
                        };
                        handed.push((task_id, job, slot, event));
                    }
                }
                None => queued.push((job, key)),
            }
        }
        let queued_n = queued.len();
        if !queued.is_empty() {
            tx.enqueue(queued).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>((n, handed, queued_n))
    })?;
    if let Some(lane) = &lane {
        for (task_id, job, slot, event) in handed {
            if let Some(event) = event {
                inbox.preclaimed(task_id.clone(), event);
            }
            lane.run(task_id, job, slot);
        }
    }
    Ok((n, queued))
}

/// A plain read first, when a dispatcher polls: the poll is usually empty, and an UPDATE
/// would take SQLite's write lock (and make the inbox writer wait) even when it matches nothing.
async fn any_waiting(db: &Db) -> Result<bool, sqlx::Error> {
    on_pool!(db, |p| {
        sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM inbox_events WHERE dispatched_at IS NULL AND status = 'received')"
    )
    .fetch_one(p)
    .await
    })
}

/// The job that processes inbox row `id` on its `replays`-th dispatch, with its idempotency key.
pub(super) fn process_event_job(
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
