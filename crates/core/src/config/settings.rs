//! The one list of every setting: its config-file key, environment name, kind, default and
//! whether the admin form / credential store may set it. Config loading, the example file test,
//! `credentials list` and the admin form all read this table, so a setting can't exist in one
//! place and be missing from another.

/// How a raw string is checked and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Masked everywhere it is shown; stored encrypted.
    Secret,
    /// An absolute http(s) URL.
    Url,
    /// `host:port`.
    SocketAddr,
    /// A positive whole number.
    Integer,
    /// Comma-separated list (a TOML array in the file).
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Server,
    Database,
    Pbx,
    Wabridges,
    Meta,
    Bitrix,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Server => "Server",
            Group::Database => "Database",
            Group::Pbx => "PBX bridge",
            Group::Wabridges => "wabridges hooks",
            Group::Meta => "Meta WhatsApp",
            Group::Bitrix => "Bitrix24",
        }
    }
}

#[derive(Debug)]
pub struct Setting {
    /// `listen` for top-level keys, `pbx.base_url` for `[pbx] base_url`.
    pub key: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    pub default: Option<&'static str>,
    /// Settable through the encrypted credential store (admin form / `credentials set`).
    pub storable: bool,
    pub group: Group,
    pub label: &'static str,
    pub help: &'static str,
}

impl Setting {
    pub fn section(&self) -> Option<&'static str> {
        self.key.split_once('.').map(|(s, _)| s)
    }

    pub fn name(&self) -> &'static str {
        self.key.split_once('.').map_or(self.key, |(_, k)| k)
    }

    /// `[pbx] base_url` or `listen`, the way an operator reads the config file.
    pub fn file_form(&self) -> String {
        match self.section() {
            Some(s) => format!("[{s}] {}", self.name()),
            None => self.key.to_string(),
        }
    }
}

macro_rules! setting {
    ($key:literal, $env:literal, $kind:ident, $default:expr, $storable:literal, $group:ident, $label:literal, $help:literal) => {
        Setting {
            key: $key,
            env: $env,
            kind: Kind::$kind,
            default: $default,
            storable: $storable,
            group: Group::$group,
            label: $label,
            help: $help,
        }
    };
}

pub const DEFAULT_GRAPH_VERSION: &str = "v23.0";

