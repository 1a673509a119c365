//! Fuzz target `api_token`: see `mergekv_fuzz::checks::api_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::api_token(data);
});
