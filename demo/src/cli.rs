//! The options of the `meshwasm-demo` binary, which `cargo xtask demo` runs with its own
//! arguments after building the filters: how much traffic, how much failure, which sidecar.

use std::time::Duration;

use clap::Parser;

/// Requests sent when neither `--requests` nor `--duration` is given (6 s at the default rate).
pub const DEFAULT_REQUESTS: u64 = 300;
/// Requests per second when `--rps` is not given.
pub const DEFAULT_RPS: f64 = 50.0;
/// The fraction of inventory's requests that fail when `--failure-rate` is not given.
pub const DEFAULT_FAILURE_RATE: f64 = 0.25;
/// Requests sent with `--quick` (unless `--requests` or `--duration` is given).
pub const QUICK_REQUESTS: u64 = 120;
/// The least rate with `--quick` (unless `--requests` or `--duration` is given).
pub const QUICK_RPS: f64 = 100.0;

/// A local mesh on 127.0.0.1: frontend -> orders -> inventory (two instances), each instance with
/// a sidecar Envoy running the meshwasm filters. Drives traffic, then prints one request's trace,
/// the retries and the failures they absorbed, the service graph, and writes
/// target/demo/report.html.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "meshwasm-demo", version)]
pub struct Args {
    /// Stop after N requests [default: 300, or 120 with --quick, unless --duration is given]
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Requests per second, 0 < R <= 10000
    #[arg(long, value_name = "R", default_value_t = DEFAULT_RPS, allow_negative_numbers = true)]
    pub rps: f64,
    /// Stop after S seconds of traffic (`20` or `20s`)
    #[arg(long, value_name = "S", value_parser = seconds, allow_negative_numbers = true)]
    pub duration: Option<Duration>,
    /// The fraction of inventory's requests that fail with 503, 0 to 1
    #[arg(long, value_name = "F", default_value_t = DEFAULT_FAILURE_RATE, allow_negative_numbers = true)]
    pub failure_rate: f64,
    /// Leave the mesh up after the report, with curl commands to try, until Ctrl-C
    #[arg(long)]
    pub keep_running: bool,
    /// 120 requests at (at least) 100 rps, unless --requests or --duration is given
    #[arg(long)]
    pub quick: bool,
    /// Sidecars with the three policies as three filters, a module each
    /// (envoy-configs/sidecar.yaml), instead of the default: the three in one module
    /// (envoy-configs/sidecar-one-module.yaml), the cheaper layout (BENCHMARKS.md)
    #[arg(long)]
    pub three_modules: bool,
    /// The default layout, kept so that earlier command lines still run
    #[arg(long, hide = true, conflicts_with = "three_modules")]
    pub one_module: bool,
    /// Accepted and ignored here: building the filters is `cargo xtask demo`'s job, which skips
    /// it with --no-build; this binary never builds and runs the filters already in
    /// target/filters (or $MESHWASM_FILTERS_DIR)
    #[arg(long)]
    pub no_build: bool,
}

/// `20`, `20s` or `0.5` seconds, more than 0.
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|e| format!("not a valid number ({e})"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err("expected seconds > 0".to_string());
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    /// Checks the values and fills in what depends on other options: the number of requests
    /// when no limit is given (300, or 120 with `--quick`, which also raises the rate to 100).
    pub fn checked(mut self) -> Result<Args, String> {
        if !(self.rps > 0.0 && self.rps <= 10_000.0) {
            return Err(format!("--rps {}: expected 0 < rps <= 10000", self.rps));
        }
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(format!(
                "--failure-rate {}: expected 0 to 1",
                self.failure_rate
            ));
        }
        if self.requests.is_none() && self.duration.is_none() {
            self.requests = Some(if self.quick {
                QUICK_REQUESTS
            } else {
                DEFAULT_REQUESTS
            });
            if self.quick {
                self.rps = self.rps.max(QUICK_RPS);
            }
        }
        Ok(self)
    }

    /// Whether the sidecars run the three policies in one module (the default).
    pub fn one_module(&self) -> bool {
        !self.three_modules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Args, String> {
        let argv = std::iter::once("meshwasm-demo").chain(list.iter().copied());
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .checked()
    }

    #[test]
    fn parses_options_and_defaults() -> Result<(), String> {
        let o = parse(&[])?;
        assert_eq!(o.requests, Some(DEFAULT_REQUESTS));
        assert_eq!((o.rps, o.failure_rate), (DEFAULT_RPS, DEFAULT_FAILURE_RATE));
        assert!(!o.keep_running && !o.quick && !o.three_modules && !o.no_build);
        assert!(o.one_module(), "one module is the default layout");
        let o = parse(&["--duration", "20s", "--rps", "10", "--keep-running"])?;
        assert_eq!(o.requests, None);
        assert_eq!(o.duration, Some(Duration::from_secs(20)));
        assert!(o.keep_running);
        assert_eq!(
            parse(&["--duration", "0.5"])?.duration,
            Some(Duration::from_millis(500))
        );
        let o = parse(&["--quick"])?;
        assert_eq!((o.requests, o.rps), (Some(120), 100.0));
        let o = parse(&["--quick", "--rps", "300"])?;
        assert_eq!((o.requests, o.rps), (Some(120), 300.0));
        let o = parse(&["--quick", "--requests", "10"])?;
        assert_eq!((o.requests, o.rps), (Some(10), DEFAULT_RPS));
        assert_eq!(parse(&["--requests", "7"])?.requests, Some(7));
        assert_eq!(parse(&["--failure-rate", "0.5"])?.failure_rate, 0.5);
        assert!(parse(&["--requests"]).is_err());
        assert!(parse(&["--requests", "many"]).is_err());
        assert!(parse(&["--rps", "0"]).is_err());
        assert!(parse(&["--rps", "-5"]).is_err());
        assert!(parse(&["--rps", "NaN"]).is_err());
        assert!(parse(&["--rps", "20000"]).is_err());
        assert!(parse(&["--failure-rate", "1.5"]).is_err());
        assert!(parse(&["--failure-rate", "-0.1"]).is_err());
        assert!(parse(&["--duration", "-1"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--loud"]).is_err());
        assert!(!parse(&["--three-modules"])?.one_module());
        assert!(parse(&["--one-module"])?.one_module());
        assert!(parse(&["--one-module", "--three-modules"]).is_err());
        assert!(parse(&["--no-build"])?.no_build);
        Ok(())
    }

    #[test]
    fn help_lists_every_option() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "--requests",
            "--rps",
            "--duration",
            "--failure-rate",
            "--keep-running",
            "--quick",
            "--three-modules",
            "--no-build",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
        assert!(help.contains("cargo xtask demo"), "{help}");
    }
}
