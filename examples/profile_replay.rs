//! Profiling aid: bulk-loads keys, then reopens (replay) a few times.
//! `cargo run --release --example profile_replay -- DIR KEYS`
use mergekv::{Batch, Db, Options, SyncMode};
fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "target/profile-replay".into());
    let keys: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let _ = std::fs::remove_dir_all(&dir);
    let options = Options {
        sync_mode: SyncMode::Never,
        ..Options::default()
    };
    {
        let db = Db::open_with(&dir, options.clone()).unwrap();
        let t = std::time::Instant::now();
        for chunk in 0..keys / 10_000 {
            let mut b = Batch::new();
            for i in 0..10_000 {
                let k = (chunk * 10_000 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                b.put(format!("k{k:023}"), [b'v'; 150]);
            }
            db.write(b).unwrap();
        }
        eprintln!("load {:?}", t.elapsed());
    }
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let db = Db::open_with(&dir, options.clone()).unwrap();
        eprintln!(
            "reopen {:?} ({} ops)",
            t.elapsed(),
            db.recovery_report().ops_replayed
        );
    }
}
