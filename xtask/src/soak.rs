//! `cargo xtask soak [--requests N]`: the long soak of the reliability suite: N requests
//! (default 300 000) through a sidecar with all three filters at `--concurrency 2`, on two
//! keep-alive connections, asserting every request served, no VM failure and Envoy's memory flat
//! after warm-up. It is `integration/tests/soak_faults.rs`'s soak test with
//! `MESHWASM_SOAK_REQUESTS=N`; `cargo xtask test` runs the same test bounded at 20 000.

use crate::{build, cargo, envoy, run, target_dir, Result};

/// Requests of `cargo xtask soak` without `--requests`.
pub const DEFAULT_REQUESTS: u64 = 300_000;

/// `cargo xtask soak --requests N`.
pub fn main(requests: u64) -> Result<()> {
    build::build(true)?;
    let bin = envoy::find()?;
    let filters_dir = std::path::absolute(target_dir().join("filters"))
        .map_err(|e| format!("no absolute path for target/filters: {e}"))?;
    println!("soak: {requests} requests (MESHWASM_SOAK_REQUESTS)");
    run(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "integration",
            "--test",
            "soak_faults",
            "soak_serves_every_request_with_flat_memory",
            "--",
            "--nocapture",
        ])
        .env("MESHWASM_SOAK_REQUESTS", requests.to_string())
        .env("MESHWASM_FILTERS_DIR", &filters_dir)
        .env("ENVOY_BIN", &bin))
}
