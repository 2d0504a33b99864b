//! The per-worker span buffer and its export: spans wait in a buffer bounded in spans and in
//! bytes and leave in batches from the root context's tick, one HTTP callout per batch to the
//! collector cluster. A collector that is down, slow or failing costs dropped spans (counted),
//! never memory.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use meshwasm::filter::CalloutResponse;
use meshwasm::host::Host;
use meshwasm::metrics::{Metric, MetricFamily};
use meshwasm::trace::export::{otlp_json, zipkin_json, Span, Tag};

use crate::config::{ExportConfig, ExportFormat};
use crate::naming::{self, NameTemplate};

/// Why spans left the buffer, as the `outcome` label of `meshwasm_trace_spans_total`.
pub mod outcome {
    /// Accepted into the buffer.
    pub const BUFFERED: &str = "buffered";
    /// The collector answered 2xx.
    pub const EXPORTED: &str = "exported";
    /// Dropped: the buffer was full.
    pub const BUFFER_FULL: &str = "dropped_buffer_full";
    /// Dropped: the collector answered an error status.
    pub const COLLECTOR_ERROR: &str = "dropped_collector_error";
    /// Dropped: no answer (reset, timeout, no healthy host).
    pub const UNREACHABLE: &str = "dropped_collector_unreachable";
    /// Dropped: Envoy refused the callout (unknown cluster).
    pub const DISPATCH: &str = "dropped_dispatch_failed";
}

/// Buffer and in-flight export requests of one worker.
pub struct Exporter {
    cfg: ExportConfig,
    service: String,
    authority: String,
    path: String,
    fallback_name: NameTemplate,
    /// Spans waiting, each with its [`Span::approx_size`].
    buffer: RefCell<VecDeque<(usize, Span)>>,
    /// The sum of the sizes in `buffer`.
    buffered_bytes: Cell<usize>,
    in_flight: RefCell<HashMap<u32, usize>>,
    last_flush: Cell<Option<SystemTime>>,
    spans: MetricFamily,
    /// The ids of the `buffered` and `dropped_buffer_full` series of `spans`, looked up in the
    /// family on first use only: one of them counts every exported request.
    push_ids: [Cell<Option<u32>>; 2],
    buffered: Metric,
    tags_truncated: Metric,
}

impl Exporter {
    /// Sets up the exporter for `service` (metrics defined here, once).
    pub fn new(cfg: ExportConfig, service: &str, host: &dyn Host) -> Exporter {
        let authority = cfg.authority.clone().unwrap_or_else(|| cfg.cluster.clone());
        let path = cfg.path.clone().unwrap_or_else(|| {
            match cfg.format {
                ExportFormat::Zipkin => "/api/v2/spans",
                ExportFormat::Otlp => "/v1/traces",
            }
            .to_string()
        });
        // Validated with the configuration; the default only stands in for the impossible.
        let fallback_name = NameTemplate::parse(&cfg.fallback_span_name).unwrap_or_default();
        Exporter {
            service: service.to_string(),
            authority,
            path,
            fallback_name,
            buffer: RefCell::new(VecDeque::new()),
            buffered_bytes: Cell::new(0),
            in_flight: RefCell::new(HashMap::new()),
            last_flush: Cell::new(None),
            spans: MetricFamily::counter("meshwasm_trace_spans_total", &["outcome"]),
            push_ids: Default::default(),
            buffered: Metric::define(
                host,
                meshwasm::host::MetricKind::Gauge,
                "meshwasm_trace_buffered_spans",
            ),
            tags_truncated: Metric::counter(host, "meshwasm_trace_span_tags_truncated_total"),
            cfg,
        }
    }

    /// The name of a span: `METHOD route` when Envoy reports a route name, else the configured
    /// fallback template (see [`naming`]).
    pub fn span_name(&self, method: &str, route: Option<&str>, cluster: Option<&str>) -> String {
        naming::span_name(&self.fallback_name, method, route, &self.service, cluster)
    }

    /// Cuts every tag value to `max_tag_length` bytes, counting the values cut (one hostcall,
    /// and only when something was cut).
    pub fn cap_tags(&self, host: &dyn Host, tags: &mut [Tag]) {
        let max = self.cfg.max_tag_length;
        let mut cut = 0;
        for (_, value) in tags.iter_mut() {
            if value.len() > max && naming::cut(value.to_mut(), max) {
                cut += 1;
            }
        }
        if cut > 0 {
            self.tags_truncated.add(host, cut as i64);
        }
    }

