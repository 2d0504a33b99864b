//! The test host: one emulated Envoy (shared data, metrics and clock shared by its workers, VM
//! properties, ticks and callouts per worker, headers, bodies and properties per stream) behind
//! the [`Host`] trait, with methods to script it and to inspect what a filter did.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::logs::{captured_logs, init_logging};
use crate::host::{BufferKind, Bytes, Host, HostError, MapKind, MetricKind};
use crate::properties;

/// A metric as the test host keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricValue {
    /// Stat name.
    pub name: String,
    /// Kind.
    pub kind: MetricKind,
    /// Counter or gauge value (histograms: number of samples).
    pub value: i64,
    /// Histogram samples, in order.
    pub samples: Vec<u64>,
}

/// An HTTP callout a filter started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    /// Token handed to the filter.
    pub token: u32,
    /// Target cluster.
    pub cluster: String,
    /// Request headers, including pseudo-headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
    /// Timeout asked for.
    pub timeout: Duration,
}

impl Callout {
    /// One header of the callout request.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A local reply a filter sent with [`Host::send_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: u32,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// State shared by every worker of one emulated Envoy: shared data, metrics, the clock, the VMs'
/// environment variables.
#[derive(Debug)]
struct World {
    shared: RefCell<HashMap<String, (Bytes, u32)>>,
    metrics: RefCell<Vec<MetricValue>>,
    now: Cell<SystemTime>,
    cas_conflicts: Cell<u32>,
    failing_shared_reads: Cell<bool>,
    env: RefCell<HashMap<String, String>>,
}

/// State of one worker (one VM): tick period, callouts, VM-level properties.
#[derive(Debug, Default)]
struct Worker {
    tick_period: Cell<Option<Duration>>,
    callouts: RefCell<Vec<Callout>>,
    next_token: Cell<u32>,
    properties: RefCell<HashMap<String, Bytes>>,
    failing_clusters: RefCell<Vec<String>>,
    /// CEL expressions created with `expr_create`, by token.
    expressions: RefCell<Vec<String>>,
    /// Emulates an Envoy without CEL expressions (`expr_create` refused).
    no_expressions: Cell<bool>,
}

/// State of one HTTP stream.
#[derive(Debug, Default)]
struct Stream {
    maps: HashMap<MapKind, Vec<(String, Bytes)>>,
    buffers: HashMap<BufferKind, Bytes>,
    properties: HashMap<String, Bytes>,
    local_response: Option<LocalResponse>,
    resumed_request: u32,
    resumed_response: u32,
}

/// The test host. `TestHost::new()` is one worker of a fresh Envoy; [`TestHost::new_worker`]
/// adds another worker sharing the same shared data and metrics; [`TestHost::new_stream`]
/// gives a host for one request on the same worker.
#[derive(Debug)]
pub struct TestHost {
    world: Rc<World>,
    worker: Rc<Worker>,
    stream: RefCell<Stream>,
}

/// The start of test time: 2026-01-01T00:00:00Z.
pub const TEST_EPOCH_SECS: u64 = 1_767_225_600;

impl Default for TestHost {
    fn default() -> Self {
        TestHost::new()
    }
}

fn key(path: &[&str]) -> String {
    path.join("\u{0}")
}

impl TestHost {
    /// A fresh emulated Envoy with one worker. Also installs the log capture.
    pub fn new() -> TestHost {
        init_logging();
        let world = World {
            shared: RefCell::new(HashMap::new()),
            metrics: RefCell::new(Vec::new()),
            now: Cell::new(UNIX_EPOCH + Duration::from_secs(TEST_EPOCH_SECS)),
            cas_conflicts: Cell::new(0),
            failing_shared_reads: Cell::new(false),
            env: RefCell::new(HashMap::new()),
        };
        TestHost {
            world: Rc::new(world),
            worker: Rc::new(Worker::default()),
            stream: RefCell::new(Stream::default()),
        }
    }

    /// Sets an environment variable of the VMs (`vm_config.environment_variables`), for every
    /// worker. The test host sees only these, never the test process's environment.
    pub fn set_env(&self, name: &str, value: &str) {
        self.world
            .env
            .borrow_mut()
            .insert(name.to_string(), value.to_string());
    }

    /// Another worker (VM) of the same Envoy: same shared data, metrics and clock.
    pub fn new_worker(&self) -> TestHost {
        let worker = Worker::default();
        *worker.properties.borrow_mut() = self.worker.properties.borrow().clone();
        TestHost {
            world: Rc::clone(&self.world),
            worker: Rc::new(worker),
            stream: RefCell::new(Stream::default()),
        }
    }

