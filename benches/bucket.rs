//! W12: bucket sync (feature `object-store`, src/bucket/). Three parts:
//!
//! 1. **sync**: copy A writes N changes (16-byte keys, 32-byte values),
//!    then A's round publishes them to a `file://` bucket in a temporary
//!    folder and B's round pulls them, each timed; the bucket's bytes per
//!    change beside the one-shot change set's (`export_since`). With
//!    `MERGEKV_S3_URL` set (an S3 server; credentials and endpoint from
//!    the usual `AWS_*` variables), the same through it, interleaved.
//! 2. **idle**: C copies (a few keys each) sync through one `file://`
//!    bucket until a whole pass changes nothing; then rounds of one copy
//!    when nothing is new, and after exactly one other copy changed: the
//!    requests each round made and its time.
//! 3. **stream**: a database of M changes exported to a file with
//!    `Db::export_to`, then imported with `Db::import_stream` from a
//!    `BufReader<File>` into a fresh database, each step in a child
//!    process whose peak RSS (VmHWM) is read at its end; the import twice,
//!    with the default options and with a small memory budget.
//!
//! Run: `cargo bench --features object-store --bench bucket`. Knobs:
//! - `MERGEKV_BENCH_PARTS`        which parts (default `sync,idle,stream`)
//! - `MERGEKV_BENCH_RUNS`         rounds of parts 1 and 2 (default 3)
//! - `MERGEKV_BENCH_KEYS`         changes of part 1 (default 1,000,000)
//! - `MERGEKV_BENCH_COPIES`       copies of part 2 (default 100)
//! - `MERGEKV_BENCH_STREAM_KEYS`  changes of part 3 (default 10,000,000)
//! - `MERGEKV_BENCH_DIR`          where to write (default `target/bench-data`)
//! - `MERGEKV_S3_URL`             `s3://bucket/prefix` to run part 1 through too
//!
//! Databases use the default options (`SyncMode::Always`) but for
//! background compaction, which is off so a round measures the round;
//! part 1's A and part 3's source are compacted after loading. Part 2's
//! copies use one worker thread each (a hundred databases in one process).
//! Part 3's importing children open their database as a user would: the
//! default options (compaction on), then memtable and cache of 8 MiB.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mergekv::bucket::head::{Head, head_name};
use mergekv::bucket::{Bucket, RequestCounts, SyncReport};
use mergekv::{Batch, Db, Options, SyncCursor};

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 32;
const BATCH_KEYS: usize = 10_000;
const MIB: f64 = 1024.0 * 1024.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 16 bytes, unique per `i` (an odd multiplier is a bijection mod 2^64).
fn key(i: u64) -> Vec<u8> {
    format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).into_bytes()
}

