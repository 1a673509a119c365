//! Attacks on bucket sync (`src/bucket/`, feature `object-store`).
//!
//! - A randomized model-based run: several copies writing, deleting,
//!   incrementing, syncing, compacting (tiny memtables, a short tombstone
//!   grace), the clock moving past every grace and retention, random
//!   store faults, copies restarted between rounds and late joiners; at
//!   the end (faults off, rounds until quiet) every copy must equal the
//!   model (newest write per key by stamp, counter sums) and the digests
//!   must be equal. Seed: `ATTACK_SEED` (default: time, printed); cases:
//!   `ATTACK_CASES`.
//! - Crash consistency: a power loss (simulated disk, unsynced data
//!   dropped) right after a round that failed at its k-th request, for
//!   every k.
//! - Hostile bucket content, clones, silence.
//!
//! Tests marked `BUG:` in their doc comment fail on the code they were
//! written against; the comment says what breaks and why.
#![cfg(feature = "object-store")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::Rng;
use mergekv::bucket::head::{Claim, Head, ObjectRef, claim_name, head_name, object_name};
use mergekv::bucket::{Bucket, BucketFaults, BucketOptions, Fault, Op};
use mergekv::error::BucketError;
use mergekv::{
    Db, Error, ManualClock, NodeId, Options, ScanOptions, Stamp, SyncMode, Value, WallClock,
};

// ---------------------------------------------------------------- helpers

const GRACE_MS: u64 = 1_000;

