//! The group-commit writer: the queue of frames, leader election, and the
//! segment files (writing, syncing, rotating, sealing, creating).
//!
//! Everything here runs under the WAL lock except the I/O: whoever holds
//! the active segment's handle (a leader, a sync or a seal) takes it out in
//! a [`Lease`], sets `leader_active`, and writes with the lock released.
//! The segment list keeps the active segment's entry meanwhile; the lease
//! records what it did there in one step when it is put back.
//!
//! Failures are returned as a [`Failure`], never recorded here: the WAL
//! poisons itself with it, and wakes everyone who waits on it.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, MutexGuard};

use super::State;
use super::format::{self, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::segments::{ActiveSegment, SegmentList, Written};
use super::{SegmentInfo, segment_file_name};
use crate::clock::NodeId;
use crate::crypto::{Domain, FileCipher, Keyring, SharedKeyring, TAG_BYTES};
use crate::error::{Error, Result};
use crate::io::{Io, IoFile, IoOp};
use crate::options::{Options, SyncMode};

/// The limits the WAL works within, taken from [`Options`].
#[derive(Clone, Copy, Debug)]
pub(super) struct WalLimits {
    pub(super) sync_mode: SyncMode,
    group_frames_max: usize,
    group_bytes_max: usize,
    group_delay_us: u64,
    pub(super) pending_bytes_max: usize,
    segment_bytes_max: u64,
}

impl WalLimits {
    /// The options' limits, raised where zero would stall the WAL.
    pub(super) fn from_options(options: &Options) -> Self {
        Self {
            sync_mode: options.sync_mode,
            group_frames_max: options.group_commit_frames_max.max(1),
            group_bytes_max: options.group_commit_bytes_max.max(1),
            group_delay_us: options.group_commit_delay_us,
            pending_bytes_max: options.wal_pending_bytes_max.max(1),
            segment_bytes_max: options
                .segment_size_bytes_max
                .max(SEGMENT_HEADER_BYTES as u64 + 1),
        }
    }
}

/// A queued batch, with the sequence numbers `append` assigned it.
pub(super) struct PendingFrame {
    first_seq: u64,
    op_count: u32,
    payload: Vec<u8>,
}

impl PendingFrame {
    /// Its size in a segment, header included (and the tag, which an
    /// encrypted segment adds).
    fn size_bytes(&self) -> usize {
        self.payload.len() + FRAME_HEADER_BYTES + TAG_BYTES
    }

    fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.op_count) - 1
    }
}

/// Sequence numbers, the frames waiting to be written, and whether someone
/// has the handle out.
pub(super) struct Queue {
    next_seq: u64,
    pending: VecDeque<PendingFrame>,
    /// The sizes of the frames in `pending`, exactly: backpressure reads it.
    pending_bytes: usize,
    /// A leader, a sync or a seal holds the active segment's handle.
    pub(super) leader_active: bool,
}

impl Queue {
    /// An empty queue whose next batch starts at `next_seq`.
    pub(super) fn new(next_seq: u64) -> Self {
        Self {
            next_seq,
            pending: VecDeque::new(),
            pending_bytes: 0,
            leader_active: false,
        }
    }

