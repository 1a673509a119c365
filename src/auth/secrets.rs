//! Secrets, the master key's lineage, and rotation.
//!
//! Rotation from key A to key B, crash-safe in three steps:
//! 1. One atomic batch registers B, stores A wrapped under B (kept for
//!    good, so data encrypted under A that arrives later from another copy
//!    stays readable), and writes a rotation record naming A and B.
//! 2. Each secret is re-encrypted under B.
//! 3. The rotation record is deleted.
//!
//! If the process dies during step 2, the service reopened with B unwraps A
//! from the wrapped-key record and finishes; reopened with A, it is refused
//! with `MasterKeyRetired` naming B (B is never stored under A: A is
//! usually retired because it leaked). Every secret is readable throughout:
//! it is under A or under B, and B reaches both.
//!
//! A re-encrypted secret is written with the stamp that immediately follows
//! its current one, not a fresh stamp: it is the same write, re-encrypted,
//! so it must win or lose against other copies' changes exactly as the
//! original did. A fresh stamp would let a rotation on one copy undo a
//! newer update or delete made on another copy that it had not yet seen.

use std::collections::{HashMap, HashSet, VecDeque};

use super::crypto::{self, MasterKey, MasterKeyId, SecretBytes, SecretPlace};
use super::records::{self, MasterKeyRecord, Rotation, SecretRecord, WrappedKey};
use super::{
    AUTH_KEYSPACE, AuthError, AuthService, KeyRing, hex_decode, validate_secret_name,
    validate_user_name,
};
use crate::clock::{NodeId, Stamp, WallClock};
use crate::error::{Error, Result};
use crate::{Batch, Keyspace, OutcomeKind, ScanOptions};

/// What a master key rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationReport {
    /// The key rotated away from.
    pub from: MasterKeyId,
    /// The key now in use.
    pub to: MasterKeyId,
    /// Secrets re-encrypted under `to`.
    pub reencrypted: usize,
    /// Secrets left as they were: their user is gone, they do not decode or
    /// decrypt (damaged), a newer write replaced them meanwhile, or the new
    /// key's encryption budget ran out. The old key stays reachable from
    /// the new one, so whatever is readable stays readable.
    pub skipped: usize,
}

