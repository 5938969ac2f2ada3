//! The operator pages at router level, over HTTP on a fresh database (SQLite, or PostgreSQL with
//! `SWITCHBOARD_TEST_DATABASE=postgres`): the admin gate (503 / 401 / session cookie), CSRF
//! refusals, the credentials form, the setup checklist, event replay with redaction,
//! dead-letter retry, event statuses that follow their jobs, and the events search. The same flows in a real browser against the real binary are in
//! `crates/switchboard/tests/pages.rs`.

use crate::bridge_settings;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::http::HeaderMap;
use reqwest::{StatusCode, redirect::Policy};
use sandbox::harness::eventually;
use switchboard_core::{
    Core, Incoming, JobContext, JobError, JobKind, JobRegistry,
    credentials::generate_master_key,
    inbox::{ProcessOutcome, Processors},
    ops::{BridgeInfo, Check, ProbeCache, Readiness},
    testing::{TestDb, config_with, with_workers},
};

const ADMIN: &str = "admin-token-for-tests";

struct App {
    base: String,
    core: Core,
    http: reqwest::Client,
    _db: TestDb,
}

fn test_bridge(core: &Core) -> BridgeInfo {
    let settings = core.settings.clone();
    BridgeInfo::new("demo", "Demo bridge", &["POST /demo"], || async {
        Readiness {
            configured: true,
            missing: vec![],
        }
    })
    .with_checks(move || {
        let settings = settings.clone();
        async move {
            let has = matches!(
                settings.get(bridge_settings::WABRIDGES_TOKEN).await,
                Ok(Some(_))
            );
            vec![Check::new(
                "Demo token set",
                has,
                "Set the hook token in /admin/credentials.",
            )]
        }
    })
    .with_work(&[DEMO_SOURCE], Some("demo."))
}

const DEMO_SOURCE: &str = "demo";

async fn app(env: &[(&str, &str)]) -> App {
    let db = TestDb::new().await;
    let core = db.core(config_with(bridge_settings::catalogue(), env));
    let records = BridgeInfo::new("calls", "Call bridge", &["POST /call"], || async {
        Readiness {
            configured: true,
            missing: vec![],
        }
    })
    .with_records(&["calls"]);
    let router = switchboard_core::ops::router(&core, vec![test_bridge(&core), records]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    App {
        base,
        core,
        http: reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .unwrap(),
        _db: db,
    }
}

async fn configured_app() -> App {
    let key = generate_master_key();
    app(&[
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN),
        ("SWITCHBOARD_MASTER_KEY", &key),
    ])
    .await
}

