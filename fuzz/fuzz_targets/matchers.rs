//! Fuzzes the request matchers: arbitrary regex sources and match specifications compile or
//! fail with a `ConfigError`, and compiled matchers evaluate any request without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm::matching::{compile_regex, MatchSpec, RequestParts};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let source = lines.next().unwrap_or_default();
    let values: Vec<&str> = lines.take(8).collect();
    for ignore_case in [false, true] {
        if let Ok(re) = compile_regex(source, ignore_case, "regex") {
            for v in &values {
                let _ = re.is_match(v);
            }
        }
    }
    if let Ok(spec) = meshwasm::config::parse::<MatchSpec>(source.as_bytes()) {
        if let Ok(m) = spec.compile("match") {
            let get = |i: usize| values.get(i).copied().unwrap_or("");
            let req = RequestParts::new(get(0), get(1))
                .authority(get(2))
                .header(get(3), get(4))
                .route(get(5))
                .cluster(get(6));
            let _ = m.matches(&req);
        }
    }
});
