//! Bucket sync (feature `object-store`) through the in-memory and
//! local-folder stores: convergence, requests per round, late joins from
//! a snapshot, collection, silence, clones, and bad input and faults.
#![cfg(feature = "object-store")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mergekv::bucket::{Bucket, BucketFaults, BucketOptions, Fault, Op};
use mergekv::error::BucketError;
use mergekv::{Db, Error, ManualClock, Options, ScanOptions, Value};

fn everything(db: &Db) -> BTreeMap<Vec<u8>, Value> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| (e.key().to_vec(), e.into_value()))
        .collect()
}

struct Copy {
    dir: tempfile::TempDir,
    db: Db,
}

fn copy_at(clock: &Arc<ManualClock>) -> Copy {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), options(clock)).unwrap();
    Copy { dir, db }
}

fn options(clock: &Arc<ManualClock>) -> Options {
    Options::default().with_wall_clock(clock.clone())
}

fn file_bucket(dir: &std::path::Path) -> Bucket {
    Bucket::open(&format!("file://{}", dir.display())).unwrap()
}

/// Rounds until a full pass changes nothing anywhere.
fn converge(bucket: &Bucket, dbs: &[&Db]) {
    for _ in 0..4 {
        for db in dbs {
            bucket.sync(db).unwrap();
        }
    }
}

fn assert_converged(dbs: &[&Db]) {
    let first = dbs[0].digest().unwrap();
    for db in &dbs[1..] {
        assert_eq!(db.digest().unwrap().root, first.root);
        assert_eq!(everything(db), everything(dbs[0]));
    }
}

#[test]
fn three_copies_writing_offline_converge_through_a_folder() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let copies: Vec<Copy> = (0..3).map(|_| copy_at(&clock)).collect();
    for (i, c) in copies.iter().enumerate() {
        c.db.put(format!("from-{i}"), format!("hello {i}")).unwrap();
        c.db.put("shared", format!("by {i}")).unwrap();
        c.db.increment("visits", i as i64 + 1).unwrap();
        clock.advance_ms(1);
    }
    copies[0].db.put("doomed", "x").unwrap();
    let dbs: Vec<&Db> = copies.iter().map(|c| &c.db).collect();
    converge(&bucket, &dbs);
    copies[1].db.delete("doomed").unwrap();
    converge(&bucket, &dbs);
    assert_converged(&dbs);
    for c in &copies {
        assert_eq!(c.db.counter("visits").unwrap(), 6);
        assert_eq!(
            c.db.get("shared").unwrap().as_deref(),
            Some(&b"by 2"[..]),
            "newest wins"
        );
        assert_eq!(c.db.get("doomed").unwrap(), None, "the delete travels");
    }
    // Every object in the folder is one the heads name, or a head or claim.
    let names = bucket.list_objects("heads").unwrap();
    assert_eq!(names.len(), 3);
}

#[test]
fn an_idle_round_is_one_listing_and_a_changed_head_is_fetched_alone() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory();
    let copies: Vec<Copy> = (0..5).map(|_| copy_at(&clock)).collect();
    for (i, c) in copies.iter().enumerate() {
        c.db.put(format!("k{i}"), "v").unwrap();
    }
    let dbs: Vec<&Db> = copies.iter().map(|c| &c.db).collect();
    converge(&bucket, &dbs);
    let idle = bucket.sync(&copies[0].db).unwrap();
    assert_eq!(
        (
            idle.requests.list,
            idle.requests.get,
            idle.requests.put,
            idle.requests.delete
        ),
        (1, 0, 0, 0),
        "{idle:?}"
    );
    assert!(!idle.head_written);
    copies[3].db.put("news", "!").unwrap();
    bucket.sync(&copies[3].db).unwrap();
    let one = bucket.sync(&copies[0].db).unwrap();
    // One listing, copy 3's head, its new object; then copy 0's own head
    // (it merged something new: its cursor moved) with one update.
    assert_eq!(one.requests.list, 1, "{one:?}");
    assert_eq!(one.requests.get, 2, "{one:?}");
    assert_eq!(one.pulled.objects, 1);
    assert_eq!(
        copies[0].db.get("news").unwrap().as_deref(),
        Some(&b"!"[..])
    );
}

