//! The follower's side of the protocol, as a pure state machine.
//!
//! The transport feeds it every decoded message and does what it answers:
//! write snapshot bytes, install a snapshot, apply a batch (then send the
//! ACK the machine built). Any error closes the connection; because the
//! machine validates a message completely before answering with an action,
//! a bad message applies nothing.

use super::ProtocolError;
use super::message::{Cursor, Message, PROTOCOL_VERSION, StartMode};
use crate::crypto::sealed::{self, SealedKind};
use crate::crypto::{KeyId, Keyring};
use crate::error::{Error, KeyError};
use crate::record::{Record, decode_payload};
use crate::wal::format;

/// Largest snapshot a follower accepts, by default (bytes).
pub const SNAPSHOT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024 * 1024;

/// What the transport must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerAction {
    /// A snapshot of `total_bytes` is coming: start a fresh staging file.
    SnapshotStart {
        /// Bytes that will follow.
        total_bytes: u64,
    },
    /// Append these bytes to the staging file (at `offset`).
    SnapshotBytes {
        /// Where they go.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The staged snapshot is complete and verified: install it, replacing
    /// the replicated state, with `cursor` stored atomically alongside.
    InstallSnapshot {
        /// The cursor the snapshot brings the follower to (its sequence
        /// number is the one SNAPSHOT_BEGIN announced: the file must cover
        /// exactly that).
        cursor: Cursor,
        /// The key the leader's WELCOME named: the file must be encrypted
        /// (its chunks authenticated) under it; `None` for a leader in
        /// clear.
        leader_key: Option<KeyId>,
    },
    /// Apply these records durably, with `cursor` stored in the same
    /// atomic write; then send the ACK from [`FollowerMachine::ack`].
    Apply {
        /// The cursor after the batch.
        cursor: Cursor,
        /// The records of the batch's WAL frames, checksummed and decoded
        /// once, here.
        records: BatchRecords,
    },
    /// The leader's durable position (for lag figures).
    LeaderPosition {
        /// The leader's durable sequence number.
        leader_seq: u64,
    },
}

#[derive(Clone, Debug)]
enum State {
    AwaitWelcome,
    AwaitSnapshotBegin {
        stream: u64,
        epoch: u64,
    },
    Snapshot {
        stream: u64,
        epoch: u64,
        snapshot_seq: u64,
        total_bytes: u64,
        received_bytes: u64,
        hasher: Box<blake3::Hasher>,
    },
    Streaming,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitWelcome => "awaiting WELCOME",
            State::AwaitSnapshotBegin { .. } => "awaiting SNAPSHOT_BEGIN",
            State::Snapshot { .. } => "receiving a snapshot",
            State::Streaming => "streaming",
        }
    }
}

/// One connection's worth of follower protocol state.
#[derive(Clone, Debug)]
pub struct FollowerMachine {
    state: State,
    cursor: Cursor,
    snapshot_bytes_max: u64,
    /// The follower's keys: an encrypted leader's batches open with them.
    keyring: Keyring,
    /// The key the leader's WELCOME named (its batches are sealed).
    leader_key: Option<KeyId>,
}

impl FollowerMachine {
    /// A machine for a connection opened with the follower's durable
    /// `cursor`.
    /// An encrypted leader is followed only with its key in `keyring`.
    pub fn new(cursor: Cursor, snapshot_bytes_max: u64, keyring: Keyring) -> Self {
        FollowerMachine {
            state: State::AwaitWelcome,
            cursor,
            snapshot_bytes_max,
            keyring,
            leader_key: None,
        }
    }

