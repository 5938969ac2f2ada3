//! deploy/monitoring against the product: every series the alert rules and the dashboard query
//! is one the code exports, and a histogram is queried in the shape `/metrics` renders it
//! (`_bucket` series only where it has buckets, `{quantile=…}` where it is a summary). A rule
//! naming a renamed or never-exported metric would stay silent forever; this test fails instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use sandbox::pbx::FakePbx;
use serde_json::json;
use switchboard_core::testing::fresh_database_url;

use crate::support::{healthy, spawn, wabridges_message};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `switchboard_*` metric names and their kind (`counter`, `gauge`, `histogram`), from the
/// macros that record them in the crates' sources.
fn exported() -> BTreeMap<String, &'static str> {
    let mut found = BTreeMap::new();
    let mut stack = vec![repo().join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("tests") && !path.ends_with("target") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for kind in ["counter", "gauge", "histogram"] {
                let call = format!("{kind}!(");
                for (at, _) in text.match_indices(&call) {
                    let rest = text[at + call.len()..].trim_start();
                    if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                        && name.starts_with("switchboard_")
                    {
                        found.insert(name.to_string(), kind);
                    }
                }
            }
        }
    }
    found
}

/// Every `switchboard_*` name in `text`, with the character after it (`{` opens a selector).
fn referenced(text: &str) -> BTreeSet<(String, Option<String>)> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("switchboard_") {
        if at > 0 && text.as_bytes()[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        let after = &text[at + name.len()..];
        let selector = after
            .strip_prefix('{')
            .and_then(|s| s.split('}').next())
            .map(str::to_string);
        names.insert((name, selector));
    }
    names
}

#[tokio::test]
async fn alerts_and_dashboard_query_only_series_the_product_exports() {
    // Traffic that records every histogram: a webhook (its commit, its job), a PBX call.
    let pbx = FakePbx::start().await;
    pbx.add_org("org_monitoring", "secret_monitoring", "Monitoring");
    let dir = tempfile::tempdir().unwrap();
    let (database_url, _keep) = fresh_database_url().await;
    let env = [
        ("DATABASE_URL".to_string(), database_url),
        ("SWITCHBOARD_PBX_BASE_URL".to_string(), pbx.url()),
        (
            "SWITCHBOARD_WABRIDGES_TOKEN".to_string(),
            "mon-token".into(),
        ),
    ];
    let server = spawn(dir.path(), "switchboard", &["serve"], &env);
    healthy(&server).await;
    let http = reqwest::Client::new();
    let hook = http
        .post(format!(
            "{}/wabridges/hooks/mon?token=mon-token",
            server.base
        ))
        .header("content-type", "application/json")
        .body(wabridges_message(1))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 200);
    let call = http
        .post(format!("{}/whatsapp-bridge", server.base))
        .json(&json!({
            "api_key": "org_monitoring", "api_secret": "secret_monitoring",
            "endpoint": "/api/v1/calls/click-to-call",
            "body": {"from": "9876543210", "from_type": "external", "to": "5001", "to_type": "queue"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), 200);
    // The webhook's job records its duration once it has run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let scraped = loop {
        let text = http
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("switchboard_job_duration_seconds_bucket") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job ran within 30 s:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    // The bridges' states, as `/health` has them: the alert on `degraded` reads these.
    for (bridge, state) in [("pbx", "ready"), ("wabridges", "ready"), ("bitrix", "off")] {
        let series = format!("switchboard_bridge_state{{bridge=\"{bridge}\",state=\"{state}\"}} 1");
        assert!(scraped.contains(&series), "no `{series}` in:\n{scraped}");
    }

    let exported = exported();
    assert!(
        exported.len() > 20,
        "metrics found in the sources: {exported:?}"
    );
    let monitoring = repo().join("deploy/monitoring");
    let rules = std::fs::read_to_string(monitoring.join("alerts.yml")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring.join("dashboard.json")).unwrap())
            .unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(!queries.is_empty());

    let mut wrong = Vec::new();
    for (file, text) in [
        ("alerts.yml", rules),
        ("dashboard.json", queries.join("\n")),
    ] {
        let names = referenced(&text);
        assert!(!names.is_empty(), "{file} queries no switchboard_ series");
        for (name, selector) in names {
            let (base, series) = match ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).map(|b| (b, *s)))
            {
                Some((base, suffix)) if exported.contains_key(base) => (base.to_string(), suffix),
                _ => (name.clone(), ""),
            };
            match exported.get(&base) {
                None => wrong.push(format!("{file}: {name} is not exported")),
                Some(&kind) if !series.is_empty() && kind != "histogram" => wrong.push(format!(
                    "{file}: {name}: {base} is a {kind}, not a histogram"
                )),
                Some(_) if series == "_bucket" && !scraped.contains(&format!("{name}{{")) => wrong
                    .push(format!(
                        "{file}: {name}: /metrics renders {base} without buckets (a summary)"
                    )),
                Some(_)
                    if selector.as_deref().is_some_and(|s| s.contains("quantile"))
                        && !scraped.contains(&format!("{name}{{quantile=")) =>
                {
                    wrong.push(format!("{file}: {name}: /metrics has no quantiles for it"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `switchboard_queue_oldest_due_age_seconds` is zero on an empty queue and grows while
/// acknowledged work waits: here a process that only acknowledges (its workers are elsewhere,
/// and none runs) holds a stored event nobody queues.
#[tokio::test]
async fn queue_age_grows_while_acknowledged_work_waits() {
    use crate::support::{metric, serve_in_process};
    let (database_url, _keep) = fresh_database_url().await;
    let env = [
        ("DATABASE_URL".to_string(), database_url),
        (
            "SWITCHBOARD_WABRIDGES_TOKEN".to_string(),
            "age-token".into(),
        ),
    ];
    let server = serve_in_process(&env, switchboard::Workers::Elsewhere).await;
    healthy(&server).await;
    const AGE: &str = "switchboard_queue_oldest_due_age_seconds";
    assert_eq!(metric(&server, AGE).await, Some(0.0));
    let hook = reqwest::Client::new()
        .post(format!(
            "{}/wabridges/hooks/age?token=age-token",
            server.base
        ))
        .header("content-type", "application/json")
        .body(wabridges_message(1))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let age = metric(&server, AGE).await.unwrap();
    assert!((1.0..60.0).contains(&age), "{AGE} = {age}");
    server.stop().await.unwrap();
}
