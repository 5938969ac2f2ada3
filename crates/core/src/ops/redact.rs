//! Masks credentials in stored payloads before a page shows them. Bitrix24 events carry
//! `auth[access_token]` / `auth[application_token]`, PBX calls carry `api_secret`, and forwarded
//! payloads may carry anything: every value whose key looks like a credential is replaced by
//! the mask, in JSON bodies and in form-encoded bodies alike.

use crate::secret::MASK;

/// Key fragments that mark a credential (case-insensitive).
const SENSITIVE: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "authorization",
    "api_key",
    "apikey",
];

pub fn is_sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SENSITIVE.iter().any(|s| k.contains(s))
}

/// A readable, redacted rendering of a stored body: pretty JSON, or one `key = value` line per
/// form field, or the text itself when it is neither (which can't be redacted by key and is
/// shown as stored).
pub fn redact_body(body: &[u8]) -> String {
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
        redact_json(&mut v);
        return serde_json::to_string_pretty(&v).unwrap_or_default();
    }
    let text = String::from_utf8_lossy(body);
    if looks_form_encoded(&text) {
        return form_urlencoded::parse(text.trim().as_bytes())
            .map(|(k, v)| {
                let shown = if is_sensitive_key(&k) { MASK.into() } else { v };
                format!("{k} = {shown}")
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    text.into_owned()
}

/// Replaces, in place, the value of every object member whose key looks like a credential.
pub fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if is_sensitive_key(k) && !val.is_object() && !val.is_array() {
                    if !val.is_null() {
                        *val = serde_json::Value::String(MASK.into());
                    }
                } else {
                    redact_json(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

fn looks_form_encoded(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty()
        && t.contains('=')
        && !t.contains(char::is_whitespace)
        && t.split('&')
            .all(|pair| pair.contains('=') || pair.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_credentials_are_masked_at_any_depth() {
        let body = br#"{"api_key":"k1","api_secret":"s3cret","endpoint":"/api/x",
            "auth":{"access_token":"AT","refresh_token":"RT","member_id":"m1"},
            "items":[{"Token":"T"}],"signature":null}"#;
        let out = redact_body(body);
        for leaked in ["s3cret", "\"AT\"", "\"RT\"", "\"T\"", "k1"] {
            assert!(!out.contains(leaked), "{leaked} leaked in {out}");
        }
        assert!(out.contains("m1") && out.contains("/api/x"));
        assert!(out.contains(MASK));
    }

    #[test]
    fn form_credentials_are_masked() {
        let body = b"event=ONIMCONNECTORMESSAGEADD&data%5BMESSAGES%5D%5B0%5D%5Bmessage%5D%5Btext%5D=hi+there&auth%5Baccess_token%5D=AT123&auth%5Bapplication_token%5D=APP456&auth%5Bmember_id%5D=m1";
        let out = redact_body(body);
        assert!(!out.contains("AT123") && !out.contains("APP456"), "{out}");
        assert!(out.contains("auth[member_id] = m1"));
        assert!(out.contains("hi there"));
    }

    #[test]
    fn plain_text_is_shown_as_stored() {
        assert_eq!(redact_body(b"{not json"), "{not json");
    }
}
