//! The database side of replication: what a leader reads to ship, and how
//! a follower applies what it receives through the normal durable path.
//!
//! A follower's position is a `_local` record written in the same WAL frame
//! as the data it covers (or, for an installed snapshot, in the same
//! snapshot file), so after any crash the stored position says exactly
//! what the follower holds.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::Db;
use crate::clock::Stamp;
use crate::codec::{Reader, Writer};
use crate::crdt::{KeyState, Register};
use crate::error::{Error, Result};
use crate::io::IoFile;
use crate::meta;
use crate::record::keyspace_prefix;
use crate::record::{Record, StoreKey};
use crate::replication::Cursor;
use crate::replication::leader::LeaderPosition;
use crate::snapshot::{self, SNAPSHOT_DIR};
use crate::sync::{LOCAL_KEYSPACE, is_local};
use crate::wal::format::{self, FRAME_HEADER_BYTES};

/// The follower's position, in its `_local` keyspace.
const FOLLOWER_POSITION_KEY: &[u8] = b"replication/follower-position";
/// The leader's epoch, in its `_local` keyspace.
const LEADER_EPOCH_KEY: &[u8] = b"replication/epoch";
const POSITION_FORMAT_VERSION: u8 = 1;
const POSITION_BYTES: usize = 1 + 5 * 8;
/// Records per WAL frame when a received batch is too large for one frame
/// with the position added.
const SPLIT_CHUNK_RECORDS: usize = 10_000;

/// A follower's durable replication position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FollowerPosition {
    /// The leader's node id (its stream).
    pub stream: u64,
    /// The leader's epoch.
    pub epoch: u64,
    /// The leader sequence number through which this copy holds the log.
    pub seq: u64,
    /// The leader's durable sequence number when this was stored.
    pub leader_seq: u64,
    /// This copy's wall time when this was stored, in ms since the epoch.
    pub stored_ms: u64,
}

impl FollowerPosition {
    /// The protocol cursor.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            stream: self.stream,
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Sequence numbers the follower was behind when this was stored.
    pub fn lag_seqs(&self) -> u64 {
        self.leader_seq.saturating_sub(self.seq)
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(POSITION_BYTES);
        w.u8(POSITION_FORMAT_VERSION);
        for field in [
            self.stream,
            self.epoch,
            self.seq,
            self.leader_seq,
            self.stored_ms,
        ] {
            w.u64(field);
        }
        w.into_vec()
    }

    fn decode(bytes: &[u8]) -> std::result::Result<FollowerPosition, String> {
        let mut r = Reader::new(bytes);
        let fail = |e: crate::codec::DecodeError| e.to_string();
        let version = r.u8().map_err(fail)?;
        if version != POSITION_FORMAT_VERSION || bytes.len() != POSITION_BYTES {
            return Err(format!(
                "follower position version {version}, {} bytes",
                bytes.len()
            ));
        }
        let mut next = || r.u64().map_err(fail);
        Ok(FollowerPosition {
            stream: next()?,
            epoch: next()?,
            seq: next()?,
            leader_seq: next()?,
            stored_ms: next()?,
        })
    }
}

/// The snapshot a leader sends: an open file (so pruning cannot pull it
/// away mid-transfer) and the sequence number it covers.
pub(crate) struct ShippedSnapshot {
    pub file: IoFile,
    pub covered_seq: u64,
    pub size_bytes: u64,
}

impl Db {
    /// This follower's stored position (`None` if it never received any).
    pub fn follower_position(&self) -> Result<Option<FollowerPosition>> {
        let store_key = local_key(FOLLOWER_POSITION_KEY);
        let Some(bytes) = self.inner.engine.state.read(&store_key, |s| {
            s.and_then(|s| s.register.as_ref())
                .and_then(|r| r.value.clone())
        }) else {
            return Ok(None);
        };
        FollowerPosition::decode(&bytes)
            .map(Some)
            .map_err(|reason| Error::Decode {
                what: "follower position",
                reason,
            })
    }

    /// Deletes the stored follower position (on promotion).
    pub(crate) fn forget_follower_position(&self) -> Result<()> {
        if self.follower_position()?.is_some() {
            self.reserved_keyspace(LOCAL_KEYSPACE)?
                .delete(FOLLOWER_POSITION_KEY)?;
        }
        Ok(())
    }

