//! The PBX endpoint allow-list must never panic, and whatever it accepts must be a plain path
//! under an allowed prefix: no scheme, no authority, no way back up the tree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let allowed = vec!["/api/".to_string()];
    if let Ok(endpoint) = pbx_bridge::endpoint::parse(raw, &allowed) {
        // Query strings pass through untouched (SPEC §2); the rules are about the path.
        let path = raw.split('?').next().unwrap_or_default();
        let _ = format!("{endpoint:?}");
        assert!(!path.contains("://"), "accepted a scheme: {raw:?}");
        assert!(path.starts_with("/api/"), "accepted outside the allow-list: {raw:?}");
        assert!(!path.contains(".."), "accepted a parent reference: {raw:?}");
        assert!(!path.contains("//"), "accepted an authority: {raw:?}");
    }
});
