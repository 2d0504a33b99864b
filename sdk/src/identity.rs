//! Workload identity and the peer identity header: who this sidecar's workload is (resolved once
//! from config, the VM's environment, then Envoy's node), and the compact, versioned header that
//! tells the other side of a request who we are, optionally signed with HMAC-SHA256.
//!
//! # The header
//! ```text
//! v1;s=frontend;v=v2;i=frontend-7f9c;n=shop;r=eu-west-1;z=eu-west-1a;t=1767225600;m=<mac>
//! ```
//! Fields: `s` service, `v` version, `i` instance, `n` namespace, `r` region, `z` zone (each
//! optional but `s`), `t` the Unix time in seconds when it was made (required), and `m`, when
//! signed, the unpadded base64url HMAC-SHA256 of every byte before `;m=`, always last. Values are
//! percent-encoded outside `A-Z a-z 0-9 - . _ ~ : / @ +`. Unknown fields are ignored so `v1` can
//! grow; an incompatible change gets a new version, which older readers refuse.
//!
//! Everything here is pure: no host calls except in [`NodeInfo::from_host`], no panics, and
//! hostile input is refused with a [`PeerError`] whose [`PeerError::reason`] is a metric label.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::host::Host;
use crate::properties;

/// The default name of the peer identity header (request and response).
pub const DEFAULT_PEER_HEADER: &str = "x-mesh-peer";

/// The header version this code writes and reads.
pub const VERSION: &str = "v1";

/// Longest header value accepted; anything longer is malformed.
pub const MAX_HEADER_LEN: usize = 1024;

/// Longest field value (after percent-decoding) accepted in a header or an identity.
pub const MAX_FIELD_LEN: usize = 128;

/// Shortest and longest signing keys accepted, in bytes.
pub const KEY_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// The value of an identity field nobody could tell.
pub const UNKNOWN: &str = "unknown";

/// A workload's identity. Empty fields are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Service name (`orders`).
    pub service: String,
    /// Service version (`v2`).
    pub version: String,
    /// Instance (pod, host) name.
    pub instance: String,
    /// Namespace.
    pub namespace: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
}

impl Identity {
    /// The identity of a peer nobody vouched for: every field empty (shown as `unknown`).
    pub fn unknown() -> Identity {
        Identity::default()
    }

    /// A field by its name (`service`, `version`, `instance`, `namespace`, `region`, `zone`),
    /// [`UNKNOWN`] when empty or not a field.
    pub fn field(&self, name: &str) -> &str {
        let v = match name {
            "service" => &self.service,
            "version" => &self.version,
            "instance" => &self.instance,
            "namespace" => &self.namespace,
            "region" => &self.region,
            "zone" => &self.zone,
            _ => "",
        };
        if v.is_empty() {
            UNKNOWN
        } else {
            v
        }
    }

    fn fields(&self) -> [(&'static str, &str); 6] {
        [
            ("s", &self.service),
            ("v", &self.version),
            ("i", &self.instance),
            ("n", &self.namespace),
            ("r", &self.region),
            ("z", &self.zone),
        ]
    }
}

/// The names of the identity fields, as [`Identity::field`] takes them.
pub const FIELDS: [&str; 6] = [
    "service",
    "version",
    "instance",
    "namespace",
    "region",
    "zone",
];

/// Identity fields set in a filter's configuration (each optional), the first source consulted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Service name.
    #[serde(default)]
    pub service: Option<String>,
    /// Version.
    #[serde(default)]
    pub version: Option<String>,
    /// Instance.
    #[serde(default)]
    pub instance: Option<String>,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
}

impl IdentityConfig {
    fn get(&self, field: &str) -> Option<&str> {
        let v = match field {
            "service" => &self.service,
            "version" => &self.version,
            "instance" => &self.instance,
            "namespace" => &self.namespace,
            "region" => &self.region,
            "zone" => &self.zone,
            _ => &None,
        };
        v.as_deref()
    }