#[test]
fn a_late_copy_starts_from_a_snapshot_not_the_whole_history() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(BucketOptions {
        snapshot_after_objects: 4,
        ..BucketOptions::default()
    });
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    for round in 0..12 {
        a.db.put(format!("a{round}"), "x").unwrap();
        b.db.increment("n", 1).unwrap();
        bucket.sync(&a.db).unwrap();
        bucket.sync(&b.db).unwrap();
        clock.advance_ms(10);
    }
    let published: u64 = 24;
    let late = copy_at(&clock);
    let report = bucket.sync(&late.db).unwrap();
    assert_eq!(report.snapshots_imported, 1, "{report:?}");
    assert!(
        report.pulled.objects < published / 2,
        "a snapshot and the few objects after it, not all {published}: {report:?}"
    );
    converge(&bucket, &[&a.db, &b.db, &late.db]);
    assert_converged(&[&a.db, &b.db, &late.db]);
    assert_eq!(late.db.counter("n").unwrap(), 12);
}

#[test]
fn objects_every_copy_merged_are_collected_after_the_grace_period() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path()).with_options(BucketOptions {
        grace_ms: 1_000,
        retain_ms: 0,
        snapshot_after_objects: 3,
        ..BucketOptions::default()
    });
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    let count = |node: mergekv::NodeId| {
        bucket
            .list_objects(&format!("nodes/{:016x}/changes", node.0))
            .unwrap()
            .len()
    };
    for i in 0..10 {
        a.db.put(format!("k{i}"), "v").unwrap();
        bucket.sync(&a.db).unwrap();
        bucket.sync(&b.db).unwrap();
        clock.advance_ms(1);
    }
    let before = count(a.db.node_id());
    assert!(before >= 3, "{before}");
    clock.advance_ms(2_000);
    let mut deleted = 0;
    for _ in 0..3 {
        deleted += bucket.sync(&a.db).unwrap().deleted;
        bucket.sync(&b.db).unwrap();
        clock.advance_ms(2_000);
    }
    assert!(deleted > 0);
    assert!(
        count(a.db.node_id()) < before,
        "{} of {before} left",
        count(a.db.node_id())
    );
    // A copy joining now still gets everything (from the snapshot).
    let late = copy_at(&clock);
    converge(&bucket, &[&a.db, &b.db, &late.db]);
    assert_converged(&[&a.db, &b.db, &late.db]);
    assert_eq!(everything(&late.db).len(), 10);
}

#[test]
fn a_copy_silent_past_the_horizon_is_reported_and_must_start_afresh() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(BucketOptions {
        silence_horizon_ms: 10_000,
        heartbeat_ms: 1_000,
        ..BucketOptions::default()
    });
    let (a, b, quiet) = (copy_at(&clock), copy_at(&clock), copy_at(&clock));
    converge(&bucket, &[&a.db, &b.db, &quiet.db]);
    for _ in 0..3 {
        clock.advance_ms(5_000);
        bucket.sync(&a.db).unwrap();
        bucket.sync(&b.db).unwrap();
    }
    let report = bucket.sync(&a.db).unwrap();
    assert_eq!(report.silent, vec![quiet.db.node_id()], "{report:?}");
    quiet.db.put("offline", "write").unwrap();
    match bucket.sync(&quiet.db) {
        Err(Error::Bucket(BucketError::MustBootstrap { node, expelled_by })) => {
            assert_eq!(node, quiet.db.node_id());
            assert!(expelled_by == a.db.node_id() || expelled_by == b.db.node_id());
        }
        other => panic!("expected MustBootstrap, got {other:?}"),
    }
    // A fresh copy of the bucket is welcome.
    let fresh = copy_at(&clock);
    bucket.sync(&fresh.db).unwrap();
}

