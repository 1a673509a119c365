//! What the auth service stores, and under which keys of `_auth`.
//!
//! Every record has a hand-written layout (`layout`, documented byte by
//! byte in `docs/FORMAT.md`, "Auth records") that starts with a tag byte
//! naming the record's kind and layout version. Records written before
//! 2026-12 were bincode-encoded serde enums; they are still read (`legacy`),
//! never written: the next update of such a record writes the current
//! layout. Key layout (all in keyspace `_auth`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `user/<name>/<user_id hex>` | `UserRecord` | create, password change, reset |
//! | `user-deleted/<user_id hex>` | `UserDeleted` | delete (never removed) |
//! | `user-rehash/<name>` | `Rehash` | verify, when the hash is weak |
//! | `apikey/<key_id hex>` | `ApiKeyRecord` | create |
//! | `apikey-revoked/<key_id hex>` | `Revocation` | revoke (never removed) |
//! | `secret/<user_id hex>/<name>` | `SecretRecord` | put, rotation |
//! | `master/<key_id hex>` | `MasterKeyRecord` | first open, rotation |
//! | `master-wrap/<old hex>/<new hex>` | `WrappedKey` | rotation (never removed) |
//! | `master-rotation` | `Rotation` | rotation start; deleted at its end |
//! | `master-uses/<key_id hex>` | PN-counter | every encryption |
//!
//! Facts that must win over concurrent edits on other copies (a deletion, a
//! revocation) are separate records that nothing overwrites, so no
//! last-writer-wins race can undo them. Each user incarnation has its own
//! record, so a late write to a deleted incarnation can never overwrite a
//! newer one of the same name; when several live incarnations of one name
//! meet (two copies created it while apart), the one created last (then
//! the greater id) is the user, on every copy.

mod layout;
mod legacy;
#[cfg(test)]
mod tests;

pub(crate) use layout::{AuthRecord, decode, encode};

use super::apikey::Scopes;
use super::crypto::{MasterKeyId, NONCE_BYTES, Sealed};
use super::hex_encode;
use crate::Keyspace;
use crate::codec::{Reader, Writer};
use crate::error::Error;
use crate::error::Result;

/// Bytes of a user incarnation id.
pub(crate) const USER_ID_BYTES: usize = 16;

pub(crate) const USER_PREFIX: &str = "user/";
pub(crate) const APIKEY_PREFIX: &str = "apikey/";
pub(crate) const SECRET_PREFIX: &str = "secret/";
pub(crate) const MASTER_PREFIX: &str = "master/";
pub(crate) const WRAP_PREFIX: &str = "master-wrap/";
pub(crate) const ROTATION_KEY: &str = "master-rotation";

/// A user. `user_id` names this incarnation: deleting and re-creating a
/// name makes a new one, which the old one's keys and secrets do not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserRecord {
    pub(crate) user_id: [u8; USER_ID_BYTES],
    /// argon2id PHC string.
    pub(crate) phc: String,
    /// Changes with every password change; a rehash names the one it
    /// replaces, so it can never undo a change.
    pub(crate) password_id: [u8; 16],
    pub(crate) created_ms: u64,
    pub(crate) password_changed_ms: u64,
}

/// Marks a user incarnation as deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserDeleted {
    pub(crate) name: String,
    pub(crate) deleted_ms: u64,
}

/// A stronger hash of the same password, made at a successful verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rehash {
    /// The password it re-hashes (see [`UserRecord::password_id`]).
    pub(crate) password_id: [u8; 16],
    pub(crate) phc: String,
}

/// An API key (the secret itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiKeyRecord {
    pub(crate) user: String,
    pub(crate) user_id: [u8; USER_ID_BYTES],
    pub(crate) scopes: Scopes,
    pub(crate) created_ms: u64,
    pub(crate) expires_ms: Option<u64>,
    pub(crate) secret_hash: [u8; 32],
}

/// Marks an API key as revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Revocation {
    pub(crate) revoked_ms: u64,
}

/// A secret's ciphertext and the master key it is under.
///
/// Always encoded by hand (never bincode, so it has no legacy form): tag
/// u8 (1, `layout::SECRET_TAG`) | key id (8 bytes) | nonce (12 bytes) |
/// ciphertext with its 16-byte tag (the rest).
pub(crate) struct SecretRecord {
    pub(crate) key_id: MasterKeyId,
    pub(crate) sealed: Sealed,
}

const SECRET_RECORD_VERSION: u8 = layout::SECRET_TAG;
/// Bytes of an AES-GCM tag: the shortest possible ciphertext.
const GCM_TAG_BYTES: usize = 16;