    /// The HELLO to open the connection with.
    pub fn hello(&self, follower_id: u64, token: &str) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            follower_id,
            token: token.to_string(),
            cursor: self.cursor,
        }
    }

    /// The ACK for what the follower has applied.
    pub fn ack(&self) -> Message {
        Message::Ack {
            stream: self.cursor.stream,
            epoch: self.cursor.epoch,
            seq: self.cursor.seq,
        }
    }

    /// The cursor as of the last action returned.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// True once the follower streams batches (after the WELCOME of a
    /// catch-up, or a snapshot installed): its position is then the
    /// leader's history, not a snapshot still to come.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming)
    }

    /// Validates one message and says what to do about it.
    pub fn on_message(&mut self, message: Message) -> Result<Vec<FollowerAction>, ProtocolError> {
        if let Message::Error { code, message } = message {
            return Err(ProtocolError::Remote { code, message });
        }
        let state = std::mem::replace(&mut self.state, State::AwaitWelcome);
        let result = self.step(state, message);
        if result.is_err() {
            // A failed machine stays in its initial state; the connection
            // is closed anyway.
            self.state = State::AwaitWelcome;
        }
        result
    }

    fn step(
        &mut self,
        state: State,
        message: Message,
    ) -> Result<Vec<FollowerAction>, ProtocolError> {
        match (state, message) {
            (
                State::AwaitWelcome,
                Message::Welcome {
                    version,
                    stream,
                    epoch,
                    leader_seq,
                    mode,
                    key_id,
                },
            ) => {
                self.check_key(key_id)?;
                self.on_welcome(version, stream, epoch, leader_seq, mode)
            }
            (
                State::AwaitSnapshotBegin { stream, epoch },
                Message::SnapshotBegin {
                    stream: s,
                    epoch: e,
                    snapshot_seq,
                    total_bytes,
                },
            ) => {
                check_stream((stream, epoch), (s, e))?;
                if total_bytes > self.snapshot_bytes_max {
                    return Err(ProtocolError::Oversized {
                        bytes: total_bytes,
                        limit: self.snapshot_bytes_max,
                    });
                }
                self.state = State::Snapshot {
                    stream,
                    epoch,
                    snapshot_seq,
                    total_bytes,
                    received_bytes: 0,
                    hasher: Box::new(blake3::Hasher::new()),
                };
                Ok(vec![FollowerAction::SnapshotStart { total_bytes }])
            }
            (
                State::Snapshot {
                    stream,
                    epoch,
                    snapshot_seq,
                    total_bytes,
                    received_bytes,
                    mut hasher,
                },
                Message::SnapshotChunk {
                    stream: s,
                    epoch: e,
                    offset,
                    bytes,
                },
            ) => {
                check_stream((stream, epoch), (s, e))?;
                let end = received_bytes.saturating_add(bytes.len() as u64);
                if offset != received_bytes || end > total_bytes {
                    return Err(ProtocolError::Malformed {
                        reason: format!(
                            "snapshot chunk at {offset} of {} bytes; expected offset {received_bytes}, total {total_bytes}",
                            bytes.len()
                        ),
                    });
                }
                // SNAPSHOT_BEGIN refused a total above the limit, so what
                // arrives stays within it.
                debug_assert!(end <= self.snapshot_bytes_max);
                hasher.update(&bytes);
                self.state = State::Snapshot {
                    stream,
                    epoch,
                    snapshot_seq,
                    total_bytes,
                    received_bytes: end,
                    hasher,
                };
                Ok(vec![FollowerAction::SnapshotBytes { offset, bytes }])
            }
            (
                State::Snapshot {
                    stream,
                    epoch,
                    snapshot_seq,
                    total_bytes,
                    received_bytes,
                    hasher,
                },
                Message::SnapshotEnd {
                    stream: s,
                    epoch: e,
                    digest,
                },
            ) => {
                check_stream((stream, epoch), (s, e))?;
                if received_bytes != total_bytes || *hasher.finalize().as_bytes() != digest {
                    return Err(ProtocolError::Checksum { what: "snapshot" });
                }
                self.cursor = Cursor {
                    stream,
                    epoch,
                    seq: snapshot_seq,
                };
                self.state = State::Streaming;
                Ok(vec![FollowerAction::InstallSnapshot {
                    cursor: self.cursor,
                    leader_key: self.leader_key,
                }])
            }
            (
                State::Streaming,
                Message::Batch {
                    stream,
                    epoch,
                    first_seq,
                    last_seq,
                    frame_count,
                    frames,
                },
            ) => self.on_batch(stream, epoch, first_seq, last_seq, frame_count, frames),
            (
                State::Streaming,
                Message::Heartbeat {
                    stream,
                    epoch,
                    leader_seq,
                },
            ) => {
                self.check_leader_position(stream, epoch, leader_seq)?;
                self.state = State::Streaming;
                Ok(vec![FollowerAction::LeaderPosition { leader_seq }])
            }
            (state, message) => Err(ProtocolError::OutOfOrder {
                got: message.name(),
                state: state.name(),
            }),
        }
    }

    /// A leader position must be on the follower's stream and epoch and not
    /// behind the follower (that would mean the leader's history was cut).
    fn check_leader_position(
        &self,
        stream: u64,
        epoch: u64,
        leader_seq: u64,
    ) -> Result<(), ProtocolError> {
        check_stream((self.cursor.stream, self.cursor.epoch), (stream, epoch))?;
        if leader_seq < self.cursor.seq {
            return Err(ProtocolError::SequenceGap {
                expected: self.cursor.seq,
                got: leader_seq,
            });
        }
        Ok(())
    }

    /// An encrypted leader needs its key here, or nothing it sends can be
    /// read: refused at WELCOME, before anything is applied.
    ///
    /// A follower with a key of its own follows only an encrypted leader:
    /// WELCOME is not authenticated, so a leader "in clear" may be someone
    /// on the path who rewrote it to feed the follower batches and a
    /// snapshot of their own (with TLS, no one can).
    fn check_key(&mut self, key_id: Option<KeyId>) -> Result<(), ProtocolError> {
        match key_id {
            None if self.keyring.current_id().is_some() => {
                return Err(ProtocolError::LeaderInClear);
            }
            Some(needed) if self.keyring.find(needed).is_none() => {
                return Err(ProtocolError::KeyMissing {
                    needed,
                    given: self.keyring.ids(),
                });
            }
            _ => {}
        }
        self.leader_key = key_id;
        Ok(())
    }

    fn on_welcome(
        &mut self,
        version: u16,
        stream: u64,
        epoch: u64,
        leader_seq: u64,
        mode: StartMode,
    ) -> Result<Vec<FollowerAction>, ProtocolError> {
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::Version { got: version });
        }
        match mode {
            StartMode::CatchUp => {
                if self.cursor == Cursor::default() {
                    // A follower with nothing joins the leader's history.
                    self.cursor.stream = stream;
                    self.cursor.epoch = epoch;
                }
                self.check_leader_position(stream, epoch, leader_seq)?;
                self.state = State::Streaming;
                Ok(vec![FollowerAction::LeaderPosition { leader_seq }])
            }
            StartMode::Snapshot => {
                self.state = State::AwaitSnapshotBegin { stream, epoch };
                Ok(vec![FollowerAction::LeaderPosition { leader_seq }])
            }
        }
    }

    fn on_batch(
        &mut self,
        stream: u64,
        epoch: u64,
        first_seq: u64,
        last_seq: u64,
        frame_count: u32,
        frames: Vec<u8>,
    ) -> Result<Vec<FollowerAction>, ProtocolError> {
        check_stream((self.cursor.stream, self.cursor.epoch), (stream, epoch))?;
        let expected = self.cursor.seq.saturating_add(1);
        if first_seq != expected {
            return Err(ProtocolError::SequenceGap {
                expected,
                got: first_seq,
            });
        }
        let frames = match self.leader_key {
            None => frames,
            Some(_) => {
                let context = batch_context(stream, epoch, first_seq, last_seq, frame_count);
                sealed::open(
                    &self.keyring,
                    SealedKind::ReplicationBatch,
                    &context,
                    &frames,
                )
                .map_err(|e| match e {
                    Error::Key(KeyError::Missing { needed, given, .. }) => {
                        ProtocolError::KeyMissing { needed, given }
                    }
                    other => ProtocolError::Malformed {
                        reason: format!("sealed batch: {other}"),
                    },
                })?
            }
        };
        let records = decode_wal_frames(&frames, first_seq, last_seq, frame_count)?;
        self.cursor.seq = last_seq;
        self.state = State::Streaming;
        Ok(vec![FollowerAction::Apply {
            cursor: self.cursor,
            records: BatchRecords {
                records,
                content: *blake3::hash(&frames).as_bytes(),
            },
        }])
    }
}

