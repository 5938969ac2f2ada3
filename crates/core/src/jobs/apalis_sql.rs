//! Every statement that reads or writes apalis' tables, both engines side by side.
//!
//! These tables are apalis' private schema, not an interface it promises: the queue reads them
//! for `jobs list|retry` and `/health`, and writes them where apalis has no call for what we
//! need (durable retry backoff, postponing without spending an attempt, a worker's lease kept
//! beside its loop, hand-off inside the inbox's transaction). Keeping every such statement in
//! this one file keeps that coupling in one place, and the schema test at the bottom fails
//! loudly when an apalis upgrade changes a table or column they use.

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;

use super::{Job, MAX_ATTEMPTS, QUEUE};
use crate::{db::Db, on_pool};

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

/// Writes jobs into the queue inside the caller's transaction, so a row's hand-off and the job
/// that processes it are committed together or not at all.
pub(crate) trait EnqueueInTx {
    async fn enqueue(&mut self, jobs: Vec<(Job, String)>) -> Result<(), sqlx::Error>;

    /// Writes `job` as row `task_id`, already taken by `worker` (see [`insert_taken`]); false
    /// when its key was pushed before.
    async fn enqueue_taken(
        &mut self,
        job: &Job,
        key: &str,
        task_id: &str,
        worker: &str,
    ) -> Result<bool, sqlx::Error>;
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
    async fn enqueue_taken(
        &mut self,
        job: &Job,
        key: &str,
        task_id: &str,
        worker: &str,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(sqlx::AssertSqlSafe(insert_taken_sql(true)))
            .bind(job_bytes(job)?)
            .bind(task_id)
            .bind(QUEUE)
            .bind(MAX_ATTEMPTS as i32)
            .bind(key)
            .bind(worker)
            .execute(&mut **self)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

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
    async fn enqueue_taken(
        &mut self,
        job: &Job,
        key: &str,
        task_id: &str,
        worker: &str,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(sqlx::AssertSqlSafe(insert_taken_sql(false)))
            .bind(job_bytes(job)?)
            .bind(task_id)
            .bind(QUEUE)
            .bind(MAX_ATTEMPTS as i32)
            .bind(key)
            .bind(worker)
            .execute(&mut **self)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

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

/// A row of apalis' jobs table as the admin view reads it. Times are Unix seconds.
pub(super) struct ListedJob {
    pub id: String,
    /// The job as JSON text.
    pub job: String,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    /// The last result as stored (JSON text).
    pub last_result: Option<String>,
    pub run_at: Option<i64>,
    pub lock_at: Option<i64>,
    pub done_at: Option<i64>,
}

/// Which jobs [`list`] reads.
pub(super) enum Select<'a> {
    All,
    /// Dead letters only.
    Dead,
    /// Dead letters and jobs whose last attempt failed.
    Failing,
    /// The jobs that carry one of these request ids (the inbox events that caused them).
    Requests(&'a [String]),
}

const DEAD: &str = "(status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))";

/// This queue's jobs, newest first.
pub(super) async fn list(
    db: &Db,
    select: Select<'_>,
    limit: i64,
) -> Result<Vec<ListedJob>, sqlx::Error> {
    let (table, columns, request_id) = match db {
        Db::Sqlite(_) => (
            "Jobs",
            "id, CAST(job AS TEXT) AS job, status, CAST(attempts AS BIGINT) AS attempts,
             CAST(max_attempts AS BIGINT) AS max_attempts, CAST(last_result AS TEXT) AS last_result,
             run_at, lock_at, done_at",
            "json_extract(CAST(job AS TEXT), '$.request_id') IN (SELECT value FROM json_each($3))",
        ),
        Db::Postgres(_) => (
            "apalis.jobs",
            "id, convert_from(job, 'UTF8') AS job, status, CAST(attempts AS BIGINT) AS attempts,
             CAST(max_attempts AS BIGINT) AS max_attempts, last_result::text AS last_result,
             CAST(EXTRACT(EPOCH FROM run_at) AS BIGINT) AS run_at,
             CAST(EXTRACT(EPOCH FROM lock_at) AS BIGINT) AS lock_at,
             CAST(EXTRACT(EPOCH FROM done_at) AS BIGINT) AS done_at",
            "(convert_from(job, 'UTF8')::jsonb ->> 'request_id') = ANY($3)",
        ),
    };
    let filter = match select {
        Select::All => String::new(),
        Select::Dead => format!("AND {DEAD}"),
        Select::Failing => "AND status IN ('Failed', 'Killed')".to_string(),
        Select::Requests(_) => format!("AND {request_id}"),
    };
    let order = match db {
        Db::Sqlite(_) => "ORDER BY rowid DESC",
        Db::Postgres(_) => "ORDER BY run_at DESC, id DESC",
    };
    let sql =
        format!("SELECT {columns} FROM {table} WHERE job_type = $1 {filter} {order} LIMIT $2");
    let ids: Option<Vec<String>> = match select {
        Select::Requests(ids) => Some(ids.to_vec()),
        _ => None,
    };
    let sql = sqlx::AssertSqlSafe(sql);
    // Bound apart: the id list is a JSON array for SQLite, a text[] for PostgreSQL.
    match db {
        Db::Sqlite(p) => {
            let mut q = sqlx::query(sql).bind(QUEUE).bind(limit);
            if let Some(ids) = &ids {
                q = q.bind(serde_json::to_string(ids).unwrap_or_default());
            }
            q.fetch_all(p).await?.iter().map(listed_from_row).collect()
        }
        Db::Postgres(p) => {
            let mut q = sqlx::query(sql).bind(QUEUE).bind(limit);
            if let Some(ids) = ids {
                q = q.bind(ids);
            }
            q.fetch_all(p).await?.iter().map(listed_from_row).collect()
        }
    }
}

fn listed_from_row<R>(r: &R) -> Result<ListedJob, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ListedJob {
        id: r.try_get("id")?,
        job: r.try_get("job")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        last_result: r.try_get("last_result")?,
        run_at: r.try_get("run_at")?,
        lock_at: r.try_get("lock_at")?,
        done_at: r.try_get("done_at")?,
    })
}

/// The request ids of dead letters: the inbox events whose work failed for good.
pub(super) async fn dead_request_ids(db: &Db, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => format!(
            "SELECT DISTINCT json_extract(CAST(job AS TEXT), '$.request_id') FROM Jobs
             WHERE job_type = $1 AND {DEAD} LIMIT $2"
        ),
        Db::Postgres(_) => format!(
            "SELECT DISTINCT convert_from(job, 'UTF8')::jsonb ->> 'request_id' FROM apalis.jobs
             WHERE job_type = $1 AND {DEAD} LIMIT $2"
        ),
    };
    let rows: Vec<(Option<String>,)> =
        on_pool!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(QUEUE)
            .bind(limit)
            .fetch_all(p)
            .await)?;
    Ok(rows.into_iter().filter_map(|(r,)| r).collect())
}

