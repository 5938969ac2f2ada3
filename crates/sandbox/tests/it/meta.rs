//! The fake Meta over real HTTP: Graph routes as the product calls them, and webhooks as the
//! product receives them, checked against the protocol doc rather than against the fake's code.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use hmac::{Hmac, Mac};
use sandbox::{
    harness::poll,
    meta::{
        BusinessNumber, Customer, FakeMeta, InboundMessage, MetaConfig, Signature, Status, Template,
    },
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CUSTOMER: &str = "4917612345678";

async fn fake() -> FakeMeta {
    FakeMeta::start(MetaConfig {
        templates: vec![
            Template::new("hello_world", "en_US", 0),
            Template::new("order_update", "en_US", 2),
        ],
        ..MetaConfig::default()
    })
    .await
}

fn messages_url(meta: &FakeMeta) -> String {
    format!(
        "{}/{}/messages",
        meta.graph_url(),
        meta.config().phone_number_id
    )
}

async fn post_json(meta: &FakeMeta, url: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(&meta.config().access_token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn text_to(to: &str, body: &str) -> Value {
    json!({"messaging_product":"whatsapp","recipient_type":"individual","to":to,"type":"text",
           "text":{"preview_url":false,"body":body}})
}

/// A stand-in for the product's webhook endpoint: records raw bytes and headers, answers with
/// queued statuses (then 200).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    answers: Arc<Mutex<VecDeque<StatusCode>>>,
}

impl Receiver {
    async fn start(answers: &[StatusCode]) -> (Self, sandbox::Served) {
        let r = Self::default();
        r.answers.lock().unwrap().extend(answers.iter().copied());
        let app = Router::new()
            .route("/webhook/whatsapp", post(receive))
            .with_state(r.clone());
        (r, sandbox::serve(app).await)
    }

    fn bodies(&self) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }

    /// Polls until `n` POSTs arrived (no fixed sleeps: the fake posts from a background task).
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let arrived = poll(5, || async {
            let bodies = self.bodies();
            (bodies.len() >= n).then_some(bodies)
        })
        .await;
        arrived.unwrap_or_else(|| panic!("only {} of {n} webhooks arrived", self.bodies().len()))
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push((headers, body));
    r.answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(StatusCode::OK)
}

fn first_status(body: &Value) -> &Value {
    &body["entry"][0]["changes"][0]["value"]["statuses"][0]
}

#[tokio::test]
async fn text_send_is_accepted_recorded_and_answered_like_meta() {
    let meta = fake().await;
    meta.set_last_inbound(CUSTOMER, meta.now());

    let (status, body) = post_json(
        &meta,
        &messages_url(&meta),
        &text_to("+49 176 12345678", "*Hi*"),
    )
    .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["contacts"][0]["input"], "+49 176 12345678");
    assert_eq!(body["contacts"][0]["wa_id"], CUSTOMER);
    let wamid = body["messages"][0]["id"].as_str().unwrap();
    assert!(wamid.starts_with("wamid."));
    let sent = meta.sent_messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].wamid, wamid);
    assert_eq!(sent[0].body["text"]["body"], "*Hi*");
    assert_eq!(sent[0].graph_version, "v23.0");
    let rec = meta.recorder().matching("/112233445566778/messages");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].path, "/v23.0/112233445566778/messages");
    assert_eq!(meta.graph_versions(), ["v23.0"]);
}

#[tokio::test]
async fn bad_missing_and_revoked_tokens_are_401_code_190() {
    let meta = fake().await;
    let url = messages_url(&meta);
    let client = reqwest::Client::new();

    for req in [client.post(&url).bearer_auth("EAAwrong"), client.post(&url)] {
        let resp = req.json(&text_to(CUSTOMER, "x")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], 190);
        assert_eq!(body["error"]["type"], "OAuthException");
        assert!(body["error"]["fbtrace_id"].is_string());
    }

    let old = meta.config().access_token.clone();
    meta.set_access_token("EAAnewTOKEN");
    let resp = client
        .post(&url)
        .bearer_auth(&old)
        .json(&text_to(CUSTOMER, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["error_subcode"], 463,
        "a once-valid token reads as expired"
    );
    assert!(meta.sent_messages().is_empty());
}

