//! Power loss, not just SIGKILL: workloads run on a simulated disk
//! (`mergekv::io::SimDisk`) that keeps a crash point before every fsync;
//! at each one the power is cut in every way the disk lists (unsynced data
//! dropped, the last write torn at 512 B and 4 KiB boundaries or holed,
//! unsynced creates and renames lost, pages kept at random), the database
//! is opened on what survives, and it must:
//!
//! - open (never an error, never a panic);
//! - hold exactly the state after some prefix of the workload's steps that
//!   includes every step acknowledged before the crash point (all writes
//!   are `SyncMode::Always`), and no step that had not started: so no
//!   acknowledged write is lost, no batch is partly visible, and nothing
//!   appears that was never written;
//! - go on: a write after the reopen survives a further reopen. Where
//!   opening wrote to the disk (cutting a torn tail, say), the power is cut
//!   again at each of its own fsyncs and the same holds.
//!
//! A follower's database is put through the same: batches streamed from a
//! leader over loopback and two snapshot installs, on the recording disk.
//!
//! Some workloads also fail the Nth fsync, write, open or rename
//! (`FaultInjector::fail_nth`); a workload stops at the first refused step.
//!
//! Scale: `MERGEKV_POWER_LOSS_CASES` random workloads (default 4), seed
//! `MERGEKV_POWER_LOSS_SEED` (default: time; printed); to replay one
//! workload, `MERGEKV_POWER_LOSS_FIRST_CASE` = its number and CASES = 1. Each test prints
//! the crash points and power-loss states it explored.

mod common;

use std::collections::BTreeMap;

use common::Rng;
use mergekv::io::{CrashPoint, SimDisk};
use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::server::{ReplicationOptions, ReplicationServer};
use mergekv::{Batch, Db, FaultInjector, IoOp, Options, ScanOptions, SyncCursor, SyncMode, Value};

/// Where the database lives on the simulated disk.
const DB_DIR: &str = "/data/db";
/// Random cuts drawn at each crash point, besides the systematic ones.
const RANDOM_CUTS: usize = 3;
/// Crash points (of a reopen's own fsyncs) cut again, per survivor that
/// opening wrote to.
const NESTED_POINTS_MAX: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    Put(u8, usize),
    Delete(u8),
    Increment(u8, i64),
    Batch(Vec<(u8, Option<usize>)>),
    Compact,
    /// A peer writes `n` keys of its own, then its whole change set is
    /// exported and imported here.
    Import(u8),
    /// Close cleanly and open again (no power loss).
    Reopen,
    /// Registers cursor `c<k>`, or moves it back (every registration is at
    /// a lower sequence number than the one before, so the cursor file is
    /// written before the call returns).
    Cursor(u8),
}

/// Cursor names the workloads register.
const CURSOR_NAMES: u8 = 3;

/// The sequence number step `index` registers a cursor at (lower for each
/// later step: a move back).
fn cursor_seq(index: usize) -> u64 {
    1_000_000 - index as u64
}

#[derive(Clone, Debug, PartialEq)]
enum Model {
    Bytes(Vec<u8>),
    Counter(i64),
}

type State = BTreeMap<String, Model>;

fn key(k: u8) -> String {
    format!("key-{k:02}")
}

/// A value of `len` bytes that names its step, so a value from the wrong
/// step cannot pass for the right one.
fn value(step: usize, len: usize) -> Vec<u8> {
    let tag = format!("s{step}:");
    tag.bytes()
        .chain((0..).map(|i| b'a' + (i % 26) as u8))
        .take(len.max(tag.len()))
        .collect()
}

fn options(disk: &SimDisk, faults: Option<&FaultInjector>) -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Always)
        .with_worker_threads(0)
        .with_segment_size_bytes_max(2048)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
        .with_faults(Some(
            faults
                .cloned()
                .unwrap_or_else(|| FaultInjector::with_disk(disk.clone())),
        ))
}

