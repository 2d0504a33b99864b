//! The only module that talks to the proxy-wasm ABI (wasm32 builds): the real [`Host`] over
//! the `proxy-wasm` crate's hostcalls, and the contexts that route Envoy's callbacks to a
//! [`RootFilter`] and its [`HttpFilter`]s. Host failures become values; nothing here panics.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as PwAction, BufferType, ContextType, LogLevel, MapType, MetricType, Status,
};

use crate::filter::{Action, CalloutResponse, HttpFilter, RootFilter};
use crate::host::{BufferKind, Bytes, Host, HostError, MapKind, MetricKind};

/// The real host: a zero-sized handle; the proxy knows the current context.
#[derive(Clone, Copy, Debug, Default)]
pub struct WasmHost;

fn map_type(map: MapKind) -> MapType {
    match map {
        MapKind::RequestHeaders => MapType::HttpRequestHeaders,
        MapKind::RequestTrailers => MapType::HttpRequestTrailers,
        MapKind::ResponseHeaders => MapType::HttpResponseHeaders,
        MapKind::ResponseTrailers => MapType::HttpResponseTrailers,
        MapKind::CalloutResponseHeaders => MapType::HttpCallResponseHeaders,
        MapKind::CalloutResponseTrailers => MapType::HttpCallResponseTrailers,
    }
}

fn buffer_type(kind: BufferKind) -> BufferType {
    match kind {
        BufferKind::RequestBody => BufferType::HttpRequestBody,
        BufferKind::ResponseBody => BufferType::HttpResponseBody,
        BufferKind::CalloutResponseBody => BufferType::HttpCallResponseBody,
        BufferKind::PluginConfiguration => BufferType::PluginConfiguration,
        BufferKind::VmConfiguration => BufferType::VmConfiguration,
    }
}

fn err(status: Status) -> HostError {
    match status {
        Status::NotFound => HostError::NotFound,
        Status::BadArgument => HostError::BadArgument,
        Status::CasMismatch => HostError::CasMismatch,
        other => HostError::Other(format!("{other:?}")),
    }
}

impl Host for WasmHost {
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes> {
        hostcalls::get_map_value_bytes(map_type(map), name)
            .ok()
            .flatten()
    }
    fn headers(&self, map: MapKind) -> Vec<(String, Bytes)> {
        hostcalls::get_map_bytes(map_type(map)).unwrap_or_default()
    }
    fn set_header(&self, map: MapKind, name: &str, value: Option<&[u8]>) {
        let _ = hostcalls::set_map_value_bytes(map_type(map), name, value);
    }
    fn add_header(&self, map: MapKind, name: &str, value: &[u8]) {
        let _ = hostcalls::add_map_value_bytes(map_type(map), name, value);
    }
    fn buffer(&self, kind: BufferKind, start: usize, max: usize) -> Option<Bytes> {
        hostcalls::get_buffer(buffer_type(kind), start, max)
            .ok()
            .flatten()
    }
    fn set_buffer(
        &self,
        kind: BufferKind,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        hostcalls::set_buffer(buffer_type(kind), start, size, value).map_err(err)
    }
    fn property(&self, path: &[&str]) -> Option<Bytes> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError> {
        hostcalls::set_property(path.to_vec(), value).map_err(err)
    }
    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
    }
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        hostcalls::set_tick_period(period).map_err(err)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(t, name).map_err(err)
    }
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostError> {
        hostcalls::increment_metric(id, offset).map_err(err)
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        hostcalls::record_metric(id, value).map_err(err)
    }
    fn metric(&self, id: u32) -> Result<u64, HostError> {
        hostcalls::get_metric(id).map_err(err)
    }
    fn shared_data(&self, key: &str) -> (Option<Bytes>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(err)
    }
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, Vec::new(), timeout)
            .map_err(err)
    }
    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError> {
        hostcalls::send_http_response(status, headers.to_vec(), body).map_err(err)
    }
    fn resume_request(&self) -> Result<(), HostError> {
        hostcalls::resume_http_request().map_err(err)
    }
    fn resume_response(&self) -> Result<(), HostError> {
        hostcalls::resume_http_response().map_err(err)
    }
}