    /// How often the root should tick: often enough to notice a full batch quickly.
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(self.cfg.flush_interval_ms.min(100))
    }

    /// Buffers a finished span, or drops it (counted) when the buffer is full: by spans, or by
    /// bytes with this one.
    pub fn push(&self, host: &dyn Host, span: Span) {
        let size = span.approx_size();
        let bytes = self.buffered_bytes.get().saturating_add(size);
        let mut buf = self.buffer.borrow_mut();
        if buf.len() >= self.cfg.max_buffered_spans || bytes > self.cfg.max_buffered_bytes {
            self.count_push(host, 1, outcome::BUFFER_FULL);
            return;
        }
        buf.push_back((size, span));
        self.buffered_bytes.set(bytes);
        // The buffered-spans gauge is updated when batches leave, not per span.
        self.count_push(host, 0, outcome::BUFFERED);
    }

    /// Adds one to the `spans` series of `outcome`, its id kept in `push_ids[slot]`.
    fn count_push(&self, host: &dyn Host, slot: usize, outcome: &str) {
        let Some(slot) = self.push_ids.get(slot) else {
            return;
        };
        let id = slot.get().or_else(|| {
            let id = self.spans.id(host, &[outcome]);
            slot.set(id);
            id
        });
        if let Some(id) = id {
            let _ = host.increment_metric(id, 1);
        }
    }

    /// Spans waiting.
    pub fn buffered(&self) -> usize {
        self.buffer.borrow().len()
    }

    /// Bytes of spans waiting (by [`Span::approx_size`]).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes.get()
    }

    /// Whether a batch should leave without waiting for the flush interval: a full batch
    /// waits, or half of the byte bound does (so the byte bound does not drop spans while an
    /// export slot is free).
    fn batch_ready(&self) -> bool {
        let len = self.buffered();
        len >= self.cfg.batch_size
            || (len > 0 && self.buffered_bytes.get() >= self.cfg.max_buffered_bytes / 2)
    }

    /// Export requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.borrow().len()
    }

    /// Sends ready batches (see [`Exporter::batch_ready`]), and a partial one when the flush
    /// interval has passed, while fewer than `max_in_flight` requests are out.
    pub fn on_tick(&self, host: &dyn Host) {
        let now = host.now();
        let Some(last) = self.last_flush.get() else {
            // The first tick starts the flush interval.
            self.last_flush.set(Some(now));
            return;
        };
        let interval_due = now
            .duration_since(last)
            .map(|d| d >= Duration::from_millis(self.cfg.flush_interval_ms))
            .unwrap_or(true);
        loop {
            let len = self.buffered();
            if len == 0 || self.in_flight() >= self.cfg.max_in_flight {
                break;
            }
            let ready = self.batch_ready();
            if !ready && !interval_due {
                break;
            }
            self.send_batch(host);
            self.last_flush.set(Some(now));
            if !ready {
                break;
            }
        }
        if interval_due && self.buffered() == 0 {
            self.last_flush.set(Some(now));
        }
    }

    fn send_batch(&self, host: &dyn Host) {
        let batch: Vec<Span> = {
            let mut buf = self.buffer.borrow_mut();
            let n = buf.len().min(self.cfg.batch_size);
            let mut bytes = self.buffered_bytes.get();
            let batch = buf
                .drain(..n)
                .map(|(size, span)| {
                    bytes = bytes.saturating_sub(size);
                    span
                })
                .collect();
            self.buffered_bytes.set(bytes);
            batch
        };
        self.buffered.record(host, self.buffered() as u64);
        let body = match self.cfg.format {
            ExportFormat::Zipkin => zipkin_json(&batch),
            ExportFormat::Otlp => otlp_json(&batch, &self.service),
        };
        let headers = [
            (":method", "POST"),
            (":path", self.path.as_str()),
            (":authority", self.authority.as_str()),
            ("content-type", "application/json"),
        ];
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        match host.http_call(&self.cfg.cluster, &headers, Some(body.as_bytes()), timeout) {
            Ok(token) => {
                self.in_flight.borrow_mut().insert(token, batch.len());
            }
            Err(e) => {
                log::debug!("trace export to {} refused: {e}", self.cfg.cluster);
                self.spans
                    .add(host, &[outcome::DISPATCH], batch.len() as i64);
            }
        }
    }

    /// Accounts for a collector answer. Returns false when the token was not ours.
    pub fn on_callout_response(&self, host: &dyn Host, response: &CalloutResponse) -> bool {
        let Some(n) = self.in_flight.borrow_mut().remove(&response.token) else {
            return false;
        };
        let result = match response.status {
            Some(s) if (200..300).contains(&s) => outcome::EXPORTED,
            Some(s) => {
                log::debug!("trace collector answered {s}; {n} spans dropped");
                outcome::COLLECTOR_ERROR
            }
            None => outcome::UNREACHABLE,
        };
        self.spans.add(host, &[result], n as i64);
        // A slot is free again: send the next full batch now rather than at the next tick, so
        // export keeps up with the request rate instead of being capped by the tick period.
        while self.in_flight() < self.cfg.max_in_flight && self.batch_ready() {
            self.send_batch(host);
        }
        true
    }
}
