//! Typed client for the Graph API calls this bridge makes (protocol §3, §4, §7). The base URL
//! and version come from settings, so tests aim it at the sandbox. What Meta posts to the
//! webhook is read in `payload.rs` and authenticated in `signature.rs`.

pub mod payload;
pub(crate) mod signature;

use serde_json::Value;
use switchboard_core::{Core, JobError, Secret};

use crate::{
    error::fix,
    media::Media,
    setting_values::{optional, required, required_secret},
};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("Meta Graph API unreachable: {0}")]
    Transport(String),
    #[error("Meta error {code}: {message}")]
    Api {
        code: i64,
        http: u16,
        message: String,
    },
    #[error("Meta answered HTTP {http} without an error body")]
    Http { http: u16 },
    #[error("Meta answered something unexpected: {0}")]
    Unexpected(String),
}

/// Codes Meta documents as transient (protocol §5.2 retry policy).
const RETRYABLE: &[i64] = &[1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057];

impl MetaError {
    pub fn code(&self) -> Option<i64> {
        match self {
            MetaError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The seed's fix for codes an operator can act on.
    pub fn fix(&self) -> Option<&'static str> {
        match self.code()? {
            0 | 190 => Some(fix::META_190),
            131030 => Some(fix::META_131030),
            131047 => Some(fix::META_131047),
            132000 => Some(fix::META_132000),
            132001 => Some(fix::META_132001),
            132012 => Some(fix::META_132012),
            132015 => Some(fix::META_132015),
            132016 => Some(fix::META_132016),
            _ => None,
        }
    }

    /// The error with its fix, for logs, job errors and the CLI.
    pub fn explained(&self) -> String {
        match self.fix() {
            Some(f) => format!("{self}. {f}"),
            None => self.to_string(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            MetaError::Transport(_) => true,
            MetaError::Http { http } => *http >= 500 || *http == 429,
            MetaError::Api { code, http, .. } => {
                RETRYABLE.contains(code) || (*http >= 500 && !matches!(code, 3 | 131031))
            }
            MetaError::Unexpected(_) => false,
        }
    }

    pub fn into_job_error(self) -> JobError {
        if self.is_retryable() {
            JobError::Retry(self.explained())
        } else {
            JobError::Permanent(self.explained())
        }
    }
}

/// What Meta's last answer says of the access token, on `/metrics`: any success proves it
/// (`switchboard_meta_token_valid` 1); code 190 (expired, revoked, wrong) refutes it (0) and
/// counts in `switchboard_meta_token_rejections_total`. Other errors say nothing about it.
fn token_seen<T>(result: &Result<T, MetaError>) {
    match result {
        Ok(_) => metrics::gauge!("switchboard_meta_token_valid").set(1.0),
        Err(MetaError::Api { code: 190, .. }) => {
            metrics::gauge!("switchboard_meta_token_valid").set(0.0);
            metrics::counter!("switchboard_meta_token_rejections_total").increment(1);
        }
        Err(_) => {}
    }
}

/// The Meta app's id and secret, for the app-level calls (webhook subscriptions).
pub struct AppCredentials {
    pub id: String,
    secret: Secret,
}

impl AppCredentials {
    pub async fn from_settings(core: &Core) -> Result<Self, crate::Error> {
        Ok(Self {
            id: required(core, crate::catalogue::META_APP_ID).await?,
            secret: required_secret(core, crate::catalogue::META_APP_SECRET).await?,
        })
    }

    fn token(&self) -> Secret {
        Secret::new(format!("{}|{}", self.id, self.secret.expose()))
    }
}

#[derive(Clone)]
pub struct MetaClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    phone_number_id: Option<String>,
}

impl MetaClient {
    pub async fn from_settings(core: &Core) -> Result<Self, crate::Error> {
        let url = required(core, crate::catalogue::META_GRAPH_URL).await?;
        let version = required(core, crate::catalogue::META_GRAPH_VERSION).await?;
        Ok(Self {
            http: core.http.clone(),
            base: format!(
                "{}/{}",
                url.trim_end_matches('/'),
                version.trim_matches('/')
            ),
            token: required_secret(core, crate::catalogue::META_ACCESS_TOKEN).await?,
            phone_number_id: optional(core, crate::catalogue::META_PHONE_NUMBER_ID).await?,
        })
    }

