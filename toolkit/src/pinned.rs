//! Python and npm packages pinned in files of the repository (a `requirements.txt`, a
//! `package.json` with its `package-lock.json`), installed on first use into
//! `<target>/tools/<name>/<hash of the pin files>/`: a change of the pins gives a new directory,
//! and an install fills a temporary directory that is renamed into place, so a half-done install
//! is never used and processes may race (the first rename wins, the others discard their copy).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::cmd::{find_on_path, output};

/// A virtualenv with `requirements` installed by pip; returns its Python (run tools as
/// `python -m <module>`: the scripts in the venv's `bin/` name the temporary path it was made in).
pub fn python(name: &str, requirements: &Path) -> Result<PathBuf, String> {
    let venv = installed(name, &[requirements], |tmp| {
        output(Command::new("python3").args(["-m", "venv"]).arg(tmp))?;
        output(
            Command::new(tmp.join("bin").join("python"))
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .arg("-r")
                .arg(requirements),
        )
        .map(drop)
    })?;
    Ok(venv.join("bin").join("python"))
}

/// A directory with the `package.json` and `package-lock.json` of `pins_dir` installed by
/// `npm ci` (its `node_modules/`, and `node_modules/.bin/` for the packages' commands).
pub fn npm(name: &str, pins_dir: &Path) -> Result<PathBuf, String> {
    let files = [
        pins_dir.join("package.json"),
        pins_dir.join("package-lock.json"),
    ];
    let pins: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    installed(name, &pins, |tmp| {
        fs::create_dir_all(tmp).map_err(|e| e.to_string())?;
        for file in &files {
            let to = tmp.join(file.file_name().unwrap_or_default());
            fs::copy(file, to).map_err(|e| format!("copying {}: {e}", file.display()))?;
        }
        let npm = find_on_path("npm").ok_or("npm not found on PATH")?;
        output(
            Command::new(npm)
                .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .args(["--loglevel", "error"])
                .current_dir(tmp),
        )
        .map(drop)
    })
}

/// Installs in one process one at a time (the other waits, then finds it installed).
static INSTALLING: Mutex<()> = Mutex::new(());

/// `<target>/tools/<name>/<hash of pins>`, filled by `install` when missing. Prints what it
/// installed and how long that took.
pub fn installed(
    name: &str,
    pins: &[&Path],
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let mut hash = Sha256::new();
    for pin in pins {
        hash.update(fs::read(pin).map_err(|e| format!("{}: {e}", pin.display()))?);
    }
    let hash: String = hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let parent = crate::target_dir().join("tools").join(name);
    let dir = parent.join(&hash);
    if dir.is_dir() {
        return Ok(dir);
    }
    fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(".tmp-{hash}-{}-{nanos}", std::process::id()));
    let started = Instant::now();
    let result = install(&tmp).and_then(|()| match fs::rename(&tmp, &dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(format!(
            "renaming {} to {}: {e}",
            tmp.display(),
            dir.display()
        )),
    });
    let _ = fs::remove_dir_all(&tmp);
    let names: Vec<String> = pins.iter().map(|p| p.display().to_string()).collect();
    result.map_err(|e| format!("installing {name} from {}: {e}", names.join(", ")))?;
    println!(
        "installed {name} ({}) into {} in {:.1} s",
        names.join(", "),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}
