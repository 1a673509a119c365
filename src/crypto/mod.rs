//! Encryption at rest: keys, key ids, per-file ciphers and sealed objects.
//!
//! One 256-bit key (the application's) encrypts everything a database
//! writes that holds user data: WAL frames, sorted-run frames and change
//! sets. Nothing is encrypted under that key directly. Every file (a
//! segment, a run) and every sealed object (a change set) draws a fresh
//! random 256-bit *salt* when it is created, and is encrypted with AES-256-GCM
//! under its own *file key*, `blake3::derive_key(FILE_KEY_CONTEXT, key ‖
//! domain ‖ salt)`. Inside one file, the 96-bit nonce is the byte offset of
//! the frame (or the index of the chunk) followed by four zero bytes.
//!
//! **Why a nonce can never repeat under one file key.** A file key exists
//! for one file only: its salt is drawn from the operating system's CSPRNG
//! when the file is created, and no file is ever created with a given salt
//! twice except by a 2⁻¹²⁸-likely collision (two copies of a database
//! share the key but draw their own salts, so they never share a file key).
//! Within the file, a nonce is an offset, and each offset is encrypted at
//! most once, because no file is written to again at an offset it has used:
//! a run is written once, start to end, then never changed; a WAL segment is
//! appended to only by the open that created it (a writable open always
//! starts a new segment, so a torn tail cut back after a crash is never
//! overwritten under the old salt); a rewrite (key rotation) writes a new
//! file with a new salt. Binding the offset and the file's identity into
//! the associated data as well means a frame moved to another offset or
//! another file fails authentication.
//!
//! The module does no file I/O and reads no clock: callers hand it bytes.
//! Its only outside input is the CSPRNG, for salts and fresh keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, Zeroizing};

pub use crate::error::KeyId;
use crate::error::{Error, KeyError, Result};

// Hidden: the sealed-file format, `pub` for the fuzz targets and tests.
#[doc(hidden)]
pub mod sealed;

/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a file's salt.
pub const SALT_BYTES: usize = 32;
/// Bytes of the authentication tag after each encrypted frame or chunk.
pub const TAG_BYTES: usize = 16;
/// Bytes of a key block (key id, salt, checksum) in a file header.
pub const KEY_BLOCK_BYTES: usize = 8 + SALT_BYTES + 4;
/// The blake3 context a file key is derived under.
const FILE_KEY_CONTEXT: &str = "mergekv 2026-12-03 file key v1";
/// The blake3 context a key id is derived under.
const KEY_ID_CONTEXT: &str = "mergekv 2026-12-03 key id v1";
/// Largest key file read, in bytes (64 hex digits and some whitespace).
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// A 256-bit encryption key, zeroized when dropped. Its `Debug` shows the
/// key id only.
#[derive(Clone)]
pub struct EncryptionKey {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
    id: KeyId,
}