/// The keys and values, and the registered cursors (as `cursor/<name>`
/// entries holding their sequence number).
fn contents(db: &Db) -> State {
    let mut state: State = db
        .scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| {
            let k = String::from_utf8(e.key().to_vec()).unwrap();
            let v = match e.into_value() {
                Value::Bytes(b) => Model::Bytes(b.to_vec()),
                Value::Counter(c) => Model::Counter(c),
            };
            (k, v)
        })
        .collect();
    for k in 0..CURSOR_NAMES {
        if let Some(c) = db.cursor(&format!("c{k}")) {
            state.insert(format!("cursor/c{k}"), Model::Counter(c.seq as i64));
        }
    }
    state
}

/// The peer whose change sets are imported: its own disk, its own keys.
struct Peer {
    db: Db,
    writes: u64,
}

impl Peer {
    fn new() -> Peer {
        let disk = SimDisk::new();
        let options = Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_worker_threads(0)
            .with_compaction_wal_bytes_min(u64::MAX)
            .with_compaction_interval_ms(0)
            .with_faults(Some(FaultInjector::with_disk(disk)));
        Peer {
            db: Db::open_with("/peer", options).unwrap(),
            writes: 0,
        }
    }

    /// Writes `n` keys and returns its whole change set.
    fn write_and_export(&mut self, n: u8) -> Vec<u8> {
        for _ in 0..n {
            self.writes += 1;
            let k = self.writes % 7;
            if self.writes.is_multiple_of(3) {
                self.db.increment(format!("peer-{k}"), 2).unwrap();
            } else {
                self.db
                    .put(format!("peer-{k}"), format!("p{}", self.writes))
                    .unwrap();
            }
        }
        self.db.export_since(&SyncCursor::new()).unwrap().0
    }
}

fn apply_model(state: &mut State, step: &Step, index: usize, peer: Option<&Db>) {
    match step {
        Step::Put(k, len) => {
            state.insert(key(*k), Model::Bytes(value(index, *len)));
        }
        Step::Delete(k) => {
            state.remove(&key(*k));
        }
        Step::Increment(k, d) => {
            let next = match state.get(&key(*k)) {
                Some(Model::Counter(c)) => c + d,
                _ => *d,
            };
            state.insert(key(*k), Model::Counter(next));
        }
        Step::Batch(ops) => {
            for (k, v) in ops {
                match v {
                    Some(len) => apply_model(state, &Step::Put(*k, *len), index, None),
                    None => apply_model(state, &Step::Delete(*k), index, None),
                }
            }
        }
        Step::Import(_) => {
            state.retain(|k, _| !k.starts_with("peer-"));
            state.extend(contents(peer.unwrap()));
        }
        Step::Cursor(k) => {
            state.insert(
                format!("cursor/c{k}"),
                Model::Counter(cursor_seq(index) as i64),
            );
        }
        Step::Compact | Step::Reopen => {}
    }
}

/// Runs one step; `Err` if the database refused it (an injected fault).
fn run_step(
    slot: &mut Option<Db>,
    reopen: &dyn Fn() -> mergekv::Result<Db>,
    step: &Step,
    index: usize,
    peer: &mut Peer,
) -> mergekv::Result<()> {
    if let Step::Reopen = step {
        slot.take().map(Db::close).transpose()?;
        *slot = Some(reopen()?);
        return Ok(());
    }
    let db = slot.as_ref().ok_or(mergekv::Error::Closed)?;
    match step {
        Step::Put(k, len) => db.put(key(*k), value(index, *len)).map(drop),
        Step::Delete(k) => db.delete(key(*k)).map(drop),
        Step::Increment(k, d) => db.increment(key(*k), *d).map(drop),
        Step::Batch(ops) => {
            let mut batch = Batch::new();
            for (k, v) in ops {
                match v {
                    Some(len) => batch.put(key(*k), value(index, *len)),
                    None => batch.delete(key(*k)),
                };
            }
            db.write(batch).map(drop)
        }
        Step::Compact => db.compact_now().map(drop),
        Step::Cursor(k) => db.set_cursor(&format!("c{k}"), cursor_seq(index)),
        Step::Import(n) => {
            let bytes = peer.write_and_export(*n);
            db.import(&bytes).map(drop)
        }
        Step::Reopen => Ok(()),
    }
}

