//! Configuration: built-in default → config file → environment, validated once at start-up.
//! The credential store, which outranks all three for the settings the admin form can change,
//! is applied at run time by [`crate::credentials::SettingsResolver`]. Which settings exist is
//! the [`Catalogue`] the caller passes in.
//!
//! A bad value stops start-up with one line naming the setting ([`ConfigError`]); the binary
//! turns that into exit code 2.

pub mod catalogue;

use std::{any::Any, collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use serde::de::DeserializeOwned;

use crate::secret::Secret;
pub use catalogue::{Catalogue, Format, Kind, Setting, Table};
use catalogue::{DATABASE_URL, JOBS_CONCURRENCY, LISTEN, LOG_FORMAT, PUBLIC_URL, TRUSTED_PROXIES};

/// Where the value in force came from, shown on the admin form and by `credentials list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Store,
    Env,
    File,
    Default,
    Unset,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Store => "store",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
            Source::Unset => "unset",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The name the operator typed: env name, `[section] key`, or the file path.
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

/// The parsed rows of one [`Table`], typed by the crate that owns the table. Core can't name
/// that type, so it keeps the rows behind `Any` and [`Config::rows`] gives them back.
#[derive(Clone)]
pub struct Rows {
    rows: Arc<dyn Any + Send + Sync>,
    len: usize,
}

impl std::fmt::Debug for Rows {
    // Rows may hold secrets (a subscriber's signing secret): show only how many there are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rows({})", self.len)
    }
}

impl Rows {
    pub fn new<R: Row>(rows: Vec<R>) -> Self {
        Self {
            len: rows.len(),
            rows: Arc::new(rows),
        }
    }

    /// The rows as their owner's type.
    ///
    /// # Panics
    /// When `R` is not the type they were made with: a mistake in the owning crate that its
    /// first test catches.
    pub fn get<R: Row>(&self) -> &[R] {
        self.rows
            .downcast_ref::<Vec<R>>()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("rows read as {}", std::any::type_name::<R>()))
    }
}

/// A row of a config-file [`Table`].
pub trait Row: DeserializeOwned + Send + Sync + 'static {
    /// What deserializing can't check (a URL's scheme, say). The message names the field;
    /// the caller adds the table and the row's number.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The usual [`Table::parse`]: deserializes the array and checks each row.
pub fn parse_rows<R: Row>(value: toml::Value) -> Result<Rows, String> {
    let rows: Vec<R> = value
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    for (i, row) in rows.iter().enumerate() {
        row.check().map_err(|p| format!("entry {}: {p}", i + 1))?;
    }
    Ok(Rows::new(rows))
}

/// The resolved static layers. Values are raw strings checked against their [`Kind`];
/// typed accessors below give each bridge what it needs.
#[derive(Debug, Clone)]
pub struct Config {
    catalogue: Catalogue,
    values: BTreeMap<&'static str, (String, Source)>,
    tables: BTreeMap<&'static str, Rows>,
    pub file: Option<PathBuf>,
}

/// Environment variables that belong to Switchboard's tooling rather than to a setting.
const NON_SETTING_ENV: &[&str] = &["SWITCHBOARD_CONFIG"];
const NON_SETTING_ENV_PREFIXES: &[&str] = &["SWITCHBOARD_TEST_", "SWITCHBOARD_BENCH_"];

