//! What Meta does *to* the product: signed webhook POSTs (protocol §2.1), retries until a 200
//! (at-least-once), the verification GET (§1), and the status notifications that follow a send
//! (§2.4, §6), including the `failed` 131047 for a reply outside the 24-hour window.

use std::{fmt, sync::Arc, time::Duration};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    messages::{Customer, InboundMessage, Status},
    payload::WebhookPayload,
    state::{Shared, WebhookDelivery},
    validate::Send,
};

/// How a delivery is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signature {
    /// `sha256=` HMAC of the exact body with the App Secret.
    #[default]
    Valid,
    /// Signed with a different secret: what a forged or misconfigured sender produces.
    Wrong,
    /// No `X-Hub-Signature-256` header at all.
    Missing,
}

#[derive(Debug)]
pub enum DeliveryError {
    NoTarget,
    /// The app is not subscribed to the WABA (`POST /{waba-id}/subscribed_apps`): Meta posts
    /// nothing (§0).
    NotSubscribed,
    Transport(reqwest::Error),
    NotAcked {
        attempts: usize,
        last: String,
    },
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTarget => write!(f, "no webhook target set (FakeMeta::set_webhook_target)"),
            Self::NotSubscribed => write!(
                f,
                "the app is not subscribed to the WhatsApp Business Account, so Meta posts nothing"
            ),
            Self::Transport(e) => write!(f, "webhook POST failed: {e}"),
            Self::NotAcked { attempts, last } => {
                write!(
                    f,
                    "product did not answer 200 after {attempts} attempts (last: {last})"
                )
            }
        }
    }
}

impl std::error::Error for DeliveryError {}

#[derive(Debug)]
pub enum VerifyError {
    Transport(reqwest::Error),
    Status(u16),
    ContentType(String),
    Body { expected: String, got: String },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "verification GET failed: {e}"),
            Self::Status(s) => write!(f, "verification answered HTTP {s}, Meta requires 200"),
            Self::ContentType(c) => write!(
                f,
                "verification answered Content-Type {c:?}, not text/plain"
            ),
            Self::Body { expected, got } => {
                write!(
                    f,
                    "verification echoed {got:?}, Meta expects exactly {expected:?}"
                )
            }
        }
    }
}

impl std::error::Error for VerifyError {}

/// An inbound message delivered by `send_inbound`.
#[derive(Debug)]
pub struct Delivered {
    pub wamid: String,
    pub status: u16,
}

pub(super) fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Posts webhooks as Meta would. Cheap to clone; shares state with its `FakeMeta`.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    shared: Arc<Shared>,
}

impl WebhookSender {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// An empty payload carrying this fake's WABA id, phone number id and display number.
    pub fn payload(&self) -> WebhookPayload {
        let c = &self.shared.cfg;
        self.payload_to(&c.phone_number_id)
    }

    /// An empty payload for one of the account's numbers (a customer writing to that number);
    /// a number the account does not have gets the main number's display digits.
    pub fn payload_to(&self, phone_number_id: &str) -> WebhookPayload {
        let c = &self.shared.cfg;
        WebhookPayload::new(
            &c.waba_id,
            phone_number_id,
            c.display_number_of(phone_number_id)
                .unwrap_or(&c.display_phone_number),
            self.shared.clock.now(),
        )
    }

