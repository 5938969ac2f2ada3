//! Checks a `/messages` body the way the Graph API does before accepting it (protocol §3), so a
//! malformed send is refused here instead of passing a lenient fake. Pure: no state, no I/O.

use serde_json::Value;

use super::{Template, errors::GraphError};

pub const SEND_TYPES: [&str; 11] = [
    "text",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "template",
    "reaction",
    "interactive",
    "location",
    "contacts",
];
const MEDIA_TYPES: [&str; 5] = ["image", "video", "audio", "document", "sticker"];
const TEXT_MAX_CHARS: usize = 4096;
const CAPTION_MAX_CHARS: usize = 1024;
const CALLBACK_DATA_MAX_CHARS: usize = 512;

/// What a valid body asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    MarkRead { message_id: String },
    Send(Send),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    /// `to` exactly as given: Meta echoes it as `contacts[].input`.
    pub input: String,
    /// Digits of `to` (or the BSUID given as `recipient`).
    pub wa_id: String,
    pub kind: String,
    pub media: Option<MediaRef>,
    /// Category of the approved template, for template sends.
    pub template_category: Option<String>,
    pub callback_data: Option<String>,
    /// The business number the send was posted to; filled in by the route.
    pub from_phone_number_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MediaRef {
    Id(String),
    Link(String),
}

pub fn parse(body: &Value, templates: &[Template]) -> Result<Request, GraphError> {
    match body.get("messaging_product") {
        None | Some(Value::Null) => return Err(GraphError::param_required("messaging_product")),
        Some(Value::String(p)) if p == "whatsapp" => {}
        Some(other) => {
            return Err(GraphError::invalid_parameter(format!(
                "Param messaging_product must be one of {{WHATSAPP}} - got {other}."
            )));
        }
    }
    if body.get("status").is_some() {
        return parse_mark_read(body);
    }
    parse_send(body, templates).map(Request::Send)
}

fn parse_mark_read(body: &Value) -> Result<Request, GraphError> {
    if body["status"] != "read" {
        return Err(GraphError::invalid_parameter(format!(
            "Param status must be one of {{READ}} - got {}.",
            body["status"]
        )));
    }
    let message_id = str_field(body, "message_id")
        .ok_or_else(|| GraphError::missing("The parameter message_id is required."))?;
    if let Some(typing) = body.get("typing_indicator")
        && typing["type"] != "text"
    {
        return Err(GraphError::invalid_value(
            "Param typing_indicator['type'] must be one of {TEXT}.",
        ));
    }
    Ok(Request::MarkRead {
        message_id: message_id.to_string(),
    })
}

fn parse_send(body: &Value, templates: &[Template]) -> Result<Send, GraphError> {
    if let Some(rt) = body.get("recipient_type")
        && rt != "individual"
    {
        return Err(GraphError::invalid_parameter(format!(
            "Param recipient_type must be one of {{INDIVIDUAL}} - got {rt}."
        )));
    }
    let (input, wa_id) = recipient(body)?;
    // Meta documents `type` as optional, defaulting to text.
    let kind = match body.get("type") {
        None => "text",
        Some(Value::String(k)) if SEND_TYPES.contains(&k.as_str()) => k.as_str(),
        Some(other) => {
            return Err(GraphError::invalid_parameter(format!(
                "Param type must be one of {{{}}} - got {other}.",
                SEND_TYPES.join(", ").to_uppercase()
            )));
        }
    };
    let object = match body.get(kind) {
        None | Some(Value::Null) => return Err(GraphError::param_required(kind)),
        Some(o) => o,
    };
    if let Some(ctx) = body.get("context")
        && str_field(ctx, "message_id").is_none()
    {
        return Err(GraphError::param_required("context['message_id']"));
    }
    let callback_data = match body.get("biz_opaque_callback_data") {
        None => None,
        Some(Value::String(s)) if s.chars().count() <= CALLBACK_DATA_MAX_CHARS => Some(s.clone()),
        Some(_) => {
            return Err(GraphError::invalid_value(format!(
                "biz_opaque_callback_data must be a string of at most {CALLBACK_DATA_MAX_CHARS} characters."
            )));
        }
    };

    let mut media = None;
    let mut template_category = None;
    match kind {
        "text" => check_text(object)?,
        "template" => template_category = Some(check_template(object, templates)?),
        "reaction" => check_reaction(object)?,
        "interactive" => check_interactive(object)?,
        "location" => check_location(object)?,
        "contacts" => check_contacts(object)?,
        media_kind => media = Some(check_media(media_kind, object)?),
    }
    Ok(Send {
        input,
        wa_id,
        kind: kind.to_string(),
        media,
        template_category,
        callback_data,
        from_phone_number_id: String::new(),
    })
}

