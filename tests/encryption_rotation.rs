//! Key rotation's edges, found by review: a repair, a read-only open, a
//! damaged segment the rewrite cannot read, two rotations in a row.

mod common;

use std::path::Path;
use std::time::Duration;

use mergekv::{Db, EncryptionKey, Error, KeyError, KeySource, Options, RecoveryMode};

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

fn opts(current: Option<u8>, old: &[u8]) -> Options {
    Options::default()
        .with_encryption_key(current.map(|b| KeySource::Key(key(b))))
        .with_encryption_keys_old(old.iter().map(|b| KeySource::Key(key(*b))).collect())
}

/// The directory's files but the lock files (an open's own, even a
/// refused one's).
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    common::files(dir)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("LOCK") && !p.ends_with("READERS"))
        .collect()
}

#[test]
fn a_repair_of_a_damaged_meta_with_only_the_old_key_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(Some(1), &[])).unwrap();
    for i in 0..20 {
        db.put(format!("s{i}"), format!("SECRET-{i}")).unwrap();
    }
    db.close().unwrap();
    common::flip_byte(&dir.path().join("META"), 12);
    let before = tree(dir.path());
    let repair = |o: Options| Db::open_with(dir.path(), o.with_recovery_mode(RecoveryMode::Repair));
    assert!(matches!(
        repair(opts(None, &[1])),
        Err(Error::Key(KeyError::Missing { needed, .. })) if needed == key(1).id()
    ));
    assert!(matches!(
        repair(opts(Some(2), &[])),
        Err(Error::Key(KeyError::Missing { .. }))
    ));
    assert_eq!(tree(dir.path()), before, "refused repairs changed nothing");
    // With the key, the repair rebuilds META naming it.
    let db = repair(opts(Some(1), &[])).unwrap();
    assert_eq!(db.encryption().unwrap().key_id, Some(key(1).id()));
    assert_eq!(&db.get("s3").unwrap().unwrap()[..], b"SECRET-3");
}

#[test]
fn a_repair_does_not_encrypt_a_database_in_clear_by_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.put("a", "1").unwrap();
    db.close().unwrap();
    common::flip_byte(&dir.path().join("META"), 12);
    let r = Db::open_with(
        dir.path(),
        opts(Some(1), &[]).with_recovery_mode(RecoveryMode::Repair),
    );
    assert!(
        matches!(r, Err(Error::Key(KeyError::NotEncrypted { .. }))),
        "{r:?}"
    );
}

#[test]
fn a_read_only_open_with_a_new_key_writes_nothing_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(Some(1), &[])).unwrap();
    db.put("a", "1").unwrap();
    db.close().unwrap();
    let db = Db::open_with(dir.path(), opts(Some(2), &[1]).with_read_only(true)).unwrap();
    assert_eq!(&db.get("a").unwrap().unwrap()[..], b"1");
    assert_eq!(db.encryption().unwrap().key_id, Some(key(1).id()));
    db.close().unwrap();
    // Nothing under key 2: key 1 alone still opens it.
    let db = Db::open_with(dir.path(), opts(Some(1), &[])).unwrap();
    assert_eq!(db.encryption().unwrap().files_under_other_keys, 0);
}

