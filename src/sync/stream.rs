//! Change streams: a change set written to any `std::io::Write` and read
//! from any `std::io::Read` in bounded memory, as a sequence of
//! self-verifying chunks (layout in `docs/FORMAT.md`, "Change stream").
//!
//! The exporter walks the state once and closes a chunk once its records
//! reach [`STREAM_CHUNK_BYTES_TARGET`] (a record larger than that has a
//! chunk of its own), so it holds one chunk at a time. The importer reads,
//! checks and applies one chunk at a time: each chunk is one WAL frame,
//! committed with a marker of its progress (in the copy's own `_local`
//! keyspace) in the same frame, so an interrupted import, run again,
//! skips the chunks it applied and goes on from the first it had not. The
//! exporter's complete cursor is in the last chunk, and is taken only once
//! every chunk before it has been applied.
//!
//! Each chunk carries a chained blake3 hash (of the one before it, its
//! header and its payload): a chunk dropped, repeated, reordered or cut is
//! found. A copy with a key seals every chunk's payload under it (nonce:
//! the chunk's index; associated data: the stream header, the chunk
//! header and whether it is the last), so only a copy with the key reads
//! it, and no one without it can forge one.

use std::io::{Read, Write};

use crate::clock::NodeId;
use crate::codec::{Reader, Writer};
use crate::crdt::{KeyState, Register};
use crate::crypto::{
    Domain, FileCipher, KEY_BLOCK_BYTES, KeyBlock, Keyring, TAG_BYTES, fresh_salt,
};
use crate::engine::{CommitId, Engine};
use crate::error::{Error, KeyError, Result};
use crate::record::{Record, encode_record, encoded_record_bytes, store_key};
use crate::state::StateView;

use super::{ImportReport, LOCAL_KEYSPACE, SyncCursor, is_local};

/// First eight bytes of a change stream.
pub const STREAM_MAGIC: [u8; 8] = *b"MKVCSTR\x01";
/// Version of the layout.
pub const STREAM_FORMAT_VERSION: u16 = 1;
/// Stream header flag: every chunk's payload is sealed (a key block
/// follows the header).
pub const STREAM_FLAG_SEALED: u16 = 1;
/// Bytes of the stream header before its key block: magic, version,
/// flags, origin node, stream id (16), CRC-32C.
pub const STREAM_HEADER_BYTES: usize = 8 + 2 + 2 + 8 + 16 + 4;
/// Bytes of a chunk's header: kind, 3 reserved, index, count, length.
pub const CHUNK_HEADER_BYTES: usize = 16;
/// Bytes of a chunk's chained hash.
pub const CHUNK_HASH_BYTES: usize = 32;
/// A chunk is closed once its records reach this many bytes.
pub const STREAM_CHUNK_BYTES_TARGET: usize = 1024 * 1024;
/// The largest chunk payload a reader takes: what an exporter can write
/// (1 MiB of records, or one record of the largest a batch can hold: half
/// a frame), plus a tag. An import holds a chunk about four times over
/// while it applies it (the payload, the records, the WAL frame, the
/// memtable), so at most about 0.5 GiB for a forged chunk of this size
/// and about 4 MiB for the chunks an exporter writes for ordinary values.
pub const STREAM_CHUNK_BYTES_MAX: usize =
    crate::record::FRAME_PAYLOAD_BYTES_MAX / 2 + STREAM_CHUNK_BYTES_TARGET + TAG_BYTES;

