//! `meshwasm-demo`: the local mesh on 127.0.0.1 (what `cargo xtask demo` runs once the filters
//! are built): finds Envoy, runs the demo and prints its report; options in `--help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use meshwasm_demo::cli::Args;
use meshwasm_demo::DemoOptions;

fn main() -> ExitCode {
    let args = match Args::parse().checked() {
        Ok(args) => args,
        Err(e) => Args::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn absolute(path: std::path::PathBuf) -> Result<std::path::PathBuf, String> {
    std::path::absolute(&path).map_err(|e| format!("no absolute path for {}: {e}", path.display()))
}

fn run(args: &Args) -> Result<(), String> {
    println!("==> finding Envoy");
    let (bin, _) = toolkit::find::find_and_report()?;
    println!("\n==> the mesh");
    let demo = DemoOptions {
        envoy: bin,
        filters_dir: absolute(toolkit::filters_dir())?,
        configs_dir: toolkit::workspace_root().join("envoy-configs"),
        out_dir: absolute(toolkit::target_dir().join("demo"))?,
        requests: args.requests,
        duration: args.duration,
        rps: args.rps,
        failure_rate: args.failure_rate,
        keep_running: args.keep_running,
        progress_bar: std::io::stderr().is_terminal(),
        one_module: args.one_module(),
    };
    meshwasm_demo::run(&demo, &mut std::io::stdout()).map(|_| ())
}
