//! The shipped configs beyond `envoy --mode validate`: the remote-code sidecar variant loads the
//! filters from an HTTP server with their sha256 and refuses a wrong hash; and the manifests in
//! examples/k8s reference filters that exist, with configurations the filters themselves accept;
//! the one-module sidecars are what `cargo xtask derive-configs` makes of the three-module ones,
//! with configurations mesh_sidecar accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use integration::upstream::{Reply, Server, Upstream};
use integration::{assert_eventually, filters_dir, http_get, wasm_path, workspace_root, Envoy};
use meshwasm::testing::FilterHarness;
use sha2::{Digest, Sha256};

const REMOTE: &str = include_str!("../../envoy-configs/sidecar-remote-wasm.yaml");
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

fn builder(
    server: u16,
    upstream: u16,
    collector: u16,
    wrong: Option<&str>,
) -> integration::EnvoyBuilder {
    let mut b = Envoy::builder(REMOTE)
        .var("PORT_WASM_SERVER", server.to_string())
        .var("PORT_UPSTREAM", upstream.to_string())
        .var("PORT_COLLECTOR", collector.to_string());
    for (name, value) in hashes(wrong) {
        b = b.var(&name, value);
    }
    b
}

#[test]
fn remote_wasm_with_the_right_sha256_runs_all_three_filters() {
    let (server, fetches) = wasm_server();
    let upstream = Upstream::start().unwrap();
    let collector = Upstream::start().unwrap();
    let envoy = builder(server.port(), upstream.port(), collector.port(), None)
        .start()
        .unwrap();
    assert!(fetches.load(Ordering::SeqCst) >= 3);
    let resp = http_get(envoy.port("PORT_OUTBOUND"), "/items", &[]).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
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
    let envoy = builder(
        server.port(),
        upstream.port(),
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
    let mut b = Envoy::builder(&closed)
        .var("PORT_WASM_SERVER", server.port().to_string())
        .var("PORT_UPSTREAM", upstream.port().to_string())
        .var("PORT_COLLECTOR", collector.port().to_string());
    for (name, value) in hashes(Some("route_retries")) {
        b = b.var(&name, value);
    }
    let envoy = b.start().unwrap();
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
    assert_eq!(filters.len(), 5, "{file}: {filters:?}");

    let rendered = bootstrap.replace("/etc/envoy/filters", &filters_dir().display().to_string());
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
