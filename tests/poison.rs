//! A panic anywhere on a commit path poisons the database: the caller gets
//! `Error::Poisoned`, later writes too, and nothing waits forever (a
//! compaction waiting for the applied watermark to pass the batch that
//! will never be applied returns, poisoned). The panic is injected between
//! the WAL append and the state map update, where a batch holds a sequence
//! number that will never be applied.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use mergekv::replication::{Follower, FollowerOptions, ReplicationOptions, ReplicationServer};
use mergekv::{Db, Error, FaultInjector, Options};

/// Long enough for any honest wait on this machine; a hang fails instead.
const HANG: Duration = Duration::from_secs(60);

fn open_with_faults(dir: &std::path::Path, worker_threads: usize) -> (Db, FaultInjector) {
    let faults = FaultInjector::new();
    let options = Options::default()
        .with_faults(Some(faults.clone()))
        .with_worker_threads(worker_threads);
    (Db::open_with(dir, options).unwrap(), faults)
}

/// Runs `f` on another thread and fails the test if it does not return.
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .expect("the call hung after a commit panicked")
}

fn assert_poisoned<T: std::fmt::Debug>(result: mergekv::Result<T>) {
    match result {
        Err(Error::Poisoned { cause }) => assert!(cause.contains("panic"), "cause: {cause}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

/// After the panic: writes refuse, and a compaction (which waits for the
/// applied watermark to pass the never-applied batch) returns, poisoned.
fn assert_fail_stop(db: &Db) {
    assert_poisoned(db.put("after", "x"));
    let db = db.clone();
    assert_poisoned(within_deadline(move || db.compact_now()));
}

#[test]
fn a_panic_in_an_inline_write_poisons_and_nothing_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let (db, faults) = open_with_faults(dir.path(), 0);
    db.put("before", "1").unwrap();
    faults.panic_nth_commit(1);
    assert_poisoned(db.put("k", "v"));
    assert_fail_stop(&db);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.get("before").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn a_panic_in_a_pooled_write_poisons_every_waiting_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (db, faults) = open_with_faults(dir.path(), 2);
    faults.panic_nth_commit(1);
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || db.put(format!("k{i}"), "v"))
        })
        .collect();
    let results: Vec<_> = writers
        .into_iter()
        .map(|w| within_deadline(move || w.join().unwrap()))
        .collect();
    // Writers that committed before the panic succeed; every other one is
    // told the database is poisoned; none hangs and none gets another error.
    let poisoned = |r: &mergekv::Result<_>| matches!(r, Err(Error::Poisoned { .. }));
    assert!(results.iter().any(poisoned), "{results:?}");
    assert!(
        results.iter().all(|r| r.is_ok() || poisoned(r)),
        "{results:?}"
    );
    assert_fail_stop(&db);
}

#[test]
fn a_panic_in_an_import_poisons_and_nothing_hangs() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Db::open(a_dir.path()).unwrap();
    a.put("x", "1").unwrap();
    let (changes, _) = a.export_since(&Default::default()).unwrap();
    let (b, faults) = open_with_faults(b_dir.path(), 0);
    faults.panic_nth_commit(1);
    assert_poisoned(b.import(&changes));
    assert_fail_stop(&b);
}

#[test]
fn a_panic_in_a_segment_import_poisons_and_nothing_hangs() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = Options::default().with_segment_size_bytes_max(2048);
    let a = Db::open_with(a_dir.path(), options).unwrap();
    for i in 0..50 {
        a.put(format!("k{i:03}"), "some value").unwrap();
    }
    let entry = a.segment_manifest().unwrap().remove(0);
    let bytes = a.segment_bytes(&entry.hash).unwrap().unwrap();
    let (b, faults) = open_with_faults(b_dir.path(), 0);
    faults.panic_nth_commit(1);
    assert_poisoned(b.import_segment(&bytes, &entry.hash));
    assert_fail_stop(&b);
}

#[test]
fn a_panic_applying_a_replicated_batch_poisons_the_follower_and_stops_it() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = Db::open(leader_dir.path()).unwrap();
    let (auth, token) = common::replication_auth(&leader);
    let server =
        ReplicationServer::start(&leader, "127.0.0.1:0", ReplicationOptions::new(auth)).unwrap();
    leader.put("x", "1").unwrap();
    let faults = FaultInjector::new();
    faults.panic_nth_commit(1);
    let mut options = FollowerOptions::new(server.local_addr().to_string(), token.clone());
    options.db_options.faults = Some(faults);
    let dir = tempfile::tempdir().unwrap();
    let follower = Follower::open(dir.path(), options).unwrap();
    let poisoned = follower.wait_until(HANG, |status| {
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("panic"))
    });
    assert!(poisoned, "status: {:?}", follower.status());
    assert!(follower.db().stats().poisoned.is_some());
    let db = follower.db().clone();
    assert_poisoned(within_deadline(move || db.compact_now()));
    within_deadline(move || follower.stop());
}
