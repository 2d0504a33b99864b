//! A minimal blocking HTTP/1.1 client and server loop over `std::net` for the demo's services,
//! collector and traffic: Content-Length and chunked bodies, keep-alive on the server side.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Header fields in arrival order, names lowercased.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (lowercase) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A request received by a [`Server`].
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target, e.g. `/checkout?id=3`.
    pub path: String,
    /// Header fields, names lowercased.
    pub headers: Headers,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// A response: from a [`Server`] handler, or received by [`request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Headers,
    /// The body.
    pub body: String,
}

impl Response {
    /// A response with no extra headers.
    pub fn new(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// Sends one request to `127.0.0.1:port` on a fresh connection and reads the response.
/// `headers` must include `host`.
pub fn request(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, String> {
    let ctx = |e: std::io::Error| format!("{method} 127.0.0.1:{port}{path}: {e}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(ctx)?;
    stream.set_read_timeout(Some(timeout)).map_err(ctx)?;
    stream.set_write_timeout(Some(timeout)).map_err(ctx)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    (&stream).write_all(head.as_bytes()).map_err(ctx)?;
    let mut reader = BufReader::new(stream);
    let (start, headers) = read_head(&mut reader)
        .map_err(ctx)?
        .ok_or_else(|| format!("{method} 127.0.0.1:{port}{path}: closed before a response"))?;
    let status = start
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {start:?}"))?;
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else {
        read_body(&mut reader, &headers, true).map_err(ctx)?
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Reads a start line and header block; `Ok(None)` on a clean end of stream.
pub fn read_head<R: BufRead>(reader: &mut R) -> std::io::Result<Option<(String, Headers)>> {
    let mut start = String::new();
    loop {
        start.clear();
        if reader.read_line(&mut start)? == 0 {
            return Ok(None);
        }
        if !start.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("end of stream inside the header block"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("bad header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some((start.trim_end().to_string(), headers)))
}

/// Reads a body framed by chunked encoding or Content-Length; else to the end of the stream
/// when `until_eof`, or none.
pub fn read_body<R: BufRead>(
    reader: &mut R,
    headers: &[(String, String)],
    until_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let hex = size_line.trim().split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(hex, 16).map_err(|_| invalid("bad chunk size line"))?;
            if size == 0 {
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    }
    if let Some(len) = header(headers, "content-length") {
        let len: usize = len.parse().map_err(|_| invalid("bad content-length"))?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if until_eof {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// What a [`Server`] does with each request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// An HTTP/1.1 server on `127.0.0.1`, a thread per connection; stops when dropped.
pub struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `127.0.0.1:port` (0: any free port) and answers every request with `handler`.
    pub fn start(name: &str, port: u16, handler: Handler) -> Result<Server, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| format!("{name}: could not listen on 127.0.0.1:{port}: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("{name}: no local address: {e}"))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let acceptor = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (h, st) = (Arc::clone(&handler), Arc::clone(&st));
                    let _ = std::thread::Builder::new()
                        .name("conn".to_string())
                        .spawn(move || serve(conn, &h, &st));
                }
            })
            .map_err(|e| format!("{name}: could not start a thread: {e}"))?;
        Ok(Server {
            port,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler, stop: &AtomicBool) {
    // Idle keep-alive connections end on their own; a stopped server answers no more.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::SeqCst) {
        let Ok(Some((start, headers))) = read_head(&mut reader) else {
            break;
        };
        let Ok(body) = read_body(&mut reader, &headers, false) else {
            break;
        };
        let mut parts = start.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let close = header(&headers, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let resp = handler(Request {
            method,
            path,
            headers,
            body,
        });
        let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (name, value) in &resp.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n", resp.body.len()));
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&resp.body);
        if writer.write_all(out.as_bytes()).is_err() || close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        404 => "Not Found",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_keep_alive_server() {
        let server = Server::start(
            "t",
            0,
            Arc::new(|req: Request| {
                Response::new(
                    200,
                    format!(
                        "{} {} {:?}",
                        req.method,
                        req.path,
                        header(&req.headers, "host")
                    ),
                )
            }),
        )
        .unwrap();
        let resp = request(
            "GET",
            server.port(),
            "/a?b",
            &[("host", "orders")],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, "GET /a?b Some(\"orders\")");
    }

    #[test]
    fn reads_chunked_bodies() {
        let raw = b"5\r\nhello\r\n0\r\n\r\n";
        let headers = vec![("transfer-encoding".to_string(), "chunked".to_string())];
        let body = read_body(&mut &raw[..], &headers, false).unwrap();
        assert_eq!(body, b"hello");
    }
}
