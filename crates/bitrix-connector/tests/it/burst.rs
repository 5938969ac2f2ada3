//! Bursts under the portal's rate limit: customers' messages coalesced into `batch` calls keep
//! each customer's order, make one lead per customer and never draw `QUERY_LIMIT_EXCEEDED`;
//! a failing command in a batch is retried alone; a token expiring mid-burst is refreshed
//! once; two processes refreshing at once on PostgreSQL redeem the refresh token once.

use std::time::Duration;

use crate::support::TestApp;
use sandbox::{
    bitrix::ChatMessage,
    harness::eventually,
    meta::{Customer, InboundMessage, WebhookSender},
};
use switchboard_core::testing::with_workers;

fn customers(n: usize) -> Vec<Customer> {
    (0..n)
        .map(|c| Customer::new(format!("4915100{c:05}"), format!("Kundin Nummer{c}")))
        .collect()
}

/// Each customer writes `per_customer` messages one after another (Meta sends the next after
/// the last one's 200), all customers at once.
async fn write(hooks: WebhookSender, customers: &[Customer], per_customer: usize) {
    let writers = customers.iter().cloned().map(|customer| {
        let hooks = hooks.clone();
        async move {
            for i in 0..per_customer {
                let sent = hooks
                    .send_inbound(&customer, InboundMessage::text(format!("message {i}")))
                    .await
                    .unwrap();
                assert_eq!(sent.status, 200);
            }
        }
    });
    futures::future::join_all(writers).await;
}

/// The texts of `customer`'s messages as the portal holds them, in its order.
fn texts(app: &TestApp, customer: &Customer) -> Vec<String> {
    app.bitrix
        .messages_in_chat(&customer.wa_id)
        .into_iter()
        .filter_map(|m| match m {
            ChatMessage::Customer(c) => c.text,
            _ => None,
        })
        .collect()
}

fn in_order(per_customer: usize) -> Vec<String> {
    (0..per_customer).map(|i| format!("message {i}")).collect()
}

fn oauth_refreshes(app: &TestApp) -> usize {
    app.bitrix.recorder().matching("/oauth/token/").len()
}

