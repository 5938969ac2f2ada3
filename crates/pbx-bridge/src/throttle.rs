//! Refused logins, counted per client address and per `api_key`, so `/whatsapp-bridge` can't be
//! used to try org credentials against the PBX at the speed of the network. After
//! [`FAILURES`] refused logins within [`WINDOW`] for one `api_key` from anywhere, or
//! [`CLIENT_FAILURES`] from one client, further logins for that key or from there get 429 with
//! `Retry-After` until the window has passed. A client gets ten orgs' worth: MSG91 sends every
//! org's flows from a few shared addresses, and one org with a wrong secret (held back at its
//! own [`FAILURES`]) must not lock the others out.
//!
//! Only logins are counted: a call riding a cached token never reaches this, and an org whose
//! credentials have logged in before is let through regardless (see `Proxy::token`), so guesses
//! against an org's key can't lock that org's working flows out. Attempts are counted when they
//! start and refunded unless the PBX refused them, so guesses sent in parallel can't overrun the
//! limit while the first ones are still waiting for the PBX.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Refused logins allowed per `api_key` in one [`WINDOW`].
pub const FAILURES: u32 = 10;
/// Refused logins allowed per client address in one [`WINDOW`].
pub const CLIENT_FAILURES: u32 = 10 * FAILURES;
pub const WINDOW: Duration = Duration::from_secs(300);
/// Counters kept at most; past it the oldest window is dropped, so invented keys can't grow
/// the map without bound.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    /// An IPv6 client counts by its /64: one host usually has the whole prefix.
    Client(IpAddr),
    Org(String),
}

impl Source {
    fn allowed(&self) -> u32 {
        match self {
            Source::Client(_) => CLIENT_FAILURES,
            Source::Org(_) => FAILURES,
        }
    }
}

struct Window {
    started: Instant,
    failures: u32,
}

#[derive(Default)]
pub struct LoginThrottle {
    windows: Mutex<HashMap<Source, Window>>,
}

/// One login attempt being counted; hand it back to [`LoginThrottle::refund`] unless the PBX
/// refused the credentials.
#[must_use]
pub struct Attempt {
    counted: Vec<(Source, Instant)>,
}

impl LoginThrottle {
    /// Counts a login attempt from `client` for `api_key`, or refuses it with the time until
    /// the fuller of the two windows ends.
    pub fn attempt(&self, client: Option<IpAddr>, api_key: &str) -> Result<Attempt, Duration> {
        let sources: Vec<Source> = client
            .map(|ip| Source::Client(per_host(ip)))
            .into_iter()
            .chain([Source::Org(api_key.to_string())])
            .collect();
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("throttle lock");
        let wait = sources
            .iter()
            .filter_map(|s| windows.get(s).map(|w| (s, w)))
            .filter(|(s, w)| now.duration_since(w.started) < WINDOW && w.failures >= s.allowed())
            .map(|(_, w)| w)
            .map(|w| WINDOW - now.duration_since(w.started))
            .max();
        if let Some(wait) = wait {
            return Err(wait.max(Duration::from_secs(1)));
        }
        let mut counted = Vec::with_capacity(sources.len());
        for source in sources {
            if !windows.contains_key(&source) && windows.len() >= MAX_TRACKED {
                make_room(&mut windows, now);
            }
            let w = windows.entry(source.clone()).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now.duration_since(w.started) >= WINDOW {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            w.failures += 1;
            counted.push((source, w.started));
        }
        Ok(Attempt { counted })
    }

    /// The attempt was not a refusal (it logged in, or the PBX failed): it doesn't count.
    pub fn refund(&self, attempt: Attempt) {
        let mut windows = self.windows.lock().expect("throttle lock");
        for (source, started) in attempt.counted {
            if let Some(w) = windows.get_mut(&source)
                && w.started == started
            {
                w.failures = w.failures.saturating_sub(1);
            }
        }
    }
}

fn per_host(ip: IpAddr) -> IpAddr {
    match switchboard_core::client_addr::unmap(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

fn make_room(windows: &mut HashMap<Source, Window>, now: Instant) {
    windows.retain(|_, w| now.duration_since(w.started) < WINDOW);
    if windows.len() >= MAX_TRACKED
        && let Some(oldest) = windows
            .iter()
            .min_by_key(|(_, w)| w.started)
            .map(|(s, _)| s.clone())
    {
        windows.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_client_is_held_back_after_its_refusals_and_refunds_do_not_count() {
        let t = LoginThrottle::default();
        for i in 0..CLIENT_FAILURES {
            let a = t.attempt(ip("203.0.113.1"), &format!("org_{i}")).unwrap();
            drop(a);
        }
        let wait = t.attempt(ip("203.0.113.1"), "org_new").err().unwrap();
        assert!(
            wait > Duration::from_secs(200) && wait <= WINDOW,
            "{wait:?}"
        );
        // Another client, another org: untouched.
        assert!(t.attempt(ip("203.0.113.2"), "org_other").is_ok());

        let t = LoginThrottle::default();
        for _ in 0..3 * FAILURES {
            let a = t.attempt(ip("203.0.113.1"), "org_a").unwrap();
            t.refund(a);
        }
        assert!(t.attempt(ip("203.0.113.1"), "org_a").is_ok());
    }

    #[test]
    fn an_org_is_held_back_whoever_guesses_and_ipv6_counts_per_prefix() {
        let t = LoginThrottle::default();
        for i in 0..FAILURES {
            let _ = t.attempt(ip(&format!("198.51.100.{i}")), "org_a").unwrap();
        }
        assert!(t.attempt(ip("198.51.100.200"), "org_a").is_err());
        assert!(t.attempt(None, "org_a").is_err());
        assert!(t.attempt(ip("198.51.100.200"), "org_b").is_ok());

        let t = LoginThrottle::default();
        for i in 0..CLIENT_FAILURES {
            let _ = t
                .attempt(ip(&format!("2001:db8::{i:x}")), &format!("org_{i}"))
                .unwrap();
        }
        assert!(t.attempt(ip("2001:db8::ffff"), "org_z").is_err());
        assert!(t.attempt(ip("2001:db8:0:1::1"), "org_z").is_ok());
    }

    #[test]
    fn one_org_with_a_wrong_secret_does_not_hold_back_other_orgs_on_the_same_address() {
        let t = LoginThrottle::default();
        for _ in 0..FAILURES {
            let _ = t.attempt(ip("203.0.113.9"), "org_misconfigured").unwrap();
        }
        assert!(t.attempt(ip("203.0.113.9"), "org_misconfigured").is_err());
        assert!(t.attempt(ip("203.0.113.9"), "org_fine").is_ok());
    }

    #[test]
    fn invented_keys_cannot_grow_the_map_without_bound() {
        let t = LoginThrottle::default();
        for i in 0..MAX_TRACKED + 50 {
            let _ = t.attempt(None, &format!("org_{i}")).unwrap();
        }
        assert!(t.windows.lock().unwrap().len() <= MAX_TRACKED);
    }
}
