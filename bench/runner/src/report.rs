//! The numbers a bench run reports and how they are shown: Envoy's CPU time per request (the
//! headline) and the secondary throughput and latency figures, as medians and spread over the
//! interleaved rounds, paired round by round with the baseline and the wasm floor; the targets of
//! issue #13, each filter against native Envoy doing its job, the Markdown tables and a
//! hand-written SVG bar chart.

use std::fmt::Write as _;
use std::time::Duration;

use super::hostcalls::Counts;
use super::load::Sample;
use super::scenario::Scenario;

/// Everything measured for one scenario.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The scenario.
    pub scenario: Scenario,
    /// One throughput run per round (many connections).
    pub throughput: Vec<Sample>,
    /// One latency run per round (one connection).
    pub latency: Vec<Sample>,
    /// Envoy's CPU time (utime + stime of the process) over each throughput run.
    pub envoy_cpu: Vec<Duration>,
    /// Envoy's resident memory after warm-up, KiB.
    pub rss_kib: u64,
    /// Envoy's heap at the same moment (admin `/memory`), when it answered.
    pub heap: Option<Heap>,
}

/// Envoy's heap as its allocator (tcmalloc) reports it on the admin `/memory` endpoint, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heap {
    /// Bytes Envoy (and V8 inside it) has allocated and not freed.
    pub allocated: u64,
    /// Bytes the allocator has reserved from the system.
    pub heap_size: u64,
    /// Reserved bytes handed back to the system (not resident).
    pub unmapped: u64,
}

impl Heap {
    /// Reads `/memory`'s JSON, whose figures are decimal strings; `None` if one is missing.
    pub fn parse(body: &str) -> Option<Heap> {
        let doc: serde_json::Value = serde_json::from_str(body).ok()?;
        let field = |name: &str| doc.get(name)?.as_str()?.parse::<u64>().ok();
        Some(Heap {
            allocated: field("allocated")?,
            heap_size: field("heap_size")?,
            unmapped: field("pageheap_unmapped")?,
        })
    }

    /// Bytes the allocator keeps mapped but not allocated: free pages and per-CPU and thread
    /// caches, kept for later allocations. Resident, so part of RSS.
    pub fn held_free(&self) -> u64 {
        self.heap_size
            .saturating_sub(self.unmapped)
            .saturating_sub(self.allocated)
    }

    /// Of `rss_kib`, the bytes outside the allocator's heap: the binary, thread stacks, and what
    /// V8 maps itself (compiled wasm code, the wasm VMs' linear memories).
    pub fn outside(&self, rss_kib: u64) -> u64 {
        (rss_kib * 1024).saturating_sub(self.heap_size.saturating_sub(self.unmapped))
    }
}

impl Measured {
    /// Envoy's CPU time per request of each throughput run, microseconds: the CPU the process
    /// spent over the run divided by the requests wrk completed in it.
    pub fn cpu_us_per_request(&self) -> Vec<f64> {
        self.throughput
            .iter()
            .zip(&self.envoy_cpu)
            .map(|(s, cpu)| cpu.as_secs_f64() * 1e6 / s.requests.max(1) as f64)
            .collect()
    }
}

/// The scenario whose Envoy CPU per request is the wasm floor: an empty wasm filter.
pub const FLOOR: &str = "wasm-noop";

/// A median with the smallest and largest value it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// The figures of one scenario, relative to its baseline.
#[derive(Clone, Debug)]
pub struct Row {
    /// Scenario key.
    pub key: String,
    /// Scenario label.
    pub label: String,
    /// Concurrency.
    pub concurrency: u32,
    /// Envoy's CPU time per request over the throughput run, microseconds: the headline.
    pub cpu_us: Spread,
    /// Envoy CPU per request minus the baseline's, paired per round.
    pub added_cpu_us: Spread,
    /// Envoy CPU per request minus the wasm floor's ([`FLOOR`] at the same concurrency), paired
    /// per round; `None` when no floor ran at this concurrency.
    pub over_floor_cpu_us: Option<Spread>,
    /// Requests per second (many connections).
    pub rps: Spread,
    /// Throughput / the baseline's, paired per round.
    pub ratio: Spread,
    /// Microseconds per request at saturation (1/throughput) over the baseline's, paired per
    /// round: the filters' cost per request while every process shares the machine's cores.
    pub added_us_per_request: Spread,
    /// Median latency at one connection, microseconds.
    pub p50_us: Spread,
    /// p99 latency at one connection, microseconds.
    pub p99_us: Spread,
    /// p50 minus the baseline's, paired per round.
    pub added_p50_us: Spread,
    /// p99 minus the baseline's, paired per round.
    pub added_p99_us: Spread,
    /// RSS after warm-up, MiB.
    pub rss_mib: f64,
    /// RSS minus the baseline's, MiB.
    pub added_rss_mib: f64,
}

