//! Command line: what each command does is in its `--help`; the work itself lives in core, the
//! bridges and, for `serve` and `worker`, the library's lifecycle.

use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard_core::{
    Config, Core, config::Source, credentials::CredentialError, inbox, telemetry,
};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Three WhatsApp bridges (PBX, wabridges hooks, Bitrix24) on one durable core.",
    long_about = "Three WhatsApp bridges on one durable core.\n\n\
        With no configuration, `switchboard serve` runs on an embedded SQLite database \
        (./data/switchboard.db) and listens on 127.0.0.1:8080. Settings come from the credential \
        store, then SWITCHBOARD_* environment variables, then config/switchboard.toml \
        (or --config / SWITCHBOARD_CONFIG), then built-in defaults."
)]
pub struct Cli {
    /// Config file (default: config/switchboard.toml when present; also SWITCHBOARD_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server, the job workers and the scheduler in one process.
    Serve {
        /// Serve HTTP only; run workers elsewhere with `switchboard worker` (scale-out).
        #[arg(long)]
        no_workers: bool,
    },
    /// Run job workers and the scheduler only (no bridge routes), for split deployments.
    Worker {
        /// Also answer /health and /metrics on this address (host:port), for probes and
        /// metrics scrapers.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Apply database migrations and exit (serve and worker also apply them on start).
    Migrate,
    /// Copy the SQLite database to a new file while the product runs: everything committed
    /// before the copy began is in it. Take one before every upgrade.
    Backup {
        /// The new file (it must not exist yet).
        path: PathBuf,
    },
    /// Exit 0 when the server at SWITCHBOARD_LISTEN answers `/health` with 200, 1 otherwise
    /// (with the reason): a health probe for images without a shell or curl.
    Health {
        /// Ask this URL instead (default: http://<SWITCHBOARD_LISTEN>/health).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Master key management for the encrypted credential store.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read and write settings in the encrypted credential store.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// The webhook audit log: replay stored payloads, prune old rows.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The job queue: list jobs and dead letters, retry dead letters.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Bitrix24 connector set-up: register the connector, activate it on an Open Channel.
    #[command(subcommand)]
    Bitrix(BitrixCommand),
    /// WhatsApp Cloud API checks.
    #[command(subcommand)]
    Whatsapp(WhatsappCommand),
}

#[derive(Subcommand)]
enum BitrixCommand {
    /// Register the WhatsApp connector in Contact Center and bind OnImConnectorMessageAdd to
    /// /bitrix/events.
    RegisterConnector {
        /// Unregister the connector first.
        #[arg(long)]
        fresh: bool,
    },
    /// Connect the registered connector to an Open Channel and verify STATUS/CONFIGURED.
    /// Required before sending: without it Bitrix answers NOT_ACTIVE_LINE.
    ActivateConnector {
        /// Open Channel (LINE) id; default bitrix.line_id.
        #[arg(long)]
        line: Option<String>,
    },
}

#[derive(Subcommand)]
enum WhatsappCommand {
    /// Probe the Meta phone-number node to confirm the access token works (catches error 190).
    CheckToken,
    /// Subscribe the Meta app to the WhatsApp Business Account (meta.waba_id); without it Meta
    /// posts no webhook.
    SubscribeWaba,
    /// Register {public URL}/webhook/whatsapp as the Meta app's webhook (field messages) with
    /// the verify token, generating one when none is set. Needs meta.app_id and meta.app_secret.
    RegisterWebhook,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes) for SWITCHBOARD_MASTER_KEY.
    Generate,
    /// Re-encrypt every stored secret under SWITCHBOARD_MASTER_KEY. Put the previous key in
    /// SWITCHBOARD_OLD_MASTER_KEYS first so the old values can still be read.
    Rotate,
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Store a setting encrypted, e.g. `switchboard credentials set meta.app_secret --stdin`.
    /// Keys are the config-file names (meta.access_token, bitrix.client_secret, …).
    Set {
        key: String,
        /// The value; omit it and pass --stdin to keep secrets out of shell history.
        value: Option<String>,
        /// Read the value from standard input.
        #[arg(long)]
        stdin: bool,
    },
    /// Show every setting, where its value comes from, with secrets masked.
    List,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Process stored payloads again (idempotent: effects already done are not repeated).
    Replay(ReplayArgs),
    /// Delete processed, duplicate and skipped audit rows older than a cut-off (PII
    /// retention). Failed and unfinished rows are kept. Runs daily at 03:00 UTC by itself.
    Prune {
        /// Age like 30d, 12h or 90m.
        #[arg(long, default_value = "30d")]
        older_than: String,
    },
}

#[derive(Args)]
struct ReplayArgs {
    /// One audit row id.
    #[arg(long, conflicts_with_all = ["source", "since"])]
    id: Option<i64>,
    /// Only this source (meta, bitrix, wabridges…).
    #[arg(long)]
    source: Option<String>,
    /// Received at or after: RFC 3339 time (2026-11-25T10:00:00Z) or an age (2h, 7d).
    #[arg(long)]
    since: Option<String>,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List recent jobs (or only dead letters) with attempts and last error.
    List {
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put dead letters back on the queue: `jobs retry all` or `jobs retry <ID>`.
    Retry { target: String },
}

pub async fn run(cli: Cli) -> ExitCode {
    let config = match Config::load(switchboard::catalogue(), cli.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format());
    match dispatch(cli.command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_usage_error(&e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the operator must change before trying again (a setting, a key, an argument), as
/// opposed to a failure that may pass by itself: exit code 2, like a configuration error.
fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<CredentialError>().is_some_and(|c| {
            c.is_unreadable()
                || matches!(
                    c,
                    CredentialError::NotStorable { .. } | CredentialError::Invalid { .. }
                )
        }) || c.is::<UsageError>()
    })
}

/// A command-line argument that names nothing there is, or is not in the form asked for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Keys(KeysCommand::Generate) => {
            println!("{}", switchboard_core::credentials::generate_master_key());
            Ok(())
        }
        Command::Serve { no_workers } => {
            let workers = if no_workers {
                switchboard::Workers::Elsewhere
            } else {
                switchboard::Workers::InProcess
            };
            serve(config, workers).await
        }
        Command::Worker { listen } => {
            let probe = match listen {
                Some(at) => Some(
                    tokio::net::TcpListener::bind(at)
                        .await
                        .with_context(|| format!("binding {at}"))?,
                ),
                None => None,
            };
            switchboard::work(config, probe, shutdown_signal()).await
        }
        Command::Migrate => {
            let core = start(config).await?;
            println!("migrations applied ({})", core.db.backend());
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate) => {
            let core = start(config).await?;
            let n = core
                .settings
                .rotate()
                .await
                .context("re-encrypting stored secrets")?;
            println!(
                "re-encrypted {n} stored value(s) under key id {}",
                core.settings.keyring().current_id().unwrap_or("?")
            );
            Ok(())
        }
        Command::Backup { path } => {
            let db = switchboard_core::db::Db::connect_existing(config.database_url())
                .await
                .context("opening the database")?;
            let bytes = db.backup_into(&path).await?;
            db.close().await;
            println!("backup written to {} ({bytes} bytes)", path.display());
            Ok(())
        }
        Command::Health { url } => health_probe(&config, url).await,
        Command::Credentials(c) => credentials(config, c).await,
        Command::Events(e) => events(config, e).await,
        Command::Jobs(j) => jobs_command(config, j).await,
        Command::Bitrix(b) => bitrix_command(config, b).await,
        Command::Whatsapp(w) => {
            let wiring = switchboard::Wiring::new(&start(config).await?);
            let relay = &wiring.bitrix;
            let report = match w {
                WhatsappCommand::CheckToken => {
                    bitrix_connector::commands::check_token(relay).await?
                }
                WhatsappCommand::SubscribeWaba => {
                    bitrix_connector::commands::subscribe_waba(relay).await?
                }
                WhatsappCommand::RegisterWebhook => {
                    bitrix_connector::commands::register_webhook(relay).await?
                }
            };
            println!("{report}");
            Ok(())
        }
    }
}