    /// The sequence number the next batch will start at.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last sequence number assigned (0 if none).
    pub(super) fn last_assigned(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Nothing is waiting to be written.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Appenders must wait. Never when empty, so that one batch larger than
    /// the limit still gets through.
    pub(super) fn is_full(&self, pending_bytes_max: usize) -> bool {
        self.pending_bytes >= pending_bytes_max && !self.pending.is_empty()
    }

    /// Assigns a batch its sequence numbers and queues it; returns its first
    /// and last.
    pub(super) fn push(&mut self, op_count: u32, payload: Vec<u8>) -> Result<(u64, u64)> {
        debug_assert!(op_count > 0, "a frame holds at least one operation");
        let first_seq = self.next_seq;
        self.next_seq = first_seq
            .checked_add(u64::from(op_count))
            .ok_or(Error::LimitExceeded {
                limit: "sequence numbers",
                actual: first_seq,
                max: u64::MAX - u64::from(op_count),
            })?;
        let frame = PendingFrame {
            first_seq,
            op_count,
            payload,
        };
        self.pending_bytes += frame.size_bytes();
        self.pending.push_back(frame);
        Ok((first_seq, self.next_seq - 1))
    }

    /// Takes the oldest frames, up to the group limits; the first one goes
    /// however large it is, so the queue always drains.
    fn take_group(&mut self, frames_max: usize, bytes_max: usize) -> Vec<PendingFrame> {
        let mut group = Vec::new();
        let mut bytes = 0usize;
        while let Some(size) = self.pending.front().map(PendingFrame::size_bytes) {
            if group.len() >= frames_max || (bytes + size > bytes_max && !group.is_empty()) {
                break;
            }
            bytes += size;
            group.extend(self.pop_front());
        }
        debug_assert!(
            group
                .iter()
                .zip(group.iter().skip(1))
                .all(|(a, b)| a.last_seq() + 1 == b.first_seq),
            "sequence numbers are contiguous within a group"
        );
        group
    }

    fn pop_front(&mut self) -> Option<PendingFrame> {
        let frame = self.pending.front()?;
        let size = frame.size_bytes();
        debug_assert!(self.pending_bytes >= size, "pending_bytes underflow");
        // Saturating in release: only backpressure reads the count, and an
        // undercount weakens it without ever blocking an appender.
        self.pending_bytes = self.pending_bytes.saturating_sub(size);
        let frame = self.pending.pop_front();
        debug_assert!(!self.pending.is_empty() || self.pending_bytes == 0);
        frame
    }
}

/// How far the log is written and synced.
pub(super) struct Progress {
    written_seq: u64,
    synced_seq: u64,
}

impl Progress {
    /// Everything up to `last_seq` was recovered, so it is on disk.
    pub(super) fn at(last_seq: u64) -> Self {
        Self {
            written_seq: last_seq,
            synced_seq: last_seq,
        }
    }

    /// Highest sequence number written to the OS.
    pub(super) fn written_seq(&self) -> u64 {
        self.written_seq
    }

    /// Highest sequence number known to be fsynced.
    pub(super) fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    /// The highest sequence number durable under `mode`.
    pub(super) fn acknowledged(&self, mode: SyncMode) -> u64 {
        match mode {
            SyncMode::Always => self.synced_seq,
            SyncMode::Interval(_) | SyncMode::Never => self.written_seq,
        }
    }

    fn record_written(&mut self, last_seq: u64, synced: bool) {
        self.written_seq = self.written_seq.max(last_seq);
        if synced {
            self.record_synced(last_seq);
        }
    }

    fn record_synced(&mut self, target: u64) {
        self.synced_seq = self.synced_seq.max(target);
        debug_assert!(
            self.synced_seq <= self.written_seq,
            "synced what was not written"
        );
    }
}

/// A failure that must poison the WAL (fail-stop): never retried.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: Error,
    /// It was an fsync: the WAL must never fsync again (a retry can report
    /// success for pages the kernel already dropped).
    pub(super) sync_failed: bool,
}

impl Failure {
    fn io(error: Error) -> Self {
        let sync_failed = matches!(error, Error::Io { op: IoOp::Sync, .. });
        Self { error, sync_failed }
    }

    fn sync(error: Error) -> Self {
        Self {
            error,
            sync_failed: true,
        }
    }

    /// A broken invariant: writes must stop rather than go on from a guess.
    fn broken(cause: &str) -> Self {
        Self {
            error: Error::Poisoned {
                cause: Arc::from(cause),
            },
            sync_failed: false,
        }
    }

    /// The poison cause it records.
    pub(super) fn cause(&self) -> Arc<str> {
        match &self.error {
            Error::Poisoned { cause } => cause.clone(),
            error => Arc::from(error.to_string()),
        }
    }
}

/// The active segment's file and its cipher (if it is encrypted): what
/// the WAL lock keeps while no one writes.
#[derive(Debug)]
pub(super) struct SegmentHandle {
    file: IoFile,
    cipher: Option<FileCipher>,
    data_start: u64,
    /// The segment's header (its frames' associated data binds it).
    header: format::SegmentHeader,
}

/// The active segment's file and where it ends.
#[derive(Debug)]
pub(super) struct SegmentWriter {
    handle: SegmentHandle,
    pub(super) first_seq: u64,
    pub(super) size_bytes: u64,
}

