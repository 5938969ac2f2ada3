//! Event bindings and outbound event delivery (protocol §5). Events leave as
//! `application/x-www-form-urlencoded` with PHP-nested keys, are sent once and never retried,
//! and flow only while the app is installed and the connector is live on the line.

use serde_json::{Value, json};

use super::connector::line_accepts;
use super::oauth::mint_access;
use super::php;
use super::rest::{Caller, MethodResult, Reply, RestError};
use super::state::{BoundEvent, ChatMessage, Delivery, OperatorMessage, StoredFile, SystemNote};
use super::{OperatorFile, Shared};

const MESSAGE_ADD: &str = "ONIMCONNECTORMESSAGEADD";

/// Events an app may bind to; anything else is `ERROR_EVENT_NOT_FOUND`.
const KNOWN_EVENTS: &[&str] = &[
    MESSAGE_ADD,
    "ONIMCONNECTORMESSAGEUPDATE",
    "ONIMCONNECTORMESSAGEDELETE",
    "ONIMCONNECTORLINEDELETE",
    "ONIMCONNECTORSTATUSDELETE",
    "ONIMCONNECTORDIALOGSTART",
    "ONIMCONNECTORDIALOGFINISH",
    "ONAPPUNINSTALL",
    "ONAPPUPDATE",
    "ONCRMLEADADD",
    "ONCRMLEADUPDATE",
    "ONCRMLEADDELETE",
    "ONIMBOTMESSAGEADD",
];

/// What `operator_reply` did: the stored message and each delivery attempt.
#[derive(Debug, Clone)]
pub struct OperatorReply {
    pub message_id: u64,
    pub chat_id: u64,
    pub deliveries: Vec<Delivery>,
}

impl OperatorReply {
    /// Status of the single delivery a one-handler test expects.
    pub fn status(&self) -> Option<u16> {
        self.deliveries.first().and_then(|d| d.status)
    }
}

pub(crate) fn bind(s: &Shared, params: &Value) -> MethodResult {
    let event = php::as_text(php::param(params, "event"))
        .unwrap_or_default()
        .to_uppercase();
    let handler = php::as_text(php::param(params, "handler")).unwrap_or_default();
    if !KNOWN_EVENTS.contains(&event.as_str()) {
        return Err(RestError::new(
            400,
            "ERROR_EVENT_NOT_FOUND",
            "Event not found",
        ));
    }
    if handler.is_empty() {
        return Err(RestError::new(400, "ERROR_ARGUMENT", "Handler is required"));
    }
    let auth_type = php::as_int(php::param(params, "auth_type"))
        .unwrap_or(0)
        .max(0) as u64;
    let offline = php::as_text(php::param(params, "event_type")).as_deref() == Some("offline");
    let mut portal = s.portal();
    if portal
        .events
        .iter()
        .any(|e| e.event == event && e.handler == handler && e.auth_type == auth_type)
    {
        return Err(RestError::new(400, "ERROR_CORE", "Handler already binded"));
    }
    let id = portal.next("handler");
    portal.events.push(BoundEvent {
        id,
        event,
        handler,
        auth_type,
        offline,
    });
    Ok(Reply::Result(json!(true)))
}

pub(crate) fn get(s: &Shared) -> MethodResult {
    let list: Vec<Value> = s
        .portal()
        .events
        .iter()
        .map(|e| {
            json!({
                "event": e.event,
                "handler": e.handler,
                "auth_type": e.auth_type.to_string(),
                "offline": i32::from(e.offline),
            })
        })
        .collect();
    Ok(Reply::Result(json!(list)))
}

pub(crate) fn unbind(s: &Shared, params: &Value) -> MethodResult {
    let event = php::as_text(php::param(params, "event"))
        .unwrap_or_default()
        .to_uppercase();
    let handler = php::as_text(php::param(params, "handler"));
    let mut portal = s.portal();
    let before = portal.events.len();
    portal
        .events
        .retain(|e| !(e.event == event && handler.as_ref().is_none_or(|h| &e.handler == h)));
    Ok(Reply::Result(
        json!({"count": before - portal.events.len()}),
    ))
}

