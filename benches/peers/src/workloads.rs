//! The child side: one workload on one engine, in a process of its own.
//! Results go to stdout as `@ <row> <value>` lines for the parent.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::data::{self, BATCH_KEYS, Key, Rng, Value};
use crate::engines::{EngineKind, Store};
use crate::sys;

/// What the parent tells a child to do.
pub struct ChildArgs {
    pub task: String,
    pub engine: Option<EngineKind>,
    pub keys: u64,
    pub secs: f64,
    pub threads: usize,
    /// The database directory (fresh for writes, a build for reads).
    pub db: PathBuf,
    pub seed: u64,
    pub cache_bytes: Option<u64>,
}

pub fn emit(row: &str, value: f64) {
    println!("@ {row} {value}");
}

/// W4's cached working set: this many keys, adjacent in key order, at most
/// a tenth of the keys and at most 16 MiB of raw key and value bytes (half
/// of fjall's default 32 MiB block cache, the smallest default cache of the
/// four; redb's and sled's are 1 GiB, and mergekv holds everything).
pub fn cached_working_set_keys(keys: u64) -> u64 {
    let by_bytes = (16 << 20) / (data::KEY_BYTES + data::VALUE_BYTES) as u64;
    (keys / 10).min(by_bytes).max(1)
}

pub fn run(args: &ChildArgs) {
    match args.task.as_str() {
        "raw-append" => raw(args, false),
        "raw-presized" => raw(args, true),
        "w1" => durable_puts(args, 1, "w1"),
        "w2" => durable_puts(args, args.threads, &format!("w2_{}", args.threads)),
        "w3" => bulk_load(args),
        "build" => build(args),
        "w4-cached" => point_reads(args, true),
        "w4-uniform" => point_reads(args, false),
        "w5" => scans(args),
        "w6" => reopen(args),
        "w12-load" => big_load(args),
        "w12-read" => big_read(args),
        "wamp" => write_amplification(args),
        other => panic!("unknown child task {other}"),
    }
}

fn engine(args: &ChildArgs) -> EngineKind {
    args.engine.expect("this task needs --engine")
}

/// The durability bar: 128-byte writes, each followed by fdatasync, either
/// appended (the file grows, so each sync also writes the inode) or into a
/// file written full and synced beforehand.
fn raw(args: &ChildArgs, presized: bool) {
    const RECORD: usize = 128;
    const PRESIZED_BYTES: u64 = 64 << 20;
    std::fs::create_dir_all(&args.db).unwrap();
    let path = args.db.join(if presized {
        "raw-presized"
    } else {
        "raw-append"
    });
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    if presized {
        let zeros = vec![0u8; 1 << 20];
        for i in 0..(PRESIZED_BYTES >> 20) {
            file.write_all_at(&zeros, i << 20).unwrap();
        }
        file.sync_all().unwrap();
    }
    let mut record = [0u8; RECORD];
    let mut rng = Rng::new(args.seed);
    let deadline = Duration::from_secs_f64(args.secs);
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < deadline {
        rng.fill(&mut record);
        let offset = (n * RECORD as u64) % if presized { PRESIZED_BYTES } else { u64::MAX };
        file.write_all_at(&record, offset).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    emit(
        if presized {
            "raw_presized"
        } else {
            "raw_append"
        },
        rate,
    );
}

/// W1/W2: `threads` writers, each put its own durable commit, for `secs`.
fn durable_puts(args: &ChildArgs, threads: usize, row: &str) {
    let store = engine(args).open(&args.db, None);
    let rate = timed_threads(threads, args.secs, |t, stop| {
        let mut rng = Rng::new(args.seed ^ ((t as u64) << 40));
        let mut value: Value = [0; data::VALUE_BYTES];
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key: Key = data::key(((t as u64) << 40) | n);
            rng.fill(&mut value);
            store.put_durable(&key, &value);
            n += 1;
        }
        (n, 0)
    });
    emit(row, rate);
    store.close();
}

