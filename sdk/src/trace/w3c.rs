//! The `traceparent` and `tracestate` headers of W3C Trace Context (Level 1, plus the Level 2
//! `random` trace flag).
//!
//! Decisions where the spec leaves room, all documented on the items below:
//! - Leading and trailing spaces and tabs around a whole header value are ignored (they are
//!   not part of an HTTP field value, and the W3C test suite's `ows_handling` cases expect it);
//!   whitespace inside `traceparent` is invalid.
//! - A `traceparent` of a future version (not `00`, not `ff`) is parsed by the version `00`
//!   layout from its first 55 characters, provided a longer value goes on with `-` at index 55;
//!   values longer than [`MAX_TRACEPARENT_LEN`] are rejected as prohibitively large.
//! - `tracestate` accepts up to [`MAX_TRACESTATE_LEN`] bytes (the spec asks for at least 512);
//!   empty and whitespace-only list members are skipped and don't count towards the 32-member
//!   limit.

use super::ids::{SpanId, TraceId};
use super::{is_lower_hex, parse_lower_hex, trim_ows, TraceError};

/// The longest `traceparent` value accepted (after trimming surrounding whitespace). Version
/// `00` is exactly 55 characters; a future version may append fields, and this bounds the
/// work a hostile value can cause.
pub const MAX_TRACEPARENT_LEN: usize = 512;

/// The most list members a `tracestate` may hold.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The longest (combined) `tracestate` value accepted, in bytes, optional whitespace and commas
/// included. The spec asks vendors to propagate at least 512 characters; 8192 covers 32
/// members of up to 255 characters each. Longer values fail with
/// [`TraceError::TracestateTooLong`] (a failed `tracestate` never invalidates `traceparent`).
pub const MAX_TRACESTATE_LEN: usize = 8192;

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
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id.to_hex(),
            self.parent_id.to_hex(),
            self.flags & (Self::FLAG_SAMPLED | Self::FLAG_RANDOM)
        )
    }
}

/// Parses a `traceparent` header value.
///
/// Surrounding spaces and tabs are ignored. Version `00` must be exactly 55 characters of
/// `00-{32 lowercase hex}-{16 lowercase hex}-{2 lowercase hex}`; version `ff` is invalid; a
/// higher version is read from its first 55 characters by the same layout, and anything after
/// them must begin with `-`. All-zero trace or parent ids are invalid.
pub fn parse_traceparent(value: &str) -> Result<TraceParent, TraceError> {
    let v = trim_ows(value).as_bytes();
    if v.len() > MAX_TRACEPARENT_LEN {
        return Err(TraceError::TraceparentLength);
    }
    let version = match (v.get(0..2), v.get(2)) {
        (Some(digits), Some(b'-')) => parse_lower_hex(digits)
            .and_then(|x| u8::try_from(x).ok())
            .ok_or(TraceError::TraceparentVersion)?,
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
    let trace_id = field(v, 3, 32).ok_or(TraceError::TraceparentFormat)?;
    let parent_id = field(v, 36, 16).ok_or(TraceError::TraceparentFormat)?;
    if v.get(35) != Some(&b'-') || v.get(52) != Some(&b'-') {
        return Err(TraceError::TraceparentFormat);
    }
    let flags = field(v, 53, 2)
        .and_then(|x| u8::try_from(x).ok())
        .ok_or(TraceError::TraceparentFlags)?;
    if trace_id == 0 {
        return Err(TraceError::TraceparentZeroTraceId);
    }
    let parent_id = u64::try_from(parent_id).map_err(|_| TraceError::TraceparentFormat)?;
    if parent_id == 0 {
        return Err(TraceError::TraceparentZeroParentId);
    }
    Ok(TraceParent {
        version,
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        flags,
    })
}

/// `len` lowercase hex digits of `v` starting at `start`, as a number.
fn field(v: &[u8], start: usize, len: usize) -> Option<u128> {
    let end = start.checked_add(len)?;
    let digits = v.get(start..end)?;
    if digits.iter().all(|b| is_lower_hex(*b)) {
        parse_lower_hex(digits)
    } else {
        None
    }
}

/// The parsed `tracestate` header: vendor entries in order, left-most first.
///
/// Keys follow the simple-key grammar (a lowercase letter or digit, then up to 255 of
/// `a-z 0-9 _ - * /`) or the multi-tenant grammar `tenant@system` (tenant: a lowercase letter
/// or digit then up to 240 key characters; system: a lowercase letter then up to 13). Values
/// are 1 to 256 printable ASCII characters (0x20 to 0x7E) other than `,` and `=`, not ending in
/// a space; leading spaces are part of the value. Multiple `tracestate` header fields are
/// combined with `,` by the caller before parsing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceState {
    members: Vec<(String, String)>,
}

