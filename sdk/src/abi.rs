//! The only module that talks to the proxy-wasm ABI (wasm32 builds): the real [`Host`] over the
//! ABI's hostcalls, and the contexts that route Envoy's callbacks to a [`RootFilter`] and its
//! [`HttpFilter`]s. Host failures become values; nothing here panics.
//!
//! Every hostcall goes through this module's own imports (`raw`), which return every status
//! as a value: the `proxy-wasm` crate's `hostcalls` panic on any status they do not expect (for
//! example `BadArgument` when a filter touches a header map that does not exist in the current
//! phase) and unwrap host data (header names as UTF-8), and a panic kills the VM and every
//! request on its worker. Host data is decoded by the pure [`crate::wire`]. From the crate we keep
//! the dispatcher (the exported `proxy_on_*` callbacks, [`proxy_wasm::set_root_context`]), its
//! `proxy_on_memory_allocate`, and one hostcall, `proxy_http_call`: see [`WasmHost::http_call`].
// The one module allowed `unsafe`: the foreign calls and the host's memory handed back to us.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as PwAction, BufferType, ContextType, MapType, MetricType, StreamType,
};

use crate::filter::{Action, CalloutResponse, HttpFilter, RootFilter};
use crate::host::{BufferKind, Bytes, Host, HostError, MapKind, MetricKind};
use crate::wire::{self, Status};

/// The proxy-wasm ABI functions this SDK calls, imported with the signatures the `proxy-wasm`
/// crate (0.2.5) declares, except that every status and every enum is a plain `u32`: a code the
/// crate's `#[repr(u32)]` enums lack (`Unimplemented` = 12, a log level of 6 = `off`) would be
/// undefined behaviour there. Each wrapper returns `Err(Status)` for every status but `Ok`, and
/// takes back the memory the host allocated for a result (through the crate's
/// `proxy_on_memory_allocate`, a boxed `[u8]`) as a `Vec` that frees it.
mod raw {
    use std::ptr::{null, null_mut};

