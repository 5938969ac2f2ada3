//! Any bytes in a (correctly signed) Meta webhook parse or are refused; splitting into units
//! never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = bitrix_connector::meta_payload::parse(data) {
        let units = bitrix_connector::meta_payload::units(&envelope);
        let _ = bitrix_connector::meta_payload::envelope_key(&units, data);
    }
});
