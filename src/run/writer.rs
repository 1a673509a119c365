//! Writing a run: entries in key order into blocks, then the node table,
//! index, filter and footer; fsync, read back and check, rename, fsync the
//! directory. With a key, every frame is encrypted under a file key of
//! its own (a fresh salt per run file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::NodeId;
use crate::crdt::KeyState;
use crate::crypto::{Domain, EncryptionKey, FileCipher, KeyBlock, fresh_salt};
use crate::error::{Error, Result};
use crate::io::{Io, IoFile};
use crate::record::limits::RECORD_KEY_BYTES_MAX;

use super::block::BlockBuilder;
use super::cache::BlockCache;
use super::crypt::RunCipher;
use super::entry::{NodeTableBuilder, check_state, is_tombstone};
use super::filter::{BLOOM_BITS_PER_KEY_MAX, Bloom};
use super::format::{
    BLOCK_RAW_BYTES_MAX, FRAME_DATA_LZ4, FRAME_DATA_RAW, FRAME_FILTER, FRAME_INDEX, FRAME_NODES,
    Footer, Header, INDEX_KEY_BYTES_MAX, KEY_BLOCK_OFFSET, NODE_LIST_ENTRIES_MAX,
    NODE_TABLE_ENTRIES_MAX, data_start, encode_footer, encode_header, key_hash, put_frame,
};
use super::index::IndexBuilder;
use super::reader::Run;
use super::{RunFileInfo, run_file_name};

/// Largest `block_bytes_target` a writer accepts: blocks are the unit of
/// reading and caching, and a lookup reads a whole one.
pub const BLOCK_BYTES_TARGET_MAX: usize = 64 * 1024 * 1024;
/// Bytes gathered before one write to the file.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// A writer fdatasyncs its file every this many bytes written (see
/// `write_pending`).
const SYNC_EVERY_BYTES: u64 = 4 * 1024 * 1024;
/// An upper bound on what an entry adds to a block besides its key and
/// value (lengths, flags, a stamp, list counts, a restart slot).
const ENTRY_FIXED_BYTES_MAX: usize = 96;
/// An upper bound on one floor or counter element's bytes (six varints).
const NODE_LIST_ELEMENT_BYTES_MAX: usize = 6 * 10;

/// How a run is written.
#[derive(Clone, Debug)]
pub struct RunWriterOptions {
    /// A block is closed once its entries reach this many bytes (default
    /// 4096); an entry larger than that gets a block of its own. At most
    /// [`BLOCK_BYTES_TARGET_MAX`].
    pub block_bytes_target: usize,
    /// Compress blocks with LZ4 where that saves at least an eighth of a
    /// block (default true).
    pub compression: bool,
    /// Bloom filter bits per key (default 10: about 1.1 % false
    /// positives); 0 writes no filter. At most [`BLOOM_BITS_PER_KEY_MAX`].
    pub bloom_bits_per_key: u32,
    /// The most entries the run will get, if known (a flush, a merge):
    /// the filter is then sized for that many and filled as entries come,
    /// instead of keeping 8 bytes per entry until `finish`. More entries
    /// than that still work, with more false positives.
    pub expected_entries: Option<u64>,
    /// Encrypt the run with this key (default `None`: the run is written
    /// in clear). Each run file gets its own salt, drawn at
    /// [`RunWriter::create`], and so its own file key; reading it back
    /// needs a keyring holding this key.
    pub key: Option<Arc<EncryptionKey>>,
}

impl Default for RunWriterOptions {
    fn default() -> Self {
        Self {
            block_bytes_target: 4096,
            compression: true,
            bloom_bits_per_key: 10,
            expected_entries: None,
            key: None,
        }
    }
}

/// Writes one run file. Entries go in with [`RunWriter::add`] in strictly
/// increasing key order; [`RunWriter::finish`] makes the file durable
/// under its final name. Dropped unfinished (or [`RunWriter::abandon`]ed),
/// it removes its temp file.
#[derive(Debug)]
pub struct RunWriter {
    io: Io,
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    id: u64,
    node: NodeId,
    options: RunWriterOptions,
    /// The cipher, if the run is encrypted.
    cipher: Option<RunCipher>,
    file: Option<IoFile>,
    /// Bytes produced but not yet written to the file.
    pending: Vec<u8>,
    /// Bytes written to the file so far.
    written: u64,
    /// `written` as of the last fdatasync.
    synced: u64,
    block: BlockBuilder,
    nodes: NodeTableBuilder,
    index: IndexBuilder,
    hashes: Vec<u64>,
    /// The filter, when sized up front (`expected_entries`).
    bloom: Option<Bloom>,
    entries: u64,
    tombstones: u64,
    first_key: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    /// True once the temp file was renamed to the final name.
    renamed: bool,
    /// True once the temp file is gone (renamed or removed).
    closed: bool,
}

