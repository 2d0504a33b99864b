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
///
/// A snapshot may also carry writes made to the map after it was read (see
/// [`crate::compose::PhaseHost`]): every method then answers for the map with those writes
/// applied, as the proxy applies them, without building that map. Two snapshots are equal when
/// they hold the same pairs in the same order.
#[derive(Clone, Debug, Default)]
pub struct HeaderSnapshot {
    data: Rc<Indexed>,
    /// Writes made since the map was read, in order (`None`: none).
    overlay: Option<Rc<EditLog>>,
}

impl PartialEq for HeaderSnapshot {
    fn eq(&self, other: &HeaderSnapshot) -> bool {
        self.pairs().eq(other.pairs())
    }
}

impl Eq for HeaderSnapshot {}

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

/// Writes to a map in order, as [`Edit`]s are, but every name and value in one buffer: recording
/// a write costs no allocation of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EditLog {
    buf: Vec<u8>,
    ops: Vec<Op>,
    /// A bit for each name written (see [`name_bit`]): a name whose bit is clear was not, and a
    /// lookup of it skips the writes.
    names: u64,
}

/// The bit of `name` in [`EditLog::names`], from its length and last byte.
fn name_bit(name: &[u8]) -> u64 {
    let last = name.last().copied().unwrap_or(0);
    1 << ((name.len().wrapping_mul(7) ^ usize::from(last)) & 63)
}

/// One write in an [`EditLog`]: its name at `buf[start..start + name]`, its value right after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Op {
    start: usize,
    name: usize,
    value: usize,
    kind: OpKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Remove,
    Set,
    Add,
}

/// One write seen through [`Layer`]: a `Set` (with `None`: a removal) or an `Add`.
#[derive(Clone, Copy)]
struct EditRef<'a> {
    set: bool,
    name: &'a [u8],
    value: Option<&'a [u8]>,
}

/// A sequence of writes: as the overlay keeps them ([`EditLog`], what filters read through), or
/// a public [`Edit`] list ([`HeaderSnapshot::get_edited`], which borrows its answer from it).
trait Layer {
    fn count(&self) -> usize;
    fn at(&self, i: usize) -> Option<EditRef<'_>>;
    /// Whether write `i` is a `Set` (or removal) of `name`.
    fn sets(&self, i: usize, name: &[u8]) -> bool {
        self.at(i).is_some_and(|e| e.set && e.name == name)
    }
    /// Whether some write may be of `name` (`false`: none is).
    fn may_write(&self, _name: &[u8]) -> bool {
        true
    }
}

impl Layer for [Edit] {
    fn count(&self) -> usize {
        self.len()
    }
    fn at(&self, i: usize) -> Option<EditRef<'_>> {
        Some(match self.get(i)? {
            Edit::Set(name, value) => EditRef {
                set: true,
                name: name.as_bytes(),
                value: value.as_deref(),
            },
            Edit::Add(name, value) => EditRef {
                set: false,
                name: name.as_bytes(),
                value: Some(value),
            },
        })
    }
}

impl Layer for EditLog {
    fn count(&self) -> usize {
        self.ops.len()
    }
    fn at(&self, i: usize) -> Option<EditRef<'_>> {
        let op = self.ops.get(i)?;
        let value_at = op.start.checked_add(op.name)?;
        let name = self.buf.get(op.start..value_at)?;
        let value = match op.kind {
            OpKind::Remove => None,
            OpKind::Set | OpKind::Add => {
                Some(self.buf.get(value_at..value_at.checked_add(op.value)?)?)
            }
        };
        Some(EditRef {
            set: op.kind != OpKind::Add,
            name,
            value,
        })
    }
    fn may_write(&self, name: &[u8]) -> bool {
        self.names & name_bit(name) != 0
    }
    /// Without slicing a write that cannot match: its kind and length are checked first.
    fn sets(&self, i: usize, name: &[u8]) -> bool {
        self.ops.get(i).is_some_and(|op| {
            op.kind != OpKind::Add
                && op.name == name.len()
                && self.buf.get(op.start..op.start + op.name) == Some(name)
        })
    }
}

