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
    // No route name from Envoy: the method alone, the path in a tag (and no query).
    assert_eq!(spans[0]["name"], "GET");
    assert_eq!(spans[0]["tags"]["http.path"], "/orders");
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

// ---- tracestate as W3C Trace Context Level 2 specifies it (issue 15, item 4) ----

/// Sends a request with `traceparent` and the given `tracestate` fields (several fields of the
/// same name, as the W3C test suite sends them); returns the forwarded `tracestate` fields
/// combined as the suite's harness reads them, `None` when none was forwarded.
fn forwarded_tracestate(h: &FilterHarness<TracePropagation>, fields: &[&str]) -> Option<String> {
    let mut headers = vec![("traceparent", TP)];
    headers.extend(fields.iter().map(|f| ("tracestate", *f)));
    let s = send(h, &headers);
    assert_eq!(
        traceparent_parts(&s).0,
        TRACE,
        "traceparent kept: {fields:?}"
    );
    let values = s.host().map_values(MapKind::RequestHeaders, "tracestate");
    assert!(values.len() <= 1, "one combined field: {values:?}");
    values.into_iter().next()
}

fn invalid_count(h: &FilterHarness<TracePropagation>, reason: &str) -> Option<u64> {
    h.host().counter(&format!(
        "meshwasm_trace_invalid_headers_total;.reason={reason}"
    ))
}

