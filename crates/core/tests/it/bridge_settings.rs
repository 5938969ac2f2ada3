//! Stand-ins for the bridges' catalogue entries these tests set (same keys, environment
//! names, kinds and defaults): core can't depend on a bridge, and its form and store are
//! exercised on settings shaped like theirs.

#![allow(dead_code)]

use switchboard_core::config::{Catalogue, Kind, Setting};

pub const WABRIDGES_TOKEN: &Setting = &Setting {
    key: "wabridges.token",
    env: "SWITCHBOARD_WABRIDGES_TOKEN",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: "wabridges hooks",
    label: "Hook token",
    help: "Shared secret of the wabridges hooks: `?token=…` in each webhook_url, or `Authorization: Bearer …`.",
};

pub const META_APP_ID: &Setting = &Setting {
    key: "meta.app_id",
    env: "SWITCHBOARD_META_APP_ID",
    kind: Kind::Text,
    default: None,
    storable: true,
    group: "Meta WhatsApp",
    label: "App ID",
    help: "Meta app id.",
};

pub const META_APP_SECRET: &Setting = &Setting {
    key: "meta.app_secret",
    env: "SWITCHBOARD_META_APP_SECRET",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: "Meta WhatsApp",
    label: "App Secret",
    help: "Signs inbound webhooks (X-Hub-Signature-256).",
};

pub const META_ACCESS_TOKEN: &Setting = &Setting {
    key: "meta.access_token",
    env: "SWITCHBOARD_META_ACCESS_TOKEN",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: "Meta WhatsApp",
    label: "Access Token",
    help: "Permanent System User token with whatsapp_business_messaging.",
};

pub const META_PHONE_NUMBER_ID: &Setting = &Setting {
    key: "meta.phone_number_id",
    env: "SWITCHBOARD_META_PHONE_NUMBER_ID",
    kind: Kind::Text,
    default: None,
    storable: true,
    group: "Meta WhatsApp",
    label: "Phone Number ID",
    help: "The business number's id, used for sending and media.",
};

pub const BITRIX_PORTAL_URL: &Setting = &Setting {
    key: "bitrix.portal_url",
    env: "SWITCHBOARD_BITRIX_PORTAL_URL",
    kind: Kind::Url,
    default: None,
    storable: true,
    group: "Bitrix24",
    label: "Portal URL",
    help: "Your portal, e.g. https://acme.bitrix24.com.",
};

pub const BITRIX_CLIENT_SECRET: &Setting = &Setting {
    key: "bitrix.client_secret",
    env: "SWITCHBOARD_BITRIX_CLIENT_SECRET",
    kind: Kind::Secret,
    default: None,
    storable: true,
    group: "Bitrix24",
    label: "Client Secret",
    help: "Local application client secret; only ever sent to the OAuth server.",
};

pub const BITRIX_CONNECTOR_ID: &Setting = &Setting {
    key: "bitrix.connector_id",
    env: "SWITCHBOARD_BITRIX_CONNECTOR_ID",
    kind: Kind::Text,
    default: Some("switchboard_whatsapp"),
    storable: true,
    group: "Bitrix24",
    label: "Connector ID",
    help: "Contact Center connector id ([a-z0-9_]).",
};

pub const SETTINGS: &[&Setting] = &[
    WABRIDGES_TOKEN,
    META_APP_ID,
    META_APP_SECRET,
    META_ACCESS_TOKEN,
    META_PHONE_NUMBER_ID,
    BITRIX_PORTAL_URL,
    BITRIX_CLIENT_SECRET,
    BITRIX_CONNECTOR_ID,
];

/// Core's settings and the stand-ins above.
pub fn catalogue() -> Catalogue {
    Catalogue::new(&[SETTINGS])
}
