//! Retry policies: the configuration form with its checks (Envoy's retry conditions, ranges,
//! timeouts, the client headers allowed to stay), the compiled form, request deadlines
//! (`grpc-timeout`, `x-envoy-expected-rq-timeout-ms`), and the router request headers a
//! decision turns into.

use meshwasm::config::{check, ConfigError};

/// Envoy's HTTP retry conditions (`x-envoy-retry-on`).
pub const HTTP_CONDITIONS: [&str; 11] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
];

/// Envoy's gRPC retry conditions (`x-envoy-retry-grpc-on`).
pub const GRPC_CONDITIONS: [&str; 5] = [
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Most retries a policy may ask for.
pub const MAX_RETRIES: u32 = 10;

/// Longest timeout accepted (one day), in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Methods retried without `retry_non_idempotent` (RFC 9110 idempotent methods).
pub const IDEMPOTENT_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

/// The router's retry-control request headers. A client's values are removed unless the rule
/// trusts the client.
pub const CONTROL_HEADERS: [&str; 8] = [
    RETRY_ON,
    RETRY_GRPC_ON,
    MAX_RETRIES_HEADER,
    RETRIABLE_STATUS_CODES,
    RETRIABLE_HEADER_NAMES,
    PER_TRY_TIMEOUT,
    TIMEOUT,
    "x-envoy-hedge-on-per-try-timeout",
];

/// `x-envoy-retry-on`.
pub const RETRY_ON: &str = "x-envoy-retry-on";
/// `x-envoy-retry-grpc-on`.
pub const RETRY_GRPC_ON: &str = "x-envoy-retry-grpc-on";
/// `x-envoy-max-retries`.
pub const MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
/// `x-envoy-retriable-status-codes`.
pub const RETRIABLE_STATUS_CODES: &str = "x-envoy-retriable-status-codes";
/// `x-envoy-retriable-header-names`.
pub const RETRIABLE_HEADER_NAMES: &str = "x-envoy-retriable-header-names";
/// `x-envoy-upstream-rq-per-try-timeout-ms`.
pub const PER_TRY_TIMEOUT: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
/// `x-envoy-upstream-rq-timeout-ms`.
pub const TIMEOUT: &str = "x-envoy-upstream-rq-timeout-ms";

/// A policy as written in configuration.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Envoy retry conditions, HTTP and gRPC alike.
    #[serde(default)]
    pub retry_on: Vec<String>,
    /// Retries per request; default 1 when `retry_on` is given, else 0.
    #[serde(default)]
    pub num_retries: Option<u32>,
    /// Status codes for `retriable-status-codes`.
    #[serde(default)]
    pub retriable_status_codes: Vec<u32>,
    /// Response header names for `retriable-headers`.
    #[serde(default)]
    pub retriable_headers: Vec<String>,
    /// Timeout of each try, milliseconds.
    #[serde(default)]
    pub per_try_timeout_ms: Option<u64>,
    /// Timeout of the whole request including retries, milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Also retry methods that are not idempotent (POST, PATCH, CONNECT).
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// `x-envoy-*` request headers a client may keep (every other one is removed).
    #[serde(default)]
    pub allowed_client_headers: Vec<String>,
}

/// A validated policy, its header values rendered once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `x-envoy-retry-on` value, when there are HTTP conditions.
    pub retry_on: Option<String>,
    /// `x-envoy-retry-grpc-on` value, when there are gRPC conditions.
    pub retry_grpc_on: Option<String>,
    /// Retries wanted per request.
    pub num_retries: u32,
    /// `x-envoy-retriable-status-codes` value.
    pub status_codes: Option<String>,
    /// `x-envoy-retriable-header-names` value.
    pub header_names: Option<String>,
    /// Per-try timeout.
    pub per_try_timeout_ms: Option<u64>,
    /// Overall timeout.
    pub timeout_ms: Option<u64>,
    /// Retry POST and other non-idempotent methods too.
    pub retry_non_idempotent: bool,
    /// `x-envoy-*` request headers a client may keep.
    pub allowed_client_headers: Vec<String>,
}

fn join(items: &[String]) -> Option<String> {
    (!items.is_empty()).then(|| items.join(","))
}

