//! Trace header propagation: reads W3C, B3 multi and B3 single context, validates it strictly,
//! creates a child span per hop, writes every configured format consistently, samples, passes
//! W3C baggage within limits, and exports sampled spans (Zipkin v2 or OTLP/HTTP JSON).

pub mod config;
pub mod exporter;
pub mod naming;
pub mod propagation;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use meshwasm::host::HeaderSnapshot;
use meshwasm::prelude::*;
use meshwasm::trace::b3::Sampling;
use meshwasm::trace::baggage::Baggage;
use meshwasm::trace::export::{Endpoint, Span, SpanKind, Tag};
use meshwasm::trace::{sample_by_trace_id, write_hex, IdGenerator, SpanId, TraceId};

use config::{Config, Direction, Format};
use exporter::Exporter;
use propagation::{extract, inject, Outgoing};

/// Incoming sampling or debug decisions replaced by the local policy (untrusted caller).
pub const UNTRUSTED_DECISIONS: &str = "meshwasm_trace_untrusted_decisions_total";

/// The root: configuration, id generator, metrics and the span exporter of one worker.
pub struct TracePropagation {
    cfg: Config,
    service: String,
    ids: RefCell<IdGenerator>,
    requests: MetricFamily,
    /// The ids of `requests` by [`request_series`], looked up in the family once.
    request_ids: [Cell<Option<u32>>; 8],
    invalid: MetricFamily,
    /// Incoming sampling or debug decisions replaced by the local policy: the caller is not
    /// trusted with them (`trusted_clients`).
    untrusted: Metric,
    exporter: Option<Exporter>,
    /// The properties a span reads at the end of the stream, in one hostcall.
    span_properties: PropertyBatch,
}

/// Per-request state: the span this hop created.
pub struct TraceRequest {
    span: Option<HopSpan>,
}

struct HopSpan {
    /// The trace id's high and low halves: a `u128` field would align the per-request context
    /// to 16 bytes, and an over-aligned allocation costs the allocator far more.
    trace_id: [u64; 2],
    trace_id_64bit: bool,
    span_id: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    start: SystemTime,
    method: String,
    path: String,
    request_id: Option<String>,
}

/// The index of a `meshwasm_trace_requests_total` series in `request_ids`: the direction is
/// fixed per configuration, so the context format and the decision pick the series.
fn request_series(f: Option<Format>, sampled: bool) -> usize {
    let format = match f {
        Some(Format::W3c) => 0,
        Some(Format::B3) => 1,
        Some(Format::B3Single) => 2,
        None => 3,
    };
    format * 2 + usize::from(sampled)
}

