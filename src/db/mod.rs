//! [`Db`]: open a directory, recover, start the threads; the handle
//! applications hold.

pub(crate) mod engine;
pub(crate) mod read;
mod recover;
pub(crate) mod replica;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{DriftStats, Hlc, NodeId, Stamp};
use crate::command::{Batch, DEFAULT_KEYSPACE, Outcome, validate_keyspace_name};
use crate::compactor::{CompactionReport, Compactor, CompactorStats, CursorInfo, Maintenance};
use crate::crdt::{KeyState, Visible};
use crate::error::{Error, Result};
use crate::io::Io;
use crate::meta::{self, DirLock};
use crate::options::{Options, SyncMode};
use crate::record::keyspace_prefix;
use crate::sync::digest::Digest;
use crate::sync::{ImportReport, SegmentEntry, SegmentImport, SyncCursor};
use crate::wal::recovery::{self, RecoveryReport};
use crate::wal::{WAL_DIR, Wal, WalStats};
use crate::worker::Pool;

/// Records per WAL frame when a change set is too large for one frame: each
/// chunk is one idempotent, atomic batch.
const IMPORT_CHUNK_RECORDS: usize = 10_000;
use engine::Engine;
use read::{ReadView, Scan, ScanOptions, Value};

/// An open database. Cheap to clone; every clone is the same database. The
/// database closes when the last clone is dropped (or on [`Db::close`]).
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    engine: Arc<Engine>,
    pool: Pool,
    maintenance: Arc<Maintenance>,
    compactor: Compactor,
    dir: PathBuf,
    recovery: RecoveryReport,
    default_prefix: Vec<u8>,
    flusher: Option<(Sender<()>, JoinHandle<()>)>,
    /// Opened with `Options::read_only`: every write path refuses.
    read_only: bool,
    /// The leader this copy follows, while its directory says so.
    follower_of: parking_lot::RwLock<Option<String>>,
    /// Set once this open has drawn a new replication epoch.
    epoch_redrawn: std::sync::atomic::AtomicBool,
    _lock: DirLock,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .field("node", &self.inner.engine.node)
            .finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Db> {
        Self::open_with(dir, Options::default())
    }

    /// Opens the database in `dir`, creating it if needed and
    /// `options.create_if_missing` allows.
    ///
    /// Fails with [`Error::Locked`] if the directory is already open, and
    /// with [`Error::Corruption`] if the WAL is damaged (unless
    /// `options.recovery_mode` is `Repair`).
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        options.validate()?;
        let io = Io::new(options.faults.clone());
        if !options.create_if_missing && io.read_if_exists(&meta::meta_path(&dir))?.is_none() {
            return Err(Error::NotADatabase { dir });
        }
        io.create_dir_all(&dir)?;
        let lock = meta::lock_dir(&io, &dir)?;
        let follower_of = meta::read_follower_marker(&io, &dir)?;
        if follower_of.is_some() && !options.read_only {
            return Err(Error::ReadOnly { dir, follower_of });
        }
        let read_only = options.read_only;
        let wal_dir = dir.join(WAL_DIR);
        let meta = match meta::read_meta(&io, &dir)? {
            Some(meta) => meta,
            None => {
                refuse_orphan_wal(&io, &wal_dir)?;
                meta::create_meta(&io, &dir, options.wall_clock.now_ms())?
            }
        };
        io.create_dir_all(&wal_dir)?;
        let recovered = recover::recover(&io, &dir, meta.node, &options)?;
        let mut hlc = Hlc::new(meta.node, options.max_drift_ms, options.drift_policy);
        if let Some(stamp) = recovered.max_stamp {
            hlc.observe_recovered(stamp);
        }
        let wal = Wal::open(
            &wal_dir,
            io.clone(),
            meta.node,
            &options,
            recovered.wal_start,
        )?;
        let engine = Arc::new(Engine::new(options, meta.node, hlc, wal, recovered.state));
        let maintenance = Arc::new(Maintenance::new(
            engine.clone(),
            io,
            &dir,
            recovered.snapshot,
        ));
        let compactor = Compactor::start(maintenance.clone())?;
        let pool = Pool::start(&engine)?;
        let flusher = start_flusher(&engine)?;
        Ok(Db {
            inner: Arc::new(DbInner {
                engine,
                pool,
                maintenance,
                compactor,
                dir,
                recovery: recovered.report,
                default_prefix: keyspace_prefix(DEFAULT_KEYSPACE),
                flusher,
                read_only,
                follower_of: parking_lot::RwLock::new(follower_of),
                epoch_redrawn: std::sync::atomic::AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    /// The directory this database lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// This copy's node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.engine.node
    }

    /// True if this handle refuses writes (opened read-only, or a follower).
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The leader this database follows, if its directory is a follower's.
    pub fn follower_of(&self) -> Option<String> {
        self.inner.follower_of.read().clone()
    }

    /// Makes a follower's directory writable again: removes the marker
    /// that makes every writable open fail with [`Error::ReadOnly`]. The
    /// follower must not be running (the directory lock is taken). Returns
    /// false if the directory was not a follower. This is how an operator
    /// fails over; the promoted copy writes under its own node id, so its
    /// own followers start from a snapshot.
    pub fn promote(dir: impl AsRef<Path>) -> Result<bool> {
        let dir = dir.as_ref();
        let io = Io::new(None);
        if io.read_if_exists(&meta::meta_path(dir))?.is_none() {
            return Err(Error::NotADatabase {
                dir: dir.to_path_buf(),
            });
        }
        let lock = meta::lock_dir(&io, dir)?;
        if !meta::remove_follower_marker(&io, dir)? {
            return Ok(false);
        }
        drop(lock);
        // Its writes from now on are its own history: forget the position
        // in the old leader's, so following again starts from a snapshot.
        let db = Db::open(dir)?;
        db.forget_follower_position()?;
        db.close()?;
        Ok(true)
    }

    /// The wall clock's time now, in ms since the epoch.
    pub(crate) fn wall_now_ms(&self) -> u64 {
        self.inner.engine.options.wall_clock.now_ms()
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                dir: self.inner.dir.clone(),
                follower_of: self.follower_of(),
            });
        }
        Ok(())
    }

    /// The WAL, for the replication leader's reader.
    pub(crate) fn wal(&self) -> &crate::wal::Wal {
        &self.inner.engine.wal
    }

    /// A file-system seam like the database's own (the same fault plan).
    pub(crate) fn io(&self) -> Io {
        Io::new(self.inner.engine.options.faults.clone())
    }

    /// What opening found in the WAL (torn tail cut, repair done, counts).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// A handle on the keyspace `name` (validated; names starting with `_`
    /// are reserved).
    pub fn keyspace(&self, name: &str) -> Result<Keyspace> {
        validate_keyspace_name(name, false)?;
        Ok(self.keyspace_unchecked(name))
    }

    /// A handle on a reserved keyspace, for mergekv's own services.
    #[doc(hidden)]
    pub fn reserved_keyspace(&self, name: &str) -> Result<Keyspace> {
        validate_keyspace_name(name, true)?;
        Ok(self.keyspace_unchecked(name))
    }

    fn keyspace_unchecked(&self, name: &str) -> Keyspace {
        Keyspace {
            db: self.clone(),
            name: Arc::from(name),
            prefix: Arc::from(keyspace_prefix(name)),
        }
    }

    /// The default keyspace (what the methods on `Db` itself use).
    pub fn default_keyspace(&self) -> Keyspace {
        self.keyspace_unchecked(DEFAULT_KEYSPACE)
    }

    /// Commits a batch atomically; one outcome per operation, in order.
    /// Returns once the batch is durable as the sync mode promises (in
    /// `SyncMode::Always`: written and fdatasync'ed) and visible to reads.
    pub fn write(&self, batch: Batch) -> Result<Vec<Outcome>> {
        self.check_writable()?;
        self.inner.pool.submit(&self.inner.engine, batch)
    }

    /// Puts `value` at `key` in the default keyspace; durable on return as
    /// [`Db::write`] says.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Outcome> {
        self.default_keyspace().put(key, value)
    }

    /// Deletes `key` in the default keyspace; durable on return as
    /// [`Db::write`] says.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<Outcome> {
        self.default_keyspace().delete(key)
    }

    /// Adds `delta` to the counter at `key` in the default keyspace; durable
    /// on return as [`Db::write`] says.
    pub fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<Outcome> {
        self.default_keyspace().increment(key, delta)
    }

    /// What `key` in the default keyspace reads as.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Option<Value> {
        let prefix = &self.inner.default_prefix;
        let state = &self.inner.engine.state;
        state.with_map(|map| read::get_value(map, prefix, key.as_ref()))
    }

    /// The bytes at `key` in the default keyspace.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Arc<[u8]>> {
        match self.get_value(key) {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    /// The counter at `key` in the default keyspace (0 if absent).
    pub fn counter(&self, key: impl AsRef<[u8]>) -> i64 {
        self.get_value(key)
            .and_then(|v| v.as_counter())
            .unwrap_or(0)
    }

    /// Scans the default keyspace.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        self.default_keyspace().scan(opts)
    }

    /// A consistent snapshot for multi-key reads.
    pub fn view(&self) -> ReadView {
        ReadView::new(self.inner.engine.state.snapshot())
    }

    /// Figures about the database.
    pub fn stats(&self) -> Stats {
        let engine = &self.inner.engine;
        let snapshot = engine.state.snapshot();
        let (hlc, drift) = {
            let clock = engine.hlc.lock();
            (clock.high_water(), clock.drift_stats())
        };
        let mut stats = Stats {
            dir: self.inner.dir.clone(),
            node_id: engine.node.to_string(),
            hlc: hlc.to_string(),
            drift,
            sync_mode: format!("{:?}", engine.options.sync_mode),
            worker_threads: engine.options.worker_threads,
            wal: engine.wal.stats(),
            compactor: self.inner.maintenance.stats(),
            poisoned: engine.wal.check_usable().err().map(|e| e.to_string()),
            follower_of: self.follower_of(),
            follower_position: self.follower_position().ok().flatten(),
            ..Stats::default()
        };
        for (_, state) in snapshot.iter() {
            count_key(&mut stats, state);
        }
        stats
    }

    /// Runs a compaction now (on the compactor thread) and reports what it
    /// did: a snapshot, then truncation of the WAL it covers.
    pub fn compact_now(&self) -> Result<CompactionReport> {
        self.inner.compactor.compact_now_on(&self.inner.engine)
    }

    /// A change set of every change newer than `cursor` (a version vector of
    /// what the receiver has), and the cursor to use next time. The bytes
    /// are self-verifying; see `docs/FORMAT.md`.
    pub fn export_since(&self, cursor: &SyncCursor) -> Result<(Vec<u8>, SyncCursor)> {
        self.export_changes(cursor, None)
    }

    /// Like [`Db::export_since`], limited to keys in `buckets` of the state
    /// digest (those [`Digest::differing_buckets`] named), so a sync sends
    /// only what differs.
    pub fn export_buckets(
        &self,
        cursor: &SyncCursor,
        buckets: &[usize],
    ) -> Result<(Vec<u8>, SyncCursor)> {
        let mut sorted = buckets.to_vec();
        sorted.sort_unstable();
        self.export_changes(cursor, Some(&sorted))
    }

    fn export_changes(
        &self,
        cursor: &SyncCursor,
        buckets: Option<&[usize]>,
    ) -> Result<(Vec<u8>, SyncCursor)> {
        // The map first, then the complete cursor: every write the cursor
        // can claim (own writes up to the clock's high water) is in the map.
        let map = self.inner.engine.state.snapshot();
        let records = crate::sync::collect_changes(&map, cursor, buckets);
        // A partial export advertises nothing: the receiver must not claim
        // what it was not sent.
        let complete = match buckets {
            None => self.complete_cursor()?,
            Some(_) => SyncCursor::new(),
        };
        let mut after = cursor.clone();
        after.merge(&complete);
        Ok((
            crate::sync::changeset::encode(self.node_id(), &complete, &records),
            after,
        ))
    }

    /// Per origin, the newest stamp up to which this copy holds everything:
    /// its own writes, and the cursors of change sets it imported whole.
    pub fn complete_cursor(&self) -> Result<SyncCursor> {
        let mut complete: SyncCursor = self
            .local_keyspace()?
            .get_typed(crate::sync::COMPLETE_CURSOR_KEY)?
            .unwrap_or_default();
        let own = self.inner.engine.hlc.lock().high_water();
        complete.merge(&SyncCursor {
            seen: [(own.node, own)].into_iter().collect(),
        });
        Ok(complete)
    }

    /// A change set of everything `peer` has not seen, by the cursor stored
    /// for it (everything, for a peer never heard from).
    pub fn export_for(&self, peer: &str) -> Result<(Vec<u8>, SyncCursor)> {
        self.export_since(&self.peer_cursor(peer)?)
    }

    /// Imports a change set from `peer`, then stores durably what the peer
    /// has seen (the cursor it exported with), so the next export to it
    /// sends only what it lacks, and tombstone GC waits for it. The cursor is
    /// written after the data it covers: an interrupted import is resumed by
    /// importing the same change set again.
    pub fn import_from(&self, peer: &str, bytes: &[u8]) -> Result<ImportReport> {
        let report = self.import(bytes)?;
        let changes = crate::sync::changeset::decode(bytes)?;
        self.merge_local_cursor(&crate::sync::peer_cursor_key(peer), &changes.cursor)?;
        Ok(report)
    }

    /// What `peer` has reported seeing (empty if never heard from).
    pub fn peer_cursor(&self, peer: &str) -> Result<SyncCursor> {
        Ok(self
            .local_keyspace()?
            .get_typed(crate::sync::peer_cursor_key(peer))?
            .unwrap_or_default())
    }

    /// The sealed WAL segments this copy can offer, by content hash.
    pub fn segment_manifest(&self) -> Result<Vec<SegmentEntry>> {
        let io = Io::new(self.inner.engine.options.faults.clone());
        self.inner
            .engine
            .wal
            .sealed_segments()
            .iter()
            .map(|s| {
                let bytes = io.read(&s.path)?;
                Ok(SegmentEntry {
                    hash: *blake3::hash(&bytes).as_bytes(),
                    size_bytes: bytes.len() as u64,
                })
            })
            .collect()
    }

    /// The bytes of one of this copy's sealed segments, by its hash (to
    /// send to a peer that lacks it).
    pub fn segment_bytes(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let io = Io::new(self.inner.engine.options.faults.clone());
        for s in self.inner.engine.wal.sealed_segments() {
            let bytes = io.read(&s.path)?;
            if blake3::hash(&bytes).as_bytes() == hash {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// The entries of `peer_manifest` this copy has neither written nor
    /// imported.
    pub fn missing_segments(&self, peer_manifest: &[SegmentEntry]) -> Result<Vec<SegmentEntry>> {
        let own: std::collections::HashSet<[u8; 32]> = self
            .segment_manifest()?
            .into_iter()
            .map(|e| e.hash)
            .collect();
        let local = self.local_keyspace()?;
        Ok(peer_manifest
            .iter()
            .filter(|e| !own.contains(&e.hash))
            .filter(|e| {
                local
                    .get(crate::sync::segment_marker_key(&e.hash))
                    .is_none()
            })
            .cloned()
            .collect())
    }

    /// Applies a peer's sealed segment, given with its content hash: every
    /// frame's records, drift-checked and merged through the WAL like an
    /// import. A hash that does not match applies nothing; a segment already
    /// here is skipped.
    pub fn import_segment(&self, bytes: &[u8], hash: &[u8; 32]) -> Result<SegmentImport> {
        self.check_writable()?;
        if blake3::hash(bytes).as_bytes() != hash {
            return Ok(SegmentImport::HashMismatch);
        }
        let marker = crate::sync::segment_marker_key(hash);
        let local = self.local_keyspace()?;
        if local.get(&marker).is_some() || self.segment_manifest()?.iter().any(|e| &e.hash == hash)
        {
            return Ok(SegmentImport::Skipped);
        }
        let frames =
            crate::wal::recovery::read_whole_segment(bytes).map_err(|reason| Error::Decode {
                what: "WAL segment",
                reason,
            })?;
        // Another copy's own bookkeeping is never ours to apply.
        let records: Vec<_> = frames
            .into_iter()
            .flat_map(|f| f.records)
            .filter(|r| !crate::sync::is_local(&r.store_key))
            .collect();
        let engine = &self.inner.engine;
        engine.receive_stamps(&records)?;
        let (mut written, mut skipped) = (0, 0);
        for (index, chunk) in records.chunks(IMPORT_CHUNK_RECORDS).enumerate() {
            let mut id = blake3::Hasher::new();
            id.update(b"segment");
            id.update(hash);
            id.update(&(index as u64).to_le_bytes());
            let part = engine.import_chunk(chunk, id.finalize().as_bytes())?;
            written += part.applied;
            skipped += part.stale + part.duplicates;
        }
        local.put(&marker, [1u8])?;
        Ok(SegmentImport::Applied {
            keys_written: written,
            keys_skipped: skipped,
        })
    }

    fn local_keyspace(&self) -> Result<Keyspace> {
        self.reserved_keyspace(crate::sync::LOCAL_KEYSPACE)
    }

    /// The state digest: equal on two copies exactly when their states are.
    pub fn digest(&self) -> Digest {
        crate::sync::digest::digest(&self.inner.engine.state.snapshot())
    }

    /// Verifies a change set, checks every stamp against the drift bound,
    /// and applies it durably with the CRDT rules. Importing the same
    /// change set again changes nothing (its chunks come back as
    /// duplicates); a damaged one, or one with a stamp too far ahead,
    /// applies nothing.
    pub fn import(&self, bytes: &[u8]) -> Result<ImportReport> {
        self.check_writable()?;
        let mut changes = crate::sync::changeset::decode(bytes)?;
        // Another copy's own bookkeeping is never ours to apply.
        changes
            .records
            .retain(|r| !crate::sync::is_local(&r.store_key));
        self.inner.engine.receive_stamps(&changes.records)?;
        let report = self.import_records(&changes)?;
        // Landed whole: this copy now holds everything the exporter did.
        self.merge_local_cursor(crate::sync::COMPLETE_CURSOR_KEY, &changes.cursor)?;
        Ok(report)
    }

    /// Merges `cursor` into the local cursor stored under `key`, writing
    /// only if that changes it (so a repeated import writes nothing).
    fn merge_local_cursor(&self, key: &str, cursor: &SyncCursor) -> Result<()> {
        let local = self.local_keyspace()?;
        let stored: SyncCursor = local.get_typed(key)?.unwrap_or_default();
        let mut merged = stored.clone();
        merged.merge(cursor);
        if merged != stored {
            local.put_typed(key, &merged)?;
        }
        Ok(())
    }

    fn import_records(&self, changes: &crate::sync::changeset::ChangeSet) -> Result<ImportReport> {
        let engine = &self.inner.engine;
        let mut report = ImportReport::default();
        if changes.records.is_empty() {
            return Ok(report);
        }
        let chunk_id = |index: u64| {
            let mut id = blake3::Hasher::new();
            id.update(&changes.digest);
            id.update(&index.to_le_bytes());
            *id.finalize().as_bytes()
        };
        // One WAL frame when it fits: the change set then lands whole or not
        // at all.
        match engine.import_chunk(&changes.records, &chunk_id(u64::MAX)) {
            Err(Error::LimitExceeded {
                limit: "frame_payload_bytes_max",
                ..
            }) => {}
            whole => return whole,
        }
        for (index, chunk) in changes.records.chunks(IMPORT_CHUNK_RECORDS).enumerate() {
            let part = engine.import_chunk(chunk, &chunk_id(index as u64))?;
            report.applied += part.applied;
            report.stale += part.stale;
            report.duplicates += part.duplicates;
        }
        Ok(report)
    }

    /// Registers (or moves) a cursor: a reader of this database's changes
    /// that has everything up to sequence number `seq`. Registered cursors
    /// hold back WAL truncation (up to `wal_retention_bytes_max`) and
    /// tombstone GC. At most [`crate::compactor::CURSORS_MAX`].
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.inner.maintenance.set_cursor(name, seq)
    }

    /// A registered cursor.
    pub fn cursor(&self, name: &str) -> Option<CursorInfo> {
        self.inner.maintenance.cursor(name)
    }

    /// Forgets a cursor; true if it was registered.
    pub fn remove_cursor(&self, name: &str) -> bool {
        self.inner.maintenance.remove_cursor(name)
    }

    /// Writes and syncs everything acknowledged and reports any failure
    /// doing so; other clones of this handle can no longer write afterwards.
    /// The threads stop and the directory lock is released when the last
    /// clone is dropped.
    pub fn close(self) -> Result<()> {
        self.inner.engine.wal.close()
    }
}

fn count_key(stats: &mut Stats, state: &KeyState) {
    match state.visible() {
        Visible::Bytes(_) => stats.keys += 1,
        Visible::Counter(_) => {
            stats.keys += 1;
            stats.counters += 1;
        }
        Visible::Absent if state.is_tombstone() => stats.tombstones += 1,
        Visible::Absent => {}
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        self.compactor.stop();
        self.pool.shutdown();
        if let Some((stop, handle)) = self.flusher.take() {
            drop(stop);
            let _ = handle.join();
        }
        // Errors here have nowhere to go; `Db::close` reports them.
        let _ = self.engine.wal.close();
    }
}

/// Figures about a database, from [`Db::stats`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// The database directory.
    pub dir: PathBuf,
    /// This copy's node id, in hex.
    pub node_id: String,
    /// Keys that read as a value or counter, in all keyspaces.
    pub keys: u64,
    /// Of those, counters.
    pub counters: u64,
    /// Deleted keys whose tombstones are kept.
    pub tombstones: u64,
    /// The HLC high-water mark.
    pub hlc: String,
    /// Drift seen in remote stamps.
    pub drift: DriftStats,
    /// The sync mode.
    pub sync_mode: String,
    /// Worker threads.
    pub worker_threads: usize,
    /// WAL figures.
    pub wal: WalStats,
    /// Snapshot and compaction figures.
    pub compactor: CompactorStats,
    /// The leader this copy follows, if it is a follower.
    pub follower_of: Option<String>,
    /// A follower's stored replication position (its cursor, and the
    /// leader's position when it was stored).
    pub follower_position: Option<replica::FollowerPosition>,
    /// The failure that poisoned the database, if any.
    pub poisoned: Option<String>,
}

