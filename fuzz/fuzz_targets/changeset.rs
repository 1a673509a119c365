//! Fuzz target `changeset`: see `mergekv_fuzz::checks::changeset`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mergekv_fuzz::checks::changeset(data);
});
