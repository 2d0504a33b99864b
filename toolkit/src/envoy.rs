//! An Envoy process started from a config template, on ports the kernel chose.
//!
//! Every `{{PORT_<NAME>}}` placeholder the caller does not set must be the port of a listener or
//! of the admin: it is rendered as `0`, Envoy binds a free port for it, and the real ports are
//! read back from Envoy itself (`--admin-address-path` for the admin, then admin
//! `/listeners?format=json`). A port is therefore never picked here and bound later by someone
//! else. Ports of *other* processes (an upstream, another Envoy) are set by the caller once those
//! are up and hold their sockets.
//!
//! Envoy runs in its own process group, registered with the [`crate::watchdog`]; dropping an
//! [`Envoy`] stops the group (SIGTERM, then SIGKILL) and reaps it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_norway::Value;

use crate::http::{self, Response};
use crate::template;

/// What a `{{PORT_<NAME>}}` placeholder left to Envoy turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRole {
    Admin,
    Listener(String),
}

/// Starts an Envoy from a config template; see [`Envoy::builder`].
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    template: String,
    vars: Vec<(String, String)>,
    concurrency: u32,
    log_level: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    name: String,
    dir: Option<PathBuf>,
    bin: Option<PathBuf>,
    wrapper: Vec<String>,
    patience: Option<Duration>,
}

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// A fresh directory `<target>/envoy-runs/<pid>-<n>-<nanos>`.
fn unique_dir() -> Result<PathBuf, String> {
    let n = INSTANCES.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = crate::target_dir()
        .join("envoy-runs")
        .join(format!("{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

impl EnvoyBuilder {
    /// Sets placeholder `{{name}}` to `value`.
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.retain(|(n, _)| n != name);
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

    /// An environment variable for Envoy.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// A name for messages, e.g. `orders-1` (default `envoy`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Where `envoy.yaml`, `envoy.log` and the admin address file go (created; kept after the
    /// process ends). Default: a fresh directory under `target/envoy-runs/`, removed when the
    /// Envoy is dropped unless something failed.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// The Envoy binary (default: [`crate::find::find_envoy`]).
    pub fn bin(mut self, bin: &Path) -> Self {
        self.bin = Some(bin.to_path_buf());
        self
    }

    /// A command that runs Envoy, e.g. `["taskset", "-c", "1"]`: it must `exec` Envoy so that
    /// the process id stays Envoy's.
    pub fn wrapper(mut self, command: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.wrapper = command.into_iter().map(Into::into).collect();
        self
    }

    /// How long [`EnvoyBuilder::start`] waits for `/ready` (default [`crate::patience`]).
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = Some(patience);
        self
    }

    /// Renders the config, starts Envoy and waits until it is ready and its ports are known.
    ///
    /// Fails with Envoy's log when it exits or is not ready within the patience.
    pub fn start(self) -> Result<Envoy, String> {
        let patience = self.patience.unwrap_or_else(crate::patience);
        let mut envoy = self.spawn()?;
        envoy.wait_ready(patience)?;
        Ok(envoy)
    }

    /// Starts Envoy with a config it should refuse and returns its log once it exits.
    ///
    /// Envoy refuses a bad static config (including a wasm plugin whose `on_configure` returns
    /// false) by logging the error and exiting with status 1 before `/ready` answers.
    ///
    /// # Panics
    /// When Envoy becomes ready, exits with status 0, or has neither exited nor become ready
    /// within the patience.
    pub fn start_expecting_failure(self) -> String {
        let patience = self.patience.unwrap_or_else(crate::patience);
        let mut envoy = match self.spawn() {
            Ok(envoy) => envoy,
            Err(e) => panic!("could not start envoy: {e}"),
        };
        let deadline = Instant::now() + patience;
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
                panic!("envoy neither exited nor became ready within {patience:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Renders the config and starts Envoy without waiting: see [`Envoy::wait_ready`]. For
    /// starting several Envoys side by side.
    pub fn spawn(mut self) -> Result<Envoy, String> {
        let bin = match &self.bin {
            Some(bin) => bin.clone(),
            None => crate::find::find_envoy()?,
        };
        let (dir, remove_dir) = match &self.dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                (dir.clone(), false)
            }
            None => (unique_dir()?, true),
        };
        if !self.vars.iter().any(|(n, _)| n == "FILTERS_DIR") {
            let value = crate::filters_dir().display().to_string();
            self.vars.push(("FILTERS_DIR".to_string(), value));
        }
        let roles = port_roles(&self.template, &self.vars)?;
        for (placeholder, _) in &roles {
            self.vars.push((placeholder.clone(), "0".to_string()));
        }
        let config = template::render(&self.template, &self.vars)?;
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, &config)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        let _ = fs::remove_file(&admin_path);
        let log =
            File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cloning {}: {e}", log_path.display()))?;
        let level = std::env::var("MESHWASM_ENVOY_LOG_LEVEL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or(self.log_level);
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &self.concurrency.to_string()])
            // No hot restart: no shared memory or domain socket to collide on or leave behind.
            .arg("--disable-hot-restart")
            .args(["--log-level", &level])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // A group of its own: a Ctrl-C meant for us does not stop it mid-test, and stopping the
        // group stops whatever it started.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let envoy = Envoy {
            child,
            name: self.name,
            dir,
            log_path,
            admin_path,
            admin_port: 0,
            roles,
            listeners: Vec::new(),
            remove_dir,
            keep_dir: true,
            stopped: false,
        };
        crate::watchdog::watch(envoy.pid())?;
        Ok(envoy)
    }
}

