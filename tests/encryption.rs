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
