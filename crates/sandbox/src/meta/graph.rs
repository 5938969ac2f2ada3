//! The Graph API routes the product calls (protocol §3, §4, §7, and `subscribed_apps` from §0).
//! Check order follows Graph: token first, then the path's version and object id, then the body.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, State},
    http::HeaderMap,
    routing::{get, post},
};
use serde_json::{Value, json};

use super::{
    errors::GraphError,
    media, payload,
    sender::{self, Fate},
    state::{SentMessage, Shared},
    validate::{self, MediaRef, Request, Send},
};
use crate::recorder::{Recorder, record};

/// 24 hours: the customer-service window (§6).
const WINDOW_SECS: u64 = 24 * 60 * 60;
/// Above the largest media kind (documents, 100 MB) so size errors come from the fake's own
/// checks, not from axum's default 2 MB limit.
const BODY_LIMIT: usize = 110 * 1024 * 1024;

pub fn router(shared: Arc<Shared>, recorder: Recorder) -> Router {
    Router::new()
        .route(
            "/lookaside/whatsapp_business/attachments/",
            get(media::download_media),
        )
        .route("/{version}/{id}/messages", post(send_message))
        .route("/{version}/{id}/media", post(media::upload_media))
        .route("/{version}/{id}/message_templates", get(list_templates))
        .route(
            "/{version}/{id}/subscribed_apps",
            get(list_subscribed_apps)
                .post(subscribe_app)
                .delete(unsubscribe_app),
        )
        .route(
            "/{version}/{id}/subscriptions",
            get(super::subscriptions::list).post(super::subscriptions::subscribe),
        )
        .route(
            "/{version}/{id}",
            get(get_object).delete(media::delete_media),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(recorder, record))
        .with_state(shared)
}

/// Graph takes the token from `Authorization: Bearer|OAuth …` or an `access_token` parameter.
pub fn authorize(s: &Shared, headers: &HeaderMap, query: Option<&str>) -> Result<(), GraphError> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth")
        })
        .map(|(_, token)| token.trim().to_string());
    let from_query = || {
        form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    };
    let Some(token) = from_header.or_else(from_query) else {
        return Err(GraphError::invalid_token());
    };
    let st = s.state();
    if token == st.access_token {
        Ok(())
    } else if st.retired_tokens.contains(&token) {
        Err(GraphError::expired_token())
    } else {
        Err(GraphError::invalid_token())
    }
}

/// A first segment that is no `vNN.N` is, to Graph, an object id it cannot find.
pub fn check_version(s: &Shared, version: &str, verb: &str) -> Result<(), GraphError> {
    let valid = version
        .strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
    if !valid {
        return Err(GraphError::unknown_object(verb, version));
    }
    let mut st = s.state();
    if !st.graph_versions.iter().any(|v| v == version) {
        st.graph_versions.push(version.to_string());
    }
    Ok(())
}

/// Token, version, then the object id must be this fake's phone number.
pub fn check_phone_path(
    s: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
    version: &str,
    id: &str,
    verb: &str,
) -> Result<(), GraphError> {
    authorize(s, headers, query)?;
    check_version(s, version, verb)?;
    if !s.cfg.owns_number(id) {
        return Err(GraphError::unknown_object(verb, id));
    }
    Ok(())
}

async fn send_message(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, GraphError> {
    check_phone_path(&s, &headers, query.as_deref(), &version, &id, "post")?;
    // Graph parses what it can; an unreadable body simply lacks every parameter.
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let templates = s.state().templates.clone();
    match validate::parse(&body, &templates)? {
        Request::MarkRead { message_id } => mark_read(&s, message_id),
        Request::Send(mut send) => {
            send.from_phone_number_id = id;
            accept_send(&s, version, body, send)
        }
    }
}

fn mark_read(s: &Shared, message_id: String) -> Result<Json<Value>, GraphError> {
    let mut st = s.state();
    // Only incoming wamids can be marked read; Meta refuses its own outbound ids too.
    if !st.inbound.contains_key(&message_id) {
        return Err(GraphError::invalid_value(format!(
            "Message {message_id} is not a valid incoming message to mark as read."
        )));
    }
    st.marked_read.push(message_id);
    Ok(Json(json!({"success": true})))
}

fn accept_send(
    s: &Arc<Shared>,
    version: String,
    body: Value,
    send: Send,
) -> Result<Json<Value>, GraphError> {
    let now = s.clock.now();
    let wamid = payload::wamid(&send.wa_id, false);
    let fate = {
        let mut st = s.state();
        st.send_attempts += 1;
        let attempt = st.send_attempts;
        if let Some(code) = st.failures_at_attempt.remove(&attempt) {
            return Err(GraphError::for_code(code));
        }
        if let Some(code) = st.sync_failures.pop_front() {
            return Err(GraphError::for_code(code));
        }
        let in_window = st
            .last_inbound
            .get(&(send.from_phone_number_id.clone(), send.wa_id.clone()))
            .is_some_and(|last| now < last + WINDOW_SECS);
        if send.template_category.is_none() && !in_window {
            Fate::Fail {
                code: 131_047,
                details: None,
            }
        } else if let Some(code) = st.async_failures.pop_front() {
            Fate::Fail {
                code,
                details: None,
            }
        } else {
            match &send.media {
                Some(MediaRef::Id(id)) if !st.media.iter().any(|m| &m.id == id) => Fate::Fail {
                    code: 131_053,
                    details: Some(format!("Media id {id} does not exist or was deleted.")),
                },
                Some(MediaRef::Link(url)) => Fate::FetchLink(url.clone()),
                _ => Fate::Deliver,
            }
        }
    };
    let mut message = json!({"id": wamid});
    if send.template_category.is_some() {
        message["message_status"] = json!("accepted");
    }
    let response = json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": send.input, "wa_id": send.wa_id}],
        "messages": [message],
    });
    s.state().sent.push(SentMessage {
        wamid: wamid.clone(),
        wa_id: send.wa_id.clone(),
        kind: send.kind.clone(),
        body,
        graph_version: version,
        from_phone_number_id: send.from_phone_number_id.clone(),
    });
    tokio::spawn(sender::report_outcome(s.clone(), wamid, send, fate));
    Ok(Json(response))
}

