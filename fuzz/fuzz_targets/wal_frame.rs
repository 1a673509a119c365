//! Fuzz target `wal_frame`: see `mergekv_fuzz::checks::wal_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::wal_frame(data);
});
