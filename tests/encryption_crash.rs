//! A key rotation cut by a power loss at every crash point (before every
//! fsync, in every way the simulated disk can lose what was not synced),
//! and failed at every I/O operation: the database always opens with the
//! new key and the old one, holds every write, and once the rewrite has
//! finished needs only the new key.

use std::collections::BTreeMap;

use mergekv::io::SimDisk;
use mergekv::{
    Db, EncryptionKey, Error, FaultInjector, IoOp, KeyError, KeySource, Options, ScanOptions,
    SyncMode, Value,
};

const DB_DIR: &str = "/data/db";

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

fn options(faults: FaultInjector, current: u8, old: &[u8]) -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Always)
        .with_worker_threads(0)
        .with_segment_size_bytes_max(2048)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
        .with_faults(Some(faults))
        .with_encryption_key(Some(KeySource::Key(key(current))))
        .with_encryption_keys_old(old.iter().map(|b| KeySource::Key(key(*b))).collect())
}

fn contents(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| {
            let k = e.key().to_vec();
            match e.into_value() {
                Value::Bytes(b) => (k, b.to_vec()),
                Value::Counter(c) => (k, c.to_le_bytes().to_vec()),
            }
        })
        .collect()
}

/// A database under key 1 with runs, kept WAL segments (a cursor holds
/// them) and an active segment: every kind of file a rotation rewrites.
fn prepare(faults: &FaultInjector) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = Db::open_with(DB_DIR, options(faults.clone(), 1, &[])).unwrap();
    db.set_cursor("reader", 1).unwrap();
    for i in 0..40 {
        db.put(format!("run-{i:03}"), vec![b'r'; 64]).unwrap();
    }
    db.compact_now().unwrap();
    for i in 0..40 {
        db.put(format!("wal-{i:03}"), vec![b'w'; 64]).unwrap();
    }
    let expected = contents(&db);
    db.close().unwrap();
    expected
}

fn rotate(faults: &FaultInjector) -> mergekv::Result<()> {
    let db = Db::open_with(DB_DIR, options(faults.clone(), 1, &[]))?;
    db.rotate_encryption_key(key(2))?;
    let report = db.complete_key_rotation()?;
    assert_eq!(report.files_left, 0, "{report:?}");
    db.close()
}

/// Opens the survivor with keys 2 and 1: every write is there; the
/// rotation is finished (by that open, if needed); then key 2 alone opens.
fn check_survivor(disk: &SimDisk, expected: &BTreeMap<Vec<u8>, Vec<u8>>, context: &str) {
    let faults = FaultInjector::with_disk(disk.clone());
    let db = Db::open_with(DB_DIR, options(faults.clone(), 2, &[1]))
        .unwrap_or_else(|e| panic!("{context}: open with the new and the old key: {e}"));
    assert_eq!(&contents(&db), expected, "{context}");
    let report = db
        .complete_key_rotation()
        .unwrap_or_else(|e| panic!("{context}: finishing the rotation: {e}"));
    assert_eq!(report.files_left, 0, "{context}: {report:?}");
    db.close().unwrap();
    let db = Db::open_with(DB_DIR, options(faults.clone(), 2, &[]))
        .unwrap_or_else(|e| panic!("{context}: open with the new key alone: {e}"));
    assert_eq!(&contents(&db), expected, "{context}");
    db.close().unwrap();
    assert!(
        matches!(
            Db::open_with(DB_DIR, options(faults, 1, &[])),
            Err(Error::Key(KeyError::Missing { .. }))
        ),
        "{context}: the old key alone no longer opens"
    );
}

#[test]
fn a_power_loss_at_every_crash_point_of_a_rotation_leaves_a_database_the_new_key_opens() {
    let disk = SimDisk::new();
    let faults = FaultInjector::with_disk(disk.clone());
    let expected = prepare(&faults);
    disk.record_crash_points(true);
    rotate(&faults).unwrap();
    let mut points = disk.take_crash_points();
    points.push(disk.crash_point_now("after the rotation"));
    disk.record_crash_points(false);
    let mut states = 0;
    for point in &points {
        for cut in point.cuts(7, 2) {
            let survivor = point.survivor(&cut);
            let context = format!(
                "crash point {} ({}), cut {cut}",
                point.index(),
                point.label()
            );
            check_survivor(&survivor, &expected, &context);
            states += 1;
        }
    }
    assert!(points.len() > 10, "only {} crash points", points.len());
    println!(
        "{} crash points, {states} power-loss states checked",
        points.len()
    );
}

#[test]
fn a_rotation_failing_at_every_io_operation_leaves_a_database_the_new_key_opens() {
    let mut failures = 0;
    for op in [
        IoOp::Write,
        IoOp::Sync,
        IoOp::Rename,
        IoOp::Open,
        IoOp::Remove,
    ] {
        for nth in 1.. {
            let disk = SimDisk::new();
            let faults = FaultInjector::with_disk(disk.clone());
            let expected = prepare(&faults);
            let before = faults.count(op);
            faults.fail_nth(op, before + nth);
            let result = rotate(&faults);
            faults.clear();
            if result.is_ok() && faults.injected() == 0 {
                break; // past the rotation's last operation of this kind
            }
            failures += 1;
            check_survivor(
                &disk,
                &expected,
                &format!("{op:?} #{nth} failed: {result:?}"),
            );
        }
    }
    assert!(failures > 10, "only {failures} failure points");
    println!("{failures} failed operations checked");
}
