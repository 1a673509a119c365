//! Reading a run: [`Run::open`] (footer, index, filter, node table),
//! point lookups, ordered iteration both ways, and full verification.
//! An encrypted run's frames are decrypted as they are read (blocks before
//! the cache, which keeps them decoded).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::NodeId;
use crate::codec::DecodeError;
use crate::crdt::KeyState;
use crate::crypto::{Domain, FileCipher, KeyBlock, KeyId, Keyring, TAG_BYTES};
use crate::error::{Error, Result};
use crate::io::{Io, IoFile};
use crate::record::StoreKey;

use super::block::{BlockView, restarts_for};
use super::cache::BlockCache;
use super::crypt::{RunCipher, plaintext};
use super::entry::{DecodeContext, StateView, is_tombstone, materialize};
use super::filter::Bloom;
use super::format::{
    BLOCK_RAW_BYTES_MAX, ENCRYPTED_DATA_OFFSET, FOOTER_BYTES, FOOTER_FLAGS_OFFSET, FRAME_DATA_LZ4,
    FRAME_DATA_RAW, FRAME_FILTER, FRAME_HEADER_BYTES_MAX, FRAME_INDEX, FRAME_NODES, Footer,
    HEADER_BYTES, KEY_BLOCK_OFFSET, NODE_TABLE_ENTRIES_MAX, SECTION_BYTES_MAX, data_start,
    decode_footer, decode_header, read_frame,
};
use super::index::{BlockIndex, BlockMeta, index_corruption};
use super::{RunFileInfo, parse_run_file_name};

/// Hands out process-unique cache ids, so blocks of two runs (or of two
/// databases sharing a cache) never alias, even when a run file is
/// replaced by another of the same name.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// The sections after the data blocks may together be no larger than
/// this (four frames, each within [`SECTION_BYTES_MAX`] and, encrypted,
/// its tag).
const META_BYTES_MAX: u64 = 4 * (SECTION_BYTES_MAX + TAG_BYTES + FRAME_HEADER_BYTES_MAX) as u64;
/// The largest data-block frame a reader reads (with an encrypted run's
/// tag).
const BLOCK_FRAME_BYTES_MAX: u64 =
    (BLOCK_RAW_BYTES_MAX + TAG_BYTES + FRAME_HEADER_BYTES_MAX) as u64;

/// An open run file. `Send + Sync`: lookups and iterators from many
/// threads share it (reads are positional, and the cache is sharded).
pub struct Run {
    info: RunFileInfo,
    file: IoFile,
    cache: Arc<BlockCache>,
    cache_id: u64,
    index: BlockIndex,
    filter: Bloom,
    nodes: Vec<NodeId>,
    /// The cipher of an encrypted run.
    cipher: Option<RunCipher>,
}

/// The node table section: 8 bytes per node, distinct, at most
/// [`NODE_TABLE_ENTRIES_MAX`].
pub(crate) fn decode_node_table(payload: &[u8]) -> std::result::Result<Vec<NodeId>, String> {
    if !payload.len().is_multiple_of(8) || payload.len() / 8 > NODE_TABLE_ENTRIES_MAX {
        return Err(format!("node table of {} bytes", payload.len()));
    }
    let nodes: Vec<NodeId> = payload
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            NodeId(u64::from_le_bytes(w))
        })
        .collect();
    let mut sorted = nodes.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w.first() == w.get(1)) {
        return Err("node table names a node twice".into());
    }
    Ok(nodes)
}

