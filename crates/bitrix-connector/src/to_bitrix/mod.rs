//! WhatsApp → Bitrix24: Meta's webhook is verified and stored ([`receive`]), a stored
//! notification is split by [`split::process_meta_event`] into one job per message and per
//! status, each pushed once under its own key, so one failing message retries alone and a
//! redelivered or replayed wamid never doubles. Jobs are plain structs; handlers take the
//! shared [`Relay`](crate::relay::Relay) state.
//!
//! Order: a customer's messages reach Bitrix in the order Meta sent them — by Meta's timestamp,
//! then the order they arrived in (inbox row, place in the notification) — whatever the number
//! of workers or processes. A relay job sends only when its message is next: every earlier
//! notification that mentions the customer has been split into jobs, and every earlier
//! message of the customer is in Bitrix or has nothing left to try (its job finished without
//! sending, or is a dead letter). Otherwise the job is postponed (not sleeping in a worker
//! slot, and not spending an attempt), and the message before it wakes it when done. So a
//! message whose relay keeps failing holds the customer's later ones through its retries,
//! until it is sent or dead-lettered; `jobs retry` of a dead letter then delivers it late.
//!
//! Read [`receive`], [`split`], [`order`], then [`message`] (with [`render`] and [`lead`]) and
//! [`status`].

pub mod conversation;
pub mod lead;
pub mod message;
pub mod order;
pub mod receive;
pub mod render;
pub mod split;
pub mod status;