    /// Checks every set field: not empty, at most [`MAX_FIELD_LEN`] bytes, no control characters.
    /// Errors name the field under `path` (`identity.service`).
    pub fn validate(&self, path: &str) -> Result<(), crate::config::ConfigError> {
        for field in FIELDS {
            if let Some(v) = self.get(field) {
                let p = format!("{path}.{field}");
                crate::config::check::non_empty(v, p.as_str())?;
                crate::config::check::ensure(
                    v.len() <= MAX_FIELD_LEN && !v.chars().any(char::is_control),
                    p,
                    &format!("at most {MAX_FIELD_LEN} bytes without control characters"),
                )?;
            }
        }
        Ok(())
    }
}

/// The environment variable read for each identity field (second source).
pub const ENV_VARS: [(&str, &str); 6] = [
    ("service", "MESH_SERVICE"),
    ("version", "MESH_VERSION"),
    ("instance", "MESH_INSTANCE"),
    ("namespace", "MESH_NAMESPACE"),
    ("region", "MESH_REGION"),
    ("zone", "MESH_ZONE"),
];

/// What Envoy's node says (third source): `xds.node.id`, `xds.node.cluster`,
/// `xds.node.locality.region|zone` and the node metadata keys in [`NODE_METADATA_KEYS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `xds.node.id`.
    pub id: Option<String>,
    /// `xds.node.cluster`.
    pub cluster: Option<String>,
    /// `xds.node.locality.region`.
    pub region: Option<String>,
    /// `xds.node.locality.zone`.
    pub zone: Option<String>,
    /// Node metadata string values, by key.
    pub metadata: Vec<(String, String)>,
}

/// The node metadata key read for each identity field, before the node's own fields.
pub const NODE_METADATA_KEYS: [(&str, &str); 4] = [
    ("service", "SERVICE"),
    ("version", "VERSION"),
    ("instance", "INSTANCE"),
    ("namespace", "NAMESPACE"),
];

impl NodeInfo {
    /// Reads the node's attributes from the host (once per configuration, not per request).
    pub fn from_host(host: &dyn Host) -> NodeInfo {
        NodeInfo {
            id: properties::xds_node_id(host),
            cluster: properties::xds_node_cluster(host),
            region: properties::xds_node_region(host),
            zone: properties::xds_node_zone(host),
            metadata: NODE_METADATA_KEYS
                .iter()
                .filter_map(|(_, key)| {
                    properties::xds_node_metadata(host, key).map(|v| (key.to_string(), v))
                })
                .collect(),
        }
    }

    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The node's value for an identity field: the metadata key first, then the node field.
    pub fn get(&self, field: &str) -> Option<&str> {
        let from_meta = NODE_METADATA_KEYS
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, key)| self.meta(key));
        from_meta.or(match field {
            "service" => self.cluster.as_deref(),
            "instance" => self.id.as_deref(),
            "region" => self.region.as_deref(),
            "zone" => self.zone.as_deref(),
            _ => None,
        })
    }
}

/// Where a resolved identity field came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The filter configuration.
    Config,
    /// A VM environment variable ([`ENV_VARS`]).
    Env,
    /// Envoy's node.
    Node,
    /// Nowhere: the field is unknown.
    Unknown,
}