/// "tracestate Header Field Values": "When receiving multiple tracestate header fields, they
/// MUST be combined into a single header" (RFC 9110 field order). The W3C test suite's
/// `multiple_headers_different_keys` sends three fields and expects every member, in order.
#[test]
fn multiple_tracestate_fields_are_combined_in_order() {
    let h = harness("{}");
    assert_eq!(
        forwarded_tracestate(&h, &["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).as_deref(),
        Some("foo=1,bar=2,rojo=1,congo=2,baz=3")
    );
    // An empty field among them is an empty list member ("Empty and whitespace-only list
    // members are allowed").
    assert_eq!(
        forwarded_tracestate(&h, &["", "foo=1"]).as_deref(),
        Some("foo=1")
    );
    assert_eq!(
        forwarded_tracestate(&h, &["foo=1", ""]).as_deref(),
        Some("foo=1")
    );
    // Vendors "SHOULD avoid sending" an empty tracestate.
    assert_eq!(forwarded_tracestate(&h, &[""]), None);
    assert_eq!(forwarded_tracestate(&h, &[" , ", ""]), None);
}

/// "list": at most 32 list-members in the combined value, wherever the fields split it (the
/// suite's `member_count_limit` sends 33 in four fields and expects the header discarded);
/// "Key": 256 characters at most, also when the long key is in a second field.
#[test]
fn limits_apply_to_the_combined_tracestate() {
    let h = harness("{}");
    let fields = [
        "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10",
        "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20",
        "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30",
        "bar31=31,bar32=32",
    ];
    assert_eq!(
        forwarded_tracestate(&h, &fields).as_deref(),
        Some(fields.join(",").as_str())
    );
    let mut over = fields;
    over[3] = "bar31=31,bar32=32,bar33=33";
    assert_eq!(forwarded_tracestate(&h, &over), None);
    assert_eq!(invalid_count(&h, "tracestate_too_many_members"), Some(1));
    let long_key = format!("{}=1", "z".repeat(257));
    assert_eq!(forwarded_tracestate(&h, &["foo=1", &long_key]), None);
    assert_eq!(invalid_count(&h, "tracestate_key"), Some(1));
}

/// "Combined Header Value" / "Mutating the tracestate Field": duplicates are the sender's
/// fault, and a receiver "MAY also discard duplicate keys that were not generated by them".
/// The header is kept with the left-most entry of each key; the dropped entries are counted.
#[test]
fn duplicate_tracestate_keys_keep_the_header() {
    let h = harness("{}");
    assert_eq!(
        forwarded_tracestate(&h, &["foo=1,bar=2,foo=3"]).as_deref(),
        Some("foo=1,bar=2")
    );
    assert_eq!(
        forwarded_tracestate(&h, &["foo=1", "foo=2"]).as_deref(),
        Some("foo=1")
    );
    assert_eq!(invalid_count(&h, "tracestate_duplicate_key"), Some(2));
}

/// "Key" (Level 2): `@` may appear anywhere after the first character; Level 1's tenant and
/// system lengths are gone. The suite's `key_illegal_vendor_format` and `key_length_limit`.
#[test]
fn level2_multi_tenant_keys_are_passed_on() {
    let h = harness("{}");
    for value in [
        "foo@=1,bar=2".to_string(),
        "foo@@bar=1,bar=2".to_string(),
        "foo@bar@baz=1,bar=2".to_string(),
        format!("foo=1,{}@v=1", "t".repeat(242)),
        format!("foo=1,t@{}=1", "v".repeat(15)),
    ] {
        assert_eq!(
            forwarded_tracestate(&h, &[&value]).as_deref(),
            Some(value.as_str())
        );
    }
    assert_eq!(forwarded_tracestate(&h, &["@foo=1,bar=2"]), None);
}

/// Processing Model, "No traceparent Received", step 3: "If a tracestate header is received
/// without an accompanying traceparent header, it is invalid and MUST be discarded" (the
/// suite's `tracestate_included_traceparent_missing`).
#[test]
fn tracestate_without_traceparent_is_discarded() {
    let h = harness("{}");
    let s = send(
        &h,
        &[("tracestate", "foo=1,bar=2"), ("tracestate", "baz=3")],
    );
    assert_ne!(traceparent_parts(&s).0, TRACE);
    assert!(s
        .host()
        .map_values(MapKind::RequestHeaders, "tracestate")
        .is_empty());
}

// ---- baggage limits (issue 15, item 3) ----

/// `baggage_max_bytes` and `baggage_max_members` accept exactly what the parser can pass: its
/// limits are `meshwasm::trace::baggage::MAX_BAGGAGE_BYTES` (8192) and `MAX_BAGGAGE_MEMBERS`
/// (180). A larger setting used to be accepted and then never reached (the parser refused the
/// header first).
#[test]
fn baggage_limits_agree_with_the_parser() {
    for (config, want) in [
        (
            r#"{"baggage_max_bytes":8193}"#,
            "baggage_max_bytes: 8193 is out of range, expected 0 to 8192",
        ),
        (
            r#"{"baggage_max_members":181}"#,
            "baggage_max_members: 181 is out of range, expected 0 to 180",
        ),
    ] {
        let err = FilterHarness::<TracePropagation>::new(config)
            .err()
            .unwrap();
        assert!(err.to_string().contains(want), "{config}: got `{err}`");
    }
    // At the top of the range, a header at the limit passes.
    let h = harness(r#"{"baggage_max_bytes":8192,"baggage_max_members":180}"#);
    let at_bytes = format!("a={}", "0123456789".repeat(819));
    assert_eq!(at_bytes.len(), 8192);
    assert_eq!(
        req(&send(&h, &[("baggage", &at_bytes)]), "baggage"),
        Some(at_bytes)
    );
    let members: Vec<String> = (0..180).map(|i| format!("k{i}=v")).collect();
    let at_members = members.join(",");
    assert_eq!(
        req(&send(&h, &[("baggage", &at_members)]), "baggage"),
        Some(at_members)
    );
}

/// W3C Baggage lets a request carry several `baggage` fields: the limits hold for all of them
/// together, not only the first.
#[test]
fn baggage_limits_apply_to_every_field() {
    let h = harness(r#"{"baggage_max_bytes":64,"baggage_max_members":2}"#);
    let a = format!("a={}", "x".repeat(40));
    let b = format!("b={}", "y".repeat(40));
    let s = send(&h, &[("baggage", &a), ("baggage", &b)]);
    assert!(s
        .host()
        .map_values(MapKind::RequestHeaders, "baggage")
        .is_empty());
    let s = send(&h, &[("baggage", "a=1,b=2"), ("baggage", "c=3")]);
    assert!(s
        .host()
        .map_values(MapKind::RequestHeaders, "baggage")
        .is_empty());
    // Within the limits, every field passes untouched.
    let s = send(&h, &[("baggage", "a=1"), ("baggage", "b=2")]);
    assert_eq!(
        s.host().map_values(MapKind::RequestHeaders, "baggage"),
        vec!["a=1", "b=2"]
    );
    assert_eq!(invalid_count(&h, "baggage_too_large"), Some(1));
    assert_eq!(invalid_count(&h, "baggage_too_many_members"), Some(1));
}

// ---- spans bounded in bytes, named for humans (issue 15, item 3) ----

/// Finishes a sampled request to `path` with `method`, Envoy's route name `route` (if any)
/// and upstream cluster `orders`.
fn finish_at(
    h: &FilterHarness<TracePropagation>,
    method: &str,
    path: &str,
    route: Option<&str>,
    extra: &[(&str, &str)],
) {
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", "orders"),
        ("traceparent", TP),
    ];
    headers.extend_from_slice(extra);
    let mut s = h.stream();
    s.request_headers(&headers, true);
    s.host().set_property_int("response.code", 200);
    s.host().set_property_str("xds.cluster_name", "orders");
    if let Some(r) = route {
        s.host().set_property_str("xds.route_name", r);
    }
    s.response_headers(&[(":status", "200")], true);
    s.log();
}

/// The spans of every export callout made so far, as Zipkin JSON.
fn exported(h: &FilterHarness<TracePropagation>) -> Vec<Value> {
    h.host()
        .take_callouts()
        .iter()
        .flat_map(|c| {
            let v: Value = serde_json::from_slice(&c.body).unwrap();
            v.as_array().unwrap().clone()
        })
        .collect()
}

/// Zipkin's API: the span name is a lookup label, "take care to ensure names are low
/// cardinality"; OpenTelemetry's HTTP conventions: `{method} {target}` with a low-cardinality
/// target (a route), else `{method}`, never the URI path, and `HTTP` for a method outside the
/// known set. Envoy's route name is that target; the path stays in the `http.path` tag.
#[test]
fn span_names_are_low_cardinality() {
    let h = harness(
        r#"{"service_name":"frontend","export":{"cluster":"collector","batch_size":1,"max_in_flight":16}}"#,
    );
    h.tick();
    finish_at(&h, "GET", "/orders/7?x=1", Some("orders-read"), &[]);
    finish_at(&h, "GET", "/orders/8", Some("orders-read"), &[]);
    finish_at(&h, "GET", "/orders/9", None, &[]);
    finish_at(&h, "BREW", "/orders/10", Some("orders-read"), &[]);
    finish_at(&h, "GET", "/orders/11", Some(""), &[]);
    for _ in 0..5 {
        h.advance_and_tick(Duration::from_millis(100));
    }
    let spans = exported(&h);
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "GET orders-read",
            "GET orders-read",
            "GET",
            "HTTP orders-read",
            "GET"
        ]
    );
    let paths: Vec<&str> = spans
        .iter()
        .map(|s| s["tags"]["http.path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/orders/7",
            "/orders/8",
            "/orders/9",
            "/orders/10",
            "/orders/11"
        ]
    );
    assert_eq!(spans[3]["tags"]["http.method"], "BREW");
    assert_eq!(spans[0]["tags"]["route_name"], "orders-read");
}

/// Without a route name, the span is named by `export.fallback_span_name`, a template over
/// low-cardinality values only.
#[test]
fn fallback_span_name_template() {
    let h = harness(
        r#"{"service_name":"frontend","export":{"cluster":"collector","batch_size":1,
            "fallback_span_name":"{method} {upstream_cluster} via {service}"}}"#,
    );
    h.tick();
    finish_at(&h, "POST", "/orders/7", None, &[]);
    finish_at(&h, "POST", "/orders/8", Some("orders-write"), &[]);
    h.advance_and_tick(Duration::from_millis(100));
    h.advance_and_tick(Duration::from_millis(100));
    let names: Vec<String> = exported(&h)
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["POST orders via frontend", "POST orders-write"]);
}

