//! What a bridge log line may show. The seed's lines name the org and quote the request and the
//! PBX answer; these functions keep that useful without letting a credential through: the org
//! key is shortened (`org_1938b...`), quoted text is cut, and any occurrence of the caller's
//! secret or the JWT in it is masked (a PBX may echo either back).

use switchboard_core::{Secret, secret::MASK};

/// Longest quote of a body or answer in a log line.
const QUOTE_CHARS: usize = 200;

/// The first few characters of an org's `api_key`, as the seed shows them (`org_1938b...`):
/// enough to tell orgs apart in a log, never more than two thirds of the key.
pub fn short_org(api_key: &str) -> String {
    let len = api_key.chars().count();
    let shown: String = api_key.chars().take((len * 2 / 3).min(9)).collect();
    format!("{shown}...")
}

/// `text` cut to a log-friendly length, with every `hide` value masked.
pub fn quote(text: &[u8], hide: &[&Secret]) -> String {
    // Only the head can be shown; it is long enough that any secret starting inside the shown
    // part is whole, so it is still found and masked.
    let longest = hide.iter().map(|s| s.expose().len()).max().unwrap_or(0);
    let head = &text[..text.len().min(QUOTE_CHARS * 4 + longest)];
    let mut text = String::from_utf8_lossy(head).into_owned();
    for secret in hide {
        // Masking before cutting, so a secret straddling the cut can't leave a prefix behind.
        if !secret.expose().is_empty() {
            text = text.replace(secret.expose(), MASK);
        }
    }
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() > QUOTE_CHARS {
        let cut: String = text.chars().take(QUOTE_CHARS).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_is_shortened() {
        assert_eq!(short_org("org_1938b5c0e7a4d2"), "org_1938b...");
        assert_eq!(short_org("org_1938b5c0"), "org_1938...");
        assert_eq!(short_org("short"), "sho...");
        assert_eq!(short_org(""), "...");
    }

    #[test]
    fn quotes_are_cut_and_masked() {
        let secret = Secret::new("secret_xxxxx");
        let jwt = Secret::new("eyJhbGciOi.payload.sig");
        let q = quote(
            br#"{"echo":"secret_xxxxx","t":"eyJhbGciOi.payload.sig"}"#,
            &[&secret, &jwt],
        );
        assert!(
            !q.contains("secret_xxxxx") && !q.contains("payload.sig"),
            "{q}"
        );
        assert!(q.contains(MASK));
        let long = quote("é".repeat(500).as_bytes(), &[]);
        assert_eq!(long.chars().count(), QUOTE_CHARS + 3);
        assert_eq!(quote(b"a\nb", &[]), "a b");
    }
}
