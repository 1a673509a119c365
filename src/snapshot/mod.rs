//! Snapshots: the whole state at a WAL sequence number, in one versioned,
//! checksummed file, written atomically.
//!
//! A snapshot *covers* sequence number `S`: every frame with sequence numbers
//! up to `S` is merged into it (frames after `S` may be too: merging is
//! idempotent, so replaying them again on open is harmless). Layout in
//! `docs/FORMAT.md`; files are `<dir>/snapshots/snap-<S:020>.snap`.

use std::path::{Path, PathBuf};

use crate::clock::{NodeId, Stamp};
use crate::codec::{DecodeError, Reader, Writer};
use crate::crdt::KeyState;
use crate::crypto::{Domain, FileCipher, KeyBlock, KeyId, Keyring};
use crate::error::{Error, Result};
use crate::io::Io;
use crate::record::{
    Record, StoreKey, decode_record, decode_stamp, encode_record, encode_stamp,
    encoded_record_bytes,
};
use crate::wal::dedup::DedupEntry;

mod salvage;

pub use salvage::{salvage_bytes, salvage_snapshot};

/// Name of the snapshot directory inside a database directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// First eight bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"MKVSNAP\x01";
/// Version of the layout described here.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;

/// Byte offset of the version in the header.
pub const SNAPSHOT_VERSION_OFFSET: usize = 8;
/// Byte offset of the flags.
pub const SNAPSHOT_FLAGS_OFFSET: usize = SNAPSHOT_VERSION_OFFSET + 2;
/// Byte offset of the node id.
pub const SNAPSHOT_NODE_OFFSET: usize = SNAPSHOT_FLAGS_OFFSET + 2;
/// Byte offset of the covered sequence number.
pub const SNAPSHOT_SEQ_OFFSET: usize = SNAPSHOT_NODE_OFFSET + 8;
/// Byte offset of the HLC high-water stamp.
pub const SNAPSHOT_HLC_OFFSET: usize = SNAPSHOT_SEQ_OFFSET + 8;
/// Byte offset of the creation time.
pub const SNAPSHOT_CREATED_OFFSET: usize = SNAPSHOT_HLC_OFFSET + 20;
/// Byte offset of the header checksum.
pub const SNAPSHOT_HEADER_CRC_OFFSET: usize = SNAPSHOT_CREATED_OFFSET + 8;
/// Length of the header.
pub const SNAPSHOT_HEADER_BYTES: usize = SNAPSHOT_HEADER_CRC_OFFSET + 4;
/// Length of a chunk header.
pub const CHUNK_HEADER_BYTES: usize = 16;
/// A chunk is closed once its payload reaches this size. Each chunk has
/// its own checksum, so this is also what one damaged spot costs a
/// salvage.
pub const CHUNK_PAYLOAD_BYTES_TARGET: usize = 64 * 1024;
pub use crate::record::limits::CHUNK_PAYLOAD_BYTES_MAX;
use crate::record::limits::DEDUP_ENTRY_BYTES;

/// Header flag: the snapshot is encrypted. A key block follows the header,
/// and every entries and dedup chunk's payload is ciphertext and tag.
pub const SNAPSHOT_FLAG_ENCRYPTED: u16 = 1;

const CHUNK_ENTRIES: u8 = 1;
const CHUNK_DEDUP: u8 = 2;
const CHUNK_END: u8 = 0xFF;

/// What a snapshot holds besides the entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The node that wrote it.
    pub node: NodeId,
    /// Every frame up to this sequence number is in it.
    pub covered_seq: u64,
    /// The HLC high-water mark when it was taken.
    pub hlc: Stamp,
    /// When it was written, ms since the epoch.
    pub created_ms: u64,
}

/// A snapshot read back from disk.
pub struct LoadedSnapshot {
    /// Its file.
    pub path: PathBuf,
    /// Its header fields.
    pub meta: SnapshotMeta,
    /// Every key's state.
    pub records: Vec<Record>,
    /// Dedup window entries for frames it covers.
    pub dedup: Vec<([u8; 32], DedupEntry)>,
}

/// The file name of the snapshot covering `seq`.
pub fn snapshot_file_name(seq: u64) -> String {
    crate::io::numbered_file_name("snap-", seq, ".snap")
}

