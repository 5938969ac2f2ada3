//! Issue 4, "wabridges hooks: typed event receiver that never drops an event": the router over
//! real HTTP on a fresh database (SQLite, or PostgreSQL with `SWITCHBOARD_TEST_DATABASE=postgres`),
//! with job workers running and payloads from the sandbox's wabridges sender.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, Mac};
use sandbox::{
    harness::eventually,
    wabridges::{EventType, Sender, Traffic, example},
};
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard_core::{
    Config, Core, JobRegistry,
    config::Catalogue,
    inbox::Processors,
    testing::{TestDb, with_workers},
};
use wabridges_hooks::events::{self, Parsed};

const TOKEN: &str = "hook-token";
const ADMIN: &str = "admin-token";
/// `whsec_` + base64 of "test-subscriber-secret-bytes".
const SUB_SECRET: &str = "whsec_dGVzdC1zdWJzY3JpYmVyLXNlY3JldC1ieXRlcw==";

struct TestApp {
    core: Core,
    base: String,
    http: reqwest::Client,
    _db: TestDb,
    _config_file: tempfile::NamedTempFile,
}

impl TestApp {
    /// `forward`: (url, events) of each subscriber; `token`: the hook token, if any.
    async fn start(forward: &[(&str, &[&str])], token: Option<&str>) -> TestApp {
        let mut toml = String::new();
        for (i, (url, events)) in forward.iter().enumerate() {
            toml += &format!(
                "[[wabridges.forward]]\nname = \"sub{i}\"\nurl = \"{url}\"\nevents = {events:?}\nsecret = \"{SUB_SECRET}\"\n"
            );
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();
        let mut env = BTreeMap::from([("SWITCHBOARD_ADMIN_TOKEN".to_string(), ADMIN.to_string())]);
        if let Some(t) = token {
            env.insert("SWITCHBOARD_WABRIDGES_TOKEN".into(), t.into());
        }
        let catalogue = Catalogue::new(&[wabridges_hooks::catalogue::SETTINGS])
            .with_tables(wabridges_hooks::catalogue::TABLES);
        let config = Config::from_sources(catalogue, Some(file.path().into()), &env).unwrap();
        let db = TestDb::new().await;
        let core = db.core(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = wabridges_hooks::router(&core);
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestApp {
            core,
            base,
            http: reqwest::Client::new(),
            _db: db,
            _config_file: file,
        }
    }

    fn registry(&self) -> JobRegistry {
        let mut registry = JobRegistry::default();
        let mut processors = Processors::default();
        wabridges_hooks::register(&self.core, &mut registry, &mut processors);
        processors.install(self.core.inbox.clone(), &mut registry);
        registry
    }

    fn hook_url(&self, bridge: &str) -> String {
        format!("{}/wabridges/hooks/{bridge}?token={TOKEN}", self.base)
    }

    fn sender(&self, bridge: &str) -> Sender {
        Sender::new(&self.hook_url(bridge))
    }

    /// Posts `body` and returns (status, JSON answer).
    async fn post(&self, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn api(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// Audit rows of this source by status.
    async fn statuses(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for e in self.rows().await {
            *out.entry(e.status).or_default() += 1;
        }
        out
    }

    async fn rows(&self) -> Vec<switchboard_core::inbox::StoredEvent> {
        self.core
            .inbox
            .list(Some("wabridges"), None, None, 500)
            .await
            .unwrap()
    }

    async fn idle(&self) -> bool {
        let s = self.core.jobs.stats().await.unwrap();
        let unfinished = self
            .rows()
            .await
            .iter()
            .any(|e| e.status == "received" || e.status == "failed");
        s.pending == 0 && s.running == 0 && !unfinished
    }
}

/// A forwarding subscriber that records what it accepts and can be switched down (503).
#[derive(Clone, Default)]
struct Subscriber(Arc<Mutex<SubState>>);

#[derive(Default)]
struct SubState {
    down: bool,
    refused: usize,
    received: Vec<(HeaderMap, Bytes)>,
}

impl Subscriber {
    async fn start() -> (Subscriber, String) {
        let s = Subscriber::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (s, url)
    }
    fn set_down(&self, down: bool) {
        self.0.lock().unwrap().down = down;
    }
    fn received(&self) -> Vec<(HeaderMap, Bytes)> {
        self.0.lock().unwrap().received.clone()
    }
    fn refused(&self) -> usize {
        self.0.lock().unwrap().refused
    }
}

async fn receive(State(s): State<Subscriber>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut st = s.0.lock().unwrap();
    if st.down {
        st.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    st.received.push((headers, body));
    StatusCode::NO_CONTENT
}

/// Standard Webhooks verification as a receiver would write it, from the specification rather
/// than from the crate: HMAC-SHA256 over `id.timestamp.body` with the base64-decoded secret,
/// any `v1,` signature in the space-separated list, timestamp within five minutes.
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or(format!("missing {n}"))
    };
    let (id, ts, sigs) = (
        h("webhook-id")?,
        h("webhook-timestamp")?,
        h("webhook-signature")?,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t: i64 = ts.parse().map_err(|_| "bad timestamp".to_string())?;
    if (now - t).abs() > 300 {
        return Err(format!("timestamp {t} too far from {now}"));
    }
    let key = B64
        .decode(SUB_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = B64.encode(mac.finalize().into_bytes());
    sigs.split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
        .then_some(id)
        .ok_or_else(|| format!("no valid signature in {sigs}"))
}

/// Every example of the seed parses into its typed event and serialises back to the same JSON.
#[test]
fn seed_examples_round_trip_through_the_typed_models() {
    for t in EventType::ALL {
        let ex = example(t);
        let bytes = serde_json::to_vec(&ex).unwrap();
        let Parsed::Known(event) = events::parse(&bytes).unwrap() else {
            panic!("{} is a known type", t.as_str())
        };
        assert_eq!(event.event_type(), t.as_str());
        assert_eq!(serde_json::to_value(&event).unwrap(), ex, "{}", t.as_str());
    }
    // Generated traffic uses every documented value form; all of it must parse as known.
    for d in Traffic::new(11).take(500) {
        assert!(
            matches!(events::parse(&d.body), Ok(Parsed::Known(_))),
            "{}",
            String::from_utf8_lossy(&d.body)
        );
    }
}

#[tokio::test]
async fn every_event_type_is_parsed_stored_and_queryable() {
    let app = TestApp::start(&[], Some(TOKEN)).await;
    let sender = app.sender("hotel-1");
    for t in EventType::ALL {
        assert_eq!(
            sender.send(&example(t)).await.unwrap(),
            200,
            "{}",
            t.as_str()
        );
    }
    with_workers(&app.core, app.registry(), async {
        eventually("all eleven processed", 20, || async {
            app.statuses().await.get("processed") == Some(&11)
        })
        .await;
    })
    .await;
    assert_eq!(app.rows().await.len(), 11);

    let bridges = app.api("/api/wabridges/bridges").await;
    let b = &bridges["bridges"][0];
    assert_eq!(b["bridge"], "hotel-1");
    assert_eq!(b["phone"], "15550001234");
    assert_eq!(
        b["connection"], "disconnected",
        "disconnected came after connected"
    );
    assert_eq!(b["last_event"], "profile_picture_updated");
    assert_eq!(b["sync_state"], "completed");
    assert_eq!(b["sync_total"], 142);
    assert_eq!(b["sync_messages"], 120);
    assert_eq!(b["sync_completed_count"], 142);
    assert_eq!(b["picture_id"], "12345678901");
    assert_eq!(b["picture_removed"], false);

    let m = app.api("/api/wabridges/bridges/hotel-1/messages").await;
    let msg = &m["messages"][0];
    assert_eq!(m["messages"].as_array().unwrap().len(), 1);
    assert_eq!(msg["message_id"], "ACE41E...");
    assert_eq!(msg["body"], "Hello!");
    assert_eq!(msg["type"], "text");
    assert_eq!(msg["is_group"], false);
    assert_eq!(msg["from_me"], false);
    assert_eq!(msg["timestamp"], 1777180605);

    let c = app.api("/api/wabridges/bridges/hotel-1/contacts").await;
    let contacts = c["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "{c}");
    assert_eq!(contacts[0]["name"], "Alice");
    assert_eq!(contacts[0]["phone"], "15550001234");

    let calls = app.api("/api/wabridges/bridges/hotel-1/calls").await;
    assert_eq!(calls["calls"][0]["duration_secs"], 115);
    assert_eq!(calls["calls"][0]["reason"], "hangup");
    assert_eq!(calls["calls"][0]["platform"], "android");

    let votes = app
        .api("/api/wabridges/bridges/hotel-1/polls/ACPOLL0001/votes")
        .await;
    assert_eq!(votes["votes"][0]["selected_options"], json!(["Red"]));
    let resp = app
        .api("/api/wabridges/bridges/hotel-1/events/ACEVENT0001/responses")
        .await;
    assert_eq!(resp["responses"][0]["response"], "going");
    assert_eq!(resp["responses"][0]["extra_guest_count"], 0);

    // The API is the admin's: no token, no data.
    let r = app
        .http
        .get(format!("{}/api/wabridges/bridges", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(format!("{}/api/wabridges/bridges/nobody/calls", app.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_duplicate_delivered_20_times_concurrently_is_stored_once_and_forwarded_once() {
    let (sub, url) = Subscriber::start().await;
    let app = TestApp::start(&[(&url, &["message"])], Some(TOKEN)).await;
    let url = app.hook_url("dup");
    let body = serde_json::to_vec(&example(EventType::Message)).unwrap();
    let answers = futures::future::join_all((0..20).map(|_| app.post(&url, body.clone()))).await;
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (code, answer) in &answers {
        assert_eq!(*code, 200);
        *by_status
            .entry(answer["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(by_status.get("received"), Some(&1));
    assert_eq!(by_status.get("duplicate"), Some(&19));

    with_workers(&app.core, app.registry(), async {
        eventually("forwarded", 20, || async { sub.received().len() == 1 }).await;
        eventually("queue idle", 20, || app.idle()).await;
    })
    .await;
    assert_eq!(sub.received().len(), 1);
    let st = app.statuses().await;
    assert_eq!(
        (st.get("processed"), st.get("duplicate")),
        (Some(&1), Some(&19))
    );
    let m = app.api("/api/wabridges/bridges/dup/messages").await;
    assert_eq!(m["messages"].as_array().unwrap().len(), 1);
    // The same message id from another bridge is another event (keys are per bridge).
    let (_, answer) = app.post(&app.hook_url("other"), body).await;
    assert_eq!(answer["status"], "received");
}

#[tokio::test]
async fn an_unknown_event_type_is_answered_200_and_stored_raw() {
    let app = TestApp::start(&[], Some(TOKEN)).await;
    let body = r#"{"event":"label_added","label_id":"3","chat_id":"15550001234@s.whatsapp.net","timestamp":1777180700}"#;
    let (code, answer) = app.post(&app.hook_url("h"), body).await;
    assert_eq!((code, answer["status"].as_str()), (200, Some("received")));
    with_workers(&app.core, app.registry(), async {
        eventually("skipped", 20, || async {
            app.statuses().await.get("skipped") == Some(&1)
        })
        .await;
    })
    .await;
    let row = &app.rows().await[0];
    assert_eq!(row.body_text(), body);
    assert_eq!(row.error.as_deref(), Some("unknown event type label_added"));
    assert_eq!(row.route, "/wabridges/hooks/h");
}

#[tokio::test]
async fn malformed_bodies_are_400_with_the_reason_and_recorded_raw() {
    let app = TestApp::start(&[], Some(TOKEN)).await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "not valid JSON"),
        ("[1,2]", "not an object"),
        (r#"{"phone":"1"}"#, "no `event` field"),
        (r#"{"event":42}"#, "`event` must be a string"),
        (
            r#"{"event":"call_terminated","call_id":"C","contact_id":"x","timestamp":1}"#,
            "call_terminated event: missing field `reason`",
        ),
    ];
    for (body, why) in cases {
        let (code, answer) = app.post(&app.hook_url("h"), *body).await;
        assert_eq!(code, 400, "{body}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(why), "{body}: {msg}");
    }
    let rows = app.rows().await;
    assert_eq!(rows.len(), cases.len());
    for row in rows {
        assert_eq!(row.status, "rejected");
        assert!(cases.iter().any(|(b, _)| row.body_text() == *b));
        assert!(row.error.is_some());
    }
}

#[tokio::test]
async fn wrong_or_missing_token_is_401_bad_bridge_400_unconfigured_503() {
    let app = TestApp::start(&[], Some(TOKEN)).await;
    let body = serde_json::to_vec(&example(EventType::Connected)).unwrap();
    for url in [
        format!("{}/wabridges/hooks/h?token=wrong", app.base),
        format!("{}/wabridges/hooks/h?token={TOKEN}x", app.base),
        format!("{}/wabridges/hooks/h", app.base),
    ] {
        let (code, answer) = app.post(&url, body.clone()).await;
        assert_eq!(code, 401, "{url}");
        assert_eq!(answer["field"], "token");
    }
    let (code, answer) = app.post(&app.hook_url("bad%20name"), body.clone()).await;
    assert_eq!((code, answer["field"].as_str()), (400, Some("bridge")));
    let rows = app.rows().await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.status == "rejected"));
    assert!(
        rows.iter().all(|r| !r.route.contains(TOKEN)),
        "the token never reaches the audit log"
    );

    let unconfigured = TestApp::start(&[], None).await;
    let (code, answer) = unconfigured.post(&unconfigured.hook_url("h"), body).await;
    assert_eq!(code, 503);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("SWITCHBOARD_WABRIDGES_TOKEN")
    );
}

#[tokio::test]
async fn call_incoming_then_terminated_is_one_call_with_a_duration_in_either_order() {
    let app = TestApp::start(&[], Some(TOKEN)).await;
    let s = app.sender("calls");
    let incoming = |id: &str, ts: i64| json!({"event":"call_incoming","call_id":id,"contact_id":"15550004321@s.whatsapp.net","platform":"iphone","timestamp":ts});
    let terminated = |id: &str, ts: i64, reason: &str| json!({"event":"call_terminated","call_id":id,"contact_id":"15550004321@s.whatsapp.net","reason":reason,"timestamp":ts});
    s.send(&incoming("IN-ORDER", 1000)).await.unwrap();
    s.send(&terminated("IN-ORDER", 1042, "hangup"))
        .await
        .unwrap();
    // Delivery order is not call order: the end may be processed first.
    s.send(&terminated("REVERSED", 2030, "decline"))
        .await
        .unwrap();
    s.send(&incoming("REVERSED", 2000)).await.unwrap();
    s.send(&incoming("RINGING", 3000)).await.unwrap();
    with_workers(&app.core, app.registry(), async {
        eventually("processed", 20, || async {
            app.statuses().await.get("processed") == Some(&5)
        })
        .await;
    })
    .await;
    let calls = app.api("/api/wabridges/bridges/calls/calls").await;
    let by_id: HashMap<&str, &Value> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["call_id"].as_str().unwrap(), c))
        .collect();
    assert_eq!(by_id.len(), 3);
    assert_eq!(by_id["IN-ORDER"]["duration_secs"], 42);
    assert_eq!(by_id["IN-ORDER"]["state"], "ended");
    assert_eq!(by_id["REVERSED"]["duration_secs"], 30);
    assert_eq!(by_id["REVERSED"]["reason"], "decline");
    assert_eq!(by_id["REVERSED"]["platform"], "iphone");
    assert_eq!(by_id["RINGING"]["state"], "ringing");
    assert_eq!(by_id["RINGING"]["duration_secs"], Value::Null);
}

/// Pages follow one another without gaps or overlaps, newest first by the sender's time.
#[tokio::test]
async fn messages_page_by_cursor() {
    let app = TestApp::start(&[], Some(TOKEN)).await;
    let s = app.sender("p");
    for i in 0..7 {
        let mut m = example(EventType::Message);
        m["message_id"] = json!(format!("M{i}"));
        // Two share a second: the cursor must split ties.
        m["timestamp"] = json!(1_777_180_000 + (i / 2));
        s.send(&m).await.unwrap();
    }
    with_workers(&app.core, app.registry(), async {
        eventually("processed", 20, || async {
            app.statuses().await.get("processed") == Some(&7)
        })
        .await;
    })
    .await;
    let mut seen = Vec::new();
    let mut path = "/api/wabridges/bridges/p/messages?limit=3".to_string();
    loop {
        let page = app.api(&path).await;
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["message_id"].as_str().unwrap().to_string());
        }
        match page["next_before"].as_str() {
            Some(c) => path = format!("/api/wabridges/bridges/p/messages?limit=3&before={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["M6", "M5", "M4", "M3", "M2", "M1", "M0"]);
    let chat = app
        .api("/api/wabridges/bridges/p/messages?chat_id=nobody@s.whatsapp.net")
        .await;
    assert_eq!(chat["messages"], json!([]));
}

/// A subscriber down longer than the queue's retry schedule gets every event, once, signed,
/// when it comes back: the forwards dead-letter during the outage and the redelivery task
/// (run by the scheduler every two minutes) puts them back.
#[tokio::test]
async fn a_subscriber_down_then_up_gets_every_event_once_with_valid_signatures() {
    let (sub, url) = Subscriber::start().await;
    let (msgs, msgs_url) = Subscriber::start().await;
    let app = TestApp::start(&[(&url, &[]), (&msgs_url, &["message"])], Some(TOKEN)).await;
    sub.set_down(true);
    msgs.set_down(true);
    let mut traffic = Traffic::new(42).duplicate_ratio(0.1).unknown_ratio(0.05);
    let report = app.sender("outage").run(&mut traffic, 40, 0, 8).await;
    assert_eq!(report.acked_200, 40, "{report:?}");

    let core = app.core.clone();
    with_workers(&app.core, app.registry(), async {
        eventually("every forward dead-lettered by the outage", 60, || async {
            core.jobs.make_due_now().await.unwrap();
            let st = core.jobs.stats().await.unwrap();
            st.dead > 0 && st.pending == 0 && st.running == 0
        })
        .await;
        assert!(sub.refused() >= 5, "attempts were made during the outage");
        assert!(sub.received().is_empty());

        sub.set_down(false);
        msgs.set_down(false);
        let n = wabridges_hooks::forward::redeliver_dead_forwards(&core)
            .await
            .unwrap();
        assert!(n > 0);
        eventually("delivered after the outage", 30, || async {
            core.jobs.stats().await.unwrap().dead == 0 && app.idle().await
        })
        .await;
    })
    .await;

    // What should have arrived: every event stored as new (not the duplicates).
    let stored: Vec<_> = app
        .rows()
        .await
        .into_iter()
        .filter(|r| r.status != "duplicate")
        .collect();
    assert!(stored.len() < 40, "the traffic had duplicates");
    let expect = |only_messages: bool| -> BTreeMap<String, Vec<u8>> {
        stored
            .iter()
            .filter(|r| !only_messages || events::parse(&r.body).unwrap().event_type() == "message")
            .map(|r| (format!("evt_{}", r.id), r.body.clone()))
            .collect()
    };
    for (s, only_messages) in [(&sub, false), (&msgs, true)] {
        let mut got = BTreeMap::new();
        for (headers, body) in s.received() {
            let id = verify(&headers, &body).unwrap();
            assert!(
                got.insert(id.clone(), body.to_vec()).is_none(),
                "{id} delivered twice"
            );
        }
        assert_eq!(got, expect(only_messages));
    }
}
