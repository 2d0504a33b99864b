//! `cargo xtask deny`: `cargo deny` over the workspace with `deny.toml`, installing cargo-deny
//! into the tools directory (`~/.cargo/meshwasm-tools/`) when missing. Licenses, bans (duplicate versions, wildcards) and sources
//! need no network and always run; advisories need the RustSec database (a git repository on
//! GitHub): it runs when the database can be fetched or a copy is already in
//! `$CARGO_HOME/advisory-dbs/`, and is otherwise reported as skipped, with the reason.

use std::path::PathBuf;
use std::process::Command;

use crate::{display, project_root, run, Result};

/// The cargo-deny release installed into the tools directory (`~/.cargo/meshwasm-tools/`) (`cargo install --locked`).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// The checks that work offline.
pub const OFFLINE_CHECKS: [&str; 3] = ["licenses", "bans", "sources"];

/// What the advisories check came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advisories {
    /// Ran against the database and passed.
    Passed,
    /// Could not run: the reason.
    Skipped(String),
}

/// Runs the offline checks (failing on any finding), then advisories.
pub fn check_all(offline: bool) -> Result<Advisories> {
    let bin = ensure_cargo_deny()?;
    run(deny_cmd(&bin, false).arg("check").args(OFFLINE_CHECKS))?;
    let advisories = check_advisories(&bin, offline)?;
    match &advisories {
        Advisories::Passed => println!("cargo deny: advisories ok"),
        Advisories::Skipped(why) => println!("notice: cargo deny advisories skipped: {why}"),
    }
    Ok(advisories)
}

fn deny_cmd(bin: &PathBuf, offline: bool) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(project_root());
    if offline {
        cmd.arg("--offline");
    }
    cmd.arg("--manifest-path")
        .arg(project_root().join("Cargo.toml"))
        .arg("--config")
        .arg(project_root().join("deny.toml"));
    cmd
}

/// Advisories: fails on a finding; a database that can neither be fetched nor found on disk is
/// a skip, not a pass.
fn check_advisories(bin: &PathBuf, offline: bool) -> Result<Advisories> {
    let have_db = advisory_db_on_disk();
    if offline && !have_db {
        return Ok(Advisories::Skipped(
            "--offline and no advisory database in $CARGO_HOME/advisory-dbs".to_string(),
        ));
    }
    let mut cmd = deny_cmd(bin, offline || !can_reach_github());
    cmd.args(["check", "advisories"]);
    if !offline && !have_db && !can_reach_github() {
        return Ok(Advisories::Skipped(
            "the RustSec advisory database (https://github.com/RustSec/advisory-db) cannot be \
             fetched from this machine (github.com unreachable) and no copy is in \
             $CARGO_HOME/advisory-dbs"
                .to_string(),
        ));
    }
    println!("$ {}", display(&cmd));
    let out = cmd
        .output()
        .map_err(|e| format!("could not start `{}`: {e}", display(&cmd)))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    if out.status.success() {
        return Ok(Advisories::Passed);
    }
    if stderr.contains("failed to fetch advisory database")
        || stderr.contains("failed to open advisory database")
    {
        return Ok(Advisories::Skipped(format!(
            "the advisory database could not be fetched or opened: {}",
            stderr
                .lines()
                .find(|l| l.contains("advisory database"))
                .unwrap_or_default()
                .trim()
        )));
    }
    Err(format!("`{}` failed ({})", display(&cmd), out.status))
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Whether cargo-deny's default advisory database has been cloned before.
fn advisory_db_on_disk() -> bool {
    let Some(dir) = cargo_home().map(|h| h.join("advisory-dbs")) else {
        return false;
    };
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.path().join(".git").exists() || e.path().join("crates").is_dir())
    })
}

/// Whether github.com resolves and accepts a TCP connection on 443 within 3 s.
fn can_reach_github() -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(mut addrs) = ("github.com", 443).to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| TcpStream::connect_timeout(&a, std::time::Duration::from_secs(3)).is_ok())
}

/// `cargo-deny` of [`CARGO_DENY_VERSION`] in the tools directory ([`crate::tools_dir`]),
/// installed there with `cargo install --locked` (from crates.io) when missing.
pub fn ensure_cargo_deny() -> Result<PathBuf> {
    crate::installed_crate("cargo-deny", CARGO_DENY_VERSION)
}
