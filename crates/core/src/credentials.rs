//! Encrypted credential store and the run-time settings resolver.
//!
//! Every stored value is AES-256-GCM encrypted under the master key and tagged with that key's
//! id (`v1:<key id>:<base64 nonce‖ciphertext>`), so `keys rotate` can re-encrypt under a new key
//! while retired keys still decrypt. A value sealed under a key we don't hold is reported as
//! such, naming the settings to fix — never decrypted into garbage.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, AeadCore, OsRng},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sha2::{Digest, Sha256};

use crate::{
    config::{Config, Kind, Setting, Source},
    db::{Db, now_ms},
    on_pool,
    secret::Secret,
};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "SWITCHBOARD_MASTER_KEY is not set: secrets can't be stored (run `switchboard keys generate`)"
    )]
    NoMasterKey,
    #[error(
        "stored secret `{name}` was encrypted with key id {key_id}, which is neither SWITCHBOARD_MASTER_KEY nor any of SWITCHBOARD_OLD_MASTER_KEYS: restore the original key (or add it to SWITCHBOARD_OLD_MASTER_KEYS), or clear the value with `switchboard credentials set {name} \"\"` and store it again"
    )]
    UnknownKey { name: String, key_id: String },
    #[error(
        "stored secret `{name}` does not decrypt with key id {key_id}: the value was altered or the key is wrong; restore the original SWITCHBOARD_MASTER_KEY (or add it to SWITCHBOARD_OLD_MASTER_KEYS), or clear the value with `switchboard credentials set {name} \"\"` and store it again"
    )]
    Corrupt { name: String, key_id: String },
    #[error("`{key}` is not a setting the credential store holds; these are: {storable}")]
    NotStorable { key: String, storable: String },
    #[error("`{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks a master key's form: base64 of exactly 32 bytes.
pub fn parse_master_key(b64: &str) -> Result<[u8; 32], String> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|_| "not valid base64 (expected base64 of 32 random bytes)".to_string())?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "decodes to {} bytes; a master key is 32 bytes (run `switchboard keys generate`)",
            b.len()
        )
    })
}

/// A fresh master key for `keys generate`.
pub fn generate_master_key() -> String {
    B64.encode(Aes256Gcm::generate_key(OsRng))
}

#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(raw: [u8; 32]) -> Self {
        let id = hex::encode(&Sha256::digest(raw)[..4]);
        Self {
            id,
            cipher: Aes256Gcm::new(&raw.into()),
        }
    }
}

/// The current key (encrypts) and the retired ones (still decrypt).
#[derive(Clone, Default)]
pub struct Keyring {
    current: Option<Key>,
    retired: Vec<Key>,
}

impl CredentialError {
    /// A stored value this process can't read with its keys: a configuration fault the
    /// operator must fix before the process can do its work.
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            CredentialError::UnknownKey { .. } | CredentialError::Corrupt { .. }
        )
    }
}

impl Keyring {
    pub fn from_config(cfg: &Config) -> Self {
        let parse = |s: &Secret| parse_master_key(s.expose()).ok().map(Key::new);
        Self {
            current: cfg.master_key().as_ref().and_then(parse),
            retired: cfg.old_master_keys().iter().filter_map(parse).collect(),
        }
    }

    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    pub fn seal(&self, plain: &str) -> Result<String, CredentialError> {
        let key = self.current.as_ref().ok_or(CredentialError::NoMasterKey)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = key
            .cipher
            .encrypt(&nonce, plain.as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("v1:{}:{}", key.id, B64.encode(blob)))
    }

    pub fn open(&self, name: &str, sealed: &str) -> Result<String, CredentialError> {
        let corrupt = |key_id: &str| CredentialError::Corrupt {
            name: name.to_string(),
            key_id: key_id.to_string(),
        };
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(key_id), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt("?"));
        };
        let key = self
            .current
            .iter()
            .chain(self.retired.iter())
            .find(|k| k.id == key_id)
            .ok_or_else(|| CredentialError::UnknownKey {
                name: name.to_string(),
                key_id: key_id.to_string(),
            })?;
        let blob = B64.decode(b64).map_err(|_| corrupt(key_id))?;
        if blob.len() < 12 {
            return Err(corrupt(key_id));
        }
        let (nonce, ct) = blob.split_at(12);
        let plain = key
            .cipher
            .decrypt(nonce.into(), ct)
            .map_err(|_| corrupt(key_id))?;
        String::from_utf8(plain).map_err(|_| corrupt(key_id))
    }
}

/// One row of `credentials list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SettingView {
    pub key: &'static str,
    pub env: &'static str,
    pub label: &'static str,
    pub group: &'static str,
    pub secret: bool,
    pub storable: bool,
    /// Masked for secrets; a URL's password masked for the rest.
    pub shown: String,
    pub source: Source,
}

