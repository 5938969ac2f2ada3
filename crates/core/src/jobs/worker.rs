//! Runs the jobs: apalis workers under a supervisor, and a hold on each job kept by a lease of
//! our own.
//!
//! Pickup latency: SQLite workers are woken in-process on every push and after every finished
//! job, with a one-second tick as the safety net (due retries, pushes from another process);
//! PostgreSQL workers use apalis' LISTEN/NOTIFY, so a job pushed by any process starts at once.
//! A job a handler pushes with [`Jobs::push_once_here`] skips the pickup: it runs right after
//! that handler, in the same task. So does the processing of a stored event: the dispatcher
//! (or on SQLite the inbox writer, in the ack's own commit) writes its job already taken by
//! this process's worker and hands it to the worker's
//! [`Lane`], while the lane has room (a quarter of the worker's concurrency); the rest go
//! through the queue. A single message went through fetch and lock writes of its own, a third
//! of its way from the webhook to Bitrix24.
//!
//! Two things kept SQLite workers from hearing their wake-ups. apalis polls its wake-up stream
//! once per fetch and parks the worker when the fetch finds nothing; when that one poll took a
//! wake-up, the stream had no waker left, and every later wake-up went unheard until the next
//! heartbeat (seen: relays waiting 2-3 s). [`Coalesced`] takes all waiting wake-ups at once,
//! which leaves the waker in place. And a wake-up taken while a fetch begun before the new
//! job's commit is still running is spent on that fetch, which finds nothing: each wake-up is
//! repeated shortly after ([`WAKE_AGAIN`]).
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

/// A wake-up stream that yields once for all the wake-ups waiting, and always polls its inner
/// stream until it is pending, so its waker stays registered (see the module notes).
struct Coalesced<S>(S);

