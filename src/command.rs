//! Commands (what callers submit) and outcomes (what they get back).
//!
//! A [`Batch`] is one or more operations committed atomically under one HLC
//! stamp: after a crash either all of it is visible or none. A single `put`
//! is a batch of one. A batch may touch each key once, so that one stamp
//! decides every key unambiguously.

use std::collections::HashSet;
use std::sync::Arc;

use crate::clock::Stamp;
use crate::error::{Error, Result, ShowBytes};
use crate::options::{KEYSPACE_NAME_BYTES_MAX, Options};
use crate::record::{StoreKey, split_store_key, store_key};
pub use crate::state::OutcomeKind;

/// The keyspace used by the methods on [`crate::Db`] itself.
pub const DEFAULT_KEYSPACE: &str = "default";

/// Keyspaces whose name starts with this are reserved for mergekv itself.
pub const RESERVED_KEYSPACE_PREFIX: char = '_';

/// One operation of a batch.
#[derive(Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Sets a register.
    Put(Arc<[u8]>),
    /// Deletes (writes a tombstone).
    Delete,
    /// Adds `delta` to a PN-counter.
    Increment(i64),
}

/// Shows the value readably (`Put("Ada")`, `Put(b"\xff")`), cut when long.
impl std::fmt::Debug for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpKind::Put(value) => f.debug_tuple("Put").field(&ShowBytes(value)).finish(),
            OpKind::Delete => f.write_str("Delete"),
            OpKind::Increment(delta) => f.debug_tuple("Increment").field(delta).finish(),
        }
    }
}

/// An operation on one key of one keyspace.
#[derive(Clone, PartialEq, Eq)]
pub struct Op {
    pub(crate) store_key: StoreKey,
    pub(crate) kind: OpKind,
}

impl Op {
    /// The keyspace the operation targets.
    pub fn keyspace(&self) -> &str {
        split_store_key(&self.store_key).map_or("", |(ks, _)| ks)
    }
    /// The key within the keyspace.
    pub fn key(&self) -> &[u8] {
        split_store_key(&self.store_key).map_or(&[][..], |(_, k)| k)
    }
    /// What the operation does.
    pub fn kind(&self) -> &OpKind {
        &self.kind
    }
}

/// Shows the keyspace and the key readably (`key: "ada"`).
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op")
            .field("keyspace", &self.keyspace())
            .field("key", &ShowBytes(self.key()))
            .field("kind", &self.kind)
            .finish()
    }
}

/// An atomic group of operations, with an optional idempotency key and an
/// optional explicit stamp.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    pub(crate) idempotency_key: Option<Vec<u8>>,
    pub(crate) stamp: Option<Stamp>,
}

/// Shows the operations and the idempotency key readably.
impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("ops", &self.ops)
            .field(
                "idempotency_key",
                &self.idempotency_key.as_deref().map(ShowBytes),
            )
            .field("stamp", &self.stamp)
            .finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `value` at `key` in the default keyspace.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.put_in(DEFAULT_KEYSPACE, key, value)
    }
    /// Deletes `key` in the default keyspace.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.delete_in(DEFAULT_KEYSPACE, key)
    }
    /// Adds `delta` to the counter at `key` in the default keyspace.
    pub fn increment(&mut self, key: impl AsRef<[u8]>, delta: i64) -> &mut Self {
        self.increment_in(DEFAULT_KEYSPACE, key, delta)
    }

    /// Puts `value` at `key` in `keyspace`.
    pub fn put_in(
        &mut self,
        keyspace: &str,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> &mut Self {
        self.push(
            keyspace,
            key.as_ref(),
            OpKind::Put(Arc::from(value.as_ref())),
        )
    }
    /// Deletes `key` in `keyspace`.
    pub fn delete_in(&mut self, keyspace: &str, key: impl AsRef<[u8]>) -> &mut Self {
        self.push(keyspace, key.as_ref(), OpKind::Delete)
    }
    /// Adds `delta` to the counter at `key` in `keyspace`.
    pub fn increment_in(&mut self, keyspace: &str, key: impl AsRef<[u8]>, delta: i64) -> &mut Self {
        self.push(keyspace, key.as_ref(), OpKind::Increment(delta))
    }

    /// Makes the batch idempotent: a retry carrying the same key within the
    /// dedup window returns [`OutcomeKind::Duplicate`] and changes nothing.
    pub fn idempotency_key(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.idempotency_key = Some(key.as_ref().to_vec());
        self
    }

    /// Uses `stamp` (from another node, say) instead of a fresh local one.
    /// It goes through the HLC receive rule and the drift check.
    pub fn with_stamp(&mut self, stamp: Stamp) -> &mut Self {
        self.stamp = Some(stamp);
        self
    }

    /// The operations in submission order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, keyspace: &str, key: &[u8], kind: OpKind) -> &mut Self {
        self.ops.push(Op {
            store_key: store_key(keyspace, key),
            kind,
        });
        self
    }

    /// Checks the batch against the limits in `options`; keyspace names are
    /// checked here too, so a bad name is an error, not a panic.
    pub(crate) fn validate(&self, options: &Options) -> Result<()> {
        if self.ops.is_empty() {
            return Err(Error::InvalidCommand {
                reason: "empty batch".into(),
            });
        }
        if self.ops.len() > options.batch_ops_max {
            return Err(Error::limit(
                "batch_ops_max",
                self.ops.len(),
                options.batch_ops_max,
            ));
        }
        // A single operation cannot repeat a key: skip the set on the hot path.
        let mut seen = HashSet::with_capacity(if self.ops.len() > 1 {
            self.ops.len()
        } else {
            0
        });
        let mut bytes = 0usize;
        for op in &self.ops {
            validate_op(op, options)?;
            bytes += op.store_key.len() + op.value_len();
            if self.ops.len() > 1 && !seen.insert(&op.store_key) {
                return Err(Error::InvalidCommand {
                    reason: format!(
                        "batch touches key {:?} in keyspace {:?} twice",
                        String::from_utf8_lossy(op.key()),
                        op.keyspace()
                    ),
                });
            }
        }
        if bytes > options.batch_bytes_max {
            return Err(Error::limit(
                "batch_bytes_max",
                bytes,
                options.batch_bytes_max,
            ));
        }
        Ok(())
    }
}

