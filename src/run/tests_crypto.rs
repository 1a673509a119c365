//! Tests of encrypted runs: round trips every way, no key or value in
//! clear, every flipped byte and every truncation caught, blocks moved
//! within a run or between runs refused, missing and wrong keys named,
//! the header and footer flags, and salvage.
//!
//! Randomised tests print their seed (`MERGEKV_RUN_SEED`), and the
//! property test scales with `PROPTEST_CASES`.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;

use super::format::{
    ENCRYPTED_DATA_OFFSET, FOOTER_BYTES, FOOTER_CRC_OFFSET, FOOTER_FLAGS_OFFSET, FRAME_AAD_BYTES,
    FRAME_DATA_LZ4, FRAME_DATA_RAW, HEADER_BYTES, HEADER_CRC_OFFSET, HEADER_FLAGS_OFFSET,
    KEY_BLOCK_OFFSET, RUN_FLAG_ENCRYPTED, frame_aad, read_frame,
};
use super::tests::{
    BASE_MS, DIR, Model, NO_KEYS, Rng, arb_key, arb_state, as_model, assert_corruption_of,
    block_range_with, cases, check_against_model, collect, mixed_model, model_range, put,
    read_damaged_with, seed, sim_io, small_blocks, stamp, write_model,
};
use super::*;
use crate::clock::NodeId;
use crate::crypto::{EncryptionKey, KEY_BLOCK_BYTES, KeyBlock, KeyId, Keyring, TAG_BYTES};
use crate::error::{Error, KeyError};
use crate::io::{FaultInjector, Io, IoOp, SimDisk};

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

/// Options that encrypt with `key`.
fn encrypted(key: &EncryptionKey, options: RunWriterOptions) -> RunWriterOptions {
    RunWriterOptions {
        key: Some(Arc::new(key.clone())),
        ..options
    }
}

/// A keyring holding only `key`.
fn ring(key: &EncryptionKey) -> Keyring {
    Keyring::new(Some(key.clone()), Vec::new())
}

fn open(io: &Io, path: &Path, keyring: &Keyring) -> Result<Arc<Run>, Error> {
    Run::open(io, path, BlockCache::new(1 << 20), keyring)
}

/// The frame types of a run's data blocks, in order.
fn block_kinds(bytes: &[u8], run: &Run) -> Vec<u8> {
    (0..run.index().len())
        .map(|i| bytes[run.index().block(i).unwrap().offset as usize])
        .collect()
}

