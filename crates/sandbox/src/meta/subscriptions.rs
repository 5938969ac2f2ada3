//! The app's webhook configuration: `POST /{app-id}/subscriptions` (what the App Dashboard's
//! Webhooks form does) and `GET` to list it. Graph takes these only with the app access token
//! `{app-id}|{app-secret}`, and before it saves a callback it calls it with the verification
//! handshake (§1), answering error 2200 when the callback does not echo the challenge. Once
//! saved, the fake posts its webhooks to that callback.
//!
//! One concession to running on loopback: Meta takes only `https` callbacks; the fake also
//! takes `http` to 127.0.0.1 / localhost, since the sandbox has no certificate. Any other
//! `http` callback is refused as Meta refuses it.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
};
use serde_json::{Value, json};

use super::{errors::GraphError, graph::check_version, sender::WebhookSender, state::Shared};

/// A saved webhook of the app.
#[derive(Debug, Clone)]
pub struct AppSubscription {
    pub object: String,
    pub callback_url: String,
    pub verify_token: String,
    pub fields: Vec<String>,
}

fn app_token_only(s: &Shared, headers: &HeaderMap, query: Option<&str>) -> Result<(), GraphError> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, t)| t.trim().to_string());
    let token = from_header.or_else(|| param(query, None, "access_token"));
    let Some(token) = token else {
        return Err(GraphError::invalid_token());
    };
    let app_token = format!("{}|{}", s.cfg.app_id, s.cfg.app_secret);
    if token == app_token {
        return Ok(());
    }
    if token == s.state().access_token {
        return Err(GraphError {
            status: StatusCode::BAD_REQUEST,
            code: 15,
            kind: "OAuthException",
            message: "(#15) This method must be called with an app access_token.".into(),
            subcode: None,
            details: None,
        });
    }
    Err(GraphError::invalid_token())
}

/// A parameter from the query string or, for a POST, the form body (Graph reads both).
fn param(query: Option<&str>, body: Option<&[u8]>, name: &str) -> Option<String> {
    let from = |bytes: &[u8]| {
        form_urlencoded::parse(bytes)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    from(query.unwrap_or("").as_bytes()).or_else(|| body.and_then(from))
}

fn check_app_path(
    s: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
    version: &str,
    id: &str,
    verb: &str,
) -> Result<(), GraphError> {
    app_token_only(s, headers, query)?;
    check_version(s, version, verb)?;
    if id != s.cfg.app_id {
        return Err(GraphError::unknown_object(verb, id));
    }
    Ok(())
}

fn callback_allowed(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => true,
        "http" => matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
        _ => false,
    }
}

pub(super) async fn subscribe(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, GraphError> {
    check_app_path(&s, &headers, query.as_deref(), &version, &id, "post")?;
    let get = |name: &str| param(query.as_deref(), Some(&body), name);
    let object = get("object").ok_or_else(|| GraphError::param_required("object"))?;
    if object != "whatsapp_business_account" {
        return Err(GraphError::invalid_parameter(format!(
            "Param object must be one of {{user, page, permissions, payments, whatsapp_business_account, …}}; got {object}"
        )));
    }
    let callback_url =
        get("callback_url").ok_or_else(|| GraphError::param_required("callback_url"))?;
    if !callback_allowed(&callback_url) {
        return Err(GraphError::invalid_parameter(
            "Param callback_url must be a valid https URL",
        ));
    }
    let verify_token =
        get("verify_token").ok_or_else(|| GraphError::param_required("verify_token"))?;
    let fields: Vec<String> = get("fields")
        .unwrap_or_default()
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if fields.is_empty() {
        return Err(GraphError::param_required("fields"));
    }
    // Meta saves nothing until the callback passes the handshake.
    if let Err(e) = WebhookSender::new(s.clone())
        .verify_subscription(&callback_url, &verify_token)
        .await
    {
        return Err(GraphError {
            status: StatusCode::BAD_REQUEST,
            code: 2200,
            kind: "OAuthException",
            message: format!("(#2200) Callback verification failed with the following errors: {e}"),
            subcode: None,
            details: None,
        });
    }
    let mut st = s.state();
    st.app_subscriptions.retain(|a| a.object != object);
    st.app_subscriptions.push(AppSubscription {
        object,
        callback_url: callback_url.clone(),
        verify_token,
        fields,
    });
    st.webhook_target = Some(callback_url);
    Ok(Json(json!({"success": true})))
}

pub(super) async fn list(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, GraphError> {
    check_app_path(&s, &headers, query.as_deref(), &version, &id, "get")?;
    let data: Vec<Value> = s
        .state()
        .app_subscriptions
        .iter()
        .map(|a| {
            json!({
                "object": a.object,
                "callback_url": a.callback_url,
                "active": true,
                "fields": a.fields.iter().map(|f| json!({"name": f, "version": s.cfg.graph_version})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({"data": data})))
}
