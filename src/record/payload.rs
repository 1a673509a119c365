//! The payload of one WAL frame: an optional idempotency mark and the
//! records of one atomic batch (see `docs/FORMAT.md`, "Frame payload").

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result};

use super::Record;
use super::codec::{decode_records_to_end, encode_record, encoded_record_bytes};
use super::limits::FRAME_PAYLOAD_BYTES_MAX;

const PAYLOAD_HAS_DEDUP_ID: u8 = 1;
/// Bytes of the payload header with an idempotency mark: flags, id, time.
pub const PAYLOAD_HEADER_BYTES_MAX: usize = 1 + 32 + 8;

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

/// Encodes a frame payload.
///
/// `dedup` is the batch's dedup id and the local time it was received,
/// from which the dedup window measures its age. Fails if the payload would
/// exceed [`FRAME_PAYLOAD_BYTES_MAX`].
pub fn encode_payload(dedup: Option<(&[u8; 32], u64)>, records: &[Record]) -> Result<Vec<u8>> {
    let estimate: usize = records.iter().map(encoded_record_bytes).sum();
    let mut w = Writer::with_capacity(PAYLOAD_HEADER_BYTES_MAX + estimate);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::sample_records;

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
    fn payload_decoder_survives_every_truncation() {
        let bytes = encode_payload(None, &sample_records()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode_payload(&bytes[..len], 3).is_err());
        }
    }
}
