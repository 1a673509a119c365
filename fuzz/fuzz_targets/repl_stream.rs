//! Fuzz target `repl_stream`: see `mergekv_fuzz::checks::repl_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::repl_stream(data);
});
