//! Shared by the multi-process tests (`faults_*.rs`): start and kill real `switchboard`
//! processes, and a subscriber that records what the product forwards to it.
#![allow(dead_code)]

pub mod world;

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `switchboard` process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Proc {
    /// `kill -9`: no graceful shutdown, nothing flushed that wasn't already committed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Still running (not exited or crashed)?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `switchboard <args>` in `dir` with exactly `env` (plus PATH); stderr goes to a log
/// file in `dir` so a failing test can show it.
pub fn spawn(dir: &Path, name: &str, args: &[&str], env: &[(String, String)]) -> Proc {
    spawn_on(dir, name, free_port(), args, env)
}

/// `spawn` on a chosen port: a restarted process must keep the URL that Bitrix (event handler)
/// and the media links already know.
pub fn spawn_on(
    dir: &Path,
    name: &str,
    port: u16,
    args: &[&str],
    env: &[(String, String)],
) -> Proc {
    launch(dir, name, port, Command::new(BIN), args, env)
}

/// `spawn`, with the process's open-file limit (soft and hard) lowered to `nofile` first, the
/// way `ulimit -n` in a service's start script does.
pub fn spawn_with_fd_limit(
    dir: &Path,
    name: &str,
    nofile: u64,
    args: &[&str],
    env: &[(String, String)],
) -> Proc {
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
        BIN,
    ]);
    launch(dir, name, free_port(), sh, args, env)
}

/// Runs `cmd` (the binary, or a shell that execs it) with `args` appended, exactly `env` plus
/// PATH, listening on `port`; stderr goes to `<name>.log` in `dir`.
fn launch(
    dir: &Path,
    name: &str,
    port: u16,
    mut cmd: Command,
    args: &[&str],
    env: &[(String, String)],
) -> Proc {
    let log = dir.join(format!("{name}.log"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().expect("spawn switchboard"),
        base: format!("http://127.0.0.1:{port}"),
        log,
    }
}

/// Waits for `/health` 200 (HTTP processes only).
pub async fn healthy(p: &Proc) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/health", p.base)).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not healthy; log:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn health(p: &Proc) -> serde_json::Value {
    reqwest::get(format!("{}/health", p.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

/// A forwarding subscriber: counts deliveries per `webhook-id`, can be switched down (503).
#[derive(Clone, Default)]
pub struct Subscriber {
    inner: Arc<Mutex<SubState>>,
}

#[derive(Default)]
struct SubState {
    by_id: HashMap<String, usize>,
    bodies: Vec<Bytes>,
    down: bool,
}

impl Subscriber {
    pub async fn start(self) -> (Self, String) {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (self, url)
    }

    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    /// (distinct webhook ids, total deliveries)
    pub fn counts(&self) -> (usize, usize) {
        let s = self.inner.lock().unwrap();
        (s.by_id.len(), s.by_id.values().sum())
    }

    pub fn duplicates(&self) -> Vec<(String, usize)> {
        let s = self.inner.lock().unwrap();
        s.by_id
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }

    pub fn bodies(&self) -> Vec<Bytes> {
        self.inner.lock().unwrap().bodies.clone()
    }
}

async fn receive(State(s): State<Subscriber>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut st = s.inner.lock().unwrap();
    if st.down {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
        .to_string();
    *st.by_id.entry(id).or_default() += 1;
    st.bodies.push(body);
    StatusCode::OK
}

/// A unique wabridges `message` event.
pub fn wabridges_message(i: usize) -> String {
    format!(
        r#"{{"event":"message","message_id":"FAULT{i:08}","contact_id":"1555000{n:04}@s.whatsapp.net","phone":"1555000{n:04}","chat_id":"1555000{n:04}@s.whatsapp.net","name":"Customer {n}","body":"message {i}","type":"text","media_type":"","is_group":false,"from_me":false,"timestamp":{ts}}}"#,
        n = i % 50,
        ts = 1_777_180_605 + i
    )
}
