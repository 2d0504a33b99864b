//! Mutual TLS between sidecars in real Envoy, with the shipped `envoy-configs/sidecar.yaml` and
//! certificates made by the project's tooling (`toolkit::certs`) in a temp dir: `orders`' sidecar
//! calls `inventory`'s over mTLS; a caller with no client certificate, with a certificate of
//! another CA or in plain text is refused at inventory's inbound listener; every certificate is
//! rotated while traffic flows, with no failed request, and the peers then see the new ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration::upstream::Upstream;
use integration::{assert_eventually, filters_dir, http_get, wasm_path, Envoy, ScratchDir};
use meshwasm_demo::mesh::write_eds;
use sha2::Digest;
use toolkit::certs::{self, Identity, MeshCa, WorkloadCert, DEFAULT_WORKLOAD_VALIDITY};
use toolkit::collector::Collector;

const SIDECAR: &str = include_str!("../../envoy-configs/sidecar.yaml");
const TLS_CLIENT: &str = include_str!("../configs/tls_client.yaml");
const NAMESPACE: &str = "shop";

/// Two sidecars of the shipped config: `orders` (the caller) and `inventory`, whose app is a
/// test upstream; EDS files list inventory's inbound listener.
struct Pair {
    ca: MeshCa,
    orders: Envoy,
    inventory: Envoy,
    inventory_app: Upstream,
    dir: ScratchDir,
    _orders_app: Upstream,
    _collector: Collector,
}

fn sidecar(service: &str, dir: &Path, app: &Upstream, collector: &Collector) -> Envoy {
    Envoy::builder(SIDECAR)
        .name(&format!("{service}-1"))
        .var("FILTERS_DIR", filters_dir().display().to_string())
        .var("EDS_DIR", dir.join("eds").display().to_string())
        .var(
            "CERTS_DIR",
            dir.join("certs").join(service).display().to_string(),
        )
        .var("PORT_APP", app.port().to_string())
        .var("PORT_COLLECTOR", collector.port().to_string())
        .arg("--service-cluster")
        .arg(service)
        .arg("--service-node")
        .arg(&format!("{service}-1"))
        .env("MESH_NAMESPACE", NAMESPACE)
        .env("MESH_VERSION", "v1")
        .start()
        .unwrap()
}

impl Pair {
    fn start() -> Pair {
        for filter in ["trace-propagation", "service-metrics", "route-retries"] {
            wasm_path(filter);
        }
        let dir = ScratchDir::new("mtls").unwrap();
        let (ca, _) = certs::make_mesh(
            &dir.path().join("certs"),
            certs::DEFAULT_TRUST_DOMAIN,
            NAMESPACE,
            &["orders", "inventory"],
            DEFAULT_WORKLOAD_VALIDITY,
        )
        .unwrap();
        let eds = dir.path().join("eds");
        fs::create_dir_all(&eds).unwrap();
        for service in ["frontend", "orders", "inventory"] {
            write_eds(&eds, service, &[]).unwrap();
        }
        let collector = Collector::start().unwrap();
        let inventory_app = Upstream::start().unwrap();
        let orders_app = Upstream::start().unwrap();
        let inventory = sidecar("inventory", dir.path(), &inventory_app, &collector);
        let orders = sidecar("orders", dir.path(), &orders_app, &collector);
        write_eds(&eds, "inventory", &[inventory.port("PORT_INBOUND")]).unwrap();
        assert_eventually!(orders.stat("cluster.inventory.membership_healthy") == Some(1));
        Pair {
            ca,
            orders,
            inventory,
            inventory_app,
            dir,
            _orders_app: orders_app,
            _collector: collector,
        }
    }

    /// One call from orders' app to inventory through both sidecars.
    fn call(&self) -> Result<u16, String> {
        http_get(
            self.orders.port("PORT_OUTBOUND"),
            "/stock",
            &[("host", "inventory")],
        )
        .map(|r| r.status)
    }

    /// A client that is no sidecar, calling inventory's inbound listener over TLS with the
    /// certificates of `certs_dir` (none when `with_cert` is false).
    fn outsider(&self, certs_dir: &Path, with_cert: bool) -> Envoy {
        let mut template = TLS_CLIENT.to_string();
        if !with_cert {
            let begin = template.find("# client-cert: begin").unwrap();
            let end = template.find("# client-cert: end").unwrap();
            template.replace_range(begin..end, "");
        }
        Envoy::builder(&template)
            .name("outsider")
            .var("CERTS_DIR", certs_dir.display().to_string())
            .var("PORT_PEER", self.inventory.port("PORT_INBOUND").to_string())
            .start()
            .unwrap()
    }

