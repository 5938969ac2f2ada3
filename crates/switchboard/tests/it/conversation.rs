//! What Bitrix24 says about the connector reaches the people who run it: a deleted Open
//! Channel line (or the connector disconnected from it) makes the bridge `degraded` on
//! `/health` with the reason and puts a failing row on `/setup`, until the connector is
//! activated again.

use switchboard_core::testing::fresh_database_url;

use crate::support::{Workers, admin_cookie, bind, eventually, health, world::*};

async fn setup_page(base: &str, cookie: &str) -> String {
    reqwest::Client::new()
        .get(format!("{base}/setup"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_line_degrades_the_bridge_until_the_connector_is_activated_again() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let bound = bind();
    let base = bound.base.clone();
    let world = World::start(dir.path(), &url, &base).await;
    let server = bound.serve(&world.env, Workers::InProcess).await;
    world.install(dir.path(), &base).await;
    let bound_events: Vec<String> = world
        .bitrix
        .bound_events()
        .into_iter()
        .map(|e| e.event)
        .collect();
    for event in [
        "ONIMCONNECTORMESSAGEADD",
        "ONIMCONNECTORMESSAGEUPDATE",
        "ONIMCONNECTORMESSAGEDELETE",
        "ONIMCONNECTORLINEDELETE",
        "ONIMCONNECTORSTATUSDELETE",
    ] {
        assert!(
            bound_events.iter().any(|e| e.eq_ignore_ascii_case(event)),
            "{event} not bound: {bound_events:?}"
        );
    }
    assert_eq!(health(&server).await["bridges"]["bitrix"]["state"], "ready");
    let cookie = admin_cookie(&server, ADMIN_TOKEN).await;
    assert!(!setup_page(&base, &cookie).await.contains("still connected"));

    let line = world.bitrix.config().line_id;
    let delivered = world.bitrix.delete_line(line).await;
    assert_eq!(delivered[0].status, Some(200), "{:?}", delivered[0]);
    eventually("the bridge is degraded", 30, || async {
        health(&server).await["bridges"]["bitrix"]["state"] == "degraded"
    })
    .await;
    let h = health(&server).await;
    let reason = h["bridges"]["bitrix"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("Open Channel line {line} was deleted in Bitrix24")),
        "{reason}"
    );
    let page = setup_page(&base, &cookie).await;
    let row = format!("Open Channel line {line} still connected");
    let at = page.find(&row).unwrap_or_else(|| panic!("no {row} row"));
    let li = page[..at].rfind("<li").unwrap();
    assert!(
        page[li..at].contains("data-ok=\"false\""),
        "{}",
        &page[li..at]
    );

    // The administrator connects the connector again: the alert is over.
    let out = world
        .cli(dir.path(), &["bitrix", "activate-connector"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(health(&server).await["bridges"]["bitrix"]["state"], "ready");
    assert!(!setup_page(&base, &cookie).await.contains(&row));

    // Disconnecting the connector from the line is reported the same way.
    let delivered = world
        .bitrix
        .disable_connector("switchboard_whatsapp", line)
        .await;
    assert_eq!(delivered[0].status, Some(200));
    eventually("degraded again", 30, || async {
        health(&server).await["bridges"]["bitrix"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("connector was disconnected"))
    })
    .await;
    let out = world
        .cli(dir.path(), &["bitrix", "activate-connector"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(health(&server).await["bridges"]["bitrix"]["state"], "ready");
}