fn recipient(body: &Value) -> Result<(String, String), GraphError> {
    // `to` wins over a BSUID `recipient` when both are present (§2.5).
    let Some(to) = body.get("to") else {
        return match str_field(body, "recipient") {
            Some(bsuid) if is_bsuid(bsuid) => Ok((bsuid.to_string(), bsuid.to_string())),
            Some(other) => Err(GraphError::for_code(100).with_details(format!(
                "Invalid recipient \"{other}\": not a business-scoped user ID."
            ))),
            None => Err(GraphError::param_required("to")),
        };
    };
    let Some(to) = to.as_str() else {
        return Err(GraphError::invalid_parameter("Param to must be a string."));
    };
    let allowed = |c: char| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')');
    let digits: String = to.chars().filter(char::is_ascii_digit).collect();
    if !to.chars().all(allowed) || digits.len() < 7 || digits.len() > 15 {
        return Err(GraphError::for_code(100)
            .with_details(format!("Invalid recipient phone number \"{to}\".")));
    }
    Ok((to.to_string(), digits))
}

/// A business-scoped user id: the country's two capital letters, a dot, digits
/// (`US.13491208655302741918`).
fn is_bsuid(v: &str) -> bool {
    v.split_once('.').is_some_and(|(cc, n)| {
        cc.len() == 2
            && cc.bytes().all(|b| b.is_ascii_uppercase())
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
    })
}

fn check_text(text: &Value) -> Result<(), GraphError> {
    let body = match text.get("body") {
        None | Some(Value::Null) => return Err(GraphError::param_required("text['body']")),
        Some(Value::String(b)) => b,
        Some(_) => {
            return Err(GraphError::invalid_value(
                "Param text['body'] must be a string.",
            ));
        }
    };
    if body.trim().is_empty() {
        return Err(GraphError::invalid_parameter(
            "Param text['body'] must be at least 1 characters long.",
        ));
    }
    if body.chars().count() > TEXT_MAX_CHARS {
        return Err(GraphError::invalid_parameter(format!(
            "Param text['body'] must be at most {TEXT_MAX_CHARS} characters long."
        )));
    }
    if let Some(p) = text.get("preview_url")
        && !p.is_boolean()
    {
        return Err(GraphError::invalid_value(
            "Param text['preview_url'] must be a boolean.",
        ));
    }
    Ok(())
}

