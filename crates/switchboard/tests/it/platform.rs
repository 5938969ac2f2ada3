//! The real `switchboard` binary, as an operator runs it: start-up on the configured database,
//! `/health`, configuration errors (exit 2 naming the setting), and the CLI's credential and
//! key-rotation round trip. Runs on SQLite, or PostgreSQL with SWITCHBOARD_TEST_DATABASE=postgres.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use switchboard_core::{credentials::generate_master_key, testing::fresh_database_url};

use crate::support::{BIN, KillOnDrop, Workers, free_port, serve_in_process};

/// A command with a clean environment: only what the test sets reaches the binary.
fn switchboard(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    switchboard(dir, env)
        .args(args)
        .output()
        .expect("run switchboard")
}

struct Server {
    child: KillOnDrop,
    base: String,
}

async fn serve(dir: &Path, env: &[(&str, &str)]) -> (Server, Duration) {
    serve_with(dir, env, &[]).await
}

/// `switchboard serve <args>`, once `/health` answers 200.
async fn serve_with(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (Server, Duration) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all: Vec<(&str, &str)> = env.to_vec();
    all.push(("SWITCHBOARD_LISTEN", &listen));
    all.push(("SWITCHBOARD_LOG_FORMAT", "json"));
    let started = Instant::now();
    let child = switchboard(dir, &all)
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn switchboard serve");
    let server = Server {
        child: KillOnDrop(child),
        base: format!("http://{listen}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/health", server.base)).send().await
            && r.status() == 200
        {
            return (server, started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "switchboard did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn serves_health_on_the_configured_database() {
    let (url, _keep) = fresh_database_url().await;
    let server =
        serve_in_process(&[("DATABASE_URL".into(), url.clone())], Workers::InProcess).await;
    let health: serde_json::Value = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    let backend = if url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(health["database"]["backend"], backend);
    assert_eq!(health["queue"]["dead_letters"], 0);
    // No credentials: every bridge is mounted but says it is not configured.
    for bridge in ["pbx", "wabridges", "bitrix"] {
        assert_eq!(health["bridges"][bridge]["configured"], false, "{bridge}");
    }
}

/// README's run command with no configuration at all: SQLite under ./data, created on first run.
#[tokio::test]
async fn runs_with_no_configuration_on_embedded_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = serve(dir.path(), &[]).await;
    assert!(dir.path().join("data/switchboard.db").exists());
    let r = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("switchboard_"));
}

