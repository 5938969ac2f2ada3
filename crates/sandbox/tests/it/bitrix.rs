//! The fake Bitrix24 portal against protocol `bitrix24-open-channels.md`, over real HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    Router,
    body::Bytes,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use sandbox::bitrix::{BitrixConfig, ChatMessage, FakeBitrix, OperatorFile};
use serde_json::{Value, json};

const CONNECTOR: &str = "switchboard_whatsapp";

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn portal() -> FakeBitrix {
    FakeBitrix::start(BitrixConfig::default()).await
}

fn token(b: &FakeBitrix) -> String {
    b.current_tokens().expect("a live grant").access_token
}

async fn call(b: &FakeBitrix, method: &str, mut body: Value) -> (u16, Value) {
    if body.get("auth").is_none() {
        body["auth"] = json!(token(b));
    }
    let r = reqwest::Client::new()
        .post(format!("{}/rest/{method}.json", b.portal_url()))
        .json(&body)
        .send()
        .await
        .expect("portal reachable");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn refresh(b: &FakeBitrix, client_id: &str, refresh_token: &str) -> (u16, Value) {
    let secret = b.config().client_secret;
    let r = reqwest::Client::new()
        .get(format!("{}/oauth/token/", b.oauth_url()))
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("client_secret", secret.as_str()),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .expect("oauth reachable");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn register_and_activate(b: &FakeBitrix) {
    let (_, reg) = call(
        b,
        "imconnector.register",
        json!({"ID": CONNECTOR, "NAME": "WhatsApp (Zuse)",
               "ICON": {"DATA_IMAGE": "data:image/svg+xml,%3Csvg%3E%3C/svg%3E"},
               "PLACEMENT_HANDLER": "https://bridge.example/bitrix/placement"}),
    )
    .await;
    assert_eq!(reg["result"], json!({"result": true}));
    let (status, act) = call(
        b,
        "imconnector.activate",
        json!({"CONNECTOR": CONNECTOR, "LINE": 3, "ACTIVE": 1}),
    )
    .await;
    assert_eq!((status, &act["result"]), (200, &json!(true)));
}

async fn bind_events(b: &FakeBitrix, rx: &sandbox::Served) {
    let (_, body) = call(
        b,
        "event.bind",
        json!({"event": "OnImConnectorMessageAdd", "handler": format!("{}/bitrix/events", rx.url())}),
    )
    .await;
    assert_eq!(body["result"], json!(true));
}

fn text_message(chat: &str, text: &str) -> Value {
    json!({"CONNECTOR": CONNECTOR, "LINE": 3, "MESSAGES": [{
        "user": {"id": chat, "name": "Anna", "last_name": "Schmidt", "phone": format!("+{chat}")},
        "message": {"id": format!("wamid.{text}"), "date": 1767259200, "text": text},
        "chat": {"id": chat, "name": "Anna Schmidt", "url": format!("https://wa.me/{chat}")}}]})
}

/// A tiny HTTP receiver that keeps every body it gets and answers `status`.
async fn receiver(status: StatusCode) -> (sandbox::Served, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = Router::new().route(
        "/bitrix/events",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                sink.lock().unwrap().push((ct, body));
                status
            }
        }),
    );
    (sandbox::serve(app).await, got)
}

