//! A tiny blocking HTTP/1.1 client over `std::net`, plus the message parsing it shares with the
//! test upstream server (Content-Length and chunked bodies).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// A response received by [`http_get`] or [`http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// Header fields in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, decoded as UTF-8 (lossily).
    pub body: String,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// The first value of header `name` (case-insensitive) in a lowercase-named header list.
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// Sends `GET path` to `127.0.0.1:port` with extra `headers` and returns the response.
///
/// Times out after the harness patience ([`crate::patience`]).
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    http_request("GET", port, path, headers, b"")
}

/// Sends one request to `127.0.0.1:port` on a fresh connection (`Connection: close`).
///
/// A non-empty `body` is sent with a `Content-Length`. Times out after the harness patience.
pub fn http_request(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    request_with_timeout(method, port, path, headers, body, crate::patience())
}

pub(crate) fn request_with_timeout(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let ctx = |e: std::io::Error| format!("{method} 127.0.0.1:{port}{path}: {e}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(ctx)?;
    stream.set_read_timeout(Some(timeout)).map_err(ctx)?;
    stream.set_write_timeout(Some(timeout)).map_err(ctx)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("connection: close\r\n\r\n");
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    stream.write_all(&msg).map_err(ctx)?;

    let mut reader = BufReader::new(stream);
    let (status_line, headers) = read_head(&mut reader).map_err(ctx)?.ok_or_else(|| {
        format!("{method} 127.0.0.1:{port}{path}: connection closed before a response")
    })?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
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

/// Header fields in arrival order, names lowercased.
pub(crate) type Headers = Vec<(String, String)>;

/// Reads a start line and header block. `Ok(None)` on a clean end of stream before any byte.
pub(crate) fn read_head<R: BufRead>(reader: &mut R) -> std::io::Result<Option<(String, Headers)>> {
    let mut start = String::new();
    loop {
        start.clear();
        if read_line_lossy(reader, &mut start)? == 0 {
            return Ok(None);
        }
        // Tolerate stray empty lines between messages (RFC 9112 section 2.2).
        if !start.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        // Lossy: header values may carry obs-text (bytes 0x80..0xff) that Envoy passes on.
        if read_line_lossy(reader, &mut line)? == 0 {
            return Err(invalid("end of stream inside the header block"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(&format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some((start.trim_end().to_string(), headers)))
}

/// Reads one line (up to and including `\n`) and appends it to `line` as lossy UTF-8; returns
/// the number of bytes read.
fn read_line_lossy<R: BufRead>(reader: &mut R, line: &mut String) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    let n = reader.read_until(b'\n', &mut bytes)?;
    line.push_str(&String::from_utf8_lossy(&bytes));
    Ok(n)
}

/// Reads a message body framed by `transfer-encoding: chunked` or `content-length`; without
/// either, reads to the end of the stream when `until_eof` (responses) or returns no body.
pub(crate) fn read_body<R: BufRead>(
    reader: &mut R,
    headers: &[(String, String)],
    until_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let chunked = find_header(headers, "transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| invalid(&format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    }
    if let Some(len) = find_header(headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(&format!("bad content-length {len:?}")))?;
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