impl RunWriter {
    /// Creates `<dir>/<run_file_name(id)>.tmp` (creating `dir` durably
    /// first) for run `id`, written by `node`. Options out of range are
    /// `Error::InvalidCommand`. With `options.key`, draws the run's salt
    /// from the operating system's CSPRNG (failing with `Error::Key` if it
    /// cannot) and writes the key block after the header.
    pub fn create(
        io: &Io,
        dir: &Path,
        id: u64,
        node: NodeId,
        options: &RunWriterOptions,
    ) -> Result<RunWriter> {
        if options.bloom_bits_per_key > BLOOM_BITS_PER_KEY_MAX
            || options.block_bytes_target > BLOCK_BYTES_TARGET_MAX
        {
            return Err(Error::InvalidCommand {
                reason: format!(
                    "run writer options out of range: {options:?} (bloom_bits_per_key at most \
                     {BLOOM_BITS_PER_KEY_MAX}, block_bytes_target at most {BLOCK_BYTES_TARGET_MAX})"
                ),
            });
        }
        let cipher = match &options.key {
            Some(key) => Some(RunCipher::new(
                FileCipher::new(key, Domain::Run, fresh_salt()?),
                id,
            )),
            None => None,
        };
        let mut pending = encode_header(Header {
            node,
            run_id: id,
            encrypted: cipher.is_some(),
        })
        .to_vec();
        if let Some(cipher) = &cipher {
            pending.extend_from_slice(&cipher.key_block().encode());
        }
        debug_assert_eq!(pending.len() as u64, data_start(cipher.is_some()));
        io.create_dir_all(dir)?;
        let path = dir.join(run_file_name(id));
        let tmp = dir.join(format!("{}.tmp", run_file_name(id)));
        let file = io.create_truncate(&tmp)?;
        Ok(RunWriter {
            io: io.clone(),
            dir: dir.to_path_buf(),
            tmp,
            path,
            id,
            node,
            options: options.clone(),
            cipher,
            file: Some(file),
            pending,
            written: 0,
            synced: 0,
            block: BlockBuilder::default(),
            nodes: NodeTableBuilder::default(),
            index: IndexBuilder::default(),
            hashes: Vec::new(),
            bloom: options
                .expected_entries
                .filter(|_| options.bloom_bits_per_key > 0)
                .map(|n| Bloom::sized_for(n, options.bloom_bits_per_key)),
            entries: 0,
            tombstones: 0,
            first_key: None,
            last_key: None,
            renamed: false,
            closed: false,
        })
    }

    /// Adds the state of `key`. Keys must come in strictly increasing
    /// byte order, and the state must be one the record codec accepts
    /// (non-empty, nodes in order, within the limits): otherwise
    /// `Error::InvalidCommand` (`Error::LimitExceeded` for a key longer
    /// than the record key limit), and nothing is added. May write
    /// finished blocks to the file.
    pub fn add(&mut self, key: &[u8], state: &KeyState) -> Result<()> {
        if self.file.is_none() {
            return Err(failed_before());
        }
        if key.len() > RECORD_KEY_BYTES_MAX {
            return Err(Error::limit(
                "record_key_bytes_max",
                key.len(),
                RECORD_KEY_BYTES_MAX,
            ));
        }
        if self.last_key.as_deref().is_some_and(|last| key <= last) {
            return Err(Error::InvalidCommand {
                reason: "run keys must be added in strictly increasing order".into(),
            });
        }
        check_state(state, &self.nodes)?;
        let first = if self.block.is_empty() {
            key
        } else {
            self.block.first_key()
        };
        if self.index.key_bytes_with(first, key) > INDEX_KEY_BYTES_MAX {
            return Err(Error::limit(
                "index_key_bytes_max",
                self.index.key_bytes_with(first, key),
                INDEX_KEY_BYTES_MAX,
            ));
        }
        let room = BLOCK_RAW_BYTES_MAX - ENTRY_FIXED_BYTES_MAX;
        if !self.block.is_empty() && self.block.entries_bytes() + entry_bytes_max(key, state) > room
        {
            self.flush_block()?;
        }
        self.block.add(key, state, &mut self.nodes);
        if self.options.bloom_bits_per_key > 0 {
            match self.bloom.as_mut() {
                Some(bloom) => bloom.add(key_hash(key)),
                None => self.hashes.push(key_hash(key)),
            }
        }
        self.entries += 1;
        self.tombstones += u64::from(is_tombstone(state));
        if self.first_key.is_none() {
            self.first_key = Some(key.to_vec());
        }
        let last = self.last_key.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(key);
        if self.block.entries_bytes() >= self.options.block_bytes_target {
            self.flush_block()?;
        }
        Ok(())
    }

