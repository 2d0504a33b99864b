//! Running several filters in one module. Each proxy-wasm filter costs a VM per worker, a
//! context per request and a call into the VM per phase; filters that always run together can
//! share all three by being called one after another from one root and one request type.
//!
//! [`PhaseHost`] is the host those filters share during one phase callback: it remembers the
//! header maps, properties and clock already read in that callback, so the second and third
//! filter looking at the same request headers, at `xds.cluster_name` or at the time cost no
//! hostcall (a callback takes microseconds: one clock reading serves it). Writes go to
//! the proxy at once and update what it remembers, so every filter sees the previous filters'
//! changes exactly as it would through the proxy. Build one per callback and drop it at the
//! end: between callbacks the proxy (and other filters in the chain) may change anything.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use crate::host::{BufferKind, Bytes, Edit, HeaderSnapshot, Host, HostError, MapKind, MetricKind};

/// A map read in this callback, and the writes made to it since, applied when next read whole.
type Cached = (MapKind, HeaderSnapshot, Vec<Edit>);

/// A [`Host`] over another one that serves repeated reads within one phase callback from memory.
pub struct PhaseHost<'a> {
    inner: &'a dyn Host,
    maps: RefCell<Vec<Cached>>,
    /// Single headers read from maps not read whole (forgotten when the name is written).
    singles: RefCell<Vec<(MapKind, String, Option<Bytes>)>>,
    properties: RefCell<Vec<(String, Option<Bytes>)>>,
    now: std::cell::Cell<Option<SystemTime>>,
}

/// The cache key of a property path (segments cannot contain NUL in Envoy's attribute names).
fn property_key(path: &[&str]) -> String {
    path.join("\0")
}

/// Whether `key` (made by [`property_key`]) is `path`, compared without building a key.
fn is_key(key: &str, path: &[&str]) -> bool {
    let mut rest = key.as_bytes();
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            match rest.split_first() {
                Some((0, after)) => rest = after,
                _ => return false,
            }
        }
        match rest.strip_prefix(segment.as_bytes()) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

impl<'a> PhaseHost<'a> {
    /// Wraps `inner` for one callback.
    pub fn new(inner: &'a dyn Host) -> PhaseHost<'a> {
        PhaseHost {
            inner,
            maps: RefCell::new(Vec::new()),
            singles: RefCell::new(Vec::new()),
            properties: RefCell::new(Vec::new()),
            now: std::cell::Cell::new(None),
        }
    }

    /// The map as it is now: read from the proxy on first use in this callback, with the writes
    /// made since applied once (a snapshot a filter still holds keeps what it saw).
    fn current(&self, map: MapKind) -> HeaderSnapshot {
        let mut maps = self.maps.borrow_mut();
        if let Some((_, snapshot, edits)) = maps.iter_mut().find(|(m, _, _)| *m == map) {
            if !edits.is_empty() {
                *snapshot = snapshot.edited(edits);
                edits.clear();
            }
            return snapshot.clone();
        }
        let snapshot = self.inner.snapshot(map);
        maps.push((map, snapshot.clone(), Vec::new()));
        snapshot
    }

    /// Records a write to a map: replayed on the map if it was read whole, and the name's single
    /// read forgotten.
    fn edit(&self, map: MapKind, edit: Edit) {
        let name = match &edit {
            Edit::Set(name, _) | Edit::Add(name, _) => name,
        };
        self.singles
            .borrow_mut()
            .retain(|(m, n, _)| *m != map || n != name);
        let mut maps = self.maps.borrow_mut();
        if let Some((_, _, edits)) = maps.iter_mut().find(|(m, _, _)| *m == map) {
            edits.push(edit);
        }
    }
}

impl Host for PhaseHost<'_> {
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes> {
        // From a map already read whole (through the writes made since, without rebuilding
        // it); a single lookup does not justify reading one.
        let maps = self.maps.borrow();
        if let Some((_, snapshot, edits)) = maps.iter().find(|(m, _, _)| *m == map) {
            return snapshot.get_edited(edits, name).map(<[u8]>::to_vec);
        }
        drop(maps);
        if let Some((.., v)) = self
            .singles
            .borrow()
            .iter()
            .find(|(m, n, _)| *m == map && n == name)
        {
            return v.clone();
        }
        let value = self.inner.header(map, name);
        self.singles
            .borrow_mut()
            .push((map, name.to_string(), value.clone()));
        value
    }

