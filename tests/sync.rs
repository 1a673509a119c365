//! Change sets between copies: export, import, convergence basics.

mod common;

use mergekv::{Db, Error, Options, ScanOptions, SyncCursor, SyncMode};

use common::{Copy, copy, copy_with, sync};

fn everything(db: &Db) -> Vec<(Vec<u8>, mergekv::Value)> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| (e.key().to_vec(), e.into_value()))
        .collect()
}

#[test]
fn the_higher_stamp_wins_in_both_directions() {
    let (a, b) = (copy(1_000), copy(1_000));
    a.db.put("k", "from a").unwrap();
    b.clock.advance_ms(10);
    b.db.put("k", "from b").unwrap(); // later physical time
    sync(&a.db, &b.db);
    sync(&b.db, &a.db);
    assert_eq!(a.db.get("k").unwrap().as_deref(), Some(&b"from b"[..]));
    assert_eq!(everything(&a.db), everything(&b.db));
}

#[test]
fn equal_physical_time_is_decided_by_logical_counter_then_node_the_same_way() {
    let (a, b) = (copy(5_000), copy(5_000));
    a.db.put("x", "a0").unwrap();
    a.db.put("k", "a").unwrap(); // logical 1 on a
    b.db.put("k", "b").unwrap(); // logical 0 on b: a wins
    b.db.put("t", "b").unwrap(); // logical 1 on b
    a.db.put("t", "a").unwrap(); // logical 2 on a: a wins
    b.db.put("u", "b").unwrap(); // logical 2 on b
    a.db.put("u", "a").unwrap(); // logical 3 on a: a wins
    sync(&a.db, &b.db);
    sync(&b.db, &a.db);
    assert_eq!(everything(&a.db), everything(&b.db));
    assert_eq!(a.db.get("k").unwrap().as_deref(), Some(&b"a"[..]));
    // Same physical and logical time: the node id decides, identically.
    let (c, d) = (copy(9_000), copy(9_000));
    c.db.put("n", "c").unwrap();
    d.db.put("n", "d").unwrap();
    sync(&c.db, &d.db);
    sync(&d.db, &c.db);
    let winner = if c.db.node_id() > d.db.node_id() {
        "c"
    } else {
        "d"
    };
    assert_eq!(c.db.get("n").unwrap().as_deref(), Some(winner.as_bytes()));
    assert_eq!(everything(&c.db), everything(&d.db));
}

#[test]
fn a_delete_travels_and_a_later_put_brings_the_key_back_on_both() {
    let (a, b) = (copy(1_000), copy(1_000));
    a.db.put("k", "v").unwrap();
    sync(&a.db, &b.db);
    a.clock.advance_ms(5);
    a.db.delete("k").unwrap();
    sync(&a.db, &b.db);
    assert_eq!(b.db.get("k").unwrap(), None);
    b.clock.advance_ms(10);
    b.db.put("k", "again").unwrap();
    sync(&b.db, &a.db);
    assert_eq!(a.db.get("k").unwrap().as_deref(), Some(&b"again"[..]));
    assert_eq!(everything(&a.db), everything(&b.db));
}

#[test]
fn counters_on_three_copies_merged_in_every_order_agree() {
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let copies = [copy(1_000), copy(1_000), copy(1_000)];
        for (i, c) in copies.iter().enumerate() {
            for _ in 0..=i {
                c.db.increment("hits", 10).unwrap();
            }
            c.db.increment("hits", -1).unwrap();
        }
        for &from in &order {
            for &to in &order {
                if from != to {
                    sync(&copies[from].db, &copies[to].db);
                }
            }
        }
        for &from in &order {
            for to in 0..3 {
                if from != to {
                    sync(&copies[from].db, &copies[to].db);
                }
            }
        }
        for c in &copies {
            assert_eq!(c.db.counter("hits").unwrap(), 60 - 3, "order {order:?}");
        }
    }
}

