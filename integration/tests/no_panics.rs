//! Host data and host answers that the `proxy-wasm` crate's helpers panic on, through a real
//! sidecar with all three filters (`all_filters.yaml`, `FAIL_CLOSED`: a VM that panics fails
//! every later request on its worker with 503, and Envoy logs `panicked at`).
//!
//! - **A header name that is not UTF-8**, added by an Envoy filter in front of ours (Lua: header
//!   maps do not check names, only the HTTP codecs do). The crate's `get_map_bytes` unwraps
//!   `String::from_utf8` on every name, and every filter reads the request map whole; the SDK
//!   decodes names itself (lossy, counted in `meshwasm_sdk_header_names_not_utf8_total`). This
//!   is the test that fails without that: before it, the request and every one after it got
//!   503 and the log showed `panicked at .../proxy-wasm-0.2.5/src/hostcalls.rs:1345:46`.
//! - **The same name from the network**: Envoy 1.40's codecs refuse it (HTTP/1.1 request: 400;
//!   HTTP/2 request: the connection is closed; upstream or collector response: 502 / a failed
//!   callout), so no filter sees it.
//! - **Clients that reset before any response** (a hanging upstream): the filters' end-of-stream
//!   code runs with no response headers. Envoy 1.40 answers `NotFound` (not `BadArgument`) for a
//!   missing map in the log phase and an empty list for its pairs, so the crate's helpers would
//!   not have panicked here either; the SDK now takes any status as a value anyway.
//!
//! After each, later requests are served, the log has no panic or trap, and the wasm VM stats are
//! unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_filters;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use all_filters::{raw_request, stat_sum, vm_stats, Configs};
use integration::{assert_eventually, http_get, wasm_path, Envoy};

/// A header name with obs-text bytes (0x80..0xff), not valid UTF-8.
const NON_UTF8_NAME: &[u8] = b"x-\xff\xfe-\xc3\x28-name";