    use super::{Bytes, Status};

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        fn proxy_get_log_level(return_level: *mut u32) -> u32;
        fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            buffer_data: *const u8,
            buffer_size: usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        fn proxy_continue_stream(stream_type: u32) -> u32;
        fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
        fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
    }

    /// The bytes the host returned at `data` (`None` for a null pointer), owned from now on.
    ///
    /// # Safety
    /// `data` is null or was allocated by `proxy_on_memory_allocate(size)` for this result and
    /// is handed over to us (the ABI's contract for every returned buffer).
    unsafe fn take(data: *mut u8, size: usize) -> Option<Bytes> {
        if data.is_null() {
            None
        } else {
            // SAFETY: per this function's contract: a `Box<[u8]>` of `size` bytes, whose
            // layout is that of a `Vec<u8>` with capacity `size`.
            Some(unsafe { Vec::from_raw_parts(data, size, size) })
        }
    }

    /// An optional byte slice as the ABI takes it: null and 0 when absent.
    fn parts(value: Option<&[u8]>) -> (*const u8, usize) {
        value.map_or((null(), 0), |v| (v.as_ptr(), v.len()))
    }

    pub fn log(level: u32, message: &str) -> Result<(), Status> {
        // SAFETY: the message is a live slice for the duration of the call.
        Status::check(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
    }

    pub fn get_log_level() -> Result<u32, Status> {
        let mut level = 0u32;
        // SAFETY: `level` outlives the call.
        Status::check(unsafe { proxy_get_log_level(&mut level) })?;
        Ok(level)
    }

    pub fn get_current_time_nanoseconds() -> Result<u64, Status> {
        let mut nanos = 0u64;
        // SAFETY: `nanos` outlives the call.
        Status::check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
        Ok(nanos)
    }

    pub fn set_tick_period_milliseconds(period: u32) -> Result<(), Status> {
        // SAFETY: no pointers.
        Status::check(unsafe { proxy_set_tick_period_milliseconds(period) })
    }

    pub fn get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Bytes>, Status> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: the out-pointers outlive the call; the result is handed over (see `take`).
        unsafe {
            Status::check(proxy_get_buffer_bytes(
                buffer_type,
                start,
                max_size,
                &mut data,
                &mut size,
            ))?;
            Ok(take(data, size))
        }
    }

    pub fn set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), Status> {
        // SAFETY: `value` is a live slice for the duration of the call.
        Status::check(unsafe {
            proxy_set_buffer_bytes(buffer_type, start, size, value.as_ptr(), value.len())
        })
    }

    pub fn get_header_map_pairs(map_type: u32) -> Result<Option<Bytes>, Status> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: the out-pointers outlive the call; the result is handed over (see `take`).
        unsafe {
            Status::check(proxy_get_header_map_pairs(map_type, &mut data, &mut size))?;
            Ok(take(data, size))
        }
    }

    pub fn get_header_map_value(map_type: u32, key: &str) -> Result<Option<Bytes>, Status> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: `key` and the out-pointers outlive the call; the result is handed over.
        unsafe {
            Status::check(proxy_get_header_map_value(
                map_type,
                key.as_ptr(),
                key.len(),
                &mut data,
                &mut size,
            ))?;
            Ok(take(data, size))
        }
    }

    pub fn replace_header_map_value(map_type: u32, key: &str, value: &[u8]) -> Result<(), Status> {
        // SAFETY: `key` and `value` are live slices for the duration of the call.
        Status::check(unsafe {
            proxy_replace_header_map_value(
                map_type,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    pub fn add_header_map_value(map_type: u32, key: &str, value: &[u8]) -> Result<(), Status> {
        // SAFETY: `key` and `value` are live slices for the duration of the call.
        Status::check(unsafe {
            proxy_add_header_map_value(
                map_type,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    pub fn remove_header_map_value(map_type: u32, key: &str) -> Result<(), Status> {
        // SAFETY: `key` is a live slice for the duration of the call.
        Status::check(unsafe { proxy_remove_header_map_value(map_type, key.as_ptr(), key.len()) })
    }

    pub fn get_property(path: &[u8]) -> Result<Option<Bytes>, Status> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: `path` and the out-pointers outlive the call; the result is handed over.
        unsafe {
            Status::check(proxy_get_property(
                path.as_ptr(),
                path.len(),
                &mut data,
                &mut size,
            ))?;
            Ok(take(data, size))
        }
    }

    pub fn set_property(path: &[u8], value: Option<&[u8]>) -> Result<(), Status> {
        let (value_data, value_size) = parts(value);
        // SAFETY: `path` and `value` are live (or null with size 0) for the call.
        Status::check(unsafe {
            proxy_set_property(path.as_ptr(), path.len(), value_data, value_size)
        })
    }

    /// The value (`None` for a null pointer) and the CAS token (0 when the host gave none).
    pub fn get_shared_data(key: &str) -> Result<(Option<Bytes>, u32), Status> {
        let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
        // SAFETY: `key` and the out-pointers outlive the call; the result is handed over.
        unsafe {
            Status::check(proxy_get_shared_data(
                key.as_ptr(),
                key.len(),
                &mut data,
                &mut size,
                &mut cas,
            ))?;
            Ok((take(data, size), cas))
        }
    }

    pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
        // SAFETY: `key` and `value` are live slices for the duration of the call.
        Status::check(unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        })
    }

    /// Answers the downstream; `headers` in the map wire form. No details, no gRPC status (-1).
    pub fn send_local_response(
        status_code: u32,
        body: Option<&[u8]>,
        headers: &[u8],
    ) -> Result<(), Status> {
        let (body_data, body_size) = parts(body);
        // SAFETY: `body` and `headers` are live (or null with size 0) for the call.
        Status::check(unsafe {
            proxy_send_local_response(
                status_code,
                null(),
                0,
                body_data,
                body_size,
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        })
    }

    pub fn continue_stream(stream_type: u32) -> Result<(), Status> {
        // SAFETY: no pointers.
        Status::check(unsafe { proxy_continue_stream(stream_type) })
    }

    pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, Status> {
        let mut id = 0u32;
        // SAFETY: `name` and `id` outlive the call.
        Status::check(unsafe {
            proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id)
        })?;
        Ok(id)
    }

    pub fn increment_metric(metric_id: u32, offset: i64) -> Result<(), Status> {
        // SAFETY: no pointers.
        Status::check(unsafe { proxy_increment_metric(metric_id, offset) })
    }

    pub fn record_metric(metric_id: u32, value: u64) -> Result<(), Status> {
        // SAFETY: no pointers.
        Status::check(unsafe { proxy_record_metric(metric_id, value) })
    }

    pub fn get_metric(metric_id: u32) -> Result<u64, Status> {
        let mut value = 0u64;
        // SAFETY: `value` outlives the call.
        Status::check(unsafe { proxy_get_metric(metric_id, &mut value) })?;
        Ok(value)
    }
}

/// The real host: a zero-sized handle; the proxy knows the current context.
#[derive(Clone, Copy, Debug, Default)]
pub struct WasmHost;

fn map_type(map: MapKind) -> u32 {
    (match map {
        MapKind::RequestHeaders => MapType::HttpRequestHeaders,
        MapKind::RequestTrailers => MapType::HttpRequestTrailers,
        MapKind::ResponseHeaders => MapType::HttpResponseHeaders,
        MapKind::ResponseTrailers => MapType::HttpResponseTrailers,
        MapKind::CalloutResponseHeaders => MapType::HttpCallResponseHeaders,
        MapKind::CalloutResponseTrailers => MapType::HttpCallResponseTrailers,
    }) as u32
}

fn buffer_type(kind: BufferKind) -> u32 {
    (match kind {
        BufferKind::RequestBody => BufferType::HttpRequestBody,
        BufferKind::ResponseBody => BufferType::HttpResponseBody,
        BufferKind::CalloutResponseBody => BufferType::HttpCallResponseBody,
        BufferKind::PluginConfiguration => BufferType::PluginConfiguration,
        BufferKind::VmConfiguration => BufferType::VmConfiguration,
    }) as u32
}

fn metric_type(kind: MetricKind) -> u32 {
    (match kind {
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Gauge => MetricType::Gauge,
        MetricKind::Histogram => MetricType::Histogram,
    }) as u32
}

/// A status as the error a filter decides on (the names of `Other` are the statuses' names, as
/// they were with the `proxy-wasm` crate's `Status`).
fn err(status: Status) -> HostError {
    match status {
        Status::NotFound => HostError::NotFound,
        Status::BadArgument => HostError::BadArgument,
        Status::CasMismatch => HostError::CasMismatch,
        Status::Unimplemented => HostError::Unimplemented,
        other => HostError::Other(format!("{other:?}")),
    }
}

/// A status the `proxy-wasm` crate returned (never `Ok` here) as ours.
fn crate_status(status: proxy_wasm::types::Status) -> Status {
    let code = status as u32;
    Status::check(code).err().unwrap_or(Status::Unknown(code))
}

/// Logs (at debug) a failed hostcall whose failure the [`Host`] method turns into a plain value.
fn debug_failed(what: &str, target: &dyn std::fmt::Debug, status: Status) {
    log::debug!("meshwasm: {what} {target:?}: host answered {status}");
}

/// Host counters of header maps that did not come as the ABI says ([`wire::decode_map`]),
/// defined on first use: a VM that never meets one has no such stat.
struct DecodeCounters {
    lossy_names: Cell<Option<u32>>,
    malformed_maps: Cell<Option<u32>>,
}

thread_local! {
    static DECODE_COUNTERS: DecodeCounters = const {
        DecodeCounters {
            lossy_names: Cell::new(None),
            malformed_maps: Cell::new(None),
        }
    };
}

/// Adds `by` to counter `name`, defining it into `slot` on first use.
fn bump(slot: &Cell<Option<u32>>, name: &str, by: usize) {
    let id = match slot.get() {
        Some(id) => id,
        None => match raw::define_metric(MetricType::Counter as u32, name) {
            Ok(id) => {
                slot.set(Some(id));
                id
            }
            Err(_) => return,
        },
    };
    let _ = raw::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
}

impl Host for WasmHost {
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes> {
        match raw::get_header_map_value(map_type(map), name) {
            // A present header with a null pointer is an empty value.
            Ok(value) => Some(value.unwrap_or_default()),
            Err(Status::NotFound) => None,
            Err(status) => {
                debug_failed("reading header", &(map, name), status);
                None
            }
        }
    }
    fn headers(&self, map: MapKind) -> Vec<(String, Bytes)> {
        let bytes = match raw::get_header_map_pairs(map_type(map)) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                debug_failed("reading header map", &map, status);
                return Vec::new();
            }
        };
        let decoded = wire::decode_map(&bytes);
        if decoded.lossy_names > 0 || decoded.malformed {
            log::debug!(
                "meshwasm: header map {map:?}: {} name(s) not UTF-8, malformed: {}",
                decoded.lossy_names,
                decoded.malformed
            );
            DECODE_COUNTERS.with(|c| {
                if decoded.lossy_names > 0 {
                    bump(
                        &c.lossy_names,
                        wire::LOSSY_HEADER_NAMES,
                        decoded.lossy_names,
                    );
                }
                if decoded.malformed {
                    bump(&c.malformed_maps, wire::MALFORMED_HEADER_MAPS, 1);
                }
            });
        }
        decoded.pairs
    }
    fn set_header(&self, map: MapKind, name: &str, value: Option<&[u8]>) {
        let result = match value {
            Some(value) => raw::replace_header_map_value(map_type(map), name, value),
            None => raw::remove_header_map_value(map_type(map), name),
        };
        if let Err(status) = result {
            debug_failed("setting header", &(map, name), status);
        }
    }
    fn add_header(&self, map: MapKind, name: &str, value: &[u8]) {
        if let Err(status) = raw::add_header_map_value(map_type(map), name, value) {
            debug_failed("adding header", &(map, name), status);
        }
    }
    fn buffer(&self, kind: BufferKind, start: usize, max: usize) -> Option<Bytes> {
        match raw::get_buffer_bytes(buffer_type(kind), start, max) {
            Ok(bytes) => bytes,
            Err(Status::NotFound) => None,
            Err(status) => {
                debug_failed("reading buffer", &kind, status);
                None
            }
        }
    }
    fn set_buffer(
        &self,
        kind: BufferKind,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        raw::set_buffer_bytes(buffer_type(kind), start, size, value).map_err(err)
    }
    fn property(&self, path: &[&str]) -> Option<Bytes> {
        match raw::get_property(&wire::encode_path(path)) {
            Ok(bytes) => bytes,
            Err(Status::NotFound) => None,
            Err(status) => {
                debug_failed("reading property", &path, status);
                None
            }
        }
    }
    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError> {
        raw::set_property(&wire::encode_path(path), value).map_err(err)
    }
    fn now(&self) -> SystemTime {
        raw::get_current_time_nanoseconds()
            .ok()
            .and_then(|nanos| UNIX_EPOCH.checked_add(Duration::from_nanos(nanos)))
            .unwrap_or(UNIX_EPOCH)
    }
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        // Milliseconds as the ABI's u32 (a period beyond ~49 days is capped, not wrapped).
        let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        raw::set_tick_period_milliseconds(millis).map_err(err)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        raw::define_metric(metric_type(kind), name).map_err(err)
    }
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostError> {
        raw::increment_metric(id, offset).map_err(err)
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        raw::record_metric(id, value).map_err(err)
    }
    fn metric(&self, id: u32) -> Result<u64, HostError> {
        raw::get_metric(id).map_err(err)
    }
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), HostError> {
        match raw::get_shared_data(key) {
            Ok((value, cas)) => Ok((value, (cas != 0).then_some(cas))),
            Err(Status::NotFound) => Ok((None, None)),
            Err(status) => Err(err(status)),
        }
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        raw::set_shared_data(key, value, cas.unwrap_or(0)).map_err(err)
    }
    /// The one hostcall made through the `proxy-wasm` crate: its dispatcher keeps the table
    /// from callout token to context that routes the answer to `on_http_call_response` (and
    /// panics on a token it does not know), and only the crate's `dispatch_http_call` can add to
    /// it. Its panic is unreachable in Envoy: `proxy_http_call` answers `Ok`, `BadArgument`
    /// (unknown cluster, missing `:path`/`:method`/`:authority`, negative timeout) or
    /// `InternalFailure` (the async client refused), all of which the crate returns as errors,
    /// or `InvalidMemoryAccess`, which needs a pointer outside our memory and cannot come from
    /// these slices.
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        proxy_wasm::hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            Vec::new(),
            timeout,
        )
        .map_err(|status| err(crate_status(status)))
    }
    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError> {
        let headers = wire::encode_map(headers).ok_or(HostError::BadArgument)?;
        raw::send_local_response(status, body, &headers).map_err(err)
    }
    fn resume_request(&self) -> Result<(), HostError> {
        raw::continue_stream(StreamType::HttpRequest as u32).map_err(err)
    }
    fn resume_response(&self) -> Result<(), HostError> {
        raw::continue_stream(StreamType::HttpResponse as u32).map_err(err)
    }
}

