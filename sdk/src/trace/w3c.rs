//! The `traceparent` and `tracestate` headers of W3C Trace Context Level 2 (`traceparent`
//! version `00` with the `random` trace flag; `tracestate` by the Level 2 grammar).
//!
//! Decisions where the spec leaves room, all documented on the items below:
//! - Leading and trailing spaces and tabs around a whole header value are ignored (they are
//!   not part of an HTTP field value, and the W3C test suite's `ows_handling` cases expect it);
//!   whitespace inside `traceparent` is invalid.
//! - A `traceparent` of a future version (not `00`, not `ff`) is parsed by the version `00`
//!   layout from its first 55 characters, provided a longer value goes on with `-` at index 55;
//!   values longer than [`MAX_TRACEPARENT_LEN`] are rejected as prohibitively large.
//! - `tracestate`, per case (see [`TraceState::parse_detailed`]): empty and whitespace-only
//!   list members are skipped; a duplicate key keeps the header and drops the later entry; a
//!   member that breaks the key or value grammar, or a 33rd member, drops the whole header;
//!   every valid list is read whole (up to [`MAX_TRACESTATE_LEN`] bytes of input, room for the
//!   longest list the grammar allows and as much whitespace again).

use super::ids::{SpanId, TraceId};
use super::{parse_hex_u64, trim_ows, trim_ows_bytes, HeaderValue, TraceError};

/// The longest `traceparent` value accepted (after trimming surrounding whitespace). Version
/// `00` is exactly 55 characters; a future version may append fields, and this bounds the
/// work a hostile value can cause.
pub const MAX_TRACEPARENT_LEN: usize = 512;

/// The most list members a `tracestate` may hold.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The longest `tracestate` key (Level 2, "Key": "up to 256 characters").
const MAX_KEY_LEN: usize = 256;

/// The longest `tracestate` value ("Value": "up to 256 printable ASCII characters").
const MAX_VALUE_LEN: usize = 256;

/// The longest list the `tracestate` grammar allows without optional whitespace: 32 members of
/// a 256-character key, `=` and a 256-character value, joined by 31 commas (16447 bytes).
pub const MAX_TRACESTATE_LIST_LEN: usize =
    MAX_TRACESTATE_MEMBERS * (MAX_KEY_LEN + 1 + MAX_VALUE_LEN) + MAX_TRACESTATE_MEMBERS - 1;

/// The longest (combined) `tracestate` value read, in bytes, optional whitespace and empty
/// members included: 32 KiB, room for the longest valid list ([`MAX_TRACESTATE_LIST_LEN`]) and
/// about as much again of whitespace. So a valid list is never cut for its size ("tracestate
/// Limits" allows truncating only whole entries, and asks vendors to propagate at least 512
/// characters); the bound only caps the work a hostile value can cause. A longer value fails
/// with [`TraceError::TracestateTooLong`] (a failed `tracestate` never invalidates
/// `traceparent`), and what is passed on is never longer than what was received.
pub const MAX_TRACESTATE_LEN: usize = 32 * 1024;

/// The length of a version `00` `traceparent`.
const V00_LEN: usize = 55;

/// The parsed `traceparent` header: `{version}-{trace-id}-{parent-id}-{trace-flags}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The version received (`0` for `00`). [`TraceParent::to_header`] always writes `00`.
    pub version: u8,
    /// The trace id, never zero.
    pub trace_id: TraceId,
    /// The caller's span id, never zero.
    pub parent_id: SpanId,
    /// The trace flags as received; see [`TraceParent::sampled`] and [`TraceParent::random`].
    pub flags: u8,
}

impl TraceParent {
    /// The `sampled` trace flag (Level 1).
    pub const FLAG_SAMPLED: u8 = 0x01;
    /// The `random` trace flag (Level 2): the low 56 bits of the trace id are random.
    pub const FLAG_RANDOM: u8 = 0x02;

    /// A version `00` context.
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: u8) -> Self {
        TraceParent {
            version: 0,
            trace_id,
            parent_id,
            flags,
        }
    }

    /// Whether the caller may have recorded the trace (`flags & 1`).
    pub fn sampled(&self) -> bool {
        self.flags & Self::FLAG_SAMPLED != 0
    }

    /// Whether the trace id's low 56 bits are random (`flags & 2`, W3C Trace Context Level 2).
    pub fn random(&self) -> bool {
        self.flags & Self::FLAG_RANDOM != 0
    }

    /// The header value, always version `00` (the highest this code knows, as the spec asks
    /// when downgrading a future version). Only the `sampled` and `random` flags are kept:
    /// vendors must send the other bits as zero.
    pub fn to_header(&self) -> String {
        self.header_value().to_str().into_owned()
    }

    /// [`TraceParent::to_header`] written on the stack, for writing the header without an
    /// allocation.
    pub fn header_value(&self) -> HeaderValue {
        let mut out = HeaderValue::new();
        out.push(b"00-");
        out.push_hex((self.trace_id.0 >> 64) as u64, 16);
        out.push_hex(self.trace_id.low64(), 16);
        out.push(b"-");
        out.push_hex(self.parent_id.0, 16);
        out.push(b"-");
        let flags = self.flags & (Self::FLAG_SAMPLED | Self::FLAG_RANDOM);
        out.push_hex(u64::from(flags), 2);
        out
    }
}

