//! `switchboard`: one binary, three WhatsApp bridges on one durable core. This crate only
//! wires: it parses the command line, loads configuration, builds the core, merges the
//! bridges' routers (`app.rs`) and runs the server, the workers and the scheduler.

mod app;
mod cli;
mod server;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(cli::run(args))
}
