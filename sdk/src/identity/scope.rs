//! Signed headers bound to one hop: a signed header also names the id of the key that signed it
//! (`k`, so two keys verify during a rotation), its audience (`a`, the service it was made for)
//! and its direction (`d`: `rq` on a request, `rs` on a response), all covered by the signature.
//! A header harvested at one hop is refused at any other: another audience, or the other
//! direction, is [`PeerError::WrongAudience`].

use super::header::{decode, encode, signed_part, PeerError, PeerHeader};
use super::keys::SigningKey;
use super::{codec::encode_base64url, Identity};

/// Which way a header travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// On a request, from the caller's sidecar to the callee's.
    Request,
    /// On a response, from the callee's sidecar back to the caller's.
    Response,
}

impl Direction {
    /// The wire form: `rq` or `rs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "rq",
            Direction::Response => "rs",
        }
    }
}

/// Where a header is meant to be read: by `audience` (a service), travelling `direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope<'a> {
    /// The service the header is for.
    pub audience: &'a str,
    /// The way it travels.
    pub direction: Direction,
}

/// The mesh keys, each with an id: the first signs, every one verifies (two during a rotation).
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<(String, SigningKey)>,
}

impl KeyRing {
    /// A ring of `(id, key)` pairs; the first signs. Ids are `[a-z0-9-_.]`, at most 32 bytes,
    /// unique, or it is an error naming the index.
    pub fn new(keys: Vec<(String, SigningKey)>) -> Result<KeyRing, String> {
        for (i, (id, _)) in keys.iter().enumerate() {
            let ok = id.len() <= 32
                && id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                });
            if !ok {
                return Err(format!(
                    "key {i}: id {id:?} must be at most 32 of a-z 0-9 - _ ."
                ));
            }
            if keys[..i].iter().any(|(other, _)| other == id) {
                return Err(format!("key {i}: id {id:?} is used twice"));
            }
        }
        Ok(KeyRing { keys })
    }

    /// No key: headers are neither signed nor checked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The signing key's id, when there is a key.
    pub fn signing_id(&self) -> Option<&str> {
        self.keys.first().map(|(id, _)| id.as_str())
    }
}

/// Encodes `identity` made at `timestamp`; with a key, names the key, the scope and signs it all.
pub fn encode_scoped(
    identity: &Identity,
    timestamp: u64,
    ring: &KeyRing,
    scope: &Scope<'_>,
) -> String {
    let mut out = encode(identity, timestamp, None);
    let Some((id, key)) = ring.keys.first() else {
        return out;
    };
    if !id.is_empty() {
        out.push_str(";k=");
        out.push_str(id);
    }
    out.push_str(";a=");
    super::codec::percent_encode(&mut out, super::cut(scope.audience, super::MAX_FIELD_LEN));
    out.push_str(";d=");
    out.push_str(scope.direction.as_str());
    if let Some(tag) = key.sign(out.as_bytes()) {
        out.push_str(";m=");
        out.push_str(&encode_base64url(&tag));
    }
    out
}

