//! Attack 6: memory. A bulk load of millions of small keys with a small
//! `memtable_bytes_max` and `cache_bytes_max`: resident memory (VmRSS) is
//! sampled during the load, after compaction, during random reads and
//! after a reopen; it must stay bounded (not grow with the key count
//! beyond the indexes' and filters' few bytes per key).
//!
//! Scale: `ATTACK_KEYS` (default 3,000,000). Run with `--release`; it
//! prints the figures. `ATTACK_RSS_MAX_MIB` is the bound (default 256).

use std::time::Instant;

use mergekv::{Batch, Db, Options, SyncMode};

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn rss_mib() -> u64 {
    status("VmRSS:")
}

fn key(i: u64) -> [u8; 16] {
    // Spread over the key space (not sequential), like hashed ids.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&h.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

#[test]
#[ignore = "a scale test: cargo test --release --test attack_memory -- --ignored --nocapture"]
fn a_bulk_load_of_millions_of_keys_stays_within_a_bounded_resident_memory() {
    let n: u64 = std::env::var("ATTACK_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000_000);
    let rss_max: u64 = std::env::var("ATTACK_RSS_MAX_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_memtable_bytes_max(4 * 1024 * 1024)
        .with_cache_bytes_max(8 * 1024 * 1024);
    let base = rss_mib();
    let db = Db::open_with(dir.path(), opts.clone()).unwrap();
    let started = Instant::now();
    let mut peak_sampled = 0;
    let mut samples = Vec::new();
    let batch_size = 1000;
    let value = [7u8; 16];
    for start in (0..n).step_by(batch_size) {
        let mut b = Batch::new();
        for i in start..(start + batch_size as u64).min(n) {
            b.put(key(i), value);
        }
        db.write(b).unwrap();
        if start % 250_000 == 0 {
            let r = rss_mib();
            peak_sampled = peak_sampled.max(r);
            let s = db.stats().compactor;
            samples.push(format!(
                "{:>5}k keys: rss {r} MiB, runs {}, memtable {} KiB, frozen {} KiB, cache {} KiB",
                start / 1000,
                s.runs,
                s.memtable_bytes / 1024,
                s.frozen_bytes / 1024,
                s.cache_bytes / 1024
            ));
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    let after_load = rss_mib();
    let report = db.compact_now().unwrap();
    let after_compact = rss_mib();
    // Random reads over every key: the cache churns.
    let mut x = 1u64;
    let reads = 300_000;
    let t = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % n;
        assert!(db.get(key(i)).unwrap().is_some(), "key {i} missing");
    }
    let read_secs = t.elapsed().as_secs_f64();
    let after_reads = rss_mib();
    let cache = db.stats().compactor.cache_bytes;
    let hwm_before_reopen = status("VmHWM:");
    drop(db);
    let t = Instant::now();
    let db = Db::open_with(dir.path(), opts).unwrap();
    let _ = db.get(key(n / 2)).unwrap();
    let reopen_ms = t.elapsed().as_millis();
    let after_reopen = rss_mib();
    drop(db);
    // A fresh process: open + one get (the figure).
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fresh_process_open_and_one_get", "--nocapture"])
        .env("ATTACK_REOPEN_DIR", dir.path())
        .env("ATTACK_KEYS", n.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let fresh = text
        .lines()
        .find(|l| l.starts_with("FRESH"))
        .unwrap_or("FRESH: (no figure)")
        .to_string();
    let disk: u64 = walk(dir.path());
    for s in &samples {
        println!("{s}");
    }
    println!("{fresh}");
    println!(
        "{n} keys loaded in {load_secs:.1}s ({:.0} keys/s); rss: base {base} MiB, peak sampled {peak_sampled}, after load {after_load}, after compact {after_compact} ({} runs), after {reads} random reads {after_reads} ({:.0} reads/s, cache {} KiB), VmHWM {hwm_before_reopen} MiB; reopen + 1 get {reopen_ms} ms, rss {after_reopen} MiB; disk {} MiB ({:.1} B/key)",
        n as f64 / load_secs,
        report.runs,
        reads as f64 / read_secs,
        cache / 1024,
        disk >> 20,
        disk as f64 / n as f64
    );
    assert!(
        hwm_before_reopen <= rss_max && after_reopen <= rss_max,
        "peak resident memory {hwm_before_reopen} MiB (after reopen {after_reopen} MiB) above {rss_max} MiB"
    );
}

fn walk(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { walk(&e.path()) } else { m.len() };
    }
    total
}

/// Run by the test above in a child process: open, one get, resident
/// memory (nothing to do unless `ATTACK_REOPEN_DIR` is set).
#[test]
fn fresh_process_open_and_one_get() {
    let Ok(dir) = std::env::var("ATTACK_REOPEN_DIR") else {
        return;
    };
    let n: u64 = std::env::var("ATTACK_KEYS").unwrap().parse().unwrap();
    let base = rss_mib();
    let t = Instant::now();
    let db = Db::open_with(
        &dir,
        Options::default().with_cache_bytes_max(8 * 1024 * 1024),
    )
    .unwrap();
    assert!(db.get(key(n / 3)).unwrap().is_some());
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let rss = rss_mib();
    println!(
        "FRESH process: open + 1 get in {ms:.1} ms; VmRSS {rss} MiB (before open {base} MiB), {:.1} B/key over the base; VmHWM {} MiB",
        ((rss - base) as f64 * 1048576.0) / n as f64,
        status("VmHWM:")
    );
}
