//! Sandbox: faithful local fakes of the outside world Switchboard talks to — Meta's WhatsApp
//! Cloud API (`meta`), a Bitrix24 portal with its OAuth server (`bitrix`), AstraPBX (`pbx`) and a
//! wabridges event sender (`wabridges`). Each fake is an axum app on a random loopback port that
//! records every request it receives and follows `shared/protocols/`, so a test against a fake
//! fails where the product would fail against the real service. `console` is the page
//! `switchboard-sandbox serve` offers for writing to the fake WhatsApp number as a customer.
//!
//! Must not depend on any Switchboard crate or reuse their types: a fake that shares the
//! product's structs would agree with the product's misreadings of the protocol.

pub mod bitrix;
pub mod console;
pub mod harness;
pub mod meta;
pub mod pbx;
pub mod recorder;
pub mod wabridges;

pub use recorder::{Recorded, Recorder};

use std::net::SocketAddr;

use axum::Router;
use tokio::task::JoinHandle;

/// A fake bound to `127.0.0.1:<random port>`, serving until dropped.
pub struct Served {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on a fresh loopback port. Panics only if the loopback interface is unusable,
/// which no test can recover from anyway.
pub async fn serve(app: Router) -> Served {
    serve_on("127.0.0.1:0".parse().expect("literal address"))
        .await_with(app)
        .await
}

/// Serves `app` on a chosen address (the standalone binary uses fixed ports).
pub fn serve_on(addr: SocketAddr) -> ServeOn {
    ServeOn { addr }
}

pub struct ServeOn {
    addr: SocketAddr,
}

impl ServeOn {
    pub async fn await_with(self, app: Router) -> Served {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind loopback for a sandbox fake");
        let addr = listener.local_addr().expect("bound address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Served { addr, task }
    }
}
