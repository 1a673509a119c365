//! The replication wire frame: a 16-byte header, then the payload.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | payload length in bytes (at most [`FRAME_PAYLOAD_BYTES_MAX`]) |
//! | 4 | 1 | kind ([`FrameKind`]) |
//! | 5 | 1 | flags (0) |
//! | 6 | 2 | reserved (0) |
//! | 8 | 4 | CRC-32C of the payload |
//! | 12 | 4 | CRC-32C of bytes 0..12 |
//!
//! The header has its own checksum, so a damaged or hostile length is
//! refused before a single payload byte is read or allocated.

use std::io::{Read, Write};

use super::ProtocolError;

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Largest payload a frame may carry: room for a BATCH holding the largest
/// WAL frame the leader can write (a WAL frame is shipped whole, so the
/// follower can apply it atomically), plus the BATCH fields.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = crate::wal::format::FRAME_PAYLOAD_BYTES_MAX
    + crate::wal::format::FRAME_HEADER_BYTES
    + BATCH_FIELDS_BYTES_MAX
    + SEALING_BYTES_MAX;
/// What sealing that batch adds (an encrypted leader's): the sealed
/// object's header and a tag per chunk.
const SEALING_BYTES_MAX: usize = crate::crypto::sealed::SEALED_HEADER_BYTES
    + crate::crypto::TAG_BYTES
        * (crate::wal::format::FRAME_PAYLOAD_BYTES_MAX
            / crate::crypto::sealed::SEALED_CHUNK_BYTES as usize
            + 2);
/// Room for a BATCH's own fields before its WAL frames.
const BATCH_FIELDS_BYTES_MAX: usize = 64;
/// The payload buffer grows by at most this much ahead of the bytes that
/// actually arrived, so a peer announcing a large frame and sending little
/// costs little memory.
const PAYLOAD_READ_STEP_BYTES: usize = 1024 * 1024;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Follower → leader: version, follower id, token, cursor.
    Hello = 1,
    /// Leader → follower: version, stream, epoch, what follows.
    Welcome = 2,
    /// Leader → follower: a snapshot transfer starts.
    SnapshotBegin = 3,
    /// Leader → follower: snapshot bytes.
    SnapshotChunk = 4,
    /// Leader → follower: the snapshot is complete; its digest.
    SnapshotEnd = 5,
    /// Leader → follower: consecutive WAL frames.
    Batch = 6,
    /// Leader → follower: the leader's durable position, when idle.
    Heartbeat = 7,
    /// Follower → leader: what the follower has made durable.
    Ack = 8,
    /// Either way: why the sender is closing the connection.
    Error = 9,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        use FrameKind as K;
        [
            K::Hello,
            K::Welcome,
            K::SnapshotBegin,
            K::SnapshotChunk,
            K::SnapshotEnd,
            K::Batch,
            K::Heartbeat,
            K::Ack,
            K::Error,
        ]
        .into_iter()
        .find(|k| *k as u8 == byte)
    }
}

/// One frame: its kind and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The kind.
    pub kind: FrameKind,
    /// The payload (decoded by [`super::message`]).
    pub payload: Vec<u8>,
}

/// Encodes a frame: header then payload. Refuses payloads over the limit.
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    if payload.len() > FRAME_PAYLOAD_BYTES_MAX {
        return Err(ProtocolError::Oversized {
            bytes: payload.len() as u64,
            limit: FRAME_PAYLOAD_BYTES_MAX as u64,
        });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    // The header checksum covers the 12 bytes written so far.
    debug_assert_eq!(out.len(), 12);
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(out.len(), FRAME_HEADER_BYTES);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks a header; returns the kind and payload length.
pub fn decode_header(
    header: &[u8; FRAME_HEADER_BYTES],
) -> Result<(FrameKind, usize, u32), ProtocolError> {
    // Constant indices into the fixed-size header: in bounds by its type.
    let stored_crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if crc32c::crc32c(&header[..12]) != stored_crc {
        return Err(ProtocolError::Checksum {
            what: "frame header",
        });
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(ProtocolError::Oversized {
            bytes: len as u64,
            limit: FRAME_PAYLOAD_BYTES_MAX as u64,
        });
    }
    if header[5] != 0 || header[6] != 0 || header[7] != 0 {
        return Err(ProtocolError::Malformed {
            reason: "nonzero flags or reserved bytes in a frame header".into(),
        });
    }
    let kind = FrameKind::from_byte(header[4]).ok_or_else(|| ProtocolError::Malformed {
        reason: format!("unknown frame kind {}", header[4]),
    })?;
    let payload_crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    Ok((kind, len, payload_crc))
}

/// Reads one whole frame from `r`, checking both checksums. Reads at most
/// the header plus [`FRAME_PAYLOAD_BYTES_MAX`] bytes, however long the
/// stream claims the frame is.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, ProtocolError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    r.read_exact(&mut header).map_err(ProtocolError::io)?;
    let (kind, len, payload_crc) = decode_header(&header)?;
    let mut payload = Vec::with_capacity(len.min(PAYLOAD_READ_STEP_BYTES));
    r.take(len as u64)
        .read_to_end(&mut payload)
        .map_err(ProtocolError::io)?;
    if payload.len() != len {
        return Err(ProtocolError::io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame payload cut at {} of {len} bytes", payload.len()),
        )));
    }
    if crc32c::crc32c(&payload) != payload_crc {
        return Err(ProtocolError::Checksum {
            what: "frame payload",
        });
    }
    Ok(Frame { kind, payload })
}

/// Writes one frame to `w`.
pub fn write_frame(
    w: &mut impl Write,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    let bytes = encode_frame(kind, payload)?;
    w.write_all(&bytes).map_err(ProtocolError::io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let bytes = encode_frame(FrameKind::Ack, b"payload").unwrap();
        let frame = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(frame.kind, FrameKind::Ack);
        assert_eq!(frame.payload, b"payload");
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let bytes = encode_frame(FrameKind::Batch, b"some payload bytes").unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(read_frame(&mut &bad[..]).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn a_4_gib_length_is_refused_without_reading_on() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        header[4] = FrameKind::Batch as u8;
        let crc = crc32c::crc32c(&header[..12]);
        header[12..].copy_from_slice(&crc.to_le_bytes());
        // Valid header checksum, absurd length: refused on the length.
        assert!(matches!(
            read_frame(&mut &header[..]),
            Err(ProtocolError::Oversized { .. })
        ));
        assert!(encode_frame(FrameKind::Batch, &vec![0; FRAME_PAYLOAD_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn a_truncated_frame_is_an_io_error_not_a_panic() {
        let bytes = encode_frame(FrameKind::Hello, b"hello").unwrap();
        for cut in 0..bytes.len() {
            assert!(read_frame(&mut &bytes[..cut]).is_err());
        }
    }
}
