//! The whole conversation reaches the operator: replies show what they quote, forwards and
//! reactions say what they are, an ad's click becomes the lead's source, customers who hide
//! their number or change it stay in one chat and get the replies, media that can't be
//! fetched still brings its caption, Flow submissions and orders are readable, and an
//! operator who edits or deletes a sent reply is told WhatsApp keeps the original.

use crate::support::{ANNA, TestApp};
use sandbox::{
    bitrix::ChatMessage,
    harness::eventually,
    meta::{Customer, InboundMedia, InboundMessage},
};
use serde_json::json;
use switchboard_core::testing::with_workers;

fn anna() -> Customer {
    Customer::new(ANNA, "Anna Schmidt")
}

/// The texts of the customer's messages in the chat of `chat_id`, oldest first.
fn texts(app: &TestApp, chat_id: &str) -> Vec<String> {
    app.customer_messages(chat_id)
        .into_iter()
        .map(|m| m.text.unwrap_or_default())
        .collect()
}

/// The operator's message ids in the chat, and whether each is delivered.
fn operator_messages(app: &TestApp, chat_id: &str) -> Vec<(u64, bool)> {
    app.bitrix
        .messages_in_chat(chat_id)
        .into_iter()
        .filter_map(|m| match m {
            ChatMessage::Operator(o) => Some((o.bitrix_message_id, o.delivered_as.is_some())),
            _ => None,
        })
        .collect()
}

fn notes(app: &TestApp, chat_id: &str) -> Vec<String> {
    app.bitrix
        .messages_in_chat(chat_id)
        .into_iter()
        .filter_map(|m| match m {
            ChatMessage::System(n) => Some(n.text),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn media_that_cannot_be_fetched_still_brings_its_caption_and_a_note() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        // A media id Meta no longer has (deleted, or past its 7 days): the media node refuses.
        let gone = InboundMedia {
            id: "1278349906599999".into(),
            mime_type: "image/jpeg".into(),
            sha256: "9f2c0a6d3e4b5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff".into(),
        };
        app.meta
            .webhooks()
            .send_inbound(
                &anna(),
                InboundMessage::image(&gone, Some("the damaged box")),
            )
            .await
            .unwrap();
        eventually("the caption in the chat", 20, || async {
            app.customer_messages(ANNA).len() == 1
        })
        .await;
        let m = &app.customer_messages(ANNA)[0];
        let text = m.text.clone().unwrap_or_default();
        assert!(text.starts_with("the damaged box\n"), "{text}");
        assert!(text.contains("⚠ media could not be fetched ("), "{text}");
        assert!(text.contains("image-1278349906599999.jpg"), "{text}");
        assert!(m.files.is_empty());
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_reply_shows_its_quote_forwards_are_marked_and_reactions_name_their_message() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        let asked = hooks
            .send_inbound(&anna(), InboundMessage::text("Has order 1042 shipped?"))
            .await
            .unwrap();
        eventually("the question", 20, || async {
            app.customer_messages(ANNA).len() == 1
        })
        .await;
        app.bitrix
            .operator_reply(ANNA, "It ships [b]today[/b].", vec![])
            .await;
        eventually("the answer sent", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        let answer = app.meta.sent_messages()[0].wamid.clone();
        // The operator's reply marked the question read: the customer sees blue ticks.
        eventually("marked read", 20, || async {
            app.meta.marked_read() == vec![asked.wamid.clone()]
        })
        .await;

        hooks
            .send_inbound(
                &anna(),
                InboundMessage::text("Great, thanks!").replying_to(&answer),
            )
            .await
            .unwrap();
        hooks
            .send_inbound(&anna(), InboundMessage::text("see this").forwarded(false))
            .await
            .unwrap();
        hooks
            .send_inbound(&anna(), InboundMessage::reaction(&asked.wamid, Some("👍")))
            .await
            .unwrap();
        hooks
            .send_inbound(&anna(), InboundMessage::reaction(&answer, None))
            .await
            .unwrap();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::text("and this?").replying_to("wamid.NEVER-SEEN"),
            )
            .await
            .unwrap();
        eventually("all five in the chat", 20, || async {
            app.customer_messages(ANNA).len() == 6
        })
        .await;
        let t = texts(&app, ANNA);
        assert_eq!(
            t[1],
            "↩ Reply to the operator's message:\n>>It ships *today*.\nGreat, thanks!"
        );
        assert_eq!(t[2], "↪ Forwarded\nsee this");
        assert_eq!(
            t[3],
            "Reacted 👍 to the customer's message:\n>>Has order 1042 shipped?"
        );
        assert_eq!(
            t[4],
            "Removed the reaction to the operator's message:\n>>It ships *today*."
        );
        assert_eq!(
            t[5],
            "↩ Reply to an earlier message (not kept here)\nand this?"
        );

        // The operator quotes the customer's question: WhatsApp shows the reply against it.
        app.bitrix
            .operator_reply(
                ANNA,
                "------------------------------------------------------\nAnna Schmidt [07.12.2026 18:00]\nHas order 1042 shipped?\n------------------------------------------------------\nYes, it left this morning.",
                vec![],
            )
            .await;
        eventually("the quoting reply sent", 20, || async {
            app.meta.sent_messages().len() == 2
        })
        .await;
        let sent = &app.meta.sent_messages()[1];
        assert_eq!(sent.body["context"]["message_id"], asked.wamid.as_str());
    })
    .await;
}

