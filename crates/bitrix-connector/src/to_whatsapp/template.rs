//! Approved templates, the one thing that may go out after the 24-hour window: an operator
//! asks for one by name on the reply's last line, and it must be configured in
//! `[[bitrix.templates]]`.

use serde_json::{Value, json};
use switchboard_core::JobError;

use super::bbcode;
use crate::{
    bitrix::{events::OperatorMessage, notes},
    relay::{Relay, retry_db},
    store,
};

/// `/template NAME` on the reply's last line asks for a configured approved template, which may
/// be sent outside the window. The last line, because the operator signature prefix
/// (`[b]Name:[/b][br]`) may come first.
pub(super) fn template_command(text: &str) -> Option<String> {
    let plain = bbcode::to_whatsapp(text);
    let line = plain.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let name = line.strip_prefix("/template")?;
    // `/templates` or `/templateX` is not the command.
    if !name.is_empty() && !name.starts_with(char::is_whitespace) {
        return None;
    }
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The operator typed a template name that is not in `[[bitrix.templates]]`: nothing is sent,
/// and the note lists what is configured. Not a dead letter: there is nothing to retry.
pub(super) async fn unknown_template(
    relay: &Relay,
    m: &OperatorMessage,
    name: &str,
) -> Result<(), JobError> {
    let names: Vec<&str> = relay
        .core
        .config
        .bitrix_templates
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let note = format!(
        "⚠ Not sent: no template named \"{name}\" is configured. Configured templates: {}.",
        if names.is_empty() {
            "none (add them as [[bitrix.templates]] in the config file)".to_string()
        } else {
            names.join(", ")
        }
    );
    tracing::warn!(bitrix_message_id = %m.message_id, template = name, "unknown template requested");
    notes::post(&relay.bitrix, &m.chat_id, &note)
        .await
        .map_err(|e| e.into_job_error())?;
    store::set_outbound(&relay.core.db, &m.message_id, "failed", None, Some(&note))
        .await
        .map_err(retry_db)
}

/// The configured template, its `{name}` parameters filled with the customer's name.
pub(super) async fn template_body(
    relay: &Relay,
    m: &OperatorMessage,
    name: &str,
) -> Result<Option<Value>, JobError> {
    let Some(t) = relay
        .core
        .config
        .bitrix_templates
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
    else {
        return Ok(None);
    };
    let mut template = json!({"name": t.name, "language": {"code": t.language}});
    if !t.body_parameters.is_empty() {
        let customer = store::customer_name(&relay.core.db, &m.customer)
            .await
            .map_err(retry_db)?
            .unwrap_or_else(|| m.customer.clone());
        let params: Vec<Value> = t
            .body_parameters
            .iter()
            .map(|p| json!({"type": "text", "text": p.replace("{name}", &customer)}))
            .collect();
        template["components"] = json!([{"type": "body", "parameters": params}]);
    }
    Ok(Some(
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": m.customer, "type": "template", "template": template}),
    ))
}

#[cfg(test)]
mod tests {
    use super::template_command;

    #[test]
    fn the_template_command_is_the_last_line() {
        assert_eq!(
            template_command("[b]Maria:[/b][br] /template order_update").as_deref(),
            Some("order_update")
        );
        assert_eq!(
            template_command("/TEMPLATE x").as_deref(),
            None,
            "commands are lower-case, like Bitrix's own"
        );
        assert_eq!(template_command("/templates"), None);
        assert_eq!(template_command("/template   "), None);
        assert_eq!(template_command("/template a\nthanks"), None);
    }
}
