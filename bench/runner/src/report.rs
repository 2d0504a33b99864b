//! The numbers a bench run reports and how they are shown: medians and spread over the
//! interleaved rounds, ratios paired round by round with the baseline, the targets of issue #7,
//! the Markdown report and a hand-written SVG bar chart.

use std::fmt::Write as _;

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
    /// Envoy's resident memory after warm-up, KiB.
    pub rss_kib: u64,
}

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

fn paired(a: &[Sample], b: &[Sample], f: impl Fn(&Sample, &Sample) -> f64) -> Spread {
    let values: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x, y)).collect();
    Spread::of(&values)
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
            Row {
                key: m.scenario.key.clone(),
                label: m.scenario.label.clone(),
                concurrency: m.scenario.concurrency,
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

/// Throughput of scenario `a` over scenario `b`, paired per round.
pub fn ratio_between(all: &[Measured], a: &str, b: &str) -> Option<Spread> {
    let find = |k: &str| all.iter().find(|m| m.scenario.key == k);
    let (a, b) = (find(a)?, find(b)?);
    Some(paired(&a.throughput, &b.throughput, |x, y| x.rps / y.rps))
}

/// A `.wasm` and its size after wasm-opt.
#[derive(Clone, Debug)]
pub struct WasmSize {
    /// File name in `target/filters/`.
    pub file: String,
    /// Bytes.
    pub bytes: u64,
}

/// One target of issue #7 and how the run did.
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

fn spread_text(s: &Spread, digits: usize) -> String {
    format!(
        "{:.d$} ({:.d$} to {:.d$})",
        s.median,
        s.min,
        s.max,
        d = digits
    )
}

/// Evaluates the targets of issue #7.
pub fn targets(all: &[Measured], rows: &[Row], sizes: &[WasmSize]) -> Vec<Target> {
    let row = |k: &str| rows.iter().find(|r| r.key == k);
    let mut out = Vec::new();
    for key in ["trace", "metrics", "retries"] {
        if let Some(r) = row(key) {
            out.push(Target {
                what: format!("{key} alone keeps >= 0.93 of baseline throughput"),
                measured: spread_text(&r.ratio, 3),
                met: r.ratio.median >= 0.93,
            });
        }
    }
    for (key, how) in [
        ("all3", "as three modules"),
        ("mesh", "in one module (mesh_sidecar)"),
        ("all3-c2", "as three modules"),
    ] {
        if let Some(r) = row(key) {
            out.push(Target {
                what: format!(
                    "all three together {how} (--concurrency {}) keep >= 0.85",
                    r.concurrency
                ),
                measured: spread_text(&r.ratio, 3),
                met: r.ratio.median >= 0.85,
            });
        }
    }
    for key in ["trace", "metrics", "retries"] {
        if let Some(r) = row(key) {
            out.push(Target {
                what: format!("{key}: added p50 latency <= 25 us at one connection"),
                measured: format!("{} us", spread_text(&r.added_p50_us, 1)),
                met: r.added_p50_us.median <= 25.0,
            });
        }
    }
    if let Some(s) = ratio_between(all, "trace-core", "lua") {
        out.push(Target {
            what: "trace filter on our SDK (trace-core) vs the Lua equivalent >= 1.0".to_string(),
            measured: spread_text(&s, 3),
            met: s.median >= 1.0,
        });
    }
    if let Some(s) = ratio_between(all, "trace-core", "bare") {
        let overhead = Spread {
            median: (1.0 - s.median) * 100.0,
            min: (1.0 - s.max) * 100.0,
            max: (1.0 - s.min) * 100.0,
        };
        out.push(Target {
            what: "SDK overhead vs the bare proxy-wasm equivalent <= 3% throughput".to_string(),
            measured: format!("{} %", spread_text(&overhead, 1)),
            met: overhead.median <= 3.0,
        });
    }
    for size in sizes.iter().filter(|s| {
        [
            "trace_propagation.wasm",
            "service_metrics.wasm",
            "route_retries.wasm",
        ]
        .contains(&s.file.as_str())
    }) {
        out.push(Target {
            what: format!("{} <= 150 KiB after wasm-opt", size.file),
            measured: format!("{} B ({:.1} KiB)", size.bytes, size.bytes as f64 / 1024.0),
            met: size.bytes <= SIZE_LIMIT_BYTES,
        });
    }
    out
}

/// The results table (Markdown).
pub fn results_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | workers | req/s (min to max) | vs baseline | added us/request | \
         p50 us @1 conn | added p50 us | p99 us @1 conn | added p99 us | RSS MiB | added RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| `{}` {} | {} | {:.0} ({:.0} to {:.0}) | {} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {:+.1} |",
            r.key,
            r.label,
            r.concurrency,
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

/// A two-panel horizontal bar chart: throughput relative to the baseline (median, min-max
/// whisker, the 0.85 and 0.93 target lines) and added p50 latency at one connection (the 25 us
/// line). Plain SVG 1.1, no scripts or external fonts.
pub fn svg_chart(rows: &[Row], title: &str) -> String {
    let bars: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.key.starts_with("baseline"))
        .collect();
    let (label_w, panel_w, gap, row_h, top) = (110.0, 300.0, 50.0, 26.0, 64.0);
    let width = label_w + panel_w * 2.0 + gap + 30.0;
    let height = top + row_h * bars.len() as f64 + 40.0;
    let x1 = label_w; // left panel origin
    let x2 = label_w + panel_w + gap; // right panel origin
    let ratio_max = 1.1_f64;
    let lat_max = bars
        .iter()
        .map(|r| r.added_p50_us.max)
        .fold(30.0_f64, f64::max)
        * 1.1;
    let rx = |v: f64| x1 + (v.clamp(0.0, ratio_max) / ratio_max) * panel_w;
    let lx = |v: f64| x2 + (v.clamp(0.0, lat_max) / lat_max) * panel_w;
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
    let _ = writeln!(
        s,
        r#"<text x="{x1}" y="44">throughput / baseline (median, min-max)</text><text x="{x2}" y="44">added p50 latency at 1 connection, us</text>"#
    );
    let bottom = top + row_h * bars.len() as f64;
    for (v, color) in [(0.85, "#c0392b"), (0.93, "#e67e22"), (1.0, "#555")] {
        let x = rx(v);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{color}" stroke-dasharray="4 3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="{color}">{v}</text>"#,
            top - 8.0,
            bottom + 14.0
        );
    }
    let x = lx(25.0);
    let _ = writeln!(
        s,
        r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#c0392b" stroke-dasharray="4 3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#c0392b">25 us</text>"##,
        top - 8.0,
        bottom + 14.0
    );
    for (i, r) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mid = y + row_h / 2.0;
        let fill = match r.key.as_str() {
            "lua" => "#8e44ad",
            "bare" => "#7f8c8d",
            "wasm-noop" | "sdk-noop" => "#bdc3c7",
            k if k.ends_with("-c2") => "#16a085",
            _ => "#2980b9",
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            mid + 4.0,
            esc(&r.key)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{x1:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/><line x1="{:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="black"/><text x="{:.1}" y="{:.1}">{:.3}</text>"#,
            y + 4.0,
            rx(r.ratio.median) - x1,
            row_h - 8.0,
            rx(r.ratio.min),
            rx(r.ratio.max),
            rx(r.ratio.max) + 4.0,
            mid + 4.0,
            r.ratio.median
        );
        let _ = writeln!(
            s,
            r#"<rect x="{x2:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/><line x1="{:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="black"/><text x="{:.1}" y="{:.1}">{:.1}</text>"#,
            y + 4.0,
            lx(r.added_p50_us.median) - x2,
            row_h - 8.0,
            lx(r.added_p50_us.min),
            lx(r.added_p50_us.max),
            lx(r.added_p50_us.max) + 4.0,
            mid + 4.0,
            r.added_p50_us.median
        );
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
            requests: 10,
            errors: 0,
        }
    }

    fn measured(key: &str, rps: [f64; 3], p50: [f64; 3]) -> Measured {
        let scenario = scenario::all(1)
            .into_iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| scenario::all(1).remove(0));
        Measured {
            scenario,
            throughput: rps.iter().map(|r| sample(*r, 0.0)).collect(),
            latency: p50.iter().map(|p| sample(0.0, *p)).collect(),
            rss_kib: 40 * 1024,
        }
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

    #[test]
    fn ratios_pair_rounds_and_targets_follow() {
        let all = vec![
            measured("baseline", [100.0, 200.0, 100.0], [100.0, 100.0, 120.0]),
            measured("trace", [95.0, 180.0, 90.0], [110.0, 140.0, 125.0]),
            measured("trace-core", [99.0, 198.0, 99.0], [100.0, 100.0, 120.0]),
            measured("lua", [90.0, 180.0, 90.0], [100.0, 100.0, 120.0]),
            measured("bare", [100.0, 200.0, 100.0], [100.0, 100.0, 120.0]),
        ];
        let rows = rows(&all);
        let trace = &rows[1];
        assert!((trace.ratio.median - 0.9).abs() < 1e-9);
        assert!((trace.ratio.max - 0.95).abs() < 1e-9);
        assert_eq!(trace.added_p50_us.median, 10.0);
        let sizes = vec![WasmSize {
            file: "route_retries.wasm".into(),
            bytes: 200_000,
        }];
        let t = targets(&all, &rows, &sizes);
        let find = |what: &str| t.iter().find(|t| t.what.contains(what)).map(|t| t.met);
        assert_eq!(find("trace alone"), Some(false));
        assert_eq!(find("trace: added p50"), Some(true));
        assert_eq!(find("vs the Lua"), Some(true));
        assert_eq!(find("SDK overhead"), Some(true));
        assert_eq!(find("route_retries.wasm"), Some(false));
        let svg = svg_chart(&rows, "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(results_table(&rows).contains("`trace`"));
    }
}