    /// Emulates an Envoy built without CEL expressions on this worker: `expr_create` answers
    /// `Unimplemented`, so property batches stay disabled ([`crate::batch`]).
    pub fn without_expressions(&self) {
        self.worker.no_expressions.set(true);
    }

    /// A host for a new request on this worker.
    pub fn new_stream(&self) -> TestHost {
        TestHost {
            world: Rc::clone(&self.world),
            worker: Rc::clone(&self.worker),
            stream: RefCell::new(Stream::default()),
        }
    }

    // ---- scripting ----

    /// Sets a worker-level property (node, plugin name...) in its wire form.
    pub fn set_vm_property(&self, path: &str, value: impl Into<Bytes>) {
        self.worker
            .properties
            .borrow_mut()
            .insert(key(&properties::split(path)), value.into());
    }
    /// Sets a per-stream property (request.path, response.code...) in its wire form.
    pub fn set_stream_property(&self, path: &str, value: impl Into<Bytes>) {
        self.stream
            .borrow_mut()
            .properties
            .insert(key(&properties::split(path)), value.into());
    }
    /// Sets a string property on this stream.
    pub fn set_property_str(&self, path: &str, value: &str) {
        self.set_stream_property(path, value.as_bytes().to_vec());
    }
    /// Sets an int64 property on this stream.
    pub fn set_property_int(&self, path: &str, value: i64) {
        self.set_stream_property(path, properties::encode_i64(value));
    }
    /// Replaces a whole header map.
    pub fn set_map(&self, map: MapKind, pairs: &[(&str, &str)]) {
        let list = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        self.stream.borrow_mut().maps.insert(map, list);
    }
    /// Replaces a whole header map with raw byte values (for non-UTF-8 cases).
    pub fn set_map_bytes(&self, map: MapKind, pairs: &[(&str, &[u8])]) {
        let list = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
            .collect();
        self.stream.borrow_mut().maps.insert(map, list);
    }
    /// Replaces a buffer.
    pub fn set_buffer_bytes(&self, kind: BufferKind, bytes: &[u8]) {
        self.stream
            .borrow_mut()
            .buffers
            .insert(kind, bytes.to_vec());
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.world.now.set(self.world.now.get() + by);
    }
    /// Moves the clock back, as a wall clock stepped back (NTP, a VM migration) does.
    pub fn rewind(&self, by: Duration) {
        let now = self.world.now.get();
        self.world
            .now
            .set(now.checked_sub(by).unwrap_or(UNIX_EPOCH));
    }
    /// Makes every shared-data read of every worker fail (or succeed again), as a host error.
    pub fn fail_shared_reads(&self, fail: bool) {
        self.world.failing_shared_reads.set(fail);
    }
    /// Makes callouts to `cluster` fail at dispatch, as an unknown cluster does in Envoy.
    pub fn fail_callouts_to(&self, cluster: &str) {
        self.worker
            .failing_clusters
            .borrow_mut()
            .push(cluster.to_string());
    }
    /// Writes shared data directly (bumps its CAS), as another worker would.
    pub fn poke_shared(&self, key: &str, value: &[u8]) {
        let mut shared = self.world.shared.borrow_mut();
        let cas = shared.get(key).map_or(1, |(_, c)| c.wrapping_add(1));
        shared.insert(key.to_string(), (value.to_vec(), cas));
    }

    // ---- inspection ----

