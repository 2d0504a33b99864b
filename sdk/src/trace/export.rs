//! Finished spans and their wire encodings for collectors: Zipkin API v2 JSON
//! (`POST /api/v2/spans`) and OTLP/HTTP JSON (`POST /v1/traces`, OpenTelemetry protocol
//! specification, JSON encoding with hex trace and span ids).

use std::borrow::Cow;
use std::fmt::Write as _;

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

/// A span tag: its key and value. Most keys, and some values, are fixed text, borrowed rather
/// than copied for every span.
pub type Tag = (Cow<'static, str>, Cow<'static, str>);

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
    pub tags: Vec<Tag>,
}

impl Span {
    /// A rough size in bytes of the memory the span holds, for buffer accounting: the struct
    /// itself and every string it owns (name, endpoints, tag keys and values; a borrowed tag
    /// counts as if owned).
    pub fn approx_size(&self) -> usize {
        fn opt(s: &Option<String>) -> usize {
            s.as_ref().map_or(0, String::len)
        }
        let endpoints = opt(&self.local.service)
            + opt(&self.local.address)
            + opt(&self.remote.service)
            + opt(&self.remote.address);
        let tags: usize = self
            .tags
            .iter()
            .map(|(k, v)| std::mem::size_of::<(String, String)>() + k.len() + v.len())
            .sum();
        std::mem::size_of::<Span>() + self.name.len() + endpoints + tags
    }
}

/// Appends `s` as a JSON string literal (RFC 8259 escaping).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `"key":` to an object being written.
fn push_key(out: &mut String, key: &str) {
    push_json_str(out, key);
    out.push(':');
}

fn push_zipkin_endpoint(out: &mut String, e: &Endpoint) {
    out.push('{');
    let mut first = true;
    if let Some(s) = &e.service {
        push_key(out, "serviceName");
        push_json_str(out, s);
        first = false;
    }
    if let Some((ip, port)) = e.ip_port() {
        if !first {
            out.push(',');
        }
        push_key(out, if ip.is_ipv4() { "ipv4" } else { "ipv6" });
        push_json_str(out, &ip.to_string());
        let _ = write!(out, ",\"port\":{port}");
    }
    out.push('}');
}

/// Encodes spans as a Zipkin API v2 JSON list. Written directly (no intermediate JSON tree):
/// this runs on the worker thread for every exported batch.
pub fn zipkin_json(spans: &[Span]) -> String {
    let mut out = String::with_capacity(spans.len() * 512 + 2);
    out.push('[');
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let trace = if s.trace_id_64bit {
            s.trace_id.low_hex()
        } else {
            s.trace_id.to_hex()
        };
        let _ = write!(
            out,
            "{{\"traceId\":\"{trace}\",\"id\":\"{}\"",
            s.span_id.to_hex()
        );
        if let Some(p) = s.parent_id {
            let _ = write!(out, ",\"parentId\":\"{}\"", p.to_hex());
        }
        out.push_str(",\"name\":");
        push_json_str(&mut out, &s.name);
        let kind = match s.kind {
            SpanKind::Client => "CLIENT",
            SpanKind::Server => "SERVER",
        };
        // Zipkin reads a zero duration as "unknown"; a finished span lasts at least 1 us.
        let _ = write!(
            out,
            ",\"kind\":\"{kind}\",\"timestamp\":{},\"duration\":{},\"localEndpoint\":",
            s.start_us,
            s.duration_us.max(1)
        );
        push_zipkin_endpoint(&mut out, &s.local);
        if s.remote.service.is_some() || s.remote.ip_port().is_some() {
            out.push_str(",\"remoteEndpoint\":");
            push_zipkin_endpoint(&mut out, &s.remote);
        }
        out.push_str(",\"tags\":{");
        let mut has_error = false;
        for (j, (k, v)) in s.tags.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            has_error |= k == "error";
            push_key(&mut out, k);
            push_json_str(&mut out, v);
        }
        if s.error && !has_error {
            if !s.tags.is_empty() {
                out.push(',');
            }
            out.push_str("\"error\":\"true\"");
        }
        out.push_str("}}");
    }
    out.push(']');
    out
}

