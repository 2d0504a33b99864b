//! The scenarios: which HTTP filters each puts before the router of the one bench bootstrap
//! (`bench/configs/sidecar.yaml`), or which native Envoy settings it puts into the connection
//! manager and the route, at which `--concurrency`, and what a probe request must show to prove
//! the filters or native features really ran.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Result;

/// Evidence, checked with one probe request before any load, that a scenario's filters ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The upstream got a child `traceparent` and B3 headers of the probe's trace.
    TraceHeaders,
    /// The upstream got our `x-mesh-peer` identity header.
    PeerHeader,
    /// The upstream got a child `traceparent` of the probe's trace (W3C only, no B3 required).
    W3cChild,
    /// A second probe, which the upstream answers with 503 (see [`crate::upstream`]), comes back
    /// with `x-envoy-attempt-count` equal to this many tries: the retries really happened.
    Retried(u32),
    /// An admin stat whose name contains this text counted the probe.
    Stat(&'static str),
    /// An admin stat whose name contains this text exists and stayed at 0 over the probes.
    Zero(&'static str),
}

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short key, used in tables, file names and the chart.
    pub key: String,
    /// What it is, for the report.
    pub label: String,
    /// Configuration snippets, HTTP filters in filter-chain order. A plain file name is an HTTP
    /// filter of `bench/configs/filters/`; `hcm/<file>` is connection-manager settings of
    /// `bench/configs/hcm/` and `route/<file>` route settings of `bench/configs/route/` (Envoy's
    /// native features: see [`HCM_DIR`], [`ROUTE_DIR`]).
    pub filters: Vec<&'static str>,
    /// Envoy `--concurrency`.
    pub concurrency: u32,
    /// The key of the scenario it is compared with (the baseline at the same concurrency).
    pub baseline: String,
    /// What the probe must show.
    pub expect: Vec<Expect>,
    /// Where its `.wasm` files come from when not the run's own filters (`{{FILTERS_DIR}}`): the
    /// twin of [`with_twins`], built from another revision.
    pub filters_dir: Option<PathBuf>,
}

const TRACE: &str = "trace_propagation.yaml";
const METRICS: &str = "service_metrics.yaml";
const RETRIES: &str = "route_retries.yaml";
const RETRY_STAT: &str = "meshwasm_retry_requests_total;.rule=orders-read";
/// Requests whose end-of-stream properties did not come in one evaluation (meshwasm::batch):
/// every probe is proxied, so none may fall back.
const BATCH_FALLBACKS: &str = "meshwasm_property_batch_fallbacks_total";
const ZIPKIN: &str = "hcm/tracing_zipkin.yaml";
const ZIPKIN_JSON: &str = "hcm/tracing_zipkin_json.yaml";
const OTEL: &str = "hcm/tracing_otel.yaml";
const RETRY_POLICY: &str = "route/retry_policy.yaml";
/// Mutual TLS to the upstream (through the peer Envoy of `bench/configs/tls_peer.yaml`).
pub const MTLS: &str = "cluster/mtls.yaml";
/// Tries of a request that fails every time under the retry scenarios' policy: one plus
/// `num_retries` 2.
const TRIES: u32 = 3;

/// Snippets under this prefix go into the connection manager (`{{HCM_EXTRA}}`).
pub const HCM_DIR: &str = "hcm/";
/// Snippets under this prefix go into the route's `route:` action (`{{ROUTE_EXTRA}}`).
pub const ROUTE_DIR: &str = "route/";
/// Snippets under this prefix go into the `upstream` cluster (`{{CLUSTER_EXTRA}}`).
pub const CLUSTER_DIR: &str = "cluster/";

/// The connection-manager snippets of Envoy's native tracers, each with the prefix of the stats
/// its tracer counts under.
const TRACERS: [(&str, &str); 3] = [
    (ZIPKIN_JSON, "tracing.zipkin."),
    (ZIPKIN, "tracing.zipkin."),
    (OTEL, "tracing.opentelemetry."),
];

