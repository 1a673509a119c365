//! The compactor: checkpoints (runs and the manifest), reopen equivalence,
//! crashes at every step, damaged runs and manifests, bounded disk,
//! tombstone GC; and the snapshots of a directory of the format before runs
//! (loading, fallback, salvage), built with `common::make_legacy`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{
    Rng, copy_db, flip_byte, make_legacy, rebase, runs, segments, shipped_snapshot, snapshots,
    truncate,
};
use mergekv::{
    Batch, Db, Error, FaultInjector, IoOp, ManualClock, Options, OutcomeKind, ScanOptions,
    SyncMode, Value,
};

/// Options with no background compaction, small segments, fast writes.
fn quiet() -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_segment_size_bytes_max(4096)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
}

fn contents(db: &Db) -> BTreeMap<String, Value> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| (String::from_utf8(e.key().to_vec()).unwrap(), e.into_value()))
        .collect()
}

/// Random puts, deletes and increments over 200 keys; returns what the
/// database should read as.
fn random_writes(db: &Db, rng: &mut Rng, ops: usize) -> BTreeMap<String, Value> {
    for _ in 0..ops {
        let key = format!("k{:03}", rng.below(200));
        match rng.below(10) {
            0..=5 => drop(db.put(&key, format!("v{}", rng.next_u64())).unwrap()),
            6..=7 => drop(db.delete(&key).unwrap()),
            _ => drop(db.increment(&key, rng.below(7) as i64 - 3).unwrap()),
        }
    }
    contents(db)
}

#[test]
fn checkpoint_then_reopen_replays_only_segments_after_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let options = quiet();
    let (mut rng, seed) = Rng::from_time();
    let (expected, covered, after_ops) = {
        let db = Db::open_with(dir.path(), options.clone()).unwrap();
        // Keeps the WAL the runs cover (well within the retention limit):
        // its segments are on disk at the reopen, and skipped.
        db.set_cursor("reader", 0).unwrap();
        random_writes(&db, &mut rng, 400);
        db.compact_now().unwrap();
        random_writes(&db, &mut rng, 400);
        let report = db.compact_now().unwrap();
        assert_eq!(report.snapshots_removed, 0);
        let before = db.stats().wal.last_seq;
        let expected = random_writes(&db, &mut rng, 300);
        (
            expected,
            report.snapshot_seq,
            db.stats().wal.last_seq - before,
        )
    };
    let on_disk = segments(dir.path());
    let db = Db::open_with(dir.path(), options).unwrap();
    let report = db.recovery_report();
    assert_eq!(
        report.runs.as_ref().unwrap().covered_seq,
        covered,
        "seed {seed}"
    );
    assert!(report.snapshot.is_none(), "no snapshot is read");
    assert!(
        report.segments_skipped > 0,
        "the segments the runs cover are not read"
    );
    assert_eq!(
        report.segments_replayed + report.segments_skipped,
        on_disk.len()
    );
    assert_eq!(
        report.ops_replayed, after_ops,
        "only operations after the runs are replayed"
    );
    assert_eq!(contents(&db), expected, "seed {seed}");
}

#[test]
fn reopen_after_compaction_gives_exactly_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rng, seed) = Rng::from_time();
    let (expected, tombstones) = {
        let db = Db::open_with(dir.path(), quiet()).unwrap();
        let expected = random_writes(&db, &mut rng, 2000);
        let mut retry = Batch::new();
        retry.increment("paid", 10).idempotency_key("invoice-1");
        db.write(retry.clone()).unwrap();
        let tombstones = db.stats().tombstones;
        assert!(tombstones > 0);
        let report = db.compact_now().unwrap();
        assert!(report.segments_removed > 0);
        assert_eq!(
            report.tombstones_dropped, 0,
            "tombstones are inside their grace period"
        );
        assert_eq!(contents(&db).len(), expected.len() + 1);
        (expected, tombstones)
    };
    let db = Db::open_with(dir.path(), quiet()).unwrap();
    let mut got = contents(&db);
    assert_eq!(got.remove("paid"), Some(Value::Counter(10)));
    assert_eq!(got, expected, "seed {seed}");
    assert_eq!(
        db.stats().tombstones,
        tombstones,
        "tombstones survive compaction"
    );
    // The dedup window travelled in the manifest: a retry is still caught.
    let mut retry = Batch::new();
    retry.increment("paid", 10).idempotency_key("invoice-1");
    assert_eq!(db.write(retry).unwrap()[0].kind, OutcomeKind::Duplicate);
    assert_eq!(db.counter("paid").unwrap(), 10);
}