const KIND_RECORDS: u8 = 1;
const KIND_END: u8 = 2;

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamReport {
    /// Key records written.
    pub records: u64,
    /// Chunks written (the end chunk included).
    pub chunks: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes every change newer than `cursor` in `view` to `out` as a change
/// stream from `origin`, ending with `complete` (the exporter's complete
/// cursor). Sealed under the ring's current key, if it has one.
pub(crate) fn export(
    view: &StateView,
    origin: NodeId,
    cursor: &SyncCursor,
    complete: &SyncCursor,
    keyring: &Keyring,
    out: &mut dyn Write,
) -> Result<StreamReport> {
    export_where(
        view,
        origin,
        &|stamp| cursor.is_new(stamp),
        complete,
        keyring,
        out,
    )
}

/// [`export`] of the parts whose stamp `select` accepts (a bucket
/// publishes only its own writes this way).
pub(crate) fn export_where(
    view: &StateView,
    origin: NodeId,
    select: &dyn Fn(crate::clock::Stamp) -> bool,
    complete: &SyncCursor,
    keyring: &Keyring,
    out: &mut dyn Write,
) -> Result<StreamReport> {
    let mut id = [0u8; 16];
    id.copy_from_slice(&fresh_salt()?[..16]);
    let cipher = match keyring.current() {
        Some(key) => Some(FileCipher::new(key, Domain::Sealed, fresh_salt()?)),
        None => None,
    };
    let header = encode_header(origin, id, cipher.as_ref());
    let mut w = StreamWriter {
        out,
        header: header.clone(),
        cipher,
        chain: chain_start(&header),
        index: 0,
        report: StreamReport::default(),
    };
    w.write_raw(&header)?;
    let mut chunk = Vec::with_capacity(STREAM_CHUNK_BYTES_TARGET + 4096);
    let mut count = 0u32;
    for entry in view.iter_uncached() {
        let (key, state) = entry?;
        if is_local(&key) {
            continue;
        }
        let Some(delta) = super::parts_where(&state, select) else {
            continue;
        };
        let record = Record {
            store_key: key,
            delta,
        };
        if count > 0 && chunk.len() + encoded_record_bytes(&record) > STREAM_CHUNK_BYTES_TARGET {
            w.chunk(KIND_RECORDS, count, std::mem::take(&mut chunk))?;
            count = 0;
        }
        let mut enc = Writer::with_capacity(encoded_record_bytes(&record));
        encode_record(&mut enc, &record);
        chunk.extend_from_slice(enc.as_slice());
        count += 1;
        w.report.records += 1;
    }
    if count > 0 {
        w.chunk(KIND_RECORDS, count, chunk)?;
    }
    let mut end = Writer::with_capacity(64);
    end.u64(w.report.records);
    end.u32(complete.seen.len() as u32);
    for (node, stamp) in &complete.seen {
        end.u64(node.0);
        crate::record::encode_stamp(&mut end, *stamp);
    }
    let chunks_before_end = w.index;
    w.chunk(KIND_END, chunks_before_end, end.into_vec())?;
    w.out
        .flush()
        .map_err(|e| stream_io("writing a change stream", e))?;
    Ok(w.report)
}

struct StreamWriter<'a> {
    out: &'a mut dyn Write,
    header: Vec<u8>,
    cipher: Option<FileCipher>,
    chain: [u8; 32],
    index: u32,
    report: StreamReport,
}

impl StreamWriter<'_> {
    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| stream_io("writing a change stream", e))?;
        self.report.bytes += bytes.len() as u64;
        Ok(())
    }

    fn chunk(&mut self, kind: u8, count: u32, mut payload: Vec<u8>) -> Result<()> {
        let stored_len = payload.len() + if self.cipher.is_some() { TAG_BYTES } else { 0 };
        let head = chunk_header(kind, self.index, count, stored_len);
        if let Some(cipher) = &self.cipher {
            let aad = chunk_aad(&self.header, &head, kind == KIND_END);
            cipher.seal(u64::from(self.index), &aad, &mut payload);
        }
        self.chain = chain_next(&self.chain, &head, &payload);
        let chain = self.chain;
        self.write_raw(&head)?;
        self.write_raw(&payload)?;
        self.write_raw(&chain)?;
        self.index += 1;
        self.report.chunks += 1;
        Ok(())
    }
}

/// Reads a change stream from `input` and applies it chunk by chunk (see
/// the module docs); a chunk that fails any check stops the import with
/// `Error::Decode` and nothing of it is applied. Chunks a previous,
/// interrupted import of the same stream applied are checked and skipped.
pub(crate) fn import(engine: &Engine, input: &mut dyn Read) -> Result<ImportReport> {
    import_until(engine, input, None, None)
}

/// What a caller that knows where a stream comes from holds it to: its
/// origin, and the cursor its end chunk may claim (taken instead of the
/// stream's own: a bucket's head says what an object covers).
pub(crate) struct Expected<'a> {
    /// The origin the stream's header must name.
    pub origin: NodeId,
    /// The cursor merged at the end.
    pub cursor: &'a SyncCursor,
}

