//! Unit tests of the service metrics filter on the SDK test host: identity precedence, the peer
//! exchange both ways (signed, forged, unsigned, expired, malformed), fallbacks, label
//! selection, the series cap, and the `stats_tags` the README and the Envoy configs ship.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meshwasm::identity::{self, Direction, Identity, KeyRing, Scope, SigningKey};
use meshwasm::metrics::stats_tags;
use meshwasm::prelude::*;
use meshwasm::testing::{CountingHost, FilterHarness, HttpStream, TestHost, TEST_EPOCH_SECS};

use super::*;
use crate::labels::ALL_LABELS;

const KEY: &str = "hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The variable of the VMs' environment (`vm_config.environment_variables`) holding [`KEY`].
const KEY_ENV: &str = "MESH_SIGNING_KEY";

/// The `signing_keys` field naming [`KEY_ENV`] (key id `k1`), spliced into configurations.
const SIGNING_KEYS: &str = r#""signing_keys":[{"id":"k1","env":"MESH_SIGNING_KEY"}]"#;

/// `host` with [`KEY`] in its VMs' environment.
fn keyed(host: TestHost) -> TestHost {
    host.set_env(KEY_ENV, KEY);
    host
}

/// The VMs' environment of [`keyed`], for [`ServiceMetrics::build`].
fn key_env(name: &str) -> Option<String> {
    (name == KEY_ENV).then(|| KEY.to_string())
}

fn key() -> SigningKey {
    SigningKey::parse(KEY).unwrap()
}

/// A header signed with [`key`] for `audience` travelling `direction`, as a peer sidecar makes it.
fn signed_for(
    id: &Identity,
    ts: u64,
    k: &SigningKey,
    audience: &str,
    direction: Direction,
) -> String {
    let ring = KeyRing::new(vec![(String::new(), k.clone())]).unwrap();
    identity::encode_scoped(
        id,
        ts,
        &ring,
        &Scope {
            audience,
            direction,
        },
    )
}

/// A request header from a caller to the destination harness (service `orders`).
fn to_orders(id: &Identity, ts: u64, k: &SigningKey) -> String {
    signed_for(id, ts, k, "orders", Direction::Request)
}

/// A response header from a callee back to the source harness (service `frontend`).
fn to_frontend(id: &Identity, ts: u64, k: &SigningKey) -> String {
    signed_for(id, ts, k, "frontend", Direction::Response)
}

fn node_host(cluster: &str, region: &str) -> TestHost {
    let h = TestHost::new();
    h.set_vm_property("xds.node.id", format!("{cluster}-pod-1").into_bytes());
    h.set_vm_property("xds.node.cluster", cluster.as_bytes().to_vec());
    h.set_vm_property("xds.node.locality.region", region.as_bytes().to_vec());
    h
}

fn source(extra: &str) -> FilterHarness<ServiceMetrics> {
    let cfg = format!(
        r#"{{"reporter":"source","identity":{{"service":"frontend","version":"v1"}},{SIGNING_KEYS}{extra}}}"#
    );
    FilterHarness::with_host(keyed(node_host("frontend-node", "eu-west-1")), &cfg).unwrap()
}