/// Finds what each `{{PORT_*}}` placeholder without a value stands for: the admin's port or a
/// listener's. Any other use (a cluster endpoint, a URL) needs a value from the caller.
fn port_roles(
    template_text: &str,
    vars: &[(String, String)],
) -> Result<Vec<(String, PortRole)>, String> {
    let open: Vec<String> = template::placeholders(template_text)
        .into_iter()
        .filter(|p| p.starts_with("PORT_") && !vars.iter().any(|(n, _)| n == p))
        .collect();
    if open.is_empty() {
        return Ok(Vec::new());
    }
    // Render with a distinct out-of-range number per open placeholder, then look for them.
    const SENTINEL: u64 = 7_000_000_000;
    let mut probe_vars: Vec<(String, String)> = vars.to_vec();
    for (i, p) in open.iter().enumerate() {
        probe_vars.push((p.clone(), (SENTINEL + i as u64).to_string()));
    }
    // Any other placeholder gets a harmless value: only the structure matters here.
    for p in template::placeholders(template_text) {
        if !probe_vars.iter().any(|(n, _)| *n == p) {
            probe_vars.push((p, "x".to_string()));
        }
    }
    let probe = template::render(template_text, &probe_vars)?;
    let doc: Value = serde_norway::from_str(&probe)
        .map_err(|e| format!("the config template is not YAML: {e}"))?;
    let port_of = |v: &Value| -> Option<u64> {
        v.get("address")?
            .get("socket_address")?
            .get("port_value")?
            .as_u64()
    };
    let mut found: Vec<(u64, PortRole)> = Vec::new();
    if let Some(port) = doc.get("admin").and_then(port_of) {
        found.push((port, PortRole::Admin));
    }
    let listeners = doc
        .get("static_resources")
        .and_then(|s| s.get("listeners"))
        .and_then(Value::as_sequence);
    for listener in listeners.into_iter().flatten() {
        if let (Some(port), Some(name)) = (
            port_of(listener),
            listener.get("name").and_then(Value::as_str),
        ) {
            found.push((port, PortRole::Listener(name.to_string())));
        }
    }
    open.iter()
        .enumerate()
        .map(|(i, p)| {
            let sentinel = SENTINEL + i as u64;
            let roles: Vec<&PortRole> = found
                .iter()
                .filter(|(port, _)| *port == sentinel)
                .map(|(_, r)| r)
                .collect();
            let uses = probe.matches(&sentinel.to_string()).count();
            let comment_uses = probe
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .map(|l| l.matches(&sentinel.to_string()).count())
                .sum::<usize>();
            match roles.as_slice() {
                [role] if uses - comment_uses == 1 => Ok((p.clone(), (*role).clone())),
                _ => Err(format!(
                    "{{{{{p}}}}} has no value and is not (only) the port of one listener or of \
                     the admin: Envoy can bind those on port 0, anything else needs a port that \
                     something already holds; set it with .var(\"{p}\", ...)"
                )),
            }
        })
        .collect()
}

/// A running Envoy process; its process group is stopped and reaped on drop (also when the
/// test panics, in which case its log is printed to stderr). Its temporary directory (rendered
/// config and log) is removed on drop unless the test panicked or Envoy failed to start.
pub struct Envoy {
    child: Child,
    name: String,
    dir: PathBuf,
    log_path: PathBuf,
    admin_path: PathBuf,
    admin_port: u16,
    roles: Vec<(String, PortRole)>,
    listeners: Vec<(String, u16)>,
    /// The directory is ours (made under `target/envoy-runs/`).
    remove_dir: bool,
    /// Keep the directory after drop: set until Envoy was ready.
    keep_dir: bool,
    stopped: bool,
}