impl AuthService {
    /// Encrypts `plaintext` and stores it as `user`'s secret `name`,
    /// replacing any earlier value. The ciphertext is bound to the user
    /// (this incarnation) and the name.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid user or secret name;
    /// [`Error::LimitExceeded`] if `plaintext` is longer than
    /// `secret_bytes_max`; [`AuthError::UnknownUser`] if `user` has no live
    /// user; [`AuthError::MasterKeyRetired`] if another copy rotated past this
    /// service's master key; [`AuthError::NonceLimitReached`] once the key has
    /// made `encryptions_per_key_max` encryptions (rotate it); [`Error::Io`] or
    /// [`Error::Poisoned`] (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn put_secret(&self, user: &str, name: &str, plaintext: &[u8]) -> Result<()> {
        validate_user_name(user)?;
        validate_secret_name(name)?;
        if plaintext.len() > self.options.secret_bytes_max {
            return Err(Error::limit(
                "secret_bytes_max",
                plaintext.len(),
                self.options.secret_bytes_max,
            ));
        }
        let _guard = self.write_lock.lock();
        let owner = self.require_user(user)?;
        let key = self.keys.read().active.clone();
        self.check_not_retired(key.id())?;
        self.check_budget(key.id(), 1)?;
        let place = SecretPlace {
            user_id: &owner.user_id,
            user,
            name,
        };
        let record = SecretRecord {
            key_id: key.id(),
            sealed: crypto::seal_secret(&key, &place, plaintext)?,
        };
        let mut batch = Batch::new();
        batch.put_in(
            AUTH_KEYSPACE,
            records::secret_key(&owner.user_id, name),
            record.encode(),
        );
        batch.increment_in(AUTH_KEYSPACE, records::uses_key(key.id()), 1);
        self.db.write(batch)?;
        Ok(())
    }

    /// Decrypts `user`'s secret `name`. A ciphertext that was altered or
    /// moved from another record fails with [`AuthError::DecryptFailed`].
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid user or secret name;
    /// [`AuthError::UnknownUser`] if `user` has no live user;
    /// [`AuthError::SecretNotFound`] if there is no such secret;
    /// [`AuthError::UnknownMasterKey`] if it is encrypted under a master key
    /// this service cannot reach; [`AuthError::DecryptFailed`] as above; an I/O
    /// or corruption error if the database cannot be read.
    pub fn get_secret(&self, user: &str, name: &str) -> Result<SecretBytes> {
        validate_user_name(user)?;
        validate_secret_name(name)?;
        let owner = self.require_user(user)?;
        let Some(record) =
            SecretRecord::read(&self.store, &records::secret_key(&owner.user_id, name))?
        else {
            return Err(AuthError::SecretNotFound {
                user: user.into(),
                name: name.into(),
            }
            .into());
        };
        let key = self.key_by_id(record.key_id)?;
        let place = SecretPlace {
            user_id: &owner.user_id,
            user,
            name,
        };
        crypto::open_secret(&key, &place, &record.sealed).ok_or_else(|| {
            AuthError::DecryptFailed {
                user: user.into(),
                name: name.into(),
            }
            .into()
        })
    }

    /// Deletes `user`'s secret `name`; false if there was none.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid user or secret name;
    /// [`AuthError::UnknownUser`] if `user` has no live user; [`Error::Io`] or
    /// [`Error::Poisoned`] (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn delete_secret(&self, user: &str, name: &str) -> Result<bool> {
        validate_user_name(user)?;
        validate_secret_name(name)?;
        let _guard = self.write_lock.lock();
        let owner = self.require_user(user)?;
        let key = records::secret_key(&owner.user_id, name);
        if self.store.get(&key)?.is_none() {
            return Ok(false);
        }
        self.store.delete(key)?;
        Ok(true)
    }

    /// The names of `user`'s secrets, in order.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid user name;
    /// [`AuthError::UnknownUser`] if `user` has no live user; an I/O or
    /// corruption error if the database cannot be read.
    pub fn list_secrets(&self, user: &str) -> Result<Vec<String>> {
        validate_user_name(user)?;
        let owner = self.require_user(user)?;
        let mut names = Vec::new();
        for entry in self
            .store
            .scan(&ScanOptions::prefix(records::secret_prefix(&owner.user_id)))
        {
            if let Some((_, name)) = records::parse_secret_key(entry?.key()) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Switches to `new_key`: new secrets are encrypted under it, every
    /// existing secret is re-encrypted, and the old key is kept wrapped
    /// under the new one. Safe against a crash at any point (see the module
    /// docs); after one, reopen with `new_key` to finish. `new_key` must
    /// never have been used by this database.
    ///
    /// Rotate on one copy at a time: copies that rotate concurrently to
    /// different keys each reach only their own key's chain, and a secret
    /// re-encrypted under the other copy's key reads as
    /// [`AuthError::UnknownMasterKey`] until that key is rotated in.
    ///
    /// # Errors
    ///
    /// [`AuthError::MasterKeyReused`] if `new_key` is the current key or was
    /// used before; [`AuthError::NonceLimitReached`] if re-encrypting every
    /// secret would take `new_key` past its budget;
    /// [`AuthError::UnknownMasterKey`] if a secret is under a key this service
    /// cannot reach; [`Error::Io`] or [`Error::Poisoned`] (and the other errors
    /// of [`Db::write`](crate::Db::write)) if the write to the database fails;
    /// a failure part-way leaves a rotation that the next call or open
    /// finishes.
    pub fn rotate_master_key(&self, new_key: MasterKey) -> Result<RotationReport> {
        let _guard = self.write_lock.lock();
        self.finish_rotation_locked()?;
        let old_key = self.keys.read().active.clone();
        let reused = new_key.id() == old_key.id()
            || self
                .store
                .get(records::master_key_key(new_key.id()))?
                .is_some();
        if reused {
            return Err(AuthError::MasterKeyReused {
                key_id: new_key.id().to_string(),
            }
            .into());
        }
        let secrets = self.stale_secrets(new_key.id())?.len() as u64;
        self.check_budget(new_key.id(), secrets.saturating_add(1))?;
        self.begin_rotation(&old_key, &new_key)?;
        {
            let mut ring = self.keys.write();
            ring.reachable.insert(old_key.id(), old_key.clone());
            ring.reachable.insert(new_key.id(), new_key.clone());
            ring.active = new_key;
        }
        self.finish_rotation_locked()?
            .ok_or_else(|| Error::InvalidCommand {
                reason: "the rotation record vanished during the rotation".into(),
            })
    }

    /// Finishes a rotation a crash cut short (called at open).
    pub(crate) fn finish_pending_rotation(&self) -> Result<()> {
        let _guard = self.write_lock.lock();
        self.finish_rotation_locked().map(|_| ())
    }

    /// Step 1 of a rotation: one atomic batch.
    fn begin_rotation(&self, old_key: &MasterKey, new_key: &MasterKey) -> Result<()> {
        let registration = MasterKeyRecord {
            created_ms: self.now_ms(),
        };
        let old_under_new = WrappedKey(crypto::wrap_key(new_key, old_key)?);
        let rotation = Rotation {
            from: old_key.id(),
            to: new_key.id(),
        };
        let mut batch = Batch::new();
        batch
            .put_in(
                AUTH_KEYSPACE,
                records::master_key_key(new_key.id()),
                records::encode(&registration),
            )
            .put_in(
                AUTH_KEYSPACE,
                records::wrap_key_key(old_key.id(), new_key.id()),
                records::encode(&old_under_new),
            )
            .put_in(
                AUTH_KEYSPACE,
                records::ROTATION_KEY,
                records::encode(&rotation),
            )
            .increment_in(AUTH_KEYSPACE, records::uses_key(new_key.id()), 1);
        self.db.write(batch)?;
        Ok(())
    }

    /// Steps 2 and 3, if a rotation to the active key is recorded. The
    /// caller holds the write lock, so no local write interleaves with the
    /// re-encryption. A rotation record naming another key (another copy's
    /// rotation, merged in) is not this service's to finish.
    fn finish_rotation_locked(&self) -> Result<Option<RotationReport>> {
        let Some(Rotation { from, to }) =
            records::read(&self.store, records::ROTATION_KEY.as_bytes())?
        else {
            return Ok(None);
        };
        let active = self.keys.read().active.clone();
        if active.id() != to {
            return Ok(None);
        }
        let mut report = RotationReport {
            from,
            to,
            reencrypted: 0,
            skipped: 0,
        };
        let owners = self.live_incarnations()?;
        for key in self.stale_secrets(to)? {
            if self.reencrypt_one(&key, &active, &owners)? {
                report.reencrypted += 1;
            } else {
                report.skipped += 1;
            }
        }
        self.store.delete(records::ROTATION_KEY)?;
        Ok(Some(report))
    }

    /// The keys of every secret not encrypted under `key_id`.
    fn stale_secrets(&self, key_id: MasterKeyId) -> Result<Vec<Vec<u8>>> {
        let mut stale = Vec::new();
        for entry in self
            .store
            .scan(&ScanOptions::prefix(records::SECRET_PREFIX))
        {
            let entry = entry?;
            let under = entry
                .value()
                .as_bytes()
                .and_then(|bytes| SecretRecord::decode(bytes).ok())
                .map(|record| record.key_id);
            if under != Some(key_id) {
                stale.push(entry.key().to_vec());
            }
        }
        Ok(stale)
    }

    /// Re-encrypts the secret at `key` under `active`, written with the
    /// stamp right after its current one. False if it was left alone
    /// (unreadable, its user gone, over budget, or replaced meanwhile by a
    /// newer write); only a failure of the database itself is an error.
    fn reencrypt_one(
        &self,
        key: &[u8],
        active: &MasterKey,
        owners: &HashMap<[u8; 16], String>,
    ) -> Result<bool> {
        let Some((user_id, name)) = records::parse_secret_key(key) else {
            return Ok(false);
        };
        let (Ok(Some(record)), Some(stamp)) = (
            SecretRecord::read(&self.store, key),
            self.store.stamp_of(key)?,
        ) else {
            return Ok(false);
        };
        let Some(user) = owners.get(&user_id) else {
            return Ok(false);
        };
        let Ok(old_key) = self.key_by_id(record.key_id) else {
            return Ok(false);
        };
        let place = SecretPlace {
            user_id: &user_id,
            user,
            name: &name,
        };
        let Some(plaintext) = crypto::open_secret(&old_key, &place, &record.sealed) else {
            return Ok(false);
        };
        if self.check_budget(active.id(), 1).is_err() {
            return Ok(false);
        }
        let rekeyed = SecretRecord {
            key_id: active.id(),
            sealed: crypto::seal_secret(active, &place, plaintext.expose())?,
        };
        let mut batch = Batch::new();
        batch
            .put_in(AUTH_KEYSPACE, key, rekeyed.encode())
            .with_stamp(stamp_successor(stamp));
        let outcomes = self.db.write(batch)?;
        // The budget counts the encryption whether or not it landed.
        self.store.increment(records::uses_key(active.id()), 1)?;
        Ok(outcomes
            .first()
            .is_some_and(|o| o.kind != OutcomeKind::IgnoredStale))
    }

    /// Every live user's incarnation id and name (read once per rotation,
    /// not once per secret).
    fn live_incarnations(&self) -> Result<HashMap<[u8; 16], String>> {
        let live = self.list_users()?.into_iter().filter_map(|info| {
            let mut id = [0u8; 16];
            hex_decode(&info.user_id, &mut id).then_some((id, info.name))
        });
        Ok(live.collect())
    }

    /// Deletes every secret of one user incarnation, in batches.
    pub(crate) fn delete_all_secrets_of(&self, user_id: &[u8; 16]) -> Result<()> {
        let keys: Vec<Vec<u8>> = self
            .store
            .scan(&ScanOptions::prefix(records::secret_prefix(user_id)))
            .map(|entry| entry.map(|e| e.key().to_vec()))
            .collect::<Result<_>>()?;
        for chunk in keys.chunks(self.options.secret_deletes_per_batch) {
            let mut batch = Batch::new();
            for key in chunk {
                batch.delete_in(AUTH_KEYSPACE, key);
            }
            self.db.write(batch)?;
        }
        Ok(())
    }

    /// The key with id `key_id`, rebuilding the ring once if it is missing
    /// (a merge may have brought in new wrapped keys).
    fn key_by_id(&self, key_id: MasterKeyId) -> Result<MasterKey> {
        if let Some(key) = self.keys.read().reachable.get(&key_id) {
            return Ok(key.clone());
        }
        let mut ring = self.keys.write();
        let KeyRing { active, reachable } = &mut *ring;
        *reachable = reachable_keys(&self.store, active)?;
        reachable.get(&key_id).cloned().ok_or_else(|| {
            AuthError::UnknownMasterKey {
                key_id: key_id.to_string(),
            }
            .into()
        })
    }

    /// Refuses to encrypt under a key another copy has rotated away from.
    fn check_not_retired(&self, key_id: MasterKeyId) -> Result<()> {
        match successor_of(&self.store, key_id)? {
            Some(successor) => Err(AuthError::MasterKeyRetired {
                key_id: key_id.to_string(),
                successor: successor.to_string(),
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Refuses `count` more encryptions under `key_id` past the budget.
    fn check_budget(&self, key_id: MasterKeyId, count: u64) -> Result<()> {
        let used = u64::try_from(self.store.counter(records::uses_key(key_id))?).unwrap_or(0);
        let limit = self.options.encryptions_per_key_max;
        if used.saturating_add(count) > limit {
            return Err(AuthError::NonceLimitReached {
                key_id: key_id.to_string(),
                limit,
            }
            .into());
        }
        Ok(())
    }
}

/// The smallest stamp greater than `stamp`: no real write can fall between
/// the two (node ids are random 64-bit numbers).
fn stamp_successor(stamp: Stamp) -> Stamp {
    match stamp.node.0.checked_add(1) {
        Some(node) => Stamp {
            node: NodeId(node),
            ..stamp
        },
        None => Stamp {
            logical: stamp.logical.saturating_add(1),
            node: NodeId(0),
            ..stamp
        },
    }
}

/// Decides which key the service runs with, given the one it was opened
/// with: registers it on first use, and refuses unknown or retired keys.
pub(crate) fn resolve_master_key(
    store: &Keyspace,
    given: MasterKey,
    clock: &dyn WallClock,
) -> Result<MasterKey> {
    let registered = registered_keys(store)?;
    if registered.is_empty() {
        let registration = MasterKeyRecord {
            created_ms: clock.now_ms(),
        };
        store.put(
            records::master_key_key(given.id()),
            records::encode(&registration),
        )?;
        return Ok(given);
    }
    if !registered.contains(&given.id()) {
        return Err(AuthError::UnknownMasterKey {
            key_id: given.id().to_string(),
        }
        .into());
    }
    if let Some(successor) = successor_of(store, given.id())? {
        return Err(AuthError::MasterKeyRetired {
            key_id: given.id().to_string(),
            successor: successor.to_string(),
        }
        .into());
    }
    Ok(given)
}

/// Every key reachable from `active` by unwrapping, `active` included.
pub(crate) fn reachable_keys(
    store: &Keyspace,
    active: &MasterKey,
) -> Result<HashMap<MasterKeyId, MasterKey>> {
    let wrapped_under = wrapped_keys_by_outer(store)?;
    let mut reachable = HashMap::from([(active.id(), active.clone())]);
    let mut queue = VecDeque::from([active.clone()]);
    while let Some(outer) = queue.pop_front() {
        for (inner_id, sealed) in wrapped_under.get(&outer.id()).into_iter().flatten() {
            if reachable.contains_key(inner_id) {
                continue;
            }
            if let Some(inner) = crypto::unwrap_key(&outer, *inner_id, sealed) {
                reachable.insert(*inner_id, inner.clone());
                queue.push_back(inner);
            }
        }
    }
    Ok(reachable)
}

type WrappedIndex = HashMap<MasterKeyId, Vec<(MasterKeyId, crypto::Sealed)>>;

/// The `master-wrap/<inner>/<outer>` records, indexed by outer key.
fn wrapped_keys_by_outer(store: &Keyspace) -> Result<WrappedIndex> {
    let mut index: WrappedIndex = HashMap::new();
    for entry in store.scan(&ScanOptions::prefix(records::WRAP_PREFIX)) {
        let entry = entry?;
        let Some((inner, outer)) = parse_wrap_key(entry.key()) else {
            continue;
        };
        if let Some(WrappedKey(sealed)) = records::read(store, entry.key())? {
            index.entry(outer).or_default().push((inner, sealed));
        }
    }
    Ok(index)
}

/// The key that replaced `key_id`, if any copy rotated away from it.
fn successor_of(store: &Keyspace, key_id: MasterKeyId) -> Result<Option<MasterKeyId>> {
    let prefix = format!("{}{key_id}/", records::WRAP_PREFIX);
    for entry in store.scan(&ScanOptions::prefix(prefix)) {
        if let Some((_, outer)) = parse_wrap_key(entry?.key()) {
            return Ok(Some(outer));
        }
    }
    Ok(None)
}

fn registered_keys(store: &Keyspace) -> Result<HashSet<MasterKeyId>> {
    let mut keys = HashSet::new();
    for entry in store.scan(&ScanOptions::prefix(records::MASTER_PREFIX)) {
        let entry = entry?;
        let id = std::str::from_utf8(entry.key())
            .ok()
            .and_then(|text| text.strip_prefix(records::MASTER_PREFIX))
            .and_then(parse_key_id);
        keys.extend(id);
    }
    Ok(keys)
}

fn parse_wrap_key(key: &[u8]) -> Option<(MasterKeyId, MasterKeyId)> {
    let text = std::str::from_utf8(key).ok()?;
    let (inner, outer) = text.strip_prefix(records::WRAP_PREFIX)?.split_once('/')?;
    Some((parse_key_id(inner)?, parse_key_id(outer)?))
}

fn parse_key_id(text: &str) -> Option<MasterKeyId> {
    let mut id = [0u8; 8];
    hex_decode(text, &mut id).then_some(MasterKeyId(id))
}
