//! Shared by the reliability tests: one sidecar Envoy with all three filters on an outbound and an
//! inbound listener (`integration/configs/all_filters.yaml`), statically or served by file-based
//! LDS, with its upstream, app and collector; raw-socket requests for malformed bytes; and the
//! stats checks that show a filter counted something and that no wasm VM failed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use integration::upstream::{Reply, Upstream};
use integration::{filters_dir, render, wasm_path, yaml_single_quoted, Envoy};

/// The sidecar template.
pub const TEMPLATE: &str = include_str!("../../configs/all_filters.yaml");

/// The same sidecar with the three policies in one module (filters/mesh-sidecar).
pub const ONE_MODULE_TEMPLATE: &str = include_str!("../../configs/mesh_sidecar.yaml");

/// How the three policies are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Three wasm filters per listener, three VMs per worker (the shipped default).
    ThreeModules,
    /// One `mesh_sidecar` filter per listener running all three.
    OneModule,
}

impl Layout {
    /// The Envoy template of this layout.
    pub fn template(self) -> &'static str {
        match self {
            Layout::ThreeModules => TEMPLATE,
            Layout::OneModule => ONE_MODULE_TEMPLATE,
        }
    }
}

/// The mesh signing key of the sidecars (32 bytes), in their VMs' environment as
/// `MESH_SIGNING_KEY` (`{{SIGNING_KEY}}` of the template).
pub const KEY: &str = "hex:6d6573682d746573742d6b65792d3332627974652d6c6f6e672d7365637265";

/// The `signing_keys` field of a service_metrics configuration naming the sidecars' key.
pub const SIGNING_KEYS: &str = r#""signing_keys":[{"id":"mesh-1","env":"MESH_SIGNING_KEY"}]"#;

/// The six filter configurations (JSON) and the failure policy of every plugin.
#[derive(Debug, Clone)]
pub struct Configs {
    /// trace_propagation on the outbound listener.
    pub trace_out: String,
    /// service_metrics on the outbound listener.
    pub metrics_out: String,
    /// route_retries on the outbound listener.
    pub retries_out: String,
    /// trace_propagation on the inbound listener.
    pub trace_in: String,
    /// service_metrics on the inbound listener.
    pub metrics_in: String,
    /// route_retries on the inbound listener.
    pub retries_in: String,
    /// `FAIL_OPEN`, `FAIL_CLOSED`, ...
    pub failure_policy: String,
}

impl Default for Configs {
    fn default() -> Self {
        let export = r#""export":{"cluster":"collector","batch_size":50,"flush_interval_ms":100,"timeout_ms":300,"max_buffered_spans":1000}"#;
        Configs {
            trace_out: format!(r#"{{"direction":"outbound","sampling_rate":1.0,{export}}}"#),
            metrics_out: format!(r#"{{"reporter":"source",{SIGNING_KEYS}}}"#),
            retries_out: r#"{"rules":[{"name":"reads","match":{"methods":["GET","HEAD"]},
                "policy":{"retry_on":["5xx","reset","connect-failure"],"num_retries":2,"per_try_timeout_ms":1000,"timeout_ms":4000}}],
                "budget":{"ratio":0.2,"min_retries_per_second":100,"window_seconds":10}}"#
                .to_string(),
            trace_in: format!(r#"{{"direction":"inbound","sampling_rate":1.0,{export}}}"#),
            metrics_in: format!(r#"{{"reporter":"destination",{SIGNING_KEYS}}}"#),
            retries_in: "{}".to_string(),
            failure_policy: "FAIL_OPEN".to_string(),
        }
    }
}

impl Configs {
    /// The template placeholders these configs fill in.
    pub fn vars(&self) -> Vec<(String, String)> {
        let q = |s: &str| yaml_single_quoted(&s.replace('\n', " "));
        vec![
            ("TRACE_OUT".into(), q(&self.trace_out)),
            ("METRICS_OUT".into(), q(&self.metrics_out)),
            ("RETRIES_OUT".into(), q(&self.retries_out)),
            ("TRACE_IN".into(), q(&self.trace_in)),
            ("METRICS_IN".into(), q(&self.metrics_in)),
            ("RETRIES_IN".into(), q(&self.retries_in)),
            ("FAILURE_POLICY".into(), self.failure_policy.clone()),
            ("SIGNING_KEY".into(), KEY.to_string()),
        ]
    }
}

/// A running sidecar and the test servers around it.
pub struct Sidecar {
    /// The Envoy.
    pub envoy: Envoy,
    /// Behind the outbound listener.
    pub upstream: Upstream,
    /// Behind the inbound listener.
    pub app: Upstream,
    /// The span collector (answers 202).
    pub collector: Upstream,
    /// The watched LDS directory, when the listeners come from LDS.
    pub lds: Option<Lds>,
}

impl Sidecar {
    /// The outbound listener's port.
    pub fn outbound(&self) -> u16 {
        self.listener("outbound")
    }

