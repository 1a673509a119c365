//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mergekv::{Db, ImportReport, ManualClock, Options, SyncCursor, SyncMode};

/// One copy of a database for sync tests, with its own manual clock.
pub struct Copy {
    _dir: tempfile::TempDir,
    /// The database.
    pub db: Db,
    /// Its clock.
    pub clock: Arc<ManualClock>,
}

/// A copy whose clock starts at `start_ms`.
pub fn copy(start_ms: u64) -> Copy {
    copy_with(start_ms, Options::default().segment_size_bytes_max)
}

/// A copy whose clock starts at `start_ms`, with segments of at most
/// `segment_size_bytes_max`.
pub fn copy_with(start_ms: u64, segment_size_bytes_max: u64) -> Copy {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start_ms));
    let options = Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_wall_clock(clock.clone())
        .with_segment_size_bytes_max(segment_size_bytes_max);
    let db = Db::open_with(dir.path(), options).unwrap();
    Copy {
        _dir: dir,
        db,
        clock,
    }
}

impl Copy {
    /// Its data directory.
    #[allow(dead_code, reason = "not every test binary looks at files")]
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// Sends everything `from` has that `to` lacks.
pub fn sync(from: &Db, to: &Db) -> ImportReport {
    let (bytes, _) = from.export_since(&SyncCursor::new()).unwrap();
    to.import(&bytes).unwrap()
}

/// The WAL segment files of the database in `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

/// Copies a database directory (META and the WAL) into a fresh temp dir.
pub fn copy_db(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    copy_tree(src, dst.path());
    dst
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The same path inside another database directory.
pub fn rebase(path: &Path, from: &Path, to: &Path) -> PathBuf {
    to.join(path.strip_prefix(from).unwrap())
}

/// Truncates a file to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Flips the bits of one byte.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

/// A small deterministic pseudo-random generator (xorshift64*), so tests
/// need no extra crate and failures can be replayed from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn from_time() -> (Self, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        (Rng::new(seed), seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Who decides which tokens may follow a test leader: the auth service
/// with the feature `auth`; without it, [`FixedToken`], so the
/// replication tests run in every build.
#[cfg(feature = "auth")]
pub type ReplicationAuthority = mergekv::AuthService;
/// Who decides which tokens may follow a test leader (see the `auth` build).
#[cfg(not(feature = "auth"))]
pub type ReplicationAuthority = FixedToken;

/// Lets exactly one token follow (builds without the auth service); any
/// other token is refused as unauthenticated.
#[cfg(not(feature = "auth"))]
pub struct FixedToken(String);

#[cfg(not(feature = "auth"))]
impl mergekv::replication::ReplicationAuth for FixedToken {
    fn authorize_replication(&self, token: &str) -> Result<(), mergekv::replication::ErrorCode> {
        if token == self.0 {
            Ok(())
        } else {
            Err(mergekv::replication::ErrorCode::Unauthenticated)
        }
    }
}

/// An auth service on `db` (cheap test password costs) with a user
/// `replica` and an API key for it with the `replicate` scope; returns the
/// service (for the leader) and the key's token (for followers).
#[cfg(feature = "auth")]
pub fn replication_auth(db: &Db) -> (Arc<ReplicationAuthority>, String) {
    use mergekv::auth::{AuthOptions, AuthService, MasterKey, PasswordParams, Scope, Scopes};
    let auth = Arc::new(
        AuthService::open_with(
            db,
            MasterKey::from_bytes([7; 32]),
            AuthOptions {
                password_params: PasswordParams::INSECURE_FOR_TESTS,
                ..AuthOptions::default()
            },
        )
        .unwrap(),
    );
    auth.create_user("replica", "a long enough password")
        .unwrap();
    let (_, token) = auth
        .create_api_key("replica", Scopes::of(&[Scope::Replicate]), None)
        .unwrap();
    (auth, token.expose().to_string())
}

/// Without the auth service: a [`FixedToken`] and its token.
#[cfg(not(feature = "auth"))]
pub fn replication_auth(_db: &Db) -> (Arc<ReplicationAuthority>, String) {
    // Without "replica" in it: the token crosses the wire in clear, and
    // attack_encryption checks that the name of the auth service's user
    // (`replica`) never does.
    let token = "fixed-test-token".to_string();
    (Arc::new(FixedToken(token.clone())), token)
}

/// Sends `bytes` to `socket` one at a time, `pause` apart (the pause is
/// the attack: a peer that keeps every single read short), until they run
/// out or the other side closes or answers. Returns how many were sent
/// before that (all of them if it never did).
pub fn trickle_until_closed(
    socket: &mut std::net::TcpStream,
    bytes: &[u8],
    pause: std::time::Duration,
) -> usize {
    use std::io::Write;
    for (sent, byte) in bytes.iter().enumerate() {
        if closed_or_answered(socket) || socket.write_all(&[*byte]).is_err() {
            return sent;
        }
        std::thread::sleep(pause);
    }
    bytes.len()
}

/// True if the other side has closed the connection or sent something.
pub fn closed_or_answered(socket: &std::net::TcpStream) -> bool {
    socket.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let seen = !matches!(
        socket.peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    socket.set_nonblocking(false).unwrap();
    seen
}

/// Waits for `done` to hold, checking every few milliseconds, for at most
/// `timeout`; true if it did. For conditions nothing signals.
pub fn wait_for(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        if std::time::Instant::now() >= deadline {
            return done();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// The run files of the database in `dir` (`runs/run-*.run`), oldest
/// first.
pub fn runs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir.join("runs"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "run"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The snapshot files of the database in `dir` (`snapshots/snap-*.snap`;
/// only a directory of the format before runs has any), oldest first.
pub fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir.join("snapshots"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "snap"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A snapshot of `db`'s whole state as a file of the format before runs,
/// with the sequence number it covers. Compactions no longer write
/// snapshot files, but a replication leader still ships its state as one
/// (written by the same snapshot writer the older compactor used), so this
/// takes it from a leader on `db`, as a follower on another history would
/// receive it. Serving records the leader's epoch in `_local` first, so the
/// snapshot holds that key too; the retention cursor the transfer
/// registered is removed again.
pub fn shipped_snapshot(db: &Db) -> (u64, Vec<u8>) {
    use mergekv::replication::frame::read_frame;
    use mergekv::replication::{
        Cursor, ErrorCode, Message, PROTOCOL_VERSION, ReplicationAuth, ReplicationOptions,
        ReplicationServer, StartMode,
    };
    use std::io::Write;

    struct Anyone;
    impl ReplicationAuth for Anyone {
        fn authorize_replication(&self, _token: &str) -> Result<(), ErrorCode> {
            Ok(())
        }
    }
    let cursors_before = db.stats().cursors;
    let server =
        ReplicationServer::start(db, "127.0.0.1:0", ReplicationOptions::new(Arc::new(Anyone)))
            .unwrap();
    let mut socket = std::net::TcpStream::connect(server.local_addr()).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        follower_id: 0x5eed,
        token: "any".into(),
        // Another history: the leader answers with a snapshot.
        cursor: Cursor {
            stream: db.node_id().0 ^ 1,
            epoch: 1,
            seq: 0,
        },
    };
    socket.write_all(&hello.to_frame_bytes().unwrap()).unwrap();
    let (mut seq, mut bytes) = (None, Vec::new());
    loop {
        match Message::decode(&read_frame(&mut socket).unwrap()).unwrap() {
            Message::Welcome { mode, .. } => assert_eq!(mode, StartMode::Snapshot),
            Message::SnapshotBegin {
                snapshot_seq,
                total_bytes,
                ..
            } => {
                seq = Some(snapshot_seq);
                bytes.reserve(total_bytes as usize);
            }
            Message::SnapshotChunk {
                offset, bytes: b, ..
            } => {
                assert_eq!(offset, bytes.len() as u64);
                bytes.extend_from_slice(&b);
            }
            Message::SnapshotEnd { digest, .. } => {
                assert_eq!(&digest, blake3::hash(&bytes).as_bytes());
                break;
            }
            Message::Heartbeat { .. } => {}
            other => panic!("unexpected {other:?} during a snapshot transfer"),
        }
    }
    drop(socket);
    server.stop();
    for name in db.stats().cursors.keys() {
        if !cursors_before.contains_key(name) {
            db.remove_cursor(name).unwrap();
        }
    }
    (seq.unwrap(), bytes)
}

/// Makes the closed database in `dir`, which never wrote a run (so its WAL
/// reaches back to sequence number 1), a directory of the format before
/// runs holding `snapshots` (each with the sequence number it covers, as
/// from [`shipped_snapshot`]) as `snapshots/snap-<seq>.snap`, and the WAL
/// segments that hold anything after `wal_after` (what the older compactor
/// kept).
pub fn make_legacy(dir: &Path, snapshots: &[(u64, Vec<u8>)], wal_after: u64) {
    assert!(
        !dir.join("MANIFEST").exists() && runs(dir).is_empty(),
        "{} wrote runs: its WAL may not reach back to the start",
        dir.display()
    );
    let snap_dir = dir.join("snapshots");
    fs::create_dir_all(&snap_dir).unwrap();
    for (seq, bytes) in snapshots {
        fs::write(snap_dir.join(format!("snap-{seq:020}.snap")), bytes).unwrap();
    }
    let segments = segments(dir);
    let first_seq = |p: &Path| -> u64 {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        name.strip_prefix("wal-").unwrap().parse().unwrap()
    };
    for pair in segments.windows(2) {
        // Everything in it is below the next segment's first number.
        if first_seq(&pair[1]) <= wal_after.saturating_add(1) {
            fs::remove_file(&pair[0]).unwrap();
        }
    }
}

/// Every file under `dir`, recursively, with its bytes, sorted by path.
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push((path.clone(), fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Panics naming the file if any file under `dir` holds one of `needles`.
pub fn assert_nothing_in_clear(dir: &Path, needles: &[&[u8]]) {
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

/// Makes `dir`'s META claim that its identity was issued in `dir` (what a
/// block-level clone looks like: the copy cannot be told by its directory).
pub fn forge_home(dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join("META");
    let mut bytes = std::fs::read(&path).unwrap();
    let here = std::fs::metadata(dir).unwrap();
    bytes[26..34].copy_from_slice(&here.dev().to_le_bytes());
    bytes[34..42].copy_from_slice(&here.ino().to_le_bytes());
    let end = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}