#[test]
fn importing_the_same_change_set_twice_changes_nothing() {
    let (a, b) = (copy(1_000), copy(1_000));
    for i in 0..25 {
        a.db.put(format!("k{i}"), "v").unwrap();
    }
    a.db.increment("n", 3).unwrap();
    let (bytes, cursor) = a.db.export_since(&SyncCursor::new()).unwrap();
    let first = b.db.import(&bytes).unwrap();
    assert_eq!((first.applied, first.duplicates), (26, 0));
    let last_seq = b.db.stats().wal.last_seq;
    let again = b.db.import(&bytes).unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 26));
    assert_eq!(b.db.stats().wal.last_seq, last_seq, "nothing was written");
    assert_eq!(b.db.counter("n").unwrap(), 3);
    // Nothing new since the cursor: an empty change set.
    let (empty, _) = a.db.export_since(&cursor).unwrap();
    assert_eq!(
        b.db.import(&empty).unwrap(),
        mergekv::ImportReport::default()
    );
}

#[test]
fn damaged_or_drifting_change_sets_apply_nothing() {
    let (a, b) = (copy(1_000), copy(1_000));
    for i in 0..5 {
        a.db.put(format!("k{i}"), "v").unwrap();
    }
    let (bytes, _) = a.db.export_since(&SyncCursor::new()).unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(b.db.import(&bad), Err(Error::Decode { .. })),
            "flip at {i}"
        );
    }
    for len in [0, 10, bytes.len() - 1] {
        assert!(matches!(
            b.db.import(&bytes[..len]),
            Err(Error::Decode { .. })
        ));
    }
    assert_eq!(everything(&b.db), vec![]);
    // a's clock an hour ahead of b's: refused by the drift bound.
    a.clock.advance_ms(3_600_000);
    a.db.put("future", "v").unwrap();
    let (ahead, _) = a.db.export_since(&SyncCursor::new()).unwrap();
    match b.db.import(&ahead) {
        Err(Error::ClockDrift { peer, .. }) => assert_eq!(peer, a.db.node_id()),
        other => panic!("expected drift, got {other:?}"),
    }
    assert_eq!(everything(&b.db), vec![]);
}

#[test]
fn imported_data_is_readable_after_reopen() {
    let a = copy(1_000);
    for k in ["apple", "apricot", "banana", "cherry"] {
        a.db.put(k, k).unwrap();
    }
    let users = a.db.keyspace("users").unwrap();
    users.put("ada", "x").unwrap();
    let (bytes, _) = a.db.export_since(&SyncCursor::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Db::open(dir.path()).unwrap();
        b.import(&bytes).unwrap();
    }
    let b = Db::open(dir.path()).unwrap();
    assert_eq!(b.get("banana").unwrap().as_deref(), Some(&b"banana"[..]));
    let prefix: Vec<_> = b
        .scan(&ScanOptions::prefix("ap"))
        .map(Result::unwrap)
        .map(|e| e.key().to_vec())
        .collect();
    assert_eq!(prefix, vec![b"apple".to_vec(), b"apricot".to_vec()]);
    assert_eq!(
        b.scan(&ScanOptions::range("b", "d"))
            .map(Result::unwrap)
            .count(),
        2
    );
    assert_eq!(
        b.keyspace("users").unwrap().get("ada").unwrap().as_deref(),
        Some(&b"x"[..])
    );
}

#[test]
fn an_interrupted_sync_resumes_after_a_restart_without_resending() {
    let a = copy(1_000);
    let b_dir = tempfile::tempdir().unwrap();
    let b_options = || Options::default().with_sync_mode(SyncMode::Always);
    for i in 0..30 {
        a.db.put(format!("first-{i:02}"), "1").unwrap();
    }
    let (first, _) = a.db.export_for("b").unwrap();
    {
        let b = Db::open_with(b_dir.path(), b_options()).unwrap();
        assert_eq!(b.import_from("a", &first).unwrap().applied, 30);
        // b tells a what it has.
        let (reply, _) = b.export_for("a").unwrap();
        a.db.import_from("b", &reply).unwrap();
    }
    for i in 0..20 {
        a.db.put(format!("second-{i:02}"), "2").unwrap();
    }
    let (second, _) = a.db.export_for("b").unwrap();
    let second_records = mergekv::sync::changeset::decode(&second)
        .unwrap()
        .records
        .len();
    assert_eq!(second_records, 20, "only what b lacks is sent");
    // b restarts before importing the second change set.
    let b = Db::open_with(b_dir.path(), b_options()).unwrap();
    assert!(
        !b.peer_cursor("a").unwrap().seen.is_empty(),
        "the peer cursor survived the restart"
    );
    let again = b.import_from("a", &first).unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 30));
    assert_eq!(b.import_from("a", &second).unwrap().applied, 20);
    assert_eq!(b.scan(&ScanOptions::all()).map(Result::unwrap).count(), 50);
}

