//! The compactor: snapshots, WAL truncation, tombstone GC, in a background
//! thread.
//!
//! A compaction:
//! 1. seals the active WAL segment (writers wait only for this rotation:
//!    the old segment's fdatasync and the new segment's creation);
//! 2. waits until every batch written so far is applied, reads the applied
//!    watermark `S`, then takes an O(1) snapshot of the state map (writers
//!    are not blocked: the map is persistent);
//! 3. writes the snapshot covering `S` atomically, leaving out tombstones past
//!    their grace period that every registered cursor has passed, and reads
//!    it back to verify it;
//! 4. deletes snapshots beyond `snapshots_retained`, and WAL segments wholly
//!    covered by the oldest retained snapshot, except those a registered
//!    cursor still needs (within `wal_retention_bytes_max`);
//! 5. drops the collected tombstones from the live map, if still unchanged.
//!
//! A crash at any step leaves a state that opens correctly: a snapshot
//! becomes visible only by its rename, and no segment is deleted before the
//! snapshot covering it is durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use parking_lot::Mutex;
use serde::Serialize;

use crate::crdt::KeyState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::record::Record;
use crate::record::StoreKey;
use crate::snapshot::{self, SNAPSHOT_DIR, SnapshotMeta, Written};
use crate::state::State;
use crate::wal::WAL_DIR;

mod cursors;

pub use cursors::{CURSOR_NAME_BYTES_MAX, CURSORS_FILE, CURSORS_MAX};
pub(crate) use cursors::{Cursors, decode_cursors, encode_cursors};

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// The sequence number the new snapshot covers.
    pub snapshot_seq: u64,
    /// The new snapshot file.
    pub snapshot_path: PathBuf,
    /// Its size.
    pub snapshot_bytes: u64,
    /// Keys in it.
    pub entries: u64,
    /// WAL plus snapshot bytes on disk before.
    pub bytes_before: u64,
    /// ...and after.
    pub bytes_after: u64,
    /// WAL segments deleted.
    pub segments_removed: usize,
    /// Older snapshots deleted.
    pub snapshots_removed: usize,
    /// Tombstones garbage-collected.
    pub tombstones_dropped: u64,
    /// Cursors found beyond the retention limit (they must resync).
    pub cursors_behind: Vec<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// A registered cursor: a reader of the WAL (a follower, a peer) whose
/// position holds back WAL truncation and tombstone GC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CursorInfo {
    /// The highest sequence number the reader has.
    pub seq: u64,
    /// The reader fell further behind than `wal_retention_bytes_max`; the
    /// WAL it needs may be gone, so it must resync from a snapshot.
    pub needs_resync: bool,
    /// When it was last set, in ms since the epoch (by this copy's wall
    /// clock; 0 if unknown, for a cursor kept by an older version). Kept
    /// with the cursor, so the age of a reader that never returns survives
    /// a restart.
    pub touched_ms: u64,
}

/// Compaction figures, for stats.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactorStats {
    /// The newest snapshot's covered sequence number, if any.
    pub snapshot_seq: Option<u64>,
    /// The newest snapshot's size.
    pub snapshot_bytes: u64,
    /// Bytes of WAL segments holding anything after the newest snapshot
    /// (all of the WAL if there is none).
    pub wal_bytes_since_snapshot: u64,
    /// Compactions run since open.
    pub compactions: u64,
    /// The last background compaction's error, if it failed.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Progress {
    snapshot_seq: Option<u64>,
    snapshot_bytes: u64,
    compacted_at: Option<Instant>,
    compactions: u64,
    last_error: Option<String>,
}

/// The compactor's shared state: what it needs to compact, the cursors, and
/// its progress.
pub(crate) struct Maintenance {
    engine: Arc<Engine>,
    io: Io,
    dir: PathBuf,
    cursors: Mutex<Cursors>,
    progress: Mutex<Progress>,
    /// One compaction at a time (background or `compact_now`).
    running: Mutex<()>,
}

enum Request {
    Compact(Sender<Result<CompactionReport>>),
}

/// The background thread; stops when dropped.
pub(crate) struct Compactor {
    requests: Option<Sender<Request>>,
    handle: Option<JoinHandle<()>>,
}

