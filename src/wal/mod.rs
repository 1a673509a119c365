//! The write-ahead log: segments, group commit, dedup, recovery.
//!
//! Writers [`Wal::append`] an encoded batch (a frame payload): the WAL
//! assigns its sequence numbers and queues it. They then
//! [`Wal::wait_durable`]: the first waiter to find no leader becomes the
//! leader, takes every queued frame up to the group limits, writes them with
//! one `write` and (in `SyncMode::Always`) one `fdatasync`, and wakes the
//! others. This is group commit: many concurrent writers share one fsync.
//!
//! Fail-stop: if a write or fsync fails, the WAL is poisoned. No frame of the
//! failed group, nor any later one, is ever acknowledged.

mod applied;
pub mod dedup;
pub mod format;
// Used by the replication leader (in progress) and by its own tests.
pub mod reader;
pub mod recovery;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::clock::{NodeId, Stamp};
use crate::error::{Error, Result};
use crate::io::{Io, IoFile, IoOp};
use crate::options::{Options, SyncMode};
use applied::AppliedTracker;
use dedup::{DedupEntry, DedupWindow};
use format::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Name of the WAL directory inside a database directory.
pub const WAL_DIR: &str = "wal";

/// The file name of the segment whose first sequence number is `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    crate::io::numbered_file_name("wal-", first_seq, ".seg")
}

/// The first sequence number encoded in a segment file name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    crate::io::parse_numbered_file_name(name, "wal-", ".seg")
}

/// A sealed or active segment, as the WAL tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number of its first operation.
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// The sequence numbers a segment holds, for retention decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentRange {
    /// Its first sequence number.
    pub first_seq: u64,
    /// Its last one (for the active segment: the last assigned).
    pub last_seq: u64,
    /// Its size.
    pub size_bytes: u64,
}

/// What [`Wal::append`] did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Queued with these sequence numbers: `first_seq ..= last_seq`.
    Queued {
        /// Sequence number of the batch's first operation.
        first_seq: u64,
        /// Sequence number of its last operation.
        last_seq: u64,
    },
    /// The idempotency key was seen already: the original batch.
    Duplicate(DedupEntry),
}

/// A batch handed to [`Wal::append`].
pub struct AppendRequest<'a> {
    /// The encoded frame payload.
    pub payload: Vec<u8>,
    /// Operations in the batch (sequence numbers it takes).
    pub op_count: u32,
    /// Content id of the idempotency key, if any.
    pub dedup_id: Option<&'a [u8; 32]>,
    /// The batch's stamp (for the dedup window).
    pub stamp: Stamp,
    /// The wall time now, for dedup window expiry.
    pub now_ms: u64,
}

/// The limits the WAL works within, taken from [`Options`].
#[derive(Clone, Copy, Debug)]
struct WalLimits {
    sync_mode: SyncMode,
    group_frames_max: usize,
    group_bytes_max: usize,
    group_delay_us: u64,
    pending_bytes_max: usize,
    segment_bytes_max: u64,
}

struct PendingFrame {
    first_seq: u64,
    op_count: u32,
    payload: Vec<u8>,
}

/// WAL counters for stats.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct WalStats {
    /// Highest sequence number assigned so far (0 if none).
    pub last_seq: u64,
    /// Highest sequence number written to the OS.
    pub written_seq: u64,
    /// Highest sequence number known to be fsynced.
    pub synced_seq: u64,
    /// Frames (batches) written since open.
    pub frames_written: u64,
    /// Group commits (writes) since open.
    pub groups_written: u64,
    /// fdatasync calls on segments since open.
    pub syncs: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Total bytes in segment files.
    pub wal_bytes: u64,
    /// Bytes written to segments since open (for compaction triggers).
    pub bytes_written: u64,
    /// Idempotency keys remembered.
    pub dedup_entries: usize,
}

struct Shared {
    next_seq: u64,
    pending: VecDeque<PendingFrame>,
    pending_bytes: usize,
    leader_active: bool,
    written_seq: u64,
    synced_seq: u64,
    poisoned: Option<Arc<str>>,
    /// An fsync failed: never fsync again (see `sync_written`).
    sync_failed: bool,
    closed: bool,
    dedup: DedupWindow,
    writer: Option<SegmentWriter>,
    /// The active segment's first sequence number and size as of when the
    /// writer was last put back. A group-commit leader (or a sync or seal)
    /// takes the writer out and works with the lock released;
    /// `segment_ranges` lists the active segment from these meanwhile.
    /// Reading `writer` instead left the active segment out of the list
    /// during every group write: a follower reconnecting then was told the
    /// WAL after its cursor was gone and sent a whole snapshot (found by
    /// tests/replication_chaos.rs), and a compaction could mark a follower
    /// the WAL still served as beyond it, and stop keeping the WAL for it.
    active_first_seq: u64,
    active_size_bytes: u64,
    sealed: Vec<SegmentInfo>,
    stats: WalStats,
}