fn check_media(kind: &str, obj: &Value) -> Result<MediaRef, GraphError> {
    debug_assert!(MEDIA_TYPES.contains(&kind));
    let media = match (str_field(obj, "id"), str_field(obj, "link")) {
        (Some(_), Some(_)) => {
            return Err(GraphError::invalid_value(format!(
                "Please specify only one of id or link for {kind}, not both."
            )));
        }
        (None, None) => {
            return Err(GraphError::missing(format!(
                "{kind}: one of {kind}['id'] or {kind}['link'] is required."
            )));
        }
        (Some(id), None) => MediaRef::Id(id.to_string()),
        (None, Some(link)) => {
            if !(link.starts_with("https://") || link.starts_with("http://")) {
                return Err(GraphError::invalid_value(format!(
                    "Param {kind}['link'] must be a valid http or https URL."
                )));
            }
            MediaRef::Link(link.to_string())
        }
    };
    if let Some(caption) = obj.get("caption") {
        if !matches!(kind, "image" | "video" | "document") {
            return Err(GraphError::invalid_value(format!(
                "Param {kind}['caption'] is not supported for {kind} messages."
            )));
        }
        if caption
            .as_str()
            .is_none_or(|c| c.chars().count() > CAPTION_MAX_CHARS)
        {
            return Err(GraphError::invalid_value(format!(
                "Param {kind}['caption'] must be a string of at most {CAPTION_MAX_CHARS} characters."
            )));
        }
    }
    if obj.get("filename").is_some() && kind != "document" {
        return Err(GraphError::invalid_value(format!(
            "Param {kind}['filename'] is only supported for document messages."
        )));
    }
    Ok(media)
}

fn check_template(obj: &Value, templates: &[Template]) -> Result<String, GraphError> {
    let name =
        str_field(obj, "name").ok_or_else(|| GraphError::param_required("template['name']"))?;
    let language = obj
        .get("language")
        .ok_or_else(|| GraphError::param_required("template['language']"))?;
    let code = str_field(language, "code")
        .ok_or_else(|| GraphError::param_required("template['language']['code']"))?;
    let not_found = || {
        GraphError::for_code(132_001)
            .with_details(format!("template name ({name}) does not exist in {code}"))
    };
    let template = templates
        .iter()
        .find(|t| t.name == name && t.language == code)
        .ok_or_else(not_found)?;
    match template.status.as_str() {
        "APPROVED" => {}
        "PAUSED" => return Err(GraphError::for_code(132_015)),
        "DISABLED" => return Err(GraphError::for_code(132_016)),
        _ => return Err(not_found()),
    }
    let given: Vec<&Value> = obj["components"].as_array().into_iter().flatten().collect();
    let of_type = |kind: &str| -> Vec<&Value> {
        given
            .iter()
            .copied()
            .filter(|c| {
                c["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(kind))
            })
            .collect()
    };
    let params = |c: &Value| c["parameters"].as_array().cloned().unwrap_or_default();
    let mismatch = |component: &str, given: usize, expected: usize| {
        GraphError::for_code(132_000).with_details(format!(
            "{component}: number of localizable_params ({given}) does not match the expected \
             number of params ({expected})"
        ))
    };
    let defined = |kind: &str| {
        template.components.iter().find(|c| {
            c["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case(kind))
        })
    };
    // Header: a text header takes its variables as text, a media header exactly one object
    // of its format.
    let header_given: Vec<Value> = of_type("header").into_iter().flat_map(params).collect();
    match defined("header") {
        Some(h) if h["format"].as_str().is_some_and(is_media_format) => {
            let format = h["format"].as_str().unwrap_or("").to_ascii_lowercase();
            if header_given.len() != 1 {
                return Err(mismatch("header", header_given.len(), 1));
            }
            let p = &header_given[0];
            let object = &p[format.as_str()];
            if p["type"].as_str() != Some(format.as_str())
                || (str_field(object, "link").is_none() && str_field(object, "id").is_none())
            {
                return Err(GraphError::for_code(132_012).with_details(format!(
                    "header: expected a {format} parameter with a link or an id"
                )));
            }
        }
        h => {
            let expected = h.map_or(0, |h| variables(h["text"].as_str().unwrap_or("")));
            if header_given.len() != expected {
                return Err(mismatch("header", header_given.len(), expected));
            }
            check_text_params(&header_given, "header")?;
        }
    }
    let body_given: Vec<Value> = of_type("body").into_iter().flat_map(params).collect();
    let body_expected = defined("body").map_or(0, |b| variables(b["text"].as_str().unwrap_or("")));
    if body_given.len() != body_expected {
        return Err(mismatch("body", body_given.len(), body_expected));
    }
    check_text_params(&body_given, "body")?;
    // Buttons: each one with a variable (a URL's suffix, a coupon code) needs its own
    // component, by index; a button without one takes none.
    let buttons: Vec<Value> = defined("buttons")
        .and_then(|b| b["buttons"].as_array().cloned())
        .unwrap_or_default();
    let button_given = of_type("button");
    for c in &button_given {
        let index = c["index"]
            .as_str()
            .map(str::to_string)
            .or_else(|| c["index"].as_u64().map(|n| n.to_string()))
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| GraphError::param_required("template['components'][]['index']"))?;
        let Some(button) = buttons.get(index) else {
            return Err(mismatch(
                &format!("button at index {index}"),
                params(c).len(),
                0,
            ));
        };
        let expected = button_variables(button);
        if params(c).len() != expected {
            return Err(mismatch(
                &format!("button at index {index}"),
                params(c).len(),
                expected,
            ));
        }
    }
    for (index, button) in buttons.iter().enumerate() {
        let expected = button_variables(button);
        let filled = button_given.iter().any(|c| {
            c["index"].as_str() == Some(index.to_string().as_str())
                || c["index"].as_u64() == Some(index as u64)
        });
        if expected > 0 && !filled {
            return Err(mismatch(&format!("button at index {index}"), 0, expected));
        }
    }
    Ok(template.category.clone())
}

fn is_media_format(f: &str) -> bool {
    ["IMAGE", "VIDEO", "DOCUMENT"].contains(&f.to_ascii_uppercase().as_str())
}

/// The distinct `{{…}}` variables of a component's text.
pub fn variables(text: &str) -> usize {
    let mut seen = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let name = after[..close].trim();
        if !name.is_empty() && !seen.contains(&name) {
            seen.push(name);
        }
        rest = &after[close + 2..];
    }
    seen.len()
}