impl Maintenance {
    pub fn new(
        engine: Arc<Engine>,
        io: Io,
        dir: &Path,
        snapshot: Option<(u64, u64)>,
        cursors: Cursors,
    ) -> Self {
        let progress = Progress {
            snapshot_seq: snapshot.map(|s| s.0),
            snapshot_bytes: snapshot.map_or(0, |s| s.1),
            // The interval counts from open.
            compacted_at: Some(Instant::now()),
            ..Progress::default()
        };
        Self {
            engine,
            io,
            dir: dir.to_path_buf(),
            cursors: Mutex::new(cursors),
            progress: Mutex::new(progress),
            running: Mutex::new(()),
        }
    }

    /// Registers or moves a cursor (durably, unless it only moved
    /// forward: see [`Cursors`]).
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        let now_ms = self.engine.now_ms();
        self.cursors.lock().set(&self.io, name, seq, now_ms)
    }

    /// A cursor's position.
    pub fn cursor(&self, name: &str) -> Option<CursorInfo> {
        self.cursors.lock().get(name)
    }

    /// Forgets a cursor, durably.
    pub fn remove_cursor(&self, name: &str) -> Result<bool> {
        self.cursors.lock().remove(&self.io, name)
    }

    /// Every registered cursor, by name.
    pub fn cursors(&self) -> BTreeMap<String, CursorInfo> {
        let cursors = self.cursors.lock();
        cursors
            .names()
            .into_iter()
            .filter_map(|name| cursors.get(&name).map(|c| (name, c)))
            .collect()
    }

    /// True if the cursor file was damaged at open (its cursors are lost).
    pub fn cursors_lost(&self) -> bool {
        self.cursors.lock().are_lost()
    }

    /// Writes cursor moves not yet in the cursor file (at close).
    pub fn flush_cursors(&self) -> Result<()> {
        self.cursors.lock().flush(&self.io)
    }

    /// The names of the registered cursors, sorted.
    pub fn cursor_names(&self) -> Vec<String> {
        self.cursors.lock().names()
    }

    /// Figures for stats.
    pub fn stats(&self) -> CompactorStats {
        let p = self.progress.lock();
        let covered = p.snapshot_seq.unwrap_or(0);
        let since: u64 = self
            .engine
            .wal()
            .segment_ranges()
            .iter()
            .filter(|s| s.last_seq > covered || s.last_seq < s.first_seq)
            .map(|s| s.size_bytes)
            .sum();
        CompactorStats {
            snapshot_seq: p.snapshot_seq,
            snapshot_bytes: p.snapshot_bytes,
            wal_bytes_since_snapshot: since,
            compactions: p.compactions,
            last_error: p.last_error.clone(),
        }
    }

    fn due(&self) -> bool {
        let options = &self.engine.options();
        // Measured on disk, so a database reopened often (by the CLI, say)
        // still compacts once its WAL has grown.
        let since = self.stats().wal_bytes_since_snapshot;
        let last_seq = self.engine.wal().stats().last_seq;
        let p = self.progress.lock();
        if last_seq <= p.snapshot_seq.unwrap_or(0) {
            return false; // nothing written since the snapshot
        }
        if since >= options.compaction_wal_bytes_min {
            return true;
        }
        let interval = Duration::from_millis(options.compaction_interval_ms);
        let elapsed = p.compacted_at.map_or(Duration::ZERO, |t| t.elapsed());
        options.compaction_interval_ms > 0 && elapsed >= interval
    }

    /// Runs one compaction now.
    pub fn compact(&self) -> Result<CompactionReport> {
        let _running = self.running.lock();
        let started = Instant::now();
        let result = self.compact_inner();
        let mut p = self.progress.lock();
        match &result {
            Ok(report) => {
                p.compactions += 1;
                p.compacted_at = Some(Instant::now());
                p.snapshot_seq = Some(report.snapshot_seq);
                p.snapshot_bytes = report.snapshot_bytes;
                p.last_error = None;
            }
            Err(e) => {
                p.last_error = Some(e.to_string());
                poison_on_failed_sync(&self.engine, e);
            }
        }
        result.map(|mut r| {
            r.duration_ms = started.elapsed().as_millis() as u64;
            r
        })
    }

    fn compact_inner(&self) -> Result<CompactionReport> {
        let engine = &self.engine;
        engine.wal().check_usable()?;
        let bytes_before = self.disk_bytes()?;
        engine.wal().seal_active()?;
        let target = engine.wal().stats().last_seq;
        engine.wait_applied_through(target)?;
        // The watermark first, then the map: every batch up to it is in the map.
        let covered_seq = engine.applied_watermark()?;
        let map = engine.state().snapshot();
        // Applied is not yet durable in `Interval`/`Never` mode: make sure the
        // WAL holds everything the snapshot will claim to cover, or a power
        // loss could leave a gap between the snapshot and the WAL.
        engine.wal().sync_written()?;
        let created_ms = engine.now_ms();
        let meta = SnapshotMeta {
            node: engine.node(),
            covered_seq,
            hlc: engine.hlc().high_water(),
            created_ms,
        };
        // Cursor moves reach the file before they decide what is dropped,
        // so a restart finds positions at least this far along.
        self.flush_cursors()?;
        let gc = self.tombstone_rule(covered_seq, crate::sync::peer_cursors(&map));
        let mut dropped: Vec<(StoreKey, KeyState)> = Vec::new();
        let keep = |key: &StoreKey, state: &KeyState| {
            let collect = gc.collects(state);
            if collect {
                dropped.push((key.clone(), state.clone()));
            }
            !collect
        };
        let dedup = engine.wal().dedup_entries_through(covered_seq);
        let snap_dir = self.dir.join(SNAPSHOT_DIR);
        let written = snapshot::write_snapshot(&self.io, &snap_dir, &meta, &map, &dedup, keep)?;
        drop(map);
        // Read it back before anything it covers is dropped, and drop nothing
        // if the WAL failed meanwhile.
        snapshot::read_snapshot(&self.io, &written.path)?;
        engine.wal().check_usable()?;
        let (snapshots_removed, oldest_retained) = self.prune_snapshots(&snap_dir)?;
        let (keep_from, cursors_behind) = self.retention_start(oldest_retained);
        self.flush_cursors()?;
        let (segments_removed, _) = engine.wal().truncate_before(keep_from)?;
        let tombstones_dropped = engine.state().remove_unchanged(&dropped);
        Ok(CompactionReport {
            snapshot_seq: covered_seq,
            snapshot_path: written.path,
            snapshot_bytes: written.size_bytes,
            entries: written.entries,
            bytes_before,
            bytes_after: self.disk_bytes()?,
            segments_removed,
            snapshots_removed,
            tombstones_dropped,
            cursors_behind,
            duration_ms: 0,
        })
    }

    /// Replaces the whole state, but for this copy's own `_local` keys,
    /// with `records` plus `local` (a follower installing a leader's
    /// snapshot, with its new cursor in `local`), durably: a snapshot of
    /// the new state covering everything in the WAL so far is written and
    /// verified first; then the map is swapped and the older snapshots and
    /// the WAL they covered are dropped. A crash before the snapshot's
    /// rename leaves the old state whole; after it, the new one. The caller
    /// must be the only writer while this runs.
    pub fn install_state(&self, records: Vec<Record>, local: Vec<Record>) -> Result<Written> {
        let _running = self.running.lock();
        self.install_state_inner(records, local)
            .inspect_err(|e| poison_on_failed_sync(&self.engine, e))
    }

    fn install_state_inner(&self, records: Vec<Record>, local: Vec<Record>) -> Result<Written> {
        let engine = &self.engine;
        engine.wal().check_usable()?;
        engine.wal().seal_active()?;
        let target = engine.wal().stats().last_seq;
        engine.wait_applied_through(target)?;
        let covered_seq = engine.applied_watermark()?;
        engine.wal().sync_written()?;
        let fresh = State::new();
        let own_local: Vec<Record> = engine.state().with_map(|map| {
            map.iter()
                .filter(|(k, _)| crate::sync::is_local(k))
                .map(|(k, s)| Record {
                    store_key: k.clone(),
                    delta: s.clone(),
                })
                .collect()
        });
        fresh.replay(own_local);
        fresh.replay(records);
        fresh.replay(local);
        let map = fresh.snapshot();
        let meta = SnapshotMeta {
            node: engine.node(),
            covered_seq,
            hlc: engine.hlc().high_water(),
            created_ms: engine.now_ms(),
        };
        let dedup = engine.wal().dedup_entries_through(covered_seq);
        let snap_dir = self.dir.join(SNAPSHOT_DIR);
        let written =
            snapshot::write_snapshot(&self.io, &snap_dir, &meta, &map, &dedup, |_, _| true)?;
        snapshot::read_snapshot(&self.io, &written.path)?;
        engine.wal().check_usable()?;
        engine.state().replace(map);
        // Older snapshots hold the replaced state: none may be fallen back on.
        for (seq, path) in snapshot::list_snapshots(&self.io, &snap_dir)? {
            if seq < covered_seq {
                self.io.remove_file(&path)?;
            }
        }
        self.io.sync_dir(&snap_dir)?;
        engine
            .wal()
            .truncate_before(covered_seq.saturating_add(1))?;
        let mut p = self.progress.lock();
        p.snapshot_seq = Some(covered_seq);
        p.snapshot_bytes = written.size_bytes;
        p.compacted_at = Some(Instant::now());
        Ok(written)
    }

    /// Which tombstones this compaction may drop.
    fn tombstone_rule(&self, covered_seq: u64, peers: Vec<crate::sync::SyncCursor>) -> TombstoneGc {
        let cursors = self.cursors.lock();
        // Lost cursors (a damaged file) may have held any tombstone.
        let cursors_passed = !cursors.are_lost()
            && cursors
                .values()
                .all(|c| c.needs_resync || c.seq >= covered_seq);
        drop(cursors);
        let now_ms = self.engine.now_ms();
        TombstoneGc {
            peers,
            enabled: cursors_passed,
            older_than_ms: now_ms.saturating_sub(self.engine.options().tombstone_grace_ms),
        }
    }

    /// Deletes snapshots beyond the retained number; returns how many, and
    /// the covered sequence number of the oldest one kept.
    fn prune_snapshots(&self, snap_dir: &Path) -> Result<(usize, u64)> {
        let retained = self.engine.options().snapshots_retained.max(1);
        let snapshots = snapshot::list_snapshots(&self.io, snap_dir)?;
        let oldest_retained = snapshots
            .iter()
            .take(retained)
            .map(|s| s.0)
            .min()
            .unwrap_or(0);
        let doomed = snapshots.iter().skip(retained).collect::<Vec<_>>();
        for (_, path) in &doomed {
            self.io.remove_file(path)?;
        }
        if !doomed.is_empty() {
            self.io.sync_dir(snap_dir)?;
        }
        Ok((doomed.len(), oldest_retained))
    }

    /// The first sequence number the WAL must keep: just after the oldest
    /// retained snapshot, or earlier for cursors within the retention
    /// limit. Cursors beyond it are marked and named.
    fn retention_start(&self, oldest_retained: u64) -> (u64, Vec<String>) {
        let snapshot_start = oldest_retained.saturating_add(1);
        let segments = self.engine.wal().segment_ranges();
        let wal_start = segments.first().map_or(snapshot_start, |s| s.first_seq);
        let bytes_from = |seq: u64| -> u64 {
            segments
                .iter()
                .filter(|s| s.last_seq >= seq)
                .map(|s| s.size_bytes)
                .sum()
        };
        let limit = self.engine.options().wal_retention_bytes_max;
        let mut start = snapshot_start;
        let mut behind = Vec::new();
        let mut cursors = self.cursors.lock();
        for (name, cursor) in cursors.iter_mut() {
            let wanted = cursor.seq.saturating_add(1);
            if wanted >= start || cursor.needs_resync {
                continue;
            }
            // Behind the start of the WAL, or too far behind to keep for.
            if wanted < wal_start || bytes_from(wanted) > limit {
                cursor.needs_resync = true;
                behind.push(name.clone());
            } else {
                start = wanted;
            }
        }
        if !behind.is_empty() {
            cursors.mark_dirty();
        }
        (start, behind)
    }

    /// Bytes of WAL segments and snapshots on disk.
    fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for sub in [WAL_DIR, SNAPSHOT_DIR] {
            let dir = self.dir.join(sub);
            for name in self.io.list_dir_if_exists(&dir)? {
                total += self.io.len_bytes(&dir.join(name)).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// A failed fsync (of a snapshot, a directory, a segment) poisons the
/// database: the kernel may have dropped the pages it did not write, and
/// a later fsync that "succeeds" would let the next compaction delete the
/// WAL a snapshot never made durable.
fn poison_on_failed_sync(engine: &Engine, e: &Error) {
    if let Error::Io {
        op: crate::error::IoOp::Sync,
        ..
    } = e
    {
        engine.poison(&format!("compaction: {e}"));
    }
}

/// The tombstone GC rule of one compaction.
struct TombstoneGc {
    /// What each sync peer has reported seeing: a tombstone is kept until
    /// every one of them has seen it.
    peers: Vec<crate::sync::SyncCursor>,
    /// False while a registered cursor has not passed the snapshot.
    enabled: bool,
    /// Tombstones stamped before this (ms since the epoch) are past grace.
    older_than_ms: u64,
}

impl TombstoneGc {
    /// A key can be dropped if it is a tombstone past its grace period with
    /// no counter totals left to merge.
    fn collects(&self, state: &KeyState) -> bool {
        let Some(register) = &state.register else {
            return false;
        };
        self.enabled
            && register.value.is_none()
            && register.stamp.physical_ms < self.older_than_ms
            && state.counter.as_ref().is_none_or(|c| c.totals.is_empty())
            && self.peers.iter().all(|p| p.has_seen(register.stamp))
    }
}

impl Compactor {
    /// Starts the background thread.
    pub fn start(maintenance: Arc<Maintenance>) -> Result<Compactor> {
        let (requests, receive) = bounded::<Request>(16);
        let handle = std::thread::Builder::new()
            .name("mergekv-compactor".into())
            .spawn(move || run(&maintenance, &receive))
            .map_err(|e| Error::Poisoned {
                cause: Arc::from(format!("cannot start the compactor thread: {e}")),
            })?;
        Ok(Compactor {
            requests: Some(requests),
            handle: Some(handle),
        })
    }

    /// Runs a compaction on the compactor thread and waits for it.
    pub fn compact_now(&self) -> Result<CompactionReport> {
        let (reply, answer) = bounded(1);
        let requests = self.requests.as_ref().ok_or(Error::Closed)?;
        requests
            .send(Request::Compact(reply))
            .map_err(|_| Error::Closed)?;
        answer.recv().unwrap_or_else(|_| {
            Err(Error::Poisoned {
                cause: Arc::from("the compactor thread stopped"),
            })
        })
    }

    /// Like [`Compactor::compact_now`], but says why the database cannot
    /// compact (poisoned, closed) rather than that the thread is gone.
    pub fn compact_now_on(&self, engine: &Engine) -> Result<CompactionReport> {
        engine.wal().check_usable()?;
        self.compact_now()
            .map_err(|e| engine.wal().check_usable().err().unwrap_or(e))
    }

    /// Stops the thread after the compaction in progress, if any.
    pub fn stop(&mut self) {
        self.requests.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(maintenance: &Maintenance, requests: &Receiver<Request>) {
    let tick = Duration::from_millis(maintenance.engine.options().compactor_tick_ms.max(1));
    loop {
        let reply = match requests.recv_timeout(tick) {
            Ok(Request::Compact(reply)) => Some(reply),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if reply.is_none()
            && (!maintenance.due() || maintenance.engine.wal().check_usable().is_err())
        {
            continue;
        }
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| maintenance.compact()));
        let result = outcome.unwrap_or_else(|_| {
            let cause = "the compactor thread panicked";
            maintenance.engine.poison(cause);
            Err(Error::Poisoned {
                cause: Arc::from(cause),
            })
        });
        let poisoned = matches!(result, Err(Error::Poisoned { .. }));
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        if poisoned {
            return;
        }
    }
}