fn push_otlp_attr(out: &mut String, key: &str, value: &str) {
    out.push_str("{\"key\":");
    push_json_str(out, key);
    out.push_str(",\"value\":{\"stringValue\":");
    push_json_str(out, value);
    out.push_str("}}");
}

/// Encodes spans as an OTLP/HTTP JSON `ExportTraceServiceRequest` for one service.
pub fn otlp_json(spans: &[Span], service: &str) -> String {
    let mut out = String::with_capacity(spans.len() * 640 + 256);
    out.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    push_otlp_attr(&mut out, "service.name", service);
    out.push_str(
        "]},\"scopeSpans\":[{\"scope\":{\"name\":\"meshwasm.trace-propagation\"},\"spans\":[",
    );
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let start_ns = u128::from(s.start_us) * 1000;
        let end_ns = start_ns + u128::from(s.duration_us) * 1000;
        let _ = write!(
            out,
            "{{\"traceId\":\"{}\",\"spanId\":\"{}\"",
            s.trace_id.to_hex(),
            s.span_id.to_hex()
        );
        if let Some(p) = s.parent_id {
            let _ = write!(out, ",\"parentSpanId\":\"{}\"", p.to_hex());
        }
        out.push_str(",\"name\":");
        push_json_str(&mut out, &s.name);
        // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3.
        let kind = match s.kind {
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        };
        let _ = write!(
            out,
            ",\"kind\":{kind},\"startTimeUnixNano\":\"{start_ns}\",\"endTimeUnixNano\":\"{end_ns}\",\"attributes\":["
        );
        let mut first = true;
        let extra = [
            ("net.peer.address", s.remote.address.as_deref()),
            ("net.host.address", s.local.address.as_deref()),
        ];
        let tags = s.tags.iter().map(|(k, v)| (k.as_ref(), Some(v.as_ref())));
        for (k, v) in tags.chain(extra) {
            let Some(v) = v else { continue };
            if !first {
                out.push(',');
            }
            first = false;
            push_otlp_attr(&mut out, k, v);
        }
        // STATUS_CODE_ERROR = 2, STATUS_CODE_UNSET = 0.
        let _ = write!(
            out,
            "],\"status\":{{\"code\":{}}}}}",
            if s.error { 2 } else { 0 }
        );
    }
    out.push_str("]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

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
    fn hostile_strings_are_escaped_in_both_formats() {
        let mut s = span();
        s.name = "GET /a\"b\\c\n\u{1}é".into();
        s.tags.push(("x\"y".into(), "\t\r".into()));
        let z: Value = serde_json::from_str(&zipkin_json(&[s.clone(), s.clone()])).unwrap();
        assert_eq!(z[1]["name"], s.name.as_str());
        assert_eq!(z[0]["tags"]["x\"y"], "\t\r");
        let o: Value = serde_json::from_str(&otlp_json(&[s.clone()], "sv\"c")).unwrap();
        let sp = &o["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(sp["name"], s.name.as_str());
        assert_eq!(
            o["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "sv\"c"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&zipkin_json(&[])).unwrap(),
            serde_json::json!([])
        );
    }

    #[test]
    fn approx_size_counts_every_string() {
        let base = span().approx_size();
        assert!(base >= std::mem::size_of::<Span>());
        let mut s = span();
        s.name.push_str(&"n".repeat(100));
        s.local.service = Some("x".repeat(100));
        s.remote.address = Some("y".repeat(100));
        s.tags.push(("k".into(), "v".repeat(97).into()));
        let tag = std::mem::size_of::<(String, String)>() + 98;
        // The remote address replaced `[::1]:9000` (10 bytes), the service `frontend` (8).
        assert_eq!(s.approx_size(), base + 100 + 92 + 90 + tag);
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
