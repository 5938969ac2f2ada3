//! How a WhatsApp message looks in the Open Channel: text and captions as text, media as a
//! file to re-host, and the types Bitrix has no place for (location, contact cards, button and
//! list replies, reactions) as readable text (protocol §2.3 → §4.1).

use serde_json::Value;

use crate::media;

/// A Meta media object still to be fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRef {
    pub media_id: String,
    pub mime: String,
    pub filename: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: Option<String>,
    pub media: Option<MediaRef>,
}

fn s<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    v.pointer(path)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

/// `None` for messages with nothing to show an operator (`request_welcome`, system notices
/// without a body).
pub fn render(message: &Value) -> Option<Rendered> {
    let kind = s(message, "/type").unwrap_or("unknown");
    let text_only = |t: String| {
        Some(Rendered {
            text: Some(t),
            media: None,
        })
    };
    match kind {
        "text" => text_only(s(message, "/text/body")?.to_string()),
        "image" | "video" | "audio" | "document" | "sticker" => {
            let obj = message.get(kind)?;
            let media_id = s(obj, "/id")?.to_string();
            let mime = s(obj, "/mime_type")
                .unwrap_or("application/octet-stream")
                .to_string();
            let filename = match s(obj, "/filename") {
                Some(f) => media::safe_filename(f),
                None => format!("{kind}-{media_id}.{}", media::extension(&mime)),
            };
            Some(Rendered {
                text: s(obj, "/caption").map(str::to_string),
                media: Some(MediaRef {
                    media_id,
                    mime,
                    filename,
                }),
            })
        }
        "location" => {
            let lat = message
                .pointer("/location/latitude")
                .and_then(Value::as_f64)?;
            let lon = message
                .pointer("/location/longitude")
                .and_then(Value::as_f64)?;
            let mut lines = vec!["📍 Location".to_string()];
            lines.extend(s(message, "/location/name").map(str::to_string));
            lines.extend(s(message, "/location/address").map(str::to_string));
            lines.push(format!("https://maps.google.com/?q={lat},{lon}"));
            text_only(lines.join("\n"))
        }
        "contacts" => {
            let cards = message.get("contacts")?.as_array()?;
            let lines: Vec<String> = cards
                .iter()
                .map(|c| {
                    let name = s(c, "/name/formatted_name").unwrap_or("(no name)");
                    let phones: Vec<&str> = c
                        .get("phones")
                        .and_then(Value::as_array)
                        .map(|ps| ps.iter().filter_map(|p| s(p, "/phone")).collect())
                        .unwrap_or_default();
                    format!("👤 {name}: {}", phones.join(", "))
                })
                .collect();
            text_only(format!("Shared contact\n{}", lines.join("\n")))
        }
        "interactive" => {
            let reply = match s(message, "/interactive/type") {
                Some("list_reply") => message.pointer("/interactive/list_reply"),
                Some("button_reply") => message.pointer("/interactive/button_reply"),
                _ => None,
            };
            match reply {
                Some(r) => {
                    let title = s(r, "/title").unwrap_or("");
                    match s(r, "/description") {
                        Some(d) => text_only(format!("{title} — {d}")),
                        None => text_only(title.to_string()),
                    }
                }
                None if s(message, "/interactive/type") == Some("nfm_reply") => {
                    text_only(flow_reply(message))
                }
                None => text_only("(interactive reply)".to_string()),
            }
        }
        "button" => text_only(
            s(message, "/button/text")
                .or(s(message, "/button/payload"))?
                .to_string(),
        ),
        "reaction" => match s(message, "/reaction/emoji") {
            Some(e) => text_only(format!("Reacted {e} to a message")),
            None => text_only("Removed a reaction".to_string()),
        },
        "order" => text_only(order(message)),
        "system" => text_only(s(message, "/system/body")?.to_string()),
        "request_welcome" => None,
        other => text_only(format!(
            "(a WhatsApp message of type `{other}` that can't be shown here)"
        )),
    }
}