/// [`import`] of only the parts stamped at or before `until`, if given (a
/// point-in-time restore); the exporter's cursor is then taken no further
/// than `until` either.
pub(crate) fn import_until(
    engine: &Engine,
    input: &mut dyn Read,
    until: Option<crate::clock::Stamp>,
    expected: Option<Expected<'_>>,
) -> Result<ImportReport> {
    let keyring = engine.wal().keyring().read().clone();
    let mut header = vec![0u8; STREAM_HEADER_BYTES];
    read_exact(input, &mut header, "the stream header")?;
    let parsed = parse_header(&header).map_err(decode)?;
    let cipher = if parsed.sealed {
        let mut block = vec![0u8; KEY_BLOCK_BYTES];
        read_exact(input, &mut block, "the key block")?;
        header.extend_from_slice(&block);
        let block = KeyBlock::decode(&block).map_err(decode)?;
        let Some(key) = keyring.find(block.key_id) else {
            return Err(Error::Key(KeyError::Missing {
                what: "this change stream".into(),
                needed: block.key_id,
                given: keyring.ids(),
                rotating_to: None,
            }));
        };
        Some(FileCipher::new(key, Domain::Sealed, block.salt))
    } else if keyring.current().is_some() {
        // Anyone can write a stream in clear: an encrypted copy takes only
        // what its keys authenticate.
        return Err(decode(
            "a change stream in clear, refused by an encrypted database".into(),
        ));
    } else {
        None
    };
    if let Some(e) = &expected
        && e.origin != parsed.origin
    {
        return Err(decode(format!(
            "a stream from {}, where {} was expected",
            parsed.origin, e.origin
        )));
    }
    if parsed.origin == engine.node() {
        // Only another directory writing under this copy's id (a clone)
        // exports under it: refused before any chunk lands.
        return Err(Error::IdentityConflict {
            node: engine.node(),
            detail: "a change stream exported under this copy's own node id: another copy of \
                     this directory writes under it (give one a new id: mergekv reidentify)"
                .into(),
        });
    }
    let done = progress(engine)?.filter(|p| p.id == parsed.id);
    let mut chain = chain_start(&header);
    let mut report = ImportReport::default();
    let mut total_records = 0u64;
    for index in 0u32.. {
        let mut head = [0u8; CHUNK_HEADER_BYTES];
        read_exact(input, &mut head, &format!("chunk {index}'s header"))?;
        let (kind, got_index, count, len) = parse_chunk_header(&head).map_err(decode)?;
        if got_index != index {
            return Err(decode(format!(
                "chunk {got_index} where chunk {index} belongs"
            )));
        }
        if len > STREAM_CHUNK_BYTES_MAX {
            return Err(decode(format!(
                "chunk {index} of {len} bytes, more than {STREAM_CHUNK_BYTES_MAX}"
            )));
        }
        // Grown as the bytes arrive, never allocated from the length alone:
        // a stream that claims a large chunk and sends little costs little.
        let mut payload = Vec::with_capacity(len.min(STREAM_CHUNK_BYTES_TARGET + TAG_BYTES));
        let read = input
            .take(len as u64)
            .read_to_end(&mut payload)
            .map_err(|e| stream_io(&format!("reading chunk {index} of a change stream"), e))?;
        if read != len {
            return Err(decode(format!(
                "the stream ends inside chunk {index} (cut short)"
            )));
        }
        let mut stored_chain = [0u8; CHUNK_HASH_BYTES];
        read_exact(input, &mut stored_chain, &format!("chunk {index}'s hash"))?;
        chain = chain_next(&chain, &head, &payload);
        if chain != stored_chain {
            return Err(decode(format!(
                "chunk {index}: hash mismatch (damaged, dropped, repeated or reordered)"
            )));
        }
        if let Some(cipher) = &cipher {
            let aad = chunk_aad(&header, &head, kind == KIND_END);
            cipher
                .open(u64::from(index), &aad, &mut payload)
                .map_err(|e| decode(format!("chunk {index}: {e}")))?;
        }
        match kind {
            KIND_RECORDS => {
                // The count is checked against the bytes before anything is
                // allocated for it (anyone can recompute the chain).
                let mut r = Reader::new(&payload);
                let mut records = crate::record::decode_records_to_end(&mut r, u64::from(count))
                    .map_err(|e| decode(format!("chunk {index}: {e}")))?;
                drop(payload);
                total_records += u64::from(count);
                if let Some(done) = done.filter(|d| index < d.next) {
                    // Applied by an interrupted import of this stream: the
                    // chain (over every chunk so far) says it is the same.
                    if index + 1 == done.next && chain != done.chain {
                        super::exchange::forget_local(engine, PROGRESS_KEY)?;
                        return Err(decode(
                            "the stream is not the one whose import was interrupted (its id, \
                             other content): that progress is reset; import it again"
                                .into(),
                        ));
                    }
                    report.duplicates += u64::from(count);
                    continue;
                }
                records.retain(|r| !is_local(&r.store_key));
                if let Some(until) = until {
                    records = records
                        .into_iter()
                        .filter_map(|r| {
                            let delta = super::parts_where(&r.delta, &|s| s <= until)?;
                            Some(Record { delta, ..r })
                        })
                        .collect();
                }
                engine.receive_stamps(&records)?;
                let tail = local_record(
                    engine,
                    PROGRESS_KEY,
                    Progress {
                        id: parsed.id,
                        next: index + 1,
                        chain,
                    }
                    .encode(),
                );
                let counts = engine.commit_records(records, chunk_id(&chain), Some(tail))?;
                // The progress record is in the counts (as applied, or as a
                // duplicate when the whole frame was one): bookkeeping, not
                // a change of the stream's.
                let mut counts = counts;
                if counts.applied > 0 {
                    counts.applied -= 1;
                } else if counts.duplicates > 0 {
                    counts.duplicates -= 1;
                } else {
                    counts.stale = counts.stale.saturating_sub(1);
                }
                report.applied += counts.applied;
                report.stale += counts.stale;
                report.duplicates += counts.duplicates;
            }
            KIND_END => {
                let mut r = Reader::new(&payload);
                let records = r.u64().map_err(|e| decode(e.to_string()))?;
                if count != index || records != total_records {
                    return Err(decode(format!(
                        "the end says {count} chunks and {records} records, the stream held \
                         {index} and {total_records}"
                    )));
                }
                let entries = r.u32().map_err(|e| decode(e.to_string()))? as usize;
                if entries > super::changeset::CHANGESET_CURSOR_ENTRIES_MAX {
                    return Err(decode("too many cursor entries".into()));
                }
                let mut complete = SyncCursor::new();
                for _ in 0..entries {
                    let node = NodeId(r.u64().map_err(|e| decode(e.to_string()))?);
                    let stamp =
                        crate::record::decode_stamp(&mut r).map_err(|e| decode(e.to_string()))?;
                    let stamp = match until {
                        Some(until) if stamp > until => crate::clock::Stamp { node, ..until },
                        _ => stamp,
                    };
                    complete.seen.insert(node, stamp);
                }
                if r.remaining() != 0 {
                    return Err(decode("bytes after the end chunk's cursor".into()));
                }
                if let Some(e) = &expected {
                    complete = e.cursor.clone();
                    if let Some(until) = until {
                        for stamp in complete.seen.values_mut() {
                            if *stamp > until {
                                *stamp = crate::clock::Stamp {
                                    node: stamp.node,
                                    ..until
                                };
                            }
                        }
                    }
                }
                super::exchange::merge_complete_cursor(engine, &complete)?;
                if progress(engine)?.is_some_and(|p| p.id == parsed.id) {
                    super::exchange::forget_local(engine, PROGRESS_KEY)?;
                }
                return Ok(report);
            }
            other => return Err(decode(format!("chunk {index}: unknown kind {other}"))),
        }
    }
    Err(decode("more chunks than an index counts".into()))
}

