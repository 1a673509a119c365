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
