//! The wasm unit tier: a representative set of the trace codec tests (W3C Trace Context
//! traceparent/tracestate, openzipkin b3-propagation, W3C Baggage, ids and sampling) and of the
//! ABI's header-map decoding (`meshwasm::wire`), compiled to wasm32-unknown-unknown and run under
//! node by wasm-bindgen-test, to prove the pure blocks behave the same in wasm32 as natively
//! (u128 arithmetic, float casts, string handling, 32-bit `usize` length arithmetic).
//!
//! Run with `cargo xtask` (see `xtask/src/wasm_test.rs`) or by hand:
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=target/tools/bin/wasm-bindgen-test-runner
//! cargo test -p meshwasm --target wasm32-unknown-unknown --test wasm_codecs`.
//! On any other target this file compiles to nothing.

#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)]

use meshwasm::trace::b3::{self, B3Single, Sampling};
use meshwasm::trace::w3c::{MAX_TRACESTATE_LEN, MAX_TRACESTATE_LIST_LEN};
use meshwasm::trace::{
    parse_traceparent, sample_by_trace_id, Baggage, IdGenerator, SpanId, TraceError, TraceId,
    TraceState,
};
use wasm_bindgen_test::wasm_bindgen_test;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[wasm_bindgen_test]
fn traceparent_valid_round_trip() {
    let p = parse_traceparent(VALID).unwrap();
    assert_eq!(p.trace_id, TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736));
    assert_eq!(p.parent_id, SpanId(0x00f067aa0ba902b7));
    assert!(p.sampled());
    assert!(!p.random());
    assert_eq!(p.to_header(), VALID);
    let p = parse_traceparent(&format!("\t {VALID} \t")).unwrap();
    assert_eq!(p.to_header(), VALID);
    let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra";
    let p = parse_traceparent(future).unwrap();
    assert_eq!(p.version, 0xcc);
    assert!(p.random());
    assert_eq!(
        p.to_header(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
    );
}

#[wasm_bindgen_test]
fn traceparent_invalid() {
    let cases = [
        (
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            TraceError::TraceparentVersion,
        ),
        (
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            TraceError::TraceparentVersion,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.",
            TraceError::TraceparentLength,
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            TraceError::TraceparentFormat,
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            TraceError::TraceparentZeroTraceId,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            TraceError::TraceparentZeroParentId,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            TraceError::TraceparentFlags,
        ),
        (
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x",
            TraceError::TraceparentFormat,
        ),
    ];
    for (v, want) in cases {
        assert_eq!(parse_traceparent(v), Err(want), "{v}");
    }
    assert_eq!(TraceError::TraceparentLength.reason(), "traceparent_length");
}

#[wasm_bindgen_test]
fn tracestate_limits() {
    let members: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
    let s = TraceState::parse(&members.join(" ,\t")).unwrap();
    assert_eq!(s.len(), 32);
    assert_eq!(s.to_header(), members.join(","));
    let over = format!("{},bar33=33", members.join(","));
    assert_eq!(
        TraceState::parse(&over),
        Err(TraceError::TracestateTooManyMembers)
    );
    assert!(TraceState::parse(&format!("{}@{}=1", "t".repeat(241), "v".repeat(14))).is_ok());
    assert_eq!(
        TraceState::parse(&format!("{}=1", "z".repeat(257))),
        Err(TraceError::TracestateKey)
    );
    assert_eq!(
        TraceState::parse("foo=bar=baz"),
        Err(TraceError::TracestateValue)
    );
    // A duplicate key keeps the header and its left-most entry ("Combined Header Value",
    // "Mutating the tracestate Field").
    let (s, dropped) = TraceState::parse_detailed("foo=1,bar=2,foo=2").unwrap();
    assert_eq!(s.to_header(), "foo=1,bar=2");
    assert_eq!(dropped.duplicate_keys, 1);
    assert_eq!(
        TraceState::parse(&",".repeat(MAX_TRACESTATE_LEN + 1)),
        Err(TraceError::TracestateTooLong)
    );
    assert!(TraceState::parse(&",".repeat(9000)).unwrap().is_empty());
    assert!(TraceState::parse(",,").unwrap().is_empty());
}

