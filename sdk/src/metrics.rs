//! Metrics: plain counters, gauges and histograms, and labeled families whose series are
//! defined on first use, cached by label values and capped per family.
//!
//! # Naming convention
//! A series of family `mesh_requests_total` with labels `reporter`, `source_service` is the
//! Envoy stat `mesh_requests_total;.reporter=source;.source_service=frontend`. Each label is the
//! segment `;.<label>=<value>`, and [`stats_tags`] renders the `stats_config.stats_tags` whose
//! regexes cut those segments back out, so Envoy's `/stats/prometheus` shows
//! `mesh_requests_total{reporter="source",source_service="frontend"}`. Label values are
//! sanitized: `;`, whitespace and control characters become `_`, empty becomes `unknown`, and
//! they are cut at [`MAX_LABEL_VALUE_LEN`] bytes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::host::{Host, MetricKind};

/// Label values longer than this are cut, so a hostile value cannot grow stat names.
pub const MAX_LABEL_VALUE_LEN: usize = 64;

/// Default cap on distinct series per family.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// The value every label takes in a family's overflow series.
pub const OVERFLOW: &str = "overflow";

/// One metric without labels, defined once (at configure time) and cheap to use after.
#[derive(Debug)]
pub struct Metric {
    id: Option<u32>,
}

impl Metric {
    /// Defines a metric. A host failure leaves it inert (logged at warn), never a panic.
    pub fn define(host: &dyn Host, kind: MetricKind, name: &str) -> Metric {
        let id = match host.define_metric(kind, name) {
            Ok(id) => Some(id),
            Err(e) => {
                log::warn!("cannot define metric {name}: {e}");
                None
            }
        };
        Metric { id }
    }
    /// Shorthand for a counter.
    pub fn counter(host: &dyn Host, name: &str) -> Metric {
        Metric::define(host, MetricKind::Counter, name)
    }
    /// Adds one.
    pub fn inc(&self, host: &dyn Host) {
        self.add(host, 1);
    }
    /// Adds `by` (counters and gauges).
    pub fn add(&self, host: &dyn Host, by: i64) {
        if let Some(id) = self.id {
            let _ = host.increment_metric(id, by);
        }
    }
    /// Sets a gauge or records a histogram value.
    pub fn record(&self, host: &dyn Host, value: u64) {
        if let Some(id) = self.id {
            let _ = host.record_metric(id, value);
        }
    }
    /// The current value (counters and gauges).
    pub fn get(&self, host: &dyn Host) -> Option<u64> {
        self.id.and_then(|id| host.metric(id).ok())
    }
}

/// Label tuples that share a hash, each with what was resolved for it.
type Bucket<T> = Vec<(Box<[String]>, T)>;

/// The table's hasher: its keys are already hashes ([`hash_values`]), so it passes them on.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// Resolved values by label tuple, keyed by the tuple's hash: a family's series ids, or a
/// [`SeriesCache`]'s ids in several families.
#[derive(Debug)]
struct Table<T>(HashMap<u64, Bucket<T>, BuildHasherDefault<KeyHasher>>);

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table(HashMap::default())
    }
}

impl<T: Copy> Table<T> {
    /// The value kept for `labels`, comparing the values of the tuples in its hash's bucket.
    fn find(&self, labels: Labels<'_>) -> Option<T> {
        self.0
            .get(&labels.hash)?
            .iter()
            .find(|(vals, _)| same(vals, labels.values))
            .map(|(_, value)| *value)
    }

    /// Keeps `value` for `labels` (owned copies of its values).
    fn insert(&mut self, labels: Labels<'_>, value: T) {
        let owned: Box<[String]> = labels.values.iter().map(|v| v.to_string()).collect();
        self.0.entry(labels.hash).or_default().push((owned, value));
    }
}

/// A labeled metric family: declared once with its label names; each distinct tuple of label
/// values becomes a series, defined on first use and then looked up without allocating.
#[derive(Debug)]
pub struct MetricFamily {
    name: String,
    kind: MetricKind,
    labels: Vec<String>,
    max_series: usize,
    series: RefCell<Table<u32>>,
    count: Cell<usize>,
    overflow_id: Cell<Option<u32>>,
    overflowed: RefCell<Option<Metric>>,
}

