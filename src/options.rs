//! Options for opening a database. Every limit is named, with its unit.

use std::sync::Arc;

use crate::clock::{DriftPolicy, SystemClock, WallClock};
use crate::crypto::{KeySource, Keyring};
use crate::error::{Error, Result};
use crate::io::FaultInjector;

/// When a write counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// The default. A write returns only after its batch has been written and
    /// `fdatasync`ed: an acknowledged write survives a crash or power loss.
    #[default]
    Always,
    /// A write returns once it is written to the operating system; a
    /// background thread `fdatasync`s at least every `n` milliseconds. A
    /// process crash loses nothing; a power loss can lose up to the last `n`
    /// milliseconds of acknowledged writes.
    Interval(u64),
    /// A write returns once it is written to the operating system; mergekv
    /// syncs only on rotation, compaction, clean close, and before a
    /// replication leader ships frames (followers get only fsynced ones). A
    /// process crash loses nothing; a power loss can lose any acknowledged
    /// write not yet flushed by the OS.
    Never,
}

/// What to do when a WAL segment is damaged with valid data after the damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open with [`crate::Error::Corruption`] naming segment and
    /// offset (the default). A torn tail (a last frame cut short, nothing
    /// valid after it) is always cut back and reported in the
    /// [`crate::RecoveryReport`]: it can only hold unacknowledged writes.
    #[default]
    Strict,
    /// Cut the WAL at the damage, move what was dropped to
    /// `<dir>/quarantine/`, and report it in [`crate::RecoveryReport`].
    Repair,
}

/// Options for [`crate::Db::open_with`].
///
/// Start from `Options::default()` and change what you need with the
/// chainable `with_*` setters, one per field, each taking the field's own
/// type. The struct is `#[non_exhaustive]`, so fields can be added in a
/// minor release: code outside this crate cannot write a struct literal
/// (`Options { sync_mode, ..Options::default() }`); use the setters, or
/// assign fields of a mutable value (`options.sync_mode = ...`).
///
/// ```
/// use mergekv::{Db, Options, SyncMode};
///
/// # fn main() -> mergekv::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let options = Options::default()
///     .with_sync_mode(SyncMode::Interval(100))
///     .with_memtable_bytes_max(16 * 1024 * 1024);
/// let db = Db::open_with(dir.path(), options)?;
/// db.put("k", "v")?;
///
/// // The same, assigning a field.
/// let mut options = Options::default();
/// options.read_only = true;
/// # drop(options);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// When a write counts as durable.
    pub sync_mode: SyncMode,
    /// Worker threads that stamp and apply commands; `0` runs commands inline
    /// on the calling thread.
    pub worker_threads: usize,
    /// Commands that may wait in one worker's queue before callers block
    /// (backpressure).
    pub worker_queue_depth_max: usize,
    /// Commands a worker takes from its queue at once and commits together.
    pub worker_batch_commands_max: usize,
    /// A group commit closes when it holds this many frames...
    pub group_commit_frames_max: usize,
    /// ...or this many bytes...
    pub group_commit_bytes_max: usize,
    /// ...or after the leader has waited this long for company (0: never wait).
    pub group_commit_delay_us: u64,
    /// Bytes of frames waiting to be written before writers block.
    pub wal_pending_bytes_max: usize,
    /// A segment is sealed and a new one started past this size.
    pub segment_size_bytes_max: u64,
    /// Longest key, in bytes.
    pub key_size_bytes_max: usize,
    /// Longest value, in bytes.
    pub value_size_bytes_max: usize,
    /// Most operations in one atomic batch.
    pub batch_ops_max: usize,
    /// Largest batch, counted as the sum of its keys (with keyspace prefix)
    /// and values, in bytes.
    pub batch_bytes_max: usize,
    /// How long an idempotency key is remembered, in milliseconds.
    pub dedup_window_ms: u64,
    /// How many idempotency keys are remembered at most.
    pub dedup_window_entries_max: usize,
    /// How far ahead of local time a remote stamp may be, in milliseconds.
    pub max_drift_ms: u64,
    /// What to do with a stamp beyond `max_drift_ms`.
    pub drift_policy: DriftPolicy,
    /// What to do with a damaged WAL on open.
    pub recovery_mode: RecoveryMode,
    /// Create the database if the directory holds none; if false, opening a
    /// directory without one fails with [`crate::Error::NotADatabase`].
    pub create_if_missing: bool,
    /// The compactor writes a snapshot once the WAL segments holding changes
    /// after the last one reach this many bytes on disk (`u64::MAX`: never
    /// for this reason).
    pub compaction_wal_bytes_min: u64,
    /// ...or once this long has passed since the last one, if anything was
    /// written (0: never for this reason).
    pub compaction_interval_ms: u64,
    /// How often the compactor checks its triggers.
    pub compactor_tick_ms: u64,
    /// Snapshots kept (at least 1). The WAL is kept back to the oldest of
    /// them, so with 2 or more a newest snapshot damaged after it was
    /// written falls back to an older one plus the WAL and loses nothing,
    /// at the cost of the disk that snapshot and WAL take (under heavy
    /// overwriting up to `compaction_wal_bytes_min` of WAL). With 1 (the
    /// default) disk stays smallest, and a snapshot that is later damaged
    /// makes open fail with a typed error; a repair then salvages every
    /// chunk of it that checks out (chunks hold about 64 KiB of entries,
    /// each with its own checksum) and says what it lost. Every snapshot is
    /// read back and verified before any WAL is dropped.
    pub snapshots_retained: usize,
    /// The block cache's budget: run blocks read for gets and scans are
    /// kept in memory up to this many bytes (0: none are kept). With the
    /// run indexes and filters and the memtables, it bounds the memory the
    /// state takes. Indexes and filters stay resident: about 2.5 bytes per
    /// key for small entries; the index holds each block's first and last
    /// key, so for entries of 4 KiB or more it is about twice the key
    /// length per key.
    pub cache_bytes_max: u64,
    /// The active memtable is frozen and written out as a run once its
    /// estimated size reaches this; writers go on into a fresh one at once,
    /// and wait only if it, too, fills up before the flush is done.
    pub memtable_bytes_max: u64,
    /// Tombstones older than this (by their stamp) are dropped at compaction
    /// once every registered cursor has passed them. A copy that stays
    /// offline longer than this can bring a deleted key back.
    pub tombstone_grace_ms: u64,
    /// Most WAL bytes kept for registered cursors; a cursor further behind
    /// is marked as needing a full resync and no longer holds segments back.
    pub wal_retention_bytes_max: u64,
    /// Open read-only: every write, import or sync into this handle fails
    /// with [`crate::Error::ReadOnly`]. A follower's directory can be
    /// opened only this way until it is promoted.
    pub read_only: bool,
    /// Give this copy a new node id at open, keeping the old one in its
    /// lineage (its files still carry it). An open does this by itself
    /// when the directory is a copy of the one the identity was issued in;
    /// this is for a copy it could not tell (a block-level clone), which an
    /// import refuses with [`crate::Error::IdentityConflict`]. CLI:
    /// `mergekv reidentify`.
    pub renew_identity: bool,
    /// Encryption at rest: the key every WAL frame, run frame and change
    /// set is encrypted with (AES-256-GCM; see `docs/FORMAT.md`,
    /// "Encryption"). Creating a database with a key makes it encrypted;
    /// an encrypted database opens only with its current key, and a key
    /// given for a database that is not encrypted is refused with
    /// [`crate::KeyError::NotEncrypted`] (encrypt one with
    /// [`crate::Db::rotate_encryption_key`]). `None` (the default): no
    /// encryption.
    pub encryption_key: Option<KeySource>,
    /// Older keys, needed only while a key rotation has not finished
    /// rewriting the files they encrypt (an open that needs one says so).
    pub encryption_keys_old: Vec<KeySource>,
    /// The wall clock the HLC reads: the system clock by default. Inject
    /// another (a [`crate::ManualClock`]) to make stamps, dedup windows,
    /// tombstone grace and compaction intervals deterministic in your own
    /// tests.
    pub wall_clock: Arc<dyn WallClock>,
    /// Injected file-system failures, for mergekv's own tests.
    // Hidden: a test hook, not part of the stable API; it may change or go
    // away in any release.
    #[doc(hidden)]
    pub faults: Option<FaultInjector>,
}

