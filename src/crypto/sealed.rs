//! Sealed objects: a whole byte string (a change set; later, a bucket
//! object) encrypted as a stream of chunks. Layout in `docs/FORMAT.md`,
//! "Sealed object".
//!
//! The header is in clear and says only what the object is and which key
//! sealed it. The plaintext is cut into chunks of `chunk_bytes`, each
//! encrypted under the object's file key with its index as the nonce and,
//! as associated data, the header and whether it is the last chunk: a
//! chunk moved, dropped, repeated, or a stream cut at a chunk boundary
//! fails authentication. The chunking lets a reader check and use a large
//! object piece by piece.

use crate::error::{Error, KeyError, Result};

use super::{Domain, FileCipher, KeyBlock, KeyId, Keyring, SALT_BYTES, TAG_BYTES, fresh_salt};

/// First eight bytes of a sealed object.
pub const SEALED_MAGIC: [u8; 8] = *b"MKVSEAL\x01";
/// Version of the layout described here.
pub const SEALED_FORMAT_VERSION: u16 = 1;
/// Byte offset of the version field.
pub const SEALED_VERSION_OFFSET: usize = SEALED_MAGIC.len();
/// Byte offset of the kind field.
pub const SEALED_KIND_OFFSET: usize = SEALED_VERSION_OFFSET + 2;
/// Byte offset of the flags field.
pub const SEALED_FLAGS_OFFSET: usize = SEALED_KIND_OFFSET + 1;
/// Byte offset of the key id.
pub const SEALED_KEY_ID_OFFSET: usize = SEALED_FLAGS_OFFSET + 1;
/// Byte offset of the salt.
pub const SEALED_SALT_OFFSET: usize = SEALED_KEY_ID_OFFSET + 8;
/// Byte offset of the chunk size.
pub const SEALED_CHUNK_BYTES_OFFSET: usize = SEALED_SALT_OFFSET + SALT_BYTES;
/// Byte offset of the header checksum.
pub const SEALED_CRC_OFFSET: usize = SEALED_CHUNK_BYTES_OFFSET + 4;
/// Length of the header.
pub const SEALED_HEADER_BYTES: usize = SEALED_CRC_OFFSET + 4;
/// Plaintext bytes per chunk this version writes.
pub const SEALED_CHUNK_BYTES: u32 = 64 * 1024;
/// The largest chunk size a reader accepts.
pub const SEALED_CHUNK_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// What a sealed object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SealedKind {
    /// A change set (`Db::export_since`).
    ChangeSet = 1,
    /// The WAL frames of one replication batch, on the wire.
    ReplicationBatch = 2,
    /// A snapshot a follower stages from a leader in clear (sealed under
    /// the follower's key while it arrives).
    StagedSnapshot = 3,
    /// A file in `quarantine/` kept from a database's time in clear,
    /// sealed when it was encrypted (its name is the context).
    Quarantine = 4,
    /// A head or claim in a bucket (its name is the context).
    BucketObject = 5,
}

impl SealedKind {
    fn name(self) -> &'static str {
        match self {
            SealedKind::ChangeSet => "change set",
            SealedKind::ReplicationBatch => "replication batch",
            SealedKind::StagedSnapshot => "staged snapshot",
            SealedKind::Quarantine => "quarantined file",
            SealedKind::BucketObject => "bucket object",
        }
    }
}

/// True if `bytes` start like a sealed object.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(&SEALED_MAGIC)
}

/// The id of the key that sealed `bytes`, if they are a sealed object
/// whose header reads.
pub fn sealed_key_id(bytes: &[u8]) -> Option<KeyId> {
    parse_header(bytes).ok().map(|h| h.block.key_id)
}

