//! Reading the incoming trace context from request headers in the configured precedence, and
//! writing the child context in every configured format, consistently.

use meshwasm::host::{HeaderSnapshot, Host, MapKind};
use meshwasm::trace::b3::{self, B3Single, Sampling, B3};
use meshwasm::trace::w3c::{parse_traceparent, parse_traceparent_bytes, TraceParent, TraceState};
use meshwasm::trace::{SpanId, TraceError, TraceId};

use crate::config::Format;

/// Every header this filter reads and rewrites.
pub const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// A valid incoming context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Trace id.
    pub trace_id: TraceId,
    /// The trace id came as a 64-bit B3 id.
    pub trace_id_64bit: bool,
    /// The caller's span id (the parent of ours).
    pub parent: SpanId,
    /// The caller's sampling decision, if it made one.
    pub sampling: Sampling,
    /// W3C `tracestate`, when valid.
    pub tracestate: Option<TraceState>,
    /// The caller's W3C Level 2 random flag.
    pub random: bool,
    /// Which format it came in.
    pub format: Format,
}

/// What the request carried.
#[derive(Debug, Default)]
pub struct Extracted {
    /// The first valid context in precedence order.
    pub context: Option<Incoming>,
    /// A sampling decision without ids (B3 `0`/`1`/`d`, or `x-b3-sampled` alone).
    pub sampling_only: Option<Sampling>,
    /// Every invalid header seen, for counting (and a `tracestate` kept without its
    /// duplicate entries).
    pub errors: Vec<TraceError>,
    /// Whether any trace header was present at all.
    pub any_present: bool,
    /// The trace headers looked up and found absent (bit `i` for `TRACE_HEADERS[i]`), which
    /// [`inject`] then need not look up again.
    pub absent: u8,
}

/// The bits of the headers in a mask over [`TRACE_HEADERS`], in its order.
const TRACEPARENT: u8 = 1;
const TRACESTATE: u8 = 1 << 1;
const B3_SINGLE: u8 = 1 << 2;
const B3_TRACE_ID: u8 = 1 << 3;
const B3_SPAN_ID: u8 = 1 << 4;
const B3_PARENT_SPAN_ID: u8 = 1 << 5;
const B3_SAMPLED: u8 = 1 << 6;
const B3_FLAGS: u8 = 1 << 7;

fn defined(s: Sampling) -> Option<Sampling> {
    (s != Sampling::Defer).then_some(s)
}