fn opts(clock: &Arc<ManualClock>, mode: SyncMode) -> Options {
    Options::default()
        .with_sync_mode(mode)
        .with_worker_threads(0)
        .with_memtable_bytes_max(2 * 1024)
        .with_compactor_tick_ms(1)
        .with_tombstone_grace_ms(GRACE_MS)
        .with_wall_clock(clock.clone())
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Db {
    Db::open_with(dir, opts(clock, SyncMode::Never)).unwrap()
}

fn contents(db: &Db) -> BTreeMap<String, String> {
    db.scan(&ScanOptions::all())
        .map(|e| {
            let e = e.unwrap();
            let v = match e.value() {
                Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                Value::Counter(c) => format!("#{c}"),
            };
            (String::from_utf8_lossy(e.key()).into_owned(), v)
        })
        .collect()
}

fn file_bucket(dir: &std::path::Path) -> Bucket {
    Bucket::open(&format!("file://{}", dir.display())).unwrap()
}

fn converge(bucket: &Bucket, dbs: &[&Db]) {
    for _ in 0..4 {
        for db in dbs {
            bucket.sync(db).unwrap();
        }
    }
}

fn is_clone(r: &mergekv::Result<mergekv::bucket::SyncReport>) -> bool {
    matches!(r, Err(Error::Bucket(BucketError::CloneDetected { .. })))
}

struct Model {
    newest: BTreeMap<String, (Stamp, Option<String>)>,
    counters: BTreeMap<String, i64>,
}

impl Model {
    fn new() -> Model {
        Model {
            newest: BTreeMap::new(),
            counters: BTreeMap::new(),
        }
    }
    fn note(&mut self, k: String, stamp: Stamp, v: Option<String>) {
        let e = self.newest.entry(k).or_insert((stamp, v.clone()));
        if stamp > e.0 {
            *e = (stamp, v);
        }
    }
    fn problems(&self, name: &str, state: &BTreeMap<String, String>) -> Vec<String> {
        let mut out = Vec::new();
        for (k, (stamp, v)) in &self.newest {
            if state.get(k) != v.as_ref() {
                out.push(format!(
                    "{name}: {k} reads {:?}; newest write ({stamp}) was {v:?}",
                    state.get(k)
                ));
            }
        }
        for (k, n) in &self.counters {
            let got = state.get(k).cloned().unwrap_or_else(|| "#0".into());
            if got != format!("#{n}") {
                out.push(format!("{name}: counter {k} reads {got}, expected {n}"));
            }
        }
        for k in state.keys() {
            if !self.newest.contains_key(k) && !self.counters.contains_key(k) {
                out.push(format!("{name}: {k} was never written"));
            }
        }
        out
    }
}

/// A fault plan: each request draws a fault at random, with `per_mille`
/// chance, among the kinds allowed; and, when armed, a power loss at the
/// `k`th request from now (the disk as it was just before it; that
/// request and every later one fails until disarmed).
struct RandomFaults {
    rng: std::sync::Mutex<Rng>,
    per_mille: AtomicU64,
    /// Truncate creates/updates of heads and claims too (not only of change
    /// objects and snapshots, whose uploads are checked).
    truncate_heads: AtomicBool,
    truncate: AtomicBool,
    injected: AtomicU64,
    crash: std::sync::Mutex<Option<(u64, mergekv::io::SimDisk)>>,
    crashed: std::sync::Mutex<Option<mergekv::io::CrashPoint>>,
    dead: AtomicBool,
    /// A round cut at its `k`th request from now: that request and every
    /// later one gets the fault, until disarmed.
    cut: std::sync::Mutex<Option<(u64, Fault)>>,
}

impl RandomFaults {
    fn new(seed: u64) -> RandomFaults {
        RandomFaults {
            rng: std::sync::Mutex::new(Rng::new(seed ^ 0x5eed_fa17)),
            per_mille: AtomicU64::new(0),
            truncate_heads: AtomicBool::new(false),
            truncate: AtomicBool::new(true),
            injected: AtomicU64::new(0),
            crash: std::sync::Mutex::new(None),
            crashed: std::sync::Mutex::new(None),
            dead: AtomicBool::new(false),
            cut: std::sync::Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for RandomFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RandomFaults")
    }
}

impl BucketFaults for RandomFaults {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        if self.dead.load(Ordering::Relaxed) {
            return Some(Fault::Fail);
        }
        {
            let mut crash = self.crash.lock().unwrap();
            if let Some((k, disk)) = crash.as_mut() {
                if *k == 0 {
                    *self.crashed.lock().unwrap() = Some(disk.crash_point_now("mid-round"));
                    self.dead.store(true, Ordering::Relaxed);
                    *crash = None;
                    return Some(Fault::Fail);
                }
                *k -= 1;
            }
        }
        {
            let mut cut = self.cut.lock().unwrap();
            if let Some((k, fault)) = cut.as_mut() {
                if *k == 0 {
                    return Some(*fault);
                }
                *k -= 1;
            }
        }
        let p = self.per_mille.load(Ordering::Relaxed);
        if p == 0 {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        if rng.below(1000) >= p {
            return None;
        }
        let writes = matches!(op, Op::Create | Op::Update);
        let fault = match rng.below(4) {
            0 => Fault::Fail,
            1 => Fault::TimeOut,
            2 => Fault::LandThenFail,
            _ => {
                let object = name.contains("/changes/") || name.contains("/snapshots/");
                if writes
                    && self.truncate.load(Ordering::Relaxed)
                    && (object || self.truncate_heads.load(Ordering::Relaxed))
                {
                    Fault::Truncate
                } else {
                    Fault::Fail
                }
            }
        };
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }
}

// ------------------------------------------------- 1. randomized model run

enum Home {
    Dir(tempfile::TempDir),
    /// A simulated disk (power losses), `SyncMode::Always`.
    Sim(mergekv::io::SimDisk),
}

struct Copy {
    home: Home,
    db: Option<Db>,
}

const SIM_PATH: &str = "/data/db";

impl Copy {
    fn db(&self) -> &Db {
        self.db.as_ref().unwrap()
    }

    fn new(sim: bool, clock: &Arc<ManualClock>) -> Copy {
        let home = if sim {
            Home::Sim(mergekv::io::SimDisk::new())
        } else {
            Home::Dir(tempfile::tempdir().unwrap())
        };
        let mut c = Copy { home, db: None };
        c.open(clock);
        c
    }

    fn open(&mut self, clock: &Arc<ManualClock>) {
        self.db = Some(match &self.home {
            Home::Dir(d) => open(d.path(), clock),
            Home::Sim(disk) => Db::open_with(
                SIM_PATH,
                opts(clock, SyncMode::Always)
                    .with_faults(Some(mergekv::FaultInjector::with_disk(disk.clone()))),
            )
            .unwrap(),
        });
    }
}

#[derive(Clone, Copy)]
struct Plan {
    /// Every starting copy syncs twice before anything else (so each knows
    /// every other before its first delete can be collected).
    warm_up: bool,
    /// Truncate faults on heads and claims too.
    truncate_heads: bool,
    /// Faults at all.
    faults: bool,
    /// Copies on simulated disks (`SyncMode::Always`), with power losses
    /// between and in the middle of rounds.
    power_loss: bool,
    steps: usize,
}

#[derive(Default, Debug)]
struct Stats {
    syncs_ok: u64,
    syncs_failed: u64,
    faults: u64,
    objects_deleted: u64,
    snapshots_published: u64,
    snapshots_imported: u64,
    tombstones_dropped: u64,
    restarts: u64,
    power_losses: u64,
    joins: u64,
}

#[allow(clippy::too_many_arguments)]
fn note_sync(
    plan: Plan,
    log: &mut Vec<String>,
    problems: &mut Vec<String>,
    stats: &mut Stats,
    step: usize,
    c: usize,
    r: mergekv::Result<mergekv::bucket::SyncReport>,
    crashing: bool,
) {
    match &r {
        Ok(rep) => {
            stats.syncs_ok += 1;
            stats.objects_deleted += rep.deleted;
            stats.snapshots_imported += rep.snapshots_imported;
            stats.snapshots_published += u64::from(rep.snapshot_published.is_some());
            log.push(format!(
                "{step}: copy {c} sync ok: pushed {} pulled {} snap {:?} deleted {}",
                rep.pushed.objects,
                rep.pulled.objects,
                rep.snapshot_published.map(|t| t.changes),
                rep.deleted
            ))
        }
        Err(e) => {
            stats.syncs_failed += 1;
            log.push(format!("{step}: copy {c} sync err: {e}"))
        }
    }
    match r {
        Ok(_) => {}
        Err(Error::Bucket(BucketError::Unreachable { .. } | BucketError::Malformed { .. }))
            if plan.faults || crashing => {}
        Err(e) => problems.push(format!("step {step}: copy {c}: sync: {e:?}")),
    }
}

fn run_case(seed: u64, plan: Plan, stats: &mut Stats) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let clock = Arc::new(ManualClock::new(50_000_000));
    let store = tempfile::tempdir().unwrap();
    let faults = Arc::new(RandomFaults::new(seed));
    faults
        .truncate_heads
        .store(plan.truncate_heads, Ordering::Relaxed);
    let options = BucketOptions {
        grace_ms: GRACE_MS / 2,
        retain_ms: rng.below(2) * GRACE_MS / 4,
        snapshot_after_objects: 2 + rng.below(3) as usize,
        ..BucketOptions::default()
    };
    let in_memory = rng.below(2) == 0;
    let bucket = if in_memory {
        Bucket::in_memory()
    } else {
        file_bucket(store.path())
    }
    .with_options(options)
    .with_faults(faults.clone());
    let n = 3 + rng.below(3) as usize;
    let mut copies: Vec<Copy> = (0..n).map(|_| Copy::new(plan.power_loss, &clock)).collect();
    let mut model = Model::new();
    let mut problems = Vec::new();
    let mut log: Vec<String> = Vec::new();
    let mut joins = 0;
    if plan.warm_up {
        for _ in 0..2 {
            for c in &copies {
                bucket.sync(c.db()).unwrap();
            }
        }
    }
    let watch = std::env::var("ATTACK_WATCH").ok();
    let mut watched: Vec<Option<String>> = Vec::new();
    for step in 0..plan.steps {
        if let Some(w) = &watch {
            let now: Vec<Option<String>> = copies
                .iter()
                .map(|c| {
                    c.db()
                        .get(w)
                        .unwrap()
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                })
                .collect();
            if now != watched {
                log.push(format!("   watch {w}: {now:?}"));
                watched = now;
            }
        }
        let c = rng.below(copies.len() as u64) as usize;
        let k = format!("k{:02}", rng.below(10));
        match rng.below(100) {
            0..25 => {
                let v = format!("c{c}s{step}");
                let o = copies[c].db().put(&k, &v).unwrap();
                log.push(format!("{step}: copy {c} put {k}={v} @{}", o.stamp));
                model.note(k, o.stamp, Some(v));
            }
            25..38 => {
                let o = copies[c].db().delete(&k).unwrap();
                log.push(format!("{step}: copy {c} delete {k} @{}", o.stamp));
                model.note(k, o.stamp, None);
            }
            38..48 => {
                let key = format!("n{}", rng.below(3));
                let d = rng.below(9) as i64 - 3;
                copies[c].db().increment(&key, d).unwrap();
                log.push(format!("{step}: copy {c} {key}+={d}"));
                *model.counters.entry(key).or_default() += d;
            }
            48..73 => {
                // A third of the rounds (with faults on) are cut at a
                // random request: an outage, or answers lost from there on.
                let cut = plan.faults && rng.below(3) == 0;
                if cut {
                    let fault =
                        [Fault::Fail, Fault::LandThenFail, Fault::TimeOut][rng.below(3) as usize];
                    let at = rng.below(16);
                    log.push(format!(
                        "{step}: copy {c}'s round cut at request {at}: {fault:?}"
                    ));
                    *faults.cut.lock().unwrap() = Some((at, fault));
                }
                let r = bucket.sync(copies[c].db());
                *faults.cut.lock().unwrap() = None;
                note_sync(plan, &mut log, &mut problems, stats, step, c, r, cut);
            }
            73..78 => {
                // Faults for a while: none, light, heavy.
                let p = if plan.faults {
                    [0, 0, 30, 100, 250][rng.below(5) as usize]
                } else {
                    0
                };
                faults.per_mille.store(p, Ordering::Relaxed);
                log.push(format!("{step}: faults {p}/1000"));
            }
            78..86 => {
                let ms = rng.below(2 * GRACE_MS);
                clock.advance_ms(ms);
                log.push(format!("{step}: clock +{ms}"));
            }
            86..92 => {
                let r = copies[c].db().compact_now().unwrap();
                stats.tombstones_dropped += r.tombstones_dropped;
                log.push(format!(
                    "{step}: copy {c} compact: {} tombstones dropped",
                    r.tombstones_dropped
                ));
            }
            92..95 => {
                // A restart between rounds.
                let db = copies[c].db.take().unwrap();
                db.close().unwrap();
                copies[c].open(&clock);
                stats.restarts += 1;
                log.push(format!("{step}: copy {c} restarted"));
            }
            95..98 => {
                let Home::Sim(disk) = &copies[c].home else {
                    continue;
                };
                let disk = disk.clone();
                // A power loss: now, or at a request in the middle of a round.
                let point = if rng.below(2) == 0 {
                    disk.crash_point_now("between rounds")
                } else {
                    let at = rng.below(14);
                    *faults.crash.lock().unwrap() = Some((at, disk.clone()));
                    let r = bucket.sync(copies[c].db());
                    note_sync(plan, &mut log, &mut problems, stats, step, c, r, true);
                    *faults.crash.lock().unwrap() = None;
                    faults.dead.store(false, Ordering::Relaxed);
                    match faults.crashed.lock().unwrap().take() {
                        Some(p) => p,
                        None => disk.crash_point_now("after a round"),
                    }
                };
                let mut cuts = point.cuts(seed ^ step as u64, 2);
                let cut = cuts.remove(rng.below(cuts.len() as u64) as usize);
                log.push(format!(
                    "{step}: copy {c} power loss ({}; {cut})",
                    point.label()
                ));
                let survivor = point.survivor(&cut);
                drop(copies[c].db.take());
                copies[c].home = Home::Sim(survivor);
                copies[c].open(&clock);
                stats.power_losses += 1;
            }
            _ => {
                if joins < 2 && step > plan.steps / 3 {
                    joins += 1;
                    stats.joins += 1;
                    log.push(format!("{step}: copy {} joins", copies.len()));
                    copies.push(Copy::new(plan.power_loss, &clock));
                    if plan.warm_up {
                        // Its first round, without faults (so it knows the
                        // others before any delete of its own can be
                        // collected).
                        let p = faults.per_mille.swap(0, Ordering::Relaxed);
                        let r = bucket.sync(copies.last().unwrap().db());
                        faults.per_mille.store(p, Ordering::Relaxed);
                        let c = copies.len() - 1;
                        note_sync(plan, &mut log, &mut problems, stats, step, c, r, false);
                    }
                }
            }
        }
    }
    faults.per_mille.store(0, Ordering::Relaxed);
    stats.faults += faults.injected.load(Ordering::Relaxed);
    log.push("faults off; final rounds".into());
    for round in 0..4 {
        for (i, c) in copies.iter().enumerate() {
            if let Err(e) = bucket.sync(c.db()) {
                problems.push(format!("final round {round}: copy {i}: {e:?}"));
            }
        }
        clock.advance_ms(3 * GRACE_MS);
        for c in &copies {
            stats.tombstones_dropped += c.db().compact_now().unwrap().tombstones_dropped;
        }
    }
    for (i, c) in copies.iter().enumerate() {
        if let Err(e) = bucket.sync(c.db()) {
            problems.push(format!("last round: copy {i}: {e:?}"));
        }
    }
    for (i, c) in copies.iter().enumerate() {
        problems.extend(model.problems(&format!("copy {i}"), &contents(c.db())));
    }
    let root = copies[0].db().digest().unwrap().root;
    for (i, c) in copies.iter().enumerate() {
        if c.db().digest().unwrap().root != root {
            problems.push(format!("copy {i}'s digest differs from copy 0's"));
        }
    }
    // A restore of everything the bucket holds equals the model too.
    let restored = tempfile::tempdir().unwrap();
    let check_restore = std::env::var("ATTACK_NO_RESTORE").is_err();
    match bucket.restore(
        &restored.path().join("db"),
        opts(&clock, SyncMode::Never),
        None,
    ) {
        Ok((db, report)) => {
            let p = if check_restore {
                model.problems("the restored copy", &contents(&db))
            } else {
                Vec::new()
            };
            if !p.is_empty() {
                if std::env::var("ATTACK_DUMP").is_ok() {
                    eprintln!("restore report: {report:?}");
                    dump_heads(&bucket);
                }
                problems.push(format!(
                    "the restored copy (from {:?}; newest snapshots made in one ms: {})",
                    report.snapshot,
                    newest_snapshots_tied(&bucket)
                ));
            }
            problems.extend(p)
        }
        Err(e) => problems.push(format!("restore: {e:?}")),
    }
    if !problems.is_empty() {
        if std::env::var("ATTACK_LOG").is_ok() {
            for l in &log {
                eprintln!("  {l}");
            }
        }
        let nodes: Vec<String> = copies
            .iter()
            .enumerate()
            .map(|(i, c)| format!("copy {i} = {}", c.db().node_id()))
            .collect();
        problems.insert(
            0,
            format!(
                "seed {seed} ({} copies, {} store, {}):",
                copies.len(),
                if in_memory { "memory" } else { "file" },
                nodes.join(", "),
            ),
        );
    }
    problems
}

/// How many snapshots in the bucket share the newest `made_ms`.
fn newest_snapshots_tied(bucket: &Bucket) -> usize {
    let mut made = Vec::new();
    for (name, _) in bucket.list_objects("heads").unwrap() {
        let (bytes, _) = bucket.get_object(&name, 1 << 30).unwrap().unwrap();
        let h = Head::decode(&bytes).unwrap();
        made.extend(h.snapshots.iter().map(|s| s.made_ms));
    }
    let newest = made.iter().copied().max().unwrap_or(0);
    made.iter().filter(|m| **m == newest).count()
}

fn dump_heads(bucket: &Bucket) {
    for (name, _) in bucket.list_objects("heads").unwrap() {
        let (bytes, _) = bucket.get_object(&name, 1 << 30).unwrap().unwrap();
        let h = Head::decode(&bytes).unwrap();
        eprintln!(
            "head {} gen {} updated {}",
            h.node, h.generation, h.updated_ms
        );
        for o in &h.objects {
            eprintln!(
                "  object {} ({} .. {}] changes {} published {}",
                o.seq, o.after, o.last, o.changes, o.published_ms
            );
        }
        for sn in &h.snapshots {
            eprintln!(
                "  snapshot {} made {} changes {} covers {}",
                sn.seq,
                sn.made_ms,
                sn.changes,
                sn.covers.to_text()
            );
        }
        eprintln!("  merged {}", h.merged.to_text());
        for r in &h.retired {
            eprintln!("  retired {} since {}", r.name, r.since_ms);
        }
    }
}

fn seeds() -> (u64, u64) {
    let cases: u64 = std::env::var("ATTACK_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (_, seed) = Rng::from_time();
    let seed: u64 = std::env::var("ATTACK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    (seed, cases)
}

fn run_many(name: &str, mut plan: Plan) {
    let (seed, cases) = seeds();
    if let Some(steps) = std::env::var("ATTACK_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        plan.steps = steps;
    }
    println!("{name}: ATTACK_SEED={seed} ATTACK_CASES={cases}");
    let mut failed = Vec::new();
    let mut stats = Stats::default();
    for case in 0..cases {
        let s = seed.wrapping_add(case);
        let p = run_case(s, plan, &mut stats);
        if !p.is_empty() {
            eprintln!(
                "{}",
                p.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
            );
            failed.push(s);
        }
    }
    println!("{name}: {stats:?}");
    assert!(failed.is_empty(), "{name}: failing seeds {failed:?}");
}

/// The main randomized attack, without the faults and the first-round
/// ordering that the deterministic tests below show break it: every
/// starting copy syncs twice first (a joiner once), and heads and claims
/// are never cut. BUG: still fails, for two causes, each minimized
/// below: a restore (checked at the end) misses writes when the two
/// newest snapshots were made in the same ms (about 1 case in 20:
/// `a_snapshot_made_in_the_same_ms_as_a_fuller_one_misleads_new_copies_and_restore`),
/// and, more rarely, a delete comes back on one copy
/// (`a_peer_cursor_taken_from_a_head_whose_objects_were_not_pulled_lets_a_delete_be_undone`).
/// Seeds do not replay exactly (node ids are random, the compactor runs in
/// the background); run a failing seed a few times.
#[test]
fn random_copies_faults_restarts_and_joins_converge_to_the_model() {
    run_many(
        "random (warm-up, objects cut only)",
        Plan {
            warm_up: true,
            truncate_heads: false,
            faults: true,
            power_loss: false,
            steps: 300,
        },
    );
}

/// The same on simulated disks with power losses between rounds and at a
/// random request in the middle of one (`SyncMode::Always`: every write
/// acknowledged is durable, so the model stays exact). BUG: fails for the
/// same two causes as the test above (seed 7049 showed the returning
/// delete, before the minimized test existed).
#[test]
fn random_copies_with_power_losses_converge_to_the_model() {
    run_many(
        "random power loss (warm-up, objects cut only)",
        Plan {
            warm_up: true,
            truncate_heads: false,
            faults: true,
            power_loss: true,
            steps: 300,
        },
    );
}

/// Found by the attack of issue 15 (shows the two bugs below at random): no warm-up (a copy's first
/// rounds may find it alone: its deletes can be collected before they are
/// published), and heads and claims may be cut by the store.
#[test]
#[ignore = "copies that write before their first round are refused with StaleJoin by design (since the review); this model does not replace refused copies"]
fn random_copies_without_warm_up_and_with_heads_cut() {
    run_many(
        "random (no warm-up, heads cut)",
        Plan {
            warm_up: false,
            truncate_heads: true,
            faults: true,
            power_loss: false,
            steps: 300,
        },
    );
}

// ------------------------------------------- deterministic fault plans

/// Cuts the first create or update of names that contain `needle` (the
/// store writes only the first half and reports success).
#[derive(Debug)]
struct CutFirst {
    needle: String,
    op: Op,
    done: AtomicBool,
}

impl CutFirst {
    fn new(op: Op, needle: &str) -> Arc<CutFirst> {
        Arc::new(CutFirst {
            needle: needle.into(),
            op,
            done: AtomicBool::new(false),
        })
    }
}

impl BucketFaults for CutFirst {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        (op == self.op && name.contains(&self.needle) && !self.done.swap(true, Ordering::Relaxed))
            .then_some(Fault::Truncate)
    }
}

/// Found by the attack of issue 15: a claim cut short by the store (`Fault::Truncate`, which the
/// object uploads are checked against) is never checked nor rewritten by
/// its writer (`Round::claim`, src/bucket/round.rs:268-296: `claimed` is
/// set once the create "succeeds", line 294), and every other copy's round
/// fails on it at `claimed_by` (round.rs:418-419, `Claim::decode` error ->
/// `?` out of `other_heads`, round.rs:398) before pulling or publishing anything: one bad
/// upload stops the whole fleet for good.
#[test]
fn a_claim_cut_short_by_the_store_stops_every_other_copy_for_good() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path(), &clock), open(b_dir.path(), &clock));
    let bucket = Bucket::in_memory().with_faults(CutFirst::new(Op::Create, "/claim"));
    a.put("from-a", "1").unwrap();
    b.put("from-b", "1").unwrap();
    // a's claim is the first one created: it lands cut.
    // Caught by its writer (checked whole), and made again next round.
    let first = bucket.sync(&a);
    assert!(
        matches!(first, Err(Error::Bucket(BucketError::Malformed { .. }))),
        "a's round: {first:?}"
    );
    let mut errors = Vec::new();
    for _ in 0..5 {
        for db in [&a, &b] {
            if let Err(e) = bucket.sync(db) {
                errors.push(e.to_string());
            }
        }
    }
    assert_eq!(
        (
            b.get("from-a").unwrap().as_deref(),
            a.get("from-b").unwrap().as_deref()
        ),
        (Some(&b"1"[..]), Some(&b"1"[..])),
        "no fault after the first: the copies must converge; errors: {errors:#?}"
    );
}

