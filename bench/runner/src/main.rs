//! `meshwasm-bench`, run by `cargo xtask bench`: what our filters cost, headlined as Envoy's CPU
//! time per request, side by side with no filter, the wasm floor, Envoy's Lua filter, a bare
//! proxy-wasm filter and Envoy's native tracing and retries (issues #7 and #13). Each scenario's
//! Envoy (`--concurrency 1` by default) is a [`toolkit::Envoy`] on ports it binds itself,
//! proxying to a fast keep-alive upstream in this process; `wrk` drives it closed-loop over
//! keep-alive HTTP/1.1 connections. Every scenario runs in interleaved rounds after a warm-up,
//! and the report gives medians and spread. A full run writes `BENCHMARKS.md` and
//! `docs/bench.svg`; `--quick` (and `--smoke`, the check of `cargo xtask test`) writes only
//! under `target/bench/` and checks that the numbers are sane, never that targets are met.
//!
//! It never builds the filters: it loads them from [`toolkit::filters_dir`] (`cargo xtask bench`
//! builds them first unless `--no-build`).

#![forbid(unsafe_code)]

mod cost;
mod cpus;
mod hostcalls;
mod instructions;
mod load;
mod report;
mod scenario;
mod upstream;
mod vmwork;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use load::Shape;
use report::{Measured, WasmSize};
use scenario::{Expect, Scenario};
use toolkit::{target_dir, workspace_root, Envoy};
use upstream::Upstream;

/// Every step reports failure as a message that names what failed.
pub type Result<T> = std::result::Result<T, String>;

/// Options of `cargo xtask bench` (all of them reach this binary).
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(
    name = "meshwasm-bench",
    version,
    about = "What the meshwasm filters cost inside Envoy: CPU time per request, throughput, \
             latency, RSS, hostcalls and sizes against no filter, the wasm floor, Lua, a bare \
             proxy-wasm filter and Envoy's native tracing and retries. \
             Writes BENCHMARKS.md and docs/bench.svg (--quick, --smoke: target/bench/ only).",
    long_about = None,
    after_help = "Run it as `cargo xtask bench [options]`, which builds the filters first. This \
                  binary never builds them: it loads the .wasm files from $MESHWASM_FILTERS_DIR, \
                  default <target>/filters."
)]
pub struct Options {
    /// A short run: one round of one-second runs, no warm-up; results under target/bench/ only.
    #[arg(long)]
    pub quick: bool,
    /// The smoke check of `cargo xtask test`: a --quick run on the filters already built.
    #[arg(long)]
    pub smoke: bool,
    /// Envoy --concurrency (workers) of the main scenarios; all three filters and the
    /// baseline also run at 2 workers when N is not 2.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub concurrency: u32,
    /// For `cargo xtask bench`: do not build the filters first. Accepted and ignored here: this
    /// binary never builds them.
    #[arg(long)]
    pub no_build: bool,
    /// The cost model of issue 13 instead of the scenarios: Envoy CPU per proxy-wasm hostcall,
    /// from bench/cost-probe doing each N times per request; writes target/bench/cost-model.md.
    #[arg(long)]
    pub cost_model: bool,
    /// The work each filter does inside its VM per request instead of the scenarios: wasm
    /// instructions counted by wasmtime with every hostcall stubbed (bench/vm-work), which the
    /// machine's load does not move; writes target/bench/vm-work.md.
    #[arg(long)]
    pub vm_work: bool,
    /// The instructions Envoy itself executes per request instead of its CPU time: each
    /// one-worker scenario's Envoy alone under valgrind's callgrind, plus the cost probe's price
    /// list in instructions (the first call of a request and each further one), which the
    /// machine's load does not move; writes target/bench/instructions.md. About 20 minutes;
    /// --only takes scenario keys, probe kinds (e.g. `get_header`) or `probe`.
    #[arg(long, conflicts_with_all = ["cost_model", "vm_work"])]
    pub instructions: bool,
    /// Only these scenarios (comma-separated keys, e.g. `mesh,trace-core`), always with
    /// `baseline` and `wasm-noop`, for comparing a change; results under target/bench/ only.
    /// With --cost-model: only the groups of kinds holding one of these keys (e.g.
    /// `expr_list`), without the phase calls and the shipped filters.
    #[arg(long, value_name = "KEYS", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Measured rounds (default 5; 1 with --quick); with --cost-model, the rounds of each group
    /// of kinds.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: Option<u32>,
    /// Run each chosen scenario that loads our filters twice in every round, with this tree's
    /// filters and with the `.wasm` files of DIR (another build), and report the difference
    /// paired per round; results under target/bench/ only. `cargo xtask bench --against REV`
    /// builds revision REV and passes its filters here.
    #[arg(long, value_name = "DIR")]
    pub against_filters: Option<PathBuf>,
    /// What built the filters of --against-filters, for the report (default: the directory).
    #[arg(long, value_name = "NAME", requires = "against_filters")]
    pub against_label: Option<String>,
}

