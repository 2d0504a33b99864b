//! What the demo prints and writes after the traffic: the trace tree of one request, the retries
//! and the failures they absorbed, the service graph from the sidecars' metrics, the admin URLs,
//! and `report.html` with the graph and latency histograms as SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use toolkit::collector::Span;
use toolkit::prom::{self, Histogram, Sample};

use crate::mesh::TrafficResult;
use crate::trace::{build_trees, render_tree};

/// One edge of the service graph.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The caller (`client` when it has no sidecar).
    pub source: String,
    /// The callee.
    pub destination: String,
    /// Requests as the caller's sidecar saw them (after retries); the callee's view for a caller
    /// without a sidecar.
    pub requests: f64,
    /// Of which 5xx or no response.
    pub errors: f64,
    /// Latency histogram of the same view, ms.
    pub latency: Histogram,
    /// Attempts the callee's sidecars answered (retries included).
    pub attempts: f64,
    /// Of which 5xx.
    pub attempt_errors: f64,
}

impl Edge {
    /// errors / requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests > 0.0 {
            self.errors / self.requests
        } else {
            0.0
        }
    }
}

/// Retries by rule, from route_retries' metrics: (rule, requests, retried, retries, denied,
/// clamped).
pub type RuleRow = (String, f64, f64, f64, f64, f64);

/// The retry picture.
#[derive(Debug, Clone, Default)]
pub struct Retries {
    /// Per rule, summed over sidecars.
    pub rules: Vec<RuleRow>,
    /// Retries made.
    pub retries: f64,
    /// Requests that wanted retries and got none from the budget.
    pub budget_denied: f64,
    /// Requests granted fewer retries than they wanted.
    pub budget_clamped: f64,
    /// 5xx answered by the failing service's sidecars (every attempt).
    pub upstream_errors: f64,
    /// 5xx its callers' sidecars passed on after retries.
    pub passed_on: f64,
}

/// Everything the demo reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// What the client saw.
    pub traffic: TrafficResult,
    /// The service graph.
    pub edges: Vec<Edge>,
    /// Retries and absorbed failures.
    pub retries: Retries,
    /// The spans of the trace shown.
    pub trace: Vec<Span>,
    /// Spans and traces received.
    pub span_count: usize,
    /// Distinct traces.
    pub trace_count: usize,
    /// (instance, admin port).
    pub admins: Vec<(String, u16)>,
    /// (service, what its app is written in) for the apps not in Rust.
    pub apps: Vec<(String, String)>,
}

/// The hops of a trace through an app not written in Rust: for each such service, its inbound
/// sidecar's SERVER span and the outbound sidecar's CLIENT spans whose parent it is. The app sat
/// between the two and only its propagation links them: a line per hop, saying whether it did.
pub fn polyglot_hops(trace: &[Span], apps: &[(String, String)]) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for (service, language) in apps {
        for server in trace
            .iter()
            .filter(|s| &s.service == service && s.kind == "SERVER")
        {
            let calls: Vec<&Span> = trace
                .iter()
                .filter(|c| &c.service == service && c.kind == "CLIENT")
                .filter(|c| c.parent_id.as_deref() == Some(server.id.as_str()))
                .collect();
            let line = match calls.first() {
                Some(call) => format!(
                    "polyglot hop: the {service} app ({language}) carried the trace: its sidecar's SERVER span {} is the parent of its call's CLIENT span {}{}",
                    server.id,
                    call.id,
                    match calls.len() {
                        1 => String::new(),
                        n => format!(" (and {} more)", n - 1),
                    }
                ),
                None => format!(
                    "polyglot hop: the {service} app ({language}) did NOT carry the trace: no CLIENT span of {service} has its SERVER span {} as parent",
                    server.id
                ),
            };
            out.push((!calls.is_empty(), line));
        }
    }
    out
}