/// Parses a `traceparent` header value.
///
/// Surrounding spaces and tabs are ignored. Version `00` must be exactly 55 characters of
/// `00-{32 lowercase hex}-{16 lowercase hex}-{2 lowercase hex}`; version `ff` is invalid; a
/// higher version is read from its first 55 characters by the same layout, and anything after
/// them must begin with `-`. All-zero trace or parent ids are invalid.
pub fn parse_traceparent(value: &str) -> Result<TraceParent, TraceError> {
    parse_traceparent_bytes(value.as_bytes())
}

/// [`parse_traceparent`] over the header's bytes, as the proxy hands them over. For a value
/// that is not UTF-8 the answer may differ from [`parse_traceparent`] of its lossy text (a
/// replacement character is longer than the byte it replaces); for ASCII it is the same.
pub fn parse_traceparent_bytes(value: &[u8]) -> Result<TraceParent, TraceError> {
    let v = trim_ows_bytes(value);
    if v.len() > MAX_TRACEPARENT_LEN {
        return Err(TraceError::TraceparentLength);
    }
    let version = match v {
        [a, b, b'-', ..] => hex_u8(*a, *b).ok_or(TraceError::TraceparentVersion)?,
        _ => return Err(TraceError::TraceparentVersion),
    };
    if version == 0xff {
        return Err(TraceError::TraceparentVersion);
    }
    if v.len() < V00_LEN || (version == 0 && v.len() != V00_LEN) {
        return Err(TraceError::TraceparentLength);
    }
    if v.len() > V00_LEN && v.get(V00_LEN) != Some(&b'-') {
        return Err(TraceError::TraceparentFormat);
    }
    // The trace id as two 64-bit halves, then the parent id.
    let high = field(v, 3).ok_or(TraceError::TraceparentFormat)?;
    let low = field(v, 19).ok_or(TraceError::TraceparentFormat)?;
    let parent_id = field(v, 36).ok_or(TraceError::TraceparentFormat)?;
    if v.get(35) != Some(&b'-') || v.get(52) != Some(&b'-') {
        return Err(TraceError::TraceparentFormat);
    }
    let flags = match (v.get(53), v.get(54)) {
        (Some(a), Some(b)) => hex_u8(*a, *b),
        _ => None,
    }
    .ok_or(TraceError::TraceparentFlags)?;
    if high == 0 && low == 0 {
        return Err(TraceError::TraceparentZeroTraceId);
    }
    if parent_id == 0 {
        return Err(TraceError::TraceparentZeroParentId);
    }
    Ok(TraceParent {
        version,
        trace_id: TraceId((u128::from(high) << 64) | u128::from(low)),
        parent_id: SpanId(parent_id),
        flags,
    })
}

/// The 16 lowercase hex digits of `v` starting at `start`, as a number.
fn field(v: &[u8], start: usize) -> Option<u64> {
    parse_hex_u64(v.get(start..start + 16)?)
}

/// Two lowercase hex digits as a byte.
fn hex_u8(a: u8, b: u8) -> Option<u8> {
    parse_hex_u64(&[a, b]).map(|x| x as u8)
}

/// The entries [`TraceState::parse_detailed`] left out of a `tracestate` it kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Entries whose key an entry further left already has. "Combined Header Value": only one
    /// entry per key is allowed, which the sender must ensure ("Mutating the tracestate Field":
    /// adding an entry "MUST NOT result in the same key being present multiple times"); a
    /// receiver "MAY also discard duplicate keys that were not generated by them".
    pub duplicate_keys: usize,
}

/// The parsed `tracestate` header: vendor entries in order, left-most first, each key once.
///
/// Keys follow the Level 2 grammar, `key = ( lcalpha / DIGIT ) 0*255 ( keychar )` with keychar
/// `a-z 0-9 _ - * / @`: a multi-tenant key such as `tenant@system` is a key like any other (Level
/// 1's separate tenant and system lengths, and its single `@`, are gone). Values are 1 to 256
/// printable ASCII characters (0x20 to 0x7E) other than `,` and `=`, not ending in a space;
/// leading spaces are part of the value. Multiple `tracestate` header fields are combined with
/// `,` by the caller before parsing ("tracestate Header Field Values", RFC 9110 field order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceState {
    members: Vec<(String, String)>,
}

impl TraceState {
    /// Parses a (combined) `tracestate` value, as [`TraceState::parse_detailed`] does, without
    /// the account of dropped entries.
    pub fn parse(value: &str) -> Result<TraceState, TraceError> {
        TraceState::parse_detailed(value).map(|(state, _)| state)
    }

