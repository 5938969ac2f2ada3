//! The HTTP accept loop and its limits. `axum::serve` has no timeouts and no connection cap: a
//! client that sent half a request, or nothing, held its socket for good, and enough of them
//! used up the process's file descriptors until every route failed. Here:
//!
//! - a connection must send a request's headers within `header_timeout_secs` of opening or of
//!   its previous answer (so idle keep-alives close too), else it is closed;
//! - a request must send its whole body within `body_timeout_secs` of its headers, else 408;
//! - a write of an answer must make progress within `body_timeout_secs`, else the connection is
//!   closed (a client that pipelines requests and never reads would hold its slot for good);
//! - at most `max_connections` are served at once, a number derived from the open-file limit
//!   so descriptors stay free for the database, outgoing calls and files; connections beyond it
//!   get a 503 and are closed, instead of waiting in a backlog nobody drains.
//!
//! A stop (SIGTERM) works as `axum::serve`'s graceful shutdown did: no new connections, idle
//! ones closed, requests in flight answered; but a client stalled half-way holds it up only
//! until its timeout, and nothing holds it past the drain limit the workers get too.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    BoxError, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request},
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use switchboard_core::{
    Config,
    config::{
        Setting,
        catalogue::{BODY_TIMEOUT_SECS, HEADER_TIMEOUT_SECS, MAX_CONNECTIONS},
    },
    http::error_body,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tower::ServiceExt;

use crate::lifecycle::{DRAIN_LIMIT, Stop};

/// The default cap when the open-file limit allows more: about 10 KiB of buffers per idle
/// connection keeps even a full house in tens of MiB.
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Below this the server could hardly work; the start-up log asks for a higher limit.
const MIN_CONNECTIONS: usize = 8;
/// Connections past the cap being answered 503 at one time; further ones are closed at once.
const SHED_AT_ONCE: usize = 32;
/// How long a turned-away connection is kept: to read the request's head before answering, and
/// what follows after, since closing a socket with unread data resets it, and a reset can
/// discard the 503 before the client reads it.
const SHED_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The configured timeouts, and the connection cap that the open-file limit (raised towards
    /// its hard maximum when that helps) leaves room for, lowered to `max_connections` if set.
    pub fn from_config(config: &Config) -> Limits {
        let secs =
            |setting: &Setting| Duration::from_secs(config.integer_or_default(setting).max(1));
        let jobs = config.jobs_concurrency();
        let room = open_file_limit(reserved_descriptors(jobs) + 2 * DEFAULT_MAX_CONNECTIONS as u64)
            .map_or(DEFAULT_MAX_CONNECTIONS, |nofile| {
                room_for_connections(nofile, jobs)
            });
        let max_connections = match config.integer(MAX_CONNECTIONS) {
            Some(n) if n as usize > room => {
                tracing::warn!(
                    max_connections = n,
                    room,
                    "max_connections is more than the open-file limit leaves room for; using {room}. Raise the limit (ulimit -n, LimitNOFILE=) to serve more."
                );
                room
            }
            Some(n) => n as usize,
            None => room.min(DEFAULT_MAX_CONNECTIONS),
        };
        Limits {
            header_timeout: secs(HEADER_TIMEOUT_SECS),
            body_timeout: secs(BODY_TIMEOUT_SECS),
            max_connections,
        }
    }
}

/// Descriptors the process needs besides the connections it serves: the database pool (up to
/// 16 connections; an SQLite one holds three files), the workers' outgoing calls (one each,
/// and one more for a download), the sockets being turned away, and a margin for the runtime,
/// the listener, logs and the SQLite writer.
fn reserved_descriptors(jobs: usize) -> u64 {
    64 + 48 + 2 * jobs as u64 + SHED_AT_ONCE as u64
}

/// Connections that fit in `nofile` descriptors: a request may hold a second descriptor on its
/// behalf (the PBX bridge's call, a media download), so each counts twice.
fn room_for_connections(nofile: u64, jobs: usize) -> usize {
    let room = (nofile.saturating_sub(reserved_descriptors(jobs)) / 2) as usize;
    if room < MIN_CONNECTIONS {
        tracing::warn!(
            open_file_limit = nofile,
            "the open-file limit leaves room for only {room} connections; serving {MIN_CONNECTIONS} anyway. Raise it (ulimit -n, LimitNOFILE=)."
        );
    }
    room.max(MIN_CONNECTIONS)
}

/// The soft open-file limit, first raised to `wanted` (or the hard limit, if lower) when it is
/// below: many systems start services at 1,024 with a hard limit far above. `None` if unlimited.
fn open_file_limit(wanted: u64) -> Option<u64> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let current = current?;
    let target = maximum.map_or(wanted, |max| max.min(wanted));
    if target <= current {
        return Some(current);
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum,
        },
    ) {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::debug!(error = %e, "could not raise the open-file limit");
            Some(current)
        }
    }
}