    /// The inbound listener's port.
    pub fn inbound(&self) -> u16 {
        self.listener("inbound")
    }

    /// The port of listener `name` (static or from LDS), as Envoy bound it.
    fn listener(&self, name: &str) -> u16 {
        match self.envoy.listener(name) {
            Some(port) => port,
            None => panic!("no listener {name}: {:?}", self.envoy.listeners()),
        }
    }
}

/// Makes sure the filters are built (a missing one fails the test).
fn check_built() {
    for f in [
        "trace-propagation",
        "service-metrics",
        "route-retries",
        "mesh-sidecar",
    ] {
        wasm_path(f);
    }
}

/// Starts the sidecar with static listeners.
pub fn start(configs: &Configs) -> Sidecar {
    start_with(configs, None, 2)
}

/// Starts the sidecar with `workers` worker threads and an optional collector port (default: a
/// collector in the test answering 202).
pub fn start_with(configs: &Configs, collector_port: Option<u16>, workers: u32) -> Sidecar {
    start_layout(configs, collector_port, workers, Layout::ThreeModules)
}

/// Starts the sidecar in `layout`.
pub fn start_layout(
    configs: &Configs,
    collector_port: Option<u16>,
    workers: u32,
    layout: Layout,
) -> Sidecar {
    check_built();
    let upstream = Upstream::start().unwrap();
    let app = Upstream::start().unwrap();
    let collector = Upstream::with_reply(Reply {
        status: 202,
        ..Reply::default()
    })
    .unwrap();
    let mut builder = Envoy::builder(layout.template())
        .concurrency(workers)
        .var("PORT_UPSTREAM", upstream.port().to_string())
        .var("PORT_APP", app.port().to_string())
        .var(
            "PORT_COLLECTOR",
            collector_port.unwrap_or(collector.port()).to_string(),
        );
    for (k, v) in configs.vars() {
        builder = builder.var(&k, v);
    }
    let envoy = builder.start().unwrap();
    Sidecar {
        envoy,
        upstream,
        app,
        collector,
        lds: None,
    }
}

/// The listeners of `template` (the block between `  listeners:` and `  clusters:`), as an LDS
/// resource file: `resources:` with each listener typed.
pub fn listeners_resource(rendered: &str) -> String {
    let start = rendered
        .find("\n  listeners:\n")
        .expect("template has `  listeners:`")
        + "\n  listeners:\n".len();
    let end = rendered
        .find("\n  clusters:\n")
        .expect("template has `  clusters:`");
    let mut out = String::from("resources:\n");
    for line in rendered[start..end].lines() {
        if let Some(rest) = line.strip_prefix("  - name: ") {
            out.push_str(
                "- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: ",
            );
            out.push_str(rest);
        } else {
            out.push_str(line.strip_prefix("  ").unwrap_or(line));
        }
        out.push('\n');
    }
    out
}

/// The template with its static listeners replaced by file-based LDS from `{{LDS_DIR}}`.
pub fn lds_bootstrap() -> String {
    let start = TEMPLATE.find("\n  listeners:\n").unwrap() + 1;
    let end = TEMPLATE.find("\n  clusters:\n").unwrap() + 1;
    format!(
        "{}{}dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    \
         path_config_source:\n      path: '{{{{LDS_DIR}}}}/listeners.yaml'\n      \
         watched_directory: {{ path: '{{{{LDS_DIR}}}}' }}\n",
        &TEMPLATE[..start],
        &TEMPLATE[end..]
    )
}

/// The LDS directory of a sidecar and the values its listener template is rendered with.
pub struct Lds {
    /// The watched directory.
    pub dir: PathBuf,
    vars: Vec<(String, String)>,
    generation: u32,
}

impl Lds {
    /// Renders the listeners with `configs` and moves the file over `listeners.yaml` (a rename in
    /// the watched directory, as Envoy expects).
    pub fn push(&mut self, configs: &Configs) {
        let mut vars = self.vars.clone();
        vars.retain(|(k, _)| !configs.vars().iter().any(|(n, _)| n == k));
        vars.extend(configs.vars());
        let rendered = render(TEMPLATE, &vars).unwrap();
        self.generation += 1;
        let tmp = self
            .dir
            .join(format!(".listeners-{}.yaml", self.generation));
        fs::write(&tmp, listeners_resource(&rendered)).unwrap();
        fs::rename(&tmp, self.dir.join("listeners.yaml")).unwrap();
    }
}

/// Starts the sidecar with its listeners from a watched LDS file.
pub fn start_lds(configs: &Configs) -> Sidecar {
    check_built();
    let upstream = Upstream::start().unwrap();
    let app = Upstream::start().unwrap();
    let collector = Upstream::with_reply(Reply {
        status: 202,
        ..Reply::default()
    })
    .unwrap();
    static LDS_DIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = LDS_DIRS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = integration::workspace_root()
        .join("target")
        .join("integration-tmp")
        .join(format!("lds-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    // The listeners bind port 0 (Envoy chooses; the test reads the ports back by listener name),
    // and keep their sockets across updates of their filter chains.
    let mut vars: Vec<(String, String)> = vec![
        ("PORT_ADMIN".into(), "0".into()),
        ("PORT_LISTENER".into(), "0".into()),
        ("PORT_INBOUND".into(), "0".into()),
        ("PORT_UPSTREAM".into(), upstream.port().to_string()),
        ("PORT_APP".into(), app.port().to_string()),
        ("PORT_COLLECTOR".into(), collector.port().to_string()),
        ("FILTERS_DIR".into(), filters_dir().display().to_string()),
        ("LDS_DIR".into(), dir.display().to_string()),
    ];
    let mut lds = Lds {
        dir,
        vars: vars.clone(),
        generation: 0,
    };
    lds.push(configs);
    vars.extend(configs.vars());
    // The bootstrap's admin binds port 0 too: Envoy reports where.
    vars.retain(|(k, _)| k != "PORT_ADMIN");
    let mut builder = Envoy::builder(&lds_bootstrap());
    for (k, v) in vars {
        builder = builder.var(&k, v);
    }
    let envoy = builder.start().unwrap();
    Sidecar {
        envoy,
        upstream,
        app,
        collector,
        lds: Some(lds),
    }
}

impl Drop for Lds {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sum of every stat whose name contains all of `parts`.
pub fn stat_sum(stats: &str, parts: &[&str]) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.rsplit_once(": "))
        .filter(|(n, _)| parts.iter().all(|p| n.contains(p)))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The wasm runtime's VM stats (`wasm.envoy.wasm.runtime.v8.*`, `wasm_vm.*`), sorted.
pub fn vm_stats(stats: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = stats
        .lines()
        .filter(|l| l.starts_with("wasm.") || l.starts_with("wasm_vm."))
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(": ")?;
            Some((n.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// The wasm VMs Envoy has active, after checking that none failed or crashed.
pub fn active_vms(envoy: &Envoy) -> u64 {
    let stats = envoy.stats();
    let vm = vm_stats(&stats);
    assert!(!vm.is_empty(), "no wasm VM stats in /stats:\n{stats}");
    let failed: u64 = vm
        .iter()
        .filter(|(n, _)| n.contains("fail") || n.contains("crash"))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(failed, 0, "a wasm VM failed: {vm:?}");
    vm.iter()
        .filter(|(n, _)| n.ends_with(".active"))
        .map(|(_, v)| *v)
        .sum()
}

/// Sends `bytes` as they are to `127.0.0.1:port` and reads until the peer closes (send
/// `connection: close`); returns the status code (0 when the connection closed without a
/// response) and the raw response. For malformed requests (non-UTF-8 or control bytes in header
/// values) that an HTTP client refuses to send; anything else goes through `http_get`.
pub fn raw_request(port: u16, bytes: &[u8]) -> (u16, String) {
    // Raw socket: exact bytes (non-UTF-8, control characters) a client library refuses to send.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(integration::patience()))
        .unwrap();
    // A refusing Envoy may close while we still write: keep what it answered.
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
