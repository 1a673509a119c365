//! Reading the WAL back: replay on open, and `verify`.
//!
//! Rules (see `docs/FORMAT.md`, "Recovery"):
//!
//! - Frames are read in sequence order; each must start at the sequence
//!   number the previous one ended at.
//! - A bad frame in the *last* segment with no valid frame after it, that
//!   was never written in full, is a torn tail: a write that was cut short
//!   by a crash and so never acknowledged. It is cut off (the file is
//!   truncated to the last complete frame) and reported in the
//!   `RecoveryReport`. A frame whose size landed but one of whose pages did
//!   not (whole zeroed sectors and a checksum mismatch) is such a write
//!   too. A frame that was written in full and changed since is
//!   corruption, wherever it is (but for a last frame holding zeroed
//!   sectors of its own: a changed bit there cannot be told from a hole).
//! - A bad frame followed by a valid one, or anywhere in an earlier segment,
//!   is corruption: in `RecoveryMode::Strict` open fails naming the segment
//!   and offset; in `RecoveryMode::Repair` the WAL is cut there, and what is
//!   cut is moved to `quarantine/` and reported.

use std::path::{Path, PathBuf};

use crate::clock::NodeId;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::options::RecoveryMode;

use super::format::{self, SEGMENT_HEADER_BYTES};
use super::{SegmentInfo, parse_segment_file_name};
use crate::crypto::{Domain, FileCipher, KeyId, Keyring};
use crate::error::KeyError;
use crate::record::{FramePayload, decode_payload};

/// Name of the folder where repair moves the bytes it drops.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Written (durably) before a repair changes anything, and removed only
/// once the database has acted on it: the history after the repair point
/// differs from what readers of the old one (replication followers) hold.
pub const REPAIR_MARKER_FILE: &str = "REPAIRED";

/// Records, durably and before anything is dropped, that the database in
/// `dir` is being repaired; see [`REPAIR_MARKER_FILE`].
pub fn mark_repaired(io: &Io, dir: &Path, reason: &str) -> Result<()> {
    io.write_atomic(&dir.join(REPAIR_MARKER_FILE), reason.as_bytes())
}

/// What opening a database found in its WAL.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments_replayed: usize,
    /// Segments not read because the snapshot covers them.
    pub segments_skipped: usize,
    /// The snapshot loaded, if any (a directory of the format before
    /// runs, not yet converted).
    pub snapshot: Option<SnapshotUsed>,
    /// The runs opened, if the directory has a manifest.
    pub runs: Option<RunsUsed>,
    /// Snapshots that were damaged and skipped (moved to `quarantine/`).
    pub snapshots_skipped: Vec<String>,
    /// Frames (batches) replayed.
    pub frames_replayed: u64,
    /// Operations replayed.
    pub ops_replayed: u64,
    /// A torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// What repair dropped, if repair was needed and asked for.
    pub repair: Option<RepairReport>,
    /// What repair salvaged from a damaged snapshot, if it had to.
    pub salvage: Option<SalvageReport>,
}

/// The runs an open started from: what the manifest named.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunsUsed {
    /// Every WAL frame up to this sequence number is in the runs; only the
    /// WAL after it was replayed.
    pub covered_seq: u64,
    /// Runs opened.
    pub runs: usize,
    /// Entries in them (a key in several runs counts in each).
    pub entries: u64,
    /// Bytes of them.
    pub bytes: u64,
}

/// What a repair salvaged from a damaged snapshot that nothing else could
/// rebuild the state without.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// The damaged snapshot (its bytes are kept in quarantine; a snapshot
    /// of what was salvaged replaces it).
    pub path: PathBuf,
    /// Entries (keys) kept.
    pub entries_kept: u64,
    /// Damaged spans skipped, one line each: byte range, and the key
    /// before it (every key between it and the next kept chunk whose state
    /// is not in the WAL after the snapshot is lost).
    pub lost: Vec<String>,
    /// The header was damaged: its fields came from the file name, the
    /// directory and the entries.
    pub header_damaged: bool,
    /// A dedup chunk may have been lost: a retry of a batch the snapshot
    /// covers may apply twice.
    pub dedup_lost: bool,
}

