//! B3 propagation as specified by openzipkin b3-propagation: the multiple `x-b3-*` headers
//! and the single `b3` header.
//!
//! Ids are lowercase hex: a trace id of 32 or 16 digits (64-bit), span and parent span ids of
//! 16, none of them zero. The sampling state is Deny, Accept, Debug (an emphasized accept), or
//! Defer (absent). Header values are trimmed of surrounding spaces and tabs; an empty value is
//! malformed, not absent.

use super::ids::{SpanId, TraceId};
use super::{parse_lower_hex, trim_ows, HeaderValue, TraceError};

/// `x-b3-traceid`.
pub const TRACE_ID_HEADER: &str = "x-b3-traceid";
/// `x-b3-spanid`.
pub const SPAN_ID_HEADER: &str = "x-b3-spanid";
/// `x-b3-parentspanid`.
pub const PARENT_SPAN_ID_HEADER: &str = "x-b3-parentspanid";
/// `x-b3-sampled`.
pub const SAMPLED_HEADER: &str = "x-b3-sampled";
/// `x-b3-flags`.
pub const FLAGS_HEADER: &str = "x-b3-flags";
/// `b3`, the single header.
pub const SINGLE_HEADER: &str = "b3";
/// Every multiple-header name, e.g. to remove them all before writing new ones.
pub const MULTI_HEADER_NAMES: [&str; 5] = [
    TRACE_ID_HEADER,
    SPAN_ID_HEADER,
    PARENT_SPAN_ID_HEADER,
    SAMPLED_HEADER,
    FLAGS_HEADER,
];

/// The longest `b3` single value: a 32-digit trace id, span id, sampling state and parent id,
/// with their three `-`.
const MAX_SINGLE_LEN: usize = 32 + 1 + 16 + 1 + 1 + 1 + 16;

/// A B3 sampling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// Don't record (`0`).
    Deny,
    /// Record (`1`).
    Accept,
    /// Force recording and mark spans debug (`d`, or `x-b3-flags: 1`); implies Accept.
    Debug,
    /// No decision yet: the receiver decides (the state is absent).
    Defer,
}

impl Sampling {
    /// The decision as a bool: `Some(true)` for Accept and Debug, `Some(false)` for Deny,
    /// `None` for Defer.
    pub fn decision(&self) -> Option<bool> {
        match self {
            Sampling::Accept | Sampling::Debug => Some(true),
            Sampling::Deny => Some(false),
            Sampling::Defer => None,
        }
    }
}

/// A B3 trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct B3 {
    /// The trace id, never zero.
    pub trace_id: TraceId,
    /// Whether the trace id arrived (and should leave) as 16 hex digits; its high 64 bits are
    /// then zero.
    pub trace_id_64bit: bool,
    /// The span id, never zero.
    pub span_id: SpanId,
    /// The parent span id, absent on a root span.
    pub parent_span_id: Option<SpanId>,
    /// The sampling state.
    pub sampling: Sampling,
}

/// The `b3` single header: a full context, or only a sampling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3Single {
    /// `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]`.
    Context(B3),
    /// `0`, `1` or `d` alone.
    SamplingOnly(Sampling),
}

/// Parses the multiple headers, each given as its value when present.
///
/// `Ok(None)` when neither a trace id nor a span id is present (the other headers are then not
/// looked at: read a lone sampling decision with [`parse_multi_sampling`]). A trace id without
/// a span id fails with [`TraceError::B3SpanId`], a span id without a trace id with
/// [`TraceError::B3TraceId`]. `x-b3-sampled` is `1` or `0` (or the legacy `true` / `false`);
/// `x-b3-flags: 1` means Debug, which wins over `x-b3-sampled`.
pub fn parse_multi(
    trace_id: Option<&str>,
    span_id: Option<&str>,
    parent: Option<&str>,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Result<Option<B3>, TraceError> {
    let (trace, span) = match (trace_id, span_id) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(TraceError::B3SpanId),
        (None, Some(_)) => return Err(TraceError::B3TraceId),
        (Some(t), Some(s)) => (trim_ows(t), trim_ows(s)),
    };
    let (trace_id, trace_id_64bit) = parse_trace_id(trace).ok_or(TraceError::B3TraceId)?;
    let span_id = SpanId::from_hex(span).ok_or(TraceError::B3SpanId)?;
    let parent_span_id = match parent {
        Some(p) => Some(SpanId::from_hex(trim_ows(p)).ok_or(TraceError::B3ParentSpanId)?),
        None => None,
    };
    let sampling = parse_multi_sampling(sampled, flags)?;
    Ok(Some(B3 {
        trace_id,
        trace_id_64bit,
        span_id,
        parent_span_id,
        sampling,
    }))
}