impl Envoy {
    /// A builder for an Envoy running `yaml_template`.
    ///
    /// Placeholders `{{NAME}}` are rendered from: the builder's vars; `FILTERS_DIR`
    /// ([`crate::filters_dir`]) when not set; `0` for every `PORT_*` left, each of which must be
    /// the port of a listener or of the admin (see the module docs).
    pub fn builder(yaml_template: &str) -> EnvoyBuilder {
        EnvoyBuilder {
            template: yaml_template.to_string(),
            vars: Vec::new(),
            concurrency: 2,
            log_level: "info".to_string(),
            args: Vec::new(),
            env: Vec::new(),
            name: "envoy".to_string(),
            dir: None,
            bin: None,
            wrapper: Vec::new(),
            patience: None,
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

    /// Waits until its admin `/ready` answers 200 and reads its ports; fails with the end of its
    /// log when it exits or `patience` runs out.
    pub fn wait_ready(&mut self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(format!(
                    "envoy {} exited before becoming ready; log ({}):\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(60)
                ));
            }
            if self.is_ready() {
                self.refresh_listeners()?;
                self.keep_dir = false;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "envoy {} not ready within {patience:?}; log ({}):\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn read_admin_port(&mut self) -> Option<u16> {
        if self.admin_port == 0 {
            let text = fs::read_to_string(&self.admin_path).ok()?;
            let addr: std::net::SocketAddr = text.trim().parse().ok()?;
            self.admin_port = addr.port();
        }
        Some(self.admin_port)
    }

    fn is_ready(&mut self) -> bool {
        let Some(port) = self.read_admin_port() else {
            return false;
        };
        http::request("GET", port, "/ready", &[], b"", Duration::from_secs(1))
            .is_ok_and(|r| r.status == 200)
    }

    /// Reads the listeners' bound ports from admin `/listeners?format=json` (again: after an
    /// LDS update, for instance).
    pub fn refresh_listeners(&mut self) -> Result<(), String> {
        let resp = self.admin_get("/listeners?format=json")?;
        if resp.status != 200 {
            return Err(format!(
                "envoy {}: /listeners answered {}: {}",
                self.name, resp.status, resp.body
            ));
        }
        self.listeners = parse_listeners(&resp.body)?;
        Ok(())
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The listener port of `{{PORT_LISTENER}}`.
    ///
    /// # Panics
    /// When the template has no such listener.
    pub fn listener_port(&self) -> u16 {
        self.port("PORT_LISTENER")
    }

    /// The port Envoy bound for placeholder `name`, e.g. `PORT_INBOUND`.
    ///
    /// # Panics
    /// When `name` was not a placeholder left to Envoy.
    pub fn port(&self, name: &str) -> u16 {
        match self.try_port(name) {
            Some(port) => port,
            None => panic!(
                "envoy {}: no port for {{{{{name}}}}} (listeners: {:?})",
                self.name, self.listeners
            ),
        }
    }

    /// The port Envoy bound for placeholder `name`, if it was left to Envoy.
    pub fn try_port(&self, name: &str) -> Option<u16> {
        match &self.roles.iter().find(|(p, _)| p == name)?.1 {
            PortRole::Admin => Some(self.admin_port),
            PortRole::Listener(listener) => self.listener(listener),
        }
    }

    /// The port listener `name` is bound to (as of the last refresh).
    pub fn listener(&self, name: &str) -> Option<u16> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
    }

    /// Every listener and its port (as of the last refresh).
    pub fn listeners(&self) -> &[(String, u16)] {
        &self.listeners
    }

    /// Its name for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the rendered config and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET <path>` on its admin endpoint (5 s timeout).
    pub fn admin_get(&self, path: &str) -> Result<Response, String> {
        self.admin("GET", path)
    }

    /// `POST <path>` on its admin endpoint (5 s timeout), e.g. `/runtime_modify?a=b`.
    pub fn admin_post(&self, path: &str) -> Result<Response, String> {
        self.admin("POST", path)
    }

    fn admin(&self, method: &str, path: &str) -> Result<Response, String> {
        if self.admin_port == 0 {
            return Err(format!(
                "envoy {}: its admin port is not known yet",
                self.name
            ));
        }
        http::request(
            method,
            self.admin_port,
            path,
            &[],
            b"",
            Duration::from_secs(5),
        )
    }

    /// The admin `/stats` text (empty when the admin endpoint does not answer).
    pub fn stats(&self) -> String {
        self.admin_get("/stats").map(|r| r.body).unwrap_or_default()
    }

    /// The value of counter or gauge `name` from `/stats`, if present.
    pub fn stat(&self, name: &str) -> Option<u64> {
        crate::prom::envoy_stat(&self.stats(), name)
    }

    /// Its `/stats/prometheus` text.
    pub fn prometheus(&self) -> Result<String, String> {
        let resp = self.admin_get("/stats/prometheus")?;
        if resp.status == 200 {
            Ok(resp.body)
        } else {
            Err(format!(
                "envoy {}: /stats/prometheus answered {}",
                self.name, resp.status
            ))
        }
    }

    /// Resident memory (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.pid());
        let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no VmRSS in {path}"))
    }

    /// CPU time the process has used so far (user + system, all threads), from
    /// `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Result<Duration, String> {
        let path = format!("/proc/{}/stat", self.pid());
        let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        cpu_time_of_stat(&text).ok_or_else(|| format!("no utime/stime in {path}"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it: SIGTERM to its process group, SIGKILL after 3 s; reaps it. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        let group = Pid::from_raw(self.child.id() as i32);
        if self.is_running() {
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of the group (Envoy itself if it lingered).
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        crate::watchdog::forget(self.child.id());
        self.stopped = true;
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- envoy {} log ({}) ----\n{}\n---- end of envoy log ----",
                self.name,
                self.log_path.display(),
                self.log()
            );
        } else if self.remove_dir && !self.keep_dir {
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

/// Listener names and ports from admin `/listeners?format=json`.
fn parse_listeners(json: &str) -> Result<Vec<(String, u16)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("/listeners is not JSON: {e}"))?;
    let statuses = v
        .get("listener_statuses")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(statuses
        .iter()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_string();
            let port = s
                .get("local_address")?
                .get("socket_address")?
                .get("port_value")?
                .as_u64()?;
            Some((name, u16::try_from(port).ok()?))
        })
        .collect())
}

