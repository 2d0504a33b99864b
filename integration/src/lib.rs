//! Harness for the integration tests: starts real Envoy processes on loopback ports with configs
//! rendered from templates, plus a test upstream, an HTTP client and eventual assertions.

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod envoy;
mod http;
pub mod upstream;

pub use envoy::workspace_root;
pub use http::{http_get, http_request, Response};

/// How long eventual assertions and readiness waits may take: `RUST_TEST_PATIENCE_MS`,
/// default 20 000 ms.
pub fn patience() -> Duration {
    let ms = std::env::var("RUST_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(20_000);
    Duration::from_millis(ms)
}

/// Polls `condition` every 20 ms until it holds (`true`) or [`patience`] runs out (`false`).
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience();
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that a condition becomes true within [`patience`], polling it; never a fixed sleep.
///
/// `assert_eventually!(upstream.requests().len() == 1)` or with a message in `format!` style.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$crate::eventually(|| $cond) {
            panic!(
                "condition not true within {:?}: {}",
                $crate::patience(),
                format_args!($($arg)+)
            );
        }
    };
}

/// Where the built filters live: `MESHWASM_FILTERS_DIR`, default `<workspace>/target/filters`.
pub fn filters_dir() -> PathBuf {
    std::env::var_os("MESHWASM_FILTERS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("filters"))
}

/// The built `.wasm` of filter crate `crate_name` (`add-headers` or `add_headers`) in
/// [`filters_dir`].
///
/// # Panics
/// When the file is missing: the test must fail, not silently skip.
pub fn wasm_path(crate_name: &str) -> PathBuf {
    let path = filters_dir().join(format!("{}.wasm", crate_name.replace('-', "_")));
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo xtask build` first",
            path.display()
        );
    }
    path
}

/// Escapes `s` for use inside a single-quoted YAML scalar (`'...'`): doubles every `'`.
pub fn yaml_single_quoted(s: &str) -> String {
    s.replace('\'', "''")
}

/// Replaces every `{{NAME}}` in `template` by its value; fails naming any placeholder left.
pub fn render(template: &str, vars: &[(String, String)]) -> Result<String, String> {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    let missing = placeholders(&out);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!("no value for placeholders {missing:?}"))
    }
}

/// The distinct `{{NAME}}` placeholders in `template`, in order of first appearance.
fn placeholders(template: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = &after[..end];
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !found.iter().any(|f| f == name)
        {
            found.push(name.to_string());
        }
        rest = &after[end + 2..];
    }
    found
}

/// Picks `n` distinct free loopback ports (bound together on `127.0.0.1:0`, then released).
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("binding a free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading a free port: {e}"))
}

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// A fresh directory `target/integration-tmp/<pid>-<n>-<nanos>` and the instance number `n`.
fn unique_dir() -> Result<(PathBuf, u32), String> {
    let n = INSTANCES.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = workspace_root()
        .join("target")
        .join("integration-tmp")
        .join(format!("{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok((dir, n))
}

/// Starts an Envoy from a config template; see [`Envoy::builder`].
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    template: String,
    vars: Vec<(String, String)>,
    concurrency: u32,
    log_level: String,
    args: Vec<String>,
}

impl EnvoyBuilder {
    /// Sets placeholder `{{name}}` to `value`.
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.push((name.to_string(), value.into()));
        self
    }

    /// Worker threads (`--concurrency`), default 2.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// `--log-level`, default `info` (overridden by `MESHWASM_ENVOY_LOG_LEVEL`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// An extra command-line argument for Envoy.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Renders the config, starts Envoy and waits for admin `/ready` to answer 200.
    ///
    /// Fails with Envoy's log when it exits or is not ready within [`patience`].
    pub fn start(self) -> Result<Envoy, String> {
        let mut envoy = self.spawn()?;
        envoy.wait_ready()?;
        Ok(envoy)
    }

    /// Starts Envoy with a config it should refuse and returns its log once it exits.
    ///
    /// Envoy 1.40 refuses a bad static config (including a wasm plugin whose `on_configure`
    /// returns false) by logging the error and exiting with status 1 before `/ready` answers.
    ///
    /// # Panics
    /// When Envoy becomes ready, exits with status 0, or has neither exited nor become ready
    /// within [`patience`].
    pub fn start_expecting_failure(self) -> String {
        let mut envoy = match self.spawn() {
            Ok(envoy) => envoy,
            Err(e) => panic!("could not start envoy: {e}"),
        };
        let deadline = Instant::now() + patience();
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                let log = envoy.log();
                if status.success() {
                    panic!("envoy exited successfully ({status}) instead of refusing its config");
                }
                return log;
            }
            if envoy.is_ready() {
                // The log is printed when `envoy` drops during the unwind.
                panic!("envoy became ready with a config it should refuse");
            }
            if Instant::now() >= deadline {
                panic!(
                    "envoy neither exited nor became ready within {:?}",
                    patience()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(mut self) -> Result<Envoy, String> {
        let bin = envoy::find_envoy()?;
        let (dir, instance) = unique_dir()?;
        let given = |name: &str| self.vars.iter().any(|(n, _)| n == name);
        if !given("FILTERS_DIR") {
            let value = filters_dir().display().to_string();
            self.vars.push(("FILTERS_DIR".to_string(), value));
        }
        // Every PORT_* placeholder the caller did not set gets a free loopback port.
        let wanted: Vec<String> = placeholders(&self.template)
            .into_iter()
            .filter(|p| p.starts_with("PORT_") && !self.vars.iter().any(|(n, _)| n == p))
            .collect();
        let ports: Vec<(String, u16)> = wanted
            .iter()
            .cloned()
            .zip(free_ports(wanted.len())?)
            .collect();
        for (name, port) in &ports {
            self.vars.push((name.clone(), port.to_string()));
        }
        let ports: Vec<(String, u16)> = self
            .vars
            .iter()
            .filter(|(n, _)| n.starts_with("PORT_"))
            .filter_map(|(n, v)| Some((n.clone(), v.parse().ok()?)))
            .collect();
        let admin_port = port_of(&ports, "PORT_ADMIN")
            .ok_or("the config template needs an admin address on {{PORT_ADMIN}}")?;
        let config = render(&self.template, &self.vars)?;
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, &config)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let log_path = dir.join("envoy.log");
        let log =
            File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cloning {}: {e}", log_path.display()))?;
        // Unique per instance so scenarios can run in parallel; fits Envoy's u32 base id.
        let base_id = (std::process::id() % 100_000) * 1000 + instance % 1000;
        let level = std::env::var("MESHWASM_ENVOY_LOG_LEVEL").unwrap_or(self.log_level);
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--base-id", &base_id.to_string()])
            // No hot restart in tests: no shared memory left in /dev/shm after a kill.
            .arg("--disable-hot-restart")
            .args(["--log-level", &level])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(Envoy {
            child,
            dir,
            log_path,
            admin_port,
            ports,
            keep_dir: false,
        })
    }
}

fn port_of(ports: &[(String, u16)], name: &str) -> Option<u16> {
    ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p)
}

