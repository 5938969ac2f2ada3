//! This bridge's entries in the settings catalogue (`[wabridges]` in the config file); the binary
//! joins them with core's and the other bridges' into the one catalogue.

use switchboard_core::config::{Kind, Setting, Table};

pub const WABRIDGES_GROUP: &str = "wabridges hooks";

pub const WABRIDGES_TOKEN: &Setting = &Setting {
    key: "wabridges.token",
    env: "SWITCHBOARD_WABRIDGES_TOKEN",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: WABRIDGES_GROUP,
    label: "Hook token",
    help: "Shared secret of the wabridges hooks: `?token=…` in each webhook_url, or `Authorization: Bearer …`.",
};

/// In the order `credentials list` and the admin form show them.
pub const SETTINGS: &[&Setting] = &[WABRIDGES_TOKEN];

/// `[[wabridges.forward]]`: the subscribers each processed event is forwarded to.
pub const FORWARD: &Table = &Table {
    key: "wabridges.forward",
    parse: crate::forward::parse_targets,
};

/// This bridge's config-file tables.
pub const TABLES: &[&Table] = &[FORWARD];
