//! The whole Bitrix24 + Meta set-up in a real browser against the sandbox fakes: a fresh
//! database and only the accounts' credentials typed into the form; every other step is a
//! button on `/setup` (or the portal's own install), and then a customer's WhatsApp message
//! reaches the Open Channel line the operator picked. No CLI.

use fantoccini::Locator;
use sandbox::{
    bitrix::{BitrixConfig, ChatMessage, FakeBitrix, pages::LOCAL_APP_PATH},
    meta::{Customer, FakeMeta, InboundMessage, MetaConfig},
};
use switchboard_core::{credentials::generate_master_key, testing::fresh_database_url};

use crate::{
    pages::{Browser, browser},
    support::{Workers, bind, eventually},
};

const ADMIN: &str = "guided-setup-admin-token";
/// The Open Channel the operator picks from the portal's list (the portal also has line 3).
const PICKED_LINE: i64 = 5;

/// The browser actions the operator takes: each field typed, each click, each page opened by
/// its address.
#[derive(Default)]
struct Counted {
    typed: usize,
    clicks: usize,
    opened: usize,
}

impl Counted {
    fn total(&self) -> usize {
        self.typed + self.clicks + self.opened
    }
}

async fn type_into(b: &Browser, n: &mut Counted, css: &str, value: &str) {
    b.fill(css, value).await;
    n.typed += 1;
}

async fn press(b: &Browser, n: &mut Counted, css: &str) {
    b.submit(css).await;
    n.clicks += 1;
}