/// Found by the attack of issue 15 (availability): a head cut short by the store is not checked by
/// its writer (`Round::write_head`, round.rs:613-668, takes `Done` at its
/// word and keeps the version tag, so the next rounds trust the listing
/// and never read it back), and every other copy's round fails on it
/// (`other_heads`, round.rs:386: `read_head(..)?`) until the writer's head
/// changes for another reason (a write of its own, or the heartbeat, one
/// day by default). While it lasts no other copy pulls or publishes.
#[test]
fn a_head_cut_short_by_the_store_stops_every_other_copy_until_its_writer_writes() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path(), &clock), open(b_dir.path(), &clock));
    let faults = Arc::new(CutNamed {
        name: std::sync::Mutex::new(None),
    });
    let bucket = Bucket::in_memory().with_faults(faults.clone());
    a.put("from-a", "1").unwrap();
    converge(&bucket, &[&a, &b]);
    // Now a's next head write is cut.
    *faults.name.lock().unwrap() = Some(head_name(a.node_id()));
    a.put("from-a-2", "2").unwrap();
    bucket.sync(&a).unwrap();
    b.put("from-b", "1").unwrap();
    let mut errors = Vec::new();
    for _ in 0..3 {
        clock.advance_ms(60_000);
        for db in [&a, &b] {
            if let Err(e) = bucket.sync(db) {
                errors.push(e.to_string());
            }
        }
    }
    assert!(
        errors.is_empty(),
        "three rounds a minute apart after one cut upload: {errors:#?}"
    );
    assert_eq!(a.get("from-b").unwrap().as_deref(), Some(&b"1"[..]));
}

/// Cuts the first update of `name` once set.
#[derive(Debug)]
struct CutNamed {
    name: std::sync::Mutex<Option<String>>,
}

impl BucketFaults for CutNamed {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        let mut n = self.name.lock().unwrap();
        if matches!(op, Op::Update) && n.as_deref() == Some(name) {
            *n = None;
            return Some(Fault::Truncate);
        }
        None
    }
}

// ---------------------------------------------- deletes and collection

/// Found by the attack of issue 15: a copy that knows no other copy yet (it was alone in the bucket at
/// its last round) collects its own delete before publishing it: the
/// compactor waits only for the peer cursors it holds
/// (`TombstoneGc::collects`, src/compactor/mod.rs:800 -- none here), and
/// nothing stands for "not yet published to the bucket". A copy that
/// joined meanwhile and holds the key from the earlier publication keeps
/// it for ever (the delete is never published: `publish` finds nothing of
/// its own newer than `published`, round.rs:540-544). The copies differ
/// for good, and the deleted key is live on the joiner.
#[test]
fn a_delete_collected_before_its_first_publication_is_lost_for_a_copy_that_joined_meanwhile() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path(), &clock), open(b_dir.path(), &clock));
    let bucket = Bucket::in_memory();
    a.put("doomed", "x").unwrap();
    a.put("kept", "y").unwrap();
    bucket.sync(&a).unwrap(); // alone in the bucket
    bucket.sync(&b).unwrap(); // joins: takes "doomed"
    assert_eq!(b.get("doomed").unwrap().as_deref(), Some(&b"x"[..]));
    a.delete("doomed").unwrap();
    clock.advance_ms(2 * GRACE_MS);
    let dropped = a.compact_now().unwrap().tombstones_dropped;
    converge(&bucket, &[&a, &b]);
    assert_eq!(
        b.get("doomed").unwrap(),
        None,
        "the delete must reach b (a dropped {dropped} tombstones before publishing)"
    );
    assert_eq!(a.digest().unwrap().root, b.digest().unwrap().root);
}

