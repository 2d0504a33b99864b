//! The local mesh: three services (`frontend` -> `orders` -> `inventory`, inventory with two
//! instances; orders is the Python service, the others Rust), each instance with its own sidecar
//! Envoy running `envoy-configs/sidecar.yaml`,
//! endpoints in EDS files the sidecars watch, a span collector, and the traffic driver.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use toolkit::collector::Collector;
use toolkit::{http, prom, Envoy};

use crate::python::PythonService;
use crate::service::{Service, ServiceConfig, ServiceStats};

/// The services and who calls whom: (service, next service, instances, simulated work).
pub const TOPOLOGY: [(&str, Option<&str>, usize, Duration); 3] = [
    ("frontend", Some("orders"), 1, Duration::from_micros(500)),
    ("orders", Some("inventory"), 1, Duration::from_millis(1)),
    ("inventory", None, 2, Duration::from_millis(2)),
];

/// The service whose app is the Python one ([`PythonService`]): a polyglot hop in the middle of
/// the trace, propagated by the `meshwasm:propagation` component instead of Rust code.
pub const PYTHON_SERVICE: &str = "orders";

/// An instance's app: a Rust [`Service`], or the [`PythonService`].
pub enum App {
    /// The Rust service, copying the trace headers itself.
    Rust(Service),
    /// The Python service, propagating with the component.
    Python(PythonService),
}

impl App {
    /// The port it listens on (its sidecar's `local_app`, `{{PORT_APP}}`).
    pub fn port(&self) -> u16 {
        match self {
            App::Rust(s) => s.port(),
            App::Python(p) => p.port(),
        }
    }

    /// Tells it its sidecar's outbound listener port.
    pub fn set_outbound_port(&self, port: u16) -> Result<(), String> {
        match self {
            App::Rust(s) => {
                s.config().set_outbound_port(port);
                Ok(())
            }
            App::Python(p) => p.set_outbound_port(port),
        }
    }

    /// What it is written in, for the report.
    pub fn language(&self) -> &'static str {
        match self {
            App::Rust(_) => "rust",
            App::Python(_) => crate::python::LANGUAGE,
        }
    }

    /// The Rust service's counters (none for the Python service).
    pub fn stats(&self) -> Option<&ServiceStats> {
        match self {
            App::Rust(s) => Some(s.stats()),
            App::Python(_) => None,
        }
    }
}

/// How to start the mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// The built filters (`target/filters`).
    pub filters_dir: PathBuf,
    /// The config templates (`envoy-configs/`).
    pub configs_dir: PathBuf,
    /// Where configs, EDS files and logs go (cleared first), e.g. `target/demo/mesh`.
    pub work_dir: PathBuf,
    /// The fraction of inventory requests that fail with 503.
    pub failure_rate: f64,
    /// Envoy worker threads per sidecar.
    pub concurrency: u32,
    /// Run `sidecar-one-module.yaml` (the three policies in one module) instead of
    /// `sidecar.yaml` (three filters).
    pub one_module: bool,
}

/// One instance of a service: its app and its sidecar.
pub struct Instance {
    /// The service, e.g. `inventory`.
    pub service: String,
    /// The instance, e.g. `inventory-2`.
    pub name: String,
    /// Its sidecar's outbound listener (where its app sends calls), as Envoy bound it.
    pub outbound_port: u16,
    /// Its sidecar's inbound listener (its endpoint in EDS), as Envoy bound it.
    pub inbound_port: u16,
    /// The sidecar (declared before `app`: stopped first).
    pub sidecar: Envoy,
    /// The app.
    pub app: App,
}

/// How long a sidecar may take to become ready, and then to see its endpoints.
const SIDECAR_PATIENCE: Duration = Duration::from_secs(60);

/// The namespace of the demo's services: in their SPIFFE IDs and `MESH_NAMESPACE`.
pub const NAMESPACE: &str = "demo";

/// The workload the demo's traffic comes from: a sidecar with no app behind it, whose
/// certificate makes it a caller the inbound listeners accept.
pub const CLIENT: &str = "client";

/// The running mesh; dropping it stops every process it started (and the toolkit's watchdog
/// stops the sidecars if this process dies first).
pub struct Mesh {
    /// Every instance, in [`TOPOLOGY`] order.
    pub instances: Vec<Instance>,
    /// The sidecar of the workload traffic comes from ([`CLIENT`]): its outbound listener is
    /// where traffic enters.
    pub client: Envoy,
    /// The span collector.
    pub collector: Collector,
    eds_dir: PathBuf,
}