#[test]
fn a_failure_at_every_step_of_a_compaction_recovers_a_correct_state() {
    for op in [
        IoOp::Open,
        IoOp::Write,
        IoOp::Sync,
        IoOp::Rename,
        IoOp::Remove,
        IoOp::Read,
    ] {
        for nth in 1.. {
            let dir = tempfile::tempdir().unwrap();
            let faults = FaultInjector::new();
            let options = quiet().with_faults(Some(faults.clone()));
            let mut rng = Rng::new(nth + 1);
            let expected = {
                let db = Db::open_with(dir.path(), options).unwrap();
                random_writes(&db, &mut rng, 300);
                db.compact_now().unwrap(); // an older run to merge and delete
                let expected = random_writes(&db, &mut rng, 300);
                faults.fail_nth(op, nth);
                let result = db.compact_now();
                if faults.injected() == 0 {
                    result.unwrap();
                    break; // this step count got past every operation of this kind
                }
                expected
            };
            let db = Db::open_with(dir.path(), quiet())
                .unwrap_or_else(|e| panic!("{op:?} #{nth}: reopen failed: {e}"));
            assert_eq!(contents(&db), expected, "{op:?} #{nth}");
            db.compact_now()
                .unwrap_or_else(|e| panic!("{op:?} #{nth}: next compaction: {e}"));
            drop(db);
            let db = Db::open_with(dir.path(), quiet()).unwrap();
            assert_eq!(
                contents(&db),
                expected,
                "{op:?} #{nth} after a second compaction"
            );
        }
    }
}

/// A small database compacted twice (small, so that flipping every byte of
/// its run stays quick): one run, and the manifest naming it.
fn compacted_db(dir: &Path, options: &Options) -> BTreeMap<String, Value> {
    let db = Db::open_with(dir, options.clone()).unwrap();
    let mut rng = Rng::new(7);
    random_writes(&db, &mut rng, 20);
    db.compact_now().unwrap();
    let expected = random_writes(&db, &mut rng, 12);
    db.compact_now().unwrap();
    expected
}

/// The same writes as [`compacted_db`], as the compactor before runs left
/// them: a directory of that format with a snapshot after each round of
/// writes, the newest `retained` of them kept, with the WAL after the
/// oldest one kept.
fn legacy_compacted_db(dir: &Path, options: &Options, retained: usize) -> BTreeMap<String, Value> {
    let (snaps, expected) = {
        let db = Db::open_with(dir, options.clone()).unwrap();
        let mut rng = Rng::new(7);
        random_writes(&db, &mut rng, 20);
        let first = shipped_snapshot(&db);
        let expected = random_writes(&db, &mut rng, 12);
        let second = shipped_snapshot(&db);
        (vec![first, second], expected)
    };
    let kept = &snaps[snaps.len() - retained..];
    make_legacy(dir, kept, kept[0].0);
    expected
}

/// The contents, or the first error a read of them met.
fn try_contents(db: &Db) -> mergekv::Result<BTreeMap<String, Value>> {
    db.scan(&ScanOptions::all())
        .map(|e| e.map(|e| (String::from_utf8(e.key().to_vec()).unwrap(), e.into_value())))
        .collect()
}

/// What an open of a directory with `damaged` damaged gave: the state it
/// reads as, or the damage reported as a typed error naming that file (at
/// the open, or at the first read of what the damage reached). Any other
/// error fails the test.
fn state_or_damage_naming(
    opened: mergekv::Result<Db>,
    damaged: &Path,
    context: &str,
) -> Option<BTreeMap<String, Value>> {
    let read = opened.and_then(|db| try_contents(&db));
    match read {
        Ok(state) => Some(state),
        Err(Error::Corruption { path, .. }) => {
            assert_eq!(path, damaged, "{context}: the error names another file");
            None
        }
        Err(other) => panic!("{context}: unexpected {other}"),
    }
}

