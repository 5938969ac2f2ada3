//! Bitrix posts `application/x-www-form-urlencoded` bodies with PHP-nested keys
//! (`data[MESSAGES][0][im][chat_id]=1767`, protocol §5.1). This turns them into a JSON tree of
//! objects whose leaves are strings; list indices stay object keys ("0", "1", …), which is how
//! PHP itself holds them and keeps sparse or odd indices from being misread.

use serde_json::{Map, Value};

/// Deepest nesting accepted; deeper keys are kept flat rather than recursed (bad input never
/// costs more than its length).
const MAX_DEPTH: usize = 16;

pub fn parse(body: &[u8]) -> Value {
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let path = split_key(&key);
        if path.is_empty() {
            continue;
        }
        insert(&mut root, &path, value.into_owned());
    }
    Value::Object(root)
}

/// `data[MESSAGES][0]` → `["data", "MESSAGES", "0"]`; a key with unbalanced brackets is one
/// plain name, as PHP treats it.
fn split_key(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_string()];
    };
    let mut parts = vec![key[..open].to_string()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        let Some(close) = stripped.find(']') else {
            return vec![key.to_string()];
        };
        parts.push(stripped[..close].to_string());
        rest = &stripped[close + 1..];
        if parts.len() > MAX_DEPTH {
            return vec![key.to_string()];
        }
    }
    if !rest.is_empty() || parts[0].is_empty() {
        return vec![key.to_string()];
    }
    parts
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
        );
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
        let deep = format!("a{}=1", "[x]".repeat(100));
        assert!(
            parse(deep.as_bytes())
                .get(format!("a{}", "[x]".repeat(100)))
                .is_some()
        );
    }
}
