//! What tests, the benchmark and the demo share for driving processes and waiting on them: a
//! free loopback port, a child process killed when dropped, polling until a condition holds,
//! the product binary (run from the same target folder as the harness) and the bare axum
//! baseline. Every test crate uses these instead of its own copies.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failed test or an aborted
/// run leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// `kill -9`: no graceful shutdown, nothing flushed that wasn't already committed.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Resident memory (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `check` every 20 ms until it is true, failing the test after `secs`: a test waits for
/// what it needs, never for a fixed time.
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let reached = poll(secs, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await;
    if reached.is_none() {
        panic!("timed out after {secs}s waiting for: {what}");
    }
}

/// [`eventually`] for a wait that yields something: polls `check` every 20 ms until it gives a
/// value, or `None` once `secs` have passed, so the caller decides how to fail (a test panics,
/// the demo returns an error).
pub async fn poll<T, F, Fut>(secs: u64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bench's and demo's child process, with its address and start-up time.
pub struct Proc {
    pub child: KillOnDrop,
    pub base: String,
    pub start_to_healthy: Duration,
}

impl Proc {
    /// CPU time the process has used so far, all threads, user and system (from /proc, in
    /// clock ticks of 10 ms).
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        cpu_ticks(&stat).map(|ticks| Duration::from_millis(ticks * 10))
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        self.child.rss_kib()
    }
}

/// Sibling binary in the same target folder as this one.
pub fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("exe folder").join(name)
}

/// Starts `cmd` and polls `health_path` until it answers 200; the time includes process start.
pub async fn start(mut cmd: Command, port: u16, health_path: &str) -> anyhow::Result<Proc> {
    let started = Instant::now();
    // `SWITCHBOARD_BENCH_LOG=<file>` keeps the product's log (at `SWITCHBOARD_BENCH_RUST_LOG`,
    // default `debug`) for finding where a figure's time goes.
    let stderr = match std::env::var_os("SWITCHBOARD_BENCH_LOG") {
        Some(path) => {
            let level = std::env::var("SWITCHBOARD_BENCH_RUST_LOG").unwrap_or("debug".into());
            cmd.env("RUST_LOG", level);
            Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        }
        None => Stdio::null(),
    };
    let child = cmd.stdout(Stdio::null()).stderr(stderr).spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}{health_path}");
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut proc = Proc {
        child: KillOnDrop(child),
        base,
        start_to_healthy: Duration::ZERO,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status() == 200
        {
            proc.start_to_healthy = started.elapsed();
            return Ok(proc);
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            anyhow::bail!("process exited with {status} before it was healthy");
        }
        anyhow::ensure!(Instant::now() < deadline, "not healthy after 30 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The product on its own fresh data folder with `env`.
pub fn switchboard(dir: &Path, port: u16, env: &[(String, String)]) -> Command {
    switchboard_at(&sibling("switchboard"), dir, port, env)
}

/// [`switchboard`] from another build of the product (an earlier commit's binary, say).
pub fn switchboard_at(binary: &Path, dir: &Path, port: u16, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .arg("serve");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// This harness re-run as a bare axum server answering 200 to everything: the baseline.
pub fn baseline(port: u16) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.arg("baseline-server").arg(port.to_string());
    cmd
}

/// Body of the `baseline-server` subcommand: the cheapest correct HTTP 200 axum can give.
pub async fn run_baseline_server(port: u16) -> anyhow::Result<()> {
    use axum::{Router, routing::any};
    let app = Router::new().fallback(any(|| async { axum::http::StatusCode::OK }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The product settings that aim a `switchboard` at these fakes: Graph URL and version, the
/// Meta app's secrets and phone number id, the Bitrix portal, OAuth server, client and line.
/// Callers add what differs per run (database, public URL, master key, verify token).
pub fn fakes_env(
    meta: &crate::meta::FakeMeta,
    bitrix: &crate::bitrix::FakeBitrix,
) -> Vec<(String, String)> {
    let (mc, bc) = (meta.config(), bitrix.config());
    [
        ("SWITCHBOARD_META_GRAPH_URL", meta.url()),
        ("SWITCHBOARD_META_GRAPH_VERSION", mc.graph_version.clone()),
        ("SWITCHBOARD_META_APP_SECRET", mc.app_secret.clone()),
        ("SWITCHBOARD_META_ACCESS_TOKEN", mc.access_token.clone()),
        (
            "SWITCHBOARD_META_PHONE_NUMBER_ID",
            mc.phone_number_id.clone(),
        ),
        ("SWITCHBOARD_BITRIX_PORTAL_URL", bitrix.portal_url()),
        ("SWITCHBOARD_BITRIX_OAUTH_URL", bitrix.oauth_url()),
        ("SWITCHBOARD_BITRIX_CLIENT_ID", bc.client_id.clone()),
        ("SWITCHBOARD_BITRIX_CLIENT_SECRET", bc.client_secret.clone()),
        ("SWITCHBOARD_BITRIX_LINE_ID", bc.line_id.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// utime + stime of a `/proc/PID/stat` line: its 14th and 15th fields, counted after the command
/// name, which is in parentheses and may itself hold spaces and parentheses.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_ticks_are_utime_plus_stime_whatever_the_command_name() {
        let line = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 129 0 0 20 0 7 0 9000 123456 789 18446744073709551615";
        assert_eq!(super::cpu_ticks(line), Some(731 + 129));
        assert_eq!(super::cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn cpu_time_of_this_process_is_read() {
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(super::cpu_ticks(&me).is_some(), "{me}");
    }
}
