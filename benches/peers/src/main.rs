//! mergekv and its peers (redb, fjall, sled) through the same workloads,
//! side by side (SPEC §12). See docs/BENCHMARKS.md, "Peers, side by side".
//!
//! The parent process plans the runs and prints the table; every
//! (engine, workload) run is a child process (this binary, re-executed with
//! `--child TASK`), so memory and caches belong to that run alone. Rounds
//! are interleaved: round r runs every workload on every engine once, the
//! engines in an order rotated by r.

mod data;
mod engines;
mod report;
mod sys;
mod workloads;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use engines::EngineKind;
use workloads::ChildArgs;

const USAGE: &str = "\
usage: mergekv-peers [--keys N] [--rounds R] [--secs S] [--opens K]
                     [--only RAW,W1,W2,W3,W4,W5,W6,W9] [--engines mergekv,redb,fjall,sled]
                     [--dir DIR] [--big [--big-keys N]] [--reuse-builds] [--keep] [--allow-tmpfs]

  --keys N        keys loaded for W3-W6 and W9 (default 1000000)
  --rounds R      interleaved rounds; medians are over rounds (default 3)
  --secs S        seconds of each timed run: RAW, W1, W2, W4 (default 3)
  --opens K       W6 opens per engine per round, each a fresh process (default 3)
  --only LIST     workloads to run (W9 runs W3's and W6's processes for its figures)
  --engines LIST  engines to run (default all four)
  --dir DIR       where the databases go (default: target/peers-data beside this package;
                  refused on tmpfs unless --allow-tmpfs)
  --big           also W12: load --big-keys (default 20000000) with a 256 MiB cache,
                  reopen, 100k random reads (long: use with --only W12 --rounds 1)
  --reuse-builds  reuse the loaded databases of an earlier run with the same binary and --keys
  --keep          keep the loaded databases afterwards (implied by --reuse-builds)";

/// The workloads, in the order they run within a round.
const WORKLOADS: [&str; 9] = ["RAW", "W1", "W2", "W3", "W4", "W5", "W6", "W9", "W12"];

pub struct Config {
    pub keys: u64,
    pub rounds: usize,
    pub secs: f64,
    pub opens: usize,
    pub workloads: Vec<&'static str>,
    pub engines: Vec<EngineKind>,
    pub dir: PathBuf,
    pub big_keys: u64,
    pub big_cache_bytes: u64,
    pub reuse_builds: bool,
    pub keep: bool,
    pub command_line: String,
}

impl Config {
    pub fn runs(&self, workload: &str) -> bool {
        self.workloads.contains(&workload)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        workloads::run(&parse_child(&args[1..]));
        return;
    }
    let cfg = match parse_parent(&args) {
        Ok(cfg) => cfg,
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    run_parent(&cfg);
}

fn value_of<'a>(args: &'a [String], i: &mut usize) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{} needs a value", args[*i - 1]))
}

fn number<T: std::str::FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("{flag}: not a number: {s}"))
}

