//! Fuzz target `snapshot`: see `mergekv_fuzz::checks::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::snapshot(data);
});
