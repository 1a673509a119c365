//! Recovery from torn writes and damaged segments.

mod common;

use std::path::Path;

use common::{copy_db, flip_byte, rebase, segments, truncate};
use mergekv::{Batch, Db, Error, Options, RecoveryMode, SyncMode};

/// Three batches, one frame each: [a], [b, c], [d, e, f]. Returns the
/// segment size after each batch.
fn three_batches(dir: &Path) -> Vec<u64> {
    let db = Db::open(dir).unwrap();
    let mut sizes = vec![db.stats().wal.wal_bytes];
    let batches: [&[&str]; 3] = [&["a"], &["b", "c"], &["d", "e", "f"]];
    for keys in batches {
        let mut batch = Batch::new();
        for k in keys {
            batch.put(k, format!("value-of-{k}"));
        }
        db.write(batch).unwrap();
        sizes.push(db.stats().wal.wal_bytes);
    }
    sizes
}

fn present(db: &Db, keys: &[&str]) -> Vec<bool> {
    keys.iter()
        .map(|k| match db.get(k).unwrap() {
            Some(v) => {
                assert_eq!(
                    &*v,
                    format!("value-of-{k}").as_bytes(),
                    "wrong value for {k}"
                );
                true
            }
            None => false,
        })
        .collect()
}

#[test]
fn torn_last_batch_at_every_offset_recovers_exactly_the_earlier_batches() {
    let src = tempfile::tempdir().unwrap();
    let sizes = three_batches(src.path());
    let seg = segments(src.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), sizes[3]);
    for cut in sizes[2]..sizes[3] {
        let copy = copy_db(src.path());
        let seg_copy = rebase(&seg, src.path(), copy.path());
        truncate(&seg_copy, cut);
        let db = Db::open(copy.path()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(present(&db, &["a", "b", "c"]), [true; 3], "cut at {cut}");
        assert_eq!(present(&db, &["d", "e", "f"]), [false; 3], "cut at {cut}");
        let torn = db.recovery_report().torn_tail.clone();
        assert_eq!(torn.is_some(), cut > sizes[2], "cut at {cut}");
        // The WAL continues cleanly after the cut.
        db.put("after", "cut").unwrap();
        drop(db);
        let db = Db::open(copy.path()).unwrap();
        assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"cut"[..]));
        assert_eq!(present(&db, &["d"]), [false]);
        assert!(db.recovery_report().torn_tail.is_none());
    }
}

