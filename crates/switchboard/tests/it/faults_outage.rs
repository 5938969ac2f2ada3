//! Outages. Bitrix24 and the forwarding subscriber are down while traffic arrives, then come
//! back: everything acknowledged is delivered exactly once, in bounded time; the only dead
//! letter is a permanent error, and `switchboard jobs retry all` delivers it after the fix.
//! The database itself is unreachable (PostgreSQL behind a proxy the test cuts) or locked
//! (SQLite): the workers come back on their own, and `/health` says they are down meanwhile.
//! A worker cut off from PostgreSQL stops its job before another process takes it over.
//! Runs on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use crate::support::{world::*, *};
use sandbox::meta::{Customer, InboundMessage};
use switchboard_core::testing::fresh_database_url;

const RELAY: &str = "bitrix-connector.relay-to-bitrix";
const FORWARD: &str = "wabridges-hooks.forward-event";

/// Jobs of `kinds` that have run at least `attempts` times.
async fn attempted(world: &World, kinds: &[&str], attempts: i64) -> usize {
    world
        .jobs()
        .await
        .iter()
        .filter(|j| kinds.contains(&j.kind.as_str()) && j.attempts >= attempts)
        .count()
}

/// Test-only time travel, and why it is safe here: the backoff of the failed relay and forward
/// jobs is skipped with `make_retries_due()` instead of sleeping 10/30/60 s. The two things
/// that make a too-early retry spend an attempt without doing anything — an inbox claim's 30 s
/// lease and a CRM lead claim held by another job — are avoided by design: the outage only
/// reaches the relay/forward jobs (`core.process-event` for Meta and wabridges touches only the
/// database, so no inbox claim is ever held across a failure), nothing is killed, and every
/// customer who is new during the outage writes exactly one message (no two jobs race for one
/// lead). The warm customers' leads exist before the outage.
///
/// Forwards are not redelivered by the bridge's 2-minute `wabridges.redeliver-forwards` task
/// here: the outage is kept shorter than the 5-attempt budget, so no forward dies. The one dead
/// letter (an injected `NOT_ACTIVE_LINE`) is put back with the real CLI, `jobs retry all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix_and_subscriber_down_then_back_deliver_everything_once() {
    const WARM: usize = 3;
    const NEW: usize = 2;
    const PER_WARM: usize = 4;
    const WABRIDGES: usize = 60;
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let bound = bind();
    let base = bound.base.clone();
    let world = World::start(dir.path(), &url, &base).await;
    let serve = bound.serve(&world.env, Workers::InProcess).await;
    world.install(dir.path(), &base).await;

    let customers: Vec<Customer> = (0..WARM + NEW)
        .map(|c| Customer::new(format!("4930{c:08}"), format!("Kundin Ausfall{c}")))
        .collect();
    world.warm_up(&customers[..WARM]).await;

    // --- Outage: both downstreams answer 503 while traffic arrives. ---
    world.bitrix.set_down(true);
    world.subscriber.set_down(true);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post_meta = |wamid_text: String, c: &Customer| {
        let (wamid, body, sig) = world.meta_inbound(c, &wamid_text);
        let req = http
            .post(format!("{base}/webhook/whatsapp"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "Meta inbound acknowledged");
            wamid
        }
    };
    let mut wamids = Vec::new();
    let mut meta_plan: Vec<&Customer> = Vec::new();
    for round in 0..PER_WARM {
        meta_plan.extend(customers.iter().take(WARM));
        if round < NEW {
            meta_plan.push(&customers[WARM + round]);
        }
    }
    let every = WABRIDGES / meta_plan.len();
    let mut plan = meta_plan.iter();
    for i in 0..WABRIDGES {
        let r = http
            .post(format!(
                "{base}/wabridges/hooks/outage?token={WABRIDGES_TOKEN}"
            ))
            .header("content-type", "application/json")
            .body(wabridges_message(i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "wabridges event {i} acknowledged");
        if i % every == 0
            && let Some(c) = plan.next()
        {
            wamids.push(post_meta(format!("outage message {i}"), c).await);
        }
    }
    for c in plan {
        wamids.push(post_meta("outage message late".into(), c).await);
    }
    // Each customer's first message fails; the customer's later ones wait behind it (a
    // customer's messages keep their order) and are not tried at all.
    let jobs_expected = WABRIDGES + WARM + NEW;
    eventually(
        "every forward and each customer's first relay failed once while down",
        30,
        || async { attempted(&world, &[RELAY, FORWARD], 1).await >= jobs_expected },
    )
    .await;
    // One retry round inside the outage: still failing, still not dead.
    world.make_retries_due().await;
    eventually(
        "every forward and each customer's first relay failed twice while down",
        30,
        || async { attempted(&world, &[RELAY, FORWARD], 2).await >= jobs_expected },
    )
    .await;
    let outage_secs = began.elapsed().as_secs();
    assert_eq!(
        world.subscriber.counts(),
        (0, 0),
        "nothing forwarded while down"
    );
    assert_eq!(
        world.bitrix_inbound().len(),
        WARM,
        "nothing relayed while down"
    );
    assert_eq!(
        world.dead_letters().await,
        vec![],
        "an outage is not permanent"
    );

    // --- Recovery: back up; skip the backoff instead of sleeping through it. ---
    world.bitrix.set_down(false);
    world.subscriber.set_down(false);
    let recovered = Instant::now();
    let deadline = recovered + Duration::from_secs(60);
    loop {
        let inbound = world.bitrix_inbound();
        let missing_in = wamids.iter().filter(|w| !inbound.contains_key(*w)).count();
        let missing_fwd = WABRIDGES.saturating_sub(world.subscriber.counts().0);
        if missing_in + missing_fwd == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "60 s after recovery still missing {missing_in} Bitrix messages and {missing_fwd} \
             forwards; dead letters {:?}",
            world.dead_letters().await
        );
        world.make_retries_due().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let recovery_secs = recovered.elapsed().as_secs_f64();
    eventually("queue drained", 30, || async {
        let h = health(&serve).await;
        h["queue"]["depth"] == 0 && h["queue"]["running"] == 0
    })
    .await;
    let inbound = world.bitrix_inbound();
    let (in_distinct, in_total) = distinct_total(&inbound);
    let (fwd_distinct, fwd_total) = world.subscriber.counts();
    let leads = world.bitrix.leads().len();
    let chats = world.bitrix.chats().len();
    let max_attempts = world
        .jobs()
        .await
        .iter()
        .filter(|j| j.kind == RELAY || j.kind == FORWARD)
        .map(|j| j.attempts)
        .max()
        .unwrap_or(0);
    println!(
        "outage: {WABRIDGES} wabridges + {} Meta messages ({WARM} warm customers × {PER_WARM}, \
         {NEW} new) acked while Bitrix and the subscriber were down ({outage_secs}s in); \
         recovered in {recovery_secs:.1}s:\n\
         \x20 forwards: {fwd_distinct} distinct webhook-ids, {fwd_total} deliveries\n\
         \x20 Bitrix: {in_distinct} distinct wamids (incl. {WARM} warm-up), {in_total} messages; \
         {chats} chats, {leads} leads\n\
         \x20 most attempts of one job: {max_attempts}",
        wamids.len()
    );
    assert_eq!(
        world.subscriber.duplicates(),
        vec![],
        "a forward came twice"
    );
    assert_eq!((fwd_distinct, fwd_total), (WABRIDGES, WABRIDGES));
    for w in &wamids {
        assert_eq!(inbound.get(w), Some(&1), "{w} exactly once in Bitrix");
    }
    assert_eq!(
        (in_distinct, in_total),
        (WARM + wamids.len(), WARM + wamids.len())
    );
    assert_eq!(
        (chats, leads),
        (WARM + NEW, WARM + NEW),
        "one lead per customer"
    );
    assert_eq!(
        world.dead_letters().await,
        vec![],
        "no dead letters from an outage"
    );

    // --- A permanent error is a dead letter with its fix; `jobs retry all` delivers it. ---
    world
        .bitrix
        .fail_next("imconnector.send.messages", "NOT_ACTIVE_LINE", 400, 1);
    let refused = post_meta("after the fix".into(), &customers[0]).await;
    eventually("NOT_ACTIVE_LINE dead-lettered at once", 30, || async {
        !world.dead_letters().await.is_empty()
    })
    .await;
    let dead = world.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (kind, error) = &dead[0];
    assert_eq!(kind, RELAY);
    assert!(
        error.contains("NOT_ACTIVE_LINE") && error.contains("activate-connector"),
        "dead letter names the error and its fix: {error}"
    );
    assert!(!world.bitrix_inbound().contains_key(&refused));
    let out = world.cli(dir.path(), &["jobs", "retry", "all"]).await;
    assert!(
        out.status.success(),
        "jobs retry all: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("retried dead letter delivered", 30, || async {
        world.bitrix_inbound().contains_key(&refused)
    })
    .await;
    eventually("queue drained, no dead letters", 30, || async {
        let h = health(&serve).await;
        h["queue"]["depth"] == 0 && h["queue"]["running"] == 0 && h["queue"]["dead_letters"] == 0
    })
    .await;
    assert_eq!(world.bitrix_inbound().get(&refused), Some(&1));
    println!(
        "outage: NOT_ACTIVE_LINE → 1 dead letter ({error:?}); `jobs retry all` → delivered once; \
         {}s in all",
        began.elapsed().as_secs()
    );
}