/// The decompressed payload of the data-block frame that is exactly
/// `frame_bytes` and lies at `offset` in the file: its checksum checked,
/// then (an encrypted run's, with `cipher`) decrypted and authenticated,
/// then decompressed. `Err((offset in frame_bytes, reason))`.
pub(crate) fn decompress_frame(
    frame_bytes: &[u8],
    offset: u64,
    cipher: Option<&RunCipher>,
) -> std::result::Result<Vec<u8>, (u64, String)> {
    let frame = read_frame(frame_bytes, cipher.is_some())?;
    if frame.frame_len != frame_bytes.len() {
        return Err((0, "block frame length differs from the index".into()));
    }
    if frame.kind != FRAME_DATA_RAW && frame.kind != FRAME_DATA_LZ4 {
        return Err((
            0,
            format!("frame type {:#04x} where a data block belongs", frame.kind),
        ));
    }
    let payload =
        plaintext(cipher, &frame, offset).map_err(|why| (0, format!("data block: {why}")))?;
    match frame.kind {
        FRAME_DATA_LZ4 => {
            let mut out = vec![0u8; frame.raw_len];
            match lz4_flex::block::decompress_into(&payload, &mut out) {
                Ok(n) if n == frame.raw_len => Ok(out),
                Ok(n) => Err((
                    0,
                    format!("block decompressed to {n} bytes, not {}", frame.raw_len),
                )),
                Err(e) => Err((0, format!("block does not decompress: {e}"))),
            }
        }
        _ => Ok(payload.into_owned()),
    }
}

/// A decompressed data block: the frame that is exactly `frame_bytes` and
/// lies at `offset`, checksummed, decrypted (with `cipher`), decompressed,
/// and its restart array checked for `entries` entries. `Err((offset in
/// frame_bytes, reason))`.
pub(crate) fn decode_block_frame(
    frame_bytes: &[u8],
    entries: usize,
    offset: u64,
    cipher: Option<&RunCipher>,
) -> std::result::Result<Vec<u8>, (u64, String)> {
    let raw = decompress_frame(frame_bytes, offset, cipher)?;
    BlockView::parse(&raw, entries).map_err(|e| (0, format!("block layout: {e}")))?;
    Ok(raw)
}

/// The entries of a decompressed block of `entries` entries, in order,
/// each key checked against the one before it, the first and last against
/// `edges` (the index's first and last key) if given.
pub(crate) fn visit_block(
    raw: &[u8],
    entries: usize,
    nodes: &[NodeId],
    edges: Option<(&[u8], &[u8])>,
    mut visit: impl FnMut(
        &[u8],
        &StateView<'_>,
        &DecodeContext<'_>,
    ) -> std::result::Result<(), DecodeError>,
) -> std::result::Result<(), DecodeError> {
    let view = BlockView::parse(raw, entries)?;
    let cx = DecodeContext {
        nodes,
        base_ms: view.base_ms,
    };
    let mut cursor = view.cursor_at_interval(0, true);
    let mut key = Vec::new();
    let mut seen = 0usize;
    while let Some(state) = cursor.next(&mut key, &cx)? {
        let at_edge_ok = edges.is_none_or(|(first, last)| {
            (seen != 0 || key == first) && (seen + 1 != entries || key == last)
        });
        if !at_edge_ok {
            return Err(crate::codec::Reader::invalid(
                0,
                "block keys differ from the index's first and last key",
            ));
        }
        visit(&key, &state, &cx)?;
        seen += 1;
    }
    Ok(())
}

