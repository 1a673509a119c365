//! Replays every input kept for the fuzz targets (`fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/`) through the checks the targets run,
//! on the stable toolchain, in plain `cargo test`: no kept input may make
//! a decoder panic or break a round trip. The checks are the fuzz crate's
//! own file, included here by path, so both run the same code.
//!
//! The seeds (`fuzz/corpus/<target>/seed-*`) are real encoded values,
//! written by `write_seed_corpus` (ignored; run it after a format change):
//! `cargo test --test fuzz_regressions -- --ignored write_seed_corpus`.

mod common;

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "auth")]
use mergekv::auth::{AuthOptions, AuthService, MasterKey, PasswordParams, Scope, Scopes};
use mergekv::replication::{Cursor, ErrorCode, Message, PROTOCOL_VERSION, StartMode};
use mergekv::{Batch, Db, ManualClock, Options, SyncCursor, SyncMode};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir` (none if it does not exist), sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn is_seed(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
}

/// Replays what git keeps (the seeds and every kept crash input), so the
/// test is the same on every machine. A corpus grown by a local `fuzz/run`
/// is replayed too when `MERGEKV_FUZZ_REPLAY_CORPUS=1`.
#[test]
fn every_kept_input_passes_its_target_without_panicking() {
    let whole_corpus = std::env::var("MERGEKV_FUZZ_REPLAY_CORPUS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        for kind in ["corpus", "regressions"] {
            let files = files_in(&fuzz_dir().join(kind).join(target));
            let kept = files
                .into_iter()
                .filter(|f| kind == "regressions" || whole_corpus || is_seed(f));
            for file in kept {
                let bytes = std::fs::read(&file).unwrap();
                if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                    failures.push(file.display().to_string());
                }
                replayed += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} kept inputs failed their target:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_seeds_and_every_seed_decodes() {
    for (target, check) in checks::TARGETS {
        let seeds: Vec<PathBuf> = files_in(&fuzz_dir().join("corpus").join(target))
            .into_iter()
            .filter(|p| is_seed(p))
            .collect();
        assert!(!seeds.is_empty(), "no seeds for target {target}");
        for seed in seeds {
            let bytes = std::fs::read(&seed).unwrap();
            assert!(check(&bytes), "seed {} no longer decodes", seed.display());
        }
    }
}

#[test]
fn every_check_has_a_fuzz_target_and_every_target_a_check() {
    let mut on_disk: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = checks::TARGETS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    listed.extend(
        checks::TARGETS_NOT_BUILT
            .iter()
            .map(|name| name.to_string()),
    );
    listed.sort();
    assert_eq!(on_disk, listed);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &listed {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
    }
}

#[test]
fn sealing_restores_a_damaged_checksum_so_the_fuzzer_gets_past_it() {
    // The checks reach as deep as their sealing: a seed whose checksum or
    // digest is damaged fails as it is, and is whole again once sealed.
    type Seal = fn(&mut [u8]);
    let cases: [(&str, usize, Seal); 7] = [
        ("wal_frame", 24, checks::seal_wal_frames),
        ("wal_segment", 28, checks::seal_wal_segment),
        ("snapshot", usize::MAX, checks::seal_snapshot),
        ("changeset", usize::MAX, checks::seal_changeset),
        ("repl_frame", 12, checks::seal_repl_frames),
        ("meta", usize::MAX, checks::seal_meta), // the last byte: its CRC
        ("run_file", 28, checks::seal_run_file), // the header CRC
    ];
    for (target, at, seal) in cases {
        let check = checks::TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .unwrap()
            .1;
        for seed in files_in(&fuzz_dir().join("corpus").join(target))
            .into_iter()
            .filter(|p| is_seed(p))
        {
            let bytes = std::fs::read(&seed).unwrap();
            let mut damaged = bytes.clone();
            let at = at.min(damaged.len() - 1); // MAX: the last byte (a digest)
            damaged[at] ^= 1;
            assert!(
                !check(&damaged),
                "{}: damage at {at} went unnoticed",
                seed.display()
            );
            seal(&mut damaged);
            assert_eq!(damaged, bytes, "{}: sealing restores it", seed.display());
        }
    }
}

/// Writes the seed corpus from real encoded values: a database's WAL
/// segments, frames, snapshot, META and change sets, replication messages
/// carrying them, and an API token. Replaces the old seeds.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a format change"]
fn write_seed_corpus() {
    let seeds = SeedSource::new();
    let mut written = 0;
    for (target, seeds) in seeds.all() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for old in files_in(&dir).into_iter().filter(|p| is_seed(p)) {
            std::fs::remove_file(old).unwrap();
        }
        for (name, bytes) in seeds {
            let check = checks::TARGETS
                .iter()
                .find(|(t, _)| *t == target)
                .unwrap()
                .1;
            assert!(check(&bytes), "seed {target}/{name} does not decode");
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", fuzz_dir().display());
}

type Seeds = Vec<(String, Vec<u8>)>;

/// A small database, closed, and what it left on disk.
struct SeedSource {
    _dir: tempfile::TempDir,
    segments: Vec<Vec<u8>>,
    snapshot: Vec<u8>,
    meta: Vec<u8>,
    cursors: Vec<u8>,
    changesets: Seeds,
    token: String,
    key_id: String,
    node: u64,
}

impl SeedSource {
    fn new() -> SeedSource {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_with(
            dir.path(),
            Options::default()
                .with_sync_mode(SyncMode::Never)
                .with_segment_size_bytes_max(1024)
                .with_compaction_wal_bytes_min(u64::MAX)
                .with_wall_clock(Arc::new(ManualClock::new(1_700_000_000_000))),
        )
        .unwrap();
        write_every_record_shape(&db);
        db.set_cursor("peer", 3).unwrap();
        db.set_cursor("replica-00000000000000ab", 5).unwrap();
        // The log from seq 1 (written, if not synced: `Never`), before the
        // compaction removes it.
        let mut segments = read_segments(dir.path());
        db.compact_now().unwrap();
        // Frames after the compaction, so a segment outlives it.
        write_every_record_shape(&db);
        // Compactions write runs now; a snapshot file is what a leader
        // ships a follower (and what a directory of the older format
        // holds), written by the same writer.
        let (_, snapshot) = common::shipped_snapshot(&db);
        let (token, key_id) = api_token(&db);
        let changesets = changesets(&db);
        let node = db.node_id().0;
        db.close().unwrap();
        segments.extend(read_segments(dir.path()));
        segments.dedup();
        segments.truncate(4);
        let meta = std::fs::read(dir.path().join("META")).unwrap();
        let cursors = std::fs::read(dir.path().join("CURSORS")).unwrap();
        assert!(!segments.is_empty(), "the seed database kept no segment");
        SeedSource {
            _dir: dir,
            segments,
            snapshot,
            meta,
            cursors,
            changesets,
            token,
            key_id,
            node,
        }
    }

    /// Every frame of the kept segments, with its first sequence number.
    fn frames(&self) -> Vec<(u64, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for segment in &self.segments {
            let mut at = 32;
            while at + 28 <= segment.len() {
                let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
                let first_seq = u64::from_le_bytes(segment[at + 8..at + 16].try_into().unwrap());
                let ops = u32::from_le_bytes(segment[at + 16..at + 20].try_into().unwrap());
                out.push((first_seq, ops, segment[at..at + 28 + len].to_vec()));
                at += 28 + len;
            }
        }
        out
    }

    fn all(&self) -> Vec<(&'static str, Seeds)> {
        let frames = self.frames();
        let wal_frames = frames
            .iter()
            .take(8)
            .enumerate()
            .map(|(i, (_, _, f))| (format!("frame-{i}"), f.clone()))
            .collect();
        let segments = self
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("segment-{i}"), s.clone()))
            .collect();
        let messages = self.messages(&frames);
        let frame_seeds: Seeds = messages
            .iter()
            .map(|(name, m)| (name.clone(), m.to_frame_bytes().unwrap()))
            .collect();
        let message_seeds: Seeds = frame_seeds
            .iter()
            .map(|(name, bytes)| {
                let mut seed = vec![bytes[4]];
                seed.extend_from_slice(&bytes[16..]);
                (name.clone(), seed)
            })
            .collect();
        vec![
            ("wal_frame", wal_frames),
            ("wal_segment", segments),
            ("snapshot", vec![("snapshot".into(), self.snapshot.clone())]),
            ("changeset", self.changesets.clone()),
            ("encrypted", encrypted_seeds()),
            ("change_stream", stream_seeds()),
            ("repl_frame", frame_seeds),
            ("repl_message", message_seeds),
            ("repl_stream", self.streams(&messages)),
            (
                "api_token",
                vec![
                    ("token".into(), self.token.clone().into_bytes()),
                    ("key-id".into(), self.key_id.clone().into_bytes()),
                ],
            ),
            ("meta", vec![("meta".into(), self.meta.clone())]),
            ("cursors", vec![("cursors".into(), self.cursors.clone())]),
            ("salvage", vec![("snapshot".into(), self.snapshot.clone())]),
            ("run_file", run_file_seeds()),
        ]
    }

    /// One of each message, carrying real values: the token, WAL frames
    /// from sequence number 1, the snapshot's bytes.
    fn messages(&self, frames: &[(u64, u32, Vec<u8>)]) -> Vec<(String, Message)> {
        let (stream, epoch) = (self.node, 7);
        // The first frames, from seq 1, as a leader ships them.
        let shipped: Vec<_> = frames.iter().take_while(|(s, _, _)| *s < 8).collect();
        assert_eq!(shipped.first().map(|f| f.0), Some(1), "frames from seq 1");
        let last = shipped.last().unwrap();
        let batch = Message::Batch {
            stream,
            epoch,
            first_seq: 1,
            last_seq: last.0 + u64::from(last.1) - 1,
            frame_count: shipped.len() as u32,
            frames: shipped.iter().flat_map(|f| f.2.clone()).collect(),
        };
        let digest = *blake3::hash(&self.snapshot).as_bytes();
        vec![
            (
                "hello".into(),
                Message::Hello {
                    version: PROTOCOL_VERSION,
                    follower_id: 42,
                    token: self.token.clone(),
                    cursor: Cursor::default(),
                },
            ),
            (
                "welcome-catch-up".into(),
                Message::Welcome {
                    version: PROTOCOL_VERSION,
                    stream,
                    epoch,
                    leader_seq: 100,
                    mode: StartMode::CatchUp,
                    key_id: None,
                },
            ),
            (
                "welcome-snapshot".into(),
                Message::Welcome {
                    version: PROTOCOL_VERSION,
                    stream,
                    epoch,
                    leader_seq: 100,
                    mode: StartMode::Snapshot,
                    key_id: None,
                },
            ),
            (
                "snapshot-begin".into(),
                Message::SnapshotBegin {
                    stream,
                    epoch,
                    snapshot_seq: 0,
                    total_bytes: self.snapshot.len() as u64,
                },
            ),
            (
                "snapshot-chunk".into(),
                Message::SnapshotChunk {
                    stream,
                    epoch,
                    offset: 0,
                    bytes: self.snapshot.clone(),
                },
            ),
            (
                "snapshot-end".into(),
                Message::SnapshotEnd {
                    stream,
                    epoch,
                    digest,
                },
            ),
            ("batch".into(), batch),
            (
                "heartbeat".into(),
                Message::Heartbeat {
                    stream,
                    epoch,
                    leader_seq: 100,
                },
            ),
            (
                "ack".into(),
                Message::Ack {
                    stream: 0x5eed,
                    epoch: 1,
                    seq: 3,
                },
            ),
            (
                "error".into(),
                Message::Error {
                    code: ErrorCode::Forbidden,
                    message: "no replicate scope".into(),
                },
            ),
        ]
    }

    /// Whole connections, both directions interleaved as `repl_stream`
    /// reads them: catch-up, and a snapshot transfer then streaming.
    fn streams(&self, messages: &[(String, Message)]) -> Seeds {
        let pick = |names: &[&str]| -> Vec<u8> {
            names
                .iter()
                .flat_map(|n| {
                    let (_, m) = messages.iter().find(|(name, _)| name == n).unwrap();
                    m.to_frame_bytes().unwrap()
                })
                .collect()
        };
        vec![
            (
                "catch-up".into(),
                pick(&["hello", "welcome-catch-up", "batch", "ack", "heartbeat"]),
            ),
            (
                "snapshot".into(),
                pick(&[
                    "hello",
                    "welcome-snapshot",
                    "snapshot-begin",
                    "snapshot-chunk",
                    "snapshot-end",
                    "ack",
                    "heartbeat",
                    "error",
                ]),
            ),
        ]
    }
}

/// The WAL segments of the database in `dir` that hold a frame.
fn read_segments(dir: &Path) -> Vec<Vec<u8>> {
    files_in(&dir.join("wal"))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .filter(|b| b.len() > 32)
        .collect()
}

/// Puts (short, long, in a keyspace), a delete, increments, and a batch
/// with an idempotency key mixing them.
fn write_every_record_shape(db: &Db) {
    db.put("greeting", "hello").unwrap();
    db.put("long", vec![b'x'; 300]).unwrap();
    db.increment("visits", 3).unwrap();
    db.increment("visits", -1).unwrap();
    db.delete("greeting").unwrap();
    let mut batch = Batch::new();
    batch
        .put_in("users", "ada", "Ada Lovelace")
        .put("after-counter", "floor")
        .increment_in("users", "logins", 2)
        .delete_in("users", "nobody")
        .idempotency_key(format!("import-{}", db.counter("visits").unwrap()));
    db.write(batch).unwrap();
}

/// Run files: every kind of state in small blocks (raw), compressible
/// values (LZ4 blocks), one entry, and none.
fn run_file_seeds() -> Seeds {
    use mergekv::crdt::{Counter, KeyState, NodeTotals, Register};
    use mergekv::{NodeId, Stamp};
    let at = |ms: u64, logical: u32, node: u64| Stamp {
        physical_ms: 1_700_000_000_000 + ms,
        logical,
        node: NodeId(node),
    };
    let register = |value: Option<&[u8]>, stamp: Stamp, floor: Vec<(NodeId, u64, u64)>| Register {
        stamp,
        value: value.map(Arc::from),
        floor,
    };
    let counter = |totals: &[(u64, u64, u64)], stamp: Stamp| {
        Box::new(Counter {
            totals: totals
                .iter()
                .map(|&(node, p, n)| NodeTotals {
                    node: NodeId(node),
                    p,
                    n,
                    stamp,
                })
                .collect(),
        })
    };
    let mut mixed = Vec::new();
    for i in 0..40u64 {
        let key = format!("\x05users/key-{:03}", i * 7).into_bytes();
        let state = match i % 4 {
            0 => KeyState {
                register: Some(register(Some(b"a value"), at(i, 0, 1), Vec::new())),
                counter: None,
            },
            1 => KeyState {
                register: Some(register(None, at(i, 2, 2), vec![(NodeId(1), 4, 1)])),
                counter: None,
            },
            2 => KeyState {
                register: None,
                counter: Some(counter(&[(1, 10, 3), (2, 5, 0)], at(i, 1, 2))),
            },
            _ => KeyState {
                register: Some(register(
                    Some(b"after"),
                    at(i, 0, 3),
                    vec![(NodeId(1), 1, 0)],
                )),
                counter: Some(counter(&[(1, 1, 0)], at(0, 0, 1))),
            },
        };
        mixed.push((key, state));
    }
    let compressible: Vec<_> = (0..30u64)
        .map(|i| {
            let value = vec![b'a' + (i % 3) as u8; 200];
            let state = KeyState {
                register: Some(register(Some(&value), at(i, 0, 1), Vec::new())),
                counter: None,
            };
            (format!("k{i:04}").into_bytes(), state)
        })
        .collect();
    let write = |entries: &[mergekv::fuzzing::RunEntry], block: usize, lz4: bool| {
        mergekv::fuzzing::write_run_file(entries, block, lz4).unwrap()
    };
    vec![
        ("mixed".into(), write(&mixed, 256, false)),
        ("compressed".into(), write(&compressible, 1024, true)),
        ("one".into(), write(&mixed[..1], 4096, true)),
        ("empty".into(), write(&[], 4096, true)),
    ]
}

/// A real API token and its key id.
#[cfg(feature = "auth")]
fn api_token(db: &Db) -> (String, String) {
    let options = AuthOptions {
        password_params: PasswordParams::INSECURE_FOR_TESTS,
        ..AuthOptions::default()
    };
    let auth = AuthService::open_with(db, MasterKey::from_bytes([7; 32]), options).unwrap();
    auth.create_user("fuzz", "a long enough password").unwrap();
    let (info, token) = auth
        .create_api_key("fuzz", Scopes::of(&[Scope::Replicate]), None)
        .unwrap();
    (token.expose().to_string(), info.key_id)
}

/// The seeds hold a real token, and the `_auth` records making it
/// wrote: the corpus must be the same whatever the build.
#[cfg(not(feature = "auth"))]
fn api_token(_db: &Db) -> (String, String) {
    panic!("write_seed_corpus needs the auth service: run it with --features auth")
}

/// A full export, a bucket export (no cursor), and the export of a copy
/// that imported the first (its cursor names two nodes).
/// Change streams: one in clear, one sealed under the fuzz key.
fn stream_seeds() -> Seeds {
    let mut out = Vec::new();
    for (name, key) in [
        ("clear", None),
        ("sealed", Some(mergekv::fuzzing::fuzz_key())),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_with(
            dir.path(),
            Options::default()
                .with_sync_mode(SyncMode::Never)
                .with_wall_clock(Arc::new(ManualClock::new(1_700_000_000_000)))
                .with_encryption_key(key.map(mergekv::KeySource::Key)),
        )
        .unwrap();
        write_every_record_shape(&db);
        let mut stream = Vec::new();
        db.export_to(&SyncCursor::new(), &mut stream).unwrap();
        out.push((name.to_string(), stream));
    }
    out
}

/// An encrypted database under the fuzz key: a sealed change set, a WAL
/// segment and a run, as it writes them.
fn encrypted_seeds() -> Seeds {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(
        dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_wall_clock(Arc::new(ManualClock::new(1_700_000_000_000)))
            .with_encryption_key(Some(mergekv::KeySource::Key(mergekv::fuzzing::fuzz_key()))),
    )
    .unwrap();
    write_every_record_shape(&db);
    db.compact_now().unwrap();
    write_every_record_shape(&db);
    let (sealed, _) = db.export_since(&SyncCursor::new()).unwrap();
    db.close().unwrap();
    let segment = read_segments(dir.path())
        .pop()
        .expect("a segment with frames");
    let run = std::fs::read(common::runs(dir.path()).pop().expect("a run")).unwrap();
    vec![
        ("sealed-changeset".into(), sealed),
        ("segment".into(), segment),
        ("run".into(), run),
    ]
}

fn changesets(db: &Db) -> Seeds {
    let (full, _) = db.export_since(&SyncCursor::new()).unwrap();
    let (buckets, _) = db
        .export_buckets(&SyncCursor::new(), &[0, 1, 2, 3])
        .unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = Db::open(other_dir.path()).unwrap();
    other.import(&full).unwrap();
    other.put("from-the-copy", "1").unwrap();
    let (merged, _) = other.export_since(&SyncCursor::new()).unwrap();
    other.close().unwrap();
    vec![
        ("full".into(), full),
        ("buckets".into(), buckets),
        ("merged".into(), merged),
    ]
}
