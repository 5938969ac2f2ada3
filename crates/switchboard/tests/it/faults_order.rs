//! Relay order: a burst of messages from many customers at once reaches Bitrix in each
//! customer's order, although the relays run many at a time (and on PostgreSQL in two
//! processes) and the portal answers each call after a random delay. Runs on SQLite and
//! PostgreSQL.

use std::time::{Duration, Instant};

use crate::support::{world::*, *};
use sandbox::{
    bitrix::ChatMessage,
    meta::{Customer, InboundMessage},
};
use switchboard_core::testing::{fresh_database_url, wants_postgres};

const CUSTOMERS: usize = 12;
const PER_CUSTOMER: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_bitrix_in_each_customers_order() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let world = World::start(dir.path(), &url, &base).await;
    let serve = spawn_on(dir.path(), "serve", port, &["serve"], &world.env);
    healthy(&serve).await;
    world.install(dir.path(), &base).await;
    // A second process's workers share the queue on PostgreSQL.
    let second = wants_postgres().then(|| spawn(dir.path(), "worker", &["worker"], &world.env));
    world.bitrix.set_latency(
        "imconnector.send.messages",
        Duration::ZERO,
        Duration::from_millis(200),
    );

    // Each customer writes one message after another (Meta's next delivery after the last
    // one's 200); all customers at once.
    let began = Instant::now();
    let mut writers = Vec::new();
    for c in 0..CUSTOMERS {
        let customer = Customer::new(format!("4930777{c:06}"), format!("Kundin Reihe{c}"));
        let sender = world.meta.webhooks();
        writers.push(tokio::spawn(async move {
            let mut wamids = Vec::new();
            for i in 0..PER_CUSTOMER {
                let sent = sender
                    .send_inbound(&customer, InboundMessage::text(format!("message {i}")))
                    .await
                    .unwrap();
                assert_eq!(sent.status, 200);
                wamids.push(sent.wamid);
            }
            (customer, wamids)
        }));
    }
    let mut sent = Vec::new();
    for w in writers {
        sent.push(w.await.unwrap());
    }
    let total = CUSTOMERS * PER_CUSTOMER;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let inbound = world.bitrix_inbound();
        let arrived = sent
            .iter()
            .flat_map(|(_, w)| w)
            .filter(|w| inbound.contains_key(*w))
            .count();
        if arrived == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{arrived} of {total} messages in Bitrix after 240 s; dead letters {:?}",
            world.dead_letters().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = began.elapsed();

    let mut out_of_order = Vec::new();
    for (customer, wamids) in &sent {
        let got: Vec<String> = world
            .bitrix
            .messages_in_chat(&customer.wa_id)
            .into_iter()
            .filter_map(|m| match m {
                ChatMessage::Customer(c) => c.external_id,
                _ => None,
            })
            .collect();
        if &got != wamids {
            let order: Vec<usize> = got
                .iter()
                .filter_map(|g| wamids.iter().position(|w| w == g))
                .collect();
            out_of_order.push((customer.wa_id.clone(), order));
        }
    }
    println!(
        "{CUSTOMERS} customers × {PER_CUSTOMER} messages, portal latency 0–200 ms, {} process(es): \
         all in Bitrix after {:.1}s; customers out of order: {}",
        if second.is_some() { 2 } else { 1 },
        elapsed.as_secs_f64(),
        out_of_order.len()
    );
    assert!(
        out_of_order.is_empty(),
        "messages reached Bitrix out of each customer's order (customer, order received): \
         {out_of_order:?}"
    );
    assert_eq!(world.dead_letters().await, vec![]);

    // Routes, jobs and the /setup probes all used the one Bitrix24 client of the process: a
    // second would have its own rate bucket and refresh lock, and the limit would not hold.
    let cookie = admin_cookie(&serve, ADMIN_TOKEN).await;
    let setup = reqwest::Client::new()
        .get(format!("{base}/setup"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(setup.status(), 200);
    assert!(setup.text().await.unwrap().contains("Connector registered"));
    assert_eq!(
        metric(&serve, "switchboard_bitrix_clients").await,
        Some(1.0),
        "Bitrix24 clients built by the serving process"
    );
}
