//! Fuzz target `encrypted`: see `mergekv_fuzz::checks::encrypted`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::encrypted(data);
});