#[test]
fn zero_filled_tail_is_a_torn_write() {
    let src = tempfile::tempdir().unwrap();
    let sizes = three_batches(src.path());
    let seg = segments(src.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.truncate(sizes[2] as usize);
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(&seg, bytes).unwrap();
    let db = Db::open(src.path()).unwrap();
    assert_eq!(
        present(&db, &["a", "b", "c", "d"]),
        [true, true, true, false]
    );
    assert_eq!(
        db.recovery_report()
            .torn_tail
            .as_ref()
            .unwrap()
            .offset_bytes,
        sizes[2]
    );
}

#[test]
fn every_flipped_byte_is_a_typed_error_never_a_wrong_value() {
    let src = tempfile::tempdir().unwrap();
    let sizes = three_batches(src.path());
    let seg = segments(src.path()).pop().unwrap();
    for offset in 0..sizes[3] as usize {
        let copy = copy_db(src.path());
        let seg_copy = rebase(&seg, src.path(), copy.path());
        flip_byte(&seg_copy, offset);
        match Db::open(copy.path()) {
            Err(Error::Corruption {
                path, offset_bytes, ..
            }) => {
                assert_eq!(path, seg_copy);
                assert!(
                    offset_bytes <= offset as u64,
                    "damage at {offset} reported at {offset_bytes}"
                );
            }
            Err(other) => panic!("flip at {offset}: unexpected error {other}"),
            Ok(_) => panic!(
                "flip at {offset} went unnoticed: an acknowledged batch would be lost or wrong"
            ),
        }
    }
}

#[test]
fn damage_before_valid_frames_is_corruption_naming_segment_and_offset() {
    let src = tempfile::tempdir().unwrap();
    let sizes = three_batches(src.path());
    let seg = segments(src.path()).pop().unwrap();
    flip_byte(&seg, sizes[0] as usize + 40);
    let err = Db::open(src.path()).unwrap_err();
    match &err {
        Error::Corruption {
            path, offset_bytes, ..
        } => {
            assert_eq!(path, &seg);
            assert_eq!(*offset_bytes, sizes[0]);
        }
        other => panic!("expected corruption, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("wal-00000000000000000001.seg") && message.contains(&sizes[0].to_string())
    );
}

#[test]
fn repair_cuts_at_the_damage_and_reports_what_was_dropped() {
    let src = tempfile::tempdir().unwrap();
    let sizes = three_batches(src.path());
    let seg = segments(src.path()).pop().unwrap();
    flip_byte(&seg, sizes[1] as usize + 35); // inside batch 2 ([b, c])
    let repair = Options::default().with_recovery_mode(RecoveryMode::Repair);
    let last_seq_before = 6;
    {
        let db = Db::open_with(src.path(), repair.clone()).unwrap();
        let report = db
            .recovery_report()
            .repair
            .clone()
            .expect("a repair report");
        assert_eq!(report.segment, seg);
        assert_eq!(report.offset_bytes, sizes[1]);
        assert_eq!(report.bytes_dropped, sizes[3] - sizes[1]);
        assert_eq!(
            report.valid_frames_dropped, 1,
            "batch 3 was valid but after the damage"
        );
        let saved = std::fs::read_dir(&report.quarantine).unwrap().count();
        assert_eq!(saved, 1, "the dropped bytes are kept in quarantine");
        assert_eq!(present(&db, &["a", "b", "d"]), [true, false, false]);
        let seq = db.put("new", "write").unwrap().seq;
        assert!(
            seq > last_seq_before,
            "sequence numbers of dropped frames are not reused"
        );
    }
    let db = Db::open(src.path()).expect("a repaired WAL opens in strict mode");
    assert_eq!(db.get("new").unwrap().as_deref(), Some(&b"write"[..]));
}

#[test]
fn damage_in_an_earlier_segment_is_corruption_and_repair_moves_later_segments_aside() {
    let src = tempfile::tempdir().unwrap();
    let options = Options::default()
        .with_segment_size_bytes_max(256)
        .with_sync_mode(SyncMode::Never);
    {
        let db = Db::open_with(src.path(), options.clone()).unwrap();
        for i in 0..40 {
            db.put(format!("k{i:02}"), "some value bytes").unwrap();
        }
    }
    let segs = segments(src.path());
    assert!(segs.len() > 4);
    // Truncating an earlier segment is damage, not a torn tail: later
    // segments hold acknowledged data.
    let len = std::fs::metadata(&segs[1]).unwrap().len();
    truncate(&segs[1], len - 3);
    assert!(
        matches!(Db::open_with(src.path(), options.clone()), Err(Error::Corruption { path, .. }) if path == segs[1])
    );
    let repair = options.with_recovery_mode(RecoveryMode::Repair);
    let db = Db::open_with(src.path(), repair).unwrap();
    let report = db.recovery_report().repair.clone().unwrap();
    assert_eq!(report.segments_dropped.len(), segs.len() - 2);
    assert!(db.get("k00").unwrap().is_some());
    assert!(db.get("k39").unwrap().is_none());
    assert_eq!(
        segments(src.path()).len(),
        3,
        "two kept, one started by the repair"
    );
}

#[test]
fn a_segment_cut_off_during_creation_is_removed() {
    let src = tempfile::tempdir().unwrap();
    three_batches(src.path());
    let partial = src.path().join("wal").join("wal-00000000000000000007.seg");
    std::fs::write(&partial, b"MKVWAL").unwrap();
    let db = Db::open(src.path()).unwrap();
    assert_eq!(present(&db, &["a", "f"]), [true, true]);
    assert_eq!(
        db.recovery_report().torn_tail.as_ref().unwrap().segment,
        partial
    );
    assert!(!partial.exists());
    assert_eq!(db.put("g", "1").unwrap().seq, 7);
}

#[test]
fn sequence_gap_between_segments_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    let options = Options::default()
        .with_segment_size_bytes_max(200)
        .with_sync_mode(SyncMode::Never);
    {
        let db = Db::open_with(src.path(), options.clone()).unwrap();
        for i in 0..20 {
            db.put(format!("k{i}"), "v").unwrap();
        }
    }
    let segs = segments(src.path());
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1]).unwrap();
    assert!(matches!(
        Db::open_with(src.path(), options),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn missing_meta_with_segments_is_refused() {
    let src = tempfile::tempdir().unwrap();
    three_batches(src.path());
    std::fs::remove_file(src.path().join("META")).unwrap();
    assert!(matches!(
        Db::open(src.path()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn verify_reports_damage_without_changing_anything() {
    let src = tempfile::tempdir().unwrap();
    let sizes = three_batches(src.path());
    let ok = mergekv::verify(src.path()).unwrap();
    assert!(ok.is_ok());
    assert_eq!((ok.frames, ok.ops), (3, 6));
    let seg = segments(src.path()).pop().unwrap();
    flip_byte(&seg, sizes[0] as usize + 2);
    let before = std::fs::read(&seg).unwrap();
    let bad = mergekv::verify(src.path()).unwrap();
    assert!(!bad.is_ok());
    assert!(bad.problems[0].contains("wal-00000000000000000001.seg"));
    assert_eq!(std::fs::read(&seg).unwrap(), before);
}

/// A last frame whose value is zeros: a changed header is corruption; a
/// changed byte in the zeros cannot be told from a lost page (the stated
/// limit of the rule, `FORMAT.md`), so it is cut as a torn tail and
/// reported.
#[test]
fn a_flipped_bit_in_a_last_frame_of_zeros_is_cut_as_torn_and_reported() {
    let src = tempfile::tempdir().unwrap();
    let frame_start;
    {
        let db = Db::open(src.path()).unwrap();
        db.put("a", "1").unwrap();
        frame_start = db.stats().wal.wal_bytes as usize;
        db.put("zeros", vec![0u8; 4096]).unwrap();
    }
    let seg = segments(src.path()).pop().unwrap();
    let copy = copy_db(src.path());
    flip_byte(&rebase(&seg, src.path(), copy.path()), frame_start + 8);
    match Db::open(copy.path()) {
        Err(Error::Corruption { offset_bytes, .. }) => assert_eq!(offset_bytes, frame_start as u64),
        other => panic!(
            "a changed header: expected corruption, got {:?}",
            other.map(|_| ())
        ),
    }
    for at in [frame_start + 100, frame_start + 2000, frame_start + 4000] {
        let copy = copy_db(src.path());
        flip_byte(&rebase(&seg, src.path(), copy.path()), at);
        let db = Db::open(copy.path()).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        assert!(db.get("zeros").unwrap().is_none());
        let torn = db.recovery_report().torn_tail.clone().expect("reported");
        assert_eq!(torn.offset_bytes, frame_start as u64);
    }
}

fn repair_options() -> Options {
    Options::default().with_recovery_mode(RecoveryMode::Repair)
}

#[test]
fn repair_never_reuses_the_sequence_numbers_of_a_damaged_frame() {
    // The damaged frame is the last one, and then the only one of its segment.
    for keys in [&["a", "b", "c"][..], &["a"][..]] {
        let src = tempfile::tempdir().unwrap();
        let mut last_seq = 0;
        {
            let db = Db::open(src.path()).unwrap();
            for k in keys {
                last_seq = db.put(k, "some value").unwrap().seq;
            }
        }
        let seg = segments(src.path()).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len() as usize;
        flip_byte(&seg, len - 3);
        let db = Db::open_with(src.path(), repair_options()).expect("repair opens in one go");
        assert!(db.recovery_report().repair.is_some());
        let seq = db.put("after", "repair").unwrap().seq;
        assert!(
            seq > last_seq,
            "seq {seq} reuses a quarantined one (last was {last_seq})"
        );
        drop(db);
        let db = Db::open(src.path()).unwrap();
        assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"repair"[..]));
        assert_eq!(db.get(keys[keys.len() - 1]).unwrap(), None);
    }
}

#[test]
fn a_crash_during_repair_leaves_the_damage_found_again_and_the_gap_declared() {
    use mergekv::{FaultInjector, IoOp};
    let src = tempfile::tempdir().unwrap();
    let sizes = three_batches(src.path());
    let seg = segments(src.path()).pop().unwrap();
    flip_byte(&seg, sizes[1] as usize + 35);
    // Fail the truncation of the damaged segment: the new segment already exists.
    let faults = FaultInjector::new();
    faults.fail_nth(IoOp::Truncate, 1);
    let failing = repair_options().with_faults(Some(faults));
    assert!(matches!(
        Db::open_with(src.path(), failing),
        Err(Error::Io {
            op: IoOp::Truncate,
            ..
        })
    ));
    assert!(
        matches!(Db::open(src.path()), Err(Error::Corruption { .. })),
        "still damaged"
    );
    let db = Db::open_with(src.path(), repair_options()).unwrap();
    assert!(db.put("g", "1").unwrap().seq > 6);
    assert_eq!(present(&db, &["a", "b"]), [true, false]);
}

#[test]
fn sequence_numbers_at_the_top_of_the_range_are_an_error_not_a_panic() {
    let src = tempfile::tempdir().unwrap();
    {
        let db = Db::open(src.path()).unwrap();
        db.put("a", "1").unwrap();
    }
    let seg = segments(src.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let max = u64::MAX;
    // Segment header: first seq at 20, crc at 28; frame header at 32: first
    // seq at +8, header crc at +24 (docs/FORMAT.md).
    bytes[20..28].copy_from_slice(&max.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    bytes[40..48].copy_from_slice(&max.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[32..56]);
    bytes[56..60].copy_from_slice(&crc.to_le_bytes());
    std::fs::remove_file(&seg).unwrap();
    std::fs::write(
        src.path().join("wal").join(format!("wal-{max:020}.seg")),
        &bytes,
    )
    .unwrap();
    match Db::open(src.path()) {
        Err(Error::Corruption { .. }) => {}
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
}

/// The epoch a leader serves under, in an open of its own (as `serve`
/// runs in a process of its own).
fn served_epoch(dir: &Path) -> u64 {
    struct Nobody;
    impl mergekv::replication::ReplicationAuth for Nobody {
        fn authorize_replication(
            &self,
            _token: &str,
        ) -> Result<(), mergekv::replication::ErrorCode> {
            Err(mergekv::replication::ErrorCode::Unauthenticated)
        }
    }
    let db = Db::open(dir).unwrap();
    let options = mergekv::replication::ReplicationOptions::new(std::sync::Arc::new(Nobody));
    let server =
        mergekv::replication::ReplicationServer::start(&db, "127.0.0.1:0", options).unwrap();
    let epoch = server.epoch();
    server.stop();
    epoch
}

/// `verify --repair` runs in a process of its own: the next `serve` must
/// still draw a new epoch, so followers of the old history get a snapshot.
#[test]
fn a_repair_in_another_open_leads_to_a_new_replication_epoch() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    let first = served_epoch(dir.path());
    assert_eq!(
        served_epoch(dir.path()),
        first,
        "kept while nothing changed"
    );
    // Damage a frame written after the epoch, so the repair keeps it.
    Db::open(dir.path()).unwrap().put("g", "after").unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len() as usize;
    flip_byte(&seg, len - 3);
    assert!(matches!(
        Db::open(dir.path()),
        Err(Error::Corruption { .. })
    ));
    {
        let db = Db::open_with(dir.path(), repair_options()).unwrap();
        assert!(db.recovery_report().repair.is_some());
    }
    let after = served_epoch(dir.path());
    assert_ne!(
        after, first,
        "a repaired history is served under a new epoch"
    );
    assert!(
        !dir.path().join("REPAIRED").exists(),
        "acted on, then removed"
    );
    assert_eq!(served_epoch(dir.path()), after, "and kept from then on");
}

/// A crash after the repair but before the epoch was dropped: the marker
/// is still there, and the next open acts on it.
#[test]
fn a_repair_marker_left_by_a_crash_is_acted_on_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    let first = served_epoch(dir.path());
    std::fs::write(dir.path().join("REPAIRED"), "crashed before settling").unwrap();
    let read_only = Options::default().with_read_only(true);
    drop(Db::open_with(dir.path(), read_only).unwrap());
    assert!(
        dir.path().join("REPAIRED").exists(),
        "a read-only open leaves it for a writable one"
    );
    assert_ne!(served_epoch(dir.path()), first);
}

/// Every segment and snapshot header names the node id it was written
/// under, so repair rebuilds a damaged (or missing) META from them.
#[test]
fn repair_rebuilds_a_damaged_or_missing_meta() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    let (node, digest) = {
        let db = Db::open(dir.path()).unwrap();
        db.compact_now().unwrap();
        db.put("after", "snapshot").unwrap();
        (db.node_id(), db.digest().unwrap().root)
    };
    let meta = dir.path().join("META");
    flip_byte(&meta, 12);
    assert!(matches!(
        Db::open(dir.path()),
        Err(Error::Corruption { path, .. }) if path == meta
    ));
    let renewed = {
        let db = Db::open_with(dir.path(), repair_options()).unwrap();
        assert_ne!(
            db.node_id(),
            node,
            "a fresh id: which was current is unsure"
        );
        assert_eq!(db.digest().unwrap().root, digest, "nothing lost");
        db.node_id()
    };
    assert!(dir.path().join("quarantine").join("META.damaged").exists());
    let db = Db::open(dir.path()).expect("a rebuilt META opens in strict mode");
    assert_eq!(db.node_id(), renewed);
    db.put("more", "writes").unwrap();
    let digest = db.digest().unwrap().root;
    drop(db);
    std::fs::remove_file(&meta).unwrap();
    assert!(Db::open(dir.path()).is_err(), "missing beside segments");
    let db = Db::open_with(dir.path(), repair_options()).unwrap();
    assert_eq!(
        db.digest().unwrap().root,
        digest,
        "files under both ids open"
    );
}

/// A copy that renewed its id has files under both ids: a rebuilt META
/// keeps the older one as a former id, so every file still opens.
#[test]
fn a_rebuilt_meta_keeps_former_node_ids() {
    let src = tempfile::tempdir().unwrap();
    three_batches(src.path());
    let copy = copy_db(src.path());
    let (node, digest) = {
        let db = Db::open(copy.path()).unwrap();
        db.put("on the copy", "x").unwrap();
        (db.node_id(), db.digest().unwrap().root)
    };
    flip_byte(&copy.path().join("META"), 12);
    let db = Db::open_with(copy.path(), repair_options()).unwrap();
    assert_ne!(db.node_id(), node);
    assert_eq!(db.digest().unwrap().root, digest);
}

/// A put of `a`, then one frame of about 12 KiB (`big`, a value of
/// `fill`), then optionally a put of `after`. Returns the segment and where
/// the big frame starts and ends.
fn twelve_kib_frame(dir: &Path, fill: u8, after: bool) -> (std::path::PathBuf, usize, usize) {
    let db = Db::open(dir).unwrap();
    db.put("a", "1").unwrap();
    let start = db.stats().wal.wal_bytes as usize;
    db.put("big", vec![fill; 12 * 1024]).unwrap();
    let end = db.stats().wal.wal_bytes as usize;
    if after {
        db.put("after", "2").unwrap();
    }
    (segments(dir).pop().unwrap(), start, end)
}

/// Overwrites the 4 KiB page (aligned to the file offset) in the middle of
/// `start..end` with `byte`.
fn fill_middle_page(seg: &Path, start: usize, end: usize, byte: u8) -> usize {
    let mut bytes = std::fs::read(seg).unwrap();
    let page = (start + end) / 2 / 4096 * 4096;
    assert!(page > start + 28 && page + 4096 < end, "a middle page");
    bytes[page..page + 4096].fill(byte);
    std::fs::write(seg, bytes).unwrap();
    page
}

#[test]
fn a_last_frame_with_a_zeroed_middle_page_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, start, end) = twelve_kib_frame(dir.path(), b'v', false);
    fill_middle_page(&seg, start, end, 0);
    let db = Db::open(dir.path()).expect("a hole in the last frame is a torn write");
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(db.get("big").unwrap().is_none());
    let torn = db.recovery_report().torn_tail.clone().unwrap();
    assert_eq!(torn.offset_bytes, start as u64);
    assert_eq!(torn.bytes_dropped, (end - start) as u64);
    db.put("next", "3").unwrap();
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.get("next").unwrap().as_deref(), Some(&b"3"[..]));
}

#[test]
fn a_last_frame_with_a_page_of_garbage_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, start, end) = twelve_kib_frame(dir.path(), b'v', false);
    fill_middle_page(&seg, start, end, 0x5a);
    match Db::open(dir.path()) {
        Err(Error::Corruption { offset_bytes, .. }) => assert_eq!(offset_bytes, start as u64),
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
}