/// Serves `app` on `listener` until `stop`, then waits for the connections to finish, for at
/// most [`DRAIN_LIMIT`] (what is left is cut off when the process exits).
pub async fn run(listener: TcpListener, app: Router, limits: Limits, stop: Stop) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http1 = Arc::new(http1);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let shedding = Arc::new(Semaphore::new(SHED_AT_ONCE));
    // Every connection task holds a receiver; the sender sees them all gone when they are.
    let (all_closed, open) = watch::channel(());
    let mut accept_warned: Option<Instant> = None;
    let mut shed_warned: Option<Instant> = None;
    let mut stopped = pin!(stop.wait());
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(&e, &mut accept_warned).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("switchboard_http_connections_shed_total").increment(1);
            if warn_again(&mut shed_warned) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; answering new connections 503"
                );
            }
            shed(stream, &shedding);
            continue;
        };
        let (app, http1, stop, open) = (app.clone(), http1.clone(), stop.clone(), open.clone());
        tokio::spawn(async move {
            metrics::gauge!("switchboard_http_connections_open").increment(1.0);
            serve_connection(stream, peer, app, &http1, limits.body_timeout, stop).await;
            metrics::gauge!("switchboard_http_connections_open").decrement(1.0);
            drop((slot, open));
        });
    }
    drop(listener);
    drop(open);
    if tokio::time::timeout(DRAIN_LIMIT, all_closed.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            still_open = all_closed.receiver_count(),
            "connections still busy {} s after the stop; closing them",
            DRAIN_LIMIT.as_secs()
        );
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    http1: &hyper::server::conn::http1::Builder,
    body_timeout: Duration,
    stop: Stop,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        // The deadline is applied here rather than as a router layer: a middleware cost about
        // 5 % of the ack throughput, this costs nothing for a request without a body.
        let expired = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let body = match &expired {
            Some(flag) => Body::new(Deadline {
                inner: body,
                at: tokio::time::Instant::now() + body_timeout,
                sleep: None,
                expired: flag.clone(),
            }),
            None => Body::new(body),
        };
        let served = app.clone().oneshot(Request::from_parts(parts, body));
        async move {
            let response = served.await?;
            Ok::<_, Infallible>(match expired {
                Some(flag) if flag.load(Ordering::Relaxed) => body_timed_out(body_timeout, peer),
                _ => response,
            })
        }
    });
    let stream = WriteDeadline {
        inner: stream,
        limit: body_timeout,
        stalled: None,
    };
    let mut conn = pin!(http1.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// A socket whose writes must make progress within `limit`. hyper's timers cover reading a
/// request, not writing its answer: a client that stops reading would stall the write, and
/// with it the connection's slot, for as long as it likes.
struct WriteDeadline {
    inner: TcpStream,
    limit: Duration,
    /// Armed when a write first finds the socket full; dropped on any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    /// Turns a write's `Pending` into an error once the socket has stayed full for `limit`.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading its answers",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.deadline(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.deadline(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.deadline(cx, polled)
    }
}

/// Past the cap: a 503 and close, so the client knows to retry instead of waiting.
fn shed(mut stream: TcpStream, shedding: &Arc<Semaphore>) {
    static BUSY: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let body = r#"{"error":"server busy: too many open connections, retry shortly"}"#;
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    // With that many turned away already, dropping the socket closes it at once.
    let Ok(permit) = shedding.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(SHED_LINGER, async {
            // Answer once the request's head is in: an HTTP client treats bytes that come
            // before it has sent its request as a broken connection, not as an answer.
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                head.extend_from_slice(&buf[..n]);
            }
            stream.write_all(&BUSY).await?;
            stream.shutdown().await?;
            while stream.read(&mut buf).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
    });
}

/// An accept that failed: nothing to do for a connection the client already gave up; for
/// anything else (out of descriptors, above all) a short pause, so the loop doesn't spin, and
/// a warning now and then rather than one per attempt.
async fn accept_failed(e: &std::io::Error, warned: &mut Option<Instant>) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    if warn_again(warned) {
        tracing::warn!(error = %e, "accepting a connection failed; retrying");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn warn_again(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// The answer to a request whose body did not arrive whole within `limit` of its headers,
/// whatever the handler made of its failed read. The connection is closed rather than kept for
/// a next request behind an unread body. The request's log line, written inside the router,
/// shows the handler's refusal; this one says why.
fn body_timed_out(limit: Duration, peer: SocketAddr) -> Response {
    metrics::counter!("switchboard_http_body_timeouts_total").increment(1);
    tracing::info!(%peer, "request body not received within {} s; answered 408", limit.as_secs());
    let mut response = error_body(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "the request body did not arrive within {} s",
            limit.as_secs()
        ),
        None,
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A body that fails once its deadline has passed while it still waits for data. The timer is
/// only set the first time the body has to wait, so a body that is already in costs none.
struct Deadline {
    inner: Incoming,
    at: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = this.at;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("request body timed out".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_everything_else() {
        // systemd's usual soft limit, 32 job workers.
        let room = room_for_connections(1024, 32);
        assert!((256..512).contains(&room), "{room}");
        assert_eq!(room_for_connections(64, 32), MIN_CONNECTIONS);
        assert!(room_for_connections(1 << 20, 32) > DEFAULT_MAX_CONNECTIONS);
    }
}
