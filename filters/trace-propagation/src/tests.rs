//! Unit tests of the trace filter on the SDK's test host: extraction and precedence, every
//! invalid form, child spans, consistency across formats, sampling, baggage, export.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meshwasm::host::MapKind;
use meshwasm::testing::{FilterHarness, HttpStream};
use serde_json::Value;

use super::*;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

fn harness(config: &str) -> FilterHarness<TracePropagation> {
    FilterHarness::new(config).unwrap()
}

fn send(
    h: &FilterHarness<TracePropagation>,
    headers: &[(&str, &str)],
) -> HttpStream<TracePropagation> {
    let mut all = vec![
        (":method", "GET"),
        (":path", "/orders?id=1"),
        (":authority", "orders"),
    ];
    all.extend_from_slice(headers);
    let mut s = h.stream();
    assert_eq!(s.request_headers(&all, true), Action::Continue);
    s
}

fn req(s: &HttpStream<TracePropagation>, name: &str) -> Option<String> {
    s.host().request_header(name)
}

fn traceparent_parts(s: &HttpStream<TracePropagation>) -> (String, String, String) {
    let tp = req(s, "traceparent").expect("traceparent written");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

#[test]
fn w3c_child_span_keeps_trace_and_writes_consistent_b3() {
    let h = harness("{}");
    let s = send(
        &h,
        &[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")],
    );
    let (trace, span, flags) = traceparent_parts(&s);
    assert_eq!(trace, TRACE);
    assert_ne!(span, PARENT);
    assert_ne!(span, "0000000000000000");
    assert_eq!(u8::from_str_radix(&flags, 16).unwrap() & 1, 1);
    assert_eq!(req(&s, "tracestate").as_deref(), Some("congo=t61rcWkgMzE"));
    assert_eq!(req(&s, "x-b3-traceid").as_deref(), Some(TRACE));
    assert_eq!(req(&s, "x-b3-spanid").as_deref(), Some(span.as_str()));
    assert_eq!(req(&s, "x-b3-parentspanid").as_deref(), Some(PARENT));
    assert_eq!(req(&s, "x-b3-sampled").as_deref(), Some("1"));
    assert_eq!(
        h.host().counter(
            "meshwasm_trace_requests_total;.direction=outbound;.context=w3c;.sampled=true"
        ),
        Some(1)
    );
}

#[test]
fn each_hop_gets_a_fresh_span_id() {
    let h = harness("{}");
    let a = traceparent_parts(&send(&h, &[("traceparent", TP)])).1;
    let b = traceparent_parts(&send(&h, &[("traceparent", TP)])).1;
    assert_ne!(a, b);
}

#[test]
fn invalid_traceparent_is_never_forwarded_and_is_counted() {
    let bad = [
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", // uppercase
        "00-00000000000000000000000000000000-b7ad6b7169203331-01", // zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", // zero parent id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // version ff
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",    // short
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", // v00 too long
        "garbage",
        "",
    ];
    for value in bad {
        let h = harness("{}");
        let s = send(&h, &[("traceparent", value), ("tracestate", "a=b")]);
        let (trace, _, _) = traceparent_parts(&s);
        assert_ne!(trace, TRACE, "{value}");
        assert_ne!(req(&s, "traceparent").as_deref(), Some(value));
        // A new trace carries no tracestate from the invalid one.
        assert_eq!(req(&s, "tracestate"), None, "{value}");
        let invalid: u64 = h
            .host()
            .metrics()
            .iter()
            .filter(|m| m.name.starts_with("meshwasm_trace_invalid_headers_total"))
            .map(|m| m.value as u64)
            .sum();
        assert_eq!(invalid, 1, "{value}");
        assert_eq!(
            h.host().counter(
                "meshwasm_trace_requests_total;.direction=outbound;.context=none;.sampled=true"
            ),
            Some(1),
            "{value}"
        );
    }
}

#[test]
fn future_version_is_parsed_as_the_spec_says() {
    let h = harness("{}");
    let s = send(
        &h,
        &[(
            "traceparent",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds",
        )],
    );
    let (trace, _, _) = traceparent_parts(&s);
    assert_eq!(trace, TRACE);
}

#[test]
fn invalid_tracestate_is_dropped_but_traceparent_kept() {
    let h = harness("{}");
    let s = send(&h, &[("traceparent", TP), ("tracestate", "BAD KEY=1")]);
    assert_eq!(traceparent_parts(&s).0, TRACE);
    assert_eq!(req(&s, "tracestate"), None);
    let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let s = send(
        &h,
        &[("traceparent", TP), ("tracestate", &too_many.join(","))],
    );
    assert_eq!(traceparent_parts(&s).0, TRACE);
    assert_eq!(req(&s, "tracestate"), None);
    assert_eq!(
        h.host()
            .metrics()
            .iter()
            .filter(|m| m
                .name
                .starts_with("meshwasm_trace_invalid_headers_total;.reason=tracestate"))
            .map(|m| m.value)
            .sum::<i64>(),
        2
    );
}

#[test]
fn b3_64bit_is_left_padded_for_w3c_and_kept_for_b3() {
    let h = harness(r#"{"propagate":["w3c","b3","b3-single"]}"#);
    let s = send(
        &h,
        &[
            ("x-b3-traceid", "8448eb211c80319c"),
            ("x-b3-spanid", "b7ad6b7169203331"),
            ("x-b3-sampled", "1"),
        ],
    );
    let (trace, span, _) = traceparent_parts(&s);
    assert_eq!(trace, "00000000000000008448eb211c80319c");
    assert_eq!(req(&s, "x-b3-traceid").as_deref(), Some("8448eb211c80319c"));
    assert_eq!(
        req(&s, "b3"),
        Some(format!("8448eb211c80319c-{span}-1-b7ad6b7169203331"))
    );
}

#[test]
fn b3_single_sampling_only_and_debug() {
    let h = harness(r#"{"sampling_rate":1.0}"#);
    let s = send(&h, &[("b3", "0")]);
    let (trace, _, flags) = traceparent_parts(&s);
    assert_ne!(trace, TRACE);
    assert_eq!(u8::from_str_radix(&flags, 16).unwrap() & 1, 0);
    assert_eq!(req(&s, "x-b3-sampled").as_deref(), Some("0"));

    let h = harness(r#"{"sampling_rate":0.0}"#);
    let s = send(&h, &[("b3", "d")]);
    assert_eq!(req(&s, "x-b3-flags").as_deref(), Some("1"));
    assert_eq!(req(&s, "x-b3-sampled"), None);
    let s = send(&h, &[("b3", format!("{TRACE}-{PARENT}-d").as_str())]);
    assert_eq!(traceparent_parts(&s).0, TRACE);
    assert_eq!(req(&s, "x-b3-flags").as_deref(), Some("1"));
}

#[test]
fn precedence_is_configurable() {
    let other = "11111111111111111111111111111111";
    let headers = [
        ("traceparent", TP),
        ("x-b3-traceid", other),
        ("x-b3-spanid", "2222222222222222"),
    ];
    let h = harness("{}");
    assert_eq!(traceparent_parts(&send(&h, &headers)).0, TRACE);
    let h = harness(r#"{"extract":["b3","w3c"]}"#);
    assert_eq!(traceparent_parts(&send(&h, &headers)).0, other);
    // An invalid higher-precedence header falls through to a valid lower one.
    let h = harness("{}");
    let s = send(
        &h,
        &[
            ("traceparent", "nonsense"),
            ("x-b3-traceid", other),
            ("x-b3-spanid", "2222222222222222"),
        ],
    );
    assert_eq!(traceparent_parts(&s).0, other);
}

#[test]
fn sampling_honors_incoming_and_uses_rate_for_new_traces() {
    let h = harness(r#"{"sampling_rate":0.0}"#);
    let s = send(&h, &[("traceparent", TP)]);
    assert_eq!(req(&s, "x-b3-sampled").as_deref(), Some("1"));
    let s = send(&h, &[]);
    assert_eq!(req(&s, "x-b3-sampled").as_deref(), Some("0"));
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let h = harness(r#"{"sampling_rate":1.0}"#);
    assert_eq!(
        req(&send(&h, &[("traceparent", unsampled)]), "x-b3-sampled").as_deref(),
        Some("0")
    );
    assert_eq!(req(&send(&h, &[]), "x-b3-sampled").as_deref(), Some("1"));
    // About half of new traces at 0.5, decided from the trace id.
    let h = harness(r#"{"sampling_rate":0.5}"#);
    let sampled = (0..400)
        .filter(|_| req(&send(&h, &[]), "x-b3-sampled").as_deref() == Some("1"))
        .count();
    assert!((120..280).contains(&sampled), "{sampled}");
}

#[test]
fn baggage_limits() {
    let h = harness(r#"{"baggage_max_bytes":64,"baggage_max_members":2}"#);
    let s = send(&h, &[("baggage", "a=1,b=2")]);
    assert_eq!(req(&s, "baggage").as_deref(), Some("a=1,b=2"));
    let s = send(&h, &[("baggage", "a=1,b=2,c=3")]);
    assert_eq!(req(&s, "baggage"), None);
    let big = format!("a={}", "x".repeat(100));
    let s = send(&h, &[("baggage", &big)]);
    assert_eq!(req(&s, "baggage"), None);
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_invalid_headers_total;.reason=baggage_too_many_members"),
        Some(1)
    );
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_invalid_headers_total;.reason=baggage_too_large"),
        Some(1)
    );
}

#[test]
fn request_id_and_response_trace_header() {
    let h = harness(r#"{"response_trace_header":"x-trace-id"}"#);
    let mut s = send(&h, &[("traceparent", TP)]);
    let id = req(&s, "x-request-id").unwrap();
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![8, 4, 4, 4, 12]
    );
    assert!(parts[2].starts_with('4'), "{id}");
    s.response_headers(&[(":status", "200")], true);
    assert_eq!(
        s.host().response_header("x-trace-id").as_deref(),
        Some(TRACE)
    );
    let s = send(&h, &[("x-request-id", "keep-me")]);
    assert_eq!(
        s.host().map_values(MapKind::RequestHeaders, "x-request-id"),
        vec!["keep-me"]
    );
    let h = harness(r#"{"set_request_id":false}"#);
    assert_eq!(req(&send(&h, &[]), "x-request-id"), None);
}

const EXPORT: &str = r#"{"service_name":"frontend","export":{"cluster":"collector","batch_size":2,"flush_interval_ms":1000,"max_buffered_spans":3,"max_in_flight":1}}"#;

fn finish(h: &FilterHarness<TracePropagation>, headers: &[(&str, &str)], status: i64) {
    let mut s = send(h, headers);
    s.host().set_property_int("response.code", status);
    s.host().set_property_str("xds.cluster_name", "orders");
    s.host()
        .set_property_str("upstream.address", "127.0.0.1:9001");
    s.host().advance(Duration::from_millis(3));
    s.response_headers(&[(":status", &status.to_string())], true);
    s.log();
}

#[test]
fn exports_zipkin_batches_from_the_tick() {
    let h = harness(EXPORT);
    assert_eq!(h.host().tick_period(), Some(Duration::from_millis(100)));
    h.tick(); // starts the interval
    finish(&h, &[("traceparent", TP)], 200);
    h.tick();
    assert!(
        h.host().callouts().is_empty(),
        "partial batch waits for the interval"
    );
    finish(&h, &[], 503);
    h.tick();
    let calls = h.host().take_callouts();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.cluster, "collector");
    assert_eq!(c.header(":path"), Some("/api/v2/spans"));
    assert_eq!(c.header(":method"), Some("POST"));
    let spans: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(spans.as_array().unwrap().len(), 2);
    assert_eq!(spans[0]["traceId"], TRACE);
    assert_eq!(spans[0]["parentId"], PARENT);
    assert_eq!(spans[0]["kind"], "CLIENT");
    assert_eq!(spans[0]["name"], "GET /orders");
    assert_eq!(spans[0]["duration"], 3000);
    assert_eq!(spans[0]["localEndpoint"]["serviceName"], "frontend");
    assert_eq!(spans[0]["remoteEndpoint"]["port"], 9001);
    assert_eq!(spans[0]["tags"]["http.status_code"], "200");
    assert_eq!(spans[0]["tags"]["upstream_cluster"], "orders");
    assert_eq!(spans[1]["tags"]["error"], "true");
    h.respond_to_callout(c.token, Some(202), &[], b"");
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_spans_total;.outcome=exported"),
        Some(2)
    );
}

#[test]
fn collector_failures_drop_and_count_and_the_buffer_stays_bounded() {
    let h = harness(EXPORT);
    h.tick();
    for _ in 0..2 {
        finish(&h, &[], 200);
    }
    h.tick();
    let first = h.host().take_callouts();
    assert_eq!(first.len(), 1);
    // In flight limit 1: the collector hangs, spans pile up to the bound, then drop.
    for _ in 0..5 {
        finish(&h, &[], 200);
    }
    h.advance_and_tick(Duration::from_secs(2));
    assert!(h.host().callouts().is_empty());
    assert_eq!(h.root().exporter.as_ref().unwrap().buffered(), 3);
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_spans_total;.outcome=dropped_buffer_full"),
        Some(2)
    );
    h.respond_to_callout(first[0].token, None, &[], b"");
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_spans_total;.outcome=dropped_collector_unreachable"),
        Some(2)
    );
    h.tick();
    let second = h.host().take_callouts();
    assert_eq!(second.len(), 1);
    h.respond_to_callout(second[0].token, Some(500), &[], b"");
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_spans_total;.outcome=dropped_collector_error"),
        Some(2)
    );
    // Unknown tokens are ignored.
    h.respond_to_callout(9999, Some(200), &[], b"");
}

#[test]
fn unknown_cluster_is_counted_not_fatal() {
    let h = harness(EXPORT);
    h.host().fail_callouts_to("collector");
    h.tick();
    finish(&h, &[], 200);
    finish(&h, &[], 200);
    h.tick();
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_spans_total;.outcome=dropped_dispatch_failed"),
        Some(2)
    );
}

#[test]
fn otlp_and_inbound_server_spans() {
    let h = harness(
        r#"{"direction":"inbound","service_name":"orders","export":{"cluster":"otel","format":"otlp","batch_size":1}}"#,
    );
    h.tick();
    finish(&h, &[("traceparent", TP)], 200);
    h.tick();
    let c = &h.host().take_callouts()[0];
    assert_eq!(c.header(":path"), Some("/v1/traces"));
    let v: Value = serde_json::from_slice(&c.body).unwrap();
    let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["kind"], 2);
    assert_eq!(span["traceId"], TRACE);
    assert_eq!(span["parentSpanId"], PARENT);
}

#[test]
fn unsampled_requests_export_nothing() {
    let h = harness(EXPORT);
    h.tick();
    finish(
        &h,
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )],
        200,
    );
    h.advance_and_tick(Duration::from_secs(2));
    assert!(h.host().callouts().is_empty());
}