    /// `X-Hub-Signature-256` value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        format!(
            "sha256={}",
            hmac_sha256_hex(self.shared.cfg.app_secret.as_bytes(), body)
        )
    }

    pub async fn deliver(
        &self,
        payload: &WebhookPayload,
    ) -> Result<reqwest::Response, DeliveryError> {
        self.deliver_with(payload, Signature::Valid).await
    }

    pub async fn deliver_with(
        &self,
        payload: &WebhookPayload,
        signature: Signature,
    ) -> Result<reqwest::Response, DeliveryError> {
        self.remember_inbound(payload);
        self.post(&payload.to_bytes(), signature).await
    }

    /// Posts arbitrary bytes (say, a payload with a field Meta added last week) signed as asked.
    pub async fn deliver_bytes(
        &self,
        body: &[u8],
        signature: Signature,
    ) -> Result<reqwest::Response, DeliveryError> {
        self.post(body, signature).await
    }

    /// Re-sends the same bytes while the product answers anything but 200 or cannot be reached,
    /// waiting `backoff`, then twice that, and so on. Returns the number of attempts used.
    pub async fn deliver_until_acked(
        &self,
        payload: &WebhookPayload,
        max_attempts: usize,
        backoff: Duration,
    ) -> Result<usize, DeliveryError> {
        self.remember_inbound(payload);
        self.post_until_acked(&payload.to_bytes(), max_attempts, backoff)
            .await
    }

    /// One inbound message from `from`, delivered once and validly signed.
    pub async fn send_inbound(
        &self,
        from: &Customer,
        message: InboundMessage,
    ) -> Result<Delivered, DeliveryError> {
        let payload = self.payload().message(from, message);
        let resp = self.deliver(&payload).await?;
        Ok(Delivered {
            wamid: payload.wamids().remove(0),
            status: resp.status().as_u16(),
        })
    }

    /// The dashboard's verification GET (§1) against `callback_url` (the full webhook URL):
    /// the product must answer 200, `text/plain`, with `hub.challenge` verbatim.
    pub async fn verify_subscription(
        &self,
        callback_url: &str,
        verify_token: &str,
    ) -> Result<(), VerifyError> {
        let challenge = rand::random_range(1_000_000_000u32..=u32::MAX).to_string();
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("hub.mode", "subscribe")
            .append_pair("hub.challenge", &challenge)
            .append_pair("hub.verify_token", verify_token)
            .finish();
        let sep = if callback_url.contains('?') { '&' } else { '?' };
        let resp = self
            .shared
            .http
            .get(format!("{callback_url}{sep}{query}"))
            .send()
            .await
            .map_err(VerifyError::Transport)?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(VerifyError::Status(resp.status().as_u16()));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type.starts_with("text/plain") {
            return Err(VerifyError::ContentType(content_type));
        }
        let body = resp.text().await.map_err(VerifyError::Transport)?;
        if body != challenge {
            return Err(VerifyError::Body {
                expected: challenge,
                got: body,
            });
        }
        Ok(())
    }

    /// A delivered inbound message exists at Meta whether or not the product acks it: it opens
    /// the window (by its own timestamp, §6) and becomes markable as read.
    fn remember_inbound(&self, payload: &WebhookPayload) {
        let mut st = self.shared.state();
        let number = payload.phone_number_id().to_string();
        for r in payload.inbound() {
            st.inbound.insert(r.wamid.clone(), r.wa_id.clone());
            let last = st
                .last_inbound
                .entry((number.clone(), r.wa_id.clone()))
                .or_insert(0);
            *last = (*last).max(r.timestamp);
        }
    }

    async fn post(
        &self,
        body: &[u8],
        signature: Signature,
    ) -> Result<reqwest::Response, DeliveryError> {
        let target = {
            let st = self.shared.state();
            if !st.subscribed {
                return Err(DeliveryError::NotSubscribed);
            }
            st.webhook_target.clone().ok_or(DeliveryError::NoTarget)?
        };
        let mut req = self
            .shared
            .http
            .post(target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, "facebookexternalua")
            .body(body.to_vec());
        match signature {
            Signature::Valid => req = req.header("X-Hub-Signature-256", self.sign(body)),
            Signature::Wrong => {
                let forged = hmac_sha256_hex(b"not-the-app-secret", body);
                req = req.header("X-Hub-Signature-256", format!("sha256={forged}"));
            }
            Signature::Missing => {}
        }
        req.send().await.map_err(DeliveryError::Transport)
    }

    async fn post_until_acked(
        &self,
        body: &[u8],
        max_attempts: usize,
        backoff: Duration,
    ) -> Result<usize, DeliveryError> {
        let mut wait = backoff;
        let mut last = String::from("no attempt made");
        for attempt in 1..=max_attempts {
            match self.post(body, Signature::Valid).await {
                // Meta counts only a 200 as received (§2.1); 202/204 are retried too.
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(attempt),
                Ok(resp) => last = format!("HTTP {}", resp.status().as_u16()),
                Err(DeliveryError::Transport(e)) => last = e.to_string(),
                Err(e) => return Err(e),
            }
            if attempt < max_attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        Err(DeliveryError::NotAcked {
            attempts: max_attempts,
            last,
        })
    }
}

