//! The concurrent in-memory state map, and the one apply path.
//!
//! An ordered persistent map (`imbl::OrdMap`) from store key to
//! [`KeyState`] behind a `parking_lot::RwLock`. Reads take the read lock for
//! one lookup; a [`crate::ReadView`] clones the map, which is O(1) because
//! the map shares structure, so a view is a consistent snapshot that never
//! blocks writers. Writers apply whole batches under one write lock, so a
//! batch becomes visible all at once.

pub use crate::record::StoreKey;

use imbl::OrdMap;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::crdt::{KeyState, Visible};
use crate::record::Record;

/// The map type: store key to CRDT state.
pub type StateMap = OrdMap<StoreKey, KeyState>;

/// What a command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// The write took effect (a put, or an increment).
    Applied,
    /// The delete took effect (a tombstone now wins).
    Removed,
    /// A newer write to the key already exists; this one lost.
    IgnoredStale,
    /// A batch with the same idempotency key was already committed; nothing
    /// was written.
    Duplicate,
}

/// The shared state of a database.
#[derive(Debug, Default)]
pub struct State {
    map: RwLock<StateMap>,
    /// Set once any counter exists or is on its way in. Until then a put or
    /// delete has no counter totals to observe, and skips looking for them.
    counters_seen: AtomicBool,
}

/// Batches with at least this many records are applied in key order, which
/// keeps the map's changed paths in cache; smaller ones are not worth sorting.
const APPLY_SORTED_RECORDS_MIN: usize = 64;

/// What applying one record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Applied, Removed or IgnoredStale.
    pub kind: OutcomeKind,
    /// The counter's value afterwards, for counter records.
    pub counter: Option<i64>,
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes that a counter exists (or is about to).
    pub fn note_counter(&self) {
        self.counters_seen.store(true, Ordering::Release);
    }

    /// False only if no counter has ever been seen: register writes then
    /// have no counter totals to record.
    pub fn may_have_counters(&self) -> bool {
        self.counters_seen.load(Ordering::Acquire)
    }

    /// Calls `f` with the state of `store_key` under the read lock.
    pub fn read<R>(&self, store_key: &[u8], f: impl FnOnce(Option<&KeyState>) -> R) -> R {
        f(self.map.read().get(store_key))
    }

    /// Calls `f` with the whole map under the read lock.
    pub fn with_map<R>(&self, f: impl FnOnce(&StateMap) -> R) -> R {
        f(&self.map.read())
    }

    /// A consistent snapshot of the whole map, O(1).
    pub fn snapshot(&self) -> StateMap {
        self.map.read().clone()
    }

    /// Merges several batches of records into the map under one write lock
    /// (so each batch becomes visible at once), reporting what each record did.
    pub fn apply_many(&self, batches: &[&[Record]]) -> Vec<Vec<Applied>> {
        if batches.is_empty() {
            return Vec::new();
        }
        if batches
            .iter()
            .flat_map(|b| b.iter())
            .any(|r| r.delta.counter.is_some())
        {
            self.note_counter();
        }
        let mut map = self.map.write();
        batches
            .iter()
            .map(|records| apply_batch(&mut map, records))
            .collect()
    }

    /// Replaces the whole map at once (a follower installing a leader's
    /// snapshot): readers see the old map or the new one, never a mix.
    pub fn replace(&self, map: StateMap) {
        if map.values().any(|s| s.counter.is_some()) {
            self.note_counter();
        }
        *self.map.write() = map;
    }

    /// Removes each key whose state is still exactly the one given (a
    /// garbage-collected tombstone that nothing has overwritten since);
    /// returns how many were removed.
    pub fn remove_unchanged(&self, keys: &[(StoreKey, KeyState)]) -> u64 {
        let mut map = self.map.write();
        let mut removed = 0;
        for (key, expected) in keys {
            if map.get(key) == Some(expected) {
                map.remove(key);
                removed += 1;
            }
        }
        removed
    }

    /// Merges records without reporting outcomes (replay on open).
    ///
    /// The records are sorted by key first: merging is order-independent,
    /// and visiting the map in key order keeps the path being changed in
    /// cache, which makes replay several times faster than log order.
    pub fn replay(&self, mut records: Vec<Record>) {
        if records.iter().any(|r| r.delta.counter.is_some()) {
            self.note_counter();
        }
        records.sort_unstable_by(|a, b| a.store_key.cmp(&b.store_key));
        let mut map = self.map.write();
        // Into an empty map every (folded) key is new: insert without looking.
        let all_new = map.is_empty();
        let mut records = records.into_iter().peekable();
        while let Some(mut record) = records.next() {
            // Fold every record of this key before touching the map.
            while let Some(next) = records.next_if(|r| r.store_key == record.store_key) {
                record.delta.merge_from(&next.delta);
            }
            if all_new {
                map.insert(record.store_key, record.delta);
                continue;
            }
            match map.get_mut(&record.store_key) {
                Some(existing) => existing.merge_from(&record.delta),
                None => {
                    map.insert(record.store_key, record.delta);
                }
            }
        }
    }
}

