//! The service_metrics filter in real Envoys: client -> sidecar A (outbound, reporter=source,
//! service "frontend") -> sidecar B (inbound, reporter=destination, service "orders") -> an app
//! answering a mix of 200/404/503 with varied delays. Checks the counts per label set and the
//! histograms in both sidecars' `/stats/prometheus`, that the peer header never reaches the app
//! nor the client, that forged/unsigned/malformed headers count as `unknown`, that the output
//! passes `promtool check metrics`, and that a real Prometheus scraping both admin endpoints
//! answers `sum by (source_service, destination_service) (mesh_requests_total)`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use integration::upstream::{Reply, Upstream};
use integration::{
    assert_eventually, http_get, patience, start_expecting_failure, wasm_path, workspace_root,
    yaml_single_quoted, Envoy,
};
use serde_json::Value;

const TEMPLATE: &str = include_str!("../configs/service_metrics.yaml");
/// The mesh key, in each sidecar VM's environment as `MESH_SIGNING_KEY` (`{{SIGNING_KEY}}`).
const KEY: &str = "hex:6d6573682d746573742d6b65792d3332627974652d6c6f6e672d7365637265";
/// The `signing_keys` field naming it.
const SIGNING_KEYS: &str = r#""signing_keys":[{"id":"mesh-1","env":"MESH_SIGNING_KEY"}]"#;
const PEER: &str = "x-mesh-peer";

// ---------------------------------------------------------------------------------------------
// The app behind sidecar B: `/<anything>?status=404&delay=20` answers 404 after 20 ms.

/// The app behind sidecar B: `?status=` picks the answer and `?delay=` (ms) how long it takes.
fn start_app() -> Upstream {
    Upstream::with_handler(|req| {
        let status: u16 = query_param(&req.path, "status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let delay: u64 = query_param(&req.path, "delay")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        thread::sleep(Duration::from_millis(delay));
        Reply {
            status,
            headers: Vec::new(),
            body: format!("status {status}").into_bytes(),
        }
    })
    .unwrap()
}

fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

// ---------------------------------------------------------------------------------------------
// Two sidecars.

struct Sidecar<'a> {
    node_id: &'a str,
    node_cluster: &'a str,
    region: &'a str,
    zone: &'a str,
    node_version: &'a str,
    env_version: &'a str,
    next: (&'a str, u16),
    direct: (&'a str, u16),
    config: String,
}

fn start(s: Sidecar<'_>, workers: u32) -> Envoy {
    Envoy::builder(TEMPLATE)
        .concurrency(workers)
        .var(
            "WASM",
            yaml_single_quoted(&wasm_path("service-metrics").display().to_string()),
        )
        .var("FILTER_CONFIG", yaml_single_quoted(&s.config))
        .var("NODE_ID", s.node_id)
        .var("NODE_CLUSTER", s.node_cluster)
        .var("REGION", s.region)
        .var("ZONE", s.zone)
        .var("NODE_VERSION", s.node_version)
        .var("ENV_VERSION", s.env_version)
        .var("SIGNING_KEY", KEY)
        .var("NEXT_CLUSTER", s.next.0)
        .var("PORT_NEXT", s.next.1.to_string())
        .var("DIRECT_CLUSTER", s.direct.0)
        .var("PORT_DIRECT", s.direct.1.to_string())
        .start()
        .unwrap()
}

struct Mesh {
    a: Envoy,
    b: Envoy,
    app: Upstream,
}

/// B: service from the node cluster (`orders`), version from node metadata (`v2`, the env var
/// is empty), region from the locality. A: service from config (`frontend`, not the node's
/// `frontend-node`), version from the VM env (`v1`, not the node's `v0-node`).
fn start_mesh(extra_a: &str, workers: u32) -> Mesh {
    let app = start_app();
    let b = start(
        Sidecar {
            node_id: "orders-7d4f",
            node_cluster: "orders",
            region: "us-east-1",
            zone: "us-east-1b",
            node_version: "v2",
            env_version: "",
            next: ("app", app.port()),
            direct: ("app_direct", app.port()),
            config: format!(r#"{{"reporter":"destination",{SIGNING_KEYS}}}"#),
        },
        workers,
    );
    let a = start(
        Sidecar {
            node_id: "frontend-5c2a",
            node_cluster: "frontend-node",
            region: "eu-west-1",
            zone: "eu-west-1a",
            node_version: "v0-node",
            env_version: "v1",
            next: ("orders", b.listener_port()),
            direct: ("legacy", app.port()),
            config: format!(
                r#"{{"reporter":"source","identity":{{"service":"frontend"}},{SIGNING_KEYS}{extra_a}}}"#
            ),
        },
        workers,
    );
    Mesh { a, b, app }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text parsing.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 2..];
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name, value);
        rest = &after[end..];
    }
    out
}

fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                None => (head, BTreeMap::new()),
            };
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

fn prometheus_text(envoy: &Envoy) -> String {
    http_get(envoy.admin_port(), "/stats/prometheus", &[])
        .map(|r| r.body)
        .unwrap_or_default()
}

/// The sum of `name` over samples whose labels include every `(label, value)` of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn sum_of(envoy: &Envoy, name: &str, want: &[(&str, &str)]) -> f64 {
    sum(&parse_prometheus(&prometheus_text(envoy)), name, want)
}

// ---------------------------------------------------------------------------------------------
// promtool and prometheus.

/// `PROMETHEUS_BIN`/`PROMTOOL_BIN`, then `PATH`, then `/usr/bin`. Panics when absent: the
/// test must fail, never skip (`cargo xtask test` installs Debian's `prometheus` package).
fn find_tool(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} is not a file", p.display());
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "`{name}` not found ({env}, PATH, /usr/bin): install Debian's `prometheus` package \
             (`apt-get install -y prometheus`, which `cargo xtask test` does) or set {env}"
        )
    })
}

fn promtool_check(text: &str, what: &str) {
    let promtool = find_tool("promtool", "PROMTOOL_BIN");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // promtool 2.42 exits 1 when the text does not parse and 3 for lint findings. Lint findings
    // are allowed only where Envoy or the metric names leave no choice: Envoy's admin endpoint
    // writes no HELP lines for any stat, and `mesh_request_duration_milliseconds` keeps the
    // Istio-style unit the metric is specified with.
    assert!(
        matches!(out.status.code(), Some(0 | 3)) && !report.contains("error while linting"),
        "promtool check metrics could not parse {what} ({}): {report}",
        out.status
    );
    let ours: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("mesh_"))
        .filter(|l| !l.ends_with(" no help text"))
        .filter(|l| {
            *l != r#"mesh_request_duration_milliseconds use base unit "seconds" instead of "milliseconds""#
        })
        .collect();
    assert!(
        ours.is_empty(),
        "promtool findings on our metrics in {what}: {ours:?}"
    );
}

