//! Tests of the run format against a `BTreeMap` model: round trips, every
//! flipped byte and every truncation, injected I/O failures and power
//! cuts during a write, the filter's false-positive rate, the cache under
//! concurrent readers, salvage, and the size per key.
//!
//! Randomised tests print their seed; `PROPTEST_CASES` and
//! `MERGEKV_RUN_SEED` change the cases run.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use proptest::prelude::*;

use super::format::{FOOTER_BYTES, FOOTER_VERSION_OFFSET, HEADER_BYTES, key_hash};
use super::*;
use crate::clock::{NodeId, Stamp};
use crate::crdt::{Counter, KeyState, NodeTotals, Register};
use crate::crypto::Keyring;
use crate::error::Error;
use crate::io::{FaultInjector, Io, IoOp, SimDisk};

pub(super) type Model = BTreeMap<Vec<u8>, KeyState>;

/// The keyring of a database in clear.
pub(super) static NO_KEYS: LazyLock<Keyring> = LazyLock::new(Keyring::default);

pub(super) const DIR: &str = "/db/runs";
pub(super) const BASE_MS: u64 = 1_700_000_000_000;

/// A small deterministic generator (SplitMix64).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(super) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

pub(super) fn seed() -> u64 {
    let seed = std::env::var("MERGEKV_RUN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    println!("seed {seed} (MERGEKV_RUN_SEED to replay)");
    seed
}

pub(super) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

pub(super) fn sim_io() -> (SimDisk, Io) {
    let disk = SimDisk::new();
    let io = Io::new(Some(FaultInjector::with_disk(disk.clone())));
    (disk, io)
}

pub(super) fn stamp(physical_ms: u64, logical: u32, node: u64) -> Stamp {
    Stamp {
        physical_ms,
        logical,
        node: NodeId(node),
    }
}

pub(super) fn put(value: &[u8], at: Stamp) -> KeyState {
    KeyState {
        register: Some(Register {
            stamp: at,
            value: Some(Arc::from(value)),
            floor: Vec::new(),
        }),
        counter: None,
    }
}

fn tombstone(at: Stamp) -> KeyState {
    KeyState {
        register: Some(Register {
            stamp: at,
            value: None,
            floor: vec![(NodeId(2), 5, 1), (NodeId(7), 0, 3)],
        }),
        counter: None,
    }
}

fn counter(totals: &[(u64, u64, u64)], at: Stamp) -> KeyState {
    KeyState {
        register: None,
        counter: Some(Box::new(Counter {
            totals: totals
                .iter()
                .map(|&(node, p, n)| NodeTotals {
                    node: NodeId(node),
                    p,
                    n,
                    stamp: at,
                })
                .collect(),
        })),
    }
}

/// A mixed model: puts (some compressible, some larger than a block),
/// tombstones with floors, counters, and both at once; long keys too.
pub(super) fn mixed_model(rng: &mut Rng, n: usize) -> Model {
    let mut model = Model::new();
    while model.len() < n {
        let len = match rng.below(8) {
            0 => 47 + rng.below(40) as usize,
            _ => 1 + rng.below(12) as usize,
        };
        let key: Vec<u8> = (0..len)
            .map(|_| b"abcd\0\xff"[rng.below(6) as usize])
            .collect();
        let at = stamp(
            BASE_MS + rng.below(5000),
            rng.below(3) as u32,
            1 + rng.below(3),
        );
        let state = match rng.below(6) {
            0 => tombstone(at),
            1 => counter(&[(1, rng.next(), 2), (9, 3, rng.below(100))], at),
            2 => put(&vec![b'z'; 300 + rng.below(3000) as usize], at),
            3 => {
                let mut s = put(&rng.bytes(20), at);
                s.counter = counter(&[(3, 1, 1)], stamp(BASE_MS - 10, 0, 3)).counter;
                if let Some(reg) = s.register.as_mut() {
                    reg.floor = vec![(NodeId(3), 1, 1)];
                }
                s
            }
            _ => {
                let len = rng.below(120) as usize;
                put(&rng.bytes(len), at)
            }
        };
        model.insert(key, state);
    }
    model
}

pub(super) fn write_model(
    io: &Io,
    dir: &Path,
    id: u64,
    model: &Model,
    options: &RunWriterOptions,
) -> RunFileInfo {
    let mut writer = RunWriter::create(io, dir, id, NodeId(77), options).unwrap();
    for (key, state) in model {
        writer.add(key, state).unwrap();
    }
    assert_eq!(writer.entries(), model.len() as u64);
    writer.finish().unwrap()
}

pub(super) fn small_blocks() -> RunWriterOptions {
    RunWriterOptions {
        block_bytes_target: 256,
        ..RunWriterOptions::default()
    }
}

pub(super) fn collect(
    run: &Arc<Run>,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
) -> Vec<(Vec<u8>, KeyState)> {
    run.iter(lower, upper, reverse)
        .map(|item| {
            let (k, v) = item.unwrap();
            (k.to_vec(), v)
        })
        .collect()
}

pub(super) fn model_range(
    model: &Model,
    lower: &Bound<Vec<u8>>,
    upper: &Bound<Vec<u8>>,
    reverse: bool,
) -> Vec<(Vec<u8>, KeyState)> {
    let in_range = |k: &Vec<u8>| {
        let above = match lower {
            Bound::Included(l) => k >= l,
            Bound::Excluded(l) => k > l,
            Bound::Unbounded => true,
        };
        let below = match upper {
            Bound::Included(u) => k <= u,
            Bound::Excluded(u) => k < u,
            Bound::Unbounded => true,
        };
        above && below
    };
    let mut out: Vec<_> = model
        .iter()
        .filter(|(k, _)| in_range(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if reverse {
        out.reverse();
    }
    out
}

/// Every key, absent keys, and ranges against the model.
pub(super) fn check_against_model(run: &Arc<Run>, model: &Model, rng: &mut Rng) {
    assert_eq!(run.verify().unwrap(), model.len() as u64);
    assert_eq!(run.info().entries, model.len() as u64);
    assert_eq!(run.info().first_key.as_ref(), model.keys().next());
    assert_eq!(run.info().last_key.as_ref(), model.keys().next_back());
    for (key, state) in model {
        assert!(run.may_contain(key));
        assert_eq!(run.get(key).unwrap().as_ref(), Some(state), "get {key:?}");
        let mut absent = key.clone();
        absent.push(0x7f);
        assert_eq!(
            run.get(&absent).unwrap().is_some(),
            model.contains_key(&absent)
        );
    }
    assert_eq!(run.get(b"").unwrap().as_ref(), model.get(&b""[..]));
    let keys: Vec<&Vec<u8>> = model.keys().collect();
    let bound = |rng: &mut Rng| {
        let key = match keys.get(rng.below(keys.len() as u64 + 1) as usize) {
            Some(k) if rng.below(3) > 0 => (*k).clone(),
            _ => {
                let len = rng.below(4) as usize;
                rng.bytes(len)
            }
        };
        match rng.below(3) {
            0 => Bound::Unbounded,
            1 => Bound::Included(key),
            _ => Bound::Excluded(key),
        }
    };
    for reverse in [false, true] {
        let all = collect(run, Bound::Unbounded, Bound::Unbounded, reverse);
        assert_eq!(
            all,
            model_range(model, &Bound::Unbounded, &Bound::Unbounded, reverse)
        );
        for _ in 0..20 {
            let (lower, upper) = (bound(rng), bound(rng));
            assert_eq!(
                collect(run, lower.clone(), upper.clone(), reverse),
                model_range(model, &lower, &upper, reverse),
                "{lower:?}..{upper:?} reverse {reverse}"
            );
        }
    }
}

#[test]
fn a_mixed_run_round_trips() {
    let mut rng = Rng(seed());
    let (_, io) = sim_io();
    let model = mixed_model(&mut rng, 600);
    for options in [
        small_blocks(),
        RunWriterOptions::default(),
        RunWriterOptions {
            block_bytes_target: 0,
            compression: false,
            bloom_bits_per_key: 0,
            expected_entries: None,
            key: None,
        },
        RunWriterOptions {
            expected_entries: Some(model.len() as u64),
            ..RunWriterOptions::default()
        },
    ] {
        let info = write_model(&io, Path::new(DIR), 1, &model, &options);
        assert_eq!(
            info.path,
            Path::new(DIR).join("run-00000000000000000001.run")
        );
        assert_eq!(
            info.tombstones,
            model.values().filter(|s| is_tombstone(s)).count() as u64
        );
        let run = Run::open(&io, &info.path, BlockCache::new(1 << 20), &NO_KEYS).unwrap();
        assert_eq!(run.info(), &info);
        check_against_model(&run, &model, &mut rng);
        assert!(run.resident_bytes() > 0);
    }
}

/// The footer's tombstone, said independently: a register without a
/// value whose stamp no counter increment passes.
fn is_tombstone(s: &KeyState) -> bool {
    let counter_newest = s
        .counter
        .as_ref()
        .and_then(|c| c.totals.iter().map(|t| t.stamp).max());
    s.register
        .as_ref()
        .is_some_and(|r| r.value.is_none() && counter_newest.is_none_or(|c| c <= r.stamp))
}

#[test]
fn an_empty_run_opens_and_holds_nothing() {
    let (_, io) = sim_io();
    let info = write_model(
        &io,
        Path::new(DIR),
        3,
        &Model::new(),
        &RunWriterOptions::default(),
    );
    assert_eq!((info.entries, info.first_key.clone()), (0, None));
    let run = Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).unwrap();
    assert_eq!(run.verify().unwrap(), 0);
    assert_eq!(run.get(b"x").unwrap(), None);
    assert_eq!(
        collect(&run, Bound::Unbounded, Bound::Unbounded, true),
        vec![]
    );
}

#[test]
fn file_names_round_trip() {
    assert_eq!(run_file_name(42), "run-00000000000000000042.run");
    assert_eq!(
        parse_run_file_name(&run_file_name(u64::MAX)),
        Some(u64::MAX)
    );
    assert_eq!(
        parse_run_file_name("run-00000000000000000042.run.tmp"),
        None
    );
    assert_eq!(parse_run_file_name("run-42.run"), None);
}

fn arb_stamp() -> impl Strategy<Value = Stamp> {
    (
        prop_oneof![BASE_MS..BASE_MS + 10_000, Just(0u64), Just(u64::MAX)],
        prop_oneof![Just(0u32), 0..5u32, any::<u32>()],
        prop_oneof![1..4u64, Just(u64::MAX), Just(0u64)],
    )
        .prop_map(|(p, l, n)| stamp(p, l, n))
}

fn arb_node_list() -> impl Strategy<Value = Vec<(u64, u64, u64)>> {
    prop::collection::btree_map(
        prop_oneof![0..6u64, Just(u64::MAX)],
        (any::<u64>(), 0..1000u64),
        0..4,
    )
    .prop_map(|m| m.into_iter().map(|(node, (p, n))| (node, p, n)).collect())
}

pub(super) fn arb_state() -> impl Strategy<Value = KeyState> {
    let value = prop_oneof![
        Just(None),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Some),
        (300..2000usize, any::<u8>()).prop_map(|(n, b)| Some(vec![b; n])),
    ];
    let register = prop::option::of((arb_stamp(), value, arb_node_list())).prop_map(|r| {
        r.map(|(stamp, value, floor)| Register {
            stamp,
            value: value.map(Arc::from),
            floor: floor
                .into_iter()
                .map(|(n, p, m)| (NodeId(n), p, m))
                .collect(),
        })
    });
    let counter = prop::option::of((arb_node_list(), arb_stamp())).prop_map(|c| {
        c.filter(|(totals, _)| !totals.is_empty())
            .map(|(totals, at)| {
                Box::new(Counter {
                    totals: totals
                        .into_iter()
                        .map(|(node, p, n)| NodeTotals {
                            node: NodeId(node),
                            p,
                            n,
                            stamp: at,
                        })
                        .collect(),
                })
            })
    });
    (register, counter)
        .prop_map(|(register, counter)| KeyState { register, counter })
        .prop_filter("a state holds something", |s| {
            s.register.is_some() || s.counter.is_some()
        })
}

pub(super) fn arb_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(vec![0u8, 1, b'k', 0xfe, 0xff]), 0..8),
        prop::collection::vec(any::<u8>(), 40..90),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn runs_match_the_model(
        model in prop::collection::btree_map(arb_key(), arb_state(), 0..150),
        block_bytes_target in prop_oneof![Just(0usize), 1..600usize, Just(4096usize)],
        compression in any::<bool>(),
        bloom_bits_per_key in prop_oneof![Just(0u32), 1..16u32],
        seed in any::<u64>(),
    ) {
        let (_, io) = sim_io();
        // The filter built at the end, or sized up front (from an upper
        // bound: a merge knows no better) and filled as entries come.
        let expected_entries = (seed % 2 == 0).then_some(model.len() as u64 + seed % 100);
        let options = RunWriterOptions {
            block_bytes_target,
            compression,
            bloom_bits_per_key,
            expected_entries,
            key: None,
        };
        let info = write_model(&io, Path::new(DIR), 9, &model, &options);
        let tombstones = model.values().filter(|s| is_tombstone(s)).count() as u64;
        prop_assert_eq!(info.tombstones, tombstones);
        let run = Run::open(&io, &info.path, BlockCache::new(64 * 1024), &NO_KEYS).unwrap();
        check_against_model(&run, &model, &mut Rng(seed));
    }
}