impl PolicyConfig {
    /// Validates the policy; `path` (e.g. `rules[2].policy`) prefixes error paths.
    pub fn compile(&self, path: &str) -> Result<Policy, ConfigError> {
        let at = |f: &str| format!("{path}.{f}");
        let mut http: Vec<String> = Vec::new();
        let mut grpc: Vec<String> = Vec::new();
        for (i, c) in self.retry_on.iter().enumerate() {
            let list = if HTTP_CONDITIONS.contains(&c.as_str()) {
                &mut http
            } else if GRPC_CONDITIONS.contains(&c.as_str()) {
                &mut grpc
            } else {
                return Err(ConfigError::new(
                    format!("{path}.retry_on[{i}]"),
                    format!(
                        "unknown retry condition `{c}`, expected one of {}, {}",
                        HTTP_CONDITIONS.join(", "),
                        GRPC_CONDITIONS.join(", ")
                    ),
                ));
            };
            if !list.contains(c) {
                list.push(c.clone());
            }
        }
        let has = |c: &str| http.iter().any(|h| h == c);
        let num_retries = match self.num_retries {
            Some(n) => {
                check::in_range(n, 0, MAX_RETRIES, at("num_retries"))?;
                check::ensure(
                    n == 0 || !self.retry_on.is_empty(),
                    at("num_retries"),
                    "retries need at least one condition in retry_on",
                )?;
                n
            }
            None if self.retry_on.is_empty() => 0,
            None => 1,
        };
        let mut codes: Vec<String> = Vec::new();
        for (i, code) in self.retriable_status_codes.iter().enumerate() {
            check::in_range(
                *code,
                100,
                599,
                format!("{path}.retriable_status_codes[{i}]"),
            )?;
            codes.push(code.to_string());
        }
        check::ensure(
            codes.is_empty() || has("retriable-status-codes"),
            at("retriable_status_codes"),
            "needs `retriable-status-codes` in retry_on",
        )?;
        for (i, name) in self.retriable_headers.iter().enumerate() {
            check::header_name(name, format!("{path}.retriable_headers[{i}]"))?;
        }
        check::ensure(
            self.retriable_headers.is_empty() || has("retriable-headers"),
            at("retriable_headers"),
            "needs `retriable-headers` in retry_on",
        )?;
        for (value, field) in [
            (self.per_try_timeout_ms, "per_try_timeout_ms"),
            (self.timeout_ms, "timeout_ms"),
        ] {
            if let Some(ms) = value {
                check::in_range(ms, 1, MAX_TIMEOUT_MS, at(field))?;
            }
        }
        if let (Some(per_try), Some(total)) = (self.per_try_timeout_ms, self.timeout_ms) {
            check::ensure(
                per_try <= total,
                at("per_try_timeout_ms"),
                &format!("{per_try} is longer than timeout_ms {total}"),
            )?;
        }
        check::ensure(
            self.allowed_client_headers.len() <= crate::headers::MAX_ALLOWED,
            at("allowed_client_headers"),
            &format!(
                "{} names, at most {} are allowed",
                self.allowed_client_headers.len(),
                crate::headers::MAX_ALLOWED
            ),
        )?;
        for (i, name) in self.allowed_client_headers.iter().enumerate() {
            let at = format!("{path}.allowed_client_headers[{i}]");
            check::header_name(name, at.clone())?;
            check::ensure(
                name.starts_with(crate::headers::ENVOY_PREFIX),
                at.clone(),
                &format!(
                    "`{name}` is not an x-envoy-* header: only those are removed, others need no allowance"
                ),
            )?;
            check::ensure(
                !CONTROL_HEADERS.contains(&name.as_str()),
                at,
                &format!(
                    "`{name}` is a retry-control header: the rule's trust_client_headers keeps those"
                ),
            )?;
        }
        Ok(Policy {
            retry_on: join(&http),
            retry_grpc_on: join(&grpc),
            num_retries,
            status_codes: join(&codes),
            header_names: join(&self.retriable_headers),
            per_try_timeout_ms: self.per_try_timeout_ms,
            timeout_ms: self.timeout_ms,
            retry_non_idempotent: self.retry_non_idempotent,
            allowed_client_headers: self.allowed_client_headers.clone(),
        })
    }
}

