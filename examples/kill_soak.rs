//! Kill soak: a child process writes to a database from several threads
//! (puts, deletes, atomic batches, counter increments, all under
//! `SyncMode::Always`) while another thread forces compactions; the parent
//! kills it with SIGKILL at a random moment, reopens the database and
//! checks it against a model of everything the child acknowledged, then
//! starts the next child on the same directory.
//!
//! ```text
//! cargo run --release --example kill_soak -- --kills 1000
//! ```
//!
//! Options: `--kills N` (default 20), `--seed S` (default: from the time;
//! printed), `--threads T` writer threads (default 4), `--min-delay-ms` and
//! `--max-delay-ms` (the kill lands this long after the child starts,
//! uniformly; default 20 and 400), `--dir PATH` (keep the database there;
//! default: a temporary directory), `--tamper` (the checker's own test:
//! after each kill, one acknowledged key is dropped from what was read
//! back, so the soak must report losses and exit non-zero), `--encrypted`
//! (every round under encryption at rest, with a fixed test key),
//! `--stop-at-failure` (stop at the first failed check and leave the
//! directory as it is, for a look with `--dir`), `--verbose` (one line per
//! kill: delay, writes acknowledged per thread, compactions).
//!
//! The child reports each acknowledged write on a pipe, one line per write,
//! only after `Db::write` returned: a line the parent reads is a write the
//! database acknowledged (the pipe's bytes outlive the child). Each thread
//! writes one operation at a time, and which operation is the thread's
//! `i`-th is a function of (round, thread, i), so the parent knows the one
//! operation per thread that may or may not have landed: the one after the
//! last reported. After each kill, for each thread, the database must read
//! exactly as the model with all reported operations applied, or with the
//! in-doubt one applied too: anything else is a loss (an acknowledged write
//! missing or changed), a partial batch (the in-doubt batch half applied),
//! or a phantom. Every earlier round's writes are checked again each time,
//! since the model is the whole expected content. Opening must never fail.
//!
//! Prints kills, acknowledged writes checked and losses; exits non-zero on
//! any loss, partial batch, phantom, wrong acknowledged counter, failed
//! open, or a child that died by itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use mergekv::{Batch, Db, Options, ScanOptions, SyncMode};

/// Keys per thread and kind: puts and batches cycle over this many slots,
/// so the database stays small however long the soak runs.
const SLOTS: u64 = 64;
/// Keys each batch writes (besides its counter increment).
const BATCH_KEYS: usize = 3;
/// Pause between forced compactions in the child.
const COMPACTION_PAUSE_MS: u64 = 25;
/// A child that has not been killed after this long stops by itself (if
/// the parent died).
const CHILD_LIFETIME_MAX_MS: u64 = 120_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if let Some(at) = args.iter().position(|a| a == "--child") {
        child(&args, at)
    } else {
        Config::parse(&args).and_then(|config| parent(&config))
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("kill_soak: {message}");
            ExitCode::from(2)
        }
    }
}

struct Config {
    kills: u64,
    seed: u64,
    threads: usize,
    min_delay_ms: u64,
    max_delay_ms: u64,
    dir: Option<PathBuf>,
    tamper: bool,
    stop_at_failure: bool,
    verbose: bool,
    /// Every round under encryption at rest (a fixed test key).
    encrypted: bool,
}

