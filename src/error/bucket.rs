//! Errors of bucket sync (`src/bucket/`, feature `object-store`).

use crate::clock::NodeId;

/// Why a sync through an object store failed. Nothing is half applied:
/// every object is checked whole before any of it is imported, and a
/// round that fails is simply run again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BucketError {
    /// The bucket URL is not one this build understands.
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store could not be reached, or kept failing, within the
    /// attempts and deadline (after retries with backoff).
    Unreachable {
        /// The store.
        store: String,
        /// The last failure.
        detail: String,
    },
    /// The store refused the request (credentials, permissions, or an
    /// operation it does not support).
    Refused {
        /// The store.
        store: String,
        /// What it said.
        detail: String,
    },
    /// An object does not hash to what the head naming it says: damaged,
    /// cut short, or replaced. Nothing of it was applied.
    Tampered {
        /// The object's name.
        object: String,
        /// What the head says (blake3, hex).
        expected: String,
        /// What the object hashes to.
        found: String,
    },
    /// A head names an object that is not in the bucket.
    MissingObject {
        /// The object's name.
        object: String,
        /// The head naming it.
        head: String,
    },
    /// An object that is not what its name says (a head or claim that
    /// does not decode, a head for another copy, too large).
    Malformed {
        /// The object's name.
        object: String,
        /// Why.
        reason: String,
    },
    /// Another directory writes under this copy's node id in the bucket
    /// (a copied data directory or a restored backup running beside the
    /// original). Give this one a fresh identity: `mergekv reidentify`
    /// (or open it with `Options::renew_identity`), then sync again.
    CloneDetected {
        /// The node id two directories write under.
        node: NodeId,
        /// What gave it away.
        detail: String,
    },
    /// This copy was silent for longer than the silence horizon, another
    /// copy stopped waiting for it, and tombstones it never saw may have
    /// been collected: merging its state now could bring deleted keys
    /// back. Start a fresh copy from the bucket (`mergekv restore URL
    /// DIR`, or [`crate::Db`] opened on a new directory then synced),
    /// carrying over by hand what this copy wrote offline.
    MustBootstrap {
        /// This copy's node id.
        node: NodeId,
        /// The copy that expelled it.
        expelled_by: NodeId,
    },
    /// A copy syncing for the first time holds writes of its own older than
    /// deletes the bucket's copies may already have forgotten (their
    /// tombstones collected): published, they could bring deleted keys
    /// back. Start a fresh copy from the bucket (`mergekv restore URL
    /// DIR`) and write there again what this one holds, or sync copies
    /// more often than their tombstone grace.
    StaleJoin {
        /// This copy's node id.
        node: NodeId,
        /// Its oldest own write (ms since the epoch).
        oldest_write_ms: u64,
        /// The bucket may have forgotten deletes before this (ms).
        horizon_ms: u64,
    },
    /// The objects of a copy this one still needs were collected, and no
    /// snapshot covers them: the copy cannot catch up from the bucket.
    HistoryGone {
        /// The copy whose objects are gone.
        origin: NodeId,
        /// What this copy had merged from it (publication number).
        merged_seq: u64,
        /// The oldest publication still in the bucket.
        oldest_seq: u64,
    },
    /// `backup` into a bucket this copy syncs through: its head there is a
    /// syncing copy's, which the others wait for; as a backup it would
    /// stop pulling while they go on collecting what it has not merged.
    /// Back it up into a bucket (or prefix) of its own.
    BackupOfSyncingCopy {
        /// This copy's node id.
        node: NodeId,
    },
    /// No snapshot in the bucket is old enough for a point-in-time restore.
    NothingToRestore {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for BucketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BucketError::Url { url, reason } => write!(f, "bucket URL {url:?}: {reason}"),
            BucketError::Unreachable { store, detail } => {
                write!(f, "the object store {store} cannot be reached: {detail}")
            }
            BucketError::Refused { store, detail } => {
                write!(f, "the object store {store} refused: {detail}")
            }
            BucketError::Tampered {
                object,
                expected,
                found,
            } => write!(
                f,
                "bucket object {object} is damaged or was replaced: blake3 {found}, its head says \
                 {expected}; nothing of it was applied"
            ),
            BucketError::MissingObject { object, head } => {
                write!(f, "{head} names {object}, which is not in the bucket")
            }
            BucketError::Malformed { object, reason } => {
                write!(f, "bucket object {object} is malformed: {reason}")
            }
            BucketError::CloneDetected { node, detail } => write!(
                f,
                "another directory syncs under this copy's node id {node} ({detail}): a copied \
                 data directory or a restored backup runs beside the original. Give this copy a \
                 fresh identity with `mergekv reidentify` (Options::renew_identity), then sync again"
            ),
            BucketError::MustBootstrap { node, expelled_by } => write!(
                f,
                "this copy ({node}) was silent past the bucket's horizon and {expelled_by} stopped \
                 waiting for it: deletes it never saw may be forgotten, so its state cannot be \
                 merged. Start a fresh copy with `mergekv restore URL DIR` and carry over by hand \
                 what this one wrote offline"
            ),
            BucketError::StaleJoin {
                node,
                oldest_write_ms,
                horizon_ms,
            } => write!(
                f,
                "this copy ({node}) joins the bucket with writes from {oldest_write_ms} ms, older \
                 than deletes the other copies may have forgotten (before {horizon_ms} ms): \
                 published, they could bring deleted keys back. Start a fresh copy with `mergekv \
                 restore URL DIR` and write there again what this one holds"
            ),
            BucketError::HistoryGone {
                origin,
                merged_seq,
                oldest_seq,
            } => write!(
                f,
                "the bucket no longer holds what this copy lacks from {origin} (merged up to \
                 publication {merged_seq}, the oldest kept is {oldest_seq}) and no snapshot covers \
                 it: start a fresh copy with `mergekv restore URL DIR`"
            ),
            BucketError::BackupOfSyncingCopy { node } => write!(
                f,
                "this copy ({node}) syncs through this bucket: a backup there would stop its \
                 pulling while the others collect what it has not merged. Back it up into a \
                 bucket or prefix of its own"
            ),
            BucketError::NothingToRestore { reason } => write!(f, "nothing to restore: {reason}"),
        }
    }
}

impl std::error::Error for BucketError {}
