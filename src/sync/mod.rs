//! Reconciliation between copies: change sets (export and import).
//!
//! A [`SyncCursor`] is a version vector: for each origin node, the newest
//! stamp from that node up to which a copy holds everything. `export_since`
//! sends every part of every key's CRDT state (a register with its floor,
//! per-node counter totals) stamped by some node after the cursor's entry
//! for that node. A change set carries the exporter's *complete* cursor:
//! its own writes, plus the cursors of change sets it imported whole. A
//! copy never advertises what it got from a partial transfer (a bucket
//! export, a segment), because a peer would then never send it the rest.
//! Because the state is a CRDT, sending the current state of what changed
//! is enough: superseded writes never need to travel.
//!
//! A change set is self-verifying (blake3 over its content; layout in
//! `docs/FORMAT.md`). Import verifies it, runs every stamp through the drift
//! check, and applies it through the WAL in chunks, each with an
//! idempotency key derived from the change set's hash, so importing the same
//! change set twice changes nothing, and an interrupted import resumes.

// Hidden: the change-set byte format, `pub` for the fuzz targets and tests
// (the layout is in docs/FORMAT.md).
#[doc(hidden)]
pub mod changeset;
pub mod digest;
pub(crate) mod exchange;
pub(crate) mod local;
pub mod stream;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::{NodeId, Stamp};
use crate::crdt::{Counter, KeyState};
use crate::record::Record;
use crate::state::StateView;

/// What one copy has seen of each origin: the newest stamp per node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCursor {
    /// Newest stamp seen, by the node that issued it.
    pub seen: BTreeMap<NodeId, Stamp>,
}

impl SyncCursor {
    /// The empty cursor: nothing seen, so everything is sent.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if `stamp` is newer than what the cursor has from its node.
    fn is_new(&self, stamp: Stamp) -> bool {
        self.seen.get(&stamp.node).is_none_or(|seen| stamp > *seen)
    }

