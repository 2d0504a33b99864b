//! Unit tests of the filter on the SDK test host: rule selection, the headers written for each
//! policy, client header stripping and trust, idempotency, the budget across emulated workers,
//! deadlines, response accounting and configuration errors.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meshwasm::prelude::*;
use meshwasm::testing::{CountingHost, FilterHarness, HttpStream, TestHost};

use super::*;
use crate::budget::{key, Window};

const CONFIG: &str = r#"{
  "rules": [
    {"name": "orders-read",
     "match": {"path": {"prefix": "/orders"}, "methods": ["GET", "HEAD"]},
     "policy": {"retry_on": ["5xx", "reset", "connect-failure"], "num_retries": 3,
                "per_try_timeout_ms": 200, "timeout_ms": 1000}},
    {"name": "payments",
     "match": {"route_name": "payments-route"},
     "policy": {"retry_on": ["unavailable", "retriable-status-codes"], "num_retries": 2,
                "retriable_status_codes": [409], "retry_non_idempotent": true}},
    {"name": "trusted",
     "match": {"headers": [{"name": "x-internal-batch", "value": "1"}]},
     "policy": {"retry_on": ["5xx"], "num_retries": 1},
     "trust_client_headers": true}
  ],
  "budget": {"ratio": 0.2, "min_retries_per_second": 1, "window_seconds": 10}
}"#;

fn harness(config: &str) -> FilterHarness<RouteRetries> {
    FilterHarness::<RouteRetries>::new(config).unwrap()
}

fn req(h: &FilterHarness<RouteRetries>, headers: &[(&str, &str)]) -> HttpStream<RouteRetries> {
    let mut s = h.stream();
    s.host().set_property_str("xds.cluster_name", "orders");
    assert_eq!(s.request_headers(headers, true), Action::Continue);
    s
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":path", path), (":authority", "svc")]
}

fn header(s: &HttpStream<RouteRetries>, name: &str) -> Option<String> {
    s.host().request_header(name)
}

fn counter(h: &FilterHarness<RouteRetries>, family: &str, rule: &str) -> u64 {
    h.host()
        .counter(&format!("{family};.rule={rule}"))
        .unwrap_or(0)
}

#[test]
fn first_matching_rule_writes_its_policy() {
    let h = harness(CONFIG);
    let s = req(&h, &get("/orders/7"));
    assert_eq!(
        header(&s, "x-envoy-retry-on").as_deref(),
        Some("5xx,reset,connect-failure")
    );
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("3"));
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-per-try-timeout-ms").as_deref(),
        Some("200")
    );
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-timeout-ms").as_deref(),
        Some("1000")
    );
    assert_eq!(header(&s, "x-envoy-retry-grpc-on"), None);
    assert_eq!(counter(&h, names::REQUESTS, "orders-read"), 1);
    assert_eq!(counter(&h, names::REQUESTS, "default"), 0);
}

#[test]
fn route_name_rule_with_grpc_and_status_codes() {
    let h = harness(CONFIG);
    let mut s = h.stream();
    s.host()
        .set_property_str("xds.route_name", "payments-route");
    s.request_headers(&[(":method", "POST"), (":path", "/pay")], false);
    assert_eq!(
        header(&s, "x-envoy-retry-on").as_deref(),
        Some("retriable-status-codes")
    );
    assert_eq!(
        header(&s, "x-envoy-retry-grpc-on").as_deref(),
        Some("unavailable")
    );
    assert_eq!(
        header(&s, "x-envoy-retriable-status-codes").as_deref(),
        Some("409")
    );
    // POST, but the rule says retry_non_idempotent.
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("2"));
    assert_eq!(counter(&h, names::REQUESTS, "payments"), 1);
}