impl MetricFamily {
    /// Declares a family. Label names should be lowercase identifiers.
    pub fn new(name: &str, kind: MetricKind, labels: &[&str]) -> MetricFamily {
        MetricFamily {
            name: name.to_string(),
            kind,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            max_series: DEFAULT_MAX_SERIES,
            series: RefCell::new(Table::default()),
            count: Cell::new(0),
            overflow_id: Cell::new(None),
            overflowed: RefCell::new(None),
        }
    }
    /// Declares a counter family.
    pub fn counter(name: &str, labels: &[&str]) -> MetricFamily {
        MetricFamily::new(name, MetricKind::Counter, labels)
    }
    /// Declares a gauge family.
    pub fn gauge(name: &str, labels: &[&str]) -> MetricFamily {
        MetricFamily::new(name, MetricKind::Gauge, labels)
    }
    /// Declares a histogram family.
    pub fn histogram(name: &str, labels: &[&str]) -> MetricFamily {
        MetricFamily::new(name, MetricKind::Histogram, labels)
    }
    /// Sets the cap on distinct series (at least 1); label sets past it go to the overflow series.
    pub fn with_max_series(mut self, max: usize) -> MetricFamily {
        self.max_series = max.max(1);
        self
    }
    /// The family name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The label names, in order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
    /// Number of distinct series defined so far (not counting overflow).
    pub fn series_count(&self) -> usize {
        self.count.get()
    }
    /// Name of the counter that counts label sets sent to the overflow series.
    pub fn overflow_counter_name(&self) -> String {
        format!("{}_series_overflow_total", self.name)
    }

    /// The Envoy stat name of the series for `values` (see the module docs for the convention).
    pub fn series_name(&self, values: &[&str]) -> String {
        let mut out = self.name.clone();
        for (label, value) in self.labels.iter().zip(values) {
            out.push_str(";.");
            out.push_str(label);
            out.push('=');
            push_sanitized(&mut out, value);
        }
        out
    }

    /// The metric id for a tuple of label values, defining the series on first use. Past the
    /// cap, or when the number of values does not match the labels, the overflow series.
    pub fn id<L: AsLabels + ?Sized>(&self, host: &dyn Host, values: &L) -> Option<u32> {
        let labels = values.labels();
        let values = labels.values;
        if values.len() != self.labels.len() {
            log::debug!(
                "{}: {} label values for {} labels",
                self.name,
                values.len(),
                self.labels.len()
            );
            return self.overflow(host);
        }
        if let Some(id) = self.find(labels) {
            return Some(id);
        }
        if self.count.get() >= self.max_series {
            return self.overflow(host);
        }
        let id = host
            .define_metric(self.kind, &self.series_name(values))
            .map_err(|e| log::warn!("{}: cannot define series: {e}", self.name))
            .ok()?;
        self.series.borrow_mut().insert(labels, id);
        self.count.set(self.count.get() + 1);
        Some(id)
    }

    /// The id of the series already defined for `labels`, never overflow.
    fn find(&self, labels: Labels<'_>) -> Option<u32> {
        self.series.borrow().find(labels)
    }

    fn overflow(&self, host: &dyn Host) -> Option<u32> {
        {
            let mut counter = self.overflowed.borrow_mut();
            counter
                .get_or_insert_with(|| Metric::counter(host, &self.overflow_counter_name()))
                .inc(host);
        }
        if let Some(id) = self.overflow_id.get() {
            return Some(id);
        }
        let values: Vec<&str> = self.labels.iter().map(|_| OVERFLOW).collect();
        let id = host
            .define_metric(self.kind, &self.series_name(&values))
            .ok()?;
        self.overflow_id.set(Some(id));
        Some(id)
    }

    /// Adds `by` to the series for `values` (counters, gauges).
    pub fn add<L: AsLabels + ?Sized>(&self, host: &dyn Host, values: &L, by: i64) {
        if let Some(id) = self.id(host, values) {
            let _ = host.increment_metric(id, by);
        }
    }
    /// Adds one to the series for `values`.
    pub fn inc<L: AsLabels + ?Sized>(&self, host: &dyn Host, values: &L) {
        self.add(host, values, 1);
    }
    /// Records `value` into the series (histogram) or sets it (gauge).
    pub fn record<L: AsLabels + ?Sized>(&self, host: &dyn Host, values: &L, value: u64) {
        if let Some(id) = self.id(host, values) {
            let _ = host.record_metric(id, value);
        }
    }
}

