//! The database against a `BTreeMap` model: random puts, deletes,
//! increments, batches and reopens, then every read compared.
//!
//! `PROPTEST_CASES` raises the number of cases (default here: 32).

use std::collections::BTreeMap;

use mergekv::{Batch, Db, Options, ScanOptions, SyncMode, Value};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    Increment(u8, i64),
    Batch(Vec<(u8, Option<u8>)>),
    Reopen,
}

#[derive(Clone, Debug, PartialEq)]
enum Model {
    Bytes(Vec<u8>),
    Counter(i64),
}

fn key(k: u8) -> String {
    format!("key-{k:02}")
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..12, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..12).prop_map(Step::Delete),
        3 => (0u8..12, -5i64..6).prop_map(|(k, d)| Step::Increment(k, d)),
        1 => prop::collection::btree_map(0u8..12, prop::option::of(any::<u8>()), 1..4)
            .prop_map(|m| Step::Batch(m.into_iter().collect())),
        1 => Just(Step::Reopen),
    ]
}

fn apply_model(model: &mut BTreeMap<String, Model>, step: &Step) {
    match step {
        Step::Put(k, v) => {
            model.insert(key(*k), Model::Bytes(vec![*v]));
        }
        Step::Delete(k) => {
            model.remove(&key(*k));
        }
        Step::Increment(k, d) => {
            let next = match model.get(&key(*k)) {
                Some(Model::Counter(c)) => c + d,
                // A register write (put or delete) resets the counter.
                _ => *d,
            };
            model.insert(key(*k), Model::Counter(next));
        }
        Step::Batch(ops) => {
            for (k, v) in ops {
                match v {
                    Some(v) => apply_model(model, &Step::Put(*k, *v)),
                    None => apply_model(model, &Step::Delete(*k)),
                }
            }
        }
        Step::Reopen => {}
    }
}

fn apply_db(db: Db, dir: &std::path::Path, options: &Options, step: &Step) -> Db {
    match step {
        Step::Put(k, v) => drop(db.put(key(*k), [*v]).unwrap()),
        Step::Delete(k) => drop(db.delete(key(*k)).unwrap()),
        Step::Increment(k, d) => drop(db.increment(key(*k), *d).unwrap()),
        Step::Batch(ops) => {
            let mut batch = Batch::new();
            for (k, v) in ops {
                match v {
                    Some(v) => batch.put(key(*k), [*v]),
                    None => batch.delete(key(*k)),
                };
            }
            db.write(batch).unwrap();
        }
        Step::Reopen => {
            drop(db);
            return Db::open_with(dir, options.clone()).unwrap();
        }
    }
    db
}

fn contents(db: &Db) -> BTreeMap<String, Model> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| {
            let k = String::from_utf8(e.key().to_vec()).unwrap();
            let v = match e.into_value() {
                Value::Bytes(b) => Model::Bytes(b.to_vec()),
                Value::Counter(c) => Model::Counter(c),
            };
            (k, v)
        })
        .collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn database_matches_model(steps in prop::collection::vec(step(), 1..60), workers in 0usize..3) {
        let dir = tempfile::tempdir().unwrap();
        let options = Options::default()
.with_sync_mode(SyncMode::Never)
.with_worker_threads(workers)
.with_segment_size_bytes_max(512);
        let mut db = Db::open_with(dir.path(), options.clone()).unwrap();
        let mut model = BTreeMap::new();
        for step in &steps {
            apply_model(&mut model, step);
            db = apply_db(db, dir.path(), &options, step);
            prop_assert_eq!(&contents(&db), &model, "after {:?}", step);
        }
        drop(db);
        let db = Db::open_with(dir.path(), options).unwrap();
        prop_assert_eq!(contents(&db), model);
    }
}
