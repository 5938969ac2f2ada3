//! wabridges hooks end to end: the product wired in-process on a fresh database, events from
//! the sandbox's wabridges sender, the state read back through the admin API.

use sandbox::wabridges::{EventType, Sender, example};
use serde_json::{Value, json};
use switchboard_core::testing::fresh_database_url;

use crate::support::{Workers, eventually, serve_in_process};

#[tokio::test]
async fn events_posted_to_the_binary_end_up_in_the_state_api() {
    let (database_url, _db_dir) = fresh_database_url().await;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url.as_str()),
        ("SWITCHBOARD_WABRIDGES_TOKEN", "e2e-hook-token"),
        ("SWITCHBOARD_ADMIN_TOKEN", "e2e-admin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let server = serve_in_process(&env, Workers::InProcess).await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["bridges"]["wabridges"]["configured"], true);

    let sender = Sender::new(&format!(
        "{base}/wabridges/hooks/front-desk?token=e2e-hook-token"
    ));
    for t in [
        EventType::Connected,
        EventType::Message,
        EventType::CallIncoming,
        EventType::CallTerminated,
    ] {
        assert_eq!(sender.send(&example(t)).await.unwrap(), 200);
    }
    // A re-send is acknowledged like the original and changes nothing.
    assert_eq!(
        sender.send(&example(EventType::Message)).await.unwrap(),
        200
    );
    let wrong = Sender::new(&format!("{base}/wabridges/hooks/front-desk?token=nope"));
    assert_eq!(wrong.send(&example(EventType::Message)).await.unwrap(), 401);

    let api = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            http.get(url)
                .bearer_auth("e2e-admin")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    eventually("the call is processed", 30, || async {
        api("/api/wabridges/bridges/front-desk/calls").await["calls"][0]["duration_secs"] == 115
    })
    .await;
    // Events are processed concurrently: the call being done says nothing about the others.
    eventually("every event processed", 30, || async {
        let h: Value = http
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        h["queue"]["depth"] == 0 && h["queue"]["running"] == 0
    })
    .await;
    let bridges = api("/api/wabridges/bridges").await;
    assert_eq!(bridges["bridges"][0]["bridge"], "front-desk");
    assert_eq!(bridges["bridges"][0]["connection"], "connected");
    assert_eq!(bridges["bridges"][0]["phone"], "15550001234");
    let messages = api("/api/wabridges/bridges/front-desk/messages").await;
    assert_eq!(messages["messages"].as_array().unwrap().len(), 1);
    assert_eq!(messages["messages"][0]["body"], "Hello!");
    let contacts = api("/api/wabridges/bridges/front-desk/contacts").await;
    assert_eq!(contacts["contacts"][0]["name"], json!("Alice"));
}

/// A wabridges event whose forward to a subscriber fails is not `processed`: `processing` with
/// the subscriber's error while the forward is retried, `failed` once it is a dead letter, and
/// `processed` after the subscriber is back and the forward is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_forward_fails_is_not_processed_until_the_forward_is() {
    use crate::support::{bind, wabridges_message, world::*};

    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let bound = bind();
    let base = bound.base.clone();
    let world = World::start(dir.path(), &url, &base).await;
    let _server = bound.serve(&world.env, Workers::InProcess).await;
    let http = reqwest::Client::new();
    let status = || {
        let req = http
            .get(format!("{base}/api/events?source=wabridges"))
            .bearer_auth(ADMIN_TOKEN);
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["events"][0].clone()
        }
    };

    world.subscriber.set_down(true);
    let acked = http
        .post(format!("{base}/wabridges/hooks/b1?token={WABRIDGES_TOKEN}"))
        .header("content-type", "application/json")
        .body(wabridges_message(1))
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status(), 200);
    // While the forward runs the event is `processing` too; once it has failed, with its error.
    eventually("the forward is being retried", 30, || async {
        let event = status().await;
        event["status"] == "processing"
            && event["error"]
                .as_str()
                .is_some_and(|e| e.contains("subscriber unavailable"))
    })
    .await;
    let event = status().await;
    assert_eq!(event["stored_status"], "processed");
    let forward = event["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "wabridges-hooks.forward-event")
        .expect("the event links its forward");
    assert_eq!(forward["state"], "retrying", "{event}");
    // One attempt after another, each made due once its failure is recorded (each time travel
    // opens connections of its own: once per attempt, not on every poll).
    let forward = || async {
        let event = status().await;
        let attempts = event["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "wabridges-hooks.forward-event")
            .map(|j| (j["state"].clone(), j["attempts"].as_i64().unwrap()));
        (event["status"].clone(), attempts)
    };
    let mut failed_attempts = 0;
    while forward().await.0 != "failed" {
        eventually("the next attempt has failed", 30, || async {
            match forward().await {
                (status, _) if status == "failed" => true,
                (_, Some((state, attempts))) => state == "retrying" && attempts > failed_attempts,
                _ => false,
            }
        })
        .await;
        if let (_, Some((_, attempts))) = forward().await {
            failed_attempts = attempts;
        }
        assert!(
            failed_attempts <= switchboard_core::jobs::MAX_ATTEMPTS as i64,
            "more attempts than the schedule allows"
        );
        world.make_retries_due().await;
    }

    world.subscriber.set_down(false);
    let out = world.cli(dir.path(), &["jobs", "retry", "all"]).await;
    assert!(out.status.success());
    eventually("the forward is delivered", 30, || async {
        world.subscriber.counts().0 == 1
    })
    .await;
    eventually("the event is processed", 30, || async {
        status().await["status"] == "processed"
    })
    .await;
}
