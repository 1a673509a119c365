//! The follower's side of the database: where following starts, and how
//! a received batch or snapshot is applied through the engine's one commit
//! path.
//!
//! A follower's position is a `_local` record committed in the same WAL
//! frame as the data it covers (or, for an installed snapshot, written in
//! the same snapshot file), so after any crash the stored position says
//! exactly what the follower holds.

use std::path::Path;
use std::sync::Arc;

use crate::crdt::{KeyState, Register};
use crate::db::position::{FOLLOWER_POSITION_KEY, local_key};
use crate::db::{Db, FollowerPosition};
use crate::engine::CommitId;
use crate::error::{Error, Result};
use crate::meta;
use crate::record::Record;
use crate::snapshot;
use crate::sync::is_local;

use super::Cursor;

/// The protocol cursor a stored position stands for.
impl From<FollowerPosition> for Cursor {
    fn from(position: FollowerPosition) -> Cursor {
        Cursor {
            stream: position.stream,
            epoch: position.epoch,
            seq: position.seq,
        }
    }
}

/// The cursor to start following with: the stored one; all zero for an
/// empty database; and for one holding data but no position (promoted,
/// or never a follower), a cursor no leader matches, so it is sent a
/// snapshot that replaces what it holds.
///
/// A repaired follower (a WAL cut, or a snapshot salvaged with chunks
/// lost) may lack data its position claims, so it too starts with a
/// cursor no leader matches; the snapshot's install settles the repair.
pub(crate) fn start_cursor(db: &Db) -> Result<Cursor> {
    if db.repair_pending()? {
        return Ok(MISMATCH);
    }
    if let Some(position) = db.follower_position()? {
        return Ok(Cursor::from(position));
    }
    let mut holds_data = false;
    for entry in db.engine().state().view().iter() {
        if !is_local(&entry?.0) {
            holds_data = true;
            break;
        }
    }
    Ok(if holds_data {
        MISMATCH
    } else {
        Cursor::default()
    })
}

/// A cursor no leader matches: the leader answers with a snapshot.
const MISMATCH: Cursor = Cursor {
    stream: 0,
    epoch: u64::MAX,
    seq: 0,
};

/// Marks the directory (durably) as a follower of `leader`.
pub(crate) fn mark_follower(db: &Db, leader: &str) -> Result<()> {
    if !db.is_read_only() {
        return Err(Error::InvalidCommand {
            reason: "only a database opened read-only can become a follower".into(),
        });
    }
    meta::write_follower_marker(&db.io(), db.dir(), leader)?;
    db.set_follower_of(leader);
    Ok(())
}

/// Applies a leader's verified records durably, with `position` stored in
/// the same WAL frame (or, for a batch too large for one frame, after the
/// chunks: a crash in between re-applies the chunks on reconnect, which
/// changes nothing). The leader's own `_local` records are not applied.
/// Re-applying a batch changes nothing: records carry CRDT states, and the
/// commit is deduplicated by the batch's position and `content` (a hash of
/// its WAL frames), so a different batch at the same position is applied.
pub(crate) fn apply_replicated(
    db: &Db,
    mut records: Vec<Record>,
    content: &[u8; 32],
    first_seq: u64,
    position: FollowerPosition,
) -> Result<()> {
    records.retain(|r| !is_local(&r.store_key));
    let engine = db.engine();
    engine.observe_stamps(records.iter().filter_map(|r| r.delta.newest_stamp()));
    let tail = local_record(db, position.encode());
    let id = batch_commit_id(position, first_seq, content);
    engine.commit_records(records, id, Some(tail))?;
    Ok(())
}

/// A received leader snapshot, read back and checked, ready to install.
pub(crate) struct ReplicatedSnapshot {
    records: Vec<Record>,
}