/// The covered sequence number in a snapshot file name.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    crate::io::parse_numbered_file_name(name, "snap-", ".snap")
}

/// The snapshots in `dir` (the snapshot directory), newest first.
pub fn list_snapshots(io: &Io, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let names = io.list_dir_if_exists(dir)?;
    let mut out: Vec<(u64, PathBuf)> = names
        .into_iter()
        .filter_map(|n| parse_snapshot_file_name(&n).map(|seq| (seq, dir.join(n))))
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(out)
}

/// A snapshot just written.
pub struct Written {
    /// Its file.
    pub path: PathBuf,
    /// Its size.
    pub size_bytes: u64,
}

/// Appends to the temp file, hashing everything for the end chunk.
struct HashingFile {
    file: crate::io::IoFile,
    hasher: blake3::Hasher,
    written: u64,
}

impl HashingFile {
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file.write_all(bytes)
    }
}

/// Writes a snapshot of `entries` (in key order, each a key's whole
/// state) atomically: temp file, fsync, rename, directory fsync.
pub fn write_snapshot(
    io: &Io,
    dir: &Path,
    meta: &SnapshotMeta,
    entries: impl Iterator<Item = Result<(StoreKey, KeyState)>>,
    dedup: &[([u8; 32], DedupEntry)],
) -> Result<Written> {
    write_snapshot_as(
        io,
        dir,
        &snapshot_file_name(meta.covered_seq),
        meta,
        None,
        entries,
        dedup,
    )
}

/// [`write_snapshot`] under the file name `name`, encrypted with
/// `cipher` (a fresh one: its salt is this file's) if given.
pub fn write_snapshot_as(
    io: &Io,
    dir: &Path,
    name: &str,
    meta: &SnapshotMeta,
    cipher: Option<&FileCipher>,
    entries: impl Iterator<Item = Result<(StoreKey, KeyState)>>,
    dedup: &[([u8; 32], DedupEntry)],
) -> Result<Written> {
    io.create_dir_all(dir)?;
    let path = dir.join(name);
    let tmp = path.with_extension("tmp");
    let mut out = HashingFile {
        file: io.create_truncate(&tmp)?,
        hasher: blake3::Hasher::new(),
        written: 0,
    };
    out.emit(&encode_header(meta, cipher.is_some()))?;
    if let Some(cipher) = cipher {
        out.emit(&cipher.key_block().encode())?;
    }
    let seal = ChunkSeal {
        cipher,
        covered_seq: meta.covered_seq,
    };
    let mut count = 0u64;
    let mut chunk = ChunkBuilder::new(CHUNK_ENTRIES);
    for entry in entries {
        let (store_key, delta) = match entry {
            Ok(entry) => entry,
            Err(e) => {
                drop(out);
                let _ = io.remove_file(&tmp);
                return Err(e);
            }
        };
        let record = Record { store_key, delta };
        // A chunk never passes what every reader accepts: a large record
        // closes the chunk before it, and one no chunk can hold is refused
        // (the temp file is removed; no snapshot is better than a snapshot
        // no open can read).
        let size = encoded_record_bytes(&record);
        if size > CHUNK_PAYLOAD_BYTES_MAX {
            drop(out);
            let _ = io.remove_file(&tmp);
            return Err(Error::limit(
                "chunk_payload_bytes_max",
                size,
                CHUNK_PAYLOAD_BYTES_MAX,
            ));
        }
        if chunk.count > 0 && chunk.payload.len() + size > CHUNK_PAYLOAD_BYTES_MAX {
            out.emit(&chunk.take(seal, out.written))?;
        }
        encode_record(&mut chunk.payload, &record);
        debug_assert!(chunk.payload.len() <= CHUNK_PAYLOAD_BYTES_MAX);
        chunk.count += 1;
        count += 1;
        if chunk.payload.len() >= CHUNK_PAYLOAD_BYTES_TARGET {
            out.emit(&chunk.take(seal, out.written))?;
        }
    }
    if chunk.count > 0 {
        out.emit(&chunk.take(seal, out.written))?;
    }
    let mut dedup_chunk = ChunkBuilder::new(CHUNK_DEDUP);
    for (id, entry) in dedup {
        encode_dedup_entry(&mut dedup_chunk.payload, id, entry);
        dedup_chunk.count += 1;
    }
    if dedup_chunk.count > 0 {
        out.emit(&dedup_chunk.take(seal, out.written))?;
    }
    let mut end = ChunkBuilder::new(CHUNK_END);
    end.count = u32::try_from(count).unwrap_or(u32::MAX);
    end.payload.bytes(out.hasher.finalize().as_bytes());
    // The end chunk is sealed too: its digest and count, authenticated,
    // say where an encrypted snapshot ends (no one can cut it short and
    // write a new end).
    let end = end.take(seal, out.written);
    out.file.write_all(&end)?;
    out.file.sync_all()?;
    let size_bytes = out.written + end.len() as u64;
    drop(out);
    io.rename(&tmp, &path)?;
    io.sync_dir(dir)?;
    Ok(Written { path, size_bytes })
}

