//! Connections that stall or pile up can't take the server down: partial headers, idle sockets,
//! idle keep-alives and trickled bodies are cut off after their timeouts; past the connection
//! limit the server answers 503 instead of running out of file descriptors; a stop still ends
//! the process with such connections open. Every wait is bounded. Runs on SQLite and PostgreSQL.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::support::{world::*, *};
use sandbox::meta::Customer;
use switchboard_core::testing::fresh_database_url;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Timeouts short enough for a test; the slack covers a loaded machine.
const HEADER_TIMEOUT_SECS: u64 = 2;
const BODY_TIMEOUT_SECS: u64 = 2;
const SLACK: Duration = Duration::from_secs(8);

fn short_timeouts() -> Vec<(String, String)> {
    vec![
        (
            "SWITCHBOARD_HEADER_TIMEOUT_SECS".into(),
            HEADER_TIMEOUT_SECS.to_string(),
        ),
        (
            "SWITCHBOARD_BODY_TIMEOUT_SECS".into(),
            BODY_TIMEOUT_SECS.to_string(),
        ),
    ]
}

fn addr(p: &impl Server) -> String {
    p.base().trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (EOF or reset), for at most `bound`.
/// `Some(bytes received)` if it closed in time, `None` if it was still open.
async fn closed_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    bound: Duration,
) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read_all)
        .await
        .ok()
        .map(|()| got)
}

/// `serve` with the short timeouts; the second value keeps a SQLite database's folder alive.
async fn server(dir: &std::path::Path, name: &str) -> (Proc, Box<dyn std::any::Any + Send>) {
    let (url, keep) = fresh_database_url().await;
    let mut env = short_timeouts();
    env.push(("DATABASE_URL".into(), url));
    let p = spawn(dir, name, &["serve"], &env);
    healthy(&p).await;
    (p, Box::new(keep))
}

/// [`server`] in this process: for what needs no signal and no look at the log.
async fn server_in_process() -> (InProcess, Box<dyn std::any::Any + Send>) {
    let (url, keep) = fresh_database_url().await;
    let mut env = short_timeouts();
    env.push(("DATABASE_URL".into(), url));
    (
        serve_in_process(&env, Workers::InProcess).await,
        Box::new(keep),
    )
}