/// Resolves the local identity field by field: `config`, then `env` (a lookup of the VM's
/// environment variables, [`ENV_VARS`]), then `node`. Empty values count as absent, values are
/// trimmed and cut to [`MAX_FIELD_LEN`] bytes. Returns the identity and each field's origin.
pub fn resolve(
    config: &IdentityConfig,
    env: &dyn Fn(&str) -> Option<String>,
    node: &NodeInfo,
) -> (Identity, [(&'static str, Origin); 6]) {
    let mut id = Identity::default();
    let mut origins = [("", Origin::Unknown); 6];
    for (i, field) in FIELDS.iter().enumerate() {
        let env_name = ENV_VARS
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, n)| *n)
            .unwrap_or_default();
        let clean = |v: &str| {
            let v = v.trim();
            (!v.is_empty()).then(|| cut(v, MAX_FIELD_LEN).to_string())
        };
        let (value, origin) = if let Some(v) = config.get(field).and_then(clean) {
            (v, Origin::Config)
        } else if let Some(v) = env(env_name).as_deref().and_then(clean) {
            (v, Origin::Env)
        } else if let Some(v) = node.get(field).and_then(clean) {
            (v, Origin::Node)
        } else {
            (String::new(), Origin::Unknown)
        };
        match *field {
            "service" => id.service = value,
            "version" => id.version = value,
            "instance" => id.instance = value,
            "namespace" => id.namespace = value,
            "region" => id.region = value,
            _ => id.zone = value,
        }
        if let Some(slot) = origins.get_mut(i) {
            *slot = (field, origin);
        }
    }
    (id, origins)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// A shared mesh key for HMAC-SHA256 header signatures. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({} bytes)", self.0.len())
    }
}

impl SigningKey {
    /// Parses `hex:<hex digits>` or `base64:<standard or url-safe base64, padding optional>`;
    /// the key must be [`KEY_LEN`] bytes long. The error says what is wrong, never the key.
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let bytes = if let Some(h) = text.strip_prefix("hex:") {
            decode_hex(h.trim()).ok_or("`hex:` key is not valid hex")?
        } else if let Some(b) = text.strip_prefix("base64:") {
            decode_base64(b.trim()).ok_or("`base64:` key is not valid base64")?
        } else {
            return Err("must start with `hex:` or `base64:`".to_string());
        };
        if !KEY_LEN.contains(&bytes.len()) {
            return Err(format!(
                "key is {} bytes, expected {} to {}",
                bytes.len(),
                KEY_LEN.start(),
                KEY_LEN.end()
            ));
        }
        Ok(SigningKey(bytes))
    }

    /// A key from raw bytes (any length HMAC accepts; [`SigningKey::parse`] checks [`KEY_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> SigningKey {
        SigningKey(bytes.to_vec())
    }

    fn mac(&self, data: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).ok()?;
        mac.update(data);
        Some(mac)
    }

    /// The HMAC-SHA256 of `data`.
    pub fn sign(&self, data: &[u8]) -> Option<[u8; 32]> {
        Some(self.mac(data)?.finalize().into_bytes().into())
    }

    /// Whether `tag` is the HMAC-SHA256 of `data`, compared in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        match self.sign(data) {
            Some(expected) => constant_time_eq(&expected, tag),
            None => false,
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Why a peer header was not believed. [`PeerError::reason`] is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerError {
    /// Not a header this code can parse (bad syntax, missing `s` or `t`, too long, bad UTF-8).
    Malformed,
    /// A version other than [`VERSION`].
    UnsupportedVersion,
    /// A key is configured but the header carries no signature.
    Unsigned,
    /// The signature does not match: forged or made with another key.
    Forged,
    /// The timestamp is further from now than the allowed skew (either way).
    Expired,
}

impl PeerError {
    /// The label value: `malformed`, `unsupported_version`, `unsigned`, `forged`, `expired`.
    pub fn reason(self) -> &'static str {
        match self {
            PeerError::Malformed => "malformed",
            PeerError::UnsupportedVersion => "unsupported_version",
            PeerError::Unsigned => "unsigned",
            PeerError::Forged => "forged",
            PeerError::Expired => "expired",
        }
    }

    /// Every reason, for defining metrics up front.
    pub const ALL: [PeerError; 5] = [
        PeerError::Malformed,
        PeerError::UnsupportedVersion,
        PeerError::Unsigned,
        PeerError::Forged,
        PeerError::Expired,
    ];
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PeerError {}

/// A decoded header: the claimed identity, its timestamp and signature (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHeader {
    /// The identity the header claims.
    pub identity: Identity,
    /// Unix seconds when it was made.
    pub timestamp: u64,
    /// The signature, when present.
    pub mac: Option<Vec<u8>>,
}