impl SegmentWriter {
    fn active(&self) -> ActiveSegment {
        ActiveSegment {
            first_seq: self.first_seq,
            size_bytes: self.size_bytes,
            data_start: self.handle.data_start,
        }
    }
}

/// The active segment's handle, out of the WAL lock, and what was done
/// with it; see the module docs.
#[derive(Debug)]
pub(super) struct Lease {
    segment: SegmentWriter,
    written: Written,
    syncs: u64,
}

impl Lease {
    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.segment.handle.file.write_all(buf)?;
        self.segment.size_bytes += buf.len() as u64;
        self.written.bytes += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.segment.handle.file.sync_data()?;
        self.syncs += 1;
        Ok(())
    }

    /// The segment has no frame yet.
    fn is_empty_with(&self, buffered: usize) -> bool {
        self.segment.size_bytes + buffered as u64 <= self.segment.handle.data_start
    }
}

/// Writes groups of frames to the segment files; one per WAL.
pub(super) struct GroupWriter {
    io: Io,
    dir: PathBuf,
    node: NodeId,
    /// New segments are encrypted with its current key (if any).
    keyring: SharedKeyring,
    pub(super) limits: WalLimits,
    /// Signalled, under the WAL lock, when a holder puts the handle back,
    /// when queue space is freed, and when the WAL is poisoned or closed.
    changed: Condvar,
}

impl GroupWriter {
    /// A writer for the segments in `dir`.
    pub(super) fn new(
        io: Io,
        dir: &Path,
        node: NodeId,
        keyring: SharedKeyring,
        limits: WalLimits,
    ) -> Self {
        Self {
            io,
            dir: dir.to_path_buf(),
            node,
            keyring,
            limits,
            changed: Condvar::new(),
        }
    }

    /// The segment list after recovery and the handle to append through:
    /// the last recovered segment's, or a new one's at `next_seq` if there
    /// is none or `start_fresh`.
    pub(super) fn open_active(
        &self,
        mut recovered: Vec<SegmentInfo>,
        start_fresh: bool,
        next_seq: u64,
    ) -> Result<(SegmentList, SegmentHandle)> {
        // A segment's header names its writer: one written by another id
        // of this directory (a crash after META took a new id, before a
        // segment of its own was made) is not appended to. Nor is any
        // segment of an encrypted database, nor an encrypted one: its
        // nonces are offsets, and a torn tail cut back after a crash would
        // have its offsets encrypted a second time under the same file key
        // (see `crate::crypto`). A new segment draws a new salt.
        let encrypted = self.keyring.read().current().is_some();
        let start_fresh = start_fresh
            || encrypted
            || recovered.last().is_some_and(|last| {
                super::read_segment_header(&self.io, &last.path)
                    .ok()
                    .flatten()
                    .is_none_or(|h| {
                        h.node != self.node || h.flags & format::SEGMENT_FLAG_ENCRYPTED != 0
                    })
            });
        let segment = match recovered.pop() {
            Some(last) if !start_fresh => SegmentWriter {
                handle: SegmentHandle {
                    file: self.io.open_append(&last.path)?,
                    cipher: None,
                    data_start: SEGMENT_HEADER_BYTES as u64,
                    // Frames in clear have no associated data.
                    header: format::SegmentHeader {
                        node: self.node,
                        first_seq: last.first_seq,
                        flags: 0,
                    },
                },
                first_seq: last.first_seq,
                size_bytes: last.size_bytes,
            },
            Some(last) if last.first_seq == next_seq => {
                // Holds no frame (each would move `next_seq` past it), but
                // has the new segment's name: replace it, keeping its flags
                // (a repair's declared gap). The new header is written to a
                // temp file and renamed over it, so a crash leaves one or
                // the other.
                let header = self.io.read(&last.path)?;
                let flags = super::format::decode_segment_header(&header)
                    .map_or(0, |h| h.flags & format::SEGMENT_FLAG_AFTER_REPAIR);
                self.replace_segment(next_seq, flags)?
            }
            last => {
                recovered.extend(last);
                self.create_segment(next_seq, 0)?
            }
        };
        let active = segment.active();
        Ok((SegmentList::new(recovered, active), segment.handle))
    }