/// Tag values are cut to `export.max_tag_length` bytes (on a character boundary); each cut
/// value is counted in `meshwasm_trace_span_tags_truncated_total`.
#[test]
fn tag_values_are_capped_and_cuts_counted() {
    let h = harness(
        r#"{"service_name":"frontend","export":{"cluster":"collector","batch_size":1,"max_tag_length":16}}"#,
    );
    h.tick();
    let long_id = "r".repeat(100);
    // 15 ASCII bytes then `é` (2 bytes) straddling the 16-byte cap.
    finish_at(
        &h,
        "GET",
        "/orders/0123456é7",
        Some("orders"),
        &[("x-request-id", &long_id)],
    );
    h.advance_and_tick(Duration::from_millis(100));
    let spans = exported(&h);
    assert_eq!(spans[0]["tags"]["http.path"], "/orders/0123456");
    assert_eq!(spans[0]["tags"]["guid:x-request-id"], "r".repeat(16));
    assert_eq!(spans[0]["tags"]["route_name"], "orders");
    assert_eq!(
        h.host().counter("meshwasm_trace_span_tags_truncated_total"),
        Some(2)
    );
    // Short values are not cut and not counted.
    finish_at(
        &h,
        "GET",
        "/a",
        Some("orders"),
        &[("x-request-id", "short")],
    );
    h.advance_and_tick(Duration::from_millis(100));
    assert_eq!(exported(&h)[0]["tags"]["http.path"], "/a");
    assert_eq!(
        h.host().counter("meshwasm_trace_span_tags_truncated_total"),
        Some(2)
    );
}