    /// The cursor to start following with: the stored one; all zero for an
    /// empty database; and for one holding data but no position (promoted,
    /// or never a follower), a cursor no leader matches, so it is sent a
    /// snapshot that replaces what it holds.
    pub(crate) fn start_cursor(&self) -> Result<Cursor> {
        if let Some(position) = self.follower_position()? {
            return Ok(position.cursor());
        }
        let holds_data = self
            .inner
            .engine
            .state
            .with_map(|map| map.keys().any(|k| !is_local(k)));
        Ok(if holds_data {
            Cursor {
                stream: 0,
                epoch: u64::MAX,
                seq: 0,
            }
        } else {
            Cursor::default()
        })
    }

    /// Marks the directory (durably) as a follower of `leader`.
    pub(crate) fn mark_follower(&self, leader: &str) -> Result<()> {
        if !self.inner.read_only {
            return Err(Error::InvalidCommand {
                reason: "only a database opened read-only can become a follower".into(),
            });
        }
        meta::write_follower_marker(&self.io(), &self.inner.dir, leader)?;
        *self.inner.follower_of.write() = Some(leader.to_string());
        Ok(())
    }

    /// Applies a leader's verified WAL frames durably, with `position`
    /// stored in the same WAL frame. The leader's own `_local` records are
    /// not applied. Re-applying a batch changes nothing: records carry CRDT
    /// states, and the WAL frame is deduplicated by the batch's position.
    pub(crate) fn apply_replicated(
        &self,
        frames: &[u8],
        first_seq: u64,
        position: FollowerPosition,
    ) -> Result<()> {
        let mut records = decode_wal_frames(frames)?;
        self.observe_stamps(records.iter().filter_map(|r| r.delta.newest_stamp()));
        let id = batch_dedup_id(position, first_seq);
        let engine = &self.inner.engine;
        records.push(self.local_record(FOLLOWER_POSITION_KEY, position.encode()));
        match engine.import_chunk(&records, &id) {
            Err(Error::LimitExceeded {
                limit: "frame_payload_bytes_max",
                ..
            }) => {}
            done => return done.map(|_| ()),
        }
        // Too large for one frame with the position: the data in chunks,
        // then the position. A crash in between re-applies the chunks on
        // reconnect, which changes nothing.
        let position_record = records.pop();
        for (index, chunk) in records.chunks(SPLIT_CHUNK_RECORDS).enumerate() {
            let mut chunk_id = blake3::Hasher::new();
            chunk_id.update(&id);
            chunk_id.update(&(index as u64).to_le_bytes());
            engine.import_chunk(chunk, chunk_id.finalize().as_bytes())?;
        }
        engine.import_chunk(&Vec::from_iter(position_record), &id)?;
        Ok(())
    }

    /// Replaces this follower's replicated state with the verified leader
    /// snapshot at `path`, storing `position` in the same snapshot file.
    pub(crate) fn install_replicated(
        &self,
        path: &Path,
        position: FollowerPosition,
    ) -> Result<u64> {
        let loaded = snapshot::read_snapshot(&self.io(), path)?;
        let records: Vec<Record> = loaded
            .records
            .into_iter()
            .filter(|r| !is_local(&r.store_key))
            .collect();
        let newest = records.iter().filter_map(|r| r.delta.newest_stamp());
        self.observe_stamps(newest.chain([loaded.meta.hlc]));
        let entries = records.len() as u64;
        let local = vec![self.local_record(FOLLOWER_POSITION_KEY, position.encode())];
        self.inner.maintenance.install_state(records, local)?;
        Ok(entries)
    }

    /// Raises the clock past every stamp this copy now holds, so that once
    /// promoted its writes order after everything it replicated. No drift
    /// check: the leader's history is taken as it is.
    fn observe_stamps(&self, stamps: impl Iterator<Item = Stamp>) {
        if let Some(newest) = stamps.max() {
            self.inner.engine.hlc.lock().observe_recovered(newest);
        }
    }