#[test]
fn keys_out_of_order_and_states_no_reader_accepts_are_refused_and_change_nothing() {
    let (_, io) = sim_io();
    let mut writer = RunWriter::create(
        &io,
        Path::new(DIR),
        4,
        NodeId(1),
        &RunWriterOptions::default(),
    )
    .unwrap();
    let at = stamp(BASE_MS, 0, 1);
    writer.add(b"b", &put(b"1", at)).unwrap();
    for key in [&b"b"[..], b"a", b""] {
        assert!(matches!(
            writer.add(key, &put(b"x", at)),
            Err(Error::InvalidCommand { .. })
        ));
    }
    let mut unsorted = tombstone(at);
    unsorted.register.as_mut().unwrap().floor.reverse();
    let bad = [
        KeyState::default(),
        unsorted,
        KeyState {
            register: None,
            counter: Some(Box::default()),
        },
        counter(&[(5, 1, 1), (5, 2, 2)], at),
    ];
    for state in &bad {
        assert!(
            matches!(writer.add(b"c", state), Err(Error::InvalidCommand { .. })),
            "{state:?}"
        );
    }
    let long = vec![0u8; crate::record::limits::RECORD_KEY_BYTES_MAX + 1];
    assert!(matches!(
        writer.add(&long, &put(b"x", at)),
        Err(Error::LimitExceeded { .. })
    ));
    writer.add(b"c", &put(b"2", at)).unwrap();
    let info = writer.finish().unwrap();
    assert_eq!(info.entries, 2);
    let run = Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).unwrap();
    assert_eq!(run.get(b"c").unwrap(), Some(put(b"2", at)));
}

