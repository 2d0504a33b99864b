//! The only module that talks to the proxy-wasm ABI (wasm32 builds): the real [`Host`] over the
//! ABI's hostcalls, and the contexts that route Envoy's callbacks to a [`RootFilter`] and its
//! [`HttpFilter`]s. Host failures become values; nothing here panics.
//!
//! Every hostcall goes through this module's own imports (`raw`), which return every status
//! as a value: the `proxy-wasm` crate's `hostcalls` panic on any status they do not expect (for
//! example `BadArgument` when a filter touches a header map that does not exist in the current
//! phase) and unwrap host data (header names as UTF-8), and a panic kills the VM and every
//! request on its worker. Host data is decoded by the pure [`crate::wire`].
//!
//! The callbacks Envoy makes into the module are ours too: [`Dispatcher`] routes them to a
//! [`RootFilter`] and its [`HttpFilter`]s, and [`crate::export_filter!`] exports only the
//! phases a filter declares ([`HttpFilter::PHASES`]): Envoy skips a phase whose callback is not
//! exported, and each call it makes costs CPU on every request. No `proxy-wasm` crate code is
//! left in a filter: its dispatcher exported every phase, and panicked on a context or callout
//! token it did not know.
// The one module allowed `unsafe`: the foreign calls and the host's memory handed back to us.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::filter::{Action, CalloutResponse, HttpFilter, RootFilter};
use crate::host::{BufferKind, Bytes, HeaderSnapshot, Host, HostError, MapKind, MetricKind};
use crate::wire::{self, Status};

/// The proxy-wasm ABI 0.2.1 functions this SDK calls. Every status and every enum is a plain
/// `u32`: a code an enum would lack (`Unimplemented` = 12, a log level of 6 = `off`) must not be
/// undefined behaviour. Each wrapper returns `Err(Status)` for every status but `Ok`, and takes
/// back the memory the host allocated for a result (through [`memory_allocate`], a `Vec` of
/// exactly that capacity) as a `Vec` that frees it.
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
        fn proxy_http_call(
            upstream_data: *const u8,
            upstream_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            body_data: *const u8,
            body_size: usize,
            trailers_data: *const u8,
            trailers_size: usize,
            timeout_milliseconds: u32,
            return_token: *mut u32,
        ) -> u32;
        fn proxy_call_foreign_function(
            function_name_data: *const u8,
            function_name_size: usize,
            arguments_data: *const u8,
            arguments_size: usize,
            results_data: *mut *mut u8,
            results_size: *mut usize,
        ) -> u32;
    }

    /// The bytes the host returned at `data` (`None` for a null pointer), owned from now on.
    ///
    /// # Safety
    /// `data` is null or was allocated by [`super::memory_allocate`]`(size)` for this result
    /// and is handed over to us (the ABI's contract for every returned buffer).
    unsafe fn take(data: *mut u8, size: usize) -> Option<Bytes> {
        if data.is_null() {
            None
        } else {
            // SAFETY: per this function's contract: a `Vec<u8>` of capacity `size`, whose
            // bytes the host has written.
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

    pub fn call_foreign_function(name: &str, argument: &[u8]) -> Result<Option<Bytes>, Status> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: `name`, `argument` and the out-pointers outlive the call; the result is
        // handed over.
        unsafe {
            Status::check(proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                argument.as_ptr(),
                argument.len(),
                &mut data,
                &mut size,
            ))?;
            Ok(take(data, size))
        }
    }

    /// Starts a callout to `cluster`; `headers` in the map wire form; no trailers.
    pub fn http_call(
        cluster: &str,
        headers: &[u8],
        body: Option<&[u8]>,
        timeout_milliseconds: u32,
    ) -> Result<u32, Status> {
        let (body_data, body_size) = parts(body);
        let mut token = 0u32;
        // SAFETY: every slice is live (or null with size 0) for the call; `token` outlives it.
        Status::check(unsafe {
            proxy_http_call(
                cluster.as_ptr(),
                cluster.len(),
                headers.as_ptr(),
                headers.len(),
                body_data,
                body_size,
                null(),
                0,
                timeout_milliseconds,
                &mut token,
            )
        })?;
        Ok(token)
    }
}

