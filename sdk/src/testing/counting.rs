//! Counting hostcalls: a [`Host`] wrapper that records every call a filter makes, each one
//! proxy-wasm hostcall in Envoy, so benchmarks and tests measure a filter's hostcalls per phase.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::host::{BufferKind, Bytes, Host, HostError, MapKind, MetricKind};

/// One call a filter made through a [`CountingHost`]: the proxy-wasm hostcall it is in Envoy
/// (see `abi.rs`) and the argument that tells calls of the same hostcall apart.
///
/// Its [`Display`](fmt::Display) form is the name, then the map (as its `Debug` form) and the
/// argument when present: `get_header_map_value RequestHeaders x-mesh-peer`,
/// `get_property xds.cluster_name`, `increment_metric`, `continue_stream request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCall {
    /// The hostcall without its `proxy_` prefix: `get_header_map_pairs`, `get_property`,
    /// `replace_header_map_value`, `increment_metric`...
    pub name: &'static str,
    /// The header map of a header call.
    pub map: Option<MapKind>,
    /// The header name of a single-header call, the dotted path of a property call, or
    /// `request`/`response` for `continue_stream`; `None` for every other call.
    pub arg: Option<String>,
}

impl fmt::Display for HostCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if let Some(map) = self.map {
            write!(f, " {map:?}")?;
        }
        if let Some(arg) = &self.arg {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// A [`Host`] over another one that records every call made through it, then delegates. Each
/// call is one proxy-wasm hostcall in Envoy, so counting them on the test host measures a
/// filter's hostcalls per phase without Envoy:
///
/// ```
/// use meshwasm::host::{Host, MapKind};
/// use meshwasm::testing::{CountingHost, TestHost};
///
/// let stream = TestHost::new();
/// stream.set_map(MapKind::RequestHeaders, &[("x-a", "1")]);
/// let counting = CountingHost::new(&stream);
/// let host: &dyn Host = &counting;
/// host.request_header("x-a");
/// host.request_header("x-b");
/// assert_eq!(
///     counting.take_names(),
///     ["get_header_map_value RequestHeaders x-a", "get_header_map_value RequestHeaders x-b"]
/// );
/// host.snapshot(MapKind::RequestHeaders);
/// host.snapshot(MapKind::RequestHeaders);
/// assert_eq!(counting.take().get("get_header_map_pairs RequestHeaders"), Some(&2));
/// ```
///
/// Calls are named by [`HostCall`]'s `Display` form, or by the function given to
/// [`CountingHost::with_names`].
pub struct CountingHost<'a> {
    inner: &'a dyn Host,
    naming: fn(&HostCall) -> String,
    calls: RefCell<Vec<HostCall>>,
}

impl<'a> CountingHost<'a> {
    /// Counts the calls to `inner`, named by [`HostCall`]'s `Display` form.
    pub fn new(inner: &'a dyn Host) -> CountingHost<'a> {
        CountingHost::with_names(inner, HostCall::to_string)
    }
    /// Counts the calls to `inner`, named by `naming`.
    pub fn with_names(inner: &'a dyn Host, naming: fn(&HostCall) -> String) -> CountingHost<'a> {
        CountingHost {
            inner,
            naming,
            calls: RefCell::new(Vec::new()),
        }
    }
    /// How often each call was made since the last `take` (or `take_names`), by name.
    pub fn take(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for name in self.take_names() {
            *counts.entry(name).or_default() += 1;
        }
        counts
    }
    /// The names of the calls since the last `take` (or `take_names`), in order.
    pub fn take_names(&self) -> Vec<String> {
        let calls = std::mem::take(&mut *self.calls.borrow_mut());
        calls.iter().map(self.naming).collect()
    }
    fn record(&self, name: &'static str, map: Option<MapKind>, arg: Option<String>) {
        self.calls.borrow_mut().push(HostCall { name, map, arg });
    }
}

impl Host for CountingHost<'_> {
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes> {
        self.record("get_header_map_value", Some(map), Some(name.to_string()));
        self.inner.header(map, name)
    }
    fn headers(&self, map: MapKind) -> Vec<(String, Bytes)> {
        self.record("get_header_map_pairs", Some(map), None);
        self.inner.headers(map)
    }
    fn set_header(&self, map: MapKind, name: &str, value: Option<&[u8]>) {
        let call = if value.is_some() {
            "replace_header_map_value"
        } else {
            "remove_header_map_value"
        };
        self.record(call, Some(map), Some(name.to_string()));
        self.inner.set_header(map, name, value)
    }
    fn add_header(&self, map: MapKind, name: &str, value: &[u8]) {
        self.record("add_header_map_value", Some(map), Some(name.to_string()));
        self.inner.add_header(map, name, value)
    }
    fn buffer(&self, kind: BufferKind, start: usize, max: usize) -> Option<Bytes> {
        self.record("get_buffer_bytes", None, None);
        self.inner.buffer(kind, start, max)
    }
    fn set_buffer(
        &self,
        kind: BufferKind,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        self.record("set_buffer_bytes", None, None);
        self.inner.set_buffer(kind, start, size, value)
    }
    fn property(&self, path: &[&str]) -> Option<Bytes> {
        self.record("get_property", None, Some(path.join(".")));
        self.inner.property(path)
    }
    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError> {
        self.record("set_property", None, Some(path.join(".")));
        self.inner.set_property(path, value)
    }
    fn now(&self) -> SystemTime {
        self.record("get_current_time_nanoseconds", None, None);
        self.inner.now()
    }
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.record("set_tick_period_milliseconds", None, None);
        self.inner.set_tick_period(period)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.record("define_metric", None, None);
        self.inner.define_metric(kind, name)
    }
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostError> {
        self.record("increment_metric", None, None);
        self.inner.increment_metric(id, offset)
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.record("record_metric", None, None);
        self.inner.record_metric(id, value)
    }
    fn metric(&self, id: u32) -> Result<u64, HostError> {
        self.record("get_metric", None, None);
        self.inner.metric(id)
    }
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), HostError> {
        self.record("get_shared_data", None, None);
        self.inner.shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        self.record("set_shared_data", None, None);
        self.inner.set_shared_data(key, value, cas)
    }
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.record("http_call", None, None);
        self.inner.http_call(cluster, headers, body, timeout)
    }
    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError> {
        self.record("send_local_response", None, None);
        self.inner.send_response(status, headers, body)
    }
    fn resume_request(&self) -> Result<(), HostError> {
        self.record("continue_stream", None, Some("request".to_string()));
        self.inner.resume_request()
    }
    fn resume_response(&self) -> Result<(), HostError> {
        self.record("continue_stream", None, Some("response".to_string()));
        self.inner.resume_response()
    }
    fn env_var(&self, name: &str) -> Option<String> {
        self.inner.env_var(name)
    }
    fn call_foreign(&self, name: &str, argument: &[u8]) -> Result<Option<Bytes>, HostError> {
        self.record("call_foreign_function", None, Some(name.to_string()));
        self.inner.call_foreign(name, argument)
    }
    fn holds_properties(&self, paths: &[&str]) -> bool {
        self.inner.holds_properties(paths)
    }
}