/// Applies one batch's records, in key order if the batch is large;
/// outcomes are returned in the batch's order.
fn apply_batch(map: &mut StateMap, records: &[Record]) -> Vec<Applied> {
    if records.len() < APPLY_SORTED_RECORDS_MIN {
        return records.iter().map(|r| apply_one(map, r)).collect();
    }
    let mut in_key_order: Vec<(usize, &Record)> = records.iter().enumerate().collect();
    in_key_order.sort_unstable_by(|(_, a), (_, b)| a.store_key.cmp(&b.store_key));
    let mut out = vec![
        Applied {
            kind: OutcomeKind::IgnoredStale,
            counter: None,
        };
        records.len()
    ];
    // Scattered back by position: the indices come from `enumerate`, so
    // every slot exists and is written once.
    for (i, record) in in_key_order {
        if let Some(slot) = out.get_mut(i) {
            *slot = apply_one(map, record);
        }
    }
    out
}

fn apply_one(map: &mut StateMap, record: &Record) -> Applied {
    let delta = &record.delta;
    let kind = match map.get_mut(&record.store_key) {
        Some(existing) => {
            let kind = classify(existing, delta);
            // Merge even a stale delta: the parts of it that are not stale
            // (a floor, say) must count, exactly as replay counts them.
            existing.merge_from(delta);
            kind
        }
        None => {
            map.insert(record.store_key.clone(), delta.clone());
            fresh_kind(delta)
        }
    };
    let counter = delta
        .counter
        .as_ref()
        .filter(|c| !c.totals.is_empty())
        .map(
            |_| match map.get(&record.store_key).map(KeyState::visible) {
                Some(Visible::Counter(v)) => v,
                _ => 0,
            },
        );
    Applied { kind, counter }
}

/// What merging `delta` into `existing` will do, from the caller's view.
fn classify(existing: &KeyState, delta: &KeyState) -> OutcomeKind {
    if let Some(reg) = &delta.register {
        let stale = existing
            .register
            .as_ref()
            .is_some_and(|cur| cur.stamp >= reg.stamp);
        return if stale {
            OutcomeKind::IgnoredStale
        } else {
            fresh_kind(delta)
        };
    }
    let Some(counter) = &delta.counter else {
        return OutcomeKind::IgnoredStale;
    };
    let advances = counter.totals.iter().any(|t| {
        existing
            .counter
            .as_ref()
            .and_then(|c| c.totals_of(t.node))
            .is_none_or(|cur| t.p > cur.p || t.n > cur.n || t.stamp > cur.stamp)
    });
    if advances {
        OutcomeKind::Applied
    } else {
        OutcomeKind::IgnoredStale
    }
}

fn fresh_kind(delta: &KeyState) -> OutcomeKind {
    match &delta.register {
        Some(reg) if reg.value.is_none() => OutcomeKind::Removed,
        _ => OutcomeKind::Applied,
    }
}