/// `plaintext` sealed under the ring's current key; the plaintext itself if
/// the ring has none (an unencrypted database writes in clear). `context`
/// is bound into every chunk's associated data (empty for a change set; a
/// replication batch's stream, epoch and sequence numbers), so the object
/// opens only where it was meant to.
pub fn seal(
    ring: &Keyring,
    kind: SealedKind,
    context: &[u8],
    plaintext: Vec<u8>,
) -> Result<Vec<u8>> {
    let Some(key) = ring.current() else {
        return Ok(plaintext);
    };
    let cipher = FileCipher::new(key, Domain::Sealed, fresh_salt()?);
    let header = encode_header(kind, cipher.key_block(), SEALED_CHUNK_BYTES);
    let chunk = SEALED_CHUNK_BYTES as usize;
    let chunks = plaintext.len().div_ceil(chunk).max(1);
    let mut out = Vec::with_capacity(SEALED_HEADER_BYTES + plaintext.len() + chunks * TAG_BYTES);
    out.extend_from_slice(&header);
    let mut buf = Vec::with_capacity(chunk + TAG_BYTES);
    for index in 0..chunks {
        let start = index * chunk;
        let end = (start + chunk).min(plaintext.len());
        buf.clear();
        buf.extend_from_slice(plaintext.get(start..end).unwrap_or_default());
        let aad = chunk_aad(&header, context, index as u64, index + 1 == chunks);
        cipher.seal(index as u64, &aad, &mut buf);
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

/// The plaintext of a sealed object of `kind` sealed with `context`,
/// checked whole. Damage is `Error::Decode`; a key the ring lacks is
/// `Error::Key`.
pub fn open(ring: &Keyring, kind: SealedKind, context: &[u8], bytes: &[u8]) -> Result<Vec<u8>> {
    let decode = |reason: String| Error::Decode {
        what: kind.name(),
        reason,
    };
    let header = parse_header(bytes).map_err(decode)?;
    if header.kind != kind as u8 {
        return Err(decode(format!(
            "a sealed object of kind {}, not a {}",
            header.kind,
            kind.name()
        )));
    }
    let Some(key) = ring.find(header.block.key_id) else {
        return Err(Error::Key(KeyError::Missing {
            what: format!("this {}", kind.name()),
            needed: header.block.key_id,
            given: ring.ids(),
            rotating_to: None,
        }));
    };
    let cipher = FileCipher::new(key, Domain::Sealed, header.block.salt);
    let body = bytes.get(SEALED_HEADER_BYTES..).unwrap_or_default();
    let stored = header.chunk_bytes as usize + TAG_BYTES;
    let chunks = body.len().div_ceil(stored).max(1);
    let mut out = Vec::with_capacity(body.len());
    let mut buf = Vec::with_capacity(stored);
    for index in 0..chunks {
        let start = index * stored;
        let end = (start + stored).min(body.len());
        let piece = body.get(start..end).unwrap_or_default();
        if piece.len() < TAG_BYTES {
            return Err(decode(format!("chunk {index} is shorter than its tag")));
        }
        buf.clear();
        buf.extend_from_slice(piece);
        let aad = chunk_aad(&header.bytes, context, index as u64, index + 1 == chunks);
        cipher
            .open(index as u64, &aad, &mut buf)
            .map_err(|e| decode(format!("chunk {index}: {e}")))?;
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

/// Seals a byte stream as it arrives, in bounded memory: the bytes written
/// are exactly what [`seal`] makes of the whole stream. A chunk is sealed
/// once more bytes follow it, so the last one (which its associated data
/// marks) is sealed by [`SealWriter::finish`].
pub struct SealWriter {
    cipher: FileCipher,
    header: [u8; SEALED_HEADER_BYTES],
    context: Vec<u8>,
    index: u64,
    pending: Vec<u8>,
}

impl std::fmt::Debug for SealWriter {
    // By hand: the cipher and the pending plaintext are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWriter")
            .field("index", &self.index)
            .field("pending_bytes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl SealWriter {
    /// A writer under the ring's current key, and the header to write
    /// first; `None` if the ring has no current key.
    pub fn new(
        ring: &Keyring,
        kind: SealedKind,
        context: &[u8],
    ) -> Result<Option<(SealWriter, [u8; SEALED_HEADER_BYTES])>> {
        let Some(key) = ring.current() else {
            return Ok(None);
        };
        let cipher = FileCipher::new(key, Domain::Sealed, fresh_salt()?);
        let header = encode_header(kind, cipher.key_block(), SEALED_CHUNK_BYTES);
        let writer = SealWriter {
            cipher,
            header,
            context: context.to_vec(),
            index: 0,
            pending: Vec::with_capacity(SEALED_CHUNK_BYTES as usize + TAG_BYTES),
        };
        Ok(Some((writer, header)))
    }

    /// Takes `bytes`; appends to `out` every chunk now known not to be the
    /// last.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        let chunk = SEALED_CHUNK_BYTES as usize;
        while !bytes.is_empty() {
            if self.pending.len() == chunk {
                // More follows: the pending chunk is not the last.
                self.seal_pending(false, out);
            }
            let take = (chunk - self.pending.len()).min(bytes.len());
            let (now, rest) = bytes.split_at(take);
            self.pending.extend_from_slice(now);
            bytes = rest;
        }
    }

    /// Appends the last chunk (what is pending, possibly nothing) to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.seal_pending(true, out);
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) {
        let aad = chunk_aad(&self.header, &self.context, self.index, last);
        self.cipher.seal(self.index, &aad, &mut self.pending);
        out.extend_from_slice(&self.pending);
        self.pending.clear();
        self.index += 1;
    }
}

struct Header {
    bytes: [u8; SEALED_HEADER_BYTES],
    kind: u8,
    block: KeyBlock,
    chunk_bytes: u32,
}

fn encode_header(kind: SealedKind, block: KeyBlock, chunk_bytes: u32) -> [u8; SEALED_HEADER_BYTES] {
    let mut h = [0u8; SEALED_HEADER_BYTES];
    h[..8].copy_from_slice(&SEALED_MAGIC);
    h[SEALED_VERSION_OFFSET..SEALED_KIND_OFFSET]
        .copy_from_slice(&SEALED_FORMAT_VERSION.to_le_bytes());
    h[SEALED_KIND_OFFSET] = kind as u8;
    h[SEALED_FLAGS_OFFSET] = 0;
    h[SEALED_KEY_ID_OFFSET..SEALED_SALT_OFFSET].copy_from_slice(&block.key_id.0.to_le_bytes());
    h[SEALED_SALT_OFFSET..SEALED_CHUNK_BYTES_OFFSET].copy_from_slice(&block.salt);
    h[SEALED_CHUNK_BYTES_OFFSET..SEALED_CRC_OFFSET].copy_from_slice(&chunk_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&h[..SEALED_CRC_OFFSET]);
    h[SEALED_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let Some(h) = bytes.first_chunk::<SEALED_HEADER_BYTES>() else {
        return Err("sealed object cut short before the end of its header".into());
    };
    let u16_at = |at: usize| {
        h.get(at..at + 2)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map_or(0, u16::from_le_bytes)
    };
    let u32_at = |at: usize| {
        h.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_le_bytes)
    };
    if h[..8] != SEALED_MAGIC {
        return Err("not a sealed object (bad magic)".into());
    }
    let version = u16_at(SEALED_VERSION_OFFSET);
    if version != SEALED_FORMAT_VERSION {
        return Err(format!("unsupported sealed object version {version}"));
    }
    if crc32c::crc32c(&h[..SEALED_CRC_OFFSET]) != u32_at(SEALED_CRC_OFFSET) {
        return Err("sealed object header checksum mismatch".into());
    }
    if h[SEALED_FLAGS_OFFSET] != 0 {
        return Err(format!(
            "unknown sealed object flags {:#x}",
            h[SEALED_FLAGS_OFFSET]
        ));
    }
    let chunk_bytes = u32_at(SEALED_CHUNK_BYTES_OFFSET);
    if chunk_bytes == 0 || chunk_bytes > SEALED_CHUNK_BYTES_MAX {
        return Err(format!(
            "chunk size {chunk_bytes} outside 1..={SEALED_CHUNK_BYTES_MAX}"
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[SEALED_KEY_ID_OFFSET..SEALED_SALT_OFFSET]);
    let mut salt = [0u8; SALT_BYTES];
    salt.copy_from_slice(&h[SEALED_SALT_OFFSET..SEALED_CHUNK_BYTES_OFFSET]);
    Ok(Header {
        bytes: *h,
        kind: h[SEALED_KIND_OFFSET],
        block: KeyBlock {
            key_id: KeyId(u64::from_le_bytes(id)),
            salt,
        },
        chunk_bytes,
    })
}

fn chunk_aad(
    header: &[u8; SEALED_HEADER_BYTES],
    context: &[u8],
    index: u64,
    last: bool,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEALED_HEADER_BYTES + context.len() + 9);
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(u8::from(last));
    aad
}
