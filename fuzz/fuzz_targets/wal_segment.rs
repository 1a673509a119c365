//! Fuzz target `wal_segment`: see `mergekv_fuzz::checks::wal_segment`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::wal_segment(data);
});
