//! The engine's behaviour through the public API: round trips, reopen,
//! scans, keyspaces, stale commands, counters, idempotency, sequence numbers,
//! rotation, locking.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use mergekv::{
    Batch, Db, Error, NodeId, Options, OutcomeKind, ScanOptions, Stamp, SyncMode, Value,
};

fn opts() -> Options {
    Options::default()
}

fn keys(scan: mergekv::Scan) -> Vec<String> {
    scan.map(|e| String::from_utf8(e.unwrap().key().to_vec()).unwrap())
        .collect()
}

#[test]
fn round_trip_put_get_delete() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let out = db.put("a", "1").unwrap();
    assert_eq!(out.kind, OutcomeKind::Applied);
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.delete("a").unwrap().kind, OutcomeKind::Removed);
    assert_eq!(db.get("a").unwrap(), None);
    assert_eq!(db.get("never").unwrap(), None);
}

#[test]
fn persistence_across_reopen_in_every_sync_mode() {
    for mode in [SyncMode::Always, SyncMode::Interval(5), SyncMode::Never] {
        let dir = tempfile::tempdir().unwrap();
        let options = opts().with_sync_mode(mode);
        {
            let db = Db::open_with(dir.path(), options.clone()).unwrap();
            db.put("k", "v").unwrap();
            db.increment("c", 7).unwrap();
            db.keyspace("other").unwrap().put("k", "w").unwrap();
            db.put("gone", "x").unwrap();
            db.delete("gone").unwrap();
        }
        let db = Db::open_with(dir.path(), options).unwrap();
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]), "{mode:?}");
        assert_eq!(db.counter("c").unwrap(), 7);
        assert_eq!(
            db.keyspace("other").unwrap().get("k").unwrap().as_deref(),
            Some(&b"w"[..])
        );
        assert_eq!(db.get("gone").unwrap(), None);
        assert_eq!(db.stats().tombstones, 1);
    }
}

#[test]
fn scans_exclude_deleted_keys_and_respect_keyspaces() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for k in ["apple", "apricot", "banana", "blueberry", "cherry"] {
        db.put(k, k.to_uppercase()).unwrap();
    }
    db.delete("apricot").unwrap();
    let other = db.keyspace("other").unwrap();
    other.put("avocado", "x").unwrap();

    assert_eq!(keys(db.scan(&ScanOptions::prefix("a"))), ["apple"]);
    assert_eq!(
        keys(db.scan(&ScanOptions::range("b", "c"))),
        ["banana", "blueberry"]
    );
    assert_eq!(
        keys(db.scan(&ScanOptions::all().reversed().limited(2))),
        ["cherry", "blueberry"]
    );
    assert_eq!(
        keys(db.scan(&ScanOptions::from_range(&b"b"[..]..).reversed())),
        ["cherry", "blueberry", "banana"]
    );
    assert_eq!(keys(other.scan(&ScanOptions::all())), ["avocado"]);
    assert_eq!(
        keys(db.scan(&ScanOptions::prefix("av"))),
        Vec::<String>::new()
    );
}

#[test]
fn long_scans_cross_refill_chunks_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts().with_sync_mode(SyncMode::Never)).unwrap();
    let mut batch = Batch::new();
    for i in 0..2000 {
        batch.put(format!("k{i:05}"), "v");
    }
    db.write(batch).unwrap();
    for i in (0..2000).step_by(3) {
        db.delete(format!("k{i:05}")).unwrap();
    }
    let expected: Vec<String> = (0..2000)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("k{i:05}"))
        .collect();
    assert_eq!(keys(db.scan(&ScanOptions::all())), expected);
    let mut rev = expected.clone();
    rev.reverse();
    assert_eq!(keys(db.scan(&ScanOptions::all().reversed())), rev);
    assert_eq!(
        db.scan(&ScanOptions::all().limited(1000))
            .map(Result::unwrap)
            .count(),
        1000
    );
}