/// Where a configuration snippet of [`Scenario::filters`] goes in the bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// An HTTP filter before the router (`{{HTTP_FILTERS}}`), from `bench/configs/filters/`.
    HttpFilter,
    /// Keys of the connection manager's `typed_config` (`{{HCM_EXTRA}}`).
    Hcm,
    /// Keys of the route's `route:` action (`{{ROUTE_EXTRA}}`).
    Route,
    /// Keys of the `upstream` cluster (`{{CLUSTER_EXTRA}}`), from `bench/configs/cluster/`.
    Cluster,
}

/// Where `snippet` goes, from its prefix.
pub fn place(snippet: &str) -> Place {
    if snippet.starts_with(HCM_DIR) {
        Place::Hcm
    } else if snippet.starts_with(ROUTE_DIR) {
        Place::Route
    } else if snippet.starts_with(CLUSTER_DIR) {
        Place::Cluster
    } else {
        Place::HttpFilter
    }
}

impl Scenario {
    /// The stats prefix of the native tracer the scenario configures (`tracing.zipkin.`), if any.
    pub fn native_tracer(&self) -> Option<&'static str> {
        TRACERS
            .iter()
            .find(|(file, _)| self.filters.contains(file))
            .map(|(_, prefix)| *prefix)
    }
}

/// Every scenario of the issue at `concurrency` workers, plus all three filters and the
/// baseline at 2 workers when `concurrency` is not 2 (scenario 6).
pub fn all(concurrency: u32) -> Vec<Scenario> {
    let base = "baseline".to_string();
    let s = |key: &str, label: &str, filters: Vec<&'static str>, expect: Vec<Expect>| Scenario {
        key: key.to_string(),
        label: label.to_string(),
        filters,
        concurrency,
        baseline: base.clone(),
        expect,
        filters_dir: None,
    };
    let all3 = vec![TRACE, METRICS, RETRIES];
    let all3_expect = vec![
        Expect::TraceHeaders,
        Expect::PeerHeader,
        Expect::Retried(TRIES),
        Expect::Stat(RETRY_STAT),
        Expect::Zero(BATCH_FALLBACKS),
    ];
    let mut list = vec![
        s("baseline", "no filter (router only)", vec![], vec![]),
        s(
            "trace",
            "trace-propagation alone (README config: span export, incoming sampled)",
            vec![TRACE],
            vec![Expect::TraceHeaders, Expect::Zero(BATCH_FALLBACKS)],
        ),
        s(
            "metrics",
            "service-metrics alone (README config: signed peer header)",
            vec![METRICS],
            vec![Expect::PeerHeader, Expect::Zero(BATCH_FALLBACKS)],
        ),
        s(
            "retries",
            "route-retries alone (README config: one rule, retry budget)",
            vec![RETRIES],
            vec![Expect::Retried(TRIES), Expect::Stat(RETRY_STAT)],
        ),
        s(
            "all3",
            "all three: trace, metrics, retries",
            all3.clone(),
            all3_expect.clone(),
        ),
        s(
            "mesh",
            "all three in one module (mesh_sidecar: one VM, one context per request)",
            vec!["mesh_sidecar.yaml"],
            all3_expect.clone(),
        ),
        s(
            "trace-core",
            "trace-propagation doing only the Lua job (no export, no request id)",
            vec!["trace_core.yaml"],
            vec![Expect::TraceHeaders],
        ),
        s(
            "lua",
            "Envoy Lua filter doing the trace core job",
            vec!["lua_trace.yaml"],
            vec![Expect::TraceHeaders],
        ),
        s(
            "bare",
            "bare proxy-wasm filter (no SDK) doing the Lua job",
            vec!["bare_trace.yaml"],
            vec![Expect::TraceHeaders],
        ),
        s(
            "wasm-noop",
            "a wasm filter that does nothing (the floor of any wasm filter)",
            vec!["wasm_noop.yaml"],
            vec![Expect::Stat("wasm.envoy.wasm.runtime.v8.created")],
        ),
        s(
            "sdk-noop",
            "a filter on our SDK that does next to nothing (add-headers, no headers)",
            vec!["sdk_noop.yaml"],
            vec![Expect::Stat("wasm.envoy.wasm.runtime.v8.created")],
        ),
        s(
            "tls",
            "no filter, mutual TLS to the upstream as the shipped sidecars run (SDS certificates, \
             SAN check): the baseline users really run",
            vec![MTLS],
            vec![Expect::Stat("cluster.upstream.ssl.handshake")],
        ),
        s(
            "native-trace",
            "Envoy's native tracing doing the trace job: Zipkin tracer in the connection manager \
             (W3C in; B3 and W3C out, child span; Zipkin v2 protobuf export)",
            vec![ZIPKIN],
            vec![
                Expect::TraceHeaders,
                Expect::Stat("tracing.zipkin.spans_sent"),
                Expect::Stat("tracing.zipkin.reports_sent"),
            ],
        ),
        s(
            "native-trace-json",
            "native-trace exporting Zipkin v2 JSON, the format our trace filter exports",
            vec![ZIPKIN_JSON],
            vec![
                Expect::TraceHeaders,
                Expect::Stat("tracing.zipkin.spans_sent"),
                Expect::Stat("tracing.zipkin.reports_sent"),
            ],
        ),
        s(
            "native-otel",
            "Envoy's native tracing with the OpenTelemetry tracer (W3C only, no B3; OTLP/HTTP \
             protobuf export)",
            vec![OTEL],
            vec![
                Expect::W3cChild,
                Expect::Stat("tracing.opentelemetry.spans_sent"),
            ],
        ),
        s(
            "native-retries",
            "the route's native retry_policy doing the retries job (5xx, reset, connect-failure; \
             2 retries, 250 ms per try; no budget)",
            vec![RETRY_POLICY],
            vec![
                Expect::Retried(TRIES),
                Expect::Stat("cluster.upstream.upstream_rq_retry"),
            ],
        ),
        s(
            "native-all",
            "native tracing (as native-trace) and native retries (as native-retries): Envoy \
             without wasm for trace and retries (service-metrics has no native counterpart)",
            vec![ZIPKIN, RETRY_POLICY],
            vec![
                Expect::TraceHeaders,
                Expect::Retried(TRIES),
                Expect::Stat("tracing.zipkin.reports_sent"),
                Expect::Stat("cluster.upstream.upstream_rq_retry"),
            ],
        ),
    ];
    if concurrency != 2 {
        let c2 = |key: &str, label: &str, filters: Vec<&'static str>, expect| Scenario {
            key: key.to_string(),
            label: label.to_string(),
            filters,
            concurrency: 2,
            baseline: "baseline-c2".to_string(),
            expect,
            filters_dir: None,
        };
        list.push(c2(
            "baseline-c2",
            "no filter, --concurrency 2",
            vec![],
            vec![],
        ));
        list.push(c2(
            "all3-c2",
            "all three, --concurrency 2",
            all3,
            all3_expect,
        ));
    }
    list
}