impl<S: futures::Stream<Item = ()> + Unpin> futures::Stream for Coalesced<S> {
    type Item = ();

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        use futures::StreamExt;
        use std::task::Poll;
        let mut woken = false;
        loop {
            match self.0.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => woken = true,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending if woken => return Poll::Ready(Some(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// When a wake-up is repeated: after a fetch that may have swallowed it has ended (a fetch
/// takes about a millisecond, tens under load), and once more for a slower one.
const WAKE_AGAIN: [Duration; 2] = [Duration::from_millis(10), Duration::from_millis(90)];

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

/// Jobs the dispatcher hands straight to the current worker (see the module notes). Each
/// slot counts as a running job of the worker from the moment it is taken, so the worker's
/// hold is kept, and its rows are not handed back, before the job has even started.
#[derive(Clone)]
pub(crate) struct Lane {
    pub(crate) worker: String,
    generation: Arc<Generation>,
    room: Arc<tokio::sync::Semaphore>,
    send: tokio::sync::mpsc::UnboundedSender<(String, Job, LaneSlot)>,
}

/// Room for one job in a [`Lane`].
pub(crate) struct LaneSlot {
    _room: tokio::sync::OwnedSemaphorePermit,
    _running: Running,
}

impl Lane {
    /// A slot, if the worker has room for one more job now.
    pub(crate) fn try_slot(&self) -> Option<LaneSlot> {
        let room = self.room.clone().try_acquire_owned().ok()?;
        Some(LaneSlot {
            _room: room,
            _running: Running::start(&self.generation),
        })
    }

    /// Runs `job`, whose row `task_id` is written taken by [`Lane::worker`], in this worker.
    pub(crate) fn run(&self, task_id: String, job: Job, slot: LaneSlot) {
        // The receiver lives as long as any sender: this cannot fail while `self` exists.
        let _ = self.send.send((task_id, job, slot));
    }
}

/// How many jobs a worker's [`Lane`] runs at once, beside the `concurrency` it fetches: enough
/// that a message arriving alone, or a few at once, starts at once; few enough that a burst
/// goes through the queue and its jobs do not crowd the acknowledgements out of the database
/// pool they share.
fn lane_room(concurrency: usize) -> usize {
    (concurrency / 4).max(1)
}

/// Runs what a worker's [`Lane`] is handed until every sender is gone, then lets the jobs
/// still running finish.
async fn run_lane(
    rt: Runtime,
    mut handed: tokio::sync::mpsc::UnboundedReceiver<(String, Job, LaneSlot)>,
) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = handed.recv() => match next {
                Some((task_id, job, slot)) => {
                    let rt = rt.clone();
                    running.spawn(async move {
                        run_handed(&rt, task_id, job).await;
                        drop(slot);
                    });
                }
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// One job of the lane: as [`run_job`] runs a fetched one, then its outcome recorded in its
/// row as apalis would.
async fn run_handed(rt: &Runtime, task_id: String, job: Job) {
    // No wake-up of the fetcher when done: this job held none of its slots.
    let taking = Taking {
        worker: rt.generation.name.clone(),
        ..Taking::default()
    };
    TAKING
        .scope(taking, async {
            let kind = job.kind.clone();
            let outcome = run_pushing(rt, job, 1, &task_id).await;
            // What it pushed runs first, as after a fetched job: its outcome is one more write
            // that the next relay need not wait for.
            run_taken(rt).await;
            settle(rt, &task_id, &kind, &outcome).await;
        })
        .await
}

async fn run_job(
    job: Job,
    attempt: Attempt,
    task_id: TaskId,
    rt: Data<Runtime>,
) -> Result<(), BoxDynError> {
    let attempt = attempt.current();
    let task_id = task_id.to_string();
    let _running = Running::start(&rt.generation);
    let _wake_after = WakeOnDrop(rt.jobs.clone());
    let taking = Taking {
        worker: rt.generation.name.clone(),
        ..Taking::default()
    };
    TAKING
        .scope(taking, async {
            let outcome = run_pushing(&rt, job, attempt, &task_id).await;
            run_taken(&rt).await;
            match outcome {
                Outcome::Done => Ok(()),
                Outcome::Retry { error, delay } => {
                    if let Err(e) = rt.jobs.defer(&task_id, delay).await {
                        tracing::warn!(error = %e, task_id = %task_id, "could not schedule the retry; it will run sooner");
                    }
                    Err(error.into())
                }
                Outcome::Dead {
                    error,
                    abort: true,
                } => Err(AbortError::new(error).into()),
                Outcome::Dead { error, .. } => Err(error.into()),
            }
        })
        .await
}

/// What became of one run of a job, once its metrics and log lines are out.
enum Outcome {
    Done,
    /// Failed with attempts left: the next one is due after `delay`.
    Retry {
        error: String,
        delay: Duration,
    },
    /// Failed for good. `abort`: without spending the remaining attempts (apalis' `Killed`).
    Dead {
        error: String,
        abort: bool,
    },
}

/// Runs `job`'s handler while its worker's hold lasts; counts and logs the outcome.
async fn run_handler(rt: &Runtime, job: Job, attempt: usize, task_id: &str) -> Outcome {
    let span = tracing::info_span!("job", job = %job.kind, request_id = %job.request_id, attempt, task_id = %task_id);
    let Some(handler) = rt.registry.handlers.get(job.kind.as_str()).cloned() else {
        tracing::error!(parent: &span, "no handler registered for this job kind");
        return Outcome::Dead {
            error: format!("no handler for job kind {}", job.kind),
            abort: true,
        };
    };
    let ctx = JobContext {
        task_id: task_id.to_string(),
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
    let (outcome, label) = match result {
        Ok(()) => (Outcome::Done, "ok"),
        Err(JobError::Permanent(error)) => {
            tracing::error!(parent: &span, error = %error, "job failed permanently; dead-lettered");
            (Outcome::Dead { error, abort: true }, "dead")
        }
        Err(JobError::Postpone(after, why)) => match rt.jobs.postpone(task_id, after).await {
            // The row this run holds was replaced by a waiting copy: nothing left to settle.
            Ok(()) => {
                tracing::debug!(parent: &span, reason = %why, after_ms = after.as_millis() as u64, "job postponed");
                (Outcome::Done, "postponed")
            }
            // Could not put it back: an ordinary retry keeps it from being lost.
            Err(e) => {
                let error = format!("{why}; postponing failed: {e}");
                let delay = retry_delay(attempt);
                tracing::warn!(parent: &span, error = %error, "job not postponed; will retry");
                (Outcome::Retry { error, delay }, "retry")
            }
        },
        Err(JobError::Retry(error)) if attempt < MAX_ATTEMPTS => {
            let delay = retry_delay(attempt);
            tracing::warn!(parent: &span, error = %error, retry_in_secs = delay.as_secs(), "job failed; will retry");
            (Outcome::Retry { error, delay }, "retry")
        }
        Err(JobError::Retry(error)) => {
            tracing::error!(parent: &span, error = %error, "job failed on its last attempt; dead-lettered");
            (
                Outcome::Dead {
                    error,
                    abort: false,
                },
                "dead",
            )
        }
    };
    metrics::counter!("switchboard_jobs_total", "kind" => job.kind, "outcome" => label)
        .increment(1);
    outcome
}

tokio::task_local! {
    /// The worker whose job runs in this task, and the jobs that job pushed with
    /// [`Jobs::push_once_here`] to run next.
    static TAKING: Taking;
}

#[derive(Default)]
struct Taking {
    worker: String,
    taken: std::sync::Mutex<std::collections::VecDeque<(String, Job)>>,
    /// Pushed and not written yet: written with the write that ends the pushing job's work
    /// ([`take_unwritten`]), or else just before they run.
    unwritten: std::sync::Mutex<Vec<Unwritten>>,
}

/// A job pushed with [`Jobs::push_once_here`] whose row is not written yet.
pub(crate) struct Unwritten {
    pub(crate) task_id: String,
    pub(crate) job: Job,
    pub(crate) key: String,
}

/// Keeps `job` to be written taken by this task's worker, and run after the current handler.
/// `false` when this task runs no job.
pub(super) fn defer(task_id: String, job: Job, key: String) -> bool {
    TAKING
        .try_with(|t| {
            t.unwritten
                .lock()
                .expect("unwritten jobs lock")
                .push(Unwritten { task_id, job, key })
        })
        .is_ok()
}

/// The jobs this task pushed and has not written, with the worker to write them taken by:
/// the caller writes them in its own transaction, then hands the ones written to [`hold`].
pub(crate) fn take_unwritten() -> Option<(String, Vec<Unwritten>)> {
    TAKING
        .try_with(|t| {
            let jobs = std::mem::take(&mut *t.unwritten.lock().expect("unwritten jobs lock"));
            (t.worker.clone(), jobs)
        })
        .ok()
        .filter(|(_, jobs)| !jobs.is_empty())
}

/// The worker running the job of this task, if this task runs one.
pub(super) fn held_by_current() -> Option<String> {
    TAKING.try_with(|t| t.worker.clone()).ok()
}

/// Queues the taken job `task_id`, written, to run in this task after the current handler.
pub(crate) fn hold(task_id: String, job: Job) {
    let _ = TAKING.try_with(|t| {
        t.taken
            .lock()
            .expect("taken jobs lock")
            .push_back((task_id, job))
    });
}

/// Runs the jobs the current one took, in the order it pushed them (and any they take in
/// turn), recording each outcome in its row as apalis would.
async fn run_taken(rt: &Runtime) {
    loop {
        let Some((task_id, job)) =
            TAKING.with(|t| t.taken.lock().expect("taken jobs lock").pop_front())
        else {
            return;
        };
        let kind = job.kind.clone();
        let outcome = run_pushing(rt, job, 1, &task_id).await;
        settle(rt, &task_id, &kind, &outcome).await;
    }
}

/// [`run_handler`], then the jobs it pushed and did not write with a write of its own are
/// written, so they are rows of the queue before they run. If that fails, the run is a failure
/// to retry: the handler runs again and pushes them again.
async fn run_pushing(rt: &Runtime, job: Job, attempt: usize, task_id: &str) -> Outcome {
    let outcome = run_handler(rt, job, attempt, task_id).await;
    let Some((worker, jobs)) = take_unwritten() else {
        return outcome;
    };
    for Unwritten { task_id, job, key } in jobs {
        match apalis_sql::insert_taken(&rt.jobs.db, &job, &key, &task_id, &worker).await {
            Ok(true) => hold(task_id, job),
            // Pushed before under this key: that job runs, or ran, on its own.
            Ok(false) => {}
            Err(e) if matches!(outcome, Outcome::Done) => {
                let error = format!("writing the job it pushed ({}): {e}", job.kind);
                tracing::warn!(error = %error, "job will retry");
                return Outcome::Retry {
                    delay: retry_delay(attempt),
                    error,
                };
            }
            // Failed anyway: it runs again and pushes again.
            Err(_) => {}
        }
    }
    outcome
}

/// Records the outcome of a first run of taken job `task_id` in its row, as apalis'
/// acknowledgement does for a fetched one.
async fn settle(rt: &Runtime, task_id: &str, kind: &str, outcome: &Outcome) {
    let (status, result, retry_at) = match outcome {
        Outcome::Done => ("Done", serde_json::json!({ "Ok": null }), None),
        Outcome::Retry { error, delay } => (
            "Failed",
            serde_json::json!({ "Err": error }),
            Some(now_ms() / 1000 + delay.as_secs() as i64),
        ),
        Outcome::Dead { error, abort } => (
            if *abort { "Killed" } else { "Failed" },
            serde_json::json!({ "Err": error }),
            None,
        ),
    };
    // The row stays taken by this worker until this lands: a write lost to a short outage
    // would leave it waiting for the worker's end, so a few tries are worth their wait.
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=SETTLE_TRIES {
        match apalis_sql::settle_taken(
            &rt.jobs.db,
            task_id,
            &rt.generation.name,
            status,
            &result.to_string(),
            retry_at,
        )
        .await
        {
            Ok(()) => break,
            Err(e) if attempt == SETTLE_TRIES => {
                tracing::error!(error = %e, job = %kind, task_id = %task_id, "could not record the outcome of a job run without a fetch; it runs again when this worker stops");
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause *= 4;
            }
        }
    }
}

/// Tries at recording a taken job's outcome (the last one after ~2 s).
const SETTLE_TRIES: u32 = 4;

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
    let again = matches!(jobs.storage, Storage::Sqlite(_)).then(|| {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            loop {
                // Wake-ups while this waits or sleeps are one permit: at most one repeat each.
                jobs.wake_again.notified().await;
                for after in WAKE_AGAIN {
                    tokio::time::sleep(after).await;
                    jobs.wake_now();
                }
            }
        })
    });
    jobs.set_status(|s| s.state = WorkerState::Starting);
    let mut backoff = RESTART_FIRST;
    let result = loop {
        let generation = Generation::new();
        tokio::spawn(keep_lease(jobs.clone(), generation.clone()));
        let began = Instant::now();
        let rt = Runtime {
            registry: registry.clone(),
            jobs: jobs.clone(),
            generation: generation.clone(),
        };
        let (send, handed) = tokio::sync::mpsc::unbounded_channel();
        let lane = tokio::spawn(run_lane(rt.clone(), handed));
        *jobs.lane.lock().expect("lane lock") = Some(Lane {
            worker: generation.name.clone(),
            generation: generation.clone(),
            room: Arc::new(tokio::sync::Semaphore::new(lane_room(concurrency))),
            send,
        });
        let result = run_worker(&jobs, rt, concurrency, stopped(stop.clone())).await;
        // No new job for the lane, before the worker counts as gone (its jobs' rows are
        // handed back once none runs).
        jobs.lane.lock().expect("lane lock").take();
        generation.retired.store(true, Ordering::SeqCst);
        if *stop.borrow() {
            // In-flight jobs finish first, the lane's as the fetched ones.
            let _ = lane.await;
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
    for t in [ticker, again].into_iter().flatten() {
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
                .backend(s.poll_with_stream(Coalesced(rx)))
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
