//! The bench's upstream (and span collector): a [`toolkit::Server`] on `127.0.0.1:0` whose
//! handler never blocks (it runs on the server's event loop), answering `200 ok` to every request
//! and counting them. It can capture the head of the next request, for the probes that check a
//! scenario's filters really ran.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use toolkit::{Reply, Request, Server};

use crate::Result;

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
            reply()
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

/// The answer to every request: `200`, `content-type: text/plain`, `ok` (the server adds the
/// `content-length`).
fn reply() -> Reply {
    Reply {
        headers: vec![("content-type".to_string(), "text/plain".to_string())],
        ..Reply::default()
    }
}

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
        Ok(())
    }
}