/// What a sealed BATCH binds its frames to: stream, epoch, first and last
/// sequence numbers (u64 little-endian each) and the frame count (u32).
pub fn batch_context(
    stream: u64,
    epoch: u64,
    first_seq: u64,
    last_seq: u64,
    frame_count: u32,
) -> Vec<u8> {
    let mut context = Vec::with_capacity(36);
    for v in [stream, epoch, first_seq, last_seq] {
        context.extend_from_slice(&v.to_le_bytes());
    }
    context.extend_from_slice(&frame_count.to_le_bytes());
    context
}

/// The records of a verified batch, in log order, and a hash of its
/// content (opaque: the follower runtime commits them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecords {
    records: Vec<Record>,
    /// blake3 of the batch's WAL frames as received (in clear: after
    /// opening a sealed batch).
    content: [u8; 32],
}

impl BatchRecords {
    /// How many records (operations) the batch holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if the batch holds none (never, for a verified batch).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// blake3 of the batch's WAL frames, byte for byte as received: part
    /// of the batch's idempotency id, so a batch at sequence numbers that
    /// an earlier, different batch held is never taken for a duplicate.
    pub fn content_hash(&self) -> [u8; 32] {
        self.content
    }

    pub(crate) fn into_records(self) -> Vec<Record> {
        self.records
    }
}