#[test]
fn an_import_lands_whole_or_not_at_all_and_a_retry_completes_it() {
    use mergekv::{FaultInjector, IoOp};
    let a = copy(1_000);
    let mut batch = mergekv::Batch::new();
    for i in 0..25_000 {
        batch.put(format!("k{i:05}"), "v");
    }
    a.db.write(batch).unwrap();
    let (bytes, _) = a.db.export_since(&SyncCursor::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    {
        let b = Db::open_with(
            dir.path(),
            Options::default().with_faults(Some(faults.clone())),
        )
        .unwrap();
        faults.fail_nth(IoOp::Sync, 1);
        assert!(b.import(&bytes).is_err());
    }
    let b = Db::open(dir.path()).unwrap();
    let present = b.scan(&ScanOptions::all()).map(Result::unwrap).count();
    assert!(
        present == 0 || present == 25_000,
        "never part of it ({present})"
    );
    let resumed = b.import(&bytes).unwrap();
    assert_eq!(resumed.applied + resumed.duplicates, 25_000);
    assert_eq!(
        b.scan(&ScanOptions::all()).map(Result::unwrap).count(),
        25_000
    );
    assert_eq!(b.digest().unwrap().root, a.db.digest().unwrap().root);
}

#[test]
fn digests_are_equal_exactly_when_states_are_and_name_the_ranges_that_differ() {
    let (a, b) = (copy(1_000), copy(1_000));
    for i in 0..200 {
        a.db.put(format!("k{i:03}"), "same").unwrap();
    }
    sync(&a.db, &b.db);
    assert_eq!(a.db.digest().unwrap().root, b.db.digest().unwrap().root);
    assert!(
        a.db.digest()
            .unwrap()
            .differing_buckets(&b.db.digest().unwrap())
            .is_empty()
    );
    // One changed value and one new key on a.
    a.clock.advance_ms(1);
    a.db.put("k007", "changed").unwrap();
    a.db.put("new", "key").unwrap();
    let (da, db) = (a.db.digest().unwrap(), b.db.digest().unwrap());
    assert_ne!(da.root, db.root);
    let differ = da.differing_buckets(&db);
    assert!(!differ.is_empty() && differ.len() <= 2, "{differ:?}");
    // Sending only those ranges is enough to converge.
    let (bytes, _) = a.db.export_buckets(&SyncCursor::new(), &differ).unwrap();
    let sent = mergekv::sync::changeset::decode(&bytes)
        .unwrap()
        .records
        .len();
    assert!(
        sent < 20,
        "only the differing ranges were sent ({sent} records)"
    );
    b.db.import(&bytes).unwrap();
    assert_eq!(a.db.digest().unwrap().root, b.db.digest().unwrap().root);
    // A tombstone is state too.
    a.clock.advance_ms(1);
    a.db.delete("new").unwrap();
    assert_ne!(a.db.digest().unwrap().root, b.db.digest().unwrap().root);
}

#[test]
fn sealed_segments_are_exchanged_by_content_hash() {
    let dir = tempfile::tempdir().unwrap();
    let a = Db::open_with(
        dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_segment_size_bytes_max(2048),
    )
    .unwrap();
    for i in 0..100 {
        a.put(format!("k{i:03}"), "some value").unwrap();
    }
    let manifest = a.segment_manifest().unwrap();
    assert!(manifest.len() > 3, "rotation sealed several segments");
    let b_dir = tempfile::tempdir().unwrap();
    let b_db = Db::open(b_dir.path()).unwrap(); // a real clock, like a's
    let missing = b_db.missing_segments(&manifest).unwrap();
    assert_eq!(missing, manifest, "b has none of them");
    // A wrong hash applies nothing.
    let first = a.segment_bytes(&manifest[0].hash).unwrap().unwrap();
    assert_eq!(
        b_db.import_segment(&first, &manifest[1].hash).unwrap(),
        mergekv::SegmentImport::HashMismatch
    );
    assert_eq!(
        b_db.scan(&ScanOptions::all()).map(Result::unwrap).count(),
        0
    );
    let mut written = 0;
    for entry in &missing {
        let bytes = a.segment_bytes(&entry.hash).unwrap().unwrap();
        match b_db.import_segment(&bytes, &entry.hash).unwrap() {
            mergekv::SegmentImport::Applied { keys_written, .. } => written += keys_written,
            other => panic!("expected applied, got {other:?}"),
        }
        assert_eq!(
            b_db.import_segment(&bytes, &entry.hash).unwrap(),
            mergekv::SegmentImport::Skipped
        );
    }
    assert!(written > 0);
    assert!(b_db.missing_segments(&manifest).unwrap().is_empty());
    // Every key in a sealed segment is now on b with a's value.
    assert_eq!(
        b_db.get("k000").unwrap().as_deref(),
        Some(&b"some value"[..])
    );
    assert_eq!(
        b_db.scan(&ScanOptions::all()).map(Result::unwrap).count() as u64,
        written
    );
}

fn small_segments(start_ms: u64) -> Copy {
    copy_with(start_ms, 2048)
}

/// Full exchanges both ways, twice.
fn exchange(a: &Db, b: &Db) {
    for _ in 0..2 {
        let (x, _) = b.export_for("a").unwrap();
        a.import_from("b", &x).unwrap();
        let (y, _) = a.export_for("b").unwrap();
        b.import_from("a", &y).unwrap();
    }
}

#[test]
fn a_partial_transfer_never_makes_a_copy_claim_what_it_lacks() {
    // A bucket export first: b gets "new" but not "old".
    let (a, b) = (copy(1_000), copy(1_000));
    let empty = a.db.digest().unwrap();
    a.db.put("old", "1").unwrap();
    let with_old = a.db.digest().unwrap();
    let old_bucket = with_old.differing_buckets(&empty);
    a.clock.advance_ms(5);
    a.db.put("new", "2").unwrap();
    let new_bucket = a.db.digest().unwrap().differing_buckets(&with_old);
    assert_ne!(
        old_bucket, new_bucket,
        "the two keys sit in different ranges"
    );
    let (bytes, _) =
        a.db.export_buckets(&SyncCursor::new(), &new_bucket)
            .unwrap();
    b.db.import_from("a", &bytes).unwrap();
    exchange(&a.db, &b.db);
    assert_eq!(b.db.get("old").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(a.db.digest().unwrap().root, b.db.digest().unwrap().root);
    // Only the newest sealed segment first.
    let (a, b) = (small_segments(1_000), small_segments(1_000));
    for i in 0..100 {
        a.db.put(format!("k{i:03}"), "some value").unwrap();
    }
    let last = a.db.segment_manifest().unwrap().pop().unwrap();
    let bytes = a.db.segment_bytes(&last.hash).unwrap().unwrap();
    b.db.import_segment(&bytes, &last.hash).unwrap();
    exchange(&a.db, &b.db);
    assert_eq!(a.db.digest().unwrap().root, b.db.digest().unwrap().root);
    assert_eq!(
        b.db.scan(&ScanOptions::all()).map(Result::unwrap).count(),
        100
    );
}

/// Compaction may remove a sealed segment between the listing and the
/// read: it is no longer offered, and neither call fails.
#[test]
fn a_segment_removed_after_the_listing_is_no_longer_offered() {
    let a = small_segments(1_000);
    for i in 0..100 {
        a.db.put(format!("k{i:03}"), "some value").unwrap();
    }
    let before = a.db.segment_manifest().unwrap();
    assert!(before.len() > 2, "rotation sealed several segments");
    let files = common::segments(a.dir());
    let oldest = std::fs::read(&files[0]).unwrap();
    let oldest_hash = *blake3::hash(&oldest).as_bytes();
    assert_eq!(
        before[0].hash, oldest_hash,
        "the oldest segment is listed first"
    );
    std::fs::remove_file(&files[0]).unwrap();
    let after = a.db.segment_manifest().unwrap();
    assert_eq!(
        after,
        before[1..],
        "the removed segment is no longer offered"
    );
    assert_eq!(a.db.segment_bytes(&oldest_hash).unwrap(), None);
    assert!(a.db.segment_bytes(&before[1].hash).unwrap().is_some());
}

#[test]
fn another_copys_bookkeeping_is_never_imported() {
    let (a, b, c) = (small_segments(1_000), small_segments(1_000), copy(1_000));
    c.db.put("x", "1").unwrap();
    let (bytes, _) = c.db.export_for("a").unwrap();
    a.db.import_from("phone", &bytes).unwrap();
    for i in 0..100 {
        a.db.put(format!("k{i:03}"), "some value").unwrap();
    }
    for entry in
        b.db.missing_segments(&a.db.segment_manifest().unwrap())
            .unwrap()
    {
        let segment = a.db.segment_bytes(&entry.hash).unwrap().unwrap();
        b.db.import_segment(&segment, &entry.hash).unwrap();
    }
    assert!(
        b.db.peer_cursor("phone").unwrap().seen.is_empty(),
        "a's cursor for its phone stayed on a"
    );
}

#[test]
fn a_refused_change_set_does_not_move_the_clock() {
    let (a, b) = (copy(1_000), copy(1_000));
    a.db.put("early", "v").unwrap();
    a.clock.advance_ms(3_600_000);
    a.db.put("late", "v").unwrap();
    let (bytes, _) = a.db.export_since(&SyncCursor::new()).unwrap();
    let before = b.db.stats().hlc;
    assert!(matches!(b.db.import(&bytes), Err(Error::ClockDrift { .. })));
    assert_eq!(b.db.stats().hlc, before);
}

/// Exports everything `from` has and imports it into `to`.
fn send(from: &Db, to: &Db) -> mergekv::Result<mergekv::ImportReport> {
    let (bytes, _) = from.export_since(&SyncCursor::new()).unwrap();
    to.import(&bytes)
}

/// A copied directory (or a restored backup beside its original) is
/// given a node id of its own, so both copies' increments count.
#[test]
fn a_copied_directory_gets_its_own_identity_and_no_increment_is_lost() {
    let a_dir = tempfile::tempdir().unwrap();
    let original = Db::open(a_dir.path()).unwrap();
    original.put("k", "v").unwrap();
    let node = original.node_id();
    drop(original);
    let b_dir = common::copy_db(a_dir.path());
    let a = Db::open(a_dir.path()).unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    assert_eq!(a.node_id(), node, "the original keeps its id");
    assert_eq!(a.identity_renewed(), None);
    assert_ne!(b.node_id(), node, "the copy gets its own");
    assert_eq!(
        b.identity_renewed(),
        Some((node, mergekv::Renewal::CopiedDirectory))
    );
    a.increment("c", 5).unwrap();
    b.increment("c", 3).unwrap();
    send(&a, &b).unwrap();
    send(&b, &a).unwrap();
    assert_eq!(a.counter("c").unwrap(), 8);
    assert_eq!(b.counter("c").unwrap(), 8);
    assert_eq!(
        b.get("k").unwrap().as_deref(),
        Some(&b"v"[..]),
        "its history is kept"
    );
    drop(b);
    let b = Db::open(b_dir.path()).unwrap();
    assert_eq!(b.identity_renewed(), None, "renewed once, then stable");
    assert_eq!(b.counter("c").unwrap(), 8);
}

/// A copy the open could not tell: its changes carry stamps and counter
/// totals under this copy's id that this copy never made, and are
/// refused with a typed error instead of silently losing increments.
#[test]
fn changes_made_under_this_copys_id_elsewhere_are_refused() {
    let a_dir = tempfile::tempdir().unwrap();
    drop(Db::open(a_dir.path()).unwrap());
    let b_dir = common::copy_db(a_dir.path());
    common::forge_home(b_dir.path());
    let a = Db::open(a_dir.path()).unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    assert_eq!(a.node_id(), b.node_id(), "a clone the open cannot tell");
    a.increment("c", 5).unwrap();
    b.increment("c", 3).unwrap();
    let refused = send(&a, &b);
    assert!(
        matches!(refused, Err(mergekv::Error::IdentityConflict { .. })),
        "{refused:?}"
    );
    assert_eq!(b.counter("c").unwrap(), 3, "nothing applied");
    let b_renewed = {
        drop(b);
        Db::open_with(b_dir.path(), Options::default().with_renew_identity(true)).unwrap()
    };
    assert_eq!(
        b_renewed.identity_renewed().map(|r| r.1),
        Some(mergekv::Renewal::Requested)
    );
    assert_ne!(b_renewed.node_id(), a.node_id());
    assert_eq!(b_renewed.counter("c").unwrap(), 3, "its history is kept");
}

/// A register stamp under this copy's id, newer than anything its clock
/// has issued, was written by another copy.
#[test]
fn a_register_stamp_this_copy_never_issued_is_refused() {
    let a_dir = tempfile::tempdir().unwrap();
    drop(Db::open(a_dir.path()).unwrap());
    let b_dir = common::copy_db(a_dir.path());
    common::forge_home(b_dir.path());
    let clock = std::sync::Arc::new(mergekv::ManualClock::new(1_000_000));
    let at = |clock: &std::sync::Arc<mergekv::ManualClock>| {
        Options::default().with_wall_clock(clock.clone())
    };
    let a = Db::open_with(a_dir.path(), at(&clock)).unwrap();
    let b = Db::open_with(b_dir.path(), at(&clock)).unwrap();
    b.put("k", "from b").unwrap();
    clock.advance_ms(10);
    a.put("k", "from a").unwrap();
    let refused = send(&a, &b);
    assert!(
        matches!(refused, Err(mergekv::Error::IdentityConflict { .. })),
        "{refused:?}"
    );
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"from b"[..]));
}

