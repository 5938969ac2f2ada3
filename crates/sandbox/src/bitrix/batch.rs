//! `batch`: up to 50 REST calls carried by one request and run in the order sent, each exactly
//! as if it had come alone (same method code, state changes, injected failures, latencies and
//! scope checks), after the request as a whole was admitted once by `rest.rs`: outage, one unit
//! of the rate limit, the token.
//!
//! Shaped after Bitrix's batch page (`api-reference/how-to-call-rest-api/batch.md` in
//! bitrix24/b24restdocs):
//! - `cmd` maps keys (named, or 0, 1, … when sent as a list) to `"method?query"` strings, the
//!   query in `http_build_query` form; `halt` (PHP truthiness) stops at the first failing
//!   command. The request may be JSON or a form.
//! - The batch's `auth` is every command's; a command's own `auth` plays no part.
//! - The answer is 200 with `result`, `result_error`, `result_total`, `result_next` and
//!   `result_time`, each keyed by command and each a PHP array: `[]` when empty, a JSON list when
//!   its keys are 0..n. A failed command is in `result_error` only; with `halt` the commands after
//!   it are in neither.
//! - Commands past the 50th do not run: each answers `ERROR_BATCH_LENGTH_EXCEEDED` in
//!   `result_error`, while the first 50 run as usual. A `batch` inside a batch answers
//!   `ERROR_BATCH_METHOD_NOT_ALLOWED`. A `cmd` entry that is not a string is skipped.
//! - `$result[key]` and `$result[key][FIELD]…` (any depth, list indexes included) inside a
//!   command's values are replaced by that earlier command's result. The fake refuses with
//!   `ERROR_ARGUMENT`, rather than passing the text on, what it does not serve: a reference to an
//!   array or object, to a command without a result (failed, skipped, not run yet) or to a missing
//!   field, and `$error[…]`, `$total[…]`, `$next[…]`, `$time[…]` references.

use std::fmt;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use super::rest::{self, Caller, MethodResult, Reply, RestError};
use super::{Shared, php};

/// Bitrix runs this many commands of one batch; the rest fail one by one.
const MAX_COMMANDS: usize = 50;

/// A `cmd` entry: its key and whatever was sent for it.
pub(crate) type Command = (String, Value);

/// The `cmd` entries in the order they were sent. `read_params` can't give that order: its JSON
/// objects sort their keys, and `c10` would run before `c2`.
pub(crate) fn commands(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Vec<Command> {
    let from_body = if rest::is_json(headers) {
        serde_json::from_slice::<JsonBody>(body)
            .ok()
            .and_then(|b| b.cmd)
    } else {
        form_commands(body)
    };
    // As in `read_params`, the body's `cmd` replaces one in the query string.
    from_body
        .or_else(|| form_commands(query.unwrap_or_default().as_bytes()))
        .unwrap_or_default()
}

/// Runs an admitted batch and answers it as the portal does (always a `result`, never an error).
pub(crate) async fn run(
    s: &Shared,
    params: &Value,
    commands: Vec<Command>,
    caller: &Caller,
) -> Reply {
    let halt = !php::is_empty(php::param(params, "halt"));
    {
        let mut portal = s.portal();
        portal.batch_requests += 1;
        portal.batch_commands += commands.len() as u64;
    }
    let mut answers = Answers::default();
    for (position, (key, command)) in commands.into_iter().enumerate() {
        let started = rest::now_f64();
        let outcome = if position >= MAX_COMMANDS {
            Err(RestError::new(
                400,
                "ERROR_BATCH_LENGTH_EXCEEDED",
                "Max batch length exceeded",
            ))
        } else if let Value::String(command) = command {
            run_one(s, &command, &answers.result, caller).await
        } else {
            continue;
        };
        let failed = outcome.is_err();
        answers.record(key, outcome, rest::time(started, rest::now_f64()));
        if failed && halt {
            break;
        }
    }
    Reply::Result(answers.into_json())
}

async fn run_one(s: &Shared, command: &str, earlier: &[Command], caller: &Caller) -> MethodResult {
    let (method, query) = command.split_once('?').unwrap_or((command, ""));
    let method = rest::normalize_method(method.trim());
    if method == "batch" {
        return Err(RestError::new(
            405,
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "Method is not allowed for batch usage",
        ));
    }
    // An `auth` among these stays a plain parameter: the caller is the batch's, resolved once.
    let pairs = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .map(|(k, v)| Ok((k, fill_references(&v, earlier)?)))
        .collect::<Result<Vec<_>, RestError>>()?;
    let params = php::parse_pairs(pairs);
    rest::run_command(s, &method, &params, caller).await
}

/// What the answer's five maps hold so far, in the order the commands ran.
#[derive(Default)]
struct Answers {
    result: Vec<Command>,
    error: Vec<Command>,
    total: Vec<Command>,
    next: Vec<Command>,
    time: Vec<Command>,
}

impl Answers {
    fn record(&mut self, key: String, outcome: MethodResult, time: Value) {
        match outcome {
            Ok(Reply::Result(result)) => self.result.push((key.clone(), result)),
            Ok(Reply::Page {
                result,
                total,
                next,
            }) => {
                self.result.push((key.clone(), result));
                self.total.push((key.clone(), json!(total)));
                if let Some(next) = next {
                    self.next.push((key.clone(), json!(next)));
                }
            }
            Err(e) => {
                // A failed command has no timing of its own in the portal's answer.
                self.error.push((key, e.body()));
                return;
            }
        }
        self.time.push((key, time));
    }

    fn into_json(self) -> Value {
        json!({
            "result": php_array(self.result),
            "result_error": php_array(self.error),
            "result_total": php_array(self.total),
            "result_next": php_array(self.next),
            "result_time": php_array(self.time),
        })
    }
}

/// `json_encode` of a PHP array: `[]` when empty, a list when the keys are exactly 0..n in
/// order, an object otherwise. A product that expects `{}` for "no errors" trips on this.
fn php_array(entries: Vec<Command>) -> Value {
    if entries.is_empty() {
        return json!([]);
    }
    let sequential = entries
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == i.to_string());
    if sequential {
        Value::Array(entries.into_iter().map(|(_, v)| v).collect())
    } else {
        Value::Object(entries.into_iter().collect())
    }
}

