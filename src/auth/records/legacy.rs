//! Reading `_auth` records written before 2026-12 (read only).
//!
//! Those releases stored each record as a serde enum encoded with bincode 2
//! (standard configuration, little-endian; `docs/FORMAT.md`, "Legacy auth
//! records"). The types below are frozen private copies of those enums and
//! structs, field for field, so that no change to the live types can change
//! how old bytes are read. Every one is an enum whose only variant `V1` has
//! index 0, which bincode writes first as the one-byte varint 0x00: that is
//! how `layout::decode` knows to come here (no current tag is 0x00).
//!
//! Nothing is ever written in this form: the next update of a record (a
//! password change, a rehash, a rotation) writes the current layout.

use serde::{Deserialize, Serialize};

use crate::auth::apikey::Scopes;
use crate::auth::crypto::{MasterKeyId, Sealed};
use crate::codec::{DecodeError, decode_legacy};

use super::{
    ApiKeyRecord, MasterKeyRecord, Rehash, Revocation, Rotation, USER_ID_BYTES, UserDeleted,
    UserRecord, WrappedKey,
};

#[derive(Serialize, Deserialize)]
pub(super) struct UserRecordV1 {
    pub(super) user_id: [u8; USER_ID_BYTES],
    pub(super) phc: String,
    pub(super) password_id: [u8; 16],
    pub(super) created_ms: u64,
    pub(super) password_changed_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredUser {
    V1(UserRecordV1),
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredUserDeleted {
    V1 { name: String, deleted_ms: u64 },
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredRehash {
    V1 { password_id: [u8; 16], phc: String },
}

/// The old `Scopes`: a newtype over the bits (bincode writes the `u8` raw).
#[derive(Serialize, Deserialize)]
pub(super) struct ScopesV1(pub(super) u8);

#[derive(Serialize, Deserialize)]
pub(super) struct ApiKeyRecordV1 {
    pub(super) user: String,
    pub(super) user_id: [u8; USER_ID_BYTES],
    pub(super) scopes: ScopesV1,
    pub(super) created_ms: u64,
    pub(super) expires_ms: Option<u64>,
    pub(super) secret_hash: [u8; 32],
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredApiKey {
    V1(ApiKeyRecordV1),
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredRevocation {
    V1 { revoked_ms: u64 },
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredMasterKey {
    V1 { created_ms: u64 },
}

/// The old `Sealed`.
#[derive(Serialize, Deserialize)]
pub(super) struct SealedV1 {
    pub(super) nonce: [u8; 12],
    pub(super) ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredWrappedKey {
    V1(SealedV1),
}

/// The old `MasterKeyId`.
#[derive(Serialize, Deserialize)]
pub(super) struct MasterKeyIdV1(pub(super) [u8; 8]);

#[derive(Serialize, Deserialize)]
pub(super) enum StoredRotation {
    V1 {
        from: MasterKeyIdV1,
        to: MasterKeyIdV1,
    },
}

pub(super) fn user(bytes: &[u8]) -> Result<UserRecord, DecodeError> {
    let StoredUser::V1(r) = decode_legacy(bytes)?;
    Ok(UserRecord {
        user_id: r.user_id,
        phc: r.phc,
        password_id: r.password_id,
        created_ms: r.created_ms,
        password_changed_ms: r.password_changed_ms,
    })
}

pub(super) fn user_deleted(bytes: &[u8]) -> Result<UserDeleted, DecodeError> {
    let StoredUserDeleted::V1 { name, deleted_ms } = decode_legacy(bytes)?;
    Ok(UserDeleted { name, deleted_ms })
}

pub(super) fn rehash(bytes: &[u8]) -> Result<Rehash, DecodeError> {
    let StoredRehash::V1 { password_id, phc } = decode_legacy(bytes)?;
    Ok(Rehash { password_id, phc })
}

pub(super) fn api_key(bytes: &[u8]) -> Result<ApiKeyRecord, DecodeError> {
    let StoredApiKey::V1(r) = decode_legacy(bytes)?;
    Ok(ApiKeyRecord {
        user: r.user,
        user_id: r.user_id,
        scopes: Scopes::from_bits(r.scopes.0),
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
        secret_hash: r.secret_hash,
    })
}

pub(super) fn revocation(bytes: &[u8]) -> Result<Revocation, DecodeError> {
    let StoredRevocation::V1 { revoked_ms } = decode_legacy(bytes)?;
    Ok(Revocation { revoked_ms })
}

pub(super) fn master_key(bytes: &[u8]) -> Result<MasterKeyRecord, DecodeError> {
    let StoredMasterKey::V1 { created_ms } = decode_legacy(bytes)?;
    Ok(MasterKeyRecord { created_ms })
}

pub(super) fn wrapped_key(bytes: &[u8]) -> Result<WrappedKey, DecodeError> {
    let StoredWrappedKey::V1(SealedV1 { nonce, ciphertext }) = decode_legacy(bytes)?;
    Ok(WrappedKey(Sealed { nonce, ciphertext }))
}

pub(super) fn rotation(bytes: &[u8]) -> Result<Rotation, DecodeError> {
    let StoredRotation::V1 { from, to } = decode_legacy(bytes)?;
    Ok(Rotation {
        from: MasterKeyId(from.0),
        to: MasterKeyId(to.0),
    })
}