/// When each step started and was acknowledged, as crash point indexes:
/// a crash point at or after `acked` must show the step; one before
/// `started` must not.
struct Timeline {
    started: Vec<usize>,
    acked: Vec<Option<usize>>,
    /// The state after each prefix of the steps (`states[0]` is empty).
    states: Vec<State>,
}

impl Timeline {
    /// The prefixes a crash point may show: `lo..=hi`.
    fn allowed(&self, point: usize) -> (usize, usize) {
        let lo = self
            .acked
            .iter()
            .take_while(|a| a.is_some_and(|a| a <= point))
            .count();
        let hi = self.started.iter().filter(|s| **s <= point).count();
        (lo, hi)
    }
}

/// What a workload explored.
#[derive(Default, Debug)]
struct Figures {
    crash_points: usize,
    states: usize,
    nested_states: usize,
    faults_injected: u64,
}

impl std::ops::AddAssign for Figures {
    fn add_assign(&mut self, o: Figures) {
        self.crash_points += o.crash_points;
        self.states += o.states;
        self.nested_states += o.nested_states;
        self.faults_injected += o.faults_injected;
    }
}

/// A workload and how to run it.
struct Workload {
    name: String,
    seed: u64,
    steps: Vec<Step>,
    /// Fail this operation (the Nth of its kind after open), if any.
    fault: Option<(IoOp, u64)>,
    /// The database is a replication follower's: opened read-only.
    follower: bool,
}

/// Runs the workload on a recording disk, then cuts the power at every
/// crash point and checks what survives.
fn explore(w: &Workload) -> Figures {
    let disk = SimDisk::new();
    let faults = FaultInjector::with_disk(disk.clone());
    let opts = options(&disk, Some(&faults));
    disk.record_crash_points(true);
    let reopen = || Db::open_with(DB_DIR, opts.clone());
    let mut db = Some(reopen().unwrap_or_else(|e| panic!("{}: first open failed: {e}", w.name)));
    if let Some((op, nth)) = w.fault {
        faults.fail_nth(op, nth);
    }
    let mut peer = Peer::new();
    let mut t = Timeline {
        started: Vec::new(),
        acked: Vec::new(),
        states: vec![State::new()],
    };
    for (i, step) in w.steps.iter().enumerate() {
        t.started.push(disk.crash_points_taken());
        let result = run_step(&mut db, &reopen, step, i, &mut peer);
        let mut next = t.states.last().unwrap().clone();
        apply_model(&mut next, step, i, Some(&peer.db));
        t.states.push(next);
        match result {
            Ok(()) => t.acked.push(Some(disk.crash_points_taken())),
            Err(e) => {
                assert!(
                    w.fault.is_some(),
                    "{}: step {i} {step:?} failed: {e}",
                    w.name
                );
                t.acked.push(None);
                break;
            }
        }
        if let (None, Some(db)) = (w.fault, &db) {
            assert_eq!(
                contents(db),
                *t.states.last().unwrap(),
                "{}: live state after step {i}",
                w.name
            );
        }
    }
    let mut points = disk.take_crash_points();
    points.push(disk.crash_point_now("at the end of the workload"));
    disk.record_crash_points(false);
    drop(db);
    let mut figures = Figures {
        crash_points: points.len(),
        faults_injected: faults.injected(),
        ..Figures::default()
    };
    for point in &points {
        figures += check_point(w, &t, point, point.index(), true);
    }
    figures
}