fn decode(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[tokio::test]
async fn refresh_rotates_and_a_used_refresh_token_is_invalid_grant() {
    let b = portal().await;
    let cfg = b.config();
    let first = b.current_tokens().unwrap();

    let (status, body) = refresh(&b, &cfg.client_id, &first.refresh_token).await;
    assert_eq!(status, 200);
    assert_ne!(body["access_token"], json!(first.access_token));
    assert_ne!(body["refresh_token"], json!(first.refresh_token));
    assert_eq!(body["expires_in"], json!(3600));
    assert_eq!(body["member_id"], json!(cfg.member_id));
    assert_eq!(body["client_endpoint"], json!(b.client_endpoint()));
    assert_eq!(
        b.current_tokens().unwrap().refresh_token,
        body["refresh_token"].as_str().unwrap()
    );

    let (status, body) = refresh(&b, &cfg.client_id, &first.refresh_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let newest = b.current_tokens().unwrap().refresh_token;
    assert_eq!(refresh(&b, &cfg.client_id, &newest).await.0, 200);

    let (_, body) = refresh(&b, "local.other", "whatever").await;
    assert_eq!(body["error"], json!("invalid_client"));

    b.revoke_refresh_tokens();
    let newest = b.current_tokens().unwrap().refresh_token;
    assert_eq!(
        refresh(&b, &cfg.client_id, &newest).await.1["error"],
        json!("invalid_grant")
    );
}

#[tokio::test]
async fn user_admin_tells_the_installing_admin_from_other_users() {
    let b = portal().await;
    let app = b.current_tokens().unwrap();
    let (status, body) = call(&b, "user.admin", json!({})).await;
    assert_eq!((status, &body["result"]), (200, &json!(true)));

    // An ordinary user's tokens work for REST and refresh, but are not an admin's, and
    // refreshing them leaves the app's grant alone.
    let user = b.user_grant(7);
    let (status, body) = call(&b, "user.admin", json!({"auth": user.access_token})).await;
    assert_eq!((status, &body["result"]), (200, &json!(false)));
    let (status, refreshed) = refresh(&b, &b.config().client_id, &user.refresh_token).await;
    assert_eq!((status, &refreshed["user_id"]), (200, &json!(7)));
    assert_eq!(b.current_tokens().unwrap(), app);
    let (_, body) = call(&b, "user.admin", json!({"auth": refreshed["access_token"]})).await;
    assert_eq!(body["result"], json!(false));
}

#[tokio::test]
async fn authorization_code_is_single_use() {
    let b = portal().await;
    let cfg = b.config();
    let code = b.issue_authorization_code();
    let exchange = || {
        reqwest::Client::new()
            .get(format!("{}/oauth/token/", b.oauth_url()))
            .query(&[
                ("grant_type", "authorization_code"),
                ("client_id", cfg.client_id.as_str()),
                ("client_secret", cfg.client_secret.as_str()),
                ("code", code.as_str()),
            ])
            .send()
    };
    assert_eq!(exchange().await.unwrap().status(), 200);
    assert_eq!(exchange().await.unwrap().status(), 400);
}

#[tokio::test]
async fn expired_and_unknown_tokens_are_told_apart() {
    let b = portal().await;
    let (status, body) = call(&b, "app.info", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["INSTALLED"], json!(true));
    assert!(body["time"]["date_start"].is_string());

    b.expire_access_tokens();
    let (status, body) = call(&b, "app.info", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("expired_token"))
    );

    let (status, body) = call(&b, "app.info", json!({"auth": "never-issued"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
}

#[tokio::test]
async fn send_messages_needs_register_and_activate() {
    let b = portal().await;
    let (status, body) = call(
        &b,
        "imconnector.send.messages",
        text_message("4917612345678", "Hi"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("NOT_ACTIVE_LINE"))
    );

    register_and_activate(&b).await;
    let (_, st) = call(
        &b,
        "imconnector.status",
        json!({"CONNECTOR": CONNECTOR, "LINE": 3}),
    )
    .await;
    assert_eq!(st["result"]["STATUS"], json!(true));
    assert_eq!(st["result"]["CONFIGURED"], json!(true));
    let (_, st) = call(&b, "imconnector.status", json!({"CONNECTOR": CONNECTOR})).await;
    assert_eq!(st["result"]["STATUS"], json!(false), "LINE defaults to 0");

    let first = text_message("4917612345678", "Hi, has order 1042 shipped?");
    let (status, body) = call(&b, "imconnector.send.messages", first).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["SUCCESS"], json!(true));
    let item = &body["result"]["DATA"]["RESULT"][0];
    assert_eq!(item["SUCCESS"], json!(true));
    assert_eq!(item["message"]["date"], json!({}));
    assert_eq!(
        item["chat"]["description"],
        json!("Link to the original post: https://wa.me/4917612345678")
    );
    let chat = b.chat("4917612345678").unwrap();
    assert_eq!(
        item["session"]["CHAT_ID"],
        json!(chat.bitrix_chat_id.to_string())
    );
    assert_eq!(item["user"], json!(chat.bitrix_user_id.to_string()));
    assert!(matches!(&chat.messages[..],
        [ChatMessage::Customer(m)] if m.text.as_deref() == Some("Hi, has order 1042 shipped?")));

    let (_, again) = call(
        &b,
        "imconnector.send.messages",
        text_message("4917612345678", "Hello?"),
    )
    .await;
    assert_eq!(
        again["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"], item["session"]["CHAT_ID"],
        "same dialog, same Bitrix chat"
    );
    assert_eq!(b.messages_in_chat("4917612345678").len(), 2);
}

#[tokio::test]
async fn send_messages_rejects_bad_items_one_by_one() {
    let b = portal().await;
    register_and_activate(&b).await;
    let (status, body) = call(&b, "imconnector.send.messages", json!({"CONNECTOR": CONNECTOR, "LINE": 3, "MESSAGES": [
        {"user": {"id": "1", "name": "Anna"}, "message": {"id": "a", "text": "ok"}, "chat": {"id": "1"}},
        {"user": {"name": "Anna"}, "message": {"id": "b", "text": "no user id"}, "chat": {"id": "2"}},
        {"user": {"id": "3"}, "message": {"id": "c"}, "chat": {"id": "3"}},
        {"user": {"id": "4", "name": "Anna 🌸 from the 4th floor"}, "message": {"text": "x"}, "chat": {"id": "4"}},
    ]}))
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["SUCCESS"], json!(false));
    let codes: Vec<Value> = body["result"]["DATA"]["RESULT"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ERRORS"][0]["code"].clone())
        .collect();
    assert_eq!(
        codes,
        vec![
            Value::Null,
            json!("CONNECTOR_PROXY_NO_USER_IM"),
            json!("IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"),
            json!("CONNECTOR_PROXY_NO_ADD_USER"),
        ]
    );
    assert_eq!(b.chats().len(), 1);
}

#[tokio::test]
async fn register_failures_are_nested_in_a_200() {
    let b = portal().await;
    let (status, body) = call(
        &b,
        "imconnector.register",
        json!({"ID": CONNECTOR, "NAME": "x", "PLACEMENT_HANDLER": "https://bridge.example/p"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["result"], json!(false));
    assert_eq!(body["result"]["error"], json!("ICON_REQUIRED"));
    let (_, body) = call(
        &b,
        "imconnector.register",
        json!({"ID": "switchboard.whatsapp"}),
    )
    .await;
    assert_eq!(
        body["result"]["error"],
        json!("APPLICATION_REGISTRATION_ERROR_POINT")
    );
}

#[tokio::test]
async fn form_bodies_and_query_auth_work_too() {
    let b = portal().await;
    let r = reqwest::Client::new()
        .post(format!("{}/rest/imconnector.register?auth={}", b.portal_url(), token(&b)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("ID=Switchboard_WhatsApp&NAME=WA&ICON[DATA_IMAGE]=data:image/svg%2Bxml,x&PLACEMENT_HANDLER=https://b.example/p")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["result"],
        json!({"result": true})
    );
    assert_eq!(b.connectors()[0].id, "switchboard_whatsapp");
    let (status, body) = call(&b, "no.such.method", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("ERROR_METHOD_NOT_FOUND"))
    );
}

#[tokio::test]
async fn send_messages_downloads_files_without_credentials() {
    let seen_auth: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = seen_auth.clone();
    let media = sandbox::serve(Router::new().route(
        "/media/{id}",
        get(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string());
                seen.lock().unwrap().push(auth);
                (
                    [("content-type", "image/jpeg")],
                    b"\xff\xd8jpeg-bytes".to_vec(),
                )
            }
        }),
    ))
    .await;
    let b = portal().await;
    register_and_activate(&b).await;
    let mut msg = text_message("4917612345678", "photo");
    msg["MESSAGES"][0]["message"]["files"] = json!([
        {"url": format!("{}/media/p4Kz", media.url()), "name": "photo-1.jpg"},
        {"url": format!("{}/nope", media.url()), "name": "gone.pdf"},
    ]);
    let (status, body) = call(&b, "imconnector.send.messages", msg).await;
    assert_eq!((status, &body["result"]["SUCCESS"]), (200, &json!(true)));
    let ChatMessage::Customer(m) = &b.messages_in_chat("4917612345678")[0] else {
        panic!("customer message expected");
    };
    assert_eq!(
        m.files[0].download.as_deref().unwrap(),
        b"\xff\xd8jpeg-bytes"
    );
    assert!(m.files[1].download.is_err());
    assert_eq!(*seen_auth.lock().unwrap(), vec![None]);
}

#[tokio::test]
async fn rate_limit_answers_503_query_limit_exceeded() {
    let b = portal().await;
    b.set_rate_limit(0.5, 3.0);
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, body) = call(&b, "app.info", json!({})).await;
        answers.push((status, body["error"].as_str().map(str::to_string)));
    }
    assert!(answers[..3].iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(answers[4], (503, Some("QUERY_LIMIT_EXCEEDED".into())));
}

#[tokio::test]
async fn injected_failures_and_outage() {
    let b = portal().await;
    b.fail_next("imconnector.send.messages", "INTERNAL_SERVER_ERROR", 500, 1);
    let (status, body) = call(&b, "imconnector.send.messages", text_message("1", "x")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("INTERNAL_SERVER_ERROR"))
    );
    let (status, _) = call(&b, "imconnector.send.messages", text_message("1", "x")).await;
    assert_eq!(
        status, 400,
        "injection used up; the real answer is NOT_ACTIVE_LINE"
    );
    b.set_down(true);
    assert_eq!(call(&b, "app.info", json!({})).await.0, 503);
}

