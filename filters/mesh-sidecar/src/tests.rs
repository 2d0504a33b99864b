//! Unit tests of the one-module sidecar on the SDK test host: configuration errors name the
//! section, one request goes through all three policies, ticks and callouts reach the right
//! policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meshwasm::prelude::*;
use meshwasm::testing::{FilterHarness, TestHost};

use super::*;

const KEY: &str = "hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// The mesh key's variable in the VM's environment (`vm_config.environment_variables`).
const KEY_ENV: &str = "MESH_SIGNING_KEY";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn all_three(export: bool) -> String {
    let export = if export {
        r#","export":{"cluster":"collector","format":"zipkin"}"#
    } else {
        ""
    };
    format!(
        r#"{{
          "trace": {{"service_name": "frontend", "sampling_rate": 1.0{export}}},
          "metrics": {{"reporter": "source",
                       "identity": {{"service": "frontend", "version": "v1"}},
                       "signing_keys": [{{"id": "k1", "env": "{KEY_ENV}"}}]}},
          "retries": {{"rules": [{{"name": "orders-read",
                                   "match": {{"path": {{"prefix": "/orders"}}, "methods": ["GET"]}},
                                   "policy": {{"retry_on": ["5xx"], "num_retries": 2}}}}]}}
        }}"#
    )
}

/// A sidecar whose VM has [`KEY`] in [`KEY_ENV`], configured with `config`.
fn keyed(config: &str) -> FilterHarness<MeshSidecar> {
    let host = TestHost::new();
    host.set_env(KEY_ENV, KEY);
    FilterHarness::with_host(host, config).unwrap()
}

fn error(config: &str) -> ConfigError {
    FilterHarness::<MeshSidecar>::new(config).err().unwrap()
}

