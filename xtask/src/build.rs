//! `cargo xtask build`: compiles every wasm filter crate (workspace members under `filters/`,
//! `examples/`, `bench/` and `integration/`) for wasm32-wasip1 into `target/filters/`, shrunk with `wasm-opt` when available,
//! then the components (`components/`, see [`crate::component`]) into `target/components/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::{cargo, display, find_on_path, is_executable, output, project_root, run, target_dir};

/// The target every filter is built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// The directories whose sub-directories hold wasm crates (`bench/`: the benchmark's bare
/// proxy-wasm filter, see `cargo xtask bench`; `integration/`: the test-only crash filter of the
/// failure-policy tests).
const WASM_CRATE_PARENTS: [&str; 4] = ["filters", "examples", "bench", "integration"];

/// The binaryen release installed with npm when no `wasm-opt` is found.
const BINARYEN_NPM: &str = "binaryen@132";

/// Wasm features rustc (1.95) emits for wasm32-wasip1 and Envoy's V8 runs. The release profile
/// strips the `target_features` section, so wasm-opt must be told, or it rejects the module
/// (`memory.copy operations require bulk memory operations`).
const WASM_OPT_FEATURES: [&str; 4] = [
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
];

/// wasm-opt's options besides the features. `-Oz` alone inlines every function that has a single
/// caller, whatever its size, which merges a module's configuration parser into a 36 KB
/// `proxy_on_configure` and its float formatting into one 14 KB function. Envoy's V8 compiles each
/// function with TurboFan when it loads a module, and the memory of compiling the largest ones
/// stays with Envoy's allocator: capping one-caller inlining at 100 bytes keeps every function
/// under 8 KB and took mesh_sidecar's RSS from +48 to +36 MiB over no filter at one worker, for
/// 0.45% more bytes and the same wasm work per request (README, "Wasm sizes").
const WASM_OPT_ARGS: [&str; 2] = ["-Oz", "--one-caller-inline-max-function-size=100"];

/// A workspace member compiled to a `.wasm` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmCrate {
    /// The package name, as given to `cargo -p`.
    pub package: String,
    /// Built in a cargo invocation of its own (`[package.metadata.meshwasm] separate-build =
    /// true`): it links other filter crates with different features, which cargo would
    /// otherwise unify with theirs.
    pub separate: bool,
}

impl WasmCrate {
    /// The artifact's file stem: the package name with `-` replaced by `_`.
    pub fn file_stem(&self) -> String {
        self.package.replace('-', "_")
    }
}

/// One built filter and its sizes.
struct Built {
    name: String,
    raw_bytes: u64,
    optimized_bytes: Option<u64>,
    path: PathBuf,
}

