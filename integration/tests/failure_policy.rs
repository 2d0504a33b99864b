//! What Envoy 1.40 does when a filter's VM fails, per `failure_policy`: a test-only filter
//! (`integration/crash-filter`) traps in `on_http_request_headers` when `x-crash` is present,
//! in front of trace_propagation and the router, on one worker so every request meets the same
//! VM. Observed and asserted (the README's "VM failure policy" table):
//!
//! | policy | the crashing request | later requests on that worker |
//! |---|---|---|
//! | `FAIL_CLOSED` (and unset) | 503 | 503, for good (until the config or Envoy is reloaded) |
//! | `FAIL_OPEN` | 503 | served, without the failed filter; the filters after it still run |
//! | `FAIL_RELOAD` | 503 | 503 until the reload backoff passes, then served with a new VM |
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration::upstream::Upstream;
use integration::{assert_eventually, http_get, wasm_path, Envoy, Response};

const TEMPLATE: &str = include_str!("../configs/all_filters_with_crash.yaml");

struct Setup {
    envoy: Envoy,
    upstream: Upstream,
}

fn start(policy: Option<&str>) -> Setup {
    wasm_path("crash-filter");
    wasm_path("trace-propagation");
    let upstream = Upstream::start().unwrap();
    let template = match policy {
        Some(_) => TEMPLATE.to_string(),
        None => TEMPLATE.replace("failure_policy: {{CRASH_POLICY}}\n", ""),
    };
    let envoy = Envoy::builder(&template)
        .concurrency(1)
        .var("CRASH_POLICY", policy.unwrap_or_default())
        .var("TRACE_POLICY", "FAIL_CLOSED")
        .var("PORT_UPSTREAM", upstream.port().to_string())
        .start()
        .unwrap();
    Setup { envoy, upstream }
}

impl Setup {
    fn get(&self, crash: bool) -> Response {
        let headers: &[(&str, &str)] = if crash { &[("x-crash", "1")] } else { &[] };
        http_get(self.envoy.listener_port(), "/", headers).unwrap()
    }

    /// Whether the last request the upstream saw went through the crash filter and the trace
    /// filter after it.
    fn last_seen(&self) -> (bool, bool) {
        let req = self.upstream.requests().pop().unwrap();
        (
            req.header("x-crash-filter") == Some("passed"),
            req.header("traceparent").is_some(),
        )
    }

    fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(name).unwrap_or(0)
    }

    /// Serves one request through both filters, then crashes the VM: the crashing request
    /// gets 503 whatever the policy (the VM fails inside the callback) and never reaches the
    /// upstream; Envoy logs the panic and the trap.
    fn crash(&self) {
        assert_eq!(self.get(false).status, 200);
        assert_eq!(self.last_seen(), (true, true));
        let before = self.upstream.requests().len();
        let resp = self.get(true);
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(self.upstream.requests().len(), before);
        assert_eventually!(self
            .envoy
            .log()
            .contains("Function: proxy_on_request_headers failed: Uncaught RuntimeError"));
        assert!(self
            .envoy
            .log()
            .contains("crash-filter: x-crash present, trapping on purpose"));
    }
}

fn fails_closed(policy: Option<&str>) {
    let s = start(policy);
    s.crash();
    let before = s.upstream.requests().len();
    for _ in 0..5 {
        assert_eq!(s.get(false).status, 503);
    }
    assert_eq!(s.upstream.requests().len(), before, "nothing gets through");
    assert_eq!(s.stat("wasm.crash_filter.vm_reload_success"), 0);
}

#[test]
fn fail_closed_fails_every_later_request_on_the_worker() {
    fails_closed(Some("FAIL_CLOSED"));
}

#[test]
fn no_policy_is_fail_closed() {
    fails_closed(None);
}

#[test]
fn fail_open_serves_later_requests_without_the_failed_filter() {
    let s = start(Some("FAIL_OPEN"));
    let stats_before: Vec<String> = wasm_stat_lines(&s.envoy);
    s.crash();
    for _ in 0..5 {
        assert_eq!(s.get(false).status, 200);
        // Without the crash filter, but the trace filter after it still runs.
        assert_eq!(s.last_seen(), (false, true));
    }
    // Another x-crash request now passes: the failed filter is skipped.
    assert_eq!(s.get(true).status, 200);
    assert_eq!(s.stat("wasm.crash_filter.vm_reload"), 0);
    // Envoy's VM stats do not show the failure: only the log does (documented in the README).
    assert_eq!(stats_before, wasm_stat_lines(&s.envoy));
}

#[test]
fn fail_reload_serves_again_with_a_new_vm_after_the_backoff() {
    let s = start(Some("FAIL_RELOAD"));
    s.crash();
    // Within the backoff (0.1 s base in the test config; Envoy's default is 1 s) requests fail;
    // then the next request reloads the VM and goes through both filters again.
    assert_eventually!(s.get(false).status == 200);
    assert_eq!(s.last_seen(), (true, true));
    assert_eq!(s.stat("wasm.crash_filter.vm_reload_success"), 1);
    assert_eq!(s.stat("wasm.crash_filter.vm_reload_failure"), 0);
    // A second crash is recovered from too.
    s.crash();
    assert_eventually!(s.get(false).status == 200);
    assert_eq!(s.stat("wasm.crash_filter.vm_reload_success"), 2);
}

fn wasm_stat_lines(envoy: &Envoy) -> Vec<String> {
    envoy
        .stats()
        .lines()
        .filter(|l| l.starts_with("wasm.") || l.starts_with("wasm_"))
        .map(str::to_string)
        .collect()
}
