//! The messages frames carry, and their byte layouts (little-endian).
//! `docs/PROTOCOL.md` has the same tables.

use super::ProtocolError;
use super::frame::{Frame, FrameKind, encode_frame};
use crate::codec::{Reader, Writer};
use crate::crypto::KeyId;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// Magic at the start of a HELLO payload.
pub const HELLO_MAGIC: [u8; 8] = *b"MKVREPL\x01";
/// Longest API token a HELLO may carry.
pub const TOKEN_BYTES_MAX: usize = 256;
/// Longest message in an ERROR frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// Bytes in an encoded cursor (stream, epoch, seq).
const CURSOR_BYTES: usize = 3 * 8;
/// Largest HELLO payload: magic, version, follower id, token length, the
/// longest token, cursor. A leader reads no larger frame before the token
/// has authenticated, so an unauthenticated peer costs it at most this.
pub const HELLO_PAYLOAD_BYTES_MAX: usize =
    HELLO_MAGIC.len() + 2 + 8 + 2 + TOKEN_BYTES_MAX + CURSOR_BYTES;
/// Largest ERROR payload: code, message length, the longest message.
pub const ERROR_PAYLOAD_BYTES_MAX: usize = 2 + 2 + ERROR_MESSAGE_BYTES_MAX;
/// Largest payload a follower sends once authenticated (an ACK or an
/// ERROR): the leader's frame limit after the HELLO.
pub const FOLLOWER_PAYLOAD_BYTES_MAX: usize = if ERROR_PAYLOAD_BYTES_MAX > CURSOR_BYTES {
    ERROR_PAYLOAD_BYTES_MAX
} else {
    CURSOR_BYTES
};

/// Where a follower is: the leader stream and epoch its data came from, and
/// the last leader sequence number it has made durable. All zero for a
/// follower that has nothing yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The leader's node id.
    pub stream: u64,
    /// The leader's epoch (changes when its log history does).
    pub epoch: u64,
    /// The last leader sequence number the follower has durably applied.
    pub seq: u64,
}

/// How the leader will bring the follower up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// WAL batches from the follower's cursor + 1.
    CatchUp = 0,
    /// A snapshot first (the follower is on another stream or epoch, or
    /// the segments it needs are gone), then batches after it.
    Snapshot = 1,
}

/// Why a connection is being closed, in an ERROR frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    Version = 1,
    /// No token, or a token that does not authenticate.
    Unauthenticated = 2,
    /// The token lacks the `replicate` scope.
    Forbidden = 3,
    /// Another live connection already claims this follower id.
    DuplicateFollower = 4,
    /// A frame broke the protocol.
    Protocol = 5,
    /// The leader is shutting down or failed.
    Unavailable = 6,
}

