//! The cost model of issue 13 (`--cost-model`): what each kind of proxy-wasm host interaction
//! costs inside Envoy, as Envoy CPU time per call. For every kind, single-worker Envoys run
//! `bench/cost-probe` configured to do it `n` times per request (`n` = 0 and two more values);
//! the slope of Envoy's CPU time per request over `n`, fitted per round, is the price of one
//! call. The rounds interleave the `n` of one kind with a no-filter Envoy, so the floor (a wasm
//! filter that does nothing, against none) is measured alongside; a call into the VM for a phase
//! is the probe against a copy of it without some phase exports. The shipped filters then run
//! in the same conditions, and each one's cost is set against the sum of its parts: the floor
//! per module plus its hostcalls per request (counted on the SDK test host) times their
//! prices. Writes `target/bench/cost-model.md` and `.csv`; the published price list, with the
//! analysis, is `sdk/docs/cost-model.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use toolkit::{target_dir, workspace_root, Envoy};

use crate::cpus::Cpus;
use crate::hostcalls::{self, Counts};
use crate::load::{self, Shape};
use crate::report::Spread;
use crate::scenario::{self, Scenario};
use crate::upstream::Upstream;
use crate::Result;

/// One kind of host interaction: the probe configuration whose slope over `n` is its price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// Short key, in the tables and the CSV.
    pub key: &'static str,
    /// The proxy-wasm hostcall (the ABI name).
    pub hostcall: &'static str,
    /// What exactly is measured.
    pub label: &'static str,
    /// The probe's `op`.
    pub op: &'static str,
    /// The probe's `arg`.
    pub arg: Option<&'static str>,
    /// The probe's `phase`.
    pub phase: &'static str,
    /// A second op done once per request as well (the probe's `then`, as JSON): set for the
    /// first-call kinds, whose "slope" is one request's op against the floor.
    pub then: Option<&'static str>,
}

