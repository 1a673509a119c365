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
//!
//! `Wal` coordinates the parts: `writer.rs` (the queue, leader election and
//! the segment files), `segments.rs` (the segment list) and `dedup.rs` (the
//! idempotency window). They share the WAL lock; see `State`. The applied
//! watermark is the engine's (`src/engine/watermark.rs`): the WAL only
//! assigns sequence numbers.

pub mod dedup;
pub mod format;
// Used by the replication leader (in progress) and by its own tests.
pub mod reader;
pub mod recovery;
mod segments;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::clock::{NodeId, Stamp};
use crate::crypto::SharedKeyring;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::options::Options;
use dedup::{DedupEntry, DedupWindow};
use segments::SegmentList;
// Recovery creates the segment a repair continues in with it.
use writer::create_segment;
use writer::{Failure, GroupWriter, Progress, Queue, WalLimits};

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

/// Reads only the header of the segment at `path` (to learn its writer);
/// `None` if it is missing, short or damaged.
pub fn read_segment_header(io: &Io, path: &Path) -> Result<Option<format::SegmentHeader>> {
    let file = io.open_read(path)?;
    let mut header = [0u8; format::SEGMENT_HEADER_BYTES];
    let read = file.read_at(0, &mut header)?;
    Ok(header
        .get(..read)
        .and_then(|h| format::decode_segment_header(h).ok()))
}

/// The key id of the segment at `path` if it is encrypted (`None` in
/// clear, or if its header or key block does not read: recovery reports
/// that damage).
pub fn read_segment_key_id(io: &Io, path: &Path) -> Result<Option<crate::crypto::KeyId>> {
    let file = io.open_read(path)?;
    let mut head = [0u8; format::SEGMENT_HEADER_BYTES + crate::crypto::KEY_BLOCK_BYTES];
    let read = file.read_at(0, &mut head)?;
    let bytes = head.get(..read).unwrap_or_default();
    let Ok(header) = format::decode_segment_header(bytes) else {
        return Ok(None);
    };
    Ok(format::decode_segment_key_block(bytes, &header)
        .ok()
        .flatten()
        .map(|b| b.key_id))
}

/// Rewrites the whole segment at `path` under `keyring`'s current key
/// (or in clear, if it has none), frame by frame at the same offsets, each
/// authenticated under its old key first.
fn rewrite_segment(io: &Io, path: &Path, keyring: &crate::crypto::Keyring) -> Result<u64> {
    use crate::crypto::Domain;
    let bytes = io.read(path)?;
    let corrupt = |offset: usize, reason: String| Error::corruption(path, offset as u64, reason);
    let header = format::decode_segment_header(&bytes).map_err(|e| corrupt(0, e.to_string()))?;
    let old = match format::decode_segment_key_block(&bytes, &header)
        .map_err(|e| corrupt(format::SEGMENT_HEADER_BYTES, e.to_string()))?
    {
        Some(block) => Some(keyring.cipher(&block, Domain::Wal, path)?),
        None => None,
    };
    let new = keyring.fresh_cipher(Domain::Wal)?;
    let mut flags = header.flags & !format::SEGMENT_FLAG_ENCRYPTED;
    if new.is_some() {
        flags |= format::SEGMENT_FLAG_ENCRYPTED;
    }
    let new_header = format::SegmentHeader { flags, ..header };
    let mut out = format::encode_segment_header(new_header).to_vec();
    if let Some(cipher) = &new {
        out.extend_from_slice(&cipher.key_block().encode());
    }
    let mut offset = format::segment_data_start(header.flags);
    while let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) {
        let (frame, stored) = format::read_frame(rest).map_err(|e| {
            corrupt(
                offset,
                match e {
                    format::FrameError::Incomplete => "incomplete frame".to_string(),
                    format::FrameError::Damaged(reason) => reason,
                },
            )
        })?;
        let plain =
            format::open_frame_payload(old.as_ref(), &header, offset as u64, &frame, stored)
                .map_err(|e| corrupt(offset, e))?;
        match &new {
            Some(cipher) => {
                let at = out.len() as u64;
                format::encode_sealed_frame(
                    &mut out,
                    cipher,
                    &new_header,
                    at,
                    frame.first_seq,
                    frame.op_count,
                    &plain,
                );
            }
            None => format::encode_frame(&mut out, frame.first_seq, frame.op_count, &plain),
        }
        offset += format::FRAME_HEADER_BYTES + stored.len();
    }
    io.write_atomic(path, &out)?;
    Ok(out.len() as u64)
}

