//! Message templates from the WhatsApp Business Account against the fakes: synced page by
//! page, filled from an operator's `/template` lines (header, body and buttons) into the exact
//! Graph payload, refused with a note naming what is missing, listed by `/templates`, sent
//! first to a new customer over the admin API, and Meta's template errors explained.

use crate::support::{ADMIN_TOKEN, ANNA, TestApp};
use sandbox::{
    bitrix::ChatMessage,
    harness::eventually,
    meta::{Customer, InboundMessage, MetaConfig, Template},
};
use serde_json::{Value, json};
use switchboard_core::testing::with_workers;

/// Image header, two body variables, a quick reply and a tracking link with a variable.
fn order_shipped() -> Template {
    Template::with_components(
        "order_shipped",
        "en_US",
        vec![
            json!({"type": "HEADER", "format": "IMAGE",
                   "example": {"header_handle": ["https://scontent.whatsapp.net/x.jpg"]}}),
            json!({"type": "BODY", "text": "Hi {{1}}, your order {{2}} is on its way.",
                   "example": {"body_text": [["Anna", "1042"]]}}),
            json!({"type": "FOOTER", "text": "Zuse GmbH"}),
            json!({"type": "BUTTONS", "buttons": [
                {"type": "QUICK_REPLY", "text": "Stop updates"},
                {"type": "URL", "text": "Track", "url": "https://track.example.com/{{1}}",
                 "example": ["https://track.example.com/1042"]}
            ]}),
        ],
    )
}

fn welcome_back() -> Template {
    Template::with_components(
        "welcome_back",
        "de",
        vec![
            json!({"type": "HEADER", "format": "TEXT", "text": "Hallo {{1}}"}),
            json!({"type": "BODY", "text": "Wir haben Neuigkeiten zu Ihrer Anfrage."}),
        ],
    )
}

/// Five templates (one paused), listed two per page.
fn account() -> MetaConfig {
    let mut paused = Template::new("spring_sale", "en_US", 1);
    paused.status = "PAUSED".into();
    paused.category = "marketing".into();
    MetaConfig {
        templates: vec![
            Template::new("hello_world", "en_US", 0),
            order_shipped(),
            welcome_back(),
            paused,
            Template::new("order_update", "en_US", 2),
        ],
        ..MetaConfig::default()
    }
}

async fn app() -> TestApp {
    let app = TestApp::start_with_account(account(), None).await;
    app.meta.set_templates_page_size(2);
    app
}

fn anna() -> Customer {
    Customer::new(ANNA, "Anna Schmidt")
}

async fn with_dialog(app: &TestApp, age_secs: u64) {
    app.ready().await;
    let at = app.meta.now() - age_secs;
    app.meta
        .webhooks()
        .send_inbound(&anna(), InboundMessage::text("hello").at(at))
        .await
        .unwrap();
    eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
}

fn notes(app: &TestApp) -> Vec<String> {
    app.bitrix
        .messages_in_chat(ANNA)
        .into_iter()
        .filter_map(|m| match m {
            ChatMessage::System(n) if n.system => Some(n.text),
            _ => None,
        })
        .collect()
}

