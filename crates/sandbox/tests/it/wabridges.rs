//! The wabridges sender against the seed: examples verbatim, generated traffic with exactly the
//! documented fields and value forms, determinism, duplicates, and delivery over real HTTP.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use sandbox::wabridges::{EventType, Sender, Traffic, example};
use serde_json::Value;

/// The seed's "Fields:" lines and example payloads, copied by hand from
/// `seeds/wabridges-webhooks.txt` so the crate's own tables are checked against the source.
const SEED: &[(&str, &str, &str)] = &[
    (
        "message",
        "event, message_id, contact_id, phone, chat_id, name, body, type, media_type, is_group, from_me, timestamp",
        r#"{"event":"message","message_id":"ACE41E...","contact_id":"15550001234@s.whatsapp.net","phone":"15550001234","chat_id":"15550001234@s.whatsapp.net","name":"Alice","body":"Hello!","type":"text","media_type":"","is_group":false,"from_me":false,"timestamp":1777180605}"#,
    ),
    (
        "connected",
        "event, phone",
        r#"{"event":"connected","phone":"15550001234"}"#,
    ),
    ("disconnected", "event", r#"{"event":"disconnected"}"#),
    (
        "typing",
        "event, contact_id, chat_id, state, mode",
        r#"{"event":"typing","contact_id":"15550001234@s.whatsapp.net","chat_id":"15550001234@s.whatsapp.net","state":"composing","mode":"text"}"#,
    ),
    (
        "poll_vote",
        "event, contact_id, phone, chat_id, poll_id, message_id, name, from_me, timestamp, selected_options",
        r#"{"event":"poll_vote","contact_id":"15550001234@s.whatsapp.net","phone":"15550001234","chat_id":"15550001234@s.whatsapp.net","poll_id":"ACPOLL0001","message_id":"ACVOTE0001","name":"Alice","from_me":false,"timestamp":1777330500,"selected_options":["Red"]}"#,
    ),
    (
        "event_response",
        "event, contact_id, phone, chat_id, event_id, message_id, name, from_me, timestamp, response, extra_guest_count",
        r#"{"event":"event_response","contact_id":"15550001234@s.whatsapp.net","phone":"15550001234","chat_id":"15550009999@g.us","event_id":"ACEVENT0001","message_id":"ACEVRESP0001","name":"Alice","from_me":false,"timestamp":1777330700,"response":"going","extra_guest_count":0}"#,
    ),
    (
        "call_incoming",
        "event, call_id, contact_id, platform, timestamp",
        r#"{"event":"call_incoming","call_id":"ABCDEF123456","contact_id":"15550001234@s.whatsapp.net","platform":"android","timestamp":1777180605}"#,
    ),
    (
        "call_terminated",
        "event, call_id, contact_id, reason, timestamp",
        r#"{"event":"call_terminated","call_id":"ABCDEF123456","contact_id":"15550001234@s.whatsapp.net","reason":"hangup","timestamp":1777180720}"#,
    ),
    (
        "offline_sync_preview",
        "event, total, messages, notifications, receipts, app_data_changes",
        r#"{"event":"offline_sync_preview","total":142,"messages":120,"notifications":8,"receipts":14,"app_data_changes":0}"#,
    ),
    (
        "offline_sync_completed",
        "event, count",
        r#"{"event":"offline_sync_completed","count":142}"#,
    ),
    (
        "profile_picture_updated",
        "event, remove, picture_id, timestamp",
        r#"{"event":"profile_picture_updated","remove":false,"picture_id":"12345678901","timestamp":1777180605}"#,
    ),
];

fn seed_fields(line: &str) -> Vec<&str> {
    line.split(", ").collect()
}

#[test]
fn examples_and_field_lists_are_the_seeds() {
    assert_eq!(SEED.len(), EventType::ALL.len());
    for (name, fields, payload) in SEED {
        let event_type = EventType::from_name(name).expect(name);
        assert_eq!(event_type.as_str(), *name);
        assert_eq!(
            event_type.fields(),
            seed_fields(fields).as_slice(),
            "{name}"
        );
        let example = example(event_type);
        assert_eq!(
            example,
            serde_json::from_str::<Value>(payload).unwrap(),
            "{name}"
        );
        let keys: BTreeSet<&str> = example
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, seed_fields(fields).into_iter().collect(), "{name}");
    }
}