/// True if `bytes` start with a segment header that says the segment is
/// encrypted.
pub fn segment_is_encrypted(bytes: &[u8]) -> bool {
    format::decode_segment_header(bytes)
        .is_ok_and(|h| h.flags & format::SEGMENT_FLAG_ENCRYPTED != 0)
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

/// Everything under the WAL lock. One lock for these parts, not one each:
/// `append` checks the dedup window, assigns sequence numbers and queues
/// the frame atomically (a retried idempotency key must never get two), and
/// `segment_ranges` reads the segment list and the last assigned sequence
/// number together. No I/O is done under it.
struct State {
    queue: Queue,
    /// The active segment's file. Out (in a `writer::Lease`) while a
    /// leader, a sync or a seal works with the lock released; the active
    /// segment's entry in `segments` stays.
    handle: Option<writer::SegmentHandle>,
    segments: SegmentList,
    progress: Progress,
    halt: Halt,
    dedup: DedupWindow,
    /// The counters of `WalStats` (the rest is read from the parts).
    stats: WalStats,
}

/// Whether the WAL still writes.
#[derive(Default)]
struct Halt {
    poisoned: Option<Arc<str>>,
    /// An fsync failed: never fsync again (see `Wal::sync_written`).
    sync_failed: bool,
    closed: bool,
}

impl Halt {
    /// Records a failure and returns the first one's cause, which later
    /// ones do not replace.
    fn poison(&mut self, cause: Arc<str>, sync_failed: bool) -> Arc<str> {
        self.sync_failed |= sync_failed;
        self.poisoned.get_or_insert(cause).clone()
    }

    /// `Err(Poisoned)` if the WAL is poisoned, else `Ok`.
    fn poisoned_result(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_usable(&self) -> Result<()> {
        self.poisoned_result()?;
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

/// The write-ahead log of one database.
pub struct Wal {
    state: Mutex<State>,
    writer: GroupWriter,
    /// The database's keys: new segments use the current one; readers
    /// (shipping) find the key of each segment they open.
    keyring: SharedKeyring,
    dir: PathBuf,
    io: Io,
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
        keyring: SharedKeyring,
        start: WalStart,
    ) -> Result<Wal> {
        let limits = WalLimits::from_options(options);
        let writer = GroupWriter::new(io.clone(), dir, node, keyring.clone(), limits);
        // Recovered frames count as durable from here on (a retried batch
        // is answered as a duplicate, a leader ships them): but a process
        // that crashed left them in the page cache, maybe never fsynced.
        // Only the last segment can hold such frames (a segment is fsynced
        // before the next one is made).
        if let Some(last) = start.segments.last() {
            io.open_append(&last.path)?.sync_data()?;
        }
        let (segments, handle) =
            writer.open_active(start.segments, start.start_fresh, start.next_seq)?;
        let last_seq = start.next_seq.saturating_sub(1);
        let state = State {
            queue: Queue::new(start.next_seq),
            handle: Some(handle),
            segments,
            progress: Progress::at(last_seq),
            halt: Halt::default(),
            dedup: start.dedup,
            stats: WalStats::default(),
        };
        Ok(Wal {
            state: Mutex::new(state),
            writer,
            keyring,
            dir: dir.to_path_buf(),
            io,
        })
    }

    /// Queues a batch, or reports the original if its idempotency key was
    /// seen. Blocks while `wal_pending_bytes_max` bytes are already queued.
    pub fn append(&self, req: AppendRequest<'_>) -> Result<Appended> {
        let mut st = self.state.lock();
        self.wait_for_queue_space(&mut st)?;
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
        self.queue_batch(&mut st, req)
    }

    fn wait_for_queue_space(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
        loop {
            st.halt.check_usable()?;
            if !st.queue.is_full(self.writer.limits.pending_bytes_max) {
                return Ok(());
            }
            // Write the backlog ourselves rather than wait for a writer that
            // may itself be waiting on us.
            self.lead_or_wait(st);
        }
    }

    /// Assigns sequence numbers, registers and queues the batch, and
    /// remembers its idempotency key: all under the WAL lock, so the key
    /// maps to exactly these numbers and batches register in order.
    fn queue_batch(&self, st: &mut State, req: AppendRequest<'_>) -> Result<Appended> {
        let op_count = req.op_count;
        let (first_seq, last_seq) = st.queue.push(op_count, req.payload)?;
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
            last_seq,
        })
    }

    /// Returns once `seq` is durable under the sync mode (written and, in
    /// `Always` mode, fsynced), leading a group commit if no one else is.
    pub fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut st = self.state.lock();
        if seq >= st.queue.next_seq() {
            // Only sequence numbers handed out by `append` can become durable.
            return Err(Error::InvalidCommand {
                reason: format!("sequence number {seq} was never assigned"),
            });
        }
        while self.writer.acknowledged_seq(&st) < seq {
            st.halt.poisoned_result()?;
            self.lead_or_wait(&mut st);
        }
        Ok(())
    }

    /// One step of leader election; a failed group poisons the WAL.
    fn lead_or_wait(&self, st: &mut MutexGuard<'_, State>) {
        if let Err(failure) = self.writer.lead_or_wait(st) {
            self.fail(st, failure);
        }
    }

    /// Fsyncs whatever has been written but not synced (for `Interval` mode
    /// and clean close). Poisons the WAL if the fsync fails.
    ///
    /// Writes acknowledged in `Interval` or `Never` mode are synced even
    /// after a failed *write* poisoned the WAL, to keep the mode's promise
    /// for them; never after a failed fsync, whose retry could falsely
    /// report success for pages the kernel already dropped.
    pub fn sync_written(&self) -> Result<()> {
        let mut st = self.state.lock();
        match self.writer.sync_written(&mut st) {
            Ok(()) => st.halt.poisoned_result(),
            Err(failure) => Err(self.fail(&mut st, failure)),
        }
    }

    /// The sealed segments (complete, fsynced, never written again).
    pub fn sealed_segments(&self) -> Vec<SegmentInfo> {
        self.state.lock().segments.sealed().to_vec()
    }

    /// Every segment's sequence-number range and size, oldest first.
    pub fn segment_ranges(&self) -> Vec<SegmentRange> {
        let st = self.state.lock();
        st.segments.ranges(st.queue.last_assigned())
    }

    /// The path of the segment whose first sequence number is `first_seq`.
    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        self.dir.join(segment_file_name(first_seq))
    }

    /// The newest sequence number a reader may ship: fsynced, in every
    /// sync mode. In `Interval` and `Never` modes a written frame can still
    /// be lost to a power loss, and the sequence numbers it held reused by
    /// later writes under the same replication epoch; a follower holding
    /// it would then diverge unnoticed. So only what a power loss keeps is
    /// shipped.
    pub fn shippable_seq(&self) -> u64 {
        self.writer.shippable_seq(&self.state.lock())
    }

    /// Waits until the shippable sequence number passes `seq`, or
    /// `timeout` elapses; returns it either way (or the WAL's failure).
    ///
    /// What is written past `seq` is fsynced here in `Never` mode, where
    /// nothing else would sync it before a rotation: the shipper pays that
    /// fsync (with the WAL lock released, like the flusher). In `Interval`
    /// mode the flusher syncs it within its interval; in `Always` mode
    /// every acknowledged write already is.
    pub fn wait_shippable_beyond(&self, seq: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        loop {
            st.halt.check_usable()?;
            let shippable = self.writer.shippable_seq(&st);
            if shippable > seq {
                return Ok(shippable);
            }
            if self.writer.ship_needs_sync(&st, seq) {
                if let Err(failure) = self.writer.sync_written(&mut st) {
                    return Err(self.fail(&mut st, failure));
                }
                continue;
            }
            if self.writer.wait_until(&mut st, deadline) {
                return Ok(self.writer.shippable_seq(&st));
            }
        }
    }

    /// Dedup entries for batches starting at or below `seq`.
    pub fn dedup_entries_through(&self, seq: u64) -> Vec<([u8; 32], DedupEntry)> {
        self.state.lock().dedup.entries_through(seq)
    }

    /// Seals the active segment (after writing everything queued) if it holds
    /// any frame, so that all of it can be dropped once a snapshot covers it.
    /// Writers wait only while the new segment is created.
    pub fn seal_active(&self) -> Result<()> {
        self.with_queue_written(|writer, st| writer.seal_active(st))
    }

    /// Makes every later frame go to a new segment under the keyring's
    /// current key (a key rotation has just changed it): writes everything
    /// queued, then seals the active segment, or replaces it if it holds
    /// no frame.
    pub fn restart_under_current_key(&self) -> Result<()> {
        self.with_queue_written(|writer, st| writer.restart_under_current_key(st))
    }

    /// Writes everything queued (leading groups or waiting for the leader),
    /// then runs `step` on the active segment with nothing queued and no
    /// leader; a failure of it poisons the WAL.
    fn with_queue_written(
        &self,
        step: impl FnOnce(&GroupWriter, &mut MutexGuard<'_, State>) -> std::result::Result<(), Failure>,
    ) -> Result<()> {
        let mut st = self.state.lock();
        while st.queue.leader_active || !st.queue.is_empty() {
            st.halt.check_usable()?;
            self.lead_or_wait(&mut st);
        }
        st.halt.check_usable()?;
        step(&self.writer, &mut st).map_err(|failure| self.fail(&mut st, failure))
    }

    /// Rewrites every sealed segment whose key is not the current one
    /// under the current key (a key rotation's rewrite): how many were
    /// rewritten, and why the others could not be. Each is rewritten whole
    /// to a temp file with a fresh salt, fsynced, renamed over the old one
    /// and the directory fsynced, so a crash leaves one or the other. A
    /// segment that does not read back whole (`Error::Corruption`) is left
    /// as it is, under its old key, and the others are rewritten; an I/O
    /// failure stops the rewrite. Call with no truncation running (the
    /// compactor's own thread).
    pub fn rewrite_sealed_under_current_key(&self) -> Result<(usize, Vec<Error>)> {
        let keyring = self.keyring.read().clone();
        let sealed = self.state.lock().segments.sealed().to_vec();
        let mut rewritten = 0;
        let mut damaged = Vec::new();
        for segment in sealed {
            if read_segment_key_id(&self.io, &segment.path)? == keyring.current_id() {
                continue;
            }
            match rewrite_segment(&self.io, &segment.path, &keyring) {
                Ok(size) => {
                    self.state.lock().segments.resize(segment.first_seq, size);
                    rewritten += 1;
                }
                Err(e @ Error::Corruption { .. }) => damaged.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok((rewritten, damaged))
    }

    /// The key ids of the segments, sealed and active, in order (`None`:
    /// in clear).
    pub fn segment_key_ids(&self) -> Result<Vec<Option<crate::crypto::KeyId>>> {
        let st = self.state.lock();
        let mut paths: Vec<PathBuf> = st
            .segments
            .sealed()
            .iter()
            .map(|s| s.path.clone())
            .collect();
        paths.push(self.segment_path(st.segments.active().first_seq));
        drop(st);
        paths
            .iter()
            .map(|p| read_segment_key_id(&self.io, p))
            .collect()
    }

    /// The database's keys.
    pub fn keyring(&self) -> &SharedKeyring {
        &self.keyring
    }

    /// Deletes sealed segments all of whose sequence numbers are below
    /// `seq`; returns how many were deleted and their bytes. The active
    /// segment is never deleted.
    pub fn truncate_before(&self, seq: u64) -> Result<(usize, u64)> {
        let doomed = self.state.lock().segments.wholly_before(seq);
        if doomed.is_empty() {
            return Ok((0, 0));
        }
        for segment in &doomed {
            self.io.remove_file(&segment.path)?;
            self.state.lock().segments.forget(segment.first_seq);
        }
        self.io.sync_dir(&self.dir)?;
        Ok((doomed.len(), doomed.iter().map(|s| s.size_bytes).sum()))
    }

    /// Writes everything queued, syncs it, and refuses later appends.
    pub fn close(&self) -> Result<()> {
        let last = self.state.lock().queue.last_assigned();
        let flushed = self.wait_durable(last);
        let synced = self.sync_written();
        let mut st = self.state.lock();
        st.halt.closed = true;
        self.writer.notify_all();
        flushed.and(synced)
    }

    /// Marks the WAL poisoned (for failures found outside it, such as a
    /// panicking worker).
    pub fn poison(&self, cause: &str) {
        self.poison_locked(&mut self.state.lock(), Arc::from(cause), false);
    }

    /// Poisons the WAL with a failure of its own; returns the error to report.
    fn fail(&self, st: &mut State, failure: Failure) -> Error {
        self.poison_locked(st, failure.cause(), failure.sync_failed);
        failure.error
    }

    /// Records the poison and wakes every waiter on the group commit.
    /// (The engine poisons its applied watermark itself.)
    fn poison_locked(&self, st: &mut State, cause: Arc<str>, sync_failed: bool) {
        st.halt.poison(cause, sync_failed);
        self.writer.notify_all();
    }

    /// The error every write returns from now on, if the WAL is poisoned or closed.
    pub fn check_usable(&self) -> Result<()> {
        self.state.lock().halt.check_usable()
    }

    /// Counters and sizes, for stats. The active segment counts even while
    /// a leader has its handle out.
    pub fn stats(&self) -> WalStats {
        let st = self.state.lock();
        WalStats {
            last_seq: st.queue.last_assigned(),
            written_seq: st.progress.written_seq(),
            synced_seq: st.progress.synced_seq(),
            segments: st.segments.count(),
            wal_bytes: st.segments.total_bytes(),
            bytes_written: st.segments.bytes_written(),
            dedup_entries: st.dedup.len(),
            ..st.stats
        }
    }
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

    /// Holds the active segment's handle out, as a group-commit leader
    /// does while it writes with the lock released, and runs `during`.
    fn while_a_leader_writes<T>(wal: &Wal, during: impl FnOnce() -> T) -> T {
        let lease = {
            let mut st = wal.state.lock();
            wal.writer.take_lease(&mut st).unwrap()
        };
        let seen = during();
        wal.writer.put_back(&mut wal.state.lock(), lease);
        seen
    }

    #[test]
    fn the_active_segment_is_listed_while_a_group_commit_leader_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path()).unwrap();
        db.put("a", "1").unwrap();
        let wal = db.engine().wal();
        let before = wal.segment_ranges();
        assert_eq!(before.len(), 1);
        let during = while_a_leader_writes(wal, || wal.segment_ranges());
        assert_eq!(during, before);
    }

    #[test]
    fn stats_and_truncation_see_the_active_segment_while_a_leader_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path()).unwrap();
        let wal = db.engine().wal();
        for key in ["a", "b"] {
            db.put(key, "1").unwrap();
            wal.seal_active().unwrap();
        }
        db.put("c", "1").unwrap();
        let before = wal.stats();
        assert_eq!(before.segments, 3);
        let (during, truncated) = while_a_leader_writes(wal, || {
            let stats = wal.stats();
            (stats, wal.truncate_before(stats.last_seq + 1).unwrap())
        });
        assert_eq!(during.segments, before.segments);
        assert_eq!(during.wal_bytes, before.wal_bytes);
        assert_eq!(during.bytes_written, before.bytes_written);
        assert_eq!(
            truncated.0, 2,
            "both sealed segments are below the active one"
        );
        assert_eq!(wal.stats().segments, 1);
        assert!(wal.sealed_segments().is_empty());
    }
}