    /// The first value of a header, as text.
    pub fn map_value(&self, map: MapKind, name: &str) -> Option<String> {
        self.header_str(map, name)
    }
    /// Every value of a header, as text.
    pub fn map_values(&self, map: MapKind, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.stream
            .borrow()
            .maps
            .get(&map)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    /// A whole map as text pairs.
    pub fn map(&self, map: MapKind) -> Vec<(String, String)> {
        self.headers(map)
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }
    /// A metric by stat name.
    pub fn metric_value(&self, name: &str) -> Option<MetricValue> {
        self.world
            .metrics
            .borrow()
            .iter()
            .find(|m| m.name == name)
            .cloned()
    }
    /// A counter's value by stat name.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.metric_value(name)
            .and_then(|m| u64::try_from(m.value).ok())
    }
    /// A gauge's value by stat name.
    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.metric_value(name).map(|m| m.value)
    }
    /// A histogram's samples by stat name.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.metric_value(name).map(|m| m.samples)
    }
    /// Every metric, in definition order.
    pub fn metrics(&self) -> Vec<MetricValue> {
        self.world.metrics.borrow().clone()
    }
    /// How many metrics were defined.
    pub fn defined_metric_count(&self) -> usize {
        self.world.metrics.borrow().len()
    }
    /// Callouts started on this worker, oldest first.
    pub fn callouts(&self) -> Vec<Callout> {
        self.worker.callouts.borrow().clone()
    }
    /// Takes the callouts started on this worker.
    pub fn take_callouts(&self) -> Vec<Callout> {
        std::mem::take(&mut *self.worker.callouts.borrow_mut())
    }
    /// The tick period the filter asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        self.worker.tick_period.get()
    }
    /// The local reply sent on this stream, if any.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.stream.borrow().local_response.clone()
    }
    /// How often the request and the response were resumed.
    pub fn resumed(&self) -> (u32, u32) {
        let s = self.stream.borrow();
        (s.resumed_request, s.resumed_response)
    }
    /// Shared data as the next reader would see it.
    pub fn shared(&self, key: &str) -> Option<Bytes> {
        self.world.shared.borrow().get(key).map(|(v, _)| v.clone())
    }
    /// How many CAS writes were refused so far.
    pub fn cas_conflicts(&self) -> u32 {
        self.world.cas_conflicts.get()
    }
    /// Log lines captured on this thread so far (`LEVEL message`).
    pub fn logs(&self) -> Vec<String> {
        captured_logs()
    }
}

