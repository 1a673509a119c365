//! W8: WAL shipping on loopback. Follower catch-up of 1M keys (MB/s of
//! leader WAL, keys/s) from the WAL and from a snapshot, and streaming lag
//! (p50/p99) at a fixed write rate.
//!
//! Run: `cargo bench --bench replication`. Knobs (environment):
//! - `MERGEKV_BENCH_KEYS`   keys for catch-up (default 1,000,000)
//! - `MERGEKV_BENCH_RUNS`   catch-up runs; the median is reported (default 3)
//! - `MERGEKV_BENCH_RATE`   streaming writes per second (default 50,000)
//! - `MERGEKV_BENCH_SECS`   seconds of streaming (default 5)
//!
//! The follower applies with `SyncMode::Always` (an fdatasync per batch) in
//! catch-up. Streaming runs both sides with `SyncMode::Never`, so the lag
//! (from the start of the leader's write call until the follower's
//! position covers it) is the replication path's own (commit, read, send,
//! verify, apply), not the disk's; with `Always`, add the leader's and the
//! follower's fdatasync.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::server::{ReplicationOptions, ReplicationServer};
use mergekv::{Batch, Db, Options, SyncMode};

const VALUE_BYTES: usize = 100;
const LOAD_BATCH_KEYS: usize = 10_000;
/// Writes per leader batch while streaming (one batch per tick).
const STREAM_BATCH_WRITES: usize = 50;
const WAIT: Duration = Duration::from_secs(600);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Leader {
    _dir: tempfile::TempDir,
    db: Db,
    server: ReplicationServer,
    token: String,
}

fn leader(options: Options) -> Leader {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), options).unwrap();
    let (auth, token) = common::replication_auth(&db);
    let server =
        ReplicationServer::start(&db, "127.0.0.1:0", ReplicationOptions::new(auth)).unwrap();
    Leader {
        _dir: dir,
        db,
        server,
        token,
    }
}

fn load(db: &Db, keys: usize) {
    let value = vec![b'v'; VALUE_BYTES];
    for start in (0..keys).step_by(LOAD_BATCH_KEYS) {
        let mut batch = Batch::new();
        for i in start..(start + LOAD_BATCH_KEYS).min(keys) {
            batch.put(format!("key-{i:010}"), &value);
        }
        db.write(batch).unwrap();
    }
}

fn follower_options(leader: &Leader, sync_mode: SyncMode) -> FollowerOptions {
    let mut options = FollowerOptions::new(leader.server.local_addr().to_string(), &leader.token);
    options.db_options.sync_mode = sync_mode;
    options
}

/// One catch-up: (seconds, leader WAL bytes shipped, snapshots installed).
fn catch_up(leader: &Leader) -> (f64, u64, u64) {
    let target = leader.db.stats().wal.last_seq;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let follower = Follower::open(dir.path(), follower_options(leader, SyncMode::Always)).unwrap();
    assert!(
        follower.wait_for_seq(target, WAIT),
        "{:?}",
        follower.status()
    );
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(follower.db().digest().unwrap(), leader.db.digest().unwrap());
    let snapshots = follower.status().snapshots_installed;
    (seconds, leader.db.stats().wal.wal_bytes, snapshots)
}

fn report_catch_up(
    what: &str,
    keys: usize,
    runs: usize,
    leader: &Leader,
    bytes_of: impl Fn(u64) -> u64,
) {
    let mut seconds = Vec::new();
    let mut shipped = 0;
    let mut snapshots = 0;
    for _ in 0..runs {
        let (s, wal_bytes, snaps) = catch_up(leader);
        seconds.push(s);
        shipped = bytes_of(wal_bytes);
        snapshots = snaps;
    }
    let s = median(seconds);
    println!(
        "W8 catch-up {what}: {keys} keys, {:.1} MB in {:.2} s: {:.0} MB/s, {:.0} keys/s (snapshots installed: {snapshots}; median of {runs})",
        shipped as f64 / 1e6,
        s,
        shipped as f64 / 1e6 / s,
        keys as f64 / s
    );
}

