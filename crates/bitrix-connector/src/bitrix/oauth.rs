//! The Bitrix24 OAuth grant (protocol §2): stored encrypted in the credential store, refreshed
//! only when it is about to be used and near expiry, or when the portal says `expired_token` —
//! never on a blind timer, which Bitrix warns can get an app blocked. Refresh tokens rotate, so
//! refreshes are single-flight in the process and each new grant replaces the old one in one
//! write; a refresh that loses a race with another process picks up that process's grant.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_core::Core;
use tokio::sync::Mutex;

use super::BitrixError;
use crate::setting_values::{required, required_secret};

/// Name of the encrypted blob holding the grant.
pub const GRANT_BLOB: &str = "bitrix.grant";

/// Refresh when fewer than this many seconds of access-token life remain.
const NEAR_EXPIRY_SECS: i64 = 60;

#[derive(Clone, Serialize, Deserialize)]
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub member_id: String,
    /// REST base, `https://<portal>/rest/`.
    pub client_endpoint: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub application_token: Option<String>,
    /// Unix seconds of the last refresh or install (the scheduler's once-per-lifetime check).
    #[serde(default)]
    pub issued_at: i64,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("member_id", &self.member_id)
            .field("client_endpoint", &self.client_endpoint)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

pub fn now_secs() -> i64 {
    switchboard_core::db::now_ms() / 1000
}

/// How long a grant read from the store is used without reading it again. Reading means a
/// query and a decryption for every call, a tenth of a message's way to Bitrix24; a grant
/// stored meanwhile by another process (its refresh, a new install) is seen this much later,
/// and a portal that refuses the old token meanwhile sends us back to the store at once.
const REUSE_FOR: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone)]
pub struct OAuth {
    core: Core,
    refreshing: Arc<Mutex<()>>,
    recent: Arc<std::sync::Mutex<Option<(Grant, std::time::Instant)>>>,
}

impl OAuth {
    pub fn new(core: &Core) -> Self {
        Self {
            core: core.clone(),
            refreshing: Arc::default(),
            recent: Arc::default(),
        }
    }

    /// The stored grant, read now.
    pub async fn load(&self) -> Result<Grant, BitrixError> {
        let grant = load(&self.core).await?.ok_or(BitrixError::NotInstalled)?;
        self.remember(&grant);
        Ok(grant)
    }

    fn remember(&self, grant: &Grant) {
        *self.recent.lock().expect("grant lock") = Some((grant.clone(), std::time::Instant::now()));
    }

    /// Makes the next call read the store: a grant was stored by another way than this value.
    pub fn forget(&self) {
        self.recent.lock().expect("grant lock").take();
    }

    /// The grant to use now, refreshed first if it is about to expire.
    pub async fn current(&self) -> Result<Grant, BitrixError> {
        let recent = self
            .recent
            .lock()
            .expect("grant lock")
            .as_ref()
            .filter(|(_, read)| read.elapsed() < REUSE_FOR)
            .map(|(g, _)| g.clone());
        let grant = match recent {
            Some(grant) => grant,
            None => self.load().await?,
        };
        if grant.expires_at - now_secs() > NEAR_EXPIRY_SECS {
            return Ok(grant);
        }
        self.refresh_replacing(&grant.access_token).await
    }

    /// Refreshes unless someone already replaced `stale_access` while we waited for the lock.
    /// One refresh at a time in this process, and on PostgreSQL across every process on the
    /// database: Bitrix rotates the refresh token on use, so the loser of two concurrent
    /// refreshes would be refused and, worse, might store a grant that is already dead.
    pub async fn refresh_replacing(&self, stale_access: &str) -> Result<Grant, BitrixError> {
        let _one_in_this_process = self.refreshing.lock().await;
        let one_across_processes = self
            .core
            .db
            .lock_across_processes(GRANT_BLOB)
            .await
            .map_err(|e| BitrixError::Storage(format!("taking the refresh lock: {e}")))?;
        let refreshed = async {
            let stored = self.load().await?;
            if stored.access_token != stale_access {
                return Ok(stored);
            }
            self.refresh(&stored).await
        }
        .await;
        one_across_processes.release().await;
        refreshed
    }

