//! # meshwasm
//!
//! Write an Envoy proxy-wasm HTTP filter as plain Rust: a root type built from a typed,
//! validated configuration, a per-request type with one callback per phase, and one export
//! macro. The same code runs in Envoy (wasm32, over the proxy-wasm ABI) and in
//! [`testing::TestHost`], so most of a filter is unit-tested with plain `cargo test`.
//!
//! ```
//! use meshwasm::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config { header: String, value: String }
//!
//! struct Stamp { config: Config }
//! struct StampRequest;
//!
//! impl RootFilter for Stamp {
//!     type Config = Config;
//!     type Http = StampRequest;
//!     const NAME: &'static str = "stamp";
//!     fn configure(config: Config, _host: &dyn Host) -> Result<Self, ConfigError> {
//!         check::header_name(&config.header, "header")?;
//!         Ok(Stamp { config })
//!     }
//!     fn new_http(&self, _host: &dyn Host) -> StampRequest { StampRequest }
//! }
//!
//! impl HttpFilter for StampRequest {
//!     type Root = Stamp;
//!     fn on_request_headers(&mut self, root: &Stamp, host: &dyn Host, _eos: bool) -> Action {
//!         host.set_request_header(&root.config.header, &root.config.value);
//!         Action::Continue
//!     }
//! }
//!
//! meshwasm::export_filter!(Stamp);
//!
//! // Unit test on the test host:
//! let h = meshwasm::testing::FilterHarness::<Stamp>::new(r#"{"header":"x-a","value":"1"}"#).unwrap();
//! let mut s = h.stream();
//! s.request_headers(&[(":path", "/")], true);
//! assert_eq!(s.host().request_header("x-a").as_deref(), Some("1"));
//! // Bad configurations name the field:
//! let err = meshwasm::testing::FilterHarness::<Stamp>::new(r#"{"header":"x-a","value":1}"#).err().unwrap();
//! assert_eq!(err.to_string(), "value: invalid type: integer `1`, expected a string");
//! ```
//!
//! Layers: [`filter`] (the API), [`config`] (parsing and checks), building blocks
//! ([`metrics`], [`properties`]), and [`host`] with its two implementations.

pub mod compose;
pub mod config;
pub mod filter;
pub mod host;
pub mod identity;
pub mod matching;
pub mod metrics;
pub mod properties;
pub mod testing;
pub mod trace;
pub mod wire;

/// What each host interaction costs inside Envoy: a filter author's price list, measured with
/// `cargo xtask bench --cost-model` (the text of `sdk/docs/cost-model.md`).
#[doc = include_str!("../docs/cost-model.md")]
pub mod cost_model {}

#[cfg(all(target_arch = "wasm32", feature = "proxy-wasm"))]
#[doc(hidden)]
pub mod abi;

#[cfg(all(target_arch = "wasm32", feature = "proxy-wasm"))]
#[doc(hidden)]
pub use proxy_wasm;

/// What a filter author needs, in one `use`.
pub mod prelude {
    pub use crate::config::{check, ConfigError};
    pub use crate::filter::{Action, CalloutResponse, HttpFilter, RootFilter};
    pub use crate::host::{BufferKind, HeaderSnapshot, Host, HostError, MapKind, MetricKind};
    pub use crate::metrics::{Metric, MetricFamily};
    pub use crate::properties;
}

/// Exports a [`filter::RootFilter`] as the proxy-wasm module's entry points (`_initialize`,
/// the root and HTTP contexts). Use it once per filter crate; on non-wasm targets it expands
/// to nothing, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        fn __meshwasm_start() {
            $crate::abi::start::<$filter>();
        }

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        mod __meshwasm_entry {
            $crate::proxy_wasm::main! {{
                super::__meshwasm_start();
            }}
        }
    };
}
