//! Malformed traffic through a real sidecar with all three filters (`FAIL_CLOSED`, so a failed VM
//! would fail requests visibly): oversized and repeated headers, non-UTF-8 header values written
//! as raw bytes on the socket, a 100-member tracestate, huge baggage, every invalid traceparent
//! form, forged and truncated peer identity headers, garbage retry and deadline headers. Each
//! request is served (or refused by Envoy's own codec with a 4xx), the filter counts the case,
//! and Envoy's wasm stats show no VM failure, reload or restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_filters;

use all_filters::{raw_request, start, stat_sum, vm_stats, Configs, Sidecar};
use integration::{assert_eventually, http_get, Envoy};

/// A hostile request: header fields as raw bytes, what must happen, and which stat must move.
struct Case {
    name: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// `Some(status)`: Envoy itself refuses with this status (the filters never see it).
    refused: Option<u16>,
    /// Every stat whose name contains all these parts is summed; the sum must grow.
    counter: Vec<&'static str>,
    inbound: bool,
}

fn case(name: &str, headers: Vec<(&str, Vec<u8>)>, counter: &[&'static str]) -> Case {
    Case {
        name: name.to_string(),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v))
            .collect(),
        refused: None,
        counter: counter.to_vec(),
        inbound: false,
    }
}