/// The snapshot recovery started from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotUsed {
    /// Its file.
    pub path: PathBuf,
    /// The sequence number it covers.
    pub covered_seq: u64,
    /// Keys (entries) in it.
    pub entries: u64,
}

/// A cut-off partial write at the end of the WAL.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TornTail {
    /// The segment that was truncated.
    pub segment: PathBuf,
    /// Where it was cut.
    pub offset_bytes: u64,
    /// Bytes removed.
    pub bytes_dropped: u64,
    /// The cut frame had a hole (its size landed, a page of it did not).
    /// Such a frame was not acknowledged, unless the disk zeroed a page of
    /// a written one: so the cut bytes are kept in quarantine, and the cut
    /// is handled as a repair (`REPAIRED`).
    pub hole: Option<PathBuf>,
}

/// What `RecoveryMode::Repair` dropped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// The damaged segment.
    pub segment: PathBuf,
    /// Where the damage starts.
    pub offset_bytes: u64,
    /// What was wrong there.
    pub reason: String,
    /// Bytes dropped from the damaged segment and later segments.
    pub bytes_dropped: u64,
    /// Checksum-valid frames that were dropped because they came after the damage.
    pub valid_frames_dropped: u64,
    /// Later segments moved aside whole.
    pub segments_dropped: Vec<PathBuf>,
    /// Where the dropped bytes were saved.
    pub quarantine: PathBuf,
}

/// The result of reading the WAL.
pub struct Replayed {
    /// The next sequence number to assign.
    pub next_seq: u64,
    /// Segments kept, oldest first; the last one is appended to next.
    pub segments: Vec<SegmentInfo>,
    /// What was found.
    pub report: RecoveryReport,
}

/// How to treat what replay finds.
#[derive(Clone, Copy, Debug)]
pub struct ReplayMode {
    /// Strict or repair.
    pub recovery: RecoveryMode,
    /// False for `verify`: change nothing on disk, report torn tails, and
    /// treat damage as an error.
    pub modify: bool,
    /// The sequence number a loaded snapshot covers: segments wholly at or
    /// below it are not read, and frames at or below it are checked but not
    /// applied.
    pub covered_seq: Option<u64>,
    /// Read and check segments the snapshot covers too (for `verify`).
    pub read_covered: bool,
    /// No segment holding frames at or after this sequence number may
    /// carry a former node id (`nodes[1..]`): META's `node_since_seq`
    /// (0: no such rule).
    pub node_since_seq: u64,
}

