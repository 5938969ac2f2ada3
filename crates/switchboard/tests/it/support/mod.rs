//! What the modules of this test binary share: the product run in-process through
//! `switchboard::run` on a listener of its own, real `switchboard` processes for what needs one
//! (a crash, a signal, an open-file limit, several processes on one database, the CLI), and a
//! subscriber that records what the product forwards to it. Ports, killing and polling come
//! from `sandbox::harness`, as in every other test crate.
#![allow(dead_code)]

pub mod world;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
pub use sandbox::harness::{KillOnDrop, eventually, free_port};
pub use switchboard::Workers;
use switchboard_core::Config;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A running product, in this process or in its own: where it answers, and what it logged.
pub trait Server {
    fn base(&self) -> &str;
    fn log_text(&self) -> String;
}

/// A running `switchboard` process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: KillOnDrop,
    pub base: String,
    pub log: PathBuf,
}

impl Proc {
    /// `kill -9`: no graceful shutdown, nothing flushed that wasn't already committed.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        self.child.rss_kib()
    }

    /// Still running (not exited or crashed)?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Server for Proc {
    fn base(&self) -> &str {
        &self.base
    }

    fn log_text(&self) -> String {
        Proc::log_text(self)
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
        child: KillOnDrop(cmd.spawn().expect("spawn switchboard")),
        base: format!("http://127.0.0.1:{port}"),
        log,
    }
}

/// Runs a CLI command with exactly `env` (plus PATH), without blocking the runtime that serves
/// the fakes it talks to.
pub async fn cli(dir: &Path, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args);
    cmd.output().await.expect("run switchboard")
}

/// A loopback listener taken before the product starts, so that its address can go into the
/// product's settings (the public URL Bitrix and Meta call back on).
pub struct Bound {
    listener: std::net::TcpListener,
    pub base: String,
}

pub fn bind() -> Bound {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let base = format!("http://{}", listener.local_addr().unwrap());
    Bound { listener, base }
}

impl Bound {
    /// `switchboard::run` on this listener with the settings in `env` (and nothing from this
    /// process's environment), once `/health` answers.
    pub async fn serve(self, env: &[(String, String)], workers: Workers) -> InProcess {
        let env = env.iter().cloned().collect();
        let config = Config::from_sources(switchboard::catalogue(), None, &env)
            .expect("the test's settings are valid");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.listener.set_nonblocking(true).unwrap();
        let listener = self.listener;
        // Its own runtime on its own thread, as the binary has: the wiring's futures need not
        // be Send, and a test runtime busy with the fakes does not slow the product down.
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    switchboard::run(config, listener, workers, shutdown).await
                })
        });
        let server = InProcess {
            base: self.base,
            stop: Some(stop),
            thread: Some(thread),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/health", server.base)).send().await
                && r.status() == 200
            {
                return server;
            }
            if server.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let ended = server.stop().await;
                panic!("switchboard::run ended before it was healthy: {ended:?}");
            }
            assert!(Instant::now() < deadline, "not healthy after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `switchboard::run` on a fresh loopback listener.
pub async fn serve_in_process(env: &[(String, String)], workers: Workers) -> InProcess {
    bind().serve(env, workers).await
}

/// The product wired in this process. Dropping it starts the shutdown without waiting for it.
pub struct InProcess {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// The shutdown a signal starts in the binary, waited for to its end: what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        let thread = self.thread.take().expect("not stopped yet");
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("joined")
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Server for InProcess {
    fn base(&self) -> &str {
        &self.base
    }

    /// In-process the product logs nowhere; the tests that read a log run the binary.
    fn log_text(&self) -> String {
        "(in-process: no log)".to_string()
    }
}

/// Waits for `/health` 200.
pub async fn healthy(p: &impl Server) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/health", p.base())).send().await
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

/// A signed-in admin session's cookie (`name=value`), from the sign-in form.
pub async fn admin_cookie(p: &impl Server, admin_token: &str) -> String {
    let signed_in = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/admin/sign-in", p.base()))
        .form(&[("token", admin_token), ("next", "/setup")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "sign-in");
    signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The value of an unlabelled metric on `/metrics`, if it is there.
pub async fn metric(p: &impl Server, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", p.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub async fn health(p: &impl Server) -> serde_json::Value {
    reqwest::get(format!("{}/health", p.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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
