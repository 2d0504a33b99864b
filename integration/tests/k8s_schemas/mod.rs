//! Schema validation of Kubernetes manifests, for tests/configs.rs. Core kinds (ConfigMap, Pod,
//! ...) go to PyPI `kubernetes-validate --strict`, Istio's custom resources (WasmPlugin,
//! EnvoyFilter, ...) to npm `@kubernetes-models/istio` through
//! `integration/k8s/validate-istio.mjs`; both are pinned in `integration/k8s/` and installed on
//! first use under `<target>/tools/` ([`toolkit::pinned`]). A document passes only when a validator passed it: one
//! that a validator rejects, or that neither has a schema for, is an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use toolkit::cmd::find_on_path;

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

/// The Python of a virtualenv with `integration/k8s/requirements.txt` installed.
fn kubernetes_validate_python() -> PathBuf {
    toolkit::pinned::python("kubernetes-validate", &pins_dir().join("requirements.txt"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A directory with `integration/k8s/package.json` installed by `npm ci` from its lock file.
fn istio_models_dir() -> PathBuf {
    toolkit::pinned::npm("k8s-models", &pins_dir()).unwrap_or_else(|e| panic!("{e}"))
}
