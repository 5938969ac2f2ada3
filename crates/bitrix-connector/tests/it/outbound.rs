//! Issue 7: operator replies → WhatsApp against the sandbox fakes — the event gate (token of
//! the verified install, nothing learned from events, tokens not stored),
//! BBCode, files (each part of a reply sent once across retries), dedupe, the 24-hour window
//! and the `/template` command, and Meta's refusals.

use crate::support::{ANNA, TestApp};
use sandbox::{
    bitrix::{ChatMessage, OperatorFile},
    harness::eventually,
    meta::{Customer, InboundMessage, MetaConfig, Template},
};
use switchboard_core::testing::with_workers;

fn anna() -> Customer {
    Customer::new(ANNA, "Anna Schmidt")
}

/// Ready app with a dialog for Anna whose last message is `age_secs` old.
async fn with_dialog(app: &TestApp, age_secs: u64) {
    app.ready().await;
    let at = app.meta.now() - age_secs;
    app.meta
        .webhooks()
        .send_inbound(&anna(), InboundMessage::text("hello").at(at))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bbcode_reply_reaches_whatsapp_converted_and_is_marked_delivered() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let reply = app
            .bitrix
            .operator_reply(
                ANNA,
                "[b]Order 1042[/b] ships [i]today[/i][br]Thanks!",
                vec![],
            )
            .await;
        assert_eq!(reply.status(), Some(200));
        eventually("sent", 20, || async { app.meta.sent_messages().len() == 1 }).await;
        let sent = &app.meta.sent_messages()[0];
        assert_eq!(sent.kind, "text");
        assert_eq!(sent.wa_id, ANNA);
        assert_eq!(
            sent.body["text"]["body"],
            "*Order 1042* ships _today_\nThanks!"
        );
        eventually("delivered in Bitrix", 20, || async {
            app.bitrix.messages_in_chat(ANNA).iter().any(|m| {
                matches!(m,
                ChatMessage::Operator(op) if op.delivered_as.is_some())
            })
        })
        .await;
        // The same event delivered again sends nothing more.
        let form = reply.deliveries[0].form.clone();
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = reqwest::Client::new()
            .post(format!("{}/bitrix/events", app.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(app.meta.sent_messages().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_pdf_from_bitrix_is_sent_as_a_document_with_its_filename() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        app.bitrix
            .operator_reply(
                ANNA,
                "Your invoice",
                vec![OperatorFile::document(
                    "invoice-1042.pdf",
                    b"%PDF-1.4 bytes".to_vec(),
                )],
            )
            .await;
        eventually("sent", 20, || async {
            !app.meta.sent_messages().is_empty()
        })
        .await;
        let sent = &app.meta.sent_messages()[0];
        assert_eq!(sent.kind, "document");
        assert_eq!(sent.body["document"]["filename"], "invoice-1042.pdf");
        assert_eq!(sent.body["document"]["caption"], "Your invoice");
    })
    .await;
}

#[tokio::test]
async fn a_reply_25_hours_after_the_last_message_is_blocked_with_a_note() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 25 * 3600).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        app.bitrix
            .operator_reply(ANNA, "sorry for the delay", vec![])
            .await;
        eventually("system note", 20, || async {
            app.bitrix.messages_in_chat(ANNA).iter().any(|m| {
                matches!(m,
                ChatMessage::System(n) if n.system && n.text.contains("24 hours"))
            })
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.meta.sent_messages().is_empty());
        let counts = app.core.inbox.count_by_status().await.unwrap();
        assert_eq!(counts.get("blocked_window"), Some(&1));
    })
    .await;
}

