//! Core platform tests against a real database (SQLite by default, PostgreSQL when
//! `SWITCHBOARD_TEST_DATABASE=postgres`): inbox durability and dedupe, the job queue's retry
//! schedule and dead letters, and the credential store's key rotation.

use crate::bridge_settings;

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use axum::http::HeaderMap;
use sandbox::harness::eventually;
use switchboard_core::{
    Core, Incoming, JobContext, JobError, JobKind, JobRegistry, Recorded, Status,
    credentials::{CredentialError, generate_master_key},
    inbox::{ProcessOutcome, Processors},
    testing::{TestDb, config, config_with, with_workers},
};

fn incoming(source: &str, key: &str, body: &str) -> Incoming {
    Incoming::new(
        "req-test",
        source,
        "/test",
        body.as_bytes(),
        &HeaderMap::new(),
    )
    .dedupe(key)
}

#[tokio::test]
async fn fifty_concurrent_duplicates_give_exactly_one_new() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let inbox = core.inbox.clone();
        tasks.push(tokio::spawn(async move {
            inbox
                .record(incoming("test", "wamid.SAME", "{}"))
                .await
                .unwrap()
        }));
    }
    let mut new = 0;
    let mut dup = 0;
    for t in tasks {
        match t.await.unwrap() {
            Recorded::New(_) => new += 1,
            Recorded::Duplicate(_) => dup += 1,
            Recorded::Logged(_) => panic!("a received event is never just logged"),
        }
    }
    assert_eq!((new, dup), (1, 49));
    let counts = core.inbox.count_by_status().await.unwrap();
    assert_eq!(counts.get("duplicate"), Some(&49));
    assert_eq!(counts.get("received"), Some(&1));
    // The new row waits for the dispatcher (none runs here) and counts as pending work;
    // duplicates add nothing.
    assert_eq!(core.jobs.stats().await.unwrap().pending, 1);
    // The same key from another source is a different event.
    assert!(matches!(
        core.inbox
            .record(incoming("other", "wamid.SAME", "{}"))
            .await
            .unwrap(),
        Recorded::New(_)
    ));
}

/// One batch can mix new work, duplicates of stored rows, duplicates within the batch and
/// refused calls; each caller gets its own answer, and only the new rows are handed to the
/// queue — once, however often the dispatcher runs.
#[tokio::test]
async fn a_mixed_batch_answers_each_caller_and_dispatches_only_new_rows_once() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let Recorded::New(_) = core
        .inbox
        .record(incoming("test", "stored", "{}"))
        .await
        .unwrap()
    else {
        panic!("first sight of a key is new")
    };
    assert_eq!(
        switchboard_core::inbox::dispatch_pending(&core.inbox, &core.jobs)
            .await
            .unwrap(),
        1
    );
    let mut calls = Vec::new();
    for i in 0..20 {
        calls.push(("new", incoming("test", &format!("new-{i}"), "{}")));
    }
    for _ in 0..10 {
        calls.push(("dup", incoming("test", "stored", "{}")));
    }
    for _ in 0..5 {
        calls.push(("twin", incoming("test", "twin", "{}")));
    }
    for _ in 0..5 {
        calls.push(("refused", incoming("test", "x", "{").rejected("bad token")));
    }
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(kind, call)| {
            let inbox = core.inbox.clone();
            tokio::spawn(async move { (kind, inbox.record(call).await.unwrap()) })
        })
        .collect();
    let mut seen = std::collections::HashMap::<(&str, &str), usize>::new();
    for t in tasks {
        let (kind, r) = t.await.unwrap();
        let outcome = match r {
            Recorded::New(_) => "new",
            Recorded::Duplicate(_) => "duplicate",
            Recorded::Logged(_) => "logged",
        };
        *seen.entry((kind, outcome)).or_default() += 1;
    }
    assert_eq!(seen.get(&("new", "new")), Some(&20));
    assert_eq!(seen.get(&("dup", "duplicate")), Some(&10));
    assert_eq!(seen.get(&("twin", "new")), Some(&1));
    assert_eq!(seen.get(&("twin", "duplicate")), Some(&4));
    assert_eq!(seen.get(&("refused", "logged")), Some(&5));
    assert_eq!(seen.len(), 5, "no other outcome: {seen:?}");

    // 21 new rows wait for the dispatcher; they count as pending work before and after.
    assert_eq!(core.jobs.stats().await.unwrap().pending, 22);
    let (a, b) = tokio::join!(
        switchboard_core::inbox::dispatch_pending(&core.inbox, &core.jobs),
        switchboard_core::inbox::dispatch_pending(&core.inbox, &core.jobs)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 21, "each new row handed over once");
    assert_eq!(
        switchboard_core::inbox::dispatch_pending(&core.inbox, &core.jobs)
            .await
            .unwrap(),
        0
    );
    assert_eq!(core.jobs.stats().await.unwrap().pending, 22);
    assert_eq!(core.jobs.list(false, 100).await.unwrap().len(), 22);
}