/// A repair that drops writes this copy made (which peers already hold)
/// gives the copy a new id: the peers' copies of the dropped writes come
/// back, and increments made after the repair count.
#[test]
fn a_lossy_repair_gives_a_new_identity_and_peers_restore_what_it_dropped() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    let old_node = {
        let a = Db::open(a_dir.path()).unwrap();
        for _ in 0..10 {
            a.increment("c", 1).unwrap();
        }
        send(&a, &b).unwrap();
        a.node_id()
    };
    assert_eq!(b.counter("c").unwrap(), 10);
    // Damage the 6th frame: repair cuts it and everything after.
    let seg = common::segments(a_dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len() as usize;
    common::flip_byte(&seg, len - 5 * (len - 32) / 10 + 10);
    let repair = Options::default().with_recovery_mode(mergekv::RecoveryMode::Repair);
    let a = Db::open_with(a_dir.path(), repair).unwrap();
    assert!(a.recovery_report().repair.is_some());
    assert!(
        a.counter("c").unwrap() < 10,
        "the repair dropped increments"
    );
    assert_eq!(
        a.identity_renewed(),
        Some((old_node, mergekv::Renewal::Repaired))
    );
    send(&b, &a).expect("the dropped increments come back from the peer");
    assert_eq!(a.counter("c").unwrap(), 10);
    a.increment("c", 3).unwrap();
    send(&a, &b).unwrap();
    assert_eq!(
        b.counter("c").unwrap(),
        13,
        "increments after the repair count"
    );
}

