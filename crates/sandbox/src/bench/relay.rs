//! Relay latency, end to end: fake Meta posts a signed webhook → the product persists, acks,
//! relays → fake Bitrix records `imconnector.send.messages`. Correlated by wamid; the clock is
//! this process's (both fakes run here).

use std::time::{Duration, Instant};

use sandbox::{
    bitrix::{BitrixConfig, FakeBitrix},
    meta::{Customer, InboundMessage},
};

use crate::{Row, ms, row};

const FIGURE: &str =
    "relay latency, Meta webhook in → Bitrix imconnector.send.messages out (p50 / p99)";

pub async fn rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let bitrix_cfg = BitrixConfig::default();
    let world = crate::burst::connected(bitrix_cfg.clone(), &[]).await?;
    let (meta, bitrix) = (&world.meta, &world.bitrix);

    // Warm-up message (first lead creation and OAuth use are one-off costs).
    let warm = meta
        .webhooks()
        .send_inbound(
            &Customer::new("4917600000000", "Warm Up"),
            InboundMessage::text("hi"),
        )
        .await?;
    wait_for(bitrix, &warm.wamid, Instant::now(), Duration::from_secs(20)).await?;

    // 100 messages from a returning customer, ~1.7 per second: under Bitrix's own REST limit
    // (2 requests/s per portal after a burst, which the product's client respects), so what is
    // measured is the product's latency, not the portal's rate limit. At 3 per second the
    // portal's budget ran out near the end and a few messages waited seconds for it.
    let mut sent = Vec::new();
    let customer = Customer::new("4917600000000", "Warm Up");
    for i in 0..100u32 {
        let t0 = Instant::now();
        let d = meta
            .webhooks()
            .send_inbound(
                &customer,
                InboundMessage::text(format!("bench message {i}")),
            )
            .await?;
        anyhow::ensure!(d.status == 200, "webhook answered {}", d.status);
        sent.push((d.wamid, t0));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let mut latencies = Vec::new();
    for (wamid, t0) in &sent {
        latencies.push(wait_for(bitrix, wamid, *t0, Duration::from_secs(30)).await?);
    }
    latencies.sort_unstable();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];

    // Baseline: the same Bitrix call made directly, without the product in between.
    let client = crate::load::client();
    let token = bitrix
        .current_tokens()
        .map(|g| g.access_token)
        .unwrap_or_default();
    let mut direct = Vec::new();
    for i in 0..50 {
        let t0 = Instant::now();
        let _ = client
            .post(format!("{}/rest/imconnector.status.json", bitrix.portal_url()))
            .json(&serde_json::json!({"CONNECTOR": "switchboard_whatsapp", "LINE": bitrix_cfg.line_id, "auth": token, "n": i}))
            .send()
            .await?
            .bytes()
            .await?;
        direct.push(t0.elapsed());
    }
    direct.sort_unstable();
    rows.push(row(
        FIGURE,
        "≤ 5 ms / ≤ 20 ms",
        format!(
            "{} / {} (max {}, n={})",
            ms(p(0.5)),
            ms(p(0.99)),
            ms(*latencies.last().unwrap()),
            latencies.len()
        ),
        format!(
            "one direct Bitrix REST call {}",
            ms(direct[direct.len() / 2])
        ),
        format!(
            "{:.1}× direct p50",
            p(0.5).as_secs_f64() / direct[direct.len() / 2].as_secs_f64().max(1e-9)
        ),
        Some(p(0.5) <= Duration::from_millis(5) && p(0.99) <= Duration::from_millis(20)),
    ));
    drop(world);
    Ok(())
}

/// Time from `t0` until the fake Bitrix recorded a send.messages carrying `wamid`.
async fn wait_for(
    bitrix: &FakeBitrix,
    wamid: &str,
    t0: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(r) = bitrix.recorder().all().into_iter().find(|r| {
            // Alone, or coalesced with other calls into a `batch` request.
            (r.path.contains("imconnector.send.messages") || r.path.contains("/batch"))
                && contains(&r.body, wamid.as_bytes())
        }) {
            return Ok(r.at.saturating_duration_since(t0));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "message {wamid} never reached Bitrix"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