impl Run {
    /// Opens a run file: reads and checks its header, footer, node table,
    /// block index and filter (each checksummed), nothing else, so the
    /// cost does not grow with the entry count beyond the index and filter
    /// size. Every problem with the file is `Error::Corruption` naming it,
    /// including a run id in the footer other than the one in the file
    /// name, and a format version this build does not read.
    ///
    /// An encrypted run is opened with the key its key block names, found
    /// in `keyring` (the current key or an older one); if the keyring
    /// lacks it (or holds no key at all), the error is
    /// `Error::Key(KeyError::Missing)` naming the file and the key id, and
    /// nothing past the header and the key block is read. A run in clear
    /// opens with any keyring.
    pub fn open(
        io: &Io,
        path: &Path,
        cache: Arc<BlockCache>,
        keyring: &Keyring,
    ) -> Result<Arc<Run>> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(id) = parse_run_file_name(name) else {
            return Err(Error::corruption(
                path,
                0,
                "file name is not run-<20-digit id>.run",
            ));
        };
        Run::open_as(io, path, id, cache, keyring).map(Arc::new)
    }

    /// Opens `path` as run `id` (a temp file being checked has no id in
    /// its name), with the keys of `keyring` (see [`Run::open`]).
    pub(crate) fn open_as(
        io: &Io,
        path: &Path,
        id: u64,
        cache: Arc<BlockCache>,
        keyring: &Keyring,
    ) -> Result<Run> {
        Run::open_with(io, path, id, cache, |block| {
            keyring.cipher(block, Domain::Run, path)
        })
    }

    /// Opens `path` as run `id`; an encrypted run's cipher is what
    /// `cipher_for` gives for its key block (a writer checking what it
    /// wrote hands over its own).
    pub(super) fn open_with(
        io: &Io,
        path: &Path,
        id: u64,
        cache: Arc<BlockCache>,
        cipher_for: impl FnOnce(&KeyBlock) -> Result<FileCipher>,
    ) -> Result<Run> {
        let file = io.open_read(path)?;
        let size_bytes = file.len_bytes()?;
        let corrupt = |offset: u64, why: String| Error::corruption(path, offset, why);
        if size_bytes < (HEADER_BYTES + FOOTER_BYTES) as u64 {
            return Err(corrupt(
                0,
                format!("{size_bytes} bytes, shorter than a header and a footer"),
            ));
        }
        // One read for the header and, if the run is encrypted, the key
        // block after it (the file is longer than both: checked above).
        let start = read_exact(&file, 0, ENCRYPTED_DATA_OFFSET)?;
        let header = decode_header(&start).map_err(|(at, why)| corrupt(at, why))?;
        let cipher = if header.encrypted {
            let block = start.get(KEY_BLOCK_OFFSET..).unwrap_or_default();
            let block =
                KeyBlock::decode(block).map_err(|why| corrupt(KEY_BLOCK_OFFSET as u64, why))?;
            Some(RunCipher::new(cipher_for(&block)?, id))
        } else {
            None
        };
        let data_start = data_start(header.encrypted);
        let footer_at = size_bytes - FOOTER_BYTES as u64;
        if footer_at < data_start {
            return Err(corrupt(
                0,
                format!("{size_bytes} bytes, shorter than a header, a key block and a footer"),
            ));
        }
        let (footer, checksum) = decode_footer(&read_exact(&file, footer_at, FOOTER_BYTES)?)
            .map_err(|(at, why)| corrupt(footer_at + at, why))?;
        if footer.encrypted != header.encrypted {
            return Err(corrupt(
                footer_at + FOOTER_FLAGS_OFFSET as u64,
                format!(
                    "the footer says the run is {}, the header {}",
                    in_clear_or_encrypted(footer.encrypted),
                    in_clear_or_encrypted(header.encrypted)
                ),
            ));
        }
        if footer.run_id != id || header.run_id != id || footer.node != header.node {
            return Err(corrupt(
                footer_at,
                format!(
                    "footer names run {} of node {}, header run {} of node {}, file name run {id}",
                    footer.run_id, footer.node, header.run_id, header.node
                ),
            ));
        }
        let sections = Sections::locate(&footer, data_start, footer_at)
            .map_err(|why| corrupt(footer_at, why))?;
        let meta_len = usize::try_from(footer_at - footer.nodes_offset).unwrap_or(usize::MAX);
        let meta = read_exact(&file, footer.nodes_offset, meta_len)?;
        let parsed = sections
            .parse(&meta, &footer, cipher.as_ref())
            .map_err(|(at, why)| corrupt(footer.nodes_offset + at, why))?;
        let index = BlockIndex::decode(&parsed.index, data_start, Some(footer.nodes_offset))
            .map_err(|e| index_corruption(path, footer.index_offset, &e))?;
        let entries: u64 = (0..index.len())
            .filter_map(|i| index.block(i))
            .map(|b| b.entries)
            .sum();
        if index.len() as u64 != footer.blocks
            || entries != footer.entries
            || footer.tombstones > footer.entries
        {
            return Err(corrupt(
                footer_at,
                format!(
                    "footer counts {} blocks, {} entries, {} tombstones; the index {} blocks, {entries} entries",
                    footer.blocks,
                    footer.entries,
                    footer.tombstones,
                    index.len()
                ),
            ));
        }
        let first_key = index.block(0).map(|b| index.first_key(b).to_vec());
        let last_key = index
            .len()
            .checked_sub(1)
            .and_then(|i| index.block(i))
            .map(|b| index.last_key(b).to_vec());
        Ok(Run {
            info: RunFileInfo {
                id,
                path: path.to_path_buf(),
                size_bytes,
                entries: footer.entries,
                tombstones: footer.tombstones,
                first_key,
                last_key,
                node: footer.node,
                checksum,
            },
            file,
            cache,
            cache_id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            index,
            filter: parsed.filter,
            nodes: parsed.nodes,
            cipher,
        })
    }

    /// The id of the key the run is encrypted with; `None` for a run in
    /// clear. (A key rotation rewrites the runs under an older key.)
    pub fn key_id(&self) -> Option<KeyId> {
        self.cipher.as_ref().map(RunCipher::key_id)
    }

    /// The block index (for tests that aim damage at a block).
    #[cfg(test)]
    pub(crate) fn index(&self) -> &BlockIndex {
        &self.index
    }

    /// What the run holds; the id is the footer's (checked against the
    /// file name at open).
    pub fn info(&self) -> &RunFileInfo {
        &self.info
    }

    /// False only if `key` is certainly not in the run (the filter).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.filter.may_contain(key)
    }

    /// The state of `key`, if the run holds it: the filter, then a binary
    /// search of the index, then one block (through the cache).
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyState>> {
        if !self.filter.may_contain(key) {
            return Ok(None);
        }
        let i = self.index.seek(key, false);
        let Some(meta) = self.index.block(i) else {
            return Ok(None);
        };
        if key < self.index.first_key(meta) {
            return Ok(None);
        }
        let block = self.block(meta)?;
        let found = (|| {
            let view = BlockView::parse(&block, meta.entries as usize)?;
            let cx = DecodeContext {
                nodes: &self.nodes,
                base_ms: view.base_ms,
            };
            match view.find(key, &cx)? {
                Some(state) => materialize(&state, &cx).map(Some),
                None => Ok(None),
            }
        })();
        found.map_err(|e| self.block_corruption(meta, &e))
    }

    /// Iterates the entries within `lower..upper` in key order (descending
    /// if `reverse`). The iterator seeks to its first key through the
    /// index and one block's restarts; it never scans from the start.
    pub fn iter(
        self: &Arc<Self>,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
    ) -> RunIter {
        RunIter {
            run: Arc::clone(self),
            lower,
            upper,
            reverse,
            at: None,
            started: false,
            pending: VecDeque::new(),
            boundary: None,
            held: None,
            done: false,
            fill_cache: true,
        }
    }

    /// [`Run::iter`] for a reader that will not come back (a merge, a
    /// flush's digest): blocks found in the cache are used, blocks read
    /// from the file are not added to it, so a merge of gigabytes does not
    /// push out what gets and scans use.
    pub fn iter_uncached(
        self: &Arc<Self>,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
    ) -> RunIter {
        let mut iter = self.iter(lower, upper, reverse);
        iter.fill_cache = false;
        iter
    }

    /// Reads every block from the file (not through the cache), checks
    /// each checksum, decodes every entry, and checks the keys' order
    /// within and across blocks and against the index, that the filter
    /// passes every key, and the entry and tombstone counts against the
    /// footer. Returns the entry count.
    pub fn verify(&self) -> Result<u64> {
        let mut entries = 0u64;
        let mut tombstones = 0u64;
        for i in 0..self.index.len() {
            let Some(meta) = self.index.block(i) else {
                break;
            };
            let raw = self.read_block(meta)?;
            let checked = visit_block(
                &raw,
                meta.entries as usize,
                &self.nodes,
                Some((self.index.first_key(meta), self.index.last_key(meta))),
                |key, state, cx| {
                    if !self.filter.may_contain(key) {
                        return Err(crate::codec::Reader::invalid(
                            0,
                            "the filter does not pass a key the run holds",
                        ));
                    }
                    entries += 1;
                    tombstones += u64::from(is_tombstone(&materialize(state, cx)?));
                    Ok(())
                },
            );
            checked.map_err(|e| self.block_corruption(meta, &e))?;
        }
        if entries != self.info.entries || tombstones != self.info.tombstones {
            return Err(Error::corruption(
                &self.info.path,
                self.info.size_bytes - FOOTER_BYTES as u64,
                format!(
                    "blocks hold {entries} entries, {tombstones} tombstones; the footer says {}, {}",
                    self.info.entries, self.info.tombstones
                ),
            ));
        }
        Ok(entries)
    }

    /// Bytes this run keeps in memory (index, filter, node table and the
    /// struct), for memory accounting. Cached blocks are the cache's.
    pub fn resident_bytes(&self) -> usize {
        std::mem::size_of::<Run>()
            + self.index.resident_bytes()
            + self.filter.resident_bytes()
            + self.nodes.capacity() * std::mem::size_of::<NodeId>()
            + self.info.path.as_os_str().len()
            + self.info.first_key.as_ref().map_or(0, Vec::capacity)
            + self.info.last_key.as_ref().map_or(0, Vec::capacity)
    }

    /// Block `meta`, decompressed and checked, from the cache or the file
    /// (and then cached).
    fn block(&self, meta: &BlockMeta) -> Result<Arc<[u8]>> {
        self.block_filling(meta, true)
    }

    /// Block `meta` through the cache; read blocks are added to it only
    /// if `fill`.
    fn block_filling(&self, meta: &BlockMeta, fill: bool) -> Result<Arc<[u8]>> {
        if let Some(block) = self.cache.get(self.cache_id, meta.offset) {
            return Ok(block);
        }
        let block: Arc<[u8]> = Arc::from(self.read_block(meta)?);
        if fill {
            self.cache
                .insert(self.cache_id, meta.offset, Arc::clone(&block));
        }
        Ok(block)
    }

    /// Block `meta` read from the file, checksummed, decrypted (an
    /// encrypted run's), decompressed and its layout checked.
    fn read_block(&self, meta: &BlockMeta) -> Result<Vec<u8>> {
        let path = &self.info.path;
        if meta.frame_len > BLOCK_FRAME_BYTES_MAX {
            return Err(Error::corruption(
                path,
                meta.offset,
                format!("block of {} bytes exceeds the block limit", meta.frame_len),
            ));
        }
        let frame = read_exact(&self.file, meta.offset, meta.frame_len as usize)?;
        decode_block_frame(
            &frame,
            meta.entries as usize,
            meta.offset,
            self.cipher.as_ref(),
        )
        .map_err(|(at, why)| Error::corruption(path, meta.offset + at, why))
    }

    fn block_corruption(&self, meta: &BlockMeta, e: &DecodeError) -> Error {
        Error::corruption(
            &self.info.path,
            meta.offset,
            format!("block at {} (decompressed): {e}", meta.offset),
        )
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("info", &self.info)
            .field("cache_id", &self.cache_id)
            .field("blocks", &self.index.len())
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Nothing can ask for this run's blocks again: free their room now
        // rather than when the clock hand comes by.
        self.cache.forget(self.cache_id);
    }
}