/// The EDS file of `cluster` with one endpoint per port (the format of envoy-configs/eds/); with
/// no port, a cluster with no endpoint.
pub fn eds_yaml(cluster: &str, ports: &[u16]) -> String {
    if ports.is_empty() {
        return format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  \
             cluster_name: {cluster}\n  endpoints: []\n"
        );
    }
    let mut out = format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  \
         cluster_name: {cluster}\n  endpoints:\n  - locality: {{ region: region-a }}\n    lb_endpoints:\n"
    );
    for port in ports {
        out.push_str(&format!(
            "    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
        ));
    }
    out
}

/// Replaces `dir/<cluster>.yaml` atomically (a temporary file in the same directory, renamed
/// over it), which is what Envoy's watched directory reacts to.
pub fn write_eds(dir: &Path, cluster: &str, ports: &[u16]) -> Result<(), String> {
    let tmp = dir.join(format!(".{cluster}.yaml.tmp"));
    let path = dir.join(format!("{cluster}.yaml"));
    fs::write(&tmp, eds_yaml(cluster, ports))
        .map_err(|e| format!("could not write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &path).map_err(|e| {
        format!(
            "could not rename {} to {}: {e}",
            tmp.display(),
            path.display()
        )
    })
}

impl Mesh {
    /// Starts the collector, the apps, one sidecar per instance (in parallel) and the EDS
    /// files, and waits until every sidecar is ready and sees every endpoint.
    ///
    /// No port is picked ahead: each app binds its own port first, then its sidecar starts with
    /// `{{PORT_APP}}` and `{{PORT_COLLECTOR}}` set and binds its admin, outbound and inbound
    /// listeners on port 0; once it is ready the app learns its outbound port and the EDS files
    /// (empty until then) get every sidecar's inbound port.
    pub fn start(options: &MeshOptions) -> Result<Mesh, String> {
        let (template_file, filters): (&str, &[&str]) = if options.one_module {
            ("sidecar-one-module.yaml", &["mesh_sidecar"])
        } else {
            (
                "sidecar.yaml",
                &["trace_propagation", "service_metrics", "route_retries"],
            )
        };
        let template_path = options.configs_dir.join(template_file);
        let template = fs::read_to_string(&template_path)
            .map_err(|e| format!("could not read {}: {e}", template_path.display()))?;
        for filter in filters {
            let wasm = options.filters_dir.join(format!("{filter}.wasm"));
            if !wasm.is_file() {
                return Err(format!(
                    "{} is missing: run `cargo xtask build` first",
                    wasm.display()
                ));
            }
        }
        if options.work_dir.exists() {
            fs::remove_dir_all(&options.work_dir)
                .map_err(|e| format!("could not clear {}: {e}", options.work_dir.display()))?;
        }
        let eds_dir = options.work_dir.join("eds");
        fs::create_dir_all(&eds_dir)
            .map_err(|e| format!("could not create {}: {e}", eds_dir.display()))?;
        // Every cluster starts with no endpoint: the sidecars' inbound ports exist only once
        // they are up.
        for (service, _, _, _) in TOPOLOGY {
            write_eds(&eds_dir, service, &[])?;
        }
        // Mutual TLS between the sidecars: a mesh CA and one certificate per service (SPIFFE ID
        // spiffe://cluster.local/ns/demo/sa/<service>), each sidecar's {{CERTS_DIR}} its
        // service's directory.
        let certs_dir = options.work_dir.join("certs");
        let mut services: Vec<&str> = TOPOLOGY.iter().map(|(service, _, _, _)| *service).collect();
        services.push(CLIENT);
        toolkit::certs::make_mesh(
            &certs_dir,
            toolkit::certs::DEFAULT_TRUST_DOMAIN,
            NAMESPACE,
            &services,
            toolkit::certs::DEFAULT_WORKLOAD_VALIDITY,
        )?;
        let collector = Collector::start()?;

        // Apps first: each holds its port from the start; its sidecar is told the port.
        let mut apps = Vec::new();
        let mut seed = 0x5eed_u64;
        for (service, calls, instances, work) in TOPOLOGY {
            for i in 1..=instances {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let name = format!("{service}-{i}");
                let app = if service == PYTHON_SERVICE {
                    let log = options.work_dir.join(format!("{name}-app.log"));
                    App::Python(PythonService::start(service, calls, work, &log)?)
                } else {
                    App::Rust(Service::start(ServiceConfig {
                        name: service.to_string(),
                        calls: calls.map(str::to_string),
                        outbound_port: Arc::default(),
                        failure_rate: if service == "inventory" {
                            options.failure_rate
                        } else {
                            0.0
                        },
                        work,
                        seed,
                    })?)
                };
                apps.push((service, name, app));
            }
        }

        // The sidecars, side by side: spawn every one, then wait for each. Admin, outbound and
        // inbound ports are left to Envoy (port 0) and read back from it.
        let filters_dir = options.filters_dir.display().to_string();
        let eds = eds_dir.display().to_string();
        let collector_port = collector.port().to_string();
        let sidecar = |service: &str, name: &str, app_port: u16| {
            Envoy::builder(&template)
                .name(name)
                .bin(&options.envoy)
                .dir(&options.work_dir.join(name))
                .concurrency(options.concurrency)
                .log_level("warn")
                .var("FILTERS_DIR", filters_dir.as_str())
                .var("EDS_DIR", eds.as_str())
                .var("CERTS_DIR", certs_dir.join(service).display().to_string())
                .var("PORT_APP", app_port.to_string())
                .var("PORT_COLLECTOR", collector_port.as_str())
                .arg("--service-cluster")
                .arg(service)
                .arg("--service-node")
                .arg(name)
                // Histograms reach the admin endpoint at each flush (default 5 s): the demo
                // reads them right after the traffic.
                .arg("--config-yaml")
                .arg("{stats_flush_interval: 0.5s}")
                .env("MESH_VERSION", "v1")
                .env("MESH_REGION", "region-a")
                .env("MESH_ZONE", "region-a-1")
                .env("MESH_NAMESPACE", NAMESPACE)
                .spawn()
                .map_err(|e| format!("{name}: {e}"))
        };
        // Traffic enters through a workload of its own, `client`, with a sidecar like every
        // other: the inbound listeners take mutual TLS only. Nothing calls its app; its
        // `local_app` cluster points at the collector's port, which is held.
        let mut client = sidecar(CLIENT, &format!("{CLIENT}-1"), collector.port())?;
        let mut spawned = Vec::new();
        for (service, name, app) in apps {
            let sidecar = sidecar(service, &name, app.port())?;
            spawned.push(Instance {
                service: service.to_string(),
                name,
                outbound_port: 0,
                inbound_port: 0,
                sidecar,
                app,
            });
        }
        client.wait_ready(SIDECAR_PATIENCE)?;
        for instance in &mut spawned {
            instance.sidecar.wait_ready(SIDECAR_PATIENCE)?;
            let port = |placeholder: &str| {
                instance.sidecar.try_port(placeholder).ok_or_else(|| {
                    format!(
                        "{}: no port for {{{{{placeholder}}}}} in {}",
                        instance.name,
                        template_path.display()
                    )
                })
            };
            let (outbound, inbound) = (port("PORT_OUTBOUND")?, port("PORT_INBOUND")?);
            instance.outbound_port = outbound;
            instance.inbound_port = inbound;
            instance.app.set_outbound_port(instance.outbound_port)?;
        }
        let mesh = Mesh {
            instances: spawned,
            client,
            collector,
            eds_dir,
        };
        for (service, _, _, _) in TOPOLOGY {
            let all: Vec<&str> = mesh
                .instances
                .iter()
                .filter(|i| i.service == service)
                .map(|i| i.name.as_str())
                .collect();
            mesh.set_endpoints(service, &all)?;
        }
        mesh.wait_for_endpoints(SIDECAR_PATIENCE)?;
        Ok(mesh)
    }

