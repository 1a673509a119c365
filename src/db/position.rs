//! [`FollowerPosition`]: how far a follower holds its leader's log, as
//! stored in its `_local` keyspace.
//!
//! The replication follower writes it in the same WAL frame (or snapshot
//! file) as the data it covers, so after any crash it says exactly what
//! the copy holds; `Db::stats` and the CLI read it back.

use serde::Serialize;

use crate::codec::{Reader, Writer};
use crate::record::{StoreKey, keyspace_prefix};
use crate::sync::LOCAL_KEYSPACE;

/// A leader's replication epoch, in its `_local` keyspace (8 bytes, u64
/// LE). Deleted after a repair, so the next leader draws a new one.
pub(crate) const LEADER_EPOCH_KEY: &[u8] = b"replication/epoch";

/// The follower's position, in its `_local` keyspace.
pub(crate) const FOLLOWER_POSITION_KEY: &[u8] = b"replication/follower-position";
const POSITION_FORMAT_VERSION: u8 = 1;
const POSITION_BYTES: usize = 1 + 5 * 8;

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
    /// Sequence numbers the follower was behind when this was stored.
    pub fn lag_seqs(&self) -> u64 {
        self.leader_seq.saturating_sub(self.seq)
    }

    /// The bytes stored in `_local` (see `docs/FORMAT.md`).
    pub(crate) fn encode(&self) -> Vec<u8> {
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

    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<FollowerPosition, String> {
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

/// The store key of `key` in the `_local` keyspace.
pub(crate) fn local_key(key: &[u8]) -> StoreKey {
    StoreKey::concat(&keyspace_prefix(LOCAL_KEYSPACE), key)
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
