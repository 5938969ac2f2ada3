//! Forwarding processed events to the configured subscribers (`[[wabridges.forward]]`),
//! signed per Standard Webhooks (<https://www.standardwebhooks.com/>).
//!
//! One [`ForwardEvent`] job per (event, subscriber), pushed with an idempotency key so a replay
//! or a retried processing never forwards twice. The job posts the exact bytes wabridges sent.
//!
//! Outages: the core queue retries an attempt after 10 s, 30 s, 60 s, 60 s and then
//! dead-letters it — under three minutes, far shorter than a subscriber's bad hour. So a
//! forward that failed only because the subscriber was unreachable or answered 5xx/408/429 is
//! put back on the queue by [`redeliver_dead_forwards`], which the scheduler runs every
//! [`REDELIVER_EVERY`], for [`GIVE_UP_AFTER_MS`] after the event arrived; then the job fails
//! permanently and stays a dead letter for `switchboard jobs retry`. A subscriber's 4xx is a
//! refusal, not an outage: dead-lettered at once and never redelivered on its own.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchboard_core::{
    Core, JobContext, JobError, JobKind,
    config::{Row, Rows, is_http_url, parse_rows},
    db::now_ms,
    jobs::JobRow,
};

use crate::catalogue::FORWARD;

/// One subscriber, a row of `[[wabridges.forward]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardTarget {
    pub url: String,
    /// Event types to forward; empty = all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Standard Webhooks signing secret (`whsec_…` base64 or raw).
    pub secret: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl std::fmt::Debug for ForwardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardTarget")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Row for ForwardTarget {
    fn check(&self) -> Result<(), String> {
        if !is_http_url(&self.url) {
            return Err(format!("url `{}` is not an http(s) URL", self.url));
        }
        if self.secret.trim().is_empty() {
            return Err("secret is empty; subscribers verify the signature with it".into());
        }
        Ok(())
    }
}

/// [`FORWARD`]'s parser: the rows, and no two with one [`subscriber_key`], since jobs find
/// their subscriber by it and a second one would never receive an event.
pub fn parse_targets(value: toml::Value) -> Result<Rows, String> {
    let rows = parse_rows::<ForwardTarget>(value)?;
    let targets: &[ForwardTarget] = rows.get();
    for (i, t) in targets.iter().enumerate() {
        if let Some(first) = targets[..i]
            .iter()
            .position(|o| subscriber_key(o) == subscriber_key(t))
        {
            return Err(format!(
                "entries {} and {} are both `{}`; give each a distinct `name`",
                first + 1,
                i + 1,
                subscriber_key(t)
            ));
        }
    }
    Ok(rows)
}

/// The configured subscribers.
pub fn targets(core: &Core) -> &[ForwardTarget] {
    core.config.rows(FORWARD)
}

/// Delivers stored event `event_id` to the subscriber named `subscriber`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardEvent {
    pub event_id: i64,
    pub bridge: String,
    pub event_type: String,
    /// [`subscriber_key`] of the target. The secret stays in the configuration: the job table
    /// is no place for it.
    pub subscriber: String,
}

impl JobKind for ForwardEvent {
    const KIND: &'static str = "wabridges-hooks.forward-event";
}

/// Dead-lettered forwards are put back this often while they are younger than
/// [`GIVE_UP_AFTER_MS`].
pub const REDELIVER_EVERY: Duration = Duration::from_secs(120);

/// How long an unreachable subscriber is waited for.
pub const GIVE_UP_AFTER_MS: i64 = 24 * 60 * 60 * 1000;

/// Every failure that is worth waiting out starts with this, so the redelivery task can tell
/// outages from refusals in the dead-letter list.
const UNAVAILABLE: &str = "subscriber unavailable";

/// A subscriber's stable name: its `name`, or else its URL.
pub fn subscriber_key(t: &ForwardTarget) -> &str {
    t.name.as_deref().unwrap_or(&t.url)
}

/// Whether `t` wants events of this type (an empty list means all).
pub fn wants(t: &ForwardTarget, event_type: &str) -> bool {
    t.events.is_empty() || t.events.iter().any(|e| e == event_type)
}

/// The Standard Webhooks `webhook-id` of a stored event: the same for every attempt and every
/// subscriber, so receivers can deduplicate.
pub fn webhook_id(event_id: i64) -> String {
    format!("evt_{event_id}")
}

/// The key bytes of a Standard Webhooks secret: `whsec_<base64>` decodes, anything else is
/// used as it is.
pub fn secret_bytes(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b| B64.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret_bytes(secret))
        .expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The job handler.
