//! The demo's span collector: accepts Zipkin API v2 JSON (`POST /api/v2/spans`, what the
//! sidecars' trace_propagation exports), keeps the spans in memory (bounded) and builds trees.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::http::{Request, Response, Server};

/// Spans kept at most; later ones are counted, not kept.
pub const MAX_SPANS: usize = 200_000;

/// One span as exported by a sidecar.
#[derive(Debug, Clone, PartialEq)]
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
    /// The service of the sidecar that recorded it.
    pub service: String,
    /// Tags (`http.status_code`, `upstream_cluster`, `response_flags`, ...).
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

    fn from_zipkin(v: &Value) -> Option<Span> {
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

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<Span>>,
    batches: AtomicU64,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running collector; stops when dropped.
pub struct Collector {
    server: Server,
    store: Arc<Store>,
}

impl Collector {
    /// Starts the collector on a free loopback port.
    pub fn start() -> Result<Collector, String> {
        let store = Arc::new(Store::default());
        let s = Arc::clone(&store);
        let server = Server::start("collector", 0, Arc::new(move |req| receive(&s, req)))?;
        Ok(Collector { server, store })
    }

    /// Its port (the sidecars' `collector` cluster).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// A copy of every span kept so far.
    pub fn spans(&self) -> Vec<Span> {
        lock(&self.store.spans).clone()
    }

    /// How many spans arrived so far (kept or not).
    pub fn span_count(&self) -> u64 {
        lock(&self.store.spans).len() as u64 + self.store.dropped.load(Ordering::Relaxed)
    }

    /// Export requests received.
    pub fn batches(&self) -> u64 {
        self.store.batches.load(Ordering::Relaxed)
    }
}

fn receive(store: &Store, req: Request) -> Response {
    if req.method != "POST" || !req.path.starts_with("/api/v2/spans") {
        return Response::new(404, "POST /api/v2/spans (Zipkin v2 JSON)\n");
    }
    let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&req.body) else {
        return Response::new(400, "expected a JSON array of spans\n");
    };
    store.batches.fetch_add(1, Ordering::Relaxed);
    let mut spans = lock(&store.spans);
    for span in list.iter().filter_map(Span::from_zipkin) {
        if spans.len() < MAX_SPANS {
            spans.push(span);
        } else {
            store.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    Response::new(202, "")
}

/// A span and its children, ordered by start time.
#[derive(Debug, Clone)]
pub struct TraceNode {
    /// The span.
    pub span: Span,
    /// Spans whose parent it is.
    pub children: Vec<TraceNode>,
}

impl TraceNode {
    /// Every span of the tree, depth first.
    pub fn walk(&self) -> Vec<&Span> {
        let mut out = vec![&self.span];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// The trees of one trace's spans: roots are spans whose parent is not among them.
pub fn build_trees(spans: &[Span]) -> Vec<TraceNode> {
    fn node(span: &Span, spans: &[Span], depth: usize) -> TraceNode {
        let mut children: Vec<TraceNode> = if depth > 64 {
            Vec::new()
        } else {
            spans
                .iter()
                .filter(|s| s.parent_id.as_deref() == Some(span.id.as_str()) && s.id != span.id)
                .map(|s| node(s, spans, depth + 1))
                .collect()
        };
        children.sort_by_key(|c| c.span.timestamp_us);
        TraceNode {
            span: span.clone(),
            children,
        }
    }
    let mut roots: Vec<TraceNode> = spans
        .iter()
        .filter(|s| match &s.parent_id {
            Some(p) => !spans.iter().any(|o| &o.id == p),
            None => true,
        })
        .map(|s| node(s, spans, 0))
        .collect();
    roots.sort_by_key(|r| r.span.timestamp_us);
    roots
}

/// The indented text of a tree: one line per span with service, kind, name, status and
/// duration.
pub fn render_tree(root: &TraceNode) -> String {
    fn line(n: &TraceNode, prefix: &str, last: bool, top: bool, out: &mut String) {
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let s = &n.span;
        let to = s
            .tags
            .get("upstream_cluster")
            .filter(|_| s.kind == "CLIENT")
            .map(|c| format!(" -> {c}"))
            .unwrap_or_default();
        let flags = s
            .tags
            .get("response_flags")
            .filter(|f| f.as_str() != "-")
            .map(|f| format!(" [{f}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{prefix}{branch}{:<10} {:<6} {}{to}  {} {:.2} ms{flags}\n",
            s.service,
            s.kind,
            s.name,
            s.status(),
            s.duration_us as f64 / 1000.0
        ));
        let child_prefix = if top {
            prefix.to_string()
        } else if last {
            format!("{prefix}   ")
        } else {
            format!("{prefix}│  ")
        };
        for (i, c) in n.children.iter().enumerate() {
            line(c, &child_prefix, i + 1 == n.children.len(), false, out);
        }
    }
    let mut out = String::new();
    line(root, "", true, true, &mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, service: &str, ts: u64) -> Span {
        Span {
            trace_id: "t".into(),
            id: id.into(),
            parent_id: parent.map(str::to_string),
            kind: "SERVER".into(),
            name: "GET /x".into(),
            timestamp_us: ts,
            duration_us: 1500,
            service: service.into(),
            tags: [("http.status_code".to_string(), "200".to_string())].into(),
        }
    }

    #[test]
    fn builds_and_renders_a_tree() {
        let spans = vec![
            span("c", Some("b"), "inventory", 3),
            span("a", Some("client"), "frontend", 1),
            span("b", Some("a"), "orders", 2),
            span("d", Some("b"), "inventory", 4),
        ];
        let trees = build_trees(&spans);
        assert_eq!(trees.len(), 1);
        assert_eq!(trees[0].walk().len(), 4);
        let text = render_tree(&trees[0]);
        assert_eq!(
            text,
            "frontend   SERVER GET /x  200 1.50 ms\n\
             └─ orders     SERVER GET /x  200 1.50 ms\n   \
             ├─ inventory  SERVER GET /x  200 1.50 ms\n   \
             └─ inventory  SERVER GET /x  200 1.50 ms\n"
        );
    }

    #[test]
    fn parses_zipkin_spans() {
        let v: Value = serde_json::from_str(
            r#"{"traceId":"ab","id":"cd","parentId":"ef","kind":"CLIENT","name":"GET /a",
                "timestamp":10,"duration":20,"localEndpoint":{"serviceName":"orders"},
                "tags":{"http.status_code":"503"}}"#,
        )
        .unwrap();
        let s = Span::from_zipkin(&v).unwrap();
        assert_eq!(
            (s.service.as_str(), s.status(), s.duration_us),
            ("orders", 503, 20)
        );
        assert_eq!(s.parent_id.as_deref(), Some("ef"));
    }
}
