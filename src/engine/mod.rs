//! The engine: the shared core of an open database, and the one commit
//! path every write takes.
//!
//! Three kinds of write reach the WAL and the map: local batches (stamped
//! here, through the worker pool), imported change sets and segments
//! (`sync`), and a follower's replicated batches (`replication`). All of
//! them go through [`commit`]: records plus an optional idempotency id →
//! WAL append → durable under the sync mode → merged into the state map →
//! the applied watermark moves → outcome. The commit path owns the split
//! of a batch too large for one frame into chunks, and runs under one
//! poison guard: a panic anywhere on it poisons the database and wakes
//! every waiter, so no caller and no compaction can hang on a batch that
//! will never complete.
//!
//! - `write.rs`: local batches: validate, stamp, resolve operations into
//!   records (counters as new per-node totals), then commit as a group.
//! - `commit.rs`: the commit path and the poison guard.
//! - `watermark.rs`: the applied watermark.
//! - `recover.rs`: opening: the newest snapshot plus the WAL after it.

mod commit;
mod recover;
mod watermark;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::clock::{Hlc, NodeId, Stamp};
use crate::error::Result;
use crate::io::FaultInjector;
use crate::options::Options;
use crate::record::StoreKey;
use crate::state::State;
use crate::wal::Wal;

pub(crate) use commit::{CommitId, panic_message};
pub(crate) use recover::{
    RecoverFrom, files_in_clear, key_ids_in_files, node_ids_in_files, open_runs, quarantine,
    quarantine_path, read_run_key_id, rebuild_meta, recover_state,
};
use watermark::AppliedWatermark;
use write::PendingCounter;

/// The shared core of an open database: the clock, the WAL, the state map
/// and the applied watermark, and the write paths over them.
pub(crate) struct Engine {
    options: Options,
    node: NodeId,
    hlc: Mutex<Hlc>,
    wal: Wal,
    state: State,
    watermark: AppliedWatermark,
    /// This node's totals for counters with increments not yet applied.
    pending_counters: Mutex<HashMap<StoreKey, PendingCounter>>,
    /// Stamps issued to batches not yet applied (or refused), with how many
    /// batches hold each. Inserted while the clock's lock is held, so a
    /// reader holding that lock sees every stamp issued and not finished.
    in_flight: Mutex<std::collections::BTreeMap<Stamp, u32>>,
    /// The newest own stamp issued to a batch touching any keyspace but
    /// `_local` (from the open: everything the clock had issued, since
    /// recovery does not tell bookkeeping apart). Set while the clock's
    /// lock is held.
    data_issued: Mutex<Stamp>,
}

impl Engine {
    /// An engine over a recovered state and an opened WAL. `applied_seq` is
    /// the last sequence number recovery put in the map.
    pub fn new(options: Options, node: NodeId, hlc: Hlc, wal: Wal, state: State) -> Self {
        let applied_seq = wal.stats().last_seq;
        let issued = hlc.issued();
        Self {
            options,
            node,
            data_issued: Mutex::new(issued),
            hlc: Mutex::new(hlc),
            wal,
            state,
            watermark: AppliedWatermark::new(applied_seq),
            pending_counters: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// The options the database was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// This copy's node id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The state map (reads, snapshots, and the compactor's swaps).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The WAL (segment lists, sealing and truncation for the compactor,
    /// the shippable position for the replication leader).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The clock. Held only for a tick or a receive, never across I/O.
    pub fn hlc(&self) -> MutexGuard<'_, Hlc> {
        self.hlc.lock()
    }

    /// The clock's high-water mark.
    pub fn high_water(&self) -> Stamp {
        self.hlc.lock().high_water()
    }

    /// The newest own stamp up to which every write is in the state map:
    /// the clock's [`Hlc::issued`], or, while batches stamped earlier are
    /// still on their way through the WAL, the stamp just before the
    /// oldest of them. What a copy may claim to hold of its own writes (a
    /// claim taken after a view of the map, for writes that view has).
    pub fn claimable(&self) -> Stamp {
        let hlc = self.hlc.lock();
        let issued = hlc.issued();
        match self.in_flight.lock().keys().next() {
            Some(oldest) if *oldest <= issued => oldest.just_before(),
            _ => issued,
        }
    }

    /// The newest own stamp issued to a write of data (any keyspace but
    /// `_local`; at the open, everything issued before it). A sync whose
    /// last look at the state found nothing of its own to publish up to a
    /// stamp at least this new need not look again: what was written
    /// since is only bookkeeping.
    #[cfg_attr(
        not(feature = "object-store"),
        expect(dead_code, reason = "read by bucket sync only")
    )]
    pub fn data_issued(&self) -> Stamp {
        let _hlc = self.hlc.lock();
        *self.data_issued.lock()
    }

    /// Notes `stamp` as issued to a batch on its way (called with the
    /// clock's lock held).
    pub(crate) fn stamp_in_flight(&self, stamp: Stamp) {
        *self.in_flight.lock().entry(stamp).or_insert(0) += 1;
    }

    /// The batch stamped `stamp` is applied, or refused.
    pub(crate) fn stamp_landed(&self, stamp: Stamp) {
        let mut in_flight = self.in_flight.lock();
        if let Some(n) = in_flight.get_mut(&stamp) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&stamp);
            }
        }
    }

    /// The wall clock's time now, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.options.wall_clock.now_ms()
    }

    /// The fault plan tests set, if any.
    pub fn faults(&self) -> Option<&FaultInjector> {
        self.options.faults.as_ref()
    }

    /// Every batch with sequence numbers up to this one is in the state map
    /// (later ones may be too).
    ///
    /// Fails if the database is poisoned: a failed batch is marked done
    /// without ever being written, so the watermark of a poisoned database
    /// can pass batches that are not in the map.
    pub fn applied_watermark(&self) -> Result<u64> {
        // Read first, check after: a failed batch is completed only after
        // the WAL is poisoned, so a watermark read while the WAL is still
        // usable covers only applied batches.
        let watermark = self.watermark.current();
        self.wal.check_usable()?;
        Ok(watermark)
    }

    /// Waits until the applied watermark reaches `seq`, or the database
    /// fails.
    pub fn wait_applied_through(&self, seq: u64) -> Result<()> {
        self.watermark.wait_through(seq)?;
        self.wal.check_usable()
    }

    /// The error every write returns from now on, if the database is
    /// poisoned or closed.
    pub fn check_usable(&self) -> Result<()> {
        self.wal.check_usable()
    }

    /// Poisons the database (fail-stop) and wakes every waiter: WAL
    /// waiters, and waiters on the applied watermark.
    pub fn poison(&self, cause: &str) {
        // Outside every lock: a subscriber may do I/O.
        tracing::error!(
            cause,
            "database poisoned: writes are refused until reopened"
        );
        self.wal.poison(cause);
        let first_cause = match self.wal.check_usable() {
            Err(crate::Error::Poisoned { cause }) => cause,
            _ => Arc::from(cause),
        };
        self.watermark.poison(&first_cause);
    }
}
