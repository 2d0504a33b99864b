//! The local mesh of `cargo xtask demo` (binary `meshwasm-demo`, options in [`cli`]): small HTTP
//! services that copy trace headers ([`service`]), the toolkit's Zipkin span collector
//! ([`collector`]), one sidecar Envoy per instance running `envoy-configs/sidecar.yaml` with the
//! three meshwasm filters ([`mesh`]), a traffic driver, and the report ([`report`], [`trace`]):
//! a trace tree, retries and absorbed failures, the service graph from the sidecars' metrics,
//! and `report.html`.
//!
//! Everything listens on 127.0.0.1, on ports the kernel chose for whoever holds them; every
//! process and server comes from the native toolkit (`meshwasm-toolkit`). [`run`] is the whole
//! demo; the integration tests use [`mesh::Mesh`] directly too.

#![forbid(unsafe_code)]

pub mod cli;
pub mod mesh;
pub mod python;
pub mod report;
pub mod service;
pub mod trace;

pub use toolkit::{collector, prom};

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh::{Mesh, MeshOptions, Progress, Traffic};
use report::Report;

/// What the demo (`meshwasm-demo`, `cargo xtask demo`) was asked for, with the paths it found.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// The built filters (`target/filters`).
    pub filters_dir: PathBuf,
    /// The config templates (`envoy-configs/`).
    pub configs_dir: PathBuf,
    /// Where the mesh's files and `report.html` go (`target/demo`).
    pub out_dir: PathBuf,
    /// Stop after this many requests.
    pub requests: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Requests per second.
    pub rps: f64,
    /// The fraction of inventory requests that fail with 503.
    pub failure_rate: f64,
    /// Leave the mesh up after the report, until Ctrl-C.
    pub keep_running: bool,
    /// Draw a progress bar on stderr.
    pub progress_bar: bool,
    /// Sidecars with the three policies in one module (`envoy-configs/sidecar-one-module.yaml`,
    /// the default of `cargo xtask demo`), else as three filters (`envoy-configs/sidecar.yaml`).
    pub one_module: bool,
}

