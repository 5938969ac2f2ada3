//! Any bytes posted to a wabridges hook parse or are refused; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = wabridges_hooks::events::parse(data) {
        let _ = wabridges_hooks::events::dedupe_key("fuzz", &parsed, data, 0);
    }
});
