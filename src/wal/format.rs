//! Byte layouts of WAL segments, frames and records (see `docs/FORMAT.md`).
//!
//! Offsets are constants built from each other, so the code and the document
//! can be read side by side. Everything is little-endian.

use std::sync::Arc;

use crate::clock::{NodeId, Stamp};
use crate::codec::{DecodeError, Reader, Writer};
use crate::crdt::{Counter, KeyState, NodeTotals, Register};
use crate::error::{Error, Result};
use crate::state::StoreKey;

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

/// Frame flag bit reserved for encryption at rest; no frame sets it yet.
pub const FRAME_FLAG_ENCRYPTED: u16 = 1;
/// Largest frame payload a reader accepts; a length above it is damage.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The fewest bytes a record can take (flags, key length, a one-byte store
/// key), which bounds how many operations a frame can hold.
pub const RECORD_BYTES_MIN: usize = 1 + 4 + 1;
/// Most operations one frame can hold.
pub const FRAME_OPS_MAX: u64 = (FRAME_PAYLOAD_BYTES_MAX / RECORD_BYTES_MIN) as u64;
/// Longest key a reader accepts, whatever the writer's configured limit.
pub const RECORD_KEY_BYTES_MAX: usize = 1024 * 1024;

const PAYLOAD_HAS_DEDUP_ID: u8 = 1;
const RECORD_HAS_REGISTER: u8 = 1;
const RECORD_HAS_VALUE: u8 = 2;
const RECORD_HAS_COUNTER: u8 = 4;
const STAMP_BYTES: usize = 20;

/// One key's change: the CRDT fragment to merge into that key's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The store key (keyspace prefix + key).
    pub store_key: StoreKey,
    /// What to merge.
    pub delta: KeyState,
}

/// A batch's idempotency mark, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupMark {
    /// blake3 of the batch's idempotency key.
    pub id: [u8; 32],
    /// Local wall time when the batch was received, in ms since the epoch.
    pub seen_ms: u64,
}

/// The decoded payload of one frame: one atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramePayload {
    /// The batch's idempotency mark, if it had a key.
    pub dedup: Option<DedupMark>,
    /// The batch's records, one per operation.
    pub records: Vec<Record>,
}

/// A frame's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the payload in bytes.
    pub payload_len: u32,
    /// Frame flags (bit 0: encrypted, reserved).
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
    let crc = crc32c::crc32c(w.as_slice());
    w.u32(crc);
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out.copy_from_slice(w.as_slice());
    out
}

/// Decodes a segment header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
    let mut r = Reader::new(bytes);
    let header = r.take(SEGMENT_HEADER_BYTES)?;
    let mut r = Reader::new(header);
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
    let stored_crc = r.u32()?;
    if crc32c::crc32c(&header[..SEGMENT_CRC_OFFSET]) != stored_crc {
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
    if flags & !SEGMENT_FLAG_AFTER_REPAIR != 0 {
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

/// Appends one frame (header + payload) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, first_seq: u64, op_count: u32, payload: &[u8]) {
    let mut w = Writer::from_vec(std::mem::take(out));
    let start = w.len();
    w.u32(payload.len() as u32);
    w.u16(0);
    w.u16(0);
    w.u64(first_seq);
    w.u32(op_count);
    w.u32(crc32c::crc32c(payload));
    let header_crc = crc32c::crc32c(&w.as_slice()[start..]);
    w.u32(header_crc);
    w.bytes(payload);
    *out = w.into_vec();
}

/// Why a frame could not be read at some offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end before the frame does (a torn write, or damage).
    Incomplete,
    /// The bytes are there but wrong.
    Damaged(String),
}

/// Reads the frame at the start of `bytes`: its header and payload slice.
pub fn read_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Incomplete);
    }
    let header_bytes = &bytes[..FRAME_HEADER_BYTES];
    let header =
        parse_frame_header(header_bytes).map_err(|e| FrameError::Damaged(e.to_string()))?;
    let stored = u32::from_le_bytes(field4(header_bytes, FRAME_HEADER_CRC_OFFSET));
    if crc32c::crc32c(&header_bytes[..FRAME_HEADER_CRC_OFFSET]) != stored {
        return Err(FrameError::Damaged("frame header checksum mismatch".into()));
    }
    let len = header.payload_len as usize;
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(FrameError::Damaged(format!(
            "frame payload length {len} exceeds limit"
        )));
    }
    if header.flags & FRAME_FLAG_ENCRYPTED != 0 {
        return Err(FrameError::Damaged(
            "encrypted frames are not supported by this version".into(),
        ));
    }
    let end = FRAME_HEADER_BYTES + len;
    if bytes.len() < end {
        return Err(FrameError::Incomplete);
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end];
    if crc32c::crc32c(payload) != header.payload_crc {
        return Err(FrameError::Damaged(
            "frame payload checksum mismatch".into(),
        ));
    }
    Ok((header, payload))
}