fn snapshot_bytes(db: &Db) -> u64 {
    db.stats().compactor.snapshot_bytes
}

fn streaming_lag(rate_per_s: usize, secs: f64) {
    let leader = leader(Options::default().with_sync_mode(SyncMode::Never));
    let dir = tempfile::tempdir().unwrap();
    let follower = Follower::open(dir.path(), follower_options(&leader, SyncMode::Never)).unwrap();
    assert!(follower.wait_for_seq(leader.db.stats().wal.last_seq, WAIT));
    let follower = Arc::new(follower);
    // The watcher records when each new follower position appears.
    let watcher = {
        let follower = follower.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = follower.status().position.seq;
            let quiet = Duration::from_secs(2);
            while follower.wait_until(quiet, |s| s.position.seq > last) {
                last = follower.status().position.seq;
                seen.push((last, Instant::now()));
            }
            seen
        })
    };
    let ticks = (rate_per_s as f64 * secs / STREAM_BATCH_WRITES as f64) as usize;
    let tick = Duration::from_secs_f64(STREAM_BATCH_WRITES as f64 / rate_per_s as f64);
    let value = vec![b's'; VALUE_BYTES];
    let started = Instant::now();
    let mut written = Vec::with_capacity(ticks);
    for t in 0..ticks {
        // Fixed schedule: tick t starts at t × tick. Sleeping paces the
        // writer (a spin would take one of the two cores from the follower).
        let due = started + tick * t as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let mut batch = Batch::new();
        for i in 0..STREAM_BATCH_WRITES {
            batch.put(format!("stream-{t:08}-{i:02}"), &value);
        }
        // Lag is measured from the start of the leader's write call.
        let write_started = Instant::now();
        let outcomes = leader.db.write(batch).unwrap();
        let seq = outcomes.last().map_or(0, |o| o.seq);
        written.push((seq, write_started));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let seen = watcher.join().unwrap();
    let mut lags_ms: Vec<f64> = written
        .iter()
        .filter_map(|(seq, at)| {
            let index = seen.partition_point(|(s, _)| s < seq);
            seen.get(index)
                .map(|(_, when)| when.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    lags_ms.sort_by(f64::total_cmp);
    let achieved = (ticks * STREAM_BATCH_WRITES) as f64 / elapsed;
    println!(
        "W8 streaming at {rate_per_s} writes/s target ({achieved:.0} achieved, {STREAM_BATCH_WRITES}-write batches, SyncMode::Never both sides): lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} batches",
        percentile(&lags_ms, 0.5),
        percentile(&lags_ms, 0.99),
        lags_ms.last().copied().unwrap_or(0.0),
        lags_ms.len()
    );
}

fn main() {
    let keys: usize = env_or("MERGEKV_BENCH_KEYS", 1_000_000);
    let runs: usize = env_or("MERGEKV_BENCH_RUNS", 3);
    let rate: usize = env_or("MERGEKV_BENCH_RATE", 50_000);
    let secs: f64 = env_or("MERGEKV_BENCH_SECS", 5.0);
    println!(
        "W8 replication on loopback; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // From the WAL: the leader never compacts, so every segment is there.
    let from_wal = leader(
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_compaction_wal_bytes_min(u64::MAX)
            .with_compaction_interval_ms(0),
    );
    load(&from_wal.db, keys);
    report_catch_up("from the WAL", keys, runs, &from_wal, |wal_bytes| wal_bytes);
    drop(from_wal);
    // From a snapshot: the leader compacted, so the WAL is gone.
    let from_snapshot = leader(Options::default().with_sync_mode(SyncMode::Never));
    load(&from_snapshot.db, keys);
    from_snapshot.db.compact_now().unwrap();
    let bytes = snapshot_bytes(&from_snapshot.db);
    report_catch_up("from a snapshot", keys, runs, &from_snapshot, |_| bytes);
    drop(from_snapshot);
    streaming_lag(rate, secs);
}