#[test]
fn bad_configs_name_the_field() {
    let cases = [
        (
            r#"{"sampling_rate":2}"#,
            "sampling_rate: must be between 0 and 1",
        ),
        (
            r#"{"propagate":["jaeger"]}"#,
            "propagate[0]: unknown variant `jaeger`",
        ),
        (
            r#"{"propagate":[]}"#,
            "propagate: must list at least one format",
        ),
        (
            r#"{"direction":"sideways"}"#,
            "direction: unknown variant `sideways`",
        ),
        (
            r#"{"export":{"cluster":""}}"#,
            "export.cluster: must not be empty",
        ),
        (
            r#"{"export":{"cluster":"c","batch_size":0}}"#,
            "export.batch_size: 0 is out of range",
        ),
        (
            r#"{"export":{"cluster":"c","path":"v1"}}"#,
            "export.path: must start with `/`",
        ),
        (
            r#"{"export":{"clustr":"c"}}"#,
            "export.clustr: unknown field `clustr`",
        ),
        (
            r#"{"response_trace_header":"X-Trace"}"#,
            "response_trace_header: `X-Trace` is not a valid lowercase header name",
        ),
        (
            r#"{"service_name":5}"#,
            "service_name: invalid type: integer `5`",
        ),
    ];
    for (config, want) in cases {
        let err = FilterHarness::<TracePropagation>::new(config)
            .err()
            .unwrap();
        assert!(err.to_string().contains(want), "{config}: got `{err}`");
    }
}

