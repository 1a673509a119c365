//! Data blocks: building one, and reading one back.
//!
//! A decompressed block is `[base ms: varint][entries][restart offsets:
//! u32 × R][R: u32]`. Entry `k` is a restart point when `k` is a multiple
//! of [`RESTART_INTERVAL`]: it shares nothing with the key before it, and
//! its offset (from the first entry) is in the restart array, so a lookup
//! binary-searches the restarts' whole keys and then decodes at most one
//! interval.

use std::cmp::Ordering;

use crate::codec::{DecodeError, Reader};
use crate::crdt::KeyState;

use super::entry::{
    DecodeContext, NodeTableBuilder, StateView, base_ms_of, decode_key_parts, decode_state,
    encode_entry,
};
use super::format::{RESTART_INTERVAL, common_prefix, get_varint, put_varint};

/// The block being filled by the writer.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    entries: Vec<u8>,
    restarts: Vec<u32>,
    count: usize,
    base_ms: u64,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    /// True if no entry was added since the last [`BlockBuilder::finish`].
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entries so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes of the encoded entries so far.
    pub fn entries_bytes(&self) -> usize {
        self.entries.len()
    }

    /// The first key of the block.
    pub fn first_key(&self) -> &[u8] {
        &self.first_key
    }

    /// The last key added.
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Appends an entry; `key` must sort after the last one added.
    pub fn add(&mut self, key: &[u8], state: &KeyState, table: &mut NodeTableBuilder) {
        if self.count == 0 {
            self.base_ms = base_ms_of(state);
            self.first_key.clear();
            self.first_key.extend_from_slice(key);
        }
        let prev: &[u8] = if self.count.is_multiple_of(RESTART_INTERVAL) {
            self.restarts.push(self.entries.len() as u32);
            &[]
        } else {
            &self.last_key
        };
        encode_entry(&mut self.entries, prev, key, state, self.base_ms, table);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.count += 1;
    }

    /// The decompressed block, and the builder emptied for the next one.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() + 16 + 4 * self.restarts.len());
        put_varint(&mut out, self.base_ms);
        out.extend_from_slice(&self.entries);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.entries.clear();
        self.restarts.clear();
        self.count = 0;
        out
    }
}

/// A decompressed block, parsed just enough to search it.
#[derive(Clone, Copy, Debug)]
pub struct BlockView<'a> {
    /// The block's base time.
    pub base_ms: u64,
    /// Where the entries start in the block.
    entries_at: usize,
    /// The entries, back to back.
    entries: &'a [u8],
    /// The restart array (u32 LE each).
    restarts: &'a [u8],
    /// Entries the index says the block holds.
    count: usize,
}

/// Restarts a block of `count` entries has.
pub fn restarts_for(count: usize) -> usize {
    count.div_ceil(RESTART_INTERVAL)
}

