//! The peer identity header's wire format: encoding an identity (signed or not), decoding a
//! value strictly, and deciding whether to believe it (signature and age).

use std::fmt;

use super::codec::{decode_base64, encode_base64url, percent_decode, percent_encode};
use super::keys::SigningKey;
use super::{cut, Identity, MAX_FIELD_LEN};

/// The default name of the peer identity header (request and response).
pub const DEFAULT_PEER_HEADER: &str = "x-mesh-peer";

/// The header version this code writes and reads.
pub const VERSION: &str = "v1";

/// Longest header value accepted; anything longer is malformed.
pub const MAX_HEADER_LEN: usize = 1024;

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
    /// A header arrived on a connection with no verified peer certificate, where only a
    /// certificate (or a signed header) is believed.
    NoCertificate,
    /// The verified peer certificate's URI SAN is not a workload SPIFFE ID
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<service>`).
    BadCertificate,
    /// A signed header made for another service or the other direction (replayed elsewhere).
    WrongAudience,
}

impl PeerError {
    /// The label value: `malformed`, `unsupported_version`, `unsigned`, `forged`, `expired`,
    /// `no_certificate`, `bad_certificate`, `wrong_audience`.
    pub fn reason(self) -> &'static str {
        match self {
            PeerError::Malformed => "malformed",
            PeerError::UnsupportedVersion => "unsupported_version",
            PeerError::Unsigned => "unsigned",
            PeerError::Forged => "forged",
            PeerError::Expired => "expired",
            PeerError::NoCertificate => "no_certificate",
            PeerError::BadCertificate => "bad_certificate",
            PeerError::WrongAudience => "wrong_audience",
        }
    }

    /// Every reason, for defining metrics up front.
    pub const ALL: [PeerError; 8] = [
        PeerError::Malformed,
        PeerError::UnsupportedVersion,
        PeerError::Unsigned,
        PeerError::Forged,
        PeerError::Expired,
        PeerError::NoCertificate,
        PeerError::BadCertificate,
        PeerError::WrongAudience,
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
    let (signed, tag) = signed_part(value, &header)?;
    if !key.verify(signed.as_bytes(), tag) {
        return Err(PeerError::Forged);
    }
    if now_secs.abs_diff(header.timestamp) > max_skew_secs {
        return Err(PeerError::Expired);
    }
    Ok(header)
}

/// The signed text of a decoded `header` (everything before `;m=`) and its signature;
/// [`PeerError::Unsigned`] when it has none.
pub(super) fn signed_part<'a>(
    value: &'a [u8],
    header: &'a PeerHeader,
) -> Result<(&'a str, &'a [u8]), PeerError> {
    let Some(tag) = header.mac.as_deref() else {
        return Err(PeerError::Unsigned);
    };
    // `decode` accepted the text, so it is UTF-8 and `;m=` starts its last field.
    let signed = std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.rfind(";m=").and_then(|i| t.get(..i)))
        .ok_or(PeerError::Malformed)?;
    Ok((signed, tag))
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
}