/// Reads exactly `len` bytes at `offset`, or reports the file shorter
/// than that as damage.
fn read_exact(file: &IoFile, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = file.read_at(offset, &mut buf)?;
    if n != len {
        return Err(Error::corruption(
            file.path(),
            offset + n as u64,
            format!("file ends {} bytes into a {len}-byte read", n),
        ));
    }
    Ok(buf)
}

/// Where the sections after the data lie, from the footer, checked to tile
/// the space between the data and the footer in order.
struct Sections {
    nodes_len: usize,
    index_len: usize,
    filter_len: usize,
    copy_len: usize,
}

/// The sections, decoded (the index only decrypted: the caller decodes it
/// against the data's extent).
struct ParsedSections<'a> {
    nodes: Vec<NodeId>,
    index: Cow<'a, [u8]>,
    filter: Bloom,
}

/// How a run is described in a message.
fn in_clear_or_encrypted(encrypted: bool) -> &'static str {
    if encrypted { "encrypted" } else { "in clear" }
}

impl Sections {
    fn locate(
        f: &Footer,
        data_start: u64,
        footer_at: u64,
    ) -> std::result::Result<Sections, String> {
        let offsets = [
            data_start,
            f.nodes_offset,
            f.index_offset,
            f.filter_offset,
            f.nodes_copy_offset,
            footer_at,
        ];
        if !offsets.is_sorted() || footer_at - f.nodes_offset > META_BYTES_MAX {
            return Err(format!("section offsets {offsets:?} out of place"));
        }
        let len = |a: u64, b: u64| (b - a) as usize;
        Ok(Sections {
            nodes_len: len(f.nodes_offset, f.index_offset),
            index_len: len(f.index_offset, f.filter_offset),
            filter_len: len(f.filter_offset, f.nodes_copy_offset),
            copy_len: len(f.nodes_copy_offset, footer_at),
        })
    }

