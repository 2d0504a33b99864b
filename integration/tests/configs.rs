//! The shipped configs beyond `envoy --mode validate`: the remote-code sidecar variant loads the
//! filters from an HTTP server with their sha256 and refuses a wrong hash; and the manifests in
//! examples/k8s reference filters that exist, with configurations the filters themselves accept,
//! the sidecar Pod's bootstrap answers its readiness probe on a listener the kubelet reaches, and
//! every manifest passes the Kubernetes or Istio schema of its kind (`k8s_schemas`);
//! the one-module sidecars are what `cargo xtask derive-configs` makes of the three-module ones,
//! with configurations mesh_sidecar accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use integration::upstream::{Reply, Server, Upstream};
use integration::{
    assert_eventually, filters_dir, http_get, wasm_path, workspace_root, Envoy, ScratchDir,
};
use meshwasm::testing::FilterHarness;
use serde_norway::Value;
use sha2::{Digest, Sha256};

mod k8s_schemas;

const REMOTE: &str = include_str!("../../envoy-configs/sidecar-remote-wasm.yaml");
const TLS_SERVER: &str = include_str!("../configs/tls_server.yaml");
const FILTERS: [&str; 3] = ["trace_propagation", "service_metrics", "route_retries"];

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HTTP server answering `GET /<filter>.wasm` with the built file (404 for anything else),
/// counting every request; returns it (it stops when dropped) and the counter.
fn wasm_server() -> (Server, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fetches);
    let dir = filters_dir();
    let server = Server::start("wasm-server", move |req| {
        f.fetch_add(1, Ordering::SeqCst);
        let name = req.path.trim_start_matches('/');
        let body = FILTERS
            .iter()
            .any(|x| format!("{x}.wasm") == name)
            .then(|| fs::read(dir.join(name)).ok())
            .flatten();
        match body {
            Some(body) => Reply {
                status: 200,
                headers: vec![("content-type".into(), "application/wasm".into())],
                body,
            },
            None => Reply::new(404, Vec::new()),
        }
    })
    .unwrap();
    (server, fetches)
}

fn hashes(wrong: Option<&str>) -> Vec<(String, String)> {
    FILTERS
        .iter()
        .map(|f| {
            let bytes = fs::read(wasm_path(f)).unwrap();
            let hash = if Some(*f) == wrong {
                sha256_hex(b"not the filter")
            } else {
                sha256_hex(&bytes)
            };
            (format!("SHA256_{}", f.to_ascii_uppercase()), hash)
        })
        .collect()
}

/// The remote-code sidecar's mesh peer: `orders`' inbound side, requiring a mesh client
/// certificate, in front of `upstream`; with the mesh's certificates (a CA, `frontend` for the
/// sidecar, `orders` for the peer) in a directory of their own.
struct OrdersPeer {
    envoy: Envoy,
    certs: ScratchDir,
}

impl OrdersPeer {
    fn start(upstream: &Upstream) -> OrdersPeer {
        let certs = ScratchDir::new("remote-wasm").unwrap();
        toolkit::certs::make_mesh(
            certs.path(),
            toolkit::certs::DEFAULT_TRUST_DOMAIN,
            "default",
            &["frontend", "orders"],
            toolkit::certs::DEFAULT_WORKLOAD_VALIDITY,
        )
        .unwrap();
        let envoy = Envoy::builder(TLS_SERVER)
            .name("orders-peer")
            .var(
                "CERTS_DIR",
                certs.path().join("orders").display().to_string(),
            )
            .var("PORT_APP", upstream.port().to_string())
            .start()
            .unwrap();
        OrdersPeer { envoy, certs }
    }

    /// The remote-code sidecar (`frontend`) calling this peer over mutual TLS, with every
    /// filter's right hash but `wrong`'s, and `template` as the configuration.
    fn sidecar(
        &self,
        template: &str,
        server: u16,
        collector: u16,
        wrong: Option<&str>,
    ) -> integration::EnvoyBuilder {
        let mut b = Envoy::builder(template)
            .var(
                "CERTS_DIR",
                self.certs.path().join("frontend").display().to_string(),
            )
            .var("PORT_WASM_SERVER", server.to_string())
            .var("PORT_ORDERS", self.envoy.port("PORT_LISTENER").to_string())
            .var("PORT_COLLECTOR", collector.to_string());
        for (name, value) in hashes(wrong) {
            b = b.var(&name, value);
        }
        b
    }
}