async fn api(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", app.url))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn sync(app: &TestApp) -> Value {
    let (status, body) = api(
        app,
        reqwest::Method::POST,
        "/api/bitrix/templates/sync",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn templates_sync_from_every_page_with_their_variables_and_status() {
    let app = app().await;
    // Admin only.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/api/bitrix/templates/sync", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        sync(&app).await,
        json!({"templates": 5, "approved": 4, "pages": 3})
    );
    // Three pages, the second and third asked for by the cursor of the one before.
    let pages: Vec<String> = app
        .meta
        .recorder()
        .all()
        .into_iter()
        .filter(|r| r.path.ends_with("/message_templates"))
        .map(|r| r.query.unwrap_or_default())
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(!pages[0].contains("after="), "{}", pages[0]);
    assert!(
        pages[1].contains("after=") && pages[2].contains("after="),
        "{pages:?}"
    );

    let (status, list) = api(&app, reqwest::Method::GET, "/api/bitrix/templates", None).await;
    assert_eq!(status, 200, "{list}");
    let templates = list["templates"].as_array().unwrap();
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "hello_world",
            "order_shipped",
            "order_update",
            "spring_sale",
            "welcome_back"
        ]
    );
    let shipped = &templates[1];
    assert_eq!(shipped["status"], "APPROVED");
    assert_eq!(shipped["category"], "UTILITY");
    let keys: Vec<&str> = shipped["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["header", "1", "2", "button2"]);
    assert_eq!(shipped["variables"][0]["kind"], "header_media");
    assert_eq!(shipped["variables"][0]["format"], "image");
    assert_eq!(templates[3]["status"], "PAUSED");
    assert!(list["synced_at"].as_i64().is_some());

    // A template deleted at Meta is gone after the next sync.
    app.meta.set_templates_page_size(100);
    app.meta
        .set_template_status("welcome_back", "de", "DELETED");
    sync(&app).await;
    let (_, list) = api(&app, reqwest::Method::GET, "/api/bitrix/templates", None).await;
    assert_eq!(list["templates"][4]["status"], "DELETED");
}

#[tokio::test]
async fn header_body_and_button_variables_make_the_exact_graph_payload() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        // Outside the window: only a template may go.
        with_dialog(&app, 25 * 3600).await;
        app.bitrix
            .operator_reply(
                ANNA,
                "[b]Maria Petrova:[/b][br]/template order_shipped\nheader=https://cdn.example.com/parcel.jpg\n1={name}\n2=1042\nbutton2=1042",
                vec![],
            )
            .await;
        eventually("template sent", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        let sent = &app.meta.sent_messages()[0];
        assert_eq!(sent.kind, "template");
        assert_eq!(
            sent.body["template"],
            json!({
                "name": "order_shipped",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "header", "parameters": [
                        {"type": "image", "image": {"link": "https://cdn.example.com/parcel.jpg"}}]},
                    {"type": "body", "parameters": [
                        {"type": "text", "text": "Anna Schmidt"},
                        {"type": "text", "text": "1042"}]},
                    {"type": "button", "sub_type": "url", "index": "1", "parameters": [
                        {"type": "text", "text": "1042"}]}
                ]
            })
        );
        // Positional values fill the same variables in order, a text header included.
        app.bitrix
            .operator_reply(ANNA, "/template welcome_back de\nAnna", vec![])
            .await;
        eventually("second template sent", 20, || async {
            app.meta.sent_messages().len() == 2
        })
        .await;
        assert_eq!(
            app.meta.sent_messages()[1].body["template"],
            json!({"name": "welcome_back", "language": {"code": "de"}, "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "Anna"}]}]})
        );
        eventually("all work finished", 10, || app.idle()).await;
        assert!(notes(&app).is_empty(), "{:?}", notes(&app));
    })
    .await;
}

#[tokio::test]
async fn a_missing_or_extra_variable_is_named_in_a_note_and_nothing_is_sent() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 25 * 3600).await;
        app.bitrix
            .operator_reply(
                ANNA,
                "/template order_shipped\nheader=https://cdn.example.com/parcel.jpg\n1=Anna\ncolour=red",
                vec![],
            )
            .await;
        eventually("note", 20, || async { notes(&app).len() == 1 }).await;
        let note = &notes(&app)[0];
        assert!(note.contains("Missing: 2, button2."), "{note}");
        assert!(note.contains("Not in the template: colour."), "{note}");
        assert!(note.contains("/template order_shipped en_US\nheader=…\n1=…\n2=…\nbutton2=…"), "{note}");
        // A header link Meta would be told to fetch must be public https.
        app.bitrix
            .operator_reply(
                ANNA,
                "/template order_shipped\nheader=http://10.0.0.5/parcel.jpg\n1=Anna\n2=1042\nbutton2=1042",
                vec![],
            )
            .await;
        eventually("second note", 20, || async { notes(&app).len() == 2 }).await;
        assert!(notes(&app)[1].contains("header must be the image's link"), "{:?}", notes(&app));
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.meta.sent_messages().is_empty());
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_templates_command_lists_the_approved_ones_and_a_closed_window_offers_them() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 25 * 3600).await;
        app.bitrix.operator_reply(ANNA, "/templates", vec![]).await;
        eventually("note", 20, || async { notes(&app).len() == 1 }).await;
        let list = &notes(&app)[0];
        assert!(
            list.contains("order_shipped (en_US): header, 1, 2, button2"),
            "{list}"
        );
        assert!(list.contains("welcome_back (de): header"), "{list}");
        assert!(list.contains("hello_world (en_US)"), "{list}");
        assert!(
            !list.contains("spring_sale"),
            "a paused one is not offered: {list}"
        );
        // An ordinary reply outside the window is held, and the note offers the templates.
        app.bitrix
            .operator_reply(ANNA, "Are you still there?", vec![])
            .await;
        eventually("window note", 20, || async { notes(&app).len() == 2 }).await;
        let held = &notes(&app)[1];
        assert!(held.contains("more than 24 hours"), "{held}");
        assert!(
            held.contains("order_shipped (en_US): header, 1, 2, button2"),
            "{held}"
        );
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.meta.sent_messages().is_empty());
    })
    .await;
}