pub(crate) struct ChunkBuilder {
    kind: u8,
    count: u32,
    payload: Writer,
}

impl ChunkBuilder {
    fn new(kind: u8) -> Self {
        Self {
            kind,
            count: 0,
            payload: Writer::with_capacity(CHUNK_PAYLOAD_BYTES_TARGET + 4096),
        }
    }

    /// The encoded chunk (header + payload) that starts at byte `offset`
    /// of the file, its payload encrypted if `seal` says; the builder
    /// starts over.
    pub(crate) fn take(&mut self, seal: ChunkSeal<'_>, offset: u64) -> Vec<u8> {
        let mut payload = std::mem::take(&mut self.payload).into_vec();
        if let Some(cipher) = seal.cipher {
            let len = payload.len() + crate::crypto::TAG_BYTES;
            let aad = chunk_aad(seal.covered_seq, offset, self.kind, self.count, len);
            cipher.seal(offset, &aad, &mut payload);
        }
        let mut w = Writer::with_capacity(CHUNK_HEADER_BYTES + payload.len());
        w.u8(self.kind);
        w.bytes(&[0, 0, 0]);
        w.u32(self.count);
        w.u32(payload.len() as u32);
        w.u32(crc32c::crc32c(&payload));
        debug_assert_eq!(w.len(), CHUNK_HEADER_BYTES);
        w.bytes(&payload);
        self.count = 0;
        w.into_vec()
    }
}

/// How chunks are encrypted: not at all, or with the file's cipher.
#[derive(Clone, Copy)]
pub(crate) struct ChunkSeal<'a> {
    cipher: Option<&'a FileCipher>,
    covered_seq: u64,
}

#[cfg(test)]
impl ChunkSeal<'_> {
    /// No encryption (for tests that build chunks by hand).
    pub(crate) const NONE: ChunkSeal<'static> = ChunkSeal {
        cipher: None,
        covered_seq: 0,
    };
}

/// The associated data of an encrypted chunk: the covered sequence number,
/// the chunk's offset, kind, count and stored payload length. With the
/// file's own key and the offset as nonce, a chunk moved within or between
/// snapshots fails authentication.
fn chunk_aad(covered_seq: u64, offset: u64, kind: u8, count: u32, len: usize) -> [u8; 25] {
    let mut aad = [0u8; 25];
    aad[..8].copy_from_slice(&covered_seq.to_le_bytes());
    aad[8..16].copy_from_slice(&offset.to_le_bytes());
    aad[16] = kind;
    aad[17..21].copy_from_slice(&count.to_le_bytes());
    aad[21..].copy_from_slice(&(len as u32).to_le_bytes());
    aad
}

fn encode_header(meta: &SnapshotMeta, encrypted: bool) -> Vec<u8> {
    let mut w = Writer::with_capacity(SNAPSHOT_HEADER_BYTES);
    w.bytes(&SNAPSHOT_MAGIC);
    w.u16(SNAPSHOT_FORMAT_VERSION);
    w.u16(if encrypted {
        SNAPSHOT_FLAG_ENCRYPTED
    } else {
        0
    });
    w.u64(meta.node.0);
    w.u64(meta.covered_seq);
    encode_stamp(&mut w, meta.hlc);
    w.u64(meta.created_ms);
    debug_assert_eq!(w.len(), SNAPSHOT_HEADER_CRC_OFFSET);
    let crc = crc32c::crc32c(w.as_slice());
    w.u32(crc);
    debug_assert_eq!(w.len(), SNAPSHOT_HEADER_BYTES);
    w.into_vec()
}

