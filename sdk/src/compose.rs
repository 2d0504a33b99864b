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
use std::time::SystemTime;

use crate::host::{Bytes, EditLog, HeaderSnapshot, Host, HostError, MapKind};

/// A map read in this callback, and the writes made to it since, laid over it when next read
/// whole (never applied by rebuilding the map).
type Cached = (MapKind, HeaderSnapshot, EditLog);

/// A [`Host`] over another one that serves repeated reads within one phase callback from memory.
pub struct PhaseHost<'a> {
    inner: &'a dyn Host,
    maps: RefCell<Vec<Cached>>,
    /// Single headers read from maps not read whole (forgotten when the name is written).
    singles: RefCell<Vec<(MapKind, Remembered)>>,
    /// Properties read, under their [`property_key`].
    properties: RefCell<Vec<Remembered>>,
    /// The keys and values of every [`Remembered`], one after another: remembering a read
    /// costs no allocation of its own (an absent value none at all).
    store: RefCell<Vec<u8>>,
    now: std::cell::Cell<Option<SystemTime>>,
}

/// A value read in this callback and its key (a header name, a [`property_key`]), where they
/// lie in the [`PhaseHost`]'s store: the key's bytes, then the value's.
struct Remembered {
    /// The key's [`tag`]: an entry whose tag differs from the one looked for is passed over
    /// without comparing keys.
    tag: u32,
    /// Where the key starts in the store.
    start: usize,
    key_len: usize,
    /// The value's length; `None` when the proxy had none (an absent one is remembered too).
    value_len: Option<usize>,
}

/// A summary of a key: its length, first and last byte. Equal keys have equal tags.
fn tag(len: usize, first: u8, last: u8) -> u32 {
    (len as u32 & 0xffff) | u32::from(first) << 16 | u32::from(last) << 24
}

/// The [`tag`] of a key's bytes.
fn tag_of(key: &[u8]) -> u32 {
    tag(
        key.len(),
        key.first().copied().unwrap_or(0),
        key.last().copied().unwrap_or(0),
    )
}

/// The [`tag`] of the key [`write_key`] makes of `path`, without making it: its first byte is
/// the first segment's (a separator, 0, when that is empty), its last the last segment's.
fn tag_of_path(path: &[&str]) -> u32 {
    let edge = |segment: Option<&&str>, first: bool| {
        let bytes = segment.map_or(&[][..], |s| s.as_bytes());
        let byte = if first { bytes.first() } else { bytes.last() };
        byte.copied().unwrap_or(0)
    };
    tag(
        key_len(path),
        edge(path.first(), true),
        edge(path.last(), false),
    )
}

impl Remembered {
    /// `value` under the key that `write_key` writes, both appended to `store`.
    fn new(
        store: &mut Vec<u8>,
        write_key: impl FnOnce(&mut Vec<u8>),
        value: Option<&[u8]>,
    ) -> Self {
        if store.capacity() == 0 {
            // What a callback remembers, in one allocation (under dlmalloc's small-chunk size).
            store.reserve(240);
        }
        let start = store.len();
        write_key(store);
        let key_len = store.len() - start;
        store.extend_from_slice(value.unwrap_or_default());
        Remembered {
            tag: tag_of(store.get(start..start + key_len).unwrap_or_default()),
            start,
            key_len,
            value_len: value.map(<[u8]>::len),
        }
    }

    fn key<'s>(&self, store: &'s [u8]) -> &'s [u8] {
        store
            .get(self.start..self.start + self.key_len)
            .unwrap_or_default()
    }

    /// Whether the key is `name` (a header's).
    fn is(&self, store: &[u8], name_tag: u32, name: &str) -> bool {
        self.tag == name_tag && self.key(store) == name.as_bytes()
    }

    /// Whether the key is that of `path` (a property's).
    fn is_path(&self, store: &[u8], path_tag: u32, path: &[&str]) -> bool {
        self.tag == path_tag && is_key(self.key(store), path)
    }

    fn value(&self, store: &[u8]) -> Option<Bytes> {
        let at = self.start + self.key_len;
        let len = self.value_len?;
        Some(store.get(at..at + len).unwrap_or_default().to_vec())
    }
}