fn s(v: &str) -> Vec<u8> {
    v.as_bytes().to_vec()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const INVALID: &str = "meshwasm_trace_invalid_headers_total";
const TRACE_REQUESTS: &str = "meshwasm_trace_requests_total";
const REJECTED: &str = "mesh_peer_identity_rejected_total;.reporter=destination";
const STRIPPED: &str = "meshwasm_retry_client_headers_stripped_total";

/// Every invalid `traceparent` form: wrong length, case, version, separators, ids, flags.
fn invalid_traceparents() -> Vec<String> {
    let ok_tail = format!("{TRACE}-{SPAN}-01");
    vec![
        String::new(),
        " ".to_string(),
        "00".to_string(),
        format!("00-{TRACE}-{SPAN}"),
        format!("00-{TRACE}-{SPAN}-"),
        format!("00-{TRACE}-{SPAN}-1"),
        format!("00-{TRACE}-{SPAN}-011"),
        format!("00-{}-{SPAN}-01", &TRACE[1..]),
        format!("00-{TRACE}0-{SPAN}-01"),
        format!("00-{TRACE}-{}-01", &SPAN[1..]),
        format!("00-{}-{SPAN}-01", TRACE.to_ascii_uppercase()),
        format!("00-{TRACE}-{}-01", SPAN.to_ascii_uppercase()),
        format!("0A-{ok_tail}"),
        format!("ff-{ok_tail}"),
        format!("0g-{ok_tail}"),
        format!("-00-{ok_tail}"),
        format!("00_{TRACE}_{SPAN}_01"),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{TRACE}-{SPAN}-zz"),
        format!("00-{TRACE}-{SPAN}-0G"),
        format!("00-{}-{SPAN}-01", "g".repeat(32)),
        // (Trailing whitespace is not an invalid form on the wire: Envoy trims it, as HTTP says.)
        format!("00-{TRACE}-{SPAN}-01\t-01"),
        format!("00 -{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}--{SPAN}-01"),
        format!("01-{TRACE}-{SPAN}"),
        format!("01-{TRACE}-{SPAN}-01x"),
        "00-0-0-0".to_string(),
        "x".repeat(4096),
    ]
}

fn cases() -> Vec<Case> {
    let valid_tp = format!("00-{TRACE}-{SPAN}-01");
    let mut out = Vec::new();

    // Header sizes: under Envoy's 60 KiB default header limit the filters see it all; over it,
    // Envoy's codec answers 431 before any filter runs.
    out.push(case(
        "58 KiB header",
        vec![("x-big", vec![b'a'; 58 * 1024])],
        &[TRACE_REQUESTS],
    ));
    out.push(case(
        "many headers near the limit",
        (0..90)
            .map(|i| ("x-filler", s(&format!("{i}-{}", "b".repeat(600)))))
            .collect(),
        &[TRACE_REQUESTS],
    ));
    let mut too_big = case("70 KiB header", vec![("x-big", vec![b'a'; 70 * 1024])], &[]);
    too_big.refused = Some(431);
    out.push(too_big);
    // A control character in a value: Envoy's codec answers 400.
    let mut control = case(
        "control character in a value",
        vec![("traceparent", s("00-\u{1}"))],
        &[],
    );
    control.refused = Some(400);
    out.push(control);

    // Repeated headers.
    out.push(case(
        "repeated traceparent",
        (0..50)
            .map(|i| ("traceparent", s(&format!("00-{TRACE}-{:016x}-01", i + 1))))
            .collect(),
        &[TRACE_REQUESTS],
    ));
    out.push(case(
        "repeated retry headers",
        (0..50)
            .flat_map(|i| {
                [
                    ("x-envoy-max-retries", s(&i.to_string())),
                    ("x-envoy-retry-on", s("5xx")),
                ]
            })
            .collect(),
        &[STRIPPED],
    ));
    out.push(case(
        "repeated baggage and tracestate",
        // 90 fields: Envoy's default limit is 100 header fields (more: 431).
        (0..30)
            .flat_map(|i| {
                [
                    ("traceparent", s(&valid_tp)),
                    ("tracestate", s(&format!("k{i}=v{i}"))),
                    ("baggage", s(&format!("k{i}=v{i}"))),
                ]
            })
            .collect(),
        &[TRACE_REQUESTS],
    ));

    // Non-UTF-8 values (obs-text bytes 0x80..0xff, and invalid UTF-8 sequences).
    let latin1 = |prefix: &str| {
        let mut v = s(prefix);
        v.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0x80, 0xa0, 0xe2, 0x82]);
        v
    };
    out.push(case(
        "non-UTF-8 traceparent",
        vec![("traceparent", latin1("00-"))],
        &[INVALID],
    ));
    out.push(case(
        "non-UTF-8 tracestate with a valid traceparent",
        vec![("traceparent", s(&valid_tp)), ("tracestate", latin1("a="))],
        &[INVALID],
    ));
    out.push(case(
        "non-UTF-8 baggage",
        vec![("baggage", latin1("k="))],
        &[INVALID],
    ));
    out.push(case(
        "non-UTF-8 b3 and x-b3-traceid",
        vec![("b3", latin1("")), ("x-b3-traceid", latin1(""))],
        &[TRACE_REQUESTS],
    ));
    out.push(case(
        "non-UTF-8 retry headers",
        vec![
            ("x-envoy-max-retries", latin1("1")),
            ("x-envoy-retry-on", latin1("5xx")),
            ("grpc-timeout", latin1("1")),
        ],
        &[STRIPPED],
    ));
    out.push(case(
        "non-UTF-8 path-like headers",
        vec![
            ("x-request-id", latin1("id-")),
            ("user-agent", latin1("ua")),
        ],
        &[TRACE_REQUESTS],
    ));

    // tracestate and baggage at and over their limits.
    let members: Vec<String> = (0..100).map(|i| format!("vendor{i}=value{i}")).collect();
    out.push(case(
        "100-member tracestate",
        vec![
            ("traceparent", s(&valid_tp)),
            ("tracestate", s(&members.join(","))),
        ],
        &[INVALID, "tracestate_too_many_members"],
    ));
    out.push(case(
        "tracestate with duplicate keys",
        vec![
            ("traceparent", s(&valid_tp)),
            ("tracestate", s("a=1,b=2,a=3")),
        ],
        &[INVALID, "tracestate_duplicate_key"],
    ));
    out.push(case(
        "40 KiB baggage",
        vec![("baggage", s(&format!("k={}", "v".repeat(40 * 1024))))],
        &[INVALID, "baggage_too_large"],
    ));
    let bag: Vec<String> = (0..500).map(|i| format!("k{i}=v")).collect();
    out.push(case(
        "500-member baggage",
        vec![("baggage", s(&bag.join(",")))],
        &[INVALID, "baggage_too_many_members"],
    ));
    out.push(case(
        "malformed baggage",
        vec![("baggage", s("=;;,,%zz=%%%"))],
        &[INVALID],
    ));

    for (i, tp) in invalid_traceparents().into_iter().enumerate() {
        out.push(case(
            &format!("invalid traceparent #{i} {:?}", preview(&tp)),
            vec![("traceparent", s(&tp))],
            &[INVALID],
        ));
    }
    for (i, b3) in ["", "0-0", "zzz", &format!("{TRACE}-{SPAN}-x"), TRACE]
        .iter()
        .enumerate()
    {
        out.push(case(
            &format!("invalid b3 #{i}"),
            vec![("b3", s(b3))],
            &[TRACE_REQUESTS],
        ));
    }
    out.push(case(
        "b3 multi with a 200-digit trace id",
        vec![
            ("x-b3-traceid", s(&"a".repeat(200))),
            ("x-b3-spanid", s(SPAN)),
            ("x-b3-sampled", s("maybe")),
        ],
        &[TRACE_REQUESTS],
    ));

    // Peer identity on the inbound listener (signing on).
    let signed = "v1;s=frontend;v=v1;t=1700000000;m=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let peers: Vec<(&str, Vec<u8>)> = vec![
        ("forged signature", s(signed)),
        ("truncated", s(&signed[..30])),
        ("unsigned", s("v1;s=payments;v=v9")),
        ("unknown version", s("v9;s=payments")),
        ("empty", s("")),
        ("only version", s("v1;")),
        ("bad percent-encoding", s("v1;s=%zz%;m=%%")),
        ("32 KiB", s(&format!("v1;s={}", "p".repeat(32 * 1024)))),
        ("non-UTF-8", latin1("v1;s=")),
        ("duplicate fields", s("v1;s=a;s=b;s=c;m=x;m=y")),
        ("future timestamp", s("v1;s=a;t=99999999999999999999;m=x")),
    ];
    for (name, value) in peers {
        let mut c = case(
            &format!("x-mesh-peer {name}"),
            vec![("x-mesh-peer", value)],
            &[REJECTED],
        );
        c.inbound = true;
        out.push(c);
    }
    let mut c = case(
        "x-mesh-peer repeated",
        (0..20).map(|_| ("x-mesh-peer", s(signed))).collect(),
        &[REJECTED],
    );
    c.inbound = true;
    out.push(c);

    // Garbage retry-control and deadline headers: stripped (counted) or ignored, never obeyed.
    for (name, value) in [
        ("x-envoy-max-retries", "abc"),
        ("x-envoy-max-retries", "-1"),
        ("x-envoy-max-retries", "99999999999999999999999"),
        ("x-envoy-retry-on", "5xx,,,;;garbage"),
        ("x-envoy-retry-grpc-on", "unavailable,,???"),
        ("x-envoy-retriable-status-codes", "999,-1,abc"),
        ("x-envoy-retriable-header-names", ",,,"),
        ("x-envoy-upstream-rq-timeout-ms", "-5"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "1e99"),
        ("x-envoy-hedge-on-per-try-timeout", "maybe"),
    ] {
        out.push(case(
            &format!("{name}: {value:?}"),
            vec![(name, s(value))],
            &[STRIPPED],
        ));
    }
    // Valid-but-odd values carry deadlines long enough for the fast upstream: a 1 ns deadline
    // is honoured by Envoy with a 504, which is right, not a filter failure.
    for value in [
        "abc",
        "999999999999H",
        "99999999n",
        "-1S",
        "",
        "00000001000m",
        "1",
    ] {
        out.push(case(
            &format!("grpc-timeout: {value:?}"),
            vec![("grpc-timeout", s(value))],
            &["meshwasm_retry_requests_total"],
        ));
    }
    for value in ["abc", "-1", "18446744073709551616"] {
        out.push(case(
            &format!("x-envoy-expected-rq-timeout-ms: {value:?}"),
            vec![("x-envoy-expected-rq-timeout-ms", s(value))],
            &["meshwasm_retry_requests_total"],
        ));
    }
    out
}

