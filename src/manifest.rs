//! The manifest: which runs hold the durable state, and the WAL position
//! they cover.
//!
//! `MANIFEST` is replaced atomically (temp file, fsync, rename, directory
//! fsync) after every run it names is durable and verified, and before
//! any file it stops naming is deleted or any WAL segment it newly covers
//! is truncated. So at every moment the manifest on disk names runs that
//! exist, and the WAL holds everything after its covered sequence number.
//! A run file it does not name is garbage (a flush or merge cut short); a
//! run it names whose file is missing is a typed error naming the file.
//! Layout in `docs/FORMAT.md`.

use std::path::{Path, PathBuf};

use crate::clock::{NodeId, Stamp};
use crate::codec::{DecodeError, Reader, Writer};
use crate::crypto::{EncryptionKey, KeyId, Keyring};
use crate::error::{Error, Result};
use crate::io::Io;
use crate::record::limits::{DEDUP_ENTRIES_MAX, DEDUP_ENTRY_BYTES};
use crate::record::{decode_stamp, encode_stamp};
use crate::state::DigestSums;
use crate::state::digest::DIGEST_BUCKETS;
use crate::wal::dedup::DedupEntry;

/// The manifest's file name in the database directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// First eight bytes of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"MKVMANI\x01";
/// Version of the layout described here.
pub const MANIFEST_FORMAT_VERSION: u16 = 1;
/// Most runs a manifest may name (a reader refuses more as damage).
pub const MANIFEST_RUNS_MAX: usize = 4096;
/// Bytes of one run entry: id, size, entries, tombstones, checksum.
const RUN_ENTRY_BYTES: usize = 8 + 8 + 8 + 8 + 4;
/// The largest manifest a reader accepts (the most runs and dedup entries
/// it can name), checked before the file is read.
pub const MANIFEST_BYTES_MAX: u64 = (HEADER_BYTES
    + 4
    + MANIFEST_RUNS_MAX * RUN_ENTRY_BYTES
    + DIGEST_BYTES
    + 4
    + DEDUP_ENTRIES_MAX * DEDUP_ENTRY_BYTES
    + 4) as u64;
/// Bytes of the digest: every bucket's sum, then the key count.
const DIGEST_BYTES: usize = DIGEST_BUCKETS * 32 + 8;
/// Bytes before the run list.
const HEADER_BYTES: usize = 8 + 2 + 2 + 8 + 8 + 8 + 20 + 8 + 8;

/// One run the manifest names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunEntry {
    /// The run's id (its file is `runs/run-<id>.run`).
    pub id: u64,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Keys in it.
    pub entries: u64,
    /// Tombstones among them.
    pub tombstones: u64,
    /// The checksum of its footer: names the exact file.
    pub checksum: u32,
}

/// The manifest's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The node that wrote it.
    pub node: NodeId,
    /// Incremented at every replacement.
    pub generation: u64,
    /// Every WAL frame up to this sequence number is in the runs.
    pub covered_seq: u64,
    /// The clock's high-water mark when it was written.
    pub hlc: Stamp,
    /// When it was written, ms since the epoch.
    pub created_ms: u64,
    /// The id the next run will get (ids are never reused).
    pub next_run_id: u64,
    /// The live runs, newest first.
    pub runs: Vec<RunEntry>,
    /// The digest sums of the state the runs hold, so an open knows the
    /// digest without reading every key.
    pub digest: DigestSums,
    /// The dedup window entries for frames the runs cover.
    pub dedup: Vec<([u8; 32], DedupEntry)>,
}

/// The manifest's path in `dir`.
pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_FILE)
}

