//! Fuzz target `salvage`: see `mergekv_fuzz::checks::salvage`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::salvage(data);
});
