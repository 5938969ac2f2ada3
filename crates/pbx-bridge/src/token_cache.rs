//! PBX JWTs per org, in memory, with one login at a time per org.
//!
//! The key is `(api_key, SHA-256(api_secret))` (SPEC §2): a caller with a rotated secret lands on
//! a new key and logs in, instead of riding a token issued under the old secret, and the cache
//! holds no secret, only its digest.
//!
//! Single flight: every org has a slot with the current token behind a plain mutex (the hot path,
//! never held across an await) and a login lock (an async mutex held across the login). A caller
//! that finds no valid token takes the login lock, looks again — someone may have logged in
//! while it waited — and only then logs in. After a PBX 401, [`TokenCache::invalidate`] drops
//! the token only if it is still the one that was refused: of N callers refused with the same
//! token, the first drops it and the rest find the replacement, so N refusals cost one login.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest, Sha256};
use switchboard_core::Secret;

use crate::jwt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    api_key: String,
    secret_digest: [u8; 32],
}

impl CacheKey {
    pub fn new(api_key: &str, api_secret: &Secret) -> Self {
        Self {
            api_key: api_key.to_string(),
            secret_digest: Sha256::digest(api_secret.expose().as_bytes()).into(),
        }
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", crate::logline::short_org(&self.api_key))
    }
}

/// A token handed to a caller, and whether getting it cost a login.
#[derive(Debug, Clone)]
pub struct Obtained {
    pub jwt: Secret,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Cache,
    /// This caller logged in; the token is cached for `life`.
    Login {
        life: Duration,
    },
}

pub struct TokenCache {
    ttl: Duration,
    slots: Mutex<HashMap<CacheKey, Arc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<Cached>>,
    login: tokio::sync::Mutex<()>,
    /// These credentials have logged in before (the slot goes when a login with them fails).
    proven: AtomicBool,
}

struct Cached {
    jwt: Secret,
    valid_until: Instant,
}

impl Slot {
    fn valid(&self, now: Instant) -> Option<Secret> {
        self.current
            .lock()
            .expect("token slot lock")
            .as_ref()
            .filter(|c| c.valid_until > now)
            .map(|c| c.jwt.clone())
    }
}

impl TokenCache {
    /// `ttl` is the longest a token is kept (`pbx.token_ttl_secs`).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The org's valid token, or the result of `login` — called by at most one caller per org at
    /// a time. A failed login caches nothing.
    pub async fn get<F, Fut, E>(&self, key: &CacheKey, login: F) -> Result<Obtained, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Secret, E>>,
    {
        let slot = self.slot(key);
        if let Some(jwt) = slot.valid(Instant::now()) {
            return Ok(Obtained {
                jwt,
                source: Source::Cache,
            });
        }
        let _login = slot.login.lock().await;
        if let Some(jwt) = slot.valid(Instant::now()) {
            return Ok(Obtained {
                jwt,
                source: Source::Cache,
            });
        }
        match login().await {
            Ok(jwt) => {
                let life =
                    jwt::cache_life(self.ttl, jwt::claims(jwt.expose()).exp, SystemTime::now());
                *slot.current.lock().expect("token slot lock") = Some(Cached {
                    jwt: jwt.clone(),
                    valid_until: Instant::now() + life,
                });
                slot.proven.store(true, Ordering::Relaxed);
                self.forget_other_secrets(key);
                Ok(Obtained {
                    jwt,
                    source: Source::Login { life },
                })
            }
            Err(e) => {
                self.forget_if_empty(key, &slot);
                Err(e)
            }
        }
    }

    /// Whether these credentials have logged in before, in this process.
    pub fn proven(&self, key: &CacheKey) -> bool {
        self.slots
            .lock()
            .expect("token slots lock")
            .get(key)
            .is_some_and(|s| s.proven.load(Ordering::Relaxed))
    }

