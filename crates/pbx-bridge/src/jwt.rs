//! Reading the two claims the bridge cares about from a PBX JWT, without verifying it: the PBX
//! verifies its own tokens, and we only need `exp` to avoid using a token past its life, and the
//! org's display name for the seed's "JWT token cached for org" line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{
    Engine,
    engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD},
};
use serde_json::Value;

/// Claims of interest; both absent for a token that is not a JWT (an opaque token still works,
/// it just lives the configured TTL).
#[derive(Debug, Default, PartialEq)]
pub struct Claims {
    pub exp: Option<u64>,
    pub org_name: Option<String>,
}

pub fn claims(token: &str) -> Claims {
    let Some(payload) = token.split('.').nth(1) else {
        return Claims::default();
    };
    let Some(json) = URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| URL_SAFE.decode(payload))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    else {
        return Claims::default();
    };
    Claims {
        exp: json.get("exp").and_then(|e| {
            e.as_u64()
                .or_else(|| e.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        }),
        org_name: json
            .get("org_name")
            .and_then(Value::as_str)
            .map(|n| n.chars().take(64).collect()),
    }
}

/// How long to keep a token: the configured TTL, cut short by the token's own `exp` less a
/// margin. The margin (a tenth of what is left, at most five minutes) covers clock skew and
/// the time a forwarded call spends in flight, so a cached token is never presented expired.
pub fn cache_life(ttl: Duration, exp: Option<u64>, now: SystemTime) -> Duration {
    let Some(exp) = exp else {
        return ttl;
    };
    let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let left = Duration::from_secs(exp).saturating_sub(now);
    let margin = (left / 10).min(Duration::from_secs(300));
    ttl.min(left - margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp_and_org_name() {
        assert_eq!(
            claims(&jwt(r#"{"exp": 1700000000, "org_name": "GrandEstancia"}"#)),
            Claims {
                exp: Some(1_700_000_000),
                org_name: Some("GrandEstancia".into())
            }
        );
        assert_eq!(claims(&jwt(r#"{"exp": 17.5}"#)).exp, Some(17));
        assert_eq!(claims("opaque-token"), Claims::default());
        assert_eq!(claims("a.!!!.c"), Claims::default());
        assert_eq!(claims(&jwt("[]")), Claims::default());
    }

    #[test]
    fn life_is_ttl_shortened_by_exp_with_margin() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(82_800);
        assert_eq!(cache_life(ttl, None, now), ttl);
        // A 24 h token: the 23 h TTL is the shorter.
        assert_eq!(cache_life(ttl, Some(1_000_000 + 86_400), now), ttl);
        // A 1 h token: an hour less five minutes.
        assert_eq!(
            cache_life(ttl, Some(1_000_000 + 3_600), now),
            Duration::from_secs(3_300)
        );
        // A 60 s token: less a tenth.
        assert_eq!(
            cache_life(ttl, Some(1_000_000 + 60), now),
            Duration::from_secs(54)
        );
        // Already expired: not cached at all.
        assert_eq!(cache_life(ttl, Some(999_000), now), Duration::ZERO);
    }
}
