//! Coalescing: the calls that concurrent jobs make go out together as Bitrix `batch` requests
//! of up to [`MAX_COMMANDS`] commands. A portal drains 2 requests per second whatever they
//! carry, so a batch of 50 moves fifty times the work through the same limit.
//!
//! Callers queue a command and wait for its own answer. One flusher task per client sends
//! what is queued: at once while the rate bucket has room (one command goes alone, as a plain
//! call, so a quiet portal sees no extra latency), with a short gathering pause once the bucket
//! is filling, so that scarce slots carry full batches. With the bucket full, the flusher waits
//! for the next slot (at most one drain interval, half a second at 2 requests/s) so that
//! everything queued meanwhile leaves together; what that batch can't carry is answered
//! [`BitrixError::Busy`] with the time the next slot frees, and a job then goes back on the
//! queue, due then, rather than holding a worker while it waits.
//!
//! Bitrix runs a batch's commands in order and answers each on its own (`result` /
//! `result_error` by command key), so one failing command fails only its caller. A batch
//! refused as a whole (expired token, limit, outage) is retried or refused for every command
//! in it the same way a single call would be.

use std::{sync::Mutex, time::Duration};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Bitrix, BitrixError};

/// Bitrix refuses a batch of more commands than this.
pub const MAX_COMMANDS: usize = 50;

/// The longest a command waits for others to join it, as the bucket fills.
const MAX_GATHER: Duration = Duration::from_millis(50);

/// What one request brought back: a lone call's own answer, or a batch's.
enum Sent {
    Alone(Result<Value, BitrixError>),
    Batch(Result<Value, BitrixError>),
}

pub(super) struct Pending {
    method: String,
    params: Value,
    answer: oneshot::Sender<Result<Value, BitrixError>>,
}

#[derive(Default)]
pub(super) struct Queue {
    pending: Vec<Pending>,
    flushing: bool,
}

pub(super) type SharedQueue = std::sync::Arc<Mutex<Queue>>;

impl Bitrix {
    /// Calls `method` with the stored grant, coalesced with concurrent calls into one
    /// `batch` request where it can be. [`BitrixError::Busy`] when the portal's rate limit has
    /// no room now; every other answer is what the same call alone would have given.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, BitrixError> {
        let (answer, answered) = oneshot::channel();
        let start_flusher = {
            let mut q = self.queue.lock().expect("batch queue lock");
            q.pending.push(Pending {
                method: method.to_string(),
                params,
                answer,
            });
            !std::mem::replace(&mut q.flushing, true)
        };
        if start_flusher {
            // A task of its own, so that a caller that gives up (a job stopped at shutdown)
            // does not strand the commands queued behind it.
            let this = self.clone();
            tokio::spawn(async move { this.flush().await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(BitrixError::Transport(
                "the batch carrying this call was dropped".into(),
            ))
        })
    }

    async fn flush(&self) {
        loop {
            // The fuller the bucket, the more a slot is worth: let concurrent callers join.
            let fullness = self.bucket.fullness();
            if fullness > 0.25 {
                tokio::time::sleep(MAX_GATHER.mul_f64((fullness - 0.25) / 0.75)).await;
            }
            // A full bucket frees a slot every half second (at 2 requests/s). Waiting for that
            // one slot is what lets a whole batch form; a command held longer than that goes
            // back on the queue instead (below).
            let until_slot = self.bucket.time_to_slot();
            if !until_slot.is_zero() && until_slot <= self.bucket.slot_interval() {
                tokio::time::sleep(until_slot).await;
            }
            let taken = {
                let mut q = self.queue.lock().expect("batch queue lock");
                if q.pending.is_empty() {
                    q.flushing = false;
                    return;
                }
                take_batch(&mut q.pending, self.batch_size)
            };
            if let Err(wait) = self.bucket.try_reserve() {
                metrics::counter!("switchboard_bitrix_calls_postponed_total")
                    .increment(taken.len() as u64);
                for p in taken {
                    let _ = p.answer.send(Err(BitrixError::Busy { retry_in: wait }));
                }
                continue;
            }
            self.send(taken).await;
        }
    }

