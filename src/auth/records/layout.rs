//! The hand-written layouts of the `_auth` records (`docs/FORMAT.md`,
//! "Auth records").
//!
//! Every record starts with a tag byte naming its kind and layout version;
//! integers are fixed-width little-endian; strings and byte strings are a
//! u32 length (checked against a named maximum before anything is taken)
//! then the bytes; an optional field is a presence byte (0 or 1) then the
//! field when present; nothing follows the last field. A later layout of a
//! kind takes a new tag.
//!
//! Records written before 2026-12 were bincode-encoded serde enums whose
//! one variant `V1` has index 0, which bincode writes first as the varint
//! byte 0x00 ([`LEGACY_FIRST_BYTE`]); no tag is 0x00, so the first byte
//! tells a legacy record from a current one (see `legacy`).

use crate::auth::USER_NAME_BYTES_MAX;
use crate::auth::apikey::Scopes;
use crate::auth::crypto::{MASTER_KEY_BYTES, MasterKeyId, NONCE_BYTES, Sealed};
use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result};

use super::{
    ApiKeyRecord, GCM_TAG_BYTES, MasterKeyRecord, Rehash, Revocation, Rotation, UserDeleted,
    UserRecord, WrappedKey, legacy,
};

/// The first byte of every legacy (bincode) auth record: the varint of
/// variant index 0.
pub(super) const LEGACY_FIRST_BYTE: u8 = 0x00;

/// Tag of a secret record ([`super::SecretRecord`], always hand-encoded).
pub(crate) const SECRET_TAG: u8 = 0x01;
/// Tag of a [`UserRecord`], layout 1.
pub(crate) const USER_TAG: u8 = 0x02;
/// Tag of a [`UserDeleted`] marker, layout 1.
pub(crate) const USER_DELETED_TAG: u8 = 0x03;
/// Tag of a [`Rehash`], layout 1.
pub(crate) const REHASH_TAG: u8 = 0x04;
/// Tag of an [`ApiKeyRecord`], layout 1.
pub(crate) const API_KEY_TAG: u8 = 0x05;
/// Tag of a [`Revocation`], layout 1.
pub(crate) const REVOCATION_TAG: u8 = 0x06;
/// Tag of a [`MasterKeyRecord`], layout 1.
pub(crate) const MASTER_KEY_TAG: u8 = 0x07;
/// Tag of a [`WrappedKey`], layout 1.
pub(crate) const WRAPPED_KEY_TAG: u8 = 0x08;
/// Tag of a [`Rotation`], layout 1.
pub(crate) const ROTATION_TAG: u8 = 0x09;

/// Longest argon2id PHC string a record may hold. One at the highest
/// costs a stored hash may name (`m=1048576,t=64,p=64`) with a 64-byte salt
/// and hash is under 250 bytes.
pub(crate) const PHC_BYTES_MAX: usize = 512;
/// Longest wrapped-key ciphertext: a master key and its GCM tag.
pub(crate) const WRAPPED_KEY_CIPHERTEXT_BYTES_MAX: usize = MASTER_KEY_BYTES + GCM_TAG_BYTES;

/// One kind of `_auth` record: its tag, its current layout, and how a
/// legacy record of the kind is read.
pub(crate) trait AuthRecord: Sized {
    /// The tag byte that starts the current layout.
    const TAG: u8;
    /// What the record is, for errors.
    const WHAT: &'static str;
    /// Writes the fields after the tag.
    fn encode_body(&self, w: &mut Writer);
    /// Reads the fields after the tag (the caller checks nothing trails).
    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError>;
    /// Reads a whole legacy (bincode) record of this kind.
    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError>;
}

/// The record's bytes in its current layout.
pub(crate) fn encode<T: AuthRecord>(record: &T) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u8(T::TAG);
    record.encode_body(&mut w);
    w.into_vec()
}

/// Reads a record in its current layout or, if it starts with
/// [`LEGACY_FIRST_BYTE`], as the legacy bincode record of its kind.
///
/// # Errors
///
/// [`Error::Decode`] naming the record kind: empty, another tag, a field
/// cut short or over its limit, or trailing bytes.
pub(crate) fn decode<T: AuthRecord>(bytes: &[u8]) -> Result<T> {
    decode_bytes(bytes).map_err(|e| Error::Decode {
        what: T::WHAT,
        reason: e.to_string(),
    })
}

/// [`decode`] with the reason as a [`DecodeError`].
pub(crate) fn decode_bytes<T: AuthRecord>(bytes: &[u8]) -> std::result::Result<T, DecodeError> {
    let mut r = Reader::new(bytes);
    match r.u8()? {
        LEGACY_FIRST_BYTE => T::decode_legacy(bytes),
        tag if tag == T::TAG => {
            let record = T::decode_body(&mut r)?;
            r.end()?;
            Ok(record)
        }
        tag => Err(Reader::invalid(
            0,
            format!("tag {tag:#04x}, expected {:#04x} ({})", T::TAG, T::WHAT),
        )),
    }
}

