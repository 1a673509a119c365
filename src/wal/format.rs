//! Byte layouts of WAL segments, frames and records (see `docs/FORMAT.md`).
//!
//! Offsets are constants built from each other, so the code and the document
//! can be read side by side. Everything is little-endian.

use crate::clock::NodeId;
use crate::codec::{DecodeError, Reader, Writer};
use crate::crypto::{FileCipher, KEY_BLOCK_BYTES, KeyBlock, TAG_BYTES};

// The frame payload (records and idempotency mark) is the record layer's;
// its limits are format limits of the WAL too.
pub use crate::record::{FRAME_OPS_MAX, FRAME_PAYLOAD_BYTES_MAX};

/// First eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MKVWAL\0\x01";
/// Version of the segment and frame layout described here.
pub const SEGMENT_FORMAT_VERSION: u16 = 1;

/// Byte offset of the magic field in a segment header.
pub const SEGMENT_MAGIC_OFFSET: usize = 0;
/// Byte offset of the version field in a segment header.
pub const SEGMENT_VERSION_OFFSET: usize = SEGMENT_MAGIC_OFFSET + 8;
/// Byte offset of the flags field in a segment header.
pub const SEGMENT_FLAGS_OFFSET: usize = SEGMENT_VERSION_OFFSET + 2;
/// Byte offset of the node field in a segment header.
pub const SEGMENT_NODE_OFFSET: usize = SEGMENT_FLAGS_OFFSET + 2;
/// Byte offset of the first seq field in a segment header.
pub const SEGMENT_FIRST_SEQ_OFFSET: usize = SEGMENT_NODE_OFFSET + 8;
/// Byte offset of the crc field in a segment header.
pub const SEGMENT_CRC_OFFSET: usize = SEGMENT_FIRST_SEQ_OFFSET + 8;
/// Length of a segment header in bytes.
pub const SEGMENT_HEADER_BYTES: usize = SEGMENT_CRC_OFFSET + 4;

/// Byte offset of the payload len field in a frame header.
pub const FRAME_PAYLOAD_LEN_OFFSET: usize = 0;
/// Byte offset of the flags field in a frame header.
pub const FRAME_FLAGS_OFFSET: usize = FRAME_PAYLOAD_LEN_OFFSET + 4;
/// Byte offset of the reserved field in a frame header.
pub const FRAME_RESERVED_OFFSET: usize = FRAME_FLAGS_OFFSET + 2;
/// Byte offset of the first seq field in a frame header.
pub const FRAME_FIRST_SEQ_OFFSET: usize = FRAME_RESERVED_OFFSET + 2;
/// Byte offset of the op count field in a frame header.
pub const FRAME_OP_COUNT_OFFSET: usize = FRAME_FIRST_SEQ_OFFSET + 8;
/// Byte offset of the payload crc field in a frame header.
pub const FRAME_PAYLOAD_CRC_OFFSET: usize = FRAME_OP_COUNT_OFFSET + 4;
/// Byte offset of the header crc field in a frame header.
pub const FRAME_HEADER_CRC_OFFSET: usize = FRAME_PAYLOAD_CRC_OFFSET + 4;
/// Length of a frame header in bytes.
pub const FRAME_HEADER_BYTES: usize = FRAME_HEADER_CRC_OFFSET + 4;

/// Segment flag: this segment was started by a repair, so its first
/// sequence number may lie beyond the end of the previous segment (the
/// numbers of the dropped frames are never reused).
pub const SEGMENT_FLAG_AFTER_REPAIR: u16 = 1;

/// Segment flag: the segment is encrypted. A key block (see
/// `crate::crypto::KeyBlock`) follows the header, and every frame is
/// encrypted under the segment's file key.
pub const SEGMENT_FLAG_ENCRYPTED: u16 = 2;
/// Every segment flag this version knows.
pub const SEGMENT_FLAGS_KNOWN: u16 = SEGMENT_FLAG_AFTER_REPAIR | SEGMENT_FLAG_ENCRYPTED;

/// A segment header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The node that wrote the segment.
    pub node: NodeId,
    /// Sequence number of its first operation.
    pub first_seq: u64,
    /// Segment flags.
    pub flags: u16,
}

