//! `imconnector.send.messages` (protocol §4.1): customer messages entering an Open Channel.
//! The portal fetches every `files[].url` itself, without any credentials, before answering;
//! a URL only the product can open ends up as a failed download here too.

use serde_json::{Map, Value, json};

use super::Shared;
use super::connector::line_accepts;
use super::php::{self, field};
use super::rest::{MethodResult, Reply, RestError};
use super::state::{Chat, ChatMessage, CustomerFile, CustomerMessage, Lead};

/// Bitrix's external-user name limit (protocol §4.1).
const MAX_NAME_CHARS: usize = 25;

pub(crate) async fn send_messages(s: &Shared, params: &Value) -> MethodResult {
    let (connector, line, items) = read_request(params)?;
    if !line_accepts(&s.portal(), &connector, line) {
        return Err(RestError::new(400, "NOT_ACTIVE_LINE", "Line is not active"));
    }
    let mut results = Vec::with_capacity(items.len());
    let mut all_ok = true;
    for item in items {
        let outcome = match validate(&item) {
            Err((code, message)) => Err((code, message)),
            Ok(()) => {
                let files = download_files(s, &item).await;
                Ok(store(s, &connector, line, &item, files))
            }
        };
        let mut echoed = echo(&item);
        match outcome {
            Ok((user_id, session_id, chat_id)) => {
                echoed["user"] = json!(user_id.to_string());
                echoed["SUCCESS"] = json!(true);
                echoed["session"] =
                    json!({"ID": session_id.to_string(), "CHAT_ID": chat_id.to_string()});
            }
            Err((code, message)) => {
                all_ok = false;
                echoed["SUCCESS"] = json!(false);
                echoed["ERRORS"] = json!([{"code": code, "message": message}]);
            }
        }
        results.push(echoed);
    }
    Ok(Reply::Result(
        json!({"SUCCESS": all_ok, "DATA": {"RESULT": results}}),
    ))
}

/// The customer message ids (`MESSAGES[].message.id`) a call carries, if it parses.
pub(crate) fn message_ids(params: &Value) -> Vec<String> {
    let Ok((_, _, items)) = read_request(params) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| php::as_text(item.get("message").and_then(|m| m.get("id"))))
        .collect()
}

/// The argument checks the REST wrapper makes before the module sees anything.
fn read_request(params: &Value) -> Result<(String, i64, Vec<Value>), RestError> {
    let connector = php::param(params, "CONNECTOR")
        .and_then(|v| php::as_text(Some(v)))
        .ok_or_else(|| RestError::argument("Argument 'CONNECTOR' is null or empty"))?;
    let line = php::param(params, "LINE")
        .map(|v| php::int_or_zero(Some(v)))
        .ok_or_else(|| RestError::argument("Argument 'LINE' is null or empty"))?;
    let messages = php::param(params, "MESSAGES")
        .ok_or_else(|| RestError::argument("Argument 'MESSAGES' is null or empty"))?;
    let items: Vec<Value> = match php::keys_to_lower(messages) {
        Value::Array(items) => items,
        Value::Object(map) => map.into_iter().map(|(_, v)| v).collect(),
        _ => {
            return Err(RestError::argument(
                "The value of an argument 'MESSAGES' has an invalid type",
            ));
        }
    };
    for item in &items {
        if !item.is_object() {
            return Err(RestError::argument(
                "The MESSAGES parameter must be an array of messages (arrays)",
            ));
        }
        if ["user", "message", "chat"]
            .iter()
            .any(|k| item.get(k).is_none())
        {
            return Err(RestError::argument(
                "The incorrect structure of a message inside MESSAGES parameter.",
            ));
        }
    }
    Ok((connector.to_lowercase(), line, items))
}

fn validate(item: &Value) -> Result<(), (&'static str, String)> {
    let user = item.get("user");
    if php::is_empty(field(user, "id")) {
        return Err(("CONNECTOR_PROXY_NO_USER_IM", "user.id is required".into()));
    }
    let message = item.get("message");
    if php::is_empty(field(message, "text")) && php::is_empty(field(message, "files")) {
        return Err((
            "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA",
            "message.text or message.files is required".into(),
        ));
    }
    if php::is_empty(field(item.get("chat"), "id")) {
        return Err((
            "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA",
            "chat.id is required".into(),
        ));
    }
    for key in ["name", "last_name"] {
        if let Some(name) = php::as_text(field(user, key))
            && !valid_name(&name)
        {
            return Err((
                "CONNECTOR_PROXY_NO_ADD_USER",
                format!(
                    "user.{key} must be letters, spaces, - and ' only, at most {MAX_NAME_CHARS} characters"
                ),
            ));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_alphabetic() || c == ' ' || c == '-' || c == '\'')
}

async fn download_files(s: &Shared, item: &Value) -> Vec<CustomerFile> {
    let Some(Value::Array(files)) = field(item.get("message"), "files") else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let url = php::as_text(f.get("url")).unwrap_or_default();
        let name = php::as_text(f.get("name"));
        let (download, content_type) = fetch(s, &url).await;
        out.push(CustomerFile {
            url,
            name,
            download,
            content_type,
        });
    }
    out
}

