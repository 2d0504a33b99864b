//! Trace context codecs: pure parsers and formatters for the propagation headers a sidecar
//! sees, with no host calls, so they run natively and in wasm32 alike.
//!
//! - [`w3c`]: `traceparent` and `tracestate` (W3C Trace Context Level 2: the `random` trace
//!   flag, the Level 2 `tracestate` key grammar and its per-case handling of odd members).
//! - [`b3`]: the `x-b3-*` multiple headers and the `b3` single header (openzipkin
//!   b3-propagation).
//! - [`baggage`]: the `baggage` header (W3C Baggage).
//! - [`ids`]: trace and span ids, an id generator, and trace-id-ratio sampling.
//!
//! Every parser returns `Result<_, TraceError>`; [`TraceError::reason`] is a stable
//! snake_case string meant for a metric label. Parsers check lengths before they allocate, and
//! never panic on any input.
//!
//! Header values are taken as the proxy hands them over. Leading and trailing optional
//! whitespace (space and horizontal tab, RFC 9110 section 5.5) is not part of an HTTP field
//! value, so every parser here ignores it; whitespace anywhere else is held to each format's
//! grammar.

use std::fmt;

pub mod b3;
pub mod baggage;
pub mod export;
pub mod ids;
pub mod w3c;

pub use b3::{B3Single, Sampling, B3};
pub use baggage::Baggage;
pub use ids::{sample_by_trace_id, IdGenerator, SpanId, TraceId};
pub use w3c::{parse_traceparent, TraceParent, TraceState};

/// Why a trace header value was rejected. Each variant is one distinct reason; see
/// [`TraceError::reason`] for the metric label of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceError {
    /// `traceparent` has the wrong length for its version (55 characters for version `00`,
    /// at least 55 for a later version), or is longer than
    /// [`w3c::MAX_TRACEPARENT_LEN`].
    TraceparentLength,
    /// `traceparent` does not start with two lowercase hex digits and a `-`, or its version is
    /// the forbidden `ff`.
    TraceparentVersion,
    /// `traceparent`'s trace id or parent id is not lowercase hex of the right width, or a `-`
    /// delimiter is missing.
    TraceparentFormat,
    /// `traceparent`'s trace id is all zeros.
    TraceparentZeroTraceId,
    /// `traceparent`'s parent id is all zeros.
    TraceparentZeroParentId,
    /// `traceparent`'s trace flags are not two lowercase hex digits.
    TraceparentFlags,
    /// `tracestate` has more than 32 list members.
    TracestateTooManyMembers,
    /// A `tracestate` key does not match the Level 2 key grammar (a lowercase letter or digit,
    /// then up to 255 of `a-z 0-9 _ - * / @`).
    TracestateKey,
    /// A `tracestate` value is missing (no `=`), empty, longer than 256 characters, or holds a
    /// character outside printable ASCII, or a `,` or `=`.
    TracestateValue,
    /// A `tracestate` key appears twice. Not a reason to drop the header: the parser never
    /// returns it, it drops the later entry and reports it in [`w3c::Dropped`]; this variant
    /// labels the count of such entries.
    TracestateDuplicateKey,
    /// `tracestate` is longer than [`w3c::MAX_TRACESTATE_LEN`].
    TracestateTooLong,
    /// A B3 trace id is not 16 or 32 lowercase hex digits, is zero, or is missing while a span
    /// id is present.
    B3TraceId,
    /// A B3 span id is not 16 lowercase hex digits, is zero, or is missing while a trace id is
    /// present.
    B3SpanId,
    /// A B3 parent span id is not 16 lowercase hex digits, or is zero.
    B3ParentSpanId,
    /// A B3 sampling state is not one of the accepted spellings.
    B3Sampled,
    /// `x-b3-flags` is anything but `1`.
    B3Flags,
    /// The `b3` single header is empty, too long, or has the wrong number of fields.
    B3SingleFormat,
    /// `baggage` is longer than [`baggage::MAX_BAGGAGE_BYTES`].
    BaggageTooLong,
    /// `baggage` has more than [`baggage::MAX_BAGGAGE_MEMBERS`] list members.
    BaggageTooManyMembers,
    /// A `baggage` list member has no `=` between its key and value.
    BaggageFormat,
    /// A `baggage` key is empty or not an RFC 9110 token.
    BaggageKey,
    /// A `baggage` value holds a character outside the baggage-octet set.
    BaggageValue,
    /// A `baggage` property is not `key` or `key=value` with a token key and baggage-octet
    /// value.
    BaggageProperty,
    /// A header value is not valid UTF-8 (see [`header_str`]).
    NotUtf8,
}