/// Slowloris (headers sent a byte at a time), a socket that never sends anything, and a
/// keep-alive connection left idle after its answer: each is closed within the header timeout.
#[tokio::test]
async fn stalled_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _keep) = server(dir.path(), "stalled").await;
    let bound = Duration::from_secs(HEADER_TIMEOUT_SECS) + SLACK;

    let mut slowloris = TcpStream::connect(addr(&p)).await.unwrap();
    slowloris
        .write_all(b"POST /webhook/whatsapp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = slowloris.into_split();
    let trickle = tokio::spawn(async move {
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
        {
            if writer.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    let mut idle = TcpStream::connect(addr(&p)).await.unwrap();

    let mut kept_alive = TcpStream::connect(addr(&p)).await.unwrap();
    kept_alive
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let started = Instant::now();
    let (slow, idle, kept) = tokio::join!(
        closed_within(&mut reader, bound),
        closed_within(&mut idle, bound),
        closed_within(&mut kept_alive, bound),
    );
    trickle.abort();
    println!(
        "stalled connections: all settled after {} ms",
        started.elapsed().as_millis()
    );
    assert!(
        slow.is_some(),
        "headers trickled a byte at a time kept the connection open past {bound:?}"
    );
    assert!(
        idle.is_some(),
        "a connection that sent nothing stayed open past {bound:?}"
    );
    let kept = kept.unwrap_or_else(|| panic!("an idle keep-alive stayed open past {bound:?}"));
    assert!(
        kept.starts_with(b"HTTP/1.1 200"),
        "the keep-alive's request was answered first: {}",
        String::from_utf8_lossy(&kept)
    );
    assert!(p.log_text().contains("switchboard listening"));
}

/// A body trickled a byte at a time gets 408 once the body timeout has passed, and the
/// connection is closed.
#[tokio::test]
async fn a_trickled_body_gets_408_after_the_body_timeout() {
    let (p, _keep) = server_in_process().await;
    let bound = Duration::from_secs(BODY_TIMEOUT_SECS) + SLACK;

    let stream = TcpStream::connect(addr(&p)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /webhook/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let got = closed_within(&mut reader, bound).await;
    trickle.abort();
    let closed = got.is_some();
    let text = String::from_utf8_lossy(got.as_deref().unwrap_or_default());
    assert!(
        closed,
        "a body trickled a byte at a time kept the connection open past {bound:?} (got {text:?})"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "answer: {text:?}");
}

/// A client that pipelines requests and never reads the answers: once the socket buffers are
/// full the server's write stalls, and the connection is closed within the body timeout instead
/// of holding its slot for good.
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_cut_off() {
    let (p, _keep) = server_in_process().await;
    let mut stream = TcpStream::connect(addr(&p)).await.unwrap();
    // Each answer is a rendered page of tens of KiB: a few hundred outgrow any socket buffer.
    let requests = b"GET /docs/bitrix-connector HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2_000);
    stream.write_all(&requests).await.unwrap();
    // Long enough for the server to fill the buffers and for the write timeout to fire.
    tokio::time::sleep(Duration::from_secs(BODY_TIMEOUT_SECS) + SLACK).await;
    // Cut off: only what sat in the socket buffers arrives, then the close. Not cut off: reading
    // now lets the server go on, and every answer arrives.
    let got = closed_within(&mut stream, SLACK).await.unwrap_or_default();
    let answers = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    println!("pipelined 2000 requests without reading; {answers} answers arrived before the close");
    assert!(
        answers < 2_000,
        "{answers} of 2000 answers arrived: the stalled connection was not cut off"
    );
}

/// With the open-file limit low, more idle sockets than the server may serve: a signed Meta
/// webhook still gets an answer (503 while the idle sockets hold every slot, never a 500 or a
/// hang), and once the header timeout has closed them, the next one is acknowledged with 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_beyond_the_limit_are_shed_and_webhooks_keep_working() {
    const NOFILE: u64 = 256;
    const IDLE_SOCKETS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let world = World::start(dir.path(), &url, "http://127.0.0.1:9").await;
    let mut env = world.env.clone();
    env.push(("SWITCHBOARD_HEADER_TIMEOUT_SECS".into(), "4".into()));
    let mut p = spawn_with_fd_limit(dir.path(), "fds", NOFILE, &["serve"], &env);
    healthy(&p).await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let customer = Customer::new("15550009001", "Idle Tester");
    let webhook = |text: &str| {
        let (_, body, signature) = world.meta_inbound(&customer, text);
        http.post(format!("{}/webhook/whatsapp", p.base))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
    };

    let mut idle = Vec::new();
    for _ in 0..IDLE_SOCKETS {
        match TcpStream::connect(addr(&p)).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect #{}: {e}", idle.len() + 1),
        }
    }
    // The sockets past the limit have had their 503 and are closed by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let status = match webhook("while the idle sockets are open").await {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!(
            "no answer with {IDLE_SOCKETS} idle sockets open ({e}); log:\n{}",
            tail(&p.log_text())
        ),
    };
    println!("signed webhook with {IDLE_SOCKETS} idle sockets open: {status}");
    assert!(
        status == 200 || status == 503,
        "got {status} with the idle sockets open; log:\n{}",
        tail(&p.log_text())
    );

    // The idle sockets stay open on this side; the server must close them itself.
    let started = Instant::now();
    let mut last = String::new();
    let acknowledged = loop {
        match webhook("after the idle sockets were closed").await {
            Ok(r) if r.status() == 200 => break true,
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        if started.elapsed() > Duration::from_secs(4) + SLACK {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        acknowledged,
        "no 200 within {:?} (last: {last}); log:\n{}",
        Duration::from_secs(4) + SLACK,
        tail(&p.log_text())
    );
    assert!(p.alive(), "the process died:\n{}", tail(&p.log_text()));
    drop(idle);
}

/// SIGTERM with a client stuck half-way through its headers and an idle keep-alive: the process
/// still exits, once the stuck client's header timeout has passed.
#[tokio::test]
async fn sigterm_exits_with_stalled_clients_connected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _keep) = server(dir.path(), "sigterm").await;

    let mut stuck = TcpStream::connect(addr(&p)).await.unwrap();
    stuck
        .write_all(b"POST /webhook/whatsapp HTTP/1.1\r\nHost: x\r\nX-Half")
        .await
        .unwrap();
    let mut kept_alive = TcpStream::connect(addr(&p)).await.unwrap();
    kept_alive
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept_alive.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let pid = p.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let bound = Duration::from_secs(HEADER_TIMEOUT_SECS) + SLACK;
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {bound:?} after SIGTERM with a stalled client; log:\n{}",
            tail(&p.log_text())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

fn tail(log: &str) -> String {
    let lines: Vec<_> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The PBX bridge behind `serve`, with `env` added; the fake PBX knows the one org.
async fn pbx_bridge(
    env: &[(&str, &str)],
) -> (
    sandbox::pbx::FakePbx,
    InProcess,
    Box<dyn std::any::Any + Send>,
) {
    let pbx = sandbox::pbx::FakePbx::start().await;
    pbx.add_org(PBX_KEY, PBX_SECRET, "ThrottleTests");
    let (url, keep) = fresh_database_url().await;
    let mut all = vec![
        ("DATABASE_URL".to_string(), url),
        ("SWITCHBOARD_PBX_BASE_URL".to_string(), pbx.url()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let p = serve_in_process(&all, Workers::Elsewhere).await;
    (pbx, p, Box::new(keep))
}

/// One MSG91-style bridge call: (status, Retry-After in seconds).
async fn bridge_call(
    p: &InProcess,
    key: &str,
    secret: &str,
    forwarded_for: &str,
) -> (u16, Option<u64>) {
    let body = serde_json::json!({
        "api_key": key,
        "api_secret": secret,
        "endpoint": "/api/v1/calls/click-to-call",
        "body": {"from": "9876543210", "from_type": "external", "to": "5001", "to_type": "queue"}
    });
    let r = reqwest::Client::new()
        .post(format!("{}/whatsapp-bridge", p.base))
        .header("x-forwarded-for", forwarded_for)
        .timeout(Duration::from_secs(20))
        .json(&body)
        .send()
        .await
        .unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (r.status().as_u16(), retry_after)
}

/// Guessed credentials from one client: after a handful of refused logins the client gets 429
/// with Retry-After, and no more logins reach the PBX. X-Forwarded-For, not trusted by
/// default, doesn't let it pass for other clients. An org that already works is unaffected.
#[tokio::test]
async fn guessed_pbx_credentials_from_one_client_are_throttled() {
    let (pbx, p, _keep) = pbx_bridge(&[]).await;
    assert_eq!(
        bridge_call(&p, PBX_KEY, PBX_SECRET, "192.0.2.1").await.0,
        200
    );

    let mut answers = Vec::new();
    for i in 0..::pbx_bridge::CLIENT_FAILURES + 4 {
        let key = format!("org_guess_{i}");
        answers.push(bridge_call(&p, &key, "wrong", &format!("203.0.113.{i}")).await);
    }
    let logins = pbx.recorder().matching("/api/v1/auth/login").len();
    let refused = answers.iter().take_while(|(s, _)| *s == 401).count();
    println!(
        "{} guesses from one client: {refused} × 401, then {:?}; logins at the PBX: {logins}",
        answers.len(),
        &answers[refused..]
    );
    assert!(
        (3..=::pbx_bridge::CLIENT_FAILURES as usize).contains(&refused),
        "refused logins before the throttle: {answers:?}"
    );
    for (status, retry_after) in &answers[refused..] {
        assert_eq!(*status, 429, "{answers:?}");
        assert!(retry_after.is_some_and(|s| s > 0), "{answers:?}");
    }
    assert_eq!(
        logins,
        1 + refused,
        "logins reached the PBX while throttled"
    );
    assert_eq!(
        bridge_call(&p, PBX_KEY, PBX_SECRET, "192.0.2.1").await.0,
        200
    );
}

/// Guessed secrets for one org from many clients (behind a trusted proxy, so each guess comes
/// from its own X-Forwarded-For address): the org's refused logins are throttled too, while
/// another org's caller isn't, and the org's working credentials still get through, even when
/// their token has to be renewed.
#[tokio::test]
async fn guessed_pbx_secrets_for_one_org_are_throttled() {
    let (pbx, p, _keep) = pbx_bridge(&[("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.1")]).await;
    assert_eq!(
        bridge_call(&p, PBX_KEY, PBX_SECRET, "192.0.2.1").await.0,
        200
    );

    let mut answers = Vec::new();
    for i in 0..14 {
        let secret = format!("guess-{i}");
        answers.push(bridge_call(&p, PBX_KEY, &secret, &format!("198.51.100.{i}")).await);
    }
    println!("guesses for one org: {answers:?}");
    let refused = answers.iter().take_while(|(s, _)| *s == 401).count();
    assert!(
        (3..=10).contains(&refused),
        "refused logins before the throttle: {answers:?}"
    );
    assert!(
        answers[refused..]
            .iter()
            .all(|(s, r)| *s == 429 && r.is_some()),
        "{answers:?}"
    );
    assert_eq!(pbx.login_count(PBX_KEY) as usize, 1 + refused);

    // Another org, from a client of its own: not throttled (the PBX refuses it itself).
    assert_eq!(
        bridge_call(&p, "org_other", "wrong", "198.51.100.200")
            .await
            .0,
        401
    );
    // The org's own flow keeps working, through a token renewal too.
    assert_eq!(
        bridge_call(&p, PBX_KEY, PBX_SECRET, "192.0.2.1").await.0,
        200
    );
    pbx.expire_all_tokens();
    assert_eq!(
        bridge_call(&p, PBX_KEY, PBX_SECRET, "192.0.2.1").await.0,
        200
    );
}

/// The wabridges hook token and the admin token can be given without putting them in a URL
/// (which proxies write to their access logs): the hook takes `Authorization: Bearer` or Basic,
/// the admin pages a posted sign-in form. `?token=` keeps working. However they come, neither
/// token appears in the process log (at debug level) or in the audit log.
#[tokio::test]
async fn tokens_can_stay_out_of_urls_and_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_WABRIDGES_TOKEN", WABRIDGES_TOKEN),
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN),
        ("RUST_LOG", "debug"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let p = spawn(dir.path(), "tokens", &["serve", "--no-workers"], &env);
    healthy(&p).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let hook = format!("{}/wabridges/hooks/front", p.base);
    let post = |url: String, i: usize| {
        http.post(url)
            .header("content-type", "application/json")
            .body(wabridges_message(i))
    };
    let status = |r: reqwest::Response| r.status().as_u16();

    let bearer = post(hook.clone(), 1).bearer_auth(WABRIDGES_TOKEN);
    assert_eq!(status(bearer.send().await.unwrap()), 200, "Bearer");
    let basic = post(hook.clone(), 2).basic_auth("hook", Some(WABRIDGES_TOKEN));
    assert_eq!(status(basic.send().await.unwrap()), 200, "Basic");
    let query = post(format!("{hook}?token={WABRIDGES_TOKEN}"), 3);
    assert_eq!(status(query.send().await.unwrap()), 200, "?token=");
    let wrong = post(hook.clone(), 4).bearer_auth("not-the-token");
    assert_eq!(status(wrong.send().await.unwrap()), 401, "wrong Bearer");

    let api = http
        .get(format!("{}/api/wabridges/bridges", p.base))
        .bearer_auth(ADMIN_TOKEN);
    assert_eq!(status(api.send().await.unwrap()), 200, "admin API, Bearer");
    let sign_in = |token: &str, next: &str| {
        http.post(format!("{}/admin/sign-in", p.base))
            .form(&[("token", token), ("next", next)])
            .send()
    };
    assert_eq!(
        status(sign_in("not-the-token", "/admin/events").await.unwrap()),
        401
    );
    let elsewhere = sign_in(ADMIN_TOKEN, "//evil.example/").await.unwrap();
    assert_eq!(elsewhere.headers()["location"], "/setup", "never off-site");
    let signed_in = sign_in(ADMIN_TOKEN, "/admin/events").await.unwrap();
    assert_eq!(signed_in.status(), 303, "sign-in form");
    assert_eq!(signed_in.headers()["location"], "/admin/events");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let old_way = http
        .get(format!("{}/admin/events?token={ADMIN_TOKEN}", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(old_way.status(), 303, "?token= on a page");

    let events = http
        .get(format!("{}/admin/events", p.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let page = events.text().await.unwrap();
    assert!(page.contains("/wabridges/hooks/front"), "{page}");
    let log = p.log_text();
    for token in [WABRIDGES_TOKEN, ADMIN_TOKEN] {
        assert!(!page.contains(token), "the audit log page shows {token}");
        assert!(!log.contains(token), "the log has {token}:\n{log}");
    }
}