    fn headers(&self, map: MapKind) -> Vec<(String, Bytes)> {
        self.current(map).to_pairs()
    }

    /// One read of the map per callback, shared (not copied) by every filter that looks.
    fn snapshot(&self, map: MapKind) -> HeaderSnapshot {
        self.current(map)
    }

    fn set_header(&self, map: MapKind, name: &str, value: Option<&[u8]>) {
        self.inner.set_header(map, name, value);
        self.edit(map, Edit::Set(name.to_string(), value.map(<[u8]>::to_vec)));
    }

    fn add_header(&self, map: MapKind, name: &str, value: &[u8]) {
        self.inner.add_header(map, name, value);
        self.edit(map, Edit::Add(name.to_string(), value.to_vec()));
    }

    fn buffer(&self, kind: BufferKind, start: usize, max: usize) -> Option<Bytes> {
        self.inner.buffer(kind, start, max)
    }

    fn set_buffer(
        &self,
        kind: BufferKind,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        self.inner.set_buffer(kind, start, size, value)
    }

    fn property(&self, path: &[&str]) -> Option<Bytes> {
        if let Some((_, v)) = self
            .properties
            .borrow()
            .iter()
            .find(|(k, _)| is_key(k, path))
        {
            return v.clone();
        }
        let value = self.inner.property(path);
        self.properties
            .borrow_mut()
            .push((property_key(path), value.clone()));
        value
    }

    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError> {
        self.properties
            .borrow_mut()
            .retain(|(k, _)| !is_key(k, path));
        self.inner.set_property(path, value)
    }