/// Parses `x-b3-sampled` and `x-b3-flags` alone: Defer when both are absent, Debug when
/// `x-b3-flags` is `1` (whatever `x-b3-sampled` says, as long as it is valid), else the
/// decision of `x-b3-sampled` (`1`/`true` Accept, `0`/`false` Deny).
pub fn parse_multi_sampling(
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Result<Sampling, TraceError> {
    let from_sampled = match sampled.map(trim_ows) {
        None => Sampling::Defer,
        Some("1") | Some("true") => Sampling::Accept,
        Some("0") | Some("false") => Sampling::Deny,
        Some(_) => return Err(TraceError::B3Sampled),
    };
    match flags.map(trim_ows) {
        None => Ok(from_sampled),
        Some("1") => Ok(Sampling::Debug),
        Some(_) => Err(TraceError::B3Flags),
    }
}

/// Parses the `b3` single header: `0`, `1` or `d` alone, or
/// `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]` with sampling one of `0`, `1`, `d`.
pub fn parse_single(value: &str) -> Result<B3Single, TraceError> {
    let v = trim_ows(value);
    if v.is_empty() || v.len() > MAX_SINGLE_LEN {
        return Err(TraceError::B3SingleFormat);
    }
    if let Some(sampling) = single_sampling(v) {
        return Ok(B3Single::SamplingOnly(sampling));
    }
    let mut fields = v.split('-');
    let trace = fields.next().ok_or(TraceError::B3SingleFormat)?;
    let span = fields.next().ok_or(TraceError::B3SingleFormat)?;
    let (trace_id, trace_id_64bit) = parse_trace_id(trace).ok_or(TraceError::B3TraceId)?;
    let span_id = SpanId::from_hex(span).ok_or(TraceError::B3SpanId)?;
    let sampling = match fields.next() {
        Some(s) => single_sampling(s).ok_or(TraceError::B3Sampled)?,
        None => Sampling::Defer,
    };
    let parent_span_id = match fields.next() {
        Some(p) => Some(SpanId::from_hex(p).ok_or(TraceError::B3ParentSpanId)?),
        None => None,
    };
    if fields.next().is_some() {
        return Err(TraceError::B3SingleFormat);
    }
    Ok(B3Single::Context(B3 {
        trace_id,
        trace_id_64bit,
        span_id,
        parent_span_id,
        sampling,
    }))
}

/// The `b3` single header value: the trace id (16 digits when `trace_id_64bit` and the id fits,
/// else 32), the span id, the sampling state unless Defer (`1`, `0`, `d`), then the parent span
/// id when present. The format has no place for a parent without a sampling state, so with
/// Defer the parent is left out.
pub fn format_single(b: &B3) -> String {
    format_single_value(b).to_str().into_owned()
}

/// [`format_single`] written on the stack, for writing the header without an allocation.
pub fn format_single_value(b: &B3) -> HeaderValue {
    let mut out = HeaderValue::new();
    push_trace_id(&mut out, b);
    out.push(b"-");
    out.push_hex(b.span_id.0, 16);
    let sampling: &[u8] = match b.sampling {
        Sampling::Accept => b"-1",
        Sampling::Deny => b"-0",
        Sampling::Debug => b"-d",
        Sampling::Defer => return out,
    };
    out.push(sampling);
    if let Some(parent) = b.parent_span_id {
        out.push(b"-");
        out.push_hex(parent.0, 16);
    }
    out
}

/// The multiple headers for `b`, lowercase names: trace id, span id, the parent span id when
/// present, then `x-b3-sampled` (`1` or `0`) for Accept and Deny, or `x-b3-flags: 1` alone for
/// Debug (which implies accept, so `x-b3-sampled` is not sent), or neither for Defer.
pub fn multi_headers(b: &B3) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(4);
    each_multi_header(b, |name, value| {
        headers.push((name, value.to_str().into_owned()));
    });
    headers
}