/// `im.message.add` into an Open Lines chat. `SYSTEM=Y` is a note the connector never sees;
/// anything else is an ordinary message and is relayed to the connector like an operator's.
pub(crate) fn im_message_add(s: &Shared, params: &Value, caller: &Caller) -> MethodResult {
    let dialog = php::as_text(php::param(params, "DIALOG_ID")).unwrap_or_default();
    let text = php::as_text(php::param(params, "MESSAGE")).unwrap_or_default();
    let system = php::as_text(php::param(params, "SYSTEM")).as_deref() == Some("Y");
    if dialog.is_empty() {
        return Err(RestError::new(
            400,
            "DIALOG_ID_EMPTY",
            "Dialog ID can't be empty",
        ));
    }
    if text.trim().is_empty() {
        return Err(RestError::new(
            400,
            "MESSAGE_EMPTY",
            "Message can't be empty",
        ));
    }
    let chat_id = dialog
        .strip_prefix("chat")
        .and_then(|id| id.parse::<u64>().ok());
    let mut portal = s.portal();
    let message_id = portal.next("message");
    let Some(chat) = chat_id.and_then(|id| portal.chat_by_bitrix_id(id)) else {
        return Err(RestError::new(
            400,
            "ACCESS_ERROR",
            "You do not have access to the specified dialog",
        ));
    };
    if system {
        chat.messages.push(ChatMessage::System(SystemNote {
            bitrix_message_id: message_id,
            text,
            system: true,
        }));
    } else {
        chat.messages.push(ChatMessage::Operator(OperatorMessage {
            bitrix_message_id: message_id,
            user_id: caller.user_id,
            text: text.clone(),
            files: Vec::new(),
            delivered_as: None,
            read: false,
        }));
        let (external, bitrix_chat) = (chat.external_chat_id.clone(), chat.bitrix_chat_id);
        let shared = s.clone();
        let user_id = caller.user_id;
        drop(portal);
        tokio::spawn(async move {
            relay_message_add(
                &shared,
                bitrix_chat,
                &external,
                message_id,
                user_id,
                &text,
                &[],
            )
            .await;
        });
    }
    Ok(Reply::Result(json!(message_id)))
}

pub(crate) async fn operator_reply(
    s: &Shared,
    line: Option<i64>,
    external_chat_id: &str,
    text: &str,
    files: Vec<OperatorFile>,
) -> OperatorReply {
    let (chat_id, message_id, user_id, text, stored) = {
        let mut portal = s.portal();
        let user_id = portal.cfg.operator_user_id;
        let signature = portal.cfg.operator_signature.clone();
        let chat_pos = portal
            .chats
            .iter()
            .position(|c| {
                c.external_chat_id == external_chat_id && line.is_none_or(|l| c.line == l)
            })
            .unwrap_or_else(|| {
                panic!("operator_reply: no chat with external id {external_chat_id}")
            });
        let connector = portal.chats[chat_pos].connector.clone();
        let signed = portal
            .connectors
            .get(&connector)
            .is_some_and(|c| c.flag("NEED_SIGNATURE"));
        let text = match signature {
            Some(name) if signed => format!("[b]{name}:[/b][br] {text}"),
            _ => text.to_string(),
        };
        let stored: Vec<StoredFile> = files
            .into_iter()
            .map(|f| {
                let file = StoredFile {
                    file_id: portal.next("file"),
                    short_code: super::state::random_hex(4),
                    name: f.name,
                    kind: f.kind,
                    bytes: f.bytes,
                    width: f.width,
                    height: f.height,
                };
                portal.files.insert(file.file_id, file.clone());
                file
            })
            .collect();
        let message_id = portal.next("message");
        let chat = &mut portal.chats[chat_pos];
        chat.messages.push(ChatMessage::Operator(OperatorMessage {
            bitrix_message_id: message_id,
            user_id,
            text: text.clone(),
            files: stored.clone(),
            delivered_as: None,
            read: false,
        }));
        (chat.bitrix_chat_id, message_id, user_id, text, stored)
    };
    let deliveries = relay_message_add(
        s,
        chat_id,
        external_chat_id,
        message_id,
        user_id,
        &text,
        &stored,
    )
    .await;
    OperatorReply {
        message_id,
        chat_id,
        deliveries,
    }
}

