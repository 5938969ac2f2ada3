//! The sandbox's fakes checked against the protocols they stand in for, over real HTTP, in one
//! test executable (one link instead of one per file):
//!
//! - `bitrix`: the Bitrix24 portal and its OAuth server answer and post events as the Open
//!   Channels protocol says.
//! - `meta`: the Graph routes answer as the product calls them, and the webhooks arrive signed
//!   and shaped as the product receives them.
//! - `pbx`: AstraPBX's login in each answer shape, its tokens' shape and life, every way a
//!   token stops working, and the API the bridge forwards to.
//! - `serve`: `switchboard-sandbox serve` comes up with the product, prints its URLs and admin
//!   token, and stays up until Ctrl-C.
//! - `wabridges`: the wabridges sender's examples and generated traffic carry exactly the
//!   documented fields, and it delivers over HTTP without retries.

mod bitrix;
mod meta;
mod pbx;
mod serve;
mod wabridges;