/// Reads the received leader snapshot at `path` whole and checks it (it
/// verifies itself); keeps the leader's records but not its `_local` ones,
/// and lets this copy's clock see every stamp.
///
/// The file must cover at least `covered_seq` (what SNAPSHOT_BEGIN said:
/// the follower continues after it, so a file covering less would skip
/// the writes between; one covering more is harmless, merging is
/// idempotent),
/// and, from an encrypted leader (`leader_key`), be encrypted under that
/// key: its chunks, end included, are then authenticated, so no one on the
/// path can swap, cut or replace it.
pub(crate) fn read_replicated(
    db: &Db,
    path: &Path,
    covered_seq: u64,
    leader_key: Option<crate::crypto::KeyId>,
) -> Result<ReplicatedSnapshot> {
    let keyring = db.engine().wal().keyring().read().clone();
    let io = db.io();
    let refuse = |reason: String| Error::corruption(path, 0, reason);
    let key = snapshot::read_snapshot_key_id(&io, path)?;
    if key != leader_key {
        return Err(refuse(format!(
            "the leader's snapshot is {}, but its WELCOME said {}",
            key.map_or("in clear".into(), |k| format!("encrypted with key id {k}")),
            leader_key.map_or("in clear".into(), |k| format!("key id {k}"))
        )));
    }
    // An encrypted leader's snapshot opens only with its key: a follower
    // without it stops here, before anything is applied.
    let loaded = snapshot::read_snapshot(&io, path, &keyring)?;
    if loaded.meta.covered_seq < covered_seq {
        return Err(refuse(format!(
            "the snapshot covers sequence {}, but SNAPSHOT_BEGIN announced {covered_seq}",
            loaded.meta.covered_seq
        )));
    }
    let records: Vec<Record> = loaded
        .records
        .into_iter()
        .filter(|r| !is_local(&r.store_key))
        .collect();
    let newest = records.iter().filter_map(|r| r.delta.newest_stamp());
    db.engine().observe_stamps(newest.chain([loaded.meta.hlc]));
    Ok(ReplicatedSnapshot { records })
}

/// Replaces this follower's replicated state with a leader snapshot,
/// storing `position` in the same snapshot file; returns the entries
/// installed.
pub(crate) fn install_replicated(
    db: &Db,
    snapshot: ReplicatedSnapshot,
    position: FollowerPosition,
) -> Result<u64> {
    let entries = snapshot.records.len() as u64;
    let local = vec![local_record(db, position.encode())];
    db.maintenance().install_state(snapshot.records, local)?;
    // The leader's state replaced whatever a repair left.
    db.clear_repair_marker()?;
    Ok(entries)
}

/// The position as a `_local` register write stamped by this copy's clock.
fn local_record(db: &Db, value: Vec<u8>) -> Record {
    let engine = db.engine();
    let stamp = engine.hlc().tick(engine.now_ms());
    Record {
        store_key: local_key(FOLLOWER_POSITION_KEY),
        delta: KeyState {
            register: Some(Register {
                stamp,
                value: Some(Arc::from(value)),
                floor: Vec::new(),
            }),
            counter: None,
        },
    }
}

/// The commit id of the batch ending at `position.seq` whose WAL frames
/// hash to `content`. The content is in it because a position alone can
/// name two batches: a leader whose log was cut back (a repair, a lost
/// tail) may reuse sequence numbers, and its new writes must not be
/// answered as duplicates of the old ones.
fn batch_commit_id(position: FollowerPosition, first_seq: u64, content: &[u8; 32]) -> CommitId {
    let mut id = blake3::Hasher::new_derive_key("mergekv replication batch v2");
    for field in [position.stream, position.epoch, first_seq, position.seq] {
        id.update(&field.to_le_bytes());
    }
    id.update(content);
    CommitId(*id.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Stamp};

    fn put(key: &str, value: &Arc<[u8]>) -> Record {
        Record {
            store_key: crate::record::store_key("default", key.as_bytes()),
            delta: KeyState {
                register: Some(Register {
                    stamp: Stamp {
                        physical_ms: 1000,
                        logical: 0,
                        node: NodeId(9),
                    },
                    value: Some(value.clone()),
                    floor: Vec::new(),
                }),
                counter: None,
            },
        }
    }

    /// Three records of 100 MiB: too many bytes for one WAL frame, though
    /// only three of them (a split by record count would not split).
    #[test]
    fn a_replicated_batch_too_large_for_one_frame_is_split_by_bytes_position_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let value: Arc<[u8]> = vec![7u8; 100 << 20].into();
        let records: Vec<Record> = (0..3).map(|i| put(&format!("k{i}"), &value)).collect();
        let position = FollowerPosition {
            stream: 1,
            epoch: 2,
            seq: 3,
            leader_seq: 3,
            stored_ms: 0,
        };
        let frames_before = db.engine().wal().stats().frames_written;
        apply_replicated(&db, records.clone(), &[5; 32], 1, position).unwrap();
        let wal = db.engine().wal().stats();
        assert_eq!(
            wal.frames_written - frames_before,
            3,
            "two chunks of records by size, then the position alone"
        );
        for i in 0..3 {
            assert_eq!(
                db.get(format!("k{i}")).unwrap().map(|v| v.len()),
                Some(100 << 20)
            );
        }
        assert_eq!(db.follower_position().unwrap(), Some(position));
        // Applied again (a reconnect after a crash between the chunks and
        // the position): every chunk and the position are duplicates.
        apply_replicated(&db, records, &[5; 32], 1, position).unwrap();
        assert_eq!(db.engine().wal().stats().last_seq, wal.last_seq);
    }
}