impl<'a> BlockView<'a> {
    /// Parses a decompressed block that must hold `count` entries: the
    /// base time, the restart array (as many as `count` needs, the first
    /// at 0, strictly increasing, inside the entries).
    pub fn parse(raw: &'a [u8], count: usize) -> Result<BlockView<'a>, DecodeError> {
        let mut r = Reader::new(raw);
        let base_ms = get_varint(&mut r)?;
        let entries_at = r.position();
        let body = raw.get(entries_at..).unwrap_or_default();
        let split = body.len().checked_sub(4);
        let Some((rest, tail)) = split.and_then(|at| body.split_at_checked(at)) else {
            return Err(Reader::invalid(
                entries_at,
                "block too short for its restart count",
            ));
        };
        let mut word = [0u8; 4];
        word.copy_from_slice(tail);
        let n = u32::from_le_bytes(word) as usize;
        let at = raw.len() - 4;
        if count == 0 || n != restarts_for(count) {
            return Err(Reader::invalid(
                at,
                format!("{n} restarts for {count} entries"),
            ));
        }
        let Some((entries, restarts)) = rest.split_at_checked(rest.len().saturating_sub(4 * n))
        else {
            return Err(Reader::invalid(at, "restart array larger than the block"));
        };
        if restarts.len() != 4 * n {
            return Err(Reader::invalid(at, "restart array larger than the block"));
        }
        let view = BlockView {
            base_ms,
            entries_at,
            entries,
            restarts,
            count,
        };
        let mut prev = None;
        for i in 0..n {
            let offset = view.restart(i);
            let ok = match prev {
                None => offset == 0,
                Some(p) => offset > p,
            };
            if !ok || offset >= entries.len() {
                return Err(Reader::invalid(
                    entries_at + entries.len() + 4 * i,
                    format!("restart {i} at {offset} is out of place"),
                ));
            }
            prev = Some(offset);
        }
        Ok(view)
    }

    /// Restart points in the block.
    pub fn restart_count(&self) -> usize {
        self.restarts.len() / 4
    }

    /// The offset (from the first entry) of restart `i`; 0 past the end
    /// (callers stay below [`BlockView::restart_count`]).
    fn restart(&self, i: usize) -> usize {
        let mut word = [0u8; 4];
        if let Some(bytes) = self.restarts.get(4 * i..4 * i + 4) {
            word.copy_from_slice(bytes);
        }
        u32::from_le_bytes(word) as usize
    }

    /// The byte range (from the first entry) of restart interval `i`.
    fn interval(&self, i: usize) -> (usize, usize) {
        let end = if i + 1 < self.restart_count() {
            self.restart(i + 1)
        } else {
            self.entries.len()
        };
        (self.restart(i), end)
    }

    /// Entries in restart interval `i`.
    fn interval_count(&self, i: usize) -> usize {
        if i + 1 < self.restart_count() {
            RESTART_INTERVAL
        } else {
            self.count - RESTART_INTERVAL * i
        }
    }

    /// The offset of an entry position inside the whole block.
    pub fn block_offset(&self, entry_offset: usize) -> usize {
        self.entries_at + entry_offset
    }

    /// The whole key of restart `i`.
    fn restart_key(&self, i: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.restart(i);
        let mut r = Reader::new(self.entries.get(at..).unwrap_or_default());
        let (shared, key) = decode_key_parts(&mut r)?;
        if shared != 0 {
            return Err(Reader::invalid(
                self.block_offset(at),
                "a restart entry shares bytes with the key before it",
            ));
        }
        Ok(key)
    }

    /// How many restarts have a key `<= target` (`< target` if `strict`):
    /// the interval to look in is the one before.
    pub fn restarts_at_or_below(&self, target: &[u8], strict: bool) -> Result<usize, DecodeError> {
        let (mut lo, mut hi) = (0, self.restart_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let below = match self.restart_key(mid)?.cmp(target) {
                Ordering::Less => true,
                Ordering::Equal => !strict,
                Ordering::Greater => false,
            };
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Looks `target` up without allocating: binary search over the
    /// restarts, then one interval, comparing each key with `target` from
    /// what it shares with the key before (see `docs/FORMAT.md`). Returns
    /// the state's view if the key is present.
    pub fn find(
        &self,
        target: &[u8],
        cx: &DecodeContext<'_>,
    ) -> Result<Option<StateView<'a>>, DecodeError> {
        let restarts = self.restarts_at_or_below(target, false)?;
        let Some(interval) = restarts.checked_sub(1) else {
            return Ok(None);
        };
        let (start, end) = self.interval(interval);
        let mut r = Reader::new(self.entries.get(..end).unwrap_or_default());
        r.take(start)?;
        // `matched`: bytes the previous key shares with `target`, which it
        // sorts below; `prev_len`: its length.
        let (mut matched, mut prev_len) = (0usize, 0usize);
        let mut first = true;
        while r.remaining() > 0 {
            let at = self.block_offset(r.position());
            let (shared, suffix) = decode_key_parts(&mut r)?;
            if (first && shared != 0) || shared > prev_len {
                return Err(Reader::invalid(
                    at,
                    "entry shares more than the key before it",
                ));
            }
            let order = if first || shared == matched {
                let rest = target.get(shared..).unwrap_or_default();
                matched = shared + common_prefix(suffix, rest);
                suffix.cmp(rest)
            } else if shared < matched {
                // The key leaves `target`'s path where the previous one
                // still followed it: it must climb above it there.
                let theirs = target.get(shared).copied();
                match (suffix.first(), theirs) {
                    (Some(ours), Some(theirs)) if *ours > theirs => Ordering::Greater,
                    _ => return Err(Reader::invalid(at, "keys out of order")),
                }
            } else {
                // It keeps the previous key's byte where that one fell
                // below `target`: it is below too.
                Ordering::Less
            };
            first = false;
            prev_len = shared + suffix.len();
            let state = decode_state(&mut r, cx)?;
            match order {
                Ordering::Equal => return Ok(Some(state)),
                Ordering::Greater => return Ok(None),
                Ordering::Less => {}
            }
        }
        Ok(None)
    }

    /// A sequential decoder of restart interval `i` (the whole block from
    /// there on if `to_end`).
    pub fn cursor_at_interval(&self, i: usize, to_end: bool) -> BlockCursor<'a> {
        let (start, end) = self.interval(i);
        let end = if to_end { self.entries.len() } else { end };
        BlockCursor {
            view: *self,
            pos: start,
            end,
            next_entry: RESTART_INTERVAL * i,
            stop_entry: if to_end {
                self.count
            } else {
                RESTART_INTERVAL * i + self.interval_count(i)
            },
            started: false,
        }
    }
}

/// The number of entries in a decompressed block whose count is not known
/// (a block found by a salvage's scan): `R` restarts put it between
/// `16(R-1) + 1` and `16R`, and decoding the last interval says exactly.
pub fn count_entries(raw: &[u8], nodes: &[crate::clock::NodeId]) -> Result<usize, DecodeError> {
    let Some(tail) = raw.len().checked_sub(4).and_then(|at| raw.get(at..)) else {
        return Err(Reader::invalid(0, "block too short for its restart count"));
    };
    let mut word = [0u8; 4];
    word.copy_from_slice(tail);
    let restarts = u32::from_le_bytes(word) as usize;
    let provisional = BlockView::parse(raw, RESTART_INTERVAL * restarts)?;
    let last = restarts.saturating_sub(1);
    let (start, end) = provisional.interval(last);
    let cx = DecodeContext {
        nodes,
        base_ms: provisional.base_ms,
    };
    let mut r = Reader::new(provisional.entries.get(..end).unwrap_or_default());
    r.take(start)?;
    let mut count = 0;
    while r.remaining() > 0 && count < RESTART_INTERVAL {
        decode_key_parts(&mut r)?;
        decode_state(&mut r, &cx)?;
        count += 1;
    }
    Ok(RESTART_INTERVAL * last + count)
}

/// Decodes a block's entries in order, checking each: restarts where the
/// restart array says, keys strictly increasing and sharing exactly their
/// common prefix with the key before, the entry count.
#[derive(Clone, Debug)]
pub struct BlockCursor<'a> {
    view: BlockView<'a>,
    pos: usize,
    end: usize,
    next_entry: usize,
    stop_entry: usize,
    /// False until the first entry: the caller orders that one against
    /// what came before the cursor.
    started: bool,
}

