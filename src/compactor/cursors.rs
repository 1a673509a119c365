//! Registered cursors, kept in memory and in `<dir>/CURSORS`.
//!
//! A cursor holds back tombstone GC and WAL truncation for a reader (a sync
//! peer, a follower), so losing one at a restart can bring a deleted key
//! back. The file is written atomically, and before any change that makes
//! it *less* cautious than the set in memory: a new cursor, a cursor moved
//! back, a removed one. A cursor moved forward (a follower's every ack) is
//! written lazily, before each compaction decides what to drop and at
//! close: the file then holds an older position, which only keeps more.
//!
//! Invariant: for every cursor in memory the file holds the same name
//! with a position at or below it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::io::Io;

use super::CursorInfo;

/// Name of the cursor file in the database directory.
pub const CURSORS_FILE: &str = "CURSORS";
/// Most cursors that can be registered at once.
pub const CURSORS_MAX: usize = 1024;
/// Longest cursor name, in bytes.
pub const CURSOR_NAME_BYTES_MAX: usize = 256;

const CURSORS_MAGIC: [u8; 8] = *b"MKVCURS\x01";
const CURSORS_FORMAT_VERSION: u16 = 2;
/// Version 1 had no `touched_ms`.
const CURSORS_FORMAT_VERSION_1: u16 = 1;
const FLAG_NEEDS_RESYNC: u8 = 1;

/// The cursors, and whether the file lags behind them.
pub(crate) struct Cursors {
    path: PathBuf,
    map: BTreeMap<String, CursorInfo>,
    /// A forward move is not yet in the file.
    dirty: bool,
    /// The file was damaged and set aside: its cursors are unknown, so
    /// tombstone GC is held for the rest of this open.
    lost: bool,
}

impl Cursors {
    /// The cursors stored in `dir`, or none if the file does not exist.
    pub fn load(io: &Io, dir: &Path) -> Result<Self> {
        let path = dir.join(CURSORS_FILE);
        let map = match io.read_if_exists(&path)? {
            Some(bytes) => {
                decode_cursors(&bytes).map_err(|reason| Error::corruption(&path, 0, reason))?
            }
            None => BTreeMap::new(),
        };
        Ok(Self {
            path,
            map,
            dirty: false,
            lost: false,
        })
    }

    /// No cursors, for a file that was damaged (and, if `writable`, is
    /// rewritten empty at the next flush).
    pub fn lost(dir: &Path, writable: bool) -> Self {
        Self {
            path: dir.join(CURSORS_FILE),
            map: BTreeMap::new(),
            dirty: writable,
            lost: true,
        }
    }

    /// True if the cursor file was damaged at open: its cursors are lost.
    pub fn are_lost(&self) -> bool {
        self.lost
    }

    /// Registers or moves a cursor; durable before it returns unless it
    /// only moved forward.
    pub fn set(&mut self, io: &Io, name: &str, seq: u64, now_ms: u64) -> Result<()> {
        if name.len() > CURSOR_NAME_BYTES_MAX {
            return Err(Error::limit(
                "cursor_name_bytes_max",
                name.len(),
                CURSOR_NAME_BYTES_MAX,
            ));
        }
        let old = self.map.get(name).cloned();
        if old.is_none() && self.map.len() >= CURSORS_MAX {
            return Err(Error::limit("cursors", self.map.len() + 1, CURSORS_MAX));
        }
        let needs_resync = old.as_ref().is_some_and(|c| c.needs_resync && c.seq >= seq);
        let info = CursorInfo {
            seq,
            needs_resync,
            touched_ms: now_ms,
        };
        let forward = old.as_ref().is_some_and(|c| c.seq <= seq);
        if old.as_ref() == Some(&info) {
            return Ok(());
        }
        self.map.insert(name.to_string(), info);
        if forward {
            self.dirty = true;
            return Ok(());
        }
        self.persist(io).inspect_err(|_| {
            // Not durable: the registration must not be relied on.
            match old {
                Some(old) => self.map.insert(name.to_string(), old),
                None => self.map.remove(name),
            };
        })
    }

    /// A cursor's position.
    pub fn get(&self, name: &str) -> Option<CursorInfo> {
        self.map.get(name).cloned()
    }

    /// Forgets a cursor, durably; true if it was registered.
    pub fn remove(&mut self, io: &Io, name: &str) -> Result<bool> {
        let Some(old) = self.map.remove(name) else {
            return Ok(false);
        };
        self.persist(io).inspect_err(|_| {
            self.map.insert(name.to_string(), old);
        })?;
        Ok(true)
    }

    /// Every cursor, by name.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut CursorInfo)> {
        self.map.iter_mut()
    }

    /// The names of every cursor, in order.
    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Every cursor, by name.
    pub fn values(&self) -> impl Iterator<Item = &CursorInfo> {
        self.map.values()
    }

    /// Notes that positions changed in memory (a cursor marked for resync).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Writes the file if it lags behind memory.
    pub fn flush(&mut self, io: &Io) -> Result<()> {
        if self.dirty {
            self.persist(io)?;
        }
        Ok(())
    }

    fn persist(&mut self, io: &Io) -> Result<()> {
        io.write_atomic(&self.path, &encode_cursors(&self.map))?;
        self.dirty = false;
        Ok(())
    }
}

