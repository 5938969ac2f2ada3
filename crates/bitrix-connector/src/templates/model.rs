//! A template as Meta lists it, and the variables a send must fill: a text header's variable
//! or a media header's link, the body's `{{1}}`… (or named `{{order_id}}`), and each button
//! with a variable (a URL's suffix, a coupon code).

use serde::Serialize;
use serde_json::Value;

/// One template of the account, as the last sync stored it.
#[derive(Debug, Clone, Serialize)]
pub struct Approved {
    pub name: String,
    pub language: String,
    pub category: String,
    pub status: String,
    /// Meta's `components`.
    pub components: Value,
}

/// Where a variable's value goes in the send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Slot {
    HeaderText,
    /// `image`, `video` or `document`: the value is a link Meta fetches.
    HeaderMedia {
        format: String,
    },
    Body,
    /// The button at `index` (0-based, as Meta counts): `url` or `copy_code`.
    Button {
        index: usize,
        sub_type: String,
    },
}

/// A value the send needs, under the key an operator types (`header`, `1`, `order_id`,
/// `button1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variable {
    pub key: String,
    #[serde(flatten)]
    pub slot: Slot,
    /// Meta's `parameter_name` for a named variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter_name: Option<String>,
    /// Meta's example value, when the template gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
}

impl Approved {
    pub fn is_approved(&self) -> bool {
        self.status.eq_ignore_ascii_case("APPROVED")
    }

    fn component(&self, kind: &str) -> Option<&Value> {
        self.components.as_array()?.iter().find(|c| {
            c["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case(kind))
        })
    }

    /// The body's text, as WhatsApp Manager shows it.
    pub fn body_text(&self) -> Option<&str> {
        self.component("body")?["text"].as_str()
    }

    /// Every variable, in the order positional values fill them: header, body, buttons.
    pub fn variables(&self) -> Vec<Variable> {
        let mut out = Vec::new();
        if let Some(h) = self.component("header") {
            let format = h["format"].as_str().unwrap_or("TEXT").to_ascii_lowercase();
            if matches!(format.as_str(), "image" | "video" | "document") {
                out.push(Variable {
                    key: "header".into(),
                    slot: Slot::HeaderMedia { format },
                    parameter_name: None,
                    example: h
                        .pointer("/example/header_handle/0")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            } else if let Some(name) = placeholders(h["text"].as_str().unwrap_or("")).first() {
                out.push(Variable {
                    key: "header".into(),
                    slot: Slot::HeaderText,
                    parameter_name: named(name),
                    example: example_at(h, "header_text", 0),
                });
            }
        }
        if let Some(b) = self.component("body") {
            let mut names = placeholders(b["text"].as_str().unwrap_or(""));
            // Positional ones go in their number's order, whatever order the text uses.
            if names.iter().all(|n| n.parse::<u32>().is_ok()) {
                names.sort_by_key(|n| n.parse::<u32>().unwrap_or(0));
            }
            for (i, name) in names.iter().enumerate() {
                out.push(Variable {
                    key: name.clone(),
                    slot: Slot::Body,
                    parameter_name: named(name),
                    example: b
                        .pointer(&format!("/example/body_text/0/{i}"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
        }
        if let Some(bs) = self.component("buttons") {
            for (index, button) in bs["buttons"].as_array().into_iter().flatten().enumerate() {
                let kind = button["type"].as_str().unwrap_or("").to_ascii_uppercase();
                let sub_type = match kind.as_str() {
                    "URL" if !placeholders(button["url"].as_str().unwrap_or("")).is_empty() => {
                        "url"
                    }
                    "COPY_CODE" => "copy_code",
                    _ => continue,
                };
                out.push(Variable {
                    key: format!("button{}", index + 1),
                    slot: Slot::Button {
                        index,
                        sub_type: sub_type.into(),
                    },
                    parameter_name: None,
                    example: button
                        .pointer("/example/0")
                        .or_else(|| button.get("example"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
        }
        out
    }

    /// The body with `values` in place of its variables, for the operator's copy in Bitrix24.
    pub fn rendered_body(&self, values: &[(Variable, String)]) -> Option<String> {
        let mut text = self.body_text()?.to_string();
        for (v, value) in values {
            if v.slot == Slot::Body {
                text = text.replace(&format!("{{{{{}}}}}", v.key), value);
            }
        }
        Some(text)
    }
}

/// A named variable's name; positional ones (`1`, `2`) have none.
fn named(name: &str) -> Option<String> {
    (name.parse::<u32>().is_err()).then(|| name.to_string())
}

fn example_at(component: &Value, field: &str, i: usize) -> Option<String> {
    let ex = component.pointer(&format!("/example/{field}"))?;
    ex.get(i)
        .and_then(Value::as_str)
        .or_else(|| ex.get(0).and_then(|e| e.get(i)).and_then(Value::as_str))
        .map(str::to_string)
}

/// The distinct `{{…}}` names of a text, first appearance first.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let name = after[..close].trim();
        if !name.is_empty() && !seen.iter().any(|s| s == name) {
            seen.push(name.to_string());
        }
        rest = &after[close + 2..];
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_come_from_header_body_and_buttons() {
        let t = Approved {
            name: "order_shipped".into(),
            language: "en_US".into(),
            category: "UTILITY".into(),
            status: "APPROVED".into(),
            components: json!([
                {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["https://x"]}},
                {"type": "BODY", "text": "Hi {{1}}, order {{2}} ships {{1}}."},
                {"type": "FOOTER", "text": "Zuse"},
                {"type": "BUTTONS", "buttons": [
                    {"type": "QUICK_REPLY", "text": "Stop"},
                    {"type": "URL", "text": "Track", "url": "https://t.example/{{1}}"},
                    {"type": "COPY_CODE", "example": "SAVE10"}
                ]}
            ]),
        };
        let keys: Vec<String> = t.variables().into_iter().map(|v| v.key).collect();
        assert_eq!(keys, ["header", "1", "2", "button2", "button3"]);
        assert_eq!(placeholders("{{a}} {{ b }} {{a}} {{"), ["a", "b"]);
    }
}