fn parse_parent(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        keys: 1_000_000,
        rounds: 3,
        secs: 3.0,
        opens: 3,
        workloads: WORKLOADS.iter().copied().filter(|w| *w != "W12").collect(),
        engines: EngineKind::ALL.to_vec(),
        dir: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("peers-data"),
        big_keys: 20_000_000,
        big_cache_bytes: 256 << 20,
        reuse_builds: false,
        keep: false,
        command_line: std::iter::once("benches/peers/run".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut big = false;
    let mut only: Option<Vec<String>> = None;
    let mut allow_tmpfs = false;
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--keys" => cfg.keys = number(flag, value_of(args, &mut i)?)?,
            "--rounds" => cfg.rounds = number(flag, value_of(args, &mut i)?)?,
            "--secs" => cfg.secs = number(flag, value_of(args, &mut i)?)?,
            "--opens" => cfg.opens = number(flag, value_of(args, &mut i)?)?,
            "--big-keys" => cfg.big_keys = number(flag, value_of(args, &mut i)?)?,
            "--dir" => cfg.dir = PathBuf::from(value_of(args, &mut i)?),
            "--only" => {
                let list = value_of(args, &mut i)?;
                only = Some(list.split(',').map(|w| w.trim().to_uppercase()).collect());
            }
            "--engines" => {
                let list = value_of(args, &mut i)?;
                cfg.engines = list
                    .split(',')
                    .map(|e| EngineKind::parse(e.trim()).ok_or(format!("unknown engine {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--big" => big = true,
            "--reuse-builds" => cfg.reuse_builds = true,
            "--keep" => cfg.keep = true,
            "--allow-tmpfs" => allow_tmpfs = true,
            "-h" | "--help" => return Err("mergekv-peers: the peer benchmark".into()),
            other => return Err(format!("unknown argument {other}")),
        }
        i += 1;
    }
    if cfg.keys < 100 || cfg.rounds == 0 || cfg.opens == 0 || cfg.secs <= 0.0 {
        return Err("--keys must be at least 100; --rounds, --opens, --secs positive".into());
    }
    if let Some(only) = only {
        for w in &only {
            if !WORKLOADS.contains(&w.as_str()) {
                return Err(format!(
                    "unknown workload {w} (known: {})",
                    WORKLOADS.join(",")
                ));
            }
        }
        cfg.workloads.retain(|w| only.iter().any(|o| o == w));
        if only.iter().any(|o| o == "W12") {
            if !big {
                return Err("W12 runs only with --big".into());
            }
            cfg.workloads.push("W12");
        }
    } else if big {
        cfg.workloads.push("W12");
    }
    if cfg.engines.is_empty() {
        return Err("--engines: no engine".into());
    }
    std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("--dir {}: {e}", cfg.dir.display()))?;
    cfg.dir = cfg.dir.canonicalize().map_err(|e| e.to_string())?;
    let fs_type = sys::mount_of(&cfg.dir).map(|(fs_type, _)| fs_type);
    if fs_type.as_deref() == Some("tmpfs") && !allow_tmpfs {
        return Err(format!(
            "{} is on tmpfs (memory, not the disk): pass --dir on a disk, or --allow-tmpfs",
            cfg.dir.display()
        ));
    }
    cfg.keep |= cfg.reuse_builds;
    Ok(cfg)
}

fn parse_child(args: &[String]) -> ChildArgs {
    let mut child = ChildArgs {
        task: args[0].clone(),
        engine: None,
        keys: 0,
        secs: 0.0,
        threads: 1,
        db: PathBuf::new(),
        seed: 0,
        cache_bytes: None,
    };
    let mut i = 1;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = value_of(args, &mut i).expect("child argument");
        match flag {
            "--engine" => child.engine = EngineKind::parse(value),
            "--keys" => child.keys = number(flag, value).unwrap(),
            "--secs" => child.secs = number(flag, value).unwrap(),
            "--threads" => child.threads = number(flag, value).unwrap(),
            "--db" => child.db = PathBuf::from(value),
            "--seed" => child.seed = number(flag, value).unwrap(),
            "--cache" => child.cache_bytes = Some(number(flag, value).unwrap()),
            other => panic!("unknown child argument {other}"),
        }
        i += 1;
    }
    child
}

/// One child run to do.
struct Step {
    task: &'static str,
    engine: Option<EngineKind>,
    keys: u64,
    threads: usize,
    db: PathBuf,
    /// Remove the directory before the run (a fresh database)...
    clean_before: bool,
    /// ...and after it.
    clean_after: bool,
    cache_bytes: Option<u64>,
}

/// Everything measured: samples per (row, column), the column being an
/// engine's name or "raw".
#[derive(Default)]
pub struct Samples {
    pub by_cell: BTreeMap<(String, String), Vec<f64>>,
    pub failures: Vec<String>,
}

impl Samples {
    pub fn get(&self, row: &str, column: &str) -> &[f64] {
        self.by_cell
            .get(&(row.to_string(), column.to_string()))
            .map_or(&[], Vec::as_slice)
    }
}

/// The workload a result row belongs to (for `--only`).
fn workload_of(row: &str) -> &'static str {
    let prefix = row.split('_').next().unwrap_or("");
    match prefix {
        "raw" => "RAW",
        "w1" => "W1",
        "w2" => "W2",
        "w3" => "W3",
        "w4" => "W4",
        "w5" => "W5",
        "w6" => "W6",
        "w9" => "W9",
        "w12" => "W12",
        _ => "",
    }
}