/// A WhatsApp Flow's submission (`nfm_reply`): each field the customer filled in, one per
/// line, without the flow's own token.
fn flow_reply(message: &Value) -> String {
    let response: Option<serde_json::Map<String, Value>> =
        s(message, "/interactive/nfm_reply/response_json")
            .and_then(|j| serde_json::from_str(j).ok());
    let mut lines = vec!["📋 Form submitted".to_string()];
    for (field, value) in response.iter().flatten() {
        if field == "flow_token" {
            continue;
        }
        let value = match value {
            Value::String(v) => v.clone(),
            Value::Array(vs) => vs
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        lines.push(format!("{}: {value}", field.replace('_', " ")));
    }
    if lines.len() == 1
        && let Some(body) = s(message, "/interactive/nfm_reply/body")
    {
        lines.push(body.to_string());
    }
    lines.join("\n")
}

/// An order from the catalog: each item with quantity and price, and the customer's note.
fn order(message: &Value) -> String {
    let mut lines = vec!["🛒 Order".to_string()];
    let items = message
        .pointer("/order/product_items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut totals: Vec<(String, f64)> = Vec::new();
    for item in &items {
        let id = s(item, "/product_retailer_id").unwrap_or("?");
        let quantity = item
            .get("quantity")
            .and_then(|q| q.as_f64().or_else(|| q.as_str()?.parse().ok()))
            .unwrap_or(1.0);
        let price = item
            .get("item_price")
            .and_then(|p| p.as_f64().or_else(|| p.as_str()?.parse().ok()));
        let currency = s(item, "/currency").unwrap_or("");
        match price {
            Some(p) => {
                lines.push(format!("{quantity} × {id} — {p:.2} {currency}"));
                match totals.iter_mut().find(|(c, _)| c == currency) {
                    Some((_, t)) => *t += p * quantity,
                    None => totals.push((currency.to_string(), p * quantity)),
                }
            }
            None => lines.push(format!("{quantity} × {id}")),
        }
    }
    for (currency, total) in totals {
        lines.push(format!("Total: {total:.2} {currency}"));
    }
    if let Some(t) = s(message, "/order/text") {
        lines.push(format!("Note: {t}"));
    }
    lines.join("\n")
}

/// What is kept of a message for quoting: its text, else the name of its file.
pub fn quotable(message: &Value) -> Option<String> {
    let r = render(message)?;
    r.text
        .or_else(|| r.media.map(|m| format!("📎 {}", m.filename)))
}

/// The new number of a `system` notice that the customer changed number.
pub fn new_number(message: &Value) -> Option<&str> {
    if s(message, "/type") != Some("system") {
        return None;
    }
    match s(message, "/system/type") {
        Some("user_changed_number" | "customer_changed_number") => s(message, "/system/wa_id")
            .or(s(message, "/system/new_wa_id"))
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit())),
        _ => None,
    }
}

/// Bitrix accepts only letters, spaces, `-` and `'` in names, at most 25 characters each
/// (protocol §4.1); anything else makes it refuse to create the customer.
pub fn split_name(full: Option<&str>) -> (String, String) {
    let cleaned: String = full
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_alphabetic() || c == '-' || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let cut = |s: String| s.chars().take(25).collect::<String>().trim().to_string();
    match words.as_slice() {
        [] => (String::new(), String::new()),
        [one] => (cut(one.to_string()), String::new()),
        [first, rest @ ..] => (cut(first.to_string()), cut(rest.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn media_gets_a_name_and_keeps_its_caption() {
        let r = render(
            &json!({"type":"image","image":{"id":"77","mime_type":"image/jpeg","caption":"box"}}),
        )
        .unwrap();
        assert_eq!(r.text.as_deref(), Some("box"));
        assert_eq!(r.media.unwrap().filename, "image-77.jpg");
        let d = render(&json!({"type":"document","document":{"id":"8","mime_type":"application/pdf","filename":"inv.pdf"}}))
            .unwrap();
        assert_eq!(d.media.unwrap().filename, "inv.pdf");
    }

    #[test]
    fn non_media_types_become_text() {
        let loc = render(&json!({"type":"location","location":{"latitude":52.5,"longitude":13.4,"name":"Office"}})).unwrap();
        assert!(loc.text.unwrap().contains("52.5,13.4"));
        let b = render(&json!({"type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"x","title":"Yes"}}})).unwrap();
        assert_eq!(b.text.as_deref(), Some("Yes"));
        assert!(render(&json!({"type":"request_welcome"})).is_none());
        assert!(
            render(&json!({"type":"brand_new"}))
                .unwrap()
                .text
                .unwrap()
                .contains("brand_new")
        );
    }

    #[test]
    fn names_fit_bitrix_rules() {
        assert_eq!(
            split_name(Some("Anna Schmidt")),
            ("Anna".into(), "Schmidt".into())
        );
        assert_eq!(split_name(Some("😀 R2-D2")), ("R".into(), "-D".into()));
        assert_eq!(split_name(None), (String::new(), String::new()));
        let (first, _) = split_name(Some(&"a".repeat(40)));
        assert_eq!(first.len(), 25);
    }
}
