//! The engine benchmark (SPEC §12 workloads W1, W2, W3, W4, W6, W7, W9), for mergekv
//! alone. Peers are measured by the separate benchmark package in a later
//! issue; the raw fdatasync rate is measured here, in the same run, because
//! W1 and W2 are judged against it.
//!
//! Run: `cargo bench --bench engine`. Knobs (environment):
//! - `MERGEKV_BENCH_KEYS`   keys for W3/W4/W6 (default 1,000,000)
//! - `MERGEKV_BENCH_SECS`   seconds per timed durable workload (default 3)
//! - `MERGEKV_BENCH_RUNS`   runs per workload; the median is reported (default 3)
//! - `MERGEKV_BENCH_DURABLE_RUNS` runs of raw/W1/W2 (default: `MERGEKV_BENCH_RUNS`; 0 skips them)
//! - `MERGEKV_BENCH_WORKERS` worker threads (default: `Options::default()`)
//! - `MERGEKV_BENCH_DIR`    where to write (default `target/bench-data`, on the
//!   same disk as the project)
//!
//! Keys are 24 bytes and values 150 bytes, as in SPEC §12.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mergekv::{Batch, Db, Options, SyncMode};

const KEY_BYTES: usize = 24;
const VALUE_BYTES: usize = 150;
const BULK_BATCH_KEYS: usize = 10_000;
const W2_THREADS: usize = 64;

