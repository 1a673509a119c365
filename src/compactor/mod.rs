//! The compactor: memtable flushes, run merges, WAL truncation, tombstone
//! GC, in a background thread.
//!
//! A compaction:
//! 1. seals the active WAL segment (writers wait only for this rotation:
//!    the old segment's fdatasync and the new segment's creation);
//! 2. waits until every batch written so far is applied, then freezes the
//!    active memtable (writers go on into a fresh one at once): the frozen
//!    memtable covers the applied watermark `S` read under the freeze;
//! 3. writes each frozen memtable out as a run, verified, and installs it
//!    with a new manifest covering its `S` (`runs.rs`);
//! 4. deletes the WAL segments wholly covered by the manifest, except those
//!    a registered cursor still needs (within `wal_retention_bytes_max`);
//! 5. merges runs as the size-tiered policy asks (every run, for
//!    `compact_now`), dropping tombstones past their grace period that every
//!    registered cursor and sync peer has passed, in merges that reach the
//!    oldest run.
//!
//! A crash at any step leaves a state that opens correctly: a run becomes
//! part of the state only by the manifest's rename, after its own fsync and
//! verification, and no segment or run is deleted before a manifest that
//! no longer needs it is durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;
use serde::Serialize;

use crate::crdt::KeyState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::manifest::Manifest;
use crate::record::Record;
use crate::run::{BlockCache, RUN_DIR};
use crate::snapshot::{self, SNAPSHOT_DIR, SnapshotMeta};
use crate::state::{Lower, State};
use crate::wal::WAL_DIR;

mod cursors;
mod runs;

pub use runs::{MERGE_RUNS_MIN, MERGE_SIZE_RATIO, RUNS_MAX};

pub use cursors::{CURSOR_NAME_BYTES_MAX, CURSORS_FILE, CURSORS_MAX};
pub(crate) use cursors::{Cursors, decode_cursors, encode_cursors};

/// What a key rotation's rewrite did ([`crate::Db::complete_key_rotation`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RekeyReport {
    /// Runs written under the current key (by a merge of every run).
    pub runs_rewritten: u64,
    /// WAL segments rewritten under the current key.
    pub segments_rewritten: usize,
    /// Files still under another key (0: the old keys are no longer
    /// needed).
    pub files_left: usize,
    /// Why files could not be rewritten (a damaged WAL segment kept for a
    /// cursor, say): each is left as it was, under its old key.
    pub errors: Vec<String>,
    /// Files in `quarantine/` from the time the database was in clear,
    /// sealed under the current key when its rotation from no key finished.
    pub quarantine_sealed: usize,
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// The sequence number the runs cover now (every WAL frame up to it is
    /// in them).
    pub snapshot_seq: u64,
    /// The last run written (empty if none was).
    pub snapshot_path: PathBuf,
    /// Bytes of the runs written (flushed and merged).
    pub snapshot_bytes: u64,
    /// Entries in the runs written.
    pub entries: u64,
    /// Runs written (flushes and merges).
    pub runs_written: usize,
    /// Runs replaced by merges.
    pub runs_merged: usize,
    /// Live runs afterwards.
    pub runs: usize,
    /// WAL, run and snapshot bytes on disk before.
    pub bytes_before: u64,
    /// ...and after.
    pub bytes_after: u64,
    /// WAL segments deleted.
    pub segments_removed: usize,
    /// Snapshot files of the format before runs deleted (after a
    /// migration).
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
    /// The sequence number the runs cover, if a manifest (or, before the
    /// first flush of a database of the older format, a snapshot) exists.
    pub snapshot_seq: Option<u64>,
    /// Bytes of the live runs.
    pub snapshot_bytes: u64,
    /// Live runs.
    pub runs: usize,
    /// Estimated bytes of the active memtable.
    pub memtable_bytes: u64,
    /// Estimated bytes of frozen memtables not yet written out.
    pub frozen_bytes: u64,
    /// Bytes written to runs since open (flushes and merges), for write
    /// amplification.
    pub run_bytes_written: u64,
    /// The block cache: hits, misses, resident bytes, budget.
    pub cache_hits: u64,
    /// Block cache misses (each a block read from its file).
    pub cache_misses: u64,
    /// Bytes of blocks in the cache.
    pub cache_bytes: u64,
    /// Bytes of WAL segments holding anything after what the runs cover
    /// (all of the WAL if nothing is covered).
    pub wal_bytes_since_snapshot: u64,
    /// Compactions run since open.
    pub compactions: u64,
    /// The last background compaction's error, if it failed.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Progress {
    snapshot_seq: Option<u64>,
    run_bytes_written: u64,
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
    /// The manifest on disk (`None` before the first flush).
    manifest: Mutex<Option<Manifest>>,
    /// The id the next run gets (also past runs abandoned since open).
    next_run_id: Mutex<u64>,
    /// The block cache every run of this database reads through.
    cache: Arc<BlockCache>,
    /// Files under a key other than the current one are waiting to be
    /// rewritten (a key rotation); the background thread does it.
    rekey_pending: std::sync::atomic::AtomicBool,
    /// One key rotation at a time.
    rotation: Mutex<()>,
}