fn phc(r: &mut Reader<'_>) -> std::result::Result<String, DecodeError> {
    Ok(r.utf8(PHC_BYTES_MAX, "phc")?.to_owned())
}

fn user_name(r: &mut Reader<'_>) -> std::result::Result<String, DecodeError> {
    Ok(r.utf8(USER_NAME_BYTES_MAX, "user name")?.to_owned())
}

impl AuthRecord for UserRecord {
    const TAG: u8 = USER_TAG;
    const WHAT: &'static str = "user record";

    fn encode_body(&self, w: &mut Writer) {
        w.bytes(&self.user_id);
        w.len_prefixed(self.phc.as_bytes());
        w.bytes(&self.password_id);
        w.u64(self.created_ms);
        w.u64(self.password_changed_ms);
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        Ok(UserRecord {
            user_id: r.array()?,
            phc: phc(r)?,
            password_id: r.array()?,
            created_ms: r.u64()?,
            password_changed_ms: r.u64()?,
        })
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::user(bytes)
    }
}

impl AuthRecord for UserDeleted {
    const TAG: u8 = USER_DELETED_TAG;
    const WHAT: &'static str = "user deletion";

    fn encode_body(&self, w: &mut Writer) {
        w.len_prefixed(self.name.as_bytes());
        w.u64(self.deleted_ms);
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        Ok(UserDeleted {
            name: user_name(r)?,
            deleted_ms: r.u64()?,
        })
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::user_deleted(bytes)
    }
}

impl AuthRecord for Rehash {
    const TAG: u8 = REHASH_TAG;
    const WHAT: &'static str = "rehash record";

    fn encode_body(&self, w: &mut Writer) {
        w.bytes(&self.password_id);
        w.len_prefixed(self.phc.as_bytes());
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        Ok(Rehash {
            password_id: r.array()?,
            phc: phc(r)?,
        })
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::rehash(bytes)
    }
}

impl AuthRecord for ApiKeyRecord {
    const TAG: u8 = API_KEY_TAG;
    const WHAT: &'static str = "API key record";

    fn encode_body(&self, w: &mut Writer) {
        w.len_prefixed(self.user.as_bytes());
        w.bytes(&self.user_id);
        w.u8(self.scopes.bits());
        w.u64(self.created_ms);
        match self.expires_ms {
            None => w.u8(0),
            Some(ms) => {
                w.u8(1);
                w.u64(ms);
            }
        }
        w.bytes(&self.secret_hash);
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        Ok(ApiKeyRecord {
            user: user_name(r)?,
            user_id: r.array()?,
            scopes: Scopes::from_bits(r.u8()?),
            created_ms: r.u64()?,
            expires_ms: if r.present("expires_ms")? {
                Some(r.u64()?)
            } else {
                None
            },
            secret_hash: r.array()?,
        })
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::api_key(bytes)
    }
}

impl AuthRecord for Revocation {
    const TAG: u8 = REVOCATION_TAG;
    const WHAT: &'static str = "API key revocation";

    fn encode_body(&self, w: &mut Writer) {
        w.u64(self.revoked_ms);
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        Ok(Revocation {
            revoked_ms: r.u64()?,
        })
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::revocation(bytes)
    }
}

impl AuthRecord for MasterKeyRecord {
    const TAG: u8 = MASTER_KEY_TAG;
    const WHAT: &'static str = "master key registration";

    fn encode_body(&self, w: &mut Writer) {
        w.u64(self.created_ms);
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        Ok(MasterKeyRecord {
            created_ms: r.u64()?,
        })
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::master_key(bytes)
    }
}

impl AuthRecord for WrappedKey {
    const TAG: u8 = WRAPPED_KEY_TAG;
    const WHAT: &'static str = "wrapped master key";

    fn encode_body(&self, w: &mut Writer) {
        w.bytes(&self.0.nonce);
        w.len_prefixed(&self.0.ciphertext);
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        let nonce: [u8; NONCE_BYTES] = r.array()?;
        let at = r.position();
        let ciphertext = r.len_prefixed(WRAPPED_KEY_CIPHERTEXT_BYTES_MAX, "wrapped key")?;
        if ciphertext.len() < GCM_TAG_BYTES {
            return Err(Reader::invalid(
                at,
                format!("{} bytes of ciphertext, less than a tag", ciphertext.len()),
            ));
        }
        Ok(WrappedKey(Sealed {
            nonce,
            ciphertext: ciphertext.to_vec(),
        }))
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::wrapped_key(bytes)
    }
}

impl AuthRecord for Rotation {
    const TAG: u8 = ROTATION_TAG;
    const WHAT: &'static str = "master key rotation";

    fn encode_body(&self, w: &mut Writer) {
        w.bytes(&self.from.0);
        w.bytes(&self.to.0);
    }

    fn decode_body(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        Ok(Rotation {
            from: MasterKeyId(r.array()?),
            to: MasterKeyId(r.array()?),
        })
    }

    fn decode_legacy(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        legacy::rotation(bytes)
    }
}