#[tokio::test]
async fn rejected_calls_are_recorded_but_never_processed() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let r = core
        .inbox
        .record(incoming("test", "k", "{bad").rejected("bad signature"))
        .await
        .unwrap();
    let Recorded::Logged(id) = r else {
        panic!("expected Logged, got {r:?}")
    };
    let ev = core.inbox.get(id).await.unwrap().unwrap();
    assert_eq!(ev.status, "rejected");
    assert_eq!(ev.error.as_deref(), Some("bad signature"));
    assert_eq!(ev.body_text(), "{bad");
}

/// Anyone can make a call that is refused, so a refused call keeps only the head of its body
/// (cut back to a character boundary in text) with the whole body's size and SHA-256.
#[tokio::test]
async fn refused_calls_keep_a_bounded_head_with_the_whole_bodys_size_and_hash() {
    use sha2::Digest;
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    // `{"xy":"` is 7 bytes and each `é` two: byte 4,096 falls inside a character.
    let text = format!("{{\"xy\":\"{}\"}}", "é".repeat(1024 * 1024)).into_bytes();
    let binary: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let short = b"{short".to_vec();
    for (body, kept) in [(&text, 4095), (&binary, 4096), (&short, short.len())] {
        let id = core
            .inbox
            .record(
                Incoming::new("req", "test", "/t", body, &HeaderMap::new()).rejected("bad token"),
            )
            .await
            .unwrap()
            .id();
        let ev = core.inbox.get(id).await.unwrap().unwrap();
        assert_eq!(ev.status, "rejected");
        assert_eq!(ev.body.len(), kept);
        assert_eq!(ev.body, body[..kept]);
        assert_eq!(ev.body_size, Some(body.len() as i64));
        assert_eq!(
            ev.body_sha256,
            Some(hex::encode(sha2::Sha256::digest(body)))
        );
        if body == &text {
            assert!(
                std::str::from_utf8(&ev.body).is_ok(),
                "cut inside a character"
            );
        }
    }
}

/// Persist-before-ack: rows committed by a process that died before processing them are
/// processed, once, by the next process to start on the same database.
#[tokio::test]
async fn rows_left_by_a_dead_process_are_processed_after_restart() {
    let db = TestDb::new().await;
    let first = db.core(config(&[]));
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = first
            .inbox
            .record(incoming("test", &format!("k{i}"), "{}"))
            .await
            .unwrap();
        ids.push(r.id());
    }
    // "Crash": the first process never dispatched or processed anything.
    drop(first);

    let second = db.core(config(&[]));
    let runs = Arc::new(AtomicUsize::new(0));
    let mut registry = JobRegistry::default();
    let mut processors = Processors::default();
    let counter = runs.clone();
    processors.register("test", move |_ev, _ctx| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(ProcessOutcome::Processed)
        }
    });
    processors.install(second.inbox.clone(), &mut registry);
    let inbox = second.inbox.clone();
    with_workers(&second, registry, async {
        eventually("all 20 rows processed", 20, || {
            let inbox = inbox.clone();
            async move { inbox.count_by_status().await.unwrap().get("processed") == Some(&20) }
        })
        .await;
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 20);
    for id in ids {
        let ev = second.inbox.get(id).await.unwrap().unwrap();
        assert_eq!(ev.attempts, 1, "row {id} ran more than once");
    }
}