    /// Sends commands for which a bucket slot is already reserved, and answers each. If every
    /// caller has given up meanwhile (its job stopped: shutdown, or its worker lost its hold
    /// on the job and another worker may take it over), the request is dropped mid-flight, as
    /// the caller's own request would have been: a message must not stay in a call that no
    /// job owns any more while another job sends it again.
    async fn send(&self, taken: Vec<Pending>) {
        let (calls, mut answers): (Vec<(String, Value)>, Vec<_>) = taken
            .into_iter()
            .map(|p| ((p.method, p.params), p.answer))
            .unzip();
        let request = async {
            if let [(method, params)] = calls.as_slice() {
                return Sent::Alone(self.call_now(method, params).await);
            }
            // Keyed by position: `cmd` goes as a JSON list, the one shape whose order no map
            // serialisation can change, and Bitrix runs the commands in the order it reads them.
            let commands: Vec<String> = calls
                .iter()
                .map(|(method, params)| command_text(method, params))
                .collect();
            metrics::counter!("switchboard_bitrix_batches_total").increment(1);
            metrics::counter!("switchboard_bitrix_batched_commands_total")
                .increment(commands.len() as u64);
            Sent::Batch(self.batch_now(&commands).await)
        };
        let abandoned = async {
            for a in answers.iter_mut() {
                a.closed().await;
            }
        };
        let sent = tokio::select! {
            sent = request => sent,
            () = abandoned => {
                tracing::debug!(calls = calls.len(), "every caller gave up; Bitrix24 call dropped");
                return;
            }
        };
        for (i, ((method, _), answer)) in calls.iter().zip(answers).enumerate() {
            let result = match &sent {
                Sent::Alone(result) => result.clone(),
                Sent::Batch(Ok(batch)) => answer_of(batch, &i.to_string(), method),
                Sent::Batch(Err(e)) => Err(e.clone()),
            };
            let _ = answer.send(result);
        }
    }

    /// One call with the stored grant, refreshing it once on `expired_token`; the bucket slot
    /// is the caller's.
    async fn call_now(&self, method: &str, params: &Value) -> Result<Value, BitrixError> {
        let grant = self.oauth.current().await?;
        match self.post(&grant, method, params).await {
            Err(BitrixError::Api { code, .. }) if code == "expired_token" => {
                let grant = self.oauth.refresh_replacing(&grant.access_token).await?;
                self.bucket
                    .try_reserve()
                    .map_err(|wait| BitrixError::Busy { retry_in: wait })?;
                self.post(&grant, method, params).await
            }
            other => other,
        }
    }

    /// The `batch` call carrying `commands`, with the same refresh rule as a single call.
    async fn batch_now(&self, commands: &[String]) -> Result<Value, BitrixError> {
        let cmd: Vec<Value> = commands.iter().map(|c| Value::String(c.clone())).collect();
        // halt=0: each command stands alone; one refused message must not hold back the others.
        self.call_now("batch", &json!({"halt": 0, "cmd": cmd}))
            .await
    }
}

/// The next batch: up to `size` commands in the order they were queued, skipping (and leaving
/// queued, in order) any that a query string can't carry.
fn take_batch(pending: &mut Vec<Pending>, size: usize) -> Vec<Pending> {
    if size <= 1 || !fits_in_batch(&pending[0].params) {
        return vec![pending.remove(0)];
    }
    let mut taken = Vec::new();
    let mut i = 0;
    while i < pending.len() && taken.len() < size {
        if fits_in_batch(&pending[i].params) {
            taken.push(pending.remove(i));
        } else {
            i += 1;
        }
    }
    taken
}

/// A batch command is a query string, which has no JSON booleans: Bitrix would see `"1"`
/// where a method checks `=== true` (connector registration flags). Such calls go alone.
fn fits_in_batch(params: &Value) -> bool {
    match params {
        Value::Bool(_) => false,
        Value::Array(items) => items.iter().all(fits_in_batch),
        Value::Object(fields) => fields.values().all(fits_in_batch),
        _ => true,
    }
}