/// utime + stime (fields 14 and 15, in clock ticks of 1/100 s on Linux) of a `/proc/<pid>/stat`
/// line. The command name (field 2) may hold spaces and parentheses: fields are counted after its
/// closing `)`.
fn cpu_time_of_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
# admin {{PORT_ADMIN}} in a comment does not count
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: {{PORT_ADMIN}} } }
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: 127.0.0.1, port_value: {{PORT_OUTBOUND}} } }
  - name: inbound
    address:
      socket_address: { address: 127.0.0.1, port_value: {{ PORT_INBOUND }} }
  clusters:
  - name: app
    load_assignment: { endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{PORT_APP}} } } } } ] } ] }
"#;

    #[test]
    fn finds_which_placeholders_envoy_binds() {
        let vars = vec![("PORT_APP".to_string(), "8080".to_string())];
        let roles = port_roles(TEMPLATE, &vars).unwrap();
        assert_eq!(
            roles,
            vec![
                ("PORT_ADMIN".to_string(), PortRole::Admin),
                (
                    "PORT_OUTBOUND".to_string(),
                    PortRole::Listener("outbound".to_string())
                ),
                (
                    "PORT_INBOUND".to_string(),
                    PortRole::Listener("inbound".to_string())
                ),
            ]
        );
    }

    #[test]
    fn a_cluster_port_needs_a_value() {
        let err = port_roles(TEMPLATE, &[]).unwrap_err();
        assert!(err.contains("{{PORT_APP}}"), "{err}");
    }

    #[test]
    fn a_listener_port_used_elsewhere_too_needs_a_value() {
        let t = TEMPLATE.replace("{{PORT_APP}}", "{{PORT_INBOUND}}");
        let err = port_roles(&t, &[]).unwrap_err();
        assert!(err.contains("{{PORT_INBOUND}}"), "{err}");
    }

    #[test]
    fn parses_listeners() {
        let json = r#"{"listener_statuses":[{"name":"outbound","local_address":{"socket_address":{"address":"127.0.0.1","port_value":40123}}},{"name":"x"}]}"#;
        assert_eq!(
            parse_listeners(json).unwrap(),
            vec![("outbound".to_string(), 40123)]
        );
        assert!(parse_listeners("nope").is_err());
    }

    #[test]
    fn reads_cpu_time_from_proc_stat() {
        let stat =
            "1234 (envoy (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_time_of_stat(stat), Some(Duration::from_millis(3000)));
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_time_of_stat(&own).is_some());
    }
}