impl<'a> BlockCursor<'a> {
    /// The next entry: its key is left in `key`, which must hold the key
    /// this cursor returned last (anything before the first). `None` at
    /// the end of the range.
    pub fn next(
        &mut self,
        key: &mut Vec<u8>,
        cx: &DecodeContext<'_>,
    ) -> Result<Option<StateView<'a>>, DecodeError> {
        let at = self.view.block_offset(self.pos);
        if self.next_entry == self.stop_entry {
            if self.pos != self.end {
                return Err(Reader::invalid(
                    at,
                    format!("bytes after the block's {} entries", self.view.count),
                ));
            }
            return Ok(None);
        }
        if self.pos >= self.end {
            return Err(Reader::invalid(
                at,
                format!("block ends before its {} entries", self.view.count),
            ));
        }
        let is_restart = self.next_entry.is_multiple_of(RESTART_INTERVAL);
        if is_restart && self.view.restart(self.next_entry / RESTART_INTERVAL) != self.pos {
            return Err(Reader::invalid(
                at,
                "restart array does not match the entries",
            ));
        }
        let mut r = Reader::new(self.view.entries.get(..self.end).unwrap_or_default());
        r.take(self.pos)?;
        let (shared, suffix) = decode_key_parts(&mut r)?;
        if is_restart {
            if shared != 0 {
                return Err(Reader::invalid(at, "a restart entry shares a prefix"));
            }
            if self.started && key.as_slice() >= suffix {
                return Err(Reader::invalid(at, "keys out of order"));
            }
        } else if !self.started {
            return Err(Reader::invalid(at, "a cursor must start at a restart"));
        } else {
            check_successor(key, shared, suffix).map_err(|why| Reader::invalid(at, why))?;
        }
        key.truncate(shared);
        key.extend_from_slice(suffix);
        let state = decode_state(&mut r, cx)?;
        self.pos = r.position();
        self.next_entry += 1;
        self.started = true;
        Ok(Some(state))
    }
}

/// Checks that `prev[..shared] ++ suffix` is the next key after `prev`,
/// spelled the one way the writer spells it: `shared` is exactly the
/// common prefix, and the key sorts above `prev`.
fn check_successor(prev: &[u8], shared: usize, suffix: &[u8]) -> Result<(), &'static str> {
    if shared > prev.len() {
        return Err("entry shares more than the key before it has");
    }
    match (prev.get(shared), suffix.first()) {
        // prev continues past the shared part: the key must continue with
        // a greater byte there.
        (Some(theirs), Some(ours)) if ours > theirs => Ok(()),
        (Some(_), _) => Err("keys out of order, or not sharing their common prefix"),
        // prev is the shared part: the key must be longer.
        (None, Some(_)) => Ok(()),
        (None, None) => Err("a key repeated"),
    }
}
