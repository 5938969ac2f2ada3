//! `POST /rest/{method}[.json]`: the order a real portal applies — outage, rate limit, token,
//! scope, then the method — and the response envelope (`result` + `time`, or
//! `error`/`error_description` with a 4xx/5xx). `batch` is admitted here like any call, then
//! `batch.rs` runs its commands through `run_command`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::oauth::{self, TokenRefusal};
use super::state::iso8601;
use super::{Shared, batch, connector, crm, events, inbound, php};

/// A method failure as the portal reports it.
#[derive(Debug)]
pub(crate) struct RestError {
    pub status: StatusCode,
    pub code: String,
    pub description: String,
}

impl RestError {
    pub fn new(status: u16, code: &str, description: &str) -> Self {
        RestError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.into(),
            description: description.into(),
        }
    }

    /// `ArgumentNullException` / `ArgumentException` from a handler.
    pub fn argument(description: &str) -> Self {
        RestError::new(400, "ERROR_ARGUMENT", description)
    }

    /// `{"error", "error_description"}`, the body alone and each entry of `result_error`.
    pub fn body(&self) -> Value {
        json!({"error": self.code, "error_description": self.description})
    }

    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A successful method outcome; list methods add `total` and `next`.
pub(crate) enum Reply {
    Result(Value),
    Page {
        result: Value,
        total: usize,
        next: Option<usize>,
    },
}

/// Who is calling, resolved from the `auth` token.
pub(crate) struct Caller {
    pub user_id: u64,
}

pub(crate) type MethodResult = Result<Reply, RestError>;

pub(crate) fn normalize_method(method: &str) -> String {
    let lower = method.to_lowercase();
    lower.strip_suffix(".json").unwrap_or(&lower).to_string()
}

pub(crate) async fn call_method(
    State(s): State<Shared>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = now_f64();
    let method = normalize_method(&method);
    let params = read_params(query.as_deref(), &headers, &body);
    let caller = match admit(&s, &method, &params) {
        Err(Refused::Outage) => return super::outage(),
        Err(Refused::Error(e)) => return e.into_response(),
        Ok(caller) => caller,
    };
    let outcome = if method == "batch" {
        let commands = batch::commands(query.as_deref(), &headers, &body);
        Ok(batch::run(&s, &params, commands, &caller).await)
    } else {
        run_method(&s, &method, &params, &caller).await
    };
    match outcome {
        Ok(reply) => envelope(reply, started),
        Err(e) => e.into_response(),
    }
}

/// One command of an admitted `batch`: what the same call alone meets after the batch's outage,
/// rate limit and token checks, in the same order — an injected failure, then the method.
pub(crate) async fn run_command(
    s: &Shared,
    method: &str,
    params: &Value,
    caller: &Caller,
) -> MethodResult {
    if let Some(injected) = take_injected(s, method) {
        return Err(injected);
    }
    run_method(s, method, params, caller).await
}

/// Scope, latency and the method itself: the part of a call that is the same alone and inside
/// a `batch`, so both change the portal alike.
async fn run_method(s: &Shared, method: &str, params: &Value, caller: &Caller) -> MethodResult {
    check_scope(s, method)?;
    let _sending = Sending::enter(s, method, params);
    let latency = s.portal().latency.get(method).copied();
    if let Some((min, max)) = latency {
        let wait = if max > min {
            rand::random_range(min..=max)
        } else {
            min
        };
        tokio::time::sleep(wait).await;
    }
    dispatch(s, method, params, caller).await
}

/// Marks the customer messages of one `imconnector.send.messages` call as being sent until
/// the call is answered or its caller goes away (the handler is dropped).
struct Sending {
    s: Shared,
    ids: Vec<String>,
}

impl Sending {
    fn enter(s: &Shared, method: &str, params: &Value) -> Option<Self> {
        if method != "imconnector.send.messages" {
            return None;
        }
        let ids = super::inbound::message_ids(params);
        let mut portal = s.portal();
        for id in &ids {
            let n = portal.sending.entry(id.clone()).or_default();
            *n += 1;
            if *n > 1 {
                portal.overlapping.push(id.clone());
            }
        }
        Some(Self { s: s.clone(), ids })
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        let mut portal = self.s.portal();
        for id in &self.ids {
            if let Some(n) = portal.sending.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    portal.sending.remove(id);
                }
            }
        }
    }
}

/// Query string and body both carry parameters (`auth` often sits in the query); a JSON body
/// is taken as JSON, anything else goes through `parse_str` like PHP's `$_POST`.
fn read_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Value {
    let mut params = php::parse_form(query.unwrap_or_default().as_bytes());
    let from_body = if is_json(headers) {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    } else {
        php::parse_form(body)
    };
    if let (Value::Object(into), Value::Object(from)) = (&mut params, from_body) {
        into.extend(from);
    }
    params
}

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"))
}

/// Everything before the method runs. Injected failures come first so tests can force any
/// error regardless of the product's token state.
enum Refused {
    Outage,
    Error(RestError),
}

impl From<RestError> for Refused {
    fn from(e: RestError) -> Self {
        Refused::Error(e)
    }
}