#[test]
fn options_out_of_range_are_refused() {
    let (_, io) = sim_io();
    let options = RunWriterOptions {
        bloom_bits_per_key: 65,
        ..RunWriterOptions::default()
    };
    assert!(matches!(
        RunWriter::create(&io, Path::new(DIR), 1, NodeId(1), &options),
        Err(Error::InvalidCommand { .. })
    ));
}

/// A small run of many blocks, some LZ4-compressed, some raw, with every
/// kind of state: what the damage tests flip and cut.
fn small_run(io: &Io) -> (Model, RunFileInfo) {
    let mut rng = Rng(7);
    let mut model = mixed_model(&mut rng, 40);
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
    let info = write_model(io, Path::new(DIR), 5, &model, &small_blocks());
    (model, info)
}

pub(super) fn assert_corruption_of(e: &Error, path: &Path) {
    match e {
        Error::Corruption { path: p, .. } => assert_eq!(p, path),
        other => panic!("expected corruption of {}, got {other:?}", path.display()),
    }
}

/// Opens `bytes` as a run and checks every read gives the model's answer
/// or a corruption naming the file; returns whether everything verified.
fn read_damaged(io: &Io, path: &Path, bytes: &[u8], model: &Model) -> bool {
    read_damaged_with(io, path, bytes, model, &NO_KEYS)
}

