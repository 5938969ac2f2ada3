//! The message templates' admin page through the real router: behind the sign-in, linked from
//! the overview, listing each template with its status and variables, and syncing from Meta
//! by its button (with the session's CSRF token, and never without it).

use switchboard_core::testing::fresh_database_url;

use crate::support::{Workers, admin_cookie, bind, world::*};

const PAGE: &str = "/admin/pages/bitrix/templates";

async fn get(base: &str, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_templates_page_lists_them_with_status_and_variables_and_syncs_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let bound = bind();
    let base = bound.base.clone();
    let mut world = World::start(dir.path(), &url, &base).await;
    world.env.push((
        "SWITCHBOARD_META_WABA_ID".into(),
        world.meta.config().waba_id.clone(),
    ));
    let server = bound.serve(&world.env, Workers::Elsewhere).await;

    let (status, _) = get(&base, PAGE, None).await;
    assert_eq!(status, 401, "the page is behind the sign-in");
    let cookie = admin_cookie(&server, ADMIN_TOKEN).await;
    let (_, overview) = get(&base, "/", Some(&cookie)).await;
    assert!(
        overview.contains(&format!("href=\"{PAGE}\"")),
        "linked from the overview"
    );
    let (status, before) = get(&base, PAGE, Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(before.contains("No templates loaded."), "{before}");

    let client = reqwest::Client::new();
    let forged = client
        .post(format!("{base}{PAGE}"))
        .header("cookie", &cookie)
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(
        world
            .meta
            .recorder()
            .all()
            .iter()
            .all(|r| !r.path.ends_with("/message_templates"))
    );

    let synced = client
        .post(format!("{base}{PAGE}"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf_of(&before))])
        .send()
        .await
        .unwrap();
    assert_eq!(synced.status(), 200);
    let page = synced.text().await.unwrap();
    assert!(page.contains("Synced 1 templates (1 approved)"), "{page}");
    let (_, after) = get(&base, PAGE, Some(&cookie)).await;
    for cell in [
        "<td>hello_world</td>",
        "<td>en_US</td>",
        "<td>APPROVED</td>",
        "<td>UTILITY</td>",
    ] {
        assert!(after.contains(cell), "{cell} in {after}");
    }
    server.stop().await.unwrap();
}