async fn bitrix_command(config: Config, command: BitrixCommand) -> anyhow::Result<()> {
    let wiring = switchboard::Wiring::new(&start(config).await?);
    let report = match command {
        BitrixCommand::RegisterConnector { fresh } => {
            bitrix_connector::commands::register_connector(&wiring.bitrix, fresh).await?
        }
        BitrixCommand::ActivateConnector { line } => {
            bitrix_connector::commands::activate_connector(&wiring.bitrix, line).await?
        }
    };
    println!("{report}");
    Ok(())
}

/// `health`: the server's own answer decides, so the probe says what `/health` says.
async fn health_probe(config: &Config, url: Option<String>) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| {
        let listen = config.listen();
        // A server bound to every interface is asked on the loopback one.
        let host = match listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("http://{host}:{}/health", listen.port())
    });
    let answer = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        body.chars().take(500).collect::<String>()
    );
    println!("{url}: {status}");
    Ok(())
}

async fn start(config: Config) -> anyhow::Result<Core> {
    Core::start(config).await.context("starting the core")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received; finishing in-flight requests and jobs");
}

/// `serve` on the configured address. Bound here, after parsing and before the core starts:
/// the library serves whatever listener it is given.
async fn serve(config: Config, workers: switchboard::Workers) -> anyhow::Result<()> {
    let listen = config.listen();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    switchboard::run(config, listener, workers, shutdown_signal()).await
}

