//! Typed client for Bitrix24 REST (protocol §3): JSON calls on the grant's `client_endpoint`,
//! the OAuth grant handled in `oauth.rs`, the portal's rate limit in `limit.rs`, and every
//! failure classified in `error.rs`. What Bitrix posts to the bridge is read here too: its
//! PHP-style forms (`php_form.rs`), its events (`events.rs`) and the app install
//! (`install.rs`); `notes.rs` writes the bridge's own notes into an operator's chat.

pub mod batch;
mod error;
pub mod events;
pub(crate) mod install;
pub mod limit;
pub(crate) mod notes;
pub mod oauth;
pub mod php_form;

pub use error::BitrixError;
pub use oauth::{Grant, OAuth};

use serde_json::Value;
use switchboard_core::Core;

#[derive(Clone)]
pub struct Bitrix {
    core: Core,
    pub oauth: OAuth,
    bucket: limit::Bucket,
    queue: batch::SharedQueue,
    /// Commands per `batch` request; 1 sends every call on its own.
    batch_size: usize,
}

impl Bitrix {
    /// Only [`crate::Relay::new`] builds one, once per process: the bucket and the refresh
    /// lock inside are only as good as everyone sharing them. The gauge lets a test (and an
    /// operator) see that no second one was made.
    pub(crate) fn new(core: &Core) -> Self {
        metrics::gauge!("switchboard_bitrix_clients").increment(1.0);
        let batch_size = (core
            .config
            .integer_or_default(crate::catalogue::BITRIX_BATCH_SIZE)
            as usize)
            .clamp(1, batch::MAX_COMMANDS);
        Self {
            core: core.clone(),
            oauth: OAuth::new(core),
            bucket: limit::Bucket::default(),
            queue: Default::default(),
            batch_size,
        }
    }

    /// One call with `grant`, not batched and no refresh: the install proves a new grant works
    /// with it. Waits for the rate bucket (a request handler, not a worker).
    pub async fn call_with(
        &self,
        grant: &Grant,
        method: &str,
        params: &Value,
    ) -> Result<Value, BitrixError> {
        self.bucket.acquire().await;
        self.post(grant, method, params).await
    }

    /// The HTTP request itself; the caller holds a bucket slot.
    async fn post(
        &self,
        grant: &Grant,
        method: &str,
        params: &Value,
    ) -> Result<Value, BitrixError> {
        let mut body = params.clone();
        if let Value::Object(m) = &mut body {
            m.insert("auth".into(), Value::String(grant.access_token.clone()));
        }
        let url = format!(
            "{}/{method}.json",
            grant.client_endpoint.trim_end_matches('/')
        );
        let resp = self
            .core
            .http
            .post(url)
            .header("accept", "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| BitrixError::Transport(e.without_url().to_string()))?;
        let http = resp.status().as_u16();
        let parsed: Option<Value> = resp.json().await.ok();
        let Some(parsed) = parsed else {
            return Err(BitrixError::Unavailable { http });
        };
        if let Some(code) = parsed.get("error").and_then(Value::as_str) {
            let err = BitrixError::Api {
                code: code.to_string(),
                description: parsed
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                http,
            };
            tracing::warn!(method, http, code, "Bitrix24 call failed");
            if code == "QUERY_LIMIT_EXCEEDED" {
                // Our bucket thought there was room: another client of the portal (or of its
                // address) is using it too. Wait as if ours were full.
                self.bucket.saturate();
                metrics::counter!("switchboard_bitrix_limit_exceeded_total").increment(1);
                return Err(BitrixError::Busy {
                    retry_in: self.bucket.time_to_slot(),
                });
            }
            return Err(err);
        }
        if !(200..300).contains(&http) {
            return Err(BitrixError::Unavailable { http });
        }
        Ok(parsed.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The connector id from settings; the line is the channel's.
    pub async fn connector(&self) -> Result<String, BitrixError> {
        Ok(
            crate::setting_values::required(&self.core, crate::catalogue::BITRIX_CONNECTOR_ID)
                .await?,
        )
    }
}

/// Bitrix sends ids as strings or numbers (protocol §3); compare them as text.
pub fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// PHP booleans: `true`, `"Y"`, `1`, `"1"`, `"true"`.
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => matches!(s.as_str(), "Y" | "1" | "true" | "TRUE"),
        _ => false,
    }
}
