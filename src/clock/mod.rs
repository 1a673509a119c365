//! Hybrid logical clock (pure: the caller passes the wall time in).
//!
//! A [`Stamp`] is `(physical_ms, logical, node)`, ordered in that order, so
//! two stamps from different nodes are never equal and last-writer-wins has
//! no ties. [`Hlc`] produces stamps that never go backwards, even if the wall
//! clock does, and that stay ahead of every stamp it has seen (the receive
//! rule). Remote stamps too far in the future are refused or counted,
//! according to the [`DriftPolicy`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A node's persistent identity, created with the database.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A hybrid-logical-clock timestamp with the node id as last tie-break.
///
/// The derived order compares `physical_ms`, then `logical`, then `node`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, as the issuing clock saw them.
    pub physical_ms: u64,
    /// Orders stamps issued within the same millisecond.
    pub logical: u32,
    /// The node that issued the stamp.
    pub node: NodeId,
}

impl Stamp {
    /// The smallest stamp; every real stamp is greater.
    pub const ZERO: Stamp = Stamp {
        physical_ms: 0,
        logical: 0,
        node: NodeId(0),
    };

    /// The greatest stamp of the same node before this one (or this one,
    /// if it is the smallest there is).
    pub fn just_before(self) -> Stamp {
        match (self.logical.checked_sub(1), self.physical_ms.checked_sub(1)) {
            (Some(logical), _) => Stamp { logical, ..self },
            (None, Some(physical_ms)) => Stamp {
                physical_ms,
                logical: u32::MAX,
                ..self
            },
            (None, None) => self,
        }
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node)
    }
}

/// What to do with a remote stamp further ahead than `max_drift_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DriftPolicy {
    /// Refuse it with [`crate::Error::ClockDrift`] (the default).
    #[default]
    Reject,
    /// Accept it, advance the local clock, and count it in the drift stats.
    AcceptAndCount,
}

/// A remote stamp refused by [`DriftPolicy::Reject`]: further ahead of the
/// local physical clock than the drift bound. Becomes
/// [`crate::Error::ClockDrift`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftRejected {
    /// The node that produced the stamp.
    pub peer: NodeId,
    /// How far ahead of the local physical clock it is, in milliseconds.
    pub ahead_ms: u64,
    /// The configured bound.
    pub max_drift_ms: u64,
}

impl std::fmt::Display for DriftRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stamp from node {} is {} ms ahead of the local clock (max drift {} ms)",
            self.peer, self.ahead_ms, self.max_drift_ms
        )
    }
}

impl std::error::Error for DriftRejected {}

/// Drift seen so far, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DriftStats {
    /// The largest amount a received stamp was ahead of local time, in ms.
    pub max_ahead_ms: u64,
    /// Stamps refused for being too far ahead.
    pub rejected: u64,
    /// Stamps beyond the bound that were accepted under `AcceptAndCount`.
    pub accepted_beyond_bound: u64,
}

/// The hybrid logical clock of one node. Pure: no I/O, no wall-clock reads.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: NodeId,
    physical_ms: u64,
    logical: u32,
    /// The newest stamp issued by [`Hlc::tick`] or recovered from disk:
    /// `(physical_ms, logical)`. At most the high-water mark, which also
    /// moves on what was only seen.
    issued: (u64, u32),
    max_drift_ms: u64,
    policy: DriftPolicy,
    drift: DriftStats,
}

impl Hlc {
    /// A clock for `node` that has issued nothing yet.
    pub fn new(node: NodeId, max_drift_ms: u64, policy: DriftPolicy) -> Self {
        Self {
            node,
            physical_ms: 0,
            logical: 0,
            issued: (0, 0),
            max_drift_ms,
            policy,
            drift: DriftStats::default(),
        }
    }

    /// The node this clock stamps for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The highest time this clock has issued or seen.
    pub fn high_water(&self) -> Stamp {
        Stamp {
            physical_ms: self.physical_ms,
            logical: self.logical,
            node: self.node,
        }
    }