impl Config {
    fn parse(args: &[String]) -> Result<Config, String> {
        let mut config = Config {
            kills: 20,
            seed: seed_from_time(),
            threads: 4,
            min_delay_ms: 20,
            max_delay_ms: 400,
            dir: None,
            tamper: false,
            stop_at_failure: false,
            verbose: false,
            encrypted: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let number = |text: &String| {
                text.parse::<u64>()
                    .map_err(|_| format!("{flag}: not a number: {text}"))
            };
            match flag.as_str() {
                "--kills" => config.kills = number(value()?)?,
                "--seed" => config.seed = number(value()?)?,
                "--threads" => config.threads = number(value()?)?.clamp(1, 64) as usize,
                "--min-delay-ms" => config.min_delay_ms = number(value()?)?,
                "--max-delay-ms" => config.max_delay_ms = number(value()?)?,
                "--dir" => config.dir = Some(PathBuf::from(value()?)),
                "--tamper" => config.tamper = true,
                "--encrypted" => config.encrypted = true,
                "--stop-at-failure" => config.stop_at_failure = true,
                "--verbose" => config.verbose = true,
                "--help" | "-h" => {
                    return Err("usage: kill_soak [--kills N] [--seed S] [--threads T] \
                         [--min-delay-ms MS] [--max-delay-ms MS] [--dir PATH] [--tamper] [--encrypted] [--stop-at-failure] [--verbose]"
                        .into());
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        config.max_delay_ms = config.max_delay_ms.max(config.min_delay_ms);
        Ok(config)
    }
}

fn seed_from_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------- workload

/// One operation of a writer thread.
#[derive(Clone, Debug)]
enum Op {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Puts `keys` to `value` and increments `counter`, atomically, under
    /// an idempotency key.
    Batch {
        keys: Vec<String>,
        value: String,
        counter: String,
        id: String,
    },
    Increment {
        counter: String,
    },
}

/// The `i`-th operation of `thread` in `round`: the child does it, the
/// parent's model replays it.
fn op(round: u64, thread: usize, i: u64) -> Op {
    let cycle = i / 4;
    let value = format!("r{round}i{i}");
    match i % 4 {
        0 => Op::Put {
            key: format!("t{thread}/p{:02}", cycle % SLOTS),
            value,
        },
        1 => Op::Batch {
            keys: (0..BATCH_KEYS)
                .map(|k| format!("t{thread}/b{:02}/{k}", cycle % SLOTS))
                .collect(),
            value,
            counter: format!("t{thread}/batches"),
            id: format!("soak-r{round}-t{thread}-i{i}"),
        },
        2 => Op::Increment {
            counter: format!("t{thread}/count"),
        },
        // Deletes a slot put half a lap ago; it is put again later.
        _ => Op::Delete {
            key: format!("t{thread}/p{:02}", (cycle + SLOTS / 2) % SLOTS),
        },
    }
}

/// What the database reads as: every visible key's text (counters in
/// decimal).
type State = BTreeMap<String, String>;

fn apply(state: &mut State, op: &Op) {
    let increment = |state: &mut State, counter: &str| {
        let now: i64 = state.get(counter).map_or(0, |v| v.parse().unwrap_or(0));
        state.insert(counter.to_string(), (now + 1).to_string());
    };
    match op {
        Op::Put { key, value } => {
            state.insert(key.clone(), value.clone());
        }
        Op::Delete { key } => {
            state.remove(key);
        }
        Op::Batch {
            keys,
            value,
            counter,
            ..
        } => {
            for key in keys {
                state.insert(key.clone(), value.clone());
            }
            increment(state, counter);
        }
        Op::Increment { counter } => increment(state, counter),
    }
}

/// The counter an operation increments, if any.
fn counter_of(op: &Op) -> Option<&str> {
    match op {
        Op::Batch { counter, .. } | Op::Increment { counter } => Some(counter),
        _ => None,
    }
}

// ------------------------------------------------------------------- child

/// The key of `--encrypted` soaks (a fixed test key: the soak tests the
/// engine, not key handling).
fn soak_key(encrypted: bool) -> Option<mergekv::KeySource> {
    encrypted.then(|| mergekv::KeySource::Key(mergekv::EncryptionKey::from_bytes([0x5e; 32])))
}

fn child_options(encrypted: bool) -> Options {
    Options::default()
        .with_encryption_key(soak_key(encrypted))
        .with_sync_mode(SyncMode::Always)
        .with_segment_size_bytes_max(64 * 1024)
        .with_compaction_wal_bytes_min(32 * 1024)
        .with_compactor_tick_ms(1)
        .with_tombstone_grace_ms(0)
        // A memtable this small is written out as a run every few dozen
        // writes, so kills land in flushes, merges (the size-tiered policy
        // merges every few flushes) and manifest replacements.
        .with_memtable_bytes_max(16 * 1024)
}

/// The child: `--child DIR --round R --threads T`. Writes until killed,
/// printing `ack <thread> <i> [<counter>]` after each acknowledged write and
/// `compacted` after each forced compaction.
fn child(args: &[String], at: usize) -> Result<ExitCode, String> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .ok_or_else(|| format!("child: missing {flag}"))
    };
    let dir = args.get(at + 1).ok_or("child: missing directory")?;
    let round: u64 = value("--round")?.parse().map_err(|_| "child: bad round")?;
    let threads: usize = value("--threads")?
        .parse()
        .map_err(|_| "child: bad threads")?;
    let encrypted = args.iter().any(|a| a == "--encrypted");
    let db =
        Db::open_with(dir, child_options(encrypted)).map_err(|e| format!("child open: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(CHILD_LIFETIME_MAX_MS);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let db = &db;
            scope.spawn(move || child_writer(db, round, thread, deadline));
        }
        scope.spawn(|| child_compactor(&db, deadline));
    });
    Ok(ExitCode::SUCCESS)
}