impl Kind {
    /// The probe's JSON configuration for `n` calls per request.
    pub fn config(&self, n: u32) -> String {
        let arg = self
            .arg
            .map(|a| format!(r#","arg":"{a}""#))
            .unwrap_or_default();
        let then = self
            .then
            .map(|t| format!(r#","then":{t}"#))
            .unwrap_or_default();
        format!(
            r#"{{"op":"{}","n":{n}{arg},"phase":"{}"{then}}}"#,
            self.op, self.phase
        )
    }

    /// A first-call kind: one call per request (and its `then`), against the floor.
    fn first(&self) -> bool {
        self.key.starts_with(FIRST_PREFIX)
    }

    /// A callout pauses the request until its answers arrive: a fixed cost that `n` = 0 does not
    /// pay, so its slope is fitted over its `n` > 0 only.
    fn pauses(&self) -> bool {
        self.op == "http_call"
    }

    /// The `n` values measured besides 0.
    fn ns(&self, quick: bool) -> &'static [u32] {
        if self.first() {
            return &[1];
        }
        match (self.pauses(), quick) {
            (true, false) => &[1, 4, 16],
            (true, true) => &[1, 16],
            (false, false) => &[64, 256],
            (false, true) => &[256],
        }
    }
}

const fn kind(
    key: &'static str,
    hostcall: &'static str,
    label: &'static str,
    op: &'static str,
    arg: Option<&'static str>,
    phase: &'static str,
) -> Kind {
    Kind {
        key,
        hostcall,
        label,
        op,
        arg,
        phase,
        then: None,
    }
}

/// The key prefix of the first-call kinds (`--cost-model --only first_property`).
const FIRST_PREFIX: &str = "first_";

/// A first-call kind: the probe does `op` once per request, then `then` once if given. Its
/// price is the whole request's cost over the floor, paired per round: what the first call of a
/// kind costs where the line through many calls gives only the marginal price.
const fn first(
    key: &'static str,
    label: &'static str,
    (op, arg, phase): (&'static str, Option<&'static str>, &'static str),
    then: Option<&'static str>,
) -> Kind {
    Kind {
        key,
        hostcall: "(one request)",
        label,
        op,
        arg,
        phase,
        then,
    }
}

/// The probe's `then` reading `xds.route_name` at the end of the stream.
const THEN_ROUTE: &str = r#"{"op":"get_property","n":1,"arg":"xds.route_name","phase":"log"}"#;

const REQ: &str = "request_headers";
const LOG: &str = "log";

/// The property paths the shipped filters read (bench hostcall table), each read in `on_log`
/// as the filters read most of them, when every one has its value.
pub const PROPERTIES: [&str; 11] = [
    "xds.route_name",
    "xds.cluster_name",
    "request.duration",
    "response.code",
    "response.flags",
    "upstream.address",
    "destination.address",
    "request.protocol",
    "request.total_size",
    "response.total_size",
    "upstream.uri_san_peer_certificate",
];

/// The kinds, in groups measured in the same rounds (a group's kinds pair round by round: the
/// header read present and absent, whose difference is the VM allocation of a returned value).
pub fn groups() -> Vec<Vec<Kind>> {
    let mut groups = vec![
        vec![
            kind(
                "get_header",
                "proxy_get_header_map_value",
                "get one request header, present (`traceparent`, 55 bytes): its value is copied into the VM",
                "get_header",
                Some("traceparent"),
                REQ,
            ),
            kind(
                "get_header_absent",
                "proxy_get_header_map_value",
                "get one request header, absent (`x-absent`): `NotFound`, nothing copied",
                "get_header",
                Some("x-absent"),
                REQ,
            ),
        ],
        vec![kind(
            "get_headers",
            "proxy_get_header_map_pairs",
            "get all request headers (the bench request: 7 headers, 150 bytes)",
            "get_headers",
            None,
            REQ,
        )],
        vec![kind(
            "replace_header",
            "proxy_replace_header_map_value",
            "replace a request header (`x-b3-spanid`, 16 bytes)",
            "replace_header",
            Some("x-b3-spanid"),
            REQ,
        )],
    ];
    for (i, path) in PROPERTIES.iter().enumerate() {
        groups.push(vec![kind(
            PROPERTY_KEYS[i],
            "proxy_get_property",
            PROPERTY_LABELS[i],
            "get_property",
            Some(path),
            LOG,
        )]);
    }
    groups.extend([
        vec![kind(
            "increment_counter",
            "proxy_increment_metric",
            "increment a counter (defined at configure time)",
            "increment_counter",
            None,
            REQ,
        )],
        vec![kind(
            "record_histogram",
            "proxy_record_metric",
            "record a histogram value (defined at configure time)",
            "record_histogram",
            None,
            REQ,
        )],
        vec![kind(
            "get_shared_data",
            "proxy_get_shared_data",
            "get a shared-data key (24-byte value)",
            "get_shared_data",
            Some("cost-probe/get"),
            REQ,
        )],
        vec![kind(
            "set_shared_data",
            "proxy_set_shared_data",
            "set a shared-data key (24-byte value, no compare-and-swap)",
            "set_shared_data",
            Some("cost-probe/set"),
            REQ,
        )],
        vec![kind(
            "current_time",
            "proxy_get_current_time_nanoseconds",
            "read the clock",
            "current_time",
            None,
            REQ,
        )],
        vec![
            kind(
                "expr_one",
                "proxy_call_foreign_function",
                "evaluate a CEL expression of one property (`xds.route_name`), created once with \
                 `expr_create`",
                "expr_evaluate",
                Some("xds.route_name"),
                LOG,
            ),
            kind(
                "expr_list_has",
                "proxy_call_foreign_function",
                "evaluate a CEL list of the same 9 properties, each as `has(p) ? [p] : []` (absent \
                 ones as an empty list)",
                "expr_evaluate",
                Some(EXPR_LIST_HAS),
                LOG,
            ),
            kind(
                "expr_list",
                "proxy_call_foreign_function",
                "evaluate a CEL list of the 9 properties mesh-sidecar reads at the end of the \
                 stream, the certificate (absent without mTLS) guarded by `has()`",
                "expr_evaluate",
                Some(EXPR_LIST),
                LOG,
            ),
        ],
        vec![
            first(
                "first_property",
                "one property read per request (`xds.route_name`, log)",
                ("get_property", Some("xds.route_name"), LOG),
                None,
            ),
            first(
                "first_two_properties",
                "two property reads (`response.flags`, then `xds.route_name`, log)",
                ("get_property", Some("response.flags"), LOG),
                Some(THEN_ROUTE),
            ),
            first(
                "first_counter",
                "one counter increment per request (log)",
                ("increment_counter", None, LOG),
                None,
            ),
            first(
                "first_counter_property",
                "a counter increment, then a property read (log)",
                ("increment_counter", None, LOG),
                Some(THEN_ROUTE),
            ),
            first(
                "first_header",
                "one header read per request (`traceparent`, request headers)",
                ("get_header", Some("traceparent"), REQ),
                None,
            ),
            first(
                "first_header_property",
                "a header read (request headers), then a property read (log)",
                ("get_header", Some("traceparent"), REQ),
                Some(THEN_ROUTE),
            ),
        ],
        vec![kind(
            "http_call",
            "proxy_http_call",
            "an HTTP callout to a local upstream, the request paused until every answer: \
             dispatch, Envoy's side of the exchange, `proxy_on_http_call_response`",
            "http_call",
            Some("collector"),
            REQ,
        )],
    ]);
    groups
}

/// The properties mesh-sidecar reads at the end of the stream, as one CEL list (JSON-escaped:
/// it goes into the probe's JSON configuration, inside a single-quoted YAML string).
const EXPR_LIST: &str = "[destination.address, request.protocol, request.total_size, \
     response.flags, response.total_size, upstream.address, \
     has(upstream.uri_san_peer_certificate) ? upstream.uri_san_peer_certificate : \\\"\\\", \
     xds.cluster_name, xds.route_name]";

/// The same properties, each wrapped so that an absent one is an empty list.
const EXPR_LIST_HAS: &str = "[has(destination.address) ? [destination.address] : [], \
     has(request.protocol) ? [request.protocol] : [], \
     has(request.total_size) ? [request.total_size] : [], \
     has(response.flags) ? [response.flags] : [], \
     has(response.total_size) ? [response.total_size] : [], \
     has(upstream.address) ? [upstream.address] : [], \
     has(upstream.uri_san_peer_certificate) ? [upstream.uri_san_peer_certificate] : [], \
     has(xds.cluster_name) ? [xds.cluster_name] : [], \
     has(xds.route_name) ? [xds.route_name] : []]";

const PROPERTY_KEYS: [&str; 11] = [
    "property xds.route_name",
    "property xds.cluster_name",
    "property request.duration",
    "property response.code",
    "property response.flags",
    "property upstream.address",
    "property destination.address",
    "property request.protocol",
    "property request.total_size",
    "property response.total_size",
    // service-metrics' source side: the upstream's verified certificate (issue 14). Absent in
    // the bench (plain upstream), as on any connection without mTLS.
    "property upstream.uri_san_peer_certificate",
];

const PROPERTY_LABELS: [&str; 11] = [
    "get property `xds.route_name` (string)",
    "get property `xds.cluster_name` (string)",
    "get property `request.duration` (duration, 8 bytes)",
    "get property `response.code` (int, 8 bytes)",
    "get property `response.flags` (int, 8 bytes)",
    "get property `upstream.address` (string)",
    "get property `destination.address` (string)",
    "get property `request.protocol` (string)",
    "get property `request.total_size` (int, 8 bytes)",
    "get property `response.total_size` (int, 8 bytes)",
    "get property `upstream.uri_san_peer_certificate` (string, absent without mTLS)",
];

/// The request headers of the bench request as the filters see them (a read of one of these
/// finds a value; any other is absent).
const REQUEST_HEADERS: [&str; 7] = [
    ":authority",
    ":path",
    ":method",
    ":scheme",
    "traceparent",
    "x-forwarded-proto",
    "x-request-id",
];

/// The response headers of the bench upstream's answer as the filters see them.
const RESPONSE_HEADERS: [&str; 5] = [
    ":status",
    "content-type",
    "content-length",
    "x-envoy-upstream-service-time",
    "x-envoy-attempt-count",
];

/// The shipped-filter scenarios set against their parts (keys of [`scenario::all`]), and how
/// many wasm modules each puts in the chain.
const FILTERS: [(&str, u32); 9] = [
    ("wasm-noop", 1),
    ("sdk-noop", 1),
    ("bare", 1),
    ("trace-core", 1),
    ("trace", 1),
    ("metrics", 1),
    ("retries", 1),
    ("all3", 3),
    ("mesh", 1),
];

/// Durations and rounds.
struct Plan {
    /// Rounds of each group of kinds.
    rounds: usize,
    /// Rounds of the shipped filters (fewer groups, so more rounds for the same time).
    filter_rounds: usize,
    seconds: u32,
    warmup: u32,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                filter_rounds: 1,
                seconds: 1,
                warmup: 0,
            }
        } else {
            Plan {
                rounds: 5,
                filter_rounds: 7,
                seconds: 2,
                warmup: 2,
            }
        }
    }
}

/// Connections of every run: enough to keep one Envoy worker busy (as the bench's).
const CONNECTIONS: u32 = 16;

/// One run: Envoy CPU time over the requests wrk completed.
#[derive(Clone, Debug)]
struct Run {
    requests: u64,
    errors: u64,
    cpu: Duration,
}

impl Run {
    fn us_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
    fn valid(&self) -> bool {
        self.requests > 0 && self.errors == 0
    }
}

/// Everything the run needs to start and drive Envoys.
struct Bench {
    envoy_bin: PathBuf,
    wrk: PathBuf,
    bench_dir: PathBuf,
    run_dir: PathBuf,
    vars: Vec<(String, String)>,
    /// The built probe (`cost_probe.wasm`).
    probe_wasm: PathBuf,
    cpus: Cpus,
    plan: Plan,
    csv: String,
}

impl Bench {
    /// Spawns the Envoy of `scenario`; a probe's JSON configuration and `.wasm` go into
    /// `{{PROBE_CONFIG}}` and `{{PROBE_WASM}}`.
    fn start(&self, key: &str, scenario: &Scenario, probe: Option<(&str, &Path)>) -> Result<Envoy> {
        let mut vars = self.vars.clone();
        let (config, wasm) = probe.unwrap_or(("", Path::new("")));
        vars.extend(probe_vars(config, wasm));
        let template = scenario::render(scenario, &self.bench_dir, &vars)?;
        Envoy::builder(&template)
            .name(key)
            .bin(&self.envoy_bin)
            .dir(&self.run_dir.join(key))
            .concurrency(1)
            .log_level("warn")
            .wrapper(self.cpus.envoy_wrapper(1))
            .spawn()
            .map_err(|e| format!("cost model `{key}`: {e}"))
    }