    /// Parses a (combined) `tracestate` value and says which entries it left out. Per case, as
    /// W3C Trace Context Level 2 says (section names in quotes):
    ///
    /// - Empty and whitespace-only list members are skipped, and spaces and tabs around members
    ///   ignored ("tracestate Header Field Values"): an empty value, or one of only commas and
    ///   whitespace, is an empty state.
    /// - A key seen further left already: the entry is dropped and counted in
    ///   [`Dropped::duplicate_keys`], the header kept (see [`Dropped`]). The left-most entry
    ///   stays: modified keys move left, so it is the most recent position.
    /// - A member that breaks the key or value grammar, or has no `=`: the whole header fails
    ///   ([`TraceError::TracestateKey`], [`TraceError::TracestateValue`]). Processing Model: "If
    ///   the tracestate header cannot be parsed the vendor MAY discard the entire header"; the
    ///   W3C test suite expects `bar=2` gone from `@foo=1,bar=2`.
    /// - More than 32 list members, duplicates included: the whole header fails
    ///   ([`TraceError::TracestateTooManyMembers`]; "list", and the suite's
    ///   `member_count_limit`).
    /// - More than [`MAX_TRACESTATE_LEN`] bytes: fails unread
    ///   ([`TraceError::TracestateTooLong`]).
    pub fn parse_detailed(value: &str) -> Result<(TraceState, Dropped), TraceError> {
        if value.len() > MAX_TRACESTATE_LEN {
            return Err(TraceError::TracestateTooLong);
        }
        let mut members: Vec<(String, String)> = Vec::new();
        let mut dropped = Dropped::default();
        let mut count = 0usize;
        for raw in value.split(',') {
            let member = trim_ows(raw);
            if member.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_TRACESTATE_MEMBERS {
                return Err(TraceError::TracestateTooManyMembers);
            }
            let (key, val) = member.split_once('=').ok_or(TraceError::TracestateValue)?;
            if !valid_key(key) {
                return Err(TraceError::TracestateKey);
            }
            if !valid_value(val) {
                return Err(TraceError::TracestateValue);
            }
            if members.iter().any(|(k, _)| k == key) {
                dropped.duplicate_keys += 1;
                continue;
            }
            members.push((key.to_string(), val.to_string()));
        }
        Ok((TraceState { members }, dropped))
    }