/// Reports one line; a failed write means the parent is gone: stop.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

fn child_writer(db: &Db, round: u64, thread: usize, deadline: Instant) {
    for i in 0.. {
        if Instant::now() > deadline {
            return;
        }
        let op = op(round, thread, i);
        let counter = match &op {
            Op::Put { key, value } => db.put(key, value).map(|_| None),
            Op::Delete { key } => db.delete(key).map(|_| None),
            Op::Batch {
                keys,
                value,
                counter,
                id,
            } => {
                let mut batch = Batch::new();
                for key in keys {
                    batch.put(key, value);
                }
                batch.increment(counter, 1).idempotency_key(id);
                db.write(batch)
                    .map(|outcomes| outcomes.last().and_then(|o| o.counter))
            }
            Op::Increment { counter } => db.increment(counter, 1).map(|o| o.counter),
        };
        match counter {
            Ok(Some(total)) => report(&format!("ack {thread} {i} {total}\n")),
            Ok(None) => report(&format!("ack {thread} {i}\n")),
            Err(e) => {
                eprintln!("kill_soak child: thread {thread} op {i}: {e}");
                std::process::exit(3);
            }
        }
    }
}

fn child_compactor(db: &Db, deadline: Instant) {
    while Instant::now() < deadline {
        // Pacing only: compactions back to back would starve the writers
        // of the WAL's attention without testing anything more.
        std::thread::sleep(Duration::from_millis(COMPACTION_PAUSE_MS));
        match db.compact_now() {
            Ok(_) => report("compacted\n"),
            Err(e) => {
                eprintln!("kill_soak child: compaction: {e}");
                std::process::exit(3);
            }
        }
    }
}

// ------------------------------------------------------------------ parent

/// What one child reported before it was killed.
#[derive(Default)]
struct Reports {
    /// Per thread, the counter each acknowledged operation returned (if it
    /// returned one), in operation order.
    acked: BTreeMap<usize, Vec<Option<i64>>>,
    compactions: u64,
    /// A line that does not parse, or an operation out of order.
    garbled: Vec<String>,
}

fn read_reports(child: &mut Child) -> std::thread::JoinHandle<Reports> {
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    std::thread::spawn(move || {
        let mut reports = Reports::default();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "compacted" {
                reports.compactions += 1;
                continue;
            }
            let fields: Vec<&str> = line.split(' ').collect();
            let parsed = match fields.as_slice() {
                ["ack", t, i, rest @ ..] => t
                    .parse::<usize>()
                    .ok()
                    .zip(i.parse::<usize>().ok())
                    .map(|(t, i)| (t, i, rest.first().and_then(|c| c.parse().ok()))),
                _ => None,
            };
            match parsed {
                Some((t, i, counter)) if reports.acked.entry(t).or_default().len() == i => {
                    reports.acked.entry(t).or_default().push(counter);
                }
                _ => reports.garbled.push(line),
            }
        }
        reports
    })
}

#[derive(Default)]
struct Tally {
    kills: u64,
    writes_checked: u64,
    keys_checked: u64,
    in_doubt_landed: u64,
    compactions: u64,
    losses: u64,
    partial_batches: u64,
    phantoms: u64,
    wrong_counters: u64,
    failed_opens: u64,
    child_deaths: u64,
}

