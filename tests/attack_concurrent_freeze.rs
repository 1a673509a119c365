//! Attack 2: many threads writing (puts, deletes, increments, batches)
//! while the memtable is tiny and the compactor ticks every millisecond,
//! so freezes, flush installs and merges race the apply path. Checked:
//! every outcome is what a single writer per key must get (a put Applied,
//! a delete Removed, an increment Applied with the exact running total),
//! increments of one shared counter each report a distinct total, readers
//! never see half a batch, and the final state equals the model, with
//! `digest() == digest_recomputed()`, before and after a reopen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mergekv::{Batch, Db, Options, OutcomeKind, ScanOptions, SyncMode, Value};

const KEYS_PER_THREAD: u64 = 40;

#[derive(Clone, Debug, PartialEq)]
enum M {
    Bytes(Vec<u8>),
    Counter(i64),
}

fn opts(workers: usize) -> Options {
    let memtable_bytes_max = std::env::var("ATTACK_MEMTABLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4 * 1024);
    Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_worker_threads(workers)
        .with_memtable_bytes_max(memtable_bytes_max)
        .with_compactor_tick_ms(1)
        .with_segment_size_bytes_max(64 * 1024)
}

fn snapshot(db: &Db) -> BTreeMap<String, M> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| {
            let k = String::from_utf8(e.key().to_vec()).unwrap();
            let v = match e.into_value() {
                Value::Bytes(b) => M::Bytes(b.to_vec()),
                Value::Counter(c) => M::Counter(c),
            };
            (k, v)
        })
        .collect()
}

struct Problems(parking_lot::Mutex<Vec<String>>);
impl Problems {
    fn add(&self, p: String) {
        let mut v = self.0.lock();
        if v.len() < 50 {
            v.push(p);
        }
    }
}

fn writer(db: Db, t: usize, ops: u64, problems: Arc<Problems>) -> (BTreeMap<String, M>, Vec<i64>) {
    let mut model = BTreeMap::new();
    let mut own_counter = 0i64;
    let mut shared_seen = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ ((t as u64 + 1) * 0x9e37_79b9);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..ops {
        let r = next();
        let k = format!("t{t}-k{:03}", r % KEYS_PER_THREAD);
        match (r >> 32) % 10 {
            0..=3 => {
                let v = format!("t{t}-{i}-{}", "x".repeat((r >> 40) as usize % 300));
                let o = db.put(&k, &v).unwrap();
                if o.kind != OutcomeKind::Applied {
                    problems.add(format!("t{t} op {i}: put {k} -> {:?}", o.kind));
                }
                model.insert(k, M::Bytes(v.into_bytes()));
            }
            4 => {
                let o = db.delete(&k).unwrap();
                if o.kind != OutcomeKind::Removed {
                    problems.add(format!("t{t} op {i}: delete {k} -> {:?}", o.kind));
                }
                model.remove(&k);
            }
            5 | 6 => {
                let d = (r >> 20) as i64 % 7 - 2;
                let o = db.increment(format!("t{t}-counter"), d).unwrap();
                own_counter += d;
                if o.kind != OutcomeKind::Applied || o.counter != Some(own_counter) {
                    problems.add(format!(
                        "t{t} op {i}: increment own counter by {d} -> {:?} {:?}, expected Applied {own_counter}",
                        o.kind, o.counter
                    ));
                }
            }
            7 => {
                let o = db.increment("shared", 1).unwrap();
                if o.kind != OutcomeKind::Applied {
                    problems.add(format!(
                        "t{t} op {i}: increment shared -> {:?} {:?}",
                        o.kind, o.counter
                    ));
                }
                shared_seen.push(o.counter.unwrap_or(-1));
            }
            _ => {
                // A batch: a pair that must always read equal, another
                // key put or deleted, and the own counter.
                let pair = r % 8;
                let v = format!("t{t}-b{i}");
                let other = format!("t{t}-k{:03}", (r >> 8) % KEYS_PER_THREAD);
                let mut b = Batch::new();
                b.put(format!("t{t}-pa{pair}"), &v)
                    .put(format!("t{t}-pb{pair}"), &v)
                    .increment(format!("t{t}-counter"), 1);
                let del = (r >> 50) % 2 == 0;
                if del {
                    b.delete(&other);
                } else {
                    b.put(&other, &v);
                }
                let out = db.write(b).unwrap();
                own_counter += 1;
                let kinds: Vec<_> = out.iter().map(|o| o.kind).collect();
                let want_last = if del {
                    OutcomeKind::Removed
                } else {
                    OutcomeKind::Applied
                };
                if kinds
                    != [
                        OutcomeKind::Applied,
                        OutcomeKind::Applied,
                        OutcomeKind::Applied,
                        want_last,
                    ]
                    || out[2].counter != Some(own_counter)
                {
                    problems.add(format!(
                        "t{t} op {i}: batch -> {kinds:?}, counter {:?} (expected {own_counter})",
                        out[2].counter
                    ));
                }
                model.insert(format!("t{t}-pa{pair}"), M::Bytes(v.clone().into_bytes()));
                model.insert(format!("t{t}-pb{pair}"), M::Bytes(v.clone().into_bytes()));
                if del {
                    model.remove(&other);
                } else {
                    model.insert(other, M::Bytes(v.into_bytes()));
                }
            }
        }
    }
    if own_counter != 0 || model.keys().any(|_| true) {
        model.insert(format!("t{t}-counter"), M::Counter(own_counter));
    }
    (model, shared_seen)
}

