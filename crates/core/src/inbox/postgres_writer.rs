//! The PostgreSQL group-commit writers: a few tasks on the pool, each taking the next batch off
//! the queue while the others commit theirs. PostgreSQL commits concurrent transactions in
//! parallel, so overlapping round trips and fsyncs is what batches best there; dedupe stays
//! exact because the unique index arbitrates between the writers.

use std::{collections::HashMap, sync::Arc, time::Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};

use super::{Incoming, MAX_BATCH, RecordResult, Recorded, Reply, Status, deliver};
use crate::db::now_ms;

/// How many writers share the queue.
pub(super) const WRITERS: usize = 4;

pub(super) async fn run(
    pool: PgPool,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<(Incoming, Reply)>>>,
    new_work: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // Hold the receiver only while taking a batch, so the next writer can take the next
        // one while this batch commits.
        if rx.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        // Move the bodies out rather than copy them: this is the ack path.
        let (items, replies): (Vec<Incoming>, Vec<Reply>) = batch.drain(..).unzip();
        let began = Instant::now();
        let outcomes = commit_batch(&pool, &items).await;
        deliver(began, outcomes, items, replies, &new_work, 0);
    }
}

/// Columns of one inbox row, in the order every INSERT below binds them. A macro so that the
/// statements below are constants: built once at compile time, not per batch or per row.
macro_rules! inbox_row_columns {
    () => {
        "request_id, source, route, dedupe_key, dedupe_ref, status, body, headers, received_at, duration_ms, error, dispatched_at"
    };
}

/// The new-work INSERT for a batch of any size: one array per column, unnested into rows. One
/// statement text for every batch size, so each connection prepares it once. With one
/// `VALUES` list per size, batch sizes from 1 to 256 were up to 256 statements per connection,
/// more than sqlx's statement cache holds: under load most batches paid for a fresh prepare
/// (PostgreSQL parsing and planning up to 3,072 parameters) and an eviction.
const INSERT_NEW: &str = concat!(
    "INSERT INTO inbox_events (",
    inbox_row_columns!(),
    ") SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::bytea[], $8::text[], $9::int8[], $10::int8[], $11::text[], $12::int8[])
      ON CONFLICT (source, dedupe_key) DO NOTHING RETURNING id, source, dedupe_key"
);

/// Also sets what only refused calls have: the whole body's size and hash. New work never
/// does, so the batch INSERT above leaves them out.
const INSERT_ONE: &str = concat!(
    "INSERT INTO inbox_events (",
    inbox_row_columns!(),
    ", body_size, body_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id"
);

/// PostgreSQL: records a batch in at most two transactions, since every statement is a round
/// trip. The first — the hot path, new deduplicated work — is one INSERT over column arrays whose
/// RETURNING rows name the keys that were new (matched back by key, as RETURNING order is not
/// promised). The second, only when needed, stores the rest one by one: duplicates, rejected
/// and keyless calls. Each caller's answer reflects its own commit. Work rows go in
/// undispatched; rows with nothing to do are stored as already dispatched, so the dispatcher's
/// index never sees them.
async fn commit_batch(pool: &PgPool, items: &[Incoming]) -> Vec<RecordResult> {
    let now = now_ms();
    let durations: Vec<i64> = items
        .iter()
        .map(|i| i.started.elapsed().as_millis() as i64)
        .collect();
    let row = RowValues {
        items,
        durations: &durations,
        now,
    };
    // The first occurrence of each (source, key) among new work; later ones are duplicates.
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut bulk = Vec::new();
    for (idx, i) in items.iter().enumerate() {
        if i.status == Status::Received
            && let Some(key) = i.dedupe_key.as_deref()
            && first_of.insert((i.source.as_str(), key), idx).is_none()
        {
            bulk.push(idx);
        }
    }
    // Concurrent PostgreSQL writers take unique-index locks in this order; one order for all
    // keeps two batches sharing keys from deadlocking.
    bulk.sort_by(|&a, &b| {
        (items[a].source.as_str(), items[a].dedupe_key.as_deref())
            .cmp(&(items[b].source.as_str(), items[b].dedupe_key.as_deref()))
    });
    let mut out: Vec<Option<RecordResult>> = vec![None; items.len()];
    if !bulk.is_empty() {
        match insert_new(pool, &row, &bulk).await {
            Ok(inserted) => {
                for (id, source, key) in inserted {
                    if let Some(&idx) = first_of.get(&(source.as_str(), key.as_str())) {
                        out[idx] = Some(Ok(Recorded::New(id)));
                    }
                }
            }
            Err(e) => {
                // Which keys were new is unknown: fail the whole batch, senders retry.
                let e: Arc<str> = e.to_string().into();
                return items.iter().map(|_| Err(e.clone())).collect();
            }
        }
    }
    let rest: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
    if !rest.is_empty() {
        match insert_rest(pool, &row, &rest).await {
            Ok(recorded) => {
                for (idx, r) in rest.iter().zip(recorded) {
                    out[*idx] = Some(Ok(r));
                }
            }
            Err(e) => {
                let e: Arc<str> = e.to_string().into();
                for idx in rest {
                    out[idx] = Some(Err(e.clone()));
                }
            }
        }
    }
    out.into_iter()
        .map(|o| o.expect("every item answered"))
        .collect()
}