/// The scenarios named in `only` (all of them when it is empty), with the baselines and the
/// wasm floor every comparison needs; an unknown key is an error that lists the known ones.
pub fn select(all: Vec<Scenario>, only: &[String]) -> Result<Vec<Scenario>> {
    if only.is_empty() {
        return Ok(all);
    }
    if let Some(unknown) = only.iter().find(|k| !all.iter().any(|s| &s.key == *k)) {
        let known: Vec<&str> = all.iter().map(|s| s.key.as_str()).collect();
        return Err(format!(
            "--only: no scenario `{unknown}` (known: {})",
            known.join(", ")
        ));
    }
    let wanted =
        |s: &Scenario| only.contains(&s.key) || s.key == "baseline" || s.key == "wasm-noop";
    let mut chosen: Vec<Scenario> = all.iter().filter(|s| wanted(s)).cloned().collect();
    // A chosen scenario's own baseline (baseline-c2 for the 2-worker ones).
    for s in all.iter() {
        let needed = chosen.iter().any(|c| c.baseline == s.key);
        if needed && !chosen.iter().any(|c| c.key == s.key) {
            chosen.push(s.clone());
        }
    }
    Ok(chosen)
}

/// The suffix of a twin's key: `mesh@old` is `mesh` with the filters of `--against`.
pub const TWIN_SUFFIX: &str = "@old";