    /// Reads the four frames from `meta` (the bytes from the node table to
    /// the footer), decrypting them with `cipher` if the run is encrypted.
    /// `Err((offset in meta, reason))`.
    fn parse<'a>(
        &self,
        meta: &'a [u8],
        f: &Footer,
        cipher: Option<&RunCipher>,
    ) -> std::result::Result<ParsedSections<'a>, (u64, String)> {
        let mut at = 0usize;
        let mut next = |kind: u8,
                        len: usize,
                        what: &str|
         -> std::result::Result<Cow<'a, [u8]>, (u64, String)> {
            let bytes = meta.get(at..at + len).unwrap_or_default();
            let frame = read_frame(bytes, cipher.is_some())
                .map_err(|(o, why)| (at as u64 + o, format!("{what}: {why}")))?;
            if frame.kind != kind || frame.frame_len != len {
                return Err((at as u64, format!("{what}: not where the footer says")));
            }
            let payload = plaintext(cipher, &frame, f.nodes_offset + at as u64)
                .map_err(|why| (at as u64, format!("{what}: {why}")))?;
            at += len;
            Ok(payload)
        };
        let nodes = next(FRAME_NODES, self.nodes_len, "node table")?;
        let index = next(FRAME_INDEX, self.index_len, "block index")?;
        let filter = next(FRAME_FILTER, self.filter_len, "filter")?;
        let copy = next(FRAME_NODES, self.copy_len, "node table copy")?;
        if copy != nodes {
            let at = f.nodes_copy_offset - f.nodes_offset;
            return Err((at, "the node table's copy differs from it".into()));
        }
        let nodes = decode_node_table(&nodes).map_err(|why| (0, why))?;
        let filter_at = f.filter_offset - f.nodes_offset;
        let filter = Bloom::decode(&filter).map_err(|e| (filter_at, format!("filter: {e}")))?;
        Ok(ParsedSections {
            nodes,
            index,
            filter,
        })
    }
}