struct Header {
    origin: NodeId,
    id: [u8; 16],
    sealed: bool,
}

fn encode_header(origin: NodeId, id: [u8; 16], cipher: Option<&FileCipher>) -> Vec<u8> {
    let mut w = Writer::with_capacity(STREAM_HEADER_BYTES + KEY_BLOCK_BYTES);
    w.bytes(&STREAM_MAGIC);
    w.u16(STREAM_FORMAT_VERSION);
    w.u16(if cipher.is_some() {
        STREAM_FLAG_SEALED
    } else {
        0
    });
    w.u64(origin.0);
    w.bytes(&id);
    let crc = crc32c::crc32c(w.as_slice());
    w.u32(crc);
    if let Some(cipher) = cipher {
        w.bytes(&cipher.key_block().encode());
    }
    w.into_vec()
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let mut r = Reader::new(bytes);
    let err = |e: crate::codec::DecodeError| e.to_string();
    if r.take(8).map_err(err)? != STREAM_MAGIC {
        return Err("not a mergekv change stream (bad magic)".into());
    }
    let version = r.u16().map_err(err)?;
    let flags = r.u16().map_err(err)?;
    let origin = NodeId(r.u64().map_err(err)?);
    let mut id = [0u8; 16];
    id.copy_from_slice(r.take(16).map_err(err)?);
    let covered = r.position();
    let crc = r.u32().map_err(err)?;
    if crc32c::crc32c(bytes.get(..covered).unwrap_or_default()) != crc {
        return Err("stream header checksum mismatch".into());
    }
    if version != STREAM_FORMAT_VERSION {
        return Err(format!("unsupported change stream version {version}"));
    }
    if flags & !STREAM_FLAG_SEALED != 0 {
        return Err(format!("unknown change stream flags {flags:#x}"));
    }
    Ok(Header {
        origin,
        id,
        sealed: flags & STREAM_FLAG_SEALED != 0,
    })
}

