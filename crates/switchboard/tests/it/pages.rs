//! The operator pages in a real browser (headless Chromium through chromedriver) against the
//! product wired in-process as `switchboard serve` wires it, on SQLite or PostgreSQL (`SWITCHBOARD_TEST_DATABASE=postgres`):
//! sign in with the token, save a secret and see it masked, watch a `/setup` row turn green,
//! replay an event, retry a dead letter, and be refused without a session or a CSRF token.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without
//! `chromedriver` the tests fail under `CI=true` and are skipped loudly elsewhere.
//!
//! `screenshots` (ignored) refreshes `docs/images/*.png` for the README:
//! `cargo nextest run -p switchboard --test it --run-ignored only pages::screenshots`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use switchboard_core::{
    Core, Db, Incoming,
    credentials::generate_master_key,
    testing::{config_with, fresh_database_url},
};

use crate::support::{InProcess, KillOnDrop, Workers, eventually, free_port, serve_in_process};

const ADMIN: &str = "browser-test-admin-token";

async fn wait_until_up(url: &str, what: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not come up at {url} within 30 s");
}

/// The product on a fresh database, plus a `Core` of the test's own on that database to put
/// events and jobs in place the way a bridge would.
struct Server {
    base: String,
    core: Core,
    _running: InProcess,
    _db_dir: Box<dyn std::any::Any>,
}

async fn serve() -> Server {
    let (url, db_dir) = fresh_database_url().await;
    let key = generate_master_key();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN),
        ("SWITCHBOARD_MASTER_KEY", &key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let running = serve_in_process(&env, Workers::InProcess).await;
    let db = Db::connect(&url).await.unwrap();
    let core = Core::with_db(
        config_with(
            switchboard::catalogue(),
            &[("SWITCHBOARD_MASTER_KEY", &key)],
        ),
        db,
    );
    Server {
        base: running.base.clone(),
        core,
        _running: running,
        _db_dir: Box::new(db_dir),
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A headless Chromium session, or `None` (test skipped) when chromedriver is not installed
/// outside CI.
pub(crate) struct Browser {
    pub(crate) client: Client,
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
}

pub(crate) async fn browser() -> Option<Browser> {
    let Some(driver) = find_on_path("chromedriver") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromedriver is missing: install chromium and chromium-driver (see .ci/run)");
        }
        eprintln!(
            "\n******** SKIPPED: install chromium-driver (apt-get install chromium chromium-driver) to run the browser tests ********\n"
        );
        return None;
    };
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let driver = KillOnDrop(child);
    let webdriver = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{webdriver}/status"), "chromedriver").await;
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000",
            format!("--user-data-dir={}", profile.path().display()),
        ]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("start a Chromium session through chromedriver");
    Some(Browser {
        client,
        _driver: driver,
        _profile: profile,
    })
}

impl Browser {
    /// Opens `url` as typed into the address bar.
    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn open(&self, server: &Server, path: &str) {
        self.client
            .goto(&format!("{}{path}", server.base))
            .await
            .unwrap();
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub(crate) async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .attr(name)
            .await
            .unwrap()
    }

