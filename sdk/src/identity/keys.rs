//! The shared mesh key that signs peer headers: parsing (`hex:` / `base64:`), HMAC-SHA256 signing
//! and constant-time verification.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codec::{decode_base64, decode_hex};

/// Shortest and longest signing keys accepted, in bytes.
pub const KEY_LEN: std::ops::RangeInclusive<usize> = 16..=64;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> SigningKey {
        SigningKey::parse("hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap()
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
    fn hmac_and_constant_time_eq() {
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