/// The ABI's numbers for the enums this module passes (proxy-wasm ABI 0.2.1).
mod code {
    pub const MAP_REQUEST_HEADERS: u32 = 0;
    pub const MAP_REQUEST_TRAILERS: u32 = 1;
    pub const MAP_RESPONSE_HEADERS: u32 = 2;
    pub const MAP_RESPONSE_TRAILERS: u32 = 3;
    pub const MAP_CALLOUT_RESPONSE_HEADERS: u32 = 6;
    pub const MAP_CALLOUT_RESPONSE_TRAILERS: u32 = 7;
    pub const BUFFER_REQUEST_BODY: u32 = 0;
    pub const BUFFER_RESPONSE_BODY: u32 = 1;
    pub const BUFFER_CALLOUT_RESPONSE_BODY: u32 = 4;
    pub const BUFFER_VM_CONFIGURATION: u32 = 6;
    pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
    pub const METRIC_COUNTER: u32 = 0;
    pub const METRIC_GAUGE: u32 = 1;
    pub const METRIC_HISTOGRAM: u32 = 2;
    pub const STREAM_REQUEST: u32 = 0;
    pub const STREAM_RESPONSE: u32 = 1;
    pub const ACTION_CONTINUE: u32 = 0;
    pub const ACTION_PAUSE: u32 = 1;
}

/// The real host: a zero-sized handle; the proxy knows the current context.
#[derive(Clone, Copy, Debug, Default)]
pub struct WasmHost;

fn map_type(map: MapKind) -> u32 {
    match map {
        MapKind::RequestHeaders => code::MAP_REQUEST_HEADERS,
        MapKind::RequestTrailers => code::MAP_REQUEST_TRAILERS,
        MapKind::ResponseHeaders => code::MAP_RESPONSE_HEADERS,
        MapKind::ResponseTrailers => code::MAP_RESPONSE_TRAILERS,
        MapKind::CalloutResponseHeaders => code::MAP_CALLOUT_RESPONSE_HEADERS,
        MapKind::CalloutResponseTrailers => code::MAP_CALLOUT_RESPONSE_TRAILERS,
    }
}

fn buffer_type(kind: BufferKind) -> u32 {
    match kind {
        BufferKind::RequestBody => code::BUFFER_REQUEST_BODY,
        BufferKind::ResponseBody => code::BUFFER_RESPONSE_BODY,
        BufferKind::CalloutResponseBody => code::BUFFER_CALLOUT_RESPONSE_BODY,
        BufferKind::PluginConfiguration => code::BUFFER_PLUGIN_CONFIGURATION,
        BufferKind::VmConfiguration => code::BUFFER_VM_CONFIGURATION,
    }
}

fn metric_type(kind: MetricKind) -> u32 {
    match kind {
        MetricKind::Counter => code::METRIC_COUNTER,
        MetricKind::Gauge => code::METRIC_GAUGE,
        MetricKind::Histogram => code::METRIC_HISTOGRAM,
    }
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
        None => match raw::define_metric(code::METRIC_COUNTER, name) {
            Ok(id) => {
                slot.set(Some(id));
                id
            }
            Err(_) => return,
        },
    };
    let _ = raw::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
}

/// The wire form of a header map (empty when the host has none or fails, logged at debug).
fn read_map(map: MapKind) -> Bytes {
    match raw::get_header_map_pairs(map_type(map)) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            debug_failed("reading header map", &map, status);
            Vec::new()
        }
    }
}

