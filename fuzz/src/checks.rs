//! What each fuzz target checks on one input.
//!
//! Every check feeds the input to a decoder of untrusted bytes exactly as
//! the database does. Where the format protects its fields with checksums
//! or a digest, it then feeds a *sealed* copy too: the same bytes with
//! every checksum and digest recomputed in place (from the offsets in
//! `docs/FORMAT.md` and `docs/PROTOCOL.md`, written here independently of
//! the library), so the fuzzer reaches the field decoding behind them
//! instead of stopping at a CRC it cannot guess.
//!
//! What counts as a finding: a panic anywhere (the library must return an
//! error for any input), and a broken round trip: whatever decodes must
//! encode again and decode to the same value, and where the format has one
//! spelling per value, to the same bytes.
//!
//! Each check returns true if the input decoded as it was, before sealing;
//! the regression test requires that of every seed, so seeds stay real.
//!
//! This file is compiled twice: by the fuzz crate (`fuzz/src/lib.rs`) and,
//! on stable, by `tests/fuzz_regressions.rs`, which replays every kept
//! input through the same checks. `feature = "auth"` is the fuzz crate's
//! feature in the first (on by default, it turns on mergekv's) and
//! mergekv's own in the second.

use mergekv::fuzzing;
use mergekv::replication::Cursor;
use mergekv::replication::follower::{FollowerAction, FollowerMachine, verify_wal_frames};
use mergekv::replication::frame::{self, Frame, FrameKind};
use mergekv::replication::leader::{LeaderMachine, LeaderPosition};
use mergekv::replication::message::Message;
use mergekv::sync::changeset;

/// A check: true if the input decoded as it was.
pub type Check = fn(&[u8]) -> bool;

/// Every target: its name (fuzz target, corpus and regression folder) and
/// its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("wal_frame", wal_frame),
    ("wal_segment", wal_segment),
    ("snapshot", snapshot),
    ("changeset", changeset),
    ("repl_frame", repl_frame),
    ("repl_message", repl_message),
    ("repl_stream", repl_stream),
    #[cfg(feature = "auth")]
    ("api_token", api_token),
    ("meta", meta),
    ("cursors", cursors),
    ("salvage", salvage),
    ("run_file", run_file),
    ("encrypted", encrypted),
    ("change_stream", change_stream),
];

/// Targets whose code is not in this build (their mergekv feature is
/// off): they have a fuzz target and kept inputs, but no check here.
pub const TARGETS_NOT_BUILT: &[&str] = &[
    #[cfg(not(feature = "auth"))]
    "api_token",
];

// Layouts, from docs/FORMAT.md and docs/PROTOCOL.md.
const WAL_FRAME_HEADER_BYTES: usize = 28;
const WAL_FRAME_PAYLOAD_CRC_OFFSET: usize = 20;
const WAL_FRAME_HEADER_CRC_OFFSET: usize = 24;
const SEGMENT_HEADER_BYTES: usize = 32;
const SEGMENT_HEADER_CRC_OFFSET: usize = 28;
const SNAPSHOT_HEADER_BYTES: usize = 60;
const SNAPSHOT_HEADER_CRC_OFFSET: usize = 56;
const SNAPSHOT_CHUNK_HEADER_BYTES: usize = 16;
const SNAPSHOT_CHUNK_LEN_OFFSET: usize = 8;
const SNAPSHOT_CHUNK_CRC_OFFSET: usize = 12;
const SNAPSHOT_CHUNK_END: u8 = 0xFF;
const DIGEST_BYTES: usize = 32;
const REPL_FRAME_HEADER_BYTES: usize = 16;
const REPL_FRAME_PAYLOAD_CRC_OFFSET: usize = 8;
const REPL_FRAME_HEADER_CRC_OFFSET: usize = 12;
/// Stream, epoch, first seq, last seq (u64 each), frame count (u32).
const BATCH_FIELDS_BYTES: usize = 8 * 4 + 4;
const RUN_HEADER_BYTES: usize = 32;
const RUN_HEADER_CRC_OFFSET: usize = 28;
const RUN_FOOTER_BYTES: usize = 88;
const RUN_FOOTER_CRC_OFFSET: usize = 74;
/// Frame types of a run file that carry a checksum: data raw and LZ4,
/// node table, index, filter.
const RUN_FRAME_TYPES: [u8; 5] = [b'R', b'L', b'N', b'I', b'F'];
/// A version 1 META's length (version 2 is longer and variable).
const META_V1_BYTES: usize = 30;

