//! Attacks on encryption at rest (issue 14), from outside: the public
//! API, raw edits of the files (with every CRC-32C recomputed: they are
//! not keyed), a man in the middle of the replication socket (no TLS), the
//! CLI, and the simulated disk.
//!
//! Every test asserts the contract. A test that FAILS is a finding (its
//! name and its panic message say what was broken); a test that passes
//! is an attack that held.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mergekv::{
    DEFAULT_KEYSPACE, Db, EncryptionKey, Error, KeyError, KeySource, Options, RecoveryMode,
    ScanOptions, SyncMode, Value,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

/// Options with `current` as the key (none if 0) and `old` as old keys;
/// durable writes, no background compaction, small segments.
fn opts(current: u8, old: &[u8]) -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Always)
        .with_segment_size_bytes_max(4096)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
        .with_encryption_key((current != 0).then(|| KeySource::Key(key(current))))
        .with_encryption_keys_old(old.iter().map(|b| KeySource::Key(key(*b))).collect())
}

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Every file under `dir`, recursively, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(tree(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

/// `tree` without the lock files an open takes (their bytes never change,
/// but a refused open may create them).
fn tree_without_locks(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut t = tree(dir);
    t.retain(|p, _| !p.ends_with("LOCK") && !p.ends_with("READERS"));
    t
}

fn holds(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Files under `dir` that hold `needle` in clear.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|(_, b)| holds(b, needle))
        .map(|(p, _)| p)
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    common::segments(dir)
}

fn seg_first_seq(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.trim_start_matches("wal-")
        .trim_end_matches(".seg")
        .parse()
        .unwrap()
}

fn contents(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.scan(&ScanOptions::all())
        .map(Result::unwrap)
        .map(|e| {
            let k = e.key().to_vec();
            match e.into_value() {
                Value::Bytes(b) => (k, b.to_vec()),
                Value::Counter(c) => (k, c.to_le_bytes().to_vec()),
            }
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A store key of the default keyspace (docs/FORMAT.md, "Record").
fn store_key(key: &[u8]) -> Vec<u8> {
    let mut out = vec![DEFAULT_KEYSPACE.len() as u8];
    out.extend_from_slice(DEFAULT_KEYSPACE.as_bytes());
    out.extend_from_slice(key);
    out
}

/// One put record (docs/FORMAT.md, "Record"): register with a value and
/// an empty floor.
fn put_record(key: &[u8], value: &[u8], physical_ms: u64, node: u64) -> Vec<u8> {
    let mut w = vec![0b011u8];
    let sk = store_key(key);
    w.extend_from_slice(&(sk.len() as u32).to_le_bytes());
    w.extend_from_slice(&sk);
    w.extend_from_slice(&physical_ms.to_le_bytes());
    w.extend_from_slice(&0u32.to_le_bytes());
    w.extend_from_slice(&node.to_le_bytes());
    w.extend_from_slice(&(value.len() as u32).to_le_bytes());
    w.extend_from_slice(value);
    w.extend_from_slice(&0u16.to_le_bytes());
    w
}

/// A WAL frame in clear (docs/FORMAT.md, "Frame") holding `records`.
fn clear_wal_frame(first_seq: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = vec![0u8]; // no dedup mark
    for r in records {
        payload.extend_from_slice(r);
    }
    let mut h = Vec::new();
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&first_seq.to_le_bytes());
    h.extend_from_slice(&(records.len() as u32).to_le_bytes());
    h.extend_from_slice(&crc(&payload).to_le_bytes());
    let hc = crc(&h);
    h.extend_from_slice(&hc.to_le_bytes());
    h.extend_from_slice(&payload);
    h
}

/// A WAL segment header (docs/FORMAT.md, "Segment header").
fn segment_header(node: u64, first_seq: u64, flags: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"MKVWAL\0\x01");
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&node.to_le_bytes());
    h.extend_from_slice(&first_seq.to_le_bytes());
    let c = crc(&h);
    h.extend_from_slice(&c.to_le_bytes());
    h
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The frames of a segment: (offset, total length, first seq, op count).
fn frames_of(seg: &[u8]) -> Vec<(usize, usize, u64, u32)> {
    let flags = u16_at(seg, 10);
    let mut at = if flags & 2 != 0 { 76 } else { 32 };
    let mut out = Vec::new();
    while at + 28 <= seg.len() {
        let len = u32_at(seg, at) as usize;
        let total = 28 + len;
        if at + total > seg.len() {
            break;
        }
        out.push((at, total, u64_at(seg, at + 8), u32_at(seg, at + 16)));
        at += total;
    }
    out
}

/// Writes `n` keys `{prefix}{i}` with values `{vprefix}{i}`, one batch each.
fn put_n(db: &Db, prefix: &str, vprefix: &str, n: usize) {
    for i in 0..n {
        db.put(format!("{prefix}{i:04}"), format!("{vprefix}{i:04}"))
            .unwrap();
    }
}

// ---------------------------------------------------------------------------
// 2. Tampering at rest
// ---------------------------------------------------------------------------

/// FINDING: an encrypted database accepts a WAL segment written in clear
/// by someone without the key. A segment's "encrypted" flag is per file
/// and bound to nothing, and clear segments are accepted in an encrypted
/// database (they are what a rotation from no key leaves), so an attacker
/// who can write the directory appends a clear segment with any value
/// they like: the next open reads it as the database's own.
#[test]
fn forged_clear_wal_segment_is_read_as_data_by_an_encrypted_database() {
    let dir = tempfile::tempdir().unwrap();
    let (node, next_seq) = {
        let db = Db::open_with(dir.path(), opts(1, &[])).unwrap();
        db.put("balance", "100").unwrap();
        let out = (db.node_id().0, db.stats().wal.last_seq + 1);
        db.close().unwrap();
        out
    };
    // The attacker: no key, only write access to the directory.
    let mut forged = segment_header(node, next_seq, 0);
    forged.extend(clear_wal_frame(
        next_seq,
        &[put_record(b"balance", b"1000000", now_ms() + 5, node)],
    ));
    // The writable open left an empty encrypted segment named after next_seq:
    // replace it (or add ours if there is none).
    let path = dir
        .path()
        .join("wal")
        .join(format!("wal-{next_seq:020}.seg"));
    std::fs::write(&path, &forged).unwrap();

    let opened = Db::open_with(dir.path(), opts(1, &[]));
    let read = opened
        .as_ref()
        .ok()
        .map(|db| db.get("balance").unwrap().map(|v| v.to_vec()));
    assert!(
        opened.is_err() || read == Some(Some(b"100".to_vec())),
        "an encrypted database read a value forged in clear without the key: balance = {:?}",
        read.map(|r| r.map(|v| String::from_utf8_lossy(&v).into_owned()))
    );
}

/// FINDING: the AFTER_REPAIR flag of a segment header (which allows a
/// forward gap in sequence numbers) is under a CRC only, and no frame's
/// associated data covers it. Delete a middle segment, set the flag on
/// the next one, recompute the header CRC: every acknowledged write of
/// the deleted segment is gone, and the open says nothing (no error, no
/// notice, no repair marker). Every remaining ciphertext is authentic,
/// so authentication does not see it.
#[test]
fn forged_after_repair_flag_makes_a_deleted_middle_segment_vanish_silently() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let db = Db::open_with(dir.path(), opts(1, &[])).unwrap();
        put_n(&db, "acct-", "SECRET-", 120);
        let c = contents(&db);
        db.close().unwrap();
        c
    };
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{segs:?}");
    let victim = segs[1].clone();
    let next = segs[2].clone();
    std::fs::remove_file(&victim).unwrap();
    let mut bytes = std::fs::read(&next).unwrap();
    let flags = u16_at(&bytes, 10) | 1; // AFTER_REPAIR
    bytes[10..12].copy_from_slice(&flags.to_le_bytes());
    let c = crc(&bytes[..28]);
    bytes[28..32].copy_from_slice(&c.to_le_bytes());
    std::fs::write(&next, &bytes).unwrap();

    match Db::open_with(dir.path(), opts(1, &[])) {
        Err(e) => println!("refused: {e}"),
        Ok(db) => {
            let now = contents(&db);
            let lost: Vec<_> = expected
                .keys()
                .filter(|k| !now.contains_key(*k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            let notices = db.notices();
            let marker = dir.path().join("REPAIRED").exists();
            assert!(
                lost.is_empty(),
                "a middle segment deleted and its successor flagged AFTER_REPAIR (CRC recomputed): \
                 {} acknowledged writes silently lost ({:?}..), notices {notices:?}, REPAIRED {marker}, \
                 recovery {:?}",
                lost.len(),
                lost.first(),
                db.recovery_report()
            );
        }
    }
}

/// The MANIFEST (in clear, CRC only) with its run entry dropped.
fn manifest_without_runs(bytes: &[u8]) -> Vec<u8> {
    let run_count = u32_at(bytes, 72) as usize;
    let mut out = bytes[..72].to_vec();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&bytes[76 + 36 * run_count..bytes.len() - 4]);
    let c = crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    out
}

/// FINDING: the MANIFEST is in clear and only CRC-protected; an attacker
/// who drops the run entries (count 0, CRC recomputed) makes the next
/// open forget every key the runs hold, and the writable open then
/// deletes the run files as garbage. No error, no notice. (Not a rollback:
/// this MANIFEST never existed.)
#[test]
fn forged_manifest_without_its_runs_silently_loses_every_flushed_key_and_deletes_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open_with(dir.path(), opts(1, &[])).unwrap();
        put_n(&db, "flushed-", "SECRET-", 50);
        db.compact_now().unwrap();
        db.put("after", "x").unwrap();
        db.close().unwrap();
    }
    let manifest = dir.path().join("MANIFEST");
    let bytes = std::fs::read(&manifest).unwrap();
    assert!(u32_at(&bytes, 72) >= 1);
    std::fs::write(&manifest, manifest_without_runs(&bytes)).unwrap();
    let runs_before = tree(&dir.path().join("runs")).len();
    // `verify` would notice (the digest no longer matches the runs); an
    // open does not look.
    let verified = mergekv::verify_with(dir.path(), &opts(1, &[])).map(|r| r.problems);

    match Db::open_with(dir.path(), opts(1, &[])) {
        Err(e) => println!("refused: {e}"),
        Ok(db) => {
            let got = db.get("flushed-0007").unwrap();
            let runs_after = tree(&dir.path().join("runs")).len();
            assert!(
                got.is_some(),
                "MANIFEST forged without its runs (CRC recomputed): flushed keys read as absent, \
                 runs on disk {runs_before} -> {runs_after}, notices {:?} (verify before the \
                 open: {verified:?})",
                db.notices()
            );
        }
    }
}