    async fn refresh(&self, stored: &Grant) -> Result<Grant, BitrixError> {
        let body = match redeem(&self.core, &stored.refresh_token).await {
            Ok(body) => body,
            Err(e) => {
                // Another process may have rotated the refresh token under us: its grant is stored.
                if e.code() == Some("invalid_grant")
                    && let Some(newer) = load(&self.core).await?
                    && newer.refresh_token != stored.refresh_token
                {
                    return Ok(newer);
                }
                return Err(e);
            }
        };
        let grant = grant_from_refresh(&body, stored)?;
        store(&self.core, &grant).await?;
        self.remember(&grant);
        tracing::info!(member_id = %grant.member_id, "Bitrix24 grant refreshed");
        Ok(grant)
    }
}

/// Trades `refresh_token` for a new pair at the OAuth server (protocol §2), with this app's
/// client id and secret: the answer's body, or the server's refusal as [`BitrixError::OAuth`].
/// The refresh token is used up either way.
pub async fn redeem(core: &Core, refresh_token: &str) -> Result<Value, BitrixError> {
    let oauth_url = required(core, crate::catalogue::BITRIX_OAUTH_URL).await?;
    let client_id = required(core, crate::catalogue::BITRIX_CLIENT_ID).await?;
    let secret = required_secret(core, crate::catalogue::BITRIX_CLIENT_SECRET).await?;
    let resp = core
        .http
        .get(format!("{}/oauth/token/", oauth_url.trim_end_matches('/')))
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.expose()),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .map_err(|e| BitrixError::Transport(e.without_url().to_string()))?;
    let http = resp.status().as_u16();
    let body: Option<Value> = resp.json().await.ok();
    let Some(body) = body else {
        return Err(BitrixError::Unavailable { http });
    };
    if let Some(code) = body.get("error").and_then(Value::as_str) {
        tracing::error!(code, "Bitrix24 token refresh refused");
        return Err(BitrixError::OAuth {
            code: code.to_string(),
            description: body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    if !(200..300).contains(&http) {
        return Err(BitrixError::Unavailable { http });
    }
    Ok(body)
}

/// A new install's grant from the OAuth server's answer to its refresh token: tokens, portal
/// (`member_id`) and REST endpoint all as that server states them, none from the install form.
pub fn grant_from_install(body: &Value) -> Result<Grant, BitrixError> {
    let missing = |what: &str| BitrixError::Storage(format!("refresh answer lacks {what}"));
    let unknown = Grant {
        access_token: String::new(),
        refresh_token: String::new(),
        expires_at: 0,
        member_id: text(body, "member_id").ok_or_else(|| missing("member_id"))?,
        client_endpoint: text(body, "client_endpoint").ok_or_else(|| missing("client_endpoint"))?,
        domain: None,
        application_token: None,
        issued_at: 0,
    };
    grant_from_refresh(body, &unknown)
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn grant_from_refresh(body: &Value, previous: &Grant) -> Result<Grant, BitrixError> {
    let missing = || BitrixError::Storage("refresh answer lacks access_token/refresh_token".into());
    let now = now_secs();
    let expires_in = text(body, "expires_in")
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(3600);
    Ok(Grant {
        access_token: text(body, "access_token").ok_or_else(missing)?,
        refresh_token: text(body, "refresh_token").ok_or_else(missing)?,
        expires_at: now + expires_in,
        member_id: text(body, "member_id").unwrap_or_else(|| previous.member_id.clone()),
        client_endpoint: text(body, "client_endpoint")
            .unwrap_or_else(|| previous.client_endpoint.clone()),
        domain: previous.domain.clone(),
        application_token: previous.application_token.clone(),
        issued_at: now,
    })
}

pub async fn load(core: &Core) -> Result<Option<Grant>, BitrixError> {
    let Some(raw) = core
        .settings
        .get_blob(GRANT_BLOB)
        .await
        .map_err(|e| BitrixError::Storage(e.to_string()))?
    else {
        return Ok(None);
    };
    serde_json::from_str(&raw)
        .map(Some)
        .map_err(|e| BitrixError::Storage(format!("stored grant does not parse: {e}")))
}

/// One encrypted write replaces the whole grant, so readers see the old pair or the new one,
/// never a new access token with a used refresh token.
pub async fn store(core: &Core, grant: &Grant) -> Result<(), BitrixError> {
    let raw = serde_json::to_string(grant).map_err(|e| BitrixError::Storage(e.to_string()))?;
    core.settings
        .put_blob(GRANT_BLOB, &raw)
        .await
        .map_err(|e| BitrixError::Storage(e.to_string()))
}