/// The series ids of `N` families that take the same label tuples together (a request counter
/// and its histograms), remembered per tuple: a request finds all `N` with one lookup where each
/// family would take its own. Only tuples that are a series of their own in every family are
/// remembered (so at most as many as the first family's cap); an overflow series is never, as
/// each of its uses must be counted by [`MetricFamily::id`].
#[derive(Debug)]
pub struct SeriesCache<const N: usize> {
    table: RefCell<Table<[u32; N]>>,
}

impl<const N: usize> Default for SeriesCache<N> {
    fn default() -> Self {
        SeriesCache {
            table: RefCell::new(Table::default()),
        }
    }
}

impl<const N: usize> SeriesCache<N> {
    /// An empty cache.
    pub fn new() -> SeriesCache<N> {
        SeriesCache::default()
    }

    /// The ids remembered for `values`, one per family in the order given to
    /// [`remember`](Self::remember); `None` when the tuple was not remembered (yet).
    pub fn get<L: AsLabels + ?Sized>(&self, values: &L) -> Option<[u32; N]> {
        self.table.borrow().find(values.labels())
    }

    /// Remembers the ids of `values` in `families` if each family already has it as a series of
    /// its own (defined by [`MetricFamily::id`]); otherwise leaves the cache as it is.
    pub fn remember<L: AsLabels + ?Sized>(&self, families: [&MetricFamily; N], values: &L) {
        let labels = values.labels();
        if self.get(&labels).is_some() {
            return;
        }
        let mut ids = [0u32; N];
        for (slot, family) in ids.iter_mut().zip(families) {
            match family.find(labels) {
                Some(id) => *slot = id,
                None => return,
            }
        }
        self.table.borrow_mut().insert(labels, ids);
    }
}

/// A tuple of label values with its hash, computed once: a request that records the same labels
/// into several families (a counter and three histograms) hashes them once, not per family.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    values: &'a [&'a str],
    hash: u64,
}

impl<'a> Labels<'a> {
    /// Hashes `values` for use with any number of families.
    pub fn new(values: &'a [&'a str]) -> Labels<'a> {
        Labels {
            values,
            hash: hash_values(values),
        }
    }
}

/// What a family takes as label values: a slice, an array or a `Vec` of `&str` (hashed on each
/// use), or [`Labels`] (hashed once).
pub trait AsLabels {
    /// The values and their hash.
    fn labels(&self) -> Labels<'_>;
}

impl AsLabels for Labels<'_> {
    fn labels(&self) -> Labels<'_> {
        *self
    }
}

impl AsLabels for [&str] {
    fn labels(&self) -> Labels<'_> {
        Labels::new(self)
    }
}

impl<const N: usize> AsLabels for [&str; N] {
    fn labels(&self) -> Labels<'_> {
        Labels::new(self)
    }
}

impl AsLabels for Vec<&str> {
    fn labels(&self) -> Labels<'_> {
        Labels::new(self)
    }
}

/// Whether a remembered tuple is `values`: every length first, then the bytes a word at a time
/// (`==` on each value was a `memcmp` call walking byte by byte).
fn same(owned: &[String], values: &[&str]) -> bool {
    owned.len() == values.len()
        && owned.iter().zip(values).all(|(a, b)| a.len() == b.len())
        && owned
            .iter()
            .zip(values)
            .all(|(a, b)| same_bytes(a.as_bytes(), b.as_bytes()))
}

/// Whether `a` and `b` are equal: their 8-byte words, then their last bytes as one word.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    (&mut x).zip(&mut y).all(|(p, q)| word(p) == word(q))
        && (x.remainder().is_empty() || tail(a) == tail(b))
}

/// An 8-byte chunk as a word.
fn word(chunk: &[u8]) -> u64 {
    chunk
        .first_chunk::<8>()
        .map_or(0, |w| u64::from_le_bytes(*w))
}