async fn get_object(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, GraphError> {
    authorize(&s, &headers, query.as_deref())?;
    check_version(&s, &version, "get")?;
    let fields = requested_fields(query.as_deref());
    if id == s.cfg.phone_number_id {
        return node(
            &s,
            "WhatsAppBusinessPhoneNumber",
            &fields,
            PHONE_DEFAULT_FIELDS,
            phone_field,
        );
    }
    if let Some(extra) = s.cfg.extra_numbers.iter().find(|n| n.phone_number_id == id) {
        // Another number of the same account: its own id, digits and name over the main one's.
        let mut answer = node(
            &s,
            "WhatsAppBusinessPhoneNumber",
            &fields,
            PHONE_DEFAULT_FIELDS,
            phone_field,
        )?;
        let out = &mut answer.0;
        out["id"] = json!(extra.phone_number_id);
        if out.get("display_phone_number").is_some() {
            out["display_phone_number"] = json!(format!("+{}", extra.display_phone_number));
        }
        if out.get("verified_name").is_some() {
            out["verified_name"] = json!(extra.verified_name);
        }
        return Ok(answer);
    }
    if id == s.cfg.waba_id {
        return node(
            &s,
            "WhatsAppBusinessAccount",
            &fields,
            WABA_DEFAULT_FIELDS,
            waba_field,
        );
    }
    media::media_node(&s, &id, query.as_deref()).map(Json)
}

const PHONE_DEFAULT_FIELDS: &[&str] = &[
    "verified_name",
    "code_verification_status",
    "display_phone_number",
    "quality_rating",
    "platform_type",
    "throughput",
];
const WABA_DEFAULT_FIELDS: &[&str] = &[
    "name",
    "currency",
    "timezone_id",
    "message_template_namespace",
];

fn requested_fields(query: Option<&str>) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "fields")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|f| f.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|f| !f.is_empty())
        .collect()
}

/// Graph answers exactly the requested fields plus `id`, and refuses unknown ones.
fn node(
    s: &Shared,
    node_type: &str,
    fields: &[String],
    defaults: &[&str],
    field: fn(&Shared, &str) -> Option<Value>,
) -> Result<Json<Value>, GraphError> {
    let wanted: Vec<&str> = if fields.is_empty() {
        defaults.to_vec()
    } else {
        fields.iter().map(String::as_str).collect()
    };
    let mut out = serde_json::Map::new();
    for name in wanted {
        let value = field(s, name).ok_or_else(|| {
            GraphError::invalid_parameter(format!(
                "Tried accessing nonexisting field ({name}) on node type ({node_type})"
            ))
        })?;
        out.insert(name.to_string(), value);
    }
    out.insert("id".into(), field(s, "id").expect("every node has an id"));
    Ok(Json(Value::Object(out)))
}

fn phone_field(s: &Shared, name: &str) -> Option<Value> {
    let c = &s.cfg;
    Some(match name {
        "id" => json!(c.phone_number_id),
        // Formatted here, bare digits in webhook metadata (§7).
        "display_phone_number" => json!(c.formatted_phone_number),
        "verified_name" => json!(c.verified_name),
        "quality_rating" => json!("GREEN"),
        "code_verification_status" => json!("VERIFIED"),
        "name_status" => json!("APPROVED"),
        "platform_type" => json!("CLOUD_API"),
        "throughput" => json!({"level": "STANDARD"}),
        "messaging_limit_tier" => json!("TIER_1K"),
        "account_mode" => json!("LIVE"),
        "status" => json!("CONNECTED"),
        "is_official_business_account" => json!(false),
        _ => return None,
    })
}

