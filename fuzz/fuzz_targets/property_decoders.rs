//! Fuzzes the decoders of Envoy attribute wire forms, and of header maps as the proxy-wasm ABI
//! returns them (`meshwasm::wire::decode_map`): any bytes give `None` or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm::properties;

fuzz_target!(|data: &[u8]| {
    let _ = properties::decode_pairs(data);
    let _ = meshwasm::wire::decode_map(data);
    let _ = properties::decode_duration(data);
    let _ = properties::decode_timestamp(data);
    let _ = properties::decode_bool(data);
    let _ = properties::decode_string(data);
    let _ = properties::response_flags_short(properties::decode_u64(data).unwrap_or(u64::MAX));
});
