//! The PBX bridge through the real `switchboard serve`: the MSG91 click-to-call from a flow
//! reaches the fake AstraPBX, the answer comes back unchanged, `/health` and `/metrics` show the
//! bridge, and the JSON log has the bridge's lines but neither the secret nor the JWT. A process
//! of its own, because its log is under test. Runs on SQLite, or PostgreSQL with
//! SWITCHBOARD_TEST_DATABASE=postgres.

use sandbox::pbx::FakePbx;
use serde_json::{Value, json};
use switchboard_core::testing::fresh_database_url;

use crate::support::{healthy, spawn};

const KEY: &str = "org_1938b5c0e7a4";
const SECRET: &str = "secret_e2e_Vb41x";

#[tokio::test]
async fn msg91_click_to_call_through_the_binary() {
    let pbx = FakePbx::start().await;
    pbx.add_org(KEY, SECRET, "GrandEstancia");
    let dir = tempfile::tempdir().unwrap();
    let (database_url, _keep) = fresh_database_url().await;
    let env = [
        ("DATABASE_URL".to_string(), database_url),
        ("SWITCHBOARD_PBX_BASE_URL".to_string(), pbx.url()),
    ];
    let server = spawn(dir.path(), "switchboard", &["serve"], &env);
    healthy(&server).await;
    let log = server.log.clone();
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

    // The Connection_Api_1 body, as MSG91 posts it for the "Front Office" button.
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
