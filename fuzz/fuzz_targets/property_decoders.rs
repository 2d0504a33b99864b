//! Fuzzes the decoders of Envoy attribute wire forms: any bytes give `None` or a value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm::properties;

fuzz_target!(|data: &[u8]| {
    let _ = properties::decode_pairs(data);
    let _ = properties::decode_duration(data);
    let _ = properties::decode_timestamp(data);
    let _ = properties::decode_bool(data);
    let _ = properties::decode_string(data);
    let _ = properties::response_flags_short(properties::decode_u64(data).unwrap_or(u64::MAX));
});
