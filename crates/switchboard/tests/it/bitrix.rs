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
    assert!(text(&out.stdout).contains("bound OnImConnectorMessageAdd"));
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

    meta.set_webhook_target(format!("{base}/webhook/whatsapp"));
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
