//! The PBX bridge over real HTTP against the fake AstraPBX (issue 3): forwarding and
//! pass-through, the single-flight token cache, 401 refresh, secret rotation, every refused
//! endpoint form, validation, size limit, PBX down or slow, metrics, and a log capture that must
//! hold neither the secret nor any JWT. Runs on SQLite, or PostgreSQL with
//! SWITCHBOARD_TEST_DATABASE=postgres (the bridge itself keeps nothing in the database).

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use sandbox::{
    harness::eventually,
    pbx::{FakePbx, TokenField},
};
use serde_json::{Value, json};
use switchboard_core::{
    Config,
    config::Catalogue,
    testing::{TestDb, config_with},
};

/// Core's settings and this bridge's, from `pairs` alone.
fn config(pairs: &[(&str, &str)]) -> Config {
    config_with(Catalogue::new(&[pbx_bridge::catalogue::SETTINGS]), pairs)
}
use tokio::task::JoinHandle;

const KEY: &str = "org_1938b5c0e7a4";
const SHORT_KEY: &str = "org_1938b...";
const SECRET: &str = "secret_xxxxx_7Hq2";
const ORG_NAME: &str = "GrandEstancia";
const CLICK_TO_CALL: &str = "/api/v1/calls/click-to-call";

struct TestApp {
    url: String,
    core: switchboard_core::Core,
    pbx: FakePbx,
    http: reqwest::Client,
    server: JoinHandle<()>,
    _db: TestDb,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: Value,
}

impl TestApp {
    /// A bridge aimed at a fresh fake PBX holding one org (KEY/SECRET).
    async fn start() -> TestApp {
        TestApp::with(&[]).await
    }

    async fn with(settings: &[(&str, &str)]) -> TestApp {
        let pbx = FakePbx::start().await;
        pbx.add_org(KEY, SECRET, ORG_NAME);
        let url = pbx.url();
        let mut all = vec![("SWITCHBOARD_PBX_BASE_URL", url.as_str())];
        all.extend_from_slice(settings);
        TestApp::serve(pbx, &all).await
    }

    async fn serve(pbx: FakePbx, settings: &[(&str, &str)]) -> TestApp {
        let db = TestDb::new().await;
        let core = db.core(config(settings));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = pbx_bridge::router(&core);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestApp {
            url,
            core,
            pbx,
            http: reqwest::Client::new(),
            server,
            _db: db,
        }
    }

