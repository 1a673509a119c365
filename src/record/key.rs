//! [`StoreKey`]: the state map's key, stored inline when short, and the
//! store key encoding `[name_len: u8][name][key]`, which makes each
//! keyspace one contiguous key range.
//!
//! A lookup in an ordered map compares the probe with about log2(n) keys.
//! If each key lives in its own heap allocation, every comparison is a
//! pointer chase and, on a large map, a cache miss. Typical store keys
//! (keyspace prefix + a short key) fit in [`STORE_KEY_INLINE_BYTES`] bytes
//! and are kept inside the map's nodes; longer keys share one `Arc`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The reserved keyspace holding what is this copy's own (sync cursors,
/// follower positions): never exported, imported or digested.
pub const LOCAL_KEYSPACE: &str = "_local";

/// Longest key kept inline; longer keys go to the heap.
pub const STORE_KEY_INLINE_BYTES: usize = 46;

/// A byte-string key: inline up to [`STORE_KEY_INLINE_BYTES`], shared beyond.
#[derive(Clone)]
pub enum StoreKey {
    /// A short key, stored in place.
    Inline {
        /// Bytes in use.
        len: u8,
        /// The bytes (only `..len` are meaningful).
        bytes: [u8; STORE_KEY_INLINE_BYTES],
    },
    /// A long key, shared.
    Heap(Arc<[u8]>),
}

impl StoreKey {
    /// The key `a ++ b`, without a heap allocation when it fits inline.
    pub fn concat(a: &[u8], b: &[u8]) -> StoreKey {
        let len = a.len() + b.len();
        let mut bytes = [0u8; STORE_KEY_INLINE_BYTES];
        // Both splits succeed exactly when `len <= STORE_KEY_INLINE_BYTES`.
        if let Some((head, rest)) = bytes.split_at_mut_checked(a.len())
            && let Some(tail) = rest.get_mut(..b.len())
        {
            head.copy_from_slice(a);
            tail.copy_from_slice(b);
            StoreKey::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            StoreKey::Heap(Arc::from([a, b].concat()))
        }
    }

    /// The bytes.
    #[expect(
        clippy::indexing_slicing,
        reason = "`concat`, the only constructor, keeps `len` within the array; \
                  this is every key comparison, and `get` cost reads and replay 4-10 %"
    )]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            StoreKey::Inline { len, bytes } => {
                debug_assert!(usize::from(*len) <= STORE_KEY_INLINE_BYTES);
                &bytes[..usize::from(*len)]
            }
            StoreKey::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for StoreKey {
    fn from(bytes: &[u8]) -> Self {
        StoreKey::concat(bytes, &[])
    }
}

impl Deref for StoreKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for StoreKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for StoreKey {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for StoreKey {}

impl PartialOrd for StoreKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StoreKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

/// The key under which the state map stores `key` of `keyspace`:
/// `[name_len: u8][name][key]`, so each keyspace is one contiguous range.
pub fn store_key(keyspace: &str, key: &[u8]) -> StoreKey {
    let name = keyspace.as_bytes();
    // Names longer than 255 bytes are encoded with a zero length so that
    // validation (which runs before anything is stored) can refuse them.
    let name_len = u8::try_from(name.len()).unwrap_or(0);
    let name = if name_len == 0 { &[][..] } else { name };
    let mut prefix = Vec::with_capacity(1 + name.len());
    prefix.push(name_len);
    prefix.extend_from_slice(name);
    StoreKey::concat(&prefix, key)
}

/// The prefix shared by every store key of `keyspace`.
pub fn keyspace_prefix(keyspace: &str) -> Vec<u8> {
    store_key(keyspace, &[]).to_vec()
}

/// Splits a store key into keyspace name and key; `None` if malformed.
pub fn split_store_key(store_key: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = store_key.split_first()?;
    let (name, key) = rest.split_at_checked(usize::from(len))?;
    if len == 0 {
        return None;
    }
    Some((std::str::from_utf8(name).ok()?, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_split_back() {
        let k = store_key("users", b"ada");
        assert_eq!(split_store_key(&k), Some(("users", &b"ada"[..])));
        assert!(k.starts_with(&keyspace_prefix("users")));
        assert!(!k.starts_with(&keyspace_prefix("user")));
        assert_eq!(split_store_key(&[5, b'a']), None);
        assert_eq!(split_store_key(&[0, b'a']), None);
    }

    #[test]
    fn inline_and_heap_keys_compare_by_bytes() {
        let short = StoreKey::concat(b"ab", b"c");
        assert!(matches!(short, StoreKey::Inline { .. }));
        let long = StoreKey::concat(&[b'a'; 40], &[b'z'; 40]);
        assert!(matches!(long, StoreKey::Heap(_)));
        assert_eq!(&*short, b"abc");
        assert!(short > long, "'b' > 'a' at the second byte");
        assert_eq!(StoreKey::from(&b"abc"[..]), short);
        let boundary = StoreKey::from(&[7u8; STORE_KEY_INLINE_BYTES][..]);
        assert!(matches!(boundary, StoreKey::Inline { .. }));
        assert_eq!(boundary.len(), STORE_KEY_INLINE_BYTES);
    }
}
