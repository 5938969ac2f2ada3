//! Bad input never crashes or hangs the process: a table of malformed, oversized,
//! wrongly signed, wrongly encoded and hostile requests for every route, each answered with a
//! clear 4xx within a per-request timeout; afterwards `/health` still answers and resident
//! memory stays bounded. Runs on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use crate::support::{world::*, *};
use switchboard_core::{Db, testing::fresh_database_url};

/// One hostile request and what it must get: `Some(code)` exactly, `None` any 4xx.
struct Case {
    label: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: Option<u16>,
}

fn case(label: &'static str, method: &'static str, path: impl Into<String>) -> Case {
    Case {
        label,
        method,
        path: path.into(),
        content_type: "application/json",
        headers: Vec::new(),
        body: Vec::new(),
        expect: None,
    }
}

impl Case {
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    fn form(mut self) -> Self {
        self.content_type = "application/x-www-form-urlencoded";
        self
    }
    fn content_type(mut self, ct: &'static str) -> Self {
        self.content_type = ct;
        self
    }
    fn header(mut self, k: &'static str, v: String) -> Self {
        self.headers.push((k, v));
        self
    }
    fn expect(mut self, code: u16) -> Self {
        self.expect = Some(code);
        self
    }
}

fn table(world: &World) -> Vec<Case> {
    let sign = |b: &[u8]| world.meta.webhooks().sign(b);
    let nested = |n: usize| "[".repeat(n).into_bytes();
    let big = vec![b'a'; 5 * 1024 * 1024];
    let big_json = {
        let mut v = b"{\"event\":\"message\",\"body\":\"".to_vec();
        v.extend(vec![b'x'; 5 * 1024 * 1024]);
        v.extend(b"\"}");
        v
    };
    let invalid_utf8 = b"{\"event\":\"message\",\"body\":\"\xff\xfe\xfd\"}".to_vec();
    // In a field the Meta envelope reads (an unread field's bytes are skipped, not decoded).
    let meta_invalid_utf8 = b"{\"object\":\"\xff\xfe\xfd\",\"entry\":[]}".to_vec();
    let php_nesting = format!(
        "event=ONIMCONNECTORMESSAGEADD&data{}=1&auth[application_token]=wrong",
        "[a]".repeat(20_000)
    );
    let php_many = (0..20_000)
        .map(|i| format!("data[MESSAGES][{i}][im][chat_id]={i}"))
        .collect::<Vec<_>>()
        .join("&");
    // Keys nested 16 deep that share no prefix: each builds 16 maps in a naive parser (2 MB of
    // them took a process from 18 to 428 MiB).
    let php_deep = |keys: usize| {
        let deep = (0..keys)
            .map(|i| format!("d[{i}]{}=1", "[k]".repeat(14)))
            .collect::<Vec<_>>()
            .join("&");
        format!("event=ONIMCONNECTORMESSAGEADD&auth[application_token]=wrong&{deep}")
    };
    let bitrix = world.bitrix.config();
    let forged_by_member_id = format!(
        "event=ONIMCONNECTORMESSAGEADD&auth[application_token]=chosen-by-the-forger\
         &auth[member_id]={}&data[MESSAGES][0][im][chat_id]=1&data[MESSAGES][0][im][message_id]=2\
         &data[MESSAGES][0][chat][id]=4917600000000&data[MESSAGES][0][message][text]=forged",
        bitrix.member_id
    );
    let ordinary_user = world.bitrix.user_grant(12);
    let ordinary_user_install = format!(
        "event=ONAPPINSTALL&auth[access_token]={}&auth[refresh_token]={}&auth[member_id]={}\
         &auth[client_endpoint]={}&auth[application_token]=chosen-by-the-user",
        ordinary_user.access_token,
        ordinary_user.refresh_token,
        bitrix.member_id,
        world.bitrix.client_endpoint()
    );
    let huge_query = "q=".to_string() + &"x".repeat(30_000);
    let hook = |t: &str| format!("/wabridges/hooks/front?token={t}");
    let ok_hook = hook(WABRIDGES_TOKEN);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let msg91 = |endpoint: &str| {
        serde_json::json!({
            "api_key": PBX_KEY, "api_secret": PBX_SECRET, "endpoint": endpoint,
            "body": {"from": "1", "to": "2"}
        })
        .to_string()
    };
    vec![
        // Meta inbound webhook.
        case("meta: malformed JSON, signed", "POST", "/webhook/whatsapp")
            .body("{not json")
            .header("x-hub-signature-256", sign(b"{not json"))
            .expect(400),
        case("meta: wrong signature", "POST", "/webhook/whatsapp")
            .body("{}")
            .header(
                "x-hub-signature-256",
                "sha256=00000000000000000000000000000000".into(),
            )
            .expect(401),
        case("meta: no signature", "POST", "/webhook/whatsapp")
            .body("{\"object\":\"whatsapp_business_account\",\"entry\":[]}")
            .expect(401),
        case(
            "meta: wrong content type, no signature",
            "POST",
            "/webhook/whatsapp",
        )
        .content_type("text/plain")
        .body("hello")
        .expect(401),
        case("meta: invalid UTF-8, signed", "POST", "/webhook/whatsapp")
            .body(meta_invalid_utf8.clone())
            .header("x-hub-signature-256", sign(&meta_invalid_utf8))
            .expect(400),
        case("meta: 100k '[' nesting, signed", "POST", "/webhook/whatsapp")
            .body(nested(100_000))
            .header("x-hub-signature-256", sign(&nested(100_000)))
            .expect(400),
        case("meta: 5 MB body", "POST", "/webhook/whatsapp")
            .body(big.clone())
            .expect(413),
        case("meta: 3 MB body (Meta's cap), no signature", "POST", "/webhook/whatsapp")
            .body(vec![b'a'; 3_000_000])
            .expect(401),
        case("meta verify: wrong token", "GET", "/webhook/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1").expect(403),
        case("meta verify: no parameters", "GET", "/webhook/whatsapp").expect(403),
        case("meta verify: huge query", "GET", format!("/webhook/whatsapp?{huge_query}")).expect(403),
        // Bitrix events.
        case("bitrix events: wrong application token", "POST", "/bitrix/events")
            .form()
            .body("event=ONIMCONNECTORMESSAGEADD&auth[application_token]=wrong&auth[member_id]=wrong")
            .expect(403),
        case("bitrix events: PHP keys nested 20k deep", "POST", "/bitrix/events")
            .form()
            .body(php_nesting.clone())
            .expect(403),
        case("bitrix events: 20k message items, no auth", "POST", "/bitrix/events")
            .form()
            .body(format!("event=ONIMCONNECTORMESSAGEADD&{php_many}"))
            .expect(403),
        case("bitrix events: invalid UTF-8", "POST", "/bitrix/events")
            .form()
            .body(b"event=ONIMCONNECTORMESSAGEADD&auth[application_token]=\xff\xfe".to_vec())
            .expect(403),
        case("bitrix events: 5 MB body", "POST", "/bitrix/events")
            .form()
            .body(big.clone())
            .expect(413),
        case("bitrix events: garbage form (no event, no page)", "POST", "/bitrix/events")
            .form()
            .body("garbage=1&more=2")
            .expect(400),
        case("bitrix events: forged with the portal's member", "POST", "/bitrix/events")
            .form()
            .body(forged_by_member_id)
            .expect(403),
        case("bitrix events: 39k keys 16 deep (2 MB), no auth", "POST", "/bitrix/events")
            .form()
            .body(php_deep(39_000))
            .expect(413),
        case("bitrix events: 19k keys 16 deep (1 MB), no auth", "POST", "/bitrix/events")
            .form()
            .body(php_deep(19_000))
            .expect(403),
        case("bitrix events: 20k message items, authentic", "POST", "/bitrix/events")
            .form()
            .body(format!(
                "event=ONIMCONNECTORMESSAGEADD&auth[application_token]={}&{php_many}",
                bitrix.application_token
            ))
            .expect(400),
        // Bitrix install.
        case("bitrix install: not an install", "POST", "/bitrix/install")
            .form()
            .body("garbage=1")
            .expect(400),
        case("bitrix install: grant for another portal", "POST", "/bitrix/install")
            .form()
            .body("event=ONAPPINSTALL&auth[access_token]=a&auth[refresh_token]=r&auth[member_id]=m&auth[client_endpoint]=http://127.0.0.1:9/rest/")
            .expect(403),
        case("bitrix install: PHP keys nested 20k deep", "POST", "/bitrix/install")
            .form()
            .body(php_nesting.replace("ONIMCONNECTORMESSAGEADD", "ONAPPINSTALL"))
            .expect(400),
        case("bitrix install: 5 MB body", "POST", "/bitrix/install")
            .form()
            .body(big.clone())
            .expect(413),
        case("bitrix install: an ordinary user's grant", "POST", "/bitrix/install")
            .form()
            .body(ordinary_user_install)
            .expect(403),
        case("bitrix install: 100 KB body", "POST", "/bitrix/install")
            .form()
            .body(vec![b'a'; 100 * 1024])
            .expect(413),
        // Media.
        case("media: path traversal", "GET", "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd").expect(404),
        case("media: unknown id", "GET", format!("/media/{}", "0".repeat(32))).expect(404),
        case("media: huge id", "GET", format!("/media/{}", "a".repeat(20_000))).expect(404),
        case("media: 32 characters, not hex", "GET", format!("/media/{}", "<svg>".repeat(6) + "zz")).expect(404),
        case("media: upload attempt", "POST", format!("/media/{}", "0".repeat(32))).content_type("text/html").body("<script>alert(1)</script>").expect(405),
        // wabridges hooks.
        case("wabridges: wrong token", "POST", hook("nope")).body("{}").expect(401),
        case("wabridges: no token", "POST", "/wabridges/hooks/front").body("{}").expect(401),
        case("wabridges: malformed JSON", "POST", ok_hook.clone()).body("{\"event\":").expect(400),
        case("wabridges: not an object", "POST", ok_hook.clone()).body("[1,2]").expect(400),
        case("wabridges: invalid UTF-8", "POST", ok_hook.clone()).body(invalid_utf8.clone()).expect(400),
        case("wabridges: 100k '[' nesting", "POST", ok_hook.clone()).body(nested(100_000)).expect(400),
        case("wabridges: 5 MB body", "POST", ok_hook.clone()).body(big_json).expect(413),
        case("wabridges: 600 KB message, right token", "POST", ok_hook.clone()).body(wabridges_text(600 * 1024)).expect(413),
        case("wabridges: traversal in bridge name", "POST", format!("/wabridges/hooks/..%2f..%2fetc?token={WABRIDGES_TOKEN}")).body("{\"event\":\"connected\",\"phone\":\"1\"}").expect(400),
        case("wabridges: huge query", "POST", format!("/wabridges/hooks/front?{huge_query}")).body("{}").expect(401),
        case("wabridges: wrong Bearer token", "POST", "/wabridges/hooks/front").header("authorization", "Bearer nope".into()).body("{}").expect(401),
        case("wabridges: wrong Bearer beats a right query token", "POST", ok_hook.clone()).header("authorization", "Bearer nope".into()).body("{}").expect(401),
        case("wabridges: Basic auth that is not base64", "POST", "/wabridges/hooks/front").header("authorization", "Basic %%%not-base64".into()).body("{}").expect(401),
        case("wabridges: Basic auth without a password", "POST", "/wabridges/hooks/front").header("authorization", "Basic aG9vaw==".into()).body("{}").expect(401),
        // wabridges admin API.
        case("api: no token", "GET", "/api/wabridges/bridges").expect(401),
        case("api: wrong token", "GET", "/api/wabridges/bridges").header("authorization", "Bearer nope".into()).expect(401),
        case("api: traversal in bridge name", "GET", "/api/wabridges/bridges/..%2f..%2fetc/messages").header("authorization", bearer.clone()),
        case("api: absurd paging", "GET", "/api/wabridges/bridges/front/messages?limit=-99999999999999999999&before=abc").header("authorization", bearer.clone()),
        // Admin sign-in form.
        case("admin sign-in: wrong token, redirect off-site", "POST", "/admin/sign-in").form().body("token=nope&next=//evil.example/").expect(401),
        case("admin sign-in: no fields", "POST", "/admin/sign-in").form().body("").expect(401),
        case("admin sign-in: invalid UTF-8", "POST", "/admin/sign-in").form().body(b"token=\xff\xfe&next=/\xff".to_vec()).expect(401),
        // PBX bridge.
        case("pbx: malformed JSON", "POST", "/whatsapp-bridge").body("{\"api_key\":").expect(400),
        case("pbx: wrong content type", "POST", "/whatsapp-bridge").content_type("text/plain").body(msg91("/api/v1/calls/click-to-call")),
        case("pbx: missing fields", "POST", "/whatsapp-bridge").body("{}").expect(400),
        case("pbx: 60k '[' nesting (under the size limit)", "POST", "/whatsapp-bridge").body(nested(60_000)).expect(400),
        case("pbx: endpoint path traversal", "POST", "/whatsapp-bridge").body(msg91("/api/v1/../../admin")),
        case("pbx: endpoint absolute URL (open proxy)", "POST", "/whatsapp-bridge").body(msg91("http://169.254.169.254/latest/meta-data")),
        case("pbx: wrong secret", "POST", "/whatsapp-bridge").body(msg91("/api/v1/calls/click-to-call").replace(PBX_SECRET, "wrong")),
        case("pbx: 5 MB body", "POST", "/whatsapp-bridge").body(big).expect(413),
        case("pbx: 1.5 MB body, right credentials", "POST", "/whatsapp-bridge")
            .body(serde_json::json!({
                "api_key": PBX_KEY, "api_secret": PBX_SECRET, "endpoint": "/api/v1/calls/click-to-call",
                "body": {"note": "x".repeat(1536 * 1024)}
            }).to_string())
            .expect(413),
    ]
}