/// Builds every wasm crate, copies each `.wasm` to `target/filters/` and optimizes it unless
/// `optimize` is false. Optimization problems are reported, never fatal.
pub fn build(optimize: bool) -> Result<Vec<PathBuf>> {
    ensure_wasm_target()?;
    let crates = wasm_crates()?;
    if crates.is_empty() {
        println!("no wasm crates found under filters/, examples/, bench/ or integration/; nothing to build");
        return Ok(Vec::new());
    }

    let release_dir = target_dir().join(WASM_TARGET).join("release");
    let out_dir = target_dir().join("filters");
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("could not create {}: {e}", out_dir.display()))?;
    // One invocation for the crates that build together, then one per separate crate; each
    // invocation's files are copied before the next can touch them.
    let together: Vec<&WasmCrate> = crates.iter().filter(|k| !k.separate).collect();
    let mut groups: Vec<Vec<&WasmCrate>> = vec![together];
    groups.extend(crates.iter().filter(|k| k.separate).map(|k| vec![k]));
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "--target", WASM_TARGET]);
        for krate in group {
            cmd.args(["-p", &krate.package]);
        }
        run(&mut cmd)?;
        for krate in group {
            let file = format!("{}.wasm", krate.file_stem());
            let (src, dst) = (release_dir.join(&file), out_dir.join(&file));
            fs::copy(&src, &dst).map_err(|e| {
                format!("could not copy {} to {}: {e}", src.display(), dst.display())
            })?;
        }
    }

    let mut wasm_opt: Option<Option<PathBuf>> = None;
    let mut built = Vec::new();
    for krate in &crates {
        let file = format!("{}.wasm", krate.file_stem());
        let dst = out_dir.join(&file);
        let raw_bytes = file_size(&dst)?;
        let mut optimized_bytes = None;
        if optimize {
            let tool = wasm_opt.get_or_insert_with(find_or_install_wasm_opt);
            if let Some(tool) = tool {
                match optimize_in_place(tool, &dst) {
                    Ok(bytes) => optimized_bytes = Some(bytes),
                    Err(why) => println!(
                        "notice: wasm-opt failed on {file}; keeping the unoptimized file: {why}"
                    ),
                }
            }
        }
        built.push(Built {
            name: krate.file_stem(),
            raw_bytes,
            optimized_bytes,
            path: dst,
        });
    }

    print_table(&built);

    // The components (components/), with cargo-component.
    let tool = match optimize {
        true => wasm_opt
            .get_or_insert_with(find_or_install_wasm_opt)
            .clone(),
        false => None,
    };
    let component = crate::component::build(tool.as_deref())?;
    println!(
        "\ncomponent {}: {}; its core module {} raw, {} after wasm-opt -Oz",
        component.path.display(),
        human_size(component.bytes),
        human_size(component.core_bytes),
        component
            .core_optimized_bytes
            .map(human_size)
            .unwrap_or_else(|| "-".to_string()),
    );
    let mut paths: Vec<PathBuf> = built.into_iter().map(|b| b.path).collect();
    paths.push(component.path);
    Ok(paths)
}

/// Adds the wasm32-wasip1 target with rustup when `rustup target list --installed` lacks it.
/// Without rustup the target is assumed to be installed (cargo reports it otherwise).
pub fn ensure_wasm_target() -> Result<()> {
    let mut list = Command::new("rustup");
    list.args(["target", "list", "--installed"]);
    let installed = match output(&mut list) {
        Ok(stdout) => stdout,
        Err(_) if find_on_path("rustup").is_none() => {
            println!("notice: rustup not found; assuming the {WASM_TARGET} target is installed");
            return Ok(());
        }
        Err(why) => return Err(why),
    };
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// The wasm crates of the workspace, from `cargo metadata`: members with a `cdylib` target whose
/// manifest sits in a directory under `filters/`, `examples/`, `bench/` or `integration/`, sorted
/// by path.
pub fn wasm_crates() -> Result<Vec<WasmCrate>> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(project_root().join("Cargo.toml"))
        .no_deps()
        .exec()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    Ok(wasm_crates_of(&metadata))
}