    /// The members, left-most first.
    pub fn members(&self) -> &[(String, String)] {
        &self.members
    }

    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value` and moves it to the left-most position, as the spec asks of a
    /// vendor updating or adding its entry. When that makes 33 members, the right-most is
    /// dropped. Fails (changing nothing) on an invalid key or value.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), TraceError> {
        if !valid_key(key) {
            return Err(TraceError::TracestateKey);
        }
        if !valid_value(value) {
            return Err(TraceError::TracestateValue);
        }
        self.members.retain(|(k, _)| k != key);
        self.members.insert(0, (key.to_string(), value.to_string()));
        self.members.truncate(MAX_TRACESTATE_MEMBERS);
        Ok(())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let index = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(index).1)
    }

    /// Drops whole entries until [`TraceState::to_header`] is at most `max_len` bytes, the way
    /// the spec recommends: entries longer than 128 characters first (left to right), then
    /// entries from the right end.
    pub fn truncate(&mut self, max_len: usize) {
        while self.header_len() > max_len {
            if let Some(index) = self
                .members
                .iter()
                .position(|(k, v)| k.len() + 1 + v.len() > 128)
            {
                self.members.remove(index);
            } else {
                self.members.pop();
            }
        }
    }

    /// The header value: members joined by `,`, no whitespace.
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(self.header_len());
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The length of [`TraceState::to_header`] without building it.
    fn header_len(&self) -> usize {
        let entries: usize = self
            .members
            .iter()
            .map(|(k, v)| k.len() + 1 + v.len())
            .sum();
        entries + self.members.len().saturating_sub(1)
    }
}

/// keychar (Level 2, "Key"): `a-z 0-9 _ - * / @`.
fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// The Level 2 `tracestate` key grammar: `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`.
fn valid_key(key: &str) -> bool {
    match key.as_bytes().split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() < MAX_KEY_LEN
                && rest.iter().all(|b| is_key_char(*b))
        }
        None => false,
    }
}

/// The `tracestate` value grammar: 1 to 256 of 0x20-0x7E except `,` and `=`, not ending in a
/// space.
fn valid_value(value: &str) -> bool {
    let v = value.as_bytes();
    !v.is_empty()
        && v.len() <= MAX_VALUE_LEN
        && v.last() != Some(&b' ')
        && v.iter()
            .all(|b| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const T: &str = "12345678901234567890123456789012";
    const P: &str = "1234567890123456";

    fn tp(version: &str, trace: &str, parent: &str, flags: &str) -> String {
        format!("{version}-{trace}-{parent}-{flags}")
    }

    #[test]
    fn parses_valid_version_00() {
        let p = parse_traceparent(VALID).unwrap();
        assert_eq!(p.version, 0);
        assert_eq!(p.trace_id, TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736));
        assert_eq!(p.parent_id, SpanId(0x00f067aa0ba902b7));
        assert_eq!(p.flags, 1);
        assert!(p.sampled());
        assert!(!p.random());
        assert_eq!(p.to_header(), VALID);

        let p = parse_traceparent(&tp("00", T, P, "00")).unwrap();
        assert!(!p.sampled());
        let p = parse_traceparent(&tp("00", T, P, "03")).unwrap();
        assert!(p.sampled() && p.random());
    }

    #[test]
    fn to_header_keeps_only_known_flags() {
        let p = parse_traceparent(&tp("00", T, P, "ff")).unwrap();
        assert_eq!(p.flags, 0xff);
        assert_eq!(p.to_header(), tp("00", T, P, "03"));
        let p = parse_traceparent(&tp("00", T, P, "09")).unwrap();
        assert!(p.sampled());
        assert_eq!(p.to_header(), tp("00", T, P, "01"));
        let fresh = TraceParent::new(TraceId(1), SpanId(2), TraceParent::FLAG_RANDOM);
        assert_eq!(
            fresh.to_header(),
            "00-00000000000000000000000000000001-0000000000000002-02"
        );
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        for v in [
            format!(" {VALID}"),
            format!("\t{VALID}"),
            format!("{VALID} "),
            format!("{VALID}\t"),
            format!("\t {VALID} \t"),
        ] {
            assert_eq!(parse_traceparent(&v).unwrap().to_header(), VALID, "{v:?}");
        }
        // Inside the value, whitespace is invalid.
        assert!(parse_traceparent(&tp("00", T, P, " 1")).is_err());
        assert!(parse_traceparent(&format!("00- {}", &T[1..])).is_err());
    }

    #[test]
    fn future_versions() {
        let p = parse_traceparent(&tp("cc", T, P, "01")).unwrap();
        assert_eq!(p.version, 0xcc);
        assert_eq!(p.trace_id.to_hex(), T);
        assert_eq!(p.to_header(), tp("00", T, P, "01"));
        let longer = format!("{}-what-the-future-will-be-like", tp("cc", T, P, "01"));
        assert_eq!(parse_traceparent(&longer).unwrap().trace_id.to_hex(), T);
        let bad = format!("{}.what-the-future-will-be-like", tp("cc", T, P, "01"));
        assert_eq!(parse_traceparent(&bad), Err(TraceError::TraceparentFormat));
        // Shorter than 55 characters: not parsed.
        assert_eq!(
            parse_traceparent(&tp("cc", T, P, "1")),
            Err(TraceError::TraceparentLength)
        );
        // Future versions still need valid fields.
        assert_eq!(
            parse_traceparent(&tp("01", "1234567890123456789012345678901A", P, "01")),
            Err(TraceError::TraceparentFormat)
        );
        // Too large to bother with.
        let huge = format!(
            "{}-{}",
            tp("01", T, P, "01"),
            "x".repeat(MAX_TRACEPARENT_LEN)
        );
        assert_eq!(parse_traceparent(&huge), Err(TraceError::TraceparentLength));
    }

    #[test]
    fn version_00_with_extra_characters_is_invalid() {
        assert_eq!(
            parse_traceparent(&format!("{VALID}.")),
            Err(TraceError::TraceparentLength)
        );
        assert_eq!(
            parse_traceparent(&format!("{VALID}-what-the-future-will-be-like")),
            Err(TraceError::TraceparentLength)
        );
    }

    #[test]
    fn invalid_versions() {
        assert_eq!(
            parse_traceparent(&tp("ff", T, P, "01")),
            Err(TraceError::TraceparentVersion)
        );
        for version in [".0", "0.", "0", "000", "0000", "0A", "FF", "-0"] {
            assert_eq!(
                parse_traceparent(&tp(version, T, P, "01")),
                Err(TraceError::TraceparentVersion),
                "{version}"
            );
        }
        assert_eq!(parse_traceparent(""), Err(TraceError::TraceparentVersion));
        assert_eq!(parse_traceparent("00"), Err(TraceError::TraceparentVersion));
        assert_eq!(parse_traceparent("00-"), Err(TraceError::TraceparentLength));
    }

    #[test]
    fn invalid_trace_ids() {
        assert_eq!(
            parse_traceparent(&tp("00", "00000000000000000000000000000000", P, "01")),
            Err(TraceError::TraceparentZeroTraceId)
        );
        for trace in [
            ".2345678901234567890123456789012",
            "1234567890123456789012345678901.",
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "1234567890123456789012345678901g",
        ] {
            assert_eq!(
                parse_traceparent(&tp("00", trace, P, "01")),
                Err(TraceError::TraceparentFormat),
                "{trace}"
            );
        }
        // Too long or too short shifts the length off 55.
        for trace in [
            "123456789012345678901234567890123",
            "1234567890123456789012345678901",
        ] {
            assert_eq!(
                parse_traceparent(&tp("00", trace, P, "01")),
                Err(TraceError::TraceparentLength),
                "{trace}"
            );
        }
    }

    #[test]
    fn invalid_parent_ids() {
        assert_eq!(
            parse_traceparent(&tp("00", T, "0000000000000000", "01")),
            Err(TraceError::TraceparentZeroParentId)
        );
        for parent in [".234567890123456", "123456789012345.", "00F067AA0BA902B7"] {
            assert_eq!(
                parse_traceparent(&tp("00", T, parent, "01")),
                Err(TraceError::TraceparentFormat),
                "{parent}"
            );
        }
        for parent in ["12345678901234567", "123456789012345"] {
            assert_eq!(
                parse_traceparent(&tp("00", T, parent, "01")),
                Err(TraceError::TraceparentLength),
                "{parent}"
            );
        }
    }

    #[test]
    fn invalid_flags() {
        for flags in [".0", "0.", "0A", "FF", "g0"] {
            assert_eq!(
                parse_traceparent(&tp("00", T, P, flags)),
                Err(TraceError::TraceparentFlags),
                "{flags}"
            );
        }
        for flags in ["001", "1", ""] {
            assert_eq!(
                parse_traceparent(&tp("00", T, P, flags)),
                Err(TraceError::TraceparentLength),
                "{flags}"
            );
        }
    }

    #[test]
    fn invalid_delimiters() {
        // The delimiter after the trace id (index 35) and after the parent id (index 52).
        for at in [35, 52] {
            let v = format!("{}_{}", &VALID[..at], &VALID[at + 1..]);
            assert_eq!(
                parse_traceparent(&v),
                Err(TraceError::TraceparentFormat),
                "{v}"
            );
        }
    }

    #[test]
    fn hostile_traceparent_inputs_do_not_panic() {
        let samples = [
            "é".repeat(30),
            "00-".to_string() + &"é".repeat(26),
            "-".repeat(55),
            "\u{0}".repeat(55),
            format!("00-{}", "ü".repeat(26)),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é".to_string(),
        ];
        for s in samples {
            assert!(parse_traceparent(&s).is_err(), "{s:?}");
        }
    }

    /// "Examples of tracestate HTTP Headers": the spec's own example round-trips.
    #[test]
    fn tracestate_parses_and_round_trips() {
        let s = TraceState::parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert_eq!(s.len(), 2);
        assert!(!s.is_empty());
        assert_eq!(s.members()[0], ("rojo".into(), "00f067aa0ba902b7".into()));
        assert_eq!(s.get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(s.get("nope"), None);
        assert_eq!(s.to_header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    }

    /// "tracestate Header Field Values": "Empty and whitespace-only list members are
    /// allowed", "Spaces and horizontal tabs surrounding list-members are ignored", and "All
    /// leading spaces MUST be preserved as part of the value" ("Value"). Vendors "MUST accept
    /// empty tracestate headers".
    #[test]
    fn tracestate_empty_and_ows() {
        for v in ["", " ", ",", " , \t,", ",,"] {
            let s = TraceState::parse(v).unwrap();
            assert!(s.is_empty(), "{v:?}");
            assert_eq!(s.to_header(), "");
        }
        let s = TraceState::parse("foo=1 \t , \t bar=2, \t baz=3").unwrap();
        assert_eq!(s.to_header(), "foo=1,bar=2,baz=3");
        let s = TraceState::parse("foo=1\t \t,\t \tbar=2,\t \tbaz=3").unwrap();
        assert_eq!(s.to_header(), "foo=1,bar=2,baz=3");
        for v in [
            " foo=1",
            "\tfoo=1",
            "foo=1 ",
            "foo=1\t",
            "\t foo=1 \t",
            "foo=1,,",
            ",foo=1",
        ] {
            assert_eq!(TraceState::parse(v).unwrap().get("foo"), Some("1"), "{v:?}");
        }
        // A leading space inside the value is part of it.
        assert_eq!(TraceState::parse("foo= 1").unwrap().get("foo"), Some(" 1"));
        // Combined from several header fields, one of them empty.
        let s = TraceState::parse("foo=1,bar=2,,rojo=1,congo=2,baz=3").unwrap();
        assert_eq!(s.to_header(), "foo=1,bar=2,rojo=1,congo=2,baz=3");
    }

    /// "Key" and "Value": every character the grammar allows.
    #[test]
    fn tracestate_all_allowed_characters() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x7e)
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        let s = TraceState::parse(&format!("{key}={value}")).unwrap();
        assert_eq!(s.get(key), Some(value.as_str()));
        let tenant_key = format!("{key}@a-z0-9_-*/");
        let s = TraceState::parse(&format!("{tenant_key}={value}")).unwrap();
        assert_eq!(s.get(&tenant_key), Some(value.as_str()));
        // Level 2: a simple key may start with a digit.
        assert!(TraceState::parse("1vendor=x").is_ok());
    }

    /// "tracestate Header Field Values" > "list": `list-member 0*31( OWS "," OWS list-member )`,
    /// at most 32 list-members; a longer list does not parse and is dropped whole (the W3C test
    /// suite's `member_count_limit` expects it discarded). Empty members are not list-members
    /// with a key and don't count.
    #[test]
    fn tracestate_member_limit() {
        let members: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
        let s = TraceState::parse(&members.join(",")).unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(s.get("bar01"), Some("01"));
        // Empty members don't count.
        let s = TraceState::parse(&format!("{},,,", members.join(",,"))).unwrap();
        assert_eq!(s.len(), 32);
        let thirty_three = format!("{},bar33=33", members.join(","));
        assert_eq!(
            TraceState::parse(&thirty_three),
            Err(TraceError::TracestateTooManyMembers)
        );
    }

    /// Level 2, "tracestate Header Field Values" > "Key":
    /// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )` with `@` among the keychars. Level 1's
    /// separate `tenant@system` grammar (tenant up to 241 characters, system up to 14 starting
    /// with a letter, one `@`) is gone: a multi-tenant key is a key like any other.
    #[test]
    fn level2_key_grammar_allows_at_signs_after_the_first_character() {
        for key in [
            "tenant@system",
            "foo@",
            "foo@@bar",
            "foo@bar@baz",
            "foo@1bar",
            "1tenant@system",
            "a@b/c*d_e-f",
        ] {
            let s = TraceState::parse(&format!("{key}=1,bar=2"))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(s.get(key), Some("1"), "{key}");
            assert_eq!(s.get("bar"), Some("2"), "{key}");
        }
        // Level 1's tenant and system lengths no longer apply; only the whole key's does.
        for key in [
            format!("{}@{}", "t".repeat(241), "v".repeat(14)),
            format!("{}@v", "t".repeat(242)),
            format!("t@{}", "v".repeat(15)),
            format!("t@{}", "v".repeat(254)),
        ] {
            assert_eq!(TraceState::parse(&format!("{key}=1")).unwrap().len(), 1);
        }
        // The first character is a lowercase letter or a digit, never `@`.
        assert_eq!(
            TraceState::parse("@foo=1,bar=2"),
            Err(TraceError::TracestateKey)
        );
    }

