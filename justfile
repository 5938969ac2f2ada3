# Switchboard tasks. `just --list` shows them.

# Run the product on the embedded SQLite default (./data/switchboard.db).
run *ARGS:
    cargo run -p switchboard -- serve {{ARGS}}

# The test suite on SQLite; `just test-postgres` runs it against the local PostgreSQL.
test:
    cargo nextest run --workspace --no-fail-fast

test-postgres:
    SWITCHBOARD_TEST_DATABASE=postgres cargo nextest run --workspace --profile postgres --no-fail-fast

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Load harness: every figure against a bare axum baseline measured in the same run; writes bench/results/latest.md.
bench:
    cargo build --release -p switchboard
    cargo run --release -p sandbox --bin switchboard-bench


# End-to-end demo against the sandbox fakes: no accounts needed.
demo:
    cargo build -p switchboard
    cargo run -q -p sandbox --bin switchboard-sandbox -- demo

# The sandbox to explore by hand: the fakes and the product, which you set up through /setup
# with the fake accounts' credentials it prints; stays up until Ctrl-C.
sandbox:
    cargo build -p switchboard
    cargo run -q -p sandbox --bin switchboard-sandbox -- serve

# Fuzz every parser that reads outside input for SECONDS each (libFuzzer via cargo-fuzz; the
# stable toolchain is allowed its nightly flags with RUSTC_BOOTSTRAP).
fuzz SECONDS="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && for t in pbx_endpoint wabridges_event meta_payload bitrix_form bbcode; do \
        RUSTC_BOOTSTRAP=1 cargo fuzz run $t -- -max_total_time={{SECONDS}} || exit 1; done
