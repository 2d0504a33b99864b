//! The proxy-wasm ABI's byte formats and status codes as pure functions (no host calls, every
//! target): header maps, property paths and hostcall statuses, decoded totally, for
//! [`crate::abi`] on wasm32 and for the tests and fuzzing everywhere.
//!
//! # Header maps
//! A map crosses the ABI as: a `u32` count `n`; `n` pairs of `u32` lengths (name, value); then
//! each name and each value, in pair order, followed by a NUL byte. All integers little endian
//! (wasm memory order; the `proxy-wasm` crate's `utils::serialize_map` and proxy-wasm-cpp-host's
//! `PairsUtil::marshalPairs` write exactly this).
//!
//! [`decode_map`] never panics and never indexes out of bounds. What it does with input the host
//! should not send:
//! - **A name that is not UTF-8** is kept, made valid with [`String::from_utf8_lossy`] (each
//!   invalid sequence becomes U+FFFD) and counted in [`DecodedMap::lossy_names`]. Kept, not
//!   skipped: the pair is still there for a filter that iterates, its value intact; and since a
//!   real header name is ASCII, a lossy name never equals a name a filter looks up. (The
//!   `proxy-wasm` crate's `get_map_bytes` unwraps `String::from_utf8` here and panics: HTTP codecs
//!   refuse such names, but Envoy's other filters, e.g. Lua, can add them.)
//! - **Values** are bytes and are kept as they are, UTF-8 or not.
//! - **A truncated or inconsistent buffer** (shorter than its counts say, a missing NUL
//!   terminator, lengths that overflow) yields the pairs that are whole before the first fault,
//!   and sets [`DecodedMap::malformed`]. When the length table itself does not fit, no pair can
//!   be located and none is returned. Bytes after the last pair also set `malformed` (the pairs
//!   are all returned).
//! - **A huge count** is checked against the buffer before anything is allocated.

use std::fmt;
use std::ops::Range;

/// The host counter of header names that were not UTF-8 and were kept lossy: one per name, per
/// read of a map. Defined by the real host on first use, so a VM that never meets one has none.
pub const LOSSY_HEADER_NAMES: &str = "meshwasm_sdk_header_names_not_utf8_total";

/// The host counter of header maps that came truncated or inconsistent: one per read. Defined on
/// first use, as [`LOSSY_HEADER_NAMES`].
pub const MALFORMED_HEADER_MAPS: &str = "meshwasm_sdk_header_maps_malformed_total";

/// A hostcall's status other than `Ok` (proxy-wasm ABI `WasmResult` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// 1: what was asked for does not exist.
    NotFound,
    /// 2: an argument was refused (also: a header map that does not exist in this phase).
    BadArgument,
    /// 3: the host could not serialize the value.
    SerializationFailure,
    /// 4: the host could not parse an argument.
    ParseFailure,
    /// 5: a bad expression.
    BadExpression,
    /// 6: a pointer or length outside the module's memory.
    InvalidMemoryAccess,
    /// 7: an empty queue.
    Empty,
    /// 8: shared data changed since its CAS token was read.
    CasMismatch,
    /// 9: the result did not match.
    ResultMismatch,
    /// 10: the host failed.
    InternalFailure,
    /// 11: the connection is gone.
    BrokenConnection,
    /// 12: the host does not implement the call.
    Unimplemented,
    /// A code this SDK does not know.
    Unknown(u32),
}

impl Status {
    /// The status of hostcall return code `code`: `Ok(())` for 0.
    pub fn check(code: u32) -> Result<(), Status> {
        Err(match code {
            0 => return Ok(()),
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            5 => Status::BadExpression,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            9 => Status::ResultMismatch,
            10 => Status::InternalFailure,
            11 => Status::BrokenConnection,
            12 => Status::Unimplemented,
            other => Status::Unknown(other),
        })
    }

    /// The ABI code of this status.
    pub fn code(self) -> u32 {
        match self {
            Status::NotFound => 1,
            Status::BadArgument => 2,
            Status::SerializationFailure => 3,
            Status::ParseFailure => 4,
            Status::BadExpression => 5,
            Status::InvalidMemoryAccess => 6,
            Status::Empty => 7,
            Status::CasMismatch => 8,
            Status::ResultMismatch => 9,
            Status::InternalFailure => 10,
            Status::BrokenConnection => 11,
            Status::Unimplemented => 12,
            Status::Unknown(code) => code,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", self.code())
    }
}

/// A header map decoded from its wire form; see the [module docs](self) for what is tolerated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodedMap {
    /// The whole pairs, in order: names as the host sent them (lossy UTF-8), values as bytes.
    pub pairs: Vec<(String, Vec<u8>)>,
    /// How many of `pairs` have a name that was not UTF-8 (made valid with U+FFFD).
    pub lossy_names: usize,
    /// The buffer was truncated or inconsistent: `pairs` are those whole before the fault.
    pub malformed: bool,
}