#[test]
fn stale_commands_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let fresh = db.put("k", "new").unwrap();
    let old = Stamp {
        physical_ms: fresh.stamp.physical_ms - 1000,
        logical: 0,
        node: NodeId(42),
    };
    let mut batch = Batch::new();
    batch.put("k", "old").with_stamp(old);
    let outcome = db.write(batch).unwrap();
    assert_eq!(outcome[0].kind, OutcomeKind::IgnoredStale);
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"new"[..]));
    let mut delete = Batch::new();
    delete.delete("k").with_stamp(old);
    assert_eq!(db.write(delete).unwrap()[0].kind, OutcomeKind::IgnoredStale);
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn remote_stamp_beyond_drift_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let now = db.put("x", "1").unwrap().stamp.physical_ms;
    let mut batch = Batch::new();
    batch.put("k", "future").with_stamp(Stamp {
        physical_ms: now + 60_000,
        logical: 0,
        node: NodeId(7),
    });
    match db.write(batch) {
        Err(Error::ClockDrift { peer, ahead_ms, .. }) => {
            assert_eq!(peer, NodeId(7));
            assert!(ahead_ms >= 59_000);
        }
        other => panic!("expected ClockDrift, got {other:?}"),
    }
    assert_eq!(db.get("k").unwrap(), None);
    assert_eq!(db.stats().drift.rejected, 1);
}

#[test]
fn counters_sum_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts().with_sync_mode(SyncMode::Never)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let delta = if (t + i) % 4 == 0 { -3 } else { 5 };
                    db.increment("hits", delta).unwrap();
                    let mut b = Batch::new();
                    b.increment(format!("c{}", i % 3), 1)
                        .increment_in("other", "hits", 2);
                    db.write(b).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let expected: i64 = (0..8)
        .flat_map(|t| (0..200).map(move |i| if (t + i) % 4 == 0 { -3 } else { 5 }))
        .sum();
    assert_eq!(db.counter("hits").unwrap(), expected);
    assert_eq!(
        db.keyspace("other").unwrap().counter("hits").unwrap(),
        8 * 200 * 2
    );
    let total: i64 = (0..3).map(|i| db.counter(format!("c{i}")).unwrap()).sum();
    assert_eq!(total, 8 * 200);
    let dir_path = dir.path().to_path_buf();
    drop(db);
    let db = Db::open(&dir_path).unwrap();
    assert_eq!(db.counter("hits").unwrap(), expected);
}

#[test]
fn delete_resets_a_counter_and_put_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.increment("c", 10).unwrap();
    db.delete("c").unwrap();
    assert_eq!(db.default_keyspace().get_value("c").unwrap(), None);
    assert_eq!(db.increment("c", 2).unwrap().counter, Some(2));
    db.put("c", "text").unwrap();
    assert_eq!(
        db.default_keyspace().get_value("c").unwrap(),
        Some(Value::Bytes(Arc::from(&b"text"[..])))
    );
    assert_eq!(db.increment("c", 1).unwrap().counter, Some(1));
}

#[test]
fn duplicate_is_written_once_and_caught_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let make = || {
        let mut b = Batch::new();
        b.increment("balance", 100)
            .put("last", "deposit-1")
            .idempotency_key("deposit-1");
        b
    };
    let first_seq;
    {
        let db = Db::open(dir.path()).unwrap();
        let first = db.write(make()).unwrap();
        assert_eq!(first[0].kind, OutcomeKind::Applied);
        first_seq = first[0].seq;
        let again = db.write(make()).unwrap();
        assert_eq!(again[0].kind, OutcomeKind::Duplicate);
        assert_eq!(again[0].seq, first_seq);
        assert_eq!(again[0].stamp, first[0].stamp);
        assert_eq!(db.counter("balance").unwrap(), 100);
        assert_eq!(
            db.stats().wal.last_seq,
            first_seq + 1,
            "the duplicate took no sequence numbers"
        );
    }
    let db = Db::open(dir.path()).unwrap();
    let after = db.write(make()).unwrap();
    assert_eq!(after[0].kind, OutcomeKind::Duplicate);
    assert_eq!(after[0].seq, first_seq);
    assert_eq!(db.counter("balance").unwrap(), 100);
    assert_eq!(db.recovery_report().frames_replayed, 1);
    // A different key is a different command.
    let mut other = make();
    other.idempotency_key("deposit-2");
    assert_eq!(db.write(other).unwrap()[0].kind, OutcomeKind::Applied);
    assert_eq!(db.counter("balance").unwrap(), 200);
}

