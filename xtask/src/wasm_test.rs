//! The wasm unit tier: builds the SDK for wasm32-unknown-unknown and runs
//! `sdk/tests/wasm_codecs.rs` under node with wasm-bindgen-test, installing what it needs
//! (the rustup target, and `wasm-bindgen-test-runner` into the tools directory (`~/.cargo/meshwasm-tools/`) at exactly the
//! `wasm-bindgen` version in Cargo.lock) when it is missing.
//!
//! Self-contained (plain `std::process`, cargo through `$CARGO`), so it is wired into the task
//! runner with `mod wasm_test;` and a call to [`run`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the wasm unit tests run on (wasm-bindgen needs `unknown-unknown`, not WASI).
pub const TARGET: &str = "wasm32-unknown-unknown";

/// Cargo's runner variable for [`TARGET`].
const RUNNER_ENV: &str = "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER";

/// The test crate target this tier runs.
const TEST_NAME: &str = "wasm_codecs";

/// A node module named `env` for the test runner's generated JavaScript. The SDK depends on
/// the `proxy-wasm` crate on wasm32, whose exported `proxy_on_*` entry points keep its host
/// functions (`env.proxy_*`) imported by every wasm32 binary that links the SDK, the test
/// binary included. Node has no `env` module, so instantiation fails before any test runs.
/// These stubs satisfy the imports; the codecs under test never call the host, and a stub
/// that is called anyway fails the test loudly.
const ENV_STUB: &str = r#"// Written by `cargo xtask` (xtask/src/wasm_test.rs): stand-ins for the proxy-wasm host
// functions that wasm32 builds of the meshwasm SDK import from "env". Pure-code wasm unit
// tests never call them; if one does, it throws.
'use strict';
module.exports = new Proxy({}, {
  get(_target, name) {
    if (typeof name !== 'string' || !name.startsWith('proxy_')) {
      return undefined;
    }
    return function () {
      throw new Error('proxy-wasm host call `' + name + '` is not available in wasm unit tests');
    };
  },
});
"#;

/// Runs the wasm unit tier from the workspace at `root`: ensures the target, the runner and
/// node, builds the SDK library for [`TARGET`], then runs the tests with their output (the
/// `test result:` lines) on stdout. Fails when any step or any test fails.
pub fn run(root: &Path) -> Result<(), String> {
    ensure_target(root)?;
    let version = locked_wasm_bindgen_version(root)?;
    let tools = crate::tools_dir().join(format!("wasm-bindgen-{version}"));
    let runner = ensure_runner(root, &tools, &version)?;
    ensure_node()?;
    let node_path = write_env_stub(&tools)?;

    // The SDK itself (with its wasm32-only proxy-wasm dependency) must build for this target.
    crate::run(cargo(root).args(["build", "-p", "meshwasm", "--lib", "--target", TARGET]))?;

    let mut test = cargo(root);
    test.args([
        "test", "-p", "meshwasm", "--target", TARGET, "--test", TEST_NAME,
    ])
    .env(RUNNER_ENV, &runner)
    .env("NODE_PATH", node_path);
    crate::run(&mut test)
}

/// A `Command` for `$CARGO` (else `cargo` on PATH), started in `root`.
fn cargo(root: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root);
    cmd
}

/// Runs `cmd` quietly: `Some(stdout)` when it started and succeeded.
fn quiet_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds [`TARGET`] with rustup when it is not installed. Without rustup, assumes the toolchain
/// has it (the build step below then says otherwise).
fn ensure_target(root: &Path) -> Result<(), String> {
    let mut list = Command::new("rustup");
    list.args(["target", "list", "--installed"])
        .current_dir(root);
    match quiet_output(&mut list) {
        Some(installed) if installed.lines().any(|l| l.trim() == TARGET) => Ok(()),
        Some(_) => crate::run(
            Command::new("rustup")
                .args(["target", "add", TARGET])
                .current_dir(root),
        ),
        None => {
            println!("notice: rustup not found; assuming the {TARGET} target is installed");
            Ok(())
        }
    }
}