/// The little-endian `u32` at `at`, as a length.
fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    let raw = <[u8; 4]>::try_from(raw).ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

/// Where the `len` bytes at `*at`, followed by a NUL, lie; advances `*at` past the NUL.
fn nul_terminated(bytes: &[u8], at: &mut usize, len: usize) -> Option<Range<usize>> {
    let start = *at;
    let end = start.checked_add(len)?;
    bytes.get(start..end)?;
    if *bytes.get(end)? != 0 {
        return None;
    }
    *at = end.checked_add(1)?;
    Some(start..end)
}

/// Where each pair of a header map in wire form lies, as [`index_map`] finds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapIndex {
    /// Byte ranges of each whole pair's name and value, in order.
    pub spans: Vec<(Range<usize>, Range<usize>)>,
    /// How many names are not UTF-8.
    pub lossy_names: usize,
    /// The buffer was truncated or inconsistent: `spans` are the pairs whole before the fault.
    pub malformed: bool,
}

/// Locates the pairs of a header map (the result of `proxy_get_header_map_pairs`) without
/// copying them; the same checks as [`decode_map`]. Total: never panics.
pub fn index_map(bytes: &[u8]) -> MapIndex {
    let mut out = MapIndex::default();
    if bytes.is_empty() {
        // The host's answer for an empty (or absent) map.
        return out;
    }
    let Some(count) = u32_at(bytes, 0) else {
        out.malformed = true;
        return out;
    };
    // The length table must fit before any pair can be located (and before allocating).
    let data_start = count.checked_mul(8).and_then(|t| t.checked_add(4));
    let Some(data_start) = data_start.filter(|&start| start <= bytes.len()) else {
        out.malformed = true;
        return out;
    };
    out.spans.reserve(count);
    let mut at = data_start;
    for i in 0..count {
        let entry = 4 + i * 8;
        let lengths = u32_at(bytes, entry).zip(u32_at(bytes, entry + 4));
        let pair = lengths.and_then(|(name_len, value_len)| {
            let name = nul_terminated(bytes, &mut at, name_len)?;
            let value = nul_terminated(bytes, &mut at, value_len)?;
            Some((name, value))
        });
        let Some((name, value)) = pair else {
            out.malformed = true;
            return out;
        };
        // Header names are ASCII (RFC 9110 tokens): the ASCII check is a fraction of a full
        // UTF-8 validation, which only the rare other name pays.
        let name_bytes = bytes.get(name.clone()).unwrap_or_default();
        if !name_bytes.is_ascii() && std::str::from_utf8(name_bytes).is_err() {
            out.lossy_names += 1;
        }
        out.spans.push((name, value));
    }
    if at != bytes.len() {
        out.malformed = true;
    }
    out
}

/// Decodes a header map (the result of `proxy_get_header_map_pairs`) into owned pairs. Total:
/// never panics.
pub fn decode_map(bytes: &[u8]) -> DecodedMap {
    let index = index_map(bytes);
    let field = |r: &Range<usize>| bytes.get(r.clone()).unwrap_or_default();
    let pairs = index
        .spans
        .iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(field(n)).into_owned(),
                field(v).to_vec(),
            )
        })
        .collect();
    DecodedMap {
        pairs,
        lossy_names: index.lossy_names,
        malformed: index.malformed,
    }
}

/// Encodes a header map in its wire form (for `proxy_send_local_response`, `proxy_http_call`).
/// A map whose count or lengths do not fit in `u32` cannot cross the ABI: `None`.
pub fn encode_map<V: AsRef<[u8]>>(pairs: &[(&str, V)]) -> Option<Vec<u8>> {
    let size = pairs.iter().try_fold(4usize, |size, (name, value)| {
        size.checked_add(name.len())?
            .checked_add(value.as_ref().len())?
            .checked_add(10)
    })?;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(pairs.len()).ok()?.to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&u32::try_from(name.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.as_ref().len()).ok()?.to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    Some(out)
}