/// W3C Trace Context Level 2, "Key": `( lcalpha / DIGIT ) 0*255 ( keychar )` with `@` a
/// keychar; an invalid member drops the header (Processing Model, and the W3C test suite).
#[wasm_bindgen_test]
fn tracestate_level2_keys_and_per_case_handling() {
    for v in [
        "foo@=1,bar=2",
        "foo@@bar=1,bar=2",
        "foo@bar@baz=1,bar=2",
        "1a@b=1",
    ] {
        assert_eq!(TraceState::parse(v).unwrap().to_header(), v, "{v}");
    }
    let long_system = format!("t@{}=1", "v".repeat(15));
    assert_eq!(TraceState::parse(&long_system).unwrap().len(), 1);
    for (v, want) in [
        ("@foo=1,bar=2", TraceError::TracestateKey),
        ("foo=,bar=3", TraceError::TracestateValue),
        ("foo.bar=1", TraceError::TracestateKey),
    ] {
        assert_eq!(TraceState::parse(v), Err(want), "{v}");
    }
    // The longest list the grammar allows (16447 bytes) is read whole.
    let members: Vec<String> = (0..32)
        .map(|i| format!("{:0>256}={}", i, "v".repeat(256)))
        .collect();
    let longest = members.join(",");
    assert_eq!(longest.len(), MAX_TRACESTATE_LIST_LEN);
    assert_eq!(TraceState::parse(&longest).unwrap().to_header(), longest);
}

#[wasm_bindgen_test]
fn b3_multi_and_single() {
    let b = b3::parse_multi(
        Some("463ac35c9f6413ad48485a3953bb6124"),
        Some("a2fb4a1d1a96d312"),
        Some("0020000000000001"),
        Some("true"),
        None,
    )
    .unwrap()
    .unwrap();
    assert_eq!(b.sampling, Sampling::Accept);
    assert_eq!(
        b3::format_single(&b),
        "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-0020000000000001"
    );
    let b = b3::parse_multi(
        Some("48485a3953bb6124"),
        Some("a2fb4a1d1a96d312"),
        None,
        None,
        Some("1"),
    )
    .unwrap()
    .unwrap();
    assert!(b.trace_id_64bit);
    assert_eq!(
        b3::multi_headers(&b),
        vec![
            ("x-b3-traceid", "48485a3953bb6124".to_string()),
            ("x-b3-spanid", "a2fb4a1d1a96d312".to_string()),
            ("x-b3-flags", "1".to_string()),
        ]
    );
    assert_eq!(b3::parse_multi(None, None, None, Some("1"), None), Ok(None));
    assert_eq!(
        b3::parse_multi(Some("48485a3953bb6124"), None, None, None, None),
        Err(TraceError::B3SpanId)
    );
    assert_eq!(
        b3::parse_multi_sampling(Some("0"), None),
        Ok(Sampling::Deny)
    );
    assert_eq!(
        b3::parse_multi_sampling(None, Some("0")),
        Err(TraceError::B3Flags)
    );
    assert_eq!(
        b3::parse_single("d"),
        Ok(B3Single::SamplingOnly(Sampling::Debug))
    );
    let single = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d";
    let B3Single::Context(b) = b3::parse_single(single).unwrap() else {
        panic!("not a context");
    };
    assert_eq!(b.sampling, Sampling::Debug);
    assert_eq!(b3::format_single(&b), single);
    assert_eq!(
        b3::parse_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x"),
        Err(TraceError::B3Sampled)
    );
    assert_eq!(b3::parse_single("2"), Err(TraceError::B3SingleFormat));
}

#[wasm_bindgen_test]
fn baggage_parse_and_limits() {
    let b = Baggage::parse("userId=alice, serverNode = DF%2028;p;q=1,isProduction=false").unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(b.get("serverNode"), Some("DF 28"));
    assert_eq!(
        b.to_header(),
        "userId=alice,serverNode=DF%2028;p;q=1,isProduction=false"
    );
    assert_eq!(Baggage::parse("k=%E2%82%AC").unwrap().get("k"), Some("€"));
    assert_eq!(Baggage::parse("novalue"), Err(TraceError::BaggageFormat));
    assert_eq!(Baggage::parse("k=a b"), Err(TraceError::BaggageValue));
    let at_limit = format!("a={}", "0123456789".repeat(819));
    assert!(Baggage::parse(&at_limit).is_ok());
    assert_eq!(
        Baggage::parse(&format!("{at_limit}x")),
        Err(TraceError::BaggageTooLong)
    );
    let many: Vec<String> = (0..181).map(|i| format!("k{i}=v")).collect();
    assert_eq!(
        Baggage::parse(&many.join(",")),
        Err(TraceError::BaggageTooManyMembers)
    );
}