#[tokio::test]
async fn writing_first_sends_the_template_opens_the_chat_and_the_answer_joins_it() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        app.ready().await;
        assert!(app.bitrix.chat(ANNA).is_none());
        let request = json!({
            "to": "+49 176 12345678",
            "template": "order_update",
            "values": {"1": "{name}", "2": "1042"},
            "name": "Anna Schmidt",
        });
        // Without the admin token nothing happens.
        let anonymous = reqwest::Client::new()
            .post(format!("{}/api/bitrix/conversations", app.url))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
        let (status, started) = api(
            &app,
            reqwest::Method::POST,
            "/api/bitrix/conversations",
            Some(request),
        )
        .await;
        assert_eq!(status, 202, "{started}");
        let sent = app.meta.sent_messages();
        assert_eq!(sent.len(), 1);
        assert_eq!(started["wamid"], json!(sent[0].wamid));
        assert_eq!(started["to"], ANNA);
        assert_eq!(
            sent[0].body["template"],
            json!({"name": "order_update", "language": {"code": "en_US"}, "components": [
                {"type": "body", "parameters": [
                    {"type": "text", "text": "Anna Schmidt"}, {"type": "text", "text": "1042"}]}]})
        );
        eventually("chat opened in Bitrix24", 20, || async {
            app.bitrix.chat(ANNA).is_some()
        })
        .await;
        let chat = app.bitrix.chat(ANNA).unwrap();
        assert_eq!(chat.line, app.bitrix.config().line_id);
        let shown = match &chat.messages[0] {
            ChatMessage::Customer(m) => m.text.clone().unwrap_or_default(),
            other => panic!("{other:?}"),
        };
        assert!(shown.contains("order_update"), "{shown}");
        assert!(shown.contains("Hello Anna Schmidt, 1042."), "{shown}");
        // The customer answers: the same chat.
        app.meta
            .webhooks()
            .send_inbound(
                &anna(),
                InboundMessage::text("Yes, please deliver tomorrow"),
            )
            .await
            .unwrap();
        eventually("the answer in Bitrix24", 20, || async {
            app.customer_messages(ANNA)
                .iter()
                .any(|m| m.text.as_deref() == Some("Yes, please deliver tomorrow"))
        })
        .await;
        assert_eq!(app.bitrix.chats().len(), 1);
        let after = app.bitrix.chat(ANNA).unwrap();
        assert_eq!(after.bitrix_chat_id, chat.bitrix_chat_id);
        assert_eq!(after.messages.len(), 2);

        // Bad input is refused with what is wrong, before anything is sent.
        let (status, err) = api(
            &app,
            reqwest::Method::POST,
            "/api/bitrix/conversations",
            Some(json!({"to": "+49 176 12345678", "template": "order_update", "values": ["Anna"]})),
        )
        .await;
        assert_eq!(status, 400, "{err}");
        assert!(err.to_string().contains("Missing: 2"), "{err}");
        let (status, err) = api(
            &app,
            reqwest::Method::POST,
            "/api/bitrix/conversations",
            Some(json!({"to": "call me", "template": "hello_world"})),
        )
        .await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(app.meta.sent_messages().len(), 1);
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_template_paused_after_the_sync_gets_a_note_with_the_fix() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 25 * 3600).await;
        sync(&app).await;
        // Meta pauses it after the sync: the send is refused with 132015.
        app.meta
            .set_template_status("order_update", "en_US", "PAUSED");
        app.bitrix
            .operator_reply(ANNA, "/template order_update\n{name}\n1042", vec![])
            .await;
        eventually("note", 20, || async { notes(&app).len() == 1 }).await;
        let note = &notes(&app)[0];
        assert!(note.contains("132015"), "{note}");
        assert!(note.contains(bitrix_connector::fix::META_132015), "{note}");
        // Once synced as paused, it is refused before Meta is asked, with the same fix.
        sync(&app).await;
        app.bitrix
            .operator_reply(ANNA, "/template order_update\n{name}\n1042", vec![])
            .await;
        eventually("second note", 20, || async { notes(&app).len() == 2 }).await;
        let note = &notes(&app)[1];
        assert!(note.contains("is paused at Meta"), "{note}");
        assert!(note.contains(bitrix_connector::fix::META_132015), "{note}");
        let (status, err) = api(
            &app,
            reqwest::Method::POST,
            "/api/bitrix/conversations",
            Some(
                json!({"to": "+49 176 12345678", "template": "order_update", "values": ["a", "b"]}),
            ),
        )
        .await;
        assert_eq!(status, 400, "{err}");
        assert!(err.to_string().contains("paused"), "{err}");
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(app.meta.sent_messages().len(), 0);
    })
    .await;
}