#[test]
fn every_flipped_byte_of_a_run_or_the_manifest_is_a_typed_error_naming_it() {
    let src = tempfile::tempdir().unwrap();
    let options = quiet().with_worker_threads(0);
    let expected = compacted_db(src.path(), &options);
    let run = runs(src.path()).pop().unwrap();
    for file in [run, src.path().join("MANIFEST")] {
        let len = std::fs::metadata(&file).unwrap().len() as usize;
        let mut refused = 0;
        for offset in 0..len {
            let copy = copy_db(src.path());
            let damaged = rebase(&file, src.path(), copy.path());
            flip_byte(&damaged, offset);
            let context = format!("{} flip at {offset}", file.display());
            match state_or_damage_naming(
                Db::open_with(copy.path(), options.clone()),
                &damaged,
                &context,
            ) {
                Some(state) => assert_eq!(state, expected, "{context}: wrong state"),
                None => refused += 1,
            }
        }
        assert!(refused > 0, "{}: no flip was noticed", file.display());
    }
}

#[test]
fn every_flipped_byte_of_a_legacy_snapshot_is_a_typed_error_or_a_correct_fallback() {
    for retained in [1, 2] {
        let src = tempfile::tempdir().unwrap();
        let options = quiet().with_worker_threads(0);
        let expected = legacy_compacted_db(src.path(), &options, retained);
        let newest = snapshots(src.path()).pop().unwrap();
        let len = std::fs::metadata(&newest).unwrap().len() as usize;
        let mut fell_back = 0;
        for offset in 0..len {
            let copy = copy_db(src.path());
            flip_byte(&rebase(&newest, src.path(), copy.path()), offset);
            match Db::open_with(copy.path(), options.clone()) {
                Ok(db) => {
                    assert_eq!(contents(&db), expected, "flip at {offset}: wrong state");
                    assert_eq!(
                        db.recovery_report().snapshots_skipped.len(),
                        1,
                        "flip at {offset}"
                    );
                    fell_back += 1;
                }
                Err(Error::Corruption { .. }) => {
                    assert_eq!(retained, 1, "flip at {offset}: no fallback")
                }
                Err(other) => panic!("flip at {offset}: unexpected {other}"),
            }
        }
        if retained == 2 {
            assert_eq!(fell_back, len, "with two snapshots every flip falls back");
        }
    }
}

/// One snapshot (a directory of the format before runs) and its WAL gone:
/// a flipped byte anywhere in it is refused by a strict open, and a repair
/// salvages every chunk that checks out, says what it lost, and never gives
/// a wrong value.
#[test]
fn repair_salvages_every_undamaged_chunk_of_the_only_snapshot() {
    let src = tempfile::tempdir().unwrap();
    let options = quiet().with_worker_threads(0);
    let (snapshot, expected) = {
        let db = Db::open_with(src.path(), options.clone()).unwrap();
        for i in 0..2000 {
            db.put(format!("key-{i:05}"), format!("{i:0>100}")).unwrap();
        }
        let snapshot = shipped_snapshot(&db);
        (snapshot, contents(&db))
    };
    let covered = snapshot.0;
    make_legacy(src.path(), &[snapshot], covered);
    let newest = snapshots(src.path()).pop().unwrap();
    let len = std::fs::metadata(&newest).unwrap().len() as usize;
    let repair = options
        .clone()
        .with_recovery_mode(mergekv::RecoveryMode::Repair);
    let (mut whole, mut partial) = (0, 0);
    for offset in (0..len).step_by(len / 97) {
        let copy = copy_db(src.path());
        flip_byte(&rebase(&newest, src.path(), copy.path()), offset);
        assert!(
            matches!(
                Db::open_with(copy.path(), options.clone()),
                Err(Error::Corruption { .. })
            ),
            "flip at {offset}: a strict open refuses"
        );
        let db = Db::open_with(copy.path(), repair.clone()).unwrap();
        let got = contents(&db);
        for (key, value) in &got {
            assert_eq!(expected.get(key), Some(value), "flip at {offset}: {key}");
        }
        let lost = expected.len() - got.len();
        let salvage = db.recovery_report().salvage.clone().expect("salvaged");
        // Besides the 2000 keys, the snapshot holds one `_local` key, the
        // epoch of the leader that shipped it; a repair deletes it (the
        // repaired copy draws a new epoch), so if it was kept it is the one
        // tombstone now.
        let epoch_kept = db.stats().tombstones as usize;
        assert!(epoch_kept <= 1);
        assert_eq!(salvage.entries_kept as usize, got.len() + epoch_kept);
        assert!(lost < 1000, "flip at {offset}: {lost} keys lost of 2000");
        assert!(
            lost == 0 || !salvage.lost.is_empty(),
            "flip at {offset}: {salvage:?}"
        );
        if lost == 0 {
            whole += 1
        } else {
            partial += 1
        }
        assert!(!db.notices().is_empty(), "the open says what it did");
        drop(db);
        let again = Db::open_with(copy.path(), options.clone()).expect("opens strict after");
        assert_eq!(contents(&again), got);
        assert!(!copy.path().join("REPAIRED").exists());
    }
    assert!(partial > 0 && whole > 0, "{whole} whole, {partial} partial");
}