impl TraceState {
    /// Parses a (combined) `tracestate` value. An empty value, or one of only commas and
    /// whitespace, is an empty state.
    pub fn parse(value: &str) -> Result<TraceState, TraceError> {
        if value.len() > MAX_TRACESTATE_LEN {
            return Err(TraceError::TracestateTooLong);
        }
        let mut members: Vec<(String, String)> = Vec::new();
        for raw in value.split(',') {
            let member = trim_ows(raw);
            if member.is_empty() {
                continue;
            }
            if members.len() >= MAX_TRACESTATE_MEMBERS {
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
                return Err(TraceError::TracestateDuplicateKey);
            }
            members.push((key.to_string(), val.to_string()));
        }
        Ok(TraceState { members })
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

/// A character allowed after the first one of a key part: `a-z 0-9 _ - * /`.
fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// `first` then `0..=max_rest` key characters.
fn key_part(s: &[u8], first: fn(u8) -> bool, max_rest: usize) -> bool {
    match s.split_first() {
        Some((head, rest)) => {
            first(*head) && rest.len() <= max_rest && rest.iter().all(|b| is_key_char(*b))
        }
        None => false,
    }
}

fn lower_or_digit(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn lower(b: u8) -> bool {
    b.is_ascii_lowercase()
}

/// The `tracestate` key grammar: a simple key, or `tenant@system`. A simple key may start with
/// a digit, as Level 2 allows (Level 1 required a letter).
fn valid_key(key: &str) -> bool {
    let k = key.as_bytes();
    match k.iter().position(|b| *b == b'@') {
        None => key_part(k, lower_or_digit, 255),
        Some(at) => match (k.get(..at), k.get(at + 1..)) {
            (Some(tenant), Some(system)) => {
                key_part(tenant, lower_or_digit, 240) && key_part(system, lower, 13)
            }
            _ => false,
        },
    }
}

/// The `tracestate` value grammar: 1 to 256 of 0x20-0x7E except `,` and `=`, not ending in a
/// space.
fn valid_value(value: &str) -> bool {
    let v = value.as_bytes();
    !v.is_empty()
        && v.len() <= 256
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

    #[test]
    fn tracestate_key_length_limits() {
        assert!(TraceState::parse(&format!("foo=1,{}=1", "z".repeat(256))).is_ok());
        assert_eq!(
            TraceState::parse(&format!("foo=1,{}=1", "z".repeat(257))),
            Err(TraceError::TracestateKey)
        );
        assert!(TraceState::parse(&format!("{}@{}=1", "t".repeat(241), "v".repeat(14))).is_ok());
        assert_eq!(
            TraceState::parse(&format!("{}@v=1", "t".repeat(242))),
            Err(TraceError::TracestateKey)
        );
        assert_eq!(
            TraceState::parse(&format!("t@{}=1", "v".repeat(15))),
            Err(TraceError::TracestateKey)
        );
    }

    #[test]
    fn tracestate_invalid_keys() {
        for v in [
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "foo@=1,bar=2",
            "@foo=1,bar=2",
            "foo@@bar=1,bar=2",
            "foo@bar@baz=1,bar=2",
            "foo@1bar=1",
            "_foo=1",
            "=1",
            "fo o=1",
            "é=1",
        ] {
            assert_eq!(
                TraceState::parse(v),
                Err(TraceError::TracestateKey),
                "{v:?}"
            );
        }
    }

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

    #[test]
    fn tracestate_duplicate_keys() {
        for v in [
            "foo=1,foo=1",
            "foo=1,foo=2",
            "foo=1,bar=2,foo=3",
            "a@b=1,a@b=2",
        ] {
            assert_eq!(
                TraceState::parse(v),
                Err(TraceError::TracestateDuplicateKey),
                "{v:?}"
            );
        }
    }

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

    #[test]
    fn tracestate_mutations() {
        let mut s = TraceState::parse("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").unwrap();
        s.insert("rojo", "new").unwrap();
        assert_eq!(s.to_header(), "rojo=new,congo=t61rcWkgMzE");
        s.insert("acme@sys", "1").unwrap();
        assert_eq!(s.to_header(), "acme@sys=1,rojo=new,congo=t61rcWkgMzE");
        assert_eq!(s.insert("Bad", "1"), Err(TraceError::TracestateKey));
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
