//! Masks credentials in stored payloads before a page shows them. Bitrix24 events carry
//! `auth[access_token]` / `auth[application_token]`, PBX calls carry `api_secret`, and forwarded
//! payloads may carry anything: the whole value of every member whose key looks like a
//! credential — text, number, object or array — is replaced by the mask, in JSON bodies and in
//! form-encoded bodies alike, at any depth. Bodies cut short (the head of a refused call, a
//! list preview) are masked too: JSON that no longer parses is masked token by token.

use std::io::Write;

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

/// Bodies up to this size are parsed and pretty-printed; larger ones are masked token by token
/// and shown as sent, since a parsed document costs many times its size in memory.
const PARSE_LIMIT: usize = 256 * 1024;

pub fn is_sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SENSITIVE.iter().any(|s| k.contains(s))
}

/// A readable, redacted rendering of a stored body: pretty JSON (or JSON as sent, when it is
/// large, cut short or would not pretty-print in a few times its size), or one `key = value`
/// line per form field, or the text itself when it is neither (which can't be redacted by key
/// and is shown as stored). The result is at most a few times the body's size.
pub fn redact_body(body: &[u8]) -> String {
    if body.len() <= PARSE_LIMIT
        && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body)
    {
        redact_json(&mut v);
        return pretty_within(&v, 4 * body.len() + 4096)
            .unwrap_or_else(|| serde_json::to_string(&v).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(body);
    if looks_like_json(&text) {
        return redact_json_text(&text);
    }
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

/// The start of a body, redacted, for a list: at most `max_chars` characters of
/// [`redact_body`]'s rendering of `head`, with `…` when that or the body (`whole` false) goes on.
pub fn preview(head: &[u8], whole: bool, max_chars: usize) -> String {
    let shown = redact_body(head);
    match shown.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &shown[..i]),
        None if !whole => format!("{shown}…"),
        None => shown,
    }
}