#[tokio::test]
async fn operator_reply_reaches_bound_handler_as_php_form() {
    let (rx, got) = receiver(StatusCode::OK).await;
    let b = FakeBitrix::start(BitrixConfig {
        operator_signature: Some("Maria Petrova".into()),
        ..BitrixConfig::default()
    })
    .await;
    register_and_activate(&b).await;
    bind_events(&b, &rx).await;
    let dup = json!({"event": "OnImConnectorMessageAdd", "handler": format!("{}/bitrix/events", rx.url())});
    let (status, dup) = call(&b, "event.bind", dup).await;
    assert_eq!(
        (status, dup["error_description"].as_str()),
        (400, Some("Handler already binded"))
    );
    let (_, events) = call(&b, "event.get", json!({})).await;
    assert_eq!(
        events["result"][0]["event"],
        json!("ONIMCONNECTORMESSAGEADD")
    );
    call(
        &b,
        "imconnector.send.messages",
        text_message("4917612345678", "Hi"),
    )
    .await;

    let files = vec![
        OperatorFile::document("invoice-1042.pdf", b"%PDF-1.4".to_vec()),
        OperatorFile::image("photo.jpg", b"\xff\xd8img".to_vec(), 1280, 960),
    ];
    let reply = b
        .operator_reply("4917612345678", "Your order ships [i]today[/i].", files)
        .await;
    assert_eq!(reply.status(), Some(200));
    let (content_type, body) = got.lock().unwrap()[0].clone();
    assert_eq!(content_type, "application/x-www-form-urlencoded");
    let form = decode(&body);
    let chat = b.chat("4917612345678").unwrap();
    let cfg = b.config();
    let text = "[b]Maria Petrova:[/b][br] Your order ships [i]today[/i].";
    let expect = [
        ("event", "ONIMCONNECTORMESSAGEADD".to_string()),
        ("data[CONNECTOR]", CONNECTOR.to_string()),
        ("data[LINE]", "3".to_string()),
        (
            "data[MESSAGES][0][im][chat_id]",
            chat.bitrix_chat_id.to_string(),
        ),
        (
            "data[MESSAGES][0][im][message_id]",
            reply.message_id.to_string(),
        ),
        ("data[MESSAGES][0][message][user_id]", "12".to_string()),
        ("data[MESSAGES][0][message][text]", text.to_string()),
        (
            "data[MESSAGES][0][message][files][0][name]",
            "invoice-1042.pdf".to_string(),
        ),
        (
            "data[MESSAGES][0][message][files][0][type]",
            "file".to_string(),
        ),
        (
            "data[MESSAGES][0][message][files][0][size]",
            "8".to_string(),
        ),
        (
            "data[MESSAGES][0][message][files][1][type]",
            "image".to_string(),
        ),
        (
            "data[MESSAGES][0][message][files][1][width]",
            "1280".to_string(),
        ),
        (
            "data[MESSAGES][0][message][files][1][height]",
            "960".to_string(),
        ),
        ("data[MESSAGES][0][chat][id]", "4917612345678".to_string()),
        ("auth[application_token]", cfg.application_token.clone()),
        ("auth[member_id]", cfg.member_id.clone()),
    ];
    for (k, v) in expect {
        assert_eq!(form.get(k), Some(&v), "{k}");
    }
    for k in [
        "event_handler_id",
        "ts",
        "auth[access_token]",
        "auth[domain]",
        "auth[client_endpoint]",
    ] {
        assert!(form.contains_key(k), "{k}");
    }
    assert!(!form.contains_key("auth[refresh_token]"));

    let link = &form["data[MESSAGES][0][message][files][1][link]"];
    assert!(link.ends_with("#img.jpg"), "{link}");
    let fetched = reqwest::get(link.split('#').next().unwrap()).await.unwrap();
    assert_eq!(&fetched.bytes().await.unwrap()[..], b"\xff\xd8img");
    let forged = format!("{}/pub/im.file.php?FILE_ID=70311&SIGN=abc", b.portal_url());
    assert_eq!(reqwest::get(forged).await.unwrap().status(), 403);
}