fn run(workers: usize, threads: usize, ops: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(workers)).unwrap();
    let problems = Arc::new(Problems(parking_lot::Mutex::new(Vec::new())));
    let stop = Arc::new(AtomicBool::new(false));
    // A reader: every view shows each pair equal; a scan never errors.
    let reader = {
        let (db, stop, problems) = (db.clone(), stop.clone(), problems.clone());
        std::thread::spawn(move || {
            let mut views = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let view = db.view();
                let ks = view.default_keyspace();
                let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for e in ks.scan(&ScanOptions::prefix("t")) {
                    match e {
                        Ok(e) => {
                            if let Value::Bytes(b) = e.value() {
                                seen.insert(
                                    String::from_utf8_lossy(e.key()).into_owned(),
                                    b.to_vec(),
                                );
                            }
                        }
                        Err(err) => {
                            problems.add(format!("reader scan error: {err}"));
                            return views;
                        }
                    }
                }
                for (k, v) in &seen {
                    if let Some(rest) = k.strip_prefix("")
                        && rest.contains("-pa")
                    {
                        let other = k.replace("-pa", "-pb");
                        if seen.get(&other) != Some(v) {
                            problems.add(format!(
                                "half a batch: {k}={:?} but {other}={:?}",
                                String::from_utf8_lossy(v),
                                seen.get(&other)
                                    .map(|b| String::from_utf8_lossy(b).into_owned())
                            ));
                        }
                    }
                }
                views += 1;
            }
            views
        })
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (db, problems) = (db.clone(), problems.clone());
            std::thread::spawn(move || writer(db, t, ops, problems))
        })
        .collect();
    let mut model = BTreeMap::new();
    let mut shared: Vec<i64> = Vec::new();
    for h in handles {
        let (m, s) = h.join().unwrap();
        model.extend(m);
        shared.extend(s);
    }
    stop.store(true, Ordering::Relaxed);
    let views = reader.join().unwrap();
    let elapsed = started.elapsed();
    if !shared.is_empty() {
        model.insert("shared".into(), M::Counter(shared.len() as i64));
    }
    let stats = db.stats();
    println!(
        "workers {workers}, {threads} threads x {ops} ops in {elapsed:?}; {views} reader views; compactions {}, runs {}, run bytes written {}",
        stats.compactor.compactions, stats.compactor.runs, stats.compactor.run_bytes_written
    );
    let distinct: BTreeSet<i64> = shared.iter().copied().collect();
    let want: BTreeSet<i64> = (1..=shared.len() as i64).collect();
    if distinct != want {
        let dups = shared.len() - distinct.len();
        problems.add(format!(
            "shared counter: {} increments reported {} distinct totals ({dups} repeated); first missing {:?}",
            shared.len(),
            distinct.len(),
            want.difference(&distinct).take(5).collect::<Vec<_>>()
        ));
    }
    let got = snapshot(&db);
    diff(&model, &got, "live", &problems);
    let (d, r) = (db.digest().unwrap(), db.digest_recomputed().unwrap());
    if d.root != r.root {
        problems.add(format!(
            "live digest {} != recount {} ({} vs {} keys)",
            d.root_hex(),
            r.root_hex(),
            d.keys,
            r.keys
        ));
    }
    db.close().unwrap();
    let db = Db::open_with(dir.path(), opts(workers)).unwrap();
    diff(&model, &snapshot(&db), "reopened", &problems);
    let (d2, r2) = (db.digest().unwrap(), db.digest_recomputed().unwrap());
    if d2.root != r2.root || d2.root != d.root {
        problems.add(format!(
            "reopened digest {} recount {} (before {})",
            d2.root_hex(),
            r2.root_hex(),
            d.root_hex()
        ));
    }
    db.compact_now().unwrap();
    diff(&model, &snapshot(&db), "compacted", &problems);
    let problems = problems.0.lock().clone();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn diff(model: &BTreeMap<String, M>, got: &BTreeMap<String, M>, when: &str, problems: &Problems) {
    for (k, v) in model {
        match got.get(k) {
            Some(g) if g == v => {}
            other => problems.add(format!("{when}: {k}: expected {v:?}, got {other:?}")),
        }
    }
    for k in got.keys() {
        if !model.contains_key(k) {
            problems.add(format!(
                "{when}: {k} present, expected absent: {:?}",
                got.get(k)
            ));
        }
    }
}

#[test]
fn inline_writers_racing_freezes_get_exact_outcomes_and_state() {
    run(0, 6, 3000);
}

#[test]
fn pooled_writers_racing_freezes_get_exact_outcomes_and_state() {
    run(4, 6, 3000);
}

#[allow(dead_code)]
fn _unused(_: Duration) {}

/// Minimal: 4 threads increment one counter, inline (no workers), no
/// compaction at all. Each increment is durable and counts (the final
/// total is right), so each must report Applied and its own total.
#[test]
fn concurrent_increments_of_one_counter_report_applied_and_distinct_totals() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(
        dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_worker_threads(0)
            .with_memtable_bytes_max(1 << 30),
    )
    .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                (0..2000)
                    .map(|_| {
                        let o = db.increment("n", 1).unwrap();
                        (o.kind, o.counter.unwrap(), o.seq)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<(OutcomeKind, i64, u64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(db.counter("n").unwrap(), 8000, "the total is right");
    let stale: Vec<_> = all
        .iter()
        .filter(|(k, _, _)| *k != OutcomeKind::Applied)
        .collect();
    let distinct: BTreeSet<i64> = all.iter().map(|(_, c, _)| *c).collect();
    assert!(
        stale.is_empty() && distinct.len() == all.len(),
        "{} of 8000 durable increments reported {:?} (first: {:?}); {} distinct totals reported",
        stale.len(),
        stale.first().map(|s| s.0),
        stale.iter().take(5).collect::<Vec<_>>(),
        distinct.len()
    );
}