    /// Waits until every sidecar's `frontend`, `orders` and `inventory` clusters hold exactly
    /// the instances of the EDS files, all healthy (stats `cluster.<service>.membership_total`
    /// and `membership_healthy`), or fails naming the sidecar and cluster still behind.
    pub fn wait_for_endpoints(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        let expected: Vec<(&str, u64)> = TOPOLOGY
            .iter()
            .map(|(service, _, _, _)| {
                let n = self
                    .instances
                    .iter()
                    .filter(|i| i.service == *service)
                    .count();
                (*service, n as u64)
            })
            .collect();
        for instance in &self.instances {
            loop {
                let stats = instance
                    .sidecar
                    .admin_get("/stats?filter=membership_")
                    .map(|r| r.body)
                    .unwrap_or_default();
                let behind = expected.iter().find(|(service, n)| {
                    ["total", "healthy"].iter().any(|what| {
                        let stat = format!("cluster.{service}.membership_{what}");
                        prom::envoy_stat(&stats, &stat) != Some(*n)
                    })
                });
                let Some((service, n)) = behind else { break };
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{}'s sidecar does not see the {n} endpoint(s) of {service} within \
                         {patience:?}; its membership stats:\n{stats}",
                        instance.name
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The instance called `name`, e.g. `inventory-2`.
    pub fn instance(&self, name: &str) -> Result<&Instance, String> {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| format!("no instance {name}"))
    }

    /// Where traffic enters: the outbound listener of [`CLIENT`]'s sidecar (calls with
    /// `Host: frontend` go to frontend over mutual TLS).
    pub fn entry_port(&self) -> Result<u16, String> {
        self.client
            .try_port("PORT_OUTBOUND")
            .ok_or_else(|| format!("{CLIENT}-1: no outbound listener"))
    }

    /// The directory of the EDS files.
    pub fn eds_dir(&self) -> &Path {
        &self.eds_dir
    }

    /// Rewrites `service`'s EDS file with only the given instances.
    pub fn set_endpoints(&self, service: &str, instances: &[&str]) -> Result<(), String> {
        let ports = instances
            .iter()
            .map(|n| self.instance(n).map(|i| i.inbound_port))
            .collect::<Result<Vec<_>, _>>()?;
        write_eds(&self.eds_dir, service, &ports)
    }

    /// The pids of the sidecar Envoys.
    pub fn envoy_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.instances.iter().map(|i| i.sidecar.pid()).collect();
        pids.push(self.client.pid());
        pids
    }
}

/// How much traffic to send.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Stop after this many requests.
    pub requests: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Requests per second (paced on a schedule, by several workers).
    pub rps: f64,
    /// Concurrent workers.
    pub workers: usize,
}

