//! Sidecar Envoy processes for the demo: rendering a config template, starting Envoy, waiting
//! for `/ready`, reading its admin endpoint, and stopping it. A watchdog process makes sure no
//! Envoy outlives the demo, even when the demo itself is killed.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;

/// Replaces each `{{NAME}}` of `template` by its value in `vars`; any placeholder left over is an
/// error naming it (the same `{{...}}` convention as `cargo xtask render-configs`).
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unclosed `{{` in a config template".to_string())?;
        let key = after[..end].trim();
        let value = vars
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("no value for placeholder `{{{{{key}}}}}`"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A `sh` process that, when the demo's process ends without stopping its Envoys (killed, or
/// interrupted in a way that skips the cleanup), stops them: it reads their pids on its stdin and
/// acts on end of file. It ignores SIGINT so that a Ctrl-C does not take it down first, and only
/// signals a pid that is still an `envoy` process.
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

const WATCHDOG: &str = r#"trap '' INT HUP
pids=''
while read -r line; do
  case "$line" in
    done) exit 0 ;;
    *) pids="$pids $line" ;;
  esac
done
alive() { grep -q envoy "/proc/$1/cmdline" 2>/dev/null; }
for p in $pids; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
sleep 2
for p in $pids; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
exit 0"#;

impl Watchdog {
    /// Starts the watchdog.
    pub fn start() -> Result<Watchdog, String> {
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start the watchdog (sh): {e}"))?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// Adds a pid to stop if the demo dies.
    pub fn watch(&mut self, pid: u32) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| "the watchdog is closed".to_string())?;
        writeln!(stdin, "{pid}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("could not tell the watchdog about pid {pid}: {e}"))
    }
}

impl Drop for Watchdog {
    /// A clean end: the Envoys were stopped by their own `Drop`, so the watchdog exits without
    /// signalling anything.
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "done");
        }
        let _ = self.child.wait();
    }
}

/// A running Envoy; stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct EnvoyProcess {
    name: String,
    child: Child,
    admin_port: u16,
    dir: PathBuf,
}

/// What to start.
pub struct EnvoySpec<'a> {
    /// The Envoy binary.
    pub bin: &'a Path,
    /// A name for messages and the directory, e.g. `orders-1`.
    pub name: &'a str,
    /// The rendered bootstrap.
    pub config: &'a str,
    /// Where to write `envoy.yaml` and `envoy.log`.
    pub dir: &'a Path,
    /// Its admin port (for readiness).
    pub admin_port: u16,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl EnvoyProcess {
    /// Writes the config and starts Envoy, registered with `watchdog` at once; see
    /// [`EnvoyProcess::wait_ready`].
    pub fn spawn(spec: EnvoySpec<'_>, watchdog: &mut Watchdog) -> Result<EnvoyProcess, String> {
        fs::create_dir_all(spec.dir)
            .map_err(|e| format!("could not create {}: {e}", spec.dir.display()))?;
        let config_path = spec.dir.join("envoy.yaml");
        fs::write(&config_path, spec.config)
            .map_err(|e| format!("could not write {}: {e}", config_path.display()))?;
        let log_path = spec.dir.join("envoy.log");
        let log = File::create(&log_path)
            .map_err(|e| format!("could not create {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("could not open {}: {e}", log_path.display()))?;
        let child = Command::new(spec.bin)
            .arg("-c")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", spec.bin.display()))?;
        let envoy = EnvoyProcess {
            name: spec.name.to_string(),
            child,
            admin_port: spec.admin_port,
            dir: spec.dir.to_path_buf(),
        };
        watchdog.watch(envoy.child.id())?;
        Ok(envoy)
    }

    /// Waits until its admin `/ready` answers 200, or fails with the end of its log when it
    /// exits or `patience` runs out.
    pub fn wait_ready(&mut self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(format!(
                    "envoy {} exited before becoming ready; its log ({}):\n{}",
                    self.name,
                    self.log_path().display(),
                    self.log_tail(40)
                ));
            }
            if self.admin("/ready").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "envoy {} not ready within {patience:?}; its log ({}):\n{}",
                    self.name,
                    self.log_path().display(),
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory with its config and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("envoy.log")
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET <path>` on its admin endpoint.
    pub fn admin(&self, path: &str) -> Result<http::Response, String> {
        http::request(
            "GET",
            self.admin_port,
            path,
            &[("host", "127.0.0.1")],
            Duration::from_secs(5),
        )
    }

    /// Its `/stats/prometheus` text.
    pub fn prometheus(&self) -> Result<String, String> {
        let resp = self.admin("/stats/prometheus")?;
        if resp.status == 200 {
            Ok(resp.body)
        } else {
            Err(format!(
                "{}: /stats/prometheus answered {}",
                self.name, resp.status
            ))
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it: SIGTERM, then SIGKILL after 3 s; reaps it.
    pub fn stop(&mut self) {
        if self.is_running() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_placeholders_and_names_missing_ones() {
        let vars = [("PORT_A", "1".to_string()), ("EDS_DIR", "/e".to_string())];
        assert_eq!(
            render("a: {{PORT_A}} p: {{ EDS_DIR }}/x", &vars).unwrap(),
            "a: 1 p: /e/x"
        );
        let err = render("{{PORT_B}}", &vars).unwrap_err();
        assert!(err.contains("PORT_B"), "{err}");
        assert!(render("{{PORT_A", &vars).is_err());
    }

    #[test]
    fn watchdog_exits_cleanly_when_told() {
        let mut w = Watchdog::start().unwrap();
        // Our own pid is not an envoy: it would never be signalled anyway.
        w.watch(std::process::id()).unwrap();
        drop(w);
    }
}
