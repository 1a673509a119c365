//! The state: recent changes in memory, the rest in sorted runs on disk,
//! and the one apply path.
//!
//! The state is a stack of *layers*, newest first:
//! 1. the **active memtable**, an ordered persistent map (`imbl::OrdMap`)
//!    from store key to [`KeyState`] that every write merges into;
//! 2. **frozen memtables**: former active ones, read-only, waiting for the
//!    compactor to write them out as runs;
//! 3. **runs** ([`crate::run::Run`]): immutable sorted files named by the
//!    manifest.
//!
//! A key's state is the CRDT merge of its entries in every layer, so the
//! order in which layers were built never matters, and a read merges what
//! every layer holds ([`StateView::get`], [`StateView::range`]).
//!
//! Besides, the active memtable holds each of its keys' *whole* state: the
//! first write to a key since the last freeze merges the key's state from
//! the lower layers (its *base*) into the entry it creates. That is what
//! lets a write report whether it was stale and what a counter reads as
//! afterwards, and it is cheap: the base is read before the write lock is
//! taken, and a key absent from every run costs only filter probes.
//!
//! Everything below the active memtable is an immutable [`Lower`] behind an
//! `Arc`, replaced whole when the compactor freezes the memtable, installs
//! a run or installs a merge. A [`StateView`] is the active map (an O(1)
//! clone of a persistent map) plus that `Arc`: a consistent snapshot that
//! never blocks writers and keeps its runs readable while they are merged
//! away beneath it (an open file survives its unlink).

pub use crate::record::StoreKey;

pub mod digest;
mod view;

pub use digest::DigestSums;
pub use view::{StateView, ViewIter};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use imbl::OrdMap;
use parking_lot::RwLock;

use crate::crdt::{KeyState, Visible};
use crate::error::Result;
use crate::record::Record;
use crate::run::Run;

/// The memtable type: store key to CRDT state.
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

/// A frozen memtable: read-only, waiting to be written out as a run.
#[derive(Clone, Debug)]
pub struct Frozen {
    /// Its entries.
    pub map: StateMap,
    /// Every batch up to this sequence number is in it or in an older layer.
    pub covered_seq: u64,
    /// Its estimated size in memory.
    pub bytes: u64,
}

/// Every layer below the active memtable; immutable, replaced whole.
#[derive(Default)]
pub struct Lower {
    /// Frozen memtables, newest first.
    pub frozen: Vec<Frozen>,
    /// Runs, newest first.
    pub runs: Vec<Arc<Run>>,
    /// The digest sums of the state the runs hold (merged).
    pub runs_digest: DigestSums,
}

impl std::fmt::Debug for Lower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runs: Vec<u64> = self.runs.iter().map(|r| r.info().id).collect();
        f.debug_struct("Lower")
            .field("frozen", &self.frozen.len())
            .field("runs", &runs)
            .finish()
    }
}

impl Lower {
    /// The merged state of `key` in these layers.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyState>> {
        let mut out: Option<KeyState> = None;
        let mut fold = |state: &KeyState| match &mut out {
            Some(acc) => acc.merge_from(state),
            None => out = Some(state.clone()),
        };
        for frozen in &self.frozen {
            if let Some(state) = frozen.map.get(key) {
                fold(state);
            }
        }
        for run in &self.runs {
            if run.may_contain(key)
                && let Some(state) = run.get(key)?
            {
                fold(&state);
            }
        }
        Ok(out)
    }

    /// Bytes held in memory by the frozen memtables.
    pub fn frozen_bytes(&self) -> u64 {
        self.frozen.iter().map(|f| f.bytes).sum()
    }
}

struct Layers {
    active: StateMap,
    /// Estimated bytes of `active` ([`entry_bytes`] summed).
    active_bytes: u64,
    lower: Arc<Lower>,
}

/// The shared state of a database.
pub struct State {
    layers: RwLock<Layers>,
    /// Set once any counter exists or is on its way in. Until then a put or
    /// delete has no counter totals to observe, and skips looking for them.
    counters_seen: AtomicBool,
    /// The active memtable's limit and who to tell when it is reached.
    flush: parking_lot::Mutex<Option<FlushSignal>>,
    /// Why the last flush failed, while the memtable it was for waits.
    flush_failure: parking_lot::Mutex<Option<Arc<str>>>,
    /// Notified whenever the lower layers change (a flush is done), and
    /// when a flush fails.
    lower_changed: parking_lot::Condvar,
    lower_changed_lock: parking_lot::Mutex<()>,
}

