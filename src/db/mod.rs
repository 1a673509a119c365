//! [`Db`]: open a directory, recover, start the threads; the handle
//! applications hold.

mod identity;
mod keys;
pub(crate) use keys::check as check_keys;
mod keyspace;
mod metrics;
pub(crate) mod position;
pub(crate) mod read;
mod reader;

use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};
use serde::Serialize;

use crate::clock::{DriftStats, Hlc, NodeId};
use crate::command::{Batch, DEFAULT_KEYSPACE, Outcome, validate_keyspace_name};
use crate::compactor::{
    CompactionReport, Compactor, CompactorStats, CursorInfo, Cursors, Maintenance,
};
use crate::crdt::{KeyState, Visible};
use crate::crypto::KeyId;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::meta::{self, DirLock};
use crate::options::{Options, RecoveryMode, SyncMode};
use crate::record::keyspace_prefix;
use crate::sync::digest::Digest;
use crate::sync::{ImportReport, SegmentEntry, SegmentImport, SyncCursor, exchange};
use crate::wal::recovery::{self, RecoveryReport};
use crate::wal::{WAL_DIR, Wal, WalStats};
use crate::worker::Pool;

use crate::engine::{self, Engine};
pub use keyspace::Keyspace;
pub use position::FollowerPosition;
pub(crate) use position::LEADER_EPOCH_KEY;
use read::{OpenFlag, ReadView, Scan, ScanOptions, Value};
pub use reader::{READ_ONLY_OPEN_TRIES_MAX, READERS_LOCK_FILE, ReadOnlyDb};

/// An open database. Cheap to clone; every clone is the same database. The
/// database closes when the last clone is dropped, or on [`Db::close`]:
/// after that every operation on every clone fails with [`Error::Closed`].
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
    /// The node id this open replaced, and why.
    renewed: Option<(NodeId, meta::Renewal)>,
    /// Repairs acted on since open (see [`Db::clear_repair_marker`]).
    settled: parking_lot::Mutex<Vec<String>>,
    default_prefix: Vec<u8>,
    flusher: Option<(Sender<()>, JoinHandle<()>)>,
    /// Opened with `Options::read_only`: every write path refuses.
    read_only: bool,
    /// Set by [`Db::close`]; every clone, view and scan checks it.
    open: OpenFlag,
    /// The leader this copy follows, while its directory says so.
    follower_of: parking_lot::RwLock<Option<String>>,
    _lock: DirLock,
}