impl Config {
    /// Loads from the process environment and the config file it names (or
    /// `config/switchboard.toml` when that exists).
    pub fn load(catalogue: Catalogue, explicit_file: Option<PathBuf>) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_sources(catalogue, explicit_file, &env)
    }

    /// Pure form of [`Config::load`]: the tests give their own environment.
    pub fn from_sources(
        catalogue: Catalogue,
        explicit_file: Option<PathBuf>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = match explicit_file.or_else(|| env.get("SWITCHBOARD_CONFIG").map(PathBuf::from))
        {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::new(
                        path.display().to_string(),
                        "config file not found",
                    ));
                }
                Some(path)
            }
            None => {
                let default = PathBuf::from("config/switchboard.toml");
                default.exists().then_some(default)
            }
        };

        let mut values = BTreeMap::new();
        for s in catalogue.iter() {
            if let Some(d) = s.default {
                values.insert(s.key, (d.to_string(), Source::Default));
            }
        }

        let mut cfg = Config {
            catalogue,
            values,
            tables: BTreeMap::new(),
            file: file.clone(),
        };
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
            })?;
            cfg.apply_file(&path.display().to_string(), &text)?;
        }
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_file(&mut self, name: &str, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::new(name, format!("not valid TOML: {}", e.message()))
        })?;
        for (key, value) in table {
            match value {
                toml::Value::Table(section) => {
                    if !self.catalogue.knows_section(&key) {
                        return Err(ConfigError::new(
                            format!("[{key}]"),
                            "unknown section in config file",
                        ));
                    }
                    for (name, v) in section {
                        self.apply_file_key(&key, &name, v)?;
                    }
                }
                other => {
                    let s = self
                        .catalogue
                        .find(&key)
                        .ok_or_else(|| ConfigError::new(&key, "unknown setting in config file"))?;
                    let raw = toml_to_raw(s, &other)?;
                    self.values.insert(s.key, (raw, Source::File));
                }
            }
        }
        Ok(())
    }

    fn apply_file_key(
        &mut self,
        section: &str,
        name: &str,
        v: toml::Value,
    ) -> Result<(), ConfigError> {
        let key = format!("{section}.{name}");
        if let Some(table) = self.catalogue.find_table(&key) {
            let rows = (table.parse)(v).map_err(|p| ConfigError::new(table.file_form(), p))?;
            self.tables.insert(table.key, rows);
            return Ok(());
        }
        let s = self.catalogue.find(&key).ok_or_else(|| {
            ConfigError::new(
                format!("[{section}] {name}"),
                "unknown setting in config file",
            )
        })?;
        let raw = toml_to_raw(s, &v)?;
        self.values.insert(s.key, (raw, Source::File));
        Ok(())
    }

    fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for (name, value) in env {
            if !name.starts_with("SWITCHBOARD_")
                || NON_SETTING_ENV.contains(&name.as_str())
                || NON_SETTING_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
            {
                continue;
            }
            let s = self.catalogue.find_by_env(name).ok_or_else(|| {
                ConfigError::new(name, "unknown setting (check the spelling against README)")
            })?;
            self.values.insert(s.key, (value.clone(), Source::Env));
        }
        // The conventional names lose to the explicit SWITCHBOARD_ ones, except PORT, which
        // Cloud Run sets and expects to be obeyed.
        if let Some(url) = env.get("DATABASE_URL")
            && !env.contains_key("SWITCHBOARD_DATABASE_URL")
        {
            self.values
                .insert(DATABASE_URL.key, (url.clone(), Source::Env));
        }
        if let Some(port) = env.get("PORT") {
            let port: u16 = port
                .parse()
                .map_err(|_| ConfigError::new("PORT", format!("`{port}` is not a port number")))?;
            self.values
                .insert(LISTEN.key, (format!("0.0.0.0:{port}"), Source::Env));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for s in self.catalogue.iter() {
            let Some((raw, source)) = self.values.get(s.key) else {
                continue;
            };
            let name = match source {
                Source::Env => s.env.to_string(),
                _ => s.file_form(),
            };
            check_kind(s, raw).map_err(|p| ConfigError::new(&name, p))?;
        }
        if let Some(key) = self.master_key() {
            crate::credentials::parse_master_key(key.expose())
                .map_err(|p| ConfigError::new("SWITCHBOARD_MASTER_KEY", p))?;
        }
        for (i, key) in self.old_master_keys().iter().enumerate() {
            crate::credentials::parse_master_key(key.expose()).map_err(|p| {
                ConfigError::new(
                    "SWITCHBOARD_OLD_MASTER_KEYS",
                    format!("entry {}: {p}", i + 1),
                )
            })?;
        }
        if let Some(f) = self.get(LOG_FORMAT)
            && f != "json"
            && f != "pretty"
        {
            return Err(ConfigError::new(
                "SWITCHBOARD_LOG_FORMAT",
                format!("`{f}` is neither `json` nor `pretty`"),
            ));
        }
        let db = self.database_url();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must start with sqlite:// or postgres://",
            ));
        }
        if db.starts_with("sqlite:") && (db.contains(":memory:") || db.contains("mode=memory")) {
            // Persist-before-ack means nothing to a database that a restart wipes (and the inbox
            // writer opens its own connection, which would see a different empty database).
            return Err(ConfigError::new(
                "DATABASE_URL",
                "an in-memory SQLite database would lose every acknowledged webhook on restart; give a file path (sqlite://data/switchboard.db)",
            ));
        }
        crate::client_addr::TrustedProxies::parse(&self.list(TRUSTED_PROXIES))
            .map_err(|p| ConfigError::new("SWITCHBOARD_TRUSTED_PROXIES", p))?;
        Ok(())
    }

    /// The rows of a config-file table, as the crate that owns it parsed them at load; empty
    /// when the file has none. Panics as [`Rows::get`] does.
    pub fn rows<R: Row>(&self, table: &Table) -> &[R] {
        self.tables.get(table.key).map_or(&[], Rows::get)
    }

    /// The settings this configuration was loaded against.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The raw value in force (file/env/default), `None` when unset or blank.
    pub fn get(&self, setting: &Setting) -> Option<&str> {
        self.values
            .get(setting.key)
            .map(|(v, _)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// Like [`Config::get`], but a blank value gives the catalogue's default, as an unset one
    /// does.
    pub fn get_or_default(&self, setting: &Setting) -> Option<&str> {
        self.get(setting).or(setting.default)
    }

    pub fn source(&self, setting: &Setting) -> Source {
        match self.values.get(setting.key) {
            Some((v, s)) if !v.trim().is_empty() => *s,
            _ => Source::Unset,
        }
    }

    /// Overrides one value (tests and `serve` flags); validated like any other.
    pub fn set(&mut self, setting: &Setting, value: &str) -> Result<(), ConfigError> {
        let s = self
            .catalogue
            .find(setting.key)
            .ok_or_else(|| ConfigError::new(setting.key, "unknown setting"))?;
        check_kind(s, value).map_err(|p| ConfigError::new(s.env, p))?;
        self.values.insert(s.key, (value.to_string(), Source::Env));
        Ok(())
    }

    pub fn listen(&self) -> SocketAddr {
        self.get_or_default(LISTEN)
            .and_then(|v| v.parse().ok())
            .expect("listen is checked as host:port at load and has a default")
    }

    pub fn public_url(&self) -> &str {
        self.get_or_default(PUBLIC_URL)
            .unwrap_or_default()
            .trim_end_matches('/')
    }

    pub fn database_url(&self) -> &str {
        self.get_or_default(DATABASE_URL).unwrap_or_default()
    }

    pub fn master_key(&self) -> Option<Secret> {
        self.get(catalogue::MASTER_KEY).map(Secret::new)
    }

    pub fn old_master_keys(&self) -> Vec<Secret> {
        self.list(catalogue::OLD_MASTER_KEYS)
            .into_iter()
            .map(Secret::new)
            .collect()
    }

    pub fn admin_token(&self) -> Option<Secret> {
        self.get(catalogue::ADMIN_TOKEN).map(Secret::new)
    }

    pub fn log_format(&self) -> Option<&str> {
        self.get(LOG_FORMAT)
    }

    pub fn jobs_concurrency(&self) -> usize {
        self.integer_or_default(JOBS_CONCURRENCY).max(1) as usize
    }

    pub fn integer(&self, setting: &Setting) -> Option<u64> {
        self.get(setting).and_then(|v| v.trim().parse().ok())
    }

    /// For an integer setting whose catalogue entry has a default: the value in force, or that
    /// default when unset or blank.
    pub fn integer_or_default(&self, setting: &Setting) -> u64 {
        self.get_or_default(setting)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} has no whole-number default", setting.key))
    }

    pub fn list(&self, setting: &Setting) -> Vec<String> {
        self.get(setting)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An absolute http(s) URL with a host, as [`Kind::Url`] requires.
pub fn is_http_url(v: &str) -> bool {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

/// Checks a raw value against its setting's [`Kind`]; the message says what is wrong without
/// naming the setting (callers add that). Used at load and by the admin form.
pub fn check_kind(s: &Setting, raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Ok(());
    }
    match s.kind {
        Kind::Url if !is_http_url(raw) => Err(format!(
            "`{}` is not an absolute http(s) URL",
            crate::db::redact_url(raw)
        )),
        Kind::SocketAddr if raw.parse::<SocketAddr>().is_err() => Err(format!(
            "`{raw}` is not a host:port address like 127.0.0.1:8080"
        )),
        Kind::Integer if raw.trim().parse::<u64>().map(|n| n == 0).unwrap_or(true) => {
            Err(format!("`{raw}` is not a positive whole number"))
        }
        Kind::Format(f) if !(f.check)(raw.trim()) => Err(format!("`{raw}` is not {}", f.expected)),
        _ => Ok(()),
    }
}

fn toml_to_raw(s: &Setting, v: &toml::Value) -> Result<String, ConfigError> {
    match (s.kind, v) {
        (_, toml::Value::String(x)) => Ok(x.clone()),
        (Kind::Integer, toml::Value::Integer(n)) => Ok(n.to_string()),
        // A switch written as a TOML boolean (`mark_read = false`); its form checks the text.
        (Kind::Format(_), toml::Value::Boolean(b)) => Ok(b.to_string()),
        (Kind::List, toml::Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ConfigError::new(s.file_form(), "list items must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        _ => Err(ConfigError::new(
            s.file_form(),
            format!("expected {:?}, found a {}", s.kind, v.type_str()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stand-ins for bridge entries, in their shape, so loading is tested with sections and
    /// defaults core itself doesn't have.
    const PBX_BASE_URL: &Setting = &Setting {
        key: "pbx.base_url",
        env: "SWITCHBOARD_PBX_BASE_URL",
        kind: Kind::Url,
        default: None,
        storable: false,
        group: "PBX bridge",
        label: "AstraPBX API base",
        help: "",
    };
    const PBX_TOKEN_TTL_SECS: &Setting = &Setting {
        key: "pbx.token_ttl_secs",
        env: "SWITCHBOARD_PBX_TOKEN_TTL_SECS",
        kind: Kind::Integer,
        default: Some("82800"),
        storable: false,
        group: "PBX bridge",
        label: "PBX token cache life (s)",
        help: "",
    };
    const META_GRAPH_VERSION: &Setting = &Setting {
        key: "meta.graph_version",
        env: "SWITCHBOARD_META_GRAPH_VERSION",
        kind: Kind::Text,
        default: Some("v23.0"),
        storable: false,
        group: "Meta WhatsApp",
        label: "Graph API version",
        help: "",
    };
    const WABRIDGES_TOKEN: &Setting = &Setting {
        key: "wabridges.token",
        env: "SWITCHBOARD_WABRIDGES_TOKEN",
        kind: Kind::Secret,
        default: None,
        storable: true,
        group: "wabridges hooks",
        label: "Hook token",
        help: "",
    };
    const BRIDGE_SETTINGS: &[&Setting] = &[
        PBX_BASE_URL,
        PBX_TOKEN_TTL_SECS,
        WABRIDGES_TOKEN,
        META_GRAPH_VERSION,
    ];

    fn load(
        explicit_file: Option<PathBuf>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        Config::from_sources(Catalogue::new(&[BRIDGE_SETTINGS]), explicit_file, env)
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_apply_with_no_configuration() {
        let c = load(None, &env(&[])).unwrap();
        assert_eq!(c.listen().to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://data/switchboard.db");
        assert_eq!(c.get(PBX_TOKEN_TTL_SECS), Some("82800"));
        assert_eq!(c.source(PBX_TOKEN_TTL_SECS), Source::Default);
        assert_eq!(c.source(PBX_BASE_URL), Source::Unset);
    }

    #[test]
    fn env_beats_file_beats_default() {
        let f = file("[pbx]\nbase_url = \"http://file.example\"\ntoken_ttl_secs = 60\n");
        let c = load(
            Some(f.path().into()),
            &env(&[("SWITCHBOARD_PBX_BASE_URL", "http://env.example")]),
        )
        .unwrap();
        assert_eq!(c.get(PBX_BASE_URL), Some("http://env.example"));
        assert_eq!(c.source(PBX_BASE_URL), Source::Env);
        assert_eq!(c.get(PBX_TOKEN_TTL_SECS), Some("60"));
        assert_eq!(c.source(PBX_TOKEN_TTL_SECS), Source::File);
        assert_eq!(c.get(META_GRAPH_VERSION), Some("v23.0"));
    }

    #[test]
    fn port_means_all_interfaces() {
        let c = load(None, &env(&[("PORT", "9090")])).unwrap();
        assert_eq!(c.listen().to_string(), "0.0.0.0:9090");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = load(None, &env(&[("SWITCHBOARD_PBX_BASE_URL", "not a url")])).unwrap_err();
        assert_eq!(e.setting, "SWITCHBOARD_PBX_BASE_URL");
        let e = load(None, &env(&[("SWITCHBOARD_MASTER_KEY", "c2hvcnQ=")])).unwrap_err();
        assert_eq!(e.setting, "SWITCHBOARD_MASTER_KEY");
        let f = file("[nonsense]\nx = 1\n");
        let e = load(Some(f.path().into()), &env(&[])).unwrap_err();
        assert_eq!(e.setting, "[nonsense]");
        let e = load(None, &env(&[("SWITCHBOARD_PBX_BASEURL", "x")])).unwrap_err();
        assert_eq!(e.setting, "SWITCHBOARD_PBX_BASEURL");
        for memory in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite:file:x?mode=memory",
        ] {
            let e = load(None, &env(&[("DATABASE_URL", memory)])).unwrap_err();
            assert_eq!(e.setting, "DATABASE_URL", "{memory}");
            assert!(e.problem.contains("lose every acknowledged"), "{memory}");
        }
    }

    /// A stand-in for a bridge's table row, with a check serde can't make.
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Subscriber {
        url: String,
        #[serde(default)]
        events: Vec<String>,
    }

    impl Row for Subscriber {
        fn check(&self) -> Result<(), String> {
            if is_http_url(&self.url) {
                Ok(())
            } else {
                Err(format!("url `{}` is not an http(s) URL", self.url))
            }
        }
    }

    const SUBSCRIBERS: &Table = &Table {
        key: "pbx.subscribers",
        parse: parse_rows::<Subscriber>,
    };

    fn load_with_table(text: &str) -> Result<Config, ConfigError> {
        let f = file(text);
        Config::from_sources(
            Catalogue::new(&[BRIDGE_SETTINGS]).with_tables(&[SUBSCRIBERS]),
            Some(f.path().into()),
            &env(&[]),
        )
    }

    #[test]
    fn table_rows_parse_from_file_and_come_back_typed() {
        let c = load_with_table(
            "[[pbx.subscribers]]\nurl = \"http://127.0.0.1:1/h\"\nevents = [\"message\"]\n\n[[pbx.subscribers]]\nurl = \"https://b.example/\"\n",
        )
        .unwrap();
        let rows: &[Subscriber] = c.rows(SUBSCRIBERS);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].events, vec!["message"]);
        assert_eq!(rows[1].url, "https://b.example/");
        assert_eq!(format!("{:?}", c.tables), "{\"pbx.subscribers\": Rows(2)}");
    }

    #[test]
    fn an_absent_table_has_no_rows() {
        let c = load_with_table("[pbx]\ntoken_ttl_secs = 60\n").unwrap();
        assert!(c.rows::<Subscriber>(SUBSCRIBERS).is_empty());
    }

    #[test]
    fn a_bad_row_stops_loading_and_names_table_and_row() {
        let e = load_with_table(
            "[[pbx.subscribers]]\nurl = \"https://a.example/\"\n\n[[pbx.subscribers]]\nurl = \"ftp://b.example/\"\n",
        )
        .unwrap_err();
        assert_eq!(e.setting, "[[pbx.subscribers]]");
        assert_eq!(
            e.problem,
            "entry 2: url `ftp://b.example/` is not an http(s) URL"
        );
        let e = load_with_table("[[pbx.subscribers]]\nurl = \"https://a.example/\"\nextra = 1\n")
            .unwrap_err();
        assert_eq!(e.setting, "[[pbx.subscribers]]");
        assert!(e.problem.contains("unknown field `extra`"), "{}", e.problem);
    }

    /// A table the catalogue doesn't hold is an unknown setting, as a misspelt key is.
    #[test]
    fn an_unknown_table_is_refused() {
        let e = load_with_table("[[pbx.subscriber]]\nurl = \"https://a.example/\"\n").unwrap_err();
        assert_eq!(e.setting, "[pbx] subscriber");
        let e = load_with_table("[[elsewhere.subscribers]]\nurl = \"https://a.example/\"\n")
            .unwrap_err();
        assert_eq!(e.setting, "[elsewhere]");
    }

    /// A default that fails its own kind check would stop every start-up that leaves it alone.
    #[test]
    fn core_defaults_pass_their_own_checks() {
        for s in Catalogue::core_only().iter() {
            if let Some(d) = s.default {
                assert_eq!(check_kind(s, d), Ok(()), "{}", s.key);
            }
        }
    }
}