fn run_parent(cfg: &Config) {
    let started = Instant::now();
    let exe = std::env::current_exe().expect("current_exe");
    let exe_id = exe_identity(&exe);
    let run_dir = cfg.dir.join("run");
    let builds_dir = cfg.dir.join("builds");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::create_dir_all(&builds_dir).unwrap();
    let header = report::header(cfg);
    eprintln!("{header}");
    let mut samples = Samples::default();
    let mut notes: Vec<String> = Vec::new();
    let build_of = |e: EngineKind| builds_dir.join(format!("{}-n{}", e.name(), cfg.keys));

    if ["W4", "W5", "W6", "W9"].iter().any(|w| cfg.runs(w)) {
        build_databases(cfg, &build_of, &exe_id, &mut samples, &mut notes);
    }

    for round in 0..cfg.rounds {
        let mut order = cfg.engines.clone();
        let shift = round % order.len();
        order.rotate_left(shift);
        eprintln!(
            "round {}/{}: {}",
            round + 1,
            cfg.rounds,
            order
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for step in plan_round(cfg, &order, &run_dir, &build_of) {
            if step.clean_before {
                let _ = std::fs::remove_dir_all(&step.db);
            }
            run_step(cfg, &step, round, &mut samples);
            if step.clean_after {
                let _ = std::fs::remove_dir_all(&step.db);
            }
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    notes.push(format!(
        "took {:.0} min {:.0} s in all",
        (elapsed / 60.0).floor(),
        elapsed % 60.0
    ));
    let table = report::table(cfg, &samples, &notes);
    println!("{header}\n\n{table}");
    let tsv = cfg.dir.join("samples.tsv");
    let mut text = String::from("row\tcolumn\tsamples\n");
    for ((row, column), xs) in &samples.by_cell {
        let xs: Vec<String> = xs.iter().map(|x| format!("{x}")).collect();
        text.push_str(&format!("{row}\t{column}\t{}\n", xs.join(",")));
    }
    std::fs::write(&tsv, text).unwrap();
    eprintln!("every sample: {}", tsv.display());
    let _ = std::fs::remove_dir_all(&run_dir);
    if !cfg.keep {
        let _ = std::fs::remove_dir_all(&builds_dir);
    }
    if !samples.failures.is_empty() {
        std::process::exit(1);
    }
}

/// Loads the database each read workload opens, one per engine, once per
/// invocation (or reuses one made by this binary with --reuse-builds), and
/// records its disk use for W9.
fn build_databases(
    cfg: &Config,
    build_of: &dyn Fn(EngineKind) -> PathBuf,
    exe_id: &str,
    samples: &mut Samples,
    notes: &mut Vec<String>,
) {
    for &e in &cfg.engines {
        let db = build_of(e);
        let stamp = db.with_extension("stamp");
        if cfg.reuse_builds && std::fs::read_to_string(&stamp).ok().as_deref() == Some(exe_id) {
            eprintln!("build {}: reusing {}", e.name(), db.display());
        } else {
            let _ = std::fs::remove_file(&stamp);
            let _ = std::fs::remove_dir_all(&db);
            let step = Step {
                task: "build",
                engine: Some(e),
                keys: cfg.keys,
                threads: 1,
                db: db.clone(),
                clean_before: false,
                clean_after: false,
                cache_bytes: None,
            };
            let Some(out) = run_step(cfg, &step, 0, samples) else {
                continue;
            };
            std::fs::write(&stamp, exe_id).expect("write the build's stamp");
            notes.push(format!(
                "build {}: loaded at {} keys/s, then compaction/flush {:.1} s",
                e.name(),
                report::fmt_num(out.get("build_load").copied().unwrap_or(f64::NAN)),
                out.get("build_compact_secs").copied().unwrap_or(f64::NAN),
            ));
        }
        if cfg.runs("W9") {
            let bytes = sys::disk_usage(&db) as f64;
            samples
                .by_cell
                .entry(("w9_disk".into(), e.name().into()))
                .or_default()
                .push(bytes / cfg.keys as f64);
        }
    }
}

/// The child runs of one round, engines in `order` within each workload.
fn plan_round(
    cfg: &Config,
    order: &[EngineKind],
    run_dir: &Path,
    build_of: &dyn Fn(EngineKind) -> PathBuf,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let fresh = |task: &'static str, e: Option<EngineKind>, keys: u64, threads: usize| Step {
        task,
        engine: e,
        keys,
        threads,
        db: run_dir.join(format!(
            "{task}-{}-{threads}",
            e.map_or("raw", EngineKind::name)
        )),
        clean_before: true,
        clean_after: true,
        cache_bytes: None,
    };
    let on_build = |task: &'static str, e: EngineKind, threads: usize| Step {
        task,
        engine: Some(e),
        keys: cfg.keys,
        threads,
        db: build_of(e),
        clean_before: false,
        clean_after: false,
        cache_bytes: None,
    };
    if cfg.runs("RAW") {
        steps.push(fresh("raw-append", None, 0, 1));
        steps.push(fresh("raw-presized", None, 0, 1));
    }
    if cfg.runs("W1") {
        steps.extend(order.iter().map(|&e| fresh("w1", Some(e), 0, 1)));
    }
    if cfg.runs("W2") {
        for threads in [8, 64] {
            steps.extend(order.iter().map(|&e| fresh("w2", Some(e), 0, threads)));
        }
    }
    if cfg.runs("W3") || cfg.runs("W9") {
        steps.extend(order.iter().map(|&e| fresh("w3", Some(e), cfg.keys, 1)));
    }
    if cfg.runs("W4") {
        for (task, threads) in [
            ("w4-cached", 1),
            ("w4-cached", 2),
            ("w4-uniform", 1),
            ("w4-uniform", 2),
        ] {
            steps.extend(order.iter().map(|&e| on_build(task, e, threads)));
        }
    }
    if cfg.runs("W5") {
        steps.extend(order.iter().map(|&e| on_build("w5", e, 1)));
    }
    if cfg.runs("W6") || cfg.runs("W9") {
        for _ in 0..cfg.opens {
            steps.extend(order.iter().map(|&e| on_build("w6", e, 1)));
        }
    }
    if cfg.runs("W12") {
        for &e in order {
            // The load starts from nothing, the read opens what it left
            // and removes it afterwards.
            let mut load = fresh("w12-load", Some(e), cfg.big_keys, 1);
            load.clean_after = false;
            load.cache_bytes = Some(cfg.big_cache_bytes);
            let mut read = fresh("w12-read", Some(e), cfg.big_keys, 1);
            read.db = load.db.clone();
            read.clean_before = false;
            read.cache_bytes = Some(cfg.big_cache_bytes);
            steps.push(load);
            steps.push(read);
        }
    }
    steps
}

/// Runs one child and records what it reports; None if it failed.
fn run_step(
    cfg: &Config,
    step: &Step,
    round: usize,
    samples: &mut Samples,
) -> Option<HashMap<String, f64>> {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(exe);
    command
        .arg("--child")
        .arg(step.task)
        .args(["--keys", &step.keys.to_string()])
        .args(["--secs", &cfg.secs.to_string()])
        .args(["--threads", &step.threads.to_string()])
        .arg("--db")
        .arg(&step.db)
        // The same seed for every engine within a round: they read the same keys.
        .args(["--seed", &(round as u64 * 7919 + 17).to_string()]);
    if let Some(e) = step.engine {
        command.args(["--engine", e.name()]);
    }
    if let Some(bytes) = step.cache_bytes {
        command.args(["--cache", &bytes.to_string()]);
    }
    let column = step.engine.map_or("raw", EngineKind::name);
    // Dirty pages left by earlier runs (or anything else) would be written
    // back during this run's fsyncs (ext4 commits its journal with them):
    // start every run with none.
    let _ = Command::new("sync").status();
    let label = format!("{} {column} threads={}", step.task, step.threads);
    let start = Instant::now();
    let output = command.output().expect("spawn a child");
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!(
            "  {label}: FAILED ({})\n    {}",
            output.status,
            tail.join("\n    ")
        );
        samples
            .failures
            .push(format!("{label}: {}", tail.last().copied().unwrap_or("")));
        return None;
    }
    for line in stderr.lines() {
        eprintln!("  {label}: {line}");
    }
    let mut results = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("@") {
            continue;
        }
        let (Some(row), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        results.insert(row.to_string(), value);
        if cfg.runs(workload_of(row)) {
            samples
                .by_cell
                .entry((row.to_string(), column.to_string()))
                .or_default()
                .push(value);
        }
    }
    let mut shown: Vec<String> = results
        .iter()
        .map(|(row, v)| format!("{row} {}", report::fmt_num(*v)))
        .collect();
    shown.sort();
    eprintln!("  {label}: {} [{secs:.1} s]", shown.join(", "));
    Some(results)
}

/// Identifies this binary (size and modification time), so that a reused
/// build was made by the same code.
fn exe_identity(exe: &Path) -> String {
    let meta = std::fs::metadata(exe).expect("stat the binary");
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {}", meta.len(), mtime)
}
