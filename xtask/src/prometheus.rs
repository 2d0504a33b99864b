//! Prometheus and promtool for the integration tests: found on `PATH` (or `/usr/bin`), else
//! installed from Debian's `prometheus` package (`apt-get update` once, then `apt-get install`).

use std::env;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `apt-get update` ran in this process, so it runs at most once.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// The `prometheus` and `promtool` binaries, installing Debian's `prometheus` package when
/// either is missing. Installing needs root (as on the project's machines and CI).
///
/// The integration tests find the same binaries through `PROMETHEUS_BIN` / `PROMTOOL_BIN`,
/// `PATH` and `/usr/bin`, and fail (never skip) when they are absent.
pub fn ensure() -> Result<(PathBuf, PathBuf), String> {
    if let (Some(server), Some(tool)) = (find("prometheus"), find("promtool")) {
        return Ok((server, tool));
    }
    if !is_root() {
        return Err(
            "prometheus/promtool not found and not running as root: install Debian's \
             `prometheus` package (`apt-get install -y prometheus`)"
                .to_string(),
        );
    }
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        run("apt-get", &["update"])?;
    }
    run(
        "apt-get",
        &["install", "-y", "--no-install-recommends", "prometheus"],
    )?;
    match (find("prometheus"), find("promtool")) {
        (Some(server), Some(tool)) => Ok((server, tool)),
        _ => Err(
            "installed Debian's `prometheus` package but prometheus/promtool \
                  are still not on PATH or in /usr/bin"
                .to_string(),
        ),
    }
}

/// `name` on `PATH`, else in `/usr/bin` (Debian's location when `PATH` is minimal).
fn find(name: &str) -> Option<PathBuf> {
    let mut dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {} failed: {status}", args.join(" ")))
    }
}
