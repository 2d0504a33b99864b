//! The integration tests' crate: tests under `tests/` that run the built `.wasm` filters inside
//! real Envoy processes. The harness itself is the workspace's one native toolkit
//! (`meshwasm-toolkit`); this library only gives it the names the tests use.

#![forbid(unsafe_code)]

pub use toolkit::envoy::start_expecting_failure;
pub use toolkit::template::{placeholders, render, yaml_single_quoted};
pub use toolkit::{
    assert_eventually, eventually, eventually_within, filters_dir, http_get, http_request,
    patience, wasm_path, workspace_root, Envoy, EnvoyBuilder, Response, ScratchDir,
};

/// Finding Envoy (the toolkit's finder).
pub mod envoy {
    pub use toolkit::find::{envoy_version, find_envoy, ENVOY_VERSION};
}

/// The test upstream (the toolkit's server).
pub mod upstream {
    pub use toolkit::server::{Handler, Reply, Request, Server, Upstream};
}
