//! [`ReadOnlyDb`]: a database opened for reading beside the process that
//! writes it.
//!
//! A read-only open changes nothing on disk and creates nothing: it reads
//! `META`, the manifest and the run footers, indexes and filters, then the
//! WAL after what the runs cover, into a memtable of its own. A torn tail
//! (a frame the writer is writing at that moment) reads as the end of the
//! log. The result is a consistent state as of the open, held by open file
//! handles, so the writer's flushes and merges (which delete runs and WAL
//! segments) never pull it away; [`ReadOnlyDb::refresh`] reads again.
//!
//! The writer may replace the manifest, delete runs and truncate the WAL
//! between the reader's steps. Each such race shows as a missing file or a
//! sequence gap; the reader then checks whether the manifest changed since
//! it read it, and if so starts over (up to [`READ_ONLY_OPEN_TRIES_MAX`]
//! times). The writer never waits for a reader.

use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::{Hlc, NodeId, Stamp};
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::io::{Io, IoFile};
use crate::manifest;
use crate::meta;
use crate::options::Options;
use crate::run::BlockCache;
use crate::state::StateView;
use crate::sync::SyncCursor;
use crate::sync::digest::Digest;
use crate::wal::WalStats;
use crate::wal::recovery::RecoveryReport;

use super::read::{ReadView, Scan, ScanOptions, Value, ViewKeyspace};
use super::{Stats, count_key};

/// Tries at reading a consistent state while the writer replaces the files
/// under the reader.
pub const READ_ONLY_OPEN_TRIES_MAX: usize = 8;

/// The file readers hold a shared lock on. A writable open creates it
/// (empty); offline operations that rewrite files in place take it
/// exclusively, so they never run beside a reader.
pub const READERS_LOCK_FILE: &str = "READERS";

/// A database opened read-only ([`crate::Db::open_read_only`]): the state
/// as of the open (or the last [`ReadOnlyDb::refresh`]).
pub struct ReadOnlyDb {
    dir: PathBuf,
    io: Io,
    options: Options,
    /// The keys, read once at open.
    keyring: Keyring,
    cache: Arc<BlockCache>,
    loaded: Loaded,
    _lock: Option<IoFile>,
}

impl std::fmt::Debug for ReadOnlyDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyDb")
            .field("dir", &self.dir)
            .field("node", &self.loaded.node)
            .field("covered_seq", &self.loaded.covered_seq)
            .finish_non_exhaustive()
    }
}

/// One consistent reading of the directory.
struct Loaded {
    view: ReadView,
    state: StateView,
    node: NodeId,
    report: RecoveryReport,
    covered_seq: Option<u64>,
    last_seq: u64,
    max_stamp: Option<Stamp>,
}

impl ReadOnlyDb {
    pub(crate) fn open(dir: &Path, options: Options) -> Result<ReadOnlyDb> {
        options.validate()?;
        let io = Io::new(options.faults.clone());
        let dir = dir.to_path_buf();
        if io.read_if_exists(&meta::meta_path(&dir))?.is_none() {
            return Err(Error::NotADatabase { dir });
        }
        let lock = match io.open_read(&dir.join(READERS_LOCK_FILE)) {
            Ok(file) => {
                if !file.try_lock_shared()? {
                    return Err(Error::Locked { dir });
                }
                Some(file)
            }
            // A directory no writable open of this version has seen yet:
            // there is nothing to lock, and nothing that would take it.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let cache = BlockCache::new(options.cache_bytes_max);
        let keyring = options.keyring()?;
        let loaded = load(&io, &dir, &options, &keyring, &cache)?;
        Ok(ReadOnlyDb {
            dir,
            io,
            options,
            keyring,
            cache,
            loaded,
            _lock: lock,
        })
    }

    /// Reads the directory again: the state now, with everything the
    /// writer has made durable (or at least written) since.
    ///
    /// # Errors
    ///
    /// [`Error::NotADatabase`] if the database is gone; [`Error::Key`] if its
    /// key changed to one this reader does not have; [`Error::Corruption`] or
    /// [`Error::Io`] if its files cannot be read (after a few tries, when the
    /// writer replaced them meanwhile). On error the reader keeps the state it
    /// had.
    pub fn refresh(&mut self) -> Result<()> {
        self.loaded = load(
            &self.io,
            &self.dir,
            &self.options,
            &self.keyring,
            &self.cache,
        )?;
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node id of the copy that writes this directory.
    pub fn node_id(&self) -> NodeId {
        self.loaded.node
    }

    /// What the last open or refresh read (runs, WAL frames, a torn tail).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.loaded.report
    }

    /// The state as a read view (keyspaces, gets, scans).
    pub fn view(&self) -> &ReadView {
        &self.loaded.view
    }

    /// One keyspace of the state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKeyspace`] for an invalid name (reserved names are
    /// allowed).
    pub fn keyspace(&self, name: &str) -> Result<ViewKeyspace<'_>> {
        self.loaded.view.keyspace(name)
    }