/// Reads the incoming context from the request headers (one snapshot, no further host calls).
/// Invalid headers are recorded and skipped, so a lower-precedence valid format still wins
/// over starting a new trace.
pub fn extract(headers: &HeaderSnapshot, precedence: &[Format]) -> Extracted {
    let mut out = Extracted::default();
    for format in precedence {
        match format {
            Format::W3c => {
                let Some(tp) = headers.get("traceparent") else {
                    out.absent |= TRACEPARENT;
                    continue;
                };
                out.any_present = true;
                // Read as the bytes it came in; a value that is not ASCII is read as its lossy
                // text (as header values are everywhere else), which no valid one is.
                let parsed = if tp.is_ascii() {
                    parse_traceparent_bytes(tp)
                } else {
                    parse_traceparent(&String::from_utf8_lossy(tp))
                };
                match parsed {
                    Ok(p) => {
                        let tracestate = match headers.get_joined("tracestate") {
                            Some(ts) => read_tracestate(&ts, &mut out.errors),
                            None => {
                                out.absent |= TRACESTATE;
                                None
                            }
                        };
                        out.context = Some(Incoming {
                            trace_id: p.trace_id,
                            trace_id_64bit: false,
                            parent: p.parent_id,
                            sampling: if p.sampled() {
                                Sampling::Accept
                            } else {
                                Sampling::Deny
                            },
                            tracestate,
                            random: p.random(),
                            format: Format::W3c,
                        });
                        return out;
                    }
                    Err(e) => out.errors.push(e),
                }
            }
            Format::B3Single => {
                let Some(v) = headers.get_str("b3") else {
                    out.absent |= B3_SINGLE;
                    continue;
                };
                out.any_present = true;
                match b3::parse_single(&v) {
                    Ok(B3Single::Context(b)) => {
                        out.context = Some(from_b3(&b, Format::B3Single));
                        return out;
                    }
                    Ok(B3Single::SamplingOnly(s)) => {
                        out.sampling_only = out.sampling_only.or(defined(s));
                    }
                    Err(e) => out.errors.push(e),
                }
            }
            Format::B3 => {
                let trace = headers.get_str("x-b3-traceid");
                let span = headers.get_str("x-b3-spanid");
                let parent = headers.get_str("x-b3-parentspanid");
                let sampled = headers.get_str("x-b3-sampled");
                let flags = headers.get_str("x-b3-flags");
                for (bit, value) in [
                    (B3_TRACE_ID, &trace),
                    (B3_SPAN_ID, &span),
                    (B3_PARENT_SPAN_ID, &parent),
                    (B3_SAMPLED, &sampled),
                    (B3_FLAGS, &flags),
                ] {
                    if value.is_none() {
                        out.absent |= bit;
                    }
                }
                if trace.is_none() && span.is_none() && sampled.is_none() && flags.is_none() {
                    continue;
                }
                out.any_present = true;
                match b3::parse_multi(
                    trace.as_deref(),
                    span.as_deref(),
                    parent.as_deref(),
                    sampled.as_deref(),
                    flags.as_deref(),
                ) {
                    Ok(Some(b)) => {
                        out.context = Some(from_b3(&b, Format::B3));
                        return out;
                    }
                    Ok(None) => {
                        match b3::parse_multi_sampling(sampled.as_deref(), flags.as_deref()) {
                            Ok(s) => out.sampling_only = out.sampling_only.or(defined(s)),
                            Err(e) => out.errors.push(e),
                        }
                    }
                    Err(e) => out.errors.push(e),
                }
            }
        }
    }
    out
}

