//! The block index: per data block, its frame length, its entry count and
//! its first and last key, in block order.
//!
//! Section payload: `[block count: varint]`, then per block `[frame length:
//! varint][entries: varint][first key][last key]`, where the first key is
//! `[shared with the previous block's last key: varint][suffix length:
//! varint][suffix]` and the last key the same against the block's own
//! first key. Blocks lie back to back from the data start (the end of the
//! header, or of an encrypted run's key block), so a block's offset is
//! that plus the sum of the lengths before it. Exact first and
//! last keys (not separators) cost about one byte per entry and let a
//! salvage name exactly the keys a lost block held.

use std::cmp::Ordering;

use crate::codec::{DecodeError, Reader};
use crate::error::{Error, Result};
use crate::record::limits::RECORD_KEY_BYTES_MAX;

use super::format::{
    INDEX_KEY_BYTES_MAX, LZ4_EXPANSION_MAX, common_prefix, get_len, get_varint, put_varint,
};

/// The fewest bytes one block's index entry takes: four one-byte varints
/// for the lengths, one for the entry count, one for the frame length.
const INDEX_ENTRY_BYTES_MIN: usize = 6;

/// The index being written.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    entries: Vec<u8>,
    blocks: u64,
    prev_last: Vec<u8>,
    key_bytes: usize,
}

impl IndexBuilder {
    /// The key bytes a reader will hold in memory if `first` and `last`
    /// are added: the writer refuses to pass [`INDEX_KEY_BYTES_MAX`].
    pub fn key_bytes_with(&self, first: &[u8], last: &[u8]) -> usize {
        self.key_bytes + first.len() + last.len()
    }

    /// Adds the next block.
    pub fn add(&mut self, frame_len: usize, entries: usize, first: &[u8], last: &[u8]) {
        put_varint(&mut self.entries, frame_len as u64);
        put_varint(&mut self.entries, entries as u64);
        put_key(&mut self.entries, &self.prev_last, first);
        put_key(&mut self.entries, first, last);
        self.prev_last.clear();
        self.prev_last.extend_from_slice(last);
        self.blocks += 1;
        self.key_bytes += first.len() + last.len();
    }

    /// Blocks added.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The section payload.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() + 10);
        put_varint(&mut out, self.blocks);
        out.extend_from_slice(&self.entries);
        out
    }
}

fn put_key(out: &mut Vec<u8>, base: &[u8], key: &[u8]) {
    let shared = common_prefix(base, key);
    let suffix = key.get(shared..).unwrap_or_default();
    put_varint(out, shared as u64);
    put_varint(out, suffix.len() as u64);
    out.extend_from_slice(suffix);
}

/// One data block, as the index describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    /// Offset of the block's frame in the file.
    pub offset: u64,
    /// Bytes of the frame, header included.
    pub frame_len: u64,
    /// Entries in the block.
    pub entries: u64,
    first: (usize, usize),
    last: (usize, usize),
}

/// The decoded index, its keys in one buffer.
#[derive(Clone, Debug, Default)]
pub struct BlockIndex {
    blocks: Vec<BlockMeta>,
    keys: Vec<u8>,
    /// Each block's last key's first 8 bytes (zero-padded), big-endian:
    /// a seek compares these first, in one dense array, and reads the keys
    /// themselves only on a tie.
    last_prefixes: Vec<u64>,
}

/// The first 8 bytes of `key`, zero-padded, as a big-endian number. Two
/// keys whose prefixes differ sort as their prefixes do (a shorter key's
/// padding is a zero where the longer one has a byte at least as large).
fn prefix_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    if let (Some(dst), Some(src)) = (bytes.get_mut(..n), key.get(..n)) {
        dst.copy_from_slice(src);
    }
    u64::from_be_bytes(bytes)
}