#[tokio::test]
async fn a_customer_from_an_ad_shows_the_ad_once_and_the_lead_names_it_as_source() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::text("Is the sale still on?").from_ad(
                    "120208812345",
                    "Spring sale",
                    "20% off every box",
                ),
            )
            .await
            .unwrap();
        hooks
            .send_inbound(&anna(), InboundMessage::text("I want two"))
            .await
            .unwrap();
        eventually("both messages and the lead", 20, || async {
            app.customer_messages(ANNA).len() == 2 && app.bitrix.leads().len() == 1
        })
        .await;
        let t = texts(&app, ANNA);
        assert_eq!(
            t[0],
            "📣 Came from an ad: «Spring sale» — 20% off every box\nhttps://fb.me/120208812345\nIs the sale still on?"
        );
        assert_eq!(t[1], "I want two");
        let lead = &app.bitrix.leads()[0];
        assert_eq!(lead.fields["SOURCE_ID"], "ADVERTISING");
        let described = lead.fields["SOURCE_DESCRIPTION"].as_str().unwrap();
        assert!(described.contains("Spring sale"), "{described}");
        assert!(described.contains("120208812345"), "{described}");
    })
    .await;
}

/// The ad rides on the customer's first message only. When a later message's job is the one
/// that creates the lead (here the first one's lead call failed and waits for its retry), the
/// lead still names the ad.
#[tokio::test]
async fn the_lead_names_the_ad_even_when_a_later_message_creates_it() {
    let app = TestApp::start().await;
    app.ready().await;
    app.bitrix
        .fail_next("crm.lead.add", "INTERNAL_SERVER_ERROR", 500, 1);
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::text("Is the sale still on?").from_ad(
                    "120208812345",
                    "Spring sale",
                    "20% off every box",
                ),
            )
            .await
            .unwrap();
        eventually(
            "the first message in, its lead refused once",
            20,
            || async {
                app.customer_messages(ANNA).len() == 1
                    && app
                        .bitrix
                        .recorder()
                        .all()
                        .iter()
                        .any(|r| r.path.contains("crm.lead.add") || r.path.contains("/batch"))
            },
        )
        .await;
        assert!(app.bitrix.leads().is_empty());
        hooks
            .send_inbound(&anna(), InboundMessage::text("I want two"))
            .await
            .unwrap();
        eventually("the second message and the lead", 20, || async {
            app.customer_messages(ANNA).len() == 2 && app.bitrix.leads().len() == 1
        })
        .await;
        let lead = &app.bitrix.leads()[0];
        assert_eq!(lead.fields["SOURCE_ID"], "ADVERTISING", "{:?}", lead.fields);
        let described = lead.fields["SOURCE_DESCRIPTION"].as_str().unwrap();
        assert!(described.contains("Spring sale"), "{described}");
    })
    .await;
}

