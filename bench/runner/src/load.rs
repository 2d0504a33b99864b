//! The load generator: `wrk` (Debian's package, installed when missing), a closed loop over a
//! fixed number of keep-alive HTTP/1.1 connections, and the parsing of its report
//! (requests per second, the latency percentiles of `--latency`, errors).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::Result;
use toolkit::cmd::{self, display, find_on_path, output};

/// One wrk run's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Requests per second over the run.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Requests completed.
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors (connect, read, write, timeout).
    pub errors: u64,
}

/// A load shape: connections and duration.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Keep-alive connections (`-c`), all on one wrk thread.
    pub connections: u32,
    /// Seconds (`-d`; wrk takes whole seconds).
    pub seconds: u32,
}

/// `wrk` on PATH (or `/usr/bin`), else Debian's `wrk` installed with apt-get (needs root).
pub fn ensure_wrk() -> Result<PathBuf> {
    ensure_debian_tool("wrk", "wrk")
}

/// The program `name` on PATH (or in `/usr/bin`), else Debian's `package` installed with apt-get
/// (needs root).
pub fn ensure_debian_tool(name: &str, package: &str) -> Result<PathBuf> {
    let find = || {
        find_on_path(name)
            .or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()))
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    let uid = output(Command::new("id").arg("-u")).unwrap_or_default();
    if uid.trim() != "0" {
        return Err(format!(
            "{name} not found and not running as root: install Debian's `{package}` package \
             (`apt-get install -y {package}`)"
        ));
    }
    for args in [
        &["update"][..],
        &["install", "-y", "--no-install-recommends", package][..],
    ] {
        let mut apt = Command::new("apt-get");
        apt.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd::run(&mut apt)?;
    }
    find().ok_or_else(|| format!("installed Debian's `{package}` but `{name}` is not on PATH"))
}

/// Runs wrk against `url` with `headers` and returns its figures.
pub fn run(wrk: &PathBuf, url: &str, headers: &[(&str, &str)], shape: Shape) -> Result<Sample> {
    let mut cmd = Command::new(wrk);
    cmd.args(["-t1", "-c", &shape.connections.to_string()])
        .args(["-d", &format!("{}s", shape.seconds)])
        .args(["--timeout", "5s", "--latency"]);
    for (name, value) in headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    cmd.arg(url).stdin(Stdio::null());
    let text = output(&mut cmd)?;
    parse(&text).map_err(|e| format!("`{}`: {e}; its output:\n{text}", display(&cmd)))
}

/// `512.00us`, `1.20ms`, `2.00s` -> microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// Parses wrk's report (as printed with `--latency`).
pub fn parse(text: &str) -> Result<Sample> {
    let mut sample = Sample::default();
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => rps = n.parse().ok(),
            ["50%", t] => p50 = duration_us(t),
            ["99%", t] => p99 = duration_us(t),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                sample.errors += n.parse::<u64>().unwrap_or(1);
            }
            ["Socket", "errors:", rest @ ..] => {
                sample.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    sample.rps = rps.ok_or("no `Requests/sec:` line")?;
    sample.p50_us = p50.ok_or("no `50%` latency line (was --latency given?)")?;
    sample.p99_us = p99.ok_or("no `99%` latency line")?;
    sample.requests = requests.ok_or("no `N requests in` line")?;
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 3s test @ http://127.0.0.1:20001/orders/7
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.41us  301.22us  12.03ms   93.10%
    Req/Sec    19.88k     1.01k   21.04k    80.00%
  Latency Distribution
     50%  760.00us
     75%  842.00us
     90%  0.96ms
     99%    1.92ms
  59342 requests in 3.00s, 8.21MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  19780.52
Transfer/sec:      2.74MB
";

    #[test]
    fn parses_a_wrk_report() -> Result<()> {
        let s = parse(REPORT)?;
        assert_eq!(s.rps, 19780.52);
        assert_eq!(s.p50_us, 760.0);
        assert_eq!(s.p99_us, 1920.0);
        assert_eq!(s.requests, 59342);
        assert_eq!(s.errors, 7);
        assert!(parse("nothing").is_err());
        Ok(())
    }

    #[test]
    fn reads_wrk_durations() {
        assert_eq!(duration_us("512.00us"), Some(512.0));
        assert_eq!(duration_us("1.50ms"), Some(1500.0));
        assert_eq!(duration_us("2.00s"), Some(2_000_000.0));
        assert_eq!(duration_us("1.00m"), Some(60_000_000.0));
        assert_eq!(duration_us("fast"), None);
    }
}