#[test]
fn unmatched_requests_get_the_default_no_retries() {
    let h = harness(CONFIG);
    let s = req(&h, &get("/users"));
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("0"));
    assert_eq!(header(&s, "x-envoy-retry-on"), None);
    assert_eq!(counter(&h, names::REQUESTS, "default"), 1);
    // A default policy applies to unmatched requests.
    let h = harness(r#"{"default": {"retry_on": ["reset"], "num_retries": 2}}"#);
    let s = req(&h, &get("/anything"));
    assert_eq!(header(&s, "x-envoy-retry-on").as_deref(), Some("reset"));
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("2"));
}

#[test]
fn non_idempotent_methods_are_not_retried_by_default() {
    let h = harness(r#"{"rules": [{"policy": {"retry_on": ["5xx"], "num_retries": 2}}]}"#);
    for (method, want) in [("POST", "0"), ("PATCH", "0"), ("PUT", "2"), ("DELETE", "2")] {
        let s = req(&h, &[(":method", method), (":path", "/x")]);
        assert_eq!(
            header(&s, "x-envoy-max-retries").as_deref(),
            Some(want),
            "{method}"
        );
        if want == "0" {
            assert_eq!(header(&s, "x-envoy-retry-on"), None, "{method}");
        }
    }
    // Not retried is not "denied by the budget".
    assert_eq!(counter(&h, names::BUDGET_DENIED, "rule-0"), 0);
    assert_eq!(counter(&h, names::REQUESTS, "rule-0"), 4);
}

#[test]
fn client_retry_headers_are_stripped_unless_trusted() {
    let h = harness(CONFIG);
    let client = [
        ("x-envoy-retry-on", "5xx,reset"),
        ("x-envoy-retry-grpc-on", "internal"),
        ("x-envoy-max-retries", "10"),
        ("x-envoy-retriable-status-codes", "500"),
        ("x-envoy-retriable-header-names", "x-a"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
        ("x-envoy-upstream-rq-timeout-ms", "99999"),
        ("x-envoy-hedge-on-per-try-timeout", "true"),
    ];
    // Unmatched (default policy): everything the client sent is gone, max-retries is 0.
    let mut headers = get("/users");
    headers.extend(client);
    let s = req(&h, &headers);
    for (name, _) in client {
        let want = (name == "x-envoy-max-retries").then(|| "0".to_string());
        assert_eq!(header(&s, name), want, "{name}");
    }
    assert_eq!(counter(&h, names::CLIENT_HEADERS_STRIPPED, "default"), 8);
    // A matched, untrusted rule: the policy's values replace the client's.
    let mut headers = get("/orders");
    headers.extend(client);
    let s = req(&h, &headers);
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("3"));
    assert_eq!(
        header(&s, "x-envoy-retry-on").as_deref(),
        Some("5xx,reset,connect-failure")
    );
    assert_eq!(header(&s, "x-envoy-retry-grpc-on"), None);
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-timeout-ms").as_deref(),
        Some("1000")
    );
    assert_eq!(header(&s, "x-envoy-hedge-on-per-try-timeout"), None);
    assert_eq!(
        counter(&h, names::CLIENT_HEADERS_STRIPPED, "orders-read"),
        8
    );
}

#[test]
fn trusted_clients_keep_their_headers_but_not_past_the_budget() {
    let h = harness(CONFIG);
    let s = req(
        &h,
        &[
            (":method", "GET"),
            (":path", "/batch"),
            ("x-internal-batch", "1"),
            ("x-envoy-retry-on", "gateway-error"),
            ("x-envoy-max-retries", "4"),
            ("x-envoy-upstream-rq-timeout-ms", "3000"),
        ],
    );
    assert_eq!(
        header(&s, "x-envoy-retry-on").as_deref(),
        Some("gateway-error")
    );
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("4"));
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-timeout-ms").as_deref(),
        Some("3000")
    );
    assert_eq!(counter(&h, names::CLIENT_HEADERS_STRIPPED, "trusted"), 0);
    // Without client headers the rule's own policy applies.
    let s = req(
        &h,
        &[
            (":method", "GET"),
            (":path", "/b"),
            ("x-internal-batch", "1"),
        ],
    );
    assert_eq!(header(&s, "x-envoy-retry-on").as_deref(), Some("5xx"));
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("1"));
    // Budget spent: a trusted client is capped too (ratio 0 here, so only the floor of 10).
    let h = harness(&CONFIG.replace(r#""ratio": 0.2"#, r#""ratio": 0.0"#));
    loop {
        let s = req(&h, &get("/orders"));
        if header(&s, "x-envoy-max-retries").as_deref() == Some("0") {
            break;
        }
    }
    let s = req(
        &h,
        &[
            (":method", "GET"),
            (":path", "/b"),
            ("x-internal-batch", "1"),
            ("x-envoy-max-retries", "10"),
        ],
    );
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("0"));
    assert_eq!(counter(&h, names::BUDGET_DENIED, "trusted"), 1);
}