/// 64 KiB of buffer, tags up to 4 KB, one export request at a time, batches of `{batch}`.
fn big_spans(batch: usize) -> String {
    format!(
        r#"{{"service_name":"frontend","export":{{"cluster":"collector","batch_size":{batch},"flush_interval_ms":60000,"max_buffered_spans":2000,"max_buffered_bytes":65536,"max_tag_length":4096,"max_in_flight":1}}}}"#
    )
}

/// The per-worker buffer is bounded in bytes as well as in spans: with the collector hanging,
/// spans with 4 KB paths fill 64 KiB long before 2000 spans, and the rest are dropped and
/// counted.
#[test]
fn span_buffer_is_bounded_in_bytes() {
    let h = harness(&big_spans(1));
    h.tick();
    let path = format!("/{}", "p".repeat(3999));
    // A batch goes out and hangs: nothing else can leave.
    finish_at(&h, "GET", "/", Some("r"), &[]);
    h.tick();
    assert_eq!(h.host().take_callouts().len(), 1);
    for _ in 0..30 {
        finish_at(&h, "GET", &path, Some("r"), &[]);
    }
    let e = h.root().exporter.as_ref().unwrap();
    assert!(e.buffered_bytes() <= 65536, "{}", e.buffered_bytes());
    let dropped = h
        .host()
        .counter("meshwasm_trace_spans_total;.outcome=dropped_buffer_full")
        .unwrap_or(0);
    assert!(dropped > 0, "30 spans of 4 KB fit in 64 KiB?");
    assert_eq!(e.buffered() as u64 + dropped, 30);
}

/// A batch also leaves when half of `max_buffered_bytes` waits, so the byte bound does not
/// drop spans while an export slot is free and the batch is not yet full by count.
#[test]
fn half_a_byte_bound_sends_a_batch() {
    let h = harness(&big_spans(100));
    h.tick();
    let path = format!("/{}", "p".repeat(3999));
    for _ in 0..3 {
        finish_at(&h, "GET", &path, Some("r"), &[]);
    }
    h.tick();
    assert!(h.host().callouts().is_empty(), "under half: waits");
    let mut sent = 0;
    for _ in 0..30 {
        finish_at(&h, "GET", &path, Some("r"), &[]);
        h.tick();
        for c in h.host().take_callouts() {
            sent += 1;
            h.respond_to_callout(c.token, Some(202), &[], b"");
        }
    }
    assert!(sent >= 3, "{sent} batches");
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_spans_total;.outcome=dropped_buffer_full"),
        None
    );
}

