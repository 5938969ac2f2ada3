//! The PBX bridge over real HTTP against the sandbox's fake AstraPBX, in one test executable
//! (one link instead of one per file):
//!
//! - `proxy`: calls are forwarded and answers passed through, a token is fetched once and
//!   refreshed on 401 or expiry, refused endpoints and bad requests never reach the PBX, a
//!   down or slow PBX gets a clear answer, and the logs hold neither a secret nor a JWT.

mod proxy;