/// The cursor file's bytes for `map`.
pub(crate) fn encode_cursors(map: &BTreeMap<String, CursorInfo>) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + map.len() * 32);
    w.bytes(&CURSORS_MAGIC);
    w.u16(CURSORS_FORMAT_VERSION);
    w.u32(map.len() as u32);
    for (name, info) in map {
        w.u16(name.len() as u16);
        w.bytes(name.as_bytes());
        w.u64(info.seq);
        w.u64(info.touched_ms);
        w.u8(if info.needs_resync {
            FLAG_NEEDS_RESYNC
        } else {
            0
        });
    }
    let crc = crc32c::crc32c(w.as_slice());
    w.u32(crc);
    w.into_vec()
}

/// The cursors in a cursor file's bytes, or why they do not decode.
pub(crate) fn decode_cursors(
    bytes: &[u8],
) -> std::result::Result<BTreeMap<String, CursorInfo>, String> {
    let Some((checked, stored_crc)) = bytes.split_last_chunk::<4>() else {
        return Err(format!("{} bytes: shorter than a checksum", bytes.len()));
    };
    if crc32c::crc32c(checked) != u32::from_le_bytes(*stored_crc) {
        return Err("checksum mismatch".into());
    }
    let fail = |e: crate::codec::DecodeError| e.to_string();
    let mut r = Reader::new(checked);
    if r.take(8).map_err(fail)? != CURSORS_MAGIC {
        return Err("bad magic".into());
    }
    let version = r.u16().map_err(fail)?;
    if version != CURSORS_FORMAT_VERSION && version != CURSORS_FORMAT_VERSION_1 {
        return Err(format!("unsupported version {version}"));
    }
    let count = r.u32().map_err(fail)? as usize;
    if count > CURSORS_MAX {
        return Err(format!("{count} cursors, more than {CURSORS_MAX}"));
    }
    let mut map = BTreeMap::new();
    for _ in 0..count {
        let len = usize::from(r.u16().map_err(fail)?);
        if len > CURSOR_NAME_BYTES_MAX {
            return Err(format!("cursor name of {len} bytes"));
        }
        let name = std::str::from_utf8(r.take(len).map_err(fail)?)
            .map_err(|_| "cursor name is not UTF-8".to_string())?
            .to_string();
        let seq = r.u64().map_err(fail)?;
        let touched_ms = if version == CURSORS_FORMAT_VERSION_1 {
            0
        } else {
            r.u64().map_err(fail)?
        };
        let flags = r.u8().map_err(fail)?;
        if flags & !FLAG_NEEDS_RESYNC != 0 {
            return Err(format!("unknown cursor flags {flags:#x}"));
        }
        let needs_resync = flags & FLAG_NEEDS_RESYNC != 0;
        map.insert(
            name,
            CursorInfo {
                seq,
                needs_resync,
                touched_ms,
            },
        );
    }
    if r.remaining() != 0 {
        return Err(format!("{} bytes after the last cursor", r.remaining()));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_refuses_every_flipped_byte() {
        let mut map = BTreeMap::new();
        map.insert(
            "peer".to_string(),
            CursorInfo {
                seq: 7,
                needs_resync: false,
                touched_ms: 5,
            },
        );
        map.insert(
            "replication/follower-1".to_string(),
            CursorInfo {
                seq: u64::MAX,
                needs_resync: true,
                touched_ms: u64::MAX,
            },
        );
        let bytes = encode_cursors(&map);
        assert_eq!(decode_cursors(&bytes), Ok(map));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode_cursors(&bad).is_err(), "flip at {i}");
        }
        assert!(decode_cursors(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_cursors(&[]).is_err());
    }

    #[test]
    fn a_version_1_file_still_reads() {
        let mut w = Writer::with_capacity(64);
        w.bytes(&CURSORS_MAGIC);
        w.u16(CURSORS_FORMAT_VERSION_1);
        w.u32(1);
        w.u16(4);
        w.bytes(b"peer");
        w.u64(9);
        w.u8(0);
        let crc = crc32c::crc32c(w.as_slice());
        w.u32(crc);
        let map = decode_cursors(w.as_slice()).unwrap();
        let peer = map.get("peer").unwrap();
        assert_eq!(
            (peer.seq, peer.needs_resync, peer.touched_ms),
            (9, false, 0)
        );
    }

    #[test]
    fn only_a_forward_move_waits_for_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::default();
        let mut cursors = Cursors::load(&io, dir.path()).unwrap();
        cursors.set(&io, "a", 5, 0).unwrap();
        let on_disk = |name: &str| Cursors::load(&io, dir.path()).unwrap().get(name);
        assert_eq!(on_disk("a").map(|c| c.seq), Some(5), "a new cursor");
        cursors.set(&io, "a", 9, 0).unwrap();
        assert_eq!(on_disk("a").map(|c| c.seq), Some(5), "forward: lazily");
        cursors.set(&io, "a", 3, 0).unwrap();
        assert_eq!(on_disk("a").map(|c| c.seq), Some(3), "back: at once");
        cursors.set(&io, "a", 4, 0).unwrap();
        cursors.flush(&io).unwrap();
        assert_eq!(on_disk("a").map(|c| c.seq), Some(4));
        assert!(cursors.remove(&io, "a").unwrap());
        assert_eq!(on_disk("a"), None);
        let long = "x".repeat(CURSOR_NAME_BYTES_MAX + 1);
        assert!(matches!(
            cursors.set(&io, &long, 1, 0),
            Err(Error::LimitExceeded { .. })
        ));
    }
}