/// Reads every segment in `wal_dir`, calling `apply(first_seq, payload)` for
/// each valid frame in order, and cuts torn tails (or repairs) as the rules
/// in the module docs say. `nodes` are the ids the directory writes and
/// wrote under, the current one first: a segment of any other node is
/// damage.
pub fn replay(
    io: &Io,
    wal_dir: &Path,
    nodes: &[NodeId],
    keyring: &Keyring,
    mode: ReplayMode,
    apply: &mut dyn FnMut(u64, FramePayload),
) -> Result<Replayed> {
    if mode.modify {
        // A segment rewritten atomically (a new header, a key rotation)
        // goes through `<name>.tmp`: one a crash left is never needed.
        for name in io.list_dir_if_exists(wal_dir)? {
            if name.starts_with("wal-") && name.ends_with(".tmp") {
                io.remove_file(&wal_dir.join(name))?;
            }
        }
    }
    let segments = list_segments(io, wal_dir)?;
    let mut report = RecoveryReport::default();
    let mut kept: Vec<SegmentInfo> = Vec::new();
    // Without a snapshot the log must start at the beginning (or right after
    // a repair, which its segment declares); with one, where it says.
    // With a snapshot covering S, the first segment must start at or before
    // S + 1, unless a repair declared a gap there.
    let mut expected_seq = match mode.covered_seq {
        None => Some(1),
        Some(covered) => segments
            .first()
            .map(|(first, _)| (*first).min(covered.saturating_add(1))),
    };
    let mut unread = segments.as_slice();
    while let Some(((first_seq, path), later)) = unread.split_first() {
        unread = later;
        let is_last = later.is_empty();
        // A segment the snapshot wholly covers is not read.
        if let (Some(covered), Some((next_first, _))) = (mode.covered_seq, later.first())
            && *next_first <= covered.saturating_add(1)
            && !mode.read_covered
        {
            kept.push(info(*first_seq, path, io.len_bytes(path)?));
            report.segments_skipped += 1;
            expected_seq = Some(*next_first);
            continue;
        }
        let bytes = io.read(path)?;
        let mut scan = scan_segment(&bytes, *first_seq, nodes, expected_seq, keyring)
            .map_err(|key_id| keyring.missing(path, key_id))?;
        foreign_after_renewal(&bytes, nodes, mode.node_since_seq, &mut scan);
        report.segments_replayed += 1;
        for (seq, payload) in scan.frames {
            if mode.covered_seq.is_some_and(|covered| seq <= covered) {
                continue;
            }
            report.frames_replayed += 1;
            report.ops_replayed += payload.records.len() as u64;
            apply(seq, payload);
        }
        if scan.header_ok {
            expected_seq = Some(scan.next_seq);
        }
        let Some(bad) = scan.bad else {
            kept.push(info(*first_seq, path, bytes.len() as u64));
            continue;
        };
        if is_last && !bad.not_torn {
            let torn = cut_torn_tail(io, wal_dir, path, &bytes, &bad, scan.header_ok, mode.modify)?;
            if scan.header_ok {
                kept.push(info(*first_seq, path, bad.offset));
            }
            report.torn_tail = Some(torn);
            continue;
        }
        if mode.recovery == RecoveryMode::Strict || !mode.modify {
            return Err(Error::corruption(path, bad.offset, bad.reason));
        }
        let damaged = Damaged {
            path,
            bytes: &bytes,
            bad: &bad,
            header_ok: scan.header_ok,
            expected_seq: expected_seq.unwrap_or(*first_seq),
        };
        let current = nodes.first().copied().unwrap_or_default();
        let (repair, fresh) = repair(io, wal_dir, current, keyring, &damaged, later)?;
        if scan.header_ok {
            kept.push(info(*first_seq, path, bad.offset));
        }
        kept.push(fresh);
        report.repair = Some(repair);
        break;
    }
    let next_seq = match kept.last() {
        Some(fresh) if report.repair.is_some() => fresh.first_seq,
        _ => expected_seq.unwrap_or(1).max(1),
    };
    Ok(Replayed {
        next_seq,
        segments: kept,
        report,
    })
}

/// Cuts a torn tail: truncates the segment at the bad spot, or removes a
/// segment whose creation was cut short (its header is fsynced before any
/// frame, so nothing in it was ever acknowledged).
fn cut_torn_tail(
    io: &Io,
    wal_dir: &Path,
    path: &Path,
    bytes: &[u8],
    bad: &BadSpot,
    header_ok: bool,
    modify: bool,
) -> Result<TornTail> {
    let offset_bytes = if header_ok { bad.offset } else { 0 };
    debug_assert!(
        offset_bytes <= bytes.len() as u64,
        "the bad spot lies in the segment"
    );
    let mut hole = None;
    if bad.hole && modify {
        // Kept and marked first: a crash after the truncate still leaves
        // the cut bytes and the repair's follow-up.
        let db_dir = wal_dir.parent().unwrap_or(wal_dir);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        mark_repaired(
            io,
            db_dir,
            &format!("cut a frame with a hole in {name} at byte {offset_bytes}"),
        )?;
        let quarantine = db_dir.join(QUARANTINE_DIR);
        io.create_dir_all(&quarantine)?;
        let target = quarantine.join(format!("{name}.hole-from-{offset_bytes}"));
        let cut = bytes.get(offset_bytes as usize..).unwrap_or_default();
        io.write_atomic(&target, cut)?;
        hole = Some(target);
    } else if bad.hole {
        hole = Some(PathBuf::new());
    }
    if modify && header_ok {
        truncate(io, path, offset_bytes)?;
    } else if modify {
        io.remove_file(path)?;
        io.sync_dir(wal_dir)?;
    }
    let bytes_dropped = bytes.len() as u64 - offset_bytes;
    tracing::warn!(
        segment = %path.display(),
        offset_bytes,
        bytes_dropped,
        hole = bad.hole,
        reason = %bad.reason,
        cut = modify,
        "WAL torn tail cut"
    );
    Ok(TornTail {
        segment: path.to_path_buf(),
        offset_bytes,
        bytes_dropped,
        hole,
    })
}

