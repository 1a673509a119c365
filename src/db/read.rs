//! Reads: values, scans, and consistent views. Reads never go through the
//! workers; they look at the state map directly.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::command::validate_keyspace_name;
use crate::crdt::{KeyState, Visible};
use crate::error::Result;
use crate::record::keyspace_prefix;
use crate::state::{StateMap, StoreKey};

/// What a key reads as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A register's bytes.
    Bytes(Arc<[u8]>),
    /// A counter's value.
    Counter(i64),
}

impl Value {
    pub(crate) fn from_visible(v: Visible<'_>) -> Option<Value> {
        match v {
            Visible::Absent => None,
            Visible::Bytes(b) => Some(Value::Bytes(b.clone())),
            Visible::Counter(c) => Some(Value::Counter(c)),
        }
    }

    /// The bytes, if this is a register value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::Counter(_) => None,
        }
    }

    /// The counter value, if this is a counter.
    pub fn as_counter(&self) -> Option<i64> {
        match self {
            Value::Counter(c) => Some(*c),
            Value::Bytes(_) => None,
        }
    }

    /// The value as text: the bytes (lossily decoded) or the counter in decimal.
    pub fn to_text(&self) -> String {
        match self {
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Counter(c) => c.to_string(),
        }
    }
}

/// One entry of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    store_key: StoreKey,
    prefix_len: usize,
    value: Value,
}

impl Entry {
    /// The key, within its keyspace.
    pub fn key(&self) -> &[u8] {
        // A scan yields only keys inside its keyspace's range, and every key
        // there starts with the keyspace prefix.
        debug_assert!(self.store_key.len() >= self.prefix_len);
        self.store_key.get(self.prefix_len..).unwrap_or_default()
    }
    /// The value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// Takes the value.
    pub fn into_value(self) -> Value {
        self.value
    }
}

/// What a scan covers. All bounds are within one keyspace and combine: a
/// scan with a prefix and a start sees keys that have the prefix and are at
/// or after the start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Only keys starting with these bytes.
    pub prefix: Option<Vec<u8>>,
    /// Only keys at or after this one (inclusive).
    pub start: Option<Vec<u8>>,
    /// Only keys before this one (exclusive).
    pub end: Option<Vec<u8>>,
    /// Newest-key-first order (descending).
    pub reverse: bool,
    /// At most this many entries.
    pub limit: Option<usize>,
}

impl ScanOptions {
    /// Every key of the keyspace.
    pub fn all() -> Self {
        Self::default()
    }
    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Self {
        Self {
            prefix: Some(prefix.as_ref().to_vec()),
            ..Self::default()
        }
    }
    /// Keys in `start..end`.
    pub fn range(start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Self {
        Self {
            start: Some(start.as_ref().to_vec()),
            end: Some(end.as_ref().to_vec()),
            ..Self::default()
        }
    }
    /// The same scan, in descending order.
    pub fn reversed(mut self) -> Self {
        self.reverse = true;
        self
    }
    /// The same scan, returning at most `limit` entries.
    pub fn limited(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// The smallest byte string greater than every string starting with `p`, or
/// `None` if there is none (all bytes 0xFF).
fn prefix_successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut out = p.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

fn join(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(key);
    out
}

/// Store-key bounds for a scan of the keyspace with store prefix `ks`.
fn bounds_for(ks: &[u8], opts: &ScanOptions) -> KeyBounds {
    let mut start = ks.to_vec();
    let mut end = prefix_successor(ks);
    let mut lower = |candidate: Vec<u8>| {
        if candidate > start {
            start = candidate;
        }
    };
    if let Some(p) = &opts.prefix {
        lower(join(ks, p));
    }
    if let Some(s) = &opts.start {
        lower(join(ks, s));
    }
    let mut upper = |candidate: Option<Vec<u8>>| {
        if let Some(c) = candidate
            && end.as_ref().is_none_or(|e| &c < e)
        {
            end = Some(c);
        }
    };
    if let Some(p) = &opts.prefix {
        upper(prefix_successor(&join(ks, p)));
    }
    if let Some(e) = &opts.end {
        upper(Some(join(ks, e)));
    }
    KeyBounds {
        start: Bound::Included(start),
        end: end.map_or(Bound::Unbounded, Bound::Excluded),
    }
}

/// Entries fetched per refill of a [`Scan`]: enough to amortise the range
/// lookup, small enough that a short scan stays cheap.
const SCAN_CHUNK_ENTRIES: usize = 512;

/// An iterator over a scan's entries, reading from a consistent snapshot.
pub struct Scan {
    map: StateMap,
    bounds: KeyBounds,
    reverse: bool,
    remaining: usize,
    prefix_len: usize,
    buf: VecDeque<(StoreKey, Value)>,
    exhausted: bool,
}

impl Scan {
    pub(crate) fn new(map: StateMap, ks_prefix: &[u8], opts: &ScanOptions) -> Self {
        Scan {
            map,
            bounds: bounds_for(ks_prefix, opts),
            reverse: opts.reverse,
            remaining: opts.limit.unwrap_or(usize::MAX),
            prefix_len: ks_prefix.len(),
            buf: VecDeque::new(),
            exhausted: false,
        }
    }

    fn refill(&mut self) {
        let want = self.remaining.min(SCAN_CHUNK_ENTRIES);
        let mut chunk = Vec::with_capacity(want);
        collect_range(&self.map, &self.bounds, self.reverse, want, &mut chunk);
        if chunk.len() < want {
            self.exhausted = true;
        }
        if let Some((last, _)) = chunk.last() {
            let after = Bound::Excluded(last.to_vec());
            if self.reverse {
                self.bounds.end = after;
            } else {
                self.bounds.start = after;
            }
        }
        self.buf.extend(chunk);
    }
}

impl Iterator for Scan {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.remaining == 0 {
            return None;
        }
        if self.buf.is_empty() && !self.exhausted {
            self.refill();
        }
        let (store_key, value) = self.buf.pop_front()?;
        self.remaining -= 1;
        Some(Entry {
            store_key,
            prefix_len: self.prefix_len,
            value,
        })
    }
}

/// Reads of one keyspace against one map; shared by [`crate::Keyspace`]
/// (live map) and [`ReadView`] (snapshot).
pub(crate) fn get_value(map: &StateMap, ks_prefix: &[u8], key: &[u8]) -> Option<Value> {
    // Short keys are built on the stack: no allocation on the read path.
    let store_key = StoreKey::concat(ks_prefix, key);
    map.get(store_key.as_slice())
        .and_then(|s| Value::from_visible(s.visible()))
}

/// A consistent, read-only snapshot of the whole database: every read through
/// it sees the same moment, whatever writers do meanwhile. Cheap to take
/// (O(1)); while it lives, writers copy the parts of the map they change.
#[derive(Clone)]
pub struct ReadView {
    map: StateMap,
}

impl ReadView {
    pub(crate) fn new(map: StateMap) -> Self {
        Self { map }
    }

    /// A view of one keyspace within this snapshot.
    pub fn keyspace(&self, name: &str) -> Result<ViewKeyspace<'_>> {
        validate_keyspace_name(name, true)?;
        Ok(ViewKeyspace {
            map: &self.map,
            prefix: keyspace_prefix(name),
        })
    }

    /// The default keyspace within this snapshot.
    pub fn default_keyspace(&self) -> ViewKeyspace<'_> {
        ViewKeyspace {
            map: &self.map,
            prefix: keyspace_prefix(crate::DEFAULT_KEYSPACE),
        }
    }