/// What a raw server answers to one request (its bytes up to the end of its body): the bytes to
/// write, or `None` to hold the connection open without answering.
type Answer = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// A loopback HTTP/1.1 server that writes exactly the bytes it is told (a header name no HTTP
/// library would send), or never answers, and keeps every request's raw bytes (so a header name
/// no HTTP library would parse still reaches it). Stops, closing what it holds, when dropped.
struct RawServer {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawServer {
    fn start(answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static) -> RawServer {
        let answer: Answer = Arc::new(answer);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&requests));
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, r, answer) = (Arc::clone(&s), Arc::clone(&r), Arc::clone(&answer));
                        thread::spawn(move || serve(stream, &answer, &r, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawServer {
            port,
            stop,
            requests,
        }
    }

    /// Answers `200 ok` to everything but what `hang` says to hold unanswered.
    fn hanging(hang: fn(&[u8]) -> bool) -> RawServer {
        RawServer::start(move |req| (!hang(req)).then(ok_response))
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accepted() -> Vec<u8> {
    b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_vec()
}

fn ok_response() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
}

/// A response with the header field `name: v` written as raw bytes.
fn response_with_name(status: &str, name: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n").into_bytes();
    out.extend_from_slice(name);
    out.extend_from_slice(b": v\r\ncontent-length: 2\r\n\r\nok");
    out
}

/// Answers the requests of one connection until it closes, an answer says hang, or the server
/// stops.
fn serve(
    mut stream: TcpStream,
    answer: &Answer,
    requests: &Mutex<Vec<Vec<u8>>>,
    stop: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = Vec::new();
    let mut hanging = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if !hanging {
            if let Some(len) = whole_request(&buf) {
                let request: Vec<u8> = buf.drain(..len).collect();
                requests.lock().unwrap().push(request.clone());
                match answer(&request) {
                    Some(bytes) => {
                        if stream.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                    // Hold the connection, unanswered, until the peer closes it.
                    None => hanging = true,
                }
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// The length of the first whole request in `buf` (headers and a `content-length` body).
fn whole_request(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + body).then_some(end + body)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A Lua filter that, on a request carrying `x-inject`, adds a header named [`NON_UTF8_NAME`]
/// (Lua strings are bytes: `\255` is 0xff). Indented as an item of `http_filters:`.
const INJECT_NON_UTF8_NAME: &str = r#"          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    if handle:headers():get("x-inject") ~= nil then
                      handle:headers():add("x-\255\254-\195\040-name", "v")
                    end
                  end
"#;

/// A Lua filter that removes the header [`INJECT_NON_UTF8_NAME`] adds, placed after our filters:
/// Envoy's upstream codec refuses to send the name (503 `invalid header name`).
const REMOVE_NON_UTF8_NAME: &str = r#"          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    handle:headers():remove("x-\255\254-\195\040-name")
                  end
"#;

/// HTTP filters around the three of each listener: `before` them and `after` them (in front of
/// the router), as items of `http_filters:`.
#[derive(Default)]
struct Around {
    before: &'static str,
    after: &'static str,
}

/// The all-filters sidecar, `FAIL_CLOSED`, with `workers` workers (one: every request meets the
/// same VMs), the given upstream, app and collector ports, and filters `around` the three.
fn sidecar(workers: u32, upstream: u16, app: u16, collector: u16, around: Around) -> Envoy {
    for f in ["trace-propagation", "service-metrics", "route-retries"] {
        wasm_path(f);
    }
    let configs = Configs {
        failure_policy: "FAIL_CLOSED".to_string(),
        ..Configs::default()
    };
    let (filters, router) = (
        "          http_filters:\n",
        "          - name: envoy.filters.http.router\n",
    );
    assert_eq!(all_filters::TEMPLATE.matches(filters).count(), 2);
    assert_eq!(all_filters::TEMPLATE.matches(router).count(), 2);
    let template = all_filters::TEMPLATE
        .replace(filters, &format!("{filters}{}", around.before))
        .replace(router, &format!("{}{router}", around.after));
    let mut builder = Envoy::builder(&template)
        .concurrency(workers)
        .var("PORT_UPSTREAM", upstream.to_string())
        .var("PORT_APP", app.to_string())
        .var("PORT_COLLECTOR", collector.to_string());
    for (k, v) in configs.vars() {
        builder = builder.var(&k, v);
    }
    builder.start().unwrap()
}

fn outbound(envoy: &Envoy) -> u16 {
    envoy.listener("outbound").expect("listener outbound")
}

fn inbound(envoy: &Envoy) -> u16 {
    envoy.listener("inbound").expect("listener inbound")
}

/// The VM stats that a failure, reload or restart would change.
fn vm_signature(envoy: &Envoy) -> Vec<(String, u64)> {
    vm_stats(&envoy.stats())
        .into_iter()
        .filter(|(n, _)| !n.contains("remote_load"))
        .collect()
}

/// Plain requests on both listeners, enough to meet every worker's VMs: all must be served.
fn serves_plain_requests(envoy: &Envoy, what: &str) {
    for port in [outbound(envoy), inbound(envoy)] {
        for i in 0..8 {
            let resp = http_get(port, &format!("/plain/{i}"), &[("host", "orders")]).unwrap();
            assert_eq!(
                resp.status,
                200,
                "{what}: plain request #{i} on port {port}: {resp:?}\n{}",
                envoy.log_tail(30)
            );
        }
    }
}

/// No VM failed: the log has no panic or trap and the VM stats did not move.
fn no_vm_trouble(envoy: &Envoy, before: &[(String, u64)], what: &str) {
    let log = envoy.log();
    for bad in [
        "panicked",
        "unexpected status",
        "Uncaught",
        "wasm trap",
        "VM failed",
        "critical",
    ] {
        assert!(
            !log.contains(bad),
            "{what}: Envoy's log has `{bad}`:\n{}",
            envoy.log_tail(40)
        );
    }
    assert_eq!(
        before,
        vm_signature(envoy).as_slice(),
        "{what}: wasm VM stats changed"
    );
}

#[test]
fn a_header_name_that_is_not_utf8_from_an_earlier_filter_is_served() {
    let upstream = RawServer::hanging(|_| false);
    let app = RawServer::hanging(|_| false);
    let collector = RawServer::start(|_| Some(accepted()));
    let around = Around {
        before: INJECT_NON_UTF8_NAME,
        after: REMOVE_NON_UTF8_NAME,
    };
    let envoy = sidecar(1, upstream.port, app.port, collector.port, around);
    serves_plain_requests(&envoy, "warm-up");
    let before = vm_signature(&envoy);
    for (listener, port, server) in [
        ("outbound", outbound(&envoy), &upstream),
        ("inbound", inbound(&envoy), &app),
    ] {
        for i in 0..3 {
            let resp = http_get(
                port,
                &format!("/inject/{i}"),
                &[("host", "orders"), ("x-inject", "1")],
            )
            .unwrap();
            assert_eq!(
                resp.status,
                200,
                "{listener}: the request with the name #{i}: {resp:?}\n{}",
                envoy.log_tail(30)
            );
            // Through our filters (trace_propagation stamped it), the name removed after them.
            let seen = server.requests().pop().unwrap();
            assert!(
                contains(&seen, b"\r\ntraceparent: ") && !contains(&seen, NON_UTF8_NAME),
                "{listener}: {}",
                String::from_utf8_lossy(&seen)
            );
        }
    }
    // Each filter that read the map whole counted the name.
    let lossy = meshwasm::wire::LOSSY_HEADER_NAMES;
    assert_eventually!(
        stat_sum(&envoy.stats(), &[lossy]) >= 6,
        "{lossy}: {}",
        stat_sum(&envoy.stats(), &[lossy])
    );
    serves_plain_requests(&envoy, "after the non-UTF-8 names");
    no_vm_trouble(&envoy, &before, "a non-UTF-8 header name from a Lua filter");
}

#[test]
fn header_names_that_are_not_utf8_from_the_network_are_refused_by_envoy() {
    let bad_response = |req: &[u8]| {
        Some(if req.starts_with(b"GET /bad-response") {
            response_with_name("200 OK", NON_UTF8_NAME)
        } else {
            ok_response()
        })
    };
    let upstream = RawServer::start(bad_response);
    let app = RawServer::start(bad_response);
    // Every span batch's answer carries the name.
    let collector = RawServer::start(|_| Some(response_with_name("202 Accepted", NON_UTF8_NAME)));
    let envoy = sidecar(
        2,
        upstream.port,
        app.port,
        collector.port,
        Around::default(),
    );
    serves_plain_requests(&envoy, "warm-up");
    let before = vm_signature(&envoy);
    let batches = collector.requests().len();
    for port in [outbound(&envoy), inbound(&envoy)] {
        let mut req = b"GET /bad-name HTTP/1.1\r\nhost: orders\r\n".to_vec();
        req.extend_from_slice(NON_UTF8_NAME);
        req.extend_from_slice(b": v\r\nconnection: close\r\n\r\n");
        let (status, raw) = raw_request(port, &req);
        assert_eq!(status, 400, "HTTP/1.1 request: {raw}");
        assert_eq!(h2_get(port, NON_UTF8_NAME), H2::Closed, "HTTP/2 request");
        assert_eq!(
            h2_get(port, b"x-fine"),
            H2::Status200,
            "HTTP/2 request, fine name"
        );
        let (status, raw) = raw_request(
            port,
            b"GET /bad-response HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n",
        );
        assert_eq!(status, 502, "HTTP/1.1 response: {raw}");
    }
    for server in [&upstream, &app] {
        assert!(
            !server.requests().iter().any(|r| contains(r, NON_UTF8_NAME)),
            "a request with the name went upstream"
        );
    }
    // Span batches went out and were answered with the name (the callouts failed).
    assert_eventually!(collector.requests().len() >= batches + 2);
    serves_plain_requests(&envoy, "after the non-UTF-8 names");
    no_vm_trouble(&envoy, &before, "non-UTF-8 header names from the network");
}

#[test]
fn clients_that_reset_before_any_response_leave_every_vm_serving() {
    // The upstream (and the app, inbound) never answers `/hang`.
    let hang = |req: &[u8]| req.starts_with(b"GET /hang");
    let upstream = RawServer::hanging(hang);
    let app = RawServer::hanging(hang);
    let collector = RawServer::start(|_| Some(accepted()));
    let envoy = sidecar(
        2,
        upstream.port,
        app.port,
        collector.port,
        Around::default(),
    );
    serves_plain_requests(&envoy, "warm-up");
    let before = vm_signature(&envoy);
    // service_metrics records each stream at its end: a reset one with response code 0.
    let reset_streams = || stat_sum(&envoy.stats(), &["mesh_requests_total", "response_code=0"]);
    let resets_before = reset_streams();
    let rounds = 4;
    for round in 0..rounds {
        for (port, server) in [(outbound(&envoy), &upstream), (inbound(&envoy), &app)] {
            let seen = server.requests().len();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut client = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            client
                .write_all(format!("GET /hang/{round} HTTP/1.1\r\nhost: orders\r\n\r\n").as_bytes())
                .unwrap();
            // Once the upstream holds the request, the client gives up: no response yet.
            assert_eventually!(
                server.requests().len() > seen,
                "the request never went upstream"
            );
            client.shutdown(Shutdown::Both).unwrap();
        }
    }
    assert_eventually!(
        reset_streams() >= resets_before + 2 * rounds,
        "the filters did not see every reset stream end: {}",
        reset_streams()
    );
    serves_plain_requests(&envoy, "after the resets");
    no_vm_trouble(&envoy, &before, "client resets");
}

/// What came back for an HTTP/2 request.
#[derive(Debug, PartialEq, Eq)]
enum H2 {
    /// Response headers with `:status 200` (HPACK static index 8).
    Status200,
    /// Response headers starting with another byte.
    OtherHeaders(u8),
    /// RST_STREAM on the request's stream, with its error code.
    Reset(u32),
    /// GOAWAY, with its error code.
    GoAway(u32),
    /// The connection closed (or went silent) first.
    Closed,
}

/// Sends `GET /h2` over HTTP/2 with prior knowledge and one extra header field named `name`
/// (an HPACK literal, not Huffman-coded: the bytes go as they are); returns what came back.
fn h2_get(port: u16, name: &[u8]) -> H2 {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(integration::patience())).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.extend_from_slice(&[0x04, 3]); // :path (literal, indexed name 4)
    block.extend_from_slice(b"/h2");
    block.extend_from_slice(&[0x01, 6]); // :authority (literal, indexed name 1)
    block.extend_from_slice(b"orders");
    block.extend_from_slice(&[0x00, u8::try_from(name.len()).unwrap()]); // literal, new name
    block.extend_from_slice(name);
    block.extend_from_slice(&[1, b'v']);
    let len = u32::try_from(block.len()).unwrap().to_be_bytes();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    out.extend_from_slice(&[len[1], len[2], len[3], 1, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).unwrap();
    let code = |p: &[u8], at: usize| {
        p.get(at..at + 4)
            .map_or(u32::MAX, |b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    let mut buf = Vec::new();
    loop {
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = usize::from(buf[at]) << 16
                | usize::from(buf[at + 1]) << 8
                | usize::from(buf[at + 2]);
            if buf.len() < at + 9 + len {
                break;
            }
            let (kind, flags, stream) =
                (buf[at + 3], buf[at + 4], code(&buf, at + 5) & 0x7fff_ffff);
            let payload = &buf[at + 9..at + 9 + len];
            match kind {
                1 if stream == 1 => {
                    return match payload.first() {
                        Some(0x88) => H2::Status200,
                        other => H2::OtherHeaders(other.copied().unwrap_or(0)),
                    }
                }
                3 if stream == 1 => return H2::Reset(code(payload, 0)),
                7 => return H2::GoAway(code(payload, 4)),
                // Acknowledge the server's SETTINGS.
                4 if flags & 1 == 0 => {
                    let _ = s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
                }
                _ => {}
            }
            at += 9 + len;
        }
        buf.drain(..at);
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return H2::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
