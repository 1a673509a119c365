//! Three copies syncing through a bucket, with no server and no
//! coordinator: each publishes its own changes and merges everyone else's.
//!
//! The bucket here is a folder (`file://`); the same code works with
//! `s3://BUCKET/PREFIX`, `gs://` and `az://` (credentials from each
//! store's usual environment variables). Needs the `object-store` feature,
//! which is on by default.
//!
//! Run it with `cargo run --example bucket_sync`.

use mergekv::bucket::Bucket;
use mergekv::{Db, ScanOptions};

/// Rounds per copy before giving up on convergence. Three copies need two
/// passes (the last copy's news reaches the first in the second one) and
/// a third to see that nothing is left.
const PASSES_MAX: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh folder under the system's temporary directory, removed when
    // `scratch` is dropped: it holds the bucket and the three copies.
    let scratch = tempfile::Builder::new()
        .prefix("mergekv-bucket-sync-")
        .tempdir()?;
    let url = format!("file://{}", scratch.path().join("bucket").display());

    // Three copies, as if on three machines: each opens its own database
    // and the bucket by URL. Opening contacts nothing yet.
    let names = ["laptop", "phone", "tablet"];
    let mut copies = Vec::new();
    for name in names {
        let db = Db::open(scratch.path().join(name))?;
        copies.push((name, db, Bucket::open(&url)?));
    }

    // Offline: each copy writes its own notes, all count visits, and all
    // set the same key (the write with the latest stamp wins everywhere).
    for (i, (name, db, _)) in copies.iter().enumerate() {
        db.put(format!("note:{name}"), format!("written on the {name}"))?;
        db.put("status", format!("last edited on the {name}"))?;
        db.increment("visits", i as i64 + 1)?;
    }
    copies[0].1.put("draft", "to be deleted")?;

    sync_until_quiet("first sync", &copies)?;

    // A delete on one copy reaches the others too.
    copies[2].1.delete("draft")?;
    copies[1].1.increment("visits", 10)?;
    sync_until_quiet("after a delete", &copies)?;

    let first = copies[0].1.digest()?;
    for (name, db, _) in &copies {
        assert_eq!(db.digest()?.root, first.root, "{name} did not converge");
        assert_eq!(db.counter("visits")?, 1 + 2 + 3 + 10);
        assert_eq!(db.get("draft")?, None);
        assert_eq!(
            db.get("note:tablet")?.as_deref(),
            Some(&b"written on the tablet"[..])
        );
    }
    let status = copies[0].1.get("status")?.unwrap_or_default();
    let live = copies[0].1.scan(&ScanOptions::all()).count();
    println!(
        "all three copies converged: {live} keys, status = {:?}, digest {}",
        String::from_utf8_lossy(&status),
        first.root_hex()
    );

    // With nothing new anywhere, a round is one listing of the bucket.
    let (name, db, bucket) = &copies[0];
    let idle = bucket.sync(db)?;
    println!(
        "an idle round on the {name}: {} request(s), {} listing(s)",
        idle.requests.total(),
        idle.requests.list
    );
    assert_eq!((idle.pushed.changes, idle.pulled.changes), (0, 0));
    Ok(())
}

/// Runs one round per copy, pass after pass, until a whole pass moves
/// nothing (no copy published or pulled a change).
fn sync_until_quiet(
    label: &str,
    copies: &[(&str, Db, Bucket)],
) -> Result<(), Box<dyn std::error::Error>> {
    println!("{label}:");
    for pass in 1..=PASSES_MAX {
        let mut moved = 0;
        for (name, db, bucket) in copies {
            let report = bucket.sync(db)?; // pull what this copy lacks, publish its news
            if report.pushed.changes + report.pulled.changes > 0 {
                println!(
                    "  pass {pass}: {name} pushed {} change(s), pulled {} ({} applied)",
                    report.pushed.changes, report.pulled.changes, report.applied
                );
            }
            moved += report.pushed.changes + report.pulled.changes;
        }
        if moved == 0 {
            return Ok(());
        }
    }
    Err(format!("still moving changes after {PASSES_MAX} passes").into())
}
