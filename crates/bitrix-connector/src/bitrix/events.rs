//! The operator messages of the events Bitrix posts to `/bitrix/events` (protocol §5), read
//! from its PHP-style form.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{id_text, php_form};

pub const MESSAGE_ADD: &str = "ONIMCONNECTORMESSAGEADD";
/// The operator edited a message already relayed.
pub const MESSAGE_UPDATE: &str = "ONIMCONNECTORMESSAGEUPDATE";
/// The operator deleted a message already relayed.
pub const MESSAGE_DELETE: &str = "ONIMCONNECTORMESSAGEDELETE";
/// An Open Channel line was deleted (`data` = the line id).
pub const LINE_DELETE: &str = "ONIMCONNECTORLINEDELETE";
/// A connector was disconnected from a line (`data[connector]`, `data[line]`).
pub const STATUS_DELETE: &str = "ONIMCONNECTORSTATUSDELETE";

/// The events this bridge handles, as `event.bind` names them; the rest are recorded and
/// skipped.
pub const HANDLED: &[(&str, &str)] = &[
    (MESSAGE_ADD, "OnImConnectorMessageAdd"),
    (MESSAGE_UPDATE, "OnImConnectorMessageUpdate"),
    (MESSAGE_DELETE, "OnImConnectorMessageDelete"),
    (LINE_DELETE, "OnImConnectorLineDelete"),
    (STATUS_DELETE, "OnImConnectorStatusDelete"),
];

/// One operator message of an `OnImConnectorMessageAdd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OperatorMessage {
    pub chat_id: String,
    pub message_id: String,
    /// Our `chat.id`: the customer's wa_id.
    pub customer: String,
    pub text: String,
    pub files: Vec<OperatorFile>,
    /// The Open Channel line the operator wrote in (`data[LINE]`): the reply goes out from
    /// that line's number. `None` in a job queued before channels, or an event without it.
    #[serde(default)]
    pub line: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OperatorFile {
    pub name: String,
    /// `image`, `file`, `audio`, `video`.
    pub kind: String,
    /// As the event gave it: only ever fetched through `portal_file`.
    pub link: String,
}

/// Every message in the event, in index order; incomplete ones are left out.
pub fn messages(form: &Value) -> Vec<OperatorMessage> {
    let line = id_text(form.pointer("/data/LINE"));
    php_form::items(form.pointer("/data/MESSAGES"))
        .into_iter()
        .filter_map(|m| {
            let files = php_form::items(m.pointer("/message/files"))
                .into_iter()
                .filter_map(|f| {
                    Some(OperatorFile {
                        name: php_form::text(f, &["name"]).unwrap_or("file").to_string(),
                        kind: php_form::text(f, &["type"]).unwrap_or("file").to_string(),
                        // Newer portals may send only a (relative) `downloadLink`.
                        link: php_form::text(f, &["link"])
                            .or_else(|| php_form::text(f, &["downloadLink"]))?
                            .to_string(),
                    })
                })
                .collect();
            Some(OperatorMessage {
                chat_id: id_text(m.pointer("/im/chat_id"))?,
                message_id: id_text(m.pointer("/im/message_id"))?,
                customer: id_text(m.pointer("/chat/id"))?,
                text: php_form::text(m, &["message", "text"])
                    .unwrap_or("")
                    .to_string(),
                files,
                line: line.clone(),
            })
        })
        .collect()
}
