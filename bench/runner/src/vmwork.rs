//! `--vm-work`: the work each filter does inside its VM per bench request, counted as wasmtime
//! fuel (wasm instructions executed) by `bench/vm-work/vm_work.py` with every hostcall stubbed.
//! Unlike Envoy's CPU time, the count does not move with the machine's load, so a change to a
//! filter's code shows up exactly; the cost model converts it to microseconds with the share of
//! Envoy's CPU that a profile finds in wasm code (`sdk/docs/cost-model.md`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use toolkit::{target_dir, workspace_root};

use crate::hostcalls::read_snippet;
use crate::Result;

/// The filters measured: (row, `.wasm` file, configuration snippet of `bench/configs/filters/`).
/// A snippet without a `configuration` (bare) gets an empty one, as Envoy gives it.
const ROWS: [(&str, &str, &str); 8] = [
    ("trace", "trace_propagation.wasm", "trace_propagation.yaml"),
    ("metrics", "service_metrics.wasm", "service_metrics.yaml"),
    ("retries", "route_retries.wasm", "route_retries.yaml"),
    ("mesh", "mesh_sidecar.wasm", "mesh_sidecar.yaml"),
    ("trace-core", "trace_propagation.wasm", "trace_core.yaml"),
    ("bare", "bare_trace.wasm", "bare_trace.yaml"),
    ("sdk-noop", "add_headers.wasm", "sdk_noop.yaml"),
    ("wasm-noop", "bare_trace.wasm", "wasm_noop.yaml"),
];

/// One filter's count, as the script prints it.
struct Count {
    key: &'static str,
    fuel: u64,
    phases: Vec<(String, u64)>,
    hostcalls: Vec<(String, f64)>,
}

/// Runs the count for every row and writes `target/bench/vm-work.md`.
pub fn run(filters_dir: &Path) -> Result<()> {
    let python = venv_python()?;
    let script = workspace_root()
        .join("bench")
        .join("vm-work")
        .join("vm_work.py");
    let configs = workspace_root()
        .join("bench")
        .join("configs")
        .join("filters");
    let mut counts = Vec::new();
    for (key, wasm, snippet) in ROWS {
        let path = configs.join(snippet);
        let (config, env) = read_snippet(&path)?;
        let config = config.unwrap_or_default();
        let env: serde_json::Map<String, serde_json::Value> = env
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg(filters_dir.join(wasm))
            .arg(&config)
            .env("VM_WORK_ENV", serde_json::Value::Object(env).to_string());
        let out = toolkit::cmd::output(&mut cmd)?;
        let count = parse(key, &out)?;
        println!("{key:<11} {:>8} wasm instructions per request", count.fuel);
        counts.push(count);
    }
    let table = table(&counts);
    println!("\n{table}");
    let out = target_dir().join("bench").join("vm-work.md");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    fs::write(&out, &table).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The script's JSON line.
fn parse(key: &'static str, out: &str) -> Result<Count> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{key}: no result from vm_work.py:\n{out}"))?;
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("{key}: {e}: {line}"))?;
    let fuel = v["fuel_per_request"]
        .as_u64()
        .ok_or_else(|| format!("{key}: no fuel_per_request in {line}"))?;
    let phases = v["phases"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let hostcalls = v["hostcalls"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Count {
        key,
        fuel,
        phases,
        hostcalls,
    })
}

fn table(counts: &[Count]) -> String {
    let mut out = String::from(
        "| filter | wasm instructions per request | by callback | hostcalls per request |\n\
         |---|---|---|---|\n",
    );
    for c in counts {
        let phases: Vec<String> = c.phases.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let calls: Vec<String> = c
            .hostcalls
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            c.key,
            c.fuel,
            phases.join(", "),
            calls.join(", ")
        );
    }
    out
}

/// The Python of a virtualenv with `bench/vm-work/requirements.txt` (made on first use).
fn venv_python() -> Result<PathBuf> {
    let pins = workspace_root()
        .join("bench")
        .join("vm-work")
        .join("requirements.txt");
    toolkit::pinned::python("vm-work", &pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_scripts_line_and_tables_it() -> Result<()> {
        let out = "noise\n{\"file\":\"x.wasm\",\"fuel_per_request\":1831,\"phases\":{\"create\":537,\"request_headers\":384},\"hostcalls\":{\"increment_metric\":2.0}}\n";
        let c = parse("sdk-noop", out)?;
        assert_eq!(c.fuel, 1831);
        assert_eq!(c.phases[0], ("create".to_string(), 537));
        let t = table(&[c]);
        assert!(
            t.contains(
                "| `sdk-noop` | 1831 | create 537, request_headers 384 | increment_metric x2 |"
            ),
            "{t}"
        );
        assert!(parse("x", "no json").is_err());
        Ok(())
    }

    #[test]
    fn every_row_has_its_snippet() {
        let dir = workspace_root()
            .join("bench")
            .join("configs")
            .join("filters");
        for (key, _, snippet) in ROWS {
            let text = fs::read_to_string(dir.join(snippet)).unwrap_or_default();
            assert!(text.contains("envoy.filters.http.wasm"), "{key}: {snippet}");
        }
    }
}