impl Manifest {
    /// The encoded manifest, in clear.
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(None)
    }

    /// The encoded manifest, authenticated under `key` if given (an
    /// encrypted database's: see [`MANIFEST_FLAG_AUTHENTICATED`]).
    pub fn encode_with(&self, key: Option<&EncryptionKey>) -> Vec<u8> {
        let mut w = Writer::with_capacity(
            HEADER_BYTES
                + 4
                + RUN_ENTRY_BYTES * self.runs.len()
                + DIGEST_BYTES
                + 4
                + DEDUP_ENTRY_BYTES * self.dedup.len()
                + 4,
        );
        w.bytes(&MANIFEST_MAGIC);
        w.u16(MANIFEST_FORMAT_VERSION);
        w.u16(if key.is_some() {
            MANIFEST_FLAG_AUTHENTICATED
        } else {
            0
        });
        w.u64(self.node.0);
        w.u64(self.generation);
        w.u64(self.covered_seq);
        encode_stamp(&mut w, self.hlc);
        w.u64(self.created_ms);
        w.u64(self.next_run_id);
        debug_assert_eq!(w.len(), HEADER_BYTES);
        w.u32(self.runs.len() as u32);
        for run in &self.runs {
            w.u64(run.id);
            w.u64(run.size_bytes);
            w.u64(run.entries);
            w.u64(run.tombstones);
            w.u32(run.checksum);
        }
        for bucket in self.digest.buckets() {
            w.bytes(&bucket);
        }
        w.u64(self.digest.keys());
        w.u32(self.dedup.len() as u32);
        for (id, entry) in &self.dedup {
            w.bytes(id);
            w.u64(entry.first_seq);
            w.u32(entry.op_count);
            encode_stamp(&mut w, entry.stamp);
            w.u64(entry.seen_ms);
        }
        if let Some(key) = key {
            w.u64(key.id().0);
            let tag = mac(key, w.as_slice());
            w.bytes(&tag);
        }
        let crc = crc32c::crc32c(w.as_slice());
        w.u32(crc);
        w.into_vec()
    }

    /// Decodes a manifest and checks its authentication: one written by an
    /// encrypted database carries a MAC under its key, which must be in
    /// `keyring` (else `Error::Key`) and must match (else corruption); one
    /// without is refused if `required` (an encrypted database whose files
    /// are all its own: a manifest in clear there is forged).
    pub fn decode_checked(
        bytes: &[u8],
        path: &Path,
        keyring: &Keyring,
        required: bool,
    ) -> Result<Manifest> {
        let (manifest, tag) = Self::parse(bytes)
            .map_err(|(offset, reason)| Error::corruption(path, offset, reason))?;
        match tag {
            None if required => Err(Error::corruption(
                path,
                10,
                "a manifest without its key's MAC in an encrypted database (not written by it)",
            )),
            None => Ok(manifest),
            Some(tag) => {
                let Some(key) = keyring.find(tag.key_id) else {
                    return Err(keyring.missing(path, tag.key_id));
                };
                let covered = bytes.get(..tag.covered).unwrap_or_default();
                if !constant_time_eq(&mac(key, covered), &tag.mac) {
                    return Err(Error::corruption(
                        path,
                        tag.covered as u64,
                        "manifest authentication failed (changed, or not this database's)",
                    ));
                }
                Ok(manifest)
            }
        }
    }

    /// Decodes a manifest without checking a MAC it may carry (the error is
    /// the offset of the damage and why); see [`Manifest::decode_checked`].
    pub fn decode(bytes: &[u8]) -> std::result::Result<Manifest, (u64, String)> {
        Self::parse(bytes).map(|(m, _)| m)
    }

    fn parse(bytes: &[u8]) -> std::result::Result<(Manifest, Option<Tag>), (u64, String)> {
        let at = |e: DecodeError| match e {
            DecodeError::Truncated { offset, .. } | DecodeError::Invalid { offset, .. } => {
                (offset as u64, e.to_string())
            }
        };
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err((0, "manifest too short".into()));
        };
        if body.get(..8) != Some(&MANIFEST_MAGIC[..]) {
            return Err((0, "not a mergekv manifest (bad magic)".into()));
        }
        if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
            return Err((body.len() as u64, "manifest checksum mismatch".into()));
        }
        let mut r = Reader::new(body);
        r.take(8).map_err(at)?;
        let version = r.u16().map_err(at)?;
        if version != MANIFEST_FORMAT_VERSION {
            return Err((8, format!("unsupported manifest version {version}")));
        }
        let flags = r.u16().map_err(at)?;
        if flags & !MANIFEST_FLAG_AUTHENTICATED != 0 {
            return Err((10, format!("unknown manifest flags {flags:#x}")));
        }
        let tag_bytes = if flags & MANIFEST_FLAG_AUTHENTICATED != 0 {
            MANIFEST_TAG_BYTES
        } else {
            0
        };
        let node = NodeId(r.u64().map_err(at)?);
        let generation = r.u64().map_err(at)?;
        let covered_seq = r.u64().map_err(at)?;
        let hlc = decode_stamp(&mut r).map_err(at)?;
        let created_ms = r.u64().map_err(at)?;
        let next_run_id = r.u64().map_err(at)?;
        let run_count = r.u32().map_err(at)? as usize;
        if run_count > MANIFEST_RUNS_MAX || run_count * RUN_ENTRY_BYTES > r.remaining() {
            return Err((
                r.position() as u64,
                format!("run count {run_count} does not fit"),
            ));
        }
        let mut runs = Vec::with_capacity(run_count);
        for _ in 0..run_count {
            let entry = RunEntry {
                id: r.u64().map_err(at)?,
                size_bytes: r.u64().map_err(at)?,
                entries: r.u64().map_err(at)?,
                tombstones: r.u64().map_err(at)?,
                checksum: r.u32().map_err(at)?,
            };
            if entry.id >= next_run_id || runs.iter().any(|r: &RunEntry| r.id == entry.id) {
                return Err((
                    r.position() as u64,
                    format!("run id {} repeated or not below the next id", entry.id),
                ));
            }
            runs.push(entry);
        }
        let mut buckets = Vec::with_capacity(DIGEST_BUCKETS);
        for _ in 0..DIGEST_BUCKETS {
            let bytes: [u8; 32] = r
                .take(32)
                .map_err(at)?
                .try_into()
                .map_err(|_| (r.position() as u64, "digest bucket".to_string()))?;
            buckets.push(bytes);
        }
        let digest_keys = r.u64().map_err(at)?;
        let digest = DigestSums::from_parts(&buckets, digest_keys)
            .ok_or_else(|| (r.position() as u64, "digest buckets".to_string()))?;
        let dedup_count = r.u32().map_err(at)? as usize;
        if dedup_count > DEDUP_ENTRIES_MAX
            || dedup_count * DEDUP_ENTRY_BYTES + tag_bytes != r.remaining()
        {
            return Err((
                r.position() as u64,
                format!("dedup entry count {dedup_count} does not fit"),
            ));
        }
        let mut dedup = Vec::with_capacity(dedup_count);
        for _ in 0..dedup_count {
            let id: [u8; 32] = r
                .take(32)
                .map_err(at)?
                .try_into()
                .map_err(|_| (r.position() as u64, "dedup id".to_string()))?;
            let first_seq = r.u64().map_err(at)?;
            let op_count = r.u32().map_err(at)?;
            let stamp = decode_stamp(&mut r).map_err(at)?;
            let seen_ms = r.u64().map_err(at)?;
            dedup.push((
                id,
                DedupEntry {
                    first_seq,
                    op_count,
                    stamp,
                    seen_ms,
                },
            ));
        }
        let tag = if tag_bytes > 0 {
            let key_id = KeyId(r.u64().map_err(at)?);
            let covered = r.position();
            let mut mac = [0u8; 32];
            mac.copy_from_slice(r.take(32).map_err(at)?);
            Some(Tag {
                key_id,
                mac,
                covered,
            })
        } else {
            None
        };
        let manifest = Manifest {
            node,
            generation,
            covered_seq,
            hlc,
            created_ms,
            next_run_id,
            runs,
            digest,
            dedup,
        };
        Ok((manifest, tag))
    }
}