async fn relay_message_add(
    s: &Shared,
    chat_id: u64,
    external_chat_id: &str,
    message_id: u64,
    user_id: u64,
    text: &str,
    files: &[StoredFile],
) -> Vec<Delivery> {
    let (connector, line) = {
        let mut portal = s.portal();
        let Some(chat) = portal.chat_by_bitrix_id(chat_id) else {
            return Vec::new();
        };
        (chat.connector.clone(), chat.line)
    };
    let base = s.urls().base.clone();
    let files: Vec<Value> = files.iter().map(|f| file_json(&base, f)).collect();
    let data = json!({
        "CONNECTOR": connector,
        "LINE": line.to_string(),
        "MESSAGES": [{
            "im": {"chat_id": chat_id.to_string(), "message_id": message_id.to_string()},
            "message": {"user_id": user_id.to_string(), "text": text, "files": files},
            "chat": {"id": external_chat_id},
        }],
    });
    let live = line_accepts(&s.portal(), &connector, line);
    if !live {
        // A connector that is unregistered or off the line hears nothing.
        return Vec::new();
    }
    deliver(s, MESSAGE_ADD, data, user_id).await
}

fn file_json(base: &str, f: &StoredFile) -> Value {
    let mut link = format!("{base}/~{}", f.short_code);
    if f.kind == super::state::FileKind::Image {
        let ext = f
            .name
            .rsplit_once('.')
            .map(|(_, e)| e.to_lowercase())
            .unwrap_or_else(|| "jpg".into());
        link.push_str(&format!("#img.{ext}"));
    }
    let mut v = json!({
        "name": f.name,
        "type": f.kind.as_str(),
        "link": link,
        "size": f.bytes.len().to_string(),
    });
    if let (Some(w), Some(h)) = (f.width, f.height) {
        v["width"] = json!(w.to_string());
        v["height"] = json!(h.to_string());
    }
    v
}

