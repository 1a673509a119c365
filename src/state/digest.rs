//! The arithmetic of the state digest, kept where the state is, so the
//! digest can follow the state instead of being recomputed over every key.
//!
//! Every key (but those of the `_local` keyspace) falls in one of
//! [`DIGEST_BUCKETS`] buckets, chosen by the top bits of blake3 of its store
//! key. A bucket's sum is the wrapping (mod 2^256) sum of blake3 of each of
//! its keys' records (the key and its whole CRDT state, in the record
//! codec). Addition does not depend on order, and subtraction undoes it, so
//! a sum can be moved from one state to the next by subtracting what a key
//! was and adding what it became.
//!
//! Who keeps which sum:
//! - the runs' sum lives with the runs (`Lower::runs_digest`, and the
//!   manifest): a flush adds what each flushed key became and subtracts
//!   what the runs held for it; a merge that drops tombstones subtracts
//!   them; a follower's install sums its whole new state;
//! - the memtables are folded in when a digest is asked for
//!   ([`super::StateView::digest_sums`]), which costs the keys changed since
//!   the last flush, not the key count.

use crate::codec::Writer;
use crate::crdt::KeyState;
use crate::record::{LOCAL_KEYSPACE, Record, encode_record, split_store_key};

use super::StoreKey;

/// Number of buckets (a power of two).
pub const DIGEST_BUCKETS: usize = 256;

/// The bucket of a store key.
pub fn bucket_of(store_key: &[u8]) -> usize {
    let hash = blake3::hash(store_key);
    let [a, b, ..] = *hash.as_bytes();
    let bucket =
        usize::from(u16::from_be_bytes([a, b])) * DIGEST_BUCKETS / (usize::from(u16::MAX) + 1);
    debug_assert!(bucket < DIGEST_BUCKETS);
    bucket
}

/// True for keys the digest leaves out (this copy's own `_local` keys).
pub fn is_undigested(store_key: &[u8]) -> bool {
    split_store_key(store_key).is_some_and(|(ks, _)| ks == LOCAL_KEYSPACE)
}

/// blake3 of one key's record.
fn entry_hash(key: &StoreKey, state: &KeyState) -> [u8; 32] {
    let mut w = Writer::with_capacity(256);
    encode_record(
        &mut w,
        &Record {
            store_key: key.clone(),
            delta: state.clone(),
        },
    );
    *blake3::hash(w.as_slice()).as_bytes()
}

/// The per-bucket sums of a state, and how many keys it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestSums {
    sums: Vec<[u64; 4]>,
    keys: u64,
}

impl Default for DigestSums {
    fn default() -> Self {
        Self {
            sums: vec![[0; 4]; DIGEST_BUCKETS],
            keys: 0,
        }
    }
}

impl DigestSums {
    /// The sums of an empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sums read back from bytes ([`DigestSums::to_bytes`]); `None` unless
    /// there are exactly [`DIGEST_BUCKETS`] of them.
    pub fn from_parts(buckets: &[[u8; 32]], keys: u64) -> Option<Self> {
        if buckets.len() != DIGEST_BUCKETS {
            return None;
        }
        let sums = buckets.iter().map(from_bytes).collect();
        Some(Self { sums, keys })
    }

    /// Keys counted.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Each bucket's sum as 32 little-endian bytes.
    pub fn buckets(&self) -> Vec<[u8; 32]> {
        self.sums.iter().map(to_bytes).collect()
    }

    /// Counts `key` as holding `state`.
    pub fn add(&mut self, key: &StoreKey, state: &KeyState) {
        if is_undigested(key) {
            return;
        }
        if let Some(sum) = self.sums.get_mut(bucket_of(key)) {
            add(sum, &entry_hash(key, state));
            self.keys += 1;
        }
    }

    /// Stops counting `key` as holding `state` (which it was counted with).
    pub fn sub(&mut self, key: &StoreKey, state: &KeyState) {
        if is_undigested(key) {
            return;
        }
        if let Some(sum) = self.sums.get_mut(bucket_of(key)) {
            add(sum, &negate(&entry_hash(key, state)));
            self.keys = self.keys.wrapping_sub(1);
        }
    }

    /// Moves `key` from `before` (if it was counted) to `after` (if it is
    /// to be), doing nothing if they are equal.
    pub fn replace(&mut self, key: &StoreKey, before: Option<&KeyState>, after: Option<&KeyState>) {
        if before == after {
            return;
        }
        if let Some(before) = before {
            self.sub(key, before);
        }
        if let Some(after) = after {
            self.add(key, after);
        }
    }
}

/// `sum += hash`, as 256-bit little-endian numbers, wrapping.
fn add(sum: &mut [u64; 4], hash: &[u8; 32]) {
    let mut carry = 0u128;
    for (limb, &part) in sum.iter_mut().zip(hash.as_chunks::<8>().0) {
        let total = u128::from(*limb) + u128::from(u64::from_le_bytes(part)) + carry;
        *limb = total as u64;
        carry = total >> 64;
    }
}

/// The two's complement of `hash` as a 256-bit number: adding it subtracts.
fn negate(hash: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 1u16;
    for (o, &b) in out.iter_mut().zip(hash) {
        let v = u16::from(!b) + carry;
        *o = v as u8;
        carry = v >> 8;
    }
    out
}

fn to_bytes(sum: &[u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (part, limb) in out.as_chunks_mut::<8>().0.iter_mut().zip(sum) {
        *part = limb.to_le_bytes();
    }
    out
}

fn from_bytes(bytes: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (limb, part) in out.iter_mut().zip(bytes.as_chunks::<8>().0) {
        *limb = u64::from_le_bytes(*part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Stamp};
    use crate::crdt::Register;

    fn state(v: &str, ms: u64) -> KeyState {
        KeyState {
            register: Some(Register {
                stamp: Stamp {
                    physical_ms: ms,
                    logical: 0,
                    node: NodeId(1),
                },
                value: Some(v.as_bytes().into()),
                floor: Vec::new(),
            }),
            counter: None,
        }
    }

    #[test]
    fn subtracting_undoes_adding_in_any_order() {
        let k = |s: &str| crate::record::store_key("ks", s.as_bytes());
        let mut a = DigestSums::new();
        a.add(&k("x"), &state("1", 1));
        a.add(&k("y"), &state("2", 2));
        let mut b = DigestSums::new();
        b.add(&k("y"), &state("2", 2));
        b.add(&k("z"), &state("3", 3));
        b.add(&k("x"), &state("1", 1));
        b.sub(&k("z"), &state("3", 3));
        assert_eq!(a, b);
        b.replace(&k("x"), Some(&state("1", 1)), Some(&state("9", 9)));
        assert_ne!(a, b);
        b.replace(&k("x"), Some(&state("9", 9)), Some(&state("1", 1)));
        assert_eq!(a, b);
        assert_eq!(DigestSums::from_parts(&a.buckets(), a.keys()), Some(a));
    }

    #[test]
    fn local_keys_are_left_out() {
        let mut a = DigestSums::new();
        a.add(
            &crate::record::store_key(LOCAL_KEYSPACE, b"p"),
            &state("1", 1),
        );
        assert_eq!(a, DigestSums::new());
    }
}
