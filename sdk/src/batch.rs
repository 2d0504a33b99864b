//! Several properties in one hostcall. A filter that reads many properties at the end of the
//! stream pays about 1.4 µs of Envoy CPU for each `proxy_get_property` (the price list,
//! [`crate::cost_model`]), most of it the call into the VM to allocate the value. Envoy's
//! `expr_create` and `expr_evaluate` foreign functions (`proxy_call_foreign_function`) evaluate
//! a CEL (Common Expression Language) expression against the same attributes; a CEL list of the
//! properties, created once at configure time, brings all of them back in one call and one
//! allocation (measured: about 2.2 µs plus 0.4 µs per element, against 1.4 µs per single read).
//!
//! A [`PropertyBatch`] is built at configure time from the paths a phase reads. Per request,
//! [`PropertyBatch::with`] evaluates it once and runs the filter's code over a host that
//! answers those paths from the answer; every other call goes to the proxy as before.
//!
//! The values are exactly what the single reads give, or the single reads are made:
//! - a CEL list is an error as a whole when one element is missing (`upstream.address` of a
//!   local reply), so paths that are often absent are listed as optional and evaluated as
//!   `has(p) ? [p] : []` (an absent one is an empty list); that costs about 2.5 times a required
//!   element (6,600 Envoy instructions against 2,600, `sdk/docs/cost-model.md`), so only
//!   those are;
//! - when the evaluation fails anyway, or its answer is not a list of as many values of the
//!   expected kinds, nothing is taken from it: the filter reads each property singly, as
//!   without a batch, and [`FALLBACK_COUNTER`] counts the request;
//! - a proxy without the CEL foreign functions (an Envoy built without its CEL parser) refuses
//!   `expr_create` at configure time: the batch is disabled and says so once in the log.
//!
//! The answer's format, read off Envoy 1.40's answers (see `Elements`): the proxy-wasm pairs
//! form, each element paired with an empty string, each value in the wire form of
//! `proxy_get_property` (strings as their bytes, ints and uints as 8 bytes little-endian), a
//! nested list in the same form. Only string, int and uint attributes with an accessor in
//! [`crate::properties`] are batched; any other path is read singly.

use std::time::SystemTime;

use crate::host::{Bytes, HeaderSnapshot, Host, HostError, MapKind, MetricKind};
use crate::properties;

/// How a batched attribute comes back through `proxy_get_property`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// UTF-8 bytes.
    String,
    /// int64, 8 bytes little-endian.
    Int,
    /// uint64, 8 bytes little-endian.
    Uint,
}

/// The most paths one batch holds (more are read singly).
pub const MAX_PATHS: usize = 16;

/// The counter of requests whose batch fell back to single reads.
pub const FALLBACK_COUNTER: &str = "meshwasm_property_batch_fallbacks_total";

/// One batched path.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    path: &'static str,
    wire: Wire,
    optional: bool,
}

/// Properties read together in one hostcall; see the [module docs](self).
#[derive(Debug)]
pub struct PropertyBatch {
    entries: Vec<Entry>,
    /// The entries' paths (for [`Host::holds_properties`], without building them per request).
    paths: Vec<&'static str>,
    /// The argument of `expr_evaluate` (the expression's token, little-endian); `None` when
    /// the proxy cannot evaluate expressions or nothing is batched.
    token: Option<[u8; 4]>,
    fallbacks: Option<u32>,
}

