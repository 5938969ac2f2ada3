//! Processing of stored inbox rows. A bridge registers one processor per source; the core job
//! `core.process-event` claims the row, runs the processor and records the outcome, so every
//! bridge gets the same claim/lease, retry and audit behaviour.

use std::{collections::HashMap, sync::Arc};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Claim, Inbox, Status, StoredEvent};
use crate::jobs::{JobContext, JobError, JobKind, JobRegistry};

/// Inbox processing job: hands stored row `event_id` to the processor of its source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessEvent {
    pub event_id: i64,
    pub source: String,
}

impl JobKind for ProcessEvent {
    const KIND: &'static str = "core.process-event";
}

/// What processing made of an event; each maps to the audit status of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    Processed,
    Skipped(String),
    BlockedWindow(String),
}

/// A write that belongs with the outcome of the event being processed: see
/// [`write_with_outcome`].
pub type OutcomeWrite =
    Box<dyn for<'a> FnOnce(crate::db::Tx<'a>) -> BoxFuture<'a, Result<(), sqlx::Error>> + Send>;

tokio::task_local! {
    /// The writes the processor running in this task left for its outcome's transaction.
    static OUTCOME_WRITES: std::sync::Mutex<Vec<OutcomeWrite>>;
}

/// Makes `write` part of the transaction that records the outcome of the event being
/// processed in this task, so that what processing learnt and the event's new status are
/// committed together, with one commit instead of one each: a message on its way to an
/// operator waits for every commit on it. A crash before that commit loses both, and the event
/// is processed again. Outside of processing (a command, a test) it is written at once, in a
/// transaction of its own.
pub async fn write_with_outcome(db: &crate::Db, write: OutcomeWrite) -> Result<(), sqlx::Error> {
    let mut write = Some(write);
    // Outside processing there is no task-local list, and the write stays with us.
    let _ = OUTCOME_WRITES.try_with(|w| {
        w.lock().expect("outcome writes lock").extend(write.take());
    });
    match write {
        None => Ok(()),
        Some(write) => crate::on_pool!(db, |p| {
            let mut tx = p.begin().await?;
            write(tx.as_tx()).await?;
            tx.commit().await
        }),
    }
}

/// The writes this task's processor left, taken out.
pub(super) fn take_outcome_writes() -> Vec<OutcomeWrite> {
    OUTCOME_WRITES
        .try_with(|w| std::mem::take(&mut *w.lock().expect("outcome writes lock")))
        .unwrap_or_default()
}

/// The connection of either engine's transaction, as a [`crate::db::Tx`].
pub(super) trait AsTx {
    fn as_tx(&mut self) -> crate::db::Tx<'_>;
}

impl AsTx for sqlx::Transaction<'_, sqlx::Sqlite> {
    fn as_tx(&mut self) -> crate::db::Tx<'_> {
        crate::db::Tx::Sqlite(&mut *self)
    }
}

impl AsTx for sqlx::Transaction<'_, sqlx::Postgres> {
    fn as_tx(&mut self) -> crate::db::Tx<'_> {
        crate::db::Tx::Postgres(&mut *self)
    }
}

pub type Processor = Arc<
    dyn Fn(StoredEvent, JobContext) -> BoxFuture<'static, Result<ProcessOutcome, JobError>>
        + Send
        + Sync,
>;

/// Source name → processor.
#[derive(Clone, Default)]
pub struct Processors {
    by_source: HashMap<String, Processor>,
}

impl Processors {
    pub fn register<F, Fut>(&mut self, source: &str, f: F)
    where
        F: Fn(StoredEvent, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ProcessOutcome, JobError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.by_source.insert(
            source.to_string(),
            Arc::new(move |e, c| {
                let f = f.clone();
                Box::pin(async move { f(e, c).await })
            }),
        );
    }

    /// The sources with a processor, sorted.
    pub fn sources(&self) -> Vec<String> {
        let mut s: Vec<String> = self.by_source.keys().cloned().collect();
        s.sort_unstable();
        s
    }

    /// Registers `core.process-event` in `registry`, dispatching to these processors.
    pub fn install(self, inbox: Inbox, registry: &mut JobRegistry) {
        let processors = Arc::new(self);
        registry.register(move |job: ProcessEvent, ctx: JobContext| {
            let processors = processors.clone();
            let inbox = inbox.clone();
            OUTCOME_WRITES.scope(std::sync::Mutex::default(), async move {
                process_event(&processors, &inbox, job, ctx).await
            })
        });
    }
}

/// How long one attempt may hold a row before another worker may take it over. A worker killed
/// mid-job leaves its claim behind; its job comes back through apalis' orphan recovery (~15 s)
/// and must find the lease expired soon after, or the row would wait (regression: issue 9's
/// kill -9 test lost rows to a 5-minute lease). Processing is a few HTTP calls, well inside it.
pub(super) const CLAIM_LEASE_MS: i64 = 30 * 1000;

async fn process_event(
    processors: &Processors,
    inbox: &Inbox,
    job: ProcessEvent,
    ctx: JobContext,
) -> Result<(), JobError> {
    let retry = |e: super::InboxError| JobError::Retry(e.to_string());
    let event = match inbox
        .claim(job.event_id, CLAIM_LEASE_MS, &ctx.task_id)
        .await
        .map_err(retry)?
    {
        Claim::Mine(event) => *event,
        Claim::Finished => {
            tracing::debug!(event_id = job.event_id, "event already processed");
            return Ok(());
        }
        Claim::HeldElsewhere => {
            return Err(JobError::Retry(format!(
                "event {} is claimed by another worker (or one that died); retrying after its lease",
                job.event_id
            )));
        }
    };
    let Some(processor) = processors.by_source.get(&event.source).cloned() else {
        inbox
            .finish(
                event.id,
                Status::Skipped,
                Some("no processor for this source"),
            )
            .await
            .map_err(retry)?;
        return Ok(());
    };
    let id = event.id;
    match processor(event, ctx).await {
        Ok(ProcessOutcome::Processed) => inbox
            .finish(id, Status::Processed, None)
            .await
            .map_err(retry),
        Ok(ProcessOutcome::Skipped(why)) => inbox
            .finish(id, Status::Skipped, Some(&why))
            .await
            .map_err(retry),
        Ok(ProcessOutcome::BlockedWindow(why)) => inbox
            .finish(id, Status::BlockedWindow, Some(&why))
            .await
            .map_err(retry),
        Err(e) => {
            inbox
                .finish(id, Status::Failed, Some(&e.to_string()))
                .await
                .map_err(retry)?;
            Err(e)
        }
    }
}
