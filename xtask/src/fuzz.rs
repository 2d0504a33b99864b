//! `cargo xtask fuzz [--seconds N] [target ...]`: runs the cargo-fuzz targets in `fuzz/` (every
//! decoder and every filter's request path) for a bounded time each, installing cargo-fuzz into
//! the tools directory (`~/.cargo/meshwasm-tools/`) when missing. Uses the stable toolchain with `--sanitizer none`, so no
//! nightly is needed; libFuzzer's coverage guidance still applies.

use std::path::PathBuf;

use crate::{cargo, is_executable, project_root, run, target_dir, Result};

/// The fuzz targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 6] = [
    "trace_headers",
    "peer_header",
    "filter_configs",
    "filter_requests",
    "property_decoders",
    "matchers",
];

/// Default seconds per target inside `cargo xtask test`.
pub const TEST_SECONDS: u64 = 10;

/// Command-line entry point.
pub fn main(seconds: u64, mut targets: Vec<String>) -> Result<()> {
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    run_targets(&targets, seconds)
}

/// Runs each target for `seconds`; fails on the first crash (libFuzzer leaves the input in
/// `target/fuzz/artifacts/<target>/`).
pub fn run_targets(targets: &[String], seconds: u64) -> Result<()> {
    let cargo_fuzz = ensure_cargo_fuzz()?;
    let root = project_root();
    let work = target_dir().join("fuzz");
    for t in targets {
        let corpus = work.join("corpus").join(t);
        let artifacts = work.join("artifacts").join(t);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let seeds = root.join("fuzz").join("seeds").join(t);
        let mut cmd = std::process::Command::new(&cargo_fuzz);
        cmd.current_dir(&root)
            .args([
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                "--release",
                "--target-dir",
            ])
            .arg(work.join("build"))
            .arg(t)
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        run(&mut cmd)?;
    }
    println!(
        "fuzz: {} targets ran {seconds} s each with no crash",
        targets.len()
    );
    Ok(())
}

/// `cargo-fuzz` in the tools directory ([`crate::tools_dir`]), installed from crates.io when
/// missing.
fn ensure_cargo_fuzz() -> Result<PathBuf> {
    let tools = crate::tools_dir().join("cargo-fuzz");
    let bin = tools.join("bin").join("cargo-fuzz");
    if is_executable(&bin) {
        return Ok(bin);
    }
    let locked = run(cargo()
        .args(["install", "--locked", "--root"])
        .arg(&tools)
        .arg("cargo-fuzz"));
    if locked.is_err() {
        // A lockfile pin the registry no longer serves: resolve afresh.
        run(cargo()
            .args(["install", "--root"])
            .arg(&tools)
            .arg("cargo-fuzz"))?;
    }
    Ok(bin)
}