/// The length of a property path's key: its segments and a separator between each two (so also
/// the length of the dotted path, `response.code`).
pub(crate) fn key_len(path: &[&str]) -> usize {
    path.iter().map(|s| s.len()).sum::<usize>() + path.len().saturating_sub(1)
}

/// Writes the cache key of a property path: its segments joined by NUL (segments cannot contain
/// NUL in Envoy's attribute names).
fn write_key(path: &[&str], out: &mut Vec<u8>) {
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(segment.as_bytes());
    }
}

/// The cache key of a property path.
#[cfg(test)]
fn property_key(path: &[&str]) -> Vec<u8> {
    let mut key = Vec::new();
    write_key(path, &mut key);
    key
}

/// Whether `key` (made by [`write_key`]) is `path`, compared without building a key: the
/// lengths first (which tell most paths apart), then segment by segment.
fn is_key(key: &[u8], path: &[&str]) -> bool {
    if key.len() != key_len(path) {
        return false;
    }
    let mut rest = key;
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
            store: RefCell::new(Vec::new()),
            now: std::cell::Cell::new(None),
        }
    }

    /// The map as it is now: read from the proxy on first use in this callback, with the writes
    /// made since laid over it (a snapshot a filter still holds keeps what it saw).
    fn current(&self, map: MapKind) -> HeaderSnapshot {
        let mut maps = self.maps.borrow_mut();
        if let Some((_, snapshot, edits)) = maps.iter_mut().find(|(m, _, _)| *m == map) {
            if !edits.is_empty() {
                *snapshot = snapshot.with_edits(std::mem::take(edits));
            }
            return snapshot.clone();
        }
        let snapshot = self.inner.snapshot(map);
        maps.push((map, snapshot.clone(), EditLog::default()));
        snapshot
    }

    /// Records a write to a map (`add`: an added value; else a set, or with `None` a removal):
    /// kept for the map if it was read whole, and the name's single read forgotten.
    fn edit(&self, map: MapKind, add: bool, name: &str, value: Option<&[u8]>) {
        let mut singles = self.singles.borrow_mut();
        if !singles.is_empty() {
            let name_tag = tag_of(name.as_bytes());
            let store = self.store.borrow();
            singles.retain(|(m, r)| *m != map || !r.is(&store, name_tag, name));
        }
        drop(singles);
        let mut maps = self.maps.borrow_mut();
        if let Some((_, _, edits)) = maps.iter_mut().find(|(m, _, _)| *m == map) {
            edits.push(add, name, value);
        }
    }
}