/// Checks that `frames` holds exactly `frame_count` intact WAL frames
/// covering `first_seq..=last_seq` with no gap, each payload decoding.
pub fn verify_wal_frames(
    frames: &[u8],
    first_seq: u64,
    last_seq: u64,
    frame_count: u32,
) -> Result<(), ProtocolError> {
    decode_wal_frames(frames, first_seq, last_seq, frame_count).map(|_| ())
}

/// Checks that `frames` holds exactly `frame_count` intact WAL frames
/// covering `first_seq..=last_seq` with no gap, and returns their records.
pub(crate) fn decode_wal_frames(
    frames: &[u8],
    first_seq: u64,
    last_seq: u64,
    frame_count: u32,
) -> Result<Vec<Record>, ProtocolError> {
    let malformed = |reason: String| ProtocolError::Malformed { reason };
    let mut rest = frames;
    let mut next = first_seq;
    let mut count = 0u32;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (header, payload) = format::read_frame(rest)
            .map_err(|e| malformed(format!("WAL frame {count} of the batch: {e:?}")))?;
        if header.first_seq != next || header.op_count == 0 {
            return Err(ProtocolError::SequenceGap {
                expected: next,
                got: header.first_seq,
            });
        }
        let decoded = decode_payload(payload, header.op_count)
            .map_err(|e| malformed(format!("WAL frame {count} of the batch: {e}")))?;
        records.extend(decoded.records);
        next = header
            .first_seq
            .checked_add(u64::from(header.op_count))
            .ok_or_else(|| {
                malformed(format!(
                    "WAL frame {count} runs past the last sequence number"
                ))
            })?;
        rest = rest
            .get(format::FRAME_HEADER_BYTES + payload.len()..)
            .ok_or_else(|| malformed(format!("WAL frame {count} of the batch overruns it")))?;
        count += 1;
    }
    if count != frame_count || count == 0 || Some(next) != last_seq.checked_add(1) {
        return Err(malformed(format!(
            "batch says {frame_count} frames up to {last_seq}, holds {count} up to {}",
            next.saturating_sub(1)
        )));
    }
    Ok(records)
}

