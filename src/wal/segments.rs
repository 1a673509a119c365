//! The segment list: every segment of the log, sealed ones and the active
//! one, as the WAL tracks them.
//!
//! The list is always complete. The active segment's file handle is kept
//! elsewhere (a group-commit leader takes it out and writes with the WAL
//! lock released); its entry here stays, as of when the handle was last put
//! back. Taking the handle out of the one struct that also held the active
//! segment's bookkeeping made the list lose the active segment during every
//! group write: `segment_ranges` then told a reconnecting follower that the
//! WAL after its cursor was gone (found by tests/replication_chaos.rs), and
//! `stats` and `truncate_before` saw one segment fewer.

use super::{SegmentInfo, SegmentRange};

/// The active segment's bookkeeping (its handle is not part of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ActiveSegment {
    /// Sequence number of its first operation.
    pub(super) first_seq: u64,
    /// Its size in bytes, header included.
    pub(super) size_bytes: u64,
    /// Where its frames start (after the header and any key block): it
    /// holds a frame once it is larger.
    pub(super) data_start: u64,
}

/// What a writer did while it held the active segment's handle, recorded
/// in one step when it puts the handle back.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// Segments it sealed (rotated away from), oldest first.
    pub(super) sealed: Vec<SegmentInfo>,
    /// Bytes it wrote.
    pub(super) bytes: u64,
}

/// Sealed segments, oldest first, and the active one.
#[derive(Debug)]
pub(super) struct SegmentList {
    sealed: Vec<SegmentInfo>,
    active: ActiveSegment,
    /// Bytes written to segments since open (for compaction triggers).
    bytes_written: u64,
}

impl SegmentList {
    /// The list after recovery: `sealed` oldest first, then `active`.
    pub(super) fn new(sealed: Vec<SegmentInfo>, active: ActiveSegment) -> Self {
        let list = Self {
            sealed,
            active,
            bytes_written: 0,
        };
        list.debug_check_order();
        list
    }

    /// The sealed segments, oldest first.
    pub(super) fn sealed(&self) -> &[SegmentInfo] {
        &self.sealed
    }

    /// The active segment, as of when its handle was last put back.
    pub(super) fn active(&self) -> ActiveSegment {
        self.active
    }

    /// Number of segments, the active one included.
    pub(super) fn count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// Bytes in all segments, the active one included.
    pub(super) fn total_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.size_bytes).sum::<u64>() + self.active.size_bytes
    }

    /// Bytes written to segments since open.
    pub(super) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Every segment's range, oldest first; the active one ends at
    /// `last_assigned`, each other one just before the next begins.
    pub(super) fn ranges(&self, last_assigned: u64) -> Vec<SegmentRange> {
        let firsts: Vec<(u64, u64)> = self
            .sealed
            .iter()
            .map(|s| (s.first_seq, s.size_bytes))
            .chain([(self.active.first_seq, self.active.size_bytes)])
            .collect();
        let ends = firsts.iter().skip(1).map(|next| next.0 - 1);
        firsts
            .iter()
            .zip(ends.chain([last_assigned]))
            .map(|(&(first_seq, size_bytes), last_seq)| SegmentRange {
                first_seq,
                last_seq,
                size_bytes,
            })
            .collect()
    }

    /// Sealed segments all of whose sequence numbers are below `seq` (the
    /// next segment starts at or below it). Never the active segment.
    pub(super) fn wholly_before(&self, seq: u64) -> Vec<SegmentInfo> {
        let next_firsts = self
            .sealed
            .iter()
            .skip(1)
            .map(|s| s.first_seq)
            .chain([self.active.first_seq]);
        self.sealed
            .iter()
            .zip(next_firsts)
            .filter(|(_, next_first)| *next_first <= seq)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Records a sealed segment's new size (after a rewrite).
    pub(super) fn resize(&mut self, first_seq: u64, size_bytes: u64) {
        for s in self.sealed.iter_mut().filter(|s| s.first_seq == first_seq) {
            s.size_bytes = size_bytes;
        }
    }

    /// Drops a deleted sealed segment from the list.
    pub(super) fn forget(&mut self, first_seq: u64) {
        debug_assert_ne!(
            first_seq, self.active.first_seq,
            "the active segment is never deleted"
        );
        self.sealed.retain(|s| s.first_seq != first_seq);
    }

    /// Records what a writer did with the handle, and where the active
    /// segment now stands.
    pub(super) fn record(&mut self, written: Written, active: ActiveSegment) {
        debug_assert!(
            written
                .sealed
                .last()
                .is_none_or(|s| s.first_seq < active.first_seq),
            "a writer seals segments only by rotating to a later one"
        );
        self.sealed.extend(written.sealed);
        self.active = active;
        self.bytes_written += written.bytes;
        self.debug_check_order();
    }

    /// Segments start at strictly increasing sequence numbers (their file
    /// names are unique and a new one starts at the next frame's).
    fn debug_check_order(&self) {
        debug_assert!(
            self.sealed
                .iter()
                .map(|s| s.first_seq)
                .chain([self.active.first_seq])
                .is_sorted_by(|a, b| a < b),
            "segments start at strictly increasing sequence numbers"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sealed(first_seq: u64, size_bytes: u64) -> SegmentInfo {
        SegmentInfo {
            first_seq,
            path: PathBuf::from(super::super::segment_file_name(first_seq)),
            size_bytes,
        }
    }

    fn list() -> SegmentList {
        let active = ActiveSegment {
            first_seq: 21,
            size_bytes: 7,
            data_start: 5,
        };
        SegmentList::new(vec![sealed(1, 100), sealed(11, 50)], active)
    }

    #[test]
    fn ranges_end_just_before_the_next_segment_and_at_the_last_assigned() {
        let ranges: Vec<(u64, u64, u64)> = list()
            .ranges(25)
            .iter()
            .map(|r| (r.first_seq, r.last_seq, r.size_bytes))
            .collect();
        assert_eq!(ranges, vec![(1, 10, 100), (11, 20, 50), (21, 25, 7)]);
    }

    #[test]
    fn only_sealed_segments_wholly_below_are_doomed() {
        let firsts = |seq| -> Vec<u64> {
            list()
                .wholly_before(seq)
                .iter()
                .map(|s| s.first_seq)
                .collect()
        };
        assert_eq!(firsts(10), Vec::<u64>::new());
        assert_eq!(firsts(11), vec![1]);
        assert_eq!(firsts(21), vec![1, 11]);
        assert_eq!(firsts(u64::MAX), vec![1, 11], "never the active one");
    }

    #[test]
    fn recording_a_rotation_keeps_every_segment_listed() {
        let mut list = list();
        let written = Written {
            sealed: vec![sealed(21, 40)],
            bytes: 33,
        };
        let active = ActiveSegment {
            first_seq: 30,
            size_bytes: 24,
            data_start: 5,
        };
        list.record(written, active);
        assert_eq!(list.count(), 4);
        assert_eq!(list.total_bytes(), 100 + 50 + 40 + 24);
        assert_eq!(list.bytes_written(), 33);
        assert_eq!(list.active(), active);
        list.forget(1);
        assert_eq!(list.sealed().len(), 2);
    }
}