/// A named keyspace: the same operations as [`Db`], confined to one
/// namespace. Cheap to clone.
#[derive(Clone)]
pub struct Keyspace {
    db: Db,
    name: Arc<str>,
    prefix: Arc<[u8]>,
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace")
            .field("name", &self.name)
            .finish()
    }
}

impl Keyspace {
    /// The keyspace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn single(&self, batch: Batch) -> Result<Outcome> {
        let mut outcomes = self.db.write(batch)?;
        outcomes.pop().ok_or_else(|| Error::InvalidCommand {
            reason: "no outcome for a single operation".into(),
        })
    }

    /// Puts `value` at `key`; durable on return as [`Db::write`] says.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.put_in(&self.name, key, value);
        self.single(batch)
    }

    /// Deletes `key` (writes a tombstone); durable on return as
    /// [`Db::write`] says.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.delete_in(&self.name, key);
        self.single(batch)
    }

    /// Adds `delta` to the counter at `key`; the outcome carries the new
    /// value. Durable on return as [`Db::write`] says.
    pub fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.increment_in(&self.name, key, delta);
        self.single(batch)
    }

    /// Stores a serde value (encoded with the crate's codec) at `key`.
    pub fn put_typed<T: Serialize>(&self, key: impl AsRef<[u8]>, value: &T) -> Result<Outcome> {
        self.put(key, crate::codec::encode_typed(value)?)
    }

    /// Reads a value stored with [`Keyspace::put_typed`].
    pub fn get_typed<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        self.get(key)
            .map(|b| crate::codec::decode_typed(&b))
            .transpose()
    }

    /// What `key` reads as: bytes, a counter, or nothing.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Option<Value> {
        let state = &self.db.inner.engine.state;
        state.with_map(|map| read::get_value(map, &self.prefix, key.as_ref()))
    }

    /// The bytes at `key`, if it reads as a register value.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Arc<[u8]>> {
        match self.get_value(key) {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    /// The counter at `key` (0 if absent or not a counter).
    pub fn counter(&self, key: impl AsRef<[u8]>) -> i64 {
        self.get_value(key)
            .and_then(|v| v.as_counter())
            .unwrap_or(0)
    }

    /// Scans this keyspace; the iterator reads a consistent snapshot.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        Scan::new(self.db.inner.engine.state.snapshot(), &self.prefix, opts)
    }

    /// The stamp a register write to `key` carries, if any (for tests and
    /// tools that need to reason about last-writer-wins).
    pub fn stamp_of(&self, key: impl AsRef<[u8]>) -> Option<Stamp> {
        let store_key = [&self.prefix[..], key.as_ref()].concat();
        self.db
            .inner
            .engine
            .state
            .read(&store_key, |s| s.and_then(KeyState::newest_stamp))
    }
}