/// Whether `segment` is a CEL identifier (and so can be written in a select expression).
fn is_identifier(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl PropertyBatch {
    /// A batch of `required` paths (present on every request that reaches the phase's code in
    /// the common case) and `optional` ones (often absent). Call it at configure time: it
    /// creates the expression in the proxy. Paths that cannot be batched (an unknown attribute,
    /// a duration, a name CEL cannot spell) are left out and read singly; an error here never
    /// fails the configuration.
    pub fn new(host: &dyn Host, required: &[&'static str], optional: &[&'static str]) -> Self {
        let listed = required
            .iter()
            .map(|p| (*p, false))
            .chain(optional.iter().map(|p| (*p, true)));
        let mut entries: Vec<Entry> = Vec::new();
        for (path, optional) in listed {
            let batchable = path.split('.').count() >= 2 && path.split('.').all(is_identifier);
            match properties::wire_of(path) {
                Some(wire)
                    if batchable
                        && entries.len() < MAX_PATHS
                        && !entries.iter().any(|e| e.path == path) =>
                {
                    entries.push(Entry {
                        path,
                        wire,
                        optional,
                    })
                }
                _ => {}
            }
        }
        let mut batch = PropertyBatch {
            paths: entries.iter().map(|e| e.path).collect(),
            entries,
            token: None,
            fallbacks: None,
        };
        if batch.entries.is_empty() {
            return batch;
        }
        let expression = batch.expression();
        match host.call_foreign("expr_create", expression.as_bytes()) {
            Ok(Some(token)) if token.len() == 4 => {
                batch.token = Some([token[0], token[1], token[2], token[3]]);
                batch.fallbacks = host
                    .define_metric(MetricKind::Counter, FALLBACK_COUNTER)
                    .ok();
            }
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "no token".to_string(),
                };
                log::info!(
                    "property batch disabled, properties are read one by one: \
                     expr_create refused ({why})"
                );
            }
        }
        batch
    }

    /// One batch of every path of `batches` (optional where any of them has it optional), for
    /// filters composed in one module ([`crate::compose`]): inside its [`PropertyBatch::with`],
    /// each filter's own batch finds its paths held and evaluates nothing.
    pub fn union(host: &dyn Host, batches: &[&PropertyBatch]) -> Self {
        let entries: Vec<&Entry> = batches.iter().flat_map(|b| b.entries.iter()).collect();
        let optional = |path: &str| entries.iter().any(|e| e.path == path && e.optional);
        let required: Vec<&'static str> = entries
            .iter()
            .filter(|e| !optional(e.path))
            .map(|e| e.path)
            .collect();
        let optional: Vec<&'static str> = entries
            .iter()
            .filter(|e| e.optional)
            .map(|e| e.path)
            .collect();
        PropertyBatch::new(host, &required, &optional)
    }

    /// Whether the proxy evaluates this batch (otherwise every read is single).
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// The CEL expression: a list with one element per path, an optional one wrapped so that
    /// its absence is an empty list rather than an error of the whole list.
    pub fn expression(&self) -> String {
        let elements: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                if e.optional {
                    format!("has({p}) ? [{p}] : []", p = e.path)
                } else {
                    e.path.to_string()
                }
            })
            .collect();
        format!("[{}]", elements.join(", "))
    }

    /// Runs `f` with a host that answers this batch's paths from one evaluation and passes
    /// everything else to `host`. A host that already holds them (inside another batch's
    /// `with` that covers these paths, as mesh-sidecar's union, or one that failed) is used as
    /// it is. When the evaluation fails, `f` reads each property singly and the request is
    /// counted in [`FALLBACK_COUNTER`].
    pub fn with<R>(&self, host: &dyn Host, f: impl FnOnce(&dyn Host) -> R) -> R {
        if self.token.is_none() || host.holds_properties(&self.paths) {
            return f(host);
        }
        let answer = host.call_foreign("expr_evaluate", &self.token.unwrap_or_default());
        let answer = answer.ok().flatten().unwrap_or_default();
        let mut spans = [None; MAX_PATHS];
        let mut i = 0;
        let walked = self.walk(&answer, &mut |_, value| {
            spans[i] = value.map(|v| {
                // `v` is a slice of `answer`: its place in it.
                let start = v.as_ptr() as usize - answer.as_ptr() as usize;
                (start, start + v.len())
            });
            i += 1;
        });
        let failed = walked.is_none();
        if failed {
            if let Some(id) = self.fallbacks {
                let _ = host.increment_metric(id, 1);
            }
        }
        f(&Prefetched {
            inner: host,
            batch: self,
            answer,
            spans,
            failed,
        })
    }

    /// The batched paths.
    pub fn paths(&self) -> &[&'static str] {
        &self.paths
    }

    /// The answer of `expr_evaluate` as each path's wire form (`None` for an absent optional
    /// one); `None` when it is not a list of as many values of the expected kinds.
    #[cfg(test)]
    fn decode(&self, answer: &[u8]) -> Option<Vec<Option<Bytes>>> {
        let mut out = Vec::new();
        self.walk(answer, &mut |_, value| out.push(value.map(<[u8]>::to_vec)))?;
        Some(out)
    }

    /// Walks the answer of `expr_evaluate`, giving each entry its value in the wire form of
    /// `proxy_get_property` (`None`: an absent optional one); `None` as soon as the answer is
    /// not a list of as many values of the expected kinds.
    fn walk<'a>(
        &self,
        answer: &'a [u8],
        each: &mut dyn FnMut(&Entry, Option<&'a [u8]>),
    ) -> Option<()> {
        let mut elements = Elements::new(answer)?;
        if elements.len() != self.entries.len() {
            return None;
        }
        for entry in &self.entries {
            let mut value = elements.next()?;
            if entry.optional {
                let mut inner = Elements::new(value)?;
                match inner.len() {
                    0 => {
                        each(entry, None);
                        continue;
                    }
                    1 => value = inner.next()?,
                    _ => return None,
                }
            }
            let fits = match entry.wire {
                Wire::String => true,
                Wire::Int | Wire::Uint => value.len() == 8,
            };
            if !fits {
                return None;
            }
            each(entry, Some(value));
        }
        Some(())
    }
}

