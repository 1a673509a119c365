//! Sorted runs: the on-disk form of the disk-resident state.
//!
//! A run is an immutable file of key-ordered entries, each a key's whole
//! CRDT state ([`KeyState`](crate::crdt::KeyState)), written once by a
//! [`RunWriter`] and read by many threads through a [`Run`]. The compactor will write the state as
//! runs named by a manifest instead of rewriting whole-map snapshots, so
//! the state no longer has to fit in memory and a compaction no longer
//! rewrites what did not change.
//!
//! The file (byte by byte in `docs/FORMAT.md`, "Sorted run") is a header,
//! data blocks of about [`RunWriterOptions::block_bytes_target`] bytes, a
//! node table, a block index, a Bloom filter, the node table again, and a
//! fixed-size footer that says where each section lies. Every block and
//! section is a frame with its own CRC-32C, so damage costs the block it
//! hit, and [`salvage_run`] returns every entry of every block that checks
//! out and names exactly what was lost.
//!
//! A run may be encrypted ([`RunWriterOptions::key`]): a key block (key id,
//! salt) follows the header, and every frame's payload is AES-256-GCM
//! under a key of the run file's own, with the frame's offset as the nonce
//! and the run id, offset, version, type and length as associated data, so
//! a block moved within a run or between runs fails authentication. The
//! checksums cover the ciphertext: damage is still told by them. Opening
//! or salvaging an encrypted run takes a [`Keyring`](crate::crypto::Keyring)
//! holding its key; without it, `Error::Key(KeyError::Missing)`.
//!
//! Why it looks like this:
//! - Entries are compact (prefix-compressed keys with restart points,
//!   varint lengths, stamps as deltas from a per-block base time, node ids
//!   as indexes into a per-run table): a run of 17-byte keys and 100-byte
//!   values costs about 125 bytes per key all in.
//! - Opening reads the footer, index, filter and node table only; a lookup
//!   asks the filter, binary-searches the index, reads one block (through
//!   the shared [`BlockCache`]), binary-searches its restarts and decodes
//!   one interval of at most 16 entries, allocating nothing but the state
//!   it returns.
//! - A run becomes visible only by its rename, after its fsync and after
//!   the writer has read the whole file back and checked it; the directory
//!   is fsynced before [`RunWriter::finish`] returns.
//!
//! Invariants:
//! - the keys of a run are strictly increasing byte strings, and every
//!   state in it is one the record codec accepts (the writer refuses
//!   anything else before writing it);
//! - a file under a final name (`run-<id>.run`) is complete and was
//!   verified when written; the id in its name is the id in its footer
//!   and header, and `open` refuses a file where they differ;
//! - an encrypted run draws its salt when its file is created and never
//!   writes an offset twice, so no nonce repeats under its file key;
//! - every length and count read from a file is checked against the file's
//!   size and a named limit before anything is allocated for it; no input
//!   makes a reader panic.

use std::path::PathBuf;

use crate::clock::NodeId;

mod block;
mod cache;
mod crypt;
mod entry;
mod filter;
mod format;
mod index;
mod reader;
pub(crate) mod salvage;
mod writer;

pub use cache::{BlockCache, CACHE_ENTRY_OVERHEAD_BYTES, CACHE_SHARDS, CacheStats};
pub use filter::BLOOM_BITS_PER_KEY_MAX;
pub use format::{
    BLOCK_RAW_BYTES_MAX, FOOTER_BYTES, FOOTER_RUN_ID_OFFSET, HEADER_BYTES, INDEX_KEY_BYTES_MAX,
    NODE_TABLE_ENTRIES_MAX, RESTART_INTERVAL, RUN_FORMAT_VERSION, RUN_MAGIC, SECTION_BYTES_MAX,
};
pub use reader::{Run, RunIter};
pub use salvage::{LostBlock, RunSalvage, salvage_run};
pub use writer::{BLOCK_BYTES_TARGET_MAX, RunWriter, RunWriterOptions};

/// Name of the run directory inside a database directory.
pub const RUN_DIR: &str = "runs";

/// The file name of run `id`: `run-<id as 20 digits>.run`.
pub fn run_file_name(id: u64) -> String {
    crate::io::numbered_file_name("run-", id, ".run")
}

/// The run id in a name made by [`run_file_name`], if `name` is exactly
/// such a name (a temp file `run-<id>.run.tmp` is not).
pub fn parse_run_file_name(name: &str) -> Option<u64> {
    crate::io::parse_numbered_file_name(name, "run-", ".run")
}

/// What a finished (or opened) run file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFileInfo {
    /// The run id (in the file name, the header and the footer).
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub size_bytes: u64,
    /// Entries (keys) in it.
    pub entries: u64,
    /// Entries that are tombstones: keys that read as absent because of a
    /// delete (a register without a value that no newer counter increment
    /// outranks; `KeyState::visible` is `Absent`).
    pub tombstones: u64,
    /// The smallest key, if any.
    pub first_key: Option<Vec<u8>>,
    /// The largest key, if any.
    pub last_key: Option<Vec<u8>>,
    /// The node that wrote it.
    pub node: NodeId,
    /// The footer's CRC-32C: with the id, names this exact file (a
    /// manifest can tell a rewritten run from the one it recorded).
    pub checksum: u32,
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_crypto;
