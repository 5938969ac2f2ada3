//! AstraPBX's HTTP surface as the bridge sees it. Error bodies are `{"error": "..."}` with the
//! seed's wording where the seed shows one ("Missing required fields").

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, Path, Query, Request, State},
    http::{StatusCode, header::AUTHORIZATION, request::Parts},
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde_json::{Value, json};

use super::{Pbx, PlacedCall, Session, TokenField, jwt, unix_now};
use crate::Recorder;

pub(super) fn router(pbx: Arc<Pbx>, recorder: Recorder) -> Router {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/calls/click-to-call", post(click_to_call))
        .route("/api/v1/users", get(list_users))
        .route("/api/v1/users/{user_id}", put(update_user))
        .route("/api/v1/call-records", get(list_call_records))
        .fallback(not_found)
        .layer(from_fn_with_state(pbx.clone(), delay))
        .with_state(pbx)
        .layer(from_fn_with_state(recorder, crate::recorder::record))
}

async fn login(State(pbx): State<Arc<Pbx>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(api_key), Some(api_secret)) = (
        body.get("api_key").and_then(Value::as_str),
        body.get("api_secret").and_then(Value::as_str),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "api_key and api_secret are required",
        );
    };

    let mut state = pbx.lock();
    let Some(org) = state.orgs.get_mut(api_key) else {
        return error(StatusCode::UNAUTHORIZED, "Invalid credentials");
    };
    org.login_attempts += 1;
    if org.secret != api_secret {
        return error(StatusCode::UNAUTHORIZED, "Invalid credentials");
    }
    let (org_name, secret_generation) = (org.name.clone(), org.secret_generation);

    let now = unix_now();
    let ttl = state.token_ttl;
    let jti = uuid::Uuid::new_v4().to_string();
    let token = jwt::sign(
        &state.signing_key,
        &json!({"sub": api_key, "org_name": org_name, "iat": now, "exp": now + ttl, "jti": jti}),
    );
    let seq = state.next_seq;
    state.next_seq += 1;
    state.sessions.insert(
        jti,
        Session {
            api_key: api_key.to_string(),
            secret_generation,
            seq,
        },
    );

    let body = match state.token_field {
        TokenField::Token => json!({"token": token, "expires_in": ttl}),
        TokenField::AccessToken => {
            json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl})
        }
        TokenField::DataToken => {
            json!({"success": true, "data": {"token": token, "expires_in": ttl}})
        }
    };
    Json(body).into_response()
}

async fn click_to_call(State(pbx): State<Arc<Pbx>>, OrgKey(org): OrgKey, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (Some(from), Some(to), Some(from_type), Some(to_type)) = (
        field("from"),
        field("to"),
        field("from_type"),
        field("to_type"),
    ) else {
        return error(StatusCode::BAD_REQUEST, "Missing required fields");
    };
    for endpoint_type in [&from_type, &to_type] {
        if !ENDPOINT_TYPES.contains(&endpoint_type.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid endpoint type: {endpoint_type}"),
            );
        }
    }

    let call = PlacedCall {
        call_id: uuid::Uuid::new_v4().to_string(),
        org,
        from,
        to,
        from_type,
        to_type,
        caller_id: field("caller_id"),
        timeout: body.get("timeout").and_then(Value::as_u64),
        status: "initiated",
        created_at: unix_now(),
        body,
    };
    let answer = json!({"call_id": call.call_id, "status": call.status});
    pbx.lock().calls.push(call);
    Json(answer).into_response()
}

/// What a click-to-call leg can be. The seed shows `external` and `queue`; `extension` is the
/// obvious third (a user's phone), the rest are AstraPBX's other dialplan targets.
const ENDPOINT_TYPES: &[&str] = &["external", "extension", "queue", "ring_group", "ivr"];

async fn list_users(State(pbx): State<Arc<Pbx>>, OrgKey(org): OrgKey) -> Response {
    let state = pbx.lock();
    let users = state
        .orgs
        .get(&org)
        .map(|o| o.users.clone())
        .unwrap_or_default();
    Json(json!({"users": users, "total": users.len()})).into_response()
}

async fn update_user(
    State(pbx): State<Arc<Pbx>>,
    OrgKey(org): OrgKey,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let mut state = pbx.lock();
    let Some(user) = state
        .orgs
        .get_mut(&org)
        .and_then(|o| o.users.iter_mut().find(|u| u.id == user_id))
    else {
        return error(StatusCode::NOT_FOUND, "User not found");
    };
    let Some(ring_target) = body.get("ring_target").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "Missing required fields");
    };
    if !RING_TARGETS.contains(&ring_target) {
        return error(StatusCode::BAD_REQUEST, "Invalid ring_target");
    }
    user.ring_target = ring_target.to_string();
    Json(json!({"user": user})).into_response()
}

/// The seed's example sets `"phone"`; a user otherwise rings their extension, or both.
const RING_TARGETS: &[&str] = &["extension", "phone", "both"];

async fn list_call_records(
    State(pbx): State<Arc<Pbx>>,
    OrgKey(org): OrgKey,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => usize::MAX,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "Invalid limit"),
    };
    let state = pbx.lock();
    let own: Vec<&PlacedCall> = state.calls.iter().filter(|c| c.org == org).collect();
    let records: Vec<&PlacedCall> = own.iter().rev().take(limit).copied().collect();
    Json(json!({"records": records, "total": own.len()})).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not found")
}

/// Applied to every request, login included, so a slow PBX is slow end to end.
async fn delay(State(pbx): State<Arc<Pbx>>, req: Request, next: Next) -> Response {
    let delay = pbx.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    next.run(req).await
}

/// The `api_key` of the org whose Bearer token authorised this request.
struct OrgKey(String);

impl FromRequestParts<Arc<Pbx>> for OrgKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, pbx: &Arc<Pbx>) -> Result<Self, Response> {
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        pbx.authorize(bearer)
            .map(OrgKey)
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "Unauthorized"))
    }
}

impl Pbx {
    fn authorize(&self, bearer: Option<&str>) -> Option<String> {
        let mut state = self.lock();
        if state.force_401 > 0 {
            state.force_401 -= 1;
            return None;
        }
        let claims = jwt::verify(&state.signing_key, bearer?)?;
        if claims.get("exp")?.as_u64()? <= unix_now() {
            return None;
        }
        let session = state.sessions.get(claims.get("jti")?.as_str()?)?;
        if session.seq < state.expired_below {
            return None;
        }
        let org = state.orgs.get(&session.api_key)?;
        (org.secret_generation == session.secret_generation).then(|| session.api_key.clone())
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}