/// A host that answers a batch's paths from one evaluation's answer (each read copies its
/// value out, as a single read's allocation would) and passes everything else through.
struct Prefetched<'a> {
    inner: &'a dyn Host,
    batch: &'a PropertyBatch,
    answer: Bytes,
    /// Per entry, where its value is in `answer` (`None`: an absent optional one).
    spans: [Option<(usize, usize)>; MAX_PATHS],
    /// The evaluation failed: every read is single (and no other batch is tried inside).
    failed: bool,
}

/// Whether the dotted `path` is `segments` joined by dots.
fn is_dotted(path: &str, segments: &[&str]) -> bool {
    let mut rest = path;
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            match rest.strip_prefix('.') {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match rest.strip_prefix(segment) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

impl Host for Prefetched<'_> {
    fn property(&self, path: &[&str]) -> Option<Bytes> {
        // The dotted length first: it tells most of a batch's paths apart without comparing
        // their bytes.
        let dotted_len = crate::compose::key_len(path);
        match self
            .batch
            .paths
            .iter()
            .position(|p| p.len() == dotted_len && is_dotted(p, path))
        {
            Some(i) if !self.failed => {
                self.spans[i].map(|(start, end)| self.answer[start..end].to_vec())
            }
            _ => self.inner.property(path),
        }
    }
    fn holds_properties(&self, paths: &[&str]) -> bool {
        self.failed || paths.iter().all(|p| self.batch.paths.contains(p))
    }
    fn header(&self, map: MapKind, name: &str) -> Option<Bytes> {
        self.inner.header(map, name)
    }
    fn headers(&self, map: MapKind) -> Vec<(String, Bytes)> {
        self.inner.headers(map)
    }
    fn snapshot(&self, map: MapKind) -> HeaderSnapshot {
        self.inner.snapshot(map)
    }
    fn set_header(&self, map: MapKind, name: &str, value: Option<&[u8]>) {
        self.inner.set_header(map, name, value)
    }
    fn add_header(&self, map: MapKind, name: &str, value: &[u8]) {
        self.inner.add_header(map, name, value)
    }
    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), HostError> {
        self.inner.set_property(path, value)
    }
    fn now(&self) -> SystemTime {
        self.inner.now()
    }
    crate::host::forward_to_inner!();
    fn call_foreign(&self, name: &str, argument: &[u8]) -> Result<Option<Bytes>, HostError> {
        self.inner.call_foreign(name, argument)
    }
}

/// The elements of a list as Envoy serializes a CEL list for `expr_evaluate` (read off Envoy
/// 1.40's answers): the proxy-wasm pairs form, a little-endian u32 count, then each pair's two
/// sizes as u32, then each pair's two byte strings, NUL-terminated; an element is a pair of its
/// value (in the wire form of `proxy_get_property`: strings as their bytes, ints as 8 bytes
/// little-endian, a list in this same form) and an empty string.
struct Elements<'a> {
    bytes: &'a [u8],
    /// Where the next pair's sizes are.
    sizes: usize,
    /// Where the next pair's data is.
    data: usize,
    left: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    usize::try_from(u32::from_le_bytes(raw.try_into().ok()?)).ok()
}

