//! Process helpers for the native tools (xtask, the bench, the Envoy finder): run a command
//! (echoed, stdio inherited), capture its output, show it in messages, find a program on `PATH`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors are messages that name the command.
pub type Result<T> = std::result::Result<T, String>;

/// The command line of `cmd`, for messages: `program arg arg`.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio after echoing it; an error names the command and its status.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("could not start `{}`: {e}", display(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", display(cmd)))
    }
}

/// Runs `cmd` and returns its stdout; an error names the command and carries its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not start `{}`: {e}", display(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}):\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// The first executable file called `name` in a `$PATH` directory.
pub fn find_on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name.as_ref()))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file with an execute bit set.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_shows_commands() -> Result<()> {
        let mut echo = Command::new("echo");
        echo.args(["a", "b"]);
        assert_eq!(display(&echo), "echo a b");
        assert_eq!(output(&mut echo)?, "a b\n");
        assert!(output(&mut Command::new("false")).is_err());
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-program-here").is_none());
        Ok(())
    }
}