impl Shared {
    /// Puts the writer back after writing (see `active_first_seq`).
    fn put_writer(&mut self, writer: SegmentWriter) {
        self.active_first_seq = writer.first_seq;
        self.active_size_bytes = writer.size_bytes;
        self.writer = Some(writer);
    }
}

/// The segment being appended to.
struct SegmentWriter {
    file: IoFile,
    first_seq: u64,
    size_bytes: u64,
    /// Bytes written through this writer (and those it replaced) since open.
    bytes_written: u64,
}

/// The write-ahead log of one database.
pub struct Wal {
    shared: Mutex<Shared>,
    cond: Condvar,
    /// The applied watermark, under its own lock: see `applied.rs`.
    applied: AppliedTracker,
    dir: PathBuf,
    io: Io,
    node: NodeId,
    limits: WalLimits,
}

/// Where a recovered WAL continues.
pub struct WalStart {
    /// The next sequence number to assign.
    pub next_seq: u64,
    /// Segments that recovery kept, oldest first; the last one is appended to.
    pub segments: Vec<SegmentInfo>,
    /// The rebuilt dedup window.
    pub dedup: DedupWindow,
    /// Start a new segment at `next_seq` instead of appending to the last
    /// one (the WAL ends before where a snapshot says writing continues).
    pub start_fresh: bool,
}

impl Wal {
    /// Opens the WAL for appending after recovery.
    pub fn open(
        dir: &Path,
        io: Io,
        node: NodeId,
        options: &Options,
        start: WalStart,
    ) -> Result<Wal> {
        let limits = WalLimits {
            sync_mode: options.sync_mode,
            group_frames_max: options.group_commit_frames_max.max(1),
            group_bytes_max: options.group_commit_bytes_max.max(1),
            group_delay_us: options.group_commit_delay_us,
            pending_bytes_max: options.wal_pending_bytes_max.max(1),
            segment_bytes_max: options
                .segment_size_bytes_max
                .max(SEGMENT_HEADER_BYTES as u64 + 1),
        };
        let mut sealed = start.segments;
        let writer = match sealed.pop() {
            Some(last) if !start.start_fresh => SegmentWriter {
                file: io.open_append(&last.path)?,
                first_seq: last.first_seq,
                size_bytes: last.size_bytes,
                bytes_written: 0,
            },
            last => {
                sealed.extend(last);
                create_segment(&io, dir, node, start.next_seq, 0)?
            }
        };
        let last_seq = start.next_seq.saturating_sub(1);
        let shared = Shared {
            next_seq: start.next_seq,
            pending: VecDeque::new(),
            pending_bytes: 0,
            leader_active: false,
            written_seq: last_seq,
            synced_seq: last_seq,
            poisoned: None,
            sync_failed: false,
            closed: false,
            dedup: start.dedup,
            active_first_seq: writer.first_seq,
            active_size_bytes: writer.size_bytes,
            writer: Some(writer),
            sealed,
            stats: WalStats::default(),
        };
        Ok(Wal {
            shared: Mutex::new(shared),
            cond: Condvar::new(),
            applied: AppliedTracker::new(last_seq),
            dir: dir.to_path_buf(),
            io,
            node,
            limits,
        })
    }