/// Replaces, in place, the whole value of every object member whose key looks like a
/// credential (`null` stays `null`: it hides nothing), and walks every other value.
pub fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if !is_sensitive_key(k) {
                    redact_json(val);
                } else if !val.is_null() {
                    *val = serde_json::Value::String(MASK.into());
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// Pretty JSON, unless it comes to more than `limit` bytes: indentation grows with depth, so a
/// deeply nested body pretty-prints to a hundred times its size.
fn pretty_within(v: &serde_json::Value, limit: usize) -> Option<String> {
    struct Capped(Vec<u8>, usize);
    impl Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() + buf.len() > self.1 {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped(Vec::new(), limit);
    serde_json::to_writer_pretty(&mut out, v).ok()?;
    String::from_utf8(out.0).ok()
}

fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['))
}

/// Masks JSON text without parsing it, so it works on text cut short and costs no more memory
/// than the text: after every object key that looks like a credential, the value — a string,
/// a literal, or a whole object or array up to its closing bracket (or the end of the text) —
/// is replaced by the mask. Everything else is copied as it is.
fn redact_json_text(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(b, i);
        let after_colon = skip_ws(b, end)
            .filter(|&j| b[j] == b':')
            .and_then(|j| skip_ws(b, j + 1));
        match after_colon {
            Some(value) if is_sensitive_key(&key_text(&text[i..end])) => {
                let value_end = value_end(b, value);
                if &b[value..value_end] != b"null" {
                    out.push_str(&text[copied..value]);
                    out.push('"');
                    out.push_str(MASK);
                    out.push('"');
                    copied = value_end;
                }
                i = value_end;
            }
            _ => i = end,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// The index just past the string that opens at `start` (or the end of the text).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The first non-whitespace index from `i`, if the text goes on.
fn skip_ws(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    (i < b.len()).then_some(i)
}

/// A key with its escapes resolved (`"\u0074oken"` is `token`); as written if it won't decode.
fn key_text(quoted: &str) -> std::borrow::Cow<'_, str> {
    match quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(plain) if !plain.contains('\\') => plain.into(),
        _ => serde_json::from_str::<String>(quoted)
            .map(Into::into)
            .unwrap_or(quoted.into()),
    }
}

/// The index just past the value that starts at `start`: a string, an object or array with
/// everything nested in it, or a literal up to the next delimiter; the end of the text if it
/// is cut short first.
fn value_end(b: &[u8], start: usize) -> usize {
    match b[start] {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        _ => {
            let mut i = start;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']') && !b[i].is_ascii_whitespace()
            {
                i += 1;
            }
            i
        }
    }
}

fn looks_form_encoded(text: &str) -> bool {
    let t = text.trim();
    let mut pairs = t.split('&');
    // The last pair may lack its `=`: a body cut short ends anywhere.
    pairs.next_back();
    !t.is_empty()
        && t.contains('=')
        && !t.contains(char::is_whitespace)
        && pairs.all(|pair| pair.contains('=') || pair.is_empty())
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

    /// Credentials whose value is an object or an array, and credentials nested inside those.
    const NESTED: &str = r#"{"event":"message","auth":{"access_token":{"value":"Z1","kind":"bearer"},
        "member_id":"m1","client":{"client_secret":["Z2",{"k":"Z3"}]}},
        "items":[{"Token":{"deep":{"deeper":"Z4"}}},{"api_key":[1,"Z5"]}],
        "password":77,"apikey":true,"secret":"Z\"6\\","signature":null,
        "text":"a \"token\": inside a string","tail":"end"}"#;

    #[test]
    fn a_credential_is_masked_whole_whatever_its_type() {
        let mut v: serde_json::Value = serde_json::from_str(NESTED).unwrap();
        redact_json(&mut v);
        let out = v.to_string();
        assert!(!out.contains('Z') && !out.contains("77"), "{out}");
        for key in [
            "/auth/access_token",
            "/auth/client/client_secret",
            "/items/0/Token",
        ] {
            assert_eq!(v.pointer(key).unwrap(), MASK, "{key}");
        }
        for key in ["/items/1/api_key", "/password", "/apikey", "/secret"] {
            assert_eq!(v.pointer(key).unwrap(), MASK, "{key}");
        }
        assert!(v["signature"].is_null());
        assert_eq!(v["auth"]["member_id"], "m1");
        assert_eq!(v["text"], "a \"token\": inside a string");
    }

    #[test]
    fn masking_text_agrees_with_masking_the_parsed_document() {
        let mut parsed: serde_json::Value = serde_json::from_str(NESTED).unwrap();
        redact_json(&mut parsed);
        let text: serde_json::Value = serde_json::from_str(&redact_json_text(NESTED)).unwrap();
        assert_eq!(text, parsed);
        // Escaped key spellings are still keys.
        let out = redact_json_text(r#"{"\u0074oken":"Z7","ok":1}"#);
        assert!(!out.contains("Z7"), "{out}");
    }

    #[test]
    fn json_cut_anywhere_shows_no_credential() {
        for cut in (0..=NESTED.len()).filter(|&n| NESTED.is_char_boundary(n)) {
            let out = redact_body(&NESTED.as_bytes()[..cut]);
            assert!(!out.contains('Z'), "cut at {cut}: {out}");
            assert!(!out.contains("77"), "cut at {cut}: {out}");
        }
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
    fn a_form_cut_anywhere_shows_no_credential() {
        let body = "event=ONIMCONNECTORMESSAGEADD&auth%5Baccess_token%5D=ZZ12&auth%5Bmember_id%5D=m1&auth%5Bapplication_token%5D=ZZ34";
        for cut in 0..=body.len() {
            let out = redact_body(&body.as_bytes()[..cut]);
            assert!(!out.contains('Z'), "cut at {cut}: {out}");
        }
    }

    #[test]
    fn deeply_nested_json_stays_within_a_few_times_its_size() {
        let body = format!(
            "{}{}{}",
            "[".repeat(100),
            vec!["1"; 50_000].join(","),
            "]".repeat(100)
        );
        let out = redact_body(body.as_bytes());
        assert!(out.len() <= 4 * body.len() + 4096, "{} bytes", out.len());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        );
        // Small documents are still pretty-printed.
        assert_eq!(redact_body(br#"{"a":1}"#), "{\n  \"a\": 1\n}");
    }

    #[test]
    fn plain_text_is_shown_as_stored() {
        assert_eq!(redact_body(b"{not json"), "{not json");
        assert_eq!(redact_body(b"hello there"), "hello there");
    }
}