/// Every frame kind, for the target that picks one from the first byte.
const FRAME_KINDS: [FrameKind; 9] = [
    FrameKind::Hello,
    FrameKind::Welcome,
    FrameKind::SnapshotBegin,
    FrameKind::SnapshotChunk,
    FrameKind::SnapshotEnd,
    FrameKind::Batch,
    FrameKind::Heartbeat,
    FrameKind::Ack,
    FrameKind::Error,
];

/// Where the leader stands in `repl_stream`: it has everything from 1.
const LEADER_POSITION: LeaderPosition = LeaderPosition {
    stream: 0x5eed,
    epoch: 1,
    first_available_seq: 1,
    durable_seq: 1_000,
    key_id: None,
};
/// The follower's snapshot limit in `repl_stream` (bytes).
const FOLLOWER_SNAPSHOT_BYTES_MAX: u64 = 1 << 20;

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Runs `check` on `data` and on a copy sealed by `seal`.
fn with_sealed(data: &[u8], check: fn(&[u8]) -> bool, seal: fn(&mut [u8])) -> bool {
    let decoded = check(data);
    let mut sealed = data.to_vec();
    seal(&mut sealed);
    if sealed != data {
        check(&sealed);
    }
    decoded
}

/// Seals WAL frames laid back to back from the start of `bytes`: each
/// length is clamped to the bytes left, then both CRCs are recomputed.
pub fn seal_wal_frames(bytes: &mut [u8]) {
    let mut at = 0;
    while bytes.len() - at >= WAL_FRAME_HEADER_BYTES {
        let room = bytes.len() - at - WAL_FRAME_HEADER_BYTES;
        let len = (get_u32(bytes, at) as usize).min(room);
        put_u32(bytes, at, len as u32);
        let body = at + WAL_FRAME_HEADER_BYTES..at + WAL_FRAME_HEADER_BYTES + len;
        let payload_crc = crc32c::crc32c(&bytes[body]);
        put_u32(bytes, at + WAL_FRAME_PAYLOAD_CRC_OFFSET, payload_crc);
        let header_crc = crc32c::crc32c(&bytes[at..at + WAL_FRAME_HEADER_CRC_OFFSET]);
        put_u32(bytes, at + WAL_FRAME_HEADER_CRC_OFFSET, header_crc);
        at += WAL_FRAME_HEADER_BYTES + len;
    }
}

/// One WAL frame (`read_frame` + `decode_payload`), as recovery, segment
/// import and a follower read it.
pub fn wal_frame(data: &[u8]) -> bool {
    with_sealed(data, check_wal_frame, seal_wal_frames)
}

fn check_wal_frame(data: &[u8]) -> bool {
    let Ok((frame, len)) = fuzzing::decode_wal_frame(data) else {
        return false;
    };
    let encoded = frame.encode().expect("a decoded WAL frame encodes again");
    assert_eq!(encoded.len(), len, "a WAL frame re-encodes to its length");
    // Records have one encoding each, so the payload comes back byte for
    // byte (the header may differ in bits the reader ignores).
    assert_eq!(
        encoded[WAL_FRAME_HEADER_BYTES..],
        data[WAL_FRAME_HEADER_BYTES..len],
        "a WAL frame payload re-encodes to the same bytes"
    );
    let (again, again_len) =
        fuzzing::decode_wal_frame(&encoded).expect("a re-encoded WAL frame decodes");
    assert_eq!(again, frame);
    assert_eq!(again_len, len);
    true
}

pub fn seal_wal_segment(bytes: &mut [u8]) {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c(&bytes[..SEGMENT_HEADER_CRC_OFFSET]);
    put_u32(bytes, SEGMENT_HEADER_CRC_OFFSET, crc);
    seal_wal_frames(&mut bytes[SEGMENT_HEADER_BYTES..]);
}

/// A whole WAL segment, as segment import reads it (the recovery scan).
pub fn wal_segment(data: &[u8]) -> bool {
    with_sealed(data, check_wal_segment, seal_wal_segment)
}

