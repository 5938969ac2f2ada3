//! Core against a real database (SQLite, or PostgreSQL with `SWITCHBOARD_TEST_DATABASE=postgres`)
//! in one test executable (one link instead of one per file):
//!
//! - `bridge_settings`: stand-ins for bridge settings, shaped like theirs (core can't depend on
//!   a bridge).
//! - `pages`: the operator pages at router level hold the admin gate, refuse cross-site
//!   writes, store credentials, show the setup checklist, replay events redacted and retry
//!   dead letters; an event's status follows its jobs, events and jobs link both ways, and
//!   events are found by what their payload holds.
//! - `platform`: the inbox keeps and dedupes what it acknowledged, the job queue retries on its
//!   schedule and dead-letters, and the credential store survives key rotation.

mod bridge_settings;
mod pages;
mod platform;
