//! Attack 3: readers (`Db::open_read_only` + refresh, and `ReadView`s of
//! the writer) beside a writer whose memtable is tiny (4 KiB), whose
//! compactor ticks every millisecond, and beside a thread calling
//! `compact_now` in a loop (full merges: runs deleted constantly, WAL
//! truncated). Each batch overwrites or deletes a pair of keys together
//! and bumps `gen`: a reader must never see the pair differ, never see
//! `gen` go back, never get an error or panic. Long-lived views (a
//! `ReadView` of the writer and a `ReadOnlyDb` never refreshed) must read
//! the same at the end as when taken.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mergekv::{Batch, Db, Options, ScanOptions, SyncMode, Value};

const PAIRS: u64 = 25;

fn opts() -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_worker_threads(2)
        .with_memtable_bytes_max(4 * 1024)
        .with_compactor_tick_ms(1)
        .with_segment_size_bytes_max(16 * 1024)
}

fn dump(scan: mergekv::Scan) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for e in scan {
        let e = e.map_err(|e| format!("{e:?}"))?;
        let v = match e.value() {
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Counter(c) => format!("#{c}"),
        };
        out.insert(String::from_utf8_lossy(e.key()).into_owned(), v);
    }
    Ok(out)
}

/// The problems a state shows: a pair that differs, a pair above `gen`.
fn check(state: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let gen_ = state
        .get("gen")
        .map(|g| g.parse::<u64>().unwrap())
        .unwrap_or(0);
    for j in 0..PAIRS {
        let a = state.get(&format!("p{j:02}a"));
        let b = state.get(&format!("p{j:02}b"));
        if a != b {
            out.push(format!("pair {j}: a={a:?} b={b:?} (gen {gen_})"));
        }
        if let Some(a) = a {
            let v: u64 = a.split(':').next().unwrap().parse().unwrap();
            if v > gen_ {
                out.push(format!("pair {j} at {v} above gen {gen_}"));
            }
        }
    }
    out
}