impl EditLog {
    /// Records a `Set` (`value` `None`: a removal) or, with `add`, an `Add`.
    pub(crate) fn push(&mut self, add: bool, name: &str, value: Option<&[u8]>) {
        let kind = match (add, value) {
            (true, _) => OpKind::Add,
            (false, Some(_)) => OpKind::Set,
            (false, None) => OpKind::Remove,
        };
        let value = value.unwrap_or_default();
        if self.ops.is_empty() {
            // A callback makes a handful of writes: one allocation each for all of them.
            self.ops.reserve(8);
            self.buf.reserve(512);
        }
        self.names |= name_bit(name.as_bytes());
        let start = self.buf.len();
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(value);
        self.ops.push(Op {
            start,
            name: name.len(),
            value: value.len(),
            kind,
        });
    }

    /// `edits`, recorded in order.
    fn of(edits: &[Edit]) -> EditLog {
        let mut log = EditLog::default();
        for edit in edits {
            match edit {
                Edit::Set(name, value) => log.push(false, name, value.as_deref()),
                Edit::Add(name, value) => log.push(true, name, Some(value)),
            }
        }
        log
    }

    /// Whether no write is recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// These writes followed by `later`'s.
    fn extend(&mut self, later: &EditLog) {
        let offset = self.buf.len();
        self.names |= later.names;
        self.buf.extend_from_slice(&later.buf);
        self.ops.extend(later.ops.iter().map(|op| Op {
            start: op.start + offset,
            ..*op
        }));
    }
}

/// The writes of `layer` from `from` on, with their index.
fn ops_from<L: Layer + ?Sized>(
    layer: &L,
    from: usize,
) -> impl Iterator<Item = (usize, EditRef<'_>)> {
    (from..layer.count()).filter_map(move |i| layer.at(i).map(|e| (i, e)))
}

/// Whether `layer` (if any) sets or removes `name` at or after write `from`.
fn sets_from<L: Layer + ?Sized>(layer: Option<&L>, from: usize, name: &[u8]) -> bool {
    layer.is_some_and(|l| l.may_write(name) && (from..l.count()).any(|i| l.sets(i, name)))
}

/// The value of the first `Add` of `name` in `layer`.
fn first_add<'a, L: Layer + ?Sized>(layer: Option<&'a L>, name: &[u8]) -> Option<&'a [u8]> {
    let layer = layer.filter(|l| l.may_write(name))?;
    ops_from(layer, 0).find_map(|(_, e)| {
        if !e.set && e.name == name {
            e.value
        } else {
            None
        }
    })
}