#[test]
fn remote_wasm_with_the_right_sha256_runs_all_three_filters() {
    let (server, fetches) = wasm_server();
    let upstream = Upstream::start().unwrap();
    let collector = Upstream::start().unwrap();
    let peer = OrdersPeer::start(&upstream);
    let envoy = peer
        .sidecar(REMOTE, server.port(), collector.port(), None)
        .start()
        .unwrap();
    assert!(fetches.load(Ordering::SeqCst) >= 3);
    let resp = http_get(envoy.port("PORT_OUTBOUND"), "/items", &[]).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    // Over mutual TLS: the sidecar verified orders' certificate, orders verified the sidecar's.
    let handshakes = |envoy: &Envoy, stat: &str| envoy.stat(stat).unwrap_or(0);
    assert!(handshakes(&envoy, "cluster.orders.ssl.handshake") >= 1);
    assert!(handshakes(&peer.envoy, "listener.inbound.ssl.handshake") >= 1);
    let seen = &upstream.requests()[0];
    // trace_propagation wrote a trace context, service_metrics its peer header.
    assert!(seen.header("traceparent").is_some(), "{seen:?}");
    assert!(seen.header("x-mesh-peer").is_some(), "{seen:?}");
    // route_retries counted the request.
    assert_eventually!(envoy
        .stats()
        .lines()
        .any(|l| l.contains("meshwasm_retry_requests_total;.rule=reads: 1")));
}

/// Envoy refuses a module whose sha256 differs: it fetches it (and retries), never loads it,
/// and says so in its log. What traffic does then is the plugin's failure policy: with the
/// shipped FAIL_OPEN it goes on without that filter; with FAIL_CLOSED every request gets 503.
#[test]
fn remote_wasm_with_a_wrong_sha256_is_refused() {
    let (server, fetches) = wasm_server();
    let upstream = Upstream::start().unwrap();
    let collector = Upstream::start().unwrap();
    let peer = OrdersPeer::start(&upstream);
    let envoy = peer
        .sidecar(
            REMOTE,
            server.port(),
            collector.port(),
            Some("route_retries"),
        )
        .start()
        .unwrap();
    let resp = http_get(envoy.port("PORT_OUTBOUND"), "/items", &[]).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let log = envoy.log();
    assert!(log.contains("Plugin route_retries failed to load"), "{log}");
    assert!(!log.contains("route_retries: configured"), "{log}");
    // The other two filters loaded and ran; route_retries never did.
    assert!(upstream.requests()[0].header("traceparent").is_some());
    assert!(
        !envoy.stats().contains("meshwasm_retry_requests_total"),
        "{}",
        envoy.stats()
    );
    // Fetched more than once per filter: the mismatch counts as a failed fetch and is retried.
    assert!(fetches.load(Ordering::SeqCst) > 3);

    let closed = REMOTE.replacen(
        "failure_policy: FAIL_OPEN",
        "failure_policy: FAIL_CLOSED",
        3,
    );
    let envoy = peer
        .sidecar(
            &closed,
            server.port(),
            collector.port(),
            Some("route_retries"),
        )
        .start()
        .unwrap();
    let before = upstream.requests().len();
    let resp = http_get(envoy.port("PORT_OUTBOUND"), "/items", &[]).unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        upstream.requests().len(),
        before,
        "a request passed the refused filter"
    );
}

// ---------------------------------------------------------------------------------------------
// examples/k8s

/// Parses and validates `config` with the filter's own configuration code (the same
/// `on_configure` path Envoy runs), by the filter's root id.
fn check_filter_config(filter: &str, config: &str) -> Result<(), String> {
    let result = match filter {
        "trace_propagation" => {
            FilterHarness::<trace_propagation::TracePropagation>::new(config).map(|_| ())
        }
        "service_metrics" => {
            FilterHarness::<service_metrics::ServiceMetrics>::new(config).map(|_| ())
        }
        "route_retries" => FilterHarness::<route_retries::RouteRetries>::new(config).map(|_| ()),
        "mesh_sidecar" => FilterHarness::<mesh_sidecar::MeshSidecar>::new(config).map(|_| ()),
        other => return Err(format!("unknown filter {other}")),
    };
    result.map_err(|e| format!("{filter}: {e}"))
}