fn info(first_seq: u64, path: &Path, size_bytes: u64) -> SegmentInfo {
    SegmentInfo {
        first_seq,
        path: path.to_path_buf(),
        size_bytes,
    }
}

/// The segments in `wal_dir`, sorted by first sequence number.
pub fn list_segments(io: &Io, wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = io
        .list_dir(wal_dir)?
        .into_iter()
        .filter_map(|name| parse_segment_file_name(&name).map(|seq| (seq, wal_dir.join(name))))
        .collect();
    out.sort();
    Ok(out)
}

/// The first unreadable place in a segment.
struct BadSpot {
    offset: u64,
    reason: String,
    /// The damage cannot be a torn write: a checksum-valid frame (with a
    /// plausible sequence number) follows it, or the bad frame was written
    /// in full and a bit of it changed since.
    not_torn: bool,
    /// The bad frame has a hole: its size landed, a page of it did not.
    hole: bool,
}

struct SegmentScan {
    header_ok: bool,
    frames: Vec<(u64, FramePayload)>,
    /// The sequence number after the last valid frame (the segment's first
    /// sequence number if it has none); meaningful only if `header_ok`.
    next_seq: u64,
    bad: Option<BadSpot>,
}

/// Reads one segment's frames up to the first bad spot. `Err(key id)` if
/// the segment is encrypted with a key `keyring` lacks: not damage, so
/// nothing may be cut for it.
fn scan_segment(
    bytes: &[u8],
    name_seq: u64,
    nodes: &[NodeId],
    expected: Option<u64>,
    keyring: &Keyring,
) -> std::result::Result<SegmentScan, KeyId> {
    let mut scan = SegmentScan {
        header_ok: false,
        frames: Vec::new(),
        next_seq: name_seq,
        bad: None,
    };
    // Only an unreadable header can be a creation cut short; a readable one
    // in the wrong place (gap, node) is damage whatever follows it.
    let header_readable = format::decode_segment_header(bytes).is_ok();
    let header_problem = match format::decode_segment_header(bytes) {
        Err(e) => Some(format!("bad segment header: {e}")),
        Ok(h) if !nodes.contains(&h.node) => Some(format!(
            "segment belongs to node {}, not to this directory ({})",
            h.node,
            nodes.first().copied().unwrap_or_default()
        )),
        Ok(h) if h.first_seq != name_seq => Some(format!(
            "header says first seq {}, name says {name_seq}",
            h.first_seq
        )),
        Ok(h) if expected.is_some_and(|e| !continues(e, &h)) => Some(format!(
            "sequence gap: segment starts at {}, expected {}",
            h.first_seq,
            expected.unwrap_or(0)
        )),
        Ok(_) => None,
    };
    if let Some(reason) = header_problem {
        scan.bad = Some(BadSpot {
            offset: 0,
            reason,
            not_torn: header_readable
                || valid_frame_after(bytes, SEGMENT_HEADER_BYTES.min(bytes.len()), 0),
            hole: false,
        });
        return Ok(scan);
    }
    let Ok(header) = format::decode_segment_header(bytes) else {
        return Ok(scan);
    };
    // The key block is written with the header, in one write fsynced
    // before any frame: cut short, it is a creation cut short too.
    let data_start = format::segment_data_start(header.flags);
    let cipher = match format::decode_segment_key_block(bytes, &header) {
        Ok(None) => None,
        Ok(Some(block)) => match keyring.find(block.key_id) {
            Some(key) => Some(FileCipher::new(key, Domain::Wal, block.salt)),
            None => return Err(block.key_id),
        },
        Err(e) => {
            scan.bad = Some(BadSpot {
                offset: 0,
                reason: format!("bad segment key block: {e}"),
                not_torn: bytes.len() >= data_start
                    || valid_frame_after(bytes, data_start.min(bytes.len()), 0),
                hole: false,
            });
            return Ok(scan);
        }
    };
    scan.header_ok = true;
    let mut offset = data_start;
    while let Some(rest) = bytes.get(offset..).filter(|rest| !rest.is_empty()) {
        let at = FrameAt {
            cipher: cipher.as_ref(),
            segment: &header,
            offset: offset as u64,
        };
        match read_valid_frame(rest, scan.next_seq, at) {
            Ok((len, seq, payload)) => {
                scan.next_seq = seq + payload.records.len() as u64;
                scan.frames.push((seq, payload));
                offset += len;
            }
            Err(reason) => {
                // A hole means the write was cut short, and so was every
                // frame after it: they were written later, and an fsync
                // that had covered them would have covered the hole too.
                let hole = frame_has_hole(bytes, offset);
                scan.bad = Some(BadSpot {
                    offset: offset as u64,
                    reason,
                    not_torn: !hole
                        && (valid_frame_after(bytes, offset + 1, scan.next_seq)
                            || frame_was_complete(bytes, offset)),
                    hole,
                });
                break;
            }
        }
    }
    Ok(scan)
}

