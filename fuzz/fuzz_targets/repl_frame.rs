//! Fuzz target `repl_frame`: see `mergekv_fuzz::checks::repl_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::repl_frame(data);
});