#[test]
fn a_truncated_run_or_manifest_is_a_typed_error_naming_it() {
    let src = tempfile::tempdir().unwrap();
    let expected = compacted_db(src.path(), &quiet());
    let run = runs(src.path()).pop().unwrap();
    for file in [run, src.path().join("MANIFEST")] {
        let len = std::fs::metadata(&file).unwrap().len();
        for cut in [0, 1, 10, 60, 100, len / 2, len - 1] {
            if cut >= len {
                continue;
            }
            let copy = copy_db(src.path());
            let damaged = rebase(&file, src.path(), copy.path());
            truncate(&damaged, cut);
            let context = format!("{} cut at {cut}", file.display());
            let state =
                state_or_damage_naming(Db::open_with(copy.path(), quiet()), &damaged, &context);
            assert_eq!(state, None, "{context}: not noticed");
        }
    }
    // The intact directory reads as it should.
    assert_eq!(
        try_contents(&Db::open_with(src.path(), quiet()).unwrap()).unwrap(),
        expected
    );
}

#[test]
fn a_truncated_legacy_snapshot_is_a_typed_error_or_a_correct_fallback() {
    let src = tempfile::tempdir().unwrap();
    let expected = legacy_compacted_db(src.path(), &quiet(), 2);
    let newest = snapshots(src.path()).pop().unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    for cut in [0, 1, 10, 60, 100, len / 2, len - 1] {
        let copy = copy_db(src.path());
        truncate(&rebase(&newest, src.path(), copy.path()), cut);
        let db = Db::open_with(copy.path(), quiet()).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(contents(&db), expected, "cut at {cut}");
    }
    // With one snapshot and its WAL gone, there is nothing to fall back to.
    let single = tempfile::tempdir().unwrap();
    legacy_compacted_db(single.path(), &quiet(), 1);
    truncate(&snapshots(single.path()).pop().unwrap(), 100);
    assert!(matches!(
        Db::open_with(single.path(), quiet()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn overwrite_heavy_load_keeps_disk_within_a_small_multiple_of_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_segment_size_bytes_max(8 * 1024 * 1024)
        // Let the compactor run by itself during the load, too.
        .with_compaction_wal_bytes_min(32 * 1024 * 1024)
        .with_compactor_tick_ms(10);
    let db = Db::open_with(dir.path(), options).unwrap();
    let value = [b'v'; 150];
    for round in 0..100u32 {
        for chunk in 0..10 {
            let mut batch = Batch::new();
            for i in 0..1000 {
                let mut v = value;
                v[..4].copy_from_slice(&round.to_le_bytes());
                batch.put(format!("key-{:05}", chunk * 1000 + i), v);
            }
            db.write(batch).unwrap();
        }
    }
    let wal_written = db.stats().wal.bytes_written;
    let report = db.compact_now().unwrap();
    let live_bytes = 10_000 * (9 + 150) as u64;
    assert!(
        wal_written > 100 * live_bytes,
        "the load wrote {wal_written} bytes"
    );
    assert!(
        report.bytes_after <= 3 * live_bytes,
        "{} bytes on disk for {live_bytes} bytes of live data",
        report.bytes_after
    );
    assert!(
        db.stats().compactor.compactions >= 2,
        "the byte trigger ran compactions during the load"
    );
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.stats().keys, 10_000);
    assert_eq!(
        &db.get("key-00042").unwrap().unwrap()[..4],
        &99u32.to_le_bytes()
    );
}

#[test]
fn tombstones_are_kept_inside_the_grace_period_and_dropped_after() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = quiet()
        .with_tombstone_grace_ms(60_000)
        .with_wall_clock(clock.clone());
    let db = Db::open_with(dir.path(), options.clone()).unwrap();
    db.put("gone", "x").unwrap();
    db.put("kept", "y").unwrap();
    db.delete("gone").unwrap();
    clock.advance_ms(59_000);
    assert_eq!(db.compact_now().unwrap().tombstones_dropped, 0);
    assert_eq!(db.stats().tombstones, 1);
    // A registered cursor that has not passed what the runs cover holds GC
    // back.
    db.set_cursor("follower-1", 1).unwrap();
    clock.advance_ms(2_000);
    assert_eq!(db.compact_now().unwrap().tombstones_dropped, 0);
    db.set_cursor("follower-1", db.stats().wal.last_seq)
        .unwrap();
    let report = db.compact_now().unwrap();
    assert_eq!(report.tombstones_dropped, 1);
    assert_eq!(db.stats().tombstones, 0);
    assert_eq!(db.get("gone").unwrap(), None);
    drop(db);
    let db = Db::open_with(dir.path(), options).unwrap();
    assert_eq!(db.stats().tombstones, 0);
    assert_eq!(db.get("gone").unwrap(), None);
    assert_eq!(db.get("kept").unwrap().as_deref(), Some(&b"y"[..]));
}

#[test]
fn a_cursor_holds_back_truncation_until_it_falls_beyond_the_retention_limit() {
    let dir = tempfile::tempdir().unwrap();
    let options = quiet().with_wal_retention_bytes_max(64 * 1024);
    let db = Db::open_with(dir.path(), options).unwrap();
    db.set_cursor("peer", 0).unwrap();
    let mut rng = Rng::new(3);
    random_writes(&db, &mut rng, 100);
    let report = db.compact_now().unwrap();
    assert_eq!(
        report.segments_removed, 0,
        "the cursor still needs every segment"
    );
    assert!(!db.cursor("peer").unwrap().needs_resync);
    random_writes(&db, &mut rng, 2000);
    let report = db.compact_now().unwrap();
    assert_eq!(report.cursors_behind, vec!["peer".to_string()]);
    assert!(report.segments_removed > 0);
    assert!(db.cursor("peer").unwrap().needs_resync);
}

/// A registered cursor survives a restart: the tombstone it holds back
/// is still held, and the WAL it needs is still kept.
#[test]
fn registered_cursors_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = quiet().with_tombstone_grace_ms(0);
    let db = Db::open_with(dir.path(), options.clone()).unwrap();
    db.put("k", "v").unwrap();
    db.delete("k").unwrap();
    db.set_cursor("laggard", 0).unwrap();
    assert_eq!(db.compact_now().unwrap().tombstones_dropped, 0);
    for i in 0..200 {
        db.put(format!("fill-{i:03}"), "some value to fill segments")
            .unwrap();
    }
    db.set_cursor("follower", 100).unwrap();
    db.set_cursor("follower", 150).unwrap(); // forward: written at close
    drop(db);
    let db = Db::open_with(dir.path(), options.clone()).unwrap();
    assert_eq!(db.cursor("laggard").map(|c| c.seq), Some(0));
    assert_eq!(db.cursor("follower").map(|c| c.seq), Some(150));
    assert_eq!(
        db.compact_now().unwrap().tombstones_dropped,
        0,
        "the laggard has not seen the delete"
    );
    assert_eq!(db.stats().tombstones, 1);
    let first_kept = segments(dir.path()).len();
    assert!(first_kept > 1, "the laggard holds the WAL");
    assert!(db.remove_cursor("laggard").unwrap());
    assert!(!db.remove_cursor("laggard").unwrap());
    db.set_cursor("follower", db.stats().wal.last_seq).unwrap();
    drop(db);
    let db = Db::open_with(dir.path(), options).unwrap();
    assert_eq!(db.cursor("laggard"), None, "a removal is durable too");
    assert_eq!(db.compact_now().unwrap().tombstones_dropped, 1);
    assert_eq!(db.get("k").unwrap(), None);
}