fn admit(s: &Shared, method: &str, params: &Value) -> Result<Caller, Refused> {
    if s.portal().down {
        return Err(Refused::Outage);
    }
    if let Some(injected) = take_injected(s, method) {
        return Err(injected.into());
    }
    let mut portal = s.portal();
    if !portal.bucket.admit() {
        portal.limit_refusals += 1;
        return Err(RestError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests").into());
    }
    let token = php::as_text(php::param(params, "auth"));
    let user_id = match oauth::check_access(&portal, token.as_deref()) {
        Ok(user_id) => user_id,
        Err(TokenRefusal::Missing) => {
            return Err(RestError::new(401, "NO_AUTH_FOUND", "Wrong authorization data").into());
        }
        Err(TokenRefusal::Expired) => {
            return Err(RestError::new(
                401,
                "expired_token",
                "The access token provided has expired.",
            )
            .into());
        }
        Err(TokenRefusal::Invalid) => {
            return Err(RestError::new(
                401,
                "invalid_token",
                "The access token provided is invalid.",
            )
            .into());
        }
    };
    Ok(Caller { user_id })
}

/// Uses up one injected failure of `method`, if a test queued any.
fn take_injected(s: &Shared, method: &str) -> Option<RestError> {
    let mut portal = s.portal();
    let queue = portal.inject.get_mut(method)?;
    let next = queue.first_mut()?;
    next.remaining = next.remaining.saturating_sub(1);
    let err = RestError::new(next.status, &next.code, "Injected failure");
    if next.remaining == 0 {
        queue.remove(0);
    }
    Some(err)
}

fn check_scope(s: &Shared, method: &str) -> Result<(), RestError> {
    match required_scope(method) {
        Some(scope) if !s.portal().cfg.scope.split(',').any(|s| s.trim() == scope) => {
            Err(RestError::new(
                403,
                "insufficient_scope",
                "The request requires higher privileges than provided by the access token.",
            ))
        }
        _ => Ok(()),
    }
}

/// `imconnector.*` live in the `imopenlines` scope (protocol §1).
fn required_scope(method: &str) -> Option<&'static str> {
    let family = method.split('.').next().unwrap_or_default();
    match family {
        "imconnector" | "imopenlines" => Some("imopenlines"),
        "im" => Some("im"),
        "crm" => Some("crm"),
        _ => None,
    }
}

async fn dispatch(s: &Shared, method: &str, params: &Value, caller: &Caller) -> MethodResult {
    match method {
        "imconnector.register" => connector::register(s, params),
        "imconnector.unregister" => connector::unregister(s, params),
        "imconnector.activate" => connector::activate(s, params),
        "imconnector.status" => connector::status(s, params),
        "imconnector.connector.data.set" => connector::data_set(s, params),
        "imconnector.list" => connector::list(s),
        "imconnector.set.error" => connector::set_error(s, params),
        "imconnector.send.messages" => inbound::send_messages(s, params).await,
        "imconnector.send.status.delivery" => connector::status_delivery(s, params),
        "imconnector.send.status.reading" => connector::status_reading(s, params),
        "im.message.add" => events::im_message_add(s, params, caller),
        "event.bind" => events::bind(s, params),
        "event.get" => events::get(s),
        "event.unbind" => events::unbind(s, params),
        "crm.duplicate.findbycomm" => crm::find_by_comm(s, params),
        "crm.lead.add" => crm::lead_add(s, params),
        "crm.lead.get" => crm::lead_get(s, params),
        "crm.lead.list" => crm::lead_list(s, params),
        "app.info" => app_info(s),
        "user.admin" => Ok(Reply::Result(json!(
            s.portal().cfg.admin_user_ids.contains(&caller.user_id)
        ))),
        "imopenlines.config.get" => crm::openlines_config(s, params),
        "imopenlines.config.list.get" => crm::openlines_list(s),
        "imopenlines.config.add" => crm::openlines_add(s, params),
        _ => Err(RestError::new(
            404,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )),
    }
}

fn app_info(s: &Shared) -> MethodResult {
    let portal = s.portal();
    Ok(Reply::Result(json!({
        "ID": 17,
        "CODE": portal.cfg.client_id,
        "VERSION": 1,
        "STATUS": "L",
        "INSTALLED": portal.installed,
        "PAYMENT_EXPIRED": "N",
        "DAYS": null,
        "LANGUAGE_ID": "en",
        "LICENSE": "en_project",
        "LICENSE_TYPE": "project",
        "LICENSE_FAMILY": "project",
    })))
}

fn envelope(reply: Reply, started: f64) -> Response {
    let time = time(started, now_f64());
    let body = match reply {
        Reply::Result(result) => json!({"result": result, "time": time}),
        Reply::Page {
            result,
            total,
            next,
        } => {
            let mut body = json!({"result": result, "total": total, "time": time});
            if let Some(next) = next {
                body["next"] = json!(next);
            }
            body
        }
    };
    Json(body).into_response()
}

/// The `time` block of an answer, and of each command in a batch's `result_time`.
pub(crate) fn time(started: f64, finished: f64) -> Value {
    json!({
        "start": started,
        "finish": finished,
        "duration": finished - started,
        "processing": finished - started,
        "date_start": iso8601(started as i64),
        "date_finish": iso8601(finished as i64),
        "operating_reset_at": started as i64 + 600,
        "operating": 0,
    })
}

pub(crate) fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
