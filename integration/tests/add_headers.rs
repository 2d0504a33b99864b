//! The add_headers example filter inside a real Envoy (V8 runtime): headers added both ways, and
//! bad configurations refused by Envoy at startup with the field path in its log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration::upstream::{Reply, Upstream};
use integration::{
    assert_eventually, http_get, start_expecting_failure, wasm_path, yaml_single_quoted, Envoy,
};

const TEMPLATE: &str = include_str!("../configs/add_headers.yaml");

/// The template's variables for filter configuration `json` and upstream port `upstream`.
fn vars(json: &str, upstream: u16) -> Vec<(&'static str, String)> {
    vec![
        ("PORT_UPSTREAM", upstream.to_string()),
        (
            "WASM",
            yaml_single_quoted(&wasm_path("add-headers").display().to_string()),
        ),
        ("FILTER_CONFIG", yaml_single_quoted(json)),
    ]
}

#[test]
fn adds_request_and_response_headers_through_envoy() {
    let upstream = Upstream::with_reply(Reply {
        headers: vec![("x-upstream".to_string(), "1".to_string())],
        ..Reply::default()
    })
    .unwrap();
    // The single quote in a value exercises the YAML quoting of the configuration.
    let config = r#"{
        "request_headers": {"x-mesh-request": "from-filter", "x-second": "two"},
        "response_headers": {"x-mesh-response": "it's added"}
    }"#;
    let envoy = Envoy::start(TEMPLATE, &vars(config, upstream.port())).unwrap();

    let resp = http_get(envoy.listener_port(), "/headers", &[("x-client", "c")]).unwrap();

    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "ok", "the upstream body passes through");
    assert_eq!(
        resp.header("x-mesh-response"),
        Some("it's added"),
        "{resp:?}"
    );
    assert_eq!(resp.header("x-upstream"), Some("1"), "{resp:?}");
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let req = &reqs[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("GET", "/headers")
    );
    assert_eq!(req.header("x-mesh-request"), Some("from-filter"), "{req:?}");
    assert_eq!(req.header("x-second"), Some("two"), "{req:?}");
    assert_eq!(req.header("x-client"), Some("c"), "{req:?}");
    assert_eq!(
        req.header("x-mesh-response"),
        None,
        "response headers stay on the response"
    );
    // Two request headers and one response header, counted by the filter's own metric.
    assert_eventually!(
        envoy.stat("wasmcustom.add_headers_headers_added_total") == Some(3),
        "stats:\n{}",
        envoy.stats()
    );
}

/// Envoy 1.40 with a static listener whose wasm `on_configure` returns false: it logs the
/// filter's error, then `Wasm VM failed Failed to configure base Wasm plugin` and
/// `Unable to create Wasm plugin add_headers`, and exits with status 1 before becoming ready
/// (`start_expecting_failure` checks the exit).
fn assert_refused(log: &str) {
    assert!(
        log.contains("add_headers: invalid configuration: "),
        "no filter error in the log:\n{log}"
    );
    assert!(
        log.contains("Failed to configure base Wasm plugin"),
        "the failure was not in on_configure:\n{log}"
    );
    assert!(
        log.contains("Unable to create Wasm plugin add_headers"),
        "Envoy did not refuse the plugin:\n{log}"
    );
}

#[test]
fn wrong_value_type_is_refused_with_the_field_path() {
    let log = start_expecting_failure(TEMPLATE, &vars(r#"{"request_headers": {"x-a": 5}}"#, 1));
    assert_refused(&log);
    assert!(
        log.contains(
            "add_headers: invalid configuration: request_headers.x-a: \
             invalid type: integer `5`, expected a string"
        ),
        "{log}"
    );
}

#[test]
fn unknown_field_is_refused_and_named() {
    let log = start_expecting_failure(TEMPLATE, &vars(r#"{"bogus": 1}"#, 1));
    assert_refused(&log);
    assert!(
        log.contains("add_headers: invalid configuration: bogus: unknown field `bogus`"),
        "{log}"
    );
}
