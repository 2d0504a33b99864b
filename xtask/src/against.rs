//! `cargo xtask bench --against REV`: builds the filters of another revision, so the bench can
//! run each chosen scenario with both builds in the same rounds (`--against-filters`).
//!
//! The revision is checked out in a git worktree under `<target>/bench/against/src` and built
//! there by its own `cargo xtask build`, into `<target>/bench/against/target`: a later run
//! against a nearby revision rebuilds only what changed.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{cargo, output, project_root, run, target_dir, Result};

/// `args` of `cargo xtask bench` with `--against REV` (or `--against=REV`) replaced by the
/// bench's `--against-filters DIR --against-label NAME`, after building REV's filters into DIR.
/// Arguments without `--against` come back as they are.
pub fn resolve(args: &[OsString]) -> Result<Vec<OsString>> {
    let Some((at, rev, width)) = find(args)? else {
        return Ok(args.to_vec());
    };
    let filters = build(&rev)?;
    let label = describe(&rev)?;
    let mut out = args[..at].to_vec();
    out.extend([
        OsString::from("--against-filters"),
        filters.into_os_string(),
        OsString::from("--against-label"),
        OsString::from(label),
    ]);
    out.extend_from_slice(&args[at + width..]);
    Ok(out)
}

/// Where `--against` is, its revision, and how many arguments it spans (1 or 2).
fn find(args: &[OsString]) -> Result<Option<(usize, String, usize)>> {
    for (i, arg) in args.iter().enumerate() {
        let arg = arg.to_string_lossy();
        if let Some(rev) = arg.strip_prefix("--against=") {
            return Ok(Some((i, rev.to_string(), 1)));
        }
        if arg == "--against" {
            let rev = args
                .get(i + 1)
                .map(|r| r.to_string_lossy().into_owned())
                .filter(|r| !r.starts_with('-'))
                .ok_or("--against needs a revision, e.g. --against HEAD~1")?;
            return Ok(Some((i, rev, 2)));
        }
    }
    Ok(None)
}

/// `REV (short hash)`, or the short hash alone when REV is one, for the report.
fn describe(rev: &str) -> Result<String> {
    let short = output(git().args(["rev-parse", "--short", &commit_of(rev)?]))?;
    let short = short.trim();
    Ok(if short.starts_with(rev) || rev.starts_with(short) {
        short.to_string()
    } else {
        format!("{rev} ({short})")
    })
}

/// The commit `rev` names, or an error that says it names none.
fn commit_of(rev: &str) -> Result<String> {
    output(git().args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")]))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("--against {rev}: not a revision of this repository: {e}"))
}

/// Checks `rev` out in the worktree and builds its filters; returns their directory.
fn build(rev: &str) -> Result<PathBuf> {
    let commit = commit_of(rev)?;
    let dir = target_dir().join("bench").join("against");
    let src = dir.join("src");
    let reuse = src.join(".git").exists()
        && output(git().arg("-C").arg(&src).args(["rev-parse", "--git-dir"])).is_ok();
    if reuse {
        run(git()
            .arg("-C")
            .arg(&src)
            .args(["checkout", "--quiet", "--force", "--detach", &commit]))?;
    } else {
        if src.exists() {
            std::fs::remove_dir_all(&src)
                .map_err(|e| format!("clearing {}: {e}", src.display()))?;
        }
        run(git().args(["worktree", "prune"]))?;
        run(git()
            .args(["worktree", "add", "--force", "--detach"])
            .arg(&src)
            .arg(&commit))?;
    }
    let build_target = dir.join("target");
    run(cargo()
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &build_target)
        .env_remove("MESHWASM_FILTERS_DIR")
        .env_remove("MESHWASM_COMPONENTS_DIR")
        .args(["xtask", "build"]))?;
    Ok(build_target.join("filters"))
}

fn git() -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    cmd.current_dir(project_root());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_the_revision_in_either_spelling() -> Result<()> {
        let args = os(&["--only", "mesh", "--against", "HEAD~2", "--rounds", "9"]);
        assert_eq!(find(&args)?, Some((2, "HEAD~2".to_string(), 2)));
        assert_eq!(
            find(&os(&["--against=main"]))?,
            Some((0, "main".to_string(), 1))
        );
        assert_eq!(find(&os(&["--only", "mesh"]))?, None);
        assert!(find(&os(&["--against"])).is_err());
        assert!(find(&os(&["--against", "--quick"])).is_err());
        Ok(())
    }

    #[test]
    fn a_name_that_is_no_revision_is_an_error_that_says_so() {
        let err = commit_of("no-such-revision-anywhere")
            .err()
            .unwrap_or_default();
        assert!(err.contains("not a revision"), "{err}");
    }
}