#[test]
fn budget_is_shared_by_workers_and_slides() {
    // Three workers, each with its own root (as Envoy has one per worker), one shared budget.
    let w1 = TestHost::new();
    let workers = [
        FilterHarness::<RouteRetries>::with_host(w1.new_worker(), CONFIG).unwrap(),
        FilterHarness::<RouteRetries>::with_host(w1.new_worker(), CONFIG).unwrap(),
        FilterHarness::<RouteRetries>::with_host(w1.new_worker(), CONFIG).unwrap(),
    ];
    let mut granted = 0u32;
    let mut denied = 0;
    for i in 0..200 {
        let s = req(&workers[i % 3], &get("/orders"));
        let n: u32 = header(&s, "x-envoy-max-retries").unwrap().parse().unwrap();
        granted += n;
        if n == 0 {
            denied += 1;
        }
    }
    // floor 1/s * 10 s + 0.2 * 200 requests.
    assert_eq!(granted, 10 + 40);
    assert!(denied > 100, "{denied}");
    assert_eq!(
        counter(&workers[0], names::BUDGET_DENIED, "orders-read"),
        denied
    );
    // Three full grants of 3 spend the floor down to 1; later grants are 1 or 0.
    let clamped = counter(&workers[0], names::BUDGET_CLAMPED, "orders-read");
    assert_eq!(denied + clamped, 200 - 3);
    let w = Window::decode(&w1.shared(&key("orders")).unwrap()).unwrap();
    assert_eq!(w.totals(), (200, 50));
    // Half a window later the old traffic still counts; a full window later it does not.
    w1.advance(Duration::from_secs(5));
    let s = req(&workers[1], &get("/orders"));
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("0"));
    w1.advance(Duration::from_secs(5));
    let s = req(&workers[2], &get("/orders"));
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("3"));
}

#[test]
fn attempt_count_settles_the_budget_and_counts_retries() {
    let h = harness(CONFIG);
    let mut s = req(&h, &get("/orders"));
    s.response_headers(&[(":status", "200"), ("x-envoy-attempt-count", "3")], true);
    s.log();
    assert_eq!(counter(&h, names::RETRIES, "orders-read"), 2);
    assert_eq!(counter(&h, names::REQUESTS_RETRIED, "orders-read"), 1);
    // The refund is held by the worker until its next write for the cluster, or the tick.
    let w = Window::decode(&h.host().shared(&key("orders")).unwrap()).unwrap();
    assert_eq!(w.totals(), (1, 3), "3 reserved, refund held");
    assert_eq!(h.root().refunds.borrow().held("orders"), 1);
    h.tick();
    let w = Window::decode(&h.host().shared(&key("orders")).unwrap()).unwrap();
    assert_eq!(w.totals(), (1, 2), "3 reserved, 2 used: 1 refunded");
    assert_eq!(h.root().refunds.borrow().held("orders"), 0);
    // First try succeeded: the whole reservation comes back; no retry counted.
    let mut s = req(&h, &get("/orders"));
    s.response_headers(&[(":status", "200"), ("x-envoy-attempt-count", "1")], true);
    assert_eq!(counter(&h, names::REQUESTS_RETRIED, "orders-read"), 1);
    h.tick();
    let w = Window::decode(&h.host().shared(&key("orders")).unwrap()).unwrap();
    assert_eq!(w.totals(), (2, 2));
    // No attempt count (route config without include_attempt_count_in_response): the
    // reservation stands and the gap is counted.
    let mut s = req(&h, &get("/orders"));
    s.response_headers(&[(":status", "503")], true);
    let w = Window::decode(&h.host().shared(&key("orders")).unwrap()).unwrap();
    assert_eq!(w.totals(), (3, 5));
    assert_eq!(h.host().counter(names::ATTEMPT_COUNT_MISSING), Some(1));
    // Garbage attempt counts are treated as missing, never a panic.
    for bad in ["0", "-1", "many", ""] {
        let mut s = req(&h, &get("/orders"));
        s.response_headers(&[(":status", "503"), ("x-envoy-attempt-count", bad)], true);
    }
    assert_eq!(h.host().counter(names::ATTEMPT_COUNT_MISSING), Some(5));
}

