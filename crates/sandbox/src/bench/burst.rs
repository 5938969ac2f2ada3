//! The reply burst after a broadcast: many new customers write at once, and everything must
//! reach the Open Channel, with one CRM lead each, through a portal that drains 2 REST
//! requests per second. Measured with the product's `batch` coalescing on, and beside it the
//! same burst with batching switched off (one request per call), against the fake portal
//! enforcing the cloud's limit.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use sandbox::{
    bitrix::{BitrixConfig, ChatMessage, FakeBitrix},
    meta::{Customer, FakeMeta, InboundMessage, MetaConfig},
};

use crate::{Row, process, row, start_product, tempdir};

const CUSTOMERS: usize = 200;
const PER_CUSTOMER: usize = 5;
const FIGURE: &str = "burst: 1,000 messages from 200 new customers → all in Bitrix with 200 leads";
/// The run with batching on must finish within this; the run without is cut off here and its
/// rate reported instead, since at one call per request it needs many minutes.
const LIMIT: Duration = Duration::from_secs(240);
const WITHOUT_BATCHING_LIMIT: Duration = Duration::from_secs(90);

/// The product serving Meta's webhook and installed into the fake portal, with `extra`
/// settings: ready to relay.
pub(crate) struct Connected {
    pub meta: FakeMeta,
    pub bitrix: FakeBitrix,
    _proc: process::Proc,
    _dir: tempdir::Dir,
}

pub(crate) async fn connected(
    bitrix_cfg: BitrixConfig,
    extra: &[(&str, &str)],
) -> anyhow::Result<Connected> {
    let meta = FakeMeta::start(MetaConfig::default()).await;
    let bitrix = FakeBitrix::start(bitrix_cfg).await;
    let master_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    let mut env = sandbox::harness::fakes_env(&meta, &bitrix);
    env.push(("SWITCHBOARD_MASTER_KEY".into(), master_key));
    env.push((
        "SWITCHBOARD_META_VERIFY_TOKEN".into(),
        "bench-verify".into(),
    ));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let (proc, dir) = start_product(None, &env).await?;
    env.push(("SWITCHBOARD_PUBLIC_URL".into(), proc.base.clone()));

    let install = bitrix
        .install_into(&format!("{}/bitrix/install", proc.base))
        .await;
    anyhow::ensure!(
        install.status.is_some_and(|s| (200..300).contains(&s)),
        "Bitrix install answered {:?}",
        install.status
    );
    for args in [
        ["bitrix", "register-connector"],
        ["bitrix", "activate-connector"],
    ] {
        let out = Command::new(process::sibling("switchboard"))
            .current_dir(&dir.0)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "`switchboard {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    meta.set_webhook_target(format!("{}/webhook/whatsapp", proc.base));
    Ok(Connected {
        meta,
        bitrix,
        _proc: proc,
        _dir: dir,
    })
}

/// How one burst went.
struct Outcome {
    /// Until every message and lead was in, or `None` when cut off.
    done_after: Option<Duration>,
    elapsed: Duration,
    messages: usize,
    leads: usize,
    batches: (u64, u64),
    limit_refusals: u64,
}

async fn burst(batch_size: &str, limit: Duration) -> anyhow::Result<Outcome> {
    let world = connected(
        BitrixConfig::default(),
        &[("SWITCHBOARD_BITRIX_BATCH_SIZE", batch_size)],
    )
    .await?;
    // The install and the connector commands are behind us: from here the portal enforces
    // the cloud's limit on a fresh bucket.
    world.bitrix.strict_rate_limit();
    let customers: Vec<Customer> = (0..CUSTOMERS)
        .map(|c| Customer::new(format!("4917700{c:05}"), format!("Kundin Welle{c}")))
        .collect();
    let began = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for customer in customers {
        let hooks = world.meta.webhooks();
        writers.spawn(async move {
            for i in 0..PER_CUSTOMER {
                let sent = hooks
                    .send_inbound(
                        &customer,
                        InboundMessage::text(format!("after the sale {i}")),
                    )
                    .await?;
                anyhow::ensure!(sent.status == 200, "webhook answered {}", sent.status);
            }
            anyhow::Ok(())
        });
    }
    while let Some(written) = writers.join_next().await {
        written??;
    }
    let count = |bitrix: &FakeBitrix| {
        bitrix
            .chats()
            .iter()
            .map(|c| {
                bitrix
                    .messages_in_chat(&c.external_chat_id)
                    .iter()
                    .filter(|m| matches!(m, ChatMessage::Customer(_)))
                    .count()
            })
            .sum::<usize>()
    };
    let total = CUSTOMERS * PER_CUSTOMER;
    let done_after = loop {
        let (messages, leads) = (count(&world.bitrix), world.bitrix.leads().len());
        if messages >= total && leads >= CUSTOMERS {
            break Some(began.elapsed());
        }
        if began.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Outcome {
        done_after,
        elapsed: began.elapsed(),
        messages: count(&world.bitrix),
        leads: world.bitrix.leads().len(),
        batches: world.bitrix.batches(),
        limit_refusals: world.bitrix.limit_refusals(),
    })
}

fn describe(o: &Outcome) -> String {
    let head = match o.done_after {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => format!(
            "cut off after {:.0} s with {} of {} messages and {} of {CUSTOMERS} leads",
            o.elapsed.as_secs_f64(),
            o.messages,
            CUSTOMERS * PER_CUSTOMER,
            o.leads
        ),
    };
    format!(
        "{head} ({} batch requests carrying {} calls; {} × QUERY_LIMIT_EXCEEDED)",
        o.batches.0, o.batches.1, o.limit_refusals
    )
}

/// Messages per second reaching the portal.
fn rate(o: &Outcome) -> f64 {
    o.messages as f64 / o.done_after.unwrap_or(o.elapsed).as_secs_f64().max(1e-9)
}

pub async fn rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("  with batching");
    let on = burst("50", LIMIT).await?;
    eprintln!("  without batching (cut off after {WITHOUT_BATCHING_LIMIT:?})");
    let off = burst("1", WITHOUT_BATCHING_LIMIT).await?;
    rows.push(row(
        FIGURE,
        "≤ 30 s, 0 × QUERY_LIMIT_EXCEEDED",
        describe(&on),
        format!("batching off: {}", describe(&off)),
        format!(
            "{:.1}× the messages per second of batching off",
            rate(&on) / rate(&off).max(1e-9)
        ),
        Some(on.done_after.is_some_and(|d| d <= Duration::from_secs(30)) && on.limit_refusals == 0),
    ));
    Ok(())
}
