//! Encryption at rest: what is on disk, which keys open what, and damage.

use std::path::Path;

use mergekv::{Db, EncryptionKey, Error, KeyError, KeySource, Options};

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

fn with_key(k: Option<EncryptionKey>) -> Options {
    Options {
        encryption_key: k.map(KeySource::Key),
        ..Options::default()
    }
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn assert_nothing_in_clear(dir: &Path, needles: &[&[u8]]) {
    for (path, bytes) in files(dir) {
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == *needle),
                "{} holds {:?} in clear",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn the_wal_holds_no_key_or_value_in_clear_and_reopens_only_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
        for i in 0..200 {
            db.put(format!("secret-key-{i}"), format!("PLAINTEXT-VALUE-{i}"))
                .unwrap();
        }
        db.close().unwrap();
    }
    assert_nothing_in_clear(dir.path(), &[b"secret-key-", b"PLAINTEXT-VALUE-"]);
    let db = Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
    assert_eq!(
        &db.get("secret-key-7").unwrap().unwrap()[..],
        b"PLAINTEXT-VALUE-7"
    );
    db.close().unwrap();
    for wrong in [None, Some(key(2))] {
        let before = files(dir.path());
        match Db::open_with(dir.path(), with_key(wrong.clone())) {
            Err(Error::Key(KeyError::Missing { needed, given, .. })) => {
                assert_eq!(needed, key(1).id());
                assert_eq!(given, wrong.iter().map(|k| k.id()).collect::<Vec<_>>());
            }
            other => panic!("expected a missing key, got {other:?}"),
        }
        let mut after = files(dir.path());
        let mut before = before;
        // The lock files are the open's own.
        let keep = |(p, _): &(std::path::PathBuf, Vec<u8>)| {
            !p.ends_with("LOCK") && !p.ends_with("READERS")
        };
        before.retain(keep);
        after.retain(keep);
        assert_eq!(before, after, "a refused open changed nothing");
    }
}

#[test]
fn a_key_for_a_database_in_clear_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Db::open(dir.path()).unwrap().close().unwrap();
    assert!(matches!(
        Db::open_with(dir.path(), with_key(Some(key(1)))),
        Err(Error::Key(KeyError::NotEncrypted { .. }))
    ));
}

fn keys(current: EncryptionKey, old: &[EncryptionKey]) -> Options {
    Options {
        encryption_key: Some(KeySource::Key(current)),
        encryption_keys_old: old.iter().cloned().map(KeySource::Key).collect(),
        ..Options::default()
    }
}

#[test]
fn a_rotation_needs_the_old_key_until_its_rewrite_is_done_then_only_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
    for i in 0..100 {
        db.put(format!("k{i}"), format!("before-{i}")).unwrap();
    }
    db.compact_now().unwrap();
    for i in 0..100 {
        db.put(format!("w{i}"), format!("wal-{i}")).unwrap();
    }
    db.set_cursor("reader", 1).unwrap(); // keeps WAL segments for the rewrite
    db.rotate_encryption_key(key(2)).unwrap();
    db.put("after", "rotation").unwrap();
    let status = db.encryption().unwrap();
    assert_eq!(status.key_id, Some(key(2).id()));
    drop(db); // a crash before the rewrite: no close
    match Db::open_with(dir.path(), with_key(Some(key(2)))) {
        Err(Error::Key(KeyError::Missing {
            needed,
            rotating_to,
            ..
        })) => {
            assert_eq!(needed, key(1).id());
            assert_eq!(rotating_to, Some(key(2).id()));
        }
        other => panic!("expected the old key to be needed, got {other:?}"),
    }
    assert!(matches!(
        Db::open_with(dir.path(), with_key(Some(key(1)))),
        Err(Error::Key(KeyError::Missing { .. }))
    ));
    let db = Db::open_with(dir.path(), keys(key(2), &[key(1)])).unwrap();
    let report = db.complete_key_rotation().unwrap();
    assert_eq!(report.files_left, 0, "{report:?}");
    assert_eq!(db.encryption().unwrap().files_under_other_keys, 0);
    db.close().unwrap();
    let db = Db::open_with(dir.path(), with_key(Some(key(2)))).unwrap();
    assert_eq!(&db.get("k7").unwrap().unwrap()[..], b"before-7");
    assert_eq!(&db.get("w7").unwrap().unwrap()[..], b"wal-7");
    assert_eq!(&db.get("after").unwrap().unwrap()[..], b"rotation");
    db.close().unwrap();
}

#[test]
fn a_database_in_clear_is_encrypted_by_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for i in 0..50 {
        db.put(format!("clear-key-{i}"), format!("CLEAR-VALUE-{i}"))
            .unwrap();
    }
    db.compact_now().unwrap();
    db.put("clear-key-late", "CLEAR-VALUE-late").unwrap();
    db.rotate_encryption_key(key(3)).unwrap();
    db.complete_key_rotation().unwrap();
    db.close().unwrap();
    assert_nothing_in_clear(dir.path(), &[b"clear-key-", b"CLEAR-VALUE-"]);
    let db = Db::open_with(dir.path(), with_key(Some(key(3)))).unwrap();
    assert_eq!(
        &db.get("clear-key-9").unwrap().unwrap()[..],
        b"CLEAR-VALUE-9"
    );
    assert_eq!(
        &db.get("clear-key-late").unwrap().unwrap()[..],
        b"CLEAR-VALUE-late"
    );
}

#[test]
fn an_open_with_a_new_key_and_the_old_one_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
    db.put("a", "1").unwrap();
    db.close().unwrap();
    let db = Db::open_with(dir.path(), keys(key(2), &[key(1)])).unwrap();
    assert_eq!(db.encryption().unwrap().key_id, Some(key(2).id()));
    db.complete_key_rotation().unwrap();
    db.close().unwrap();
    let db = Db::open_with(dir.path(), with_key(Some(key(2)))).unwrap();
    assert_eq!(&db.get("a").unwrap().unwrap()[..], b"1");
}