#[test]
fn readers_beside_a_writer_that_flushes_and_merges_constantly() {
    let secs: u64 = std::env::var("ATTACK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts()).unwrap();
    db.put("gen", "0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let gen_written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, stop, gen_written) = (db.clone(), stop.clone(), gen_written.clone());
        std::thread::spawn(move || {
            let mut i = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let j = (i * 7) % PAIRS;
                let mut b = Batch::new();
                b.put("gen", i.to_string());
                if i.is_multiple_of(5) {
                    b.delete(format!("p{j:02}a")).delete(format!("p{j:02}b"));
                } else {
                    let v = format!("{i}:{}", "v".repeat((i % 200) as usize));
                    b.put(format!("p{j:02}a"), &v).put(format!("p{j:02}b"), &v);
                }
                b.increment("writes", 1);
                db.write(b).unwrap();
                gen_written.store(i, Ordering::Relaxed);
                i += 1;
            }
            i
        })
    };
    let compactor = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                db.compact_now().unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            n
        })
    };
    // Long-lived views, taken once the writer is going.
    while gen_written.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let long_view = db.view();
    let long_view_at_start = dump(long_view.default_keyspace().scan(&ScanOptions::all())).unwrap();
    let long_reader = Db::open_read_only(dir.path()).unwrap();
    let long_reader_at_start = dump(long_reader.scan(&ScanOptions::all())).unwrap();
    let long_reader_digest = long_reader.digest().unwrap();
    let problems = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (path, stop, problems) = (dir.path().to_path_buf(), stop.clone(), problems.clone());
            let db = db.clone();
            std::thread::spawn(move || {
                let mut reader = Db::open_read_only(&path).unwrap();
                let (mut rounds, mut errors, mut last_gen) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    rounds += 1;
                    let res = if r == 0 && rounds % 3 == 0 {
                        Db::open_read_only(&path).map(|x| reader = x)
                    } else {
                        reader.refresh()
                    };
                    if let Err(e) = res {
                        errors += 1;
                        problems
                            .lock()
                            .push(format!("reader {r} round {rounds}: refresh/open: {e:?}"));
                        continue;
                    }
                    let state = if r == 2 {
                        // The writer's own views, too.
                        dump(db.view().default_keyspace().scan(&ScanOptions::all()))
                    } else {
                        dump(reader.scan(&ScanOptions::all()))
                    };
                    let state = match state {
                        Ok(s) => s,
                        Err(e) => {
                            problems
                                .lock()
                                .push(format!("reader {r} round {rounds}: scan: {e}"));
                            continue;
                        }
                    };
                    for p in check(&state) {
                        problems
                            .lock()
                            .push(format!("reader {r} round {rounds}: {p}"));
                    }
                    let g = state
                        .get("gen")
                        .map(|g| g.parse::<u64>().unwrap())
                        .unwrap_or(0);
                    if r != 2 {
                        if g < last_gen {
                            problems.lock().push(format!(
                                "reader {r} round {rounds}: gen went back {last_gen} -> {g}"
                            ));
                        }
                        last_gen = g;
                        // Reverse scan agrees with forward.
                        let mut rev: Vec<String> = reader
                            .scan(&ScanOptions::all().reversed())
                            .map(|e| String::from_utf8_lossy(e.unwrap().key()).into_owned())
                            .collect();
                        rev.reverse();
                        if rev != state.keys().cloned().collect::<Vec<_>>() {
                            problems
                                .lock()
                                .push(format!("reader {r} round {rounds}: reverse scan differs"));
                        }
                    }
                }
                (rounds, errors)
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) && problems.lock().len() < 20 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let compactions = compactor.join().unwrap();
    let mut reader_rounds = Vec::new();
    for r in readers {
        reader_rounds.push(r.join().unwrap());
    }
    let stats = db.stats();
    println!(
        "{written} batches, {compactions} compact_now calls, {} compactions in all, reader (rounds, errors): {reader_rounds:?}",
        stats.compactor.compactions
    );
    // The long-lived views read as they did.
    let view_now = dump(long_view.default_keyspace().scan(&ScanOptions::all()));
    if view_now.as_ref() != Ok(&long_view_at_start) {
        problems.lock().push(format!(
            "a long-lived ReadView changed (or failed): {:?}",
            view_now.map(|v| v.len())
        ));
    }
    let reader_now = dump(long_reader.scan(&ScanOptions::all()));
    if reader_now.as_ref() != Ok(&long_reader_at_start) {
        problems.lock().push(format!(
            "a never-refreshed ReadOnlyDb changed (or failed): {:?}",
            reader_now.map(|v| v.len())
        ));
    }
    if long_reader.digest().ok().map(|d| d.root) != Some(long_reader_digest.root) {
        problems
            .lock()
            .push("a never-refreshed ReadOnlyDb's digest changed".into());
    }
    for (k, v) in long_reader_at_start.iter().take(3) {
        let got = long_reader.get(k).unwrap();
        if got
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            != Some(v.clone())
            && !v.starts_with('#')
        {
            problems
                .lock()
                .push(format!("long reader get {k}: {got:?}"));
        }
    }
    // A final reader equals the writer.
    let final_reader = Db::open_read_only(dir.path()).unwrap();
    let (w, r) = (
        dump(db.scan(&ScanOptions::all())).unwrap(),
        dump(final_reader.scan(&ScanOptions::all())).unwrap(),
    );
    if w != r {
        problems
            .lock()
            .push("a fresh reader differs from the writer".into());
    }
    if final_reader.digest().unwrap().root != db.digest().unwrap().root {
        problems
            .lock()
            .push("a fresh reader's digest differs from the writer's".into());
    }
    if db.digest().unwrap().root != db.digest_recomputed().unwrap().root {
        problems
            .lock()
            .push("the writer's digest differs from a recount".into());
    }
    let problems = problems.lock().clone();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
