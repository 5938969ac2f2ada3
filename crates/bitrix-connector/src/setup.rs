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
    ops::{Action, Check, ProbeCache},
};

use crate::{
    bitrix::oauth,
    channels::{self, Channel},
    commands,
    relay::Relay,
};

/// Refresh tokens live 180 days (protocol §2); warn well before a grant could lapse.
const GRANT_STALE_AFTER_SECS: i64 = 150 * 24 * 3600;

/// When the portal's Open Channels were listed, and the list or why it could not be read.
type ListedLines = (
    std::time::Instant,
    Result<Vec<commands::OpenChannel>, String>,
);

#[derive(Clone)]
pub struct SetupProbes {
    connector: ProbeCache,
    /// The portal's Open Channels, offered when no line is chosen yet.
    lines: Arc<tokio::sync::Mutex<Option<ListedLines>>>,
    waba: ProbeCache,
    webhook: ProbeCache,
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
            lines: Arc::default(),
            waba: ProbeCache::new(META_PROBE_FOR),
            webhook: ProbeCache::new(META_PROBE_FOR),
            per_channel: Arc::default(),
        }
    }

    /// Forgets every probe result: after a `/setup` button the page shows the new state.
    pub async fn clear(&self) {
        self.connector.clear().await;
        self.waba.clear().await;
        self.webhook.clear().await;
        *self.lines.lock().await = None;
        let all: Vec<(ProbeCache, ProbeCache)> = self
            .per_channel
            .lock()
            .expect("probe map")
            .values()
            .cloned()
            .collect();
        for (token, line) in all {
            token.clear().await;
            line.clear().await;
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

/// The `/setup` buttons this bridge offers (see [`run_action`]).
pub const REGISTER_CONNECTOR: &str = "register-connector";
pub const USE_LINE: &str = "use-line";
pub const CHECK_TOKEN: &str = "check-token";
pub const SUBSCRIBE_WABA: &str = "subscribe-waba";
pub const REGISTER_WEBHOOK: &str = "register-webhook";

/// Runs the `/setup` button `name` (core has checked the admin session and CSRF token), then
/// forgets the probe results so the checklist shows what changed. `None` for an unknown name.
pub async fn run_action(
    relay: &Relay,
    name: &str,
    choice: Option<String>,
) -> Option<Result<String, String>> {
    let result = match name {
        REGISTER_CONNECTOR => commands::register_connector(relay, false).await,
        USE_LINE => match choice {
            Some(line) => commands::use_line(relay, &line).await,
            None => Err(commands::CommandFailed(
                "pick an Open Channel from the list first".into(),
            )),
        },
        CHECK_TOKEN => commands::check_token(relay).await,
        SUBSCRIBE_WABA => commands::subscribe_waba(relay).await,
        REGISTER_WEBHOOK => commands::register_webhook(relay).await,
        _ => return None,
    };
    relay.probes.clear().await;
    Some(result.map_err(|e| e.0))
}

/// The rows in the order the steps can be done: the Bitrix24 app and its connector and line,
/// then Meta's token, WABA subscription and webhook. A row the product can fix itself carries
/// a button.
pub async fn checks(relay: &Relay) -> Vec<Check> {
    let core = &relay.core;
    let mut rows = bitrix_checks(relay).await;
    rows.extend(meta_checks(relay).await);

    // What Bitrix24 reported by event (a line deleted, the connector disconnected).
    for (name, reason) in crate::store::alerts(&core.db).await.unwrap_or_default() {
        let line = name.strip_prefix("line:").unwrap_or(&name);
        let mut row = Check::new(
            format!("Open Channel line {line} still connected"),
            false,
            reason,
        );
        // A disconnected connector is connected again by activating it on the line.
        if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) {
            row = row.with_action(
                Action::new(USE_LINE, "Activate the connector on this line again")
                    .with_choices(vec![(line.to_string(), format!("line {line}"))]),
            );
        }
        rows.push(row);
    }
    fill_public(core, rows)
}

async fn meta_checks(relay: &Relay) -> Vec<Check> {
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
    let number = setting(core, crate::catalogue::META_PHONE_NUMBER_ID).await;
    // Before a line is chosen there is no channel yet, but the token and number can be probed.
    if let (Some(token), Some(number), true) = (&token, &number, served.is_empty()) {
        let fingerprint = format!("{token}\n{number}");
        let label = "Meta access token valid";
        rows.push(
            probes
                .of(number)
                .0
                .get_or_probe(fingerprint.as_bytes(), async {
                    match commands::check_number(relay, number).await {
                        Ok(_) => Check::new(label, true, ""),
                        Err(e) => Check::new(label, false, e.0)
                            .with_action(Action::new(CHECK_TOKEN, "Check the token again")),
                    }
                })
                .await,
        );
    }
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
                            Err(e) => Check::new(label.clone(), false, e.0)
                                .with_action(Action::new(CHECK_TOKEN, "Check the token again")),
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

    let waba = setting(core, crate::catalogue::META_WABA_ID).await;
    let subscribe = Action::new(SUBSCRIBE_WABA, "Subscribe the app to the WABA");
    const WABA_ROW: &str = "App subscribed to the WhatsApp Business Account";
    rows.push(match (&token, &waba) {
        (None, _) => Check::new(
            WABA_ROW,
            false,
            "Save the Meta access token in /admin/credentials first.",
        ),
        (Some(_), None) => Check::new(
            WABA_ROW,
            false,
            "Save the WhatsApp Business Account ID in /admin/credentials (WhatsApp Manager → Account tools → Phone numbers shows it above the list; also in the App Dashboard → WhatsApp → API Setup).",
        ),
        (Some(token), Some(waba)) => {
            let app_id = setting(core, crate::catalogue::META_APP_ID).await;
            let fingerprint = format!("{token}\n{waba}\n{}", app_id.as_deref().unwrap_or(""));
            probes
                .waba
                .get_or_probe(fingerprint.as_bytes(), async {
                    let apps = match crate::meta::MetaClient::from_settings(core).await {
                        Ok(m) => m.subscribed_apps(waba).await.map_err(|e| e.explained()),
                        Err(e) => Err(e.to_string()),
                    };
                    match apps {
                        Ok(apps) => {
                            let ours = match &app_id {
                                Some(id) => apps.iter().any(|a| a == id),
                                None => !apps.is_empty(),
                            };
                            Check::new(
                                WABA_ROW,
                                ours,
                                "Meta posts no webhook until the app is subscribed to the WhatsApp Business Account (POST /{waba-id}/subscribed_apps): press the button.",
                            )
                        }
                        Err(e) => Check::new(WABA_ROW, false, e),
                    }
                    .with_action(subscribe.clone())
                })
                .await
        }
    });

    let callback = "{public}/webhook/whatsapp";
    let verify = setting(core, crate::catalogue::META_VERIFY_TOKEN).await;
    let register = Action::new(REGISTER_WEBHOOK, "Register the webhook with Meta");
    rows.push(
        Check::new(
            "Webhook verify token set",
            verify.is_some(),
            "Press the button: it generates a verify token and registers the webhook with it. (Or choose any string, save it as Webhook Verify Token here, and type the same in the App Dashboard's webhook settings.)",
        )
        .with_action(register.clone()),
    );
    const WEBHOOK_ROW: &str = "Webhook registered with Meta (field messages)";
    let app_id = setting(core, crate::catalogue::META_APP_ID).await;
    let secret = setting(core, crate::catalogue::META_APP_SECRET).await;
    let webhook = match (&app_id, &secret) {
        (Some(app_id), Some(secret)) => {
            let public = core.config.public_url();
            let fingerprint = format!("{app_id}\n{secret}\n{public}\n{}", verify.is_some());
            probes
                .webhook
                .get_or_probe(fingerprint.as_bytes(), async {
                    let ours = crate::setting_values::public_link(core, crate::routes::META_WEBHOOK);
                    let found = match (
                        crate::meta::MetaClient::from_settings(core).await,
                        crate::meta::AppCredentials::from_settings(core).await,
                    ) {
                        (Ok(m), Ok(app)) => m.webhook_subscription(&app).await.map_err(|e| e.explained()),
                        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
                    };
                    match found {
                        Ok(Some((url, fields))) if url == ours && fields.iter().any(|f| f == "messages") => {
                            Check::new(WEBHOOK_ROW, true, "")
                        }
                        Ok(Some((url, _))) if url != ours => Check::new(
                            WEBHOOK_ROW,
                            false,
                            format!("The Meta app posts to {} instead of this server: press the button to register this server's callback URL.", url.chars().take(200).collect::<String>()),
                        ),
                        Ok(_) => Check::new(
                            WEBHOOK_ROW,
                            false,
                            "The Meta app has no webhook for WhatsApp messages yet: press the button (Meta checks the callback URL with the verify token before saving it).",
                        ),
                        Err(e) => Check::new(WEBHOOK_ROW, false, e),
                    }
                })
                .await
        }
        _ => Check::new(
            WEBHOOK_ROW,
            false,
            "Save the Meta App ID and App Secret in /admin/credentials (App Dashboard → App settings → Basic).",
        ),
    };
    rows.push(
        webhook
            .with_copy("Callback URL", callback)
            .with_action(register),
    );
    rows
}

async fn bitrix_checks(relay: &Relay) -> Vec<Check> {
    let (core, probes) = (&relay.core, &relay.probes);
    let mut rows = Vec::new();
    let listed = channels::listed(relay);
    let served = channels::all(relay).await.unwrap_or_default();
    let named = |row: &str, c: &Channel| {
        if listed {
            format!("{row}: {}", c.label())
        } else {
            row.to_string()
        }
    };

    let grant = oauth::load(core).await.ok().flatten();
    rows.push(Check::new(
        "Bitrix24 app installed",
        grant.is_some(),
        "In Bitrix24, signed in as an administrator: Developer resources → Other → Local application, type Server; handler path {public}/bitrix/events (the handler URL below), initial installation path {public}/bitrix/install (the install URL below); scopes imopenlines, imconnector, crm, im; save, paste its client id and secret in /admin/credentials, then open the app once: Bitrix posts the grant here by itself and the connector is registered with it.",
    ).with_copy("Install URL", "{public}/bitrix/install")
    .with_copy("Handler URL", "{public}/bitrix/events"));
    let Some(grant) = grant else {
        return rows;
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
    let register = Action::new(REGISTER_CONNECTOR, "Register the connector");
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
                        "Press the button (or run `switchboard bitrix register-connector`).",
                    ),
                    Err(e) => Check::new("Connector registered", false, e.explained()),
                }
                .with_action(register.clone())
            })
            .await,
    );
    if served.is_empty() {
        let mut lines = probes.lines.lock().await;
        let fresh = lines
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < PORTAL_PROBE_FOR);
        if !fresh {
            let listed = commands::open_channels(relay).await.map_err(|e| e.0);
            *lines = Some((std::time::Instant::now(), listed));
        }
        let (fix, mut choices) = match lines.as_ref().map(|(_, l)| l) {
            Some(Ok(found)) => (
                "Pick the Open Channel that WhatsApp conversations go to (or create one) and press the button: the connector is activated on it.".to_string(),
                found
                    .iter()
                    .map(|l| (l.id.clone(), format!("{} (line {})", if l.name.is_empty() { "Open Channel" } else { &l.name }, l.id)))
                    .collect::<Vec<_>>(),
            ),
            Some(Err(e)) => (format!("The portal's Open Channels could not be listed: {e}"), Vec::new()),
            None => (String::new(), Vec::new()),
        };
        choices.push((
            commands::NEW_LINE.to_string(),
            format!("Create a new Open Channel \"{}\"", commands::NEW_LINE_NAME),
        ));
        rows.push(
            Check::new("Open Channel line activated", false, fix)
                .with_action(Action::new(USE_LINE, "Use this line").with_choices(choices)),
        );
    }
    for c in &served {
        let line = &c.line;
        let fingerprint = format!("{}\n{connector}\n{line}", grant.access_token);
        let label = named("Open Channel line activated", c);
        let activate = Action::new(USE_LINE, "Activate the connector on this line")
            .with_choices(vec![(line.clone(), format!("line {line}"))]);
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
                            format!("Line {line} is not active for the connector (sends fail with NOT_ACTIVE_LINE): press the button (or run `switchboard bitrix activate-connector`)."),
                        ),
                        Err(e) => Check::new(label.clone(), false, e.explained()),
                    }
                    .with_action(activate.clone())
                })
                .await,
        );
    }
    rows
}

fn fill_public(core: &Core, rows: Vec<Check>) -> Vec<Check> {
    let public = core.config.public_url();
    rows.into_iter()
        .map(|mut c| {
            c.fix = c.fix.replace("{public}", public);
            for (_, value) in &mut c.copy {
                *value = value.replace("{public}", public.trim_end_matches('/'));
            }
            c
        })
        .collect()
}