/// The `tracestate` passed on from a (combined) value, per case as W3C Trace Context Level 2
/// says (see [`TraceState::parse_detailed`]): `None` when it is empty ("SHOULD avoid sending"
/// an empty one) or cannot be parsed (recorded in `errors`); a header kept without its
/// duplicate entries is recorded once as [`TraceError::TracestateDuplicateKey`].
fn read_tracestate(value: &str, errors: &mut Vec<TraceError>) -> Option<TraceState> {
    match TraceState::parse_detailed(value) {
        Ok((ts, dropped)) => {
            if dropped.duplicate_keys > 0 {
                errors.push(TraceError::TracestateDuplicateKey);
            }
            (!ts.is_empty()).then_some(ts)
        }
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

fn from_b3(b: &B3, format: Format) -> Incoming {
    Incoming {
        trace_id: b.trace_id,
        trace_id_64bit: b.trace_id_64bit,
        parent: b.span_id,
        sampling: b.sampling,
        tracestate: None,
        random: false,
        format,
    }
}

/// The context this hop sends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Trace id.
    pub trace_id: TraceId,
    /// Keep B3 output at 64 bits.
    pub trace_id_64bit: bool,
    /// Our new span id.
    pub span_id: SpanId,
    /// The caller's span id.
    pub parent: Option<SpanId>,
    /// Sampled?
    pub sampled: bool,
    /// B3 debug (forces sampling downstream too).
    pub debug: bool,
    /// W3C Level 2 random flag.
    pub random: bool,
    /// `tracestate` passed on.
    pub tracestate: Option<TraceState>,
}

/// Replaces every trace header of the request with the outgoing context in `formats`:
/// the headers written are replaced, and the other trace headers the request carried
/// (`present`) are removed, so nothing incoming is forwarded as it was. Values are written from
/// the stack, one hostcall each, removals first. `absent`: trace headers already known to be
/// missing from `present` (see [`Extracted::absent`]), not looked up again.
pub fn inject(
    host: &dyn Host,
    present: &HeaderSnapshot,
    absent: u8,
    out: &Outgoing,
    formats: &[Format],
) {
    let b3 = out.b3();
    let skip = written_headers(out, formats) | absent;
    for (i, name) in TRACE_HEADERS.iter().enumerate() {
        if skip & (1 << i) == 0 && present.contains(name) {
            host.remove_request_header(name);
        }
    }
    let set = |name: &str, value: &[u8]| {
        host.set_header(MapKind::RequestHeaders, name, Some(value));
    };
    for format in formats {
        match format {
            Format::W3c => {
                set("traceparent", out.traceparent().header_value().as_bytes());
                if let Some(ts) = &out.tracestate {
                    set("tracestate", ts.to_header().as_bytes());
                }
            }
            Format::B3 => b3::each_multi_header(&b3, |name, value| set(name, value.as_bytes())),
            Format::B3Single => set("b3", b3::format_single_value(&b3).as_bytes()),
        }
    }
}

impl Outgoing {
    /// The B3 sampling state sent: Debug wins, else the decision.
    fn sampling(&self) -> Sampling {
        if self.debug {
            Sampling::Debug
        } else if self.sampled {
            Sampling::Accept
        } else {
            Sampling::Deny
        }
    }

    /// The context as B3 sends it.
    fn b3(&self) -> B3 {
        B3 {
            trace_id: self.trace_id,
            trace_id_64bit: self.trace_id_64bit,
            span_id: self.span_id,
            parent_span_id: self.parent,
            sampling: self.sampling(),
        }
    }

    /// The context as `traceparent` sends it.
    fn traceparent(&self) -> TraceParent {
        let flags = u8::from(self.sampled)
            | if self.random {
                TraceParent::FLAG_RANDOM
            } else {
                0
            };
        TraceParent {
            version: 0,
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags,
        }
    }
}

/// Which of [`TRACE_HEADERS`] [`inject`] writes for `out` in `formats` (bit `i` for
/// `TRACE_HEADERS[i]`), without writing them.
fn written_headers(out: &Outgoing, formats: &[Format]) -> u8 {
    let mut written = 0u8;
    for format in formats {
        written |= match format {
            Format::W3c => {
                TRACEPARENT
                    | if out.tracestate.is_some() {
                        TRACESTATE
                    } else {
                        0
                    }
            }
            Format::B3Single => B3_SINGLE,
            Format::B3 => {
                let parent = if out.parent.is_some() {
                    B3_PARENT_SPAN_ID
                } else {
                    0
                };
                let sampling = match out.sampling() {
                    Sampling::Accept | Sampling::Deny => B3_SAMPLED,
                    Sampling::Debug => B3_FLAGS,
                    Sampling::Defer => 0,
                };
                B3_TRACE_ID | B3_SPAN_ID | parent | sampling
            }
        };
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm::trace::{SpanId, TraceId};

    /// The names [`written_headers`] predicts are the ones the writers write, in every case.
    #[test]
    fn written_headers_match_the_writers() {
        let formats = [Format::W3c, Format::B3, Format::B3Single];
        for bits in 0..32u8 {
            let out = Outgoing {
                trace_id: TraceId(7),
                trace_id_64bit: bits & 1 != 0,
                span_id: SpanId(8),
                parent: (bits & 2 != 0).then_some(SpanId(9)),
                sampled: bits & 4 != 0,
                debug: bits & 8 != 0,
                random: true,
                tracestate: (bits & 16 != 0).then(|| TraceState::parse("a=1").unwrap_or_default()),
            };
            for n in 0..=formats.len() {
                let formats = &formats[..n];
                let mut want: Vec<&str> = Vec::new();
                for f in formats {
                    match f {
                        Format::W3c => {
                            want.push("traceparent");
                            if out.tracestate.is_some() {
                                want.push("tracestate");
                            }
                        }
                        Format::B3 => want.extend(b3::multi_headers(&out.b3()).iter().map(|h| h.0)),
                        Format::B3Single => want.push("b3"),
                    }
                }
                let mask = written_headers(&out, formats);
                for (i, name) in TRACE_HEADERS.iter().enumerate() {
                    assert_eq!(
                        mask & (1 << i) != 0,
                        want.contains(name),
                        "{name} {bits} {n}"
                    );
                }
            }
        }
    }
}