#[test]
fn service_name_falls_back_to_the_node_cluster() {
    let host = meshwasm::testing::TestHost::new();
    host.set_vm_property("xds.node.cluster", "inventory");
    let h = FilterHarness::<TracePropagation>::with_host(
        host,
        r#"{"export":{"cluster":"c","batch_size":1}}"#,
    )
    .unwrap();
    assert_eq!(h.root().service, "inventory");
}

#[test]
fn non_utf8_header_is_invalid_not_a_crash() {
    let h = harness("{}");
    let mut s = h.stream();
    let a = s.request_headers_bytes(
        &[(":path", b"/"), ("traceparent", &[0xff, 0xfe, 0x00])],
        true,
    );
    assert_eq!(a, Action::Continue);
    let (trace, _, _) = traceparent_parts(&s);
    assert_eq!(trace.len(), 32);
    let invalid: Vec<String> = h
        .host()
        .metrics()
        .into_iter()
        .filter(|m| m.name.starts_with("meshwasm_trace_invalid_headers_total") && m.value == 1)
        .map(|m| m.name)
        .collect();
    assert_eq!(invalid.len(), 1, "{invalid:?}");
}

#[test]
fn a_freed_export_slot_sends_the_next_full_batch_at_once() {
    let h = harness(EXPORT);
    h.tick();
    for _ in 0..3 {
        finish(&h, &[], 200);
    }
    h.tick();
    let first = h.host().take_callouts();
    assert_eq!(first.len(), 1, "max_in_flight 1");
    finish(&h, &[], 200);
    h.respond_to_callout(first[0].token, Some(202), &[], b"");
    let next = h.host().take_callouts();
    assert_eq!(next.len(), 1, "sent on the response, not at the next tick");
    let spans: Value = serde_json::from_slice(&next[0].body).unwrap();
    assert_eq!(spans.as_array().unwrap().len(), 2);
}

#[test]
fn only_present_trace_headers_are_removed() {
    // Written headers are replaced; present ones not written are removed; absent ones are
    // left alone (no host call for them).
    let h = harness(r#"{"propagate":["w3c"]}"#);
    let s = send(
        &h,
        &[("traceparent", TP), ("x-b3-sampled", "1"), ("b3", "1")],
    );
    assert_eq!(traceparent_parts(&s).0, TRACE);
    assert_eq!(req(&s, "x-b3-sampled"), None);
    assert_eq!(req(&s, "b3"), None);
    assert_eq!(req(&s, "x-b3-traceid"), None);
}