/// Frame flag: the payload is encrypted (ciphertext, then the 16-byte
/// tag). Set on every frame of an encrypted segment, on no other.
pub const FRAME_FLAG_ENCRYPTED: u16 = 1;
/// The largest stored payload of an encrypted frame: the payload limit
/// plus the tag.
pub const FRAME_SEALED_PAYLOAD_BYTES_MAX: usize = FRAME_PAYLOAD_BYTES_MAX + TAG_BYTES;
/// A frame's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the payload in bytes.
    pub payload_len: u32,
    /// Frame flags (bit 0: encrypted).
    pub flags: u16,
    /// Sequence number of the frame's first operation.
    pub first_seq: u64,
    /// Operations in the frame.
    pub op_count: u32,
    /// crc32c of the payload.
    pub payload_crc: u32,
}

/// Encodes a segment header.
pub fn encode_segment_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut w = Writer::with_capacity(SEGMENT_HEADER_BYTES);
    w.bytes(&SEGMENT_MAGIC);
    w.u16(SEGMENT_FORMAT_VERSION);
    w.u16(header.flags);
    w.u64(header.node.0);
    w.u64(header.first_seq);
    debug_assert_eq!(w.len(), SEGMENT_CRC_OFFSET);
    let crc = crc32c::crc32c(w.as_slice());
    w.u32(crc);
    debug_assert_eq!(w.len(), SEGMENT_HEADER_BYTES);
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out.copy_from_slice(w.as_slice());
    out
}

/// Decodes a segment header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
    let mut r = Reader::new(bytes);
    let header = r.take(SEGMENT_HEADER_BYTES)?;
    let mut r = Reader::new(header);
    let checked = r.take(SEGMENT_CRC_OFFSET)?;
    let stored_crc = r.u32()?;
    let mut r = Reader::new(checked);
    if r.take(8)? != SEGMENT_MAGIC {
        return Err(Reader::invalid(
            SEGMENT_MAGIC_OFFSET,
            "not a mergekv WAL segment (bad magic)",
        ));
    }
    let version = r.u16()?;
    let flags = r.u16()?;
    let node = NodeId(r.u64()?);
    let first_seq = r.u64()?;
    // The fields fill exactly the bytes the checksum covers.
    debug_assert_eq!(r.remaining(), 0);
    if crc32c::crc32c(checked) != stored_crc {
        return Err(Reader::invalid(
            SEGMENT_CRC_OFFSET,
            "segment header checksum mismatch",
        ));
    }
    if version != SEGMENT_FORMAT_VERSION {
        return Err(Reader::invalid(
            SEGMENT_VERSION_OFFSET,
            format!("unsupported segment format version {version}"),
        ));
    }
    if flags & !SEGMENT_FLAGS_KNOWN != 0 {
        return Err(Reader::invalid(
            SEGMENT_FLAGS_OFFSET,
            format!("unknown segment flags {flags:#x}"),
        ));
    }
    Ok(SegmentHeader {
        node,
        first_seq,
        flags,
    })
}

/// Where frames start in a segment with these header flags: after the
/// header, and after the key block if the segment is encrypted.
pub fn segment_data_start(flags: u16) -> usize {
    if flags & SEGMENT_FLAG_ENCRYPTED != 0 {
        SEGMENT_HEADER_BYTES + KEY_BLOCK_BYTES
    } else {
        SEGMENT_HEADER_BYTES
    }
}

/// The key block of an encrypted segment whose header (already checked)
/// is `header`, read from the segment's first bytes; `Ok(None)` for a
/// segment in clear.
pub fn decode_segment_key_block(
    bytes: &[u8],
    header: &SegmentHeader,
) -> Result<Option<KeyBlock>, DecodeError> {
    if header.flags & SEGMENT_FLAG_ENCRYPTED == 0 {
        return Ok(None);
    }
    let block = bytes
        .get(SEGMENT_HEADER_BYTES..)
        .ok_or_else(|| Reader::invalid(SEGMENT_HEADER_BYTES, "key block cut short"))?;
    KeyBlock::decode(block)
        .map(Some)
        .map_err(|reason| Reader::invalid(SEGMENT_HEADER_BYTES, reason))
}

