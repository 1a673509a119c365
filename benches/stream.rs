//! Change streams (issue 15): export and import of N changes through a
//! file, each in a child process whose peak RSS (VmHWM) is reported, beside
//! the one-shot `export_since`/`import` on the same data.
//!
//! Run: `cargo bench --bench stream`. Knobs: `MERGEKV_BENCH_KEYS` (default
//! 1,000,000), `MERGEKV_BENCH_DIR` (default `target/bench-data`).
//! Keys are 24 bytes and values 150 bytes (SPEC §12); options are the
//! defaults (memtable 64 MiB, block cache 256 MiB: the database's own
//! budget, which the stream's memory comes on top of).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mergekv::{Batch, Db, SyncCursor};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn child(args: &[String]) {
    let (mode, db, file) = (&args[0], Path::new(&args[1]), Path::new(&args[2]));
    let start = Instant::now();
    let detail = match mode.as_str() {
        "export-stream" => {
            let db = Db::open(db).unwrap();
            let mut out = std::io::BufWriter::new(std::fs::File::create(file).unwrap());
            let (report, _) = db.export_to(&SyncCursor::new(), &mut out).unwrap();
            format!(
                "{} records, {} chunks, {} bytes",
                report.records, report.chunks, report.bytes
            )
        }
        "import-stream" => {
            let db = Db::open(db).unwrap();
            let mut input = std::io::BufReader::new(std::fs::File::open(file).unwrap());
            let report = db.import_stream(&mut input).unwrap();
            format!("{} applied", report.applied)
        }
        "export-oneshot" => {
            let db = Db::open(db).unwrap();
            let (bytes, _) = db.export_since(&SyncCursor::new()).unwrap();
            std::fs::write(file, &bytes).unwrap();
            format!("{} bytes", bytes.len())
        }
        "import-oneshot" => {
            let db = Db::open(db).unwrap();
            let bytes = std::fs::read(file).unwrap();
            let report = db.import(&bytes).unwrap();
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

fn run_child(mode: &str, db: &Path, file: &Path) -> (f64, u64, String) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--child", mode])
        .arg(db)
        .arg(file)
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
        return;
    }
    let keys: usize = env_or("MERGEKV_BENCH_KEYS", 1_000_000);
    let root = PathBuf::from(env_or(
        "MERGEKV_BENCH_DIR",
        String::from("target/bench-data"),
    ))
    .join("stream");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let source = root.join("source");
    {
        let db = Db::open(&source).unwrap();
        for start in (0..keys).step_by(10_000) {
            let mut batch = Batch::new();
            for i in start..(start + 10_000).min(keys) {
                batch.put(format!("{:024}", i * 7919), vec![(i % 251) as u8; 150]);
            }
            db.write(batch).unwrap();
        }
        db.compact_now().unwrap();
        db.close().unwrap();
    }
    println!("change streams: {keys} changes (24-byte keys, 150-byte values), default options");
    println!();
    println!("| step | seconds | changes/s | peak RSS | detail |");
    println!("|---|---|---|---|---|");
    for (export, import, file) in [
        ("export-stream", "import-stream", "changes.stream"),
        ("export-oneshot", "import-oneshot", "changes.set"),
    ] {
        let file = root.join(file);
        let target = root.join(format!("target-{import}"));
        for (mode, db) in [(export, &source), (import, &target)] {
            let (secs, rss_kib, detail) = run_child(mode, db, &file);
            println!(
                "| {mode} | {secs:.2} | {:.0} | {:.0} MiB | {detail} |",
                keys as f64 / secs,
                rss_kib as f64 / 1024.0
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
