//! Structured logging. JSON for machines (the default off a terminal), pretty for people.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub fn init(format: Option<&str>) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_sqlite=warn,apalis_postgres=warn,hyper=warn,tower_http=info")
    });
    let json = match format {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    if json {
        let _ = registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    // The current span already carries the request id; the full list repeated it.
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init();
    } else {
        let _ = registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init();
    }
}
