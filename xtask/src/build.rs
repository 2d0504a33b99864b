//! `cargo xtask build`: compiles every wasm filter crate (workspace members under `filters/`,
//! `examples/`, `bench/` and `integration/`) for wasm32-wasip1 into `target/filters/`, shrunk with `wasm-opt` when available.

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

/// `cargo xtask build [--no-opt]`.
pub fn main(args: &[String]) -> Result<()> {
    let mut optimize = true;
    for arg in args {
        match arg.as_str() {
            "--no-opt" => optimize = false,
            other => return Err(format!("unknown option for `build`: {other}")),
        }
    }
    build(optimize).map(|_| ())
}

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
    Ok(built.into_iter().map(|b| b.path).collect())
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

/// The wasm crates of the workspace: directories under `filters/`, `examples/`, `bench/` and
/// `integration/` with a Cargo.toml that the root manifest lists as a member, sorted by path.
pub fn wasm_crates() -> Result<Vec<WasmCrate>> {
    let root = project_root();
    let manifest = read(&root.join("Cargo.toml"))?;
    let members = workspace_members(&manifest);
    let mut crates = Vec::new();
    for parent in WASM_CRATE_PARENTS {
        let Ok(entries) = fs::read_dir(root.join(parent)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|dir| dir.join("Cargo.toml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let Some(dir_name) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let relative = format!("{parent}/{dir_name}");
            if !is_member(&relative, &members) {
                continue;
            }
            let crate_manifest = dir.join("Cargo.toml");
            let text = read(&crate_manifest)?;
            let package = package_name(&text)
                .ok_or_else(|| format!("no [package] name in {}", crate_manifest.display()))?;
            crates.push(WasmCrate {
                package,
                separate: separate_build(&text),
            });
        }
    }
    Ok(crates)
}

/// The strings of `members = [...]` in the `[workspace]` table of a root Cargo.toml.
fn workspace_members(manifest: &str) -> Vec<String> {
    let mut in_workspace = false;
    let mut collecting = false;
    let mut list = String::new();
    for line in manifest.lines() {
        let line = strip_comment(line).trim();
        if !collecting && line.starts_with('[') {
            in_workspace = line == "[workspace]";
            continue;
        }
        if in_workspace && !collecting {
            if let Some(value) = key_value(line, "members") {
                collecting = true;
                list.push_str(value);
            }
        } else if collecting {
            list.push_str(line);
        }
        if collecting && list.contains(']') {
            break;
        }
    }
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(|m| m.trim_end_matches('/').to_string())
        .collect()
}

/// Whether `relative` (like `filters/foo`) matches a member entry, literally or as `dir/*`.
fn is_member(relative: &str, members: &[String]) -> bool {
    members.iter().any(|member| {
        member == relative
            || member.strip_suffix("/*").is_some_and(|prefix| {
                relative
                    .rsplit_once('/')
                    .is_some_and(|(parent, _)| parent == prefix)
            })
    })
}

/// The `name` of the `[package]` table of a Cargo.toml.
/// Whether a manifest sets `separate-build = true` under `[package.metadata.meshwasm]`.
fn separate_build(manifest: &str) -> bool {
    let mut in_table = false;
    for line in manifest.lines() {
        let line = strip_comment(line).trim();
        if line.starts_with('[') {
            in_table = line == "[package.metadata.meshwasm]";
        } else if in_table && key_value(line, "separate-build").map(str::trim) == Some("true") {
            return true;
        }
    }
    false
}

fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = strip_comment(line).trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(value) = key_value(line, "name") {
                return Some(value.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

/// The text after `key =` on a TOML line, if the line sets `key`.
fn key_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (left, right) = line.split_once('=')?;
    (left.trim() == key).then_some(right.trim())
}

/// The line without a trailing `# comment` (a `#` inside a string is kept).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `wasm-opt` on PATH, else in `target/tools/`, else installed there with npm (binaryen).
/// `None`, with a notice, when none can be had.
fn find_or_install_wasm_opt() -> Option<PathBuf> {
    if let Some(found) = find_on_path("wasm-opt") {
        return Some(found);
    }
    let tools = target_dir().join("tools");
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

/// Runs `wasm-opt -Oz` on `wasm`, replacing it only when wasm-opt succeeds; returns the new size.
fn optimize_in_place(wasm_opt: &Path, wasm: &Path) -> Result<u64> {
    let tmp = wasm.with_extension("opt.wasm");
    let mut cmd = Command::new(wasm_opt);
    cmd.arg("-Oz")
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

fn file_size(path: &Path) -> Result<u64> {
    fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("could not read {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = r#"
[workspace]
resolver = "2"
members = [
    "sdk",
    "examples/add-headers", # the first example
    "filters/*",
]

[workspace.package]
name = "not-a-member"
"#;

    #[test]
    fn parses_members_across_lines_and_comments() {
        assert_eq!(
            workspace_members(ROOT),
            ["sdk", "examples/add-headers", "filters/*"]
        );
        assert_eq!(
            workspace_members("[workspace]\nmembers = [\"a\", \"b/\"]\n"),
            ["a", "b"]
        );
    }

    #[test]
    fn matches_literal_and_glob_members() {
        let members = workspace_members(ROOT);
        assert!(is_member("examples/add-headers", &members));
        assert!(is_member("filters/route-retries", &members));
        assert!(!is_member("examples/k8s", &members));
        assert!(!is_member("filters/a/b", &members));
    }

    #[test]
    fn reads_the_package_name_only() {
        let manifest = "[package]\nname = \"route-retries\" # filter\nversion = \"1\"\n\
                        [lib]\nname = \"other\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("route-retries"));
        assert_eq!(package_name("[lib]\nname = \"x\"\n"), None);
        let krate = WasmCrate {
            package: "route-retries".into(),
            separate: false,
        };
        assert_eq!(krate.file_stem(), "route_retries");
    }

    #[test]
    fn reads_the_separate_build_flag_in_its_table_only() {
        let yes = "[package]
name = \"m\"
[package.metadata.meshwasm]
separate-build = true # own run
";
        assert!(separate_build(yes));
        assert!(!separate_build(
            "[package]
name = \"m\"
"
        ));
        assert!(!separate_build(
            "[features]
separate-build = true
"
        ));
        assert!(!separate_build(
            "[package.metadata.meshwasm]
separate-build = false
"
        ));
    }

    #[test]
    fn sizes_read_in_bytes_and_kib() {
        assert_eq!(human_size(2048), "2048 B (2.0 KiB)");
    }
}