impl BlockIndex {
    /// Decodes an index section for blocks lying from `data_start` to
    /// `data_end`, checking that the lengths tile that range exactly, that
    /// every block holds an entry, and that the keys are spelled as the
    /// writer spells them and strictly increase from block to block. With
    /// `data_end` unknown (an index found by a salvage's scan), the blocks
    /// may end anywhere.
    pub fn decode(
        payload: &[u8],
        data_start: u64,
        data_end: Option<u64>,
    ) -> Result<BlockIndex, DecodeError> {
        let mut r = Reader::new(payload);
        let count = get_varint(&mut r)?;
        if count > (r.remaining() / INDEX_ENTRY_BYTES_MIN) as u64 {
            return Err(Reader::invalid(
                0,
                format!("{count} blocks cannot fit the index"),
            ));
        }
        let mut index = BlockIndex {
            blocks: Vec::with_capacity(count as usize),
            keys: Vec::new(),
            last_prefixes: Vec::with_capacity(count as usize),
        };
        let mut offset = data_start;
        for _ in 0..count {
            let at = r.position();
            let frame_len = get_varint(&mut r)?;
            let entries = get_varint(&mut r)?;
            let end = offset
                .checked_add(frame_len)
                .filter(|&e| data_end.is_none_or(|d| e <= d));
            let Some(end) = end.filter(|_| frame_len > 0 && entries > 0) else {
                return Err(Reader::invalid(
                    at,
                    format!("block at {offset}: {frame_len} bytes, {entries} entries"),
                ));
            };
            // A key cannot be longer than its block could decompress to.
            let key_max = usize::try_from(frame_len)
                .unwrap_or(usize::MAX)
                .saturating_mul(LZ4_EXPANSION_MAX)
                .min(RECORD_KEY_BYTES_MAX);
            let prev_last = index.blocks.last().map(|b| b.last);
            let first = index.read_key(&mut r, prev_last, key_max)?;
            let last = index.read_key(&mut r, Some(first), key_max)?;
            let order_ok = match prev_last {
                Some(p) => index.slice(p) < index.slice(first),
                None => true,
            };
            let span_ok = match index.slice(first).cmp(index.slice(last)) {
                Ordering::Less => entries > 1,
                Ordering::Equal => entries == 1,
                Ordering::Greater => false,
            };
            if !order_ok || !span_ok {
                return Err(Reader::invalid(at, "block keys out of order"));
            }
            index.last_prefixes.push(prefix_of(index.slice(last)));
            index.blocks.push(BlockMeta {
                offset,
                frame_len,
                entries,
                first,
                last,
            });
            offset = end;
        }
        if r.remaining() != 0 {
            return Err(Reader::invalid(r.position(), "bytes after the last block"));
        }
        if let Some(data_end) = data_end.filter(|&d| d != offset) {
            return Err(Reader::invalid(
                r.position(),
                format!("blocks end at {offset}, the data at {data_end}"),
            ));
        }
        Ok(index)
    }

    /// Reads a key spelled against `base` into the buffer.
    fn read_key(
        &mut self,
        r: &mut Reader<'_>,
        base: Option<(usize, usize)>,
        key_max: usize,
    ) -> Result<(usize, usize), DecodeError> {
        let at = r.position();
        let shared = get_len(r, key_max, "shared key length")?;
        let suffix_len = get_len(r, key_max, "key suffix length")?;
        let suffix = r.take(suffix_len)?;
        let (base_start, base_len) = base.unwrap_or((0, 0));
        let base = self.slice((base_start, base_len));
        let len = shared + suffix_len;
        let canonical = shared <= base.len()
            && match (base.get(shared), suffix.first()) {
                (Some(a), Some(b)) => a != b,
                (Some(_), None) => false,
                _ => true,
            };
        if len > key_max || !canonical {
            return Err(Reader::invalid(at, "index key spelled wrongly"));
        }
        if self.keys.len() + len > INDEX_KEY_BYTES_MAX {
            return Err(Reader::invalid(at, "index keys exceed index_key_bytes_max"));
        }
        let start = self.keys.len();
        self.keys
            .extend_from_within(base_start..base_start + shared);
        self.keys.extend_from_slice(suffix);
        Ok((start, len))
    }

    fn slice(&self, (start, len): (usize, usize)) -> &[u8] {
        self.keys.get(start..start + len).unwrap_or_default()
    }

    /// Blocks in the run.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True if the run holds no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Block `i`.
    pub fn block(&self, i: usize) -> Option<&BlockMeta> {
        self.blocks.get(i)
    }

    /// The first key of block `b`.
    pub fn first_key(&self, b: &BlockMeta) -> &[u8] {
        self.slice(b.first)
    }

    /// The last key of block `b`.
    pub fn last_key(&self, b: &BlockMeta) -> &[u8] {
        self.slice(b.last)
    }

    /// The first block whose last key is `>= key` (`> key` if `strict`):
    /// the only one that can hold `key`, or where a forward scan from
    /// `key` starts. `len()` if none.
    pub fn seek(&self, key: &[u8], strict: bool) -> usize {
        let target = prefix_of(key);
        let below = |i: usize| -> bool {
            let prefix = self.last_prefixes.get(i).copied().unwrap_or(u64::MAX);
            if prefix != target {
                return prefix < target;
            }
            let last = self.blocks.get(i).map_or(&[][..], |b| self.slice(b.last));
            if strict { last <= key } else { last < key }
        };
        // A binary search for the first block not below `key`.
        let (mut lo, mut hi) = (0, self.blocks.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if below(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Bytes held in memory.
    pub fn resident_bytes(&self) -> usize {
        self.keys.capacity()
            + self.blocks.capacity() * std::mem::size_of::<BlockMeta>()
            + self.last_prefixes.capacity() * 8
    }
}

/// An index decoding error as a corruption of `path` at the section's
/// `section_offset`.
pub fn index_corruption(path: &std::path::Path, section_offset: u64, e: &DecodeError) -> Error {
    let (inner, why) = match e {
        DecodeError::Truncated { offset, .. } => (*offset, e.to_string()),
        DecodeError::Invalid { offset, reason } => (*offset, reason.clone()),
    };
    Error::corruption(
        path,
        section_offset + inner as u64,
        format!("block index: {why}"),
    )
}
