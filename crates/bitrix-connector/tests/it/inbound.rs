//! Issue 6: WhatsApp → Bitrix24 over real HTTP against the sandbox fakes — signature, dedupe,
//! one lead per number, media re-hosting, OAuth refresh, outages and dead letters.

use crate::support::{ANNA, TestApp, VERIFY_TOKEN};
use sandbox::{
    bitrix::{BitrixConfig, OperatorFile},
    harness::eventually,
    meta::{Customer, InboundMessage, Signature, Status},
};
use serde_json::Value;
use switchboard_core::testing::with_workers;

fn anna() -> Customer {
    Customer::new(ANNA, "Anna Schmidt")
}

#[tokio::test]
async fn signed_text_message_becomes_one_bitrix_message_and_one_lead() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let sent = app
            .meta
            .webhooks()
            .send_inbound(
                &anna(),
                InboundMessage::text("Hi, has order 1042 shipped?").at(1_767_259_200),
            )
            .await
            .unwrap();
        assert_eq!(sent.status, 200);
        eventually("the message and its lead", 20, || async {
            app.customer_messages(ANNA).len() == 1 && app.bitrix.leads().len() == 1
        })
        .await;
        let m = &app.customer_messages(ANNA)[0];
        assert_eq!(m.external_id.as_deref(), Some(sent.wamid.as_str()));
        assert_eq!(m.text.as_deref(), Some("Hi, has order 1042 shipped?"));
        assert_eq!(m.date, Some(1_767_259_200));
        assert_eq!(m.user_name.as_deref(), Some("Anna"));
        assert_eq!(m.user_last_name.as_deref(), Some("Schmidt"));
        assert_eq!(m.user_phone.as_deref(), Some("+4917612345678"));
        let chat = app.bitrix.chat(ANNA).unwrap();
        assert_eq!(
            (chat.connector.as_str(), chat.line),
            ("switchboard_whatsapp", 3)
        );
        assert_eq!(chat.external_user_id, ANNA);
        let lead = &app.bitrix.leads()[0];
        assert!(!lead.by_openlines);
        assert_eq!(lead.multifield("PHONE"), vec!["+4917612345678".to_string()]);
        assert_eq!(lead.fields["NAME"], "Anna");
        // The 24-hour guard reads the message's own timestamp, not the arrival time.
        let last = bitrix_connector::store::last_inbound_at(&app.core.db, ANNA)
            .await
            .unwrap();
        assert_eq!(last, Some(1_767_259_200_000));
        eventually("all work finished", 10, || app.idle()).await;
        // A second message from the same number makes no second lead.
        app.meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("hello?"))
            .await
            .unwrap();
        eventually("second message", 20, || async {
            app.customer_messages(ANNA).len() == 2
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(app.bitrix.leads().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn bad_signature_is_401_recorded_and_relays_nothing() {
    let app = TestApp::start().await;
    app.ready().await;
    let hooks = app.meta.webhooks();
    let payload = hooks
        .payload()
        .message(&anna(), InboundMessage::text("forged"));
    for sig in [Signature::Wrong, Signature::Missing] {
        let resp = hooks.deliver_with(&payload, sig).await.unwrap();
        assert_eq!(resp.status(), 401);
    }
    let counts = app.core.inbox.count_by_status().await.unwrap();
    assert_eq!(counts.get("rejected"), Some(&2));
    assert_eq!(counts.get("received"), None);
    assert_eq!(app.core.jobs.stats().await.unwrap().pending, 0);
    assert!(app.bitrix.chats().is_empty());
}

#[tokio::test]
async fn the_same_wamid_three_times_is_relayed_once() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        let payload = hooks.payload().message(
            &anna(),
            InboundMessage::text("only once").with_id("wamid.ONCE-0001"),
        );
        for _ in 0..3 {
            assert_eq!(hooks.deliver(&payload).await.unwrap().status(), 200);
        }
        eventually("relayed", 20, || async {
            app.customer_messages(ANNA).len() == 1
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        assert_eq!(app.customer_messages(ANNA).len(), 1);
        let counts = app.core.inbox.count_by_status().await.unwrap();
        assert_eq!(counts.get("duplicate"), Some(&2));
        // A replay of the stored payload is idempotent too.
        let ids = app
            .core
            .inbox
            .select_for_replay(Some("meta"), None)
            .await
            .unwrap();
        app.core.inbox.replay(&ids).await.unwrap();
        switchboard_core::inbox::dispatch_pending(&app.core.inbox, &app.core.jobs)
            .await
            .unwrap();
        eventually("replay finished", 10, || app.idle()).await;
        assert_eq!(app.customer_messages(ANNA).len(), 1);
        assert_eq!(app.bitrix.leads().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn ten_concurrent_first_messages_create_exactly_one_lead() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        let sends = (0..10).map(|i| {
            let hooks = hooks.clone();
            async move {
                hooks
                    .send_inbound(&anna(), InboundMessage::text(format!("message {i}")))
                    .await
                    .unwrap()
            }
        });
        futures::future::join_all(sends).await;
        eventually("ten messages", 30, || async {
            app.customer_messages(ANNA).len() == 10
        })
        .await;
        eventually("all work finished", 20, || app.idle()).await;
        assert_eq!(app.bitrix.leads().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn one_post_with_several_messages_retries_only_the_failed_one() {
    let app = TestApp::start().await;
    app.ready().await;
    // The first send fails (portal 500) and is retried; the second waits for it (a customer's
    // messages keep their order) and is sent once, after it.
    app.bitrix
        .fail_next("imconnector.send.messages", "INTERNAL_SERVER_ERROR", 500, 1);
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        let payload = hooks.payload().messages(
            &anna(),
            [
                InboundMessage::text("first"),
                InboundMessage::text("second"),
            ],
        );
        assert_eq!(hooks.deliver(&payload).await.unwrap().status(), 200);
        eventually("first to retry, second behind it", 20, || async {
            app.customer_messages(ANNA).is_empty()
                && app
                    .core
                    .jobs
                    .list(false, 50)
                    .await
                    .unwrap()
                    .iter()
                    .any(|j| j.last_error.is_some())
        })
        .await;
        app.core.jobs.make_due_now().await.unwrap();
        eventually("both delivered", 20, || async {
            app.customer_messages(ANNA).len() == 2
        })
        .await;
        eventually("all work finished", 10, || app.idle()).await;
        let texts: Vec<_> = app
            .customer_messages(ANNA)
            .into_iter()
            .filter_map(|m| m.text)
            .collect();
        assert_eq!(texts, vec!["first", "second"]);
    })
    .await;
}

#[tokio::test]
async fn an_image_reaches_bitrix_as_a_working_link_with_the_original_bytes() {
    let app = TestApp::start().await;
    app.ready().await;
    let jpeg: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let media = app.meta.add_inbound_media(jpeg.clone(), "image/jpeg");
    let pdf = app
        .meta
        .add_inbound_media(b"%PDF-1.4 invoice".to_vec(), "application/pdf");
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::image(&media, Some("the damaged box")),
            )
            .await
            .unwrap();
        hooks
            .send_inbound(
                &anna(),
                InboundMessage::document(&pdf, "invoice-1042.pdf", None),
            )
            .await
            .unwrap();
        eventually("both files", 20, || async {
            app.customer_messages(ANNA).len() == 2
        })
        .await;
    })
    .await;
    let msgs = app.customer_messages(ANNA);
    let image = msgs
        .iter()
        .find(|m| m.text.as_deref() == Some("the damaged box"))
        .unwrap();
    let file = &image.files[0];
    // The fake portal downloaded the link itself, without credentials, as Bitrix does.
    assert_eq!(file.download.as_ref().unwrap(), &jpeg);
    assert_eq!(file.content_type.as_deref(), Some("image/jpeg"));
    assert!(file.name.as_deref().unwrap().ends_with(".jpg"));
    assert!(file.url.starts_with(&format!("{}/media/", app.url)));
    let doc = msgs.iter().find(|m| m.text.is_none()).unwrap();
    assert_eq!(doc.files[0].name.as_deref(), Some("invoice-1042.pdf"));
    assert_eq!(doc.files[0].download.as_ref().unwrap(), b"%PDF-1.4 invoice");
    // Unknown or malformed ids are 404, never a listing.
    for bad in ["0123456789abcdef0123456789abcdef", "..%2f..", "x"] {
        let r = reqwest::get(format!("{}/media/{bad}", app.url))
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}

/// `/media/{id}` shares its origin with the admin pages, so a customer's document
/// must never render as active content there: a page or an SVG is a download of inert bytes,
/// sandboxed, never sniffed; only inert media types (a JPEG here) show inline.
#[tokio::test]
async fn customer_html_and_svg_documents_are_served_as_sandboxed_downloads() {
    let app = TestApp::start().await;
    app.ready().await;
    let script = "<script>fetch('/admin/credentials').then(r=>r.text()).then(alert)</script>";
    let html = format!("<!doctype html><html><body>{script}</body></html>");
    let svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\"><script>{script}</script></svg>");
    let sent = [
        (
            "invoice.html",
            app.meta.add_inbound_media(html.clone(), "text/html"),
        ),
        (
            "logo.svg",
            app.meta.add_inbound_media(svg.clone(), "image/svg+xml"),
        ),
        (
            "page.xhtml",
            app.meta
                .add_inbound_media(html.clone(), "application/xhtml+xml; charset=utf-8"),
        ),
    ];
    let jpeg = app
        .meta
        .add_inbound_media(b"\xff\xd8\xff\xe0 jpeg".to_vec(), "image/jpeg");
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        for (name, media) in &sent {
            hooks
                .send_inbound(&anna(), InboundMessage::document(media, name, None))
                .await
                .unwrap();
        }
        hooks
            .send_inbound(&anna(), InboundMessage::image(&jpeg, Some("photo")))
            .await
            .unwrap();
        eventually("all files in Bitrix", 20, || async {
            app.customer_messages(ANNA).len() == sent.len() + 1
        })
        .await;
    })
    .await;
    let http = reqwest::Client::new();
    for m in app.customer_messages(ANNA) {
        let file = &m.files[0];
        let r = http.get(&file.url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h = |k: &str| {
            r.headers()
                .get(k)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let name = file.name.clone().unwrap_or_default();
        let (ctype, disposition, csp) = (
            h("content-type"),
            h("content-disposition"),
            h("content-security-policy"),
        );
        assert_eq!(h("x-content-type-options"), "nosniff", "{name}");
        assert!(csp.contains("sandbox"), "{name}: CSP {csp:?}");
        assert!(csp.contains("default-src 'none'"), "{name}: CSP {csp:?}");
        if m.text.as_deref() == Some("photo") {
            assert_eq!(ctype, "image/jpeg");
            assert!(disposition.starts_with("inline;"), "{disposition}");
        } else {
            assert_eq!(ctype, "application/octet-stream", "{name}");
            assert!(
                disposition.starts_with("attachment;"),
                "{name}: {disposition}"
            );
            assert!(disposition.contains(&name), "{name}: {disposition}");
            // The bytes themselves are the customer's, unchanged.
            let body = r.text().await.unwrap();
            assert!(body.contains("<script>"), "{name}");
        }
    }
}

#[tokio::test]
async fn location_contacts_and_replies_arrive_as_readable_text() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        for m in [
            InboundMessage::location(52.52, 13.405, Some("Office"), Some("Alexanderplatz 1")),
            InboundMessage::contact_card("Max Mustermann", "+49 30 1234", None),
            InboundMessage::button_reply("yes", "Yes please"),
        ] {
            hooks.send_inbound(&anna(), m).await.unwrap();
        }
        eventually("three messages", 20, || async {
            app.customer_messages(ANNA).len() == 3
        })
        .await;
    })
    .await;
    let texts: Vec<String> = app
        .customer_messages(ANNA)
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Alexanderplatz 1") && t.contains("52.52,13.405"))
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Max Mustermann") && t.contains("+49 30 1234"))
    );
    assert!(texts.iter().any(|t| t == "Yes please"));
}