/// A damaged cursor file costs only its cursors: the database opens (and
/// says so), verify reports it, tombstones are kept for the rest of the
/// open, and the next open is back to normal.
#[test]
fn a_damaged_cursor_file_costs_only_its_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let options = quiet().with_tombstone_grace_ms(0);
    let db = Db::open_with(dir.path(), options.clone()).unwrap();
    db.put("k", "v").unwrap();
    db.put("gone", "x").unwrap();
    db.delete("gone").unwrap();
    db.set_cursor("peer", 1).unwrap();
    drop(db);
    flip_byte(&dir.path().join("CURSORS"), 12);
    let report = mergekv::verify(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("CURSORS")),
        "{:?}",
        report.problems
    );
    let read_only = options.clone().with_read_only(true);
    drop(Db::open_with(dir.path(), read_only).unwrap());
    assert!(
        dir.path().join("CURSORS").exists(),
        "a read-only open moves nothing"
    );
    let db = Db::open_with(dir.path(), options.clone()).unwrap();
    assert_eq!(db.cursor("peer"), None, "its cursors are lost");
    assert_eq!(
        db.get("k").unwrap().as_deref(),
        Some(&b"v"[..]),
        "nothing else is"
    );
    assert!(
        db.notices().iter().any(|n| n.contains("cursor file")),
        "{:?}",
        db.notices()
    );
    assert!(dir.path().join("quarantine").join("CURSORS").exists());
    assert_eq!(
        db.compact_now().unwrap().tombstones_dropped,
        0,
        "a lost cursor may have held any tombstone"
    );
    drop(db);
    assert!(mergekv::verify(dir.path()).unwrap().is_ok());
    let db = Db::open_with(dir.path(), options).unwrap();
    assert!(db.notices().is_empty(), "{:?}", db.notices());
    assert_eq!(db.compact_now().unwrap().tombstones_dropped, 1);
}

