//! The trace filter in a real Envoy: client -> sidecar A -> an app that copies the trace
//! headers to its own outbound call -> sidecar B -> upstream, with a collector in the test
//! receiving Zipkin spans from A and OTLP spans from B. Also: invalid incoming headers are
//! replaced, and a collector that is down or hangs never delays or fails a request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use integration::upstream::{Reply, Upstream};
use integration::{
    assert_eventually, http_get, http_request, wasm_path, yaml_single_quoted, Envoy,
};
use serde_json::Value;

const TEMPLATE: &str = include_str!("../configs/trace_propagation.yaml");
const COPIED: [&str; 10] = toolkit::TRACE_HEADERS;

/// The app between the two sidecars: copies the trace headers of each inbound request onto
/// its outbound call to sidecar B (port set once Envoy runs) and answers with B's answer.
fn start_app(next_hop: Arc<AtomicU16>) -> Upstream {
    Upstream::with_handler(move |req| {
        let forward: Vec<(&str, &str)> = req
            .headers
            .iter()
            .filter(|(k, _)| COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, body) = match http_get(next_hop.load(Ordering::SeqCst), &req.path, &forward) {
            Ok(r) => (r.status, r.body),
            Err(e) => (502, e),
        };
        Reply {
            status,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    })
    .unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn config(service: &str, format: &str, extra: &str) -> String {
    format!(
        r#"{{"service_name":"{service}","sampling_rate":1.0,"propagate":["w3c","b3"],"response_trace_header":"x-trace-id",
            "export":{{"cluster":"collector","format":"{format}","batch_size":1,"flush_interval_ms":100,"timeout_ms":300{extra}}}}}"#
    )
}

struct Mesh {
    envoy: Envoy,
    app: Upstream,
    upstream: Upstream,
}

fn start_mesh(collector_port: u16) -> Mesh {
    let upstream = Upstream::start().unwrap();
    let hop = Arc::new(AtomicU16::new(0));
    let app = start_app(Arc::clone(&hop));
    let envoy = Envoy::builder(TEMPLATE)
        .var(
            "WASM",
            yaml_single_quoted(&wasm_path("trace-propagation").display().to_string()),
        )
        .var(
            "CONFIG_A",
            yaml_single_quoted(&config("frontend", "zipkin", "")),
        )
        .var(
            "CONFIG_B",
            yaml_single_quoted(&config("orders", "otlp", "")),
        )
        .var("PORT_APP", app.port().to_string())
        .var("PORT_UPSTREAM", upstream.port().to_string())
        .var("PORT_COLLECTOR", collector_port.to_string())
        .start()
        .unwrap();
    hop.store(envoy.port("PORT_LISTENER_B"), Ordering::SeqCst);
    Mesh {
        envoy,
        app,
        upstream,
    }
}

