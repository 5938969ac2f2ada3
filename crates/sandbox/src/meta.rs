//! Fake Meta WhatsApp Cloud API, following `shared/protocols/meta-whatsapp-cloud-api.md`.
//!
//! Serves the Graph routes the product calls (send, mark read, media upload/node/download/delete,
//! phone-number node, `subscribed_apps`, the app's webhook `subscriptions` with their
//! verification handshake, the paginated `message_templates`) with Meta's validation
//! (templates: status, language, each component's variables), error shapes and HTTP statuses,
//! and plays Meta's side towards the product: signed webhooks with Meta's byte encoding, retries
//! until a 200, the verification handshake, and status notifications after each send — `sent`
//! and `delivered` inside the 24-hour window, `failed` 131047 outside it, as Meta answers 200
//! first and reports the failure later.
//!
//! Read `graph.rs` (routes), `validate.rs` (what a send must look like), then `sender.rs`.

mod errors;
mod graph;
mod media;
mod messages;
mod payload;
mod sender;
mod state;
mod subscriptions;
mod validate;

pub use errors::GraphError;
pub use messages::{Customer, InboundMedia, InboundMessage, Status};
pub use payload::{WebhookPayload, meta_json_bytes};
pub use sender::{Delivered, DeliveryError, Signature, VerifyError, WebhookSender};
pub use state::{MediaOrigin, SentMessage, StoredMedia, WebhookDelivery};
pub use subscriptions::AppSubscription;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::{Recorder, Served};
use state::Shared;

/// The account the fake pretends to be. Defaults reuse the protocol doc's example ids.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub access_token: String,
    /// Key of the webhook HMAC (§2.1).
    pub app_secret: String,
    pub app_id: String,
    pub app_name: String,
    pub phone_number_id: String,
    pub waba_id: String,
    /// Bare digits, as in webhook `metadata` and in `context.from`.
    pub display_phone_number: String,
    /// Formatted, as the phone-number node reports it (§7).
    pub formatted_phone_number: String,
    pub verified_name: String,
    /// The version products are expected to pin; `FakeMeta::graph_url` appends it. Any
    /// `vNN.N` is served.
    pub graph_version: String,
    /// Lifetime of a lookaside URL from the media node (Meta: 5 minutes).
    pub media_url_ttl: Duration,
    /// Post `sent` and `delivered` after each in-window send. Failures are posted regardless.
    pub auto_statuses: bool,
    /// Whether the app starts subscribed to the WABA; unsubscribed, no status webhooks flow.
    pub subscribed: bool,
    /// The account's templates, listed by `message_templates`; a send of any other
    /// name/language is refused with 132001.
    pub templates: Vec<Template>,
    /// Further business numbers of the same WABA and app (a team with sales and support
    /// numbers): each takes sends at its own `/{phone_number_id}/messages` and keeps its own
    /// 24-hour windows, as Meta does.
    pub extra_numbers: Vec<BusinessNumber>,
}

/// A business phone number besides the main one.
#[derive(Debug, Clone)]
pub struct BusinessNumber {
    pub phone_number_id: String,
    /// Bare digits, as in webhook `metadata`.
    pub display_phone_number: String,
    pub verified_name: String,
}

impl BusinessNumber {
    pub fn new(phone_number_id: &str, display_phone_number: &str) -> Self {
        Self {
            phone_number_id: phone_number_id.into(),
            display_phone_number: display_phone_number.into(),
            verified_name: "Zuse GmbH".into(),
        }
    }
}

impl MetaConfig {
    /// Whether `phone_number_id` is one of this account's numbers.
    pub fn owns_number(&self, phone_number_id: &str) -> bool {
        self.phone_number_id == phone_number_id
            || self
                .extra_numbers
                .iter()
                .any(|n| n.phone_number_id == phone_number_id)
    }

    /// The bare display digits of one of this account's numbers.
    pub fn display_number_of(&self, phone_number_id: &str) -> Option<&str> {
        if self.phone_number_id == phone_number_id {
            return Some(&self.display_phone_number);
        }
        self.extra_numbers
            .iter()
            .find(|n| n.phone_number_id == phone_number_id)
            .map(|n| n.display_phone_number.as_str())
    }
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            access_token: "EAAsandboxTOKENforSwitchboardTests0000".into(),
            app_secret: "sandbox-app-secret-0123456789abcdef".into(),
            app_id: "1234567890123456".into(),
            app_name: "Switchboard Sandbox".into(),
            phone_number_id: "112233445566778".into(),
            waba_id: "104829365520117".into(),
            display_phone_number: "4930123456789".into(),
            formatted_phone_number: "+49 30 123456789".into(),
            verified_name: "Zuse GmbH".into(),
            graph_version: "v23.0".into(),
            media_url_ttl: Duration::from_secs(5 * 60),
            auto_statuses: true,
            subscribed: true,
            // Every new WhatsApp Business Account comes with Meta's `hello_world` template.
            templates: vec![Template::new("hello_world", "en_US", 0)],
            extra_numbers: Vec::new(),
        }
    }
}