impl ErrorCode {
    fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode as E;
        [
            E::Version,
            E::Unauthenticated,
            E::Forbidden,
            E::DuplicateFollower,
            E::Protocol,
            E::Unavailable,
        ]
        .into_iter()
        .find(|c| *c as u16 == code)
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Follower → leader, first frame.
    Hello {
        /// The follower's protocol version.
        version: u16,
        /// The follower's node id (one live connection per id).
        follower_id: u64,
        /// The API token (`mk_<key_id>_<secret>`), `replicate` scope.
        token: String,
        /// What the follower has.
        cursor: Cursor,
    },
    /// Leader → follower, first frame.
    Welcome {
        /// The leader's protocol version.
        version: u16,
        /// The leader's stream (node id).
        stream: u64,
        /// The leader's epoch.
        epoch: u64,
        /// The leader's durable sequence number now.
        leader_seq: u64,
        /// What follows.
        mode: StartMode,
        /// The key the leader's data is encrypted with (`None`: in
        /// clear): every BATCH's frames are then a sealed object under it
        /// and the snapshot is encrypted with it. A follower without it
        /// refuses before applying anything.
        key_id: Option<KeyId>,
    },
    /// A snapshot transfer starts.
    SnapshotBegin {
        /// Stream.
        stream: u64,
        /// Epoch.
        epoch: u64,
        /// The leader sequence number the snapshot covers.
        snapshot_seq: u64,
        /// Bytes that will follow in chunks.
        total_bytes: u64,
    },
    /// Snapshot bytes at `offset`.
    SnapshotChunk {
        /// Stream.
        stream: u64,
        /// Epoch.
        epoch: u64,
        /// Where these bytes go.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The snapshot is complete.
    SnapshotEnd {
        /// Stream.
        stream: u64,
        /// Epoch.
        epoch: u64,
        /// blake3 of every snapshot byte.
        digest: [u8; 32],
    },
    /// Consecutive WAL frames (each with its own checksums), in clear, or,
    /// from an encrypted leader, sealed (see `docs/PROTOCOL.md`).
    Batch {
        /// Stream.
        stream: u64,
        /// Epoch.
        epoch: u64,
        /// The first operation's sequence number.
        first_seq: u64,
        /// The last operation's sequence number.
        last_seq: u64,
        /// WAL frames in the batch.
        frame_count: u32,
        /// The WAL frames, back to back.
        frames: Vec<u8>,
    },
    /// The leader's durable position, sent when there is nothing else.
    Heartbeat {
        /// Stream.
        stream: u64,
        /// Epoch.
        epoch: u64,
        /// The leader's durable sequence number.
        leader_seq: u64,
    },
    /// What the follower has made durable.
    Ack {
        /// Stream.
        stream: u64,
        /// Epoch.
        epoch: u64,
        /// The follower's durable cursor sequence number.
        seq: u64,
    },
    /// Why the sender closes the connection.
    Error {
        /// The reason.
        code: ErrorCode,
        /// A line for the operator.
        message: String,
    },
}

impl Message {
    /// The frame kind that carries this message.
    pub fn kind(&self) -> FrameKind {
        match self {
            Message::Hello { .. } => FrameKind::Hello,
            Message::Welcome { .. } => FrameKind::Welcome,
            Message::SnapshotBegin { .. } => FrameKind::SnapshotBegin,
            Message::SnapshotChunk { .. } => FrameKind::SnapshotChunk,
            Message::SnapshotEnd { .. } => FrameKind::SnapshotEnd,
            Message::Batch { .. } => FrameKind::Batch,
            Message::Heartbeat { .. } => FrameKind::Heartbeat,
            Message::Ack { .. } => FrameKind::Ack,
            Message::Error { .. } => FrameKind::Error,
        }
    }

    /// The message's name, as in `docs/PROTOCOL.md`.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "HELLO",
            Message::Welcome { .. } => "WELCOME",
            Message::SnapshotBegin { .. } => "SNAPSHOT_BEGIN",
            Message::SnapshotChunk { .. } => "SNAPSHOT_CHUNK",
            Message::SnapshotEnd { .. } => "SNAPSHOT_END",
            Message::Batch { .. } => "BATCH",
            Message::Heartbeat { .. } => "HEARTBEAT",
            Message::Ack { .. } => "ACK",
            Message::Error { .. } => "ERROR",
        }
    }

    /// The whole frame (header and payload) for this message.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Malformed`] if the payload is larger than a frame may
    /// carry.
    pub fn to_frame_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        encode_frame(self.kind(), &self.encode_payload()?)
    }

    fn encode_payload(&self) -> Result<Vec<u8>, ProtocolError> {
        let mut w = Writer::with_capacity(64);
        match self {
            Message::Hello {
                version,
                follower_id,
                token,
                cursor,
            } => {
                if token.len() > TOKEN_BYTES_MAX {
                    return Err(ProtocolError::Malformed {
                        reason: format!(
                            "a token of {} bytes (at most {TOKEN_BYTES_MAX})",
                            token.len()
                        ),
                    });
                }
                w.bytes(&HELLO_MAGIC);
                w.u16(*version);
                w.u64(*follower_id);
                w.u16(token.len() as u16);
                w.bytes(token.as_bytes());
                encode_cursor(&mut w, cursor);
            }
            Message::Welcome {
                version,
                stream,
                epoch,
                leader_seq,
                mode,
                key_id,
            } => {
                w.u16(*version);
                w.u64(*stream);
                w.u64(*epoch);
                w.u64(*leader_seq);
                w.u8(*mode as u8);
                w.u8(u8::from(key_id.is_some()));
                w.u64(key_id.map_or(0, |k| k.0));
            }
            Message::SnapshotBegin {
                stream,
                epoch,
                snapshot_seq,
                total_bytes,
            } => {
                w.u64(*stream);
                w.u64(*epoch);
                w.u64(*snapshot_seq);
                w.u64(*total_bytes);
            }
            Message::SnapshotChunk {
                stream,
                epoch,
                offset,
                bytes,
            } => {
                w.u64(*stream);
                w.u64(*epoch);
                w.u64(*offset);
                w.bytes(bytes);
            }
            Message::SnapshotEnd {
                stream,
                epoch,
                digest,
            } => {
                w.u64(*stream);
                w.u64(*epoch);
                w.bytes(digest);
            }
            Message::Batch {
                stream,
                epoch,
                first_seq,
                last_seq,
                frame_count,
                frames,
            } => {
                w.u64(*stream);
                w.u64(*epoch);
                w.u64(*first_seq);
                w.u64(*last_seq);
                w.u32(*frame_count);
                w.bytes(frames);
            }
            Message::Heartbeat {
                stream,
                epoch,
                leader_seq,
            } => {
                w.u64(*stream);
                w.u64(*epoch);
                w.u64(*leader_seq);
            }
            Message::Ack { stream, epoch, seq } => {
                w.u64(*stream);
                w.u64(*epoch);
                w.u64(*seq);
            }
            Message::Error { code, message } => {
                let text = truncate_utf8(message, ERROR_MESSAGE_BYTES_MAX);
                // Truncated to the limit, so its length fits the u16 it goes out as.
                debug_assert!(text.len() <= ERROR_MESSAGE_BYTES_MAX);
                w.u16(*code as u16);
                w.u16(text.len() as u16);
                w.bytes(text.as_bytes());
            }
        }
        Ok(w.into_vec())
    }

    /// Decodes a frame's payload; anything but an exact fit is malformed.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Malformed`] if the payload does not decode as the
    /// frame's kind of message, or has bytes left over (for kinds other than
    /// batches and snapshot chunks).
    pub fn decode(frame: &Frame) -> Result<Message, ProtocolError> {
        let mut r = Reader::new(&frame.payload);
        let message = decode_fields(frame.kind, &mut r).map_err(|e| ProtocolError::Malformed {
            reason: format!("{:?} frame: {e}", frame.kind),
        })?;
        if r.remaining() != 0 && !matches!(frame.kind, FrameKind::SnapshotChunk | FrameKind::Batch)
        {
            return Err(ProtocolError::Malformed {
                reason: format!(
                    "{:?} frame has {} trailing bytes",
                    frame.kind,
                    r.remaining()
                ),
            });
        }
        Ok(message)
    }
}