/// A WAL segment kept for a cursor, damaged where recovery never reads it
/// (the runs cover it): the rotation's rewrite cannot read it, reports it,
/// and the compactor and writers go on.
#[test]
fn a_segment_the_rewrite_cannot_read_neither_stops_compaction_nor_writers() {
    let dir = tempfile::tempdir().unwrap();
    let base = opts(Some(1), &[])
        .with_segment_size_bytes_max(4096)
        .with_compactor_tick_ms(10)
        .with_memtable_bytes_max(32 * 1024);
    let db = Db::open_with(dir.path(), base.clone()).unwrap();
    db.set_cursor("reader", 1).unwrap();
    for i in 0..200 {
        db.put(format!("k{i}"), vec![b'x'; 100]).unwrap();
    }
    db.compact_now().unwrap();
    db.close().unwrap();
    let victim = common::segments(dir.path()).remove(0);
    let len = std::fs::metadata(&victim).unwrap().len() as usize;
    common::flip_byte(&victim, len / 2);
    let db = Db::open_with(dir.path(), base.clone()).unwrap();
    db.rotate_encryption_key(key(2)).unwrap();
    let report = db.complete_key_rotation().unwrap();
    assert_eq!(report.files_left, 1, "{report:?}");
    assert_eq!(report.errors.len(), 1, "{report:?}");
    // The others were rewritten, by this call or by the compactor's
    // background rewrite, which may run first (tick 10 ms): only the
    // victim is still under the old key.
    assert!(
        common::segments(dir.path()).len() > 1,
        "several segments were kept for the cursor"
    );
    assert_eq!(
        db.encryption().unwrap().files_under_other_keys,
        1,
        "only the damaged segment is left: {report:?}"
    );
    let before = db.stats().compactor.compactions;
    let writer = db.clone();
    let done = std::thread::spawn(move || {
        for i in 0..5_000 {
            writer.put(format!("more{i}"), vec![b'y'; 100]).unwrap();
        }
    });
    assert!(
        common::wait_for(Duration::from_secs(120), || done.is_finished()),
        "writers blocked: {:?}",
        db.stats().compactor
    );
    done.join().unwrap();
    assert!(
        db.stats().compactor.compactions > before,
        "background compaction stopped"
    );
    assert!(db.encryption().unwrap().rewrite_pending);
}

#[test]
fn two_rotations_before_the_first_finished_open_with_every_key_then_the_last_alone() {
    let dir = tempfile::tempdir().unwrap();
    let o = |c: u8, old: &[u8]| {
        opts(Some(c), old)
            .with_segment_size_bytes_max(2048)
            .with_compaction_wal_bytes_min(u64::MAX)
            .with_compaction_interval_ms(0)
    };
    let db = Db::open_with(dir.path(), o(1, &[])).unwrap();
    db.set_cursor("r", 1).unwrap();
    for i in 0..100 {
        db.put(format!("a{i}"), vec![b'a'; 40]).unwrap();
    }
    db.compact_now().unwrap();
    for i in 0..100 {
        db.put(format!("b{i}"), vec![b'b'; 40]).unwrap();
    }
    db.rotate_encryption_key(key(2)).unwrap();
    for i in 0..50 {
        db.put(format!("c{i}"), vec![b'c'; 40]).unwrap();
    }
    db.rotate_encryption_key(key(3)).unwrap();
    for i in 0..50 {
        db.put(format!("d{i}"), vec![b'd'; 40]).unwrap();
    }
    drop(db);
    match Db::open_with(dir.path(), o(3, &[2])) {
        Err(Error::Key(KeyError::Missing {
            needed,
            rotating_to,
            ..
        })) => {
            assert_eq!(needed, key(1).id());
            assert_eq!(rotating_to, Some(key(3).id()));
        }
        other => panic!("key 1 is still needed: {other:?}"),
    }
    let db = Db::open_with(dir.path(), o(3, &[1, 2])).unwrap();
    assert_eq!(db.complete_key_rotation().unwrap().files_left, 0);
    db.close().unwrap();
    let db = Db::open_with(dir.path(), o(3, &[])).unwrap();
    for p in ["a", "b", "c", "d"] {
        assert!(db.get(format!("{p}7")).unwrap().is_some(), "{p}");
    }
}

#[test]
fn a_rotation_from_clear_cut_before_it_cleared_metas_flag_finishes_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.put("a", "1").unwrap();
    db.rotate_encryption_key(key(1)).unwrap();
    assert_eq!(db.complete_key_rotation().unwrap().files_left, 0);
    db.close().unwrap();
    // Every file rewritten, and the crash came before META's flag (files
    // in clear allowed) was cleared: set it back as that crash left it.
    let path = dir.path().join("META");
    let mut meta = std::fs::read(&path).unwrap();
    assert_eq!(meta[42] & 3, 1, "encrypted, flag cleared");
    meta[42] |= 2;
    let end = meta.len() - 4;
    let crc = crc32c::crc32c(&meta[..end]);
    meta[end..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &meta).unwrap();
    let db = Db::open_with(dir.path(), opts(Some(1), &[])).unwrap();
    assert!(
        common::wait_for(Duration::from_secs(60), || {
            db.encryption().is_ok_and(|s| !s.rewrite_pending)
        }),
        "{:?}",
        db.encryption()
    );
    db.close().unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap()[42] & 2,
        0,
        "the flag is cleared"
    );
}