/// Counts of this queue's jobs: waiting or due for a retry, running, dead.
pub(super) async fn count_by_state(db: &Db) -> Result<(i64, i64, i64), sqlx::Error> {
    let sql = match db {
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
    on_pool!(db, |p| sqlx::query_as(sql).bind(QUEUE).fetch_one(p).await)
}

/// The run time (Unix seconds) of the waiting job that has been due the longest, if any is due.
pub(super) async fn oldest_due(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT MIN(run_at) FROM Jobs WHERE job_type = $1
              AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
              AND run_at <= strftime('%s', 'now')"
        }
        Db::Postgres(_) => {
            "SELECT EXTRACT(EPOCH FROM MIN(run_at))::BIGINT FROM apalis.jobs WHERE job_type = $1
              AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
              AND run_at <= now()"
        }
    };
    on_pool!(db, |p| sqlx::query_scalar(sql)
        .bind(QUEUE)
        .fetch_one(p)
        .await)
}

/// Puts dead letters (all, or the one with `id`) back to waiting with a fresh attempt budget.
pub(super) async fn revive_dead(db: &Db, id: Option<&str>) -> Result<u64, sqlx::Error> {
    let sql = match db {
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
    on_pool!(db, |p| sqlx::query(sql)
        .bind(QUEUE)
        .bind(id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
}

/// Sets job `task_id`'s next attempt to `at_secs` (Unix seconds).
pub(super) async fn set_run_at(db: &Db, task_id: &str, at_secs: i64) -> Result<(), sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => "UPDATE Jobs SET run_at = $1 WHERE id = $2",
        Db::Postgres(_) => "UPDATE apalis.jobs SET run_at = to_timestamp($1) WHERE id = $2",
    };
    on_pool!(db, |p| sqlx::query(sql)
        .bind(at_secs)
        .bind(task_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Seconds until job `task_id`'s next attempt; `None` when there is no such job.
pub(super) async fn secs_until_run(db: &Db, task_id: &str) -> Result<Option<i64>, sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT run_at - CAST(strftime('%s', 'now') AS INTEGER) FROM Jobs WHERE id = $1"
        }
        Db::Postgres(_) => {
            "SELECT CAST(EXTRACT(EPOCH FROM run_at - now()) AS BIGINT) FROM apalis.jobs WHERE id = $1"
        }
    };
    let row: Option<(i64,)> = on_pool!(db, |p| sqlx::query_as(sql)
        .bind(task_id)
        .fetch_optional(p)
        .await)?;
    Ok(row.map(|(s,)| s))
}

/// Makes every waiting or failed job of this queue due now.
pub(super) async fn make_waiting_due(db: &Db) -> Result<(), sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => {
            "UPDATE Jobs SET run_at = strftime('%s', 'now') WHERE job_type = $1 AND status IN ('Pending', 'Failed')"
        }
        Db::Postgres(_) => {
            "UPDATE apalis.jobs SET run_at = now() WHERE job_type = $1 AND status IN ('Pending', 'Failed')"
        }
    };
    on_pool!(db, |p| sqlx::query(sql)
        .bind(QUEUE)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Replaces running job `task_id` by a waiting copy named `copy`, due in `secs`, with the same
/// payload, attempts and idempotency key.
pub(super) async fn replace_by_waiting_copy(
    db: &Db,
    task_id: &str,
    copy: &str,
    secs: f64,
) -> Result<(), sqlx::Error> {
    let (table, run_at) = match db {
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
    on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        let q = sqlx::query(sqlx::AssertSqlSafe(copy_sql))
            .bind(task_id)
            .bind(copy);
        let q = match db {
            Db::Sqlite(_) => q.bind(secs.ceil() as i64),
            Db::Postgres(_) => q.bind(secs),
        };
        q.execute(&mut *tx).await?;
        let key: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(drop_sql))
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(key_sql))
            .bind(copy)
            .bind(key.flatten())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    })
}