fn wasm_crates_of(metadata: &cargo_metadata::Metadata) -> Vec<WasmCrate> {
    let root = metadata.workspace_root.as_std_path();
    let mut found: Vec<(PathBuf, WasmCrate)> = metadata
        .workspace_packages()
        .into_iter()
        .filter(|p| {
            p.targets
                .iter()
                .any(|t| t.kind.contains(&cargo_metadata::TargetKind::CDyLib))
        })
        .filter_map(|p| {
            let dir = p.manifest_path.parent()?.as_std_path();
            let relative = dir.strip_prefix(root).ok()?;
            let parent = relative.parent()?.to_str()?;
            WASM_CRATE_PARENTS.contains(&parent).then(|| {
                let separate = p.metadata["meshwasm"]["separate-build"].as_bool() == Some(true);
                (
                    relative.to_path_buf(),
                    WasmCrate {
                        package: p.name.to_string(),
                        separate,
                    },
                )
            })
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.into_iter().map(|(_, c)| c).collect()
}

/// `wasm-opt` on PATH, else in the tools directory ([`crate::tools_dir`]), else installed there
/// with npm (binaryen).
/// `None`, with a notice, when none can be had.
fn find_or_install_wasm_opt() -> Option<PathBuf> {
    if let Some(found) = find_on_path("wasm-opt") {
        return Some(found);
    }
    let tools = crate::tools_dir().join(BINARYEN_NPM.replace('@', "-"));
    let local = tools.join("node_modules").join(".bin").join("wasm-opt");
    if is_executable(&local) {
        return Some(local);
    }
    let Some(npm) = find_on_path("npm") else {
        println!("notice: wasm-opt not found; skipping optimization (no npm to install binaryen)");
        return None;
    };
    let mut install = Command::new(npm);
    install
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&tools)
        .arg(BINARYEN_NPM);
    println!("$ {}", display(&install));
    match output(&mut install) {
        Ok(_) if is_executable(&local) => Some(local),
        Ok(_) => {
            println!(
                "notice: wasm-opt not found; skipping optimization (npm installed no wasm-opt)"
            );
            None
        }
        Err(why) => {
            println!("notice: wasm-opt not found; skipping optimization ({why})");
            None
        }
    }
}

/// Runs `wasm-opt -Oz` ([`WASM_OPT_ARGS`]) on `wasm`, replacing it only when wasm-opt succeeds;
/// returns the new size.
pub fn optimize_in_place(wasm_opt: &Path, wasm: &Path) -> Result<u64> {
    let tmp = wasm.with_extension("opt.wasm");
    let mut cmd = Command::new(wasm_opt);
    cmd.args(WASM_OPT_ARGS)
        .args(WASM_OPT_FEATURES)
        .arg(wasm)
        .arg("-o")
        .arg(&tmp);
    let result = output(&mut cmd).and_then(|_| {
        fs::rename(&tmp, wasm).map_err(|e| format!("could not replace {}: {e}", wasm.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    file_size(wasm)
}

fn print_table(built: &[Built]) {
    let name_width = built
        .iter()
        .map(|b| b.name.len())
        .chain(["crate".len()])
        .max()
        .unwrap_or(5);
    println!();
    println!(
        "{:<name_width$}  {:>22}  {:>22}  path",
        "crate", "raw", "optimized"
    );
    for b in built {
        let optimized = b
            .optimized_bytes
            .map(human_size)
            .unwrap_or_else(|| "-".to_string());
        println!(
            "{:<name_width$}  {:>22}  {:>22}  {}",
            b.name,
            human_size(b.raw_bytes),
            optimized,
            b.path.display()
        );
    }
}

/// `123456 B (120.6 KiB)`.
fn human_size(bytes: u64) -> String {
    format!("{bytes} B ({:.1} KiB)", bytes as f64 / 1024.0)
}

pub fn file_size(path: &Path) -> Result<u64> {
    fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("could not read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_wasm_crates_and_their_build_flag_from_cargo_metadata() -> Result<()> {
        let crates = wasm_crates()?;
        let names: Vec<&str> = crates.iter().map(|c| c.package.as_str()).collect();
        for expected in [
            "trace-propagation",
            "route-retries",
            "service-metrics",
            "mesh-sidecar",
            "add-headers",
            "bare-trace",
        ] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
        // Native crates are not wasm crates, even under the same parents.
        for native in ["meshwasm", "integration", "xtask", "meshwasm-toolkit"] {
            assert!(!names.contains(&native), "{native} in {names:?}");
        }
        let separate: Vec<&str> = crates
            .iter()
            .filter(|c| c.separate)
            .map(|c| c.package.as_str())
            .collect();
        assert_eq!(separate, ["mesh-sidecar"]);
        let krate = WasmCrate {
            package: "route-retries".into(),
            separate: false,
        };
        assert_eq!(krate.file_stem(), "route_retries");
        Ok(())
    }

    #[test]
    fn sizes_read_in_bytes_and_kib() {
        assert_eq!(human_size(2048), "2048 B (2.0 KiB)");
    }
}