fn encode_dedup_entry(w: &mut Writer, id: &[u8; 32], entry: &DedupEntry) {
    let start = w.len();
    w.bytes(id);
    w.u64(entry.first_seq);
    w.u32(entry.op_count);
    encode_stamp(w, entry.stamp);
    w.u64(entry.seen_ms);
    debug_assert_eq!(w.len() - start, DEDUP_ENTRY_BYTES);
}

/// Reads and fully verifies a snapshot. Any damage is
/// [`Error::Corruption`] naming the file and offset; never a panic.
/// An encrypted snapshot needs its key in `keyring` (else
/// `Error::Key`).
pub fn read_snapshot(io: &Io, path: &Path, keyring: &Keyring) -> Result<LoadedSnapshot> {
    let bytes = io.read(path)?;
    let cipher = snapshot_cipher(&bytes, keyring)
        .map_err(|(offset, reason)| Error::corruption(path, offset as u64, reason))?
        .map_err(|key_id| keyring.missing(path, key_id))?;
    decode_snapshot(&bytes, path, cipher.as_ref())
        .map_err(|(offset, reason)| Error::corruption(path, offset as u64, reason))
}

/// The cipher of the snapshot `bytes`: `Ok(Ok(None))` in clear,
/// `Ok(Err(key id))` for a key the ring lacks, `Err` for a damaged header
/// or key block.
pub(crate) fn snapshot_cipher(
    bytes: &[u8],
    keyring: &Keyring,
) -> std::result::Result<std::result::Result<Option<FileCipher>, KeyId>, DecodeFailure> {
    let (_, flags) = decode_header_flags(bytes)?;
    if flags & SNAPSHOT_FLAG_ENCRYPTED == 0 {
        return Ok(Ok(None));
    }
    let block = bytes
        .get(SNAPSHOT_HEADER_BYTES..)
        .ok_or_else(|| (SNAPSHOT_HEADER_BYTES, "key block cut short".to_string()))
        .and_then(|b| KeyBlock::decode(b).map_err(|e| (SNAPSHOT_HEADER_BYTES, e)))?;
    Ok(match keyring.find(block.key_id) {
        Some(key) => Ok(Some(FileCipher::new(key, Domain::Snapshot, block.salt))),
        None => Err(block.key_id),
    })
}

/// True if `bytes` start with a whole snapshot header that reads and says
/// the snapshot is in clear.
pub fn header_says_clear(bytes: &[u8]) -> bool {
    decode_header_flags(bytes).is_ok_and(|(_, flags)| flags & SNAPSHOT_FLAG_ENCRYPTED == 0)
}

/// The key id of the snapshot at `path` if it is encrypted and its header
/// reads.
pub fn read_snapshot_key_id(io: &Io, path: &Path) -> Result<Option<KeyId>> {
    let file = io.open_read(path)?;
    let mut head = [0u8; SNAPSHOT_HEADER_BYTES + crate::crypto::KEY_BLOCK_BYTES];
    let read = file.read_at(0, &mut head)?;
    let bytes = head.get(..read).unwrap_or_default();
    let Ok((_, flags)) = decode_header_flags(bytes) else {
        return Ok(None);
    };
    if flags & SNAPSHOT_FLAG_ENCRYPTED == 0 {
        return Ok(None);
    }
    Ok(bytes
        .get(SNAPSHOT_HEADER_BYTES..)
        .and_then(|b| KeyBlock::decode(b).ok())
        .map(|b| b.key_id))
}

type DecodeFailure = (usize, String);

fn at(base: usize) -> impl Fn(DecodeError) -> DecodeFailure {
    move |e| match e {
        DecodeError::Truncated { offset, .. } => (base + offset, e.to_string()),
        DecodeError::Invalid { offset, .. } => (base + offset, e.to_string()),
    }
}