#[tokio::test]
async fn unknown_phone_number_id_is_400_code_100() {
    let meta = fake().await;
    let url = format!("{}/{}/messages", meta.graph_url(), meta.config().waba_id);
    let (status, body) = post_json(&meta, &url, &text_to(CUSTOMER, "x")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["type"], "GraphMethodException");
}

#[tokio::test]
async fn invalid_bodies_are_refused_with_the_code_naming_the_problem() {
    let meta = fake().await;
    let url = messages_url(&meta);
    let cases = [
        (
            json!({"to":CUSTOMER,"type":"text","text":{"body":"x"}}),
            100,
            "messaging_product",
        ),
        (
            json!({"messaging_product":"whatsapp","type":"text","text":{"body":"x"}}),
            100,
            "to",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"fax","fax":{}}),
            100,
            "type",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"text"}),
            100,
            "text",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"text","text":{"body":""}}),
            100,
            "text['body']",
        ),
        (text_to(CUSTOMER, &"a".repeat(4097)), 100, "4096"),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"image","image":{}}),
            131_008,
            "image",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"image","image":{"id":"1","link":"https://x.example/a.jpg"}}),
            131_009,
            "only one of id or link",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"sticker","sticker":{"id":"1","caption":"c"}}),
            131_009,
            "caption",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"video","video":{"id":"1","filename":"v.mp4"}}),
            131_009,
            "filename",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"template","template":{"language":{"code":"en_US"}}}),
            100,
            "template['name']",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"template","template":{"name":"hello_world","language":{}}}),
            100,
            "template['language']['code']",
        ),
        (
            json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"template","template":{"name":"hello_world","language":{"code":"de"}}}),
            132_001,
            "does not exist",
        ),
    ];
    for (body, code, needle) in cases {
        let (status, resp) = post_json(&meta, &url, &body).await;
        assert!(status == 400 || status == 404, "{body} → {status}");
        assert_eq!(resp["error"]["code"], code, "{body} → {resp}");
        let text = format!(
            "{} {}",
            resp["error"]["message"], resp["error"]["error_data"]["details"]
        );
        assert!(text.contains(needle), "{body} → {text}");
    }
    assert!(meta.sent_messages().is_empty());
}

fn multipart(boundary: &str, bytes: &[u8], mime: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in [("messaging_product", "whatsapp"), ("type", mime)] {
        out.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .bytes(),
        );
    }
    out.extend(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\nContent-Type: {mime}\r\n\r\n"
    ).bytes());
    out.extend_from_slice(bytes);
    out.extend(format!("\r\n--{boundary}--\r\n").bytes());
    out
}