fn check_wal_segment(data: &[u8]) -> bool {
    let Ok(segment) = fuzzing::decode_wal_segment(data) else {
        return false;
    };
    let encoded = segment.encode().expect("a decoded segment encodes again");
    assert_eq!(
        encoded.len(),
        data.len(),
        "a whole segment is its header and frames, nothing else"
    );
    let again = fuzzing::decode_wal_segment(&encoded).expect("a re-encoded segment decodes");
    assert_eq!(again, segment);
    true
}

/// Seals a snapshot: the header CRC; each chunk's length (clamped), its
/// end digest (for an end chunk of digest size) and its CRC.
pub fn seal_snapshot(bytes: &mut [u8]) {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c(&bytes[..SNAPSHOT_HEADER_CRC_OFFSET]);
    put_u32(bytes, SNAPSHOT_HEADER_CRC_OFFSET, crc);
    let mut at = SNAPSHOT_HEADER_BYTES;
    while bytes.len() - at >= SNAPSHOT_CHUNK_HEADER_BYTES {
        let body_at = at + SNAPSHOT_CHUNK_HEADER_BYTES;
        let room = bytes.len() - body_at;
        let len = (get_u32(bytes, at + SNAPSHOT_CHUNK_LEN_OFFSET) as usize).min(room);
        put_u32(bytes, at + SNAPSHOT_CHUNK_LEN_OFFSET, len as u32);
        if bytes[at] == SNAPSHOT_CHUNK_END && len == DIGEST_BYTES {
            let digest = blake3::hash(&bytes[..at]);
            bytes[body_at..body_at + len].copy_from_slice(digest.as_bytes());
        }
        let crc = crc32c::crc32c(&bytes[body_at..body_at + len]);
        put_u32(bytes, at + SNAPSHOT_CHUNK_CRC_OFFSET, crc);
        at = body_at + len;
    }
}

/// A snapshot (state file), as opening a database or installing a
/// leader's snapshot reads it.
pub fn snapshot(data: &[u8]) -> bool {
    with_sealed(data, check_snapshot, seal_snapshot)
}

fn check_snapshot(data: &[u8]) -> bool {
    let Ok(snapshot) = fuzzing::decode_snapshot(data) else {
        return false;
    };
    // The snapshot writer needs files; its records go through the record
    // codec, whose round trip is checked here.
    let entries = snapshot.entries();
    let encoded = entries.encode();
    let again = fuzzing::decode_records(&encoded, entries.len() as u64)
        .expect("a snapshot's records encode and decode again");
    assert_eq!(&again, entries);
    true
}

/// Seals a change set: its trailing digest, over everything before it.
pub fn seal_changeset(bytes: &mut [u8]) {
    if let Some(content_len) = bytes.len().checked_sub(DIGEST_BYTES) {
        let digest = blake3::hash(&bytes[..content_len]);
        bytes[content_len..].copy_from_slice(digest.as_bytes());
    }
}

/// A change set, as import reads it.
pub fn changeset(data: &[u8]) -> bool {
    with_sealed(data, check_changeset, seal_changeset)
}

fn check_changeset(data: &[u8]) -> bool {
    let Ok(set) = changeset::decode(data) else {
        return false;
    };
    let encoded = changeset::encode(set.origin, &set.cursor, &set.records);
    let again = changeset::decode(&encoded).expect("a re-encoded change set decodes");
    assert_eq!(again.origin, set.origin);
    assert_eq!(again.cursor, set.cursor);
    assert_eq!(again.records, set.records);
    true
}

/// Seals replication frames laid back to back: lengths clamped, the WAL
/// frames inside a BATCH sealed, then both CRCs.
pub fn seal_repl_frames(bytes: &mut [u8]) {
    let mut at = 0;
    while bytes.len() - at >= REPL_FRAME_HEADER_BYTES {
        let body_at = at + REPL_FRAME_HEADER_BYTES;
        let len = (get_u32(bytes, at) as usize).min(bytes.len() - body_at);
        put_u32(bytes, at, len as u32);
        if bytes[at + 4] == FrameKind::Batch as u8 && len >= BATCH_FIELDS_BYTES {
            seal_wal_frames(&mut bytes[body_at + BATCH_FIELDS_BYTES..body_at + len]);
        }
        let payload_crc = crc32c::crc32c(&bytes[body_at..body_at + len]);
        put_u32(bytes, at + REPL_FRAME_PAYLOAD_CRC_OFFSET, payload_crc);
        let header_crc = crc32c::crc32c(&bytes[at..at + REPL_FRAME_HEADER_CRC_OFFSET]);
        put_u32(bytes, at + REPL_FRAME_HEADER_CRC_OFFSET, header_crc);
        at = body_at + len;
    }
}

