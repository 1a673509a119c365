//! A database written by an earlier release opens, and reads as it did.
//!
//! `tests/fixtures/format-2026-12/` is a database directory written by the
//! code of 2026-12-03 (META v2, CURSORS v2, snapshot format 1, WAL segments
//! after the snapshot), checked in as it was written, with `expected.tsv`:
//! what it must read as. Any later change of the on-disk format must keep
//! opening it (converting it or reading it as it is): this test is the
//! migration check. Regenerate only for a new fixture, never to make a
//! failing test pass: `cargo test --test format_fixture -- --ignored
//! write_fixture` writes `tests/fixtures/format-<today>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mergekv::{Batch, Db, ManualClock, Options, ScanOptions, Value};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2026-12")
}

/// Every key of every keyspace the fixture uses, as `keyspace/key` →
/// printed value.
fn contents(db: &Db) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for keyspace in ["default", "photos"] {
        let ks = db.keyspace(keyspace).unwrap();
        for entry in ks.scan(&ScanOptions::all()).map(Result::unwrap) {
            let key = String::from_utf8_lossy(entry.key()).into_owned();
            let value = match entry.into_value() {
                Value::Bytes(b) => format!("bytes:{}", String::from_utf8_lossy(&b)),
                Value::Counter(c) => format!("counter:{c}"),
            };
            out.insert(format!("{keyspace}/{key}"), value);
        }
    }
    out
}

fn parse_expected(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('\t').expect("KEY<TAB>VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "expected.tsv" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_database_written_by_the_release_of_2026_12_opens_and_reads_the_same() {
    let fixture = fixture_dir();
    let expected = parse_expected(&std::fs::read_to_string(fixture.join("expected.tsv")).unwrap());
    assert!(expected.len() > 20, "the fixture holds data");
    let verified = mergekv::verify(&fixture).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(contents(&db), expected);
    assert!(
        db.recovery_report().snapshot.is_some(),
        "read from its snapshot"
    );
    assert!(
        db.recovery_report().frames_replayed > 0,
        "and the WAL after it"
    );
    assert_eq!(db.cursor("peer").map(|c| c.seq), Some(3), "its cursor");
    // It goes on: a write, a compaction, a reopen.
    db.put("after-upgrade", "1").unwrap();
    db.compact_now().unwrap();
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    let mut more = expected;
    more.insert("default/after-upgrade".into(), "bytes:1".into());
    assert_eq!(contents(&db), more);
}

/// Writes a new fixture (see the module docs).
#[test]
#[ignore = "writes a fixture; run by hand for a new format"]
fn write_fixture() {
    let dir = fixture_dir();
    assert!(
        !dir.exists(),
        "{} exists: fixtures are never rewritten",
        dir.display()
    );
    let clock = Arc::new(ManualClock::new(1_796_000_000_000));
    let options = Options::default()
        .with_wall_clock(clock.clone())
        .with_segment_size_bytes_max(4096)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0);
    {
        let db = Db::open_with(&dir, options).unwrap();
        let photos = db.keyspace("photos").unwrap();
        for i in 0..30 {
            db.put(format!("key-{i:03}"), format!("value {i}")).unwrap();
            clock.advance_ms(1);
        }
        for i in 0..5 {
            db.delete(format!("key-{i:03}")).unwrap();
            db.increment("visits", i).unwrap();
            photos
                .put(format!("p{i}"), vec![b'x'; 100 * i as usize])
                .unwrap();
            clock.advance_ms(1);
        }
        db.set_cursor("peer", 3).unwrap();
        db.compact_now().unwrap();
        let mut batch = Batch::new();
        batch.put("after-snapshot", "in the WAL");
        batch.delete("key-010");
        batch.increment("visits", 100);
        db.write(batch).unwrap();
        photos.delete("p1").unwrap();
        let expected: String = contents(&db)
            .into_iter()
            .map(|(k, v)| format!("{k}\t{v}\n"))
            .collect();
        db.close().unwrap();
        std::fs::write(dir.join("expected.tsv"), expected).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("LOCK"));
}
