//! Meta's `X-Hub-Signature-256`: HMAC-SHA256 of the raw body with the App Secret (protocol
//! §2.1). Computed over the bytes exactly as received; never over re-serialized JSON.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// True when `header` is `sha256=<hex>` of `body` under `app_secret`. The comparison is
/// constant time (`verify_slice`), so timing reveals nothing about the expected value.
pub fn verify(app_secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn accepts_only_the_exact_body_and_secret() {
        let body = br#"{"a":"\u00e9"}"#;
        let good = sign("s3cret", body);
        assert!(verify("s3cret", Some(&good), body));
        assert!(!verify("other", Some(&good), body));
        assert!(!verify("s3cret", Some(&good), r#"{"a":"é"}"#.as_bytes()));
        assert!(!verify("s3cret", None, body));
        assert!(!verify("s3cret", Some("sha1=abc"), body));
        assert!(!verify("s3cret", Some("sha256=zz"), body));
        assert!(!verify("s3cret", Some(&good[..good.len() - 2]), body));
    }
}