/// The first value of `name` that `layer` gives after its last `Set` of it; `None` when it sets
/// no value of `name` (`Some(None)`: it removes the name and adds none since).
fn after_last_set<'a, L: Layer + ?Sized>(
    layer: Option<&'a L>,
    name: &[u8],
) -> Option<Option<&'a [u8]>> {
    let layer = layer.filter(|l| l.may_write(name))?;
    let at = (0..layer.count()).rev().find(|&i| layer.sets(i, name))?;
    // The `Set`'s own value, else the first value added after it.
    Some(ops_from(layer, at).find_map(|(_, e)| if e.name == name { e.value } else { None }))
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
        let inside = |(n, v): &(Range<usize>, Range<usize>)| {
            n.start <= n.end && n.end <= len && v.start <= v.end && v.end <= len
        };
        // Checked first, removed only if one is outside (never, for an index of `buf`).
        if !spans.iter().all(inside) {
            spans.retain(inside);
        }
        HeaderSnapshot {
            data: Rc::new(Indexed { buf, spans }),
            overlay: None,
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
            overlay: None,
        }
    }

    /// This map with `edits` applied in order, as the proxy applies them: a `Set` removes every
    /// value of its name (the map's and earlier edits') and appends its own, an `Add` appends.
    /// Built in one pass at its final size, without moving pairs around.
    pub fn edited(&self, edits: &[Edit]) -> HeaderSnapshot {
        let later = EditLog::of(edits);
        let pairs: Vec<(&[u8], &[u8])> = self.pairs_through(Some(&later), |_| true).collect();
        HeaderSnapshot::build(&pairs)
    }

    /// The first value of `name` in this map with `edits` applied, without building that map:
    /// the last edit of `name` decides (a `Set` replaced every value, an `Add` after a `Set`
    /// comes after it); with no edit of it, the map's own first value.
    pub fn get_edited<'a>(&'a self, edits: &'a [Edit], name: &str) -> Option<&'a [u8]> {
        self.first_through(Some(edits), name.as_bytes())
    }

    /// This snapshot with `later` (writes made after the ones it carries) applied on top,
    /// without building the map: lookups and iteration go through the writes.
    pub(crate) fn with_edits(&self, later: EditLog) -> HeaderSnapshot {
        let overlay = match &self.overlay {
            None => later,
            Some(earlier) => {
                let mut all = EditLog::clone(earlier);
                all.extend(&later);
                all
            }
        };
        HeaderSnapshot {
            data: Rc::clone(&self.data),
            overlay: Some(Rc::new(overlay)),
        }
    }

    /// The first value of `name` in this map with `later` applied after its own writes.
    pub(crate) fn get_through<'a>(&'a self, later: &'a EditLog, name: &str) -> Option<&'a [u8]> {
        self.first_through(Some(later), name.as_bytes())
    }

    /// The first value of `name` after the overlay's writes and then `later`'s: the last `Set`
    /// of the name decides (its value, else the first added after it); without one, the map's
    /// own first value, else the first added.
    fn first_through<'a, L: Layer + ?Sized>(
        &'a self,
        later: Option<&'a L>,
        name: &[u8],
    ) -> Option<&'a [u8]> {
        if let Some(found) = after_last_set(later, name) {
            return found;
        }
        let overlay = self.overlay.as_deref();
        if let Some(found) = after_last_set(overlay, name) {
            return found.or_else(|| first_add(later, name));
        }
        self.find(name)
            .or_else(|| first_add(overlay, name))
            .or_else(|| first_add(later, name))
    }

    /// Every pair whose name `keep` accepts, in order, after the overlay's writes and then
    /// `later`'s: the map's pairs whose name no write sets, then each written value that no
    /// later `Set` of its name replaces. `keep` is asked first, so a pair it refuses costs no
    /// look at the writes.
    fn pairs_through<'a: 'k, 'k, L: Layer + ?Sized>(
        &'a self,
        later: Option<&'a L>,
        keep: impl Fn(&[u8]) -> bool + Copy + 'k,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'k {
        let overlay = self.overlay.as_deref();
        let base = self.iter_bytes().filter(move |(name, _)| {
            keep(name) && !sets_from(overlay, 0, name) && !sets_from(later, 0, name)
        });
        let written = overlay
            .into_iter()
            .flat_map(|o| ops_from(o, 0))
            .filter_map(move |(i, e)| {
                let value = e.value?;
                (keep(e.name) && !sets_from(overlay, i + 1, e.name) && !sets_from(later, 0, e.name))
                    .then_some((e.name, value))
            });
        let written_later =
            later
                .into_iter()
                .flat_map(|l| ops_from(l, 0))
                .filter_map(move |(i, e)| {
                    let value = e.value?;
                    (keep(e.name) && !sets_from(later, i + 1, e.name)).then_some((e.name, value))
                });
        base.chain(written).chain(written_later)
    }

    /// Every pair of the map as it is (with the writes it carries), in order.
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.pairs_through(None::<&EditLog>, |_| true)
    }

    /// The pairs of the map as it was read.
    fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let buf = &self.data.buf;
        self.data.spans.iter().map(move |(n, v)| {
            (
                buf.get(n.clone()).unwrap_or_default(),
                buf.get(v.clone()).unwrap_or_default(),
            )
        })
    }

    /// The first value of `name` in the map as it was read. Names are compared by length
    /// first: most lookups are of names the map does not have, and a length check rejects most
    /// pairs at once.
    fn find(&self, want: &[u8]) -> Option<&[u8]> {
        self.values_read(want).next()
    }

    /// The values of `want` in the map as it was read, in order (names compared as in
    /// [`HeaderSnapshot::find`]).
    fn values_read<'a: 'k, 'k>(&'a self, want: &'k [u8]) -> impl Iterator<Item = &'a [u8]> + 'k {
        let buf = &self.data.buf;
        self.data.spans.iter().filter_map(move |(n, v)| {
            if n.len() != want.len() || buf.get(n.clone())? != want {
                return None;
            }
            buf.get(v.clone())
        })
    }

    /// The first value of `name` (lowercase), as bytes.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match self.overlay {
            None => self.find(name.as_bytes()),
            Some(_) => self.first_through(None::<&EditLog>, name.as_bytes()),
        }
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
        let want = name.as_bytes();
        match self.overlay {
            None => joined(self.values_read(want)),
            Some(_) => joined(
                self.pairs_through(None::<&EditLog>, move |n| n == want)
                    .map(|(_, v)| v),
            ),
        }
    }
    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// Every pair, in order: the name as text (lossy UTF-8, borrowed when it is valid, as every
    /// real header name is), the value as bytes.
    pub fn iter(&self) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &[u8])> + '_ {
        self.iter_prefixed("")
    }
    /// The pairs whose name starts with `prefix`, in order, as [`HeaderSnapshot::iter`] gives
    /// them (the prefix compared on the name's bytes): a filter after a family of headers
    /// (`x-envoy-`) looks at no other pair further than its first bytes.
    pub fn iter_prefixed<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (std::borrow::Cow<'a, str>, &'a [u8])> + 'a {
        Prefixed {
            snapshot: self,
            prefix: prefix.as_bytes(),
            next_read: 0,
            next_write: 0,
        }
    }
    /// Every pair, owned.
    pub fn to_pairs(&self) -> Vec<(String, Bytes)> {
        self.iter()
            .map(|(k, v)| (k.into_owned(), v.to_vec()))
            .collect()
    }
    /// The number of pairs.
    pub fn len(&self) -> usize {
        match self.overlay {
            None => self.data.spans.len(),
            Some(_) => self.pairs().count(),
        }
    }
    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.pairs().next().is_none()
    }
}

