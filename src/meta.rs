//! The database directory: its lock and its identity file.
//!
//! `<dir>/LOCK` is held with an exclusive `flock` for as long as the database
//! is open; a second open, from this process or another, gets
//! [`Error::Locked`]. `<dir>/META` holds the node id, created once with the
//! database and written atomically.

use std::path::{Path, PathBuf};

use crate::clock::NodeId;
use crate::codec::{Reader, Writer};
use crate::crypto::KeyId;
use crate::error::{Error, Result};
use crate::io::{Io, IoFile};

/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the identity file.
pub const META_FILE: &str = "META";
/// Name of the follower marker: present (holding the leader's address)
/// while the database is a replication follower.
pub const FOLLOWER_FILE: &str = "FOLLOWER";
/// Name of a follower's staged leader snapshot (being received, or
/// received and not yet installed); nothing needs it after a crash.
pub const INCOMING_SNAPSHOT_FILE: &str = "replication-incoming.snap";
/// Longest leader address the marker holds.
const FOLLOWER_MARKER_BYTES_MAX: usize = 1024;

const META_MAGIC: [u8; 8] = *b"MKVMETA\x01";
const META_FORMAT_VERSION_1: u16 = 1;
const META_FORMAT_VERSION_2: u16 = 2;
const META_FORMAT_VERSION: u16 = 3;
/// Length of a version 1 META (node id and creation time only).
const META_V1_BYTES: usize = 8 + 2 + 8 + 8 + 4;
/// Length of a version 2 META before its list of former node ids.
const META_V2_FIXED_BYTES: usize = 8 + 2 + 8 + 8 + 8 + 8 + 2 + 4;
/// Length of a version 3 META before its list of former node ids: version
/// 2's fields, then flags, the key id and the sequence number the node id
/// took over at.
const META_V3_FIXED_BYTES: usize = META_V2_FIXED_BYTES + 2 + 8 + 8;
/// META flag: the database is encrypted with the key whose id follows.
const META_FLAG_ENCRYPTED: u16 = 1;
/// META flag (with `ENCRYPTED` only): a rotation from no key has not
/// finished, so files in clear may remain; without it, a file in clear in
/// an encrypted database is refused as forged.
const META_FLAG_CLEAR_FILES_PENDING: u16 = 2;
/// Most former node ids META holds (32 KiB of them). Past it, ids no file
/// carries any more are dropped; an id a file still carries never is.
pub const FORMER_NODE_IDS_MAX: usize = 4096;

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The node id this copy writes under.
    pub node: NodeId,
    /// When the database was created, in ms since the epoch.
    pub created_ms: u64,
    /// The file-system object (device, inode) of the directory this
    /// identity was issued in; `None` if unknown (a version 1 META, or a
    /// platform that does not say).
    pub home: Option<(u64, u64)>,
    /// Node ids this directory wrote under before, newest last: its files
    /// may still carry them.
    pub former: Vec<NodeId>,
    /// The key the database is encrypted with (every new file uses it);
    /// `None`: not encrypted.
    pub key_id: Option<KeyId>,
    /// An encrypted database that was in clear and whose rotation has not
    /// finished rewriting its files in clear (only with `key_id`).
    pub clear_files_pending: bool,
    /// The first sequence number written under `node` when it replaced a
    /// former id (0: unknown, or never renewed). No segment holding frames
    /// at or after it may carry a former id: one that does is another
    /// copy's (a clone writing on under the id this copy left).
    pub node_since_seq: u64,
}

impl Meta {
    /// True if every file of this database is encrypted by it, so one in
    /// clear (or a manifest without its key's MAC) is forged.
    pub fn all_files_encrypted(&self) -> bool {
        self.key_id.is_some() && !self.clear_files_pending
    }

    /// Every node id this directory's files may carry, the current first.
    pub fn lineage(&self) -> Vec<NodeId> {
        std::iter::once(self.node)
            .chain(self.former.iter().rev().copied())
            .collect()
    }
}

/// Why an open gave this copy a new node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Renewal {
    /// The directory is not the one the identity was issued in: a copy, a
    /// restored backup, or a move to another file system.
    CopiedDirectory,
    /// `Options::renew_identity` asked for it.
    Requested,
    /// A repair dropped writes this copy had made (peers may hold them):
    /// writing on under the same id would issue its stamps and counter
    /// totals again.
    Repaired,
    /// META was damaged or missing and rebuilt by a repair.
    MetaRebuilt,
}

