//! The allow-list that keeps the bridge from being an open proxy (SPEC §2, §7).
//!
//! Anyone who can reach `/whatsapp-bridge` chooses `endpoint`, and the bridge sends it to the PBX
//! with a Bearer token. So an endpoint is accepted only when it is, beyond doubt, a path under one
//! of the configured prefixes on the configured PBX: no scheme or host, no way to climb out of
//! the prefix (`..`, `//`, backslash), no userinfo (`@`), and no percent-encoded spelling of any
//! of those — the URL parser reqwest uses turns `%2e%2e` into `..` (WHATWG), and a PBX behind a
//! proxy may decode `%2f` into `/`. Query strings pass untouched: they cannot change where the
//! request goes.

use std::fmt;

/// Longer than any AstraPBX path; bounds what we parse and log.
pub const MAX_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint is empty")]
    Empty,
    #[error("endpoint is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("endpoint must contain only visible ASCII: no spaces or control characters")]
    BadCharacter,
    #[error("endpoint must be a path starting with `/`, not a URL or host")]
    NotAPath,
    #[error("endpoint must not contain `//`")]
    DoubleSlash,
    #[error("endpoint must not contain `.` or `..` segments")]
    DotSegment,
    #[error("endpoint must not contain a backslash")]
    Backslash,
    #[error("endpoint must not contain `@`")]
    At,
    #[error("endpoint must not contain a fragment (`#`)")]
    Fragment,
    #[error("endpoint has a malformed percent escape")]
    BadEscape,
    #[error("endpoint must not percent-encode `/`, `\\`, `.`, `%`, `@` or control characters")]
    EncodedSeparator,
    #[error("endpoint is not under an allowed prefix ({0})")]
    NotAllowed(String),
}

/// A path (and optional query) that passed every check: safe to append to the PBX base URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(String);

impl Endpoint {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Skips every check, so tests of the later defences can hand them what `parse` refuses.
    #[cfg(test)]
    pub(crate) fn unchecked(raw: &str) -> Self {
        Endpoint(raw.to_string())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.0)
    }
}

/// Checks `raw` against the rules above and the operator's `allowed` prefixes.
pub fn parse(raw: &str, allowed: &[String]) -> Result<Endpoint, EndpointError> {
    if raw.is_empty() {
        return Err(EndpointError::Empty);
    }
    if raw.len() > MAX_LEN {
        return Err(EndpointError::TooLong);
    }
    // Visible ASCII only: rules out control characters (CR/LF header tricks, NUL, tab), spaces
    // and look-alike Unicode slashes in one go. Callers percent-encode anything else.
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EndpointError::BadCharacter);
    }
    if raw.contains('#') {
        return Err(EndpointError::Fragment);
    }
    let path = raw.split_once('?').map_or(raw, |(path, _query)| path);
    if !path.starts_with('/') {
        return Err(EndpointError::NotAPath);
    }
    if path.contains('\\') {
        return Err(EndpointError::Backslash);
    }
    if path.contains('@') {
        return Err(EndpointError::At);
    }
    if path.contains("//") {
        return Err(EndpointError::DoubleSlash);
    }
    check_escapes(path)?;
    // Segments of dots only: `.` and `..` are what URL normalisation acts on; `...` is refused
    // too because some servers collapse it, and no PBX path needs it. Any `..` at all is refused
    // as SPEC §2 says (found by fuzzing: `/api/x/K..` passed): no PBX path needs one, and a
    // rule with no exceptions is one a reviewer can check.
    if path.contains("..")
        || path
            .split('/')
            .any(|segment| !segment.is_empty() && segment.bytes().all(|b| b == b'.'))
    {
        return Err(EndpointError::DotSegment);
    }
    if !allowed.iter().any(|prefix| under_prefix(path, prefix)) {
        return Err(EndpointError::NotAllowed(allowed.join(", ")));
    }
    Ok(Endpoint(raw.to_string()))
}

