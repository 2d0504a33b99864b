//! The `Host` trait: everything a filter may ask of the proxy, independent of whether the proxy
//! is a real Envoy (the ABI module) or the in-process test host (`crate::testing`).

use std::fmt;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// Raw bytes as they cross the proxy-wasm ABI.
pub type Bytes = Vec<u8>;

/// A header or trailer map of the current stream, or of an HTTP callout's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// Request headers (downstream to upstream).
    RequestHeaders,
    /// Request trailers.
    RequestTrailers,
    /// Response headers (upstream to downstream).
    ResponseHeaders,
    /// Response trailers.
    ResponseTrailers,
    /// Headers of an HTTP callout's response (only inside `on_callout_response`).
    CalloutResponseHeaders,
    /// Trailers of an HTTP callout's response.
    CalloutResponseTrailers,
}

/// A body-like buffer the host holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// The request body chunk currently being processed.
    RequestBody,
    /// The response body chunk currently being processed.
    ResponseBody,
    /// The body of an HTTP callout's response.
    CalloutResponseBody,
    /// The plugin configuration (`config.configuration` in Envoy).
    PluginConfiguration,
    /// The VM configuration (`vm_config.configuration` in Envoy).
    VmConfiguration,
}

/// The kind of a host metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge that can go up and down.
    Gauge,
    /// Histogram of recorded values.
    Histogram,
}

/// Why a host call failed. Filters decide on it; the SDK never panics on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The thing asked for does not exist (metric id, property, cluster).
    NotFound,
    /// The host refused an argument (for example an unknown callout cluster).
    BadArgument,
    /// Shared data changed since it was read: read again and retry.
    CasMismatch,
    /// The host does not implement this call.
    Unimplemented,
    /// Any other failure, with the host's status.
    Other(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::NotFound => f.write_str("not found"),
            HostError::BadArgument => f.write_str("bad argument"),
            HostError::CasMismatch => f.write_str("compare-and-swap mismatch"),
            HostError::Unimplemented => f.write_str("unimplemented"),
            HostError::Other(s) => write!(f, "host error: {s}"),
        }
    }
}

impl std::error::Error for HostError {}

/// All headers of one map, read with a single host call ([`Host::snapshot`]). On a hot path,
/// reading the map once and looking names up locally costs one hostcall where reading each
/// header costs one per name (present or not).
///
/// The pairs stay in one buffer (in Envoy, the very buffer the host returned) with an index of
/// where each name and value lies: reading a map costs one allocation for the index, not two
/// per header. Clones share the buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderSnapshot {
    data: Rc<Indexed>,
}

/// A map's bytes and where each pair's name and value lie in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Indexed {
    buf: Vec<u8>,
    spans: Vec<(Range<usize>, Range<usize>)>,
}

/// A change to a map, in the order it was made (see [`HeaderSnapshot::edited`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Every value of the name replaced by this one (`None`: removed).
    Set(String, Option<Bytes>),
    /// A value appended for the name.
    Add(String, Bytes),
}