impl<'a> Elements<'a> {
    /// The list in `bytes`, checked whole: every size adds up to its length exactly.
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let count = u32_at(bytes, 0)?;
        let data = count.checked_mul(8)?.checked_add(4)?;
        let mut end = data;
        for i in 0..count {
            let value = u32_at(bytes, 4 + i * 8)?;
            let second = u32_at(bytes, 8 + i * 8)?;
            end = end
                .checked_add(value)?
                .checked_add(second)?
                .checked_add(2)?;
        }
        (end == bytes.len()).then_some(Elements {
            bytes,
            sizes: 4,
            data,
            left: count,
        })
    }

    fn len(&self) -> usize {
        self.left
    }

    /// The next element's value; `None` at the end, or when the pair's second half is not
    /// empty or a terminator is missing (not a list).
    fn next(&mut self) -> Option<&'a [u8]> {
        self.left = self.left.checked_sub(1)?;
        let value = u32_at(self.bytes, self.sizes)?;
        if u32_at(self.bytes, self.sizes + 4)? != 0 {
            return None;
        }
        self.sizes += 8;
        let end = self.data.checked_add(value)?;
        let out = self.bytes.get(self.data..end)?;
        if self.bytes.get(end..end + 2)? != [0, 0] {
            return None;
        }
        self.data = end + 2;
        Some(out)
    }
}

/// Encodes `values` as Envoy answers a CEL list (see the [module docs](self)), for test hosts.
pub fn encode_list(values: &[&[u8]]) -> Bytes {
    let pairs: Vec<(&[u8], &[u8])> = values.iter().map(|v| (*v, &b""[..])).collect();
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (a, b) in &pairs {
        out.extend_from_slice(&(a.len() as u32).to_le_bytes());
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    }
    for (a, b) in &pairs {
        out.extend_from_slice(a);
        out.push(0);
        out.extend_from_slice(b);
        out.push(0);
    }
    out
}

/// The elements of a batch expression (the form [`PropertyBatch::expression`] writes): each
/// path and whether it is optional; `None` for any other expression. Test hosts accept these
/// in `expr_create`.
pub fn parse_for_test(expression: &str) -> Option<Vec<(&str, bool)>> {
    let body = expression.strip_prefix('[')?.strip_suffix(']')?;
    body.split(", ")
        .map(|element| {
            let (path, optional) = match element.strip_prefix("has(") {
                Some(rest) => {
                    let (path, tail) = rest.split_once(')')?;
                    (tail == format!(" ? [{path}] : []")).then_some((path, true))?
                }
                None => (element, false),
            };
            properties::wire_of(path).map(|_| (path, optional))
        })
        .collect()
}