/// Every `%` must start a two-digit escape, and no escape may spell a byte that changes how the
/// path is split or decoded again (`%252e` is a `%2e` after one decode).
fn check_escapes(path: &str) -> Result<(), EndpointError> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(EndpointError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| EndpointError::BadEscape)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| EndpointError::BadEscape)?;
            if matches!(byte, b'/' | b'\\' | b'.' | b'%' | b'@') || byte.is_ascii_control() {
                return Err(EndpointError::EncodedSeparator);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// `/api/` admits `/api/x`; a prefix written without the trailing slash (`/api`) admits `/api`
/// and `/api/x` but not `/apix`, so an operator's missing slash can't widen the list.
fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    /// Regression: a fuzzer input with `..` inside a segment was accepted.
    #[test]
    fn double_dot_inside_a_segment_is_refused() {
        let allowed = vec!["/api/".to_string()];
        assert!(matches!(
            parse("/api/&/9lI,K..", &allowed),
            Err(EndpointError::DotSegment)
        ));
        assert!(parse("/api/v1/file.name", &allowed).is_ok());
    }

    use super::*;
    use EndpointError::*;

    fn api() -> Vec<String> {
        vec!["/api/".to_string()]
    }

    #[test]
    fn paths_under_the_prefix_pass_with_their_query() {
        for ok in [
            "/api/v1/calls/click-to-call",
            "/api/v1/users/6f1c-42",
            "/api/v1/call-records?limit=2&from=2024-01-01",
            "/api/v1/search?q=a@b.com&next=http://x//y",
            "/api/v1/users/J%C3%BCrgen",
            "/api/v1/users/a%20b",
            "/api/",
        ] {
            assert_eq!(parse(ok, &api()).map(|e| e.to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn every_escape_route_is_refused() {
        let cases: &[(&str, EndpointError)] = &[
            ("", Empty),
            ("https://evil.example/api/", NotAPath),
            ("http:/api/", NotAPath),
            ("evil.example/api/", NotAPath),
            ("api/v1/users", NotAPath),
            ("?x=/api/", NotAPath),
            ("//evil.example/api/", DoubleSlash),
            ("/api//evil", DoubleSlash),
            ("/api/../admin", DotSegment),
            ("/api/v1/..", DotSegment),
            ("/api/./v1", DotSegment),
            ("/api/.../v1", DotSegment),
            ("/api\\..\\admin", Backslash),
            ("/api/@evil.example", At),
            ("/api/v1/users#x", Fragment),
            ("/api/%2e%2e/admin", EncodedSeparator),
            ("/api/%2E%2E/admin", EncodedSeparator),
            ("/api/.%2e/admin", EncodedSeparator),
            ("/api/%2fevil", EncodedSeparator),
            ("/api%2F..%2Fadmin", EncodedSeparator),
            ("/api/%5c..", EncodedSeparator),
            ("/api/%252e%252e/admin", EncodedSeparator),
            ("/api/%40evil", EncodedSeparator),
            ("/api/%00", EncodedSeparator),
            ("/api/%0d%0aHost:x", EncodedSeparator),
            ("/api/%zz", BadEscape),
            ("/api/%2", BadEscape),
            ("/api/v1\r\nHost: evil", BadCharacter),
            ("/api/v1\0", BadCharacter),
            ("/api/v1 users", BadCharacter),
            ("/api/v1\tusers", BadCharacter),
            ("/api/v1／users", BadCharacter),
            ("/admin", NotAllowed("/api/".into())),
            ("/apiv1", NotAllowed("/api/".into())),
            ("/", NotAllowed("/api/".into())),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw, &api()).as_ref(), Err(want), "{raw:?}");
        }
        assert_eq!(
            parse(&format!("/api/{}", "a".repeat(MAX_LEN)), &api()),
            Err(TooLong)
        );
    }

    #[test]
    fn prefixes_respect_segment_boundaries() {
        let allowed = vec!["/api/v1/calls".to_string(), "/api/v1/users/".to_string()];
        assert!(parse("/api/v1/calls", &allowed).is_ok());
        assert!(parse("/api/v1/calls/click-to-call", &allowed).is_ok());
        assert!(parse("/api/v1/users/42", &allowed).is_ok());
        assert!(parse("/api/v1/callsx", &allowed).is_err());
        assert!(parse("/api/v1/users", &allowed).is_err());
        assert!(parse("/api/v1/call-records", &allowed).is_err());
        assert!(parse("/api/v1/x", &[]).is_err());
    }
}
