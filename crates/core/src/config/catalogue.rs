//! The settings catalogue: every setting's config-file key, environment name, kind, default and
//! whether the admin form / credential store may set it. Core contributes its own entries (server,
//! database, jobs); each bridge contributes a slice of its own, and the binary joins them into
//! one [`Catalogue`] that config loading, the example file test, `credentials list` and the
//! admin form all read, so a setting can't exist in one place and be missing from another.
//!
//! Must not name a bridge: a bridge's entries and their group titles live in the bridge.

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
    /// Text of a form the crate that owns the setting defines (a version like `v23.0`).
    Format(&'static Format),
}

/// A text form a bridge's setting must have, checked wherever the value is set: the config
/// file, the environment, the credential store and the admin form.
#[derive(Debug)]
pub struct Format {
    /// What a right value looks like, completing "is not …": "a Graph API version like v23.0".
    pub expected: &'static str,
    pub check: fn(&str) -> bool,
}

impl PartialEq for Format {
    fn eq(&self, other: &Self) -> bool {
        self.expected == other.expected
    }
}

impl Eq for Format {}

/// One entry of the catalogue. Code names a setting by the constant that holds its entry
/// (`&'static Setting`), so a misspelt key fails to compile and its default lives here only.
#[derive(Debug)]
pub struct Setting {
    /// `listen` for top-level keys, `pbx.base_url` for `[pbx] base_url`.
    pub key: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    pub default: Option<&'static str>,
    /// Settable through the encrypted credential store (admin form / `credentials set`).
    pub storable: bool,
    /// Title of the admin form fieldset (and `credentials list` group) the setting sits in;
    /// the crate that contributes the setting names it.
    pub group: &'static str,
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

pub const SERVER_GROUP: &str = "Server";
pub const DATABASE_GROUP: &str = "Database";

pub const LISTEN: &Setting = &Setting {
    key: "listen",
    env: "SWITCHBOARD_LISTEN",
    kind: Kind::SocketAddr,
    default: Some("127.0.0.1:8080"),
    storable: false,
    group: SERVER_GROUP,
    label: "Listen address",
    help: "Address the HTTP server binds. `PORT` overrides it with 0.0.0.0:$PORT (Cloud Run).",
};

pub const PUBLIC_URL: &Setting = &Setting {
    key: "public_url",
    env: "SWITCHBOARD_PUBLIC_URL",
    kind: Kind::Url,
    default: Some("http://127.0.0.1:8080"),
    storable: false,
    group: SERVER_GROUP,
    label: "Public URL",
    help: "Public https base URL that Meta and Bitrix24 reach; used for media links and install URLs.",
};

pub const MASTER_KEY: &Setting = &Setting {
    key: "master_key",
    env: "SWITCHBOARD_MASTER_KEY",
    kind: Kind::Secret,
    default: None,
    storable: false,
    group: SERVER_GROUP,
    label: "Master key",
    help: "Base64 of 32 random bytes that encrypts stored secrets. `switchboard keys generate` prints one.",
};

pub const OLD_MASTER_KEYS: &Setting = &Setting {
    key: "old_master_keys",
    env: "SWITCHBOARD_OLD_MASTER_KEYS",
    kind: Kind::List,
    default: None,
    storable: false,
    group: SERVER_GROUP,
    label: "Retired master keys",
    help: "Comma list of retired master keys that can still decrypt, for `switchboard keys rotate`.",
};

pub const ADMIN_TOKEN: &Setting = &Setting {
    key: "admin_token",
    env: "SWITCHBOARD_ADMIN_TOKEN",
    kind: Kind::Secret,
    default: None,
    storable: false,
    group: SERVER_GROUP,
    label: "Admin token",
    help: "Gates /admin/*, /setup and /api/*. Those routes answer 503 until it is set.",
};

pub const LOG_FORMAT: &Setting = &Setting {
    key: "log_format",
    env: "SWITCHBOARD_LOG_FORMAT",
    kind: Kind::Text,
    default: None,
    storable: false,
    group: SERVER_GROUP,
    label: "Log format",
    help: "`json` or `pretty`; default pretty on a terminal, json otherwise.",
};

pub const HEADER_TIMEOUT_SECS: &Setting = &Setting {
    key: "header_timeout_secs",
    env: "SWITCHBOARD_HEADER_TIMEOUT_SECS",
    kind: Kind::Integer,
    default: Some("20"),
    storable: false,
    group: SERVER_GROUP,
    label: "Header timeout (s)",
    help: "How long a connection may take to send a request's headers, counted from when it opens or its previous answer went out. Idle keep-alive connections close after it too.",
};

pub const BODY_TIMEOUT_SECS: &Setting = &Setting {
    key: "body_timeout_secs",
    env: "SWITCHBOARD_BODY_TIMEOUT_SECS",
    kind: Kind::Integer,
    default: Some("30"),
    storable: false,
    group: SERVER_GROUP,
    label: "Body timeout (s)",
    help: "How long a request may take to send its whole body once its headers are in; a slower one gets 408.",
};

pub const MAX_CONNECTIONS: &Setting = &Setting {
    key: "max_connections",
    env: "SWITCHBOARD_MAX_CONNECTIONS",
    kind: Kind::Integer,
    default: None,
    storable: false,
    group: SERVER_GROUP,
    label: "Connection limit",
    help: "Most connections served at once; more get 503 and are closed. Default: what the open-file limit leaves room for, at most 4096. Can only lower that.",
};

pub const TRUSTED_PROXIES: &Setting = &Setting {
    key: "trusted_proxies",
    env: "SWITCHBOARD_TRUSTED_PROXIES",
    kind: Kind::List,
    default: None,
    storable: false,
    group: SERVER_GROUP,
    label: "Trusted proxies",
    help: "Comma list of your reverse proxies' addresses (IP or CIDR). Only a connection from one of them may name the client in X-Forwarded-For; by default that header is ignored.",
};

pub const DATABASE_URL: &Setting = &Setting {
    key: "database.url",
    env: "SWITCHBOARD_DATABASE_URL",
    kind: Kind::Text,
    default: Some("sqlite://data/switchboard.db"),
    storable: false,
    group: DATABASE_GROUP,
    label: "Database URL",
    help: "`sqlite://path` (embedded default) or `postgres://…` for scale-out. `DATABASE_URL` also works.",
};

pub const JOBS_CONCURRENCY: &Setting = &Setting {
    key: "jobs.concurrency",
    env: "SWITCHBOARD_JOBS_CONCURRENCY",
    kind: Kind::Integer,
    default: Some("32"),
    storable: false,
    group: DATABASE_GROUP,
    label: "Job concurrency",
    help: "How many jobs one process runs at once. Jobs mostly wait on the network (and on Bitrix24's 2 requests/s limit), so this is well above the core count.",
};

/// Core's own settings, first in every catalogue.
pub const CORE_SETTINGS: &[&Setting] = &[
    LISTEN,
    PUBLIC_URL,
    MASTER_KEY,
    OLD_MASTER_KEYS,
    ADMIN_TOKEN,
    LOG_FORMAT,
    HEADER_TIMEOUT_SECS,
    BODY_TIMEOUT_SECS,
    MAX_CONNECTIONS,
    TRUSTED_PROXIES,
    DATABASE_URL,
    JOBS_CONCURRENCY,
];

/// A list of rows that only the config file can hold, written as an array of tables
/// (`[[section.name]]`): no environment form, no place on the admin form. The crate that
/// contributes it owns the row type; core parses and checks the rows once at load, so a bad row
/// stops start-up like any bad setting, and hands them back typed through
/// [`super::Config::rows`].
#[derive(Debug)]
pub struct Table {
    /// `section.name` for `[[section.name]]`.
    pub key: &'static str,
    /// Usually [`super::parse_rows`] for the contributing crate's row type.
    pub parse: fn(toml::Value) -> Result<super::Rows, String>,
}

impl Table {
    pub fn section(&self) -> Option<&'static str> {
        self.key.split_once('.').map(|(s, _)| s)
    }

