//! The Bitrix24 connector's router over real HTTP against the sandbox's fake Meta and fake
//! Bitrix24 portal, on a fresh database (SQLite, or PostgreSQL with
//! `SWITCHBOARD_TEST_DATABASE=postgres`), in one test executable (one link instead of one per
//! file):
//!
//! - `burst`: bursts under the portal's rate limit, coalesced into `batch` calls; one refresh
//!   however many calls find the token expired, in one process or two.
//! - `channels`: two WhatsApp numbers on two Open Channel lines — each message in its number's
//!   line, each reply from its line's number, windows per number, one lead per customer, an
//!   unknown number answered and not relayed, a database from before channels carried over.
//! - `conversation`: the whole conversation reaches the operator — quotes, forwards,
//!   reactions, ads, hidden and changed numbers, media that can't be fetched, Flows and
//!   orders, and a note when an operator edits or deletes a sent reply.
//! - `inbound`: WhatsApp to Bitrix24 — signatures, dedupe, one lead per number, media
//!   re-hosting, OAuth refresh and installs, outages and dead letters.
//! - `outbound`: operator replies to WhatsApp — the event gate, BBCode, files sent once across
//!   retries, the 24-hour window, `/template`, Meta's refusals, and no fetches of internal
//!   addresses.
//! - `setup`: each `/setup` row turns green only when its step is really done on the portal
//!   and Meta, and says what to do while it isn't.
//! - `templates`: the account's templates synced page by page, filled from an operator's
//!   lines into the exact Graph payload or refused with a note naming what is missing,
//!   `/templates`, writing first over the admin API, and Meta's template errors explained.
//! - `support`: `TestApp`, the connector served over the fakes, and the scenario helpers the
//!   other modules share.

mod burst;
mod channels;
mod conversation;
mod inbound;
mod outbound;
mod setup;
mod support;
mod templates;