/// Decodes a whole snapshot; `cipher` must be the file's if its header
/// says it is encrypted (see [`snapshot_cipher`]).
pub(crate) fn decode_snapshot(
    bytes: &[u8],
    path: &Path,
    cipher: Option<&FileCipher>,
) -> std::result::Result<LoadedSnapshot, DecodeFailure> {
    let meta = decode_header(bytes)?;
    let (_, flags) = decode_header_flags(bytes)?;
    let encrypted = flags & SNAPSHOT_FLAG_ENCRYPTED != 0;
    if encrypted != cipher.is_some() {
        return Err((
            SNAPSHOT_FLAGS_OFFSET,
            "encrypted snapshot read without its key, or a key given for one in clear".into(),
        ));
    }
    let mut snapshot = LoadedSnapshot {
        path: path.to_path_buf(),
        meta,
        records: Vec::new(),
        dedup: Vec::new(),
    };
    let mut offset = SNAPSHOT_HEADER_BYTES;
    if encrypted {
        offset += crate::crypto::KEY_BLOCK_BYTES;
    }
    loop {
        let (kind, count, stored) = read_chunk(bytes, offset)?;
        let payload_offset = offset + CHUNK_HEADER_BYTES;
        let opened;
        let payload = match cipher {
            Some(cipher) => {
                let mut body = stored.to_vec();
                let aad = chunk_aad(meta.covered_seq, offset as u64, kind, count, stored.len());
                cipher
                    .open(offset as u64, &aad, &mut body)
                    .map_err(|e| (offset, format!("chunk {e}")))?;
                opened = body;
                &opened[..]
            }
            _ => stored,
        };
        match kind {
            CHUNK_ENTRIES => decode_entries(payload, count, payload_offset, &mut snapshot.records)?,
            CHUNK_DEDUP => decode_dedup(payload, count, payload_offset, &mut snapshot.dedup)?,
            CHUNK_END => {
                check_end(
                    bytes,
                    offset,
                    payload,
                    stored.len(),
                    count,
                    snapshot.records.len(),
                )?;
                return Ok(snapshot);
            }
            other => return Err((offset, format!("unknown chunk kind {other:#x}"))),
        }
        offset = payload_offset + stored.len();
    }
}

/// Reads and checks only a snapshot's header (to learn whose it is).
pub fn read_snapshot_header(io: &Io, path: &Path) -> Result<SnapshotMeta> {
    let file = io.open_read(path)?;
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    let read = file.read_at(0, &mut header)?;
    let header = header.get(..read).unwrap_or_default();
    decode_header(header).map_err(|(offset, reason)| Error::corruption(path, offset as u64, reason))
}

fn decode_header(bytes: &[u8]) -> std::result::Result<SnapshotMeta, DecodeFailure> {
    let mut r = Reader::new(bytes);
    let header = r.take(SNAPSHOT_HEADER_BYTES).map_err(at(0))?;
    let mut r = Reader::new(header);
    let checked = r.take(SNAPSHOT_HEADER_CRC_OFFSET).map_err(at(0))?;
    let stored_crc = r.u32().map_err(at(0))?;
    let mut r = Reader::new(checked);
    if r.take(8).map_err(at(0))? != SNAPSHOT_MAGIC {
        return Err((0, "not a mergekv snapshot (bad magic)".into()));
    }
    if crc32c::crc32c(checked) != stored_crc {
        return Err((
            SNAPSHOT_HEADER_CRC_OFFSET,
            "snapshot header checksum mismatch".into(),
        ));
    }
    let version = r.u16().map_err(at(0))?;
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err((
            SNAPSHOT_VERSION_OFFSET,
            format!("unsupported snapshot version {version}"),
        ));
    }
    let flags = r.u16().map_err(at(0))?;
    if flags & !SNAPSHOT_FLAG_ENCRYPTED != 0 {
        return Err((
            SNAPSHOT_FLAGS_OFFSET,
            format!("unknown snapshot flags {flags:#x}"),
        ));
    }
    let node = NodeId(r.u64().map_err(at(0))?);
    let covered_seq = r.u64().map_err(at(0))?;
    let hlc = decode_stamp(&mut r).map_err(at(0))?;
    let created_ms = r.u64().map_err(at(0))?;
    // The fields fill exactly the bytes the checksum covers.
    debug_assert_eq!(r.remaining(), 0);
    Ok(SnapshotMeta {
        node,
        covered_seq,
        hlc,
        created_ms,
    })
}