#[tokio::test]
async fn meta_template_errors_reach_the_operator_with_their_fix() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 25 * 3600).await;
        for (n, code, fix) in [
            (1, 132000, bitrix_connector::fix::META_132000),
            (2, 132001, bitrix_connector::fix::META_132001),
            (3, 132016, bitrix_connector::fix::META_132016),
        ] {
            app.meta.fail_next_sends(code, 1);
            app.bitrix
                .operator_reply(ANNA, "/template hello_world", vec![])
                .await;
            eventually("note", 20, || async { notes(&app).len() == n }).await;
            let note = &notes(&app)[n - 1];
            assert!(
                note.contains(&code.to_string()) && note.contains(fix),
                "{note}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_template_sent_first_that_whatsapp_cannot_deliver_is_told_in_its_chat() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        app.ready().await;
        // Accepted, then reported `failed` by webhook (not a WhatsApp user, say).
        app.meta.fail_next_deliveries(131026, 1);
        let (status, started) = api(
            &app,
            reqwest::Method::POST,
            "/api/bitrix/conversations",
            Some(json!({"to": "+49 176 12345678", "template": "hello_world"})),
        )
        .await;
        assert_eq!(status, 202, "{started}");
        eventually("the failure told in the chat", 30, || async {
            notes(&app).iter().any(|n| n.contains("131026"))
        })
        .await;
        let row = bitrix_connector::store::outbound_by_wamid(
            &app.core.db,
            started["wamid"].as_str().unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(row.state, "failed");
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_write_first_call_repeated_with_its_idempotency_key_sends_once() {
    let app = app().await;
    with_workers(&app.core, app.registry(), async {
        app.ready().await;
        let call = |key: &'static str| {
            let url = format!("{}/api/bitrix/conversations", app.url);
            async move {
                let resp = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .header("idempotency-key", key)
                    .json(&json!({"to": "+49 176 12345678", "template": "hello_world"}))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap())
            }
        };
        let (first_status, first) = call("deal-1042-welcome").await;
        let (again_status, again) = call("deal-1042-welcome").await;
        assert_eq!((first_status, again_status), (202, 202), "{first} {again}");
        assert_eq!(first, again);
        assert_eq!(app.meta.sent_messages().len(), 1);
        // Another key is another message.
        let (status, other) = call("deal-1043-welcome").await;
        assert_eq!(status, 202);
        assert_ne!(other["wamid"], first["wamid"]);
        assert_eq!(app.meta.sent_messages().len(), 2);
        eventually("all work finished", 20, || app.idle()).await;
    })
    .await;
}
