//! The toolkit's HTTP client and servers against each other, and against raw bytes where the
//! test is about the wire (keep-alive, chunked bodies, EOF-delimited responses); no Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use toolkit::{assert_eventually, http_get, http_request, patience, Reply, Server, Upstream};

#[test]
fn client_and_upstream_round_trip() {
    let upstream = Upstream::start().unwrap();
    let resp = http_get(upstream.port(), "/hello?x=1", &[("X-Test", "yes")]).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "ok");
    assert_eq!(resp.header("Content-Length"), Some("2"));
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/hello?x=1");
    assert_eq!(reqs[0].header("x-test"), Some("yes"));
    assert!(
        reqs[0].headers.iter().any(|(n, _)| n == "x-test"),
        "names are lowercase"
    );
    assert!(
        reqs[0].header("user-agent").is_none() && reqs[0].header("accept").is_none(),
        "the client adds no headers of its own: {:?}",
        reqs[0].headers
    );
    assert!(reqs[0].body.is_empty());
}

#[test]
fn upstream_answers_the_configured_reply() {
    let upstream = Upstream::with_reply(Reply {
        status: 503,
        headers: vec![("X-From".to_string(), "upstream".to_string())],
        body: b"down".to_vec(),
    })
    .unwrap();
    let resp = http_request("POST", upstream.port(), "/p", &[], b"payload").unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (503, "down"), "{resp:?}");
    assert_eq!(resp.header("x-from"), Some("upstream"));
    assert_eq!(upstream.requests()[0].body, b"payload");

    upstream.set_reply(Reply::default());
    assert_eq!(http_get(upstream.port(), "/", &[]).unwrap().status, 200);
    assert_eq!(upstream.requests().len(), 2);
}

#[test]
fn servers_take_more_header_fields_than_envoy_lets_through() {
    let upstream = Upstream::start().unwrap();
    let names: Vec<String> = (0..300).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let resp = http_get(upstream.port(), "/", &headers).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(upstream.requests()[0].header("x-h299"), Some("v"));
}

#[test]
fn client_sends_the_host_it_is_given() {
    let upstream = Upstream::start().unwrap();
    http_get(upstream.port(), "/", &[("host", "orders")]).unwrap();
    assert_eq!(upstream.requests()[0].header("host"), Some("orders"));
}

/// Reads one response (status line, headers, content-length body) from a keep-alive connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, body)
}

#[test]
fn upstream_keeps_alive_and_reads_chunked_bodies() {
    let upstream = Upstream::start().unwrap();
    let mut conn = TcpStream::connect(("127.0.0.1", upstream.port())).unwrap();
    conn.set_read_timeout(Some(patience())).unwrap();
    conn.write_all(
        b"POST /one HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n\
          GET /two HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(conn);
    for _ in 0..2 {
        let (status, body) = read_response(&mut reader);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(body, b"ok");
    }
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/one");
    assert_eq!(reqs[0].body, b"hello world");
    assert_eq!(reqs[1].path, "/two");
}

#[test]
fn client_reads_chunked_and_eof_delimited_responses() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for reply in [
            &b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            &b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nuntil eof"[..],
        ] {
            let (mut s, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
            }
            s.write_all(reply).unwrap();
        }
    });
    let chunked = http_get(port, "/", &[]).unwrap();
    assert_eq!((chunked.status, chunked.body.as_str()), (201, "abc"));
    let eof = http_get(port, "/", &[]).unwrap();
    assert_eq!((eof.status, eof.body.as_str()), (200, "until eof"));
    assert_eq!(eof.header("x-a"), Some("1"));
    server.join().unwrap();
}

#[test]
fn client_fails_cleanly_when_nothing_listens() {
    // Port 1 (tcpmux) has no listener on a test machine: the connection is refused.
    let err = http_get(1, "/", &[]).unwrap_err();
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn servers_stop_on_drop() {
    let port = {
        let upstream = Upstream::start().unwrap();
        assert_eq!(http_get(upstream.port(), "/", &[]).unwrap().status, 200);
        upstream.port()
    };
    assert!(http_get(port, "/", &[]).is_err());
}

#[test]
fn a_blocking_handler_does_not_hold_up_other_requests() {
    let server = Server::start("slow", |req| {
        if req.path == "/slow" {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        Reply::new(200, req.path.clone())
    })
    .unwrap();
    let port = server.port();
    let slow = std::thread::spawn(move || http_get(port, "/slow", &[]).unwrap());
    let started = std::time::Instant::now();
    assert_eq!(http_get(port, "/fast", &[]).unwrap().body, "/fast");
    assert!(started.elapsed() < std::time::Duration::from_millis(400));
    assert_eq!(slow.join().unwrap().body, "/slow");
}

#[test]
fn eventually_polls_until_true() {
    let mut calls = 0;
    assert_eventually!({
        calls += 1;
        calls >= 3
    });
    assert_eq!(calls, 3);
}

#[test]
#[should_panic(expected = "not found: run `cargo xtask build` first")]
fn wasm_path_panics_when_the_filter_is_not_built() {
    toolkit::wasm_path("no-such-filter-ever");
}

#[test]
fn repeated_gets_share_one_kept_alive_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // One connection only: a second one would never be accepted and the client would time
        // out, so the count below also proves the reuse.
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut answered = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                return answered;
            }
            if line == "\r\n" {
                answered += 1;
                let status = if answered == 2 { "503 Busy" } else { "200 OK" };
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                writer.write_all(reply.as_bytes()).unwrap();
            }
        }
    });
    let ok = toolkit::http::get_repeatedly(port, "/r", &[("x-n", "1")], 5).unwrap();
    assert_eq!(ok, 4, "every answer but the 503 counts");
    // The client's connection closes when its agent drops at the end of the call.
    assert_eq!(server.join().unwrap(), 5);
}