    /// A `_local` register write stamped by this copy's clock.
    fn local_record(&self, key: &[u8], value: Vec<u8>) -> Record {
        let engine = &self.inner.engine;
        let stamp = engine.hlc.lock().tick(engine.options.wall_clock.now_ms());
        Record {
            store_key: local_key(key),
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

    /// This leader's replication epoch: drawn at random the first time and
    /// kept in `_local`, and drawn again after an open that repaired the
    /// WAL (sequence numbers after the repair point may be reused, so a
    /// follower's cursor past it means another history).
    pub(crate) fn replication_epoch(&self) -> Result<u64> {
        let local = self.reserved_keyspace(LOCAL_KEYSPACE)?;
        let stored = local
            .get(LEADER_EPOCH_KEY)
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_le_bytes);
        let repaired = self.recovery_report().repair.is_some();
        match stored {
            Some(epoch) if !repaired || self.epoch_redrawn() => Ok(epoch),
            _ => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).map_err(|e| Error::InvalidCommand {
                    reason: format!("no randomness for a replication epoch: {e}"),
                })?;
                let epoch = u64::from_le_bytes(bytes).max(1);
                local.put(LEADER_EPOCH_KEY, epoch.to_le_bytes())?;
                self.inner
                    .epoch_redrawn
                    .store(true, std::sync::atomic::Ordering::Release);
                Ok(epoch)
            }
        }
    }

    fn epoch_redrawn(&self) -> bool {
        self.inner
            .epoch_redrawn
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Where this leader's log stands.
    pub(crate) fn leader_position(&self, epoch: u64) -> LeaderPosition {
        let wal = self.wal();
        let durable_seq = wal.shippable_seq();
        let first_available_seq = wal
            .segment_ranges()
            .first()
            .map_or(durable_seq.saturating_add(1), |s| s.first_seq);
        LeaderPosition {
            stream: self.node_id().0,
            epoch,
            first_available_seq,
            durable_seq,
        }
    }

    /// The newest snapshot, opened for sending (one is written first if
    /// there is none). The WAL after it is always kept, so a follower can
    /// continue from its covered sequence number.
    pub(crate) fn snapshot_to_ship(&self) -> Result<ShippedSnapshot> {
        let io = self.io();
        let snap_dir = self.inner.dir.join(SNAPSHOT_DIR);
        // A compaction may prune the newest snapshot between listing and
        // opening: list again, and compact if there is none.
        for _ in 0..3 {
            match snapshot::list_snapshots(&io, &snap_dir)?.first() {
                None => {
                    self.compact_now()?;
                }
                Some((covered_seq, path)) => match io.open_read(path) {
                    Ok(file) => {
                        return Ok(ShippedSnapshot {
                            size_bytes: file.len_bytes()?,
                            file,
                            covered_seq: *covered_seq,
                        });
                    }
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Err(Error::InvalidCommand {
            reason: "no snapshot stayed on disk long enough to be sent".into(),
        })
    }
}

/// The store key of `key` in the `_local` keyspace.
fn local_key(key: &[u8]) -> StoreKey {
    StoreKey::concat(&keyspace_prefix(LOCAL_KEYSPACE), key)
}

/// The idempotency id of the batch ending at `position.seq`.
fn batch_dedup_id(position: FollowerPosition, first_seq: u64) -> [u8; 32] {
    let mut id = blake3::Hasher::new_derive_key("mergekv replication batch v1");
    for field in [position.stream, position.epoch, first_seq, position.seq] {
        id.update(&field.to_le_bytes());
    }
    *id.finalize().as_bytes()
}

/// The records of back-to-back WAL frames, without the sender's `_local`
/// ones.
fn decode_wal_frames(mut frames: &[u8]) -> Result<Vec<Record>> {
    let damaged = |reason: String| Error::Decode {
        what: "replicated WAL frame",
        reason,
    };
    let mut records = Vec::new();
    while !frames.is_empty() {
        let (header, payload) =
            format::read_frame(frames).map_err(|e| damaged(format!("{e:?}")))?;
        let decoded = crate::record::decode_payload(payload, header.op_count)
            .map_err(|e| damaged(e.to_string()))?;
        records.extend(
            decoded
                .records
                .into_iter()
                .filter(|r| !is_local(&r.store_key)),
        );
        frames = &frames[FRAME_HEADER_BYTES + payload.len()..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_and_refuses_other_lengths() {
        let p = FollowerPosition {
            stream: 1,
            epoch: 2,
            seq: 3,
            leader_seq: 4,
            stored_ms: 5,
        };
        assert_eq!(FollowerPosition::decode(&p.encode()), Ok(p));
        assert!(FollowerPosition::decode(&p.encode()[..20]).is_err());
        let mut longer = p.encode();
        longer.push(0);
        assert!(FollowerPosition::decode(&longer).is_err());
    }
}