fn spans_sum(envoy: &Envoy, outcome_prefix: &str) -> u64 {
    envoy
        .stats()
        .lines()
        .filter(|l| {
            l.contains("meshwasm_trace_spans_total")
                && l.contains(&format!("outcome={outcome_prefix}"))
        })
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn one_trace_across_two_hops_with_spans_in_both_formats() {
    let collector = Upstream::with_reply(Reply {
        status: 202,
        ..Reply::default()
    })
    .unwrap();
    let mesh = start_mesh(collector.port());
    let client_span = "00f067aa0ba902b7";
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-{client_span}-01");
    let started = Instant::now();
    let resp = http_get(
        mesh.envoy.listener_port(),
        "/checkout?cart=1",
        &[("traceparent", &tp)],
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-trace-id"), Some(trace));

    // What each hop received.
    let seen: Vec<Vec<(String, String)>> =
        mesh.app.requests().into_iter().map(|r| r.headers).collect();
    assert_eq!(seen.len(), 1);
    let at_app = header(&seen[0], "traceparent").unwrap().to_string();
    let span_a = at_app.split('-').nth(2).unwrap().to_string();
    assert!(at_app.starts_with(&format!("00-{trace}-")), "{at_app}");
    assert_ne!(span_a, client_span);
    assert_eq!(header(&seen[0], "x-b3-parentspanid"), Some(client_span));
    assert_eq!(header(&seen[0], "x-b3-traceid"), Some(trace));
    let up = mesh.upstream.requests();
    assert_eq!(up.len(), 1);
    let at_up = up[0].header("traceparent").unwrap().to_string();
    let span_b = at_up.split('-').nth(2).unwrap().to_string();
    assert!(at_up.starts_with(&format!("00-{trace}-")), "{at_up}");
    assert_ne!(span_b, span_a);
    assert_eq!(up[0].header("x-b3-parentspanid"), Some(span_a.as_str()));
    assert_eq!(up[0].header("x-b3-spanid"), Some(span_b.as_str()));

    // The collector receives A's span as Zipkin and B's as OTLP.
    assert_eventually!(
        collector.requests().len() >= 2,
        "spans exported: {:?}",
        collector.requests()
    );
    let elapsed_us = started.elapsed().as_micros() as u64;
    let reqs = collector.requests();
    let zipkin = reqs
        .iter()
        .find(|r| r.path == "/api/v2/spans")
        .expect("a zipkin export");
    let otlp = reqs
        .iter()
        .find(|r| r.path == "/v1/traces")
        .expect("an otlp export");
    assert_eq!(zipkin.method, "POST");
    assert_eq!(zipkin.header("content-type"), Some("application/json"));
    let z: Value = serde_json::from_slice(&zipkin.body).unwrap();
    let za = &z[0];
    assert_eq!(za["traceId"], trace);
    assert_eq!(za["id"], span_a.as_str());
    assert_eq!(za["parentId"], client_span);
    assert_eq!(za["kind"], "CLIENT");
    // Named by method and Envoy's route (low-cardinality), the path in a tag without its query.
    assert_eq!(za["name"], "GET to_app");
    assert_eq!(za["tags"]["http.path"], "/checkout");
    assert_eq!(za["localEndpoint"]["serviceName"], "frontend");
    assert_eq!(za["tags"]["http.status_code"], "200");
    assert_eq!(za["tags"]["upstream_cluster"], "app");
    assert_eq!(za["tags"]["route_name"], "to_app");
    let o: Value = serde_json::from_slice(&otlp.body).unwrap();
    let rs = &o["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0]["value"]["stringValue"],
        "orders"
    );
    let ob = &rs["scopeSpans"][0]["spans"][0];
    assert_eq!(ob["traceId"], trace);
    assert_eq!(ob["spanId"], span_b.as_str());
    assert_eq!(ob["parentSpanId"], span_a.as_str());
    assert_eq!(ob["kind"], 3);
    assert_eq!(ob["name"], "GET to_upstream");
    let ob_path = ob["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "http.path")
        .map(|a| a["value"]["stringValue"].clone());
    assert_eq!(ob_path, Some(Value::from("/checkout")));
    // Timings: A's span encloses B's, and both fit in what the client saw.
    let a_start = za["timestamp"].as_u64().unwrap();
    let a_end = a_start + za["duration"].as_u64().unwrap();
    let b_start = ob["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1000;
    let b_end = ob["endTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1000;
    assert!(
        a_start <= b_start && b_end <= a_end + 1000,
        "A [{a_start},{a_end}] B [{b_start},{b_end}]"
    );
    assert!(
        a_end - a_start <= elapsed_us,
        "{} > {elapsed_us}",
        a_end - a_start
    );
    assert_eventually!(
        spans_sum(&mesh.envoy, "exported") >= 2,
        "{}",
        mesh.envoy.stats()
    );
}

#[test]
fn invalid_incoming_headers_are_replaced_and_counted() {
    let collector = Upstream::with_reply(Reply {
        status: 202,
        ..Reply::default()
    })
    .unwrap();
    let mesh = start_mesh(collector.port());
    let bad = [
        (
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        ),
        ("tracestate", "x=1"),
        ("x-b3-traceid", "not-hex"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("b3", "zzz"),
    ];
    let resp = http_get(mesh.envoy.listener_port(), "/", &bad).unwrap();
    assert_eq!(resp.status, 200);
    let seen: Vec<Vec<(String, String)>> =
        mesh.app.requests().into_iter().map(|r| r.headers).collect();
    let tp = header(&seen[0], "traceparent").unwrap();
    assert_ne!(tp, bad[0].1);
    assert!(
        !tp.to_ascii_lowercase()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{tp}"
    );
    assert_eq!(header(&seen[0], "tracestate"), None);
    assert_ne!(header(&seen[0], "x-b3-traceid"), Some("not-hex"));
    assert_eq!(header(&seen[0], "b3"), None);
    let invalid: u64 = mesh
        .envoy
        .stats()
        .lines()
        .filter(|l| l.contains("meshwasm_trace_invalid_headers_total"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(invalid >= 3, "{}", mesh.envoy.stats());
}

fn requests_are_unaffected(mesh: &Mesh, n: usize) {
    for i in 0..n {
        let t = Instant::now();
        let resp = http_request(
            "GET",
            mesh.envoy.listener_port(),
            &format!("/r{i}"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        // The export timeout is 300 ms: a request that waited on the exporter would show it.
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn collector_down_costs_spans_not_requests() {
    // Port 1 (tcpmux): nothing listens there on a test machine, so connections are refused. (A
    // port bound and released here could be taken by anyone meanwhile.)
    let mesh = start_mesh(1);
    requests_are_unaffected(&mesh, 30);
    assert_eq!(mesh.upstream.requests().len(), 30);
    assert_eventually!(
        spans_sum(&mesh.envoy, "dropped") >= 10,
        "{}",
        mesh.envoy.stats()
    );
    assert_eq!(spans_sum(&mesh.envoy, "exported"), 0);
}

#[test]
fn hanging_collector_costs_spans_not_requests() {
    // Accepts connections and never answers.
    // Raw socket: it accepts and never answers; a server library always answers.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&held);
    thread::spawn(move || {
        for c in listener.incoming().flatten() {
            h.lock().unwrap().push(c);
        }
    });
    let mesh = start_mesh(port);
    requests_are_unaffected(&mesh, 30);
    assert_eventually!(
        spans_sum(&mesh.envoy, "dropped") >= 5,
        "{}",
        mesh.envoy.stats()
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the collector was reached"
    );
}

/// W3C Trace Context Level 2 `tracestate` in a real Envoy, through both sidecars: several
/// fields are combined in order into one, a duplicate key keeps the header without the later
/// entry, a multi-tenant key beyond Level 1's limits is kept, and an invalid member drops the
/// whole header while `traceparent` is kept (the W3C test suite's cases).
#[test]
fn tracestate_is_combined_and_judged_per_case() {
    let collector = Upstream::with_reply(Reply {
        status: 202,
        ..Reply::default()
    })
    .unwrap();
    let mesh = start_mesh(collector.port());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let long_system = format!("t@{}=1", "v".repeat(15));
    let cases: Vec<(Vec<&str>, Option<String>)> = vec![
        (
            vec!["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
            Some("foo=1,bar=2,rojo=1,congo=2,baz=3".to_string()),
        ),
        (
            vec!["foo=1,foo=2", &long_system],
            Some(format!("foo=1,{long_system}")),
        ),
        (vec!["foo=1", "@foo=1,bar=2"], None),
    ];
    for (i, (fields, want)) in cases.iter().enumerate() {
        let mut headers = vec![("traceparent", tp.as_str())];
        headers.extend(fields.iter().map(|f| ("tracestate", *f)));
        let resp = http_get(mesh.envoy.listener_port(), "/", &headers).unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        // At the app (after sidecar A) and at the upstream (after sidecar B).
        let at_app = &mesh.app.requests()[i].headers;
        let up = &mesh.upstream.requests()[i];
        for (hop, seen) in [("app", at_app.clone()), ("upstream", up.headers.clone())] {
            let tracestate: Vec<&str> = seen
                .iter()
                .filter(|(k, _)| k == "tracestate")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(
                tracestate,
                want.iter().map(String::as_str).collect::<Vec<_>>(),
                "{hop}: {fields:?}"
            );
            let traceparent = header(&seen, "traceparent").unwrap();
            assert!(
                traceparent.starts_with(&format!("00-{trace}-")),
                "{hop}: {traceparent}"
            );
        }
    }
    let stat = |reason: &str| -> u64 {
        mesh.envoy
            .stats()
            .lines()
            .filter(|l| l.contains("meshwasm_trace_invalid_headers_total"))
            .filter(|l| l.contains(&format!("reason={reason}")))
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        stat("tracestate_duplicate_key"),
        1,
        "{}",
        mesh.envoy.stats()
    );
    assert_eq!(stat("tracestate_key"), 1, "{}", mesh.envoy.stats());
}