/// Resolves a setting's value at run time: the credential store first, then [`Config`]'s
/// env → file → default.
///
/// Store values are cached in-process and re-read after a short time, so a value saved by
/// another process (scale-out) takes effect within seconds, and a save through this process at
/// once.
#[derive(Clone)]
pub struct SettingsResolver {
    db: Db,
    config: Arc<Config>,
    keyring: Keyring,
    cache: Arc<RwLock<Option<StoreSnapshot>>>,
}

/// Decrypted store values and when they were read.
type StoreSnapshot = (Instant, Arc<HashMap<String, String>>);

const STORE_CACHE_TTL: Duration = Duration::from_secs(5);

impl SettingsResolver {
    pub fn new(db: Db, config: Arc<Config>) -> Self {
        let keyring = Keyring::from_config(&config);
        Self {
            db,
            config,
            keyring,
            cache: Arc::default(),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The value in force for `setting`, with where it came from.
    pub async fn resolve(
        &self,
        setting: &Setting,
    ) -> Result<Option<(String, Source)>, CredentialError> {
        if setting.storable
            && let Some(v) = self.stored().await?.get(setting.key)
        {
            return Ok(Some((v.clone(), Source::Store)));
        }
        Ok(self
            .config
            .get(setting)
            .map(|v| (v.to_string(), self.config.source(setting))))
    }

    pub async fn get(&self, setting: &Setting) -> Result<Option<String>, CredentialError> {
        Ok(self.resolve(setting).await?.map(|(v, _)| v))
    }

    pub async fn secret(&self, setting: &Setting) -> Result<Option<Secret>, CredentialError> {
        Ok(self.get(setting).await?.map(Secret::new))
    }

    /// [`SettingsResolver::set`] for a key an operator typed (`credentials set meta.app_secret`).
    pub async fn set_by_key(&self, key: &str, value: &str) -> Result<(), CredentialError> {
        let setting = self
            .config
            .catalogue()
            .find(key)
            .filter(|s| s.storable)
            .ok_or_else(|| self.not_storable(key))?;
        self.set(setting, value).await
    }

    fn not_storable(&self, key: &str) -> CredentialError {
        let storable: Vec<&str> = self
            .config
            .catalogue()
            .iter()
            .filter(|s| s.storable)
            .map(|s| s.key)
            .collect();
        CredentialError::NotStorable {
            key: key.to_string(),
            storable: storable.join(", "),
        }
    }

    /// Opens every stored value once, so a value sealed under a key this process lacks stops
    /// start-up instead of failing each request that needs it.
    pub async fn check_readable(&self) -> Result<(), CredentialError> {
        let rows: Vec<(String, String)> = on_pool!(&self.db, |p| sqlx::query_as(
            "SELECT name, value FROM credentials ORDER BY name"
        )
        .fetch_all(p)
        .await)?;
        for (name, sealed) in rows {
            self.keyring.open(&name, &sealed)?;
        }
        Ok(())
    }

    /// Stores `value` encrypted; an empty value removes the stored one (falls back to env/file).
    pub async fn set(&self, setting: &Setting, value: &str) -> Result<(), CredentialError> {
        if !setting.storable {
            return Err(self.not_storable(setting.key));
        }
        crate::config::check_kind(setting, value).map_err(|problem| CredentialError::Invalid {
            key: setting.key.to_string(),
            problem,
        })?;
        if value.is_empty() {
            on_pool!(&self.db, |p| sqlx::query(
                "DELETE FROM credentials WHERE name = $1"
            )
            .bind(setting.key)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        } else {
            let sealed = self.keyring.seal(value)?;
            on_pool!(&self.db, |p| {
                sqlx::query(
                "INSERT INTO credentials (name, value, key_id, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, key_id = excluded.key_id, updated_at = excluded.updated_at"
            )
            .bind(setting.key)
            .bind(&sealed)
            .bind(self.keyring.current_id().unwrap_or_default())
            .bind(now_ms())
            .execute(p)
            .await.map(|r| r.rows_affected())
            })?;
        }
        *self.cache.write().expect("settings cache lock") = None;
        Ok(())
    }

    async fn stored(&self) -> Result<Arc<HashMap<String, String>>, CredentialError> {
        if let Some((at, map)) = self.cache.read().expect("settings cache lock").as_ref()
            && at.elapsed() < STORE_CACHE_TTL
        {
            return Ok(map.clone());
        }
        let rows: Vec<(String, String)> = on_pool!(&self.db, |p| sqlx::query_as(
            "SELECT name, value FROM credentials"
        )
        .fetch_all(p)
        .await)?;
        let mut map = HashMap::new();
        for (name, sealed) in rows {
            map.insert(name.clone(), self.keyring.open(&name, &sealed)?);
        }
        let map = Arc::new(map);
        *self.cache.write().expect("settings cache lock") = Some((Instant::now(), map.clone()));
        Ok(map)
    }

    /// Every setting with its shown value and source (secrets masked).
    pub async fn list(&self) -> Result<Vec<SettingView>, CredentialError> {
        let mut out = Vec::new();
        for s in self.config.catalogue().iter() {
            let resolved = self.resolve(s).await?;
            let secret = s.kind == Kind::Secret;
            let (shown, source) = match resolved {
                Some((_, src)) if secret => (crate::secret::MASK.to_string(), src),
                // A URL's password (DATABASE_URL's, typically) is as secret as a secret.
                Some((v, src)) => (crate::db::redact_url(&v), src),
                None => (String::new(), Source::Unset),
            };
            out.push(SettingView {
                key: s.key,
                env: s.env,
                label: s.label,
                group: s.group,
                secret,
                storable: s.storable,
                shown,
                source,
            });
        }
        Ok(out)
    }

    /// Re-encrypts every stored value under the current key. Returns how many changed.
    pub async fn rotate(&self) -> Result<usize, CredentialError> {
        let current = self
            .keyring
            .current_id()
            .ok_or(CredentialError::NoMasterKey)?
            .to_string();
        let rows: Vec<(String, String)> = on_pool!(&self.db, |p| sqlx::query_as(
            "SELECT name, value FROM credentials"
        )
        .fetch_all(p)
        .await)?;
        let mut changed = 0;
        for (name, sealed) in rows {
            if sealed.split(':').nth(1) == Some(current.as_str()) {
                continue;
            }
            let plain = self.keyring.open(&name, &sealed)?;
            let resealed = self.keyring.seal(&plain)?;
            on_pool!(&self.db, |p| sqlx::query(
                "UPDATE credentials SET value = $1, key_id = $2, updated_at = $3 WHERE name = $4"
            )
            .bind(&resealed)
            .bind(&current)
            .bind(now_ms())
            .bind(&name)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
            changed += 1;
        }
        *self.cache.write().expect("settings cache lock") = None;
        Ok(changed)
    }

    /// Encrypted storage for things that are not settings (OAuth grants and the like),
    /// under a caller-chosen name in the same table and with the same keys.
    pub async fn put_blob(&self, name: &str, value: &str) -> Result<(), CredentialError> {
        let sealed = self.keyring.seal(value)?;
        on_pool!(&self.db, |p| {
            sqlx::query(
            "INSERT INTO credentials (name, value, key_id, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, key_id = excluded.key_id, updated_at = excluded.updated_at"
        )
        .bind(name)
        .bind(&sealed)
        .bind(self.keyring.current_id().unwrap_or_default())
        .bind(now_ms())
        .execute(p)
        .await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn get_blob(&self, name: &str) -> Result<Option<String>, CredentialError> {
        let row: Option<(String,)> = on_pool!(&self.db, |p| sqlx::query_as(
            "SELECT value FROM credentials WHERE name = $1"
        )
        .bind(name)
        .fetch_optional(p)
        .await)?;
        row.map(|(sealed,)| self.keyring.open(name, &sealed))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(current: &str, old: &[&str]) -> Keyring {
        let parse = |s: &str| Key::new(parse_master_key(s).unwrap());
        Keyring {
            current: Some(parse(current)),
            retired: old.iter().map(|s| parse(s)).collect(),
        }
    }

    #[test]
    fn seal_open_and_rotation_keys() {
        let (a, b) = (generate_master_key(), generate_master_key());
        let sealed = ring(&a, &[]).seal("s3cret").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(ring(&a, &[]).open("x", &sealed).unwrap(), "s3cret");
        assert_eq!(ring(&b, &[&a]).open("x", &sealed).unwrap(), "s3cret");
        let err = ring(&b, &[]).open("meta.app_secret", &sealed).unwrap_err();
        assert!(matches!(err, CredentialError::UnknownKey { .. }));
        assert!(err.to_string().contains("SWITCHBOARD_MASTER_KEY"));
    }

    #[test]
    fn tampering_is_detected() {
        let a = generate_master_key();
        let sealed = ring(&a, &[]).seal("s3cret").unwrap();
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let err = ring(&a, &[])
            .open("x", &String::from_utf8(bytes).unwrap())
            .unwrap_err();
        assert!(matches!(err, CredentialError::Corrupt { .. }));
    }

    #[test]
    fn master_key_form_is_checked() {
        assert!(parse_master_key(&generate_master_key()).is_ok());
        assert!(
            parse_master_key("c2hvcnQ=")
                .unwrap_err()
                .contains("32 bytes")
        );
        assert!(parse_master_key("%%%").is_err());
    }
}
