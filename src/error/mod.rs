//! Public error types.
//!
//! Every variant says what went wrong and where (the file, the offset, the
//! limit), so the one-line message is enough to act on. The library never
//! panics on bad input or damaged files; it returns one of these.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod auth;
mod bucket;
mod show;

use crate::clock::{DriftRejected, NodeId};
pub use auth::AuthError;
pub use bucket::BucketError;
pub(crate) use show::ShowBytes;

/// The kind of file operation an [`Error::Io`] names (mergekv's own tests
/// also make each kind fail on purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Creating or opening a file.
    Open,
    /// Writing bytes to a file.
    Write,
    /// `fsync`/`fdatasync` of a file or a directory.
    Sync,
    /// Renaming a file.
    Rename,
    /// Removing a file.
    Remove,
    /// Truncating a file.
    Truncate,
    /// Reading a file or listing a directory.
    Read,
}

impl IoOp {
    pub(crate) const ALL: [IoOp; 7] = [
        IoOp::Open,
        IoOp::Write,
        IoOp::Sync,
        IoOp::Rename,
        IoOp::Remove,
        IoOp::Truncate,
        IoOp::Read,
    ];

    pub(crate) fn index(self) -> usize {
        // ALL lists the kinds in discriminant order, so the index is below
        // ALL.len(), the length of the per-kind counters.
        debug_assert_eq!(IoOp::ALL.get(self as usize), Some(&self));
        self as usize
    }

    /// The lower-case name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            IoOp::Open => "open",
            IoOp::Write => "write",
            IoOp::Sync => "fsync",
            IoOp::Rename => "rename",
            IoOp::Remove => "remove",
            IoOp::Truncate => "truncate",
            IoOp::Read => "read",
        }
    }
}