impl Op {
    fn value_len(&self) -> usize {
        match &self.kind {
            OpKind::Put(v) => v.len(),
            _ => 0,
        }
    }
}

fn validate_op(op: &Op, options: &Options) -> Result<()> {
    let (keyspace, key) = split_store_key(&op.store_key).ok_or_else(|| Error::InvalidKeyspace {
        name: String::new(),
        reason: "name is longer than 255 bytes",
    })?;
    validate_keyspace_name(keyspace, true)?;
    if key.len() > options.key_size_bytes_max {
        return Err(Error::limit(
            "key_size_bytes_max",
            key.len(),
            options.key_size_bytes_max,
        ));
    }
    if op.value_len() > options.value_size_bytes_max {
        return Err(Error::limit(
            "value_size_bytes_max",
            op.value_len(),
            options.value_size_bytes_max,
        ));
    }
    Ok(())
}

/// Checks a keyspace name: 1 to 64 bytes of ASCII letters, digits, `_`, `-`
/// or `.`; names starting with `_` are reserved unless `allow_reserved`.
///
/// # Errors
///
/// [`Error::InvalidKeyspace`] naming the rule the name breaks.
pub fn validate_keyspace_name(name: &str, allow_reserved: bool) -> Result<()> {
    let refuse = |reason| {
        Err(Error::InvalidKeyspace {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("name is empty");
    }
    if name.len() > KEYSPACE_NAME_BYTES_MAX {
        return refuse("name is longer than 64 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return refuse("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    if !allow_reserved && name.starts_with(RESERVED_KEYSPACE_PREFIX) {
        return refuse("names starting with '_' are reserved for mergekv");
    }
    Ok(())
}

/// The result of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What happened.
    pub kind: OutcomeKind,
    /// The stamp of the write (of the original write, for a duplicate).
    pub stamp: Stamp,
    /// The WAL sequence number of the operation (of the original, for a
    /// duplicate).
    pub seq: u64,
    /// For an increment: the counter's value after it.
    pub counter: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_are_validated() {
        assert!(validate_keyspace_name("users-2.v1", false).is_ok());
        assert!(validate_keyspace_name("", false).is_err());
        assert!(validate_keyspace_name("a b", false).is_err());
        assert!(validate_keyspace_name("_auth", false).is_err());
        assert!(validate_keyspace_name("_auth", true).is_ok());
        assert!(validate_keyspace_name(&"x".repeat(65), false).is_err());
    }

    #[test]
    fn batches_refuse_repeated_keys_and_limits() {
        let options = Options::default();
        let mut b = Batch::new();
        b.put("a", "1").increment("a", 1);
        assert!(matches!(
            b.validate(&options),
            Err(Error::InvalidCommand { .. })
        ));
        assert!(Batch::new().validate(&options).is_err());
        let mut big = Batch::new();
        big.put(vec![0u8; options.key_size_bytes_max + 1], "v");
        assert!(matches!(
            big.validate(&options),
            Err(Error::LimitExceeded { .. })
        ));
        let mut long_name = Batch::new();
        long_name.put_in(&"k".repeat(300), "a", "b");
        assert!(matches!(
            long_name.validate(&options),
            Err(Error::InvalidKeyspace { .. })
        ));
    }
}
