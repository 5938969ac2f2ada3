//! This bridge's rows on `/setup`: each says whether one step of the setup is done and,
//! if not, the concrete fix. Each channel has its own token and line rows, and each number
//! Meta posts for without a channel a ✗ row. Live probes (Meta token, connector status) go through a short
//! cache so the page never hammers Meta or Bitrix, and a changed credential is probed at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use switchboard_core::{
    Core,
    config::Setting,
    ops::{Check, ProbeCache},
};

use crate::{
    bitrix::oauth,
    channels::{self, Channel},
    commands,
    relay::Relay,
};

/// Refresh tokens live 180 days (protocol §2); warn well before a grant could lapse.
const GRANT_STALE_AFTER_SECS: i64 = 150 * 24 * 3600;

#[derive(Clone)]
pub struct SetupProbes {
    connector: ProbeCache,
    /// One token probe and one line probe per channel, by its number.
    per_channel: Arc<Mutex<HashMap<String, (ProbeCache, ProbeCache)>>>,
}

/// Short for the Bitrix rows: an operator who just ran `register-connector` reloads /setup
/// and expects to see it; the token probe changes key when the token changes.
const PORTAL_PROBE_FOR: Duration = Duration::from_secs(10);
const META_PROBE_FOR: Duration = Duration::from_secs(60);

/// Numbers without a channel listed on `/setup`, newest first; the rest are in the events log.
const UNKNOWN_NUMBERS_SHOWN: i64 = 10;

impl SetupProbes {
    pub fn new() -> Self {
        Self {
            connector: ProbeCache::new(PORTAL_PROBE_FOR),
            per_channel: Arc::default(),
        }
    }

    /// The (token, line) probes of the channel of `phone_number_id`.
    fn of(&self, phone_number_id: &str) -> (ProbeCache, ProbeCache) {
        self.per_channel
            .lock()
            .expect("probe map")
            .entry(phone_number_id.to_string())
            .or_insert_with(|| {
                (
                    ProbeCache::new(META_PROBE_FOR),
                    ProbeCache::new(PORTAL_PROBE_FOR),
                )
            })
            .clone()
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

    let listed = channels::listed(relay);
    let served = channels::all(relay).await.unwrap_or_default();
    // One number keeps the rows' names from before channels.
    let named = |row: &str, c: &Channel| {
        if listed {
            format!("{row}: {}", c.label())
        } else {
            row.to_string()
        }
    };
    let token = setting(core, crate::catalogue::META_ACCESS_TOKEN).await;
    if let Some(token) = &token {
        for c in &served {
            let fingerprint = format!("{token}\n{}", c.phone_number_id);
            let label = named("Meta access token valid", c);
            rows.push(
                probes
                    .of(&c.phone_number_id)
                    .0
                    .get_or_probe(fingerprint.as_bytes(), async {
                        match commands::check_number(relay, &c.phone_number_id).await {
                            Ok(_) => Check::new(label.clone(), true, ""),
                            Err(e) => Check::new(label.clone(), false, e.0),
                        }
                    })
                    .await,
            );
        }
    }
    for (number, _) in channels::unknown_numbers(&core.db, UNKNOWN_NUMBERS_SHOWN)
        .await
        .unwrap_or_default()
    {
        if served.iter().any(|c| c.phone_number_id == number) {
            continue;
        }
        let shown: String = if number.is_empty() {
            "(none given)".into()
        } else {
            number.chars().take(40).collect()
        };
        rows.push(Check::new(
            format!("WhatsApp number {shown} has a channel"),
            false,
            format!("Meta posts messages for this number (phone_number_id {shown}), which are answered but not relayed. Add it to the config file as [[bitrix.channels]] with phone_number_id = \"{shown}\" and the line_id of its Open Channel, then restart; or remove the number from the Meta app's webhook."),
        ));
    }
    rows.push(Check::new(
        "Webhook verify token set",
        setting(core, crate::catalogue::META_VERIFY_TOKEN).await.is_some(),
        "Choose any string, save it as Webhook Verify Token here, and type the same in Meta's webhook settings (callback URL {public}/webhook/whatsapp).",
    ));

    // What Bitrix24 reported by event (a line deleted, the connector disconnected).
    for (name, reason) in crate::store::alerts(&core.db).await.unwrap_or_default() {
        let line = name.strip_prefix("line:").unwrap_or(&name);
        rows.push(Check::new(
            format!("Open Channel line {line} still connected"),
            false,
            reason,
        ));
    }

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
    let fingerprint = format!("{}\n{connector}", grant.access_token);
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
    if served.is_empty() {
        rows.push(Check::new(
            "Open Channel line activated",
            false,
            "Connect the connector to an Open Channel in Contact Center, save its LINE id here, then run `switchboard bitrix activate-connector`.",
        ));
    }
    for c in &served {
        let line = &c.line;
        let fingerprint = format!("{}\n{connector}\n{line}", grant.access_token);
        let label = named("Open Channel line activated", c);
        rows.push(
            probes
                .of(&c.phone_number_id)
                .1
                .get_or_probe(fingerprint.as_bytes(), async {
                    let status = bitrix
                        .call("imconnector.status", json!({"CONNECTOR": connector, "LINE": line}))
                        .await;
                    match status {
                        Ok(s) => Check::new(
                            label.clone(),
                            crate::bitrix::truthy(s.get("STATUS")) && crate::bitrix::truthy(s.get("CONFIGURED")),
                            format!("Line {line} is not active for the connector (sends fail with NOT_ACTIVE_LINE): run `switchboard bitrix activate-connector`."),
                        ),
                        Err(e) => Check::new(label.clone(), false, e.explained()),
                    }
                })
                .await,
        );
    }
    fill_public(core, rows)
}

fn fill_public(core: &Core, rows: Vec<Check>) -> Vec<Check> {
    let public = core.config.public_url();
    rows.into_iter()
        .map(|c| Check::new(c.label, c.ok, c.fix.replace("{public}", public)))
        .collect()
}