    /// Queues a batch, or reports the original if its idempotency key was
    /// seen. Blocks while `wal_pending_bytes_max` bytes are already queued.
    pub fn append(&self, req: AppendRequest<'_>) -> Result<Appended> {
        let mut st = self.shared.lock();
        loop {
            check_usable(&st)?;
            if st.pending_bytes < self.limits.pending_bytes_max || st.pending.is_empty() {
                break;
            }
            // Write the backlog ourselves rather than wait for a writer that
            // may itself be waiting on us.
            if st.leader_active {
                self.cond.wait(&mut st);
            } else {
                self.lead(&mut st);
            }
        }
        if let Some(id) = req.dedup_id
            && let Some(original) = st.dedup.get(id, req.now_ms)
        {
            return Ok(Appended::Duplicate(original));
        }
        if req.op_count == 0 {
            // A frame must hold at least one operation (replay checks it).
            return Err(Error::InvalidCommand {
                reason: "a WAL frame needs at least one operation".into(),
            });
        }
        let first_seq = st.next_seq;
        let op_count = req.op_count;
        st.next_seq = first_seq
            .checked_add(u64::from(op_count))
            .ok_or(Error::LimitExceeded {
                limit: "sequence numbers",
                actual: first_seq,
                max: u64::MAX - u64::from(op_count),
            })?;
        st.pending_bytes += req.payload.len() + FRAME_HEADER_BYTES;
        // Under the WAL lock, so batches are registered in sequence order.
        self.applied
            .register(first_seq, first_seq + u64::from(op_count) - 1);
        st.pending.push_back(PendingFrame {
            first_seq,
            op_count,
            payload: req.payload,
        });
        if let Some(id) = req.dedup_id {
            let entry = DedupEntry {
                first_seq,
                op_count,
                stamp: req.stamp,
                seen_ms: req.now_ms,
            };
            st.dedup.insert(*id, entry, req.now_ms);
        }
        Ok(Appended::Queued {
            first_seq,
            last_seq: first_seq + u64::from(op_count) - 1,
        })
    }