/// Replaces each `$result[key][FIELD]…` in `value` with that earlier result's scalar.
fn fill_references(value: &str, earlier: &[Command]) -> Result<String, RestError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if tail.starts_with("result[") {
            let (segments, len) = segments(&tail["result".len()..]);
            let end = at + 1 + "result".len() + len;
            out.push_str(&resolve(&rest[at..end], &segments, earlier)?);
            rest = &rest[end..];
            continue;
        }
        if let Some(kind) = ["error[", "total[", "next[", "time["]
            .iter()
            .find(|kind| tail.starts_with(*kind))
        {
            let kind = kind.trim_end_matches('[');
            return Err(RestError::argument(&format!(
                "The sandbox portal serves only $result[…] references in a batch, not ${kind}[…]"
            )));
        }
        out.push('$');
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// `[a][b][0]…` at the start of `path`: the segments and how many bytes they span. An
/// unclosed `[` ends the list, so `resolve` sees a short or empty path and refuses it.
fn segments(path: &str) -> (Vec<&str>, usize) {
    let mut segments = Vec::new();
    let mut len = 0;
    while let Some(inner) = path[len..].strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            break;
        };
        segments.push(&inner[..close]);
        len += close + 2;
    }
    (segments, len)
}

fn resolve(reference: &str, segments: &[&str], earlier: &[Command]) -> Result<String, RestError> {
    let unresolved = || {
        RestError::argument(&format!(
            "Batch reference {reference} names no value: the sandbox portal fills in only a \
             string, number or boolean from the result of an earlier command that succeeded"
        ))
    };
    let (key, path) = segments.split_first().ok_or_else(unresolved)?;
    let mut node = earlier
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .ok_or_else(unresolved)?;
    for segment in path {
        node = match node {
            Value::Object(map) => map.get(*segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or_else(unresolved)?;
    }
    match node {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        // PHP's string conversions of true, false and null.
        Value::Bool(true) => Ok("1".into()),
        Value::Bool(false) | Value::Null => Ok(String::new()),
        Value::Array(_) | Value::Object(_) => Err(unresolved()),
    }
}

/// `cmd[key]=…` pairs of a form, in order; `None` when the form has no `cmd` at all.
fn form_commands(form: &[u8]) -> Option<Vec<Command>> {
    let mut found = false;
    let mut commands: Vec<Command> = Vec::new();
    for (key, value) in form_urlencoded::parse(form) {
        let path = php::split_key(&key);
        if !path[0].eq_ignore_ascii_case("cmd") {
            continue;
        }
        found = true;
        let Some(name) = path.get(1) else {
            continue;
        };
        let name = if name.is_empty() {
            next_index(&commands)
        } else {
            name.clone()
        };
        // `cmd[k][x]=…` makes the entry an array, which the portal does not run.
        let command = if path.len() == 2 {
            Value::String(value.into_owned())
        } else {
            Value::Null
        };
        insert(&mut commands, name, command);
    }
    found.then_some(commands)
}

/// A repeated key keeps its first place and takes the last value, as PHP arrays do.
fn insert(commands: &mut Vec<Command>, key: String, command: Value) {
    match commands.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = command,
        None => commands.push((key, command)),
    }
}

/// The key PHP gives `cmd[]=…`: one past the largest integer key so far.
fn next_index(commands: &[Command]) -> String {
    commands
        .iter()
        .filter_map(|(k, _)| k.parse::<u64>().ok().filter(|n| n.to_string() == *k))
        .max()
        .map_or(0, |n| n + 1)
        .to_string()
}

/// A JSON request body, reading only `cmd` (any key case) and keeping its order.
struct JsonBody {
    cmd: Option<Vec<Command>>,
}

impl<'de> Deserialize<'de> for JsonBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = JsonBody;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonBody, A::Error> {
                let mut cmd = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key.eq_ignore_ascii_case("cmd") {
                        cmd = Some(map.next_value::<OrderedCmd>()?.0);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(JsonBody { cmd })
            }
        }
        d.deserialize_map(Top)
    }
}

