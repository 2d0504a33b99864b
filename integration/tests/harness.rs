//! The harness against a real Envoy without any wasm filter: start, proxy, stats, refusal of a
//! broken config, and no process left behind after drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration::upstream::Upstream;
use integration::{assert_eventually, http_get, start_expecting_failure, Envoy};

const PROXY: &str = include_str!("../configs/proxy.yaml");

#[test]
fn proxies_to_the_upstream_and_reports_stats() {
    let upstream = Upstream::start().unwrap();
    let envoy = Envoy::start(PROXY, &[("PORT_UPSTREAM", upstream.port().to_string())]).unwrap();
    assert_ne!(envoy.admin_port(), envoy.listener_port());

    let resp = http_get(envoy.listener_port(), "/via-envoy", &[("x-probe", "1")]).unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{resp:?}");
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/via-envoy");
    assert_eq!(reqs[0].header("x-probe"), Some("1"));
    assert_eventually!(envoy.stat("cluster.upstream.upstream_rq_200") == Some(1));
    assert!(envoy.log().contains("starting main dispatch loop"));
}

#[test]
fn envoy_process_is_gone_after_drop() {
    let upstream = Upstream::start().unwrap();
    let envoy = Envoy::start(PROXY, &[("PORT_UPSTREAM", upstream.port().to_string())]).unwrap();
    let admin = envoy.admin_port();
    drop(envoy);
    assert!(
        http_get(admin, "/ready", &[]).is_err(),
        "admin still answers"
    );
}

#[test]
fn a_config_envoy_rejects_is_reported_with_its_log() {
    let bad = PROXY.replace("type: STATIC", "type: NOT_A_TYPE");
    let log = start_expecting_failure(&bad, &[("PORT_UPSTREAM", "1".to_string())]);
    assert!(log.contains("NOT_A_TYPE"), "{log}");
}