impl TraceError {
    /// Every variant, in declaration order (for tests and for pre-registering metric series).
    pub const ALL: [TraceError; 24] = [
        TraceError::TraceparentLength,
        TraceError::TraceparentVersion,
        TraceError::TraceparentFormat,
        TraceError::TraceparentZeroTraceId,
        TraceError::TraceparentZeroParentId,
        TraceError::TraceparentFlags,
        TraceError::TracestateTooManyMembers,
        TraceError::TracestateKey,
        TraceError::TracestateValue,
        TraceError::TracestateDuplicateKey,
        TraceError::TracestateTooLong,
        TraceError::B3TraceId,
        TraceError::B3SpanId,
        TraceError::B3ParentSpanId,
        TraceError::B3Sampled,
        TraceError::B3Flags,
        TraceError::B3SingleFormat,
        TraceError::BaggageTooLong,
        TraceError::BaggageTooManyMembers,
        TraceError::BaggageFormat,
        TraceError::BaggageKey,
        TraceError::BaggageValue,
        TraceError::BaggageProperty,
        TraceError::NotUtf8,
    ];

    /// A stable snake_case name for the reason, for metric labels and logs,
    /// e.g. `"traceparent_length"`.
    pub fn reason(&self) -> &'static str {
        match self {
            TraceError::TraceparentLength => "traceparent_length",
            TraceError::TraceparentVersion => "traceparent_version",
            TraceError::TraceparentFormat => "traceparent_format",
            TraceError::TraceparentZeroTraceId => "traceparent_zero_trace_id",
            TraceError::TraceparentZeroParentId => "traceparent_zero_parent_id",
            TraceError::TraceparentFlags => "traceparent_flags",
            TraceError::TracestateTooManyMembers => "tracestate_too_many_members",
            TraceError::TracestateKey => "tracestate_key",
            TraceError::TracestateValue => "tracestate_value",
            TraceError::TracestateDuplicateKey => "tracestate_duplicate_key",
            TraceError::TracestateTooLong => "tracestate_too_long",
            TraceError::B3TraceId => "b3_trace_id",
            TraceError::B3SpanId => "b3_span_id",
            TraceError::B3ParentSpanId => "b3_parent_span_id",
            TraceError::B3Sampled => "b3_sampled",
            TraceError::B3Flags => "b3_flags",
            TraceError::B3SingleFormat => "b3_single_format",
            TraceError::BaggageTooLong => "baggage_too_long",
            TraceError::BaggageTooManyMembers => "baggage_too_many_members",
            TraceError::BaggageFormat => "baggage_format",
            TraceError::BaggageKey => "baggage_key",
            TraceError::BaggageValue => "baggage_value",
            TraceError::BaggageProperty => "baggage_property",
            TraceError::NotUtf8 => "not_utf8",
        }
    }

    /// A sentence for humans (logs, test failures).
    fn describe(&self) -> &'static str {
        match self {
            TraceError::TraceparentLength => "traceparent has the wrong length for its version",
            TraceError::TraceparentVersion => {
                "traceparent version is not two lowercase hex digits other than ff"
            }
            TraceError::TraceparentFormat => "traceparent trace id or parent id is malformed",
            TraceError::TraceparentZeroTraceId => "traceparent trace id is all zeros",
            TraceError::TraceparentZeroParentId => "traceparent parent id is all zeros",
            TraceError::TraceparentFlags => {
                "traceparent trace flags are not two lowercase hex digits"
            }
            TraceError::TracestateTooManyMembers => "tracestate has more than 32 list members",
            TraceError::TracestateKey => "tracestate key is malformed",
            TraceError::TracestateValue => "tracestate value is malformed",
            TraceError::TracestateDuplicateKey => "tracestate has a duplicate key",
            TraceError::TracestateTooLong => "tracestate is too long",
            TraceError::B3TraceId => "b3 trace id is missing or malformed",
            TraceError::B3SpanId => "b3 span id is missing or malformed",
            TraceError::B3ParentSpanId => "b3 parent span id is malformed",
            TraceError::B3Sampled => "b3 sampling state is malformed",
            TraceError::B3Flags => "x-b3-flags is not 1",
            TraceError::B3SingleFormat => "b3 single header is malformed",
            TraceError::BaggageTooLong => "baggage is too long",
            TraceError::BaggageTooManyMembers => "baggage has too many list members",
            TraceError::BaggageFormat => "baggage list member has no `=`",
            TraceError::BaggageKey => "baggage key is not a token",
            TraceError::BaggageValue => "baggage value has a character outside baggage-octet",
            TraceError::BaggageProperty => "baggage property is malformed",
            TraceError::NotUtf8 => "header value is not UTF-8",
        }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.describe(), self.reason())
    }
}