pub async fn forward_event(core: Core, job: ForwardEvent, ctx: JobContext) -> Result<(), JobError> {
    let Some(target) = targets(&core)
        .iter()
        .find(|t| subscriber_key(t) == job.subscriber)
    else {
        return Err(JobError::Permanent(format!(
            "subscriber `{}` is no longer configured",
            job.subscriber
        )));
    };
    let event = core
        .inbox
        .get(job.event_id)
        .await
        .map_err(|e| JobError::Retry(e.to_string()))?
        .ok_or_else(|| {
            JobError::Permanent(format!(
                "event {} is no longer stored (pruned)",
                job.event_id
            ))
        })?;
    let id = webhook_id(job.event_id);
    let timestamp = now_ms() / 1000;
    let result = core
        .http
        .post(&target.url)
        .timeout(Duration::from_secs(15))
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign(&target.secret, &id, timestamp, &event.body),
        )
        .header("webhook-bridge", &job.bridge)
        .header("webhook-event", &job.event_type)
        .body(event.body)
        .send()
        .await;
    let outcome = match result {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let s = r.status();
            if s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429 {
                Err(JobError::Permanent(format!(
                    "subscriber `{}` refused the event: HTTP {s}",
                    job.subscriber
                )))
            } else {
                Err(JobError::Retry(format!(
                    "{UNAVAILABLE}: `{}` answered HTTP {s}",
                    job.subscriber
                )))
            }
        }
        Err(e) => Err(JobError::Retry(format!(
            "{UNAVAILABLE}: `{}`: {}",
            job.subscriber,
            if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "connection failed".to_string()
            } else {
                e.to_string()
            }
        ))),
    };
    let outcome = match outcome {
        Err(JobError::Retry(msg)) if now_ms() - event.received_at > GIVE_UP_AFTER_MS => Err(
            JobError::Permanent(format!("{msg}; gave up 24 h after the event arrived")),
        ),
        other => other,
    };
    let label = match &outcome {
        Ok(()) => "delivered",
        Err(JobError::Retry(_) | JobError::Postpone(..)) => "retry",
        Err(JobError::Permanent(_)) => "dead",
    };
    metrics::counter!("switchboard_wabridges_forwards_total", "outcome" => label).increment(1);
    tracing::info!(
        event_id = job.event_id,
        subscriber = %job.subscriber,
        attempt = ctx.attempt,
        outcome = label,
        "wabridges forward"
    );
    outcome
}

/// Is this dead letter a forward that only an outage killed?
pub fn is_redeliverable(row: &JobRow) -> bool {
    row.kind == ForwardEvent::KIND
        && row
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with(UNAVAILABLE))
}

/// Puts dead-lettered forwards that failed on an outage back on the queue. Returns how many.
pub async fn redeliver_dead_forwards(core: &Core) -> Result<u64, String> {
    let dead = core
        .jobs
        .list(true, 1000)
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    for row in dead.iter().filter(|r| is_redeliverable(r)) {
        n += core
            .jobs
            .retry(Some(&row.id))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (`spec/standard-webhooks.md`,
    /// "Signature scheme"): a verifier following it must accept what we send.
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_without_the_prefix_are_raw_bytes() {
        assert_eq!(secret_bytes("plain"), b"plain");
        assert_eq!(secret_bytes("whsec_cGxhaW4="), b"plain");
        assert_eq!(secret_bytes("whsec_%%%"), b"whsec_%%%");
    }

    #[test]
    fn only_outages_are_redelivered() {
        let row = |kind: &str, err: &str| JobRow {
            id: "1".into(),
            kind: kind.into(),
            status: "Failed".into(),
            attempts: 5,
            max_attempts: 5,
            last_error: Some(err.into()),
            request_id: "r".into(),
            state: "dead letter",
            event_id: None,
            source: None,
            created_at: None,
            last_attempt_at: None,
            next_attempt_at: None,
        };
        assert!(is_redeliverable(&row(
            ForwardEvent::KIND,
            "subscriber unavailable: `crm` answered HTTP 503"
        )));
        assert!(!is_redeliverable(&row(
            ForwardEvent::KIND,
            "subscriber `crm` refused the event: HTTP 400 Bad Request"
        )));
        assert!(!is_redeliverable(&row(
            "bitrix-connector.relay-to-bitrix",
            "subscriber unavailable: x"
        )));
    }

    fn parse(text: &str) -> Result<Vec<String>, String> {
        let table: toml::Table = text.parse().unwrap();
        let rows = parse_targets(table["wabridges"]["forward"].clone())?;
        Ok(rows
            .get::<ForwardTarget>()
            .iter()
            .map(|t| subscriber_key(t).to_string())
            .collect())
    }

    #[test]
    fn subscribers_are_checked_at_load() {
        assert_eq!(
            parse(
                "[[wabridges.forward]]\nurl = \"https://a.example/\"\nsecret = \"s\"\n\
                 [[wabridges.forward]]\nname = \"crm\"\nurl = \"https://a.example/\"\nsecret = \"s\"\n"
            ),
            Ok(vec!["https://a.example/".to_string(), "crm".to_string()]),
            "one URL twice is fine when a name tells them apart"
        );
        assert_eq!(
            parse("[[wabridges.forward]]\nurl = \"https://a.example/\"\nsecret = \" \"\n"),
            Err("entry 1: secret is empty; subscribers verify the signature with it".into())
        );
        assert_eq!(
            parse(
                "[[wabridges.forward]]\nname = \"crm\"\nurl = \"https://a.example/\"\nsecret = \"s\"\n\
                 [[wabridges.forward]]\nname = \"crm\"\nurl = \"https://b.example/\"\nsecret = \"s\"\n"
            ),
            Err("entries 1 and 2 are both `crm`; give each a distinct `name`".into())
        );
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let t = ForwardTarget {
            url: "https://a.example/".into(),
            events: vec![],
            secret: "whsec_c2VjcmV0".into(),
            name: None,
        };
        assert!(!format!("{t:?}").contains("whsec"));
    }

    #[test]
    fn filters() {
        let t = |events: &[&str]| ForwardTarget {
            url: "http://x".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            secret: "s".into(),
            name: None,
        };
        assert!(wants(&t(&[]), "typing"));
        assert!(wants(&t(&["message"]), "message"));
        assert!(!wants(&t(&["message"]), "typing"));
    }
}
