//! Convergence: N copies (2 to 5) do random writes with random clocks, then
//! exchange change sets in random order, with duplicated and interrupted
//! (truncated) transfers. After everyone has heard from everyone, all
//! digests and all reads are equal.
//!
//! `PROPTEST_CASES` raises the number of cases (default here: 24).

use std::sync::Arc;

use mergekv::{Batch, Db, DriftPolicy, ManualClock, Options, ScanOptions, SyncMode};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Action {
    Put(usize, u8, u8),
    Delete(usize, u8),
    Increment(usize, u8, i64),
    Batch(usize, Vec<(u8, Option<u8>)>),
    Tick(usize, u64),
    Sync {
        from: usize,
        to: usize,
        duplicate: bool,
        interrupted: bool,
    },
}

fn action(copies: usize) -> impl Strategy<Value = Action> {
    let c = 0..copies;
    prop_oneof![
        4 => (c.clone(), 0u8..16, any::<u8>()).prop_map(|(i, k, v)| Action::Put(i, k, v)),
        2 => (c.clone(), 0u8..16).prop_map(|(i, k)| Action::Delete(i, k)),
        3 => (c.clone(), 0u8..16, -3i64..4).prop_map(|(i, k, d)| Action::Increment(i, k, d)),
        1 => (c.clone(), prop::collection::btree_map(0u8..16, prop::option::of(any::<u8>()), 1..4))
            .prop_map(|(i, m)| Action::Batch(i, m.into_iter().collect())),
        2 => (c.clone(), 0u64..50).prop_map(|(i, ms)| Action::Tick(i, ms)),
        3 => (c.clone(), c, any::<bool>(), any::<bool>()).prop_map(|(from, to, duplicate, interrupted)| {
            Action::Sync { from, to, duplicate, interrupted }
        }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Action>)> {
    (2usize..=5).prop_flat_map(|n| (Just(n), prop::collection::vec(action(n), 1..80)))
}

struct Copy {
    _dir: tempfile::TempDir,
    db: Db,
    clock: Arc<ManualClock>,
}

fn open_copy() -> Copy {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let db = Db::open_with(
        dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_worker_threads(0)
            .with_wall_clock(clock.clone())
            // Clocks wander apart here on purpose: count, do not refuse.
            .with_drift_policy(DriftPolicy::AcceptAndCount)
            .with_compaction_wal_bytes_min(u64::MAX)
            .with_compaction_interval_ms(0),
    )
    .unwrap();
    Copy {
        _dir: dir,
        db,
        clock,
    }
}

fn key(k: u8) -> String {
    format!("k{k:02}")
}

fn transfer(copies: &[Copy], from: usize, to: usize, duplicate: bool, interrupted: bool) {
    if from == to {
        return;
    }
    let peer = format!("copy-{from}");
    let (bytes, _) = copies[from].db.export_for(&format!("copy-{to}")).unwrap();
    if interrupted {
        let cut = &bytes[..bytes.len() / 2];
        assert!(
            copies[to].db.import_from(&peer, cut).is_err(),
            "a truncated change set is refused"
        );
        return;
    }
    copies[to].db.import_from(&peer, &bytes).unwrap();
    if duplicate {
        let again = copies[to].db.import_from(&peer, &bytes).unwrap();
        assert_eq!(again.applied, 0, "a duplicated transfer changes nothing");
    }
    // Tell the sender what the receiver now has (as its next export would).
    let (reply, _) = copies[to].db.export_for(&peer).unwrap();
    copies[from]
        .db
        .import_from(&format!("copy-{to}"), &reply)
        .unwrap();
}

fn run(copies: &[Copy], action: &Action) {
    match action {
        Action::Put(i, k, v) => drop(copies[*i].db.put(key(*k), [*v]).unwrap()),
        Action::Delete(i, k) => drop(copies[*i].db.delete(key(*k)).unwrap()),
        Action::Increment(i, k, d) => drop(copies[*i].db.increment(key(*k), *d).unwrap()),
        Action::Batch(i, ops) => {
            let mut batch = Batch::new();
            for (k, v) in ops {
                match v {
                    Some(v) => batch.put(key(*k), [*v]),
                    None => batch.delete(key(*k)),
                };
            }
            copies[*i].db.write(batch).unwrap();
        }
        Action::Tick(i, ms) => copies[*i].clock.advance_ms(*ms),
        Action::Sync {
            from,
            to,
            duplicate,
            interrupted,
        } => transfer(copies, *from, *to, *duplicate, *interrupted),
    }
}

fn contents(db: &Db) -> Vec<(Vec<u8>, mergekv::Value)> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| (e.key().to_vec(), e.into_value()))
        .collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn copies_converge_whatever_the_order((n, actions) in scenario()) {
        let copies: Vec<Copy> = (0..n).map(|_| open_copy()).collect();
        for action in &actions {
            run(&copies, action);
        }
        // Everyone hears from everyone, twice round (the second round also
        // carries what arrived in the first).
        for _ in 0..2 {
            for from in 0..n {
                for to in 0..n {
                    transfer(&copies, from, to, false, false);
                }
            }
        }
        let root = copies[0].db.digest().unwrap().root;
        let reads = contents(&copies[0].db);
        for c in &copies[1..] {
            prop_assert_eq!(c.db.digest().unwrap().root, root);
            prop_assert_eq!(contents(&c.db), reads.clone());
        }
    }
}
