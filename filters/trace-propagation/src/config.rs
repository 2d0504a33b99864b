//! The trace filter's configuration: formats read and written, sampling, headers, baggage
//! limits and span export, with defaults and the checks serde cannot express.

use serde::Deserialize;

use meshwasm::config::{check, ConfigError};
use meshwasm::trace::baggage::{MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS};

use crate::naming::NameTemplate;

/// A propagation format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Format {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    #[serde(rename = "w3c")]
    W3c,
    /// B3 multi-header (`x-b3-*`).
    #[serde(rename = "b3")]
    B3,
    /// B3 single header (`b3`).
    #[serde(rename = "b3-single")]
    B3Single,
}

/// Which side of the app this sidecar listener is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The app's outgoing calls (client spans).
    #[default]
    Outbound,
    /// Calls into the app (server spans).
    Inbound,
}

/// Collector wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// Zipkin API v2 JSON.
    Zipkin,
    /// OTLP/HTTP JSON.
    Otlp,
}

fn default_precedence() -> Vec<Format> {
    vec![Format::W3c, Format::B3Single, Format::B3]
}
fn default_propagate() -> Vec<Format> {
    vec![Format::W3c, Format::B3]
}
fn default_rate() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_baggage_bytes() -> usize {
    8192
}
fn default_baggage_members() -> usize {
    64
}

/// Span export settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Envoy cluster of the collector (required).
    pub cluster: String,
    /// Wire format; `zipkin` by default.
    #[serde(default = "default_export_format")]
    pub format: ExportFormat,
    /// `:authority` of the export request; the cluster name by default.
    #[serde(default)]
    pub authority: Option<String>,
    /// Path; `/api/v2/spans` (Zipkin) or `/v1/traces` (OTLP) by default.
    #[serde(default)]
    pub path: Option<String>,
    /// Spans per export request (1 to 10000, default 100).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest time a span waits in the buffer, in ms (10 to 60000, default 1000).
    #[serde(default = "default_flush")]
    pub flush_interval_ms: u64,
    /// Spans buffered per worker before new ones are dropped (default 2000).
    #[serde(default = "default_buffer")]
    pub max_buffered_spans: usize,
    /// Bytes of spans buffered per worker before new ones are dropped (64 KiB to 256 MiB,
    /// default 1 MiB): a span carries client-chosen text (path, `x-request-id`), so a bound in
    /// spans alone is no bound on memory. Half of it waiting sends a batch.
    #[serde(default = "default_buffer_bytes")]
    pub max_buffered_bytes: usize,
    /// Longest tag value in bytes (16 to 4096, default 256, as Envoy's own
    /// `max_path_tag_length`); longer values are cut, and counted.
    #[serde(default = "default_tag_length")]
    pub max_tag_length: usize,
    /// The span name when Envoy reports no route name for the request (with one, a span is
    /// `METHOD route_name`): a template of `{method}`, `{service}`, `{upstream_cluster}` and
    /// text; default `{method}`.
    #[serde(default = "default_fallback_span_name")]
    pub fallback_span_name: String,
    /// Export requests in flight per worker (1 to 16, default 2).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Export request timeout in ms (default 5000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_export_format() -> ExportFormat {
    ExportFormat::Zipkin
}
fn default_batch() -> usize {
    100
}
fn default_flush() -> u64 {
    1000
}
fn default_buffer() -> usize {
    2000
}
fn default_buffer_bytes() -> usize {
    1 << 20
}
fn default_tag_length() -> usize {
    256
}
fn default_fallback_span_name() -> String {
    "{method}".to_string()
}
fn default_in_flight() -> usize {
    2
}
fn default_timeout() -> u64 {
    5000
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `outbound` (default) or `inbound`.
    #[serde(default)]
    pub direction: Direction,
    /// This service's name in spans; from Envoy's node cluster when absent.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Formats read from the request, first valid one wins.
    #[serde(default = "default_precedence")]
    pub extract: Vec<Format>,
    /// Formats written to the request, all consistent with each other.
    #[serde(default = "default_propagate")]
    pub propagate: Vec<Format>,
    /// Probability (0 to 1) that a new trace is sampled.
    #[serde(default = "default_rate")]
    pub sampling_rate: f64,
    /// Sets `x-request-id` when the request has none.
    #[serde(default = "yes")]
    pub set_request_id: bool,
    /// Response header that carries the trace id back to the client, if any.
    #[serde(default)]
    pub response_trace_header: Option<String>,
    /// Largest `baggage` passed on, in bytes, all its fields together (0 to 8192, the
    /// parser's limit).
    #[serde(default = "default_baggage_bytes")]
    pub baggage_max_bytes: usize,
    /// Most `baggage` members passed on (0 to 180, the parser's limit).
    #[serde(default = "default_baggage_members")]
    pub baggage_max_members: usize,
    /// Span export; none when absent.
    #[serde(default)]
    pub export: Option<ExportConfig>,
    /// Whose sampling and debug decisions (sampled flags, `x-b3-flags: 1`) are followed:
    /// `anyone` (default) or `mesh_peers` (a caller with a verified mesh certificate; anyone
    /// else's trace continues under `sampling_rate`).
    #[serde(default)]
    pub trusted_clients: meshwasm::properties::TrustedCallers,
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::ensure(
            !self.extract.is_empty(),
            "extract",
            "must list at least one format",
        )?;
        check::ensure(
            !self.propagate.is_empty(),
            "propagate",
            "must list at least one format",
        )?;
        check::ensure(
            self.sampling_rate.is_finite() && (0.0..=1.0).contains(&self.sampling_rate),
            "sampling_rate",
            "must be between 0 and 1",
        )?;
        if let Some(name) = &self.service_name {
            check::non_empty(name, "service_name")?;
        }
        if let Some(h) = &self.response_trace_header {
            check::header_name(h, "response_trace_header")?;
        }
        // The parser refuses anything larger, so a larger setting would never be reached.
        check::in_range(
            self.baggage_max_bytes,
            0,
            MAX_BAGGAGE_BYTES,
            "baggage_max_bytes",
        )?;
        check::in_range(
            self.baggage_max_members,
            0,
            MAX_BAGGAGE_MEMBERS,
            "baggage_max_members",
        )?;
        if let Some(e) = &self.export {
            check::non_empty(&e.cluster, "export.cluster")?;
            if let Some(a) = &e.authority {
                check::non_empty(a, "export.authority")?;
            }
            if let Some(p) = &e.path {
                check::ensure(p.starts_with('/'), "export.path", "must start with `/`")?;
            }
            check::in_range(e.batch_size, 1, 10_000, "export.batch_size")?;
            check::in_range(e.flush_interval_ms, 10, 60_000, "export.flush_interval_ms")?;
            check::in_range(
                e.max_buffered_spans,
                1,
                100_000,
                "export.max_buffered_spans",
            )?;
            check::ensure(
                e.max_buffered_spans >= e.batch_size,
                "export.max_buffered_spans",
                "must be at least export.batch_size",
            )?;
            check::in_range(
                e.max_buffered_bytes,
                64 << 10,
                256 << 20,
                "export.max_buffered_bytes",
            )?;
            check::in_range(e.max_tag_length, 16, 4096, "export.max_tag_length")?;
            NameTemplate::parse(&e.fallback_span_name)
                .map_err(|reason| ConfigError::new("export.fallback_span_name", reason))?;
            check::in_range(e.max_in_flight, 1, 16, "export.max_in_flight")?;
            check::in_range(e.timeout_ms, 10, 60_000, "export.timeout_ms")?;
        }
        Ok(())
    }
}