/// The trace as a waterfall, as trace UIs draw one: a row per span (depth first, indented under
/// its parent), its bar on a shared time axis from the first span's start, coloured by service,
/// outlined red when it failed; apps in `apps` are named after their service. Plain SVG.
pub fn waterfall_svg(trace: &[Span], apps: &[(String, String)]) -> String {
    fn rows<'a>(node: &'a crate::trace::TraceNode, depth: usize, out: &mut Vec<(usize, &'a Span)>) {
        out.push((depth, &node.span));
        for c in &node.children {
            rows(c, depth + 1, out);
        }
    }
    let trees = build_trees(trace);
    let mut all = Vec::new();
    for t in &trees {
        rows(t, 0, &mut all);
    }
    let Some(start) = all.iter().map(|(_, s)| s.timestamp_us).min() else {
        return "<p>no trace</p>".to_string();
    };
    let end = all
        .iter()
        .map(|(_, s)| s.timestamp_us + s.duration_us)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let total = (end - start) as f64;
    let (label_w, bar_w, row_h) = (430.0, 560.0, 24.0);
    let height = 40.0 + row_h * all.len() as f64;
    let x = |t: u64| label_w + bar_w * (t.saturating_sub(start)) as f64 / total;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' font-family='sans-serif' font-size='11'>",
        label_w + bar_w + 110.0
    );
    for i in 0..=4 {
        let t = start + (total * f64::from(i) / 4.0) as u64;
        let _ = write!(
            svg,
            "<line x1='{0:.1}' y1='18' x2='{0:.1}' y2='{height}' stroke='#ddd'/>             <text x='{0:.1}' y='12' text-anchor='middle'>{1:.2} ms</text>",
            x(t),
            (t - start) as f64 / 1000.0
        );
    }
    const COLOURS: [&str; 5] = ["#42a5f5", "#ab47bc", "#66bb6a", "#ffa726", "#26c6da"];
    let mut services: Vec<&str> = Vec::new();
    for (i, (depth, s)) in all.iter().enumerate() {
        if !services.contains(&s.service.as_str()) {
            services.push(&s.service);
        }
        let colour = services
            .iter()
            .position(|n| *n == s.service)
            .and_then(|i| COLOURS.get(i % COLOURS.len()))
            .unwrap_or(&COLOURS[0]);
        let y = 24.0 + row_h * i as f64;
        let app = apps
            .iter()
            .find(|(service, _)| *service == s.service)
            .map(|(_, language)| format!(" [{language}]"))
            .unwrap_or_default();
        let (x0, x1) = (x(s.timestamp_us), x(s.timestamp_us + s.duration_us));
        let outline = if s.status() >= 500 { "#c62828" } else { "none" };
        let _ = write!(
            svg,
            "<text x='{:.1}' y='{:.1}'>{} {} {}{}</text>             <rect x='{x0:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{colour}' stroke='{outline}' stroke-width='2'><title>{}</title></rect>             <text x='{:.1}' y='{:.1}'>{} {:.2} ms</text>",
            4.0 + 14.0 * *depth as f64,
            y + 14.0,
            escape(&s.service),
            escape(&s.kind),
            escape(&s.name),
            escape(&app),
            y + 3.0,
            (x1 - x0).max(1.0),
            row_h - 6.0,
            escape(&format!("span {} parent {}", s.id, s.parent_id.as_deref().unwrap_or("-"))),
            x1 + 4.0,
            y + 14.0,
            s.status(),
            s.duration_us as f64 / 1000.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn is_error(code: &str) -> bool {
    code == "0" || code.starts_with('5')
}

/// Builds the service graph from every sidecar's samples (reporter=source for callers with a
/// sidecar, reporter=destination for the rest).
pub fn service_graph(samples: &[Sample]) -> Vec<Edge> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for s in samples.iter().filter(|s| s.name == "mesh_requests_total") {
        let key = (
            s.label("source_service").to_string(),
            s.label("destination_service").to_string(),
        );
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut edges = Vec::new();
    for (src, dst) in keys {
        let view = |reporter: &'static str| {
            let (src, dst) = (src.clone(), dst.clone());
            move |s: &Sample| {
                s.label("reporter") == reporter
                    && s.label("source_service") == src
                    && s.label("destination_service") == dst
            }
        };
        let source_requests = prom::sum(samples, "mesh_requests_total", view("source"));
        let reporter = if source_requests > 0.0 {
            "source"
        } else {
            "destination"
        };
        let keep = view(reporter);
        let requests = prom::sum(samples, "mesh_requests_total", &keep);
        let errors = prom::sum(samples, "mesh_requests_total", |s| {
            keep(s) && is_error(s.label("response_code"))
        });
        let dest = view("destination");
        let attempts = prom::sum(samples, "mesh_requests_total", &dest);
        let attempt_errors = prom::sum(samples, "mesh_requests_total", |s| {
            dest(s) && is_error(s.label("response_code"))
        });
        let name = |s: &str| {
            if s == "unknown" {
                "client".to_string()
            } else {
                s.to_string()
            }
        };
        edges.push(Edge {
            source: name(&src),
            destination: name(&dst),
            requests,
            errors,
            latency: Histogram::collect(samples, "mesh_request_duration_milliseconds", &keep),
            attempts,
            attempt_errors,
        });
    }
    // Callers first: the client's edge, then in order of traffic.
    edges.sort_by(|a, b| {
        (a.source != "client")
            .cmp(&(b.source != "client"))
            .then(b.requests.total_cmp(&a.requests))
    });
    edges
}

/// The retry picture from every sidecar's samples; `failing` is the service that fails.
pub fn retries(samples: &[Sample], failing: &str) -> Retries {
    let mut rules: BTreeMap<String, RuleRow> = BTreeMap::new();
    let metrics = [
        "meshwasm_retry_requests_total",
        "meshwasm_retry_requests_retried_total",
        "meshwasm_retry_retries_total",
        "meshwasm_retry_budget_denied_total",
        "meshwasm_retry_budget_clamped_total",
    ];
    for s in samples {
        let Some(i) = metrics.iter().position(|m| *m == s.name) else {
            continue;
        };
        let rule = s.label("rule").to_string();
        let row = rules
            .entry(rule.clone())
            .or_insert((rule, 0.0, 0.0, 0.0, 0.0, 0.0));
        match i {
            0 => row.1 += s.value,
            1 => row.2 += s.value,
            2 => row.3 += s.value,
            3 => row.4 += s.value,
            _ => row.5 += s.value,
        }
    }
    let rules: Vec<RuleRow> = rules.into_values().collect();
    let errors = |reporter: &'static str| {
        prom::sum(samples, "mesh_requests_total", |s| {
            s.label("reporter") == reporter
                && s.label("destination_service") == failing
                && is_error(s.label("response_code"))
        })
    };
    Retries {
        retries: rules.iter().map(|r| r.3).sum(),
        budget_denied: rules.iter().map(|r| r.4).sum(),
        budget_clamped: rules.iter().map(|r| r.5).sum(),
        rules,
        upstream_errors: errors("destination"),
        passed_on: errors("source"),
    }
}