impl HeaderSnapshot {
    /// A snapshot of `pairs` (names as the host keeps them: lowercase).
    pub fn new(pairs: Vec<(String, Bytes)>) -> HeaderSnapshot {
        let pairs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_slice()))
            .collect();
        HeaderSnapshot::build(&pairs)
    }

    /// A snapshot over `buf` whose pairs lie at `spans` (from [`crate::wire::index_map`]).
    /// A span outside `buf` is dropped, never a panic.
    pub fn from_index(buf: Vec<u8>, spans: Vec<(Range<usize>, Range<usize>)>) -> HeaderSnapshot {
        let len = buf.len();
        let mut spans = spans;
        spans.retain(|(n, v)| n.start <= n.end && n.end <= len && v.start <= v.end && v.end <= len);
        HeaderSnapshot {
            data: Rc::new(Indexed { buf, spans }),
        }
    }

    fn build(pairs: &[(&[u8], &[u8])]) -> HeaderSnapshot {
        let bytes = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let mut indexed = Indexed {
            buf: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(pairs.len()),
        };
        for (name, value) in pairs {
            let n = indexed.buf.len();
            indexed.buf.extend_from_slice(name);
            let v = indexed.buf.len();
            indexed.buf.extend_from_slice(value);
            indexed.spans.push((n..v, v..indexed.buf.len()));
        }
        HeaderSnapshot {
            data: Rc::new(indexed),
        }
    }

    /// This map with `edits` applied in order, as the proxy applies them: a `Set` removes every
    /// value of its name (the map's and earlier edits') and appends its own, an `Add` appends.
    /// Built in one pass at its final size, without moving pairs around.
    pub fn edited(&self, edits: &[Edit]) -> HeaderSnapshot {
        // Whether a `Set` of `name` comes at or after edit `from` (and so removes it).
        let set_from = |name: &[u8], from: usize| {
            edits.get(from..).unwrap_or_default().iter().any(
                |e| matches!(e, Edit::Set(n, _) if n.len() == name.len() && n.as_bytes() == name),
            )
        };
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::with_capacity(self.len() + edits.len());
        pairs.extend(self.iter_bytes().filter(|(name, _)| !set_from(name, 0)));
        for (i, edit) in edits.iter().enumerate() {
            let (name, value) = match edit {
                Edit::Set(name, Some(value)) | Edit::Add(name, value) => (name, value),
                Edit::Set(_, None) => continue,
            };
            if !set_from(name.as_bytes(), i + 1) {
                pairs.push((name.as_bytes(), value));
            }
        }
        HeaderSnapshot::build(&pairs)
    }

    /// The first value of `name` in this map with `edits` applied, without building that map:
    /// the last edit of `name` decides (a `Set` replaced every value, an `Add` after a `Set`
    /// comes after it); with no edit of it, the map's own first value.
    pub fn get_edited<'a>(&'a self, edits: &'a [Edit], name: &str) -> Option<&'a [u8]> {
        // The first value after the edits: the map's own first value unless a `Set` replaced
        // them all, in which case the first value added since (by that `Set` or a later `Add`).
        let last_set = edits
            .iter()
            .rposition(|e| matches!(e, Edit::Set(n, _) if n == name));
        let Some(at) = last_set else {
            return self.get(name).or_else(|| {
                edits.iter().find_map(|e| match e {
                    Edit::Add(n, v) if n == name => Some(v.as_slice()),
                    _ => None,
                })
            });
        };
        edits[at..].iter().find_map(|e| match e {
            Edit::Set(n, v) if n == name => v.as_deref(),
            Edit::Add(n, v) if n == name => Some(v.as_slice()),
            _ => None,
        })
    }

    fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let buf = &self.data.buf;
        self.data.spans.iter().map(move |(n, v)| {
            (
                buf.get(n.clone()).unwrap_or_default(),
                buf.get(v.clone()).unwrap_or_default(),
            )
        })
    }

    /// The values of `name`, in order. Names are compared by length first: most lookups are
    /// of names the map does not have, and a length check rejects most pairs at once.
    /// The first value of `name` at or after pair `from`, and the pair after it.
    fn find(&self, name: &str, from: usize) -> Option<(&[u8], usize)> {
        let buf = &self.data.buf;
        let want = name.as_bytes();
        let spans = self.data.spans.get(from..)?;
        spans.iter().enumerate().find_map(|(i, (n, v))| {
            if n.len() != want.len() || buf.get(n.clone())? != want {
                return None;
            }
            Some((buf.get(v.clone())?, from + i + 1))
        })
    }

    /// The first value of `name` (lowercase), as bytes.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.find(name, 0).map(|(v, _)| v)
    }
    /// The first value of `name` as text (lossy UTF-8, as [`Host::header_str`]).
    pub fn get_str(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.get(name).map(String::from_utf8_lossy)
    }
    /// Every value of `name` as one text (lossy UTF-8), the field lines combined as RFC 9110
    /// section 5.3 combines a list-based field: in order, joined with `,`. What W3C Trace
    /// Context (`tracestate`) and W3C Baggage (`baggage`) ask of a receiver of several fields.
    /// A single value is borrowed, not copied.
    pub fn get_joined(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let (first, mut next) = self.find(name, 0)?;
        let Some((second, after)) = self.find(name, next) else {
            return Some(String::from_utf8_lossy(first));
        };
        next = after;
        let mut joined = String::from_utf8_lossy(first).into_owned();
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(second));
        while let Some((value, after)) = self.find(name, next) {
            joined.push(',');
            joined.push_str(&String::from_utf8_lossy(value));
            next = after;
        }
        Some(std::borrow::Cow::Owned(joined))
    }
    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// Every pair, in order: the name as text (lossy UTF-8, borrowed when it is valid, as every
    /// real header name is), the value as bytes.
    pub fn iter(&self) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &[u8])> + '_ {
        self.iter_bytes()
            .map(|(k, v)| (String::from_utf8_lossy(k), v))
    }
    /// Every pair, owned.
    pub fn to_pairs(&self) -> Vec<(String, Bytes)> {
        self.iter()
            .map(|(k, v)| (k.into_owned(), v.to_vec()))
            .collect()
    }
    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.data.spans.len()
    }
    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.data.spans.is_empty()
    }
}

