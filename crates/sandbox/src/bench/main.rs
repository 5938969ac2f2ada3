//! `switchboard-bench`: measures every figure of SPEC §6 against the real release binary and
//! the sandbox fakes, each beside a baseline measured in the same run (the machine is noisy, so
//! ratios matter more than absolutes). Prints one markdown table and writes it to
//! `bench/results/latest.md`. Loopback only; every phase is bounded in time.

mod burst;
mod load;
mod relay;

use std::{
    fmt::Write as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use load::{MakeRequest, Stats, closed_loop, describe, open_loop, peak, sweep_turn_about};
use sandbox::harness::{
    self as process, Proc, baseline, free_port, start, switchboard, switchboard_at,
};

/// One row of the result table.
struct Row {
    figure: String,
    target: String,
    measured: String,
    baseline: String,
    ratio: String,
    verdict: String,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn row(
    figure: &str,
    target: &str,
    measured: String,
    baseline: String,
    ratio: String,
    ok: Option<bool>,
) -> Row {
    Row {
        figure: figure.into(),
        target: target.into(),
        measured,
        baseline,
        ratio,
        verdict: match ok {
            Some(true) => "met".into(),
            Some(false) => "MISSED".into(),
            None => "n/a".into(),
        },
    }
}

fn not_measured(figure: &str, target: &str, why: String) -> Row {
    row(
        figure,
        target,
        format!("not measured: {why}"),
        "-".into(),
        "-".into(),
        None,
    )
}

const WABRIDGES_TOKEN: &str = "bench-token";

/// `first_id` keeps the phases of one run apart: both count from 0, and a repeated id would
/// measure the duplicate path instead of new work. The baseline gets the very same requests, so
/// the ratio compares what the two servers do with one request, not two request sizes (it used
/// to get a 40-byte body against the product's 300 bytes).
fn wabridges_request(base: &str, first_id: u64) -> MakeRequest {
    let url = format!("{base}/wabridges/hooks/bench?token={WABRIDGES_TOKEN}");
    Arc::new(move |c: &reqwest::Client, i: u64| {
        // Unique message ids: every request is new work for the product, not a duplicate.
        let i = first_id + i;
        let body = format!(
            r#"{{"event":"message","message_id":"BENCH{i:012}","contact_id":"15550001234@s.whatsapp.net","phone":"15550001234","chat_id":"15550001234@s.whatsapp.net","name":"Alice","body":"Hello {i}","type":"text","media_type":"","is_group":false,"from_me":false,"timestamp":1777180605}}"#
        );
        c.post(&url)
            .header("content-type", "application/json")
            .body(body)
    })
}

async fn start_product(
    db_url: Option<&str>,
    extra: &[(String, String)],
) -> anyhow::Result<(Proc, tempdir::Dir)> {
    start_product_with(db_url, extra, true, None).await
}

/// The product, from `binary` when given (another build), else from this target folder.
async fn start_product_with(
    db_url: Option<&str>,
    extra: &[(String, String)],
    workers: bool,
    binary: Option<&Path>,
) -> anyhow::Result<(Proc, tempdir::Dir)> {
    let dir = tempdir::Dir::new()?;
    let port = free_port();
    let mut env: Vec<(String, String)> =
        vec![("SWITCHBOARD_WABRIDGES_TOKEN".into(), WABRIDGES_TOKEN.into())];
    if let Some(url) = db_url {
        env.push(("DATABASE_URL".into(), url.into()));
    }
    env.extend_from_slice(extra);
    let mut cmd = match binary {
        Some(binary) => switchboard_at(binary, &dir.0, port, &env),
        None => switchboard(&dir.0, port, &env),
    };
    if !workers {
        cmd.arg("--no-workers");
    }
    let proc = start(cmd, port, "/health").await?;
    Ok((proc, dir))
}

mod tempdir {
    /// A scratch folder removed on drop (the product's SQLite file lives here).
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> std::io::Result<Self> {
            let p =
                std::env::temp_dir().join(format!("sb-bench-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p)?;
            Ok(Self(p))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh PostgreSQL database for the PostgreSQL rows, when a server is reachable.
fn postgres_url() -> Option<String> {
    fresh_postgres_database("switchboard_bench")
}

fn fresh_postgres_database(name: &str) -> Option<String> {
    let admin = ["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"];
    let ok = |sql: &str| {
        std::process::Command::new("psql")
            .args(admin)
            .arg(sql)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    (ok(&format!("DROP DATABASE IF EXISTS {name}")) && ok(&format!("CREATE DATABASE {name}")))
        .then(|| format!("postgres://postgres@127.0.0.1:5432/{name}"))
}

/// The ack path alone (`serve --no-workers`: jobs wait in the queue for worker processes), as
/// SPEC §6 defines the figure; `workers: true` adds this process's own job processing on the
/// same two cores, for comparison.
async fn ack_rows(
    rows: &mut Vec<Row>,
    baseline: &Proc,
    base_open: &Stats,
    engine: &str,
    db: Option<String>,
    workers: bool,
) {
    let mode = if workers {
        "workers in-process"
    } else {
        "serve --no-workers"
    };
    let throughput_figure = format!(
        "webhook ack throughput, {engine}, {mode} (peak req/s over 32 / 64 / 128 conns, 3 × 1 s each, turn about with the baseline)"
    );
    let latency_figure =
        format!("webhook ack latency at 1,000 req/s, {engine}, {mode} (p50 / p99 / max)");
    let (proc, _dir) = match start_product_with(db.as_deref(), &[], workers, None).await {
        Ok(p) => p,
        Err(e) => {
            rows.push(not_measured(
                &throughput_figure,
                "≥ 50 % of bare axum",
                e.to_string(),
            ));
            return;
        }
    };
    let (base_sweep, levels) = sweep_turn_about(
        |_, _| wabridges_request(&baseline.base, 0),
        |conns, turn| wabridges_request(&proc.base, unique_ids(conns, turn)),
    )
    .await;
    let (Some((conns, stats)), Some((base_conns, base_stats))) = (peak(&levels), peak(&base_sweep))
    else {
        return;
    };
    if stats.ok == 0 {
        rows.push(not_measured(
            &throughput_figure,
            "≥ 50 % of bare axum",
            format!(
                "{} requests failed (wabridges route not answering 2xx)",
                stats.failed
            ),
        ));
        return;
    }
    let failed: usize = levels.iter().map(|(_, s)| s.failed).sum();
    let ratio = stats.rps() / base_stats.rps();
    rows.push(row(
        &throughput_figure,
        "≥ 50 % of bare axum",
        format!(
            "{:.0} req/s at {conns} conns, p99 {} ({}; {failed} failed)",
            stats.rps(),
            ms(stats.percentile(99.0)),
            describe(&levels),
        ),
        format!(
            "{:.0} req/s at {base_conns} conns ({})",
            base_stats.rps(),
            describe(&base_sweep)
        ),
        format!("{:.0} %", ratio * 100.0),
        Some(ratio >= 0.5 && failed == 0),
    ));
    // CPU per request is steadier than throughput on a shared machine: it does not depend on
    // how much of the machine the process got, only on what each request costs.
    let rate = CPU_PROBE_RATE;
    let cpu = cpu_per_request(&proc, wabridges_request(&proc.base, CPU_PROBE_IDS), rate).await;
    let base_cpu = cpu_per_request(baseline, wabridges_request(&baseline.base, 0), rate).await;
    if let (Some(cpu), Some(base_cpu)) = (cpu, base_cpu) {
        rows.push(row(
            &format!(
                "server CPU per ack at {rate} req/s, {engine}, {mode} (user + system, all threads)"
            ),
            "-",
            format!("{:.1} µs", cpu.as_secs_f64() * 1e6),
            format!("{:.1} µs (bare axum)", base_cpu.as_secs_f64() * 1e6),
            format!(
                "{:.1}×",
                cpu.as_secs_f64() / base_cpu.as_secs_f64().max(1e-9)
            ),
            None,
        ));
    }
    // Let the queue drain so the latency run measures acks, not a backlog's contention.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = open_loop(
        wabridges_request(&proc.base, 1_000_000_000),
        1000,
        Duration::from_secs(5),
    )
    .await;
    rows.push(row(
        &latency_figure,
        "p99 ≤ 5 ms",
        format!(
            "{} / {} / {} ({} failed)",
            ms(open.percentile(50.0)),
            ms(open.percentile(99.0)),
            ms(open.max()),
            open.failed
        ),
        format!(
            "{} / {}",
            ms(base_open.percentile(50.0)),
            ms(base_open.percentile(99.0))
        ),
        format!(
            "{:.1}× baseline p99",
            open.percentile(99.0).as_secs_f64()
                / base_open.percentile(99.0).as_secs_f64().max(1e-9)
        ),
        Some(open.percentile(99.0) <= Duration::from_millis(5) && open.failed == 0),
    ));
}

/// Each level and turn of a throughput sweep its own million message ids, above the latency
/// (10⁹) and CPU (2·10⁹) phases' ranges.
fn unique_ids(conns: usize, turn: u32) -> u64 {
    3_000_000_000 + conns as u64 * 10_000_000 + turn as u64 * 1_000_000
}

/// `switchboard-bench ab [--postgres] [--against BINARY] KEY=VALUE…`: two `serve --no-workers`
/// on SQLite (or each on a PostgreSQL database of its own: they get the same ids), measured turn
/// about on a noisy machine. The second runs with these settings; with `--against`, the first is
/// another build of the product (the previous commit's, say) and the second this one.
async fn compare_settings(mut settings: &[String]) -> anyhow::Result<()> {
    let postgres = settings.first().map(String::as_str) == Some("--postgres");
    settings = &settings[usize::from(postgres)..];
    let against = match settings.first().map(String::as_str) {
        Some("--against") => {
            let binary = settings
                .get(1)
                .map(std::path::PathBuf::from)
                .ok_or_else(|| anyhow::anyhow!("--against needs the other build's binary"))?;
            settings = &settings[2..];
            Some(binary)
        }
        _ => None,
    };
    let (label_a, label_b) = match against {
        Some(_) => ("other build", "this build"),
        None => ("default", "with settings"),
    };
    let database = |name| match postgres {
        true => fresh_postgres_database(name)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("no PostgreSQL reachable")),
        false => Ok(None),
    };
    let extra: Vec<(String, String)> = settings
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("expected KEY=VALUE, got {kv}"))
        })
        .collect::<Result<_, _>>()?;
    let (a, _a_dir) = start_product_with(
        database("switchboard_bench_a")?.as_deref(),
        &[],
        false,
        against.as_deref(),
    )
    .await?;
    let (b, _b_dir) = start_product_with(
        database("switchboard_bench_b")?.as_deref(),
        &extra,
        false,
        None,
    )
    .await?;
    let (sa, sb) = sweep_turn_about(
        |conns, turn| wabridges_request(&a.base, unique_ids(conns, turn)),
        |conns, turn| wabridges_request(&b.base, unique_ids(conns, turn)),
    )
    .await;
    for ((conns, one), (_, two)) in sa.iter().zip(&sb) {
        println!(
            "{conns} conns: {label_a} {:.0} req/s, {label_b} {:.0} req/s ({:.2}×)",
            one.rps(),
            two.rps(),
            two.rps() / one.rps().max(1e-9)
        );
    }
    let rate = CPU_PROBE_RATE;
    let ca = cpu_per_request(&a, wabridges_request(&a.base, CPU_PROBE_IDS), rate).await;
    let cb = cpu_per_request(&b, wabridges_request(&b.base, CPU_PROBE_IDS), rate).await;
    if let (Some(ca), Some(cb)) = (ca, cb) {
        println!(
            "server CPU per ack at {rate} req/s: {label_a} {:.1} µs, {label_b} {:.1} µs",
            ca.as_secs_f64() * 1e6,
            cb.as_secs_f64() * 1e6
        );
    }
    Ok(())
}

/// The load, and the first message id, of every CPU-per-ack measurement.
const CPU_PROBE_RATE: u64 = 6_000;
const CPU_PROBE_IDS: u64 = 2_000_000_000;

/// The server's CPU time per answered request under an open-loop load of `rate` requests per
/// second for 4 s.
async fn cpu_per_request(server: &Proc, make: MakeRequest, rate: u64) -> Option<Duration> {
    let before = server.cpu_time()?;
    let stats = open_loop(make, rate, Duration::from_secs(4)).await;
    let used = server.cpu_time()?.checked_sub(before)?;
    (stats.ok > 0).then(|| used / stats.ok as u32)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

async fn cold_start_and_memory(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut product = Vec::new();
    let mut base = Vec::new();
    let mut product_rss = 0;
    let mut base_rss = 0;
    for _ in 0..5 {
        let (p, _dir) = start_product(None, &[]).await?;
        product.push(p.start_to_healthy);
        let port = free_port();
        let b = start(baseline(port), port, "/health").await?;
        base.push(b.start_to_healthy);
        if product_rss == 0 {
            // Idle: no requests but the health probe, workers and scheduler running.
            tokio::time::sleep(Duration::from_secs(3)).await;
            product_rss = p.rss_kib().unwrap_or(0);
            base_rss = b.rss_kib().unwrap_or(0);
        }
    }
    let (p, b) = (median(product), median(base));
    rows.push(row(
        "cold start to /health 200, SQLite, migrations applied (median of 5)",
        "≤ 150 ms",
        ms(p),
        format!("{} (bare axum)", ms(b)),
        format!("{:.1}×", p.as_secs_f64() / b.as_secs_f64().max(1e-9)),
        Some(p <= Duration::from_millis(150)),
    ));
    rows.push(row(
        "idle resident memory",
        "≤ 30 MiB",
        format!("{:.1} MiB", product_rss as f64 / 1024.0),
        format!("{:.1} MiB (bare axum)", base_rss as f64 / 1024.0),
        format!("{:.1}×", product_rss as f64 / (base_rss.max(1)) as f64),
        Some(product_rss > 0 && product_rss <= 30 * 1024),
    ));
    Ok(())
}

async fn pbx_rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let figure = "PBX bridge added latency over direct, cached token (p50 / p99)";
    let pbx = crate::pbx_fake().await;
    let (proc, _dir) =
        start_product(None, &[("SWITCHBOARD_PBX_BASE_URL".into(), pbx.url())]).await?;
    let client = load::client();
    let login: serde_json::Value = client
        .post(format!("{}/api/v1/auth/login", pbx.url()))
        .json(&serde_json::json!({"api_key": "bench_org", "api_secret": "bench_secret"}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["token"].as_str().unwrap_or_default().to_string();
    let direct_url = format!("{}/api/v1/users", pbx.url());
    let direct: MakeRequest =
        Arc::new(move |c: &reqwest::Client, _| c.get(&direct_url).bearer_auth(&token));
    let bridge_url = format!("{}/whatsapp-bridge", proc.base);
    let via: MakeRequest = Arc::new(move |c: &reqwest::Client, _| {
        c.post(&bridge_url).json(&serde_json::json!({
            "api_key": "bench_org", "api_secret": "bench_secret", "endpoint": "/api/v1/users", "method": "GET"
        }))
    });
    // Warm both paths (the bridge's first call logs in).
    let _ = closed_loop(via.clone(), 1, Duration::from_millis(300)).await;
    let d = closed_loop(direct, 1, Duration::from_secs(3)).await;
    let v = closed_loop(via.clone(), 1, Duration::from_secs(3)).await;
    if v.ok == 0 {
        rows.push(not_measured(
            figure,
            "≤ 1 ms p50",
            format!("{} bridge calls failed", v.failed),
        ));
        return Ok(());
    }
    let added50 = v.percentile(50.0).saturating_sub(d.percentile(50.0));
    let added99 = v.percentile(99.0).saturating_sub(d.percentile(99.0));
    rows.push(row(
        figure,
        "≤ 1 ms p50",
        format!(
            "+{} / +{} (bridge {} / {})",
            ms(added50),
            ms(added99),
            ms(v.percentile(50.0)),
            ms(v.percentile(99.0))
        ),
        format!(
            "direct {} / {}",
            ms(d.percentile(50.0)),
            ms(d.percentile(99.0))
        ),
        format!(
            "{:.2}× direct p50",
            v.percentile(50.0).as_secs_f64() / d.percentile(50.0).as_secs_f64().max(1e-9)
        ),
        Some(added50 <= Duration::from_millis(1)),
    ));
    let vt = closed_loop(via, 16, Duration::from_secs(3)).await;
    let token2 = login["token"].as_str().unwrap_or_default().to_string();
    let direct_url2 = format!("{}/api/v1/users", pbx.url());
    let dt = closed_loop(
        Arc::new(move |c: &reqwest::Client, _| c.get(&direct_url2).bearer_auth(&token2)),
        16,
        Duration::from_secs(3),
    )
    .await;
    rows.push(row(
        "PBX bridge throughput, 16 conns (req/s)",
        "-",
        format!("{:.0} req/s", vt.rps()),
        format!("{:.0} req/s direct", dt.rps()),
        format!("{:.0} %", vt.rps() / dt.rps().max(1e-9) * 100.0),
        None,
    ));
    Ok(())
}

async fn pbx_fake() -> sandbox::pbx::FakePbx {
    let pbx = sandbox::pbx::FakePbx::start().await;
    pbx.add_org("bench_org", "bench_secret", "Bench Org");
    pbx
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("baseline-server") {
        let port = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        return process::run_baseline_server(port).await;
    }
    let began = Instant::now();
    let mut rows = Vec::new();
    // `switchboard-bench relay`: the relay row only, for quick iterations.
    // `switchboard-bench burst`: the burst row only.
    if args.get(1).map(String::as_str) == Some("burst") {
        burst::rows(&mut rows).await?;
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.figure, r.measured, r.baseline, r.ratio, r.verdict
            );
        }
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("relay") {
        relay::rows(&mut rows).await?;
        for r in &rows {
            println!(
                "| {} | {} | {} | {} |",
                r.figure, r.measured, r.baseline, r.verdict
            );
        }
        return Ok(());
    }

    if args.get(1).map(String::as_str) == Some("ab") {
        return compare_settings(&args[2..]).await;
    }
    eprintln!("baseline: bare axum 200-responder");
    let port = free_port();
    let base_proc = start(baseline(port), port, "/health").await?;
    // Stays up for the whole run: each throughput row measures it again, turn about with the
    // product.
    let base_open = open_loop(
        wabridges_request(&base_proc.base, 0),
        1000,
        Duration::from_secs(5),
    )
    .await;

    // `switchboard-bench ack [postgres]`: the ack rows only (no workers), for quick iterations.
    let ack_only = args.get(1).map(String::as_str) == Some("ack");
    let postgres_only = ack_only && args.get(2).map(String::as_str) == Some("postgres");
    if !postgres_only {
        eprintln!("webhook acks on SQLite");
        ack_rows(&mut rows, &base_proc, &base_open, "SQLite", None, false).await;
        if !ack_only {
            ack_rows(&mut rows, &base_proc, &base_open, "SQLite", None, true).await;
        }
    }
    if postgres_only || !ack_only {
        eprintln!("webhook acks on PostgreSQL");
        match postgres_url() {
            Some(url) => {
                ack_rows(
                    &mut rows,
                    &base_proc,
                    &base_open,
                    "PostgreSQL",
                    Some(url),
                    false,
                )
                .await
            }
            None => rows.push(not_measured(
                "webhook ack throughput, PostgreSQL",
                "≥ 50 % of bare axum",
                "PostgreSQL not reachable on 127.0.0.1:5432".into(),
            )),
        }
    }
    if ack_only {
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.figure, r.measured, r.baseline, r.ratio, r.verdict
            );
        }
        return Ok(());
    }
    eprintln!("relay latency Meta → Bitrix");
    if let Err(e) = relay::rows(&mut rows).await {
        rows.push(not_measured(
            "relay latency, Meta webhook in → Bitrix imconnector.send.messages out (p50 / p99)",
            "≤ 20 ms / ≤ 100 ms",
            e.to_string(),
        ));
    }
    eprintln!("reply burst into a rate-limited portal");
    if let Err(e) = burst::rows(&mut rows).await {
        rows.push(not_measured(
            "burst: 1,000 messages from 200 new customers → all in Bitrix with 200 leads",
            "≤ 30 s, 0 × QUERY_LIMIT_EXCEEDED",
            e.to_string(),
        ));
    }
    eprintln!("PBX bridge");
    if let Err(e) = pbx_rows(&mut rows).await {
        rows.push(not_measured(
            "PBX bridge added latency over direct, cached token (p50 / p99)",
            "≤ 1 ms p50",
            e.to_string(),
        ));
    }
    eprintln!("cold start and idle memory");
    if let Err(e) = cold_start_and_memory(&mut rows).await {
        rows.push(not_measured(
            "cold start to /health 200",
            "≤ 150 ms",
            e.to_string(),
        ));
    }

    let mut out = String::new();
    let _ = writeln!(out, "# Switchboard benchmark\n");
    let _ = writeln!(
        out,
        "Run {} on {} cores, loopback, release build; load generator in the same machine. Total {:.0} s.\n",
        chrono_like_now(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        began.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| figure | target | measured | baseline (same run) | ratio | verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.figure, r.target, r.measured, r.baseline, r.ratio, r.verdict
        );
    }
    println!("{out}");
    std::fs::create_dir_all("bench/results")?;
    std::fs::write("bench/results/latest.md", &out)?;
    eprintln!("written to bench/results/latest.md");
    Ok(())
}

fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("at unix time {secs}")
}
