//! System notes in the operator's chat (`im.message.add` with `SYSTEM: "Y"`, protocol §6): how
//! the bridge tells an operator that a reply was not delivered and what to do. A system note is
//! never relayed back to the connector, so it cannot loop.

use serde_json::json;

use super::{Bitrix, BitrixError};

pub async fn post(bitrix: &Bitrix, bitrix_chat_id: &str, text: &str) -> Result<(), BitrixError> {
    bitrix
        .call(
            "im.message.add",
            json!({"DIALOG_ID": format!("chat{bitrix_chat_id}"), "MESSAGE": text, "SYSTEM": "Y"}),
        )
        .await
        .map(|_| ())
}
