//! One Envoy process per scenario, started by the bench itself (it needs the process id for
//! RSS): rendered config and log under `target/bench/run/`, `--disable-hot-restart`, readiness on
//! the admin `/ready`, and SIGTERM then SIGKILL when dropped.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// A running Envoy; stopped (and reaped) on drop.
pub struct Proxy {
    child: Child,
    name: String,
    log_path: PathBuf,
    admin_port: u16,
    listener_port: u16,
}

/// What [`Proxy::spawn`] needs.
pub struct Launch<'a> {
    /// Which cores it runs on.
    pub cpus: &'a super::cpus::Cpus,
    /// The Envoy binary.
    pub bin: &'a Path,
    /// Scenario key, for file names and messages.
    pub name: &'a str,
    /// The rendered bootstrap.
    pub config: &'a str,
    /// `--concurrency`.
    pub concurrency: u32,
    /// Where the config and log go.
    pub dir: &'a Path,
    /// The admin port the config uses.
    pub admin_port: u16,
    /// The listener port the config uses.
    pub listener_port: u16,
    /// A `--base-id` no other Envoy of this run uses.
    pub base_id: u32,
}

impl Proxy {
    /// Writes the config and starts Envoy (without waiting for it: see [`Proxy::wait_ready`]).
    pub fn spawn(l: &Launch<'_>) -> Result<Proxy> {
        fs::create_dir_all(l.dir).map_err(|e| format!("creating {}: {e}", l.dir.display()))?;
        let config_path = l.dir.join(format!("{}.yaml", l.name));
        fs::write(&config_path, l.config)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let log_path = l.dir.join(format!("{}.log", l.name));
        let log =
            File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cloning {}: {e}", log_path.display()))?;
        let child = l
            .cpus
            .command_for_envoy(l.bin, l.concurrency)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &l.concurrency.to_string()])
            .args(["--base-id", &l.base_id.to_string()])
            .arg("--disable-hot-restart")
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", l.bin.display()))?;
        Ok(Proxy {
            child,
            name: l.name.to_string(),
            log_path,
            admin_port: l.admin_port,
            listener_port: l.listener_port,
        })
    }

    /// Waits until admin `/ready` answers 200; fails with Envoy's log when it exits or is not
    /// ready within `patience`.
    pub fn wait_ready(&mut self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(format!(
                    "envoy for scenario `{}` exited before becoming ready; log ({}):\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log()
                ));
            }
            if self
                .admin_get("/ready")
                .is_some_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "envoy for scenario `{}` not ready within {patience:?}; log ({}):\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The listener port.
    pub fn listener_port(&self) -> u16 {
        self.listener_port
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmRSS in {path}"))
    }

    /// `GET path` on the admin port: status and body, `None` when it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        integration::http_get(self.admin_port, path, &[])
            .ok()
            .map(|r| (r.status, r.body))
    }

    /// Counter and gauge lines of admin `/stats` whose names contain `filter`.
    pub fn stats(&self, filter: &str) -> Vec<(String, u64)> {
        let Some((200, body)) = self.admin_get("/stats") else {
            return Vec::new();
        };
        body.lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                let value = value.trim().parse().ok()?;
                name.contains(filter).then(|| (name.to_string(), value))
            })
            .collect()
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first so Envoy shuts down cleanly; SIGKILL if it lingers.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