/// The header's fields and flags.
fn decode_header_flags(bytes: &[u8]) -> std::result::Result<(SnapshotMeta, u16), DecodeFailure> {
    let meta = decode_header(bytes)?;
    let flags = bytes
        .get(SNAPSHOT_FLAGS_OFFSET..SNAPSHOT_FLAGS_OFFSET + 2)
        .and_then(|f| <[u8; 2]>::try_from(f).ok())
        .map_or(0, u16::from_le_bytes);
    Ok((meta, flags))
}

/// Reads the chunk at `offset`, checking its payload checksum.
fn read_chunk(bytes: &[u8], offset: usize) -> std::result::Result<(u8, u32, &[u8]), DecodeFailure> {
    let mut r = Reader::new(bytes.get(offset..).unwrap_or(&[]));
    let kind = r.u8().map_err(at(offset))?;
    if r.take(3).map_err(at(offset))? != [0, 0, 0] {
        return Err((offset + 1, "chunk reserved bytes are not zero".into()));
    }
    let count = r.u32().map_err(at(offset))?;
    let len = r.u32().map_err(at(offset))? as usize;
    let crc = r.u32().map_err(at(offset))?;
    if len > CHUNK_PAYLOAD_BYTES_MAX + crate::crypto::TAG_BYTES {
        return Err((offset, format!("chunk length {len} exceeds limit")));
    }
    let payload = r.take(len).map_err(at(offset))?;
    if crc32c::crc32c(payload) != crc {
        return Err((offset, "chunk checksum mismatch".into()));
    }
    Ok((kind, count, payload))
}

fn decode_entries(
    payload: &[u8],
    count: u32,
    base: usize,
    out: &mut Vec<Record>,
) -> std::result::Result<(), DecodeFailure> {
    let mut r = Reader::new(payload);
    for _ in 0..count {
        out.push(decode_record(&mut r).map_err(at(base))?);
    }
    if r.remaining() != 0 {
        return Err((
            base + r.position(),
            "trailing bytes in an entries chunk".into(),
        ));
    }
    Ok(())
}

fn decode_dedup(
    payload: &[u8],
    count: u32,
    base: usize,
    out: &mut Vec<([u8; 32], DedupEntry)>,
) -> std::result::Result<(), DecodeFailure> {
    if payload.len() != count as usize * DEDUP_ENTRY_BYTES {
        return Err((base, "dedup chunk length does not match its count".into()));
    }
    let mut r = Reader::new(payload);
    for _ in 0..count {
        let mut id = [0u8; 32];
        id.copy_from_slice(r.take(32).map_err(at(base))?);
        let entry = DedupEntry {
            first_seq: r.u64().map_err(at(base))?,
            op_count: r.u32().map_err(at(base))?,
            stamp: decode_stamp(&mut r).map_err(at(base))?,
            seen_ms: r.u64().map_err(at(base))?,
        };
        out.push((id, entry));
    }
    Ok(())
}

/// Checks the end chunk: the entry count, the digest of everything before
/// it, and that nothing follows it.
fn check_end(
    bytes: &[u8],
    offset: usize,
    payload: &[u8],
    stored_len: usize,
    count: u32,
    entries: usize,
) -> std::result::Result<(), DecodeFailure> {
    if payload.len() != 32 {
        return Err((offset, "end chunk has no digest".into()));
    }
    if count as usize != entries {
        return Err((
            offset,
            format!("end chunk says {count} entries, found {entries}"),
        ));
    }
    let covered = bytes.get(..offset).ok_or_else(|| {
        (
            offset,
            "end chunk starts past the end of the file".to_string(),
        )
    })?;
    if blake3::hash(covered).as_bytes() != payload {
        return Err((offset, "snapshot digest mismatch".into()));
    }
    let end = offset + CHUNK_HEADER_BYTES + stored_len;
    if end != bytes.len() {
        return Err((end, "bytes after the end chunk".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(9)), Some(9));
        assert_eq!(parse_snapshot_file_name("snap-9.snap"), None);
    }
}
