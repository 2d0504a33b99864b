//! Test helpers for filters, so that they are unit-tested with plain `cargo test`: an in-process
//! emulation of what Envoy gives a filter, a harness that drives a filter through it, a host that
//! counts hostcalls, and log capture.
//!
//! The parts live in private submodules, re-exported here: `host` ([`TestHost`]: headers, bodies,
//! trailers, properties, metrics, shared data with compare-and-swap across "workers", time and
//! ticks, HTTP callouts with scripted answers), `harness` ([`FilterHarness`] and [`HttpStream`]:
//! configure a filter, run requests, ticks and callout answers), `counting` ([`CountingHost`]:
//! records each hostcall a filter makes, for benchmarks and hot-path tests) and `logs` (the
//! per-thread log capture every [`TestHost`] installs).

mod counting;
mod harness;
mod host;
mod logs;

pub use counting::{CountingHost, HostCall};
pub use harness::{FilterHarness, HttpStream};
pub use host::{Callout, LocalResponse, MetricValue, TestHost, TEST_EPOCH_SECS};
pub use logs::{captured_logs, clear_logs, init_logging};
