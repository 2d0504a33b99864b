//! The one-module sidecar (filters/mesh-sidecar) in real Envoy against the three filters loaded
//! one by one: the same traffic through the same sidecar layout (integration/configs/
//! all_filters.yaml and mesh_sidecar.yaml) gives the same headers on the wire and the same
//! counters, with a third of the VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_filters;

use std::collections::BTreeMap;

use all_filters::{active_vms, start_layout, Configs, Layout, Sidecar};
use integration::upstream::Reply;
use integration::{assert_eventually, http_get};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The counters the filters define (`wasmcustom.*`), by name, without histograms.
fn counters(sidecar: &Sidecar) -> BTreeMap<String, u64> {
    sidecar
        .envoy
        .stats()
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            let name = name.strip_prefix("wasmcustom.")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Runs the scenario and returns the counters once span export has settled, and the number of
/// active VMs.
fn scenario(layout: Layout) -> (BTreeMap<String, u64>, u64) {
    let sidecar = start_layout(&Configs::default(), None, 2, layout);

    // Outbound, sampled: a child span in W3C and B3, our signed identity.
    let resp = http_get(sidecar.outbound(), "/orders/1", &[("traceparent", PARENT)]).unwrap();
    assert_eq!(resp.status, 200, "{layout:?}: {resp:?}");
    let sent = sidecar.upstream.requests().pop().unwrap();
    let child = sent.header("traceparent").unwrap().to_string();
    assert!(
        child.starts_with(&format!("00-{TRACE_ID}-")),
        "{layout:?}: {child}"
    );
    assert!(!child.contains("00f067aa0ba902b7"), "{layout:?}: {child}");
    assert_eq!(sent.header("x-b3-traceid"), Some(TRACE_ID), "{layout:?}");
    assert_eq!(sent.header("x-b3-parentspanid"), Some("00f067aa0ba902b7"));
    assert!(
        sent.header("x-mesh-peer")
            .is_some_and(|p| p.starts_with("v1;s=orders;") && p.contains(";m=")),
        "{layout:?}: {sent:?}"
    );

    // Outbound to a failing upstream: the policy's two retries, then the 503.
    sidecar.upstream.set_reply(Reply {
        status: 503,
        ..Reply::default()
    });
    let before = sidecar.upstream.requests().len();
    let resp = http_get(sidecar.outbound(), "/orders/2", &[]).unwrap();
    assert_eq!(resp.status, 503, "{layout:?}");
    assert_eq!(
        resp.header("x-envoy-attempt-count"),
        Some("3"),
        "{layout:?}"
    );
    assert_eq!(sidecar.upstream.requests().len() - before, 3, "{layout:?}");

    // Inbound from outside with a forged identity: counted as unknown, never passed on.
    let resp = http_get(
        sidecar.inbound(),
        "/",
        &[("x-mesh-peer", "v1;s=payments;t=1")],
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{layout:?}");
    assert_eq!(
        sidecar.app.requests().pop().unwrap().header("x-mesh-peer"),
        None
    );

    // Three sampled spans (one per request and hop) reach the collector.
    assert_eventually!(
        counters(&sidecar)
            .iter()
            .filter(|(k, _)| k.starts_with("meshwasm_trace_spans_total;.outcome=exported"))
            .map(|(_, v)| v)
            .sum::<u64>()
            == 3,
        "{layout:?}: {:#?}",
        counters(&sidecar)
    );
    (counters(&sidecar), active_vms(&sidecar.envoy))
}

#[test]
fn one_module_behaves_as_the_three_filters() {
    let (three, three_vms) = scenario(Layout::ThreeModules);
    let (one, one_vms) = scenario(Layout::OneModule);
    // Envoy keeps a VM per module per thread (and one more per module): a third as many.
    assert_eq!(one_vms * 3, three_vms, "active VMs");
    assert!(
        three.keys().any(|k| k.starts_with("mesh_requests_total"))
            && three
                .keys()
                .any(|k| k.starts_with("meshwasm_retry_retries_total"))
            && three
                .keys()
                .any(|k| k.starts_with("meshwasm_trace_requests_total")),
        "{three:#?}"
    );
    let differences: Vec<String> = three
        .keys()
        .chain(one.keys())
        .filter(|k| three.get(*k) != one.get(*k))
        .map(|k| {
            format!(
                "{k}: three modules {:?}, one module {:?}",
                three.get(k),
                one.get(k)
            )
        })
        .collect();
    assert!(differences.is_empty(), "{differences:#?}");
    // Every request was proxied: the properties of its span and metrics came from one CEL
    // evaluation each, decoded as Envoy 1.40 encodes the list, never from the fallback.
    for (layout, counters) in [("three modules", &three), ("one module", &one)] {
        assert_eq!(
            counters.get(meshwasm::batch::FALLBACK_COUNTER),
            Some(&0),
            "{layout}: {counters:#?}"
        );
    }
}
