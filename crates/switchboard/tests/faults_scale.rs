//! Scale-out on PostgreSQL: several `switchboard` processes on one database behave like one.
//! (SQLite is single-process by design; on SQLite these tests say so and return.)

mod common;

use common::*;
use switchboard_core::testing::{fresh_database_url, wants_postgres};

fn forward_config(dir: &std::path::Path, subscriber: &str) -> String {
    let path = dir.join("switchboard.toml");
    std::fs::write(
        &path,
        format!(
            "[[wabridges.forward]]\nurl = \"{subscriber}\"\nevents = [\"message\"]\nsecret = \"whsec_c2NhbGUtb3V0LXRlc3Qtc2VjcmV0\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Issue 2: two `switchboard worker` processes on one PostgreSQL database run 1,000 webhooks'
/// jobs (processing + forwarding) with no job run twice and none lost. The subscriber counts
/// every delivery by its `webhook-id`.
#[tokio::test]
async fn two_workers_on_postgres_run_every_job_exactly_once() {
    if !wants_postgres() {
        eprintln!(
            "SQLite run: multi-process scale-out needs PostgreSQL; covered by the PostgreSQL pass"
        );
        return;
    }
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = fresh_database_url().await;
    let (subscriber, sub_url) = Subscriber::default().start().await;
    let config = forward_config(dir.path(), &sub_url);
    let env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), url),
        ("SWITCHBOARD_CONFIG".into(), config),
        ("SWITCHBOARD_WABRIDGES_TOKEN".into(), "scale-token".into()),
    ];

    // HTTP only: everything it accepts waits in the queue for the workers.
    let web = spawn(dir.path(), "web", &["serve", "--no-workers"], &env);
    healthy(&web).await;
    let client = reqwest::Client::new();
    let url = format!("{}/wabridges/hooks/scale?token=scale-token", web.base);
    let mut sends = Vec::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(N / 16) {
        let (client, url, chunk) = (client.clone(), url.clone(), chunk.to_vec());
        sends.push(tokio::spawn(async move {
            for i in chunk {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(wabridges_message(i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "event {i}");
            }
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    assert_eq!(subscriber.counts(), (0, 0), "nothing runs without workers");

    let w1 = spawn(dir.path(), "worker1", &["worker"], &env);
    let w2 = spawn(dir.path(), "worker2", &["worker"], &env);
    eventually("all 1,000 events forwarded", 120, || async {
        subscriber.counts().0 == N
    })
    .await;
    eventually("queue drained", 60, || async {
        let h = health(&web).await;
        h["queue"]["depth"] == 0 && h["queue"]["running"] == 0
    })
    .await;
    let (distinct, total) = subscriber.counts();
    println!(
        "scale-out: {N} webhooks → {distinct} distinct forwards, {total} deliveries, 2 workers"
    );
    assert_eq!(subscriber.duplicates(), vec![], "a job ran twice");
    assert_eq!((distinct, total), (N, N));
    assert_eq!(health(&web).await["queue"]["dead_letters"], 0);
    for w in [&w1, &w2] {
        assert!(
            w.log_text().contains("switchboard worker running"),
            "worker did not start:\n{}",
            w.log_text()
        );
    }
}