/// What a filter may ask of the proxy. Implemented by the real proxy-wasm host (wasm32 only) and
/// by [`crate::testing::TestHost`]. Every method is total: failures come back as values.
pub trait Host {
    /// One header (first value) of a map, as raw bytes; `None` when absent.
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes>;
    /// All headers of a map in order, names lowercase as the host keeps them.
    fn headers(&self, map: MapKind) -> Vec<(String, Bytes)>;
    /// Replaces every value of `name` with `value`, or removes it when `value` is `None`.
    fn set_header(&self, map: MapKind, name: &str, value: Option<&[u8]>);
    /// Appends a value for `name`, keeping existing ones.
    fn add_header(&self, map: MapKind, name: &str, value: &[u8]);
    /// Up to `max` bytes of a buffer from `start`; `None` when the buffer is absent.
    fn buffer(&self, kind: BufferKind, start: usize, max: usize) -> Option<Bytes>;
    /// Replaces `size` bytes at `start` of a buffer with `value`.
    fn set_buffer(
        &self,
        kind: BufferKind,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), HostError>;
    /// A property (Envoy attribute) in its wire form; see [`crate::properties`] to decode it.
    fn property(&self, path: &[&str]) -> Option<Bytes>;
    /// Sets a filter-state property.
    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError>;
    /// The host's current wall-clock time.
    fn now(&self) -> SystemTime;
    /// Asks for `on_tick` every `period` (zero disables). Root context only.
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError>;
    /// Defines (or finds) a metric by name and returns its id.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Adds `offset` to a counter or gauge.
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostError>;
    /// Sets a gauge, or records a value into a histogram.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    /// Reads a counter or gauge.
    fn metric(&self, id: u32) -> Result<u64, HostError>;
    /// Reads shared data (shared by every VM with the same `vm_id`) and its CAS token:
    /// `Ok((None, None))` when the key does not exist. An error means the read failed, which a
    /// filter must not take for absence (writing without a CAS token would overwrite the value).
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), HostError>;
    /// Writes shared data; with `cas`, fails with [`HostError::CasMismatch`] if it changed.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;
    /// Starts an HTTP callout to an Envoy cluster; the answer arrives in the root's
    /// `on_callout_response` with the returned token.
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// Answers the downstream directly, without going upstream.
    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError>;
    /// Resumes a request paused by a filter.
    fn resume_request(&self) -> Result<(), HostError>;
    /// Resumes a response paused by a filter.
    fn resume_response(&self) -> Result<(), HostError>;
    /// An environment variable of the VM: in Envoy, one of `vm_config.environment_variables`
    /// (`host_env_keys` passes the host's, `key_values` sets literal ones); read at configure
    /// time, never per request.
    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    /// Every header of a map, read once; see [`HeaderSnapshot`].
    fn snapshot(&self, map: MapKind) -> HeaderSnapshot {
        HeaderSnapshot::new(self.headers(map))
    }
    /// A header as text (lossy UTF-8: invalid bytes become U+FFFD, which no codec accepts).
    fn header_str(&self, map: MapKind, name: &str) -> Option<String> {
        self.header(map, name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
    /// A request header as text.
    fn request_header(&self, name: &str) -> Option<String> {
        self.header_str(MapKind::RequestHeaders, name)
    }
    /// A response header as text.
    fn response_header(&self, name: &str) -> Option<String> {
        self.header_str(MapKind::ResponseHeaders, name)
    }
    /// Sets (replaces) a request header.
    fn set_request_header(&self, name: &str, value: &str) {
        self.set_header(MapKind::RequestHeaders, name, Some(value.as_bytes()))
    }
    /// Sets (replaces) a response header.
    fn set_response_header(&self, name: &str, value: &str) {
        self.set_header(MapKind::ResponseHeaders, name, Some(value.as_bytes()))
    }
    /// Removes a request header.
    fn remove_request_header(&self, name: &str) {
        self.set_header(MapKind::RequestHeaders, name, None)
    }
    /// Removes a response header.
    fn remove_response_header(&self, name: &str) {
        self.set_header(MapKind::ResponseHeaders, name, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn edits_apply_in_order_as_the_proxy_applies_them() {
        let base = HeaderSnapshot::new(vec![
            ("a".into(), b"1".to_vec()),
            ("b".into(), b"2".to_vec()),
            ("a".into(), b"3".to_vec()),
        ]);
        let edited = base.edited(&[
            Edit::Add("b".into(), b"4".to_vec()),
            Edit::Set("a".into(), Some(b"5".to_vec())),
            Edit::Set("c".into(), None),
            Edit::Add("c".into(), b"6".to_vec()),
        ]);
        let pairs = edited.to_pairs();
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["b", "b", "a", "c"]);
        assert_eq!(edited.get_joined("b").as_deref(), Some("2,4"));
        assert_eq!(edited.get("a"), Some(&b"5"[..]));
        // The base is untouched (a filter holding it keeps what it saw).
        assert_eq!(base.get_joined("a").as_deref(), Some("1,3"));
        assert_eq!(base.len(), 3);
    }

    /// A single lookup through pending edits answers what the rebuilt map would, for every
    /// order of sets, removals and additions of the name (and of another name).
    #[test]
    fn a_lookup_through_edits_agrees_with_the_edited_map() {
        let base = HeaderSnapshot::new(vec![
            ("a".into(), b"1".to_vec()),
            ("b".into(), b"2".to_vec()),
            ("a".into(), b"3".to_vec()),
        ]);
        let moves = [
            Edit::Set("a".into(), Some(b"5".to_vec())),
            Edit::Set("a".into(), None),
            Edit::Add("a".into(), b"6".to_vec()),
            Edit::Set("c".into(), Some(b"7".to_vec())),
            Edit::Add("c".into(), b"8".to_vec()),
            Edit::Set("b".into(), None),
        ];
        // Every sequence of up to three moves.
        let mut sequences: Vec<Vec<Edit>> = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<Edit>> = sequences
                .iter()
                .flat_map(|seq| {
                    moves.iter().map(move |m| {
                        let mut next = seq.clone();
                        next.push(m.clone());
                        next
                    })
                })
                .collect();
            sequences.extend(longer);
        }
        for edits in &sequences {
            let rebuilt = base.edited(edits);
            for name in ["a", "b", "c", "d"] {
                assert_eq!(
                    base.get_edited(edits, name),
                    rebuilt.get(name),
                    "{name} after {edits:?}"
                );
            }
        }
    }

    #[test]
    fn an_index_outside_the_buffer_is_dropped_not_a_panic() {
        let snapshot = HeaderSnapshot::from_index(
            b"namevalue".to_vec(),
            vec![(0..4, 4..9), (4..20, 0..1), (5..9, 0..20)],
        );
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot.get("name"), Some(&b"value"[..]));
        let wire = crate::wire::encode_map(&[("x", "1"), ("é", "2")]).unwrap_or_default();
        let index = crate::wire::index_map(&wire);
        let snapshot = HeaderSnapshot::from_index(wire, index.spans);
        assert_eq!(snapshot.get("é"), Some(&b"2"[..]));
        assert_eq!(snapshot.iter().count(), 2);
    }

    #[test]
    fn get_joined_combines_field_lines_in_order() {
        let pairs = |list: &[(&str, &[u8])]| {
            HeaderSnapshot::new(
                list.iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
            )
        };
        let one = pairs(&[("tracestate", b"a=1"), ("x", b"y")]);
        assert!(matches!(
            one.get_joined("tracestate"),
            Some(Cow::Borrowed("a=1"))
        ));
        let three = pairs(&[
            ("tracestate", b"a=1"),
            ("x", b"y"),
            ("tracestate", b""),
            ("tracestate", b"b=2,c=3"),
        ]);
        assert_eq!(
            three.get_joined("tracestate").as_deref(),
            Some("a=1,,b=2,c=3")
        );
        assert_eq!(three.get_str("tracestate").as_deref(), Some("a=1"));
        assert_eq!(three.get_joined("baggage"), None);
        let bad = pairs(&[("b", &[0xff]), ("b", b"k=v")]);
        assert_eq!(bad.get_joined("b").as_deref(), Some("\u{fffd},k=v"));
    }
}
