//! The header and the one table of medians.

use std::process::Command;

use crate::engines::EngineKind;
use crate::workloads::cached_working_set_keys;
use crate::{Config, Samples, data, sys};

/// A row of the table.
struct Row {
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    /// Each operation durable: compared with the best fdatasync peer too.
    durable: bool,
}

const fn row(
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    durable: bool,
) -> Row {
    Row {
        id,
        label,
        unit,
        higher_is_better,
        durable,
    }
}

const ROWS: &[Row] = &[
    row(
        "raw_append",
        "RAW append 128 B + fdatasync",
        "/s ↑",
        true,
        true,
    ),
    row(
        "raw_presized",
        "RAW pre-sized file, 128 B + fdatasync",
        "/s ↑",
        true,
        true,
    ),
    row(
        "w1",
        "W1 one writer, durable commit per put",
        "/s ↑",
        true,
        true,
    ),
    row("w2_8", "W2 8 writers, durable per put", "/s ↑", true, true),
    row(
        "w2_64",
        "W2 64 writers, durable per put",
        "/s ↑",
        true,
        true,
    ),
    row(
        "w3",
        "W3 bulk load, batches of 10k, durable per batch",
        "keys/s ↑",
        true,
        true,
    ),
    row(
        "w4_cached_1",
        "W4a random gets, cached working set, 1 thread",
        "/s ↑",
        true,
        false,
    ),
    row(
        "w4_cached_2",
        "W4a random gets, cached working set, 2 threads",
        "/s ↑",
        true,
        false,
    ),
    row(
        "w4_uniform_1",
        "W4b random gets, all keys, 1 thread",
        "/s ↑",
        true,
        false,
    ),
    row(
        "w4_uniform_2",
        "W4b random gets, all keys, 2 threads",
        "/s ↑",
        true,
        false,
    ),
    row("w5_full", "W5 full scan", "keys/s ↑", true, false),
    row(
        "w5_range",
        "W5 100k range scans of 10 keys",
        "scans/s ↑",
        true,
        false,
    ),
    row(
        "w6",
        "W6 reopen to first get, after a clean close",
        "ms ↓",
        false,
        false,
    ),
    row(
        "w9_disk",
        "W9 disk per key after compaction/flush (du)",
        "B/key ↓",
        false,
        false,
    ),
    row(
        "w9_rss_open",
        "W9 RSS of a fresh process after open + 1 get",
        "B/key ↓",
        false,
        false,
    ),
    row(
        "w9_load_peak",
        "W9 peak RSS (VmHWM) of the W3 load",
        "MiB ↓",
        false,
        false,
    ),
    row(
        "w9_load_growth",
        "W9 RSS growth during the W3 load",
        "B/key ↓",
        false,
        false,
    ),
    row(
        "w12_load",
        "W12 load, 256 MiB cache, batches of 10k",
        "keys/s ↑",
        true,
        true,
    ),
    row(
        "w12_load_peak",
        "W12 peak RSS of the load",
        "MiB ↓",
        false,
        false,
    ),
    row("w12_open", "W12 reopen to first get", "ms ↓", false, false),
    row("w12_reads", "W12 100k random gets", "/s ↑", true, false),
    row(
        "w12_read_peak",
        "W12 peak RSS of reopen + reads",
        "MiB ↓",
        false,
        false,
    ),
];