/// Recomputes the CRC-32C of the frame at `at` (after a deliberate change
/// to its payload), so only the tag can tell.
fn reseal_frame_crc(bytes: &mut [u8], at: usize) {
    let mut r = crate::codec::Reader::new(&bytes[at + 1..]);
    let stored = super::format::get_varint(&mut r).unwrap() as usize;
    if bytes[at] == FRAME_DATA_LZ4 {
        super::format::get_varint(&mut r).unwrap();
    }
    let header_len = 1 + r.position();
    let payload = at + header_len + 4..at + header_len + 4 + stored;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[at..at + header_len]), &bytes[payload]);
    bytes[at + header_len..at + header_len + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the header's and the footer's CRC-32C (after a deliberate
/// change to their flags).
fn reseal_header_and_footer(bytes: &mut [u8]) {
    let crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    let footer = bytes.len() - FOOTER_BYTES;
    let crc = crc32c::crc32c(&bytes[footer..footer + FOOTER_CRC_OFFSET]);
    bytes[footer + FOOTER_CRC_OFFSET..footer + FOOTER_CRC_OFFSET + 4]
        .copy_from_slice(&crc.to_le_bytes());
}

fn assert_authentication_failed(e: &Error, path: &Path) {
    assert_corruption_of(e, path);
    assert!(e.to_string().contains("authentication failed"), "{e}");
}

fn assert_missing_key(e: &Error, path: &Path, needed: KeyId, given: &[KeyId]) {
    match e {
        Error::Key(KeyError::Missing {
            what,
            needed: n,
            given: g,
            ..
        }) => {
            assert_eq!(what, &path.display().to_string());
            assert_eq!((*n, g.as_slice()), (needed, given));
        }
        other => panic!("expected a missing key, got {other:?}"),
    }
}

#[test]
fn the_associated_data_is_laid_out_as_documented() {
    let aad = frame_aad(
        0x0102_0304_0506_0708,
        0x1112_1314_1516_1718,
        FRAME_DATA_LZ4,
        300,
    );
    let mut expected = Vec::new();
    expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    expected.extend_from_slice(&0x1112_1314_1516_1718u64.to_le_bytes());
    expected.extend_from_slice(&RUN_FORMAT_VERSION.to_le_bytes());
    expected.push(b'L');
    expected.extend_from_slice(&300u64.to_le_bytes());
    assert_eq!((aad.len(), &aad[..]), (FRAME_AAD_BYTES, &expected[..]));
    assert_eq!(FRAME_AAD_BYTES, 27);
    // Only an LZ4 block's decompressed length is bound; other frames bind 0.
    let raw = frame_aad(1, 2, FRAME_DATA_RAW, 300);
    assert_eq!(&raw[19..], &[0u8; 8]);
    assert_eq!(
        (KEY_BLOCK_OFFSET, ENCRYPTED_DATA_OFFSET),
        (32, 32 + KEY_BLOCK_BYTES)
    );
    assert_eq!(ENCRYPTED_DATA_OFFSET, 76);
}

#[test]
fn a_sealed_frame_may_pass_the_length_limit_by_its_tag_and_no_more() {
    use super::format::{
        BLOCK_RAW_BYTES_MAX, FRAME_FILTER, FRAME_INDEX, SECTION_BYTES_MAX, put_varint,
    };
    // Frame headers only (no payload follows): the limit is checked first,
    // then the end of the bytes.
    let header = |kind: u8, stored: usize, raw: Option<usize>| {
        let mut out = vec![kind];
        put_varint(&mut out, stored as u64);
        if let Some(raw) = raw {
            put_varint(&mut out, raw as u64);
        }
        out.extend_from_slice(&[0; 4]);
        out
    };
    let why = |bytes: &[u8], sealed: bool| read_frame(bytes, sealed).unwrap_err().1;
    for (kind, max) in [
        (FRAME_DATA_RAW, BLOCK_RAW_BYTES_MAX),
        (FRAME_INDEX, SECTION_BYTES_MAX),
    ] {
        let at_limit = header(kind, max + TAG_BYTES, None);
        assert!(why(&at_limit, true).contains("runs past the end"));
        assert!(why(&at_limit, false).contains("exceeds the limit"));
        let past = header(kind, max + TAG_BYTES + 1, None);
        assert!(why(&past, true).contains("exceeds the limit"));
    }
    // A tag needs 16 bytes; an LZ4 length is checked against the
    // ciphertext alone.
    assert!(why(&header(FRAME_FILTER, TAG_BYTES - 1, None), true).contains("shorter than its tag"));
    let lz4 = |stored, raw| header(FRAME_DATA_LZ4, stored, Some(raw));
    assert!(why(&lz4(TAG_BYTES + 2, 2 * 255), true).contains("runs past the end"));
    assert!(why(&lz4(TAG_BYTES + 2, 2 * 255 + 1), true).contains("impossible"));
    assert!(why(&lz4(TAG_BYTES, 1), true).contains("impossible"));
}

#[test]
fn an_encrypted_run_round_trips_every_way() {
    let mut rng = Rng(seed());
    let (disk, io) = sim_io();
    let k = key(7);
    let keyring = ring(&k);
    // Compressible values (runs of 'z'), incompressible ones, tombstones,
    // counters and long keys.
    let model = mixed_model(&mut rng, 600);
    let mut kinds = Vec::new();
    for options in [
        small_blocks(),
        RunWriterOptions::default(),
        RunWriterOptions {
            block_bytes_target: 0,
            compression: false,
            bloom_bits_per_key: 0,
            ..RunWriterOptions::default()
        },
        RunWriterOptions {
            expected_entries: Some(model.len() as u64),
            ..RunWriterOptions::default()
        },
    ] {
        let info = write_model(&io, Path::new(DIR), 1, &model, &encrypted(&k, options));
        let run = open(&io, &info.path, &keyring).unwrap();
        assert_eq!(run.info(), &info);
        assert_eq!(run.key_id(), Some(k.id()));
        let bytes = disk.read_file(&info.path).unwrap();
        kinds.extend(block_kinds(&bytes, &run));
        check_against_model(&run, &model, &mut rng);
        for reverse in [false, true] {
            let uncached: Vec<(Vec<u8>, crate::crdt::KeyState)> = run
                .iter_uncached(Bound::Unbounded, Bound::Unbounded, reverse)
                .map(|item| {
                    let (k, v) = item.unwrap();
                    (k.to_vec(), v)
                })
                .collect();
            assert_eq!(
                uncached,
                model_range(&model, &Bound::Unbounded, &Bound::Unbounded, reverse)
            );
        }
        // Cached reads decode nothing again: a second get of every key is
        // all hits.
        let cache = BlockCache::new(1 << 24);
        let run = Run::open(&io, &info.path, Arc::clone(&cache), &keyring).unwrap();
        for key in model.keys() {
            run.get(key).unwrap();
        }
        let misses = cache.stats().misses;
        for (key, state) in &model {
            assert_eq!(run.get(key).unwrap().as_ref(), Some(state));
        }
        assert_eq!(cache.stats().misses, misses, "cached blocks are plaintext");
    }
    assert!(
        kinds.contains(&FRAME_DATA_LZ4) && kinds.contains(&FRAME_DATA_RAW),
        "both kinds of block are exercised"
    );
}

#[test]
fn an_empty_encrypted_run_opens_and_holds_nothing() {
    let (_, io) = sim_io();
    let k = key(3);
    let options = encrypted(&k, RunWriterOptions::default());
    let info = write_model(&io, Path::new(DIR), 3, &Model::new(), &options);
    assert_eq!(
        info.size_bytes,
        (ENCRYPTED_DATA_OFFSET + FOOTER_BYTES) as u64 + 4 * (1 + 1 + 4 + TAG_BYTES as u64) + 1
    );
    let run = open(&io, &info.path, &ring(&k)).unwrap();
    assert_eq!(run.verify().unwrap(), 0);
    assert_eq!(run.get(b"x").unwrap(), None);
    assert_eq!(
        collect(&run, Bound::Unbounded, Bound::Unbounded, true),
        vec![]
    );
}

/// Keys and values that cannot be missed in a file's bytes.
fn distinctive_model() -> Model {
    let at = stamp(BASE_MS, 0, 1);
    (0..300u32)
        .map(|i| {
            let key = format!("secret-key-{i:05}-platypus").into_bytes();
            let value = if i % 2 == 0 {
                format!("confidential-value-{i:05}-{}", "wombat".repeat(20))
            } else {
                format!("classified-{i:05}-quokka")
            };
            (key, put(value.as_bytes(), at))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_run_holds_no_key_or_value_in_clear() {
    let (disk, io) = sim_io();
    let model = distinctive_model();
    let needles: Vec<&[u8]> = vec![
        b"secret-key",
        b"platypus",
        b"confidential",
        b"wombatwombat",
        b"classified",
        b"quokka",
        b"-00042-",
    ];
    // In clear (uncompressed) every one of them is there: the search works.
    let clear = RunWriterOptions {
        compression: false,
        ..RunWriterOptions::default()
    };
    let info = write_model(&io, Path::new(DIR), 60, &model, &clear);
    let bytes = disk.read_file(&info.path).unwrap();
    for needle in &needles {
        assert!(
            contains(&bytes, needle),
            "{}",
            String::from_utf8_lossy(needle)
        );
    }
    let k = key(9);
    for compression in [false, true] {
        let options = encrypted(
            &k,
            RunWriterOptions {
                compression,
                ..RunWriterOptions::default()
            },
        );
        let info = write_model(&io, Path::new(DIR), 61, &model, &options);
        let bytes = disk.read_file(&info.path).unwrap();
        for needle in &needles {
            assert!(
                !contains(&bytes, needle),
                "{} in clear (compression {compression})",
                String::from_utf8_lossy(needle)
            );
        }
        let run = open(&io, &info.path, &ring(&k)).unwrap();
        assert_eq!(run.verify().unwrap(), model.len() as u64);
    }
}

/// A small encrypted run of many blocks, LZ4 and raw, every kind of
/// state: what the damage tests flip, cut and move.
fn small_encrypted_run(io: &Io, k: &EncryptionKey) -> (Model, RunFileInfo) {
    let mut model = mixed_model(&mut Rng(7), 40);
    model.retain(|_, s| {
        s.register
            .as_ref()
            .and_then(|r| r.value.as_ref())
            .is_none_or(|v| v.len() < 300)
    });
    model.insert(
        b"zz-compressible".to_vec(),
        put(&[b'q'; 200], stamp(BASE_MS, 0, 1)),
    );
    let info = write_model(io, Path::new(DIR), 5, &model, &encrypted(k, small_blocks()));
    (model, info)
}

#[test]
fn every_flipped_byte_of_an_encrypted_run_is_caught_and_never_read_as_a_wrong_value() {
    let (disk, io) = sim_io();
    let k = key(5);
    let keyring = ring(&k);
    let (model, info) = small_encrypted_run(&io, &k);
    let bytes = disk.read_file(&info.path).unwrap();
    let run = open(&io, &info.path, &keyring).unwrap();
    let kinds = block_kinds(&bytes, &run);
    assert!(kinds.contains(&FRAME_DATA_LZ4) && kinds.contains(&FRAME_DATA_RAW));
    drop(run);
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0xFF] {
            let mut flipped = bytes.clone();
            flipped[at] ^= mask;
            assert!(
                !read_damaged_with(&io, &info.path, &flipped, &model, &keyring),
                "flip {mask:#x} at {at} of {} went unnoticed",
                bytes.len()
            );
        }
    }
    assert!(
        read_damaged_with(&io, &info.path, &bytes, &model, &keyring),
        "the whole file verifies"
    );
}

#[test]
fn every_truncation_of_an_encrypted_run_is_caught() {
    let (disk, io) = sim_io();
    let k = key(5);
    let keyring = ring(&k);
    let (model, info) = small_encrypted_run(&io, &k);
    let bytes = disk.read_file(&info.path).unwrap();
    for len in 0..bytes.len() {
        assert!(
            !read_damaged_with(&io, &info.path, &bytes[..len], &model, &keyring),
            "cut at {len}"
        );
    }
}

#[test]
fn a_changed_ciphertext_under_a_recomputed_checksum_fails_authentication() {
    let (disk, io) = sim_io();
    let k = key(5);
    let keyring = ring(&k);
    let (model, info) = small_encrypted_run(&io, &k);
    let bytes = disk.read_file(&info.path).unwrap();
    let (offset, len, first, _, _) = block_range_with(&io, &info.path, 2, &keyring);
    // A data block: opening is fine, reading it is refused.
    let mut changed = bytes.clone();
    changed[offset + len - 3] ^= 0x04;
    reseal_frame_crc(&mut changed, offset);
    io.write_atomic(&info.path, &changed).unwrap();
    let run = open(&io, &info.path, &keyring).unwrap();
    assert_authentication_failed(&run.get(&first).unwrap_err(), &info.path);
    assert_authentication_failed(&run.verify().unwrap_err(), &info.path);
    drop(run);
    // A section (the index, the first frame after the data... each one):
    // opening is refused.
    let footer_at = bytes.len() - FOOTER_BYTES;
    let (footer, _) = format::decode_footer(&bytes[footer_at..]).unwrap();
    for at in [
        footer.nodes_offset,
        footer.index_offset,
        footer.filter_offset,
        footer.nodes_copy_offset,
    ] {
        let at = at as usize;
        let mut changed = bytes.clone();
        let frame_len = read_frame(&bytes[at..], true).unwrap().frame_len;
        changed[at + frame_len - 1] ^= 0x80;
        reseal_frame_crc(&mut changed, at);
        io.write_atomic(&info.path, &changed).unwrap();
        assert_authentication_failed(&open(&io, &info.path, &keyring).unwrap_err(), &info.path);
    }
    assert!(!model.is_empty());
}

/// A run of one entry per block, all blocks the same size (equal-length
/// keys sharing nothing, equal-length incompressible values).
fn uniform_run(io: &Io, dir: &Path, id: u64, k: &EncryptionKey, fill: u8) -> (Model, RunFileInfo) {
    let mut rng = Rng(u64::from(fill));
    let model: Model = (0..8u8)
        .map(|i| {
            let mut value = rng.bytes(64);
            value[0] = fill;
            (vec![b'a' + i, b'k'], put(&value, stamp(BASE_MS, 0, 1)))
        })
        .collect();
    let options = encrypted(
        k,
        RunWriterOptions {
            block_bytes_target: 0,
            compression: false,
            ..RunWriterOptions::default()
        },
    );
    let info = write_model(io, dir, id, &model, &options);
    (model, info)
}

#[test]
fn a_block_copied_over_another_of_its_size_is_refused() {
    let (disk, io) = sim_io();
    let k = key(11);
    let keyring = ring(&k);
    let (model, info) = uniform_run(&io, Path::new(DIR), 70, &k, 1);
    let bytes = disk.read_file(&info.path).unwrap();
    let (from, len, ..) = block_range_with(&io, &info.path, 1, &keyring);
    let (to, to_len, first, ..) = block_range_with(&io, &info.path, 5, &keyring);
    assert_eq!(len, to_len, "the blocks are the same size");
    let mut moved = bytes.clone();
    moved.copy_within(from..from + len, to);
    // The checksum of the copied frame holds: only the tag can tell.
    assert!(read_frame(&moved[to..], true).is_ok());
    io.write_atomic(&info.path, &moved).unwrap();
    let run = open(&io, &info.path, &keyring).unwrap();
    assert_authentication_failed(&run.get(&first).unwrap_err(), &info.path);
    assert_authentication_failed(&run.verify().unwrap_err(), &info.path);
    let scanned: Vec<_> = run
        .iter_uncached(Bound::Unbounded, Bound::Unbounded, false)
        .collect();
    assert!(scanned.last().unwrap().is_err());
    // Every other key still reads as written.
    for (key, state) in model.iter().filter(|(key, _)| **key != first) {
        assert_eq!(run.get(key).unwrap().as_ref(), Some(state));
    }
}

#[test]
fn a_block_moved_into_another_run_at_the_same_offset_is_refused() {
    let (disk, io) = sim_io();
    let k = key(12);
    let keyring = ring(&k);
    // The same key; another run id, or even the same id in another
    // directory (only the salts differ).
    let (_, target) = uniform_run(&io, Path::new(DIR), 80, &k, 1);
    let (_, other_id) = uniform_run(&io, Path::new(DIR), 81, &k, 2);
    let (_, same_id) = uniform_run(&io, Path::new("/elsewhere/runs"), 80, &k, 3);
    for source in [&other_id, &same_id] {
        let bytes = disk.read_file(&target.path).unwrap();
        let theirs = disk.read_file(&source.path).unwrap();
        assert_eq!(bytes.len(), theirs.len());
        let (at, len, first, ..) = block_range_with(&io, &target.path, 3, &keyring);
        let mut moved = bytes.clone();
        moved[at..at + len].copy_from_slice(&theirs[at..at + len]);
        assert_ne!(moved, bytes);
        io.write_atomic(&target.path, &moved).unwrap();
        let run = open(&io, &target.path, &keyring).unwrap();
        assert_authentication_failed(&run.get(&first).unwrap_err(), &target.path);
        drop(run);
        io.write_atomic(&target.path, &bytes).unwrap();
    }
    // The key blocks differ in their salts; the key ids are the same.
    let block = |info: &RunFileInfo| {
        let bytes = disk.read_file(&info.path).unwrap();
        KeyBlock::decode(&bytes[KEY_BLOCK_OFFSET..]).unwrap()
    };
    let (a, b, c) = (block(&target), block(&other_id), block(&same_id));
    assert_eq!((a.key_id, b.key_id, c.key_id), (k.id(), k.id(), k.id()));
    assert!(a.salt != b.salt && a.salt != c.salt && b.salt != c.salt);
}

#[test]
fn an_encrypted_run_without_its_key_is_a_missing_key_naming_it() {
    let disk = SimDisk::new();
    let faults = FaultInjector::with_disk(disk.clone());
    let io = Io::new(Some(faults.clone()));
    let k = key(21);
    let other = key(22);
    let (model, info) = small_encrypted_run(&io, &k);
    // No key at all: refused after reading the header and the key block,
    // and nothing else.
    let reads = faults.count(IoOp::Read);
    let e = open(&io, &info.path, &Keyring::default()).unwrap_err();
    assert_eq!(faults.count(IoOp::Read) - reads, 1, "one read at open");
    assert_missing_key(&e, &info.path, k.id(), &[]);
    assert!(e.to_string().contains(&k.id().to_string()), "{e}");
    // Another key.
    let e = open(&io, &info.path, &ring(&other)).unwrap_err();
    assert_missing_key(&e, &info.path, k.id(), &[other.id()]);
    // Salvage refuses too: it must not report a run it cannot read as lost.
    let e = salvage_run(&io, &info.path, &ring(&other)).unwrap_err();
    assert_missing_key(&e, &info.path, k.id(), &[other.id()]);
    // The key as an older one of the ring (mid-rotation) opens it.
    let rotated = Keyring::new(Some(other.clone()), vec![k.clone()]);
    let run = open(&io, &info.path, &rotated).unwrap();
    assert_eq!(run.key_id(), Some(k.id()));
    assert_eq!(run.verify().unwrap(), model.len() as u64);
    let s = salvage_run(&io, &info.path, &rotated).unwrap();
    assert_eq!(
        as_model(&s.entries),
        model_range(&model, &Bound::Unbounded, &Bound::Unbounded, false)
    );
}

#[test]
fn a_run_in_clear_opens_with_any_keyring() {
    let (_, io) = sim_io();
    let model = mixed_model(&mut Rng(3), 50);
    let info = write_model(&io, Path::new(DIR), 90, &model, &small_blocks());
    for keyring in [Keyring::default(), ring(&key(1))] {
        let run = open(&io, &info.path, &keyring).unwrap();
        assert_eq!(run.key_id(), None);
        assert_eq!(run.verify().unwrap(), model.len() as u64);
    }
}

#[test]
fn the_header_and_footer_flags_must_agree_and_be_known() {
    let (disk, io) = sim_io();
    let k = key(31);
    let keyring = ring(&k);
    let (_, info) = small_encrypted_run(&io, &k);
    let bytes = disk.read_file(&info.path).unwrap();
    let footer_flags = bytes.len() - FOOTER_BYTES + FOOTER_FLAGS_OFFSET;
    // The footer says in clear, the header encrypted.
    let mut cleared = bytes.clone();
    cleared[footer_flags] = 0;
    reseal_header_and_footer(&mut cleared);
    io.write_atomic(&info.path, &cleared).unwrap();
    let e = open(&io, &info.path, &keyring).unwrap_err();
    assert_corruption_of(&e, &info.path);
    assert!(
        e.to_string().contains("footer says the run is in clear"),
        "{e}"
    );
    // A flag no build defines.
    let mut unknown = bytes.clone();
    unknown[HEADER_FLAGS_OFFSET] |= 0x02;
    reseal_header_and_footer(&mut unknown);
    io.write_atomic(&info.path, &unknown).unwrap();
    let e = open(&io, &info.path, &keyring).unwrap_err();
    assert!(e.to_string().contains("unknown header flags 0x3"), "{e}");
    // A run in clear whose footer claims encryption.
    let model = mixed_model(&mut Rng(4), 30);
    let clear = write_model(&io, Path::new(DIR), 91, &model, &small_blocks());
    let mut claimed = disk.read_file(&clear.path).unwrap();
    let at = claimed.len() - FOOTER_BYTES + FOOTER_FLAGS_OFFSET;
    claimed[at] = RUN_FLAG_ENCRYPTED as u8;
    reseal_header_and_footer(&mut claimed);
    io.write_atomic(&clear.path, &claimed).unwrap();
    let e = open(&io, &clear.path, &keyring).unwrap_err();
    assert!(
        e.to_string().contains("footer says the run is encrypted"),
        "{e}"
    );
}

#[test]
fn each_run_file_draws_its_own_salt() {
    let (disk, io) = sim_io();
    let k = key(41);
    let model = mixed_model(&mut Rng(5), 100);
    let options = encrypted(&k, RunWriterOptions::default());
    let a = write_model(&io, Path::new(DIR), 100, &model, &options);
    let a_bytes = disk.read_file(&a.path).unwrap();
    // The same run rewritten (same id, same entries, same key).
    let b = write_model(&io, Path::new(DIR), 100, &model, &options);
    let b_bytes = disk.read_file(&b.path).unwrap();
    assert_eq!(a_bytes.len(), b_bytes.len());
    assert_eq!(a_bytes[..KEY_BLOCK_OFFSET], b_bytes[..KEY_BLOCK_OFFSET]);
    assert_ne!(
        a_bytes[KEY_BLOCK_OFFSET + 8..KEY_BLOCK_OFFSET + 40],
        b_bytes[KEY_BLOCK_OFFSET + 8..KEY_BLOCK_OFFSET + 40],
        "salts differ"
    );
    let differing = a_bytes[ENCRYPTED_DATA_OFFSET..]
        .iter()
        .zip(&b_bytes[ENCRYPTED_DATA_OFFSET..])
        .filter(|(x, y)| x != y)
        .count();
    assert!(differing > a_bytes.len() / 2, "{differing} bytes differ");
}

fn salvaged_with(
    io: &Io,
    path: &Path,
    bytes: &[u8],
    keyring: &Keyring,
) -> Result<RunSalvage, Error> {
    io.write_atomic(path, bytes).unwrap();
    salvage_run(io, path, keyring)
}

#[test]
fn salvage_of_an_encrypted_run_keeps_every_other_block_and_names_the_lost_one() {
    let (disk, io) = sim_io();
    let k = key(51);
    let keyring = ring(&k);
    let model = mixed_model(&mut Rng(21), 300);
    let info = write_model(
        &io,
        Path::new(DIR),
        30,
        &model,
        &encrypted(&k, small_blocks()),
    );
    let bytes = disk.read_file(&info.path).unwrap();
    let whole = salvaged_with(&io, &info.path, &bytes, &keyring).unwrap();
    assert_eq!(
        as_model(&whole.entries),
        model_range(&model, &Bound::Unbounded, &Bound::Unbounded, false)
    );
    assert!(whole.lost.is_empty());
    assert_eq!(whole.node, Some(NodeId(77)));

    let (offset, len, first, last, count) = block_range_with(&io, &info.path, 3, &keyring);
    let expected: Vec<(Vec<u8>, crate::crdt::KeyState)> = model
        .iter()
        .filter(|(k, _)| **k < first || **k > last)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut damaged = bytes.clone();
    damaged[offset + len / 2] ^= 0x20;
    let s = salvaged_with(&io, &info.path, &damaged, &keyring).unwrap();
    assert_eq!(as_model(&s.entries), expected);
    assert_eq!(s.lost.len(), 1);
    let lost = &s.lost[0];
    assert_eq!(
        (lost.offset_bytes, lost.len_bytes, lost.entries),
        (offset as u64, len as u64, Some(count))
    );
    assert_eq!(
        (lost.first_key.as_ref(), lost.last_key.as_ref()),
        (Some(&first), Some(&last))
    );

    // With the index, then the footer and the header, damaged as well, the
    // blocks are found by walking the file and decrypted where they lie.
    let footer_at = bytes.len() - FOOTER_BYTES;
    let (footer, _) = format::decode_footer(&bytes[footer_at..]).unwrap();
    let mut more = damaged.clone();
    more[footer.index_offset as usize + 3] ^= 0x01;
    for also in ["index", "footer", "header"] {
        match also {
            "footer" => more[footer_at + 2] ^= 0x01,
            "header" => more[HEADER_BYTES - 1] ^= 0x01,
            _ => {}
        }
        let s = salvaged_with(&io, &info.path, &more, &keyring).unwrap();
        assert_eq!(as_model(&s.entries), expected, "{also} damaged");
        assert_eq!(s.lost.len(), 1, "{also}: {:?}", s.lost);
        assert_eq!(
            (s.lost[0].offset_bytes, s.lost[0].len_bytes),
            (offset as u64, len as u64)
        );
    }

    // A block moved over another of its size checks out by its CRC but not
    // by its tag: it is lost, named, and nothing wrong is kept.
    io.write_atomic(&info.path, &bytes).unwrap();
    let blocks: Vec<_> = (0..block_count(&io, &info.path, &keyring))
        .map(|i| block_range_with(&io, &info.path, i, &keyring))
        .collect();
    let (from, from_len, to, to_first, to_last) = blocks
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            let b = blocks.iter().skip(i + 1).find(|b| b.1 == a.1)?;
            Some((a.0, a.1, b.0, b.2.clone(), b.3.clone()))
        })
        .expect("two blocks of one size");
    let mut moved = bytes.clone();
    moved.copy_within(from..from + from_len, to);
    let s = salvaged_with(&io, &info.path, &moved, &keyring).unwrap();
    assert_eq!(s.lost.len(), 1, "{:?}", s.lost);
    assert_eq!(s.lost[0].offset_bytes, to as u64);
    assert!(
        s.lost[0].reason.contains("authentication failed"),
        "{:?}",
        s.lost
    );
    assert_eq!(
        as_model(&s.entries),
        model
            .iter()
            .filter(|(k, _)| **k < to_first || **k > to_last)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    );
}

fn block_count(io: &Io, path: &Path, keyring: &Keyring) -> usize {
    Run::open(io, path, BlockCache::new(0), keyring)
        .unwrap()
        .index()
        .len()
}

#[test]
fn salvage_of_an_encrypted_run_with_a_damaged_key_block_says_it_cannot_decrypt() {
    let (disk, io) = sim_io();
    let k = key(61);
    let keyring = ring(&k);
    let (model, info) = small_encrypted_run(&io, &k);
    let bytes = disk.read_file(&info.path).unwrap();
    for at in KEY_BLOCK_OFFSET..ENCRYPTED_DATA_OFFSET {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        let e = salvaged_with(&io, &info.path, &damaged, &keyring).unwrap_err();
        assert_corruption_of(&e, &info.path);
        assert!(e.to_string().contains("cannot be decrypted"), "{e}");
    }
    // Anywhere else: never a panic, never a wrong value, and every entry
    // accounted for whenever the index named what was lost.
    for at in (0..bytes.len()).filter(|at| !(KEY_BLOCK_OFFSET..ENCRYPTED_DATA_OFFSET).contains(at))
    {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x41;
        let s = salvaged_with(&io, &info.path, &damaged, &keyring)
            .unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        for (key, v) in &s.entries {
            assert_eq!(model.get(&key[..]), Some(v), "flip at {at}");
        }
        if s.lost.iter().all(|l| l.entries.is_some()) {
            let lost: u64 = s.lost.iter().filter_map(|l| l.entries).sum();
            assert_eq!(
                s.entries.len() as u64 + lost,
                model.len() as u64,
                "flip at {at}"
            );
        }
    }
    for len in (0..bytes.len()).step_by(7) {
        if let Ok(s) = salvaged_with(&io, &info.path, &bytes[..len], &keyring) {
            assert!(s.entries.len() <= model.len());
        }
    }
}

#[test]
fn an_encrypted_run_is_larger_by_its_key_block_and_a_tag_a_frame() {
    let (disk, io) = sim_io();
    let k = key(71);
    let model = mixed_model(&mut Rng(8), 400);
    let clear = write_model(&io, Path::new(DIR), 110, &model, &small_blocks());
    let sealed = write_model(
        &io,
        Path::new(DIR),
        111,
        &model,
        &encrypted(&k, small_blocks()),
    );
    let run = open(&io, &sealed.path, &ring(&k)).unwrap();
    let frames = run.index().len() as u64 + 4;
    let grown = sealed.size_bytes - clear.size_bytes;
    // Each frame's stored-length varint may grow by a byte; so may an
    // index entry's frame length.
    let min = KEY_BLOCK_BYTES as u64 + TAG_BYTES as u64 * frames;
    assert!(
        (min..=min + 3 * frames).contains(&grown),
        "{grown} bytes more for {frames} frames"
    );
    assert!(disk.read_file(&sealed.path).is_some());
}

fn scratch_dir(name: &str) -> PathBuf {
    Path::new("/prop").join(name)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn encrypted_runs_match_the_model(
        model in prop::collection::btree_map(arb_key(), arb_state(), 0..120),
        block_bytes_target in prop_oneof![Just(0usize), 1..600usize, Just(4096usize)],
        compression in any::<bool>(),
        key_byte in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let (_, io) = sim_io();
        let k = key(key_byte);
        let options = encrypted(&k, RunWriterOptions {
            block_bytes_target,
            compression,
            ..RunWriterOptions::default()
        });
        let info = write_model(&io, &scratch_dir("runs"), 9, &model, &options);
        let run = Run::open(&io, &info.path, BlockCache::new(64 * 1024), &ring(&k)).unwrap();
        prop_assert_eq!(run.key_id(), Some(k.id()));
        check_against_model(&run, &model, &mut Rng(seed));
        prop_assert!(Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).is_err());
    }
}