    /// Spawns the probe doing `kind` `n` times per request (`None`: nothing, the floor).
    fn start_probe(&self, kind: Option<&Kind>, n: u32) -> Result<Envoy> {
        let (key, scenario, config) = probe_scenario(kind, n);
        self.start(&key, &scenario, Some((&config, &self.probe_wasm)))
    }

    fn url(envoy: &Envoy) -> String {
        format!(
            "http://127.0.0.1:{}{}",
            envoy.listener_port(),
            hostcalls::PATH
        )
    }

    fn shape(&self, seconds: u32) -> Shape {
        Shape {
            connections: CONNECTIONS,
            seconds,
        }
    }

    fn warm_up(&self, envoy: &Envoy) -> Result<()> {
        if self.plan.warmup > 0 {
            load::run(
                &self.wrk,
                &Self::url(envoy),
                &headers(),
                self.shape(self.plan.warmup),
            )?;
        }
        Ok(())
    }

    /// One measured run, recorded in the CSV under `group`, `key`, `n` and `round`.
    fn measure(
        &mut self,
        envoy: &Envoy,
        (group, key, n, round): (&str, &str, u32, usize),
    ) -> Result<Run> {
        let before = envoy.cpu_time()?;
        let sample = load::run(
            &self.wrk,
            &Self::url(envoy),
            &headers(),
            self.shape(self.plan.seconds),
        )?;
        let cpu = envoy.cpu_time()?.saturating_sub(before);
        let run = Run {
            requests: sample.requests,
            errors: sample.errors,
            cpu,
        };
        let _ = writeln!(
            self.csv,
            "{group},{key},{n},{round},{},{},{:.3},{:.2}",
            run.requests,
            run.errors,
            run.cpu.as_secs_f64(),
            run.us_per_request()
        );
        if !run.valid() {
            println!(
                "warning: `{key}` n={n} round {round}: {} requests, {} errors; run left out",
                run.requests, run.errors
            );
        }
        Ok(run)
    }
}

/// The bench request's headers.
fn headers() -> [(&'static str, &'static str); 1] {
    [("traceparent", hostcalls::TRACEPARENT)]
}

/// The template variables of the probe's snippet: its JSON configuration and its `.wasm`.
pub fn probe_vars(config: &str, wasm: &Path) -> [(String, String); 2] {
    [
        ("PROBE_CONFIG".to_string(), config.to_string()),
        ("PROBE_WASM".to_string(), wasm.display().to_string()),
    ]
}

/// The built probe's file in the filters' directory.
pub const PROBE_WASM: &str = "cost_probe.wasm";

/// The scenario of the probe doing `kind` `n` times (`None`: nothing, the floor).
pub fn probe_scenario(kind: Option<&Kind>, n: u32) -> (String, Scenario, String) {
    let (key, config) = match kind {
        Some(k) => (
            format!("{}-{n}", k.key.replace([' ', '.'], "-")),
            k.config(n),
        ),
        None => ("floor".to_string(), r#"{"op":"noop"}"#.to_string()),
    };
    let scenario = Scenario {
        key: key.clone(),
        label: format!("cost-probe {config}"),
        filters: vec![PROBE_SNIPPET],
        concurrency: 1,
        baseline: "none".to_string(),
        expect: Vec::new(),
        filters_dir: None,
    };
    (key, scenario, config)
}

/// The filter snippet of the probe (`{{PROBE_CONFIG}}` is its JSON configuration).
const PROBE_SNIPPET: &str = "cost_probe.yaml";

fn no_filter() -> Scenario {
    Scenario {
        key: "none".to_string(),
        label: "no filter".to_string(),
        filters: Vec::new(),
        concurrency: 1,
        baseline: "none".to_string(),
        expect: Vec::new(),
        filters_dir: None,
    }
}

/// Least-squares slope of `y` over `x` (`None` with fewer than two distinct `x`).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// What one kind cost, round by round.
#[derive(Clone, Debug)]
struct Priced {
    kind: Kind,
    ns: Vec<u32>,
    /// ns per call, one per round with every run valid.
    slopes: Vec<f64>,
}

/// What one shipped filter scenario cost.
struct FilterCost {
    key: &'static str,
    /// Wasm modules in its chain (each pays the floor).
    modules: u32,
    /// us per request added over no filter, paired per round.
    added: Vec<f64>,
    /// Callouts per request (span export), from Envoy's own counters.
    callouts: f64,
}

/// The whole measurement.
struct Outcome {
    priced: Vec<Priced>,
    /// Allocation of a returned value, ns, per round (present minus absent).
    allocation: Vec<f64>,
    /// us per request of no filter, per measured round of any group.
    none: Vec<f64>,
    /// us per request of the probe doing nothing minus no filter, paired per round.
    floor: Vec<f64>,
    /// ns per call into the VM for a phase: the probe doing nothing, minus the same without
    /// [`TRIMMED_PHASES`], over their number, paired per round.
    phase: Vec<f64>,
    /// Shipped filters, measured in the same conditions.
    filters: Vec<FilterCost>,
    counts: Vec<Counts>,
}

impl Outcome {
    fn price(&self, key: &str) -> Option<f64> {
        self.priced
            .iter()
            .find(|p| p.kind.key == key)
            .map(|p| Spread::of(&p.slopes).median)
    }
}

/// Runs the cost model; `quick` makes it short (numbers sane, not steady).
pub fn run(quick: bool, only: &[String], rounds: Option<u32>, command: &str) -> Result<()> {
    let started = Instant::now();
    let filters_dir = std::path::absolute(toolkit::filters_dir())
        .map_err(|e| format!("no absolute path for the filters' directory: {e}"))?;
    for file in [PROBE_WASM, "bare_trace.wasm", "trace_propagation.wasm"]
        .into_iter()
        .chain([
            "service_metrics.wasm",
            "route_retries.wasm",
            "mesh_sidecar.wasm",
        ])
        .chain(["add_headers.wasm"])
    {
        if !filters_dir.join(file).is_file() {
            return Err(format!(
                "{} is missing: run `cargo xtask build` first",
                filters_dir.join(file).display()
            ));
        }
    }
    let bench_dir = workspace_root().join("bench");
    let envoy_bin = toolkit::find::find_envoy()?;
    let envoy_version = toolkit::find::envoy_version(&envoy_bin)?;
    println!(
        "cost model: Envoy {envoy_version} at {}",
        envoy_bin.display()
    );
    let wrk = load::ensure_wrk()?;
    let counts = hostcalls::count_all(&bench_dir.join("configs").join("filters"))?;
    let cpus = Cpus::detect();
    cpus.pin_load_side()?;
    println!("CPU placement: {}", cpus.describe());
    let upstream = Upstream::start("upstream")?;
    let collector = Upstream::start("collector")?;
    let run_dir = target_dir().join("bench").join("cost-run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).map_err(|e| format!("clearing {}: {e}", run_dir.display()))?;
    }
    // Envoys start over the whole run while others may edit bench/configs: render every one
    // from a copy taken now.
    let bench_dir = snapshot(&bench_dir, &run_dir.join("bench"))?;
    let vars = crate::scenario::base_vars(upstream.port(), collector.port(), &filters_dir);
    let mut plan = Plan::new(quick);
    if let Some(rounds) = rounds {
        plan.rounds = rounds as usize;
    }
    let mut bench = Bench {
        envoy_bin,
        wrk,
        bench_dir,
        run_dir,
        vars,
        probe_wasm: filters_dir.join(PROBE_WASM),
        cpus,
        plan,
        csv: String::from("group,envoy,n,round,requests,errors,cpu_s,us_per_request\n"),
    };
    let load_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let none = bench.start("none", &no_filter(), None)?;
    let floor = bench.start_probe(None, 0)?;
    let mut fixed = [none, floor];
    for e in &mut fixed {
        e.wait_ready(Duration::from_secs(120))?;
        probe_request(e, &upstream, None, &collector)?;
        bench.warm_up(e)?;
    }
    let mut outcome = Outcome {
        priced: Vec::new(),
        allocation: Vec::new(),
        none: Vec::new(),
        floor: Vec::new(),
        phase: Vec::new(),
        filters: Vec::new(),
        counts,
    };
    let mut groups = groups();
    if !only.is_empty() {
        groups.retain(|g| g.iter().any(|k| only.iter().any(|o| o == k.key)));
        if groups.is_empty() {
            return Err(format!("--only {}: no such kind", only.join(",")));
        }
    }
    for (g, group) in groups.iter().enumerate() {
        let name = group[0].key;
        println!(
            "\n==> {}/{} {name} ({:.0} s since start)",
            g + 1,
            groups.len(),
            started.elapsed().as_secs_f64()
        );
        measure_group(
            &mut bench,
            group,
            &fixed,
            &upstream,
            &collector,
            &mut outcome,
        )?;
    }
    if only.is_empty() {
        println!(
            "\n==> calls into the VM for a phase ({:.0} s since start)",
            started.elapsed().as_secs_f64()
        );
        measure_phases(&mut bench, &fixed[1], &upstream, &collector, &mut outcome)?;
        println!(
            "\n==> shipped filters ({:.0} s since start)",
            started.elapsed().as_secs_f64()
        );
        measure_filters(&mut bench, &fixed[0], &upstream, &collector, &mut outcome)?;
    }
    drop(fixed);

    let meta = Meta {
        quick,
        command: command.to_string(),
        envoy_version,
        placement: bench.cpus.describe(),
        load_before: load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        elapsed: started.elapsed(),
    };
    let text = markdown(&outcome, &bench.plan, &meta);
    println!("\n{text}");
    let out = target_dir().join("bench");
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let (md, csv) = if only.is_empty() {
        ("cost-model.md", "cost-model.csv")
    } else {
        ("cost-model-partial.md", "cost-model-partial.csv")
    };
    for (file, body) in [(md, &text), (csv, &bench.csv)] {
        let path = out.join(file);
        fs::write(&path, body).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One request through `envoy`, checked for a 200 and, for the kinds whose effect shows
/// outside Envoy's CPU, that the probe did its `n` calls.
fn probe_request(
    envoy: &Envoy,
    upstream: &Upstream,
    kind: Option<(&Kind, u32)>,
    collector: &Upstream,
) -> Result<()> {
    let name = envoy.name().to_string();
    let callouts_before = collector.requests();
    upstream.capture_next();
    let response = toolkit::http_get(envoy.listener_port(), hostcalls::PATH, &headers())
        .map_err(|e| format!("probe of `{name}`: {e}"))?;
    if response.status != 200 {
        return Err(format!(
            "probe of `{name}`: status {}: {response:?}\n{}",
            response.status,
            envoy.log_tail(20)
        ));
    }
    let Some((kind, n)) = kind else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // The probe's counter `name` has reached `n`.
    let counted = |name: &str| {
        crate::stats_matching(envoy, name)
            .iter()
            .any(|(_, v)| *v >= u64::from(n))
    };
    let check = || -> bool {
        match kind.op {
            "increment_counter" => counted("cost_probe_calls"),
            "http_call" => collector.requests() >= callouts_before + u64::from(n),
            "replace_header" => upstream
                .captured()
                .is_some_and(|h| h.contains(&format!("x-b3-spanid: {}", PROBE_HEADER_VALUE))),
            "expr_evaluate" => counted("cost_probe_evaluated"),
            _ => true,
        }
    };
    while !check() {
        if Instant::now() >= deadline {
            return Err(format!(
                "probe of `{name}`: no evidence that the probe did {n} x `{}`\n{}",
                kind.op,
                envoy.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The value the probe's `replace_header` writes (`cost_probe::HEADER_VALUE`).
const PROBE_HEADER_VALUE: &str = "00f067aa0ba902b7";

/// Starts the Envoys of one group, then measures it round by round: no filter, the floor, and
/// every `n` of every kind, in alternating order.
fn measure_group(
    bench: &mut Bench,
    group: &[Kind],
    fixed: &[Envoy; 2],
    upstream: &Upstream,
    collector: &Upstream,
    outcome: &mut Outcome,
) -> Result<()> {
    let quick = bench.plan.rounds == 1;
    let mut envoys: Vec<(usize, u32, Envoy)> = Vec::new();
    for (i, kind) in group.iter().enumerate() {
        for &n in kind.ns(quick) {
            envoys.push((i, n, bench.start_probe(Some(kind), n)?));
        }
    }
    for (i, n, e) in &mut envoys {
        e.wait_ready(Duration::from_secs(120))?;
        probe_request(e, upstream, Some((&group[*i], *n)), collector)?;
        bench.warm_up(e)?;
    }
    let group_key = group[0].key;
    // Per round: us per request of each run, by (kind index or none/floor, n).
    let mut slopes: Vec<Vec<f64>> = vec![Vec::new(); group.len()];
    for round in 1..=bench.plan.rounds {
        // The order of the runs alternates from round to round, so a drift of the machine
        // within a round does not always favour the same n.
        let mut order: Vec<Option<usize>> = vec![None, Some(usize::MAX)];
        order.extend((0..envoys.len()).map(Some));
        if round % 2 == 0 {
            order.reverse();
        }
        let mut none_us = None;
        let mut floor_us = None;
        let mut us: Vec<Option<f64>> = vec![None; envoys.len()];
        for slot in order {
            match slot {
                None => {
                    let r = bench.measure(&fixed[0], (group_key, "none", 0, round))?;
                    none_us = r.valid().then(|| r.us_per_request());
                }
                Some(usize::MAX) => {
                    let r = bench.measure(&fixed[1], (group_key, "floor", 0, round))?;
                    floor_us = r.valid().then(|| r.us_per_request());
                }
                Some(j) => {
                    let (i, n, e) = &envoys[j];
                    let r = bench.measure(e, (group_key, group[*i].key, *n, round))?;
                    us[j] = r.valid().then(|| r.us_per_request());
                }
            }
        }
        if let Some(v) = none_us {
            outcome.none.push(v);
        }
        if let (Some(f), Some(v)) = (floor_us, none_us) {
            outcome.floor.push(f - v);
        }
        let mut line = format!(
            "round {round}: none {:.1}, floor {:.1} us/req",
            none_us.unwrap_or(f64::NAN),
            floor_us.unwrap_or(f64::NAN)
        );
        for (k, kind) in group.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = Vec::new();
            if !kind.pauses() {
                points.extend(floor_us.map(|f| (0.0, f)));
            }
            let mut complete = floor_us.is_some() || kind.pauses();
            for (j, (i, n, _)) in envoys.iter().enumerate() {
                if *i == k {
                    match us[j] {
                        Some(v) => points.push((f64::from(*n), v)),
                        None => complete = false,
                    }
                    let _ = write!(
                        line,
                        "; {} n={n} {:.1}",
                        kind.key,
                        us[j].unwrap_or(f64::NAN)
                    );
                }
            }
            if let (true, Some(s)) = (complete, slope(&points)) {
                slopes[k].push(s * 1000.0);
                let _ = write!(line, " -> {:.0} ns/call", s * 1000.0);
            }
        }
        println!("{line}");
    }
    if group.len() == 2 && group[1].key == "get_header_absent" {
        outcome.allocation.extend(
            slopes[0]
                .iter()
                .zip(&slopes[1])
                .map(|(present, absent)| present - absent),
        );
    }
    for (k, kind) in group.iter().enumerate() {
        if slopes[k].is_empty() {
            return Err(format!(
                "cost model: no round of `{}` had every run valid",
                kind.key
            ));
        }
        outcome.priced.push(Priced {
            kind: *kind,
            ns: kind.ns(quick).to_vec(),
            slopes: std::mem::take(&mut slopes[k]),
        });
    }
    Ok(())
}

/// Runs the shipped filters' scenarios in the same conditions, paired round by round with no
/// filter.
fn measure_filters(
    bench: &mut Bench,
    none: &Envoy,
    upstream: &Upstream,
    collector: &Upstream,
    outcome: &mut Outcome,
) -> Result<()> {
    let all = scenario::all(1);
    let mut envoys = Vec::new();
    for (key, modules) in FILTERS {
        let s = all
            .iter()
            .find(|s| s.key == key)
            .ok_or_else(|| format!("cost model: no bench scenario `{key}`"))?;
        envoys.push((key, modules, bench.start(key, s, None)?));
    }
    for (_, _, e) in &mut envoys {
        e.wait_ready(Duration::from_secs(120))?;
        probe_request(e, upstream, None, collector)?;
        bench.warm_up(e)?;
    }
    let mut added: Vec<Vec<f64>> = vec![Vec::new(); envoys.len()];
    for round in 1..=bench.plan.filter_rounds {
        let base = bench.measure(none, ("filters", "none", 0, round))?;
        let mut line = format!("round {round}: none {:.1}", base.us_per_request());
        for (j, (key, _, e)) in envoys.iter().enumerate() {
            let r = bench.measure(e, ("filters", key, 0, round))?;
            let _ = write!(line, "; {key} {:.1}", r.us_per_request());
            if r.valid() && base.valid() {
                added[j].push(r.us_per_request() - base.us_per_request());
            }
        }
        println!("{line}");
    }
    outcome.filters = envoys
        .iter()
        .zip(added)
        .map(|((key, modules, e), added)| {
            let requests = e.stat("http.sidecar.downstream_rq_total").unwrap_or(0);
            let callouts = e.stat("cluster.collector.upstream_rq_total").unwrap_or(0);
            FilterCost {
                key,
                modules: *modules,
                added,
                callouts: callouts as f64 / requests.max(1) as f64,
            }
        })
        .collect();
    Ok(())
}

/// The phase callbacks the trimmed probe does not export. Envoy calls a phase's callback only
/// when the module exports it; the probe's `proxy-wasm` crate exports them all.
pub const TRIMMED_PHASES: [&str; 4] = [
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_log",
    "proxy_on_done",
];

/// Measures a call into the VM for a phase: the probe doing nothing against a copy of it that
/// does not export [`TRIMMED_PHASES`] (each a call Envoy makes for the bench request: response
/// headers, the response body, the log, the end of the stream), paired round by round.
fn measure_phases(
    bench: &mut Bench,
    floor: &Envoy,
    upstream: &Upstream,
    collector: &Upstream,
    outcome: &mut Outcome,
) -> Result<()> {
    let wasm = fs::read(&bench.probe_wasm)
        .map_err(|e| format!("reading {}: {e}", bench.probe_wasm.display()))?;
    let trimmed_path = bench.run_dir.join("cost_probe_trimmed.wasm");
    fs::write(&trimmed_path, without_exports(&wasm, &TRIMMED_PHASES)?)
        .map_err(|e| format!("writing {}: {e}", trimmed_path.display()))?;
    let (_, mut scenario, config) = probe_scenario(None, 0);
    scenario.key = "floor-trimmed".to_string();
    let mut trimmed = bench.start(&scenario.key, &scenario, Some((&config, &trimmed_path)))?;
    trimmed.wait_ready(Duration::from_secs(120))?;
    probe_request(&trimmed, upstream, None, collector)?;
    bench.warm_up(&trimmed)?;
    for round in 1..=bench.plan.filter_rounds {
        let mut pair = [(floor, "floor", 0.0), (&trimmed, "floor-trimmed", 0.0)];
        if round % 2 == 0 {
            pair.reverse();
        }
        let mut valid = true;
        for (envoy, key, us) in &mut pair {
            let r = bench.measure(envoy, ("phases", key, 0, round))?;
            valid &= r.valid();
            *us = r.us_per_request();
        }
        if round % 2 == 0 {
            pair.reverse();
        }
        let ns = (pair[0].2 - pair[1].2) * 1000.0 / TRIMMED_PHASES.len() as f64;
        println!(
            "round {round}: floor {:.1}, without {} phase exports {:.1} us/req -> {ns:.0} ns per phase call",
            pair[0].2,
            TRIMMED_PHASES.len(),
            pair[1].2
        );
        if valid {
            outcome.phase.push(ns);
        }
    }
    Ok(())
}

/// Reads one unsigned LEB128 number at `*at`, advancing it.
fn leb(bytes: &[u8], at: &mut usize) -> Result<u32> {
    let (mut value, mut shift) = (0u32, 0);
    loop {
        let byte = *bytes.get(*at).ok_or("wasm: truncated number")?;
        *at += 1;
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 28 {
            return Err("wasm: number too long".to_string());
        }
    }
}

fn push_leb(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// `wasm` with the exports named in `names` removed from its export section (the functions
/// stay; nothing else changes).
pub fn without_exports(wasm: &[u8], names: &[&str]) -> Result<Vec<u8>> {
    if wasm.get(..4) != Some(b"\0asm".as_slice()) || wasm.len() < 8 {
        return Err("not a wasm module".to_string());
    }
    let mut out = wasm[..8].to_vec();
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let size = leb(wasm, &mut at)? as usize;
        let body = wasm.get(at..at + size).ok_or("wasm: truncated section")?;
        at += size;
        let body = if id == 7 {
            let mut p = 0;
            let count = leb(body, &mut p)?;
            let mut kept = 0u32;
            let mut entries = Vec::new();
            for _ in 0..count {
                let start = p;
                let len = leb(body, &mut p)? as usize;
                let name = body.get(p..p + len).ok_or("wasm: truncated export")?;
                p += len + 1;
                leb(body, &mut p)?;
                if !names.iter().any(|n| n.as_bytes() == name) {
                    kept += 1;
                    entries.extend_from_slice(body.get(start..p).ok_or("wasm: truncated export")?);
                }
            }
            let mut section = Vec::new();
            push_leb(&mut section, kept);
            section.extend(entries);
            section
        } else {
            body.to_vec()
        };
        out.push(id);
        push_leb(&mut out, body.len() as u32);
        out.extend(body);
    }
    Ok(out)
}

/// Copies `bench/configs` and `bench/lua` under `to` and returns `to`, the bench directory the
/// run renders from.
fn snapshot(bench_dir: &Path, to: &Path) -> Result<PathBuf> {
    fn copy(from: &Path, to: &Path) -> Result<()> {
        fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
        let entries = fs::read_dir(from).map_err(|e| format!("listing {}: {e}", from.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("listing {}: {e}", from.display()))?;
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            if src.is_dir() {
                copy(&src, &dst)?;
            } else {
                fs::copy(&src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
            }
        }
        Ok(())
    }
    for dir in ["configs", "lua"] {
        if bench_dir.join(dir).is_dir() {
            copy(&bench_dir.join(dir), &to.join(dir))?;
        }
    }
    Ok(to.to_path_buf())
}

/// The price key of one counted hostcall (`proxy_get_property xds.route_name`, ...).
fn price_key(call: &str) -> Option<String> {
    let mut words = call.split_whitespace();
    let name = words.next()?;
    let rest: Vec<&str> = words.collect();
    Some(match name {
        "proxy_get_header_map_value" => {
            let (map, header) = (rest.first()?, rest.last()?);
            let present = match *map {
                "request" => REQUEST_HEADERS.contains(header),
                "response" => RESPONSE_HEADERS.contains(header),
                _ => false,
            };
            if present {
                "get_header".to_string()
            } else {
                "get_header_absent".to_string()
            }
        }
        "proxy_get_header_map_pairs" => "get_headers".to_string(),
        "proxy_replace_header_map_value" => "replace_header".to_string(),
        "proxy_get_property" => format!("property {}", rest.first()?),
        "proxy_increment_metric" => "increment_counter".to_string(),
        "proxy_record_metric" => "record_histogram".to_string(),
        "proxy_get_shared_data" => "get_shared_data".to_string(),
        "proxy_set_shared_data" => "set_shared_data".to_string(),
        "proxy_get_current_time_nanoseconds" => "current_time".to_string(),
        "proxy_http_call" => "http_call".to_string(),
        // A property batch (meshwasm::batch): priced as the list of mesh-sidecar's 9
        // end-of-stream properties, an upper bound for the filters' shorter lists.
        "proxy_call_foreign_function" if rest.first() == Some(&"expr_evaluate") => {
            "expr_list".to_string()
        }
        _ => return None,
    })
}

/// The hostcalls of a scenario (`all3` is the three filters').
fn counts_of(counts: &[Counts], key: &str) -> Option<BTreeMap<String, u64>> {
    if key == "all3" {
        let mut sum = BTreeMap::new();
        for part in ["trace", "metrics", "retries"] {
            for (call, n) in &counts.iter().find(|c| c.filter == part)?.detail {
                *sum.entry(call.clone()).or_insert(0) += n;
            }
        }
        return Some(sum);
    }
    if key == "wasm-noop" {
        return Some(BTreeMap::new());
    }
    counts
        .iter()
        .find(|c| c.filter == key)
        .map(|c| c.detail.clone())
}

/// One counted hostcall of a filter, priced.
struct Line {
    call: String,
    count: u64,
    /// ns per call; `None` when no kind prices it.
    ns: Option<f64>,
}

/// A filter's hostcalls per request, each with its price.
fn priced_calls(outcome: &Outcome, calls: &BTreeMap<String, u64>) -> Vec<Line> {
    calls
        .iter()
        .map(|(call, &count)| Line {
            call: call.clone(),
            count,
            ns: price_key(call).and_then(|k| outcome.price(&k)),
        })
        .collect()
}

fn spread(values: &[f64], digits: usize) -> String {
    crate::report::spread_text(&Spread::of(values), digits)
}

/// How the run was made, for the report.
struct Meta {
    quick: bool,
    command: String,
    envoy_version: String,
    placement: String,
    load_before: String,
    elapsed: Duration,
}

fn markdown(outcome: &Outcome, plan: &Plan, meta: &Meta) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Cost model: proxy-wasm hostcalls in Envoy {}{}\n",
        meta.envoy_version,
        if meta.quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(
        s,
        "Written by `{}` ({:.0} s). Envoy CPU time (user + system, all threads) per request \
         served; one worker, pinned; wrk with {CONNECTIONS} keep-alive connections for {} s per \
         run; {} round(s) per kind, {} for the shipped filters, after a {} s warm-up per Envoy; \
         load average at the start {}; {}.\n",
        meta.command,
        meta.elapsed.as_secs_f64(),
        plan.seconds,
        plan.rounds,
        plan.filter_rounds,
        plan.warmup,
        meta.load_before,
        meta.placement
    );
    let none = Spread::of(&outcome.none).median;
    let _ = writeln!(
        s,
        "## Price per call\n\nThe slope of Envoy CPU per request over the `n` calls per \
         request of `bench/cost-probe`: least squares over n = 0 and the n listed, fitted per \
         round (callouts over their n only: n = 0 does not pause the request). Median over \
         rounds (min to max); the last column is the median against the CPU of a request through \
         Envoy with no filter ({none:.1} us in this run), which holds better than nanoseconds \
         when the machine's speed drifts.\n"
    );
    let _ = writeln!(
        s,
        "| kind | hostcall | n | ns per call | % of a request without filter |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let pct = |ns: f64| ns / 1000.0 / none * 100.0;
    for p in &outcome.priced {
        let ns: Vec<String> = p.ns.iter().map(u32::to_string).collect();
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} | {:.2} |",
            p.kind.label,
            p.kind.hostcall,
            ns.join(", "),
            spread(&p.slopes, 0),
            pct(Spread::of(&p.slopes).median)
        );
    }
    if !outcome.phase.is_empty() {
        let _ = writeln!(
            s,
            "| a call into the VM for a phase: the probe doing nothing minus a copy without the \
             exports of {} phases ({}), over {}, paired per round | the phase's `proxy_on_*` (host \
             into VM) | | {} | {:.2} |",
            TRIMMED_PHASES.len(),
            TRIMMED_PHASES.map(|p| format!("`{p}`")).join(", "),
            TRIMMED_PHASES.len(),
            spread(&outcome.phase, 0),
            pct(Spread::of(&outcome.phase).median)
        );
    }
    if !outcome.allocation.is_empty() {
        let _ = writeln!(
            s,
            "| the VM allocation of a returned value: present minus absent header read, paired \
             per round | `proxy_on_memory_allocate` (a call into the VM) | | {} | {:.2} |",
            spread(&outcome.allocation, 0),
            pct(Spread::of(&outcome.allocation).median)
        );
    }
    let _ = writeln!(
        s,
        "\n## The floor\n\n| | us per request |\n|---|---|\n| Envoy, no filter | {} |\n\
         | added by a wasm filter that does nothing (`cost-probe` n = 0: a context per request and \
         a call into the VM per phase), paired per round | {} |\n",
        spread(&outcome.none, 1),
        spread(&outcome.floor, 1)
    );
    let floor = Spread::of(&outcome.floor).median;
    let callout = outcome.price("http_call").unwrap_or(0.0) / 1000.0;
    let _ = writeln!(
        s,
        "## Shipped filters as the sum of their parts\n\nMeasured in the same run, paired \
         per round with no filter. Predicted: the floor per wasm module, plus each hostcall per \
         request (counted on the SDK test host, `bench/runner/src/hostcalls.rs`) times its \
         price above, plus the callouts per request Envoy counted (`cluster.collector.\
         upstream_rq_total` over `http.sidecar.downstream_rq_total`: span export) times the \
         callout's price. Unexplained: measured minus predicted.\n"
    );
    let _ = writeln!(
        s,
        "| scenario | added us per request, measured | modules | hostcalls | callouts per request | floor x modules | hostcalls x price | callouts x price | predicted | unexplained |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let mut breakdown = String::new();
    for f in &outcome.filters {
        let Some(calls) = counts_of(&outcome.counts, f.key) else {
            continue;
        };
        let lines = priced_calls(outcome, &calls);
        let calls_us = lines
            .iter()
            .map(|l| l.ns.unwrap_or(0.0) * l.count as f64)
            .sum::<f64>()
            / 1000.0;
        let base = floor * f64::from(f.modules);
        let callouts_us = f.callouts * callout;
        let predicted = base + calls_us + callouts_us;
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {:.3} | {base:.1} | {calls_us:.1} | {callouts_us:.1} | {predicted:.1} | {:+.1} |",
            f.key,
            spread(&f.added, 1),
            f.modules,
            calls.values().sum::<u64>(),
            f.callouts,
            Spread::of(&f.added).median - predicted
        );
        let parts: Vec<String> = lines
            .iter()
            .map(|l| match l.ns {
                Some(ns) => format!(
                    "`{}` x{} = {:.2} us",
                    l.call,
                    l.count,
                    ns * l.count as f64 / 1000.0
                ),
                None => format!("`{}` x{} (not priced)", l.call, l.count),
            })
            .collect();
        if !parts.is_empty() {
            let _ = writeln!(breakdown, "- `{}`: {}", f.key, parts.join("; "));
        }
    }
    let _ = writeln!(
        s,
        "\nHostcalls by kind and price, per request:\n\n{breakdown}"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_exports_and_nothing_else() -> Result<()> {
        // A module with a type, one function and two exports of it.
        let wasm: Vec<u8> = [
            &b"\0asm\x01\0\0\0"[..],
            &[1, 4, 1, 0x60, 0, 0],
            &[3, 2, 1, 0],
            &[7, 11, 2, 1, b'a', 0, 0, 3, b'b', b'c', b'd', 0, 0],
            &[10, 4, 1, 2, 0, 0x0b],
        ]
        .concat();
        let trimmed = without_exports(&wasm, &["bcd"])?;
        let expected: Vec<u8> = [
            &b"\0asm\x01\0\0\0"[..],
            &[1, 4, 1, 0x60, 0, 0],
            &[3, 2, 1, 0],
            &[7, 5, 1, 1, b'a', 0, 0],
            &[10, 4, 1, 2, 0, 0x0b],
        ]
        .concat();
        assert_eq!(trimmed, expected);
        assert_eq!(without_exports(&wasm, &[])?, wasm);
        assert!(without_exports(b"nope", &[]).is_err());
        assert!(without_exports(&wasm[..20], &[]).is_err());
        let mut out = Vec::new();
        push_leb(&mut out, 300);
        assert_eq!(leb(&out, &mut 0)?, 300);
        Ok(())
    }

    #[test]
    fn fits_a_slope() {
        let s = slope(&[(0.0, 10.0), (32.0, 42.0), (128.0, 138.0)]).unwrap_or(f64::NAN);
        assert!((s - 1.0).abs() < 1e-9, "{s}");
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn every_kind_renders_a_probe_config() -> Result<()> {
        let bench_dir = workspace_root().join("bench");
        let vars: Vec<(String, String)> = [
            ("PORT_UPSTREAM", "3"),
            ("PORT_COLLECTOR", "4"),
            ("FILTERS_DIR", "/f"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kinds: Vec<Kind> = groups().into_iter().flatten().collect();
        assert_eq!(kinds.len(), 30);
        for k in &kinds {
            let (key, s, config) = probe_scenario(Some(k), 32);
            assert!(!key.contains(' ') && !key.contains('.'), "{key}");
            let mut v = vars.clone();
            v.extend(probe_vars(&config, Path::new("/f/cost_probe.wasm")));
            let text = scenario::render(&s, &bench_dir, &v)?;
            assert!(text.contains(&format!("value: '{config}'")), "{text}");
            assert!(text.contains("/f/cost_probe.wasm"), "{text}");
        }
        assert_eq!(
            kinds[0].config(32),
            r#"{"op":"get_header","n":32,"arg":"traceparent","phase":"request_headers"}"#
        );
        // A first-call kind: once per request, its `then` in the probe's configuration.
        let Some(both) = kinds.iter().find(|k| k.key == "first_header_property") else {
            return Err("no first_header_property".to_string());
        };
        assert_eq!(both.ns(false), [1]);
        assert_eq!(both.ns(true), [1]);
        assert_eq!(
            both.config(1),
            r#"{"op":"get_header","n":1,"arg":"traceparent","phase":"request_headers","then":{"op":"get_property","n":1,"arg":"xds.route_name","phase":"log"}}"#
        );
        assert_eq!(kinds[0].ns(false), [64, 256]);
        Ok(())
    }

    #[test]
    fn prices_every_call_the_shipped_filters_make() -> Result<()> {
        let counts = hostcalls::count_all(&workspace_root().join("bench/configs/filters"))?;
        let keys: Vec<&str> = groups().into_iter().flatten().map(|k| k.key).collect();
        for c in &counts {
            for call in c.detail.keys() {
                let key = price_key(call).unwrap_or_default();
                assert!(
                    keys.contains(&key.as_str()),
                    "{}: {call} -> {key:?}",
                    c.filter
                );
            }
        }
        assert_eq!(
            price_key("proxy_get_header_map_value request traceparent").as_deref(),
            Some("get_header")
        );
        assert_eq!(
            price_key("proxy_get_header_map_value response x-mesh-peer").as_deref(),
            Some("get_header_absent")
        );
        assert_eq!(
            price_key("proxy_get_header_map_value request content-type").as_deref(),
            Some("get_header_absent")
        );
        assert_eq!(
            price_key("proxy_get_header_map_value response content-type").as_deref(),
            Some("get_header")
        );
        Ok(())
    }
}