/// Cuts the power at `point` in every listed way and checks each survivor
/// against the prefixes allowed at crash point `at` of the workload.
fn check_point(w: &Workload, t: &Timeline, point: &CrashPoint, at: usize, nest: bool) -> Figures {
    let mut figures = Figures::default();
    let (lo, hi) = t.allowed(at);
    for (n, cut) in point.cuts(w.seed, RANDOM_CUTS).iter().enumerate() {
        let survivor = point.survivor(cut);
        let context = format!(
            "{} (seed {}): crash point {} ({}), cut {cut}: expected the state after {lo}..={hi} steps",
            w.name,
            w.seed,
            point.index(),
            point.label()
        );
        survivor.record_crash_points(nest);
        let opts = options(&survivor, None).with_read_only(w.follower);
        let db = Db::open_with(DB_DIR, opts.clone()).unwrap_or_else(|e| {
            panic!(
                "{context}: open failed: {e}{}",
                zeroed_sectors(&survivor, &e)
            )
        });
        figures.states += 1;
        let got = contents(&db);
        let Some(m) = (lo..=hi).find(|m| t.states[*m] == got) else {
            panic!("{context}: got {}", describe(&got, &t.states[lo]));
        };
        if nest {
            let nested = survivor.take_crash_points();
            survivor.record_crash_points(false);
            for inner in nested
                .iter()
                .filter(|p| !p.is_quiet())
                .take(NESTED_POINTS_MAX)
            {
                let f = check_point(w, t, inner, at, false);
                figures.nested_states += f.states;
            }
        }
        // Goes on: a write after the reopen survives a further reopen (for
        // the first cut and the random ones, to keep the run short). A
        // follower's directory takes no writes: it reopens the same.
        if w.follower && (n == 0 || cut.to_string().contains("random")) {
            drop(db);
            let db = Db::open_with(DB_DIR, opts)
                .unwrap_or_else(|e| panic!("{context}: second open: {e}"));
            assert_eq!(contents(&db), t.states[m], "{context}: second open");
        } else if n == 0 || cut.to_string().contains("random") {
            db.put("after-reopen", format!("{m}"))
                .unwrap_or_else(|e| panic!("{context}: write after reopen: {e}"));
            drop(db);
            let db = Db::open_with(DB_DIR, opts)
                .unwrap_or_else(|e| panic!("{context}: second open: {e}"));
            let mut expected = t.states[m].clone();
            expected.insert(
                "after-reopen".into(),
                Model::Bytes(format!("{m}").into_bytes()),
            );
            assert_eq!(
                contents(&db),
                expected,
                "{context}: after a write and a reopen"
            );
        }
    }
    figures
}

/// For a damaged file: its length and which of its 512-byte sectors are
/// zeros (what a lost page leaves).
fn zeroed_sectors(disk: &SimDisk, e: &mergekv::Error) -> String {
    let mergekv::Error::Corruption { path, .. } = e else {
        return String::new();
    };
    let bytes = disk.read_file(path).unwrap_or_default();
    let zeroed: Vec<usize> = bytes
        .chunks(512)
        .enumerate()
        .filter(|(_, sector)| sector.iter().all(|&b| b == 0))
        .map(|(i, _)| i)
        .collect();
    format!(
        " (file of {} bytes, zeroed sectors {zeroed:?})",
        bytes.len()
    )
}

/// What differs from the oldest allowed state, briefly.
fn describe(got: &State, expected: &State) -> String {
    let missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let differing: Vec<&String> = expected
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    format!(
        "{} keys ({} expected at least); missing {missing:?}; differing {differing:?}",
        got.len(),
        expected.len()
    )
}