/// A group commit of several frames cut by a power loss: a hole in an
/// earlier frame, a later one whole. Neither was acknowledged (an fsync
/// that covered the later one would have covered the hole), so the open
/// cuts both, keeps the bytes in quarantine, says so, and handles it as a
/// repair (followers get a snapshot, the copy a new id).
#[test]
fn a_zeroed_page_in_a_frame_followed_by_a_valid_one_is_cut_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, start, end) = twelve_kib_frame(dir.path(), b'v', true);
    fill_middle_page(&seg, start, end, 0);
    let len = std::fs::metadata(&seg).unwrap().len();
    let db = Db::open(dir.path()).expect("a hole is a write cut short");
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(db.get("big").unwrap().is_none());
    assert!(db.get("after").unwrap().is_none(), "written after the hole");
    let torn = db.recovery_report().torn_tail.clone().unwrap();
    assert_eq!(
        (torn.offset_bytes, torn.bytes_dropped),
        (start as u64, len - start as u64)
    );
    let kept = torn.hole.expect("a hole");
    assert_eq!(
        std::fs::read(&kept).unwrap().len() as u64,
        len - start as u64
    );
    assert!(db.identity_renewed().is_some(), "handled as a repair");
    assert!(
        db.notices().iter().any(|n| n.contains("hole")),
        "{:?}",
        db.notices()
    );
    assert!(
        !dir.path().join("REPAIRED").exists(),
        "settled by the writable open"
    );
}