/// The version of the `wasm-bindgen` package in `root/Cargo.lock`.
fn locked_wasm_bindgen_version(root: &Path) -> Result<String, String> {
    let path = root.join("Cargo.lock");
    let lock = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    lock_package_version(&lock, "wasm-bindgen").ok_or_else(|| {
        format!(
            "{} has no `wasm-bindgen` package: is `wasm-bindgen-test` still a wasm32 \
             dev-dependency of sdk/?",
            path.display()
        )
    })
}

/// The `version` of the `[[package]]` named `name` in Cargo.lock text.
fn lock_package_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line != wanted {
            continue;
        }
        for field in lines.by_ref() {
            if field.is_empty() || field.starts_with('[') {
                break;
            }
            if let Some(rest) = field.strip_prefix("version = ") {
                return Some(rest.trim_matches('"').to_string());
            }
        }
    }
    None
}

/// The version `runner --version` reports (`wasm-bindgen-test-runner 0.2.x`), if it runs.
fn runner_version(runner: &Path) -> Option<String> {
    let out = quiet_output(Command::new(runner).arg("--version"))?;
    out.split_whitespace().last().map(str::to_string)
}

/// `tools/bin/wasm-bindgen-test-runner` at exactly `version`, installing wasm-bindgen-cli
/// there when it is missing or another version.
fn ensure_runner(root: &Path, tools: &Path, version: &str) -> Result<PathBuf, String> {
    let runner = tools.join("bin").join("wasm-bindgen-test-runner");
    if runner_version(&runner).as_deref() == Some(version) {
        return Ok(runner);
    }
    println!(
        "installing wasm-bindgen-cli {version} into {} (takes a few minutes)",
        tools.display()
    );
    let install = |locked: bool| {
        let mut cmd = cargo(root);
        cmd.arg("install");
        if locked {
            cmd.arg("--locked");
        }
        cmd.arg("--root")
            .arg(tools)
            .args(["wasm-bindgen-cli", "--version", version]);
        crate::run(&mut cmd)
    };
    if let Err(e) = install(true) {
        // wasm-bindgen-cli's own lockfile can pin a dependency version that the registry index
        // this machine sees does not have yet; resolving afresh still gives the same CLI.
        println!("notice: {e}; retrying without --locked");
        install(false)?;
    }
    match runner_version(&runner) {
        Some(v) if v == version => Ok(runner),
        other => Err(format!(
            "{} reports version {other:?} after installing {version}",
            runner.display()
        )),
    }
}

/// Fails with a hint unless `node` runs (wasm-bindgen-test-runner executes the tests in it).
fn ensure_node() -> Result<(), String> {
    match quiet_output(Command::new("node").arg("--version")) {
        Some(v) => {
            println!("node {}", v.trim());
            Ok(())
        }
        None => Err(
            "`node` not found on PATH: the wasm unit tests run under node \
                     (Debian: `apt-get install nodejs`)"
                .to_string(),
        ),
    }
}

/// Writes [`ENV_STUB`] as `tools/node-env/env/index.js`; returns `NODE_PATH` with that
/// directory first.
fn write_env_stub(tools: &Path) -> Result<OsString, String> {
    let dir = tools.join("node-env");
    let module = dir.join("env");
    std::fs::create_dir_all(&module)
        .map_err(|e| format!("cannot create {}: {e}", module.display()))?;
    let file = module.join("index.js");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(ENV_STUB) {
        std::fs::write(&file, ENV_STUB)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    let mut paths = vec![dir];
    if let Some(existing) = std::env::var_os("NODE_PATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).map_err(|e| format!("cannot build NODE_PATH: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_locked_version() {
        let lock = r#"
[[package]]
name = "wasm-bindgen-macro"
version = "0.2.1"

[[package]]
name = "wasm-bindgen"
version = "0.2.130"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;
        assert_eq!(
            lock_package_version(lock, "wasm-bindgen").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(lock_package_version(lock, "wasm-bindgen-test"), None);
    }
}
