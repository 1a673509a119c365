//! Entry points for the fuzz targets (`fuzz/`) and their stable regression
//! test (`tests/fuzz_regressions.rs`): the decoders of untrusted bytes that
//! are not public API, each behind a thin wrapper.
//!
//! A wrapper calls exactly the function the database calls on the same
//! bytes, and changes nothing about it; it only turns the crate-private
//! result into an opaque value that can be compared, printed and encoded
//! again, so a target can check `decode(encode(x)) == x` without the
//! crate's internal types becoming public. Errors become their message:
//! a target only cares that decoding returns instead of panicking.
//!
//! Decoders that are public already are fuzzed through their public API:
//! change sets (`sync::changeset`), replication frames and messages
//! (`replication::frame`, `replication::message`) and the replication
//! state machines.
//!
//! Hidden from the documentation: not a supported API, it follows the
//! internals it wraps.

use crate::clock::NodeId;
use crate::codec::{Reader, Writer};
use crate::record::{FramePayload, Record, decode_payload, decode_records_to_end, encode_payload};
use crate::snapshot::SnapshotMeta;
use crate::wal::dedup::DedupEntry;
use crate::wal::format::{self, SegmentHeader};

/// One WAL frame, decoded: the header fields the writer chooses (the
/// length and checksums follow from the payload) and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalFrame {
    first_seq: u64,
    op_count: u32,
    payload: FramePayload,
}

/// Reads the WAL frame at the start of `bytes` as recovery, segment import
/// and a replication follower do: `wal::format::read_frame` (both
/// checksums, the length limit, the flags), then `record::decode_payload`.
/// Returns the frame and its length in bytes.
pub fn decode_wal_frame(bytes: &[u8]) -> Result<(WalFrame, usize), String> {
    let (header, body) = format::read_frame(bytes).map_err(|e| format!("{e:?}"))?;
    let payload = decode_payload(body, header.op_count).map_err(|e| e.to_string())?;
    let frame = WalFrame {
        first_seq: header.first_seq,
        op_count: header.op_count,
        payload,
    };
    Ok((frame, format::FRAME_HEADER_BYTES + body.len()))
}

impl WalFrame {
    /// The frame as the WAL writes it (`encode_payload`, `encode_frame`).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let dedup = self.payload.dedup.as_ref().map(|m| (&m.id, m.seen_ms));
        let payload = encode_payload(dedup, &self.payload.records).map_err(|e| e.to_string())?;
        format::encode_frame(out, self.first_seq, self.op_count, &payload);
        Ok(())
    }
}

/// A whole WAL segment, decoded: its header and its frames' payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSegment {
    header: SegmentHeader,
    frames: Vec<FramePayload>,
}

/// Reads a whole segment as segment import does
/// (`wal::recovery::read_whole_segment`, which scans it with the recovery
/// rules: header, contiguous sequence numbers, torn tail versus damage).
pub fn decode_wal_segment(bytes: &[u8]) -> Result<WalSegment, String> {
    let header = format::decode_segment_header(bytes).map_err(|e| e.to_string())?;
    let frames =
        crate::wal::recovery::read_whole_segment(bytes, &crate::crypto::Keyring::default())
            .map_err(|e| e.to_string())??;
    Ok(WalSegment { header, frames })
}

impl WalSegment {
    /// The segment as the WAL writes it: the header, then each frame
    /// numbered from the header's first sequence number on.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = format::encode_segment_header(self.header).to_vec();
        let mut seq = self.header.first_seq;
        for payload in &self.frames {
            let op_count = u32::try_from(payload.records.len()).map_err(|e| e.to_string())?;
            let frame = WalFrame {
                first_seq: seq,
                op_count,
                payload: payload.clone(),
            };
            frame.encode_into(&mut out)?;
            seq = seq.saturating_add(u64::from(op_count));
        }
        Ok(out)
    }

    /// Frames in the segment.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

