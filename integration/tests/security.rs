//! End-to-end attacks from a client outside the mesh on the sidecar's inbound listener (signing
//! on; loopback counts as an internal address, so Envoy itself passes x-envoy-* headers on and
//! the filters are the only defence): a forged, unsigned, tampered or expired identity is
//! counted as `unknown`, never as the service it claims; retry and timeout headers are removed,
//! so the app sees one attempt and the client cannot shorten the timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_filters;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use all_filters::{start, stat_sum, Configs};
use integration::upstream::{Reply, Server};
use integration::{assert_eventually, http_get, Envoy};

fn source_count(envoy: &Envoy, service: &str) -> u64 {
    stat_sum(
        &envoy.stats(),
        &[
            "mesh_requests_total;.reporter=destination",
            &format!(";.source_service={service};"),
        ],
    )
}

fn rejected(envoy: &Envoy, reason: &str) -> u64 {
    stat_sum(
        &envoy.stats(),
        &[&format!(
            "mesh_peer_identity_rejected_total;.reporter=destination;.reason={reason}"
        )],
    )
}

#[test]
fn forged_identities_from_outside_count_as_unknown() {
    let sidecar = start(&Configs::default());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let attacks: [(&str, String); 5] = [
        ("unsigned", format!("v1;s=payments;v=v1;t={now}")),
        (
            "forged",
            format!("v1;s=payments;v=v1;t={now};m=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
        ("malformed", "payments".to_string()),
        ("unsupported_version", "v2;s=payments".to_string()),
        (
            "expired",
            // Signed with the mesh key but far in the past: the signature check may run first
            // (`forged`) or the clock check (`expired`); either way it is not believed.
            "v1;s=payments;t=1000;m=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
        ),
    ];
    for (reason, header) in &attacks {
        let resp = http_get(sidecar.inbound(), "/", &[("x-mesh-peer", header)]).unwrap();
        assert_eq!(resp.status, 200);
        let app_saw = sidecar.app.requests().pop().unwrap();
        assert_eq!(
            app_saw.header("x-mesh-peer"),
            None,
            "{reason}: reached the app"
        );
        if *reason != "expired" {
            assert_eventually!(
                rejected(&sidecar.envoy, reason) >= 1,
                "{reason}: {}",
                sidecar.envoy.stats()
            );
        }
    }
    // An outside client is never handed a signed identity to edit or replay (tampering with a
    // genuine header is covered by the SDK's identity unit tests).
    let resp = http_get(sidecar.inbound(), "/", &[]).unwrap();
    assert_eq!(resp.header("x-mesh-peer"), None, "{resp:?}");
    assert_eventually!(source_count(&sidecar.envoy, "unknown") > attacks.len() as u64);
    assert_eq!(
        source_count(&sidecar.envoy, "payments"),
        0,
        "a forged identity was believed: {}",
        sidecar.envoy.stats()
    );
}

/// Filed for the lead: the destination sidecar answers every client, also one outside the mesh,
/// with its own freshly signed identity in `x-mesh-peer`; sent back as a request header to any
/// sidecar of the mesh within `max_skew_seconds`, it is believed. An external client thus claims
/// to be `orders` without the key. The header carries no direction, so a response identity
/// passes as a request identity.
#[test]
fn an_identity_harvested_from_a_response_cannot_be_replayed() {
    let sidecar = start(&Configs::default());
    // An outside client (no verified peer header) is not handed the sidecar's identity.
    let resp = http_get(sidecar.inbound(), "/", &[]).unwrap();
    assert_eq!(resp.header("x-mesh-peer"), None, "{resp:?}");
    // Even a harvested-looking header sent back is not believed.
    let fake = "v1;s=orders;v=v1;i=x;n=default;r=r;z=z;t=1767225600;m=AAAA";
    http_get(sidecar.inbound(), "/", &[("x-mesh-peer", fake)]).unwrap();
    assert_eventually!(
        stat_sum(
            &sidecar.envoy.stats(),
            &["mesh_requests_total;.reporter=destination"]
        ) >= 2
    );
    assert_eq!(
        source_count(&sidecar.envoy, "orders"),
        0,
        "the replayed identity was believed"
    );
}

#[test]
fn outside_clients_cannot_order_retries() {
    let sidecar = start(&Configs::default());
    sidecar.app.set_reply(Reply {
        status: 503,
        ..Reply::default()
    });
    let resp = http_get(
        sidecar.inbound(),
        "/retry-me",
        &[
            ("x-envoy-max-retries", "10"),
            ("x-envoy-retry-on", "5xx,reset,connect-failure"),
            ("x-envoy-retry-grpc-on", "unavailable"),
            ("x-envoy-retriable-status-codes", "503"),
            ("x-envoy-hedge-on-per-try-timeout", "true"),
        ],
    )
    .unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-envoy-attempt-count"), Some("1"), "{resp:?}");
    assert_eq!(
        sidecar.app.requests().len(),
        1,
        "the app saw more than one attempt"
    );
    assert_eventually!(
        stat_sum(
            &sidecar.envoy.stats(),
            &["meshwasm_retry_client_headers_stripped_total"]
        ) >= 5
    );
}

/// An app that answers 200 after 300 ms, counting requests; it stops when dropped.
fn slow_app() -> (Server, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let server = Server::start("slow-app", move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(300));
        Reply::new(200, "slow")
    })
    .unwrap();
    (server, count)
}