#[test]
fn new_export_fields_are_validated() {
    let cases = [
        (
            r#"{"export":{"cluster":"c","max_buffered_bytes":1000}}"#,
            "export.max_buffered_bytes: 1000 is out of range",
        ),
        (
            r#"{"export":{"cluster":"c","max_tag_length":0}}"#,
            "export.max_tag_length: 0 is out of range",
        ),
        (
            r#"{"export":{"cluster":"c","fallback_span_name":""}}"#,
            "export.fallback_span_name: must not be empty",
        ),
        (
            r#"{"export":{"cluster":"c","fallback_span_name":"{method} {path}"}}"#,
            "export.fallback_span_name: unknown placeholder `{path}`",
        ),
        (
            r#"{"export":{"cluster":"c","fallback_span_name":"{method"}}"#,
            "export.fallback_span_name: unclosed `{`",
        ),
        (
            r#"{"export":{"cluster":"c","fallback_span_name":"a}b"}}"#,
            "export.fallback_span_name: `}` without `{`",
        ),
    ];
    for (config, want) in cases {
        let err = FilterHarness::<TracePropagation>::new(config)
            .err()
            .unwrap();
        assert!(err.to_string().contains(want), "{config}: got `{err}`");
    }
    let h = harness(
        r#"{"export":{"cluster":"c","max_buffered_bytes":65536,"max_tag_length":16,"fallback_span_name":"{method}"}}"#,
    );
    assert!(h.root().exporter.is_some());
}

/// The calls of one steady-state sampled request (after a warm-up one) with the bench's
/// configuration (`bench/configs/filters/trace_propagation.yaml`, sampled by the incoming
/// `traceparent`): (request headers, log).
fn hostcalls(config: &str) -> (Vec<String>, Vec<String>) {
    hostcalls_with(config, true)
}

/// As [`hostcalls`]; without `upstream`, the request is a local reply: no upstream address.
fn hostcalls_with(config: &str, upstream: bool) -> (Vec<String>, Vec<String>) {
    use meshwasm::testing::{CountingHost, TestHost};
    let host = TestHost::new();
    let root = meshwasm::filter::configure::<TracePropagation>(config.as_bytes(), &host).unwrap();
    let mut out = Default::default();
    for _ in 0..2 {
        let stream = host.new_stream();
        stream.set_map(
            MapKind::RequestHeaders,
            &[
                (":authority", "127.0.0.1:20001"),
                (":path", "/orders/7"),
                (":method", "GET"),
                (":scheme", "http"),
                ("traceparent", TP),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", "5b0e4e35-6d2c-4a4e-9f3e-0d7a7a2c2f10"),
            ],
        );
        stream.set_property_str("xds.route_name", "orders");
        stream.set_property_str("xds.cluster_name", "upstream");
        stream.set_property_int("response.code", 200);
        stream.set_stream_property("response.flags", meshwasm::properties::encode_u64(0));
        stream.set_property_str("destination.address", "127.0.0.1:20001");
        if upstream {
            stream.set_property_str("upstream.address", "127.0.0.1:8080");
        }
        stream.set_map(MapKind::ResponseHeaders, &[(":status", "200")]);
        let c = CountingHost::new(&stream);
        let mut http = root.new_http(&c);
        http.on_request_headers(&root, &c, true);
        let request = c.take_names();
        http.on_log(&root, &c);
        out = (request, c.take_names());
    }
    out
}

/// Naming spans by route, capping tags and bounding the buffer in bytes cost no hostcall: the
/// route name and cluster were read at the end of the stream already.
#[test]
fn hostcalls_per_request_stay_as_they_were() {
    let (request, log) = hostcalls(
        r#"{"service_name":"frontend","sampling_rate":0.1,"export":{"cluster":"collector","format":"zipkin"}}"#,
    );
    assert_eq!(
        request,
        [
            "get_header_map_pairs RequestHeaders",
            "replace_header_map_value RequestHeaders traceparent",
            "replace_header_map_value RequestHeaders tracestate",
            "replace_header_map_value RequestHeaders x-b3-traceid",
            "replace_header_map_value RequestHeaders x-b3-spanid",
            "replace_header_map_value RequestHeaders x-b3-parentspanid",
            "replace_header_map_value RequestHeaders x-b3-sampled",
            "increment_metric",
            "get_current_time_nanoseconds",
        ],
        "{request:#?}"
    );
    assert_eq!(
        log,
        [
            // One evaluation for the flags, the upstream address, the cluster, the route, the
            // local address and the status, where five property reads and a header read were
            // (meshwasm::batch).
            "call_foreign_function expr_evaluate",
            // The duration is the clock's since the request headers (was `request.duration`).
            "get_current_time_nanoseconds",
            "increment_metric",
        ],
        "{log:#?}"
    );
}

