//! `--instructions`: the instructions Envoy itself executes per request, counted by valgrind's
//! callgrind while the bench request goes through each scenario's Envoy. A count, not a time:
//! the same binary, configuration and requests give the same figure whatever else the machine
//! runs, so differences of a few hundred instructions show where CPU time per request moves by
//! tens of microseconds between runs. It does not see what the hardware does with them (cache
//! and branch misses, the instructions per cycle), which is what the time figures add.
//!
//! Each scenario's Envoy runs alone under callgrind, with counting off while it starts and warms
//! up; then a fixed number of requests, one after another over one kept-alive connection, are
//! counted (every thread of the process: workers, main thread and V8's) until the work they
//! batched (span export) is done, less what the same Envoy counts per second while idle, taken
//! before them, over as long. The cost probe (`bench/cost-probe`) doing one
//! kind of call 1 and 16 times per request, against the probe doing nothing, gives a price list
//! in instructions: what a request's first call costs, and each further one.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use toolkit::{cmd, target_dir, workspace_root, Envoy};

use crate::cost::{self, Kind};
use crate::scenario::{self, Scenario};
use crate::upstream::Upstream;
use crate::{built_filters_dir, hostcalls, load, probe, Result, Running};

/// Requests before counting starts, the first of them before callgrind instruments anything.
const WARM_UP: u32 = 60;
/// Requests counted per Envoy.
const COUNTED: u32 = 200;
/// Seconds of the idle count, taken before the counted requests.
const IDLE: Duration = Duration::from_secs(3);
/// How long work batched by requests takes to be done: longer than the flush interval of the
/// span exports (ours and Envoy's tracers as the bench configures them, one second).
const SETTLE: Duration = Duration::from_secs(2);
/// How long an Envoy under valgrind may take to become ready (it translates V8 and compiles
/// each module under the instrumentation's slowdown).
const START_PATIENCE: Duration = Duration::from_secs(600);
/// Calls per request of each probe kind besides 0 (the floor): the first call, and the line
/// through 1 and 16 for each further one.
const NS: [u32; 2] = [1, 16];
/// The probe's kinds priced by default (keys of the cost model's kinds).
const KINDS: [&str; 11] = [
    "get_header",
    "get_header_absent",
    "get_headers",
    "replace_header",
    "property xds.route_name",
    "property response.code",
    "increment_counter",
    "record_histogram",
    "current_time",
    "get_shared_data",
    "set_shared_data",
];
/// The `--only` key that picks the probe's price list.
pub const PROBE_KEY: &str = "probe";

/// One counted Envoy.
struct Counted {
    key: String,
    label: String,
    /// Per request, the idle work taken out.
    per_request: Events,
    /// Instructions per second of the same Envoy idle.
    idle_per_second: f64,
}

/// What callgrind counts and simulates, as totals or per request: the instructions executed, and
/// the misses of its model of the first-level caches (instructions, data) and of the branch
/// predictor (conditional and indirect branches). Its last-level cache holds all of one Envoy's
/// working set, so its misses are left out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Events {
    pub instructions: f64,
    pub l1i_misses: f64,
    pub l1d_misses: f64,
    pub mispredicted: f64,
}

impl Events {
    /// From a dump's text: its `events:` names and its `totals:` line (else `summary:`).
    pub fn parse(text: &str) -> Option<Events> {
        let line = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix));
        let names: Vec<&str> = line("events:")?.split_whitespace().collect();
        let values: Vec<f64> = line("totals:")
            .or_else(|| line("summary:"))?
            .split_whitespace()
            .map(|v| v.parse::<f64>().ok())
            .collect::<Option<_>>()?;
        let sum = |wanted: &[&str]| -> f64 {
            names
                .iter()
                .zip(&values)
                .filter(|(n, _)| wanted.contains(n))
                .map(|(_, v)| v)
                .sum()
        };
        Some(Events {
            instructions: sum(&["Ir"]),
            l1i_misses: sum(&["I1mr"]),
            l1d_misses: sum(&["D1mr", "D1mw"]),
            mispredicted: sum(&["Bcm", "Bim"]),
        })
    }

    /// Every figure combined with `other`'s by `f`.
    fn zip(self, other: Events, f: impl Fn(f64, f64) -> f64) -> Events {
        Events {
            instructions: f(self.instructions, other.instructions),
            l1i_misses: f(self.l1i_misses, other.l1i_misses),
            l1d_misses: f(self.l1d_misses, other.l1d_misses),
            mispredicted: f(self.mispredicted, other.mispredicted),
        }
    }

    /// Every figure times `k`.
    fn scale(self, k: f64) -> Events {
        self.zip(Events::default(), |a, _| a * k)
    }
}