/// The last bytes of `bytes` as one word: its last 8 (overlapping the words before), or for a
/// shorter slice two overlapping reads that cover all of it. For a given length, equal words
/// mean equal bytes.
fn tail(bytes: &[u8]) -> u64 {
    if let Some(w) = bytes.last_chunk::<8>() {
        return u64::from_le_bytes(*w);
    }
    if let (Some(lo), Some(hi)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        return u64::from(u32::from_le_bytes(*lo)) | u64::from(u32::from_le_bytes(*hi)) << 32;
    }
    if let (Some(lo), Some(hi)) = (bytes.first_chunk::<2>(), bytes.last_chunk::<2>()) {
        return u64::from(u16::from_le_bytes(*lo)) | u64::from(u16::from_le_bytes(*hi)) << 16;
    }
    bytes.first().map_or(0, |b| u64::from(*b))
}

/// The values mixed eight bytes at a time (a multiply and a shift per word), each value's
/// length mixed in with its last bytes (read as one word), so `["ab",""]` and `["a","b"]` differ. The key only
/// picks a bucket, whose values are compared in full: SipHash's resistance to chosen collisions
/// buys nothing here, and FNV-1a, a byte at a time, ran about 28 instructions per byte.
fn hash_values(values: &[&str]) -> u64 {
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, word: u64| {
        let h = (h ^ word).wrapping_mul(MUL);
        h ^ (h >> 29)
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        let bytes = v.as_bytes();
        let words = bytes.chunks_exact(8);
        let rest = words.remainder();
        for w in words {
            h = mix(h, word(w));
        }
        let last = if rest.is_empty() { 0 } else { tail(bytes) };
        h = mix(h, last ^ (v.len() as u64).rotate_right(8));
    }
    h
}

fn push_sanitized(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push_str("unknown");
        return;
    }
    for (i, c) in value.char_indices() {
        if i + c.len_utf8() > MAX_LABEL_VALUE_LEN {
            break;
        }
        if c == ';' || c == '=' || c.is_whitespace() || c.is_control() {
            out.push('_');
        } else {
            out.push(c);
        }
    }
}

/// The regex that extracts `label` from a stat name following the convention.
pub fn tag_regex(label: &str) -> String {
    format!(r"(;\.{label}=([^;]*))")
}

