//! Local writes: validate → stamp → resolve into records → commit.
//!
//! [`Engine::execute`] runs a group of batches, on a worker thread or
//! inline on the caller; the group shares one wait for durability through
//! the commit path (`commit.rs`), which is how a worker's queued commands
//! ride one group commit.
//!
//! Counters are logged as new per-node totals, not deltas, so replay and
//! re-delivery are idempotent. To compute a new total a writer needs the
//! latest one, including increments still on their way to the state map:
//! those are tracked in `pending_counters` until applied. A batch with an
//! increment holds that lock from computing its totals until the WAL has
//! assigned its place, so totals grow in log order.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::Stamp;
use crate::command::{Batch, OpKind, Outcome, OutcomeKind};
use crate::crdt::{Counter, KeyState, NodeTotals, Register, Visible};
use crate::error::{Error, Result};
use crate::record::{Record, StoreKey};
use crate::state::Applied;
use crate::wal::Appended;
use crate::wal::dedup::DedupEntry;

use super::Engine;
use super::commit::Committed;

/// The node totals a batch's increments produce, by key.
type NewTotals = Vec<(StoreKey, NodeTotals)>;

/// This node's latest totals for a counter with increments in flight.
pub(crate) struct PendingCounter {
    totals: NodeTotals,
    in_flight: u32,
}

/// A batch that has been stamped, resolved and handed to the WAL.
struct Prepared {
    stamp: Stamp,
    records: Vec<Record>,
    appended: Appended,
    counter_keys: Vec<StoreKey>,
    /// The stamp this batch holds in the engine's in-flight set, released
    /// once it is applied or refused.
    in_flight: Option<Stamp>,
}

/// Releases a stamp from the in-flight set when dropped (a batch refused
/// after it was stamped).
struct InFlight<'a> {
    engine: &'a Engine,
    stamp: Option<Stamp>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(stamp) = self.stamp {
            self.engine.stamp_landed(stamp);
        }
    }
}

impl Engine {
    /// Runs a group of batches through the write path; one result per
    /// batch. A panic anywhere on it poisons the database, and every batch
    /// of the group gets [`Error::Poisoned`].
    pub fn execute(&self, batches: Vec<Batch>) -> Vec<Result<Vec<Outcome>>> {
        let count = batches.len();
        // Before any batch of the group takes a sequence number: a flush
        // waits for every assigned number to be applied.
        if let Err(e) = self.state.wait_for_room(|| self.check_usable()) {
            return vec![Err(e); count];
        }
        match self.guarded("write path", || Ok(self.execute_unguarded(batches))) {
            Ok(results) => results,
            Err(e) => vec![Err(e); count],
        }
    }

    fn execute_unguarded(&self, batches: Vec<Batch>) -> Vec<Result<Vec<Outcome>>> {
        let prepared: Vec<Result<Prepared>> =
            batches.into_iter().map(|b| self.prepare(b)).collect();
        let appended: Vec<(&[Record], Appended)> = prepared
            .iter()
            .flatten()
            .map(|p| (p.records.as_slice(), p.appended))
            .collect();
        let finished = self.finish(&appended);
        for p in prepared.iter().flatten() {
            self.release_counters(&p.counter_keys);
            if let Some(stamp) = p.in_flight {
                self.stamp_landed(stamp);
            }
        }
        match finished {
            Ok(committed) => self.outcomes(&prepared, committed),
            Err(e) => prepared
                .iter()
                .map(|p| Err(p.as_ref().err().unwrap_or(&e).clone()))
                .collect(),
        }
    }

    fn prepare(&self, batch: Batch) -> Result<Prepared> {
        self.check_usable()?;
        batch.validate(&self.options)?;
        let now_ms = self.now_ms();
        let explicit = batch.stamp.is_some();
        let data = batch.ops.iter().any(|op| {
            crate::record::split_store_key(&op.store_key)
                .is_none_or(|(ks, _)| ks != crate::record::LOCAL_KEYSPACE)
        });
        let stamp = self.stamp(batch.stamp, now_ms, data)?;
        let landed = InFlight {
            engine: self,
            stamp: (!explicit).then_some(stamp),
        };
        let mut prepared = self.prepare_stamped(batch, stamp, now_ms)?;
        prepared.in_flight = landed.stamp;
        std::mem::forget(landed);
        Ok(prepared)
    }