/// Checks one generated event against the seed's field list and value forms.
fn assert_well_formed(event: &Value) {
    let name = event["event"].as_str().unwrap();
    let event_type = EventType::from_name(name).unwrap_or_else(|| panic!("unknown {name}"));
    let keys: BTreeSet<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected: BTreeSet<&str> = event_type.fields().iter().copied().collect();
    if name == "profile_picture_updated" && event["remove"] == true {
        expected.remove("picture_id");
    }
    assert_eq!(keys, expected, "{event}");

    let str_of = |field: &str| {
        event[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {event}"))
    };
    if keys.contains("timestamp") {
        assert!(
            event["timestamp"].as_u64().unwrap() > 1_600_000_000,
            "{event}"
        );
    }
    if keys.contains("contact_id") {
        let contact_id = str_of("contact_id");
        assert!(contact_id.ends_with("@s.whatsapp.net"), "{event}");
        if keys.contains("phone") {
            assert_eq!(contact_id, format!("{}@s.whatsapp.net", str_of("phone")));
        }
    }
    if keys.contains("chat_id") {
        let chat_id = str_of("chat_id");
        assert!(
            chat_id.ends_with("@s.whatsapp.net") || chat_id.ends_with("@g.us"),
            "{event}"
        );
        if keys.contains("is_group") {
            assert_eq!(
                event["is_group"].as_bool().unwrap(),
                chat_id.ends_with("@g.us")
            );
        }
    }
    for flag in ["from_me", "is_group", "remove"] {
        if keys.contains(flag) {
            assert!(event[flag].is_boolean(), "{event}");
        }
    }
    let one_of = |field: &str, allowed: &[&str]| {
        assert!(allowed.contains(&str_of(field)), "{field}: {event}");
    };
    match name {
        "typing" => {
            one_of("state", &["composing", "paused"]);
            one_of("mode", &["text", "voice"]);
        }
        "call_terminated" => one_of("reason", &["timeout", "hangup", "decline", "busy"]),
        "event_response" => {
            one_of("response", &["going", "not_going", "maybe"]);
            assert!(event["extra_guest_count"].is_u64());
        }
        "poll_vote" => assert!(
            event["selected_options"]
                .as_array()
                .unwrap()
                .iter()
                .all(Value::is_string)
        ),
        "offline_sync_preview" => {
            let n = |f: &str| event[f].as_u64().unwrap();
            let parts = n("messages") + n("notifications") + n("receipts") + n("app_data_changes");
            assert_eq!(n("total"), parts);
        }
        "offline_sync_completed" => assert!(event["count"].is_u64()),
        _ => {}
    }
}

#[test]
fn generated_events_have_exactly_the_documented_fields() {
    for delivery in Traffic::new(11).take(2000) {
        assert_well_formed(&delivery.json());
    }
}

#[test]
fn generation_is_deterministic_per_seed() {
    let bodies = |seed| {
        Traffic::new(seed)
            .duplicate_ratio(0.1)
            .take(300)
            .map(|d| d.body)
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(7), bodies(7));
    assert_ne!(bodies(7), bodies(8));
}

#[test]
fn five_hundred_events_cover_all_eleven_types() {
    for seed in 0..5 {
        let seen: HashSet<String> = Traffic::new(seed).take(500).map(|d| d.event).collect();
        for event_type in EventType::ALL {
            assert!(
                seen.contains(event_type.as_str()),
                "seed {seed}: no {event_type:?}"
            );
        }
    }
}

#[test]
fn events_agree_with_one_another() {
    let events: Vec<Value> = Traffic::new(3).take(3000).map(|d| d.json()).collect();
    let mut ringing = HashMap::new();
    let mut terminated = 0;
    let mut syncing: Option<u64> = None;
    for event in &events {
        match event["event"].as_str().unwrap() {
            "call_incoming" => {
                ringing.insert(event["call_id"].clone(), event.clone());
            }
            "call_terminated" => {
                let rang = ringing
                    .remove(&event["call_id"])
                    .expect("terminated call rang first");
                assert_eq!(rang["contact_id"], event["contact_id"]);
                assert!(event["timestamp"].as_u64() >= rang["timestamp"].as_u64());
                terminated += 1;
            }
            "offline_sync_preview" => syncing = event["total"].as_u64(),
            "offline_sync_completed" => {
                assert_eq!(
                    syncing.take(),
                    event["count"].as_u64(),
                    "completed follows its preview"
                );
            }
            _ => {}
        }
    }
    assert!(terminated > 0);

    let message_ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e.get("message_id").and_then(Value::as_str))
        .collect();
    let unique: HashSet<&str> = message_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        message_ids.len(),
        "without duplicates every message id is new"
    );
}