/// On SQLite, a new row goes to this process's worker in the commit that stores it: by the
/// time the caller is acknowledged, its processing job exists, taken by the worker, with the
/// row claimed for it, and no second commit (the dispatcher's) stands before the work. It runs
/// once.
#[tokio::test]
async fn a_new_row_is_taken_by_the_worker_in_the_commit_that_acknowledges_it() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let release = Arc::new(tokio::sync::Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let mut registry = JobRegistry::default();
    let mut processors = Processors::default();
    let (gate, counter) = (release.clone(), runs.clone());
    processors.register("test", move |_ev, _ctx| {
        let (gate, counter) = (gate.clone(), counter.clone());
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            Ok(ProcessOutcome::Processed)
        }
    });
    processors.install(core.inbox.clone(), &mut registry);
    let c = core.clone();
    with_workers(&core, registry, async {
        // Until the worker has registered, new rows go through the dispatcher.
        eventually("the worker is running", 20, || {
            let c = c.clone();
            async move { c.jobs.workers_health().state == "running" }
        })
        .await;
        let id = c
            .inbox
            .record(incoming("test", "handed-1", "{}"))
            .await
            .unwrap()
            .id();
        let job_of_row = || {
            let c = c.clone();
            async move {
                c.jobs
                    .list(false, 50)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|j| j.event_id == Some(id))
            }
        };
        if switchboard_core::testing::wants_postgres() {
            // PostgreSQL's writers leave new rows to the dispatcher.
            eventually("the row's job is taken", 20, || async {
                job_of_row().await.is_some_and(|j| j.state == "running")
            })
            .await;
        } else {
            let job = job_of_row()
                .await
                .expect("the job exists as the ack returns");
            assert_eq!(job.state, "running", "{job:?}");
        }
        eventually("the processor has the row", 20, || async {
            runs.load(Ordering::SeqCst) == 1
        })
        .await;
        release.notify_one();
        eventually("processed", 20, || async {
            c.inbox.get(id).await.unwrap().unwrap().status == "processed"
        })
        .await;
        let ev = c.inbox.get(id).await.unwrap().unwrap();
        assert_eq!(ev.attempts, 1, "claimed once");
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Flaky {
    n: u32,
}

impl JobKind for Flaky {
    const KIND: &'static str = "test.flaky";
}

async fn job_attempts(core: &Core) -> (String, i64) {
    let rows = core.jobs.list(false, 10).await.unwrap();
    let row = rows
        .iter()
        .find(|r| r.kind == Flaky::KIND)
        .expect("the job is listed");
    (row.status.clone(), row.attempts)
}

/// SPEC §1.2: 5 attempts with 10 s, 30 s, 60 s, 60 s between them, then a dead letter that
/// `jobs retry` puts back. The waits are checked in the queue's own table, then skipped.
#[tokio::test]
async fn retry_schedule_then_dead_letter_then_retry() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let healthy = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let mut registry = JobRegistry::default();
    let (h, r) = (healthy.clone(), runs.clone());
    registry.register(move |_job: Flaky, ctx: JobContext| {
        let (h, r) = (h.clone(), r.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            if h.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(JobError::Retry(format!(
                    "downstream down (attempt {})",
                    ctx.attempt
                )))
            }
        }
    });
    core.jobs.push(&Flaky { n: 1 }, "req-flaky").await.unwrap();

    let c = core.clone();
    with_workers(&core, registry, async {
        let mut task_id = String::new();
        for (attempt, expected_wait) in [(1, 10), (2, 30), (3, 60), (4, 60)] {
            eventually(&format!("attempt {attempt} recorded"), 20, || {
                let c = c.clone();
                async move { job_attempts(&c).await == ("Failed".to_string(), attempt) }
            })
            .await;
            if task_id.is_empty() {
                task_id = c.jobs.list(false, 1).await.unwrap()[0].id.clone();
            }
            let wait = c.jobs.next_run_in_secs(&task_id).await.unwrap().unwrap();
            assert!(
                (expected_wait - 2..=expected_wait).contains(&wait),
                "after attempt {attempt} the next run is in {wait}s, expected ~{expected_wait}s"
            );
            c.jobs.make_due_now().await.unwrap();
        }
        eventually("fifth attempt dead-letters the job", 20, || {
            let c = c.clone();
            async move { c.jobs.stats().await.unwrap().dead == 1 }
        })
        .await;
        let dead = c.jobs.list(true, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 5);
        assert!(
            dead[0]
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("downstream down"),
            "last error kept: {:?}",
            dead[0].last_error
        );
        assert_eq!(dead[0].request_id, "req-flaky");

        healthy.store(true, Ordering::SeqCst);
        assert_eq!(c.jobs.retry(None).await.unwrap(), 1);
        eventually("retried dead letter succeeds", 20, || {
            let c = c.clone();
            async move { job_attempts(&c).await.0 == "Done" }
        })
        .await;
        assert_eq!(c.jobs.stats().await.unwrap().dead, 0);
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn permanent_failure_dead_letters_at_once() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let mut registry = JobRegistry::default();
    registry.register(|_job: Flaky, _ctx: JobContext| async {
        Err(JobError::Permanent("token invalid (code 190)".into()))
    });
    core.jobs.push(&Flaky { n: 2 }, "req-perm").await.unwrap();
    let c = core.clone();
    with_workers(&core, registry, async {
        eventually("dead letter", 20, || {
            let c = c.clone();
            async move { c.jobs.stats().await.unwrap().dead == 1 }
        })
        .await;
    })
    .await;
    let dead = core.jobs.list(true, 10).await.unwrap();
    assert_eq!(dead[0].attempts, 1, "a permanent error is not retried");
}

#[tokio::test]
async fn key_rotation_round_trip_and_wrong_key_error() {
    let db = TestDb::new().await;
    let (old, new) = (generate_master_key(), generate_master_key());

    let before = db.core(config(&[("SWITCHBOARD_MASTER_KEY", &old)]));
    before
        .settings
        .set(bridge_settings::META_APP_SECRET, "app-secret-1")
        .await
        .unwrap();
    before
        .settings
        .set(bridge_settings::BITRIX_CLIENT_SECRET, "client-secret-2")
        .await
        .unwrap();
    before
        .settings
        .put_blob("bitrix.grant", "{\"refresh\":\"r1\"}")
        .await
        .unwrap();

    // A process with only the new key can't read the old values, and says which setting.
    let wrong = db.core(config(&[("SWITCHBOARD_MASTER_KEY", &new)]));
    let err = wrong
        .settings
        .get(bridge_settings::META_APP_SECRET)
        .await
        .unwrap_err();
    assert!(matches!(err, CredentialError::UnknownKey { .. }), "{err}");
    assert!(err.to_string().contains("SWITCHBOARD_OLD_MASTER_KEYS"));

    // With the old key retired but readable, rotate re-encrypts everything.
    let rotating = db.core(config(&[
        ("SWITCHBOARD_MASTER_KEY", &new),
        ("SWITCHBOARD_OLD_MASTER_KEYS", &old),
    ]));
    assert_eq!(rotating.settings.rotate().await.unwrap(), 3);
    assert_eq!(
        rotating.settings.rotate().await.unwrap(),
        0,
        "rotation is idempotent"
    );

    // Afterwards the new key alone reads every value.
    let after = db.core(config(&[("SWITCHBOARD_MASTER_KEY", &new)]));
    assert_eq!(
        after
            .settings
            .get(bridge_settings::META_APP_SECRET)
            .await
            .unwrap()
            .as_deref(),
        Some("app-secret-1")
    );
    assert_eq!(
        after
            .settings
            .get_blob("bitrix.grant")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"refresh\":\"r1\"}")
    );
}