/// How the database becomes unreachable: PostgreSQL behind a TCP proxy that the test cuts
/// (every open connection dropped, new ones closed at once), SQLite locked by a second
/// connection holding `BEGIN EXCLUSIVE` (every writer gets "database is locked").
enum DbOutage {
    Postgres {
        product_url: String,
        up: tokio::sync::watch::Sender<bool>,
    },
    Sqlite {
        url: String,
        holder: Option<sqlx::SqliteConnection>,
    },
}

impl DbOutage {
    async fn prepare(url: &str) -> DbOutage {
        if url.starts_with("sqlite:") {
            return DbOutage::Sqlite {
                url: url.to_string(),
                holder: None,
            };
        }
        let mut product_url = reqwest::Url::parse(url).unwrap();
        let upstream = format!(
            "{}:{}",
            product_url.host_str().unwrap(),
            product_url.port().unwrap_or(5432)
        );
        let (port, up) = cuttable_proxy(upstream).await;
        product_url.set_host(Some("127.0.0.1")).unwrap();
        product_url.set_port(Some(port)).unwrap();
        DbOutage::Postgres {
            product_url: product_url.to_string(),
            up,
        }
    }

    /// The database URL the product is given.
    fn product_url(&self) -> String {
        match self {
            DbOutage::Postgres { product_url, .. } => product_url.clone(),
            DbOutage::Sqlite { url, .. } => url.clone(),
        }
    }

