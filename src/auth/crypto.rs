//! AES-256-GCM under the master key: secrets and wrapped keys.
//!
//! Nonces are 96 random bits from the OS generator, fresh for every
//! encryption. Random rather than counter nonces because copies of one
//! database share the master key and write while apart: two copies counting
//! from the same place would reuse nonces, and a reused GCM nonce leaks the
//! authentication key. With random nonces, NIST SP 800-38D bounds one key at
//! 2^32 encryptions (collision chance below 2^-32); the service counts every
//! encryption per key in a PN-counter that merges across copies, and refuses
//! to encrypt past `AuthOptions::encryptions_per_key_max`.
//!
//! Associated data binds each ciphertext to where it belongs, so a
//! ciphertext copied to another record fails authentication:
//! - a secret: `user_id`, user name, secret name and the key id;
//! - a wrapped key: both key ids.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{AuthError, hex_decode, hex_encode, random_bytes};
use crate::error::Result;

/// Bytes in a master key (AES-256).
pub const MASTER_KEY_BYTES: usize = 32;
/// Bytes in a GCM nonce.
pub(crate) const NONCE_BYTES: usize = 12;
/// Domain separation for master key ids.
const KEY_ID_CONTEXT: &str = "mergekv 2026-11 master key id v1";
const SECRET_AAD_TAG: &[u8] = b"mergekv secret v1\0";
const WRAP_AAD_TAG: &[u8] = b"mergekv key wrap v1\0";

/// The public id of a master key: the first 8 bytes of a keyed derivation,
/// so it names the key without revealing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MasterKeyId(pub(crate) [u8; 8]);

impl std::fmt::Display for MasterKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

/// The 32-byte key that encrypts secrets. Zeroized on drop; `Debug` prints
/// only its id.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; MASTER_KEY_BYTES]>,
    id: MasterKeyId,
}

