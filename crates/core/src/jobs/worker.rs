//! Runs the jobs: apalis workers under a supervisor, and a hold on each job kept by a lease of
//! our own.
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
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use futures::channel::mpsc::unbounded;
use serde::Serialize;

use super::{
    Job, JobContext, JobError, JobRegistry, Jobs, MAX_ATTEMPTS, apalis_sql, queue::Storage,
    retry_delay,
};
use crate::db::now_ms;

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
pub(super) struct WorkerStatus {
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

impl Jobs {
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

    /// Moves a failed job's next attempt `delay` into the future (durable backoff).
    async fn defer(&self, task_id: &str, delay: Duration) -> Result<(), sqlx::Error> {
        let at_secs = (now_ms() / 1000) + delay.as_secs() as i64;
        apalis_sql::set_run_at(&self.db, task_id, at_secs).await
    }
}

/// How often a worker's hold on its jobs is renewed, and how many renewals may be missed
/// before another worker takes them over: a killed process's jobs run again after ~15 s.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);
pub(super) const MISSED_HEARTBEATS: u32 = 3;
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
        match apalis_sql::renew_worker(&jobs.db, &generation.name).await {
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
        match apalis_sql::release_worker_jobs(&jobs.db, &generation.name).await {
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
        Err(JobError::Postpone(after, why)) => match rt.jobs.postpone(&task_id, after).await {
            Ok(()) => {
                tracing::debug!(parent: &span, reason = %why, after_ms = after.as_millis() as u64, "job postponed");
                metrics::counter!("switchboard_jobs_total", "kind" => job.kind, "outcome" => "postponed")
                    .increment(1);
                Ok(())
            }
            // Could not put it back: an ordinary retry keeps it from being lost.
            Err(e) => {
                let msg = format!("{why}; postponing failed: {e}");
                tracing::warn!(parent: &span, error = %msg, "job not postponed; will retry");
                Err(msg.into())
            }
        },
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