/// The same limit for a 12 KiB frame of zeros: a changed byte anywhere in
/// its payload is cut as a torn tail (never a wrong value), and said.
#[test]
fn a_flipped_byte_in_a_last_frame_holding_zeroed_pages_is_cut_as_torn() {
    let src = tempfile::tempdir().unwrap();
    let (seg, start, end) = twelve_kib_frame(src.path(), 0, false);
    for at in [start + 100, (start + end) / 2, end - 10] {
        let copy = copy_db(src.path());
        let seg_copy = rebase(&seg, src.path(), copy.path());
        flip_byte(&seg_copy, at);
        let db = Db::open(copy.path()).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        assert!(db.get("big").unwrap().is_none(), "flip at {at}");
        assert_eq!(
            db.recovery_report()
                .torn_tail
                .as_ref()
                .map(|t| t.offset_bytes),
            Some(start as u64)
        );
    }
}

#[test]
fn a_lost_last_sector_that_held_one_non_zero_byte_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let start;
    {
        let db = Db::open(dir.path()).unwrap();
        db.put("a", "1").unwrap();
        start = db.stats().wal.wal_bytes as usize;
        let mut value = vec![0u8; 12 * 1024];
        *value.last_mut().unwrap() = 1;
        db.put("big", value).unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last_sector = (bytes.len() - 1) / 512 * 512;
    assert!(bytes[last_sector..].iter().filter(|&&b| b != 0).count() == 1);
    bytes[last_sector..].fill(0);
    std::fs::write(&seg, bytes).unwrap();
    let db = Db::open(dir.path()).expect("the size landed, the last sector did not");
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(db.get("big").unwrap().is_none());
    assert_eq!(
        db.recovery_report()
            .torn_tail
            .as_ref()
            .unwrap()
            .offset_bytes,
        start as u64
    );
}