/// The iterator of [`HeaderSnapshot::iter_prefixed`]: the pairs of the map as read whose name
/// no write sets, then each written value no later write replaces (as
/// [`HeaderSnapshot::pairs`] orders them). A concrete type with its own `next`, compiled once
/// in the SDK rather than as a chain of adapters in each caller: a caller's loop over a map
/// pays a few instructions per pair passed over.
struct Prefixed<'a> {
    snapshot: &'a HeaderSnapshot,
    prefix: &'a [u8],
    /// The next pair of the map as read to look at.
    next_read: usize,
    /// The next write of the overlay to look at (after every pair read).
    next_write: usize,
}

impl<'a> Iterator for Prefixed<'a> {
    type Item = (std::borrow::Cow<'a, str>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let data = &self.snapshot.data;
        let overlay = self.snapshot.overlay.as_deref();
        while let Some((n, v)) = data.spans.get(self.next_read) {
            self.next_read += 1;
            let name = data.buf.get(n.clone()).unwrap_or_default();
            if has_prefix(name, self.prefix) && !sets_from(overlay, 0, name) {
                let value = data.buf.get(v.clone()).unwrap_or_default();
                return Some((String::from_utf8_lossy(name), value));
            }
        }
        let overlay = overlay?;
        while self.next_write < overlay.count() {
            let i = self.next_write;
            self.next_write += 1;
            let Some(e) = overlay.at(i) else { continue };
            if let Some(value) = e.value {
                if has_prefix(e.name, self.prefix) && !sets_from(Some(overlay), i + 1, e.name) {
                    return Some((String::from_utf8_lossy(e.name), value));
                }
            }
        }
        None
    }
}

/// Whether `name` starts with `prefix`, compared byte by byte up to the first difference (most
/// names differ within their first bytes; a whole-prefix comparison costs more than the loop).
fn has_prefix(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(a, b)| a == b)
}

/// Values as one text, joined with `,` (see [`HeaderSnapshot::get_joined`]); a single value
/// borrowed.
fn joined<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<std::borrow::Cow<'a, str>> {
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(String::from_utf8_lossy(first));
    };
    let mut joined = String::from_utf8_lossy(first).into_owned();
    joined.push(',');
    joined.push_str(&String::from_utf8_lossy(second));
    for value in values {
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(value));
    }
    Some(std::borrow::Cow::Owned(joined))
}

