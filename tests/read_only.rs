//! `Db::open_read_only`: a reader beside a writer sees a consistent state,
//! changes nothing, never blocks the writer, and refreshes on request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mergekv::{Batch, Db, Error, Options, RecoveryMode, ScanOptions};

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn small_memtable() -> Options {
    Options::default()
        .with_memtable_bytes_max(64 * 1024)
        .with_compactor_tick_ms(5)
        .with_sync_mode(mergekv::SyncMode::Never)
}

#[test]
fn a_missing_directory_is_not_a_database_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    match Db::open_read_only(&missing) {
        Err(Error::NotADatabase { dir }) => assert_eq!(dir, missing),
        other => panic!("{other:?}"),
    }
    assert!(!missing.exists());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(
        Db::open_read_only(&empty),
        Err(Error::NotADatabase { .. })
    ));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn a_reader_beside_a_writer_sees_the_wal_and_the_runs_and_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.put("a", "1").unwrap();
    db.increment("n", 5).unwrap();
    let mut reader = Db::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(reader.counter("n").unwrap(), 5);
    assert_eq!(reader.node_id(), db.node_id());
    // Flushed and merged by the writer: the reader's state stays readable.
    db.put("b", "2").unwrap();
    db.compact_now().unwrap();
    db.put("c", "3").unwrap();
    db.compact_now().unwrap();
    assert_eq!(reader.get("b").unwrap(), None, "the state as of the open");
    assert_eq!(reader.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    reader.refresh().unwrap();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(reader.get(k).unwrap().as_deref(), Some(v.as_bytes()), "{k}");
    }
    assert!(reader.recovery_report().runs.is_some());
    let keys: Vec<Vec<u8>> = reader
        .scan(&ScanOptions::all())
        .map(|e| e.unwrap().key().to_vec())
        .collect();
    assert_eq!(
        keys,
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"n".to_vec()]
    );
    assert_eq!(reader.digest().unwrap(), db.digest().unwrap());
    assert_eq!(reader.stats().keys, 4);
    // An export from the reader imports into a fresh copy: same state.
    let (changes, _) = reader.export_since(&Default::default()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let copy = Db::open(other.path()).unwrap();
    copy.import(&changes).unwrap();
    assert_eq!(copy.digest().unwrap(), db.digest().unwrap());
    // The writer was never blocked: it writes and reopens with readers open.
    db.put("d", "4").unwrap();
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.get("d").unwrap().as_deref(), Some(&b"4"[..]));
}

#[test]
fn a_read_only_open_changes_nothing_even_with_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        for i in 0..50 {
            db.put(format!("k{i}"), "v").unwrap();
        }
        db.compact_now().unwrap();
        for i in 50..80 {
            db.put(format!("k{i}"), "v").unwrap();
        }
    }
    // Garbage at the end of the last segment: a frame being written.
    let wal = dir.path().join("wal");
    let last = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0x5a; 37]);
    std::fs::write(&last, &bytes).unwrap();
    let before = files(dir.path());
    let reader = Db::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.stats().keys, 80);
    assert!(reader.recovery_report().torn_tail.is_some());
    drop(reader);
    assert_eq!(files(dir.path()), before, "a read-only open changed files");
}

#[test]
fn a_repair_waits_for_no_reader_it_refuses_to_run_beside_one() {
    let dir = tempfile::tempdir().unwrap();
    drop(Db::open(dir.path()).unwrap());
    let reader = Db::open_read_only(dir.path()).unwrap();
    let repair = Options::default().with_recovery_mode(RecoveryMode::Repair);
    assert!(matches!(
        Db::open_with(dir.path(), repair.clone()),
        Err(Error::Locked { .. })
    ));
    drop(reader);
    drop(Db::open_with(dir.path(), repair).unwrap());
}

/// A writer commits batches of 10 keys (batch i writes `b{i}-{j}` = i),
/// with a memtable so small that flushes and merges run all the time;
/// readers open and refresh meanwhile. Every state a reader sees holds
/// whole batches only, a prefix of them, and never goes back.
#[test]
fn readers_beside_a_busy_writer_see_whole_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), small_memtable()).unwrap();
    db.put("start", "1").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 3000 {
                let mut batch = Batch::new();
                for j in 0..10 {
                    batch.put(format!("b{i:06}-{j}"), i.to_le_bytes());
                }
                db.write(batch).unwrap();
                i += 1;
            }
            i
        })
    };
    let mut seen_batches = 0u64;
    let mut reader = Db::open_read_only(dir.path()).unwrap();
    // Until the writer is done, and at least 40 rounds.
    let mut round = 0;
    while round < 40 || !writer.is_finished() {
        round += 1;
        if round % 4 == 0 {
            reader = Db::open_read_only(dir.path()).unwrap();
        } else {
            reader.refresh().unwrap();
        }
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        for entry in reader.scan(&ScanOptions::prefix("b")) {
            let entry = entry.unwrap();
            let value = entry.value().as_bytes().unwrap();
            let i = u64::from_le_bytes(value.try_into().unwrap());
            *counts.entry(i).or_default() += 1;
        }
        for (i, n) in &counts {
            assert_eq!(*n, 10, "round {round}: batch {i} is partial");
        }
        let batches = counts.len() as u64;
        assert_eq!(
            counts.keys().copied().collect::<Vec<_>>(),
            (0..batches).collect::<Vec<_>>(),
            "round {round}: not a prefix"
        );
        assert!(batches >= seen_batches, "round {round}: went back");
        seen_batches = batches;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let compactions = db.stats().compactor.compactions;
    assert!(compactions >= 3, "the writer flushed {compactions} times");
    db.close().unwrap();
    reader.refresh().unwrap();
    assert_eq!(
        reader.scan(&ScanOptions::prefix("b")).count() as u64,
        written * 10
    );
}
