//! `kill -9` while customers write to two WhatsApp numbers, each on its own Open Channel
//! line, and operators answer in both: after the restart every acknowledged message is in its
//! number's line and every acknowledged reply left from its line's number. Runs on SQLite and
//! PostgreSQL.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::support::*;
use switchboard_core::testing::fresh_database_url;

/// `kill -9` while customers write to two WhatsApp numbers and operators answer in both
/// numbers' Open Channel lines, restart on the same port, and check every acknowledged message
/// and reply went the right way: each inbound message in its number's line (never the other),
/// each reply sent from its line's number, one lead per customer, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_mixed_traffic_to_two_channels() {
    use sandbox::{
        bitrix::{BitrixConfig, ChatMessage, FakeBitrix},
        meta::{BusinessNumber, Customer, FakeMeta, InboundMessage, MetaConfig},
    };
    use std::collections::HashMap;

    const SUPPORT: &str = "112233445566778";
    const SALES: &str = "998877665544332";
    /// Line of each number, as the config file binds them.
    const LINES: [(&str, i64); 2] = [(SUPPORT, 3), (SALES, 5)];
    const N: usize = 160;
    const CUSTOMERS: usize = 6;

    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // No status webhooks: the reply path is asserted at the fake Meta's send log.
    let meta = FakeMeta::start(MetaConfig {
        auto_statuses: false,
        extra_numbers: vec![BusinessNumber::new(SALES, "4930999888777")],
        ..MetaConfig::default()
    })
    .await;
    let bitrix = FakeBitrix::start(BitrixConfig {
        extra_lines: vec![5],
        ..BitrixConfig::default()
    })
    .await;
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[[bitrix.channels]]\nphone_number_id = \"{SUPPORT}\"\nline_id = 3\nname = \"Support\"\n\
             [[bitrix.channels]]\nphone_number_id = \"{SALES}\"\nline_id = 5\nname = \"Sales\"\n"
        ),
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", url.clone()),
        ("SWITCHBOARD_CONFIG", config.display().to_string()),
        ("SWITCHBOARD_PUBLIC_URL", base.clone()),
        (
            "SWITCHBOARD_MASTER_KEY",
            switchboard_core::credentials::generate_master_key(),
        ),
        ("SWITCHBOARD_META_VERIFY_TOKEN", "verify".into()),
        ("SWITCHBOARD_ADMIN_TOKEN", "two-channels-admin".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(sandbox::harness::fakes_env(&meta, &bitrix))
    .collect();
    let mut first = spawn_on(dir.path(), "first", port, &["serve"], &env);
    healthy(&first).await;
    let installed = bitrix.install_into(&format!("{base}/bitrix/install")).await;
    assert_eq!(installed.status, Some(200), "{}", installed.body);
    for args in [
        ["bitrix", "register-connector"],
        ["bitrix", "activate-connector"],
    ] {
        let out = cli(dir.path(), &env, &args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if args[1] == "activate-connector" {
            assert!(
                stdout.contains("active on line 3") && stdout.contains("active on line 5"),
                "{stdout}"
            );
        }
    }
    meta.set_webhook_target(format!("{base}/webhook/whatsapp"));

    // Every customer writes to both numbers first: both dialogs exist for replies and both
    // windows are open.
    let customers: Arc<Vec<Customer>> = Arc::new(
        (0..CUSTOMERS)
            .map(|c| Customer::new(format!("4917{c:08}"), format!("Kunde Nummer{c}")))
            .collect(),
    );
    for c in customers.iter() {
        for (number, _) in LINES {
            let hooks = meta.webhooks();
            let payload = hooks
                .payload_to(number)
                .message(c, InboundMessage::text("hallo"));
            assert_eq!(hooks.deliver(&payload).await.unwrap().status(), 200);
        }
    }
    // Customer messages in Bitrix by wamid: the lines each arrived in.
    let inbound_lines = |bitrix: &FakeBitrix| {
        let mut by_wamid: HashMap<String, Vec<i64>> = HashMap::new();
        for chat in bitrix.chats() {
            for m in chat.messages {
                if let ChatMessage::Customer(c) = m {
                    by_wamid
                        .entry(c.external_id.unwrap_or_default())
                        .or_default()
                        .push(chat.line);
                }
            }
        }
        by_wamid
    };
    eventually("warm-up dialogs on both lines", 60, || async {
        inbound_lines(&bitrix).len() == 2 * CUSTOMERS && bitrix.leads().len() == CUSTOMERS
    })
    .await;

    let bitrix = Arc::new(bitrix);
    let meta = Arc::new(meta);
    // (wamid, line) of acked inbound messages; (text, number) of acked replies.
    type Acks = (Vec<(String, i64)>, Vec<(String, String)>, usize);
    let acked: Arc<std::sync::Mutex<Acks>> = Arc::default();
    let mut lanes = Vec::new();
    for lane in 0..4 {
        let (acked, meta, bitrix, customers, base) = (
            acked.clone(),
            meta.clone(),
            bitrix.clone(),
            customers.clone(),
            base.clone(),
        );
        lanes.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for i in (lane..N).step_by(4) {
                let c = &customers[(i / 4) % CUSTOMERS];
                let (number, line) = LINES[i % 2];
                let ok = if i % 4 < 2 {
                    let hooks = meta.webhooks();
                    let payload = hooks
                        .payload_to(number)
                        .message(c, InboundMessage::text(format!("message {i}")));
                    let body = payload.to_bytes();
                    let r = http
                        .post(format!("{base}/webhook/whatsapp"))
                        .header("content-type", "application/json")
                        .header("x-hub-signature-256", hooks.sign(&body))
                        .body(body)
                        .send()
                        .await;
                    let ok = r.is_ok_and(|r| r.status() == 200);
                    if ok {
                        acked
                            .lock()
                            .unwrap()
                            .0
                            .push((payload.wamids().remove(0), line));
                    }
                    ok
                } else {
                    let text = format!("reply R{i}");
                    let reply = bitrix
                        .operator_reply_on(line, &c.wa_id, &text, Vec::new())
                        .await;
                    let ok = reply.status() == Some(200);
                    if ok {
                        acked.lock().unwrap().1.push((text, number.to_string()));
                    }
                    ok
                };
                if !ok {
                    acked.lock().unwrap().2 += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let count = |a: &Acks| a.0.len() + a.1.len();
    eventually("a third of the load acknowledged", 60, || async {
        count(&acked.lock().unwrap()) >= N / 3
    })
    .await;
    first.kill9();
    let killed_at = Instant::now();
    let killed_at_ms = switchboard_core::db::now_ms();
    let at_kill = count(&acked.lock().unwrap());
    let second = spawn_on(dir.path(), "second", port, &["serve"], &env);
    healthy(&second).await;
    for l in lanes {
        l.await.unwrap();
    }
    let (inbound_acked, replies_acked, refused) = std::mem::take(&mut *acked.lock().unwrap());
    assert!(at_kill < N, "the kill happened mid-load");
    assert_eq!(inbound_acked.len() + replies_acked.len() + refused, N);

    let sent_from = |meta: &FakeMeta| {
        let mut by_text: HashMap<String, Vec<String>> = HashMap::new();
        for m in meta.sent_messages() {
            by_text
                .entry(m.body["text"]["body"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(m.from_phone_number_id);
        }
        by_text
    };
    // Retries after the restart wait out their backoff; skip the wait past the inbox claim
    // lease (30 s) and the CRM claim staleness (60 s), as the three-bridge test does.
    let travel = || async {
        let db = switchboard_core::Db::connect(&url).await.expect("connect");
        switchboard_core::Jobs::new(db.clone())
            .make_due_now()
            .await
            .expect("make jobs due");
        switchboard_core::on_pool!(&db, |p| sqlx::query(
            "UPDATE bitrix_leads SET claimed_at = claimed_at - 61000
             WHERE lead_id IS NULL AND claimed_at < $1"
        )
        .bind(killed_at_ms)
        .execute(p)
        .await
        .map(drop))
        .expect("age lead claims");
        db.close().await;
    };
    let last_travel = std::sync::Mutex::new(Instant::now());
    eventually(
        "every acknowledged message and reply delivered",
        120,
        || async {
            let lines = inbound_lines(&bitrix);
            let sends = sent_from(&meta);
            let done = inbound_acked.iter().all(|(w, _)| lines.contains_key(w))
                && replies_acked.iter().all(|(t, _)| sends.contains_key(t));
            if !done
                && killed_at.elapsed() > Duration::from_secs(32)
                && last_travel.lock().unwrap().elapsed() > Duration::from_secs(2)
            {
                travel().await;
                *last_travel.lock().unwrap() = Instant::now();
            }
            done
        },
    )
    .await;

    let lines = inbound_lines(&bitrix);
    let sends = sent_from(&meta);
    for (wamid, line) in &inbound_acked {
        let seen = &lines[wamid];
        assert!(
            seen.iter().all(|l| l == line),
            "{wamid} for line {line} arrived in lines {seen:?}"
        );
    }
    for (text, number) in &replies_acked {
        let from = &sends[text];
        assert!(
            from.iter().all(|n| n == number),
            "{text:?} for {number} sent from {from:?}"
        );
    }
    let repeats: usize = lines.values().map(|l| l.len() - 1).sum::<usize>()
        + sends.values().map(|s| s.len() - 1).sum::<usize>();
    println!(
        "two channels (kill -9 after {at_kill} acks): {} messages and {} replies acked, {refused} refused; \
         {} chats, {} leads, {repeats} repeated effects",
        inbound_acked.len(),
        replies_acked.len(),
        bitrix.chats().len(),
        bitrix.leads().len(),
    );
    assert!(repeats <= 16, "repeats beyond in-flight jobs");
    assert_eq!(
        bitrix.chats().len(),
        2 * CUSTOMERS,
        "one dialog per customer and line"
    );
    assert_eq!(bitrix.leads().len(), CUSTOMERS, "one lead per customer");
    assert_eq!(health(&second).await["queue"]["dead_letters"], 0);

    // A third number of the Meta app, with no channel: answered, relayed nowhere, counted,
    // and a ✗ row on /setup.
    const STRANGER: &str = "555000111222333";
    let hooks = meta.webhooks();
    let payload = hooks
        .payload_to(STRANGER)
        .message(&customers[0], InboundMessage::text("wrong door"));
    assert_eq!(hooks.deliver(&payload).await.unwrap().status(), 200);
    eventually("counted", 20, || async {
        metric(&second, "switchboard_bitrix_unknown_number_total").await == Some(1.0)
    })
    .await;
    let cookie = admin_cookie(&second, "two-channels-admin").await;
    let page = reqwest::Client::new()
        .get(format!("{base}/setup"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("WhatsApp number {STRANGER} has a channel");
    let at = page
        .find(&label)
        .unwrap_or_else(|| panic!("no row for {STRANGER}: {page}"));
    let row_start = page[..at].rfind("<li data-ok=").expect("a row");
    assert!(
        page[row_start..at].starts_with("<li data-ok=\"false\"")
            && page[row_start..at].contains('✗'),
        "not a ✗ row: {}",
        &page[row_start..at]
    );
    for name in ["Support", "Sales"] {
        assert!(
            page.contains(&format!("Open Channel line activated: {name}")),
            "no line row for {name}"
        );
    }
    assert_eq!(inbound_lines(&bitrix).len(), lines.len(), "relayed nowhere");
    // `/` shows each channel's traffic.
    let landing = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sales_in = inbound_lines(&bitrix)
        .values()
        .filter(|l| l[0] == 5)
        .count();
    assert!(
        landing.contains(&format!("Sales (line 5) — last 24 h: {sales_in} in,")),
        "{landing}"
    );
    assert!(!landing.contains(SALES), "no number on the public page");
}