/// Makes the waiting job with idempotency key `key` due now; on PostgreSQL also tells every
/// process's workers.
pub(super) async fn make_due_by_key(db: &Db, key: &str) -> Result<(), sqlx::Error> {
    match db {
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
    Ok(())
}

/// Whether any job with one of these idempotency keys is waiting, running, or failed with
/// attempts left.
pub(super) async fn any_live(db: &Db, keys: &[String]) -> Result<bool, sqlx::Error> {
    const LIVE: &str = "(status IN ('Pending', 'Queued', 'Running')
                          OR (status = 'Failed' AND attempts < max_attempts))";
    match db {
        Db::Sqlite(p) => {
            let keys = serde_json::to_string(keys).unwrap_or_default();
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM Jobs WHERE job_type = $1
                   AND idempotency_key IN (SELECT value FROM json_each($2)) AND {LIVE})"
            )))
            .bind(QUEUE)
            .bind(keys)
            .fetch_one(p)
            .await
        }
        Db::Postgres(p) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM apalis.jobs WHERE job_type = $1
                   AND idempotency_key = ANY($2) AND {LIVE})"
            )))
            .bind(QUEUE)
            .bind(keys)
            .fetch_one(p)
            .await
        }
    }
}

/// Whether an inbox row of `source` before row `before` whose body contains `needle` is
/// undispatched, or its `core.process-event` job (found by the dispatcher's idempotency key,
/// `inbox:<id>:<replays>`) is still to run.
pub(super) async fn inbox_work_before(
    db: &Db,
    source: &str,
    before: i64,
    needle: &str,
) -> Result<bool, sqlx::Error> {
    let (jobs, contains) = match db {
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
    on_pool!(db, |p| sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
        .bind(source)
        .bind(before)
        .bind(needle.as_bytes())
        .bind(QUEUE)
        .fetch_one(p)
        .await)
}

/// Writes `job` under `key` as taken by worker `worker`, the state apalis' fetch leaves a job
/// in, so no fetcher picks it and the worker's lease covers it. `false`: a job with this key
/// exists already, and nothing was written.
pub(super) async fn insert_taken(
    db: &Db,
    job: &Job,
    key: &str,
    task_id: &str,
    worker: &str,
) -> Result<bool, sqlx::Error> {
    let bytes = job_bytes(job)?;
    let sql = insert_taken_sql(matches!(db, Db::Sqlite(_)));
    let n = on_pool!(db, |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(&bytes)
        .bind(task_id)
        .bind(QUEUE)
        .bind(MAX_ATTEMPTS as i32)
        .bind(key)
        .bind(worker)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub(crate) fn job_bytes(job: &Job) -> Result<Vec<u8>, sqlx::Error> {
    serde_json::to_vec(job).map_err(|e| sqlx::Error::Protocol(e.to_string()))
}

/// The row of a job taken by a worker as it is written: binds job, id, queue, max attempts,
/// idempotency key, worker.
pub(crate) fn insert_taken_sql(sqlite: bool) -> String {
    let (table, now) = if sqlite {
        ("Jobs", "strftime('%s', 'now')")
    } else {
        ("apalis.jobs", "now()")
    };
    format!(
        "INSERT INTO {table} (job, id, job_type, status, attempts, max_attempts, run_at, priority, idempotency_key, lock_by, lock_at)
         VALUES ($1, $2, $3, 'Queued', 0, $4, {now}, 0, $5, $6, {now})
         ON CONFLICT (job_type, idempotency_key) DO NOTHING"
    )
}

/// Records the outcome of a run of taken job `task_id` as apalis' acknowledgement does (first
/// attempt): `status`, the result as JSON, and for a retry its time (Unix seconds). Only while
/// `worker` still holds it: a job postponed meanwhile is a new row, and one taken over by
/// another worker is that worker's.
pub(super) async fn settle_taken(
    db: &Db,
    task_id: &str,
    worker: &str,
    status: &str,
    result: &str,
    retry_at_secs: Option<i64>,
) -> Result<(), sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => {
            "UPDATE Jobs SET status = $1, attempts = 1, last_result = $2,
               done_at = strftime('%s', 'now'), run_at = COALESCE($3, run_at)
             WHERE id = $4 AND lock_by = $5"
        }
        Db::Postgres(_) => {
            "UPDATE apalis.jobs SET status = $1, attempts = 1, last_result = $2::jsonb,
               done_at = now(), run_at = COALESCE(to_timestamp($3::bigint), run_at)
             WHERE id = $4 AND lock_by = $5"
        }
    };
    on_pool!(db, |p| sqlx::query(sql)
        .bind(status)
        .bind(result)
        .bind(retry_at_secs)
        .bind(task_id)
        .bind(worker)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Renews worker `name`'s `last_seen`. `false`: no such worker (not registered yet).
pub(super) async fn renew_worker(db: &Db, name: &str) -> Result<bool, sqlx::Error> {
    let sql = match db {
        Db::Sqlite(_) => {
            "UPDATE Workers SET last_seen = strftime('%s', 'now') WHERE id = $1 AND worker_type = $2"
        }
        Db::Postgres(_) => {
            "UPDATE apalis.workers SET last_seen = now() WHERE id = $1 AND worker_type = $2"
        }
    };
    let n = on_pool!(db, |p| sqlx::query(sql)
        .bind(name)
        .bind(QUEUE)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Puts the queued and running jobs locked by worker `name` back to waiting, unlocked.
pub(super) async fn release_worker_jobs(db: &Db, name: &str) -> Result<u64, sqlx::Error> {
    let table = match db {
        Db::Sqlite(_) => "Jobs",
        Db::Postgres(_) => "apalis.jobs",
    };
    let sql = format!(
        "UPDATE {table} SET status = 'Pending', lock_by = NULL, lock_at = NULL
         WHERE lock_by = $1 AND status IN ('Queued', 'Running')"
    );
    on_pool!(db, |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(name)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
}

/// Pins the parts of apalis' schema the statements above rely on, on a database migrated the
/// way `Core::start` migrates one: an apalis upgrade that renames a table or column, changes a
/// column's type or drops the key the hand-off deduplicates on fails here, not in production.
#[cfg(test)]
mod tests {
    use crate::{db::Db, testing::TestDb};

    /// (table, column, declared type) on SQLite. Times are Unix seconds.
    const SQLITE_COLUMNS: &[(&str, &str, &str)] = &[
        ("Jobs", "job", "BLOB"),
        ("Jobs", "id", "TEXT"),
        ("Jobs", "job_type", "TEXT"),
        ("Jobs", "status", "TEXT"),
        ("Jobs", "attempts", "INTEGER"),
        ("Jobs", "max_attempts", "INTEGER"),
        ("Jobs", "run_at", "INTEGER"),
        ("Jobs", "last_result", "TEXT"),
        ("Jobs", "lock_at", "INTEGER"),
        ("Jobs", "lock_by", "TEXT"),
        ("Jobs", "done_at", "INTEGER"),
        ("Jobs", "priority", "INTEGER"),
        ("Jobs", "metadata", "TEXT"),
        ("Jobs", "idempotency_key", "TEXT"),
        ("Workers", "id", "TEXT"),
        ("Workers", "worker_type", "TEXT"),
        ("Workers", "last_seen", "INTEGER"),
    ];

    /// (table, column, data type) in PostgreSQL's `apalis` schema.
    const POSTGRES_COLUMNS: &[(&str, &str, &str)] = &[
        ("jobs", "job", "bytea"),
        ("jobs", "id", "text"),
        ("jobs", "job_type", "text"),
        ("jobs", "status", "text"),
        ("jobs", "attempts", "integer"),
        ("jobs", "max_attempts", "integer"),
        ("jobs", "run_at", "timestamp with time zone"),
        ("jobs", "last_result", "jsonb"),
        ("jobs", "lock_at", "timestamp with time zone"),
        ("jobs", "lock_by", "text"),
        ("jobs", "done_at", "timestamp with time zone"),
        ("jobs", "priority", "integer"),
        ("jobs", "metadata", "USER-DEFINED"),
        ("jobs", "idempotency_key", "text"),
        ("workers", "id", "text"),
        ("workers", "worker_type", "text"),
        ("workers", "last_seen", "timestamp with time zone"),
    ];

    #[tokio::test]
    async fn apalis_schema_has_what_our_statements_use() {
        let test = TestDb::new().await;
        let (expected, found, unique_keys) = match &test.db {
            Db::Sqlite(p) => {
                let mut found: Vec<(String, String, String)> = Vec::new();
                let mut unique_keys: Vec<String> = Vec::new();
                for table in ["Jobs", "Workers"] {
                    let columns: Vec<(String, String)> =
                        sqlx::query_as("SELECT name, type FROM pragma_table_info($1)")
                            .bind(table)
                            .fetch_all(p)
                            .await
                            .expect("read table info");
                    found.extend(columns.into_iter().map(|(c, t)| (table.into(), c, t)));
                    let indexes: Vec<(String,)> = sqlx::query_as(
                        "SELECT name FROM pragma_index_list($1) WHERE \"unique\" = 1",
                    )
                    .bind(table)
                    .fetch_all(p)
                    .await
                    .expect("read index list");
                    for (index,) in indexes {
                        let columns: Vec<(String,)> =
                            sqlx::query_as("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                                .bind(&index)
                                .fetch_all(p)
                                .await
                                .expect("read index columns");
                        let columns: Vec<String> = columns.into_iter().map(|(c,)| c).collect();
                        unique_keys.push(format!("{table}({})", columns.join(", ")));
                    }
                }
                // `jobs list` orders by insertion through the implicit rowid.
                sqlx::query("SELECT rowid FROM Jobs LIMIT 0")
                    .execute(p)
                    .await
                    .expect("apalis' Jobs table has a rowid");
                (SQLITE_COLUMNS, found, unique_keys)
            }
            Db::Postgres(p) => {
                let found: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT table_name::text, column_name::text, data_type::text
                     FROM information_schema.columns WHERE table_schema = 'apalis'",
                )
                .fetch_all(p)
                .await
                .expect("read columns");
                let unique_keys: Vec<(String,)> = sqlx::query_as(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'apalis' AND indexdef LIKE 'CREATE UNIQUE%'",
                )
                .fetch_all(p)
                .await
                .expect("read indexes");
                let unique_keys = unique_keys
                    .into_iter()
                    .filter_map(|(def,)| {
                        let (_, on) = def.split_once(" ON apalis.")?;
                        Some(on.replace(" USING btree ", ""))
                    })
                    .collect();
                // Making a job due wakes every process's workers on apalis' insert channel.
                let notifies: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid
                     JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'apalis' AND c.relname = 'jobs'
                       AND f.prosrc LIKE '%apalis::job::insert%')",
                )
                .fetch_one(p)
                .await
                .expect("read triggers");
                assert!(
                    notifies,
                    "apalis' jobs table no longer notifies 'apalis::job::insert' on insert"
                );
                (POSTGRES_COLUMNS, found, unique_keys)
            }
        };
        let changed: Vec<_> = expected
            .iter()
            .filter(|(table, column, kind)| {
                !found
                    .iter()
                    .any(|(t, c, k)| t == table && c == column && k == kind)
            })
            .collect();
        assert!(
            changed.is_empty(),
            "apalis' schema changed under our statements: {changed:?} not found; it has {found:?}"
        );
        // The hand-off's INSERT … ON CONFLICT and `push_once` deduplicate on this key.
        let key = match &test.db {
            Db::Sqlite(_) => "Jobs(job_type, idempotency_key)",
            Db::Postgres(_) => "jobs(job_type, idempotency_key)",
        };
        assert!(
            unique_keys.iter().any(|k| k == key),
            "apalis' unique key {key} is gone; unique keys: {unique_keys:?}"
        );
    }
}