/// Encodes `identity` made at `timestamp` (Unix seconds), signed when `key` is given.
pub fn encode(identity: &Identity, timestamp: u64, key: Option<&SigningKey>) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(VERSION);
    for (k, v) in identity.fields() {
        if v.is_empty() {
            continue;
        }
        out.push(';');
        out.push_str(k);
        out.push('=');
        percent_encode(&mut out, cut(v, MAX_FIELD_LEN));
    }
    out.push_str(";t=");
    out.push_str(&timestamp.to_string());
    if let Some(tag) = key.and_then(|k| k.sign(out.as_bytes())) {
        out.push_str(";m=");
        out.push_str(&encode_base64url(&tag));
    }
    out
}

/// Decodes a header value without checking its signature or age (see [`verify`]).
pub fn decode(value: &[u8]) -> Result<PeerHeader, PeerError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(PeerError::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| PeerError::Malformed)?;
    let mut parts = text.split(';');
    let version = parts.next().unwrap_or_default();
    if version != VERSION {
        let looks_versioned = version.len() > 1
            && version.starts_with('v')
            && version.bytes().skip(1).all(|b| b.is_ascii_digit());
        return Err(if looks_versioned {
            PeerError::UnsupportedVersion
        } else {
            PeerError::Malformed
        });
    }
    let mut id = Identity::default();
    let mut timestamp = None;
    let mut mac = None;
    let mut seen = [false; 8];
    for part in parts {
        if mac.is_some() {
            // `m` must be the last field: it signs everything before it.
            return Err(PeerError::Malformed);
        }
        let (k, v) = part.split_once('=').ok_or(PeerError::Malformed)?;
        let slot = match k {
            "s" => 0,
            "v" => 1,
            "i" => 2,
            "n" => 3,
            "r" => 4,
            "z" => 5,
            "t" => 6,
            "m" => 7,
            _ if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase()) => continue,
            _ => return Err(PeerError::Malformed),
        };
        match seen.get_mut(slot) {
            Some(s) if !*s => *s = true,
            _ => return Err(PeerError::Malformed),
        }
        match slot {
            6 => {
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(PeerError::Malformed);
                }
                timestamp = Some(v.parse::<u64>().map_err(|_| PeerError::Malformed)?);
            }
            7 => mac = Some(decode_base64(v).ok_or(PeerError::Malformed)?),
            _ => {
                let value = percent_decode(v).ok_or(PeerError::Malformed)?;
                match slot {
                    0 => id.service = value,
                    1 => id.version = value,
                    2 => id.instance = value,
                    3 => id.namespace = value,
                    4 => id.region = value,
                    _ => id.zone = value,
                }
            }
        }
    }
    let timestamp = timestamp.ok_or(PeerError::Malformed)?;
    if id.service.is_empty() {
        return Err(PeerError::Malformed);
    }
    Ok(PeerHeader {
        identity: id,
        timestamp,
        mac,
    })
}

/// Decodes a header and decides whether to believe it. With a `key`: the header must be signed
/// with it and made within `max_skew_secs` of `now_secs` (either way). Without a key the claim
/// is taken as it is (signature and age unchecked): only for meshes that trust their network.
pub fn verify(
    value: &[u8],
    key: Option<&SigningKey>,
    now_secs: u64,
    max_skew_secs: u64,
) -> Result<Identity, PeerError> {
    verify_header(value, key, now_secs, max_skew_secs).map(|h| h.identity)
}

/// As [`verify`], returning the whole believed header (identity, timestamp, signature), for
/// callers that cache verified headers and re-check only their age.
pub fn verify_header(
    value: &[u8],
    key: Option<&SigningKey>,
    now_secs: u64,
    max_skew_secs: u64,
) -> Result<PeerHeader, PeerError> {
    let header = decode(value)?;
    let Some(key) = key else {
        return Ok(header);
    };
    let Some(tag) = header.mac.as_deref() else {
        return Err(PeerError::Unsigned);
    };
    // `decode` accepted the text, so it is UTF-8 and `;m=` starts its last field.
    let signed = std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.rfind(";m=").and_then(|i| t.get(..i)))
        .ok_or(PeerError::Malformed)?;
    if !key.verify(signed.as_bytes(), tag) {
        return Err(PeerError::Forged);
    }
    if now_secs.abs_diff(header.timestamp) > max_skew_secs {
        return Err(PeerError::Expired);
    }
    Ok(header)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/@+".contains(&b)
}

