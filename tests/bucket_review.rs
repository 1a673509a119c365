//! Found by the fresh-eyes review of issue 15 (bucket sync): each test
//! failed on the code it reviewed and states what must hold instead.
#![cfg(feature = "object-store")]

use std::sync::{Arc, Mutex};

use mergekv::bucket::head::head_name;
use mergekv::bucket::{Bucket, BucketFaults, BucketOptions, Fault, Op};
use mergekv::error::BucketError;
use mergekv::{Db, Error, ManualClock, NodeId, Options, SyncMode};

const GRACE_MS: u64 = 1_000;
const HORIZON_MS: u64 = 100_000;

fn opts(clock: &Arc<ManualClock>) -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_worker_threads(0)
        .with_memtable_bytes_max(2 * 1024)
        .with_compactor_tick_ms(1)
        .with_tombstone_grace_ms(GRACE_MS)
        .with_wall_clock(clock.clone())
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Db {
    Db::open_with(dir, opts(clock)).unwrap()
}

fn converge(bucket: &Bucket, dbs: &[&Db]) {
    for _ in 0..4 {
        for db in dbs {
            bucket.sync(db).unwrap();
        }
    }
}

fn collecting() -> BucketOptions {
    BucketOptions {
        grace_ms: GRACE_MS / 2,
        retain_ms: 0,
        snapshot_after_objects: 2,
        ..BucketOptions::default()
    }
}

fn silence_options() -> BucketOptions {
    BucketOptions {
        silence_horizon_ms: HORIZON_MS,
        heartbeat_ms: 1_000,
        grace_ms: GRACE_MS / 2,
        retain_ms: 0,
        snapshot_after_objects: 3,
        ..BucketOptions::default()
    }
}

/// Faults switched on and off by the test.
#[derive(Debug, Default)]
struct Plan {
    fail_head: Mutex<Option<String>>,
    cut_head: Mutex<Option<String>>,
    fail_objects_of: Mutex<Option<NodeId>>,
    refuse_deletes: Mutex<bool>,
}

impl BucketFaults for Plan {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        if op == Op::Delete && *self.refuse_deletes.lock().unwrap() {
            return Some(Fault::Refuse);
        }
        if op == Op::Update && self.fail_head.lock().unwrap().as_deref() == Some(name) {
            return Some(Fault::Fail);
        }
        if op == Op::Update {
            let mut cut = self.cut_head.lock().unwrap();
            if cut.as_deref() == Some(name) {
                *cut = None;
                return Some(Fault::Truncate);
            }
        }
        if op == Op::Get
            && let Some(n) = *self.fail_objects_of.lock().unwrap()
            && name.starts_with(&format!("nodes/{:016x}/", n.0))
            && !name.ends_with("/claim")
        {
            return Some(Fault::Fail);
        }
        None
    }
}

/// A store that refuses deletes (write-once buckets, common for backups)
/// must not stop a copy from writing its head: the sweep's refused delete
/// is reported and tried again, as the collection's is.
#[test]
fn a_refused_delete_in_the_sweep_does_not_stop_the_head() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let plan = Arc::new(Plan::default());
    let bucket = Bucket::in_memory()
        .with_options(collecting())
        .with_faults(plan.clone());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    *plan.refuse_deletes.lock().unwrap() = true;
    converge(&bucket, &[&a, &b]);
    *plan.fail_head.lock().unwrap() = Some(head_name(a.node_id()));
    a.put("x", "1").unwrap();
    assert!(
        bucket.sync(&a).is_err(),
        "the head write fails: an orphan upload"
    );
    *plan.fail_head.lock().unwrap() = None;
    clock.advance_ms(GRACE_MS);
    let mut errors = Vec::new();
    let mut refused = 0;
    for i in 0..3 {
        a.put(format!("y{i}"), "1").unwrap();
        match bucket.sync(&a) {
            Ok(r) => refused += r.delete_failed,
            Err(e) => errors.push(e.to_string()),
        }
        clock.advance_ms(GRACE_MS);
    }
    bucket.sync(&b).unwrap();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(refused > 0, "the orphan's refused delete is reported");
    assert!(b.get("x").unwrap().is_some());
}