/// What a test host answers to `expr_evaluate` of a batch expression, from its own property
/// reads (`read`): `None` when a required element is absent (CEL's error for the whole list,
/// Envoy's `InternalFailure`) or the expression is not a batch's.
pub fn evaluate_for_test(expression: &str, read: impl Fn(&str) -> Option<Bytes>) -> Option<Bytes> {
    let mut values: Vec<Bytes> = Vec::new();
    for (path, optional) in parse_for_test(expression)? {
        values.push(match (read(path), optional) {
            (Some(v), false) => v,
            (None, false) => return None,
            (Some(v), true) => encode_list(&[&v]),
            (None, true) => encode_list(&[]),
        });
    }
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    Some(encode_list(&refs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CountingHost, TestHost};

    fn host() -> TestHost {
        let host = TestHost::new();
        host.set_property_str("xds.cluster_name", "orders");
        host.set_property_str("request.protocol", "HTTP/1.1");
        host.set_property_int("request.total_size", 180);
        host.set_stream_property("response.flags", properties::encode_u64(0x20));
        host
    }

    #[test]
    fn the_expression_lists_each_path_and_guards_only_the_optional_ones() {
        let batch = PropertyBatch::new(
            &host(),
            &["xds.cluster_name", "request.total_size", "request.duration"],
            &["upstream.uri_san_peer_certificate"],
        );
        // request.duration is a duration (exported as text in a list): read singly.
        assert_eq!(
            batch.expression(),
            "[xds.cluster_name, request.total_size, has(upstream.uri_san_peer_certificate) ? \
             [upstream.uri_san_peer_certificate] : []]"
        );
        assert!(batch.enabled());
    }

    #[test]
    fn one_evaluation_answers_every_batched_read_with_the_single_reads_value() {
        let host = host();
        let batch = PropertyBatch::new(
            &host,
            &[
                "xds.cluster_name",
                "request.protocol",
                "request.total_size",
                "response.flags",
            ],
            &["upstream.uri_san_peer_certificate"],
        );
        let counting = CountingHost::new(&host);
        let read = batch.with(&counting, |h| {
            (
                properties::xds_cluster_name(h),
                properties::request_protocol(h),
                properties::request_total_size(h),
                properties::response_flags(h),
                properties::string(h, "upstream.uri_san_peer_certificate"),
            )
        });
        assert_eq!(
            read,
            (
                Some("orders".to_string()),
                Some("HTTP/1.1".to_string()),
                Some(180),
                Some(0x20),
                None
            )
        );
        assert_eq!(
            counting.take_names(),
            ["call_foreign_function expr_evaluate"]
        );
    }

    #[test]
    fn a_missing_required_value_falls_back_to_single_reads_and_counts() {
        let host = host();
        let batch = PropertyBatch::new(&host, &["xds.cluster_name", "upstream.address"], &[]);
        let counting = CountingHost::new(&host);
        let read = batch.with(&counting, |h| {
            (
                properties::xds_cluster_name(h),
                properties::upstream_address(h),
            )
        });
        assert_eq!(read, (Some("orders".to_string()), None));
        assert_eq!(
            counting.take_names(),
            [
                "call_foreign_function expr_evaluate",
                "increment_metric",
                "get_property xds.cluster_name",
                "get_property upstream.address",
            ]
        );
        assert_eq!(host.counter(FALLBACK_COUNTER), Some(1));
    }

    #[test]
    fn without_expressions_in_the_proxy_every_read_is_single() {
        let host = host();
        host.without_expressions();
        let batch = PropertyBatch::new(&host, &["xds.cluster_name"], &[]);
        assert!(!batch.enabled());
        let counting = CountingHost::new(&host);
        let cluster = batch.with(&counting, properties::xds_cluster_name);
        assert_eq!(cluster.as_deref(), Some("orders"));
        assert_eq!(counting.take_names(), ["get_property xds.cluster_name"]);
    }

    #[test]
    fn a_union_prefetched_once_serves_each_member_batch() {
        let host = host();
        let a = PropertyBatch::new(&host, &["xds.cluster_name", "response.flags"], &[]);
        let b = PropertyBatch::new(&host, &["request.protocol", "response.flags"], &[]);
        let both = PropertyBatch::union(&host, &[&a, &b]);
        assert_eq!(
            both.paths(),
            ["xds.cluster_name", "response.flags", "request.protocol"]
        );
        let counting = CountingHost::new(&host);
        let (flags, protocol) = both.with(&counting, |h| {
            (
                a.with(h, properties::response_flags),
                b.with(h, properties::request_protocol),
            )
        });
        assert_eq!((flags, protocol.as_deref()), (Some(0x20), Some("HTTP/1.1")));
        assert_eq!(
            counting.take_names(),
            ["call_foreign_function expr_evaluate"]
        );
    }

    #[test]
    fn envoys_encoding_of_a_list_decodes_and_anything_else_is_refused() {
        let batch = PropertyBatch::new(
            &host(),
            &[
                "response.flags",
                "upstream.address",
                "xds.cluster_name",
                "xds.route_name",
                "destination.address",
            ],
            &[],
        );
        // Envoy 1.40's answer for this list on a proxied request (logged in a real Envoy).
        let mut answer = vec![5, 0, 0, 0];
        for size in [8u32, 15, 8, 8, 15] {
            answer.extend_from_slice(&size.to_le_bytes());
            answer.extend_from_slice(&[0, 0, 0, 0]);
        }
        answer.extend_from_slice(&[0; 8]);
        answer.extend_from_slice(b"\0\0");
        answer.extend_from_slice(b"127.0.0.1:34191\0\0upstream\0\0upstream\0\0");
        answer.extend_from_slice(b"127.0.0.1:45837\0\0");
        assert_eq!(answer.len(), 108);
        assert_eq!(
            batch.decode(&answer),
            Some(vec![
                Some(vec![0; 8]),
                Some(b"127.0.0.1:34191".to_vec()),
                Some(b"upstream".to_vec()),
                Some(b"upstream".to_vec()),
                Some(b"127.0.0.1:45837".to_vec()),
            ])
        );
        // A byte short or long, a count that does not match, a size past the end, a missing
        // terminator, an int of the wrong width: no value is taken from any of them.
        let mut wrong_count = answer.clone();
        wrong_count[0] = 4;
        let mut past_end = answer.clone();
        past_end[8] = 200;
        let mut no_terminator = answer.clone();
        no_terminator[52] = b'x';
        let narrow_int = encode_list(&[&[0; 4], b"a", b"b", b"c", b"d"]);
        for bad in [
            &answer[..answer.len() - 1],
            &[&answer[..], &[0]].concat()[..],
            &wrong_count[..],
            &past_end[..],
            &no_terminator[..],
            &narrow_int[..],
            &[][..],
        ] {
            assert_eq!(batch.decode(bad), None, "{bad:?}");
        }
    }
}
