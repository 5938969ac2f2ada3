//! Two WhatsApp numbers, each on its own Open Channel line: messages land in their number's
//! line, replies go out from their line's number, statuses come back to the right chat, the
//! 24-hour window is per number, the lead is per customer; a number without a channel is
//! answered and not relayed; a database from before channels keeps its chats, windows and
//! leads.

use crate::support::{ANNA, TestApp};
use sandbox::{
    bitrix::ChatMessage,
    harness::eventually,
    meta::{BusinessNumber, Customer, InboundMessage, MetaConfig},
};
use serde_json::{Value, json};
use switchboard_core::{
    on_pool,
    testing::{TestDb, with_workers},
};

/// The fake Meta's main number, bound to line 3 (the fake portal's first line).
const SUPPORT: &str = "112233445566778";
/// A second number of the same account, bound to line 5.
const SALES: &str = "998877665544332";
const SALES_LINE: i64 = 5;

const CHANNELS: &str = r#"
[[bitrix.channels]]
phone_number_id = "112233445566778"
line_id = 3
name = "Support"

[[bitrix.channels]]
phone_number_id = "998877665544332"
line_id = 5
name = "Sales"
"#;

fn anna() -> Customer {
    Customer::new(ANNA, "Anna Schmidt")
}

fn two_numbers() -> MetaConfig {
    MetaConfig {
        extra_numbers: vec![BusinessNumber::new(SALES, "4930999888777")],
        ..MetaConfig::default()
    }
}

/// Both numbers configured as channels; installed, registered and active on both lines.
async fn two_channels() -> TestApp {
    let app = TestApp::start_with_file(two_numbers(), CHANNELS).await;
    app.bitrix.add_line(SALES_LINE);
    app.ready().await;
    app
}

/// Anna writes `text` to `number`, sent `age_secs` ago.
async fn write_to(app: &TestApp, number: &str, text: &str, age_secs: u64) -> u16 {
    let hooks = app.meta.webhooks();
    let at = app.meta.now() - age_secs;
    let payload = hooks
        .payload_to(number)
        .message(&anna(), InboundMessage::text(text).at(at));
    hooks.deliver(&payload).await.unwrap().status().as_u16()
}

fn customer_texts(app: &TestApp, line: i64) -> Vec<String> {
    app.bitrix
        .chat_on(line, ANNA)
        .map(|c| c.messages)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| match m {
            ChatMessage::Customer(c) => c.text,
            _ => None,
        })
        .collect()
}

fn delivered_replies(app: &TestApp, line: i64) -> usize {
    app.bitrix
        .chat_on(line, ANNA)
        .map(|c| c.messages)
        .unwrap_or_default()
        .iter()
        .filter(|m| matches!(m, ChatMessage::Operator(op) if op.delivered_as.is_some()))
        .count()
}

