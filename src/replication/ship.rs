//! The leader's side of the database: its replication epoch, where its log
//! stands, and the snapshot it sends a follower that needs one.

use crate::db::{Db, LEADER_EPOCH_KEY};
use crate::error::{Error, Result};
use crate::io::IoFile;
use crate::sync::LOCAL_KEYSPACE;

use super::leader::LeaderPosition;

/// The snapshot a leader sends: an open file (so pruning cannot pull it
/// away mid-transfer) and the sequence number it covers.
pub(crate) struct ShippedSnapshot {
    pub file: IoFile,
    pub covered_seq: u64,
    pub size_bytes: u64,
}

/// This leader's replication epoch: drawn at random the first time and
/// kept in `_local`. A repair (of this open or an earlier one, in any
/// process) deletes it at the next writable open (`Db::settle_repair`):
/// sequence numbers after the repair point may be reused, so a follower's
/// cursor past it means another history and must get a snapshot.
pub(crate) fn replication_epoch(db: &Db) -> Result<u64> {
    let local = db.reserved_keyspace(LOCAL_KEYSPACE)?;
    let stored = local
        .get(LEADER_EPOCH_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map(u64::from_le_bytes);
    match stored {
        Some(epoch) if !db.repair_pending()? => Ok(epoch),
        _ => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| Error::InvalidCommand {
                reason: format!("no randomness for a replication epoch: {e}"),
            })?;
            let epoch = u64::from_le_bytes(bytes).max(1);
            local.put(LEADER_EPOCH_KEY, epoch.to_le_bytes())?;
            Ok(epoch)
        }
    }
}

/// Where this leader's log stands.
pub(crate) fn leader_position(db: &Db, epoch: u64) -> LeaderPosition {
    let wal = db.engine().wal();
    let durable_seq = wal.shippable_seq();
    let first_available_seq = wal
        .segment_ranges()
        .first()
        .map_or(durable_seq.saturating_add(1), |s| s.first_seq);
    LeaderPosition {
        key_id: wal.keyring().read().current_id(),
        stream: db.node_id().0,
        epoch,
        first_available_seq,
        durable_seq,
    }
}

/// A snapshot of the whole state, written for this transfer and opened
/// for sending (the file is unlinked at once, so nothing is left behind).
/// `hold` is called with the sequence number it covers before any
/// compaction can truncate the WAL after it, so the follower can continue
/// from there.
pub(crate) fn snapshot_to_ship(db: &Db, hold: impl FnOnce(u64)) -> Result<ShippedSnapshot> {
    let (file, covered_seq, size_bytes) = db.maintenance().snapshot_for_shipping(|seq| {
        hold(seq);
        Ok(())
    })?;
    Ok(ShippedSnapshot {
        file,
        covered_seq,
        size_bytes,
    })
}