/// A copy restored from the bucket and synced only after a delete it never
/// saw was collected must not keep the deleted key quietly: it either
/// converges or is told its history is gone.
#[test]
fn a_restored_copy_synced_after_the_tombstone_grace_never_keeps_a_deleted_key_quietly() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(collecting());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    a.put("doomed", "x").unwrap();
    converge(&bucket, &[&a, &b]);
    let (r, _) = bucket
        .restore(&dirs[2].path().join("r"), opts(&clock), None)
        .unwrap();
    assert!(r.get("doomed").unwrap().is_some());
    b.delete("doomed").unwrap();
    let mut dropped = 0;
    for i in 0..8 {
        a.put(format!("n{i}"), "y").unwrap();
        b.put(format!("m{i}"), "y").unwrap();
        bucket.sync(&a).unwrap();
        bucket.sync(&b).unwrap();
        clock.advance_ms(2 * GRACE_MS);
        dropped += a.compact_now().unwrap().tombstones_dropped;
        dropped += b.compact_now().unwrap().tombstones_dropped;
    }
    assert!(dropped > 0, "the delete's tombstone was collected");
    let first = bucket.sync(&r);
    match &first {
        Err(Error::Bucket(BucketError::HistoryGone { .. })) => {}
        Ok(_) => {
            converge(&bucket, &[&a, &b, &r]);
            assert_eq!(r.get("doomed").unwrap(), None);
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    for _ in 0..2 {
        for db in [&a, &b] {
            bucket.sync(db).unwrap();
        }
    }
    assert_eq!(a.get("doomed").unwrap(), None, "{first:?}");
    assert_eq!(b.get("doomed").unwrap(), None, "{first:?}");
}

/// Every copy quiet past the horizon; the first back fails to pull once,
/// then runs a second round: it must not expel the others after being
/// back for a few seconds, and no published write may be lost.
#[test]
fn after_a_quiet_spell_a_failed_pull_then_a_second_round_loses_nothing() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let plan = Arc::new(Plan::default());
    let bucket = Bucket::in_memory()
        .with_options(silence_options())
        .with_faults(plan.clone());
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, q) = (
        open(dirs[0].path(), &clock),
        open(dirs[1].path(), &clock),
        open(dirs[2].path(), &clock),
    );
    converge(&bucket, &[&a, &b, &q]);
    a.put("x", "from a").unwrap();
    bucket.sync(&a).unwrap();
    bucket.sync(&b).unwrap();
    clock.advance_ms(HORIZON_MS + 10);
    *plan.fail_objects_of.lock().unwrap() = Some(a.node_id());
    assert!(bucket.sync(&q).is_err());
    *plan.fail_objects_of.lock().unwrap() = None;
    clock.advance_ms(30_000);
    let second = bucket.sync(&q).unwrap();
    assert!(second.silent.is_empty(), "{second:?}");
    bucket.sync(&a).unwrap();
    let fresh = open(dirs[3].path(), &clock);
    converge(&bucket, &[&q, &fresh, &a, &b]);
    for db in [&a, &b, &q, &fresh] {
        assert_eq!(db.get("x").unwrap().as_deref(), Some(&b"from a"[..]));
    }
}

/// A copy whose head could not be read for a while (cut by the store) is
/// still waited for: the others retire nothing it has not merged, and it
/// goes on syncing once its head reads again.
#[test]
fn a_copy_whose_head_was_cut_is_still_waited_for() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let plan = Arc::new(Plan::default());
    let bucket = Bucket::in_memory()
        .with_options(collecting())
        .with_faults(plan.clone());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    a.put("a1", "1").unwrap();
    b.put("b-first", "1").unwrap();
    converge(&bucket, &[&a, &b]);
    *plan.cut_head.lock().unwrap() = Some(head_name(a.node_id()));
    a.put("a2", "1").unwrap();
    bucket.sync(&a).unwrap();
    let mut unreadable = 0;
    for i in 0..8 {
        b.put(format!("b{i}"), "1").unwrap();
        unreadable += bucket.sync(&b).unwrap().unreadable.len();
        clock.advance_ms(GRACE_MS);
    }
    assert!(unreadable > 0, "b saw a's cut head");
    // a's head is rewritten (heartbeat or news) and b reads it again.
    a.put("a3", "1").unwrap();
    bucket.sync(&a).unwrap();
    converge(&bucket, &[&a, &b]);
    assert!(a.get("b7").unwrap().is_some());
    assert!(b.get("a3").unwrap().is_some());
}

