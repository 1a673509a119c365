//! The CRDT values and their merge (pure: no I/O, no clock).
//!
//! Every key holds a [`KeyState`]: an optional last-writer-wins
//! [`Register`] and an optional PN-[`Counter`]. Each part is a join
//! semilattice and the state is their product, so [`KeyState::merge`] is
//! commutative, associative and idempotent, and copies that have seen the same
//! writes hold equal states whatever the order.
//!
//! # Which kind a key shows
//!
//! A key is a register, a counter, or absent, decided by the newest stamp:
//! if the counter's newest increment is newer than the register's stamp, the
//! key reads as a counter; otherwise it reads as the register (a value, or
//! absent if the register is a tombstone). On an exact tie the register wins.
//!
//! # Deleting a counter
//!
//! Every register write (a put or a delete) records, in the register, the
//! counter totals its writer had observed: its *floor*. A counter's value
//! counts only what lies above the floor of the winning register, per node.
//! So deleting a counter and incrementing it again restarts it from zero,
//! while increments the deleting copy had not seen survive the delete
//! (add-wins). The floor belongs to its register and wins or loses with it,
//! so it carries the register's stamp: a sync by version vector never has
//! to guess whether a peer has it.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::clock::{NodeId, Stamp};
use crate::error::ShowBytes;

/// A counter floor: per-node `(node, p, n)` totals, sorted by node.
pub type Floor = Vec<(NodeId, u64, u64)>;

/// A last-writer-wins register: a value, or a tombstone (`value: None`).
#[derive(Clone, PartialEq, Eq)]
pub struct Register {
    /// The stamp of the write that produced this value.
    pub stamp: Stamp,
    /// The value, or `None` for a tombstone.
    pub value: Option<Arc<[u8]>>,
    /// The counter totals the writer had observed (empty if none): only
    /// what lies above them counts.
    pub floor: Floor,
}

/// Shows the value readably (`Some("Ada")`), cut when long.
impl std::fmt::Debug for Register {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Register")
            .field("stamp", &self.stamp)
            .field("value", &self.value.as_deref().map(ShowBytes))
            .field("floor", &self.floor)
            .finish()
    }
}

/// One node's contribution to a PN-counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeTotals {
    /// The node these totals belong to.
    pub node: NodeId,
    /// Sum of that node's positive increments.
    pub p: u64,
    /// Sum of the magnitudes of that node's negative increments.
    pub n: u64,
    /// The stamp of that node's latest increment.
    pub stamp: Stamp,
}

/// A PN-counter: per-node totals.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    /// Per-node totals, sorted by node, one entry per node.
    pub totals: Vec<NodeTotals>,
}

/// The full CRDT state of one key.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyState {
    /// The register part, if the key was ever put or deleted.
    pub register: Option<Register>,
    /// The counter part, if the key was ever incremented or a register write
    /// observed counter totals. Boxed: most keys are plain registers.
    pub counter: Option<Box<Counter>>,
}

/// What a key reads as, borrowed from its state.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Visible<'a> {
    /// No value: never written, deleted, or a counter floor only.
    Absent,
    /// A register value.
    Bytes(&'a Arc<[u8]>),
    /// A counter value.
    Counter(i64),
}

/// Shows the bytes readably (`Bytes("Ada")`), cut when long.
impl std::fmt::Debug for Visible<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Visible::Absent => f.write_str("Absent"),
            Visible::Bytes(bytes) => f.debug_tuple("Bytes").field(&ShowBytes(bytes)).finish(),
            Visible::Counter(c) => f.debug_tuple("Counter").field(c).finish(),
        }
    }
}

impl Register {
    /// Merges two registers: the greater stamp wins. Equal stamps cannot come
    /// from honest nodes; should they meet, the greater value wins, so the
    /// merge stays deterministic.
    pub fn merge(a: &Register, b: &Register) -> Register {
        let a_wins = match a.stamp.cmp(&b.stamp) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => (&a.value, &a.floor) >= (&b.value, &b.floor),
        };
        let winner = if a_wins { a.clone() } else { b.clone() };
        debug_assert!(winner.stamp >= a.stamp && winner.stamp >= b.stamp);
        winner
    }
}

impl Counter {
    /// Merges two counters: per-node maximum of the totals.
    pub fn merge(a: &Counter, b: &Counter) -> Counter {
        let merged = Counter {
            totals: merge_sorted(&a.totals, &b.totals, |t| t.node, merge_totals),
        };
        // The join is at least each input, node by node: nothing counted is lost.
        debug_assert!(a.totals.iter().chain(&b.totals).all(|t| {
            merged
                .totals_of(t.node)
                .is_some_and(|m| m.p >= t.p && m.n >= t.n && m.stamp >= t.stamp)
        }));
        merged
    }