    async fn begin(&mut self) {
        match self {
            DbOutage::Postgres { up, .. } => {
                up.send_replace(false);
            }
            DbOutage::Sqlite { url, holder } => {
                use sqlx::Connection;
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::raw_sql("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                *holder = Some(conn);
            }
        }
    }

    async fn end(&mut self) {
        match self {
            DbOutage::Postgres { up, .. } => {
                up.send_replace(true);
            }
            DbOutage::Sqlite { holder, .. } => {
                if let Some(mut conn) = holder.take() {
                    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
                }
            }
        }
    }
}

/// A loopback TCP proxy to `upstream`; sending `false` drops every proxied connection and
/// closes new ones as soon as they are accepted, `true` lets them through again.
async fn cuttable_proxy(upstream: String) -> (u16, tokio::sync::watch::Sender<bool>) {
    let (up, _) = tokio::sync::watch::channel(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let up_for_loop = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let mut watch = up_for_loop.subscribe();
            if !*watch.borrow_and_update() {
                drop(client);
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = watch.wait_for(|up| !*up) => {}
                }
            });
        }
    });
    (port, up)
}

/// `/health` as (HTTP status, body), answered or not within `secs`.
async fn health_within(base: &str, secs: u64) -> Option<(u16, serde_json::Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(secs))
        .build()
        .unwrap();
    let r = client.get(format!("{base}/health")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// The workers' failure window today: a failed heartbeat or fetch (every 5 s, plus up to 10 s
/// of the database's own busy or acquire timeout) stops them. The outage outlasts it.
const DB_OUTAGE: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_come_back_after_the_database_was_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let mut outage = DbOutage::prepare(&url).await;
    let bound = bind();
    let base = bound.base.clone();
    let world = World::start(dir.path(), &outage.product_url(), &base).await;
    let serve = bound.serve(&world.env, Workers::InProcess).await;
    world.install(dir.path(), &base).await;
    let customer = Customer::new("4930555000111", "Kundin Datenbank");
    world.warm_up(std::slice::from_ref(&customer)).await;

    outage.begin().await;
    let began = Instant::now();
    let mut seen = Vec::new();
    while began.elapsed() < DB_OUTAGE {
        if let Some((code, h)) = health_within(&base, 12).await {
            seen.push((code, h));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    outage.end().await;

    // A new message after the outage goes all the way to Bitrix.
    let sent = world
        .meta
        .webhooks()
        .send_inbound(&customer, InboundMessage::text("after the outage"))
        .await
        .unwrap();
    assert_eq!(
        sent.status,
        200,
        "acknowledged after the outage; log:\n{}",
        tail(&serve.log_text(), 30)
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while !world.bitrix_inbound().contains_key(&sent.wamid) {
        assert!(
            Instant::now() < deadline,
            "90 s after the database came back, a new message is still not in Bitrix \
             (health during the outage: {:?}); log:\n{}",
            seen.iter()
                .map(|(c, h)| (c, &h["status"], &h["workers"]))
                .collect::<Vec<_>>(),
            tail(&serve.log_text(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("healthy again, workers running", 60, || async {
        let h = health(&serve).await;
        h["status"] == "healthy" && h["workers"]["state"] == "running"
    })
    .await;

    // While the workers were down, /health said so and named why.
    let down: Vec<&serde_json::Value> = seen
        .iter()
        .map(|(_, h)| h)
        .filter(|h| h["workers"]["state"] == "restarting")
        .collect();
    assert!(
        !down.is_empty(),
        "no /health during the outage said the workers were down: {:?}",
        seen.iter()
            .map(|(c, h)| (c, &h["status"], &h["workers"]))
            .collect::<Vec<_>>()
    );
    for h in &down {
        assert_ne!(h["status"], "healthy", "{h}");
        assert!(
            h["workers"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{h}"
        );
    }
    if url.starts_with("sqlite:") {
        // The database still answers reads, so the process is up but not doing its work.
        assert!(down.iter().any(|h| h["status"] == "degraded"), "{:?}", down);
    }
    println!(
        "database outage of {}s: /health during it {:?}, e.g. {}; a new message relayed afterwards",
        DB_OUTAGE.as_secs(),
        seen.iter()
            .map(|(c, h)| format!("{c} {} {}", h["status"], h["workers"]["state"]))
            .collect::<Vec<_>>(),
        down[down.len() / 2]
    );
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Two processes share a job queue on PostgreSQL only: the SQLite pass skips this module.
mod postgres_only {
    use super::*;

    /// Suspected: with two processes on one PostgreSQL, a job whose worker can no longer renew its
    /// hold (its process cut off from the database) while the job waits on a slow Bitrix call is
    /// taken over by the other process's worker and sent a second time while the first call is
    /// still running. Process A holds the message in a 28 s call when its database connections are
    /// cut; B (a `switchboard worker` on the same database, not cut) takes the job over once A's
    /// lease lapses. The fake portal records any message inside two calls at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_cut_off_from_the_database_gives_up_its_job_before_another_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _keep) = fresh_database_url().await;
        let mut outage = DbOutage::prepare(&url).await;
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let world = World::start(dir.path(), &outage.product_url(), &base).await;
        let a = spawn_on(dir.path(), "a", port, &["serve"], &world.env);
        healthy(&a).await;
        world.install(dir.path(), &base).await;
        let customer = Customer::new("4930555000222", "Kunde Zweimal");
        world.warm_up(std::slice::from_ref(&customer)).await;

        world.bitrix.set_latency(
            "imconnector.send.messages",
            Duration::from_secs(28),
            Duration::from_secs(28),
        );
        let sent = world
            .meta
            .webhooks()
            .send_inbound(&customer, InboundMessage::text("once, please"))
            .await
            .unwrap();
        assert_eq!(sent.status, 200);
        eventually("A is sending the message to Bitrix", 30, || async {
            world.bitrix.sending_now().contains(&sent.wamid)
        })
        .await;
        let env_b: Vec<(String, String)> = world
            .env
            .iter()
            .map(|(k, v)| {
                let v = if k == "DATABASE_URL" {
                    url.clone()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        let b = spawn(dir.path(), "b", &["worker"], &env_b);
        eventually("B's workers are running", 30, || async {
            b.log_text().contains("switchboard worker running")
        })
        .await;
        outage.begin().await;
        let cut = Instant::now();

        let deadline = cut + Duration::from_secs(120);
        while !world.bitrix_inbound().contains_key(&sent.wamid) {
            assert!(
                Instant::now() < deadline,
                "the message never reached Bitrix; B's log:\n{}",
                tail(&b.log_text(), 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let overlapping = world.bitrix.overlapping_sends();
        println!(
            "A cut off from PostgreSQL mid-call; the message reached Bitrix {:.0}s later, {} time(s); \
         sent twice at once: {overlapping:?}",
            cut.elapsed().as_secs_f64(),
            world.bitrix_inbound()[&sent.wamid],
        );
        assert_eq!(
            overlapping,
            Vec::<String>::new(),
            "one message was in two Bitrix calls at once: A still ran the job when B took it over"
        );
        drop(b);
    }
}