fn paired<T>(a: &[T], b: &[T], f: impl Fn(&T, &T) -> f64) -> Spread {
    let values: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x, y)).collect();
    Spread::of(&values)
}

fn find<'a>(all: &'a [Measured], key: &str) -> Option<&'a Measured> {
    all.iter().find(|m| m.scenario.key == key)
}

/// The rows of every scenario, each against its baseline.
pub fn rows(all: &[Measured]) -> Vec<Row> {
    all.iter()
        .map(|m| {
            let base = all
                .iter()
                .find(|b| b.scenario.key == m.scenario.baseline)
                .unwrap_or(m);
            let of = |v: &[Sample], f: fn(&Sample) -> f64| {
                Spread::of(&v.iter().map(f).collect::<Vec<_>>())
            };
            let mib = |kib: u64| kib as f64 / 1024.0;
            let cpu = m.cpu_us_per_request();
            let floor = all.iter().find(|f| {
                f.scenario.key == FLOOR && f.scenario.concurrency == m.scenario.concurrency
            });
            Row {
                key: m.scenario.key.clone(),
                label: m.scenario.label.clone(),
                concurrency: m.scenario.concurrency,
                cpu_us: Spread::of(&cpu),
                added_cpu_us: paired(&cpu, &base.cpu_us_per_request(), |x, y| x - y),
                over_floor_cpu_us: floor
                    .map(|f| paired(&cpu, &f.cpu_us_per_request(), |x, y| x - y)),
                rps: of(&m.throughput, |s| s.rps),
                ratio: paired(&m.throughput, &base.throughput, |x, y| x.rps / y.rps),
                added_us_per_request: paired(&m.throughput, &base.throughput, |x, y| {
                    1e6 / x.rps - 1e6 / y.rps
                }),
                p50_us: of(&m.latency, |s| s.p50_us),
                p99_us: of(&m.latency, |s| s.p99_us),
                added_p50_us: paired(&m.latency, &base.latency, |x, y| x.p50_us - y.p50_us),
                added_p99_us: paired(&m.latency, &base.latency, |x, y| x.p99_us - y.p99_us),
                rss_mib: mib(m.rss_kib),
                added_rss_mib: mib(m.rss_kib) - mib(base.rss_kib),
            }
        })
        .collect()
}

/// `f` of the Envoy CPU per request of scenarios `a` and `b`, paired per round.
pub fn cpu_between(
    all: &[Measured],
    a: &str,
    b: &str,
    f: impl Fn(&f64, &f64) -> f64,
) -> Option<Spread> {
    let (a, b) = (find(all, a)?, find(all, b)?);
    Some(paired(&a.cpu_us_per_request(), &b.cpu_us_per_request(), f))
}

/// A `.wasm` and its size after wasm-opt.
#[derive(Clone, Debug)]
pub struct WasmSize {
    /// File name in `target/filters/`.
    pub file: String,
    /// Bytes.
    pub bytes: u64,
}

/// One target of issue #13 and how the run did.
#[derive(Clone, Debug)]
pub struct Target {
    /// The target as the issue states it.
    pub what: String,
    /// The measured value, formatted.
    pub measured: String,
    /// Met?
    pub met: bool,
}

/// The size limit of a filter `.wasm`: 150 KiB.
pub const SIZE_LIMIT_BYTES: u64 = 150 * 1024;
/// The size limit of `mesh_sidecar.wasm`, all three in one module: 200 KiB.
pub const MESH_SIZE_LIMIT_BYTES: u64 = 200 * 1024;

/// `median (min to max)` with `digits` decimals.
pub fn spread_text(s: &Spread, digits: usize) -> String {
    format!(
        "{:.d$} ({:.d$} to {:.d$})",
        s.median,
        s.min,
        s.max,
        d = digits
    )
}