#[test]
fn configuration_errors_name_the_section() {
    let e = error("{}");
    assert_eq!(e.path, ".");
    assert!(e.reason.contains("at least one"), "{e}");
    let e = error(r#"{"tracing": {}}"#);
    assert_eq!(e.path, "tracing");
    assert!(e.reason.starts_with("unknown field `tracing`"), "{e}");
    // A parse error inside a section, and a check a policy makes after parsing.
    let e = error(r#"{"retries": {"rules": [{"policy": {"num_retries": "x"}}]}}"#);
    assert_eq!(e.path, "retries.rules[0].policy.num_retries", "{e}");
    let e = error(r#"{"trace": {"sampling_rate": 2.0}}"#);
    assert_eq!(e.path, "trace.sampling_rate", "{e}");
    let e = error(r#"{"metrics": {"reporter": "source", "signing_key": "hex:00"}}"#);
    assert_eq!(e.path, "metrics.signing_key", "{e}");
    assert!(e.reason.contains("signing_keys"), "{e}");
    let e = error(
        r#"{"metrics": {"reporter": "source", "signing_keys": [{"id": "k", "env": "NOPE"}]}}"#,
    );
    assert_eq!(e.path, "metrics.signing_keys[0].env", "{e}");
    assert_eq!(
        within("retries", ConfigError::new("[0]", "x")).path,
        "retries[0]"
    );
}

#[test]
fn one_request_goes_through_all_three_policies() {
    let h = keyed(&all_three(false));
    let mut s = h.stream();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/orders/7"),
            (":authority", "orders"),
            ("traceparent", PARENT),
            // A client trying to order retries and pass as another service.
            ("x-envoy-max-retries", "10"),
            ("x-mesh-peer", "v1;s=admin;t=1"),
        ],
        true,
    );
    let sent = |name: &str| s.host().map_value(MapKind::RequestHeaders, name);
    // Trace: a child of the caller's span, in W3C and B3.
    let child = sent("traceparent").unwrap();
    assert!(
        child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{child}"
    );
    assert!(!child.contains("00f067aa0ba902b7"), "{child}");
    assert_eq!(
        sent("x-b3-traceid").as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(
        sent("x-b3-parentspanid").as_deref(),
        Some("00f067aa0ba902b7")
    );
    // Metrics: our own signed identity replaced the client's.
    let peer = s.host().map_values(MapKind::RequestHeaders, "x-mesh-peer");
    assert_eq!(peer.len(), 1, "{peer:?}");
    assert!(peer[0].starts_with("v1;s=frontend;v=v1;"), "{peer:?}");
    // Retries: the rule's policy, not the client's.
    assert_eq!(sent("x-envoy-max-retries").as_deref(), Some("2"));
    assert_eq!(sent("x-envoy-retry-on").as_deref(), Some("5xx"));

    s.response_headers(&[(":status", "200"), ("x-envoy-attempt-count", "2")], true);
    let host = s.host();
    host.set_property_int("response.code", 200);
    host.set_stream_property(
        "request.duration",
        meshwasm::properties::encode_duration(Duration::from_millis(12)),
    );
    host.set_property_str("xds.cluster_name", "orders");
    s.log();
    let counters: Vec<String> = h
        .host()
        .metrics()
        .into_iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let has = |prefix: &str| counters.iter().any(|c| c.contains(prefix));
    assert!(has("meshwasm_trace_requests_total"), "{counters:#?}");
    assert!(has("mesh_requests_total;.reporter=source"), "{counters:#?}");
    assert_eq!(
        h.host()
            .counter("meshwasm_retry_retries_total;.rule=orders-read"),
        Some(1)
    );
}

#[test]
fn ticks_and_callouts_reach_the_policies_that_use_them() {
    // Span export ticks at most every 100 ms, the retry budget syncs every 250 ms.
    let h = keyed(&all_three(true));
    assert_eq!(h.host().tick_period(), Some(Duration::from_millis(100)));
    let only_retries = r#"{"retries": {"rules": []}}"#;
    let h2 = FilterHarness::<MeshSidecar>::new(only_retries).unwrap();
    assert_eq!(
        h2.host().tick_period(),
        Some(route_retries::DEFAULT_SYNC_INTERVAL)
    );
    let only_metrics = format!(
        r#"{{"metrics": {{"reporter": "destination", "signing_keys": [{{"id": "k1", "env": "{KEY_ENV}"}}]}}}}"#
    );
    let h3 = keyed(&only_metrics);
    assert_eq!(h3.host().tick_period(), None);

    // A sampled request's span goes out in a callout on the tick; its answer is taken.
    h.tick(); // starts the export interval
    let mut s = h.stream();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/orders/1"),
            ("traceparent", PARENT),
        ],
        true,
    );
    s.response_headers(&[(":status", "200")], true);
    s.log();
    h.advance_and_tick(Duration::from_secs(2));
    let callouts = h.host().take_callouts();
    assert_eq!(callouts.len(), 1, "{callouts:?}");
    assert_eq!(callouts[0].cluster, "collector");
    h.respond_to_callout(callouts[0].token, Some(202), &[], b"");
    assert_eq!(
        h.host()
            .counter("meshwasm_trace_spans_total;.outcome=exported"),
        Some(1),
        "{:#?}",
        h.host().metrics()
    );
}

/// Issue 15 through the composed phases: a stream that ends without response headers settles
/// its retry reservation in the composed `on_log` (with Envoy's attempt count), and a client's
/// `x-envoy-*` headers are removed by the retries policy.
#[test]
fn the_retries_policy_settles_at_the_end_of_the_stream_and_strips_envoy_headers() {
    let config = r#"{"retries": {
        "rules": [{"name": "all", "policy": {"retry_on": ["5xx"], "num_retries": 2}}],
        "budget": {"ratio": 0.0, "min_retries_per_second": 1, "window_seconds": 10}}}"#;
    let h = FilterHarness::<MeshSidecar>::new(config).unwrap();
    for _ in 0..6 {
        let mut s = h.stream();
        s.host().set_property_str("xds.cluster_name", "orders");
        s.request_headers(
            &[
                (":method", "GET"),
                (":path", "/hang"),
                ("x-envoy-upstream-alt-stat-name", "mine"),
            ],
            true,
        );
        assert_eq!(
            s.host()
                .map_value(MapKind::RequestHeaders, "x-envoy-upstream-alt-stat-name"),
            None
        );
        // The client gives up: no response headers, only the end of the stream.
        s.host().set_stream_property(
            "upstream.request_attempt_count",
            meshwasm::properties::encode_u64(1),
        );
        s.log();
    }
    let mut s = h.stream();
    s.host().set_property_str("xds.cluster_name", "orders");
    s.request_headers(&[(":method", "GET"), (":path", "/flaky")], true);
    assert_eq!(
        s.host()
            .map_value(MapKind::RequestHeaders, "x-envoy-max-retries")
            .as_deref(),
        Some("2")
    );
    assert_eq!(
        h.host().counter(
            "meshwasm_retry_stripped_headers_total;.header=x-envoy-upstream-alt-stat-name"
        ),
        Some(6)
    );
    assert_eq!(
        h.host()
            .counter("meshwasm_retry_budget_denied_total;.rule=all"),
        Some(0)
    );
}