/// Marks a segment holding frames at or after `since` under a former node
/// id as damage (from its first byte, so nothing of it is applied): after
/// this copy took a new id at `since`, only another copy (a clone writing
/// on under the id this one left) writes there under the old one.
fn foreign_after_renewal(bytes: &[u8], nodes: &[NodeId], since: u64, scan: &mut SegmentScan) {
    let Ok(header) = format::decode_segment_header(bytes) else {
        return;
    };
    let current = nodes.first().copied();
    if since == 0 || Some(header.node) == current || scan.frames.is_empty() {
        return;
    }
    let last_seq = scan.next_seq.saturating_sub(1);
    if last_seq < since {
        return;
    }
    // Not this copy's segment at all: a repair sets it aside whole.
    scan.frames.clear();
    scan.header_ok = false;
    scan.bad = Some(BadSpot {
        offset: 0,
        reason: format!(
            "segment of node {} holds frames up to seq {last_seq}, past seq {since}, where this \
             copy took node id {}: another copy's segment",
            header.node,
            current.unwrap_or_default()
        ),
        not_torn: true,
        hole: false,
    });
}

/// Where a frame lies, for decrypting it: its segment's cipher (`None` in
/// clear), the segment's header and the frame's offset.
#[derive(Clone, Copy)]
struct FrameAt<'a> {
    cipher: Option<&'a FileCipher>,
    segment: &'a format::SegmentHeader,
    offset: u64,
}

/// Every frame of a whole segment written by any node (for segment
/// exchange): the segment must be complete and undamaged.
pub(crate) fn read_whole_segment(
    bytes: &[u8],
    keyring: &Keyring,
) -> Result<std::result::Result<Vec<FramePayload>, String>> {
    let header = match format::decode_segment_header(bytes) {
        Ok(header) => header,
        Err(e) => return Ok(Err(format!("bad segment header: {e}"))),
    };
    let scan =
        scan_segment(bytes, header.first_seq, &[header.node], None, keyring).map_err(|key_id| {
            Error::Key(KeyError::Missing {
                what: "this segment".into(),
                needed: key_id,
                given: keyring.ids(),
                rotating_to: None,
            })
        })?;
    Ok(match scan.bad {
        Some(bad) => Err(format!("at byte {}: {}", bad.offset, bad.reason)),
        None => Ok(scan
            .frames
            .into_iter()
            .map(|(_, payload)| payload)
            .collect()),
    })
}

/// True if a segment with `header` may follow one that ended before `expected`.
fn continues(expected: u64, header: &format::SegmentHeader) -> bool {
    let after_repair = header.flags & format::SEGMENT_FLAG_AFTER_REPAIR != 0;
    header.first_seq == expected || (after_repair && header.first_seq > expected)
}

/// Reads and decodes the frame at the start of `bytes`, which must begin at
/// sequence number `expected`. Returns `(frame length, first seq, payload)`.
fn read_valid_frame(
    bytes: &[u8],
    expected: u64,
    at: FrameAt<'_>,
) -> Result<(usize, u64, FramePayload), String> {
    let (header, body) = format::read_frame(bytes).map_err(|e| match e {
        format::FrameError::Incomplete => "incomplete frame".to_string(),
        format::FrameError::Damaged(reason) => reason,
    })?;
    if header.first_seq != expected {
        return Err(format!(
            "frame starts at seq {}, expected {expected}",
            header.first_seq
        ));
    }
    if header
        .first_seq
        .checked_add(u64::from(header.op_count))
        .is_none()
    {
        return Err(format!(
            "frame sequence numbers overflow at seq {}",
            header.first_seq
        ));
    }
    let plain = format::open_frame_payload(at.cipher, at.segment, at.offset, &header, body)?;
    let payload =
        decode_payload(&plain, header.op_count).map_err(|e| format!("bad frame payload: {e}"))?;
    // With the overflow check above, this keeps the caller's `seq + records`
    // in range.
    debug_assert_eq!(payload.records.len() as u64, u64::from(header.op_count));
    debug_assert_eq!(body.len(), header.payload_len as usize);
    Ok((
        format::FRAME_HEADER_BYTES + body.len(),
        header.first_seq,
        payload,
    ))
}

