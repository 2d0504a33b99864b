//! In-process HTTP/1.1 servers on `127.0.0.1` (hyper on a tokio runtime of their own): the
//! socket is bound on port 0 and kept, so the port it reports is held from the first moment. A
//! [`Server`] answers with a handler (an app in a test or the demo, a span collector); an
//! [`Upstream`] also records every request it received.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;

use crate::http::find_header;

/// A request a server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target as sent, e.g. `/a?b=c`.
    pub path: String,
    /// Header fields, names lowercased.
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

/// What a server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code (default 200).
    pub status: u16,
    /// Extra response headers (default none); `content-length` is always added.
    pub headers: Vec<(String, String)>,
    /// The body (default `ok`).
    pub body: Vec<u8>,
}

impl Reply {
    /// A reply with no extra headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

impl Default for Reply {
    fn default() -> Self {
        Reply::new(200, "ok")
    }
}

/// Computes the answer to one request.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not hide what was recorded from the test.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Header fields a request may carry: far above Envoy's own default limit (100), so that what
/// Envoy lets through, the server takes.
const MAX_HEADERS: usize = 2000;

#[derive(Clone)]
struct App {
    handler: Handler,
    /// Run the handler on the blocking pool (it may sleep or call other servers), or inline on
    /// the runtime (it only computes an answer).
    blocking: bool,
}

/// A running server; it stops, closing its connections, when dropped.
pub struct Server {
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Starts a server that answers each request with `handler`, which may block (sleep, call
    /// other servers): it runs on a thread pool, not on the server's event loop.
    pub fn start(
        name: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Result<Server, String> {
        Self::launch(name, Arc::new(handler), true, 2)
    }

    /// Starts a server whose `handler` never blocks (it only computes the answer), run on the
    /// event loop itself with `threads` worker threads: the fast path of the bench's upstream
    /// and the span collector.
    pub fn start_nonblocking(
        name: &str,
        threads: usize,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Result<Server, String> {
        Self::launch(name, Arc::new(handler), false, threads.max(1))
    }

    fn launch(
        name: &str,
        handler: Handler,
        blocking: bool,
        threads: usize,
    ) -> Result<Server, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("{name}: binding 127.0.0.1:0: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("{name}: reading its address: {e}"))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{name}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(format!("{name}-{port}"))
            .enable_all()
            .build()
            .map_err(|e| format!("{name}: starting its runtime: {e}"))?;
        let app = App { handler, blocking };
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(|e| format!("{name}: {e}"))?
        };
        runtime.spawn(accept_loop(listener, app));
        Ok(Server {
            port,
            runtime: Some(runtime),
        })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Drops every connection task: peers see their connections close. A handler still
            // running on the blocking pool is left to finish on its own.
            runtime.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

/// Accepts connections until the runtime shuts down, one task per connection.
async fn accept_loop(listener: tokio::net::TcpListener, app: App) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, say: wait rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(app.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Response = hyper::Response<Full<Bytes>>;

async fn handle(
    app: App,
    req: hyper::Request<Incoming>,
) -> Result<Response, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {e}"),
            ))
        }
    };
    let request = Request {
        method: parts.method.as_str().to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let reply = if app.blocking {
        let handler = Arc::clone(&app.handler);
        match tokio::task::spawn_blocking(move || handler(&request)).await {
            Ok(reply) => reply,
            Err(e) => Reply::new(500, format!("the handler failed: {e}").into_bytes()),
        }
    } else {
        (app.handler)(&request)
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &reply.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

fn plain(status: StatusCode, body: String) -> Response {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[derive(Default)]
struct Recorded {
    requests: Mutex<Vec<Request>>,
    reply: Mutex<Reply>,
    handler: Mutex<Option<Handler>>,
}

/// A test upstream: records every request it receives and answers a configurable [`Reply`] (or
/// what a handler computes); stops when dropped.
pub struct Upstream {
    shared: Arc<Recorded>,
    server: Server,
}

impl Upstream {
    /// Starts an upstream answering `200 ok` to every request.
    pub fn start() -> Result<Upstream, String> {
        Self::with_reply(Reply::default())
    }

    /// Starts an upstream answering `reply` to every request.
    pub fn with_reply(reply: Reply) -> Result<Upstream, String> {
        let shared = Arc::new(Recorded {
            reply: Mutex::new(reply),
            ..Recorded::default()
        });
        let s = Arc::clone(&shared);
        let server = Server::start("upstream", move |req| {
            lock(&s.requests).push(req.clone());
            let handler = lock(&s.handler).clone();
            match handler {
                Some(handler) => handler(req),
                None => lock(&s.reply).clone(),
            }
        })?;
        Ok(Upstream { shared, server })
    }

    /// Starts an upstream that answers each request with what `handler` returns (an app in
    /// the test: it may call other servers, sleep, or pick the status from the path). The
    /// handler runs after the request is recorded.
    pub fn with_handler(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Result<Upstream, String> {
        let upstream = Self::start()?;
        *lock(&upstream.shared.handler) = Some(Arc::new(handler));
        Ok(upstream)
    }

    /// The loopback port the upstream listens on.
    pub fn port(&self) -> u16 {
        self.server.port()
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