/// Appends one frame (header + payload) to `out`, in clear.
pub fn encode_frame(out: &mut Vec<u8>, first_seq: u64, op_count: u32, payload: &[u8]) {
    let header = frame_header(
        payload.len(),
        0,
        first_seq,
        op_count,
        crc32c::crc32c(payload),
    );
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// Appends one encrypted frame to `out`: the frame that will start at byte
/// `offset` of the segment whose header is `segment`, encrypted under that
/// segment's `cipher` (nonce: `offset`; associated data: see
/// [`frame_aad`]).
pub fn encode_sealed_frame(
    out: &mut Vec<u8>,
    cipher: &FileCipher,
    segment: &SegmentHeader,
    offset: u64,
    first_seq: u64,
    op_count: u32,
    payload: &[u8],
) {
    let sealed_len = payload.len() + TAG_BYTES;
    // The associated data covers the header fields before the payload
    // checksum, which is computed over the ciphertext afterwards.
    let fields = frame_header(sealed_len, FRAME_FLAG_ENCRYPTED, first_seq, op_count, 0);
    let start = out.len();
    out.reserve(FRAME_HEADER_BYTES + sealed_len);
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let mut body = Vec::with_capacity(sealed_len);
    body.extend_from_slice(payload);
    cipher.seal(offset, &frame_aad(segment, offset, &fields), &mut body);
    let header = frame_header(
        body.len(),
        FRAME_FLAG_ENCRYPTED,
        first_seq,
        op_count,
        crc32c::crc32c(&body),
    );
    if let Some(slot) = out.get_mut(start..start + FRAME_HEADER_BYTES) {
        slot.copy_from_slice(&header);
    }
    out.extend_from_slice(&body);
}

/// Bytes of a WAL frame's associated data.
pub const FRAME_AAD_BYTES: usize = 46;

/// The associated data of the encrypted frame at `offset` of the segment
/// whose header is `segment`: the segment's first sequence number (u64),
/// flags (u16) and node id (u64), the offset (u64), and the frame header's
/// first 20 bytes (length, flags, reserved, first sequence number,
/// operation count). With the segment's own file key and the offset as
/// nonce, a frame moved to another place or another segment, given
/// another header, or in a segment whose header was changed (its
/// `AFTER_REPAIR` flag set to hide a missing segment, say) fails
/// authentication.
pub fn frame_aad(
    segment: &SegmentHeader,
    offset: u64,
    header: &[u8; FRAME_HEADER_BYTES],
) -> [u8; FRAME_AAD_BYTES] {
    let mut aad = [0u8; FRAME_AAD_BYTES];
    aad[..8].copy_from_slice(&segment.first_seq.to_le_bytes());
    aad[8..10].copy_from_slice(&segment.flags.to_le_bytes());
    aad[10..18].copy_from_slice(&segment.node.0.to_le_bytes());
    aad[18..26].copy_from_slice(&offset.to_le_bytes());
    aad[26..].copy_from_slice(&header[..FRAME_PAYLOAD_CRC_OFFSET]);
    aad
}

/// The plaintext payload of the frame read at `offset` of the segment
/// whose header is `segment`: `stored` itself for a frame in clear (which
/// `cipher` must then be `None` for), else decrypted with `cipher`.
/// `Err(reason)` if the frame's flag disagrees with the segment's, or it
/// does not authenticate.
pub fn open_frame_payload(
    cipher: Option<&FileCipher>,
    segment: &SegmentHeader,
    offset: u64,
    header: &FrameHeader,
    stored: &[u8],
) -> Result<Vec<u8>, String> {
    let encrypted = header.flags & FRAME_FLAG_ENCRYPTED != 0;
    match (cipher, encrypted) {
        (None, false) => Ok(stored.to_vec()),
        (None, true) => Err("an encrypted frame in a segment in clear".into()),
        (Some(_), false) => Err("a frame in clear in an encrypted segment".into()),
        (Some(cipher), true) => {
            let fields = frame_header(
                stored.len(),
                header.flags,
                header.first_seq,
                header.op_count,
                0,
            );
            let mut body = stored.to_vec();
            cipher
                .open(offset, &frame_aad(segment, offset, &fields), &mut body)
                .map_err(|e| format!("frame {e}"))?;
            Ok(body)
        }
    }
}

/// A frame header; its checksum covers exactly it.
fn frame_header(
    payload_len: usize,
    flags: u16,
    first_seq: u64,
    op_count: u32,
    payload_crc: u32,
) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = Writer::with_capacity(FRAME_HEADER_BYTES);
    header.u32(payload_len as u32);
    header.u16(flags);
    header.u16(0);
    header.u64(first_seq);
    header.u32(op_count);
    header.u32(payload_crc);
    debug_assert_eq!(header.len(), FRAME_HEADER_CRC_OFFSET);
    let header_crc = crc32c::crc32c(header.as_slice());
    header.u32(header_crc);
    debug_assert_eq!(header.len(), FRAME_HEADER_BYTES);
    let mut out = [0u8; FRAME_HEADER_BYTES];
    out.copy_from_slice(header.as_slice());
    out
}