/// A local reply has no upstream address: the batch's list is an error as a whole in Envoy, so
/// the span reads its properties one by one, as before the batch, and counts the fallback.
#[test]
fn a_request_without_upstream_reads_its_span_properties_singly() {
    let config = r#"{"service_name":"frontend","export":{"cluster":"collector"}}"#;
    let (_, log) = hostcalls_with(config, false);
    assert_eq!(
        log,
        [
            "call_foreign_function expr_evaluate",
            // meshwasm_property_batch_fallbacks_total
            "increment_metric",
            "get_property response.code",
            "get_property response.flags",
            "get_current_time_nanoseconds",
            "get_property upstream.address",
            "get_property xds.cluster_name",
            "get_property xds.route_name",
            "get_property destination.address",
            "increment_metric",
        ],
        "{log:#?}"
    );
}

/// With the defaults (2000 spans, 1 MiB, tags of 256 bytes), a hanging collector and clients
/// sending long paths and long `x-request-id`s fill the buffer by bytes first: it never holds
/// more than 1 MiB per worker.
#[test]
fn default_config_bounds_the_buffer_in_bytes() {
    let h = harness(
        r#"{"service_name":"frontend","export":{"cluster":"collector","max_in_flight":1}}"#,
    );
    h.tick();
    let path = format!("/{}", "p".repeat(8000));
    let id = "i".repeat(8000);
    for _ in 0..100 {
        finish_at(&h, "GET", "/", Some("r"), &[]);
    }
    h.tick();
    assert_eq!(h.host().take_callouts().len(), 1, "one batch hangs");
    for _ in 0..2000 {
        finish_at(&h, "GET", &path, Some("r"), &[("x-request-id", &id)]);
    }
    let e = h.root().exporter.as_ref().unwrap();
    let held: usize = e.buffered_bytes();
    assert!(held <= 1 << 20, "{held}");
    let dropped = h
        .host()
        .counter("meshwasm_trace_spans_total;.outcome=dropped_buffer_full")
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "2000 spans with 16 KB of client data each were all buffered"
    );
    assert_eq!(e.buffered() as u64 + dropped, 2000);
}

#[test]
fn only_verified_mesh_peers_decide_sampling_when_trusted_clients_is_mesh_peers() {
    let h =
        harness(r#"{"direction":"inbound","sampling_rate":0.0,"trusted_clients":"mesh_peers"}"#);
    // A sampled context from a caller without a verified certificate: the trace continues,
    // sampled by the local rate (0 here), and the override is counted.
    let s = send(&h, &[("traceparent", TP)]);
    let (trace, _, flags) = traceparent_parts(&s);
    assert_eq!(trace, TRACE);
    assert_eq!(flags, "00");
    assert_eq!(h.host().counter(UNTRUSTED_DECISIONS), Some(1));
    // The same from a verified mesh peer is followed.
    let all = [(":method", "GET"), (":path", "/"), ("traceparent", TP)];
    let mut s = h.stream();
    s.host().set_property_str(
        "connection.uri_san_peer_certificate",
        "spiffe://cluster.local/ns/shop/sa/frontend",
    );
    s.request_headers(&all, true);
    assert_eq!(traceparent_parts(&s).2, "01");
    assert_eq!(h.host().counter(UNTRUSTED_DECISIONS), Some(1));
    // The default believes anyone.
    let open = harness(r#"{"direction":"inbound","sampling_rate":0.0}"#);
    assert_eq!(
        traceparent_parts(&send(&open, &[("traceparent", TP)])).2,
        "01"
    );
}

#[test]
fn decimal_writes_what_to_string_writes() {
    for n in [0, 7, 10, 200, 503, -1, -10, 1_000_000, i64::MAX, i64::MIN] {
        assert_eq!(decimal(n), n.to_string());
    }
}