/// The trace to show: the first whose spans cover every service in `services` and, when there is
/// one, where a retry shows (an attempt that failed, then another).
pub fn pick_trace(spans: &[Span], services: &[&str]) -> Vec<Span> {
    let mut by_trace: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.as_str()).or_default().push(s);
    }
    let mut complete: Vec<&Vec<&Span>> = by_trace
        .values()
        .filter(|t| {
            services
                .iter()
                .all(|svc| t.iter().any(|s| s.service == *svc))
        })
        .collect();
    complete.sort_by_key(|t| t.iter().map(|s| s.timestamp_us).min().unwrap_or(0));
    let retried = |t: &&&Vec<&Span>| {
        t.iter().any(|s| {
            s.kind == "SERVER" && s.status() >= 500 && s.service == services[services.len() - 1]
        }) && t
            .iter()
            .all(|s| s.kind != "SERVER" || s.service != services[0] || s.status() < 300)
    };
    complete
        .iter()
        .find(retried)
        .or(complete.first())
        .map(|t| t.iter().map(|s| (*s).clone()).collect())
        .unwrap_or_default()
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

impl Report {
    /// The text the demo prints.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let t = &self.traffic;
        let _ = writeln!(
            out,
            "\n== Traffic\n{} requests in {:.1} s ({:.0} rps): {} ok, {} errors{}",
            t.sent,
            t.elapsed.as_secs_f64(),
            t.sent as f64 / t.elapsed.as_secs_f64().max(0.001),
            t.ok,
            t.error_count(),
            if t.errors.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    t.errors
                        .iter()
                        .map(|(s, n)| format!(
                            "{n} x {}",
                            if *s == 0 {
                                "no answer".to_string()
                            } else {
                                s.to_string()
                            }
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );

        let _ = writeln!(
            out,
            "\n== One request's trace ({} spans from the collector, {} traces)",
            self.span_count, self.trace_count
        );
        let trees = build_trees(&self.trace);
        if trees.is_empty() {
            let _ = writeln!(out, "no complete trace received");
        }
        for tree in &trees {
            let _ = writeln!(out, "trace {}", tree.span.trace_id);
            out.push_str(&render_tree(tree));
        }
        for (_, line) in polyglot_hops(&self.trace, &self.apps) {
            let _ = writeln!(out, "{line}");
        }

        let r = &self.retries;
        let _ = writeln!(out, "\n== Retries (route_retries filter, all sidecars)");
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>9} {:>14} {:>8}",
            "rule", "requests", "retried", "retries", "budget-denied", "clamped"
        );
        for (rule, requests, retried, retries, denied, clamped) in &r.rules {
            let _ = writeln!(
                out,
                "{rule:<16} {requests:>9} {retried:>9} {retries:>9} {denied:>14} {clamped:>8}"
            );
        }
        let absorbed = (r.upstream_errors - r.passed_on).max(0.0);
        let pct = |a: f64, b: f64| if b > 0.0 { 100.0 * a / b } else { 0.0 };
        let _ = writeln!(out, "retries: {}", r.retries);
        let _ = writeln!(out, "budget-denied retries: {}", r.budget_denied);
        let _ = writeln!(
            out,
            "upstream errors: {} (5xx answered by inventory, counted by its sidecars, every attempt)",
            r.upstream_errors
        );
        let _ = writeln!(
            out,
            "absorbed by retries: {absorbed} ({:.1}%); passed on to orders: {}",
            pct(absorbed, r.upstream_errors),
            r.passed_on
        );
        let _ = writeln!(
            out,
            "client errors: {} of {} requests ({:.1}%)",
            t.error_count(),
            t.sent,
            pct(t.error_count() as f64, t.sent as f64)
        );