/// The value after `key:` on a line (trimmed), for lines of the form `  key: value`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.trim_start()
        .trim_start_matches("- ")
        .strip_prefix(key)?
        .strip_prefix(':')
        .map(str::trim)
}

fn k8s_manifests() -> Vec<(String, String)> {
    let dir = workspace_root().join("examples").join("k8s");
    let mut files: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// Splits a multi-document YAML file on `---` lines.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
    });
    docs
}

#[test]
fn k8s_wasm_plugins_reference_existing_filters_with_valid_configs() {
    let mut plugins = Vec::new();
    for (file, text) in k8s_manifests() {
        for doc in documents(&text) {
            let top = |key: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            };
            assert!(
                top("apiVersion").is_some(),
                "{file}: a document without apiVersion"
            );
            let kind = top("kind").unwrap_or_else(|| panic!("{file}: a document without kind"));
            if kind != "WasmPlugin" {
                continue;
            }
            let get = |key: &str| {
                doc.lines()
                    .find_map(|l| field(l, key))
                    .unwrap_or_else(|| panic!("{file}: WasmPlugin without {key}"))
            };
            let name = get("pluginName");
            let url = get("url");
            // The module is one of ours, as built into target/filters.
            assert!(
                url.contains(&format!("/{name}:")) || url.ends_with(&format!("/{name}.wasm")),
                "{file}: {url} is not {name}"
            );
            wasm_path(name);
            let config = get("pluginConfig");
            serde_json::from_str::<serde_json::Value>(config)
                .unwrap_or_else(|e| panic!("{file}: {name}'s pluginConfig is not JSON: {e}"));
            check_filter_config(name, config).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(["CLIENT", "SERVER"].contains(&get("mode")), "{file}");
            plugins.push((
                name.to_string(),
                get("mode").to_string(),
                serde_json::from_str::<serde_json::Value>(config).unwrap(),
            ));
        }
    }
    for (filter, mode) in [
        ("trace_propagation", "CLIENT"),
        ("trace_propagation", "SERVER"),
        ("service_metrics", "CLIENT"),
        ("service_metrics", "SERVER"),
        ("route_retries", "CLIENT"),
        ("mesh_sidecar", "CLIENT"),
        ("mesh_sidecar", "SERVER"),
    ] {
        assert!(
            plugins.iter().any(|(f, m, _)| f == filter && m == mode),
            "no WasmPlugin for {filter} in {mode} mode: {plugins:?}"
        );
    }
    // The one-module plugins carry the per-filter plugins' configurations, one section each.
    let config = |filter: &str, mode: &str| {
        plugins
            .iter()
            .find(|(f, m, _)| f == filter && m == mode)
            .map(|(_, _, c)| c.clone())
    };
    for mode in ["CLIENT", "SERVER"] {
        let mut expected = serde_json::Map::new();
        for (filter, section) in [
            ("trace_propagation", "trace"),
            ("service_metrics", "metrics"),
            ("route_retries", "retries"),
        ] {
            if let Some(c) = config(filter, mode) {
                expected.insert(section.to_string(), c);
            }
        }
        assert_eq!(
            config("mesh_sidecar", mode),
            Some(serde_json::Value::Object(expected)),
            "mesh_sidecar in {mode} mode"
        );
    }
}

