//! A small HTTP/1.1 upstream server for tests: runs on a background thread on `127.0.0.1:0`,
//! records every request it receives and answers with a configurable response.

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::http::{find_header, read_body, read_head};

/// A request the upstream received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target as sent, e.g. `/a?b=c`.
    pub path: String,
    /// Header fields in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was sent chunked.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// What the upstream answers to every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code (default 200).
    pub status: u16,
    /// Extra response headers (default none); `content-length` is always added.
    pub headers: Vec<(String, String)>,
    /// The body (default `ok`).
    pub body: String,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: "ok".to_string(),
        }
    }
}

/// Computes the answer to one request (see [`Upstream::with_handler`]).
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    reply: Mutex<Reply>,
    handler: Mutex<Option<Handler>>,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// A running test upstream; stops (and closes its connections) when dropped.
pub struct Upstream {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler thread must not hide the requests from the test.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Upstream {
    /// Starts an upstream answering `200 ok` to every request.
    pub fn start() -> Result<Upstream, String> {
        Self::with_reply(Reply::default())
    }

    /// Starts an upstream answering `reply` to every request.
    pub fn with_reply(reply: Reply) -> Result<Upstream, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("upstream bind: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("upstream addr: {e}"))?
            .port();
        let shared = Arc::new(Shared {
            reply: Mutex::new(reply),
            ..Shared::default()
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("upstream-{port}"))
            .spawn(move || accept_loop(listener, s))
            .map_err(|e| format!("upstream thread: {e}"))?;
        Ok(Upstream {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Starts an upstream that answers each request with what `handler` returns (an app in
    /// the test: it may call other servers, sleep, or pick the status from the path). The
    /// handler runs on the connection's thread, after the request is recorded.
    pub fn with_handler(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Result<Upstream, String> {
        let upstream = Self::start()?;
        *lock(&upstream.shared.handler) = Some(Arc::new(handler));
        Ok(upstream)
    }

    /// The loopback port the upstream listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Changes the response given to subsequent requests.
    pub fn set_reply(&self, reply: Reply) {
        *lock(&self.shared.reply) = reply;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        for conn in lock(&self.shared.conns).drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).push(clone);
        }
        let s = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("upstream-conn".to_string())
            .spawn(move || {
                let closer = stream.try_clone();
                let _ = serve(stream, &s);
                // The clone kept in `conns` holds the socket open; end it for the peer now.
                if let Ok(closer) = closer {
                    let _ = closer.shutdown(Shutdown::Both);
                }
            });
    }
}

/// Serves requests on one keep-alive connection until it closes or the upstream stops.
fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    // Idle keep-alive connections end on their own rather than pinning a thread forever.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while !shared.stop.load(Ordering::SeqCst) {
        let Some((start, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        let mut parts = start.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let http10 = parts.next() == Some("HTTP/1.0");
        if find_header(&headers, "expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut reader, &headers, false)?;
        let close = http10
            || find_header(&headers, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let request = Request {
            method: method.clone(),
            path,
            headers,
            body,
        };
        lock(&shared.requests).push(request.clone());
        let handler = lock(&shared.handler).clone();
        let reply = match handler {
            Some(handler) => handler(&request),
            None => lock(&shared.reply).clone(),
        };
        let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (name, value) in &reply.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        if method != "HEAD" {
            out.push_str(&reply.body);
        }
        writer.write_all(out.as_bytes())?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
