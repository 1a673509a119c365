//! The dedup window: which idempotency keys were committed recently.
//!
//! Keyed by the blake3 content id of a batch's idempotency key, bounded both
//! by age (`dedup_window_ms`, measured from the local time the batch was
//! received, which is logged with it: not from its stamp, which may be old
//! if it came from another node) and by entry count. Rebuilt on open from
//! the snapshot and the WAL, so a retry after a restart is still
//! caught. Pure: the caller passes the time in.

use std::collections::{HashMap, VecDeque};

use crate::clock::Stamp;

/// What the window remembers about a committed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupEntry {
    /// Sequence number of the batch's first operation.
    pub first_seq: u64,
    /// Number of operations in the batch.
    pub op_count: u32,
    /// The batch's stamp.
    pub stamp: Stamp,
    /// Local wall time when the batch was received, in ms since the epoch.
    pub seen_ms: u64,
}

/// A bounded map from content id to the batch that carried it.
#[derive(Debug)]
pub struct DedupWindow {
    entries: HashMap<[u8; 32], DedupEntry>,
    order: VecDeque<([u8; 32], u64)>,
    window_ms: u64,
    entries_max: usize,
}

impl DedupWindow {
    /// An empty window.
    pub fn new(window_ms: u64, entries_max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            window_ms,
            entries_max,
        }
    }

    /// The entry for `id`, if it is still inside the window at `now_ms`.
    pub fn get(&mut self, id: &[u8; 32], now_ms: u64) -> Option<DedupEntry> {
        self.evict(now_ms);
        self.entries.get(id).copied()
    }

    /// Remembers `id` for the batch described by `entry`.
    pub fn insert(&mut self, id: [u8; 32], entry: DedupEntry, now_ms: u64) {
        self.entries.insert(id, entry);
        self.order.push_back((id, entry.first_seq));
        self.evict(now_ms);
    }

    /// The remembered entries for batches starting at or below `seq`, in
    /// insertion order (what a snapshot covering `seq` must carry).
    pub fn entries_through(&self, seq: u64) -> Vec<([u8; 32], DedupEntry)> {
        self.order
            .iter()
            .filter_map(|(id, first_seq)| {
                let entry = self.entries.get(id)?;
                (entry.first_seq == *first_seq && *first_seq <= seq).then_some((*id, *entry))
            })
            .collect()
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict(&mut self, now_ms: u64) {
        while let Some(&(id, first_seq)) = self.order.front() {
            let Some(entry) = self.entries.get(&id).copied() else {
                self.order.pop_front();
                continue;
            };
            if entry.first_seq != first_seq {
                // Superseded by a later insert of the same id; that one has
                // its own place further back in the queue.
                self.order.pop_front();
                continue;
            }
            let too_many = self.entries.len() > self.entries_max;
            let too_old = entry.seen_ms.saturating_add(self.window_ms) < now_ms;
            if !(too_many || too_old) {
                break;
            }
            self.entries.remove(&id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NodeId;

    fn entry(seq: u64, ms: u64) -> DedupEntry {
        DedupEntry {
            first_seq: seq,
            op_count: 1,
            stamp: Stamp {
                physical_ms: 0,
                logical: 0,
                node: NodeId(1),
            },
            seen_ms: ms,
        }
    }

    #[test]
    fn remembers_within_window_and_forgets_after() {
        let mut w = DedupWindow::new(1000, 10);
        w.insert([1; 32], entry(1, 100), 100);
        assert_eq!(w.get(&[1; 32], 1100), Some(entry(1, 100)));
        assert_eq!(w.get(&[1; 32], 1101), None);
    }

    #[test]
    fn bounded_by_count() {
        let mut w = DedupWindow::new(u64::MAX / 2, 3);
        for i in 0..5u8 {
            w.insert([i; 32], entry(u64::from(i) + 1, 0), 0);
        }
        assert_eq!(w.len(), 3);
        assert!(w.get(&[0; 32], 0).is_none());
        assert!(w.get(&[4; 32], 0).is_some());
    }
}
