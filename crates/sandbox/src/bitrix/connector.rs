//! `imconnector.*` management and status methods (protocol §4), following the module source:
//! register/unregister report failure inside a 200 `result`, activate/status key on
//! (connector, line) with LINE defaulting to 0, delivery confirmations must point at a real
//! operator message and carry `message.id` as an array.

use serde_json::{Value, json};

use super::Shared;
use super::php::{self, field};
use super::rest::{MethodResult, Reply, RestError};
use super::state::{ChatMessage, Connector, ConnectorStatus};

/// Connectors every portal lists before any app registers one.
const BUILT_IN: &[(&str, &str)] = &[
    ("livechat", "Live Chat"),
    ("whatsappbytwilio", "WhatsApp (Twilio)"),
    ("telegrambot", "Telegram"),
    ("vkgroup", "VK"),
    ("facebook", "Facebook"),
    ("network", "Bitrix24.Network"),
];

fn nested_failure(code: &str, description: &str) -> MethodResult {
    Ok(Reply::Result(json!({
        "result": false,
        "error": code,
        "error_description": description,
    })))
}

pub(crate) fn register(s: &Shared, params: &Value) -> MethodResult {
    let params = php::keys_to_upper(params);
    let id = php::as_text(params.get("ID")).unwrap_or_default();
    if id.contains('.') {
        return nested_failure(
            "APPLICATION_REGISTRATION_ERROR_POINT",
            "The connector ID must not contain a period",
        );
    }
    let icon = params.get("ICON");
    if php::is_empty(params.get("ID")) {
        return nested_failure("CONNECTOR_ID_REQUIRED", "Connector ID is required");
    }
    if php::is_empty(params.get("NAME")) {
        return nested_failure("NAME_REQUIRED", "Connector name is required");
    }
    if php::is_empty(field(icon, "DATA_IMAGE")) {
        return nested_failure("ICON_REQUIRED", "Connector icon is required");
    }
    if php::is_empty(params.get("PLACEMENT_HANDLER")) {
        return nested_failure("NO_PLACEMENT_HANDLER", "Placement handler is required");
    }
    let id = id.to_lowercase();
    let connector = Connector {
        id: id.clone(),
        name: php::as_text(params.get("NAME")).unwrap_or_default(),
        placement_handler: php::as_text(params.get("PLACEMENT_HANDLER")).unwrap_or_default(),
        params: params.clone(),
    };
    // Same ID again updates the registration in place.
    s.portal().connectors.insert(id, connector);
    Ok(Reply::Result(json!({"result": true})))
}

pub(crate) fn unregister(s: &Shared, params: &Value) -> MethodResult {
    let id = php::as_text(php::param(params, "ID"))
        .unwrap_or_default()
        .to_lowercase();
    let mut portal = s.portal();
    if id.is_empty() || portal.connectors.remove(&id).is_none() {
        return nested_failure(
            "APPLICATION_UNREGISTRATION_ERROR",
            "Failed to unregister the connector",
        );
    }
    portal.statuses.retain(|(c, _), _| c != &id);
    Ok(Reply::Result(json!({"result": true})))
}

fn connector_and_line(params: &Value) -> Result<(String, i64), RestError> {
    let connector = php::as_text(php::param(params, "CONNECTOR"))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| RestError::argument("Argument 'CONNECTOR' is null or empty"))?;
    if php::param(params, "LINE").is_none() {
        return Err(RestError::argument("Argument 'LINE' is null or empty"));
    }
    Ok((
        connector.to_lowercase(),
        php::int_or_zero(php::param(params, "LINE")),
    ))
}

pub(crate) fn activate(s: &Shared, params: &Value) -> MethodResult {
    let (connector, line) = connector_and_line(params)?;
    let Some(active) = php::param(params, "ACTIVE") else {
        return Err(RestError::argument("Argument 'ACTIVE' is null or empty"));
    };
    let mut portal = s.portal();
    if !portal.connectors.contains_key(&connector) {
        return Err(RestError::new(
            400,
            "IMCONNECTOR_NO_CORRECT_PROVIDER",
            "No correct provider for this connector",
        ));
    }
    if php::is_empty(Some(active)) {
        // Deactivation deletes the status row rather than flagging it (module source).
        portal.statuses.remove(&(connector, line));
    } else {
        let status = portal.statuses.entry((connector, line)).or_default();
        status.active = true;
        status.connected = true;
        status.registered = true;
        status.error = false;
    }
    Ok(Reply::Result(json!(true)))
}

pub(crate) fn status(s: &Shared, params: &Value) -> MethodResult {
    let connector = php::as_text(php::param(params, "CONNECTOR"))
        .unwrap_or_default()
        .to_lowercase();
    let line = php::int_or_zero(php::param(params, "LINE"));
    let status = s
        .portal()
        .statuses
        .get(&(connector.clone(), line))
        .cloned()
        .unwrap_or_default();
    Ok(Reply::Result(json!({
        "LINE": line,
        "CONNECTOR": connector,
        "ERROR": status.error,
        "CONFIGURED": status.configured(),
        "STATUS": status.status(),
    })))
}

