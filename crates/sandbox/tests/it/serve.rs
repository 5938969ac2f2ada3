//! `switchboard-sandbox serve` as a person starts it: it brings up the product and the fakes,
//! prints where they are and the admin token, and stays up until stopped.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sandbox::harness::KillOnDrop;

/// The printed value after `label` on its line (`Switchboard        http://…`).
fn value_after(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(label)
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no line {label:?} in:\n{}", lines.join("\n")))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn serve_comes_up_prints_its_urls_and_stays_up() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_switchboard-sandbox"))
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchboard-sandbox serve"),
    );
    let stdout = child.0.stdout.take().unwrap();
    // Reading blocks: on its own thread, handing each line over.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines
        .iter()
        .any(|l: &String| l.contains("Running until Ctrl-C"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(line)) => lines.push(line),
            _ => panic!("serve did not finish starting:\n{}", lines.join("\n")),
        }
    }
    let product = value_after(&lines, "Switchboard   ");
    let setup = value_after(&lines, "setup checklist");
    let admin = value_after(&lines, "admin token");
    let portal_page = value_after(&lines, "local app page");
    let console = value_after(&lines, "Customer console");
    assert_eq!(setup, format!("{product}/setup?token={admin}"));
    assert!(admin.len() >= 32, "{admin}");
    for credential in ["Meta App ID", "Meta Access Token", "Bitrix24 Client Secret"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(credential)),
            "{credential}"
        );
    }

    let http = reqwest::Client::new();
    let health: serde_json::Value = http
        .get(format!("{product}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["database"]["reachable"], true, "{health}");
    // Nothing is configured yet: the connector waits for its credentials.
    assert_eq!(health["bridges"]["bitrix"]["state"], "off", "{health}");
    // The printed setup link signs the operator in: a session cookie, then /setup.
    let signed_in = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&setup)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/setup");
    assert!(
        signed_in.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("switchboard_admin=")
    );
    for page in [&portal_page, &console] {
        assert_eq!(
            http.get(page.as_str()).send().await.unwrap().status(),
            200,
            "{page}"
        );
    }

    // Still up a while later: it waits for Ctrl-C, it does not run a script and stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "serve exited by itself"
    );
    assert_eq!(
        http.get(format!("{product}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Ctrl-C stops the product with it.
    interrupt(child.0.id());
    let stopped = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "serve ignored SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        http.get(format!("{product}/health")).send().await.is_err(),
        "the product outlived the sandbox"
    );
}

/// SIGINT, as Ctrl-C sends it, through `kill` (no signal crate in this test's dependencies).
fn interrupt(pid: u32) {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
}