#[test]
fn duplicates_appear_at_the_configured_ratio_and_repeat_earlier_bytes() {
    let deliveries: Vec<_> = Traffic::new(5).duplicate_ratio(0.1).take(4000).collect();
    let duplicates = deliveries.iter().filter(|d| d.duplicate).count();
    assert!(
        (320..=480).contains(&duplicates),
        "{duplicates} duplicates in 4000"
    );

    let mut seen = HashSet::new();
    for delivery in &deliveries {
        if delivery.duplicate {
            assert!(
                seen.contains(&delivery.body),
                "a duplicate repeats an earlier body"
            );
        }
        seen.insert(delivery.body.clone());
    }
    assert!(Traffic::new(5).take(2000).all(|d| !d.duplicate));
}

#[test]
fn unknown_event_types_only_on_request() {
    let known = |d: &sandbox::wabridges::Delivery| EventType::from_name(&d.event).is_some();
    assert!(Traffic::new(9).take(1000).all(|d| known(&d)));
    let unknown: Vec<Value> = Traffic::new(9)
        .unknown_ratio(0.2)
        .take(1000)
        .filter(|d| !known(d))
        .map(|d| d.json())
        .collect();
    assert!(unknown.len() > 100, "{}", unknown.len());
    assert!(unknown.iter().all(|e| e["event"].is_string()));
}

#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<AtomicUsize>,
    json_typed: Arc<AtomicUsize>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.hits.fetch_add(1, Ordering::SeqCst);
    if headers
        .get("content-type")
        .is_some_and(|v| v == "application/json")
    {
        r.json_typed.fetch_add(1, Ordering::SeqCst);
    }
    let event: Value = serde_json::from_slice(&body).unwrap();
    // Refuse one type so the report has something other than 200 to count.
    if event["event"] == "typing" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

#[tokio::test]
async fn run_delivers_every_event_and_counts_the_answers() {
    let receiver = Receiver::default();
    let served = sandbox::serve(
        Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone()),
    )
    .await;
    let sender = Sender::new(&format!("{}/hook?token=s3cret", served.url()));

    let expected_typing = Traffic::new(21)
        .take(200)
        .filter(|d| d.event == "typing")
        .count();
    let report = sender.run(&mut Traffic::new(21), 200, 2000, 8).await;

    assert_eq!(report.sent, 200);
    assert_eq!(report.errors, 0);
    assert_eq!(
        report.non_200_by_status.get(&503).copied().unwrap_or(0),
        expected_typing
    );
    assert_eq!(report.acked_200 + expected_typing, 200);
    assert_eq!(report.dropped.len(), expected_typing);
    assert_eq!(report.latencies.len(), 200);
    assert!(report.percentile(0.5).unwrap() <= report.percentile(0.99).unwrap());
    assert_eq!(receiver.hits.load(Ordering::SeqCst), 200);
    assert_eq!(receiver.json_typed.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn a_slow_handler_loses_the_event_and_is_never_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/hook",
        post(|State(hits): State<Arc<AtomicUsize>>| async move {
            hits.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            StatusCode::OK
        }),
    );
    let served = sandbox::serve(app.with_state(hits.clone())).await;
    let sender =
        Sender::new(&format!("{}/hook", served.url())).with_timeout(Duration::from_millis(150));

    let report = sender.run(&mut Traffic::new(1), 3, 0, 3).await;
    assert_eq!((report.sent, report.errors, report.timed_out), (3, 3, 3));
    assert_eq!(report.dropped, vec![1, 2, 3]);
    // Any retry would have been sent by now: the sender is idle once `run` returns.
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[test]
#[should_panic(expected = "loopback only")]
fn sender_refuses_non_loopback_urls() {
    Sender::new("https://yourbackend.com/hook");
}