    /// Drops the org's token if it is still `refused`; returns whether it was. A caller whose
    /// token was already replaced by another caller's re-login leaves the new one alone.
    pub fn invalidate(&self, key: &CacheKey, refused: &Secret) -> bool {
        let Some(slot) = self
            .slots
            .lock()
            .expect("token slots lock")
            .get(key)
            .cloned()
        else {
            return false;
        };
        let mut current = slot.current.lock().expect("token slot lock");
        if current.as_ref().is_some_and(|c| &c.jwt == refused) {
            *current = None;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("token slots lock").len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: &CacheKey) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("token slots lock")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// After a secret rotation the old pair never logs in again; dropping its slot keeps the
    /// map at one slot per org that works.
    fn forget_other_secrets(&self, key: &CacheKey) {
        self.slots
            .lock()
            .expect("token slots lock")
            .retain(|k, _| k.api_key != key.api_key || k == key);
    }

    /// Refused credentials leave no slot behind, so callers inventing keys can't grow the map.
    fn forget_if_empty(&self, key: &CacheKey, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().expect("token slots lock");
        if let Some(existing) = slots.get(key)
            && Arc::ptr_eq(existing, slot)
            && slot.current.lock().expect("token slot lock").is_none()
        {
            slots.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn key(secret: &str) -> CacheKey {
        CacheKey::new("org_1938b5c0e7", &Secret::new(secret))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_share_one_login() {
        let cache = Arc::new(TokenCache::new(Duration::from_secs(60)));
        let logins = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, logins) = (cache.clone(), logins.clone());
                tokio::spawn(async move {
                    cache
                        .get(&key("s"), || async {
                            logins.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, ()>(Secret::new("jwt-1"))
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut from_login = 0;
        for t in tasks {
            let got = t.await.unwrap();
            assert_eq!(got.jwt.expose(), "jwt-1");
            from_login += matches!(got.source, Source::Login { .. }) as u32;
        }
        assert_eq!(logins.load(Ordering::SeqCst), 1);
        assert_eq!(from_login, 1);
    }

    #[tokio::test]
    async fn invalidate_only_drops_the_refused_token() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let issue = |t: &'static str| move || async move { Ok::<_, ()>(Secret::new(t)) };
        cache.get(&key("s"), issue("jwt-1")).await.unwrap();
        assert!(cache.invalidate(&key("s"), &Secret::new("jwt-1")));
        let fresh = cache.get(&key("s"), issue("jwt-2")).await.unwrap();
        assert_eq!(fresh.jwt.expose(), "jwt-2");
        // A late caller still holding jwt-1 must not throw jwt-2 away.
        assert!(!cache.invalidate(&key("s"), &Secret::new("jwt-1")));
        let cached = cache.get(&key("s"), issue("jwt-3")).await.unwrap();
        assert_eq!(
            (cached.jwt.expose(), cached.source),
            ("jwt-2", Source::Cache)
        );
    }

    #[tokio::test]
    async fn a_new_secret_is_a_new_key_and_retires_the_old_slot() {
        let cache = TokenCache::new(Duration::from_secs(60));
        cache
            .get(&key("old"), || async {
                Ok::<_, ()>(Secret::new("jwt-old"))
            })
            .await
            .unwrap();
        let got = cache
            .get(&key("new"), || async {
                Ok::<_, ()>(Secret::new("jwt-new"))
            })
            .await
            .unwrap();
        assert_eq!(got.jwt.expose(), "jwt-new");
        assert!(matches!(got.source, Source::Login { .. }));
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn failed_logins_cache_nothing_and_leave_no_slot() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let err = cache
            .get(&key("wrong"), || async { Err::<Secret, _>("refused") })
            .await
            .unwrap_err();
        assert_eq!(err, "refused");
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn tokens_live_no_longer_than_the_ttl() {
        let cache = TokenCache::new(Duration::ZERO);
        let logins = AtomicU32::new(0);
        for _ in 0..2 {
            cache
                .get(&key("s"), || async {
                    logins.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Secret::new("jwt"))
                })
                .await
                .unwrap();
        }
        assert_eq!(logins.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn key_debug_hides_secret_and_most_of_the_key() {
        let shown = format!("{:?}", key("secret_xxxxx"));
        assert!(!shown.contains("secret_xxxxx") && !shown.contains("org_1938b5c0e7"));
    }
}