    /// Returns once `seq` is durable under the sync mode (written and, in
    /// `Always` mode, fsynced), leading a group commit if no one else is.
    pub fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut st = self.shared.lock();
        if seq >= st.next_seq {
            // Only sequence numbers handed out by `append` can become durable.
            return Err(Error::InvalidCommand {
                reason: format!("sequence number {seq} was never assigned"),
            });
        }
        loop {
            if self.acknowledged_seq(&st) >= seq {
                return Ok(());
            }
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if st.leader_active {
                self.cond.wait(&mut st);
            } else {
                self.lead(&mut st);
            }
        }
    }

    fn acknowledged_seq(&self, st: &Shared) -> u64 {
        match self.limits.sync_mode {
            SyncMode::Always => st.synced_seq,
            SyncMode::Interval(_) | SyncMode::Never => st.written_seq,
        }
    }

    /// One round as group-commit leader: write (and maybe sync) one group.
    fn lead(&self, st: &mut MutexGuard<'_, Shared>) {
        let Some(mut writer) = st.writer.take() else {
            // Only a leader takes the writer, and it always puts it back.
            self.fail(st, "WAL segment writer missing", false);
            return;
        };
        st.leader_active = true;
        if self.limits.group_delay_us > 0 && st.pending.len() < self.limits.group_frames_max {
            // Give concurrent writers a moment to join this group.
            let delay = Duration::from_micros(self.limits.group_delay_us);
            MutexGuard::unlocked(st, || std::thread::sleep(delay));
        }
        let group = self.take_group(st);
        self.cond.notify_all(); // queue space was freed
        let sync = self.limits.sync_mode == SyncMode::Always;
        // A panic while writing must not leave `leader_active` set, or every
        // waiter (and close) would wait forever: it becomes a poison instead.
        let result = MutexGuard::unlocked(st, || {
            catch_unwind(AssertUnwindSafe(|| {
                self.write_group(&mut writer, &group, sync)
            }))
            .unwrap_or_else(|_| {
                Err(Error::Poisoned {
                    cause: Arc::from("panic while writing the WAL"),
                })
            })
        });
        st.put_writer(writer);
        match result {
            Ok(outcome) => record_group(st, &group, outcome, sync),
            Err(e) => self.fail(st, &e.to_string(), is_sync_failure(&e)),
        }
        st.leader_active = false;
        self.cond.notify_all();
    }

    fn take_group(&self, st: &mut Shared) -> Vec<PendingFrame> {
        let mut group = Vec::new();
        let mut bytes = 0usize;
        while let Some(frame) = st.pending.front() {
            let size = frame.payload.len() + FRAME_HEADER_BYTES;
            let full = group.len() >= self.limits.group_frames_max
                || (bytes + size > self.limits.group_bytes_max && !group.is_empty());
            if full {
                break;
            }
            bytes += size;
            st.pending_bytes -= size;
            group.extend(st.pending.pop_front());
        }
        group
    }

    /// Writes a group, rotating segments as they fill. Runs without the lock.
    fn write_group(
        &self,
        writer: &mut SegmentWriter,
        group: &[PendingFrame],
        sync: bool,
    ) -> Result<GroupWritten> {
        let mut out = GroupWritten::default();
        let mut buf = Vec::with_capacity(
            group
                .iter()
                .map(|f| f.payload.len() + FRAME_HEADER_BYTES)
                .sum(),
        );
        for frame in group {
            let size = (frame.payload.len() + FRAME_HEADER_BYTES) as u64;
            let would_overflow =
                writer.size_bytes + buf.len() as u64 + size > self.limits.segment_bytes_max;
            if would_overflow && writer.size_bytes + buf.len() as u64 > SEGMENT_HEADER_BYTES as u64
            {
                self.flush_buf(writer, &mut buf)?;
                out.sealed.push(self.rotate(writer, frame.first_seq)?);
                out.syncs += 1;
            }
            format::encode_frame(&mut buf, frame.first_seq, frame.op_count, &frame.payload);
        }
        self.flush_buf(writer, &mut buf)?;
        if sync && !group.is_empty() {
            writer.file.sync_data()?;
            out.syncs += 1;
        }
        Ok(out)
    }

    fn flush_buf(&self, writer: &mut SegmentWriter, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        writer.file.write_all(buf)?;
        writer.size_bytes += buf.len() as u64;
        writer.bytes_written += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Seals the current segment (fsynced, so sealed segments are always
    /// durable) and starts a new one at `first_seq`.
    fn rotate(&self, writer: &mut SegmentWriter, first_seq: u64) -> Result<SegmentInfo> {
        writer.file.sync_data()?;
        let mut next = create_segment(&self.io, &self.dir, self.node, first_seq, 0)?;
        next.bytes_written = writer.bytes_written;
        let old = std::mem::replace(writer, next);
        Ok(SegmentInfo {
            first_seq: old.first_seq,
            path: old.file.path().to_path_buf(),
            size_bytes: old.size_bytes,
        })
    }

    /// Fsyncs whatever has been written but not synced (for `Interval` mode
    /// and clean close). Poisons the WAL if the fsync fails.
    ///
    /// Writes acknowledged in `Interval` or `Never` mode are synced even
    /// after a failed *write* poisoned the WAL, to keep the mode's promise
    /// for them; never after a failed fsync, whose retry could falsely
    /// report success for pages the kernel already dropped.
    pub fn sync_written(&self) -> Result<()> {
        let mut st = self.shared.lock();
        while st.leader_active {
            self.cond.wait(&mut st);
        }
        if st.synced_seq >= st.written_seq || st.sync_failed {
            return poisoned_result(&st);
        }
        let Some(writer) = st.writer.take() else {
            return poisoned_result(&st);
        };
        st.leader_active = true;
        let target = st.written_seq;
        let result = MutexGuard::unlocked(&mut st, || writer.file.sync_data());
        st.put_writer(writer);
        st.leader_active = false;
        self.cond.notify_all();
        match result {
            Ok(()) => {
                st.synced_seq = st.synced_seq.max(target);
                st.stats.syncs += 1;
                poisoned_result(&st)
            }
            Err(e) => {
                self.fail(&mut st, &e.to_string(), true);
                Err(e)
            }
        }
    }

    /// Marks queued batches (by first sequence number) as applied to the
    /// state map, or as never to be applied after a failure.
    pub fn mark_applied(&self, first_seqs: &[u64]) {
        self.applied.mark_applied(first_seqs);
    }

    /// Waits until the batch starting at `first_seq` is applied, or the WAL
    /// is poisoned or closed.
    pub fn wait_applied(&self, first_seq: u64) {
        self.applied.wait_applied(first_seq);
    }

    /// The sealed segments (complete, fsynced, never written again).
    pub fn sealed_segments(&self) -> Vec<SegmentInfo> {
        self.shared.lock().sealed.clone()
    }

    /// Every segment's sequence-number range and size, oldest first.
    pub fn segment_ranges(&self) -> Vec<SegmentRange> {
        let st = self.shared.lock();
        let last_assigned = st.next_seq - 1;
        let firsts: Vec<(u64, u64)> = st
            .sealed
            .iter()
            .map(|s| (s.first_seq, s.size_bytes))
            .chain([(st.active_first_seq, st.active_size_bytes)])
            .collect();
        firsts
            .iter()
            .enumerate()
            .map(|(i, &(first_seq, size_bytes))| SegmentRange {
                first_seq,
                last_seq: firsts.get(i + 1).map_or(last_assigned, |next| next.0 - 1),
                size_bytes,
            })
            .collect()
    }

    /// The path of the segment whose first sequence number is `first_seq`.
    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        self.dir.join(segment_file_name(first_seq))
    }

    /// The newest sequence number a reader may ship: durable under the
    /// sync mode (fsynced in `Always`, written otherwise).
    pub fn shippable_seq(&self) -> u64 {
        let st = self.shared.lock();
        self.acknowledged_seq(&st)
    }

    /// Waits until the shippable sequence number passes `seq`, or
    /// `timeout` elapses; returns it either way (or the WAL's failure).
    pub fn wait_shippable_beyond(&self, seq: u64, timeout: Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            check_usable(&st)?;
            let shippable = self.acknowledged_seq(&st);
            if shippable > seq || self.cond.wait_until(&mut st, deadline).timed_out() {
                return Ok(self.acknowledged_seq(&st).max(shippable));
            }
        }
    }

    /// Dedup entries for batches starting at or below `seq`.
    pub fn dedup_entries_through(&self, seq: u64) -> Vec<([u8; 32], DedupEntry)> {
        self.shared.lock().dedup.entries_through(seq)
    }

    /// Waits until the applied watermark reaches `seq` (or the WAL fails).
    pub fn wait_watermark(&self, seq: u64) -> Result<()> {
        self.applied.wait_watermark(seq)
    }

    /// The applied watermark: every batch with sequence numbers up to this
    /// one is in the state map (later ones may be too).
    ///
    /// Fails if the WAL is poisoned: a failed batch is taken off the
    /// unapplied list without ever being written, so the watermark of a
    /// poisoned WAL can pass batches that are not in it.
    pub fn applied_watermark(&self) -> Result<u64> {
        self.applied.watermark()
    }

    /// Seals the active segment (after writing everything queued) if it holds
    /// any frame, so that all of it can be dropped once a snapshot covers it.
    /// Writers wait only while the new segment is created.
    pub fn seal_active(&self) -> Result<()> {
        let mut st = self.shared.lock();
        loop {
            check_usable(&st)?;
            if st.leader_active {
                self.cond.wait(&mut st);
            } else if !st.pending.is_empty() {
                self.lead(&mut st);
            } else {
                break;
            }
        }
        let Some(mut writer) = st.writer.take() else {
            return Err(Error::Poisoned {
                cause: Arc::from("WAL segment writer missing"),
            });
        };
        if writer.size_bytes <= SEGMENT_HEADER_BYTES as u64 {
            st.put_writer(writer);
            return Ok(());
        }
        st.leader_active = true;
        let first_seq = st.next_seq;
        let result = MutexGuard::unlocked(&mut st, || self.rotate(&mut writer, first_seq));
        st.put_writer(writer);
        st.leader_active = false;
        self.cond.notify_all();
        match result {
            Ok(sealed) => {
                st.sealed.push(sealed);
                st.stats.syncs += 1;
                Ok(())
            }
            Err(e) => {
                self.fail(&mut st, &e.to_string(), is_sync_failure(&e));
                Err(e)
            }
        }
    }

    /// Deletes sealed segments all of whose sequence numbers are below
    /// `seq`; returns how many were deleted and their bytes. The active
    /// segment is never deleted.
    pub fn truncate_before(&self, seq: u64) -> Result<(usize, u64)> {
        let doomed: Vec<SegmentInfo> = {
            let st = self.shared.lock();
            let active_first = st.writer.as_ref().map_or(u64::MAX, |w| w.first_seq);
            let next_firsts = st
                .sealed
                .iter()
                .skip(1)
                .map(|s| s.first_seq)
                .chain([active_first]);
            st.sealed
                .iter()
                .zip(next_firsts)
                .filter(|(_, next_first)| *next_first <= seq)
                .map(|(s, _)| s.clone())
                .collect()
        };
        if doomed.is_empty() {
            return Ok((0, 0));
        }
        for segment in &doomed {
            self.io.remove_file(&segment.path)?;
            let mut st = self.shared.lock();
            st.sealed.retain(|s| s.first_seq != segment.first_seq);
        }
        self.io.sync_dir(&self.dir)?;
        Ok((doomed.len(), doomed.iter().map(|s| s.size_bytes).sum()))
    }

    /// Writes everything queued, syncs it, and refuses later appends.
    pub fn close(&self) -> Result<()> {
        let last = self.shared.lock().next_seq.saturating_sub(1);
        let flushed = self.wait_durable(last);
        let synced = self.sync_written();
        let mut st = self.shared.lock();
        st.closed = true;
        self.applied.close();
        self.cond.notify_all();
        flushed.and(synced)
    }

    /// Marks the WAL poisoned (for failures found outside it, such as a
    /// panicking worker).
    pub fn poison(&self, cause: &str) {
        self.fail(&mut self.shared.lock(), cause, false);
    }

    /// The error every write returns from now on, if the WAL is poisoned or closed.
    pub fn check_usable(&self) -> Result<()> {
        check_usable(&self.shared.lock())
    }

    /// Poisons the WAL, keeping the first cause, and wakes every waiter:
    /// those on the applied watermark too, which are woken only by this.
    /// Called with the WAL lock held, so no waiter can see the poison before
    /// the applied tracker has it.
    fn fail(&self, st: &mut Shared, cause: &str, sync_failed: bool) {
        let first = st.poisoned.get_or_insert_with(|| Arc::from(cause)).clone();
        st.sync_failed |= sync_failed;
        self.applied.poison(first);
        self.cond.notify_all();
    }

    /// Counters and sizes, for stats.
    pub fn stats(&self) -> WalStats {
        let st = self.shared.lock();
        let mut stats = st.stats;
        stats.last_seq = st.next_seq.saturating_sub(1);
        stats.written_seq = st.written_seq;
        stats.synced_seq = st.synced_seq;
        let active = st.writer.as_ref().map_or(0, |w| w.size_bytes);
        stats.bytes_written = st.writer.as_ref().map_or(0, |w| w.bytes_written);
        stats.segments = st.sealed.len() + usize::from(st.writer.is_some());
        stats.wal_bytes = st.sealed.iter().map(|s| s.size_bytes).sum::<u64>() + active;
        stats.dedup_entries = st.dedup.len();
        stats
    }
}

