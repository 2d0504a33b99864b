//! The bench's upstream (and span collector): a [`toolkit::Server`] on `127.0.0.1:0` whose
//! handler never blocks (it runs on the server's event loop), answering `200 ok` to every request
//! and counting them. It can capture the head of the next request, for the probes that check a
//! scenario's filters really ran. Two exceptions, neither on the load's path: a request with
//! [`STATUS_HEADER`] gets that status (the retry probes), and a Zipkin span report
//! (`POST /api/v2/spans`) gets `202 Accepted`, as from a Zipkin collector (Envoy's Zipkin tracer
//! counts any other answer as a dropped report).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use toolkit::{Reply, Request, Server};

use crate::Result;

/// A request carrying this header gets its value as the status (e.g. `503`): the probes that
/// check retries really happen. The load never sends it.
pub const STATUS_HEADER: &str = "x-bench-status";

/// Event-loop threads of each server. One: the bench pins this process to the load core it
/// shares with wrk, where a second thread could only take turns with the first.
const THREADS: usize = 1;

#[derive(Default)]
struct Shared {
    requests: AtomicU64,
    capture: AtomicBool,
    captured: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running upstream; stops and closes its connections when dropped.
pub struct Upstream {
    shared: Arc<Shared>,
    server: Server,
}

impl Upstream {
    /// Starts the server on a loopback port the kernel picks (and the server keeps).
    pub fn start(name: &str) -> Result<Upstream> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let server = Server::start_nonblocking(&format!("bench-{name}"), THREADS, move |req| {
            s.requests.fetch_add(1, Ordering::Relaxed);
            if s.capture.swap(false, Ordering::SeqCst) {
                *lock(&s.captured) = Some(head(req));
            }
            reply(req)
        })?;
        Ok(Upstream { shared, server })
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Captures the head (start line and headers) of the next request.
    pub fn capture_next(&self) {
        *lock(&self.shared.captured) = None;
        self.shared.capture.store(true, Ordering::SeqCst);
    }

    /// The captured request head, once one arrived.
    pub fn captured(&self) -> Option<String> {
        lock(&self.shared.captured).clone()
    }
}

/// The answer to a request: `200`, `content-type: text/plain`, `ok` (the server adds the
/// `content-length`); the status of [`STATUS_HEADER`] when the request has one; `202` to a
/// Zipkin span report.
fn reply(req: &Request) -> Reply {
    let status = req
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(STATUS_HEADER))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(if req.method == "POST" && req.path == ZIPKIN_SPANS {
            202
        } else {
            200
        });
    Reply {
        status,
        headers: vec![("content-type".to_string(), "text/plain".to_string())],
        ..Reply::default()
    }
}

/// The path Envoy's Zipkin tracer reports spans to (`collector_endpoint` of
/// `bench/configs/hcm/tracing_zipkin.yaml`).
const ZIPKIN_SPANS: &str = "/api/v2/spans";

/// A request's head as it came in, lines joined by CRLF: `GET /a HTTP/1.1`, then `name: value`
/// per header.
fn head(req: &Request) -> String {
    let mut head = format!("{} {} HTTP/1.1", req.method, req.path);
    for (name, value) in &req.headers {
        let _ = write!(head, "\r\n{name}: {value}");
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_alive_requests_and_captures_one() -> Result<()> {
        let up = Upstream::start("test")?;
        up.capture_next();
        let first = toolkit::http_get(up.port(), "/a", &[("x-a", "1")])?;
        assert_eq!((first.status, first.body.as_str()), (200, "ok"));
        assert_eq!(first.header("content-type"), Some("text/plain"));
        let second = toolkit::http_get(up.port(), "/b", &[])?;
        assert_eq!(second.status, 200);
        assert_eq!(up.requests(), 2);
        let captured = up.captured().unwrap_or_default();
        assert!(captured.starts_with("GET /a HTTP/1.1\r\n"), "{captured:?}");
        assert!(captured.contains("\r\nx-a: 1"), "{captured:?}");
        assert!(!captured.contains("/b"), "{captured:?}");
        let failed = toolkit::http_get(up.port(), "/c", &[(STATUS_HEADER, "503")])?;
        assert_eq!(failed.status, 503);
        let report = toolkit::http_request("POST", up.port(), ZIPKIN_SPANS, &[], b"[]")?;
        assert_eq!(report.status, 202);
        Ok(())
    }
}