/// Evaluates the targets of issue #13, on Envoy's CPU time per request first.
pub fn targets(all: &[Measured], rows: &[Row], sizes: &[WasmSize]) -> Vec<Target> {
    let row = |k: &str| rows.iter().find(|r| r.key == k);
    let workers = |r: &Row| {
        if r.concurrency == 1 {
            "one worker".to_string()
        } else {
            format!("--concurrency {}", r.concurrency)
        }
    };
    let mut out = Vec::new();
    if let Some(r) = row("mesh") {
        out.push(Target {
            what: format!(
                "all three in one module (`mesh`): Envoy CPU <= +45 us/request over no filter ({})",
                workers(r)
            ),
            measured: format!("{} us", signed_spread(&r.added_cpu_us)),
            met: r.added_cpu_us.median <= 45.0,
        });
    }
    for key in ["trace", "metrics", "retries"] {
        if let Some((r, over)) = row(key).and_then(|r| Some((r, r.over_floor_cpu_us?))) {
            out.push(Target {
                what: format!(
                    "`{key}` alone: Envoy CPU <= the wasm floor (`{FLOOR}`) + 10 us/request ({})",
                    workers(r)
                ),
                measured: format!("{} us over the floor", signed_spread(&over)),
                met: over.median <= 10.0,
            });
        }
    }
    if let (Some(diff), Some(tc), Some(lua)) = (
        cpu_between(all, "trace-core", "lua", |x, y| x - y),
        row("trace-core"),
        row("lua"),
    ) {
        out.push(Target {
            what: "trace core on our SDK (`trace-core`) costs at most what Envoy's Lua filter \
                   (`lua`) does for the same job (Envoy CPU per request, paired per round)"
                .to_string(),
            measured: format!(
                "{} us more ({:+.1} against {:+.1} us over no filter)",
                signed_spread(&diff),
                tc.added_cpu_us.median,
                lua.added_cpu_us.median
            ),
            met: diff.median <= 0.0,
        });
    }
    if let Some(ratio) = cpu_between(all, "trace-core", "bare", |x, y| x / y) {
        let overhead = Spread {
            median: (ratio.median - 1.0) * 100.0,
            min: (ratio.min - 1.0) * 100.0,
            max: (ratio.max - 1.0) * 100.0,
        };
        out.push(Target {
            what: "SDK overhead over the bare proxy-wasm equivalent (`trace-core` over `bare`, \
                   Envoy CPU per request) <= 10%"
                .to_string(),
            measured: format!("{} %", signed_spread(&overhead)),
            met: overhead.median <= 10.0,
        });
    }
    if let Some(r) = row("mesh") {
        out.push(Target {
            what: format!(
                "all three in one module (`mesh`): <= +30 MiB RSS over no filter ({})",
                workers(r)
            ),
            measured: format!("{:+.1} MiB", r.added_rss_mib),
            met: r.added_rss_mib <= 30.0,
        });
    }
    for (file, limit) in [
        ("trace_propagation.wasm", SIZE_LIMIT_BYTES),
        ("service_metrics.wasm", SIZE_LIMIT_BYTES),
        ("route_retries.wasm", SIZE_LIMIT_BYTES),
        ("mesh_sidecar.wasm", MESH_SIZE_LIMIT_BYTES),
    ] {
        if let Some(size) = sizes.iter().find(|s| s.file == file) {
            out.push(Target {
                what: format!("{file} <= {} KiB after wasm-opt", limit / 1024),
                measured: format!("{} B ({:.1} KiB)", size.bytes, size.bytes as f64 / 1024.0),
                met: size.bytes <= limit,
            });
        }
    }
    out
}

/// A filter set against native Envoy doing the same job.
#[derive(Clone, Debug)]
pub struct Versus {
    /// The filter scenario's key.
    pub filter: String,
    /// The native scenario's key.
    pub native: String,
    /// The filter's Envoy CPU per request over no filter.
    pub filter_added: Spread,
    /// The native scenario's Envoy CPU per request over no filter.
    pub native_added: Spread,
    /// Filter minus native, Envoy CPU per request, paired per round.
    pub diff: Spread,
    /// Filter over native, Envoy CPU per request, paired per round.
    pub ratio: Spread,
}

/// The pairs of [`versus`]: each wasm scenario and the native scenario doing its job.
pub const VERSUS: [(&str, &str); 6] = [
    ("trace", "native-trace"),
    ("trace", "native-trace-json"),
    ("trace", "native-otel"),
    ("retries", "native-retries"),
    ("all3", "native-all"),
    ("mesh", "native-all"),
];