/// Refunds ride on the worker's next admission for the cluster: nothing is lost, the shared
/// window is exact after that write, and another worker's view only errs on the safe side.
#[test]
fn refunds_ride_on_the_next_admission() {
    let h = harness(CONFIG);
    let other = h.host().new_worker();
    let total = |h: &FilterHarness<RouteRetries>| {
        Window::decode(&h.host().shared(&key("orders")).unwrap())
            .unwrap()
            .totals()
    };
    for _ in 0..4 {
        let mut s = req(&h, &get("/orders"));
        s.response_headers(&[(":status", "200"), ("x-envoy-attempt-count", "1")], true);
    }
    // 4 requests, 3 reserved each, all unused: the first three refunds were carried by the
    // next admissions, the last is held.
    assert_eq!(total(&h), (4, 3));
    assert_eq!(h.root().refunds.borrow().held("orders"), 3);
    // Another worker sees the held reservation as spent: safe, never more retries.
    let o = FilterHarness::<RouteRetries>::with_host(other, CONFIG).unwrap();
    let mut s = req(&o, &get("/orders"));
    s.response_headers(&[(":status", "200"), ("x-envoy-attempt-count", "1")], true);
    assert_eq!(total(&h), (5, 6));
    // The ticks write what both workers hold.
    h.tick();
    o.tick();
    assert_eq!(total(&h), (5, 0));
    assert_eq!(h.root().refunds.borrow().held("orders"), 0);
    assert_eq!(h.host().tick_period(), Some(crate::REFUND_FLUSH_PERIOD));
}

#[test]
fn deadlines_shorten_per_try_timeouts() {
    let h = harness(CONFIG);
    let mut headers = get("/orders");
    headers.push(("grpc-timeout", "400m"));
    let s = req(&h, &headers);
    // 3 retries + 1 = 4 tries in 400 ms: 100 ms each (configured 200); overall 400 (was 1000).
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-per-try-timeout-ms").as_deref(),
        Some("100")
    );
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-timeout-ms").as_deref(),
        Some("400")
    );
    let mut headers = get("/orders");
    headers.push(("x-envoy-expected-rq-timeout-ms", "60000"));
    let s = req(&h, &headers);
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-per-try-timeout-ms").as_deref(),
        Some("200")
    );
    assert_eq!(
        header(&s, "x-envoy-upstream-rq-timeout-ms").as_deref(),
        Some("1000")
    );
}

#[test]
fn metrics_exist_for_every_rule_from_the_start() {
    let h = harness(CONFIG);
    for rule in ["orders-read", "payments", "trusted", "default"] {
        for fam in [names::REQUESTS, names::RETRIES, names::BUDGET_DENIED] {
            assert_eq!(
                h.host().counter(&format!("{fam};.rule={rule}")),
                Some(0),
                "{fam} {rule}"
            );
        }
    }
}