/// The compactor's doorbell: rung (without waiting) when the active
/// memtable reaches `limit_bytes`.
struct FlushSignal {
    limit_bytes: u64,
    ring: crossbeam_channel::Sender<()>,
}

/// How long a writer waits for a flush before checking again whether the
/// database is still usable.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layers = self.layers.read();
        f.debug_struct("State")
            .field("active_keys", &layers.active.len())
            .field("active_bytes", &layers.active_bytes)
            .field("frozen", &layers.lower.frozen.len())
            .field("runs", &layers.lower.runs.len())
            .finish()
    }
}

/// Batches with at least this many records are applied in key order, which
/// keeps the map's changed paths in cache; smaller ones are not worth sorting.
const APPLY_SORTED_RECORDS_MIN: usize = 64;

/// Fixed bytes charged per memtable entry besides its key and value: the
/// map node's share (the inline key's 48 bytes, the state's fields), the
/// value's allocation and its header. Measured: a 1M-key memtable of
/// 16-byte keys and 100-byte values holds about 300 bytes per entry.
const ENTRY_OVERHEAD_BYTES: u64 = 200;

/// Tries at reading bases before the layers they were read from are
/// replaced; past this, the bases are read under the write lock (the one
/// disk read under it: layers change a few times a second at most, so
/// this takes a group of writes racing that many flushes in a row).
const BASE_READ_TRIES_MAX: usize = 64;

/// The estimated memory of one memtable entry.
pub fn entry_bytes(key: &[u8], state: &KeyState) -> u64 {
    let value = state.register.as_ref().map_or(0, |r| {
        r.value.as_ref().map_or(0, |v| v.len()) + 24 * r.floor.len()
    });
    let counter = state
        .counter
        .as_ref()
        .map_or(0, |c| 48 * c.totals.len() + 32);
    ENTRY_OVERHEAD_BYTES + (key.len() + value + counter) as u64
}

/// What applying one record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Applied, Removed or IgnoredStale.
    pub kind: OutcomeKind,
    /// The counter's value afterwards, for counter records.
    pub counter: Option<i64>,
}