    pub(crate) async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    pub(crate) async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Clicks a submit button and waits for the page it leads to: a click returns before a
    /// form's navigation has finished, so reading at once could read the old page.
    pub(crate) async fn submit(&self, css: &str) {
        self.client
            .execute("window.__switchboardOldPage = true", vec![])
            .await
            .unwrap();
        self.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let done = self
                .client
                .execute(
                    "return window.__switchboardOldPage === undefined && document.readyState === 'complete'",
                    vec![],
                )
                .await
                .map(|v| v == serde_json::Value::Bool(true))
                .unwrap_or(false);
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no new page after clicking {css}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// `data-ok` of the `/setup` row whose label starts with `label`.
    async fn setup_row_ok(&self, server: &Server, label: &str) -> bool {
        self.open(server, "/setup").await;
        let xpath = format!("//li[@data-ok][.//div[@class='label'][starts-with(., '{label}')]]");
        let row = self
            .client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no /setup row {label}: {e}"));
        row.attr("data-ok").await.unwrap().as_deref() == Some("true")
    }

    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[tokio::test]
async fn operator_pages_in_a_browser() {
    let Some(b) = browser().await else { return };
    let server = serve().await;

    // Without a session: the sign-in page, 401.
    b.open(&server, "/admin/credentials").await;
    assert_eq!(b.text("h1").await, "Sign in");

    // First visit with ?token=: signed in, the token gone from the address bar.
    b.open(&server, &format!("/admin/credentials?token={ADMIN}"))
        .await;
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/admin/credentials");
    assert!(url.query().is_none(), "token left in {url}");
    assert_eq!(b.text("h1").await, "Credentials");
    let cookie = b
        .client
        .get_named_cookie("switchboard_admin")
        .await
        .unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert!(!cookie.value().contains(ADMIN));

    // /setup: the wabridges hooks are not configured yet.
    assert!(!b.setup_row_ok(&server, "wabridges hooks").await);

    // A bad URL is refused beside its field; nothing is saved.
    b.open(&server, "/admin/credentials").await;
    b.fill(r#"input[name="bitrix.portal_url"]"#, "acme.bitrix24")
        .await;
    b.fill(r#"input[name="wabridges.token"]"#, "hook-secret-123")
        .await;
    b.submit(r#"form[action="/admin/credentials"] button[type="submit"]"#)
        .await;
    assert!(
        b.text("#bitrix-portal_url-error")
            .await
            .contains("not an absolute http(s) URL")
    );
    assert!(!b.source().await.contains("hook-secret-123"));

    // Save a secret: it comes back masked, from the store.
    b.fill(
        r#"input[name="bitrix.portal_url"]"#,
        "https://acme.bitrix24.com",
    )
    .await;
    b.fill(r#"input[name="wabridges.token"]"#, "hook-secret-123")
        .await;
    b.submit(r#"form[action="/admin/credentials"] button[type="submit"]"#)
        .await;
    assert_eq!(b.text("p.notice.ok").await, "Saved 2 setting(s).");
    let html = b.source().await;
    assert!(
        !html.contains("hook-secret-123"),
        "the secret is never shown"
    );
    let token_field = r#"input[name="wabridges.token"]"#;
    let shown = b.client.find(Locator::Css(token_field)).await.unwrap();
    assert_eq!(shown.prop("value").await.unwrap().as_deref(), Some(""));
    assert!(
        b.attr(token_field, "placeholder")
            .await
            .unwrap()
            .starts_with("••••••••")
    );
    assert_eq!(
        b.attr(
            r#"[data-setting="wabridges.token"] [data-source]"#,
            "data-source"
        )
        .await
        .as_deref(),
        Some("store")
    );

    // ... and the /setup row turns green.
    assert!(b.setup_row_ok(&server, "wabridges hooks").await);
    assert!(b.setup_row_ok(&server, "Job workers running").await);

    // A form submitted without its CSRF token is refused.
    b.open(&server, "/admin/credentials").await;
    b.client
        .execute(
            "document.querySelector('input[name=csrf]').remove()",
            vec![],
        )
        .await
        .unwrap();
    b.submit(r#"form[action="/admin/credentials"] button[type="submit"]"#)
        .await;
    assert_eq!(b.text("h1").await, "Request refused");

    // Replay an event from /admin/events.
    let body = br#"{"object":"test","access_token":"EAA-not-for-eyes","text":"hello"}"#;
    let id = server
        .core
        .inbox
        .record(
            Incoming::new("req-browser", "test", "/test", body, &Default::default()).dedupe("k1"),
        )
        .await
        .unwrap()
        .id();
    let inbox = server.core.inbox.clone();
    eventually("the binary's worker finishes the event", 30, || async {
        inbox.get(id).await.unwrap().unwrap().status != "received"
    })
    .await;
    b.open(&server, "/admin/events?source=test").await;
    b.click(&format!("#event-{id} summary")).await;
    let payload = b.text(&format!("#event-{id} pre:last-of-type")).await;
    assert!(payload.contains("hello") && !payload.contains("EAA-not-for-eyes"));
    b.submit(&format!("#event-{id} button[type=\"submit\"]"))
        .await;
    assert!(
        b.text("p.notice.ok")
            .await
            .contains(&format!("Event #{id} queued for reprocessing"))
    );
    eventually("the replayed event is processed again", 30, || async {
        let ev = inbox.get(id).await.unwrap().unwrap();
        ev.attempts == 2 && ev.status != "received"
    })
    .await;

    // Search an event by its wamid, open the job it caused, and come back to the event.
    let wamid = "wamid.HBgLMTU1NTAwMDQyNDIVAgASGBQzQUJDRA";
    let body = format!(r#"{{"id":"{wamid}","from":"15550004242"}}"#);
    let found = server
        .core
        .inbox
        .record(
            Incoming::new(
                "req-wamid",
                "test",
                "/test",
                body.as_bytes(),
                &Default::default(),
            )
            .dedupe("k-wamid"),
        )
        .await
        .unwrap()
        .id();
    let jobs = server.core.jobs.clone();
    eventually("the event's job is done", 30, || async {
        jobs.for_requests(&["req-wamid".to_string()])
            .await
            .unwrap()
            .iter()
            .any(|j| j.state == "done")
    })
    .await;
    b.open(&server, "/admin/events").await;
    b.fill(r#"form.filters input[name="q"]"#, wamid).await;
    b.submit(r#"form.filters button[type="submit"]"#).await;
    let shown = b
        .client
        .find_all(Locator::Css("details.event"))
        .await
        .unwrap();
    assert_eq!(shown.len(), 1, "only the event with that wamid");
    assert_eq!(
        shown[0].attr("id").await.unwrap(),
        Some(format!("event-{found}"))
    );
    b.click(&format!("#event-{found} summary")).await;
    let job_id = b
        .attr(&format!("#event-{found} ul.jobs li"), "data-job")
        .await
        .unwrap();
    b.submit(&format!("#event-{found} ul.jobs a")).await;
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/admin/jobs");
    assert_eq!(url.fragment(), Some(format!("job-{job_id}").as_str()));
    let row = format!("tr#job-{job_id}");
    assert!(b.text(&row).await.contains("core.process-event"));
    assert_eq!(b.attr(&row, "data-state").await.as_deref(), Some("done"));
    b.submit(&format!("{row} a.event-link")).await;
    assert!(
        b.text(&format!("#event-{found} summary"))
            .await
            .contains(&format!("#{found}"))
    );

    // Retry a dead letter from /admin/jobs.
    server
        .core
        .jobs
        .push_raw("test.no-handler", serde_json::json!({}), "req-dead", None)
        .await
        .unwrap();
    let jobs = server.core.jobs.clone();
    let dead_letter = || async {
        let dead = jobs.list(true, 100).await.unwrap();
        dead.into_iter().find(|j| j.kind == "test.no-handler")
    };
    eventually("the job is dead-lettered", 30, || async {
        dead_letter().await.is_some()
    })
    .await;
    let dead = dead_letter().await.unwrap();
    b.open(&server, "/admin/jobs").await;
    assert_ne!(b.text("#dead-letters").await, "0");
    b.submit(&format!("tr[data-job=\"{}\"] button", dead.id))
        .await;
    assert_eq!(
        b.text("p.notice.ok").await,
        "1 dead letter(s) put back on the queue."
    );

    // Signed out (no cookie): refused again.
    b.client.delete_all_cookies().await.unwrap();
    b.open(&server, "/admin/jobs").await;
    assert_eq!(b.text("h1").await, "Sign in");
    b.close().await;
}

/// Refreshes the README's screenshots: `docs/images/{landing,docs,credentials,setup,events,jobs}.png`.
#[tokio::test]
#[ignore = "writes docs/images; run on demand"]
async fn screenshots() {
    let Some(b) = browser().await else { return };
    let server = serve().await;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images");
    std::fs::create_dir_all(&out).unwrap();
    for (key, value) in [
        ("meta.app_id", "1234567890"),
        ("meta.access_token", "EAAG-demo-token"),
        ("meta.phone_number_id", "109876543210"),
        ("meta.verify_token", "verify-demo"),
        ("bitrix.portal_url", "https://acme.bitrix24.com"),
        ("wabridges.token", "hook-demo"),
    ] {
        server.core.settings.set_by_key(key, value).await.unwrap();
    }
    // The server caches stored settings for a few seconds: wait until it sees them.
    let health = format!("{}/health", server.base);
    eventually("the server sees the stored settings", 30, || async {
        let h: serde_json::Value = reqwest::get(&health).await.unwrap().json().await.unwrap();
        h["bridges"]["wabridges"]["configured"] == true
    })
    .await;
    let bodies: [(&str, &str, &[u8]); 3] = [
        (
            "meta",
            "/webhook/whatsapp",
            br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"messages":[{"id":"wamid.HBg1","from":"15551234567","type":"text","text":{"body":"Hello!"}}]}}]}]}"#,
        ),
        (
            "bitrix",
            "/bitrix/events",
            b"event=ONIMCONNECTORMESSAGEADD&data%5BMESSAGES%5D%5B0%5D%5Bmessage%5D%5Btext%5D=Hi+there&auth%5Bapplication_token%5D=secret&auth%5Bmember_id%5D=a1b2",
        ),
        (
            "wabridges",
            "/wabridges/hooks/sales",
            br#"{"event":"message","message_id":"ACE41E0042","contact_id":"15550001234@s.whatsapp.net","phone":"15550001234","chat_id":"15550001234@s.whatsapp.net","name":"Alice","body":"Is order 42 ready?","type":"text","media_type":"","is_group":false,"from_me":false,"timestamp":1777180605}"#,
        ),
    ];
    let mut last = 0;
    for (i, (source, route, body)) in bodies.iter().enumerate() {
        last = server
            .core
            .inbox
            .record(
                Incoming::new(
                    &format!("req-{i}"),
                    source,
                    route,
                    body,
                    &Default::default(),
                )
                .dedupe(format!("demo-{i}")),
            )
            .await
            .unwrap()
            .id();
    }
    server
        .core
        .inbox
        .record(
            Incoming::new(
                "req-bad",
                "meta",
                "/webhook/whatsapp",
                b"{}",
                &Default::default(),
            )
            .rejected("X-Hub-Signature-256 does not match the body"),
        )
        .await
        .unwrap();
    // A relay of the Meta message that can't succeed, so its event shows `failed` and links it.
    server
        .core
        .jobs
        .push_raw(
            "bitrix-connector.relay-to-bitrix",
            serde_json::json!({}),
            "req-0",
            None,
        )
        .await
        .unwrap();
    let (inbox, jobs) = (server.core.inbox.clone(), server.core.jobs.clone());
    eventually("demo rows settle", 30, || async {
        let relay = jobs.for_requests(&["req-0".to_string()]).await.unwrap();
        inbox.get(last).await.unwrap().unwrap().status != "received"
            && relay.iter().any(|j| j.is_dead())
    })
    .await;

    b.open(&server, &format!("/setup?token={ADMIN}")).await;
    let shots: [(&str, &str); 6] = [
        ("landing", "/"),
        ("docs", "/docs/platform"),
        ("credentials", "/admin/credentials"),
        ("setup", "/setup"),
        ("events", "/admin/events"),
        ("jobs", "/admin/jobs"),
    ];
    for (name, path) in shots {
        b.open(&server, path).await;
        if name == "events" {
            b.click(&format!("#event-{} summary", last - 2)).await;
        }
        let png = b.client.screenshot().await.unwrap();
        std::fs::write(out.join(format!("{name}.png")), png).unwrap();
    }
    b.close().await;
}
