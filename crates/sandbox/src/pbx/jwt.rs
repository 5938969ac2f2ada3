//! Hand-built HS256 JWTs. No JWT crate: the bridge must cope with whatever a real PBX emits, and
//! a compact, inspectable implementation keeps the fake free of a library's own leniencies.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub(super) fn sign(key: &[u8], claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(mac(key, &signing_input).finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// The claims of a token signed with `key`, or `None` for anything malformed or forged.
/// Expiry and revocation are the caller's business: they depend on server state.
pub(super) fn verify(key: &[u8], token: &str) -> Option<Value> {
    let (signing_input, signature) = token.rsplit_once('.')?;
    let (header, payload) = signing_input.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    mac(key, signing_input).verify_slice(&signature).ok()?;
    // Refuse `alg: none` and friends even with a valid MAC: only HS256 is ever issued.
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.get("alg")? != "HS256" {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

fn mac(key: &[u8], input: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(input.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_own_tokens_and_rejects_tampering() {
        let key = [7u8; 32];
        let token = sign(&key, &json!({"sub": "org_1", "exp": 10}));
        assert_eq!(verify(&key, &token).unwrap()["sub"], "org_1");
        assert!(verify(&[8u8; 32], &token).is_none());

        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json!({"sub": "org_2", "exp": 10}).to_string());
        assert!(verify(&key, &format!("{head}.{forged}.{sig}")).is_none());
        assert!(verify(&key, "not-a-jwt").is_none());
    }
}