/// Where encryption at rest stands ([`Db::encryption`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EncryptionStatus {
    /// The key new files are encrypted with (`None`: not encrypted).
    pub key_id: Option<KeyId>,
    /// Files (WAL segments, runs, snapshots) under another key, or in
    /// clear in an encrypted database: a rotation has not finished.
    pub files_under_other_keys: usize,
    /// The other keys those files need.
    pub other_key_ids: Vec<KeyId>,
    /// A rewrite is asked for and not done.
    pub rewrite_pending: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .field("node", &self.inner.engine.node())
            .finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database in `dir` with default options.
    ///
    /// # Errors
    ///
    /// As [`Db::open_with`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Db> {
        Self::open_with(dir, Options::default())
    }

    /// Opens the database in `dir`, creating it if needed and
    /// `options.create_if_missing` allows.
    ///
    /// Fails with [`Error::Locked`] if the directory is already open, and
    /// with [`Error::Corruption`] if the WAL is damaged (unless
    /// `options.recovery_mode` is `Repair`).
    ///
    /// # Errors
    ///
    /// - [`Error::LimitExceeded`] if `options` break a limit the WAL format
    ///   allows ([`Options::validate`]);
    /// - [`Error::NotADatabase`] if `dir` holds no database and
    ///   `options.create_if_missing` is false;
    /// - [`Error::Locked`] if the directory is already open, in this process or
    ///   another;
    /// - [`Error::ReadOnly`] if `dir` is a replication follower's and
    ///   `options.read_only` is false;
    /// - [`Error::Key`] if the encryption keys given do not open the database
    ///   (none, the wrong one, an old one missing during a rotation, or a key
    ///   for a database in clear);
    /// - [`Error::Corruption`] if a file is damaged in a way recovery must not
    ///   guess about (a damaged WAL only under
    ///   [`RecoveryMode::Strict`](crate::RecoveryMode::Strict));
    /// - [`Error::Io`] if a file operation fails, or the worker, flusher or
    ///   compactor thread cannot be started.
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref();
        // Field values are evaluated only when a subscriber wants the span.
        let span = tracing::info_span!(
            "mergekv.open",
            path = %dir.display(),
            read_only = options.read_only,
            create_if_missing = options.create_if_missing,
            recovery_mode = ?options.recovery_mode,
            sync_mode = ?options.sync_mode,
            encrypted = options.encryption_key.is_some(),
        );
        let _entered = span.enter();
        let started = std::time::Instant::now();
        match Self::open_in(dir.to_path_buf(), options) {
            Ok(db) => {
                db.trace_opened(started.elapsed());
                Ok(db)
            }
            Err(e) => {
                tracing::error!(error = %e, "open failed");
                Err(e)
            }
        }
    }

    /// Says what the open found (one event; nothing is computed without a
    /// subscriber that wants it).
    fn trace_opened(&self, elapsed: Duration) {
        let r = &self.inner.recovery;
        tracing::info!(
            node = %self.node_id(),
            recovery = recovery_outcome(r),
            wal_segments_replayed = r.segments_replayed,
            wal_segments_skipped = r.segments_skipped,
            runs = r.runs.as_ref().map_or(0, |u| u.runs),
            runs_bytes = r.runs.as_ref().map_or(0, |u| u.bytes),
            covered_seq = r.runs.as_ref().map_or(0, |u| u.covered_seq),
            frames_replayed = r.frames_replayed,
            ops_replayed = r.ops_replayed,
            snapshots_skipped = r.snapshots_skipped.len(),
            identity_renewed = self.inner.renewed.is_some(),
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "database opened"
        );
        if let Some((old, why)) = self.inner.renewed {
            tracing::warn!(
                old_node = %old,
                node = %self.node_id(),
                reason = ?why,
                "identity renewed"
            );
        }
    }

    fn open_in(dir: PathBuf, options: Options) -> Result<Db> {
        options.validate()?;
        let io = Io::new(options.faults.clone());
        let repair = options.recovery_mode == RecoveryMode::Repair;
        if !options.create_if_missing
            && io.read_if_exists(&meta::meta_path(&dir))?.is_none()
            && !(repair && identity::holds_files(&io, &dir)?)
        {
            return Err(Error::NotADatabase { dir });
        }
        io.create_dir_all(&dir)?;
        let lock = meta::lock_dir(&io, &dir)?;
        let readers = readers_lock(&io, &dir, repair)?;
        let follower_of = meta::read_follower_marker(&io, &dir)?;
        if follower_of.is_some() && !options.read_only {
            return Err(Error::ReadOnly { dir, follower_of });
        }
        let read_only = options.read_only;
        let wal_dir = dir.join(WAL_DIR);
        let mut keyring = options.keyring()?;
        // A damaged META is left for `find` to report (or repair, which
        // checks the keys against the META it rebuilds before writing it).
        let meta_now = meta::read_meta(&io, &dir).ok().flatten();
        keys::check(&io, &dir, meta_now.as_ref(), &keyring)?;
        let mut found = identity::find(&io, &dir, &options, &keyring)?;
        if found.meta.key_id != keyring.current_id() {
            if !read_only || follower_of.is_some() {
                // A new current key with the database's key among the old
                // ones: a rotation (see `keys`). META names the new key
                // before recovery or anything after it writes a file.
                found.meta.key_id = keyring.current_id();
                meta::write_meta(&io, &dir, &found.meta)?;
            } else {
                // A read-only open changes nothing: whatever it writes is
                // under the key META names.
                keyring = keyring.with_current(found.meta.key_id);
            }
        }
        io.create_dir_all(&wal_dir)?;
        let cache = crate::run::BlockCache::new(options.cache_bytes_max);
        let lineage = found.meta.lineage();
        let mut recovered = engine::recover_state(&engine::RecoverFrom {
            io: &io,
            dir: &dir,
            nodes: &lineage,
            options: &options,
            cache: &cache,
            keyring: &keyring,
            manifest_mac_required: found.meta.all_files_encrypted(),
            node_since_seq: found.meta.node_since_seq,
            modify: true,
        })?;
        let (meta, renewed) = identity::settle(
            &io,
            &dir,
            found,
            identity::Recovery {
                report: &recovered.report,
                next_seq: recovered.wal_start.next_seq,
            },
            &options,
            &keyring,
            follower_of.is_some(),
        )?;
        let keyring = Arc::new(parking_lot::RwLock::new(keyring));
        // A segment header names its writer: a new identity writes in a
        // segment of its own (the writer also starts one if the last
        // segment names another id: a crash after META was rewritten).
        recovered.wal_start.start_fresh |= renewed.is_some();
        let mut hlc = Hlc::new(meta.node, options.max_drift_ms, options.drift_policy);
        if let Some(stamp) = recovered.max_stamp {
            hlc.observe_recovered(stamp);
        }
        let wal = Wal::open(
            &wal_dir,
            io.clone(),
            meta.node,
            &options,
            keyring,
            recovered.wal_start,
        )?;
        let engine = Arc::new(Engine::new(options, meta.node, hlc, wal, recovered.state));
        let cursors = load_cursors(&io, &dir, &engine)?;
        let io_for_keys = io.clone();
        let maintenance = Arc::new(Maintenance::new(
            engine.clone(),
            io,
            &dir,
            crate::compactor::Covered {
                manifest: recovered.manifest,
                snapshot_seq: recovered.snapshot_seq,
                cache,
            },
            cursors,
        ));
        // A rotation's rewrite that had not finished (a crash, a close, or
        // a rotation made by this open) goes on in the background.
        let current = engine.wal().keyring().read().current_id();
        let stale = crate::engine::key_ids_in_files(&io_for_keys, &dir)?
            .iter()
            .any(|(_, id)| Some(*id) != current)
            || (current.is_some()
                && !crate::engine::files_in_clear(&io_for_keys, &dir)?.is_empty())
            // A rotation from clear that rewrote everything but had not
            // yet sealed the quarantine and cleared META's flag.
            || meta.clear_files_pending;
        if stale && (!read_only || follower_of.is_some()) {
            maintenance.request_rekey();
        }
        let compactor = Compactor::start(maintenance.clone())?;
        let pool = Pool::start(&engine)?;
        let flusher = start_flusher(&engine)?;
        let db = Db {
            inner: Arc::new(DbInner {
                engine,
                pool,
                maintenance,
                compactor,
                dir,
                recovery: recovered.report,
                renewed,
                settled: parking_lot::Mutex::new(Vec::new()),
                default_prefix: keyspace_prefix(DEFAULT_KEYSPACE),
                flusher,
                read_only,
                open: OpenFlag::default(),
                follower_of: parking_lot::RwLock::new(follower_of),
                _lock: lock,
            }),
        };
        db.settle_repair()?;
        drop(readers);
        Ok(db)
    }

    /// Opens the database in `dir` for reading only, beside the process
    /// that writes it (which it never blocks): a consistent state as of
    /// now, refreshed on request ([`ReadOnlyDb::refresh`]). Creates and
    /// changes nothing; a missing directory or one without a database is
    /// [`Error::NotADatabase`].
    ///
    /// # Errors
    ///
    /// As [`Db::open_read_only_with`].
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<ReadOnlyDb> {
        ReadOnlyDb::open(dir.as_ref(), Options::default())
    }

    /// [`Db::open_read_only`] with options (the cache budget, a fault plan
    /// for tests; write-side options are ignored).
    ///
    /// # Errors
    ///
    /// [`Error::NotADatabase`] if `dir` holds no database; [`Error::Key`] if an
    /// encrypted database's key is missing from `options`;
    /// [`Error::Corruption`] or [`Error::Io`] if its files cannot be read.
    pub fn open_read_only_with(dir: impl AsRef<Path>, options: Options) -> Result<ReadOnlyDb> {
        ReadOnlyDb::open(dir.as_ref(), options)
    }

    /// The directory this database lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// This copy's node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.engine.node()
    }

    /// The node id this open replaced with a new one, and why (a copied
    /// directory, or [`Options::renew_identity`]); `None` if it kept it.
    pub fn identity_renewed(&self) -> Option<(NodeId, meta::Renewal)> {
        self.inner.renewed
    }

    /// What this open did that its user should know, one sentence each:
    /// a damaged snapshot set aside (and what the state was rebuilt from),
    /// a repair, a new identity for a copied directory. Empty for an
    /// ordinary open. The CLI prints them on stderr; `stats` lists them.
    pub fn notices(&self) -> Vec<String> {
        let report = &self.inner.recovery;
        let rebuilt_from = match &report.snapshot {
            Some(s) => format!("the older snapshot {} and the WAL", s.path.display()),
            None => "the WAL alone".to_string(),
        };
        // A salvaged snapshot is reported by the salvage line below.
        let salvaged = usize::from(report.salvage.is_some());
        let mut notices: Vec<String> = report
            .snapshots_skipped
            .iter()
            .skip(salvaged)
            .map(|why| {
                format!(
                    "a damaged snapshot was moved to {}/ and the state rebuilt from {rebuilt_from}: {why}",
                    self.dir().join(recovery::QUARANTINE_DIR).display()
                )
            })
            .collect();
        if let Some(t) = report.torn_tail.as_ref().filter(|t| t.hole.is_some()) {
            notices.push(format!(
                "{} held a frame with a hole at byte {} (its size reached the disk, a page of it did not): it and the {} bytes after it were cut, and kept in {}",
                t.segment.display(),
                t.offset_bytes,
                t.bytes_dropped,
                t.hole.as_deref().unwrap_or(Path::new("")).display()
            ));
        }
        if let Some(r) = &report.repair {
            notices.push(format!(
                "repair cut {} at byte {} ({}): {} bytes and {} valid frames moved to {}",
                r.segment.display(),
                r.offset_bytes,
                r.reason,
                r.bytes_dropped,
                r.valid_frames_dropped,
                r.quarantine.display()
            ));
        }
        if let Some(salvage) = &report.salvage {
            let mut line = format!(
                "salvaged the damaged {} {}: kept {} entries (a copy of the damaged file is in quarantine/)",
                if salvage.path.extension().is_some_and(|e| e == "run") {
                    "run"
                } else {
                    "snapshot"
                },
                salvage.path.display(),
                salvage.entries_kept
            );
            for lost in &salvage.lost {
                line.push_str(&format!("; lost {lost}"));
            }
            if salvage.dedup_lost {
                line.push_str("; its dedup window may be lost (a retried batch may apply twice)");
            }
            notices.push(line);
        }
        notices.extend(self.inner.settled.lock().iter().cloned());
        if self.inner.maintenance.cursors_lost() {
            notices.push(format!(
                "the cursor file {} was damaged (a writable open moves it to quarantine/): registered cursors are lost and must be registered again; tombstones are kept until the next open",
                self.dir().join(crate::compactor::CURSORS_FILE).display()
            ));
        }
        if let Some((old, why)) = self.inner.renewed {
            let why = match why {
                meta::Renewal::CopiedDirectory => {
                    "this directory is a copy of the one that identity was issued in"
                }
                meta::Renewal::Requested => "a new identity was asked for",
                meta::Renewal::Repaired => {
                    "a repair dropped writes this copy had made, which peers may hold"
                }
                meta::Renewal::MetaRebuilt => "META was damaged or missing and was rebuilt",
            };
            notices.push(format!(
                "this copy now writes as node {} instead of {old}: {why}",
                self.node_id()
            ));
        }
        notices
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
    ///
    /// # Errors
    ///
    /// As [`Db::promote_with`].
    pub fn promote(dir: impl AsRef<Path>) -> Result<bool> {
        Self::promote_with(dir, Options::default())
    }

    /// [`Db::promote`] for a database that opens only with `options` (an
    /// encrypted one: its keys; the other options are used for the open
    /// that forgets the follower position).
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if the keys in `options` do not open the database;
    /// [`Error::NotADatabase`] if `dir` holds none; [`Error::Locked`] if the
    /// directory is open (the follower still runs); [`Error::Io`] if a file
    /// operation fails; then, for the open that forgets the follower position,
    /// as [`Db::open_with`] and [`Db::write`]. The marker is removed only after
    /// the keys are checked.
    pub fn promote_with(dir: impl AsRef<Path>, options: Options) -> Result<bool> {
        let dir = dir.as_ref();
        let io = Io::new(None);
        // The keys first: a promotion that cannot open the database after
        // removing the marker would leave it half done.
        let keyring = options.keyring()?;
        keys::check(&io, dir, meta::read_meta(&io, dir)?.as_ref(), &keyring)?;
        if io.read_if_exists(&meta::meta_path(dir))?.is_none() {
            return Err(Error::NotADatabase {
                dir: dir.to_path_buf(),
            });
        }
        let lock = meta::lock_dir(&io, dir)?;
        // A staged leader snapshot (a follower killed mid-transfer) is
        // never installed now: it would stay forever.
        let staged = dir.join(meta::INCOMING_SNAPSHOT_FILE);
        let names = io.list_dir(dir)?;
        if names.iter().any(|n| n == meta::INCOMING_SNAPSHOT_FILE) {
            io.remove_file(&staged)?;
            io.sync_dir(dir)?;
        }
        if !meta::remove_follower_marker(&io, dir)? {
            return Ok(false);
        }
        drop(lock);
        // Its writes from now on are its own history: forget the position
        // in the old leader's, so following again starts from a snapshot.
        let db = Db::open_with(dir, options)?;
        db.forget_follower_position()?;
        db.close()?;
        Ok(true)
    }

    /// The wall clock's time now, in ms since the epoch.
    pub(crate) fn wall_now_ms(&self) -> u64 {
        self.inner.engine.now_ms()
    }

    /// `Err(Error::Closed)` once [`Db::close`] was called on any clone.
    pub(crate) fn check_open(&self) -> Result<()> {
        self.inner.open.check()
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                dir: self.inner.dir.clone(),
                follower_of: self.follower_of(),
            });
        }
        Ok(())
    }

    /// The engine, for the services built on a database (replication).
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compaction and the snapshot install a follower needs.
    pub(crate) fn maintenance(&self) -> &Maintenance {
        &self.inner.maintenance
    }

    /// A file-system seam like the database's own (the same fault plan).
    pub(crate) fn io(&self) -> Io {
        Io::new(self.inner.engine.faults().cloned())
    }

    /// Records (in memory) that this directory now follows `leader`; the
    /// caller has written the marker file.
    pub(crate) fn set_follower_of(&self, leader: &str) {
        *self.inner.follower_of.write() = Some(leader.to_string());
    }

    /// True while a repair's marker is on disk: the log's history changed
    /// and the replication epoch must not be reused.
    pub(crate) fn repair_pending(&self) -> Result<bool> {
        let marker = self.dir().join(recovery::REPAIR_MARKER_FILE);
        Ok(self.io().read_if_exists(&marker)?.is_some())
    }

    /// After a repair (in this open or an earlier one, in any process),
    /// forgets the replication epoch, durably, then removes the repair's
    /// marker: the next leader draws a new epoch, so every follower that
    /// held the old history is sent a snapshot. A read-only copy leaves
    /// the marker for its next writable open.
    fn settle_repair(&self) -> Result<()> {
        if self.inner.read_only || !self.repair_pending()? {
            return Ok(());
        }
        let local = self.reserved_keyspace(crate::sync::LOCAL_KEYSPACE)?;
        if local.get(position::LEADER_EPOCH_KEY)?.is_some() {
            local.delete(position::LEADER_EPOCH_KEY)?;
            self.inner.engine.wal().sync_written()?;
        }
        self.clear_repair_marker()
    }

    /// Removes the repair's marker (durably) once what it asked for is
    /// done: the epoch dropped, or a follower's state replaced by a
    /// leader's snapshot. Its text is kept in the notices.
    pub(crate) fn clear_repair_marker(&self) -> Result<()> {
        let io = self.io();
        let marker = self.dir().join(recovery::REPAIR_MARKER_FILE);
        let Some(reason) = io.read_if_exists(&marker)? else {
            return Ok(());
        };
        let reason = String::from_utf8_lossy(&reason);
        tracing::info!(
            repair = reason.trim(),
            "repair acted on: the replication epoch is dropped"
        );
        self.inner.settled.lock().push(format!(
            "a repair was acted on ({}): followers are sent a snapshot",
            reason.trim()
        ));
        io.remove_file(&marker)?;
        io.sync_dir(self.dir())
    }

    /// This follower's stored position (`None` if it never received any).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read; [`Error::Decode`] if the
    /// stored position is damaged.
    pub fn follower_position(&self) -> Result<Option<FollowerPosition>> {
        self.check_open()?;
        let store_key = position::local_key(position::FOLLOWER_POSITION_KEY);
        let Some(bytes) = self
            .inner
            .engine
            .state()
            .get(&store_key)?
            .and_then(|s| s.register.and_then(|r| r.value))
        else {
            return Ok(None);
        };
        FollowerPosition::decode(&bytes)
            .map(Some)
            .map_err(|reason| Error::Decode {
                what: "follower position",
                reason,
            })
    }

    /// Deletes the stored follower position (on promotion).
    fn forget_follower_position(&self) -> Result<()> {
        if self.follower_position()?.is_some() {
            self.reserved_keyspace(crate::sync::LOCAL_KEYSPACE)?
                .delete(position::FOLLOWER_POSITION_KEY)?;
        }
        Ok(())
    }

    /// What opening found in the WAL (torn tail cut, repair done, counts).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// A handle on the keyspace `name` (validated; names starting with `_`
    /// are reserved).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKeyspace`] for an invalid or reserved name;
    /// [`Error::Closed`] once the database is closed.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace> {
        self.check_open()?;
        validate_keyspace_name(name, false)?;
        Ok(self.keyspace_unchecked(name))
    }

    /// A handle on a reserved keyspace, for mergekv's own services.
    #[doc(hidden)]
    pub fn reserved_keyspace(&self, name: &str) -> Result<Keyspace> {
        self.check_open()?;
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
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::ReadOnly`] on a read-only handle or a follower's;
    /// [`Error::InvalidCommand`] for an empty or malformed batch;
    /// [`Error::InvalidKeyspace`] for an invalid keyspace name;
    /// [`Error::LimitExceeded`] for a key, value or batch over its limit in
    /// [`Options`]; [`Error::CounterOverflow`] if an increment would leave the
    /// range of an `i64`; [`Error::FlushFailed`] if the memtable is full and
    /// cannot be written out; [`Error::Io`] or [`Error::Poisoned`] if writing
    /// or syncing the WAL fails (every later write then fails with `Poisoned`
    /// until the database is reopened). A batch that fails is not applied.
    pub fn write(&self, batch: Batch) -> Result<Vec<Outcome>> {
        self.check_writable()?;
        self.inner.pool.submit(&self.inner.engine, batch)
    }

    /// Puts `value` at `key` in the default keyspace; durable on return as
    /// [`Db::write`] says.
    ///
    /// # Errors
    ///
    /// As [`Db::write`].
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Outcome> {
        self.default_keyspace().put(key, value)
    }

    /// Deletes `key` in the default keyspace; durable on return as
    /// [`Db::write`] says.
    ///
    /// # Errors
    ///
    /// As [`Db::write`].
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<Outcome> {
        self.default_keyspace().delete(key)
    }

    /// Adds `delta` to the counter at `key` in the default keyspace; durable
    /// on return as [`Db::write`] says.
    ///
    /// # Errors
    ///
    /// As [`Db::write`] ([`Error::CounterOverflow`] included).
    pub fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<Outcome> {
        self.default_keyspace().increment(key, delta)
    }

    /// What `key` in the default keyspace reads as: bytes, a counter, or
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the database is closed; an I/O or corruption
    /// error if a run could not be read.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        self.check_open()?;
        let prefix = &self.inner.default_prefix;
        let state = self.inner.engine.state();
        read::get_value(|k| state.get(k), prefix, key.as_ref())
    }

    /// The bytes at `key` in the default keyspace: `None` if the key is
    /// absent or deleted.
    ///
    /// ```
    /// # fn main() -> mergekv::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = mergekv::Db::open(dir.path())?;
    /// db.increment("hits", 2)?;
    /// // A counter is not bytes: `get` says so instead of answering `None`.
    /// assert!(matches!(db.get("hits"), Err(mergekv::Error::HoldsCounter { .. })));
    /// assert_eq!(db.counter("hits")?, 2);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::HoldsCounter`] if the key holds a counter (read it with
    /// [`Db::counter`] or [`Db::get_value`]); otherwise as
    /// [`Db::get_value`].
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        let key = key.as_ref();
        read::bytes_of(self.get_value(key)?, DEFAULT_KEYSPACE, key)
    }

    /// The counter at `key` in the default keyspace: 0 if absent, and 0
    /// as well if the key holds bytes (use [`Db::get_value`] to tell).
    ///
    /// # Errors
    ///
    /// As [`Db::get_value`].
    pub fn counter(&self, key: impl AsRef<[u8]>) -> Result<i64> {
        Ok(self
            .get_value(key)?
            .and_then(|v| v.as_counter())
            .unwrap_or(0))
    }

    /// Scans the default keyspace. After [`Db::close`], the scan's first
    /// item is `Err(Error::Closed)`.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        self.default_keyspace().scan(opts)
    }

    /// The keys of the default keyspace that start with `prefix`, in
    /// order: the same as `scan(&ScanOptions::prefix(prefix))`; see
    /// [`Keyspace::prefix`].
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        self.default_keyspace().prefix(prefix)
    }

    /// The keys of the default keyspace in `range` (`"a".."c"`,
    /// `"a"..="c"`, `"k"..`), in order: the same as
    /// `scan(&ScanOptions::from_range(range))`; see [`Keyspace::range`].
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan {
        self.default_keyspace().range(range)
    }

    /// The names of the keyspaces that hold at least one live key (bytes
    /// or a counter) now, sorted. A keyspace whose keys are all deleted is
    /// not listed; the default keyspace is listed (as
    /// [`DEFAULT_KEYSPACE`]) when it holds a key; mergekv's own reserved
    /// keyspaces (names starting with `_`) never are. It reads one key per
    /// keyspace (and the tombstones before it), not every key.
    ///
    /// ```
    /// # fn main() -> mergekv::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = mergekv::Db::open(dir.path())?;
    /// db.keyspace("users")?.put("ada", "Ada")?;
    /// db.keyspace("orders")?.increment("count", 1)?;
    /// assert_eq!(db.keyspaces()?, ["orders", "users"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the database is closed; an I/O or corruption
    /// error if a run could not be read.
    pub fn keyspaces(&self) -> Result<Vec<String>> {
        self.view().keyspaces()
    }

    /// A consistent snapshot for multi-key reads. Its reads fail with
    /// [`Error::Closed`] once the database is closed.
    pub fn view(&self) -> ReadView {
        ReadView::new(self.inner.engine.state().view(), self.inner.open.clone())
    }

    /// Figures about the database.
    pub fn stats(&self) -> Stats {
        let engine = &self.inner.engine;
        let view = engine.state().view();
        let (hlc, drift) = {
            let clock = engine.hlc();
            (clock.high_water(), clock.drift_stats())
        };
        let mut stats = Stats {
            dir: self.inner.dir.clone(),
            node_id: engine.node().to_string(),
            hlc: hlc.to_string(),
            drift,
            sync_mode: format!("{:?}", engine.options().sync_mode),
            worker_threads: engine.options().worker_threads,
            wal: engine.wal().stats(),
            compactor: self.inner.maintenance.stats(),
            poisoned: engine.check_usable().err().map(|e| e.to_string()),
            follower_of: self.follower_of(),
            follower_position: self.follower_position().ok().flatten(),
            notices: self.notices(),
            cursors: self.inner.maintenance.cursors(),
            ..Stats::default()
        };
        // Counted over every layer: exact, and O(keys).
        for entry in view.iter() {
            match entry {
                Ok((key, state)) => count_key(&mut stats, &key, &state),
                Err(e) => {
                    stats.read_error = Some(e.to_string());
                    break;
                }
            }
        }
        stats
    }

    /// Runs a compaction now (on the compactor thread) and reports what it
    /// did: the memtable written out as a run, the WAL it covers
    /// truncated, and every run merged into one (dropping collectable
    /// tombstones).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::Poisoned`] after a failed write; [`Error::Io`] or
    /// [`Error::Corruption`] if writing the run, the manifest or the snapshot,
    /// or reading a run to merge, fails.
    pub fn compact_now(&self) -> Result<CompactionReport> {
        self.check_open()?;
        self.inner.compactor.compact_now_on(&self.inner.engine)
    }

    /// Encrypts everything written from now on with `key`, and rewrites
    /// what older keys (or none, for a database in clear) encrypt in the
    /// background. When it returns, META names `key`, the WAL writes a new
    /// segment under it, and every later run is written with it; from
    /// then on, opening the database takes `key` (as
    /// `Options::encryption_key`), and, until the rewrite has finished
    /// ([`Db::encryption`] says how many files are left;
    /// [`Db::complete_key_rotation`] finishes it now), the old key too
    /// (in `Options::encryption_keys_old`; an open without it says so).
    /// A crash at any point leaves a database that opens with the new key
    /// and the old one. CLI: `mergekv rekey`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::ReadOnly`] on a read-only handle or a follower's;
    /// [`Error::Poisoned`] after a failed write; [`Error::NotADatabase`] if
    /// META is gone; [`Error::Io`] if writing META or starting the new WAL
    /// segment fails.
    pub fn rotate_encryption_key(&self, key: crate::crypto::EncryptionKey) -> Result<()> {
        self.check_writable()?;
        let engine = &self.inner.engine;
        engine.wal().check_usable()?;
        let _one = self.inner.maintenance.rotation_lock();
        let io = self.io();
        let mut meta =
            meta::read_meta(&io, &self.inner.dir)?.ok_or_else(|| Error::NotADatabase {
                dir: self.inner.dir.clone(),
            })?;
        // META first: from here a crash leaves a database that needs the
        // new key (and the old one for its files), never a file under a
        // key META does not lead to.
        // From no key: files in clear remain until the rewrite is done,
        // and META says so (else an open refuses them as forged).
        meta.clear_files_pending |= meta.key_id.is_none();
        meta.key_id = Some(key.id());
        meta::write_meta(&io, &self.inner.dir, &meta)?;
        engine.wal().keyring().write().rotate_to(key);
        engine.wal().restart_under_current_key()?;
        self.inner.maintenance.request_rekey();
        Ok(())
    }

    /// Rewrites now, on this thread, every file a key other than the
    /// current one encrypts (what a rotation leaves to the background),
    /// and reports what it did; when `files_left` is 0 the old keys are no
    /// longer needed.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::ReadOnly`] on a read-only handle or a follower's;
    /// [`Error::Poisoned`] after a failed write; [`Error::Key`] if a file is
    /// under a key that was not given; [`Error::Io`] or [`Error::Corruption`]
    /// if a file cannot be read or rewritten.
    pub fn complete_key_rotation(&self) -> Result<crate::compactor::RekeyReport> {
        self.check_writable()?;
        self.inner.engine.wal().check_usable()?;
        self.inner.maintenance.rekey()
    }

    /// The database's key and the files still under other keys.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); [`Error::Io`]
    /// if META or a file header cannot be read.
    pub fn encryption(&self) -> Result<EncryptionStatus> {
        self.check_open()?;
        let current = self.inner.engine.wal().keyring().read().current_id();
        let mut status = keys::status(&self.io(), &self.inner.dir, current)?;
        status.rewrite_pending = self.inner.maintenance.rekey_pending();
        Ok(status)
    }

    /// Writes every change newer than `cursor` to `out` as a change stream
    /// (`docs/FORMAT.md`, "Change stream"): in bounded memory (one chunk of
    /// about [`crate::sync::stream::STREAM_CHUNK_BYTES_TARGET`] at a time,
    /// a larger record in a chunk of its own), sealed under the database's
    /// key if it has one. Returns what was written and the cursor to use
    /// next time. [`Db::import_stream`] reads it.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read; [`Error::Decode`] if
    /// the stored complete cursor is damaged; [`Error::Stream`] if
    /// writing to `out` fails (what was written is a prefix that
    /// [`Db::import_stream`] rejects or resumes from).
    pub fn export_to(
        &self,
        cursor: &SyncCursor,
        out: &mut dyn std::io::Write,
    ) -> Result<(crate::sync::stream::StreamReport, SyncCursor)> {
        self.check_open()?;
        let engine = &self.inner.engine;
        // The complete cursor first, then the map (see `export_since`).
        let complete = exchange::complete_cursor(engine)?;
        let view = engine.state().view();
        let keyring = engine.wal().keyring().read().clone();
        let report =
            crate::sync::stream::export(&view, engine.node(), cursor, &complete, &keyring, out)?;
        tracing::debug!(
            records = report.records,
            chunks = report.chunks,
            bytes = report.bytes,
            "change stream exported"
        );
        let mut after = cursor.clone();
        after.merge(&complete);
        Ok((report, after))
    }

    /// Reads a change stream from `input` and applies it chunk by chunk, in
    /// bounded memory: each chunk is checked (a chained hash; its seal, if
    /// sealed) before anything of it is applied, and lands in one WAL
    /// frame with the import's progress, so an interrupted import, run
    /// again on the same stream, skips what it applied and goes on. The
    /// exporter's complete cursor is taken at the end only. Damage is
    /// `Error::Decode` naming the chunk; what earlier chunks applied stays
    /// (each is a whole, idempotent merge).
    ///
    /// # Errors
    ///
    /// [`Error::Stream`] if reading `input` fails; [`Error::Decode`] for a
    /// damaged or cut-short chunk (naming it); otherwise as [`Db::import`].
    /// Chunks applied before the error stay applied.
    pub fn import_stream(&self, input: &mut dyn std::io::Read) -> Result<ImportReport> {
        self.check_writable()?;
        let result = crate::sync::stream::import(&self.inner.engine, input);
        trace_import("change_stream", None, &result);
        result
    }

    /// A change set of every change newer than `cursor` (a version vector of
    /// what the receiver has), and the cursor to use next time. The bytes
    /// are self-verifying; see `docs/FORMAT.md`. A database with a key
    /// seals the change set under it (a sealed object, `docs/FORMAT.md`):
    /// only a copy with the key can import it.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read; [`Error::Decode`] if
    /// the stored complete cursor is damaged; [`Error::Key`] if sealing
    /// under the database's key fails.
    pub fn export_since(&self, cursor: &SyncCursor) -> Result<(Vec<u8>, SyncCursor)> {
        self.check_open()?;
        exchange::export_changes(&self.inner.engine, cursor, None)
    }

    /// Like [`Db::export_since`], limited to keys in `buckets` of the state
    /// digest (those [`Digest::differing_buckets`] named), so a sync sends
    /// only what differs.
    ///
    /// # Errors
    ///
    /// As [`Db::export_since`].
    pub fn export_buckets(
        &self,
        cursor: &SyncCursor,
        buckets: &[usize],
    ) -> Result<(Vec<u8>, SyncCursor)> {
        self.check_open()?;
        let mut sorted = buckets.to_vec();
        sorted.sort_unstable();
        exchange::export_changes(&self.inner.engine, cursor, Some(&sorted))
    }

    /// Per origin, the newest stamp up to which this copy holds everything:
    /// its own writes, and the cursors of change sets it imported whole.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read; [`Error::Decode`] if
    /// the stored complete cursor is damaged.
    pub fn complete_cursor(&self) -> Result<SyncCursor> {
        self.check_open()?;
        exchange::complete_cursor(&self.inner.engine)
    }

    /// A change set of everything `peer` has not seen, by the cursor stored
    /// for it (everything, for a peer never heard from).
    ///
    /// # Errors
    ///
    /// As [`Db::peer_cursor`] and [`Db::export_since`].
    pub fn export_for(&self, peer: &str) -> Result<(Vec<u8>, SyncCursor)> {
        self.export_since(&self.peer_cursor(peer)?)
    }

    /// Imports a change set from `peer`, then stores durably what the peer
    /// has seen (the cursor it exported with), so the next export to it
    /// sends only what it lacks, and tombstone GC waits for it. The cursor is
    /// written after the data it covers: an interrupted import is resumed by
    /// importing the same change set again.
    ///
    /// # Errors
    ///
    /// As [`Db::import`]; the peer's cursor is stored only once the data it
    /// covers is applied.
    pub fn import_from(&self, peer: &str, bytes: &[u8]) -> Result<ImportReport> {
        self.check_writable()?;
        let result = exchange::import_from(&self.inner.engine, peer, bytes);
        trace_import("change_set", Some(peer), &result);
        result
    }

    /// What `peer` has reported seeing (empty if never heard from).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read; [`Error::Decode`] if the
    /// stored cursor is damaged.
    pub fn peer_cursor(&self, peer: &str) -> Result<SyncCursor> {
        self.check_open()?;
        exchange::peer_cursor(&self.inner.engine, peer)
    }

    /// The sealed WAL segments this copy can offer, by content hash.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); [`Error::Io`]
    /// if a segment cannot be listed or read.
    pub fn segment_manifest(&self) -> Result<Vec<SegmentEntry>> {
        self.check_open()?;
        exchange::segment_manifest(&self.inner.engine)
    }

    /// The bytes of one of this copy's sealed segments, by its hash (to
    /// send to a peer that lacks it).
    ///
    /// # Errors
    ///
    /// As [`Db::segment_manifest`].
    pub fn segment_bytes(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        exchange::segment_bytes(&self.inner.engine, hash)
    }

    /// The entries of `peer_manifest` this copy has neither written nor
    /// imported.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read.
    pub fn missing_segments(&self, peer_manifest: &[SegmentEntry]) -> Result<Vec<SegmentEntry>> {
        self.check_open()?;
        exchange::missing_segments(&self.inner.engine, peer_manifest)
    }

    /// Applies a peer's sealed segment, given with its content hash: every
    /// frame's records, drift-checked and merged through the WAL like an
    /// import. A hash that does not match applies nothing; a segment already
    /// here is skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::ReadOnly`] on a read-only handle or a follower's;
    /// [`Error::Decode`] if the bytes are damaged or not a change set (nothing
    /// is applied); [`Error::Key`] if it is sealed under a key this database
    /// does not have, or is in clear for an encrypted database;
    /// [`Error::ClockDrift`] if a stamp is further ahead than `max_drift_ms`
    /// allows under [`DriftPolicy::Reject`](crate::DriftPolicy::Reject);
    /// [`Error::IdentityConflict`] if it carries writes under this copy's node
    /// id that it never made; [`Error::Io`] or [`Error::Poisoned`] if writing
    /// or syncing the WAL fails (every later write then fails with `Poisoned`
    /// until the database is reopened). A hash mismatch is not an error: it
    /// comes back as a [`SegmentImport`] that applied nothing.
    pub fn import_segment(&self, bytes: &[u8], hash: &[u8; 32]) -> Result<SegmentImport> {
        self.check_writable()?;
        let result = exchange::import_segment(&self.inner.engine, bytes, hash);
        match &result {
            Ok(outcome) => tracing::debug!(outcome = ?outcome, "WAL segment imported"),
            Err(e) => tracing::warn!(error = %e, "WAL segment import failed"),
        }
        result
    }

    /// The state digest: equal on two copies exactly when their states are.
    /// Tombstones count in it, so it changes when a merge collects them,
    /// with no read changing.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read.
    pub fn digest(&self) -> Result<Digest> {
        self.check_open()?;
        crate::sync::digest::digest(&self.inner.engine.state().view())
    }

    /// The digest computed afresh from every key, which [`Db::digest`]
    /// (kept up to date by flushes and merges) must always equal: a check
    /// for tests and audits, O(keys).
    ///
    /// Each call reads the state of its moment, and a background merge may
    /// collect tombstones (past `tombstone_grace_ms`) between two calls:
    /// the digest then changes while every read stays the same. To compare
    /// the two, take both from one [`Db::view`] ([`ReadView::digest`],
    /// [`ReadView::digest_recomputed`]).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); an I/O or
    /// corruption error if a run could not be read.
    pub fn digest_recomputed(&self) -> Result<Digest> {
        self.check_open()?;
        crate::sync::digest::digest_by_scan(&self.inner.engine.state().view())
    }

    /// Verifies a change set, checks every stamp against the drift bound,
    /// and applies it durably with the CRDT rules. Importing the same
    /// change set again changes nothing (its chunks come back as
    /// duplicates); a damaged one, or one with a stamp too far ahead,
    /// applies nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::ReadOnly`] on a read-only handle or a follower's;
    /// [`Error::Decode`] if the bytes are damaged or not a change set (nothing
    /// is applied); [`Error::Key`] if it is sealed under a key this database
    /// does not have, or is in clear for an encrypted database;
    /// [`Error::ClockDrift`] if a stamp is further ahead than `max_drift_ms`
    /// allows under [`DriftPolicy::Reject`](crate::DriftPolicy::Reject);
    /// [`Error::IdentityConflict`] if it carries writes under this copy's node
    /// id that it never made; [`Error::Io`] or [`Error::Poisoned`] if writing
    /// or syncing the WAL fails (every later write then fails with `Poisoned`
    /// until the database is reopened).
    pub fn import(&self, bytes: &[u8]) -> Result<ImportReport> {
        self.check_writable()?;
        let result = exchange::import(&self.inner.engine, bytes);
        trace_import("change_set", None, &result);
        result
    }

    /// Registers (or moves) a cursor: a reader of this database's changes
    /// that has everything up to sequence number `seq`. Registered cursors
    /// hold back WAL truncation (up to `wal_retention_bytes_max`) and
    /// tombstone GC. At most [`crate::compactor::CURSORS_MAX`].
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::LimitExceeded`] for a name longer than
    /// [`crate::compactor::CURSOR_NAME_BYTES_MAX`] or a new cursor past
    /// [`crate::compactor::CURSORS_MAX`]; [`Error::Io`] if the cursors file
    /// cannot be written.
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.check_open()?;
        self.inner.maintenance.set_cursor(name, seq)
    }

    /// A registered cursor.
    pub fn cursor(&self, name: &str) -> Option<CursorInfo> {
        self.inner.maintenance.cursor(name)
    }

    /// Forgets a cursor; true if it was registered.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close); [`Error::Io`]
    /// if the cursors file cannot be written.
    pub fn remove_cursor(&self, name: &str) -> Result<bool> {
        self.check_open()?;
        self.inner.maintenance.remove_cursor(name)
    }

    /// The names of the registered cursors, sorted (the replication leader
    /// finds its followers' cursors among them, to expire them).
    pub(crate) fn cursor_names(&self) -> Vec<String> {
        self.inner.maintenance.cursor_names()
    }

    /// Writes and syncs everything acknowledged and reports any failure
    /// doing so. From the moment it is called, every operation on every
    /// clone of this handle fails with [`Error::Closed`]: writes, reads,
    /// scans (their next item), [`ReadView`]s taken before or after, and a
    /// second `close`. What describes the database without reading its
    /// keys (`dir`, `node_id`, `stats`, `notices`, `cursor`,
    /// `recovery_report`) still answers. The threads
    /// stop and the directory lock is released when the last clone is
    /// dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if a clone was closed already; the error of the
    /// final WAL write or fsync, or of writing the cursor file.
    pub fn close(self) -> Result<()> {
        if !self.inner.open.close() {
            return Err(Error::Closed);
        }
        let cursors = self.inner.maintenance.flush_cursors();
        self.inner.engine.wal().close()?;
        cursors
    }
}

/// Makes sure the readers' lock file exists (durably), and for a repair,
/// which may rewrite and move files, takes it exclusively (held until the
/// open is done): a repair never runs beside a read-only open.
fn readers_lock(io: &Io, dir: &Path, repair: bool) -> Result<Option<crate::io::IoFile>> {
    let path = dir.join(READERS_LOCK_FILE);
    let existed = io.read_if_exists(&path)?.is_some();
    let file = io.open_lock_file(&path)?;
    if !existed {
        io.sync_dir(dir)?;
    }
    if !repair {
        return Ok(None);
    }
    if !file.try_lock_exclusive()? {
        return Err(Error::Locked {
            dir: dir.to_path_buf(),
        });
    }
    Ok(Some(file))
}

/// The registered cursors. A damaged cursor file costs only its cursors:
/// a writable open moves it to quarantine (and holds tombstone GC for the
/// rest of the open), a read-only one leaves it; the notices say so.
fn load_cursors(io: &Io, dir: &Path, engine: &Engine) -> Result<Cursors> {
    match Cursors::load(io, dir) {
        Err(Error::Corruption { path, reason, .. }) => {
            let writable = !engine.options().read_only;
            tracing::warn!(
                file = %path.display(),
                reason = %reason,
                quarantined = writable,
                "cursor file damaged: registered cursors are lost"
            );
            if writable {
                crate::engine::quarantine(io, dir, &path)?;
            }
            Ok(Cursors::lost(dir, writable))
        }
        other => other,
    }
}

/// Says what an import applied, or why it failed (at warn: what a peer
/// sent was damaged, refused, or could not be applied).
fn trace_import(kind: &'static str, peer: Option<&str>, result: &Result<ImportReport>) {
    match result {
        Ok(r) => tracing::debug!(
            kind,
            peer,
            applied = r.applied,
            stale = r.stale,
            duplicates = r.duplicates,
            "import finished"
        ),
        Err(e) => tracing::warn!(kind, peer, error = %e, "import failed"),
    }
}

/// One word for what recovery had to do at open, worst first.
fn recovery_outcome(r: &RecoveryReport) -> &'static str {
    if r.salvage.is_some() {
        "salvaged"
    } else if r.repair.is_some() {
        "repaired"
    } else if !r.snapshots_skipped.is_empty() {
        "snapshot_skipped"
    } else if r.torn_tail.is_some() {
        "torn_tail_cut"
    } else {
        "clean"
    }
}

pub(super) fn count_key(stats: &mut Stats, store_key: &[u8], state: &KeyState) {
    match state.visible() {
        Visible::Bytes(_) => {
            stats.keys += 1;
            count_in_keyspace(stats, store_key);
        }
        Visible::Counter(_) => {
            stats.keys += 1;
            stats.counters += 1;
            count_in_keyspace(stats, store_key);
        }
        Visible::Absent if state.is_tombstone() => stats.tombstones += 1,
        Visible::Absent => {}
    }
}

/// One more live key in the keyspace of `store_key` (allocating the
/// name only for the first key of a keyspace).
fn count_in_keyspace(stats: &mut Stats, store_key: &[u8]) {
    let Some((name, _)) = crate::record::split_store_key(store_key) else {
        return;
    };
    match stats.keys_by_keyspace.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            stats.keys_by_keyspace.insert(name.to_string(), 1);
        }
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
        let _ = self.maintenance.flush_cursors();
        let _ = self.engine.wal().close();
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
    /// Keys that read as a value or counter, by keyspace (reserved ones,
    /// starting with `_`, included; a keyspace with none is absent).
    pub keys_by_keyspace: std::collections::BTreeMap<String, u64>,
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
    pub follower_position: Option<FollowerPosition>,
    /// Why the key counts stopped short: a run that could not be read.
    pub read_error: Option<String>,
    /// Why the database refuses writes, if it does.
    pub poisoned: Option<String>,
    /// What this open did that its user should know (see [`Db::notices`]).
    pub notices: Vec<String>,
    /// The registered cursors (`Db::set_cursor`), by name.
    pub cursors: std::collections::BTreeMap<String, CursorInfo>,
}

/// In `Interval` mode, a thread that fsyncs the WAL every interval.
fn start_flusher(engine: &Arc<Engine>) -> Result<Option<(Sender<()>, JoinHandle<()>)>> {
    let SyncMode::Interval(interval_ms) = engine.options().sync_mode else {
        return Ok(None);
    };
    let (stop, stopped) = bounded::<()>(1);
    let engine = engine.clone();
    let interval = Duration::from_millis(interval_ms.max(1));
    let handle = std::thread::Builder::new()
        .name("mergekv-flusher".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                if let Err(e) = engine.wal().sync_written() {
                    // The WAL is poisoned now; writers will say so.
                    tracing::error!(error = %e, "interval fsync failed: the database is poisoned");
                    return;
                }
            }
        })
        .map_err(|e| Error::Poisoned {
            cause: Arc::from(format!("cannot start flusher thread: {e}")),
        })?;
    Ok(Some((stop, handle)))
}