#[test]
fn concurrent_retries_of_one_increment_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut b = Batch::new();
                b.increment("n", 1).idempotency_key("only-once");
                db.write(b).unwrap()[0].kind
            })
        })
        .collect();
    let kinds: Vec<OutcomeKind> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == OutcomeKind::Applied).count(),
        1
    );
    assert_eq!(db.counter("n").unwrap(), 1);
}

#[test]
fn eight_threads_get_unique_sequence_numbers_all_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        (
                            db.put(format!("t{t}-{i}"), format!("{t}:{i}")).unwrap().seq,
                            t,
                            i,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<(u64, i32, i32)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let seqs: HashSet<u64> = all.iter().map(|x| x.0).collect();
    assert_eq!(seqs.len(), 800, "sequence numbers must be unique");
    let last = db.stats().wal.last_seq;
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.recovery_report().ops_replayed, 800);
    for (_, t, i) in &all {
        assert_eq!(
            db.get(format!("t{t}-{i}")).unwrap().as_deref(),
            Some(format!("{t}:{i}").as_bytes())
        );
    }
    let next = db.put("after", "reopen").unwrap().seq;
    assert!(
        next > last,
        "sequence numbers keep increasing across restarts"
    );
}

#[test]
fn rotation_makes_many_segments_all_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let options = opts()
        .with_segment_size_bytes_max(1024)
        .with_sync_mode(SyncMode::Never);
    let mut model = BTreeMap::new();
    {
        let db = Db::open_with(dir.path(), options.clone()).unwrap();
        for i in 0..500 {
            let (k, v) = (format!("key{:03}", i % 170), format!("value-{i}"));
            db.put(&k, &v).unwrap();
            model.insert(k, v);
        }
        assert!(
            db.stats().wal.segments > 20,
            "expected many segments, got {}",
            db.stats().wal.segments
        );
    }
    let db = Db::open_with(dir.path(), options).unwrap();
    assert!(db.recovery_report().segments_replayed > 20);
    for (k, v) in &model {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(v.as_bytes()));
    }
    assert_eq!(db.stats().keys, model.len() as u64);
}

#[test]
fn second_open_of_a_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    match Db::open(dir.path()) {
        Err(Error::Locked { dir: locked }) => assert_eq!(locked, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(db);
    Db::open(dir.path()).expect("the lock is released on drop");
}

#[test]
fn inline_mode_without_workers() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts().with_worker_threads(0)).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    db.put(format!("{t}/{i}"), "v").unwrap();
                    db.increment("n", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(db.counter("n").unwrap(), 200);
    assert_eq!(db.stats().keys, 201);
}

#[test]
fn limits_and_bad_names_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts().with_value_size_bytes_max(10)).unwrap();
    assert!(matches!(
        db.put("k", [0u8; 11]),
        Err(Error::LimitExceeded {
            limit: "value_size_bytes_max",
            ..
        })
    ));
    assert!(matches!(
        db.keyspace("bad name"),
        Err(Error::InvalidKeyspace { .. })
    ));
    assert!(matches!(
        db.keyspace("_auth"),
        Err(Error::InvalidKeyspace { .. })
    ));
    assert!(matches!(
        db.write(Batch::new()),
        Err(Error::InvalidCommand { .. })
    ));
    db.increment("c", i64::MAX).unwrap();
    assert!(matches!(
        db.increment("c", 1),
        Err(Error::CounterOverflow { .. })
    ));
    assert_eq!(
        db.counter("c").unwrap(),
        i64::MAX,
        "a refused increment changes nothing"
    );
    assert_eq!(db.increment("c", -1).unwrap().counter, Some(i64::MAX - 1));
    db.increment("low", i64::MIN + 1).unwrap();
    assert!(matches!(
        db.increment("low", -2),
        Err(Error::CounterOverflow { .. })
    ));
    let absent = dir.path().join("absent");
    let no_create = opts().with_create_if_missing(false);
    assert!(matches!(
        Db::open_with(&absent, no_create),
        Err(Error::NotADatabase { .. })
    ));
    assert!(!absent.exists(), "nothing was created");
}

#[test]
fn read_view_is_a_consistent_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let mut b = Batch::new();
    b.put("from", "100").put("to", "0");
    db.write(b).unwrap();
    let view = db.view();
    let mut transfer = Batch::new();
    transfer.put("from", "50").put("to", "50");
    db.write(transfer).unwrap();
    assert_eq!(view.get("from").unwrap().as_deref(), Some(&b"100"[..]));
    assert_eq!(view.get("to").unwrap().as_deref(), Some(&b"0"[..]));
    assert_eq!(db.get("from").unwrap().as_deref(), Some(&b"50"[..]));
    assert_eq!(
        view.default_keyspace()
            .scan(&ScanOptions::all())
            .map(Result::unwrap)
            .count(),
        2
    );
}

