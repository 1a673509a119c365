//! One adapter per engine, behind one trait, each opened with its defaults.
//!
//! Every adapter does what a user of that engine would write: one durable
//! commit per `put_durable` and per `write_batch_durable` (the engine's
//! own transaction or batch, synced to disk before it returns), reads
//! through the engine's public read path. Errors panic: a benchmark run
//! that fails is reported as failed by the parent process.

pub mod fjall;
pub mod mergekv;
pub mod redb;
pub mod sled;

use std::path::Path;

use crate::data::{Key, Value};

/// The engines, in the order of the table's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Mergekv,
    Redb,
    Fjall,
    Sled,
}

impl EngineKind {
    pub const ALL: [EngineKind; 4] = [
        EngineKind::Mergekv,
        EngineKind::Redb,
        EngineKind::Fjall,
        EngineKind::Sled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Mergekv => "mergekv",
            EngineKind::Redb => "redb",
            EngineKind::Fjall => "fjall",
            EngineKind::Sled => "sled",
        }
    }

    pub fn parse(s: &str) -> Option<EngineKind> {
        EngineKind::ALL.into_iter().find(|e| e.name() == s)
    }

    /// Whether a durable commit ends in fdatasync (or stronger). sled 0.34
    /// flushes with `sync_file_range`, which is not a durability bar.
    pub fn fdatasync_durable(self) -> bool {
        self != EngineKind::Sled
    }

    /// Opens (creating if needed) the database at `dir` with default
    /// options, or with a cache of `cache_bytes` where the engine takes one.
    pub fn open(self, dir: &Path, cache_bytes: Option<u64>) -> Box<dyn Store> {
        std::fs::create_dir_all(dir).expect("create the database directory");
        match self {
            EngineKind::Mergekv => Box::new(mergekv::MergekvStore::open(dir, cache_bytes)),
            EngineKind::Redb => Box::new(redb::RedbStore::open(dir, cache_bytes)),
            EngineKind::Fjall => Box::new(fjall::FjallStore::open(dir, cache_bytes)),
            EngineKind::Sled => Box::new(sled::SledStore::open(dir, cache_bytes)),
        }
    }
}

pub trait Store: Send + Sync {
    /// One put, durable when it returns.
    fn put_durable(&self, key: &Key, value: &Value);
    /// One atomic batch of puts, durable when it returns.
    fn write_batch_durable(&self, items: &[(Key, Value)]);
    /// The value's length, if the key is present (the value is read, not
    /// copied).
    fn get(&self, key: &Key) -> Option<usize>;
    /// Reads every entry in key order; returns (entries, value bytes).
    fn scan_all(&self) -> (u64, u64);
    /// Reads up to `count` entries from `start` on; returns how many.
    fn scan_from(&self, start: &Key, count: usize) -> usize;
    /// The engine's own compaction or flush, as its public API offers it.
    fn compact(&mut self);
    /// A clean close: everything synced, files released.
    fn close(self: Box<Self>);
}