    fn prepare_stamped(&self, batch: Batch, stamp: Stamp, now_ms: u64) -> Result<Prepared> {
        let dedup_id = batch
            .idempotency_key
            .as_ref()
            .map(|k| *blake3::hash(k).as_bytes());
        let has_increment = batch
            .ops
            .iter()
            .any(|op| matches!(op.kind, OpKind::Increment(_)));
        // A batch with an increment keeps the counter lock until the WAL has
        // placed it, so totals are computed in log order: a crash that loses
        // this frame loses every later frame built on its totals too. Its new
        // totals become visible to other writers only once it is queued, so
        // a duplicate or a refused batch leaves no trace.
        let guard = self.pending_counters.lock();
        let (records, new_totals) = self.resolve(&batch, stamp, &guard)?;
        let mut pending = has_increment.then_some(guard);
        let appended = self.append(&records, dedup_id.as_ref(), stamp, now_ms)?;
        let mut counter_keys = Vec::new();
        if let (Appended::Queued { .. }, Some(guard)) = (appended, pending.as_mut()) {
            counter_keys = register_totals(guard, new_totals);
        }
        drop(pending);
        Ok(Prepared {
            stamp,
            records,
            appended,
            counter_keys,
            in_flight: None,
        })
    }

    /// One result per batch: the refusal of a batch that never reached the
    /// WAL, or the outcomes of one that was committed.
    fn outcomes(
        &self,
        prepared: &[Result<Prepared>],
        committed: Vec<Result<Committed>>,
    ) -> Vec<Result<Vec<Outcome>>> {
        let mut committed = committed.into_iter();
        prepared
            .iter()
            .map(|p| {
                let p = p.as_ref().map_err(Clone::clone)?;
                match committed.next() {
                    Some(Ok(Committed::Applied { first_seq, results })) => {
                        Ok(applied_outcomes(p.stamp, first_seq, results))
                    }
                    Some(Ok(Committed::Duplicate(original))) => {
                        self.duplicate_outcomes(p, original)
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(self.broken_invariant("a prepared batch without a commit")),
                }
            })
            .collect()
    }

    fn stamp(&self, explicit: Option<Stamp>, now_ms: u64, data: bool) -> Result<Stamp> {
        let mut hlc = self.hlc.lock();
        match explicit {
            Some(stamp) => {
                hlc.receive(stamp, now_ms)?;
                Ok(stamp)
            }
            None => {
                let stamp = hlc.tick(now_ms);
                // While the clock's lock is held: see `Engine::claimable`
                // and `Engine::data_issued`.
                self.stamp_in_flight(stamp);
                if data {
                    let mut d = self.data_issued.lock();
                    *d = (*d).max(stamp);
                }
                Ok(stamp)
            }
        }
    }

    /// Turns each operation into the record the WAL stores, and lists the
    /// node totals its increments produce.
    fn resolve(
        &self,
        batch: &Batch,
        stamp: Stamp,
        pending: &HashMap<StoreKey, PendingCounter>,
    ) -> Result<(Vec<Record>, NewTotals)> {
        let mut records = Vec::with_capacity(batch.ops.len());
        let mut new_totals = Vec::new();
        for op in &batch.ops {
            let key = &op.store_key;
            let delta = match &op.kind {
                OpKind::Put(value) => {
                    self.register_delta(key, stamp, Some(value.clone()), pending)?
                }
                OpKind::Delete => self.register_delta(key, stamp, None, pending)?,
                OpKind::Increment(delta) => {
                    self.state.note_counter();
                    let totals = self.counter_totals(key, stamp, *delta, pending)?;
                    new_totals.push((key.clone(), totals));
                    KeyState {
                        register: None,
                        counter: Some(Box::new(Counter {
                            totals: vec![totals],
                        })),
                    }
                }
            };
            records.push(Record {
                store_key: key.clone(),
                delta,
            });
        }
        Ok((records, new_totals))
    }

    /// A put or delete, carrying the counter totals it observed as the floor.
    fn register_delta(
        &self,
        key: &StoreKey,
        stamp: Stamp,
        value: Option<Arc<[u8]>>,
        pending: &HashMap<StoreKey, PendingCounter>,
    ) -> Result<KeyState> {
        let mut floor = if self.state.may_have_counters() {
            self.state
                .get(key)?
                .map(|s| s.observed_floor())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(p) = pending.get(key) {
            let observed = (p.totals.node, p.totals.p, p.totals.n);
            match floor.binary_search_by_key(&p.totals.node, |f| f.0) {
                Ok(i) => {
                    if let Some(entry) = floor.get_mut(i) {
                        *entry = observed;
                    }
                }
                Err(i) => floor.insert(i, observed),
            }
        }
        // The record codec refuses floors whose nodes are not strictly
        // increasing; the binary search above relies on the same order.
        debug_assert!(floor.is_sorted_by(|a, b| a.0 < b.0));
        Ok(KeyState {
            register: Some(Register {
                stamp,
                value,
                floor,
            }),
            counter: None,
        })
    }

    /// An increment, as this node's new totals; refused if the counter
    /// would leave the `i64` range.
    fn counter_totals(
        &self,
        key: &StoreKey,
        stamp: Stamp,
        delta: i64,
        pending: &HashMap<StoreKey, PendingCounter>,
    ) -> Result<NodeTotals> {
        let node = self.node;
        let current = self.state.get(key)?.unwrap_or_default();
        let current_totals = current.counter.as_ref().and_then(|c| c.totals_of(node));
        let base = pending
            .get(key)
            .map(|p| p.totals)
            .or(current_totals)
            .unwrap_or(NodeTotals {
                node,
                p: 0,
                n: 0,
                stamp: Stamp::ZERO,
            });
        let overflow = || Error::CounterOverflow {
            key: crate::record::split_store_key(key)
                .map_or_else(|| key.to_vec(), |(_, k)| k.to_vec()),
        };
        let magnitude = delta.unsigned_abs();
        let (p, n) = if delta >= 0 {
            (base.p.checked_add(magnitude).ok_or_else(overflow)?, base.n)
        } else {
            (base.p, base.n.checked_add(magnitude).ok_or_else(overflow)?)
        };
        let totals = NodeTotals {
            node,
            p,
            n,
            stamp: stamp.max(base.stamp),
        };
        let mut after = current;
        after.counter.get_or_insert_default().set_totals(totals);
        if i64::try_from(after.exact_counter_value()).is_err() {
            return Err(overflow());
        }
        Ok(totals)
    }

    fn duplicate_outcomes(&self, p: &Prepared, original: DedupEntry) -> Result<Vec<Outcome>> {
        p.records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let counts = r
                    .delta
                    .counter
                    .as_ref()
                    .is_some_and(|c| !c.totals.is_empty());
                Ok(Outcome {
                    kind: OutcomeKind::Duplicate,
                    stamp: original.stamp,
                    seq: original.first_seq + (i as u64).min(u64::from(original.op_count) - 1),
                    counter: if counts {
                        Some(self.counter_value(&r.store_key)?)
                    } else {
                        None
                    },
                })
            })
            .collect()
    }