fn check_stream(expected: (u64, u64), got: (u64, u64)) -> Result<(), ProtocolError> {
    if expected == got {
        Ok(())
    } else {
        Err(ProtocolError::WrongStream { expected, got })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: u64 = 0xabc;
    const EPOCH: u64 = 7;

    fn cursor(seq: u64) -> Cursor {
        Cursor {
            stream: STREAM,
            epoch: EPOCH,
            seq,
        }
    }

    fn put_record(seq: u64) -> Record {
        use crate::clock::{NodeId, Stamp};
        use crate::crdt::{KeyState, Register};
        Record {
            store_key: crate::record::store_key("default", &seq.to_le_bytes()),
            delta: KeyState {
                register: Some(Register {
                    stamp: Stamp {
                        physical_ms: seq,
                        logical: 0,
                        node: NodeId(1),
                    },
                    value: Some(std::sync::Arc::from(&b"v"[..])),
                    floor: Vec::new(),
                }),
                counter: None,
            },
        }
    }

    /// WAL frames of `ops` operations each, starting at `first_seq`.
    fn wal_frames(first_seq: u64, ops: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = first_seq;
        for &n in ops {
            let records: Vec<_> = (0..n).map(|i| put_record(seq + u64::from(i))).collect();
            let payload = crate::record::encode_payload(None, &records).unwrap();
            format::encode_frame(&mut out, seq, n, &payload);
            seq += u64::from(n);
        }
        out
    }

    #[test]
    fn frames_running_past_the_last_sequence_number_are_refused() {
        let records: Vec<_> = (0..4).map(put_record).collect();
        let payload = crate::record::encode_payload(None, &records).unwrap();
        let mut frames = Vec::new();
        format::encode_frame(&mut frames, u64::MAX - 1, 4, &payload);
        let decoded = decode_wal_frames(&frames, u64::MAX - 1, u64::MAX - 1, 1);
        assert!(
            matches!(decoded, Err(ProtocolError::Malformed { .. })),
            "{decoded:?}"
        );
        let mut last = Vec::new();
        let one = crate::record::encode_payload(None, &records[..1]).unwrap();
        format::encode_frame(&mut last, u64::MAX, 1, &one);
        let decoded = decode_wal_frames(&last, u64::MAX, u64::MAX, 1);
        assert!(
            matches!(decoded, Err(ProtocolError::Malformed { .. })),
            "{decoded:?}"
        );
    }

    fn batch(first_seq: u64, ops: &[u32]) -> Message {
        let total: u64 = ops.iter().map(|&n| u64::from(n)).sum();
        Message::Batch {
            stream: STREAM,
            epoch: EPOCH,
            first_seq,
            last_seq: first_seq + total - 1,
            frame_count: ops.len() as u32,
            frames: wal_frames(first_seq, ops),
        }
    }

    /// `batch(first_seq, ops)` with some fields changed.
    fn altered(
        first_seq: u64,
        ops: &[u32],
        change: impl FnOnce(&mut (u64, u64, u64, u32, Vec<u8>)),
    ) -> Message {
        let Message::Batch {
            stream,
            epoch,
            last_seq,
            frame_count,
            frames,
            ..
        } = batch(first_seq, ops)
        else {
            unreachable!()
        };
        let mut parts = (stream, epoch, last_seq, frame_count, frames);
        change(&mut parts);
        let (stream, epoch, last_seq, frame_count, frames) = parts;
        Message::Batch {
            stream,
            epoch,
            first_seq,
            last_seq,
            frame_count,
            frames,
        }
    }

    fn welcome(mode: StartMode, leader_seq: u64) -> Message {
        Message::Welcome {
            version: PROTOCOL_VERSION,
            stream: STREAM,
            epoch: EPOCH,
            leader_seq,
            mode,
            key_id: None,
        }
    }

    fn streaming_at(seq: u64) -> FollowerMachine {
        let mut m =
            FollowerMachine::new(cursor(seq), SNAPSHOT_BYTES_MAX_DEFAULT, Keyring::default());
        m.on_message(welcome(StartMode::CatchUp, seq + 100))
            .unwrap();
        m
    }

    #[test]
    fn catch_up_applies_consecutive_batches_and_acks_them() {
        let mut m = streaming_at(10);
        let actions = m.on_message(batch(11, &[3, 2])).unwrap();
        assert!(matches!(&actions[..], [FollowerAction::Apply { cursor: c, .. }] if c.seq == 15));
        assert_eq!(
            m.ack(),
            Message::Ack {
                stream: STREAM,
                epoch: EPOCH,
                seq: 15
            }
        );
        m.on_message(batch(16, &[1])).unwrap();
        assert_eq!(m.cursor().seq, 16);
    }

    #[test]
    fn gaps_rewinds_other_streams_and_damaged_frames_are_refused() {
        let cases: Vec<(Message, &str)> = vec![
            (batch(12, &[1]), "gap"),
            (batch(10, &[1]), "rewind"),
            (batch(5, &[3]), "old duplicate"),
            (altered(11, &[1], |b| b.0 += 1), "other stream"),
            (altered(11, &[1], |b| b.1 += 1), "other epoch"),
            (altered(11, &[1], |b| b.3 = 2), "count"),
            (altered(11, &[1], |b| b.2 = 20), "last seq"),
            (
                altered(11, &[1], |b| {
                    b.3 = 0;
                    b.4.clear();
                }),
                "empty",
            ),
            (welcome(StartMode::CatchUp, 20), "second welcome"),
            (
                Message::Heartbeat {
                    stream: STREAM,
                    epoch: EPOCH,
                    leader_seq: 3,
                },
                "leader behind",
            ),
        ];
        for (message, what) in cases {
            let mut m = streaming_at(10);
            assert!(m.on_message(message).is_err(), "{what}");
            assert_eq!(m.cursor().seq, 10, "{what}: nothing applied");
        }
        // One flipped bit inside the WAL frames.
        let Message::Batch { mut frames, .. } = batch(11, &[2]) else {
            unreachable!()
        };
        for bit in 0..frames.len() * 8 {
            frames[bit / 8] ^= 1 << (bit % 8);
            let mut m = streaming_at(10);
            let bad = altered(11, &[2], |b| b.4 = frames.clone());
            assert!(m.on_message(bad).is_err(), "bit {bit}");
            frames[bit / 8] ^= 1 << (bit % 8);
        }
    }

    #[test]
    fn a_batch_before_the_welcome_or_a_newer_version_is_refused() {
        let mut m = FollowerMachine::new(cursor(0), SNAPSHOT_BYTES_MAX_DEFAULT, Keyring::default());
        assert!(matches!(
            m.on_message(batch(1, &[1])),
            Err(ProtocolError::OutOfOrder { .. })
        ));
        let mut m = FollowerMachine::new(cursor(0), SNAPSHOT_BYTES_MAX_DEFAULT, Keyring::default());
        let newer = Message::Welcome {
            version: PROTOCOL_VERSION + 1,
            stream: STREAM,
            epoch: EPOCH,
            leader_seq: 0,
            mode: StartMode::CatchUp,
            key_id: None,
        };
        assert!(matches!(
            m.on_message(newer),
            Err(ProtocolError::Version { .. })
        ));
        // Catch-up on another stream than the follower's is a lie.
        let mut m = FollowerMachine::new(
            Cursor {
                stream: 1,
                epoch: 1,
                seq: 5,
            },
            SNAPSHOT_BYTES_MAX_DEFAULT,
            Keyring::default(),
        );
        assert!(matches!(
            m.on_message(welcome(StartMode::CatchUp, 9)),
            Err(ProtocolError::WrongStream { .. })
        ));
    }

    fn snapshot_machine(total_bytes: u64) -> FollowerMachine {
        let mut m = FollowerMachine::new(Cursor::default(), 1 << 20, Keyring::default());
        m.on_message(welcome(StartMode::Snapshot, 50)).unwrap();
        m.on_message(Message::SnapshotBegin {
            stream: STREAM,
            epoch: EPOCH,
            snapshot_seq: 40,
            total_bytes,
        })
        .unwrap();
        m
    }

    fn chunk(offset: u64, bytes: &[u8]) -> Message {
        Message::SnapshotChunk {
            stream: STREAM,
            epoch: EPOCH,
            offset,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn a_snapshot_is_installed_only_whole_and_verified() {
        let data = b"snapshot bytes, in two chunks";
        let digest = *blake3::hash(data).as_bytes();
        let end = Message::SnapshotEnd {
            stream: STREAM,
            epoch: EPOCH,
            digest,
        };
        let mut m = snapshot_machine(data.len() as u64);
        m.on_message(chunk(0, &data[..10])).unwrap();
        m.on_message(chunk(10, &data[10..])).unwrap();
        let actions = m.on_message(end.clone()).unwrap();
        assert_eq!(
            actions,
            vec![FollowerAction::InstallSnapshot {
                cursor: cursor(40),
                leader_key: None
            }]
        );
        m.on_message(batch(41, &[1])).unwrap();

        let mut short = snapshot_machine(data.len() as u64);
        short.on_message(chunk(0, &data[..10])).unwrap();
        assert!(short.on_message(end.clone()).is_err(), "incomplete");
        let mut skipped = snapshot_machine(data.len() as u64);
        assert!(skipped.on_message(chunk(5, &data[5..])).is_err(), "offset");
        let mut long = snapshot_machine(4);
        assert!(long.on_message(chunk(0, data)).is_err(), "past the total");
        let mut wrong = snapshot_machine(data.len() as u64);
        wrong
            .on_message(chunk(0, b"other bytes, the same length!"))
            .unwrap();
        assert!(matches!(
            wrong.on_message(end),
            Err(ProtocolError::Checksum { .. })
        ));
        let mut huge = FollowerMachine::new(Cursor::default(), 1 << 20, Keyring::default());
        huge.on_message(welcome(StartMode::Snapshot, 50)).unwrap();
        let begin = Message::SnapshotBegin {
            stream: STREAM,
            epoch: EPOCH,
            snapshot_seq: 1,
            total_bytes: 1 << 40,
        };
        assert!(matches!(
            huge.on_message(begin),
            Err(ProtocolError::Oversized { .. })
        ));
    }
}