/// True if a checksum-valid frame starting at a sequence number at or after
/// `min_seq` begins anywhere at or after `from`. Such a frame means the bad
/// bytes before it are damage, not a torn tail.
fn valid_frame_after(bytes: &[u8], from: usize, min_seq: u64) -> bool {
    (from..bytes.len())
        .filter_map(|pos| bytes.get(pos..))
        .any(|rest| {
            matches!(format::read_frame(rest), Ok((h, _)) if h.first_seq >= min_seq && h.op_count > 0)
        })
}

/// The unit a disk writes whole: a write cut short by a power loss leaves
/// whole sectors unwritten (reading as zeros past the old end of the file),
/// never part of one. 512 B, the smallest sector; a lost 4 KiB page is
/// eight of them.
const TORN_SECTOR_BYTES: usize = 512;

/// True if the damaged frame at `offset` in the segment `bytes` had been
/// written in full, so its damage is a changed bit rather than a write cut
/// short.
///
/// A torn write leaves the frame short, or leaves zeros where its header
/// should be (a file system that extended the file but never wrote the
/// block), or leaves whole zeroed sectors inside a frame whose header and
/// size landed (the pages of an unsynced write reach the disk in any
/// order). A frame written in full and damaged since shows one of these:
/// its header is valid and its whole payload is present, with no zeroed
/// sector;
/// the payload still matches the stored payload checksum (the damage is in
/// the header); it matches when the frame is taken to run to the end of the
/// file (the damage is in the length field); or correcting the stored
/// payload checksum makes the header checksum valid (the damage is in that
/// field).
fn frame_was_complete(segment: &[u8], offset: usize) -> bool {
    use format::{
        FRAME_HEADER_BYTES, FRAME_HEADER_CRC_OFFSET, FRAME_PAYLOAD_CRC_OFFSET,
        FRAME_PAYLOAD_LEN_OFFSET,
    };
    let bytes = segment.get(offset..).unwrap_or_default();
    let Some((header, body)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return false;
    };
    if header.iter().all(|&b| b == 0) {
        return false;
    }
    // Constant indices into the fixed-size header: in bounds by its type.
    let stored_len = u32::from_le_bytes([
        header[FRAME_PAYLOAD_LEN_OFFSET],
        header[FRAME_PAYLOAD_LEN_OFFSET + 1],
        header[FRAME_PAYLOAD_LEN_OFFSET + 2],
        header[FRAME_PAYLOAD_LEN_OFFSET + 3],
    ]) as usize;
    let stored_payload_crc = u32::from_le_bytes([
        header[FRAME_PAYLOAD_CRC_OFFSET],
        header[FRAME_PAYLOAD_CRC_OFFSET + 1],
        header[FRAME_PAYLOAD_CRC_OFFSET + 2],
        header[FRAME_PAYLOAD_CRC_OFFSET + 3],
    ]);
    let stored_header_crc = u32::from_le_bytes([
        header[FRAME_HEADER_CRC_OFFSET],
        header[FRAME_HEADER_CRC_OFFSET + 1],
        header[FRAME_HEADER_CRC_OFFSET + 2],
        header[FRAME_HEADER_CRC_OFFSET + 3],
    ]);
    if crc32c::crc32c(&header[..FRAME_HEADER_CRC_OFFSET]) == stored_header_crc {
        let Some(payload) = body.get(..stored_len) else {
            return false; // the file ends inside the frame
        };
        let syndrome = crc32c::crc32c(payload) ^ stored_payload_crc;
        let payload_start = offset + FRAME_HEADER_BYTES;
        // A mismatch in a frame holding whole zeroed sectors is a hole:
        // one lost page of a write cut short. A changed bit in a frame
        // that held zeroed sectors of its own cannot be told from it (a
        // single-byte explanation of the checksum would be found by
        // chance in about len * 255 / 2^32 of real holes, which blocks
        // opening after a power loss), so it is cut as torn too; the
        // recovery report says so.
        let holed =
            syndrome != 0 && has_zeroed_sector(segment, payload_start..payload_start + stored_len);
        return !holed;
    }
    let payload_matches = |len: usize| {
        body.get(..len)
            .is_some_and(|p| crc32c::crc32c(p) == stored_payload_crc)
    };
    if payload_matches(stored_len) || payload_matches(body.len()) {
        return true;
    }
    let Some(payload) = body.get(..stored_len) else {
        return false;
    };
    let mut corrected = *header;
    corrected[FRAME_PAYLOAD_CRC_OFFSET..FRAME_HEADER_CRC_OFFSET]
        .copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    crc32c::crc32c(&corrected[..FRAME_HEADER_CRC_OFFSET]) == stored_header_crc
}

