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
//! `queue.rs` is the push side and the admin view ([`Jobs`]), `worker.rs` runs the jobs
//! ([`run_workers`]: pickup, outages, leases), and `apalis_sql.rs` holds every statement that
//! touches apalis' tables. Turning stored inbox rows into jobs is the inbox's dispatcher.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

mod apalis_sql;
mod queue;
mod worker;

pub(crate) use apalis_sql::{EnqueueInTx, insert_taken_sql, job_bytes, migrate};
pub use queue::{JobRow, Jobs, QueueError, QueueStats};
pub use worker::{LEASE, LEASE_MARGIN, WorkersHealth, run_workers};
pub(crate) use worker::{Lane, LaneSlot, hold, take_unwritten};

/// Queue name in apalis' table, shared by every process of one deployment.
pub const QUEUE: &str = "switchboard";

/// Attempts in all before a job is dead-lettered.
pub const MAX_ATTEMPTS: usize = 5;

/// Wait before attempt n+1 after attempt n failed: 10 s, 30 s, 60 s, then 60 s.
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
    /// Not a failure: the work waits for something that frees up at a known time (the next
    /// slot of a rate limit). The job goes back on the queue, due after the duration, without
    /// spending an attempt and without holding a worker while it waits.
    #[error("postponed {secs}s: {1}", secs = .0.as_secs_f64())]
    Postpone(std::time::Duration, String),
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

#[cfg(test)]
mod tests {
    #[test]
    fn schedule_is_the_specs() {
        let d: Vec<u64> = (1..=4).map(|a| super::retry_delay(a).as_secs()).collect();
        assert_eq!(d, vec![10, 30, 60, 60]);
        assert_eq!(super::MAX_ATTEMPTS, 5);
    }
}