    /// The newest stamp this clock issued, or recovered from disk at open.
    ///
    /// What a copy may claim to hold of its own writes: unlike
    /// [`Hlc::high_water`], it does not move when a remote stamp is only
    /// seen (an import of changes already held writes nothing, so a
    /// high-water mark raised by it is not on disk and a restart would
    /// lower it; a claim beyond what a restart recovers would let the
    /// clock issue again stamps a peer believes it already has).
    pub fn issued(&self) -> Stamp {
        Stamp {
            physical_ms: self.issued.0,
            logical: self.issued.1,
            node: self.node,
        }
    }

    /// Drift statistics so far.
    pub fn drift_stats(&self) -> DriftStats {
        self.drift
    }

    /// Raises the clock to at least `seen` without any drift check: used on
    /// open with the high-water mark recovered from disk, so stamps stay
    /// monotonic across restarts even if the wall clock went backwards.
    pub fn observe_recovered(&mut self, seen: Stamp) {
        if (seen.physical_ms, seen.logical) > (self.physical_ms, self.logical) {
            self.physical_ms = seen.physical_ms;
            self.logical = seen.logical;
        }
        self.issued = self.issued.max((seen.physical_ms, seen.logical));
    }

    /// Issues a new stamp for a local event at wall time `wall_ms`.
    pub fn tick(&mut self, wall_ms: u64) -> Stamp {
        let before = self.high_water();
        if wall_ms > self.physical_ms {
            self.physical_ms = wall_ms;
            self.logical = 0;
        } else {
            self.bump_logical();
        }
        let stamp = self.high_water();
        self.issued = (stamp.physical_ms, stamp.logical);
        // Strictly increasing, unless the clock is pinned at the last
        // millisecond it can represent.
        debug_assert!(stamp > before || before.physical_ms == u64::MAX);
        stamp
    }

    /// The receive rule: checks `remote` against the drift bound and advances
    /// the clock past it, so every later local stamp is greater.
    ///
    /// # Errors
    ///
    /// [`DriftRejected`] if `remote` is more than the drift bound ahead of
    /// `wall_ms` under [`DriftPolicy::Reject`]; the clock is then unchanged.
    pub fn receive(&mut self, remote: Stamp, wall_ms: u64) -> Result<(), DriftRejected> {
        self.check_drift(remote, wall_ms)?;
        let physical = wall_ms.max(self.physical_ms).max(remote.physical_ms);
        let local_same = physical == self.physical_ms;
        let remote_same = physical == remote.physical_ms;
        let base = match (local_same, remote_same) {
            (true, true) => Some(self.logical.max(remote.logical)),
            (true, false) => Some(self.logical),
            (false, true) => Some(remote.logical),
            (false, false) => None,
        };
        self.physical_ms = physical;
        match base {
            Some(logical) => {
                self.logical = logical;
                self.bump_logical();
            }
            None => self.logical = 0,
        }
        // The receive rule: every later local stamp is above the remote one
        // (unless the clock is pinned at the last millisecond).
        debug_assert!(
            (self.physical_ms, self.logical) > (remote.physical_ms, remote.logical)
                || self.physical_ms == u64::MAX
        );
        Ok(())
    }

    fn check_drift(&mut self, remote: Stamp, wall_ms: u64) -> Result<(), DriftRejected> {
        let ahead_ms = remote.physical_ms.saturating_sub(wall_ms);
        self.drift.max_ahead_ms = self.drift.max_ahead_ms.max(ahead_ms);
        if ahead_ms <= self.max_drift_ms {
            return Ok(());
        }
        match self.policy {
            DriftPolicy::Reject => {
                self.drift.rejected += 1;
                Err(DriftRejected {
                    peer: remote.node,
                    ahead_ms,
                    max_drift_ms: self.max_drift_ms,
                })
            }
            DriftPolicy::AcceptAndCount => {
                self.drift.accepted_beyond_bound += 1;
                Ok(())
            }
        }
    }

