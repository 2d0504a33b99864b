//! Tests of the harness itself, without Envoy: the upstream server and the client round-trip,
//! keep-alive and chunked bodies, template rendering and stats parsing.

use std::io::{BufReader, Write};
use std::net::TcpStream;

use super::*;
use crate::http::{read_body, read_head};
use crate::upstream::{Reply, Upstream};

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
    assert!(reqs[0].body.is_empty());
}

#[test]
fn upstream_answers_the_configured_reply() {
    let upstream = Upstream::with_reply(Reply {
        status: 503,
        headers: vec![("X-From".to_string(), "upstream".to_string())],
        body: "down".to_string(),
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
        let (status, headers) = read_head(&mut reader).unwrap().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(read_body(&mut reader, &headers, false).unwrap(), b"ok");
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
            read_head(&mut reader).unwrap();
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
    let port = free_ports(1).unwrap()[0];
    let err = http_get(port, "/", &[]).unwrap_err();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn upstream_stops_on_drop() {
    let port = {
        let upstream = Upstream::start().unwrap();
        assert_eq!(http_get(upstream.port(), "/", &[]).unwrap().status, 200);
        upstream.port()
    };
    assert!(http_get(port, "/", &[]).is_err());
}

#[test]
fn renders_placeholders_and_reports_missing_ones() {
    let vars = [
        ("A".to_string(), "1".to_string()),
        ("B_C".to_string(), "two".to_string()),
    ];
    assert_eq!(
        render("x: {{A}}\ny: '{{B_C}}{{A}}'", &vars).unwrap(),
        "x: 1\ny: 'two1'"
    );
    let err = render("{{A}} {{NOPE}} {{NOPE}}", &vars).unwrap_err();
    assert!(err.contains("NOPE"), "{err}");
    assert_eq!(
        placeholders("{{PORT_ADMIN}} {{PORT_LISTENER}} {{PORT_ADMIN}} {{ not one }}"),
        ["PORT_ADMIN", "PORT_LISTENER"]
    );
}

#[test]
fn escapes_single_quoted_yaml() {
    assert_eq!(yaml_single_quoted(r#"{"a": "it's"}"#), r#"{"a": "it''s"}"#);
}

#[test]
fn parses_stats_lines() {
    let stats = "cluster.x.upstream_rq_total: 3\nserver.live: 1\n\
                 http.ingress.downstream_rq_time: P0(nan,1) P25(nan,1)\n";
    assert_eq!(parse_stat(stats, "cluster.x.upstream_rq_total"), Some(3));
    assert_eq!(parse_stat(stats, "server.live"), Some(1));
    assert_eq!(parse_stat(stats, "http.ingress.downstream_rq_time"), None);
    assert_eq!(parse_stat(stats, "missing"), None);
}

#[test]
fn free_ports_are_distinct() {
    let ports = free_ports(5).unwrap();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "{ports:?}");
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
    wasm_path("no-such-filter-ever");
}