/// Refuses to create a new identity over a WAL that has lost its `META`:
/// the segments name the old node, and mixing ids would break LWW.
fn refuse_orphan_wal(io: &Io, wal_dir: &Path) -> Result<()> {
    // A missing (or unreadable) WAL directory has no segments to protect;
    // an unreadable one fails loudly a moment later, when replay reads it.
    let Ok(segments) = recovery::list_segments(io, wal_dir) else {
        return Ok(());
    };
    match segments.first() {
        Some((_, path)) => Err(Error::corruption(
            &wal_dir.parent().unwrap_or(wal_dir).join(meta::META_FILE),
            0,
            format!(
                "META is missing but WAL segments exist (first: {})",
                path.display()
            ),
        )),
        None => Ok(()),
    }
}

/// In `Interval` mode, a thread that fsyncs the WAL every interval.
fn start_flusher(engine: &Arc<Engine>) -> Result<Option<(Sender<()>, JoinHandle<()>)>> {
    let SyncMode::Interval(interval_ms) = engine.options.sync_mode else {
        return Ok(None);
    };
    let (stop, stopped) = bounded::<()>(1);
    let engine = engine.clone();
    let interval = Duration::from_millis(interval_ms.max(1));
    let handle = std::thread::Builder::new()
        .name("mergekv-flusher".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                if engine.wal.sync_written().is_err() {
                    // The WAL is poisoned now; writers will say so.
                    return;
                }
            }
        })
        .map_err(|e| Error::Poisoned {
            cause: Arc::from(format!("cannot start flusher thread: {e}")),
        })?;
    Ok(Some((stop, handle)))
}