/// Three significant figures, with k and M for large numbers.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e5 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 1e3 {
        let i = v.round() as i64;
        format!("{},{:03}", i / 1000, i % 1000)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The median (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn cell(xs: &[f64], dagger: bool) -> String {
    if xs.is_empty() {
        return String::new();
    }
    let mark = if dagger { " †" } else { "" };
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (m, lo_s, hi_s) = (fmt_num(median(xs)), fmt_num(lo), fmt_num(hi));
    if xs.len() == 1 || lo_s == hi_s {
        format!("{m}{mark}")
    } else {
        format!("{m}{mark} ({lo_s}–{hi_s})")
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What was measured, on what, by which command.
pub fn header(cfg: &Config) -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let commit = command_output("git", &["-C", repo, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "?".into());
    let dirty = command_output(
        "git",
        &["-C", repo, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_some_and(|s| !s.is_empty());
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_gib = sys::meminfo_bytes("MemTotal") as f64 / (1u64 << 30) as f64;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (fs_type, device) = sys::mount_of(&cfg.dir).unwrap_or(("?".into(), "?".into()));
    let engines: Vec<&str> = cfg.engines.iter().map(|e| e.name()).collect();
    let working_set = cached_working_set_keys(cfg.keys);
    format!(
        "mergekv-peers, {date}: `{}`\n\
         mergekv {} at commit {commit}{}; redb {}, fjall {}, sled {}; default options everywhere\n\
         {} keys of {} B, values of {} random B; {} interleaved rounds (engine order rotated each round); \
         timed runs {} s; W6 {} opens per engine per round; engines: {}\n\
         machine: {cores} cores, {mem_gib:.0} GiB, Linux {}, data in {} ({fs_type} on {device}); \
         W4a working set: {working_set} keys adjacent in key order ({:.1} MiB of keys and values)",
        cfg.command_line,
        env!("PEERS_VERSION_MERGEKV"),
        if dirty { " (uncommitted changes)" } else { "" },
        env!("PEERS_VERSION_REDB"),
        env!("PEERS_VERSION_FJALL"),
        env!("PEERS_VERSION_SLED"),
        cfg.keys,
        data::KEY_BYTES,
        data::VALUE_BYTES,
        cfg.rounds,
        cfg.secs,
        cfg.opens,
        engines.join(", "),
        kernel.trim(),
        cfg.dir.display(),
        working_set as f64 * (data::KEY_BYTES + data::VALUE_BYTES) as f64 / (1u64 << 20) as f64,
    )
}

/// The table of medians (min–max), in Markdown, and the notes under it.
pub fn table(cfg: &Config, samples: &Samples, notes: &[String]) -> String {
    let peers: Vec<EngineKind> = cfg
        .engines
        .iter()
        .copied()
        .filter(|&e| e != EngineKind::Mergekv)
        .collect();
    let mut out = String::from("| workload | unit | raw disk |");
    for e in &cfg.engines {
        out.push_str(&format!(" {} |", e.name()));
    }
    out.push_str(" mergekv ÷ best peer | mergekv ÷ best fdatasync peer |\n|---|---|---|");
    for _ in &cfg.engines {
        out.push_str("---|");
    }
    out.push_str("---|---|\n");
    for row in ROWS {
        let any = samples.by_cell.keys().any(|(r, _)| r == row.id);
        if !any {
            continue;
        }
        out.push_str(&format!(
            "| {} | {} | {} |",
            row.label,
            row.unit,
            cell(samples.get(row.id, "raw"), false)
        ));
        for &e in &cfg.engines {
            let dagger = row.durable && !e.fdatasync_durable();
            out.push_str(&format!(
                " {} |",
                cell(samples.get(row.id, e.name()), dagger)
            ));
        }
        let ours = median(samples.get(row.id, EngineKind::Mergekv.name()));
        let best = |filter: &dyn Fn(EngineKind) -> bool| -> f64 {
            let medians = peers
                .iter()
                .filter(|&&e| filter(e))
                .map(|&e| median(samples.get(row.id, e.name())))
                .filter(|m| m.is_finite());
            if row.higher_is_better {
                medians.fold(f64::NAN, f64::max)
            } else {
                medians.fold(f64::NAN, f64::min)
            }
        };
        let ratio = |best: f64| {
            let r = ours / best;
            if r.is_finite() {
                format!("{r:.2}")
            } else {
                String::new()
            }
        };
        let to_fdatasync = if row.durable {
            ratio(best(&|e: EngineKind| e.fdatasync_durable()))
        } else {
            String::new()
        };
        out.push_str(&format!(
            " {} | {} |\n",
            ratio(best(&|_| true)),
            to_fdatasync
        ));
    }
    out.push_str(
        "\nMedians over rounds (min–max in brackets). ↑: higher is better, ↓: lower is better; \
         a ratio above 1 means mergekv's figure is larger. \
         † sled 0.34's flush ends in sync_file_range, not fdatasync: weaker durability, \
         so not a durability bar (the last column leaves it out).\n",
    );
    let w1 = median(samples.get("w1", EngineKind::Mergekv.name()));
    let presized = median(samples.get("raw_presized", "raw"));
    if (w1 / presized).is_finite() {
        out.push_str(&format!(
            "mergekv W1 ÷ RAW pre-sized: {:.2} (SPEC §12 target ≥ 0.9).\n",
            w1 / presized
        ));
    }
    for note in notes {
        out.push_str(&format!("{note}\n"));
    }
    for failure in &samples.failures {
        out.push_str(&format!("FAILED: {failure}\n"));
    }
    out
}