    /// `[[wabridges.forward]]`, the way an operator writes it in the file.
    pub fn file_form(&self) -> String {
        format!("[[{}]]", self.key)
    }
}

/// The settings one binary knows: core's own, then each bridge's slice in the order it was
/// given, which is the order `credentials list` shows them. The admin form shows the same
/// settings grouped in its own fieldset order ([`Catalogue::with_form_order`]).
#[derive(Debug, Clone)]
pub struct Catalogue {
    settings: Vec<&'static Setting>,
    tables: Vec<&'static Table>,
    form_order: Vec<&'static str>,
}

impl Catalogue {
    /// Core's settings followed by `bridge_slices`, in order.
    pub fn new(bridge_slices: &[&'static [&'static Setting]]) -> Self {
        let settings: Vec<&'static Setting> = std::iter::once(CORE_SETTINGS)
            .chain(bridge_slices.iter().copied())
            .flatten()
            .copied()
            .collect();
        Self {
            settings,
            tables: Vec::new(),
            form_order: Vec::new(),
        }
    }

    /// Adds the bridges' config-file tables.
    pub fn with_tables(mut self, tables: &[&'static Table]) -> Self {
        self.tables.extend_from_slice(tables);
        self
    }

    pub fn tables(&self) -> impl Iterator<Item = &'static Table> + '_ {
        self.tables.iter().copied()
    }

    pub fn find_table(&self, key: &str) -> Option<&'static Table> {
        self.tables().find(|t| t.key == key)
    }

    /// Whether a `[section]` of the config file belongs to anything in the catalogue.
    pub fn knows_section(&self, section: &str) -> bool {
        self.iter().any(|s| s.section() == Some(section))
            || self.tables().any(|t| t.section() == Some(section))
    }

    /// Only core's settings: enough for the commands and tests that load no bridge.
    pub fn core_only() -> Self {
        Self::new(&[])
    }

    /// The admin form's fieldset order, by group title; groups left out follow in catalogue
    /// order.
    pub fn with_form_order(mut self, group_titles: &[&'static str]) -> Self {
        self.form_order = group_titles.to_vec();
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static Setting> + '_ {
        self.settings.iter().copied()
    }

    /// The entry for a key typed by an operator (`credentials set meta.app_secret`, a form field).
    pub fn find(&self, key: &str) -> Option<&'static Setting> {
        self.iter().find(|s| s.key == key)
    }

    pub fn find_by_env(&self, env: &str) -> Option<&'static Setting> {
        self.iter().find(|s| s.env == env)
    }

    /// Group titles in the admin form's order, each once.
    pub fn form_groups(&self) -> Vec<&'static str> {
        let mut groups: Vec<&'static str> = Vec::new();
        let present = self.iter().map(|s| s.group);
        for group in self
            .form_order
            .iter()
            .copied()
            .filter(|g| self.iter().any(|s| s.group == *g))
            .chain(present)
        {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        groups
    }
}