/// Log levels as the ABI numbers them (`proxy_log`, `proxy_get_log_level`).
mod level {
    pub const TRACE: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
    pub const CRITICAL: u32 = 5;
}

/// The `log` crate's records, written with `proxy_log`; a failed write is dropped.
struct HostLog;

static HOST_LOG: HostLog = HostLog;

impl log::Log for HostLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => level::TRACE,
            log::Level::Debug => level::DEBUG,
            log::Level::Info => level::INFO,
            log::Level::Warn => level::WARN,
            log::Level::Error => level::ERROR,
        };
        let _ = raw::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Envoy's log level (its `wasm` logger) as a filter for `log`: `critical` and `off` (5, 6)
/// and codes this SDK does not know turn `log` off, as `critical` did with the crate's logger.
fn level_filter(code: u32) -> log::LevelFilter {
    match code {
        level::TRACE => log::LevelFilter::Trace,
        level::DEBUG => log::LevelFilter::Debug,
        level::INFO => log::LevelFilter::Info,
        level::WARN => log::LevelFilter::Warn,
        level::ERROR => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}

/// Registers `F` as the root context factory. Called by [`crate::export_filter!`].
pub fn start<F: RootFilter>() {
    // Envoy refuses host calls such as get_log_level inside `_initialize`
    // ("restricted_callback"): start at info, then follow Envoy's level in on_vm_start. Neither
    // the logger nor the panic hook makes a hostcall before it is used.
    if log::set_logger(&HOST_LOG).is_ok() {
        std::panic::set_hook(Box::new(|info| {
            // What a panic looks like in Envoy's log: `panicked at <file>:<line>: <message>`.
            let _ = raw::log(level::CRITICAL, &info.to_string());
        }));
    }
    log::set_max_level(log::LevelFilter::Info);
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
        if let Ok(code) = raw::get_log_level() {
            log::set_max_level(level_filter(code));
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