    /// Reads `key` from the default keyspace.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Arc<[u8]>> {
        self.default_keyspace().get(key)
    }
}

/// One keyspace of a [`ReadView`].
pub struct ViewKeyspace<'a> {
    map: &'a StateMap,
    prefix: Vec<u8>,
}

impl ViewKeyspace<'_> {
    /// The register value at `key`, if the key reads as bytes.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Arc<[u8]>> {
        match self.get_value(key) {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        }
    }
    /// What `key` reads as.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Option<Value> {
        get_value(self.map, &self.prefix, key.as_ref())
    }
    /// The counter at `key` (0 if absent or not a counter).
    pub fn counter(&self, key: impl AsRef<[u8]>) -> i64 {
        self.get_value(key)
            .and_then(|v| v.as_counter())
            .unwrap_or(0)
    }
    /// Scans this keyspace within the snapshot.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        Scan::new(self.map.clone(), &self.prefix, opts)
    }
    /// Decodes a typed value stored with `put_typed`.
    pub fn get_typed<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        self.get(key)
            .map(|b| crate::codec::decode_typed(&b))
            .transpose()
    }
}

/// Bounds of a scan over store keys.
#[derive(Clone, Debug)]
pub struct KeyBounds {
    /// Inclusive lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

/// Collects up to `limit` entries in `bounds` from `map`, forwards or
/// backwards, skipping keys that read as absent (tombstones).
pub fn collect_range(
    map: &StateMap,
    bounds: &KeyBounds,
    reverse: bool,
    limit: usize,
    out: &mut Vec<(StoreKey, Value)>,
) {
    let range = map.range::<_, [u8]>((as_slice_bound(&bounds.start), as_slice_bound(&bounds.end)));
    let visible =
        |(k, s): (&StoreKey, &KeyState)| Value::from_visible(s.visible()).map(|v| (k.clone(), v));
    if reverse {
        out.extend(range.rev().filter_map(visible).take(limit));
    } else {
        out.extend(range.filter_map(visible).take(limit));
    }
}

fn as_slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    }

    #[test]
    fn bounds_intersect_prefix_and_range() {
        let ks = keyspace_prefix("k");
        let b = bounds_for(
            &ks,
            &ScanOptions {
                prefix: Some(b"b".to_vec()),
                start: Some(b"a".to_vec()),
                end: Some(b"bz".to_vec()),
                ..Default::default()
            },
        );
        assert_eq!(b.start, Bound::Included(join(&ks, b"b")));
        assert_eq!(b.end, Bound::Excluded(join(&ks, b"bz")));
    }
}
