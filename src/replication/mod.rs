//! WAL shipping from a leader to read-only followers.
//!
//! The protocol (`docs/PROTOCOL.md`) is implemented in layers, each
//! testable alone:
//! - `frame`: the wire frame, length-limited and checksummed;
//! - [`message`]: what frames carry;
//! - `follower` and `leader`: pure state machines that validate every
//!   message in protocol order and say what to do, with no sockets, files
//!   or clocks inside.
//!
//! The transport (TCP, optionally TLS) and the database glue drive them.

mod apply;
pub mod client;
// Hidden: the protocol's internals, `pub` for the fuzz targets and tests.
#[doc(hidden)]
pub mod follower;
// Hidden: the protocol's internals, `pub` for the fuzz targets and tests.
#[doc(hidden)]
pub mod frame;
// Hidden: the protocol's internals, `pub` for the fuzz targets and tests.
#[doc(hidden)]
pub mod leader;
pub mod message;
mod retention;
pub mod server;
mod ship;
#[cfg(feature = "tls")]
pub mod tls;
// Hidden: the protocol's internals, `pub` for the fuzz targets and tests.
#[doc(hidden)]
pub mod transport;

pub use client::{Follower, FollowerOptions, FollowerStatus};
pub use message::{Cursor, ErrorCode, Message, PROTOCOL_VERSION, StartMode};
pub use server::{ReplicationAuth, ReplicationOptions, ReplicationServer};

/// Why a replication connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Reading or writing the socket failed (or it closed).
    Io {
        /// The error's kind.
        kind: std::io::ErrorKind,
        /// Its text.
        message: String,
    },
    /// A frame or payload checksum did not match.
    Checksum {
        /// Which checksum.
        what: &'static str,
    },
    /// A frame (or a snapshot) claims more bytes than the limit.
    Oversized {
        /// The claimed size.
        bytes: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// A frame does not decode, or holds an invalid value.
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// A message arrived that the protocol does not allow at this point.
    OutOfOrder {
        /// What arrived.
        got: &'static str,
        /// What the state allows.
        state: &'static str,
    },
    /// A message names another stream or epoch than the connection's.
    WrongStream {
        /// What the connection is on (stream, epoch).
        expected: (u64, u64),
        /// What the message named.
        got: (u64, u64),
    },
    /// A batch does not start right after what the follower has.
    SequenceGap {
        /// The next sequence number expected.
        expected: u64,
        /// The first one the batch carries.
        got: u64,
    },
    /// The peer speaks another protocol version.
    Version {
        /// Its version.
        got: u16,
    },
    /// This side closes the connection, telling the peer why in an ERROR
    /// frame (a refused token, a duplicate follower id, a shutdown).
    Refused {
        /// The code sent.
        code: ErrorCode,
        /// The message sent.
        message: String,
    },
    /// The leader's data is encrypted with a key this follower was not
    /// given.
    KeyMissing {
        /// The key the leader's data needs.
        needed: crate::crypto::KeyId,
        /// The keys the follower has (empty: none).
        given: Vec<crate::crypto::KeyId>,
    },
    /// This follower has a key but the leader says its data is in clear:
    /// refused (a WELCOME rewritten on the way would say the same).
    LeaderInClear,
    /// The peer closed with an ERROR frame.
    Remote {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
}

impl ProtocolError {
    pub(crate) fn io(e: std::io::Error) -> ProtocolError {
        ProtocolError::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// The code to put in an ERROR frame before closing for this reason.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::Version { .. } => ErrorCode::Version,
            ProtocolError::Remote { code, .. } | ProtocolError::Refused { code, .. } => *code,
            _ => ErrorCode::Protocol,
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Io { message, .. } => write!(f, "connection failed: {message}"),
            ProtocolError::Checksum { what } => write!(f, "{what} checksum mismatch"),
            ProtocolError::Oversized { bytes, limit } => {
                write!(f, "{bytes} bytes exceed the limit of {limit}")
            }
            ProtocolError::Malformed { reason } => write!(f, "malformed frame: {reason}"),
            ProtocolError::OutOfOrder { got, state } => {
                write!(f, "{got} is not allowed while {state}")
            }
            ProtocolError::WrongStream { expected, got } => write!(
                f,
                "frame for stream {:016x} epoch {} on a connection to stream {:016x} epoch {}",
                got.0, got.1, expected.0, expected.1
            ),
            ProtocolError::SequenceGap { expected, got } => {
                write!(f, "batch starts at sequence {got}, expected {expected}")
            }
            ProtocolError::Version { got } => write!(
                f,
                "peer speaks protocol version {got}, this build speaks {PROTOCOL_VERSION}"
            ),
            ProtocolError::Refused { code, message } => {
                write!(f, "closing the connection ({code:?}): {message}")
            }
            ProtocolError::Remote { code, message } => {
                write!(f, "peer closed the connection ({code:?}): {message}")
            }
            ProtocolError::LeaderInClear => write!(
                f,
                "the leader says its data is in clear, but this follower has a key: a follower \
                 with a key follows only a leader encrypted with it (without TLS, a WELCOME \
                 saying \"in clear\" may have been rewritten on the way); nothing was applied"
            ),
            ProtocolError::KeyMissing { needed, given } => {
                write!(
                    f,
                    "the leader's data is encrypted with key id {needed}, which this follower \
                     was not given ("
                )?;
                if given.is_empty() {
                    write!(f, "it has no key")?;
                } else {
                    let ids: Vec<String> = given.iter().map(|k| k.to_string()).collect();
                    write!(f, "it has key id {}", ids.join(", "))?;
                }
                write!(
                    f,
                    "): open the follower with the leader's key; nothing was applied"
                )
            }
        }
    }
}

impl std::error::Error for ProtocolError {}
