//! A deliberately crashing proxy-wasm filter for the failure-policy tests
//! (`integration/tests/failure_policy.rs`): it stamps `x-crash-filter: passed` on every request
//! and panics (a wasm trap: `panic = "abort"`) in `on_http_request_headers` when the request has
//! an `x-crash` header. Not a meshwasm filter and never shipped: it is written on the
//! `proxy-wasm` crate directly, so that the trap is the only thing it does.
// `proxy_wasm::main!` exports `_start` with `#[no_mangle]`.
#![allow(unsafe_code, missing_docs)]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CrashRoot) });
}}

struct CrashRoot;

impl Context for CrashRoot {}

impl RootContext for CrashRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CrashRequest))
    }
}

struct CrashRequest;

impl Context for CrashRequest {}

impl HttpContext for CrashRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        if self.get_http_request_header("x-crash").is_some() {
            panic!("crash-filter: x-crash present, trapping on purpose");
        }
        self.set_http_request_header("x-crash-filter", Some("passed"));
        Action::Continue
    }
}
