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
//!
//! This file holds the [`Identity`] type; the rest lives in private submodules, re-exported here:
//! `resolve` (the local identity from config, environment and node), `keys` (signing keys and
//! HMAC), `header` (the header's wire format and its verification), `scope` (signed headers bound
//! to a key id, an audience and a direction: `k`, `a`, `d`) and `codec` (percent, hex and base64
//! codecs).

mod codec;
mod header;
mod keys;
mod resolve;
mod scope;

pub use codec::{decode_base64, decode_hex, encode_base64url};
pub use header::{
    decode, encode, verify, verify_header, PeerError, PeerHeader, DEFAULT_PEER_HEADER,
    MAX_HEADER_LEN, VERSION,
};
pub use keys::{constant_time_eq, SigningKey, KEY_LEN};
pub use resolve::{resolve, IdentityConfig, NodeInfo, Origin, ENV_VARS, NODE_METADATA_KEYS};
pub use scope::{encode_scoped, verify_scoped, Direction, KeyRing, Scope};

/// Longest field value (after percent-decoding) accepted in a header or an identity.
pub const MAX_FIELD_LEN: usize = 128;

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

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}