/// Why a frame could not be read at some offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end before the frame does (a torn write, or damage).
    Incomplete,
    /// The bytes are there but wrong.
    Damaged(String),
}

/// Reads and checks the header of the frame at the start of `bytes` (its
/// checksum and length limit), not its payload.
pub fn decode_frame_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let Some((header_bytes, _)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Incomplete);
    };
    check_frame_header(header_bytes)
}

fn check_frame_header(header_bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    let header =
        parse_frame_header(header_bytes).map_err(|e| FrameError::Damaged(e.to_string()))?;
    // Constant indices into the fixed-size header: in bounds by its type.
    let stored = u32::from_le_bytes([
        header_bytes[FRAME_HEADER_CRC_OFFSET],
        header_bytes[FRAME_HEADER_CRC_OFFSET + 1],
        header_bytes[FRAME_HEADER_CRC_OFFSET + 2],
        header_bytes[FRAME_HEADER_CRC_OFFSET + 3],
    ]);
    if crc32c::crc32c(&header_bytes[..FRAME_HEADER_CRC_OFFSET]) != stored {
        return Err(FrameError::Damaged("frame header checksum mismatch".into()));
    }
    let len = header.payload_len as usize;
    let max = if header.flags & FRAME_FLAG_ENCRYPTED != 0 {
        FRAME_SEALED_PAYLOAD_BYTES_MAX
    } else {
        FRAME_PAYLOAD_BYTES_MAX
    };
    if len > max {
        return Err(FrameError::Damaged(format!(
            "frame payload length {len} exceeds limit"
        )));
    }
    if header.flags & !FRAME_FLAG_ENCRYPTED != 0 {
        return Err(FrameError::Damaged(format!(
            "unknown frame flags {:#x}",
            header.flags
        )));
    }
    Ok(header)
}

/// Reads the frame at the start of `bytes`: its header and payload slice
/// as stored (for an encrypted frame, the ciphertext and tag: see
/// [`open_frame_payload`]), both checksums checked.
pub fn read_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    let Some((header_bytes, rest)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Incomplete);
    };
    let header = check_frame_header(header_bytes)?;
    let len = header.payload_len as usize;
    let Some(payload) = rest.get(..len) else {
        return Err(FrameError::Incomplete);
    };
    if crc32c::crc32c(payload) != header.payload_crc {
        return Err(FrameError::Damaged(
            "frame payload checksum mismatch".into(),
        ));
    }
    Ok((header, payload))
}

fn parse_frame_header(bytes: &[u8]) -> Result<FrameHeader, DecodeError> {
    let mut r = Reader::new(bytes);
    let payload_len = r.u32()?;
    let flags = r.u16()?;
    let _reserved = r.u16()?;
    let first_seq = r.u64()?;
    let op_count = r.u32()?;
    let payload_crc = r.u32()?;
    Ok(FrameHeader {
        payload_len,
        flags,
        first_seq,
        op_count,
        payload_crc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_payload, sample_records};

    #[test]
    fn frame_round_trip_and_damage() {
        let payload = encode_payload(None, &sample_records()).unwrap();
        let mut out = Vec::new();
        encode_frame(&mut out, 42, 3, &payload);
        let (header, body) = read_frame(&out).unwrap();
        assert_eq!(header.first_seq, 42);
        assert_eq!(body, &payload[..]);
        assert_eq!(
            read_frame(&out[..out.len() - 1]),
            Err(FrameError::Incomplete)
        );
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(read_frame(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn segment_header_round_trip() {
        let header = SegmentHeader {
            node: NodeId(5),
            first_seq: 100,
            flags: SEGMENT_FLAG_AFTER_REPAIR,
        };
        let h = encode_segment_header(header);
        assert_eq!(decode_segment_header(&h).unwrap(), header);
        let mut bad = h;
        bad[20] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
    }
}