fn field4(bytes: &[u8], offset: usize) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&bytes[offset..offset + 4]);
    out
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

/// Encodes a frame payload.
///
/// `dedup` is the batch's dedup id and the local time it was received,
/// from which the dedup window measures its age. Fails if the payload would
/// exceed [`FRAME_PAYLOAD_BYTES_MAX`].
pub fn encode_payload(dedup: Option<(&[u8; 32], u64)>, records: &[Record]) -> Result<Vec<u8>> {
    let estimate: usize = records.iter().map(record_size_estimate).sum();
    let mut w = Writer::with_capacity(1 + 40 + estimate);
    match dedup {
        Some((id, seen_ms)) => {
            w.u8(PAYLOAD_HAS_DEDUP_ID);
            w.bytes(id);
            w.u64(seen_ms);
        }
        None => w.u8(0),
    }
    for record in records {
        encode_record(&mut w, record);
    }
    if w.len() > FRAME_PAYLOAD_BYTES_MAX {
        return Err(Error::limit(
            "frame_payload_bytes_max",
            w.len(),
            FRAME_PAYLOAD_BYTES_MAX,
        ));
    }
    Ok(w.into_vec())
}

fn record_size_estimate(record: &Record) -> usize {
    let value = record
        .delta
        .register
        .as_ref()
        .and_then(|r| r.value.as_ref())
        .map_or(0, |v| v.len());
    1 + 4 + record.store_key.len() + STAMP_BYTES + 4 + value + 4
}

/// Decodes a frame payload holding `op_count` records.
pub fn decode_payload(bytes: &[u8], op_count: u32) -> Result<FramePayload, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    if flags & !PAYLOAD_HAS_DEDUP_ID != 0 {
        return Err(Reader::invalid(
            0,
            format!("unknown payload flags {flags:#x}"),
        ));
    }
    let dedup = if flags & PAYLOAD_HAS_DEDUP_ID != 0 {
        let mut id = [0u8; 32];
        id.copy_from_slice(r.take(32)?);
        Some(DedupMark {
            id,
            seen_ms: r.u64()?,
        })
    } else {
        None
    };
    let records = decode_records_to_end(&mut r, u64::from(op_count))?;
    Ok(FramePayload { dedup, records })
}

/// Decodes exactly `count` records that must fill the rest of `r`. A count
/// that cannot fit is damage; refusing it first keeps the allocation bounded.
pub fn decode_records_to_end(r: &mut Reader<'_>, count: u64) -> Result<Vec<Record>, DecodeError> {
    if count > (r.remaining() / RECORD_BYTES_MIN) as u64 {
        return Err(Reader::invalid(
            r.position(),
            format!("record count {count} does not fit"),
        ));
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        records.push(decode_record(r)?);
    }
    if r.remaining() != 0 {
        return Err(Reader::invalid(
            r.position(),
            "trailing bytes after the last record",
        ));
    }
    Ok(records)
}

/// Encodes a stamp (20 bytes).
pub fn encode_stamp(w: &mut Writer, stamp: Stamp) {
    w.u64(stamp.physical_ms);
    w.u32(stamp.logical);
    w.u64(stamp.node.0);
}

/// Decodes a stamp.
pub fn decode_stamp(r: &mut Reader<'_>) -> Result<Stamp, DecodeError> {
    Ok(Stamp {
        physical_ms: r.u64()?,
        logical: r.u32()?,
        node: NodeId(r.u64()?),
    })
}

/// Encodes one record.
pub fn encode_record(w: &mut Writer, record: &Record) {
    let delta = &record.delta;
    let mut flags = 0u8;
    if let Some(reg) = &delta.register {
        flags |= RECORD_HAS_REGISTER;
        if reg.value.is_some() {
            flags |= RECORD_HAS_VALUE;
        }
    }
    if delta.counter.is_some() {
        flags |= RECORD_HAS_COUNTER;
    }
    w.u8(flags);
    w.len_prefixed(&record.store_key);
    if let Some(reg) = &delta.register {
        encode_stamp(w, reg.stamp);
        if let Some(value) = &reg.value {
            w.len_prefixed(value);
        }
        encode_floor(w, &reg.floor);
    }
    if let Some(counter) = &delta.counter {
        encode_counter(w, counter);
    }
}

fn encode_floor(w: &mut Writer, floor: &[(NodeId, u64, u64)]) {
    // Floors and counters never reach 65,535 nodes: each node is a copy.
    w.u16(floor.len() as u16);
    for &(node, p, n) in floor {
        w.u64(node.0);
        w.u64(p);
        w.u64(n);
    }
}