/// True if the frame at `offset` has a hole: zeros from where it starts to
/// the end of its sector (its header never written), or a valid header,
/// its whole payload present, a payload checksum mismatch, and a whole
/// zeroed sector in the payload (a page of an unsynced write that never
/// reached the disk, while the file size did).
fn frame_has_hole(segment: &[u8], offset: usize) -> bool {
    let Some(bytes) = segment.get(offset..) else {
        return false;
    };
    if zeros_to_sector_end(segment, offset) {
        // The frame's header was never written: zeros from where it starts
        // to the end of its sector. The file's old end fell inside that
        // sector, and the sector's new bytes never reached the disk while
        // later ones (and the file size) did: an unsynced write, cut.
        return true;
    }
    let Ok(header) = format::decode_frame_header(bytes) else {
        return false;
    };
    let start = offset + format::FRAME_HEADER_BYTES;
    let len = header.payload_len as usize;
    let Some(payload) = segment.get(start..start + len) else {
        return false;
    };
    crc32c::crc32c(payload) != header.payload_crc && has_zeroed_sector(segment, start..start + len)
}

/// True if a whole sector (aligned to the file offset, cut at the end of
/// the file) that overlaps `range` holds only zeros: a sector the disk
/// never wrote.
fn has_zeroed_sector(segment: &[u8], range: std::ops::Range<usize>) -> bool {
    let first = range.start - range.start % TORN_SECTOR_BYTES;
    (first..range.end)
        .step_by(TORN_SECTOR_BYTES)
        .any(|start| in_zeroed_sector(segment, start))
}

/// True if the bytes from `at` to the end of its sector (or of the file)
/// are all zeros, and there is at least one.
fn zeros_to_sector_end(segment: &[u8], at: usize) -> bool {
    let end = (at - at % TORN_SECTOR_BYTES + TORN_SECTOR_BYTES).min(segment.len());
    segment
        .get(at..end)
        .is_some_and(|rest| !rest.is_empty() && rest.iter().all(|&b| b == 0))
}

/// True if the sector holding byte `at` of the segment is all zeros.
fn in_zeroed_sector(segment: &[u8], at: usize) -> bool {
    let start = at - at % TORN_SECTOR_BYTES;
    segment
        .get(start..(start + TORN_SECTOR_BYTES).min(segment.len()))
        .is_some_and(|sector| !sector.is_empty() && sector.iter().all(|&b| b == 0))
}

fn truncate(io: &Io, path: &Path, len_bytes: u64) -> Result<()> {
    let mut file = io.open_append(path)?;
    file.truncate(len_bytes)?;
    file.sync_all()
}

/// The damaged segment handed to [`repair`].
struct Damaged<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    bad: &'a BadSpot,
    header_ok: bool,
    /// The sequence number the damaged frame was to start at.
    expected_seq: u64,
}

