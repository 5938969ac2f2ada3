//! This bridge's entries in the settings catalogue (`[meta]` and `[bitrix]` in the config
//! file); the binary joins them with core's and the other bridges' into the one catalogue.

use switchboard_core::config::{Format, Kind, Setting, Table};

pub const META_GROUP: &str = "Meta WhatsApp";
pub const BITRIX_GROUP: &str = "Bitrix24";

pub const META_GRAPH_URL: &Setting = &Setting {
    key: "meta.graph_url",
    env: "SWITCHBOARD_META_GRAPH_URL",
    kind: Kind::Url,
    default: Some("https://graph.facebook.com"),
    storable: false,
    group: META_GROUP,
    label: "Graph API base",
    help: "Graph API base URL.",
};

/// `v` and the version Meta publishes, as it appears in Graph API paths (`/v23.0/...`).
const GRAPH_VERSION_FORM: Format = Format {
    expected: "a Graph API version like v23.0",
    check: |v| {
        v.strip_prefix('v')
            .and_then(|n| n.split_once('.'))
            .is_some_and(|(major, minor)| {
                [major, minor]
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            })
    },
};

pub const META_GRAPH_VERSION: &Setting = &Setting {
    key: "meta.graph_version",
    env: "SWITCHBOARD_META_GRAPH_VERSION",
    kind: Kind::Format(&GRAPH_VERSION_FORM),
    default: Some("v23.0"),
    storable: false,
    group: META_GROUP,
    label: "Graph API version",
    help: "Pinned Graph API version, e.g. v23.0.",
};

pub const META_APP_ID: &Setting = &Setting {
    key: "meta.app_id",
    env: "SWITCHBOARD_META_APP_ID",
    kind: Kind::Integer,
    default: None,
    storable: true,
    group: META_GROUP,
    label: "App ID",
    help: "Meta app id.",
};

pub const META_APP_SECRET: &Setting = &Setting {
    key: "meta.app_secret",
    env: "SWITCHBOARD_META_APP_SECRET",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: META_GROUP,
    label: "App Secret",
    help: "Signs inbound webhooks (X-Hub-Signature-256).",
};

pub const META_ACCESS_TOKEN: &Setting = &Setting {
    key: "meta.access_token",
    env: "SWITCHBOARD_META_ACCESS_TOKEN",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: META_GROUP,
    label: "Access Token",
    help: "Permanent System User token with whatsapp_business_messaging.",
};

pub const META_PHONE_NUMBER_ID: &Setting = &Setting {
    key: "meta.phone_number_id",
    env: "SWITCHBOARD_META_PHONE_NUMBER_ID",
    kind: Kind::Integer,
    default: None,
    storable: true,
    group: META_GROUP,
    label: "Phone Number ID",
    help: "The business number's id, used for sending and media.",
};

pub const META_WABA_ID: &Setting = &Setting {
    key: "meta.waba_id",
    env: "SWITCHBOARD_META_WABA_ID",
    kind: Kind::Integer,
    default: None,
    storable: true,
    group: META_GROUP,
    label: "WABA ID",
    help: "WhatsApp Business Account id; its message templates are loaded from it.",
};

pub const META_VERIFY_TOKEN: &Setting = &Setting {
    key: "meta.verify_token",
    env: "SWITCHBOARD_META_VERIFY_TOKEN",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: META_GROUP,
    label: "Webhook Verify Token",
    help: "The string typed in Meta's webhook settings for the GET handshake.",
};

pub const BITRIX_PORTAL_URL: &Setting = &Setting {
    key: "bitrix.portal_url",
    env: "SWITCHBOARD_BITRIX_PORTAL_URL",
    kind: Kind::Url,
    default: None,
    storable: true,
    group: BITRIX_GROUP,
    label: "Portal URL",
    help: "Your portal, e.g. https://acme.bitrix24.com.",
};

pub const BITRIX_CLIENT_ID: &Setting = &Setting {
    key: "bitrix.client_id",
    env: "SWITCHBOARD_BITRIX_CLIENT_ID",
    kind: Kind::Text,
    default: None,
    storable: true,
    group: BITRIX_GROUP,
    label: "Client ID",
    help: "Local application client id (local.…).",
};