/// The public name of a key: the first 8 bytes of a one-way hash of it.
/// Headers carry it in clear so an open can say which key a file needs;
/// it reveals nothing about the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why an encryption key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Something is encrypted with a key that was not given (no key, or
    /// the wrong one, or only the new key while a rotation still needs the
    /// old one).
    Missing {
        /// What needs the key (a file's path, "this change set").
        what: String,
        /// The id of the key it needs.
        needed: KeyId,
        /// The ids of the keys given (empty: none).
        given: Vec<KeyId>,
        /// The key a rotation is moving the database to, if one has not
        /// finished: until it does, the old key is needed too.
        rotating_to: Option<KeyId>,
    },
    /// A key was given for a database that is not encrypted. Encrypt it
    /// with `Db::rotate_encryption_key` (`mergekv rekey`); opening it with
    /// a key would leave what it holds in clear.
    NotEncrypted {
        /// The database directory.
        dir: PathBuf,
    },
    /// A key could not be read or is malformed.
    Invalid {
        /// Where it was read from.
        source: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Missing {
                what,
                needed,
                given,
                rotating_to,
            } => {
                write!(f, "{what} is encrypted with key id {needed}; ")?;
                if given.is_empty() {
                    write!(f, "no key was given")?;
                } else {
                    let ids: Vec<String> = given.iter().map(|id| id.to_string()).collect();
                    write!(f, "the key(s) given have id {}", ids.join(", "))?;
                }
                if let Some(to) = rotating_to {
                    write!(
                        f,
                        " (a rotation to key id {to} has not finished rewriting the files of \
                         key id {needed}: give the old key as well until it has)"
                    )?;
                }
                Ok(())
            }
            KeyError::NotEncrypted { dir } => write!(
                f,
                "{} is not encrypted, but a key was given; encrypt it with \
                 `mergekv rekey` (Db::rotate_encryption_key) first",
                dir.display()
            ),
            KeyError::Invalid { source, reason } => {
                write!(f, "cannot use the key from {source}: {reason}")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mergekv.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    Io {
        /// The operation that failed.
        op: IoOp,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The operating system's error.
        source: Arc<std::io::Error>,
    },
    /// The directory is already open, by this process or another one.
    Locked {
        /// The database directory.
        dir: PathBuf,
    },
    /// The directory holds no database and `create_if_missing` is false.
    NotADatabase {
        /// The directory.
        dir: PathBuf,
    },
    /// A file is damaged in a way recovery must not guess about.
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// The byte offset where the damage starts.
        offset_bytes: u64,
        /// What is wrong there.
        reason: String,
    },
    /// An earlier write or fsync failed; the database refuses further writes
    /// until it is reopened (fail-stop).
    Poisoned {
        /// The failure that poisoned the database.
        cause: Arc<str>,
    },
    /// The database has been closed: [`crate::Db::close`] was called on
    /// this handle or on any clone of it. Every later operation on every
    /// clone (reads, scans and views included) fails with this.
    Closed,
    /// A key, value, batch or name broke a configured limit.
    LimitExceeded {
        /// Which limit (for example `key_size_bytes_max`).
        limit: &'static str,
        /// The size that was asked for.
        actual: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A keyspace name is not valid.
    InvalidKeyspace {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A command is malformed (for example an empty batch).
    InvalidCommand {
        /// Why it was refused.
        reason: String,
    },
    /// A remote stamp is further ahead of the local clock than `max_drift_ms`.
    ClockDrift {
        /// The node that produced the stamp.
        peer: NodeId,
        /// How far ahead of the local physical clock it is, in milliseconds.
        ahead_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
    /// A counter would leave the range of an `i64`.
    CounterOverflow {
        /// The key of the counter.
        key: Vec<u8>,
    },
    /// An auth service operation was refused (see [`AuthError`]). Only the
    /// auth service (feature `auth`) returns it; the variant exists in
    /// every build, so a `match` on `Error` is the same with or without
    /// the feature.
    Auth(AuthError),
    /// The database is read-only: opened with `Options::read_only`, or a
    /// replication follower (whose directory says so until it is promoted).
    ReadOnly {
        /// The database directory.
        dir: PathBuf,
        /// The leader it follows, if it is a follower.
        follower_of: Option<String>,
    },
    /// Reading or writing a change stream (`Db::export_to`,
    /// `Db::import_stream`) failed in the caller's reader or writer.
    Stream {
        /// What was being done.
        what: String,
        /// The reader's or writer's error.
        source: Arc<std::io::Error>,
    },
    /// A network operation (replication) failed.
    Network {
        /// What was being done, with the address.
        what: String,
        /// The operating system's error.
        source: Arc<std::io::Error>,
    },
    /// Incoming changes carry writes stamped with this copy's own node id
    /// that this copy never made: another copy of this database directory
    /// (a copy or a restored backup) runs under the same identity.
    IdentityConflict {
        /// This copy's node id.
        node: NodeId,
        /// What gave the other copy away.
        detail: String,
    },
    /// The memtable is full and writing it out as a run failed (for
    /// example, the disk is full): the write was not taken. It can be
    /// retried once a flush succeeds (the compactor keeps trying).
    FlushFailed {
        /// Why the last flush failed.
        cause: Arc<str>,
    },
    /// An encryption key is missing, wrong, or unreadable (see
    /// [`KeyError`]). Nothing was changed.
    Key(KeyError),
    /// A sync through an object store failed (see [`BucketError`]).
    Bucket(BucketError),
    /// A read of bytes (`get`, `get_typed`) found a counter at the key:
    /// read it with `counter` or `get_value`. A key holds either bytes or
    /// a counter, whichever was written last.
    HoldsCounter {
        /// The keyspace.
        keyspace: String,
        /// The key.
        key: Vec<u8>,
    },
    /// `get_typed::<T>` found bytes at the key that do not decode as `T`:
    /// most likely they were not written by `put_typed::<T>` (a plain
    /// `put`, or `put_typed` of another type).
    TypedDecode {
        /// The keyspace.
        keyspace: String,
        /// The key.
        key: Vec<u8>,
        /// The type asked for (`std::any::type_name`).
        type_name: &'static str,
        /// The length of the stored value.
        value_bytes: usize,
        /// What the decoder found wrong.
        reason: String,
    },
    /// A stored typed value did not decode as the requested type.
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why decoding failed.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: IoOp, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corruption(path: &Path, offset_bytes: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.to_path_buf(),
            offset_bytes,
            reason: reason.into(),
        }
    }

    pub(crate) fn limit(limit: &'static str, actual: usize, max: usize) -> Self {
        Error::LimitExceeded {
            limit,
            actual: actual as u64,
            max: max as u64,
        }
    }

    /// True for errors caused by the data or the disk (exit code 3 in the CLI),
    /// as opposed to a bad request from the caller.
    pub fn is_data_or_io(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Stream { .. }
                | Error::Corruption { .. }
                | Error::Poisoned { .. }
                | Error::FlushFailed { .. }
        )
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { op, path, source } => {
                write!(f, "{} failed on {}: {source}", op.name(), path.display())
            }
            Error::Locked { dir } => write!(
                f,
                "database directory {} is already open (by this or another process)",
                dir.display()
            ),
            Error::NotADatabase { dir } => write!(
                f,
                "{} holds no mergekv database (no META file)",
                dir.display()
            ),
            Error::Corruption {
                path,
                offset_bytes,
                reason,
            } => write!(
                f,
                "{} is damaged at byte {offset_bytes}: {reason}",
                path.display()
            ),
            Error::Poisoned { cause } => write!(
                f,
                "database is poisoned after an earlier failure ({cause}); reopen it to recover"
            ),
            Error::Closed => write!(f, "database is closed"),
            Error::LimitExceeded { limit, actual, max } => {
                write!(f, "{limit} exceeded: {actual} > {max}")
            }
            Error::InvalidKeyspace { name, reason } => {
                write!(f, "invalid keyspace name {name:?}: {reason}")
            }
            Error::InvalidCommand { reason } => write!(f, "invalid command: {reason}"),
            Error::ClockDrift {
                peer,
                ahead_ms,
                max_drift_ms,
            } => write!(
                f,
                "stamp from node {peer} is {ahead_ms} ms ahead of the local clock (max drift {max_drift_ms} ms)"
            ),
            Error::CounterOverflow { key } => write!(
                f,
                "counter {} would overflow an i64",
                String::from_utf8_lossy(key)
            ),
            Error::HoldsCounter { keyspace, key } => write!(
                f,
                "key {} in keyspace {keyspace:?} holds a counter, not bytes; read it with \
                 counter() or get_value()",
                ShowBytes(key)
            ),
            Error::TypedDecode {
                keyspace,
                key,
                type_name,
                value_bytes,
                reason,
            } => write!(
                f,
                "key {} in keyspace {keyspace:?} does not decode as {type_name} \
                 (its value is {value_bytes} bytes; {reason}): the value was probably not \
                 written with put_typed::<{type_name}>",
                ShowBytes(key)
            ),
            Error::Decode { what, reason } => write!(f, "cannot decode {what}: {reason}"),
            Error::Key(e) => write!(f, "{e}"),
            Error::Stream { what, source } => write!(f, "{what} failed: {source}"),
            Error::FlushFailed { cause } => write!(
                f,
                "the memtable is full and writing it out failed ({cause}); the write was not taken"
            ),
            Error::IdentityConflict { node, detail } => write!(
                f,
                "refused: {detail}, under this copy's node id {node}, which it never wrote: \
                 another copy of this database directory (a clone or a restored backup) has written \
                 under the same identity, or this copy lost writes it had made (a power loss under \
                 SyncMode::Interval or Never, or a repair by an older version). Changes made under \
                 one id in two places cannot \
                 be merged safely: open one of the copies with `Options::renew_identity` \
                 (CLI: `mergekv reidentify`) before it writes again, and rebuild it from the other \
                 if its changes under the old id must reach it"
            ),
            Error::Network { what, source } => write!(f, "{what} failed: {source}"),
            Error::ReadOnly {
                dir,
                follower_of: Some(leader),
            } => write!(
                f,
                "database {} is a read-only follower of {leader}; run `mergekv promote` on it to make it writable",
                dir.display()
            ),
            Error::ReadOnly {
                dir,
                follower_of: None,
            } => write!(f, "database {} is open read-only", dir.display()),
            Error::Auth(e) => e.fmt(f),
            Error::Bucket(e) => e.fmt(f),
        }
    }
}

impl From<DriftRejected> for Error {
    fn from(d: DriftRejected) -> Self {
        Error::ClockDrift {
            peer: d.peer,
            ahead_ms: d.ahead_ms,
            max_drift_ms: d.max_drift_ms,
        }
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        Error::Auth(e)
    }
}

impl std::error::Error for Error {
    /// The OS error under `Io`, `Network` and `Stream`. `Auth`, `Key` and
    /// `Bucket` are transparent: their message is the inner error's, so
    /// (like `std::io::Error::other`) their source is the inner error's
    /// source, and a report that walks the chain does not print the same
    /// message twice; match on the variant to reach the inner error.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Auth(e) => std::error::Error::source(e),
            Error::Key(e) => std::error::Error::source(e),
            Error::Bucket(e) => std::error::Error::source(e),
            Error::Io { source, .. }
            | Error::Network { source, .. }
            | Error::Stream { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