/// Runs the counts chosen by `only` (scenario keys, kinds of the probe, or `probe` for the
/// default kinds; empty: every one-worker scenario and the default kinds) and writes
/// `target/bench/instructions.md`.
pub fn run(only: &[String], command: &str) -> Result<()> {
    let started = Instant::now();
    let filters_dir = built_filters_dir()?;
    let (scenarios, kinds) = choose(only)?;
    let bench_dir = workspace_root().join("bench");
    let (envoy_bin, envoy_version) = toolkit::find::find_and_report()?;
    let valgrind = load::ensure_debian_tool("valgrind", "valgrind")?;
    let control = valgrind.with_file_name("callgrind_control");
    if !control.is_file() {
        return Err(format!("{} is missing", control.display()));
    }
    let upstream = Upstream::start("upstream")?;
    let collector = Upstream::start("collector")?;
    let callgrind = Callgrind {
        valgrind,
        control,
        envoy_bin,
        bench_dir,
        vars: scenario::base_vars(upstream.port(), collector.port(), &filters_dir),
        filters_dir,
        run_dir: target_dir().join("bench").join("instructions"),
    };
    if callgrind.run_dir.exists() {
        fs::remove_dir_all(&callgrind.run_dir)
            .map_err(|e| format!("clearing {}: {e}", callgrind.run_dir.display()))?;
    }

    let mut rows = Vec::new();
    for s in &scenarios {
        let row = callgrind.count(&s.key, &s.label, s, None, Some(&upstream))?;
        rows.push(row);
    }
    sane(&rows)?;
    let mut probes = Vec::new();
    if !kinds.is_empty() {
        let (key, floor, config) = cost::probe_scenario(None, 0);
        probes.push(callgrind.count(
            &key,
            "the probe doing nothing",
            &floor,
            Some(&config),
            None,
        )?);
        for kind in &kinds {
            for n in NS {
                let (key, s, config) = cost::probe_scenario(Some(kind), n);
                probes.push(callgrind.count(&key, kind.label, &s, Some(&config), None)?);
            }
        }
    }
    let report = markdown(&rows, &probes, &kinds, command, &envoy_version);
    let out = target_dir().join("bench").join("instructions.md");
    fs::write(&out, &report).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("{report}");
    println!(
        "wrote {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether the counts can be what they claim: every Envoy executed instructions for each
/// request, and no scenario counted less than no filter (every one adds work to the same
/// requests; the count repeats within about 1.5%). A count that fails this is a broken
/// measurement (a dump taken at the wrong time, requests not served), not a finding.
fn sane(rows: &[Counted]) -> Result<()> {
    let baseline = rows.iter().find(|r| r.key == "baseline");
    for r in rows {
        if r.per_request.instructions.is_nan() || r.per_request.instructions <= 1_000.0 {
            return Err(format!(
                "{}: {:.0} instructions per request: the count did not see the requests",
                r.key, r.per_request.instructions
            ));
        }
        if let Some(b) = baseline {
            if r.per_request.instructions < 0.97 * b.per_request.instructions {
                return Err(format!(
                    "{}: {:.0} instructions per request, below no filter's {:.0}",
                    r.key, r.per_request.instructions, b.per_request.instructions
                ));
            }
        }
    }
    Ok(())
}

/// The scenarios (one worker, no TLS peer) and probe kinds `only` asks for.
fn choose(only: &[String]) -> Result<(Vec<Scenario>, Vec<Kind>)> {
    let countable = |s: &Scenario| s.concurrency == 1 && !s.filters.contains(&scenario::MTLS);
    let all: Vec<Scenario> = scenario::all(1).into_iter().filter(countable).collect();
    let kinds: Vec<Kind> = cost::groups().into_iter().flatten().collect();
    let kind = |key: &str| kinds.iter().find(|k| k.key == key).cloned();
    if only.is_empty() {
        return Ok((all, KINDS.iter().filter_map(|k| kind(k)).collect()));
    }
    let mut chosen_kinds = Vec::new();
    let mut keys = Vec::new();
    for key in only {
        if key == PROBE_KEY {
            chosen_kinds.extend(KINDS.iter().filter_map(|k| kind(k)));
        } else if let Some(k) = kind(key) {
            chosen_kinds.push(k);
        } else {
            keys.push(key.clone());
        }
    }
    let scenarios = if keys.is_empty() {
        Vec::new()
    } else {
        scenario::select(all, &keys)?
    };
    Ok((scenarios, chosen_kinds))
}

/// What running an Envoy under callgrind needs.
struct Callgrind {
    valgrind: PathBuf,
    control: PathBuf,
    envoy_bin: PathBuf,
    bench_dir: PathBuf,
    filters_dir: PathBuf,
    vars: Vec<(String, String)>,
    run_dir: PathBuf,
}

impl Callgrind {
    /// Starts `scenario`'s Envoy under callgrind (with the probe's configuration, if given),
    /// checks with one probe request that its filters ran (when `upstream` is given), and
    /// counts.
    fn count(
        &self,
        key: &str,
        label: &str,
        scenario: &Scenario,
        probe_config: Option<&str>,
        upstream: Option<&Upstream>,
    ) -> Result<Counted> {
        let dir = self.run_dir.join(key);
        let mut vars = self.vars.clone();
        if let Some(config) = probe_config {
            vars.extend(cost::probe_vars(
                config,
                &self.filters_dir.join(cost::PROBE_WASM),
            ));
        }
        let template = scenario::render(scenario, &self.bench_dir, &vars)?;
        let out_file = dir.join("callgrind.out");
        let wrapper = [
            self.valgrind.display().to_string(),
            "--tool=callgrind".to_string(),
            // Nothing is counted until `callgrind_control --instr=on`.
            "--instr-atstart=no".to_string(),
            // V8's and LuaJIT's code is written to anonymous memory: valgrind must see changes.
            "--smc-check=all-non-file".to_string(),
            // Its model of the caches (the machine's sizes) and of the branch predictor.
            "--cache-sim=yes".to_string(),
            "--branch-sim=yes".to_string(),
            format!("--callgrind-out-file={}.%p", out_file.display()),
        ];
        let mut envoy = Envoy::builder(&template)
            .name(key)
            .bin(&self.envoy_bin)
            .dir(&dir)
            .concurrency(1)
            .log_level("warn")
            .wrapper(wrapper)
            .spawn()
            .map_err(|e| format!("instructions `{key}`: {e}"))?;
        envoy.wait_ready(START_PATIENCE)?;
        let envoy = match upstream {
            Some(upstream) => {
                let running = Running {
                    scenario: scenario.clone(),
                    envoy,
                    _peer: None,
                };
                probe(&running, upstream)?;
                running.envoy
            }
            None => envoy,
        };
        let pid = envoy.pid().to_string();
        let port = envoy.listener_port();
        let headers = [("traceparent", hostcalls::TRACEPARENT)];
        let send = |n: u32| -> Result<()> {
            let ok = toolkit::http::get_repeatedly(port, hostcalls::PATH, &headers, n)?;
            if ok == n {
                Ok(())
            } else {
                Err(format!(
                    "instructions `{key}`: {ok} of {n} requests answered 200"
                ))
            }
        };
        send(WARM_UP / 2)?;
        self.control(&pid, "--instr=on")?;
        send(WARM_UP / 2)?;
        // What the warm-up left to do (batched spans) is done before the idle count.
        std::thread::sleep(SETTLE);
        self.control(&pid, "--zero")?;
        std::thread::sleep(IDLE);
        let idle = self.dump(&pid, &dir)?.scale(1.0 / IDLE.as_secs_f64());
        self.control(&pid, "--zero")?;
        let window = Instant::now();
        send(COUNTED)?;
        // The counted requests' batched work (span export) is counted with them.
        std::thread::sleep(SETTLE);
        let total = self.dump(&pid, &dir)?;
        let window = window.elapsed().as_secs_f64();
        drop(envoy);
        let per_request = total
            .zip(idle.scale(window), |t, i| t - i)
            .scale(1.0 / f64::from(COUNTED));
        println!(
            "{key:<36} {:>10.0} instructions per request, {:>6.0} L1i misses (idle {:.0} \
             per second)",
            per_request.instructions, per_request.l1i_misses, idle.instructions
        );
        Ok(Counted {
            key: key.to_string(),
            label: label.to_string(),
            per_request,
            idle_per_second: idle.instructions,
        })
    }

    /// `callgrind_control <option> <pid>`.
    fn control(&self, pid: &str, option: &str) -> Result<()> {
        cmd::output(Command::new(&self.control).arg(option).arg(pid))
            .map(|_| ())
            .map_err(|e| format!("callgrind_control {option} {pid}: {e}"))
    }

    /// Dumps the counts since the last zeroing and returns their totals.
    fn dump(&self, pid: &str, dir: &Path) -> Result<Events> {
        let before = dumps(dir, pid)?.len();
        self.control(pid, "--dump")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let files = dumps(dir, pid)?;
            if files.len() > before {
                let text = files.last().and_then(|f| fs::read_to_string(f).ok());
                if let Some(total) = text.as_deref().and_then(Events::parse) {
                    return Ok(total);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "callgrind wrote no dump for {pid} in {}",
                    dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The numbered dumps of process `pid` in `dir` (`callgrind.out.<pid>.<n>`), by `n`.
fn dumps(dir: &Path, pid: &str) -> Result<Vec<PathBuf>> {
    let prefix = format!("callgrind.out.{pid}.");
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut numbered: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    numbered.sort();
    Ok(numbered.into_iter().map(|(_, p)| p).collect())
}

fn markdown(
    rows: &[Counted],
    probes: &[Counted],
    kinds: &[Kind],
    command: &str,
    envoy_version: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Envoy instructions per request\n\n`{command}`: Envoy {envoy_version} under valgrind's \
         callgrind, one worker; {COUNTED} bench requests counted one after another over one \
         kept-alive connection after {WARM_UP} of warm-up, every thread of the process, until \
         the spans they batched are exported, less the same Envoy's idle count per second over \
         as long. Instructions are counted, not \
         timed: the machine's load does not move them. The misses are callgrind's model of \
         this machine's first-level caches and of a branch predictor, for this process alone: \
         no other process evicts its lines, as other tenants of a shared machine do.\n"
    );
    let find = |key: &str| rows.iter().chain(probes).find(|r| r.key == key);
    if !rows.is_empty() {
        let base = find("baseline").map(|r| r.per_request.instructions);
        let floor = find("wasm-noop").map(|r| r.per_request.instructions);
        let over = |v: f64, b: Option<f64>| b.map(|b| format!("{:+.0}", v - b)).unwrap_or_default();
        let ratio = |v: f64| base.map(|b| format!("{:.2}", v / b)).unwrap_or_default();
        md.push_str(
            "| scenario | what | instructions per request | over no filter | over the floor \
             (`wasm-noop`) | x no filter | L1i misses | L1d misses | branches mispredicted | idle \
             instructions per second |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in rows {
            let e = r.per_request;
            let _ = writeln!(
                md,
                "| `{}` | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                r.key,
                r.label,
                e.instructions,
                over(e.instructions, base),
                over(e.instructions, floor),
                ratio(e.instructions),
                e.l1i_misses,
                e.l1d_misses,
                e.mispredicted,
                r.idle_per_second
            );
        }
        md.push('\n');
    }
    if let Some(floor) = find("floor") {
        let _ = writeln!(
            md,
            "## The probe's price list in instructions\n\nThe probe doing nothing: {:.0} \
             instructions per request ({:.0} L1i misses). Each kind done once and {} times per \
             request: the first call is the one-call Envoy over the probe doing nothing, each \
             further call the line through 1 and {}.\n\n| kind | what | instructions, first \
             call | each further call | L1i misses, first call | each further call | L1d \
             misses, first | further | mispredicted, first | further |\n\
             |---|---|---|---|---|---|---|---|---|---|",
            floor.per_request.instructions, floor.per_request.l1i_misses, NS[1], NS[1]
        );
        for kind in kinds {
            let at = |n: u32| {
                let (key, _, _) = cost::probe_scenario(Some(kind), n);
                find(&key).map(|r| r.per_request)
            };
            if let (Some(one), Some(many)) = (at(NS[0]), at(NS[1])) {
                let first = one.zip(floor.per_request, |a, b| a - b);
                let further = many
                    .zip(one, |a, b| a - b)
                    .scale(1.0 / f64::from(NS[1] - NS[0]));
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    kind.key,
                    kind.label,
                    first.instructions,
                    further.instructions,
                    first.l1i_misses,
                    further.l1i_misses,
                    first.l1d_misses,
                    further.l1d_misses,
                    first.mispredicted,
                    further.mispredicted
                );
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_dumps_totals() -> Result<()> {
        let dump = "version: 1\ncreator: callgrind-3.19.0\n\
                    events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim\n\
                    summary: 40141841 11800427 9077116 1546373 670473 152023 1119 1925 496 \
                    6209577 341257 692874 401288\nfn=(1) main\n0 5\n\
                    totals: 40141846 11800427 9077116 1546373 670473 152023 1119 1925 496 \
                    6209577 341257 692874 401288\n";
        let e = Events::parse(dump).ok_or("no totals")?;
        assert_eq!(
            e.instructions, 40_141_846.0,
            "the totals line, not the summary"
        );
        assert_eq!(e.l1i_misses, 1_546_373.0);
        assert_eq!(e.l1d_misses, 670_473.0 + 152_023.0);
        assert_eq!(e.mispredicted, 341_257.0 + 401_288.0);
        let plain = Events::parse("events: Ir\nsummary: 42\n").ok_or("no summary")?;
        assert_eq!((plain.instructions, plain.l1i_misses), (42.0, 0.0));
        assert_eq!(Events::parse("events: Ir\n"), None);
        assert_eq!(Events::parse("events: Ir Dr\ntotals: 4 x\n"), None);
        Ok(())
    }

    #[test]
    fn refuses_counts_that_cannot_be_right() {
        let row = |key: &str, instructions: f64| Counted {
            key: key.to_string(),
            label: String::new(),
            per_request: Events {
                instructions,
                ..Events::default()
            },
            idle_per_second: 0.0,
        };
        assert!(sane(&[row("baseline", 156_000.0), row("wasm-noop", 176_000.0)]).is_ok());
        // Within the count's spread of no filter: still sane.
        assert!(sane(&[row("baseline", 156_000.0), row("native-retries", 153_000.0)]).is_ok());
        let below = sane(&[row("baseline", 156_000.0), row("mesh", 90_000.0)]);
        assert!(below.is_err_and(|e| e.contains("below no filter")));
        let none = sane(&[row("baseline", 0.0)]);
        assert!(none.is_err_and(|e| e.contains("did not see the requests")));
    }

    #[test]
    fn chooses_scenarios_and_kinds_by_key() -> Result<()> {
        let (scenarios, kinds) = choose(&["trace-core".to_string(), "get_header".to_string()])?;
        let keys: Vec<&str> = scenarios.iter().map(|s| s.key.as_str()).collect();
        assert!(
            keys.contains(&"trace-core") && keys.contains(&"baseline"),
            "{keys:?}"
        );
        assert_eq!(kinds.len(), 1);
        let (scenarios, kinds) = choose(&[PROBE_KEY.to_string()])?;
        assert!(scenarios.is_empty());
        assert_eq!(
            kinds.len(),
            KINDS.len(),
            "every default kind is a kind of the cost model"
        );
        let (scenarios, _) = choose(&[])?;
        assert!(scenarios.iter().all(|s| s.concurrency == 1));
        assert!(choose(&["no-such".to_string()]).is_err());
        Ok(())
    }
}