/// Cuts the WAL at a damaged spot. Order matters for a crash halfway:
///
/// 1. create the next segment, flagged `AFTER_REPAIR`, at a sequence number
///    above anything the dropped bytes can hold (so a crash after this step
///    still leaves the gap declared and nothing is reused);
/// 2. save the dropped bytes in quarantine;
/// 3. truncate (or remove) the damaged segment and move later segments into
///    quarantine.
///
/// A crash before step 3 leaves the damage in place, so the next open finds
/// it again and repairs again.
fn repair(
    io: &Io,
    wal_dir: &Path,
    node: NodeId,
    keyring: &Keyring,
    damaged: &Damaged<'_>,
    later: &[(u64, PathBuf)],
) -> Result<(RepairReport, SegmentInfo)> {
    let db_dir = wal_dir.parent().unwrap_or(wal_dir);
    mark_repaired(io, db_dir, &damaged.bad.reason)?;
    let offset = damaged.bad.offset as usize;
    let tail = damaged.bytes.get(offset..).unwrap_or_default();
    let later_bytes: Vec<Vec<u8>> = later
        .iter()
        .map(|(_, p)| io.read(p))
        .collect::<Result<_>>()?;
    // The damaged frame held at most FRAME_OPS_MAX operations; valid frames
    // and segments after it may hold more.
    let mut next_seq = damaged.expected_seq.saturating_add(format::FRAME_OPS_MAX);
    let mut valid_frames_dropped = count_valid_frames(tail, &mut next_seq);
    for ((first_seq, _), bytes) in later.iter().zip(&later_bytes) {
        next_seq = next_seq.max(first_seq.saturating_add(1));
        valid_frames_dropped += count_valid_frames(bytes, &mut next_seq);
    }
    let fresh = create_segment(
        io,
        wal_dir,
        node,
        keyring,
        next_seq,
        format::SEGMENT_FLAG_AFTER_REPAIR,
    )?;
    let quarantine = wal_dir.parent().unwrap_or(wal_dir).join(QUARANTINE_DIR);
    io.create_dir_all(&quarantine)?;
    let name = damaged
        .path
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    io.write_atomic(&quarantine.join(format!("{name}.from-{offset}")), tail)?;
    if damaged.header_ok {
        truncate(io, damaged.path, damaged.bad.offset)?;
    } else {
        io.remove_file(damaged.path)?;
    }
    let mut segments_dropped = Vec::new();
    for (_, later_path) in later {
        let target = quarantine.join(later_path.file_name().unwrap_or_default());
        io.rename(later_path, &target)?;
        segments_dropped.push(later_path.clone());
    }
    io.sync_dir(wal_dir)?;
    io.sync_dir(&quarantine)?;
    let bytes_dropped = tail.len() as u64 + later_bytes.iter().map(|b| b.len() as u64).sum::<u64>();
    tracing::warn!(
        segment = %damaged.path.display(),
        offset_bytes = damaged.bad.offset,
        reason = %damaged.bad.reason,
        bytes_dropped,
        valid_frames_dropped,
        segments_dropped = segments_dropped.len(),
        quarantine = %quarantine.display(),
        "WAL repaired: damaged frames and everything after them set aside"
    );
    let report = RepairReport {
        segment: damaged.path.to_path_buf(),
        offset_bytes: damaged.bad.offset,
        reason: damaged.bad.reason.clone(),
        bytes_dropped,
        valid_frames_dropped,
        segments_dropped,
        quarantine,
    };
    Ok((report, fresh))
}

/// Creates the segment a repair continues in; see [`super::create_segment`].
fn create_segment(
    io: &Io,
    wal_dir: &Path,
    node: NodeId,
    keyring: &Keyring,
    first_seq: u64,
    flags: u16,
) -> Result<SegmentInfo> {
    let writer = super::create_segment(io, wal_dir, node, keyring, first_seq, flags)?;
    Ok(info(
        first_seq,
        &wal_dir.join(super::segment_file_name(first_seq)),
        writer.size_bytes,
    ))
}

/// Counts checksum-valid frames in dropped bytes, raising `next_seq` past
/// their sequence numbers so they are never reused.
fn count_valid_frames(bytes: &[u8], next_seq: &mut u64) -> u64 {
    let mut count = 0;
    let mut pos = 0;
    while let Some(rest) = bytes.get(pos..).filter(|rest| !rest.is_empty()) {
        match format::read_frame(rest) {
            Ok((h, body)) if h.op_count > 0 => {
                count += 1;
                let after = h.first_seq.saturating_add(u64::from(h.op_count));
                *next_seq = (*next_seq).max(after);
                pos += format::FRAME_HEADER_BYTES + body.len();
            }
            _ => pos += 1,
        }
    }
    count
}
