//! What an MSG91 flow posts: `{api_key, api_secret, endpoint, method?, body?}` (SPEC §2).
//!
//! Parsed by hand from a `serde_json::Value` rather than derived, so each refusal names the
//! field to fix and says what was wrong with it; a flow builder can only show the caller our
//! error text. Unknown fields are ignored: MSG91 may add its own.

use reqwest::Method;
use serde_json::{Map, Value};
use switchboard_core::Secret;

use crate::{
    endpoint::{self, Endpoint},
    error::Error,
};

/// One validated bridge call.
#[derive(Debug)]
pub struct ProxyRequest {
    pub api_key: String,
    pub api_secret: Secret,
    pub endpoint: Endpoint,
    pub method: Method,
    /// The JSON to forward, already serialised once so a retry after a 401 sends the same bytes.
    pub body: Option<Vec<u8>>,
}

pub fn parse(bytes: &[u8], allowed_prefixes: &[String]) -> Result<ProxyRequest, Error> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_request(None, format!("request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(Error::bad_request(
            None,
            "request body must be a JSON object".to_string(),
        ));
    };
    let api_key = required_string(&fields, "api_key")?;
    let api_secret = Secret::new(required_string(&fields, "api_secret")?);
    let endpoint = endpoint::parse(&required_string(&fields, "endpoint")?, allowed_prefixes)
        .map_err(|e| Error::bad_request(Some("endpoint"), e.to_string()))?;
    let method = method(fields.get("method"))?;
    let body = match fields.get("body") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::Object(_) | Value::Array(_))) => {
            Some(serde_json::to_vec(v).expect("a parsed JSON value serialises"))
        }
        Some(_) => {
            return Err(Error::bad_request(
                Some("body"),
                "`body` must be a JSON object or array".to_string(),
            ));
        }
    };
    Ok(ProxyRequest {
        api_key,
        api_secret,
        endpoint,
        method,
        body,
    })
}

fn required_string(fields: &Map<String, Value>, name: &'static str) -> Result<String, Error> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(Error::bad_request(
            Some(name),
            format!("missing field `{name}`"),
        )),
        Some(Value::String(s)) if s.trim().is_empty() => Err(Error::bad_request(
            Some(name),
            format!("`{name}` must not be empty"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::bad_request(
            Some(name),
            format!("`{name}` must be a string"),
        )),
    }
}

/// The seed's methods plus PATCH, in any case; POST when absent, as in the seed.
fn method(value: Option<&Value>) -> Result<Method, Error> {
    let name = match value {
        None | Some(Value::Null) => return Ok(Method::POST),
        Some(Value::String(s)) => s.to_ascii_uppercase(),
        Some(_) => {
            return Err(Error::bad_request(
                Some("method"),
                "`method` must be a string".to_string(),
            ));
        }
    };
    match name.as_str() {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        _ => Err(Error::bad_request(
            Some("method"),
            "`method` must be one of GET, POST, PUT, PATCH, DELETE".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn prefixes() -> Vec<String> {
        vec!["/api/".to_string()]
    }

    fn field_of(body: Value) -> (Option<&'static str>, String) {
        match parse(body.to_string().as_bytes(), &prefixes()) {
            Err(Error::BadRequest { field, message }) => (field, message),
            other => panic!("expected a 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn seed_example_parses_with_post_default() {
        let r = parse(
            json!({
                "api_key": "org_1", "api_secret": "secret_xxxxx",
                "endpoint": "/api/v1/calls/click-to-call",
                "body": {"from": "9876543210", "to": "5001"},
                "extra": "ignored"
            })
            .to_string()
            .as_bytes(),
            &prefixes(),
        )
        .unwrap();
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.api_secret.expose(), "secret_xxxxx");
        assert_eq!(
            serde_json::from_slice::<Value>(r.body.as_deref().unwrap()).unwrap(),
            json!({"from": "9876543210", "to": "5001"})
        );
        assert!(!format!("{r:?}").contains("secret_xxxxx"));
    }

    #[test]
    fn methods_in_any_case() {
        for (given, want) in [
            ("get", Method::GET),
            ("Put", Method::PUT),
            ("PATCH", Method::PATCH),
            ("delete", Method::DELETE),
            ("post", Method::POST),
        ] {
            let r = parse(
                json!({"api_key": "k", "api_secret": "s", "endpoint": "/api/x", "method": given})
                    .to_string()
                    .as_bytes(),
                &prefixes(),
            )
            .unwrap();
            assert_eq!(r.method, want);
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok = json!({"api_key": "k", "api_secret": "s", "endpoint": "/api/x"});
        let with = |k: &str, v: Value| {
            let mut o = ok.clone();
            o[k] = v;
            o
        };
        let without = |k: &str| {
            let mut o = ok.clone();
            o.as_object_mut().unwrap().remove(k);
            o
        };
        for (body, field) in [
            (without("api_key"), "api_key"),
            (without("api_secret"), "api_secret"),
            (without("endpoint"), "endpoint"),
            (with("api_key", json!(42)), "api_key"),
            (with("api_key", json!("  ")), "api_key"),
            (with("api_secret", json!(["s"])), "api_secret"),
            (with("endpoint", json!({"path": "/api/x"})), "endpoint"),
            (with("endpoint", json!("/admin")), "endpoint"),
            (with("method", json!("TRACE")), "method"),
            (with("method", json!("CONNECT")), "method"),
            (with("method", json!(1)), "method"),
            (with("body", json!("text")), "body"),
            (with("body", json!(5)), "body"),
        ] {
            assert_eq!(field_of(body.clone()).0, Some(field), "{body}");
        }
        assert_eq!(field_of(json!([1, 2])).0, None);
        assert!(matches!(
            parse(b"{not json", &prefixes()),
            Err(Error::BadRequest { field: None, .. })
        ));
    }
}