/// Why this open must give the copy a new node id, if it must: the
/// directory is a copy of the one the id was issued in (`here` is its
/// current inode), or the caller asks. A read-only open never does: it
/// writes no stamps of its own.
pub fn renewal_needed(
    meta: &Meta,
    here: Option<(u64, u64)>,
    requested: bool,
    read_only: bool,
) -> Option<Renewal> {
    if read_only {
        return None;
    }
    // Only the inode is compared: a copy is a new inode, but a device
    // number can change across reboots (a removable or network disk), and
    // the same database must not take a new id at every mount.
    let moved = match (meta.home, here) {
        (Some((_, was)), Some((_, now))) => was != now,
        _ => false,
    };
    if requested {
        Some(Renewal::Requested)
    } else if moved {
        Some(Renewal::CopiedDirectory)
    } else {
        None
    }
}

/// `meta` under a fresh node id issued in the directory `here`, the old id
/// kept as a former one. Past [`FORMER_NODE_IDS_MAX`] former ids, only
/// those some file still carries (`in_files`) are kept; if that is still
/// too many, the renewal is refused (compaction rewrites every snapshot
/// under the current id and drops old segments).
pub fn renewed(
    meta: &Meta,
    here: Option<(u64, u64)>,
    in_files: impl FnOnce() -> Result<Vec<NodeId>>,
) -> Result<Meta> {
    let mut former = meta.former.clone();
    former.push(meta.node);
    if former.len() > FORMER_NODE_IDS_MAX {
        let carried = in_files()?;
        former.retain(|id| carried.contains(id));
        if former.len() > FORMER_NODE_IDS_MAX {
            return Err(Error::limit(
                "former_node_ids_max",
                former.len(),
                FORMER_NODE_IDS_MAX,
            ));
        }
    }
    Ok(Meta {
        node: fresh_node_id(&meta.lineage()),
        created_ms: meta.created_ms,
        home: here,
        former,
        key_id: meta.key_id,
        clear_files_pending: meta.clear_files_pending,
        // Set by the caller, who knows where the log continues.
        node_since_seq: 0,
    })
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
pub fn create_meta(io: &Io, dir: &Path, created_ms: u64, key_id: Option<KeyId>) -> Result<Meta> {
    let meta = Meta {
        node: random_node_id(),
        created_ms,
        home: io.object_id(dir)?,
        former: Vec::new(),
        key_id,
        clear_files_pending: false,
        node_since_seq: 0,
    };
    write_meta(io, dir, &meta)?;
    Ok(meta)
}

/// Writes `META` (atomically).
pub fn write_meta(io: &Io, dir: &Path, meta: &Meta) -> Result<()> {
    io.write_atomic(&meta_path(dir), &encode_meta(meta))
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

/// A random node id none of `taken` uses.
pub fn fresh_node_id(taken: &[NodeId]) -> NodeId {
    loop {
        let node = random_node_id();
        if !taken.contains(&node) {
            return node;
        }
    }
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
    let former = meta.former.len().min(FORMER_NODE_IDS_MAX);
    let mut w = Writer::with_capacity(META_V3_FIXED_BYTES + 8 * former);

    w.bytes(&META_MAGIC);
    w.u16(META_FORMAT_VERSION);
    w.u64(meta.node.0);
    w.u64(meta.created_ms);
    let (device, inode) = meta.home.unwrap_or((0, 0));
    w.u64(device);
    w.u64(inode);
    match meta.key_id {
        Some(id) => {
            let pending = if meta.clear_files_pending {
                META_FLAG_CLEAR_FILES_PENDING
            } else {
                0
            };
            w.u16(META_FLAG_ENCRYPTED | pending);
            w.u64(id.0);
        }
        None => {
            w.u16(0);
            w.u64(0);
        }
    }
    w.u64(meta.node_since_seq);
    w.u16(former as u16);
    for node in meta.former.iter().take(former) {
        w.u64(node.0);
    }
    let crc = crc32c::crc32c(w.as_slice());
    w.u32(crc);
    debug_assert_eq!(w.len(), META_V3_FIXED_BYTES + 8 * former);
    w.into_vec()
}

pub(crate) fn decode_meta(bytes: &[u8]) -> std::result::Result<Meta, String> {
    let Some((checked, stored_crc)) = bytes.split_last_chunk::<4>() else {
        return Err(format!("{} bytes: shorter than a checksum", bytes.len()));
    };
    if bytes.len() != META_V1_BYTES && bytes.len() < META_V2_FIXED_BYTES {
        return Err(format!("{} bytes: not a META of any version", bytes.len()));
    }
    if crc32c::crc32c(checked) != u32::from_le_bytes(*stored_crc) {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader::new(checked);
    let fail = |e: crate::codec::DecodeError| e.to_string();
    if r.take(8).map_err(fail)? != META_MAGIC {
        return Err("bad magic".into());
    }
    let version = r.u16().map_err(fail)?;
    let node = NodeId(r.u64().map_err(fail)?);
    let created_ms = r.u64().map_err(fail)?;
    let mut meta = Meta {
        node,
        created_ms,
        home: None,
        former: Vec::new(),
        key_id: None,
        clear_files_pending: false,
        node_since_seq: 0,
    };
    match version {
        META_FORMAT_VERSION_1 if bytes.len() == META_V1_BYTES => {}
        META_FORMAT_VERSION_2 | META_FORMAT_VERSION if bytes.len() >= META_V2_FIXED_BYTES => {
            let home = (r.u64().map_err(fail)?, r.u64().map_err(fail)?);
            meta.home = (home != (0, 0)).then_some(home);
            if version == META_FORMAT_VERSION {
                let flags = r.u16().map_err(fail)?;
                let key_id = r.u64().map_err(fail)?;
                let encrypted = flags & META_FLAG_ENCRYPTED != 0;
                let known = META_FLAG_ENCRYPTED | META_FLAG_CLEAR_FILES_PENDING;
                if flags & !known != 0 || (!encrypted && (flags != 0 || key_id != 0)) {
                    return Err(format!("flags {flags:#x} with key id {key_id:#x}"));
                }
                meta.key_id = encrypted.then_some(KeyId(key_id));
                meta.clear_files_pending = flags & META_FLAG_CLEAR_FILES_PENDING != 0;
                meta.node_since_seq = r.u64().map_err(fail)?;
            }
            let count = usize::from(r.u16().map_err(fail)?);
            if count > FORMER_NODE_IDS_MAX || r.remaining() != 8 * count {
                return Err(format!(
                    "{count} former node ids in {} bytes",
                    r.remaining()
                ));
            }
            for _ in 0..count {
                meta.former.push(NodeId(r.u64().map_err(fail)?));
            }
        }
        _ => {
            return Err(format!(
                "unsupported version {version} in {} bytes",
                bytes.len()
            ));
        }
    }
    if r.remaining() != 0 {
        return Err(format!("{} bytes after the last field", r.remaining()));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_damage() {
        let meta = Meta {
            node: NodeId(77),
            created_ms: 5,
            home: Some((3, 9)),
            former: vec![NodeId(1), NodeId(2)],
            key_id: Some(KeyId(0xfeed)),
            clear_files_pending: true,
            node_since_seq: 42,
        };
        let bytes = encode_meta(&meta);
        assert_eq!(decode_meta(&bytes), Ok(meta.clone()));
        assert_eq!(meta.lineage(), vec![NodeId(77), NodeId(2), NodeId(1)]);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode_meta(&bad).is_err(), "flip at {i}");
        }
        for len in 0..bytes.len() {
            assert!(decode_meta(&bytes[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn a_version_1_meta_still_reads() {
        let mut w = Writer::with_capacity(META_V1_BYTES);
        w.bytes(&META_MAGIC);
        w.u16(META_FORMAT_VERSION_1);
        w.u64(77);
        w.u64(5);
        let crc = crc32c::crc32c(w.as_slice());
        w.u32(crc);
        let meta = decode_meta(w.as_slice()).unwrap();
        assert_eq!(
            (meta.node, meta.created_ms, meta.home),
            (NodeId(77), 5, None)
        );
    }

    #[test]
    fn a_copied_directory_needs_a_new_node_id_and_keeps_the_old_one() {
        let io = Io::default();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let meta = create_meta(&io, a.path(), 1, None).unwrap();
        let here_a = io.object_id(a.path()).unwrap();
        let here_b = io.object_id(b.path()).unwrap();
        assert_eq!(renewal_needed(&meta, here_a, false, false), None);
        assert_eq!(
            renewal_needed(&meta, here_b, false, true),
            None,
            "read-only"
        );
        assert_eq!(
            renewal_needed(&meta, here_b, false, false),
            Some(Renewal::CopiedDirectory)
        );
        assert_eq!(
            renewal_needed(&meta, here_a, true, false),
            Some(Renewal::Requested)
        );
        let new = renewed(&meta, here_b, || unreachable!()).unwrap();
        assert_ne!(new.node, meta.node);
        assert_eq!(new.former, vec![meta.node]);
        assert_eq!(renewal_needed(&new, here_b, false, false), None);
    }

    #[test]
    fn past_the_cap_only_ids_no_file_carries_are_dropped() {
        let meta = Meta {
            node: NodeId(1),
            created_ms: 0,
            home: None,
            former: (2..2 + FORMER_NODE_IDS_MAX as u64).map(NodeId).collect(),
            key_id: None,
            clear_files_pending: false,
            node_since_seq: 0,
        };
        let new = renewed(&meta, None, || Ok(vec![NodeId(1), NodeId(5)])).unwrap();
        assert_eq!(new.former, vec![NodeId(5), NodeId(1)]);
        let all: Vec<NodeId> = meta.lineage();
        let refused = renewed(&meta, None, || Ok(all));
        assert!(matches!(refused, Err(Error::LimitExceeded { .. })));
    }
}