#[tokio::test]
async fn a_message_to_number_b_lands_in_line_b_and_the_reply_goes_out_from_b() {
    let app = two_channels().await;
    with_workers(&app.core, app.registry(), async {
        assert_eq!(
            write_to(&app, SALES, "do you ship to Vienna?", 60).await,
            200
        );
        eventually("the message in the sales line", 20, || async {
            customer_texts(&app, SALES_LINE) == ["do you ship to Vienna?"]
        })
        .await;
        assert!(app.bitrix.chat_on(3, ANNA).is_none(), "nothing in line 3");

        let reply = app
            .bitrix
            .operator_reply_on(SALES_LINE, ANNA, "We do.", vec![])
            .await;
        assert_eq!(reply.status(), Some(200));
        eventually("sent", 20, || async { app.meta.sent_messages().len() == 1 }).await;
        let sent = &app.meta.sent_messages()[0];
        assert_eq!(sent.from_phone_number_id, SALES);
        assert_eq!(sent.body["text"]["body"], "We do.");
        // Meta's statuses come from the sales number: they reach the sales chat's reply.
        eventually("delivered in the sales chat", 20, || async {
            delivered_replies(&app, SALES_LINE) == 1
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_customer_writing_to_both_numbers_has_two_chats_and_one_lead() {
    let app = two_channels().await;
    with_workers(&app.core, app.registry(), async {
        assert_eq!(write_to(&app, SUPPORT, "my parcel is late", 120).await, 200);
        assert_eq!(
            write_to(&app, SALES, "and I want a second one", 60).await,
            200
        );
        eventually("both chats", 20, || async {
            customer_texts(&app, 3) == ["my parcel is late"]
                && customer_texts(&app, SALES_LINE) == ["and I want a second one"]
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        let (a, b) = (
            app.bitrix.chat_on(3, ANNA).unwrap(),
            app.bitrix.chat_on(SALES_LINE, ANNA).unwrap(),
        );
        assert_ne!(a.bitrix_chat_id, b.bitrix_chat_id);
        assert_eq!(app.bitrix.leads().len(), 1, "one lead per customer phone");
        assert_eq!(app.bitrix_calls("crm.lead.add"), 1);

        // Each reply leaves from its own chat's number.
        app.bitrix
            .operator_reply_on(3, ANNA, "support here", vec![])
            .await;
        app.bitrix
            .operator_reply_on(SALES_LINE, ANNA, "sales here", vec![])
            .await;
        eventually("both sent", 20, || async {
            app.meta.sent_messages().len() == 2
        })
        .await;
        for sent in app.meta.sent_messages() {
            let expected = if sent.body["text"]["body"] == "support here" {
                SUPPORT
            } else {
                SALES
            };
            assert_eq!(sent.from_phone_number_id, expected, "{}", sent.body);
        }
        eventually("both delivered", 20, || async {
            delivered_replies(&app, 3) == 1 && delivered_replies(&app, SALES_LINE) == 1
        })
        .await;
        // Meta's statuses of both replies are handled before the workers stop.
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.dead_letters().await.is_empty());
        // `/` shows each channel's traffic, by name and line, never by number.
        let traffic = bitrix_connector::info(&app.relay).traffic().await;
        assert_eq!(
            traffic,
            [
                "Support (line 3) — last 24 h: 1 in, 1 out",
                "Sales (line 5) — last 24 h: 1 in, 1 out"
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn a_message_to_b_opens_no_window_on_a() {
    let app = two_channels().await;
    with_workers(&app.core, app.registry(), async {
        // Anna last wrote to support 25 hours ago, and to sales just now.
        write_to(&app, SUPPORT, "hello support", 25 * 3600).await;
        write_to(&app, SALES, "hello sales", 60).await;
        eventually("both chats", 20, || async {
            customer_texts(&app, 3).len() == 1 && customer_texts(&app, SALES_LINE).len() == 1
        })
        .await;

        app.bitrix
            .operator_reply_on(3, ANNA, "sorry for the delay", vec![])
            .await;
        eventually("the window note in the support chat", 20, || async {
            app.bitrix
                .chat_on(3, ANNA)
                .unwrap()
                .messages
                .iter()
                .any(|m| matches!(m, ChatMessage::System(n) if n.text.contains("24 hours")))
        })
        .await;
        app.bitrix
            .operator_reply_on(SALES_LINE, ANNA, "sales answers", vec![])
            .await;
        eventually("the sales reply sent", 20, || async {
            !app.meta.sent_messages().is_empty()
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        let sent = app.meta.sent_messages();
        assert_eq!(sent.len(), 1, "only the sales reply went out");
        assert_eq!(sent[0].from_phone_number_id, SALES);
        let counts = app.core.inbox.count_by_status().await.unwrap();
        assert_eq!(counts.get("blocked_window"), Some(&1), "{counts:?}");
        assert!(
            !app.bitrix
                .chat_on(SALES_LINE, ANNA)
                .unwrap()
                .messages
                .iter()
                .any(|m| { matches!(m, ChatMessage::System(_)) }),
            "no note in the sales chat"
        );
    })
    .await;
}

/// The `meta` inbox rows with `status`, newest first.
async fn meta_rows(app: &TestApp, status: &str) -> Vec<switchboard_core::inbox::StoredEvent> {
    app.core
        .inbox
        .list(Some("meta"), Some(status), None, 50)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_message_to_a_number_without_a_channel_is_answered_and_not_relayed() {
    const STRANGER: &str = "555000111222333";
    let app = two_channels().await;
    with_workers(&app.core, app.registry(), async {
        assert_eq!(write_to(&app, STRANGER, "anyone there?", 60).await, 200);
        eventually("settled", 20, || async {
            !meta_rows(&app, "skipped").await.is_empty()
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        let row = &meta_rows(&app, "skipped").await[0];
        let why = row.error.clone().unwrap_or_default();
        assert!(why.contains(STRANGER), "{why}");
        assert!(why.contains("[[bitrix.channels]]"), "{why}");
        assert!(app.bitrix.chats().is_empty(), "relayed into no line");
        assert_eq!(app.bitrix_calls("imconnector.send.messages"), 0);
        assert!(app.dead_letters().await.is_empty());

        app.meta_set_up().await;
        let checks = bitrix_connector::info(&app.relay).checks().await;
        let label = format!("WhatsApp number {STRANGER} has a channel");
        let row = checks
            .iter()
            .find(|c| c.label == label)
            .unwrap_or_else(|| panic!("no row {label:?} in {checks:?}"));
        assert!(!row.ok);
        assert!(row.fix.contains("[[bitrix.channels]]"), "{}", row.fix);
        // Each channel has its rows, all green.
        for c in checks.iter().filter(|c| c.label != label) {
            assert!(c.ok, "{} still failing: {}", c.label, c.fix);
        }
        for name in ["Support", "Sales"] {
            assert!(
                checks
                    .iter()
                    .any(|c| c.label.starts_with("Open Channel line activated: ")
                        && c.label.contains(name)),
                "no line row for {name}: {checks:?}"
            );
            assert!(
                checks
                    .iter()
                    .any(|c| c.label.starts_with("Meta access token valid: ")
                        && c.label.contains(name)),
                "no token row for {name}: {checks:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn with_one_number_a_message_to_another_number_is_not_relayed_into_its_line() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        assert_eq!(write_to(&app, SALES, "wrong number?", 60).await, 200);
        assert_eq!(write_to(&app, SUPPORT, "right number", 30).await, 200);
        eventually("the right one relayed", 20, || async {
            customer_texts(&app, 3) == ["right number"]
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        let skipped = meta_rows(&app, "skipped").await;
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].error.as_deref().unwrap_or("").contains(SALES));
        assert_eq!(customer_texts(&app, 3), ["right number"]);
        let checks = bitrix_connector::info(&app.relay).checks().await;
        assert!(
            checks
                .iter()
                .any(|c| !c.ok && c.label == format!("WhatsApp number {SALES} has a channel")),
            "{checks:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_reply_in_a_line_without_a_number_is_not_sent_and_the_operator_is_told() {
    let app = two_channels().await;
    app.bitrix.add_line(7);
    bitrix_connector::commands::activate_connector(&app.relay, Some("7".into()))
        .await
        .expect("activate line 7");
    dialog_on(&app, 7, "hello via some other route").await;
    with_workers(&app.core, app.registry(), async {
        app.bitrix
            .operator_reply_on(7, ANNA, "which number am I?", vec![])
            .await;
        eventually("the note in line 7's chat", 20, || async {
            app.bitrix.chat_on(7, ANNA).unwrap().messages.iter().any(|m| {
                matches!(m, ChatMessage::System(n) if n.text.contains("line 7 has no WhatsApp number"))
            })
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.meta.sent_messages().is_empty(), "sent from no number");
        let skipped = app
            .core
            .inbox
            .list(Some("bitrix"), Some("skipped"), None, 10)
            .await
            .unwrap();
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].error.as_deref().unwrap_or("").contains("line 7"),
            "{:?}",
            skipped[0].error
        );
    })
    .await;
}

#[tokio::test]
async fn activate_connector_activates_every_channels_line() {
    let app = TestApp::start_with_file(two_numbers(), CHANNELS).await;
    app.bitrix.add_line(SALES_LINE);
    app.install().await;
    app.register_connector().await;
    let report = bitrix_connector::commands::activate_connector(&app.relay, None)
        .await
        .expect("activate-connector");
    assert!(report.contains("active on line 3"), "{report}");
    assert!(report.contains("active on line 5"), "{report}");
    for line in [3, SALES_LINE] {
        let status = app
            .bitrix
            .connector_status("switchboard_whatsapp", line)
            .unwrap_or_else(|| panic!("line {line} not activated"));
        assert!(
            status.status() && status.configured(),
            "line {line}: {status:?}"
        );
    }
}

/// The v1 rows the test database starts with: Anna, who wrote an hour ago, whose message is
/// in Bitrix chat 1767, with lead 4821 (the fake portal's first chat and lead ids).
const V1_CHAT: &str = "1767";
const V1_LEAD: &str = "4821";

async fn write_v1_rows(db: &switchboard_core::Db, wrote_at_ms: i64) {
    let statements = [
        format!(
            "INSERT INTO bitrix_customers (wa_id, name, last_inbound_at, updated_at)
             VALUES ('{ANNA}', 'Anna Schmidt', {wrote_at_ms}, {wrote_at_ms})"
        ),
        format!(
            "INSERT INTO bitrix_inbound (wamid, wa_id, received_at, relayed_at, bitrix_chat_id, sent_at, inbox_id, seq)
             VALUES ('wamid.V1-FIRST', '{ANNA}', {wrote_at_ms}, {wrote_at_ms}, '{V1_CHAT}', {}, 1, 0)",
            wrote_at_ms / 1000
        ),
        format!(
            "INSERT INTO bitrix_leads (phone, lead_id, claimed_at, created_at)
             VALUES ('+{ANNA}', '{V1_LEAD}', {wrote_at_ms}, {wrote_at_ms})"
        ),
    ];
    for sql in statements {
        on_pool!(db, |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .expect("v1 row");
    }
}

/// `method` called on the fake portal with the install's token, as another client would; its
/// `result`.
async fn portal_call(app: &TestApp, method: &str, mut params: Value) -> Value {
    let grant = app.bitrix.current_tokens().expect("installed");
    params["auth"] = json!(grant.access_token);
    let answer: Value = reqwest::Client::new()
        .post(format!("{}{method}.json", app.bitrix.client_endpoint()))
        .json(&params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["result"].clone()
}

/// A dialog with Anna on `line`, opened by a message that did not come through Switchboard.
async fn dialog_on(app: &TestApp, line: i64, text: &str) -> Value {
    portal_call(
        app,
        "imconnector.send.messages",
        json!({"CONNECTOR": "switchboard_whatsapp", "LINE": line, "MESSAGES": [{
            "user": {"id": ANNA, "name": "Anna", "last_name": "Schmidt"},
            "message": {"id": format!("wamid.ELSEWHERE-{line}"), "text": text},
            "chat": {"id": ANNA},
        }]}),
    )
    .await
}

/// What the single-number connector had put into the portal for Anna: her dialog on line 3
/// and her lead.
async fn put_v1_portal_state(app: &TestApp) {
    let sent = dialog_on(app, 3, "first, before channels").await;
    assert_eq!(
        sent.pointer("/DATA/RESULT/0/session/CHAT_ID"),
        Some(&json!(V1_CHAT)),
        "{sent}"
    );
    let lead = portal_call(
        app,
        "crm.lead.add",
        json!({"fields": {"TITLE": "WhatsApp: Anna Schmidt", "PHONE": [{"VALUE": format!("+{ANNA}")}]}}),
    )
    .await;
    assert_eq!(lead.to_string().trim_matches('"'), V1_LEAD);
}

#[tokio::test]
async fn a_v1_database_keeps_its_chat_window_and_lead_after_the_migration() {
    // The schema and rows of the release before channels.
    let test_db = TestDb::at_version(7).await;
    let wrote_at = switchboard_core::db::now_ms() - 3_600_000;
    write_v1_rows(&test_db.db, wrote_at).await;
    switchboard_core::Core::migrate(&test_db.db)
        .await
        .expect("migrations after v1");

    let app = TestApp::start_on(test_db, MetaConfig::default(), None).await;
    app.ready().await;
    put_v1_portal_state(&app).await;
    app.meta.set_last_inbound(ANNA, (wrote_at / 1000) as u64);
    with_workers(&app.core, app.registry(), async {
        // The window opened by her message before the migration is still open.
        app.bitrix
            .operator_reply_on(3, ANNA, "still there?", vec![])
            .await;
        eventually("the reply sent", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        assert_eq!(app.meta.sent_messages()[0].from_phone_number_id, SUPPORT);

        // Her next message joins the same dialog and the same lead.
        assert_eq!(write_to(&app, SUPPORT, "yes, still here", 10).await, 200);
        eventually("the next message", 20, || async {
            customer_texts(&app, 3) == ["first, before channels", "yes, still here"]
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(app.bitrix.chats().len(), 1, "no second dialog");
        assert_eq!(app.bitrix.leads().len(), 1, "no second lead");
        assert_eq!(app.bitrix_calls("crm.lead.add"), 1, "only the v1 one");
        assert!(app.dead_letters().await.is_empty());
        let chats: Vec<(String, Option<String>)> = on_pool!(&app.core.db, |p| sqlx::query_as(
            "SELECT channel, bitrix_chat_id FROM bitrix_inbound ORDER BY received_at"
        )
        .fetch_all(p)
        .await)
        .unwrap();
        assert_eq!(
            chats,
            vec![
                (SUPPORT.to_string(), Some(V1_CHAT.to_string())),
                (SUPPORT.to_string(), Some(V1_CHAT.to_string())),
            ]
        );
        let windows: Vec<(String, String)> = on_pool!(&app.core.db, |p| sqlx::query_as(
            "SELECT channel, wa_id FROM bitrix_windows"
        )
        .fetch_all(p)
        .await)
        .unwrap();
        assert_eq!(windows, vec![(SUPPORT.to_string(), ANNA.to_string())]);
    })
    .await;
}
