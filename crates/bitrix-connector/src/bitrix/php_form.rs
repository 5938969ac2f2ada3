//! Bitrix posts `application/x-www-form-urlencoded` bodies with PHP-nested keys
//! (`data[MESSAGES][0][im][chat_id]=1767`, protocol §5.1). This turns them into a JSON tree of
//! objects whose leaves are strings; list indices stay object keys ("0", "1", …), which is how
//! PHP itself holds them and keeps sparse or odd indices from being misread.

use serde_json::{Map, Value};

/// Most fields a body may have. A real event has a few dozen (one message with a handful of
/// files and the `auth` block); the cap bounds the tree a stranger can make us build.
pub const MAX_FIELDS: usize = 2_000;

/// Deepest key accepted: Bitrix's deepest is 7 (`data[MESSAGES][0][message][files][0][name]`).
const MAX_DEPTH: usize = 16;

/// Credential keys, as `auth[…]` in events and as the frame fields of an install or app page.
const AUTH_SECRETS: &[&str] = &["access_token", "refresh_token", "application_token"];
const FRAME_SECRETS: &[&str] = &["AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN"];

/// The tree of `body`, or why it is refused: more than [`MAX_FIELDS`] fields or a key nested
/// deeper than 16 levels. The field count is checked before anything is built.
pub fn parse(body: &[u8]) -> Result<Value, String> {
    let fields = body.split(|b| *b == b'&').count();
    if fields > MAX_FIELDS {
        return Err(format!(
            "form has {fields} fields; at most {MAX_FIELDS} are accepted"
        ));
    }
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let Some(path) = split_key(&key) else {
            return Err(format!("form key nested deeper than {MAX_DEPTH} levels"));
        };
        insert(&mut root, &path, value.into_owned());
    }
    Ok(Value::Object(root))
}

/// The last value of each of `names` (decoded keys compared whole, `auth[application_token]`),
/// read straight off the body without building a tree: cheap enough to run before the sender
/// is known. The last one wins, as in [`parse`].
pub fn fields<const N: usize>(body: &[u8], names: [&str; N]) -> [Option<String>; N] {
    let mut found = [const { None }; N];
    for (key, value) in form_urlencoded::parse(body) {
        if let Some(i) = names.iter().position(|n| *n == key) {
            found[i] = Some(value.into_owned());
        }
    }
    found
}

/// `body` without the fields that carry credentials (`auth[access_token]`,
/// `auth[refresh_token]`, `auth[application_token]`, `AUTH_ID`, `REFRESH_ID`,
/// `APPLICATION_TOKEN`); every other field byte for byte as received. What gets stored.
pub fn without_secrets(body: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(body.len());
    for field in body.split(|b| *b == b'&') {
        let raw_key = field.split(|b| *b == b'=').next().unwrap_or_default();
        let secret =
            form_urlencoded::parse(raw_key)
                .next()
                .is_some_and(|(key, _)| match split_key(&key).as_deref() {
                    Some([top]) => FRAME_SECRETS.contains(&top.as_str()),
                    Some([auth, name, ..]) => {
                        auth == "auth" && AUTH_SECRETS.contains(&name.as_str())
                    }
                    _ => false,
                });
        if secret {
            continue;
        }
        if !kept.is_empty() {
            kept.push(b'&');
        }
        kept.extend_from_slice(field);
    }
    kept
}

/// `data[MESSAGES][0]` → `["data", "MESSAGES", "0"]`; a key with unbalanced brackets is one
/// plain name, as PHP treats it. `None`: nested deeper than [`MAX_DEPTH`].
fn split_key(key: &str) -> Option<Vec<String>> {
    let Some(open) = key.find('[') else {
        return Some(vec![key.to_string()]);
    };
    let mut parts = vec![key[..open].to_string()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        let Some(close) = stripped.find(']') else {
            return Some(vec![key.to_string()]);
        };
        parts.push(stripped[..close].to_string());
        rest = &stripped[close + 1..];
        if parts.len() > MAX_DEPTH {
            return None;
        }
    }
    if !rest.is_empty() || parts[0].is_empty() {
        return Some(vec![key.to_string()]);
    }
    Some(parts)
}

