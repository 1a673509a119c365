//! Attack: a flush that keeps failing with an error that is not an fsync
//! failure (so the database is not poisoned): every rename fails from now
//! on (a run file, or the manifest, cannot be put in place: EXDEV, EPERM,
//! a read-only remount of one subtree...). The WAL needs no rename, so
//! writes go on; the frozen memtable cannot be written out; once the active
//! memtable reaches twice `memtable_bytes_max`, `wait_for_room` makes every
//! writer wait for a flush that never comes. A write must return (an error
//! is fine), never block forever.

use std::sync::mpsc;
use std::time::Duration;

use mergekv::{Db, FaultInjector, IoOp, Options, SyncMode};

#[test]
fn frozen_memtables_stay_bounded_when_every_flush_fails_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let db = Db::open_with(
        dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_worker_threads(0)
            .with_memtable_bytes_max(8 * 1024)
            .with_compactor_tick_ms(5)
            .with_faults(Some(faults.clone())),
    )
    .unwrap();
    db.put("before", "1").unwrap();
    faults.fail_from_nth(IoOp::Rename, 1);
    let (tx, rx) = mpsc::channel();
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for i in 0..20_000u32 {
                let r = db.put(format!("k{i:06}"), vec![b'v'; 200]);
                let failed = r.is_err();
                let _ = tx.send((i, r.err().map(|e| e.to_string())));
                if failed {
                    return;
                }
            }
        })
    };
    let mut last = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok((i, err)) => {
                last = Some(i);
                if let Some(e) = err {
                    println!("write {i} failed: {e}");
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let s = db.stats();
                panic!(
                    "a write has been blocked for 15 s after write {last:?}: memtable {} B, frozen {} B, compactor error {:?}, poisoned {:?}, renames failed {}",
                    s.compactor.memtable_bytes,
                    s.compactor.frozen_bytes,
                    s.compactor.last_error,
                    s.poisoned,
                    faults.injected()
                );
            }
        }
    }
    writer.join().unwrap();
    let s = db.stats();
    println!(
        "after {last:?} writes: memtable {} B, frozen {} B, runs {}, compactions {}, compactor error {:?}, poisoned {:?}, faults injected {}",
        s.compactor.memtable_bytes,
        s.compactor.frozen_bytes,
        s.compactor.runs,
        s.compactor.compactions,
        s.compactor.last_error,
        s.poisoned,
        faults.injected()
    );
    // Either writes were refused, or memory stayed bounded (twice the
    // limit for the active memtable plus one frozen one, with slack).
    let held = s.compactor.memtable_bytes + s.compactor.frozen_bytes;
    assert!(
        held <= 8 * 8 * 1024,
        "{held} bytes of memtables held in memory with memtable_bytes_max = 8 KiB: frozen memtables pile up while every flush fails"
    );
}

/// Without any fault: while the compactor merges big runs, no freeze
/// happens, and `wait_for_room` waits only while a *frozen* memtable
/// exists, so the active memtable grows with the write rate times the
/// merge time, far past `memtable_bytes_max` (and past twice it).
#[test]
fn the_active_memtable_stays_bounded_while_a_long_merge_runs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let limit = 64 * 1024u64;
    let db = Db::open_with(
        dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_memtable_bytes_max(limit)
            .with_compactor_tick_ms(1),
    )
    .unwrap();
    // A big base, in a few runs.
    for chunk in 0..6u64 {
        let mut b = mergekv::Batch::new();
        for i in 0..50_000u64 {
            b.put(format!("base-{chunk}-{i:07}"), [1u8; 64]);
        }
        db.write(b).unwrap();
        db.compact_now().unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut b = mergekv::Batch::new();
                for j in 0..50 {
                    b.put(format!("new-{i:08}-{j}"), [2u8; 64]);
                }
                db.write(b).unwrap();
                i += 1;
            }
            i * 50
        })
    };
    let sampler = {
        let (db, stop, max_seen) = (db.clone(), stop.clone(), max_seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let s = db.stats().compactor;
                max_seen.fetch_max(s.memtable_bytes + s.frozen_bytes, Ordering::Relaxed);
            }
        })
    };
    // Full merges of everything, back to back.
    for _ in 0..3 {
        db.compact_now().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    sampler.join().unwrap();
    let max = max_seen.load(Ordering::Relaxed);
    println!(
        "{written} keys written during merges; largest memtables seen: {max} B (limit {limit} B)"
    );
    assert!(
        max <= 4 * limit,
        "memtables reached {max} B with memtable_bytes_max = {limit} B while runs merged"
    );
}
