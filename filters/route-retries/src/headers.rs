//! The client's `x-envoy-*` request headers: which of them the filter removes (all of them,
//! except what the policy allows, the retry-control headers of a client the rule trusts, and the
//! one Envoy writes itself), and the names Envoy acts on, which label the removal counter.

/// The prefix of Envoy's own headers. Envoy's components act on many request headers with it
/// (the router on retries, timeouts, stats and hedging, the connection manager on tracing, the
/// original_dst cluster on the destination, ...), and more with each release; so the filter
/// removes every one a client sends unless it is allowed, rather than a list of known names.
pub const ENVOY_PREFIX: &str = "x-envoy-";

/// Kept from every request: the connection manager removes a client's copy and writes its own
/// before any HTTP filter runs, so the value is Envoy's.
pub const ENVOY_WRITTEN: [&str; 1] = ["x-envoy-internal"];

/// The `x-envoy-*` request headers Envoy 1.40 acts on when a request carries them: the request
/// headers it registers for fast access (its startup log's "request header map"), without
/// [`ENVOY_WRITTEN`], plus `x-envoy-original-dst-host` (the original_dst cluster's
/// `use_http_header`). Each is a label value of the removal counter; any other name is
/// [`OTHER`], so a client choosing names cannot grow the stats.
pub const ENVOY_REQUEST_HEADERS: [&str; 24] = [
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-ip-tags",
    "x-envoy-is-timeout-retry",
    "x-envoy-max-retries",
    "x-envoy-original-dst-host",
    "x-envoy-original-host",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
];

/// The label of removed headers whose name is not in [`ENVOY_REQUEST_HEADERS`].
pub const OTHER: &str = "other";

/// Most names a policy's `allowed_client_headers` may list.
pub const MAX_ALLOWED: usize = 64;

/// Whether the filter would remove a client's `name` unless allowed: an `x-envoy-*` header
/// that Envoy does not write itself.
pub fn is_client_envoy_header(name: &str) -> bool {
    name.starts_with(ENVOY_PREFIX) && !ENVOY_WRITTEN.contains(&name)
}

/// The removal counter's label for `name`.
pub fn label(name: &str) -> &'static str {
    ENVOY_REQUEST_HEADERS
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(is_client_envoy_header("x-envoy-force-trace"));
        assert!(is_client_envoy_header("x-envoy-made-up"));
        assert!(!is_client_envoy_header("x-envoy-internal"));
        assert!(!is_client_envoy_header("x-envoyish"));
        assert!(!is_client_envoy_header("x-request-id"));
        assert_eq!(
            label("x-envoy-upstream-alt-stat-name"),
            "x-envoy-upstream-alt-stat-name"
        );
        assert_eq!(label("x-envoy-made-up"), OTHER);
        for name in ENVOY_REQUEST_HEADERS {
            assert!(is_client_envoy_header(name), "{name}");
        }
        // Every retry-control header is one Envoy acts on.
        for name in crate::policy::CONTROL_HEADERS {
            assert!(ENVOY_REQUEST_HEADERS.contains(&name), "{name}");
        }
    }
}