#[tokio::test]
async fn a_customer_who_hides_their_number_gets_replies_by_user_id_in_one_chat() {
    let app = TestApp::start().await;
    app.ready().await;
    const BSUID: &str = "US.13491208655302741918";
    with_workers(&app.core, app.registry(), async {
        let hidden = Customer::hidden(BSUID, "anna_s", "");
        app.meta
            .webhooks()
            .send_inbound(&hidden, InboundMessage::text("hello from a username"))
            .await
            .unwrap();
        eventually("the message", 20, || async {
            app.customer_messages(BSUID).len() == 1
        })
        .await;
        let chat = app.bitrix.chat(BSUID).unwrap();
        assert_eq!(chat.name.as_deref(), Some("@anna_s"));
        let m = &app.customer_messages(BSUID)[0];
        assert_eq!(m.user_name.as_deref(), Some("anna-s"));
        assert_eq!(m.user_phone, None);

        app.bitrix
            .operator_reply(BSUID, "Hello! How can we help?", vec![])
            .await;
        eventually("the reply accepted by Meta", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        let sent = &app.meta.sent_messages()[0];
        assert_eq!(sent.body["recipient"], BSUID);
        assert!(sent.body.get("to").is_none(), "{}", sent.body);
        eventually("delivered in Bitrix", 20, || async {
            let ops = operator_messages(&app, BSUID);
            ops.len() == 1 && ops[0].1
        })
        .await;

        // Later the same user shares their number: still the one chat, replies by number.
        let shown = Customer::new("4917699900011", "Anna Schmidt").with_user_id(BSUID);
        app.meta
            .webhooks()
            .send_inbound(&shown, InboundMessage::text("here is my number"))
            .await
            .unwrap();
        eventually("in the same chat", 20, || async {
            app.customer_messages(BSUID).len() == 2
        })
        .await;
        assert!(app.bitrix.chat("4917699900011").is_none());
        app.bitrix.operator_reply(BSUID, "Thanks!", vec![]).await;
        eventually("the second reply", 20, || async {
            app.meta.sent_messages().len() == 2
        })
        .await;
        assert_eq!(app.meta.sent_messages()[1].body["to"], "4917699900011");
        eventually("all work finished", 10, || app.idle()).await;
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_customer_who_changes_number_stays_in_the_same_chat_and_replies_follow() {
    let app = TestApp::start().await;
    app.ready().await;
    const NEW: &str = "4917655512399";
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        hooks
            .send_inbound(&anna(), InboundMessage::text("my old phone is dying"))
            .await
            .unwrap();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::number_changed("Anna Schmidt", ANNA, NEW),
            )
            .await
            .unwrap();
        eventually("the notice", 20, || async {
            app.customer_messages(ANNA).len() == 2
        })
        .await;
        hooks
            .send_inbound(
                &Customer::new(NEW, "Anna Schmidt"),
                InboundMessage::text("new number, same Anna"),
            )
            .await
            .unwrap();
        eventually("the new number's message in the same chat", 20, || async {
            app.customer_messages(ANNA).len() == 3
        })
        .await;
        let t = texts(&app, ANNA);
        assert!(t[1].contains(NEW), "{}", t[1]);
        assert_eq!(t[2], "new number, same Anna");
        assert!(app.bitrix.chat(NEW).is_none());
        app.bitrix
            .operator_reply(ANNA, "Noted your new number.", vec![])
            .await;
        eventually("the reply", 20, || async {
            app.meta.sent_messages().len() == 1
        })
        .await;
        assert_eq!(app.meta.sent_messages()[0].wa_id, NEW);
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(app.bitrix.leads().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn flow_submissions_and_orders_are_readable() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::flow_reply(&json!({
                    "flow_token": "f-1042", "delivery_date": "2026-12-24", "boxes": ["small", "large"],
                })),
            )
            .await
            .unwrap();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::order(
                    "1234567890",
                    Some("gift wrap please"),
                    &[("BOX-S", 2, 4.5, "EUR"), ("BOX-L", 1, 9.0, "EUR")],
                ),
            )
            .await
            .unwrap();
        eventually("both in the chat", 20, || async {
            app.customer_messages(ANNA).len() == 2
        })
        .await;
        let t = texts(&app, ANNA);
        assert_eq!(
            t[0],
            "📋 Form submitted\nboxes: small, large\ndelivery date: 2026-12-24"
        );
        assert_eq!(
            t[1],
            "🛒 Order\n2 × BOX-S — 4.50 EUR\n1 × BOX-L — 9.00 EUR\nTotal: 18.00 EUR\nNote: gift wrap please"
        );
    })
    .await;
}

#[tokio::test]
async fn an_operator_who_edits_or_deletes_a_sent_reply_is_told_whatsapp_keeps_it() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        app.meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("hello"))
            .await
            .unwrap();
        eventually("dialog", 20, || async { app.bitrix.chat(ANNA).is_some() }).await;
        let reply = app
            .bitrix
            .operator_reply(ANNA, "Your order ships Monday.", vec![])
            .await;
        eventually("delivered", 20, || async {
            operator_messages(&app, ANNA) == vec![(reply.message_id, true)]
        })
        .await;
        let edited = app
            .bitrix
            .operator_edit(reply.message_id, "Your order ships Tuesday.")
            .await;
        assert_eq!(edited[0].status, Some(200));
        eventually("the edit note", 20, || async {
            notes(&app, ANNA).len() == 1
        })
        .await;
        assert!(
            notes(&app, ANNA)[0].contains("WhatsApp can't edit a message that was already sent")
        );
        let deleted = app.bitrix.operator_delete(reply.message_id).await;
        assert_eq!(deleted[0].status, Some(200));
        eventually("the delete note", 20, || async {
            notes(&app, ANNA).len() == 2
        })
        .await;
        assert!(
            notes(&app, ANNA)[1].contains("WhatsApp can't delete a message that was already sent")
        );
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(app.meta.sent_messages().len(), 1);
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}