struct Config {
    keys: usize,
    secs: f64,
    runs: usize,
    dir: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn config() -> Config {
    let default_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-data");
    Config {
        keys: env_or("MERGEKV_BENCH_KEYS", 1_000_000),
        secs: env_or("MERGEKV_BENCH_SECS", 3.0),
        runs: env_or("MERGEKV_BENCH_RUNS", 3),
        dir: std::env::var("MERGEKV_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or(default_dir),
    }
}

/// Key number `i`, scattered so consecutive numbers are not adjacent keys.
fn key(i: u64) -> [u8; KEY_BYTES] {
    let scattered = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let mut out = [0u8; KEY_BYTES];
    let text = format!("k{scattered:023}");
    out.copy_from_slice(&text.as_bytes()[..KEY_BYTES]);
    out
}

fn value(i: u64) -> [u8; VALUE_BYTES] {
    let mut out = [b'v'; VALUE_BYTES];
    out[..8].copy_from_slice(&i.to_le_bytes());
    out
}

fn fresh_dir(cfg: &Config, name: &str) -> PathBuf {
    let dir = cfg.dir.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The median, or NaN for no samples (a skipped workload).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Default options, durable, with background compaction off so that each
/// workload measures one thing (compaction is measured in W6 and W9).
fn durable() -> Options {
    let defaults = Options::default();
    let worker_threads = env_or("MERGEKV_BENCH_WORKERS", defaults.worker_threads);
    defaults
        .with_sync_mode(SyncMode::Always)
        .with_worker_threads(worker_threads)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
}

/// Resident memory of this process, in bytes (Linux), or 0 if unknown.
fn rss_bytes() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// W9 memory: opens `dir` in a fresh process (this binary, re-run) and
/// reports how much resident memory the open database adds.
fn memory_of_open_db(dir: &Path) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .arg("--rss-of")
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The child side of [`memory_of_open_db`].
fn print_rss_of(dir: &Path) {
    let before = rss_bytes();
    let db = Db::open_with(dir, durable()).unwrap();
    let after = rss_bytes();
    println!("{}", after.saturating_sub(before));
    drop(db);
}

/// W7: import `keys` changes into a copy that already holds 20 % of the
/// keys (written there too, so they conflict), then import the same change
/// set again. Returns (changes/s, re-import changes/s, stale share).
fn w7_import(cfg: &Config) -> (f64, f64, f64) {
    let source = Db::open_with(fresh_dir(cfg, "w7-source"), durable()).unwrap();
    let target = Db::open_with(fresh_dir(cfg, "w7-target"), durable()).unwrap();
    let conflicting = cfg.keys / 5;
    load_keys(&target, 0..conflicting as u64, 1);
    load_keys(&source, 0..cfg.keys as u64, 2);
    load_keys(&target, 0..conflicting as u64 / 2, 3); // half the conflicts newer on the target
    let (bytes, _) = source.export_since(&mergekv::SyncCursor::new()).unwrap();
    let start = Instant::now();
    let first = target.import(&bytes).unwrap();
    let rate = cfg.keys as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let again = target.import(&bytes).unwrap();
    let rerate = cfg.keys as f64 / start.elapsed().as_secs_f64();
    assert_eq!(again.duplicates, cfg.keys as u64);
    (rate, rerate, first.stale as f64 / cfg.keys as f64)
}

/// Puts keys `range` in batches of 10k, values tagged with `round`.
fn load_keys(db: &Db, range: std::ops::Range<u64>, round: u64) {
    let keys: Vec<u64> = range.collect();
    for chunk in keys.chunks(BULK_BATCH_KEYS) {
        let mut batch = Batch::new();
        for &i in chunk {
            batch.put(key(i), value(i ^ (round << 40)));
        }
        db.write(batch).unwrap();
    }
}

/// Bytes of WAL segments, runs, the manifest and (in a directory of the
/// format before runs) snapshots under a database directory.
fn disk_bytes(dir: &Path) -> u64 {
    let files: u64 = ["wal", "runs", "snapshots"]
        .iter()
        .filter_map(|sub| fs::read_dir(dir.join(sub)).ok())
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    files + fs::metadata(dir.join("MANIFEST")).map_or(0, |m| m.len())
}

/// Raw disk: append 174 bytes (a key and a value) + fdatasync, as often as possible.
fn raw_fdatasync_per_sec(cfg: &Config) -> f64 {
    let path = fresh_dir(cfg, "raw").join("raw.bin");
    let mut file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let record = [7u8; KEY_BYTES + VALUE_BYTES];
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed().as_secs_f64() < cfg.secs {
        file.write_all(&record).unwrap();
        file.sync_data().unwrap();
        ops += 1;
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// W1: one writer, each put durable before the next.
fn w1_one_writer(cfg: &Config) -> f64 {
    let db = Db::open_with(fresh_dir(cfg, "w1"), durable()).unwrap();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed().as_secs_f64() < cfg.secs {
        db.put(key(i), value(i)).unwrap();
        i += 1;
    }
    i as f64 / start.elapsed().as_secs_f64()
}

/// W2: 64 writer threads, each put durable.
fn w2_many_writers(cfg: &Config) -> (f64, f64) {
    let db = Db::open_with(fresh_dir(cfg, "w2"), durable()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..W2_THREADS as u64)
        .map(|t| {
            let (db, stop, done) = (db.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut i = t << 40;
                while !stop.load(Ordering::Relaxed) {
                    db.put(key(i), value(i)).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(cfg.secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = db.stats().wal;
    let ops = done.load(Ordering::Relaxed) as f64;
    (
        ops / elapsed,
        stats.frames_written as f64 / stats.groups_written.max(1) as f64,
    )
}

/// W3: bulk load `keys` keys in batches of 10k, each batch durable.
fn w3_bulk_load(cfg: &Config, dir: &Path) -> f64 {
    let db = Db::open_with(dir, durable()).unwrap();
    let start = Instant::now();
    let mut i = 0u64;
    while (i as usize) < cfg.keys {
        let mut batch = Batch::new();
        for _ in 0..BULK_BATCH_KEYS.min(cfg.keys - i as usize) {
            batch.put(key(i), value(i));
            i += 1;
        }
        db.write(batch).unwrap();
    }
    let rate = cfg.keys as f64 / start.elapsed().as_secs_f64();
    db.close().unwrap();
    rate
}

/// W4: random point reads from every core.
fn w4_point_reads(cfg: &Config, db: &Db) -> f64 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let reads_per_thread = 2_000_000u64;
    let keys = cfg.keys as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads as u64)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut x = t.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
                let mut found = 0u64;
                for _ in 0..reads_per_thread {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    found += u64::from(db.get(key(x % keys)).unwrap().is_some());
                }
                found
            })
        })
        .collect();
    let found: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let total = reads_per_thread * threads as u64;
    assert_eq!(found, total, "every key read must exist");
    total as f64 / start.elapsed().as_secs_f64()
}

/// W6: reopen after W3 (WAL only: there are no runs yet).
fn w6_reopen(dir: &Path) -> (f64, Db) {
    let start = Instant::now();
    let db = Db::open_with(dir, durable()).unwrap();
    (start.elapsed().as_secs_f64() * 1000.0, db)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test harness probing
    }
    if let Some(i) = args.iter().position(|a| a == "--rss-of") {
        print_rss_of(Path::new(&args[i + 1]));
        return;
    }
    let cfg = config();
    println!(
        "mergekv engine benchmark: {} keys, {} s per timed workload, median of {} runs",
        cfg.keys, cfg.secs, cfg.runs
    );
    println!("data in {}", cfg.dir.display());
    let runs = cfg.runs.max(1);

    // The disk's fsync rate swings several-fold from minute to minute on a
    // shared machine, so each durable run is bracketed by raw measurements
    // and judged by the ratio to their mean.
    let mut raws = Vec::new();
    let (mut w1s, mut w1_ratios) = (Vec::new(), Vec::new());
    let (mut w2s, mut w2_ratios, mut w2_groups) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..env_or("MERGEKV_BENCH_DURABLE_RUNS", runs) {
        let before = raw_fdatasync_per_sec(&cfg);
        let w1 = w1_one_writer(&cfg);
        let middle = raw_fdatasync_per_sec(&cfg);
        let (w2, group) = w2_many_writers(&cfg);
        let after = raw_fdatasync_per_sec(&cfg);
        w1_ratios.push(w1 / ((before + middle) / 2.0));
        w2_ratios.push(w2 / ((middle + after) / 2.0 * W2_THREADS as f64));
        raws.extend([before, middle, after]);
        w1s.push(w1);
        w2s.push(w2);
        w2_groups.push(group);
    }
    let raw = median(raws);
    let (w1, w1_ratio) = (median(w1s), median(w1_ratios));
    let (w2, w2_ratio, w2_group) = (median(w2s), median(w2_ratios), median(w2_groups));
    let load_dir = cfg.dir.join("w3");
    let mut w3s = Vec::new();
    for _ in 0..runs {
        let _ = fs::remove_dir_all(&load_dir);
        w3s.push(w3_bulk_load(&cfg, &load_dir));
    }
    let w3 = median(w3s);
    let mut reopen_ms = Vec::new();
    let mut db = None;
    for _ in 0..runs {
        drop(db.take());
        let (ms, opened) = w6_reopen(&load_dir);
        reopen_ms.push(ms);
        db = Some(opened);
    }
    let w6_ms = median(reopen_ms);
    let db = db.unwrap();
    let records = db.recovery_report().ops_replayed as f64;
    let w4 = median((0..runs).map(|_| w4_point_reads(&cfg, &db)).collect());
    let wal_disk = disk_bytes(&load_dir);
    let compaction = db.compact_now().unwrap();
    drop(db);
    let mut runs_ms = Vec::new();
    let mut entries = 0.0;
    for _ in 0..runs {
        let (ms, opened) = w6_reopen(&load_dir);
        entries = opened
            .recovery_report()
            .runs
            .as_ref()
            .map_or(0, |r| r.entries) as f64;
        runs_ms.push(ms);
    }
    let w6_runs_ms = median(runs_ms);
    let keys = cfg.keys as f64;
    let disk_per_key = disk_bytes(&load_dir) as f64 / keys;
    let memory_per_key = median(
        (0..runs)
            .map(|_| memory_of_open_db(&load_dir) as f64)
            .collect(),
    ) / keys;

    println!();
    println!("| workload | mergekv | reference | ratio |");
    println!("|---|---|---|---|");
    println!("| raw append 174 B + fdatasync | {raw:.0} /s | | |");
    println!(
        "| W1 one writer, durable per put | {w1:.0} /s | raw fdatasync, bracketing runs | {w1_ratio:.2} × raw |"
    );
    println!(
        "| W2 {W2_THREADS} writers, durable per put | {w2:.0} /s ({w2_group:.1} batches per group commit) | {W2_THREADS} × raw, bracketing runs | {:.1}% of threads × raw |",
        100.0 * w2_ratio
    );
    println!("| W3 bulk load, batches of 10k, durable per batch | {w3:.0} keys/s | | |");
    println!("| W4 random point reads, all cores | {w4:.0} /s | | |");
    println!(
        "| W6 reopen after W3 (WAL only) | {w6_ms:.0} ms | {records:.0} records | {:.2} M records/s |",
        records / (w6_ms / 1000.0) / 1e6
    );
    println!(
        "| W6 reopen after W3, from the runs | {w6_runs_ms:.0} ms | {entries:.0} entries | {:.2} M entries/s; {:.2} × the WAL-only reopen |",
        entries / (w6_runs_ms / 1000.0) / 1e6,
        w6_runs_ms / w6_ms
    );
    println!(
        "| W9 disk after compaction | {disk_per_key:.0} B/key | WAL only: {:.0} B/key; raw key+value {} B | runs {} B, compaction {} ms |",
        wal_disk as f64 / keys,
        KEY_BYTES + VALUE_BYTES,
        compaction.snapshot_bytes,
        compaction.duration_ms
    );
    println!(
        "| W9 resident memory of the open database | {memory_per_key:.0} B/key | raw key+value {} B | {:.2} × raw |",
        KEY_BYTES + VALUE_BYTES,
        memory_per_key / (KEY_BYTES + VALUE_BYTES) as f64
    );
    let w7 = (0..runs).map(|_| w7_import(&cfg)).collect::<Vec<_>>();
    let (w7_rate, w7_rerate) = (
        median(w7.iter().map(|r| r.0).collect()),
        median(w7.iter().map(|r| r.1).collect()),
    );
    println!(
        "| W7 import {} changes, 20% conflicting | {w7_rate:.0} changes/s ({:.0}% stale) | re-import {w7_rerate:.0} changes/s | re-import {:.2} × first |",
        cfg.keys,
        100.0 * w7[0].2,
        w7_rerate / w7_rate
    );
    let _ = fs::remove_dir_all(&cfg.dir);
}