    fn now(&self) -> SystemTime {
        if let Some(t) = self.now.get() {
            return t;
        }
        let t = self.inner.now();
        self.now.set(Some(t));
        t
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.inner.set_tick_period(period)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.inner.define_metric(kind, name)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostError> {
        self.inner.increment_metric(id, offset)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.inner.record_metric(id, value)
    }

    fn metric(&self, id: u32) -> Result<u64, HostError> {
        self.inner.metric(id)
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), HostError> {
        self.inner.shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        self.inner.set_shared_data(key, value, cas)
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.inner.http_call(cluster, headers, body, timeout)
    }

    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError> {
        self.inner.send_response(status, headers, body)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.inner.resume_request()
    }

    fn resume_response(&self) -> Result<(), HostError> {
        self.inner.resume_response()
    }
    fn env_var(&self, name: &str) -> Option<String> {
        self.inner.env_var(name)
    }
}

/// The action of a phase run by several filters: the first that pauses pauses the stream.
pub fn merge(a: crate::filter::Action, b: crate::filter::Action) -> crate::filter::Action {
    use crate::filter::Action;
    if a == Action::Pause || b == Action::Pause {
        Action::Pause
    } else {
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::filter::Action;
    use crate::testing::TestHost;

    #[test]
    fn property_keys_match_whole_segments_only() {
        let key = property_key(&["xds", "route_name"]);
        assert!(is_key(&key, &["xds", "route_name"]));
        for other in [
            &["xds"][..],
            &["xds", "route"],
            &["xds", "route_name", "x"],
            &["xd", "s\0route_name"],
            &["xdsroute_name"],
            &[],
        ] {
            assert!(!is_key(&key, other), "{other:?}");
        }
        assert!(is_key(&property_key(&[]), &[]));
    }

    /// A single header of a map not read whole is asked of the proxy once per callback, absent
    /// or present, and asked again after a write to that name.
    #[test]
    fn a_single_header_is_read_once_until_written() {
        use crate::testing::CountingHost;
        let host = TestHost::new();
        host.set_map(MapKind::ResponseHeaders, &[(":status", "200")]);
        let counting = CountingHost::new(&host);
        let phase = PhaseHost::new(&counting);
        let map = MapKind::ResponseHeaders;
        for _ in 0..3 {
            assert_eq!(phase.header(map, ":status"), Some(b"200".to_vec()));
            assert_eq!(phase.header(map, "x-absent"), None);
        }
        assert_eq!(counting.take().values().sum::<u64>(), 2);
        phase.set_header(map, "x-absent", Some(b"1"));
        phase.add_header(map, ":status", b"x");
        assert_eq!(phase.header(map, "x-absent"), Some(b"1".to_vec()));
        assert_eq!(phase.header(map, ":status"), Some(b"200".to_vec()));
        let calls = counting.take();
        assert_eq!(
            calls.get("get_header_map_value ResponseHeaders x-absent"),
            Some(&1)
        );
        assert_eq!(
            calls.get("get_header_map_value ResponseHeaders :status"),
            Some(&1)
        );
    }

    #[test]
    fn a_snapshot_keeps_what_it_saw_while_later_reads_see_the_writes() {
        let host = TestHost::new();
        host.set_map(MapKind::RequestHeaders, &[("a", "1"), ("b", "2")]);
        let phase = PhaseHost::new(&host);
        let first = phase.snapshot(MapKind::RequestHeaders);
        phase.set_header(MapKind::RequestHeaders, "a", Some(b"9"));
        assert_eq!(first.get("a"), Some(&b"1"[..]));
        let second = phase.snapshot(MapKind::RequestHeaders);
        assert_eq!(second.get("a"), Some(&b"9"[..]));
        assert_eq!(second.get("b"), Some(&b"2"[..]));
        assert_eq!(host.request_header("a").as_deref(), Some("9"));
    }

    #[test]
    fn reads_once_and_sees_its_own_writes() {
        let host = TestHost::new();
        host.set_map(
            MapKind::RequestHeaders,
            &[("traceparent", "a"), ("x-b3-sampled", "1")],
        );
        host.set_property_str("xds.cluster_name", "orders");
        let phase = PhaseHost::new(&host);
        // Before the map is read whole, single lookups go to the proxy.
        assert_eq!(
            phase.header(MapKind::RequestHeaders, "traceparent"),
            Some(b"a".to_vec())
        );
        assert_eq!(phase.headers(MapKind::RequestHeaders).len(), 2);
        phase.set_header(MapKind::RequestHeaders, "traceparent", Some(b"b"));
        phase.set_header(MapKind::RequestHeaders, "x-b3-sampled", None);
        phase.add_header(MapKind::RequestHeaders, "x-new", b"1");
        let seen = phase.snapshot(MapKind::RequestHeaders);
        assert_eq!(seen.get("traceparent"), Some(&b"b"[..]));
        assert!(!seen.contains("x-b3-sampled"));
        assert_eq!(
            phase.header(MapKind::RequestHeaders, "x-new"),
            Some(b"1".to_vec())
        );
        // The proxy got every write.
        assert_eq!(
            host.map_value(MapKind::RequestHeaders, "traceparent")
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            host.map_value(MapKind::RequestHeaders, "x-b3-sampled"),
            None
        );
        // Properties: read once, absent ones too; a write forgets the cached value.
        assert_eq!(
            phase.property(&["xds", "cluster_name"]),
            phase.property(&["xds", "cluster_name"])
        );
        assert_eq!(phase.property(&["xds", "route_name"]), None);
        // One clock reading per callback.
        let t = phase.now();
        host.advance(std::time::Duration::from_secs(1));
        assert_eq!(phase.now(), t);
        assert_eq!(
            PhaseHost::new(&host).now(),
            t + std::time::Duration::from_secs(1)
        );
        assert_eq!(merge(Action::Continue, Action::Pause), Action::Pause);
        assert_eq!(merge(Action::Continue, Action::Continue), Action::Continue);
    }
}
