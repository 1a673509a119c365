//! Encryption at rest: what is on disk, which keys open what, and damage.

mod common;

use std::path::Path;

use common::{assert_nothing_in_clear, files};
use mergekv::{Db, EncryptionKey, Error, KeyError, KeySource, Options};

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

fn with_key(k: Option<EncryptionKey>) -> Options {
    Options::default().with_encryption_key(k.map(KeySource::Key))
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
    Options::default()
        .with_encryption_key(Some(KeySource::Key(current)))
        .with_encryption_keys_old(old.iter().cloned().map(KeySource::Key).collect())
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

/// An encrypted database with one segment holding `n` one-put frames,
/// and the segment's length after each (the frame boundaries).
fn one_segment(n: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
    let segment = common::segments(dir.path()).pop().unwrap();
    let mut ends = vec![std::fs::metadata(&segment).unwrap().len()];
    for i in 0..n {
        db.put(format!("key-{i}"), format!("value-{i:04}")).unwrap();
        ends.push(std::fs::metadata(&segment).unwrap().len());
    }
    db.close().unwrap();
    assert_eq!(common::segments(dir.path()), vec![segment.clone()]);
    (dir, segment, ends)
}

fn expected_after(frames: usize) -> Vec<(String, String)> {
    (0..frames)
        .map(|i| (format!("key-{i}"), format!("value-{i:04}")))
        .collect()
}

fn all_values(db: &Db, n: usize) -> Vec<(String, String)> {
    (0..n)
        .filter_map(|i| {
            let k = format!("key-{i}");
            db.get(&k)
                .unwrap()
                .map(|v| (k, String::from_utf8(v.to_vec()).unwrap()))
        })
        .collect()
}

#[test]
fn every_byte_of_an_encrypted_segment_flipped_is_an_error_never_a_wrong_value() {
    let (dir, segment, ends) = one_segment(4);
    let len = *ends.last().unwrap() as usize;
    let mut refused = 0;
    for offset in 0..len {
        let copy = common::copy_db(dir.path());
        let damaged = common::rebase(&segment, dir.path(), copy.path());
        common::flip_byte(&damaged, offset);
        match Db::open_with(copy.path(), with_key(Some(key(1)))) {
            Err(Error::Corruption { .. }) => refused += 1,
            Err(other) => panic!("byte {offset}: an unexpected error {other}"),
            // Only a flip the log can tell from a torn creation (in the
            // header, nothing valid after it) may open, and then with a
            // prefix of the writes, never a wrong value.
            Ok(db) => {
                let got = all_values(&db, 4);
                assert_eq!(got, expected_after(got.len()), "byte {offset}");
            }
        }
    }
    assert!(
        refused as f64 > 0.95 * len as f64,
        "{refused} of {len} refused"
    );
}

#[test]
fn a_torn_tail_of_an_encrypted_segment_at_every_byte_is_cut_to_the_frames_before_it() {
    let (dir, segment, ends) = one_segment(4);
    for cut in 0..*ends.last().unwrap() {
        let copy = common::copy_db(dir.path());
        common::truncate(&common::rebase(&segment, dir.path(), copy.path()), cut);
        let db = Db::open_with(copy.path(), with_key(Some(key(1))))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = ends.iter().skip(1).filter(|end| **end <= cut).count();
        assert_eq!(all_values(&db, 4), expected_after(whole), "cut at {cut}");
        // It goes on writing, and that survives a reopen.
        db.put("after", "cut").unwrap();
        db.close().unwrap();
        let db = Db::open_with(copy.path(), with_key(Some(key(1)))).unwrap();
        assert_eq!(
            all_values(&db, 4),
            expected_after(whole),
            "cut at {cut}, reopened"
        );
        assert_eq!(&db.get("after").unwrap().unwrap()[..], b"cut");
    }
}

/// Replaces `bytes[at..at + frame.len()]` with `frame`.
fn splice(path: &Path, at: u64, frame: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize..at as usize + frame.len()].copy_from_slice(frame);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_frame_from_another_file_or_place_fails_authentication_even_with_good_checksums() {
    // Two copies under the same key write frames of the same length at the
    // same place with the same sequence numbers: only the files differ.
    let (a, segment_a, ends) = one_segment(3);
    let (b, segment_b, ends_b) = one_segment(3);
    assert_eq!(ends, ends_b);
    let frame = |path: &Path, i: usize| {
        std::fs::read(path).unwrap()[ends[i] as usize..ends[i + 1] as usize].to_vec()
    };
    let from_a = frame(&segment_a, 1);
    assert_ne!(from_a, frame(&segment_b, 1), "each file has its own key");
    splice(&segment_b, ends[1], &from_a);
    match Db::open_with(b.path(), with_key(Some(key(1)))) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(reason.contains("authentication"), "{reason}")
        }
        other => panic!("a frame moved between files opened: {other:?}"),
    }
    // Within one file: frame 2 copied over frame 1, its header made to
    // claim frame 1's sequence number, both checksums recomputed (anyone
    // can: they are not keyed).
    let mut moved = frame(&segment_a, 2);
    let first_seq = u64::from_le_bytes(frame(&segment_a, 1)[8..16].try_into().unwrap());
    moved[8..16].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&moved[..24]);
    moved[24..28].copy_from_slice(&crc.to_le_bytes());
    splice(&segment_a, ends[1], &moved);
    match Db::open_with(a.path(), with_key(Some(key(1)))) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(reason.contains("authentication"), "{reason}")
        }
        other => panic!("a frame moved within its file opened: {other:?}"),
    }
}