/// Each filter against native Envoy doing the same job, for the pairs of [`VERSUS`] that ran.
pub fn versus(all: &[Measured], rows: &[Row]) -> Vec<Versus> {
    let row = |k: &str| rows.iter().find(|r| r.key == k);
    VERSUS
        .iter()
        .filter_map(|(filter, native)| {
            Some(Versus {
                filter: filter.to_string(),
                native: native.to_string(),
                filter_added: row(filter)?.added_cpu_us,
                native_added: row(native)?.added_cpu_us,
                diff: cpu_between(all, filter, native, |x, y| x - y)?,
                ratio: cpu_between(all, filter, native, |x, y| x / y)?,
            })
        })
        .collect()
}

/// The filter-against-native table (Markdown).
pub fn versus_table(pairs: &[Versus]) -> String {
    let mut t = String::from(
        "| filter vs native | filter: added CPU us/request | native: added CPU us/request | \
         filter minus native, us/request | filter / native, Envoy CPU per request |\n\
         |---|---|---|---|---|\n",
    );
    for v in pairs {
        let _ = writeln!(
            t,
            "| `{}` vs `{}` | {} | {} | {} | {} |",
            v.filter,
            v.native,
            signed_spread(&v.filter_added),
            signed_spread(&v.native_added),
            signed_spread(&v.diff),
            spread_text(&v.ratio, 2),
        );
    }
    t
}

/// A scenario against its twin running the filters of another build (`--against`).
#[derive(Clone, Debug)]
pub struct Against {
    /// The scenario's key (its twin's is this with [`crate::scenario::TWIN_SUFFIX`]).
    pub key: String,
    /// Envoy CPU per request with this build's filters.
    pub new: Spread,
    /// The same with the other build's.
    pub old: Spread,
    /// New minus old, paired per round.
    pub diff: Spread,
    /// The rounds in which the new build cost less, and all the rounds.
    pub lower: (usize, usize),
}

/// Each scenario that ran with a twin against it (see [`crate::scenario::with_twins`]).
pub fn against(all: &[Measured]) -> Vec<Against> {
    all.iter()
        .filter_map(|old| {
            let key = old
                .scenario
                .key
                .strip_suffix(crate::scenario::TWIN_SUFFIX)?;
            let (n, o) = (
                find(all, key)?.cpu_us_per_request(),
                old.cpu_us_per_request(),
            );
            Some(Against {
                key: key.to_string(),
                new: Spread::of(&n),
                old: Spread::of(&o),
                diff: paired(&n, &o, |x, y| x - y),
                lower: (n.iter().zip(&o).filter(|(x, y)| x < y).count(), n.len()),
            })
        })
        .collect()
}

/// The against table (Markdown): `built_from` names the other build.
pub fn against_table(pairs: &[Against], built_from: &str) -> String {
    let mut t = format!(
        "| scenario | Envoy CPU us/request, this tree | the same, filters of {built_from} | \
         this tree minus {built_from}, paired per round | rounds this tree cost less |\n\
         |---|---|---|---|---|\n"
    );
    for a in pairs {
        let _ = writeln!(
            t,
            "| `{}` | {} | {} | {} | {} of {} |",
            a.key,
            spread_text(&a.new, 1),
            spread_text(&a.old, 1),
            signed_spread(&a.diff),
            a.lower.0,
            a.lower.1,
        );
    }
    t
}

/// The results table (Markdown): Envoy CPU per request first, then throughput, latency, RSS.
pub fn results_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | workers | Envoy CPU us/request (min to max) | added CPU us over no filter | \
         added CPU us over wasm floor | req/s (min to max) | vs baseline | \
         added us/request from req/s | p50 us @1 conn | added p50 us | p99 us @1 conn | \
         added p99 us | RSS MiB | added RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| `{}` {} | {} | **{}** | **{}** | {} | {:.0} ({:.0} to {:.0}) | {} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {:+.1} |",
            r.key,
            r.label,
            r.concurrency,
            spread_text(&r.cpu_us, 1),
            signed_spread(&r.added_cpu_us),
            r.over_floor_cpu_us
                .as_ref()
                .map_or_else(|| "-".to_string(), signed_spread),
            r.rps.median,
            r.rps.min,
            r.rps.max,
            spread_text(&r.ratio, 3),
            signed_spread(&r.added_us_per_request),
            r.p50_us.median,
            signed_spread(&r.added_p50_us),
            r.p99_us.median,
            signed_spread(&r.added_p99_us),
            r.rss_mib,
            r.added_rss_mib,
        );
    }
    t
}

