//! Fuzz target `meta`: see `mergekv_fuzz::checks::meta`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::meta(data);
});