    /// The client of one channel: sends and probes go to `phone_number_id`.
    pub async fn for_number(core: &Core, phone_number_id: &str) -> Result<Self, crate::Error> {
        let mut client = Self::from_settings(core).await?;
        client.phone_number_id = Some(phone_number_id.to_string());
        Ok(client)
    }

    fn phone_number_id(&self) -> Result<&str, MetaError> {
        self.phone_number_id.as_deref().ok_or_else(|| {
            MetaError::Unexpected("SWITCHBOARD_META_PHONE_NUMBER_ID is not configured".into())
        })
    }

    async fn read(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Value, MetaError> {
        let result = Self::read_answer(resp).await;
        token_seen(&result);
        result
    }

    async fn read_answer(
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Value, MetaError> {
        let resp = resp.map_err(|e| MetaError::Transport(e.without_url().to_string()))?;
        let http = resp.status().as_u16();
        let body: Option<Value> = resp.json().await.ok();
        if (200..300).contains(&http) {
            return body.ok_or_else(|| MetaError::Unexpected("a non-JSON success body".into()));
        }
        match body.as_ref().and_then(|b| b.get("error")) {
            Some(e) => Err(MetaError::Api {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                http,
                message: e
                    .pointer("/error_data/details")
                    .or_else(|| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
                    .to_string(),
            }),
            None => Err(MetaError::Http { http }),
        }
    }

    /// Fetches an inbound media object: the media node gives a short-lived URL, which is then
    /// downloaded with the same bearer token (protocol §4: both calls need it).
    pub async fn download_media(&self, media_id: &str) -> Result<(Vec<u8>, String), MetaError> {
        let node = Self::read(
            self.http
                .get(format!("{}/{media_id}", self.base))
                .bearer_auth(self.token.expose())
                .send()
                .await,
        )
        .await?;
        let url = node
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| MetaError::Unexpected("media node without url".into()))?;
        let mime = node
            .get("mime_type")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_string();
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| MetaError::Transport(e.without_url().to_string()))?;
        let http = resp.status().as_u16();
        if !resp.status().is_success() {
            let refused = http == 401;
            if refused {
                token_seen::<()>(&Err(MetaError::Api {
                    code: 190,
                    http,
                    message: String::new(),
                }));
            }
            return Err(if refused {
                MetaError::Api {
                    code: 190,
                    http,
                    message: "media download refused the access token".into(),
                }
            } else {
                MetaError::Http { http }
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| MetaError::Transport(e.without_url().to_string()))?;
        Ok((bytes.to_vec(), mime))
    }

    /// The phone-number node (protocol §7): proves the token and the id work together.
    pub async fn phone_number(&self) -> Result<Value, MetaError> {
        let id = self.phone_number_id()?;
        Self::read(
            self.http
                .get(format!("{}/{id}", self.base))
                .query(&[(
                    "fields",
                    "display_phone_number,verified_name,quality_rating",
                )])
                .bearer_auth(self.token.expose())
                .send()
                .await,
        )
        .await
    }

    /// One page of the account's templates (`GET /{waba-id}/message_templates`), from the
    /// cursor `after` of the page before. The next page is asked for by cursor on this
    /// client's own base, never by following the `paging.next` URL an answer carries.
    pub async fn message_templates(
        &self,
        waba_id: &str,
        after: Option<&str>,
    ) -> Result<Value, MetaError> {
        let mut query = vec![
            (
                "fields",
                "name,language,status,category,components,parameter_format",
            ),
            ("limit", "100"),
        ];
        if let Some(a) = after {
            query.push(("after", a));
        }
        Self::read(
            self.http
                .get(format!("{}/{waba_id}/message_templates", self.base))
                .query(&query)
                .bearer_auth(self.token.expose())
                .send()
                .await,
        )
        .await
    }

    /// `POST /{waba-id}/subscribed_apps`: the token's app receives the WABA's webhooks. Without
    /// it Meta posts nothing, however the webhook is set up (protocol §0).
    pub async fn subscribe_app(&self, waba_id: &str) -> Result<(), MetaError> {
        let answer = Self::read(
            self.http
                .post(format!("{}/{waba_id}/subscribed_apps", self.base))
                .bearer_auth(self.token.expose())
                .send()
                .await,
        )
        .await?;
        succeeded(&answer, "subscribed_apps")
    }

    /// The ids of the apps subscribed to the WABA.
    pub async fn subscribed_apps(&self, waba_id: &str) -> Result<Vec<String>, MetaError> {
        let answer = Self::read(
            self.http
                .get(format!("{}/{waba_id}/subscribed_apps", self.base))
                .bearer_auth(self.token.expose())
                .send()
                .await,
        )
        .await?;
        Ok(answer
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                a.pointer("/whatsapp_business_api_data/id")
                    .or_else(|| a.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect())
    }

    /// `POST /{app-id}/subscriptions` for `whatsapp_business_account` / `messages`: what the
    /// App Dashboard's webhook form does. Meta calls `callback_url` with the verify handshake
    /// before it answers, so this only succeeds once this server answers there. App-level
    /// calls take the app access token `{app-id}|{app-secret}`, not the System User token.
    pub async fn register_webhook(
        &self,
        app: &AppCredentials,
        callback_url: &str,
        verify_token: &str,
    ) -> Result<(), MetaError> {
        let answer = Self::read_answer(
            self.http
                .post(format!("{}/{}/subscriptions", self.base, app.id))
                .bearer_auth(app.token().expose())
                .form(&[
                    ("object", "whatsapp_business_account"),
                    ("callback_url", callback_url),
                    ("verify_token", verify_token),
                    ("fields", "messages"),
                ])
                .send()
                .await,
        )
        .await?;
        succeeded(&answer, "subscriptions")
    }

    /// The app's webhook for `whatsapp_business_account`, if any: its callback URL and fields.
    pub async fn webhook_subscription(
        &self,
        app: &AppCredentials,
    ) -> Result<Option<(String, Vec<String>)>, MetaError> {
        let answer = Self::read_answer(
            self.http
                .get(format!("{}/{}/subscriptions", self.base, app.id))
                .bearer_auth(app.token().expose())
                .send()
                .await,
        )
        .await?;
        Ok(answer
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|s| {
                s.get("object").and_then(Value::as_str) == Some("whatsapp_business_account")
                    && s.get("active").and_then(Value::as_bool) != Some(false)
            })
            .map(|s| {
                let url = s
                    .get("callback_url")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let fields = s
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.get("name").or(Some(f)).and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                (url, fields)
            }))
    }

    /// Marks a customer's message (and the ones before it) read (protocol §3).
    pub async fn mark_read(&self, wamid: &str) -> Result<(), MetaError> {
        let id = self.phone_number_id()?;
        Self::read(
            self.http
                .post(format!("{}/{id}/messages", self.base))
                .bearer_auth(self.token.expose())
                .json(&serde_json::json!({
                    "messaging_product": "whatsapp", "status": "read", "message_id": wamid,
                }))
                .send()
                .await,
        )
        .await
        .map(drop)
    }

    /// `POST /{phone-number-id}/messages`; returns the new wamid.
    pub async fn send(&self, body: &Value) -> Result<String, MetaError> {
        let id = self.phone_number_id()?;
        let answer = Self::read(
            self.http
                .post(format!("{}/{id}/messages", self.base))
                .bearer_auth(self.token.expose())
                .json(body)
                .send()
                .await,
        )
        .await?;
        answer
            .pointer("/messages/0/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| MetaError::Unexpected("send answer without messages[0].id".into()))
    }
}

/// A re-hostable copy of an inbound media object.
pub fn media_copy(bytes: Vec<u8>, mime: String, filename: String) -> Media {
    Media {
        mime,
        filename,
        bytes,
    }
}

/// Graph's answer to an edge that only says whether it worked: `{"success": true}`.
fn succeeded(answer: &Value, edge: &str) -> Result<(), MetaError> {
    if answer.get("success").and_then(Value::as_bool) == Some(true) {
        Ok(())
    } else {
        Err(MetaError::Unexpected(format!(
            "{edge} did not answer success"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_follows_the_protocol_table() {
        let api = |code, http| MetaError::Api {
            code,
            http,
            message: String::new(),
        };
        assert!(api(130429, 400).is_retryable());
        assert!(api(131000, 500).is_retryable());
        assert!(!api(190, 401).is_retryable());
        assert!(!api(131047, 400).is_retryable());
        assert!(!api(100, 400).is_retryable());
        assert!(api(190, 401).explained().contains("check-token"));
        assert!(MetaError::Transport("x".into()).is_retryable());
    }
}