/// The same with a peer known: the delete waits for it (holds).
#[test]
fn a_delete_waits_for_a_known_copy_before_it_is_collected() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path(), &clock), open(b_dir.path(), &clock));
    let bucket = Bucket::in_memory();
    a.put("doomed", "x").unwrap();
    converge(&bucket, &[&a, &b]);
    a.delete("doomed").unwrap();
    clock.advance_ms(2 * GRACE_MS);
    assert_eq!(a.compact_now().unwrap().tombstones_dropped, 0);
    converge(&bucket, &[&a, &b]);
    assert_eq!(b.get("doomed").unwrap(), None);
    clock.advance_ms(2 * GRACE_MS);
    bucket.sync(&a).unwrap();
    a.compact_now().unwrap();
    b.compact_now().unwrap();
    converge(&bucket, &[&a, &b]);
    assert_eq!(a.digest().unwrap().root, b.digest().unwrap().root);
}

// ------------------------------------------------------------- clones

struct Pair {
    _a_dir: tempfile::TempDir,
    _b_dir: tempfile::TempDir,
    a: Db,
    b: Db,
}

/// `a` synced once, then block-copied into `b` (same node id, same sync
/// state, the open cannot tell).
fn cloned_pair(clock: &Arc<ManualClock>, bucket: &Bucket, others: &[&Db]) -> Pair {
    let a_dir = tempfile::tempdir().unwrap();
    {
        let a = open(a_dir.path(), clock);
        a.put("k", "v").unwrap();
        a.increment("c", 1).unwrap();
        bucket.sync(&a).unwrap();
        for o in others {
            bucket.sync(o).unwrap();
        }
        bucket.sync(&a).unwrap();
        a.close().unwrap();
    }
    let b_dir = common::copy_db(a_dir.path());
    common::forge_home(b_dir.path());
    let a = open(a_dir.path(), clock);
    let b = open(b_dir.path(), clock);
    assert_eq!(a.node_id(), b.node_id());
    Pair {
        _a_dir: a_dir,
        _b_dir: b_dir,
        a,
        b,
    }
}

/// The original syncs first: the clone is refused before it publishes.
/// (Holds.)
#[test]
fn a_clone_syncing_after_the_original_is_refused_and_publishes_nothing() {
    for writes in [false, true] {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let bucket = Bucket::in_memory();
        let w_dir = tempfile::tempdir().unwrap();
        let w = open(w_dir.path(), &clock);
        let p = cloned_pair(&clock, &bucket, &[&w]);
        if writes {
            p.a.increment("c", 10).unwrap();
            p.b.increment("c", 100).unwrap();
        }
        w.put("news", "!").unwrap();
        bucket.sync(&w).unwrap();
        bucket.sync(&p.a).unwrap();
        let r = bucket.sync(&p.b);
        assert!(is_clone(&r), "writes {writes}: {r:?}");
        converge(&bucket, &[&p.a, &w]);
        let want = if writes { 11 } else { 1 };
        assert_eq!(w.counter("c").unwrap(), want);
        assert_eq!(p.a.counter("c").unwrap(), want);
        for _ in 0..3 {
            assert!(is_clone(&bucket.sync(&p.b)));
        }
    }
}

/// Found by the attack of issue 15 (against the brief's guarantee "the original is never refused"):
/// when the clone's round comes first, the clone is the one taken (its
/// sync state is the original's, byte for byte: same incarnation, same
/// head version tag) and the original is refused at its next round with
/// `CloneDetected` (round.rs:345-350, the head's generation is ahead of
/// what the original wrote). The original's increments after the copy,
/// stamped under the shared id, then reach no other copy: the original
/// must take a fresh id, and `publish` only exports stamps of the current
/// id (round.rs:526), so they are lost to the fleet while the original
/// still counts them.
#[test]
#[ignore = "known limitation: the second directory to sync under one id is refused, whichever it is; documented"]
fn a_clone_syncing_before_the_original_gets_the_original_refused() {
    // With writes on both, and with no writes at all (the clone only
    // merges another copy's news, which moves its head).
    let mut failures = Vec::new();
    for writes in [true, false] {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let bucket = Bucket::in_memory();
        let w_dir = tempfile::tempdir().unwrap();
        let w = open(w_dir.path(), &clock);
        let p = cloned_pair(&clock, &bucket, &[&w]);
        if writes {
            p.a.increment("c", 10).unwrap();
            p.b.increment("c", 100).unwrap();
        }
        clock.advance_ms(1);
        w.put("news", "!").unwrap();
        bucket.sync(&w).unwrap();
        let clone_round = bucket.sync(&p.b);
        let original_round = bucket.sync(&p.a);
        bucket.sync(&w).unwrap();
        let report = format!(
            "writes {writes}: clone's round: {:?}; original's round: {:?}; w counts {}, \
             original counts {}",
            clone_round.as_ref().map(|r| r.pushed),
            original_round
                .as_ref()
                .map(|r| r.pushed)
                .map_err(|e| e.to_string()),
            w.counter("c").unwrap(),
            p.a.counter("c").unwrap()
        );
        if original_round.is_err() || !is_clone(&clone_round) {
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Found by the attack of issue 15 (follows from the previous one): after the original was refused
/// and took a fresh id (the way out the error names), its +10, stamped
/// under the shared id and never published, is lost: the reidentified
/// original publishes only stamps of its new id (round.rs:526), and the
/// clone's entry for the shared id (+100 on top of the shared +1) wins
/// over the original's (+10 on top of it) in the PN-counter merge. Every
/// copy ends at 101; 111 increments were acknowledged (1 before the copy,
/// 10 on the original, 100 on the clone) and the original's lineage (1 +
/// 10) is not in it.
#[test]
#[ignore = "known limitation: writes a refused directory made under the shared id stay local after reidentify; documented"]
fn after_the_original_is_refused_and_reidentified_its_increments_are_lost() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory();
    let w_dir = tempfile::tempdir().unwrap();
    let w = open(w_dir.path(), &clock);
    let p = cloned_pair(&clock, &bucket, &[&w]);
    p.a.increment("c", 10).unwrap();
    p.b.increment("c", 100).unwrap();
    clock.advance_ms(1);
    bucket.sync(&p.b).unwrap();
    let r = bucket.sync(&p.a);
    assert!(is_clone(&r), "{r:?}");
    let a_dir = p._a_dir;
    drop(p.a);
    let a = Db::open_with(
        a_dir.path(),
        opts(&clock, SyncMode::Never).with_renew_identity(true),
    )
    .unwrap();
    for _ in 0..4 {
        bucket.sync(&a).unwrap();
        bucket.sync(&w).unwrap();
    }
    let (ca, cw) = (a.counter("c").unwrap(), w.counter("c").unwrap());
    assert_eq!(ca, cw, "the original and the fleet disagree on c");
    assert!(
        cw == 111 || cw == 11,
        "c reads {cw} everywhere: the original's +10 is in no copy"
    );
}

// ------------------------------------------------------------- silence

const HORIZON_MS: u64 = 100_000;

fn silence_bucket() -> Bucket {
    Bucket::in_memory().with_options(BucketOptions {
        silence_horizon_ms: HORIZON_MS,
        heartbeat_ms: 1_000,
        grace_ms: GRACE_MS / 2,
        retain_ms: 0,
        snapshot_after_objects: 3,
        ..BucketOptions::default()
    })
}

/// Found by the attack of issue 15: two live copies diverge for good. Q publishes `x` and goes
/// silent; B (syncing within the horizon) merges it; A, which had not
/// synced since before `x`, comes back just past Q's horizon (before any
/// other copy noticed that either of them was quiet): it finds Q silent,
/// and a silent copy's objects are never pulled (`sync`, round.rs:770 and
/// 783-787 pull only from `live`), so A never gets `x`. A's own head is as old
/// as Q's, but nobody expelled A yet, so A goes on as a live copy: B never
/// republishes Q's writes (only its own), and A's progress is not empty so
/// it never bootstraps from a snapshot again. A and B stay different.
#[test]
fn a_lagging_copy_that_finds_a_writer_silent_never_gets_what_it_published() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = silence_bucket();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, q) = (
        open(dirs[0].path(), &clock),
        open(dirs[1].path(), &clock),
        open(dirs[2].path(), &clock),
    );
    converge(&bucket, &[&a, &b, &q]);
    q.put("x", "from q").unwrap();
    bucket.sync(&q).unwrap();
    bucket.sync(&b).unwrap();
    assert_eq!(b.get("x").unwrap().as_deref(), Some(&b"from q"[..]));
    // B stays in touch (heartbeats); A and Q are quiet.
    clock.advance_ms(HORIZON_MS / 2);
    bucket.sync(&b).unwrap();
    clock.advance_ms(HORIZON_MS / 2 + 10);
    // A comes back first.
    // Silence is measured against the bucket's latest activity (B's head
    // at half the horizon): Q is not yet silent, and A pulls its write.
    bucket.sync(&a).unwrap();
    for _ in 0..3 {
        bucket.sync(&b).unwrap();
        bucket.sync(&a).unwrap();
    }
    assert_eq!(
        (
            a.get("x").unwrap().as_deref(),
            b.get("x").unwrap().as_deref()
        ),
        (Some(&b"from q"[..]), Some(&b"from q"[..])),
        "both live copies must hold Q's published write"
    );
}