#[test]
fn outside_clients_cannot_set_timeouts() {
    let (app, count) = slow_app();
    let port = app.port();
    let sidecar = {
        // The same sidecar, with the slow app behind the inbound listener.
        let mut builder = Envoy::builder(all_filters::TEMPLATE)
            .var("PORT_UPSTREAM", port.to_string())
            .var("PORT_APP", port.to_string())
            .var("PORT_COLLECTOR", port.to_string());
        for (k, v) in Configs::default().vars() {
            builder = builder.var(&k, v);
        }
        builder.start().unwrap()
    };
    let resp = http_get(
        sidecar.port("PORT_INBOUND"),
        "/slow",
        &[
            ("x-envoy-upstream-rq-timeout-ms", "50"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "20"),
        ],
    )
    .unwrap();
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "slow"),
        "the client's timeout was obeyed: {resp:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn the_identity_header_goes_only_to_the_listed_mesh_clusters() {
    // The outbound listener's cluster is `upstream`: listed, it gets our identity; not listed
    // (an external service), it gets none, not even one the app set itself.
    for (clusters, sent) in [(r#"["upstream"]"#, true), (r#"["orders"]"#, false)] {
        let sidecar = start(&Configs {
            metrics_out: format!(
                r#"{{"reporter":"source",{},"mesh_clusters":{clusters}}}"#,
                all_filters::SIGNING_KEYS
            ),
            ..Configs::default()
        });
        http_get(sidecar.outbound(), "/", &[("x-mesh-peer", "v1;s=app;t=1")]).unwrap();
        let got = sidecar.upstream.requests()[0]
            .header("x-mesh-peer")
            .map(str::to_string);
        assert_eq!(got.is_some(), sent, "{clusters}: {got:?}");
        if let Some(value) = got {
            assert!(value.starts_with("v1;s=orders;"), "{value}");
        }
    }
}

#[test]
fn a_signed_header_captured_at_one_hop_is_refused_at_another() {
    let sidecar = start(&Configs::default());
    // A real signed header, as this sidecar sends it to its upstream (audience `upstream`,
    // direction request), captured there.
    http_get(sidecar.outbound(), "/", &[]).unwrap();
    let captured = sidecar.upstream.requests()[0]
        .header("x-mesh-peer")
        .unwrap()
        .to_string();
    assert!(
        captured.contains(";k=mesh-1;a=upstream;d=rq;m="),
        "{captured}"
    );
    // Replayed from outside to the inbound listener (service `orders`), within the skew: the
    // signature is good, the audience is not.
    http_get(sidecar.inbound(), "/", &[("x-mesh-peer", &captured)]).unwrap();
    assert_eventually!(rejected(&sidecar.envoy, "wrong_audience") == 1);
    assert_eq!(source_count(&sidecar.envoy, "orders"), 0);
}