impl App {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs in with `?token=` and returns the session cookie (`name=value`).
    async fn sign_in(&self) -> String {
        let r = self
            .http
            .get(self.url(&format!("/setup?token={ADMIN}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let set = r.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_string()
    }

    async fn get(&self, path: &str, cookie: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn post(
        &self,
        path: &str,
        cookie: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let r = self
            .http
            .post(self.url(path))
            .header("cookie", cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        let headers = r.headers().clone();
        (r.status(), headers, r.text().await.unwrap())
    }

    /// The CSRF token a page embeds in its forms.
    async fn csrf(&self, cookie: &str) -> String {
        let (_, html) = self.get("/admin/credentials", cookie).await;
        csrf_in(&html)
    }
}

fn csrf_in(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("page has a CSRF field")
        + 19;
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn admin_pages_answer_503_until_an_admin_token_is_configured() {
    let app = app(&[]).await;
    for path in [
        "/setup",
        "/admin/credentials",
        "/admin/events",
        "/admin/jobs",
    ] {
        let (status, body) = app.get(path, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(body.contains("SWITCHBOARD_ADMIN_TOKEN"), "{path}");
    }
    // The public pages stay open.
    for path in ["/", "/docs", "/docs/platform"] {
        assert_eq!(app.get(path, "").await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn requests_without_the_token_are_refused_with_401() {
    let app = configured_app().await;
    for path in [
        "/setup",
        "/admin/credentials",
        "/admin/events",
        "/admin/jobs",
        "/admin/events?token=wrong",
        "/admin/events/1/payload",
    ] {
        assert_eq!(
            app.get(path, "").await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // A forged or foreign cookie is no session.
    let forged = "switchboard_admin=abc.1.def";
    assert_eq!(app.get("/setup", forged).await.0, StatusCode::UNAUTHORIZED);
    // A POST never signs in through `?token=`, even the right one.
    for path in [
        format!("/admin/credentials?token={ADMIN}"),
        "/admin/jobs/retry".into(),
        "/admin/events/replay".into(),
    ] {
        let (status, _, _) = app.post(&path, "", &[("id", "all")]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn the_token_becomes_a_session_cookie_and_leaves_the_url() {
    let app = configured_app().await;
    let r = app
        .http
        .get(app.url(&format!("/admin/events?status=failed&token={ADMIN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/admin/events?status=failed");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    // Plain http public URL (the default): a Secure cookie would never come back.
    assert!(!set.contains("Secure"), "{set}");
    assert!(
        !set.contains(ADMIN),
        "the cookie must not be the token itself"
    );
    let cookie = set.split(';').next().unwrap();
    let (status, body) = app.get("/admin/events?status=failed", cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(ADMIN));

    let https = app_with_https().await;
    let r = https
        .http
        .get(https.url(&format!("/setup?token={ADMIN}")))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Secure")
    );
}

async fn app_with_https() -> App {
    app(&[
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN),
        ("SWITCHBOARD_PUBLIC_URL", "https://bridge.example.com"),
    ])
    .await
}

#[tokio::test]
async fn posts_without_the_right_csrf_token_are_refused_with_403() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let other_session_csrf = app.csrf(&app.sign_in().await).await;
    for path in [
        "/admin/credentials",
        "/admin/jobs/retry",
        "/admin/events/replay",
    ] {
        let (status, _, _) = app.post(path, &cookie, &[("id", "all")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} without csrf");
        let (status, _, _) = app
            .post(
                path,
                &cookie,
                &[("id", "all"), ("csrf", "0123456789abcdef")],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} with a wrong csrf");
        let (status, _, _) = app
            .post(
                path,
                &cookie,
                &[("id", "all"), ("csrf", &other_session_csrf)],
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{path} with another session's csrf"
        );
    }
    let csrf = app.csrf(&cookie).await;
    let (status, _, _) = app
        .post(
            "/admin/jobs/retry",
            &cookie,
            &[("id", "all"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn credentials_form_masks_secrets_keeps_blanks_and_reports_errors_by_field() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let csrf = app.csrf(&cookie).await;

    // A bad URL is refused beside its field, and nothing of that save is stored.
    let (status, _, html) = app
        .post(
            "/admin/credentials",
            &cookie,
            &[
                ("csrf", &csrf),
                ("meta.app_secret", "app-secret-1"),
                ("bitrix.portal_url", "acme.bitrix24"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains(r#"id="bitrix-portal_url-error""#), "{html}");
    assert!(html.contains("is not an absolute http(s) URL"));
    assert!(!html.contains("app-secret-1"), "a secret is never echoed");
    assert!(
        html.contains(r#"value="acme.bitrix24""#),
        "the typo is shown to fix"
    );
    assert_eq!(
        app.core
            .settings
            .get(bridge_settings::META_APP_SECRET)
            .await
            .unwrap(),
        None
    );

    let (status, headers, _) = app
        .post(
            "/admin/credentials",
            &cookie,
            &[
                ("csrf", &csrf),
                ("meta.app_secret", "app-secret-1"),
                ("bitrix.portal_url", "https://acme.bitrix24.com"),
                ("meta.app_id", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/admin/credentials?saved=2");
    let (_, html) = app.get("/admin/credentials?saved=2", &cookie).await;
    assert!(html.contains("Saved 2 setting(s)"));
    assert!(!html.contains("app-secret-1"));
    assert!(html.contains("•••••••• (set — leave blank to keep)"));
    assert_eq!(
        app.core
            .settings
            .get(bridge_settings::META_APP_SECRET)
            .await
            .unwrap(),
        Some("app-secret-1".into())
    );

    // Blank keeps; an unchanged non-secret value is not re-stored; the mask is not a value.
    let (status, headers, _) = app
        .post(
            "/admin/credentials",
            &cookie,
            &[
                ("csrf", &csrf),
                ("meta.app_secret", ""),
                ("meta.access_token", "••••••••"),
                ("bitrix.portal_url", "https://acme.bitrix24.com"),
                ("bitrix.connector_id", "switchboard_whatsapp"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/admin/credentials?saved=0");
    assert_eq!(
        app.core
            .settings
            .resolve(bridge_settings::BITRIX_CONNECTOR_ID)
            .await
            .unwrap(),
        Some((
            "switchboard_whatsapp".into(),
            switchboard_core::config::Source::Default
        ))
    );

    // Clear removes the stored value.
    let (status, _, _) = app
        .post(
            "/admin/credentials",
            &cookie,
            &[("csrf", &csrf), ("clear", "meta.app_secret")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.core
            .settings
            .get(bridge_settings::META_APP_SECRET)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn saving_without_a_master_key_says_so_beside_the_form() {
    let app = app(&[("SWITCHBOARD_ADMIN_TOKEN", ADMIN)]).await;
    let cookie = app.sign_in().await;
    let csrf = app.csrf(&cookie).await;
    let (status, _, html) = app
        .post(
            "/admin/credentials",
            &cookie,
            &[("csrf", &csrf), ("meta.access_token", "EAAtoken")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains(r#"id="form-error""#));
    assert!(html.contains("SWITCHBOARD_MASTER_KEY is not set"));
    assert!(!html.contains("EAAtoken"));
}

#[tokio::test]
async fn setup_shows_core_rows_and_bridge_checks_with_their_fixes() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let (status, html) = app.get("/setup", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    for label in [
        "Database reachable",
        "Master key set",
        "Admin token set",
        "Public URL is https",
        "Job workers running",
        "No dead letters",
        "Demo bridge: configured",
        "Demo token set",
    ] {
        assert!(html.contains(label), "{label} missing");
    }
    // No workers run in this test, and the public URL is http: both rows say what to do.
    assert!(html.contains("switchboard worker"));
    assert!(html.contains("set SWITCHBOARD_PUBLIC_URL"));
    assert!(html.contains("Set the hook token in /admin/credentials."));

    app.core
        .settings
        .set(bridge_settings::WABRIDGES_TOKEN, "hook-secret")
        .await
        .unwrap();
    let (_, html) = app.get("/setup", &cookie).await;
    assert!(!html.contains("Set the hook token in /admin/credentials."));
    assert!(!html.contains("hook-secret"));
}

#[tokio::test]
async fn events_page_masks_credentials_and_replays_an_event() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let body = "event=ONIMCONNECTORMESSAGEADD&auth%5Bapplication_token%5D=APPTOKEN42&auth%5Bmember_id%5D=m1";
    let id = app
        .core
        .inbox
        .record(
            Incoming::new(
                "req-1",
                "bitrix",
                "/bitrix/events",
                body.as_bytes(),
                &HeaderMap::new(),
            )
            .dedupe("msg-1"),
        )
        .await
        .unwrap()
        .id();
    app.core
        .inbox
        .finish(id, switchboard_core::Status::Processed, None)
        .await
        .unwrap();

    let (status, html) = app.get("/admin/events?source=bitrix", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&format!("id=\"event-{id}\"")));
    assert!(html.contains("auth[member_id] = m1"));
    assert!(!html.contains("APPTOKEN42"), "credentials are masked");
    let (_, other) = app.get("/admin/events?source=meta", &cookie).await;
    assert!(!other.contains(&format!("id=\"event-{id}\"")));

    let csrf = csrf_in(&html);
    let before = app.core.jobs.stats().await.unwrap().pending;
    let (status, headers, _) = app
        .post(
            "/admin/events/replay",
            &cookie,
            &[
                ("csrf", &csrf),
                ("id", &id.to_string()),
                ("source", "bitrix"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = headers["location"].to_str().unwrap();
    assert!(location.starts_with("/admin/events?source=bitrix&replayed="));
    let ev = app.core.inbox.get(id).await.unwrap().unwrap();
    assert_eq!(ev.status, "received");
    assert_eq!(app.core.jobs.stats().await.unwrap().pending, before + 1);
    let (_, html) = app.get(location, &cookie).await;
    assert!(html.contains("queued for reprocessing"));
}

/// JSON nested `depth` deep around `leaves` numbers: pretty-printed whole, each leaf got a line
/// of its own indented by the depth (1 MiB of it rendered as 122 MiB of HTML).
fn nested_json(depth: usize, leaves: usize) -> String {
    let mut s = String::from(
        r#"{"auth":{"access_token":{"value":"NESTED-SECRET"}},"api_secret":["ARRAY-SECRET"],"data":"#,
    );
    s.push_str(&"[".repeat(depth));
    s.push_str(&vec!["1"; leaves].join(","));
    s.push_str(&"]".repeat(depth));
    s.push_str(r#","tail":"END-OF-PAYLOAD"}"#);
    s
}

#[tokio::test]
async fn events_list_is_bounded_and_each_payload_opens_on_its_own_route() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    // Under and over the size the full view still parses and pretty-prints, and one small
    // body with credentials nested in objects and arrays.
    let bodies = [
        nested_json(100, 100_000),
        nested_json(100, 300_000),
        r#"{"auth":{"access_token":{"value":"SMALL-NESTED"}},"api_secret":["SMALL-ARRAY"],"text":"hi"}"#
            .to_string(),
    ];
    let mut ids = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let id = app
            .core
            .inbox
            .record(
                Incoming::new("r", "test", "/t", body.as_bytes(), &HeaderMap::new())
                    .dedupe(format!("big-{i}")),
            )
            .await
            .unwrap()
            .id();
        ids.push(id);
    }

    let (status, html) = app.get("/admin/events", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    let stored: usize = bodies.iter().map(String::len).sum();
    println!(
        "{} rows, {stored} bytes stored: list page {} bytes",
        bodies.len(),
        html.len()
    );
    assert!(
        html.len() < 48 * 1024,
        "the list is {} bytes for {} rows",
        html.len(),
        bodies.len()
    );
    for id in &ids {
        assert!(
            html.contains(&format!("/admin/events/{id}/payload")),
            "row {id} links its payload"
        );
    }
    assert!(html.contains("hi"), "the small body is previewed");
    for leaked in [
        "NESTED-SECRET",
        "ARRAY-SECRET",
        "SMALL-NESTED",
        "SMALL-ARRAY",
    ] {
        assert!(!html.contains(leaked), "{leaked} on the list");
    }

    for (id, body) in ids.iter().zip(&bodies) {
        let r = app
            .http
            .get(app.url(&format!("/admin/events/{id}/payload")))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{:?}",
            r.headers()
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let text = r.text().await.unwrap();
        assert!(
            text.len() < 2 * body.len() + 4096,
            "payload of {} bytes shown as {} bytes",
            body.len(),
            text.len()
        );
        assert!(
            text.contains("END-OF-PAYLOAD") || text.contains("hi"),
            "the whole payload"
        );
        for leaked in [
            "NESTED-SECRET",
            "ARRAY-SECRET",
            "SMALL-NESTED",
            "SMALL-ARRAY",
        ] {
            assert!(
                !text.contains(leaked),
                "{leaked} in the payload of row {id}"
            );
        }
    }
    let (status, _) = app.get("/admin/events/999999/payload", &cookie).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn events_page_pages_newest_first() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let mut ids = Vec::new();
    for i in 0..55 {
        let r = app
            .core
            .inbox
            .record(
                Incoming::new("r", "test", "/t", b"{}", &HeaderMap::new())
                    .rejected(format!("bad {i}")),
            )
            .await
            .unwrap();
        ids.push(r.id());
    }
    let (_, first) = app.get("/admin/events", &cookie).await;
    let newest = *ids.last().unwrap();
    assert!(first.contains(&format!("id=\"event-{newest}\"")));
    assert!(!first.contains(&format!("id=\"event-{}\"", ids[0])));
    let older = format!("/admin/events?before={}", ids[5]);
    assert!(first.contains(&older), "pager links to the next page");
    let (_, second) = app.get(&older, &cookie).await;
    assert!(second.contains(&format!("id=\"event-{}\"", ids[0])));
    // Rejected calls can't be replayed, so they have no button.
    assert!(!second.contains("/admin/events/replay"));
}

#[tokio::test]
async fn jobs_page_shows_and_retries_dead_letters() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    app.core
        .jobs
        .push_raw("test.no-handler", serde_json::json!({}), "req-dead", None)
        .await
        .unwrap();
    let jobs = app.core.jobs.clone();
    with_workers(&app.core, JobRegistry::default(), async {
        eventually("the job is dead-lettered", 20, || async {
            jobs.stats().await.unwrap().dead == 1
        })
        .await;
    })
    .await;

    let (status, html) = app.get("/admin/jobs", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("no handler for job kind test.no-handler"));
    assert!(html.contains("req-dead"));
    let dead = app.core.jobs.list(true, 10).await.unwrap();
    let csrf = csrf_in(&html);
    let (status, headers, _) = app
        .post(
            "/admin/jobs/retry",
            &cookie,
            &[("csrf", &csrf), ("id", &dead[0].id)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/admin/jobs?retried=1");
    let stats = app.core.jobs.stats().await.unwrap();
    assert_eq!((stats.dead, stats.pending), (0, 1));
    let (_, html) = app.get("/admin/jobs?retried=1", &cookie).await;
    assert!(html.contains("1 dead letter(s) put back on the queue."));
}

#[tokio::test]
async fn landing_and_docs_render_without_sign_in() {
    let app = configured_app().await;
    let (status, html) = app.get("/", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Demo bridge") && html.contains("data-bridge=\"demo\""));
    let (_, docs) = app.get("/docs", "").await;
    assert!(docs.contains("Operator documentation"));
    assert!(docs.contains(r#"href="/docs/platform""#));
    let (status, platform) = app.get("/docs/platform", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(platform.contains("<table>"));
    assert_eq!(app.get("/docs/nope", "").await.0, StatusCode::NOT_FOUND);
    let css = app
        .http
        .get(app.url("/assets/switchboard.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
}

#[tokio::test]
async fn probe_cache_reuses_a_result_until_the_input_changes_or_it_expires() {
    let cache = ProbeCache::new(Duration::from_millis(200));
    let probe = |ok| async move { Check::new("probe", ok, "fix") };
    assert!(cache.get_or_probe(b"token-a", probe(true)).await.ok);
    assert!(
        cache.get_or_probe(b"token-a", probe(false)).await.ok,
        "cached"
    );
    assert!(
        !cache.get_or_probe(b"token-b", probe(false)).await.ok,
        "new input"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        cache.get_or_probe(b"token-b", probe(true)).await.ok,
        "expired"
    );
}

/// The demo bridge's relay: one per event, like a message relayed to Bitrix24.
#[derive(serde::Serialize, serde::Deserialize)]
struct DemoRelay {
    event_id: i64,
}

impl JobKind for DemoRelay {
    const KIND: &'static str = "demo.relay";
}

/// The demo bridge's processor (each event pushes one relay) and its relay, which fails for
/// good, as a relay to a Bitrix24 portal without the app installed does, until `installed`.
fn demo_relay(core: &Core, installed: &Arc<AtomicBool>) -> JobRegistry {
    let mut registry = JobRegistry::default();
    let mut processors = Processors::default();
    let c = core.clone();
    processors.register(DEMO_SOURCE, move |event, ctx: JobContext| {
        let c = c.clone();
        async move {
            c.jobs
                .push_once(
                    &DemoRelay { event_id: event.id },
                    &ctx.request_id,
                    &format!("demo-relay:{}", event.id),
                )
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            Ok(ProcessOutcome::Processed)
        }
    });
    let installed = installed.clone();
    registry.register(move |_job: DemoRelay, _ctx: JobContext| {
        let installed = installed.clone();
        async move {
            if installed.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(JobError::Permanent(
                    "Bitrix24 app is not installed".to_string(),
                ))
            }
        }
    });
    processors.install(core.inbox.clone(), &mut registry);
    registry
}

async fn api(app: &App, path: &str) -> serde_json::Value {
    let r = app
        .http
        .get(app.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

/// An event whose relay is a dead letter is `failed`, with the relay's error and a link to it,
/// on the events page, the events API, `/health` (the bridge `degraded`, still 200) and the
/// landing page; the relay links back to its event; a successful retry makes it `processed`
/// and the bridge `ready` again.
#[tokio::test]
async fn an_events_status_follows_its_jobs_through_a_dead_letter_and_its_retry() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let installed = Arc::new(AtomicBool::new(false));
    let registry = demo_relay(&app.core, &installed);
    let event_id = app
        .core
        .inbox
        .record(
            Incoming::new(
                "req-relay-1",
                DEMO_SOURCE,
                "/demo",
                br#"{"from":"15550001111","id":"wamid.HBgLMTU1NTAwMDExMTEVAgASGBQz"}"#,
                &HeaderMap::new(),
            )
            .dedupe("wamid.1"),
        )
        .await
        .unwrap()
        .id();
    let jobs = app.core.jobs.clone();
    with_workers(&app.core, registry.clone(), async {
        eventually("the relay is dead-lettered", 20, || async {
            jobs.stats().await.unwrap().dead == 1
        })
        .await;
    })
    .await;
    // The event's own processing succeeded: its row says so, its work did not.
    assert_eq!(
        app.core.inbox.get(event_id).await.unwrap().unwrap().status,
        "processed"
    );

    let events = api(&app, "/api/events").await;
    let event = &events["events"][0];
    assert_eq!(event["id"], event_id);
    assert_eq!(event["status"], "failed", "{event}");
    assert_eq!(event["stored_status"], "processed");
    assert!(
        event["error"]
            .as_str()
            .unwrap()
            .contains("Bitrix24 app is not installed"),
        "{event}"
    );
    // Its jobs: the processing (done) and the relay (dead), in no order the test relies on.
    let job = event["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == DemoRelay::KIND)
        .unwrap_or_else(|| panic!("no relay among the event's jobs: {event}"));
    assert_eq!(job["state"], "dead letter");
    let job_id = job["id"].as_str().unwrap().to_string();
    let job_url = format!("/admin/jobs?request=req-relay-1#job-{job_id}");
    assert_eq!(job["url"], job_url);

    let (_, failed) = app.get("/admin/events?status=failed", &cookie).await;
    assert!(failed.contains(&format!("id=\"event-{event_id}\"")));
    assert!(failed.contains(r#"data-status="failed""#));
    assert!(
        failed.contains(&job_url.replace('&', "&amp;")),
        "the event links to its job"
    );
    let (_, processed) = app.get("/admin/events?status=processed", &cookie).await;
    assert!(!processed.contains(&format!("id=\"event-{event_id}\"")));

    // The job, from the link: its error in words, its times, and the way back to the event.
    let (status, page) = app.get(job_url.split('#').next().unwrap(), &cookie).await;
    assert_eq!(status, StatusCode::OK);
    let row_at = page
        .find(&format!("id=\"job-{job_id}\""))
        .expect("the linked job has its row");
    let row = &page[row_at..row_at + page[row_at..].find("</tr>").unwrap()];
    assert!(row.contains("dead letter"), "{row}");
    assert!(row.contains("Bitrix24 app is not installed"), "{row}");
    assert!(row.contains("/admin/events?q=req-relay-1"), "{row}");
    assert!(
        row.matches(" UTC").count() >= 2,
        "created and last attempt: {row}"
    );

    let health = reqwest::get(app.url("/health")).await.unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "only the database makes it 503"
    );
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["bridges"]["demo"]["state"], "degraded");
    let reason = health["bridges"]["demo"]["reason"].as_str().unwrap();
    assert!(reason.contains("1 dead letter(s) (demo.relay)"), "{reason}");
    assert!(reason.contains("/admin/jobs"), "{reason}");
    assert!(
        !reason.contains("not installed"),
        "a job's error stays behind the admin token: {reason}"
    );
    let (_, landing) = app.get("/", "").await;
    assert!(landing.contains(r#"data-state="degraded""#));
    assert!(!landing.contains("configured</span>"));

    // Installed now: the retry succeeds, and everything says so.
    installed.store(true, Ordering::SeqCst);
    let csrf = csrf_in(&page);
    let (status, _, _) = app
        .post(
            "/admin/jobs/retry",
            &cookie,
            &[("csrf", &csrf), ("id", &job_id)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    with_workers(&app.core, registry, async {
        eventually("the retried relay is done", 20, || async {
            jobs.list(false, 10)
                .await
                .unwrap()
                .iter()
                .any(|j| j.id == job_id && j.state == "done")
        })
        .await;
    })
    .await;
    let events = api(&app, "/api/events").await;
    assert_eq!(events["events"][0]["status"], "processed");
    for job in events["events"][0]["jobs"].as_array().unwrap() {
        assert_eq!(job["last_error"], serde_json::Value::Null, "{job}");
    }
    let (_, processed) = app.get("/admin/events?status=processed", &cookie).await;
    assert!(processed.contains(&format!("id=\"event-{event_id}\"")));
    let (_, jobs_page) = app.get("/admin/jobs", &cookie).await;
    assert!(
        !jobs_page.contains("&quot;Ok&quot;") && !jobs_page.contains(r#""Ok""#),
        "a success shows no error text"
    );
    let health = api(&app, "/health").await;
    assert_eq!(health["bridges"]["demo"]["state"], "ready");
    assert_eq!(health["status"], "healthy");
}

/// The events page finds an event by a phone number or wamid in its payload, its request id,
/// its source in any case and its time; the API says the same.
#[tokio::test]
async fn events_are_found_by_phone_wamid_request_id_source_and_time() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let mut ids = Vec::new();
    for (i, (source, phone)) in [("demo", "15550001111"), ("Other", "15550002222")]
        .iter()
        .enumerate()
    {
        let body = format!(r#"{{"from":"{phone}","id":"wamid.EVENT{i}"}}"#);
        ids.push(
            app.core
                .inbox
                .record(Incoming::new(
                    &format!("req-find-{i}"),
                    source,
                    "/demo",
                    body.as_bytes(),
                    &HeaderMap::new(),
                ))
                .await
                .unwrap()
                .id(),
        );
    }
    let found = |html: &str| -> Vec<i64> {
        ids.iter()
            .copied()
            .filter(|id| html.contains(&format!("id=\"event-{id}\"")))
            .collect()
    };
    for (query, want) in [
        ("q=15550002222", vec![ids[1]]),
        ("q=wamid.EVENT0", vec![ids[0]]),
        ("q=req-find-1", vec![ids[1]]),
        ("source=DEMO", vec![ids[0]]),
        ("source=other", vec![ids[1]]),
        ("from=2000-01-01T00:00", ids.clone()),
        ("to=2000-01-01T00:00", vec![]),
        ("q=nothing-like-it", vec![]),
    ] {
        let (status, html) = app.get(&format!("/admin/events?{query}"), &cookie).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(found(&html), want, "{query}");
        let json = api(&app, &format!("/api/events?{query}")).await;
        let mut got: Vec<i64> = json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, want, "api {query}");
    }
    // Per-source traffic: the demo bridge's source had one event in the last hour.
    let (_, html) = app.get("/admin/events", &cookie).await;
    let card_at = html.find(r#"data-traffic="demo""#).expect("traffic row");
    let card = &html[card_at..card_at + html[card_at..].find("</tr>").unwrap()];
    assert!(
        card.contains(r#"<td class="hour">1</td><td class="day">1</td>"#),
        "{card}"
    );
    assert!(!card.contains("never"), "{card}");
    let (_, html) = app.get("/admin/events?to=yesterday", &cookie).await;
    assert!(html.contains("is not a time"));
}

/// A bridge's record of a call it answered at once is shown but never replayed: no button,
/// and a forged form is refused, the row left as it was.
#[tokio::test]
async fn records_of_answered_calls_are_not_replayed() {
    let app = configured_app().await;
    let cookie = app.sign_in().await;
    let mut call = Incoming::new("req-call", "calls", "/call", b"{}", &HeaderMap::new());
    call.status = switchboard_core::Status::Failed;
    call.error = Some("the far side answered 502".into());
    let id = app.core.inbox.record(call).await.unwrap().id();
    let (_, html) = app.get("/admin/events?source=calls", &cookie).await;
    assert!(html.contains(&format!("id=\"event-{id}\"")));
    assert!(html.contains("the far side answered 502"));
    assert!(!html.contains("/admin/events/replay"));
    let csrf = app.csrf(&cookie).await;
    let (status, _, _) = app
        .post(
            "/admin/events/replay",
            &cookie,
            &[("csrf", &csrf), ("id", &id.to_string())],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.core.inbox.get(id).await.unwrap().unwrap().status,
        "failed"
    );
}
