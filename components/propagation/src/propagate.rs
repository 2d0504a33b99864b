//! What the component computes, as plain Rust over the WIT types: the incoming context read in
//! the configured precedence with the SDK's codecs (the sidecar filter's validation, the same
//! code), and the outgoing headers written from it in every configured format.

use std::borrow::Cow;

use meshwasm::config::check;
use meshwasm::host::HeaderSnapshot;
use meshwasm::trace::b3::{self, B3Single, Sampling, B3};
use meshwasm::trace::baggage::{Baggage, MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS};
use meshwasm::trace::w3c::{parse_traceparent, TraceParent, TraceState};
use meshwasm::trace::TraceError;

pub use crate::bindings::exports::meshwasm::propagation::propagate::{
    Config, Format, Outgoing, TraceContext,
};

/// The only request headers the component looks at; others are not even copied.
pub const READ: [&str; 10] = [
    "traceparent",
    "tracestate",
    "b3",
    b3::TRACE_ID_HEADER,
    b3::SPAN_ID_HEADER,
    b3::PARENT_SPAN_ID_HEADER,
    b3::SAMPLED_HEADER,
    b3::FLAGS_HEADER,
    "baggage",
    "x-request-id",
];

/// The longest `x-request-id` passed on.
pub const MAX_REQUEST_ID_LEN: usize = 256;

/// The sidecar filter's defaults (`filters/trace-propagation`: `extract`, `propagate`,
/// `baggage_max_bytes`, `baggage_max_members`), baggage and `x-request-id` passed on.
pub fn default_config() -> Config {
    Config {
        extract: vec![Format::W3c, Format::B3Single, Format::B3],
        inject: vec![Format::W3c, Format::B3],
        baggage: true,
        baggage_max_bytes: MAX_BAGGAGE_BYTES as u32,
        baggage_max_members: MAX_BAGGAGE_MEMBERS as u32,
        request_id: true,
    }
}

/// A valid incoming context, whatever its format, in the codecs' types: B3's fields hold every
/// format's (W3C has no parent span id and no deferred sampling; B3 has no random flag and no
/// `tracestate`).
struct Context {
    ids: B3,
    random: bool,
    tracestate: Option<TraceState>,
    format: Format,
}

/// What the incoming headers held.
#[derive(Default)]
struct Incoming {
    context: Option<Context>,
    /// A B3 sampling decision sent without ids (`b3: 0`, `x-b3-sampled: 1` alone, ...).
    decision_only: Option<Sampling>,
    invalid: Vec<String>,
}

impl Incoming {
    fn reject(&mut self, e: TraceError) {
        self.invalid.push(e.reason().to_string());
    }

    fn decided(&mut self, s: Sampling) {
        if self.decision_only.is_none() && s != Sampling::Defer {
            self.decision_only = Some(s);
        }
    }
}

/// The outgoing headers for a request with `headers`; see `propagate` in `wit/propagation.wit`.
pub fn propagate(config: &Config, headers: &[(String, String)]) -> Result<Outgoing, String> {
    check_config(config)?;
    let request = HeaderSnapshot::new(
        headers
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .filter(|(name, _)| READ.contains(&name.as_str()))
            .map(|(name, value)| (name, value.as_bytes().to_vec()))
            .collect(),
    );
    let mut incoming = Incoming::default();
    for format in &config.extract {
        if incoming.context.is_none() {
            read_format(&request, *format, &mut incoming);
        }
    }
    let mut out = Outgoing {
        headers: Vec::new(),
        context: incoming.context.as_ref().map(describe),
        sampled: match &incoming.context {
            Some(c) => c.ids.sampling.decision(),
            None => incoming.decision_only.and_then(|s| s.decision()),
        },
        baggage: Vec::new(),
        request_id: None,
        invalid: Vec::new(),
    };
    for format in &config.inject {
        match &incoming.context {
            Some(c) => write_context(c, *format, &mut out.headers),
            None => write_decision(incoming.decision_only, *format, &mut out.headers),
        }
    }
    if config.baggage {
        pass_baggage(config, &request, &mut out, &mut incoming.invalid);
    }
    if config.request_id {
        if let Some(id) = request.get_str("x-request-id") {
            let fits = id.len() <= MAX_REQUEST_ID_LEN && !id.is_empty();
            if fits && check::header_value(&id, "x-request-id").is_ok() {
                out.headers
                    .push(("x-request-id".to_string(), id.to_string()));
                out.request_id = Some(id.into_owned());
            } else {
                incoming.invalid.push("request_id".to_string());
            }
        }
    }
    out.invalid = incoming.invalid;
    Ok(out)
}

