//! Finished spans and their wire encodings for collectors: Zipkin API v2 JSON
//! (`POST /api/v2/spans`) and OTLP/HTTP JSON (`POST /v1/traces`, OpenTelemetry protocol
//! specification, JSON encoding with hex trace and span ids).

use serde_json::{json, Map, Value};

use super::ids::{SpanId, TraceId};

/// The role of a span, from the sidecar's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Outbound: the sidecar carries the app's call to another service.
    Client,
    /// Inbound: the sidecar delivers a call into the app.
    Server,
}

/// A network endpoint as collectors describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Service name (for the local endpoint; optional for the remote one).
    pub service: Option<String>,
    /// `ip:port` or `[ipv6]:port` as Envoy reports addresses.
    pub address: Option<String>,
}

impl Endpoint {
    /// Splits the address into IP and port; `None` when it is not `ip:port`.
    pub fn ip_port(&self) -> Option<(std::net::IpAddr, u16)> {
        let sa: std::net::SocketAddr = self.address.as_deref()?.parse().ok()?;
        Some((sa.ip(), sa.port()))
    }
}

/// One finished span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// Trace id.
    pub trace_id: TraceId,
    /// Whether the trace id came in as a 64-bit B3 id (Zipkin then reports 16 hex digits).
    pub trace_id_64bit: bool,
    /// This span's id.
    pub span_id: SpanId,
    /// The caller's span id; `None` for a root span.
    pub parent_id: Option<SpanId>,
    /// Operation name.
    pub name: String,
    /// Client or server.
    pub kind: SpanKind,
    /// Start, microseconds since the Unix epoch.
    pub start_us: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// This service.
    pub local: Endpoint,
    /// The peer.
    pub remote: Endpoint,
    /// Whether the request failed.
    pub error: bool,
    /// Tags (`http.method`, `http.status_code`, `upstream_cluster`, ...), in order.
    pub tags: Vec<(String, String)>,
}

impl Span {
    /// A rough size in bytes, for buffer accounting.
    pub fn approx_size(&self) -> usize {
        200 + self.name.len()
            + self
                .tags
                .iter()
                .map(|(k, v)| k.len() + v.len() + 6)
                .sum::<usize>()
    }
}

fn zipkin_endpoint(e: &Endpoint) -> Value {
    let mut m = Map::new();
    if let Some(s) = &e.service {
        m.insert("serviceName".into(), json!(s));
    }
    if let Some((ip, port)) = e.ip_port() {
        let key = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
        m.insert(key.into(), json!(ip.to_string()));
        m.insert("port".into(), json!(port));
    }
    Value::Object(m)
}

/// Encodes spans as a Zipkin API v2 JSON list.
pub fn zipkin_json(spans: &[Span]) -> String {
    let list: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut m = Map::new();
            let trace = if s.trace_id_64bit {
                s.trace_id.low_hex()
            } else {
                s.trace_id.to_hex()
            };
            m.insert("traceId".into(), json!(trace));
            m.insert("id".into(), json!(s.span_id.to_hex()));
            if let Some(p) = s.parent_id {
                m.insert("parentId".into(), json!(p.to_hex()));
            }
            m.insert("name".into(), json!(s.name));
            let kind = match s.kind {
                SpanKind::Client => "CLIENT",
                SpanKind::Server => "SERVER",
            };
            m.insert("kind".into(), json!(kind));
            m.insert("timestamp".into(), json!(s.start_us));
            // Zipkin reads a zero duration as "unknown"; a finished span lasts at least 1 us.
            m.insert("duration".into(), json!(s.duration_us.max(1)));
            m.insert("localEndpoint".into(), zipkin_endpoint(&s.local));
            let remote = zipkin_endpoint(&s.remote);
            if remote.as_object().is_some_and(|o| !o.is_empty()) {
                m.insert("remoteEndpoint".into(), remote);
            }
            let mut tags = Map::new();
            for (k, v) in &s.tags {
                tags.insert(k.clone(), json!(v));
            }
            if s.error {
                tags.entry("error").or_insert_with(|| json!("true"));
            }
            m.insert("tags".into(), Value::Object(tags));
            Value::Object(m)
        })
        .collect();
    Value::Array(list).to_string()
}

fn otlp_attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