/// [`multi_headers`] without allocating: calls `f` with each name and its value (written on the
/// stack), in the same order.
pub fn each_multi_header(b: &B3, mut f: impl FnMut(&'static str, &HeaderValue)) {
    let mut value = HeaderValue::new();
    push_trace_id(&mut value, b);
    f(TRACE_ID_HEADER, &value);
    let mut value = HeaderValue::new();
    value.push_hex(b.span_id.0, 16);
    f(SPAN_ID_HEADER, &value);
    if let Some(parent) = b.parent_span_id {
        let mut value = HeaderValue::new();
        value.push_hex(parent.0, 16);
        f(PARENT_SPAN_ID_HEADER, &value);
    }
    let (name, flag): (&'static str, &[u8]) = match b.sampling {
        Sampling::Accept => (SAMPLED_HEADER, b"1"),
        Sampling::Deny => (SAMPLED_HEADER, b"0"),
        Sampling::Debug => (FLAGS_HEADER, b"1"),
        Sampling::Defer => return,
    };
    let mut value = HeaderValue::new();
    value.push(flag);
    f(name, &value);
}

/// Appends the trace id as `b` should send it: 16 digits when it came as a 64-bit id and
/// still fits, else 32.
fn push_trace_id(out: &mut HeaderValue, b: &B3) {
    if !(b.trace_id_64bit && b.trace_id.is_64bit()) {
        out.push_hex((b.trace_id.0 >> 64) as u64, 16);
    }
    out.push_hex(b.trace_id.low64(), 16);
}

/// A single-header sampling field.
fn single_sampling(s: &str) -> Option<Sampling> {
    match s {
        "0" => Some(Sampling::Deny),
        "1" => Some(Sampling::Accept),
        "d" => Some(Sampling::Debug),
        _ => None,
    }
}

/// A B3 trace id: 32 or 16 lowercase hex digits, non-zero; the bool says 16 (64-bit).
fn parse_trace_id(s: &str) -> Option<(TraceId, bool)> {
    let b = s.as_bytes();
    if !(b.len() == 16 || b.len() == 32) {
        return None;
    }
    match parse_lower_hex(b) {
        Some(0) | None => None,
        Some(v) => Some((TraceId(v), b.len() == 16)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T128: &str = "463ac35c9f6413ad48485a3953bb6124";
    const T64: &str = "48485a3953bb6124";
    const S: &str = "a2fb4a1d1a96d312";
    const P: &str = "0020000000000001";

    fn multi(
        t: Option<&str>,
        s: Option<&str>,
        p: Option<&str>,
        sampled: Option<&str>,
        flags: Option<&str>,
    ) -> Result<Option<B3>, TraceError> {
        parse_multi(t, s, p, sampled, flags)
    }

    #[test]
    fn multi_128_bit_with_parent_and_sampled() {
        let b = multi(Some(T128), Some(S), Some(P), Some("1"), None)
            .unwrap()
            .unwrap();
        assert_eq!(b.trace_id.to_hex(), T128);
        assert!(!b.trace_id_64bit);
        assert_eq!(b.span_id.to_hex(), S);
        assert_eq!(b.parent_span_id.unwrap().to_hex(), P);
        assert_eq!(b.sampling, Sampling::Accept);
        assert_eq!(b.sampling.decision(), Some(true));
        assert_eq!(
            multi_headers(&b),
            vec![
                ("x-b3-traceid", T128.to_string()),
                ("x-b3-spanid", S.to_string()),
                ("x-b3-parentspanid", P.to_string()),
                ("x-b3-sampled", "1".to_string()),
            ]
        );
    }

    #[test]
    fn multi_64_bit_keeps_its_width() {
        let b = multi(Some(T64), Some(S), None, None, None)
            .unwrap()
            .unwrap();
        assert!(b.trace_id_64bit);
        assert!(b.trace_id.is_64bit());
        assert_eq!(b.trace_id.low_hex(), T64);
        assert_eq!(b.parent_span_id, None);
        assert_eq!(b.sampling, Sampling::Defer);
        assert_eq!(
            multi_headers(&b),
            vec![
                ("x-b3-traceid", T64.to_string()),
                ("x-b3-spanid", S.to_string())
            ]
        );
        assert_eq!(format_single(&b), format!("{T64}-{S}"));
    }

    #[test]
    fn multi_sampling_states() {
        let cases = [
            (Some("1"), None, Sampling::Accept),
            (Some("true"), None, Sampling::Accept),
            (Some("0"), None, Sampling::Deny),
            (Some("false"), None, Sampling::Deny),
            (None, None, Sampling::Defer),
            (None, Some("1"), Sampling::Debug),
            (Some("0"), Some("1"), Sampling::Debug),
            (Some("1"), Some("1"), Sampling::Debug),
            (Some(" 1 "), None, Sampling::Accept),
        ];
        for (sampled, flags, want) in cases {
            assert_eq!(
                parse_multi_sampling(sampled, flags),
                Ok(want),
                "{sampled:?} {flags:?}"
            );
            let b = multi(Some(T128), Some(S), None, sampled, flags)
                .unwrap()
                .unwrap();
            assert_eq!(b.sampling, want);
        }
    }

    #[test]
    fn multi_sampling_headers_on_output() {
        let mut b = multi(Some(T128), Some(S), None, None, Some("1"))
            .unwrap()
            .unwrap();
        let h = multi_headers(&b);
        assert!(h.contains(&("x-b3-flags", "1".to_string())));
        assert!(!h.iter().any(|(n, _)| *n == "x-b3-sampled"));
        b.sampling = Sampling::Deny;
        assert!(multi_headers(&b).contains(&("x-b3-sampled", "0".to_string())));
    }

    #[test]
    fn multi_absent_ids() {
        assert_eq!(multi(None, None, None, None, None), Ok(None));
        assert_eq!(multi(None, None, None, Some("0"), None), Ok(None));
        assert_eq!(
            multi(Some(T128), None, None, None, None),
            Err(TraceError::B3SpanId)
        );
        assert_eq!(
            multi(None, Some(S), None, None, None),
            Err(TraceError::B3TraceId)
        );
    }

    #[test]
    fn multi_invalid_trace_ids() {
        for t in [
            "",
            "00000000000000000000000000000000",
            "0000000000000000",
            "463AC35C9F6413AD48485A3953BB6124",
            "463ac35c9f6413ad48485a3953bb612",
            "463ac35c9f6413ad48485a3953bb61245",
            "48485a3953bb612",
            "48485a3953bb61244",
            "48485a3953bb612g",
            "463ac35c9f6413ad-8485a3953bb6124",
            "ééééééééééééééé",
        ] {
            assert_eq!(
                multi(Some(t), Some(S), None, None, None),
                Err(TraceError::B3TraceId),
                "{t:?}"
            );
        }
    }

    #[test]
    fn multi_invalid_span_and_parent_ids() {
        for s in [
            "",
            "0000000000000000",
            "A2FB4A1D1A96D312",
            "a2fb4a1d1a96d31",
            "a2fb4a1d1a96d3121",
        ] {
            assert_eq!(
                multi(Some(T128), Some(s), None, None, None),
                Err(TraceError::B3SpanId),
                "{s:?}"
            );
            assert_eq!(
                multi(Some(T128), Some(S), Some(s), None, None),
                Err(TraceError::B3ParentSpanId),
                "{s:?}"
            );
        }
    }

    #[test]
    fn multi_invalid_sampling() {
        for sampled in ["", "2", "d", "yes", "TRUE", "True", "01"] {
            assert_eq!(
                multi(Some(T128), Some(S), None, Some(sampled), None),
                Err(TraceError::B3Sampled),
                "{sampled:?}"
            );
            assert_eq!(
                parse_multi_sampling(Some(sampled), None),
                Err(TraceError::B3Sampled)
            );
        }
        for flags in ["", "0", "2", "true", "d"] {
            assert_eq!(
                multi(Some(T128), Some(S), None, None, Some(flags)),
                Err(TraceError::B3Flags),
                "{flags:?}"
            );
            assert_eq!(
                parse_multi_sampling(None, Some(flags)),
                Err(TraceError::B3Flags)
            );
        }
    }

    #[test]
    fn single_full_context() {
        let v = format!("{T128}-{S}-1-{P}");
        let B3Single::Context(b) = parse_single(&v).unwrap() else {
            panic!("not a context");
        };
        assert_eq!(b.trace_id.to_hex(), T128);
        assert_eq!(b.span_id.to_hex(), S);
        assert_eq!(b.sampling, Sampling::Accept);
        assert_eq!(b.parent_span_id.unwrap().to_hex(), P);
        assert_eq!(format_single(&b), v);
    }

    #[test]
    fn single_forms_round_trip() {
        for v in [
            format!("{T128}-{S}"),
            format!("{T64}-{S}"),
            format!("{T128}-{S}-0"),
            format!("{T128}-{S}-d"),
            format!("{T64}-{S}-d-{P}"),
            format!("{T128}-{S}-0-{P}"),
        ] {
            let B3Single::Context(b) = parse_single(&v).unwrap() else {
                panic!("{v}");
            };
            assert_eq!(format_single(&b), v);
        }
        let B3Single::Context(b) = parse_single(&format!(" {T64}-{S}-d\t")).unwrap() else {
            panic!("ows");
        };
        assert!(b.trace_id_64bit);
        assert_eq!(b.sampling, Sampling::Debug);
    }

    #[test]
    fn single_sampling_only() {
        assert_eq!(
            parse_single("0"),
            Ok(B3Single::SamplingOnly(Sampling::Deny))
        );
        assert_eq!(
            parse_single("1"),
            Ok(B3Single::SamplingOnly(Sampling::Accept))
        );
        assert_eq!(
            parse_single("d"),
            Ok(B3Single::SamplingOnly(Sampling::Debug))
        );
        assert_eq!(
            parse_single(" d "),
            Ok(B3Single::SamplingOnly(Sampling::Debug))
        );
    }

    #[test]
    fn single_invalid() {
        let cases = [
            (String::new(), TraceError::B3SingleFormat),
            ("  ".to_string(), TraceError::B3SingleFormat),
            ("2".to_string(), TraceError::B3SingleFormat),
            ("true".to_string(), TraceError::B3SingleFormat),
            (T128.to_string(), TraceError::B3SingleFormat),
            (format!("{T128}-{S}-1-{P}-x"), TraceError::B3SingleFormat),
            (format!("{T128}-{S}-1-{P}-"), TraceError::B3SingleFormat),
            (format!("{T128}-{S}-1-{P}{P}"), TraceError::B3SingleFormat),
            (
                format!("{}-{S}", T128.to_uppercase()),
                TraceError::B3TraceId,
            ),
            (
                format!("00000000000000000000000000000000-{S}"),
                TraceError::B3TraceId,
            ),
            (format!("0000000000000000-{S}"), TraceError::B3TraceId),
            (format!("{}-{S}", &T128[1..]), TraceError::B3TraceId),
            (format!("-{S}"), TraceError::B3TraceId),
            (format!("{T128}-"), TraceError::B3SpanId),
            (format!("{T128}-0000000000000000"), TraceError::B3SpanId),
            (format!("{T128}-{}", &S[1..]), TraceError::B3SpanId),
            (format!("{T128}-{S}-"), TraceError::B3Sampled),
            (format!("{T128}-{S}-2"), TraceError::B3Sampled),
            (format!("{T128}-{S}-true"), TraceError::B3Sampled),
            // The third field is the sampling state, never a parent.
            (format!("{T128}-{S}-{P}"), TraceError::B3Sampled),
            (format!("{T128}-{S}-1-"), TraceError::B3ParentSpanId),
            (
                format!("{T128}-{S}-1-0000000000000000"),
                TraceError::B3ParentSpanId,
            ),
            (
                format!("{T128}-{S}-1-00F067AA0BA902B7"),
                TraceError::B3ParentSpanId,
            ),
            (
                format!("{T64}-{S}-1-{}", &P[1..]),
                TraceError::B3ParentSpanId,
            ),
            ("é".repeat(40), TraceError::B3SingleFormat),
            ("ééé".to_string(), TraceError::B3SingleFormat),
        ];
        for (v, want) in cases {
            assert_eq!(parse_single(&v), Err(want), "{v:?}");
        }
    }

    #[test]
    fn format_single_defer_drops_parent() {
        let b = B3 {
            trace_id: TraceId::from_hex(T128).unwrap(),
            trace_id_64bit: false,
            span_id: SpanId::from_hex(S).unwrap(),
            parent_span_id: SpanId::from_hex(P),
            sampling: Sampling::Defer,
        };
        assert_eq!(format_single(&b), format!("{T128}-{S}"));
        // A 64-bit flag on an id that doesn't fit is ignored rather than losing bits.
        let wide = B3 {
            trace_id_64bit: true,
            ..b
        };
        assert_eq!(format_single(&wide), format!("{T128}-{S}"));
        assert_eq!(multi_headers(&wide)[0], ("x-b3-traceid", T128.to_string()));
    }

    #[test]
    fn multi_and_single_agree() {
        let b = multi(Some(T64), Some(S), Some(P), Some("0"), None)
            .unwrap()
            .unwrap();
        assert_eq!(parse_single(&format_single(&b)), Ok(B3Single::Context(b)));
        assert_eq!(MULTI_HEADER_NAMES.len(), 5);
        assert_eq!(SINGLE_HEADER, "b3");
    }
}
