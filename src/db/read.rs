//! Reads: values, scans, and consistent views. Reads never go through the
//! workers or the WAL; they look at the state's layers directly.

use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;

use crate::command::validate_keyspace_name;
use crate::crdt::{KeyState, Visible};
use crate::error::{Error, Result, ShowBytes};
use crate::record::keyspace_prefix;
use crate::state::{StateView, StoreKey, ViewIter};

/// Whether the database reads go through is still open: one flag shared by
/// every clone of a `Db` and by the views, keyspace handles and scans taken
/// from it, so that after [`crate::Db::close`] every read fails with
/// [`Error::Closed`], whichever handle it comes through. A read-only open's
/// flag is never set.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpenFlag {
    closed: Arc<AtomicBool>,
}

impl OpenFlag {
    /// Marks the database closed; true if it was open until now.
    pub(crate) fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// `Err(Error::Closed)` once the database is closed.
    pub(crate) fn check(&self) -> Result<()> {
        // A load of a flag written once: no contention on the read path.
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

/// What a key reads as.
///
/// `Debug` shows bytes readably: `Bytes("Ada")` for UTF-8 text,
/// `Bytes(b"\xff\x00")` otherwise, cut after 64 bytes with the length
/// (`Bytes("aaaa"… (1000 bytes))`).
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bytes(b) => f.debug_tuple("Bytes").field(&ShowBytes(b)).finish(),
            Value::Counter(c) => f.debug_tuple("Counter").field(c).finish(),
        }
    }
}