fn format_label(f: Option<Format>) -> &'static str {
    match f {
        Some(Format::W3c) => "w3c",
        Some(Format::B3) => "b3",
        Some(Format::B3Single) => "b3-single",
        None => "none",
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl HopSpan {
    fn trace_id(&self) -> TraceId {
        TraceId((u128::from(self.trace_id[0]) << 64) | u128::from(self.trace_id[1]))
    }
}

impl TracePropagation {
    fn count_invalid(&self, host: &dyn Host, reason: &str) {
        self.invalid.inc(host, &[reason]);
    }

    /// Sets `x-request-id` when the request has none and the configuration asks for it, and
    /// returns the request's id when `keep` (the span records it), else `None` with no copy.
    fn request_id(&self, host: &dyn Host, headers: &HeaderSnapshot, keep: bool) -> Option<String> {
        if let Some(id) = headers.get("x-request-id") {
            return keep.then(|| owned_text(id));
        }
        if !self.cfg.set_request_id {
            return None;
        }
        // A version 4 UUID from the worker's generator (RFC 9562 layout), written on the stack.
        let mut ids = self.ids.borrow_mut();
        let (a, b) = (ids.next_u64(), ids.next_u64());
        let a = (a & !0xf000) | 0x4000;
        let b = (b & !(0xc << 60)) | (0x8 << 60);
        let mut id = [b'-'; 36];
        let fields = [
            (0..8, a >> 32),
            (9..13, (a >> 16) & 0xffff),
            (14..18, a & 0xffff),
            (19..23, b >> 48),
            (24..36, b & 0xffff_ffff_ffff),
        ];
        for (at, value) in fields {
            if let Some(out) = id.get_mut(at) {
                write_hex(out, value);
            }
        }
        host.set_header(MapKind::RequestHeaders, "x-request-id", Some(&id));
        keep.then(|| String::from_utf8_lossy(&id).into_owned())
    }

    /// Adds one to `meshwasm_trace_requests_total` for this request's labels, the series' id
    /// looked up in the family on first use only.
    fn count_request(&self, host: &dyn Host, format: Option<Format>, sampled: bool) {
        let Some(slot) = self.request_ids.get(request_series(format, sampled)) else {
            return;
        };
        let id = slot.get().or_else(|| {
            let direction = match self.cfg.direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            };
            let sampled = if sampled { "true" } else { "false" };
            let id = self
                .requests
                .id(host, &[direction, format_label(format), sampled]);
            slot.set(id);
            id
        });
        if let Some(id) = id {
            let _ = host.increment_metric(id, 1);
        }
    }

    /// Checks `baggage`, all its fields together (W3C Baggage: several fields are one list),
    /// against the limits; removes every field when it breaks one.
    fn enforce_baggage(&self, host: &dyn Host, headers: &HeaderSnapshot) {
        let Some(value) = headers.get_joined("baggage") else {
            return;
        };
        let reason = if value.len() > self.cfg.baggage_max_bytes {
            Some("baggage_too_large")
        } else {
            match Baggage::parse(&value) {
                Ok(b) if b.len() > self.cfg.baggage_max_members => Some("baggage_too_many_members"),
                Ok(_) => None,
                Err(e) => Some(e.reason()),
            }
        };
        if let Some(reason) = reason {
            host.remove_request_header("baggage");
            self.count_invalid(host, reason);
        }
    }
}

impl RootFilter for TracePropagation {
    type Config = Config;
    type Http = TraceRequest;
    const NAME: &'static str = "trace_propagation";

    fn configure(cfg: Config, host: &dyn Host) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let service = cfg
            .service_name
            .clone()
            .or_else(|| properties::xds_node_cluster(host).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "unknown".to_string());
        let seed = RandomState::new().hash_one(micros(host.now())) ^ micros(host.now());
        let exporter = cfg.export.clone().map(|e| Exporter::new(e, &service, host));
        let span_properties = match (&exporter, cfg.direction) {
            (None, _) => PropertyBatch::new(host, &[], &[]),
            (Some(_), direction) => PropertyBatch::new(host, &span_properties(direction), &[]),
        };
        Ok(TracePropagation {
            service,
            ids: RefCell::new(IdGenerator::new(seed)),
            requests: MetricFamily::counter(
                "meshwasm_trace_requests_total",
                &["direction", "context", "sampled"],
            ),
            request_ids: Default::default(),
            invalid: MetricFamily::counter("meshwasm_trace_invalid_headers_total", &["reason"]),
            untrusted: Metric::counter(host, UNTRUSTED_DECISIONS),
            exporter,
            span_properties,
            cfg,
        })
    }

    fn tick_period(&self) -> Option<std::time::Duration> {
        self.exporter.as_ref().map(Exporter::tick_period)
    }

    fn on_tick(&self, host: &dyn Host) {
        if let Some(e) = &self.exporter {
            e.on_tick(host);
        }
    }

    fn on_callout_response(&self, host: &dyn Host, response: CalloutResponse) {
        if let Some(e) = &self.exporter {
            e.on_callout_response(host, &response);
        }
    }

    fn new_http(&self, _host: &dyn Host) -> TraceRequest {
        TraceRequest { span: None }
    }
}

impl HttpFilter for TraceRequest {
    type Root = TracePropagation;
    const PHASES: Phases = Phases::REQUEST_HEADERS
        .with(Phases::RESPONSE_HEADERS)
        .with(Phases::LOG);

