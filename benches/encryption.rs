//! W11 (SPEC §12): W1, W3 and W4 with encryption at rest, beside the same
//! workloads without it, in interleaved runs (each round runs both, in
//! alternating order, so the machine's drift hits both alike). Reports the
//! median of each and the median of the per-round ratios; the target is
//! at least 0.9 × unencrypted for each.
//!
//! Run: `cargo bench --bench encryption`. Knobs (environment):
//! - `MERGEKV_BENCH_KEYS`  keys for W3/W4 (default 1,000,000)
//! - `MERGEKV_BENCH_SECS`  seconds of W1 per run (default 3)
//! - `MERGEKV_BENCH_RUNS`  rounds (default 5)
//! - `MERGEKV_BENCH_DIR`   where to write (default `target/bench-data`)
//!
//! Keys are 24 bytes and values 150 bytes, as in SPEC §12. Options are the
//! defaults but for the key. W4 is measured twice: with the default block
//! cache (every block is decrypted once, then read from the cache) and
//! with a cache of a tenth of the data (most reads decrypt a block).

use std::path::{Path, PathBuf};
use std::time::Instant;

use mergekv::{Batch, Db, EncryptionKey, KeySource, Options};

const KEY_BYTES: usize = 24;
const VALUE_BYTES: usize = 150;
const BULK_BATCH_KEYS: usize = 10_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(i: u64) -> Vec<u8> {
    format!(
        "{:0width$}",
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 10u64.pow(18),
        width = KEY_BYTES
    )
    .into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    // Incompressible-ish: a value LZ4 cannot shrink much, as real data.
    let mut x = i.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8
        })
        .collect()
}

fn options(encrypted: bool, cache_bytes_max: Option<u64>) -> Options {
    let mut o = Options::default();
    if encrypted {
        o.encryption_key = Some(KeySource::Key(EncryptionKey::from_bytes([0x5a; 32])));
    }
    if let Some(cache) = cache_bytes_max {
        o.cache_bytes_max = cache;
    }
    o
}

fn fresh(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    dir.to_path_buf()
}

/// W1: one writer, each put durable before the next.
fn w1(dir: &Path, encrypted: bool, secs: f64) -> f64 {
    let db = Db::open_with(fresh(dir), options(encrypted, None)).unwrap();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        db.put(key(i), value(i)).unwrap();
        i += 1;
    }
    let rate = i as f64 / start.elapsed().as_secs_f64();
    db.close().unwrap();
    rate
}

/// W3: bulk load in batches of 10k, each durable; the load includes the
/// flushes and merges it causes (closed at the end, so every byte written
/// went through the cipher).
fn w3(dir: &Path, encrypted: bool, keys: usize) -> f64 {
    let db = Db::open_with(fresh(dir), options(encrypted, None)).unwrap();
    let start = Instant::now();
    let mut i = 0u64;
    while (i as usize) < keys {
        let mut batch = Batch::new();
        for _ in 0..BULK_BATCH_KEYS.min(keys - i as usize) {
            batch.put(key(i), value(i));
            i += 1;
        }
        db.write(batch).unwrap();
    }
    db.compact_now().unwrap();
    let rate = keys as f64 / start.elapsed().as_secs_f64();
    db.close().unwrap();
    rate
}

/// W4: random point reads from every core, on the database W3 loaded.
fn w4(dir: &Path, encrypted: bool, keys: usize, cache: Option<u64>) -> f64 {
    let db = Db::open_with(dir, options(encrypted, cache)).unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let reads_per_thread = 1_000_000u64;
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
                    found += u64::from(db.get(key(x % keys as u64)).unwrap().is_some());
                }
                found
            })
        })
        .collect();
    let found: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let total = reads_per_thread * threads as u64;
    assert_eq!(found, total, "every key read must exist");
    let rate = total as f64 / start.elapsed().as_secs_f64();
    db.close().unwrap();
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        total += if path.is_dir() {
            dir_bytes(&path)
        } else {
            entry.metadata().map_or(0, |m| m.len())
        };
    }
    total
}

struct Pair {
    name: &'static str,
    clear: Vec<f64>,
    encrypted: Vec<f64>,
    unit: &'static str,
}

impl Pair {
    fn new(name: &'static str, unit: &'static str) -> Self {
        Pair {
            name,
            clear: Vec::new(),
            encrypted: Vec::new(),
            unit,
        }
    }

    fn print(&self) {
        let ratios: Vec<f64> = self
            .clear
            .iter()
            .zip(&self.encrypted)
            .map(|(c, e)| e / c)
            .collect();
        println!(
            "| {} | {:.0} {} | {:.0} {} | {:.2} × (rounds: {}) |",
            self.name,
            median(self.clear.clone()),
            self.unit,
            median(self.encrypted.clone()),
            self.unit,
            median(ratios.clone()),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let keys: usize = env_or("MERGEKV_BENCH_KEYS", 1_000_000);
    let secs: f64 = env_or("MERGEKV_BENCH_SECS", 3.0);
    let rounds: usize = env_or("MERGEKV_BENCH_RUNS", 5);
    let root = PathBuf::from(env_or(
        "MERGEKV_BENCH_DIR",
        String::from("target/bench-data"),
    ))
    .join("w11");
    println!(
        "W11: encryption at rest, {keys} keys, W1 {secs} s, {rounds} interleaved rounds, default options"
    );
    let mut w1s = Pair::new("W1 one writer, durable per put", "/s");
    let mut w3s = Pair::new("W3 bulk load (batches of 10k, then a compaction)", "keys/s");
    let mut w4s = Pair::new("W4 point reads, all cores, default cache", "/s");
    let mut w4small = Pair::new("W4 point reads, cache a tenth of the data", "/s");
    let mut disk = (0u64, 0u64);
    for round in 0..rounds {
        // Alternate which goes first.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for encrypted in order {
            let tag = if encrypted { "enc" } else { "clear" };
            let w1_rate = w1(&root.join(format!("w1-{tag}")), encrypted, secs);
            let load = root.join(format!("w3-{tag}"));
            let w3_rate = w3(&load, encrypted, keys);
            let bytes = dir_bytes(&load);
            let w4_rate = w4(&load, encrypted, keys, None);
            let w4_small = w4(&load, encrypted, keys, Some(bytes / 10));
            if encrypted {
                w1s.encrypted.push(w1_rate);
                w3s.encrypted.push(w3_rate);
                w4s.encrypted.push(w4_rate);
                w4small.encrypted.push(w4_small);
                disk.1 = bytes;
            } else {
                w1s.clear.push(w1_rate);
                w3s.clear.push(w3_rate);
                w4s.clear.push(w4_rate);
                w4small.clear.push(w4_small);
                disk.0 = bytes;
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!();
    println!("| workload | in clear | encrypted | encrypted / clear (median of rounds) |");
    println!("|---|---|---|---|");
    for pair in [&w1s, &w3s, &w4s, &w4small] {
        pair.print();
    }
    println!(
        "| disk after W3 | {:.1} B/key | {:.1} B/key | {:.3} × |",
        disk.0 as f64 / keys as f64,
        disk.1 as f64 / keys as f64,
        disk.1 as f64 / disk.0.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&root);
}