#[tokio::test]
async fn media_upload_url_download_expiry_and_delete() {
    let meta = fake().await;
    let token = meta.config().access_token.clone();
    let client = reqwest::Client::new();
    let jpeg: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();

    let resp = client
        .post(format!(
            "{}/{}/media",
            meta.graph_url(),
            meta.config().phone_number_id
        ))
        .bearer_auth(&token)
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body(multipart("XyZ", &jpeg, "image/jpeg"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        meta.uploaded_media()[0].filename.as_deref(),
        Some("photo.jpg")
    );

    let node: Value = client
        .get(format!("{}/{id}", meta.graph_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node["mime_type"], "image/jpeg");
    assert_eq!(
        node["file_size"],
        jpeg.len().to_string(),
        "file_size is a string"
    );
    assert_eq!(node["sha256"], hex::encode(Sha256::digest(&jpeg)));
    let url = node["url"].as_str().unwrap();
    assert!(url.starts_with(&meta.url()));

    let with_bearer = client.get(url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(with_bearer.status(), 200);
    assert_eq!(with_bearer.bytes().await.unwrap().as_ref(), jpeg.as_slice());

    let without = client.get(url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    assert!(
        without.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    meta.advance_clock(Duration::from_secs(301));
    let expired = client.get(url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(expired.status(), 403, "lookaside URLs live 5 minutes");

    let deleted: Value = client
        .delete(format!("{}/{id}", meta.graph_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted, json!({"success": true}));
    let gone = client
        .get(format!("{}/{id}", meta.graph_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 400);
    assert!(meta.uploaded_media().is_empty());
}

#[tokio::test]
async fn unsupported_media_type_is_refused_with_131053() {
    let meta = fake().await;
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/{}/media",
            meta.graph_url(),
            meta.config().phone_number_id
        ))
        .bearer_auth(&meta.config().access_token)
        .header("Content-Type", "multipart/form-data; boundary=b")
        .body(multipart("b", b"GIF89a", "image/gif"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        131_053
    );
}

#[tokio::test]
async fn injected_errors_have_the_documented_shape_and_status() {
    let meta = fake().await;
    meta.set_last_inbound(CUSTOMER, meta.now());
    let url = messages_url(&meta);

    meta.fail_next_sends(131_047, 1);
    let (status, body) = post_json(&meta, &url, &text_to(CUSTOMER, "late")).await;
    assert_eq!(status, 400);
    let e = &body["error"];
    assert_eq!(e["code"], 131_047);
    assert_eq!(e["type"], "OAuthException");
    assert!(e["message"].as_str().unwrap().starts_with("(#131047) "));
    assert_eq!(e["error_data"]["messaging_product"], "whatsapp");
    assert!(
        e["error_data"]["details"]
            .as_str()
            .unwrap()
            .contains("24 hours")
    );

    for (code, http) in [
        (190, 401),
        (131_030, 400),
        (130_429, 400),
        (131_000, 500),
        (100, 400),
    ] {
        meta.fail_next_sends(code, 1);
        let (status, body) = post_json(&meta, &url, &text_to(CUSTOMER, "x")).await;
        assert_eq!(
            (status, body["error"]["code"].as_u64()),
            (http, Some(code as u64))
        );
    }
    let (status, _) = post_json(&meta, &url, &text_to(CUSTOMER, "x")).await;
    assert_eq!(status, 200, "injection is used up");
    assert_eq!(meta.sent_messages().len(), 1);
}

#[tokio::test]
async fn webhook_signature_verifies_over_the_raw_meta_encoded_bytes() {
    let meta = fake().await;
    let (receiver, served) = Receiver::start(&[]).await;
    meta.set_webhook_target(format!("{}/webhook/whatsapp", served.url()));
    let anna = Customer::new(CUSTOMER, "Anna Schmidt");

    let payload = meta
        .webhooks()
        .payload()
        .message(&anna, InboundMessage::text("Grüße 👍 https://x.example/a"));
    let resp = meta.webhooks().deliver(&payload).await.unwrap();
    assert_eq!(resp.status(), 200);

    let (headers, raw) = receiver.got.lock().unwrap()[0].clone();
    assert_eq!(headers["content-type"], "application/json");
    let mut mac = Hmac::<Sha256>::new_from_slice(meta.config().app_secret.as_bytes()).unwrap();
    mac.update(&raw);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-hub-signature-256"], expected.as_str());

    let text = std::str::from_utf8(&raw).unwrap();
    assert!(text.is_ascii() && text.contains("Gr\\u00fc\\u00dfe \\ud83d\\udc4d https:\\/\\/"));
    let parsed: Value = serde_json::from_slice(&raw).unwrap();
    assert_ne!(
        serde_json::to_vec(&parsed).unwrap(),
        raw.to_vec(),
        "re-serializing changes the bytes"
    );
    let msg = &parsed["entry"][0]["changes"][0]["value"]["messages"][0];
    assert_eq!(msg["text"]["body"], "Grüße 👍 https://x.example/a");
    assert_eq!(msg["id"], payload.wamids()[0].as_str());
    assert!(msg["timestamp"].is_string());

    meta.webhooks()
        .deliver_with(&payload, Signature::Wrong)
        .await
        .unwrap();
    let (headers, raw) = receiver.got.lock().unwrap()[1].clone();
    assert_ne!(
        headers["x-hub-signature-256"].to_str().unwrap(),
        meta.webhooks().sign(&raw)
    );
}

#[tokio::test]
async fn out_of_window_send_is_accepted_then_fails_with_131047_by_webhook() {
    let meta = fake().await;
    let (receiver, served) = Receiver::start(&[]).await;
    meta.set_webhook_target(format!("{}/webhook/whatsapp", served.url()));
    meta.set_last_inbound(CUSTOMER, meta.now() - 25 * 3600);

    let body = json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"text","text":{"body":"late"},
                      "biz_opaque_callback_data":"bitrix-77"});
    let (status, resp) = post_json(&meta, &messages_url(&meta), &body).await;
    assert_eq!(status, 200, "Meta accepts first and reports later");
    let wamid = resp["messages"][0]["id"].as_str().unwrap();

    let bodies = receiver.wait_for(1).await;
    let s = first_status(&bodies[0]);
    assert_eq!(s["id"], wamid);
    assert_eq!(s["status"], "failed");
    assert_eq!(s["recipient_id"], CUSTOMER);
    assert_eq!(s["biz_opaque_callback_data"], "bitrix-77");
    assert_eq!(s["errors"][0]["code"], 131_047);
    assert_eq!(s["errors"][0]["title"], "Re-engagement message");
    assert!(
        s["errors"][0]["error_data"]["details"]
            .as_str()
            .unwrap()
            .contains("24 hours")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        receiver.bodies().len(),
        1,
        "no sent/delivered after a failure"
    );
}

#[tokio::test]
async fn a_second_number_takes_sends_keeps_its_own_window_and_reports_from_itself() {
    const SALES: &str = "998877665544332";
    let meta = FakeMeta::start(MetaConfig {
        extra_numbers: vec![BusinessNumber::new(SALES, "4930999888777")],
        ..MetaConfig::default()
    })
    .await;
    let (receiver, served) = Receiver::start(&[]).await;
    meta.set_webhook_target(format!("{}/webhook/whatsapp", served.url()));
    let anna = Customer::new(CUSTOMER, "Anna Schmidt");
    // Anna writes to the sales number only.
    let hooks = meta.webhooks();
    let payload = hooks
        .payload_to(SALES)
        .message(&anna, InboundMessage::text("hi sales"));
    assert_eq!(hooks.deliver(&payload).await.unwrap().status(), 200);
    let inbound = receiver.wait_for(1).await;
    let metadata = &inbound[0]["entry"][0]["changes"][0]["value"]["metadata"];
    assert_eq!(metadata["phone_number_id"], SALES);
    assert_eq!(metadata["display_phone_number"], "4930999888777");

    let sales_url = format!("{}/{SALES}/messages", meta.graph_url());
    let (status, resp) = post_json(&meta, &sales_url, &text_to(CUSTOMER, "from sales")).await;
    assert_eq!(status, 200);
    let (status, _) = post_json(
        &meta,
        &messages_url(&meta),
        &text_to(CUSTOMER, "from support"),
    )
    .await;
    assert_eq!(status, 200, "accepted first, as always");
    let bodies = receiver.wait_for(4).await;
    let statuses: Vec<(String, String, String)> = bodies[1..]
        .iter()
        .map(|v| {
            let value = &v["entry"][0]["changes"][0]["value"];
            (
                value["metadata"]["phone_number_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                value["statuses"][0]["id"].as_str().unwrap().to_string(),
                value["statuses"][0]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let sales_wamid = resp["messages"][0]["id"].as_str().unwrap();
    // The sales send is delivered from the sales number; the support number has no window.
    assert!(
        statuses.contains(&(SALES.into(), sales_wamid.into(), "delivered".into())),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(
            |(number, _, status)| number == &meta.config().phone_number_id && status == "failed"
        ),
        "{statuses:?}"
    );
    let sent = meta.sent_messages();
    assert_eq!(sent[0].from_phone_number_id, SALES);
    assert_eq!(sent[1].from_phone_number_id, meta.config().phone_number_id);

    let node: Value = reqwest::Client::new()
        .get(format!(
            "{}/{SALES}?fields=display_phone_number",
            meta.graph_url()
        ))
        .bearer_auth(&meta.config().access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        node,
        json!({"display_phone_number": "+4930999888777", "id": SALES})
    );
    let stranger = format!("{}/555000111222333/messages", meta.graph_url());
    let (status, body) = post_json(&meta, &stranger, &text_to(CUSTOMER, "x")).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(100)));
}

#[tokio::test]
async fn inbound_message_opens_the_window_and_sends_then_get_sent_and_delivered() {
    let meta = fake().await;
    let (receiver, served) = Receiver::start(&[]).await;
    meta.set_webhook_target(format!("{}/webhook/whatsapp", served.url()));
    let anna = Customer::new(CUSTOMER, "Anna Schmidt");
    let inbound = meta
        .webhooks()
        .send_inbound(&anna, InboundMessage::text("hi"))
        .await
        .unwrap();
    assert_eq!(meta.last_inbound(CUSTOMER), Some(meta.now()));

    let (status, resp) = post_json(&meta, &messages_url(&meta), &text_to(CUSTOMER, "hello")).await;
    assert_eq!(status, 200);
    let bodies = receiver.wait_for(3).await;
    let statuses: Vec<&Value> = bodies[1..].iter().map(first_status).collect();
    assert_eq!(statuses[0]["status"], "sent");
    assert_eq!(statuses[1]["status"], "delivered");
    assert_eq!(statuses[1]["id"], resp["messages"][0]["id"]);
    assert_eq!(statuses[1]["pricing"]["pricing_model"], "PMP");

    let read = json!({"messaging_product":"whatsapp","status":"read","message_id":inbound.wamid});
    let (status, body) = post_json(&meta, &messages_url(&meta), &read).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let outbound_id = resp["messages"][0]["id"].as_str().unwrap();
    let read_ours =
        json!({"messaging_product":"whatsapp","status":"read","message_id":outbound_id});
    let (status, body) = post_json(&meta, &messages_url(&meta), &read_ours).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (400, Some(131_009))
    );
    assert_eq!(meta.marked_read(), [inbound.wamid]);
}

#[tokio::test]
async fn template_outside_the_window_is_delivered() {
    let meta = fake().await;
    let (receiver, served) = Receiver::start(&[]).await;
    meta.set_webhook_target(format!("{}/webhook/whatsapp", served.url()));
    let body = json!({"messaging_product":"whatsapp","to":CUSTOMER,"type":"template","template":{
        "name":"order_update","language":{"code":"en_US"},
        "components":[{"type":"body","parameters":[{"type":"text","text":"Anna"},{"type":"text","text":"1042"}]}]}});
    let (status, resp) = post_json(&meta, &messages_url(&meta), &body).await;
    assert_eq!(status, 200);
    assert_eq!(resp["messages"][0]["message_status"], "accepted");
    let bodies = receiver.wait_for(2).await;
    assert_eq!(first_status(&bodies[1])["status"], "delivered");
    assert_eq!(first_status(&bodies[1])["pricing"]["category"], "utility");
}

#[tokio::test]
async fn deliver_until_acked_retries_non_200_answers() {
    let meta = fake().await;
    let (receiver, served) =
        Receiver::start(&[StatusCode::INTERNAL_SERVER_ERROR, StatusCode::ACCEPTED]).await;
    meta.set_webhook_target(format!("{}/webhook/whatsapp", served.url()));
    let payload = meta
        .webhooks()
        .payload()
        .statuses([Status::read("wamid.X", CUSTOMER)]);

    let attempts = meta
        .webhooks()
        .deliver_until_acked(&payload, 5, Duration::from_millis(10))
        .await
        .unwrap();

    assert_eq!(attempts, 3);
    let got = receiver.got.lock().unwrap();
    assert!(
        got.iter().all(|(_, b)| b == &got[0].1),
        "every retry carries the same bytes"
    );
}

#[tokio::test]
async fn verify_subscription_requires_the_challenge_verbatim_as_text() {
    #[derive(serde::Deserialize)]
    struct Hub {
        #[serde(rename = "hub.challenge")]
        challenge: String,
        #[serde(rename = "hub.verify_token")]
        token: String,
    }
    let app = Router::new()
        .route(
            "/good",
            get(|Query(h): Query<Hub>| async move {
                if h.token == "s3cret" {
                    Ok(h.challenge)
                } else {
                    Err(StatusCode::FORBIDDEN)
                }
            }),
        )
        .route(
            "/quoted",
            get(|Query(h): Query<Hub>| async move { axum::Json(h.challenge) }),
        );
    let product = sandbox::serve(app).await;
    let meta = fake().await;

    meta.verify_subscription(&format!("{}/good", product.url()), "s3cret")
        .await
        .unwrap();
    assert!(
        meta.verify_subscription(&format!("{}/good", product.url()), "wrong")
            .await
            .is_err()
    );
    assert!(
        meta.verify_subscription(&format!("{}/quoted", product.url()), "s3cret")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn phone_number_node_and_subscribed_apps() {
    let meta = fake().await;
    let client = reqwest::Client::new();
    let token = meta.config().access_token.clone();
    let node: Value = client
        .get(format!(
            "{}/{}?fields=display_phone_number,verified_name,quality_rating",
            meta.graph_url(),
            meta.config().phone_number_id
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        node,
        json!({"display_phone_number":"+49 30 123456789","verified_name":"Zuse GmbH","quality_rating":"GREEN","id":"112233445566778"})
    );

    let bad = client
        .get(format!(
            "{}/{}",
            meta.graph_url(),
            meta.config().phone_number_id
        ))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let apps = format!(
        "{}/{}/subscribed_apps",
        meta.graph_url(),
        meta.config().waba_id
    );
    let del: Value = client
        .delete(&apps)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(del, json!({"success": true}));
    let listed: Value = client
        .get(&apps)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!({"data": []}));
    client.post(&apps).bearer_auth(&token).send().await.unwrap();
    assert!(meta.is_subscribed());
}

/// A callback answering Meta's handshake with `token`, as a product would.
async fn verifying_callback(token: &'static str) -> sandbox::Served {
    let app = Router::new().route(
        "/hook",
        get(
            move |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                if q.get("hub.verify_token").map(String::as_str) == Some(token) {
                    (
                        StatusCode::OK,
                        q.get("hub.challenge").cloned().unwrap_or_default(),
                    )
                } else {
                    (StatusCode::FORBIDDEN, String::new())
                }
            },
        ),
    );
    sandbox::serve(app).await
}

#[tokio::test]
async fn app_webhook_subscriptions_need_the_app_token_and_a_verified_callback() {
    let meta = fake().await;
    let c = meta.config().clone();
    let client = reqwest::Client::new();
    let url = format!("{}/{}/subscriptions", meta.graph_url(), c.app_id);
    let app_token = format!("{}|{}", c.app_id, c.app_secret);
    let callback = verifying_callback("s3cret").await;
    let hook = format!("{}/hook", callback.url());
    let form = |verify: &str| {
        vec![
            ("object", "whatsapp_business_account".to_string()),
            ("callback_url", hook.clone()),
            ("verify_token", verify.to_string()),
            ("fields", "messages".to_string()),
        ]
    };

    // The System User token is no app token (#15).
    let user: Value = client
        .post(&url)
        .bearer_auth(&c.access_token)
        .form(&form("s3cret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["error"]["code"], 15, "{user}");

    // A callback that refuses the handshake is not saved (#2200).
    let refused = client
        .post(&url)
        .bearer_auth(&app_token)
        .form(&form("other"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], 2200, "{refused}");
    assert!(meta.app_subscriptions().is_empty());

    // A plain-http callback that is not loopback is refused as Meta refuses it.
    let mut remote = form("s3cret");
    remote[1].1 = "http://example.com/hook".into();
    let remote: Value = client
        .post(&url)
        .bearer_auth(&app_token)
        .form(&remote)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(remote["error"]["code"], 100, "{remote}");

    let ok: Value = client
        .post(&url)
        .bearer_auth(&app_token)
        .form(&form("s3cret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok, json!({"success": true}));
    assert_eq!(meta.webhook_target().as_deref(), Some(hook.as_str()));
    let listed: Value = client
        .get(&url)
        .bearer_auth(&app_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["callback_url"], hook.as_str());
    assert_eq!(listed["data"][0]["fields"][0]["name"], "messages");
}

#[tokio::test]
async fn no_webhook_flows_while_the_app_is_not_subscribed_to_the_waba() {
    let meta = FakeMeta::start(MetaConfig {
        subscribed: false,
        ..MetaConfig::default()
    })
    .await;
    meta.set_webhook_target("http://127.0.0.1:9/never".to_string());
    let err = meta
        .webhooks()
        .send_inbound(&Customer::new(CUSTOMER, "Anna"), InboundMessage::text("hi"))
        .await
        .expect_err("nothing is posted");
    assert!(
        matches!(err, sandbox::meta::DeliveryError::NotSubscribed),
        "{err}"
    );
}
