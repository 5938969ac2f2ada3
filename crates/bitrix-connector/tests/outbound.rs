//! Issue 7: operator replies → WhatsApp against the sandbox fakes — event gate and bootstrap,
//! BBCode, files, dedupe, the 24-hour window and Meta's refusals.

mod support;

use sandbox::{
    bitrix::{ChatMessage, OperatorFile},
    meta::{Customer, InboundMessage},
};
use support::{ANNA, TestApp};
use switchboard_core::testing::{eventually, with_workers};

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

#[tokio::test]
async fn the_first_event_of_the_installed_portal_bootstraps_the_token_and_a_wrong_one_is_403() {
    let app = TestApp::start().await;
    with_workers(&app.core, app.registry(), async {
        with_dialog(&app, 60).await;
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let reply = app.bitrix.operator_reply(ANNA, "first", vec![]).await;
        assert_eq!(reply.status(), Some(200));
        let stored = app
            .core
            .settings
            .get("bitrix.application_token")
            .await
            .unwrap();
        assert_eq!(stored, Some(app.bitrix.config().application_token));
        let mut form = reply.deliveries[0].form.clone();
        for (k, v) in form.iter_mut() {
            if k == "auth[application_token]" {
                *v = "forged".into();
            }
        }
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
        assert_eq!(r.status(), 403);
        let counts = app.core.inbox.count_by_status().await.unwrap();
        assert_eq!(counts.get("rejected"), Some(&1));
    })
    .await;
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
            .get("bitrix.application_token")
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
