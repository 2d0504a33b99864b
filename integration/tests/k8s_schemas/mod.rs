//! Schema validation of Kubernetes manifests, for tests/configs.rs. Core kinds (ConfigMap, Pod,
//! ...) go to PyPI `kubernetes-validate --strict`, Istio's custom resources (WasmPlugin,
//! EnvoyFilter, ...) to npm `@kubernetes-models/istio` through
//! `integration/k8s/validate-istio.mjs`; both are pinned in `integration/k8s/` and installed on
//! first use under `<target>/tools/`. A document passes only when a validator passed it: one
//! that a validator rejects, or that neither has a schema for, is an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use toolkit::cmd::{find_on_path, output};

/// Validates YAML documents, each given as `(label, text)`. Returns a line per document saying
/// which validator passed it, or every problem (a rejection with the validator's reason, a
/// document no validator has a schema for), one per line, by label.
pub fn validate(docs: &[(String, String)]) -> Result<Vec<String>, String> {
    let python = kubernetes_validate_python();
    let models = istio_models_dir();
    let node = find_on_path("node").expect("node not found on PATH (Node.js 20 or later)");
    let script = toolkit::workspace_root().join("integration/k8s/validate-istio.mjs");

    let dir = scratch_dir();
    let files: Vec<PathBuf> = docs
        .iter()
        .enumerate()
        .map(|(i, (_, text))| {
            let path = dir.join(format!("{i}.yaml"));
            fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let core = run(Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&files));
    let istio = run(Command::new(node).arg(script).arg(models).args(&files));
    let _ = fs::remove_dir_all(&dir);

    // Each validator's verdict per file, from its lines `<verdict word> <file> ...`.
    let validators = [
        ("kubernetes-validate", core, ["INFO", "ERROR", "WARN"]),
        ("validate-istio.mjs", istio, ["PASS", "FAIL", "SKIP"]),
    ];
    let mut passed = Vec::new();
    let mut problems = Vec::new();
    for ((label, _), file) in docs.iter().zip(&files) {
        let (mut by, mut rejected, mut no_schema) = (Vec::new(), Vec::new(), Vec::new());
        for (name, (_, out), [pass, fail, skip]) in &validators {
            for line in out.lines() {
                let Some((word, rest)) = line.split_once(' ') else {
                    continue;
                };
                let Some(what) = rest.strip_prefix(&*file.to_string_lossy()) else {
                    continue;
                };
                let what = what.trim();
                if word == *pass {
                    by.push(format!("{name} ({what})"));
                } else if word == *fail {
                    rejected.push(format!("{label}: rejected by {name}: {what}"));
                } else if word == *skip {
                    no_schema.push(format!("{name}: {what}"));
                }
            }
        }
        if !rejected.is_empty() {
            problems.extend(rejected);
        } else if by.is_empty() && no_schema.is_empty() {
            problems.push(format!("{label}: no validator reported on it"));
        } else if by.is_empty() {
            problems.push(format!(
                "{label}: no validator has a schema for it ({})",
                no_schema.join("; ")
            ));
        } else {
            passed.push(format!("{label}: passed {}", by.join(", ")));
        }
    }
    // A validator that failed without saying which document failed has crashed.
    for (name, (ok, out), [_, fail, _]) in &validators {
        let said_why = out.lines().any(|l| l.starts_with(&format!("{fail} ")));
        if !ok && !said_why {
            problems.push(format!("{name} failed:\n{out}"));
        }
    }
    if problems.is_empty() {
        Ok(passed)
    } else {
        Err(problems.join("\n"))
    }
}

/// Runs a validator: whether it exited 0, and its stdout and stderr.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", toolkit::cmd::display(cmd)));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn pins_dir() -> PathBuf {
    toolkit::workspace_root().join("integration").join("k8s")
}

/// A fresh directory under `<target>/integration-tmp/`.
fn scratch_dir() -> PathBuf {
    let dir = toolkit::target_dir().join("integration-tmp").join(format!(
        "k8s-schemas-{}-{}",
        std::process::id(),
        nanos()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn nanos() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The Python of a virtualenv with `integration/k8s/requirements.txt` installed (run it as
/// `python -m kubernetes_validate`: the scripts in the venv's `bin/` name the temporary path it
/// was made in).
fn kubernetes_validate_python() -> PathBuf {
    let venv = installed("kubernetes-validate", &["requirements.txt"], |tmp| {
        output(Command::new("python3").args(["-m", "venv"]).arg(tmp))?;
        output(
            Command::new(tmp.join("bin").join("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(pins_dir().join("requirements.txt")),
        )
        .map(drop)
    });
    venv.join("bin").join("python")
}

/// A directory with `integration/k8s/package.json` installed by `npm ci` from its lock file.
fn istio_models_dir() -> PathBuf {
    let files = ["package.json", "package-lock.json"];
    installed("k8s-models", &files, |tmp| {
        fs::create_dir_all(tmp).map_err(|e| e.to_string())?;
        for f in files {
            fs::copy(pins_dir().join(f), tmp.join(f)).map_err(|e| format!("copying {f}: {e}"))?;
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

/// Installs in one test process one at a time (the other waits, then finds it installed).
static INSTALLING: Mutex<()> = Mutex::new(());

/// `<target>/tools/<tool>/<hash of the pin files>`, installed when missing: `install` fills a
/// temporary directory that is then renamed into place, so a half-done install is never used and
/// test processes may race (the first rename wins; the others discard their copy). A change of
/// the pins gives a new directory. Prints what it installed and how long that took.
fn installed(
    tool: &str,
    pins: &[&str],
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> PathBuf {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let mut hash = Sha256::new();
    for pin in pins {
        hash.update(fs::read(pins_dir().join(pin)).unwrap());
    }
    let hash: String = hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let parent = toolkit::target_dir().join("tools").join(tool);
    let dir = parent.join(&hash);
    if dir.is_dir() {
        return dir;
    }
    fs::create_dir_all(&parent).unwrap();
    let tmp = parent.join(format!(".tmp-{hash}-{}-{}", std::process::id(), nanos()));
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
    if let Err(e) = result {
        panic!(
            "installing {tool} from integration/k8s/{}: {e}",
            pins.join(", ")
        );
    }
    println!(
        "installed {tool} (integration/k8s/{}: {}) into {} in {:.1} s",
        pins.join(", "),
        pinned(pins[0]),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    dir
}

/// The packages a pin file names with their versions, for the install message.
fn pinned(pin: &str) -> String {
    let text = fs::read_to_string(pins_dir().join(pin)).unwrap();
    if pin.ends_with(".json") {
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let deps = json["dependencies"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let deps: Vec<String> = deps
            .iter()
            .map(|(name, v)| format!("{name}@{}", v.as_str().unwrap_or("?")))
            .collect();
        format!("{} and their locked dependencies", deps.join(" "))
    } else {
        let pins: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        pins.join(" ")
    }
}