impl Tally {
    fn failures(&self) -> u64 {
        self.losses
            + self.partial_batches
            + self.phantoms
            + self.wrong_counters
            + self.failed_opens
            + self.child_deaths
    }
}

fn parent(config: &Config) -> Result<ExitCode, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = config
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!(
        "kill_soak: seed {}, {} kills, {} writer threads, kill after {}..{} ms, in {}",
        config.seed,
        config.kills,
        config.threads,
        config.min_delay_ms,
        config.max_delay_ms,
        dir.display()
    );
    let mut rng = Rng(config.seed | 1);
    let mut model = State::new();
    let mut tally = Tally::default();
    let started = Instant::now();
    for round in 0..config.kills {
        let delay = config.min_delay_ms + rng.below(config.max_delay_ms - config.min_delay_ms + 1);
        let reports = run_and_kill(&exe, &dir, round, config, delay, &mut tally)?;
        tally.kills += 1;
        tally.compactions += reports.compactions;
        for line in &reports.garbled {
            eprintln!("round {round}: unexpected report line {line:?}");
            tally.child_deaths += 1;
        }
        let reopen = mergekv::Options::default().with_encryption_key(soak_key(config.encrypted));
        let db = match Db::open_with(&dir, reopen) {
            Ok(db) => db,
            Err(e) => {
                eprintln!("round {round}: open failed after the kill: {e}");
                tally.failed_opens += 1;
                break;
            }
        };
        let actual = read_state(&db);
        let check = Check {
            round,
            threads: config.threads,
            tamper: config.tamper,
        };
        let failures_before = tally.failures();
        check.run(&reports, &mut model, &actual, &mut tally);
        if config.verbose {
            let acked: Vec<usize> = (0..config.threads)
                .map(|t| reports.acked.get(&t).map_or(0, Vec::len))
                .collect();
            println!(
                "  round {round}: killed after {delay} ms, acknowledged per thread {acked:?}, {} compactions",
                reports.compactions
            );
        }
        if config.stop_at_failure && tally.failures() > failures_before {
            println!("stopped at the first failure, round {round}");
            drop(db);
            break;
        }
        db.close()
            .map_err(|e| format!("round {round}: close: {e}"))?;
        if (round + 1) % 100 == 0 {
            println!(
                "  {} kills, {} writes checked, {} failures, {:.0} s",
                round + 1,
                tally.writes_checked,
                tally.failures(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "kills: {}, acknowledged writes checked: {}, losses: {}, partial batches: {}, \
         phantoms: {}, wrong acknowledged counters: {}, failed opens: {}, child deaths: {}",
        tally.kills,
        tally.writes_checked,
        tally.losses,
        tally.partial_batches,
        tally.phantoms,
        tally.wrong_counters,
        tally.failed_opens,
        tally.child_deaths
    );
    println!(
        "({} key checks, {} in-doubt writes found landed, {} forced compactions acknowledged, \
         {:.0} s, seed {})",
        tally.keys_checked,
        tally.in_doubt_landed,
        tally.compactions,
        started.elapsed().as_secs_f64(),
        config.seed
    );
    Ok(if tally.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts a child on `dir`, SIGKILLs it `delay_ms` later, returns what it
/// reported.
fn run_and_kill(
    exe: &Path,
    dir: &Path,
    round: u64,
    config: &Config,
    delay_ms: u64,
    tally: &mut Tally,
) -> Result<Reports, String> {
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(dir)
        .args(["--round", &round.to_string()])
        .args(["--threads", &config.threads.to_string()])
        .args(config.encrypted.then_some("--encrypted"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let reader = read_reports(&mut child);
    // The kill time is the input here, so a sleep is what is meant.
    std::thread::sleep(Duration::from_millis(delay_ms));
    if let Ok(Some(status)) = child.try_wait() {
        eprintln!("round {round}: the child exited by itself ({status})");
        tally.child_deaths += 1;
    }
    child
        .kill()
        .map_err(|e| format!("killing the child: {e}"))?; // SIGKILL
    child
        .wait()
        .map_err(|e| format!("waiting for the child: {e}"))?;
    reader
        .join()
        .map_err(|_| "the report reader panicked".to_string())
}

fn read_state(db: &Db) -> State {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|entry| {
            (
                String::from_utf8_lossy(entry.key()).into_owned(),
                entry.value().to_text(),
            )
        })
        .collect()
}

/// What every key of `thread` starts with.
fn thread_prefix(thread: usize) -> String {
    format!("t{thread}/")
}

/// The keys of `thread` in `state`.
fn thread_part(state: &State, thread: usize) -> State {
    let prefix = thread_prefix(thread);
    state
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The check after one kill.
struct Check {
    round: u64,
    threads: usize,
    /// Drop one acknowledged key from what was read back (`--tamper`).
    tamper: bool,
}

impl Check {
    /// Checks each thread's keys after a kill, and moves the model to what
    /// the database holds.
    fn run(&self, reports: &Reports, model: &mut State, actual: &State, tally: &mut Tally) {
        let empty = Vec::new();
        let round = self.round;
        for thread in 0..self.threads {
            let acked = reports.acked.get(&thread).unwrap_or(&empty);
            let mut expected = thread_part(model, thread);
            for (i, counter) in acked.iter().enumerate() {
                let op = op(round, thread, i as u64);
                apply(&mut expected, &op);
                if let (Some(name), Some(got)) = (counter_of(&op), counter) {
                    let want = expected.get(name).cloned().unwrap_or_default();
                    if want != got.to_string() {
                        eprintln!(
                            "round {round} thread {thread} op {i}: acknowledged counter {got}, expected {want}"
                        );
                        tally.wrong_counters += 1;
                    }
                }
            }
            tally.writes_checked += acked.len() as u64;
            let in_doubt = op(round, thread, acked.len() as u64);
            let mut landed = expected.clone();
            apply(&mut landed, &in_doubt);
            let mut got = thread_part(actual, thread);
            if self.tamper
                && let Some(key) = expected.keys().find(|k| landed.contains_key(*k))
            {
                got.remove(key);
            }
            tally.keys_checked += got.len().max(expected.len()) as u64;
            if got == landed && got != expected {
                tally.in_doubt_landed += 1;
            } else if got != expected {
                classify(round, thread, &in_doubt, &expected, &landed, &got, tally);
            }
            // The thread's keys in the model become exactly what was read:
            // deleted ones included.
            let prefix = thread_prefix(thread);
            model.retain(|key, _| !key.starts_with(&prefix));
            model.extend(got);
        }
    }
}

/// Says what is wrong with a thread's keys that match neither outcome: a
/// key that holds neither its acknowledged value nor the in-doubt
/// operation's is lost (or a phantom, if it should not exist at all); an
/// in-doubt operation found applied on some of its keys and not on others
/// is a partial batch.
fn classify(
    round: u64,
    thread: usize,
    in_doubt: &Op,
    expected: &State,
    landed: &State,
    got: &State,
    tally: &mut Tally,
) {
    let keys: std::collections::BTreeSet<&String> = expected
        .keys()
        .chain(landed.keys())
        .chain(got.keys())
        .collect();
    let (mut applied_on, mut missing_on) = (0, 0);
    for key in keys {
        let (want, alt, have) = (expected.get(key), landed.get(key), got.get(key));
        if want != alt {
            // A key the in-doubt operation changes.
            if have == alt {
                applied_on += 1;
            } else if have == want {
                missing_on += 1;
            }
        }
        if have == want || have == alt {
            continue;
        }
        if want.is_none() && alt.is_none() {
            eprintln!("round {round} thread {thread}: phantom {key} = {have:?}");
            tally.phantoms += 1;
        } else {
            eprintln!(
                "round {round} thread {thread}: LOST {key}: expected {want:?} (or {alt:?}), found {have:?}"
            );
            tally.losses += 1;
        }
    }
    if applied_on > 0 && missing_on > 0 {
        eprintln!("round {round} thread {thread}: in-doubt {in_doubt:?} partly applied");
        tally.partial_batches += 1;
    }
}

/// xorshift64*: enough for kill delays, and replayable from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}