/// [`read_damaged`], opening the run with `keyring`.
pub(super) fn read_damaged_with(
    io: &Io,
    path: &Path,
    bytes: &[u8],
    model: &Model,
    keyring: &Keyring,
) -> bool {
    io.write_atomic(path, bytes).unwrap();
    let run = match Run::open(io, path, BlockCache::new(1 << 16), keyring) {
        Ok(run) => run,
        Err(e) => {
            assert_corruption_of(&e, path);
            return false;
        }
    };
    for (key, state) in model {
        match run.get(key) {
            Ok(found) => assert!(
                found.is_none() || found.as_ref() == Some(state),
                "wrong value for {key:?}"
            ),
            Err(e) => assert_corruption_of(&e, path),
        }
    }
    for reverse in [false, true] {
        let mut expected =
            model_range(model, &Bound::Unbounded, &Bound::Unbounded, reverse).into_iter();
        for item in run.iter(Bound::Unbounded, Bound::Unbounded, reverse) {
            match item {
                Ok((k, v)) => {
                    // Never a wrong value: what is yielded is in the model,
                    // in order (blocks may be skipped only by an error).
                    let hit = expected.find(|(mk, _)| mk.as_slice() == &*k);
                    assert_eq!(hit.map(|(_, mv)| mv), Some(v), "iterated {k:?}");
                }
                Err(e) => assert_corruption_of(&e, path),
            }
        }
    }
    match run.verify() {
        Ok(n) => {
            assert_eq!(n, model.len() as u64);
            true
        }
        Err(e) => {
            assert_corruption_of(&e, path);
            false
        }
    }
}

#[test]
fn every_flipped_byte_is_caught_and_never_read_as_a_wrong_value() {
    let (disk, io) = sim_io();
    let (model, info) = small_run(&io);
    let bytes = disk.read_file(&info.path).unwrap();
    let damaged = Path::new(DIR).join(run_file_name(5));
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0xFF] {
            let mut flipped = bytes.clone();
            flipped[at] ^= mask;
            assert!(
                !read_damaged(&io, &damaged, &flipped, &model),
                "flip {mask:#x} at {at} of {} went unnoticed",
                bytes.len()
            );
        }
    }
    assert!(
        read_damaged(&io, &damaged, &bytes, &model),
        "the whole file verifies"
    );
}

#[test]
fn every_truncation_is_caught() {
    let (disk, io) = sim_io();
    let (model, info) = small_run(&io);
    let bytes = disk.read_file(&info.path).unwrap();
    for len in 0..bytes.len() {
        assert!(
            !read_damaged(&io, &info.path, &bytes[..len], &model),
            "cut at {len}"
        );
    }
}

#[test]
fn a_wrong_version_or_id_is_a_corruption_that_says_so() {
    let (disk, io) = sim_io();
    let (_, info) = small_run(&io);
    let mut bytes = disk.read_file(&info.path).unwrap();
    let at = bytes.len() - FOOTER_BYTES + FOOTER_VERSION_OFFSET;
    bytes[at] = 9;
    io.write_atomic(&info.path, &bytes).unwrap();
    let e = Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).unwrap_err();
    assert!(
        e.to_string()
            .contains("run format version 9 is not supported"),
        "{e}"
    );

    let (_, info) = small_run(&io);
    let renamed = Path::new(DIR).join(run_file_name(6));
    io.rename(&info.path, &renamed).unwrap();
    let e = Run::open(&io, &renamed, BlockCache::new(0), &NO_KEYS).unwrap_err();
    assert_corruption_of(&e, &renamed);
    assert!(e.to_string().contains("file name run 6"), "{e}");
    let e = Run::open(
        &io,
        &Path::new(DIR).join("other.run"),
        BlockCache::new(0),
        &NO_KEYS,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Corruption { .. }), "{e}");
}

