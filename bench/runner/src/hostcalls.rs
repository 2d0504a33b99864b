//! Hostcalls per request per filter, counted on the SDK's test host: [`CountingHost`] records
//! every call (each is one proxy-wasm hostcall in Envoy, see `sdk/src/abi.rs`) and delegates
//! to [`TestHost`], with the filter's `RootFilter`/`HttpFilter` driven through one request the
//! way Envoy drives it (request headers, response headers, log). The request, response and
//! properties are what Envoy presents for the bench's request; the filter configurations and
//! the VMs' environments are read from the same `bench/configs/filters/*.yaml` the scenarios
//! load.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use meshwasm::filter::{HttpFilter, RootFilter};
use meshwasm::host::{BufferKind, MapKind};
use meshwasm::properties;
use meshwasm::testing::{CountingHost, HostCall, TestHost};

use crate::Result;

/// The `traceparent` every bench request carries.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The bench request's path.
pub const PATH: &str = "/orders/7";

/// Hostcalls of one steady-state request through one filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// The filter (scenario key).
    pub filter: String,
    /// Calls in `new_http` + `on_request_headers`.
    pub request: u64,
    /// Calls in `on_response_headers`.
    pub response: u64,
    /// Calls in `on_log`.
    pub log: u64,
    /// Calls by hostcall and argument (`proxy_get_property xds.cluster_name`), whole request.
    pub detail: BTreeMap<String, u64>,
}

impl Counts {
    /// All calls of the request.
    pub fn total(&self) -> u64 {
        self.request + self.response + self.log
    }
}

/// A call's key in [`Counts::detail`] and BENCHMARKS.md: the full hostcall name, then the map
/// by its short name and the argument (`proxy_get_header_map_value request traceparent`).
fn key(call: &HostCall) -> String {
    let mut key = format!("proxy_{}", call.name);
    if let Some(map) = call.map {
        key.push(' ');
        key.push_str(map_name(map));
    }
    if let Some(arg) = &call.arg {
        key.push(' ');
        key.push_str(arg);
    }
    key
}

fn map_name(map: MapKind) -> &'static str {
    match map {
        MapKind::RequestHeaders => "request",
        MapKind::RequestTrailers => "request-trailers",
        MapKind::ResponseHeaders => "response",
        MapKind::ResponseTrailers => "response-trailers",
        MapKind::CalloutResponseHeaders => "callout",
        MapKind::CalloutResponseTrailers => "callout-trailers",
    }
}

/// A fresh test host with the bench node's identity (bench/configs/sidecar.yaml).
fn node_host() -> TestHost {
    let host = TestHost::new();
    host.set_vm_property("xds.node.id", b"frontend-5c2a".to_vec());
    host.set_vm_property("xds.node.cluster", b"frontend".to_vec());
    host.set_vm_property("xds.node.locality.region", b"eu-west-1".to_vec());
    host.set_vm_property("xds.node.locality.zone", b"eu-west-1a".to_vec());
    host.set_vm_property("xds.node.metadata.VERSION", b"v1".to_vec());
    host
}

/// Scripts a stream as Envoy presents the bench request to the first filter.
fn script_request(stream: &TestHost) {
    stream.set_map(
        MapKind::RequestHeaders,
        &[
            (":authority", "127.0.0.1:20001"),
            (":path", PATH),
            (":method", "GET"),
            (":scheme", "http"),
            ("traceparent", TRACEPARENT),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "5b0e4e35-6d2c-4a4e-9f3e-0d7a7a2c2f10"),
        ],
    );
    for (path, value) in [
        ("request.path", PATH),
        ("request.method", "GET"),
        ("request.host", "127.0.0.1:20001"),
        ("request.protocol", "HTTP/1.1"),
        ("xds.route_name", "orders"),
        ("xds.cluster_name", "upstream"),
        ("source.address", "127.0.0.1:40000"),
        ("destination.address", "127.0.0.1:20001"),
        ("upstream.address", "127.0.0.1:20002"),
    ] {
        stream.set_property_str(path, value);
    }
}