/// A well-formed wabridges `message` event of about `size` bytes.
fn wabridges_text(size: usize) -> Vec<u8> {
    let event = wabridges_message(1);
    let (head, tail) = event.split_at(event.find("message 1").unwrap());
    format!("{head}{}{tail}", "x".repeat(size)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_clear_4xx_on_every_route_and_the_process_stays_up() {
    const ROUNDS: usize = 3;
    const RSS_LIMIT_KIB: u64 = 200 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let world = World::start(dir.path(), &url, &base).await;
    let mut proc = spawn_on(dir.path(), "input", port, &["serve"], &world.env);
    healthy(&proc).await;
    world.install(dir.path(), &base).await;
    let rss_before = proc.rss_kib().unwrap_or(0);

    let cases = table(&world);
    // No connection reuse: a 413 closes the connection it answers on, which would fail the
    // next request on a pooled connection for a reason that is the client's, not the server's.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut answered = 0;
    let started = Instant::now();
    for round in 0..ROUNDS {
        for c in &cases {
            let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
            let mut req = http
                .request(method, format!("{base}{}", c.path))
                .header("content-type", c.content_type)
                .body(c.body.clone());
            for (k, v) in &c.headers {
                req = req.header(*k, v);
            }
            let t = Instant::now();
            let status = match req.send().await {
                Ok(r) => r.status().as_u16(),
                Err(e) if e.is_timeout() => {
                    failures.push(format!("{}: no answer within 10 s (hang)", c.label));
                    continue;
                }
                // A refused oversized upload may reset the connection before the answer is read.
                Err(e) if c.body.len() > 4 * 1024 * 1024 => {
                    if round == 0 {
                        println!("  {:<48} connection closed ({e})", c.label);
                    }
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{}: transport error {e}", c.label));
                    continue;
                }
            };
            answered += 1;
            if round == 0 {
                println!(
                    "  {:<48} {status} in {} ms",
                    c.label,
                    t.elapsed().as_millis()
                );
            }
            let ok = match c.expect {
                Some(code) => status == code,
                None => (400..500).contains(&status),
            };
            if !ok {
                failures.push(format!(
                    "{}: got {status}, want {}",
                    c.label,
                    c.expect.map_or("a 4xx".to_string(), |c| c.to_string())
                ));
            }
        }
        assert!(proc.alive(), "the process died:\n{}", proc.log_text());
    }
    let h = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(h.status(), 200, "/health after the barrage");
    let rss_after = proc.rss_kib().unwrap_or(0);
    println!(
        "bad input: {} cases x {ROUNDS} rounds, {answered} answered in {} ms, {} failures; \
         RSS {} MiB before, {} MiB after (limit {} MiB)",
        cases.len(),
        started.elapsed().as_millis(),
        failures.len(),
        rss_before / 1024,
        rss_after / 1024,
        RSS_LIMIT_KIB / 1024
    );
    failures.dedup();
    assert!(failures.is_empty(), "bad answers:\n{}", failures.join("\n"));
    assert!(
        rss_after < RSS_LIMIT_KIB,
        "RSS {rss_after} KiB after the barrage"
    );
}

/// Unsigned or wrongly authenticated calls of several MiB each: every one is refused and
/// recorded, but the database keeps a bounded head of each body, not the body; thirty-one days
/// later the daily prune's retention removes them like the other finished rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_cost_the_database_a_bounded_head_and_are_pruned() {
    const CALLS: usize = 10;
    const HEAD: i64 = switchboard_core::inbox::REFUSED_HEAD_BYTES as i64;
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let bound = bind();
    let base = bound.base.clone();
    let world = World::start(dir.path(), &url, &base).await;
    let _server = bound.serve(&world.env, Workers::InProcess).await;
    let db = Db::connect(&url).await.unwrap();
    let (rows_before, bytes_before) = refused_rows(&db).await;
    let file_before = sqlite_file_bytes(&url);

    // The largest body each route reads: Meta's cap, and just under the wabridges limit.
    let meta_body = {
        let mut v = br#"{"object":"whatsapp_business_account","entry":[{"id":""#.to_vec();
        v.resize(3_000_000, b'7');
        v
    };
    let hook_body = wabridges_text(500 * 1024);
    let http = reqwest::Client::new();
    for _ in 0..CALLS {
        for (path, body) in [
            ("/webhook/whatsapp".to_string(), &meta_body),
            ("/wabridges/hooks/front?token=wrong".to_string(), &hook_body),
        ] {
            let r = http
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{path}");
        }
    }

    let (rows, bytes) = refused_rows(&db).await;
    let sent = CALLS * (meta_body.len() + hook_body.len());
    println!(
        "{} refused calls, {sent} bytes sent: {} body bytes stored",
        2 * CALLS,
        bytes - bytes_before
    );
    assert_eq!(
        rows - rows_before,
        2 * CALLS as i64,
        "every refusal recorded"
    );
    assert!(
        bytes - bytes_before <= 2 * CALLS as i64 * HEAD,
        "{} body bytes stored for {} refused calls",
        bytes - bytes_before,
        2 * CALLS
    );
    if let (Some(before), Some(after)) = (file_before, sqlite_file_bytes(&url)) {
        // Each refusal is its own commit: a few pages of WAL besides the row.
        let grown = after.saturating_sub(before);
        println!("SQLite files grew by {grown} bytes");
        assert!(
            grown < 2 * 1024 * 1024,
            "SQLite files grew by {grown} bytes"
        );
    }

    let month = 31 * 24 * 3600 * 1000_i64;
    switchboard_core::on_pool!(&db, |p| sqlx::query(
        "UPDATE inbox_events SET received_at = received_at - $1 WHERE status = 'rejected'"
    )
    .bind(month)
    .execute(p)
    .await
    .map(drop))
    .unwrap();
    let out = world
        .cli(dir.path(), &["events", "prune", "--older-than", "30d"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(refused_rows(&db).await.0, 0, "old refused rows pruned");
    db.close().await;
}

/// (rows, stored body bytes) of the refused calls.
async fn refused_rows(db: &Db) -> (i64, i64) {
    switchboard_core::on_pool!(db, |p| sqlx::query_as::<_, (i64, i64)>(
        "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM inbox_events WHERE status = 'rejected'"
    )
    .fetch_one(p)
    .await)
    .unwrap()
}

/// Size of the SQLite database with its write-ahead log; `None` on PostgreSQL.
fn sqlite_file_bytes(url: &str) -> Option<u64> {
    let path = url.strip_prefix("sqlite://")?;
    let size = |p: String| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Some(size(path.to_string()) + size(format!("{path}-wal")))
}