#[test]
fn a_cloned_directory_syncing_under_the_same_id_is_refused_with_the_way_out() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let a_dir = tempfile::tempdir().unwrap();
    {
        let a = Db::open_with(a_dir.path(), options(&clock)).unwrap();
        a.put("k", "v").unwrap();
        bucket.sync(&a).unwrap();
    }
    // A block-level clone: same node id, same sync state.
    let b_dir = common::copy_db(a_dir.path());
    common::forge_home(b_dir.path());
    let a = Db::open_with(a_dir.path(), options(&clock)).unwrap();
    let b = Db::open_with(b_dir.path(), options(&clock)).unwrap();
    assert_eq!(a.node_id(), b.node_id());
    a.put("from-a", "1").unwrap();
    bucket.sync(&a).unwrap();
    b.increment("c", 3).unwrap();
    let refused = bucket.sync(&b);
    match &refused {
        Err(Error::Bucket(BucketError::CloneDetected { node, .. })) => {
            assert_eq!(*node, a.node_id())
        }
        other => panic!("expected CloneDetected, got {other:?}"),
    }
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("mergekv reidentify")
    );
    // The way out: a fresh identity, then sync as a new copy.
    drop(b);
    let b = Db::open_with(b_dir.path(), options(&clock).with_renew_identity(true)).unwrap();
    assert_ne!(b.node_id(), a.node_id());
    b.increment("c", 4).unwrap();
    converge(&bucket, &[&a, &b]);
    assert_eq!(b.get("from-a").unwrap().as_deref(), Some(&b"1"[..]));
    // What the clone wrote under the shared id before it was caught never
    // reached the bucket (nothing was published past the check); what it
    // writes under its own id does.
    assert_eq!(a.counter("c").unwrap(), 4);
    assert_eq!(b.counter("c").unwrap(), 7, "its own history is kept");
}

#[test]
fn a_tampered_object_is_refused_by_name_and_nothing_of_it_applied() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let (a, b, c) = (copy_at(&clock), copy_at(&clock), copy_at(&clock));
    a.db.put("from-a", "1").unwrap();
    c.db.put("from-c", "1").unwrap();
    bucket.sync(&a.db).unwrap();
    bucket.sync(&c.db).unwrap();
    let dir = store
        .path()
        .join(format!("nodes/{:016x}/changes", a.db.node_id().0));
    let object = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 1;
    std::fs::write(&object, &bytes).unwrap();
    let err = bucket.sync(&b.db).unwrap_err();
    match &err {
        Error::Bucket(BucketError::Tampered { object: name, .. }) => {
            assert!(object.to_string_lossy().ends_with(name.as_str()), "{name}")
        }
        other => panic!("expected Tampered, got {other:?}"),
    }
    assert_eq!(b.db.get("from-a").unwrap(), None, "nothing of it applied");
    assert_eq!(
        b.db.get("from-c").unwrap().as_deref(),
        Some(&b"1"[..]),
        "other copies' objects still merged"
    );
    // A head naming an object that is gone: named, typed.
    std::fs::remove_file(&object).unwrap();
    match bucket.sync(&b.db) {
        Err(Error::Bucket(BucketError::MissingObject { object: name, head })) => {
            assert!(object.to_string_lossy().ends_with(name.as_str()));
            assert!(head.starts_with("heads/"));
        }
        other => panic!("expected MissingObject, got {other:?}"),
    }
}

#[test]
fn a_head_from_a_copy_that_never_claimed_its_id_is_ignored() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    a.db.put("k", "v").unwrap();
    bucket.sync(&a.db).unwrap();
    // Someone drops a's claim: its head (and objects) are no longer taken.
    let claim = store
        .path()
        .join(format!("nodes/{:016x}/claim", a.db.node_id().0));
    std::fs::remove_file(&claim).unwrap();
    let report = bucket.sync(&b.db).unwrap();
    assert_eq!(report.unclaimed, vec![a.db.node_id()]);
    assert_eq!(b.db.get("k").unwrap(), None);
}

