//! Change streams: export to a `Write`, import from a `Read`, chunk by
//! chunk, resumable, sealed under the key of an encrypted copy.

use mergekv::sync::stream::{CHUNK_HEADER_BYTES, STREAM_CHUNK_BYTES_TARGET, STREAM_HEADER_BYTES};
use mergekv::{Batch, Db, EncryptionKey, Error, KeyError, KeySource, Options, SyncCursor};

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

fn keyed(k: Option<u8>) -> Options {
    Options::default().with_encryption_key(k.map(|b| KeySource::Key(key(b))))
}

fn fill(db: &Db, keys: usize, value_bytes: usize) {
    for start in (0..keys).step_by(1000) {
        let mut batch = Batch::new();
        for i in start..(start + 1000).min(keys) {
            batch.put(
                format!("key-{i:07}"),
                format!("{i:0width$}", width = value_bytes),
            );
        }
        db.write(batch).unwrap();
    }
    db.increment("hits", 7).unwrap();
    db.delete("key-0000003").unwrap();
}

/// The chunks of a stream in clear: (offset, kind, payload length).
fn chunks(bytes: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut at = STREAM_HEADER_BYTES;
    while at + CHUNK_HEADER_BYTES <= bytes.len() {
        let kind = bytes[at];
        let len = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        out.push((at, kind, len));
        at += CHUNK_HEADER_BYTES + len + 32;
    }
    out
}

#[test]
fn a_stream_round_trips_in_chunks_of_bounded_size() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    fill(&a, 30_000, 200);
    let mut stream = Vec::new();
    let (report, after) = a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    assert_eq!(report.bytes as usize, stream.len());
    assert_eq!(
        report.records, 30_001,
        "every key, the tombstone and the counter"
    );
    let parsed = chunks(&stream);
    assert_eq!(parsed.len() as u64, report.chunks);
    assert!(report.chunks >= 5, "{report:?}");
    for (at, _, len) in &parsed {
        assert!(
            *len <= STREAM_CHUNK_BYTES_TARGET + 1024,
            "chunk at {at}: {len} bytes"
        );
    }
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    let imported = b.import_stream(&mut &stream[..]).unwrap();
    assert_eq!(imported.applied, 30_001);
    assert_eq!(b.digest().unwrap().root, a.digest().unwrap().root);
    assert_eq!(b.counter("hits").unwrap(), 7);
    assert_eq!(b.get("key-0000003").unwrap(), None);
    // Again: nothing new; and nothing is newer than the cursor after.
    let again = b.import_stream(&mut &stream[..]).unwrap();
    assert_eq!(again.applied, 0);
    let mut empty = Vec::new();
    let (none, _) = a.export_to(&after, &mut empty).unwrap();
    assert_eq!(none.records, 0);
    assert_eq!(none.chunks, 1, "the end chunk alone");
}

#[test]
fn an_interrupted_import_resumes_after_its_last_whole_chunk_and_takes_the_cursor_only_at_the_end() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    fill(&a, 30_000, 200);
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    let parsed = chunks(&stream);
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    // Cut in the middle of the third chunk.
    let cut = parsed[2].0 + CHUNK_HEADER_BYTES + 10;
    match b.import_stream(&mut &stream[..cut]) {
        Err(Error::Decode { reason, .. }) => assert!(reason.contains("cut short"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        b.get("key-0000000").unwrap().is_some(),
        "the first chunks landed"
    );
    assert_ne!(b.digest().unwrap().root, a.digest().unwrap().root);
    // B holds part: it must not claim A's cursor yet.
    let (_, claimed) = b.export_since(&SyncCursor::new()).unwrap();
    assert!(!claimed.seen.contains_key(&a.node_id()), "{claimed:?}");
    // Resume: the two whole chunks are skipped, the rest applied.
    let resumed = b.import_stream(&mut &stream[..]).unwrap();
    assert!(resumed.duplicates > 0, "{resumed:?}");
    assert_eq!(b.digest().unwrap().root, a.digest().unwrap().root);
    let (_, claimed) = b.export_since(&SyncCursor::new()).unwrap();
    assert!(claimed.seen.contains_key(&a.node_id()), "{claimed:?}");
}

#[test]
fn a_damaged_or_reordered_stream_is_refused_and_the_chunk_applies_nothing() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    fill(&a, 200, 20);
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    let parsed = chunks(&stream);
    let records_end = parsed[1].0; // the first chunk holds every record
    for i in (0..records_end).step_by(3) {
        let mut bad = stream.clone();
        bad[i] ^= 0x20;
        assert!(b.import_stream(&mut &bad[..]).is_err(), "byte {i}");
        assert_eq!(
            b.get("key-0000001").unwrap(),
            None,
            "byte {i}: nothing applied"
        );
    }
    b.import_stream(&mut &stream[..]).unwrap();
    assert_eq!(b.digest().unwrap().root, a.digest().unwrap().root);
}