#[tokio::test]
async fn an_expired_bitrix_token_is_refreshed_and_the_message_delivered() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        let before = app.bitrix.current_tokens().unwrap();
        app.bitrix.expire_access_tokens();
        app.meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("after expiry"))
            .await
            .unwrap();
        eventually("delivered", 20, || async {
            app.customer_messages(ANNA).len() == 1
        })
        .await;
        let after = app.bitrix.current_tokens().unwrap();
        assert_ne!(
            before.refresh_token, after.refresh_token,
            "a refresh happened"
        );
        // The newest pair is what is stored (the old refresh token is dead at the portal).
        let stored = bitrix_connector::bitrix::oauth::load(&app.core)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.refresh_token, after.refresh_token);
        assert_eq!(stored.access_token, after.access_token);
    })
    .await;
}

#[tokio::test]
async fn bitrix_down_for_a_while_then_delivered_by_retries() {
    let app = TestApp::start().await;
    app.ready().await;
    app.bitrix.set_down(true);
    with_workers(&app.core, app.registry(), async {
        let sent = app
            .meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("while down"))
            .await
            .unwrap();
        // Bitrix never holds us up: the ack came while it was down.
        assert_eq!(sent.status, 200);
        eventually("a failed attempt", 20, || async {
            app.core
                .jobs
                .list(false, 50)
                .await
                .unwrap()
                .iter()
                .any(|j| {
                    j.kind == "bitrix-connector.relay-to-bitrix"
                        && j.last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("unavailable"))
                })
        })
        .await;
        app.core.jobs.make_due_now().await.unwrap();
        eventually("a second failed attempt", 20, || async {
            app.core
                .jobs
                .list(false, 50)
                .await
                .unwrap()
                .iter()
                .any(|j| j.kind == "bitrix-connector.relay-to-bitrix" && j.attempts >= 2)
        })
        .await;
        assert!(app.customer_messages(ANNA).is_empty());
        app.bitrix.set_down(false);
        app.core.jobs.make_due_now().await.unwrap();
        eventually("delivered after the outage", 20, || async {
            app.customer_messages(ANNA).len() == 1
        })
        .await;
        assert!(app.dead_letters().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn not_active_line_is_dead_lettered_with_the_fix() {
    let app = TestApp::start().await;
    app.install().await;
    app.register_connector().await; // registered, never activated
    with_workers(&app.core, app.registry(), async {
        app.meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("nobody listens"))
            .await
            .unwrap();
        eventually("dead letter", 20, || async {
            !app.dead_letters().await.is_empty()
        })
        .await;
    })
    .await;
    let dead = app.dead_letters().await;
    assert!(dead[0].contains("NOT_ACTIVE_LINE"), "{dead:?}");
    assert!(
        dead[0].contains("Connector registered but not connected to the line. Run `switchboard bitrix activate-connector`."),
        "{dead:?}"
    );
}

#[tokio::test]
async fn a_revoked_grant_is_dead_lettered_with_the_reinstall_fix() {
    let app = TestApp::start().await;
    app.ready().await;
    app.bitrix.revoke_refresh_tokens();
    app.bitrix.expire_access_tokens();
    with_workers(&app.core, app.registry(), async {
        app.meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("hello"))
            .await
            .unwrap();
        eventually("dead letter", 20, || async {
            !app.dead_letters().await.is_empty()
        })
        .await;
    })
    .await;
    let dead = app.dead_letters().await;
    assert!(
        dead[0].contains("invalid_grant") && dead[0].contains("Re-install"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn meta_verification_handshake() {
    let app = TestApp::start().await;
    let callback = format!("{}/webhook/whatsapp", app.url);
    app.meta
        .verify_subscription(&callback, VERIFY_TOKEN)
        .await
        .unwrap();
    let wrong = app
        .meta
        .verify_subscription(&callback, "guess")
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("403"), "{wrong}");
}

#[tokio::test]
async fn missing_settings_answer_503_naming_them() {
    let app = TestApp::start_with(
        BitrixConfig::default(),
        &[
            "SWITCHBOARD_META_APP_SECRET",
            "SWITCHBOARD_META_VERIFY_TOKEN",
        ],
    )
    .await;
    let r = app.post_raw(b"{}", Some("sha256=00".into())).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "SWITCHBOARD_META_APP_SECRET");
    let r = reqwest::get(format!("{}/webhook/whatsapp?hub.mode=subscribe", app.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "SWITCHBOARD_META_VERIFY_TOKEN");
}

#[tokio::test]
async fn bad_json_with_a_good_signature_is_400_and_recorded() {
    let app = TestApp::start().await;
    let body = b"{not json";
    let sig = app.meta.webhooks().sign(body);
    let r = app.post_raw(body, Some(sig)).await;
    assert_eq!(r.status(), 400);
    let counts = app.core.inbox.count_by_status().await.unwrap();
    assert_eq!(counts.get("rejected"), Some(&1));
}

#[tokio::test]
async fn ui_install_calls_install_finish_and_stores_the_grant() {
    let app = TestApp::start().await;
    let out = app
        .bitrix
        .install_ui_into(&format!("{}/bitrix/install", app.url))
        .await;
    assert!(out.installed, "status {:?}: {}", out.status, out.body);
    let stored = app.stored_grant().await.unwrap();
    // Verified by redeeming the posted refresh token: the rotated pair is what is kept.
    let current = app.bitrix.current_tokens().unwrap();
    assert_ne!(stored.refresh_token, out.grant.refresh_token);
    assert_eq!(stored.refresh_token, current.refresh_token);
    assert_eq!(stored.access_token, current.access_token);
    assert_eq!(stored.member_id, out.grant.member_id);
    assert_eq!(
        stored.application_token,
        Some(app.bitrix.config().application_token)
    );
}

#[tokio::test]
async fn a_script_install_is_verified_at_the_oauth_server_and_keeps_the_rotated_tokens() {
    let app = TestApp::start().await;
    let out = app
        .bitrix
        .install_into(&format!("{}/bitrix/install", app.url))
        .await;
    assert_eq!(out.status, Some(200), "{}", out.body);
    let stored = app.stored_grant().await.unwrap();
    let current = app.bitrix.current_tokens().unwrap();
    assert_ne!(stored.refresh_token, out.grant.refresh_token);
    assert_eq!(
        (&stored.access_token, &stored.refresh_token),
        (&current.access_token, &current.refresh_token)
    );
    assert_eq!(stored.client_endpoint, app.bitrix.client_endpoint());
    let host = app.bitrix.portal_url().replace("http://", "");
    assert_eq!(stored.domain.as_deref(), Some(host.as_str()));
    let refreshes = app.bitrix.recorder().matching("/oauth/token/");
    assert_eq!(refreshes.len(), 1);
    let query = refreshes[0].query.clone().unwrap_or_default();
    assert!(query.contains(&out.grant.refresh_token), "{query}");
    // The admin check ran with the new token.
    let admin = app.bitrix.recorder().matching("/user.admin.json");
    assert_eq!(admin.len(), 1);
    assert_eq!(admin[0].json()["auth"], current.access_token.as_str());
}

/// Any user who opens the app gets tokens of it (the frame's AUTH_ID/REFRESH_ID). Posted to
/// the install URL with a forged application token they must not replace the admin's grant.
#[tokio::test]
async fn an_install_with_an_ordinary_users_tokens_is_refused() {
    let app = TestApp::start().await;
    app.install().await;
    let before = app.stored_grant().await.unwrap();
    let cfg = app.bitrix.config();
    let endpoint = app.bitrix.client_endpoint();

    let user = app.bitrix.user_grant(12);
    let r = app
        .post_form(
            "/bitrix/install",
            &[
                ("event", "ONAPPINSTALL"),
                ("auth[access_token]", &user.access_token),
                ("auth[refresh_token]", &user.refresh_token),
                ("auth[member_id]", &cfg.member_id),
                ("auth[client_endpoint]", &endpoint),
                ("auth[application_token]", "chosen-by-the-user"),
            ],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("administrator"));

    let user = app.bitrix.user_grant(12);
    let host = app.bitrix.portal_url().replace("http://", "");
    let r = app
        .post_form(
            &format!("/bitrix/install?DOMAIN={host}&PROTOCOL=0&LANG=en"),
            &[
                ("AUTH_ID", &user.access_token),
                ("AUTH_EXPIRES", "3600"),
                ("REFRESH_ID", &user.refresh_token),
                ("member_id", &cfg.member_id),
                ("APPLICATION_TOKEN", "chosen-by-the-user"),
                ("PLACEMENT", "DEFAULT"),
            ],
        )
        .await;
    assert_eq!(r.status(), 403);

    let after = app.stored_grant().await.unwrap();
    assert_eq!(after.access_token, before.access_token);
    assert_eq!(after.application_token, Some(cfg.application_token));
}

#[tokio::test]
async fn an_install_for_another_member_id_than_the_stored_grant_is_refused() {
    let app = TestApp::start().await;
    app.install().await;
    let mut other = app.stored_grant().await.unwrap();
    other.member_id = "another-portal".into();
    bitrix_connector::bitrix::oauth::store(&app.core, &other)
        .await
        .unwrap();
    let out = app
        .bitrix
        .install_into(&format!("{}/bitrix/install", app.url))
        .await;
    assert_eq!(out.status, Some(403), "{}", out.body);
    assert!(out.body.contains("member_id"), "{}", out.body);
    assert_eq!(
        app.stored_grant().await.unwrap().member_id,
        "another-portal"
    );

    // A grant left from a portal that is no longer configured is replaced.
    other.client_endpoint = "https://old-portal.example/rest/".into();
    bitrix_connector::bitrix::oauth::store(&app.core, &other)
        .await
        .unwrap();
    app.install().await;
    assert_eq!(
        app.stored_grant().await.unwrap().member_id,
        app.bitrix.config().member_id
    );
}

#[tokio::test]
async fn an_install_for_another_portal_or_with_a_dead_token_is_refused() {
    let app = TestApp::start().await;
    let form = "event=ONAPPINSTALL&auth[access_token]=x&auth[refresh_token]=y&auth[member_id]=m\
                &auth[client_endpoint]=https://evil.example/rest/";
    let r = reqwest::Client::new()
        .post(format!("{}/bitrix/install", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let form = format!(
        "event=ONAPPINSTALL&auth[access_token]=x&auth[refresh_token]=y&auth[member_id]=m&auth[client_endpoint]={}/rest/",
        app.bitrix.portal_url()
    );
    let r = reqwest::Client::new()
        .post(format!("{}/bitrix/install", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        bitrix_connector::bitrix::oauth::load(&app.core)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn meta_delivered_and_read_statuses_reach_the_operator_message() {
    let app = TestApp::start().await;
    app.ready().await;
    with_workers(&app.core, app.registry(), async {
        app.meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("hi"))
            .await
            .unwrap();
        eventually("chat exists", 20, || async {
            app.bitrix.chat(ANNA).is_some()
        })
        .await;
        // An operator message the bridge relayed earlier, mapped to the wamid Meta gave it. The
        // event itself is refused here (wrong token) so only the status path is exercised.
        app.core
            .settings
            .set(
                bitrix_connector::catalogue::BITRIX_APPLICATION_TOKEN,
                "not-the-portals",
            )
            .await
            .unwrap();
        let reply = app
            .bitrix
            .operator_reply(ANNA, "on its way", Vec::<OperatorFile>::new())
            .await;
        let (mid, cid) = (reply.message_id.to_string(), reply.chat_id.to_string());
        let db = &app.core.db;
        bitrix_connector::store::record_outbound(db, &mid, &cid, ANNA)
            .await
            .unwrap();
        bitrix_connector::store::set_outbound(db, &mid, "sent", Some("wamid.OUT-1"), None)
            .await
            .unwrap();
        let hooks = app.meta.webhooks();
        let payload = hooks.payload().statuses([
            Status::delivered("wamid.OUT-1", ANNA),
            Status::read("wamid.OUT-1", ANNA),
        ]);
        assert_eq!(hooks.deliver(&payload).await.unwrap().status(), 200);
        eventually("delivery confirmed in Bitrix", 20, || async {
            app.bitrix.messages_in_chat(ANNA).iter().any(|m| {
                matches!(m,
                sandbox::bitrix::ChatMessage::Operator(op)
                    if op.delivered_as.as_deref() == Some(&["wamid.OUT-1".to_string()][..]))
            })
        })
        .await;
        eventually("reading reported", 20, || async {
            app.bitrix_calls("imconnector.send.status.reading") > 0
        })
        .await;
    })
    .await;
}

/// Regression (found by the kill -9 review, issue 9): a relay job killed between claiming a
/// customer's lead and creating it left the claim behind, and its recovered job treated the
/// claim as "someone else is on it" and finished — the lead was never created. Now the job
/// retries until the claim is done or stale, then creates the lead itself.
#[tokio::test]
async fn a_lead_claim_left_by_a_dead_job_is_taken_over() {
    let app = TestApp::start().await;
    app.ready().await;
    let phone = format!("+{ANNA}");
    // The dead job's claim.
    let claim = bitrix_connector::store::claim_lead(&app.core.db, &phone)
        .await
        .unwrap();
    assert!(matches!(claim, bitrix_connector::store::LeadClaim::Mine));
    with_workers(&app.core, app.registry(), async {
        app.meta
            .webhooks()
            .send_inbound(&anna(), InboundMessage::text("hello?"))
            .await
            .unwrap();
        eventually("the message relayed", 20, || async {
            app.customer_messages(ANNA).len() == 1
        })
        .await;
        assert_eq!(app.bitrix.leads().len(), 0, "the claim is still live");
        // Test-only time travel: the dead job's claim is now older than the stale limit, and
        // the waiting retry is due.
        switchboard_core::on_pool!(&app.core.db, |p| sqlx::query(
            "UPDATE bitrix_leads SET claimed_at = claimed_at - 600000 WHERE phone = $1"
        )
        .bind(&phone)
        .execute(p)
        .await
        .map(|_| ()))
        .unwrap();
        app.core.jobs.make_due_now().await.unwrap();
        eventually("the lead created by the retried job", 20, || async {
            app.bitrix.leads().len() == 1
        })
        .await;
        assert_eq!(
            app.customer_messages(ANNA).len(),
            1,
            "the message is not resent"
        );
    })
    .await;
}
