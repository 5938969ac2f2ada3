//! This bridge's entries in the settings catalogue (`[pbx]` in the config file); the binary
//! joins them with core's and the other bridges' into the one catalogue.

use switchboard_core::config::{Kind, Setting};

pub const PBX_GROUP: &str = "PBX bridge";

pub const PBX_BASE_URL: &Setting = &Setting {
    key: "pbx.base_url",
    env: "SWITCHBOARD_PBX_BASE_URL",
    kind: Kind::Url,
    default: None,
    storable: false,
    group: PBX_GROUP,
    label: "AstraPBX API base",
    help: "AstraPBX API base, e.g. https://devpbx.astradial.com.",
};

pub const PBX_TOKEN_TTL_SECS: &Setting = &Setting {
    key: "pbx.token_ttl_secs",
    env: "SWITCHBOARD_PBX_TOKEN_TTL_SECS",
    kind: Kind::Integer,
    default: Some("82800"),
    storable: false,
    group: PBX_GROUP,
    label: "PBX token cache life (s)",
    help: "Cache life of a PBX JWT; shortened to the JWT's own expiry when it has one.",
};

pub const PBX_ALLOWED_PREFIXES: &Setting = &Setting {
    key: "pbx.allowed_prefixes",
    env: "SWITCHBOARD_PBX_ALLOWED_PREFIXES",
    kind: Kind::List,
    default: Some("/api/"),
    storable: false,
    group: PBX_GROUP,
    label: "Allowed PBX path prefixes",
    help: "Comma list of path prefixes callers may reach through the bridge.",
};

pub const PBX_TIMEOUT_SECS: &Setting = &Setting {
    key: "pbx.timeout_secs",
    env: "SWITCHBOARD_PBX_TIMEOUT_SECS",
    kind: Kind::Integer,
    default: Some("15"),
    storable: false,
    group: PBX_GROUP,
    label: "PBX timeout (s)",
    help: "How long a PBX call may take before the bridge answers 504.",
};

/// In the order `credentials list` and the admin form show them.
pub const SETTINGS: &[&Setting] = &[
    PBX_BASE_URL,
    PBX_TOKEN_TTL_SECS,
    PBX_ALLOWED_PREFIXES,
    PBX_TIMEOUT_SECS,
];
