//! The leader's side of one connection, as a pure state machine.
//!
//! The transport authenticates the HELLO's token (the machine has no
//! access to the auth service), reads WAL frames and snapshots, and tells
//! the machine what it sent; the machine decides how to start and checks
//! every ACK against what was sent.

use super::ProtocolError;
use super::message::{Cursor, Message, PROTOCOL_VERSION, StartMode};

/// Where the leader's log stands, as the transport reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderPosition {
    /// The leader's node id.
    pub stream: u64,
    /// The leader's epoch.
    pub epoch: u64,
    /// The oldest sequence number still in the leader's WAL segments.
    pub first_available_seq: u64,
    /// The newest durable sequence number.
    pub durable_seq: u64,
    /// The key the leader's data is encrypted with, if any.
    pub key_id: Option<crate::crypto::KeyId>,
}

/// What a valid HELLO asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The follower's id.
    pub follower_id: u64,
    /// Its token, to authenticate.
    pub token: String,
    /// Its durable cursor.
    pub cursor: Cursor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    Hello,
    Serving {
        stream: u64,
        epoch: u64,
        sent_seq: u64,
        acked_seq: u64,
    },
}

/// One connection's worth of leader protocol state.
#[derive(Clone, Debug)]
pub struct LeaderMachine {
    state: State,
}

impl Default for LeaderMachine {
    fn default() -> Self {
        Self::new()
    }
}

/// How a follower at `cursor` is brought up to date from `position`: WAL
/// batches if it is on this stream and epoch (or has nothing yet) and the
/// segments after its cursor are all still here; a snapshot otherwise.
pub fn decide_start(cursor: Cursor, position: LeaderPosition) -> StartMode {
    let fresh = cursor == Cursor::default();
    let same_history =
        fresh || (cursor.stream == position.stream && cursor.epoch == position.epoch);
    let segments_kept = cursor.seq.saturating_add(1) >= position.first_available_seq;
    let not_ahead = cursor.seq <= position.durable_seq;
    if same_history && segments_kept && not_ahead {
        StartMode::CatchUp
    } else {
        StartMode::Snapshot
    }
}

impl LeaderMachine {
    /// A machine for a fresh connection.
    pub fn new() -> Self {
        LeaderMachine {
            state: State::AwaitHello,
        }
    }

