//! Fuzz target `cursors`: see `mergekv_fuzz::checks::cursors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::cursors(data);
});
