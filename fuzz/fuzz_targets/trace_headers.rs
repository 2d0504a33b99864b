//! Fuzzes the trace codecs (W3C traceparent, tracestate, baggage; B3 multi and single): no
//! input panics, and whatever parses re-encodes to something that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm::trace::{b3, parse_traceparent, Baggage, TraceState};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let mut next = || parts.next();
    let (tp, ts, bg, single) = (next(), next(), next(), next());
    let (tid, sid, pid, smp, flg) = (next(), next(), next(), next(), next());

    if let Some(v) = tp {
        if let Ok(p) = parse_traceparent(v) {
            let again = parse_traceparent(&p.to_header()).expect("re-encoded traceparent parses");
            assert_eq!(again.trace_id, p.trace_id);
            assert_eq!(again.parent_id, p.parent_id);
        }
    }
    if let Some(v) = ts {
        if let Ok(s) = TraceState::parse(v) {
            let again = TraceState::parse(&s.to_header()).expect("re-encoded tracestate parses");
            assert_eq!(again.members(), s.members());
        }
    }
    if let Some(v) = bg {
        if let Ok(b) = Baggage::parse(v) {
            let again = Baggage::parse(&b.to_header()).expect("re-encoded baggage parses");
            assert_eq!(again.len(), b.len());
        }
    }
    if let Some(v) = single {
        if let Ok(b3::B3Single::Context(c)) = b3::parse_single(v) {
            match b3::parse_single(&b3::format_single(&c)) {
                Ok(b3::B3Single::Context(again)) => {
                    assert_eq!(again.trace_id, c.trace_id);
                    assert_eq!(again.span_id, c.span_id);
                }
                other => panic!("re-encoded b3 did not parse: {other:?}"),
            }
        }
    }
    if let Ok(Some(c)) = b3::parse_multi(tid, sid, pid, smp, flg) {
        let headers = b3::multi_headers(&c);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        let again = b3::parse_multi(
            get("x-b3-traceid"),
            get("x-b3-spanid"),
            get("x-b3-parentspanid"),
            get("x-b3-sampled"),
            get("x-b3-flags"),
        );
        assert!(matches!(again, Ok(Some(_))), "{again:?}");
    }
    let _ = b3::parse_multi_sampling(smp, flg);
});