#[test]
fn background_compaction_runs_on_the_interval_and_a_clean_drop_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = quiet()
        .with_compaction_interval_ms(1)
        .with_compactor_tick_ms(1);
    let mut rng = Rng::new(11);
    let expected = {
        let db = Db::open_with(dir.path(), options.clone()).unwrap();
        random_writes(&db, &mut rng, 500);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while db.stats().compactor.compactions == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the interval trigger never fired"
            );
            std::thread::yield_now();
        }
        random_writes(&db, &mut rng, 500)
    };
    let db = Db::open_with(dir.path(), options).unwrap();
    assert!(db.recovery_report().runs.is_some(), "opened from the runs");
    assert_eq!(contents(&db), expected);
}

#[test]
fn verify_checks_runs_and_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    compacted_db(dir.path(), &quiet());
    let report = mergekv::verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.runs_ok, 1);
    assert_eq!(report.snapshots_ok, 0);
    let run = runs(dir.path()).pop().unwrap();
    let copy = copy_db(dir.path());
    flip_byte(&run, 70);
    let report = mergekv::verify(dir.path()).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.runs_ok, 0);
    assert!(report.problems[0].contains("run-"), "{:?}", report.problems);
    flip_byte(&copy.path().join("MANIFEST"), 40);
    let report = mergekv::verify(copy.path()).unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems[0].contains("MANIFEST"),
        "{:?}",
        report.problems
    );
}

#[test]
fn verify_checks_legacy_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    legacy_compacted_db(dir.path(), &quiet(), 1);
    let report = mergekv::verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.snapshots_ok, 1);
    flip_byte(&snapshots(dir.path()).pop().unwrap(), 70);
    let report = mergekv::verify(dir.path()).unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems[0].contains("snap-"),
        "{:?}",
        report.problems
    );
}

fn repair_options() -> Options {
    quiet().with_recovery_mode(mergekv::RecoveryMode::Repair)
}

/// 10 keys `a*`, a compaction, then 10 keys `b*`.
fn compacted_then_written(dir: &Path) {
    let db = Db::open_with(dir, quiet()).unwrap();
    for i in 0..10 {
        db.put(format!("a{i}"), "x").unwrap();
    }
    db.compact_now().unwrap();
    for i in 0..10 {
        db.put(format!("b{i}"), "y").unwrap();
    }
}