/// A broken config in a manifest must be caught: the check is not vacuous.
#[test]
fn k8s_config_check_catches_unknown_fields() {
    assert!(check_filter_config(
        "route_retries",
        r#"{"rules":[],"budget":{"ratio":0.2,"burst":3}}"#
    )
    .is_err_and(|e| e.contains("budget")));
    assert!(check_filter_config("service_metrics", r#"{"reporter":"sideways"}"#).is_err());
}

#[test]
fn k8s_sidecar_pod_loads_existing_filters_and_its_bootstrap_validates() {
    let (file, text) = k8s_manifests()
        .into_iter()
        .find(|(f, _)| f == "sidecar-pod.yaml")
        .unwrap();
    let docs = documents(&text);
    let config_map = docs.iter().find(|d| d.contains("kind: ConfigMap")).unwrap();
    let pod = docs.iter().find(|d| d.contains("kind: Pod")).unwrap();
    // The Pod mounts that ConfigMap.
    let cm_name = config_map.lines().find_map(|l| field(l, "name")).unwrap();
    assert!(
        pod.contains(&format!("configMap: {{ name: {cm_name} }}")),
        "{file}"
    );

    // The bootstrap: the block under `envoy.yaml: |`, dedented.
    let mut bootstrap = String::new();
    let mut inside = false;
    for line in config_map.lines() {
        if line.trim() == "envoy.yaml: |" {
            inside = true;
        } else if inside {
            bootstrap.push_str(line.strip_prefix("    ").unwrap_or(line));
            bootstrap.push('\n');
        }
    }
    let mut filters = Vec::new();
    let lines: Vec<&str> = bootstrap.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(path) = line.split("filename: ").nth(1) {
            let path = path.trim_end_matches([' ', '}']).trim();
            let name = path
                .strip_prefix("/etc/envoy/filters/")
                .and_then(|n| n.strip_suffix(".wasm"))
                .unwrap_or_else(|| panic!("{file}: unexpected wasm path {path}"));
            wasm_path(name);
            // The initContainer copies it.
            assert!(
                pod.contains(&format!("/filters/{name}.wasm")),
                "{file}: {name} not copied"
            );
            // Its configuration: the `value: '...'` above, in the same filter entry.
            let config = lines[..i]
                .iter()
                .rev()
                .find_map(|l| l.trim().strip_prefix("value: '"))
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("{file}: no configuration for {name}"))
                .replace("''", "'");
            check_filter_config(name, &config).unwrap_or_else(|e| panic!("{file}: {e}"));
            filters.push(name.to_string());
        }
    }
    // The default layout: the three policies in one module on each listener.
    assert_eq!(filters, ["mesh_sidecar", "mesh_sidecar"], "{file}");

    let rendered = bootstrap
        .replace("/etc/envoy/filters", &filters_dir().display().to_string())
        .replace("/etc/envoy/certs", &k8s_certs().display().to_string());
    let path = workspace_root()
        .join("target")
        .join("integration-tmp")
        .join(format!("k8s-envoy-{}.yaml", std::process::id()));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, rendered).unwrap();
    let out = std::process::Command::new(integration::envoy::find_envoy().unwrap())
        .args([
            "--mode",
            "validate",
            "--log-level",
            "warn",
            "--service-cluster",
            "orders",
            "--service-node",
            "orders-0",
            "-c",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let _ = fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{file}: envoy --mode validate failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `examples/k8s/sidecar-pod.yaml`'s ConfigMap and Pod, parsed.
fn sidecar_pod_manifest() -> (Value, Value) {
    let (_, text) = k8s_manifests()
        .into_iter()
        .find(|(f, _)| f == "sidecar-pod.yaml")
        .unwrap();
    let docs: Vec<Value> = documents(&text)
        .iter()
        .map(|d| serde_norway::from_str(d).unwrap())
        .collect();
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .cloned()
            .unwrap_or_else(|| panic!("sidecar-pod.yaml: no {kind}"))
    };
    (of_kind("ConfigMap"), of_kind("Pod"))
}

/// `(address, port)` of an Envoy `address: { socket_address: ... }`.
fn socket_address(address: &Value) -> (String, u64) {
    let socket = &address["socket_address"];
    let host = socket["address"].as_str().unwrap().to_string();
    (host, socket["port_value"].as_u64().unwrap())
}

/// The cluster endpoint addresses of a bootstrap that are names, not IP addresses.
fn dns_names(bootstrap: &Value) -> Vec<String> {
    let clusters = bootstrap["static_resources"]["clusters"].as_sequence();
    let mut names: Vec<String> = clusters
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["load_assignment"]["endpoints"]
                .as_sequence()
                .into_iter()
                .flatten()
        })
        .flat_map(|e| e["lb_endpoints"].as_sequence().into_iter().flatten())
        .map(|e| socket_address(&e["endpoint"]["address"]).0)
        .filter(|host| host.parse::<IpAddr>().is_err())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The port number a probe's `httpGet`/`tcpSocket`/`grpc` targets, named ports resolved through
/// the container's `ports`.
fn probe_port(container: &Value, probe: &Value) -> Option<u64> {
    let port = ["httpGet", "tcpSocket", "grpc"]
        .iter()
        .find_map(|k| probe.get(k))?
        .get("port")?;
    port.as_u64().or_else(|| {
        let name = port.as_str()?;
        container["ports"]
            .as_sequence()?
            .iter()
            .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
            .as_u64()
    })
}

