//! The connector's CLI commands (SPEC §4), as functions returning the report to print or an
//! error that carries the seed's fix text. The binary only parses arguments and prints.

use serde_json::{Value, json};

use crate::{
    bitrix::{BitrixError, truthy},
    meta::MetaClient,
    relay::Relay,
    setting_values::{public_link, required},
};

/// A failed command: what went wrong and how to fix it, ready to print.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandFailed(pub String);

impl From<BitrixError> for CommandFailed {
    fn from(e: BitrixError) -> Self {
        CommandFailed(e.explained())
    }
}

impl From<crate::Error> for CommandFailed {
    fn from(e: crate::Error) -> Self {
        CommandFailed(e.to_string())
    }
}

/// Shown in Contact Center.
const CONNECTOR_NAME: &str = "WhatsApp (Switchboard)";

fn icon(color: &str) -> Value {
    let svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'><circle cx='16' cy='16' r='15' fill='{color}'/><path d='M10 22l1.2-3.6A7 7 0 1 1 14 21z' fill='white'/></svg>"
    );
    let encoded: String = svg
        .bytes()
        .map(|b| match b {
            b'<' => "%3C".to_string(),
            b'>' => "%3E".to_string(),
            b'#' => "%23".to_string(),
            b'"' => "%22".to_string(),
            _ => (b as char).to_string(),
        })
        .collect();
    json!({
        "DATA_IMAGE": format!("data:image/svg+xml;charset=US-ASCII,{encoded}"),
        "COLOR": color,
        "SIZE": "100%",
        "POSITION": "center",
    })
}