#[test]
fn hostile_input_never_panics() {
    let h = harness(CONFIG);
    let mut s = h.stream();
    s.request_headers_bytes(
        &[
            (":method", b"\xff\xfe"),
            (":path", b"/orders\xff"),
            ("grpc-timeout", b"\xff9m"),
            ("x-envoy-max-retries", b"\xff"),
        ],
        true,
    );
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("0"));
    s.response_headers(&[("x-envoy-attempt-count", "99999999999")], true);
    s.log();
    // A corrupted budget value is replaced, not trusted.
    h.host().poke_shared(&key("orders"), b"\x01\x0a garbage");
    let s = req(&h, &get("/orders"));
    assert_eq!(header(&s, "x-envoy-max-retries").as_deref(), Some("3"));
}

#[test]
fn bad_configs_name_the_field() {
    let cases = [
        (
            r#"{"rules": [{"policy": {}}, {"policy": {}}, {"policy": {"retry_on": ["5xx"], "num_retries": 11}}]}"#,
            "rules[2].policy.num_retries: 11 is out of range, expected 0 to 10",
        ),
        (
            r#"{"rules": [{"policy": {"retry_on": ["sometimes"]}}]}"#,
            "rules[0].policy.retry_on[0]: unknown retry condition `sometimes`",
        ),
        (
            r#"{"rules": [{"match": {"path": {"regex": "("}}, "policy": {}}]}"#,
            "rules[0].match.path.regex: invalid regex",
        ),
        (
            r#"{"rules": [{"policy": {"per_try_timeout_ms": 500, "timeout_ms": 100}}]}"#,
            "rules[0].policy.per_try_timeout_ms: 500 is longer than timeout_ms 100",
        ),
        (
            r#"{"rules": [{"name": "a", "policy": {}}, {"name": "a", "policy": {}}]}"#,
            "rules[1].name: `a` is already used",
        ),
        (
            r#"{"rules": [{"name": "default", "policy": {}}]}"#,
            "rules[0].name: `default` is already used",
        ),
        (
            r#"{"rules": [{"match": {}}]}"#,
            "rules[0]: missing field `policy`",
        ),
        (
            r#"{"rules": [{"policy": {}, "trust": true}]}"#,
            "rules[0].trust: unknown field `trust`",
        ),
        (
            r#"{"default": {"retry_on": ["5xx"], "retriable_status_codes": [503]}}"#,
            "default.retriable_status_codes: needs `retriable-status-codes` in retry_on",
        ),
        (
            r#"{"budget": {"ratio": -0.1}}"#,
            "budget.ratio: -0.1 is out of range",
        ),
        (
            r#"{"budget": {"window_seconds": 0}}"#,
            "budget.window_seconds: 0 is out of range, expected 1 to 60",
        ),
        (
            r#"{"budget": {"window_seconds": 61}}"#,
            "budget.window_seconds: 61 is out of range",
        ),
        (
            r#"{"budget": {"min_retries_per_second": "ten"}}"#,
            "budget.min_retries_per_second: invalid type",
        ),
        (r#"{"retries": []}"#, "retries: unknown field `retries`"),
    ];
    for (json, want) in cases {
        let err = FilterHarness::<RouteRetries>::new(json)
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with(want), "{json}: got `{err}`");
    }
    // An empty configuration is valid: no rules, no retries, the default budget.
    let h = harness("");
    assert_eq!(
        *h.root().budget(),
        BudgetParams {
            ratio: 0.2,
            min_retries_per_second: 10,
            window_seconds: 10
        }
    );
}