/// The CLI's repair opens with `create_if_missing: false`: a missing META
/// beside segments is still rebuilt, and reported as a new identity.
#[test]
fn a_missing_meta_is_rebuilt_by_a_repair_that_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    std::fs::remove_file(dir.path().join("META")).unwrap();
    let options = repair_options().with_create_if_missing(false);
    let db = Db::open_with(dir.path(), options).unwrap();
    assert_eq!(present(&db, &["a", "b", "d"]), [true, true, true]);
    assert_eq!(
        db.identity_renewed().map(|r| r.1),
        Some(mergekv::Renewal::MetaRebuilt)
    );
    assert!(!db.notices().is_empty());
}

/// Runs alone (the WAL they cover is gone) are a database too: a strict
/// open without META refuses instead of writing a new identity, and a
/// repair opens it whole.
#[test]
fn a_missing_meta_beside_runs_only_is_refused_and_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    Db::open(dir.path()).unwrap().compact_now().unwrap();
    for seg in segments(dir.path()) {
        std::fs::remove_file(seg).unwrap();
    }
    assert!(dir.path().join("MANIFEST").exists());
    std::fs::remove_file(dir.path().join("META")).unwrap();
    assert!(matches!(
        Db::open(dir.path()),
        Err(Error::Corruption { .. })
    ));
    assert!(!dir.path().join("META").exists(), "no new identity written");
    let db = Db::open_with(dir.path(), repair_options()).unwrap();
    assert_eq!(present(&db, &["a", "b", "d"]), [true, true, true]);
}

