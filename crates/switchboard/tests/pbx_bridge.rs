//! The PBX bridge through the real `switchboard serve` (issue 3): the seed's click-to-call from an
//! MSG91 flow reaches the fake AstraPBX, the answer comes back unchanged, `/health` and
//! `/metrics` show the bridge, and the JSON log has the seed's lines but neither the secret nor
//! the JWT. Runs on SQLite, or PostgreSQL with SWITCHBOARD_TEST_DATABASE=postgres.

use std::{
    fs::File,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sandbox::pbx::FakePbx;
use serde_json::{Value, json};
use switchboard_core::testing::fresh_database_url;

const KEY: &str = "org_1938b5c0e7a4";
const SECRET: &str = "secret_e2e_Vb41x";

/// Kills the server when the test ends, however it ends.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `switchboard serve` with only `env` set, its log going to `log`, once `/health` answers.
async fn serve(dir: &Path, env: &[(&str, &str)], log: &Path) -> Server {
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SWITCHBOARD_LISTEN", &listen)
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .expect("spawn switchboard serve");
    let server = Server {
        child,
        base: format!("http://{listen}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/health", server.base)).await
            && r.status() == 200
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "switchboard did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn msg91_click_to_call_through_the_binary() {
    let pbx = FakePbx::start().await;
    pbx.add_org(KEY, SECRET, "GrandEstancia");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("switchboard.log");
    let (database_url, _keep) = fresh_database_url().await;
    let server = serve(
        dir.path(),
        &[
            ("DATABASE_URL", &database_url),
            ("SWITCHBOARD_PBX_BASE_URL", &pbx.url()),
        ],
        &log,
    )
    .await;
    let http = reqwest::Client::new();

    let health: Value = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["bridges"]["pbx"]["configured"], true, "{health}");

    // The seed's Connection_Api_1 body, as MSG91 posts it for the "Front Office" button.
    let msg91 = json!({
        "api_key": KEY,
        "api_secret": SECRET,
        "endpoint": "/api/v1/calls/click-to-call",
        "body": {
            "from": "9876543210", "from_type": "external", "to": "5001", "to_type": "queue",
            "caller_id": "08065978002", "timeout": 30
        }
    });
    for _ in 0..2 {
        let response = http
            .post(format!("{}/whatsapp-bridge", server.base))
            .json(&msg91)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-request-id"));
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "initiated", "{answer}");
    }
    let calls = pbx.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].from.as_str(), calls[0].to.as_str()),
        ("9876543210", "5001")
    );
    assert_eq!(pbx.login_count(KEY), 1);

    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "switchboard_pbx_logins_total{outcome=\"ok\"} 1",
        "switchboard_pbx_token_cache_hits_total 1",
        "switchboard_pbx_forwarded_total{status=\"200\"} 2",
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }

    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    for expected in [
        "[BRIDGE] ➜ POST /api/v1/calls/click-to-call | org: org_1938b...",
        "JWT token cached for org: GrandEstancia",
        "[BRIDGE] ✓ 200 | POST /api/v1/calls/click-to-call | org: org_1938b...",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "no log line starting {expected:?} in:\n{text}"
        );
    }
    let jwt = pbx.recorder().matching("/api/v1/calls/click-to-call")[0]
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    for leak in [SECRET, jwt.as_str()] {
        assert!(!text.contains(leak), "the log contains {leak:?}:\n{text}");
    }
}
