//! Injected I/O failures: every one is fail-stop, and a reopen recovers every
//! acknowledged write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mergekv::{Db, Error, FaultInjector, IoOp, Options, SyncMode};

fn with_faults(faults: &FaultInjector, sync_mode: SyncMode) -> Options {
    Options::default()
        .with_faults(Some(faults.clone()))
        .with_sync_mode(sync_mode)
}

/// Writes `prefix-i` keys until the first error; returns how many were acknowledged.
fn write_until_error(db: &Db, prefix: &str, max: usize) -> (usize, Option<Error>) {
    for i in 0..max {
        if let Err(e) = db.put(format!("{prefix}-{i}"), format!("v{i}")) {
            return (i, Some(e));
        }
    }
    (max, None)
}

/// Every `k-i` acknowledged before the failure is there after a reopen.
fn assert_acknowledged_survive(dir: &std::path::Path, acked: usize) {
    let db = Db::open(dir).unwrap();
    for i in 0..acked {
        assert!(
            db.get(format!("k-{i}")).unwrap().is_some(),
            "acknowledged k-{i} lost"
        );
    }
}

#[test]
fn failing_fsync_poisons_and_reopen_recovers_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let db = Db::open_with(dir.path(), with_faults(&faults, SyncMode::Always)).unwrap();
    let (acked, err) = write_until_error(&db, "before", 20);
    assert_eq!((acked, err.is_none()), (20, true));
    faults.fail_nth(IoOp::Sync, 1);
    let err = db.put("doomed", "x").unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(
        err.to_string().contains("fsync"),
        "the cause names the failed operation: {err}"
    );
    // Poisoned: later writes fail even though the disk "recovered".
    for _ in 0..3 {
        assert!(matches!(db.put("later", "x"), Err(Error::Poisoned { .. })));
        assert!(matches!(db.increment("n", 1), Err(Error::Poisoned { .. })));
    }
    assert!(db.stats().poisoned.is_some());
    // Reads still work.
    assert_eq!(db.get("before-3").unwrap().as_deref(), Some(&b"v3"[..]));
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    for i in 0..20 {
        assert_eq!(
            db.get(format!("before-{i}")).unwrap().as_deref(),
            Some(format!("v{i}").as_bytes())
        );
    }
    assert!(db.get("later").unwrap().is_none());
    db.put("healthy", "again").unwrap();
}

#[test]
fn failing_write_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let db = Db::open_with(dir.path(), with_faults(&faults, SyncMode::Always)).unwrap();
    db.put("a", "1").unwrap();
    faults.fail_nth(IoOp::Write, 1);
    assert!(matches!(db.put("b", "2"), Err(Error::Poisoned { .. })));
    assert!(matches!(db.put("c", "3"), Err(Error::Poisoned { .. })));
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(db.get("c").unwrap().is_none());
}

#[test]
fn failing_segment_creation_during_rotation_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let options = with_faults(&faults, SyncMode::Always).with_segment_size_bytes_max(300);
    let db = Db::open_with(dir.path(), options).unwrap();
    faults.fail_from_nth(IoOp::Open, 1);
    let (acked, err) = write_until_error(&db, "k", 100);
    assert!(
        acked > 0 && acked < 100,
        "rotation must have been attempted (acked {acked})"
    );
    assert!(matches!(err, Some(Error::Poisoned { .. })));
    drop(db);
    assert_acknowledged_survive(dir.path(), acked);
}

#[test]
fn failing_directory_fsync_during_rotation_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let options = with_faults(&faults, SyncMode::Never)
        .with_segment_size_bytes_max(300)
        .with_sync_mode(SyncMode::Never);
    let db = Db::open_with(dir.path(), options).unwrap();
    // With SyncMode::Never the only fsyncs are the ones rotation makes.
    faults.fail_nth(IoOp::Sync, 3);
    let (acked, err) = write_until_error(&db, "k", 200);
    assert!(matches!(err, Some(Error::Poisoned { .. })), "acked {acked}");
    drop(db);
    assert_acknowledged_survive(dir.path(), acked);
}