/// Seconds of each phase of one write-and-read-back.
#[derive(Clone, Copy, Debug, Default)]
struct Timings {
    write: f64,
    get: f64,
    scan: f64,
    uncached: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Writes `entries` as a run (with `key`, if given), then reads it back:
/// a get of every key in a shuffled order (through a cache of 8 MiB, a
/// small part of the run), a full scan, a full uncached scan.
fn time_one(
    dir: &Path,
    id: u64,
    entries: &[(Vec<u8>, crate::crdt::KeyState)],
    order: &[usize],
    key: Option<&EncryptionKey>,
) -> (Timings, u64) {
    use std::time::Instant;
    let io = Io::new(None);
    let options = RunWriterOptions {
        expected_entries: Some(entries.len() as u64),
        key: key.map(|k| Arc::new(k.clone())),
        ..RunWriterOptions::default()
    };
    let keyring = key.map_or_else(Keyring::default, ring);
    let t = Instant::now();
    let mut writer = RunWriter::create(&io, dir, id, NodeId(1), &options).unwrap();
    for (k, state) in entries {
        writer.add(k, state).unwrap();
    }
    let info = writer.finish().unwrap();
    let write = t.elapsed().as_secs_f64();
    let run = Run::open(&io, &info.path, BlockCache::new(8 << 20), &keyring).unwrap();
    let t = Instant::now();
    for &i in order {
        let (k, _) = &entries[i];
        assert!(run.get(k).unwrap().is_some());
    }
    let get = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let scanned = run
        .iter(Bound::Unbounded, Bound::Unbounded, false)
        .map(Result::unwrap)
        .count();
    let scan = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let uncached = run
        .iter_uncached(Bound::Unbounded, Bound::Unbounded, false)
        .map(Result::unwrap)
        .count();
    let uncached_s = t.elapsed().as_secs_f64();
    assert_eq!((scanned, uncached), (entries.len(), entries.len()));
    drop(run);
    std::fs::remove_file(&info.path).unwrap();
    let timings = Timings {
        write,
        get,
        scan,
        uncached: uncached_s,
    };
    (timings, info.size_bytes)
}

/// Not a check: the cost of encryption, printed (medians of interleaved
/// rounds, and the ratio encrypted / in clear). Run by hand in a release
/// build:
///
/// `cargo test --release --lib run::tests_crypto::measure_the_cost_of_encryption -- --ignored --nocapture`
///
/// `MERGEKV_RUN_BENCH_KEYS` (default 1,000,000) keys of 17 bytes with
/// 100-byte random values; `MERGEKV_BENCH_RUNS` (default 3) rounds.
#[test]
#[ignore = "a measurement, run by hand in a release build"]
fn measure_the_cost_of_encryption() {
    let keys: usize = env_or("MERGEKV_RUN_BENCH_KEYS", 1_000_000);
    let rounds: usize = env_or("MERGEKV_BENCH_RUNS", 3);
    let mut rng = Rng(seed());
    let mut model = Model::new();
    while model.len() < keys {
        let mut key = vec![0u8];
        key.extend(rng.bytes(16));
        let i = model.len() as u64;
        let at = stamp(BASE_MS + i / 20, (i % 20) as u32, 1);
        model.insert(key, put(&rng.bytes(100), at));
    }
    let entries: Vec<_> = model.into_iter().collect();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let k = key(0x42);
    let dir = tempfile::tempdir().unwrap();
    let mut clear = Vec::new();
    let mut sealed = Vec::new();
    let mut sizes = (0, 0);
    for round in 0..rounds {
        // Interleaved, and each variant first every other round.
        for encrypt in [round % 2 == 1, round % 2 == 0] {
            let id = (2 * round + usize::from(encrypt)) as u64;
            let (t, size) = time_one(dir.path(), id, &entries, &order, encrypt.then_some(&k));
            println!("round {round} encrypted {encrypt}: {t:?}");
            if encrypt {
                sealed.push(t);
                sizes.1 = size;
            } else {
                clear.push(t);
                sizes.0 = size;
            }
        }
    }
    println!("{keys} keys (17-byte keys, 100-byte random values), {rounds} rounds, medians:");
    println!("| phase | in clear (s) | encrypted (s) | encrypted / clear |");
    println!("|---|---|---|---|");
    type Phase = fn(&Timings) -> f64;
    let phases: [(&str, Phase); 4] = [
        ("write (incl. fsync and read-back check)", |t| t.write),
        ("get every key, shuffled, 8 MiB cache", |t| t.get),
        ("full scan", |t| t.scan),
        ("full scan, uncached", |t| t.uncached),
    ];
    for (name, phase) in phases {
        let a = median(clear.iter().map(phase).collect());
        let b = median(sealed.iter().map(phase).collect());
        println!("| {name} | {a:.3} | {b:.3} | {:.3} |", b / a);
    }
    println!(
        "size: in clear {} bytes ({:.2}/key), encrypted {} bytes ({:.2}/key)",
        sizes.0,
        sizes.0 as f64 / keys as f64,
        sizes.1,
        sizes.1 as f64 / keys as f64
    );
}