/// Fails every `n`th request (as a network error), or times it out.
#[derive(Debug)]
struct EveryNth {
    n: u64,
    fault: Fault,
    seen: AtomicU64,
}

impl BucketFaults for EveryNth {
    fn fault(&self, _op: Op, _name: &str) -> Option<Fault> {
        let i = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        i.is_multiple_of(self.n).then_some(self.fault)
    }
}

#[test]
fn a_store_failing_every_nth_request_or_timing_out_still_converges() {
    for fault in [Fault::Fail, Fault::TimeOut] {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let bucket = Bucket::in_memory().with_faults(Arc::new(EveryNth {
            n: 3,
            fault,
            seen: AtomicU64::new(0),
        }));
        let copies: Vec<Copy> = (0..3).map(|_| copy_at(&clock)).collect();
        for (i, c) in copies.iter().enumerate() {
            for k in 0..20 {
                c.db.put(format!("c{i}-{k}"), "v").unwrap();
            }
            c.db.increment("n", 1).unwrap();
        }
        let dbs: Vec<&Db> = copies.iter().map(|c| &c.db).collect();
        converge(&bucket, &dbs);
        assert_converged(&dbs);
        assert!(
            bucket.requests().retried > 0,
            "{fault:?}: faults were retried"
        );
        assert_eq!(copies[0].db.counter("n").unwrap(), 3);
    }
}

/// Fails every request from the `from`th on, until cleared.
#[derive(Debug)]
struct Outage {
    from: u64,
    seen: AtomicU64,
    over: std::sync::atomic::AtomicBool,
}

impl BucketFaults for Outage {
    fn fault(&self, _op: Op, _name: &str) -> Option<Fault> {
        let i = self.seen.fetch_add(1, Ordering::Relaxed);
        (i >= self.from && !self.over.load(Ordering::Relaxed)).then_some(Fault::Fail)
    }
}

#[test]
fn an_outage_in_the_middle_of_a_round_leaves_nothing_half_applied_and_the_next_round_completes() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    let healthy = Bucket::in_memory();
    for k in 0..50 {
        a.db.put(format!("k{k}"), "v").unwrap();
    }
    // Every possible point of failure in b's first round.
    let mut cut = 0;
    loop {
        let outage = Arc::new(Outage {
            from: cut,
            seen: AtomicU64::new(0),
            over: std::sync::atomic::AtomicBool::new(false),
        });
        let b_copy = copy_at(&clock);
        let bucket = Bucket::in_memory().with_faults(outage.clone());
        bucket.sync(&a.db).unwrap_or_default();
        outage.seen.store(0, Ordering::Relaxed);
        let failed = bucket.sync(&b_copy.db);
        let held = everything(&b_copy.db).len();
        assert!(
            held == 0 || held == 50,
            "cut {cut}: {held} keys: all of a's object or none"
        );
        outage.over.store(true, Ordering::Relaxed);
        bucket.sync(&a.db).unwrap();
        bucket.sync(&b_copy.db).unwrap();
        assert_eq!(
            everything(&b_copy.db).len(),
            50,
            "cut {cut}: the next round completes"
        );
        if failed.is_ok() {
            break;
        }
        match failed {
            Err(Error::Bucket(BucketError::Unreachable { .. })) => {}
            other => panic!("cut {cut}: {other:?}"),
        }
        cut += 1;
        assert!(cut < 100);
    }
    assert!(cut > 2, "the round made several requests ({cut})");
    healthy.sync(&b.db).unwrap();
}

#[derive(Debug)]
struct Refuse;

impl BucketFaults for Refuse {
    fn fault(&self, _op: Op, _name: &str) -> Option<Fault> {
        Some(Fault::Refuse)
    }
}