impl Host for PhaseHost<'_> {
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes> {
        // From a map already read whole (through the writes made since, without rebuilding
        // it); a single lookup does not justify reading one.
        let maps = self.maps.borrow();
        if let Some((_, snapshot, edits)) = maps.iter().find(|(m, _, _)| *m == map) {
            return snapshot.get_through(edits, name).map(<[u8]>::to_vec);
        }
        drop(maps);
        let name_tag = tag_of(name.as_bytes());
        {
            let store = self.store.borrow();
            if let Some((_, r)) = self
                .singles
                .borrow()
                .iter()
                .find(|(m, r)| *m == map && r.is(&store, name_tag, name))
            {
                return r.value(&store);
            }
        }
        let value = self.inner.header(map, name);
        let remembered = Remembered::new(
            &mut self.store.borrow_mut(),
            |out| out.extend_from_slice(name.as_bytes()),
            value.as_deref(),
        );
        self.singles.borrow_mut().push((map, remembered));
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
        self.edit(map, false, name, value);
    }

    fn add_header(&self, map: MapKind, name: &str, value: &[u8]) {
        self.inner.add_header(map, name, value);
        self.edit(map, true, name, Some(value));
    }

    fn property(&self, path: &[&str]) -> Option<Bytes> {
        let path_tag = tag_of_path(path);
        {
            let store = self.store.borrow();
            if let Some(r) = self
                .properties
                .borrow()
                .iter()
                .find(|r| r.is_path(&store, path_tag, path))
            {
                return r.value(&store);
            }
        }
        let value = self.inner.property(path);
        let remembered = Remembered::new(
            &mut self.store.borrow_mut(),
            |out| write_key(path, out),
            value.as_deref(),
        );
        let mut properties = self.properties.borrow_mut();
        if properties.capacity() == 0 {
            // The properties a callback reads, in one allocation.
            properties.reserve(12);
        }
        properties.push(remembered);
        value
    }

    fn call_foreign(&self, name: &str, argument: &[u8]) -> Result<Option<Bytes>, HostError> {
        self.inner.call_foreign(name, argument)
    }

    fn holds_properties(&self, paths: &[&str]) -> bool {
        self.inner.holds_properties(paths)
    }

    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError> {
        let store = self.store.borrow();
        self.properties
            .borrow_mut()
            .retain(|r| !is_key(r.key(&store), path));
        drop(store);
        // (Every entry is compared in full: a write is rare.)
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

    crate::host::forward_to_inner!();
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
        // A path's tag is its key's, whatever its segments.
        for path in [
            &["xds", "route_name"][..],
            &["xds"],
            &[],
            &[""],
            &["", ""],
            &["", "x"],
            &["x", ""],
            &["a\0b"],
            &["a", "b"],
            &["node", "metadata", "k.e.y"],
        ] {
            assert_eq!(tag_of_path(path), tag_of(&property_key(path)), "{path:?}");
        }
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

    /// Snapshots taken between rounds of writes (each laid over the last) and single reads
    /// through the writes pending since see what the proxy holds at that point.
    #[test]
    fn snapshots_between_writes_see_what_the_proxy_holds() {
        let host = TestHost::new();
        let map = MapKind::RequestHeaders;
        host.set_map(
            map,
            &[("a", "1"), ("b", "2"), ("a", "3"), ("x-envoy-c", "4")],
        );
        let phase = PhaseHost::new(&host);
        // The test host replaces a value in place where the map model appends (the order of
        // names is not what this checks; each name's values in order are).
        let sorted = |mut pairs: Vec<(String, Bytes)>| {
            pairs.sort_by(|x, y| x.0.cmp(&y.0));
            pairs
        };
        let check = |held: &[HeaderSnapshot]| {
            let now = phase.snapshot(map);
            assert_eq!(sorted(now.to_pairs()), sorted(host.headers(map)));
            assert_eq!(sorted(phase.headers(map)), sorted(host.headers(map)));
            for name in ["a", "b", "x-envoy-c", "d"] {
                assert_eq!(phase.header(map, name), host.header(map, name), "{name}");
                assert_eq!(
                    now.get_joined(name),
                    HeaderSnapshot::new(host.headers(map)).get_joined(name)
                );
            }
            let envoy: Vec<_> = now
                .iter_prefixed("x-envoy-")
                .map(|(n, _)| n.into_owned())
                .collect();
            let want: Vec<_> = host
                .headers(map)
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| n.starts_with("x-envoy-"))
                .collect();
            assert_eq!(envoy, want);
            // Snapshots taken earlier keep what they saw.
            for (i, old) in held.iter().enumerate() {
                assert_eq!(old.len(), [4, 3, 5, 3].get(i).copied().unwrap_or(0), "{i}");
            }
            now
        };
        let mut held = vec![check(&[])];
        phase.set_header(map, "a", Some(b"5"));
        held.push(check(&held));
        phase.add_header(map, "x-envoy-c", b"6");
        phase.add_header(map, "a", b"7");
        held.push(check(&held));
        phase.set_header(map, "x-envoy-c", None);
        phase.set_header(map, "b", Some(b"8"));
        assert_eq!(phase.header(map, "a"), Some(b"5".to_vec()));
        held.push(check(&held));
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
