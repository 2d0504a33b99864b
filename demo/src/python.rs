//! The demo's Python service (`demo/python/service.py`): the same job as a Rust
//! [`crate::service::Service`], in Python, propagating the trace with the `meshwasm:propagation`
//! component (PyPI wasmtime, pinned in `components/propagation/hosts/requirements.txt` and
//! installed on first use). A child process that prints its port, learns its sidecar's outbound
//! port on stdin (and says so on stdout), and ends when stdin closes or the service is dropped.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The app language the report names for the Python service.
pub const LANGUAGE: &str = "python + meshwasm:propagation (wasmtime)";

/// The built component the service loads.
pub fn component() -> PathBuf {
    toolkit::components_dir().join("meshwasm_propagation.wasm")
}

/// A running Python service; stops when dropped.
pub struct PythonService {
    child: Child,
    /// Its stdin and stdout, for telling it its outbound port and reading that it took it.
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    port: u16,
}

impl PythonService {
    /// Starts `service.py` for `name` (calling `calls`), its stderr in `log`, and waits for the
    /// port it listens on.
    pub fn start(
        name: &str,
        calls: Option<&str>,
        work: Duration,
        log: &Path,
    ) -> Result<PythonService, String> {
        let wasm = component();
        if !wasm.is_file() {
            return Err(format!(
                "{} is missing: run `cargo xtask build` first",
                wasm.display()
            ));
        }
        let root = toolkit::workspace_root();
        let hosts = root.join("components/propagation/hosts");
        let python = toolkit::pinned::python("wasmtime-py", &hosts.join("requirements.txt"))?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let stderr = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(python);
        cmd.arg(root.join("demo/python/service.py"))
            .args(["--name", name, "--component"])
            .arg(&wasm)
            .args(["--work-ms", &format!("{}", work.as_secs_f64() * 1000.0)])
            .env("PYTHONPATH", &hosts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(next) = calls {
            cmd.args(["--calls", next]);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", toolkit::cmd::display(&cmd)))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => return Err(format!("{name}: no pipes to the Python service")),
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok());
        match (read, port) {
            (Ok(_), Some(port)) => Ok(PythonService {
                child,
                pipes: Mutex::new((stdin, stdout)),
                port,
            }),
            (read, _) => {
                let _ = child.kill();
                let _ = child.wait();
                let log_text = std::fs::read_to_string(log).unwrap_or_default();
                Err(format!(
                    "{name}: the Python service did not say its port ({read:?}, {line:?}); its log {}:\n{log_text}",
                    log.display()
                ))
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the service (tests pause it to play a busy app).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells it its sidecar's outbound listener port, where calls go from now on: returns once
    /// the service answered that it took the port, so the next request it serves calls there.
    pub fn set_outbound_port(&self, port: u16) -> Result<(), String> {
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        let (stdin, stdout) = &mut *pipes;
        let told = format!("outbound {port}");
        writeln!(stdin, "{told}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("telling the Python service its outbound port: {e}"))?;
        let mut answer = String::new();
        match stdout.read_line(&mut answer) {
            Ok(_) if answer.trim_end() == told => Ok(()),
            Ok(0) => Err("the Python service ended before taking its outbound port".to_string()),
            Ok(_) => Err(format!(
                "the Python service answered {answer:?} to `{told}`"
            )),
            Err(e) => Err(format!(
                "reading the Python service's answer to `{told}`: {e}"
            )),
        }
    }
}

impl Drop for PythonService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