/// Scripts the upstream's answer and the end-of-stream attributes.
fn script_response(stream: &TestHost) {
    stream.set_map(
        MapKind::ResponseHeaders,
        &[
            (":status", "200"),
            ("content-type", "text/plain"),
            ("content-length", "2"),
            ("x-envoy-upstream-service-time", "0"),
            ("x-envoy-attempt-count", "1"),
        ],
    );
    stream.set_property_int("response.code", 200);
    stream.set_stream_property("response.flags", properties::encode_u64(0));
    stream.set_stream_property(
        "request.duration",
        properties::encode_duration(Duration::from_micros(350)),
    );
    stream.set_property_int("request.size", 0);
    stream.set_property_int("request.total_size", 180);
    stream.set_property_int("response.size", 2);
    stream.set_property_int("response.total_size", 140);
}

/// Configures `F` from a snippet's configuration and VM environment and counts the hostcalls of
/// the `measured` requests that follow one warm-up request (which defines the metric series).
fn count<F: RootFilter>(name: &str, (config, env): &(String, VmEnv)) -> Result<Counts> {
    let host = node_host();
    for (k, v) in env {
        host.set_env(k, v);
    }
    host.set_buffer_bytes(BufferKind::PluginConfiguration, config.as_bytes());
    let root = meshwasm::filter::configure::<F>(config.as_bytes(), &host)
        .map_err(|e| format!("{name}: configuration refused: {e}"))?;
    let measured = 10u64;
    let mut counts = Counts {
        filter: name.to_string(),
        ..Counts::default()
    };
    for i in 0..=measured {
        let stream = host.new_stream();
        script_request(&stream);
        let c = CountingHost::with_names(&stream, key);
        let mut http = root.new_http(&c);
        http.on_request_headers(&root, &c, true);
        let request = c.take();
        script_response(&stream);
        http.on_response_headers(&root, &c, true);
        let response = c.take();
        http.on_log(&root, &c);
        let log = c.take();
        if i == 0 {
            continue;
        }
        counts.request += request.values().sum::<u64>();
        counts.response += response.values().sum::<u64>();
        counts.log += log.values().sum::<u64>();
        for (call, n) in request.into_iter().chain(response).chain(log) {
            *counts.detail.entry(call).or_default() += n;
        }
    }
    counts.request /= measured;
    counts.response /= measured;
    counts.log /= measured;
    for n in counts.detail.values_mut() {
        *n /= measured;
    }
    Ok(counts)
}

/// The bare proxy-wasm filter's calls, through its own `Headers` seam.
fn count_bare() -> Counts {
    struct Map(Vec<(String, String)>, RefCell<BTreeMap<String, u64>>);
    impl bare_trace::Headers for Map {
        fn get(&self, name: &str) -> Option<String> {
            *self
                .1
                .borrow_mut()
                .entry(format!("proxy_get_header_map_value request {name}"))
                .or_default() += 1;
            self.0
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
        fn set(&mut self, name: &str, value: &str) {
            *self
                .1
                .borrow_mut()
                .entry(format!("proxy_replace_header_map_value request {name}"))
                .or_default() += 1;
            self.0.retain(|(k, _)| k != name);
            self.0.push((name.to_string(), value.to_string()));
        }
    }
    let mut map = Map(
        vec![("traceparent".to_string(), TRACEPARENT.to_string())],
        RefCell::new(BTreeMap::new()),
    );
    bare_trace::propagate(&mut map, &mut bare_trace::Rng::new(1));
    let detail = map.1.into_inner();
    Counts {
        filter: "bare".to_string(),
        request: detail.values().sum(),
        response: 0,
        log: 0,
        detail,
    }
}

/// The JSON configuration in a filter snippet under `bench/configs/filters/`: the
/// single-quoted `value:` of its `configuration`.
pub fn snippet_config(snippet: &str) -> Option<String> {
    snippet.lines().find_map(|line| {
        let value = line.trim().strip_prefix("value: '")?.strip_suffix('\'')?;
        Some(value.replace("''", "'"))
    })
}

/// A VM's environment variables, in order: (name, value).
pub type VmEnv = Vec<(String, String)>;

/// The VM's environment in a filter snippet: its `vm_config.environment_variables.key_values`
/// (the bench sets the variables inline, the mesh signing key among them), in file order.
pub fn snippet_env(snippet: &str) -> Result<VmEnv> {
    let doc: serde_norway::Value =
        serde_norway::from_str(snippet).map_err(|e| format!("snippet is not YAML: {e}"))?;
    let values =
        &doc[0]["typed_config"]["config"]["vm_config"]["environment_variables"]["key_values"];
    let Some(map) = values.as_mapping() else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| match (k.as_str(), v.as_str()) {
            (Some(k), Some(v)) => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("key_values: {k:?}: {v:?} is not a string pair")),
        })
        .collect()
}