    /// What `key` in the default keyspace reads as.
    ///
    /// # Errors
    ///
    /// An I/O or corruption error if a run could not be read.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        self.loaded.view.default_keyspace().get_value(key)
    }

    /// The bytes at `key` in the default keyspace: `None` if the key is
    /// absent or deleted.
    ///
    /// # Errors
    ///
    /// [`Error::HoldsCounter`] if the key holds a counter (read it with
    /// [`ReadOnlyDb::counter`] or [`ReadOnlyDb::get_value`]); an I/O or
    /// corruption error if a run could not be read.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        self.loaded.view.default_keyspace().get(key)
    }

    /// The counter at `key` in the default keyspace (0 if absent).
    ///
    /// # Errors
    ///
    /// As [`ReadOnlyDb::get_value`].
    pub fn counter(&self, key: impl AsRef<[u8]>) -> Result<i64> {
        self.loaded.view.default_keyspace().counter(key)
    }

    /// Scans the default keyspace.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        self.loaded.view.default_keyspace().scan(opts)
    }

    /// The keys of the default keyspace that start with `prefix`, in
    /// order (see [`crate::Keyspace::prefix`]).
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        self.loaded.view.prefix(prefix)
    }

    /// The keys of the default keyspace in `range`, in order (see
    /// [`crate::Keyspace::range`]).
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan {
        self.loaded.view.range(range)
    }

    /// The keyspaces holding at least one live key, as
    /// [`crate::Db::keyspaces`] lists them.
    ///
    /// # Errors
    ///
    /// An I/O or corruption error if a run could not be read.
    pub fn keyspaces(&self) -> Result<Vec<String>> {
        self.loaded.view.keyspaces()
    }

    /// The state digest (see [`crate::Db::digest`]).
    ///
    /// # Errors
    ///
    /// An I/O or corruption error if a run could not be read.
    pub fn digest(&self) -> Result<Digest> {
        crate::sync::digest::digest(&self.loaded.state)
    }

    /// A change set of every change newer than `cursor`, as
    /// [`crate::Db::export_since`] makes it.
    ///
    /// # Errors
    ///
    /// An I/O or corruption error if a run could not be read; [`Error::Key`] if
    /// sealing under the database's key fails.
    pub fn export_since(&self, cursor: &SyncCursor) -> Result<(Vec<u8>, SyncCursor)> {
        let mut hlc = Hlc::new(
            self.loaded.node,
            self.options.max_drift_ms,
            self.options.drift_policy,
        );
        if let Some(stamp) = self.loaded.max_stamp {
            hlc.observe_recovered(stamp);
        }
        crate::sync::exchange::export_from_view(
            &self.loaded.state,
            &self.keyring,
            self.loaded.node,
            hlc.high_water(),
            cursor,
        )
    }

    /// Where encryption at rest stands in the directory now, as
    /// [`crate::Db::encryption`] says it: the key META names and the files
    /// (read from their headers now) under other keys or in clear. A
    /// reader rewrites nothing, so `rewrite_pending` says whether a
    /// writable open would have a rewrite to do (such files exist).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if META or a file header cannot be read;
    /// [`Error::Corruption`] if META is damaged.
    pub fn encryption(&self) -> Result<super::EncryptionStatus> {
        let current = meta::read_meta(&self.io, &self.dir)?.and_then(|m| m.key_id);
        let mut status = super::keys::status(&self.io, &self.dir, current)?;
        // A reader rewrites nothing: what is left is what is pending.
        status.rewrite_pending = status.files_under_other_keys > 0;
        Ok(status)
    }

    /// A follower directory's stored replication position, if any.
    ///
    /// # Errors
    ///
    /// An I/O or corruption error if a run could not be read; [`Error::Decode`]
    /// if the stored position is damaged.
    pub fn follower_position(&self) -> Result<Option<super::FollowerPosition>> {
        let key = super::position::local_key(super::position::FOLLOWER_POSITION_KEY);
        let Some(bytes) = self
            .loaded
            .state
            .get(&key)?
            .and_then(|s| s.register.and_then(|r| r.value))
        else {
            return Ok(None);
        };
        super::FollowerPosition::decode(&bytes)
            .map(Some)
            .map_err(|reason| Error::Decode {
                what: "follower position",
                reason,
            })
    }

    /// Figures about the state read: keys (counted over every layer),
    /// runs, the WAL position.
    pub fn stats(&self) -> Stats {
        let lower = self.loaded.state.lower();
        let mut stats = Stats {
            dir: self.dir.clone(),
            node_id: self.loaded.node.to_string(),
            hlc: self
                .loaded
                .max_stamp
                .map(|s| s.to_string())
                .unwrap_or_default(),
            sync_mode: format!("{:?}", self.options.sync_mode),
            wal: WalStats {
                last_seq: self.loaded.last_seq,
                written_seq: self.loaded.last_seq,
                synced_seq: self.loaded.last_seq,
                ..WalStats::default()
            },
            ..Stats::default()
        };
        let wal_dir = self.dir.join(crate::wal::WAL_DIR);
        for name in self.io.list_dir_if_exists(&wal_dir).unwrap_or_default() {
            stats.wal.segments += 1;
            stats.wal.wal_bytes += self.io.len_bytes(&wal_dir.join(name)).unwrap_or(0);
        }
        stats.compactor.snapshot_seq = self.loaded.covered_seq;
        stats.compactor.runs = lower.runs.len();
        stats.compactor.snapshot_bytes = lower.runs.iter().map(|r| r.info().size_bytes).sum();
        stats.follower_of = meta::read_follower_marker(&self.io, &self.dir)
            .ok()
            .flatten();
        stats.follower_position = self.follower_position().ok().flatten();
        match crate::compactor::Cursors::load(&self.io, &self.dir) {
            Ok(cursors) => {
                stats.cursors = cursors
                    .names()
                    .into_iter()
                    .filter_map(|name| cursors.get(&name).map(|c| (name, c)))
                    .collect();
            }
            Err(e) => stats.notices.push(format!("cursors unreadable: {e}")),
        }
        let report = &self.loaded.report;
        stats.notices.extend(
            report
                .snapshots_skipped
                .iter()
                .map(|s| format!("snapshot passed over: {s}")),
        );
        if let Some(torn) = &report.torn_tail {
            stats.notices.push(format!(
                "the WAL ends in an unfinished frame ({}, byte {}): read as the end of the log",
                torn.segment.display(),
                torn.offset_bytes
            ));
        }
        let cache = self.cache.stats();
        stats.compactor.cache_hits = cache.hits;
        stats.compactor.cache_misses = cache.misses;
        stats.compactor.cache_bytes = cache.resident_bytes;
        for entry in self.loaded.state.iter() {
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
}

/// Reads the directory into a consistent state, starting over when the
/// writer replaced the files meanwhile.
fn load(
    io: &Io,
    dir: &Path,
    options: &Options,
    keyring: &Keyring,
    cache: &Arc<BlockCache>,
) -> Result<Loaded> {
    let mut last_error = None;
    for _ in 0..READ_ONLY_OPEN_TRIES_MAX {
        let before = manifest_bytes(io, dir)?;
        match load_once(io, dir, options, keyring, cache) {
            Ok(loaded) => return Ok(loaded),
            // A file gone or a gap in the log: the writer may have moved
            // on (a flush, a merge, a truncation) while we read.
            Err(e @ (Error::Corruption { .. } | Error::Io { .. })) => {
                if manifest_bytes(io, dir)? == before && !is_missing_file(&e) {
                    return Err(e);
                }
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or(Error::Closed))
}

/// True for an error that a file deleted between listing and reading
/// explains.
fn is_missing_file(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        Error::Corruption { reason, .. } => {
            reason.contains("file is missing") || reason.contains("sequence gap")
        }
        _ => false,
    }
}

fn manifest_bytes(io: &Io, dir: &Path) -> Result<Option<Vec<u8>>> {
    io.read_if_exists(&manifest::manifest_path(dir))
}

fn load_once(
    io: &Io,
    dir: &Path,
    options: &Options,
    keyring: &Keyring,
    cache: &Arc<BlockCache>,
) -> Result<Loaded> {
    let Some(meta) = meta::read_meta(io, dir)? else {
        return Err(Error::NotADatabase {
            dir: dir.to_path_buf(),
        });
    };
    super::keys::check(io, dir, Some(&meta), keyring)?;
    let lineage = meta.lineage();
    let recovered = crate::engine::recover_state(&crate::engine::RecoverFrom {
        io,
        dir,
        nodes: &lineage,
        options,
        cache,
        keyring,
        manifest_mac_required: meta.all_files_encrypted(),
        node_since_seq: meta.node_since_seq,
        modify: false,
    })?;
    let state = recovered.state.view();
    Ok(Loaded {
        // A read-only open is never closed: its flag is never set.
        view: ReadView::new(state.clone(), super::read::OpenFlag::default()),
        state,
        node: meta.node,
        covered_seq: recovered
            .manifest
            .as_ref()
            .map(|m| m.covered_seq)
            .or(recovered.snapshot_seq),
        last_seq: recovered.wal_start.next_seq.saturating_sub(1),
        max_stamp: recovered.max_stamp,
        report: recovered.report,
    })
}