    /// The counter's value above `floor`, saturating at the `i64` range
    /// (only reachable by merging copies whose combined increments overflow).
    pub fn value(&self, floor: &[(NodeId, u64, u64)]) -> i64 {
        let exact = self.exact_value(floor);
        exact.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The counter's value above `floor`, without saturation.
    pub fn exact_value(&self, floor: &[(NodeId, u64, u64)]) -> i128 {
        let mut sum: i128 = 0;
        for t in &self.totals {
            let (fp, fn_) = floor_of(floor, t.node);
            sum += i128::from(t.p.saturating_sub(fp));
            sum -= i128::from(t.n.saturating_sub(fn_));
        }
        sum
    }

    /// Replaces (or adds) one node's totals, keeping the order by node.
    pub fn set_totals(&mut self, totals: NodeTotals) {
        let at = self.totals.partition_point(|t| t.node < totals.node);
        match self.totals.get_mut(at) {
            Some(slot) if slot.node == totals.node => *slot = totals,
            _ => self.totals.insert(at, totals),
        }
        debug_assert!(self.totals.is_sorted_by(|x, y| x.node < y.node));
    }

    /// The totals of `node`, if it ever incremented.
    pub fn totals_of(&self, node: NodeId) -> Option<NodeTotals> {
        self.totals
            .binary_search_by_key(&node, |t| t.node)
            .ok()
            .and_then(|i| self.totals.get(i))
            .copied()
    }

    /// The stamp of the newest increment from any node.
    pub fn newest_stamp(&self) -> Option<Stamp> {
        self.totals.iter().map(|t| t.stamp).max()
    }

    /// The totals as a floor: what a register write records as observed.
    pub fn totals_as_floor(&self) -> Vec<(NodeId, u64, u64)> {
        self.totals.iter().map(|t| (t.node, t.p, t.n)).collect()
    }
}

/// The floor of `node` in `floor`, `(0, 0)` if none.
pub fn floor_of(floor: &[(NodeId, u64, u64)], node: NodeId) -> (u64, u64) {
    floor
        .binary_search_by_key(&node, |f| f.0)
        .ok()
        .and_then(|i| floor.get(i))
        .map_or((0, 0), |&(_, p, n)| (p, n))
}

fn merge_totals(a: &NodeTotals, b: &NodeTotals) -> NodeTotals {
    debug_assert_eq!(a.node, b.node, "only one node's totals are combined");
    NodeTotals {
        node: a.node,
        p: a.p.max(b.p),
        n: a.n.max(b.n),
        stamp: a.stamp.max(b.stamp),
    }
}

/// Merges two vectors sorted by `key`, combining entries with equal keys.
fn merge_sorted<T: Copy, K: Ord>(
    a: &[T],
    b: &[T],
    key: impl Fn(&T) -> K,
    combine: impl Fn(&T, &T) -> T,
) -> Vec<T> {
    debug_assert!(a.is_sorted_by(|x, y| key(x) < key(y)));
    debug_assert!(b.is_sorted_by(|x, y| key(x) < key(y)));
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut rest_a, mut rest_b) = (a, b);
    while let (Some((x, after_x)), Some((y, after_y))) =
        (rest_a.split_first(), rest_b.split_first())
    {
        match key(x).cmp(&key(y)) {
            Ordering::Less => {
                out.push(*x);
                rest_a = after_x;
            }
            Ordering::Greater => {
                out.push(*y);
                rest_b = after_y;
            }
            Ordering::Equal => {
                out.push(combine(x, y));
                rest_a = after_x;
                rest_b = after_y;
            }
        }
    }
    out.extend_from_slice(rest_a);
    out.extend_from_slice(rest_b);
    debug_assert!(out.is_sorted_by(|x, y| key(x) < key(y)));
    debug_assert!(out.len() >= a.len().max(b.len()) && out.len() <= a.len() + b.len());
    out
}

impl KeyState {
    /// The join of two states.
    pub fn merge(a: &KeyState, b: &KeyState) -> KeyState {
        let register = match (&a.register, &b.register) {
            (Some(x), Some(y)) => Some(Register::merge(x, y)),
            (x, y) => x.clone().or_else(|| y.clone()),
        };
        let counter = match (&a.counter, &b.counter) {
            (Some(x), Some(y)) => Some(Box::new(Counter::merge(x, y))),
            (x, y) => x.clone().or_else(|| y.clone()),
        };
        let merged = KeyState { register, counter };
        debug_assert!(
            merged.newest_stamp() >= a.newest_stamp() && merged.newest_stamp() >= b.newest_stamp()
        );
        merged
    }

    /// Merges `other` into `self`.
    pub fn merge_from(&mut self, other: &KeyState) {
        *self = KeyState::merge(self, other);
    }