#[test]
fn typed_values_round_trip() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Profile {
        name: String,
        tags: Vec<String>,
    }
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let ks = db.keyspace("profiles").unwrap();
    let p = Profile {
        name: "ada".into(),
        tags: vec!["math".into()],
    };
    ks.put_typed("ada", &p).unwrap();
    assert_eq!(ks.get_typed::<Profile>("ada").unwrap(), Some(p));
    ks.put("junk", [0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(
        ks.get_typed::<Profile>("junk"),
        Err(Error::TypedDecode { value_bytes: 3, .. })
    ));
}

#[test]
fn a_duplicate_increment_does_not_raise_the_base_of_one_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(
        dir.path(),
        opts()
            .with_worker_threads(0)
            // Keeps the next increment in flight while the retry arrives.
            .with_group_commit_delay_us(300_000),
    )
    .unwrap();
    let mut idempotent = Batch::new();
    idempotent.increment("k", 5).idempotency_key("retry-me");
    db.write(idempotent.clone()).unwrap();
    let in_flight = {
        let db = db.clone();
        std::thread::spawn(move || db.increment("k", 1).unwrap())
    };
    // Wait (on a condition, not a clock) until that increment is queued.
    while db.stats().wal.last_seq < 2 {
        std::thread::yield_now();
    }
    assert_eq!(
        db.write(idempotent).unwrap()[0].kind,
        OutcomeKind::Duplicate
    );
    db.increment("k", 1).unwrap();
    in_flight.join().unwrap();
    assert_eq!(
        db.counter("k").unwrap(),
        7,
        "5 + 1 + 1: the duplicate counts nothing"
    );
    drop(db);
    assert_eq!(Db::open(dir.path()).unwrap().counter("k").unwrap(), 7);
}

#[test]
fn idempotency_holds_for_batches_with_old_explicit_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let now = db.put("x", "1").unwrap().stamp.physical_ms;
    let mut batch = Batch::new();
    batch
        .increment("hits", 1)
        .idempotency_key("import-7")
        .with_stamp(Stamp {
            physical_ms: now - 60 * 60 * 1000, // an hour old: older than the window
            logical: 0,
            node: NodeId(42),
        });
    assert_eq!(
        db.write(batch.clone()).unwrap()[0].kind,
        OutcomeKind::Applied
    );
    assert_eq!(
        db.write(batch.clone()).unwrap()[0].kind,
        OutcomeKind::Duplicate
    );
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.write(batch).unwrap()[0].kind, OutcomeKind::Duplicate);
    assert_eq!(db.counter("hits").unwrap(), 1);
}

#[test]
fn limits_the_wal_reader_would_refuse_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let too_big = opts().with_key_size_bytes_max(4 * 1024 * 1024);
    assert!(matches!(
        Db::open_with(dir.path(), too_big),
        Err(Error::LimitExceeded {
            limit: "key_size_bytes_max",
            ..
        })
    ));
    // The largest key the options allow survives a reopen.
    let largest = opts().with_key_size_bytes_max(1024 * 1024 - 65);
    let key = vec![b'k'; largest.key_size_bytes_max];
    {
        let db = Db::open_with(dir.path(), largest.clone()).unwrap();
        db.put(&key, "v").unwrap();
    }
    let db = Db::open_with(dir.path(), largest).unwrap();
    assert_eq!(db.get(&key).unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn inverted_ranges_scan_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.put("m", "1").unwrap();
    assert_eq!(
        db.scan(&ScanOptions::range("z", "a"))
            .map(Result::unwrap)
            .count(),
        0
    );
    assert_eq!(
        db.scan(&ScanOptions::range("z", "a").reversed())
            .map(Result::unwrap)
            .count(),
        0
    );
    let mut prefix_past_end = ScanOptions::prefix("b");
    prefix_past_end.end = Some(b"a".to_vec());
    assert_eq!(db.scan(&prefix_past_end).map(Result::unwrap).count(), 0);
}
