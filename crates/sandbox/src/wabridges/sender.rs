//! Posts deliveries the way wabridges does (seed, "Delivery behavior"): `POST` with
//! `Content-Type: application/json`, any body in the answer ignored, 10 seconds to answer, and no
//! retry — a delivery that fails or times out is dropped and only reported.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use reqwest::{StatusCode, Url, header::CONTENT_TYPE};
use serde_json::Value;
use tokio::{sync::Semaphore, task::JoinSet};

use super::Traffic;

/// The seed: "If your handler takes longer than 10 seconds the delivery is considered failed
/// and the event is dropped."
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    url: Url,
}

/// What a `run` observed. Every delivery is in exactly one of `acked_200`,
/// `non_200_by_status` and `errors`.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    pub sent: usize,
    pub acked_200: usize,
    pub non_200_by_status: BTreeMap<u16, usize>,
    /// Connection failures and timeouts: deliveries wabridges would have dropped silently.
    pub errors: usize,
    /// The part of `errors` that hit the delivery timeout.
    pub timed_out: usize,
    /// `seq` of every delivery not answered 200, ascending: events a receiver may never see.
    pub dropped: Vec<u64>,
    /// Time to an answer for deliveries that got one, ascending.
    pub latencies: Vec<Duration>,
}

impl SendReport {
    /// Latency at `p` in 0.0..=1.0 (nearest rank), `None` if nothing was answered.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let last = self.latencies.len().checked_sub(1)?;
        let rank = (p.clamp(0.0, 1.0) * last as f64).round() as usize;
        self.latencies.get(rank).copied()
    }
}

impl Sender {
    /// A sender for a bridge's `webhook_url`, token included.
    ///
    /// # Panics
    /// If the URL does not parse or names a host other than loopback: generated traffic must
    /// never reach a real service.
    pub fn new(url_with_token: &str) -> Sender {
        let url = Url::parse(url_with_token).expect("webhook URL parses");
        let host = url.host_str().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        assert!(
            loopback,
            "the wabridges sender posts to loopback only, not {url}"
        );
        Sender {
            client: client(DELIVERY_TIMEOUT),
            url,
        }
    }

    /// Shortens the delivery timeout, so a test of the drop rule needn't wait 10 s.
    pub fn with_timeout(self, timeout: Duration) -> Sender {
        Sender {
            client: client(timeout),
            ..self
        }
    }

    pub async fn send(&self, event: &Value) -> Result<StatusCode, reqwest::Error> {
        self.send_raw(serde_json::to_vec(event).expect("JSON values serialise"))
            .await
    }

    /// Posts `body` as is, for malformed or hand-crafted payloads.
    pub async fn send_raw(&self, body: impl Into<Bytes>) -> Result<StatusCode, reqwest::Error> {
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.into())
            .send()
            .await?;
        let status = response.status();
        // Read to the end (and ignore, as wabridges does) so the connection returns to the pool.
        response.bytes().await?;
        Ok(status)
    }

    /// Sends the next `count` deliveries of `traffic`, at most `rate_per_sec` a second (0: as
    /// fast as `concurrency` allows) with at most `concurrency` in flight. Finishes within
    /// roughly `count / rate_per_sec` plus one delivery timeout.
    pub async fn run(
        &self,
        traffic: &mut Traffic,
        count: usize,
        rate_per_sec: u32,
        concurrency: usize,
    ) -> SendReport {
        let mut report = SendReport::default();
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut ticker = (rate_per_sec > 0)
            .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate_per_sec))));
        let mut in_flight = JoinSet::new();

        for delivery in traffic.by_ref().take(count) {
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let sender = self.clone();
            in_flight.spawn(async move {
                let started = Instant::now();
                let outcome = sender.send_raw(delivery.body).await;
                drop(slot);
                (delivery.seq, outcome, started.elapsed())
            });
            report.sent += 1;
            while let Some(done) = in_flight.try_join_next() {
                report.tally(done.expect("delivery task does not panic"));
            }
        }
        while let Some(done) = in_flight.join_next().await {
            report.tally(done.expect("delivery task does not panic"));
        }
        report.latencies.sort_unstable();
        report.dropped.sort_unstable();
        report
    }
}

impl SendReport {
    fn tally(
        &mut self,
        (seq, outcome, latency): (u64, Result<StatusCode, reqwest::Error>, Duration),
    ) {
        match outcome {
            Ok(status) => {
                self.latencies.push(latency);
                if status == StatusCode::OK {
                    self.acked_200 += 1;
                } else {
                    *self.non_200_by_status.entry(status.as_u16()).or_default() += 1;
                    self.dropped.push(seq);
                }
            }
            Err(error) => {
                self.errors += 1;
                self.timed_out += usize::from(error.is_timeout());
                self.dropped.push(seq);
            }
        }
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        // A proxy from the environment must not see, or break, loopback test traffic.
        .no_proxy()
        .build()
        .expect("reqwest client builds")
}
