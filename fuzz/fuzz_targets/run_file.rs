//! Fuzz target `run_file`: see `mergekv_fuzz::checks::run_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::run_file(data);
});