/// Reads every sidecar's `/stats/prometheus` once histograms have caught up with the counters
/// (they reach the admin endpoint at each stats flush) or `patience` ran out.
pub fn settled_samples(mesh: &Mesh, patience: Duration) -> Result<Vec<prom::Sample>, String> {
    let deadline = Instant::now() + patience;
    loop {
        let mut all = Vec::new();
        let mut settled = true;
        for i in &mesh.instances {
            let samples = prom::parse(&i.sidecar.prometheus()?);
            let requests = prom::sum(&samples, "mesh_requests_total", |_| true);
            let observed = prom::sum(&samples, "mesh_request_duration_milliseconds_count", |_| {
                true
            });
            settled &= requests == observed;
            all.extend(samples);
        }
        if settled || Instant::now() >= deadline {
            return Ok(all);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the collector has had no new span for 1.5 s (the sidecars flush every 0.5 s), or
/// `patience` ran out.
pub fn settled_spans(mesh: &Mesh, patience: Duration) -> Vec<collector::Span> {
    let deadline = Instant::now() + patience;
    let mut last = (mesh.collector.span_count(), Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let count = mesh.collector.span_count();
        if count != last.0 {
            last = (count, Instant::now());
        } else if count > 0 && last.1.elapsed() >= Duration::from_millis(1500) {
            break;
        }
    }
    mesh.collector.spans()
}

fn bar(done: u64, total: Option<u64>, errors: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    match total {
        Some(total) if total > 0 => {
            let filled = (30 * done.min(total) / total) as usize;
            format!(
                "\r[{}{}] {done}/{total} requests, {rate:.0} rps, {errors} errors ",
                "#".repeat(filled),
                ".".repeat(30 - filled)
            )
        }
        _ => format!(
            "\r{done} requests in {:.0} s, {rate:.0} rps, {errors} errors ",
            elapsed.as_secs_f64()
        ),
    }
}

/// The whole demo: starts the mesh, drives traffic, prints the report to `out` and writes
/// `<out_dir>/report.html`; with `keep_running`, then waits for Ctrl-C. Every process it starts
/// stops when it returns (and, through a watchdog, when the process is killed).
pub fn run(options: &DemoOptions, out: &mut dyn Write) -> Result<Report, String> {
    let say = |out: &mut dyn Write, text: String| {
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    say(
        out,
        format!(
            "starting the mesh: frontend -> orders -> inventory (2 instances, {:.0}% of inventory requests fail with 503)",
            100.0 * options.failure_rate
        ),
    );
    say(
        out,
        if options.one_module {
            "  sidecars: envoy-configs/sidecar-one-module.yaml, the three policies in one module \
             (mesh_sidecar.wasm; --three-modules for sidecar.yaml's three filters)"
        } else {
            "  sidecars: envoy-configs/sidecar.yaml, the three policies as three filters \
             (trace_propagation, service_metrics, route_retries)"
        }
        .to_string(),
    );
    let mesh = Mesh::start(&MeshOptions {
        envoy: options.envoy.clone(),
        filters_dir: options.filters_dir.clone(),
        configs_dir: options.configs_dir.clone(),
        work_dir: options.out_dir.join("mesh"),
        failure_rate: options.failure_rate,
        concurrency: 1,
        one_module: options.one_module,
    })?;
    for i in &mesh.instances {
        say(
            out,
            format!(
                "  {:<12} app :{:<5}  sidecar outbound :{:<5} inbound :{:<5} admin :{}",
                i.name,
                i.app.port(),
                i.outbound_port,
                i.inbound_port,
                i.sidecar.admin_port()
            ),
        );
    }
    say(
        out,
        format!(
            "  {:<12} (traffic enters here, mutual TLS to frontend)  sidecar outbound :{:<5} admin :{}",
            format!("{}-1", mesh::CLIENT),
            mesh.entry_port()?,
            mesh.client.admin_port()
        ),
    );
    say(
        out,
        format!(
            "  span collector :{}   EDS files {}   configs and logs {}",
            mesh.collector.port(),
            mesh.eds_dir().display(),
            options.out_dir.join("mesh").display()
        ),
    );

    let traffic = Traffic {
        requests: options.requests,
        duration: options.duration,
        rps: options.rps,
        workers: 8,
    };
    let entry = mesh.entry_port()?;
    say(
        out,
        format!(
            "driving traffic: GET http://127.0.0.1:{entry}/checkout at {} rps{}{}",
            options.rps,
            options
                .requests
                .map(|n| format!(", {n} requests"))
                .unwrap_or_default(),
            options
                .duration
                .map(|d| format!(", for {} s", d.as_secs()))
                .unwrap_or_default()
        ),
    );
    let progress = Progress::default();
    let total = options.requests.or_else(|| {
        options
            .duration
            .map(|d| (d.as_secs_f64() * options.rps).ceil() as u64)
    });
    let started = Instant::now();
    let traffic_result = std::thread::scope(|scope| {
        let driver = scope.spawn(|| mesh::drive(entry, &traffic, &progress));
        while !driver.is_finished() {
            if options.progress_bar {
                let done = progress.done.load(std::sync::atomic::Ordering::Relaxed);
                let errors = progress.errors.load(std::sync::atomic::Ordering::Relaxed);
                eprint!("{}", bar(done, total, errors, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        driver.join()
    })
    .map_err(|_| "the traffic driver panicked".to_string())?;
    if options.progress_bar {
        eprintln!(
            "{}",
            bar(
                traffic_result.sent,
                total,
                traffic_result.error_count(),
                traffic_result.elapsed
            )
        );
    }
    say(out, "waiting for the last spans and histograms...".into());

    let samples = settled_samples(&mesh, Duration::from_secs(10))?;
    let spans = settled_spans(&mesh, Duration::from_secs(10));
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    let report = Report {
        edges: report::service_graph(&samples),
        retries: report::retries(&samples, "inventory"),
        trace: report::pick_trace(&spans, &["frontend", "orders", "inventory"]),
        span_count: spans.len(),
        trace_count: traces.len(),
        admins: mesh
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.sidecar.admin_port()))
            .chain([(format!("{}-1", mesh::CLIENT), mesh.client.admin_port())])
            .collect(),
        traffic: traffic_result,
        apps: mesh
            .instances
            .iter()
            .filter(|i| i.app.language() != "rust")
            .map(|i| (i.service.clone(), i.app.language().to_string()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    say(out, report.text());
    fs::create_dir_all(&options.out_dir)
        .map_err(|e| format!("could not create {}: {e}", options.out_dir.display()))?;
    let html = options.out_dir.join("report.html");
    fs::write(&html, report.html())
        .map_err(|e| format!("could not write {}: {e}", html.display()))?;
    say(out, format!("report: {}", html.display()));

    if options.keep_running {
        let orders = mesh.instance("frontend-1")?.outbound_port;
        say(
            out,
            format!(
                "\nThe mesh keeps running; Ctrl-C stops it. Try:\n  \
                 curl -i http://127.0.0.1:{entry}/checkout                 # into frontend's sidecar (inbound)\n  \
                 curl -i -H 'Host: orders' http://127.0.0.1:{orders}/orders   # as frontend's app calls orders (outbound)\n  \
                 curl -s http://127.0.0.1:{}/stats/prometheus | grep mesh_requests_total",
                mesh.instance("orders-1")?.sidecar.admin_port()
            ),
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    drop(mesh);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills() {
        let b = bar(50, Some(100), 2, Duration::from_secs(1));
        assert!(
            b.contains(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))),
            "{b}"
        );
        assert!(b.contains("50/100 requests, 50 rps, 2 errors"), "{b}");
    }
}
