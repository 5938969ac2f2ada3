//! `switchboard`: one binary, three WhatsApp bridges on one durable core. `main` only parses the
//! command line (`cli.rs`) and runs it; the wiring is the library (`lib.rs`).

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(cli::run(args))
}
