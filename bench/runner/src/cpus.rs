//! CPU placement. On two or more cores the load side (wrk and the upstream threads of this
//! process) runs on the last core and every single-worker Envoy on the others, so a scenario's
//! throughput is what Envoy's own core can do rather than its share of a core it fights wrk
//! for. Envoys with more workers get every core. With one core, or without `taskset`
//! (util-linux), nothing is pinned and the report says so.

use std::path::PathBuf;
use std::process::Command;

use toolkit::cmd;

use crate::Result;

/// Where the bench's processes run.
pub struct Cpus {
    taskset: Option<PathBuf>,
    cores: usize,
}

impl Cpus {
    /// Reads the cores this process may use (call before [`Cpus::pin_load_side`]).
    pub fn detect() -> Cpus {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let taskset = if cores >= 2 {
            cmd::find_on_path("taskset")
        } else {
            None
        };
        Cpus { taskset, cores }
    }

    /// `taskset`, when the bench pins (`detect` finds it only with two cores or more).
    fn pinning(&self) -> Option<&PathBuf> {
        self.taskset.as_ref()
    }

    /// The core list of the load side.
    fn load_cores(&self) -> String {
        (self.cores - 1).to_string()
    }

    /// The core list of an Envoy with `workers` worker threads.
    fn envoy_cores(&self, workers: u32) -> String {
        if workers == 1 {
            if self.cores == 2 {
                "0".to_string()
            } else {
                format!("0-{}", self.cores - 2)
            }
        } else {
            format!("0-{}", self.cores - 1)
        }
    }

    /// Moves every thread of this process (and so the threads and children it starts later:
    /// the upstream, wrk) to the load side's core.
    pub fn pin_load_side(&self) -> Result<()> {
        let Some(taskset) = self.pinning() else {
            return Ok(());
        };
        let mut taskset = Command::new(taskset);
        taskset
            .args(["-a", "-p", "-c", &self.load_cores()])
            .arg(std::process::id().to_string());
        cmd::output(&mut taskset).map(|_| ())
    }

    /// The command that runs an Envoy with `workers` workers on its cores (given to
    /// [`toolkit::EnvoyBuilder::wrapper`]; it `exec`s Envoy): `taskset -c <cores>`, or nothing
    /// when the bench does not pin.
    pub fn envoy_wrapper(&self, workers: u32) -> Vec<String> {
        match self.pinning() {
            Some(taskset) => vec![
                taskset.display().to_string(),
                "-c".to_string(),
                self.envoy_cores(workers),
            ],
            None => Vec::new(),
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match self.pinning() {
            Some(_) => format!(
                "single-worker Envoys on core(s) {}, wrk and the upstream on core {}, \
                 multi-worker Envoys on cores {} (`taskset`)",
                self.envoy_cores(1),
                self.load_cores(),
                self.envoy_cores(2)
            ),
            None if self.cores < 2 => "not pinned (one core)".to_string(),
            None => "not pinned (no `taskset` on PATH)".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        let two = Cpus {
            taskset: Some(PathBuf::from("/usr/bin/taskset")),
            cores: 2,
        };
        assert_eq!(two.envoy_cores(1), "0");
        assert_eq!(two.envoy_cores(2), "0-1");
        assert_eq!(two.load_cores(), "1");
        let eight = Cpus {
            taskset: Some(PathBuf::from("/usr/bin/taskset")),
            cores: 8,
        };
        assert_eq!(eight.envoy_cores(1), "0-6");
        assert_eq!(eight.load_cores(), "7");
        let one = Cpus {
            taskset: None,
            cores: 1,
        };
        assert_eq!(one.describe(), "not pinned (one core)");
        assert!(one.envoy_wrapper(1).is_empty());
        assert_eq!(two.envoy_wrapper(1), ["/usr/bin/taskset", "-c", "0"]);
        assert_eq!(two.envoy_wrapper(2), ["/usr/bin/taskset", "-c", "0-1"]);
    }
}
