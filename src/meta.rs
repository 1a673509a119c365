//! The database directory: its lock and its identity file.
//!
//! `<dir>/LOCK` is held with an exclusive `flock` for as long as the database
//! is open; a second open, from this process or another, gets
//! [`Error::Locked`]. `<dir>/META` holds the node id, created once with the
//! database and written atomically.

use std::path::{Path, PathBuf};

use crate::clock::NodeId;
use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::io::{Io, IoFile};

/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the identity file.
pub const META_FILE: &str = "META";
/// Name of the follower marker: present (holding the leader's address)
/// while the database is a replication follower.
pub const FOLLOWER_FILE: &str = "FOLLOWER";
/// Longest leader address the marker holds.
const FOLLOWER_MARKER_BYTES_MAX: usize = 1024;

const META_MAGIC: [u8; 8] = *b"MKVMETA\x01";
const META_FORMAT_VERSION: u16 = 1;
const META_BYTES: usize = 8 + 2 + 8 + 8 + 4;

/// The exclusive hold on a database directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: IoFile,
}

/// Takes the directory lock, or fails with [`Error::Locked`].
pub fn lock_dir(io: &Io, dir: &Path) -> Result<DirLock> {
    let file = io.open_lock_file(&dir.join(LOCK_FILE))?;
    if !file.try_lock_exclusive()? {
        return Err(Error::Locked {
            dir: dir.to_path_buf(),
        });
    }
    Ok(DirLock { _file: file })
}

/// The contents of `META`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// This copy's node id.
    pub node: NodeId,
    /// When the database was created, in ms since the epoch.
    pub created_ms: u64,
}

/// Path of the identity file.
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

/// Reads `META`, or `None` if the database is new.
pub fn read_meta(io: &Io, dir: &Path) -> Result<Option<Meta>> {
    let path = meta_path(dir);
    let Some(bytes) = io.read_if_exists(&path)? else {
        return Ok(None);
    };
    decode_meta(&bytes)
        .map(Some)
        .map_err(|reason| Error::corruption(&path, 0, reason))
}

/// Creates `META` with a fresh random node id.
pub fn create_meta(io: &Io, dir: &Path, created_ms: u64) -> Result<Meta> {
    let meta = Meta {
        node: random_node_id(),
        created_ms,
    };
    io.write_atomic(&meta_path(dir), &encode_meta(&meta))?;
    Ok(meta)
}

/// The leader a follower directory follows, or `None` if the directory is
/// not a follower.
pub fn read_follower_marker(io: &Io, dir: &Path) -> Result<Option<String>> {
    let path = dir.join(FOLLOWER_FILE);
    let Some(bytes) = io.read_if_exists(&path)? else {
        return Ok(None);
    };
    if bytes.len() > FOLLOWER_MARKER_BYTES_MAX {
        return Err(Error::corruption(&path, 0, "follower marker too long"));
    }
    String::from_utf8(bytes)
        .map(|leader| Some(leader.trim().to_string()))
        .map_err(|_| Error::corruption(&path, 0, "follower marker is not UTF-8"))
}

/// Marks the directory as a follower of `leader` (atomically, durably).
pub fn write_follower_marker(io: &Io, dir: &Path, leader: &str) -> Result<()> {
    if leader.len() > FOLLOWER_MARKER_BYTES_MAX {
        return Err(Error::limit(
            "follower_marker_bytes_max",
            leader.len(),
            FOLLOWER_MARKER_BYTES_MAX,
        ));
    }
    io.write_atomic(&dir.join(FOLLOWER_FILE), leader.as_bytes())
}

/// Removes the follower marker (durably); true if there was one.
pub fn remove_follower_marker(io: &Io, dir: &Path) -> Result<bool> {
    let path = dir.join(FOLLOWER_FILE);
    if io.read_if_exists(&path)?.is_none() {
        return Ok(false);
    }
    io.remove_file(&path)?;
    io.sync_dir(dir)?;
    Ok(true)
}

fn random_node_id() -> NodeId {
    let mut bytes = [0u8; 8];
    // If the OS has no randomness source, a time-and-pid hash still gives
    // copies distinct ids in practice.
    if getrandom::fill(&mut bytes).is_err() {
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        bytes.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..8]);
    }
    NodeId(u64::from_le_bytes(bytes).max(1))
}

pub(crate) fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut w = Writer::with_capacity(META_BYTES);
    w.bytes(&META_MAGIC);
    w.u16(META_FORMAT_VERSION);
    w.u64(meta.node.0);
    w.u64(meta.created_ms);
    let crc = crc32c::crc32c(w.as_slice());
    w.u32(crc);
    debug_assert_eq!(w.len(), META_BYTES);
    w.into_vec()
}

pub(crate) fn decode_meta(bytes: &[u8]) -> std::result::Result<Meta, String> {
    let (checked, stored_crc) = match bytes.split_last_chunk::<4>() {
        Some(split) if bytes.len() == META_BYTES => split,
        _ => {
            return Err(format!(
                "expected {META_BYTES} bytes, found {}",
                bytes.len()
            ));
        }
    };
    let mut r = Reader::new(checked);
    let fail = |e: crate::codec::DecodeError| e.to_string();
    if r.take(8).map_err(fail)? != META_MAGIC {
        return Err("bad magic".into());
    }
    let version = r.u16().map_err(fail)?;
    let node = NodeId(r.u64().map_err(fail)?);
    let created_ms = r.u64().map_err(fail)?;
    debug_assert_eq!(r.remaining(), 0, "the fields fill the checksummed bytes");
    if crc32c::crc32c(checked) != u32::from_le_bytes(*stored_crc) {
        return Err("checksum mismatch".into());
    }
    if version != META_FORMAT_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    Ok(Meta { node, created_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_damage() {
        let meta = Meta {
            node: NodeId(77),
            created_ms: 5,
        };
        let bytes = encode_meta(&meta);
        assert_eq!(decode_meta(&bytes), Ok(meta));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode_meta(&bad).is_err());
        }
    }
}
