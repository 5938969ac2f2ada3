//! The `switchboard` crate's integration tests, one test binary. Each module proves one thing
//! about the wired product; the shared helpers are in `support`.

mod support;

/// The Bitrix24 connector through the real binary: install, the `bitrix` and `whatsapp`
/// commands, an acknowledged message delivered after a `kill -9` and a restart, and a relay's
/// dead letter failing its event until a retry succeeds.
mod bitrix;
/// A deleted Open Channel line or a disconnected connector: `/health` degraded with the
/// reason and a failing `/setup` row, until the connector is activated again.
mod conversation;
/// `kill -9` during traffic to two WhatsApp numbers on two Open Channel lines: every
/// acknowledged message in the right line, every reply from the right number, none lost.
mod faults_channels;
/// Stalled, trickled, unread and surplus connections are cut off or shed after their timeouts;
/// a stop still ends the process; guessed PBX credentials are throttled; tokens stay out of logs.
mod faults_connections;
/// `kill -9` loses nothing that was acknowledged: every 2xx is processed after a restart, once.
mod faults_crash;
/// Hostile input gets a clear 4xx on every route, the process stays up with bounded memory, and
/// refused calls cost the database only a bounded head.
mod faults_input;
/// A burst from many customers reaches Bitrix in each customer's order.
mod faults_order;
/// Bitrix, the subscriber or the database down and back: everything acknowledged is delivered
/// once, the workers come back, and a worker cut off gives up its job before another takes it.
mod faults_outage;
/// Several processes on one PostgreSQL database behave like one.
mod faults_scale;
/// The Bitrix24 + Meta set-up clicked through `/setup` in a real browser, from a fresh
/// database with only the accounts' credentials typed, until a WhatsApp message arrives.
mod guided_setup;
/// The alert rules and the dashboard under deploy/monitoring name only series the product
/// exports, in the shape it exports them.
mod monitoring;
/// `/openapi.json` lists every JSON route the router serves and only those, holds together as
/// OpenAPI 3.1, and `/docs/api` shows it; a malformed query is a JSON 400.
mod openapi;
/// The operator pages in a real browser: sign-in, secrets, set-up, replay, an event found by
/// its wamid and its job opened from it, retry, CSRF.
mod pages;
/// The PBX bridge: an MSG91 click-to-call reaches the PBX and the log keeps its secrets.
mod pbx_bridge;
/// The binary as an operator runs it: start-up, configuration errors, a stored secret no key
/// opens, arguments that name nothing, the credential and key commands, masked passwords,
/// request counters by route, SIGTERM.
mod platform;
/// The message templates' admin page: behind the sign-in, linked from `/`, each template with
/// its status and variables, and a sync by its button with the session's CSRF token.
mod templates_page;
/// wabridges hooks end to end: events posted end up in the state API; an event whose forward
/// fails is not `processed` until the forward is.
mod wabridges;
