//! Bitrix events are PHP-style nested form keys; hostile nesting or encoding must not panic
//! or blow up memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bitrix_connector::php_form::fields(data, ["event", "auth[application_token]"]);
    let _ = bitrix_connector::php_form::without_secrets(data);
    let Ok(value) = bitrix_connector::php_form::parse(data) else {
        return;
    };
    let _ = bitrix_connector::php_form::text(&value, &["data", "MESSAGES", "0", "message", "text"]);
    let _ = bitrix_connector::php_form::items(value.get("data").and_then(|d| d.get("MESSAGES")));
});
