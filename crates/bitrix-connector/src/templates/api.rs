//! The admin JSON API of templates, gated by `SWITCHBOARD_ADMIN_TOKEN` like core's `/api/*`:
//! the list with each template's variables and status, a sync on demand, and writing first to
//! a phone number with a template (for an operator's tool or a Bitrix24 automation's webhook).

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequestParts, State},
    http::{HeaderMap, StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use switchboard_core::http::{check_admin, request_id_of};
use utoipa::ToSchema;

use super::{
    Variable,
    fill::{self, Given},
    first::{OpenConversation, open_key},
    stored,
    sync::{self, SyncError, Synced},
};
use crate::{Error, channels, meta::MetaClient, relay::Relay, store};

pub const TEMPLATES: &str = "/api/bitrix/templates";
pub const TEMPLATES_SYNC: &str = "/api/bitrix/templates/sync";
pub const CONVERSATIONS: &str = "/api/bitrix/conversations";

/// The admin token, as a bearer token or `?token=`.
pub struct Admin;

impl FromRequestParts<Relay> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, relay: &Relay) -> Result<Self, Response> {
        check_admin(
            relay.core.config.admin_token().as_ref(),
            &parts.headers,
            parts.uri.query(),
        )?;
        Ok(Admin)
    }
}

/// A template as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listed {
    pub name: String,
    pub language: String,
    pub category: String,
    /// `APPROVED` (sendable), `PAUSED`, `DISABLED`, `PENDING`, `REJECTED`…
    pub status: String,
    /// The body's text with its `{{…}}` variables.
    pub body: Option<String>,
    /// The values a send needs, by the key an operator types.
    #[schema(value_type = Vec<Object>)]
    pub variables: Vec<Variable>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Listed>,
    /// When Meta's list was last read (Unix ms); null before the first sync.
    pub synced_at: Option<i64>,
    /// Names in `[[bitrix.templates]]` of the config file, which override language and body
    /// values.
    pub configured: Vec<String>,
}

pub async fn list_templates(
    _: Admin,
    State(relay): State<Relay>,
) -> Result<Json<TemplateList>, Error> {
    let db = &relay.core.db;
    let templates = stored::all(db)
        .await?
        .into_iter()
        .map(|t| Listed {
            variables: t.variables(),
            body: t.body_text().map(str::to_string),
            name: t.name,
            language: t.language,
            category: t.category,
            status: t.status,
        })
        .collect();
    Ok(Json(TemplateList {
        templates,
        synced_at: stored::last_synced(db).await?,
        configured: crate::to_whatsapp::template::templates(&relay.core)
            .iter()
            .map(|t| t.name.clone())
            .collect(),
    }))
}

pub async fn sync_templates(_: Admin, State(relay): State<Relay>) -> Result<Json<Synced>, Error> {
    match sync::run(&relay).await {
        Ok(s) => Ok(Json(s)),
        Err(SyncError::NoWaba) => Err(Error::NotConfigured {
            setting: "SWITCHBOARD_META_WABA_ID",
        }),
        Err(SyncError::Settings(e)) => Err(e),
        Err(e @ SyncError::Meta(_)) | Err(e @ SyncError::TooManyPages) => {
            Err(Error::Upstream(e.to_string()))
        }
        Err(SyncError::Db(e)) => Err(Error::Db(e)),
    }
}

/// The values of a write-first send: by key (`{"1": "Anna", "button1": "1042"}`) or in order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Values {
    Keyed(std::collections::BTreeMap<String, String>),
    Positional(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartConversation {
    /// The customer's phone number in international form (`+49 176 12345678`).
    pub to: String,
    /// The approved template's name.
    pub template: String,
    /// Its language (`en_US`); needed only when the template exists in several.
    pub language: Option<String>,
    /// Its variables' values; `{name}` in a value is replaced by `name`.
    pub values: Option<Values>,
    /// The Open Channel line (a channel's `line_id`) whose number sends it; needed only when
    /// there are several channels.
    pub line: Option<String>,
    /// The customer's name, shown in Bitrix24.
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    /// Meta's id of the template message.
    pub wamid: String,
    /// The customer's WhatsApp id (the number's digits).
    pub to: String,
    pub line: String,
    pub template: String,
    pub language: String,
}

/// The longest customer name taken.
const MAX_NAME_CHARS: usize = 60;

/// The longest `Idempotency-Key` taken.
const MAX_KEY_CHARS: usize = 200;

pub async fn start_conversation(
    _: Admin,
    State(relay): State<Relay>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let req: StartConversation = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("not a valid request: {e}")))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_CHARS)
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible characters"
                    ))
                })?
                .to_string(),
        ),
    };
    let accepted = |answer: String| {
        (
            StatusCode::ACCEPTED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response()
    };
    let Some(key) = key else {
        let started = send_first(&relay, &headers, req).await?;
        return Ok(accepted(
            serde_json::to_string(&started).unwrap_or_default(),
        ));
    };
    let db = &relay.core.db;
    match stored::claim(db, &key).await? {
        stored::Claim::Done(answer) => Ok(accepted(answer)),
        stored::Claim::Busy => Err(Error::Conflict(
            "a call with this Idempotency-Key is still sending; ask again in a moment".into(),
        )),
        stored::Claim::Mine => match send_first(&relay, &headers, req).await {
            Ok(started) => {
                let answer = serde_json::to_string(&started).unwrap_or_default();
                stored::finish_claim(db, &key, &started.wamid, &answer).await?;
                Ok(accepted(answer))
            }
            Err(e) => {
                stored::drop_claim(db, &key).await?;
                Err(e)
            }
        },
    }
}

