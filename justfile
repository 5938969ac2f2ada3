# Switchboard tasks. `just --list` shows them.

# Run the product on the embedded SQLite default (./data/switchboard.db).
run *ARGS:
    cargo run -p switchboard -- serve {{ARGS}}

# The test suite on SQLite; `just test-postgres` runs it against the local PostgreSQL.
test:
    cargo nextest run --workspace --no-fail-fast

test-postgres:
    SWITCHBOARD_TEST_DATABASE=postgres cargo nextest run --workspace --no-fail-fast

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Load harness for SPEC §6; writes bench/results/latest.md.
bench:
    cargo build --release -p switchboard
    cargo run --release -p sandbox --bin switchboard-bench


# End-to-end demo against the sandbox fakes: no accounts needed.
demo:
    cargo build -p switchboard
    cargo run -q -p sandbox --bin switchboard-sandbox -- demo