/// A message template of the WhatsApp Business Account, as `message_templates` lists it.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub language: String,
    /// `utility`, `marketing` or `authentication`; shows up as `pricing.category`. Listed
    /// upper-case, as Graph does.
    pub category: String,
    /// `APPROVED`, `PAUSED`, `DISABLED`, `PENDING`, `REJECTED`: only an approved one is sent
    /// (132015 paused, 132016 disabled, 132001 otherwise).
    pub status: String,
    /// Graph's `components`: `HEADER` (`format` TEXT/IMAGE/VIDEO/DOCUMENT), `BODY`, `FOOTER`,
    /// `BUTTONS`, with `{{1}}` variables. A send must fill each variable (132000).
    pub components: Vec<Value>,
}

impl Template {
    /// An approved utility template whose body has `body_params` variables.
    pub fn new(name: &str, language: &str, body_params: usize) -> Self {
        let vars: Vec<String> = (1..=body_params).map(|i| format!("{{{{{i}}}}}")).collect();
        let text = if vars.is_empty() {
            "Hello from Zuse GmbH.".to_string()
        } else {
            format!("Hello {}.", vars.join(", "))
        };
        Self::with_components(name, language, vec![json!({"type": "BODY", "text": text})])
    }

    /// An approved utility template made of `components` as Graph lists them.
    pub fn with_components(name: &str, language: &str, components: Vec<Value>) -> Self {
        Self {
            name: name.into(),
            language: language.into(),
            category: "utility".into(),
            status: "APPROVED".into(),
            components,
        }
    }

    /// Graph's listing of the template.
    pub fn listed(&self, id: usize) -> Value {
        json!({
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "category": self.category.to_ascii_uppercase(),
            "parameter_format": "POSITIONAL",
            "components": self.components,
            "id": format!("{}", 900_000_000_000_000u64 + id as u64),
        })
    }
}

/// A running fake Meta. Dropping it stops the server.
pub struct FakeMeta {
    shared: Arc<Shared>,
    recorder: Recorder,
    served: Served,
}

impl FakeMeta {
    pub async fn start(cfg: MetaConfig) -> Self {
        let shared = Shared::new(cfg);
        let recorder = Recorder::default();
        let served = crate::serve(graph::router(shared.clone(), recorder.clone())).await;
        shared
            .base_url
            .set(served.url())
            .expect("base URL is set once, at start");
        Self {
            shared,
            recorder,
            served,
        }
    }

    /// Graph base URL, standing in for `https://graph.facebook.com`; the product appends
    /// `/{version}/…`.
    pub fn url(&self) -> String {
        self.served.url()
    }

    /// `url()` plus the configured version.
    pub fn graph_url(&self) -> String {
        format!("{}/{}", self.url(), self.shared.cfg.graph_version)
    }