    /// Level 2, "Key": "contain up to 256 characters".
    #[test]
    fn level2_key_length_is_256_characters_in_all() {
        assert!(TraceState::parse(&format!("foo=1,{}=1", "z".repeat(256))).is_ok());
        assert_eq!(
            TraceState::parse(&format!("foo=1,{}=1", "z".repeat(257))),
            Err(TraceError::TracestateKey)
        );
        assert!(TraceState::parse(&format!("t@{}=1", "v".repeat(254))).is_ok());
        assert_eq!(
            TraceState::parse(&format!("t@{}=1", "v".repeat(255))),
            Err(TraceError::TracestateKey)
        );
    }

    /// Level 2, "Key": characters outside `a-z 0-9 _ - * / @`, or a first character other than
    /// a lowercase letter or a digit, make the member invalid, and with it the header (see
    /// [`an_invalid_member_drops_the_whole_header`]).
    #[test]
    fn tracestate_invalid_keys() {
        for v in [
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "@foo=1,bar=2",
            "_foo=1",
            "*foo=1",
            "=1",
            "fo o=1",
            "é=1",
            "foo@Bar=1",
        ] {
            assert_eq!(
                TraceState::parse(v),
                Err(TraceError::TracestateKey),
                "{v:?}"
            );
        }
    }