/// A filter snippet's configuration (JSON; `None` for a filter configured with nothing) and VM
/// environment.
pub fn read_snippet(path: &Path) -> Result<(Option<String>, VmEnv)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let env = snippet_env(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((snippet_config(&text), env))
}

/// Counts every SDK filter of the bench (with the configs in `filters_dir`) and the bare one.
pub fn count_all(filters_dir: &Path) -> Result<Vec<Counts>> {
    let config = |file: &str| -> Result<(String, VmEnv)> {
        let path = filters_dir.join(file);
        let (config, env) = read_snippet(&path)?;
        let config = config.ok_or_else(|| format!("no `value: '...'` in {}", path.display()))?;
        Ok((config, env))
    };
    Ok(vec![
        count::<trace_propagation::TracePropagation>("trace", &config("trace_propagation.yaml")?)?,
        count::<service_metrics::ServiceMetrics>("metrics", &config("service_metrics.yaml")?)?,
        count::<route_retries::RouteRetries>("retries", &config("route_retries.yaml")?)?,
        count::<mesh_sidecar::MeshSidecar>("mesh", &config("mesh_sidecar.yaml")?)?,
        count::<trace_propagation::TracePropagation>("trace-core", &config("trace_core.yaml")?)?,
        count_bare(),
        count::<add_headers::AddHeaders>("sdk-noop", &config("sdk_noop.yaml")?)?,
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_json_of_a_snippet() {
        let snippet = "      configuration:\n        value: '{\"a\":\"it''s\"}'\n";
        assert_eq!(snippet_config(snippet).as_deref(), Some("{\"a\":\"it's\"}"));
        assert_eq!(snippet_config("name: x"), None);
    }

    #[test]
    fn reads_the_vm_environment_of_a_snippet() {
        let dir = toolkit::workspace_root().join("bench/configs/filters");
        let (config, env) = read_snippet(&dir.join("service_metrics.yaml")).unwrap();
        let config = config.unwrap();
        assert!(config.contains(r#""env":"MESH_SIGNING_KEY""#), "{config}");
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["MESH_VERSION", "MESH_SIGNING_KEY"]);
        assert!(env[1].1.starts_with("base64:"));
        assert_eq!(snippet_env("- name: x\n").unwrap(), Vec::new());
    }

    /// The one-module scenario runs exactly the three filters' configurations.
    #[test]
    fn the_mesh_snippet_holds_the_three_configs() {
        let dir = toolkit::workspace_root().join("bench/configs/filters");
        let config = |f: &str| snippet_config(&std::fs::read_to_string(dir.join(f)).unwrap());
        let (trace, metrics, retries) = (
            config("trace_propagation.yaml").unwrap(),
            config("service_metrics.yaml").unwrap(),
            config("route_retries.yaml").unwrap(),
        );
        assert_eq!(
            config("mesh_sidecar.yaml").unwrap(),
            format!(r#"{{"trace":{trace},"metrics":{metrics},"retries":{retries}}}"#)
        );
    }

    #[test]
    fn counts_every_bench_filter() -> Result<()> {
        let dir = toolkit::workspace_root().join("bench/configs/filters");
        let counts = count_all(&dir)?;
        assert_eq!(counts.len(), 7);
        for c in &counts {
            assert!(c.total() > 0, "{c:?}");
            assert_eq!(c.total(), c.detail.values().sum::<u64>(), "{c:?}");
        }
        let bare = &counts[5];
        assert_eq!((bare.request, bare.total()), (6, 6));
        // One module reads the request headers once for the three policies, and each
        // property once per phase: fewer calls than the three filters together.
        let total = |name: &str| counts.iter().find(|c| c.filter == name).unwrap().total();
        assert!(
            total("mesh") < total("trace") + total("metrics") + total("retries"),
            "{counts:#?}"
        );
        let mesh = counts.iter().find(|c| c.filter == "mesh").unwrap();
        assert_eq!(
            mesh.detail
                .get("proxy_get_header_map_pairs request")
                .copied(),
            Some(1),
            "{mesh:?}"
        );
        Ok(())
    }
}