impl std::error::Error for TraceError {}

/// A header value received as bytes, as text: [`TraceError::NotUtf8`] unless it is UTF-8.
/// Every format here is ASCII, so a value that is not UTF-8 is invalid for all of them.
pub fn header_str(bytes: &[u8]) -> Result<&str, TraceError> {
    std::str::from_utf8(bytes).map_err(|_| TraceError::NotUtf8)
}

/// `value` without leading and trailing optional whitespace (SP and HTAB).
pub(crate) fn trim_ows(value: &str) -> &str {
    value.trim_matches(|c| c == ' ' || c == '\t')
}

/// [`trim_ows`] over bytes.
pub(crate) fn trim_ows_bytes(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or_default()
}

/// The value of each byte as a lowercase hex digit, `0xff` for any other byte: one load per
/// digit where a chain of range checks costs several branches.
static HEX_VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Parses 1 to 16 lowercase hex digits into a `u64`; `None` on any other character, on an
/// empty input, or on more than 16 digits. Ids are read on every request: 64-bit arithmetic
/// (128-bit shifts are pairs of them, or library calls, in wasm32) and a table lookup per digit.
pub(crate) fn parse_hex_u64(s: &[u8]) -> Option<u64> {
    if let Some((high, low)) = s.split_first_chunk::<8>() {
        if let Ok(low) = <&[u8; 8]>::try_from(low) {
            // Every id is 16 digits: two words of eight.
            let (high, low) = (hex8(high)?, hex8(low)?);
            return Some((u64::from(high) << 32) | u64::from(low));
        }
    }
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut value = 0u64;
    let mut bad = 0u8;
    for &b in s {
        let digit = HEX_VALUE[usize::from(b)];
        // Checked once at the end: a set high bit in any digit means a non-hex byte.
        bad |= digit;
        value = (value << 4) | u64::from(digit & 0xf);
    }
    (bad < 16).then_some(value)
}