    /// Creates the segment starting at `first_seq` under the current key.
    fn create_segment(&self, first_seq: u64, flags: u16) -> Result<SegmentWriter> {
        let keyring = self.keyring.read().clone();
        create_segment(&self.io, &self.dir, self.node, &keyring, first_seq, flags)
    }

    /// Replaces the frameless segment at `first_seq` with one under the
    /// current key whose header names this writer's node: the header goes
    /// to a temp file, fsynced, renamed over the old segment, and the
    /// directory fsynced, so a crash leaves one header or the other, never
    /// none.
    fn replace_segment(&self, first_seq: u64, flags: u16) -> Result<SegmentWriter> {
        let path = self.dir.join(segment_file_name(first_seq));
        let cipher = self.keyring.read().fresh_cipher(Domain::Wal)?;
        let (header, bytes) = segment_header(self.node, first_seq, flags, cipher.as_ref());
        self.io.write_atomic(&path, &bytes)?;
        Ok(SegmentWriter {
            handle: SegmentHandle {
                file: self.io.open_append(&path)?,
                data_start: bytes.len() as u64,
                cipher,
                header,
            },
            first_seq,
            size_bytes: bytes.len() as u64,
        })
    }

    /// The highest sequence number durable under the sync mode.
    pub(super) fn acknowledged_seq(&self, st: &State) -> u64 {
        st.progress.acknowledged(self.limits.sync_mode)
    }

    /// The highest sequence number a reader may ship: fsynced, whatever
    /// the sync mode (see `Wal::shippable_seq`).
    pub(super) fn shippable_seq(&self, st: &State) -> u64 {
        st.progress.synced_seq()
    }

    /// True if frames past `seq` are written but not fsynced, and nothing
    /// but a shipper would fsync them soon (`Never` mode has no flusher).
    pub(super) fn ship_needs_sync(&self, st: &State, seq: u64) -> bool {
        self.limits.sync_mode == SyncMode::Never
            && st.progress.written_seq() > seq
            && st.progress.synced_seq() <= seq
            && !st.halt.sync_failed
    }

    /// Wakes everyone waiting on the group commit; call under the WAL lock.
    pub(super) fn notify_all(&self) {
        self.changed.notify_all();
    }

    /// Waits for a change until `deadline`; true if the deadline passed.
    pub(super) fn wait_until(&self, st: &mut MutexGuard<'_, State>, deadline: Instant) -> bool {
        self.changed.wait_until(st, deadline).timed_out()
    }

    /// One step of leader election: waits for the active leader to finish,
    /// or, if there is none, leads one group.
    pub(super) fn lead_or_wait(&self, st: &mut MutexGuard<'_, State>) -> Result<(), Failure> {
        if st.queue.leader_active {
            self.changed.wait(st);
            return Ok(());
        }
        self.lead(st)
    }

    fn lead(&self, st: &mut MutexGuard<'_, State>) -> Result<(), Failure> {
        let mut lease = self.take_lease(st)?;
        // A panic while leading must not keep `leader_active` set, or every
        // waiter (and close) would wait forever: it becomes a poison instead.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.lead_round(st, &mut lease)))
            .unwrap_or_else(|_| Err(Failure::broken("panic while writing the WAL")));
        self.put_back(st, lease);
        outcome
    }

    /// Writes (and in `Always` mode syncs) one group with the lock released.
    fn lead_round(&self, st: &mut MutexGuard<'_, State>, lease: &mut Lease) -> Result<(), Failure> {
        self.let_writers_join(st);
        let limits = self.limits;
        let group = st
            .queue
            .take_group(limits.group_frames_max, limits.group_bytes_max);
        debug_assert!(
            group
                .first()
                .is_none_or(|f| f.first_seq == st.progress.written_seq() + 1),
            "a group starts right after what was written"
        );
        self.changed.notify_all(); // queue space was freed
        let sync = limits.sync_mode == SyncMode::Always;
        MutexGuard::unlocked(st, || self.write_group(lease, &group, sync)).map_err(Failure::io)?;
        record_group(st, &group, sync);
        Ok(())
    }