async fn fetch(s: &Shared, url: &str) -> (Result<Vec<u8>, String>, Option<String>) {
    let response = match s.http.get(url).send().await {
        Ok(r) => r,
        Err(e) => return (Err(format!("fetch failed: {e}")), None),
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !status.is_success() {
        return (Err(format!("HTTP {status}")), content_type);
    }
    match response.bytes().await {
        Ok(b) => (Ok(b.to_vec()), content_type),
        Err(e) => (Err(format!("body: {e}")), content_type),
    }
}

/// Finds or opens the dialog and appends the message; returns (user, session, chat) ids.
fn store(
    s: &Shared,
    connector: &str,
    line: i64,
    item: &Value,
    files: Vec<CustomerFile>,
) -> (u64, u64, u64) {
    let user = item.get("user");
    let message = item.get("message");
    let chat = item.get("chat");
    let user_id = php::as_text(field(user, "id")).unwrap_or_default();
    let chat_id = php::as_text(field(chat, "id")).unwrap_or_default();
    let (first, last) = split_name(
        php::as_text(field(user, "name")).unwrap_or_default(),
        php::as_text(field(user, "last_name")).unwrap_or_default(),
    );
    let phone = php::as_text(field(user, "phone")).filter(|p| !p.is_empty());

    let mut portal = s.portal();
    let existing = portal.chats.iter().position(|c| {
        c.connector == connector
            && c.line == line
            && c.external_chat_id == chat_id
            && c.external_user_id == user_id
    });
    let index = match existing {
        Some(i) => i,
        None => {
            let chat = Chat {
                bitrix_chat_id: portal.next("chat"),
                session_id: portal.next("session"),
                connector: connector.into(),
                line,
                external_chat_id: chat_id.clone(),
                external_user_id: user_id.clone(),
                bitrix_user_id: portal.next("user"),
                name: php::as_text(field(chat, "name")),
                url: php::as_text(field(chat, "url")),
                messages: Vec::new(),
            };
            if portal.cfg.openlines_creates_leads {
                let id = portal.next("lead");
                let title = format!("{first} {last}").trim().to_string();
                portal.leads.push(Lead {
                    id,
                    fields: json!({
                        "TITLE": title,
                        "NAME": first,
                        "LAST_NAME": last,
                        "PHONE": phone.iter().map(|p| json!({"VALUE": p, "VALUE_TYPE": "WORK"})).collect::<Vec<_>>(),
                        "SOURCE_ID": format!("{}|{}", line, connector),
                    }),
                    by_openlines: true,
                });
            }
            portal.chats.push(chat);
            portal.chats.len() - 1
        }
    };
    let message_id = portal.next("message");
    let chat = &mut portal.chats[index];
    // Bitrix does not dedupe on message.id: a resend is a second message in the dialog.
    chat.messages.push(ChatMessage::Customer(CustomerMessage {
        bitrix_message_id: message_id,
        external_id: php::as_text(field(message, "id")),
        date: php::as_int(field(message, "date")),
        text: php::as_text(field(message, "text")).filter(|t| !t.is_empty()),
        files,
        user_name: Some(first),
        user_last_name: Some(last).filter(|l| !l.is_empty()),
        user_phone: phone,
    }));
    (chat.bitrix_user_id, chat.session_id, chat.bitrix_chat_id)
}

/// Two-word name with no last name is split; nothing at all becomes "Guest" (module source).
fn split_name(name: String, last: String) -> (String, String) {
    let name = name.trim().to_string();
    let last = last.trim().to_string();
    if name.is_empty() && last.is_empty() {
        return ("Guest".into(), String::new());
    }
    if last.is_empty() {
        let words: Vec<&str> = name.split_whitespace().collect();
        if words.len() == 2 {
            return (words[0].into(), words[1].into());
        }
    }
    (name, last)
}

/// The item as the portal echoes it back: dates become `{}` (a serialized PHP DateTime).
fn echo(item: &Value) -> Value {
    let mut message = item.get("message").cloned().unwrap_or(json!({}));
    if let Some(m) = message.as_object_mut()
        && m.contains_key("date")
    {
        m.insert("date".into(), json!({}));
    }
    let chat_in = item.get("chat");
    let mut chat = Map::new();
    if let Some(id) = field(chat_in, "id") {
        chat.insert("id".into(), id.clone());
    }
    if let Some(name) = field(chat_in, "name") {
        chat.insert("name".into(), name.clone());
    }
    if let Some(url) = php::as_text(field(chat_in, "url")) {
        chat.insert(
            "description".into(),
            json!(format!("Link to the original post: {url}")),
        );
    }
    let mut extra = Map::new();
    if let Some(v) = field(item.get("user"), "skip_phone_validate") {
        extra.insert("skip_phone_validate".into(), v.clone());
    }
    json!({
        "user": php::as_text(field(item.get("user"), "id")),
        "message": message,
        "chat": chat,
        "extra": if extra.is_empty() { json!([]) } else { Value::Object(extra) },
    })
}