/// Records back to back, as in a frame payload, a snapshot's entries chunk
/// or a change set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records(Vec<Record>);

/// Decodes exactly `count` records filling `bytes`
/// (`record::decode_records_to_end`).
pub fn decode_records(bytes: &[u8], count: u64) -> Result<Records, String> {
    let mut r = Reader::new(bytes);
    decode_records_to_end(&mut r, count)
        .map(Records)
        .map_err(|e| e.to_string())
}

impl Records {
    /// The records, encoded back to back (`record::encode_record`).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for record in &self.0 {
            crate::record::encode_record(&mut w, record);
        }
        w.into_vec()
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A snapshot (state file), decoded and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    meta: SnapshotMeta,
    entries: Records,
    dedup: Vec<([u8; 32], DedupEntry)>,
}

/// Decodes and verifies a snapshot file's bytes as opening a database and
/// installing a leader's snapshot do (`snapshot::decode_snapshot`, the
/// body of `read_snapshot`).
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let loaded = crate::snapshot::decode_snapshot(bytes, std::path::Path::new("fuzz.snap"), None)
        .map_err(|(offset, reason)| format!("at byte {offset}: {reason}"))?;
    Ok(Snapshot {
        meta: loaded.meta,
        entries: Records(loaded.records),
        dedup: loaded.dedup,
    })
}

impl Snapshot {
    /// The key states the snapshot holds.
    pub fn entries(&self) -> &Records {
        &self.entries
    }

    /// Dedup window entries it carries.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }
}

/// An API token split into its key id and secret.
#[cfg(feature = "auth")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTokenParts {
    key_id: [u8; crate::auth::API_KEY_ID_BYTES],
    secret: [u8; crate::auth::API_SECRET_BYTES],
}

/// Parses a token as authentication does (`auth::apikey::parse_token`).
#[cfg(feature = "auth")]
pub fn parse_api_token(text: &str) -> Result<ApiTokenParts, String> {
    let parsed = crate::auth::parse_token(text).map_err(|e| e.to_string())?;
    Ok(ApiTokenParts {
        key_id: parsed.key_id,
        secret: *parsed.secret,
    })
}

#[cfg(feature = "auth")]
impl ApiTokenParts {
    /// The token text, as handed to a key's owner (`format_token`).
    pub fn format(&self) -> String {
        crate::auth::format_token(&self.key_id, &self.secret)
            .expose()
            .to_string()
    }
}

/// Parses a printed key id as `revoke` does (`auth::apikey::parse_key_id`);
/// returns it printed again.
#[cfg(feature = "auth")]
pub fn parse_api_key_id(text: &str) -> Result<String, String> {
    let key_id = crate::auth::parse_key_id(text).map_err(|e| e.to_string())?;
    Ok(crate::auth::hex_encode(&key_id))
}

/// The identity file, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaFile(crate::meta::Meta);

/// Decodes `META` as opening a database does (`meta::decode_meta`).
pub fn decode_meta(bytes: &[u8]) -> Result<MetaFile, String> {
    crate::meta::decode_meta(bytes).map(MetaFile)
}

impl MetaFile {
    /// The file as `create_meta` writes it.
    pub fn encode(&self) -> Vec<u8> {
        crate::meta::encode_meta(&self.0)
    }

    /// The node id it holds.
    pub fn node_id(&self) -> NodeId {
        self.0.node
    }
}

/// The registered-cursor file, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorsFile(std::collections::BTreeMap<String, crate::compactor::CursorInfo>);

/// Decodes `CURSORS` as opening a database does
/// (`compactor::decode_cursors`).
pub fn decode_cursors(bytes: &[u8]) -> Result<CursorsFile, String> {
    crate::compactor::decode_cursors(bytes).map(CursorsFile)
}

impl CursorsFile {
    /// The file as the database writes it (always the newest version).
    pub fn encode(&self) -> Vec<u8> {
        crate::compactor::encode_cursors(&self.0)
    }

