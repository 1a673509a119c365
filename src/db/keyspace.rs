//! [`Keyspace`]: a handle confined to one keyspace, with the same
//! operations as [`Db`].

use std::ops::RangeBounds;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Db;
use super::read::{self, Scan, ScanOptions, Value};
use crate::clock::Stamp;
use crate::command::{Batch, Outcome};
use crate::error::{Error, Result};

/// A named keyspace: the same operations as [`Db`], confined to one
/// namespace. Cheap to clone.
#[derive(Clone)]
pub struct Keyspace {
    pub(super) db: Db,
    pub(super) name: Arc<str>,
    pub(super) prefix: Arc<[u8]>,
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace")
            .field("name", &self.name)
            .finish()
    }
}

impl Keyspace {
    /// The keyspace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn single(&self, batch: Batch) -> Result<Outcome> {
        let mut outcomes = self.db.write(batch)?;
        outcomes.pop().ok_or_else(|| Error::InvalidCommand {
            reason: "no outcome for a single operation".into(),
        })
    }

    /// Puts `value` at `key`; durable on return as [`Db::write`] says.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`](crate::Db::close);
    /// [`Error::ReadOnly`] on a read-only handle or a follower's;
    /// [`Error::LimitExceeded`] for a key or value over its limit;
    /// [`Error::FlushFailed`] if the memtable is full and cannot be written
    /// out; [`Error::Io`] or [`Error::Poisoned`] if writing or syncing the WAL
    /// fails (every later write then fails with `Poisoned` until the database
    /// is reopened).
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.put_in(&self.name, key, value);
        self.single(batch)
    }

    /// Deletes `key` (writes a tombstone); durable on return as
    /// [`Db::write`] says.
    ///
    /// # Errors
    ///
    /// As [`Keyspace::put`].
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.delete_in(&self.name, key);
        self.single(batch)
    }

    /// Adds `delta` to the counter at `key`; the outcome carries the new
    /// value. Durable on return as [`Db::write`] says.
    ///
    /// # Errors
    ///
    /// [`Error::CounterOverflow`] if the counter would leave the range of an
    /// `i64`; otherwise as [`Keyspace::put`].
    pub fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.increment_in(&self.name, key, delta);
        self.single(batch)
    }

    /// Stores a serde value at `key`, encoded with bincode 2 (standard
    /// configuration, little-endian; `docs/FORMAT.md`, "Typed values"):
    /// the one place bincode appears in stored bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] if `value` cannot be encoded; otherwise as
    /// [`Keyspace::put`].
    pub fn put_typed<T: Serialize>(&self, key: impl AsRef<[u8]>, value: &T) -> Result<Outcome> {
        self.put(key, crate::codec::encode_typed(value)?)
    }

    /// Reads a value stored with [`Keyspace::put_typed`] (bincode 2,
    /// standard configuration, little-endian): `None` if the key is absent
    /// or deleted.
    ///
    /// ```
    /// # fn main() -> mergekv::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = mergekv::Db::open(dir.path())?;
    /// let ks = db.keyspace("settings")?;
    /// ks.put_typed("retries", &3u64)?;
    /// assert_eq!(ks.get_typed::<u64>("retries")?, Some(3));
    /// // Another type than the one written: an error naming key and type.
    /// ks.put("name", "Ada")?;
    /// assert!(matches!(
    ///     ks.get_typed::<u64>("name"),
    ///     Err(mergekv::Error::TypedDecode { .. })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::TypedDecode`] if the bytes at `key` do not decode as `T`
    /// (it names the key, the type asked for and the value's length: most
    /// likely the value was not written by `put_typed::<T>`); otherwise as
    /// [`Keyspace::get`].
    pub fn get_typed<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        let key = key.as_ref();
        read::typed_of(self.get(key)?, &self.name, key)
    }

    /// What `key` reads as: bytes, a counter, or nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the database is closed; an I/O or corruption
    /// error if a run could not be read.
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        self.db.check_open()?;
        let state = self.db.inner.engine.state();
        read::get_value(|k| state.get(k), &self.prefix, key.as_ref())
    }

    /// The bytes at `key`: `None` if the key is absent or deleted.
    ///
    /// # Errors
    ///
    /// [`Error::HoldsCounter`] if the key holds a counter (read it with
    /// [`Keyspace::counter`] or [`Keyspace::get_value`]); otherwise as
    /// [`Keyspace::get_value`].
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        let key = key.as_ref();
        read::bytes_of(self.get_value(key)?, &self.name, key)
    }

    /// The counter at `key`: 0 if absent, and 0 as well if the key holds
    /// bytes (use [`Keyspace::get_value`] to tell).
    ///
    /// # Errors
    ///
    /// As [`Keyspace::get_value`].
    pub fn counter(&self, key: impl AsRef<[u8]>) -> Result<i64> {
        Ok(self
            .get_value(key)?
            .and_then(|v| v.as_counter())
            .unwrap_or(0))
    }

    /// Scans this keyspace; the iterator reads a consistent snapshot.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        Scan::new(
            &self.db.inner.engine.state().view(),
            &self.prefix,
            opts,
            &self.db.inner.open,
        )
    }

    /// The keys that start with `prefix`, in order, with their values: the
    /// same as `scan(&ScanOptions::prefix(prefix))`.
    ///
    /// ```
    /// # fn main() -> mergekv::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = mergekv::Db::open(dir.path())?;
    /// let users = db.keyspace("users")?;
    /// users.put("ada", "Ada")?;
    /// users.put("alan", "Alan")?;
    /// users.put("grace", "Grace")?;
    /// let keys = users
    ///     .prefix("a")
    ///     .map(|e| e.map(|e| e.key().to_vec()))
    ///     .collect::<mergekv::Result<Vec<_>>>()?;
    /// assert_eq!(keys, [b"ada".to_vec(), b"alan".to_vec()]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        self.scan(&ScanOptions::prefix(prefix))
    }

    /// The keys in `range`, in order, with their values: any range of
    /// key-like bounds (`"a".."c"`, `"a"..="c"`, `"k"..`, `..b"m".as_slice()`),
    /// the same as `scan(&ScanOptions::from_range(range))`.
    ///
    /// ```
    /// # fn main() -> mergekv::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = mergekv::Db::open(dir.path())?;
    /// let users = db.keyspace("users")?;
    /// for name in ["ada", "alan", "grace"] {
    ///     users.put(name, name)?;
    /// }
    /// let keys = users
    ///     .range("alan"..="grace")
    ///     .map(|e| e.map(|e| e.key().to_vec()))
    ///     .collect::<mergekv::Result<Vec<_>>>()?;
    /// assert_eq!(keys, [b"alan".to_vec(), b"grace".to_vec()]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan {
        self.scan(&ScanOptions::from_range(range))
    }

    /// The stamp a register write to `key` carries, if any (for tests and
    /// tools that need to reason about last-writer-wins).
    ///
    /// # Errors
    ///
    /// As [`Keyspace::get_value`].
    pub fn stamp_of(&self, key: impl AsRef<[u8]>) -> Result<Option<Stamp>> {
        self.db.check_open()?;
        let store_key = [&self.prefix[..], key.as_ref()].concat();
        Ok(self
            .db
            .inner
            .engine
            .state()
            .get(&store_key)?
            .and_then(|s| s.newest_stamp()))
    }
}
