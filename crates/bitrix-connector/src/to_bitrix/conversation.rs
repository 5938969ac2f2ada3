//! What frames a customer message in the Open Channel, so the operator follows the whole
//! conversation: the message it replies to (quoted from what this bridge kept by wamid),
//! whether it was forwarded, the ad the customer came from, and for a reaction the message
//! it reacts to (protocol §2.3).

use serde_json::Value;
use switchboard_core::JobError;

use crate::{
    meta::payload::InboundUnit,
    relay::{Relay, retry_db},
    store::{self, Quoted},
};

/// How much of a quoted message is shown above the reply.
const QUOTE_SHOWN_CHARS: usize = 200;

fn s<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    v.pointer(path)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

/// The text the operator sees: `text` (the rendered message) framed by what the message says
/// about the conversation, and `note` (say, media that could not be fetched) last. `None` only
/// when there is nothing at all to show.
pub(super) async fn shown_text(
    relay: &Relay,
    unit: &InboundUnit,
    text: Option<&str>,
    note: Option<String>,
) -> Result<Option<String>, JobError> {
    let m = &unit.message;
    let mut lines: Vec<String> = Vec::new();
    if m.pointer("/context/frequently_forwarded") == Some(&Value::Bool(true)) {
        lines.push("↪ Forwarded many times".into());
    } else if m.pointer("/context/forwarded") == Some(&Value::Bool(true)) {
        lines.push("↪ Forwarded".into());
    }
    if let Some(referral) = m.get("referral") {
        lines.push(referral_line(referral));
    }
    let body = if s(m, "/type") == Some("reaction") {
        Some(reaction(relay, m).await?)
    } else {
        if let Some(quoted_id) = s(m, "/context/id") {
            let quoted = store::quoted(&relay.core.db, quoted_id)
                .await
                .map_err(retry_db)?;
            lines.push(match &quoted {
                Some(Quoted::Operator(_)) => "↩ Reply to the operator's message:".to_string(),
                Some(Quoted::Customer(_)) => "↩ Reply to the customer's earlier message:".into(),
                None => "↩ Reply to an earlier message (not kept here)".into(),
            });
            if let Some(Quoted::Operator(Some(t)) | Quoted::Customer(Some(t))) = &quoted {
                lines.push(quote(t));
            }
        }
        text.map(str::to_string)
    };
    lines.extend(body);
    lines.extend(note);
    Ok((!lines.is_empty()).then(|| lines.join("\n")))
}

/// `>>` before each line: Bitrix shows it as a quote.
fn quote(text: &str) -> String {
    let mut shown: String = text.chars().take(QUOTE_SHOWN_CHARS).collect();
    if text.chars().count() > QUOTE_SHOWN_CHARS {
        shown.push('…');
    }
    shown
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!(">>{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A reaction, or its removal, with the message it is on.
async fn reaction(relay: &Relay, m: &Value) -> Result<String, JobError> {
    let head = match s(m, "/reaction/emoji") {
        Some(e) => format!("Reacted {e}"),
        None => "Removed the reaction".to_string(),
    };
    let quoted = match s(m, "/reaction/message_id") {
        Some(id) => store::quoted(&relay.core.db, id).await.map_err(retry_db)?,
        None => None,
    };
    Ok(match quoted {
        Some(Quoted::Operator(Some(t))) => {
            format!("{head} to the operator's message:\n{}", quote(&t))
        }
        Some(Quoted::Customer(Some(t))) => {
            format!("{head} to the customer's message:\n{}", quote(&t))
        }
        Some(Quoted::Operator(None)) => format!("{head} to an operator's message"),
        Some(Quoted::Customer(None)) => format!("{head} to one of the customer's messages"),
        None => format!("{head} to a message"),
    })
}

/// The ad a customer clicked to start the chat (click-to-WhatsApp `referral`).
fn referral_line(r: &Value) -> String {
    let kind = match s(r, "/source_type") {
        Some("post") => "a post",
        _ => "an ad",
    };
    let mut line = format!("📣 Came from {kind}");
    if let Some(h) = s(r, "/headline") {
        line.push_str(&format!(": «{h}»"));
    }
    if let Some(b) = s(r, "/body") {
        let b: String = b.chars().take(QUOTE_SHOWN_CHARS).collect();
        line.push_str(&format!(" — {b}"));
    }
    if let Some(u) = s(r, "/source_url") {
        line.push_str(&format!("\n{u}"));
    }
    line
}

/// The lead's source for a customer who came from an ad: `ADVERTISING` and the ad in words.
pub(super) fn lead_source(unit: &InboundUnit) -> Option<String> {
    let r = unit.message.get("referral")?;
    let mut d = match s(r, "/source_type") {
        Some("post") => "WhatsApp, from a post".to_string(),
        _ => "WhatsApp, from an ad".to_string(),
    };
    if let Some(h) = s(r, "/headline") {
        d.push_str(&format!(": {h}"));
    }
    if let Some(u) = s(r, "/source_url") {
        d.push_str(&format!(" ({u})"));
    }
    if let Some(id) = s(r, "/source_id") {
        d.push_str(&format!(", ad id {id}"));
    }
    Some(d)
}