#[wasm_bindgen_test]
fn sampling_is_deterministic() {
    let id = TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert!(!sample_by_trace_id(id, 0.0));
    assert!(sample_by_trace_id(id, 1.0));
    // Same answer for ids that differ only above the low 56 bits.
    let other = TraceId(id.0 ^ (0x00ff_ffff_ffff_ffff_ffff << 56));
    for p in [0.001, 0.1, 0.5, 0.66, 0.99] {
        assert_eq!(sample_by_trace_id(id, p), sample_by_trace_id(other, p));
    }
    assert!(!sample_by_trace_id(TraceId(0x0080_0000_0000_0000), 0.5));
    assert!(sample_by_trace_id(TraceId(0x007f_ffff_ffff_ffff), 0.5));
    let mut g = IdGenerator::new(99);
    let hits = (0..10_000)
        .filter(|_| sample_by_trace_id(g.trace_id(), 0.25))
        .count();
    assert!((2_200..2_800).contains(&hits), "{hits}");
}

#[wasm_bindgen_test]
fn id_generation_is_non_zero_and_reproducible() {
    let mut a = IdGenerator::new(0);
    let mut b = IdGenerator::new(0);
    for _ in 0..1_000 {
        let (t, s) = (a.trace_id(), a.span_id());
        assert_ne!(t.0, 0);
        assert_ne!(s.0, 0);
        assert_eq!(t, b.trace_id());
        assert_eq!(s, b.span_id());
        assert_eq!(TraceId::from_hex(&t.to_hex()), Some(t));
        assert_eq!(SpanId::from_hex(&s.to_hex()), Some(s));
    }
    assert_eq!(TraceId(1).low_hex(), "0000000000000001");
    assert!(TraceId(1).is_64bit());
}

/// A header map in the ABI's wire form, names as raw bytes.
fn wire_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
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

#[wasm_bindgen_test]
fn header_maps_decode_totally() {
    use meshwasm::wire::{decode_map, encode_map, DecodedMap};
    let pairs: &[(&str, &[u8])] = &[(":method", b"GET"), ("x-bin", b"\xff\x00"), ("", b"")];
    let bytes = encode_map(pairs).unwrap();
    let owned: Vec<(String, Vec<u8>)> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    assert_eq!(
        decode_map(&bytes),
        DecodedMap {
            pairs: owned.clone(),
            lossy_names: 0,
            malformed: false
        }
    );
    assert_eq!(decode_map(&[]), DecodedMap::default());
    // Names that are not UTF-8: kept lossy, counted.
    let lossy = decode_map(&wire_map(&[(b"x-\xff", b"1"), (b"ok", b"\xfe")]));
    assert_eq!(lossy.pairs[0].0, "x-\u{fffd}");
    assert_eq!(lossy.pairs[1], ("ok".to_string(), b"\xfe".to_vec()));
    assert_eq!((lossy.lossy_names, lossy.malformed), (1, false));
    // Every truncation: the whole pairs before it, flagged.
    for len in 1..bytes.len() {
        let cut = decode_map(&bytes[..len]);
        assert!(cut.malformed, "{len}");
        assert!(owned.starts_with(&cut.pairs), "{len}");
    }
    // Counts whose length table overflows a 32-bit usize (0x2000_0000 * 8 = 2^32), or does not
    // fit: nothing allocated, nothing returned.
    for count in [u32::MAX, 0x2000_0000, 0x2000_0001, 0x1fff_ffff] {
        let mut huge = count.to_le_bytes().to_vec();
        huge.extend_from_slice(&bytes[4..]);
        let decoded = decode_map(&huge);
        assert!(decoded.malformed && decoded.pairs.is_empty(), "{count:#x}");
    }
    // A name length that wraps a 32-bit offset.
    let mut wraps = bytes.clone();
    wraps[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let decoded = decode_map(&wraps);
    assert!(decoded.malformed && decoded.pairs.is_empty());
    assert_eq!(meshwasm::wire::encode_path(&["a", "b"]), b"a\0b");
    assert_eq!(
        meshwasm::wire::Status::check(12),
        Err(meshwasm::wire::Status::Unimplemented)
    );
}