fn waba_field(s: &Shared, name: &str) -> Option<Value> {
    let c = &s.cfg;
    Some(match name {
        "id" => json!(c.waba_id),
        "name" => json!(c.verified_name),
        "currency" => json!("EUR"),
        "timezone_id" => json!("1"),
        "message_template_namespace" => json!("sandbox_template_namespace"),
        _ => return None,
    })
}

/// Token, version, then the id must be this fake's WABA.
fn check_waba_path(
    s: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
    version: &str,
    id: &str,
    verb: &str,
) -> Result<(), GraphError> {
    authorize(s, headers, query)?;
    check_version(s, version, verb)?;
    if id != s.cfg.waba_id {
        return Err(GraphError::unknown_object(verb, id));
    }
    Ok(())
}

async fn subscribe_app(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, GraphError> {
    check_waba_path(&s, &headers, query.as_deref(), &version, &id, "post")?;
    s.state().subscribed = true;
    Ok(Json(json!({"success": true})))
}

async fn list_subscribed_apps(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, GraphError> {
    check_waba_path(&s, &headers, query.as_deref(), &version, &id, "get")?;
    let data = if s.state().subscribed {
        let c = &s.cfg;
        vec![json!({"whatsapp_business_api_data": {
            "link": format!("https://www.facebook.com/games/?app_id={}", c.app_id),
            "name": c.app_name,
            "id": c.app_id,
        }})]
    } else {
        Vec::new()
    };
    Ok(Json(json!({"data": data})))
}

async fn unsubscribe_app(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, GraphError> {
    check_waba_path(&s, &headers, query.as_deref(), &version, &id, "delete")?;
    s.state().subscribed = false;
    Ok(Json(json!({"success": true})))
}

/// The most templates one `message_templates` page holds, as Graph caps `limit`.
const TEMPLATES_MAX_LIMIT: usize = 100;

/// `GET /{waba-id}/message_templates`: the account's templates a page at a time, with Graph's
/// cursor paging (`paging.cursors.after`, and `paging.next` while more follow). `status`
/// filters (`APPROVED`), `fields` picks the fields, `name` only those of that name.
async fn list_templates(
    State(s): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, GraphError> {
    check_waba_path(&s, &headers, query.as_deref(), &version, &id, "get")?;
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let (all, page_cap) = {
        let st = s.state();
        (st.templates.clone(), st.templates_page_size)
    };
    let limit = match param("limit") {
        None => 25,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=TEMPLATES_MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                GraphError::invalid_parameter(format!(
                    "Param limit must be a number from 1 to {TEMPLATES_MAX_LIMIT}"
                ))
            })?,
    };
    let start = match param("after") {
        None => 0,
        Some(c) => decode_cursor(&c)
            .ok_or_else(|| GraphError::invalid_parameter("Param after is not a valid cursor"))?,
    };
    let status = param("status").map(|v| v.to_ascii_uppercase());
    let name = param("name");
    let listed: Vec<(usize, &super::Template)> = all
        .iter()
        .enumerate()
        .filter(|(_, t)| status.as_ref().is_none_or(|st| &t.status == st))
        .filter(|(_, t)| name.as_ref().is_none_or(|n| &t.name == n))
        .collect();
    // Graph may answer fewer than `limit`; a client must follow the cursor, not count.
    let page: Vec<&(usize, &super::Template)> = listed
        .iter()
        .skip(start)
        .take(limit.min(page_cap))
        .collect();
    let fields = requested_fields(query.as_deref());
    let data: Vec<Value> = page
        .iter()
        .map(|(i, t)| {
            let full = t.listed(*i);
            if fields.is_empty() {
                return full;
            }
            let mut out = serde_json::Map::new();
            for f in fields.iter().chain(std::iter::once(&"id".to_string())) {
                if let Some(v) = full.get(f.as_str()) {
                    out.insert(f.clone(), v.clone());
                }
            }
            Value::Object(out)
        })
        .collect();
    let mut answer = json!({"data": data});
    if !page.is_empty() {
        let end = start + page.len();
        let mut paging = json!({"cursors": {
            "before": encode_cursor(start),
            "after": encode_cursor(end),
        }});
        if end < listed.len() {
            let mut next_pairs: Vec<(String, String)> = pairs
                .into_iter()
                .filter(|(k, _)| k != "after" && k != "access_token")
                .collect();
            next_pairs.push(("after".into(), encode_cursor(end)));
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(next_pairs)
                .finish();
            paging["next"] = json!(format!(
                "{}/{version}/{id}/message_templates?{q}",
                s.base_url()
            ));
        }
        answer["paging"] = paging;
    }
    Ok(Json(answer))
}

/// Graph's cursors are opaque base64; these carry the position of the next template.
fn encode_cursor(position: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("tpl:{position}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("tpl:")?
        .parse()
        .ok()
}
