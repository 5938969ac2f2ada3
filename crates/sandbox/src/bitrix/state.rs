//! What the portal remembers. Everything a test may inspect is a plain `Clone` snapshot type;
//! the mutable `Portal` stays behind the fake's mutex.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::BitrixConfig;

/// A grant as the OAuth server last issued it: what the product should have stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds at which `access_token` stops working (fake clock).
    pub expires: i64,
    pub member_id: String,
    pub application_token: String,
}

#[derive(Debug, Clone)]
pub(crate) struct AccessToken {
    pub user_id: u64,
    pub expires_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshState {
    Live,
    /// Rotated away by a refresh: the OAuth server refuses it from then on.
    Used,
    Revoked,
}

#[derive(Debug, Clone)]
pub struct Connector {
    pub id: String,
    pub name: String,
    pub placement_handler: String,
    /// Registration parameters as received (keys upper-cased, as the portal stores them).
    pub params: Value,
}

impl Connector {
    /// Registration flags default to true (protocol §4); Bitrix compares them `=== true`.
    pub fn flag(&self, name: &str) -> bool {
        match self.params.get(name) {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "1" || s.eq_ignore_ascii_case("true"),
            Some(Value::Number(n)) => n.as_i64() == Some(1),
            Some(_) => false,
        }
    }
}

/// `imconnector.status` for one connector on one line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorStatus {
    pub active: bool,
    pub connected: bool,
    pub registered: bool,
    pub error: bool,
    /// Last `imconnector.connector.data.set` DATA, merged as the module source does.
    pub data: BTreeMap<String, String>,
}

impl ConnectorStatus {
    pub fn configured(&self) -> bool {
        self.active && self.connected
    }
    pub fn status(&self) -> bool {
        self.active && self.connected && self.registered && !self.error
    }
}

/// One Open Lines dialog, keyed like the module keys 1:1 dialogs: connector|line|chat|user.
#[derive(Debug, Clone)]
pub struct Chat {
    pub bitrix_chat_id: u64,
    pub session_id: u64,
    pub connector: String,
    pub line: i64,
    pub external_chat_id: String,
    pub external_user_id: String,
    /// The hidden "external" Bitrix user created for the customer.
    pub bitrix_user_id: u64,
    pub name: Option<String>,
    pub url: Option<String>,
    pub messages: Vec<ChatMessage>,
}

#[derive(Debug, Clone)]
pub enum ChatMessage {
    Customer(CustomerMessage),
    Operator(OperatorMessage),
    System(SystemNote),
}

#[derive(Debug, Clone)]
pub struct CustomerMessage {
    pub bitrix_message_id: u64,
    /// `message.id` as the product sent it (stored as CONNECTOR_MID).
    pub external_id: Option<String>,
    pub date: Option<i64>,
    pub text: Option<String>,
    pub files: Vec<CustomerFile>,
    pub user_name: Option<String>,
    pub user_last_name: Option<String>,
    pub user_phone: Option<String>,
}