/// The bootstrap with the port of the admin and of every listener replaced by a placeholder
/// (`{{PORT_ADMIN}}`, `{{PORT_<LISTENER>}}`) that the toolkit renders as port 0, and its filter
/// paths by `{{FILTERS_DIR}}`; with the placeholder of each listener by name. Only flow-style
/// `socket_address: { ..., port_value: N }` lines outside cluster endpoints are rewritten; the
/// caller checks that every listener got one.
fn with_port_placeholders(bootstrap: &str) -> (String, Vec<(String, String)>) {
    let mut owner = None;
    let mut placeholders = Vec::new();
    let mut out = String::new();
    for line in bootstrap.lines() {
        if line == "admin:" {
            owner = Some("admin".to_string());
        } else if let Some(name) = line.trim_start().strip_prefix("- name: ") {
            owner = Some(name.trim().to_string());
        }
        let mut line = line.to_string();
        let listener_port = line.trim_start().starts_with("socket_address:")
            && !line.contains("endpoint")
            && line.contains("port_value:");
        if let (true, Some(name)) = (listener_port, &owner) {
            let placeholder = format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_"));
            let (head, tail) = line.split_once("port_value:").unwrap();
            let tail = tail
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            line = format!("{head}port_value: {{{{{placeholder}}}}}{tail}");
            placeholders.push((name.clone(), placeholder));
        }
        out.push_str(&line);
        out.push('\n');
    }
    (
        out.replace("/etc/envoy/filters", "{{FILTERS_DIR}}")
            .replace("/etc/envoy/certs", "{{CERTS_DIR}}"),
        placeholders,
    )
}

/// The Secret the sidecar Pod mounts at /etc/envoy/certs: the SDS files of a workload `orders`
/// in namespace `shop`, made by the project's tooling in a temp dir.
fn k8s_certs() -> std::path::PathBuf {
    let dir = workspace_root()
        .join("target")
        .join("integration-tmp")
        .join(format!("k8s-certs-{}", std::process::id()));
    toolkit::certs::one_workload(&dir, "shop", "orders").unwrap()
}