/// Manifest flag: the manifest ends (before its CRC) with the id of the
/// key it is authenticated under and a 32-byte MAC of every byte before
/// the MAC (keyed blake3 under a key derived from that key). An encrypted
/// database writes only such manifests.
pub const MANIFEST_FLAG_AUTHENTICATED: u16 = 1;
/// Bytes the authentication adds: key id and MAC.
const MANIFEST_TAG_BYTES: usize = 8 + 32;
/// The blake3 context the manifest's MAC key is derived under.
const MANIFEST_MAC_CONTEXT: &str = "mergekv 2026-12-03 manifest mac v1";

/// A manifest's authentication, as read.
struct Tag {
    key_id: KeyId,
    mac: [u8; 32],
    /// The bytes the MAC covers: everything before it.
    covered: usize,
}

/// The MAC of `bytes` under `key`'s manifest key.
fn mac(key: &EncryptionKey, bytes: &[u8]) -> [u8; 32] {
    let mut mac_key = blake3::derive_key(MANIFEST_MAC_CONTEXT, key.bytes());
    let tag = *blake3::keyed_hash(&mac_key, bytes).as_bytes();
    zeroize::Zeroize::zeroize(&mut mac_key);
    tag
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Reads `dir`'s manifest; `None` if there is none (a new database, or one
/// written before runs existed). Damage is [`Error::Corruption`] naming it.
pub fn read_manifest(io: &Io, dir: &Path) -> Result<Option<Manifest>> {
    let Some((path, bytes)) = read_bytes(io, dir)? else {
        return Ok(None);
    };
    Manifest::decode(&bytes)
        .map(Some)
        .map_err(|(offset, reason)| Error::corruption(&path, offset, reason))
}

/// [`read_manifest`], its authentication checked ([`Manifest::decode_checked`]).
pub fn read_manifest_checked(
    io: &Io,
    dir: &Path,
    keyring: &Keyring,
    required: bool,
) -> Result<Option<Manifest>> {
    let Some((path, bytes)) = read_bytes(io, dir)? else {
        return Ok(None);
    };
    Manifest::decode_checked(&bytes, &path, keyring, required).map(Some)
}

/// The manifest's path and bytes, its size checked before it is read.
fn read_bytes(io: &Io, dir: &Path) -> Result<Option<(PathBuf, Vec<u8>)>> {
    let path = manifest_path(dir);
    match io.len_bytes(&path) {
        Ok(len) if len > MANIFEST_BYTES_MAX => {
            return Err(Error::corruption(
                &path,
                0,
                format!("{len} bytes: larger than any manifest ({MANIFEST_BYTES_MAX})"),
            ));
        }
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Ok(_) => {}
        Err(e) => return Err(e),
    }
    Ok(io.read_if_exists(&path)?.map(|bytes| (path, bytes)))
}

/// Replaces `dir`'s manifest atomically and durably, authenticated under
/// `key` if given.
pub fn write_manifest(
    io: &Io,
    dir: &Path,
    manifest: &Manifest,
    key: Option<&EncryptionKey>,
) -> Result<()> {
    io.write_atomic(&manifest_path(dir), &manifest.encode_with(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            node: NodeId(7),
            generation: 3,
            covered_seq: 99,
            hlc: Stamp {
                physical_ms: 5,
                logical: 1,
                node: NodeId(7),
            },
            created_ms: 1234,
            next_run_id: 10,
            runs: vec![
                RunEntry {
                    id: 9,
                    size_bytes: 100,
                    entries: 3,
                    tombstones: 1,
                    checksum: 0xabcd,
                },
                RunEntry {
                    id: 2,
                    size_bytes: 1000,
                    entries: 30,
                    tombstones: 0,
                    checksum: 7,
                },
            ],
            digest: {
                let mut d = DigestSums::new();
                d.add(
                    &crate::record::store_key("k", b"x"),
                    &crate::crdt::KeyState::default(),
                );
                d
            },
            dedup: vec![(
                [3; 32],
                DedupEntry {
                    first_seq: 5,
                    op_count: 2,
                    stamp: Stamp::default(),
                    seen_ms: 77,
                },
            )],
        }
    }

    #[test]
    fn an_authenticated_manifest_opens_only_with_its_key_and_any_change_is_refused() {
        use crate::crypto::{EncryptionKey, Keyring};
        let key = EncryptionKey::from_bytes([3; 32]);
        let ring = Keyring::new(Some(key.clone()), vec![]);
        let path = Path::new("MANIFEST");
        let bytes = sample().encode_with(Some(&key));
        assert_eq!(
            Manifest::decode_checked(&bytes, path, &ring, true).unwrap(),
            sample()
        );
        assert_eq!(Manifest::decode(&bytes).unwrap(), sample());
        // Another key: named, not taken for damage.
        let other = Keyring::new(Some(EncryptionKey::from_bytes([4; 32])), vec![]);
        assert!(matches!(
            Manifest::decode_checked(&bytes, path, &other, true),
            Err(Error::Key(_))
        ));
        // Every field changed, with the CRC made right again (anyone can):
        // refused by the MAC.
        for i in 0..bytes.len() - 4 {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            let end = bad.len() - 4;
            let crc = crc32c::crc32c(&bad[..end]);
            bad[end..].copy_from_slice(&crc.to_le_bytes());
            assert!(
                Manifest::decode_checked(&bad, path, &ring, true).is_err(),
                "byte {i}"
            );
        }
        // A manifest in clear where one is required: refused.
        let clear = sample().encode();
        assert!(matches!(
            Manifest::decode_checked(&clear, path, &ring, true),
            Err(Error::Corruption { .. })
        ));
        assert!(Manifest::decode_checked(&clear, path, &ring, false).is_ok());
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                if let Some(b) = bad.get_mut(i) {
                    *b ^= bit;
                }
                assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
            }
            assert!(
                Manifest::decode(bytes.get(..i).unwrap()).is_err(),
                "cut at {i}"
            );
        }
    }
}