/// [`compacted_then_written`] as the compactor before runs left it: a
/// directory of that format, its snapshot covering the `a*` keys and its WAL
/// the `b*` keys.
fn legacy_compacted_then_written(dir: &Path) {
    let snapshot = {
        let db = Db::open_with(dir, quiet()).unwrap();
        for i in 0..10 {
            db.put(format!("a{i}"), "x").unwrap();
        }
        let snapshot = shipped_snapshot(&db);
        for i in 0..10 {
            db.put(format!("b{i}"), "y").unwrap();
        }
        snapshot
    };
    let covered = snapshot.0;
    make_legacy(dir, &[snapshot], covered);
}

#[test]
fn repair_mode_does_not_discard_an_intact_wal_because_a_snapshot_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    legacy_compacted_then_written(dir.path());
    flip_byte(&snapshots(dir.path()).pop().unwrap(), 100);
    match Db::open_with(dir.path(), quiet()) {
        Err(Error::Corruption { path, .. }) => assert!(path.to_string_lossy().contains("snap-")),
        other => panic!(
            "expected the snapshot's corruption, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(!dir.path().join("quarantine").exists(), "nothing was moved");
    // Repair salvages the snapshot (its one entries chunk is damaged) and
    // replays the whole WAL after it: nothing of the WAL is dropped.
    let db = Db::open_with(dir.path(), repair_options()).unwrap();
    assert!(db.recovery_report().repair.is_none(), "the WAL was intact");
    assert!(db.recovery_report().salvage.is_some());
    for i in 0..10 {
        assert_eq!(db.get(format!("b{i}")).unwrap().as_deref(), Some(&b"y"[..]));
    }
}

#[test]
fn a_repaired_segment_header_after_a_snapshot_leaves_an_openable_database() {
    let dir = tempfile::tempdir().unwrap();
    compacted_then_written(dir.path());
    let first = segments(dir.path()).remove(0);
    flip_byte(&first, 20); // the header's first sequence number
    assert!(matches!(
        Db::open_with(dir.path(), quiet()),
        Err(Error::Corruption { .. })
    ));
    {
        let db = Db::open_with(dir.path(), repair_options()).unwrap();
        assert!(db.recovery_report().repair.is_some());
        assert!(
            db.get("a0").unwrap().is_some(),
            "the snapshot's keys are kept"
        );
        db.put("after", "repair").unwrap();
    }
    for options in [quiet(), repair_options()] {
        let db = Db::open_with(dir.path(), options).expect("opens again after the repair");
        assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"repair"[..]));
        assert!(db.recovery_report().repair.is_none());
    }
}

#[test]
fn a_wal_ending_before_the_snapshot_continues_in_a_new_segment() {
    // What a power loss would leave if the WAL after the snapshot had not
    // been synced: a snapshot covering S, and a WAL that ends before S + 1.
    let dir = tempfile::tempdir().unwrap();
    compacted_then_written(dir.path());
    let active = segments(dir.path()).pop().unwrap();
    truncate(&active, 32);
    let expected = {
        let db = Db::open_with(dir.path(), quiet()).unwrap();
        assert!(db.get("a9").unwrap().is_some());
        let seq = db.put("next", "write").unwrap().seq;
        assert!(
            seq > 10,
            "numbering continues after the snapshot (seq {seq})"
        );
        contents(&db)
    };
    let db = Db::open_with(dir.path(), quiet()).expect("opens again");
    assert_eq!(contents(&db), expected);
}

#[test]
fn a_cursor_behind_the_start_of_the_wal_needs_a_resync() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), quiet()).unwrap();
    for i in 0..500 {
        db.put(format!("a{i}"), "x").unwrap();
    }
    assert!(db.compact_now().unwrap().segments_removed > 0);
    db.set_cursor("peer", 0).unwrap();
    db.put("b", "x").unwrap();
    let report = db.compact_now().unwrap();
    assert_eq!(report.cursors_behind, vec!["peer".to_string()]);
    assert!(db.cursor("peer").unwrap().needs_resync);
}