    /// Refuses records whose counter totals for this node are above ours:
    /// our totals only grow, so larger ones were made by another copy
    /// writing under our id.
    fn refuse_foreign_counter_totals(&self, records: &[Record]) -> Result<()> {
        for record in records {
            let Some(theirs) = record
                .delta
                .counter
                .as_ref()
                .and_then(|c| c.totals_of(self.node))
            else {
                continue;
            };
            let key = &record.store_key;
            let applied = self
                .state
                .get(key)?
                .and_then(|s| s.counter.and_then(|c| c.totals_of(self.node)));
            let pending = self.pending_counters.lock().get(key).map(|p| p.totals);
            let (p, n) = [applied, pending]
                .into_iter()
                .flatten()
                .fold((0, 0), |(p, n), t| (p.max(t.p), n.max(t.n)));
            if theirs.p > p || theirs.n > n {
                return Err(Error::IdentityConflict {
                    node: self.node,
                    detail: format!(
                        "a counter's totals for this node (+{} -{}) are above this copy's own (+{p} -{n})",
                        theirs.p, theirs.n
                    ),
                });
            }
        }
        Ok(())
    }

    fn counter_value(&self, key: &StoreKey) -> Result<i64> {
        Ok(match self.state.get(key)?.as_ref().map(KeyState::visible) {
            Some(Visible::Counter(v)) => v,
            _ => 0,
        })
    }

