//! The Bitrix24 connector through the real binary: install, the `bitrix` / `whatsapp` CLI
//! commands, and persist-before-ack across a `kill -9`.

use sandbox::{
    bitrix::{BitrixConfig, ChatMessage, FakeBitrix},
    meta::{Customer, FakeMeta, InboundMessage, MetaConfig},
};
use switchboard_core::{credentials::generate_master_key, testing::fresh_database_url};

use crate::support::{cli, eventually, free_port, healthy, spawn_on};

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn customer_messages(bitrix: &FakeBitrix, wa_id: &str) -> usize {
    bitrix
        .messages_in_chat(wa_id)
        .iter()
        .filter(|m| matches!(m, ChatMessage::Customer(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_message_survives_kill_9_and_is_delivered_after_restart() {
    let meta = FakeMeta::start(MetaConfig::default()).await;
    let bitrix = FakeBitrix::start(BitrixConfig::default()).await;
    let (database_url, _db_dir) = fresh_database_url().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url),
        ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
        ("SWITCHBOARD_PUBLIC_URL", base.clone()),
        ("SWITCHBOARD_MASTER_KEY", generate_master_key()),
        ("SWITCHBOARD_META_VERIFY_TOKEN", "verify".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(sandbox::harness::fakes_env(&meta, &bitrix))
    .collect();

    // HTTP only: whatever it acknowledges is not processed by this process.
    let mut first = spawn_on(dir.path(), "first", port, &["serve", "--no-workers"], &env);
    healthy(&first).await;
    let installed = bitrix.install_into(&format!("{base}/bitrix/install")).await;
    assert_eq!(installed.status, Some(200), "{}", installed.body);
    assert!(installed.body.contains("WhatsApp bridge installed"));

    let out = cli(dir.path(), &env, &["bitrix", "register-connector"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The install registered the connector already; the command does it again, harmlessly.
    assert!(text(&out.stdout).contains("OnImConnectorMessageAdd → "));
    let bound = bitrix.bound_events();
    assert_eq!(bound[0].handler, format!("{base}/bitrix/events"));
    let out = cli(dir.path(), &env, &["bitrix", "activate-connector"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("STATUS:true, CONFIGURED:true"));

    let out = cli(dir.path(), &env, &["whatsapp", "check-token"]).await;
    assert!(
        text(&out.stdout).starts_with("OK — token is valid."),
        "{}",
        text(&out.stderr)
    );
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "SWITCHBOARD_META_ACCESS_TOKEN");
    bad.push(("SWITCHBOARD_META_ACCESS_TOKEN".into(), "EAAexpired".into()));
    let out = cli(dir.path(), &bad, &["whatsapp", "check-token"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("190") && text(&out.stderr).contains("System User token"),
        "{}",
        text(&out.stderr)
    );

    // Meta's side from a shell: the app subscribed to the WABA, the webhook registered (Meta
    // verifies it against the running server).
    let mut ids = env.clone();
    ids.push((
        "SWITCHBOARD_META_WABA_ID".into(),
        meta.config().waba_id.clone(),
    ));
    ids.push((
        "SWITCHBOARD_META_APP_ID".into(),
        meta.config().app_id.clone(),
    ));
    for (args, says) in [
        (
            ["whatsapp", "subscribe-waba"],
            "subscribed to WhatsApp Business Account",
        ),
        (["whatsapp", "register-webhook"], "Meta verified"),
    ] {
        let out = cli(dir.path(), &ids, &args).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains(says), "{}", text(&out.stdout));
    }
    assert_eq!(
        meta.webhook_target().as_deref(),
        Some(format!("{base}/webhook/whatsapp").as_str())
    );
    let anna = Customer::new("4917612345678", "Anna Schmidt");
    let sent = meta
        .webhooks()
        .send_inbound(&anna, InboundMessage::text("before the crash"))
        .await
        .unwrap();
    assert_eq!(sent.status, 200);
    first.kill9();
    assert_eq!(customer_messages(&bitrix, &anna.wa_id), 0);

    let second = spawn_on(dir.path(), "second", port, &["serve"], &env);
    healthy(&second).await;
    eventually("delivered after restart", 30, || async {
        customer_messages(&bitrix, &anna.wa_id) == 1 && bitrix.leads().len() == 1
    })
    .await;
    let health: serde_json::Value = reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
}

/// A Meta message that arrives before the Bitrix24 app is installed: its relay dies at once
/// ("Bitrix24 app is not installed"), and the event says `failed` with that error and a link
/// to the job, `/health` says the connector is degraded (and still answers 200). Installed,
/// and the job retried with the CLI, the message reaches Bitrix24 and the event is `processed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_dead_letter_fails_its_event_until_a_retry_succeeds() {
    use crate::support::{Workers, bind, world::*};

    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let bound = bind();
    let base = bound.base.clone();
    let world = World::start(dir.path(), &url, &base).await;
    let _server = bound.serve(&world.env, Workers::InProcess).await;
    let http = reqwest::Client::new();
    let api = |path: String| {
        let req = http.get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };

    let anna = Customer::new("4917655500042", "Anna Status");
    let (wamid, body, signature) = world.meta_inbound(&anna, "Is my order ready?");
    let acked = http
        .post(format!("{base}/webhook/whatsapp"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status(), 200);
    // Polled through the product's own API: no connections of the test's own.
    eventually("the relay is a dead letter", 30, || async {
        api("/api/jobs".to_string()).await["dead_letters"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    })
    .await;

    let events = api(format!("/api/events?q={wamid}")).await;
    let event = &events["events"][0];
    assert_eq!(event["status"], "failed", "{event}");
    let error = event["error"].as_str().unwrap();
    assert!(error.contains("Bitrix24 app is not installed"), "{error}");
    assert!(!error.contains('{'), "no template left in: {error}");
    let relay = event["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "bitrix-connector.relay-to-bitrix")
        .expect("the event links its relay");
    assert_eq!(relay["state"], "dead letter");
    let job_id = relay["id"].as_str().unwrap().to_string();
    assert!(
        relay["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("#job-{job_id}"))
    );
    let jobs = api(format!(
        "/api/jobs?request={}",
        event["request_id"].as_str().unwrap()
    ))
    .await;
    let linked = jobs["request"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job_id.as_str())
        .expect("the job page lists the event's relay");
    assert!(
        linked["event_url"]
            .as_str()
            .unwrap()
            .starts_with("/admin/events?q=")
    );

    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["bridges"]["bitrix"]["state"], "degraded", "{health}");
    assert!(
        health["bridges"]["bitrix"]["reason"]
            .as_str()
            .unwrap()
            .contains("bitrix-connector.relay-to-bitrix")
    );

    world.install(dir.path(), &base).await;
    let out = world.cli(dir.path(), &["jobs", "retry", &job_id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the retried relay reaches Bitrix24", 30, || async {
        world.bitrix_inbound().contains_key(&wamid)
    })
    .await;
    eventually("the event is processed", 30, || async {
        api(format!("/api/events?q={wamid}")).await["events"][0]["status"] == "processed"
    })
    .await;
    let health: serde_json::Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["bridges"]["bitrix"]["state"], "ready", "{health}");
}