#[tokio::test]
async fn event_is_not_retried_when_the_handler_fails() {
    let (rx, got) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let b = portal().await;
    register_and_activate(&b).await;
    bind_events(&b, &rx).await;
    call(&b, "imconnector.send.messages", text_message("49", "Hi")).await;
    let reply = b.operator_reply("49", "hello", Vec::new()).await;
    assert_eq!(reply.status(), Some(500));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn delivery_status_needs_array_ids_and_a_real_message() {
    let b = portal().await;
    register_and_activate(&b).await;
    call(&b, "imconnector.send.messages", text_message("49", "Hi")).await;
    let reply = b.operator_reply("49", "hello", Vec::new()).await;
    let confirm = |id: Value, message_id: u64| {
        json!({"CONNECTOR": CONNECTOR, "LINE": 3, "MESSAGES": [{
            "im": {"chat_id": reply.chat_id, "message_id": message_id},
            "message": {"id": id, "date": 1767259301}, "chat": {"id": "49"}}]})
    };
    let method = "imconnector.send.status.delivery";
    let (_, body) = call(&b, method, confirm(json!("wamid.X"), reply.message_id)).await;
    assert_eq!(body["result"]["SUCCESS"], json!(false), "scalar message.id");
    let (_, body) = call(&b, method, confirm(json!(["wamid.X"]), 1)).await;
    assert_eq!(
        body["result"]["SUCCESS"],
        json!(false),
        "unknown im.message_id"
    );
    let (_, body) = call(&b, method, confirm(json!(["wamid.X"]), reply.message_id)).await;
    assert_eq!(body["result"], json!({"SUCCESS": true, "DATA": []}));
    let delivered = b.messages_in_chat("49").into_iter().find_map(|m| match m {
        ChatMessage::Operator(op) => op.delivered_as,
        _ => None,
    });
    assert_eq!(delivered, Some(vec!["wamid.X".to_string()]));
}

#[tokio::test]
async fn system_note_is_stored_and_not_relayed() {
    let (rx, got) = receiver(StatusCode::OK).await;
    let b = portal().await;
    register_and_activate(&b).await;
    bind_events(&b, &rx).await;
    call(&b, "imconnector.send.messages", text_message("49", "Hi")).await;
    let chat = b.chat("49").unwrap().bitrix_chat_id;
    let note = json!({"DIALOG_ID": format!("chat{chat}"),
        "MESSAGE": "Not sent: outside the 24-hour window", "SYSTEM": "Y"});
    let (status, body) = call(&b, "im.message.add", note).await;
    assert_eq!(status, 200);
    assert!(body["result"].is_u64());
    assert!(matches!(b.messages_in_chat("49").last(), Some(ChatMessage::System(n)) if n.system));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn findbycomm_without_hits_is_an_empty_list() {
    let b = portal().await;
    let query = json!({"type": "PHONE", "values": ["+4917612345678", "4917612345678"], "entity_type": "LEAD"});
    let (_, body) = call(&b, "crm.duplicate.findbycomm", query.clone()).await;
    assert_eq!(body["result"], json!([]));
    let lead = json!({"fields": {"TITLE": "WhatsApp: Anna",
        "PHONE": [{"VALUE": "+4917612345678", "VALUE_TYPE": "MOBILE"}]}});
    let (_, added) = call(&b, "crm.lead.add", lead).await;
    let id = added["result"].as_u64().unwrap();
    let (_, body) = call(&b, "crm.duplicate.findbycomm", query).await;
    assert_eq!(body["result"], json!({"LEAD": [id]}));
    assert_eq!(b.leads().len(), 1);
}

#[tokio::test]
async fn script_install_posts_php_form_and_replaces_the_grant() {
    let (rx, got) = receiver(StatusCode::OK).await;
    let b = portal().await;
    let old = b.current_tokens().unwrap();
    let outcome = b.install_into(&format!("{}/bitrix/events", rx.url())).await;
    assert_eq!(outcome.status, Some(200));
    assert!(b.installed());
    let form = decode(&got.lock().unwrap()[0].1);
    assert_eq!(form["event"], "ONAPPINSTALL");
    assert_eq!(form["auth[refresh_token]"], outcome.grant.refresh_token);
    assert_eq!(
        form["auth[application_token]"],
        b.config().application_token
    );
    let (status, body) = call(&b, "app.info", json!({"auth": old.access_token})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
}

#[tokio::test]
async fn ui_install_needs_install_finish() {
    let page = sandbox::serve(
        Router::new()
            .route(
                "/good",
                post(|| async {
                    axum::response::Html(
                        r#"<script src="https://api.bitrix24.com/api/v1/"></script>
                       <script>BX24.init(function(){BX24.installFinish();});</script>"#,
                    )
                }),
            )
            .route(
                "/bare",
                post(|| async { axum::response::Html("WhatsApp bridge installed") }),
            ),
    )
    .await;
    let b = portal().await;
    let bare = b.install_ui_into(&format!("{}/bare", page.url())).await;
    assert!(!bare.installed && !b.installed());
    let good = b.install_ui_into(&format!("{}/good", page.url())).await;
    assert!(good.installed && b.installed());
}

/// `http_build_query` of `params`, as a product writes a batch command's query.
fn build_query(params: &Value) -> String {
    fn flatten(prefix: String, value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    flatten(format!("{prefix}[{k}]"), v, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    flatten(format!("{prefix}[{i}]"), v, out);
                }
            }
            Value::String(s) => out.push((prefix, s.clone())),
            other => out.push((prefix, other.to_string())),
        }
    }
    let mut pairs = Vec::new();
    for (k, v) in params.as_object().expect("params are an object") {
        flatten(k.clone(), v, &mut pairs);
    }
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn command(method: &str, params: Value) -> Value {
    json!(format!("{method}?{}", build_query(&params)))
}

fn lead(title: &str) -> Value {
    command("crm.lead.add", json!({"fields": {"TITLE": title}}))
}

/// A JSON `batch` whose `cmd` keys stay in the order given (`json!` would sort them).
async fn batch(b: &FakeBitrix, halt: u8, cmd: &[(&str, Value)]) -> (u16, Value) {
    let entries: Vec<String> = cmd
        .iter()
        .map(|(k, v)| format!("{}:{v}", json!(k)))
        .collect();
    let body = format!(
        r#"{{"halt":{halt},"auth":{},"cmd":{{{}}}}}"#,
        json!(token(b)),
        entries.join(",")
    );
    let r = reqwest::Client::new()
        .post(format!("{}/rest/batch.json", b.portal_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("portal reachable");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn keys(map: &Value) -> Vec<String> {
    let mut keys: Vec<String> = map
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

#[tokio::test]
async fn batch_runs_its_commands_in_the_order_sent_as_single_calls() {
    let b = portal().await;
    register_and_activate(&b).await;
    // `m10` sorts before `m9`: the portal must still run them as sent.
    let (status, body) = batch(
        &b,
        0,
        &[
            (
                "m9",
                command("imconnector.send.messages", text_message("49", "first")),
            ),
            (
                "m10",
                command("imconnector.send.messages", text_message("49", "second")),
            ),
            ("add", lead("WhatsApp: Anna")),
            ("get", json!("crm.lead.get?id=$result[add]")),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = &body["result"];
    assert_eq!(out["result_error"], json!([]));
    assert_eq!(out["result_total"], json!([]));
    assert_eq!(out["result_next"], json!([]));
    assert_eq!(keys(&out["result"]), ["add", "get", "m10", "m9"]);
    assert_eq!(keys(&out["result_time"]), keys(&out["result"]));
    assert!(out["result_time"]["m9"]["date_start"].is_string());
    assert!(body["time"]["date_start"].is_string());

    let texts: Vec<Option<String>> = b
        .messages_in_chat("49")
        .into_iter()
        .map(|m| match m {
            ChatMessage::Customer(c) => c.text,
            _ => None,
        })
        .collect();
    assert_eq!(texts, [Some("first".into()), Some("second".into())]);
    let chat = b.chat("49").unwrap();
    let sent = &out["result"]["m9"];
    assert_eq!(sent["SUCCESS"], json!(true));
    assert_eq!(
        sent["DATA"]["RESULT"][0]["session"]["CHAT_ID"],
        json!(chat.bitrix_chat_id.to_string())
    );
    let leads = b.leads();
    assert_eq!(leads.len(), 1);
    assert_eq!(out["result"]["add"], json!(leads[0].id));
    assert_eq!(out["result"]["get"]["ID"], json!(leads[0].id.to_string()));
    assert_eq!(out["result"]["get"]["TITLE"], json!("WhatsApp: Anna"));
    assert_eq!(b.batches(), (1, 4));
}

#[tokio::test]
async fn batch_without_halt_runs_every_command_and_reports_failures_apart() {
    let b = FakeBitrix::start(BitrixConfig {
        scope: "crm,imopenlines".into(),
        ..BitrixConfig::default()
    })
    .await;
    b.fail_next("crm.lead.add", "INTERNAL_SERVER_ERROR", 500, 1);
    let (status, body) = batch(
        &b,
        0,
        &[
            ("a", lead("injected away")),
            ("b", lead("created")),
            (
                "c",
                command(
                    "im.message.add",
                    json!({"DIALOG_ID": "chat1", "MESSAGE": "x"}),
                ),
            ),
            ("d", json!("crm.lead.list")),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = &body["result"];
    assert_eq!(keys(&out["result"]), ["b", "d"]);
    assert_eq!(keys(&out["result_error"]), ["a", "c"]);
    assert_eq!(
        out["result_error"]["a"],
        json!({"error": "INTERNAL_SERVER_ERROR", "error_description": "Injected failure"})
    );
    assert_eq!(
        out["result_error"]["c"]["error"],
        json!("insufficient_scope")
    );
    assert_eq!(keys(&out["result_time"]), ["b", "d"]);
    assert_eq!(out["result_total"], json!({"d": 1}));
    assert_eq!(out["result_next"], json!([]));
    assert_eq!(b.leads().len(), 1);
    assert_eq!(b.leads()[0].fields["TITLE"], json!("created"));
}

#[tokio::test]
async fn batch_with_halt_stops_at_the_first_failure() {
    let b = portal().await;
    let (status, body) = batch(
        &b,
        1,
        &[
            ("first", lead("kept")),
            (
                "inactive",
                command("imconnector.send.messages", text_message("49", "Hi")),
            ),
            ("never", lead("never created")),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = &body["result"];
    assert_eq!(keys(&out["result"]), ["first"]);
    assert_eq!(keys(&out["result_error"]), ["inactive"]);
    assert_eq!(
        out["result_error"]["inactive"]["error"],
        json!("NOT_ACTIVE_LINE")
    );
    assert_eq!(keys(&out["result_time"]), ["first"]);
    assert_eq!(b.leads().len(), 1);
}

#[tokio::test]
async fn batch_runs_fifty_commands_and_refuses_the_rest() {
    let b = portal().await;
    let cmd: Vec<Value> = (0..52).map(|n| lead(&format!("lead {n}"))).collect();
    // Sent as a list, so the keys are 0, 1, ….
    let (status, body) = call(&b, "batch", json!({"halt": 0, "cmd": cmd})).await;
    assert_eq!(status, 200, "{body}");
    let out = &body["result"];
    // Keys 0..49 make a PHP list; the refused 50 and 51 an object.
    assert_eq!(out["result"].as_array().map(Vec::len), Some(50));
    assert_eq!(keys(&out["result_error"]), ["50", "51"]);
    assert_eq!(
        out["result_error"]["50"],
        json!({"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"})
    );
    assert_eq!(b.leads().len(), 50);
    assert_eq!(b.batches(), (1, 52));
}

#[tokio::test]
async fn batch_inside_a_batch_is_not_allowed() {
    let b = portal().await;
    let inner = format!("batch?{}", build_query(&json!({"cmd": {"x": "app.info"}})));
    let (status, body) = batch(
        &b,
        0,
        &[("inner", json!(inner)), ("info", json!("app.info"))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = &body["result"];
    assert_eq!(
        out["result_error"],
        json!({"inner": {"error": "ERROR_BATCH_METHOD_NOT_ALLOWED",
                         "error_description": "Method is not allowed for batch usage"}})
    );
    assert_eq!(keys(&out["result"]), ["info"]);
    assert_eq!(b.batches(), (1, 2));
}

#[tokio::test]
async fn form_encoded_batch_answers_like_a_json_one() {
    let b = portal().await;
    let cmd = [
        ("info", json!("app.info")),
        (
            "dup",
            command(
                "crm.duplicate.findbycomm",
                json!({"type": "PHONE", "values": ["+49"]}),
            ),
        ),
        ("missing", json!("crm.lead.get?id=1")),
    ];
    let (_, from_json) = batch(&b, 0, &cmd).await;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("halt", "0")
        .extend_pairs(
            cmd.iter()
                .map(|(k, v)| (format!("cmd[{k}]"), v.as_str().unwrap().to_string())),
        )
        .finish();
    let r = reqwest::Client::new()
        .post(format!("{}/rest/batch?auth={}", b.portal_url(), token(&b)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let from_form: Value = r.json().await.unwrap();
    for part in ["result", "result_error", "result_total", "result_next"] {
        assert_eq!(
            from_form["result"][part], from_json["result"][part],
            "{part}"
        );
    }
    assert_eq!(from_form["result"]["result"]["dup"], json!([]));
    assert_eq!(keys(&from_form["result"]["result_error"]), ["missing"]);
    assert_eq!(b.batches(), (2, 6));
}

#[tokio::test]
async fn batch_is_one_request_against_the_rate_limit() {
    let b = portal().await;
    b.strict_rate_limit();
    let client = reqwest::Client::new();
    let url = format!("{}/rest/batch.json", b.portal_url());
    let body = json!({"halt": 0, "auth": token(&b), "cmd": {"a": "app.info", "b": "user.admin"}});
    let mut sent = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let request = client.post(&url).json(&body).send();
        sent.spawn(async move {
            let r = request.await.expect("portal reachable");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body["error"].as_str().map(str::to_string))
        });
    }
    let answers = sent.join_all().await;
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(admitted, 50, "{answers:?}");
    assert!(
        refused
            .iter()
            .all(|(s, e)| *s == 503 && e.as_deref() == Some("QUERY_LIMIT_EXCEEDED")),
        "{refused:?}"
    );
    assert_eq!(b.limit_refusals(), 10);
    assert_eq!(b.batches(), (50, 100));
}

#[tokio::test]
async fn batch_is_admitted_once_with_its_own_token() {
    let b = portal().await;
    // A command's own `auth` neither lets it in nor shuts it out.
    let (status, body) = batch(&b, 0, &[("info", json!("app.info?auth=never-issued"))]).await;
    assert_eq!((status, &body["result"]["result_error"]), (200, &json!([])));

    let live = token(&b);
    b.expire_access_tokens();
    let (status, body) = batch(
        &b,
        0,
        &[(
            "add",
            json!(format!("crm.lead.add?fields[TITLE]=x&auth={live}")),
        )],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("expired_token"))
    );
    assert!(b.leads().is_empty());

    b.set_down(true);
    let (status, _) = batch(&b, 0, &[("add", lead("x"))]).await;
    assert_eq!(status, 503);
    assert!(b.leads().is_empty());
    assert_eq!(b.batches(), (1, 1));
}

#[tokio::test]
async fn open_channels_are_listed_and_created() {
    let b = FakeBitrix::start(BitrixConfig {
        extra_lines: vec![5],
        ..BitrixConfig::default()
    })
    .await;
    let (status, list) = call(&b, "imopenlines.config.list.get", json!({})).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["result"],
        json!([
            {"ID": "3", "ACTIVE": "Y", "LINE_NAME": "Open Channel 3"},
            {"ID": "5", "ACTIVE": "Y", "LINE_NAME": "Open Channel 5"},
        ])
    );
    let (status, added) = call(
        &b,
        "imopenlines.config.add",
        json!({"PARAMS": {"LINE_NAME": "WhatsApp"}}),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["result"], json!(6));
    let (_, list) = call(&b, "imopenlines.config.list.get", json!({})).await;
    assert_eq!(
        list["result"][2],
        json!({"ID": "6", "ACTIVE": "Y", "LINE_NAME": "WhatsApp"})
    );
    // The new line is a line like the others: the connector can be activated on it.
    let (_, config) = call(&b, "imopenlines.config.get", json!({"CONFIG_ID": 6})).await;
    assert_eq!(config["result"]["ID"], "6", "{config}");
}

#[tokio::test]
async fn the_local_app_page_installs_into_the_path_given() {
    use axum::{Router, routing::post};
    let b = FakeBitrix::start(BitrixConfig {
        preinstalled: false,
        ..BitrixConfig::default()
    })
    .await;
    // An install page that finishes the install as Bitrix requires.
    let app = Router::new().route(
        "/install",
        post(|| async {
            axum::response::Html(
                r#"<script src="https://api.bitrix24.com/api/v1/"></script><script>BX24.init(function(){BX24.installFinish();});</script>"#,
            )
        }),
    );
    let served = sandbox::serve(app).await;
    let page = format!(
        "{}{}",
        b.portal_url(),
        sandbox::bitrix::pages::LOCAL_APP_PATH
    );
    let http = reqwest::Client::new();
    let form = http.get(&page).send().await.unwrap().text().await.unwrap();
    assert!(form.contains("name=\"install_url\""), "{form}");
    let refused = http
        .post(&page)
        .form(&[("install_url", "not a url")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refused.contains("Not a URL"), "{refused}");
    assert!(!b.installed());
    let done = http
        .post(&page)
        .form(&[("install_url", format!("{}/install", served.url()))])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(done.contains("data-installed=\"true\""), "{done}");
    assert!(b.installed());
}