/// `method?query`, the query built as PHP's `http_build_query` builds it (`a[b][0]=x`), which
/// is how the portal parses each command back.
fn command_text(method: &str, params: &Value) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    fn walk(query: &mut form_urlencoded::Serializer<String>, key: &str, v: &Value) {
        match v {
            Value::Null => {}
            Value::Bool(b) => {
                query.append_pair(key, if *b { "1" } else { "0" });
            }
            Value::Number(n) => {
                query.append_pair(key, &n.to_string());
            }
            Value::String(s) => {
                query.append_pair(key, s);
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(query, &format!("{key}[{i}]"), item);
                }
            }
            Value::Object(fields) => {
                for (k, item) in fields {
                    walk(query, &format!("{key}[{k}]"), item);
                }
            }
        }
    }
    if let Value::Object(fields) = params {
        for (k, v) in fields {
            walk(&mut query, k, v);
        }
    }
    format!("{method}?{}", query.finish())
}

/// One command's answer out of a batch's `result`: its result, or its own error. PHP sends
/// a map whose keys are exactly 0..n as a list, so `key` is looked up as either.
fn answer_of(batch: &Value, key: &str, method: &str) -> Result<Value, BitrixError> {
    if let Some(e) = batch.pointer(&format!("/result_error/{key}")) {
        let code = e.get("error").and_then(Value::as_str).unwrap_or("ERROR");
        tracing::warn!(method, code, "Bitrix24 call in a batch failed");
        return Err(BitrixError::Api {
            code: code.to_string(),
            description: e
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            // Inside a 200 batch: what the call alone would have answered is not known, and
            // the classification goes by the code.
            http: 200,
        });
    }
    match batch.pointer(&format!("/result/{key}")) {
        Some(v) => Ok(v.clone()),
        None => Err(BitrixError::Transport(format!(
            "the batch answer has nothing for {method}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(method: &str, params: Value) -> Pending {
        Pending {
            method: method.into(),
            params,
            answer: oneshot::channel().0,
        }
    }

    #[test]
    fn commands_are_php_query_strings() {
        let text = command_text(
            "imconnector.send.messages",
            &json!({"CONNECTOR": "wa", "LINE": 3, "MESSAGES": [{"user": {"id": "49 1&2"}, "message": {"text": "a=b?c"}}], "skip": null}),
        );
        let (method, query) = text.split_once('?').unwrap();
        assert_eq!(method, "imconnector.send.messages");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("CONNECTOR", "wa"),
                ("LINE", "3"),
                ("MESSAGES[0][message][text]", "a=b?c"),
                ("MESSAGES[0][user][id]", "49 1&2"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn batches_keep_order_and_leave_boolean_calls_alone() {
        let mut queue = vec![
            pending("a", json!({"n": 1})),
            pending("register", json!({"FLAG": true})),
            pending("b", json!({"n": 2})),
            pending("c", json!({"n": 3})),
        ];
        let taken: Vec<String> = take_batch(&mut queue, 2)
            .into_iter()
            .map(|p| p.method)
            .collect();
        assert_eq!(taken, ["a", "b"]);
        let rest: Vec<&str> = queue.iter().map(|p| p.method.as_str()).collect();
        assert_eq!(rest, ["register", "c"]);
        let alone: Vec<String> = take_batch(&mut queue, 50)
            .into_iter()
            .map(|p| p.method)
            .collect();
        assert_eq!(alone, ["register"]);
    }

    #[test]
    fn each_command_gets_its_own_answer() {
        let batch = json!({
            "result": {"0": {"SUCCESS": true}, "2": 7},
            "result_error": {"1": {"error": "NOT_ACTIVE_LINE", "error_description": "line off"}},
        });
        assert_eq!(
            answer_of(&batch, "0", "m").unwrap(),
            json!({"SUCCESS": true})
        );
        let err = answer_of(&batch, "1", "m").unwrap_err();
        assert_eq!(err.code(), Some("NOT_ACTIVE_LINE"));
        assert!(!err.is_retryable());
        assert_eq!(answer_of(&batch, "2", "m").unwrap(), json!(7));
        assert!(answer_of(&batch, "3", "m").unwrap_err().is_retryable());
        // Every command answered: PHP sends the results as a list, and the empty error map
        // as `[]`.
        let clean = json!({"result": [1, {"x": 2}], "result_error": []});
        assert_eq!(answer_of(&clean, "0", "m").unwrap(), json!(1));
        assert_eq!(answer_of(&clean, "1", "m").unwrap(), json!({"x": 2}));
    }
}
