//! `cargo xtask`: the only entry points a user needs (build, test, demo, bench, ...), one module
//! per task, plus the small process and path helpers they share. Arguments are parsed with clap;
//! `cargo xtask <task> --help` describes each task.
//!
//! xtask compiles only itself and the native toolkit: the demo and the bench are binaries of
//! their own crates, which `demo` and `bench` run through cargo with the arguments given here.

mod against;
mod build;
mod certs;
mod compat;
mod component;
mod deny;
mod envoy;
mod fuzz;
mod prometheus;
mod soak;
mod test;
mod wasm_test;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
pub use toolkit::cmd::{display, find_on_path, is_executable, output, run};

/// Every task reports failure as a message that names what failed.
pub type Result<T> = std::result::Result<T, String>;

/// The meshwasm task runner.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build every wasm filter into target/filters/.
    ///
    /// Every wasm crate of the workspace, for wasm32-wasip1 in release, shrunk with wasm-opt -Oz
    /// (installed with npm when missing) unless --no-opt; prints their sizes. Then the
    /// components under components/ with cargo-component (installed when missing) into
    /// target/components/.
    Build {
        /// Skip wasm-opt.
        #[arg(long)]
        no_opt: bool,
    },
    /// The whole suite, as CI runs it.
    ///
    /// fmt, clippy (host and wasm32), unit tests, wasm codec tests, bounded fuzzing, cargo deny,
    /// the wasm build, Envoy config validation, bench and instructions smoke runs and the
    /// integration tests in real Envoy. The last line is `xtask test: N passed, M failed`.
    Test(test::Options),
    /// Run the cargo-fuzz targets in fuzz/ for a while each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Targets to run (default: all).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        targets: Vec<String>,
    },
    /// Render the templates in envoy-configs/ into a directory.
    ///
    /// FILTERS_DIR, ENVOY_CONFIGS_DIR, EDS_DIR and CERTS_DIR become absolute paths (CERTS_DIR a
    /// workload `sidecar` of a new mesh CA under <out-dir>/certs), each PORT_<NAME> a port
    /// numbered from 20000 (the same name the same port in every file), SHA256_<FILTER> the hash
    /// of the built filter.
    RenderConfigs {
        /// Where the rendered files go.
        out_dir: PathBuf,
    },
    /// Make a mesh CA and workload certificates for mutual TLS (SDS files the sidecars watch).
    ///
    /// One directory per service under OUT_DIR (a sidecar's CERTS_DIR), each with its
    /// certificate (URI SAN spiffe://<trust-domain>/ns/<namespace>/sa/<service>), key and the CA
    /// bundle; the CA in OUT_DIR/ca is kept across runs, so running again rotates the workload
    /// certificates of running sidecars with no restart.
    Certs {
        /// Where the CA and the workload directories go (default: <target>/certs).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// The SPIFFE trust domain.
        #[arg(long, default_value = toolkit::certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// The namespace of the services.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// A service to make a certificate for (repeat; default: the demo's three).
        #[arg(long = "service", default_values_t = ["frontend".to_string(), "orders".to_string(), "inventory".to_string()])]
        services: Vec<String>,
        /// How long the workload certificates are valid, in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Regenerate the configs derived from others.
    ///
    /// The one-module sidecars (envoy-configs/sidecar-one-module.yaml,
    /// integration/configs/mesh_sidecar.yaml) from their three-module originals.
    DeriveConfigs {
        /// Only check that the derived files are up to date; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// A local mesh with the filters in real Envoys (`demo --help` for its options).
    ///
    /// frontend -> orders -> inventory on 127.0.0.1, each instance with a sidecar Envoy running
    /// the filters: prints a trace, retries and the service graph, writes
    /// target/demo/report.html. Builds the filters first unless --no-build.
    #[command(disable_help_flag = true)]
    Demo {
        /// The demo's options, passed on to `meshwasm-demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measure the filters' cost in Envoy (`bench --help` for its options).
    ///
    /// Envoy CPU time per request, throughput, latency, RSS, hostcalls and sizes against no
    /// filter, Lua and bare proxy-wasm; writes BENCHMARKS.md and docs/bench.svg. Builds the
    /// filters first unless --no-build. `--against REV` also builds revision REV's filters (in
    /// a worktree under target/bench/against) and runs each chosen scenario with both, paired
    /// per round: e.g. `cargo xtask bench --only mesh,trace-core --against HEAD~1 --rounds 10`.
    #[command(disable_help_flag = true)]
    Bench {
        /// The bench's options, passed on to `meshwasm-bench`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A long soak of a sidecar with all three filters.
    ///
    /// N requests: every one served, no VM failure, memory flat after warm-up.
    Soak {
        /// Requests (at least 2000).
        #[arg(long, default_value_t = soak::DEFAULT_REQUESTS,
              value_parser = clap::value_parser!(u64).range(2000..))]
        requests: u64,
    },
    /// The integration suite on every supported Envoy release.
    ///
    /// The latest patch of each minor release, from PyPI; writes the matrix into README.md.
    Compat {
        /// Versions to run, e.g. 1.40.0,1.39.3 (default: the supported list).
        #[arg(long, value_delimiter = ',')]
        versions: Vec<String>,
        /// Print the matrix only; leave README.md alone.
        #[arg(long)]
        no_readme: bool,
    },
    /// Run the shared cases against the built meshwasm:propagation component from Python and Node.
    ///
    /// PyPI wasmtime and npm jco, pinned in components/propagation/hosts/ and installed under
    /// target/tools/ on first use (`cargo xtask test` runs this too). Needs `cargo xtask build`.
    ComponentTest,
    /// Calls per second of the meshwasm:propagation component from Python.
    ///
    /// One instance in one thread (PyPI wasmtime), `propagate` on a typical request's headers
    /// (W3C traceparent and tracestate, baggage, x-request-id, and a dozen others). Needs
    /// `cargo xtask build` first.
    ComponentBench {
        /// Seconds to measure.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// cargo deny: licenses, bans, sources, advisories.
    ///
    /// Advisories only when the RustSec database can be had.
    Deny {
        /// Skip the advisories (they need the RustSec database).
        #[arg(long)]
        offline: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Build { no_opt } => build::build(!no_opt).map(|_| ()),
        Task::Test(options) => return test::main(&options),
        Task::Fuzz { seconds, targets } => fuzz::main(seconds, targets),
        Task::RenderConfigs { out_dir } => envoy::render_configs(&out_dir),
        Task::Certs {
            out_dir,
            trust_domain,
            namespace,
            services,
            hours,
        } => certs::main(
            &out_dir.unwrap_or_else(|| target_dir().join("certs")),
            &trust_domain,
            &namespace,
            &services,
            hours,
        ),
        Task::DeriveConfigs { check } => envoy::derive_configs(check),
        Task::Demo { args } => run_binary("meshwasm-demo", false, &args),
        Task::Bench { args } => {
            against::resolve(&args).and_then(|args| run_binary("meshwasm-bench", true, &args))
        }
        Task::Soak { requests } => soak::main(requests),
        Task::Compat {
            versions,
            no_readme,
        } => compat::main(versions, !no_readme),
        Task::ComponentTest => component::test_hosts(),
        Task::ComponentBench { seconds } => component::bench(seconds),
        Task::Deny { offline } => deny::check_all(offline).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask demo|bench [args]`: builds the filters unless the arguments ask for help or say
/// `--no-build`, then runs the binary `package` (a package of the same name) with `args`.
fn run_binary(package: &str, release: bool, args: &[OsString]) -> Result<()> {
    let asks = |flag: &str| args.iter().any(|a| a == flag);
    let help = asks("--help") || asks("-h");
    if !help && !asks("--no-build") {
        build::build(true)?;
    }
    let mut cmd = cargo();
    cmd.args(["run", "--quiet"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", package, "--bin", package, "--"]).args(args);
    run(&mut cmd)
}

/// The workspace root (the parent of this crate's directory).
pub fn project_root() -> PathBuf {
    toolkit::workspace_root()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    toolkit::target_dir()
}

/// Where xtask installs the tools it needs (cargo-deny, cargo-fuzz, wasm-bindgen-cli, binaryen's
/// wasm-opt), each in a directory named after its version: `$MESHWASM_TOOLS_DIR`, else
/// `$CARGO_HOME/meshwasm-tools` (`~/.cargo/meshwasm-tools`). Outside `target/`, so every checkout
/// on a machine (a fresh clone for CI included) builds each pinned tool once, not once per clone.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHWASM_TOOLS_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| target_dir().join("tools"));
    cargo_home.join("meshwasm-tools")
}

/// The binary `krate` of `version` in the tools directory ([`tools_dir`]`/<krate>-<version>/bin/`),
/// installed there with `cargo install --locked` (from crates.io) when missing.
pub fn installed_crate(krate: &str, version: &str) -> Result<PathBuf> {
    let root = tools_dir().join(format!("{krate}-{version}"));
    let bin = root.join("bin").join(krate);
    if is_executable(&bin) {
        return Ok(bin);
    }
    println!(
        "installing {krate} {version} into {} (takes a few minutes)",
        root.display()
    );
    run(cargo()
        .args(["install", "--locked", "--version", version, "--root"])
        .arg(&root)
        .arg(krate))?;
    if is_executable(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "cargo install {krate} finished but {} is missing",
            bin.display()
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_tasks_and_their_options() {
        let cli = Cli::try_parse_from(["xtask", "build", "--no-opt"]).map_err(|e| e.to_string());
        assert!(matches!(
            cli,
            Ok(Cli {
                task: Task::Build { no_opt: true }
            })
        ));
        let cli = Cli::try_parse_from(["xtask", "soak", "--requests", "1000"]);
        assert!(cli.is_err(), "fewer than 2000 requests is refused");
        let cli = Cli::try_parse_from(["xtask", "compat", "--versions", "1.40.0,1.39.3"]);
        assert!(matches!(
            cli,
            Ok(Cli { task: Task::Compat { ref versions, no_readme: false } })
                if versions == &["1.40.0", "1.39.3"]
        ));
        assert!(Cli::try_parse_from(["xtask", "fuzz", "no_such_target"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "build", "--fast"]).is_err());
    }

    #[test]
    fn demo_and_bench_pass_their_options_on() {
        let cli = Cli::try_parse_from(["xtask", "demo", "--requests", "5", "--help"]);
        let Ok(Cli {
            task: Task::Demo { args },
        }) = cli
        else {
            panic!("demo did not parse");
        };
        assert_eq!(args, ["--requests", "5", "--help"]);
        assert!(matches!(
            Cli::try_parse_from(["xtask", "bench", "--quick"]),
            Ok(Cli {
                task: Task::Bench { .. }
            })
        ));
    }
}