fn encode_counter(w: &mut Writer, counter: &Counter) {
    w.u16(counter.totals.len() as u16);
    for t in &counter.totals {
        w.u64(t.node.0);
        w.u64(t.p);
        w.u64(t.n);
        encode_stamp(w, t.stamp);
    }
}

/// Decodes one record.
pub fn decode_record(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
    let at = r.position();
    let flags = r.u8()?;
    if flags & !(RECORD_HAS_REGISTER | RECORD_HAS_VALUE | RECORD_HAS_COUNTER) != 0
        || (flags & RECORD_HAS_VALUE != 0 && flags & RECORD_HAS_REGISTER == 0)
        || flags == 0
    {
        return Err(Reader::invalid(
            at,
            format!("invalid record flags {flags:#x}"),
        ));
    }
    let store_key = StoreKey::from(r.len_prefixed(RECORD_KEY_BYTES_MAX, "key")?);
    if crate::command::split_store_key(&store_key).is_none() {
        return Err(Reader::invalid(
            at,
            "record key has no valid keyspace prefix",
        ));
    }
    let register = if flags & RECORD_HAS_REGISTER != 0 {
        let stamp = decode_stamp(r)?;
        let value = if flags & RECORD_HAS_VALUE != 0 {
            Some(Arc::from(r.len_prefixed(FRAME_PAYLOAD_BYTES_MAX, "value")?))
        } else {
            None
        };
        Some(Register {
            stamp,
            value,
            floor: decode_floor(r)?,
        })
    } else {
        None
    };
    let counter = if flags & RECORD_HAS_COUNTER != 0 {
        Some(Box::new(decode_counter(r)?))
    } else {
        None
    };
    Ok(Record {
        store_key,
        delta: KeyState { register, counter },
    })
}

fn decode_floor(r: &mut Reader<'_>) -> Result<Vec<(NodeId, u64, u64)>, DecodeError> {
    let at = r.position();
    let count = usize::from(r.u16()?);
    let mut floor = Vec::with_capacity(count.min(r.remaining() / 24));
    for _ in 0..count {
        floor.push((NodeId(r.u64()?), r.u64()?, r.u64()?));
    }
    if !floor.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(Reader::invalid(
            at,
            "floor nodes are not strictly increasing",
        ));
    }
    Ok(floor)
}

fn decode_counter(r: &mut Reader<'_>) -> Result<Counter, DecodeError> {
    let at = r.position();
    let count = usize::from(r.u16()?);
    let mut totals = Vec::with_capacity(count.min(r.remaining() / 44));
    for _ in 0..count {
        let node = NodeId(r.u64()?);
        let p = r.u64()?;
        let n = r.u64()?;
        let stamp = decode_stamp(r)?;
        totals.push(NodeTotals { node, p, n, stamp });
    }
    // A counter part exists only with totals; an empty one would make two
    // equal states encode (and digest) differently.
    if totals.is_empty() {
        return Err(Reader::invalid(at, "counter part without totals"));
    }
    if !totals.windows(2).all(|w| w[0].node < w[1].node) {
        return Err(Reader::invalid(
            at,
            "counter nodes are not strictly increasing",
        ));
    }
    Ok(Counter { totals })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::store_key;

    fn sample_records() -> Vec<Record> {
        let stamp = Stamp {
            physical_ms: 7,
            logical: 1,
            node: NodeId(3),
        };
        vec![
            Record {
                store_key: store_key("default", b"a"),
                delta: KeyState {
                    register: Some(Register {
                        stamp,
                        value: Some(Arc::from(&b"value"[..])),
                        floor: vec![(NodeId(1), 2, 3)],
                    }),
                    counter: None,
                },
            },
            Record {
                store_key: store_key("default", b"b"),
                delta: KeyState {
                    register: None,
                    counter: Some(Box::new(Counter {
                        totals: vec![NodeTotals {
                            node: NodeId(3),
                            p: 10,
                            n: 4,
                            stamp,
                        }],
                    })),
                },
            },
            Record {
                store_key: store_key("ks", b"c"),
                delta: KeyState {
                    register: Some(Register {
                        stamp,
                        value: None,
                        floor: Vec::new(),
                    }),
                    counter: None,
                },
            },
        ]
    }

    #[test]
    fn payload_round_trip() {
        let records = sample_records();
        let id = [9u8; 32];
        let bytes = encode_payload(Some((&id, 77)), &records).unwrap();
        let decoded = decode_payload(&bytes, 3).unwrap();
        assert_eq!(decoded.dedup, Some(DedupMark { id, seen_ms: 77 }));
        assert_eq!(decoded.records, records);
    }

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

    #[test]
    fn payload_decoder_survives_every_truncation() {
        let bytes = encode_payload(None, &sample_records()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode_payload(&bytes[..len], 3).is_err());
        }
    }
}