/// Chainable setters for a public options struct: `with_FIELD(value)` sets
/// the field and returns the struct, so callers outside the crate can build
/// a `#[non_exhaustive]` struct from its defaults in one expression.
macro_rules! chainable_setters {
    ($ty:ident { $( $(#[$attr:meta])* $field:ident: $fty:ty => $setter:ident; )* }) => {
        impl $ty {
            $(
                $(#[$attr])*
                #[doc = concat!("Sets [`", stringify!($ty), "::", stringify!($field), "`]; chainable.")]
                #[must_use]
                pub fn $setter(mut self, value: $fty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}
pub(crate) use chainable_setters;

chainable_setters!(Options {
    sync_mode: SyncMode => with_sync_mode;
    worker_threads: usize => with_worker_threads;
    worker_queue_depth_max: usize => with_worker_queue_depth_max;
    worker_batch_commands_max: usize => with_worker_batch_commands_max;
    group_commit_frames_max: usize => with_group_commit_frames_max;
    group_commit_bytes_max: usize => with_group_commit_bytes_max;
    group_commit_delay_us: u64 => with_group_commit_delay_us;
    wal_pending_bytes_max: usize => with_wal_pending_bytes_max;
    segment_size_bytes_max: u64 => with_segment_size_bytes_max;
    key_size_bytes_max: usize => with_key_size_bytes_max;
    value_size_bytes_max: usize => with_value_size_bytes_max;
    batch_ops_max: usize => with_batch_ops_max;
    batch_bytes_max: usize => with_batch_bytes_max;
    dedup_window_ms: u64 => with_dedup_window_ms;
    dedup_window_entries_max: usize => with_dedup_window_entries_max;
    max_drift_ms: u64 => with_max_drift_ms;
    drift_policy: DriftPolicy => with_drift_policy;
    recovery_mode: RecoveryMode => with_recovery_mode;
    create_if_missing: bool => with_create_if_missing;
    compaction_wal_bytes_min: u64 => with_compaction_wal_bytes_min;
    compaction_interval_ms: u64 => with_compaction_interval_ms;
    compactor_tick_ms: u64 => with_compactor_tick_ms;
    snapshots_retained: usize => with_snapshots_retained;
    cache_bytes_max: u64 => with_cache_bytes_max;
    memtable_bytes_max: u64 => with_memtable_bytes_max;
    tombstone_grace_ms: u64 => with_tombstone_grace_ms;
    wal_retention_bytes_max: u64 => with_wal_retention_bytes_max;
    read_only: bool => with_read_only;
    renew_identity: bool => with_renew_identity;
    encryption_key: Option<KeySource> => with_encryption_key;
    encryption_keys_old: Vec<KeySource> => with_encryption_keys_old;
    wall_clock: Arc<dyn WallClock> => with_wall_clock;
    // A test hook, like the field: not part of the stable API.
    #[doc(hidden)]
    faults: Option<FaultInjector> => with_faults;
});

/// Longest keyspace name, in bytes.
pub const KEYSPACE_NAME_BYTES_MAX: usize = 64;

/// Room a store key needs beyond the key itself (keyspace name and length).
const STORE_KEY_OVERHEAD_BYTES: usize = 1 + KEYSPACE_NAME_BYTES_MAX;

impl Options {
    /// The keys, read from their sources.
    pub(crate) fn keyring(&self) -> Result<Keyring> {
        let current = self
            .encryption_key
            .as_ref()
            .map(KeySource::resolve)
            .transpose()?;
        let older = self
            .encryption_keys_old
            .iter()
            .map(KeySource::resolve)
            .collect::<Result<Vec<_>>>()?;
        Ok(Keyring::new(current, older))
    }

    /// Checks that the limits are ones the WAL reader accepts, so nothing
    /// can be acknowledged that a reopen would then refuse as damage.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] naming the first limit (`key_size_bytes_max`,
    /// `batch_bytes_max`, `value_size_bytes_max`, `batch_ops_max` or
    /// `dedup_window_entries_max`) above what the format allows; a value limit
    /// above `batch_bytes_max` counts as over.
    pub fn validate(&self) -> Result<()> {
        use crate::record::{FRAME_OPS_MAX, FRAME_PAYLOAD_BYTES_MAX, RECORD_KEY_BYTES_MAX};
        let check = |limit: &'static str, actual: usize, max: usize| {
            if actual > max {
                Err(Error::limit(limit, actual, max))
            } else {
                Ok(())
            }
        };
        check(
            "key_size_bytes_max",
            self.key_size_bytes_max,
            RECORD_KEY_BYTES_MAX - STORE_KEY_OVERHEAD_BYTES,
        )?;
        check(
            "batch_bytes_max",
            self.batch_bytes_max,
            FRAME_PAYLOAD_BYTES_MAX / 2,
        )?;
        check(
            "value_size_bytes_max",
            self.value_size_bytes_max,
            self.batch_bytes_max,
        )?;
        check("batch_ops_max", self.batch_ops_max, FRAME_OPS_MAX as usize)?;
        // Snapshots carry the dedup window in one chunk.
        check(
            "dedup_window_entries_max",
            self.dedup_window_entries_max,
            crate::record::limits::DEDUP_ENTRIES_MAX,
        )
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sync_mode: SyncMode::Always,
            worker_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(1, 8),
            worker_queue_depth_max: 1024,
            worker_batch_commands_max: 256,
            group_commit_frames_max: 4096,
            group_commit_bytes_max: 8 * 1024 * 1024,
            group_commit_delay_us: 0,
            wal_pending_bytes_max: 64 * 1024 * 1024,
            segment_size_bytes_max: 64 * 1024 * 1024,
            key_size_bytes_max: 16 * 1024,
            value_size_bytes_max: 16 * 1024 * 1024,
            batch_ops_max: 100_000,
            batch_bytes_max: 64 * 1024 * 1024,
            dedup_window_ms: 10 * 60 * 1000,
            dedup_window_entries_max: 100_000,
            max_drift_ms: 500,
            drift_policy: DriftPolicy::Reject,
            recovery_mode: RecoveryMode::Strict,
            create_if_missing: true,
            compaction_wal_bytes_min: 64 * 1024 * 1024,
            compaction_interval_ms: 10 * 60 * 1000,
            compactor_tick_ms: 1000,
            snapshots_retained: 1,
            cache_bytes_max: 256 * 1024 * 1024,
            memtable_bytes_max: 64 * 1024 * 1024,
            tombstone_grace_ms: 7 * 24 * 60 * 60 * 1000,
            wal_retention_bytes_max: 1024 * 1024 * 1024,
            read_only: false,
            encryption_key: None,
            encryption_keys_old: Vec::new(),
            renew_identity: false,
            wall_clock: Arc::new(SystemClock),
            faults: None,
        }
    }
}
