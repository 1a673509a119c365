//! Fuzz target `change_stream`: see `mergekv_fuzz::checks::change_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::change_stream(data);
});
