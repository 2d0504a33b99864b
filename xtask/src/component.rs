//! The WebAssembly components under `components/` (today `meshwasm:propagation`): built with
//! cargo-component (installed into the tools directory when missing) into
//! `target/components/<crate>.wasm`; their hosts' tests (Python through PyPI `wasmtime`, Node
//! through npm `@bytecodealliance/jco`, both pinned in `components/<crate>/hosts/` and installed
//! under `target/tools/`) for `cargo xtask test`; and `cargo xtask component-bench`, calls per
//! second from Python.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::WASM_TARGET;
use crate::{cargo, find_on_path, project_root, run, target_dir, Result};

/// The cargo-component release installed into the tools directory (`cargo install --locked`).
pub const CARGO_COMPONENT_VERSION: &str = "0.21.1";

/// The component crate: its package name and directory.
pub const PROPAGATION: (&str, &str) = ("meshwasm-propagation", "components/propagation");

/// Where the built components go: `<target>/components` ([`toolkit::components_dir`]).
pub fn components_dir() -> PathBuf {
    toolkit::components_dir()
}

/// The built `meshwasm:propagation` component.
pub fn propagation_wasm() -> PathBuf {
    components_dir().join(format!("{}.wasm", PROPAGATION.0.replace('-', "_")))
}

/// `cargo-component` of [`CARGO_COMPONENT_VERSION`] in the tools directory
/// ([`crate::tools_dir`]), installed there from crates.io when missing.
pub fn ensure_cargo_component() -> Result<PathBuf> {
    crate::installed_crate("cargo-component", CARGO_COMPONENT_VERSION)
}

/// One built component: the component file, and its core module's size before and after
/// `wasm-opt -Oz` (binaryen optimizes core modules, not components).
pub struct BuiltComponent {
    /// `target/components/<crate>.wasm`.
    pub path: PathBuf,
    /// The component's size.
    pub bytes: u64,
    /// The core module (`cargo build`, before cargo-component adds the WIT types and the WASI
    /// adapter).
    pub core_bytes: u64,
    /// The core module after `wasm-opt -Oz`, when wasm-opt ran.
    pub core_optimized_bytes: Option<u64>,
}

/// Builds the propagation component with cargo-component, and measures its core module before
/// and after `wasm_opt` (`target/components/<crate>.core.wasm`, `.core.opt.wasm`).
pub fn build(wasm_opt: Option<&Path>) -> Result<BuiltComponent> {
    let (package, _) = PROPAGATION;
    let stem = package.replace('-', "_");
    let out = components_dir();
    fs::create_dir_all(&out).map_err(|e| format!("could not create {}: {e}", out.display()))?;
    let release = target_dir().join(WASM_TARGET).join("release");
    let copy = |from: &Path, to: &Path| {
        fs::copy(from, to)
            .map(drop)
            .map_err(|e| format!("could not copy {} to {}: {e}", from.display(), to.display()))
    };

    // The core module as rustc linked it (`deps/`: cargo-component writes its component over
    // the copy in `release/`).
    run(cargo().args(["build", "--release", "--target", WASM_TARGET, "-p", package]))?;
    let core = out.join(format!("{stem}.core.wasm"));
    copy(&release.join("deps").join(format!("{stem}.wasm")), &core)?;
    let core_optimized_bytes = match wasm_opt {
        Some(tool) => {
            let optimized = out.join(format!("{stem}.core.opt.wasm"));
            fs::copy(&core, &optimized).map_err(|e| format!("{}: {e}", optimized.display()))?;
            crate::build::optimize_in_place(tool, &optimized).ok()
        }
        None => None,
    };

    let cargo_component = ensure_cargo_component()?;
    let mut cmd = Command::new(cargo_component);
    cmd.current_dir(project_root())
        .args(["component", "build", "--release", "-p", package]);
    if let Some(cargo) = std::env::var_os("CARGO") {
        cmd.env("CARGO", cargo);
    }
    run(&mut cmd)?;
    let path = propagation_wasm();
    copy(&release.join(format!("{stem}.wasm")), &path)?;
    Ok(BuiltComponent {
        bytes: crate::build::file_size(&path)?,
        core_bytes: crate::build::file_size(&core)?,
        core_optimized_bytes,
        path,
    })
}

/// The Python of a virtualenv with the component's Python host pins installed.
fn python() -> Result<PathBuf> {
    let pins = project_root()
        .join(PROPAGATION.1)
        .join("hosts")
        .join("requirements.txt");
    toolkit::pinned::python("wasmtime-py", &pins)
}

/// The component transpiled by jco into an ES module: `<target>/components/js/propagation.js`
/// (with a `node_modules` link to the pinned npm packages, its WASI at run time).
fn transpiled() -> Result<PathBuf> {
    let npm = toolkit::pinned::npm("jco", &project_root().join(PROPAGATION.1).join("hosts"))?;
    let node = find_on_path("node").ok_or("node not found on PATH (Node.js 20 or later)")?;
    let out = components_dir().join("js");
    if out.exists() {
        fs::remove_dir_all(&out).map_err(|e| format!("could not clear {}: {e}", out.display()))?;
    }
    let jco = npm.join("node_modules/@bytecodealliance/jco/dist/jco.js");
    run(Command::new(&node)
        .arg(jco)
        .arg("transpile")
        .arg(propagation_wasm())
        .args(["--name", "propagation", "--quiet", "-o"])
        .arg(&out))?;
    std::os::unix::fs::symlink(npm.join("node_modules"), out.join("node_modules"))
        .map_err(|e| format!("could not link node_modules into {}: {e}", out.display()))?;
    Ok(out.join("propagation.js"))
}

/// Runs the shared cases (`components/propagation/cases.json`) against the built component from
/// Python (wasmtime) and from Node (jco).
pub fn test_hosts() -> Result<()> {
    let dir = project_root().join(PROPAGATION.1);
    let (hosts, cases) = (dir.join("hosts"), dir.join("cases.json"));
    run(Command::new(python()?)
        .arg(hosts.join("test_component.py"))
        .arg(propagation_wasm())
        .arg(&cases))?;
    let node = find_on_path("node").ok_or("node not found on PATH (Node.js 20 or later)")?;
    run(Command::new(node)
        .arg(hosts.join("test-component.mjs"))
        .arg(transpiled()?)
        .arg(&cases))
}

/// `cargo xtask component-bench`: calls per second of `propagate` from Python for a typical
/// request's headers (`components/propagation/hosts/bench.py`).
pub fn bench(seconds: f64) -> Result<()> {
    let wasm = propagation_wasm();
    if !wasm.is_file() {
        return Err(format!(
            "{} is missing: run `cargo xtask build` first",
            wasm.display()
        ));
    }
    let script = project_root()
        .join(PROPAGATION.1)
        .join("hosts")
        .join("bench.py");
    run(Command::new(python()?)
        .arg(script)
        .arg(&wasm)
        .arg(seconds.to_string()))
}