/// One replication frame as a connection reads it, and the message it
/// carries.
pub fn repl_frame(data: &[u8]) -> bool {
    with_sealed(data, check_repl_frame, seal_repl_frames)
}

fn check_repl_frame(data: &[u8]) -> bool {
    let Ok(frame) = frame::read_frame(&mut &data[..]) else {
        return false;
    };
    let encoded =
        frame::encode_frame(frame.kind, &frame.payload).expect("a frame read back encodes");
    // Flags and reserved bytes must be zero, so a frame has one spelling.
    assert_eq!(encoded[..], data[..encoded.len()], "a frame re-encodes");
    check_message(&frame);
    true
}

/// Seals the WAL frames a BATCH payload carries.
fn seal_message(bytes: &mut [u8]) {
    if bytes.first() == Some(&(FrameKind::Batch as u8)) && bytes.len() > BATCH_FIELDS_BYTES {
        seal_wal_frames(&mut bytes[1 + BATCH_FIELDS_BYTES..]);
    }
}

/// A message payload: the first byte is the frame kind (as on the wire),
/// the rest the payload. A BATCH's WAL frames are verified as a follower
/// does.
pub fn repl_message(data: &[u8]) -> bool {
    with_sealed(data, check_message_bytes, seal_message)
}

fn check_message_bytes(data: &[u8]) -> bool {
    let Some((&kind, payload)) = data.split_first() else {
        return false;
    };
    let Some(kind) = FRAME_KINDS.into_iter().find(|k| *k as u8 == kind) else {
        return false;
    };
    check_message(&Frame {
        kind,
        payload: payload.to_vec(),
    })
}

fn check_message(frame: &Frame) -> bool {
    let Ok(message) = Message::decode(frame) else {
        return false;
    };
    assert_eq!(message.kind(), frame.kind);
    let bytes = message.to_frame_bytes().expect("a decoded message encodes");
    let again = frame::read_frame(&mut &bytes[..]).expect("an encoded message's frame reads");
    let again = Message::decode(&again).expect("an encoded message decodes");
    match (&message, &again) {
        // An ERROR's text is read leniently (invalid UTF-8 becomes U+FFFD,
        // three bytes each) and cut at the limit when sent, so what comes
        // back is a prefix of what was read.
        (
            Message::Error { code, message },
            Message::Error {
                code: code_again,
                message: message_again,
            },
        ) => {
            assert_eq!(code, code_again);
            assert!(message.starts_with(message_again.as_str()));
        }
        _ => {
            assert_eq!(again, message);
            assert_eq!(
                bytes[REPL_FRAME_HEADER_BYTES..],
                frame.payload[..],
                "a message has one encoding"
            );
        }
    }
    if let Message::Batch {
        first_seq,
        last_seq,
        frame_count,
        frames,
        ..
    } = &message
    {
        let _ = verify_wal_frames(frames, *first_seq, *last_seq, *frame_count);
    }
    true
}

/// A connection's bytes: frames back to back, each message handed to the
/// side that would receive it (HELLO and ACK to a leader machine, the rest
/// to a fresh follower's machine, ERROR to both), each side closing at its
/// first refusal as a connection does.
pub fn repl_stream(data: &[u8]) -> bool {
    with_sealed(data, check_repl_stream, seal_repl_frames)
}

fn check_repl_stream(data: &[u8]) -> bool {
    let mut follower = Some(FollowerMachine::new(
        Cursor::default(),
        FOLLOWER_SNAPSHOT_BYTES_MAX,
        mergekv::crypto::Keyring::default(),
    ));
    let mut leader = Some(LeaderSide::AwaitHello(LeaderMachine::new()));
    let mut input = data;
    while !input.is_empty() {
        let Ok(frame) = frame::read_frame(&mut input) else {
            return false;
        };
        let Ok(message) = Message::decode(&frame) else {
            return false;
        };
        let to_leader = matches!(message, Message::Hello { .. } | Message::Ack { .. });
        let to_follower = !to_leader || matches!(message, Message::Error { .. });
        if to_leader || matches!(message, Message::Error { .. }) {
            leader = leader.and_then(|side| side.take(message.clone()));
        }
        if to_follower {
            follower = follower.and_then(|machine| follower_takes(machine, message));
        }
    }
    true
}