/// Where each scenario's RSS goes (one worker), each part added over the baseline's: the heap
/// in use, what the allocator holds free, and what lies outside its heap.
pub fn memory_table(all: &[Measured]) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let parts = |m: &Measured| {
        m.heap.map(|h| {
            [
                m.rss_kib as f64 / 1024.0,
                mib(h.allocated),
                mib(h.held_free()),
                mib(h.outside(m.rss_kib)),
            ]
        })
    };
    let mut t = String::from(
        "| scenario | RSS MiB | heap in use | held free by the allocator | outside the heap |\n\
         |---|---|---|---|---|\n",
    );
    for m in all.iter().filter(|m| m.scenario.concurrency == 1) {
        let base = all.iter().find(|b| b.scenario.key == m.scenario.baseline);
        let (Some(p), Some(b)) = (parts(m), base.and_then(parts)) else {
            continue;
        };
        let cell = |i: usize| {
            if m.scenario.key == m.scenario.baseline {
                format!("{:.1}", p[i])
            } else {
                format!("{:.1} ({:+.1})", p[i], p[i] - b[i])
            }
        };
        let _ = writeln!(
            t,
            "| `{}` | {} | {} | {} | {} |",
            m.scenario.key,
            cell(0),
            cell(1),
            cell(2),
            cell(3)
        );
    }
    t
}

fn signed_spread(s: &Spread) -> String {
    format!("{:+.1} ({:+.1} to {:+.1})", s.median, s.min, s.max)
}

/// The targets table (Markdown).
pub fn targets_table(targets: &[Target]) -> String {
    let mut t = String::from("| target | measured: median (min to max) | |\n|---|---|---|\n");
    for target in targets {
        let _ = writeln!(
            t,
            "| {} | {} | {} |",
            target.what,
            target.measured,
            if target.met { "met" } else { "**missed**" }
        );
    }
    t
}

/// The hostcalls table (Markdown), with the calls of each filter spelled out.
pub fn hostcalls_table(counts: &[Counts]) -> String {
    let mut t = String::from(
        "| filter | request headers | response headers | log | total | calls (per request) |\n\
         |---|---|---|---|---|---|\n",
    );
    for c in counts {
        // `proxy_get_property xds.route_name` -> grouped by call: `get_property` x2 (xds.route_name, ...)
        let mut grouped: Vec<(String, u64, Vec<String>)> = Vec::new();
        for (key, n) in &c.detail {
            let (call, arg) = key.split_once(' ').unwrap_or((key.as_str(), ""));
            let call = call.trim_start_matches("proxy_").to_string();
            let arg = if *n > 1 && !arg.is_empty() {
                format!("{arg} x{n}")
            } else {
                arg.to_string()
            };
            match grouped.iter_mut().find(|(c, _, _)| *c == call) {
                Some((_, total, args)) => {
                    *total += n;
                    args.push(arg);
                }
                None => grouped.push((call, *n, vec![arg])),
            }
        }
        grouped.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let detail: Vec<String> = grouped
            .into_iter()
            .map(|(call, n, args)| {
                let args: Vec<String> = args.into_iter().filter(|a| !a.is_empty()).collect();
                if args.is_empty() {
                    format!("`{call}` x{n}")
                } else {
                    format!("`{call}` x{n} ({})", args.join(", "))
                }
            })
            .collect();
        let _ = writeln!(
            t,
            "| `{}` | {} | {} | {} | **{}** | {} |",
            c.filter,
            c.request,
            c.response,
            c.log,
            c.total(),
            detail.join(", ")
        );
    }
    t
}