/// A `prometheus` server on a loopback port with a temp dir; killed and cleaned up on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[u16]) -> Prometheus {
        let bin = find_tool("prometheus", "PROMETHEUS_BIN");
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = workspace_root()
            .join("target")
            .join("integration-tmp")
            .join(format!("prometheus-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).unwrap();
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
             - job_name: envoy\n  metrics_path: /stats/prometheus\n  scrape_interval: 500ms\n  \
             static_configs:\n  - targets: [{}]\n",
            targets.join(", ")
        );
        fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            // Port 0: the kernel picks; Prometheus logs the address it listens on.
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut prometheus = Prometheus {
            child,
            port: 0,
            dir,
        };
        let mut port = None;
        assert_eventually!(
            {
                port = listening_port(&prometheus.log());
                port.is_some()
            },
            "prometheus did not say where it listens; log:\n{}",
            prometheus.log()
        );
        prometheus.port = port.unwrap_or_default();
        prometheus
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector of `query` as (labels, value) pairs; `None` when not answered yet.
    fn query(&self, query: &str) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let resp = http_get(self.port, &path, &[]).ok()?;
        let v: Value = serde_json::from_str(&resp.body).ok()?;
        if v["status"] != "success" {
            return None;
        }
        let result = v["data"]["result"].as_array()?;
        result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<Option<BTreeMap<_, _>>>()?;
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The port of `msg="Listening on" address=127.0.0.1:<port>` in Prometheus' log.
fn listening_port(log: &str) -> Option<u16> {
    log.lines()
        .filter(|l| l.contains("Listening on"))
        .find_map(|l| l.split("address=127.0.0.1:").nth(1))
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .filter(|port| *port != 0)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn dir_exists(p: &Path) -> bool {
    p.is_dir()
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// The mix of requests sent through A: (status, delay ms).
fn workload() -> Vec<(u16, u64)> {
    let statuses = [200, 200, 404, 200, 503, 200, 404, 200];
    let delays = [0, 5, 12, 25, 3, 40, 8, 1];
    (0..24)
        .map(|i| (statuses[i % statuses.len()], delays[(i * 3) % delays.len()]))
        .collect()
}

#[test]
fn counts_by_source_and_destination_in_envoy_and_prometheus() {
    let mesh = start_mesh("", 2);
    let work = workload();
    let n = work.len() as f64;

    for (i, (status, delay)) in work.iter().enumerate() {
        let path = format!("/orders/{i}?status={status}&delay={delay}");
        // A client that tries to pass as another service: A replaces its header.
        let resp = http_get(mesh.a.listener_port(), &path, &[(PEER, "v1;s=admin;t=1")]).unwrap();
        assert_eq!(resp.status, *status, "{resp:?}");
        assert_eq!(
            resp.header(PEER),
            None,
            "the client saw the peer header: {resp:?}"
        );
    }
    // Straight to a service without a sidecar: the destination is named after the cluster.
    for _ in 0..3 {
        let resp = http_get(mesh.a.listener_port(), "/direct/x", &[]).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header(PEER), None);
    }
    // Clients calling B directly with identity headers B must not believe.
    let forged_mac = "A".repeat(43);
    let bad = [
        format!("v1;s=frontend;v=v1;t={};m={forged_mac}", unix_now()),
        format!("v1;s=payments;t={};m={forged_mac}", unix_now()),
        format!("v1;s=frontend;t={}", unix_now()),
        "frontend".to_string(),
    ];
    for header in &bad {
        let resp = http_get(mesh.b.listener_port(), "/orders/x", &[(PEER, header)]).unwrap();
        assert_eq!(resp.status, 200);
        // B signs its identity only for a verified mesh caller: an outside client could
        // otherwise replay the header within the skew window.
        assert_eq!(resp.header(PEER), None, "{resp:?}");
    }

    // The app never saw a peer header through B. (`/direct` calls skip B: an outbound sidecar
    // cannot know whether a sidecar will remove its header, so those carry it.)
    let seen: Vec<(String, Vec<(String, String)>)> = mesh
        .app
        .requests()
        .into_iter()
        .map(|r| (r.path, r.headers))
        .collect();
    assert_eq!(seen.len(), work.len() + 3 + bad.len());
    let direct = seen
        .iter()
        .filter(|(p, _)| p.starts_with("/direct"))
        .count();
    assert_eq!(direct, 3);
    for (_, headers) in seen.iter().filter(|(p, _)| !p.starts_with("/direct")) {
        assert!(
            headers.iter().all(|(k, _)| k != PEER),
            "the app saw the peer header: {headers:?}"
        );
    }

    let count = |status: u16| work.iter().filter(|(s, _)| *s == status).count() as f64;
    let full_source = |code: &str| -> Vec<(&'static str, String)> {
        vec![
            ("reporter", "source".into()),
            ("source_service", "frontend".into()),
            ("source_version", "v1".into()),
            ("source_region", "eu-west-1".into()),
            ("destination_service", "orders".into()),
            ("destination_version", "v2".into()),
            ("destination_region", "us-east-1".into()),
            ("route", "default".into()),
            ("request_protocol", "HTTP/1.1".into()),
            ("response_code", code.into()),
            ("grpc_status", "-".into()),
            ("response_flags", "-".into()),
        ]
    };
    let as_refs = |v: &[(&'static str, String)]| -> Vec<(&'static str, String)> { v.to_vec() };
    for (code, status) in [("200", 200), ("404", 404), ("503", 503)] {
        let want = as_refs(&full_source(code));
        let want: Vec<(&str, &str)> = want.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eventually!(
            sum_of(&mesh.a, "mesh_requests_total", &want) == count(status),
            "A, code {code}: {}",
            prometheus_text(&mesh.a)
        );
        let mut want_b = want.clone();
        want_b[0] = ("reporter", "destination");
        assert_eventually!(
            sum_of(&mesh.b, "mesh_requests_total", &want_b) == count(status),
            "B, code {code}: {}",
            prometheus_text(&mesh.b)
        );
    }
    assert_eventually!(
        sum_of(
            &mesh.a,
            "mesh_requests_total",
            &[
                ("destination_service", "legacy"),
                ("route", "direct"),
                ("destination_version", "unknown")
            ]
        ) == 3.0
    );
    // B: the four untrusted callers are `unknown`, each counted by reason.
    assert_eventually!(
        sum_of(
            &mesh.b,
            "mesh_requests_total",
            &[("source_service", "unknown")]
        ) == 4.0
    );
    assert_eq!(
        sum_of(
            &mesh.b,
            "mesh_requests_total",
            &[("source_service", "payments")]
        ),
        0.0
    );
    for (reason, want) in [
        ("forged", 2.0),
        ("unsigned", 1.0),
        ("malformed", 1.0),
        ("expired", 0.0),
    ] {
        let labels = [("reporter", "destination"), ("reason", reason)];
        assert_eventually!(
            sum_of(&mesh.b, "mesh_peer_identity_rejected_total", &labels) == want,
            "reason {reason}: {}",
            prometheus_text(&mesh.b)
        );
    }
    assert_eq!(
        sum_of(&mesh.a, "mesh_peer_identity_rejected_total", &[]),
        0.0,
        "A believed every answer from B"
    );

    // Histograms: `_bucket`/`_sum`/`_count` with the labels, counts summing to the requests.
    for hist in [
        "mesh_request_duration_milliseconds",
        "mesh_request_bytes",
        "mesh_response_bytes",
    ] {
        assert_eventually!(
            sum_of(&mesh.a, &format!("{hist}_count"), &[("reporter", "source")]) == n + 3.0,
            "A {hist}: {}",
            prometheus_text(&mesh.a)
        );
        assert_eventually!(
            sum_of(
                &mesh.b,
                &format!("{hist}_count"),
                &[("reporter", "destination")]
            ) == n + 4.0,
            "B {hist}: {}",
            prometheus_text(&mesh.b)
        );
        let text = prometheus_text(&mesh.a);
        let samples = parse_prometheus(&text);
        let inf = sum(
            &samples,
            &format!("{hist}_bucket"),
            &[("le", "+Inf"), ("source_service", "frontend")],
        );
        assert_eq!(inf, n + 3.0, "{hist} +Inf buckets: {text}");
        assert!(
            sum(
                &samples,
                &format!("{hist}_sum"),
                &[("destination_service", "orders")]
            ) > 0.0,
            "{hist}_sum: {text}"
        );
    }
    // The slow requests (>= 25 ms) are above the 10 ms bucket at B.
    let slow = work.iter().filter(|(_, d)| *d >= 25).count() as f64;
    let b_text = prometheus_text(&mesh.b);
    let b = parse_prometheus(&b_text);
    let le10 = sum(
        &b,
        "mesh_request_duration_milliseconds_bucket",
        &[("le", "10"), ("source_service", "frontend")],
    );
    assert!(le10 <= n - slow, "le=10 {le10}, slow {slow}: {b_text}");

    let a_text = prometheus_text(&mesh.a);
    promtool_check(&a_text, "sidecar A's /stats/prometheus");
    promtool_check(&b_text, "sidecar B's /stats/prometheus");
    for line in a_text
        .lines()
        .filter(|l| l.starts_with("mesh_requests_total{"))
        .take(3)
    {
        eprintln!("sample A: {line}");
    }

    // A real Prometheus scraping both admin endpoints.
    let prom = Prometheus::start(&[mesh.a.admin_port(), mesh.b.admin_port()]);
    let expected: BTreeMap<(String, String), f64> = [
        (("frontend", "orders"), 2.0 * n),
        (("frontend", "legacy"), 3.0),
        (("unknown", "orders"), 4.0),
    ]
    .into_iter()
    .map(|((s, d), v)| ((s.to_string(), d.to_string()), v))
    .collect();
    let query = "sum by (source_service, destination_service) (mesh_requests_total)";
    let mut last = None;
    let answered = integration::eventually(|| {
        let got = prom.query(query).map(|rows| {
            rows.into_iter()
                .map(|(l, v)| {
                    let get = |k: &str| l.get(k).cloned().unwrap_or_default();
                    ((get("source_service"), get("destination_service")), v)
                })
                .collect::<BTreeMap<_, _>>()
        });
        let ok = got.as_ref() == Some(&expected);
        last = got;
        ok
    });
    assert!(
        answered,
        "prometheus did not answer {query} with {expected:?} within {:?}; last answer {last:?}\nlog:\n{}",
        patience(),
        prom.log()
    );
    let dir = prom.dir.clone();
    drop(prom);
    assert!(!dir_exists(&dir), "prometheus temp dir left behind");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn label_selection_and_series_cap_in_envoy() {
    // A drops `route`, adds `source_instance`, and caps each metric at 2 series. The cap is
    // per worker (each VM keeps its own series table), so one worker makes it exact.
    let mesh = start_mesh(
        r#","drop_labels":["route"],"add_labels":["source_instance"],"max_series":2"#,
        1,
    );
    for status in [200, 404, 503, 200] {
        let resp = http_get(mesh.a.listener_port(), &format!("/x?status={status}"), &[]).unwrap();
        assert_eq!(resp.status, status);
    }
    let a = |name: &str, want: &[(&str, &str)]| sum_of(&mesh.a, name, want);
    assert_eventually!(
        a(
            "mesh_requests_total",
            &[
                ("source_instance", "frontend-5c2a"),
                ("response_code", "200")
            ]
        ) == 2.0,
        "{}",
        prometheus_text(&mesh.a)
    );
    assert_eventually!(a("mesh_requests_total", &[("response_code", "404")]) == 1.0);
    // The third label set (503) went to the overflow series, and was counted.
    assert_eventually!(a("mesh_requests_total", &[("response_code", "overflow")]) == 1.0);
    assert_eventually!(a("mesh_requests_total_series_overflow_total", &[]) == 1.0);
    let text = prometheus_text(&mesh.a);
    assert!(!text.contains("route=\""), "route was dropped: {text}");
}

#[test]
fn a_bad_or_inline_signing_key_is_refused_with_the_field_path() {
    for (config, key, want) in [
        (
            format!(r#"{{"reporter":"source",{SIGNING_KEYS}}}"#),
            "hex:0011",
            "service_metrics: invalid configuration: signing_keys[0].env: key is 2 bytes, \
             expected 16 to 64",
        ),
        (
            format!(r#"{{"reporter":"source","signing_key":"{KEY}"}}"#),
            KEY,
            "service_metrics: invalid configuration: signing_key: a key inline in the \
             configuration is refused",
        ),
    ] {
        let log = start_expecting_failure(
            TEMPLATE,
            &[
                (
                    "WASM",
                    yaml_single_quoted(&wasm_path("service-metrics").display().to_string()),
                ),
                ("FILTER_CONFIG", yaml_single_quoted(&config)),
                ("NODE_ID", "n".to_string()),
                ("NODE_CLUSTER", "c".to_string()),
                ("REGION", "r".to_string()),
                ("ZONE", "z".to_string()),
                ("NODE_VERSION", "v".to_string()),
                ("ENV_VERSION", "".to_string()),
                ("SIGNING_KEY", key.to_string()),
                ("NEXT_CLUSTER", "next".to_string()),
                ("PORT_NEXT", "1".to_string()),
                ("DIRECT_CLUSTER", "direct".to_string()),
                ("PORT_DIRECT", "1".to_string()),
            ],
        );
        assert!(log.contains(want), "{config}: {log}");
    }
}
