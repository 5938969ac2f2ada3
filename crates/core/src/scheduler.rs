//! Periodic work (prune at 03:00 UTC, bridges' token checks). With several processes on one
//! PostgreSQL database each task runs in one process only: a row in `scheduler_leases` says
//! who holds it and until when, and only the holder of a live lease runs the task.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Timelike, Utc};
use futures::future::BoxFuture;

use crate::{
    db::{Db, now_ms},
    on_pool,
};

pub type TaskFn = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

#[derive(Clone)]
pub enum When {
    /// Every day at this UTC hour.
    DailyAt {
        hour: u32,
    },
    Every(Duration),
}

#[derive(Clone)]
pub struct Task {
    pub name: &'static str,
    pub when: When,
    pub run: TaskFn,
}

impl Task {
    pub fn new<F, Fut>(name: &'static str, when: When, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let f = Arc::new(f);
        Self {
            name,
            when,
            run: Arc::new(move || {
                let f = f.clone();
                Box::pin(async move { f().await })
            }),
        }
    }

    fn due(&self, last_run_ms: Option<i64>, now: DateTime<Utc>) -> bool {
        match (&self.when, last_run_ms) {
            (When::Every(every), Some(last)) => {
                now.timestamp_millis() - last >= every.as_millis() as i64
            }
            (When::Every(_), None) => true,
            (When::DailyAt { hour }, last) => {
                let today_at = now
                    .with_hour(*hour)
                    .and_then(|t| t.with_minute(0))
                    .and_then(|t| t.with_second(0))
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(i64::MAX);
                now.timestamp_millis() >= today_at && last.is_none_or(|l| l < today_at)
            }
        }
    }
}

/// Runs `tasks` until the process ends, checking every `tick`.
pub async fn run(db: Db, tasks: Vec<Task>, tick: Duration) {
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut every = tokio::time::interval(tick);
    loop {
        every.tick().await;
        for task in &tasks {
            match acquire(&db, task, &holder).await {
                Ok(true) => {
                    let result = (task.run)().await;
                    match &result {
                        Ok(msg) => {
                            tracing::info!(task = task.name, result = %msg, "scheduled task ran")
                        }
                        Err(e) => {
                            tracing::warn!(task = task.name, error = %e, "scheduled task failed")
                        }
                    }
                    let _ = finish(&db, task.name).await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(task = task.name, error = %e, "scheduler lease check failed")
                }
            }
        }
    }
}

const LEASE_MS: i64 = 10 * 60 * 1000;

/// Takes the task's lease if it is due and nobody else holds a live one.
async fn acquire(db: &Db, task: &Task, holder: &str) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO scheduler_leases (name, holder, until_ms, last_run) VALUES ($1, '', 0, NULL)
         ON CONFLICT (name) DO NOTHING"
    )
    .bind(task.name)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    let (last_run,): (Option<i64>,) = on_pool!(db, |p| sqlx::query_as(
        "SELECT last_run FROM scheduler_leases WHERE name = $1"
    )
    .bind(task.name)
    .fetch_one(p)
    .await)?;
    let now_dt = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_else(Utc::now);
    if !task.due(last_run, now_dt) {
        return Ok(false);
    }
    let taken = on_pool!(db, |p| sqlx::query(
        "UPDATE scheduler_leases SET holder = $1, until_ms = $2
         WHERE name = $3 AND (until_ms < $4 OR holder = $1)
           AND (last_run IS NULL AND $5 IS NULL OR last_run = $5)"
    )
    .bind(holder)
    .bind(now + LEASE_MS)
    .bind(task.name)
    .bind(now)
    .bind(last_run)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(taken == 1)
}

async fn finish(db: &Db, name: &str) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "UPDATE scheduler_leases SET until_ms = 0, last_run = $1 WHERE name = $2"
    )
    .bind(now_ms())
    .bind(name)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn daily_task_runs_once_after_its_hour() {
        let t = Task::new("x", When::DailyAt { hour: 3 }, || async {
            Ok(String::new())
        });
        let before = Utc.with_ymd_and_hms(2026, 11, 25, 2, 59, 0).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 25, 3, 0, 30).unwrap();
        assert!(!t.due(None, before));
        assert!(t.due(None, after));
        assert!(!t.due(Some(after.timestamp_millis()), after));
        let yesterday = Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 5).unwrap();
        assert!(t.due(Some(yesterday.timestamp_millis()), after));
    }
}