/// The sizes table (Markdown).
pub fn sizes_table(sizes: &[WasmSize]) -> String {
    let mut t = String::from("| file | bytes after wasm-opt -Oz | KiB |\n|---|---|---|\n");
    for s in sizes {
        let _ = writeln!(
            t,
            "| `{}` | {} | {:.1} |",
            s.file,
            s.bytes,
            s.bytes as f64 / 1024.0
        );
    }
    t
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel of the chart: a value per bar with its spread, on an axis from `lo` to `hi`, and
/// dashed reference lines.
struct Panel {
    title: String,
    values: Vec<Spread>,
    lo: f64,
    hi: f64,
    digits: usize,
    lines: Vec<(f64, String, &'static str)>,
}

impl Panel {
    /// A panel whose axis holds every value's spread, zero and the reference lines.
    fn new(
        title: &str,
        values: Vec<Spread>,
        digits: usize,
        lines: Vec<(f64, String, &'static str)>,
    ) -> Panel {
        let lo = values
            .iter()
            .map(|s| s.min)
            .chain(lines.iter().map(|l| l.0))
            .fold(0.0_f64, f64::min);
        let hi = values
            .iter()
            .map(|s| s.max)
            .chain(lines.iter().map(|l| l.0))
            .fold(0.0_f64, f64::max);
        let pad = (hi - lo).max(1e-9) * 0.12;
        Panel {
            title: title.to_string(),
            values,
            lo: if lo < 0.0 { lo - pad } else { 0.0 },
            hi: hi + pad,
            digits,
            lines,
        }
    }
}

/// A horizontal bar chart in three panels, one bar per scenario (the baselines left out):
/// Envoy's CPU time per request over no filter (the headline: median, min-max whisker, the
/// target lines of issue #13), throughput relative to the baseline, and added p50 latency at one
/// connection. Plain SVG 1.1, no scripts or external fonts.
pub fn svg_chart(rows: &[Row], title: &str) -> String {
    let bars: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.key.starts_with("baseline"))
        .collect();
    let mut cpu_lines = vec![(45.0, "+45: all three".to_string(), "#c0392b")];
    if let Some(floor) = rows.iter().find(|r| r.key == FLOOR) {
        cpu_lines.push((
            floor.added_cpu_us.median + 10.0,
            "floor + 10".to_string(),
            "#e67e22",
        ));
    }
    let panels = [
        Panel::new(
            "added Envoy CPU us/request over no filter",
            bars.iter().map(|r| r.added_cpu_us).collect(),
            1,
            cpu_lines,
        ),
        Panel::new(
            "throughput / baseline",
            bars.iter().map(|r| r.ratio).collect(),
            3,
            vec![(1.0, "1.0".to_string(), "#555")],
        ),
        Panel::new(
            "added p50 latency at 1 connection, us",
            bars.iter().map(|r| r.added_p50_us).collect(),
            1,
            Vec::new(),
        ),
    ];
    let (label_w, panel_w, gap, row_h, top) = (120.0, 280.0, 60.0, 26.0, 64.0);
    let width = label_w + (panel_w + gap) * panels.len() as f64;
    // Reference-line labels go under the panel, one text line each, so close lines stay legible.
    let label_lines = panels.iter().map(|p| p.lines.len()).max().unwrap_or(0) as f64;
    let height = top + row_h * bars.len() as f64 + 26.0 + 14.0 * label_lines;
    let bottom = top + row_h * bars.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, r) in bars.iter().enumerate() {
        let mid = top + row_h * i as f64 + row_h / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            mid + 4.0,
            esc(&r.key)
        );
    }
    for (p, panel) in panels.iter().enumerate() {
        let x0 = label_w + (panel_w + gap) * p as f64;
        let x = |v: f64| {
            x0 + (v.clamp(panel.lo, panel.hi) - panel.lo) / (panel.hi - panel.lo) * panel_w
        };
        let weight = if p == 0 { r#" font-weight="bold""# } else { "" };
        let _ = writeln!(
            s,
            r#"<text x="{x0:.1}" y="44"{weight}>{}</text>"#,
            esc(&panel.title)
        );
        let zero = x(0.0);
        let _ = writeln!(
            s,
            r##"<line x1="{zero:.1}" y1="{:.1}" x2="{zero:.1}" y2="{bottom:.1}" stroke="#999"/>"##,
            top - 4.0
        );
        for (n, (v, text, color)) in panel.lines.iter().enumerate() {
            let lx = x(*v);
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{:.1}" x2="{lx:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="4 3"/><text x="{lx:.1}" y="{:.1}" text-anchor="middle" fill="{color}">{}</text>"#,
                top - 8.0,
                bottom + 4.0 + 14.0 * n as f64,
                bottom + 16.0 + 14.0 * n as f64,
                esc(text)
            );
        }
        for (i, (r, v)) in bars.iter().zip(&panel.values).enumerate() {
            let y = top + row_h * i as f64;
            let mid = y + row_h / 2.0;
            let fill = match r.key.as_str() {
                "lua" => "#8e44ad",
                "bare" => "#7f8c8d",
                "wasm-noop" | "sdk-noop" => "#bdc3c7",
                k if k.starts_with("native") => "#d35400",
                k if k.ends_with("-c2") => "#16a085",
                _ => "#2980b9",
            };
            let (a, b) = (x(v.median.min(0.0)), x(v.median.max(0.0)));
            let _ = writeln!(
                s,
                r#"<rect x="{a:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/><line x1="{:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="black"/><text x="{:.1}" y="{:.1}">{:.d$}</text>"#,
                y + 4.0,
                b - a,
                row_h - 8.0,
                x(v.min),
                x(v.max),
                x(v.max).max(zero) + 4.0,
                mid + 4.0,
                v.median,
                d = panel.digits
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario;

    fn sample(rps: f64, p50: f64) -> Sample {
        Sample {
            rps,
            p50_us: p50,
            p99_us: p50 * 2.0,
            requests: 1000,
            errors: 0,
        }
    }

    /// A scenario's runs: throughput, p50 and Envoy CPU us/request per round (1000 requests
    /// each).
    fn measured(key: &str, rps: [f64; 3], p50: [f64; 3], cpu_us: [f64; 3]) -> Measured {
        let scenario = scenario::all(1)
            .into_iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| scenario::all(1).remove(0));
        Measured {
            scenario,
            throughput: rps.iter().map(|r| sample(*r, 0.0)).collect(),
            latency: p50.iter().map(|p| sample(0.0, *p)).collect(),
            envoy_cpu: cpu_us
                .iter()
                .map(|us| Duration::from_secs_f64(us * 1000.0 / 1e6))
                .collect(),
            rss_kib: 40 * 1024,
            heap: None,
        }
    }

    #[test]
    fn heap_from_the_admin_memory_endpoint_and_where_rss_goes() {
        let body = r#"{ "allocated": "13387920", "heap_size": "41943040",
            "pageheap_unmapped": "6479872", "pageheap_free": "9814016",
            "total_thread_cache": "7858064", "total_physical_bytes": "38538046" }"#;
        let Some(heap) = Heap::parse(body) else {
            panic!("no heap in {body}");
        };
        assert_eq!(heap.held_free(), 41_943_040 - 6_479_872 - 13_387_920);
        // 100 MiB resident, of which the mapped heap (35,463,168 B) is the allocator's.
        assert_eq!(heap.outside(100 * 1024), 100 * 1024 * 1024 - 35_463_168);
        assert_eq!(Heap::parse(r#"{"allocated": "1"}"#), None);
        assert_eq!(Heap::parse("not json"), None);

        let mut base = measured("baseline", [1.0; 3], [1.0; 3], [1.0; 3]);
        base.heap = Some(Heap {
            allocated: 6 << 20,
            heap_size: 10 << 20,
            unmapped: 0,
        });
        let mut mesh = measured("mesh", [1.0; 3], [1.0; 3], [1.0; 3]);
        mesh.rss_kib = 60 * 1024;
        mesh.heap = Some(Heap {
            allocated: 13 << 20,
            heap_size: 42 << 20,
            unmapped: 6 << 20,
        });
        let table = memory_table(&[base, mesh]);
        assert!(
            table.contains("| `baseline` | 40.0 | 6.0 | 4.0 | 30.0 |"),
            "{table}"
        );
        assert!(
            table.contains("| `mesh` | 60.0 (+20.0) | 13.0 (+7.0) | 23.0 (+19.0) | 24.0 (-6.0) |"),
            "{table}"
        );
    }

    #[test]
    fn a_twin_pairs_with_its_scenario_round_by_round() {
        let new = measured("mesh", [1.0; 3], [1.0; 3], [100.0, 130.0, 90.0]);
        let mut old = measured("mesh", [1.0; 3], [1.0; 3], [110.0, 120.0, 100.0]);
        old.scenario.key = format!("mesh{}", scenario::TWIN_SUFFIX);
        let base = measured("baseline", [1.0; 3], [1.0; 3], [50.0; 3]);
        let pairs = against(&[base, new, old]);
        assert_eq!(pairs.len(), 1);
        let a = &pairs[0];
        assert_eq!(a.key, "mesh");
        // Paired: -10, +10, -10, though the medians differ by -10 too.
        assert!((a.diff.median + 10.0).abs() < 1e-9, "{a:?}");
        assert!((a.diff.max - 10.0).abs() < 1e-9, "{a:?}");
        assert_eq!(a.lower, (2, 3));
        let table = against_table(&pairs, "HEAD~1");
        assert!(
            table.contains("| `mesh` | 100.0 (90.0 to 130.0) | 110.0 (100.0 to 120.0) | -10.0 (-10.0 to +10.0) | 2 of 3 |"),
            "{table}"
        );
        assert!(table.contains("this tree minus HEAD~1"), "{table}");
    }

    #[test]
    fn medians_and_spread() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Spread::of(&[4.0, 1.0]).median, 2.5);
        assert_eq!(Spread::of(&[]).median, 0.0);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn cpu_pairs_rounds_with_baseline_and_floor_and_targets_follow() {
        let all = vec![
            measured(
                "baseline",
                [100.0, 200.0, 100.0],
                [100.0, 100.0, 120.0],
                [50.0, 60.0, 55.0],
            ),
            measured(
                "trace",
                [95.0, 180.0, 90.0],
                [110.0, 140.0, 125.0],
                [120.0, 125.0, 130.0],
            ),
            measured(
                "wasm-noop",
                [99.0, 198.0, 99.0],
                [100.0, 100.0, 120.0],
                [70.0, 80.0, 75.0],
            ),
            measured(
                "mesh",
                [50.0, 90.0, 50.0],
                [200.0, 200.0, 220.0],
                [90.0, 100.0, 110.0],
            ),
            measured(
                "trace-core",
                [99.0, 198.0, 99.0],
                [100.0, 100.0, 120.0],
                [90.0, 99.0, 95.0],
            ),
            measured(
                "lua",
                [90.0, 180.0, 90.0],
                [100.0, 100.0, 120.0],
                [80.0, 90.0, 85.0],
            ),
            measured(
                "bare",
                [100.0, 200.0, 100.0],
                [100.0, 100.0, 120.0],
                [85.0, 95.0, 90.0],
            ),
            measured(
                "native-trace",
                [98.0, 190.0, 97.0],
                [105.0, 100.0, 120.0],
                [60.0, 70.0, 65.0],
            ),
        ];
        let rows = rows(&all);
        let row = |k: &str| rows.iter().find(|r| r.key == k).cloned();
        let Some(trace) = row("trace") else {
            panic!("no trace row");
        };
        assert!(close(trace.cpu_us.median, 125.0), "{:?}", trace.cpu_us);
        // 120-50, 125-60, 130-55: paired per round, not median minus median.
        assert!(
            close(trace.added_cpu_us.median, 70.0),
            "{:?}",
            trace.added_cpu_us
        );
        assert!(
            close(trace.added_cpu_us.min, 65.0),
            "{:?}",
            trace.added_cpu_us
        );
        assert!(
            close(trace.added_cpu_us.max, 75.0),
            "{:?}",
            trace.added_cpu_us
        );
        let over = trace.over_floor_cpu_us.unwrap_or(Spread::of(&[]));
        assert!(
            close(over.median, 50.0) && close(over.min, 45.0),
            "{over:?}"
        );
        assert!((trace.ratio.median - 0.9).abs() < 1e-9);
        assert_eq!(trace.added_p50_us.median, 10.0);
        let sizes = vec![
            WasmSize {
                file: "route_retries.wasm".into(),
                bytes: 200_000,
            },
            WasmSize {
                file: "mesh_sidecar.wasm".into(),
                bytes: 200_000,
            },
        ];
        let t = targets(&all, &rows, &sizes);
        assert!(
            t[0].what.contains("`mesh`") && t[0].what.contains("+45 us"),
            "{t:?}"
        );
        let find = |what: &str| t.iter().find(|t| t.what.contains(what)).map(|t| t.met);
        // mesh: +40, +40, +55 over no filter.
        assert_eq!(find("Envoy CPU <= +45"), Some(true));
        assert_eq!(find("`trace` alone"), Some(false));
        // trace-core minus lua: +10, +9, +10.
        assert_eq!(find("Lua"), Some(false));
        // trace-core over bare: 5.9%, 4.2%, 5.6%.
        assert_eq!(find("SDK overhead"), Some(true));
        assert_eq!(find("RSS"), Some(true));
        assert_eq!(find("route_retries.wasm <= 150 KiB"), Some(false));
        assert_eq!(find("mesh_sidecar.wasm <= 200 KiB"), Some(true));
        let v = versus(&all, &rows);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].filter.as_str(), v[0].native.as_str()),
            ("trace", "native-trace")
        );
        assert!(close(v[0].diff.median, 60.0), "{:?}", v[0].diff);
        assert!(versus_table(&v).contains("| `trace` vs `native-trace` | +70.0"));
        let svg = svg_chart(&rows, "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("added Envoy CPU us/request over no filter"));
        let table = results_table(&rows);
        assert!(table.contains("| `trace` "), "{table}");
        assert!(
            table.contains("| **125.0 (120.0 to 130.0)** | **+70.0 (+65.0 to +75.0)** |"),
            "{table}"
        );
    }
}