/// Found by the attack of issue 15 (data loss): every copy quiet past the horizon; the first to come
/// back (Q, which had not merged A's last publication) finds every other
/// head silent, pulls nothing from them, and expels them all: A and B
/// (which both hold A's published write) get `MustBootstrap`, and a fresh
/// copy started from the bucket (the way out the error names) never gets
/// A's write either, because it pulls only from live heads too. A write
/// that was published and merged by two copies is gone. Q was exactly as
/// silent as the others; nothing checks a copy's own silence before it
/// expels others (round.rs:766-770, 783-796).
#[test]
fn the_first_copy_back_after_a_quiet_spell_expels_the_others_and_their_published_writes_are_lost() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = silence_bucket();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, q) = (
        open(dirs[0].path(), &clock),
        open(dirs[1].path(), &clock),
        open(dirs[2].path(), &clock),
    );
    converge(&bucket, &[&a, &b, &q]);
    a.put("x", "from a").unwrap();
    bucket.sync(&a).unwrap();
    bucket.sync(&b).unwrap();
    clock.advance_ms(HORIZON_MS + 10);
    let rq = bucket.sync(&q).unwrap();
    let ra = bucket.sync(&a);
    let rb = bucket.sync(&b);
    let fresh = open(dirs[3].path(), &clock);
    converge(&bucket, &[&q, &fresh]);
    let where_x: Vec<_> = [("a", &a), ("b", &b), ("q", &q), ("fresh", &fresh)]
        .iter()
        .filter(|(_, db)| db.get("x").unwrap().is_some())
        .map(|(n, _)| *n)
        .collect();
    assert!(
        fresh.get("x").unwrap().is_some(),
        "q's round: silent {:?}\na's round: {:?}\nb's round: {:?}\nx is held by {where_x:?} only",
        rq.silent,
        ra.map(|_| ()),
        rb.map(|_| ())
    );
}

/// A copy back exactly at the horizon is not silent (the rule is "more
/// than"); one millisecond later it is, and it must start afresh. (Holds.)
#[test]
fn a_copy_back_exactly_at_the_horizon_is_live_and_one_ms_later_must_bootstrap() {
    for late in [0, 1] {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let bucket = silence_bucket();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let (a, q) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
        converge(&bucket, &[&a, &q]);
        let q_written = clock.now_ms();
        // a writes its head last in converge at the same ms; move a's head on.
        clock.advance_ms(HORIZON_MS / 2);
        a.put("k", "v").unwrap();
        bucket.sync(&a).unwrap();
        clock.advance_ms(q_written + HORIZON_MS + late - clock.now_ms());
        q.put("offline", "w").unwrap();
        // Silence is measured against the bucket's latest activity: a's
        // head written now, then a's next round measures.
        a.put("k2", "v").unwrap();
        bucket.sync(&a).unwrap();
        let ra = bucket.sync(&a).unwrap();
        let rq = bucket.sync(&q);
        if late == 0 {
            assert!(ra.silent.is_empty(), "{ra:?}");
            rq.unwrap();
            converge(&bucket, &[&a, &q]);
            assert_eq!(a.get("offline").unwrap().as_deref(), Some(&b"w"[..]));
        } else {
            assert_eq!(ra.silent, vec![q.node_id()]);
            assert!(
                matches!(rq, Err(Error::Bucket(BucketError::MustBootstrap { .. }))),
                "{rq:?}"
            );
            let fresh = open(dirs[2].path(), &clock);
            converge(&bucket, &[&a, &fresh]);
            assert_eq!(contents(&a), contents(&fresh));
        }
    }
}

// --------------------------------------------------- hostile content

fn stamp(ms: u64, logical: u32, node: NodeId) -> Stamp {
    Stamp {
        physical_ms: ms,
        logical,
        node,
    }
}

/// A change stream in clear from `origin` holding no records, whose end
/// chunk claims `cursor` (built by hand from docs/FORMAT.md, "Change
/// stream": anyone can recompute the chain of an unsealed stream).
fn end_only_stream(origin: NodeId, cursor: &[Stamp]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(b"MKVCSTR\x01");
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&origin.0.to_le_bytes());
    header.extend_from_slice(&[7u8; 16]);
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    let mut payload = Vec::new();
    payload.extend_from_slice(&0u64.to_le_bytes());
    payload.extend_from_slice(&(cursor.len() as u32).to_le_bytes());
    for s in cursor {
        payload.extend_from_slice(&s.node.0.to_le_bytes());
        payload.extend_from_slice(&s.physical_ms.to_le_bytes());
        payload.extend_from_slice(&s.logical.to_le_bytes());
        payload.extend_from_slice(&s.node.0.to_le_bytes());
    }
    let mut head = [0u8; 16];
    head[0] = 2;
    head[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let start = *blake3::Hasher::new_derive_key("mergekv change stream chain v1")
        .update(&header)
        .finalize()
        .as_bytes();
    let chain = *blake3::Hasher::new()
        .update(&start)
        .update(&head)
        .update(&payload)
        .finalize()
        .as_bytes();
    let mut out = header;
    out.extend_from_slice(&head);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&chain);
    out
}

fn empty_head(node: NodeId, incarnation: [u8; 16], updated_ms: u64) -> Head {
    Head {
        node,
        incarnation,
        generation: 1,
        nonce: 1,
        updated_ms,
        backup_only: false,
        collect_below_ms: updated_ms,
        objects: Vec::new(),
        snapshots: Vec::new(),
        merged: mergekv::SyncCursor::new(),
        expelled: Vec::new(),
        retired: Vec::new(),
    }
}

/// Writes a claim and a head for `head.node`.
fn forge(bucket: &Bucket, head: &Head) {
    let claim = Claim {
        node: head.node,
        incarnation: head.incarnation,
        claimed_ms: head.updated_ms,
    };
    bucket
        .create_object(&claim_name(head.node), &claim.encode())
        .unwrap();
    let name = head_name(head.node);
    let tag = bucket
        .get_object(&name, 1 << 30)
        .unwrap()
        .and_then(|(_, t)| t);
    bucket
        .update_object(&name, &head.encode(), tag.as_deref())
        .unwrap()
        .expect("head written");
}

/// Garbage, cut, oversized and misplaced heads are typed errors, never a
/// panic, and nothing is applied. (Holds; see the head-cut test above for
/// what it costs the fleet.)
#[test]
fn garbage_cut_oversized_and_misplaced_heads_are_typed_errors() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path(), &clock), open(b_dir.path(), &clock));
    a.put("k", "v").unwrap();
    let real = Head {
        merged: mergekv::SyncCursor::new(),
        ..empty_head(NodeId(0xfeed), [9; 16], 1_000_000)
    }
    .encode();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        (
            "garbage",
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("cut", real[..real.len() / 2].to_vec()),
        ("one byte flipped", {
            let mut r = real.clone();
            r[30] ^= 1;
            r
        }),
        ("oversized", vec![0u8; 9 << 20]),
        ("another node's head", real.clone()),
    ];
    for (what, bytes) in cases {
        let bucket = Bucket::in_memory();
        converge(&bucket, &[&a, &b]);
        let before = contents(&b);
        bucket
            .update_object(&head_name(NodeId(0xbad)), &bytes, None)
            .unwrap();
        // Skipped and named (since the review: one bad head must not stop
        // every copy), nothing of it applied.
        let r = bucket.sync(&b).unwrap();
        assert_eq!(r.unreadable.len(), 1, "{what}: {r:?}");
        assert_eq!(contents(&b), before, "{what}");
    }
}

/// Found by the attack of issue 15 (hostile or misplaced content, misleading error): a claimed head F
/// listing an object whose bytes are V's own real change object (hash and
/// size match F's head; the stream's origin is V, not F). `pull_from`
/// (round.rs:497-498) never checks that a stream's origin is the head's
/// node, so: another copy R imports it (harmless, the changes are V's
/// real ones), but V itself, at every round from then on, imports its
/// own stream and fails with `Error::IdentityConflict` "another copy of
/// this directory writes under it ... give one a new id: mergekv
/// reidentify" (src/sync/stream.rs:244-253) -- not an `Error::Bucket`, and
/// advice that is wrong: V is no clone, the bucket holds a misplaced
/// object. Expected: refused by name as a bucket error (the object's
/// origin is not its head's copy), and V's rounds unaffected otherwise.
#[test]
fn a_head_listing_another_origins_object_gets_that_origin_told_it_is_a_clone() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (v, r) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    let bucket = Bucket::in_memory();
    v.put("v1", "x").unwrap();
    v.increment("n", 5).unwrap();
    bucket.sync(&v).unwrap();
    let listed = bucket
        .list_objects(&format!("nodes/{:016x}/changes", v.node_id().0))
        .unwrap();
    let (bytes, _) = bucket.get_object(&listed[0].0, 1 << 30).unwrap().unwrap();
    let f = NodeId(0x0f0f);
    let mut head = empty_head(f, [3; 16], 1_000_000);
    head.objects.push(ObjectRef {
        seq: 1,
        nonce: 1,
        after: stamp(0, 0, f),
        last: stamp(1_000_000, 5, f),
        changes: 2,
        bytes: bytes.len() as u64,
        hash: *blake3::hash(&bytes).as_bytes(),
        published_ms: 1_000_000,
    });
    bucket.create_object(&object_name(f, 1, 1), &bytes).unwrap();
    forge(&bucket, &head);
    // Refused by name: the object's origin is not its head's copy.
    let rr = bucket.sync(&r);
    assert!(
        matches!(rr, Err(Error::Bucket(BucketError::Malformed { .. }))),
        "{rr:?}"
    );
    let rv = bucket.sync(&v);
    assert!(
        matches!(rv, Err(Error::Bucket(_))),
        "V's round after the misplaced object appeared: {rv:?}"
    );
}

/// Found by the attack of issue 15 (hostile content, silent wrong state): a claimed head listing an
/// object that is a valid change stream holding no records but whose end
/// cursor claims another copy V's writes up to a far future stamp is
/// imported whole (the stream's origin is not checked against the head's
/// node, nor its cursor against what the object covers: `pull_from`,
/// round.rs:497-498, then `merge_complete_cursor`, src/sync/stream.rs:385,
/// which checks only the importer's own entry). The honest reader R then
/// claims V's writes up to that stamp in its own head's `merged`, and V
/// is then refused at every round as a clone, on the word of an honest
/// copy (round.rs:754-764). (R's snapshots carry the same cursor.)
#[test]
fn a_forged_end_cursor_is_laundered_through_an_honest_copy() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (v, r) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    let bucket = Bucket::in_memory().with_options(BucketOptions {
        snapshot_after_objects: 1,
        ..BucketOptions::default()
    });
    converge(&bucket, &[&v, &r]);
    let f = NodeId(0x0f0f);
    let future = stamp(u64::MAX / 4, 0, v.node_id());
    let bytes = end_only_stream(f, &[future]);
    let mut head = empty_head(f, [3; 16], 1_000_000);
    head.objects.push(ObjectRef {
        seq: 1,
        nonce: 1,
        after: stamp(0, 0, f),
        last: stamp(1_000_000, 0, f),
        changes: 0,
        bytes: bytes.len() as u64,
        hash: *blake3::hash(&bytes).as_bytes(),
        published_ms: 1_000_000,
    });
    bucket.create_object(&object_name(f, 1, 1), &bytes).unwrap();
    forge(&bucket, &head);
    let rr = bucket.sync(&r);
    v.put("after-the-forgery", "1").unwrap();
    let rv = bucket.sync(&v);
    assert!(rv.is_ok(), "r's round: {rr:?}\nv's round: {rv:?}");
}