impl SecretRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + 8 + NONCE_BYTES + self.sealed.ciphertext.len());
        w.u8(SECRET_RECORD_VERSION);
        w.bytes(&self.key_id.0);
        w.bytes(&self.sealed.nonce);
        w.bytes(&self.sealed.ciphertext);
        w.into_vec()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<SecretRecord> {
        let fail = |reason: String| Error::Decode {
            what: "secret record",
            reason,
        };
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(|e| fail(e.to_string()))?;
        if version != SECRET_RECORD_VERSION {
            return Err(fail(format!("unknown version {version}")));
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(r.take(8).map_err(|e| fail(e.to_string()))?);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(r.take(NONCE_BYTES).map_err(|e| fail(e.to_string()))?);
        let ciphertext = r.take(r.remaining()).map_err(|e| fail(e.to_string()))?;
        if ciphertext.len() < GCM_TAG_BYTES {
            return Err(fail(format!(
                "{} bytes of ciphertext, less than a tag",
                ciphertext.len()
            )));
        }
        Ok(SecretRecord {
            key_id: MasterKeyId(key_id),
            sealed: Sealed {
                nonce,
                ciphertext: ciphertext.to_vec(),
            },
        })
    }

    /// The secret record at `key`, if any.
    pub(crate) fn read(store: &Keyspace, key: &[u8]) -> Result<Option<SecretRecord>> {
        store
            .get(key)?
            .map(|bytes| SecretRecord::decode(&bytes))
            .transpose()
    }
}

/// Registers a master key with the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MasterKeyRecord {
    pub(crate) created_ms: u64,
}

/// An older master key encrypted under its successor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WrappedKey(pub(crate) Sealed);

/// A rotation in progress, from one key to the next. Only the new key can
/// finish it (the new key is never stored under the old one, which is
/// usually the key being retired because it leaked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rotation {
    pub(crate) from: MasterKeyId,
    pub(crate) to: MasterKeyId,
}

/// The prefix of every incarnation of `name` (names cannot hold `/`, so
/// no name's prefix is another's).
pub(crate) fn user_prefix(name: &str) -> Vec<u8> {
    format!("{USER_PREFIX}{name}/").into_bytes()
}

pub(crate) fn user_key(name: &str, user_id: &[u8; USER_ID_BYTES]) -> Vec<u8> {
    format!("{USER_PREFIX}{name}/{}", hex_encode(user_id)).into_bytes()
}

/// The user name in a `user/<name>/<user_id>` key.
pub(crate) fn user_name_of(key: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(key).ok()?;
    text.strip_prefix(USER_PREFIX)?
        .split_once('/')
        .map(|(name, _)| name)
}

pub(crate) fn user_deleted_key(user_id: &[u8; USER_ID_BYTES]) -> Vec<u8> {
    format!("user-deleted/{}", hex_encode(user_id)).into_bytes()
}

pub(crate) fn rehash_key(name: &str) -> Vec<u8> {
    format!("user-rehash/{name}").into_bytes()
}

pub(crate) fn apikey_key(key_id_hex: &str) -> Vec<u8> {
    format!("{APIKEY_PREFIX}{key_id_hex}").into_bytes()
}

pub(crate) fn revoked_key(key_id_hex: &str) -> Vec<u8> {
    format!("apikey-revoked/{key_id_hex}").into_bytes()
}

/// The prefix of every secret of one user incarnation. Keyed by the id,
/// not the name, so a re-created user never sees the old one's secrets.
pub(crate) fn secret_prefix(user_id: &[u8; USER_ID_BYTES]) -> Vec<u8> {
    format!("{SECRET_PREFIX}{}/", hex_encode(user_id)).into_bytes()
}

pub(crate) fn secret_key(user_id: &[u8; USER_ID_BYTES], name: &str) -> Vec<u8> {
    [secret_prefix(user_id), name.as_bytes().to_vec()].concat()
}

/// Splits `secret/<user_id hex>/<name>` back into the id and the name.
pub(crate) fn parse_secret_key(key: &[u8]) -> Option<([u8; USER_ID_BYTES], String)> {
    let text = std::str::from_utf8(key).ok()?;
    let (user_id_hex, name) = text.strip_prefix(SECRET_PREFIX)?.split_once('/')?;
    let mut user_id = [0u8; USER_ID_BYTES];
    super::hex_decode(user_id_hex, &mut user_id).then(|| (user_id, name.to_string()))
}

pub(crate) fn master_key_key(id: MasterKeyId) -> Vec<u8> {
    format!("{MASTER_PREFIX}{id}").into_bytes()
}

pub(crate) fn wrap_key_key(old: MasterKeyId, new: MasterKeyId) -> Vec<u8> {
    format!("{WRAP_PREFIX}{old}/{new}").into_bytes()
}

pub(crate) fn uses_key(id: MasterKeyId) -> Vec<u8> {
    format!("master-uses/{id}").into_bytes()
}

/// Reads and decodes the record at `key`, if any.
pub(crate) fn read<T: AuthRecord>(store: &Keyspace, key: &[u8]) -> Result<Option<T>> {
    store.get(key)?.map(|bytes| decode::<T>(&bytes)).transpose()
}
