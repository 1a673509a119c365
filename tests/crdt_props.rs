//! Property tests of the CRDT merge: commutative, associative, idempotent,
//! and convergent under any delivery order with duplicates.
//!
//! `PROPTEST_CASES` raises the number of cases (default here: 512).

use std::collections::BTreeMap;
use std::sync::Arc;

use mergekv::crdt::{Counter, Floor, KeyState, NodeTotals, Register, floor_of};
use mergekv::{NodeId, Stamp};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

/// Small ranges, so that equal stamps, equal nodes and ties actually occur.
fn stamp() -> impl Strategy<Value = Stamp> {
    (0u64..6, 0u32..3, 1u64..4).prop_map(|(physical_ms, logical, node)| Stamp {
        physical_ms,
        logical,
        node: NodeId(node),
    })
}

fn floor() -> impl Strategy<Value = Floor> {
    prop::collection::btree_map(1u64..5, (0u64..20, 0u64..20), 0..3).prop_map(
        |m: BTreeMap<_, _>| {
            m.into_iter()
                .map(|(node, (p, n))| (NodeId(node), p, n))
                .collect()
        },
    )
}

fn register() -> impl Strategy<Value = Register> {
    (
        stamp(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..3)),
        floor(),
    )
        .prop_map(|(stamp, value, floor)| Register {
            stamp,
            value: value.map(Arc::from),
            floor,
        })
}

fn counter() -> impl Strategy<Value = Counter> {
    let totals = prop::collection::btree_map(1u64..5, (0u64..20, 0u64..20, stamp()), 0..4);
    totals.prop_map(|totals: BTreeMap<_, _>| Counter {
        totals: totals
            .into_iter()
            .map(|(node, (p, n, stamp))| NodeTotals {
                node: NodeId(node),
                p,
                n,
                stamp,
            })
            .collect(),
    })
}

fn key_state() -> impl Strategy<Value = KeyState> {
    (prop::option::of(register()), prop::option::of(counter())).prop_map(|(register, counter)| {
        KeyState {
            register,
            counter: counter.map(Box::new),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn merge_is_commutative(a in key_state(), b in key_state()) {
        prop_assert_eq!(KeyState::merge(&a, &b), KeyState::merge(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in key_state(), b in key_state(), c in key_state()) {
        let left = KeyState::merge(&KeyState::merge(&a, &b), &c);
        let right = KeyState::merge(&a, &KeyState::merge(&b, &c));
        prop_assert_eq!(left, right);
    }

    #[test]
    fn merge_is_idempotent(a in key_state(), b in key_state()) {
        prop_assert_eq!(KeyState::merge(&a, &a), a.clone());
        let ab = KeyState::merge(&a, &b);
        prop_assert_eq!(KeyState::merge(&ab, &b), ab);
    }

    #[test]
    fn merge_never_loses_the_newest_register(a in register(), b in register()) {
        let merged = Register::merge(&a, &b);
        prop_assert_eq!(merged.stamp, a.stamp.max(b.stamp));
    }

    #[test]
    fn any_order_with_duplicates_converges(
        deltas in prop::collection::vec(key_state(), 1..8),
        order in prop::collection::vec(any::<prop::sample::Index>(), 1..24),
    ) {
        let in_order = deltas.iter().fold(KeyState::default(), |acc, d| KeyState::merge(&acc, d));
        // Deliver in a shuffled order, with duplicates, then make sure every
        // delta arrived at least once.
        let mut shuffled = KeyState::default();
        for index in &order {
            shuffled.merge_from(&deltas[index.index(deltas.len())]);
        }
        for d in &deltas {
            shuffled.merge_from(d);
        }
        prop_assert_eq!(shuffled.visible(), in_order.visible());
        prop_assert_eq!(shuffled, in_order);
    }

    #[test]
    fn counter_value_counts_only_above_the_floor(c in counter(), f in floor()) {
        let value = c.value(&f);
        let above: i128 = c.totals.iter().map(|t| {
            let (fp, fn_) = floor_of(&f, t.node);
            i128::from(t.p.saturating_sub(fp)) - i128::from(t.n.saturating_sub(fn_))
        }).sum();
        prop_assert_eq!(i128::from(value), above);
    }
}
