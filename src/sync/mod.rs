//! Reconciliation between copies: change sets (export and import).
//!
//! A [`SyncCursor`] is a version vector: for each origin node, the newest
//! stamp from that node the receiving side already has. `export_since`
//! sends every part of every key's CRDT state (register, per-node counter
//! totals, with the floor) stamped by some node after the cursor's entry
//! for that node, and returns the cursor of the whole state it looked at.
//! Because the state is a CRDT, sending the current state of what changed
//! is enough: superseded writes never need to travel.
//!
//! A change set is self-verifying (blake3 over its content; layout in
//! `docs/FORMAT.md`). Import verifies it, runs every stamp through the drift
//! check, and applies it through the WAL in chunks, each with an
//! idempotency key derived from the change set's hash, so importing the same
//! change set twice changes nothing, and an interrupted import resumes.

pub mod changeset;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::{NodeId, Stamp};
use crate::crdt::{Counter, KeyState};
use crate::state::StateMap;
use crate::wal::format::Record;

/// What one copy has seen of each origin: the newest stamp per node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

    fn observe(&mut self, stamp: Stamp) {
        let entry = self.seen.entry(stamp.node).or_insert(stamp);
        if stamp > *entry {
            *entry = stamp;
        }
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
/// `after` observes every stamp of the state.
fn newer_parts(state: &KeyState, cursor: &SyncCursor, after: &mut SyncCursor) -> Option<KeyState> {
    let register = state.register.as_ref().filter(|r| {
        after.observe(r.stamp);
        cursor.is_new(r.stamp)
    });
    let totals: Vec<_> = state
        .counter
        .as_ref()
        .map(|c| c.totals.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|t| {
            after.observe(t.stamp);
            cursor.is_new(t.stamp)
        })
        .copied()
        .collect();
    if register.is_none() && totals.is_empty() {
        return None;
    }
    // The floor travels with anything sent: merging it again is harmless.
    let floor = state
        .counter
        .as_ref()
        .map(|c| c.floor.clone())
        .unwrap_or_default();
    let counter =
        (!totals.is_empty() || !floor.is_empty()).then(|| Box::new(Counter { totals, floor }));
    Some(KeyState {
        register: register.cloned(),
        counter,
    })
}

/// Every record of `map` newer than `cursor`, in key order, and the cursor
/// after them.
pub(crate) fn collect_changes(map: &StateMap, cursor: &SyncCursor) -> (Vec<Record>, SyncCursor) {
    let mut after = cursor.clone();
    let records = map
        .iter()
        .filter_map(|(key, state)| {
            newer_parts(state, cursor, &mut after).map(|delta| Record {
                store_key: key.clone(),
                delta,
            })
        })
        .collect();
    (records, after)
}