/// One entry of a scan. `Debug` shows the key readably, like [`Value`].
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    store_key: StoreKey,
    prefix_len: usize,
    value: Value,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &ShowBytes(self.key()))
            .field("value", &self.value)
            .finish()
    }
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
///
/// Build one with [`ScanOptions::all`], [`ScanOptions::prefix`],
/// [`ScanOptions::range`] or [`ScanOptions::from_range`], then
/// [`reversed`](ScanOptions::reversed) and
/// [`limited`](ScanOptions::limited), or assign fields of a mutable value.
/// The struct is `#[non_exhaustive]`: fields can be added in a minor
/// release, so code outside this crate cannot write a struct literal.
///
/// ```
/// use mergekv::ScanOptions;
/// let mut opts = ScanOptions::prefix("user/").reversed();
/// opts.start = Some(b"user/m".to_vec());
/// assert!(opts.reverse);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Keys in `range`, any Rust range of key-like bounds: `"a".."c"`,
    /// `"a"..="c"`, `b"k".to_vec()..`, `..="m"`, or
    /// `(Bound::Excluded("a"), Bound::Unbounded)`. An empty range (its start
    /// after its end) scans nothing.
    ///
    /// ```
    /// use mergekv::ScanOptions;
    /// let opts = ScanOptions::from_range("a"..="c");
    /// assert_eq!(opts.start.as_deref(), Some(&b"a"[..]));
    /// // Inclusive: the end bound is the first key after "c".
    /// assert_eq!(opts.end.as_deref(), Some(&b"c\0"[..]));
    /// ```
    pub fn from_range<K: AsRef<[u8]>>(range: impl RangeBounds<K>) -> Self {
        // Keys are byte strings in lexicographic order: the first key after
        // `k` is `k` followed by a zero byte, so every bound becomes an
        // inclusive start or an exclusive end.
        let after = |k: &K| {
            let mut next = k.as_ref().to_vec();
            next.push(0);
            next
        };
        let start = match range.start_bound() {
            Bound::Included(k) => Some(k.as_ref().to_vec()),
            Bound::Excluded(k) => Some(after(k)),
            Bound::Unbounded => None,
        };
        let end = match range.end_bound() {
            Bound::Included(k) => Some(after(k)),
            Bound::Excluded(k) => Some(k.as_ref().to_vec()),
            Bound::Unbounded => None,
        };
        Self {
            start,
            end,
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
    // A start past the end (`"c".."a"`) scans nothing; the layers' range
    // lookups are never asked for an inverted range.
    if let Some(e) = &end
        && &start > e
    {
        end = Some(start.clone());
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
///
/// Once the database is closed ([`crate::Db::close`]), the next item is
/// `Err(Error::Closed)`, and nothing follows it.
pub struct Scan {
    entries: ViewIter,
    remaining: usize,
    prefix_len: usize,
    open: OpenFlag,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Scan {
    pub(crate) fn new(
        view: &StateView,
        ks_prefix: &[u8],
        opts: &ScanOptions,
        open: &OpenFlag,
    ) -> Self {
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
            open: open.clone(),
        }
    }
}

impl Iterator for Scan {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.remaining > 0
            && let Err(closed) = self.open.check()
        {
            self.remaining = 0;
            return Some(Err(closed));
        }
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

/// What a read of bytes (`get`) returns for what `key` reads as: a counter
/// is [`Error::HoldsCounter`] rather than `None`, which would look like an
/// absent key.
pub(crate) fn bytes_of(
    value: Option<Value>,
    keyspace: &str,
    key: &[u8],
) -> Result<Option<Arc<[u8]>>> {
    match value {
        None => Ok(None),
        Some(Value::Bytes(bytes)) => Ok(Some(bytes)),
        Some(Value::Counter(_)) => Err(Error::HoldsCounter {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
        }),
    }
}

/// What `get_typed::<T>` returns for the bytes at `key`: bytes that do not
/// decode as `T` are [`Error::TypedDecode`], naming the key and the type.
pub(crate) fn typed_of<T: DeserializeOwned>(
    bytes: Option<Arc<[u8]>>,
    keyspace: &str,
    key: &[u8],
) -> Result<Option<T>> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    crate::codec::decode_typed_or_reason(&bytes)
        .map(Some)
        .map_err(|reason| Error::TypedDecode {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            type_name: std::any::type_name::<T>(),
            value_bytes: bytes.len(),
            reason,
        })
}

/// Entries a keyspace listing takes from a memtable per refill while it
/// looks for a keyspace's first live key (past its tombstones).
const KEYSPACE_PROBE_ENTRIES: usize = 16;

/// The names of the keyspaces that hold at least one live key (bytes or a
/// counter; tombstones do not count) in `view`, sorted, without the
/// reserved ones (names starting with `_`, mergekv's own records).
///
/// Store keys are grouped by keyspace, so this reads one live key per
/// keyspace and seeks past the rest of it: O(keyspaces × layers) seeks,
/// plus the tombstones in front of each keyspace's first live key.
pub(crate) fn keyspace_names(view: &StateView) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut from = Bound::Unbounded;
    while let Some(ks_prefix) = next_live_keyspace(view, from)? {
        if let Some(name) = keyspace_name(&ks_prefix)
            && !name.starts_with('_')
        {
            names.push(name.to_string());
        }
        match prefix_successor(&ks_prefix) {
            Some(next) => from = Bound::Included(next),
            None => break,
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// The store prefix of the keyspace of the first live key at or after
/// `from`, if there is one.
fn next_live_keyspace(view: &StateView, from: Bound<Vec<u8>>) -> Result<Option<Vec<u8>>> {
    for entry in view.range_expecting(from, Bound::Unbounded, false, KEYSPACE_PROBE_ENTRIES) {
        let (store_key, state) = entry?;
        if state.visible() == Visible::Absent {
            continue;
        }
        return Ok(Some(store_key_prefix(&store_key).to_vec()));
    }
    Ok(None)
}

/// The keyspace part of a store key (`[len][name]`, `docs/FORMAT.md`); the
/// whole key if it is too short to hold one, so a listing still moves past
/// it.
fn store_key_prefix(store_key: &[u8]) -> &[u8] {
    let name_len = store_key.first().map_or(0, |&len| usize::from(len));
    store_key.get(..1 + name_len).unwrap_or(store_key)
}

/// The name in a keyspace prefix; `None` if it is not a valid name (no
/// handle could open such a keyspace, so a listing leaves it out).
fn keyspace_name(ks_prefix: &[u8]) -> Option<&str> {
    let name = ks_prefix.get(1..).filter(|n| !n.is_empty())?;
    std::str::from_utf8(name).ok()
}

/// A consistent, read-only snapshot of the whole database: every read through
/// it sees the same moment, whatever writers do meanwhile, and the runs it
/// reads stay readable while newer ones are written and merged beneath it.
/// Cheap to take (O(number of runs)); while it lives, writers copy the
/// parts of the memtable they change, and merged-away run files keep their
/// disk space.
///
/// A view of a [`crate::Db`] stops reading when the database is closed:
/// after [`crate::Db::close`], its reads fail with [`Error::Closed`].
#[derive(Clone, Debug)]
pub struct ReadView {
    view: StateView,
    open: OpenFlag,
}

impl ReadView {
    pub(crate) fn new(view: StateView, open: OpenFlag) -> Self {
        Self { view, open }
    }

    /// A view of one keyspace within this snapshot (reserved names, those
    /// starting with `_`, are allowed: a view cannot write).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKeyspace`] for an invalid name; [`Error::Closed`]
    /// once the database is closed.
    pub fn keyspace(&self, name: &str) -> Result<ViewKeyspace<'_>> {
        self.open.check()?;
        validate_keyspace_name(name, true)?;
        Ok(ViewKeyspace {
            view: &self.view,
            prefix: keyspace_prefix(name),
            name: name.to_string(),
            open: &self.open,
        })
    }

    /// The default keyspace within this snapshot.
    pub fn default_keyspace(&self) -> ViewKeyspace<'_> {
        ViewKeyspace {
            view: &self.view,
            prefix: keyspace_prefix(crate::DEFAULT_KEYSPACE),
            name: crate::DEFAULT_KEYSPACE.to_string(),
            open: &self.open,
        }
    }

    /// Reads `key` from the default keyspace, as [`ViewKeyspace::get`].
    ///
    /// # Errors
    ///
    /// As [`ViewKeyspace::get`]: [`Error::HoldsCounter`] if the key holds a
    /// counter, [`Error::Closed`], or a run that could not be read.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        self.default_keyspace().get(key)
    }

    /// What `key` in the default keyspace reads as, as
    /// [`ViewKeyspace::get_value`].
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], or a run that could not be read.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        self.default_keyspace().get_value(key)
    }

    /// Scans the default keyspace within this snapshot.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        self.default_keyspace().scan(opts)
    }

    /// The keys of the default keyspace that start with `prefix`, in
    /// order: the same as `scan(&ScanOptions::prefix(prefix))`.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        self.default_keyspace().prefix(prefix)
    }

    /// The keys of the default keyspace in `range` (`"a".."c"`,
    /// `"a"..="c"`, `"k"..`), in order: the same as
    /// `scan(&ScanOptions::from_range(range))`.
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan {
        self.default_keyspace().range(range)
    }

    /// The names of the keyspaces that hold at least one live key (bytes
    /// or a counter) in this snapshot, sorted. A keyspace whose keys are
    /// all deleted is not listed; the default keyspace is listed (as
    /// [`crate::DEFAULT_KEYSPACE`]) when it holds a key; mergekv's own
    /// reserved keyspaces (names starting with `_`) never are.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], or a run that could not be read.
    pub fn keyspaces(&self) -> Result<Vec<String>> {
        self.open.check()?;
        keyspace_names(&self.view)
    }

    /// The state digest of this snapshot, as [`crate::Db::digest`] computes
    /// it: the runs' kept sums with the memtables folded in.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], or a run that could not be read.
    pub fn digest(&self) -> Result<crate::sync::digest::Digest> {
        self.open.check()?;
        crate::sync::digest::digest(&self.view)
    }

    /// The digest of this snapshot computed afresh from every key, which
    /// [`ReadView::digest`] must equal (O(keys); for tests and audits).
    /// Unlike two calls on a [`crate::Db`], both see the same state: a
    /// merge that collects tombstones between them cannot tell them apart.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], or a run that could not be read.
    pub fn digest_recomputed(&self) -> Result<crate::sync::digest::Digest> {
        self.open.check()?;
        crate::sync::digest::digest_by_scan(&self.view)
    }
}

