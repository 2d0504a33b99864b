//! `cargo xtask demo`: builds the filters, finds (or installs) Envoy, and runs the local mesh of
//! the `meshwasm-demo` crate on 127.0.0.1, printing its report and writing
//! `target/demo/report.html`.

use std::io::IsTerminal;
use std::time::Duration;

use meshwasm_demo::DemoOptions;

use crate::{build, envoy, target_dir, Result};

/// Defaults: 300 requests at 50 rps (6 s of traffic), 25% of inventory requests failing.
const DEFAULT_REQUESTS: u64 = 300;
const DEFAULT_RPS: f64 = 50.0;
const DEFAULT_FAILURE_RATE: f64 = 0.25;

/// Options of `cargo xtask demo`.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    requests: Option<u64>,
    duration: Option<Duration>,
    rps: f64,
    failure_rate: f64,
    keep_running: bool,
    quick: bool,
    no_build: bool,
    one_module: bool,
}

fn value<'a>(flag: &str, args: &mut impl Iterator<Item = &'a String>) -> Result<&'a String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| format!("{flag} {text}: not a valid number ({e})"))
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        requests: None,
        duration: None,
        rps: DEFAULT_RPS,
        failure_rate: DEFAULT_FAILURE_RATE,
        keep_running: false,
        quick: false,
        no_build: false,
        one_module: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => options.requests = Some(number(arg, value(arg, &mut args)?)?),
            "--rps" => options.rps = number(arg, value(arg, &mut args)?)?,
            "--duration" => {
                let text = value(arg, &mut args)?;
                let secs: f64 = number(arg, text.trim_end_matches('s'))?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err(format!("--duration {text}: expected seconds > 0"));
                }
                options.duration = Some(Duration::from_secs_f64(secs));
            }
            "--failure-rate" => options.failure_rate = number(arg, value(arg, &mut args)?)?,
            "--keep-running" => options.keep_running = true,
            "--quick" => options.quick = true,
            "--no-build" => options.no_build = true,
            "--one-module" => options.one_module = true,
            other => return Err(format!("unknown option for `demo`: {other}")),
        }
    }
    if !(options.rps > 0.0 && options.rps <= 10_000.0) {
        return Err(format!("--rps {}: expected 0 < rps <= 10000", options.rps));
    }
    if !(0.0..=1.0).contains(&options.failure_rate) {
        return Err(format!(
            "--failure-rate {}: expected 0 to 1",
            options.failure_rate
        ));
    }
    if options.requests.is_none() && options.duration.is_none() {
        options.requests = Some(if options.quick { 120 } else { DEFAULT_REQUESTS });
        if options.quick {
            options.rps = options.rps.max(100.0);
        }
    }
    Ok(options)
}

/// `cargo xtask demo [...]`.
pub fn main(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    if !options.no_build {
        println!("==> building the filters");
        build::build(true)?;
    }
    println!("\n==> finding Envoy");
    let bin = envoy::find()?;
    println!("\n==> the mesh");
    let demo = DemoOptions {
        envoy: bin,
        filters_dir: std::path::absolute(target_dir().join("filters"))
            .map_err(|e| format!("no absolute path for target/filters: {e}"))?,
        configs_dir: envoy::configs_dir(),
        out_dir: std::path::absolute(target_dir().join("demo"))
            .map_err(|e| format!("no absolute path for target/demo: {e}"))?,
        requests: options.requests,
        duration: options.duration,
        rps: options.rps,
        failure_rate: options.failure_rate,
        keep_running: options.keep_running,
        progress_bar: std::io::stderr().is_terminal(),
        one_module: options.one_module,
    };
    meshwasm_demo::run(&demo, &mut std::io::stdout()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_options_and_defaults() -> Result<()> {
        let o = parse(&args(&[]))?;
        assert_eq!(o.requests, Some(DEFAULT_REQUESTS));
        assert_eq!((o.rps, o.failure_rate), (DEFAULT_RPS, DEFAULT_FAILURE_RATE));
        let o = parse(&args(&[
            "--duration",
            "20s",
            "--rps",
            "10",
            "--keep-running",
        ]))?;
        assert_eq!(o.requests, None);
        assert_eq!(o.duration, Some(Duration::from_secs(20)));
        assert!(o.keep_running);
        let o = parse(&args(&["--quick"]))?;
        assert_eq!((o.requests, o.rps), (Some(120), 100.0));
        assert_eq!(parse(&args(&["--requests", "7"]))?.requests, Some(7));
        assert!(parse(&args(&["--requests"])).is_err());
        assert!(parse(&args(&["--rps", "0"])).is_err());
        assert!(parse(&args(&["--failure-rate", "1.5"])).is_err());
        assert!(parse(&args(&["--duration", "-1"])).is_err());
        assert!(parse(&args(&["--loud"])).is_err());
        assert!(parse(&args(&["--one-module"]))?.one_module);
        Ok(())
    }
}