    /// Runs every stamp of imported records through the HLC receive rule
    /// and drift check; on an error nothing has been applied.
    pub fn receive_stamps(&self, records: &[Record]) -> Result<()> {
        self.refuse_foreign_counter_totals(records)?;
        let now_ms = self.now_ms();
        let mut hlc = self.hlc.lock();
        // Before the clock moves: a stamp of ours beyond everything our
        // clock has issued or seen was made by another copy with our id.
        let high_water = hlc.high_water();
        if let Some(stamp) = records
            .iter()
            .flat_map(record_stamps)
            .find(|s| s.node == self.node && *s > high_water)
        {
            return Err(Error::IdentityConflict {
                node: self.node,
                detail: format!(
                    "a change stamped {stamp:?} is newer than anything this copy's clock has issued ({high_water:?})"
                ),
            });
        }
        // The stamp furthest ahead first: if any stamp is refused, it is
        // this one, and the clock has not moved for the others.
        let furthest = records
            .iter()
            .flat_map(record_stamps)
            .max_by_key(|s| s.physical_ms);
        if let Some(stamp) = furthest {
            hlc.receive(stamp, now_ms)?;
        }
        for record in records {
            for stamp in record_stamps(record) {
                hlc.receive(stamp, now_ms)?;
            }
        }
        Ok(())
    }

    /// Raises the clock past every stamp in `stamps` with no drift check
    /// (a leader's history is taken as it is), so that writes made after a
    /// promotion order after everything replicated.
    pub fn observe_stamps(&self, stamps: impl Iterator<Item = Stamp>) {
        if let Some(newest) = stamps.max() {
            self.hlc.lock().observe_recovered(newest);
        }
    }

    fn release_counters(&self, keys: &[StoreKey]) {
        if keys.is_empty() {
            return;
        }
        release_locked(&mut self.pending_counters.lock(), keys);
    }
}

fn applied_outcomes(stamp: Stamp, first_seq: u64, results: Vec<Applied>) -> Vec<Outcome> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, a)| Outcome {
            // A local increment always counts: its totals are this node's
            // next ones, so higher totals already merged (another caller's
            // increment, applied first) include it.
            kind: if a.counter.is_some() {
                OutcomeKind::Applied
            } else {
                a.kind
            },
            stamp,
            seq: first_seq + i as u64,
            counter: a.counter,
        })
        .collect()
}

/// Every stamp in a record: the register's and each counter total's.
fn record_stamps(record: &Record) -> impl Iterator<Item = Stamp> + '_ {
    let register = record.delta.register.as_ref().map(|r| r.stamp);
    let totals = record
        .delta
        .counter
        .iter()
        .flat_map(|c| c.totals.iter().map(|t| t.stamp));
    register.into_iter().chain(totals)
}

/// Makes a queued batch's new totals the base for later increments.
fn register_totals(
    pending: &mut HashMap<StoreKey, PendingCounter>,
    new_totals: NewTotals,
) -> Vec<StoreKey> {
    let mut keys = Vec::with_capacity(new_totals.len());
    for (key, totals) in new_totals {
        let entry = pending.entry(key.clone()).or_insert(PendingCounter {
            totals,
            in_flight: 0,
        });
        entry.totals = totals;
        entry.in_flight += 1;
        keys.push(key);
    }
    keys
}

fn release_locked(pending: &mut HashMap<StoreKey, PendingCounter>, keys: &[StoreKey]) {
    for key in keys {
        if let Some(entry) = pending.get_mut(key) {
            debug_assert!(
                entry.in_flight > 0,
                "a counter released more often than taken"
            );
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.in_flight == 0 {
                pending.remove(key);
            }
        }
    }
}