impl Options {
    /// A short run (`--quick` or `--smoke`).
    fn quick(&self) -> bool {
        self.quick || self.smoke
    }

    /// A run whose results stay under target/bench/ (short, only some scenarios, or against
    /// another build).
    fn partial(&self) -> bool {
        self.quick() || !self.only.is_empty() || self.against_filters.is_some()
    }

    /// What built the filters of `--against-filters`.
    fn against_name(&self) -> String {
        match (&self.against_label, &self.against_filters) {
            (Some(label), _) => label.clone(),
            (None, Some(dir)) => dir.display().to_string(),
            (None, None) => String::new(),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            smoke: false,
            concurrency: 1,
            no_build: false,
            cost_model: false,
            vm_work: false,
            instructions: false,
            only: Vec::new(),
            rounds: None,
            against_filters: None,
            against_label: None,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options::parse();
    // The command as the user types it, for the report.
    let command = if options.smoke {
        "cargo xtask test (bench --smoke)".to_string()
    } else {
        format!("cargo xtask bench {}", args.join(" "))
            .trim()
            .to_string()
    };
    match run(&options, &command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Durations and connections of a run.
struct Plan {
    rounds: usize,
    warmup: Shape,
    throughput: Shape,
    latency: Shape,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        // Quick runs skip the warm-up: their numbers only have to be sane, not steady.
        let (rounds, warm, tp, lat) = if quick { (1, 0, 1, 1) } else { (5, 2, 3, 2) };
        Plan {
            rounds,
            warmup: Shape {
                connections: THROUGHPUT_CONNECTIONS,
                seconds: warm,
            },
            throughput: Shape {
                connections: THROUGHPUT_CONNECTIONS,
                seconds: tp,
            },
            latency: Shape {
                connections: 1,
                seconds: lat,
            },
        }
    }
}

/// Connections of the throughput runs: enough to keep one Envoy worker busy.
const THROUGHPUT_CONNECTIONS: u32 = 16;

/// The `.wasm` files the scenarios load.
const WASM_FILES: [&str; 5] = [
    "trace_propagation.wasm",
    "service_metrics.wasm",
    "route_retries.wasm",
    "mesh_sidecar.wasm",
    "bare_trace.wasm",
];

/// The filters' directory as an absolute path, once every filter of the bench is in it.
fn built_filters_dir() -> Result<PathBuf> {
    let dir = std::path::absolute(toolkit::filters_dir())
        .map_err(|e| format!("no absolute path for the filters' directory: {e}"))?;
    match missing_filter(&dir) {
        Some(missing) => Err(format!(
            "{} is missing: run `cargo xtask build` first",
            missing.display()
        )),
        None => Ok(dir),
    }
}

/// The first of [`WASM_FILES`] that `dir` does not hold.
fn missing_filter(dir: &Path) -> Option<PathBuf> {
    WASM_FILES
        .iter()
        .map(|file| dir.join(file))
        .find(|path| !path.is_file())
}

/// A scenario's running Envoy.
struct Running {
    scenario: Scenario,
    envoy: Envoy,
    /// The Envoy terminating the scenario's mutual TLS in front of the upstream (`tls`).
    _peer: Option<Envoy>,
}

fn run(options: &Options, command: &str) -> Result<()> {
    if options.cost_model {
        return cost::run(options.quick(), &options.only, options.rounds, command);
    }
    if options.instructions {
        return instructions::run(&options.only, command);
    }
    if options.vm_work {
        let filters_dir = std::path::absolute(toolkit::filters_dir())
            .map_err(|e| format!("no absolute path for the filters' directory: {e}"))?;
        return vmwork::run(&filters_dir);
    }
    let started = Instant::now();
    if cfg!(debug_assertions) {
        println!(
            "notice: meshwasm-bench was built without --release: its upstream then spends several \
             times more CPU per request, on the core wrk uses (`cargo xtask bench` runs a release \
             build)"
        );
    }
    let filters_dir = built_filters_dir()?;
    let bench_dir = workspace_root().join("bench");
    let (envoy, envoy_version) = toolkit::find::find_and_report()?;
    let wrk = load::ensure_wrk()?;
    let mut plan = Plan::new(options.quick());
    if let Some(rounds) = options.rounds {
        plan.rounds = rounds as usize;
    }
    let cpus = cpus::Cpus::detect();
    let machine = Machine {
        placement: cpus.describe(),
        ..Machine::read(&wrk)
    };

    println!("\n==> hostcalls per request (SDK test host)");
    let counts = hostcalls::count_all(&bench_dir.join("configs").join("filters"))?;
    for c in &counts {
        println!("{:<11} {:>3} hostcalls per request", c.filter, c.total());
    }
    let sizes = wasm_sizes(&filters_dir)?;

    cpus.pin_load_side()?;
    println!("CPU placement: {}", cpus.describe());
    let upstream = Upstream::start("upstream")?;
    let collector = Upstream::start("collector")?;
    let mut scenarios = scenario::select(scenario::all(options.concurrency), &options.only)?;
    if let Some(dir) = &options.against_filters {
        let dir = std::path::absolute(dir).map_err(|e| format!("--against-filters: {e}"))?;
        if let Some(missing) = missing_filter(&dir) {
            return Err(format!(
                "--against-filters: {} is missing",
                missing.display()
            ));
        }
        scenarios = scenario::with_twins(
            scenarios,
            &options.only,
            &bench_dir,
            &dir,
            &options.against_name(),
        )?;
    }
    let running = start_all(
        &envoy,
        &scenarios,
        &bench_dir,
        &filters_dir,
        &upstream,
        &collector,
        &cpus,
    )?;
    for r in &running {
        probe(r, &upstream)?;
    }
    println!("probes: every scenario's filters ran on a probe request");

    let headers = [("traceparent", hostcalls::TRACEPARENT)];
    let url = |r: &Running| {
        format!(
            "http://127.0.0.1:{}{}",
            r.envoy.listener_port(),
            hostcalls::PATH
        )
    };
    let mut measured = Vec::new();
    println!(
        "\n==> warm-up ({} s each), then RSS ({:.0} s since start)",
        plan.warmup.seconds,
        started.elapsed().as_secs_f64()
    );
    for r in &running {
        if plan.warmup.seconds > 0 {
            load::run(&wrk, &url(r), &headers, plan.warmup)?;
        }
        let rss_kib = r.envoy.rss_kib()?;
        let heap = r
            .envoy
            .admin_get("/memory")
            .ok()
            .and_then(|m| report::Heap::parse(&m.body));
        println!(
            "{:<17} RSS {:.1} MiB",
            r.scenario.key,
            rss_kib as f64 / 1024.0
        );
        measured.push(Measured {
            scenario: r.scenario.clone(),
            throughput: Vec::new(),
            latency: Vec::new(),
            envoy_cpu: Vec::new(),
            rss_kib,
            heap,
        });
    }
    for round in 1..=plan.rounds {
        println!(
            "\n==> round {round}/{}: {} connections for {} s, then 1 connection for {} s, per scenario",
            plan.rounds, plan.throughput.connections, plan.throughput.seconds, plan.latency.seconds
        );
        // Every other round runs the scenarios in reverse order, so no scenario always runs
        // right after the same one (a twin of --against-filters right after its scenario).
        let mut order: Vec<(&Running, &mut Measured)> =
            running.iter().zip(measured.iter_mut()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for (r, m) in order {
            let cpu_before = r.envoy.cpu_time()?;
            let tp = load::run(&wrk, &url(r), &headers, plan.throughput)?;
            let cpu = r.envoy.cpu_time()?.saturating_sub(cpu_before);
            let lat = load::run(&wrk, &url(r), &headers, plan.latency)?;
            println!(
                "{:<17} {:>8.0} req/s  Envoy CPU {:>5.1} us/req   p50 {:>7.1} us  p99 {:>7.1} us (1 connection)",
                r.scenario.key,
                tp.rps,
                cpu.as_secs_f64() * 1e6 / tp.requests.max(1) as f64,
                lat.p50_us,
                lat.p99_us
            );
            m.throughput.push(tp);
            m.envoy_cpu.push(cpu);
            m.latency.push(lat);
        }
    }
    let export = span_export(&running, &collector);
    drop(running);
    drop(collector);
    drop(upstream);

    sanity(&measured, &counts)?;
    let rows = report::rows(&measured);
    let targets = report::targets(&measured, &rows, &sizes);
    let versus = report::versus(&measured, &rows);
    let against = report::against(&measured);
    println!("\n{}", report::results_table(&rows));
    println!("{}", report::targets_table(&targets));
    println!("{}", report::versus_table(&versus));
    if !against.is_empty() {
        println!(
            "{}",
            report::against_table(&against, &options.against_name())
        );
    }
    let ctx = Context {
        command,
        options,
        plan: &plan,
        machine: &machine,
        envoy_version: &envoy_version,
        measured: &measured,
        rows: &rows,
        targets: &targets,
        versus: &versus,
        against: &against,
        counts: &counts,
        sizes: &sizes,
        export: &export,
        elapsed: started.elapsed(),
    };
    write_outputs(&ctx)?;
    let missed = targets.iter().filter(|t| !t.met).count();
    println!(
        "bench: {} scenarios, {} targets met, {missed} missed ({:.0} s)",
        rows.len(),
        targets.len() - missed,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts every scenario's Envoy at once, then waits for each to be ready. Each binds its
/// admin and listener on port 0; the toolkit reads the ports back.
fn start_all(
    envoy: &Path,
    scenarios: &[Scenario],
    bench_dir: &Path,
    filters_dir: &Path,
    upstream: &Upstream,
    collector: &Upstream,
    cpus: &cpus::Cpus,
) -> Result<Vec<Running>> {
    let run_dir = target_dir().join("bench").join("run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).map_err(|e| format!("clearing {}: {e}", run_dir.display()))?;
    }
    // Certificates for the mutual-TLS scenario: the caller `frontend`, the peer `orders`.
    let certs_dir = run_dir.join("certs");
    let mtls = scenarios
        .iter()
        .any(|s| s.filters.contains(&scenario::MTLS));
    if mtls {
        toolkit::certs::make_mesh(
            &certs_dir,
            toolkit::certs::DEFAULT_TRUST_DOMAIN,
            "bench",
            &["frontend", "orders"],
            toolkit::certs::DEFAULT_WORKLOAD_VALIDITY,
        )?;
    }
    let mut vars = scenario::base_vars(upstream.port(), collector.port(), filters_dir);
    vars.push(("CERTS_DIR".to_string(), certs_dir.display().to_string()));
    let mut running = Vec::new();
    for scenario in scenarios {
        let mut vars = vars.clone();
        let peer = if scenario.filters.contains(&scenario::MTLS) {
            let template = fs::read_to_string(bench_dir.join("configs").join("tls_peer.yaml"))
                .map_err(|e| format!("reading tls_peer.yaml: {e}"))?;
            let peer = Envoy::builder(&template)
                .name(&format!("{}-peer", scenario.key))
                .bin(envoy)
                .dir(&run_dir.join(format!("{}-peer", scenario.key)))
                .concurrency(scenario.concurrency)
                .log_level("warn")
                .var("PORT_UPSTREAM", upstream.port().to_string())
                .var("CERTS_DIR", certs_dir.display().to_string())
                .start()
                .map_err(|e| format!("scenario `{}`'s TLS peer: {e}", scenario.key))?;
            for (k, v) in &mut vars {
                if k == "PORT_UPSTREAM" {
                    *v = peer.listener_port().to_string();
                }
            }
            Some(peer)
        } else {
            None
        };
        let template = scenario::render(scenario, bench_dir, &vars)?;
        let envoy = Envoy::builder(&template)
            .name(&scenario.key)
            .bin(envoy)
            .dir(&run_dir.join(&scenario.key))
            .concurrency(scenario.concurrency)
            .log_level("warn")
            .wrapper(cpus.envoy_wrapper(scenario.concurrency))
            .spawn()
            .map_err(|e| format!("scenario `{}`: {e}", scenario.key))?;
        running.push(Running {
            scenario: scenario.clone(),
            envoy,
            _peer: peer,
        });
    }
    for r in &mut running {
        r.envoy.wait_ready(Duration::from_secs(120))?;
    }
    Ok(running)
}

/// One request through the scenario's Envoy, checked for the evidence its filters ran.
fn probe(r: &Running, upstream: &Upstream) -> Result<()> {
    let key = &r.scenario.key;
    upstream.capture_next();
    let response = toolkit::http_get(
        r.envoy.listener_port(),
        hostcalls::PATH,
        &[("traceparent", hostcalls::TRACEPARENT)],
    )
    .map_err(|e| format!("probe of `{key}`: {e}"))?;
    if response.status != 200 {
        return Err(format!(
            "probe of `{key}`: status {}: {response:?}",
            response.status
        ));
    }
    let head = wait_for(Duration::from_secs(5), || upstream.captured())
        .ok_or_else(|| format!("probe of `{key}`: the upstream saw no request"))?;
    let mut parts = hostcalls::TRACEPARENT.split('-').skip(1);
    let (trace, span) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    scenario::check_headers(&r.scenario.expect, &head, trace, span)
        .map_err(|e| format!("probe of `{key}`: {e}"))?;
    for e in &r.scenario.expect {
        if let Expect::Retried(tries) = e {
            // The upstream fails this one every time: the response tells how often Envoy tried.
            let failed = toolkit::http_get(
                r.envoy.listener_port(),
                hostcalls::PATH,
                &[
                    ("traceparent", hostcalls::TRACEPARENT),
                    (upstream::STATUS_HEADER, "503"),
                ],
            )
            .map_err(|e| format!("retry probe of `{key}`: {e}"))?;
            let attempts = failed.header("x-envoy-attempt-count").unwrap_or("none");
            if failed.status != 503 || attempts != tries.to_string() {
                return Err(format!(
                    "retry probe of `{key}`: expected 503 after {tries} tries, got {} after \
                     {attempts}: {failed:?}",
                    failed.status
                ));
            }
            println!("{key:<17} retry probe: 503 after {attempts} tries");
        }
    }
    for e in &r.scenario.expect {
        if let Expect::Stat(name) = e {
            let counted = wait_for(Duration::from_secs(10), || {
                stats_matching(&r.envoy, name)
                    .iter()
                    .any(|(_, v)| *v >= 1)
                    .then_some(())
            });
            if counted.is_none() {
                return Err(format!(
                    "probe of `{key}`: no stat `{name}` counted the probe; log:\n{}",
                    r.envoy.log()
                ));
            }
        }
    }
    for e in &r.scenario.expect {
        if let Expect::Zero(name) = e {
            // The log phase of the last probe has run once its span or metric is out; a
            // moment more for it to settle.
            std::thread::sleep(Duration::from_millis(200));
            let found = stats_matching(&r.envoy, name);
            if found.is_empty() || found.iter().any(|(_, v)| *v != 0) {
                return Err(format!(
                    "probe of `{key}`: stat `{name}` should exist at 0, got {found:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Counter and gauge lines of `envoy`'s admin `/stats` whose names contain `filter`.
fn stats_matching(envoy: &Envoy, filter: &str) -> Vec<(String, u64)> {
    envoy
        .stats()
        .lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            let value = value.trim().parse().ok()?;
            name.contains(filter).then(|| (name.to_string(), value))
        })
        .collect()
}

fn wait_for<T>(patience: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What became of the spans of the scenarios that export them (`meshwasm_trace_spans_total`
/// by outcome; Envoy's native tracers: their `tracing.<tracer>.*` counters), and how many
/// export requests the collector answered.
struct Export {
    lines: Vec<(String, Vec<(String, u64)>)>,
    collector_requests: u64,
}

fn span_export(running: &[Running], collector: &Upstream) -> Export {
    let lines = running
        .iter()
        .filter(|r| {
            let f = &r.scenario.filters;
            f.contains(&"trace_propagation.yaml") || f.contains(&"mesh_sidecar.yaml")
        })
        .map(|r| {
            let stats = stats_matching(&r.envoy, "meshwasm_trace_spans_total;.outcome=")
                .into_iter()
                .filter_map(|(name, v)| Some((name.rsplit_once('=')?.1.to_string(), v)))
                .collect();
            (r.scenario.key.clone(), stats)
        })
        .chain(running.iter().filter_map(|r| {
            let prefix = r.scenario.native_tracer()?;
            let stats = stats_matching(&r.envoy, prefix)
                .into_iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .collect();
            Some((r.scenario.key.clone(), stats))
        }))
        .collect();
    Export {
        lines,
        collector_requests: collector.requests(),
    }
}

/// The smoke check: every run produced requests without errors and plausible figures.
fn sanity(measured: &[Measured], counts: &[hostcalls::Counts]) -> Result<()> {
    let mut problems = Vec::new();
    for m in measured {
        let key = &m.scenario.key;
        for s in m.throughput.iter().chain(&m.latency) {
            if s.requests == 0 || s.rps.is_nan() || s.rps <= 0.0 {
                problems.push(format!("{key}: no requests completed ({s:?})"));
            }
            if s.errors > 0 {
                problems.push(format!(
                    "{key}: {} failed requests or socket errors",
                    s.errors
                ));
            }
            if s.p50_us.is_nan() || s.p50_us <= 0.0 || s.p99_us < s.p50_us {
                problems.push(format!("{key}: implausible latency ({s:?})"));
            }
        }
        if m.throughput.is_empty() || m.latency.is_empty() {
            problems.push(format!("{key}: no runs"));
        }
        if m.envoy_cpu.len() != m.throughput.len() || m.envoy_cpu.iter().any(|c| c.is_zero()) {
            problems.push(format!(
                "{key}: no Envoy CPU time measured over a throughput run ({:?})",
                m.envoy_cpu
            ));
        }
        if m.rss_kib == 0 {
            problems.push(format!("{key}: no RSS"));
        }
    }
    for c in counts {
        if c.total() == 0 {
            problems.push(format!("hostcalls of {}: none counted", c.filter));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the bench produced unusable numbers:\n{}",
            problems.join("\n")
        ))
    }
}

fn wasm_sizes(dir: &Path) -> Result<Vec<WasmSize>> {
    let mut sizes: Vec<WasmSize> = fs::read_dir(dir)
        .map_err(|e| format!("listing {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".wasm") && !name.ends_with(".opt.wasm")
        })
        .filter_map(|e| {
            Some(WasmSize {
                file: e.file_name().to_string_lossy().into_owned(),
                bytes: e.metadata().ok()?.len(),
            })
        })
        .collect();
    sizes.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(sizes)
}

/// What the machine is, for the report.
struct Machine {
    cpu: String,
    cores: usize,
    memory: String,
    kernel: String,
    load_before: String,
    wrk: String,
    placement: String,
    date: String,
}

fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

impl Machine {
    fn read(wrk: &Path) -> Machine {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .split_once(':')
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".to_string())
        };
        let memory = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".to_string());
        Machine {
            cpu: format!("{} (model {})", field("model name"), field("model\t")),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_before: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            wrk: first_line(Command::new(wrk).arg("-v")),
            placement: String::new(),
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        }
    }
}

/// Everything the report shows.
struct Context<'a> {
    command: &'a str,
    options: &'a Options,
    plan: &'a Plan,
    machine: &'a Machine,
    envoy_version: &'a str,
    measured: &'a [Measured],
    rows: &'a [report::Row],
    targets: &'a [report::Target],
    versus: &'a [report::Versus],
    against: &'a [report::Against],
    counts: &'a [hostcalls::Counts],
    sizes: &'a [WasmSize],
    export: &'a Export,
    elapsed: Duration,
}

/// Quick runs write `target/bench/quick.{md,svg,csv}`; full runs `BENCHMARKS.md`,
/// `docs/bench.svg` and `target/bench/bench.{svg,csv}`.
fn write_outputs(ctx: &Context<'_>) -> Result<()> {
    let out_dir = target_dir().join("bench");
    let write = |path: PathBuf, text: &str| -> Result<PathBuf> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    };
    let title = format!(
        "meshwasm filters in Envoy {}: cost against no filter (cargo xtask bench{})",
        ctx.envoy_version,
        if ctx.options.partial() {
            " --quick or --only"
        } else {
            ""
        }
    );
    let svg = report::svg_chart(ctx.rows, &title);
    let csv = samples_csv(ctx.measured);
    let mut written = Vec::new();
    if ctx.options.partial() {
        written.push(write(out_dir.join("quick.svg"), &svg)?);
        written.push(write(out_dir.join("quick.csv"), &csv)?);
        written.push(write(
            out_dir.join("quick.md"),
            &markdown(ctx, "quick.svg"),
        )?);
    } else {
        written.push(write(out_dir.join("bench.svg"), &svg)?);
        written.push(write(out_dir.join("bench.csv"), &csv)?);
        written.push(write(
            workspace_root().join("docs").join("bench.svg"),
            &svg,
        )?);
        written.push(write(
            workspace_root().join("BENCHMARKS.md"),
            &markdown(ctx, "docs/bench.svg"),
        )?);
    }
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Every run, one line each. The Envoy CPU columns (seconds over the run, microseconds per
/// request) are filled for the throughput runs, where it is measured.
fn samples_csv(measured: &[Measured]) -> String {
    let mut csv = String::from(
        "scenario,concurrency,round,shape,connections,rps,p50_us,p99_us,requests,errors,\
         envoy_cpu_s,envoy_cpu_us_per_request\n",
    );
    for m in measured {
        let cpu_per_request = m.cpu_us_per_request();
        for (shape, samples, conns) in [
            ("throughput", &m.throughput, THROUGHPUT_CONNECTIONS),
            ("latency", &m.latency, 1),
        ] {
            for (i, s) in samples.iter().enumerate() {
                let cpu = match (shape, m.envoy_cpu.get(i), cpu_per_request.get(i)) {
                    ("throughput", Some(cpu), Some(per)) => {
                        format!("{:.3},{per:.2}", cpu.as_secs_f64())
                    }
                    _ => ",".to_string(),
                };
                let _ = writeln!(
                    csv,
                    "{},{},{},{shape},{conns},{:.1},{:.1},{:.1},{},{},{cpu}",
                    m.scenario.key,
                    m.scenario.concurrency,
                    i + 1,
                    s.rps,
                    s.p50_us,
                    s.p99_us,
                    s.requests,
                    s.errors
                );
            }
        }
    }
    csv
}

/// RSS figures of the extra worker (scenario 6), when both concurrencies ran.
fn extra_worker(rows: &[report::Row]) -> Option<String> {
    let r = |k: &str| rows.iter().find(|r| r.key == k);
    let (b1, a1, b2, a2) = (r("baseline")?, r("all3")?, r("baseline-c2")?, r("all3-c2")?);
    Some(format!(
        "Going from {} to {} workers costs {:.1} MiB of RSS with all three filters \
         ({:.1} MiB without filters); the filters' share of the extra worker (three more VMs) is \
         {:.1} MiB. All three filters cost {:.1} MiB over the baseline at {} worker(s) and \
         {:.1} MiB at {} workers (Envoy also keeps one VM per filter on its main thread).",
        a1.concurrency,
        a2.concurrency,
        a2.rss_mib - a1.rss_mib,
        b2.rss_mib - b1.rss_mib,
        a2.added_rss_mib - a1.added_rss_mib,
        a1.added_rss_mib,
        a1.concurrency,
        a2.added_rss_mib,
        a2.concurrency
    ))
}

fn markdown(ctx: &Context<'_>, chart: &str) -> String {
    let m = ctx.machine;
    let p = ctx.plan;
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `{}` on {} ({:.0} s). Do not edit by hand: run the command again. The \
         analysis at the end comes from `bench/FINDINGS.md`.\n",
        ctx.command,
        m.date,
        ctx.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "![added Envoy CPU time per request, throughput and added latency per scenario]({chart})\n"
    );
    let _ = writeln!(
        s,
        "## Targets (issue #13)\n\nOn Envoy's CPU time per request (see Results) unless said.\n\n{}",
        report::targets_table(ctx.targets)
    );
    let _ = writeln!(
        s,
        "## Results\n\nThe headline is **Envoy's CPU time per request**: the CPU time (utime + \
         stime from `/proc`) the Envoy process spent over a round's throughput run, divided by \
         the requests it served in that run; added over no filter (`baseline`) and over the wasm \
         floor (`{floor}`, an empty wasm filter), each paired with the same round's run of that \
         scenario. It counts only the CPU Envoy itself spent, so it moves less than throughput when \
         other processes take time from Envoy's core. Throughput, latency and RSS are secondary.\n\n\
         Throughput: {} keep-alive connections for {} s per round; latency: one \
         connection for {} s per round; {} interleaved round(s) after a {} s warm-up per scenario. \
         Figures are the median over rounds with (min to max); ratios and added figures are \
         paired with the baseline of the same round (`added us/request from req/s` is 1/throughput \
         over the baseline's, wall time per request at saturation). RSS is Envoy's `VmRSS` after \
         the warm-up.\n",
        p.throughput.connections,
        p.throughput.seconds,
        p.latency.seconds,
        p.rounds,
        p.warmup.seconds,
        floor = report::FLOOR,
    );
    s.push_str(&report::results_table(ctx.rows));
    if !ctx.against.is_empty() {
        let name = ctx.options.against_name();
        let _ = writeln!(
            s,
            "\n### Against {name}\n\nEach scenario twice in every round: with this tree's \
             filters and with those built from {name} (`<scenario>@old` above), run one after \
             the other, so the difference is paired per round. On this machine a difference \
             that most rounds agree on is a change; a median alone is not.\n\n{}",
            report::against_table(ctx.against, &name)
        );
    }
    if let Some(text) = extra_worker(ctx.rows) {
        let _ = writeln!(s, "\n{text}");
    }
    let _ = writeln!(
        s,
        "\n### Where the RSS goes\n\nAt one worker, after the warm-up, from Envoy's admin \
         `/memory` (its allocator, tcmalloc) read with the RSS: the heap in use (`allocated`), \
         what the allocator holds mapped but free for later allocations (`heap_size` - \
         `pageheap_unmapped` - `allocated`: free pages and per-CPU caches), and the rest of RSS, \
         outside that heap (the binary, stacks, and what V8 maps itself: compiled wasm code and \
         the VMs' linear memories). MiB, added over no filter in brackets.\n\n{}",
        report::memory_table(ctx.measured)
    );
    if !ctx.versus.is_empty() {
        let _ = writeln!(
            s,
            "\n## Each filter against native Envoy\n\nThe same job done by Envoy without wasm \
             (scenarios `native-*`): Envoy CPU per request, paired per round. `native-trace` \
             exports Zipkin v2 protobuf, Envoy's cheapest Zipkin encoding, `native-trace-json` the \
             JSON our trace filter sends. `native-all` is native tracing (as `native-trace`) and \
             native retries; service-metrics has no native counterpart in Envoy, so against it \
             `all3` and `mesh` also pay for their metrics.\n\n{}",
            report::versus_table(ctx.versus)
        );
    }
    let _ = writeln!(
        s,
        "\n## Hostcalls per request\n\nCounted on the SDK test host (`bench/runner/src/hostcalls.rs`) \
         for one steady-state request as Envoy presents the bench request, with the scenario \
         configs. Each call is one proxy-wasm hostcall in Envoy. Span export adds, per batch of \
         spans, one `proxy_http_call` from the root's tick; not shown.\n"
    );
    s.push_str(&report::hostcalls_table(ctx.counts));
    let _ = writeln!(
        s,
        "\n## Wasm sizes\n\n`target/filters/` after `cargo xtask build` (`wasm-opt -Oz`).\n\n{}",
        report::sizes_table(ctx.sizes)
    );
    let _ = writeln!(
        s,
        "## Span export during the run\n\nOur filters: `meshwasm_trace_spans_total` by outcome. \
         Envoy's native tracers: their own counters (`reports_sent` counts the collector's `202`, \
         as a Zipkin collector answers).\n"
    );
    for (key, stats) in &ctx.export.lines {
        let list: Vec<String> = stats.iter().map(|(o, v)| format!("{o} {v}")).collect();
        let _ = writeln!(s, "- `{key}`: {}", list.join(", "));
    }
    let _ = writeln!(
        s,
        "- collector: {} export requests answered\n",
        ctx.export.collector_requests
    );
    let _ = writeln!(
        s,
        "## Machine and method\n\n\
         - command: `{}`\n- Envoy {} (`--concurrency {}`, V8 runtime, log level warn)\n\
         - CPU: {}; {} cores; memory {}; kernel {}\n- load average when the run started: {}\n\
         - load generator: {}\n- CPU placement: {}\n\n\
         Every scenario is one Envoy with the bootstrap `bench/configs/sidecar.yaml` and the \
         filters of `bench/configs/filters/` before the router (the `native-*` scenarios: \
         connection-manager settings of `bench/configs/hcm/` and route settings of \
         `bench/configs/route/` instead); all proxy to the same upstream, \
         a keep-alive HTTP/1.1 server inside the bench process (the toolkit's server, one \
         event-loop thread, `200 ok`). Every request is `GET {}` with `traceparent: {}` (sampled), so the trace \
         filters take the propagation path and the shipped trace config exports every span. \
         All Envoys start together and stay up; the runs interleave, every other round in \
         reverse order (A B C ... C B A ...), so slow drifts of this shared 2-core machine hit \
         every scenario alike. The spread columns \
         show how much it moved.\n\n\
         Why `wrk`: a C closed-loop generator with keep-alive connections, an event loop per \
         thread and HdrHistogram percentiles (`--latency`); one thread spends a few \
         microseconds per request, less than a Rust client of ours would on `std::net`, and \
         shares the load core with the upstream while Envoy's worker has its own (see CPU \
         placement above). It comes from Debian's package, installed by \
         the task when missing. Its latencies are those of a closed loop (no coordinated-omission \
         correction), which is right for \"added latency per request\" at one connection.\n",
        ctx.command,
        ctx.envoy_version,
        ctx.options.concurrency,
        m.cpu,
        m.cores,
        m.memory,
        m.kernel,
        m.load_before,
        m.wrk,
        m.placement,
        hostcalls::PATH,
        hostcalls::TRACEPARENT,
    );
    let _ = writeln!(s, "### Scenarios\n");
    for r in ctx.rows {
        let scenario = ctx.measured.iter().find(|m| m.scenario.key == r.key);
        let filters = scenario
            .map(|m| {
                m.scenario
                    .filters
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "- `{}`: {} (workers {}; configuration: {})",
            r.key,
            r.label,
            r.concurrency,
            if filters.is_empty() {
                "none".to_string()
            } else {
                filters
            }
        );
    }
    // Sections kept by hand beside the generated ones: the findings, and the propagation
    // component's figures (`cargo xtask component-bench`, not measured here).
    for file in ["FINDINGS.md", "COMPONENT.md"] {
        if let Ok(text) = fs::read_to_string(workspace_root().join("bench").join(file)) {
            let _ = writeln!(s, "\n{}", text.trim_end());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> std::result::Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("meshwasm-bench").chain(list.iter().copied()))
    }

    #[test]
    fn parses_options() -> std::result::Result<(), clap::Error> {
        assert_eq!(parse(&[])?, Options::default());
        let o = parse(&["--quick", "--concurrency", "2", "--no-build"])?;
        assert_eq!(
            o,
            Options {
                quick: true,
                smoke: false,
                concurrency: 2,
                no_build: true,
                cost_model: false,
                vm_work: false,
                instructions: false,
                only: Vec::new(),
                rounds: None,
                against_filters: None,
                against_label: None,
            }
        );
        assert!(o.quick());
        let against = parse(&["--only", "mesh", "--against-filters", "old/filters"])?;
        assert_eq!(against.against_filters, Some(PathBuf::from("old/filters")));
        assert!(against.partial());
        assert_eq!(against.against_name(), "old/filters");
        assert!(parse(&["--against-label", "HEAD~1"]).is_err());
        let only = parse(&["--only", "mesh,trace-core", "--rounds", "3"])?;
        assert_eq!(only.only, ["mesh", "trace-core"]);
        assert_eq!(only.rounds, Some(3));
        assert!(only.partial() && !only.quick());
        assert!(parse(&["--rounds", "0"]).is_err());
        let smoke = parse(&["--smoke"])?;
        assert!(smoke.quick() && !smoke.quick);
        assert!(parse(&["--concurrency"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--concurrency", "65"]).is_err());
        assert!(parse(&["--fast"]).is_err());
        let counted = parse(&["--instructions", "--only", "trace-core,probe"])?;
        assert!(counted.instructions && counted.only == ["trace-core", "probe"]);
        assert!(parse(&["--instructions", "--vm-work"]).is_err());
        Ok(())
    }

    #[test]
    fn help_names_every_option() {
        let help = match parse(&["--help"]) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
            other => panic!("--help did not print help: {other:?}"),
        };
        for option in ["--quick", "--smoke", "--concurrency <N>", "--no-build"] {
            assert!(help.contains(option), "{option} missing from:\n{help}");
        }
    }
}