/// Sends the template and queues the conversation's opening in Bitrix24.
async fn send_first(
    relay: &Relay,
    headers: &HeaderMap,
    req: StartConversation,
) -> Result<Started, Error> {
    let relay = relay.clone();
    let customer = wa_id(&req.to).ok_or_else(|| {
        Error::BadRequest(format!(
            "`to` must be a phone number in international form with 8 to 15 digits, like +49 176 12345678 (got {:?})",
            req.to.chars().take(40).collect::<String>()
        ))
    })?;
    let name = req.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control)) {
        return Err(Error::BadRequest(format!(
            "`name` must be one line of at most {MAX_NAME_CHARS} characters"
        )));
    }
    let too_long = |v: &str, max: usize| v.chars().count() > max;
    if too_long(&req.template, 512) || req.language.as_deref().is_some_and(|l| too_long(l, 20)) {
        return Err(Error::BadRequest(
            "`template` is a template's name (at most 512 characters) and `language` a code like en_US".into(),
        ));
    }
    let channel = pick_channel(&relay, req.line.as_deref()).await?;
    crate::to_whatsapp::template::synced_once(&relay).await;
    let resolved = fill::resolve(&relay, req.template.trim(), req.language.as_deref())
        .await
        .map_err(|note| Error::BadRequest(plain(&note)))?;
    let given = match req.values {
        None => Given::default(),
        Some(Values::Positional(v)) => Given {
            keyed: Vec::new(),
            positional: v,
        },
        Some(Values::Keyed(m)) => Given {
            keyed: m.into_iter().collect(),
            positional: Vec::new(),
        },
    };
    let shown_name = name
        .map(str::to_string)
        .unwrap_or_else(|| format!("+{customer}"));
    let (template, filled) = fill::fill(&resolved, &given, &shown_name)
        .map_err(|note| Error::BadRequest(plain(&note)))?;
    let meta = MetaClient::for_number(&relay.core, &channel.phone_number_id).await?;
    // Recorded before the send: Meta's statuses may come back before its answer does.
    let db = &relay.core.db;
    let message_id = super::first::new_message_id();
    store::record_outbound_from(db, &message_id, "", &customer, &channel.phone_number_id).await?;
    let send = serde_json::json!({"messaging_product": "whatsapp", "recipient_type": "individual",
        "to": customer, "type": "template", "template": template,
        "biz_opaque_callback_data": crate::to_whatsapp::send::callback_data(&message_id, 0)});
    let wamid = match meta.send(&send).await {
        Ok(w) => w,
        Err(e) => {
            store::set_outbound(db, &message_id, "failed", None, Some(&e.to_string())).await?;
            return Err(if e.is_retryable() {
                Error::Upstream(format!("Meta did not take the template: {}", e.explained()))
            } else {
                Error::Refused(format!("Meta refused the template: {}", e.explained()))
            });
        }
    };
    store::record_part(db, &message_id, 0, &wamid).await?;
    store::set_outbound(db, &message_id, "sent", Some(&wamid), None).await?;
    let body_text = resolved
        .synced
        .as_ref()
        .and_then(|t| t.rendered_body(&filled));
    let text = match body_text {
        Some(b) => format!(
            "[b]Template \"{}\" ({}) sent to the customer:[/b][br]{b}",
            resolved.name, resolved.language
        ),
        None => format!(
            "[b]Template \"{}\" ({}) sent to the customer.[/b]",
            resolved.name, resolved.language
        ),
    };
    let job = OpenConversation {
        customer: customer.clone(),
        line: channel.line.clone(),
        wamid: wamid.clone(),
        message_id,
        text,
        name: name.map(str::to_string),
    };
    relay
        .core
        .jobs
        .push_once(&job, &request_id_of(headers), &open_key(&wamid))
        .await
        .map_err(|e| Error::Internal(format!("the template was sent ({wamid}) but the conversation could not be queued for Bitrix24: {e}")))?;
    tracing::info!(%wamid, line = %channel.line, template = %resolved.name, "template sent first to a customer");
    Ok(Started {
        wamid,
        to: customer,
        line: channel.line,
        template: resolved.name,
        language: resolved.language,
    })
}

/// A note's text for an API answer: without the warning sign.
fn plain(note: &str) -> String {
    note.trim_start_matches('⚠')
        .trim()
        .replace("Not sent: ", "")
}

/// The digits of an international number: `+49 (176) 123-45678` → `4917612345678`.
fn wa_id(to: &str) -> Option<String> {
    let t = to.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if !t
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '.'))
    {
        return None;
    }
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    (8..=15)
        .contains(&digits.len())
        .then_some(digits)
        .filter(|d| !d.starts_with('0'))
}

async fn pick_channel(relay: &Relay, line: Option<&str>) -> Result<channels::Channel, Error> {
    let all = channels::routing(relay).await?;
    match line.map(str::trim).filter(|l| !l.is_empty()) {
        Some(l) => all.into_iter().find(|c| c.line == l).ok_or_else(|| {
            Error::BadRequest(format!(
                "Open Channel line {} has no WhatsApp number: use the line_id of one of the channels",
                l.chars().take(20).collect::<String>()
            ))
        }),
        None => match all.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::BadRequest("no channel is configured".into())),
            many => Err(Error::BadRequest(format!(
                "there are several channels: say which with `line` (one of {})",
                many.iter().map(|c| c.line.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn phone_numbers_become_wa_ids() {
        assert_eq!(
            super::wa_id("+49 176 12345678").as_deref(),
            Some("4917612345678")
        );
        assert_eq!(
            super::wa_id("+1 (555) 010-9999").as_deref(),
            Some("15550109999")
        );
        assert_eq!(super::wa_id("12345"), None);
        assert_eq!(super::wa_id("+49 176 abc"), None);
        assert_eq!(super::wa_id("0176 1234567"), None);
    }
}
