//! A process's life: serve (with or without the workers) or only work, until the shutdown
//! future resolves, then drain what is in flight within bounds and close the database.

use std::time::Duration;

use anyhow::Context;
use switchboard_core::{Config, Core, inbox, jobs};
use tokio::net::TcpListener;

/// Where the job workers and the scheduler run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// In this process, beside the server (`switchboard serve`).
    InProcess,
    /// In other processes (`serve --no-workers` beside `switchboard worker`): this one only
    /// acknowledges, and a worker process dispatches what it stores.
    Elsewhere,
}

/// The shutdown signal, once, for every part of the process that has to wind down on it.
#[derive(Clone)]
pub(crate) struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn on(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        Stop(rx)
    }

    /// Resolves once the signal has come (at once, if it already has).
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// `switchboard serve`: starts the core on `config`'s database, serves the bridges on
/// `listener` (already bound, so a caller can take any free port) and, with
/// [`Workers::InProcess`], runs the workers and the scheduler, until `shutdown` resolves and
/// what was in flight has drained.
pub async fn run(
    config: Config,
    listener: TcpListener,
    workers: Workers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let core = start(config).await?;
    let wiring = crate::app::Wiring::new(&core);
    let stop = Stop::on(shutdown);
    let with_workers = workers == Workers::InProcess;

    if with_workers {
        // Without workers this process only acks; a worker process dispatches what it stores.
        inbox::spawn_dispatcher(core.inbox.clone(), core.jobs.clone());
    }
    let limits = crate::server::Limits::from_config(&core.config);
    let listen = listener.local_addr().context("the listener's address")?;
    tracing::info!(
        %listen,
        database = core.db.backend(),
        workers = with_workers,
        max_connections = limits.max_connections,
        header_timeout_secs = limits.header_timeout.as_secs(),
        body_timeout_secs = limits.body_timeout.as_secs(),
        "switchboard listening"
    );
    let app = crate::app::router(&wiring);
    let server = crate::server::run(listener, app, limits, stop.clone());
    // Joined, not spawned: apalis' worker future is not provably Send for every lifetime.
    tokio::join!(server, async {
        if with_workers {
            run_workers(&wiring, &stop).await;
        }
    });
    close_database(&core).await;
    Ok(())
}

/// `switchboard worker`: the workers and the scheduler only (no HTTP), until `shutdown`
/// resolves and the jobs in flight have drained.
/// With `probe`, it also answers `/health` and `/metrics` there, for an orchestrator's probes
/// and a metrics scraper: the jobs' figures are this process's own.
pub async fn work(
    config: Config,
    probe: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let core = start(config).await?;
    let wiring = crate::app::Wiring::new(&core);
    let stop = Stop::on(shutdown);
    inbox::spawn_dispatcher(core.inbox.clone(), core.jobs.clone());
    let probe = match probe {
        Some(listener) => {
            let listen = listener
                .local_addr()
                .context("the probe listener's address")?;
            tracing::info!(%listen, "worker health and metrics listening");
            let app = switchboard_core::ops::probe_router(&core, crate::app::bridges(&wiring));
            let stopped = stop.wait();
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }))
        }
        None => None,
    };
    tracing::info!(database = core.db.backend(), "switchboard worker running");
    run_workers(&wiring, &stop).await;
    if let Some(probe) = probe {
        probe.abort();
    }
    close_database(&core).await;
    Ok(())
}

/// The core, once every stored secret is known to decrypt: a process that could not read them
/// would acknowledge webhooks it then fails to relay, or answer them 500 and lose them.
async fn start(config: Config) -> anyhow::Result<Core> {
    let core = Core::start(config).await.context("starting the core")?;
    core.settings.check_readable().await?;
    Ok(core)
}

/// How long a stop waits for in-flight jobs. A job still running then is abandoned, not lost:
/// its row and job stay in the database and are taken again once the claim lapses. Without a
/// bound, a job stuck behind a write lock held past the worker's own shutdown kept the process
/// alive until SIGKILL (seen under load, with this build and the one before).
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Closing the pool waits for every borrowed connection; an abandoned job may hold one.
const CLOSE_LIMIT: Duration = Duration::from_secs(3);

async fn close_database(core: &Core) {
    if tokio::time::timeout(CLOSE_LIMIT, core.db.close())
        .await
        .is_err()
    {
        tracing::warn!(
            "database connections still in use {} s after the stop; exiting without them",
            CLOSE_LIMIT.as_secs()
        );
    }
}

/// Workers and the scheduler, until a stop and the in-flight jobs have drained (or
/// [`DRAIN_LIMIT`] has passed since the stop).
async fn run_workers(wiring: &crate::app::Wiring, stop: &Stop) {
    let core = &wiring.core;
    let registry = crate::app::job_registry(wiring);
    let scheduler = tokio::spawn(switchboard_core::scheduler::run(
        core.db.clone(),
        crate::app::scheduled(wiring),
        Duration::from_secs(30),
    ));
    let jobs = core.jobs.clone();
    let concurrency = core.config.jobs_concurrency();
    let drain_deadline = {
        let stopped = stop.wait();
        async move {
            stopped.await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        }
    };
    tokio::select! {
        result = jobs::run_workers(jobs, registry, concurrency, stop.wait()) => {
            if let Err(e) = result {
                tracing::error!(error = %e, "workers stopped with an error");
            }
        }
        () = drain_deadline => tracing::warn!(
            "jobs still running {} s after the stop; leaving them to be taken again after restart",
            DRAIN_LIMIT.as_secs()
        ),
    }
    scheduler.abort();
}
