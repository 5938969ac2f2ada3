//! PHP's view of request parameters. Bitrix is PHP: form bodies go through `parse_str`, events
//! leave through `http_build_query`, and handlers test values with `empty()`. Reproducing those
//! rules (rather than strict serde types) is what makes the fake accept and refuse the same
//! inputs the portal does.

use serde_json::{Map, Value};

/// `a[b][0]=x&a[b][]=y` → `{"a":{"b":["x","y"]}}`, every leaf a string, as `parse_str` does.
pub fn parse_form(body: &[u8]) -> Value {
    parse_pairs(form_urlencoded::parse(body).into_owned())
}

/// `parse_form` over pairs already decoded (a batch command's, after its references are filled).
pub fn parse_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let path = split_key(&key);
        if path.first().is_none_or(String::is_empty) {
            continue;
        }
        insert(&mut root, &path, Value::String(value));
    }
    lists_from_sequential_keys(root)
}

pub(crate) fn split_key(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_string()];
    };
    let mut path = vec![key[..open].to_string()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        let Some(close) = stripped.find(']') else {
            break;
        };
        path.push(stripped[..close].to_string());
        rest = &stripped[close + 1..];
    }
    path
}

fn insert(node: &mut Value, path: &[String], leaf: Value) {
    if !node.is_object() {
        // PHP overwrites a scalar with an array when a later key nests under it.
        *node = Value::Object(Map::new());
    }
    let map = node.as_object_mut().expect("made an object above");
    let key = if path[0].is_empty() {
        map.len().to_string()
    } else {
        path[0].clone()
    };
    if path.len() == 1 {
        map.insert(key, leaf);
    } else {
        let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
        insert(child, &path[1..], leaf);
    }
}

/// PHP has one array type; JSON shows a list exactly when the keys are 0..n in order.
fn lists_from_sequential_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sequential =
                !map.is_empty() && map.keys().enumerate().all(|(i, k)| k == &i.to_string());
            let converted = map
                .into_iter()
                .map(|(k, v)| (k, lists_from_sequential_keys(v)));
            if sequential {
                Value::Array(converted.map(|(_, v)| v).collect())
            } else {
                Value::Object(converted.collect())
            }
        }
        other => other,
    }
}

/// `http_build_query`: nested keys, every value a string, `true`→`1`, `false`→`0`, nulls and
/// empty arrays simply absent (protocol §5.1).
pub fn build_form(value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Value::Object(map) = value {
        for (k, v) in map {
            flatten(k.clone(), v, &mut out);
        }
    }
    out
}

fn flatten(prefix: String, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix, if *b { "1" } else { "0" }.to_string())),
        Value::Number(n) => out.push((prefix, n.to_string())),
        Value::String(s) => out.push((prefix, s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten(format!("{prefix}[{k}]"), v, out);
            }
        }
    }
}

pub fn encode_form(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Top-level parameter names are case-insensitive (`array_change_key_case` in every handler).
pub fn param<'a>(params: &'a Value, name: &str) -> Option<&'a Value> {
    params
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Object member by exact key (after the handler's own key-case conversion).
pub fn field<'a>(value: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    value?.as_object()?.get(name)
}

/// PHP `empty()`: `""`, `"0"`, `0`, `false`, `null` and `[]` are all empty.
pub fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => !b,
        Some(Value::String(s)) => s.is_empty() || s == "0",
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
    }
}

/// Ids arrive as strings or numbers (protocol §3); PHP compares them loosely.
pub fn as_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.to_string()),
        _ => None,
    }
}

pub fn as_int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

/// PHP `(int)` cast: non-numeric text is 0, which is how `LINE` defaults to 0.
pub fn int_or_zero(value: Option<&Value>) -> i64 {
    as_int(value).unwrap_or(0)
}

/// Bitrix's `Converter(KEYS | RECURSIVE)`: only keys change, values stay as sent.
pub fn keys_to_lower(value: &Value) -> Value {
    convert_keys(value, &|k| k.to_lowercase())
}

pub fn keys_to_upper(value: &Value) -> Value {
    convert_keys(value, &|k| k.to_uppercase())
}

fn convert_keys(value: &Value, f: &dyn Fn(&str) -> String) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (f(k), convert_keys(v, f)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| convert_keys(v, f)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_str_builds_nested_lists_and_maps() {
        let v = parse_form(
            b"CONNECTOR=x&MESSAGES[0][user][id]=1&MESSAGES[0][message][files][][url]=u&auth=t",
        );
        assert_eq!(
            v,
            json!({"CONNECTOR":"x","MESSAGES":[{"user":{"id":"1"},"message":{"files":[{"url":"u"}]}}],"auth":"t"})
        );
    }

    #[test]
    fn build_query_round_trips_through_parse_str() {
        let v = json!({"data":{"MESSAGES":[{"im":{"chat_id":"5"}}],"EMPTY":[]},"ts":"1"});
        let pairs = build_form(&v);
        assert!(pairs.contains(&("data[MESSAGES][0][im][chat_id]".into(), "5".into())));
        assert!(!pairs.iter().any(|(k, _)| k.contains("EMPTY")));
        assert_eq!(
            parse_form(encode_form(&pairs).as_bytes()),
            json!({"data":{"MESSAGES":[{"im":{"chat_id":"5"}}]},"ts":"1"})
        );
    }

    #[test]
    fn php_empty_treats_zero_string_as_empty() {
        assert!(is_empty(Some(&json!("0"))));
        assert!(is_empty(Some(&json!([]))));
        assert!(!is_empty(Some(&json!("N"))));
    }
}