/// A URL button's variable is in its `url`, a copy-code button always takes its code.
fn button_variables(button: &Value) -> usize {
    match button["type"]
        .as_str()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("URL") => variables(button["url"].as_str().unwrap_or("")),
        Some("COPY_CODE") => 1,
        _ => 0,
    }
}

/// Text parameters must carry non-empty text (Meta: 132012 / 100).
fn check_text_params(params: &[Value], component: &str) -> Result<(), GraphError> {
    for p in params {
        if p["type"].as_str() == Some("text") && str_field(p, "text").is_none() {
            return Err(GraphError::for_code(132_012)
                .with_details(format!("{component}: a text parameter has no text")));
        }
    }
    Ok(())
}

fn check_reaction(obj: &Value) -> Result<(), GraphError> {
    str_field(obj, "message_id")
        .ok_or_else(|| GraphError::param_required("reaction['message_id']"))?;
    // An empty emoji removes the reaction, but the key itself is required.
    if !obj.get("emoji").is_some_and(Value::is_string) {
        return Err(GraphError::param_required("reaction['emoji']"));
    }
    Ok(())
}

fn check_interactive(obj: &Value) -> Result<(), GraphError> {
    const KINDS: [&str; 7] = [
        "button",
        "list",
        "cta_url",
        "product",
        "product_list",
        "flow",
        "location_request_message",
    ];
    let kind =
        str_field(obj, "type").ok_or_else(|| GraphError::param_required("interactive['type']"))?;
    if !KINDS.contains(&kind) {
        return Err(GraphError::invalid_parameter(format!(
            "Param interactive['type'] must be one of {{{}}} - got \"{kind}\".",
            KINDS.join(", ").to_uppercase()
        )));
    }
    if obj.get("action").is_none() {
        return Err(GraphError::param_required("interactive['action']"));
    }
    if matches!(kind, "button" | "list") && str_field(&obj["body"], "text").is_none() {
        return Err(GraphError::param_required("interactive['body']['text']"));
    }
    if kind == "button" {
        let n = obj["action"]["buttons"].as_array().map_or(0, Vec::len);
        if !(1..=3).contains(&n) {
            return Err(GraphError::invalid_value(
                "interactive['action']['buttons'] must have between 1 and 3 buttons.",
            ));
        }
    }
    Ok(())
}