/// `cmd` as sent: an object's entries in document order, or a list keyed 0, 1, ….
struct OrderedCmd(Vec<Command>);

impl<'de> Deserialize<'de> for OrderedCmd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = OrderedCmd;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or a list of commands")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedCmd, A::Error> {
                let mut commands = Vec::new();
                while let Some((key, command)) = map.next_entry::<String, Value>()? {
                    insert(&mut commands, key, command);
                }
                Ok(OrderedCmd(commands))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedCmd, A::Error> {
                let mut commands = Vec::new();
                while let Some(command) = seq.next_element::<Value>()? {
                    commands.push((commands.len().to_string(), command));
                }
                Ok(OrderedCmd(commands))
            }
        }
        d.deserialize_any(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn earlier() -> Vec<Command> {
        vec![
            ("add".into(), json!(4821)),
            ("find".into(), json!({"LEAD": [4821, 4822]})),
            ("user".into(), json!({"NAME": "Anna", "ADMIN": true})),
        ]
    }

    #[test]
    fn references_fill_in_scalars_at_any_depth() {
        assert_eq!(
            fill_references("lead $result[add] of $result[find][LEAD][1]", &earlier()).unwrap(),
            "lead 4821 of 4822"
        );
        assert_eq!(
            fill_references("$result[user][NAME]/$result[user][ADMIN]", &earlier()).unwrap(),
            "Anna/1"
        );
        assert_eq!(fill_references("cost $5", &earlier()).unwrap(), "cost $5");
    }

    #[test]
    fn references_the_fake_cannot_fill_are_refused() {
        for value in [
            "$result[find]",
            "$result[find][LEAD][7]",
            "$result[missing]",
            "$result[user][NAME",
            "$result[]",
            "$error[add]",
        ] {
            let err = fill_references(value, &earlier()).expect_err(value);
            assert_eq!(err.code, "ERROR_ARGUMENT", "{value}");
        }
    }

    #[test]
    fn form_commands_keep_their_order_and_php_keys() {
        let form = b"halt=1&cmd[c2]=a&cmd[c10]=b&cmd[c2]=c&CMD[]=d&cmd[x][y]=e";
        let commands = form_commands(form).unwrap();
        let keys: Vec<&str> = commands.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["c2", "c10", "0", "x"]);
        assert_eq!(commands[0].1, json!("c"));
        assert_eq!(commands[3].1, Value::Null);
        assert!(form_commands(b"auth=t").is_none());
    }

    #[test]
    fn json_commands_keep_document_order() {
        let body: JsonBody =
            serde_json::from_str(r#"{"auth":"t","CMD":{"m2":"a","m10":"b","m1":"c"}}"#).unwrap();
        let keys: Vec<String> = body.cmd.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["m2", "m10", "m1"]);
    }

    #[test]
    fn php_arrays_encode_as_json_encode_does() {
        assert_eq!(php_array(Vec::new()), json!([]));
        assert_eq!(
            php_array(vec![("0".into(), json!(1)), ("1".into(), json!(2))]),
            json!([1, 2])
        );
        assert_eq!(
            php_array(vec![("1".into(), json!(2))]),
            json!({"1": 2}),
            "keys not starting at 0 stay an object"
        );
    }
}