    /// Advances the logical counter; on overflow, borrows the next millisecond
    /// so the clock still moves forward.
    fn bump_logical(&mut self) {
        match self.logical.checked_add(1) {
            Some(next) => self.logical = next,
            None => {
                self.physical_ms = self.physical_ms.saturating_add(1);
                self.logical = 0;
            }
        }
    }
}

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// The engine reads time only through this trait, so tests can drive it.
pub trait WallClock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Sets the time.
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hlc(node: u64) -> Hlc {
        Hlc::new(NodeId(node), 500, DriftPolicy::Reject)
    }

    #[test]
    fn tick_follows_wall_clock_and_never_goes_back() {
        let mut c = hlc(1);
        let a = c.tick(1000);
        assert_eq!((a.physical_ms, a.logical), (1000, 0));
        let b = c.tick(1000);
        assert_eq!((b.physical_ms, b.logical), (1000, 1));
        let d = c.tick(900); // wall clock stepped back
        assert!(d > b);
        let e = c.tick(2000);
        assert_eq!((e.physical_ms, e.logical), (2000, 0));
    }

    #[test]
    fn issued_moves_on_ticks_and_recovery_not_on_what_is_only_seen() {
        let mut c = hlc(1);
        let mine = c.tick(1000);
        let remote = Stamp {
            physical_ms: 1000,
            logical: 40,
            node: NodeId(2),
        };
        c.receive(remote, 1000).unwrap();
        assert!(c.high_water() > remote);
        assert_eq!(c.issued(), mine, "seeing is not issuing");
        let next = c.tick(1000);
        assert!(next > remote);
        assert_eq!(c.issued(), next);
        let mut reopened = hlc(1);
        reopened.observe_recovered(next);
        assert_eq!(reopened.issued(), next);
    }

    #[test]
    fn receive_advances_past_remote() {
        let mut c = hlc(1);
        c.tick(1000);
        let remote = Stamp {
            physical_ms: 1200,
            logical: 7,
            node: NodeId(2),
        };
        c.receive(remote, 1000).unwrap();
        let next = c.tick(1000);
        assert!(next > remote);
        assert_eq!((next.physical_ms, next.logical), (1200, 9));
    }

    #[test]
    fn receive_with_equal_physical_takes_max_logical() {
        let mut c = hlc(1);
        c.tick(1000);
        c.tick(1000); // logical 1
        let remote = Stamp {
            physical_ms: 1000,
            logical: 5,
            node: NodeId(2),
        };
        c.receive(remote, 1000).unwrap();
        assert_eq!(c.high_water().logical, 6);
    }

    #[test]
    fn drift_beyond_bound_is_rejected_with_peer_and_offset() {
        let mut c = hlc(1);
        let remote = Stamp {
            physical_ms: 10_000,
            logical: 0,
            node: NodeId(9),
        };
        match c.receive(remote, 9_000) {
            Err(DriftRejected { peer, ahead_ms, .. }) => {
                assert_eq!(peer, NodeId(9));
                assert_eq!(ahead_ms, 1000);
            }
            other => panic!("expected drift error, got {other:?}"),
        }
        assert_eq!(c.drift_stats().rejected, 1);
        assert_eq!(
            c.high_water().physical_ms,
            0,
            "a rejected stamp must not move the clock"
        );
    }

    #[test]
    fn drift_policy_accept_counts() {
        let mut c = Hlc::new(NodeId(1), 500, DriftPolicy::AcceptAndCount);
        let remote = Stamp {
            physical_ms: 10_000,
            logical: 0,
            node: NodeId(9),
        };
        c.receive(remote, 9_000).unwrap();
        assert_eq!(c.drift_stats().accepted_beyond_bound, 1);
        assert!(c.tick(9_000) > remote);
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = hlc(1);
        c.observe_recovered(Stamp {
            physical_ms: 5,
            logical: u32::MAX,
            node: NodeId(1),
        });
        let s = c.tick(5);
        assert_eq!((s.physical_ms, s.logical), (6, 0));
    }

    #[test]
    fn recovered_high_water_keeps_stamps_monotonic_across_restart() {
        let before = {
            let mut c = hlc(1);
            c.tick(50_000)
        };
        let mut restarted = hlc(1);
        restarted.observe_recovered(before);
        assert!(restarted.tick(10) > before);
    }

    #[test]
    fn node_id_breaks_ties() {
        let a = Stamp {
            physical_ms: 1,
            logical: 1,
            node: NodeId(1),
        };
        let b = Stamp {
            node: NodeId(2),
            ..a
        };
        assert!(a < b);
    }
}