pub const BITRIX_CLIENT_SECRET: &Setting = &Setting {
    key: "bitrix.client_secret",
    env: "SWITCHBOARD_BITRIX_CLIENT_SECRET",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: BITRIX_GROUP,
    label: "Client Secret",
    help: "Local application client secret; only ever sent to the OAuth server.",
};

pub const BITRIX_CONNECTOR_ID: &Setting = &Setting {
    key: "bitrix.connector_id",
    env: "SWITCHBOARD_BITRIX_CONNECTOR_ID",
    kind: Kind::Text,
    default: Some("switchboard_whatsapp"),
    storable: true,
    group: BITRIX_GROUP,
    label: "Connector ID",
    help: "Contact Center connector id ([a-z0-9_]).",
};

pub const BITRIX_LINE_ID: &Setting = &Setting {
    key: "bitrix.line_id",
    env: "SWITCHBOARD_BITRIX_LINE_ID",
    kind: Kind::Integer,
    default: None,
    storable: true,
    group: BITRIX_GROUP,
    label: "Open Channel (LINE) ID",
    help: "Numeric id of the Open Channel the connector is bound to.",
};

pub const BITRIX_APPLICATION_TOKEN: &Setting = &Setting {
    key: "bitrix.application_token",
    env: "SWITCHBOARD_BITRIX_APPLICATION_TOKEN",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: BITRIX_GROUP,
    label: "Application Token",
    help: "Verifies /bitrix/events calls. Leave blank to use the token of the verified install; never learned from an event.",
};

pub const BITRIX_OAUTH_URL: &Setting = &Setting {
    key: "bitrix.oauth_url",
    env: "SWITCHBOARD_BITRIX_OAUTH_URL",
    kind: Kind::Url,
    default: Some("https://oauth.bitrix.info"),
    storable: false,
    group: BITRIX_GROUP,
    label: "OAuth server",
    help: "Bitrix24 OAuth server.",
};

/// In the order `credentials list` and the admin form show them.
pub const BITRIX_BATCH_SIZE: &Setting = &Setting {
    key: "bitrix.batch_size",
    env: "SWITCHBOARD_BITRIX_BATCH_SIZE",
    kind: Kind::Integer,
    default: Some("50"),
    storable: false,
    group: BITRIX_GROUP,
    label: "Calls per batch",
    help: "How many Bitrix24 REST calls may travel in one `batch` request (at most 50). 1 sends each call on its own, which the portal's 2 requests/s limit makes up to 50 times slower under a burst.",
};

/// `true` or `false`.
const BOOL_FORM: Format = Format {
    expected: "true or false",
    check: |v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "false"),
};

pub const BITRIX_MARK_READ: &Setting = &Setting {
    key: "bitrix.mark_read",
    env: "SWITCHBOARD_BITRIX_MARK_READ",
    kind: Kind::Format(&BOOL_FORM),
    default: Some("true"),
    storable: false,
    group: BITRIX_GROUP,
    label: "Mark read on reply",
    help: "When an operator replies, mark the customer's latest WhatsApp message read (blue ticks). false leaves it unread.",
};

pub const SETTINGS: &[&Setting] = &[
    META_GRAPH_URL,
    META_GRAPH_VERSION,
    META_APP_ID,
    META_APP_SECRET,
    META_ACCESS_TOKEN,
    META_PHONE_NUMBER_ID,
    META_WABA_ID,
    META_VERIFY_TOKEN,
    BITRIX_PORTAL_URL,
    BITRIX_CLIENT_ID,
    BITRIX_CLIENT_SECRET,
    BITRIX_CONNECTOR_ID,
    BITRIX_LINE_ID,
    BITRIX_APPLICATION_TOKEN,
    BITRIX_OAUTH_URL,
    BITRIX_BATCH_SIZE,
    BITRIX_MARK_READ,
];

/// `[[bitrix.templates]]`: the approved templates an operator may send by name.
pub const TEMPLATES: &Table = &Table {
    key: "bitrix.templates",
    parse: crate::to_whatsapp::template::parse_templates,
};

/// `[[bitrix.channels]]`: each WhatsApp number and the Open Channel line it relays into.
pub const CHANNELS: &Table = &Table {
    key: "bitrix.channels",
    parse: crate::channels::parse_channels,
};

/// This bridge's config-file tables.
pub const TABLES: &[&Table] = &[TEMPLATES, CHANNELS];