    /// True once the run is big enough that a writer cutting a long stream
    /// of entries into runs should finish this one and start the next:
    /// its index keys past a quarter of [`INDEX_KEY_BYTES_MAX`], or its
    /// node table past half of [`NODE_TABLE_ENTRIES_MAX`], so the next
    /// entry can never be refused for either limit (an entry adds at most
    /// two keys of [`RECORD_KEY_BYTES_MAX`] to the index).
    pub fn is_full(&self) -> bool {
        self.index.key_bytes_with(&[], &[]) > INDEX_KEY_BYTES_MAX / 4
            || self.nodes.ids().len() > NODE_TABLE_ENTRIES_MAX / 2
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes of the file so far: the header and every finished block
    /// (written or buffered), not the block being filled.
    pub fn bytes_written(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Closes the block being filled: compresses it where that pays,
    /// encrypts it (an encrypted run), frames it, and indexes it.
    fn flush_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let count = self.block.count();
        let raw = self.block.finish();
        let raw_len = raw.len();
        let compressed = self
            .options
            .compression
            .then(|| lz4_flex::block::compress(&raw))
            .filter(|c| c.len() <= raw_len - raw_len / 8);
        let (kind, payload) = match compressed {
            Some(c) => (FRAME_DATA_LZ4, c),
            None => (FRAME_DATA_RAW, raw),
        };
        let start = self.pending.len();
        self.put_frame(kind, payload, raw_len);
        let frame_len = self.pending.len() - start;
        self.index.add(
            frame_len,
            count,
            self.block.first_key(),
            self.block.last_key(),
        );
        if self.pending.len() >= WRITE_BUFFER_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    /// The offset the next frame will have in the file.
    fn offset(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Appends a frame of `payload` (decompressed length `raw_len`) at the
    /// next offset, encrypting the payload first if the run is encrypted;
    /// returns the frame's offset.
    fn put_frame(&mut self, kind: u8, mut payload: Vec<u8>, raw_len: usize) -> u64 {
        let offset = self.offset();
        if let Some(cipher) = &self.cipher {
            cipher.seal(offset, kind, raw_len, &mut payload);
        }
        put_frame(&mut self.pending, kind, &payload, raw_len);
        offset
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(file) = self.file.as_mut() else {
            return Err(failed_before());
        };
        if let Err(e) = file.write_all(&self.pending) {
            // Fail-stop: what reached the file is unknown, so nothing more
            // is written to it.
            self.file = None;
            return Err(e);
        }
        self.written += self.pending.len() as u64;
        self.pending.clear();
        // Written back as it goes: a big run's dirty pages would otherwise
        // be flushed by whatever fsync comes next on the file system (on
        // ext4, a WAL commit's journal commit), stalling writers for as
        // long as the run takes to write.
        if self.written - self.synced >= SYNC_EVERY_BYTES {
            self.synced = self.written;
            if let Some(file) = self.file.as_ref()
                && let Err(e) = file.sync_data()
            {
                self.file = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes the last block, the node table, index, filter, the node
    /// table's copy and the footer; fsyncs the file; reads the whole file
    /// back and checks every checksum and that it decodes to exactly the
    /// entries added; renames it to its final name and fsyncs the
    /// directory. Only then returns: the run is durable under its name. On
    /// any failure nothing is left under the final name and the temp file
    /// is removed (best effort).
    pub fn finish(mut self) -> Result<RunFileInfo> {
        let result = self.finish_inner();
        if result.is_err() {
            self.remove_files();
        }
        self.closed = true;
        result
    }

    fn finish_inner(&mut self) -> Result<RunFileInfo> {
        self.flush_block()?;
        let table: Vec<u8> = self
            .nodes
            .ids()
            .iter()
            .flat_map(|n| n.0.to_le_bytes())
            .collect();
        let nodes_offset = self.put_frame(FRAME_NODES, table.clone(), table.len());
        let index = self.index.finish();
        let index_offset = self.put_frame(FRAME_INDEX, index, 0);
        let filter = match &self.bloom {
            Some(bloom) => bloom.section(),
            None => Bloom::build(&self.hashes, self.options.bloom_bits_per_key),
        };
        let filter_offset = self.put_frame(FRAME_FILTER, filter, 0);
        let nodes_copy_offset = self.put_frame(FRAME_NODES, table, 0);
        let footer = Footer {
            nodes_offset,
            index_offset,
            filter_offset,
            nodes_copy_offset,
            blocks: self.index.blocks(),
            entries: self.entries,
            tombstones: self.tombstones,
            run_id: self.id,
            node: self.node,
            encrypted: self.cipher.is_some(),
        };
        let (footer_bytes, checksum) = encode_footer(&footer);
        self.pending.extend_from_slice(&footer_bytes);
        self.write_pending()?;
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        let expected = RunFileInfo {
            id: self.id,
            path: self.path.clone(),
            size_bytes: self.written,
            entries: self.entries,
            tombstones: self.tombstones,
            first_key: self.first_key.clone(),
            last_key: self.last_key.clone(),
            node: self.node,
            checksum,
        };
        self.check_written(&expected)?;
        self.io.rename(&self.tmp, &self.path)?;
        self.renamed = true;
        self.io.sync_dir(&self.dir)?;
        Ok(expected)
    }

    /// Reads the temp file back as a reader will and checks it holds what
    /// was written: a bug or a lying disk is caught before the run gets a
    /// name anything can refer to. An encrypted run is read with the
    /// writer's own cipher, and only if the key block read back is the one
    /// written.
    fn check_written(&self, expected: &RunFileInfo) -> Result<()> {
        let run = Run::open_with(&self.io, &self.tmp, self.id, BlockCache::new(0), |block| {
            self.read_back_cipher(block)
        })?;
        let entries = run.verify()?;
        let mut read = run.info().clone();
        read.path.clone_from(&expected.path);
        let key_id = self.cipher.as_ref().map(RunCipher::key_id);
        if entries != expected.entries || read != *expected || run.key_id() != key_id {
            return Err(Error::corruption(
                &self.tmp,
                0,
                format!("read back {read:?}, wrote {expected:?}"),
            ));
        }
        Ok(())
    }

    /// The cipher to read the run back with: the writer's own, if `block`
    /// (the key block read back) is the one it wrote.
    fn read_back_cipher(&self, block: &KeyBlock) -> Result<FileCipher> {
        match &self.cipher {
            Some(cipher) if cipher.key_block() == *block => Ok(cipher.file_cipher().clone()),
            _ => Err(Error::corruption(
                &self.tmp,
                KEY_BLOCK_OFFSET as u64,
                "read back a key block other than the one written",
            )),
        }
    }

    /// Removes the temp file, and the final one if the rename happened
    /// (its directory entry may not be durable, and nothing refers to it).
    fn remove_files(&mut self) {
        self.file = None;
        let _ = self.io.remove_file(&self.tmp);
        if self.renamed {
            let _ = self.io.remove_file(&self.path);
        }
    }

    /// Gives the run up: removes the temp file (best effort).
    pub fn abandon(mut self) {
        self.file = None;
        let _ = self.io.remove_file(&self.tmp);
        self.closed = true;
    }
}

impl Drop for RunWriter {
    fn drop(&mut self) {
        if !self.closed {
            self.file = None;
            let _ = self.io.remove_file(&self.tmp);
        }
    }
}

fn failed_before() -> Error {
    Error::InvalidCommand {
        reason: "run writer used after a failed write".into(),
    }
}

/// An upper bound on the bytes `state` adds to a block under `key`.
fn entry_bytes_max(key: &[u8], state: &KeyState) -> usize {
    let register = state.register.as_ref().map_or(0, |r| {
        r.value.as_ref().map_or(0, |v| v.len()) + r.floor.len() * NODE_LIST_ELEMENT_BYTES_MAX
    });
    let counter = state.counter.as_ref().map_or(0, |c| {
        c.totals.len().min(NODE_LIST_ENTRIES_MAX) * NODE_LIST_ELEMENT_BYTES_MAX
    });
    ENTRY_FIXED_BYTES_MAX + key.len() + register + counter
}