fn chunk_header(kind: u8, index: u32, count: u32, len: usize) -> [u8; CHUNK_HEADER_BYTES] {
    let mut h = [0u8; CHUNK_HEADER_BYTES];
    h[0] = kind;
    h[4..8].copy_from_slice(&index.to_le_bytes());
    h[8..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

fn parse_chunk_header(
    h: &[u8; CHUNK_HEADER_BYTES],
) -> std::result::Result<(u8, u32, u32, usize), String> {
    let mut r = Reader::new(h);
    let err = |e: crate::codec::DecodeError| e.to_string();
    let kind = r.u8().map_err(err)?;
    if r.take(3).map_err(err)? != [0, 0, 0] {
        return Err("chunk reserved bytes are not zero".into());
    }
    let index = r.u32().map_err(err)?;
    let count = r.u32().map_err(err)?;
    let len = r.u32().map_err(err)? as usize;
    Ok((kind, index, count, len))
}

fn chain_start(header: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("mergekv change stream chain v1")
        .update(header)
        .finalize()
        .as_bytes()
}

fn chain_next(prev: &[u8; 32], head: &[u8; CHUNK_HEADER_BYTES], payload: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new()
        .update(prev)
        .update(head)
        .update(payload)
        .finalize()
        .as_bytes()
}

fn chunk_aad(header: &[u8], head: &[u8; CHUNK_HEADER_BYTES], last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + CHUNK_HEADER_BYTES + 1);
    aad.extend_from_slice(header);
    aad.extend_from_slice(head);
    aad.push(u8::from(last));
    aad
}

/// The `_local` key holding the progress of the last interrupted import:
/// one slot, so abandoned imports leave at most one record behind.
const PROGRESS_KEY: &str = "import-stream";

/// How far an import of one stream got: its id, the chunks applied, and
/// the chain hash after the last of them (which commits to all of them).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Progress {
    id: [u8; 16],
    next: u32,
    chain: [u8; 32],
}

impl Progress {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(52);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.next.to_le_bytes());
        out.extend_from_slice(&self.chain);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Progress> {
        let mut r = Reader::new(bytes);
        let mut id = [0u8; 16];
        id.copy_from_slice(r.take(16).ok()?);
        let next = r.u32().ok()?;
        let mut chain = [0u8; 32];
        chain.copy_from_slice(r.take(32).ok()?);
        (r.remaining() == 0).then_some(Progress { id, next, chain })
    }
}

/// The progress slot, if it holds one.
fn progress(engine: &Engine) -> Result<Option<Progress>> {
    let store_key = store_key(LOCAL_KEYSPACE, PROGRESS_KEY.as_bytes());
    let value = engine
        .state()
        .get(&store_key)?
        .and_then(|s| s.register.and_then(|r| r.value));
    Ok(value.and_then(|v| Progress::decode(&v)))
}

/// A `_local` record, stamped now, to commit in the same frame as a chunk.
fn local_record(engine: &Engine, key: &str, value: Vec<u8>) -> Record {
    let stamp = engine.hlc().tick(engine.now_ms());
    Record {
        store_key: store_key(LOCAL_KEYSPACE, key.as_bytes()),
        delta: KeyState {
            register: Some(Register {
                stamp,
                value: Some(std::sync::Arc::from(value)),
                floor: Vec::new(),
            }),
            counter: None,
        },
    }
}

/// A chunk's commit id: from the chain hash after it, so it names the
/// chunk's content and everything before it, not just its place.
fn chunk_id(chain: &[u8; 32]) -> CommitId {
    let mut id = blake3::Hasher::new_derive_key("mergekv change stream chunk v2");
    id.update(chain);
    CommitId(*id.finalize().as_bytes())
}

fn read_exact(input: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<()> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            decode(format!("the stream ends inside {what} (cut short)"))
        } else {
            stream_io(&format!("reading {what} of a change stream"), e)
        }
    })
}

fn decode(reason: String) -> Error {
    Error::Decode {
        what: "change stream",
        reason,
    }
}

fn stream_io(what: &str, e: std::io::Error) -> Error {
    Error::Stream {
        what: what.to_string(),
        source: std::sync::Arc::new(e),
    }
}
