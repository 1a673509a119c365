//! Fuzz target `repl_message`: see `mergekv_fuzz::checks::repl_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::repl_message(data);
});