#[test]
fn an_encrypted_copys_stream_is_sealed_and_only_its_key_reads_it() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open_with(a_dir.path(), keyed(Some(1))).unwrap();
    fill(&a, 5_000, 40);
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    assert!(
        !stream.windows(8).any(|w| w == b"key-0000"),
        "keys in clear"
    );
    for (k, expect_ok) in [(Some(1), true), (Some(2), false), (None, false)] {
        let dir = tempfile::tempdir().unwrap();
        let b = Db::open_with(dir.path(), keyed(k)).unwrap();
        let r = b.import_stream(&mut &stream[..]);
        if expect_ok {
            r.unwrap();
            assert_eq!(b.digest().unwrap().root, a.digest().unwrap().root);
        } else {
            assert!(
                matches!(r, Err(Error::Key(KeyError::Missing { needed, .. })) if needed == key(1).id()),
                "{k:?}"
            );
        }
    }
    // A stream in clear into an encrypted copy: refused.
    let clear_dir = tempfile::tempdir().unwrap();
    let clear = Db::open(clear_dir.path()).unwrap();
    clear.put("x", "1").unwrap();
    let mut clear_stream = Vec::new();
    clear
        .export_to(&SyncCursor::new(), &mut clear_stream)
        .unwrap();
    assert!(matches!(
        a.import_stream(&mut &clear_stream[..]),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn a_chunk_claiming_a_huge_length_and_sending_little_is_cut_short_without_allocating_it() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    a.put("k", "v").unwrap();
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    // The first chunk's length set to the largest a reader takes, and the
    // stream cut 100 bytes into it.
    let at = STREAM_HEADER_BYTES + 12;
    let max = mergekv::sync::stream::STREAM_CHUNK_BYTES_MAX as u32;
    stream[at..at + 4].copy_from_slice(&max.to_le_bytes());
    stream.truncate(STREAM_HEADER_BYTES + CHUNK_HEADER_BYTES + 100);
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    match b.import_stream(&mut &stream[..]) {
        Err(Error::Decode { reason, .. }) => assert!(reason.contains("cut short"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // One more than the largest: refused before reading it.
    stream[at..at + 4].copy_from_slice(&(max + 1).to_le_bytes());
    assert!(matches!(
        b.import_stream(&mut &stream[..]),
        Err(Error::Decode { .. })
    ));
}

/// Rewrites a stream in clear chunk by chunk with `edit(index, kind,
/// count, payload)`, the header (`head`) and every chain hash made right
/// again: what anyone can do to a stream in clear.
fn forge(
    stream: &[u8],
    head: impl Fn(&mut Vec<u8>),
    edit: impl Fn(u32, u8, &mut u32, &mut Vec<u8>),
) -> Vec<u8> {
    let mut header = stream[..STREAM_HEADER_BYTES].to_vec();
    head(&mut header);
    let crc = crc32c::crc32c(&header[..36]);
    header[36..40].copy_from_slice(&crc.to_le_bytes());
    let mut chain = *blake3::Hasher::new_derive_key("mergekv change stream chain v1")
        .update(&header)
        .finalize()
        .as_bytes();
    let mut out = header;
    for (i, (at, kind, len)) in chunks(stream).into_iter().enumerate() {
        let mut count = u32::from_le_bytes(stream[at + 8..at + 12].try_into().unwrap());
        let mut payload = stream[at + CHUNK_HEADER_BYTES..at + CHUNK_HEADER_BYTES + len].to_vec();
        edit(i as u32, kind, &mut count, &mut payload);
        let mut h = stream[at..at + CHUNK_HEADER_BYTES].to_vec();
        h[8..12].copy_from_slice(&count.to_le_bytes());
        h[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        chain = *blake3::Hasher::new()
            .update(&chain)
            .update(&h)
            .update(&payload)
            .finalize()
            .as_bytes();
        out.extend_from_slice(&h);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&chain);
    }
    out
}

#[test]
fn a_forged_record_count_is_refused_without_allocating_for_it() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    a.put("k", "v").unwrap();
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    let forged = forge(
        &stream,
        |_| {},
        |i, _, count, _| {
            if i == 0 {
                *count = u32::MAX;
            }
        },
    );
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    assert!(matches!(
        b.import_stream(&mut &forged[..]),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn a_stream_under_this_copys_own_node_id_is_refused_before_any_chunk_lands() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    fill(&a, 3_000, 400);
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    let own = b.node_id().0;
    let forged = forge(
        &stream,
        |h| h[12..20].copy_from_slice(&own.to_le_bytes()),
        |_, _, _, _| {},
    );
    assert!(matches!(
        b.import_stream(&mut &forged[..]),
        Err(Error::IdentityConflict { .. })
    ));
    assert_eq!(b.get("key-0000000").unwrap(), None);
}

#[test]
fn a_cursor_claiming_this_copys_writes_beyond_its_clock_is_refused() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    a.put("k", "v").unwrap();
    let mut stream = Vec::new();
    a.export_to(&SyncCursor::new(), &mut stream).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    let own = b.node_id().0;
    // The end chunk's cursor: records u64, entries u32, then node + stamp.
    let forged = forge(
        &stream,
        |_| {},
        |_, kind, _, payload| {
            if kind == 2 {
                let entries = u32::from_le_bytes(payload[8..12].try_into().unwrap());
                payload[8..12].copy_from_slice(&(entries + 1).to_le_bytes());
                payload.extend_from_slice(&own.to_le_bytes());
                payload.extend_from_slice(&u64::MAX.to_le_bytes()[..8]);
                payload.extend_from_slice(&0u32.to_le_bytes());
                payload.extend_from_slice(&own.to_le_bytes());
            }
        },
    );
    assert!(matches!(
        b.import_stream(&mut &forged[..]),
        Err(Error::IdentityConflict { .. })
    ));
}

#[test]
fn progress_is_one_slot_bound_to_the_streams_content() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Db::open(a_dir.path()).unwrap();
    fill(&a, 30_000, 200);
    let mut s1 = Vec::new();
    a.export_to(&SyncCursor::new(), &mut s1).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = Db::open(other_dir.path()).unwrap();
    fill(&other, 30_000, 201);
    let mut s2 = Vec::new();
    other.export_to(&SyncCursor::new(), &mut s2).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Db::open(b_dir.path()).unwrap();
    let p = chunks(&s1);
    // Cut s1 after two whole chunks.
    assert!(b.import_stream(&mut &s1[..p[2].0 + 5]).is_err());
    // Another stream given s1's id: its first chunks are not skipped as
    // if they were s1's.
    let id = s1[20..36].to_vec();
    let s2_as_s1 = forge(&s2, |h| h[20..36].copy_from_slice(&id), |_, _, _, _| {});
    match b.import_stream(&mut &s2_as_s1[..]) {
        Err(Error::Decode { reason, .. }) => assert!(reason.contains("not the one"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Imported again from scratch, it is whole; and s1 completes too.
    b.import_stream(&mut &s2_as_s1[..]).unwrap();
    b.import_stream(&mut &s1[..]).unwrap();
    let both_dir = tempfile::tempdir().unwrap();
    let both = Db::open(both_dir.path()).unwrap();
    both.import_stream(&mut &s1[..]).unwrap();
    both.import_stream(&mut &s2[..]).unwrap();
    assert_eq!(b.digest().unwrap().root, both.digest().unwrap().root);
    // Imported again and again: nothing changes.
    for _ in 0..20 {
        b.import_stream(&mut &s1[..]).unwrap();
    }
    assert_eq!(b.stats().keys, both.stats().keys);
}