enum LeaderSide {
    AwaitHello(LeaderMachine),
    Serving(LeaderMachine),
}

impl LeaderSide {
    /// The side after `message`, or `None` once it closed the connection.
    fn take(self, message: Message) -> Option<LeaderSide> {
        match self {
            LeaderSide::AwaitHello(mut machine) => {
                let hello = machine.on_hello(message).ok()?;
                let (welcome, _) = machine
                    .welcome(hello.cursor, LEADER_POSITION)
                    .expect("a leader welcomes after a valid HELLO");
                assert!(matches!(welcome, Message::Welcome { .. }));
                machine.sent(LEADER_POSITION.durable_seq);
                Some(LeaderSide::Serving(machine))
            }
            LeaderSide::Serving(mut machine) => {
                let seq = machine.on_ack(message).ok()?;
                assert!(
                    seq <= LEADER_POSITION.durable_seq,
                    "an ACK past what was sent"
                );
                Some(LeaderSide::Serving(machine))
            }
        }
    }
}

/// The follower machine after `message`, or `None` once it closed.
fn follower_takes(mut machine: FollowerMachine, message: Message) -> Option<FollowerMachine> {
    let batch = match &message {
        Message::Batch {
            first_seq,
            last_seq,
            ..
        } => Some((*first_seq, *last_seq)),
        _ => None,
    };
    for action in machine.on_message(message).ok()? {
        if let FollowerAction::Apply { cursor, records } = action {
            let (first_seq, last_seq) = batch.expect("only a BATCH is applied");
            assert_eq!(cursor.seq, last_seq, "the cursor moves to the batch's end");
            assert_eq!(
                records.len() as u64,
                last_seq - first_seq + 1,
                "a batch holds one record per sequence number it covers"
            );
        }
    }
    Some(machine)
}

/// An API token (and a key id), as authentication and `revoke` parse them.
#[cfg(feature = "auth")]
pub fn api_token(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let token = check_api_token(&text);
    let key_id = check_api_key_id(&text);
    token || key_id
}

#[cfg(feature = "auth")]
fn check_api_token(text: &str) -> bool {
    let Ok(parts) = fuzzing::parse_api_token(text) else {
        return false;
    };
    assert_eq!(parts.format(), text, "a token has one spelling");
    true
}

#[cfg(feature = "auth")]
fn check_api_key_id(text: &str) -> bool {
    let Ok(printed) = fuzzing::parse_api_key_id(text) else {
        return false;
    };
    assert_eq!(printed, text, "a key id has one spelling");
    true
}

/// Both versions end with a CRC-32C of everything before it.
pub fn seal_meta(bytes: &mut [u8]) {
    if bytes.len() >= 4 {
        let at = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..at]);
        put_u32(bytes, at, crc);
    }
}

/// The identity file, as open reads it.
pub fn meta(data: &[u8]) -> bool {
    with_sealed(data, check_meta, seal_meta)
}

fn check_meta(data: &[u8]) -> bool {
    let Ok(meta) = fuzzing::decode_meta(data) else {
        return false;
    };
    let encoded = meta.encode();
    let again = fuzzing::decode_meta(&encoded).expect("an encoded META decodes");
    if data.len() == META_V1_BYTES {
        // A version 1 META is rewritten as the current version: the same
        // identity.
        assert_eq!(again.node_id(), meta.node_id(), "the same identity");
    } else if data.get(8) == Some(&2) {
        // Version 2 is rewritten as version 3 (no key): the same fields.
        assert_eq!(again, meta, "a version 2 META reads the same rewritten");
    } else {
        assert_eq!(encoded, data, "a version 3 META has one spelling");
    }
    true
}

/// The registered-cursor file, as opening a database reads it.
pub fn cursors(data: &[u8]) -> bool {
    with_sealed(data, check_cursors, seal_meta)
}

fn check_cursors(data: &[u8]) -> bool {
    let Ok(cursors) = fuzzing::decode_cursors(data) else {
        return false;
    };
    let again = fuzzing::decode_cursors(&cursors.encode()).expect("an encoded file decodes");
    assert_eq!(again, cursors, "the same cursors");
    true
}

