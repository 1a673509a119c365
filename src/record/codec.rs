//! The record and stamp codec: one key's CRDT fragment as bytes (see
//! `docs/FORMAT.md`, "Record"). WAL frames, snapshots, change sets, digests
//! and replication all encode records through these functions.

use std::sync::Arc;

use crate::clock::{NodeId, Stamp};
use crate::codec::{DecodeError, Reader, Writer};
use crate::crdt::{Counter, KeyState, NodeTotals, Register};

use super::Record;
use super::key::{StoreKey, split_store_key};
use super::limits::{FRAME_PAYLOAD_BYTES_MAX, RECORD_BYTES_MIN, RECORD_KEY_BYTES_MAX};

const RECORD_HAS_REGISTER: u8 = 1;
const RECORD_HAS_VALUE: u8 = 2;
const RECORD_HAS_COUNTER: u8 = 4;
/// Bytes of an encoded stamp: physical ms, logical counter, node id.
pub const STAMP_BYTES: usize = 8 + 4 + 8;
/// Bytes of one floor entry: node, p, n.
const FLOOR_ENTRY_BYTES: usize = 8 + 8 + 8;
/// Bytes of one counter entry: node, p, n, stamp.
const COUNTER_ENTRY_BYTES: usize = 8 + 8 + 8 + STAMP_BYTES;

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

/// The exact number of bytes [`encode_record`] writes for `record`, so a
/// batch can be split into frames before anything is encoded.
pub fn encoded_record_bytes(record: &Record) -> usize {
    let register = record.delta.register.as_ref().map_or(0, |reg| {
        let value = reg.value.as_ref().map_or(0, |v| 4 + v.len());
        STAMP_BYTES + value + 2 + FLOOR_ENTRY_BYTES * reg.floor.len()
    });
    let counter = record
        .delta
        .counter
        .as_ref()
        .map_or(0, |c| 2 + COUNTER_ENTRY_BYTES * c.totals.len());
    1 + 4 + record.store_key.len() + register + counter
}

/// Encodes one record.
pub fn encode_record(w: &mut Writer, record: &Record) {
    let start = w.len();
    encode_record_fields(w, record);
    debug_assert_eq!(w.len() - start, encoded_record_bytes(record));
}

fn encode_record_fields(w: &mut Writer, record: &Record) {
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
    debug_assert!(floor.len() <= usize::from(u16::MAX));
    // The decoder refuses any other order, so writing one would make the
    // record unreadable.
    debug_assert!(
        floor.is_sorted_by(|a, b| a.0 < b.0),
        "floor nodes must be strictly increasing"
    );
    w.u16(floor.len() as u16);
    for &(node, p, n) in floor {
        w.u64(node.0);
        w.u64(p);
        w.u64(n);
    }
}

fn encode_counter(w: &mut Writer, counter: &Counter) {
    // As for floors: the decoder refuses an empty or unordered counter part.
    debug_assert!(counter.totals.len() <= usize::from(u16::MAX));
    debug_assert!(
        !counter.totals.is_empty() && counter.totals.is_sorted_by(|a, b| a.node < b.node),
        "counter totals must be non-empty with strictly increasing nodes"
    );
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
    if split_store_key(&store_key).is_none() {
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
    let mut floor = Vec::with_capacity(count.min(r.remaining() / FLOOR_ENTRY_BYTES));
    for _ in 0..count {
        floor.push((NodeId(r.u64()?), r.u64()?, r.u64()?));
    }
    if !floor.is_sorted_by(|a, b| a.0 < b.0) {
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
    let mut totals = Vec::with_capacity(count.min(r.remaining() / COUNTER_ENTRY_BYTES));
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
    if !totals.is_sorted_by(|a, b| a.node < b.node) {
        return Err(Reader::invalid(
            at,
            "counter nodes are not strictly increasing",
        ));
    }
    Ok(Counter { totals })
}