    async fn post_raw(&self, body: impl Into<reqwest::Body>) -> Reply {
        let response = self
            .http
            .post(format!("{}/whatsapp-bridge", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("bridge request");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            content_type,
            body,
        }
    }

    async fn bridge(&self, body: Value) -> Reply {
        self.post_raw(body.to_string()).await
    }

    /// API calls (not logins) the PBX received.
    fn api_calls(&self) -> usize {
        self.pbx
            .recorder()
            .all()
            .iter()
            .filter(|r| r.path != "/api/v1/auth/login")
            .count()
    }

    /// Every JWT the bridge presented to the PBX.
    fn tokens_seen(&self) -> BTreeSet<String> {
        self.pbx
            .recorder()
            .all()
            .iter()
            .filter_map(|r| r.header("authorization")?.strip_prefix("Bearer "))
            .map(str::to_string)
            .collect()
    }
}

/// The seed's "Trigger callback to reception" request.
fn click_to_call(api_key: &str, api_secret: &str) -> Value {
    json!({
        "api_key": api_key,
        "api_secret": api_secret,
        "endpoint": CLICK_TO_CALL,
        "body": {
            "from": "9876543210", "from_type": "external", "to": "5001", "to_type": "queue",
            "caller_id": "08065978002", "timeout": 30
        }
    })
}

fn call(endpoint: &str, method: &str) -> Value {
    json!({"api_key": KEY, "api_secret": SECRET, "endpoint": endpoint, "method": method})
}

#[tokio::test]
async fn click_to_call_is_forwarded_with_bearer_and_answer_passed_back() {
    let app = TestApp::start().await;
    let reply = app.bridge(click_to_call(KEY, SECRET)).await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    assert_eq!(reply.body["status"], "initiated");
    let calls = app.pbx.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(reply.body["call_id"], calls[0].call_id.as_str());
    assert_eq!(calls[0].org, KEY);
    assert_eq!(calls[0].body, click_to_call(KEY, SECRET)["body"]);

    let forwarded = &app.pbx.recorder().matching(CLICK_TO_CALL)[0];
    assert_eq!(forwarded.method, "POST");
    assert!(
        forwarded
            .header("authorization")
            .unwrap()
            .starts_with("Bearer ey")
    );
    assert_eq!(forwarded.header("content-type"), Some("application/json"));
    let login = &app.pbx.recorder().matching("/api/v1/auth/login")[0];
    assert_eq!(login.json(), json!({"api_key": KEY, "api_secret": SECRET}));
}

#[tokio::test]
async fn cached_token_is_reused() {
    let app = TestApp::start().await;
    for _ in 0..5 {
        assert_eq!(
            app.bridge(click_to_call(KEY, SECRET)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(app.pbx.login_count(KEY), 1);
    assert_eq!(app.tokens_seen().len(), 1);
    assert_eq!(app.pbx.calls().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_first_requests_share_one_login() {
    let app = Arc::new(TestApp::start().await);
    // A slow login keeps all hundred requests waiting on the same one.
    app.pbx.set_delay(Duration::from_millis(200));
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.bridge(click_to_call(KEY, SECRET)).await.status })
        })
        .collect();
    for status in futures::future::join_all(requests).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(app.pbx.login_count(KEY), 1);
    assert_eq!(app.pbx.calls().len(), 100);
}

#[tokio::test]
async fn a_pbx_401_refreshes_the_token_once_and_retries_once() {
    let app = TestApp::start().await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );

    app.pbx.force_401_next(1);
    let reply = app.bridge(click_to_call(KEY, SECRET)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(app.pbx.login_count(KEY), 2);
    assert_eq!(app.pbx.recorder().matching(CLICK_TO_CALL).len(), 3);
    assert_eq!(app.pbx.calls().len(), 2);
    assert_eq!(app.tokens_seen().len(), 2);
}

#[tokio::test]
async fn a_second_401_is_returned_unchanged() {
    let app = TestApp::start().await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );

    app.pbx.force_401_next(3);
    let reply = app.bridge(click_to_call(KEY, SECRET)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body, json!({"error": "Unauthorized"}));
    // One refresh and one retry, not a loop.
    assert_eq!(app.pbx.login_count(KEY), 2);
    assert_eq!(app.pbx.recorder().matching(CLICK_TO_CALL).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pbx_restart_under_load_costs_one_relogin_not_one_per_caller() {
    let app = Arc::new(TestApp::start().await);
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
    app.pbx.restart();
    let spawn_batch = |n: usize| -> Vec<JoinHandle<StatusCode>> {
        (0..n)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move { app.bridge(click_to_call(KEY, SECRET)).await.status })
            })
            .collect()
    };

    // Stragglers: these hold the dead token and will get their 401 late, after the re-login...
    app.pbx.set_delay(Duration::from_millis(400));
    let stragglers = spawn_batch(25);
    eventually("the stragglers reach the PBX", 10, || async {
        app.pbx.recorder().matching(CLICK_TO_CALL).len() >= 26
    })
    .await;
    // ...which this batch, answered at once, triggers while the stragglers are still in flight.
    app.pbx.set_delay(Duration::ZERO);
    let prompt = spawn_batch(25);

    for status in futures::future::join_all(prompt.into_iter().chain(stragglers)).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    // The stragglers' late 401s must not throw away the token the prompt batch fetched.
    assert_eq!(app.pbx.login_count(KEY), 2);
    assert_eq!(app.pbx.calls().len(), 51);
}

#[tokio::test]
async fn a_rotated_secret_logs_in_again_and_the_old_one_is_refused() {
    let app = TestApp::start().await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );

    app.pbx.rotate_secret(KEY, "secret_rotated_9Zx");
    // A flow still on the old secret: its cached token 401s, and logging in again is refused.
    let stale = app.bridge(click_to_call(KEY, SECRET)).await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stale.body["error"], "PBX login failed");
    assert_eq!(app.pbx.login_count(KEY), 2);

    // The updated flow gets a new login, not the old secret's token.
    let fresh = app.bridge(click_to_call(KEY, "secret_rotated_9Zx")).await;
    assert_eq!(fresh.status, StatusCode::OK, "{fresh:?}");
    assert_eq!(app.pbx.login_count(KEY), 3);
    let fresh = app.bridge(click_to_call(KEY, "secret_rotated_9Zx")).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(app.pbx.login_count(KEY), 3);
}