/// The delivered event's form with `key` set to `value`, encoded as Bitrix sends it.
fn with_field(form: &[(String, String)], key: &str, value: &str) -> String {
    let mut form = form.to_vec();
    for (k, v) in form.iter_mut() {
        if k == key {
            *v = value.into();
        }
    }
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

async fn post_event(app: &TestApp, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/bitrix/events", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn application_token_setting(app: &TestApp) -> Option<String> {
    app.core
        .settings
        .get(bitrix_connector::catalogue::BITRIX_APPLICATION_TOKEN)
        .await
        .unwrap()
}

#[tokio::test]
async fn events_are_checked_against_the_verified_installs_token_and_a_wrong_one_is_403() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let reply = app.bitrix.operator_reply(ANNA, "first", vec![]).await;
        assert_eq!(reply.status(), Some(200));
        eventually("sent", 20, || async { app.meta.sent_messages().len() == 1 }).await;
        // Nothing is learned from the event.
        assert_eq!(application_token_setting(&app).await, None);
        let forged = with_field(
            &reply.deliveries[0].form,
            "auth[application_token]",
            "forged",
        );
        assert_eq!(post_event(&app, forged).await.status(), 403);
        let counts = app.core.inbox.count_by_status().await.unwrap();
        assert_eq!(counts.get("rejected"), Some(&1));
    })
    .await;
}

/// The takeover: `member_id` is no secret, so an event carrying the installed portal's
/// `member_id` and a token of the sender's choosing must not become the token.
#[tokio::test]
async fn a_forged_event_with_the_portals_member_id_is_refused_and_teaches_nothing() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let cfg = app.bitrix.config();
        let forged = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("event", "ONIMCONNECTORMESSAGEADD"),
                ("data[MESSAGES][0][im][chat_id]", "1"),
                ("data[MESSAGES][0][im][message_id]", "777"),
                ("data[MESSAGES][0][chat][id]", ANNA),
                ("data[MESSAGES][0][message][text]", "forged reply"),
                ("auth[member_id]", cfg.member_id.as_str()),
                ("auth[application_token]", "chosen-by-the-forger"),
            ])
            .finish();
        assert_eq!(post_event(&app, forged).await.status(), 403);
        assert_eq!(application_token_setting(&app).await, None);
        // The portal's own events still pass.
        let reply = app.bitrix.operator_reply(ANNA, "genuine", vec![]).await;
        assert_eq!(reply.status(), Some(200));
        eventually("sent", 20, || async { app.meta.sent_messages().len() == 1 }).await;
        eventually("all work finished", 10, || app.idle()).await;
        let sent = app.meta.sent_messages();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].body["text"]["body"], "genuine");
    })
    .await;
}

#[tokio::test]
async fn with_no_application_token_known_events_are_refused_with_the_fix() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        // A grant without the install's token (say, minted with an authorization code).
        let mut grant = app.stored_grant().await.unwrap();
        grant.application_token = None;
        bitrix_connector::bitrix::oauth::store(&app.core, &grant)
            .await
            .unwrap();
        let reply = app.bitrix.operator_reply(ANNA, "hello", vec![]).await;
        assert_eq!(reply.status(), Some(403));
        assert_eq!(application_token_setting(&app).await, None);
        let rejected = app
            .core
            .inbox
            .list(Some("bitrix"), Some("rejected"), None, 10)
            .await
            .unwrap();
        let why = rejected[0].error.clone().unwrap_or_default();
        assert!(why.contains("administrator"), "{why}");
        // Configured by hand, it is used.
        app.configure_application_token().await;
        let reply = app.bitrix.operator_reply(ANNA, "again", vec![]).await;
        assert_eq!(reply.status(), Some(200));
    })
    .await;
}

/// Only `data` is needed later: the tokens an event carries are not kept.
#[tokio::test]
async fn stored_events_keep_no_token() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let reply = app.bitrix.operator_reply(ANNA, "kept clean", vec![]).await;
        assert_eq!(reply.status(), Some(200));
        eventually("sent", 20, || async { app.meta.sent_messages().len() == 1 }).await;
        let form = &reply.deliveries[0].form;
        let secret = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{k} in the event"))
        };
        let access = secret("auth[access_token]");
        let application = secret("auth[application_token]");
        let wrong = "0123456789abcdef-wrong-token";
        let forged = with_field(form, "auth[application_token]", wrong);
        assert_eq!(post_event(&app, forged).await.status(), 403);
        let rows = app
            .core
            .inbox
            .list(Some("bitrix"), None, None, 10)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            let body = row.body_text();
            assert!(body.contains("kept"), "{body}");
            for token in [&access, &application, &wrong.to_string()] {
                assert!(
                    !body.contains(token.as_str()),
                    "{} kept a token: {body}",
                    row.status
                );
            }
            assert!(!body.contains("access_token"), "{body}");
            assert!(!body.contains("application_token"), "{body}");
        }
        eventually("all work finished", 10, || app.idle()).await;
    })
    .await;
}

