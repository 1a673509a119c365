//! Reading the WAL back: replay on open, and `verify`.
//!
//! Rules (see `docs/FORMAT.md`, "Recovery"):
//!
//! - Frames are read in sequence order; each must start at the sequence
//!   number the previous one ended at.
//! - A bad frame in the *last* segment with no valid frame after it is a torn
//!   tail: a write that was cut short by a crash and so never acknowledged.
//!   It is cut off (the file is truncated to the last complete frame).
//! - A bad frame followed by a valid one, or anywhere in an earlier segment,
//!   is corruption: in `RecoveryMode::Strict` open fails naming the segment
//!   and offset; in `RecoveryMode::Repair` the WAL is cut there, and what is
//!   cut is moved to `quarantine/` and reported.

use std::path::{Path, PathBuf};

use crate::clock::NodeId;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::options::RecoveryMode;

use super::format::{self, FramePayload, SEGMENT_HEADER_BYTES};
use super::{SegmentInfo, parse_segment_file_name};

/// Name of the folder where repair moves the bytes it drops.
pub const QUARANTINE_DIR: &str = "quarantine";

/// What opening a database found in its WAL.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments_replayed: usize,
    /// Frames (batches) replayed.
    pub frames_replayed: u64,
    /// Operations replayed.
    pub ops_replayed: u64,
    /// A torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// What repair dropped, if repair was needed and asked for.
    pub repair: Option<RepairReport>,
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
    /// Segments kept, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// What was found.
    pub report: RecoveryReport,
}

/// Reads every segment in `wal_dir`, calling `apply(first_seq, payload)` for
/// each valid frame in order, and cuts torn tails (or repairs) as the rules
/// say. With `modify = false` nothing on disk is changed (for `verify`):
/// torn tails are reported but not cut, and damage is always an error.
pub fn replay(
    io: &Io,
    wal_dir: &Path,
    node: NodeId,
    mode: RecoveryMode,
    modify: bool,
    apply: &mut dyn FnMut(u64, FramePayload),
) -> Result<Replayed> {
    let mut segments = list_segments(io, wal_dir)?;
    let mut report = RecoveryReport::default();
    let mut kept: Vec<SegmentInfo> = Vec::new();
    let mut expected_seq: Option<u64> = None;
    let mut seq_high_water = 0u64;
    let mut index = 0;
    while index < segments.len() {
        let (first_seq, path) = segments[index].clone();
        let is_last = index + 1 == segments.len();
        let bytes = io.read(&path)?;
        let scan = scan_segment(&bytes, first_seq, node, expected_seq);
        report.segments_replayed += 1;
        for (seq, payload) in scan.frames {
            report.frames_replayed += 1;
            report.ops_replayed += payload.records.len() as u64;
            apply(seq, payload);
        }
        if let Some(next) = scan.next_seq {
            expected_seq = Some(next);
        } else if expected_seq.is_none() && scan.header_ok {
            expected_seq = Some(first_seq);
        }
        let Some(bad) = scan.bad else {
            kept.push(info(first_seq, &path, bytes.len() as u64));
            index += 1;
            continue;
        };
        let torn = is_last && !bad.not_torn;
        if torn && !scan.header_ok {
            // A segment whose creation was cut short: nothing in it was ever
            // acknowledged (the header is fsynced before any frame).
            if modify {
                io.remove_file(&path)?;
                io.sync_dir(wal_dir)?;
            }
            report.torn_tail = Some(TornTail {
                segment: path.clone(),
                offset_bytes: 0,
                bytes_dropped: bytes.len() as u64,
            });
            index += 1;
            continue;
        }
        if torn {
            if modify {
                truncate(io, &path, bad.offset)?;
            }
            report.torn_tail = Some(TornTail {
                segment: path.clone(),
                offset_bytes: bad.offset,
                bytes_dropped: bytes.len() as u64 - bad.offset,
            });
            kept.push(info(first_seq, &path, bad.offset));
            index += 1;
            continue;
        }
        if mode == RecoveryMode::Strict || !modify {
            return Err(Error::corruption(&path, bad.offset, bad.reason));
        }
        let later: Vec<(u64, PathBuf)> = segments.split_off(index + 1);
        let repair = repair(
            io,
            wal_dir,
            &path,
            &bytes,
            &bad,
            &later,
            &mut seq_high_water,
        )?;
        if bad.offset >= SEGMENT_HEADER_BYTES as u64 && scan.header_ok {
            kept.push(info(first_seq, &path, bad.offset));
        }
        report.repair = Some(repair);
        break;
    }
    let next_seq = expected_seq.unwrap_or(1).max(seq_high_water + 1).max(1);
    Ok(Replayed {
        next_seq,
        segments: kept,
        report,
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
}

struct SegmentScan {
    header_ok: bool,
    frames: Vec<(u64, FramePayload)>,
    /// The sequence number after the last valid frame, if any frame was read.
    next_seq: Option<u64>,
    bad: Option<BadSpot>,
}

/// Reads one segment's frames up to the first bad spot.
fn scan_segment(bytes: &[u8], name_seq: u64, node: NodeId, expected: Option<u64>) -> SegmentScan {
    let mut scan = SegmentScan {
        header_ok: false,
        frames: Vec::new(),
        next_seq: None,
        bad: None,
    };
    let header_problem = match format::decode_segment_header(bytes) {
        Err(e) => Some(format!("bad segment header: {e}")),
        Ok(h) if h.node != node => Some(format!("segment belongs to node {}, not {node}", h.node)),
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
            not_torn: valid_frame_after(bytes, SEGMENT_HEADER_BYTES.min(bytes.len()), 0),
        });
        return scan;
    }
    scan.header_ok = true;
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut next = name_seq;
    while offset < bytes.len() {
        match read_valid_frame(&bytes[offset..], next) {
            Ok((len, seq, payload)) => {
                next = seq + payload.records.len() as u64;
                scan.frames.push((seq, payload));
                scan.next_seq = Some(next);
                offset += len;
            }
            Err(reason) => {
                scan.bad = Some(BadSpot {
                    offset: offset as u64,
                    reason,
                    not_torn: valid_frame_after(bytes, offset + 1, next)
                        || frame_was_complete(bytes, offset),
                });
                break;
            }
        }
    }
    if scan.next_seq.is_none() {
        scan.next_seq = Some(next);
    }
    scan
}