        let _ = writeln!(
            out,
            "\n== Service graph (service_metrics, from the sidecars' /stats/prometheus)"
        );
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>7} {:>9} {:>9} {:>9} {:>11}",
            "source -> destination", "requests", "errors", "p50", "p99", "attempts", "attempt err"
        );
        for e in &self.edges {
            let _ = writeln!(
                out,
                "{:<24} {:>8} {:>6.1}% {:>9} {:>9} {:>9} {:>10.1}%",
                format!("{} -> {}", e.source, e.destination),
                e.requests,
                100.0 * e.error_rate(),
                ms(e.latency.quantile(0.5)),
                ms(e.latency.quantile(0.99)),
                e.attempts,
                pct(e.attempt_errors, e.attempts)
            );
        }
        let _ = writeln!(
            out,
            "(requests, errors and latency as the caller's sidecar saw them, after retries; \
             attempts as the callee's sidecars answered them)"
        );

        let _ = writeln!(out, "\n== Admin endpoints");
        for (name, port) in &self.admins {
            let _ = writeln!(
                out,
                "{name:<12} http://127.0.0.1:{port}/  (/stats/prometheus, /clusters, /config_dump)"
            );
        }
        let _ = writeln!(
            out,
            "\nsummary: requests={} client_errors={} upstream_errors={} retries={} budget_denied={} spans={} edges={}",
            t.sent,
            t.error_count(),
            r.upstream_errors,
            r.retries,
            r.budget_denied,
            self.span_count,
            self.edges.len()
        );
        out
    }

    /// `report.html`: the service graph and each edge's latency histogram as SVG.
    pub fn html(&self) -> String {
        let mut nodes: Vec<&str> = Vec::new();
        for e in &self.edges {
            for n in [e.source.as_str(), e.destination.as_str()] {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
        }
        let x = |n: &str| 90 + 220 * nodes.iter().position(|m| *m == n).unwrap_or(0);
        let width = 220 * nodes.len().max(1) + 40;
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='200' font-family='sans-serif' font-size='12'>\
             <defs><marker id='a' markerWidth='10' markerHeight='8' refX='10' refY='4' orient='auto'>\
             <path d='M0,0 L10,4 L0,8 z' fill='#555'/></marker></defs>"
        );
        for e in &self.edges {
            let (x1, x2) = (x(&e.source), x(&e.destination));
            let color = if e.error_rate() > 0.01 {
                "#c0392b"
            } else {
                "#2e7d32"
            };
            let _ = write!(
                svg,
                "<line x1='{}' y1='100' x2='{}' y2='100' stroke='{color}' stroke-width='2' marker-end='url(#a)'/>\
                 <text x='{}' y='80' text-anchor='middle'>{} req, {:.1}% err</text>\
                 <text x='{}' y='130' text-anchor='middle'>p50 {} / p99 {}</text>",
                x1 + 55,
                x2 - 55,
                (x1 + x2) / 2,
                e.requests,
                100.0 * e.error_rate(),
                (x1 + x2) / 2,
                ms(e.latency.quantile(0.5)),
                ms(e.latency.quantile(0.99)),
            );
        }
        for n in &nodes {
            let _ = write!(
                svg,
                "<rect x='{}' y='80' width='110' height='40' rx='8' fill='#e3f2fd' stroke='#1565c0'/>\
                 <text x='{}' y='105' text-anchor='middle' font-weight='bold'>{}</text>",
                x(n) - 55,
                x(n),
                escape(n)
            );
        }
        svg.push_str("</svg>");

        let mut hists = String::new();
        for e in &self.edges {
            let bars = e.latency.bars();
            let max = bars.iter().map(|b| b.2).fold(1.0, f64::max);
            let bw = 36;
            let mut h = format!(
                "<h3>{} &rarr; {}</h3><svg xmlns='http://www.w3.org/2000/svg' width='{}' height='190' font-family='sans-serif' font-size='10'>",
                escape(&e.source),
                escape(&e.destination),
                bw * bars.len().max(1) + 20
            );
            for (i, (_, le, count)) in bars.iter().enumerate() {
                let height = (140.0 * count / max).round();
                let label = if le.is_infinite() {
                    "+Inf".to_string()
                } else {
                    format!("{le}")
                };
                let _ = write!(
                    h,
                    "<rect x='{}' y='{}' width='{}' height='{height}' fill='#42a5f5'/>\
                     <text x='{}' y='{}' text-anchor='middle'>{count}</text>\
                     <text x='{}' y='180' text-anchor='middle'>≤{label}</text>",
                    10 + i * bw,
                    155.0 - height,
                    bw - 4,
                    10 + i * bw + (bw - 4) / 2,
                    150.0 - height,
                    10 + i * bw + (bw - 4) / 2,
                );
            }
            h.push_str("</svg>");
            hists.push_str(&h);
        }
        format!(
            "<!doctype html><html><head><meta charset='utf-8'><title>meshwasm demo</title>\
             <style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f5f5f5;padding:1em}}</style></head>\
             <body><h1>meshwasm demo</h1><h2>Service graph</h2>{svg}\
             <h2>One request's trace</h2>{}\
             <h2>Latency histograms (ms, caller's sidecar)</h2>{hists}\
             <h2>Printed report</h2><pre>{}</pre></body></html>\n",
            waterfall_svg(&self.trace, &self.apps),
            escape(&self.text())
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = r#"mesh_requests_total{reporter="source",source_service="orders",destination_service="inventory",response_code="200"} 95
mesh_requests_total{reporter="source",source_service="orders",destination_service="inventory",response_code="503"} 5
mesh_requests_total{reporter="destination",source_service="orders",destination_service="inventory",response_code="200"} 95
mesh_requests_total{reporter="destination",source_service="orders",destination_service="inventory",response_code="503"} 30
mesh_requests_total{reporter="destination",source_service="unknown",destination_service="frontend",response_code="200"} 100
mesh_request_duration_milliseconds_bucket{reporter="source",source_service="orders",destination_service="inventory",le="5"} 100
mesh_request_duration_milliseconds_bucket{reporter="source",source_service="orders",destination_service="inventory",le="+Inf"} 100
meshwasm_retry_retries_total{rule="inventory-read"} 28
meshwasm_retry_budget_denied_total{rule="inventory-read"} 2
"#;

    #[test]
    fn graph_and_retries_from_samples() {
        let samples = prom::parse(STATS);
        let edges = service_graph(&samples);
        assert_eq!(edges.len(), 2);
        assert_eq!(
            (edges[0].source.as_str(), edges[0].requests),
            ("client", 100.0)
        );
        let inv = &edges[1];
        assert_eq!(
            (inv.requests, inv.errors, inv.attempts, inv.attempt_errors),
            (100.0, 5.0, 125.0, 30.0)
        );
        assert_eq!(inv.latency.quantile(0.5), Some(2.5));
        let r = retries(&samples, "inventory");
        assert_eq!(
            (r.retries, r.budget_denied, r.upstream_errors, r.passed_on),
            (28.0, 2.0, 30.0, 5.0)
        );
    }

    fn span(id: &str, parent: Option<&str>, service: &str, kind: &str, ts: u64) -> Span {
        Span {
            trace_id: "t".into(),
            id: id.into(),
            parent_id: parent.map(str::to_string),
            kind: kind.into(),
            name: "GET inbound".into(),
            timestamp_us: ts,
            duration_us: 1000,
            service: service.into(),
            tags: [("http.status_code".to_string(), "200".to_string())].into(),
        }
    }

    #[test]
    fn polyglot_hops_and_the_waterfall() {
        let apps = [("orders".to_string(), "python".to_string())];
        let linked = vec![
            span("a", None, "frontend", "SERVER", 0),
            span("b", Some("a"), "frontend", "CLIENT", 100),
            span("c", Some("b"), "orders", "SERVER", 200),
            span("d", Some("c"), "orders", "CLIENT", 300),
        ];
        let hops = polyglot_hops(&linked, &apps);
        assert_eq!(hops.len(), 1);
        assert!(hops[0].0, "{hops:?}");
        assert!(hops[0]
            .1
            .contains("SERVER span c is the parent of its call's CLIENT span d"));
        let mut broken = linked.clone();
        broken[3].parent_id = None;
        assert!(!polyglot_hops(&broken, &apps)[0].0);

        let svg = waterfall_svg(&linked, &apps);
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
        assert!(svg.contains("orders SERVER GET inbound [python]"), "{svg}");
        assert!(
            svg.contains("1.30 ms"),
            "the axis ends at the last span's end: {svg}"
        );
    }
}