    fn on_request_headers(
        &mut self,
        root: &TracePropagation,
        host: &dyn Host,
        _eos: bool,
    ) -> Action {
        // One host call for every request header; everything below looks names up locally.
        let headers = host.snapshot(MapKind::RequestHeaders);
        let ex = extract(&headers, &root.cfg.extract);
        for e in &ex.errors {
            root.count_invalid(host, e.reason());
        }
        let span_id = root.ids.borrow_mut().span_id();
        let (trace_id, trace_id_64bit, parent, sampling, tracestate, random, format) =
            match ex.context {
                Some(c) => (
                    c.trace_id,
                    c.trace_id_64bit,
                    Some(c.parent),
                    c.sampling,
                    c.tracestate,
                    c.random,
                    Some(c.format),
                ),
                None => (
                    root.ids.borrow_mut().trace_id(),
                    false,
                    None,
                    ex.sampling_only.unwrap_or(Sampling::Defer),
                    None,
                    true,
                    None,
                ),
            };
        // An incoming decision counts only from a caller trusted with it; anyone else's trace
        // continues under the local sampling policy.
        let sampling = if sampling != Sampling::Defer && !root.cfg.trusted_clients.believes(host) {
            root.untrusted.inc(host);
            Sampling::Defer
        } else {
            sampling
        };
        let debug = sampling == Sampling::Debug;
        let sampled = match sampling {
            Sampling::Accept | Sampling::Debug => true,
            Sampling::Deny => false,
            Sampling::Defer => sample_by_trace_id(trace_id, root.cfg.sampling_rate),
        };
        let out = Outgoing {
            trace_id,
            trace_id_64bit,
            span_id,
            parent,
            sampled,
            debug,
            random,
            tracestate,
        };
        inject(host, &headers, ex.absent, &out, &root.cfg.propagate);
        root.enforce_baggage(host, &headers);
        let exporting = sampled && root.exporter.is_some();
        let request_id = root.request_id(host, &headers, exporting);
        root.count_request(host, format, sampled);
        let (method, path, start) = if exporting {
            (
                headers.get(":method").map(owned_text).unwrap_or_default(),
                headers.get(":path").map(owned_text).unwrap_or_default(),
                host.now(),
            )
        } else {
            (String::new(), String::new(), UNIX_EPOCH)
        };
        self.span = Some(HopSpan {
            trace_id: [(trace_id.0 >> 64) as u64, trace_id.low64()],
            trace_id_64bit,
            span_id,
            parent,
            sampled,
            start,
            method,
            path,
            request_id,
        });
        Action::Continue
    }

    fn on_response_headers(
        &mut self,
        root: &TracePropagation,
        host: &dyn Host,
        _eos: bool,
    ) -> Action {
        if let (Some(name), Some(span)) = (&root.cfg.response_trace_header, &self.span) {
            host.set_response_header(name, &span.trace_id().to_hex());
        }
        Action::Continue
    }

    fn on_log(&mut self, root: &TracePropagation, host: &dyn Host) {
        let (Some(exporter), Some(hop)) = (&root.exporter, self.span.take()) else {
            return;
        };
        if !hop.sampled {
            return;
        }
        root.span_properties.with(host, |host| {
            exporter.push(host, build_span(root, exporter, host, hop));
        });
    }
}

impl TracePropagation {
    /// The batch of the properties a span reads at the end of the stream.
    pub fn span_properties(&self) -> &PropertyBatch {
        &self.span_properties
    }
}

impl TraceRequest {
    /// Whether this request's `on_log` will build and export a span (it reads properties then).
    pub fn exports_span(&self, root: &TracePropagation) -> bool {
        root.exporter.is_some() && self.span.as_ref().is_some_and(|s| s.sampled)
    }
}

/// The properties [`build_span`] reads, present on every proxied request (a local reply without
/// an upstream, or a stream reset before any response, reads them one by one: see
/// [`meshwasm::batch`]). The response code among them spares the span a `:status` header read
/// ([`properties::response_status`]).
pub fn span_properties(direction: Direction) -> [&'static str; 6] {
    let remote = match direction {
        Direction::Outbound => "upstream.address",
        Direction::Inbound => "source.address",
    };
    [
        properties::RESPONSE_CODE,
        "response.flags",
        remote,
        "xds.cluster_name",
        "xds.route_name",
        "destination.address",
    ]
}