/// The calls of one steady-state request (after a warm-up one) with `config`, the request as
/// the bench presents it (`bench/runner/src/hostcalls.rs`) plus `extra` request headers, and a
/// first-try 200: (request headers, response headers, log).
fn hostcalls(config: &str, extra: &[(&str, &str)]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let host = TestHost::new();
    let root = meshwasm::filter::configure::<RouteRetries>(config.as_bytes(), &host).unwrap();
    let mut out = Default::default();
    for _ in 0..2 {
        let stream = host.new_stream();
        let mut headers = vec![
            (":authority", "127.0.0.1:20001"),
            (":path", "/orders/7"),
            (":method", "GET"),
            (":scheme", "http"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "5b0e4e35-6d2c-4a4e-9f3e-0d7a7a2c2f10"),
        ];
        headers.extend_from_slice(extra);
        stream.set_map(MapKind::RequestHeaders, &headers);
        stream.set_property_str("xds.route_name", "orders");
        stream.set_property_str("xds.cluster_name", "upstream");
        let c = CountingHost::new(&stream);
        let mut http = root.new_http(&c);
        http.on_request_headers(&root, &c, true);
        let request = c.take_names();
        stream.set_map(
            MapKind::ResponseHeaders,
            &[
                (":status", "200"),
                ("content-length", "2"),
                ("x-envoy-attempt-count", "1"),
            ],
        );
        http.on_response_headers(&root, &c, true);
        let response = c.take_names();
        http.on_log(&root, &c);
        out = (request, response, c.take_names());
    }
    out
}

/// The bench's route-retries configuration (`bench/configs/filters/route_retries.yaml`).
const BENCH_CONFIG: &str = r#"{"rules":[{"name":"orders-read","match":{"route_name":"orders","methods":["GET"]},"policy":{"retry_on":["5xx","reset"],"num_retries":2,"per_try_timeout_ms":250}}]}"#;

#[test]
fn hostcalls_per_request_stay_low() {
    // Was 20 + 4: a lookup per retry-control and deadline header, and the clock again on the
    // response.
    let (request, response, log) = hostcalls(BENCH_CONFIG, &[]);
    assert_eq!(
        request,
        [
            "get_header_map_pairs RequestHeaders",
            "get_property xds.route_name",
            "increment_metric",
            "get_property xds.cluster_name",
            "get_current_time_nanoseconds",
            "get_shared_data",
            "set_shared_data",
            "replace_header_map_value RequestHeaders x-envoy-retry-on",
            "replace_header_map_value RequestHeaders x-envoy-max-retries",
            "replace_header_map_value RequestHeaders x-envoy-upstream-rq-per-try-timeout-ms",
        ]
    );
    // The unused reservation rides on the next admission's write (or the tick).
    assert_eq!(
        response,
        ["get_header_map_value ResponseHeaders x-envoy-attempt-count"]
    );
    assert!(log.is_empty(), "{log:?}");
    assert!(request.len() + response.len() + log.len() <= 11);

    // A tick with no refund held makes no hostcall at all.
    let h = harness(BENCH_CONFIG);
    let counting = CountingHost::new(h.host());
    h.root().on_tick(&counting);
    assert!(counting.take_names().is_empty());

    // A rule that needs no property reads only the cluster (the budget's key); client headers
    // cost a call only when present (then one removal each).
    let config =
        r#"{"rules":[{"match":{"path":{"prefix":"/orders"}},"policy":{"retry_on":["5xx"]}}]}"#;
    let (request, _, _) = hostcalls(config, &[("x-envoy-max-retries", "10")]);
    assert_eq!(
        request
            .iter()
            .filter(|c| c.starts_with("get_property"))
            .collect::<Vec<_>>(),
        ["get_property xds.cluster_name"]
    );
    assert_eq!(
        request
            .iter()
            .filter(|c| c.contains("header_map"))
            .collect::<Vec<_>>(),
        [
            "get_header_map_pairs RequestHeaders",
            "remove_header_map_value RequestHeaders x-envoy-max-retries",
            "replace_header_map_value RequestHeaders x-envoy-retry-on",
            "replace_header_map_value RequestHeaders x-envoy-max-retries",
        ]
    );
    assert_eq!(request.len(), 10);
}
