//! `POST /rest/{method}[.json]`: the order a real portal applies — outage, rate limit, token,
//! scope, then the method — and the response envelope (`result` + `time`, or
//! `error`/`error_description` with a 4xx/5xx).

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
use super::{Shared, connector, crm, events, inbound, php};

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

    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "error_description": self.description})),
        )
            .into_response()
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
    match admit(&s, &method, &params) {
        Err(Refused::Outage) => super::outage(),
        Err(Refused::Error(e)) => e.into_response(),
        Ok(caller) => {
            let _sending = Sending::enter(&s, &method, &params);
            let latency = s.portal().latency.get(&method).copied();
            if let Some((min, max)) = latency {
                let wait = if max > min {
                    rand::random_range(min..=max)
                } else {
                    min
                };
                tokio::time::sleep(wait).await;
            }
            match dispatch(&s, &method, &params, &caller).await {
                Ok(reply) => envelope(reply, started),
                Err(e) => e.into_response(),
            }
        }
    }
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
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let from_body = if is_json {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    } else {
        php::parse_form(body)
    };
    if let (Value::Object(into), Value::Object(from)) = (&mut params, from_body) {
        into.extend(from);
    }
    params
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
    let mut portal = s.portal();
    if portal.down {
        return Err(Refused::Outage);
    }
    if let Some(queue) = portal.inject.get_mut(method)
        && let Some(next) = queue.first_mut()
    {
        next.remaining = next.remaining.saturating_sub(1);
        let err = RestError::new(next.status, &next.code, "Injected failure");
        if next.remaining == 0 {
            queue.remove(0);
        }
        return Err(err.into());
    }
    if !portal.bucket.admit() {
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
    if let Some(scope) = required_scope(method)
        && !portal.cfg.scope.split(',').any(|s| s.trim() == scope)
    {
        return Err(RestError::new(
            403,
            "insufficient_scope",
            "The request requires higher privileges than provided by the access token.",
        )
        .into());
    }
    Ok(Caller { user_id })
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
    let finished = now_f64();
    let time = json!({
        "start": started,
        "finish": finished,
        "duration": finished - started,
        "processing": finished - started,
        "date_start": iso8601(started as i64),
        "date_finish": iso8601(finished as i64),
        "operating_reset_at": started as i64 + 600,
        "operating": 0,
    });
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

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