enum Request {
    /// `compact_now`: a flush and a merge of every run.
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
        covered: Covered,
        cursors: Cursors,
    ) -> Self {
        let progress = Progress {
            snapshot_seq: covered
                .manifest
                .as_ref()
                .map(|m| m.covered_seq)
                .or(covered.snapshot_seq),
            // The interval counts from open.
            compacted_at: Some(Instant::now()),
            ..Progress::default()
        };
        let next_run_id = covered.manifest.as_ref().map_or(1, |m| m.next_run_id);
        Self {
            engine,
            io,
            dir: dir.to_path_buf(),
            cursors: Mutex::new(cursors),
            progress: Mutex::new(progress),
            running: Mutex::new(()),
            manifest: Mutex::new(covered.manifest),
            next_run_id: Mutex::new(next_run_id),
            cache: covered.cache,
            rekey_pending: std::sync::atomic::AtomicBool::new(false),
            rotation: Mutex::new(()),
        }
    }

    /// Held by a key rotation (one at a time).
    pub fn rotation_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.rotation.lock()
    }

    /// Asks the background thread to rewrite what older keys encrypt.
    pub fn request_rekey(&self) {
        self.rekey_pending
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// True while a rewrite asked for has not finished.
    pub fn rekey_pending(&self) -> bool {
        self.rekey_pending
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Rewrites every file a key other than the current one encrypts (or
    /// that is in clear, in an encrypted database): the runs by a flush and
    /// a merge of every run (the merge writes them anew under the current
    /// key), the WAL segments the runs do not cover (kept for cursors) one
    /// by one. Each file is replaced atomically, so a crash leaves the old
    /// file or the new one; the old key is needed until this returns.
    pub fn rekey(&self) -> Result<RekeyReport> {
        let current = self.engine.wal().keyring().read().current_id();
        let stale_runs = |lower: &crate::state::Lower| {
            lower.runs.iter().filter(|r| r.key_id() != current).count()
        };
        let runs_before = stale_runs(&self.engine.state().lower());
        let mut report = RekeyReport::default();
        if runs_before > 0 || self.legacy_snapshot_count()? > 0 {
            let compacted = self.compact_rekeying(true)?;
            report.runs_rewritten = compacted.runs_written as u64;
        }
        let _running = self.running.lock();
        let (rewritten, errors) = self.engine.wal().rewrite_sealed_under_current_key()?;
        report.segments_rewritten = rewritten;
        report.errors = errors.iter().map(ToString::to_string).collect();
        report.files_left = stale_runs(&self.engine.state().lower())
            + self
                .engine
                .wal()
                .segment_key_ids()?
                .iter()
                .filter(|k| **k != current)
                .count();
        if report.files_left == 0 {
            self.finish_rotation_from_clear(&mut report)?;
            self.rekey_pending
                .store(false, std::sync::atomic::Ordering::Release);
        }
        Ok(report)
    }

    /// After the rewrite of a database that was in clear: what quarantine
    /// kept from then is sealed under the current key (each file whole, its
    /// name bound in), and META stops allowing files in clear (from now on
    /// an open refuses one as forged).
    fn finish_rotation_from_clear(&self, report: &mut RekeyReport) -> Result<()> {
        let Some(mut meta) = crate::meta::read_meta(&self.io, &self.dir)? else {
            return Ok(());
        };
        if !meta.clear_files_pending || meta.key_id.is_none() {
            return Ok(());
        }
        let keyring = self.engine.wal().keyring().read().clone();
        let quarantine = self.dir.join(crate::wal::recovery::QUARANTINE_DIR);
        for name in self.io.list_dir_if_exists(&quarantine)? {
            let path = quarantine.join(&name);
            if name.ends_with(".tmp") {
                continue;
            }
            let bytes = self.io.read(&path)?;
            if crate::crypto::sealed::is_sealed(&bytes) {
                continue;
            }
            let sealed = crate::crypto::sealed::seal(
                &keyring,
                crate::crypto::sealed::SealedKind::Quarantine,
                name.as_bytes(),
                bytes,
            )?;
            self.io.write_atomic(&path, &sealed)?;
            report.quarantine_sealed += 1;
        }
        meta.clear_files_pending = false;
        crate::meta::write_meta(&self.io, &self.dir, &meta)
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
        let lower = self.engine.state().lower();
        let (memtable_bytes, frozen_bytes) = self.engine.state().memtable_bytes();
        let cache = self.cache.stats();
        CompactorStats {
            snapshot_seq: p.snapshot_seq,
            snapshot_bytes: lower.runs.iter().map(|r| r.info().size_bytes).sum(),
            runs: lower.runs.len(),
            memtable_bytes,
            frozen_bytes,
            run_bytes_written: p.run_bytes_written,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_bytes: cache.resident_bytes,
            wal_bytes_since_snapshot: since,
            compactions: p.compactions,
            last_error: p.last_error.clone(),
        }
    }

    /// True if the active memtable has reached its limit.
    pub fn memtable_full(&self) -> bool {
        self.engine.state().memtable_bytes().0 >= self.engine.options().memtable_bytes_max
    }

    fn due(&self) -> bool {
        let options = &self.engine.options();
        if self.memtable_full() || !self.engine.state().lower().frozen.is_empty() {
            return true;
        }
        // Measured on disk, so a database reopened often (by the CLI, say)
        // still compacts once its WAL has grown.
        let since = self.stats().wal_bytes_since_snapshot;
        let last_seq = self.engine.wal().stats().last_seq;
        let p = self.progress.lock();
        if last_seq <= p.snapshot_seq.unwrap_or(0) && self.manifest.lock().is_some() {
            return false; // nothing written since the last flush
        }
        if since >= options.compaction_wal_bytes_min {
            return true;
        }
        let interval = Duration::from_millis(options.compaction_interval_ms);
        let elapsed = p.compacted_at.map_or(Duration::ZERO, |t| t.elapsed());
        options.compaction_interval_ms > 0 && elapsed >= interval
    }

    /// Runs one compaction now: a flush, then merges (of every run if
    /// `full`, else as the policy asks).
    pub fn compact(&self, full: bool) -> Result<CompactionReport> {
        self.compact_rekeying(full)
    }

    fn compact_rekeying(&self, full: bool) -> Result<CompactionReport> {
        let _running = self.running.lock();
        let started = Instant::now();
        tracing::debug!(full, "compaction started");
        let result = self.compact_inner(full);
        let duration_ms = runs::millis(started.elapsed());
        let mut p = self.progress.lock();
        match &result {
            Ok(report) => {
                trace_compacted(full, report, duration_ms);
                self.engine.state().set_flush_failure(None);
                p.compactions += 1;
                p.compacted_at = Some(Instant::now());
                p.snapshot_seq = Some(report.snapshot_seq);
                p.run_bytes_written += report.snapshot_bytes;
                p.last_error = None;
            }
            Err(e) => {
                // Until now only `stats()` showed a background failure.
                tracing::error!(full, error = %e, duration_ms, "compaction failed");
                p.last_error = Some(e.to_string());
                poison_on_failed_sync(&self.engine, e);
                // Writers waiting for room hear of it, rather than wait on.
                if !self.engine.state().lower().frozen.is_empty() || self.memtable_full() {
                    self.engine
                        .state()
                        .set_flush_failure(Some(Arc::from(e.to_string())));
                }
            }
        }
        result.map(|mut r| {
            r.duration_ms = duration_ms;
            r
        })
    }

    fn compact_inner(&self, full: bool) -> Result<CompactionReport> {
        let engine = &self.engine;
        engine.wal().check_usable()?;
        let bytes_before = self.disk_bytes()?;
        let snapshots_before = self.legacy_snapshot_count()?;
        self.seal_and_wait_applied()?;
        // The watermark is read under the freeze's lock: every batch up to
        // it is in the frozen memtable or below (below already, if nothing
        // was frozen). While an earlier flush is still to be done (it
        // failed), nothing new is frozen: the frozen memtables would pile
        // up with every failed try, and writers would never wait for room.
        let waiting = engine.state().lower().frozen.first().map(|f| f.covered_seq);
        let covered_now = match waiting {
            Some(covered) => covered,
            None => engine.state().freeze(|| engine.applied_watermark())?.0,
        };
        // Applied is not yet durable in `Interval`/`Never` mode: make sure the
        // WAL holds everything the manifest will claim to cover, or a power
        // loss could leave a gap between the runs and the WAL.
        engine.wal().sync_written()?;
        // Cursor moves reach the file before they decide what is dropped,
        // so a restart finds positions at least this far along.
        self.flush_cursors()?;
        let mut written = runs::Written::default();
        self.flush_frozen(&mut written)?;
        let covered_seq = self.cover_through(covered_now)?;
        engine.wal().check_usable()?;
        let gc = self.tombstone_rule(
            covered_seq,
            crate::sync::peer_cursors(&engine.state().view())?,
        );
        let (keep_from, cursors_behind) = self.retention_start(covered_seq);
        self.flush_cursors()?;
        let (segments_removed, _) = engine.wal().truncate_before(keep_from)?;
        self.merge_runs(full, &gc, &mut written)?;
        let snapshots_after = self.legacy_snapshot_count()?;
        Ok(CompactionReport {
            snapshot_seq: covered_seq,
            snapshot_path: written.last_run.map(|r| r.path).unwrap_or_default(),
            snapshot_bytes: written.bytes_written,
            entries: written.entries_written,
            runs_written: written.runs_written,
            runs_merged: written.runs_merged,
            runs: engine.state().lower().runs.len(),
            bytes_before,
            bytes_after: self.disk_bytes()?,
            segments_removed,
            snapshots_removed: snapshots_before.saturating_sub(snapshots_after),
            tombstones_dropped: written.tombstones_dropped,
            cursors_behind,
            duration_ms: 0,
        })
    }

    /// Makes the manifest cover `seq` (every batch up to it is in the runs:
    /// the caller flushed everything frozen at or after it); writes one if
    /// there is none yet or it covers less. Returns what it covers.
    fn cover_through(&self, seq: u64) -> Result<u64> {
        let current = self.manifest.lock().as_ref().map(|m| m.covered_seq);
        if current.is_some_and(|c| c >= seq) {
            return Ok(current.unwrap_or(seq));
        }
        let mut manifest = self.next_manifest(seq);
        manifest.covered_seq = seq;
        self.write_manifest(&manifest, &runs::NewRuns::default())?;
        *self.manifest.lock() = Some(manifest);
        self.remove_legacy_snapshots()?;
        Ok(seq)
    }

    /// Replaces the whole state, but for this copy's own `_local` keys,
    /// with `records` plus `local` (a follower installing a leader's
    /// snapshot, with its new cursor in `local`), durably: a run of the new
    /// state and a manifest naming only it, covering everything in the WAL
    /// so far, are written first; then the state is swapped and the older
    /// runs and the WAL they covered are dropped. A crash before the
    /// manifest's rename leaves the old state whole; after it, the new one.
    /// The caller must be the only writer while this runs.
    pub fn install_state(&self, records: Vec<Record>, local: Vec<Record>) -> Result<RunSummary> {
        let _running = self.running.lock();
        self.install_state_inner(records, local)
            .inspect_err(|e| poison_on_failed_sync(&self.engine, e))
    }

    fn install_state_inner(&self, records: Vec<Record>, local: Vec<Record>) -> Result<RunSummary> {
        let engine = &self.engine;
        self.seal_and_wait_applied()?;
        let covered_seq = engine.applied_watermark()?;
        engine.wal().sync_written()?;
        let fresh = State::new();
        let local_prefix = crate::record::keyspace_prefix(crate::sync::LOCAL_KEYSPACE);
        let mut own_local: Vec<Record> = Vec::new();
        for entry in engine.state().view().range(
            std::ops::Bound::Included(local_prefix.clone()),
            prefix_end(&local_prefix),
            false,
        ) {
            let (store_key, delta) = entry?;
            own_local.push(Record { store_key, delta });
        }
        fresh.replay(own_local)?;
        fresh.replay(records)?;
        fresh.replay(local)?;
        let view = fresh.view();
        let mut written = runs::Written::default();
        let (run, digest) = self.write_whole_state(&view, covered_seq, &mut written)?;
        let old_runs = engine.state().lower().runs.clone();
        engine.state().replace_all(
            Lower {
                frozen: Vec::new(),
                runs: run.into_iter().collect(),
                runs_digest: digest,
            },
            true,
        );
        for r in &old_runs {
            self.io.remove_file(&r.info().path)?;
        }
        self.io.sync_dir(&self.dir.join(RUN_DIR))?;
        self.remove_legacy_snapshots()?;
        engine
            .wal()
            .truncate_before(covered_seq.saturating_add(1))?;
        let mut p = self.progress.lock();
        p.snapshot_seq = Some(covered_seq);
        p.compacted_at = Some(Instant::now());
        Ok(RunSummary {
            covered_seq,
            entries: written.entries_written,
            size_bytes: written.bytes_written,
        })
    }

    /// Writes a snapshot file of the whole state (what a replication leader
    /// sends a follower), returning it opened for reading and already
    /// unlinked (so nothing is left behind, whatever happens to the
    /// transfer), with the sequence number it covers. `hold` is called
    /// with that sequence number before any later compaction can truncate
    /// the WAL after it (it registers the follower's retention cursor).
    pub fn snapshot_for_shipping(
        &self,
        hold: impl FnOnce(u64) -> Result<()>,
    ) -> Result<(crate::io::IoFile, u64, u64)> {
        let (view, covered_seq) = {
            let _running = self.running.lock();
            let engine = &self.engine;
            self.seal_and_wait_applied()?;
            let covered_seq = engine.applied_watermark()?;
            let view = engine.state().view();
            engine.wal().sync_written()?;
            hold(covered_seq)?;
            (view, covered_seq)
        };
        let meta = SnapshotMeta {
            node: self.engine.node(),
            covered_seq,
            hlc: self.engine.high_water(),
            created_ms: self.engine.now_ms(),
        };
        let snap_dir = self.dir.join(SNAPSHOT_DIR);
        let name = format!("ship-{covered_seq:020}-{}.snap", ship_nonce());
        // Encrypted like every state file; the follower, holding the same
        // key, reads it as sent.
        let cipher = self
            .engine
            .wal()
            .keyring()
            .read()
            .fresh_cipher(crate::crypto::Domain::Snapshot)?;
        let written = snapshot::write_snapshot_as(
            &self.io,
            &snap_dir,
            &name,
            &meta,
            cipher.as_ref(),
            view.iter_uncached(),
            &[],
        )?;
        let file = self.io.open_read(&written.path)?;
        self.io.remove_file(&written.path)?;
        Ok((file, covered_seq, written.size_bytes))
    }

    /// Seals the active WAL segment and waits until every batch written so
    /// far is applied (what a flush, an install or a shipped snapshot
    /// covers is then read from the applied watermark).
    fn seal_and_wait_applied(&self) -> Result<()> {
        let wal = self.engine.wal();
        wal.check_usable()?;
        wal.seal_active()?;
        let target = wal.stats().last_seq;
        self.engine.wait_applied_through(target)
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

    /// The first sequence number the WAL must keep: just after what the
    /// runs cover, or earlier for cursors within the retention limit.
    /// Cursors beyond it are marked and named.
    fn retention_start(&self, covered_seq: u64) -> (u64, Vec<String>) {
        let covered_start = covered_seq.saturating_add(1);
        let segments = self.engine.wal().segment_ranges();
        let wal_start = segments.first().map_or(covered_start, |s| s.first_seq);
        let bytes_from = |seq: u64| -> u64 {
            segments
                .iter()
                .filter(|s| s.last_seq >= seq)
                .map(|s| s.size_bytes)
                .sum()
        };
        let limit = self.engine.options().wal_retention_bytes_max;
        let mut start = covered_start;
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

    /// Snapshot files of the format before runs still on disk.
    fn legacy_snapshot_count(&self) -> Result<usize> {
        let names = self.io.list_dir_if_exists(&self.dir.join(SNAPSHOT_DIR))?;
        Ok(names.iter().filter(|n| n.starts_with("snap-")).count())
    }

    /// Bytes of WAL segments, runs and snapshots on disk.
    fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for sub in [WAL_DIR, RUN_DIR, SNAPSHOT_DIR] {
            let dir = self.dir.join(sub);
            for name in self.io.list_dir_if_exists(&dir)? {
                total += self.io.len_bytes(&dir.join(name)).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// What a follower's state install wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// The sequence number the new state covers.
    pub covered_seq: u64,
    /// Keys in it.
    pub entries: u64,
    /// Bytes of its run.
    pub size_bytes: u64,
}

/// What recovery found that the compactor continues from.
pub(crate) struct Covered {
    /// The manifest, if the directory has one.
    pub manifest: Option<Manifest>,
    /// Without one: the sequence number the loaded snapshot (of the older
    /// format) covers.
    pub snapshot_seq: Option<u64>,
    /// The cache the opened runs read through.
    pub cache: Arc<BlockCache>,
}

/// The exclusive end of the key range starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> std::ops::Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return std::ops::Bound::Excluded(end);
        }
    }
    std::ops::Bound::Unbounded
}

/// A name part that keeps two shipped snapshots of one sequence number
/// (two followers at once) apart.
fn ship_nonce() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Says what a compaction did (one event; a cursor past the retention
/// limit, which must now resync, as a warning).
fn trace_compacted(full: bool, r: &CompactionReport, duration_ms: u64) {
    tracing::info!(
        full,
        covered_seq = r.snapshot_seq,
        runs_written = r.runs_written,
        runs_merged = r.runs_merged,
        runs = r.runs,
        bytes_written = r.snapshot_bytes,
        entries_written = r.entries,
        bytes_before = r.bytes_before,
        bytes_after = r.bytes_after,
        wal_segments_removed = r.segments_removed,
        tombstones_dropped = r.tombstones_dropped,
        duration_ms,
        "compaction finished"
    );
    if !r.cursors_behind.is_empty() {
        tracing::warn!(
            cursors = ?r.cursors_behind,
            "cursors fell behind the WAL retention limit and must resync"
        );
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
pub(crate) struct TombstoneGc {
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
    pub(crate) fn collects(&self, state: &KeyState) -> bool {
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
        // The memtable's doorbell: one pending ring is enough.
        let (ring, rings) = bounded::<()>(1);
        let engine = &maintenance.engine;
        engine
            .state()
            .set_flush_signal(engine.options().memtable_bytes_max, ring);
        let handle = std::thread::Builder::new()
            .name("mergekv-compactor".into())
            .spawn(move || {
                // Events of background work name their database. A span
                // made while no subscriber wants it stays disabled.
                let span = tracing::info_span!(
                    "mergekv.compactor",
                    path = %maintenance.dir.display()
                );
                let _entered = span.enter();
                run(&maintenance, &receive, &rings);
            })
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

/// When the background rewrite of a key rotation is tried next: at once,
/// then, after each failure, after twice the previous wait (1 s to 5 min).
#[derive(Default)]
struct RekeyBackoff {
    next: Option<(Instant, Duration)>,
}

impl RekeyBackoff {
    /// Time, as the input: this is the compactor thread's schedule.
    fn due(&self) -> bool {
        self.next.is_none_or(|(at, _)| Instant::now() >= at)
    }

    fn failed(&mut self) {
        let wait = self
            .next
            .map_or(REKEY_RETRY_MIN, |(_, w)| (w * 2).min(REKEY_RETRY_MAX));
        self.next = Some((Instant::now() + wait, wait));
    }
}

/// The first wait before a failed rotation rewrite is tried again.
const REKEY_RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between tries.
const REKEY_RETRY_MAX: Duration = Duration::from_secs(300);

fn run(maintenance: &Maintenance, requests: &Receiver<Request>, rings: &Receiver<()>) {
    let tick = Duration::from_millis(maintenance.engine.options().compactor_tick_ms.max(1));
    // A rotation's rewrite that failed or left files (a damaged segment)
    // is tried again later, backing off; compaction goes on meanwhile.
    let mut rekey_backoff = RekeyBackoff::default();
    loop {
        let (reply, full) = crossbeam_channel::select! {
            recv(requests) -> request => match request {
                Ok(Request::Compact(reply)) => (Some(reply), true),
                Err(_) => return,
            },
            recv(rings) -> _ => (None, false),
            default(tick) => (None, false),
        };
        if reply.is_none()
            && maintenance.rekey_pending()
            && rekey_backoff.due()
            && maintenance.engine.wal().check_usable().is_ok()
        {
            // A rotation's rewrite, in the background. A failure (or a
            // file it could not rewrite) is kept for stats and tried again
            // later; it never holds back the compaction below.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| maintenance.rekey()));
            match outcome {
                Ok(Ok(report)) if report.files_left == 0 => {
                    tracing::info!(
                        runs_rewritten = report.runs_rewritten,
                        wal_segments_rewritten = report.segments_rewritten,
                        "key rotation rewrite finished"
                    );
                    rekey_backoff = RekeyBackoff::default();
                }
                Ok(Ok(report)) => {
                    tracing::error!(
                        files_left = report.files_left,
                        errors = ?report.errors,
                        "key rotation rewrite left files under an old key; retrying later"
                    );
                    maintenance.progress.lock().last_error = Some(format!(
                        "key rotation: {} file(s) still under an old key: {}",
                        report.files_left,
                        report.errors.join("; ")
                    ));
                    rekey_backoff.failed();
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "key rotation rewrite failed; retrying later");
                    poison_on_failed_sync(&maintenance.engine, &e);
                    maintenance.progress.lock().last_error = Some(format!("key rotation: {e}"));
                    rekey_backoff.failed();
                }
                Err(_) => {
                    let cause = "the compactor thread panicked during a key rotation's rewrite";
                    maintenance.engine.poison(cause);
                    return;
                }
            }
        }
        if reply.is_none()
            && (!maintenance.due() || maintenance.engine.wal().check_usable().is_err())
        {
            continue;
        }
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| maintenance.compact(full)));
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