    /// The cursor as text: `physical.logical@node` per origin, joined by
    /// commas (empty for the empty cursor). [`SyncCursor::parse`] reads it.
    pub fn to_text(&self) -> String {
        self.seen
            .values()
            .map(Stamp::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads the text form of [`SyncCursor::to_text`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidCommand`] naming the first entry that is not
    /// `physical.logical@node` (node in hex).
    pub fn parse(text: &str) -> crate::Result<SyncCursor> {
        let bad = |part: &str| crate::Error::InvalidCommand {
            reason: format!("bad cursor entry {part:?}: expected physical.logical@node"),
        };
        let mut cursor = SyncCursor::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (time, node) = part.split_once('@').ok_or_else(|| bad(part))?;
            let (physical, logical) = time.split_once('.').ok_or_else(|| bad(part))?;
            let stamp = Stamp {
                physical_ms: physical.parse().map_err(|_| bad(part))?,
                logical: logical.parse().map_err(|_| bad(part))?,
                node: NodeId(u64::from_str_radix(node, 16).map_err(|_| bad(part))?),
            };
            cursor.observe(stamp);
        }
        Ok(cursor)
    }

    /// True if the cursor has seen `stamp` (or something newer from its node).
    pub fn has_seen(&self, stamp: Stamp) -> bool {
        !self.is_new(stamp)
    }

    /// Merges another cursor in: per node, the newer stamp.
    pub fn merge(&mut self, other: &SyncCursor) {
        for stamp in other.seen.values() {
            self.observe(*stamp);
        }
    }

    fn observe(&mut self, stamp: Stamp) {
        let entry = self.seen.entry(stamp.node).or_insert(stamp);
        if stamp > *entry {
            *entry = stamp;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_text_round_trips_and_bad_text_is_an_error() {
        let mut c = SyncCursor::new();
        c.observe(Stamp {
            physical_ms: 12,
            logical: 3,
            node: NodeId(0xab),
        });
        c.observe(Stamp {
            physical_ms: 9,
            logical: 0,
            node: NodeId(7),
        });
        assert_eq!(SyncCursor::parse(&c.to_text()).unwrap(), c);
        assert_eq!(SyncCursor::parse("").unwrap(), SyncCursor::new());
        assert!(SyncCursor::parse("12@ab").is_err());
        assert!(SyncCursor::parse("x.1@ab").is_err());
    }
}

/// What importing a change set did, counted per key record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Records that changed the state.
    pub applied: u64,
    /// Records older than what the state already had.
    pub stale: u64,
    /// Records in chunks that had already been imported.
    pub duplicates: u64,
}

/// The parts of `state` newer than `cursor`, or `None` if there are none;
/// `after` observes every stamp of the state. Every part carries its own
/// stamp (a register its floor too), which is what makes a version vector
/// enough to know what a peer lacks.
fn newer_parts(state: &KeyState, cursor: &SyncCursor) -> Option<KeyState> {
    parts_where(state, &|stamp| cursor.is_new(stamp))
}

/// The parts of `state` (the register, each node's counter totals) whose
/// stamp `keep` accepts, or `None` if there are none.
pub(crate) fn parts_where(state: &KeyState, keep: &dyn Fn(Stamp) -> bool) -> Option<KeyState> {
    let register = state.register.as_ref().filter(|r| keep(r.stamp));
    let totals: Vec<_> = state
        .counter
        .as_ref()
        .map(|c| c.totals.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|t| keep(t.stamp))
        .copied()
        .collect();
    if register.is_none() && totals.is_empty() {
        return None;
    }
    let counter = (!totals.is_empty()).then(|| Box::new(Counter { totals }));
    Some(KeyState {
        register: register.cloned(),
        counter,
    })
}

/// The keyspace for this copy's own bookkeeping (peer cursors): never
/// exported, never digested.
pub use crate::record::LOCAL_KEYSPACE;

/// True for keys of [`LOCAL_KEYSPACE`].
pub(crate) fn is_local(store_key: &[u8]) -> bool {
    crate::record::split_store_key(store_key).is_some_and(|(ks, _)| ks == LOCAL_KEYSPACE)
}

/// The local key under which this copy's *complete* cursor is kept: per
/// origin, the newest stamp up to which it is known to hold everything
/// (raised only by change sets imported whole, never by partial transfers).
pub(crate) const COMPLETE_CURSOR_KEY: &str = "self/complete";

/// The local key under which the cursor of `peer` is kept.
pub(crate) fn peer_cursor_key(peer: &str) -> String {
    format!("peer/{peer}")
}

/// The cursors of every peer this copy has heard from, as stored in the
/// state `view` shows.
pub(crate) fn peer_cursors(view: &StateView) -> crate::Result<Vec<SyncCursor>> {
    let prefix = crate::record::store_key(LOCAL_KEYSPACE, b"peer/");
    let mut cursors = Vec::new();
    let range = view.range(
        std::ops::Bound::Included(prefix.to_vec()),
        std::ops::Bound::Unbounded,
        false,
    );
    for entry in range {
        let (key, state) = entry?;
        if !key.starts_with(&prefix) {
            break;
        }
        if let crate::crdt::Visible::Bytes(bytes) = state.visible()
            && let Ok(cursor) = local::decode_cursor(bytes)
        {
            cursors.push(cursor);
        }
    }
    Ok(cursors)
}

/// Every record of the state `view` shows newer than `cursor` (and, if
/// given, in one of `buckets` of the digest), in key order.
pub(crate) fn collect_changes(
    view: &StateView,
    cursor: &SyncCursor,
    buckets: Option<&[usize]>,
) -> crate::Result<Vec<Record>> {
    let mut out = Vec::new();
    for entry in view.iter_uncached() {
        let (key, state) = entry?;
        if is_local(&key) || !buckets.is_none_or(|b| digest::Digest::in_buckets(&key, b)) {
            continue;
        }
        if let Some(delta) = newer_parts(&state, cursor) {
            out.push(Record {
                store_key: key,
                delta,
            });
        }
    }
    Ok(out)
}

/// A sealed WAL segment, as offered to peers for exchange by content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// blake3 of the whole segment file.
    pub hash: [u8; 32],
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// What [`crate::Db::import_segment`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SegmentImport {
    /// The segment was applied.
    Applied {
        /// Key records that changed the state.
        keys_written: u64,
        /// Key records that were stale or already there.
        keys_skipped: u64,
    },
    /// This copy already has the segment (its own, or imported before).
    Skipped,
    /// The bytes do not hash to the given hash; nothing was applied.
    HashMismatch,
}

/// The local key marking a segment as imported.
pub(crate) fn segment_marker_key(hash: &[u8; 32]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("segment/{hex}")
}