fn final_and_temp(disk: &SimDisk, id: u64) -> (bool, bool) {
    let path = Path::new(DIR).join(run_file_name(id));
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    (
        disk.read_file(&path).is_some(),
        disk.read_file(&tmp).is_some(),
    )
}

/// Writes a run of `model` through `io` (uncompressed, so it takes
/// several writes); the error if any step failed.
fn try_write(io: &Io, id: u64, model: &Model) -> Result<RunFileInfo, Error> {
    let options = RunWriterOptions {
        compression: false,
        ..small_blocks()
    };
    let mut writer = RunWriter::create(io, Path::new(DIR), id, NodeId(3), &options)?;
    for (key, state) in model {
        writer.add(key, state)?;
    }
    writer.finish()
}

#[test]
fn a_failure_at_any_step_of_a_write_leaves_no_run_file() {
    let model = mixed_model(&mut Rng(11), 1000);
    // Count each kind of operation in a clean write.
    let faults = FaultInjector::with_disk(SimDisk::new());
    let io = Io::new(Some(faults.clone()));
    try_write(&io, 1, &model).unwrap();
    let ops = [
        IoOp::Open,
        IoOp::Write,
        IoOp::Sync,
        IoOp::Rename,
        IoOp::Read,
    ];
    let counts: Vec<u64> = ops.iter().map(|&op| faults.count(op)).collect();
    assert!(counts[1] > 1, "the run takes several writes: {counts:?}");
    for (&op, &count) in ops.iter().zip(&counts) {
        for nth in 1..=count {
            let disk = SimDisk::new();
            let faults = FaultInjector::with_disk(disk.clone());
            faults.fail_nth(op, nth);
            let io = Io::new(Some(faults.clone()));
            let result = try_write(&io, 2, &model);
            assert_eq!(faults.injected(), 1, "{op:?} #{nth}");
            let e = result.expect_err("an injected failure is returned");
            assert!(matches!(e, Error::Io { .. }), "{op:?} #{nth}: {e:?}");
            let (final_exists, tmp_exists) = final_and_temp(&disk, 2);
            assert!(!final_exists, "{op:?} #{nth} left a final-named run");
            assert!(!tmp_exists, "{op:?} #{nth} left its temp file");
        }
    }
}

#[test]
fn a_power_cut_at_any_point_of_a_write_leaves_no_run_or_a_whole_one() {
    let model = mixed_model(&mut Rng(12), 300);
    let disk = SimDisk::new();
    let io = Io::new(Some(FaultInjector::with_disk(disk.clone())));
    disk.record_crash_points(true);
    let info = try_write(&io, 7, &model).unwrap();
    let mut points = disk.take_crash_points();
    disk.record_crash_points(false);
    let after = disk.crash_point_now("after finish returned");
    assert!(
        points.len() >= 3,
        "file, directory and parent fsyncs: {}",
        points.len()
    );
    points.push(after.clone());
    let mut whole = 0;
    for point in &points {
        for cut in point.cuts(seed(), 4) {
            let survivor = point.survivor(&cut);
            let io = Io::new(Some(FaultInjector::with_disk(survivor.clone())));
            if survivor.read_file(&info.path).is_none() {
                assert!(
                    point.index() != after.index(),
                    "finish returned, yet {cut} lost the run"
                );
                continue;
            }
            let run = Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS)
                .unwrap_or_else(|e| panic!("{} / {cut}: {e}", point.label()));
            assert_eq!(
                run.verify().unwrap(),
                model.len() as u64,
                "{} / {cut}",
                point.label()
            );
            whole += 1;
        }
    }
    assert!(whole > 0, "some cut keeps the finished run");
}

#[test]
fn the_filter_passes_under_two_percent_of_absent_keys_at_ten_bits() {
    let mut rng = Rng(seed());
    let present: Vec<Vec<u8>> = (0..100_000).map(|_| rng.bytes(16)).collect();
    let hashes: Vec<u64> = present.iter().map(|k| key_hash(k)).collect();
    let bloom = filter::Bloom::decode(&filter::Bloom::build(&hashes, 10)).unwrap();
    assert!(
        present.iter().all(|k| bloom.may_contain(k)),
        "no false negatives"
    );
    let trials = 100_000;
    let passed = (0..trials)
        .filter(|i| bloom.may_contain(format!("absent-{i}").as_bytes()))
        .count();
    let rate = passed as f64 / trials as f64;
    println!("false positives at 10 bits/key: {:.3} %", rate * 100.0);
    assert!(rate < 0.02, "{rate}");
    // Through a run, too.
    let (_, io) = sim_io();
    let model: Model = present
        .iter()
        .take(5_000)
        .map(|k| (k.clone(), put(b"v", stamp(BASE_MS, 0, 1))))
        .collect();
    let info = write_model(&io, Path::new(DIR), 8, &model, &RunWriterOptions::default());
    let run = Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).unwrap();
    let passed = (0..10_000)
        .filter(|i| run.may_contain(format!("no-{i}").as_bytes()))
        .count();
    assert!(passed < 200, "{passed} of 10,000 absent keys passed");
}