    pub fn config(&self) -> &MetaConfig {
        &self.shared.cfg
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub fn webhooks(&self) -> WebhookSender {
        WebhookSender::new(self.shared.clone())
    }

    /// Accepted sends, oldest first (mark-read calls are not sends).
    pub fn sent_messages(&self) -> Vec<SentMessage> {
        self.shared.state().sent.clone()
    }

    /// wamids the product marked as read, in call order.
    pub fn marked_read(&self) -> Vec<String> {
        self.shared.state().marked_read.clone()
    }

    /// Media the product uploaded and has not deleted.
    pub fn uploaded_media(&self) -> Vec<StoredMedia> {
        let st = self.shared.state();
        st.media
            .iter()
            .filter(|m| m.origin == MediaOrigin::Uploaded)
            .cloned()
            .collect()
    }

    /// Registers media a customer "sent", downloadable like any Meta media; put the returned
    /// reference in an `InboundMessage`.
    pub fn add_inbound_media(&self, bytes: impl Into<Bytes>, mime: &str) -> InboundMedia {
        let m = media::store(&self.shared, bytes.into(), mime, None, MediaOrigin::Inbound);
        InboundMedia {
            id: m.id,
            mime_type: m.mime_type,
            sha256: m.sha256,
        }
    }

    /// The next `count` sends (not mark-read calls) fail synchronously with `code`'s documented
    /// body and HTTP status.
    pub fn fail_next_sends(&self, code: u32, count: usize) {
        self.shared
            .state()
            .sync_failures
            .extend(std::iter::repeat_n(code, count));
    }

    /// The `nth` send attempt from now (1 = the next) fails synchronously with `code`; the
    /// ones before it are served as usual. Targets one part of a multi-part reply.
    pub fn fail_send_attempt(&self, nth: usize, code: u32) {
        let mut st = self.shared.state();
        let at = st.send_attempts + nth;
        st.failures_at_attempt.insert(at, code);
    }

    /// The next `count` in-window sends are accepted with 200, then reported `failed` with
    /// `code` by webhook (how 131026 and friends usually arrive).
    pub fn fail_next_deliveries(&self, code: u32, count: usize) {
        self.shared
            .state()
            .async_failures
            .extend(std::iter::repeat_n(code, count));
    }

    /// Moves a template to `status` (`PAUSED`, `DISABLED`, `APPROVED`…), as Meta does when its
    /// quality drops; sends follow at once, listings too.
    pub fn set_template_status(&self, name: &str, language: &str, status: &str) {
        let mut st = self.shared.state();
        for t in st.templates.iter_mut() {
            if t.name == name && t.language == language {
                t.status = status.to_string();
            }
        }
    }

    /// The most templates a `message_templates` page holds, whatever its `limit` asks: fewer
    /// per page make a client page through the cursors.
    pub fn set_templates_page_size(&self, size: usize) {
        self.shared.state().templates_page_size = size.max(1);
    }

    /// Replaces the valid token; the old one then fails with 190 "Session has expired".
    pub fn set_access_token(&self, token: impl Into<String>) {
        let mut st = self.shared.state();
        let old = std::mem::replace(&mut st.access_token, token.into());
        st.retired_tokens.push(old);
    }

    /// The product's webhook URL (`…/webhook/whatsapp`), where deliveries and statuses go.
    pub fn set_webhook_target(&self, url: impl Into<String>) {
        self.shared.state().webhook_target = Some(url.into());
    }

    pub fn set_auto_statuses(&self, on: bool) {
        self.shared.state().auto_statuses = on;
    }

    /// When `wa_id` last wrote to `phone_number_id`, for that number's 24-hour window.
    pub fn set_last_inbound_on(&self, phone_number_id: &str, wa_id: &str, unix_secs: u64) {
        self.shared
            .state()
            .last_inbound
            .insert((phone_number_id.to_string(), wa_id.to_string()), unix_secs);
    }

    /// Pretends the customer last wrote to the main number at `unix_secs` (moves the window
    /// either way).
    pub fn set_last_inbound(&self, wa_id: &str, unix_secs: u64) {
        let number = self.shared.cfg.phone_number_id.clone();
        self.set_last_inbound_on(&number, wa_id, unix_secs);
    }

    pub fn last_inbound(&self, wa_id: &str) -> Option<u64> {
        let number = &self.shared.cfg.phone_number_id;
        self.shared
            .state()
            .last_inbound
            .get(&(number.clone(), wa_id.to_string()))
            .copied()
    }

    /// The fake's clock (Unix seconds), used for timestamps, the window and URL expiry.
    pub fn now(&self) -> u64 {
        self.shared.clock.now()
    }

    /// Moves the fake's clock forward: expire lookaside URLs or close windows without waiting.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    pub fn is_subscribed(&self) -> bool {
        self.shared.state().subscribed
    }

    /// The app's saved webhooks (`POST /{app-id}/subscriptions`).
    pub fn app_subscriptions(&self) -> Vec<AppSubscription> {
        self.shared.state().app_subscriptions.clone()
    }

    /// Where webhooks go now, if anywhere.
    pub fn webhook_target(&self) -> Option<String> {
        self.shared.state().webhook_target.clone()
    }

    /// Distinct Graph versions seen in request paths, first use first.
    pub fn graph_versions(&self) -> Vec<String> {
        self.shared.state().graph_versions.clone()
    }

    /// Status webhooks the fake posted on its own after sends.
    pub fn webhook_log(&self) -> Vec<WebhookDelivery> {
        self.shared.state().webhook_log.clone()
    }

    /// See `WebhookSender::verify_subscription`.
    pub async fn verify_subscription(
        &self,
        callback_url: &str,
        verify_token: &str,
    ) -> Result<(), VerifyError> {
        self.webhooks()
            .verify_subscription(callback_url, verify_token)
            .await
    }
}