/// The bases of the keys a group of records touches that the active
/// memtable does not hold, read from `lower`.
type Bases = HashMap<StoreKey, KeyState>;

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self::with_lower(Lower::default())
    }

    /// A state whose lower layers are `lower` (runs opened by recovery),
    /// with an empty memtable.
    pub fn with_lower(lower: Lower) -> Self {
        // Runs may hold counters, and no record that would say so is
        // replayed: a register write must look for totals to observe.
        let counters_seen = !lower.runs.is_empty() || !lower.frozen.is_empty();
        Self {
            layers: RwLock::new(Layers {
                active: StateMap::new(),
                active_bytes: 0,
                lower: Arc::new(lower),
            }),
            counters_seen: AtomicBool::new(counters_seen),
            flush: parking_lot::Mutex::new(None),
            flush_failure: parking_lot::Mutex::new(None),
            lower_changed: parking_lot::Condvar::new(),
            lower_changed_lock: parking_lot::Mutex::new(()),
        }
    }

    /// Asks to be told through `ring` whenever a write leaves the active
    /// memtable at or above `limit_bytes`.
    pub fn set_flush_signal(&self, limit_bytes: u64, ring: crossbeam_channel::Sender<()>) {
        *self.flush.lock() = Some(FlushSignal { limit_bytes, ring });
    }

    /// Rings the compactor if the active memtable is full.
    fn ring_if_full(&self, active_bytes: u64) {
        if let Some(signal) = &*self.flush.lock()
            && active_bytes >= signal.limit_bytes
        {
            // Full: a ring is pending already, which is all that is needed.
            let _ = signal.ring.try_send(());
        }
    }

    /// Records that a flush failed (`Some`) or succeeded (`None`), and
    /// wakes writers waiting for room.
    pub fn set_flush_failure(&self, failure: Option<Arc<str>>) {
        *self.flush_failure.lock() = failure;
        let _guard = self.lower_changed_lock.lock();
        self.lower_changed.notify_all();
    }

    /// Waits (before a write takes a sequence number) while the active
    /// memtable holds twice its limit (a frozen one still being written
    /// out, or a long merge keeping the compactor from the next flush):
    /// memory stays bounded when writers outpace the compactor.
    /// `usable` is checked between waits, so a poisoned or closed database
    /// never leaves a writer waiting; a failed flush fails the write with
    /// [`crate::Error::FlushFailed`] instead of making it wait for ever.
    pub fn wait_for_room(&self, usable: impl Fn() -> Result<()>) -> Result<()> {
        let limit = match &*self.flush.lock() {
            Some(signal) => signal.limit_bytes.saturating_mul(2),
            None => return Ok(()),
        };
        loop {
            {
                let layers = self.layers.read();
                if layers.active_bytes < limit {
                    return Ok(());
                }
            }
            usable()?;
            if let Some(cause) = self.flush_failure.lock().clone() {
                return Err(crate::Error::FlushFailed { cause });
            }
            let mut guard = self.lower_changed_lock.lock();
            self.lower_changed.wait_for(&mut guard, ROOM_WAIT);
        }
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

    /// The whole state of `store_key`, merged over every layer.
    pub fn get(&self, store_key: &[u8]) -> Result<Option<KeyState>> {
        let (active, lower) = {
            let layers = self.layers.read();
            (layers.active.get(store_key).cloned(), layers.lower.clone())
        };
        // The active memtable holds each of its keys' whole state.
        if active.is_some() {
            return Ok(active);
        }
        lower.get(store_key)
    }

    /// A consistent view of every layer, O(number of layers).
    pub fn view(&self) -> StateView {
        let layers = self.layers.read();
        StateView::new(layers.active.clone(), layers.lower.clone())
    }

    /// The estimated bytes of the active memtable, and of the frozen ones.
    pub fn memtable_bytes(&self) -> (u64, u64) {
        let layers = self.layers.read();
        (layers.active_bytes, layers.lower.frozen_bytes())
    }

    /// The layers below the active memtable.
    pub fn lower(&self) -> Arc<Lower> {
        self.layers.read().lower.clone()
    }

    /// Merges several batches of records into the active memtable under one
    /// write lock (so each batch becomes visible at once), reporting what
    /// each record did. Fails only if a base could not be read (an I/O
    /// error or a damaged run); nothing is applied then.
    pub fn apply_many(&self, batches: &[&[Record]]) -> Result<Vec<Vec<Applied>>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        if batches
            .iter()
            .flat_map(|b| b.iter())
            .any(|r| r.delta.counter.is_some())
        {
            self.note_counter();
        }
        let records = || batches.iter().flat_map(|b| b.iter());
        let (mut layers, mut bases, present) =
            self.lock_with_bases(|| records().map(|r| &r.store_key))?;
        let layers = &mut *layers;
        let mut offset = 0;
        let applied = batches
            .iter()
            .map(|records| {
                let hints = present.get(offset..offset + records.len());
                offset += records.len();
                apply_batch(layers, &mut bases, records, hints)
            })
            .collect();
        let active_bytes = layers.active_bytes;
        self.ring_if_full(active_bytes);
        Ok(applied)
    }

    /// Takes the write lock with the bases of `keys` that the active
    /// memtable lacks, read from the lower layers without the lock held
    /// (retried if a freeze or an install replaced those layers meanwhile).
    ///
    /// Also returns, per key in order, whether the active memtable held it
    /// when looked at (empty when nothing lies below it and nothing was
    /// looked at): a key it held is merged in place, one it did not is
    /// inserted without looking it up again.
    fn lock_with_bases<'k, I>(
        &self,
        keys: impl Fn() -> I,
    ) -> Result<(parking_lot::RwLockWriteGuard<'_, Layers>, Bases, Vec<bool>)>
    where
        I: Iterator<Item = &'k StoreKey>,
    {
        for _ in 0..BASE_READ_TRIES_MAX {
            let (lower, missing, present) = {
                let layers = self.layers.read();
                if layers.lower.frozen.is_empty() && layers.lower.runs.is_empty() {
                    // Nothing below: every base is empty.
                    drop(layers);
                    let guard = self.layers.write();
                    if guard.lower.frozen.is_empty() && guard.lower.runs.is_empty() {
                        return Ok((guard, Bases::new(), Vec::new()));
                    }
                    continue;
                }
                let (missing, present) = missing_keys(&layers.active, keys());
                (layers.lower.clone(), missing, present)
            };
            let bases = read_bases(&lower, missing)?;
            let guard = self.layers.write();
            if Arc::ptr_eq(&guard.lower, &lower) {
                return Ok((guard, bases, present));
            }
        }
        // Layers keep changing under us (a compactor racing a huge group):
        // read under the lock, which nothing can change meanwhile.
        let guard = self.layers.write();
        let (missing, present) = missing_keys(&guard.active, keys());
        let bases = read_bases(&guard.lower, missing)?;
        Ok((guard, bases, present))
    }

    /// Merges records without reporting outcomes (replay on open, a
    /// follower's snapshot). Each key's records are folded first and
    /// merged with the key's base, in key order.
    pub fn replay(&self, mut records: Vec<Record>) -> Result<()> {
        if records.iter().any(|r| r.delta.counter.is_some()) {
            self.note_counter();
        }
        records.sort_unstable_by(|a, b| a.store_key.cmp(&b.store_key));
        // Fold every record of a key into its first.
        let mut folded: Vec<Record> = Vec::with_capacity(records.len());
        for record in records {
            match folded.last_mut() {
                Some(last) if last.store_key == record.store_key => {
                    last.delta.merge_from(&record.delta);
                }
                _ => folded.push(record),
            }
        }
        let (mut layers, bases, _) =
            self.lock_with_bases(|| folded.iter().map(|r| &r.store_key))?;
        let layers = &mut *layers;
        for mut record in folded {
            if let Some(existing) = layers.active.get_mut(&record.store_key) {
                let before = entry_bytes(&record.store_key, existing);
                existing.merge_from(&record.delta);
                let after = entry_bytes(&record.store_key, existing);
                layers.active_bytes = (layers.active_bytes + after).saturating_sub(before);
                continue;
            }
            if let Some(base) = bases.get(&record.store_key) {
                record.delta.merge_from(base);
            }
            layers.active_bytes += entry_bytes(&record.store_key, &record.delta);
            layers.active.insert(record.store_key, record.delta);
        }
        Ok(())
    }

    /// Freezes the active memtable (if it holds anything): it becomes the
    /// newest frozen layer, covering the sequence number `covered_seq`
    /// returns, which is read under the write lock, so every batch it
    /// reports as applied is in the frozen map or below. Writers go on
    /// into a fresh memtable at once.
    ///
    /// Returns the sequence number read, with or without a freeze: when
    /// the active memtable is empty, every batch up to it is below already.
    pub fn freeze<E>(
        &self,
        covered_seq: impl FnOnce() -> std::result::Result<u64, E>,
    ) -> std::result::Result<(u64, Option<Frozen>), E> {
        let mut layers = self.layers.write();
        let covered_seq = covered_seq()?;
        if layers.active.is_empty() {
            return Ok((covered_seq, None));
        }
        let frozen = Frozen {
            map: std::mem::take(&mut layers.active),
            covered_seq,
            bytes: std::mem::take(&mut layers.active_bytes),
        };
        let mut lower = Lower {
            frozen: vec![frozen.clone()],
            runs: layers.lower.runs.clone(),
            runs_digest: layers.lower.runs_digest.clone(),
        };
        lower.frozen.extend(layers.lower.frozen.iter().cloned());
        layers.lower = Arc::new(lower);
        Ok((covered_seq, Some(frozen)))
    }

    /// Replaces the lower layers with what `change` makes of them (a run
    /// installed in place of the frozen memtable it was written from, runs
    /// replaced by their merge). The change must not alter any key's
    /// merged state, except for tombstones the caller has decided to drop.
    pub fn replace_lower(&self, change: impl FnOnce(&Lower) -> Lower) {
        let mut layers = self.layers.write();
        let lower = change(&layers.lower);
        layers.lower = Arc::new(lower);
        drop(layers);
        let _guard = self.lower_changed_lock.lock();
        self.lower_changed.notify_all();
    }

    /// Replaces every layer at once (a follower installing a leader's
    /// state): readers see the old state or the new one, never a mix.
    pub fn replace_all(&self, lower: Lower, counters: bool) {
        if counters {
            self.note_counter();
        }
        let mut layers = self.layers.write();
        layers.active = StateMap::new();
        layers.active_bytes = 0;
        layers.lower = Arc::new(lower);
    }
}

