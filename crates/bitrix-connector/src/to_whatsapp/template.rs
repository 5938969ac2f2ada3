//! Approved templates, the one thing that may go out after the 24-hour window: an operator
//! asks for one by name on the reply's last line, and it must be configured in
//! `[[bitrix.templates]]`.

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_core::{
    Core, JobError,
    config::{Row, Rows, parse_rows},
};

use super::bbcode;
use crate::{
    bitrix::{events::OperatorMessage, notes},
    catalogue::TEMPLATES,
    relay::{Relay, retry_db},
    store,
};

/// An approved WhatsApp template the operator may send, a row of `[[bitrix.templates]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    pub language: String,
    /// Body parameters, in order; `{name}` is replaced by the customer's name.
    #[serde(default)]
    pub body_parameters: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl Row for Template {
    fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.contains(char::is_whitespace) {
            return Err(format!(
                "name `{}` must be the template's one-word name as approved in WhatsApp Manager",
                self.name
            ));
        }
        if self.language.trim().is_empty() {
            return Err(format!("`{}` has no language code (say, en_US)", self.name));
        }
        Ok(())
    }
}

/// [`TEMPLATES`]'s parser: the rows, and no name twice, since operators ask for a template by
/// name (in any case) and the second would never be sent.
pub fn parse_templates(value: toml::Value) -> Result<Rows, String> {
    let rows = parse_rows::<Template>(value)?;
    let templates: &[Template] = rows.get();
    for (i, t) in templates.iter().enumerate() {
        if let Some(first) = templates[..i]
            .iter()
            .position(|o| o.name.eq_ignore_ascii_case(&t.name))
        {
            return Err(format!(
                "entries {} and {} are both named `{}`",
                first + 1,
                i + 1,
                t.name
            ));
        }
    }
    Ok(rows)
}

/// The configured templates.
pub fn templates(core: &Core) -> &[Template] {
    core.config.rows(TEMPLATES)
}

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
    let names: Vec<&str> = templates(&relay.core)
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
    let Some(t) = templates(&relay.core)
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
    use super::{Template, parse_templates, template_command};

    fn parse(text: &str) -> Result<Vec<String>, String> {
        let table: toml::Table = text.parse().unwrap();
        let rows = parse_templates(table["bitrix"]["templates"].clone())?;
        Ok(rows
            .get::<Template>()
            .iter()
            .map(|t| t.name.clone())
            .collect())
    }

    #[test]
    fn templates_are_checked_at_load() {
        assert_eq!(
            parse(
                "[[bitrix.templates]]\nname = \"order_update\"\nlanguage = \"en_US\"\nbody_parameters = [\"{name}\"]\n\
                 [[bitrix.templates]]\nname = \"hello\"\nlanguage = \"de\"\n"
            ),
            Ok(vec!["order_update".to_string(), "hello".to_string()])
        );
        assert_eq!(
            parse("[[bitrix.templates]]\nname = \"order update\"\nlanguage = \"en_US\"\n"),
            Err("entry 1: name `order update` must be the template's one-word name as approved in WhatsApp Manager".into()),
            "the operator could never type it after /template"
        );
        assert_eq!(
            parse("[[bitrix.templates]]\nname = \"hello\"\nlanguage = \"\"\n"),
            Err("entry 1: `hello` has no language code (say, en_US)".into())
        );
    }

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