/// `scenarios` with a twin after each one that loads our filters (a snippet that names
/// `{{FILTERS_DIR}}`), except the floor unless `only` names it: the same configuration, keyed
/// `<key>@old`, loading its `.wasm` files from `old_filters` (`built from` says what built them,
/// for the report). Run in the same rounds, each twin pairs with its scenario round by round.
pub fn with_twins(
    scenarios: Vec<Scenario>,
    only: &[String],
    bench_dir: &Path,
    old_filters: &Path,
    built_from: &str,
) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for s in scenarios {
        let mut loads_wasm = false;
        for file in &s.filters {
            if place(file) == Place::HttpFilter {
                let path = bench_dir.join("configs").join("filters").join(file);
                let text = fs::read_to_string(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                loads_wasm |= text.contains("{{FILTERS_DIR}}");
            }
        }
        let wanted = if only.is_empty() {
            s.key != crate::report::FLOOR
        } else {
            only.contains(&s.key)
        };
        let twin = (loads_wasm && wanted).then(|| Scenario {
            key: format!("{}{TWIN_SUFFIX}", s.key),
            label: format!("{} (filters built from {built_from})", s.label),
            filters_dir: Some(old_filters.to_path_buf()),
            ..s.clone()
        });
        out.push(s);
        out.extend(twin);
    }
    if !out.iter().any(|s| s.filters_dir.is_some()) {
        return Err(
            "--against-filters: none of the chosen scenarios loads our filters (pick some with \
             --only, e.g. --only mesh,trace-core)"
                .to_string(),
        );
    }
    Ok(out)
}

/// The placeholders every bench template takes: the in-process upstream's and collector's
/// ports and the directory of the built filters.
pub fn base_vars(
    upstream_port: u16,
    collector_port: u16,
    filters_dir: &Path,
) -> Vec<(String, String)> {
    vec![
        ("PORT_UPSTREAM".to_string(), upstream_port.to_string()),
        ("PORT_COLLECTOR".to_string(), collector_port.to_string()),
        ("FILTERS_DIR".to_string(), filters_dir.display().to_string()),
    ]
}

/// Indents every line of `text` by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{pad}{line}\n"))
        .collect()
}

/// The bootstrap template of `scenario`: the scenario's HTTP filters in place of
/// `{{HTTP_FILTERS}}`, its connection-manager and route settings in place of `{{HCM_EXTRA}}` and
/// `{{ROUTE_EXTRA}}` (each empty when it has none), and every placeholder in `vars` (plus
/// `BENCH_DIR`) filled. What is left are the ports that
/// Envoy binds itself (`{{PORT_ADMIN}}`, `{{PORT_LISTENER}}`): [`toolkit::Envoy`] renders them as
/// 0 and reads the real ports back. A placeholder `vars` does not fill and Envoy cannot bind is
/// an error here.
pub fn render(scenario: &Scenario, bench_dir: &Path, vars: &[(String, String)]) -> Result<String> {
    let configs = bench_dir.join("configs");
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let template = read(&configs.join("sidecar.yaml"))?;
    let (mut filters, mut hcm, mut route) = (String::new(), String::new(), String::new());
    let mut cluster = String::new();
    for file in &scenario.filters {
        match place(file) {
            Place::Hcm => hcm.push_str(&indent(&read(&configs.join(file))?, 10)),
            Place::Route => route.push_str(&indent(&read(&configs.join(file))?, 18)),
            Place::Cluster => cluster.push_str(&indent(&read(&configs.join(file))?, 4)),
            Place::HttpFilter => {
                filters.push_str(&indent(&read(&configs.join("filters").join(file))?, 10))
            }
        }
    }
    let template = template
        .replace("{{HTTP_FILTERS}}\n", &filters)
        .replace("{{HCM_EXTRA}}\n", &hcm)
        .replace("{{ROUTE_EXTRA}}\n", &route)
        .replace("{{CLUSTER_EXTRA}}\n", &cluster);
    let mut all_vars = vars.to_vec();
    if let Some(dir) = &scenario.filters_dir {
        all_vars.retain(|(k, _)| k != "FILTERS_DIR");
        all_vars.push(("FILTERS_DIR".to_string(), dir.display().to_string()));
    }
    all_vars.push(("BENCH_DIR".to_string(), bench_dir.display().to_string()));
    // Envoy's own ports stay placeholders; everything else must have a value now.
    for port in ENVOY_PORTS {
        all_vars.push((port.to_string(), format!("{{{{{port}}}}}")));
    }
    toolkit::render(&template, &all_vars)
        .map_err(|e| format!("bench/configs for scenario `{}`: {e}", scenario.key))
}

