//! The WhatsApp Business Account's message templates: synced from Meta ([`sync`]) into this
//! bridge's table ([`stored`]), read into the variables an operator fills ([`model`]), filled
//! from an operator's `/template` lines or a REST call into the exact Graph payload
//! ([`fill`]), listed and sent first to a customer over the admin API ([`api`], [`first`]),
//! and shown on an admin page ([`page`]).
//!
//! `[[bitrix.templates]]` in the config file stays as an override: it names a template's
//! default language and body values (`{name}` is the customer's name), and lets a template be
//! sent when no sync has run (no `meta.waba_id`).

pub mod api;
pub mod fill;
pub mod first;
pub mod model;
pub mod page;
pub mod stored;
pub mod sync;

pub use model::{Approved, Slot, Variable};
