//! Trace and span ids, a small deterministic id generator (xoshiro256** seeded through
//! splitmix64), and sampling by trace id.
//!
//! Ids follow W3C Trace Context Level 1 (a 16-byte trace id and an 8-byte span id, lowercase
//! hex, all zeros invalid). [`sample_by_trace_id`] relies on W3C Trace Context Level 2, whose
//! `random` trace flag promises that the right-most 7 bytes (the low 56 bits) of the trace id
//! are random; ids made by [`IdGenerator`] satisfy that, so a proxy that starts a trace may set
//! the flag.

use super::parse_lower_hex;

/// A 128-bit trace id. A valid one is never zero; read as big-endian from its 32 hex digits, so
/// the right-most hex digits are the low bits. A 64-bit (B3) trace id has its high 64 bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// A 64-bit span id. A valid one is never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl TraceId {
    /// Parses exactly 32 lowercase hex digits; `None` on any other input or on all zeros.
    pub fn from_hex(s: &str) -> Option<TraceId> {
        if s.len() != 32 {
            return None;
        }
        match parse_lower_hex(s.as_bytes()) {
            Some(0) | None => None,
            Some(v) => Some(TraceId(v)),
        }
    }

    /// The 32 lowercase hex digits of the id.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, self.0, 32);
        out
    }

    /// The 16 lowercase hex digits of the low 64 bits (the B3 64-bit form).
    pub fn low_hex(&self) -> String {
        let mut out = String::with_capacity(16);
        push_hex(&mut out, u128::from(self.low64()), 16);
        out
    }

    /// Whether the high 64 bits are zero, so the id fits the B3 64-bit form.
    pub fn is_64bit(&self) -> bool {
        self.0 >> 64 == 0
    }

    /// The low 64 bits.
    pub fn low64(&self) -> u64 {
        (self.0 & u128::from(u64::MAX)) as u64
    }
}

impl SpanId {
    /// Parses exactly 16 lowercase hex digits; `None` on any other input or on all zeros.
    pub fn from_hex(s: &str) -> Option<SpanId> {
        if s.len() != 16 {
            return None;
        }
        match parse_lower_hex(s.as_bytes()) {
            Some(0) | None => None,
            Some(v) => u64::try_from(v).ok().map(SpanId),
        }
    }

    /// The 16 lowercase hex digits of the id.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(16);
        push_hex(&mut out, u128::from(self.0), 16);
        out
    }
}

/// Appends the low `digits` hex digits of `value`, lowercase, zero-padded (at most 32), each
/// 64-bit half written by [`super::write_hex`] (128-bit shifts are library calls in wasm32, and
/// `core::fmt` goes through its formatter machinery).
pub fn push_hex(out: &mut String, value: u128, digits: usize) {
    let digits = digits.min(32);
    let mut buf = [0u8; 32];
    let (high, low) = buf.split_at_mut(16);
    super::write_hex(high, (value >> 64) as u64);
    super::write_hex(low, value as u64);
    // Always ASCII, so never the empty fallback.
    out.push_str(std::str::from_utf8(&buf[32 - digits..]).unwrap_or_default());
}

/// A fast, seedable pseudo-random generator for ids: xoshiro256** (Blackman and Vigna) with its
/// state filled from the seed by splitmix64. Not cryptographic: seed it from something that
/// differs per VM and worker (time, a host-provided random value) so workers don't collide.
#[derive(Clone, Debug)]
pub struct IdGenerator {
    state: [u64; 4],
}

/// One splitmix64 step: advances `x` and returns the next output.
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IdGenerator {
    /// A generator whose sequence is fully determined by `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut state = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        // xoshiro's one bad state; splitmix64 cannot produce it, but be sure.
        if state == [0; 4] {
            state = [1, 0, 0, 0];
        }
        IdGenerator { state }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s1 << 17;
        let s2 = s2 ^ s0;
        let s3 = s3 ^ s1;
        let s1 = s1 ^ s2;
        let s0 = s0 ^ s3;
        let s2 = s2 ^ t;
        let s3 = s3.rotate_left(45);
        self.state = [s0, s1, s2, s3];
        result
    }

    /// A new random, non-zero trace id: all 128 bits random, so it qualifies for the W3C
    /// Level 2 `random` flag.
    pub fn trace_id(&mut self) -> TraceId {
        // Two zero draws in a row do not happen in practice; a few retries keep this bounded.
        for _ in 0..4 {
            let id = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
            if id != 0 {
                return TraceId(id);
            }
        }
        TraceId(1)
    }

    /// A new random, non-zero span id.
    pub fn span_id(&mut self) -> SpanId {
        for _ in 0..4 {
            let id = self.next_u64();
            if id != 0 {
                return SpanId(id);
            }
        }
        SpanId(1)
    }
}

/// Number of trace id bits [`sample_by_trace_id`] reads: the 7 random bytes W3C Trace Context
/// Level 2 guarantees.
const SAMPLE_BITS: u32 = 56;