/// `switchboard bitrix register-connector [--fresh]`.
pub async fn register_connector(relay: &Relay, fresh: bool) -> Result<String, CommandFailed> {
    let (core, b) = (&relay.core, &relay.bitrix);
    let connector = required(core, crate::catalogue::BITRIX_CONNECTOR_ID).await?;
    let mut report = Vec::new();
    if fresh {
        let r = b
            .call("imconnector.unregister", json!({"ID": connector}))
            .await?;
        report.push(if truthy(r.get("result")) {
            format!("unregistered connector {connector}")
        } else {
            format!("connector {connector} was not registered; nothing to unregister")
        });
    }
    // Failure comes back inside a 200 `result` (protocol §4); flags as JSON booleans.
    let r = b
        .call(
            "imconnector.register",
            json!({
                "ID": connector,
                "NAME": CONNECTOR_NAME,
                "ICON": icon("#25D366"),
                "ICON_DISABLED": icon("#9AA5AD"),
                "PLACEMENT_HANDLER": public_link(core, crate::routes::BITRIX_INSTALL),
                "CHAT_GROUP": false,
            }),
        )
        .await?;
    if !truthy(r.get("result")) {
        let code = r.get("error").and_then(Value::as_str).unwrap_or("unknown");
        let why = r
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(CommandFailed(format!(
            "imconnector.register failed: {code} ({why}). bitrix.connector_id must be [a-z0-9_] without dots."
        )));
    }
    report.push(format!(
        "registered connector {connector} as \"{CONNECTOR_NAME}\""
    ));
    let handler = public_link(core, crate::routes::BITRIX_EVENTS);
    // Operator messages, their edits and deletions, and a line or the connector going away.
    for (_, event) in crate::bitrix::events::HANDLED {
        match b
            .call("event.bind", json!({"event": event, "handler": handler}))
            .await
        {
            Ok(_) => report.push(format!("bound {event} → {handler}")),
            Err(BitrixError::Api { description, .. }) if description.contains("already binded") => {
                report.push(format!("{event} → {handler} was already bound"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    report.push(
        "next: pick the Open Channel line on /setup (or run \
         `switchboard bitrix activate-connector --line ID`)"
            .into(),
    );
    Ok(report.join("\n"))
}

/// `switchboard bitrix activate-connector [--line ID]`: the one line given, else every
/// channel's line.
pub async fn activate_connector(
    relay: &Relay,
    line: Option<String>,
) -> Result<String, CommandFailed> {
    let core = &relay.core;
    let connector = required(core, crate::catalogue::BITRIX_CONNECTOR_ID).await?;
    let served = crate::channels::all(relay).await?;
    let lines: Vec<String> = match line {
        Some(l) => vec![l],
        None if served.is_empty() => {
            return Err(CommandFailed(
                "no line: pass --line ID, save the Open Channel (LINE) ID as bitrix.line_id, or list the lines as [[bitrix.channels]]"
                    .into(),
            ));
        }
        None => served.iter().map(|c| c.line.clone()).collect(),
    };
    let mut report = Vec::new();
    for line in &lines {
        report.push(activate_line(relay, &connector, line).await?);
    }
    if let [line] = lines.as_slice()
        && !served.iter().any(|c| &c.line == line)
    {
        report.push(if crate::channels::listed(relay) {
            format!("note: line {line} is in no [[bitrix.channels]] entry, so nothing is relayed into it until one names it")
        } else {
            format!("note: save {line} as bitrix.line_id (`switchboard credentials set bitrix.line_id {line}`) so relays use this line")
        });
    }
    Ok(report.join("\n"))
}

async fn activate_line(
    relay: &Relay,
    connector: &str,
    line: &str,
) -> Result<String, CommandFailed> {
    let (core, b) = (&relay.core, &relay.bitrix);
    b.call(
        "imconnector.activate",
        json!({"CONNECTOR": connector, "LINE": line, "ACTIVE": 1}),
    )
    .await?;
    let url = core.config.public_url().to_string();
    b.call(
        "imconnector.connector.data.set",
        json!({"CONNECTOR": connector, "LINE": line,
               "DATA": {"ID": connector, "URL": url, "URL_IM": url, "NAME": CONNECTOR_NAME}}),
    )
    .await?;
    let status = b
        .call(
            "imconnector.status",
            json!({"CONNECTOR": connector, "LINE": line}),
        )
        .await?;
    let (active, configured_ok) = (
        truthy(status.get("STATUS")),
        truthy(status.get("CONFIGURED")),
    );
    if !(active && configured_ok) {
        return Err(CommandFailed(format!(
            "connector {connector} on line {line}: STATUS:{active}, CONFIGURED:{configured_ok}. \
             Check that line {line} exists and the connector is registered (`switchboard bitrix register-connector`)."
        )));
    }
    // Whatever Bitrix reported about this line before (deleted, disconnected) is over.
    if crate::store::clear_alerts(&core.db, &crate::to_whatsapp::changed::line_alert(line))
        .await
        .map_err(|e| CommandFailed(format!("database: {e}")))?
        > 0
    {
        tracing::info!(line = %line, "connector active on the line again; its alert is cleared");
    }
    Ok(format!(
        "connector {connector} active on line {line}: STATUS:true, CONFIGURED:true"
    ))
}

/// `switchboard whatsapp check-token`: the token against every channel's number (with one
/// number, `meta.phone_number_id`).
pub async fn check_token(relay: &Relay) -> Result<String, CommandFailed> {
    let served = crate::channels::all(relay).await?;
    if served.is_empty() {
        // Says which setting is missing.
        return check_with(MetaClient::from_settings(&relay.core).await?).await;
    }
    let mut report = Vec::new();
    for c in &served {
        let checked = check_number(relay, &c.phone_number_id).await;
        match checked {
            Ok(r) if served.len() == 1 => return Ok(r),
            Ok(r) => report.push(format!("{}: {r}", c.label())),
            Err(e) if served.len() == 1 => return Err(e),
            Err(e) => return Err(CommandFailed(format!("{}: {e}", c.label()))),
        }
    }
    Ok(report.join("\n"))
}

/// The token against one business number: Meta answers its node only if the token may use it.
pub async fn check_number(relay: &Relay, phone_number_id: &str) -> Result<String, CommandFailed> {
    check_with(MetaClient::for_number(&relay.core, phone_number_id).await?).await
}

async fn check_with(meta: MetaClient) -> Result<String, CommandFailed> {
    let node = meta
        .phone_number()
        .await
        .map_err(|e| CommandFailed(e.explained()))?;
    let field = |k: &str| {
        node.get(k)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    Ok(format!(
        "OK — token is valid.\n{} ({}), quality {}",
        field("verified_name"),
        field("display_phone_number"),
        field("quality_rating")
    ))
}

/// An Open Channel of the portal, as `imopenlines.config.list.get` lists it.
#[derive(Debug, Clone)]
pub struct OpenChannel {
    pub id: String,
    pub name: String,
}

/// The portal's Open Channels (the app's grant needs the `imopenlines` scope).
pub async fn open_channels(relay: &Relay) -> Result<Vec<OpenChannel>, CommandFailed> {
    let list = relay
        .bitrix
        .call("imopenlines.config.list.get", json!({}))
        .await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let id = crate::bitrix::id_text(c.get("ID"))?;
            let name = c
                .get("LINE_NAME")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(80)
                .collect();
            Some(OpenChannel { id, name })
        })
        .collect())
}

/// Name of the Open Channel created when the operator asks for a new one.
pub const NEW_LINE_NAME: &str = "WhatsApp";

/// The `choice` that creates a new Open Channel instead of using an existing one.
pub const NEW_LINE: &str = "new";

/// `/setup`'s "use this line": `line` is an Open Channel id, or [`NEW_LINE`] to create one
/// (`imopenlines.config.add`). The connector is activated on it and, with one channel, the
/// line is saved as `bitrix.line_id` so relays use it.
pub async fn use_line(relay: &Relay, line: &str) -> Result<String, CommandFailed> {
    let core = &relay.core;
    let connector = required(core, crate::catalogue::BITRIX_CONNECTOR_ID).await?;
    let mut report = Vec::new();
    let line = if line == NEW_LINE {
        let created = relay
            .bitrix
            .call(
                "imopenlines.config.add",
                json!({"PARAMS": {"LINE_NAME": NEW_LINE_NAME}}),
            )
            .await?;
        let id = crate::bitrix::id_text(Some(&created)).ok_or_else(|| {
            CommandFailed(format!(
                "imopenlines.config.add answered {created} instead of the new line's id"
            ))
        })?;
        report.push(format!("created Open Channel {id} \"{NEW_LINE_NAME}\""));
        id
    } else if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) {
        line.to_string()
    } else {
        return Err(CommandFailed(format!(
            "{line:?} is no Open Channel id: pick a line from the list"
        )));
    };
    report.push(activate_line(relay, &connector, &line).await?);
    if crate::channels::listed(relay) {
        if !crate::channels::all(relay)
            .await?
            .iter()
            .any(|c| c.line == line)
        {
            report.push(format!(
                "note: line {line} is in no [[bitrix.channels]] entry of the config file, so nothing is relayed into it until one names it"
            ));
        }
    } else {
        let current =
            crate::setting_values::optional(core, crate::catalogue::BITRIX_LINE_ID).await?;
        // An unchanged value stays where it is set: copied into the store it would silently
        // outrank the environment from then on.
        if current.as_deref() != Some(line.as_str()) {
            core.settings
                .set(crate::catalogue::BITRIX_LINE_ID, &line)
                .await
                .map_err(|e| {
                    CommandFailed(format!("could not save the line as bitrix.line_id: {e}"))
                })?;
            report.push(format!("saved {line} as bitrix.line_id"));
        }
    }
    Ok(report.join("\n"))
}

/// `switchboard whatsapp subscribe-waba`: subscribes the app of the access token to the
/// WhatsApp Business Account, without which Meta posts no webhook at all.
pub async fn subscribe_waba(relay: &Relay) -> Result<String, CommandFailed> {
    let core = &relay.core;
    let waba = required(core, crate::catalogue::META_WABA_ID).await?;
    let meta = MetaClient::from_settings(core).await?;
    meta.subscribe_app(&waba)
        .await
        .map_err(|e| CommandFailed(e.explained()))?;
    let apps = meta
        .subscribed_apps(&waba)
        .await
        .map_err(|e| CommandFailed(e.explained()))?;
    Ok(format!(
        "subscribed to WhatsApp Business Account {waba}; subscribed apps: {}",
        apps.join(", ")
    ))
}

/// `switchboard whatsapp register-webhook`: registers `{public}/webhook/whatsapp` as the Meta
/// app's webhook for the `messages` field, with the verify token (one is generated and stored
/// when none is set). Meta checks the callback with the verify handshake before it answers,
/// so this server must be reachable at its public URL.
pub async fn register_webhook(relay: &Relay) -> Result<String, CommandFailed> {
    let core = &relay.core;
    let app = crate::meta::AppCredentials::from_settings(core).await?;
    let mut report = Vec::new();
    let verify_token =
        match crate::setting_values::optional(core, crate::catalogue::META_VERIFY_TOKEN).await? {
            Some(t) => t,
            None => {
                let generated = hex::encode(rand::random::<[u8; 24]>());
                core.settings
                    .set(crate::catalogue::META_VERIFY_TOKEN, &generated)
                    .await
                    .map_err(|e| {
                        CommandFailed(format!("could not store a new verify token: {e}"))
                    })?;
                report.push("generated and stored a webhook verify token".to_string());
                generated
            }
        };
    let callback = public_link(core, crate::routes::META_WEBHOOK);
    MetaClient::from_settings(core)
        .await?
        .register_webhook(&app, &callback, &verify_token)
        .await
        .map_err(|e| {
            CommandFailed(format!(
                "{}. Meta calls {callback} to verify it before saving: check that SWITCHBOARD_PUBLIC_URL is this server's public https address and that it answers there; an error about the app means Meta App ID or App Secret is wrong.",
                e
            ))
        })?;
    report.push(format!(
        "Meta verified {callback} and posts the messages field of app {} there",
        app.id
    ));
    Ok(report.join("\n"))
}