    fn let_writers_join(&self, st: &mut MutexGuard<'_, State>) {
        if self.limits.group_delay_us > 0 && st.queue.pending.len() < self.limits.group_frames_max {
            // Time is the input here: the delay is what lets concurrent
            // writers join this group and share its fsync.
            let delay = Duration::from_micros(self.limits.group_delay_us);
            MutexGuard::unlocked(st, || std::thread::sleep(delay));
        }
    }

    /// Takes the active segment's handle out; the segment stays listed.
    pub(super) fn take_lease(&self, st: &mut State) -> Result<Lease, Failure> {
        debug_assert!(
            !st.queue.leader_active,
            "one holder of the handle at a time"
        );
        debug_assert!(
            st.handle.is_some(),
            "the handle is back when no one holds it"
        );
        let handle = st
            .handle
            .take()
            .ok_or_else(|| Failure::broken("WAL segment writer missing"))?;
        st.queue.leader_active = true;
        let active = st.segments.active();
        let segment = SegmentWriter {
            handle,
            first_seq: active.first_seq,
            size_bytes: active.size_bytes,
        };
        Ok(Lease {
            segment,
            written: Written::default(),
            syncs: 0,
        })
    }

    /// Puts the handle back and records what was done with it.
    pub(super) fn put_back(&self, st: &mut State, lease: Lease) {
        // Released and announced first: should a check below panic, no one
        // is left waiting for a holder that is gone.
        st.queue.leader_active = false;
        self.changed.notify_all();
        let Lease {
            segment,
            written,
            syncs,
        } = lease;
        st.stats.syncs += syncs;
        st.segments.record(written, segment.active());
        st.handle = Some(segment.handle);
    }

    /// Writes a group, rotating segments as they fill. Runs without the lock.
    fn write_group(&self, lease: &mut Lease, group: &[PendingFrame], sync: bool) -> Result<()> {
        let mut buf = Vec::with_capacity(group.iter().map(PendingFrame::size_bytes).sum());
        for frame in group {
            if self.overflows(lease, buf.len(), frame) {
                lease.flush(&mut buf)?;
                self.rotate(lease, frame.first_seq)?;
            }
            debug_assert!(
                !lease.is_empty_with(buf.len()) || frame.first_seq == lease.segment.first_seq,
                "a segment's first frame starts at the segment's first sequence number"
            );
            match &lease.segment.handle.cipher {
                None => {
                    format::encode_frame(&mut buf, frame.first_seq, frame.op_count, &frame.payload);
                }
                Some(cipher) => {
                    let offset = lease.segment.size_bytes + buf.len() as u64;
                    format::encode_sealed_frame(
                        &mut buf,
                        cipher,
                        &lease.segment.handle.header,
                        offset,
                        frame.first_seq,
                        frame.op_count,
                        &frame.payload,
                    );
                }
            }
        }
        lease.flush(&mut buf)?;
        if sync && !group.is_empty() {
            lease.sync()?;
        }
        Ok(())
    }

    /// The frame would take the segment past its size limit. A segment
    /// with no frame yet takes it anyway: a new one would be no emptier.
    fn overflows(&self, lease: &Lease, buffered: usize, frame: &PendingFrame) -> bool {
        let used = lease.segment.size_bytes + buffered as u64;
        used + frame.size_bytes() as u64 > self.limits.segment_bytes_max
            && !lease.is_empty_with(buffered)
    }

    /// Seals the current segment (fsynced, so sealed segments are always
    /// durable) and starts a new one at `first_seq`, the next frame's.
    fn rotate(&self, lease: &mut Lease, first_seq: u64) -> Result<()> {
        debug_assert!(
            first_seq > lease.segment.first_seq,
            "segments start in order"
        );
        lease.sync()?;
        let next = self.create_segment(first_seq, 0)?;
        let old = std::mem::replace(&mut lease.segment, next);
        lease.written.sealed.push(SegmentInfo {
            first_seq: old.first_seq,
            path: old.handle.file.path().to_path_buf(),
            size_bytes: old.size_bytes,
        });
        Ok(())
    }