#[test]
fn refused_credentials_are_a_typed_error() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let a = copy_at(&clock);
    let bucket = Bucket::in_memory().with_faults(Arc::new(Refuse));
    match bucket.sync(&a.db) {
        Err(Error::Bucket(BucketError::Refused { .. })) => {}
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[derive(Debug)]
struct TruncateOnce(std::sync::atomic::AtomicBool);

impl BucketFaults for TruncateOnce {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        (op == Op::Create && name.contains("/changes/") && !self.0.swap(true, Ordering::Relaxed))
            .then_some(Fault::Truncate)
    }
}

#[test]
fn an_upload_cut_short_is_caught_before_any_head_names_it() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path()).with_faults(Arc::new(TruncateOnce(
        std::sync::atomic::AtomicBool::new(false),
    )));
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    for k in 0..100 {
        a.db.put(format!("k{k}"), "some value").unwrap();
    }
    match bucket.sync(&a.db) {
        Err(Error::Bucket(BucketError::Malformed { reason, .. })) => {
            assert!(reason.contains("landed as"), "{reason}")
        }
        other => panic!("expected the cut upload to be caught, got {other:?}"),
    }
    bucket.sync(&a.db).unwrap();
    bucket.sync(&b.db).unwrap();
    assert_eq!(everything(&b.db).len(), 100);
}

#[test]
fn an_encrypted_bucket_holds_nothing_in_clear_and_a_copy_without_the_key_reads_nothing() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let key = mergekv::EncryptionKey::generate().unwrap();
    let keyed = |dir: &std::path::Path| {
        Db::open_with(
            dir,
            options(&clock).with_encryption_key(Some(mergekv::KeySource::Key(key.clone()))),
        )
        .unwrap()
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (keyed(a_dir.path()), keyed(b_dir.path()));
    a.put("secret-key-name", "secret-value-text").unwrap();
    converge(&bucket, &[&a, &b]);
    assert_eq!(
        b.get("secret-key-name").unwrap().as_deref(),
        Some(&b"secret-value-text"[..])
    );
    common::assert_nothing_in_clear(store.path(), &[b"secret-key-name", b"secret-value-text"]);
    let plain = copy_at(&clock);
    let blind = bucket.sync(&plain.db).unwrap();
    assert_eq!(
        blind.unreadable.len(),
        2,
        "both sealed heads skipped: {blind:?}"
    );
    assert_eq!(blind.pulled.objects, 0, "a copy in clear takes nothing");
    assert_eq!(everything(&plain.db).len(), 0);
}