/// The base of each of `keys` (deduplicated) in `lower`.
fn read_bases(lower: &Lower, keys: Vec<&StoreKey>) -> Result<Bases> {
    let mut bases = Bases::new();
    for key in keys {
        // A key twice in a group is read once.
        if !bases.contains_key(key)
            && let Some(state) = lower.get(key)?
        {
            bases.insert(key.clone(), state);
        }
    }
    Ok(bases)
}

/// The keys `active` lacks, and per key whether it held it.
fn missing_keys<'k>(
    active: &StateMap,
    keys: impl Iterator<Item = &'k StoreKey>,
) -> (Vec<&'k StoreKey>, Vec<bool>) {
    let mut missing = Vec::new();
    let mut present = Vec::new();
    for key in keys {
        let held = active.contains_key(key);
        present.push(held);
        if !held {
            missing.push(key);
        }
    }
    (missing, present)
}

/// Applies one batch's records, in key order if the batch is large;
/// outcomes are returned in the batch's order.
fn apply_batch(
    layers: &mut Layers,
    bases: &mut Bases,
    records: &[Record],
    present: Option<&[bool]>,
) -> Vec<Applied> {
    let hint = |i: usize| present.and_then(|p| p.get(i).copied());
    if records.len() < APPLY_SORTED_RECORDS_MIN {
        return records
            .iter()
            .enumerate()
            .map(|(i, r)| apply_one(layers, bases, r, hint(i)))
            .collect();
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
            *slot = apply_one(layers, bases, record, hint(i));
        }
    }
    out
}

