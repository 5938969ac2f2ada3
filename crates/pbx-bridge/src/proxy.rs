//! One bridge call end to end: token from the cache (or one shared login), the forwarded call,
//! and on a PBX 401 one refresh and one retry (seed: "If PBX returns 401, refreshes token and
//! retries once"). Writes the seed's log lines.

use std::{net::IpAddr, time::Duration};

use axum::http::StatusCode;
use switchboard_core::Secret;
use tracing::{info, warn};

use crate::{
    client::{Answer, PbxClient},
    error::Error,
    jwt,
    logline::{quote, short_org},
    request::ProxyRequest,
    throttle::LoginThrottle,
    token_cache::{CacheKey, Obtained, Source, TokenCache},
};

pub struct Proxy {
    pub client: PbxClient,
    pub tokens: TokenCache,
    pub throttle: LoginThrottle,
    /// Path prefixes callers may reach (`pbx.allowed_prefixes`).
    pub allowed_prefixes: Vec<String>,
}

impl Proxy {
    /// `client`: the caller's address, for the login throttle (`None` when unknown).
    pub async fn call(&self, req: &ProxyRequest, client: Option<IpAddr>) -> Result<Answer, Error> {
        let org = short_org(&req.api_key);
        let key = CacheKey::new(&req.api_key, &req.api_secret);
        info!(
            org = %org, method = %req.method, endpoint = %req.endpoint,
            "[BRIDGE] ➜ {} {} | org: {org} | body: {}",
            req.method, req.endpoint,
            req.body.as_deref().map_or("-".into(), |b| quote(b, &[&req.api_secret])),
        );
        let result = self.call_with_refresh(req, &key, &org, client).await;
        self.log_outcome(req, &org, &result);
        result.map(|(answer, _jwt)| answer)
    }

    async fn call_with_refresh(
        &self,
        req: &ProxyRequest,
        key: &CacheKey,
        org: &str,
        client: Option<IpAddr>,
    ) -> Result<(Answer, Secret), Error> {
        let jwt = self.token(req, key, org, client).await?;
        let answer = self.forward(req, &jwt).await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok((answer, jwt));
        }
        warn!(org = %org, "[BRIDGE] 401 from PBX — refreshing token | org: {org}");
        metrics::counter!("switchboard_pbx_token_refreshes_total").increment(1);
        self.tokens.invalidate(key, &jwt);
        let jwt = self.token(req, key, org, client).await?;
        // A second 401 goes back to the caller as the PBX sent it (SPEC §2).
        let answer = self.forward(req, &jwt).await?;
        Ok((answer, jwt))
    }

    async fn token(
        &self,
        req: &ProxyRequest,
        key: &CacheKey,
        org: &str,
        client: Option<IpAddr>,
    ) -> Result<Secret, Error> {
        let Obtained { jwt, source } = self
            .tokens
            .get(key, || self.throttled_login(req, key, client))
            .await
            .inspect_err(|e| {
                warn!(org = %org, error = %e, "[BRIDGE] ✗ PBX login failed | org: {org} | {e}");
            })?;
        match source {
            Source::Cache => {
                metrics::counter!("switchboard_pbx_token_cache_hits_total").increment(1);
            }
            Source::Login { life } => {
                let name = jwt::claims(jwt.expose())
                    .org_name
                    .unwrap_or_else(|| org.to_string());
                info!(
                    org = %org, valid_for_secs = life.as_secs(),
                    "JWT token cached for org: {name} | valid for {}",
                    human(life),
                );
            }
        }
        Ok(jwt)
    }

    /// A login, unless the client or the `api_key` has had too many refused (see
    /// `throttle.rs`). Credentials that have logged in before skip the throttle: others'
    /// guesses at the same `api_key` must not lock a working flow out.
    async fn throttled_login(
        &self,
        req: &ProxyRequest,
        key: &CacheKey,
        client: Option<IpAddr>,
    ) -> Result<Secret, Error> {
        let attempt = if self.tokens.proven(key) {
            None
        } else {
            let attempt = self
                .throttle
                .attempt(client, &req.api_key)
                .map_err(|retry_after| {
                    metrics::counter!("switchboard_pbx_logins_throttled_total").increment(1);
                    Error::Throttled { retry_after }
                })?;
            Some(attempt)
        };
        let result = self.client.login(&req.api_key, &req.api_secret).await;
        if let Some(attempt) = attempt
            && !matches!(result, Err(Error::LoginRefused { .. }))
        {
            self.throttle.refund(attempt);
        }
        result
    }

    async fn forward(&self, req: &ProxyRequest, jwt: &Secret) -> Result<Answer, Error> {
        self.client
            .forward(&req.method, &req.endpoint, jwt, req.body.as_deref())
            .await
    }

    fn log_outcome(&self, req: &ProxyRequest, org: &str, result: &Result<(Answer, Secret), Error>) {
        let (method, endpoint) = (&req.method, &req.endpoint);
        match result {
            Ok((a, jwt)) if a.status.is_success() => info!(
                org = %org, status = a.status.as_u16(),
                "[BRIDGE] ✓ {} | {method} {endpoint} | org: {org} | response: {}",
                a.status.as_u16(), quote(&a.body, &[&req.api_secret, jwt]),
            ),
            Ok((a, jwt)) => warn!(
                org = %org, status = a.status.as_u16(),
                "[BRIDGE] ✗ {} | {method} {endpoint} | org: {org} | response: {}",
                a.status.as_u16(), quote(&a.body, &[&req.api_secret, jwt]),
            ),
            Err(e) => warn!(
                org = %org, status = e.status().as_u16(),
                "[BRIDGE] ✗ {} | {method} {endpoint} | org: {org} | {e}",
                e.status().as_u16(),
            ),
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}
