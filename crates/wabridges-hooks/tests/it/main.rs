//! The wabridges hooks router over real HTTP on a fresh database (SQLite, or PostgreSQL with
//! `SWITCHBOARD_TEST_DATABASE=postgres`), with job workers running, in one test executable (one
//! link instead of one per file):
//!
//! - `hooks`: every event type is parsed, stored once and queryable; bad tokens and bodies are
//!   refused with the reason; calls and message pages read back in order; and a subscriber
//!   that was down gets every event once, signed, when it comes back.

mod hooks;