/// Merges one record into the active memtable. `present` says whether the
/// memtable held the key when the bases were read (`None`: not known).
fn apply_one(
    layers: &mut Layers,
    bases: &mut Bases,
    record: &Record,
    present: Option<bool>,
) -> Applied {
    let delta = &record.delta;
    let key = &record.store_key;
    let reports_counter = delta.counter.as_ref().is_some_and(|c| !c.totals.is_empty());
    let counter_of = |state: &KeyState| counter_as_of(state, delta);
    if present == Some(false) {
        return insert_new(layers, bases, record, reports_counter.then_some(counter_of));
    }
    match layers.active.get_mut(key) {
        Some(existing) => {
            let kind = classify(existing, delta);
            let before = entry_bytes(key, existing);
            // Merge even a stale delta: the parts of it that are not stale
            // (a floor, say) must count, exactly as replay counts them.
            existing.merge_from(delta);
            let after = entry_bytes(key, existing);
            layers.active_bytes = (layers.active_bytes + after).saturating_sub(before);
            Applied {
                kind,
                counter: reports_counter.then(|| counter_of(existing)),
            }
        }
        None => {
            // The base is used once: from now on the active map holds it.
            let (kind, state) = match bases.remove(key) {
                Some(mut base) => {
                    let kind = classify(&base, delta);
                    base.merge_from(delta);
                    (kind, base)
                }
                None => (fresh_kind(delta), delta.clone()),
            };
            let counter = reports_counter.then(|| counter_of(&state));
            layers.active_bytes += entry_bytes(key, &state);
            layers.active.insert(key.clone(), state);
            Applied { kind, counter }
        }
    }
}

/// Inserts the whole state of a key the active memtable did not hold when
/// its base was read: its base merged with the record. Should another
/// writer of the same group have inserted it since (the same key twice),
/// the record is merged into what is there instead.
fn insert_new(
    layers: &mut Layers,
    bases: &mut Bases,
    record: &Record,
    counter_of: Option<impl Fn(&KeyState) -> i64>,
) -> Applied {
    let (delta, key) = (&record.delta, &record.store_key);
    let (kind, state) = match bases.remove(key) {
        Some(mut base) => {
            let kind = classify(&base, delta);
            base.merge_from(delta);
            (kind, base)
        }
        None => (fresh_kind(delta), delta.clone()),
    };
    let counter = counter_of.as_ref().map(|f| f(&state));
    let bytes = entry_bytes(key, &state);
    match layers.active.insert(key.clone(), state) {
        None => {
            layers.active_bytes += bytes;
            Applied { kind, counter }
        }
        Some(mut existing) => {
            // Held after all: merge into it, and judge against it.
            let kind = classify(&existing, delta);
            let before = entry_bytes(key, &existing);
            existing.merge_from(delta);
            let counter = counter_of.as_ref().map(|f| f(&existing));
            let after = entry_bytes(key, &existing);
            layers.active_bytes = (layers.active_bytes + after).saturating_sub(before);
            layers.active.insert(key.clone(), existing);
            Applied { kind, counter }
        }
    }
}

/// What the counter read as once `delta`'s totals counted, and no later
/// totals of the same nodes: `after` may hold totals merged in after them
/// (two callers' increments applied out of log order), which this
/// record's caller must not be told of: each increment reports the value
/// its own totals give, distinct and in log order.
fn counter_as_of(after: &KeyState, delta: &KeyState) -> i64 {
    let mut as_of = after.clone();
    if let (Some(counter), Some(theirs)) = (as_of.counter.as_mut(), delta.counter.as_ref()) {
        for totals in &theirs.totals {
            if let Some(slot) = counter.totals.iter_mut().find(|t| t.node == totals.node) {
                *slot = *totals;
            }
        }
    }
    match as_of.visible() {
        Visible::Counter(v) => v,
        _ => 0,
    }
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