/// What the client saw.
#[derive(Debug, Clone, Default)]
pub struct TrafficResult {
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Other answers and failures: (status or 0 for no answer, count).
    pub errors: Vec<(u16, u64)>,
    /// Wall time.
    pub elapsed: Duration,
    /// Client-side latencies, ms.
    pub latencies_ms: Vec<f64>,
}

impl TrafficResult {
    /// Requests that did not get a 2xx.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|e| e.1).sum()
    }
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests finished.
    pub done: AtomicU64,
    /// Of which not 2xx.
    pub errors: AtomicU64,
}

/// Sends `GET /checkout?id=<n>` to `port` on the schedule of `traffic`; `progress` is updated as
/// requests finish.
pub fn drive(port: u16, traffic: &Traffic, progress: &Progress) -> TrafficResult {
    let start = Instant::now();
    let next = AtomicU64::new(0);
    let result = Mutex::new(TrafficResult::default());
    let interval = Duration::from_secs_f64(1.0 / traffic.rps.max(0.1));
    std::thread::scope(|scope| {
        for _ in 0..traffic.workers.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if traffic.requests.is_some_and(|n| i >= n) {
                    return;
                }
                let due = interval.mul_f64(i as f64);
                if traffic.duration.is_some_and(|d| due >= d) {
                    return;
                }
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                let t = Instant::now();
                let path = format!("/checkout?id={i}");
                let status = http::request(
                    "GET",
                    port,
                    &path,
                    &[("host", "frontend")],
                    b"",
                    Duration::from_secs(15),
                )
                .map(|r| r.status)
                .unwrap_or(0);
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let ok = (200..300).contains(&status);
                progress.done.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
                let mut r = result.lock().unwrap_or_else(|e| e.into_inner());
                r.sent += 1;
                r.latencies_ms.push(ms);
                if ok {
                    r.ok += 1;
                } else if let Some(e) = r.errors.iter_mut().find(|e| e.0 == status) {
                    e.1 += 1;
                } else {
                    r.errors.push((status, 1));
                }
            });
        }
    });
    let mut result = result.into_inner().unwrap_or_else(|e| e.into_inner());
    result.elapsed = start.elapsed();
    result.errors.sort();
    result
}

/// Shares a mesh with the thread that drives traffic while another changes it.
pub type SharedMesh = Arc<Mesh>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_eds_files_match_the_shipped_format() {
        let shipped = include_str!("../../envoy-configs/eds/inventory.yaml");
        let rendered = toolkit::render(
            shipped,
            &[
                ("PORT_INVENTORY_1_INBOUND", "7001"),
                ("PORT_INVENTORY_2_INBOUND", "7002"),
            ],
        );
        let body: String = rendered
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(body, eds_yaml("inventory", &[7001, 7002]));
    }
}