#[tokio::test]
async fn store_outranks_env_and_blank_falls_back() {
    let db = TestDb::new().await;
    let key = generate_master_key();
    let core = db.core(config_with(
        bridge_settings::catalogue(),
        &[
            ("SWITCHBOARD_MASTER_KEY", &key),
            ("SWITCHBOARD_META_PHONE_NUMBER_ID", "from-env"),
        ],
    ));
    let s = &core.settings;
    let (v, src) = s
        .resolve(bridge_settings::META_PHONE_NUMBER_ID)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.as_str(), src.as_str()), ("from-env", "env"));
    s.set(bridge_settings::META_PHONE_NUMBER_ID, "from-store")
        .await
        .unwrap();
    let (v, src) = s
        .resolve(bridge_settings::META_PHONE_NUMBER_ID)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.as_str(), src.as_str()), ("from-store", "store"));
    s.set(bridge_settings::META_PHONE_NUMBER_ID, "")
        .await
        .unwrap();
    assert_eq!(
        s.get(bridge_settings::META_PHONE_NUMBER_ID)
            .await
            .unwrap()
            .as_deref(),
        Some("from-env")
    );
    // Server settings are not storable: the form can't redirect the database.
    assert!(
        s.set(
            switchboard_core::config::catalogue::DATABASE_URL,
            "sqlite://elsewhere.db"
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn replay_reprocesses_and_prune_keeps_unfinished_rows() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let id = core
        .inbox
        .record(incoming("test", "r1", "{}"))
        .await
        .unwrap()
        .id();
    core.inbox
        .finish(id, Status::Processed, None)
        .await
        .unwrap();
    let pending = core
        .inbox
        .record(incoming("test", "r2", "{}"))
        .await
        .unwrap()
        .id();
    let refused = core
        .inbox
        .record(incoming("test", "r3", "{}").rejected("bad token"))
        .await
        .unwrap()
        .id();
    // Nothing is older than a day: prune removes nothing.
    assert_eq!(core.inbox.prune(86_400_000).await.unwrap(), 0);
    // Everything finished is older than "0 ms": the processed and the refused row go.
    assert_eq!(core.inbox.prune(-1000).await.unwrap(), 2);
    assert!(core.inbox.get(refused).await.unwrap().is_none());
    assert!(core.inbox.get(pending).await.unwrap().is_some());

    let ids = core
        .inbox
        .select_for_replay(Some("test"), None)
        .await
        .unwrap();
    assert_eq!(ids, vec![pending]);
    assert_eq!(core.inbox.replay(&ids).await.unwrap(), 1);
}

/// `/health` is what load balancers and monitors read: 503 as soon as the database is gone.
#[tokio::test]
async fn health_is_503_when_the_database_is_unreachable() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let app = switchboard_core::ops::router(&core, Vec::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ok = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(ok.status(), 200);
    core.db.close().await;
    let down = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(down.status(), 503);
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["database"]["reachable"], false);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Parent {
    fail_child: bool,
}

impl JobKind for Parent {
    const KIND: &'static str = "test.parent";
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Child {
    fail: bool,
}

impl JobKind for Child {
    const KIND: &'static str = "test.child";
}

/// Where each run of a job happened: its kind and the tokio task that ran it.
type Runs = Arc<std::sync::Mutex<Vec<(&'static str, Option<tokio::task::Id>)>>>;

fn parent_and_child(core: &Core, runs: &Runs, child_ok: &Arc<AtomicBool>) -> JobRegistry {
    let mut registry = JobRegistry::default();
    let (c, r) = (core.clone(), runs.clone());
    registry.register(move |job: Parent, ctx: JobContext| {
        let (c, r) = (c.clone(), r.clone());
        async move {
            r.lock().unwrap().push(("parent", tokio::task::try_id()));
            let child = Child {
                fail: job.fail_child,
            };
            // The second push of the key is a no-op, as with `push_once`.
            for _ in 0..2 {
                c.jobs
                    .push_once_here(&child, &ctx.request_id, "child-of-parent")
                    .await
                    .map_err(|e| JobError::Retry(e.to_string()))?;
            }
            Ok(())
        }
    });
    let (r, ok) = (runs.clone(), child_ok.clone());
    registry.register(move |job: Child, _ctx: JobContext| {
        let (r, ok) = (r.clone(), ok.clone());
        async move {
            r.lock().unwrap().push(("child", tokio::task::try_id()));
            if job.fail && !ok.load(Ordering::SeqCst) {
                Err(JobError::Retry("child's downstream down".into()))
            } else {
                Ok(())
            }
        }
    });
    registry
}

async fn child_row(core: &Core) -> Vec<(String, i64)> {
    let rows = core.jobs.list(false, 50).await.unwrap();
    rows.iter()
        .filter(|r| r.kind == Child::KIND)
        .map(|r| (r.status.clone(), r.attempts))
        .collect()
}

/// A job pushed with `push_once_here` from a handler runs in the parent's own task right after
/// it (no trip through the queue), once per key, and is recorded as done in the queue's table.
#[tokio::test]
async fn a_job_pushed_here_runs_right_after_the_one_that_pushed_it() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let runs: Runs = Arc::default();
    let registry = parent_and_child(&core, &runs, &Arc::new(AtomicBool::new(true)));
    core.jobs
        .push(&Parent { fail_child: false }, "req-parent")
        .await
        .unwrap();
    let c = core.clone();
    with_workers(&core, registry, async {
        eventually("the child is done", 20, || {
            let c = c.clone();
            async move { child_row(&c).await == vec![("Done".to_string(), 1)] }
        })
        .await;
    })
    .await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ["parent", "child"],
        "the child runs once, after its parent"
    );
    assert!(runs[0].1.is_some());
    assert_eq!(runs[0].1, runs[1].1, "the child ran in its parent's task");
    assert_eq!(core.jobs.stats().await.unwrap().pending, 0);
}

/// A job run right after its parent that fails is retried like any job: its row waits out the
/// first delay of the schedule, then any worker's fetch takes it.
#[tokio::test]
async fn a_job_pushed_here_that_fails_is_retried_through_the_queue() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let runs: Runs = Arc::default();
    let child_ok = Arc::new(AtomicBool::new(false));
    let registry = parent_and_child(&core, &runs, &child_ok);
    core.jobs
        .push(&Parent { fail_child: true }, "req-parent")
        .await
        .unwrap();
    let c = core.clone();
    with_workers(&core, registry, async {
        eventually("the child's first attempt failed", 20, || {
            let c = c.clone();
            async move { child_row(&c).await == vec![("Failed".to_string(), 1)] }
        })
        .await;
        let id = c
            .jobs
            .list(false, 50)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.kind == Child::KIND)
            .unwrap()
            .id;
        let wait = c.jobs.next_run_in_secs(&id).await.unwrap().unwrap();
        assert!(
            (8..=10).contains(&wait),
            "next attempt in {wait}s, expected ~10s"
        );
        assert_eq!(
            c.jobs.stats().await.unwrap().pending,
            1,
            "the retry is waiting work"
        );
        child_ok.store(true, Ordering::SeqCst);
        c.jobs.make_due_now().await.unwrap();
        eventually("the retried child is done", 20, || {
            let c = c.clone();
            async move { child_row(&c).await == vec![("Done".to_string(), 2)] }
        })
        .await;
    })
    .await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ["parent", "child", "child"]
    );
    assert_ne!(
        runs[1].1, runs[2].1,
        "the retry was fetched, not run in the parent's task"
    );
}

/// Outside a job's handler there is no job to follow: `push_once_here` queues the job for any
/// worker, once per key.
#[tokio::test]
async fn push_once_here_outside_a_job_queues_it() {
    let db = TestDb::new().await;
    let core = db.core(config(&[]));
    let runs: Runs = Arc::default();
    let registry = parent_and_child(&core, &runs, &Arc::new(AtomicBool::new(true)));
    for _ in 0..2 {
        core.jobs
            .push_once_here(&Child { fail: false }, "req-child", "lone-child")
            .await
            .unwrap();
    }
    assert_eq!(core.jobs.stats().await.unwrap().pending, 1);
    let c = core.clone();
    with_workers(&core, registry, async {
        eventually("the child is done", 20, || {
            let c = c.clone();
            async move { child_row(&c).await == vec![("Done".to_string(), 1)] }
        })
        .await;
    })
    .await;
    assert_eq!(runs.lock().unwrap().len(), 1);
}