async fn credentials(config: Config, command: CredentialsCommand) -> anyhow::Result<()> {
    let core = start(config).await?;
    match command {
        CredentialsCommand::Set { key, value, stdin } => {
            let value = match (value, stdin) {
                (Some(v), false) => v,
                (None, true) => {
                    let mut v = String::new();
                    std::io::stdin()
                        .read_to_string(&mut v)
                        .context("reading standard input")?;
                    v.trim_end_matches(['\n', '\r']).to_string()
                }
                _ => {
                    return Err(usage(
                        "give the value as an argument or with --stdin (not both)",
                    ));
                }
            };
            core.settings.set_by_key(&key, &value).await?;
            println!(
                "{key} {}",
                if value.is_empty() {
                    "cleared"
                } else {
                    "stored (encrypted)"
                }
            );
            Ok(())
        }
        CredentialsCommand::List => {
            println!("{:<32} {:<8} {:<38} value", "setting", "source", "env");
            for v in core.settings.list().await? {
                let source = if v.source == Source::Unset {
                    "-"
                } else {
                    v.source.as_str()
                };
                println!("{:<32} {:<8} {:<38} {}", v.key, source, v.env, v.shown);
            }
            Ok(())
        }
    }
}

async fn events(config: Config, command: EventsCommand) -> anyhow::Result<()> {
    let core = start(config).await?;
    match command {
        EventsCommand::Replay(args) => {
            let ids = match args.id {
                Some(id) => {
                    if core.inbox.get(id).await?.is_none() {
                        return Err(usage(format!(
                            "there is no stored event {id} (it may have been pruned)"
                        )));
                    }
                    vec![id]
                }
                None => {
                    if args.source.is_none() && args.since.is_none() {
                        return Err(usage(
                            "say what to replay: --id ID, or --source and/or --since",
                        ));
                    }
                    if let Some(source) = &args.source {
                        let known = switchboard::event_sources(&switchboard::Wiring::new(&core));
                        if !known.iter().any(|k| k == source) {
                            return Err(usage(format!(
                                "`{source}` is not an event source; the sources are: {}",
                                known.join(", ")
                            )));
                        }
                    }
                    let since = args.since.as_deref().map(parse_since).transpose()?;
                    core.inbox
                        .select_for_replay(args.source.as_deref(), since)
                        .await?
                }
            };
            let n = core.inbox.replay(&ids).await?;
            let dispatched = inbox::dispatch_pending(&core.inbox, &core.jobs).await?;
            println!("{n} event(s) queued for reprocessing ({dispatched} handed to workers)");
            Ok(())
        }
        EventsCommand::Prune { older_than } => {
            let age = parse_age(&older_than)?;
            let n = core.inbox.prune(age).await?;
            println!("pruned {n} audit row(s) older than {older_than}");
            Ok(())
        }
    }
}

async fn jobs_command(config: Config, command: JobsCommand) -> anyhow::Result<()> {
    let core = start(config).await?;
    match command {
        JobsCommand::List { dead, limit } => {
            let stats = core.jobs.stats().await?;
            println!(
                "queue: {} pending, {} running, {} dead",
                stats.pending, stats.running, stats.dead
            );
            let time = |ms: Option<i64>| {
                ms.and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".to_string())
            };
            println!(
                "{:<26}  {:<40} {:<11} {:<8} {:<19}  {:<19}  {:<19}  last error",
                "id", "kind", "state", "attempts", "created", "last attempt", "next attempt"
            );
            for j in core.jobs.list(dead, limit).await? {
                println!(
                    "{:<26}  {:<40} {:<11} {:<8} {:<19}  {:<19}  {:<19}  {}",
                    j.id,
                    j.kind,
                    j.state,
                    format!("{}/{}", j.attempts, j.max_attempts),
                    time(j.created_at),
                    time(j.last_attempt_at),
                    time(j.next_attempt_at),
                    j.last_error.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        JobsCommand::Retry { target } => {
            let id = (target != "all").then_some(target.as_str());
            let n = core.jobs.retry(id).await?;
            if n == 0
                && let Some(id) = id
            {
                return Err(usage(format!(
                    "there is no dead letter `{id}`: give the id of a dead letter (`switchboard jobs list --dead`) or `all`"
                )));
            }
            println!("{n} dead letter(s) put back on the queue");
            Ok(())
        }
    }
}

/// `30d`, `12h`, `90m`, `45s` → milliseconds.
fn parse_age(s: &str) -> anyhow::Result<i64> {
    let t = s.trim();
    let bad = || {
        usage(format!(
            "`{s}` is not an age: write a whole number and a unit, d, h, m or s (30d, 12h, 90m)"
        ))
    };
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms).ok_or_else(bad)
}

fn parse_since(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    parse_age(s)
        .map(|age| switchboard_core::db::now_ms() - age)
        .map_err(|_| {
            usage(format!(
                "`{s}` is neither a time like 2026-11-25T10:00:00Z nor an age like 2h or 7d"
            ))
        })
}