/// `(label, data-ok)` of every row in the `/setup` section whose title starts with `section`.
async fn rows(b: &Browser, section: &str) -> Vec<(String, bool)> {
    let xpath = format!("//h2[starts-with(., '{section}')]/following-sibling::ul[1]/li[@data-ok]");
    let mut out = Vec::new();
    for li in b.client.find_all(Locator::XPath(&xpath)).await.unwrap() {
        let label = li
            .find(Locator::Css("div.label"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let ok = li.attr("data-ok").await.unwrap().as_deref() == Some("true");
        out.push((label, ok));
    }
    assert!(!out.is_empty(), "no /setup section {section}");
    out
}

fn failing(rows: &[(String, bool)]) -> Vec<&str> {
    rows.iter()
        .filter(|(_, ok)| !ok)
        .map(|(l, _)| l.as_str())
        .collect()
}

#[tokio::test]
async fn an_operator_sets_up_meta_and_bitrix24_from_the_browser() {
    let Some(b) = browser().await else { return };
    // A new Meta app is subscribed to no WABA and has no webhook; the portal has two Open
    // Channels and the app is not installed.
    let meta = FakeMeta::start(MetaConfig {
        subscribed: false,
        ..MetaConfig::default()
    })
    .await;
    let bitrix = FakeBitrix::start(BitrixConfig {
        preinstalled: false,
        extra_lines: vec![PICKED_LINE],
        ..BitrixConfig::default()
    })
    .await;
    let (mc, bc) = (meta.config().clone(), bitrix.config());
    let (db_url, _db_dir) = fresh_database_url().await;
    let bound = bind();
    let base = bound.base.clone();
    // Only what a deployment's environment holds: no account credential.
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db_url),
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN.to_string()),
        ("SWITCHBOARD_MASTER_KEY", generate_master_key()),
        ("SWITCHBOARD_PUBLIC_URL", base.clone()),
        ("SWITCHBOARD_META_GRAPH_URL", meta.url()),
        ("SWITCHBOARD_META_GRAPH_VERSION", mc.graph_version.clone()),
        ("SWITCHBOARD_BITRIX_OAUTH_URL", bitrix.oauth_url()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let _server = bound.serve(&env, Workers::InProcess).await;
    let mut n = Counted::default();

    // Sign in.
    b.goto(&format!("{base}/setup")).await;
    n.opened += 1;
    type_into(&b, &mut n, "#token", ADMIN).await;
    press(&b, &mut n, r#"form[action="/admin/sign-in"] button"#).await;
    assert_eq!(b.text("h1").await, "Setup checklist");

    // The credentials of both accounts, and nothing else.
    press(&b, &mut n, r#"nav a[href="/admin/credentials"]"#).await;
    let portal = bitrix.portal_url();
    for (key, value) in [
        ("meta.app_id", mc.app_id.as_str()),
        ("meta.app_secret", mc.app_secret.as_str()),
        ("meta.access_token", mc.access_token.as_str()),
        ("meta.phone_number_id", mc.phone_number_id.as_str()),
        ("meta.waba_id", mc.waba_id.as_str()),
        ("bitrix.portal_url", portal.as_str()),
        ("bitrix.client_id", bc.client_id.as_str()),
        ("bitrix.client_secret", bc.client_secret.as_str()),
    ] {
        type_into(&b, &mut n, &format!(r#"input[name="{key}"]"#), value).await;
    }
    press(
        &b,
        &mut n,
        r#"form[action="/admin/credentials"] button[type="submit"]"#,
    )
    .await;
    assert_eq!(b.text("p.notice.ok").await, "Saved 8 setting(s).");

    // /setup shows the install URL to paste into the portal's local application.
    press(&b, &mut n, r#"nav a[href="/setup"]"#).await;
    let before = rows(&b, "Bitrix24 connector").await;
    // What is still missing is what the buttons set, and the page says so.
    let page = b.source().await;
    assert!(
        page.contains(
            "The buttons below set SWITCHBOARD_META_VERIFY_TOKEN, SWITCHBOARD_BITRIX_LINE_ID."
        ),
        "{page}"
    );
    assert!(
        !page.contains("Set SWITCHBOARD_META_VERIFY_TOKEN"),
        "{page}"
    );
    assert!(
        failing(&before).contains(&"Bitrix24 app installed"),
        "{before:?}"
    );
    let install_url = b
        .client
        .find(Locator::Css(r#"input.copy[aria-label="Install URL"]"#))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(install_url, format!("{base}/bitrix/install"));

    // In the portal: the local application's install path, then open it.
    b.goto(&format!("{portal}{LOCAL_APP_PATH}")).await;
    n.opened += 1;
    type_into(&b, &mut n, "#install_url", &install_url).await;
    press(&b, &mut n, "#install").await;
    assert_eq!(
        b.attr("#result", "data-installed").await.as_deref(),
        Some("true"),
        "{}",
        b.text("#result").await
    );
    assert!(bitrix.installed());

    // Back on /setup: installed, and the connector was registered with the install.
    b.goto(&format!("{base}/setup")).await;
    n.opened += 1;
    let installed = rows(&b, "Bitrix24 connector").await;
    for row in ["Bitrix24 app installed", "Connector registered"] {
        assert!(!failing(&installed).contains(&row), "{row}: {installed:?}");
    }
    assert!(
        bitrix
            .connectors()
            .iter()
            .any(|c| c.id == "switchboard_whatsapp")
    );

    // Pick the Open Channel from the portal's list and activate the connector on it.
    let select = b
        .client
        .find(Locator::Css(
            r#"form[action="/setup/bitrix/use-line"] select[name="choice"]"#,
        ))
        .await
        .unwrap();
    select
        .select_by_value(&PICKED_LINE.to_string())
        .await
        .unwrap();
    n.clicks += 1;
    press(
        &b,
        &mut n,
        r#"form[action="/setup/bitrix/use-line"] button"#,
    )
    .await;
    assert_eq!(
        b.attr("#action-result", "data-ok").await.as_deref(),
        Some("true"),
        "{}",
        b.text("#action-result").await
    );
    let status = bitrix
        .connector_status("switchboard_whatsapp", PICKED_LINE)
        .expect("the connector has a status on the picked line");
    assert!(status.active && status.configured());

    // Meta: subscribe the app to the WABA, then register the webhook (Meta verifies it).
    press(
        &b,
        &mut n,
        r#"form[action="/setup/bitrix/subscribe-waba"] button"#,
    )
    .await;
    assert_eq!(
        b.attr("#action-result", "data-ok").await.as_deref(),
        Some("true"),
        "{}",
        b.text("#action-result").await
    );
    assert!(meta.is_subscribed());
    press(
        &b,
        &mut n,
        r#"form[action="/setup/bitrix/register-webhook"] button"#,
    )
    .await;
    assert_eq!(
        b.attr("#action-result", "data-ok").await.as_deref(),
        Some("true"),
        "{}",
        b.text("#action-result").await
    );
    let hooks = meta.app_subscriptions();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].callback_url, format!("{base}/webhook/whatsapp"));
    assert_eq!(hooks[0].fields, vec!["messages".to_string()]);

    // Every row of the connector is ✓, the token probe among them; on the platform only the
    // https row fails, as it must for a loopback address.
    let done = rows(&b, "Bitrix24 connector").await;
    assert!(failing(&done).is_empty(), "still failing: {done:?}");
    for row in [
        "Bitrix24 connector (WhatsApp ⇄ Open Channel): configured",
        "Bitrix24 app installed",
        "Connector registered",
        "Open Channel line activated",
        "Meta access token valid",
        "App subscribed to the WhatsApp Business Account",
        "Webhook verify token set",
        "Webhook registered with Meta (field messages)",
    ] {
        assert!(done.iter().any(|(l, _)| l == row), "no row {row}: {done:?}");
    }
    let platform = rows(&b, "Platform").await;
    assert_eq!(
        failing(&platform),
        vec!["Public URL is https (SWITCHBOARD_PUBLIC_URL)"]
    );

    // A customer writes: Meta posts to the registered callback, and the message lands in the
    // picked line's chat on the portal.
    let anna = Customer::new("4917612345678", "Anna Schmidt");
    let delivered = meta
        .webhooks()
        .send_inbound(&anna, InboundMessage::text("Hello from WhatsApp"))
        .await
        .expect("Meta delivers to the registered webhook");
    assert_eq!(delivered.status, 200);
    eventually("the message in the picked line's chat", 20, || {
        let arrived = bitrix.chat_on(PICKED_LINE, &anna.wa_id).is_some_and(|c| {
            c.messages.iter().any(|m| {
                matches!(m, ChatMessage::Customer(c) if c.text.as_deref() == Some("Hello from WhatsApp"))
            })
        });
        async move { arrived }
    })
    .await;

    // The buttons need the admin session and the page's CSRF token (read from a form: the
    // checklist, all ✓, has no button left).
    b.goto(&format!("{base}/admin/credentials")).await;
    let csrf = b.attr("input[name=csrf]", "value").await.unwrap();
    let http = reqwest::Client::new();
    let action = format!("{base}/setup/bitrix/subscribe-waba");
    let anonymous = http
        .post(&action)
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let session = b
        .client
        .get_named_cookie("switchboard_admin")
        .await
        .unwrap();
    let forged = http
        .post(&action)
        .header("cookie", format!("switchboard_admin={}", session.value()))
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let unknown = http
        .post(format!("{base}/setup/bitrix/drop-everything"))
        .header("cookie", format!("switchboard_admin={}", session.value()))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    eprintln!(
        "guided set-up: {} browser actions ({} fields typed, {} clicks, {} pages opened by address)",
        n.total(),
        n.typed,
        n.clicks,
        n.opened
    );
    b.close().await;
}