/// Encodes spans as an OTLP/HTTP JSON `ExportTraceServiceRequest` for one service.
pub fn otlp_json(spans: &[Span], service: &str) -> String {
    let list: Vec<Value> = spans
        .iter()
        .map(|s| {
            let start_ns = u128::from(s.start_us) * 1000;
            let end_ns = start_ns + u128::from(s.duration_us) * 1000;
            let mut attrs: Vec<Value> = s.tags.iter().map(|(k, v)| otlp_attr(k, v)).collect();
            if let Some(a) = &s.remote.address {
                attrs.push(otlp_attr("net.peer.address", a));
            }
            if let Some(a) = &s.local.address {
                attrs.push(otlp_attr("net.host.address", a));
            }
            let mut m = Map::new();
            m.insert("traceId".into(), json!(s.trace_id.to_hex()));
            m.insert("spanId".into(), json!(s.span_id.to_hex()));
            if let Some(p) = s.parent_id {
                m.insert("parentSpanId".into(), json!(p.to_hex()));
            }
            m.insert("name".into(), json!(s.name));
            // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3.
            let kind = match s.kind {
                SpanKind::Server => 2,
                SpanKind::Client => 3,
            };
            m.insert("kind".into(), json!(kind));
            m.insert("startTimeUnixNano".into(), json!(start_ns.to_string()));
            m.insert("endTimeUnixNano".into(), json!(end_ns.to_string()));
            m.insert("attributes".into(), Value::Array(attrs));
            // STATUS_CODE_ERROR = 2, STATUS_CODE_UNSET = 0.
            m.insert(
                "status".into(),
                json!({"code": if s.error { 2 } else { 0 }}),
            );
            Value::Object(m)
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [otlp_attr("service.name", service)]},
            "scopeSpans": [{
                "scope": {"name": "meshwasm.trace-propagation"},
                "spans": list,
            }],
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn span() -> Span {
        Span {
            trace_id: TraceId(0x0af7651916cd43dd8448eb211c80319c),
            trace_id_64bit: false,
            span_id: SpanId(0xb7ad6b7169203331),
            parent_id: Some(SpanId(0x00f067aa0ba902b7)),
            name: "GET /orders".into(),
            kind: SpanKind::Client,
            start_us: 1_767_225_600_000_000,
            duration_us: 0,
            local: Endpoint {
                service: Some("frontend".into()),
                address: Some("127.0.0.1:8000".into()),
            },
            remote: Endpoint {
                service: None,
                address: Some("[::1]:9000".into()),
            },
            error: true,
            tags: vec![("http.method".into(), "GET".into())],
        }
    }

    #[test]
    fn zipkin_v2_shape() {
        let v: Value = serde_json::from_str(&zipkin_json(&[span()])).unwrap();
        let s = &v[0];
        assert_eq!(s["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(s["id"], "b7ad6b7169203331");
        assert_eq!(s["parentId"], "00f067aa0ba902b7");
        assert_eq!(s["kind"], "CLIENT");
        assert_eq!(s["duration"], 1);
        assert_eq!(s["localEndpoint"]["serviceName"], "frontend");
        assert_eq!(s["localEndpoint"]["ipv4"], "127.0.0.1");
        assert_eq!(s["localEndpoint"]["port"], 8000);
        assert_eq!(s["remoteEndpoint"]["ipv6"], "::1");
        assert_eq!(s["tags"]["http.method"], "GET");
        assert_eq!(s["tags"]["error"], "true");
        let mut short = span();
        short.trace_id = TraceId(0x8448eb211c80319c);
        short.trace_id_64bit = true;
        let v: Value = serde_json::from_str(&zipkin_json(&[short])).unwrap();
        assert_eq!(v[0]["traceId"], "8448eb211c80319c");
    }

    #[test]
    fn otlp_json_shape() {
        let mut s = span();
        s.duration_us = 1500;
        s.kind = SpanKind::Server;
        let v: Value = serde_json::from_str(&otlp_json(&[s], "frontend")).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "frontend"
        );
        let sp = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(sp["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(sp["kind"], 2);
        assert_eq!(sp["startTimeUnixNano"], "1767225600000000000");
        assert_eq!(sp["endTimeUnixNano"], "1767225600001500000");
        assert_eq!(sp["status"]["code"], 2);
    }
}