/// Issue 15, item 3 through the composed module: the trace section takes the new export
/// fields, refuses bad ones under its own path, and names spans by Envoy's route.
#[test]
fn the_trace_section_bounds_spans_and_names_them_by_route() {
    let e = error(r#"{"trace": {"export": {"cluster": "c", "max_buffered_bytes": 10}}}"#);
    assert_eq!(e.path, "trace.export.max_buffered_bytes", "{e}");
    let e = error(r#"{"trace": {"export": {"cluster": "c", "fallback_span_name": "{path}"}}}"#);
    assert_eq!(e.path, "trace.export.fallback_span_name", "{e}");
    let e = error(r#"{"trace": {"baggage_max_bytes": 65536}}"#);
    assert_eq!(e.path, "trace.baggage_max_bytes", "{e}");

    let config = r#"{"trace": {"service_name": "frontend", "export": {"cluster": "collector",
        "batch_size": 1, "max_buffered_bytes": 65536, "max_tag_length": 16}}}"#;
    let h = FilterHarness::<MeshSidecar>::new(config).unwrap();
    h.tick();
    let mut s = h.stream();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/orders/123456789abcdef"),
            ("traceparent", PARENT),
        ],
        true,
    );
    s.response_headers(&[(":status", "200")], true);
    s.host().set_property_str("xds.route_name", "orders");
    s.log();
    h.advance_and_tick(Duration::from_millis(100));
    let callouts = h.host().take_callouts();
    assert_eq!(callouts.len(), 1, "{callouts:?}");
    let spans: serde_json::Value = serde_json::from_slice(&callouts[0].body).unwrap();
    assert_eq!(spans[0]["name"], "GET orders");
    assert_eq!(spans[0]["tags"]["http.path"], "/orders/12345678");
    // The path and the generated 36-character `x-request-id`.
    assert_eq!(
        h.host().counter("meshwasm_trace_span_tags_truncated_total"),
        Some(2)
    );
}

/// The properties the span and the metrics read at the end of a sampled request, the response
/// code among them, come from one evaluation for both policies, where each read them one by one
/// (nine property reads, then a header read for the status).
#[test]
fn a_sampled_request_reads_its_end_of_stream_properties_in_one_call() {
    use meshwasm::testing::CountingHost;
    let host = TestHost::new();
    host.set_env(KEY_ENV, KEY);
    let root = meshwasm::filter::configure::<MeshSidecar>(all_three(true).as_bytes(), &host)
        .expect("configures");
    let stream = host.new_stream();
    stream.set_map(
        MapKind::RequestHeaders,
        &[
            (":authority", "orders"),
            (":path", "/orders/7"),
            (":method", "GET"),
            ("traceparent", PARENT),
        ],
    );
    for (path, value) in [
        ("xds.route_name", "orders"),
        ("xds.cluster_name", "orders"),
        ("upstream.address", "10.0.0.7:8080"),
        ("destination.address", "10.0.0.1:15001"),
        ("request.protocol", "HTTP/1.1"),
    ] {
        stream.set_property_str(path, value);
    }
    stream.set_stream_property("response.flags", meshwasm::properties::encode_u64(0));
    stream.set_property_int("request.total_size", 180);
    stream.set_property_int("response.total_size", 140);
    stream.set_property_int("response.code", 200);
    // The router's attempt count settles the retry budget on the response, as in Envoy.
    stream.set_map(
        MapKind::ResponseHeaders,
        &[(":status", "200"), ("x-envoy-attempt-count", "1")],
    );
    let c = CountingHost::new(&stream);
    let mut http = root.new_http(&c);
    http.on_request_headers(&root, &c, true);
    http.on_response_headers(&root, &c, true);
    c.take_names();
    http.on_log(&root, &c);
    let log = c.take_names();
    assert_eq!(
        log.iter()
            .filter(|call| ["get_property", "get_header", "call_foreign"]
                .iter()
                .any(|kind| call.starts_with(kind)))
            .collect::<Vec<_>>(),
        ["call_foreign_function expr_evaluate"],
        "{log:#?}"
    );
    assert_eq!(
        host.counter(meshwasm::batch::FALLBACK_COUNTER),
        Some(0),
        "{log:#?}"
    );
}
