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

use crate::codec::Writer;
use crate::error::Result;
use crate::record::{Record, StoreKey, encode_record};
use crate::state::StateView;

/// Number of buckets (a power of two).
pub const DIGEST_BUCKETS: usize = 256;

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

/// The bucket of a store key.
pub fn bucket_of(store_key: &[u8]) -> usize {
    let hash = blake3::hash(store_key);
    let top = u16::from_be_bytes([hash.as_bytes()[0], hash.as_bytes()[1]]) as usize;
    let bucket = top * DIGEST_BUCKETS / (u16::MAX as usize + 1);
    debug_assert!(bucket < DIGEST_BUCKETS);
    bucket
}

/// The digest of the state `view` shows. Fails only if a run could not be
/// read.
pub fn digest(view: &StateView) -> Result<Digest> {
    let mut sums = vec![[0u64; 4]; DIGEST_BUCKETS];
    let mut keys = 0;
    for entry in view.iter() {
        let (key, state) = entry?;
        if super::is_local(&key) {
            continue;
        }
        let (key, state) = (&key, &state);
        let mut w = Writer::with_capacity(256);
        encode_record(
            &mut w,
            &Record {
                store_key: key.clone(),
                delta: state.clone(),
            },
        );
        #[expect(
            clippy::indexing_slicing,
            reason = "bucket_of is below DIGEST_BUCKETS, the length of sums"
        )]
        let sum = &mut sums[bucket_of(key)];
        add(sum, blake3::hash(w.as_slice()).as_bytes());
        keys += 1;
    }
    let buckets: Vec<[u8; 32]> = sums.iter().map(to_bytes).collect();
    let mut root = blake3::Hasher::new();
    for b in &buckets {
        root.update(b);
    }
    Ok(Digest {
        root: *root.finalize().as_bytes(),
        buckets,
        keys,
    })
}

fn add(sum: &mut [u64; 4], hash: &[u8; 32]) {
    let mut carry = 0u128;
    for (limb, &part) in sum.iter_mut().zip(hash.as_chunks::<8>().0) {
        let total = u128::from(*limb) + u128::from(u64::from_le_bytes(part)) + carry;
        *limb = total as u64;
        carry = total >> 64;
    }
}

fn to_bytes(sum: &[u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (part, limb) in out.as_chunks_mut::<8>().0.iter_mut().zip(sum) {
        *part = limb.to_le_bytes();
    }
    out
}

impl Digest {
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