/// Encodes a property path (`["request", "path"]`) as the ABI takes it: the segments joined by
/// NUL bytes, without a trailing one.
pub fn encode_path(path: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// [`encode_path`] into `buf`: the length written, or `None` when it does not fit.
pub fn encode_path_into(path: &[&str], buf: &mut [u8]) -> Option<usize> {
    let mut at = 0;
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            *buf.get_mut(at)? = 0;
            at += 1;
        }
        let end = at.checked_add(part.len())?;
        buf.get_mut(at..end)?.copy_from_slice(part.as_bytes());
        at = end;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The `proxy-wasm` crate's own test vector (`hostcalls::utils::tests::SERIALIZED_MAP`).
    #[rustfmt::skip]
    const SERIALIZED_MAP: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        58, 109, 101, 116, 104, 111, 100, 0,
        71, 69, 84, 0,
        58, 112, 97, 116, 104, 0,
        47, 98, 121, 116, 101, 115, 47, 49, 0,
        58, 97, 117, 116, 104, 111, 114, 105, 116, 121, 0,
        104, 116, 116, 112, 98, 105, 110, 46, 111, 114, 103, 0,
        80, 111, 119, 101, 114, 101, 100, 45, 66, 121, 0,
        112, 114, 111, 120, 121, 45, 119, 97, 115, 109, 0,
    ];

    const MAP: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/bytes/1"),
        (":authority", "httpbin.org"),
        ("Powered-By", "proxy-wasm"),
    ];

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn whole(pairs: Vec<(String, Vec<u8>)>) -> DecodedMap {
        DecodedMap {
            pairs,
            lossy_names: 0,
            malformed: false,
        }
    }

    /// A map with raw-byte names, laid out as the host does.
    fn raw_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend_from_slice(n);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn decodes_the_crates_test_vector_and_encodes_it_back() {
        assert_eq!(decode_map(SERIALIZED_MAP), whole(owned(MAP)));
        assert_eq!(encode_map(MAP).unwrap(), SERIALIZED_MAP);
        let bytes: Vec<(&str, &[u8])> = MAP.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        assert_eq!(encode_map(&bytes).unwrap(), SERIALIZED_MAP);
    }

    #[test]
    fn empty_maps() {
        assert_eq!(decode_map(&[]), DecodedMap::default());
        assert_eq!(decode_map(&[0, 0, 0, 0]), DecodedMap::default());
        let none: &[(&str, &str)] = &[];
        assert_eq!(encode_map(none).unwrap(), [0, 0, 0, 0]);
        // Empty names and values are pairs like any other.
        let empty = encode_map(&[("", ""), ("x", "")]).unwrap();
        assert_eq!(decode_map(&empty), whole(owned(&[("", ""), ("x", "")])));
    }

    #[test]
    fn non_utf8_names_are_kept_lossy_and_counted() {
        let bytes = raw_map(&[
            (b"x-ok", b"1"),
            (b"x-\xff\xfe", b"2"),
            (b"\xc3\x28", b"3"),
            (b"x-caf\xc3\xa9", b"4"),
        ]);
        let decoded = decode_map(&bytes);
        assert_eq!(
            decoded.pairs,
            vec![
                ("x-ok".to_string(), b"1".to_vec()),
                ("x-\u{fffd}\u{fffd}".to_string(), b"2".to_vec()),
                ("\u{fffd}(".to_string(), b"3".to_vec()),
                ("x-café".to_string(), b"4".to_vec()),
            ]
        );
        assert_eq!(decoded.lossy_names, 2);
        assert!(!decoded.malformed);
    }

    #[test]
    fn non_utf8_values_are_kept_as_bytes() {
        let value: &[u8] = b"\xff\x00\xfe\xc3\x28";
        let decoded = decode_map(&raw_map(&[(b"x-a", value), (b"x-b", b"")]));
        assert_eq!(
            decoded,
            whole(vec![
                ("x-a".to_string(), value.to_vec()),
                ("x-b".to_string(), Vec::new())
            ])
        );
        assert_eq!(
            encode_map(&[("x-a", value)]).unwrap(),
            raw_map(&[(b"x-a", value)])
        );
    }

    #[test]
    fn every_truncation_returns_the_whole_pairs_before_it() {
        let full = decode_map(SERIALIZED_MAP).pairs;
        for len in 1..SERIALIZED_MAP.len() {
            let decoded = decode_map(&SERIALIZED_MAP[..len]);
            assert!(decoded.malformed, "prefix of {len} bytes");
            assert_eq!(decoded.lossy_names, 0);
            assert!(
                full.starts_with(&decoded.pairs),
                "prefix of {len} bytes: {decoded:?}"
            );
        }
        // Each pair appears exactly when its value's NUL is in.
        let ends = [48, 63, 86, 108];
        for (i, &end) in ends.iter().enumerate() {
            assert_eq!(decode_map(&SERIALIZED_MAP[..end - 1]).pairs.len(), i);
            assert_eq!(decode_map(&SERIALIZED_MAP[..end]).pairs.len(), i + 1);
        }
        assert_eq!(ends[3], SERIALIZED_MAP.len());
    }

    #[test]
    fn inconsistent_buffers() {
        let mut bytes = SERIALIZED_MAP.to_vec();
        // The second name's length points past the end.
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let decoded = decode_map(&bytes);
        assert_eq!(decoded.pairs, owned(&MAP[..1]));
        assert!(decoded.malformed);

        // A terminator that is not NUL: the lengths disagree with the data.
        let mut bytes = SERIALIZED_MAP.to_vec();
        bytes[4] = 8; // ":method" claimed 8 long: its "NUL" is the 'G' of "GET".
        let decoded = decode_map(&bytes);
        assert_eq!(decoded.pairs, Vec::new());
        assert!(decoded.malformed);

        // Bytes after the last pair.
        let mut bytes = SERIALIZED_MAP.to_vec();
        bytes.extend_from_slice(b"junk");
        let decoded = decode_map(&bytes);
        assert_eq!(decoded.pairs, owned(MAP));
        assert!(decoded.malformed);

        // Fewer bytes than a count.
        for short in [&[1u8][..], &[1, 0], &[1, 0, 0]] {
            assert_eq!(
                decode_map(short),
                DecodedMap {
                    malformed: true,
                    ..DecodedMap::default()
                }
            );
        }
    }

    #[test]
    fn huge_counts_allocate_nothing() {
        for count in [u32::MAX, 0x2000_0000, 0x1fff_ffff, 1 << 28, 5] {
            let mut bytes = count.to_le_bytes().to_vec();
            bytes.extend_from_slice(&SERIALIZED_MAP[4..]);
            let decoded = decode_map(&bytes);
            assert!(decoded.malformed, "count {count}");
            assert!(decoded.pairs.len() <= 4, "count {count}");
        }
        // A count whose table fits in the buffer but whose data does not.
        let mut bytes = 9u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 72]);
        let decoded = decode_map(&bytes);
        assert!(decoded.malformed);
        assert!(decoded.pairs.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A xorshift stream of buffers, some starting with a plausible count.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| (next() % 256) as u8).collect();
            if round % 2 == 0 && len >= 4 {
                bytes[..4].copy_from_slice(&((next() % 6) as u32).to_le_bytes());
                for b in bytes.iter_mut().skip(4) {
                    if *b > 40 {
                        *b %= 6;
                    }
                }
            }
            let decoded = decode_map(&bytes);
            assert!(decoded.lossy_names <= decoded.pairs.len());
            if !decoded.malformed && !bytes.is_empty() {
                let names: Vec<(&str, &[u8])> = decoded
                    .pairs
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_slice()))
                    .collect();
                if decoded.lossy_names == 0 {
                    assert_eq!(encode_map(&names).unwrap(), bytes, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(Status::check(0), Ok(()));
        for code in 1..=12 {
            let status = Status::check(code).unwrap_err();
            assert_eq!(status.code(), code);
            assert!(!matches!(status, Status::Unknown(_)), "{code}");
        }
        assert_eq!(Status::check(13), Err(Status::Unknown(13)));
        assert_eq!(Status::check(u32::MAX), Err(Status::Unknown(u32::MAX)));
        assert_eq!(Status::check(2), Err(Status::BadArgument));
        assert_eq!(Status::check(8), Err(Status::CasMismatch));
        assert_eq!(Status::BadArgument.to_string(), "BadArgument (2)");
    }

    #[test]
    fn property_paths() {
        assert_eq!(encode_path(&[]), b"");
        assert_eq!(encode_path(&["request"]), b"request");
        assert_eq!(encode_path(&["request", "path"]), b"request\0path");
        assert_eq!(
            encode_path(&["xds", "node", "metadata", "k"]),
            b"xds\0node\0metadata\0k"
        );
        let mut buf = [0u8; 16];
        for path in [&["request", "path"][..], &[], &["xds", "route_name"]] {
            let n = encode_path_into(path, &mut buf).unwrap();
            assert_eq!(&buf[..n], encode_path(path).as_slice());
        }
        // Too long for the buffer, by one byte and by a lot: `None`, never a panic.
        assert_eq!(encode_path_into(&["request", "pathxxxxx"], &mut buf), None);
        assert_eq!(encode_path_into(&["x"; 40], &mut buf), None);
        assert_eq!(
            encode_path_into(&["request", "path"], &mut [0u8; 12]),
            Some(12)
        );
    }
}