fn preview(s: &str) -> String {
    if s.len() > 40 {
        format!("{}... ({} bytes)", &s[..40], s.len())
    } else {
        s.to_string()
    }
}

fn request_bytes(path: &str, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\nhost: orders\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// The status of a well-formed `GET path` with `headers` (and `host: orders`, as the hostile
/// requests), sent by the toolkit's client.
fn plain_get(port: u16, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut all = vec![("host", "orders")];
    all.extend_from_slice(headers);
    http_get(port, path, &all).unwrap().status
}

/// The VM stats that a failure, reload or restart would change.
fn vm_signature(envoy: &Envoy) -> Vec<(String, u64)> {
    vm_stats(&envoy.stats())
        .into_iter()
        .filter(|(n, _)| !n.contains("remote_load"))
        .collect()
}

fn check_no_vm_trouble(sidecar: &Sidecar, before: &[(String, u64)]) {
    let after = vm_signature(&sidecar.envoy);
    assert_eq!(before, after.as_slice(), "wasm VM stats changed");
    for (name, value) in &after {
        if name.contains("vm_reload") || name.contains("fail") {
            assert_eq!(*value, 0, "{name}: {after:?}");
        }
    }
    let log = sidecar.envoy.log();
    for bad in ["panicked", "Uncaught", "wasm trap", "VM failed", "critical"] {
        assert!(!log.contains(bad), "Envoy log has `{bad}`:\n{log}");
    }
}

#[test]
fn hostile_requests_are_served_counted_and_no_vm_fails() {
    let configs = Configs {
        failure_policy: "FAIL_CLOSED".to_string(),
        ..Configs::default()
    };
    let sidecar = start(&configs);
    // Warm up: every worker's VMs are created and have served a request.
    for _ in 0..8 {
        assert_eq!(plain_get(sidecar.outbound(), "/warm", &[]), 200);
        assert_eq!(plain_get(sidecar.inbound(), "/warm", &[]), 200);
    }
    let before = vm_signature(&sidecar.envoy);
    let cases = cases();
    let (mut served, mut refused) = (0, 0);
    for (i, c) in cases.iter().enumerate() {
        let port = if c.inbound {
            sidecar.inbound()
        } else {
            sidecar.outbound()
        };
        let counter_before = stat_sum(&sidecar.envoy.stats(), &c.counter);
        let upstream_before = sidecar.upstream.requests().len() + sidecar.app.requests().len();
        let (status, raw) = raw_request(port, &request_bytes(&format!("/hostile/{i}"), &c.headers));
        match c.refused {
            None => {
                assert_eq!(status, 200, "case `{}` was not served: {raw}", c.name);
                served += 1;
                assert_eq!(
                    sidecar.upstream.requests().len() + sidecar.app.requests().len(),
                    upstream_before + 1,
                    "case `{}`: the upstream did not get exactly one request",
                    c.name
                );
                assert_eventually!(
                    stat_sum(&sidecar.envoy.stats(), &c.counter) > counter_before,
                    "case `{}`: no stat containing {:?} moved (was {counter_before})",
                    c.name,
                    c.counter
                );
            }
            Some(want) => {
                assert_eq!(status, want, "case `{}`: {raw}", c.name);
                refused += 1;
            }
        }
        // The sidecar still serves a plain request after each case.
        assert_eq!(
            plain_get(port, "/after", &[]),
            200,
            "after case `{}`",
            c.name
        );
    }
    check_no_vm_trouble(&sidecar, &before);
    println!(
        "hostile inputs: {} cases ({served} served, {refused} refused by Envoy's codec), VM stats unchanged: {before:?}",
        cases.len()
    );
}

#[test]
fn forged_identities_are_unknown_and_invalid_headers_never_reach_the_app() {
    let sidecar = start(&Configs::default());
    let forged = "v1;s=payments;v=v1;t=1700000000;m=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let status = plain_get(
        sidecar.inbound(),
        "/peer",
        &[
            ("x-mesh-peer", forged),
            ("traceparent", "ff-zz"),
            ("tracestate", "a=1,a=2"),
        ],
    );
    assert_eq!(status, 200);
    let req = sidecar.app.requests().pop().unwrap();
    assert_eq!(
        req.header("x-mesh-peer"),
        None,
        "peer header reached the app"
    );
    assert_ne!(req.header("traceparent"), Some("ff-zz"));
    assert_eq!(req.header("tracestate"), None);
    assert_eventually!(
        stat_sum(
            &sidecar.envoy.stats(),
            &["mesh_requests_total;.reporter=destination;.source_service=unknown"]
        ) >= 1,
        "{}",
        sidecar.envoy.stats()
    );
    assert_eq!(
        stat_sum(&sidecar.envoy.stats(), &["source_service=payments"]),
        0,
        "a forged identity was believed"
    );
}