/// Decides whether to believe a header read where `expect` says. Without keys the claim is taken
/// as it is. With keys it must be signed by one of them (the one its `k` names, when it names
/// one), made within `max_skew_secs` of `now_secs`, and scoped to `expect`.
pub fn verify_scoped(
    value: &[u8],
    ring: &KeyRing,
    now_secs: u64,
    max_skew_secs: u64,
    expect: &Scope<'_>,
) -> Result<PeerHeader, PeerError> {
    let header = decode(value)?;
    if ring.is_empty() {
        return Ok(header);
    }
    let (signed, tag) = signed_part(value, &header)?;
    let field = |name: &str| {
        signed
            .split(';')
            .skip(1)
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
    };
    let verified = match field("k") {
        Some(id) => ring
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .is_some_and(|(_, key)| key.verify(signed.as_bytes(), tag)),
        None => ring
            .keys
            .iter()
            .any(|(_, key)| key.verify(signed.as_bytes(), tag)),
    };
    if !verified {
        return Err(PeerError::Forged);
    }
    if now_secs.abs_diff(header.timestamp) > max_skew_secs {
        return Err(PeerError::Expired);
    }
    let audience = field("a").and_then(super::codec::percent_decode);
    if audience.as_deref() != Some(expect.audience) || field("d") != Some(expect.direction.as_str())
    {
        return Err(PeerError::WrongAudience);
    }
    Ok(header)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ring(ids: &[(&str, u8)]) -> KeyRing {
        KeyRing::new(
            ids.iter()
                .map(|(id, b)| (id.to_string(), SigningKey::from_bytes(&[*b; 32])))
                .collect(),
        )
        .unwrap()
    }

    fn orders() -> Identity {
        Identity {
            service: "orders".into(),
            version: "v1".into(),
            ..Identity::default()
        }
    }

    const TO_INVENTORY: Scope<'static> = Scope {
        audience: "inventory",
        direction: Direction::Request,
    };

    #[test]
    fn a_header_is_believed_only_where_it_was_meant_to_be_read() {
        let keys = ring(&[("k1", 1)]);
        let h = encode_scoped(&orders(), 100, &keys, &TO_INVENTORY);
        assert!(h.contains(";k=k1;a=inventory;d=rq;m="), "{h}");
        let ok = verify_scoped(h.as_bytes(), &keys, 100, 60, &TO_INVENTORY).unwrap();
        assert_eq!(ok.identity, orders());
        for elsewhere in [
            Scope {
                audience: "payments",
                direction: Direction::Request,
            },
            Scope {
                audience: "inventory",
                direction: Direction::Response,
            },
        ] {
            assert_eq!(
                verify_scoped(h.as_bytes(), &keys, 100, 60, &elsewhere),
                Err(PeerError::WrongAudience)
            );
        }
        // Changing the scope breaks the signature.
        let moved = h.replace("a=inventory", "a=payments");
        let to_payments = Scope {
            audience: "payments",
            direction: Direction::Request,
        };
        assert_eq!(
            verify_scoped(moved.as_bytes(), &keys, 100, 60, &to_payments),
            Err(PeerError::Forged)
        );
        assert_eq!(
            verify_scoped(h.as_bytes(), &keys, 200, 60, &TO_INVENTORY),
            Err(PeerError::Expired)
        );
    }

    #[test]
    fn two_keys_verify_during_a_rotation_and_the_key_id_is_bound() {
        let old = ring(&[("old", 1)]);
        let rotating = ring(&[("new", 2), ("old", 1)]);
        let new_only = ring(&[("new", 2)]);
        let by_old = encode_scoped(&orders(), 100, &old, &TO_INVENTORY);
        let by_new = encode_scoped(&orders(), 100, &rotating, &TO_INVENTORY);
        assert!(by_new.contains(";k=new;"));
        for h in [&by_old, &by_new] {
            assert!(verify_scoped(h.as_bytes(), &rotating, 100, 60, &TO_INVENTORY).is_ok());
        }
        assert_eq!(
            verify_scoped(by_old.as_bytes(), &new_only, 100, 60, &TO_INVENTORY),
            Err(PeerError::Forged)
        );
        // No key: unsigned, taken as claimed; a key ring refuses it.
        let plain = encode_scoped(&orders(), 100, &KeyRing::default(), &TO_INVENTORY);
        assert!(!plain.contains(";m="));
        assert_eq!(
            verify_scoped(plain.as_bytes(), &rotating, 100, 60, &TO_INVENTORY),
            Err(PeerError::Unsigned)
        );
        assert!(KeyRing::new(vec![
            ("a".into(), SigningKey::from_bytes(&[1; 32])),
            ("a".into(), SigningKey::from_bytes(&[2; 32]))
        ])
        .is_err());
        assert!(KeyRing::new(vec![("A;".into(), SigningKey::from_bytes(&[1; 32]))]).is_err());
    }
}