/// Backing up a copy into the bucket it syncs through is refused (as a
/// backup it would stop pulling while the others collect what it has not
/// merged); its syncing goes on unharmed.
#[test]
fn a_backup_into_the_bucket_a_copy_syncs_through_is_refused() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(collecting());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    b.put("b-first", "1").unwrap();
    converge(&bucket, &[&a, &b]);
    a.put("from-a", "1").unwrap();
    match bucket.backup(&a) {
        Err(Error::Bucket(BucketError::BackupOfSyncingCopy { node })) => {
            assert_eq!(node, a.node_id());
        }
        other => panic!("expected BackupOfSyncingCopy, got {other:?}"),
    }
    for i in 0..8 {
        b.put(format!("b{i}"), "1").unwrap();
        bucket.sync(&b).unwrap();
        bucket.sync(&a).unwrap();
        clock.advance_ms(GRACE_MS);
    }
    assert!(b.get("from-a").unwrap().is_some());
    assert!(a.get("b7").unwrap().is_some());
}

/// A copy that only backed up into a bucket and then syncs through it
/// joins as a new copy would (its writes checked against what the others
/// may have forgotten), and its writes reach them.
#[test]
fn a_backup_copy_that_starts_syncing_joins_like_a_new_copy() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(collecting());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, k) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    a.put("a", "1").unwrap();
    bucket.sync(&a).unwrap();
    k.put("k", "1").unwrap();
    bucket.backup(&k).unwrap();
    bucket.sync(&a).unwrap();
    assert_eq!(a.get("k").unwrap(), None, "backups are not pulled");
    converge(&bucket, &[&k, &a]);
    assert!(a.get("k").unwrap().is_some());
    assert!(k.get("a").unwrap().is_some());
}

/// A restore from a bucket where a backup of another database sits beside
/// syncing copies that collected their objects starts from a snapshot
/// that covers them, not from the backup's.
#[test]
fn restore_from_a_bucket_with_a_backup_beside_syncing_copies() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(collecting());
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, k) = (
        open(dirs[0].path(), &clock),
        open(dirs[1].path(), &clock),
        open(dirs[2].path(), &clock),
    );
    let mut deleted = 0;
    for i in 0..8 {
        a.put(format!("a{i}"), "1").unwrap();
        b.put(format!("b{i}"), "1").unwrap();
        deleted += bucket.sync(&a).unwrap().deleted;
        deleted += bucket.sync(&b).unwrap().deleted;
        clock.advance_ms(GRACE_MS);
    }
    assert!(deleted > 0);
    k.put("k", "1").unwrap();
    assert!(bucket.backup(&k).unwrap().snapshot_published.is_some());
    let (r, _) = bucket
        .restore(&dirs[3].path().join("r"), opts(&clock), None)
        .unwrap();
    for key in ["a0", "a7", "b0", "b7", "k"] {
        assert!(r.get(key).unwrap().is_some(), "{key}");
    }
}

/// One folder spelled with `.` or reached through a symbolic link is one
/// bucket: the copy finds its own sync state, not a clone.
#[test]
fn one_folder_through_a_symlink_or_a_dot_is_one_bucket() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let real = store.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = store.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), &clock);
    a.put("k", "v").unwrap();
    Bucket::open(&format!("file://{}", real.display()))
        .unwrap()
        .sync(&a)
        .unwrap();
    Bucket::open(&format!("file://{}/./", real.display()))
        .unwrap()
        .sync(&a)
        .unwrap();
    Bucket::open(&format!("file://{}", link.display()))
        .unwrap()
        .sync(&a)
        .unwrap();
}

/// Idle rounds of a copy that found another silent write nothing locally
/// (its HLC does not move), as idle rounds without one do.
#[test]
fn idle_rounds_with_a_silent_copy_write_nothing_locally() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(silence_options());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, q) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    converge(&bucket, &[&a, &q]);
    // a stays (a round every tenth of the horizon); q is gone.
    for _ in 0..11 {
        clock.advance_ms(HORIZON_MS / 10);
        bucket.sync(&a).unwrap();
    }
    let report = bucket.sync(&a).unwrap();
    assert_eq!(report.silent, vec![q.node_id()], "{report:?}");
    let before = a.stats().hlc;
    for _ in 0..3 {
        assert_eq!(bucket.sync(&a).unwrap().silent.len(), 1);
    }
    assert_eq!(a.stats().hlc, before);
}