#[test]
fn lookups_of_filtered_keys_and_seeks_read_no_more_blocks_than_needed() {
    let mut rng = Rng(13);
    let (_, io) = sim_io();
    let model: Model = (0..5_000u32)
        .map(|i| {
            (
                format!("key-{i:06}").into_bytes(),
                put(&rng.bytes(50), stamp(BASE_MS, 0, 1)),
            )
        })
        .collect();
    let info = write_model(
        &io,
        Path::new(DIR),
        10,
        &model,
        &RunWriterOptions::default(),
    );
    let cache = BlockCache::new(0);
    let run = Run::open(&io, &info.path, Arc::clone(&cache), &NO_KEYS).unwrap();
    let filtered = (0..1000)
        .map(|i| format!("nope-{i}").into_bytes())
        .filter(|k| !run.may_contain(k))
        .collect::<Vec<_>>();
    for key in &filtered {
        assert_eq!(run.get(key).unwrap(), None);
    }
    assert_eq!(cache.stats().misses, 0, "a filtered key reads no block");
    // A seek near the end reads the last block or two, not every block.
    let got = collect(
        &run,
        Bound::Included(b"key-004990".to_vec()),
        Bound::Unbounded,
        false,
    );
    assert_eq!(got.len(), 10);
    assert!(cache.stats().misses <= 2, "{:?}", cache.stats());
    let got = collect(
        &run,
        Bound::Unbounded,
        Bound::Excluded(b"key-000010".to_vec()),
        true,
    );
    assert_eq!(got.len(), 10);
    assert!(cache.stats().misses <= 4, "{:?}", cache.stats());
}