fn decode_fields(
    kind: FrameKind,
    r: &mut Reader<'_>,
) -> Result<Message, crate::codec::DecodeError> {
    Ok(match kind {
        FrameKind::Hello => {
            if r.take(8)? != HELLO_MAGIC {
                return Err(Reader::invalid(0, "not a mergekv replication HELLO"));
            }
            let version = r.u16()?;
            let follower_id = r.u64()?;
            let at = r.position();
            let token_len = r.u16()? as usize;
            if token_len > TOKEN_BYTES_MAX {
                return Err(Reader::invalid(at, format!("token of {token_len} bytes")));
            }
            let token = String::from_utf8(r.take(token_len)?.to_vec())
                .map_err(|_| Reader::invalid(at, "token is not UTF-8"))?;
            Message::Hello {
                version,
                follower_id,
                token,
                cursor: decode_cursor(r)?,
            }
        }
        FrameKind::Welcome => {
            let (version, stream, epoch, leader_seq) = (r.u16()?, r.u64()?, r.u64()?, r.u64()?);
            let at = r.position();
            let mode = match r.u8()? {
                0 => StartMode::CatchUp,
                1 => StartMode::Snapshot,
                other => return Err(Reader::invalid(at, format!("start mode {other}"))),
            };
            let at = r.position();
            let key_id = match (r.u8()?, r.u64()?) {
                (0, 0) => None,
                (1, id) => Some(KeyId(id)),
                (flag, _) => return Err(Reader::invalid(at, format!("key flag {flag}"))),
            };
            Message::Welcome {
                version,
                stream,
                epoch,
                leader_seq,
                mode,
                key_id,
            }
        }
        FrameKind::SnapshotBegin => Message::SnapshotBegin {
            stream: r.u64()?,
            epoch: r.u64()?,
            snapshot_seq: r.u64()?,
            total_bytes: r.u64()?,
        },
        FrameKind::SnapshotChunk => Message::SnapshotChunk {
            stream: r.u64()?,
            epoch: r.u64()?,
            offset: r.u64()?,
            bytes: r.take(r.remaining())?.to_vec(),
        },
        FrameKind::SnapshotEnd => {
            let (stream, epoch) = (r.u64()?, r.u64()?);
            let mut digest = [0u8; 32];
            digest.copy_from_slice(r.take(32)?);
            Message::SnapshotEnd {
                stream,
                epoch,
                digest,
            }
        }
        FrameKind::Batch => Message::Batch {
            stream: r.u64()?,
            epoch: r.u64()?,
            first_seq: r.u64()?,
            last_seq: r.u64()?,
            frame_count: r.u32()?,
            frames: r.take(r.remaining())?.to_vec(),
        },
        FrameKind::Heartbeat => Message::Heartbeat {
            stream: r.u64()?,
            epoch: r.u64()?,
            leader_seq: r.u64()?,
        },
        FrameKind::Ack => Message::Ack {
            stream: r.u64()?,
            epoch: r.u64()?,
            seq: r.u64()?,
        },
        FrameKind::Error => {
            let at = r.position();
            let code = r.u16()?;
            let code = ErrorCode::from_u16(code)
                .ok_or_else(|| Reader::invalid(at, format!("error code {code}")))?;
            let len = r.u16()? as usize;
            if len > ERROR_MESSAGE_BYTES_MAX {
                return Err(Reader::invalid(at, format!("error message of {len} bytes")));
            }
            let message = String::from_utf8_lossy(r.take(len)?).into_owned();
            Message::Error { code, message }
        }
    })
}