#[tokio::test]
async fn bad_credentials_are_401_and_nothing_is_forwarded() {
    let app = TestApp::start().await;
    for (key, secret) in [(KEY, "wrong_secret"), ("org_unknown_42", SECRET)] {
        let reply = app.bridge(click_to_call(key, secret)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        assert_eq!(
            reply.body,
            json!({"error": "PBX login failed", "pbx_status": 401})
        );
    }
    assert_eq!(app.api_calls(), 0);
    // Refusals are not cached: the right secret still works at once.
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_login_answer_shape_is_understood() {
    let app = TestApp::start().await;
    for (i, field) in [
        TokenField::Token,
        TokenField::AccessToken,
        TokenField::DataToken,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("org_shape_{i}");
        app.pbx.add_org(&key, SECRET, "Shapes");
        app.pbx.set_token_field(field);
        let reply = app.bridge(click_to_call(&key, SECRET)).await;
        assert_eq!(reply.status, StatusCode::OK, "{field:?}: {reply:?}");
    }
    assert_eq!(app.api_calls(), 3);
}

#[tokio::test]
async fn the_configured_ttl_bounds_a_tokens_cache_life() {
    let app = TestApp::with(&[("SWITCHBOARD_PBX_TOKEN_TTL_SECS", "1")]).await;
    let sent = AtomicUsize::new(0);
    eventually("the token re-fetched", 10, || async {
        assert_eq!(
            app.bridge(call("/api/v1/users", "GET")).await.status,
            StatusCode::OK
        );
        sent.fetch_add(1, Ordering::SeqCst);
        app.pbx.login_count(KEY) >= 2
    })
    .await;
    let sent = sent.into_inner();
    assert!(sent > 1, "the first token was not reused while fresh");
    assert_eq!(app.api_calls(), sent);
}

#[tokio::test]
async fn a_short_jwt_exp_is_refreshed_before_the_pbx_refuses_it() {
    let app = TestApp::start().await;
    app.pbx.set_token_ttl(3);
    let sent = AtomicUsize::new(0);
    eventually("the token re-fetched", 15, || async {
        assert_eq!(
            app.bridge(call("/api/v1/users", "GET")).await.status,
            StatusCode::OK
        );
        sent.fetch_add(1, Ordering::SeqCst);
        app.pbx.login_count(KEY) >= 2
    })
    .await;
    let sent = sent.into_inner();
    // One API call per bridge call: no call was made with an expired token and retried.
    assert_eq!(app.api_calls(), sent);
}

#[tokio::test]
async fn every_refused_endpoint_form_is_400_and_never_reaches_the_pbx() {
    let app = TestApp::start().await;
    let refused = [
        "https://evil.example/api/v1/users",
        "http://127.0.0.1:1/api/v1/users",
        "evil.example/api/v1/users",
        "api/v1/users",
        "//evil.example/api/v1/users",
        "/api//v1/users",
        "/api/../admin",
        "/api/v1/..",
        "/api/./v1/users",
        "/api\\..\\admin",
        "/api/v1/users\\x",
        "/api/@evil.example",
        "/api/v1/users@evil.example",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "/api/.%2e/admin",
        "/api/%2fevil",
        "/api%2F..%2Fadmin",
        "/api/%5c..%5cadmin",
        "/api/%252e%252e/admin",
        "/api/%40evil.example",
        "/api/%00",
        "/api/%0d%0aX-Injected:%20yes",
        "/api/%zz",
        "/api/v1/users\r\nX-Injected: yes",
        "/api/v1/users\n",
        "/api/v1/\u{0}users",
        "/api/v1/\u{7f}users",
        "/api/v1 users",
        "/api/v1/users#frag",
        "/api/v1／users",
        "/admin",
        "/apiv1/users",
        "/",
        "",
    ];
    for endpoint in refused {
        let reply = app.bridge(call(endpoint, "GET")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{endpoint:?}: {reply:?}"
        );
        assert_eq!(reply.body["field"], "endpoint", "{endpoint:?}");
        assert!(reply.body["error"].is_string(), "{endpoint:?}");
    }
    assert!(
        app.pbx.recorder().all().is_empty(),
        "a refused endpoint reached the PBX"
    );

    // Query strings pass, untouched.
    let reply = app
        .bridge(call("/api/v1/call-records?limit=2", "GET"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let recorded = app.pbx.recorder().matching("/api/v1/call-records");
    assert_eq!(recorded[0].query.as_deref(), Some("limit=2"));
}

#[tokio::test]
async fn operator_prefixes_narrow_what_callers_reach() {
    let app = TestApp::with(&[("SWITCHBOARD_PBX_ALLOWED_PREFIXES", "/api/v1/calls/")]).await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
    let reply = app.bridge(call("/api/v1/users", "GET")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["field"], "endpoint");
}

#[tokio::test]
async fn missing_or_mistyped_fields_are_400_naming_the_field() {
    let app = TestApp::start().await;
    let good = click_to_call(KEY, SECRET);
    let cases = [
        ("api_key", json!(null)),
        ("api_key", json!(12)),
        ("api_secret", json!("")),
        ("api_secret", json!({"v": 1})),
        ("endpoint", json!(null)),
        ("endpoint", json!(["/api/v1/users"])),
        ("method", json!("TRACE")),
        ("method", json!("HEAD")),
        ("method", json!(true)),
        ("body", json!("from=1")),
    ];
    for (field, value) in cases {
        let mut body = good.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value.clone();
        }
        let reply = app.bridge(body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{field}={value}");
        assert_eq!(reply.body["field"], field, "{field}={value}: {reply:?}");
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    }
    for raw in ["not json", "[1,2]", "\"text\"", ""] {
        let reply = app.post_raw(raw).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{raw:?}");
        assert!(reply.body["error"].is_string(), "{raw:?}");
    }
    assert!(app.pbx.recorder().all().is_empty());
}

#[tokio::test]
async fn methods_are_forwarded_in_any_case_and_every_answer_passes_back() {
    let app = TestApp::start().await;
    let reply = app.bridge(call("/api/v1/users", "get")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["total"], 2);
    let user_id = reply.body["users"][0]["id"].as_str().unwrap().to_string();

    let mut update = call(&format!("/api/v1/users/{user_id}"), "Put");
    update["body"] = json!({"ring_target": "phone"});
    assert_eq!(app.bridge(update).await.status, StatusCode::OK);
    assert_eq!(app.pbx.users(KEY)[0].ring_target, "phone");

    // The PBX's own refusals come back as it sent them: a 400 with its JSON...
    let mut empty = click_to_call(KEY, SECRET);
    empty["body"] = json!({});
    let reply = app.bridge(empty).await;
    assert_eq!(
        (reply.status, reply.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "Missing required fields"})
        )
    );
    // ...a 404...
    let reply = app.bridge(call("/api/v1/nothing-here", "GET")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body, json!({"error": "Not found"}));
    // ...and a 405 with an empty body and no content type.
    for method in ["DELETE", "patch"] {
        let reply = app
            .bridge(call(&format!("/api/v1/users/{user_id}"), method))
            .await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!((reply.content_type, reply.body), (None, Value::Null));
    }
    let methods: Vec<String> = app
        .pbx
        .recorder()
        .all()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v1/users"))
        .map(|r| r.method)
        .collect();
    assert_eq!(methods, ["GET", "PUT", "DELETE", "PATCH"]);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = TestApp::start().await;
    let mut big = click_to_call(KEY, SECRET);
    big["body"]["note"] = json!("x".repeat(pbx_bridge::MAX_BODY));
    let reply = app.bridge(big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.body["error"].is_string(), "{reply:?}");

    // Just under the limit is forwarded whole.
    let mut near = click_to_call(KEY, SECRET);
    let room = pbx_bridge::MAX_BODY - near.to_string().len() - 20;
    near["body"]["note"] = json!("x".repeat(room));
    assert!(near.to_string().len() <= pbx_bridge::MAX_BODY);
    assert_eq!(app.bridge(near).await.status, StatusCode::OK);
    assert_eq!(
        app.pbx.calls()[0].body["note"].as_str().unwrap().len(),
        room
    );
}

#[tokio::test]
async fn pbx_down_is_502() {
    let nobody = FakePbx::unreachable_url();
    let app = TestApp::serve(
        FakePbx::start().await,
        &[("SWITCHBOARD_PBX_BASE_URL", &nobody)],
    )
    .await;
    let reply = app.bridge(click_to_call(KEY, SECRET)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body, json!({"error": "PBX unreachable"}));

    // Down after a token was cached: the forwarded call fails the same way.
    let app = TestApp::start().await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
    app.pbx.shutdown().await;
    let reply = app.bridge(click_to_call(KEY, SECRET)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(reply.body, json!({"error": "PBX unreachable"}));
}

#[tokio::test]
async fn a_slow_pbx_is_504_after_the_configured_timeout() {
    let app = TestApp::with(&[("SWITCHBOARD_PBX_TIMEOUT_SECS", "1")]).await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
    app.pbx.set_delay(Duration::from_secs(3));

    let started = Instant::now();
    let reply = app.bridge(click_to_call(KEY, SECRET)).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({"error": "PBX did not answer within 1 s"})
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unconfigured_bridge_is_503_naming_the_setting() {
    let app = TestApp::serve(FakePbx::start().await, &[]).await;
    let reply = app.bridge(click_to_call(KEY, SECRET)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["field"], "SWITCHBOARD_PBX_BASE_URL");
}

/// Prometheus text value of one series, 0 when absent.
fn metric(series: &str) -> f64 {
    switchboard_core::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_logins_hits_refreshes_and_forwarded_calls() {
    let app = TestApp::start().await;
    let series = [
        "switchboard_pbx_logins_total{outcome=\"ok\"}",
        "switchboard_pbx_logins_total{outcome=\"refused\"}",
        "switchboard_pbx_token_cache_hits_total",
        "switchboard_pbx_token_refreshes_total",
        "switchboard_pbx_forwarded_total{status=\"200\"}",
        "switchboard_pbx_forwarded_total{status=\"401\"}",
        "switchboard_pbx_upstream_duration_seconds_count{call=\"api\"}",
        "switchboard_pbx_upstream_duration_seconds_count{call=\"login\"}",
    ];
    let before: Vec<f64> = series.iter().map(|s| metric(s)).collect();

    app.bridge(click_to_call(KEY, SECRET)).await; // login ok, 200
    app.bridge(click_to_call(KEY, SECRET)).await; // hit, 200
    app.pbx.force_401_next(1);
    app.bridge(click_to_call(KEY, SECRET)).await; // hit, 401, refresh, login ok, 200
    app.bridge(click_to_call(KEY, "wrong")).await; // login refused

    let delta: Vec<f64> = series
        .iter()
        .zip(&before)
        .map(|(s, b)| metric(s) - b)
        .collect();
    assert_eq!(
        delta,
        [2.0, 1.0, 2.0, 1.0, 3.0, 1.0, 4.0, 3.0],
        "{series:?}"
    );
}

/// Collects everything the bridge logs during one test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// Current-thread runtime: the subscriber is thread-local, and the bridge, the fake and the
// client all run on this thread, so every line they log lands in the buffer.
#[tokio::test]
async fn a_logged_run_shows_the_seed_lines_but_never_the_secret_or_a_token() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::start().await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
    app.pbx.force_401_next(1);
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
    let mut invalid = click_to_call(KEY, SECRET);
    invalid["body"] = json!({});
    assert_eq!(app.bridge(invalid).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.bridge(click_to_call(KEY, "secret_wrong_Pq8"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.bridge(call("/api/%2e%2e/admin", "GET")).await.status,
        StatusCode::BAD_REQUEST
    );

    let text = logs.text();
    for expected in [
        &format!("[BRIDGE] ➜ POST {CLICK_TO_CALL} | org: {SHORT_KEY} | body: {{\""),
        &format!(
            "[BRIDGE] ✓ 200 | POST {CLICK_TO_CALL} | org: {SHORT_KEY} | response: {{\"call_id\""
        ),
        &format!("[BRIDGE] 401 from PBX — refreshing token | org: {SHORT_KEY}"),
        &format!("JWT token cached for org: {ORG_NAME}"),
        &format!(
            "[BRIDGE] ✗ 400 | POST {CLICK_TO_CALL} | org: {SHORT_KEY} | response: {{\"error\":\"Missing required fields\"}}"
        ),
        &format!("[BRIDGE] ✗ PBX login failed | org: {SHORT_KEY}"),
    ] {
        assert!(
            text.contains(expected.as_str()),
            "missing {expected:?} in:\n{text}"
        );
    }
    let tokens = app.tokens_seen();
    assert_eq!(tokens.len(), 2, "the run issued a token and refreshed it");
    for leak in [SECRET, "secret_wrong_Pq8", KEY]
        .into_iter()
        .map(str::to_string)
        .chain(tokens.iter().cloned())
        .chain(
            tokens
                .iter()
                .map(|t| t.rsplit('.').next().unwrap().to_string()),
        )
    {
        assert!(!text.contains(&leak), "log contains {leak:?}:\n{text}");
    }
}

/// `/setup` shows whether the PBX answers at all, with a fix when it doesn't.
#[tokio::test]
async fn setup_row_says_whether_the_pbx_is_reachable() {
    let pbx = FakePbx::start().await;
    let db = TestDb::new().await;
    let up = db.core(config(&[("SWITCHBOARD_PBX_BASE_URL", &pbx.url())]));
    let checks = pbx_bridge::info(&up).checks().await;
    assert_eq!(checks.len(), 1);
    assert!(checks[0].ok, "{:?}", checks[0].fix);

    let down = db.core(config(&[(
        "SWITCHBOARD_PBX_BASE_URL",
        &FakePbx::unreachable_url(),
    )]));
    let checks = pbx_bridge::info(&down).checks().await;
    assert!(!checks[0].ok);
    assert!(
        checks[0].fix.contains("SWITCHBOARD_PBX_BASE_URL"),
        "{}",
        checks[0].fix
    );
}

/// Every call is in the audit log under the bridge's source, with the org's key shortened, the
/// endpoint and the status answered, and never the secret, a JWT or the forwarded body; a PBX
/// that is down is a failed row and the bridge's last outside call failing.
#[tokio::test]
async fn calls_are_in_the_audit_log_without_credentials() {
    let app = TestApp::start().await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.bridge(click_to_call(KEY, "wrong-secret-9"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.bridge(call("/api/v2/../admin", "GET")).await.status,
        StatusCode::BAD_REQUEST
    );
    let inbox = app.core.inbox.clone();
    let rows = || async { inbox.list(Some("pbx"), None, None, 10).await.unwrap() };
    eventually("three calls audited", 20, || async {
        rows().await.len() == 3
    })
    .await;
    // Recorded off the callers' path, so not necessarily in the order of the calls.
    let rows = rows().await;
    let mut statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["processed", "rejected", "rejected"]);
    let done = rows.iter().find(|r| r.status == "processed").unwrap();
    assert_eq!(done.route, "/whatsapp-bridge");
    let first: Value = serde_json::from_slice(&done.body).unwrap();
    assert_eq!(first["org"], SHORT_KEY);
    assert_eq!(first["endpoint"], CLICK_TO_CALL);
    assert_eq!(first["status"], 200);
    let tokens = app.tokens_seen();
    assert!(!tokens.is_empty());
    for row in &rows {
        let text = format!("{} {} {:?}", row.body_text(), row.headers, row.error);
        for secret in [KEY, SECRET, "wrong-secret-9", "9876543210"] {
            assert!(
                !text.contains(secret),
                "`{secret}` in the audit row: {text}"
            );
        }
        for jwt in &tokens {
            assert!(!text.contains(jwt.as_str()), "a JWT in the audit row");
        }
    }
    assert!(app.core.calls.last("pbx").unwrap().ok);

    app.pbx.shutdown().await;
    assert_eq!(
        app.bridge(click_to_call(KEY, SECRET)).await.status,
        StatusCode::BAD_GATEWAY
    );
    eventually("the failed call is audited", 20, || async {
        inbox
            .list(Some("pbx"), Some("failed"), None, 10)
            .await
            .unwrap()
            .iter()
            .any(|r| r.error.as_deref() == Some("PBX unreachable"))
    })
    .await;
    let last = app.core.calls.last("pbx").unwrap();
    assert!(!last.ok);
    assert_eq!(last.detail, "PBX unreachable");
}