    /// Validates the first message, which must be a HELLO in this version.
    pub fn on_hello(&mut self, message: Message) -> Result<Hello, ProtocolError> {
        match (self.state, message) {
            (
                State::AwaitHello,
                Message::Hello {
                    version,
                    follower_id,
                    token,
                    cursor,
                },
            ) => {
                if version != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version { got: version });
                }
                self.state = State::Hello;
                Ok(Hello {
                    follower_id,
                    token,
                    cursor,
                })
            }
            (_, Message::Error { code, message }) => Err(ProtocolError::Remote { code, message }),
            (_, _) => Err(ProtocolError::OutOfOrder {
                got: "a message other than HELLO",
                state: "awaiting HELLO",
            }),
        }
    }

    /// After authentication: the WELCOME to send and the sequence number
    /// streaming continues after (the cursor's, or a snapshot's, which the
    /// transport reports with [`LeaderMachine::sent`]).
    pub fn welcome(
        &mut self,
        cursor: Cursor,
        position: LeaderPosition,
    ) -> Result<(Message, StartMode), ProtocolError> {
        if self.state != State::Hello {
            return Err(ProtocolError::OutOfOrder {
                got: "WELCOME",
                state: "not authenticated",
            });
        }
        let mode = decide_start(cursor, position);
        // Catching up starts from a position the leader has durably.
        debug_assert!(mode == StartMode::Snapshot || cursor.seq <= position.durable_seq);
        let sent_seq = match mode {
            StartMode::CatchUp => cursor.seq,
            StartMode::Snapshot => 0,
        };
        self.state = State::Serving {
            stream: position.stream,
            epoch: position.epoch,
            sent_seq,
            acked_seq: 0,
        };
        let welcome = Message::Welcome {
            version: PROTOCOL_VERSION,
            stream: position.stream,
            epoch: position.epoch,
            leader_seq: position.durable_seq,
            mode,
            key_id: position.key_id,
        };
        Ok((welcome, mode))
    }

    /// Records that everything through `seq` has been sent.
    pub fn sent(&mut self, seq: u64) {
        if let State::Serving { sent_seq, .. } = &mut self.state {
            *sent_seq = (*sent_seq).max(seq);
        }
    }

    /// Validates an ACK: this stream and epoch, never past what was sent,
    /// never backwards. Returns the acknowledged sequence number.
    pub fn on_ack(&mut self, message: Message) -> Result<u64, ProtocolError> {
        let State::Serving {
            stream,
            epoch,
            sent_seq,
            acked_seq,
        } = &mut self.state
        else {
            return Err(ProtocolError::OutOfOrder {
                got: "ACK",
                state: "not serving",
            });
        };
        match message {
            Message::Ack {
                stream: s,
                epoch: e,
                seq,
            } => {
                if (s, e) != (*stream, *epoch) {
                    return Err(ProtocolError::WrongStream {
                        expected: (*stream, *epoch),
                        got: (s, e),
                    });
                }
                if seq > *sent_seq || seq < *acked_seq {
                    return Err(ProtocolError::SequenceGap {
                        expected: *acked_seq,
                        got: seq,
                    });
                }
                *acked_seq = seq;
                Ok(seq)
            }
            Message::Error { code, message } => Err(ProtocolError::Remote { code, message }),
            _ => Err(ProtocolError::OutOfOrder {
                got: "a message other than ACK",
                state: "serving",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> LeaderPosition {
        LeaderPosition {
            key_id: None,
            stream: 1,
            epoch: 2,
            first_available_seq: 100,
            durable_seq: 500,
        }
    }

    fn at(stream: u64, epoch: u64, seq: u64) -> Cursor {
        Cursor { stream, epoch, seq }
    }

    #[test]
    fn catch_up_needs_the_same_history_and_the_segments_after_the_cursor() {
        assert_eq!(decide_start(at(1, 2, 99), position()), StartMode::CatchUp);
        assert_eq!(decide_start(at(1, 2, 500), position()), StartMode::CatchUp);
        assert_eq!(
            decide_start(at(1, 2, 98), position()),
            StartMode::Snapshot,
            "segments gone"
        );
        assert_eq!(
            decide_start(at(1, 2, 501), position()),
            StartMode::Snapshot,
            "ahead"
        );
        assert_eq!(
            decide_start(at(1, 3, 200), position()),
            StartMode::Snapshot,
            "epoch"
        );
        assert_eq!(
            decide_start(at(9, 2, 200), position()),
            StartMode::Snapshot,
            "stream"
        );
        assert_eq!(
            decide_start(Cursor::default(), position()),
            StartMode::Snapshot,
            "empty"
        );
        let whole = LeaderPosition {
            first_available_seq: 1,
            ..position()
        };
        assert_eq!(decide_start(at(1, 2, 0), whole), StartMode::CatchUp);
        assert_eq!(
            decide_start(Cursor::default(), whole),
            StartMode::CatchUp,
            "a new follower reads the whole log while it is all there"
        );
    }

    #[test]
    fn acks_must_match_the_stream_and_stay_between_the_last_ack_and_what_was_sent() {
        let mut m = LeaderMachine::new();
        assert!(
            m.on_ack(Message::Ack {
                stream: 1,
                epoch: 2,
                seq: 0
            })
            .is_err(),
            "before HELLO"
        );
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            follower_id: 5,
            token: "t".into(),
            cursor: at(1, 2, 150),
        };
        assert_eq!(m.on_hello(hello.clone()).unwrap().follower_id, 5);
        assert!(m.on_hello(hello).is_err(), "a second HELLO");
        let (_, mode) = m.welcome(at(1, 2, 150), position()).unwrap();
        assert_eq!(mode, StartMode::CatchUp);
        m.sent(200);
        assert_eq!(
            m.on_ack(Message::Ack {
                stream: 1,
                epoch: 2,
                seq: 180
            })
            .unwrap(),
            180
        );
        assert!(
            m.on_ack(Message::Ack {
                stream: 1,
                epoch: 2,
                seq: 201
            })
            .is_err(),
            "past sent"
        );
        assert!(
            m.on_ack(Message::Ack {
                stream: 1,
                epoch: 2,
                seq: 170
            })
            .is_err(),
            "backwards"
        );
        assert!(
            m.on_ack(Message::Ack {
                stream: 1,
                epoch: 3,
                seq: 190
            })
            .is_err(),
            "epoch"
        );
    }

    #[test]
    fn the_first_message_must_be_a_hello_in_this_version() {
        let mut m = LeaderMachine::new();
        assert!(
            m.on_hello(Message::Ack {
                stream: 1,
                epoch: 2,
                seq: 3
            })
            .is_err()
        );
        let mut m = LeaderMachine::new();
        let old = Message::Hello {
            version: 0,
            follower_id: 1,
            token: String::new(),
            cursor: Cursor::default(),
        };
        assert!(matches!(
            m.on_hello(old),
            Err(ProtocolError::Version { got: 0 })
        ));
    }
}