fn encode_cursor(w: &mut Writer, cursor: &Cursor) {
    w.u64(cursor.stream);
    w.u64(cursor.epoch);
    w.u64(cursor.seq);
}

fn decode_cursor(r: &mut Reader<'_>) -> Result<Cursor, crate::codec::DecodeError> {
    Ok(Cursor {
        stream: r.u64()?,
        epoch: r.u64()?,
        seq: r.u64()?,
    })
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::frame::read_frame;

    fn round_trip(message: Message) {
        let bytes = message.to_frame_bytes().unwrap();
        let frame = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(Message::decode(&frame).unwrap(), message);
    }

    #[test]
    fn every_message_round_trips() {
        let cursor = Cursor {
            stream: 1,
            epoch: 2,
            seq: 3,
        };
        round_trip(Message::Hello {
            version: PROTOCOL_VERSION,
            follower_id: 9,
            token: "mk_0123456789abcdef_00".into(),
            cursor,
        });
        round_trip(Message::Welcome {
            version: 1,
            stream: 4,
            epoch: 5,
            leader_seq: 6,
            mode: StartMode::Snapshot,
            key_id: Some(KeyId(7)),
        });
        round_trip(Message::SnapshotBegin {
            stream: 1,
            epoch: 2,
            snapshot_seq: 3,
            total_bytes: 4,
        });
        round_trip(Message::SnapshotChunk {
            stream: 1,
            epoch: 2,
            offset: 3,
            bytes: vec![1, 2, 3],
        });
        round_trip(Message::SnapshotEnd {
            stream: 1,
            epoch: 2,
            digest: [7; 32],
        });
        round_trip(Message::Batch {
            stream: 1,
            epoch: 2,
            first_seq: 3,
            last_seq: 4,
            frame_count: 1,
            frames: vec![9; 40],
        });
        round_trip(Message::Heartbeat {
            stream: 1,
            epoch: 2,
            leader_seq: 3,
        });
        round_trip(Message::Ack {
            stream: 1,
            epoch: 2,
            seq: 3,
        });
        round_trip(Message::Error {
            code: ErrorCode::Forbidden,
            message: "no replicate scope".into(),
        });
    }

    #[test]
    fn the_limits_before_and_after_authentication_fit_the_largest_messages() {
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            follower_id: u64::MAX,
            token: "t".repeat(TOKEN_BYTES_MAX),
            cursor: Cursor::default(),
        };
        assert_eq!(
            hello.encode_payload().unwrap().len(),
            HELLO_PAYLOAD_BYTES_MAX
        );
        let error = Message::Error {
            code: ErrorCode::Protocol,
            message: "e".repeat(2 * ERROR_MESSAGE_BYTES_MAX),
        };
        assert_eq!(
            error.encode_payload().unwrap().len(),
            ERROR_PAYLOAD_BYTES_MAX
        );
        let ack = Message::Ack {
            stream: 1,
            epoch: 2,
            seq: 3,
        };
        assert!(ack.encode_payload().unwrap().len() <= FOLLOWER_PAYLOAD_BYTES_MAX);
    }

    #[test]
    fn truncated_or_padded_payloads_are_malformed() {
        let message = Message::Ack {
            stream: 1,
            epoch: 2,
            seq: 3,
        };
        let payload = message.encode_payload().unwrap();
        for cut in 0..payload.len() {
            let frame = Frame {
                kind: FrameKind::Ack,
                payload: payload[..cut].to_vec(),
            };
            assert!(Message::decode(&frame).is_err());
        }
        let mut padded = payload;
        padded.push(0);
        let frame = Frame {
            kind: FrameKind::Ack,
            payload: padded,
        };
        assert!(Message::decode(&frame).is_err());
    }
}