    /// What the key reads as (see the module docs for the rule).
    pub fn visible(&self) -> Visible<'_> {
        let counter_stamp = self.counter.as_ref().and_then(|c| c.newest_stamp());
        let register_stamp = self.register.as_ref().map(|r| r.stamp);
        match (register_stamp, counter_stamp) {
            (Some(r), Some(c)) if c > r => self.counter_visible(),
            (None, Some(_)) => self.counter_visible(),
            (Some(_), _) => match self.register.as_ref().and_then(|r| r.value.as_ref()) {
                Some(bytes) => Visible::Bytes(bytes),
                None => Visible::Absent,
            },
            (None, None) => Visible::Absent,
        }
    }

    fn counter_visible(&self) -> Visible<'_> {
        Visible::Counter(self.counter.as_ref().map_or(0, |c| c.value(self.floor())))
    }

    /// The floor of the winning register (empty without one).
    pub fn floor(&self) -> &[(NodeId, u64, u64)] {
        self.register
            .as_ref()
            .map_or(&[][..], |r| r.floor.as_slice())
    }

    /// The counter's value without saturation (0 without a counter).
    pub fn exact_counter_value(&self) -> i128 {
        self.counter
            .as_ref()
            .map_or(0, |c| c.exact_value(self.floor()))
    }

    /// True if the key reads as absent because of a delete (a tombstone that
    /// must be kept for last-writer-wins until it is garbage-collected).
    pub fn is_tombstone(&self) -> bool {
        matches!(self.visible(), Visible::Absent)
            && self.register.as_ref().is_some_and(|r| r.value.is_none())
    }

    /// The newest stamp anywhere in the state.
    pub fn newest_stamp(&self) -> Option<Stamp> {
        let r = self.register.as_ref().map(|r| r.stamp);
        let c = self.counter.as_ref().and_then(|c| c.newest_stamp());
        r.max(c)
    }

    /// The counter totals observed here, as a floor for a register write.
    pub fn observed_floor(&self) -> Vec<(NodeId, u64, u64)> {
        self.counter
            .as_ref()
            .map(|c| c.totals_as_floor())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ms: u64, node: u64) -> Stamp {
        Stamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId(node),
        }
    }

    fn register(ms: u64, node: u64, value: Option<&[u8]>, floor: Floor) -> KeyState {
        KeyState {
            register: Some(Register {
                stamp: stamp(ms, node),
                value: value.map(Arc::from),
                floor,
            }),
            counter: None,
        }
    }

    fn put(ms: u64, node: u64, v: &[u8]) -> KeyState {
        register(ms, node, Some(v), Vec::new())
    }

    fn incr(ms: u64, node: u64, p: u64, n: u64) -> KeyState {
        KeyState {
            register: None,
            counter: Some(Box::new(Counter {
                totals: vec![NodeTotals {
                    node: NodeId(node),
                    p,
                    n,
                    stamp: stamp(ms, node),
                }],
            })),
        }
    }

    #[test]
    fn later_put_wins_either_way() {
        let a = put(1, 1, b"a");
        let b = put(2, 2, b"b");
        assert_eq!(KeyState::merge(&a, &b), KeyState::merge(&b, &a));
        assert_eq!(
            KeyState::merge(&a, &b).visible(),
            Visible::Bytes(&Arc::from(&b"b"[..]))
        );
    }

    #[test]
    fn counter_sums_nodes_and_takes_max_per_node() {
        let s = KeyState::merge(&incr(1, 1, 5, 0), &incr(2, 2, 0, 2));
        let s = KeyState::merge(&s, &incr(1, 1, 3, 0)); // stale totals for node 1
        assert_eq!(s.visible(), Visible::Counter(3));
    }

    #[test]
    fn delete_resets_counter_but_unseen_increments_survive() {
        let counted = KeyState::merge(&incr(1, 1, 5, 0), &incr(1, 2, 2, 0));
        // Node 1 deletes having seen only its own 5.
        let delete = register(3, 1, None, vec![(NodeId(1), 5, 0)]);
        let s = KeyState::merge(&counted, &delete);
        assert_eq!(s.visible(), Visible::Absent);
        let s = KeyState::merge(&s, &incr(4, 1, 6, 0));
        // node 1: 6 - 5 = 1; node 2's 2 were not seen by the delete.
        assert_eq!(s.visible(), Visible::Counter(3));
    }

    #[test]
    fn a_floor_ahead_of_the_totals_counts_nothing() {
        let delete_first = register(2, 2, None, vec![(NodeId(1), 5, 0)]);
        let s = KeyState::merge(&delete_first, &incr(3, 1, 3, 0));
        assert_eq!(s.visible(), Visible::Counter(0));
    }

    #[test]
    fn the_floor_is_the_winning_registers() {
        let old_delete = register(2, 1, None, vec![(NodeId(1), 9, 0)]);
        let newer_put = register(3, 2, Some(b"x"), vec![(NodeId(1), 4, 0)]);
        let s = KeyState::merge(&old_delete, &newer_put);
        let s = KeyState::merge(&s, &incr(5, 1, 10, 0));
        assert_eq!(s.visible(), Visible::Counter(6), "10 above the winner's 4");
    }

    #[test]
    fn register_wins_exact_ties_with_counter() {
        let s = KeyState::merge(&put(5, 1, b"x"), &incr(5, 1, 1, 0));
        assert!(matches!(s.visible(), Visible::Bytes(_)));
    }
}