/// Found by the attack of issue 15 (hostile content, silent wrong state): a claimed head listing a
/// snapshot "made" at the end of time is the one every new copy starts
/// from (`snapshots_of` sorts by the maker's `made_ms`, round.rs:671-678;
/// `sync` imports `.last()`, round.rs:778-782) and its `covers` is taken
/// as merged for every origin it names (`import_snapshot`,
/// round.rs:446-455): a snapshot with no records covering every copy up
/// to a far stamp leaves every new copy empty, with no error, for good.
#[test]
#[ignore = "known limitation: a claimed copy's head is trusted (bucket writers are trusted; encryption authenticates them); documented"]
fn a_forged_snapshot_from_the_future_leaves_every_new_copy_empty() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (v, w) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    let bucket = Bucket::in_memory();
    v.put("v", "1").unwrap();
    w.put("w", "1").unwrap();
    converge(&bucket, &[&v, &w]);
    let f = NodeId(0x0f0f);
    let cover = [
        stamp(u64::MAX / 4, 0, v.node_id()),
        stamp(u64::MAX / 4, 0, w.node_id()),
    ];
    let bytes = end_only_stream(f, &cover);
    let mut head = empty_head(f, [3; 16], 1_000_000);
    let mut covers = mergekv::SyncCursor::new();
    for s in cover {
        covers.seen.insert(s.node, s);
    }
    head.snapshots.push(mergekv::bucket::head::SnapshotRef {
        seq: 1,
        nonce: 1,
        covers,
        changes: 0,
        bytes: bytes.len() as u64,
        hash: *blake3::hash(&bytes).as_bytes(),
        made_ms: u64::MAX,
    });
    bucket
        .create_object(&mergekv::bucket::head::snapshot_name(f, 1, 1), &bytes)
        .unwrap();
    forge(&bucket, &head);
    let late = open(dirs[2].path(), &clock);
    let rl = (0..3).map(|_| bucket.sync(&late)).last().unwrap();
    assert_eq!(
        contents(&late),
        contents(&v),
        "the late copy's last round: {rl:?}"
    );
}

/// Thousands of heads (claimed or not): the round completes in bounded
/// time and memory (holds: 3000 heads, about 10 ms in memory). BUG (cost):
/// the next idle round downloads every unclaimed head and its claim again
/// (3000 GETs), since only claimed heads are cached (round.rs:398-401): a
/// bucket with stray heads costs every copy every round.
#[test]
fn thousands_of_heads() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    let bucket = Bucket::in_memory();
    a.put("k", "v").unwrap();
    converge(&bucket, &[&a, &b]);
    for i in 0..3000u64 {
        let h = empty_head(NodeId(0x1_0000 + i), [1; 16], 1_000_000);
        if i % 2 == 0 {
            forge(&bucket, &h);
        } else {
            bucket
                .update_object(&head_name(h.node), &h.encode(), None)
                .unwrap();
        }
    }
    let started = std::time::Instant::now();
    let first = bucket.sync(&b).unwrap();
    let t1 = started.elapsed();
    let second = bucket.sync(&b).unwrap();
    println!(
        "first round with 3000 heads: {t1:?}, {:?}; unclaimed {}; idle round after: {:?}",
        first.requests,
        first.unclaimed.len(),
        second.requests
    );
    assert_eq!(first.unclaimed.len(), 1500);
    assert!(t1 < std::time::Duration::from_secs(60));
    // An idle round is one listing plus the heads that changed: none did.
    assert!(
        second.requests.get <= 10,
        "an idle round downloads {} objects again (the 1500 unclaimed heads \
         and their claims are never cached: round.rs:398-401)",
        second.requests.get
    );
}

// ------------------------------------------------- 2. crash consistency

/// From the `k`th request on, every request gets `fault` (until `over`).
#[derive(Debug)]
struct FromK {
    k: u64,
    fault: Fault,
    seen: AtomicU64,
}

impl BucketFaults for FromK {
    fn fault(&self, _op: Op, _name: &str) -> Option<Fault> {
        let i = self.seen.fetch_add(1, Ordering::Relaxed);
        (i >= self.k).then_some(self.fault)
    }
}

fn sim_options(disk: &mergekv::io::SimDisk, clock: &Arc<ManualClock>, mode: SyncMode) -> Options {
    Options::default()
        .with_sync_mode(mode)
        .with_worker_threads(0)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
        .with_faults(Some(mergekv::FaultInjector::with_disk(disk.clone())))
        .with_wall_clock(clock.clone())
}