/// Renders the `stats_tags:` key and its entries (YAML starting at column 0: indent every line
/// to place it under a bootstrap's `stats_config:`) for every distinct label of the families.
pub fn stats_tags(families: &[&MetricFamily]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = String::from("stats_tags:\n");
    for fam in families {
        for label in &fam.labels {
            if seen.contains(&label.as_str()) {
                continue;
            }
            seen.push(label);
            out.push_str(&format!(
                "- tag_name: {label}\n  regex: '{}'\n",
                tag_regex(label)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::TestHost;

    #[test]
    fn series_defined_once_and_cached() {
        let host = TestHost::new();
        let fam = MetricFamily::counter("mesh_requests_total", &["reporter", "source_service"]);
        fam.inc(&host, &["source", "frontend"]);
        fam.inc(&host, &["source", "frontend"]);
        fam.add(&host, &["source", "orders"], 5);
        assert_eq!(
            host.counter("mesh_requests_total;.reporter=source;.source_service=frontend"),
            Some(2)
        );
        assert_eq!(
            host.counter("mesh_requests_total;.reporter=source;.source_service=orders"),
            Some(5)
        );
        assert_eq!(fam.series_count(), 2);
        assert_eq!(host.defined_metric_count(), 2);
    }

    #[test]
    fn labels_hashed_once_find_the_same_series_in_every_family() {
        let host = TestHost::new();
        let requests = MetricFamily::counter("rq", &["a", "b"]);
        let sizes = MetricFamily::histogram("sz", &["a", "b"]);
        requests.inc(&host, &["x", "y"]);
        let values = vec!["x", "y"];
        let labels = Labels::new(&values);
        requests.inc(&host, &labels);
        sizes.record(&host, &labels, 7);
        sizes.record(&host, &values, 9);
        assert_eq!(host.counter("rq;.a=x;.b=y"), Some(2));
        assert_eq!(requests.series_count(), 1);
        assert_eq!(sizes.series_count(), 1);
        // A tuple whose values split differently is another series.
        requests.inc(&host, &Labels::new(&["xy", ""]));
        assert_eq!(requests.series_count(), 2);
        // Too few values go to the overflow series, as with a slice.
        requests.inc(&host, &Labels::new(&["x"]));
        assert_eq!(host.counter("rq;.a=overflow;.b=overflow"), Some(1));
    }

    #[test]
    fn series_cache_remembers_only_series_every_family_has() {
        let host = TestHost::new();
        let requests = MetricFamily::counter("rq", &["a"]).with_max_series(1);
        let sizes = MetricFamily::histogram("sz", &["a"]).with_max_series(1);
        let cache: SeriesCache<2> = SeriesCache::new();
        let x = Labels::new(&["x"]);
        // Not yet a series of either family: nothing to remember.
        cache.remember([&requests, &sizes], &x);
        assert_eq!(cache.get(&x), None);
        let rq = requests.id(&host, &x).unwrap();
        cache.remember([&requests, &sizes], &x);
        assert_eq!(cache.get(&x), None);
        let sz = sizes.id(&host, &x).unwrap();
        cache.remember([&requests, &sizes], &x);
        cache.remember([&requests, &sizes], &x);
        assert_eq!(cache.get(&x), Some([rq, sz]));
        assert_eq!(cache.get(&["x"]), Some([rq, sz]));
        assert_eq!(cache.get(&["y"]), None);
        // Past the cap: the overflow series, never remembered, so each use is counted.
        let y = Labels::new(&["y"]);
        assert_ne!(requests.id(&host, &y), None);
        assert_ne!(sizes.id(&host, &y), None);
        cache.remember([&requests, &sizes], &y);
        assert_eq!(cache.get(&y), None);
        assert_eq!(host.counter("rq_series_overflow_total"), Some(1));
    }

    #[test]
    fn words_compare_every_byte() {
        let base: Vec<u8> = (1..=20).collect();
        for len in 0..=base.len() {
            let a = &base[..len];
            assert!(same_bytes(a, a));
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x80;
                assert!(!same_bytes(a, &b), "len {len}, byte {at}");
            }
        }
        assert!(!same_bytes(b"ab", b"abc"));
        assert_ne!(hash_values(&["ab", ""]), hash_values(&["a", "b"]));
    }

    #[test]
    fn cap_sends_excess_to_overflow_and_counts_it() {
        let host = TestHost::new();
        let fam = MetricFamily::counter("m", &["a"]).with_max_series(2);
        for v in ["x", "y", "z", "w", "x"] {
            fam.inc(&host, &[v]);
        }
        assert_eq!(host.counter("m;.a=x"), Some(2));
        assert_eq!(host.counter("m;.a=overflow"), Some(2));
        assert_eq!(host.counter("m_series_overflow_total"), Some(2));
        assert_eq!(host.counter("m;.a=z"), None);
        // Wrong arity never panics: it is overflow too.
        fam.inc(&host, &["x", "extra"]);
        assert_eq!(host.counter("m;.a=overflow"), Some(3));
    }

    #[test]
    fn values_are_sanitized_and_bounded() {
        let fam = MetricFamily::histogram("h", &["a", "b"]);
        let long = "v".repeat(200);
        let name = fam.series_name(&["x;.b=evil", &long]);
        assert!(name.starts_with("h;.a=x_.b_evil;.b=v"), "{name}");
        assert_eq!(name.matches(";.").count(), 2, "{name}");
        assert_eq!(name.len(), "h;.a=x_.b_evil;.b=".len() + MAX_LABEL_VALUE_LEN);
        assert_eq!(fam.series_name(&["", "é"]), "h;.a=unknown;.b=é");
    }

    #[test]
    fn stats_tags_render_each_label_once() {
        let a = MetricFamily::counter("a", &["reporter", "x"]);
        let b = MetricFamily::histogram("b", &["reporter", "y"]);
        let yaml = stats_tags(&[&a, &b]);
        assert_eq!(yaml.matches("tag_name").count(), 3);
        assert!(yaml.contains(r"regex: '(;\.reporter=([^;]*))'"));
    }
}