    /// How many cursors it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Salvages `bytes` as a repair salvages a damaged snapshot file named
/// `snap-<seq>.snap` (`snapshot::salvage_bytes`); returns the entries kept
/// and the spans reported lost, or `None` if nothing can be salvaged.
pub fn salvage_snapshot(bytes: &[u8]) -> Option<(usize, usize)> {
    let path = std::path::Path::new("snap-00000000000000000042.snap");
    crate::snapshot::salvage_bytes(bytes, path, NodeId(1))
        .map(|(loaded, report)| (loaded.records.len(), report.lost.len()))
}

/// The name a run file's bytes are opened under: `run-<id>.run` with the
/// id its footer claims (a manifest names a run by the id it wrote), so
/// an input is not refused for its name alone.
fn run_file_path(bytes: &[u8]) -> std::path::PathBuf {
    let at = bytes
        .len()
        .checked_sub(crate::run::FOOTER_BYTES)
        .map(|footer| footer + crate::run::FOOTER_RUN_ID_OFFSET);
    let id = at.and_then(|at| bytes.get(at..at + 8)).map_or(1, |b| {
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        u64::from_le_bytes(word)
    });
    std::path::Path::new("/runs").join(crate::run::run_file_name(id))
}

/// One key's state as a run holds it.
pub type RunEntry = (Vec<u8>, crate::crdt::KeyState);

/// The key the fuzz harness reads encrypted inputs with (its seeds are
/// written under it): 32 bytes of 0x42.
pub fn fuzz_keyring() -> crate::crypto::Keyring {
    crate::crypto::Keyring::new(Some(fuzz_key()), Vec::new())
}

/// The fuzz harness's key (see [`fuzz_keyring`]).
pub fn fuzz_key() -> crate::crypto::EncryptionKey {
    crate::crypto::EncryptionKey::from_bytes([0x42; 32])
}

/// Opens `bytes` as a sealed object of either kind (a change set, a
/// replication batch with an empty context) under the fuzz key.
pub fn open_sealed(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use crate::crypto::sealed::{self, SealedKind};
    let ring = fuzz_keyring();
    sealed::open(&ring, SealedKind::ChangeSet, &[], bytes)
        .or_else(|_| sealed::open(&ring, SealedKind::ReplicationBatch, &[], bytes))
        .map_err(|e| e.to_string())
}

/// Reads a whole segment as segment import does, with the fuzz key: the
/// number of frames.
pub fn decode_encrypted_segment(bytes: &[u8]) -> Result<usize, String> {
    crate::wal::recovery::read_whole_segment(bytes, &fuzz_keyring())
        .map_err(|e| e.to_string())?
        .map(|frames| frames.len())
}

/// A run file opened from bytes (`run::Run::open`, on a simulated disk,
/// with a small block cache).
#[derive(Debug)]
pub struct RunFile {
    run: std::sync::Arc<crate::run::Run>,
}

/// Opens `bytes` as a run file, as the database opens a run a manifest
/// names.
pub fn open_run_file(bytes: &[u8]) -> Result<RunFile, String> {
    let disk = crate::io::SimDisk::new();
    let io = crate::io::Io::new(Some(crate::io::FaultInjector::with_disk(disk)));
    let path = run_file_path(bytes);
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    io.create_dir_all(dir).map_err(|e| e.to_string())?;
    io.write_atomic(&path, bytes).map_err(|e| e.to_string())?;
    let cache = crate::run::BlockCache::new(1 << 20);
    crate::run::Run::open(&io, &path, cache, &fuzz_keyring())
        .map(|run| RunFile { run })
        .map_err(|e| e.to_string())
}

impl RunFile {
    /// Entries the footer counts.
    pub fn entries(&self) -> u64 {
        self.run.info().entries
    }

    /// `Run::get`.
    pub fn get(&self, key: &[u8]) -> Result<Option<crate::crdt::KeyState>, String> {
        self.run.get(key).map_err(|e| e.to_string())
    }