/// Eight lowercase hex digits as a number, all at once in one 64-bit word (SWAR): a few dozen
/// operations where eight table lookups and shifts take about four times as many.
fn hex8(digits: &[u8; 8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The first digit in the lowest byte.
    let x = u64::from_le_bytes(*digits);
    if x & HIGH != 0 {
        return None;
    }
    // With every byte below 0x80 no sum below carries into the next byte: adding
    // `0x80 - lo` sets a byte's high bit when it is at least `lo`, adding `0x7f - hi` when it
    // is above `hi`.
    let at_least = |lo: u8| x.wrapping_add(ONES * u64::from(0x80 - lo));
    let above = |hi: u8| x.wrapping_add(ONES * u64::from(0x7f - hi));
    let digit = at_least(b'0') & !above(b'9') & HIGH;
    let letter = at_least(b'a') & !above(b'f') & HIGH;
    if digit | letter != HIGH {
        return None;
    }
    // Each byte's value: its low nibble, plus 9 for a letter (`a` is 0x61).
    let n = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Pack the eight nibbles, first digit most significant: pairs, then quads, then all.
    let n = ((n << 4) | (n >> 8)) & 0x00ff_00ff_00ff_00ff;
    let n = ((n << 8) | (n >> 16)) & 0x0000_ffff_0000_ffff;
    let n = ((n << 16) | (n >> 32)) & 0x0000_0000_ffff_ffff;
    Some(n as u32)
}

/// Parses lowercase hex of at most 32 digits into a `u128`; `None` on any other character, on
/// an empty input, or on more than 32 digits.
pub(crate) fn parse_lower_hex(s: &[u8]) -> Option<u128> {
    if s.len() <= 16 {
        return parse_hex_u64(s).map(u128::from);
    }
    let (high, low) = s.split_at(s.len().saturating_sub(16));
    let (high, low) = (parse_hex_u64(high)?, parse_hex_u64(low)?);
    Some((u128::from(high) << 64) | u128::from(low))
}

/// The lowercase hex digits, for writers.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `value` as lowercase hex into all of `out`, zero-padded, most significant digit
/// first; the low `2 * out.len()` digits when they do not all fit (16 bytes hold a `u64`).
pub fn write_hex(out: &mut [u8], value: u64) {
    if let Ok(out) = <&mut [u8; 16]>::try_from(&mut *out) {
        // Every id is 16 digits: two words of eight.
        let (high, low) = out.split_at_mut(8);
        high.copy_from_slice(&hex8_digits((value >> 32) as u32));
        low.copy_from_slice(&hex8_digits(value as u32));
        return;
    }
    let mut value = value;
    for b in out.iter_mut().rev() {
        *b = HEX_DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The eight lowercase hex digits of `value`, all at once in one 64-bit word (SWAR), the
/// inverse of [`hex8`]: spread the nibbles one to a byte, first digit in the lowest byte, then
/// add `0` to each, and the distance from `9` to `a` to those of 10 and more.
fn hex8_digits(value: u32) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = u64::from(value);
    let x = (x >> 16) | ((x & 0xffff) << 32);
    let x = ((x & 0x0000_ff00_0000_ff00) >> 8) | ((x & 0x0000_00ff_0000_00ff) << 16);
    let x = ((x & 0x00f0_00f0_00f0_00f0) >> 4) | ((x & 0x000f_000f_000f_000f) << 8);
    // Bytes holding 10 and more: adding 6 carries them into bit 4 (never into the next byte).
    let letters = ((x + ONES * 6) >> 4) & ONES;
    (x + ONES * u64::from(b'0') + letters * u64::from(b'a' - b'0' - 10)).to_le_bytes()
}

/// A header value written on the stack: the trace formats' values are at most
/// [`HeaderValue::CAPACITY`] bytes of ASCII, so writing one never allocates.
#[derive(Clone, Copy)]
pub struct HeaderValue {
    buf: [u8; HeaderValue::CAPACITY],
    len: usize,
}

impl HeaderValue {
    /// The longest value it holds: a `b3` single header with a 128-bit trace id and a parent.
    pub const CAPACITY: usize = 68;

    /// An empty value.
    pub(crate) fn new() -> HeaderValue {
        HeaderValue {
            buf: [0; HeaderValue::CAPACITY],
            len: 0,
        }
    }

    /// Appends `bytes`; past [`HeaderValue::CAPACITY`] nothing is appended (never the case for
    /// the values written here).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
            self.len = end;
        }
    }

    /// Appends `value` as `digits` lowercase hex digits (at most 16).
    pub(crate) fn push_hex(&mut self, value: u64, digits: usize) {
        let end = self.len + digits.min(16);
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            write_hex(dst, value);
            self.len = end;
        }
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The value as text (it is always ASCII).
    pub fn to_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_str(), f)
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &HeaderValue) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HeaderValue {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reasons_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for e in TraceError::ALL {
            let r = e.reason();
            assert!(seen.insert(r), "duplicate reason {r}");
            assert!(
                r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{r}"
            );
            assert!(e.to_string().ends_with(&format!("({r})")), "{e}");
        }
        assert_eq!(TraceError::TraceparentLength.reason(), "traceparent_length");
    }

    #[test]
    fn header_str_rejects_invalid_utf8() {
        assert_eq!(header_str(b"abc"), Ok("abc"));
        assert_eq!(header_str(&[0x61, 0xff, 0x62]), Err(TraceError::NotUtf8));
    }

    /// Random strings over the characters these formats care about, plus multi-byte UTF-8,
    /// through every parser: errors are fine, panics are not, and whatever parses re-encodes
    /// to something that parses again.
    #[test]
    fn parsers_never_panic_on_generated_input() {
        const ALPHABET: [&str; 24] = [
            "0",
            "1",
            "a",
            "f",
            "d",
            "z",
            "A",
            "-",
            ",",
            "=",
            ";",
            "@",
            "%",
            " ",
            "\t",
            "\"",
            "é",
            "€",
            "4bf92f3577b34da6",
            "00f067aa0ba902b7",
            "00-",
            "%2",
            "true",
            "*",
        ];
        let mut g = IdGenerator::new(2024);
        for _ in 0..20_000 {
            let len = (g.next_u64() % 40) as usize;
            let s: String = (0..len)
                .filter_map(|_| ALPHABET.get((g.next_u64() % ALPHABET.len() as u64) as usize))
                .copied()
                .collect();
            if let Ok(p) = parse_traceparent(&s) {
                assert!(parse_traceparent(&p.to_header()).is_ok(), "{s:?}");
            }
            if let Ok(t) = TraceState::parse(&s) {
                assert_eq!(TraceState::parse(&t.to_header()).as_ref(), Ok(&t), "{s:?}");
            }
            if let Ok(b) = Baggage::parse(&s) {
                assert_eq!(Baggage::parse(&b.to_header()).map(|x| x.len()), Ok(b.len()));
            }
            if let Ok(B3Single::Context(b)) = b3::parse_single(&s) {
                assert!(b3::parse_single(&b3::format_single(&b)).is_ok(), "{s:?}");
            }
            let _ = b3::parse_multi(Some(&s), Some(&s), Some(&s), Some(&s), Some(&s));
            let _ = b3::parse_multi_sampling(Some(&s), Some(&s));
            let _ = TraceId::from_hex(&s);
            let _ = SpanId::from_hex(&s);
        }
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(parse_lower_hex(b"ff"), Some(255));
        assert_eq!(parse_lower_hex(b"FF"), None);
        assert_eq!(parse_lower_hex(b""), None);
        assert_eq!(parse_lower_hex(&[b'f'; 33]), None);
        assert_eq!(parse_lower_hex(&[b'f'; 32]), Some(u128::MAX));
        assert_eq!(trim_ows(" \t x \t"), "x");
        assert_eq!(
            parse_lower_hex(b"1234567890abcdef0"),
            Some(0x1234567890abcdef0)
        );
        assert_eq!(parse_lower_hex(b"1234567890abcdeg0"), None);
        assert_eq!(parse_hex_u64(&[b'f'; 16]), Some(u64::MAX));
        assert_eq!(parse_hex_u64(&[b'f'; 17]), None);
        assert_eq!(
            parse_hex_u64(b"0123456789abcdef"),
            Some(0x0123_4567_89ab_cdef)
        );
        assert_eq!(
            parse_hex_u64(b"fedcba9876543210"),
            Some(0xfedc_ba98_7654_3210)
        );
        // Every byte value in every position of a 16-digit id, against the digit-wise parse.
        let digitwise = |s: &[u8]| {
            s.iter().try_fold(0u64, |acc, b| {
                let d = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => return None,
                };
                Some((acc << 4) | u64::from(d))
            })
        };
        for at in 0..16 {
            for b in 0..=255u8 {
                let mut id = *b"9a8b7c6d5e4f3021";
                id[at] = b;
                assert_eq!(parse_hex_u64(&id), digitwise(&id), "{at} {b}");
            }
        }
        assert_eq!(parse_hex_u64(b"0\xff"), None);
        for b in 0..=255u8 {
            let want = b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            assert_eq!(parse_hex_u64(&[b]).is_some(), want, "{b}");
        }
        assert_eq!(trim_ows_bytes(b" \t x \t"), b"x");
        assert_eq!(trim_ows_bytes(b" \t "), b"");
        assert_eq!(trim_ows_bytes(b""), b"");
        let mut out = [0u8; 4];
        write_hex(&mut out, 0xbeef_1a2b);
        assert_eq!(&out, b"1a2b");
        let mut g = IdGenerator::new(9);
        for v in [0, 1, 0xa, 0xf, u64::MAX, 0x0123_4567_89ab_cdef]
            .into_iter()
            .chain((0..1000).map(|_| g.next_u64()))
        {
            let mut out = [0u8; 16];
            write_hex(&mut out, v);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
            assert_eq!(parse_hex_u64(&out), Some(v));
        }
        let mut v = HeaderValue::new();
        v.push(b"00-");
        v.push_hex(0xab, 4);
        assert_eq!(v.as_bytes(), b"00-00ab");
        v.push(&[b'x'; HeaderValue::CAPACITY]);
        assert_eq!(v.as_bytes(), b"00-00ab");
    }
}