impl EncryptionKey {
    /// The key made of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let hash = blake3::derive_key(KEY_ID_CONTEXT, bytes.as_slice());
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash[..8]);
        Self {
            bytes,
            id: KeyId(u64::from_le_bytes(id)),
        }
    }

    /// A fresh key from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`KeyError::Invalid`] (in [`Error::Key`]) if the operating system's
    /// random source fails.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|e| {
            Error::Key(KeyError::Invalid {
                source: "the operating system's random source".into(),
                reason: e.to_string(),
            })
        })?;
        Ok(Self::from_bytes(*bytes))
    }

    /// The key spelled as 64 hexadecimal digits (either case; surrounding
    /// whitespace ignored). `source` names where the text came from, for
    /// the error.
    ///
    /// # Errors
    ///
    /// [`KeyError::Invalid`] (in [`Error::Key`]), naming `source`, if `text` is
    /// not 64 hexadecimal digits.
    pub fn from_hex(text: &str, source: &str) -> Result<Self> {
        let invalid = |reason: &str| {
            Error::Key(KeyError::Invalid {
                source: source.to_string(),
                reason: reason.to_string(),
            })
        };
        let text = text.trim();
        if text.len() != 2 * KEY_BYTES {
            return Err(invalid(&format!(
                "a key is {} hexadecimal digits; found {} characters",
                2 * KEY_BYTES,
                text.chars().count()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (
                pair.first().and_then(|c| hex_digit(*c)),
                pair.get(1).and_then(|c| hex_digit(*c)),
            ) else {
                return Err(invalid("a key holds only hexadecimal digits"));
            };
            *byte = (hi << 4) | lo;
        }
        Ok(Self::from_bytes(*bytes))
    }

    /// The key as 64 lowercase hexadecimal digits (zeroized when dropped).
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(2 * KEY_BYTES));
        for b in self.bytes.iter() {
            for digit in [b >> 4, b & 15] {
                out.push(char::from_digit(u32::from(digit), 16).unwrap_or('0'));
            }
        }
        out
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey(id {})", self.id)
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Where a key comes from: given as bytes, read from a file, or read from
/// an environment variable. Resolved when the database opens (a file or
/// variable read then, not when the options are built). A file or a
/// variable holds the key as 64 hexadecimal digits; a file may instead
/// hold exactly 32 raw bytes.
#[derive(Clone)]
pub enum KeySource {
    /// The key itself.
    Key(EncryptionKey),
    /// A file holding the key.
    File(PathBuf),
    /// An environment variable holding the key.
    Env(String),
}

impl KeySource {
    /// The key, read from wherever it is.
    ///
    /// # Errors
    ///
    /// [`KeyError::Invalid`] (in [`Error::Key`]) if the file cannot be read,
    /// the variable is not set or not UTF-8, or the text is not 64 hexadecimal
    /// digits. The key itself is never put in the error.
    pub fn resolve(&self) -> Result<EncryptionKey> {
        match self {
            KeySource::Key(key) => Ok(key.clone()),
            KeySource::File(path) => key_from_file(path),
            KeySource::Env(var) => {
                let source = format!("environment variable {var}");
                // The variable's value is never put in the error: it may
                // be a key (raw bytes are not UTF-8, and std's error for
                // that quotes them).
                let text = std::env::var(var).map_err(|e| {
                    Error::Key(KeyError::Invalid {
                        source: source.clone(),
                        reason: match e {
                            std::env::VarError::NotPresent => "not set".into(),
                            std::env::VarError::NotUnicode(_) => {
                                "not UTF-8 (a key in a variable is 64 hexadecimal digits)".into()
                            }
                        },
                    })
                })?;
                let text = Zeroizing::new(text);
                EncryptionKey::from_hex(&text, &source)
            }
        }
    }
}

impl From<EncryptionKey> for KeySource {
    fn from(key: EncryptionKey) -> Self {
        KeySource::Key(key)
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Key(key) => write!(f, "KeySource::Key(id {})", key.id()),
            KeySource::File(path) => write!(f, "KeySource::File({})", path.display()),
            KeySource::Env(var) => write!(f, "KeySource::Env({var})"),
        }
    }
}

/// Reads a key file: 64 hex digits (whitespace around them ignored) or
/// exactly 32 raw bytes. A key file is configuration, not database state,
/// so it is read directly rather than through the database's I/O seam
/// (there is no database yet when it is read).
fn key_from_file(path: &Path) -> Result<EncryptionKey> {
    let source = format!("key file {}", path.display());
    let invalid = |reason: String| {
        Error::Key(KeyError::Invalid {
            source: source.clone(),
            reason,
        })
    };
    let len = std::fs::metadata(path)
        .map_err(|e| invalid(e.to_string()))?
        .len();
    if len > KEY_FILE_BYTES_MAX {
        return Err(invalid(format!(
            "{len} bytes is too long for a key file (at most {KEY_FILE_BYTES_MAX})"
        )));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| invalid(e.to_string()))?);
    // 32 bytes cannot be 64 hex digits: they are the raw key.
    if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(bytes.as_slice()) {
        return Ok(EncryptionKey::from_bytes(raw));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid("neither 64 hexadecimal digits nor 32 raw bytes".into()))?;
    EncryptionKey::from_hex(text, &source)
}

/// The keys a database holds: the current one (every new file is
/// encrypted with it; `None`: the database is not encrypted) and older
/// ones still needed to read files a rotation has not yet rewritten.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    current: Option<Arc<EncryptionKey>>,
    older: Vec<Arc<EncryptionKey>>,
}

impl Keyring {
    /// A keyring with `current` and the `older` keys (duplicates dropped).
    pub fn new(current: Option<EncryptionKey>, older: Vec<EncryptionKey>) -> Self {
        let mut ring = Self {
            current: current.map(Arc::new),
            older: Vec::new(),
        };
        for key in older {
            ring.add_older(Arc::new(key));
        }
        ring
    }

    /// The key new files are encrypted with.
    pub fn current(&self) -> Option<&Arc<EncryptionKey>> {
        self.current.as_ref()
    }

    /// The current key's id.
    pub fn current_id(&self) -> Option<KeyId> {
        self.current.as_ref().map(|k| k.id())
    }