fn random_step(rng: &mut Rng) -> Step {
    let k = rng.below(10) as u8;
    match rng.below(100) {
        0..30 => Step::Put(k, 1 + rng.below(40) as usize),
        30..36 => Step::Put(k, 3000 + rng.below(10_000) as usize),
        36..48 => Step::Delete(k),
        48..62 => Step::Increment(k, rng.below(11) as i64 - 5),
        62..78 => {
            let n = 2 + rng.below(3);
            let mut ops = BTreeMap::new();
            for _ in 0..n {
                let k = rng.below(10) as u8;
                let max = if rng.below(5) == 0 { 6000 } else { 60 };
                let v = (rng.below(4) > 0).then(|| 1 + rng.below(max) as usize);
                ops.insert(k, v);
            }
            Step::Batch(ops.into_iter().collect())
        }
        78..88 => Step::Compact,
        88..95 => Step::Import(1 + rng.below(3) as u8),
        95..97 => Step::Cursor(rng.below(u64::from(CURSOR_NAMES)) as u8),
        _ => Step::Reopen,
    }
}

fn random_workload(case: u64, seed: u64) -> Workload {
    let mut rng = Rng::new(seed.wrapping_add(case.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let steps: Vec<Step> = (0..12 + rng.below(20))
        .map(|_| random_step(&mut rng))
        .collect();
    let fault = match rng.below(6) {
        0 => Some((IoOp::Sync, 1 + rng.below(30))),
        1 => Some((IoOp::Write, 1 + rng.below(30))),
        2 => Some((IoOp::Open, 1 + rng.below(10))),
        3 => Some((IoOp::Rename, 1 + rng.below(3))),
        _ => None,
    };
    Workload {
        name: format!("random workload {case}"),
        seed: rng.next_u64(),
        steps,
        fault,
        follower: false,
    }
}

fn scripted(name: &str, steps: Vec<Step>) -> Workload {
    Workload {
        name: name.into(),
        seed: 1,
        steps,
        fault: None,
        follower: false,
    }
}

fn report(name: &str, figures: &Figures) {
    println!(
        "power loss, {name}: {} crash points, {} power-loss states opened and checked ({} of them cut again during a reopen), {} faults injected, 0 losses",
        figures.crash_points,
        figures.states + figures.nested_states,
        figures.nested_states,
        figures.faults_injected
    );
}

#[test]
fn the_first_writes_of_a_new_database_survive_power_loss() {
    let w = scripted(
        "first writes",
        vec![Step::Put(1, 10), Step::Put(2, 10), Step::Increment(3, 4)],
    );
    report(&w.name, &explore(&w));
}

#[test]
fn the_first_compaction_survives_power_loss() {
    let mut steps: Vec<Step> = (0..30).map(|i| Step::Put(i % 7, 60)).collect();
    steps.extend([
        Step::Compact,
        Step::Put(1, 5),
        Step::Delete(2),
        Step::Compact,
        Step::Put(3, 5),
    ]);
    let w = scripted("first compaction", steps);
    report(&w.name, &explore(&w));
}

#[test]
fn a_large_frame_torn_in_any_page_order_never_blocks_opening() {
    let w = scripted(
        "12 KiB frames",
        vec![
            Step::Put(1, 10),
            Step::Put(2, 12 * 1024),
            Step::Put(3, 12 * 1024),
            Step::Put(4, 10),
        ],
    );
    report(&w.name, &explore(&w));
}

#[test]
fn batches_rotation_imports_and_reopens_survive_power_loss() {
    let mut steps = Vec::new();
    for i in 0..6u8 {
        steps.push(Step::Batch(vec![
            (i, Some(200)),
            (i + 10, Some(40)),
            (i + 20, None),
        ]));
        steps.push(Step::Increment(30, i64::from(i)));
    }
    steps.extend([
        Step::Cursor(0),
        Step::Import(3),
        Step::Compact,
        Step::Cursor(1),
        Step::Reopen,
        Step::Cursor(0),
        Step::Import(2),
        Step::Put(1, 9000),
        Step::Compact,
    ]);
    let w = scripted("batches, rotation, imports, reopens", steps);
    report(&w.name, &explore(&w));
}

#[test]
fn random_workloads_with_faults_survive_power_loss() {
    let cases: u64 = std::env::var("MERGEKV_POWER_LOSS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let (_, time_seed) = Rng::from_time();
    let seed = std::env::var("MERGEKV_POWER_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(time_seed);
    println!("power loss: {cases} random workloads, MERGEKV_POWER_LOSS_SEED={seed}");
    let mut total = Figures::default();
    let first: u64 = std::env::var("MERGEKV_POWER_LOSS_FIRST_CASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for case in first..first + cases {
        let w = random_workload(case, seed);
        let name = format!(
            "{} (MERGEKV_POWER_LOSS_SEED={seed}, fault {:?})",
            w.name, w.fault
        );
        let w = Workload { name, ..w };
        total += explore(&w);
    }
    report(&format!("{cases} random workloads"), &total);
}

/// Long enough for a loaded 2-core machine; waits end as soon as the
/// condition holds.
const CONVERGE: std::time::Duration = std::time::Duration::from_secs(60);

/// A replication leader on its own simulated disk, serving on loopback.
struct Leader {
    db: Db,
    server: ReplicationServer,
    token: String,
}

impl Leader {
    fn start() -> Leader {
        let options = Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_worker_threads(0)
            .with_compaction_wal_bytes_min(u64::MAX)
            .with_compaction_interval_ms(0)
            // A follower that went away is sent a snapshot, not the WAL.
            .with_wal_retention_bytes_max(0)
            .with_faults(Some(FaultInjector::with_disk(SimDisk::new())));
        let db = Db::open_with("/leader", options).unwrap();
        let (auth, token) = common::replication_auth(&db);
        let mut replication = ReplicationOptions::new(auth);
        replication.heartbeat_interval_ms = 50;
        let server = ReplicationServer::start(&db, "127.0.0.1:0", replication).unwrap();
        Leader { db, server, token }
    }

    /// A follower of this leader in `DB_DIR` on `disk`.
    fn follow(&self, disk: &SimDisk) -> Follower {
        let mut options =
            FollowerOptions::new(self.server.local_addr().to_string(), self.token.clone());
        options.db_options = options_for_follower(disk);
        options.backoff_initial_ms = 10;
        options.backoff_max_ms = 200;
        Follower::open(DB_DIR, options).unwrap()
    }

    /// One random write (a put, a delete, an increment or a batch).
    fn write(&self, rng: &mut Rng, step: usize) {
        let k = rng.below(8) as u8;
        match rng.below(4) {
            0 => drop(
                self.db
                    .put(key(k), value(step, 1 + rng.below(5000) as usize))
                    .unwrap(),
            ),
            1 => drop(self.db.delete(key(k)).unwrap()),
            2 => drop(self.db.increment(key(k), 3).unwrap()),
            _ => {
                let mut batch = Batch::new();
                batch
                    .put(key(k), value(step, 30))
                    .put(key(k + 10), value(step, 700));
                drop(self.db.write(batch).unwrap());
            }
        }
    }
}

fn options_for_follower(disk: &SimDisk) -> Options {
    options(disk, None)
}

/// Waits until the follower holds everything the leader wrote.
fn caught_up(follower: &Follower, leader: &Leader) {
    let target = leader.db.stats().wal.last_seq;
    assert!(
        follower.wait_for_seq(target, CONVERGE),
        "follower stuck at {:?}, leader at {target}",
        follower.status()
    );
}

#[test]
fn a_follower_applying_batches_and_installing_snapshots_survives_power_loss() {
    let mut rng = Rng::new(17);
    let leader = Leader::start();
    let disk = SimDisk::new();
    disk.record_crash_points(true);
    let mut t = Timeline {
        started: Vec::new(),
        acked: Vec::new(),
        states: vec![State::new()],
    };
    // Written and compacted away before the follower starts: it begins
    // from the leader's snapshot.
    let mut step = 0;
    let mut unacked = Vec::new();
    for _ in 0..12 {
        t.started.push(disk.crash_points_taken());
        leader.write(&mut rng, step);
        t.states.push(contents(&leader.db));
        unacked.push(step);
        step += 1;
    }
    leader.db.compact_now().unwrap();
    for round in 0..2 {
        let follower = leader.follow(&disk);
        caught_up(&follower, &leader);
        let ack = disk.crash_points_taken();
        t.acked.extend(unacked.drain(..).map(|_| Some(ack)));
        assert_eq!(contents(follower.db()), *t.states.last().unwrap());
        assert_eq!(follower.status().snapshots_installed, 1, "round {round}");
        // Streamed batches, acknowledged one by one.
        for _ in 0..8 {
            t.started.push(disk.crash_points_taken());
            leader.write(&mut rng, step);
            t.states.push(contents(&leader.db));
            caught_up(&follower, &leader);
            t.acked.push(Some(disk.crash_points_taken()));
            step += 1;
        }
        follower.stop();
        if round == 0 {
            // While it is away, the leader writes and compacts: the
            // follower comes back to another snapshot.
            for _ in 0..5 {
                t.started.push(disk.crash_points_taken());
                leader.write(&mut rng, step);
                t.states.push(contents(&leader.db));
                unacked.push(step);
                step += 1;
            }
            leader.db.compact_now().unwrap();
        }
    }
    let mut points = disk.take_crash_points();
    points.push(disk.crash_point_now("at the end of the workload"));
    disk.record_crash_points(false);
    // An install writes the leader's state as one run (and a manifest
    // naming only it): each install has crash points inside its own run.
    let in_install: std::collections::BTreeSet<&str> = points
        .iter()
        .filter_map(|p| {
            let at = p.label().find("/runs/run-")?;
            p.label().get(at..at + "/runs/run-".len() + 20)
        })
        .collect();
    assert!(
        in_install.len() >= 2,
        "the power is cut inside both installs: {in_install:?}"
    );
    let w = Workload {
        name: "a follower".into(),
        seed: 17,
        steps: Vec::new(),
        fault: None,
        follower: true,
    };
    let mut figures = Figures {
        crash_points: points.len(),
        ..Figures::default()
    };
    for point in &points {
        figures += check_point(&w, &t, point, point.index(), true);
    }
    leader.server.stop();
    report(&w.name, &figures);
}

/// A batch whose fsync failed is in the page cache after the process
/// restarts; a retry with its idempotency key is answered as a duplicate
/// of it. The open must have made it durable first: a power loss right
/// after the acknowledged retry keeps it.
#[test]
fn a_retry_after_a_restart_is_acknowledged_only_once_durable() {
    let disk = SimDisk::new();
    let faults = FaultInjector::with_disk(disk.clone());
    let db = Db::open_with(DB_DIR, options(&disk, Some(&faults))).unwrap();
    db.put("base", "1").unwrap();
    let batch = || {
        let mut b = Batch::new();
        b.put("order-42", "paid").idempotency_key("order-42");
        b
    };
    faults.fail_nth(IoOp::Sync, 1);
    assert!(db.write(batch()).is_err(), "not acknowledged");
    drop(db);
    // The process starts again (the page cache kept the frame); the
    // client retries.
    let db = Db::open_with(DB_DIR, options(&disk, None)).unwrap();
    db.write(batch()).expect("the retry is acknowledged");
    let point = disk.crash_point_now("right after the acknowledged retry");
    drop(db);
    for cut in point.cuts(1, 0) {
        let survivor = point.survivor(&cut);
        let db = Db::open_with(DB_DIR, options(&survivor, None)).unwrap();
        assert_eq!(
            db.get("order-42").unwrap().as_deref(),
            Some(&b"paid"[..]),
            "{cut}: an acknowledged write was lost to a power loss"
        );
    }
}
