//! [`Keyspace`]: a handle confined to one keyspace, with the same
//! operations as [`Db`].

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
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.put_in(&self.name, key, value);
        self.single(batch)
    }

    /// Deletes `key` (writes a tombstone); durable on return as
    /// [`Db::write`] says.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.delete_in(&self.name, key);
        self.single(batch)
    }

    /// Adds `delta` to the counter at `key`; the outcome carries the new
    /// value. Durable on return as [`Db::write`] says.
    pub fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<Outcome> {
        let mut batch = Batch::new();
        batch.increment_in(&self.name, key, delta);
        self.single(batch)
    }

    /// Stores a serde value (encoded with the crate's codec) at `key`.
    pub fn put_typed<T: Serialize>(&self, key: impl AsRef<[u8]>, value: &T) -> Result<Outcome> {
        self.put(key, crate::codec::encode_typed(value)?)
    }

    /// Reads a value stored with [`Keyspace::put_typed`].
    pub fn get_typed<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        self.get(key)?
            .map(|b| crate::codec::decode_typed(&b))
            .transpose()
    }

    /// What `key` reads as: bytes, a counter, or nothing. Fails only if a
    /// run could not be read (an I/O error, a damaged file).
    pub fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        let state = self.db.inner.engine.state();
        read::get_value(|k| state.get(k), &self.prefix, key.as_ref())
    }

    /// The bytes at `key`, if it reads as a register value.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Arc<[u8]>>> {
        Ok(match self.get_value(key)? {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        })
    }

    /// The counter at `key` (0 if absent or not a counter).
    pub fn counter(&self, key: impl AsRef<[u8]>) -> Result<i64> {
        Ok(self
            .get_value(key)?
            .and_then(|v| v.as_counter())
            .unwrap_or(0))
    }

    /// Scans this keyspace; the iterator reads a consistent snapshot.
    pub fn scan(&self, opts: &ScanOptions) -> Scan {
        Scan::new(&self.db.inner.engine.state().view(), &self.prefix, opts)
    }

    /// The stamp a register write to `key` carries, if any (for tests and
    /// tools that need to reason about last-writer-wins).
    pub fn stamp_of(&self, key: impl AsRef<[u8]>) -> Result<Option<Stamp>> {
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
