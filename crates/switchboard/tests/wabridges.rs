//! wabridges hooks end to end (issue 4): the real `switchboard serve` on a fresh database,
//! events from the sandbox's wabridges sender, the state read back through the admin API.
//! Self-contained: the shared helpers in `common/` belong to the fault tests.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sandbox::wabridges::{EventType, Sender, example};
use serde_json::{Value, json};
use switchboard_core::testing::fresh_database_url;

/// Kills the child on drop, so a failing assertion leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

#[tokio::test]
async fn events_posted_to_the_binary_end_up_in_the_state_api() {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, _db_dir) = fresh_database_url().await;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &database_url)
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_WABRIDGES_TOKEN", "e2e-hook-token")
            .env("SWITCHBOARD_ADMIN_TOKEN", "e2e-admin")
            .env("SWITCHBOARD_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn switchboard"),
    );
    let http = reqwest::Client::new();
    until("/health answers 200", 30, || async {
        matches!(http.get(format!("{base}/health")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
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
    until("the call is processed", 30, || async {
        api("/api/wabridges/bridges/front-desk/calls").await["calls"][0]["duration_secs"] == 115
    })
    .await;
    // Events are processed concurrently: the call being done says nothing about the others.
    until("every event processed", 30, || async {
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
