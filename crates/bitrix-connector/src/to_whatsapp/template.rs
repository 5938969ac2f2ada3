//! Approved templates, the one thing that may go out after the 24-hour window: an operator
//! types `/template NAME [lang]` and the values on the lines after it ([`crate::templates`]
//! finds and fills it), or `/templates` for the list. `[[bitrix.templates]]` in the config
//! file overrides a template's language and default body values.

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
    templates::{
        fill::{self, Command, Given},
        stored, sync,
    },
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

/// The operator's `/template` or `/templates` command, if the reply is one.
pub(super) fn template_command(text: &str) -> Option<Command> {
    fill::command(&bbcode::to_whatsapp(text))
}

/// Loads the account's templates before the first template send of a fresh install, so the
/// operator need not wait for the scheduled sync. A failed sync leaves the config file's list.
pub(crate) async fn synced_once(relay: &Relay) {
    if matches!(stored::last_synced(&relay.core.db).await, Ok(None))
        && let Err(e) = sync::run(relay).await
    {
        tracing::debug!(error = %e, "templates not synced before a template send");
    }
}

/// The send body of the template the operator asked for, filled from their lines; `Err` is
/// the note saying why nothing goes out.
pub(super) async fn template_body(
    relay: &Relay,
    m: &OperatorMessage,
    name: &str,
    language: Option<&str>,
    given: &Given,
) -> Result<Result<Value, String>, JobError> {
    synced_once(relay).await;
    let resolved = match fill::resolve(relay, name, language).await {
        Ok(r) => r,
        Err(note) => return Ok(Err(note)),
    };
    let customer = store::customer_name(&relay.core.db, &m.customer)
        .await
        .map_err(retry_db)?
        .unwrap_or_else(|| m.customer.clone());
    Ok(
        fill::fill(&resolved, given, &customer).map(|(template, _)| {
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": m.customer, "type": "template", "template": template})
        }),
    )
}

/// Nothing was sent: the note tells the operator why and what to type instead. Not a dead
/// letter: there is nothing to retry.
pub(super) async fn refuse(relay: &Relay, m: &OperatorMessage, note: &str) -> Result<(), JobError> {
    tracing::warn!(bitrix_message_id = %m.message_id, "template not sent: {note}");
    notes::post(&relay.bitrix, &m.chat_id, note)
        .await
        .map_err(|e| e.into_job_error())?;
    store::set_outbound(&relay.core.db, &m.message_id, "failed", None, Some(note))
        .await
        .map_err(retry_db)
}

/// `/templates`: a note listing the approved templates and their variables; nothing goes to
/// the customer.
pub(super) async fn list(relay: &Relay, m: &OperatorMessage) -> Result<(), JobError> {
    synced_once(relay).await;
    let note = fill::listing(relay).await;
    notes::post(&relay.bitrix, &m.chat_id, &note)
        .await
        .map_err(|e| e.into_job_error())?;
    store::set_outbound(
        &relay.core.db,
        &m.message_id,
        "command",
        None,
        Some("/templates: answered with a note, nothing sent"),
    )
    .await
    .map_err(retry_db)
}

#[cfg(test)]
mod tests {
    use super::{Command, Template, parse_templates, template_command};

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
    fn the_template_command_follows_the_signature() {
        assert!(matches!(
            template_command("[b]Maria:[/b][br] /template order_update"),
            Some(Command::Send { name, .. }) if name == "order_update"
        ));
        assert_eq!(template_command("/templates"), Some(Command::List));
        assert_eq!(template_command("/template   "), None);
    }
}
