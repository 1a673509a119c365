//! State digests: a two-level Merkle tree over hash-partitioned key ranges.
//!
//! Every key falls in one of [`DIGEST_BUCKETS`] buckets, chosen by the top
//! bits of blake3 of its store key (so bucket boundaries are the same on
//! every copy, whatever keys it holds). A bucket's hash combines the hashes
//! of its keys' full CRDT states (register, tombstone, counter totals and
//! floor) with wrapping addition, which does not depend on order; the root
//! is blake3 of the bucket hashes in bucket order. Two copies have equal
//! roots exactly when their states are equal (up to hash collisions), and
//! [`Digest::differing_buckets`] says where to look when they are not.

use serde::Serialize;

use crate::error::Result;
use crate::record::StoreKey;
use crate::state::StateView;

pub use crate::state::digest::{DIGEST_BUCKETS, bucket_of};

/// The digest of a whole state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Digest {
    /// The root hash, hex-printable with [`Digest::root_hex`].
    pub root: [u8; 32],
    /// Each bucket's combined hash.
    #[serde(skip)]
    pub buckets: Vec<[u8; 32]>,
    /// Keys (including tombstones) digested.
    pub keys: u64,
}

/// The digest of the state `view` shows: the runs' sums, kept up to date
/// by every flush and merge, with the memtables folded in (see
/// `state::digest`). Fails only if a run could not be read.
///
/// # Errors
///
/// An I/O or corruption error if a run could not be read.
pub fn digest(view: &StateView) -> Result<Digest> {
    Ok(Digest::of_sums(&view.digest_sums()?))
}

/// The digest of the state `view` shows, computed from every key (what
/// [`digest`] must always equal; for tests and `verify`).
///
/// # Errors
///
/// An I/O or corruption error if a run could not be read.
pub fn digest_by_scan(view: &StateView) -> Result<Digest> {
    let mut sums = crate::state::DigestSums::new();
    for entry in view.iter_uncached() {
        let (key, state) = entry?;
        sums.add(&key, &state);
    }
    Ok(Digest::of_sums(&sums))
}

impl Digest {
    /// The digest of bucket sums: the root is blake3 of the bucket sums in
    /// bucket order.
    fn of_sums(sums: &crate::state::DigestSums) -> Digest {
        let buckets = sums.buckets();
        let mut root = blake3::Hasher::new();
        for b in &buckets {
            root.update(b);
        }
        Digest {
            root: *root.finalize().as_bytes(),
            buckets,
            keys: sums.keys(),
        }
    }

    /// The root as 64 hex characters.
    pub fn root_hex(&self) -> String {
        self.root.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The buckets whose contents differ between the two digests.
    pub fn differing_buckets(&self, other: &Digest) -> Vec<usize> {
        (0..DIGEST_BUCKETS)
            .filter(|&i| self.buckets.get(i) != other.buckets.get(i))
            .collect()
    }

    /// True if `key` lies in one of `buckets` (for sending only what differs).
    pub fn in_buckets(key: &StoreKey, buckets: &[usize]) -> bool {
        buckets.binary_search(&bucket_of(key)).is_ok()
    }
}