fn insert(map: &mut Map<String, Value>, path: &[String], value: String) {
    let (head, tail) = (&path[0], &path[1..]);
    // `files[]=a&files[]=b` appends, as PHP does.
    let head = if head.is_empty() {
        map.len().to_string()
    } else {
        head.clone()
    };
    if tail.is_empty() {
        map.insert(head, Value::String(value));
        return;
    }
    let child = map.entry(head).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(m) = child {
        insert(m, tail, value);
    }
}

/// The string at `path` (`["auth", "member_id"]`), if there is one.
pub fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// Children of an object in index order (`MESSAGES[0]`, `MESSAGES[1]`, …).
pub fn items(v: Option<&Value>) -> Vec<&Value> {
    let Some(Value::Object(m)) = v else {
        return Vec::new();
    };
    let mut items: Vec<(&String, &Value)> = m.iter().collect();
    items.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), (*k).clone()));
    items.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nests_php_keys() {
        let v = parse(
            b"event=X&data%5BMESSAGES%5D%5B0%5D%5Bim%5D%5Bchat_id%5D=1767&data[MESSAGES][1][im][chat_id]=9&auth[member_id]=m&a[]=1&a[]=2",
        )
        .unwrap();
        assert_eq!(text(&v, &["event"]), Some("X"));
        assert_eq!(
            text(&v, &["data", "MESSAGES", "0", "im", "chat_id"]),
            Some("1767")
        );
        assert_eq!(items(v.pointer("/data/MESSAGES")).len(), 2);
        assert_eq!(v["a"], json!({"0": "1", "1": "2"}));
    }

    #[test]
    fn odd_keys_do_not_panic() {
        for body in [
            &b"[x]=1"[..],
            b"a[b=1",
            b"a]b[=1",
            b"a[b]c=1",
            b"=&&=",
            b"a=1&a[b]=2",
            b"a[b]=2&a=1",
            b"%ff%fe[=1",
        ] {
            let _ = parse(body);
        }
    }

    #[test]
    fn too_many_fields_or_too_deep_keys_are_refused() {
        let deep = format!("a{}=1", "[x]".repeat(16));
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deeper"));
        let ok = format!("a{}=1", "[x]".repeat(15));
        assert!(parse(ok.as_bytes()).is_ok());
        // The shape that took a process from 18 to 428 MiB: tens of thousands of keys, 16 deep.
        let hostile = (0..41_000)
            .map(|i| format!("d{}[{i}]=1", "[k]".repeat(14)))
            .collect::<Vec<_>>()
            .join("&");
        assert!(parse(hostile.as_bytes()).unwrap_err().contains("fields"));
        let many = "a=1&".repeat(MAX_FIELDS);
        assert!(parse(many.as_bytes()).is_err());
        assert!(parse("a=1&".repeat(MAX_FIELDS - 1).as_bytes()).is_ok());
    }

    #[test]
    fn fields_reads_keys_without_building_a_tree() {
        let [event, token, missing] = fields(
            b"event=X&auth%5Bapplication_token%5D=t1&auth[application_token]=t2",
            ["event", "auth[application_token]", "PLACEMENT"],
        );
        assert_eq!(event.as_deref(), Some("X"));
        assert_eq!(token.as_deref(), Some("t2"));
        assert_eq!(missing, None);
    }

    #[test]
    fn secrets_are_cut_from_the_stored_body() {
        let body = b"event=X&auth%5Baccess_token%5D=AT&auth[refresh_token]=RT&auth[application_token]=APP\
                     &auth[member_id]=m&data[MESSAGES][0][message][text]=hi%26there&AUTH_ID=A&REFRESH_ID=R\
                     &APPLICATION_TOKEN=T&auth[access_token][0]=AT2";
        let kept = String::from_utf8(without_secrets(body)).unwrap();
        assert_eq!(
            kept,
            "event=X&auth[member_id]=m&data[MESSAGES][0][message][text]=hi%26there"
        );
    }
}
