//! Format limits every reader enforces, whatever the writer's configured
//! limits were: a length above one of these is damage, refused before any
//! allocation. `Options` defaults are derived from them.

/// Largest frame payload (one batch's records) a reader accepts.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The fewest bytes a record can take (flags, key length, a one-byte store
/// key), which bounds how many operations a frame can hold.
pub const RECORD_BYTES_MIN: usize = 1 + 4 + 1;
/// Most operations one frame can hold.
pub const FRAME_OPS_MAX: u64 = (FRAME_PAYLOAD_BYTES_MAX / RECORD_BYTES_MIN) as u64;
/// Longest key a reader accepts, whatever the writer's configured limit.
pub const RECORD_KEY_BYTES_MAX: usize = 1024 * 1024;
/// Largest snapshot chunk payload a reader accepts.
pub const CHUNK_PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes of one dedup entry in a snapshot: id, seen time, op count, stamp,
/// first sequence number.
pub const DEDUP_ENTRY_BYTES: usize = 32 + 8 + 4 + 20 + 8;
/// Most dedup entries a snapshot can carry (one chunk), which bounds the
/// dedup window's entry limit.
pub const DEDUP_ENTRIES_MAX: usize = CHUNK_PAYLOAD_BYTES_MAX / DEDUP_ENTRY_BYTES;
