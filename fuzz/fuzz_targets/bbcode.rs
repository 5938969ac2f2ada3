//! Operator text is whatever an operator typed (SPEC §7): the BBCode converter must never panic
//! or hang, and no tag of the set it converts may survive in what goes to WhatsApp when the
//! input was well-formed markup around plain words.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// Tags the converter knows; wrapped around bracket-free text they must all disappear.
const KNOWN: &[(&str, &str)] = &[
    ("[b]", "[/b]"),
    ("[I]", "[/I]"),
    ("[s]", "[/s]"),
    ("[u]", "[/u]"),
    ("[quote]", "[/quote]"),
    ("[code]", "[/code]"),
    ("[url=https://e.x]", "[/url]"),
    ("[user=5]", "[/user]"),
    ("[img]", "[/img]"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = bitrix_connector::bbcode::to_whatsapp(text);
    // The same text inside each known tag pair: when the text has no brackets of its own (and
    // no entities, which may legitimately decode to a literal `[b]`), no tag may be left.
    if !text.contains(['[', ']', '&']) && text.len() < 4096 {
        for (open, close) in KNOWN {
            let out = bitrix_connector::bbcode::to_whatsapp(&format!("{open}{text}{close}"));
            let lower = out.to_ascii_lowercase();
            for (o, c) in KNOWN {
                let (o, c) = (o.to_ascii_lowercase(), c.to_ascii_lowercase());
                assert!(
                    !lower.contains(&o) && !lower.contains(&c),
                    "{open}{text:?}{close} → {out:?}"
                );
            }
        }
    }
});
