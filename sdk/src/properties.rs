//! Typed accessors for Envoy's attributes. Each decodes the attribute's wire form (string,
//! int64, uint64, bool, duration, timestamp, string map) into a Rust type, `None` when absent or
//! malformed, never a panic. The `encode_*` functions produce the same wire forms for tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::host::{Host, MapKind};

/// Decodes a string attribute (UTF-8; `None` when not UTF-8).
pub fn decode_string(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// Decodes an int64 attribute (8 bytes, little endian).
pub fn decode_i64(bytes: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(bytes).ok().map(i64::from_le_bytes)
}

/// Decodes a uint64 attribute (8 bytes, little endian).
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes)
}

/// Decodes a bool attribute (one byte).
pub fn decode_bool(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [0] => Some(false),
        [_] => Some(true),
        _ => None,
    }
}

/// Decodes a duration attribute (int64 nanoseconds; negative is malformed).
pub fn decode_duration(bytes: &[u8]) -> Option<Duration> {
    let nanos = decode_i64(bytes)?;
    u64::try_from(nanos).ok().map(Duration::from_nanos)
}

/// Decodes a timestamp attribute (int64 nanoseconds since the Unix epoch).
pub fn decode_timestamp(bytes: &[u8]) -> Option<SystemTime> {
    let nanos = decode_i64(bytes)?;
    let nanos = u64::try_from(nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

/// Decodes a string map attribute (such as `request.headers`) in the proxy-wasm pairs form:
/// a u32 count, then each key and value length as u32, then each key and value NUL-terminated.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let u32_at = |at: usize| -> Option<usize> {
        let raw = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(<[u8; 4]>::try_from(raw).ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    let mut at = 4usize;
    for _ in 0..count {
        sizes.push((u32_at(at)?, u32_at(at.checked_add(4)?)?));
        at = at.checked_add(8)?;
    }
    let mut out = Vec::with_capacity(sizes.len());
    // Each string is followed by a NUL terminator, which must be there.
    let mut take = |len: usize| -> Option<String> {
        let end = at.checked_add(len)?;
        let s = bytes.get(at..end)?;
        if *bytes.get(end)? != 0 {
            return None;
        }
        at = end.checked_add(1)?;
        decode_string(s)
    };
    for (k, v) in sizes {
        let key = take(k)?;
        let value = take(v)?;
        out.push((key, value));
    }
    Some(out)
}

/// Encodes an int64 attribute.
pub fn encode_i64(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
/// Encodes a uint64 attribute.
pub fn encode_u64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
/// Encodes a bool attribute.
pub fn encode_bool(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}
/// Encodes a duration attribute.
pub fn encode_duration(d: Duration) -> Vec<u8> {
    encode_i64(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
/// Encodes a timestamp attribute.
pub fn encode_timestamp(t: SystemTime) -> Vec<u8> {
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    encode_i64(i64::try_from(nanos).unwrap_or(i64::MAX))
}
/// Encodes a string map attribute in the pairs form.
pub fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The raw value of the attribute at a dotted path, split on the stack: these reads run on
/// every request, and a heap allocation costs more than the split.
fn raw(host: &dyn Host, path: &str) -> Option<Vec<u8>> {
    let mut segments = [""; MAX_SEGMENTS];
    match split_into(path, &mut segments) {
        Some(n) => host.property(&segments[..n]),
        // Deeper than any attribute Envoy has: the general split.
        None => host.property(&split(path)),
    }
}

/// Segments a path of at most this many are split on the stack.
const MAX_SEGMENTS: usize = 8;

/// [`split`] into `out`, byte by byte (`str::split`'s pattern search costs more than the loop
/// on every request); the number of segments, or `None` when `out` is too short.
fn split_into<'p>(path: &'p str, out: &mut [&'p str; MAX_SEGMENTS]) -> Option<usize> {
    if let Some(key) = path.strip_prefix(META) {
        out[..4].copy_from_slice(&["xds", "node", "metadata", key]);
        return Some(4);
    }
    let mut n = 0;
    let mut start = 0;
    for (i, &b) in path.as_bytes().iter().enumerate() {
        if b == b'.' {
            // A '.' is ASCII, so both ends are character boundaries.
            *out.get_mut(n)? = path.get(start..i)?;
            n += 1;
            start = i + 1;
        }
    }
    *out.get_mut(n)? = path.get(start..)?;
    Some(n + 1)
}

/// Reads a string attribute at a dotted path such as `xds.route_name`.
pub fn string(host: &dyn Host, path: &str) -> Option<String> {
    // The host's buffer becomes the string: no copy.
    raw(host, path).and_then(|b| String::from_utf8(b).ok())
}
/// Reads an int64 attribute.
pub fn int(host: &dyn Host, path: &str) -> Option<i64> {
    raw(host, path).and_then(|b| decode_i64(&b))
}
/// Reads a uint64 attribute.
pub fn uint(host: &dyn Host, path: &str) -> Option<u64> {
    raw(host, path).and_then(|b| decode_u64(&b))
}
/// Reads a bool attribute.
pub fn boolean(host: &dyn Host, path: &str) -> Option<bool> {
    raw(host, path).and_then(|b| decode_bool(&b))
}
/// Reads a duration attribute.
pub fn duration(host: &dyn Host, path: &str) -> Option<Duration> {
    raw(host, path).and_then(|b| decode_duration(&b))
}
/// Reads a timestamp attribute.
pub fn timestamp(host: &dyn Host, path: &str) -> Option<SystemTime> {
    raw(host, path).and_then(|b| decode_timestamp(&b))
}
/// Reads a string map attribute.
pub fn string_map(host: &dyn Host, path: &str) -> Option<Vec<(String, String)>> {
    raw(host, path).and_then(|b| decode_pairs(&b))
}

/// The prefix of node metadata paths, whose key (the rest) may contain dots.
const META: &str = "xds.node.metadata.";

/// Splits a dotted attribute path. Node metadata keys may contain dots, so everything after
/// `xds.node.metadata.` is one segment.
pub fn split(path: &str) -> Vec<&str> {
    if let Some(key) = path.strip_prefix(META) {
        return vec!["xds", "node", "metadata", key];
    }
    path.split('.').collect()
}

/// One accessor per attribute, its path given as segments: a read of a fixed attribute passes
/// them to the host as they are, with no split per request.
macro_rules! accessors {
    ($($(#[$doc:meta])* $fn_name:ident => $decode:ident[$first:literal $(, $rest:literal)*] -> $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[doc = concat!("\n\nAttribute `", $first, $(".", $rest,)* "`.")]
            pub fn $fn_name(host: &dyn Host) -> Option<$ty> {
                host.property(&[$first $(, $rest)*]).and_then($decode)
            }
        )*

        /// Every attribute with an accessor here, and the reader that decodes it.
        const READERS: &[(&str, &str)] =
            &[$((concat!($first $(, ".", $rest)*), stringify!($decode))),*];
    };
}

/// The accessors' decoders, each taking the host's buffer as it came: a string's bytes become
/// the string without a copy.
fn string_of(b: Vec<u8>) -> Option<String> {
    String::from_utf8(b).ok()
}
fn int_of(b: Vec<u8>) -> Option<i64> {
    decode_i64(&b)
}
fn uint_of(b: Vec<u8>) -> Option<u64> {
    decode_u64(&b)
}
fn boolean_of(b: Vec<u8>) -> Option<bool> {
    decode_bool(&b)
}
fn duration_of(b: Vec<u8>) -> Option<Duration> {
    decode_duration(&b)
}
fn timestamp_of(b: Vec<u8>) -> Option<SystemTime> {
    decode_timestamp(&b)
}

/// How the attribute at `path` comes back from the proxy when it can be read in a
/// [`crate::batch::PropertyBatch`]: a string, int or uint attribute with an accessor here.
pub fn wire_of(path: &str) -> Option<crate::batch::Wire> {
    use crate::batch::Wire;
    match READERS.iter().find(|(p, _)| *p == path)?.1 {
        "string_of" => Some(Wire::String),
        "int_of" => Some(Wire::Int),
        "uint_of" => Some(Wire::Uint),
        _ => None,
    }
}

accessors! {
    /// The request path with query.
    request_path => string_of["request", "path"] -> String;
    /// The request method.
    request_method => string_of["request", "method"] -> String;
    /// The request authority (`:authority` / `Host`).
    request_host => string_of["request", "host"] -> String;
    /// The request scheme.
    request_scheme => string_of["request", "scheme"] -> String;
    /// The request protocol (`HTTP/1.1`, `HTTP/2`, ...).
    request_protocol => string_of["request", "protocol"] -> String;
    /// The request id (`x-request-id`).
    request_id => string_of["request", "id"] -> String;
    /// Time the first byte of the request arrived.
    request_time => timestamp_of["request", "time"] -> SystemTime;
    /// Total duration of the request so far.
    request_duration => duration_of["request", "duration"] -> Duration;
    /// Request body size in bytes.
    request_size => int_of["request", "size"] -> i64;
    /// Total request size including headers.
    request_total_size => int_of["request", "total_size"] -> i64;
    /// Response status code.
    response_code => int_of["response", "code"] -> i64;
    /// Response code details.
    response_code_details => string_of["response", "code_details"] -> String;
    /// Envoy response flags as a bit set.
    response_flags => uint_of["response", "flags"] -> u64;
    /// gRPC status of the response.
    response_grpc_status => int_of["response", "grpc_status"] -> i64;
    /// Response body size.
    response_size => int_of["response", "size"] -> i64;
    /// Total response size including headers.
    response_total_size => int_of["response", "total_size"] -> i64;
    /// Downstream peer address (`ip:port`).
    source_address => string_of["source", "address"] -> String;
    /// Local address of the downstream connection.
    destination_address => string_of["destination", "address"] -> String;
    /// Upstream host address.
    upstream_address => string_of["upstream", "address"] -> String;
    /// Whether the downstream connection uses mutual TLS.
    connection_mtls => boolean_of["connection", "mtls"] -> bool;
    /// URI SAN of the peer certificate.
    connection_uri_san_peer_certificate => string_of["connection", "uri_san_peer_certificate"] -> String;
    /// URI SAN of the upstream's certificate (absent without TLS to the upstream).
    upstream_uri_san_peer_certificate => string_of["upstream", "uri_san_peer_certificate"] -> String;
    /// Downstream connection id.
    connection_id => uint_of["connection", "id"] -> u64;
    /// Name of the route that matched.
    xds_route_name => string_of["xds", "route_name"] -> String;
    /// Upstream cluster of the route.
    xds_cluster_name => string_of["xds", "cluster_name"] -> String;
    /// Envoy node id.
    xds_node_id => string_of["xds", "node", "id"] -> String;
    /// Envoy node cluster (usually the service name).
    xds_node_cluster => string_of["xds", "node", "cluster"] -> String;
    /// Node locality region.
    xds_node_region => string_of["xds", "node", "locality", "region"] -> String;
    /// Node locality zone.
    xds_node_zone => string_of["xds", "node", "locality", "zone"] -> String;
    /// The plugin's name (`config.name`).
    plugin_name => string_of["plugin_name"] -> String;
    /// The plugin's root id.
    plugin_root_id => string_of["plugin_root_id"] -> String;
    /// The plugin's VM id.
    plugin_vm_id => string_of["plugin_vm_id"] -> String;
}

/// The `response.code` attribute's path: list it in a phase's [`crate::batch::PropertyBatch`]
/// and [`response_status`] takes the code from the batch's evaluation.
pub const RESPONSE_CODE: &str = "response.code";

/// The response's status code, as the `response.code` attribute gives it, at the lowest price
/// the host offers:
/// - inside a [`crate::batch::PropertyBatch`] that holds [`RESPONSE_CODE`], the attribute from
///   the batch's one evaluation (an element of a list the phase evaluates anyway, about a
///   quarter of a header read in `sdk/docs/cost-model.md`);
/// - otherwise the `:status` of the response headers (a header read, about 1.1 us against 2.1
///   us for the attribute), which are the headers Envoy sent and took the code from.
///
/// A stream without response headers (reset before the upstream answered), or a `:status`
/// that is not a number, falls back to the attribute; an attribute the batch found absent
/// falls back to the headers.
pub fn response_status(host: &dyn Host) -> Option<i64> {
    let batched = host.holds_properties(&[RESPONSE_CODE]);
    if batched {
        if let Some(code) = response_code(host) {
            return Some(code);
        }
    }
    let status = host
        .header(MapKind::ResponseHeaders, ":status")
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
        .map(i64::from);
    if batched {
        status
    } else {
        status.or_else(|| response_code(host))
    }
}

/// Whether the downstream peer is a verified mesh workload: its connection presented a
/// certificate Envoy verified whose URI SAN is a SPIFFE ID (`spiffe://...`). One property read.
pub fn downstream_is_mesh_peer(host: &dyn Host) -> bool {
    connection_uri_san_peer_certificate(host).is_some_and(|uri| uri.starts_with("spiffe://"))
}

/// Whom a filter believes about what a caller asks for (retries, deadlines, sampling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustedCallers {
    /// Any caller (the local app on an outbound listener, or where the network is trusted).
    #[default]
    Anyone,
    /// Only a verified mesh peer ([`downstream_is_mesh_peer`]); anyone else gets the local
    /// policy.
    MeshPeers,
}

impl TrustedCallers {
    /// Whether this request's caller is believed (a property read only for `mesh_peers`).
    pub fn believes(self, host: &dyn Host) -> bool {
        match self {
            TrustedCallers::Anyone => true,
            TrustedCallers::MeshPeers => downstream_is_mesh_peer(host),
        }
    }
}

/// One key of the node metadata (`xds.node.metadata.<KEY>`), when it is a string.
pub fn xds_node_metadata(host: &dyn Host, key: &str) -> Option<String> {
    host.property(&["xds", "node", "metadata", key])
        .and_then(|b| decode_string(&b))
}

/// The request headers as a list (`request.headers`).
pub fn request_headers(host: &dyn Host) -> Option<Vec<(String, String)>> {
    string_map(host, "request.headers")
}

/// Envoy's response flags, bit by bit, with their access-log short codes (Envoy's
/// `StreamInfo::CoreResponseFlag` order).
pub const RESPONSE_FLAGS: [(u64, &str); 29] = [
    (1 << 0, "LH"),
    (1 << 1, "UH"),
    (1 << 2, "UT"),
    (1 << 3, "LR"),
    (1 << 4, "UR"),
    (1 << 5, "UF"),
    (1 << 6, "UC"),
    (1 << 7, "UO"),
    (1 << 8, "NR"),
    (1 << 9, "DI"),
    (1 << 10, "FI"),
    (1 << 11, "RL"),
    (1 << 12, "UAEX"),
    (1 << 13, "RLSE"),
    (1 << 14, "DC"),
    (1 << 15, "URX"),
    (1 << 16, "SI"),
    (1 << 17, "IH"),
    (1 << 18, "DPE"),
    (1 << 19, "UMSDR"),
    (1 << 20, "RFCF"),
    (1 << 21, "NFCF"),
    (1 << 22, "DT"),
    (1 << 23, "UPE"),
    (1 << 24, "NC"),
    (1 << 25, "OM"),
    (1 << 26, "DF"),
    (1 << 27, "DO"),
    (1 << 28, "DR"),
];

/// Renders a response flags bit set as Envoy's access log does (`UF,URX`), `-` for none.
/// Unknown bits are shown as hex so nothing is silently lost.
pub fn response_flags_short(flags: u64) -> String {
    if flags == 0 {
        return "-".to_string();
    }
    let mut out = String::new();
    let mut known = 0u64;
    for (bit, code) in RESPONSE_FLAGS {
        known |= bit;
        if flags & bit != 0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(code);
        }
    }
    let unknown = flags & !known;
    if unknown != 0 {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&format!("0x{unknown:x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status comes from the response headers when they carry a numeric `:status`, else
    /// from the `response.code` attribute; neither gives `None`.
    #[test]
    fn the_status_is_read_from_the_headers_before_the_attribute() {
        use crate::testing::TestHost;
        let host = TestHost::new();
        assert_eq!(response_status(&host), None);
        host.set_property_int("response.code", 503);
        assert_eq!(response_status(&host), Some(503));
        for (status, expect) in [("200", 200), ("abc", 503), ("70000", 503), ("", 503)] {
            host.set_map(MapKind::ResponseHeaders, &[(":status", status)]);
            assert_eq!(response_status(&host), Some(expect), "{status:?}");
        }
    }

    /// Inside a batch that holds `response.code`, the status comes from the batch's one
    /// evaluation and no header is read; absent from it, the headers answer.
    #[test]
    fn a_batch_holding_the_code_answers_the_status_without_a_header_read() {
        use crate::batch::PropertyBatch;
        use crate::testing::{CountingHost, TestHost};
        let host = TestHost::new();
        host.set_property_int("response.total_size", 140);
        host.set_map(MapKind::ResponseHeaders, &[(":status", "503")]);
        let batch = PropertyBatch::new(&host, &["response.total_size"], &[RESPONSE_CODE]);
        let counting = CountingHost::new(&host);

        host.set_property_int("response.code", 200);
        assert_eq!(batch.with(&counting, response_status), Some(200));
        assert_eq!(
            counting.take_names(),
            ["call_foreign_function expr_evaluate"]
        );

        // No code in the evaluation (no response sent): the headers, as without a batch.
        let host = TestHost::new();
        host.set_property_int("response.total_size", 140);
        host.set_map(MapKind::ResponseHeaders, &[(":status", "503")]);
        let batch = PropertyBatch::new(&host, &["response.total_size"], &[RESPONSE_CODE]);
        let counting = CountingHost::new(&host);
        assert_eq!(batch.with(&counting, response_status), Some(503));
        assert_eq!(
            counting.take_names(),
            [
                "call_foreign_function expr_evaluate",
                "get_header_map_value ResponseHeaders :status"
            ]
        );
    }

    #[test]
    fn scalars_round_trip_and_reject_bad_widths() {
        assert_eq!(decode_i64(&encode_i64(-5)), Some(-5));
        assert_eq!(decode_u64(&encode_u64(7)), Some(7));
        assert_eq!(decode_i64(&[1, 2, 3]), None);
        assert_eq!(decode_bool(&[1]), Some(true));
        assert_eq!(decode_bool(&[]), None);
        assert_eq!(
            decode_duration(&encode_duration(Duration::from_millis(3))),
            Some(Duration::from_millis(3))
        );
        assert_eq!(decode_duration(&encode_i64(-1)), None);
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(decode_timestamp(&encode_timestamp(t)), Some(t));
        assert_eq!(decode_string(&[0xff]), None);
    }

    #[test]
    fn pairs_round_trip_and_truncation_is_none() {
        let enc = encode_pairs(&[("a", "1"), ("bb", "")]);
        assert_eq!(
            decode_pairs(&enc),
            Some(vec![("a".into(), "1".into()), ("bb".into(), "".into())])
        );
        for cut in 0..enc.len() {
            assert_eq!(decode_pairs(&enc[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_pairs(&[255, 255, 255, 255]), None);
    }

    #[test]
    fn response_flags_render_like_the_access_log() {
        assert_eq!(response_flags_short(0), "-");
        assert_eq!(response_flags_short((1 << 5) | (1 << 15)), "UF,URX");
        assert_eq!(response_flags_short(1 << 40), "0x10000000000");
    }

    /// The split on the stack gives [`split`]'s segments, and gives up only past its length.
    #[test]
    fn paths_split_on_the_stack_as_split_does() {
        let paths = [
            "plugin_name",
            "request.path",
            "xds.node.locality.region",
            "a.b.c.d.e.f.g.h",
            "",
            ".",
            "a..b",
            ".lead",
            "trail.",
            "é.ü.☃",
            "xds.node.metadata.mesh.io/version",
            "xds.node.metadata.",
        ];
        for path in paths {
            let mut out = [""; MAX_SEGMENTS];
            let n = split_into(path, &mut out);
            assert_eq!(n.map(|n| out[..n].to_vec()), Some(split(path)), "{path:?}");
        }
        let mut out = [""; MAX_SEGMENTS];
        assert_eq!(split_into("a.b.c.d.e.f.g.h.i", &mut out), None);
        let host = crate::testing::TestHost::new();
        host.set_property_str("a.b.c.d.e.f.g.h.i", "deep");
        assert_eq!(string(&host, "a.b.c.d.e.f.g.h.i").as_deref(), Some("deep"));
    }

    #[test]
    fn metadata_keys_keep_dots() {
        assert_eq!(
            split("xds.node.metadata.mesh.io/version"),
            vec!["xds", "node", "metadata", "mesh.io/version"]
        );
        assert_eq!(split("request.path"), vec!["request", "path"]);
    }
}