impl Policy {
    /// Whether a client's `name` header (an `x-envoy-*` one) may stay.
    pub fn allows_client_header(&self, name: &str) -> bool {
        self.allowed_client_headers.iter().any(|a| a == name)
    }

    /// Whether requests with `method` may be retried under this policy.
    pub fn retries_method(&self, method: Option<&str>) -> bool {
        self.retry_non_idempotent || method.is_some_and(|m| IDEMPOTENT_METHODS.contains(&m))
    }

    /// The router request headers for a request that may make `retries` retries and has
    /// `deadline_ms` left (if it carries a deadline). With no retries only
    /// `x-envoy-max-retries: 0` and the timeouts are set. Timeouts are only ever shortened by
    /// the deadline: the per-try timeout so that `retries + 1` tries fit, the overall timeout
    /// to the deadline.
    pub fn headers(&self, retries: u32, deadline_ms: Option<u64>) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(7);
        self.each_header(retries, deadline_ms, |name, value| {
            out.push((name, value.to_string()))
        });
        out
    }

    /// [`Policy::headers`], each given to `set` in the same order as it is made, without
    /// allocating: the policy's own values are lent, numbers written on the stack.
    pub fn each_header(
        &self,
        retries: u32,
        deadline_ms: Option<u64>,
        mut set: impl FnMut(&'static str, &str),
    ) {
        if retries > 0 {
            for (name, value) in [
                (RETRY_ON, &self.retry_on),
                (RETRY_GRPC_ON, &self.retry_grpc_on),
                (RETRIABLE_STATUS_CODES, &self.status_codes),
                (RETRIABLE_HEADER_NAMES, &self.header_names),
            ] {
                if let Some(v) = value {
                    set(name, v);
                }
            }
        }
        let mut digits = [0u8; 20];
        set(MAX_RETRIES_HEADER, decimal(u64::from(retries), &mut digits));
        let (per_try, total) = fit_deadline(self, retries, deadline_ms);
        if let Some(ms) = per_try {
            set(PER_TRY_TIMEOUT, decimal(ms, &mut digits));
        }
        if let Some(ms) = total {
            set(TIMEOUT, decimal(ms, &mut digits));
        }
    }
}

/// `n` in decimal, written at the end of `buf` (20 bytes hold every `u64`).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    while let Some(slot) = at.checked_sub(1).and_then(|i| buf.get_mut(i)) {
        *slot = b'0' + (n % 10) as u8;
        at -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.get(at..)
        .and_then(|d| std::str::from_utf8(d).ok())
        .unwrap_or("0")
}

/// Per-try and overall timeouts after fitting `retries + 1` tries into `deadline_ms`.
/// A deadline never lengthens a configured timeout and never adds an overall timeout the
/// policy does not have (the route's applies then); it may add a per-try timeout.
pub fn fit_deadline(
    policy: &Policy,
    retries: u32,
    deadline_ms: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    let Some(deadline) = deadline_ms else {
        return (policy.per_try_timeout_ms, policy.timeout_ms);
    };
    let deadline = deadline.max(1);
    let total = policy.timeout_ms.map(|t| t.min(deadline));
    let per_try = if retries == 0 {
        // A single try: the overall timeout (or deadline) already bounds it.
        policy.per_try_timeout_ms.map(|p| p.min(deadline))
    } else {
        let share = (deadline / (u64::from(retries) + 1)).max(1);
        Some(policy.per_try_timeout_ms.map_or(share, |p| p.min(share)))
    };
    (per_try, total)
}

/// Parses a gRPC `grpc-timeout` value (1 to 8 digits and a unit: `H`, `M`, `S`, `m`, `u`,
/// `n`) into milliseconds, rounding down (sub-millisecond deadlines become 0).
pub fn parse_grpc_timeout(value: &str) -> Option<u64> {
    let value = value.trim();
    let unit = value.chars().last()?;
    let digits = value.get(..value.len() - unit.len_utf8())?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match unit {
        'H' => n.checked_mul(3_600_000),
        'M' => n.checked_mul(60_000),
        'S' => n.checked_mul(1_000),
        'm' => Some(n),
        'u' => Some(n / 1_000),
        'n' => Some(n / 1_000_000),
        _ => None,
    }
}

