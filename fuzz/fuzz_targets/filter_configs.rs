//! Fuzzes configuration parsing and validation of every filter: any bytes give a filter or a
//! `ConfigError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm::filter::configure;
use meshwasm::testing::TestHost;

fuzz_target!(|data: &[u8]| {
    let host = TestHost::new();
    let _ = configure::<trace_propagation::TracePropagation>(data, &host);
    let _ = configure::<route_retries::RouteRetries>(data, &host);
    let _ = configure::<service_metrics::ServiceMetrics>(data, &host);
    let _ = configure::<add_headers::AddHeaders>(data, &host);
});
