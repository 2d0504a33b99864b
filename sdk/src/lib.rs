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

pub mod batch;
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

/// What a filter author needs, in one `use`.
pub mod prelude {
    pub use crate::batch::PropertyBatch;
    pub use crate::config::{check, ConfigError};
    pub use crate::filter::{Action, CalloutResponse, HttpFilter, Phases, RootFilter};
    pub use crate::host::{BufferKind, HeaderSnapshot, Host, HostError, MapKind, MetricKind};
    pub use crate::metrics::{Labels, Metric, MetricFamily};
    pub use crate::properties;
}

/// Exports a [`filter::RootFilter`] as the proxy-wasm module's entry points: `_initialize`, the
/// root callbacks (context creation, VM start, configure, tick, callout answers, delete), the
/// allocator Envoy uses for the values it returns, and one `proxy_on_*` callback per HTTP phase.
/// Use it once per filter crate; on non-wasm targets it expands to nothing, so the crate still
/// builds and tests natively.
///
/// `export_filter!(MyFilter)` exports every phase. A filter that implements only some declares
/// them in [`filter::HttpFilter::PHASES`] and lists the same ones here, so that Envoy skips the
/// others (each call into the VM costs CPU on every request); the two lists are checked against
/// each other at compile time:
///
/// ```ignore
/// meshwasm::export_filter!(MyFilter, phases: [request_headers, response_headers, log]);
/// ```
///
/// The phase names are `request_headers`, `request_body`, `request_trailers`,
/// `response_headers`, `response_body`, `response_trailers` and `log`.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        $crate::export_filter!(
            $filter,
            phases: [
                request_headers,
                request_body,
                request_trailers,
                response_headers,
                response_body,
                response_trailers,
                log
            ]
        );
    };
    ($filter:ty, phases: [$($phase:ident),* $(,)?]) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __MeshwasmFilter = $filter;

        const _: () = assert!(
            <<$filter as $crate::filter::RootFilter>::Http as $crate::filter::HttpFilter>::PHASES
                .bits()
                == $crate::filter::Phases::NONE
                    $(.with($crate::export_filter!(@bit $phase)))*
                    .bits(),
            "export_filter!: the phases listed must be exactly HttpFilter::PHASES"
        );

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __meshwasm_entry {
            type F = super::__MeshwasmFilter;

            std::thread_local! {
                static DISPATCH: $crate::abi::Dispatcher<F> = $crate::abi::Dispatcher::default();
            }

            #[cfg(target_os = "wasi")]
            extern "C" {
                fn __wasm_call_ctors();
            }

            #[no_mangle]
            pub extern "C" fn _initialize() {
                // SAFETY: the linker's constructors, run once, first, as a reactor must.
                #[cfg(target_os = "wasi")]
                unsafe {
                    __wasm_call_ctors();
                }
                $crate::abi::start();
            }

            #[no_mangle]
            pub extern "C" fn proxy_abi_version_0_2_1() {}

            #[no_mangle]
            pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
                $crate::abi::memory_allocate(size)
            }

            #[no_mangle]
            pub extern "C" fn proxy_on_context_create(id: u32, parent: u32) {
                DISPATCH.with(|d| d.context_create(id, parent))
            }

            #[no_mangle]
            pub extern "C" fn proxy_on_vm_start(_id: u32, _size: usize) -> u32 {
                DISPATCH.with(|d| d.vm_start())
            }

            #[no_mangle]
            pub extern "C" fn proxy_on_configure(id: u32, _size: usize) -> u32 {
                DISPATCH.with(|d| d.configure(id))
            }

            #[no_mangle]
            pub extern "C" fn proxy_on_tick(id: u32) {
                DISPATCH.with(|d| d.tick(id))
            }

            #[no_mangle]
            pub extern "C" fn proxy_on_http_call_response(
                id: u32,
                token: u32,
                _headers: usize,
                body_size: usize,
                _trailers: usize,
            ) {
                DISPATCH.with(|d| d.callout_response(id, token, body_size))
            }

            #[no_mangle]
            pub extern "C" fn proxy_on_delete(id: u32) {
                DISPATCH.with(|d| d.delete(id))
            }

            $($crate::export_filter!(@export $phase);)*
        }
    };
    (@bit request_headers) => { $crate::filter::Phases::REQUEST_HEADERS };
    (@bit request_body) => { $crate::filter::Phases::REQUEST_BODY };
    (@bit request_trailers) => { $crate::filter::Phases::REQUEST_TRAILERS };
    (@bit response_headers) => { $crate::filter::Phases::RESPONSE_HEADERS };
    (@bit response_body) => { $crate::filter::Phases::RESPONSE_BODY };
    (@bit response_trailers) => { $crate::filter::Phases::RESPONSE_TRAILERS };
    (@bit log) => { $crate::filter::Phases::LOG };
    (@export request_headers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_headers(id: u32, _n: usize, eos: u32) -> u32 {
            use $crate::filter::HttpFilter as _;
            DISPATCH.with(|d| d.phase(id, |f, r, h| f.on_request_headers(r, h, eos != 0)))
        }
    };
    (@export request_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_body(id: u32, size: usize, eos: u32) -> u32 {
            use $crate::filter::HttpFilter as _;
            DISPATCH.with(|d| d.phase(id, |f, r, h| f.on_request_body(r, h, size, eos != 0)))
        }
    };
    (@export request_trailers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_trailers(id: u32, _n: usize) -> u32 {
            use $crate::filter::HttpFilter as _;
            DISPATCH.with(|d| d.phase(id, |f, r, h| f.on_request_trailers(r, h)))
        }
    };
    (@export response_headers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_headers(id: u32, _n: usize, eos: u32) -> u32 {
            use $crate::filter::HttpFilter as _;
            DISPATCH.with(|d| d.phase(id, |f, r, h| f.on_response_headers(r, h, eos != 0)))
        }
    };
    (@export response_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_body(id: u32, size: usize, eos: u32) -> u32 {
            use $crate::filter::HttpFilter as _;
            DISPATCH.with(|d| d.phase(id, |f, r, h| f.on_response_body(r, h, size, eos != 0)))
        }
    };
    (@export response_trailers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_trailers(id: u32, _n: usize) -> u32 {
            use $crate::filter::HttpFilter as _;
            DISPATCH.with(|d| d.phase(id, |f, r, h| f.on_response_trailers(r, h)))
        }
    };
    (@export log) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_log(id: u32) {
            DISPATCH.with(|d| d.log(id))
        }
    };
}
