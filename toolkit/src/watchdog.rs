//! A guard process that stops our Envoys when this process dies without stopping them (killed,
//! interrupted, a test binary that aborts): a `sh` reading the process ids to watch on its stdin,
//! which acts when that pipe closes, i.e. when we are gone, whatever the way.
//!
//! Envoys run in process groups of their own (so a Ctrl-C meant for us does not reach them
//! half-way through a test), which is why this is needed at all. One watchdog serves the whole
//! process; it is started on first use.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// `+<pid>` watches the process group led by `pid`, `-<pid>` forgets it. On end of input it
/// sends SIGTERM to every group still watched whose leader is still an `envoy`, then SIGKILL two
/// seconds later. It ignores SIGINT and SIGHUP so that it outlives the Ctrl-C that ended us.
const SCRIPT: &str = r#"trap '' INT HUP
pids=' '
while read -r line; do
  case "$line" in
    +*) pids="$pids${line#+} " ;;
    -*) pids=$(printf '%s' "$pids" | sed "s/ ${line#-} / /") ;;
  esac
done
alive() { grep -q envoy "/proc/$1/cmdline" 2>/dev/null; }
for p in $pids; do alive "$p" && kill -TERM "-$p" 2>/dev/null; done
sleep 2
for p in $pids; do alive "$p" && kill -KILL "-$p" 2>/dev/null; done
exit 0"#;

struct Watchdog {
    // Kept so the child is not reaped early; the pipe is what matters.
    _child: Child,
    stdin: ChildStdin,
}

fn global() -> &'static Mutex<Option<Watchdog>> {
    static GLOBAL: OnceLock<Mutex<Option<Watchdog>>> = OnceLock::new();
    GLOBAL.get_or_init(|| Mutex::new(None))
}

fn start() -> Result<Watchdog, String> {
    let mut child = Command::new("sh")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start the Envoy watchdog (sh): {e}"))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| "the Envoy watchdog has no stdin".to_string())?;
    Ok(Watchdog {
        _child: child,
        stdin,
    })
}

fn send(line: &str) -> Result<(), String> {
    let mut guard = global().lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(start()?);
    }
    let Some(dog) = guard.as_mut() else {
        return Err("no Envoy watchdog".to_string());
    };
    writeln!(dog.stdin, "{line}")
        .and_then(|()| dog.stdin.flush())
        .map_err(|e| format!("could not tell the Envoy watchdog `{line}`: {e}"))
}

/// Stops the process group led by `pid` if this process ends before [`forget`] is called.
pub fn watch(pid: u32) -> Result<(), String> {
    send(&format!("+{pid}"))
}

/// The group led by `pid` was stopped cleanly: the watchdog no longer touches it (its pid may be
/// reused).
pub fn forget(pid: u32) {
    let _ = send(&format!("-{pid}"));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    /// A `sleep` whose command line says `envoy`, in a process group of its own, as Envoy runs.
    fn fake_envoy() -> Child {
        let mut cmd = Command::new("sleep");
        cmd.arg0("envoy-fake").arg("60").process_group(0);
        cmd.spawn().unwrap()
    }

    #[test]
    fn stops_the_watched_groups_when_its_input_closes() {
        let mut watched = fake_envoy();
        let mut forgotten = fake_envoy();
        let mut dog = start().unwrap();
        writeln!(dog.stdin, "+{}", watched.id()).unwrap();
        writeln!(dog.stdin, "+{}", forgotten.id()).unwrap();
        writeln!(dog.stdin, "-{}", forgotten.id()).unwrap();
        // What happens when this process dies: the pipe closes.
        let Watchdog { mut _child, stdin } = dog;
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(10);
        while watched.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = _child.wait();
        assert!(
            watched.try_wait().unwrap().is_some(),
            "the watched group is still running"
        );
        assert!(
            forgotten.try_wait().unwrap().is_none(),
            "a forgotten group was stopped"
        );
        let _ = forgotten.kill();
        let _ = forgotten.wait();
    }

    #[test]
    fn watches_and_forgets() {
        // Our own pid is not an envoy: it would never be signalled anyway.
        watch(std::process::id()).unwrap();
        forget(std::process::id());
    }
}
