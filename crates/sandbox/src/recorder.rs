//! Every fake keeps a log of the requests it received, so tests can assert on exactly what the
//! product sent (method, path, query, headers, body) rather than on what the product believes
//! it sent.

use std::sync::{Arc, Mutex};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    middleware::Next,
    response::Response,
};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// When the fake received it: the benchmark correlates this with when it sent the cause.
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn all(&self) -> Vec<Recorded> {
        self.inner.lock().expect("recorder lock").clone()
    }

    /// Requests whose path ends with `suffix` (paths carry a Graph version or `/rest/`).
    pub fn matching(&self, suffix: &str) -> Vec<Recorded> {
        self.all()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }

    pub fn clear(&self) {
        self.inner.lock().expect("recorder lock").clear();
    }

    fn push(&self, r: Recorded) {
        self.inner.lock().expect("recorder lock").push(r);
    }
}

/// Axum middleware: buffers the body, records the request, then hands it on unchanged.
pub async fn record(State(rec): State<Recorder>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    rec.push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: bytes.clone(),
        at: std::time::Instant::now(),
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
