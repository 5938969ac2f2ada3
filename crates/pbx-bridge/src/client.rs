//! The AstraPBX side: org login and the forwarded call, over core's shared HTTP client with the
//! configured per-call timeout. Knows nothing of caching or retries (`proxy.rs` does).

use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use bytes::Bytes;
use reqwest::{Method, Url};
use serde_json::{Value, json};
use switchboard_core::Secret;

use crate::{endpoint::Endpoint, error::Error};

/// The seed's login route.
const LOGIN_PATH: &str = "/api/v1/auth/login";

#[derive(Clone)]
pub struct PbxClient {
    http: reqwest::Client,
    /// `pbx.base_url` without a trailing slash, so `base + endpoint` never makes `//`.
    base: String,
    origin: Url,
    timeout: Duration,
}

/// What the PBX answered, passed back to the caller as is.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl PbxClient {
    pub fn new(http: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        let base = base_url.trim_end_matches('/').to_string();
        let origin = Url::parse(&base).expect("pbx.base_url is validated as a URL at load");
        Self {
            http,
            base,
            origin,
            timeout,
        }
    }

    /// Trades the org's credentials for a JWT (SPEC §2: `token`, `access_token` or `data.token`).
    pub async fn login(&self, api_key: &str, api_secret: &Secret) -> Result<Secret, Error> {
        let started = Instant::now();
        let sent = self
            .http
            .post(format!("{}{LOGIN_PATH}", self.base))
            .timeout(self.timeout)
            .json(&json!({"api_key": api_key, "api_secret": api_secret.expose()}))
            .send()
            .await;
        let outcome = async {
            let response = sent.map_err(|e| self.transport_error(e))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| self.transport_error(e))?;
            if status.is_client_error() {
                return Err(Error::LoginRefused {
                    pbx_status: status.as_u16(),
                });
            }
            if !status.is_success() {
                return Err(Error::LoginBroken {
                    pbx_status: status.as_u16(),
                });
            }
            token_in(&body).ok_or(Error::NoToken)
        }
        .await;
        observe("login", started);
        metrics::counter!("switchboard_pbx_logins_total", "outcome" => match &outcome {
            Ok(_) => "ok",
            Err(Error::LoginRefused { .. }) => "refused",
            Err(_) => "failed",
        })
        .increment(1);
        outcome
    }

    /// One call to `{base}{endpoint}` with the Bearer token. Any PBX status is an [`Answer`];
    /// only transport failures are errors.
    pub async fn forward(
        &self,
        method: &Method,
        endpoint: &Endpoint,
        jwt: &Secret,
        body: Option<&[u8]>,
    ) -> Result<Answer, Error> {
        let url = self.url_for(endpoint)?;
        let started = Instant::now();
        let mut request = self
            .http
            .request(method.clone(), url)
            .timeout(self.timeout)
            .bearer_auth(jwt.expose());
        // A GET body is ignored or refused by servers and proxies; the seed's GET examples have none.
        if let Some(body) = body
            && method != Method::GET
        {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let outcome = async {
            let response = request.send().await.map_err(|e| self.transport_error(e))?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = response
                .bytes()
                .await
                .map_err(|e| self.transport_error(e))?;
            Ok(Answer {
                status,
                content_type,
                body,
            })
        }
        .await;
        observe("api", started);
        let status = match &outcome {
            Ok(a) => a.status.as_u16().to_string(),
            Err(Error::Timeout { .. }) => "timeout".to_string(),
            Err(_) => "unreachable".to_string(),
        };
        metrics::counter!("switchboard_pbx_forwarded_total", "status" => status).increment(1);
        outcome
    }

    /// Builds the target URL and checks, after the URL parser's own normalisation, that it is
    /// still on the PBX's origin and under its base path. `endpoint::parse` already refuses
    /// every escape it knows; this catches any it doesn't.
    fn url_for(&self, endpoint: &Endpoint) -> Result<Url, Error> {
        let url = Url::parse(&format!("{}{}", self.base, endpoint.as_str())).map_err(|e| {
            Error::bad_request(
                Some("endpoint"),
                format!("endpoint is not a valid URL path: {e}"),
            )
        })?;
        let base_path = self.origin.path().trim_end_matches('/');
        let same_origin = url.scheme() == self.origin.scheme()
            && url.host_str() == self.origin.host_str()
            && url.port_or_known_default() == self.origin.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none();
        if !same_origin || !url.path().starts_with(&format!("{base_path}/")) {
            return Err(Error::bad_request(
                Some("endpoint"),
                "endpoint leaves the PBX base URL".to_string(),
            ));
        }
        Ok(url)
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout {
                secs: self.timeout.as_secs(),
                source: e,
            }
        } else {
            Error::Unreachable(e)
        }
    }
}

fn observe(call: &'static str, started: Instant) {
    metrics::histogram!("switchboard_pbx_upstream_duration_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
}

fn token_in(body: &[u8]) -> Option<Secret> {
    let json: Value = serde_json::from_slice(body).ok()?;
    ["/token", "/access_token", "/data/token"]
        .iter()
        .find_map(|p| json.pointer(p).and_then(Value::as_str))
        .filter(|t| !t.is_empty())
        .map(Secret::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_each_login_shape() {
        for body in [
            r#"{"token": "t1"}"#,
            r#"{"access_token": "t1", "token_type": "Bearer"}"#,
            r#"{"success": true, "data": {"token": "t1"}}"#,
        ] {
            assert_eq!(token_in(body.as_bytes()).unwrap().expose(), "t1", "{body}");
        }
        for body in [
            r#"{"token": ""}"#,
            r#"{"data": {}}"#,
            "<html>",
            r#"{"token": 5}"#,
        ] {
            assert!(token_in(body.as_bytes()).is_none(), "{body}");
        }
    }

    #[test]
    fn urls_stay_under_the_base() {
        let client = PbxClient::new(
            reqwest::Client::new(),
            "http://pbx.example:8080/root/",
            Duration::from_secs(1),
        );
        let endpoint = |s: &str| crate::endpoint::parse(s, &["/api/".to_string()]).unwrap();
        assert_eq!(
            client
                .url_for(&endpoint("/api/v1/users?x=1"))
                .unwrap()
                .as_str(),
            "http://pbx.example:8080/root/api/v1/users?x=1"
        );
        // Climbing out of the base path is caught even past `endpoint::parse`...
        for escape in ["/../admin", "/api/%2e%2e/%2e%2e/x"] {
            assert!(
                client.url_for(&Endpoint::unchecked(escape)).is_err(),
                "{escape}"
            );
        }
        // ...and so is changing the host, port or userinfo.
        let bare = PbxClient::new(
            reqwest::Client::new(),
            "http://pbx.example",
            Duration::from_secs(1),
        );
        for escape in ["@evil.example/api/", ".evil.example/api/", ":9999/api/"] {
            assert!(
                bare.url_for(&Endpoint::unchecked(escape)).is_err(),
                "{escape}"
            );
        }
    }
}