/// One keyspace of a [`ReadView`].
#[derive(Debug)]
pub struct ViewKeyspace<'a> {
    view: &'a StateView,
    prefix: Vec<u8>,
    name: String,
    open: &'a OpenFlag,
}

impl ViewKeyspace<'_> {
    /// The keyspace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bytes at `key`: `None` if the key is absent or deleted.
    ///
    /// # Errors
    ///
    /// [`Error::HoldsCounter`] if the key holds a counter (read it with
    /// [`ViewKeyspace::counter`] or [`ViewKeyspace::get_value`]);
    /// [`Error::Closed`] once the database is closed; an I/O or
    /// corruption error if a run could not be read.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        let key = key.as_ref();
        bytes_of(self.get_value(key)?, &self.name, key)
    }

    /// What `key` reads as: bytes, a counter, or nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the database is closed; an I/O or corruption
    /// error if a run could not be read.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        self.open.check()?;
        get_value(|k| self.view.get(k), &self.prefix, key.as_ref())
    }

    /// The counter at `key`: 0 if absent, and 0 as well if the key holds
    /// bytes (use [`ViewKeyspace::get_value`] to tell).
    ///
    /// # Errors
    ///
    /// As [`ViewKeyspace::get_value`].
    pub fn counter(&self, key: impl AsRef<[u8]>) -> Result<i64> {
        Ok(self
            .get_value(key)?
            .and_then(|v| v.as_counter())
            .unwrap_or(0))
    }

    /// Scans this keyspace within the snapshot.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        Scan::new(self.view, &self.prefix, opts, self.open)
    }

    /// The keys that start with `prefix`, in order: the same as
    /// `scan(&ScanOptions::prefix(prefix))`.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        self.scan(&ScanOptions::prefix(prefix))
    }

    /// The keys in `range` (`"a".."c"`, `"a"..="c"`, `"k"..`), in order:
    /// the same as `scan(&ScanOptions::from_range(range))`.
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan {
        self.scan(&ScanOptions::from_range(range))
    }

    /// Decodes a typed value stored with `put_typed` (bincode 2, standard
    /// configuration, little-endian; `docs/FORMAT.md`, "Typed values").
    ///
    /// # Errors
    ///
    /// [`Error::TypedDecode`] if the bytes at `key` do not decode as `T`
    /// (it names the key, the type and the value's length: most likely the
    /// value was not written by `put_typed::<T>`); otherwise as
    /// [`ViewKeyspace::get`].
    pub fn get_typed<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        let key = key.as_ref();
        typed_of(self.get(key)?, &self.name, key)
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