#[derive(Default)]
struct GroupWritten {
    sealed: Vec<SegmentInfo>,
    syncs: u64,
}

fn record_group(st: &mut Shared, group: &[PendingFrame], written: GroupWritten, synced: bool) {
    if let Some(last) = group.last() {
        let last_seq = last.first_seq + u64::from(last.op_count) - 1;
        st.written_seq = st.written_seq.max(last_seq);
        if synced {
            st.synced_seq = st.synced_seq.max(last_seq);
        }
        st.stats.groups_written += 1;
    }
    st.stats.frames_written += group.len() as u64;
    st.stats.syncs += written.syncs;
    st.sealed.extend(written.sealed);
}

/// `Err(Poisoned)` if the WAL is poisoned, else `Ok`.
fn poisoned_result(st: &Shared) -> Result<()> {
    match &st.poisoned {
        Some(cause) => Err(Error::Poisoned {
            cause: cause.clone(),
        }),
        None => Ok(()),
    }
}

fn is_sync_failure(e: &Error) -> bool {
    matches!(e, Error::Io { op: IoOp::Sync, .. })
}

fn check_usable(st: &Shared) -> Result<()> {
    poisoned_result(st)?;
    if st.closed {
        return Err(Error::Closed);
    }
    Ok(())
}

/// Creates a segment: header written and fsynced, directory entry fsynced.
fn create_segment(
    io: &Io,
    dir: &Path,
    node: NodeId,
    first_seq: u64,
    flags: u16,
) -> Result<SegmentWriter> {
    let path = dir.join(segment_file_name(first_seq));
    let mut file = io.create_new(&path)?;
    let header = format::SegmentHeader {
        node,
        first_seq,
        flags,
    };
    file.write_all(&format::encode_segment_header(header))?;
    file.sync_data()?;
    io.sync_dir(dir)?;
    Ok(SegmentWriter {
        file,
        first_seq,
        size_bytes: SEGMENT_HEADER_BYTES as u64,
        bytes_written: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(42), "wal-00000000000000000042.seg");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("wal-42.seg"), None);
        assert_eq!(
            parse_segment_file_name("wal-0000000000000000004x.seg"),
            None
        );
    }

    #[test]
    fn the_active_segment_is_listed_while_a_group_commit_leader_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path()).unwrap();
        db.put("a", "1").unwrap();
        let wal = db.wal();
        let before = wal.segment_ranges();
        assert_eq!(before.len(), 1);
        // What `lead` does while it writes a group with the lock released.
        let writer = {
            let mut st = wal.shared.lock();
            st.leader_active = true;
            st.writer.take().unwrap()
        };
        let during = wal.segment_ranges();
        {
            let mut st = wal.shared.lock();
            st.put_writer(writer);
            st.leader_active = false;
        }
        wal.cond.notify_all();
        assert_eq!(during, before);
    }
}