/// True if a segment with `header` may follow one that ended before `expected`.
fn continues(expected: u64, header: &format::SegmentHeader) -> bool {
    let after_repair = header.flags & format::SEGMENT_FLAG_AFTER_REPAIR != 0;
    header.first_seq == expected || (after_repair && header.first_seq > expected)
}

/// Reads and decodes the frame at the start of `bytes`, which must begin at
/// sequence number `expected`. Returns `(frame length, first seq, payload)`.
fn read_valid_frame(bytes: &[u8], expected: u64) -> Result<(usize, u64, FramePayload), String> {
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
    let payload = format::decode_payload(body, header.op_count)
        .map_err(|e| format!("bad frame payload: {e}"))?;
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
    (from..bytes.len()).any(|pos| {
        matches!(format::read_frame(&bytes[pos..]), Ok((h, _)) if h.first_seq >= min_seq && h.op_count > 0)
    })
}

/// True if the damaged frame at `offset` had been written in full, so its
/// damage is a changed bit rather than a write cut short.
///
/// A torn write leaves the frame short, or (on some file systems) ends in
/// zeros that run to the end of the file from a sector boundary. A flipped
/// bit leaves the frame whole, and then one of these holds: the header is
/// valid and the whole payload is present (the damage is in the payload);
/// the payload still matches the stored payload checksum (the damage is in
/// the header); it matches when the frame is taken to run to the end of the
/// file (the damage is in the length); or correcting the stored payload
/// checksum makes the header checksum valid (the damage is in that field).
fn frame_was_complete(file: &[u8], offset: usize) -> bool {
    use format::{FRAME_HEADER_BYTES, FRAME_HEADER_CRC_OFFSET, FRAME_PAYLOAD_CRC_OFFSET};
    let bytes = &file[offset..];
    if bytes.len() < FRAME_HEADER_BYTES || zero_tail_from_sector(file, offset) {
        return false;
    }
    let field =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let stored_len = field(format::FRAME_PAYLOAD_LEN_OFFSET) as usize;
    let stored_payload_crc = field(FRAME_PAYLOAD_CRC_OFFSET);
    let body = &bytes[FRAME_HEADER_BYTES..];
    let header_valid =
        crc32c::crc32c(&bytes[..FRAME_HEADER_CRC_OFFSET]) == field(FRAME_HEADER_CRC_OFFSET);
    if header_valid {
        return stored_len <= body.len();
    }
    let payload_matches =
        |len: usize| len <= body.len() && crc32c::crc32c(&body[..len]) == stored_payload_crc;
    if payload_matches(stored_len) || payload_matches(body.len()) {
        return true;
    }
    if stored_len > body.len() {
        return false;
    }
    let mut header = [0u8; FRAME_HEADER_CRC_OFFSET];
    header.copy_from_slice(&bytes[..FRAME_HEADER_CRC_OFFSET]);
    let actual_payload_crc = crc32c::crc32c(&body[..stored_len]);
    header[FRAME_PAYLOAD_CRC_OFFSET..].copy_from_slice(&actual_payload_crc.to_le_bytes());
    crc32c::crc32c(&header) == field(FRAME_HEADER_CRC_OFFSET)
}

