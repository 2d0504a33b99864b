//! A Zipkin span collector on loopback: accepts API v2 JSON batches (`POST /api/v2/spans`, what
//! the sidecars' trace_propagation exports) and keeps the spans in memory, bounded, for tests
//! and the demo to read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::server::{Reply, Request, Server};

/// Spans kept at most; later ones are counted, not kept.
pub const MAX_SPANS: usize = 200_000;

/// One span as exported by a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 32 (or 16) hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub id: String,
    /// The parent span, if any.
    pub parent_id: Option<String>,
    /// `CLIENT` (outbound listener) or `SERVER` (inbound listener).
    pub kind: String,
    /// `METHOD /path`.
    pub name: String,
    /// Start, microseconds since the epoch.
    pub timestamp_us: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// The service of the sidecar that recorded it (`localEndpoint.serviceName`, else
    /// `unknown`).
    pub service: String,
    /// Tags (`http.status_code`, `upstream_cluster`, `response_flags`, ...); non-string values
    /// are left out.
    pub tags: BTreeMap<String, String>,
}

impl Span {
    /// `http.status_code`, or 0.
    pub fn status(&self) -> u16 {
        self.tags
            .get("http.status_code")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Tag `name`, if present.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.get(name).map(String::as_str)
    }

    /// A span from one Zipkin v2 JSON object; `None` without `traceId` or `id`.
    pub fn from_zipkin(v: &Value) -> Option<Span> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let tags = v
            .get("tags")
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Some(Span {
            trace_id: s("traceId")?,
            id: s("id")?,
            parent_id: s("parentId"),
            kind: s("kind").unwrap_or_default(),
            name: s("name").unwrap_or_default(),
            timestamp_us: v.get("timestamp").and_then(Value::as_u64).unwrap_or(0),
            duration_us: v.get("duration").and_then(Value::as_u64).unwrap_or(0),
            service: v
                .pointer("/localEndpoint/serviceName")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            tags,
        })
    }
}

/// The spans of a Zipkin v2 JSON batch (an array of spans); objects without `traceId` or `id`
/// are skipped. Anything but a JSON array is an error.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Span>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(list)) => Ok(list.iter().filter_map(Span::from_zipkin).collect()),
        Ok(_) => Err("expected a JSON array of spans".to_string()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<Span>>,
    batches: AtomicU64,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running collector on `127.0.0.1`; stops when dropped.
pub struct Collector {
    server: Server,
    store: Arc<Store>,
}

impl Collector {
    /// Starts the collector on a port the kernel chose (see [`Collector::port`]).
    pub fn start() -> Result<Collector, String> {
        let store = Arc::new(Store::default());
        let s = Arc::clone(&store);
        let server = Server::start_nonblocking("collector", 1, move |req| receive(&s, req))?;
        Ok(Collector { server, store })
    }

    /// Its port (the sidecars' `collector` cluster, `{{PORT_COLLECTOR}}`).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// A copy of every span kept so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        lock(&self.store.spans).clone()
    }

    /// A copy of the spans kept so far of trace `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        lock(&self.store.spans)
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// How many spans arrived so far (kept or not).
    pub fn span_count(&self) -> u64 {
        lock(&self.store.spans).len() as u64 + self.store.dropped.load(Ordering::Relaxed)
    }

    /// Spans that arrived after [`MAX_SPANS`] were kept.
    pub fn dropped(&self) -> u64 {
        self.store.dropped.load(Ordering::Relaxed)
    }

    /// Export requests accepted.
    pub fn batches(&self) -> u64 {
        self.store.batches.load(Ordering::Relaxed)
    }
}

fn receive(store: &Store, req: &Request) -> Reply {
    if req.method != "POST" || !req.path.starts_with("/api/v2/spans") {
        return Reply::new(404, "POST /api/v2/spans (Zipkin v2 JSON)\n");
    }
    let batch = match parse_batch(&req.body) {
        Ok(batch) => batch,
        Err(e) => return Reply::new(400, format!("{e}\n")),
    };
    store.batches.fetch_add(1, Ordering::Relaxed);
    let mut spans = lock(&store.spans);
    for span in batch {
        if spans.len() < MAX_SPANS {
            spans.push(span);
        } else {
            store.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    Reply::new(202, "")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_zipkin_spans() {
        let v: Value = serde_json::from_str(
            r#"{"traceId":"ab","id":"cd","parentId":"ef","kind":"CLIENT","name":"GET /a",
                "timestamp":10,"duration":20,"localEndpoint":{"serviceName":"orders"},
                "tags":{"http.status_code":"503","n":1}}"#,
        )
        .unwrap();
        let s = Span::from_zipkin(&v).unwrap();
        assert_eq!(
            (s.service.as_str(), s.status(), s.duration_us),
            ("orders", 503, 20)
        );
        assert_eq!(s.parent_id.as_deref(), Some("ef"));
        assert_eq!(s.tag("n"), None);
        assert!(Span::from_zipkin(&serde_json::json!({"id": "cd"})).is_none());
    }

    #[test]
    fn parses_batches() {
        let batch = br#"[{"traceId":"a","id":"1"},{"id":"no trace"},{"traceId":"a","id":"2"}]"#;
        let spans = parse_batch(batch).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].service, "unknown");
        assert!(parse_batch(b"{}").is_err());
        assert!(parse_batch(b"nope").is_err());
    }

    #[test]
    fn collects_posted_batches() {
        let collector = Collector::start().unwrap();
        let post = |path: &str, body: &[u8]| {
            crate::http::http_request(
                "POST",
                collector.port(),
                path,
                &[("content-type", "application/json")],
                body,
            )
            .unwrap()
            .status
        };
        let batch = br#"[{"traceId":"t1","id":"1","localEndpoint":{"serviceName":"orders"}},
                         {"traceId":"t2","id":"2"}]"#;
        assert_eq!(post("/api/v2/spans", batch), 202);
        assert_eq!(post("/api/v2/spans", b"{}"), 400);
        assert_eq!(post("/other", batch), 404);
        assert_eq!(collector.batches(), 1);
        assert_eq!(collector.span_count(), 2);
        assert_eq!(collector.trace("t1")[0].service, "orders");
        assert_eq!(collector.spans().len(), 2);
        assert_eq!(collector.dropped(), 0);
    }
}
