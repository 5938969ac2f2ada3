//! `switchboard-sandbox`: runs the fakes standalone for `just demo` and manual trials.
fn main() {
    eprintln!("switchboard-sandbox: fakes are wired in by later issues");
}