#[test]
fn every_byte_of_an_encrypted_change_set_flipped_is_refused_and_nothing_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
    for i in 0..20 {
        db.put(format!("cs-key-{i}"), format!("CS-VALUE-{i}"))
            .unwrap();
    }
    let (changes, _) = db.export_since(&mergekv::SyncCursor::new()).unwrap();
    assert!(
        !changes.windows(9).any(|w| w == b"CS-VALUE-"),
        "a change set in clear"
    );
    let target_dir = tempfile::tempdir().unwrap();
    let target = Db::open_with(target_dir.path(), with_key(Some(key(1)))).unwrap();
    let before = target.digest().unwrap();
    for i in 0..changes.len() {
        let mut bad = changes.clone();
        bad[i] ^= 0x01;
        match target.import(&bad) {
            Err(Error::Decode { .. }) | Err(Error::Key(KeyError::Missing { .. })) => {}
            other => panic!("byte {i}: {other:?}"),
        }
    }
    assert_eq!(target.digest().unwrap(), before, "nothing applied");
    // Without the key: refused, naming it; with it: applied.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Db::open(other_dir.path()).unwrap();
    assert!(matches!(
        other.import(&changes),
        Err(Error::Key(KeyError::Missing { needed, .. })) if needed == key(1).id()
    ));
    target.import(&changes).unwrap();
    assert_eq!(target.digest().unwrap().root, db.digest().unwrap().root);
}

#[test]
fn every_byte_of_an_encrypted_run_flipped_is_an_error_never_a_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
    for i in 0..30 {
        db.put(format!("key-{i}"), format!("value-{i:04}")).unwrap();
    }
    db.compact_now().unwrap();
    db.close().unwrap();
    let run = common::runs(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&run).unwrap().len() as usize;
    assert_nothing_in_clear(dir.path(), &[b"value-0"]);
    for offset in 0..len {
        let copy = common::copy_db(dir.path());
        common::flip_byte(&common::rebase(&run, dir.path(), copy.path()), offset);
        let db = match Db::open_with(copy.path(), with_key(Some(key(1)))) {
            Err(Error::Corruption { .. }) => continue,
            Err(other) => panic!("byte {offset}: an unexpected error {other}"),
            Ok(db) => db,
        };
        // Opening reads no data block: a damaged one is found when read.
        for i in 0..30 {
            match db.get(format!("key-{i}")) {
                Ok(Some(v)) => {
                    assert_eq!(&v[..], format!("value-{i:04}").as_bytes(), "byte {offset}")
                }
                Ok(None) => panic!("byte {offset}: key-{i} lost without an error"),
                Err(Error::Corruption { .. }) => {}
                Err(other) => panic!("byte {offset}: an unexpected error {other}"),
            }
        }
    }
}

#[test]
fn old_keys_alone_do_not_open_an_encrypted_database() {
    let dir = tempfile::tempdir().unwrap();
    Db::open_with(dir.path(), with_key(Some(key(1))))
        .unwrap()
        .close()
        .unwrap();
    let only_old = Options::default().with_encryption_keys_old(vec![KeySource::Key(key(1))]);
    assert!(matches!(
        Db::open_with(dir.path(), only_old),
        Err(Error::Key(KeyError::Missing { needed, .. })) if needed == key(1).id()
    ));
    // Still encrypted with key 1.
    Db::open_with(dir.path(), with_key(Some(key(1)))).unwrap();
}