/// The span of a finished request. The name is low-cardinality (the method and Envoy's route
/// name, else the configured fallback); the path goes into the `http.path` tag; every tag value
/// is cut to `export.max_tag_length`. The properties read are the ones the span always had.
fn build_span(root: &TracePropagation, exporter: &Exporter, host: &dyn Host, hop: HopSpan) -> Span {
    let status = properties::response_status(host).unwrap_or(0);
    let flags = uint_property(host, &["response", "flags"]).unwrap_or(0);
    // The proxy's clock from the request headers to the end of the stream: one clock reading
    // (about 0.2 us) where the `request.duration` attribute cost a property read (1.3 us).
    let start_us = micros(hop.start);
    let duration_us = micros(host.now()).saturating_sub(start_us);
    let (kind, remote_addr) = match root.cfg.direction {
        Direction::Outbound => (
            SpanKind::Client,
            string_property(host, &["upstream", "address"]),
        ),
        Direction::Inbound => (
            SpanKind::Server,
            string_property(host, &["source", "address"]),
        ),
    };
    let cluster = string_property(host, &["xds", "cluster_name"]);
    let route = string_property(host, &["xds", "route_name"]);
    let name = exporter.span_name(&hop.method, route.as_deref(), cluster.as_deref());
    let trace_id = hop.trace_id();
    let mut path = hop.path;
    if let Some(query) = path.find('?') {
        path.truncate(query);
    }
    let response_flags = if flags == 0 {
        Cow::Borrowed("-")
    } else {
        Cow::Owned(properties::response_flags_short(flags))
    };
    let mut tags: Vec<Tag> = Vec::with_capacity(8);
    tags.extend([
        (Cow::Borrowed("component"), Cow::Borrowed("proxy")),
        (Cow::Borrowed("http.method"), Cow::Owned(hop.method)),
        (Cow::Borrowed("http.path"), Cow::Owned(path)),
        (
            Cow::Borrowed("http.status_code"),
            Cow::Owned(decimal(status)),
        ),
        (Cow::Borrowed("response_flags"), response_flags),
    ]);
    if let Some(c) = cluster {
        tags.push((Cow::Borrowed("upstream_cluster"), Cow::Owned(c)));
    }
    if let Some(r) = route {
        tags.push((Cow::Borrowed("route_name"), Cow::Owned(r)));
    }
    if let Some(id) = hop.request_id {
        tags.push((Cow::Borrowed("guid:x-request-id"), Cow::Owned(id)));
    }
    exporter.cap_tags(host, &mut tags);
    Span {
        trace_id,
        trace_id_64bit: hop.trace_id_64bit,
        span_id: hop.span_id,
        parent_id: hop.parent,
        name,
        kind,
        start_us,
        duration_us,
        local: Endpoint {
            service: Some(root.service.clone()),
            address: string_property(host, &["destination", "address"]),
        },
        remote: Endpoint {
            service: None,
            address: remote_addr,
        },
        error: status == 0 || status >= 500,
        tags,
    }
}

/// A header value as owned text, lossy UTF-8 as [`HeaderSnapshot::get_str`] reads it, checked
/// the fast way first (every real value is valid).
fn owned_text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}

/// A string attribute, as [`properties::string`] reads it, from its path segments (no dotted
/// path to split on every read).
fn string_property(host: &dyn Host, path: &[&str]) -> Option<String> {
    host.property(path).and_then(|b| String::from_utf8(b).ok())
}

/// A uint64 attribute, as [`properties::uint`] reads it, from its path segments.
fn uint_property(host: &dyn Host, path: &[&str]) -> Option<u64> {
    host.property(path).and_then(|b| properties::decode_u64(&b))
}

/// `n` in decimal, as `n.to_string()` writes it, without the formatting machinery.
fn decimal(n: i64) -> String {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut rest = n.unsigned_abs();
    // Least significant first; 20 digits hold any u64.
    for d in digits.iter_mut() {
        *d = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut out = String::with_capacity(len + 1);
    if n < 0 {
        out.push('-');
    }
    out.extend(digits.iter().take(len).rev().map(|d| char::from(*d)));
    out
}

#[cfg(feature = "entry")]
meshwasm::export_filter!(TracePropagation, phases: [request_headers, response_headers, log]);

#[cfg(test)]
mod tests;