#[tokio::test]
async fn three_hundred_messages_from_sixty_new_customers_stay_inside_the_limit() {
    let app = TestApp::start().await;
    app.ready().await;
    app.bitrix.strict_rate_limit();
    let customers = customers(60);
    with_workers(&app.core, app.registry(), async {
        write(app.meta.webhooks(), &customers, 5).await;
        eventually("300 messages and 60 leads in Bitrix", 120, || async {
            customers.iter().all(|c| texts(&app, c).len() >= 5) && app.bitrix.leads().len() >= 60
        })
        .await;
        eventually("all work finished", 30, || app.idle()).await;
    })
    .await;
    for c in &customers {
        assert_eq!(texts(&app, c), in_order(5), "{}", c.wa_id);
    }
    assert_eq!(app.bitrix.leads().len(), 60, "one lead per customer");
    assert_eq!(
        app.bitrix.limit_refusals(),
        0,
        "QUERY_LIMIT_EXCEEDED answers"
    );
    let (batches, commands) = app.bitrix.batches();
    assert!(
        batches > 0 && commands > batches,
        "calls went out coalesced: {batches} batches carried {commands} commands"
    );
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_failing_command_in_a_batch_is_retried_alone() {
    let app = TestApp::start().await;
    app.ready().await;
    // Slow sends make the customers' messages queue up behind one another, so they travel
    // together in batches.
    app.bitrix.set_latency(
        "imconnector.send.messages",
        Duration::from_millis(30),
        Duration::from_millis(30),
    );
    let customers = customers(12);
    with_workers(&app.core, app.registry(), async {
        // Armed once the first, lone send is through: the failure lands inside a batch.
        let hooks = app.meta.webhooks();
        write(hooks.clone(), &customers[..1], 1).await;
        eventually("the first message", 20, || async {
            texts(&app, &customers[0]).len() == 1
        })
        .await;
        app.bitrix
            .fail_next("imconnector.send.messages", "INTERNAL_SERVER_ERROR", 500, 1);
        write(hooks, &customers[1..], 1).await;
        eventually(
            "all but one delivered, one waiting to retry",
            30,
            || async {
                let delivered = customers
                    .iter()
                    .filter(|c| texts(&app, c).len() == 1)
                    .count();
                let retrying = app
                    .core
                    .jobs
                    .list(false, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|j| j.status != "Done" && j.last_error.is_some())
                    .count();
                delivered == 11 && retrying == 1
            },
        )
        .await;
        app.core.jobs.make_due_now().await.unwrap();
        eventually("all delivered", 20, || async {
            customers.iter().all(|c| texts(&app, c).len() == 1)
        })
        .await;
        eventually("all work finished", 20, || app.idle()).await;
    })
    .await;
    for c in &customers {
        assert_eq!(texts(&app, c), in_order(1), "sent once: {}", c.wa_id);
    }
    let (batches, _) = app.bitrix.batches();
    assert!(batches > 0, "the sends were batched");
}

#[tokio::test]
async fn a_token_expiring_mid_burst_is_refreshed_once() {
    let app = TestApp::start().await;
    app.ready().await;
    app.bitrix.set_latency(
        "imconnector.send.messages",
        Duration::from_millis(5),
        Duration::from_millis(20),
    );
    let customers = customers(20);
    with_workers(&app.core, app.registry(), async {
        let hooks = app.meta.webhooks();
        write(hooks.clone(), &customers, 1).await;
        eventually("the first messages", 20, || async {
            customers.iter().any(|c| !texts(&app, c).is_empty())
        })
        .await;
        let before = oauth_refreshes(&app);
        app.bitrix.expire_access_tokens();
        write(hooks, &customers, 2).await;
        eventually("every message delivered", 60, || async {
            customers.iter().all(|c| texts(&app, c).len() == 3)
        })
        .await;
        eventually("all work finished", 20, || app.idle()).await;
        assert_eq!(oauth_refreshes(&app) - before, 1, "refreshes after expiry");
    })
    .await;
    for c in &customers {
        let got = texts(&app, c);
        assert_eq!(got[1..], in_order(2), "{}", c.wa_id);
    }
    let stored = app.stored_grant().await.unwrap();
    assert_eq!(
        stored.refresh_token,
        app.bitrix.current_tokens().unwrap().refresh_token,
        "the stored grant is the portal's live one"
    );
}

pub mod postgres_only {
    use switchboard_core::{Core, db::Db};

    use crate::support::TestApp;

    /// Two processes on one PostgreSQL database: each its own pool and its own connector
    /// (so its own in-process refresh lock); only the database can keep them from redeeming
    /// the same refresh token twice, which Bitrix answers by killing the loser's grant.
    #[tokio::test]
    async fn two_processes_refreshing_at_once_redeem_the_refresh_token_once() {
        let app = TestApp::start().await;
        app.ready().await;
        let other_db = Db::connect(&app.db.url).await.unwrap();
        let other =
            bitrix_connector::Relay::new(&Core::with_db((*app.core.config).clone(), other_db));
        let stale = app.stored_grant().await.unwrap();
        app.bitrix.expire_access_tokens();
        let before = super::oauth_refreshes(&app);

        let (a, b) = tokio::join!(
            app.relay
                .bitrix
                .oauth
                .refresh_replacing(&stale.access_token),
            other.bitrix.oauth.refresh_replacing(&stale.access_token),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            super::oauth_refreshes(&app) - before,
            1,
            "refresh token redeemed once"
        );
        assert_eq!(
            a.refresh_token, b.refresh_token,
            "both hold the one new grant"
        );
        let live = app.bitrix.current_tokens().unwrap();
        assert_eq!(
            app.stored_grant().await.unwrap().refresh_token,
            live.refresh_token
        );
        for relay in [&app.relay, &other] {
            relay
                .bitrix
                .call("imconnector.list", serde_json::json!({}))
                .await
                .expect("the grant still works");
        }
    }
}
