//! Two copies of one database that work offline and merge through files.
//!
//! A laptop and a phone each write while apart: puts, a delete, counter
//! increments, and a conflicting put on the same key. They then swap
//! change-set files, both ways, and end up holding exactly the same state.
//! Round 1 uses small in-memory change sets (`export_for`/`import_from`),
//! round 2 streams them through files in bounded memory
//! (`export_to`/`import_stream`), as you would for a large backlog.
//!
//! Run it with `cargo run --example offline_merge`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use mergekv::{Db, ScanOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh folder under the system's temporary directory, removed when
    // `scratch` is dropped (also if anything below fails). A real
    // application would use its own data directory.
    let scratch = tempfile::Builder::new()
        .prefix("mergekv-offline-merge-")
        .tempdir()?;
    let laptop = Db::open(scratch.path().join("laptop"))?;
    let phone = Db::open(scratch.path().join("phone"))?;

    // --- Offline: each copy writes on its own. ---
    laptop.put("note:groceries", "milk, eggs")?;
    laptop.put("note:todo", "call the plumber")?;
    laptop.increment("visits", 3)?;
    phone.put("note:ideas", "a database that merges")?;
    phone.increment("visits", 2)?;

    // --- Round 1: swap change sets as files, both ways. ---
    // `export_for(peer)` holds only what that peer has not seen yet (by the
    // cursor stored at the last exchange); `import_from(peer, ..)` verifies
    // the bytes, applies them durably and remembers what the peer has seen.
    let to_phone = scratch.path().join("laptop-to-phone.changes");
    let (bytes, _) = laptop.export_for("phone")?;
    std::fs::write(&to_phone, &bytes)?; // e.g. a USB stick or an e-mail attachment
    let report = phone.import_from("laptop", &std::fs::read(&to_phone)?)?;
    println!(
        "round 1: phone applied {} changes from the laptop",
        report.applied
    );

    let to_laptop = scratch.path().join("phone-to-laptop.changes");
    let (bytes, _) = phone.export_for("laptop")?;
    std::fs::write(&to_laptop, &bytes)?;
    let report = laptop.import_from("phone", &std::fs::read(&to_laptop)?)?;
    println!(
        "round 1: laptop applied {} changes from the phone",
        report.applied
    );

    // Importing the same file again changes nothing: imports are idempotent.
    let again = laptop.import_from("phone", &std::fs::read(&to_laptop)?)?;
    assert_eq!(again.applied, 0);

    // --- Offline again: concurrent edits of the same keys. ---
    // Both edit one note: the write with the greater stamp (hybrid logical
    // clock, then node id) wins, the same on both copies.
    laptop.put("note:todo", "call the plumber (done)")?;
    phone.put("note:todo", "call the electrician")?;
    phone.delete("note:groceries")?; // a delete travels like a put
    laptop.increment("visits", 1)?; // increments on both sides add up
    phone.increment("visits", 10)?;

    // --- Round 2: stream the changes through files. ---
    // `export_to` writes in chunks of about 1 MiB without building the
    // whole change set in memory; `import_stream` applies it chunk by chunk
    // and, if interrupted, resumes after its last whole chunk when run
    // again. Here each side starts from what it knows the other had at the
    // last exchange, so a stream may carry changes the receiver has since
    // got another way: the import counts those as stale and skips them.
    stream_changes(
        &laptop,
        &phone,
        "phone",
        &scratch.path().join("laptop.stream"),
    )?;
    stream_changes(
        &phone,
        &laptop,
        "laptop",
        &scratch.path().join("phone.stream"),
    )?;

    show("laptop", &laptop)?;
    show("phone", &phone)?;

    // Both copies hold the same state: their digests are equal exactly
    // when their states are.
    assert_eq!(laptop.digest()?.root, phone.digest()?.root);
    assert_eq!(laptop.counter("visits")?, 3 + 2 + 1 + 10);
    assert_eq!(laptop.get("note:groceries")?, None);
    assert_eq!(
        laptop.get("note:todo")?.as_deref(),
        phone.get("note:todo")?.as_deref()
    );
    println!("converged: digest {}", laptop.digest()?.root_hex());

    // Closing flushes and stops the background threads; dropping would too.
    laptop.close()?;
    phone.close()?;
    Ok(())
}

/// Streams what `from` has and `peer` lacks into the file at `path`, then
/// imports that file into `to` (the peer).
fn stream_changes(
    from: &Db,
    to: &Db,
    peer: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let since = from.peer_cursor(peer)?; // what the peer said it had last time
    let mut out = BufWriter::new(File::create(path)?);
    let (written, _next) = from.export_to(&since, &mut out)?;
    out.flush()?;
    drop(out);
    let mut input = BufReader::new(File::open(path)?);
    let report = to.import_stream(&mut input)?;
    println!(
        "round 2: {} records ({} bytes) streamed to the {peer}: {} applied, {} stale",
        written.records, written.bytes, report.applied, report.stale
    );
    Ok(())
}

/// Prints every key and value of a copy.
fn show(name: &str, db: &Db) -> Result<(), Box<dyn std::error::Error>> {
    println!("{name} holds:");
    for entry in db.scan(&ScanOptions::all()) {
        let entry = entry?; // a read can fail (I/O)
        let key = String::from_utf8_lossy(entry.key());
        println!("  {key} = {}", entry.value().to_text());
    }
    Ok(())
}