/// What every INSERT binds besides the item itself.
struct RowValues<'a> {
    items: &'a [Incoming],
    durations: &'a [i64],
    now: i64,
}

/// Inserts the batch's first occurrences of new keys; returns `(id, source, key)` of the rows
/// that were new to the table.
async fn insert_new(
    pool: &PgPool,
    row: &RowValues<'_>,
    bulk: &[usize],
) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
    let items: Vec<&Incoming> = bulk.iter().map(|&idx| &row.items[idx]).collect();
    let keys: Vec<Option<&str>> = items.iter().map(|i| i.dedupe_key.as_deref()).collect();
    let q = sqlx::query_as::<_, (i64, String, String)>(INSERT_NEW)
        .bind(
            items
                .iter()
                .map(|i| i.request_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|i| i.source.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.route.as_str()).collect::<Vec<_>>())
        .bind(&keys)
        .bind(&keys)
        .bind(vec![Status::Received.as_str(); items.len()])
        .bind(items.iter().map(|i| i.body.as_slice()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.headers.as_str()).collect::<Vec<_>>())
        .bind(vec![row.now; items.len()])
        .bind(
            bulk.iter()
                .map(|&idx| row.durations[idx])
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|i| i.error.as_deref()).collect::<Vec<_>>())
        .bind(vec![None::<i64>; items.len()]);
    // One statement is its own transaction: PostgreSQL commits it before it reports ready for
    // the next query, and sqlx returns only after that report. No BEGIN and COMMIT of our own:
    // two round trips fewer on every batch.
    q.fetch_all(pool).await
}

/// Stores the rest of a batch one row at a time, in one transaction: duplicates (of the table or
/// of this batch), rejected and skipped calls, and work without a dedupe key.
async fn insert_rest(
    pool: &PgPool,
    row: &RowValues<'_>,
    rest: &[usize],
) -> Result<Vec<Recorded>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(rest.len());
    for &idx in rest {
        let i = &row.items[idx];
        let work = i.status == Status::Received;
        // A keyed work row not inserted as new is a duplicate: store it as such, key kept
        // in dedupe_ref only.
        let duplicate = work && i.dedupe_key.is_some();
        let status = if duplicate {
            Status::Duplicate
        } else {
            i.status
        };
        let needs_dispatch = work && !duplicate;
        let (id,): (i64,) = sqlx::query_as(INSERT_ONE)
            .bind(&i.request_id)
            .bind(&i.source)
            .bind(&i.route)
            .bind(None::<&str>)
            .bind(i.dedupe_key.as_deref())
            .bind(status.as_str())
            .bind(&i.body)
            .bind(&i.headers)
            .bind(row.now)
            .bind(row.durations[idx])
            .bind(if duplicate { None } else { i.error.as_deref() })
            .bind((!needs_dispatch).then_some(row.now))
            .bind(i.body_size)
            .bind(i.body_sha256.as_deref())
            .fetch_one(&mut *tx)
            .await?;
        out.push(if duplicate {
            Recorded::Duplicate(id)
        } else if work {
            Recorded::New(id)
        } else {
            Recorded::Logged(id)
        });
    }
    tx.commit().await?;
    Ok(out)
}