/// A power loss (every unsynced byte dropped) right after a round that
/// failed at its k-th request, for every k until the round succeeds: the
/// copy reopened on what survived must not be taken for a clone, and must
/// converge with the others (its acknowledged writes all there with
/// `SyncMode::Always`).
fn power_loss_after_a_failed_round(mode: SyncMode, fault: Fault) {
    let mut problems = Vec::new();
    for k in 0..200u64 {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = tempfile::tempdir().unwrap();
        let url = format!("file://{}", store.path().display());
        let w_dir = tempfile::tempdir().unwrap();
        let w = open(w_dir.path(), &clock);
        let disk = mergekv::io::SimDisk::new();
        let c = Db::open_with("/data/c", sim_options(&disk, &clock, mode)).unwrap();
        w.put("w", "1").unwrap();
        w.increment("n", 1).unwrap();
        c.put("c0", "x").unwrap();
        c.increment("n", 2).unwrap();
        let healthy = Bucket::open(&url).unwrap();
        for db in [&w, &c, &w, &c] {
            healthy.sync(db).unwrap();
        }
        clock.advance_ms(10);
        c.put("c1", "y").unwrap();
        c.increment("n", 3).unwrap();
        c.delete("c0").unwrap();
        w.put("w2", "z").unwrap();
        healthy.sync(&w).unwrap();
        let failing = Bucket::open(&url).unwrap().with_faults(Arc::new(FromK {
            k,
            fault,
            seen: AtomicU64::new(0),
        }));
        let round = failing.sync(&c);
        let point = disk.crash_point_now("right after the round");
        let cut = point.cuts(1, 0).remove(0);
        let survivor = point.survivor(&cut);
        drop(c);
        let c = Db::open_with("/data/c", sim_options(&survivor, &clock, mode)).unwrap();
        // A new process: a new handle on the bucket.
        let after = Bucket::open(&url).unwrap();
        let mut errors = Vec::new();
        for _ in 0..4 {
            for (name, db) in [("c", &c), ("w", &w)] {
                if let Err(e) = after.sync(db) {
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        let (cs, ws) = (contents(&c), contents(&w));
        let context = format!(
            "{mode:?} {fault:?} k={k}: the failed round: {:?}",
            round.as_ref().map(|_| "ok").map_err(|e| e.to_string())
        );
        if !errors.is_empty() {
            problems.push(format!("{context}: rounds after the restart: {errors:?}"));
        } else if cs != ws {
            problems.push(format!("{context}: c holds {cs:?}, w holds {ws:?}"));
        } else if mode == SyncMode::Always {
            let want: BTreeMap<String, String> =
                [("c1", "y"), ("n", "#6"), ("w", "1"), ("w2", "z")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            if cs != want {
                problems.push(format!("{context}: {cs:?}, expected {want:?}"));
            }
        }
        if round.is_ok() {
            println!("{mode:?} {fault:?}: the round succeeded from k = {k}");
            break;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn power_loss_after_a_round_failed_at_each_request_always() {
    power_loss_after_a_failed_round(SyncMode::Always, Fault::Fail);
}

#[test]
fn power_loss_after_a_round_failed_at_each_request_never() {
    power_loss_after_a_failed_round(SyncMode::Never, Fault::Fail);
}

#[test]
fn power_loss_after_a_round_whose_answers_were_lost_from_each_request_always() {
    power_loss_after_a_failed_round(SyncMode::Always, Fault::LandThenFail);
}

#[test]
fn power_loss_after_a_round_whose_answers_were_lost_from_each_request_never() {
    power_loss_after_a_failed_round(SyncMode::Never, Fault::LandThenFail);
}

/// A power loss at the `k`th request of a round: the disk as it was just
/// before that request (unsynced bytes dropped); the request itself lands
/// in the store (`land`) or not, and nothing after it does.
#[derive(Debug)]
struct CrashAt {
    k: u64,
    land: bool,
    disk: mergekv::io::SimDisk,
    seen: AtomicU64,
    point: std::sync::Mutex<Option<mergekv::io::CrashPoint>>,
}

impl BucketFaults for CrashAt {
    fn fault(&self, _op: Op, _name: &str) -> Option<Fault> {
        let i = self.seen.fetch_add(1, Ordering::Relaxed);
        if i == self.k {
            *self.point.lock().unwrap() = Some(self.disk.crash_point_now("at the request"));
            return Some(if self.land {
                Fault::LandThenFail
            } else {
                Fault::Fail
            });
        }
        (i > self.k).then_some(Fault::Fail)
    }
}

fn power_loss_at_each_request(mode: SyncMode, land: bool, first: bool) {
    let mut problems = Vec::new();
    let mut points = 0;
    for k in 0..200u64 {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = tempfile::tempdir().unwrap();
        let url = format!("file://{}", store.path().display());
        let w_dir = tempfile::tempdir().unwrap();
        let w = open(w_dir.path(), &clock);
        let disk = mergekv::io::SimDisk::new();
        let c = Db::open_with("/data/c", sim_options(&disk, &clock, mode)).unwrap();
        w.put("w", "1").unwrap();
        w.increment("n", 1).unwrap();
        c.put("c0", "x").unwrap();
        c.increment("n", 2).unwrap();
        let healthy = Bucket::open(&url).unwrap().with_options(BucketOptions {
            snapshot_after_objects: 2,
            ..BucketOptions::default()
        });
        if first {
            healthy.sync(&w).unwrap();
        } else {
            for db in [&w, &c, &w, &c] {
                healthy.sync(db).unwrap();
            }
        }
        clock.advance_ms(10);
        c.put("c1", "y").unwrap();
        c.increment("n", 3).unwrap();
        c.delete("c0").unwrap();
        w.put("w2", "z").unwrap();
        healthy.sync(&w).unwrap();
        let plan = Arc::new(CrashAt {
            k,
            land,
            disk: disk.clone(),
            seen: AtomicU64::new(0),
            point: std::sync::Mutex::new(None),
        });
        let failing = Bucket::open(&url)
            .unwrap()
            .with_options(healthy.options().clone())
            .with_faults(plan.clone());
        let round = failing.sync(&c);
        let Some(point) = plan.point.lock().unwrap().take() else {
            println!("{mode:?} land={land} first={first}: the round made {k} requests");
            break;
        };
        points += 1;
        let cut = point.cuts(1, 0).remove(0);
        let survivor = point.survivor(&cut);
        drop(c);
        let c = Db::open_with("/data/c", sim_options(&survivor, &clock, mode)).unwrap();
        let after = Bucket::open(&url)
            .unwrap()
            .with_options(healthy.options().clone());
        let mut errors = Vec::new();
        for _ in 0..4 {
            for (name, db) in [("c", &c), ("w", &w)] {
                if let Err(e) = after.sync(db) {
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        let (cs, ws) = (contents(&c), contents(&w));
        let context = format!(
            "{mode:?} land={land} first={first} crash at request {k}: the round: {:?}",
            round.as_ref().map(|_| "ok").map_err(|e| e.to_string())
        );
        if !errors.is_empty() {
            problems.push(format!("{context}: rounds after the restart: {errors:?}"));
        } else if cs != ws {
            problems.push(format!("{context}: c holds {cs:?}, w holds {ws:?}"));
        } else if mode == SyncMode::Always {
            let want: BTreeMap<String, String> =
                [("c1", "y"), ("n", "#6"), ("w", "1"), ("w2", "z")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            if cs != want {
                problems.push(format!("{context}: {cs:?}, expected {want:?}"));
            }
        }
    }
    assert!(points > 3);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn power_loss_at_each_request_of_a_round_always() {
    power_loss_at_each_request(SyncMode::Always, false, false);
    power_loss_at_each_request(SyncMode::Always, false, true);
}

#[test]
fn power_loss_at_each_request_of_a_round_never() {
    power_loss_at_each_request(SyncMode::Never, false, false);
    power_loss_at_each_request(SyncMode::Never, false, true);
}

#[test]
fn power_loss_at_each_request_of_a_round_after_it_landed_always() {
    power_loss_at_each_request(SyncMode::Always, true, false);
    power_loss_at_each_request(SyncMode::Always, true, true);
}

#[test]
fn power_loss_at_each_request_of_a_round_after_it_landed_never() {
    power_loss_at_each_request(SyncMode::Never, true, false);
    power_loss_at_each_request(SyncMode::Never, true, true);
}

// ------------------------------------------------------ more scenarios

/// Found by the attack of issue 15: two `Bucket` handles on the same bucket (the same URL opened twice
/// in one process: an app's periodic sync and a manual one, say) syncing
/// the same database at the same time. The turn-taking lock is per
/// `Bucket` value (src/bucket/mod.rs:124 and 221, `round: Mutex<()>`),
/// while the sync state it protects is per database and bucket URL (in
/// `_local`, round.rs:99-102): both rounds read the same state, both publish, one
/// head update loses and the round that lost reports `CloneDetected`
/// (round.rs:647-664) for a copy that is no clone.
#[test]
fn two_handles_on_one_bucket_syncing_one_database_at_once_are_not_a_clone() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), &clock);
    db.put("k", "v").unwrap();
    Bucket::open(&url).unwrap().sync(&db).unwrap();
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (db, url, errors) = (db.clone(), url.clone(), errors.clone());
            std::thread::spawn(move || {
                let bucket = Bucket::open(&url).unwrap();
                for i in 0..30 {
                    db.put(format!("t{t}-{i}"), "x").unwrap();
                    if let Err(e) = bucket.sync(&db) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("thread {t} round {i}: {e}"));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    // And afterwards, alone, one handle:
    let alone = Bucket::open(&url).unwrap();
    let after: Vec<String> = (0..3)
        .filter_map(|_| alone.sync(&db).err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty() && after.is_empty(),
        "{} errors in 60 concurrent rounds, first: {:?}; then alone: {after:?}",
        errors.len(),
        errors.first()
    );
}

/// Found by the attack of issue 15: a copy that wrote more between two rounds than
/// `object_bytes_max` publishes one change object that big (`publish`
/// never splits, round.rs:510-572), which every other copy refuses at
/// every round (`fetch_checked`, round.rs:170-175): that copy's writes
/// never reach anyone again (all its later objects chain after the big
/// one), and its objects are never collected. With the default 1 GiB it
/// takes a big offline session or a bulk load; the snapshot of a database
/// larger than the limit likewise can never be taken by a new copy.
#[test]
#[ignore = "known limitation: a publication is one object, not split; documented"]
fn a_round_of_writes_larger_than_object_bytes_max_is_never_delivered() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(BucketOptions {
        object_bytes_max: 16 * 1024,
        ..BucketOptions::default()
    });
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    converge(&bucket, &[&a, &b]);
    for i in 0..100 {
        a.put(format!("bulk{i:03}"), "x".repeat(400)).unwrap();
    }
    let ra = bucket.sync(&a).unwrap();
    a.put("later", "small").unwrap();
    let mut last = None;
    for _ in 0..3 {
        bucket.sync(&a).unwrap();
        last = Some(bucket.sync(&b));
    }
    assert!(
        b.get("later").unwrap().is_some(),
        "a published {} bytes in one object; b's last round: {last:?}",
        ra.pushed.bytes
    );
}

/// Found by the attack of issue 15 (design): a backup round (`Bucket::backup`, or a copy with
/// `BucketOptions::pull = false`) into a bucket that other copies sync
/// through writes a head whose `merged` names only itself (it never pulls),
/// and the syncing copies wait on every live head: no other copy's object
/// is ever collected (`collect`, round.rs:874-876) and no tombstone of
/// theirs is ever dropped (its cursor is stored as a peer cursor,
/// round.rs:801-803) while the backup keeps running.
#[test]
fn a_backup_into_a_shared_bucket_stops_collection_for_every_copy() {
    collection_beside_a_backup(true);
}

/// The control for the previous test: without the backup, a's objects are
/// collected. (Holds.)
#[test]
fn without_a_backup_beside_them_objects_are_collected() {
    collection_beside_a_backup(false);
}

fn collection_beside_a_backup(backup: bool) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let bucket = Bucket::in_memory().with_options(BucketOptions {
        grace_ms: GRACE_MS / 2,
        retain_ms: 0,
        snapshot_after_objects: 2,
        ..BucketOptions::default()
    });
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, k) = (
        open(dirs[0].path(), &clock),
        open(dirs[1].path(), &clock),
        open(dirs[2].path(), &clock),
    );
    let mut deleted = 0;
    let mut dropped = 0;
    for i in 0..12 {
        a.put(format!("a{}", i % 3), format!("{i}")).unwrap();
        a.delete(format!("a{}", (i + 1) % 3)).unwrap();
        k.put(format!("k{i}"), "x").unwrap();
        deleted += bucket.sync(&a).unwrap().deleted;
        deleted += bucket.sync(&b).unwrap().deleted;
        if backup {
            bucket.backup(&k).unwrap();
        }
        clock.advance_ms(2 * GRACE_MS);
        dropped += a.compact_now().unwrap().tombstones_dropped;
    }
    let listed = bucket
        .list_objects(&format!("nodes/{:016x}/changes", a.node_id().0))
        .unwrap()
        .len();
    // Without the backup, a's 12 change objects are collected down to a
    // few (checked by the control below).
    assert!(
        listed <= 4,
        "with a backup beside them: {listed} of a's 12 change objects left \
         ({deleted} objects deleted, {dropped} tombstones dropped by a)"
    );
}

/// Found by the attack of issue 15: a copy whose first round pulled some objects and then failed
/// before its head was written (so no other copy waits for it), while the
/// others go on deleting, collecting tombstones and objects: its next
/// round brings back what they deleted. Its progress is not empty, so it
/// does not start from a snapshot afresh; the gap where the collected
/// objects were (holding the delete) is bridged by importing a newer
/// snapshot on top of its state (`pull_from`, round.rs:465-495), and a
/// snapshot made after the tombstone was collected cannot undo the put
/// the copy already holds. A bridge over collected objects is only safe
/// for a copy every other copy waited for (which never needs one).
#[test]
fn a_half_joined_copy_does_not_bring_back_what_was_deleted_meanwhile() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let faults = Arc::new(HeadWriteFailsFor(std::sync::Mutex::new(None)));
    let bucket = Bucket::in_memory()
        .with_options(BucketOptions {
            grace_ms: GRACE_MS / 2,
            retain_ms: 0,
            snapshot_after_objects: 2,
            ..BucketOptions::default()
        })
        .with_faults(faults.clone());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, j) = (
        open(dirs[0].path(), &clock),
        open(dirs[1].path(), &clock),
        open(dirs[2].path(), &clock),
    );
    a.put("doomed", "x").unwrap();
    converge(&bucket, &[&a, &b]);
    // j's first round pulls "doomed" and fails at its head write.
    *faults.0.lock().unwrap() = Some(head_name(j.node_id()));
    let first = bucket.sync(&j);
    assert!(first.is_err());
    assert_eq!(j.get("doomed").unwrap().as_deref(), Some(&b"x"[..]));
    *faults.0.lock().unwrap() = None;
    // Meanwhile: deleted, merged everywhere, collected (tombstones and
    // objects), new snapshots.
    b.delete("doomed").unwrap();
    let mut deleted = 0;
    for i in 0..8 {
        a.put(format!("n{i}"), "y").unwrap();
        b.put(format!("m{i}"), "y").unwrap();
        deleted += bucket.sync(&a).unwrap().deleted;
        deleted += bucket.sync(&b).unwrap().deleted;
        clock.advance_ms(2 * GRACE_MS);
        a.compact_now().unwrap();
        b.compact_now().unwrap();
    }
    // j holds an older change of a copy whose later ones were collected:
    // it is told to start afresh, every round, and merges nothing it
    // cannot take back; a fresh copy from the bucket equals the others.
    for _ in 0..3 {
        let rj = bucket.sync(&j);
        assert!(
            matches!(rj, Err(Error::Bucket(BucketError::HistoryGone { .. }))),
            "{deleted} objects deleted meanwhile; j's round: {rj:?}"
        );
    }
    converge(&bucket, &[&a, &b]);
    assert_eq!(
        (a.get("doomed").unwrap(), b.get("doomed").unwrap()),
        (None, None)
    );
    let fresh = tempfile::tempdir().unwrap();
    let (restored, _) = bucket
        .restore(&fresh.path().join("j"), mergekv::Options::default(), None)
        .unwrap();
    assert_eq!(contents(&a), contents(&restored));
}

/// Fails every update of the head named, while set.
#[derive(Debug)]
struct HeadWriteFailsFor(std::sync::Mutex<Option<String>>);

impl BucketFaults for HeadWriteFailsFor {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        (op == Op::Update && self.0.lock().unwrap().as_deref() == Some(name)).then_some(Fault::Fail)
    }
}

/// Fails every download of a change object or snapshot of `node`, while set.
#[derive(Debug)]
struct ObjectsOfFail(std::sync::Mutex<Option<NodeId>>);

impl BucketFaults for ObjectsOfFail {
    fn fault(&self, op: Op, name: &str) -> Option<Fault> {
        let n = (*self.0.lock().unwrap())?;
        (op == Op::Get
            && name.starts_with(&format!("nodes/{:016x}/", n.0))
            && !name.ends_with("/claim"))
        .then_some(Fault::Fail)
    }
}

/// Found by the attack of issue 15 (found by the randomized run, seed 7049 of
/// `random_copies_with_power_losses_converge_to_the_model`, minimized):
/// a deleted key comes back. A round stores every live head's `merged`
/// cursor as that copy's peer cursor (round.rs:801-803) even when pulling
/// that copy's objects failed in this round (pull failures are only
/// remembered, round.rs:783-787). So A records "B has seen C's delete"
/// while it still lacks B's older put of the same key (published by B
/// before it saw the delete); A's compactor then drops the tombstone (every
/// peer cursor has seen it: src/compactor/mod.rs:800), and B's put, pulled
/// at A's next round, is older than nothing any more: the key is live on A
/// and deleted everywhere else, for good.
#[test]
fn a_peer_cursor_taken_from_a_head_whose_objects_were_not_pulled_lets_a_delete_be_undone() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let faults = Arc::new(ObjectsOfFail(std::sync::Mutex::new(None)));
    let bucket = Bucket::in_memory().with_faults(faults.clone());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c) = (
        open(dirs[0].path(), &clock),
        open(dirs[1].path(), &clock),
        open(dirs[2].path(), &clock),
    );
    converge(&bucket, &[&a, &b, &c]);
    b.put("k", "old").unwrap();
    clock.advance_ms(1);
    c.delete("k").unwrap();
    bucket.sync(&b).unwrap(); // publishes the put (has not seen the delete)
    bucket.sync(&c).unwrap(); // publishes the delete
    bucket.sync(&b).unwrap(); // merges the delete: its head says so
    // A's round: C's objects come, B's fail (a passing outage).
    *faults.0.lock().unwrap() = Some(b.node_id());
    let ra = bucket.sync(&a);
    assert!(ra.is_err());
    *faults.0.lock().unwrap() = None;
    assert_eq!(a.get("k").unwrap(), None, "a holds the delete");
    clock.advance_ms(2 * GRACE_MS);
    let dropped = a.compact_now().unwrap().tombstones_dropped;
    converge(&bucket, &[&a, &b, &c]);
    assert_eq!(
        (
            a.get("k").unwrap().as_deref(),
            b.get("k").unwrap(),
            c.get("k").unwrap()
        ),
        (None, None, None),
        "a dropped {dropped} tombstones before it had b's older put"
    );
}

/// Found by the attack of issue 15 (found by the randomized run, restore check: seeds 9008, 9009,
/// 9031, 9060, 9079, 9082, 9084, 9094, 9099 of
/// `random_copies_faults_restarts_and_joins_converge_to_the_model` with
/// `ATTACK_CASES=1`, about one case in ten; minimized here): "the newest
/// snapshot" is chosen by its maker's `made_ms` alone (`snapshots_of`,
/// round.rs:671-678, a stable sort, then `.last()`), and two snapshots
/// made in the same millisecond are told apart by the order of the list
/// they come from: a copy's own snapshot is pushed last in its own
/// `collect` (round.rs:858-864; likewise for the snapshot decision,
/// round.rs:817-821), so X collects its objects as covered by
/// its own snapshot, while a new copy (round.rs:778-782) and a restore
/// (round.rs:960-963) list heads by name and take Y's snapshot, made in
/// the same ms but covering X less. Nothing then notices the hole: X's
/// head lists no object any more, so no gap is seen (`pull_from` and
/// `restore` look for gaps only between listed objects). The new copy and
/// the restored one silently lack X's last writes, for good.
#[test]
fn a_snapshot_made_in_the_same_ms_as_a_fuller_one_misleads_new_copies_and_restore() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let faults = Arc::new(ObjectsOfFail(std::sync::Mutex::new(None)));
    let bucket = Bucket::in_memory()
        .with_options(BucketOptions {
            grace_ms: GRACE_MS / 2,
            retain_ms: 0,
            snapshot_after_objects: 2,
            ..BucketOptions::default()
        })
        .with_faults(faults.clone());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (p, q) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    // X has the smaller node id (heads are listed by name).
    let (x, y) = if p.node_id().0 < q.node_id().0 {
        (p, q)
    } else {
        (q, p)
    };
    // At T0: X makes a snapshot S_X1.
    x.put("x1", "1").unwrap();
    bucket.sync(&x).unwrap();
    y.put("y1", "1").unwrap();
    bucket.sync(&y).unwrap();
    x.put("x2", "1").unwrap();
    let r = bucket.sync(&x).unwrap();
    assert!(r.snapshot_published.is_some(), "{r:?}");
    // At T: X publishes x3; Y, failing to fetch X's objects, publishes
    // three objects and a snapshot S_Y covering X only up to x2.
    clock.advance_ms(10);
    x.put("x3", "1").unwrap();
    bucket.sync(&x).unwrap();
    *faults.0.lock().unwrap() = Some(x.node_id());
    let mut y_snapshot = false;
    for i in 0..3 {
        y.put(format!("y{}", i + 2), "1").unwrap();
        let r = bucket.sync(&y);
        y_snapshot |= r.is_err() && y.get("x3").unwrap().is_none();
    }
    *faults.0.lock().unwrap() = None;
    assert!(y_snapshot);
    // Still at T: X publishes x4 and a snapshot S_X2 covering everything.
    x.put("x4", "1").unwrap();
    let r = bucket.sync(&x).unwrap();
    assert!(r.snapshot_published.is_some(), "{r:?}");
    bucket.sync(&y).unwrap();
    // Collection, past the grace.
    for _ in 0..3 {
        bucket.sync(&x).unwrap();
        bucket.sync(&y).unwrap();
        clock.advance_ms(GRACE_MS);
    }
    let late = open(dirs[2].path(), &clock);
    for _ in 0..3 {
        bucket.sync(&late).unwrap();
    }
    let restored = tempfile::tempdir().unwrap();
    let (r, report) = bucket
        .restore(
            &restored.path().join("db"),
            opts(&clock, SyncMode::Never),
            None,
        )
        .unwrap();
    let want = contents(&x);
    assert_eq!(contents(&y), want);
    assert_eq!(
        (contents(&late), contents(&r)),
        (want.clone(), want),
        "the late copy and the restored one (from {:?})",
        report.snapshot
    );
}

/// Found by the attack of issue 15 (minor): restore and sync disagree on which heads count: a head whose copy never
/// claimed its id is ignored by every round (`SyncReport::unclaimed`), but
/// `restore` (round.rs:939-949) reads every head without the claim check,
/// so a restored copy holds what no synced copy takes (here, the changes
/// an unclaimed head names). Expected: restore takes the same heads as a
/// round.
#[test]
fn restore_takes_heads_that_sync_refuses_as_unclaimed() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (v, w) = (open(dirs[0].path(), &clock), open(dirs[1].path(), &clock));
    let store = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store.path());
    v.put("from-v", "1").unwrap();
    bucket.sync(&v).unwrap();
    // V's claim is removed (as in tests/bucket.rs,
    // a_head_from_a_copy_that_never_claimed_its_id_is_ignored).
    std::fs::remove_file(store.path().join(claim_name(v.node_id()))).unwrap();
    let r = bucket.sync(&w).unwrap();
    assert_eq!(r.unclaimed, vec![v.node_id()]);
    let restored = tempfile::tempdir().unwrap();
    let (db, _) = bucket
        .restore(
            &restored.path().join("db"),
            opts(&clock, SyncMode::Never),
            None,
        )
        .unwrap();
    assert_eq!(
        contents(&db),
        contents(&w),
        "the restored copy and a synced one, from the same bucket"
    );
}
