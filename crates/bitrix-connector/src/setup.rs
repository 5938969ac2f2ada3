//! This bridge's rows on `/setup`: each says whether one step of the seed's setup is done and,
//! if not, the concrete fix. Live probes (Meta token, connector status) go through a short
//! cache so the page never hammers Meta or Bitrix, and a changed credential is probed at once.

use std::time::Duration;

use serde_json::json;
use switchboard_core::{
    Core,
    config::Setting,
    ops::{Check, ProbeCache},
};

use crate::{bitrix::oauth, commands, relay::Relay};

/// Refresh tokens live 180 days (protocol §2); warn well before a grant could lapse.
const GRANT_STALE_AFTER_SECS: i64 = 150 * 24 * 3600;

#[derive(Clone)]
pub struct SetupProbes {
    meta_token: ProbeCache,
    connector: ProbeCache,
    line: ProbeCache,
}

impl SetupProbes {
    pub fn new() -> Self {
        // Short for the Bitrix rows: an operator who just ran `register-connector` reloads
        // /setup and expects to see it; the token probe changes key when the token changes.
        let portal = Duration::from_secs(10);
        Self {
            meta_token: ProbeCache::new(Duration::from_secs(60)),
            connector: ProbeCache::new(portal),
            line: ProbeCache::new(portal),
        }
    }
}

impl Default for SetupProbes {
    fn default() -> Self {
        Self::new()
    }
}

async fn setting(core: &Core, setting: &Setting) -> Option<String> {
    core.settings.get(setting).await.ok().flatten()
}

pub async fn checks(relay: &Relay) -> Vec<Check> {
    let (core, probes) = (&relay.core, &relay.probes);
    let mut rows = Vec::new();

    let token = setting(core, crate::catalogue::META_ACCESS_TOKEN).await;
    let phone = setting(core, crate::catalogue::META_PHONE_NUMBER_ID).await;
    if let (Some(token), Some(phone)) = (&token, &phone) {
        let fingerprint = format!("{token}\n{phone}");
        rows.push(
            probes
                .meta_token
                .get_or_probe(fingerprint.as_bytes(), async {
                    match commands::check_token(relay).await {
                        Ok(_) => Check::new("Meta access token valid", true, ""),
                        Err(e) => Check::new("Meta access token valid", false, e.0),
                    }
                })
                .await,
        );
    }
    rows.push(Check::new(
        "Webhook verify token set",
        setting(core, crate::catalogue::META_VERIFY_TOKEN).await.is_some(),
        "Choose any string, save it as Webhook Verify Token here, and type the same in Meta's webhook settings (callback URL {public}/webhook/whatsapp).",
    ));

    let grant = oauth::load(core).await.ok().flatten();
    rows.push(Check::new(
        "Bitrix24 app installed",
        grant.is_some(),
        "Install the local application from inside Bitrix24 (install path {public}/bitrix/install); Bitrix posts the grant here by itself.",
    ));
    let Some(grant) = grant else {
        return fill_public(core, rows);
    };
    let age = oauth::now_secs() - grant.issued_at;
    rows.push(Check::new(
        "Bitrix24 grant fresh",
        grant.issued_at > 0 && age < GRANT_STALE_AFTER_SECS,
        "The grant was not refreshed for months and its refresh token expires after 180 days: re-install the app from Bitrix24.",
    ));
    rows.push(Check::new(
        "Application token known",
        setting(core, crate::catalogue::BITRIX_APPLICATION_TOKEN).await.is_some() || grant.application_token.is_some(),
        "Install the local app from inside Bitrix24 as a portal administrator (the verified install stores the token), or paste the app's application token into the credentials form.",
    ));

    let bitrix = &relay.bitrix;
    let connector = setting(core, crate::catalogue::BITRIX_CONNECTOR_ID)
        .await
        .unwrap_or_default();
    let line = setting(core, crate::catalogue::BITRIX_LINE_ID).await;
    let fingerprint = format!(
        "{}\n{connector}\n{}",
        grant.access_token,
        line.clone().unwrap_or_default()
    );
    rows.push(
        probes
            .connector
            .get_or_probe(fingerprint.as_bytes(), async {
                let registered = bitrix
                    .call("imconnector.list", json!({}))
                    .await
                    .map(|list| list.get(&connector).is_some());
                match registered {
                    Ok(ok) => Check::new(
                        "Connector registered",
                        ok,
                        "Run `switchboard bitrix register-connector`.",
                    ),
                    Err(e) => Check::new("Connector registered", false, e.explained()),
                }
            })
            .await,
    );
    match line {
        None => rows.push(Check::new(
            "Open Channel line activated",
            false,
            "Connect the connector to an Open Channel in Contact Center, save its LINE id here, then run `switchboard bitrix activate-connector`.",
        )),
        Some(line) => rows.push(
            probes
                .line
                .get_or_probe(fingerprint.as_bytes(), async {
                    let status = bitrix
                        .call("imconnector.status", json!({"CONNECTOR": connector, "LINE": line}))
                        .await;
                    match status {
                        Ok(s) => Check::new(
                            "Open Channel line activated",
                            crate::bitrix::truthy(s.get("STATUS")) && crate::bitrix::truthy(s.get("CONFIGURED")),
                            format!("Line {line} is not active for the connector (sends fail with NOT_ACTIVE_LINE): run `switchboard bitrix activate-connector`."),
                        ),
                        Err(e) => Check::new("Open Channel line activated", false, e.explained()),
                    }
                })
                .await,
        ),
    }
    fill_public(core, rows)
}

fn fill_public(core: &Core, rows: Vec<Check>) -> Vec<Check> {
    let public = core.config.public_url();
    rows.into_iter()
        .map(|c| Check::new(c.label, c.ok, c.fix.replace("{public}", public)))
        .collect()
}