    /// Fsyncs what was written but not synced, once no leader is active;
    /// does nothing after a failed fsync (see `Wal::sync_written`).
    pub(super) fn sync_written(&self, st: &mut MutexGuard<'_, State>) -> Result<(), Failure> {
        while st.queue.leader_active {
            self.changed.wait(st);
        }
        let progress = &st.progress;
        if progress.synced_seq() >= progress.written_seq() || st.halt.sync_failed {
            return Ok(());
        }
        let mut lease = self.take_lease(st)?;
        let target = st.progress.written_seq();
        let result = MutexGuard::unlocked(st, || lease.sync());
        self.put_back(st, lease);
        result.map_err(Failure::sync)?;
        st.progress.record_synced(target);
        Ok(())
    }

    /// Seals the active segment if it holds a frame. Call with nothing
    /// queued and no leader, so the next segment starts at the next frame.
    pub(super) fn seal_active(&self, st: &mut MutexGuard<'_, State>) -> Result<(), Failure> {
        debug_assert!(
            !st.queue.leader_active && st.queue.is_empty(),
            "everything queued is written before a seal"
        );
        let active = st.segments.active();
        if active.size_bytes <= active.data_start {
            return Ok(());
        }
        let mut lease = self.take_lease(st)?;
        let first_seq = st.queue.next_seq();
        let result = MutexGuard::unlocked(st, || self.rotate(&mut lease, first_seq));
        self.put_back(st, lease);
        result.map_err(Failure::io)
    }

    /// Makes later frames go to a segment under the keyring's current key
    /// (a key rotation): seals the active segment if it holds a frame, or
    /// replaces it if it holds none. Same conditions as `seal_active`.
    pub(super) fn restart_under_current_key(
        &self,
        st: &mut MutexGuard<'_, State>,
    ) -> Result<(), Failure> {
        let active = st.segments.active();
        if active.size_bytes > active.data_start {
            return self.seal_active(st);
        }
        let mut lease = self.take_lease(st)?;
        let first_seq = active.first_seq;
        let result = MutexGuard::unlocked(st, || {
            let flags = super::read_segment_header(&self.io, lease.segment.handle.file.path())?
                .map_or(0, |h| h.flags & format::SEGMENT_FLAG_AFTER_REPAIR);
            let next = self.replace_segment(first_seq, flags)?;
            lease.segment = next;
            Ok::<(), Error>(())
        });
        self.put_back(st, lease);
        result.map_err(Failure::io)
    }
}

fn record_group(st: &mut State, group: &[PendingFrame], synced: bool) {
    let Some(last) = group.last() else {
        return;
    };
    st.progress.record_written(last.last_seq(), synced);
    st.stats.groups_written += 1;
    st.stats.frames_written += group.len() as u64;
}

/// Creates a segment, encrypted if `keyring` has a current key (with a
/// fresh salt): header written and fsynced, directory entry fsynced.
pub(super) fn create_segment(
    io: &Io,
    dir: &Path,
    node: NodeId,
    keyring: &Keyring,
    first_seq: u64,
    flags: u16,
) -> Result<SegmentWriter> {
    let path = dir.join(segment_file_name(first_seq));
    let cipher = keyring.fresh_cipher(Domain::Wal)?;
    let (header, bytes) = segment_header(node, first_seq, flags, cipher.as_ref());
    let mut file = io.create_new(&path)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    io.sync_dir(dir)?;
    Ok(SegmentWriter {
        handle: SegmentHandle {
            file,
            data_start: bytes.len() as u64,
            cipher,
            header,
        },
        first_seq,
        size_bytes: bytes.len() as u64,
    })
}

/// The header bytes of a new segment, with its key block if `cipher`
/// encrypts it.
fn segment_header(
    node: NodeId,
    first_seq: u64,
    flags: u16,
    cipher: Option<&FileCipher>,
) -> (format::SegmentHeader, Vec<u8>) {
    let flags = match cipher {
        Some(_) => flags | format::SEGMENT_FLAG_ENCRYPTED,
        None => flags & !format::SEGMENT_FLAG_ENCRYPTED,
    };
    let header = format::SegmentHeader {
        node,
        first_seq,
        flags,
    };
    let mut out = format::encode_segment_header(header).to_vec();
    if let Some(cipher) = cipher {
        out.extend_from_slice(&cipher.key_block().encode());
    }
    (header, out)
}