/// Sends `event` once to every handler bound for it. Handlers are called one after another,
/// each with its own `event_handler_id`, with the triggering user's token (no refresh token).
pub(crate) async fn deliver(s: &Shared, event: &str, data: Value, user_id: u64) -> Vec<Delivery> {
    let (targets, forms, timeout) = {
        let mut portal = s.portal();
        if !portal.installed {
            return Vec::new();
        }
        let targets: Vec<BoundEvent> = portal
            .events
            .iter()
            .filter(|e| e.event == event)
            .cloned()
            .collect();
        let mut forms = Vec::new();
        for t in &targets {
            let token = mint_access(&mut portal, user_id);
            let expires = portal.access[&token].expires_at;
            let urls = s.urls();
            let body = json!({
                "event": event,
                "event_handler_id": t.id.to_string(),
                "data": data,
                "ts": portal.now().to_string(),
                "auth": {
                    "access_token": token,
                    "expires": expires.to_string(),
                    "expires_in": portal.cfg.access_ttl_secs.to_string(),
                    "scope": portal.cfg.scope,
                    "domain": urls.host,
                    "server_endpoint": urls.server_endpoint(),
                    "status": "L",
                    "client_endpoint": urls.client_endpoint(),
                    "member_id": portal.cfg.member_id,
                    "user_id": user_id.to_string(),
                    "application_token": portal.cfg.application_token,
                },
            });
            forms.push(php::build_form(&body));
        }
        (targets, forms, portal.cfg.event_timeout)
    };
    let mut out = Vec::with_capacity(targets.len());
    for (target, form) in targets.into_iter().zip(forms) {
        let sent = s
            .http
            .post(&target.handler)
            .timeout(timeout)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(php::encode_form(&form))
            .send()
            .await;
        let (status, error) = match sent {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(Delivery {
            event: event.into(),
            handler: target.handler,
            status,
            error,
            form,
        });
    }
    s.portal().deliveries.extend(out.iter().cloned());
    out
}

/// The operator edits (`new_text: Some`) or deletes (`None`) a reply already relayed:
/// `OnImConnectorMessageUpdate` carries the message like Add plus the confirmed external ids
/// as `message.id[]`; `OnImConnectorMessageDelete` the first of them as a scalar `message.id`
/// (protocol §5.3). The stored message changes as it would in the chat.
pub(crate) async fn operator_change(
    s: &Shared,
    bitrix_message_id: u64,
    new_text: Option<&str>,
) -> Vec<Delivery> {
    let found = {
        let mut portal = s.portal();
        let mut found = None;
        for chat in portal.chats.iter_mut() {
            let pos = chat.messages.iter().position(|m| {
                matches!(m, ChatMessage::Operator(o) if o.bitrix_message_id == bitrix_message_id)
            });
            let Some(pos) = pos else { continue };
            let ChatMessage::Operator(o) = &mut chat.messages[pos] else {
                unreachable!()
            };
            let ids = o.delivered_as.clone().unwrap_or_default();
            let user_id = o.user_id;
            match new_text {
                Some(t) => o.text = t.to_string(),
                None => {
                    chat.messages.remove(pos);
                }
            }
            found = Some((
                chat.connector.clone(),
                chat.line,
                chat.bitrix_chat_id,
                chat.external_chat_id.clone(),
                ids,
                user_id,
            ));
            break;
        }
        found
    };
    let Some((connector, line, chat_id, external, ids, user_id)) = found else {
        panic!("operator_change: no operator message {bitrix_message_id}");
    };
    let (event, id) = match new_text {
        Some(_) => ("ONIMCONNECTORMESSAGEUPDATE", json!(ids)),
        None => (
            "ONIMCONNECTORMESSAGEDELETE",
            json!(ids.first().cloned().unwrap_or_default()),
        ),
    };
    let mut message = json!({"id": id, "user_id": user_id.to_string()});
    if let Some(t) = new_text {
        message["text"] = json!(t);
    }
    let data = json!({
        "CONNECTOR": connector,
        "LINE": line.to_string(),
        "MESSAGES": [{
            "im": {"chat_id": chat_id.to_string(), "message_id": bitrix_message_id.to_string()},
            "message": message,
            "chat": {"id": external},
        }],
    });
    deliver(s, event, data, user_id).await
}

/// An administrator deletes Open Channel `line`: every connector's status on it goes, and
/// `OnImConnectorLineDelete` carries the line id as `data` (protocol §5.3).
pub(crate) async fn line_deleted(s: &Shared, line: i64) -> Vec<Delivery> {
    let user_id = {
        let mut portal = s.portal();
        portal.statuses.retain(|(_, l), _| *l != line);
        portal.cfg.operator_user_id
    };
    deliver(
        s,
        "ONIMCONNECTORLINEDELETE",
        json!(line.to_string()),
        user_id,
    )
    .await
}

/// An administrator disconnects `connector` from `line` in Contact Center: its status there
/// goes, and `OnImConnectorStatusDelete` carries lower-case `data[connector]`, `data[line]`.
pub(crate) async fn connector_disabled(s: &Shared, connector: &str, line: i64) -> Vec<Delivery> {
    let user_id = {
        let mut portal = s.portal();
        portal.statuses.remove(&(connector.to_lowercase(), line));
        portal.cfg.operator_user_id
    };
    deliver(
        s,
        "ONIMCONNECTORSTATUSDELETE",
        json!({"connector": connector, "line": line.to_string()}),
        user_id,
    )
    .await
}