/// What happens to an accepted send once Meta tries to deliver it.
#[derive(Debug)]
pub(super) enum Fate {
    Deliver,
    Fail {
        code: u32,
        details: Option<String>,
    },
    /// Meta downloads `link` media itself; an unreachable or redirecting URL fails with 131053.
    FetchLink(String),
}

/// Attempts for the fake's own status webhooks: enough to ride out a product restart in a
/// test, short enough that a test ends.
const STATUS_ATTEMPTS: usize = 5;
const STATUS_BACKOFF: Duration = Duration::from_millis(200);

pub(super) async fn report_outcome(shared: Arc<Shared>, wamid: String, send: Send, fate: Fate) {
    let fate = match fate {
        Fate::FetchLink(url) => fetch_link(&shared, &url).await,
        other => other,
    };
    let (subscribed, auto_statuses, has_target) = {
        let st = shared.state();
        (st.subscribed, st.auto_statuses, st.webhook_target.is_some())
    };
    // Webhooks reach the product only while the app is subscribed to the WABA (§0).
    if !subscribed || !has_target {
        return;
    }
    let sender = WebhookSender::new(shared.clone());
    let category = send.template_category.as_deref().unwrap_or("service");
    let statuses = match fate {
        Fate::Fail { code, details } => {
            vec![Status::failed_with(
                &wamid,
                &send.wa_id,
                code,
                details.as_deref(),
            )]
        }
        Fate::Deliver if auto_statuses => vec![
            Status::sent(&wamid, &send.wa_id).with_pricing(category),
            Status::delivered(&wamid, &send.wa_id).with_pricing(category),
        ],
        Fate::Deliver | Fate::FetchLink(_) => Vec::new(),
    };
    // Meta notifies each status change in its own POST.
    for status in statuses {
        let payload = sender
            .payload_to(&send.from_phone_number_id)
            .statuses([status.with_callback_data(send.callback_data.clone())]);
        let body = payload.to_bytes();
        let outcome = sender
            .post_until_acked(&body, STATUS_ATTEMPTS, STATUS_BACKOFF)
            .await;
        let attempts = match &outcome {
            Ok(n) => *n,
            Err(DeliveryError::NotAcked { attempts, .. }) => *attempts,
            Err(_) => 0,
        };
        shared.state().webhook_log.push(WebhookDelivery {
            body: payload.to_json(),
            attempts,
            acked: outcome.is_ok(),
        });
    }
}

async fn fetch_link(shared: &Shared, url: &str) -> Fate {
    let failure = match shared.http.get(url).send().await {
        Ok(resp) if resp.status().is_success() => match resp.bytes().await {
            Ok(b) if !b.is_empty() => return Fate::Deliver,
            Ok(_) => "the URL returned an empty body".to_string(),
            Err(e) => format!("reading the body failed: {e}"),
        },
        Ok(resp) => format!("the URL answered HTTP {}", resp.status().as_u16()),
        Err(e) => format!("the URL could not be fetched: {e}"),
    };
    Fate::Fail {
        code: 131_053,
        details: Some(format!("Media download from {url} failed: {failure}.")),
    }
}