/// FINDING: raising the MANIFEST's covered sequence number (CRC
/// recomputed) makes recovery skip WAL frames the runs never held.
#[test]
fn forged_manifest_covered_seq_skips_acknowledged_wal_frames() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let db = Db::open_with(dir.path(), opts(1, &[])).unwrap();
        put_n(&db, "flushed-", "SECRET-", 10);
        db.compact_now().unwrap();
        put_n(&db, "walonly-", "SECRET-", 30);
        let last = db.stats().wal.last_seq;
        db.close().unwrap();
        last
    };
    let manifest = dir.path().join("MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[28..36].copy_from_slice(&last.to_le_bytes());
    let n = bytes.len();
    let c = crc(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&c.to_le_bytes());
    std::fs::write(&manifest, &bytes).unwrap();
    match Db::open_with(dir.path(), opts(1, &[])) {
        Err(e) => println!("refused: {e}"),
        Ok(db) => {
            let got = db.get("walonly-0005").unwrap();
            assert!(
                got.is_some(),
                "MANIFEST covered seq raised to {last} (CRC recomputed): WAL-only writes lost \
                 silently, notices {:?}",
                db.notices()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Replication: a man in the middle (no TLS)
// ---------------------------------------------------------------------------

mod mitm {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use mergekv::replication::Message;
    use mergekv::replication::frame::read_frame;
    use parking_lot::Mutex;

    /// Rewrites what the leader sends, message by message, for one connection.
    pub type Tamper = Box<dyn FnMut(Message) -> Vec<Message> + Send>;

    /// A TCP proxy between a follower and a leader: every frame from the
    /// leader is decoded and handed to a tamper function (a new one per
    /// connection, made with the connection's index); the follower's bytes
    /// are passed on as they are. Everything is also captured raw.
    pub struct Proxy {
        pub addr: String,
        pub captured: Arc<Mutex<Vec<u8>>>,
        pub connections: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
        }
    }

    pub fn start(leader: String, make: impl Fn(usize) -> Tamper + Send + Sync + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cap, conns, halt) = (captured.clone(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Acquire) {
                let Ok((follower, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                follower.set_nonblocking(false).unwrap();
                let index = conns.fetch_add(1, Ordering::AcqRel);
                let Ok(leader) = TcpStream::connect(&leader) else {
                    continue;
                };
                let _ = leader.set_nodelay(true);
                let _ = follower.set_nodelay(true);
                let tamper = make(index);
                pump(follower, leader, tamper, cap.clone(), halt.clone());
            }
        });
        Proxy {
            addr,
            captured,
            connections,
            stop,
        }
    }

    fn pump(
        follower: TcpStream,
        leader: TcpStream,
        mut tamper: Tamper,
        captured: Arc<Mutex<Vec<u8>>>,
        halt: Arc<AtomicBool>,
    ) {
        // Follower -> leader, raw.
        let (mut f_read, mut l_write) =
            (follower.try_clone().unwrap(), leader.try_clone().unwrap());
        let cap = captured.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            loop {
                use std::io::Read;
                match f_read.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        cap.lock().extend_from_slice(&buf[..n]);
                        if l_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = l_write.shutdown(std::net::Shutdown::Both);
        });
        // Leader -> follower, message by message.
        let (mut l_read, mut f_write) = (leader, follower);
        std::thread::spawn(move || {
            while !halt.load(Ordering::Acquire) {
                let Ok(frame) = read_frame(&mut l_read) else {
                    break;
                };
                let raw = Message::decode(&frame).unwrap().to_frame_bytes().unwrap();
                captured.lock().extend_from_slice(&raw);
                let message = Message::decode(&frame).unwrap();
                let mut failed = false;
                for out in tamper(message) {
                    if f_write.write_all(&out.to_frame_bytes().unwrap()).is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break;
                }
            }
            let _ = f_write.shutdown(std::net::Shutdown::Both);
            let _ = l_read.shutdown(std::net::Shutdown::Both);
        });
    }

    /// Passes everything on unchanged.
    pub fn honest() -> Tamper {
        Box::new(|m| vec![m])
    }

    /// Buffers a snapshot transfer and hands its bytes to `rewrite` (with
    /// the announced snapshot seq), sending what it returns (the bytes and
    /// the seq to announce) with a correct total and digest.
    pub fn rewrite_snapshot(
        mut rewrite: impl FnMut(Vec<u8>, u64) -> (Vec<u8>, u64) + Send + 'static,
    ) -> Tamper {
        let mut pending: Option<(u64, u64, u64, Vec<u8>)> = None;
        Box::new(move |m| match m {
            Message::SnapshotBegin {
                stream,
                epoch,
                snapshot_seq,
                ..
            } => {
                pending = Some((stream, epoch, snapshot_seq, Vec::new()));
                vec![]
            }
            Message::SnapshotChunk { bytes, .. } => {
                if let Some(p) = pending.as_mut() {
                    p.3.extend_from_slice(&bytes);
                }
                vec![]
            }
            Message::SnapshotEnd { .. } => {
                let (stream, epoch, seq, bytes) = pending.take().unwrap();
                let (bytes, seq) = rewrite(bytes, seq);
                let digest = *blake3::hash(&bytes).as_bytes();
                vec![
                    Message::SnapshotBegin {
                        stream,
                        epoch,
                        snapshot_seq: seq,
                        total_bytes: bytes.len() as u64,
                    },
                    Message::SnapshotChunk {
                        stream,
                        epoch,
                        offset: 0,
                        bytes,
                    },
                    Message::SnapshotEnd {
                        stream,
                        epoch,
                        digest,
                    },
                ]
            }
            other => vec![other],
        })
    }
}

/// A snapshot file in clear (docs/FORMAT.md, "Snapshot") holding `records`.
fn clear_snapshot(node: u64, covered_seq: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"MKVSNAP\x01");
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(&covered_seq.to_le_bytes());
    out.extend_from_slice(&now_ms().to_le_bytes()); // hlc physical
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(&now_ms().to_le_bytes()); // created
    let c = crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    let payload: Vec<u8> = records.concat();
    snapshot_chunk(&mut out, 1, records.len() as u32, &payload);
    let digest = *blake3::hash(&out).as_bytes();
    snapshot_chunk(&mut out, 0xFF, records.len() as u32, &digest);
    out
}

fn snapshot_chunk(out: &mut Vec<u8>, kind: u8, count: u32, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The chunks of a snapshot file: (offset, kind, count, stored length).
fn snapshot_chunks(bytes: &[u8]) -> Vec<(usize, u8, u32, usize)> {
    let flags = u16_at(bytes, 10);
    let mut at = if flags & 1 != 0 { 60 + 44 } else { 60 };
    let mut out = Vec::new();
    while at + 16 <= bytes.len() {
        let kind = bytes[at];
        let count = u32_at(bytes, at + 4);
        let len = u32_at(bytes, at + 8) as usize;
        out.push((at, kind, count, len));
        at += 16 + len;
    }
    out
}

const CONVERGE: std::time::Duration = std::time::Duration::from_secs(30);

struct Leader {
    _dir: tempfile::TempDir,
    db: Db,
    _server: mergekv::replication::ReplicationServer,
    addr: String,
    token: String,
}

fn encrypted_leader(extra: impl FnOnce(&mut Options)) -> Leader {
    use mergekv::replication::{ReplicationOptions, ReplicationServer};
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
        .with_encryption_key(Some(KeySource::Key(key(1))));
    extra(&mut options);
    let db = Db::open_with(dir.path(), options).unwrap();
    let (auth, token) = common::replication_auth(&db);
    let mut ro = ReplicationOptions::new(auth);
    ro.heartbeat_interval_ms = 50;
    ro.snapshot_chunk_bytes = 8192;
    let server = ReplicationServer::start(&db, "127.0.0.1:0", ro).unwrap();
    let addr = server.local_addr().to_string();
    Leader {
        _dir: dir,
        db,
        _server: server,
        addr,
        token,
    }
}

fn follower_options(
    addr: &str,
    token: &str,
    k: Option<u8>,
) -> mergekv::replication::FollowerOptions {
    let mut options = mergekv::replication::FollowerOptions::new(addr, token);
    options.db_options.sync_mode = SyncMode::Never;
    options.db_options.encryption_key = k.map(|b| KeySource::Key(key(b)));
    options.backoff_initial_ms = 10;
    options.backoff_max_ms = 200;
    options.idle_timeout_ms = 2_000;
    options
}

/// FINDING (most serious on the wire): a follower holding the leader's
/// key installs a snapshot IN CLEAR that a man in the middle forged, in
/// place of the encrypted one the encrypted leader sent. `read_snapshot`
/// takes a clear snapshot as it is (its "encrypted" flag is the file's
/// own say-so), and the transfer's digest is unkeyed. The attacker needs
/// no key and chooses the follower's whole state.
#[test]
fn mitm_replaces_an_encrypted_leaders_snapshot_with_a_forged_clear_one_and_the_follower_installs_it()
 {
    let leader = encrypted_leader(|_| {});
    leader.db.put("balance", "100").unwrap();
    put_n(&leader.db, "acct-", "SECRET-", 50);
    leader.db.compact_now().unwrap(); // WAL gone: a new follower gets a snapshot
    let proxy = mitm::start(leader.addr.clone(), |_| {
        mitm::rewrite_snapshot(|_real, seq| {
            let forged = clear_snapshot(
                0x4141,
                seq,
                &[put_record(b"balance", b"1000000", now_ms(), 0x4141)],
            );
            (forged, seq)
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir.path(),
        follower_options(&proxy.addr, &leader.token, Some(1)),
    )
    .unwrap();
    common::wait_for(CONVERGE, || {
        let s = follower.status();
        s.snapshots_installed > 0 || s.last_error.is_some()
    });
    let status = follower.status();
    let balance = follower.db().get("balance").unwrap();
    let acct = follower.db().get("acct-0001").unwrap();
    follower.stop();
    assert!(
        status.snapshots_installed == 0 && balance.is_none(),
        "a follower with the key installed a forged snapshot in clear from a man in the middle: \
         balance = {:?} (leader: 100), acct-0001 = {:?}, status {status:?}",
        balance.map(|v| String::from_utf8_lossy(&v).into_owned()),
        acct
    );
}

/// FINDING: the WELCOME's "encrypted, key id" fields are in clear and
/// unauthenticated, and they alone decide whether the follower opens
/// BATCHes as sealed objects. A man in the middle sets them to "not
/// encrypted" and replaces every sealed batch with WAL frames in clear of
/// his own: a follower holding the key applies them.
#[test]
fn mitm_downgrades_welcome_to_clear_and_the_follower_with_the_key_applies_forged_batches() {
    let leader = encrypted_leader(|_| {});
    leader.db.put("balance", "100").unwrap();
    put_n(&leader.db, "acct-", "SECRET-", 20);
    let proxy = mitm::start(leader.addr.clone(), |_| {
        Box::new(|m| match m {
            mergekv::replication::Message::Welcome {
                version,
                stream,
                epoch,
                leader_seq,
                mode,
                ..
            } => vec![mergekv::replication::Message::Welcome {
                version,
                stream,
                epoch,
                leader_seq,
                mode,
                key_id: None,
            }],
            mergekv::replication::Message::Batch {
                stream,
                epoch,
                first_seq,
                last_seq,
                ..
            } => {
                let records: Vec<Vec<u8>> = (first_seq..=last_seq)
                    .map(|s| {
                        if s == first_seq {
                            put_record(b"balance", b"1000000", now_ms(), 0x4141)
                        } else {
                            put_record(format!("junk-{s}").as_bytes(), b"x", now_ms(), 0x4141)
                        }
                    })
                    .collect();
                vec![mergekv::replication::Message::Batch {
                    stream,
                    epoch,
                    first_seq,
                    last_seq,
                    frame_count: 1,
                    frames: clear_wal_frame(first_seq, &records),
                }]
            }
            other => vec![other],
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir.path(),
        follower_options(&proxy.addr, &leader.token, Some(1)),
    )
    .unwrap();
    common::wait_for(CONVERGE, || {
        let s = follower.status();
        s.batches_applied > 0 || s.last_error.is_some()
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let status = follower.status();
    let balance = follower.db().get("balance").unwrap();
    follower.stop();
    assert!(
        status.batches_applied == 0,
        "a follower with the key applied batches in clear after a downgraded WELCOME: \
         balance = {:?} (leader: 100), status {status:?}",
        balance.map(|v| String::from_utf8_lossy(&v).into_owned()),
    );
}

/// FINDING: an encrypted snapshot's chunks are each authenticated at
/// their offset, but nothing authenticates where the snapshot ends: the
/// end chunk (count and blake3 of the bytes before it) is in clear and
/// unkeyed. A man in the middle drops every chunk after the first and
/// appends a recomputed end chunk; every remaining ciphertext is genuine,
/// and the follower installs a state missing most keys, then streams on
/// as if whole.
#[test]
fn mitm_cuts_an_encrypted_snapshot_after_its_first_chunk_and_the_follower_installs_the_rest_as_lost()
 {
    let leader = encrypted_leader(|_| {});
    put_n(&leader.db, "acct-", &"SECRET-".repeat(40), 1500);
    leader.db.compact_now().unwrap();
    let proxy = mitm::start(leader.addr.clone(), |_| {
        mitm::rewrite_snapshot(|real, seq| {
            let chunks = snapshot_chunks(&real);
            let (at, kind, count, len) = chunks[0];
            assert_eq!(kind, 1, "{chunks:?}");
            assert!(chunks.len() > 3, "several entries chunks: {chunks:?}");
            let mut cut = real[..at + 16 + len].to_vec();
            let digest = *blake3::hash(&cut).as_bytes();
            snapshot_chunk(&mut cut, 0xFF, count, &digest);
            (cut, seq)
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir.path(),
        follower_options(&proxy.addr, &leader.token, Some(1)),
    )
    .unwrap();
    let last = leader.db.stats().wal.last_seq;
    common::wait_for(CONVERGE, || {
        let s = follower.status();
        s.position.seq >= last || s.last_error.is_some()
    });
    let status = follower.status();
    let have = contents(follower.db()).len();
    let want = contents(&leader.db).len();
    follower.stop();
    assert!(
        status.snapshots_installed == 0 || have == want,
        "a follower installed an encrypted snapshot cut after its first chunk: it holds {have} of \
         the leader's {want} keys and says it is at {} (leader {last}); status {status:?}",
        status.position.seq
    );
}

/// FINDING: SNAPSHOT_BEGIN's snapshot seq (clear, unauthenticated) becomes
/// the follower's cursor; the snapshot file's own covered seq (bound into
/// every encrypted chunk's associated data) is never compared with it. A
/// man in the middle announces a higher seq: the follower skips the
/// batches in between (it closes on the first one, then reconnects with
/// the inflated cursor and is caught up from there), losing them silently.
#[test]
fn mitm_inflates_the_snapshot_seq_and_the_follower_silently_skips_the_batches_in_between() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let leader = encrypted_leader(|_| {});
    put_n(&leader.db, "early-", "SECRET-", 20);
    leader.db.compact_now().unwrap(); // a new follower gets a snapshot
    let snapshot_seq = leader.db.stats().wal.last_seq;
    // The proxy holds the snapshot until the leader has written 40 more
    // batches (which it will stream after the snapshot), then announces
    // snapshot_seq + 30.
    let released = Arc::new(AtomicBool::new(false));
    let release = released.clone();
    let proxy = mitm::start(leader.addr.clone(), move |index| {
        if index > 0 {
            return mitm::honest();
        }
        let release = release.clone();
        mitm::rewrite_snapshot(move |real, seq| {
            while !release.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (real, seq + 30)
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir.path(),
        follower_options(&proxy.addr, &leader.token, Some(1)),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    put_n(&leader.db, "gap-", "SECRET-", 40);
    released.store(true, Ordering::Release);
    let last = leader.db.stats().wal.last_seq;
    let caught_up = follower.wait_for_seq(last, CONVERGE);
    let status = follower.status();
    let missing: Vec<String> = (0..40)
        .map(|i| format!("gap-{i:04}"))
        .filter(|k| follower.db().get(k).unwrap().is_none())
        .collect();
    follower.stop();
    assert!(caught_up, "{status:?}");
    assert!(
        missing.is_empty(),
        "the follower says it holds everything through {} (leader {last}, snapshot at \
         {snapshot_seq}) but lacks {} keys the leader wrote after the snapshot ({:?}..)",
        status.position.seq,
        missing.len(),
        missing.first()
    );
}

// ---------------------------------------------------------------------------
// 1. Plaintext on disk and on the wire
// ---------------------------------------------------------------------------

/// HELD: the replication socket without TLS, captured both ways through
/// catch-up, streaming and a snapshot, holds no key or value in clear
/// (the API token in HELLO is in clear, as documented).
#[test]
fn held_the_replication_socket_carries_no_key_or_value_in_clear() {
    let leader = encrypted_leader(|o| o.wal_retention_bytes_max = 0);
    put_n(&leader.db, "wirekey-", "WIREVALUE-", 200);
    let proxy = mitm::start(leader.addr.clone(), |_| mitm::honest());
    let dir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir.path(),
        follower_options(&proxy.addr, &leader.token, Some(1)),
    )
    .unwrap();
    assert!(follower.wait_for_seq(leader.db.stats().wal.last_seq, CONVERGE));
    put_n(&leader.db, "streamkey-", "STREAMVALUE-", 100);
    assert!(follower.wait_for_seq(leader.db.stats().wal.last_seq, CONVERGE));
    follower.stop();
    // A snapshot next: the WAL the follower needs is gone.
    put_n(&leader.db, "snapkey-", "SNAPVALUE-", 100);
    leader.db.compact_now().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir2.path(),
        follower_options(&proxy.addr, &leader.token, Some(1)),
    )
    .unwrap();
    assert!(follower.wait_for_seq(leader.db.stats().wal.last_seq, CONVERGE));
    assert!(follower.status().snapshots_installed >= 1);
    follower.stop();
    let wire = proxy.captured.lock().clone();
    assert!(wire.len() > 10_000);
    for needle in [
        &b"wirekey-"[..],
        b"WIREVALUE-",
        b"streamkey-",
        b"STREAMVALUE-",
        b"snapkey-",
        b"SNAPVALUE-",
        b"replica", // the auth user's name, in `_auth` records
    ] {
        assert!(
            !holds(&wire, needle),
            "{:?} crossed the wire in clear",
            String::from_utf8_lossy(needle)
        );
    }
    for d in [dir.path(), dir2.path()] {
        for needle in [&b"WIREVALUE-"[..], b"STREAMVALUE-", b"SNAPVALUE-"] {
            assert_eq!(files_holding(d, needle), Vec::<PathBuf>::new());
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Nonce reuse
// ---------------------------------------------------------------------------

/// Every version of every encrypted file seen, by (domain, key id, salt):
/// the (file key) it is encrypted under. Two versions under one file key
/// that differ at an offset both hold are two plaintexts under one nonce.
/// (domain, key id, salt): what a file key is derived from.
type FileKey = (u8, u64, [u8; 32]);

#[derive(Default)]
struct SaltBook {
    seen: BTreeMap<FileKey, Vec<(String, Vec<u8>)>>,
    files: usize,
}

impl SaltBook {
    /// The (domain, key id, salt, data start) of an encrypted file.
    fn key_block(bytes: &[u8]) -> Option<(u8, u64, [u8; 32], usize)> {
        let block = |at: usize| -> Option<(u64, [u8; 32])> {
            let b = bytes.get(at..at + 44)?;
            if crc(&b[..40]) != u32_at(b, 40) {
                return None;
            }
            Some((u64_at(b, 0), b[8..40].try_into().unwrap()))
        };
        if bytes.starts_with(b"MKVWAL\0\x01") && bytes.len() >= 76 && u16_at(bytes, 10) & 2 != 0 {
            let (id, salt) = block(32)?;
            return Some((1, id, salt, 76));
        }
        if bytes.starts_with(b"MKVRUN\0\x01") && bytes.len() >= 76 && u16_at(bytes, 10) & 1 != 0 {
            let (id, salt) = block(32)?;
            return Some((2, id, salt, 76));
        }
        if bytes.starts_with(b"MKVSEAL\x01") && bytes.len() >= 60 {
            return Some((3, u64_at(bytes, 12), bytes[20..52].try_into().unwrap(), 60));
        }
        if bytes.starts_with(b"MKVSNAP\x01") && bytes.len() >= 104 && u16_at(bytes, 10) & 1 != 0 {
            let (id, salt) = block(60)?;
            return Some((4, id, salt, 104));
        }
        None
    }

    fn observe(&mut self, name: &str, bytes: &[u8]) {
        if let Some((domain, id, salt, _)) = Self::key_block(bytes) {
            self.files += 1;
            let versions = self.seen.entry((domain, id, salt)).or_default();
            if !versions.iter().any(|(_, b)| b == bytes) {
                versions.push((name.to_string(), bytes.to_vec()));
            }
        }
    }

    fn observe_dir(&mut self, dir: &Path, label: &str) {
        for (path, bytes) in tree(dir) {
            self.observe(&format!("{label}:{}", path.display()), &bytes);
        }
    }

    /// (file key, first offset where two versions differ, the two names).
    fn reuses(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ((domain, id, _), versions) in &self.seen {
            for (i, (na, a)) in versions.iter().enumerate() {
                for (nb, b) in versions.iter().skip(i + 1) {
                    let common = a.len().min(b.len());
                    if let Some(at) = (0..common).find(|&k| a[k] != b[k]) {
                        out.push(format!(
                            "domain {domain} key {id:016x}: {na} and {nb} differ at byte {at} \
                             under one salt"
                        ));
                    }
                }
            }
        }
        out
    }
}

/// HELD (as far as these sequences go): reopen, crash without close,
/// torn tail cut, repair, flush and merge, rotation and its rewrite, a
/// copy of the directory writing on both sides, a follower (catch-up,
/// snapshot) and its promotion, change set exports: no two different
/// plaintexts under one file key and offset, and no salt in two files
/// that differ.
#[test]
fn held_no_sequence_of_operations_reuses_a_file_key_and_offset() {
    let mut book = SaltBook::default();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = |k: u8, old: &[u8]| opts(k, old).with_segment_size_bytes_max(2048);
    // Reopens, and a drop without close.
    for round in 0..3 {
        let db = Db::open_with(d, small(1, &[])).unwrap();
        put_n(&db, &format!("r{round}-"), "V-", 30);
        book.observe_dir(d, "reopen");
        if round == 1 {
            drop(db);
        } else {
            db.close().unwrap();
        }
    }
    // A torn tail: the last frame of the last segment with frames cut in half.
    let seg = segments(d)
        .into_iter()
        .rev()
        .find(|s| !frames_of(&std::fs::read(s).unwrap()).is_empty())
        .unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let (at, len, _, _) = *frames_of(&bytes).last().unwrap();
    common::truncate(&seg, (at + len / 2) as u64);
    {
        let db = Db::open_with(d, small(1, &[])).unwrap();
        assert!(db.recovery_report().torn_tail.is_some());
        put_n(&db, "aftertorn-", "V-", 30);
        book.observe_dir(d, "torn");
        db.close().unwrap();
    }
    // Damage in a middle segment, repaired.
    let segs = segments(d);
    let mid = segs[segs.len() / 2].clone();
    let mut bytes = std::fs::read(&mid).unwrap();
    let (at, len, _, _) = frames_of(&bytes)[0];
    bytes[at + len - 3] ^= 0x40;
    std::fs::write(&mid, &bytes).unwrap();
    {
        let db = Db::open_with(d, small(1, &[]).with_recovery_mode(RecoveryMode::Repair)).unwrap();
        put_n(&db, "afterrepair-", "V-", 30);
        book.observe_dir(d, "repair");
        db.compact_now().unwrap();
        put_n(&db, "afterflush-", "V-", 30);
        db.set_cursor("hold", db.stats().wal.last_seq - 5).unwrap();
        book.observe_dir(d, "flush");
        db.rotate_encryption_key(key(2)).unwrap();
        put_n(&db, "afterrotate-", "V-", 30);
        book.observe_dir(d, "rotate");
        db.complete_key_rotation().unwrap();
        book.observe_dir(d, "rewrite");
        for _ in 0..2 {
            let (bytes, _) = db.export_since(&mergekv::SyncCursor::new()).unwrap();
            book.observe("export", &bytes);
        }
        db.close().unwrap();
    }
    // A copy; both sides write.
    let copy = common::copy_db(d);
    for (side, path) in [("orig", d), ("copy", copy.path())] {
        let db = Db::open_with(path, small(2, &[])).unwrap();
        put_n(&db, &format!("{side}-"), "V-", 30);
        book.observe_dir(path, side);
        drop(db); // no close
        let db = Db::open_with(path, small(2, &[])).unwrap();
        put_n(&db, &format!("{side}2-"), "V-", 10);
        book.observe_dir(path, side);
        db.close().unwrap();
    }
    // A follower: catch-up and snapshot, then promoted and written.
    let leader = encrypted_leader(|o| o.wal_retention_bytes_max = 0);
    put_n(&leader.db, "led-", "V-", 50);
    let fdir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        fdir.path(),
        follower_options(&leader.addr, &leader.token, Some(1)),
    )
    .unwrap();
    assert!(follower.wait_for_seq(leader.db.stats().wal.last_seq, CONVERGE));
    book.observe_dir(fdir.path(), "follower");
    follower.stop();
    put_n(&leader.db, "led2-", "V-", 50);
    leader.db.compact_now().unwrap();
    let follower = mergekv::replication::Follower::open(
        fdir.path(),
        follower_options(&leader.addr, &leader.token, Some(1)),
    )
    .unwrap();
    assert!(follower.wait_for_seq(leader.db.stats().wal.last_seq, CONVERGE));
    book.observe_dir(fdir.path(), "follower-snap");
    follower.stop();
    assert!(Db::promote_with(fdir.path(), opts(1, &[])).unwrap());
    let promoted = Db::open_with(fdir.path(), opts(1, &[])).unwrap();
    put_n(&promoted, "promoted-", "V-", 30);
    book.observe_dir(fdir.path(), "promoted");
    promoted.close().unwrap();
    book.observe_dir(leader._dir.path(), "leader");

    let reuses = book.reuses();
    assert!(book.files > 30, "only {} encrypted files seen", book.files);
    assert!(reuses.is_empty(), "nonce reuse: {reuses:#?}");
    println!(
        "{} encrypted file versions, {} file keys",
        book.files,
        book.seen.len()
    );
}

/// HELD: a power loss in `Never` sync mode (unsynced frames lost), then a
/// reopen that writes again: the frames lost and the frames written after
/// are never under one file key and offset. Checked at every crash point
/// of the writes, on what the simulated disk held before and after.
#[test]
fn held_a_power_loss_then_new_writes_never_reuse_a_file_key_and_offset() {
    use mergekv::FaultInjector;
    use mergekv::io::{Io, SimDisk};
    const DIR: &str = "/data/db";
    fn sim_files(disk: &SimDisk) -> Vec<(String, Vec<u8>)> {
        let io = Io::new(Some(FaultInjector::with_disk(disk.clone())));
        let mut out = Vec::new();
        for sub in ["wal", "runs"] {
            let dir = Path::new(DIR).join(sub);
            for name in io.list_dir_if_exists(&dir).unwrap() {
                if let Some(b) = disk.read_file(&dir.join(&name)) {
                    out.push((format!("{sub}/{name}"), b));
                }
            }
        }
        out
    }
    let sim_opts = |faults: FaultInjector, mode: SyncMode| {
        opts(1, &[])
            .with_sync_mode(mode)
            .with_worker_threads(0)
            .with_faults(Some(faults))
    };
    let disk = SimDisk::new();
    let faults = FaultInjector::with_disk(disk.clone());
    {
        let db = Db::open_with(DIR, sim_opts(faults.clone(), SyncMode::Always)).unwrap();
        put_n(&db, "synced-", "V-", 10);
        db.close().unwrap();
    }
    disk.record_crash_points(true);
    let db = Db::open_with(DIR, sim_opts(faults.clone(), SyncMode::Never)).unwrap();
    put_n(&db, "unsynced-", "LOST-", 40);
    let mut points = disk.take_crash_points();
    points.push(disk.crash_point_now("end"));
    disk.record_crash_points(false);
    let before = sim_files(&disk);
    drop(db);
    let mut checked = 0;
    for point in &points {
        for cut in point.cuts(3, 2) {
            let survivor = point.survivor(&cut);
            let mut book = SaltBook::default();
            for (name, bytes) in &before {
                book.observe(&format!("before:{name}"), bytes);
            }
            let faults = FaultInjector::with_disk(survivor.clone());
            // A survivor that does not open at all is another finding
            // (`power_loss_in_never_mode_can_leave_a_database_that_no_key_opens`).
            let Ok(db) = Db::open_with(DIR, sim_opts(faults, SyncMode::Never)) else {
                continue;
            };
            put_n(&db, "after-", "NEW-", 20);
            db.close().unwrap();
            for (name, bytes) in sim_files(&survivor) {
                book.observe(&format!("after:{name}"), &bytes);
            }
            let reuses = book.reuses();
            assert!(
                reuses.is_empty(),
                "crash point {}: {reuses:#?}",
                point.index()
            );
            checked += 1;
        }
    }
    assert!(checked > 5);
}

/// Found by the attack, now held (the test name keeps the finding): in
/// `SyncMode::Never`, a power loss that keeps the unsynced pages of the
/// WAL's pending writes at random (later pages kept, an earlier page lost
/// as zeros past the durable size: what docs/FORMAT.md says a power loss
/// can do) leaves a last segment whose damaged frame header is followed
/// by a valid frame: recovery calls it corruption and the open fails,
/// with the key and without (clear database: the same). "A power loss
/// must never block opening" (docs/FORMAT.md, recovery rules).
#[test]
fn power_loss_in_never_mode_can_leave_a_database_that_no_key_opens() {
    use mergekv::FaultInjector;
    use mergekv::io::SimDisk;
    const DIR: &str = "/data/db";
    let mut failures = Vec::new();
    for k in [0u8, 1] {
        let sim_opts = |faults: FaultInjector, mode: SyncMode| {
            opts(k, &[])
                .with_sync_mode(mode)
                .with_worker_threads(0)
                .with_faults(Some(faults))
        };
        let disk = SimDisk::new();
        let faults = FaultInjector::with_disk(disk.clone());
        {
            let db = Db::open_with(DIR, sim_opts(faults.clone(), SyncMode::Always)).unwrap();
            put_n(&db, "synced-", "V-", 10);
            db.close().unwrap();
        }
        disk.record_crash_points(true);
        let db = Db::open_with(DIR, sim_opts(faults.clone(), SyncMode::Never)).unwrap();
        put_n(&db, "unsynced-", "LOST-", 40);
        let mut points = disk.take_crash_points();
        points.push(disk.crash_point_now("end"));
        disk.record_crash_points(false);
        drop(db);
        for point in &points {
            for cut in point.cuts(3, 2) {
                let survivor = point.survivor(&cut);
                let faults = FaultInjector::with_disk(survivor.clone());
                let o = sim_opts(faults.clone(), SyncMode::Never);
                if let Err(e) = Db::open_with(DIR, o) {
                    // A repair open gets past it: does it keep the synced
                    // writes (the first 10 puts)?
                    let repaired = Db::open_with(
                        DIR,
                        sim_opts(faults.clone(), SyncMode::Never)
                            .with_recovery_mode(RecoveryMode::Repair),
                    )
                    .map(|db| db.get("synced-0009").unwrap().is_some());
                    failures.push(format!(
                        "key {k}: crash point {} ({}), cut {cut}: {e} (a repair open: synced \
                         writes kept = {repaired:?})",
                        point.index(),
                        point.label()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} power-loss states do not open: {failures:#?}",
        failures.len()
    );
}

// ---------------------------------------------------------------------------
// 4. Key handling
// ---------------------------------------------------------------------------

/// A database under key 2 (rotated from key 1, rewrite finished) with
/// runs, WAL segments kept by a cursor, a FOLLOWER-less directory, and a
/// torn tail in its last segment (so an open that took a wrong key for
/// damage would have something to cut). `meta_damaged` also flips a byte
/// of META (a repair would rebuild it).
fn rotated_db_with_a_torn_tail(meta_damaged: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    {
        let db = Db::open_with(d, opts(1, &[])).unwrap();
        put_n(&db, "k-", "SECRET-", 40);
        db.compact_now().unwrap();
        db.set_cursor("hold", db.stats().wal.last_seq).unwrap();
        put_n(&db, "w-", "SECRET-", 40);
        db.rotate_encryption_key(key(2)).unwrap();
        put_n(&db, "x-", "SECRET-", 20);
        assert_eq!(db.complete_key_rotation().unwrap().files_left, 0);
        put_n(&db, "y-", "SECRET-", 20);
        db.close().unwrap();
    }
    let seg = segments(d)
        .into_iter()
        .rev()
        .find(|s| !frames_of(&std::fs::read(s).unwrap()).is_empty())
        .unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let (at, len, _, _) = *frames_of(&bytes).last().unwrap();
    common::truncate(&seg, (at + len - 7) as u64);
    if meta_damaged {
        let meta = d.join("META");
        let mut m = std::fs::read(&meta).unwrap();
        m[20] ^= 1; // the created time: CRC mismatch
        std::fs::write(&meta, &m).unwrap();
    }
    dir
}

/// HELD: no key, a wrong key, and the old key after a finished rotation,
/// on every path that opens a database (writable strict and repair,
/// writable read-only, `open_read_only`, `verify`, `promote_with`, a
/// follower's own directory), with a torn tail and (second round) a
/// damaged META waiting: always `Error::Key`, and not one byte changed
/// (no cut, no quarantine, no META rebuilt, no marker).
#[test]
fn held_no_key_wrong_key_or_old_key_is_a_typed_error_on_every_path_and_changes_nothing() {
    let mut violations = Vec::new();
    for meta_damaged in [false, true] {
        let dir = rotated_db_with_a_torn_tail(meta_damaged);
        let d = dir.path();
        let before = tree_without_locks(d);
        for (label, k, old) in [
            ("no key", 0u8, &[][..]),
            ("wrong key", 3, &[][..]),
            ("old key", 1, &[][..]),
            ("wrong key, old key as old", 3, &[1u8][..]),
        ] {
            let o = || opts(k, old);
            let paths: Vec<(&str, mergekv::Result<bool>)> = vec![
                ("open", Db::open_with(d, o()).map(|_| true)),
                (
                    "open repair",
                    Db::open_with(d, o().with_recovery_mode(RecoveryMode::Repair)).map(|_| true),
                ),
                (
                    "open read_only option",
                    Db::open_with(d, o().with_read_only(true)).map(|_| true),
                ),
                (
                    "open_read_only",
                    Db::open_read_only_with(d, o()).map(|_| true),
                ),
                (
                    "verify",
                    mergekv::verify_with(d, &o())
                        .map(|r| r.problems.iter().any(|p| p.contains("META"))),
                ),
                ("promote_with", Db::promote_with(d, o())),
                (
                    "follower open",
                    mergekv::replication::Follower::open(d, {
                        let mut f = mergekv::replication::FollowerOptions::new("127.0.0.1:9", "t");
                        f.db_options = o();
                        f
                    })
                    .map(|_| true),
                ),
            ];
            for (path, result) in paths {
                // With META damaged, a read-only path that reports META's
                // damage (it is real) is right too.
                let meta_reported = meta_damaged
                    && match &result {
                        Err(Error::Corruption { path, .. }) => path.ends_with("META"),
                        Ok(true) => path == "verify",
                        _ => false,
                    };
                if !meta_reported && !matches!(result, Err(Error::Key(KeyError::Missing { .. }))) {
                    violations.push(format!(
                        "META damaged {meta_damaged}, {label}, {path}: {result:?}"
                    ));
                }
                let after = tree_without_locks(d);
                if after != before {
                    let changed: Vec<_> = after
                        .keys()
                        .chain(before.keys())
                        .filter(|p| after.get(*p) != before.get(*p))
                        .collect();
                    violations.push(format!(
                        "META damaged {meta_damaged}, {label}, {path}: changed {changed:?}"
                    ));
                    panic!("{violations:#?}");
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// FINDING (low): a key from the environment that is not valid UTF-8 (a
/// raw 32-byte key, which key FILES may hold, exported as the README's
/// `export MERGEKV_KEY=$(cat db.key)` does) is printed in the error: the
/// message is std's "environment variable was not valid unicode: {value:?}".
#[cfg(feature = "cli")] // runs the program
#[test]
fn a_raw_key_in_the_environment_is_printed_in_the_error() {
    use std::os::unix::ffi::OsStrExt;
    let raw: &[u8; 32] = b"TOPSECRET-KEY-MATERIAL-012345\xff\xfe\xfd";
    let var = "ATTACK_ENCRYPTION_RAW_KEY";
    // SAFETY: no other thread of this test binary reads this variable.
    unsafe { std::env::set_var(var, std::ffi::OsStr::from_bytes(raw)) };
    let err = KeySource::Env(var.into()).resolve().unwrap_err();
    let lib = err.to_string();
    let debug = format!("{err:?}");
    // The CLI, as a user following the README would run it.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mergekv"))
        .arg("--data")
        .arg(dir.path())
        .args(["get", "k"])
        .env("MERGEKV_KEY", std::ffi::OsStr::from_bytes(raw))
        .output()
        .unwrap();
    let cli = String::from_utf8_lossy(&out.stderr).into_owned();
    let secret = "TOPSECRET-KEY-MATERIAL";
    assert!(
        !lib.contains(secret) && !debug.contains(secret) && !cli.contains(secret),
        "the key is printed: library {lib:?}; CLI stderr {cli:?}"
    );
}

/// HELD: keys never show in Debug output of options, keys, key sources,
/// errors, stats, or the CLI's stats/verify/rekey output (text and JSON).
#[cfg(feature = "cli")] // runs the program
#[test]
fn held_keys_are_never_printed_by_debug_stats_or_the_cli() {
    let k = key(0x5a);
    let hex = k.to_hex().to_string();
    let o = Options::default()
        .with_encryption_key(Some(KeySource::Key(k.clone())))
        .with_encryption_keys_old(vec![KeySource::Key(key(0x5b))]);
    let old_hex = key(0x5b).to_hex().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), o.clone()).unwrap();
    db.put("a", "b").unwrap();
    let mut printed = vec![
        format!("{o:?}"),
        format!("{k:?}"),
        format!("{:?}", db.stats()),
        format!("{:?}", db.encryption().unwrap()),
    ];
    db.close().unwrap();
    let wrong = Db::open_with(dir.path(), opts(3, &[])).unwrap_err();
    printed.push(format!("{wrong:?} {wrong}"));
    let kf = dir.path().join("k.key");
    let nf = dir.path().join("n.key");
    std::fs::write(&kf, format!("{hex}\n")).unwrap();
    let new = key(0x5c);
    std::fs::write(&nf, new.to_hex().as_bytes()).unwrap();
    let data = dir.path().join("db2");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mergekv"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .env_remove("MERGEKV_KEY")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let kf_s = kf.to_str().unwrap();
    let nf_s = nf.to_str().unwrap();
    printed.push(run(&["--key-file", kf_s, "put", "k", "v"]));
    for json in [false, true] {
        let mut args = vec!["--key-file", kf_s];
        if json {
            args.push("--json");
        }
        for cmd in [&["stats"][..], &["verify"], &["get", "k"], &["digest"]] {
            let mut a = args.clone();
            a.extend_from_slice(cmd);
            printed.push(run(&a));
        }
    }
    printed.push(run(&["--key-file", nf_s, "get", "k"]));
    printed.push(run(&["--key-file", kf_s, "rekey", "--new-key-file", nf_s]));
    printed.push(run(&["--key-file", nf_s, "--json", "stats"]));
    let new_hex = new.to_hex().to_string();
    for p in &printed {
        for secret in [&hex, &old_hex, &new_hex] {
            assert!(
                !p.to_lowercase().contains(secret.as_str()),
                "a key printed in {p}"
            );
        }
    }
}

/// HELD: every CLI command that opens the database, given no key, a
/// wrong key, or the old key after a finished rotation: exit 4, one line
/// naming the key id needed, and not one byte of the directory changed
/// (a torn tail waits in the last segment). (`rekey` with a wrong current
/// key and a fresh new key included: it must not encrypt anything anew.)
#[cfg(feature = "cli")] // runs the program
#[test]
fn held_every_cli_command_refuses_a_missing_or_wrong_key_with_exit_4_and_changes_nothing() {
    let dir = rotated_db_with_a_torn_tail(false);
    let d = dir.path();
    let files = tempfile::tempdir().unwrap();
    let write_key = |name: &str, b: u8| {
        let p = files.path().join(name);
        std::fs::write(&p, key(b).to_hex().as_bytes()).unwrap();
        p
    };
    let (k1, k3, k4) = (write_key("k1", 1), write_key("k3", 3), write_key("k4", 4));
    let master = files.path().join("master");
    std::fs::write(&master, "07".repeat(32)).unwrap();
    let exported = files.path().join("export.mkv");
    std::fs::write(&exported, b"not a change set").unwrap();
    let lines = files.path().join("lines.tsv");
    std::fs::write(&lines, b"a\tb\n").unwrap();
    let before = tree_without_locks(d);
    let out_file = files.path().join("out.mkv");
    let commands: Vec<Vec<&str>> = vec![
        vec!["get", "k-0001"],
        vec!["put", "a", "b"],
        vec!["del", "a"],
        vec!["incr", "c"],
        vec!["scan"],
        vec!["stats"],
        vec!["compact"],
        vec!["export", out_file.to_str().unwrap()],
        vec!["import", exported.to_str().unwrap()],
        vec!["digest"],
        vec!["verify"],
        vec!["verify", "--repair"],
        vec!["load", lines.to_str().unwrap()],
        vec!["promote"],
        vec!["reidentify"],
        vec!["rekey", "--new-key-file", k4.to_str().unwrap()],
        vec!["user", "list"],
        vec!["apikey", "list", "nobody"],
    ];
    let mut violations = Vec::new();
    for (label, key_file) in [
        ("no key", None),
        ("wrong key", Some(&k3)),
        ("old key", Some(&k1)),
    ] {
        for cmd in &commands {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mergekv"));
            c.arg("--data").arg(d);
            if let Some(k) = key_file {
                c.arg("--key-file").arg(k);
            }
            c.arg("--master-key-file").arg(&master);
            c.args(cmd);
            c.env_remove("MERGEKV_KEY").env_remove("MERGEKV_OLD_KEY");
            let out = c.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.code() != Some(4) || !stderr.contains(&key(2).id().to_string()) {
                violations.push(format!(
                    "{label}, {cmd:?}: exit {:?}, stderr {stderr:?}",
                    out.status.code()
                ));
            }
            let after = tree_without_locks(d);
            if after != before {
                let changed: Vec<_> = after
                    .keys()
                    .chain(before.keys())
                    .filter(|p| after.get(*p) != before.get(*p))
                    .cloned()
                    .collect();
                panic!("{label}, {cmd:?} changed {changed:?}; other violations {violations:#?}");
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// FINDING (low): encrypting a database that was in clear (a rotation
/// from no key; `mergekv rekey --new-key-file` with no current key)
/// leaves quarantine/ in clear: the bytes an earlier repair set aside
/// (dropped WAL frames: keys and values) stay readable, while
/// `Db::encryption()` says no file is left under another key and the
/// rekey report says `files_left: 0`.
#[test]
fn encrypting_a_database_in_clear_leaves_its_quarantine_in_clear_and_reports_nothing_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    {
        let db = Db::open_with(d, opts(0, &[])).unwrap();
        put_n(&db, "patient-", "DIAGNOSIS-", 120);
        db.close().unwrap();
    }
    let segs = segments(d);
    let mid = segs[segs.len() / 2].clone();
    let mut bytes = std::fs::read(&mid).unwrap();
    let (at, len, _, _) = frames_of(&bytes)[1];
    bytes[at + len - 2] ^= 0x10;
    std::fs::write(&mid, &bytes).unwrap();
    let db = Db::open_with(d, opts(0, &[]).with_recovery_mode(RecoveryMode::Repair)).unwrap();
    assert!(db.recovery_report().repair.is_some());
    db.rotate_encryption_key(key(1)).unwrap();
    let report = db.complete_key_rotation().unwrap();
    let status = db.encryption().unwrap();
    db.close().unwrap();
    let leaking = files_holding(d, b"DIAGNOSIS-");
    assert!(
        leaking.is_empty(),
        "after encrypting (rekey report {report:?}, status {status:?}) these files hold values \
         in clear: {leaking:#?}"
    );
}

/// HELD: plaintext is nowhere in an encrypted database's directory after
/// flushes, merges, a repair with quarantine, a torn tail, a rotation and
/// its rewrite, a follower's staged snapshot, and exports, nor in the
/// exported change sets.
#[test]
fn held_no_plaintext_in_any_file_of_an_encrypted_database_or_its_exports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let needles: [&[u8]; 2] = [b"patient-", b"DIAGNOSIS-"];
    {
        let db = Db::open_with(d, opts(1, &[])).unwrap();
        put_n(&db, "patient-", "DIAGNOSIS-", 120);
        db.compact_now().unwrap();
        put_n(&db, "patient2-", "DIAGNOSIS-", 120);
        db.close().unwrap();
    }
    let segs = segments(d);
    let mid = segs[segs.len() / 2].clone();
    let mut bytes = std::fs::read(&mid).unwrap();
    let (at, len, _, _) = frames_of(&bytes)[0];
    bytes[at + len - 2] ^= 0x10;
    std::fs::write(&mid, &bytes).unwrap();
    let db = Db::open_with(d, opts(1, &[]).with_recovery_mode(RecoveryMode::Repair)).unwrap();
    assert!(db.recovery_report().repair.is_some());
    assert!(d.join("quarantine").exists());
    let (export, _) = db.export_since(&mergekv::SyncCursor::new()).unwrap();
    db.rotate_encryption_key(key(2)).unwrap();
    put_n(&db, "patient3-", "DIAGNOSIS-", 30);
    db.complete_key_rotation().unwrap();
    db.close().unwrap();
    for n in needles {
        assert!(!holds(&export, n));
        assert_eq!(files_holding(d, n), Vec::<PathBuf>::new());
    }
}

/// Found by the attack (an encrypted copy imported a change set in clear
/// from anyone, so whoever could write the shared bucket set any value),
/// now held: an encrypted copy takes only what its keys authenticate.
#[test]
fn held_an_encrypted_copy_refuses_a_forged_change_set_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(1, &[])).unwrap();
    db.put("balance", "100").unwrap();
    // The attacker's own database in clear, with a newer stamp.
    let evil = tempfile::tempdir().unwrap();
    let e = Db::open_with(evil.path(), opts(0, &[])).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    e.put("balance", "1000000").unwrap();
    let (forged, _) = e.export_since(&mergekv::SyncCursor::new()).unwrap();
    assert!(
        holds(&forged, b"1000000"),
        "the forged change set is in clear"
    );
    assert!(matches!(db.import(&forged), Err(Error::Decode { .. })));
    assert_eq!(db.get("balance").unwrap().as_deref(), Some(&b"100"[..]));
}

// ---------------------------------------------------------------------------
// 5. Power loss during rotations
// ---------------------------------------------------------------------------

mod rotation_crash {
    use super::*;
    use mergekv::FaultInjector;
    use mergekv::io::SimDisk;

    pub const DIR: &str = "/data/db";

    pub fn options(faults: &FaultInjector, current: u8, old: &[u8]) -> Options {
        opts(current, old)
            .with_worker_threads(0)
            .with_segment_size_bytes_max(2048)
            .with_faults(Some(faults.clone()))
            .with_compactor_tick_ms(1)
    }

    /// A database under `first` (0: in clear) with runs, WAL segments kept
    /// by a cursor, and an active segment.
    pub fn prepare(faults: &FaultInjector, first: u8) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let db = Db::open_with(DIR, options(faults, first, &[])).unwrap();
        db.set_cursor("reader", 1).unwrap();
        for i in 0..30 {
            db.put(format!("run-{i:03}"), vec![b'r'; 64]).unwrap();
        }
        db.compact_now().unwrap();
        for i in 0..30 {
            db.put(format!("wal-{i:03}"), vec![b'w'; 64]).unwrap();
        }
        let c = contents(&db);
        db.close().unwrap();
        c
    }

    /// Every power-loss state of `act` (recorded on `disk`), checked by
    /// `check`; returns how many were checked.
    pub fn every_state(
        disk: &SimDisk,
        act: impl FnOnce(),
        mut check: impl FnMut(&SimDisk, &str),
    ) -> usize {
        disk.record_crash_points(true);
        act();
        let mut points = disk.take_crash_points();
        points.push(disk.crash_point_now("after"));
        disk.record_crash_points(false);
        let mut n = 0;
        for point in &points {
            for cut in point.cuts(11, 1) {
                let context = format!(
                    "crash point {} ({}), cut {cut}",
                    point.index(),
                    point.label()
                );
                check(&point.survivor(&cut), &context);
                n += 1;
            }
        }
        n
    }
}

/// HELD: two rotations in a row (1 -> 2, then 2 -> 3 before the first
/// rewrite ran), with writes between them and the background rewrite
/// running, cut by a power loss at every crash point: the survivor opens
/// with key 3 and the old keys 1 and 2, holds every acknowledged write,
/// finishes the rotation, then opens with key 3 alone; an open with key 3
/// and only key 2 is refused naming key 1 (never damage, never a cut).
#[test]
fn held_a_power_loss_anywhere_in_two_overlapping_rotations_leaves_a_database_keys_3_2_1_open() {
    use mergekv::FaultInjector;
    use mergekv::io::SimDisk;
    use rotation_crash::*;
    let disk = SimDisk::new();
    let faults = FaultInjector::with_disk(disk.clone());
    let expected = prepare(&faults, 1);
    let f = faults.clone();
    let n = every_state(
        &disk,
        move || {
            let db = Db::open_with(DIR, options(&f, 1, &[])).unwrap();
            db.rotate_encryption_key(key(2)).unwrap();
            for i in 0..5 {
                db.put(format!("between-{i}"), "v").unwrap();
            }
            db.rotate_encryption_key(key(3)).unwrap();
            for i in 0..5 {
                db.put(format!("after-{i}"), "v").unwrap();
            }
            db.complete_key_rotation().unwrap();
            db.close().unwrap();
        },
        |survivor, context| {
            let faults = FaultInjector::with_disk(survivor.clone());
            // A refusal naming a key is fine; damage is not.
            if let Err(e) = Db::open_with(DIR, options(&faults, 3, &[2])) {
                assert!(
                    matches!(e, Error::Key(KeyError::Missing { .. })),
                    "{context}: {e}"
                );
            }
            let db = Db::open_with(DIR, options(&faults, 3, &[1, 2]))
                .unwrap_or_else(|e| panic!("{context}: keys 3, 2, 1: {e}"));
            let got = contents(&db);
            for (k, v) in &expected {
                assert_eq!(
                    got.get(k),
                    Some(v),
                    "{context}: {}",
                    String::from_utf8_lossy(k)
                );
            }
            let report = db
                .complete_key_rotation()
                .unwrap_or_else(|e| panic!("{context}: finishing: {e}"));
            assert_eq!(report.files_left, 0, "{context}");
            db.close().unwrap();
            let db = Db::open_with(DIR, options(&faults, 3, &[]))
                .unwrap_or_else(|e| panic!("{context}: key 3 alone after finishing: {e}"));
            db.close().unwrap();
        },
    );
    assert!(n > 30, "only {n} states");
    println!("{n} power-loss states checked");
}

/// HELD: encrypting a database in clear (rotation from no key), cut at
/// every crash point: the survivor opens with the new key (files still in
/// clear need none), never without it once META names it, holds every
/// write, and finishes.
#[test]
fn held_a_power_loss_anywhere_in_encrypting_a_clear_database_leaves_one_the_new_key_opens() {
    use mergekv::FaultInjector;
    use mergekv::io::SimDisk;
    use rotation_crash::*;
    let disk = SimDisk::new();
    let faults = FaultInjector::with_disk(disk.clone());
    let expected = prepare(&faults, 0);
    let f = faults.clone();
    let n = every_state(
        &disk,
        move || {
            let db = Db::open_with(DIR, options(&f, 0, &[])).unwrap();
            db.rotate_encryption_key(key(1)).unwrap();
            db.complete_key_rotation().unwrap();
            db.close().unwrap();
        },
        |survivor, context| {
            let faults = FaultInjector::with_disk(survivor.clone());
            let keyed = Db::open_with(DIR, options(&faults, 1, &[]));
            let db = match keyed {
                Ok(db) => db,
                // Before META named the key: still a database in clear.
                Err(Error::Key(KeyError::NotEncrypted { .. })) => {
                    Db::open_with(DIR, options(&faults, 0, &[]))
                        .unwrap_or_else(|e| panic!("{context}: in clear: {e}"))
                }
                Err(e) => panic!("{context}: with the new key: {e}"),
            };
            assert_eq!(contents(&db), expected, "{context}");
            db.complete_key_rotation().unwrap();
            db.close().unwrap();
        },
    );
    assert!(n > 20, "only {n} states");
}

// ---------------------------------------------------------------------------
// 6. Malformed encrypted input
// ---------------------------------------------------------------------------

/// HELD: a sealed change set whose clear header is rewritten (chunk size
/// 0, 1, 16 MiB, 16 MiB + 1, u32::MAX; kind; key id of an old key; salt)
/// with its CRC recomputed, cut to its header, or grown: a typed error,
/// never a panic, nothing applied.
#[test]
fn held_a_sealed_change_set_with_a_rewritten_header_is_refused_typed_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let src = Db::open_with(dir.path(), opts(1, &[])).unwrap();
    put_n(&src, "cs-", &"V".repeat(300), 400); // > one 64 KiB chunk
    let (sealed, _) = src.export_since(&mergekv::SyncCursor::new()).unwrap();
    src.close().unwrap();
    assert!(sealed.starts_with(b"MKVSEAL\x01"));
    let reseal = |mut b: Vec<u8>| {
        let c = crc(&b[..56]);
        b[56..60].copy_from_slice(&c.to_le_bytes());
        b
    };
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for chunk in [
        0u32,
        1,
        16,
        65_535,
        65_537,
        16 << 20,
        (16 << 20) + 1,
        u32::MAX,
    ] {
        let mut b = sealed.clone();
        b[52..56].copy_from_slice(&chunk.to_le_bytes());
        cases.push((format!("chunk size {chunk}"), reseal(b)));
    }
    for kind in [0u8, 2, 255] {
        let mut b = sealed.clone();
        b[10] = kind;
        cases.push((format!("kind {kind}"), reseal(b)));
    }
    let mut b = sealed.clone();
    b[12..20].copy_from_slice(&key(2).id().0.to_le_bytes());
    cases.push(("key id of another key".into(), reseal(b)));
    let mut b = sealed.clone();
    b[30] ^= 1;
    cases.push(("salt".into(), reseal(b)));
    cases.push(("header only".into(), sealed[..60].to_vec()));
    let mut b = sealed.clone();
    b.extend_from_slice(&[0u8; 16]);
    cases.push(("an extra empty chunk".into(), b));
    let mut b = sealed.clone();
    let n = b.len();
    b.truncate(60 + 65_536 + 16);
    cases.push((format!("cut at the first chunk boundary (of {n})"), b));
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Db::open_with(dst_dir.path(), opts(1, &[2])).unwrap();
    for (what, bytes) in cases {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dst.import(&bytes)));
        match result {
            Err(_) => panic!("{what}: import panicked"),
            Ok(Ok(r)) => panic!("{what}: accepted {r:?}"),
            Ok(Err(Error::Decode { .. } | Error::Key(_))) => {}
            Ok(Err(e)) => panic!("{what}: untyped error {e:?}"),
        }
        assert_eq!(dst.get("cs-0001").unwrap(), None, "{what}");
    }
}

/// HELD: before authenticating, a leader reads at most a small HELLO: a
/// frame header announcing 256 MiB, or a HELLO with a token length past
/// the payload, closes the connection at once (no allocation of the
/// announced size, no panic), and the leader keeps serving.
#[test]
fn held_the_leader_refuses_oversized_and_malformed_frames_before_authentication() {
    use std::io::{Read, Write};
    let leader = encrypted_leader(|_| {});
    leader.db.put("k", "v").unwrap();
    let header = |len: u32, kind: u8, payload_crc: u32| {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_le_bytes());
        h.push(kind);
        h.extend_from_slice(&[0, 0, 0]);
        h.extend_from_slice(&payload_crc.to_le_bytes());
        let c = crc(&h);
        h.extend_from_slice(&c.to_le_bytes());
        h
    };
    let mut hello = Vec::new();
    hello.extend_from_slice(b"MKVREPL\x01");
    hello.extend_from_slice(&2u16.to_le_bytes());
    hello.extend_from_slice(&7u64.to_le_bytes());
    hello.extend_from_slice(&u16::MAX.to_le_bytes()); // a token "of 65535 bytes"
    hello.extend_from_slice(b"short");
    let mut bad_hello = header(hello.len() as u32, 1, crc(&hello));
    bad_hello.extend_from_slice(&hello);
    for (what, bytes) in [
        ("256 MiB announced", header(256 << 20, 1, 0)),
        ("u32::MAX announced", header(u32::MAX, 1, 0)),
        ("a BATCH before HELLO", {
            let mut b = header(64, 6, crc(&[0u8; 64]));
            b.extend_from_slice(&[0u8; 64]);
            b
        }),
        ("a HELLO whose token runs past it", bad_hello),
    ] {
        let mut s = std::net::TcpStream::connect(&leader.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(&bytes).unwrap();
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        let _ = s.read_to_end(&mut buf);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(9),
            "{what}: the leader kept the connection open"
        );
    }
    // Still serving.
    let dir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir.path(),
        follower_options(&leader.addr, &leader.token, Some(1)),
    )
    .unwrap();
    assert!(follower.wait_for_seq(leader.db.stats().wal.last_seq, CONVERGE));
    follower.stop();
}

/// HELD: a man in the middle who rewrites the sealed batches' clear
/// header (chunk size 1 or 16 MiB, the salt, the key id to the follower's
/// old key) or the batch's clear fields (first/last seq, frame count),
/// recomputing every CRC: the follower refuses each (no panic, nothing
/// applied) and catches up once the proxy is honest.
#[test]
fn held_a_follower_refuses_sealed_batches_with_rewritten_headers_or_fields() {
    use mergekv::replication::Message;
    let leader = encrypted_leader(|_| {});
    put_n(&leader.db, "b-", "SECRET-", 30);
    let proxy = mitm::start(leader.addr.clone(), |index| {
        if index >= 7 {
            return mitm::honest();
        }
        Box::new(move |m| match m {
            Message::Batch {
                stream,
                epoch,
                first_seq,
                last_seq,
                frame_count,
                mut frames,
            } => {
                let (mut f, mut l, mut c) = (first_seq, last_seq, frame_count);
                let reseal = |b: &mut Vec<u8>| {
                    let cr = crc(&b[..56]);
                    b[56..60].copy_from_slice(&cr.to_le_bytes());
                };
                match index {
                    0 => {
                        frames[52..56].copy_from_slice(&1u32.to_le_bytes());
                        reseal(&mut frames);
                    }
                    1 => {
                        frames[52..56].copy_from_slice(&(16u32 << 20).to_le_bytes());
                        reseal(&mut frames);
                    }
                    2 => {
                        frames[25] ^= 1;
                        reseal(&mut frames);
                    }
                    3 => {
                        frames[12..20].copy_from_slice(&key(2).id().0.to_le_bytes());
                        reseal(&mut frames);
                    }
                    4 => l -= 1,
                    5 => c += 1,
                    _ => {
                        f += 1;
                        l += 1;
                    }
                }
                vec![Message::Batch {
                    stream,
                    epoch,
                    first_seq: f,
                    last_seq: l,
                    frame_count: c,
                    frames,
                }]
            }
            other => vec![other],
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let follower = mergekv::replication::Follower::open(
        dir.path(),
        follower_options(&proxy.addr, &leader.token, Some(1)).tap(|o| {
            o.db_options.encryption_keys_old = vec![KeySource::Key(key(2))];
        }),
    )
    .unwrap();
    assert!(
        follower.wait_for_seq(leader.db.stats().wal.last_seq, CONVERGE),
        "{:?}",
        follower.status()
    );
    let status = follower.status();
    follower.stop();
    assert!(proxy.connections.load(std::sync::atomic::Ordering::Acquire) >= 8);
    assert_eq!(
        status.connects as usize,
        proxy.connections.load(std::sync::atomic::Ordering::Acquire)
    );
    assert_eq!(
        contents(&leader.db)
            .keys()
            .filter(|k| k.starts_with(b"b-"))
            .count(),
        30
    );
}

trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl<T> Tap for T {}

// ---------------------------------------------------------------------------
// 2b. Splices between copies, and rollbacks of one file
// ---------------------------------------------------------------------------

/// Found by the attack (a whole WAL segment moved between two copies of
/// one database, same key, a `cp -r` clone that renewed its node id, was
/// accepted: the clone keeps the original's id among its former ids, and
/// opened with the original's writes in place of its own), now held: META
/// records the sequence number the clone's new id took over at, and a
/// segment holding frames from there on under a former id is refused.
#[test]
fn held_a_segment_swapped_in_from_another_copy_is_refused() {
    let a = tempfile::tempdir().unwrap();
    {
        let db = Db::open_with(a.path(), opts(1, &[])).unwrap();
        put_n(&db, "base-", "V-", 10);
        db.close().unwrap();
    }
    let b = common::copy_db(a.path());
    for (dir, prefix) in [(a.path(), "a-"), (b.path(), "b-")] {
        let db = Db::open_with(dir, opts(1, &[])).unwrap();
        put_n(&db, prefix, "SECRET-", 20);
        db.close().unwrap();
    }
    let seg_a = segments(a.path()).last().unwrap().clone();
    let seg_b = segments(b.path()).last().unwrap().clone();
    assert_eq!(
        seg_a.file_name(),
        seg_b.file_name(),
        "both wrote from the same seq"
    );
    std::fs::copy(&seg_a, &seg_b).unwrap();
    match Db::open_with(b.path(), opts(1, &[])) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(reason.contains("another copy's segment"), "{reason}")
        }
        Err(e) => panic!("refused, but not as another copy's segment: {e}"),
        Ok(db) => panic!(
            "copy B opened with copy A's segment in place of its own: b-0005 = {:?}",
            db.get("b-0005").unwrap()
        ),
    }
}

/// Documented ("does not protect against someone who can ... roll it back
/// to an older copy of itself"), shown for one file: the active segment
/// replaced by an older authentic version of itself (a prefix, at a frame
/// boundary) loses the acknowledged writes after it, with no error and
/// no notice. Nothing in an encrypted segment says where it ends.
#[test]
fn documented_an_older_version_of_the_last_segment_silently_drops_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::open_with(d, opts(1, &[]).with_segment_size_bytes_max(1 << 20)).unwrap();
    put_n(&db, "early-", "V-", 10);
    let seg = segments(d).last().unwrap().clone();
    let older = std::fs::read(&seg).unwrap(); // what a backup or snapshot of the disk holds
    put_n(&db, "late-", "V-", 10);
    db.close().unwrap();
    std::fs::write(&seg, &older).unwrap();
    let db = Db::open_with(d, opts(1, &[])).unwrap();
    assert_eq!(
        db.get("late-0003").unwrap(),
        None,
        "the acknowledged write is gone"
    );
    assert!(db.notices().is_empty() && db.recovery_report().torn_tail.is_none());
}

/// HELD: the other rollbacks of one file: a segment the rotation rewrote
/// put back as its older version under the old key (opens only with the
/// old key given, else a typed error naming it; the content is the same);
/// an older MANIFEST naming runs a merge deleted (Corruption naming the
/// run, not a silent loss).
#[test]
fn held_rolling_back_a_rewritten_segment_or_the_manifest_is_refused_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::open_with(d, opts(1, &[])).unwrap();
    put_n(&db, "k-", "V-", 40);
    db.compact_now().unwrap();
    let old_manifest = std::fs::read(d.join("MANIFEST")).unwrap();
    let held = db.stats().wal.last_seq;
    db.set_cursor("hold", held).unwrap();
    put_n(&db, "w-", "V-", 40);
    let seg = segments(d)
        .into_iter()
        .find(|s| seg_first_seq(s) > held)
        .unwrap();
    let old_seg = std::fs::read(&seg).unwrap();
    db.rotate_encryption_key(key(2)).unwrap();
    db.complete_key_rotation().unwrap();
    put_n(&db, "x-", "V-", 40);
    let expected = contents(&db);
    db.close().unwrap();
    assert_ne!(std::fs::read(&seg).unwrap(), old_seg, "rewritten");
    let new_seg = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &old_seg).unwrap();
    match Db::open_with(d, opts(2, &[])) {
        Err(Error::Key(KeyError::Missing { needed, .. })) => assert_eq!(needed, key(1).id()),
        other => panic!("old segment back, key 2 alone: {other:?}"),
    }
    let db = Db::open_with(d, opts(2, &[1])).unwrap();
    assert_eq!(contents(&db), expected);
    db.close().unwrap();
    std::fs::write(&seg, &new_seg).unwrap();
    std::fs::write(d.join("MANIFEST"), &old_manifest).unwrap();
    match Db::open_with(d, opts(2, &[])) {
        // The pre-rotation manifest is authenticated under the old key.
        Err(Error::Corruption { .. }) | Err(Error::Key(KeyError::Missing { .. })) => {}
        Ok(db) => assert_eq!(
            contents(&db),
            expected,
            "an older MANIFEST lost data silently"
        ),
        Err(e) => panic!("{e:?}"),
    }
}