    /// Every key's id, the current one first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.current
            .iter()
            .chain(self.older.iter())
            .map(|k| k.id())
            .collect()
    }

    /// The key whose id is `id`, if the ring holds it.
    pub fn find(&self, id: KeyId) -> Option<&Arc<EncryptionKey>> {
        self.current
            .iter()
            .chain(self.older.iter())
            .find(|k| k.id() == id)
    }

    /// The same keys with the one whose id is `id` as the current one
    /// (`None`: no current key), the others kept for reading.
    pub fn with_current(&self, id: Option<KeyId>) -> Keyring {
        let mut keys: Vec<Arc<EncryptionKey>> =
            self.current.iter().chain(&self.older).cloned().collect();
        let current = id.and_then(|id| {
            let at = keys.iter().position(|k| k.id() == id)?;
            Some(keys.remove(at))
        });
        Keyring {
            current,
            older: keys,
        }
    }

    /// Makes `key` the current key, keeping the previous one for reading.
    pub fn rotate_to(&mut self, key: EncryptionKey) {
        let id = key.id();
        let previous = self.current.replace(Arc::new(key));
        self.older.retain(|k| k.id() != id);
        if let Some(previous) = previous {
            self.add_older(previous);
        }
    }

    fn add_older(&mut self, key: Arc<EncryptionKey>) {
        if Some(key.id()) != self.current_id() && self.find(key.id()).is_none() {
            self.older.push(key);
        }
    }

    /// The cipher for a file whose key block is `block`, or the typed error
    /// naming the key it needs.
    pub(crate) fn cipher(
        &self,
        block: &KeyBlock,
        domain: Domain,
        path: &Path,
    ) -> Result<FileCipher> {
        match self.find(block.key_id) {
            Some(key) => Ok(FileCipher::new(key, domain, block.salt)),
            None => Err(self.missing(path, block.key_id)),
        }
    }

    /// The error for a file encrypted with `key_id`, a key this ring lacks.
    pub(crate) fn missing(&self, path: &Path, key_id: KeyId) -> Error {
        Error::Key(KeyError::Missing {
            what: path.display().to_string(),
            needed: key_id,
            given: self.ids(),
            rotating_to: None,
        })
    }

    /// A cipher for a new file under the current key, with a fresh salt;
    /// `None` if the ring has no current key (the database is not
    /// encrypted).
    pub(crate) fn fresh_cipher(&self, domain: Domain) -> Result<Option<FileCipher>> {
        match &self.current {
            None => Ok(None),
            Some(key) => Ok(Some(FileCipher::new(key, domain, fresh_salt()?))),
        }
    }
}

/// A shared keyring that a rotation can change while the database runs.
pub type SharedKeyring = Arc<parking_lot::RwLock<Keyring>>;

/// What a file key encrypts; part of its derivation, so one file's key is
/// never another kind's even with the same salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    /// WAL segment frames.
    Wal = 1,
    /// Sorted-run frames.
    Run = 2,
    /// A sealed object (change set, bucket object).
    Sealed = 3,
    /// Snapshot chunks (a replication leader's snapshot for a follower).
    Snapshot = 4,
}

/// A fresh random salt from the operating system's CSPRNG.
pub(crate) fn fresh_salt() -> Result<[u8; SALT_BYTES]> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(|e| {
        Error::Key(KeyError::Invalid {
            source: "the operating system's random source".into(),
            reason: e.to_string(),
        })
    })?;
    Ok(salt)
}

/// The clear part of a file's encryption: which key, and the file's salt.
/// On disk (see `docs/FORMAT.md`, "Key block"): key id u64, salt (32),
/// CRC-32C of those 40 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBlock {
    /// The key the file is encrypted with.
    pub key_id: KeyId,
    /// The file's salt.
    pub salt: [u8; SALT_BYTES],
}

impl KeyBlock {
    /// The block's bytes.
    pub fn encode(&self) -> [u8; KEY_BLOCK_BYTES] {
        let mut out = [0u8; KEY_BLOCK_BYTES];
        out[..8].copy_from_slice(&self.key_id.0.to_le_bytes());
        out[8..8 + SALT_BYTES].copy_from_slice(&self.salt);
        let crc = crc32c::crc32c(&out[..8 + SALT_BYTES]);
        out[8 + SALT_BYTES..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The block at the start of `bytes`; `Err(reason)` if it is short or
    /// its checksum is wrong.
    ///
    /// # Errors
    ///
    /// The reason, if `bytes` are shorter than a key block or its checksum does
    /// not match.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let Some(block) = bytes.get(..KEY_BLOCK_BYTES) else {
            return Err("key block cut short".into());
        };
        let (body, crc) = block.split_at(8 + SALT_BYTES);
        let mut r = crate::codec::Reader::new(crc);
        let stored = r.u32().map_err(|e| e.to_string())?;
        if crc32c::crc32c(body) != stored {
            return Err("key block checksum mismatch".into());
        }
        let mut r = crate::codec::Reader::new(body);
        let key_id = KeyId(r.u64().map_err(|e| e.to_string())?);
        let mut salt = [0u8; SALT_BYTES];
        salt.copy_from_slice(r.take(SALT_BYTES).map_err(|e| e.to_string())?);
        Ok(Self { key_id, salt })
    }
}