/// Registers `F` as the root context factory. Called by [`crate::export_filter!`].
pub fn start<F: RootFilter>() {
    // Envoy refuses host calls such as get_log_level inside `_initialize`
    // ("restricted_callback"): start at info, then follow Envoy's level in on_vm_start.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root::<F> { root: None })
    });
}

struct Root<F: RootFilter> {
    root: Option<Rc<F>>,
}

impl<F: RootFilter> Context for Root<F> {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _t: usize) {
        let Some(root) = &self.root else { return };
        let host = WasmHost;
        let headers = host.headers(MapKind::CalloutResponseHeaders);
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
        let body = if body_size > 0 {
            host.buffer(BufferKind::CalloutResponseBody, 0, body_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        root.on_callout_response(
            &host,
            CalloutResponse {
                token,
                status,
                headers,
                body,
            },
        );
    }
}

impl<F: RootFilter> RootContext for Root<F> {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let host = WasmHost;
        let bytes = host
            .buffer(BufferKind::PluginConfiguration, 0, usize::MAX)
            .unwrap_or_default();
        match crate::filter::configure::<F>(&bytes, &host) {
            Ok(root) => {
                let period = root.tick_period().unwrap_or(Duration::ZERO);
                if let Err(e) = host.set_tick_period(period) {
                    log::warn!("{}: cannot set tick period: {e}", F::NAME);
                }
                self.root = Some(Rc::new(root));
                log::info!("{}: configured", F::NAME);
                true
            }
            Err(e) => {
                log::error!("{}: invalid configuration: {e}", F::NAME);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(root) = &self.root {
            root.on_tick(&WasmHost);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let inner = self.root.as_ref().map(|root| {
            let filter = root.new_http(&WasmHost);
            (Rc::clone(root), filter)
        });
        Some(Box::new(Http::<F> { inner }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A stream context. Without a configured root (never expected) it passes everything through.
struct Http<F: RootFilter> {
    inner: Option<(Rc<F>, F::Http)>,
}

fn action(a: Action) -> PwAction {
    match a {
        Action::Continue => PwAction::Continue,
        Action::Pause => PwAction::Pause,
    }
}

impl<F: RootFilter> Http<F> {
    fn run(&mut self, f: impl FnOnce(&mut F::Http, &F, &WasmHost) -> Action) -> PwAction {
        match &mut self.inner {
            Some((root, filter)) => action(f(filter, root, &WasmHost)),
            None => PwAction::Continue,
        }
    }
}

impl<F: RootFilter> Context for Http<F> {}

impl<F: RootFilter> HttpContext for Http<F> {
    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> PwAction {
        self.run(|f, r, h| f.on_request_headers(r, h, eos))
    }
    fn on_http_request_body(&mut self, size: usize, eos: bool) -> PwAction {
        self.run(|f, r, h| f.on_request_body(r, h, size, eos))
    }
    fn on_http_request_trailers(&mut self, _n: usize) -> PwAction {
        self.run(|f, r, h| f.on_request_trailers(r, h))
    }
    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> PwAction {
        self.run(|f, r, h| f.on_response_headers(r, h, eos))
    }
    fn on_http_response_body(&mut self, size: usize, eos: bool) -> PwAction {
        self.run(|f, r, h| f.on_response_body(r, h, size, eos))
    }
    fn on_http_response_trailers(&mut self, _n: usize) -> PwAction {
        self.run(|f, r, h| f.on_response_trailers(r, h))
    }
    fn on_log(&mut self) {
        if let Some((root, filter)) = &mut self.inner {
            filter.on_log(root, &WasmHost);
        }
    }
}