/// A configuration the codecs cannot honour is an error, never a trap.
fn check_config(config: &Config) -> Result<(), String> {
    if config.baggage_max_bytes as usize > MAX_BAGGAGE_BYTES {
        return Err(format!(
            "baggage-max-bytes: {} is above the baggage codec's limit of {MAX_BAGGAGE_BYTES}",
            config.baggage_max_bytes
        ));
    }
    if config.baggage_max_members as usize > MAX_BAGGAGE_MEMBERS {
        return Err(format!(
            "baggage-max-members: {} is above the baggage codec's limit of {MAX_BAGGAGE_MEMBERS}",
            config.baggage_max_members
        ));
    }
    Ok(())
}

/// Reads one format into `incoming`: a context when valid, a lone B3 decision, or the reason
/// it was dropped (as the sidecar filter reads it: a dropped header leaves the next format its
/// chance).
fn read_format(request: &HeaderSnapshot, format: Format, incoming: &mut Incoming) {
    let parsed = match format {
        Format::W3c => match request.get_str("traceparent") {
            None => return,
            Some(value) => parse_traceparent(&value).map(|tp| {
                let tracestate = request
                    .get_joined("tracestate")
                    .and_then(|ts| kept_tracestate(&ts, incoming));
                let sampling = if tp.sampled() {
                    Sampling::Accept
                } else {
                    Sampling::Deny
                };
                Some(Context {
                    ids: B3 {
                        trace_id: tp.trace_id,
                        trace_id_64bit: false,
                        span_id: tp.parent_id,
                        parent_span_id: None,
                        sampling,
                    },
                    random: tp.random(),
                    tracestate,
                    format,
                })
            }),
        },
        Format::B3Single => match request.get_str("b3") {
            None => return,
            Some(value) => b3::parse_single(&value).map(|single| match single {
                B3Single::Context(ids) => Some(from_b3(ids, format)),
                B3Single::SamplingOnly(s) => {
                    incoming.decided(s);
                    None
                }
            }),
        },
        Format::B3 => {
            let field = |name: &str| request.get_str(name);
            let [trace, span, parent, sampled, flags] = b3::MULTI_HEADER_NAMES.map(field);
            let sampling = (sampled.as_deref(), flags.as_deref());
            match b3::parse_multi(
                trace.as_deref(),
                span.as_deref(),
                parent.as_deref(),
                sampling.0,
                sampling.1,
            ) {
                Ok(Some(ids)) => Ok(Some(from_b3(ids, format))),
                Ok(None) if sampling == (None, None) => return,
                Ok(None) => b3::parse_multi_sampling(sampling.0, sampling.1).map(|s| {
                    incoming.decided(s);
                    None
                }),
                Err(e) => Err(e),
            }
        }
    };
    match parsed {
        Ok(context) => incoming.context = context,
        Err(e) => incoming.reject(e),
    }
}

fn from_b3(ids: B3, format: Format) -> Context {
    Context {
        ids,
        random: false,
        tracestate: None,
        format,
    }
}

/// `tracestate` as W3C Trace Context Level 2 has a receiver keep it: without duplicate keys
/// (reported once), not at all when empty or invalid (reported).
fn kept_tracestate(value: &str, incoming: &mut Incoming) -> Option<TraceState> {
    match TraceState::parse_detailed(value) {
        Err(e) => {
            incoming.reject(e);
            None
        }
        Ok((state, dropped)) => {
            if dropped.duplicate_keys > 0 {
                incoming.reject(TraceError::TracestateDuplicateKey);
            }
            Some(state).filter(|s| !s.is_empty())
        }
    }
}