#[test]
fn restore_rebuilds_a_copy_and_restore_at_a_time_stops_there() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path()).with_options(BucketOptions {
        snapshot_after_objects: 2,
        ..BucketOptions::default()
    });
    let a = copy_at(&clock);
    a.db.put("k", "v1").unwrap();
    a.db.put("early", "x").unwrap();
    bucket.backup(&a.db).unwrap();
    let t1 = 1_000_000 + 5;
    clock.advance_ms(10);
    a.db.put("k", "v2").unwrap();
    a.db.put("late", "y").unwrap();
    a.db.delete("early").unwrap();
    bucket.backup(&a.db).unwrap();
    let whole = tempfile::tempdir().unwrap();
    let (restored, report) = bucket
        .restore(&whole.path().join("db"), Options::default(), None)
        .unwrap();
    assert!(report.pulled.objects >= 1);
    assert_eq!(everything(&restored), everything(&a.db));
    let then = tempfile::tempdir().unwrap();
    let (at, _) = bucket
        .restore(&then.path().join("db"), Options::default(), Some(t1))
        .unwrap();
    assert_eq!(at.get("k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(at.get("early").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(at.get("late").unwrap(), None);
    // Into a directory that holds a database: refused.
    assert!(matches!(
        bucket.restore(a.dir.path(), Options::default(), None),
        Err(Error::InvalidCommand { .. })
    ));
}

#[test]
fn bad_urls_are_typed_errors() {
    for url in ["nope", "ftp://x/y", "file://relative/path", "s3:///prefix"] {
        match Bucket::open(url) {
            Err(Error::Bucket(BucketError::Url { .. })) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
}

/// Every create and update lands, but its answer is lost the first time
/// (a timeout after the store acted): the retry finds the name taken or
/// the version moved, by this copy's own write.
#[derive(Debug, Default)]
struct AnswersLost {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl BucketFaults for AnswersLost {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        let first = self.seen.lock().unwrap().insert(format!("{op:?} {name}"));
        (matches!(op, Op::Create | Op::Update) && first).then_some(Fault::LandThenFail)
    }
}

#[test]
fn writes_whose_answer_was_lost_are_recognised_as_this_copys_own() {
    for folder in [false, true] {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = tempfile::tempdir().unwrap();
        let faults = Arc::new(AnswersLost::default());
        let bucket = if folder {
            file_bucket(store.path()).with_faults(faults)
        } else {
            Bucket::in_memory().with_faults(faults)
        };
        let (a, b) = (copy_at(&clock), copy_at(&clock));
        for round in 0..3 {
            a.db.put(format!("a{round}"), "x").unwrap();
            b.db.put(format!("b{round}"), "y").unwrap();
            bucket.sync(&a.db).unwrap();
            bucket.sync(&b.db).unwrap();
        }
        converge(&bucket, &[&a.db, &b.db]);
        assert_converged(&[&a.db, &b.db]);
        assert_eq!(everything(&a.db).len(), 6);
    }
}

/// Fails every head update while `on`.
#[derive(Debug, Default)]
struct HeadWritesFail(std::sync::atomic::AtomicBool);

impl BucketFaults for HeadWritesFail {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        (self.0.load(Ordering::Relaxed) && name.starts_with("heads/") && matches!(op, Op::Update))
            .then_some(Fault::Fail)
    }
}

#[test]
fn an_object_uploaded_in_a_round_whose_head_write_failed_leaves_no_gap() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let faults = Arc::new(HeadWritesFail::default());
    let bucket = Bucket::in_memory().with_faults(faults.clone());
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    a.db.put("first", "1").unwrap();
    converge(&bucket, &[&a.db, &b.db]);
    a.db.put("second", "2").unwrap();
    faults.0.store(true, Ordering::Relaxed);
    assert!(matches!(
        bucket.sync(&a.db),
        Err(Error::Bucket(BucketError::Unreachable { .. }))
    ));
    faults.0.store(false, Ordering::Relaxed);
    a.db.put("third", "3").unwrap();
    bucket.sync(&a.db).unwrap();
    bucket.sync(&b.db).unwrap();
    assert_eq!(b.db.get("second").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(b.db.get("third").unwrap().as_deref(), Some(&b"3"[..]));
}

#[test]
fn a_head_the_store_lost_is_written_again() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    a.db.put("k", "v").unwrap();
    bucket.sync(&a.db).unwrap();
    std::fs::remove_file(
        store
            .path()
            .join(format!("heads/{:016x}", a.db.node_id().0)),
    )
    .unwrap();
    let again = bucket.sync(&a.db).unwrap();
    assert!(again.head_written);
    bucket.sync(&b.db).unwrap();
    assert_eq!(b.db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn an_emptied_bucket_is_filled_again_from_the_copies() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    a.db.put("k", "v").unwrap();
    file_bucket(store.path()).sync(&a.db).unwrap();
    std::fs::remove_dir_all(store.path()).unwrap();
    let bucket = file_bucket(store.path());
    bucket.sync(&a.db).unwrap();
    bucket.sync(&b.db).unwrap();
    assert_eq!(b.db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn an_upload_no_head_names_is_swept_later() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let faults = Arc::new(HeadWritesFail::default());
    let bucket = file_bucket(store.path())
        .with_options(BucketOptions {
            grace_ms: 1_000,
            ..BucketOptions::default()
        })
        .with_faults(faults.clone());
    let a = copy_at(&clock);
    a.db.put("first", "1").unwrap();
    bucket.sync(&a.db).unwrap();
    a.db.put("second", "2").unwrap();
    faults.0.store(true, Ordering::Relaxed);
    assert!(bucket.sync(&a.db).is_err());
    faults.0.store(false, Ordering::Relaxed);
    let changes = format!("nodes/{:016x}/changes", a.db.node_id().0);
    assert_eq!(bucket.list_objects(&changes).unwrap().len(), 2, "an orphan");
    clock.advance_ms(2_000);
    a.db.put("third", "3").unwrap();
    let swept = bucket.sync(&a.db).unwrap();
    assert_eq!(swept.deleted, 1, "{swept:?}");
    assert_eq!(
        bucket.list_objects(&changes).unwrap().len(),
        2,
        "the first and the new one"
    );
    let b = copy_at(&clock);
    bucket.sync(&b.db).unwrap();
    assert_eq!(everything(&b.db).len(), 3);
}

// ---- Regressions from the review of issue 15 ----

#[test]
fn a_silent_copys_changes_still_reach_a_copy_that_joins_later() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(BucketOptions {
        silence_horizon_ms: 10_000,
        heartbeat_ms: 1_000,
        ..BucketOptions::default()
    });
    let (a, z) = (copy_at(&clock), copy_at(&clock));
    z.db.put("from-z", "1").unwrap();
    converge(&bucket, &[&a.db, &z.db]);
    for _ in 0..4 {
        clock.advance_ms(5_000);
        bucket.sync(&a.db).unwrap();
    }
    let late = copy_at(&clock);
    for _ in 0..3 {
        bucket.sync(&late.db).unwrap();
        bucket.sync(&a.db).unwrap();
    }
    assert_eq!(late.db.get("from-z").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(late.db.digest().unwrap().root, a.db.digest().unwrap().root);
}

#[test]
fn a_first_round_with_writes_older_than_forgotten_deletes_is_refused() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory();
    let grace = |dir: &std::path::Path| {
        Db::open_with(dir, options(&clock).with_tombstone_grace_ms(1_000)).unwrap()
    };
    let (a_dir, j_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, j) = (grace(a_dir.path()), grace(j_dir.path()));
    j.put("k", "old offline write").unwrap();
    clock.advance_ms(10);
    a.put("k", "x").unwrap();
    a.delete("k").unwrap();
    bucket.sync(&a).unwrap();
    clock.advance_ms(5_000);
    a.compact_now().unwrap();
    bucket.sync(&a).unwrap();
    match bucket.sync(&j) {
        Err(Error::Bucket(BucketError::StaleJoin { node, .. })) => assert_eq!(node, j.node_id()),
        other => panic!("expected StaleJoin, got {other:?}"),
    }
    bucket.sync(&a).unwrap();
    assert_eq!(a.get("k").unwrap(), None, "the delete stays");
}

#[test]
fn a_moved_directory_publishes_what_it_wrote_under_its_former_id() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let a_dir = tempfile::tempdir().unwrap();
    let b = copy_at(&clock);
    {
        let a = Db::open_with(a_dir.path(), options(&clock)).unwrap();
        a.put("k", "v").unwrap();
        bucket.sync(&a).unwrap();
        a.put("offline", "1").unwrap();
        a.increment("n", 5).unwrap();
    }
    // Moved to another disk: a new inode, so a new node id at open.
    let moved = common::copy_db(a_dir.path());
    drop(a_dir);
    let a = Db::open_with(moved.path(), options(&clock)).unwrap();
    assert!(a.identity_renewed().is_some());
    converge(&bucket, &[&a, &b.db]);
    assert_eq!(b.db.get("offline").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(b.db.counter("n").unwrap(), 5);
    assert_eq!(a.digest().unwrap().root, b.db.digest().unwrap().root);
}

#[test]
fn a_head_that_cannot_be_read_is_skipped_and_reported() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    a.db.put("k", "v").unwrap();
    bucket.sync(&a.db).unwrap();
    std::fs::write(store.path().join("heads/00000000000000ff"), b"garbage").unwrap();
    let report = bucket.sync(&b.db).unwrap();
    assert_eq!(report.unreadable.len(), 1, "{report:?}");
    assert_eq!(b.db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_claim_that_went_away_is_made_again() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path()).with_options(BucketOptions {
        grace_ms: 1_000,
        ..BucketOptions::default()
    });
    let (a, b) = (copy_at(&clock), copy_at(&clock));
    a.db.put("k1", "v").unwrap();
    bucket.sync(&a.db).unwrap();
    let claim = store
        .path()
        .join(format!("nodes/{:016x}/claim", a.db.node_id().0));
    std::fs::remove_file(&claim).unwrap();
    clock.advance_ms(2_000);
    a.db.put("k2", "v").unwrap();
    bucket.sync(&a.db).unwrap();
    assert!(claim.exists());
    let fresh_reader = file_bucket(store.path());
    fresh_reader.sync(&b.db).unwrap();
    assert_eq!(b.db.get("k2").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn one_bucket_spelled_two_ways_or_opened_twice_is_one_bucket() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let a = copy_at(&clock);
    a.db.put("k", "v").unwrap();
    let plain = format!("file://{}", store.path().display());
    Bucket::open(&plain).unwrap().sync(&a.db).unwrap();
    a.db.put("k2", "v").unwrap();
    Bucket::open(&format!("{plain}/"))
        .unwrap()
        .sync(&a.db)
        .unwrap();
    // Two values for one bucket, rounds at once on two threads.
    let (one, two) = (Bucket::open(&plain).unwrap(), Bucket::open(&plain).unwrap());
    std::thread::scope(|s| {
        for bucket in [&one, &two] {
            let db = &a.db;
            s.spawn(move || {
                for i in 0..10 {
                    db.put(format!("t{i}"), "x").unwrap();
                    bucket.sync(db).unwrap();
                }
            });
        }
    });
}

#[test]
fn restore_at_a_time_inside_the_retention_finds_what_it_needs() {
    let clock = Arc::new(ManualClock::new(10_000_000));
    let store = tempfile::tempdir().unwrap();
    let minute = 60_000;
    let bucket = file_bucket(store.path()).with_options(BucketOptions {
        retain_ms: 60 * minute,
        grace_ms: minute,
        snapshot_after_objects: 2,
        ..BucketOptions::default()
    });
    let a = copy_at(&clock);
    let mut times = Vec::new();
    for (i, at) in [0, 10, 20, 120].into_iter().enumerate() {
        clock.set_ms(10_000_000 + at * minute);
        a.db.put("k", format!("v{i}")).unwrap();
        bucket.backup(&a.db).unwrap();
        times.push(10_000_000 + at * minute + 1);
    }
    // 30 minutes ago: after the write at minute 20 (inside the retention).
    let then = tempfile::tempdir().unwrap();
    let (db, _) = bucket
        .restore(&then.path().join("db"), Options::default(), Some(times[2]))
        .unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v2"[..]));
}

#[derive(Debug)]
struct FailGets;

impl BucketFaults for FailGets {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        (op == Op::Get && name.contains("/changes/")).then_some(Fault::Refuse)
    }
}

#[test]
fn a_restore_that_fails_leaves_no_database_behind() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let a = copy_at(&clock);
    a.db.put("k", "v").unwrap();
    file_bucket(store.path()).backup(&a.db).unwrap();
    a.db.put("k2", "v").unwrap();
    file_bucket(store.path()).backup(&a.db).unwrap();
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("db");
    let failing = file_bucket(store.path()).with_faults(Arc::new(FailGets));
    assert!(failing.restore(&dir, Options::default(), None).is_err());
    assert!(!dir.exists(), "nothing left at {}", dir.display());
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    let (db, _) = file_bucket(store.path())
        .restore(&dir, Options::default(), None)
        .unwrap();
    assert_eq!(db.get("k2").unwrap().as_deref(), Some(&b"v"[..]));
}
