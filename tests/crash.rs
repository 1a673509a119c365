//! Crash safety: a child process does concurrent durable writes and is killed
//! with SIGKILL at a random moment; every write it reported as acknowledged
//! must be there after reopen, and no batch may be partly visible.
//!
//! The child is this test binary itself, re-run with `MERGEKV_CRASH_CHILD`
//! set. Rounds: `MERGEKV_CRASH_ROUNDS` (default 3); seed:
//! `MERGEKV_CRASH_SEED` (default: time, printed on failure).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Rng;
use mergekv::{Batch, Db, Options, SyncMode};

const CHILD_ENV: &str = "MERGEKV_CRASH_CHILD";
const COMPACT_ENV: &str = "MERGEKV_CRASH_COMPACT";
const WRITER_THREADS: usize = 4;

/// The child: writes until killed, printing one line per acknowledged batch.
/// Not a test by itself: the crash test runs it in a child process.
#[test]
#[ignore = "the child process of the crash test, which runs it"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // not running as the child
    };
    let round: u64 = std::env::var("MERGEKV_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let compacting = std::env::var(COMPACT_ENV).is_ok();
    let options = Options::default()
        .with_sync_mode(SyncMode::Always)
        .with_segment_size_bytes_max(64 * 1024)
        // With compaction on, the compactor flushes runs, merges them and
        // truncates all the time, so the kill lands inside compactions too.
        .with_compaction_wal_bytes_min(if compacting { 32 * 1024 } else { u64::MAX })
        .with_compactor_tick_ms(1);
    let db = Db::open_with(&dir, options).unwrap();
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || child_writer(&db, round, t))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn child_writer(db: &Db, round: u64, thread: usize) {
    let stdout = std::io::stdout();
    for i in 0.. {
        let key = format!("r{round}-t{thread}-{i}");
        let mut batch = Batch::new();
        batch
            .put(format!("{key}-a"), &key)
            .put(format!("{key}-b"), &key)
            .increment("acked-batches", 1);
        let outcomes = db.write(batch).unwrap();
        let line = format!("ack {key} {}\n", outcomes[2].counter.unwrap());
        stdout.lock().write_all(line.as_bytes()).unwrap();
    }
}

/// Runs the child against `dir`, kills it after `delay`, returns its acks.
fn run_and_kill(
    dir: &std::path::Path,
    round: u64,
    delay: Duration,
    compacting: bool,
) -> Vec<(String, i64)> {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    if compacting {
        command.env(COMPACT_ENV, "1");
    }
    let mut child = command
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env("MERGEKV_CRASH_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let mut parts = line.strip_prefix("ack ")?.split(' ');
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn sigkill_under_concurrent_durable_writes_loses_nothing_acknowledged() {
    crash_rounds(false);
}

#[test]
fn sigkill_while_the_compactor_runs_under_load_loses_nothing_acknowledged() {
    crash_rounds(true);
}

fn crash_rounds(compacting: bool) {
    let rounds: u64 = std::env::var("MERGEKV_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (mut rng, seed) = match std::env::var("MERGEKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => (Rng::new(seed), seed),
        None => Rng::from_time(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked: Vec<String> = Vec::new();
    let mut max_counter_acked = 0;
    for round in 0..rounds {
        let delay = Duration::from_millis(150 + rng.below(400));
        let acked = run_and_kill(dir.path(), round, delay, compacting);
        let db = Db::open(dir.path())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen failed: {e}"));
        for (key, counter) in &acked {
            max_counter_acked = max_counter_acked.max(*counter);
            for half in ["a", "b"] {
                assert_eq!(
                    db.get(format!("{key}-{half}")).unwrap().as_deref(),
                    Some(key.as_bytes()),
                    "seed {seed} round {round}: acknowledged {key} lost"
                );
            }
        }
        all_acked.extend(acked.into_iter().map(|(k, _)| k));
        let batches = assert_batches_atomic(&db, seed, round);
        let counter = db.counter("acked-batches").unwrap();
        assert_eq!(
            counter, batches,
            "seed {seed}: counter disagrees with visible batches"
        );
        assert!(
            counter >= max_counter_acked,
            "seed {seed}: counter {counter} < acknowledged {max_counter_acked}"
        );
        assert!(all_acked.len() as i64 <= counter);
    }
    assert!(
        !all_acked.is_empty(),
        "the child never acknowledged a write (seed {seed})"
    );
    if compacting {
        // A compaction writes runs and the MANIFEST naming them.
        let runs = std::fs::read_dir(dir.path().join("runs")).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".run"))
            })
            .count()
        });
        assert!(
            dir.path().join("MANIFEST").exists() && runs > 0,
            "the child never compacted (seed {seed})"
        );
    }
}

/// Every batch is either fully visible or not at all; returns how many are.
fn assert_batches_atomic(db: &Db, seed: u64, round: u64) -> i64 {
    let mut halves = std::collections::BTreeMap::<String, u8>::new();
    for entry in db
        .scan(&mergekv::ScanOptions::prefix("r"))
        .map(Result::unwrap)
    {
        let key = String::from_utf8(entry.key().to_vec()).unwrap();
        let (batch, _) = key.rsplit_once('-').unwrap();
        *halves.entry(batch.to_string()).or_default() += 1;
    }
    for (batch, count) in &halves {
        assert_eq!(
            *count, 2,
            "seed {seed} round {round}: batch {batch} partly visible"
        );
    }
    halves.len() as i64
}