fn percent_encode(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            let hex = |n: u8| char::from(HEX.get(usize::from(n)).copied().unwrap_or(b'0'));
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b & 0xf));
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a field value; `None` for bad escapes, raw reserved bytes, non-UTF-8,
/// control characters or more than [`MAX_FIELD_LEN`] bytes.
fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex_val(*bytes.get(i + 1)?)?;
            let lo = hex_val(*bytes.get(i + 2)?)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else if unreserved(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    if out.len() > MAX_FIELD_LEN {
        return None;
    }
    let s = String::from_utf8(out).ok()?;
    (!s.chars().any(char::is_control)).then_some(s)
}

/// Decodes hex (either case, even length).
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks_exact(2)
        .map(|pair| match pair {
            [h, l] => Some((hex_val(*h)? << 4) | hex_val(*l)?),
            _ => None,
        })
        .collect()
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Encodes bytes as unpadded base64url.
pub fn encode_base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    let sym = |i: u32| char::from(B64URL.get((i & 63) as usize).copied().unwrap_or(b'A'));
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        if chunk.len() > 1 {
            out.push(sym(n >> 6));
        }
        if chunk.len() > 2 {
            out.push(sym(n));
        }
    }
    out
}

/// Decodes base64, standard (`+/`) or url-safe (`-_`) alphabet, `=` padding optional.
/// Refuses mixed garbage, bad lengths and non-zero trailing bits.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 || (text.len() != trimmed.len() && text.len() % 4 != 0) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        }))
    };
    let bytes = trimmed.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let [_, a, b, c] = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&[a, b, c]),
            3 if c == 0 => out.extend_from_slice(&[a, b]),
            2 if b == 0 && c == 0 => out.push(a),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frontend() -> Identity {
        Identity {
            service: "frontend".into(),
            version: "v2".into(),
            instance: "frontend-7f9c".into(),
            namespace: "shop".into(),
            region: "eu-west-1".into(),
            zone: "eu-west-1a".into(),
        }
    }

    fn key() -> SigningKey {
        SigningKey::parse("hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap()
    }

    const T: u64 = 1_767_225_600;

    #[test]
    fn resolution_order_is_config_env_node() {
        let config = IdentityConfig {
            service: Some("from-config".into()),
            version: Some("  ".into()), // blank counts as absent
            ..IdentityConfig::default()
        };
        let env = |name: &str| match name {
            "MESH_VERSION" => Some("v-env".to_string()),
            "MESH_SERVICE" => Some("from-env".to_string()),
            "MESH_REGION" => Some(String::new()),
            _ => None,
        };
        let node = NodeInfo {
            id: Some("node-1".into()),
            cluster: Some("node-cluster".into()),
            region: Some("eu-west-1".into()),
            zone: None,
            metadata: vec![("NAMESPACE".into(), "shop".into())],
        };
        let (id, origins) = resolve(&config, &env, &node);
        assert_eq!(id.service, "from-config");
        assert_eq!(id.version, "v-env");
        assert_eq!(id.instance, "node-1");
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.region, "eu-west-1");
        assert_eq!(id.zone, "");
        assert_eq!(id.field("zone"), UNKNOWN);
        assert_eq!(
            origins,
            [
                ("service", Origin::Config),
                ("version", Origin::Env),
                ("instance", Origin::Node),
                ("namespace", Origin::Node),
                ("region", Origin::Node),
                ("zone", Origin::Unknown),
            ]
        );
        // Node metadata beats the node's own fields; the node cluster is the last resort.
        let node = NodeInfo {
            metadata: vec![("SERVICE".into(), "meta-svc".into())],
            ..node
        };
        let (id, _) = resolve(&IdentityConfig::default(), &|_| None, &node);
        assert_eq!(id.service, "meta-svc");
        let (id, _) = resolve(&IdentityConfig::default(), &|_| None, &NodeInfo::default());
        assert_eq!(id, Identity::unknown());
    }

    #[test]
    fn node_info_from_the_test_host() {
        let h = crate::testing::TestHost::new();
        h.set_vm_property("xds.node.id", "sidecar-a");
        h.set_vm_property("xds.node.cluster", "frontend");
        h.set_vm_property("xds.node.locality.region", "eu-west-1");
        h.set_vm_property("xds.node.metadata.VERSION", "v3");
        let node = NodeInfo::from_host(&h);
        assert_eq!(node.get("service"), Some("frontend"));
        assert_eq!(node.get("version"), Some("v3"));
        assert_eq!(node.get("instance"), Some("sidecar-a"));
        assert_eq!(node.get("zone"), None);
    }

    #[test]
    fn config_validation_names_the_field() {
        let c = IdentityConfig {
            zone: Some(String::new()),
            ..IdentityConfig::default()
        };
        assert_eq!(
            c.validate("identity").unwrap_err().to_string(),
            "identity.zone: must not be empty"
        );
        let c = IdentityConfig {
            service: Some("x".repeat(200)),
            ..IdentityConfig::default()
        };
        assert!(c.validate("identity").is_err());
    }

    #[test]
    fn encode_decode_round_trip_unsigned_and_signed() {
        let id = frontend();
        let h = encode(&id, T, None);
        assert_eq!(
            h,
            "v1;s=frontend;v=v2;i=frontend-7f9c;n=shop;r=eu-west-1;z=eu-west-1a;t=1767225600"
        );
        let d = decode(h.as_bytes()).unwrap();
        assert_eq!((d.identity, d.timestamp, d.mac), (id.clone(), T, None));
        let signed = encode(&id, T, Some(&key()));
        assert!(signed.starts_with(&h), "{signed}");
        let mac = signed.rsplit(";m=").next().unwrap();
        assert_eq!(mac.len(), 43);
        assert_eq!(
            verify(signed.as_bytes(), Some(&key()), T, 30),
            Ok(id.clone())
        );
        // Without a key, a signed header is taken as claimed too.
        assert_eq!(verify(signed.as_bytes(), None, 0, 0), Ok(id));
    }

    #[test]
    fn reserved_characters_are_escaped_and_empty_fields_left_out() {
        let id = Identity {
            service: "a;b=c d%é".into(),
            ..Identity::default()
        };
        let h = encode(&id, 7, None);
        assert_eq!(h, "v1;s=a%3Bb%3Dc%20d%25%C3%A9;t=7");
        assert_eq!(decode(h.as_bytes()).unwrap().identity, id);
    }

    #[test]
    fn forged_unsigned_expired_and_malformed_are_refused() {
        let k = key();
        let signed = encode(&frontend(), T, Some(&k));
        // Claiming another service with the old signature.
        let forged = signed.replace("s=frontend", "s=admin");
        assert_eq!(
            verify(forged.as_bytes(), Some(&k), T, 30),
            Err(PeerError::Forged)
        );
        // Signed with another key.
        let other = SigningKey::from_bytes(&[9; 32]);
        let theirs = encode(&frontend(), T, Some(&other));
        assert_eq!(
            verify(theirs.as_bytes(), Some(&k), T, 30),
            Err(PeerError::Forged)
        );
        // A truncated or altered tag.
        let short = &signed[..signed.len() - 4];
        assert!(matches!(
            verify(short.as_bytes(), Some(&k), T, 30),
            Err(PeerError::Forged | PeerError::Malformed)
        ));
        let unsigned = encode(&frontend(), T, None);
        assert_eq!(
            verify(unsigned.as_bytes(), Some(&k), T, 30),
            Err(PeerError::Unsigned)
        );
        assert_eq!(
            verify(signed.as_bytes(), Some(&k), T + 31, 30),
            Err(PeerError::Expired)
        );
        assert_eq!(
            verify(signed.as_bytes(), Some(&k), T - 31, 30),
            Err(PeerError::Expired)
        );
        assert!(verify(signed.as_bytes(), Some(&k), T + 30, 30).is_ok());
        // Signature not last: refused even though the tag is right.
        let moved = format!("{signed};x=1");
        assert_eq!(
            verify(moved.as_bytes(), Some(&k), T, 30),
            Err(PeerError::Malformed)
        );
    }

    #[test]
    fn hostile_input_never_panics_and_is_malformed() {
        let cases: [&[u8]; 17] = [
            b"",
            b"v1",
            b"v1;t=1",
            b"v1;s=a",
            b"v1;s=a;t=",
            b"v1;s=a;t=-1",
            b"v1;s=a;t=99999999999999999999999",
            b"v1;s=a;s=b;t=1",
            b"v1;s=a;t=1;m=***",
            b"v1;s=a%zz;t=1",
            b"v1;s=a%0A;t=1",
            b"v1;s=a b;t=1",
            b"v1;s=%ff;t=1",
            b"v1;s=a;t=1;;",
            b"v1;s;t=1",
            b"\xff\xfe",
            b"x1;s=a;t=1",
        ];
        for c in cases {
            assert_eq!(decode(c), Err(PeerError::Malformed), "{c:?}");
        }
        assert_eq!(decode(b"v2;s=a;t=1"), Err(PeerError::UnsupportedVersion));
        let long = format!("v1;s=a;t=1;x={}", "a".repeat(MAX_HEADER_LEN));
        assert_eq!(decode(long.as_bytes()), Err(PeerError::Malformed));
        let field = format!("v1;s={};t=1", "a".repeat(MAX_FIELD_LEN + 1));
        assert_eq!(decode(field.as_bytes()), Err(PeerError::Malformed));
        // Unknown lowercase fields are skipped (room for v1 to grow).
        assert_eq!(
            decode(b"v1;s=a;future=1;t=1").unwrap().identity.service,
            "a"
        );
        // Every prefix of a valid signed header decodes or fails cleanly.
        let signed = encode(&frontend(), T, Some(&key()));
        for cut in 0..signed.len() {
            let _ = verify(&signed.as_bytes()[..cut], Some(&key()), T, 30);
        }
    }

    #[test]
    fn signing_keys_are_parsed_and_length_checked() {
        assert_eq!(key().0.len(), 32);
        let b64 = SigningKey::parse("base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(b64, key());
        let url = SigningKey::parse("base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
        assert_eq!(url, key());
        assert!(SigningKey::parse("000102030405060708090a0b0c0d0e0f")
            .unwrap_err()
            .contains("must start with"));
        assert_eq!(
            SigningKey::parse("hex:0001").unwrap_err(),
            "key is 2 bytes, expected 16 to 64"
        );
        assert!(SigningKey::parse("hex:zz").is_err());
        assert!(SigningKey::parse("base64:a").is_err());
        assert!(!format!("{:?}", key()).contains("01"));
    }

    #[test]
    fn base64_and_hex_codecs() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let enc = encode_base64url(&data);
            assert_eq!(decode_base64(&enc), Some(data.clone()), "{n}");
        }
        assert_eq!(decode_base64("TWE="), Some(b"Ma".to_vec()));
        assert_eq!(decode_base64("TWF="), None, "non-zero trailing bits");
        assert_eq!(decode_base64("T==="), None);
        assert_eq!(decode_hex("0aFf"), Some(vec![10, 255]));
        assert_eq!(decode_hex("0"), None);
        assert!(constant_time_eq(b"ab", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ac"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        // RFC 4231 test case 2.
        let k = SigningKey::from_bytes(b"Jefe");
        let tag = k.sign(b"what do ya want for nothing?").unwrap();
        assert_eq!(
            decode_hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843").unwrap(),
            tag.to_vec()
        );
    }
}