    fn inbound_stat(&self, name: &str) -> u64 {
        self.inventory
            .stat(&format!("listener.inbound.ssl.{name}"))
            .unwrap_or(0)
    }

    /// A serial number `sidecar`'s admin `/certs` shows for its own certificate.
    fn serving_serials(sidecar: &Envoy) -> String {
        sidecar.admin_get("/certs").unwrap().body
    }
}

/// `Hash=` of `x-forwarded-client-cert`: the hex SHA-256 of the peer certificate's DER.
fn cert_hash(cert: &WorkloadCert) -> String {
    sha2::Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn sidecars_call_each_other_over_mutual_tls_and_the_app_learns_the_verified_caller() {
    let pair = Pair::start();
    assert_eq!(pair.call(), Ok(200));
    let requests = pair.inventory_app.requests();
    assert_eq!(requests.len(), 1);
    let xfcc = requests[0].header("x-forwarded-client-cert").unwrap_or("");
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/shop/sa/orders"),
        "{xfcc}"
    );
    assert!(
        xfcc.contains("By=spiffe://cluster.local/ns/shop/sa/inventory"),
        "{xfcc}"
    );
    assert!(pair.inbound_stat("handshake") >= 1);
    // A caller's own x-forwarded-client-cert never reaches the app.
    let forged = "By=spiffe://x;URI=spiffe://cluster.local/ns/shop/sa/admin";
    let resp = http_get(
        pair.orders.port("PORT_OUTBOUND"),
        "/",
        &[("host", "inventory"), ("x-forwarded-client-cert", forged)],
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    let last = pair.inventory_app.requests().pop().unwrap();
    let xfcc = last.header("x-forwarded-client-cert").unwrap_or("");
    assert!(!xfcc.contains("sa/admin"), "{xfcc}");
}

#[test]
fn inbound_refuses_callers_without_a_mesh_certificate() {
    let pair = Pair::start();
    let before = pair.inventory_app.requests().len();

    // Plain text: no TLS at all.
    let plain = http_get(pair.inventory.port("PORT_INBOUND"), "/", &[]);
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status >= 400),
        "{plain:?}"
    );

    // TLS that trusts the mesh CA, but with no client certificate.
    let no_cert = pair.outsider(&pair.dir.path().join("certs").join("orders"), false);
    let resp = http_get(no_cert.listener_port(), "/", &[]).unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eventually!(pair.inbound_stat("fail_verify_no_cert") >= 1);

    // A certificate claiming orders' very identity, from another CA.
    let other_ca = MeshCa::generate("another CA").unwrap();
    let forged = other_ca
        .issue(
            &Identity::new(NAMESPACE, "orders").unwrap(),
            DEFAULT_WORKLOAD_VALIDITY,
        )
        .unwrap();
    let forged_dir = pair.dir.path().join("certs").join("forged-orders");
    certs::write_workload(&forged_dir, &forged, &[&pair.ca]).unwrap();
    let other = pair.outsider(&forged_dir, true);
    let resp = http_get(other.listener_port(), "/", &[]).unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eventually!(pair.inbound_stat("fail_verify_error") >= 1);

    // The same client with a certificate of the mesh CA gets through: the refusals were about
    // the certificate, not the client.
    let good = pair.outsider(&pair.dir.path().join("certs").join("orders"), true);
    assert_eq!(
        http_get(good.listener_port(), "/", &[]).unwrap().status,
        200
    );
    assert_eq!(pair.inventory_app.requests().len(), before + 1);
}

