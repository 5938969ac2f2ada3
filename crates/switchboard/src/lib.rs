//! The `switchboard` binary as a library: the one place where the core and the three bridges
//! meet. It only wires: it merges the bridges' routers and job registries (`app.rs`), serves
//! them on a listener with the connection limits (`server.rs`) and runs the workers and the
//! scheduler until told to stop (`lifecycle.rs`). Behaviour belongs in core or in a bridge,
//! never here; command-line parsing belongs to the binary's `cli.rs`, which calls into this.
//! The integration tests start the same wiring in-process through [`run`].

mod app;
mod lifecycle;
mod server;

pub use app::{Wiring, bridges, catalogue, event_sources, job_registry, router, scheduled};
pub use lifecycle::{Workers, run, work};