/// Sector size used to recognise zero-filled tails.
const SECTOR_BYTES: usize = 512;

/// True if, from the frame at `offset` or from some sector boundary after it,
/// the file holds nothing but zeros up to its end.
fn zero_tail_from_sector(file: &[u8], offset: usize) -> bool {
    let last_nonzero = file.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if last_nonzero == file.len() {
        return false;
    }
    let zero_from = if last_nonzero <= offset {
        offset
    } else {
        last_nonzero.div_ceil(SECTOR_BYTES) * SECTOR_BYTES
    };
    zero_from < file.len()
}

fn truncate(io: &Io, path: &Path, len_bytes: u64) -> Result<()> {
    let mut file = io.open_append(path)?;
    file.truncate(len_bytes)?;
    file.sync_all()
}

/// Cuts the WAL at a damaged spot: saves the dropped bytes in quarantine,
/// truncates the damaged segment and moves later segments aside.
fn repair(
    io: &Io,
    wal_dir: &Path,
    path: &Path,
    bytes: &[u8],
    bad: &BadSpot,
    later: &[(u64, PathBuf)],
    seq_high_water: &mut u64,
) -> Result<RepairReport> {
    let db_dir = wal_dir.parent().unwrap_or(wal_dir);
    let quarantine = db_dir.join(QUARANTINE_DIR);
    io.create_dir_all(&quarantine)?;
    let offset = bad.offset as usize;
    let tail = &bytes[offset.min(bytes.len())..];
    let name = path
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    let saved = quarantine.join(format!("{name}.from-{offset}"));
    io.write_atomic(&saved, tail)?;
    let mut valid_frames_dropped = count_valid_frames(tail, seq_high_water);
    let mut bytes_dropped = tail.len() as u64;
    if offset < SEGMENT_HEADER_BYTES {
        io.remove_file(path)?;
    } else {
        truncate(io, path, bad.offset)?;
    }
    let mut segments_dropped = Vec::new();
    for (_, later_path) in later {
        let later_bytes = io.read(later_path)?;
        bytes_dropped += later_bytes.len() as u64;
        valid_frames_dropped += count_valid_frames(&later_bytes, seq_high_water);
        let target = quarantine.join(later_path.file_name().unwrap_or_default());
        io.rename(later_path, &target)?;
        segments_dropped.push(later_path.clone());
    }
    io.sync_dir(wal_dir)?;
    io.sync_dir(&quarantine)?;
    Ok(RepairReport {
        segment: path.to_path_buf(),
        offset_bytes: bad.offset,
        reason: bad.reason.clone(),
        bytes_dropped,
        valid_frames_dropped,
        segments_dropped,
        quarantine,
    })
}

/// Counts checksum-valid frames in damaged bytes, raising `seq_high_water`
/// past their sequence numbers so they are never reused.
fn count_valid_frames(bytes: &[u8], seq_high_water: &mut u64) -> u64 {
    let mut count = 0;
    let mut pos = 0;
    while pos < bytes.len() {
        match format::read_frame(&bytes[pos..]) {
            Ok((h, body)) if h.op_count > 0 => {
                count += 1;
                let last = h.first_seq.saturating_add(u64::from(h.op_count) - 1);
                *seq_high_water = (*seq_high_water).max(last);
                pos += format::FRAME_HEADER_BYTES + body.len();
            }
            _ => pos += 1,
        }
    }
    count
}