#[test]
fn every_certificate_rotates_under_load_with_no_failed_request() {
    let pair = Arc::new(Pair::start());
    assert_eq!(pair.call(), Ok(200));
    let old_serials = [
        Pair::serving_serials(&pair.orders),
        Pair::serving_serials(&pair.inventory),
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (pair, stop, served, failures) =
                (pair.clone(), stop.clone(), served.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match pair.call() {
                        Ok(200) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    assert_eventually!(served.load(Ordering::Relaxed) >= 200);

    // New keys and certificates for both workloads, renamed over the old SDS files.
    let mut new = Vec::new();
    for service in ["orders", "inventory"] {
        let cert = pair
            .ca
            .issue(
                &Identity::new(NAMESPACE, service).unwrap(),
                DEFAULT_WORKLOAD_VALIDITY,
            )
            .unwrap();
        certs::write_workload(
            &pair.dir.path().join("certs").join(service),
            &cert,
            &[&pair.ca],
        )
        .unwrap();
        new.push(cert);
    }
    let (orders_cert, inventory_cert) = (&new[0], &new[1]);

    // Each sidecar serves its new certificate...
    assert_eventually!(Pair::serving_serials(&pair.orders).contains(&orders_cert.serial_hex));
    assert_eventually!(Pair::serving_serials(&pair.inventory).contains(&inventory_cert.serial_hex));
    // ...and the peer sees it: inventory's app is told the hash of orders' new certificate, on
    // the connections opened after the rotation while the load goes on.
    let hash = format!("Hash={}", cert_hash(orders_cert));
    let sees_new_cert = || {
        pair.inventory_app
            .requests()
            .iter()
            .rev()
            .take(50)
            .any(|r| {
                r.header("x-forwarded-client-cert")
                    .is_some_and(|x| x.contains(&hash))
            })
    };
    // Connections opened before the rotation keep their handshake until inventory closes them
    // gracefully after 1000 requests (`max_requests_per_connection`): allow for two of them at
    // a slow machine's rate.
    let served_then = served.load(Ordering::Relaxed);
    assert!(
        integration::eventually_within(Duration::from_secs(120), sees_new_cert),
        "no {hash} in inventory's last x-forwarded-client-cert after {} more requests: {:?}; \
         handshakes: {}",
        served.load(Ordering::Relaxed) - served_then,
        pair.inventory_app
            .requests()
            .last()
            .and_then(|r| r.header("x-forwarded-client-cert").map(str::to_string)),
        pair.inbound_stat("handshake")
    );
    let after = served.load(Ordering::Relaxed);
    assert_eventually!(served.load(Ordering::Relaxed) >= after + 200);

    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        served.load(Ordering::Relaxed) + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    for (old, sidecar) in old_serials.iter().zip([&pair.orders, &pair.inventory]) {
        assert_ne!(old, &Pair::serving_serials(sidecar));
    }
    // No handshake failed at inventory during the rotation.
    assert_eq!(pair.inbound_stat("connection_error"), 0);
    assert_eq!(pair.inbound_stat("fail_verify_error"), 0);
}

/// The `mesh_requests_total` series of `sidecar` with `reporter` whose name holds `needle`.
fn requests_with(sidecar: &Envoy, reporter: &str, needle: &str) -> u64 {
    sidecar
        .stats()
        .lines()
        .filter(|l| l.contains(&format!("mesh_requests_total;.reporter={reporter};")))
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn service_metrics_name_peers_by_their_verified_certificates() {
    let pair = Pair::start();
    for _ in 0..3 {
        assert_eq!(pair.call(), Ok(200));
    }
    // The caller's sidecar learns the destination from inventory's certificate and its version
    // from inventory's header, which agrees; inventory's sidecar the same of orders (the header
    // went out: inventory is one of the `mesh_clusters`).
    assert_eventually!(
        requests_with(
            &pair.orders,
            "source",
            ";.source_service=orders;.source_version=v1;.source_region=unknown;.destination_service=inventory;.destination_version=v1;"
        ) == 3,
        "{}",
        pair.orders.stats()
    );
    assert_eventually!(
        requests_with(
            &pair.inventory,
            "destination",
            ";.source_service=orders;.source_version=v1;"
        ) == 3,
        "{}",
        pair.inventory.stats()
    );

    // A workload with a certificate of orders claiming to be payments: labelled orders, and
    // counted as forged.
    let claims_payments = pair.outsider(&pair.dir.path().join("certs").join("orders"), true);
    let resp = http_get(
        claims_payments.listener_port(),
        "/",
        &[("x-mesh-peer", "v1;s=payments;t=1")],
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eventually!(
        requests_with(&pair.inventory, "destination", ";.source_service=orders;") == 4
    );
    let forged = "mesh_peer_identity_rejected_total;.reporter=destination;.reason=forged: 1";
    assert!(
        pair.inventory.stats().lines().any(|l| l.ends_with(forged)),
        "{}",
        pair.inventory.stats()
    );
    assert!(!pair.inventory.stats().contains("payments"));
}