impl Host for TestHost {
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes> {
        let name = name.to_ascii_lowercase();
        self.stream
            .borrow()
            .maps
            .get(&map)?
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
    fn headers(&self, map: MapKind) -> Vec<(String, Bytes)> {
        self.stream
            .borrow()
            .maps
            .get(&map)
            .cloned()
            .unwrap_or_default()
    }
    fn set_header(&self, map: MapKind, name: &str, value: Option<&[u8]>) {
        let name = name.to_ascii_lowercase();
        let mut stream = self.stream.borrow_mut();
        let list = stream.maps.entry(map).or_default();
        match value {
            Some(v) => {
                if let Some(pos) = list.iter().position(|(k, _)| *k == name) {
                    list[pos].1 = v.to_vec();
                    let mut i = pos + 1;
                    while i < list.len() {
                        if list[i].0 == name {
                            list.remove(i);
                        } else {
                            i += 1;
                        }
                    }
                } else {
                    list.push((name, v.to_vec()));
                }
            }
            None => list.retain(|(k, _)| *k != name),
        }
    }
    fn add_header(&self, map: MapKind, name: &str, value: &[u8]) {
        self.stream
            .borrow_mut()
            .maps
            .entry(map)
            .or_default()
            .push((name.to_ascii_lowercase(), value.to_vec()));
    }
    fn buffer(&self, kind: BufferKind, start: usize, max: usize) -> Option<Bytes> {
        let stream = self.stream.borrow();
        let buf = stream.buffers.get(&kind)?;
        let start = start.min(buf.len());
        let end = start.saturating_add(max).min(buf.len());
        Some(buf[start..end].to_vec())
    }
    fn set_buffer(
        &self,
        kind: BufferKind,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        let mut stream = self.stream.borrow_mut();
        let buf = stream.buffers.entry(kind).or_default();
        if start > buf.len() {
            return Err(HostError::BadArgument);
        }
        let end = start.saturating_add(size).min(buf.len());
        buf.splice(start..end, value.iter().copied());
        Ok(())
    }
    fn property(&self, path: &[&str]) -> Option<Bytes> {
        let k = key(path);
        if let Some(v) = self.stream.borrow().properties.get(&k) {
            return Some(v.clone());
        }
        self.worker.properties.borrow().get(&k).cloned()
    }
    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError> {
        let mut stream = self.stream.borrow_mut();
        match value {
            Some(v) => stream.properties.insert(key(path), v.to_vec()),
            None => stream.properties.remove(&key(path)),
        };
        Ok(())
    }
    fn now(&self) -> SystemTime {
        self.world.now.get()
    }
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.worker
            .tick_period
            .set((!period.is_zero()).then_some(period));
        Ok(())
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let mut metrics = self.world.metrics.borrow_mut();
        if let Some(pos) = metrics.iter().position(|m| m.name == name) {
            return u32::try_from(pos).map_err(|_| HostError::BadArgument);
        }
        metrics.push(MetricValue {
            name: name.to_string(),
            kind,
            value: 0,
            samples: Vec::new(),
        });
        u32::try_from(metrics.len() - 1).map_err(|_| HostError::BadArgument)
    }
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostError> {
        let mut metrics = self.world.metrics.borrow_mut();
        let m = metrics.get_mut(id as usize).ok_or(HostError::NotFound)?;
        match m.kind {
            MetricKind::Histogram => return Err(HostError::BadArgument),
            MetricKind::Counter if offset < 0 => return Err(HostError::BadArgument),
            _ => m.value = m.value.saturating_add(offset),
        }
        Ok(())
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        let mut metrics = self.world.metrics.borrow_mut();
        let m = metrics.get_mut(id as usize).ok_or(HostError::NotFound)?;
        match m.kind {
            MetricKind::Histogram => {
                m.samples.push(value);
                m.value += 1;
            }
            _ => m.value = i64::try_from(value).unwrap_or(i64::MAX),
        }
        Ok(())
    }
    fn metric(&self, id: u32) -> Result<u64, HostError> {
        let metrics = self.world.metrics.borrow();
        let m = metrics.get(id as usize).ok_or(HostError::NotFound)?;
        u64::try_from(m.value).map_err(|_| HostError::BadArgument)
    }
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), HostError> {
        if self.world.failing_shared_reads.get() {
            return Err(HostError::Other(
                "shared data read failed (test host)".into(),
            ));
        }
        Ok(match self.world.shared.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        let mut shared = self.world.shared.borrow_mut();
        let current = shared.get(key).map(|(_, c)| *c);
        if let (Some(want), Some(have)) = (cas, current) {
            if want != 0 && want != have {
                self.world
                    .cas_conflicts
                    .set(self.world.cas_conflicts.get() + 1);
                return Err(HostError::CasMismatch);
            }
        }
        let next = current.map_or(1, |c| c.wrapping_add(1).max(1));
        shared.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        if self
            .worker
            .failing_clusters
            .borrow()
            .iter()
            .any(|c| c == cluster)
        {
            return Err(HostError::BadArgument);
        }
        let token = self.worker.next_token.get().wrapping_add(1);
        self.worker.next_token.set(token);
        self.worker.callouts.borrow_mut().push(Callout {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec).unwrap_or_default(),
            timeout,
        });
        Ok(token)
    }
    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError> {
        self.stream.borrow_mut().local_response = Some(LocalResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec).unwrap_or_default(),
        });
        Ok(())
    }
    fn resume_request(&self) -> Result<(), HostError> {
        self.stream.borrow_mut().resumed_request += 1;
        Ok(())
    }
    fn resume_response(&self) -> Result<(), HostError> {
        self.stream.borrow_mut().resumed_response += 1;
        Ok(())
    }
    fn env_var(&self, name: &str) -> Option<String> {
        self.world.env.borrow().get(name).cloned()
    }
    /// `expr_create` and `expr_evaluate` of the expressions a [`crate::batch::PropertyBatch`]
    /// writes, answered from this host's properties as Envoy would; any other function is
    /// `Unimplemented`.
    fn call_foreign(&self, name: &str, argument: &[u8]) -> Result<Option<Bytes>, HostError> {
        if self.worker.no_expressions.get() {
            return Err(HostError::Unimplemented);
        }
        match name {
            "expr_create" => {
                let expression =
                    std::str::from_utf8(argument).map_err(|_| HostError::BadArgument)?;
                crate::batch::parse_for_test(expression).ok_or(HostError::BadArgument)?;
                let mut expressions = self.worker.expressions.borrow_mut();
                expressions.push(expression.to_string());
                let token =
                    u32::try_from(expressions.len() - 1).map_err(|_| HostError::BadArgument)?;
                Ok(Some(token.to_le_bytes().to_vec()))
            }
            "expr_evaluate" => {
                let token = <[u8; 4]>::try_from(argument).map_err(|_| HostError::BadArgument)?;
                let index = u32::from_le_bytes(token) as usize;
                let expression = self
                    .worker
                    .expressions
                    .borrow()
                    .get(index)
                    .cloned()
                    .ok_or(HostError::NotFound)?;
                crate::batch::evaluate_for_test(&expression, |path| {
                    self.property(&properties::split(path))
                })
                .map(Some)
                .ok_or_else(|| HostError::Other("InternalFailure".to_string()))
            }
            _ => Err(HostError::Unimplemented),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_are_case_insensitive_and_set_replaces_all() {
        let h = TestHost::new();
        h.set_map(
            MapKind::RequestHeaders,
            &[("X-A", "1"), ("x-a", "2"), ("b", "3")],
        );
        assert_eq!(h.request_header("x-A").as_deref(), Some("1"));
        h.set_request_header("x-a", "9");
        assert_eq!(h.map_values(MapKind::RequestHeaders, "x-a"), vec!["9"]);
        h.add_header(MapKind::RequestHeaders, "x-a", b"10");
        assert_eq!(
            h.map_values(MapKind::RequestHeaders, "x-a"),
            vec!["9", "10"]
        );
        h.remove_request_header("x-a");
        assert_eq!(h.request_header("x-a"), None);
        assert_eq!(
            h.map(MapKind::RequestHeaders),
            vec![("b".into(), "3".into())]
        );
    }

    #[test]
    fn shared_data_cas_across_workers() {
        let w1 = TestHost::new();
        let w2 = w1.new_worker();
        w1.set_shared_data("k", b"a", None).unwrap();
        let (v, cas1) = w1.shared_data("k").unwrap();
        let (_, cas2) = w2.shared_data("k").unwrap();
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        w2.set_shared_data("k", b"b", cas2).unwrap();
        assert_eq!(
            w1.set_shared_data("k", b"c", cas1),
            Err(HostError::CasMismatch)
        );
        assert_eq!(w1.shared("k").as_deref(), Some(&b"b"[..]));
        assert_eq!(w1.cas_conflicts(), 1);
        assert_eq!(w1.shared_data("absent"), Ok((None, None)));
        w2.fail_shared_reads(true);
        assert!(
            w1.shared_data("k").is_err(),
            "a failed read is not an absent key"
        );
        w2.fail_shared_reads(false);
    }

    #[test]
    fn the_vms_environment_is_the_tests_never_the_processs() {
        let h = TestHost::new();
        assert_eq!(h.env_var("PATH"), None);
        h.set_env("MESH_SIGNING_KEY", "hex:00");
        let other = h.new_worker();
        assert_eq!(other.env_var("MESH_SIGNING_KEY").as_deref(), Some("hex:00"));
        assert_eq!(
            h.new_stream().env_var("MESH_SIGNING_KEY").as_deref(),
            Some("hex:00")
        );
        assert_eq!(TestHost::new().env_var("MESH_SIGNING_KEY"), None);
    }

    #[test]
    fn metrics_kinds_and_errors() {
        let h = TestHost::new();
        let c = h.define_metric(MetricKind::Counter, "c").unwrap();
        let g = h.define_metric(MetricKind::Gauge, "g").unwrap();
        let hi = h.define_metric(MetricKind::Histogram, "h").unwrap();
        assert_eq!(h.define_metric(MetricKind::Counter, "c").unwrap(), c);
        h.increment_metric(c, 2).unwrap();
        assert!(h.increment_metric(c, -1).is_err());
        h.increment_metric(g, -3).unwrap();
        h.record_metric(hi, 7).unwrap();
        h.record_metric(hi, 9).unwrap();
        assert_eq!(h.counter("c"), Some(2));
        assert_eq!(h.gauge("g"), Some(-3));
        assert_eq!(h.histogram("h"), Some(vec![7, 9]));
        assert_eq!(h.increment_metric(99, 1), Err(HostError::NotFound));
        // Metrics are shared by workers, like Envoy's stats.
        assert_eq!(h.new_worker().counter("c"), Some(2));
    }

    #[test]
    fn callouts_time_properties_and_logs() {
        let h = TestHost::new();
        h.fail_callouts_to("nowhere");
        assert!(h
            .http_call("nowhere", &[], None, Duration::from_secs(1))
            .is_err());
        let t = h
            .http_call(
                "collector",
                &[(":path", "/x")],
                Some(b"b"),
                Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(h.callouts()[0].token, t);
        assert_eq!(h.callouts()[0].header(":PATH"), Some("/x"));
        let before = h.now();
        h.advance(Duration::from_secs(3));
        assert_eq!(
            h.now().duration_since(before).unwrap(),
            Duration::from_secs(3)
        );
        h.set_vm_property("xds.node.cluster", "orders");
        let s = h.new_stream();
        s.set_property_int("response.code", 503);
        assert_eq!(properties::xds_node_cluster(&s).as_deref(), Some("orders"));
        assert_eq!(properties::response_code(&s), Some(503));
        assert_eq!(properties::response_code(&h), None);
        log::warn!("hello from the test");
        assert!(h.logs().iter().any(|l| l == "WARN hello from the test"));
    }
}