/// The placeholders of the bench bootstrap that Envoy binds on port 0 (the toolkit reads the
/// ports back): never given a value by the bench.
pub const ENVOY_PORTS: [&str; 2] = ["PORT_ADMIN", "PORT_LISTENER"];

/// Checks the upstream's view of the probe request against the expectations that concern
/// headers; `sent_span` is the span id of the probe's `traceparent`.
pub fn check_headers(
    expect: &[Expect],
    head: &str,
    sent_trace: &str,
    sent_span: &str,
) -> Result<()> {
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    for e in expect {
        match e {
            Expect::TraceHeaders => {
                let tp = header("traceparent").unwrap_or_default();
                let child_of_probe = tp.starts_with(&format!("00-{sent_trace}-"))
                    && !tp.contains(sent_span)
                    && header("x-b3-parentspanid").as_deref() == Some(sent_span)
                    && header("x-b3-traceid").as_deref() == Some(sent_trace)
                    && header("x-b3-spanid").is_some_and(|s| tp.contains(&s));
                if !child_of_probe {
                    return Err(format!(
                        "the upstream did not get a child trace context of the probe:\n{head}"
                    ));
                }
            }
            Expect::PeerHeader => {
                if !header("x-mesh-peer").is_some_and(|v| v.starts_with("v1;")) {
                    return Err(format!(
                        "the upstream did not get an x-mesh-peer header:\n{head}"
                    ));
                }
            }
            Expect::W3cChild => {
                let tp = header("traceparent").unwrap_or_default();
                if !tp.starts_with(&format!("00-{sent_trace}-")) || tp.contains(sent_span) {
                    return Err(format!(
                        "the upstream did not get a child traceparent of the probe:\n{head}"
                    ));
                }
            }
            Expect::Retried(_) | Expect::Stat(_) | Expect::Zero(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_renders_to_a_complete_config() -> Result<()> {
        let bench_dir = toolkit::workspace_root().join("bench");
        let vars: Vec<(String, String)> = [
            ("PORT_UPSTREAM", "3"),
            ("PORT_COLLECTOR", "4"),
            ("FILTERS_DIR", "/f"),
            ("CERTS_DIR", "/c"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let list = all(1);
        assert_eq!(list.len(), 19);
        assert_eq!(all(2).len(), 17);
        for s in &list {
            let text = render(s, &bench_dir, &vars)?;
            let wants = |p: Place| s.filters.iter().filter(|f| place(f) == p).count();
            // Only Envoy's own ports are left, each once: the toolkit binds them on port 0.
            assert_eq!(
                toolkit::template::placeholders(&text),
                ENVOY_PORTS.map(String::from),
                "{}",
                s.key
            );
            for port in ENVOY_PORTS {
                assert_eq!(
                    text.matches(&format!("{{{{{port}}}}}")).count(),
                    1,
                    "{}",
                    s.key
                );
            }
            assert_eq!(
                text.matches("envoy.filters.http.wasm").count()
                    + text.matches("envoy.filters.http.lua").count(),
                wants(Place::HttpFilter),
                "{}",
                s.key
            );
            // Native settings only where the scenario asks for them, each in its place.
            let tracing = text.matches("\n          tracing:\n").count();
            let retry = text.matches("\n                  retry_policy:\n").count();
            assert_eq!(tracing, wants(Place::Hcm), "{}", s.key);
            assert_eq!(retry, wants(Place::Route), "{}", s.key);
            assert_eq!(
                s.key.starts_with("native"),
                tracing + retry > 0,
                "{}",
                s.key
            );
            assert_eq!(
                text.contains("envoy.tracers.zipkin"),
                s.native_tracer() == Some("tracing.zipkin."),
                "{}",
                s.key
            );
            assert!(
                text.contains("                route:\n                  cluster: upstream\n"),
                "{}",
                s.key
            );
        }
        let keys: Vec<&str> = list.iter().map(|s| s.key.as_str()).collect();
        for key in [
            "native-trace",
            "native-trace-json",
            "native-otel",
            "native-retries",
            "native-all",
        ] {
            assert!(keys.contains(&key), "{key} missing");
        }
        let all3 = render(&list[4], &bench_dir, &vars)?;
        let order: Vec<usize> = [
            "trace_propagation.wasm",
            "service_metrics.wasm",
            "route_retries.wasm",
        ]
        .iter()
        .filter_map(|f| all3.find(f))
        .collect();
        assert!(
            order.len() == 3 && order.windows(2).all(|w| w[0] < w[1]),
            "{order:?}"
        );
        Ok(())
    }

    #[test]
    fn only_adds_the_baselines_and_the_floor_and_refuses_unknown_keys() -> Result<()> {
        let keys = |list: Vec<Scenario>| list.into_iter().map(|s| s.key).collect::<Vec<_>>();
        assert_eq!(keys(select(all(1), &[])?).len(), all(1).len());
        let chosen = keys(select(
            all(1),
            &["mesh".to_string(), "all3-c2".to_string()],
        )?);
        for key in ["baseline", "mesh", "wasm-noop", "all3-c2", "baseline-c2"] {
            assert!(
                chosen.iter().any(|k| k == key),
                "{key} missing from {chosen:?}"
            );
        }
        assert_eq!(chosen.len(), 5);
        let err = select(all(1), &["nope".to_string()])
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("no scenario `nope`") && err.contains("mesh"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn twins_load_the_other_filters_and_only_where_asked() -> Result<()> {
        let bench_dir = toolkit::workspace_root().join("bench");
        let old = Path::new("/old/filters");
        let only = ["mesh".to_string(), "lua".to_string()];
        let chosen = with_twins(select(all(1), &only)?, &only, &bench_dir, old, "HEAD~1")?;
        let keys: Vec<&str> = chosen.iter().map(|s| s.key.as_str()).collect();
        // Lua loads no filter of ours and the floor was not asked for: no twins.
        assert_eq!(keys, ["baseline", "mesh", "mesh@old", "lua", "wasm-noop"]);
        let twin = &chosen[2];
        assert!(twin.label.contains("HEAD~1"), "{}", twin.label);
        let vars = base_vars(1, 2, Path::new("/new/filters"));
        let rendered = render(twin, &bench_dir, &vars)?;
        assert!(
            rendered.contains("/old/filters/mesh_sidecar.wasm"),
            "{rendered}"
        );
        assert!(!rendered.contains("/new/filters"), "{rendered}");
        assert!(render(&chosen[1], &bench_dir, &vars)?.contains("/new/filters/mesh_sidecar.wasm"));
        // Every wasm scenario but the floor when none is named.
        let every = with_twins(all(1), &[], &bench_dir, old, "x")?;
        assert!(every.iter().any(|s| s.key == "all3-c2@old"));
        assert!(!every
            .iter()
            .any(|s| s.key == "wasm-noop@old" || s.key == "lua@old"));
        let lua = ["lua".to_string()];
        let err = with_twins(select(all(1), &lua)?, &lua, &bench_dir, old, "x")
            .err()
            .unwrap_or_default();
        assert!(err.contains("none of the chosen scenarios"), "{err}");
        Ok(())
    }

    #[test]
    fn checks_the_probe_headers() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let good = format!(
            "GET / HTTP/1.1\r\ntraceparent: 00-{trace}-1111111111111111-01\r\nx-b3-traceid: {trace}\r\n\
             x-b3-spanid: 1111111111111111\r\nx-b3-parentspanid: 00f067aa0ba902b7\r\nx-mesh-peer: v1;s=a"
        );
        let all = [Expect::TraceHeaders, Expect::PeerHeader];
        assert!(check_headers(&all, &good, trace, "00f067aa0ba902b7").is_ok());
        let untouched = format!("GET / HTTP/1.1\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01");
        assert!(check_headers(&all[..1], &untouched, trace, "00f067aa0ba902b7").is_err());
        assert!(check_headers(&all[1..], &untouched, trace, "00f067aa0ba902b7").is_err());
        let w3c = [Expect::W3cChild];
        let otel = format!("GET / HTTP/1.1\r\ntraceparent: 00-{trace}-1111111111111111-01");
        assert!(check_headers(&w3c, &otel, trace, "00f067aa0ba902b7").is_ok());
        assert!(check_headers(&w3c, &untouched, trace, "00f067aa0ba902b7").is_err());
    }
}