/// Counts (and logs at debug) a header map that did not come as the ABI says.
fn count_faults(map: MapKind, lossy_names: usize, malformed: bool) {
    if lossy_names == 0 && !malformed {
        return;
    }
    log::debug!(
        "meshwasm: header map {map:?}: {lossy_names} name(s) not UTF-8, malformed: {malformed}"
    );
    DECODE_COUNTERS.with(|c| {
        if lossy_names > 0 {
            bump(&c.lossy_names, wire::LOSSY_HEADER_NAMES, lossy_names);
        }
        if malformed {
            bump(&c.malformed_maps, wire::MALFORMED_HEADER_MAPS, 1);
        }
    });
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
        let bytes = read_map(map);
        let decoded = wire::decode_map(&bytes);
        count_faults(map, decoded.lossy_names, decoded.malformed);
        decoded.pairs
    }
    /// The host's buffer itself, indexed: one allocation (the index), not two per header.
    fn snapshot(&self, map: MapKind) -> HeaderSnapshot {
        let bytes = read_map(map);
        let index = wire::index_map(&bytes);
        count_faults(map, index.lossy_names, index.malformed);
        HeaderSnapshot::from_index(bytes, index.spans)
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
        // Every attribute path Envoy has fits the stack buffer; a longer one takes the heap.
        let mut stack = [0u8; 96];
        let heap;
        let encoded: &[u8] = match wire::encode_path_into(path, &mut stack) {
            Some(n) => &stack[..n],
            None => {
                heap = wire::encode_path(path);
                &heap
            }
        };
        match raw::get_property(encoded) {
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
    /// A callout; the answer reaches the root that made it ([`Dispatcher::callout_response`]),
    /// whose filter matches the token. Headers that cannot be encoded (a NUL, a length past
    /// `u32`) are `BadArgument`, like Envoy's own refusals (unknown cluster, missing `:path`).
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        let headers = wire::encode_map(headers).ok_or(HostError::BadArgument)?;
        let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        raw::http_call(cluster, &headers, body, millis).map_err(err)
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
        raw::continue_stream(code::STREAM_REQUEST).map_err(err)
    }
    fn resume_response(&self) -> Result<(), HostError> {
        raw::continue_stream(code::STREAM_RESPONSE).map_err(err)
    }
    fn call_foreign(&self, name: &str, argument: &[u8]) -> Result<Option<Bytes>, HostError> {
        raw::call_foreign_function(name, argument).map_err(err)
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

/// The module's start (`_initialize`, after the constructors): the logger and the panic hook.
/// Called by [`crate::export_filter!`].
pub fn start() {
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
}

/// `proxy_on_memory_allocate`: memory for a value the host hands us, taken back by `raw::take`
/// as a `Vec` of capacity `size`. Null when the allocation is refused, which the host reports
/// as a failed call, not a crash of the VM.
pub fn memory_allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<u8> = Vec::new();
    if buffer.try_reserve_exact(size).is_err() {
        return std::ptr::null_mut();
    }
    // Capacity exactly `size`, as `take` rebuilds it (`try_reserve_exact` may give more only
    // for zero-sized types).
    let mut buffer = std::mem::ManuallyDrop::new(buffer);
    buffer.as_mut_ptr()
}

/// Context ids as keys: Envoy hands out small distinct integers, so the id is its own hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, id: u32) {
        // Spread the bits so the table's buckets (the hash's top bits) are used evenly.
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// A request's state: its filter and the root it came from.
struct Stream<F: RootFilter> {
    root: Rc<F>,
    filter: F::Http,
}

/// Routes Envoy's callbacks, by context id, to the roots (one per plugin configuration) and the
/// requests of one filter type. A context it does not know (a stream of a root whose
/// configuration failed, a callback after delete) gets the pass-through answer, never a panic.
/// No borrow is held while a filter runs, so a callback that Envoy makes from inside a hostcall
/// cannot trip a `RefCell`: a request already running is left alone (counted at debug).
pub struct Dispatcher<F: RootFilter> {
    /// Root context id -> the configured root (`None` until `on_configure` succeeds).
    roots: RefCell<Vec<(u32, Option<Rc<F>>)>>,
    streams: RefCell<IdMap<Rc<RefCell<Stream<F>>>>>,
}

impl<F: RootFilter> Default for Dispatcher<F> {
    fn default() -> Self {
        Dispatcher {
            roots: RefCell::new(Vec::new()),
            streams: RefCell::new(IdMap::default()),
        }
    }
}

fn action_code(a: Action) -> u32 {
    match a {
        Action::Continue => code::ACTION_CONTINUE,
        Action::Pause => code::ACTION_PAUSE,
    }
}

impl<F: RootFilter> Dispatcher<F> {
    fn root(&self, id: u32) -> Option<Rc<F>> {
        let roots = self.roots.borrow();
        roots
            .iter()
            .find(|(r, _)| *r == id)
            .and_then(|(_, root)| root.clone())
    }

    /// `proxy_on_context_create`: a root when `parent` is 0, else a request of root `parent`.
    pub fn context_create(&self, id: u32, parent: u32) {
        if parent == 0 {
            let mut roots = self.roots.borrow_mut();
            if !roots.iter().any(|(r, _)| *r == id) {
                roots.push((id, None));
            }
            return;
        }
        // A request of a root that is not configured passes through (no state kept).
        let Some(root) = self.root(parent) else {
            return;
        };
        let filter = root.new_http(&WasmHost);
        self.streams
            .borrow_mut()
            .insert(id, Rc::new(RefCell::new(Stream { root, filter })));
    }

    /// `proxy_on_vm_start`: follow Envoy's log level from now on.
    pub fn vm_start(&self) -> u32 {
        if let Ok(code) = raw::get_log_level() {
            log::set_max_level(level_filter(code));
        }
        1
    }

    /// `proxy_on_configure`: parse, validate and build the root; 0 refuses the configuration.
    pub fn configure(&self, id: u32) -> u32 {
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
                let root = Rc::new(root);
                let mut roots = self.roots.borrow_mut();
                match roots.iter_mut().find(|(r, _)| *r == id) {
                    Some((_, slot)) => *slot = Some(root),
                    None => roots.push((id, Some(root))),
                }
                log::info!("{}: configured", F::NAME);
                1
            }
            Err(e) => {
                log::error!("{}: invalid configuration: {e}", F::NAME);
                0
            }
        }
    }

    /// `proxy_on_tick`.
    pub fn tick(&self, id: u32) {
        if let Some(root) = self.root(id) {
            root.on_tick(&WasmHost);
        }
    }

    /// `proxy_on_http_call_response`: the answer to a callout that root `id` made.
    pub fn callout_response(&self, id: u32, token: u32, body_size: usize) {
        let Some(root) = self.root(id) else { return };
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

    /// Runs `f` on request `id`'s filter; continue for a request we hold no state for.
    pub fn phase(&self, id: u32, f: impl FnOnce(&mut F::Http, &F, &WasmHost) -> Action) -> u32 {
        let Some(stream) = self.streams.borrow().get(&id).cloned() else {
            return code::ACTION_CONTINUE;
        };
        let Ok(mut stream) = stream.try_borrow_mut() else {
            log::debug!(
                "{}: callback for request {id} while it runs; skipped",
                F::NAME
            );
            return code::ACTION_CONTINUE;
        };
        let Stream { root, filter } = &mut *stream;
        action_code(f(filter, root, &WasmHost))
    }

    /// `proxy_on_log`.
    pub fn log(&self, id: u32) {
        self.phase(id, |f, r, h| {
            f.on_log(r, h);
            Action::Continue
        });
    }

    /// `proxy_on_delete`: forget the request, or the root.
    pub fn delete(&self, id: u32) {
        if self.streams.borrow_mut().remove(&id).is_none() {
            self.roots.borrow_mut().retain(|(r, _)| *r != id);
        }
    }
}