/// The [`Host`] methods a wrapping host (one with an `inner: &dyn Host` field) passes through
/// unchanged because it keeps nothing of its own for them: body buffers, the tick, metrics,
/// shared data, callouts, local replies, resumption and the environment. Written once for the SDK's wrappers
/// ([`crate::compose::PhaseHost`], the property batch's prefetched host).
macro_rules! forward_to_inner {
    () => {
        fn buffer(
            &self,
            kind: $crate::host::BufferKind,
            start: usize,
            max: usize,
        ) -> Option<$crate::host::Bytes> {
            self.inner.buffer(kind, start, max)
        }
        fn set_buffer(
            &self,
            kind: $crate::host::BufferKind,
            start: usize,
            size: usize,
            value: &[u8],
        ) -> Result<(), $crate::host::HostError> {
            self.inner.set_buffer(kind, start, size, value)
        }
        fn set_tick_period(
            &self,
            period: std::time::Duration,
        ) -> Result<(), $crate::host::HostError> {
            self.inner.set_tick_period(period)
        }
        fn define_metric(
            &self,
            kind: $crate::host::MetricKind,
            name: &str,
        ) -> Result<u32, $crate::host::HostError> {
            self.inner.define_metric(kind, name)
        }
        fn increment_metric(&self, id: u32, offset: i64) -> Result<(), $crate::host::HostError> {
            self.inner.increment_metric(id, offset)
        }
        fn record_metric(&self, id: u32, value: u64) -> Result<(), $crate::host::HostError> {
            self.inner.record_metric(id, value)
        }
        fn metric(&self, id: u32) -> Result<u64, $crate::host::HostError> {
            self.inner.metric(id)
        }
        fn shared_data(
            &self,
            key: &str,
        ) -> Result<(Option<$crate::host::Bytes>, Option<u32>), $crate::host::HostError> {
            self.inner.shared_data(key)
        }
        fn set_shared_data(
            &self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), $crate::host::HostError> {
            self.inner.set_shared_data(key, value, cas)
        }
        fn http_call(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: Option<&[u8]>,
            timeout: std::time::Duration,
        ) -> Result<u32, $crate::host::HostError> {
            self.inner.http_call(cluster, headers, body, timeout)
        }
        fn send_response(
            &self,
            status: u32,
            headers: &[(&str, &str)],
            body: Option<&[u8]>,
        ) -> Result<(), $crate::host::HostError> {
            self.inner.send_response(status, headers, body)
        }
        fn resume_request(&self) -> Result<(), $crate::host::HostError> {
            self.inner.resume_request()
        }
        fn resume_response(&self) -> Result<(), $crate::host::HostError> {
            self.inner.resume_response()
        }
        fn env_var(&self, name: &str) -> Option<String> {
            self.inner.env_var(name)
        }
    };
}
pub(crate) use forward_to_inner;

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
    /// Calls one of the proxy's foreign functions (`proxy_call_foreign_function`) with
    /// `argument`; its answer, if any. Envoy's include `expr_create` and `expr_evaluate` (CEL
    /// expressions, see [`crate::batch`]). Hosts without them answer
    /// [`HostError::Unimplemented`].
    fn call_foreign(&self, name: &str, argument: &[u8]) -> Result<Option<Bytes>, HostError> {
        let _ = (name, argument);
        Err(HostError::Unimplemented)
    }
    /// Whether a [`crate::batch::PropertyBatch`] of these properties would gain nothing over
    /// this host: it already holds every value (a [`crate::compose::PhaseHost`] that read
    /// them), or a batch already failed in this callback (the reads go one by one).
    fn holds_properties(&self, paths: &[&str]) -> bool {
        let _ = paths;
        false
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

    /// A map with a repeated name and a name that is a suffix of another (`b`, `cb`), and
    /// moves that set, remove and add names it has and one it has not (`c`).
    fn map_and_moves() -> (HeaderSnapshot, [Edit; 7]) {
        let base = HeaderSnapshot::new(vec![
            ("a".into(), b"1".to_vec()),
            ("b".into(), b"2".to_vec()),
            ("a".into(), b"3".to_vec()),
            ("cb".into(), b"4".to_vec()),
        ]);
        let moves = [
            Edit::Set("a".into(), Some(b"5".to_vec())),
            Edit::Set("a".into(), None),
            Edit::Add("a".into(), b"6".to_vec()),
            Edit::Set("c".into(), Some(b"7".to_vec())),
            Edit::Add("c".into(), b"8".to_vec()),
            Edit::Set("b".into(), None),
            Edit::Add("cb".into(), b"9".to_vec()),
        ];
        (base, moves)
    }

    /// Every sequence of up to three of `moves`, the empty one included (with repeats, in
    /// every order: 1 + n + n^2 + n^3 sequences).
    fn sequences_of(moves: &[Edit]) -> Vec<Vec<Edit>> {
        let mut sequences: Vec<Vec<Edit>> = vec![Vec::new()];
        let mut last: Vec<Vec<Edit>> = vec![Vec::new()];
        for _ in 0..3 {
            last = last
                .iter()
                .flat_map(|seq| {
                    moves.iter().map(move |m| {
                        let mut next = seq.clone();
                        next.push(m.clone());
                        next
                    })
                })
                .collect();
            sequences.extend(last.iter().cloned());
        }
        sequences
    }

    /// A single lookup through pending edits answers what the rebuilt map would, for every
    /// order of sets, removals and additions of the name (and of another name).
    #[test]
    fn a_lookup_through_edits_agrees_with_the_edited_map() {
        let (base, moves) = map_and_moves();
        let sequences = sequences_of(&moves);
        for edits in &sequences {
            let rebuilt = base.edited(edits);
            for name in ["a", "b", "c", "cb", "d"] {
                assert_eq!(
                    base.get_edited(edits, name),
                    rebuilt.get(name),
                    "{name} after {edits:?}"
                );
            }
        }
    }

    /// A snapshot carrying writes (and writes pending after those) answers every method as the
    /// rebuilt map does, for every order of up to three moves and every point where the
    /// snapshot was taken between them.
    #[test]
    fn a_snapshot_through_writes_agrees_with_the_edited_map() {
        let (base, moves) = map_and_moves();
        let sequences = sequences_of(&moves);
        let names = ["a", "b", "c", "cb", "d"];
        for edits in &sequences {
            let rebuilt = base.edited(edits);
            for split in 0..=edits.len() {
                let (earlier, later) = edits.split_at(split);
                let seen = base.with_edits(EditLog::of(earlier));
                let pending = EditLog::of(later);
                let built_earlier = base.edited(earlier);
                let ctx = format!("{earlier:?} then {later:?}");
                // What a filter holding the snapshot sees: the earlier writes.
                assert_eq!(seen.to_pairs(), built_earlier.to_pairs(), "{ctx}");
                assert_eq!(seen.len(), built_earlier.len(), "{ctx}");
                assert_eq!(seen.is_empty(), built_earlier.is_empty(), "{ctx}");
                assert_eq!(seen, built_earlier, "{ctx}");
                for name in names {
                    assert_eq!(seen.get(name), built_earlier.get(name), "{name} {ctx}");
                    assert_eq!(seen.contains(name), built_earlier.contains(name));
                    assert_eq!(
                        seen.get_joined(name),
                        built_earlier.get_joined(name),
                        "{name} {ctx}"
                    );
                    // Through the pending writes, and through public edits on top.
                    assert_eq!(
                        seen.get_through(&pending, name),
                        rebuilt.get(name),
                        "{name} {ctx}"
                    );
                    assert_eq!(seen.get_edited(later, name), rebuilt.get(name), "{ctx}");
                }
                for prefix in ["", "a", "c", "cb", "x"] {
                    let want: Vec<_> = built_earlier
                        .iter()
                        .filter(|(n, _)| n.starts_with(prefix))
                        .collect();
                    let got: Vec<_> = seen.iter_prefixed(prefix).collect();
                    assert_eq!(got, want, "{prefix} {ctx}");
                }
                let all = seen.with_edits(pending);
                assert_eq!(all.to_pairs(), rebuilt.to_pairs(), "{ctx}");
                assert_eq!(all, rebuilt, "{ctx}");
                assert_eq!(seen.edited(later).to_pairs(), rebuilt.to_pairs(), "{ctx}");
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