/// A running Envoy process; killed and reaped on drop (also when the test panics, in which case
/// its log is printed to stderr). Its temp directory (rendered config and log) is removed on drop
/// unless the test panicked or Envoy failed to start.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    log_path: PathBuf,
    admin_port: u16,
    ports: Vec<(String, u16)>,
    /// Keep the temp dir (config and log) after drop: set when starting failed.
    keep_dir: bool,
}

impl Envoy {
    /// A builder for an Envoy running `yaml_template`.
    ///
    /// Placeholders `{{NAME}}` are rendered from: `FILTERS_DIR` ([`filters_dir`]), a free loopback
    /// port for every `PORT_*` (`PORT_ADMIN` is required), and the builder's vars.
    pub fn builder(yaml_template: &str) -> EnvoyBuilder {
        EnvoyBuilder {
            template: yaml_template.to_string(),
            vars: Vec::new(),
            concurrency: 2,
            log_level: "info".to_string(),
            args: Vec::new(),
        }
    }

    /// Starts Envoy with `yaml_template` rendered with `vars` and waits until it is ready.
    pub fn start(yaml_template: &str, vars: &[(&str, String)]) -> Result<Envoy, String> {
        vars.iter()
            .fold(Self::builder(yaml_template), |b, (n, v)| {
                b.var(n, v.clone())
            })
            .start()
    }

    /// The admin port (`{{PORT_ADMIN}}`).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The listener port (`{{PORT_LISTENER}}`).
    ///
    /// # Panics
    /// When the template has no `{{PORT_LISTENER}}`.
    pub fn listener_port(&self) -> u16 {
        self.port("PORT_LISTENER")
    }

    /// The port rendered for placeholder `name`, e.g. `PORT_LISTENER_INBOUND`.
    ///
    /// # Panics
    /// When the template has no such placeholder.
    pub fn port(&self, name: &str) -> u16 {
        match port_of(&self.ports, name) {
            Some(port) => port,
            None => panic!("the config has no {{{{{name}}}}} port"),
        }
    }

    /// The directory holding the rendered config and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The admin `/stats` text (empty when the admin endpoint does not answer).
    pub fn stats(&self) -> String {
        http_get(self.admin_port, "/stats", &[])
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// The value of counter or gauge `name` from `/stats`, if present.
    pub fn stat(&self, name: &str) -> Option<u64> {
        parse_stat(&self.stats(), name)
    }

    fn is_ready(&self) -> bool {
        http::request_with_timeout(
            "GET",
            self.admin_port,
            "/ready",
            &[],
            b"",
            Duration::from_secs(1),
        )
        .is_ok_and(|r| r.status == 200)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + patience();
        self.keep_dir = true;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(format!(
                    "envoy exited before becoming ready; log ({}):\n{}",
                    self.log_path.display(),
                    self.log()
                ));
            }
            if self.is_ready() {
                self.keep_dir = false;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "envoy not ready within {:?}; log ({}):\n{}",
                    patience(),
                    self.log_path.display(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first so Envoy shuts down cleanly; SIGKILL if it lingers.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- envoy log ({}) ----\n{}\n---- end of envoy log ----",
                self.log_path.display(),
                self.log()
            );
        } else if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts Envoy with a config it should refuse and returns its log once it exits.
///
/// # Panics
/// As [`EnvoyBuilder::start_expecting_failure`].
pub fn start_expecting_failure(yaml_template: &str, vars: &[(&str, String)]) -> String {
    vars.iter()
        .fold(Envoy::builder(yaml_template), |b, (n, v)| {
            b.var(n, v.clone())
        })
        .start_expecting_failure()
}

fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
