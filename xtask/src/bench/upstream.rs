//! The bench's upstream (and span collector): a small keep-alive HTTP/1.1 server on
//! `127.0.0.1:0`, a thread per connection, answering `200 ok` to every request as fast as
//! `std::net` allows. It can capture the head of the next request, for the probes that check a
//! scenario's filters really ran.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::Result;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    requests: AtomicU64,
    capture: AtomicBool,
    captured: Mutex<Option<String>>,
    conns: Mutex<Vec<TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running upstream; stops and closes its connections when dropped.
pub struct Upstream {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts the server on a free loopback port.
    pub fn start(name: &str) -> Result<Upstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("bench {name}: bind: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("bench {name}: local address: {e}"))?
            .port();
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("bench-{name}"))
            .spawn(move || accept_loop(&listener, &s))
            .map_err(|e| format!("bench {name}: thread: {e}"))?;
        Ok(Upstream {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
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

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        for conn in lock(&self.shared.conns).drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).push(clone);
        }
        let s = Arc::clone(shared);
        let _ = std::thread::Builder::new()
            .name("bench-upstream-conn".to_string())
            .spawn(move || {
                let _ = serve(stream, &s);
            });
    }
}

/// Answers every request of one keep-alive connection until the peer closes it.
fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut out = 0usize;
        // Every complete request in the buffer (pipelined ones too) gets its answer.
        while let Some(len) = complete_request(&buf) {
            if shared.capture.swap(false, Ordering::SeqCst) {
                let head_end = find(&buf, b"\r\n\r\n").unwrap_or(len);
                *lock(&shared.captured) = Some(String::from_utf8_lossy(&buf[..head_end]).into());
            }
            buf.drain(..len);
            out += 1;
        }
        if out > 0 {
            shared.requests.fetch_add(out as u64, Ordering::Relaxed);
            if out == 1 {
                stream.write_all(RESPONSE)?;
            } else {
                stream.write_all(&RESPONSE.repeat(out))?;
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the first complete request in `buf` (head and body, framed by
/// `content-length` or chunked), or `None` when more bytes are needed.
fn complete_request(buf: &[u8]) -> Option<usize> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut content_length = 0usize;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim() {
                "content-length" => content_length = value.trim().parse().ok()?,
                "transfer-encoding" => chunked = value.contains("chunked"),
                _ => {}
            }
        }
    }
    if !chunked {
        let end = head_end.checked_add(content_length)?;
        return (buf.len() >= end).then_some(end);
    }
    // Chunks: `<hex size>[;ext]\r\n<data>\r\n`, ended by a zero chunk and an empty trailer.
    let mut pos = head_end;
    loop {
        let line_end = pos + find(&buf[pos..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            let trailer_end = pos + find(&buf[pos..], b"\r\n")?;
            if trailer_end == pos {
                return Some(pos + 2);
            }
            // Skip trailer fields up to the empty line.
            let rest = find(&buf[pos..], b"\r\n\r\n")?;
            return Some(pos + rest + 4);
        }
        pos = pos.checked_add(size)?.checked_add(2)?;
        if buf.len() < pos {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_requests_by_length_and_chunks() {
        assert_eq!(
            complete_request(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Some(27)
        );
        assert_eq!(complete_request(b"GET / HTTP/1.1\r\nhost: a\r\n"), None);
        let post = b"POST /s HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(complete_request(post), Some(post.len()));
        assert_eq!(complete_request(&post[..post.len() - 1]), None);
        let chunked =
            b"POST /s HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(complete_request(chunked), Some(chunked.len()));
        assert_eq!(complete_request(&chunked[..chunked.len() - 2]), None);
    }

    #[test]
    fn answers_keep_alive_requests_and_captures_one() -> Result<()> {
        let up = Upstream::start("test")?;
        up.capture_next();
        let mut conn =
            TcpStream::connect((Ipv4Addr::LOCALHOST, up.port())).map_err(|e| e.to_string())?;
        let two = b"GET /a HTTP/1.1\r\nx-a: 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        conn.write_all(two).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        while got.len() < RESPONSE.len() * 2 {
            let mut b = [0u8; 512];
            let n = conn.read(&mut b).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, RESPONSE.repeat(2));
        assert_eq!(up.requests(), 2);
        assert_eq!(up.captured().as_deref(), Some("GET /a HTTP/1.1\r\nx-a: 1"));
        Ok(())
    }
}