/// `switchboard health`, the probe for images without a shell: exit 0 while the server at
/// SWITCHBOARD_LISTEN answers `/health` 200, 1 with the reason when nothing answers.
#[tokio::test]
async fn the_health_command_probes_the_configured_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = serve(dir.path(), &[]).await;
    let listen = server.base.trim_start_matches("http://").to_string();
    let up = run(dir.path(), &[("SWITCHBOARD_LISTEN", &listen)], &["health"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains("200"));
    // Bound to every interface, the server is asked on the loopback.
    let port = listen.rsplit(':').next().unwrap();
    let any = run(
        dir.path(),
        &[("SWITCHBOARD_LISTEN", &format!("0.0.0.0:{port}"))],
        &["health"],
    );
    assert!(
        any.status.success(),
        "{}",
        String::from_utf8_lossy(&any.stderr)
    );
    drop(server);
    let down = run(dir.path(), &[("SWITCHBOARD_LISTEN", &listen)], &["health"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains(&format!("http://{listen}/health")),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("SWITCHBOARD_PBX_BASE_URL", "devpbx.example.com")],
            "SWITCHBOARD_PBX_BASE_URL",
        ),
        (
            &[("SWITCHBOARD_MASTER_KEY", "dG9vIHNob3J0")],
            "SWITCHBOARD_MASTER_KEY",
        ),
        (&[("SWITCHBOARD_LISTEN", "localhost")], "SWITCHBOARD_LISTEN"),
        (
            &[("SWITCHBOARD_PBX_TOKEN_TTL_SECS", "soon")],
            "SWITCHBOARD_PBX_TOKEN_TTL_SECS",
        ),
        (
            &[("SWITCHBOARD_PBX_BASEURL", "http://x")],
            "SWITCHBOARD_PBX_BASEURL",
        ),
        (&[("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
        (
            &[("SWITCHBOARD_BITRIX_LINE_ID", "abc")],
            "SWITCHBOARD_BITRIX_LINE_ID",
        ),
        (
            &[("SWITCHBOARD_META_GRAPH_VERSION", "23")],
            "SWITCHBOARD_META_GRAPH_VERSION",
        ),
    ];
    for (env, name) in cases {
        let out = run(dir.path(), env, &["serve"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
    let files: &[(&str, &str, &str)] = &[
        ("[nonsense]\nkey = 1\n", "[nonsense]", ""),
        (
            "[[wabridges.forward]]\nurl = \"crm.example.com/hook\"\nsecret = \"s\"\n",
            "[[wabridges.forward]]",
            "entry 1: url `crm.example.com/hook` is not an http(s) URL",
        ),
        (
            "[[wabridges.forward]]\nurl = \"https://a.example/\"\nsecret = \"s\"\n\
             [[wabridges.forward]]\nurl = \"https://a.example/\"\nsecret = \"t\"\n",
            "[[wabridges.forward]]",
            "entries 1 and 2 are both `https://a.example/`",
        ),
        (
            "[[bitrix.templates]]\nname = \"order_update\"\nlanguage = \"en_US\"\n\
             [[bitrix.templates]]\nname = \"Order_Update\"\nlanguage = \"de\"\n",
            "[[bitrix.templates]]",
            "entries 1 and 2 are both named `Order_Update`",
        ),
        (
            "[[bitrix.templates]]\nname = \"order_update\"\n",
            "[[bitrix.templates]]",
            "missing field `language`",
        ),
        (
            "[[bitrix.channels]]\nphone_number_id = \"106540352242922\"\nline_id = \"support\"\n",
            "[[bitrix.channels]]",
            "entry 1: line_id \"support\" must be the Open Channel's numeric id",
        ),
        (
            "[[bitrix.channels]]\nphone_number_id = \"106540352242922\"\nline_id = 3\n\
             [[bitrix.channels]]\nphone_number_id = \"106540352242922\"\nline_id = 5\n",
            "[[bitrix.channels]]",
            "entries 1 and 2 both have phone_number_id \"106540352242922\"",
        ),
        (
            "[[bitrix.channels]]\nphone_number_id = \"106540352242922\"\nline_id = 3\n\
             [[bitrix.channels]]\nphone_number_id = \"998877665544332\"\nline_id = 3\n",
            "[[bitrix.channels]]",
            "entries 1 and 2 both have line_id 3",
        ),
        (
            "[[bitrix.channels]]\nphone_number_id = \"+49 30 123\"\nline_id = 3\n",
            "[[bitrix.channels]]",
            "entry 1: phone_number_id \"+49 30 123\" must be Meta's numeric id",
        ),
        (
            "[bitrix]\nline_id = \"abc\"\n",
            "[bitrix] line_id",
            "`abc` is not a positive whole number",
        ),
        (
            "[meta]\ngraph_version = \"23\"\n",
            "[meta] graph_version",
            "`23` is not a Graph API version like v23.0",
        ),
    ];
    for (text, name, problem) in files {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let out = run(dir.path(), &[], &["--config", "bad.toml", "migrate"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
        assert!(stderr.contains(problem), "`{problem}` not in: {stderr}");
    }
}

#[tokio::test]
async fn credentials_cli_stores_masks_and_survives_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let (old, new) = (generate_master_key(), generate_master_key());
    let secret = "EAAG-very-secret-access-token";

    let mut set = switchboard(
        dir.path(),
        &[("DATABASE_URL", &url), ("SWITCHBOARD_MASTER_KEY", &old)],
    )
    .args(["credentials", "set", "meta.access_token", "--stdin"])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    use std::io::Write;
    set.stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    assert!(set.wait().unwrap().success());

    let list = run(
        dir.path(),
        &[("DATABASE_URL", &url), ("SWITCHBOARD_MASTER_KEY", &old)],
        &["credentials", "list"],
    );
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success());
    assert!(!text.contains(secret), "secret printed by credentials list");
    let row = text
        .lines()
        .find(|l| l.starts_with("meta.access_token"))
        .unwrap();
    assert!(row.contains("store") && row.contains("••••••••"), "{row}");

    // New key alone: the stored value is unreadable and the error says what to do.
    let wrong = run(
        dir.path(),
        &[("DATABASE_URL", &url), ("SWITCHBOARD_MASTER_KEY", &new)],
        &["credentials", "list"],
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("SWITCHBOARD_OLD_MASTER_KEYS"));

    let rotate = run(
        dir.path(),
        &[
            ("DATABASE_URL", &url),
            ("SWITCHBOARD_MASTER_KEY", &new),
            ("SWITCHBOARD_OLD_MASTER_KEYS", &old),
        ],
        &["keys", "rotate"],
    );
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let after = run(
        dir.path(),
        &[("DATABASE_URL", &url), ("SWITCHBOARD_MASTER_KEY", &new)],
        &["credentials", "list"],
    );
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
}

/// A password inside a URL setting (the PostgreSQL URL's, or one in a service's base URL) is
/// masked wherever settings are shown: `credentials list` and `/admin/credentials`.
#[tokio::test]
async fn passwords_in_url_settings_are_masked_in_credentials_list_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    // The test PostgreSQL trusts local connections and ignores the password; SQLite URLs have
    // none, so there the PBX URL's password stands for it.
    let url = url.replacen("://postgres@", "://postgres:DB-PASSWORD-42@", 1);
    let admin = "mask-test-admin-token";
    let env = [
        ("DATABASE_URL", url.as_str()),
        (
            "SWITCHBOARD_PBX_BASE_URL",
            "https://pbx-user:PBX-PASSWORD-42@pbx.example.com/",
        ),
        ("SWITCHBOARD_ADMIN_TOKEN", admin),
    ];
    let masked_pbx = "https://pbx-user:••••••••@pbx.example.com/";
    let masked_db = url.replacen("DB-PASSWORD-42", "••••••••", 1);

    let list = run(dir.path(), &env, &["credentials", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let text = String::from_utf8_lossy(&list.stdout);
    for leaked in ["DB-PASSWORD-42", "PBX-PASSWORD-42"] {
        assert!(
            !text.contains(leaked),
            "{leaked} in credentials list:\n{text}"
        );
    }
    assert!(text.contains(masked_pbx), "{text}");
    assert!(text.contains(&masked_db), "{text}");

    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let server = serve_in_process(&env, Workers::InProcess).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http
        .get(format!("{}/admin/credentials?token={admin}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = http
        .get(format!("{}/admin/credentials", server.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for leaked in ["DB-PASSWORD-42", "PBX-PASSWORD-42"] {
        assert!(!html.contains(leaked), "{leaked} on /admin/credentials");
    }
    assert!(html.contains(masked_pbx));
    assert!(html.contains(&masked_db));
}

#[test]
fn keys_generate_prints_a_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &[], &["keys", "generate"]);
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(switchboard_core::credentials::parse_master_key(key.trim()).is_ok());
}

/// SIGTERM (systemd stop, `docker stop`, a Kubernetes rollout) ends the process after the
/// in-flight work, with or without workers, even after webhooks went through the inbox writer.
/// With workers, a stop that lands while the five jobs run hung the process now and then (about
/// one run in five with the cores busy): three rounds give that race its chances.
#[tokio::test]
async fn sigterm_stops_the_process_after_acknowledged_work() {
    for extra in [None, None, None, Some("--no-workers")] {
        let dir = tempfile::tempdir().unwrap();
        let (url, _keep) = fresh_database_url().await;
        let (mut server, _) = serve_with(
            dir.path(),
            &[
                ("DATABASE_URL", &url),
                ("SWITCHBOARD_WABRIDGES_TOKEN", "t0ken"),
            ],
            extra.as_slice(),
        )
        .await;
        let client = reqwest::Client::new();
        for i in 0..5 {
            let r = client
                .post(format!("{}/wabridges/hooks/b1?token=t0ken", server.base))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"event":"message","message_id":"TERM{i}","contact_id":"1@s.whatsapp.net","phone":"1","chat_id":"1@s.whatsapp.net","name":"A","body":"x","type":"text","media_type":"","is_group":false,"from_me":false,"timestamp":1777180605}}"#
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{extra:?}");
        }
        let pid = server.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 20 s after SIGTERM ({extra:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit status {status} ({extra:?})");
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A secret stored under one master key stops `serve` and `worker` under another key, or
/// none, with exit code 2 naming the setting and SWITCHBOARD_OLD_MASTER_KEYS: a process that
/// started anyway answered the bridge's webhooks 500 and stored nothing. With the old key
/// among the retired ones it starts.
#[tokio::test]
async fn a_stored_secret_no_key_opens_stops_start_up_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let (old, new) = (generate_master_key(), generate_master_key());
    let set = run(
        dir.path(),
        &[("DATABASE_URL", &url), ("SWITCHBOARD_MASTER_KEY", &old)],
        &["credentials", "set", "wabridges.token", "hook-secret-42"],
    );
    assert!(set.status.success(), "{}", stderr(&set));

    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    for (key, command) in [
        (Some(new.as_str()), "serve"),
        (None, "serve"),
        (Some(new.as_str()), "worker"),
    ] {
        let mut env = vec![
            ("DATABASE_URL", url.as_str()),
            ("SWITCHBOARD_LISTEN", &listen),
        ];
        if let Some(key) = key {
            env.push(("SWITCHBOARD_MASTER_KEY", key));
        }
        // A process that starts anyway runs until stopped: bounded, so that fails instead of
        // hanging.
        let mut cmd = tokio::process::Command::from(switchboard(dir.path(), &env));
        cmd.arg(command).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("`{command}` started with a secret it can't decrypt"))
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{command} key={key:?}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("switchboard: "))
            .unwrap_or_default();
        assert!(line.contains("`wabridges.token`"), "{line}");
        assert!(line.contains("SWITCHBOARD_OLD_MASTER_KEYS"), "{line}");
        assert!(!err.contains("hook-secret-42"));
    }

    let (server, _) = serve(
        dir.path(),
        &[
            ("DATABASE_URL", &url),
            ("SWITCHBOARD_MASTER_KEY", &new),
            ("SWITCHBOARD_OLD_MASTER_KEYS", &old),
        ],
    )
    .await;
    let health: serde_json::Value = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The stored token counts: the bridge is configured, not "missing" it.
    assert_eq!(
        health["bridges"]["wabridges"]["configured"], true,
        "{health}"
    );
    assert_eq!(health["bridges"]["wabridges"]["state"], "ready", "{health}");
    assert_eq!(health["bridges"]["pbx"]["state"], "off", "{health}");
    assert!(
        health["bridges"]["pbx"]["reason"]
            .as_str()
            .unwrap()
            .contains("SWITCHBOARD_PBX_BASE_URL")
    );
}

/// Arguments that name nothing there is are errors with exit code 2 and a message, not
/// "0 done": an unknown dead letter, event, source, age or time, a setting the store does not
/// hold (the message lists those it does), and a value of the wrong form, which is not
/// stored over the good one in the environment.
#[tokio::test]
async fn cli_arguments_that_name_nothing_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _keep) = fresh_database_url().await;
    let key = generate_master_key();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_MASTER_KEY", key.as_str()),
        ("SWITCHBOARD_BITRIX_LINE_ID", "7"),
    ];
    let cases: &[(&[&str], &[&str])] = &[
        (&["jobs", "retry", "nope"], &["`nope`", "jobs list --dead"]),
        (
            &["events", "replay", "--source", "nonsense"],
            &["`nonsense`", "meta", "wabridges"],
        ),
        (
            &["events", "replay", "--since", "yesterday"],
            &["`yesterday`", "2h"],
        ),
        (&["events", "replay", "--id", "999"], &["999"]),
        (&["events", "prune", "--older-than", "3x"], &["`3x`", "30d"]),
        (
            &["credentials", "set", "bitrix.line_id", "abc"],
            &["bitrix.line_id", "`abc` is not a positive whole number"],
        ),
        (
            &["credentials", "set", "listen", "127.0.0.1:1"],
            &["`listen`", "meta.access_token", "bitrix.line_id"],
        ),
        (
            &["credentials", "set", "no.such", "x"],
            &["`no.such`", "wabridges.token"],
        ),
    ];
    for (args, said) in cases {
        let out = run(dir.path(), &env, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for s in *said {
            assert!(err.contains(s), "{args:?}: `{s}` not in {err}");
        }
    }
    let list = run(dir.path(), &env, &["credentials", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("bitrix.line_id"))
        .unwrap();
    assert!(
        row.contains("env") && row.trim_end().ends_with(" 7"),
        "{row}"
    );

    // What does exist still works.
    let ok = run(
        dir.path(),
        &env,
        &["credentials", "set", "bitrix.line_id", "9"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = run(dir.path(), &env, &["jobs", "retry", "all"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = run(
        dir.path(),
        &env,
        &["events", "replay", "--source", "meta", "--since", "2h"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// The admin form refuses a line id that is not a number beside its field, and keeps the
/// value in force.
#[tokio::test]
async fn the_credentials_form_refuses_a_line_id_that_is_not_a_number() {
    let (url, _keep) = fresh_database_url().await;
    let admin = "form-test-admin-token";
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_ADMIN_TOKEN", admin),
        ("SWITCHBOARD_MASTER_KEY", &generate_master_key()),
        ("SWITCHBOARD_BITRIX_LINE_ID", "7"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let server = serve_in_process(&env, Workers::InProcess).await;
    let cookie = crate::support::admin_cookie(&server, admin).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/admin/credentials", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find(r#"name="csrf" value=""#).unwrap() + 19;
    let csrf = page[at..].split('"').next().unwrap();
    let refused = http
        .post(format!("{}/admin/credentials", server.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf), ("bitrix.line_id", "abc")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let html = refused.text().await.unwrap();
    assert!(
        html.contains("`abc` is not a positive whole number"),
        "{html}"
    );
    let list = run(
        tempfile::tempdir().unwrap().path(),
        &[("DATABASE_URL", &url), ("SWITCHBOARD_BITRIX_LINE_ID", "7")],
        &["credentials", "list"],
    );
    let text = String::from_utf8_lossy(&list.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("bitrix.line_id"))
        .unwrap();
    assert!(row.contains("env"), "{row}");
}

/// `/metrics` counts requests by route template and status class: the bridge name in a hook's
/// path and an unknown path never become labels of their own.
#[tokio::test]
async fn request_counters_carry_the_route_template_and_status_class() {
    let (url, _keep) = fresh_database_url().await;
    let server = serve_in_process(&[("DATABASE_URL".into(), url)], Workers::InProcess).await;
    let http = reqwest::Client::new();
    http.get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    let hook = http
        .post(format!("{}/wabridges/hooks/sales-team-7", server.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(hook.status().is_client_error() || hook.status().is_server_error());
    let missing = http
        .get(format!("{}/no/such/path-42", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let text = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let class = format!("{}xx", hook.status().as_u16() / 100);
    for series in [
        r#"switchboard_http_requests_total{route="/health",status="2xx"}"#.to_string(),
        format!(
            r#"switchboard_http_requests_total{{route="/wabridges/hooks/{{bridge}}",status="{class}"}}"#
        ),
        r#"switchboard_http_requests_total{route="unmatched",status="4xx"}"#.to_string(),
    ] {
        assert!(text.contains(&series), "{series} not in:\n{text}");
    }
    assert!(!text.contains("sales-team-7") && !text.contains("path-42"));
}