/// 32 pseudo-random bytes: LZ4 cannot shrink them much, as real data.
fn value(i: u64) -> Vec<u8> {
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

fn options() -> Options {
    Options::default()
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
}

fn load(db: &Db, from: u64, n: u64) {
    let mut i = from;
    while i < from + n {
        let end = (i + BATCH_KEYS as u64).min(from + n);
        let mut batch = Batch::new();
        for j in i..end {
            batch.put(key(j), value(j));
        }
        db.write(batch).unwrap();
        i = end;
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn requests(r: &RequestCounts) -> String {
    format!(
        "list {}, get {}, put {}, delete {}, retried {}",
        r.list, r.get, r.put, r.delete, r.retried
    )
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!("{:016x}", u64::from_le_bytes(b))
}

/// Bytes and objects in the bucket: every head, and everything under the
/// folder of each copy that has a head (claim, change objects, snapshots).
fn bucket_bytes(bucket: &Bucket) -> (u64, u64) {
    let mut bytes = 0;
    let mut objects = 0;
    let heads = bucket.list_objects("heads").unwrap();
    for (name, size) in &heads {
        bytes += size;
        objects += 1;
        let node = name.rsplit('/').next().unwrap();
        for dir in ["", "/changes", "/snapshots"] {
            for (_, size) in bucket.list_objects(&format!("nodes/{node}{dir}")).unwrap() {
                bytes += size;
                objects += 1;
            }
        }
    }
    (bytes, objects)
}

// ---------------------------------------------------------------- part 1

struct SyncRun {
    publish_s: f64,
    pull_s: f64,
    pushed_bytes: u64,
    pulled_bytes: u64,
    bucket_bytes: u64,
    bucket_objects: u64,
    change_set_bytes: Option<u64>,
    publish: SyncReport,
    pull: SyncReport,
    /// Small rounds afterwards, each with its report and seconds.
    after: Vec<(SyncReport, f64)>,
    /// The same changes without a bucket: `export_to` into memory, then
    /// `import_stream` into a third database (seconds each).
    reference: (f64, f64),
}

/// The small rounds run after the big one, in this order.
const AFTER: [&str; 5] = [
    "A, after B's first round (B's head is new to A)",
    "A again, nothing new",
    "B again, nothing new",
    "A writes one key and syncs",
    "B pulls that one change",
];

fn sync_run(root: &Path, url: Option<&str>, keys: u64, change_set: bool) -> SyncRun {
    let dir = tempfile::Builder::new()
        .prefix("sync")
        .tempdir_in(root)
        .unwrap();
    let url = match url {
        // A fresh prefix per run, so runs do not see each other's copies.
        Some(u) => format!("{}/mergekv-bench-{}", u.trim_end_matches('/'), random_hex()),
        None => format!("file://{}", dir.path().join("bucket").display()),
    };
    let a = Db::open_with(dir.path().join("a"), options()).unwrap();
    let b = Db::open_with(dir.path().join("b"), options()).unwrap();
    load(&a, 0, keys);
    a.compact_now().unwrap();
    let change_set_bytes =
        change_set.then(|| a.export_since(&SyncCursor::new()).unwrap().0.len() as u64);
    // Two copies, two processes' worth of bucket handles.
    let (bucket_a, bucket_b) = (Bucket::open(&url).unwrap(), Bucket::open(&url).unwrap());
    let start = Instant::now();
    let publish = bucket_a.sync(&a).unwrap();
    let publish_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let pull = bucket_b.sync(&b).unwrap();
    let pull_s = start.elapsed().as_secs_f64();
    assert_eq!(publish.pushed.changes, keys, "{publish:?}");
    assert_eq!(pull.pulled.changes, keys, "{pull:?}");
    for i in [0, keys / 2, keys - 1] {
        assert_eq!(b.get(key(i)).unwrap().as_deref(), Some(&value(i)[..]));
    }
    let (bucket_bytes, bucket_objects) = bucket_bytes(&bucket_b);
    // Rounds of copies that hold N keys when little or nothing is new.
    let mut after = vec![
        timed_sync(&bucket_a, &a),
        timed_sync(&bucket_a, &a),
        timed_sync(&bucket_b, &b),
    ];
    a.put("one more", "change").unwrap();
    after.push(timed_sync(&bucket_a, &a));
    after.push(timed_sync(&bucket_b, &b));
    assert_eq!(after[3].0.pushed.changes, 1, "{:?}", after[3].0);
    assert_eq!(after[4].0.pulled.changes, 1, "{:?}", after[4].0);
    // The same changes without a bucket, for reference.
    let c = Db::open_with(dir.path().join("c"), options()).unwrap();
    let start = Instant::now();
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    let export_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    c.import_stream(&mut &stream[..]).unwrap();
    let reference = (export_s, start.elapsed().as_secs_f64());
    SyncRun {
        reference,
        publish_s,
        pull_s,
        pushed_bytes: publish.pushed.bytes,
        pulled_bytes: pull.pulled.bytes,
        bucket_bytes,
        bucket_objects,
        change_set_bytes,
        publish,
        pull,
        after,
    }
}

fn print_sync(name: &str, keys: u64, runs: &[SyncRun], change_set_bytes: u64) {
    let n = keys as f64;
    let publish: Vec<f64> = runs.iter().map(|r| r.publish_s).collect();
    let pull: Vec<f64> = runs.iter().map(|r| r.pull_s).collect();
    let both: Vec<f64> = runs.iter().map(|r| r.publish_s + r.pull_s).collect();
    let export: Vec<f64> = runs.iter().map(|r| r.reference.0).collect();
    let import: Vec<f64> = runs.iter().map(|r| r.reference.1).collect();
    let bytes = runs[0].pushed_bytes as f64;
    println!("### {name}: {keys} changes, {} runs", runs.len());
    println!();
    println!("| step | seconds (median) | changes/s | MB/s | seconds, each run |");
    println!("|---|---|---|---|---|");
    for (step, secs, b) in [
        (
            "A publishes (`sync`)",
            &publish,
            runs[0].pushed_bytes as f64,
        ),
        ("B pulls (`sync`)", &pull, runs[0].pulled_bytes as f64),
        ("both", &both, bytes),
        (
            "reference, no bucket: `export_to` into memory",
            &export,
            bytes,
        ),
        (
            "reference, no bucket: `import_stream` from memory",
            &import,
            bytes,
        ),
    ] {
        let m = median(secs);
        println!(
            "| {step} | {m:.2} | {:.0} | {:.1} | {} |",
            n / m,
            b / m / 1e6,
            list(secs, 2)
        );
    }
    let stored = median(
        &runs
            .iter()
            .map(|r| r.bucket_bytes as f64)
            .collect::<Vec<_>>(),
    );
    println!();
    println!(
        "bucket after the two rounds: {} objects, {stored:.0} bytes = {:.3} B/change; \
         the change object alone {bytes:.0} bytes = {:.3} B/change; the one-shot change set \
         (`export_since`) {change_set_bytes} bytes = {:.3} B/change",
        runs[0].bucket_objects,
        stored / n,
        bytes / n,
        change_set_bytes as f64 / n
    );
    println!(
        "requests: publish {}; pull {}",
        requests(&runs[0].publish.requests),
        requests(&runs[0].pull.requests)
    );
    println!();
    println!("Then small rounds of the same two copies (each holding {keys} keys):");
    println!();
    println!("| round | requests (every run) | head written | ms (median) | ms, each run |");
    println!("|---|---|---|---|---|");
    for (i, name) in AFTER.iter().enumerate() {
        let ms: Vec<f64> = runs.iter().map(|r| r.after[i].1 * 1e3).collect();
        println!(
            "| {name} | {} | {} | {:.1} | {} |",
            distinct(runs.iter().map(|r| requests(&r.after[i].0.requests))),
            distinct(runs.iter().map(|r| r.after[i].0.head_written.to_string())),
            median(&ms),
            list(&ms, 1)
        );
    }
    println!();
}

fn part_sync(root: &Path, runs: usize) {
    let keys: u64 = env_or("MERGEKV_BENCH_KEYS", 1_000_000);
    let s3 = std::env::var("MERGEKV_S3_URL")
        .ok()
        .filter(|u| !u.is_empty());
    println!("## 1. sync {keys} changes A -> B ({KEY_BYTES}-byte keys, {VALUE_BYTES}-byte values)");
    println!();
    let mut local = Vec::new();
    let mut remote = Vec::new();
    for run in 0..runs {
        local.push(sync_run(root, None, keys, run == 0));
        eprintln!(
            "  run {run} file://: publish {:.2} s, pull {:.2} s",
            local[run].publish_s, local[run].pull_s
        );
        if let Some(url) = &s3 {
            remote.push(sync_run(root, Some(url), keys, false));
            eprintln!(
                "  run {run} {url}: publish {:.2} s, pull {:.2} s",
                remote[run].publish_s, remote[run].pull_s
            );
        }
    }
    let change_set = local[0].change_set_bytes.unwrap();
    print_sync("file:// (local folder)", keys, &local, change_set);
    match &s3 {
        Some(url) => print_sync(&format!("S3 ({url})"), keys, &remote, change_set),
        None => println!(
            "S3: skipped: MERGEKV_S3_URL is not set (start a server with `.ci/s3-server start` \
             and export what it prints)\n"
        ),
    }
}

// ---------------------------------------------------------------- part 2

fn copy_options() -> Options {
    options()
        .with_worker_threads(1)
        .with_cache_bytes_max(1 << 20)
}

fn timed_sync(bucket: &Bucket, db: &Db) -> (SyncReport, f64) {
    let start = Instant::now();
    let r = bucket.sync(db).unwrap();
    (r, start.elapsed().as_secs_f64())
}

/// Did the round move any data (not counting its own head)?
fn moved(r: &SyncReport) -> bool {
    r.pushed.objects > 0
        || r.pulled.objects > 0
        || r.snapshot_published.is_some()
        || r.snapshots_imported > 0
        || r.deleted > 0
}

fn add(a: &mut RequestCounts, b: &RequestCounts) {
    a.list += b.list;
    a.get += b.get;
    a.put += b.put;
    a.delete += b.delete;
    a.retried += b.retried;
}

/// What changed in a copy's head between two reads of it.
fn head_change(db: &Db, before: &Head, after: &Head) -> String {
    let mut changed = Vec::new();
    for (field, same) in [
        ("objects", before.objects == after.objects),
        ("snapshots", before.snapshots == after.snapshots),
        ("expelled", before.expelled == after.expelled),
        ("retired", before.retired == after.retired),
    ] {
        if !same {
            changed.push(field.to_string());
        }
    }
    for (node, stamp) in &after.merged.seen {
        let old = before.merged.seen.get(node);
        if old != Some(stamp) {
            let whose = if *node == db.node_id() {
                "own"
            } else {
                "other"
            };
            changed.push(format!(
                "merged[{whose} {:016x}] {} -> {}.{}",
                node.0,
                old.map_or("none".into(), |o| format!(
                    "{}.{}",
                    o.physical_ms, o.logical
                )),
                stamp.physical_ms,
                stamp.logical
            ));
        }
    }
    if changed.is_empty() && before.generation != after.generation {
        changed.push("nothing but generation and time".into());
    }
    if before.generation == after.generation {
        return "not rewritten".into();
    }
    changed.join("; ")
}

struct IdleRound {
    requests: RequestCounts,
    secs: f64,
    head_written: bool,
    change: String,
}

struct IdleRun {
    passes: usize,
    converge_s: f64,
    /// Heads written in the last pass (which moved no data).
    heads_in_last_pass: usize,
    idle: Vec<IdleRound>,
    idle_pass: (RequestCounts, f64, usize),
    writer: (RequestCounts, f64),
    after_one: (SyncReport, f64),
    after_one_change: String,
    idle_after: IdleRound,
}

fn idle_run(root: &Path, copies: usize) -> IdleRun {
    let dir = tempfile::Builder::new()
        .prefix("idle")
        .tempdir_in(root)
        .unwrap();
    let url = format!("file://{}", dir.path().join("bucket").display());
    let dbs: Vec<Db> = (0..copies)
        .map(|c| {
            let db = Db::open_with(dir.path().join(format!("c{c:03}")), copy_options()).unwrap();
            load(&db, (c * 3) as u64, 3);
            db
        })
        .collect();
    // One handle per copy, as if each were its own process; one more to
    // read heads with, outside the rounds.
    let buckets: Vec<Bucket> = (0..copies).map(|_| Bucket::open(&url).unwrap()).collect();
    let reader = Bucket::open(&url).unwrap();
    let start = Instant::now();
    let mut passes = 0;
    let heads_in_last_pass = loop {
        passes += 1;
        let mut any = false;
        let mut heads = 0;
        for (db, bucket) in dbs.iter().zip(&buckets) {
            let r = bucket.sync(db).unwrap();
            any |= moved(&r);
            heads += usize::from(r.head_written);
        }
        if !any || passes == 10 {
            break heads;
        }
    };
    let converge_s = start.elapsed().as_secs_f64();
    let me = copies / 2;
    for i in (0..copies as u64 * 3).step_by(37) {
        assert_eq!(dbs[me].get(key(i)).unwrap().as_deref(), Some(&value(i)[..]));
    }
    let head_of = |c: usize| {
        let name = head_name(dbs[c].node_id());
        let (bytes, _) = reader.get_object(&name, 8 << 20).unwrap().unwrap();
        Head::decode(&bytes).unwrap()
    };
    let idle_round = |c: usize| {
        let before = head_of(c);
        let (r, secs) = timed_sync(&buckets[c], &dbs[c]);
        IdleRound {
            requests: r.requests,
            secs,
            head_written: r.head_written,
            change: head_change(&dbs[c], &before, &head_of(c)),
        }
    };
    // Rounds of one copy with nothing new.
    let idle: Vec<_> = (0..5).map(|_| idle_round(me)).collect();
    // A whole pass of every copy with nothing new.
    let mut pass = RequestCounts::default();
    let mut heads_written = 0;
    let start = Instant::now();
    for (db, bucket) in dbs.iter().zip(&buckets) {
        let r = bucket.sync(db).unwrap();
        assert!(!moved(&r), "{r:?}");
        add(&mut pass, &r.requests);
        heads_written += usize::from(r.head_written);
    }
    let idle_pass = (pass, start.elapsed().as_secs_f64(), heads_written);
    // Bring `me` up to date with the heads that pass wrote, so the next
    // round sees exactly one other copy's change.
    idle_round(me);
    // Exactly one other copy changes (one key) and syncs.
    let other = copies / 4;
    dbs[other].put("news", "one change").unwrap();
    let (w, ws) = timed_sync(&buckets[other], &dbs[other]);
    let before = head_of(me);
    let after_one = timed_sync(&buckets[me], &dbs[me]);
    let after_one_change = head_change(&dbs[me], &before, &head_of(me));
    assert_eq!(
        dbs[me].get("news").unwrap().as_deref(),
        Some(&b"one change"[..])
    );
    let idle_after = idle_round(me);
    IdleRun {
        passes,
        converge_s,
        heads_in_last_pass,
        idle,
        idle_pass,
        writer: (w.requests, ws),
        after_one,
        after_one_change,
        idle_after,
    }
}

/// The distinct values in `v`, in order of first appearance.
fn distinct(v: impl IntoIterator<Item = String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for x in v {
        if !seen.contains(&x) {
            seen.push(x);
        }
    }
    seen.join(" / ")
}

fn part_idle(root: &Path, runs: usize) {
    let copies: usize = env_or("MERGEKV_BENCH_COPIES", 100);
    println!("## 2. idle rounds, {copies} copies through one file:// bucket");
    println!();
    let mut all = Vec::new();
    for run in 0..runs {
        let r = idle_run(root, copies);
        eprintln!(
            "  run {run}: data converged in {} passes ({:.2} s, heads written in the last: {}); \
             idle round {:.2} ms, {}",
            r.passes,
            r.converge_s,
            r.heads_in_last_pass,
            r.idle[0].secs * 1e3,
            requests(&r.idle[0].requests)
        );
        all.push(r);
    }
    let ms = |v: Vec<f64>| {
        let ms: Vec<f64> = v.iter().map(|x| x * 1e3).collect();
        (median(&ms), list(&ms, 1))
    };
    println!(
        "data converged (a pass of every copy in which no round moved an object) after {} \
         passes ({} s); heads still written in that pass: {} of {copies}",
        distinct(all.iter().map(|r| r.passes.to_string())),
        list(&all.iter().map(|r| r.converge_s).collect::<Vec<_>>(), 1),
        distinct(all.iter().map(|r| r.heads_in_last_pass.to_string())),
    );
    println!();
    println!("| round | requests (every run) | head written | ms (median) | ms, each |");
    println!("|---|---|---|---|---|");
    let rounds: Vec<(&str, Vec<&IdleRound>)> = vec![
        (
            "one copy, nothing new: first round after convergence",
            all.iter().map(|r| &r.idle[0]).collect(),
        ),
        (
            "one copy, nothing new: rounds 2-5 in a row",
            all.iter().flat_map(|r| r.idle[1..].iter()).collect(),
        ),
        (
            "the same copy after exactly one other changed, next round",
            all.iter().map(|r| &r.idle_after).collect(),
        ),
    ];
    for (name, rs) in &rounds[..2] {
        let t = ms(rs.iter().map(|r| r.secs).collect());
        println!(
            "| {name} | {} | {} | {:.1} | {} |",
            distinct(rs.iter().map(|r| requests(&r.requests))),
            distinct(rs.iter().map(|r| r.head_written.to_string())),
            t.0,
            t.1
        );
    }
    let pass = ms(all.iter().map(|r| r.idle_pass.1).collect());
    println!(
        "| every copy once, nothing new (sum of {copies} rounds) | {} | {} of {copies} | {:.1} | {} |",
        distinct(all.iter().map(|r| requests(&r.idle_pass.0))),
        distinct(all.iter().map(|r| r.idle_pass.2.to_string())),
        pass.0,
        pass.1
    );
    let w = ms(all.iter().map(|r| r.writer.1).collect());
    println!(
        "| another copy writes one key and syncs | {} | true | {:.1} | {} |",
        distinct(all.iter().map(|r| requests(&r.writer.0))),
        w.0,
        w.1
    );
    let a = ms(all.iter().map(|r| r.after_one.1).collect());
    println!(
        "| one copy, after exactly one other changed | {} (pulled {} object, {} change) | {} | {:.1} | {} |",
        distinct(all.iter().map(|r| requests(&r.after_one.0.requests))),
        distinct(all.iter().map(|r| r.after_one.0.pulled.objects.to_string())),
        distinct(all.iter().map(|r| r.after_one.0.pulled.changes.to_string())),
        distinct(all.iter().map(|r| r.after_one.0.head_written.to_string())),
        a.0,
        a.1
    );
    let (name, rs) = &rounds[2];
    let t = ms(rs.iter().map(|r| r.secs).collect());
    println!(
        "| {name} | {} | {} | {:.1} | {} |",
        distinct(rs.iter().map(|r| requests(&r.requests))),
        distinct(rs.iter().map(|r| r.head_written.to_string())),
        t.0,
        t.1
    );
    println!();
    println!("what changed in the copy's head in its idle rounds (first run):");
    for (i, r) in all[0].idle.iter().enumerate() {
        println!("- round {}: {}", i + 1, r.change);
    }
    println!(
        "- the round after one other copy changed: {}",
        all[0].after_one_change
    );
    println!("- the round after that: {}", all[0].idle_after.change);
    println!();
}

// ---------------------------------------------------------------- part 3

/// (memtable, cache) of the import's database: the defaults, then small.
const BUDGETS: [(&str, Option<(u64, u64)>); 2] = [
    ("default options", None),
    ("memtable 8 MiB, cache 8 MiB", Some((8 << 20, 8 << 20))),
];

fn child(args: &[String]) {
    let (mode, db, file) = (&args[0], Path::new(&args[1]), Path::new(&args[2]));
    let start = Instant::now();
    let detail = match mode.as_str() {
        "export" => {
            let db = Db::open_with(db, options()).unwrap();
            let mut out = std::io::BufWriter::new(std::fs::File::create(file).unwrap());
            let (report, _) = db.export_to(&SyncCursor::new(), &mut out).unwrap();
            std::io::Write::flush(&mut out).unwrap();
            format!(
                "{} records, {} chunks, {} bytes",
                report.records, report.chunks, report.bytes
            )
        }
        "load" => {
            // The same changes written as batches: what the database
            // itself takes, with these options, for this many changes.
            let db = Db::open_with(db, budget_options(args)).unwrap();
            let keys: u64 = args[2].parse().unwrap();
            load(&db, 0, keys);
            db.close().unwrap();
            format!("{keys} written in batches of {BATCH_KEYS}")
        }
        "import" => {
            let o = budget_options(args);
            let db = Db::open_with(db, o).unwrap();
            let mut input = std::io::BufReader::new(std::fs::File::open(file).unwrap());
            let report = db.import_stream(&mut input).unwrap();
            db.close().unwrap();
            format!("{} applied", report.applied)
        }
        other => panic!("unknown mode {other}"),
    };
    println!(
        "{mode}\t{:.2}\t{}\t{detail}",
        start.elapsed().as_secs_f64(),
        peak_rss_kib()
    );
}

/// The default options (background compaction on, as a user opens a
/// database) with the memtable and cache sizes in `args[3..5]`, if given.
fn budget_options(args: &[String]) -> Options {
    let mut o = Options::default();
    if let (Some(m), Some(c)) = (args.get(3), args.get(4)) {
        o.memtable_bytes_max = m.parse().unwrap();
        o.cache_bytes_max = c.parse().unwrap();
    }
    o
}

fn run_child(args: &[String]) -> (f64, u64, String) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .arg("--child")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<&str> = line.split('\t').collect();
    (
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
        parts[3].to_string(),
    )
}

fn part_stream(root: &Path) {
    let keys: u64 = env_or("MERGEKV_BENCH_STREAM_KEYS", 10_000_000);
    println!(
        "## 3. streaming import of {keys} changes ({KEY_BYTES}-byte keys, {VALUE_BYTES}-byte values)"
    );
    println!();
    let dir = tempfile::Builder::new()
        .prefix("stream")
        .tempdir_in(root)
        .unwrap();
    let source = dir.path().join("source");
    let file = dir.path().join("changes.stream");
    let start = Instant::now();
    {
        let db = Db::open_with(&source, options()).unwrap();
        load(&db, 0, keys);
        db.compact_now().unwrap();
        db.close().unwrap();
    }
    eprintln!("  loaded {keys} in {:.1} s", start.elapsed().as_secs_f64());
    let s = |p: &Path| p.display().to_string();
    let (secs, rss, detail) = run_child(&["export".into(), s(&source), s(&file)]);
    println!("| step | seconds | changes/s | peak RSS | budget (2 memtables + cache) | detail |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| `export_to` (default options) | {secs:.2} | {:.0} | {:.0} MiB | | {detail} |",
        keys as f64 / secs,
        rss as f64 / 1024.0
    );
    let defaults = Options::default();
    let mut overheads = Vec::new();
    for (i, (name, budget)) in BUDGETS.iter().enumerate() {
        let (memtable, cache) =
            budget.unwrap_or((defaults.memtable_bytes_max, defaults.cache_bytes_max));
        // The budget: two memtables (the active one and one frozen while
        // it is flushed) and the block cache.
        let budget_mib = (2 * memtable + cache) as f64 / MIB;
        let mut rss_of = Vec::new();
        for mode in ["load", "import"] {
            let target = dir.path().join(format!("target-{mode}-{i}"));
            let third = if mode == "load" {
                keys.to_string()
            } else {
                s(&file)
            };
            let mut args = vec![mode.to_string(), s(&target), third];
            if budget.is_some() {
                args.extend([memtable.to_string(), cache.to_string()]);
            }
            let (secs, rss, detail) = run_child(&args);
            let rss_mib = rss as f64 / 1024.0;
            let step = match mode {
                "load" => "reference: the same changes as `write` batches",
                _ => "`import_stream` from a `BufReader<File>`",
            };
            println!(
                "| {step}, {name} | {secs:.2} | {:.0} | {rss_mib:.0} MiB | {budget_mib:.0} MiB | {detail} |",
                keys as f64 / secs
            );
            rss_of.push(rss_mib);
            let _ = std::fs::remove_dir_all(&target);
        }
        overheads.push((name, rss_of[1], budget_mib, rss_of[0]));
    }
    println!();
    for (name, import, budget, load) in overheads {
        println!(
            "{name}: import peak RSS {import:.0} MiB = budget {budget:.0} MiB {:+.0} MiB \
             (target: at most +64 MiB); the same changes written as batches peak at \
             {load:.0} MiB, so the stream adds {:+.0} MiB over the database's own",
            import - budget,
            import - load
        );
    }
    println!();
    println!(
        "stream file: {} bytes = {:.2} B/change",
        std::fs::metadata(&file).unwrap().len(),
        std::fs::metadata(&file).unwrap().len() as f64 / keys as f64
    );
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
        return;
    }
    let parts: String = env_or("MERGEKV_BENCH_PARTS", String::from("sync,idle,stream"));
    let runs: usize = env_or("MERGEKV_BENCH_RUNS", 3);
    let root = PathBuf::from(env_or(
        "MERGEKV_BENCH_DIR",
        String::from("target/bench-data"),
    ))
    .join("bucket");
    std::fs::create_dir_all(&root).unwrap();
    println!("W12: bucket sync ({runs} runs of parts 1 and 2)");
    println!();
    for part in parts.split(',') {
        match part.trim() {
            "sync" => part_sync(&root, runs),
            "idle" => part_idle(&root, runs),
            "stream" => part_stream(&root),
            "" => {}
            other => panic!("unknown part {other}: expected sync, idle or stream"),
        }
    }
}