pub(crate) fn data_set(s: &Shared, params: &Value) -> MethodResult {
    let (connector, line) = connector_and_line(params)?;
    let data = php::param(params, "DATA")
        .and_then(Value::as_object)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| RestError::argument("Argument 'DATA' is null or empty"))?;
    let mut portal = s.portal();
    let status = portal.statuses.entry((connector, line)).or_default();
    // The module merges new keys into the old data (docs claim a full rewrite).
    for (k, v) in data {
        status
            .data
            .insert(k.to_uppercase(), php::as_text(Some(v)).unwrap_or_default());
    }
    Ok(Reply::Result(json!(true)))
}

pub(crate) fn list(s: &Shared) -> MethodResult {
    let mut out = serde_json::Map::new();
    for (id, name) in BUILT_IN {
        out.insert((*id).into(), json!(name));
    }
    for c in s.portal().connectors.values() {
        out.insert(c.id.clone(), json!(c.name));
    }
    Ok(Reply::Result(Value::Object(out)))
}

pub(crate) fn set_error(s: &Shared, params: &Value) -> MethodResult {
    let (connector, line) = connector_and_line(params)?;
    let mut portal = s.portal();
    let found = match portal.statuses.get_mut(&(connector, line)) {
        Some(status) => {
            status.error = true;
            status.active = false;
            true
        }
        None => false,
    };
    Ok(Reply::Result(json!({"SUCCESS": found, "DATA": []})))
}

fn messages(params: &Value) -> Result<Vec<Value>, RestError> {
    match php::param(params, "MESSAGES").map(php::keys_to_lower) {
        Some(Value::Array(items)) => Ok(items),
        Some(Value::Object(map)) => Ok(map.into_iter().map(|(_, v)| v).collect()),
        _ => Err(RestError::argument("Argument 'MESSAGES' is null or empty")),
    }
}

/// `imconnector.send.status.delivery`: clears "sending" on an operator message and stores the
/// external ids as its CONNECTOR_MID.
pub(crate) fn status_delivery(s: &Shared, params: &Value) -> MethodResult {
    let (_connector, _line) = connector_and_line(params)?;
    let items = messages(params)?;
    let mut portal = s.portal();
    let mut failures = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let im = item.get("im");
        let chat_id = php::as_int(field(im, "chat_id"));
        let message_id = php::as_int(field(im, "message_id"));
        let ids = match field(item.get("message"), "id") {
            Some(Value::Array(ids)) if !ids.is_empty() => ids
                .iter()
                .filter_map(|v| php::as_text(Some(v)))
                .collect::<Vec<_>>(),
            _ => {
                failures.push(item_error(
                    n,
                    "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA",
                    "message.id must be a non-empty array",
                ));
                continue;
            }
        };
        let (Some(chat_id), Some(message_id)) = (chat_id, message_id) else {
            failures.push(item_error(
                n,
                "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA",
                "im.chat_id and im.message_id are required",
            ));
            continue;
        };
        let target = portal.chat_by_bitrix_id(chat_id as u64).and_then(|chat| {
            chat.messages.iter_mut().find_map(|m| match m {
                ChatMessage::Operator(op) if op.bitrix_message_id == message_id as u64 => Some(op),
                _ => None,
            })
        });
        match target {
            Some(op) => {
                op.delivered_as = Some(ids);
                op.read = true;
            }
            None => failures.push(item_error(
                n,
                "IMCONNECTOR_ERROR_MESSAGE_NOT_FOUND",
                "No such message in that chat",
            )),
        }
    }
    if failures.is_empty() {
        Ok(Reply::Result(json!({"SUCCESS": true, "DATA": []})))
    } else {
        Ok(Reply::Result(
            json!({"SUCCESS": false, "DATA": {"RESULT": failures}}),
        ))
    }
}

fn item_error(n: usize, code: &str, message: &str) -> Value {
    json!({"index": n, "SUCCESS": false, "ERRORS": [{"code": code, "message": message}]})
}

/// Accepted and ignored by the portal (the handler returns true).
pub(crate) fn status_reading(_s: &Shared, params: &Value) -> MethodResult {
    connector_and_line(params)?;
    messages(params)?;
    Ok(Reply::Result(json!({"SUCCESS": true, "DATA": []})))
}

/// Used by `inbound` and tests: is the connector registered and activated on an existing line?
pub(crate) fn line_accepts(portal: &super::state::Portal, connector: &str, line: i64) -> bool {
    let line_exists = portal.cfg.line_id == line || portal.cfg.extra_lines.contains(&line);
    line_exists
        && portal.connectors.contains_key(connector)
        && portal
            .statuses
            .get(&(connector.to_string(), line))
            .is_some_and(ConnectorStatus::status)
}