    /// Level 2, "Value": 1 to 256 of 0x20-0x7E except `,` and `=`, the last not a space.
    #[test]
    fn tracestate_invalid_values() {
        for v in [
            "foo=bar=baz",
            "foo=,bar=3",
            "foo=",
            "foo",
            "foo=a\tb",
            "foo=é",
            "foo=\u{7f}",
            "foo=  ",
        ] {
            assert_eq!(
                TraceState::parse(v),
                Err(TraceError::TracestateValue),
                "{v:?}"
            );
        }
        assert!(TraceState::parse(&format!("foo={}", "v".repeat(256))).is_ok());
        assert_eq!(
            TraceState::parse(&format!("foo={}", "v".repeat(257))),
            Err(TraceError::TracestateValue)
        );
    }

    /// Processing Model, "A traceparent is Received", step 3: "If the tracestate header cannot
    /// be parsed the vendor MAY discard the entire header. Invalid tracestate entries MAY also
    /// be discarded." We discard the header: the W3C test suite expects `bar=2` gone from
    /// `@foo=1,bar=2` and `foo=,bar=3`, and a list with one forged member is not the list the
    /// caller's vendors wrote.
    #[test]
    fn an_invalid_member_drops_the_whole_header() {
        for v in [
            "@foo=1,bar=2",
            "foo=,bar=3",
            "bar=2,foo=bar=baz",
            "bar=2,novalue",
            "bar=2,FOO=1",
        ] {
            assert!(TraceState::parse(v).is_err(), "{v:?}");
        }
    }

    /// "Combined Header Value": "Only one entry per key is allowed" is the sender's duty
    /// ("Mutating the tracestate Field": "Adding a key/value pair MUST NOT result in the same
    /// key being present multiple times"); a receiver "MAY also discard duplicate keys that
    /// were not generated by them". So a duplicate is no reason to drop the header: we keep it
    /// and keep the left-most entry of each key (modified keys move left, so the left-most is
    /// the most recent position), dropping the others, as the W3C test suite allows.
    #[test]
    fn duplicate_keys_keep_the_header_and_the_left_most_entry() {
        for (v, want) in [
            ("foo=1,foo=1", "foo=1"),
            ("foo=1,foo=2", "foo=1"),
            ("foo=1,bar=2,foo=3", "foo=1,bar=2"),
            ("a@b=1,a@b=2,c=3", "a@b=1,c=3"),
        ] {
            let s = TraceState::parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(s.to_header(), want, "{v:?}");
        }
        let (s, dropped) = TraceState::parse_detailed("foo=1,bar=2,foo=3,bar=4,baz=5").unwrap();
        assert_eq!(s.to_header(), "foo=1,bar=2,baz=5");
        assert_eq!(dropped.duplicate_keys, 2);
        let (_, dropped) = TraceState::parse_detailed("foo=1,bar=2").unwrap();
        assert_eq!(dropped, Dropped::default());
        // Duplicates are list-members too: 33 of them break the 32-member limit.
        let dupes = vec!["foo=1"; 33].join(",");
        assert_eq!(
            TraceState::parse(&dupes),
            Err(TraceError::TracestateTooManyMembers)
        );
    }