#[test]
fn the_cache_keeps_its_budget_under_concurrent_readers() {
    let mut rng = Rng(seed());
    let (_, io) = sim_io();
    let model: Model = (0..4_000u32)
        .map(|i| {
            (
                format!("k{i:05}").into_bytes(),
                put(&rng.bytes(100), stamp(BASE_MS, i, 1)),
            )
        })
        .collect();
    let info = write_model(
        &io,
        Path::new(DIR),
        11,
        &model,
        &RunWriterOptions::default(),
    );
    let capacity = 16 * 4 * (4096 + 1024);
    let cache = BlockCache::new(capacity);
    let run = Run::open(&io, &info.path, Arc::clone(&cache), &NO_KEYS).unwrap();
    let model = Arc::new(model);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (run, model, cache) = (Arc::clone(&run), Arc::clone(&model), Arc::clone(&cache));
            std::thread::spawn(move || {
                let mut rng = Rng(t + 1);
                let keys: Vec<&Vec<u8>> = model.keys().collect();
                for i in 0..3_000 {
                    // A hot set most of the time, anything now and then.
                    let pick = if rng.below(4) > 0 {
                        rng.below(200)
                    } else {
                        rng.below(keys.len() as u64)
                    };
                    let key = keys[pick as usize];
                    assert_eq!(run.get(key).unwrap().as_ref(), model.get(key));
                    if i % 100 == 0 {
                        let stats = cache.stats();
                        assert!(stats.resident_bytes <= stats.capacity_bytes, "{stats:?}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = cache.stats();
    println!("{stats:?}");
    assert!(stats.resident_bytes <= capacity);
    assert!(
        stats.evictions > 0 && stats.hits > stats.misses,
        "{stats:?}"
    );
    drop(run);
    assert_eq!(
        cache.stats().resident_bytes,
        0,
        "a dropped run's blocks leave the cache"
    );
}

#[test]
fn two_runs_sharing_a_cache_never_see_each_others_blocks() {
    let (_, io) = sim_io();
    let cache = BlockCache::new(1 << 20);
    let a: Model = [(b"k".to_vec(), put(b"a", stamp(BASE_MS, 0, 1)))].into();
    let b: Model = [(b"k".to_vec(), put(b"b", stamp(BASE_MS, 0, 1)))].into();
    let ia = write_model(&io, Path::new(DIR), 20, &a, &RunWriterOptions::default());
    let ib = write_model(
        &io,
        Path::new("/other/runs"),
        20,
        &b,
        &RunWriterOptions::default(),
    );
    let ra = Run::open(&io, &ia.path, Arc::clone(&cache), &NO_KEYS).unwrap();
    let rb = Run::open(&io, &ib.path, Arc::clone(&cache), &NO_KEYS).unwrap();
    for _ in 0..3 {
        assert_eq!(ra.get(b"k").unwrap().as_ref(), a.get(&b"k"[..]));
        assert_eq!(rb.get(b"k").unwrap().as_ref(), b.get(&b"k"[..]));
    }
}

/// The byte range of block `i` (by the index of the file at `path`).
fn block_range(io: &Io, path: &Path, i: usize) -> (usize, usize, Vec<u8>, Vec<u8>, u64) {
    block_range_with(io, path, i, &NO_KEYS)
}

/// [`block_range`] of a run opened with `keyring`.
pub(super) fn block_range_with(
    io: &Io,
    path: &Path,
    i: usize,
    keyring: &Keyring,
) -> (usize, usize, Vec<u8>, Vec<u8>, u64) {
    let run = Run::open(io, path, BlockCache::new(0), keyring).unwrap();
    let meta = *run.index().block(i).unwrap();
    (
        meta.offset as usize,
        meta.frame_len as usize,
        run.index().first_key(&meta).to_vec(),
        run.index().last_key(&meta).to_vec(),
        meta.entries,
    )
}

pub(super) fn salvaged(io: &Io, path: &Path, bytes: &[u8]) -> RunSalvage {
    io.write_atomic(path, bytes).unwrap();
    salvage_run(io, path, &NO_KEYS).unwrap()
}

pub(super) fn as_model(
    entries: &[(crate::record::StoreKey, KeyState)],
) -> Vec<(Vec<u8>, KeyState)> {
    entries
        .iter()
        .map(|(k, v)| (k.to_vec(), v.clone()))
        .collect()
}

#[test]
fn salvage_keeps_every_other_block_and_names_the_lost_one() {
    let (disk, io) = sim_io();
    let model = mixed_model(&mut Rng(21), 300);
    let info = write_model(&io, Path::new(DIR), 30, &model, &small_blocks());
    let bytes = disk.read_file(&info.path).unwrap();
    let whole = salvaged(&io, &info.path, &bytes);
    assert_eq!(
        as_model(&whole.entries),
        model_range(&model, &Bound::Unbounded, &Bound::Unbounded, false)
    );
    assert!(whole.lost.is_empty());
    assert_eq!(whole.node, Some(NodeId(77)));

    let (offset, len, first, last, count) = block_range(&io, &info.path, 3);
    let expected: Vec<(Vec<u8>, KeyState)> = model
        .iter()
        .filter(|(k, _)| **k < first || **k > last)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut damaged = bytes.clone();
    damaged[offset + len / 2] ^= 0x20;
    let s = salvaged(&io, &info.path, &damaged);
    assert_eq!(as_model(&s.entries), expected);
    assert_eq!(s.lost.len(), 1);
    let lost = &s.lost[0];
    assert_eq!(
        (lost.offset_bytes, lost.len_bytes),
        (offset as u64, len as u64)
    );
    assert_eq!(
        (lost.first_key.as_ref(), lost.last_key.as_ref()),
        (Some(&first), Some(&last))
    );
    assert_eq!(lost.entries, Some(count));
    assert_eq!(
        model.range(first.clone()..=last.clone()).count() as u64,
        count,
        "the index names exactly the keys lost"
    );

    // With the index (and then the footer) damaged as well, the blocks are
    // found by walking the file; the lost span is named by its bytes.
    io.write_atomic(&info.path, &damaged).unwrap();
    let run = Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).unwrap();
    assert_corruption_of(&run.verify().unwrap_err(), &info.path);
    drop(run);
    let footer_at = bytes.len() - FOOTER_BYTES;
    let (footer, _) = format::decode_footer(&bytes[footer_at..]).unwrap();
    let mut both = damaged.clone();
    both[footer.index_offset as usize + 3] ^= 0x01;
    for also_footer in [false, true] {
        if also_footer {
            both[footer_at + 2] ^= 0x01;
        }
        let s = salvaged(&io, &info.path, &both);
        assert_eq!(
            as_model(&s.entries),
            expected,
            "footer damaged: {also_footer}"
        );
        assert_eq!(s.lost.len(), 1, "{:?}", s.lost);
        assert_eq!(s.lost[0].offset_bytes, offset as u64);
        assert_eq!(s.lost[0].len_bytes, len as u64);
        assert_eq!(s.node, Some(NodeId(77)));
    }
    // A damaged node table costs nothing: its copy is used.
    let mut nodes = bytes.clone();
    nodes[footer.nodes_offset as usize + 6] ^= 0x01;
    let s = salvaged(&io, &info.path, &nodes);
    assert_eq!(s.entries.len(), model.len());
    assert!(s.lost.is_empty());
}

#[test]
fn salvage_never_panics_on_damage_anywhere() {
    let (disk, io) = sim_io();
    let (model, info) = small_run(&io);
    let bytes = disk.read_file(&info.path).unwrap();
    for at in (0..bytes.len()).step_by(3) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x41;
        let s = salvaged(&io, &info.path, &damaged);
        for (k, v) in &s.entries {
            assert_eq!(
                model.get(&k[..]),
                Some(v),
                "salvaged a wrong value for {k:?} (flip at {at})"
            );
        }
        let lost: u64 = s.lost.iter().filter_map(|l| l.entries).sum();
        if s.lost.iter().all(|l| l.entries.is_some()) {
            assert_eq!(
                s.entries.len() as u64 + lost,
                model.len() as u64,
                "flip at {at}"
            );
        }
    }
    for len in (0..bytes.len()).step_by(7) {
        let s = salvaged(&io, &info.path, &bytes[..len]);
        assert!(s.entries.len() <= model.len());
    }
}

#[test]
fn seventeen_byte_keys_and_hundred_byte_values_cost_at_most_126_bytes_each() {
    const KEYS: usize = 100_000;
    let mut rng = Rng(seed());
    // An HLC writing 100k keys over about 5 s: 20 writes per millisecond,
    // so the logical counter counts within each.
    let mut model = Model::new();
    for i in 0..KEYS {
        let mut key = vec![0u8];
        key.extend(rng.bytes(16));
        let at = stamp(
            BASE_MS + (i / 20) as u64,
            (i % 20) as u32,
            0x1234_5678_9abc_def0,
        );
        model.insert(key, put(&rng.bytes(100), at));
    }
    let dir = tempfile::tempdir().unwrap();
    let io = Io::new(None);
    let info = write_model(&io, dir.path(), 1, &model, &RunWriterOptions::default());
    let per_key = info.size_bytes as f64 / model.len() as f64;
    println!(
        "{} entries, {} bytes: {per_key:.2} bytes/key (17-byte keys, 100-byte values)",
        model.len(),
        info.size_bytes
    );
    assert_eq!(
        info.size_bytes,
        std::fs::metadata(&info.path).unwrap().len()
    );
    assert!(per_key <= 126.0, "{per_key:.2} bytes/key");
    let run = Run::open(&io, &info.path, BlockCache::new(1 << 20), &NO_KEYS).unwrap();
    let mut sample = Rng(1);
    let keys: Vec<&Vec<u8>> = model.keys().collect();
    for _ in 0..1000 {
        let key = keys[sample.below(keys.len() as u64) as usize];
        assert_eq!(run.get(key).unwrap().as_ref(), model.get(key));
    }
}

#[test]
fn a_header_past_its_end_is_checked() {
    // The header is read at open: a damaged header is refused even though
    // no lookup needs it.
    let (disk, io) = sim_io();
    let (_, info) = small_run(&io);
    let mut bytes = disk.read_file(&info.path).unwrap();
    bytes[HEADER_BYTES - 1] ^= 1;
    io.write_atomic(&info.path, &bytes).unwrap();
    assert_corruption_of(
        &Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).unwrap_err(),
        &info.path,
    );
}

#[test]
fn blocks_too_short_for_their_restart_array_are_errors() {
    // Found by the fuzzer: a block of a base time and two more bytes.
    for raw in [
        &[][..],
        &[5],
        &[5, 1, 0],
        &[5, 1, 0, 0],
        &[5, 0, 0, 0, 0],
        &[5, 1, 0, 0, 0],
    ] {
        for count in [0, 1, 16, 17] {
            assert!(
                block::BlockView::parse(raw, count).is_err(),
                "{raw:?} {count}"
            );
        }
        assert!(block::count_entries(raw, &[NodeId(1)]).is_err(), "{raw:?}");
    }
}

#[test]
fn a_run_names_at_most_its_node_table_limit_of_nodes() {
    let (_, io) = sim_io();
    let options = RunWriterOptions {
        bloom_bits_per_key: 0,
        ..RunWriterOptions::default()
    };
    let mut writer = RunWriter::create(&io, Path::new(DIR), 40, NodeId(1), &options).unwrap();
    let limit = format::NODE_TABLE_ENTRIES_MAX as u64;
    for node in 0..limit {
        let key = format!("k{node:08}").into_bytes();
        writer
            .add(&key, &put(b"", stamp(BASE_MS, 0, node)))
            .unwrap();
    }
    let one_more = writer.add(b"l", &put(b"", stamp(BASE_MS, 0, limit)));
    assert!(
        matches!(one_more, Err(Error::InvalidCommand { .. })),
        "{one_more:?}"
    );
    writer.add(b"l", &put(b"", stamp(BASE_MS, 0, 7))).unwrap();
    let info = writer.finish().unwrap();
    let run = Run::open(&io, &info.path, BlockCache::new(0), &NO_KEYS).unwrap();
    assert_eq!(run.verify().unwrap(), limit + 1);
    assert_eq!(run.get(b"l").unwrap(), Some(put(b"", stamp(BASE_MS, 0, 7))));
}

#[test]
fn runs_are_shared_across_threads_and_iterators_move_between_them() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<Run>();
    shared::<BlockCache>();
    sent::<RunIter>();
    sent::<RunWriter>();
}

#[test]
fn a_run_in_clear_is_byte_for_byte_what_it_was() {
    // Pins the format of a run written without encryption: a change here
    // makes every run written so far unreadable. (The database fixture in
    // `tests/fixtures/` holds no run.)
    let (disk, io) = sim_io();
    let (_, info) = small_run(&io);
    let bytes = disk.read_file(&info.path).unwrap();
    let digest = blake3::hash(&bytes);
    assert_eq!(
        (bytes.len(), digest.to_hex().to_string()),
        (
            2943,
            "85854c3670bc7ef6c0a9780cdaafe74f16101ed026e35147ea7a309a5a8c01da".to_string()
        ),
        "the bytes of a run in clear changed"
    );
}