/// The kubelet probes the pod IP: the Pod's readiness probe must target a listener of the
/// sidecar's bootstrap that listens beyond loopback, never the admin (which stays on loopback),
/// and that listener, run in a real Envoy from the ConfigMap's bootstrap, answers the probe 200.
#[test]
fn k8s_sidecar_pod_turns_ready_on_a_listener_the_kubelet_reaches() {
    let (config_map, pod) = sidecar_pod_manifest();
    let bootstrap_text = config_map["data"]["envoy.yaml"].as_str().unwrap();
    let bootstrap: Value = serde_norway::from_str(bootstrap_text).unwrap();
    let (admin_host, admin_port) = socket_address(&bootstrap["admin"]["address"]);
    assert!(
        is_loopback(&admin_host),
        "admin listens on {admin_host}: it must stay on loopback"
    );
    let listeners: Vec<(String, String, u64)> = bootstrap["static_resources"]["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| {
            let (host, port) = socket_address(&l["address"]);
            (l["name"].as_str().unwrap().to_string(), host, port)
        })
        .collect();

    // No probe of any container targets the admin port.
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    for c in containers {
        for kind in ["readinessProbe", "livenessProbe", "startupProbe"] {
            if let Some(probe) = c.get(kind) {
                assert_ne!(
                    probe_port(c, probe),
                    Some(admin_port),
                    "{}'s {kind} targets the admin port, which listens on {admin_host} only",
                    c["name"].as_str().unwrap_or("?")
                );
            }
        }
    }
    // The sidecar's readiness probe targets a listener reachable on the pod IP.
    let envoy_container = containers
        .iter()
        .find(|c| c["image"].as_str().is_some_and(|i| i.contains("envoy")))
        .unwrap();
    let probe = &envoy_container["readinessProbe"];
    let path = probe["httpGet"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("the envoy container has no httpGet readinessProbe: {probe:?}"));
    let port = probe_port(envoy_container, probe).unwrap();
    let (listener, host, _) = listeners
        .iter()
        .find(|(_, _, p)| *p == port)
        .unwrap_or_else(|| panic!("readiness probe port {port} is no listener's: {listeners:?}"));
    assert!(
        !is_loopback(host),
        "listener {listener} ({host}:{port}) is not reachable on the pod IP"
    );
    assert!(
        envoy_container["ports"]
            .as_sequence()
            .is_some_and(|ps| ps.iter().any(|p| p["containerPort"].as_u64() == Some(port))),
        "the envoy container does not declare port {port}"
    );

    // The bootstrap, on ports Envoy chooses: the probe's path answers 200 on that listener.
    // The peers' and the collector's DNS names resolve only inside a cluster: give them a
    // loopback address instead, so that the test sends no DNS query off this machine (nothing
    // connects to them: no traffic goes through the outbound listener).
    let mut local = bootstrap_text.to_string();
    for host in dns_names(&bootstrap) {
        local = local.replace(&format!("address: {host},"), "address: 127.0.0.1,");
    }
    assert_eq!(
        dns_names(&serde_norway::from_str(&local).unwrap()),
        Vec::<String>::new()
    );
    // The listeners the pod exposes on 0.0.0.0 bind loopback here: nothing the test starts is
    // reachable from outside this machine (the manifest's addresses were checked above).
    let local = local.replace("address: 0.0.0.0,", "address: 127.0.0.1,");
    let (template, placeholders) = with_port_placeholders(&local);
    assert_eq!(
        placeholders.len(),
        listeners.len() + 1,
        "not every listener's port was replaced: {placeholders:?}"
    );
    let envoy = Envoy::builder(&template)
        .var("CERTS_DIR", k8s_certs().display().to_string())
        .arg("--service-cluster")
        .arg("orders")
        .arg("--service-node")
        .arg("orders-0")
        .start()
        .unwrap();
    let (_, readiness) = placeholders.iter().find(|(n, _)| n == listener).unwrap();
    let readiness = envoy.port(readiness);
    let resp = http_get(readiness, path, &[]).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    // Only the probe: nothing of the admin is reachable through it.
    let resp = http_get(readiness, "/stats", &[]).unwrap();
    assert_eq!(resp.status, 404, "{resp:?}");
    // Not ready once Envoy fails its health checks (as when draining).
    assert_eq!(envoy.admin_post("/healthcheck/fail").unwrap().status, 200);
    assert_eventually!(http_get(readiness, path, &[]).is_ok_and(|r| r.status == 503));
}

/// Every document of every manifest in examples/k8s, labelled `<file>#<index>`.
fn k8s_documents() -> Vec<(String, String)> {
    k8s_manifests()
        .into_iter()
        .flat_map(|(file, text)| {
            documents(&text)
                .into_iter()
                .enumerate()
                .map(move |(i, doc)| (format!("{file}#{i}"), doc))
        })
        .collect()
}

/// Every manifest of examples/k8s is valid against the schema of its kind: core kinds with
/// kubernetes-validate `--strict` (Kubernetes' OpenAPI schemas, unknown fields rejected), Istio's
/// with the CRD schemas of `@kubernetes-models/istio`; a kind neither knows fails the test.
#[test]
fn k8s_manifests_pass_kubernetes_and_istio_schemas() {
    let docs = k8s_documents();
    assert!(docs.len() >= 11, "{docs:?}");
    match k8s_schemas::validate(&docs) {
        Ok(passed) => passed.iter().for_each(|p| println!("{p}")),
        Err(problems) => panic!("examples/k8s:\n{problems}"),
    }
}