/// Parses `x-envoy-expected-rq-timeout-ms` (a decimal count of milliseconds).
pub fn parse_expected_timeout(value: &str) -> Option<u64> {
    let v = value.trim();
    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The tightest deadline the request carries, in milliseconds.
pub fn deadline_ms(grpc_timeout: Option<&str>, expected_timeout: Option<&str>) -> Option<u64> {
    let a = grpc_timeout.and_then(parse_grpc_timeout);
    let b = expected_timeout.and_then(parse_expected_timeout);
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut buf = [0u8; 20];
        for n in [0, 1, 9, 10, 250, 86_400_000, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string());
        }
    }

    fn policy(json: &str) -> Result<Policy, ConfigError> {
        meshwasm::config::parse::<PolicyConfig>(json.as_bytes())?.compile("p")
    }

    #[test]
    fn every_field_becomes_its_header() {
        let p = policy(
            r#"{"retry_on": ["5xx", "unavailable", "retriable-status-codes", "retriable-headers",
                             "reset", "cancelled", "5xx"],
                "num_retries": 3, "retriable_status_codes": [503, 409],
                "retriable_headers": ["x-retry-me", "x-upstream-busy"],
                "per_try_timeout_ms": 250, "timeout_ms": 2000}"#,
        )
        .unwrap();
        assert_eq!(
            p.headers(3, None),
            vec![
                (
                    RETRY_ON,
                    "5xx,retriable-status-codes,retriable-headers,reset".to_string()
                ),
                (RETRY_GRPC_ON, "unavailable,cancelled".to_string()),
                (RETRIABLE_STATUS_CODES, "503,409".to_string()),
                (
                    RETRIABLE_HEADER_NAMES,
                    "x-retry-me,x-upstream-busy".to_string()
                ),
                (MAX_RETRIES_HEADER, "3".to_string()),
                (PER_TRY_TIMEOUT, "250".to_string()),
                (TIMEOUT, "2000".to_string()),
            ]
        );
        // Fewer retries granted: the conditions stay, the count follows the grant.
        assert!(p
            .headers(1, None)
            .contains(&(MAX_RETRIES_HEADER, "1".to_string())));
        // None granted: only the count and timeouts.
        assert_eq!(
            p.headers(0, None),
            vec![
                (MAX_RETRIES_HEADER, "0".to_string()),
                (PER_TRY_TIMEOUT, "250".to_string()),
                (TIMEOUT, "2000".to_string()),
            ]
        );
    }

    #[test]
    fn defaults() {
        let p = policy("{}").unwrap();
        assert_eq!(p.num_retries, 0);
        assert_eq!(
            p.headers(0, None),
            vec![(MAX_RETRIES_HEADER, "0".to_string())]
        );
        assert_eq!(policy(r#"{"retry_on": ["reset"]}"#).unwrap().num_retries, 1);
        assert!(!p.retries_method(Some("POST")));
        assert!(!p.retries_method(None));
        for m in IDEMPOTENT_METHODS {
            assert!(p.retries_method(Some(m)));
        }
        let p = policy(r#"{"retry_non_idempotent": true}"#).unwrap();
        assert!(p.retries_method(Some("POST")));
    }

    #[test]
    fn impossible_policies_name_the_field() {
        let cases = [
            (
                r#"{"retry_on": ["5xx", "sometimes"]}"#,
                "p.retry_on[1]: unknown retry condition `sometimes`",
            ),
            (
                r#"{"retry_on": ["5xx"], "num_retries": 11}"#,
                "p.num_retries: 11 is out of range, expected 0 to 10",
            ),
            (
                r#"{"num_retries": 2}"#,
                "p.num_retries: retries need at least one condition",
            ),
            (
                r#"{"retry_on": ["retriable-status-codes"], "retriable_status_codes": [503, 600]}"#,
                "p.retriable_status_codes[1]: 600 is out of range, expected 100 to 599",
            ),
            (
                r#"{"retry_on": ["5xx"], "retriable_status_codes": [503]}"#,
                "p.retriable_status_codes: needs `retriable-status-codes`",
            ),
            (
                r#"{"retry_on": ["retriable-headers"], "retriable_headers": ["X-A"]}"#,
                "p.retriable_headers[0]:",
            ),
            (
                r#"{"retriable_headers": ["x-a"]}"#,
                "p.retriable_headers: needs `retriable-headers`",
            ),
            (
                r#"{"per_try_timeout_ms": 0}"#,
                "p.per_try_timeout_ms: 0 is out of range",
            ),
            (r#"{"timeout_ms": 0}"#, "p.timeout_ms: 0 is out of range"),
            (
                r#"{"per_try_timeout_ms": 300, "timeout_ms": 200}"#,
                "p.per_try_timeout_ms: 300 is longer than timeout_ms 200",
            ),
            (
                r#"{"num_retries": -1}"#,
                "num_retries: invalid value: integer `-1`",
            ),
        ];
        for (json, want) in cases {
            let err = policy(json).unwrap_err().to_string();
            assert!(err.starts_with(want), "{json}: {err}");
        }
    }

    #[test]
    fn deadlines_shorten_never_lengthen() {
        let p = policy(r#"{"retry_on": ["5xx"], "num_retries": 3, "per_try_timeout_ms": 500, "timeout_ms": 5000}"#)
            .unwrap();
        // No deadline: as configured.
        assert_eq!(fit_deadline(&p, 3, None), (Some(500), Some(5000)));
        // 1 s for 4 tries: 250 ms each, overall 1 s.
        assert_eq!(fit_deadline(&p, 3, Some(1000)), (Some(250), Some(1000)));
        // A generous deadline changes nothing.
        assert_eq!(fit_deadline(&p, 3, Some(60_000)), (Some(500), Some(5000)));
        // Fewer retries granted: fewer, longer tries (still capped by the configuration).
        assert_eq!(fit_deadline(&p, 1, Some(600)), (Some(300), Some(600)));
        // No retries: the single try keeps its timeouts, capped by the deadline.
        assert_eq!(fit_deadline(&p, 0, Some(100)), (Some(100), Some(100)));
        // No configured timeouts: a per-try share appears, no overall timeout is invented.
        let bare = policy(r#"{"retry_on": ["5xx"], "num_retries": 2}"#).unwrap();
        assert_eq!(fit_deadline(&bare, 2, Some(900)), (Some(300), None));
        assert_eq!(fit_deadline(&bare, 0, Some(900)), (None, None));
        // A deadline already spent still yields a valid (1 ms) timeout.
        assert_eq!(fit_deadline(&bare, 2, Some(0)), (Some(1), None));
        assert_eq!(
            p.headers(3, Some(1000)),
            vec![
                (RETRY_ON, "5xx".to_string()),
                (MAX_RETRIES_HEADER, "3".to_string()),
                (PER_TRY_TIMEOUT, "250".to_string()),
                (TIMEOUT, "1000".to_string()),
            ]
        );
    }

    #[test]
    fn deadline_headers_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(100));
        assert_eq!(parse_grpc_timeout("5S"), Some(5000));
        assert_eq!(parse_grpc_timeout("2M"), Some(120_000));
        assert_eq!(parse_grpc_timeout("1H"), Some(3_600_000));
        assert_eq!(parse_grpc_timeout("2500u"), Some(2));
        assert_eq!(parse_grpc_timeout("999999n"), Some(0));
        for bad in [
            "",
            "m",
            "100",
            "123456789m",
            "10x",
            "-5S",
            "1.5S",
            "5é",
            "5 S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        assert_eq!(parse_expected_timeout("1500"), Some(1500));
        assert_eq!(parse_expected_timeout("-1"), None);
        assert_eq!(parse_expected_timeout("9999999999999"), None);
        assert_eq!(deadline_ms(Some("1S"), Some("400")), Some(400));
        assert_eq!(deadline_ms(Some("300m"), None), Some(300));
        assert_eq!(deadline_ms(Some("junk"), Some("700")), Some(700));
        assert_eq!(deadline_ms(None, None), None);
    }
}
