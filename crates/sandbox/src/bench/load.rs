//! Load generation: closed loop (as fast as the server answers, for throughput) and open loop
//! (a fixed request rate, for latency without coordinated omission). Loopback only, bounded in
//! count and time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Builds request number `i` (unique bodies defeat the product's dedupe).
pub type MakeRequest = Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Stats {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)]
    }

    /// Adds another measurement of the same thing (throughput over the summed time).
    pub fn absorb(&mut self, other: Stats) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    pub fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("bench client")
}

/// `concurrency` loops each sending the next request as soon as the previous answered, for
/// `duration`.
pub async fn closed_loop(make: MakeRequest, concurrency: usize, duration: Duration) -> Stats {
    let client = client();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, make, next, failed) =
            (client.clone(), make.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match make(&client, i).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap_or_default());
    }
    Stats {
        ok: latencies.len(),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        latencies,
    }
}

/// Sends `rate` requests per second for `duration`, each on its own schedule slot and its own
/// task, so a stalled server shows up as latency, never as fewer sends.
pub async fn open_loop(make: MakeRequest, rate: u64, duration: Duration) -> Stats {
    let client = client();
    let total = rate * duration.as_secs();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let planned = start + interval * i as u32;
        tokio::time::sleep_until(planned.into()).await;
        let (client, make) = (client.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            // Timed from the send, not from the planned slot: tokio's timer fires up to a
            // millisecond after the slot, which put up to 1 ms of the generator's own lateness
            // into every figure (a bare 200 measured 1.4 ms at p50). Sends never wait for
            // answers, so a slow server still cannot hold the schedule back.
            let sent = Instant::now();
            match make(&client, i).send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    Some(sent.elapsed())
                }
                _ => None,
            }
        }));
    }
    let mut stats = Stats::default();
    for t in tasks {
        match t.await.ok().flatten() {
            Some(l) => stats.latencies.push(l),
            None => stats.failed += 1,
        }
    }
    stats.ok = stats.latencies.len();
    stats.elapsed = start.elapsed();
    stats
}

/// Connection counts of a throughput sweep. A group-commit server saturates only once enough
/// requests are in flight to fill its batches (it answers a batch per fsync), while a bare
/// responder is CPU-bound from the start; a single level would measure one server at its peak
/// and the other below it.
pub const SWEEP: [usize; 3] = [32, 64, 128];

/// How often each level alternates between the two servers, and for how long each turn lasts.
const ROUNDS: u32 = 3;
const TURN: Duration = Duration::from_secs(1);

/// Closed-loop throughput of two servers at every level of [`SWEEP`], in alternating one-second
/// turns. This machine's speed drifts by a third within a minute (other tenants); measured one
/// after the other, the ratio moved more with the drift than with the build, and turns that
/// alternate see the same drift. `first(level, turn)` and `second(level, turn)` build that
/// turn's requests: a closed loop numbers its requests from 0, so bodies that must be unique
/// need a range of their own per level and turn.
pub async fn sweep_turn_about(
    first: impl Fn(usize, u32) -> MakeRequest,
    second: impl Fn(usize, u32) -> MakeRequest,
) -> (Vec<(usize, Stats)>, Vec<(usize, Stats)>) {
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for conns in SWEEP {
        let (mut a, mut b) = (Stats::default(), Stats::default());
        for turn in 0..ROUNDS {
            a.absorb(closed_loop(first(conns, turn), conns, TURN).await);
            b.absorb(closed_loop(second(conns, turn), conns, TURN).await);
        }
        one.push((conns, a));
        two.push((conns, b));
    }
    (one, two)
}

/// The level with the highest throughput.
pub fn peak(levels: &[(usize, Stats)]) -> Option<&(usize, Stats)> {
    levels.iter().max_by(|a, b| a.1.rps().total_cmp(&b.1.rps()))
}

/// `32: 1234, 64: 2345, 128: 3456 req/s`.
pub fn describe(levels: &[(usize, Stats)]) -> String {
    let parts: Vec<String> = levels
        .iter()
        .map(|(c, s)| format!("{c}: {:.0}", s.rps()))
        .collect();
    format!("{} req/s", parts.join(", "))
}