/// Runs `body(thread, stop)` on `threads` scoped threads, started together
/// and stopped after `secs`; returns operations per second (the sum of the
/// first numbers the bodies return). A non-zero sum of the second numbers
/// (misses) is reported on stderr.
fn timed_threads<F>(threads: usize, secs: f64, body: F) -> f64
where
    F: Fn(usize, &AtomicBool) -> (u64, u64) + Sync,
{
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let misses = AtomicU64::new(0);
    let barrier = Barrier::new(threads + 1);
    let start = std::thread::scope(|scope| {
        for t in 0..threads {
            let (body, stop, total, misses, barrier) = (&body, &stop, &total, &misses, &barrier);
            scope.spawn(move || {
                barrier.wait();
                let (n, missed) = body(t, stop);
                total.fetch_add(n, Ordering::Relaxed);
                misses.fetch_add(missed, Ordering::Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        start
    });
    // The scope has joined every thread: their last operations are counted.
    let elapsed = start.elapsed().as_secs_f64();
    let missed = misses.load(Ordering::Relaxed);
    if missed > 0 {
        eprintln!("warning: {missed} reads found no value");
    }
    total.load(Ordering::Relaxed) as f64 / elapsed
}

/// Loads keys `0..keys` in durable batches of 10k; returns keys/s.
fn load(store: &dyn Store, keys: u64) -> f64 {
    let start = Instant::now();
    let mut items: Vec<(Key, Value)> = Vec::with_capacity(BATCH_KEYS);
    let mut i = 0;
    while i < keys {
        items.clear();
        let end = (i + BATCH_KEYS as u64).min(keys);
        items.extend((i..end).map(|j| (data::key(j), data::value(j))));
        store.write_batch_durable(&items);
        i = end;
    }
    keys as f64 / start.elapsed().as_secs_f64()
}

/// W3 (and W9's load figures): a bulk load into a fresh directory.
fn bulk_load(args: &ChildArgs) {
    let baseline = sys::rss();
    let store = engine(args).open(&args.db, None);
    let rate = load(&*store, args.keys);
    let grown = sys::rss().saturating_sub(baseline);
    store.close();
    emit("w3", rate);
    emit("w9_load_growth", grown as f64 / args.keys as f64);
    emit("w9_load_peak", sys::peak_rss() as f64 / (1 << 20) as f64);
}

/// mergekv only: write amplification of the run files under the default
/// options: load `keys` keys as W3 does, then overwrite `keys` random keys
/// twice over (batches of 10k, new values), then one `compact_now`.
/// Reports bytes written to runs (flushes and merges) per byte of keys
/// and values written by the user, before and including the final full
/// merge.
fn write_amplification(args: &ChildArgs) {
    let db = mergekv::Db::open_with(&args.db, crate::engines::mergekv::mergekv_options(None))
        .expect("open");
    let mut rng = Rng::new(args.seed);
    let mut user_bytes = 0u64;
    let batch_of = |numbers: &mut dyn Iterator<Item = u64>, round: u64| {
        let mut batch = mergekv::Batch::new();
        let mut n = 0;
        for i in numbers {
            let mut v = data::value(i);
            v[0] = round as u8;
            batch.put(data::key(i), v);
            n += 1;
        }
        db.write(batch).expect("write");
        n as u64 * (16 + 100)
    };
    let mut i = 0;
    while i < args.keys {
        let end = (i + BATCH_KEYS as u64).min(args.keys);
        user_bytes += batch_of(&mut (i..end), 0);
        i = end;
    }
    for round in 1..=2u64 {
        let mut done = 0;
        while done < args.keys {
            // A batch touches a key once.
            let distinct: std::collections::BTreeSet<u64> = (0..BATCH_KEYS as u64)
                .map(|_| rng.below(args.keys))
                .collect();
            user_bytes += batch_of(&mut distinct.into_iter(), round);
            done += BATCH_KEYS as u64;
        }
    }
    let before_stats = db.stats();
    let before = before_stats.compactor.run_bytes_written;
    db.compact_now().expect("compact");
    let stats = db.stats();
    emit("wamp_background", before as f64 / user_bytes as f64);
    emit(
        "wamp_with_full_merge",
        stats.compactor.run_bytes_written as f64 / user_bytes as f64,
    );
    emit(
        "wamp_runs_before_full_merge",
        before_stats.compactor.runs as f64,
    );
    db.close().expect("close");
}

/// The database the read workloads open: loaded as W3 loads, then the
/// engine's own compaction or flush, then a clean close.
fn build(args: &ChildArgs) {
    let mut store = engine(args).open(&args.db, None);
    let rate = load(&*store, args.keys);
    let start = Instant::now();
    store.compact();
    let compact_secs = start.elapsed().as_secs_f64();
    store.close();
    emit("build_load", rate);
    emit("build_compact_secs", compact_secs);
}

/// W4: random point reads for `secs` on `threads` threads, from the cached
/// working set (read once first, untimed) or from all keys.
fn point_reads(args: &ChildArgs, cached: bool) {
    // `--cache BYTES` (by hand: W4 with a cache of 10 % of the data).
    let store = engine(args).open(&args.db, args.cache_bytes);
    let numbers: Vec<u64> = if cached {
        let set =
            data::contiguous_key_numbers(args.keys, cached_working_set_keys(args.keys), args.seed);
        for &i in &set {
            assert!(store.get(&data::key(i)).is_some(), "key {i} missing");
        }
        set
    } else {
        Vec::new()
    };
    let rate = timed_threads(args.threads, args.secs, |t, stop| {
        let mut rng = Rng::new(args.seed ^ 0xA11 ^ ((t as u64) << 32));
        let (mut n, mut missed) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            // Check the flag only every 64 reads.
            for _ in 0..64 {
                let i = if numbers.is_empty() {
                    rng.below(args.keys)
                } else {
                    numbers[rng.below(numbers.len() as u64) as usize]
                };
                if store.get(&data::key(i)).is_none() {
                    missed += 1;
                }
            }
            n += 64;
        }
        (n, missed)
    });
    let mode = if cached { "cached" } else { "uniform" };
    emit(&format!("w4_{mode}_{}", args.threads), rate);
    drop(numbers);
    store.close();
}

/// W5: one full scan (after an untimed one), then 100k scans of 10 keys
/// from random keys.
fn scans(args: &ChildArgs) {
    const RANGE_SCANS: u64 = 100_000;
    let store = engine(args).open(&args.db, None);
    let (warm, _) = store.scan_all();
    let start = Instant::now();
    let (n, bytes) = store.scan_all();
    let full = n as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box(bytes);
    if n != args.keys || warm != n {
        eprintln!(
            "warning: full scan read {n} entries (and {warm}), expected {}",
            args.keys
        );
    }
    let mut rng = Rng::new(args.seed ^ 0x5CA);
    let start = Instant::now();
    let mut read = 0;
    for _ in 0..RANGE_SCANS {
        read += store.scan_from(&data::key(rng.below(args.keys)), 10);
    }
    let ranges = RANGE_SCANS as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box(read);
    store.close();
    emit("w5_full", full);
    emit("w5_range", ranges);
}

/// W6 (and W9's resident memory after open): open a cleanly closed
/// database and read one key; then close it cleanly again.
fn reopen(args: &ChildArgs) {
    let key = data::key(Rng::new(args.seed).below(args.keys));
    let baseline = sys::rss();
    let start = Instant::now();
    let store = engine(args).open(&args.db, None);
    let found = store.get(&key);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let grown = sys::rss().saturating_sub(baseline);
    assert!(found.is_some(), "the first get found nothing");
    store.close();
    emit("w6", ms);
    emit("w9_rss_open", grown as f64 / args.keys as f64);
}

/// W12: load `keys` (20M) with the given cache into a fresh directory,
/// compact, close.
fn big_load(args: &ChildArgs) {
    let mut store = engine(args).open(&args.db, args.cache_bytes);
    let rate = load(&*store, args.keys);
    store.compact();
    store.close();
    emit("w12_load", rate);
    emit("w12_load_peak", sys::peak_rss() as f64 / (1 << 20) as f64);
}

/// W12: reopen with the cache, first get, then 100k random reads.
fn big_read(args: &ChildArgs) {
    const READS: u64 = 100_000;
    let mut rng = Rng::new(args.seed ^ 0xB16);
    let start = Instant::now();
    let store = engine(args).open(&args.db, args.cache_bytes);
    assert!(store.get(&data::key(rng.below(args.keys))).is_some());
    let open_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let mut missed = 0;
    for _ in 0..READS {
        if store.get(&data::key(rng.below(args.keys))).is_none() {
            missed += 1;
        }
    }
    let rate = READS as f64 / start.elapsed().as_secs_f64();
    if missed > 0 {
        eprintln!("warning: {missed} reads found no value");
    }
    let peak = sys::peak_rss() as f64 / (1 << 20) as f64;
    store.close();
    emit("w12_open", open_ms);
    emit("w12_reads", rate);
    emit("w12_read_peak", peak);
}