#[tokio::test]
async fn only_a_placement_request_gets_the_app_page_and_garbage_is_400() {
    let app = TestApp::start().await;
    app.install().await;
    let r = app.post_form("/bitrix/events", &[("garbage", "1")]).await;
    assert_eq!(r.status(), 400);
    let r = app.post_form("/bitrix/events", &[]).await;
    assert_eq!(r.status(), 400);
    let r = app
        .post_form(
            "/bitrix/events?DOMAIN=acme.bitrix24.com&PROTOCOL=1",
            &[
                ("AUTH_ID", "user-access-token"),
                ("AUTH_EXPIRES", "3600"),
                ("REFRESH_ID", "user-refresh-token"),
                ("member_id", "m"),
                ("PLACEMENT", "DEFAULT"),
                ("PLACEMENT_OPTIONS", "{}"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Switchboard"));
}

#[tokio::test]
async fn an_authenticated_event_with_too_many_fields_is_400() {
    let app = TestApp::start().await;
    app.install().await;
    let token = app.bitrix.config().application_token;
    let mut body = format!("event=ONIMCONNECTORMESSAGEADD&auth[application_token]={token}");
    for i in 0..5_000 {
        body.push_str(&format!("&data[MESSAGES][{i}][im][chat_id]={i}"));
    }
    let r = post_event(&app, body).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("fields"));
}

#[tokio::test]
async fn an_event_from_another_portal_is_refused_while_no_token_is_stored() {
    let app = TestApp::start().await;
    app.install().await;
    let body = "event=ONIMCONNECTORMESSAGEADD&auth[application_token]=t&auth[member_id]=someone-else\
                &data[MESSAGES][0][im][chat_id]=1&data[MESSAGES][0][im][message_id]=2&data[MESSAGES][0][chat][id]=3";
    let r = reqwest::Client::new()
        .post(format!("{}/bitrix/events", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        app.core
            .settings
            .get(bitrix_connector::catalogue::BITRIX_APPLICATION_TOKEN)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn meta_190_dead_letters_with_the_token_fix_and_notes_the_operator() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        app.meta.fail_next_sends(190, 1);
        app.bitrix.operator_reply(ANNA, "hello", vec![]).await;
        eventually("dead letter", 20, || async {
            !app.dead_letters().await.is_empty()
        })
        .await;
        let dead = app.dead_letters().await;
        assert!(
            dead[0].contains("190") && dead[0].contains("check-token"),
            "{dead:?}"
        );
        assert!(app.bitrix.messages_in_chat(ANNA).iter().any(|m| matches!(m,
            ChatMessage::System(n) if n.text.contains("System User token"))));
    })
    .await;
}

/// Two approved templates in the config file; the fake Meta approves the same two.
const TEMPLATES_TOML: &str = r#"
[[bitrix.templates]]
name = "order_update"
language = "en_US"
body_parameters = ["{name}"]

[[bitrix.templates]]
name = "hello_world"
language = "en_US"
"#;

async fn app_with_templates() -> TestApp {
    let meta = MetaConfig {
        templates: vec![
            Template::new("order_update", "en_US", 1),
            Template::new("hello_world", "en_US", 0),
        ],
        ..MetaConfig::default()
    };
    TestApp::start_with_file(meta, TEMPLATES_TOML).await
}

fn system_notes(app: &TestApp) -> Vec<String> {
    app.bitrix
        .messages_in_chat(ANNA)
        .into_iter()
        .filter_map(|m| match m {
            ChatMessage::System(n) if n.system => Some(n.text),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_template_command_sends_the_template_outside_the_window() {
    let app = app_with_templates().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 25 * 3600).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        // The operator signature prefix comes first; the command is the last line.
        app.bitrix
            .operator_reply(
                ANNA,
                "[b]Maria Petrova:[/b][br] /template order_update",
                vec![],
            )
            .await;
        eventually("template sent", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        let sent = &app.meta.sent_messages()[0];
        assert_eq!(sent.kind, "template");
        assert_eq!(sent.body["template"]["name"], "order_update");
        assert_eq!(sent.body["template"]["language"]["code"], "en_US");
        assert_eq!(
            sent.body["template"]["components"][0]["parameters"][0]["text"],
            "Anna Schmidt"
        );
        eventually("delivered in Bitrix", 20, || async {
            app.bitrix.messages_in_chat(ANNA).iter().any(|m| {
                matches!(m, ChatMessage::Operator(op)
                    if op.delivered_as.as_deref() == Some(&[sent.wamid.clone()][..]))
            })
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        let counts = app.core.inbox.count_by_status().await.unwrap();
        assert_eq!(counts.get("blocked_window"), None, "{counts:?}");
        assert!(system_notes(&app).is_empty(), "{:?}", system_notes(&app));
    })
    .await;
}

#[tokio::test]
async fn an_unknown_template_name_sends_nothing_and_lists_the_configured_ones() {
    let app = app_with_templates().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 25 * 3600).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        app.bitrix
            .operator_reply(ANNA, "/template order_updaet", vec![])
            .await;
        eventually("system note", 20, || async {
            !system_notes(&app).is_empty()
        })
        .await;
        let note = &system_notes(&app)[0];
        assert!(note.contains("\"order_updaet\""), "{note}");
        assert!(
            note.contains("order_update (en_US)") && note.contains("hello_world (en_US)"),
            "{note}"
        );
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.meta.sent_messages().is_empty());
        // An operator typo is not an operations problem: no dead letter.
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn meta_131047_refused_at_once_or_reported_later_gives_the_same_note() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        // Our guard thinks the window is open; Meta disagrees (clock skew, a late webhook).
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        app.meta.fail_next_deliveries(131047, 1);
        let later = app.bitrix.operator_reply(ANNA, "first", vec![]).await;
        eventually("note for the failed status", 20, || async {
            system_notes(&app).len() == 1
        })
        .await;
        app.meta.fail_next_sends(131047, 1);
        let at_once = app.bitrix.operator_reply(ANNA, "second", vec![]).await;
        eventually("note for the refused send", 20, || async {
            system_notes(&app).len() == 2
        })
        .await;
        let notes = system_notes(&app);
        assert_eq!(notes[0], notes[1]);
        assert!(notes[0].contains("131047"), "{}", notes[0]);
        assert!(notes[0].contains(bitrix_connector::fix::META_131047));
        eventually("all work finished", 10, || app.idle()).await;
        for reply in [&later, &at_once] {
            let row = bitrix_connector::store::outbound_by_message(
                &app.core.db,
                &reply.message_id.to_string(),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(row.state, "blocked_window");
        }
        // Treated like the window guard: nothing for operations to retry.
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn meta_131030_dead_letters_with_the_allowed_list_fix() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        app.meta.fail_next_sends(131030, 1);
        app.bitrix.operator_reply(ANNA, "hello", vec![]).await;
        eventually("dead letter", 20, || async {
            !app.dead_letters().await.is_empty()
        })
        .await;
        let dead = app.dead_letters().await;
        assert!(
            dead[0].contains("131030") && dead[0].contains(bitrix_connector::fix::META_131030),
            "{dead:?}"
        );
        let notes = system_notes(&app);
        assert!(
            notes
                .iter()
                .any(|n| n.contains(bitrix_connector::fix::META_131030)),
            "{notes:?}"
        );
        assert!(app.meta.sent_messages().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_retry_after_the_second_file_failed_sends_each_file_once_and_confirms_both() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        // The second send fails with a transient error: the job retries.
        app.meta.fail_send_attempt(2, 131000);
        app.bitrix
            .operator_reply(
                ANNA,
                "[b]Your papers[/b]",
                vec![
                    OperatorFile::document("invoice-1042.pdf", b"%PDF-1.4 one".to_vec()),
                    OperatorFile::document("terms.pdf", b"%PDF-1.4 two".to_vec()),
                ],
            )
            .await;
        eventually("both files sent", 30, || async {
            // Retries wait 10 s; make them due instead of sleeping through the backoff.
            app.core.jobs.make_due_now().await.unwrap();
            app.meta.sent_messages().len() >= 2
        })
        .await;
        eventually("all work finished", 20, || app.idle()).await;
        let sent = app.meta.sent_messages();
        let names: Vec<&str> = sent
            .iter()
            .map(|s| s.body["document"]["filename"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["invoice-1042.pdf", "terms.pdf"]);
        assert_eq!(sent[0].body["document"]["caption"], "*Your papers*");
        assert!(sent[1].body["document"].get("caption").is_none());
        // Three attempts reached Meta: the refused one really happened. (The reply also marks
        // the customer's message read, on the same path.)
        let sends = app
            .meta
            .recorder()
            .matching("/messages")
            .into_iter()
            .filter(|r| !String::from_utf8_lossy(&r.body).contains("\"status\":\"read\""))
            .count();
        assert_eq!(sends, 3);
        let wamids: Vec<String> = sent.iter().map(|s| s.wamid.clone()).collect();
        eventually("both wamids confirmed to Bitrix", 20, || async {
            app.bitrix.messages_in_chat(ANNA).iter().any(|m| {
                matches!(m, ChatMessage::Operator(op)
                    if op.delivered_as.as_deref() == Some(&wamids[..]))
            })
        })
        .await;
        // Either part's status finds the Bitrix message.
        for w in &wamids {
            let row = bitrix_connector::store::outbound_by_wamid(&app.core.db, w)
                .await
                .unwrap()
                .expect("mapped");
            assert_eq!(row.bitrix_message_id, sent_bitrix_id(&app));
        }
    })
    .await;
}

fn sent_bitrix_id(app: &TestApp) -> String {
    app.bitrix
        .messages_in_chat(ANNA)
        .iter()
        .find_map(|m| match m {
            ChatMessage::Operator(op) => Some(op.bitrix_message_id.to_string()),
            _ => None,
        })
        .unwrap()
}

/// A service only this machine should reach. It counts the connections it accepts and answers
/// each with a "secret" shaped like an image, so a leak shows both here and in what Meta got.
struct InternalService {
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl InternalService {
    async fn start() -> Self {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 6\r\n\
                          connection: close\r\n\r\nsecret",
                    )
                    .await;
            }
        });
        Self { port, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for InternalService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `genuine`'s event with another message id and one file `{key}={link}`: what anyone holding
/// the application token (or a portal user who can craft a message) could make Bitrix post.
async fn post_forged_reply(
    app: &TestApp,
    genuine: &sandbox::bitrix::OperatorReply,
    message_id: u64,
    key: &str,
    link: &str,
) {
    let mut form: Vec<(String, String)> = genuine.deliveries[0]
        .form
        .iter()
        .filter(|(k, _)| !k.contains("[files]"))
        .map(|(k, v)| match k.as_str() {
            "data[MESSAGES][0][im][message_id]" => (k.clone(), message_id.to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let file = "data[MESSAGES][0][message][files][0]";
    form.push((format!("{file}[name]"), "photo.png".into()));
    form.push((format!("{file}[type]"), "image".into()));
    form.push((format!("{file}[{key}]"), link.into()));
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let r = reqwest::Client::new()
        .post(format!("{}/bitrix/events", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the forged event passes the token check");
}

async fn outbound_state(app: &TestApp, message_id: u64) -> Option<String> {
    bitrix_connector::store::outbound_by_message(&app.core.db, &message_id.to_string())
        .await
        .unwrap()
        .map(|r| r.state)
}

/// A reply's file link is chosen by whoever can post the event. The bridge fetches
/// only from the configured portal; a hop off it must be https to a public address (checked
/// after DNS, on every redirect), and the body is capped. Each refusal is a note for the
/// operator and a dead letter, and nothing of it reaches Meta or the internal service.
#[tokio::test]
async fn file_links_off_the_portal_to_internal_addresses_or_too_big_are_refused_with_a_note() {
    let app = TestApp::start().await;
    let internal = InternalService::start().await;
    let p = internal.port;
    // Set as an operator would, so the forged events below authenticate whatever the bootstrap.
    app.configure_application_token().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let genuine = app.bitrix.operator_reply(ANNA, "genuine", vec![]).await;
        eventually("genuine reply sent", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        // Six redirects, every hop on the portal itself.
        let mut chain = format!("{}/~missing", app.bitrix.portal_url());
        for _ in 0..6 {
            chain = app.bitrix.redirecting_link(&chain);
        }
        let refused: Vec<(&str, String)> = vec![
            (
                "another port of the portal's address",
                format!("http://127.0.0.1:{p}/secret.png"),
            ),
            (
                "protocol-relative link",
                format!("//127.0.0.1:{p}/secret.png"),
            ),
            (
                "cloud metadata",
                "http://169.254.169.254/latest/meta-data/".into(),
            ),
            (
                "portal redirects to plain http on loopback",
                app.bitrix
                    .redirecting_link(&format!("http://127.0.0.1:{p}/secret.png")),
            ),
            (
                "portal redirects to a name resolving to loopback",
                app.bitrix
                    .redirecting_link(&format!("https://localhost:{p}/secret.png")),
            ),
            (
                "portal redirects to v4-mapped IPv6 loopback",
                app.bitrix
                    .redirecting_link(&format!("https://[::ffff:127.0.0.1]:{p}/secret.png")),
            ),
            (
                "portal redirects to link-local metadata over https",
                app.bitrix
                    .redirecting_link("https://169.254.169.254/latest/meta-data/"),
            ),
            ("more than five redirects", chain),
        ];
        let first_forged = 900_000;
        for (i, (_, link)) in refused.iter().enumerate() {
            post_forged_reply(&app, &genuine, first_forged + i as u64, "link", link).await;
        }
        // WhatsApp takes images up to 5 MB: one byte more is refused before Meta sees it.
        let too_big = app
            .bitrix
            .operator_reply(
                ANNA,
                "too big",
                vec![OperatorFile::image(
                    "huge.png",
                    vec![7u8; 5 * 1024 * 1024 + 1],
                    10,
                    10,
                )],
            )
            .await;
        let mut expect_failed: Vec<(String, u64)> = refused
            .iter()
            .enumerate()
            .map(|(i, (label, _))| (label.to_string(), first_forged + i as u64))
            .collect();
        expect_failed.push(("an image over 5 MB".into(), too_big.message_id));
        eventually("every refusal settled", 30, || async {
            for (_, id) in &expect_failed {
                if outbound_state(&app, *id).await.as_deref() != Some("failed") {
                    return false;
                }
            }
            true
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(internal.hits(), 0, "a fetch reached the internal service");
        let sent = app.meta.sent_messages();
        assert_eq!(
            sent.len(),
            1,
            "only the genuine reply reached Meta: {sent:?}"
        );
        let notes = system_notes(&app);
        assert_eq!(notes.len(), expect_failed.len(), "{notes:#?}");
        for n in &notes {
            assert!(n.contains("This reply was not sent to WhatsApp"), "{n}");
        }
        assert!(
            notes.iter().any(|n| n.contains("5 MB")),
            "the size refusal names the limit: {notes:#?}"
        );
        // Refusals are final: dead letters at once, not retried.
        let dead = app.dead_letters().await;
        assert_eq!(dead.len(), expect_failed.len(), "{dead:#?}");
    })
    .await;
}

/// Newer portals may send a relative `downloadLink` instead of `link` (protocol §5.2): it is
/// resolved against the portal's origin and fetched like a portal link.
#[tokio::test]
async fn a_relative_download_link_is_fetched_from_the_portal() {
    let app = TestApp::start().await;
    app.configure_application_token().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let png = b"\x89PNG\r\n\x1a\n pixels".to_vec();
        let genuine = app
            .bitrix
            .operator_reply(ANNA, "", vec![OperatorFile::image("a.png", png, 1, 1)])
            .await;
        eventually("genuine file sent", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        let link = genuine.deliveries[0]
            .form
            .iter()
            .find(|(k, _)| k.ends_with("[files][0][link]"))
            .map(|(_, v)| v.clone())
            .unwrap();
        let relative = link
            .strip_prefix(&app.bitrix.portal_url())
            .unwrap()
            .to_string();
        assert!(relative.starts_with("/~"), "{relative}");
        post_forged_reply(&app, &genuine, 900_100, "downloadLink", &relative).await;
        eventually("relative file sent", 20, || async {
            app.meta.sent_messages().len() == 2
        })
        .await;
        assert_eq!(app.meta.sent_messages()[1].kind, "image");
        assert!(system_notes(&app).is_empty(), "{:?}", system_notes(&app));
    })
    .await;
}