/// A damaged snapshot, as a repair salvages it: never a panic, and never
/// more entries than an undamaged read of the same bytes would give when
/// the file reads whole.
pub fn salvage(data: &[u8]) -> bool {
    let salvaged = fuzzing::salvage_snapshot(data);
    if let (Ok(whole), Some((kept, lost))) = (fuzzing::decode_snapshot(data), salvaged) {
        assert_eq!(
            kept,
            whole.entries().len(),
            "a whole snapshot is salvaged whole"
        );
        assert_eq!(lost, 0, "nothing is lost from a whole snapshot");
    }
    salvaged.is_some()
}

/// A LEB128 varint at `at`: its value and length, if well formed.
fn read_varint(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *bytes.get(at + i)?;
        v |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Seals a run file: the header CRC, each frame's CRC walking from the
/// header while frames fit (type, stored length, the decompressed length
/// of an LZ4 block, CRC over those and the payload), the footer's CRC.
pub fn seal_run_file(bytes: &mut [u8]) {
    if bytes.len() < RUN_HEADER_BYTES + RUN_FOOTER_BYTES {
        return;
    }
    let crc = crc32c::crc32c(&bytes[..RUN_HEADER_CRC_OFFSET]);
    put_u32(bytes, RUN_HEADER_CRC_OFFSET, crc);
    let footer = bytes.len() - RUN_FOOTER_BYTES;
    let mut at = RUN_HEADER_BYTES;
    while at < footer && RUN_FRAME_TYPES.contains(&bytes[at]) {
        let Some((stored, n)) = read_varint(bytes, at + 1) else {
            break;
        };
        let mut header_end = at + 1 + n;
        if bytes[at] == b'L' {
            let Some((_, m)) = read_varint(bytes, header_end) else {
                break;
            };
            header_end += m;
        }
        let Some(end) = usize::try_from(stored)
            .ok()
            .and_then(|s| (header_end + 4).checked_add(s))
            .filter(|&end| end <= footer)
        else {
            break;
        };
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&bytes[at..header_end]),
            &bytes[header_end + 4..end],
        );
        put_u32(bytes, header_end, crc);
        at = end;
    }
    let crc = crc32c::crc32c(&bytes[footer..footer + RUN_FOOTER_CRC_OFFSET]);
    put_u32(bytes, footer + RUN_FOOTER_CRC_OFFSET, crc);
}

/// A sorted-run file, as the database opens a run its manifest names:
/// never a panic from open, lookups, iteration, verification or salvage.
/// A run that verifies must agree with itself every way it is read
/// (forward, reverse, ranges, point lookups, the filter, salvage), and
/// its entries must write out as a run that reads back the same.
pub fn run_file(data: &[u8]) -> bool {
    with_sealed(data, check_run_file, seal_run_file)
}

fn check_run_file(data: &[u8]) -> bool {
    let (salvaged, lost) = fuzzing::salvage_run_file(data);
    let Ok(run) = fuzzing::open_run_file(data) else {
        return false;
    };
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let forward = run.scan(Unbounded, Unbounded, false);
    let backward = run.scan(Unbounded, Unbounded, true);
    // Lookups of keys taken from the input: whatever the answer, no panic.
    for window in data.chunks(17).take(8) {
        let _ = run.get(window);
    }
    let Ok(count) = run.verify() else {
        return false;
    };
    let forward = forward.expect("a run that verifies iterates");
    let mut backward = backward.expect("a run that verifies iterates backwards");
    backward.reverse();
    assert_eq!(backward, forward, "reverse iteration is forward reversed");
    assert_eq!(count as usize, forward.len(), "verify counts every entry");
    assert_eq!(run.entries(), count);
    for (key, state) in &forward {
        assert!(run.may_contain(key), "the filter passes every key");
        assert_eq!(
            run.get(key).as_ref(),
            Ok(&Some(state.clone())),
            "get agrees with iteration"
        );
    }
    if let (Some(first), Some(last)) = (forward.first(), forward.last()) {
        let inner = run
            .scan(Excluded(first.0.clone()), Included(last.0.clone()), true)
            .expect("a range of a run that verifies");
        assert_eq!(
            inner.len(),
            forward.len() - 1,
            "a range holds what it bounds"
        );
    }
    assert_eq!(
        (&salvaged, lost),
        (&forward, 0),
        "a whole run is salvaged whole"
    );
    let again = fuzzing::write_run_file(&forward, 512, true).expect("a run's entries write again");
    let reread = fuzzing::open_run_file(&again).expect("a written run opens");
    assert_eq!(reread.verify(), Ok(count));
    assert_eq!(
        reread.scan(Unbounded, Unbounded, false).as_ref(),
        Ok(&forward)
    );
    true
}