#[test]
fn interval_flusher_failure_poisons_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let db = Db::open_with(dir.path(), with_faults(&faults, SyncMode::Interval(1))).unwrap();
    faults.fail_from_nth(IoOp::Sync, 1);
    db.put("a", "1").unwrap();
    // The flusher runs every millisecond; wait for it to hit the fault.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while faults.injected() == 0 {
        assert!(std::time::Instant::now() < deadline, "flusher never synced");
        std::thread::yield_now();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match db.put("b", "2") {
            Err(Error::Poisoned { cause }) => {
                assert!(cause.contains("fsync"));
                break;
            }
            Ok(_) => assert!(std::time::Instant::now() < deadline, "never poisoned"),
            Err(other) => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn concurrent_writers_see_fail_stop_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let db = Db::open_with(dir.path(), with_faults(&faults, SyncMode::Always)).unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|t| {
            let db = db.clone();
            let failing = failing.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..400 {
                    match db.put(format!("t{t}-{i}"), "v") {
                        Ok(o) => {
                            acked.push(format!("t{t}-{i}"));
                            assert!(o.seq > 0);
                        }
                        Err(Error::Poisoned { .. }) => {
                            assert!(failing.load(Ordering::SeqCst), "poisoned before any fault");
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                acked
            })
        })
        .collect();
    while db.stats().wal.syncs < 20 {
        std::thread::yield_now();
    }
    failing.store(true, Ordering::SeqCst);
    faults.fail_nth(IoOp::Sync, 1);
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    for key in &acked {
        assert!(db.get(key).unwrap().is_some(), "acknowledged {key} lost");
    }
}

#[test]
fn failing_read_during_open_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        db.put("a", "1").unwrap();
    }
    let faults = FaultInjector::new();
    faults.fail_from_nth(IoOp::Read, 1);
    match Db::open_with(dir.path(), with_faults(&faults, SyncMode::Always)) {
        Err(Error::Io { op: IoOp::Read, .. }) => {}
        other => panic!("expected a read error, got {other:?}"),
    }
    // Nothing was damaged by the failed open.
    assert_eq!(
        Db::open(dir.path()).unwrap().get("a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn after_a_failed_write_interval_mode_still_syncs_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let db = Db::open_with(dir.path(), with_faults(&faults, SyncMode::Interval(60_000))).unwrap();
    for i in 0..10 {
        db.put(format!("k{i}"), "v").unwrap(); // acknowledged, not yet synced
    }
    let syncs_before = faults.count(IoOp::Sync);
    faults.fail_nth(IoOp::Write, 1);
    assert!(matches!(db.put("bad", "v"), Err(Error::Poisoned { .. })));
    assert!(db.close().is_err(), "close reports the poison");
    assert!(
        faults.count(IoOp::Sync) > syncs_before,
        "acknowledged writes were never fsynced"
    );
}

#[test]
fn after_a_failed_fsync_nothing_is_fsynced_again() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let db = Db::open_with(dir.path(), with_faults(&faults, SyncMode::Always)).unwrap();
    db.put("a", "1").unwrap();
    faults.fail_nth(IoOp::Sync, 1);
    assert!(db.put("b", "2").is_err());
    let syncs_after_failure = faults.count(IoOp::Sync);
    assert!(db.close().is_err());
    assert_eq!(
        faults.count(IoOp::Sync),
        syncs_after_failure,
        "a failed fsync must not be retried"
    );
}

/// A failed fsync anywhere in a compaction (the snapshot, its directory,
/// the WAL directory) poisons the database: a later fsync that "succeeds"
/// must never let a compaction delete WAL that a snapshot did not make
/// durable.
#[test]
fn a_failed_fsync_in_a_compaction_poisons() {
    let mut survived = Vec::new();
    let mut failed = 0;
    for nth in 1..12 {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultInjector::new();
        let db = Db::open_with(
            dir.path(),
            Options::default()
                .with_faults(Some(faults.clone()))
                .with_compaction_interval_ms(0)
                .with_compaction_wal_bytes_min(u64::MAX),
        )
        .unwrap();
        db.put("a", "1").unwrap();
        faults.fail_nth(IoOp::Sync, nth);
        let Err(e) = db.compact_now() else { continue };
        failed += 1;
        faults.clear();
        if db.put("b", "2").is_ok() {
            survived.push(format!("sync #{nth}: {e}"));
        }
    }
    assert!(failed > 3, "the plan reached the compaction's fsyncs");
    assert!(
        survived.is_empty(),
        "failed fsyncs that did not poison: {survived:#?}"
    );
}
