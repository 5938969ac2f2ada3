//! The PBX endpoint allow-list must never panic, and whatever it accepts must be a plain path
//! under an allowed prefix: no scheme, no authority, no way back up the tree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let allowed = vec!["/api/".to_string()];
    if let Ok(endpoint) = pbx_bridge::endpoint::parse(raw, &allowed) {
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("://"), "accepted a scheme: {raw:?}");
        assert!(raw.starts_with("/api/"), "accepted outside the allow-list: {raw:?}");
        assert!(!raw.contains(".."), "accepted a parent reference: {raw:?}");
    }
});