    /// "tracestate Limits": a vendor that truncates "MUST truncate whole entries", so a valid
    /// list is never dropped for its size. The longest valid list is 32 members of a 256-char
    /// key, `=` and a 256-char value joined by 31 commas: 16447 bytes. Every valid list within
    /// [`MAX_TRACESTATE_LEN`] (twice that, for optional whitespace) is kept whole.
    #[test]
    fn valid_lists_up_to_the_grammar_maximum_are_kept() {
        let members: Vec<String> = (0..32)
            .map(|i| format!("{:0>256}={}", i, "v".repeat(256)))
            .collect();
        let longest = members.join(",");
        assert_eq!(longest.len(), 16447);
        let s = TraceState::parse(&longest).unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(s.to_header(), longest);
        // With a space after every comma, as some vendors write it.
        let spaced = members.join(", ");
        assert_eq!(TraceState::parse(&spaced).unwrap().to_header(), longest);
    }

    /// The bound on work: a value longer than [`MAX_TRACESTATE_LEN`] is dropped without being
    /// read (documented, as "tracestate Limits" asks of a vendor's maximum).
    #[test]
    fn tracestate_length_limit() {
        let at_limit = format!(
            "a={},{}",
            "b".repeat(254),
            ",".repeat(MAX_TRACESTATE_LEN - 257)
        );
        assert_eq!(at_limit.len(), MAX_TRACESTATE_LEN);
        assert_eq!(TraceState::parse(&at_limit).unwrap().len(), 1);
        let over = format!("{at_limit},");
        assert_eq!(TraceState::parse(&over), Err(TraceError::TracestateTooLong));
    }