    /// `Run::may_contain`.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.run.may_contain(key)
    }

    /// `Run::iter`, collected (up to the first error).
    pub fn scan(
        &self,
        lower: std::ops::Bound<Vec<u8>>,
        upper: std::ops::Bound<Vec<u8>>,
        reverse: bool,
    ) -> Result<Vec<RunEntry>, String> {
        self.run
            .iter(lower, upper, reverse)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// `Run::verify`.
    pub fn verify(&self) -> Result<u64, String> {
        self.run.verify().map_err(|e| e.to_string())
    }
}

/// Salvages `bytes` as a repair salvages a damaged run
/// (`run::salvage_run`): the entries kept and how many spans were lost.
pub fn salvage_run_file(bytes: &[u8]) -> (Vec<RunEntry>, usize) {
    let keyring = fuzz_keyring();
    let path = run_file_path(bytes);
    // An encrypted run under another key cannot be salvaged: the whole
    // file counts as one lost span.
    let Ok(salvage) = crate::run::salvage::salvage_bytes(bytes, &path, &keyring) else {
        return (Vec::new(), 1);
    };
    let entries = salvage
        .entries
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v))
        .collect();
    (entries, salvage.lost.len())
}

/// Writes `entries` (in key order) as run 1 of node 1 with a
/// `RunWriter`, and returns the file's bytes.
pub fn write_run_file(
    entries: &[RunEntry],
    block_bytes_target: usize,
    compression: bool,
) -> Result<Vec<u8>, String> {
    let disk = crate::io::SimDisk::new();
    let io = crate::io::Io::new(Some(crate::io::FaultInjector::with_disk(disk.clone())));
    let options = crate::run::RunWriterOptions {
        block_bytes_target,
        compression,
        key: None, // the fuzzer's run writer writes in clear
        ..crate::run::RunWriterOptions::default()
    };
    let dir = std::path::Path::new("/runs");
    let mut writer = crate::run::RunWriter::create(&io, dir, 1, NodeId(1), &options)
        .map_err(|e| e.to_string())?;
    for (key, state) in entries {
        writer.add(key, state).map_err(|e| e.to_string())?;
    }
    let info = writer.finish().map_err(|e| e.to_string())?;
    disk.read_file(&info.path)
        .ok_or_else(|| "the finished run is gone".to_string())
}

/// Imports `bytes` as a change stream into two databases on a simulated
/// disk, opened once per process: one in clear and one under the fuzz
/// key (so a stream in clear and a sealed one both reach the chunk
/// decoder). The error text, or what was applied.
pub fn import_change_stream(bytes: &[u8]) -> Result<u64, String> {
    use std::sync::OnceLock;
    static DBS: OnceLock<Option<(crate::Db, crate::Db)>> = OnceLock::new();
    let dbs = DBS.get_or_init(|| {
        let disk = crate::io::SimDisk::new();
        let options = |key: Option<crate::crypto::EncryptionKey>| crate::Options {
            worker_threads: 0,
            sync_mode: crate::SyncMode::Never,
            faults: Some(crate::io::FaultInjector::with_disk(disk.clone())),
            encryption_key: key.map(crate::crypto::KeySource::Key),
            ..crate::Options::default()
        };
        let clear = crate::Db::open_with("/fuzz/clear", options(None)).ok()?;
        let sealed = crate::Db::open_with("/fuzz/sealed", options(Some(fuzz_key()))).ok()?;
        Some((clear, sealed))
    });
    let Some((clear, sealed)) = dbs else {
        return Err("the fuzz databases did not open".into());
    };
    let one = clear.import_stream(&mut &bytes[..]);
    let two = sealed.import_stream(&mut &bytes[..]);
    match (one, two) {
        (Ok(r), _) | (_, Ok(r)) => Ok(r.applied),
        (Err(e), _) => Err(e.to_string()),
    }
}
