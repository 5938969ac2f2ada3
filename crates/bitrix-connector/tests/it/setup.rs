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
    let registered = row(&after_install, "Connector registered");
    assert!(!registered.ok);
    assert!(
        registered.fix.contains("register-connector"),
        "{}",
        registered.fix
    );

    app.ready().await;
    let ready = bitrix_connector::info(&app.relay).checks().await;
    for c in &ready {
        assert!(c.ok, "{} still failing: {}", c.label, c.fix);
    }
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