/// An iterator over a run's entries in a key range, either way. After an
/// error it yields nothing more.
#[derive(Debug)]
pub struct RunIter {
    run: Arc<Run>,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    /// The block and restart interval decoded last.
    at: Option<(usize, usize)>,
    started: bool,
    /// Entries of the decoded interval still to yield, in key order.
    pending: VecDeque<(StoreKey, KeyState)>,
    /// The key beyond which the next interval must lie: the last key
    /// decoded (forward) or the first (reverse).
    boundary: Option<Vec<u8>>,
    /// The block decoded last, kept so its other intervals cost no cache
    /// lookup (or, with no room in the cache, no second read).
    held: Option<(usize, Arc<[u8]>)>,
    done: bool,
    /// Add blocks read from the file to the cache.
    fill_cache: bool,
}

impl Iterator for RunIter {
    type Item = Result<(StoreKey, KeyState)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let item = if self.reverse {
                self.pending.pop_back()
            } else {
                self.pending.pop_front()
            };
            if let Some(item) = item {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            match self.advance() {
                Ok(true) => {}
                Ok(false) => self.done = true,
                Err(e) => {
                    self.done = true;
                    self.pending.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

impl RunIter {
    /// Whether blocks this iterator reads from the file are added to the
    /// block cache (see [`Run::iter_uncached`]).
    pub fn set_fill_cache(&mut self, fill: bool) {
        self.fill_cache = fill;
    }

    /// Decodes the next interval into `pending`; false when there is none.
    fn advance(&mut self) -> Result<bool> {
        let next = if self.started {
            self.step()?
        } else {
            self.started = true;
            self.seek()?
        };
        let Some((block, interval)) = next else {
            return Ok(false);
        };
        self.at = Some((block, interval));
        self.decode_interval(block, interval)?;
        Ok(true)
    }

    /// The first (block, interval) to decode.
    fn seek(&mut self) -> Result<Option<(usize, usize)>> {
        let run = Arc::clone(&self.run);
        let index = &run.index;
        if index.is_empty() {
            return Ok(None);
        }
        let (bound, forward) = if self.reverse {
            (self.upper.clone(), false)
        } else {
            (self.lower.clone(), true)
        };
        let (key, strict) = match &bound {
            Bound::Unbounded if forward => return Ok(Some((0, 0))),
            Bound::Unbounded => {
                let last = index.len() - 1;
                return Ok(Some((last, self.last_interval(last))));
            }
            Bound::Included(k) => (k.as_slice(), false),
            Bound::Excluded(k) => (k.as_slice(), true),
        };
        let block = index.seek(key, forward && strict);
        if forward {
            if block >= index.len() {
                return Ok(None);
            }
            let restarts = self.with_view(block, |view| view.restarts_at_or_below(key, false))?;
            return Ok(Some((block, restarts.saturating_sub(1))));
        }
        let block = block.min(index.len() - 1);
        let restarts = self.with_view(block, |view| view.restarts_at_or_below(key, strict))?;
        match restarts.checked_sub(1) {
            Some(interval) => Ok(Some((block, interval))),
            None => Ok(block.checked_sub(1).map(|b| (b, self.last_interval(b)))),
        }
    }

    /// The (block, interval) after (or, in reverse, before) the last one.
    fn step(&self) -> Result<Option<(usize, usize)>> {
        let Some((block, interval)) = self.at else {
            return Ok(None);
        };
        let index = &self.run.index;
        if self.reverse {
            return Ok(match interval.checked_sub(1) {
                Some(i) => Some((block, i)),
                None => block.checked_sub(1).map(|b| (b, self.last_interval(b))),
            });
        }
        if interval + 1 < self.last_interval(block) + 1 {
            Ok(Some((block, interval + 1)))
        } else if block + 1 < index.len() {
            Ok(Some((block + 1, 0)))
        } else {
            Ok(None)
        }
    }

    fn last_interval(&self, block: usize) -> usize {
        let entries = self
            .run
            .index
            .block(block)
            .map_or(1, |b| b.entries as usize);
        restarts_for(entries).saturating_sub(1)
    }

    fn with_view<T>(
        &mut self,
        block: usize,
        f: impl FnOnce(&BlockView<'_>) -> std::result::Result<T, DecodeError>,
    ) -> Result<T> {
        let (meta, data) = self.block_data(block)?;
        BlockView::parse(&data, meta.entries as usize)
            .and_then(|view| f(&view))
            .map_err(|e| self.run.block_corruption(&meta, &e))
    }

    /// Block `block` and its index entry, from the iterator's hold or the
    /// run.
    fn block_data(&mut self, block: usize) -> Result<(BlockMeta, Arc<[u8]>)> {
        let run = &self.run;
        let Some(meta) = run.index.block(block).copied() else {
            return Err(Error::corruption(
                &run.info.path,
                0,
                "block index out of range",
            ));
        };
        if let Some((held, data)) = &self.held
            && *held == block
        {
            return Ok((meta, Arc::clone(data)));
        }
        let data = run.block_filling(&meta, self.fill_cache)?;
        self.held = Some((block, Arc::clone(&data)));
        Ok((meta, data))
    }

    /// Decodes one interval, checks its keys, and queues those in range
    /// (states outside the bounds are not built). Sets `done` once an
    /// entry passes the far bound.
    fn decode_interval(&mut self, block: usize, interval: usize) -> Result<()> {
        let run = Arc::clone(&self.run);
        let (meta, data) = self.block_data(block)?;
        let meta = &meta;
        let (lower, upper, reverse) = (&self.lower, &self.upper, self.reverse);
        let mut decoded: Vec<(StoreKey, KeyState)> =
            Vec::with_capacity(super::format::RESTART_INTERVAL);
        let mut first_key: Option<Vec<u8>> = None;
        let mut key = Vec::new();
        let mut passed = false;
        let result = (|| {
            let view = BlockView::parse(&data, meta.entries as usize)?;
            let cx = DecodeContext {
                nodes: &run.nodes,
                base_ms: view.base_ms,
            };
            let mut cursor = view.cursor_at_interval(interval, false);
            while let Some(state) = cursor.next(&mut key, &cx)? {
                if first_key.is_none() {
                    first_key = Some(key.clone());
                }
                let k = key.as_slice();
                let below = match lower {
                    Bound::Included(l) => k < l.as_slice(),
                    Bound::Excluded(l) => k <= l.as_slice(),
                    Bound::Unbounded => false,
                };
                let above = match upper {
                    Bound::Included(u) => k > u.as_slice(),
                    Bound::Excluded(u) => k >= u.as_slice(),
                    Bound::Unbounded => false,
                };
                if (below && reverse) || (above && !reverse) {
                    passed = true;
                }
                if !below && !above {
                    decoded.push((StoreKey::from(k), materialize(&state, &cx)?));
                }
            }
            Ok(())
        })();
        result.map_err(|e| run.block_corruption(meta, &e))?;
        if let Some(first) = &first_key {
            self.check_interval(meta, interval, first, &key)?;
        }
        if passed {
            self.done = true;
        }
        self.pending.extend(decoded);
        Ok(())
    }

    /// The interval's keys against the index and the interval before.
    fn check_interval(
        &mut self,
        meta: &BlockMeta,
        interval: usize,
        first_key: &[u8],
        last_key: &[u8],
    ) -> Result<()> {
        let index = &self.run.index;
        let is_last = interval + 1 == restarts_for(meta.entries as usize);
        let within = first_key >= index.first_key(meta)
            && last_key <= index.last_key(meta)
            && (interval != 0 || first_key == index.first_key(meta))
            && (!is_last || last_key == index.last_key(meta));
        let ordered = match &self.boundary {
            None => true,
            Some(b) if self.reverse => last_key < b.as_slice(),
            Some(b) => first_key > b.as_slice(),
        };
        if !within || !ordered {
            return Err(Error::corruption(
                &self.run.info.path,
                meta.offset,
                format!(
                    "block at {}: keys out of order with the index or the block before",
                    meta.offset
                ),
            ));
        }
        let edge = if self.reverse { first_key } else { last_key };
        self.boundary = Some(edge.to_vec());
        Ok(())
    }
}