impl MasterKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; MASTER_KEY_BYTES]) -> MasterKey {
        let bytes = Zeroizing::new(bytes);
        let derived = Zeroizing::new(blake3::derive_key(KEY_ID_CONTEXT, &bytes[..]));
        let derived: &[u8; 32] = &derived;
        let mut id = [0u8; 8];
        id.copy_from_slice(&derived[..8]);
        MasterKey {
            bytes,
            id: MasterKeyId(id),
        }
    }

    /// A key from 64 hex characters (either case; surrounding whitespace,
    /// such as a file's trailing newline, is ignored).
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidMasterKey`] if `text` is not 64 hex characters.
    pub fn from_hex(text: &str) -> Result<MasterKey> {
        let trimmed = text.trim();
        let lower = Zeroizing::new(trimmed.to_ascii_lowercase());
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_BYTES]);
        if lower.len() != 2 * MASTER_KEY_BYTES || !hex_decode(&lower, &mut bytes[..]) {
            return Err(AuthError::InvalidMasterKey {
                reason: format!(
                    "expected {} hex characters, got {} characters",
                    2 * MASTER_KEY_BYTES,
                    trimmed.chars().count()
                ),
            }
            .into());
        }
        Ok(MasterKey::from_bytes(*bytes))
    }

    /// A fresh random key.
    ///
    /// # Errors
    ///
    /// [`AuthError::RandomnessUnavailable`] if the operating system's random
    /// source fails.
    pub fn generate() -> Result<MasterKey> {
        let bytes: Zeroizing<[u8; MASTER_KEY_BYTES]> = Zeroizing::new(random_bytes()?);
        Ok(MasterKey::from_bytes(*bytes))
    }

    /// The key as 64 lowercase hex characters (to store it somewhere safe).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex_encode(&self.bytes[..]))
    }

    /// The key's public id.
    pub fn id(&self) -> MasterKeyId {
        self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.bytes[..]))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id={}, <redacted>)", self.id)
    }
}

/// Plaintext secret bytes: zeroized on drop, and `Debug` prints only the
/// length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// The plaintext.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// A nonce and the ciphertext with its 16-byte tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub(crate) nonce: [u8; NONCE_BYTES],
    pub(crate) ciphertext: Vec<u8>,
}

/// Where a secret belongs; all of it goes into the associated data.
pub(crate) struct SecretPlace<'a> {
    pub(crate) user_id: &'a [u8; 16],
    pub(crate) user: &'a str,
    pub(crate) name: &'a str,
}

fn secret_aad(place: &SecretPlace<'_>, key_id: MasterKeyId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + place.user.len() + place.name.len());
    aad.extend_from_slice(SECRET_AAD_TAG);
    aad.extend_from_slice(place.user_id);
    for part in [place.user.as_bytes(), place.name.as_bytes()] {
        aad.extend_from_slice(&(part.len() as u32).to_le_bytes());
        aad.extend_from_slice(part);
    }
    aad.extend_from_slice(&key_id.0);
    aad
}

fn wrap_aad(wrapped: MasterKeyId, wrapping: MasterKeyId) -> Vec<u8> {
    [WRAP_AAD_TAG, &wrapped.0[..], &wrapping.0[..]].concat()
}

fn seal(key: &MasterKey, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
    let nonce: [u8; NONCE_BYTES] = random_bytes()?;
    let ciphertext = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // GCM fails only for messages over 64 GiB, far beyond the limits.
        .map_err(|_| crate::Error::InvalidCommand {
            reason: "AES-GCM refused the message".into(),
        })?;
    // The plaintext and its 16-byte tag: what the secret record decoder expects.
    debug_assert_eq!(ciphertext.len(), plaintext.len() + 16);
    Ok(Sealed { nonce, ciphertext })
}

fn open(key: &MasterKey, sealed: &Sealed, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    key.cipher()
        .decrypt(
            Nonce::from_slice(&sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Encrypts a secret for `place` under `key`.
pub(crate) fn seal_secret(
    key: &MasterKey,
    place: &SecretPlace<'_>,
    plaintext: &[u8],
) -> Result<Sealed> {
    seal(key, plaintext, &secret_aad(place, key.id()))
}

/// Decrypts a secret stored at `place`; `None` if authentication fails.
pub(crate) fn open_secret(
    key: &MasterKey,
    place: &SecretPlace<'_>,
    sealed: &Sealed,
) -> Option<SecretBytes> {
    open(key, sealed, &secret_aad(place, key.id())).map(SecretBytes)
}

/// Encrypts `inner` under `outer`.
pub(crate) fn wrap_key(outer: &MasterKey, inner: &MasterKey) -> Result<Sealed> {
    seal(outer, &inner.bytes[..], &wrap_aad(inner.id(), outer.id()))
}

/// Recovers the key `inner_id` wrapped under `outer`; `None` if the
/// ciphertext does not authenticate or does not hold that key.
pub(crate) fn unwrap_key(
    outer: &MasterKey,
    inner_id: MasterKeyId,
    sealed: &Sealed,
) -> Option<MasterKey> {
    let plain = open(outer, sealed, &wrap_aad(inner_id, outer.id()))?;
    let bytes: [u8; MASTER_KEY_BYTES] = plain.as_slice().try_into().ok()?;
    let key = MasterKey::from_bytes(bytes);
    (key.id() == inner_id).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place<'a>(user: &'a str, name: &'a str) -> SecretPlace<'a> {
        SecretPlace {
            user_id: &[9; 16],
            user,
            name,
        }
    }

    #[test]
    fn a_secret_opens_only_where_it_was_sealed() {
        let key = MasterKey::from_bytes([1; 32]);
        let sealed = seal_secret(&key, &place("alice", "db"), b"hunter2").unwrap();
        let opened = open_secret(&key, &place("alice", "db"), &sealed).unwrap();
        assert_eq!(opened.expose(), b"hunter2");
        assert!(open_secret(&key, &place("bob", "db"), &sealed).is_none());
        assert!(open_secret(&key, &place("alice", "db2"), &sealed).is_none());
        // "ab"+"c" and "a"+"bc" are different places (length prefixes).
        let s2 = seal_secret(&key, &place("ab", "c"), b"x").unwrap();
        assert!(open_secret(&key, &place("a", "bc"), &s2).is_none());
        let other_key = MasterKey::from_bytes([2; 32]);
        assert!(open_secret(&other_key, &place("alice", "db"), &sealed).is_none());
    }

    #[test]
    fn every_flipped_bit_of_a_sealed_secret_is_detected() {
        let key = MasterKey::from_bytes([1; 32]);
        let sealed = seal_secret(&key, &place("u", "n"), b"secret").unwrap();
        for i in 0..sealed.ciphertext.len() * 8 {
            let mut bad = sealed.clone();
            bad.ciphertext[i / 8] ^= 1 << (i % 8);
            assert!(open_secret(&key, &place("u", "n"), &bad).is_none());
        }
        let mut bad_nonce = sealed;
        bad_nonce.nonce[0] ^= 1;
        assert!(open_secret(&key, &place("u", "n"), &bad_nonce).is_none());
    }

    #[test]
    fn wrapped_keys_round_trip_and_are_bound_to_both_ids() {
        let old = MasterKey::from_bytes([1; 32]);
        let new = MasterKey::from_bytes([2; 32]);
        let wrapped = wrap_key(&new, &old).unwrap();
        assert_eq!(unwrap_key(&new, old.id(), &wrapped).unwrap().id(), old.id());
        assert!(unwrap_key(&old, old.id(), &wrapped).is_none());
        assert!(unwrap_key(&new, new.id(), &wrapped).is_none());
    }

    #[test]
    fn hex_keys_parse_and_debug_hides_them() {
        let hex = "00".repeat(31) + "Ff";
        let key = MasterKey::from_hex(&format!("{hex}\n")).unwrap();
        assert_eq!(key.to_hex().as_str(), &hex.to_lowercase());
        assert!(!format!("{key:?}").contains(&hex.to_lowercase()));
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
        let secret = SecretBytes(Zeroizing::new(b"pw".to_vec()));
        assert_eq!(format!("{secret:?}"), "SecretBytes(<2 bytes redacted>)");
    }
}