    /// The tracestate cases of the W3C Trace Context test suite (w3c/trace-context,
    /// `test/test.py`, strict level 2), ported as facts: the header fields a request carries
    /// (combined with `,`, as "tracestate Header Field Values" requires of multiple fields)
    /// and what the service passes on: `Some(list)` inherited, `None` discarded. Where the
    /// suite allows either behaviour (duplicate keys), the value is our choice.
    #[test]
    fn w3c_test_suite_tracestate_cases() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let key_with_vendor = format!("{key}@a-z0-9_-*/");
        let value: String = (0x20u8..=0x7e)
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        let all_chars = format!("{key}={value}");
        let all_chars_vendor = format!("{key_with_vendor}={value}");
        let thirty_two = [
            "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10",
            "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20",
            "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30",
            "bar31=31,bar32=32",
        ];
        let thirty_three = [
            thirty_two[0],
            thirty_two[1],
            thirty_two[2],
            "bar31=31,bar32=32,bar33=33",
        ];
        let z256 = format!("{}=1", "z".repeat(256));
        let z257 = format!("{}=1", "z".repeat(257));
        let tenant_241 = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
        let tenant_242 = format!("{}@v=1", "t".repeat(242));
        let system_15 = format!("t@{}=1", "v".repeat(15));
        let combined_32 = thirty_two.join(",");
        let foo_and = |m: &str| format!("foo=1,{m}");
        let cases: Vec<(&str, Vec<&str>, Option<String>)> = vec![
            (
                "included_traceparent_included",
                vec!["foo=1,bar=2"],
                Some("foo=1,bar=2".into()),
            ),
            ("empty_header", vec![""], Some(String::new())),
            (
                "empty_header, then foo",
                vec!["foo=1", ""],
                Some("foo=1".into()),
            ),
            (
                "empty_header, foo after",
                vec!["", "foo=1"],
                Some("foo=1".into()),
            ),
            (
                "multiple_headers_different_keys",
                vec!["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
                Some("foo=1,bar=2,rojo=1,congo=2,baz=3".into()),
            ),
            (
                "duplicated_keys, one field",
                vec!["foo=1,foo=1"],
                Some("foo=1".into()),
            ),
            (
                "duplicated_keys, values differ",
                vec!["foo=1,foo=2"],
                Some("foo=1".into()),
            ),
            (
                "duplicated_keys, two fields",
                vec!["foo=1", "foo=1"],
                Some("foo=1".into()),
            ),
            (
                "duplicated_keys, two values",
                vec!["foo=1", "foo=2"],
                Some("foo=1".into()),
            ),
            (
                "all_allowed_characters",
                vec![&all_chars],
                Some(all_chars.clone()),
            ),
            (
                "all_allowed_characters, vendor",
                vec![&all_chars_vendor],
                Some(all_chars_vendor.clone()),
            ),
            (
                "ows_handling",
                vec!["foo=1 \t , \t bar=2, \t baz=3"],
                Some("foo=1,bar=2,baz=3".into()),
            ),
            (
                "ows_handling, tabs",
                vec!["foo=1\t \t,\t \tbar=2,\t \tbaz=3"],
                Some("foo=1,bar=2,baz=3".into()),
            ),
            (
                "ows_handling, leading space",
                vec![" foo=1"],
                Some("foo=1".into()),
            ),
            (
                "ows_handling, leading tab",
                vec!["\tfoo=1"],
                Some("foo=1".into()),
            ),
            (
                "ows_handling, trailing space",
                vec!["foo=1 "],
                Some("foo=1".into()),
            ),
            (
                "ows_handling, trailing tab",
                vec!["foo=1\t"],
                Some("foo=1".into()),
            ),
            (
                "ows_handling, both",
                vec!["\t foo=1 \t"],
                Some("foo=1".into()),
            ),
            ("key_illegal_characters, space", vec!["foo =1"], None),
            ("key_illegal_characters, upper", vec!["FOO=1"], None),
            ("key_illegal_characters, dot", vec!["foo.bar=1"], None),
            (
                "key_illegal_vendor_format, foo@",
                vec!["foo@=1,bar=2"],
                Some("foo@=1,bar=2".into()),
            ),
            (
                "key_illegal_vendor_format, @foo",
                vec!["@foo=1,bar=2"],
                None,
            ),
            (
                "key_illegal_vendor_format, @@",
                vec!["foo@@bar=1,bar=2"],
                Some("foo@@bar=1,bar=2".into()),
            ),
            (
                "key_illegal_vendor_format, two @",
                vec!["foo@bar@baz=1,bar=2"],
                Some("foo@bar@baz=1,bar=2".into()),
            ),
            (
                "member_count_limit, 32",
                thirty_two.to_vec(),
                Some(combined_32.clone()),
            ),
            ("member_count_limit, 33", thirty_three.to_vec(), None),
            (
                "key_length_limit, 256",
                vec!["foo=1", &z256],
                Some(foo_and(&z256)),
            ),
            ("key_length_limit, 257", vec!["foo=1", &z257], None),
            (
                "key_length_limit, tenant 241",
                vec!["foo=1", &tenant_241],
                Some(foo_and(&tenant_241)),
            ),
            (
                "key_length_limit, tenant 242",
                vec!["foo=1", &tenant_242],
                Some(foo_and(&tenant_242)),
            ),
            (
                "key_length_limit, system 15",
                vec!["foo=1", &system_15],
                Some(foo_and(&system_15)),
            ),
            ("value_illegal_characters, =", vec!["foo=bar=baz"], None),
            ("value_illegal_characters, empty", vec!["foo=,bar=3"], None),
        ];
        for (name, fields, want) in cases {
            let got = TraceState::parse(&fields.join(","))
                .ok()
                .map(|s| s.to_header());
            assert_eq!(got, want, "test_tracestate_{name}: {fields:?}");
        }
    }

    /// "Mutating the tracestate Field": an added or updated key moves to the left, the order
    /// of the others is kept, a key is never present twice; "tracestate Header Field Values":
    /// adding a 33rd member removes the right-most.
    #[test]
    fn tracestate_mutations() {
        let mut s = TraceState::parse("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").unwrap();
        s.insert("rojo", "new").unwrap();
        assert_eq!(s.to_header(), "rojo=new,congo=t61rcWkgMzE");
        s.insert("acme@sys", "1").unwrap();
        assert_eq!(s.to_header(), "acme@sys=1,rojo=new,congo=t61rcWkgMzE");
        assert_eq!(s.insert("Bad", "1"), Err(TraceError::TracestateKey));
        assert_eq!(s.insert("@sys", "1"), Err(TraceError::TracestateKey));
        assert_eq!(s.insert("ok", "a,b"), Err(TraceError::TracestateValue));
        assert_eq!(s.len(), 3);
        assert_eq!(s.remove("rojo"), Some("new".to_string()));
        assert_eq!(s.remove("rojo"), None);
        assert_eq!(s.to_header(), "acme@sys=1,congo=t61rcWkgMzE");

        // Inserting into a full list drops the right-most member.
        let members: Vec<String> = (1..=32).map(|i| format!("k{i}=v")).collect();
        let mut full = TraceState::parse(&members.join(",")).unwrap();
        full.insert("mine", "x").unwrap();
        assert_eq!(full.len(), 32);
        assert_eq!(full.members()[0].0, "mine");
        assert_eq!(full.get("k32"), None);
    }

    /// "tracestate Limits": whole entries, those over 128 characters first, then from the end.
    #[test]
    fn tracestate_truncate_follows_spec_order() {
        let long = "l".repeat(200);
        let mut s = TraceState::parse(&format!("a=1,big={long},b=2,c=3")).unwrap();
        s.truncate(20);
        // The >128-character entry goes first, then from the right.
        assert_eq!(s.to_header(), "a=1,b=2,c=3");
        s.truncate(7);
        assert_eq!(s.to_header(), "a=1,b=2");
        s.truncate(0);
        assert!(s.is_empty());
    }
}
