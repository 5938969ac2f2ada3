//! What the processors and jobs of both directions share: their state, the inbox sources
//! they read, and the keys that make each piece of work happen once however often it is
//! pushed. A key is part of the stored queue and media tables, so its text must not change.

use switchboard_core::{Core, JobError};

use crate::{bitrix::Bitrix, setup::SetupProbes};

/// Inbox source of the notifications Meta posts to the WhatsApp webhook.
pub const META_SOURCE: &str = "meta";
/// Inbox source of the events Bitrix24 posts to the events endpoint.
pub const BITRIX_SOURCE: &str = "bitrix";

/// The connector's one value per process, shared by its routes, jobs, scheduled tasks, `/setup`
/// rows and commands: the core and the one Bitrix client, whose rate bucket, batches and
/// refresh lock mean something only if every caller goes through the same one.
#[derive(Clone)]
pub struct Relay {
    pub core: Core,
    pub bitrix: Bitrix,
    pub(crate) probes: SetupProbes,
    /// Each Open Channel's CRM settings as last read: line → (when, creates leads itself).
    pub(crate) line_settings: LineSettings,
    /// Whether this process handed the rows stored before channels to their channel.
    pub(crate) adopted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) type LineSettings =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, bool)>>>;

impl Relay {
    /// Build it once per process (the binary does) and hand clones around.
    pub fn new(core: &Core) -> Self {
        Self {
            core: core.clone(),
            bitrix: Bitrix::new(core),
            probes: SetupProbes::new(),
            line_settings: Default::default(),
            adopted: Default::default(),
        }
    }
}

/// A database error inside a job: the database may be back by the next attempt.
pub(crate) fn retry_db(e: sqlx::Error) -> JobError {
    JobError::Retry(format!("database: {e}"))
}

/// The idempotency key of a customer message's relay job.
pub(crate) fn relay_key(wamid: &str) -> String {
    format!("relay:{wamid}")
}

/// The idempotency key of the job reporting one Meta status of an operator's message.
pub(crate) fn status_key(wamid: &str, status: &str) -> String {
    format!("status:{wamid}:{status}")
}

/// The idempotency key of an operator reply's send job.
pub(crate) fn reply_key(bitrix_message_id: &str) -> String {
    format!("reply:{bitrix_message_id}")
}

/// The re-hosted copy of a customer's Meta media, one per media id.
pub(crate) fn meta_media_key(media_id: &str) -> String {
    format!("meta:{media_id}")
}

/// The re-hosted copy of an operator's file: the reply's `n`-th attachment.
pub(crate) fn bitrix_file_key(bitrix_message_id: &str, n: usize) -> String {
    format!("bitrix:{bitrix_message_id}:{n}")
}