fn describe(c: &Context) -> TraceContext {
    TraceContext {
        trace_id: c.ids.trace_id.to_hex(),
        short_trace_id: c.ids.trace_id_64bit,
        span_id: c.ids.span_id.to_hex(),
        parent_span_id: c.ids.parent_span_id.map(|p| p.to_hex()),
        sampled: c.ids.sampling.decision(),
        debug: c.ids.sampling == Sampling::Debug,
        random: c.random,
        tracestate: c
            .tracestate
            .as_ref()
            .map(|t| t.members().to_vec())
            .unwrap_or_default(),
        format: c.format,
    }
}

/// The context in `format`, the caller's span id as the parent of the app's calls (the app adds
/// no span of its own: its sidecar's outbound hop does).
fn write_context(c: &Context, format: Format, headers: &mut Vec<(String, String)>) {
    match format {
        Format::W3c => {
            // W3C has no deferred decision: "not sampled" is what the flag says without one.
            let sampled = c.ids.sampling.decision() == Some(true);
            let flags = u8::from(sampled) | if c.random { 0x02 } else { 0 };
            let tp = TraceParent::new(c.ids.trace_id, c.ids.span_id, flags);
            headers.push(("traceparent".to_string(), tp.to_header()));
            if let Some(ts) = &c.tracestate {
                headers.push(("tracestate".to_string(), ts.to_header()));
            }
        }
        Format::B3 => headers.extend(
            b3::multi_headers(&c.ids)
                .into_iter()
                .map(|(name, value)| (name.to_string(), value)),
        ),
        Format::B3Single => headers.push(("b3".to_string(), b3::format_single(&c.ids))),
    }
}

/// A lone B3 sampling decision in `format` (W3C cannot carry one without ids).
fn write_decision(decision: Option<Sampling>, format: Format, headers: &mut Vec<(String, String)>) {
    let (name, value) = match (decision, format) {
        (None, _) | (_, Format::W3c) => return,
        (Some(Sampling::Debug), Format::B3) => (b3::FLAGS_HEADER, "1"),
        (Some(Sampling::Debug), Format::B3Single) => ("b3", "d"),
        (Some(Sampling::Accept), Format::B3) => (b3::SAMPLED_HEADER, "1"),
        (Some(Sampling::Accept), Format::B3Single) => ("b3", "1"),
        (Some(Sampling::Deny), Format::B3) => (b3::SAMPLED_HEADER, "0"),
        (Some(Sampling::Deny), Format::B3Single) => ("b3", "0"),
        (Some(Sampling::Defer), _) => return,
    };
    headers.push((name.to_string(), value.to_string()));
}

/// `baggage`, all its fields as one list, passed on when valid and within the configured limits,
/// else dropped with the reason the sidecar filter counts.
fn pass_baggage(
    config: &Config,
    request: &HeaderSnapshot,
    out: &mut Outgoing,
    invalid: &mut Vec<String>,
) {
    let Some(value) = request.get_joined("baggage") else {
        return;
    };
    let value: Cow<'_, str> = match value {
        Cow::Borrowed(v) => Cow::Borrowed(v.trim_matches([' ', '\t'])),
        Cow::Owned(v) => Cow::Owned(v.trim_matches([' ', '\t']).to_string()),
    };
    if value.len() > config.baggage_max_bytes as usize {
        invalid.push("baggage_too_large".to_string());
        return;
    }
    match Baggage::parse(&value) {
        Err(e) => invalid.push(e.reason().to_string()),
        Ok(b) if b.len() > config.baggage_max_members as usize => {
            invalid.push("baggage_too_many_members".to_string());
        }
        Ok(b) if b.is_empty() => {}
        Ok(b) => {
            out.baggage = b
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.headers
                .push(("baggage".to_string(), value.into_owned()));
        }
    }
}
