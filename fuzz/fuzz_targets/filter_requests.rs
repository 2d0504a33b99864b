//! Fuzzes the request path of every filter: hostile request and response header values (any
//! bytes, repeated, oversized) go through request headers, response headers and the log phase
//! on the SDK's test host. A panic here would be a crashed VM in Envoy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm::filter::RootFilter;
use meshwasm::testing::FilterHarness;

const NAMES: [&str; 24] = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
    "x-mesh-peer",
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-retry-grpc-on",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-expected-rq-timeout-ms",
    "grpc-timeout",
    "x-envoy-attempt-count",
    ":method",
    ":path",
    ":authority",
    "content-type",
    "x-envoy-retriable-status-codes",
];

fn run<F: RootFilter>(config: &str, pairs: &[(&str, &[u8])]) {
    let Ok(h) = FilterHarness::<F>::new(config) else {
        return;
    };
    let mut s = h.stream();
    s.request_headers_bytes(pairs, false);
    s.response_headers(&[(":status", "503"), ("x-envoy-attempt-count", "3")], true);
    s.log();
    h.tick();
}

fuzz_target!(|data: &[u8]| {
    let mut pairs: Vec<(&str, &[u8])> = Vec::new();
    for chunk in data.split(|b| *b == b'\n').take(64) {
        let Some((&first, value)) = chunk.split_first() else {
            continue;
        };
        pairs.push((NAMES[first as usize % NAMES.len()], value));
    }
    run::<trace_propagation::TracePropagation>(
        r#"{"export":{"cluster":"c","batch_size":1}}"#,
        &pairs,
    );
    run::<route_retries::RouteRetries>(
        r#"{"rules":[
            {"name":"rx","match":{"path":{"regex":"/v[0-9]+/.*"},"headers":[{"name":"x-b3-flags"}]},
             "policy":{"retry_on":["5xx","unavailable"],"num_retries":2,"per_try_timeout_ms":100,"timeout_ms":1000}},
            {"name":"trusted","match":{"methods":["GET"]},"policy":{"retry_on":["reset"]},"trust_client_headers":true}],
            "default":{"retry_on":["connect-failure"],"num_retries":1}}"#,
        &pairs,
    );
    run::<service_metrics::ServiceMetrics>(r#"{"reporter":"destination"}"#, &pairs);
    run::<service_metrics::ServiceMetrics>(r#"{"reporter":"source"}"#, &pairs);
});