/// AES-256-GCM under one file's key. Nonces are the caller's counters
/// (offsets, chunk indexes), unique within the file; see the module docs.
///
/// The bulk cipher is *ring*'s AES-256-GCM (the same algorithm and bytes
/// as the `aes-gcm` crate the auth service uses): on this project's
/// machines it runs at about 8 GB/s against 1.5 GB/s (VAES and
/// VPCLMULQDQ), which is what keeps encryption within a tenth of the
/// speed in clear (`docs/BENCHMARKS.md`, W11). *ring* does not wipe its
/// expanded key schedule when dropped; the derived file key itself is
/// zeroized as soon as the schedule is built, and the application's key
/// lives only in [`EncryptionKey`], which is zeroized.
#[derive(Clone)]
pub struct FileCipher {
    aead: Arc<LessSafeKey>,
    block: KeyBlock,
}

impl FileCipher {
    /// The cipher for the file with `salt`, encrypted with `key`.
    pub(crate) fn new(key: &EncryptionKey, domain: Domain, salt: [u8; SALT_BYTES]) -> Self {
        let mut material = Zeroizing::new(Vec::with_capacity(KEY_BYTES + 1 + SALT_BYTES));
        material.extend_from_slice(key.bytes());
        material.push(domain as u8);
        material.extend_from_slice(&salt);
        let mut file_key = blake3::derive_key(FILE_KEY_CONTEXT, material.as_slice());
        // A 32-byte key is always one AES-256 takes.
        let unbound = UnboundKey::new(&AES_256_GCM, &file_key);
        file_key.zeroize();
        let aead = match unbound {
            Ok(key) => Arc::new(LessSafeKey::new(key)),
            Err(_) => unreachable_key_length(),
        };
        Self {
            aead,
            block: KeyBlock {
                key_id: key.id(),
                salt,
            },
        }
    }

    /// The key block a file encrypted with this cipher carries.
    pub fn key_block(&self) -> KeyBlock {
        self.block
    }

    /// Encrypts `buf` in place and appends the tag.
    pub fn seal(&self, nonce: u64, aad: &[u8], buf: &mut Vec<u8>) {
        let tag = self.aead.seal_in_place_separate_tag(
            nonce_bytes(nonce),
            Aad::from(aad),
            buf.as_mut_slice(),
        );
        // Encryption fails only for a message past GCM's 64 GiB limit,
        // which every caller's frame limit keeps far below.
        match tag {
            Ok(tag) => buf.extend_from_slice(tag.as_ref()),
            Err(_) => {
                debug_assert!(false, "AES-GCM refused a message within the frame limits");
                buf.clear();
            }
        }
    }

    /// Checks and decrypts `buf` (ciphertext then tag) in place, leaving
    /// the plaintext. `Err` if the tag does not match: the bytes were
    /// changed, moved, or encrypted under another key.
    ///
    /// # Errors
    ///
    /// [`Unauthentic`] if `buf` is shorter than a tag or the tag does not
    /// match; `buf` is then unspecified.
    pub fn open(
        &self,
        nonce: u64,
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> std::result::Result<(), Unauthentic> {
        let Some(body_len) = buf.len().checked_sub(TAG_BYTES) else {
            return Err(Unauthentic);
        };
        self.aead
            .open_in_place(nonce_bytes(nonce), Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| Unauthentic)?;
        buf.truncate(body_len);
        Ok(())
    }
}

impl fmt::Debug for FileCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileCipher(key id {})", self.block.key_id)
    }
}

/// A ciphertext's tag did not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unauthentic;

impl fmt::Display for Unauthentic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("authentication failed (changed, moved, or not this file's bytes)")
    }
}

/// The 96-bit nonce for a counter: its 8 bytes little-endian, then four
/// zero bytes. Unique per file by the callers' rule (module docs).
fn nonce_bytes(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// `UnboundKey::new` refuses only a key of the wrong length; ours is 32
/// bytes by its type.
#[cold]
fn unreachable_key_length() -> ! {
    unreachable!("AES-256-GCM takes a 32-byte key")
}

#[cfg(test)]
mod tests;