pub static SETTINGS: &[Setting] = &[
    setting!(
        "listen",
        "SWITCHBOARD_LISTEN",
        SocketAddr,
        Some("127.0.0.1:8080"),
        false,
        Server,
        "Listen address",
        "Address the HTTP server binds. `PORT` overrides it with 0.0.0.0:$PORT (Cloud Run)."
    ),
    setting!(
        "public_url",
        "SWITCHBOARD_PUBLIC_URL",
        Url,
        Some("http://127.0.0.1:8080"),
        false,
        Server,
        "Public URL",
        "Public https base URL that Meta and Bitrix24 reach; used for media links and install URLs."
    ),
    setting!(
        "master_key",
        "SWITCHBOARD_MASTER_KEY",
        Secret,
        None,
        false,
        Server,
        "Master key",
        "Base64 of 32 random bytes that encrypts stored secrets. `switchboard keys generate` prints one."
    ),
    setting!(
        "old_master_keys",
        "SWITCHBOARD_OLD_MASTER_KEYS",
        List,
        None,
        false,
        Server,
        "Retired master keys",
        "Comma list of retired master keys that can still decrypt, for `switchboard keys rotate`."
    ),
    setting!(
        "admin_token",
        "SWITCHBOARD_ADMIN_TOKEN",
        Secret,
        None,
        false,
        Server,
        "Admin token",
        "Gates /admin/*, /setup and /api/*. Those routes answer 503 until it is set."
    ),
    setting!(
        "log_format",
        "SWITCHBOARD_LOG_FORMAT",
        Text,
        None,
        false,
        Server,
        "Log format",
        "`json` or `pretty`; default pretty on a terminal, json otherwise."
    ),
    setting!(
        "header_timeout_secs",
        "SWITCHBOARD_HEADER_TIMEOUT_SECS",
        Integer,
        Some("20"),
        false,
        Server,
        "Header timeout (s)",
        "How long a connection may take to send a request's headers, counted from when it opens or its previous answer went out. Idle keep-alive connections close after it too."
    ),
    setting!(
        "body_timeout_secs",
        "SWITCHBOARD_BODY_TIMEOUT_SECS",
        Integer,
        Some("30"),
        false,
        Server,
        "Body timeout (s)",
        "How long a request may take to send its whole body once its headers are in; a slower one gets 408."
    ),
    setting!(
        "max_connections",
        "SWITCHBOARD_MAX_CONNECTIONS",
        Integer,
        None,
        false,
        Server,
        "Connection limit",
        "Most connections served at once; more get 503 and are closed. Default: what the open-file limit leaves room for, at most 4096. Can only lower that."
    ),
    setting!(
        "trusted_proxies",
        "SWITCHBOARD_TRUSTED_PROXIES",
        List,
        None,
        false,
        Server,
        "Trusted proxies",
        "Comma list of your reverse proxies' addresses (IP or CIDR). Only a connection from one of them may name the client in X-Forwarded-For; by default that header is ignored."
    ),
    setting!(
        "database.url",
        "SWITCHBOARD_DATABASE_URL",
        Text,
        Some("sqlite://data/switchboard.db"),
        false,
        Database,
        "Database URL",
        "`sqlite://path` (embedded default) or `postgres://…` for scale-out. `DATABASE_URL` also works."
    ),
    setting!(
        "jobs.concurrency",
        "SWITCHBOARD_JOBS_CONCURRENCY",
        Integer,
        Some("32"),
        false,
        Database,
        "Job concurrency",
        "How many jobs one process runs at once. Jobs mostly wait on the network (and on Bitrix24's 2 requests/s limit), so this is well above the core count."
    ),
    setting!(
        "pbx.base_url",
        "SWITCHBOARD_PBX_BASE_URL",
        Url,
        None,
        false,
        Pbx,
        "AstraPBX API base",
        "AstraPBX API base, e.g. https://devpbx.astradial.com."
    ),
    setting!(
        "pbx.token_ttl_secs",
        "SWITCHBOARD_PBX_TOKEN_TTL_SECS",
        Integer,
        Some("82800"),
        false,
        Pbx,
        "PBX token cache life (s)",
        "Cache life of a PBX JWT; shortened to the JWT's own expiry when it has one."
    ),
    setting!(
        "pbx.allowed_prefixes",
        "SWITCHBOARD_PBX_ALLOWED_PREFIXES",
        List,
        Some("/api/"),
        false,
        Pbx,
        "Allowed PBX path prefixes",
        "Comma list of path prefixes callers may reach through the bridge."
    ),
    setting!(
        "pbx.timeout_secs",
        "SWITCHBOARD_PBX_TIMEOUT_SECS",
        Integer,
        Some("15"),
        false,
        Pbx,
        "PBX timeout (s)",
        "How long a PBX call may take before the bridge answers 504."
    ),
    setting!(
        "wabridges.token",
        "SWITCHBOARD_WABRIDGES_TOKEN",
        Secret,
        None,
        true,
        Wabridges,
        "Hook token",
        "Shared secret of the wabridges hooks: `?token=…` in each webhook_url, or `Authorization: Bearer …`."
    ),
    setting!(
        "meta.graph_url",
        "SWITCHBOARD_META_GRAPH_URL",
        Url,
        Some("https://graph.facebook.com"),
        false,
        Meta,
        "Graph API base",
        "Graph API base URL."
    ),
    setting!(
        "meta.graph_version",
        "SWITCHBOARD_META_GRAPH_VERSION",
        Text,
        Some(DEFAULT_GRAPH_VERSION),
        false,
        Meta,
        "Graph API version",
        "Pinned Graph API version, e.g. v23.0."
    ),
    setting!(
        "meta.app_id",
        "SWITCHBOARD_META_APP_ID",
        Text,
        None,
        true,
        Meta,
        "App ID",
        "Meta app id."
    ),
    setting!(
        "meta.app_secret",
        "SWITCHBOARD_META_APP_SECRET",
        Secret,
        None,
        true,
        Meta,
        "App Secret",
        "Signs inbound webhooks (X-Hub-Signature-256)."
    ),
    setting!(
        "meta.access_token",
        "SWITCHBOARD_META_ACCESS_TOKEN",
        Secret,
        None,
        true,
        Meta,
        "Access Token",
        "Permanent System User token with whatsapp_business_messaging."
    ),
    setting!(
        "meta.phone_number_id",
        "SWITCHBOARD_META_PHONE_NUMBER_ID",
        Text,
        None,
        true,
        Meta,
        "Phone Number ID",
        "The business number's id, used for sending and media."
    ),
    setting!(
        "meta.waba_id",
        "SWITCHBOARD_META_WABA_ID",
        Text,
        None,
        true,
        Meta,
        "WABA ID",
        "WhatsApp Business Account id."
    ),
    setting!(
        "meta.verify_token",
        "SWITCHBOARD_META_VERIFY_TOKEN",
        Secret,
        None,
        true,
        Meta,
        "Webhook Verify Token",
        "The string typed in Meta's webhook settings for the GET handshake."
    ),
    setting!(
        "bitrix.portal_url",
        "SWITCHBOARD_BITRIX_PORTAL_URL",
        Url,
        None,
        true,
        Bitrix,
        "Portal URL",
        "Your portal, e.g. https://acme.bitrix24.com."
    ),
    setting!(
        "bitrix.client_id",
        "SWITCHBOARD_BITRIX_CLIENT_ID",
        Text,
        None,
        true,
        Bitrix,
        "Client ID",
        "Local application client id (local.…)."
    ),
    setting!(
        "bitrix.client_secret",
        "SWITCHBOARD_BITRIX_CLIENT_SECRET",
        Secret,
        None,
        true,
        Bitrix,
        "Client Secret",
        "Local application client secret; only ever sent to the OAuth server."
    ),
    setting!(
        "bitrix.connector_id",
        "SWITCHBOARD_BITRIX_CONNECTOR_ID",
        Text,
        Some("switchboard_whatsapp"),
        true,
        Bitrix,
        "Connector ID",
        "Contact Center connector id ([a-z0-9_])."
    ),
    setting!(
        "bitrix.line_id",
        "SWITCHBOARD_BITRIX_LINE_ID",
        Text,
        None,
        true,
        Bitrix,
        "Open Channel (LINE) ID",
        "Numeric id of the Open Channel the connector is bound to."
    ),
    setting!(
        "bitrix.application_token",
        "SWITCHBOARD_BITRIX_APPLICATION_TOKEN",
        Secret,
        None,
        true,
        Bitrix,
        "Application Token",
        "Verifies /bitrix/events calls. Leave blank to use the token of the verified install; never learned from an event."
    ),
    setting!(
        "bitrix.oauth_url",
        "SWITCHBOARD_BITRIX_OAUTH_URL",
        Url,
        Some("https://oauth.bitrix.info"),
        false,
        Bitrix,
        "OAuth server",
        "Bitrix24 OAuth server."
    ),
];

pub fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

pub fn find_by_env(env: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.env == env)
}