/// Encrypted inputs, under the harness's fixed key: a sealed object (a
/// change set, a replication batch), an encrypted WAL segment, an
/// encrypted run. Whatever the bytes: a typed error or a value, never a
/// panic; what decrypts must be exactly what the seeds were.
pub fn encrypted(data: &[u8]) -> bool {
    with_sealed(data, check_encrypted, seal_encrypted)
}

fn check_encrypted(data: &[u8]) -> bool {
    let sealed = fuzzing::open_sealed(data).is_ok();
    let segment = fuzzing::decode_encrypted_segment(data).is_ok();
    let run = match fuzzing::open_run_file(data) {
        Ok(run) => {
            use std::ops::Bound::Unbounded;
            let forward = run.scan(Unbounded, Unbounded, false);
            match run.verify() {
                Ok(count) => {
                    let forward = forward.expect("a run that verifies iterates");
                    assert_eq!(count as usize, forward.len(), "verify counts every entry");
                    true
                }
                Err(_) => false,
            }
        }
        Err(_) => false,
    };
    sealed || segment || run
}

/// Seals what has a plain checksum in an encrypted input: a sealed
/// object's header CRC, a segment's header CRC and its key block's CRC.
/// The tags stay: no one without the key can make them right.
pub fn seal_encrypted(bytes: &mut [u8]) {
    if bytes.starts_with(b"MKVSEAL\x01") && bytes.len() >= 60 {
        let crc = crc32c::crc32c(&bytes[..56]);
        put_u32(bytes, 56, crc);
    }
    if bytes.starts_with(b"MKVWAL\0\x01") && bytes.len() >= SEGMENT_HEADER_BYTES + 44 {
        let crc = crc32c::crc32c(&bytes[..SEGMENT_HEADER_CRC_OFFSET]);
        put_u32(bytes, SEGMENT_HEADER_CRC_OFFSET, crc);
        let block = SEGMENT_HEADER_BYTES;
        let crc = crc32c::crc32c(&bytes[block..block + 40]);
        put_u32(bytes, block + 40, crc);
    }
}

/// A change stream, as `Db::import_stream` reads it (into a database in
/// clear and one under the fuzz key): a typed error or an import, never a
/// panic, never memory the bytes did not pay for.
pub fn change_stream(data: &[u8]) -> bool {
    with_sealed(data, check_change_stream, seal_change_stream)
}

fn check_change_stream(data: &[u8]) -> bool {
    fuzzing::import_change_stream(data).is_ok()
}

/// Seals a change stream in clear: its header CRC and every chunk's
/// chained hash (lengths clamped to the bytes left).
pub fn seal_change_stream(bytes: &mut [u8]) {
    const HEADER: usize = 40;
    if bytes.len() < HEADER || !bytes.starts_with(b"MKVCSTR\x01") {
        return;
    }
    let crc = crc32c::crc32c(&bytes[..36]);
    put_u32(bytes, 36, crc);
    let sealed = u16::from_le_bytes([bytes[10], bytes[11]]) & 1 != 0;
    let mut at = HEADER + if sealed { 44 } else { 0 };
    if at > bytes.len() {
        return;
    }
    let mut chain = *blake3::Hasher::new_derive_key("mergekv change stream chain v1")
        .update(&bytes[..at])
        .finalize()
        .as_bytes();
    while bytes.len() - at >= 16 + 32 {
        let room = bytes.len() - at - 16 - 32;
        let len = (get_u32(bytes, at + 12) as usize).min(room);
        put_u32(bytes, at + 12, len as u32);
        chain = *blake3::Hasher::new()
            .update(&chain)
            .update(&bytes[at..at + 16 + len])
            .finalize()
            .as_bytes();
        let hash_at = at + 16 + len;
        bytes[hash_at..hash_at + 32].copy_from_slice(&chain);
        at = hash_at + 32;
    }
}