/// Renewing again and again never makes a directory unopenable: the
/// META is written only after recovery read every file, and every former
/// id a file still carries is kept.
#[test]
fn many_renewals_keep_every_file_readable() {
    let dir = tempfile::tempdir().unwrap();
    let renew = Options::default().with_renew_identity(true);
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..20 {
        let db = Db::open_with(dir.path(), renew.clone()).unwrap();
        db.put(format!("k{i}"), "v").unwrap();
        ids.insert(db.node_id());
    }
    assert_eq!(ids.len(), 20);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.scan(&ScanOptions::all()).map(Result::unwrap).count(), 20);
    db.compact_now().unwrap();
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.scan(&ScanOptions::all()).map(Result::unwrap).count(), 20);
}

/// A copy's claim about its own writes survives a restart. Receiving a
/// stamp moves the clock (the receive rule adds one each time), even when
/// every change was already held and nothing is written; a claim of that
/// high-water mark, then a reopen, made the clock issue again a stamp a
/// peer already counted as held, and that write was never sent (found by
/// `attack_sync_gc`, seed 1796297272681426919).
#[test]
fn a_write_after_a_restart_is_sent_to_a_peer_that_heard_from_us_before() {
    let clock = std::sync::Arc::new(mergekv::ManualClock::new(50_000));
    let options = || Options::default().with_wall_clock(clock.clone());
    let (a_dir, b_dir, c_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let b = Db::open_with(b_dir.path(), options()).unwrap();
    let c = Db::open_with(c_dir.path(), options()).unwrap();
    for i in 0..5 {
        b.put(format!("b{i}"), "x").unwrap();
    }
    {
        let a = Db::open_with(a_dir.path(), options()).unwrap();
        a.put("a0", "x").unwrap();
        let (from_b, _) = b.export_for("a").unwrap();
        a.import_from("b", &from_b).unwrap();
        let (to_c, _) = a.export_for("c").unwrap();
        c.import_from("a", &to_c).unwrap();
        let (reply, _) = c.export_for("a").unwrap();
        a.import_from("c", &reply).unwrap();
        // The same change set again: all duplicates, nothing written, but
        // the clock moved once per stamp received.
        let high_water = a.stats().hlc;
        let again = a.import_from("b", &from_b).unwrap();
        assert_eq!((again.applied, again.duplicates), (0, 5));
        assert_ne!(a.stats().hlc, high_water, "the clock moved");
        // a tells c what it holds, its own writes included.
        let (to_c, _) = a.export_for("c").unwrap();
        c.import_from("a", &to_c).unwrap();
        a.close().unwrap();
    }
    let a = Db::open_with(a_dir.path(), options()).unwrap();
    // The same millisecond: only the logical counter orders the stamps.
    let late = a.put("late", "after the restart").unwrap();
    // c tells a what it holds (its claim about a's writes included), then a
    // sends what c lacks.
    let (reply, _) = c.export_for("a").unwrap();
    a.import_from("c", &reply).unwrap();
    let (to_c, _) = a.export_for("c").unwrap();
    c.import_from("a", &to_c).unwrap();
    assert_eq!(
        c.get("late").unwrap().as_deref(),
        Some(&b"after the restart"[..]),
        "the write stamped {:?} reached c",
        late.stamp
    );
}

/// Exports taken while another thread writes claim only writes they
/// carry: a cursor that claimed a write still on its way to the map (or
/// read after the map was viewed) made later exports skip it for good.
#[test]
fn exports_racing_writers_never_claim_a_write_they_do_not_carry() {
    const WRITES: usize = 3_000;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = || {
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_worker_threads(2)
    };
    let a = std::sync::Arc::new(Db::open_with(a_dir.path(), options()).unwrap());
    let b = Db::open_with(b_dir.path(), options()).unwrap();
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..WRITES / 2 {
                    a.put(format!("w{t}-{i:05}"), "v").unwrap();
                }
            })
        })
        .collect();
    let mut rounds = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        let (to_b, _) = a.export_for("b").unwrap();
        b.import_from("a", &to_b).unwrap();
        let (reply, _) = b.export_for("a").unwrap();
        a.import_from("b", &reply).unwrap();
        rounds += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    let (to_b, _) = a.export_for("b").unwrap();
    b.import_from("a", &to_b).unwrap();
    let held = b.scan(&ScanOptions::all()).map(Result::unwrap).count();
    assert_eq!(
        held, WRITES,
        "after {rounds} racing rounds, b holds every write"
    );
}
