//! Reads: values, scans, and consistent views. Reads never go through the
//! workers or the WAL; they look at the state's layers directly.

use std::ops::Bound;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::command::validate_keyspace_name;
use crate::crdt::{KeyState, Visible};
use crate::error::Result;
use crate::record::keyspace_prefix;
use crate::state::{StateView, StoreKey, ViewIter};

/// What a key reads as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A register's bytes.
    Bytes(Arc<[u8]>),
    /// A counter's value.
    Counter(i64),
}

impl Value {
    /// What a whole state reads as, taking its bytes rather than sharing
    /// them (a state read from a run is owned already).
    pub(crate) fn from_state(state: KeyState) -> Option<Value> {
        match state.visible() {
            Visible::Absent => None,
            Visible::Counter(c) => Some(Value::Counter(c)),
            Visible::Bytes(_) => state.register.and_then(|r| r.value).map(Value::Bytes),
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

/// An iterator over a scan's entries, reading from a consistent view of
/// the state (the memtables and runs as they were when the scan began).
/// Each item is an entry, or the error that ended the scan (a run that
/// could not be read): after an error it yields nothing more.
pub struct Scan {
    entries: ViewIter,
    remaining: usize,
    prefix_len: usize,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Scan {
    pub(crate) fn new(view: &StateView, ks_prefix: &[u8], opts: &ScanOptions) -> Self {
        let bounds = bounds_for(ks_prefix, opts);
        Scan {
            entries: view.range_expecting(
                bounds.start,
                bounds.end,
                opts.reverse,
                opts.limit.unwrap_or(usize::MAX),
            ),
            remaining: opts.limit.unwrap_or(usize::MAX),
            prefix_len: ks_prefix.len(),
        }
    }
}

impl Iterator for Scan {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        while self.remaining > 0 {
            let (store_key, state) = match self.entries.next()? {
                Ok(entry) => entry,
                Err(e) => {
                    self.remaining = 0;
                    return Some(Err(e));
                }
            };
            // Keys that read as absent (tombstones) are skipped.
            if let Some(value) = Value::from_state(state) {
                self.remaining -= 1;
                return Some(Ok(Entry {
                    store_key,
                    prefix_len: self.prefix_len,
                    value,
                }));
            }
        }
        None
    }
}

/// Reads of one keyspace against one view; shared by [`crate::Keyspace`]
/// (the live state) and [`ReadView`] (a snapshot).
pub(crate) fn get_value(
    get: impl FnOnce(&[u8]) -> Result<Option<KeyState>>,
    ks_prefix: &[u8],
    key: &[u8],
) -> Result<Option<Value>> {
    // Short keys are built on the stack: no allocation on the read path.
    let store_key = StoreKey::concat(ks_prefix, key);
    Ok(get(store_key.as_slice())?.and_then(Value::from_state))
}

/// A consistent, read-only snapshot of the whole database: every read through
/// it sees the same moment, whatever writers do meanwhile, and the runs it
/// reads stay readable while newer ones are written and merged beneath it.
/// Cheap to take (O(number of runs)); while it lives, writers copy the
/// parts of the memtable they change, and merged-away run files keep their
/// disk space.
#[derive(Clone, Debug)]
pub struct ReadView {
    view: StateView,
}

impl ReadView {
    pub(crate) fn new(view: StateView) -> Self {
        Self { view }
    }

    /// A view of one keyspace within this snapshot.
    pub fn keyspace(&self, name: &str) -> Result<ViewKeyspace<'_>> {
        validate_keyspace_name(name, true)?;
        Ok(ViewKeyspace {
            view: &self.view,
            prefix: keyspace_prefix(name),
        })
    }

    /// The default keyspace within this snapshot.
    pub fn default_keyspace(&self) -> ViewKeyspace<'_> {
        ViewKeyspace {
            view: &self.view,
            prefix: keyspace_prefix(crate::DEFAULT_KEYSPACE),
        }
    }

    /// Reads `key` from the default keyspace.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        self.default_keyspace().get(key)
    }
}

/// One keyspace of a [`ReadView`].
#[derive(Debug)]
pub struct ViewKeyspace<'a> {
    view: &'a StateView,
    prefix: Vec<u8>,
}

impl ViewKeyspace<'_> {
    /// The register value at `key`, if the key reads as bytes.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        Ok(match self.get_value(key)? {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        })
    }
    /// What `key` reads as.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        get_value(|k| self.view.get(k), &self.prefix, key.as_ref())
    }
    /// The counter at `key` (0 if absent or not a counter).
    pub fn counter(&self, key: impl AsRef<[u8]>) -> Result<i64> {
        Ok(self
            .get_value(key)?
            .and_then(|v| v.as_counter())
            .unwrap_or(0))
    }
    /// Scans this keyspace within the snapshot.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        Scan::new(self.view, &self.prefix, opts)
    }
    /// Decodes a typed value stored with `put_typed`.
    pub fn get_typed<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        self.get(key)?
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