fn destination(extra: &str) -> FilterHarness<ServiceMetrics> {
    let h = node_host("orders", "us-east-1");
    h.set_vm_property("xds.node.metadata.VERSION", b"v2".to_vec());
    let cfg = format!(r#"{{"reporter":"destination",{SIGNING_KEYS}{extra}}}"#);
    FilterHarness::with_host(keyed(h), &cfg).unwrap()
}

fn orders() -> Identity {
    Identity {
        service: "orders".into(),
        version: "v2".into(),
        region: "us-east-1".into(),
        ..Identity::default()
    }
}

fn now() -> u64 {
    TEST_EPOCH_SECS
}

/// Finishes a stream `ms` after its request headers (the proxy's clock moves on): response code
/// and sizes, then `on_log`.
fn finish(s: &mut HttpStream<ServiceMetrics>, code: i64, ms: u64) {
    let h = s.host();
    h.advance(Duration::from_millis(ms));
    h.set_property_int("response.code", code);
    h.set_property_int("request.total_size", 120);
    h.set_property_int("response.total_size", 340);
    h.set_property_str("request.protocol", "HTTP/1.1");
    h.set_property_str("xds.route_name", "default");
    h.set_property_str("xds.cluster_name", "orders-cluster");
    h.set_stream_property("response.flags", meshwasm::properties::encode_u64(0));
    s.log();
}

fn series(reporter: &str, src: [&str; 3], dst: [&str; 3], code: &str) -> String {
    format!(
        "mesh_requests_total;.reporter={reporter};.source_service={};.source_version={};.source_region={};\
         .destination_service={};.destination_version={};.destination_region={};.route=default;\
         .request_protocol=HTTP/1.1;.response_code={code};.grpc_status=-;.response_flags=-",
        src[0], src[1], src[2], dst[0], dst[1], dst[2]
    )
}

#[test]
fn identity_precedence_config_then_env_then_node() {
    let host = node_host("node-cluster", "eu-west-1");
    host.set_vm_property("xds.node.metadata.VERSION", b"v-node".to_vec());
    let cfg: Config =
        serde_json::from_str(r#"{"reporter":"source","identity":{"service":"from-config"}}"#)
            .unwrap();
    let env = |name: &str| match name {
        "MESH_SERVICE" => Some("from-env".to_string()),
        "MESH_VERSION" => Some("v-env".to_string()),
        _ => None,
    };
    let root = ServiceMetrics::build(cfg, &host, &env).unwrap();
    let local = root.local();
    assert_eq!(local.service, "from-config");
    assert_eq!(local.version, "v-env");
    assert_eq!(local.instance, "node-cluster-pod-1");
    assert_eq!(local.region, "eu-west-1");
    assert_eq!(local.zone, "");
    assert!(host
        .logs()
        .iter()
        .any(|l| l.contains("service=from-config (Config)") && l.contains("version=v-env (Env)")));
}

#[test]
fn outbound_sends_signed_identity_and_learns_destination_from_response() {
    let h = source("");
    let mut s = h.stream();
    // A header the app sent is replaced, never passed on.
    s.request_headers(
        &[
            (":path", "/"),
            (":authority", "orders"),
            ("x-mesh-peer", "v1;s=admin;t=1"),
        ],
        true,
    );
    let sent = s.host().map_values(MapKind::RequestHeaders, "x-mesh-peer");
    assert_eq!(sent.len(), 1);
    let claimed = identity::verify(sent[0].as_bytes(), Some(&key()), now(), 60).unwrap();
    assert_eq!(claimed.service, "frontend");
    assert_eq!(claimed.version, "v1");
    assert_eq!(claimed.instance, "frontend-node-pod-1");

    let answer = to_frontend(&orders(), now(), &key());
    s.response_headers(&[(":status", "200"), ("x-mesh-peer", &answer)], true);
    assert_eq!(
        s.host().response_header("x-mesh-peer"),
        None,
        "the client must not see it"
    );
    assert_eq!(s.filter().peer(), &Peer::Known(std::rc::Rc::new(orders())));
    finish(&mut s, 200, 12);

    let name = series(
        "source",
        ["frontend", "v1", "eu-west-1"],
        ["orders", "v2", "us-east-1"],
        "200",
    );
    assert_eq!(
        h.host().counter(&name),
        Some(1),
        "{:#?}",
        h.host().metrics()
    );
    let hist = name.replace("mesh_requests_total", DURATION);
    assert_eq!(h.host().histogram(&hist), Some(vec![12]));
    let req = name.replace("mesh_requests_total", REQUEST_BYTES);
    assert_eq!(h.host().histogram(&req), Some(vec![120]));
    let resp = name.replace("mesh_requests_total", RESPONSE_BYTES);
    assert_eq!(h.host().histogram(&resp), Some(vec![340]));
}

#[test]
fn inbound_learns_source_removes_header_and_answers_with_its_identity() {
    let h = destination("");
    let from = Identity {
        service: "frontend".into(),
        version: "v1".into(),
        region: "eu-west-1".into(),
        ..Identity::default()
    };
    let header = to_orders(&from, now(), &key());
    let mut s = h.stream();
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert_eq!(
        s.host().request_header("x-mesh-peer"),
        None,
        "the app must not see it"
    );
    s.response_headers(&[(":status", "503")], true);
    let answer = s.host().response_header("x-mesh-peer").unwrap();
    assert_eq!(
        identity::verify(answer.as_bytes(), Some(&key()), now(), 60).unwrap(),
        Identity {
            instance: "orders-pod-1".into(),
            ..orders()
        }
    );
    finish(&mut s, 503, 3);
    let name = series(
        "destination",
        ["frontend", "v1", "eu-west-1"],
        ["orders", "v2", "us-east-1"],
        "503",
    );
    assert_eq!(
        h.host().counter(&name),
        Some(1),
        "{:#?}",
        h.host().metrics()
    );
}

#[test]
fn untrusted_headers_are_unknown_and_counted_by_reason() {
    let h = destination("");
    let good = to_orders(&orders(), now(), &key());
    let other_key = SigningKey::from_bytes(&[7; 32]);
    let cases = [
        ("forged", good.replace("s=orders", "s=admin")),
        ("forged", to_orders(&orders(), now(), &other_key)),
        ("unsigned", identity::encode(&orders(), now(), None)),
        ("expired", to_orders(&orders(), now() - 61, &key())),
        ("malformed", "orders".to_string()),
        ("unsupported_version", "v9;s=orders;t=1".to_string()),
    ];
    for (_, header) in &cases {
        let mut s = h.stream();
        s.request_headers(&[(":path", "/"), ("x-mesh-peer", header)], true);
        assert_eq!(s.host().request_header("x-mesh-peer"), None);
        assert!(matches!(s.filter().peer(), Peer::Rejected(_)));
        finish(&mut s, 200, 1);
    }
    let unknown = series(
        "destination",
        ["unknown", "unknown", "unknown"],
        ["orders", "v2", "us-east-1"],
        "200",
    );
    assert_eq!(h.host().counter(&unknown), Some(6));
    for (reason, want) in [
        ("forged", 2),
        ("unsigned", 1),
        ("expired", 1),
        ("malformed", 1),
        ("unsupported_version", 1),
    ] {
        let name = format!("{REJECTED};.reporter=destination;.reason={reason}");
        assert_eq!(h.host().counter(&name), Some(want), "{reason}");
    }
    // No request named the service a forged header claimed.
    assert!(h.host().metrics().iter().all(|m| !m.name.contains("admin")));
}

#[test]
fn a_cached_header_still_expires() {
    let h = destination("");
    let header = to_orders(&orders(), now(), &key());
    for _ in 0..2 {
        let mut s = h.stream();
        s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
        assert!(matches!(s.filter().peer(), Peer::Known(_)));
    }
    h.host().advance(Duration::from_secs(61));
    let mut s = h.stream();
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert_eq!(s.filter().peer(), &Peer::Rejected(PeerError::Expired));
}

#[test]
fn without_a_certificate_or_key_headers_are_not_believed_unless_asked_for() {
    let h = FilterHarness::<ServiceMetrics>::with_host(
        node_host("orders", "us-east-1"),
        r#"{"reporter":"destination"}"#,
    )
    .unwrap();
    let mut s = h.stream();
    let header = identity::encode(&orders(), now(), None);
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert_eq!(s.filter().peer(), &Peer::Rejected(PeerError::NoCertificate));
    assert_eq!(s.host().request_header("x-mesh-peer"), None);
    let name = format!("{REJECTED};.reporter=destination;.reason=no_certificate");
    assert_eq!(h.host().counter(&name), Some(1));
}

#[test]
fn unsigned_headers_are_taken_as_claimed_only_when_asked_for() {
    let h = FilterHarness::<ServiceMetrics>::with_host(
        node_host("orders", "us-east-1"),
        r#"{"reporter":"destination","peer_trust":"unsigned_header"}"#,
    )
    .unwrap();
    let mut s = h.stream();
    let header = identity::encode(
        &Identity {
            service: "frontend".into(),
            ..Identity::default()
        },
        5,
        None,
    );
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert!(matches!(s.filter().peer(), Peer::Known(id) if id.service == "frontend"));
    s.response_headers(&[(":status", "200")], true);
    let answer = s.host().response_header("x-mesh-peer").unwrap();
    assert!(!answer.contains(";m="), "unsigned without a key: {answer}");
}

#[test]
fn destination_falls_back_to_cluster_then_authority_and_rejected_stays_unknown() {
    let h = source(r#","drop_labels":["route","request_protocol","grpc_status","response_flags"]"#);
    // No peer header in the response: the upstream cluster names the destination.
    let mut s = h.stream();
    s.request_headers(&[(":path", "/"), (":authority", "orders.example")], true);
    s.response_headers(&[(":status", "200")], true);
    finish(&mut s, 200, 1);
    // Without a cluster name: the authority.
    let mut s = h.stream();
    s.request_headers(&[(":path", "/"), (":authority", "orders.example")], true);
    s.response_headers(&[(":status", "200")], true);
    s.host().set_property_int("response.code", 200);
    s.log();
    // A forged answer: unknown, never the claimed service nor the cluster.
    let mut s = h.stream();
    s.request_headers(&[(":path", "/"), (":authority", "orders.example")], true);
    let forged = to_frontend(&orders(), now(), &SigningKey::from_bytes(&[1; 32]));
    s.response_headers(&[(":status", "200"), ("x-mesh-peer", &forged)], true);
    finish(&mut s, 200, 1);

    let name = |dst: &str| {
        format!(
            "mesh_requests_total;.reporter=source;.source_service=frontend;.source_version=v1;\
             .source_region=eu-west-1;.destination_service={dst};.destination_version=unknown;\
             .destination_region=unknown;.response_code=200"
        )
    };
    let c = |dst: &str| h.host().counter(&name(dst));
    assert_eq!(c("orders-cluster"), Some(1), "{:#?}", h.host().metrics());
    assert_eq!(c("orders.example"), Some(1));
    assert_eq!(c("unknown"), Some(1));
    assert_eq!(
        h.host()
            .counter("mesh_peer_identity_rejected_total;.reporter=source;.reason=forged"),
        Some(1)
    );
}

#[test]
fn label_selection_and_grpc_and_flags() {
    let h = destination(
        r#","drop_labels":["route","source_version"],"add_labels":["source_instance","destination_zone"]"#,
    );
    let labels: Vec<&str> = h.root().labels().iter().map(|l| l.name()).collect();
    assert_eq!(
        labels,
        [
            "reporter",
            "source_service",
            "source_region",
            "destination_service",
            "destination_version",
            "destination_region",
            "request_protocol",
            "response_code",
            "grpc_status",
            "response_flags",
            "source_instance",
            "destination_zone",
        ]
    );
    let from = Identity {
        service: "frontend".into(),
        instance: "frontend-1".into(),
        ..Identity::default()
    };
    let mut s = h.stream();
    s.request_headers(
        &[
            (":path", "/svc/Method"),
            ("content-type", "application/grpc"),
            ("x-mesh-peer", &to_orders(&from, now(), &key())),
        ],
        true,
    );
    s.response_headers(&[(":status", "200")], true);
    s.host().set_property_int("response.grpc_status", 14);
    s.host().set_stream_property(
        "response.flags",
        meshwasm::properties::encode_u64((1 << 5) | (1 << 15)),
    );
    s.host().set_property_str("request.protocol", "HTTP/2");
    s.host().set_property_int("response.code", 200);
    s.log();
    let name = "mesh_requests_total;.reporter=destination;.source_service=frontend;\
                .source_region=unknown;.destination_service=orders;.destination_version=v2;\
                .destination_region=us-east-1;.request_protocol=HTTP/2;.response_code=200;\
                .grpc_status=14;.response_flags=UF,URX;.source_instance=frontend-1;\
                .destination_zone=unknown";
    assert_eq!(h.host().counter(name), Some(1), "{:#?}", h.host().metrics());
    // No duration or size properties: the histograms record what is there (sizes as 0).
    let sizes = name.replace("mesh_requests_total", REQUEST_BYTES);
    assert_eq!(h.host().histogram(&sizes), Some(vec![0]));
}

#[test]
fn series_cap_sends_excess_to_overflow() {
    let h = destination(r#","max_series":2"#);
    for code in [200, 404, 503, 500, 200] {
        let mut s = h.stream();
        s.request_headers(&[(":path", "/")], true);
        s.response_headers(&[(":status", &code.to_string())], true);
        finish(&mut s, code, 1);
    }
    let labels = h.root().labels().len();
    let overflow_name = format!(
        "mesh_requests_total{}",
        h.root()
            .labels()
            .iter()
            .map(|l| format!(";.{}=overflow", l.name()))
            .collect::<String>()
    );
    assert_eq!(labels, 12);
    assert_eq!(h.host().counter(&overflow_name), Some(2));
    assert_eq!(
        h.host()
            .counter("mesh_requests_total_series_overflow_total"),
        Some(2)
    );
    let dur_overflow = overflow_name.replace("mesh_requests_total", DURATION);
    assert_eq!(h.host().histogram(&dur_overflow), Some(vec![1, 1]));
}

#[test]
fn bad_configs_name_the_field() {
    let cases = [
        (r#"{}"#, "missing field `reporter`"),
        (
            r#"{"reporter":"client"}"#,
            "reporter: unknown variant `client`, expected `source` or `destination`",
        ),
        (
            r#"{"reporter":"source","signing_key":"hex:0011"}"#,
            "signing_key: a key inline in the configuration is refused",
        ),
        (
            r#"{"reporter":"source","peer_header":"X-Peer"}"#,
            "peer_header: `X-Peer` is not a valid lowercase header name",
        ),
        (
            r#"{"reporter":"source","drop_labels":["nope"]}"#,
            "drop_labels[0]: unknown label `nope`, expected one of reporter, source_service",
        ),
        (
            r#"{"reporter":"source","drop_labels":["source_zone"]}"#,
            "drop_labels[0]: `source_zone` is not a default label",
        ),
        (
            r#"{"reporter":"source","add_labels":["route"]}"#,
            "add_labels[0]: `route` is already a label",
        ),
        (
            r#"{"reporter":"source","max_series":0}"#,
            "max_series: 0 is out of range, expected 1 to 100000",
        ),
        (
            r#"{"reporter":"source","max_skew_seconds":0}"#,
            "max_skew_seconds: 0 is out of range",
        ),
        (
            r#"{"reporter":"source","identity":{"service":""}}"#,
            "identity.service: must not be empty",
        ),
        (
            r#"{"reporter":"source","identity":{"team":"x"}}"#,
            "identity.team: unknown field `team`",
        ),
        (
            r#"{"reporter":"source","bogus":1}"#,
            "unknown field `bogus`",
        ),
    ];
    for (config, want) in cases {
        let err = FilterHarness::<ServiceMetrics>::new(config).err().unwrap();
        assert!(err.to_string().contains(want), "{config}: got `{err}`");
    }
    // A key never appears in an error (an inline one is not even read).
    let err = FilterHarness::<ServiceMetrics>::new(
        r#"{"reporter":"source","signing_key":"hex:deadbeefdeadbeef"}"#,
    )
    .err()
    .unwrap();
    assert!(!err.to_string().contains("deadbeef"), "{err}");
}

#[test]
fn own_header_is_signed_once_per_second() {
    let h = source("");
    let header = |h: &FilterHarness<ServiceMetrics>| {
        let mut s = h.stream();
        s.request_headers(&[(":path", "/")], true);
        s.host().request_header("x-mesh-peer").unwrap()
    };
    let first = header(&h);
    assert_eq!(header(&h), first);
    h.host().advance(Duration::from_secs(1));
    let later = header(&h);
    assert_ne!(later, first);
    assert!(later.contains(&format!(";t={};", now() + 1)), "{later}");
}

/// Every label a config may turn on, plus `reason`, as `stats_tags`.
fn all_stats_tags() -> String {
    let names: Vec<&str> = ALL_LABELS.iter().map(|l| l.name()).collect();
    let all = MetricFamily::counter(REQUESTS, &names);
    stats_tags(&[&all, &rejected_family()])
}

#[test]
fn readme_and_envoy_configs_ship_every_stats_tag() {
    // As the README shows it: under `stats_config:`, indented two spaces.
    let tags: String = all_stats_tags()
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(&tags),
        "README lacks the stats_tags:\n{tags}"
    );
    let it = include_str!("../../../integration/configs/service_metrics.yaml");
    for label in ALL_LABELS.iter().map(|l| l.name()).chain(["reason"]) {
        let entry = format!(
            "{{ tag_name: {label}, regex: '{}' }}",
            meshwasm::metrics::tag_regex(label)
        );
        assert!(it.contains(&entry), "integration config lacks {entry}");
    }
}

/// The calls of one steady-state request (after a warm-up one) through a root configured with
/// `config`, the request and response as the bench presents them
/// (`bench/runner/src/hostcalls.rs`): (request headers, response headers, log).
fn hostcalls(config: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let host = TestHost::new();
    host.set_vm_property("xds.node.id", b"frontend-5c2a".to_vec());
    host.set_vm_property("xds.node.cluster", b"frontend".to_vec());
    let root = ServiceMetrics::build(
        meshwasm::config::parse(config.as_bytes()).unwrap(),
        &host,
        &key_env,
    )
    .unwrap();
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
                ("x-forwarded-proto", "http"),
                ("x-request-id", "5b0e4e35-6d2c-4a4e-9f3e-0d7a7a2c2f10"),
            ],
        );
        for (path, value) in [
            ("request.host", "127.0.0.1:20001"),
            ("request.protocol", "HTTP/1.1"),
            ("xds.route_name", "orders"),
            ("xds.cluster_name", "upstream"),
        ] {
            stream.set_property_str(path, value);
        }
        let c = CountingHost::new(&stream);
        let mut http = root.new_http(&c);
        http.on_request_headers(&root, &c, true);
        let request = c.take_names();
        stream.set_map(
            MapKind::ResponseHeaders,
            &[
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", "2"),
            ],
        );
        stream.set_property_int("response.code", 200);
        stream.set_stream_property("response.flags", meshwasm::properties::encode_u64(0));
        stream.set_stream_property(
            "request.duration",
            meshwasm::properties::encode_duration(Duration::from_micros(350)),
        );
        stream.set_property_int("request.size", 0);
        stream.set_property_int("request.total_size", 180);
        stream.set_property_int("response.size", 2);
        stream.set_property_int("response.total_size", 140);
        http.on_response_headers(&root, &c, true);
        let response = c.take_names();
        http.on_log(&root, &c);
        out = (request, response, c.take_names());
    }
    out
}

#[test]
fn hostcalls_per_request_stay_low() {
    // The bench's configuration (`bench/configs/filters/service_metrics.yaml`). Was 3 + 1 + 14:
    // the log read every property, `route` included, and both sizes of each direction. The
    // duration is the clock's (0.2 us) since the request headers, not `request.duration` (1.3).
    let bench = format!(r#"{{"reporter":"source",{SIGNING_KEYS},"drop_labels":["route"]}}"#);
    let (request, response, log) = hostcalls(&bench);
    assert_eq!(
        request,
        [
            "get_current_time_nanoseconds",
            "get_header_map_value RequestHeaders content-type",
            // The audience of the signed header: the upstream cluster (issue 14).
            "get_property xds.cluster_name",
            "replace_header_map_value RequestHeaders x-mesh-peer",
        ]
    );
    // The upstream's verified certificate names the destination (issue 14): one property read.
    assert_eq!(
        response,
        [
            "get_header_map_value ResponseHeaders x-mesh-peer",
            "get_property upstream.uri_san_peer_certificate"
        ]
    );
    assert_eq!(
        log,
        [
            // One evaluation for the cluster, the protocol, the flags, both sizes and the
            // status, where five property reads and a header read were (meshwasm::batch).
            "call_foreign_function expr_evaluate",
            "increment_metric",
            "get_current_time_nanoseconds",
            "record_metric",
            "record_metric",
            "record_metric",
        ]
    );
    assert!(request.len() + response.len() + log.len() <= 12);

    // Labels left out cost nothing: no content type without `grpc_status`; in the log, no
    // cluster without `destination_service` (the request still reads it: the audience of the
    // signed header).
    let lean = format!(
        r#"{{"reporter":"source",{SIGNING_KEYS},"drop_labels":["route","request_protocol","grpc_status","response_flags","destination_service"]}}"#
    );
    let (request, _, log) = hostcalls(&lean);
    assert_eq!(request.len(), 3, "{request:?}"); // the cluster: the signed header's audience
    assert_eq!(
        log.iter()
            .filter(|c| c.starts_with("get_property") || c.starts_with("call_foreign"))
            .collect::<Vec<_>>(),
        ["call_foreign_function expr_evaluate"]
    );
    let labels = |drop: &[Label]| -> Vec<Label> {
        ALL_LABELS
            .iter()
            .copied()
            .filter(|l| !drop.contains(l))
            .collect()
    };
    let lean_labels = labels(&[
        Label::Route,
        Label::RequestProtocol,
        Label::GrpcStatus,
        Label::ResponseFlags,
        Label::Destination(crate::labels::Field::Service),
    ]);
    assert_eq!(
        Uses::of(&lean_labels).log_properties(Reporter::Source),
        ["response.code", "request.total_size", "response.total_size"]
    );
    assert_eq!(
        Uses::of(&labels(&[])).log_properties(Reporter::Destination),
        [
            "xds.route_name",
            "request.protocol",
            "response.code",
            "response.flags",
            "request.total_size",
            "response.total_size"
        ]
    );

    // The destination side looks up two request headers with one read of the map.
    let inbound = format!(r#"{{"reporter":"destination",{SIGNING_KEYS}}}"#);
    let (request, response, _) = hostcalls(&inbound);
    assert_eq!(
        request,
        [
            "get_current_time_nanoseconds",
            "get_header_map_pairs RequestHeaders",
            "get_property connection.uri_san_peer_certificate"
        ]
    );
    // A caller without a verified peer header is not given our identity: no response calls.
    assert!(response.is_empty(), "{response:?}");
}

#[test]
fn sizes_fall_back_to_body_sizes_only_without_totals() {
    let h = source("");
    let mut s = h.stream();
    s.request_headers(&[(":method", "GET"), (":path", "/")], true);
    s.response_headers(&[(":status", "200")], true);
    let host = s.host();
    host.set_property_int("response.code", 200);
    host.set_property_int("request.size", 7);
    host.set_property_int("response.size", 9);
    host.set_property_int("response.total_size", 340);
    s.log();
    let name = |m: &str| {
        h.host()
            .metrics()
            .into_iter()
            .find(|v| v.name.starts_with(&format!("{m};")))
            .map(|v| v.name)
            .unwrap()
    };
    assert_eq!(h.host().histogram(&name(REQUEST_BYTES)), Some(vec![7]));
    assert_eq!(h.host().histogram(&name(RESPONSE_BYTES)), Some(vec![340]));
}

#[test]
fn duration_is_the_clock_since_the_request_headers_else_the_attribute() {
    let h = FilterHarness::<ServiceMetrics>::with_host(keyed(TestHost::new()), &format!(
        r#"{{"reporter":"source",{SIGNING_KEYS},"drop_labels":["source_service","source_version","source_region","destination_service","destination_version","destination_region","route","request_protocol","response_code","grpc_status","response_flags"]}}"#
    ))
    .unwrap();
    let hist = format!("{DURATION};.reporter=source");
    let mut s = h.stream();
    s.request_headers(&[(":path", "/")], true);
    // The attribute is ignored when the filter saw the request headers.
    s.host().set_stream_property(
        "request.duration",
        meshwasm::properties::encode_duration(Duration::from_millis(999)),
    );
    finish(&mut s, 200, 25);
    assert_eq!(h.host().histogram(&hist), Some(vec![25]));
    // A stream that ended before its request headers reached the filter: the attribute.
    let mut s = h.stream();
    s.host().set_stream_property(
        "request.duration",
        meshwasm::properties::encode_duration(Duration::from_millis(7)),
    );
    finish(&mut s, 0, 0);
    assert_eq!(h.host().histogram(&hist), Some(vec![25, 7]));
}

/// One header was counted as forged on `reporter`'s side, and no series names the service it
/// claimed.
fn assert_forged_once(h: &FilterHarness<ServiceMetrics>, reporter: &str, claimed: &str) {
    let forged = format!("{REJECTED};.reporter={reporter};.reason=forged");
    assert_eq!(h.host().counter(&forged), Some(1));
    assert!(h.host().metrics().iter().all(|m| !m.name.contains(claimed)));
}

/// `h`'s next stream, its downstream connection verified as `uri`.
fn with_downstream_cert(
    h: &FilterHarness<ServiceMetrics>,
    uri: &str,
) -> HttpStream<ServiceMetrics> {
    let s = h.stream();
    s.host()
        .set_property_str("connection.uri_san_peer_certificate", uri);
    s
}

#[test]
fn inbound_takes_the_source_from_the_certificate_and_a_header_only_where_it_agrees() {
    let h = destination("");
    let cert = "spiffe://cluster.local/ns/shop/sa/frontend";
    let frontend = Identity {
        service: "frontend".into(),
        version: "v7".into(),
        region: "eu-west-1".into(),
        ..Identity::default()
    };
    // A certificate and an agreeing header (unsigned is enough over mTLS: the certificate
    // authenticates the connection; here a key is set, so it must be signed all the same).
    let mut s = with_downstream_cert(&h, cert);
    let header = to_orders(&frontend, now(), &key());
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert!(
        matches!(s.filter().peer(), Peer::Known(id) if id.service == "frontend" && id.version == "v7" && id.namespace == "shop")
    );
    finish(&mut s, 200, 1);
    // A certificate alone: namespace and service, the rest unknown.
    let mut s = with_downstream_cert(&h, cert);
    s.request_headers(&[(":path", "/")], true);
    assert!(
        matches!(s.filter().peer(), Peer::Known(id) if id.service == "frontend" && id.version.is_empty())
    );
    // Its answer carries our identity: the caller proved who it is.
    s.response_headers(&[(":status", "200")], true);
    assert!(s.host().response_header("x-mesh-peer").is_some());
    finish(&mut s, 200, 1);
    // A workload of frontend claiming to be admin: forged, labelled frontend.
    let admin = Identity {
        service: "admin".into(),
        ..frontend.clone()
    };
    let mut s = with_downstream_cert(&h, cert);
    let header = to_orders(&admin, now(), &key());
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert!(matches!(s.filter().peer(), Peer::Known(id) if id.service == "frontend"));
    finish(&mut s, 200, 1);
    assert_forged_once(&h, "destination", "admin");
    let as_frontend = h
        .host()
        .metrics()
        .iter()
        .filter(|m| m.name.starts_with(REQUESTS) && m.name.contains("source_service=frontend"))
        .count();
    assert!(as_frontend >= 2, "{:?}", h.host().metrics());
    // A certificate of the CA that is no workload's SPIFFE ID: unknown, counted.
    let mut s = with_downstream_cert(&h, "spiffe://cluster.local/admin");
    s.request_headers(&[(":path", "/")], true);
    assert_eq!(
        s.filter().peer(),
        &Peer::Rejected(PeerError::BadCertificate)
    );
    let bad = format!("{REJECTED};.reporter=destination;.reason=bad_certificate");
    assert_eq!(h.host().counter(&bad), Some(1));
}

#[test]
fn outbound_takes_the_destination_from_the_upstream_certificate() {
    let h = source("");
    let mut s = h.stream();
    s.request_headers(&[(":path", "/")], true);
    s.host().set_property_str(
        "upstream.uri_san_peer_certificate",
        "spiffe://cluster.local/ns/shop/sa/orders",
    );
    // The upstream answers claiming to be payments: forged, counted, labelled orders.
    let payments = Identity {
        service: "payments".into(),
        ..orders()
    };
    let answer = to_frontend(&payments, now(), &key());
    s.response_headers(&[(":status", "200"), ("x-mesh-peer", &answer)], true);
    assert!(matches!(s.filter().peer(), Peer::Known(id) if id.service == "orders"));
    finish(&mut s, 200, 1);
    assert_forged_once(&h, "source", "payments");
}

#[test]
fn peer_trust_settings_that_contradict_themselves_are_refused_with_how_to_trust_peers() {
    let err = FilterHarness::<ServiceMetrics>::new(
        r#"{"reporter":"destination","peer_trust":"signed_header"}"#,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("peer_trust: signed_header needs signing_keys"),
        "{err}"
    );
    assert!(err.contains("mutual-TLS certificate"), "{err}");
    let err = FilterHarness::<ServiceMetrics>::new(&format!(
        r#"{{"reporter":"destination","peer_trust":"unsigned_header",{SIGNING_KEYS}}}"#
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("peer_trust: unsigned_header with signing_keys"),
        "{err}"
    );
    let err =
        FilterHarness::<ServiceMetrics>::new(r#"{"reporter":"destination","peer_trust":"any"}"#)
            .err()
            .unwrap()
            .to_string();
    assert!(
        err.starts_with("peer_trust: unknown variant `any`"),
        "{err}"
    );
}

#[test]
fn the_identity_header_goes_only_to_mesh_clusters_when_they_are_listed() {
    let h = source(r#","mesh_clusters":["orders","inventory"]"#);
    for (cluster, sent) in [("orders", true), ("payments-api", false)] {
        let mut s = h.stream();
        s.host().set_property_str("xds.cluster_name", cluster);
        s.request_headers(&[(":path", "/"), ("x-mesh-peer", "v1;s=spoof;t=1")], true);
        let value = s.host().request_header("x-mesh-peer");
        assert_eq!(value.is_some(), sent, "{cluster}: {value:?}");
        if let Some(v) = value {
            assert!(v.contains("s=frontend"), "{v}");
        }
    }
    let err = FilterHarness::<ServiceMetrics>::new(r#"{"reporter":"source","mesh_clusters":[""]}"#)
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("mesh_clusters[0]: "), "{err}");
}

#[test]
fn a_relay_passes_its_callers_header_on() {
    let h = destination(r#","relays":["front-proxy"]"#);
    let header = to_orders(
        &Identity {
            service: "frontend".into(),
            ..Identity::default()
        },
        now(),
        &key(),
    );
    let mut s = with_downstream_cert(&h, "spiffe://cluster.local/ns/shop/sa/front-proxy");
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert!(matches!(s.filter().peer(), Peer::Known(id) if id.service == "frontend"));
    // Anyone else naming another service is still forged.
    let mut s = with_downstream_cert(&h, "spiffe://cluster.local/ns/shop/sa/orders-b");
    s.request_headers(&[(":path", "/"), ("x-mesh-peer", &header)], true);
    assert!(matches!(s.filter().peer(), Peer::Known(id) if id.service == "orders-b"));
}

#[test]
fn signing_keys_come_from_the_environment_with_ids_and_two_verify_during_a_rotation() {
    let config = |json: &str| meshwasm::config::parse::<Config>(json.as_bytes()).unwrap();
    let env = |name: &str| match name {
        "KEY_NEW" => {
            Some("hex:0202020202020202020202020202020202020202020202020202020202020202".into())
        }
        "KEY_OLD" => Some(KEY.to_string()),
        "KEY_SHORT" => Some("hex:0011".into()),
        "KEY_TEXT" => Some("secret".into()),
        "KEY_BAD_BASE64" => Some("base64:!!".into()),
        _ => None,
    };
    let host = node_host("orders", "us-east-1");
    let rotating = r#"{"reporter":"destination","signing_keys":[{"id":"new","env":"KEY_NEW"},{"id":"old","env":"KEY_OLD"}]}"#;
    let root = ServiceMetrics::build(config(rotating), &host, &env).unwrap();
    // A header signed with the old key (id-less, as an older sidecar sends) still verifies.
    let by_old = to_orders(&orders(), now(), &key());
    let stream = host.new_stream();
    assert!(matches!(
        root.check(&stream, MapKind::RequestHeaders, by_old.as_bytes()),
        Peer::Known(_)
    ));
    // Unset variable, bad keys, no id, an inline key beside them, three keys: refused, naming
    // the field.
    for (json, want) in [
        (
            r#"{"reporter":"source","signing_keys":[{"id":"k","env":"NOPE"}]}"#,
            "signing_keys[0].env: NOPE is not set in the VM's environment",
        ),
        (
            r#"{"reporter":"source","signing_keys":[{"id":"k","env":"KEY_SHORT"}]}"#,
            "signing_keys[0].env: key is 2 bytes, expected 16 to 64",
        ),
        (
            r#"{"reporter":"source","signing_keys":[{"id":"k","env":"KEY_OLD"},{"id":"t","env":"KEY_TEXT"}]}"#,
            "signing_keys[1].env: must start with `hex:` or `base64:`",
        ),
        (
            r#"{"reporter":"source","signing_keys":[{"id":"k","env":"KEY_BAD_BASE64"}]}"#,
            "signing_keys[0].env: `base64:` key is not valid base64",
        ),
        (
            r#"{"reporter":"source","signing_keys":[{"id":"","env":"KEY_OLD"}]}"#,
            "signing_keys[0].id: a key id is required",
        ),
        (
            &format!(
                r#"{{"reporter":"source","signing_key":"{KEY}","signing_keys":[{{"id":"k","env":"KEY_OLD"}}]}}"#
            ),
            "signing_key: a key inline in the configuration is refused",
        ),
        (
            r#"{"reporter":"source","signing_keys":[{"id":"a","env":"KEY_OLD"},{"id":"b","env":"KEY_OLD"},{"id":"c","env":"KEY_OLD"}]}"#,
            "signing_keys: at most 2 keys",
        ),
        (
            r#"{"reporter":"source","signing_keys":[{"id":"k","file":"/etc/key"}]}"#,
            "signing_keys[0].file: unknown field `file`, expected `id` or `env`",
        ),
    ] {
        let err = match meshwasm::config::parse::<Config>(json.as_bytes()) {
            Ok(c) => ServiceMetrics::build(c, &host, &env)
                .err()
                .unwrap()
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with(want), "{err}");
    }
}

#[test]
fn an_inline_signing_key_is_refused_with_where_a_key_goes_instead() {
    let err = FilterHarness::<ServiceMetrics>::new(&format!(
        r#"{{"reporter":"source","signing_key":"{KEY}"}}"#
    ))
    .err()
    .unwrap();
    assert_eq!(err.path, "signing_key");
    for want in [
        "/config_dump",
        r#""signing_keys":[{"id":"k1","env":"MESH_SIGNING_KEY"}]"#,
        "vm_config.environment_variables.host_env_keys",
        "secretKeyRef",
        "environment_variables.key_values",
    ] {
        assert!(err.reason.contains(want), "`{want}` not in `{err}`");
    }
    // Whatever its value, an empty one too (`null` is no key).
    let err = FilterHarness::<ServiceMetrics>::new(r#"{"reporter":"source","signing_key":""}"#);
    assert_eq!(err.err().unwrap().path, "signing_key");
}

#[test]
fn numbers_render_in_decimal_without_allocating() {
    let mut buf = [0u8; DECIMAL_LEN];
    assert_eq!(decimal(0, &mut buf), "0");
    assert_eq!(decimal(200, &mut buf), "200");
    assert_eq!(decimal(-1, &mut buf), "-1");
    assert_eq!(decimal(i64::MAX, &mut buf), i64::MAX.to_string());
    assert_eq!(decimal(i64::MIN, &mut buf), i64::MIN.to_string());
}