/// The schema check is not vacuous: each validator rejects a broken copy of a shipped manifest,
/// and a kind that neither has a schema for is refused rather than skipped.
#[test]
fn k8s_schema_validation_rejects_broken_and_unknown_documents() {
    let docs = k8s_documents();
    let doc = |label: &str| docs.iter().find(|(l, _)| l == label).unwrap().1.clone();
    let broken = |label: &str, from: &str, to: &str| {
        let text = doc(label);
        assert!(text.contains(from), "{label} has no {from:?}");
        (format!("{label} with {to}"), text.replacen(from, to, 1))
    };
    let cases = [
        // A wrong type and an unknown field (--strict) in the Pod.
        broken("sidecar-pod.yaml#1", "containerPort: 8080", "containerPort: eighty"),
        broken("sidecar-pod.yaml#1", "readinessProbe:", "readinessProbes:"),
        // A wrong type in a WasmPlugin, a value outside an enum in an EnvoyFilter.
        broken("wasmplugin-route-retries.yaml#0", "priority: 10", "priority: high"),
        broken("wasmplugin-route-retries.yaml#1", "applyTo: VIRTUAL_HOST", "applyTo: HOST"),
        // Kinds without a schema in either: a typo, and a CRD of another project.
        broken("sidecar-pod.yaml#1", "kind: Pod", "kind: Pdo"),
        (
            "an HTTPRoute".to_string(),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: { name: orders }\n"
                .to_string(),
        ),
    ];
    let problems = k8s_schemas::validate(&cases).unwrap_err();
    println!("{problems}");
    for (label, expected) in [
        (&cases[0].0, "rejected by kubernetes-validate"),
        (&cases[1].0, "rejected by kubernetes-validate"),
        (&cases[2].0, "rejected by validate-istio.mjs"),
        (&cases[3].0, "rejected by validate-istio.mjs"),
        (&cases[4].0, "no validator has a schema"),
        (&cases[5].0, "no validator has a schema"),
    ] {
        assert!(
            problems.contains(&format!("{label}: {expected}")),
            "{label}: not {expected}:\n{problems}"
        );
    }
    for needle in [
        "is not of type 'integer'",
        "'readinessProbes' was unexpected",
        "must be integer",
        "allowed values",
    ] {
        assert!(problems.contains(needle), "no {needle:?} in:\n{problems}");
    }
}

// ---------------------------------------------------------------------------------------------
// The one-module sidecars, derived from the three-module ones (toolkit::derive)

/// `(root_id, configuration)` of every wasm filter in a config, in order.
fn wasm_filter_configs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut root = None;
    for line in text.lines() {
        if let Some(r) = field(line, "root_id") {
            root = Some(r.to_string());
        } else if let Some(v) = field(line, "value") {
            if let Some(r) = root.take() {
                let json = v
                    .trim_start_matches('\'')
                    .trim_end_matches('\'')
                    .replace("''", "'");
                out.push((r, json));
            }
        }
    }
    out
}

/// Every derived config (the one-module sidecars, `toolkit::derive::DERIVED`) is what its
/// three-module original gives today, so a listener, route or cluster cannot drift between them.
#[test]
fn derived_configs_are_regenerated_from_their_originals() {
    let root = toolkit::workspace_root();
    let mut stale = Vec::new();
    for d in toolkit::derive::DERIVED {
        let expected = d.expected(&root).unwrap_or_else(|e| panic!("{e}"));
        let committed = fs::read_to_string(root.join(d.derived)).unwrap_or_default();
        if committed == expected {
            continue;
        }
        let (mut a, mut b) = (committed.lines(), expected.lines());
        let mut line = 1;
        let (committed_line, generated_line) = loop {
            match (a.next(), b.next()) {
                (x, y) if x != y => break (x.unwrap_or("<end>"), y.unwrap_or("<end>")),
                (None, None) => break ("<end>", "<end: a newline differs>"),
                _ => line += 1,
            }
        };
        stale.push(format!(
            "{} (from {}), line {line}:\n  committed: {committed_line}\n  generated: {generated_line}",
            d.derived, d.source
        ));
    }
    assert!(
        stale.is_empty(),
        "derived configs differ from what their originals give: run `{}` and commit them\n{}",
        toolkit::derive::COMMAND,
        stale.join("\n")
    );
}

/// The shipped one-module sidecar's configurations pass mesh_sidecar's own checks.
#[test]
fn the_one_module_sidecars_configs_pass_mesh_sidecars_checks() {
    let text = fs::read_to_string(
        workspace_root()
            .join("envoy-configs")
            .join("sidecar-one-module.yaml"),
    )
    .unwrap();
    let configs = wasm_filter_configs(&text);
    let roots: Vec<&str> = configs.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roots, ["mesh_sidecar", "mesh_sidecar"], "{configs:?}");
    for (_, json) in &configs {
        check_filter_config("mesh_sidecar", json).unwrap();
    }
    assert!(
        check_filter_config("mesh_sidecar", r#"{"retries":{"rules":[{}]}}"#)
            .is_err_and(|e| e.contains("retries.rules[0]"))
    );
}