/// A `files[]` entry of `send.messages`, after the portal tried to download it.
#[derive(Debug, Clone)]
pub struct CustomerFile {
    pub url: String,
    pub name: Option<String>,
    /// The downloaded body, or why the download failed.
    pub download: Result<Vec<u8>, String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OperatorMessage {
    pub bitrix_message_id: u64,
    pub user_id: u64,
    /// Text as relayed in the event (signature prefix included).
    pub text: String,
    pub files: Vec<StoredFile>,
    /// External ids confirmed by `imconnector.send.status.delivery`; `None` = still "sending".
    pub delivered_as: Option<Vec<String>>,
    pub read: bool,
}

#[derive(Debug, Clone)]
pub struct SystemNote {
    pub bitrix_message_id: u64,
    pub text: String,
    /// `SYSTEM=Y`: shown as a note, not relayed to the connector.
    pub system: bool,
}

/// A file kept on the portal's disk, reachable via a signed short link.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub file_id: u64,
    pub short_code: String,
    pub name: String,
    pub kind: FileKind,
    pub bytes: Vec<u8>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Image,
    File,
    Audio,
    Video,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Image => "image",
            FileKind::File => "file",
            FileKind::Audio => "audio",
            FileKind::Video => "video",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundEvent {
    pub id: u64,
    /// Upper-cased, as `event.get` reports it.
    pub event: String,
    pub handler: String,
    pub auth_type: u64,
    pub offline: bool,
}

#[derive(Debug, Clone)]
pub struct Lead {
    pub id: u64,
    /// `fields` as sent (keys upper-cased).
    pub fields: Value,
    /// Created by Open Lines itself (line setting CRM_CREATE=lead), not by a REST call.
    pub by_openlines: bool,
}

impl Lead {
    /// Values of a multi-field (`PHONE`, `EMAIL`, `IM`).
    pub fn multifield(&self, name: &str) -> Vec<String> {
        self.fields
            .get(name)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| super::php::as_text(i.get("VALUE")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One attempt to deliver an event to a bound handler. Bitrix never retries.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: String,
    pub handler: String,
    /// HTTP status the handler answered, or `None` if it could not be reached in time.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub form: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Injected {
    pub code: String,
    pub status: u16,
    pub remaining: u32,
}

pub(crate) struct Bucket {
    pub level: f64,
    pub last: Instant,
    pub drain_per_sec: f64,
    pub capacity: f64,
}

impl Bucket {
    /// Leaky bucket as Bitrix's limits page describes it: each request adds one, the bucket
    /// drains `drain_per_sec` continuously, and a request that would take it above `capacity` is
    /// refused with 503 `QUERY_LIMIT_EXCEEDED` (cloud: 2/s, 50). A `batch` is one request however
    /// many commands it carries. The page doesn't say whether a refused request adds to the
    /// counter; we read it as counting admitted requests only, so a refusal adds nothing and a
    /// client is let in again as soon as one unit has drained.
    pub fn admit(&mut self) -> bool {
        let now = Instant::now();
        let drained = now.duration_since(self.last).as_secs_f64() * self.drain_per_sec;
        self.level = (self.level - drained).max(0.0);
        self.last = now;
        if self.level + 1.0 > self.capacity {
            return false;
        }
        self.level += 1.0;
        true
    }
}

pub(crate) struct Portal {
    pub cfg: BitrixConfig,
    pub clock_offset: i64,
    pub installed: bool,
    pub down: bool,
    pub access: HashMap<String, AccessToken>,
    pub refresh: HashMap<String, RefreshState>,
    /// Whose grant each refresh token belongs to: a refresh keeps the user.
    pub refresh_user: HashMap<String, u64>,
    pub auth_codes: HashMap<String, (i64, bool)>,
    pub current: Option<Grant>,
    pub connectors: BTreeMap<String, Connector>,
    pub statuses: BTreeMap<(String, i64), ConnectorStatus>,
    pub chats: Vec<Chat>,
    pub files: HashMap<u64, StoredFile>,
    /// Short codes that answer 302 to a location of the test's choosing.
    pub redirects: HashMap<String, String>,
    pub events: Vec<BoundEvent>,
    pub deliveries: Vec<Delivery>,
    pub leads: Vec<Lead>,
    pub inject: HashMap<String, Vec<Injected>>,
    pub bucket: Bucket,
    pub file_sign_key: [u8; 32],
    /// Per method: each call waits a random time in this range before the portal acts on it.
    pub latency: HashMap<String, (std::time::Duration, std::time::Duration)>,
    /// Customer message ids (`message.id`) inside a `imconnector.send.messages` call right now,
    /// with how many calls carry each.
    pub sending: HashMap<String, usize>,
    /// Message ids that were in two such calls at the same moment.
    pub overlapping: Vec<String>,
    /// Requests the leaky bucket refused with `QUERY_LIMIT_EXCEEDED`.
    pub limit_refusals: u64,
    /// `batch` requests admitted, and the commands they carried.
    pub batch_requests: u64,
    pub batch_commands: u64,
    /// Names of Open Channels created through `imopenlines.config.add`; the configured ones
    /// are called "Open Channel {id}".
    pub line_names: BTreeMap<i64, String>,
    next_id: HashMap<&'static str, u64>,
}

impl Portal {
    pub fn new(cfg: BitrixConfig) -> Self {
        let bucket = Bucket {
            level: 0.0,
            last: Instant::now(),
            drain_per_sec: cfg.rate_drain_per_sec,
            capacity: cfg.rate_capacity,
        };
        Portal {
            installed: cfg.preinstalled,
            cfg,
            clock_offset: 0,
            down: false,
            access: HashMap::new(),
            refresh: HashMap::new(),
            refresh_user: HashMap::new(),
            auth_codes: HashMap::new(),
            current: None,
            connectors: BTreeMap::new(),
            statuses: BTreeMap::new(),
            chats: Vec::new(),
            files: HashMap::new(),
            redirects: HashMap::new(),
            events: Vec::new(),
            deliveries: Vec::new(),
            leads: Vec::new(),
            inject: HashMap::new(),
            bucket,
            file_sign_key: rand::random(),
            latency: HashMap::new(),
            sending: HashMap::new(),
            overlapping: Vec::new(),
            limit_refusals: 0,
            batch_requests: 0,
            batch_commands: 0,
            line_names: BTreeMap::new(),
            next_id: HashMap::new(),
        }
    }

    /// Realistic-looking, per-kind sequences (chat 1767, message 98711, lead 4821 …) so ids
    /// of different kinds never coincide and a product mixing them up is caught.
    pub fn next(&mut self, kind: &'static str) -> u64 {
        let start = match kind {
            "chat" => 1767,
            "session" => 323,
            "user" => 585,
            "message" => 98711,
            "lead" => 4821,
            "file" => 70311,
            "handler" => 41,
            _ => 1,
        };
        let n = self.next_id.entry(kind).or_insert(start);
        let id = *n;
        *n += 1;
        id
    }

    pub fn now(&self) -> i64 {
        unix_now() + self.clock_offset
    }

    pub fn chat_by_bitrix_id(&mut self, id: u64) -> Option<&mut Chat> {
        self.chats.iter_mut().find(|c| c.bitrix_chat_id == id)
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

/// `2026-01-01T10:00:00+00:00`, the format of `time.date_start` (no chrono in the sandbox).
pub(crate) fn iso8601(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(raw)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    #[test]
    fn refused_requests_add_nothing_to_the_bucket() {
        let mut bucket = super::Bucket {
            level: 0.0,
            last: Instant::now(),
            drain_per_sec: 0.0,
            capacity: 2.0,
        };
        let answers: Vec<bool> = (0..5).map(|_| bucket.admit()).collect();
        assert_eq!(answers, [true, true, false, false, false]);
        assert_eq!(bucket.level, 2.0);
    }

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(super::iso8601(1_767_259_200), "2026-01-01T09:20:00+00:00");
    }
}