/// Decides sampling from the trace id alone, so every proxy on the trace decides the same way:
/// true when the low 56 bits of the id, read as an integer, are below `probability * 2^56`.
/// `probability <= 0` (or NaN) never samples, `probability >= 1` always does.
pub fn sample_by_trace_id(id: TraceId, probability: f64) -> bool {
    if probability.is_nan() || probability <= 0.0 {
        return false;
    }
    if probability >= 1.0 {
        return true;
    }
    let scale = (1u64 << SAMPLE_BITS) as f64;
    // In (0, 2^56): the float-to-int cast saturates and cannot fail.
    let threshold = (probability * scale) as u64;
    let randomness = id.low64() & ((1u64 << SAMPLE_BITS) - 1);
    randomness < threshold
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn trace_id_hex_round_trip() {
        let hex = "4bf92f3577b34da6a3ce929d0e0e4736";
        let id = TraceId::from_hex(hex).unwrap();
        assert_eq!(id.0, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(id.to_hex(), hex);
        assert_eq!(id.low_hex(), "a3ce929d0e0e4736");
        assert!(!id.is_64bit());
        let small = TraceId(0x1);
        assert_eq!(small.to_hex(), "00000000000000000000000000000001");
        assert_eq!(small.low_hex(), "0000000000000001");
        assert!(small.is_64bit());
    }

    #[test]
    fn trace_id_rejects() {
        assert_eq!(TraceId::from_hex("00000000000000000000000000000000"), None);
        assert_eq!(TraceId::from_hex("4BF92F3577B34DA6A3CE929D0E0E4736"), None);
        assert_eq!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e473"), None);
        assert_eq!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e47361"), None);
        assert_eq!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e473g"), None);
        assert_eq!(TraceId::from_hex(""), None);
        // 32 bytes but not 32 ASCII characters.
        assert_eq!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e47é"), None);
    }

    #[test]
    fn span_id_hex_round_trip_and_rejects() {
        let id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(id.0, 0x00f067aa0ba902b7);
        assert_eq!(id.to_hex(), "00f067aa0ba902b7");
        assert_eq!(SpanId::from_hex("0000000000000000"), None);
        assert_eq!(SpanId::from_hex("00F067AA0BA902B7"), None);
        assert_eq!(SpanId::from_hex("00f067aa0ba902b"), None);
        assert_eq!(SpanId::from_hex("00f067aa0ba902b77"), None);
        assert_eq!(SpanId::from_hex("00f067aa0ba902-7"), None);
    }

    #[test]
    fn generator_is_deterministic_and_non_zero() {
        let mut a = IdGenerator::new(42);
        let mut b = IdGenerator::new(42);
        let mut c = IdGenerator::new(43);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);

        let mut g = IdGenerator::new(0);
        let mut traces = HashSet::new();
        let mut spans = HashSet::new();
        for _ in 0..10_000 {
            let t = g.trace_id();
            let s = g.span_id();
            assert_ne!(t.0, 0);
            assert_ne!(s.0, 0);
            assert_eq!(TraceId::from_hex(&t.to_hex()), Some(t));
            assert_eq!(SpanId::from_hex(&s.to_hex()), Some(s));
            traces.insert(t);
            spans.insert(s);
        }
        assert_eq!(traces.len(), 10_000);
        assert_eq!(spans.len(), 10_000);
    }

    #[test]
    fn generator_bits_look_uniform() {
        // Each of the 64 bit positions is set in roughly half of the draws.
        let mut g = IdGenerator::new(7);
        let mut counts = [0u32; 64];
        let n = 20_000;
        for _ in 0..n {
            let x = g.next_u64();
            for (bit, count) in counts.iter_mut().enumerate() {
                *count += ((x >> bit) & 1) as u32;
            }
        }
        for (bit, count) in counts.iter().enumerate() {
            assert!((9_000..11_000).contains(count), "bit {bit}: {count}");
        }
    }

    #[test]
    fn sampling_bounds() {
        let id = TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert!(!sample_by_trace_id(id, 0.0));
        assert!(!sample_by_trace_id(id, -1.0));
        assert!(!sample_by_trace_id(id, f64::NAN));
        assert!(sample_by_trace_id(id, 1.0));
        assert!(sample_by_trace_id(id, 2.0));
        assert!(sample_by_trace_id(id, f64::INFINITY));
    }

    #[test]
    fn sampling_reads_the_low_56_bits() {
        // Low 56 bits zero: sampled at any positive probability, whatever the high bits.
        let low_zero = TraceId(0xffff_ffff_ffff_ffff_ff00_0000_0000_0000);
        assert!(sample_by_trace_id(low_zero, 1e-12));
        // Low 56 bits all ones: sampled only at probability 1.
        let low_max = TraceId(0x00ff_ffff_ffff_ffff);
        assert!(!sample_by_trace_id(low_max, 0.999_999));
        assert!(sample_by_trace_id(low_max, 1.0));
        // Exactly half way.
        let half = TraceId(0x0080_0000_0000_0000);
        assert!(!sample_by_trace_id(half, 0.5));
        assert!(sample_by_trace_id(TraceId(0x007f_ffff_ffff_ffff), 0.5));
        // The high 72 bits don't matter.
        let a = TraceId(0x0000_0000_0000_0000_0012_3456_789a_bcde);
        let b = TraceId(0xabcd_ef01_2345_6789_ab12_3456_789a_bcde);
        for p in [0.01, 0.1, 0.3, 0.5, 0.9] {
            assert_eq!(sample_by_trace_id(a, p), sample_by_trace_id(b, p));
        }
    }

    #[test]
    fn sampling_rate_matches_probability() {
        let mut g = IdGenerator::new(1234);
        let ids: Vec<TraceId> = (0..20_000).map(|_| g.trace_id()).collect();
        for p in [0.01, 0.1, 0.25, 0.5, 0.9] {
            let hits = ids.iter().filter(|id| sample_by_trace_id(**id, p)).count();
            let rate = hits as f64 / ids.len() as f64;
            assert!((rate - p).abs() < 0.02, "p={p} rate={rate}");
        }
        // Monotonic: sampled at p implies sampled at any q > p.
        for id in ids.iter().take(1000) {
            if sample_by_trace_id(*id, 0.2) {
                assert!(sample_by_trace_id(*id, 0.6));
            }
        }
    }
}
