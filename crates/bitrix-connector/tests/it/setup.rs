//! The connector's `/setup` rows follow the seed's setup steps: each turns green only when the
//! step is really done on the (fake) portal and Meta, and says what to do while it isn't.

use crate::support::TestApp;

fn row<'a>(
    checks: &'a [switchboard_core::ops::Check],
    label: &str,
) -> &'a switchboard_core::ops::Check {
    checks.iter().find(|c| c.label == label).unwrap_or_else(|| {
        panic!(
            "no row {label:?} in {:?}",
            checks.iter().map(|c| &c.label).collect::<Vec<_>>()
        )
    })
}

#[tokio::test]
async fn setup_rows_turn_green_step_by_step() {
    let app = TestApp::start().await;
    let info = bitrix_connector::info(&app.relay);

    let before = info.checks().await;
    assert!(row(&before, "Meta access token valid").ok);
    assert!(row(&before, "Webhook verify token set").ok);
    let installed = row(&before, "Bitrix24 app installed");
    assert!(!installed.ok);
    assert!(
        installed.fix.contains("/bitrix/install"),
        "{}",
        installed.fix
    );

    app.install().await;
    let after_install = bitrix_connector::info(&app.relay).checks().await;
    assert!(row(&after_install, "Bitrix24 app installed").ok);
    assert!(row(&after_install, "Bitrix24 grant fresh").ok);
    assert!(row(&after_install, "Application token known").ok);
    // The install registers the connector by itself.
    assert!(row(&after_install, "Connector registered").ok);

    app.ready().await;
    let ready = bitrix_connector::info(&app.relay).checks().await;
    // Meta's side is not done yet: the WABA id and the app id are unknown.
    for label in [
        "App subscribed to the WhatsApp Business Account",
        "Webhook registered with Meta (field messages)",
    ] {
        let r = row(&ready, label);
        assert!(!r.ok);
        assert!(r.fix.contains("/admin/credentials"), "{}", r.fix);
    }
    let mc = app.meta.config().clone();
    for (setting, value) in [
        (bitrix_connector::catalogue::META_WABA_ID, &mc.waba_id),
        (bitrix_connector::catalogue::META_APP_ID, &mc.app_id),
    ] {
        app.core.settings.set(setting, value).await.unwrap();
    }
    let info = bitrix_connector::info(&app.relay);
    // The reports of the buttons, which the CLI commands print too.
    for (action, done) in [
        ("subscribe-waba", "subscribed to WhatsApp Business Account"),
        ("register-webhook", "Meta verified"),
    ] {
        let report = info
            .act(action.to_string(), None)
            .await
            .expect("a known action")
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        assert!(report.contains(done), "{report}");
    }
    assert!(info.act("no-such-button".into(), None).await.is_none());
    let ready = info.checks().await;
    for c in &ready {
        assert!(c.ok, "{} still failing: {}", c.label, c.fix);
    }
    let hooks = app.meta.app_subscriptions();
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        hooks[0].callback_url,
        format!("{}/webhook/whatsapp", app.url)
    );
}

#[tokio::test]
async fn a_wrong_app_secret_registers_no_webhook_and_says_so() {
    let app = TestApp::start().await;
    let mc = app.meta.config().clone();
    app.core
        .settings
        .set(bitrix_connector::catalogue::META_APP_ID, &mc.app_id)
        .await
        .unwrap();
    app.core
        .settings
        .set(
            bitrix_connector::catalogue::META_APP_SECRET,
            "not-the-app-secret",
        )
        .await
        .unwrap();
    let err = bitrix_connector::info(&app.relay)
        .act("register-webhook".into(), None)
        .await
        .expect("a known action")
        .expect_err("Meta refuses the app token");
    assert!(err.contains("190") && err.contains("App Secret"), "{err}");
    assert!(
        !err.contains("not-the-app-secret"),
        "the secret is never shown: {err}"
    );
    assert!(app.meta.app_subscriptions().is_empty());
    let webhook = bitrix_connector::info(&app.relay).checks().await;
    assert!(!row(&webhook, "Webhook registered with Meta (field messages)").ok);
}

#[tokio::test]
async fn a_revoked_meta_token_shows_the_fix() {
    let app = TestApp::start().await;
    app.meta.set_access_token("rotated-elsewhere");
    let checks = bitrix_connector::info(&app.relay).checks().await;
    let meta = row(&checks, "Meta access token valid");
    assert!(!meta.ok);
    assert!(
        meta.fix.contains("190") || meta.fix.to_lowercase().contains("token"),
        "{}",
        meta.fix
    );
}

/// The number a metric line `name value` gives in `/metrics`' text.
fn metric(name: &str) -> Option<f64> {
    switchboard_core::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn an_accepted_meta_token_is_valid_on_metrics() {
    switchboard_core::metrics::handle();
    let app = TestApp::start().await;
    let checks = bitrix_connector::info(&app.relay).checks().await;
    assert!(row(&checks, "Meta access token valid").ok);
    assert_eq!(metric("switchboard_meta_token_valid"), Some(1.0));
    assert_eq!(metric("switchboard_meta_token_rejections_total"), None);
}

#[tokio::test]
async fn a_refused_meta_token_is_invalid_and_counted_on_metrics() {
    switchboard_core::metrics::handle();
    let app = TestApp::start().await;
    app.meta.set_access_token("rotated-elsewhere");
    let checks = bitrix_connector::info(&app.relay).checks().await;
    assert!(!row(&checks, "Meta access token valid").ok);
    assert_eq!(metric("switchboard_meta_token_valid"), Some(0.0));
    assert!(
        metric("switchboard_meta_token_rejections_total").is_some_and(|n| n >= 1.0),
        "{}",
        switchboard_core::metrics::render()
    );
}

#[tokio::test]
async fn a_new_open_channel_is_created_and_used_from_setup() {
    let app = TestApp::start_with(
        sandbox::bitrix::BitrixConfig::default(),
        &["SWITCHBOARD_BITRIX_LINE_ID"],
    )
    .await;
    app.install().await;
    let info = bitrix_connector::info(&app.relay);
    let line = row(&info.checks().await, "Open Channel line activated").clone();
    assert!(!line.ok);
    let offered = line.action.expect("a button to pick the line");
    assert_eq!(offered.name, "use-line");
    let configured = app.bitrix.config().line_id.to_string();
    assert!(
        offered.choices.iter().any(|(v, _)| *v == configured),
        "{:?}",
        offered.choices
    );
    assert!(
        offered.choices.iter().any(|(v, _)| v == "new"),
        "{:?}",
        offered.choices
    );

    let report = info
        .act("use-line".into(), Some("new".into()))
        .await
        .expect("a known action")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("created Open Channel"), "{report}");
    let created = app
        .bitrix
        .config()
        .extra_lines
        .last()
        .copied()
        .expect("a new line");
    let status = app
        .bitrix
        .connector_status("switchboard_whatsapp", created)
        .expect("the connector is on the new line");
    assert!(status.active && status.configured());
    assert_eq!(
        app.core
            .settings
            .get(bitrix_connector::catalogue::BITRIX_LINE_ID)
            .await
            .unwrap(),
        Some(created.to_string())
    );
    assert!(row(&info.checks().await, "Open Channel line activated").ok);

    // Not an id: refused, nothing changed.
    let refused = info
        .act("use-line".into(), Some("3; DROP".into()))
        .await
        .expect("a known action")
        .expect_err("no such line");
    assert!(refused.contains("pick a line"), "{refused}");
}