/// Snapshots alone (a directory of the format before runs whose WAL they
/// cover is gone) are a database too: a strict open without META refuses
/// instead of writing a new identity.
#[test]
fn a_missing_meta_beside_snapshots_only_is_refused_and_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path());
    let snapshot = common::shipped_snapshot(&Db::open(dir.path()).unwrap());
    let covered = snapshot.0;
    common::make_legacy(dir.path(), &[snapshot], covered);
    for seg in segments(dir.path()) {
        std::fs::remove_file(seg).unwrap();
    }
    std::fs::remove_file(dir.path().join("META")).unwrap();
    assert!(matches!(
        Db::open(dir.path()),
        Err(Error::Corruption { .. })
    ));
    assert!(!dir.path().join("META").exists(), "no new identity written");
    let db = Db::open_with(dir.path(), repair_options()).unwrap();
    assert_eq!(present(&db, &["a", "b", "d"]), [true, true, true]);
}

/// A write cut by a power loss where the file's old end fell inside a
/// sector: the frame's header reads as zeros from where it starts to the
/// end of that sector, and a later write (in a later sector) landed. That
/// is a torn write, cut back to the frames before it (as a hole: it is
/// quarantined and reported), not damage that blocks opening.
#[test]
fn zeros_from_a_frame_to_the_end_of_its_sector_are_a_torn_write_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let segment = {
        let db = Db::open(dir.path()).unwrap();
        db.put("k0", vec![b'a'; 700]).unwrap();
        db.close().unwrap();
        segments(dir.path()).pop().unwrap()
    };
    let ends = {
        let db = Db::open(dir.path()).unwrap();
        let mut ends = vec![std::fs::metadata(&segment).unwrap().len()];
        for k in ["k1", "k2", "k3"] {
            db.put(k, vec![b'b'; 700]).unwrap();
            ends.push(std::fs::metadata(&segment).unwrap().len());
        }
        db.close().unwrap();
        ends
    };
    // Frame k1 starts at ends[0]: zero it from there to its sector's end.
    let start = ends[0] as usize;
    let sector_end = (start / 512 + 1) * 512;
    assert!(
        sector_end < ends[1] as usize,
        "the frame spans past its first sector"
    );
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[start..sector_end].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    let db = Db::open(dir.path()).unwrap();
    let held: Vec<bool> = ["k0", "k1", "k2", "k3"]
        .iter()
        .map(|k| db.get(k).unwrap().is_some())
        .collect();
    assert_eq!(held, vec![true, false, false, false]);
    let torn = db.recovery_report().torn_tail.clone().expect("a torn tail");
    assert!(torn.hole.is_some(), "reported as a hole: {torn:?}");
}