fn check_location(obj: &Value) -> Result<(), GraphError> {
    for key in ["latitude", "longitude"] {
        if !obj.get(key).is_some_and(|v| v.is_number() || v.is_string()) {
            return Err(GraphError::param_required(&format!("location['{key}']")));
        }
    }
    Ok(())
}

fn check_contacts(obj: &Value) -> Result<(), GraphError> {
    let cards = obj.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
        GraphError::invalid_value("Param contacts must be a non-empty array of contact cards.")
    })?;
    for (i, card) in cards.iter().enumerate() {
        if str_field(&card["name"], "formatted_name").is_none() {
            return Err(GraphError::param_required(&format!(
                "contacts[{i}]['name']['formatted_name']"
            )));
        }
    }
    Ok(())
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn templates() -> Vec<Template> {
        vec![Template::new("order_update", "en_US", 2)]
    }

    fn code(body: Value) -> u32 {
        parse(&body, &templates())
            .expect_err("should be refused")
            .code
    }

    #[test]
    fn accepts_protocol_examples() {
        let text = json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"+49 176 12345678",
            "type":"text","text":{"preview_url":false,"body":"*Order 1042* ships _today_."}});
        let Ok(Request::Send(s)) = parse(&text, &templates()) else {
            panic!()
        };
        assert_eq!(s.wa_id, "4917612345678");
        assert_eq!(s.input, "+49 176 12345678");
        let doc = json!({"messaging_product":"whatsapp","to":"4917612345678","type":"document",
            "document":{"link":"https://bridge.example/media/7Qx","filename":"invoice-1042.pdf","caption":"Invoice"}});
        assert!(parse(&doc, &templates()).is_ok());
        let tpl = json!({"messaging_product":"whatsapp","to":"4917612345678","type":"template","template":{
            "name":"order_update","language":{"code":"en_US"},
            "components":[{"type":"body","parameters":[{"type":"text","text":"Anna"},{"type":"text","text":"1042"}]}]}});
        assert!(parse(&tpl, &templates()).is_ok());
        let read = json!({"messaging_product":"whatsapp","status":"read","message_id":"wamid.X","typing_indicator":{"type":"text"}});
        assert_eq!(
            parse(&read, &templates()).unwrap(),
            Request::MarkRead {
                message_id: "wamid.X".into()
            }
        );
    }

    #[test]
    fn refuses_what_meta_refuses() {
        assert_eq!(
            code(json!({"to":"4917612345678","type":"text","text":{"body":"x"}})),
            100
        );
        assert_eq!(
            code(json!({"messaging_product":"whatsapp","type":"text","text":{"body":"x"}})),
            100
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"gif","gif":{}})
            ),
            100
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"text","text":{"body":""}})
            ),
            100
        );
        let long = "a".repeat(4097);
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"text","text":{"body":long}})
            ),
            100
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"image","image":{"caption":"x"}})
            ),
            131_008
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"image","image":{"id":"1","link":"https://a"}})
            ),
            131_009
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"audio","audio":{"id":"1","caption":"x"}})
            ),
            131_009
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"image","image":{"id":"1","filename":"a.jpg"}})
            ),
            131_009
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"template","template":{"name":"order_update"}})
            ),
            100
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"template","template":{"name":"nope","language":{"code":"en_US"}}})
            ),
            132_001
        );
        assert_eq!(
            code(
                json!({"messaging_product":"whatsapp","to":"4917612345678","type":"template","template":{"name":"order_update","language":{"code":"en_US"}}})
            ),
            132_000
        );
        assert_eq!(
            code(json!({"messaging_product":"whatsapp","status":"read"})),
            131_008
        );
    }
}
