//! WAL shipping: a leader and followers over loopback TCP.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "auth")]
use mergekv::auth::{Scope, Scopes};
use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::frame::read_frame;
use mergekv::replication::message::{ErrorCode, StartMode};
use mergekv::replication::server::{ReplicationOptions, ReplicationServer};
use mergekv::replication::{Cursor, Message};
use mergekv::{Batch, Db, Error, Options, SyncMode};

/// Long enough for a loaded 2-core machine; the waits end as soon as the
/// condition holds.
const CONVERGE: Duration = Duration::from_secs(60);

struct Leader {
    _dir: tempfile::TempDir,
    db: Db,
    auth: Arc<common::ReplicationAuthority>,
    server: Option<ReplicationServer>,
    token: String,
}

fn leader_options() -> Options {
    Options::default().with_sync_mode(SyncMode::Never)
}

fn leader(db_options: Options, tweak: impl FnOnce(&mut ReplicationOptions)) -> Leader {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), db_options).unwrap();
    let (auth, token) = common::replication_auth(&db);
    let mut options = ReplicationOptions::new(auth.clone());
    options.heartbeat_interval_ms = 50;
    tweak(&mut options);
    let server = ReplicationServer::start(&db, "127.0.0.1:0", options).unwrap();
    Leader {
        _dir: dir,
        db,
        auth,
        server: Some(server),
        token,
    }
}

impl Leader {
    fn addr(&self) -> String {
        self.server.as_ref().unwrap().local_addr().to_string()
    }

    fn last_seq(&self) -> u64 {
        self.db.stats().wal.last_seq
    }
}

fn follower_options(leader: &str, token: &str) -> FollowerOptions {
    let mut options = FollowerOptions::new(leader, token);
    options.db_options.sync_mode = SyncMode::Never;
    options.backoff_initial_ms = 10;
    options.backoff_max_ms = 200;
    options.idle_timeout_ms = 2_000;
    options
}

fn follow(dir: &Path, leader: &Leader) -> Follower {
    Follower::open(dir, follower_options(&leader.addr(), &leader.token)).unwrap()
}

/// Waits for the follower to hold everything the leader has written.
fn converge(follower: &Follower, leader: &Leader) {
    let target = leader.last_seq();
    assert!(
        follower.wait_for_seq(target, CONVERGE),
        "follower stuck at {:?}, leader at {target}",
        follower.status()
    );
    assert_eq!(follower.db().digest().unwrap(), leader.db.digest().unwrap());
}

fn put_many(db: &Db, prefix: &str, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut batch = Batch::new();
        for i in chunk {
            batch.put(format!("{prefix}{i:06}"), format!("value {i}"));
        }
        db.write(batch).unwrap();
    }
}

#[test]
fn a_follower_catches_up_over_many_batches_then_streams() {
    let leader = leader(leader_options(), |o| o.batch_bytes_target = 16 * 1024);
    put_many(&leader.db, "k", 20_000);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    let status = follower.status();
    assert!(status.batches_applied > 10, "{status:?}");
    assert_eq!(follower.db().stats().keys, leader.db.stats().keys);
    assert_eq!(
        follower.db().get("k019999").unwrap().as_deref(),
        Some(&b"value 19999"[..])
    );
    // Streaming: puts, deletes and counters after the catch-up.
    for i in 0..200 {
        leader.db.increment("hits", i).unwrap();
        leader.db.delete(format!("k{i:06}")).unwrap();
        leader.db.put(format!("new{i}"), "x").unwrap();
    }
    converge(&follower, &leader);
    assert_eq!(
        follower.db().counter("hits").unwrap(),
        (0..200).sum::<i64>()
    );
    assert_eq!(follower.db().get("k000000").unwrap(), None);
    assert_eq!(follower.status().lag_seqs, 0);
}

#[test]
fn a_follower_refuses_writes_and_its_directory_stays_read_only_until_promoted() {
    let leader = leader(leader_options(), |_| {});
    leader.db.put("a", "1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    assert!(matches!(
        follower.db().put("b", "2"),
        Err(Error::ReadOnly {
            follower_of: Some(_),
            ..
        })
    ));
    assert!(follower.db().import(&[]).is_err());
    follower.stop();
    match Db::open(dir.path()) {
        Err(Error::ReadOnly {
            follower_of: Some(leader_addr),
            ..
        }) => assert_eq!(leader_addr, leader.addr()),
        other => panic!("expected a read-only error, got {other:?}"),
    }
    let read_only = Db::open_with(dir.path(), Options::default().with_read_only(true)).unwrap();
    assert_eq!(read_only.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    let position = read_only.follower_position().unwrap().unwrap();
    assert_eq!(position.seq, leader.last_seq());
    drop(read_only);
    // What a follower killed mid-transfer leaves: promotion removes it.
    let staged = dir.path().join("replication-incoming.snap");
    std::fs::write(&staged, vec![7u8; 4096]).unwrap();
    assert!(Db::promote(dir.path()).unwrap());
    assert!(
        !staged.exists(),
        "a staged snapshot does not outlive promotion"
    );
    let promoted = Db::open(dir.path()).unwrap();
    promoted.put("b", "2").unwrap();
    assert_eq!(promoted.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(!Db::promote(tempfile::tempdir().unwrap().path()).unwrap_or(false));
}

#[test]
fn a_reconnected_follower_has_exactly_the_leaders_keys_and_counts_once() {
    let leader = leader(leader_options(), |o| o.batch_bytes_target = 4 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    for round in 0..3 {
        for i in 0..300 {
            leader.db.increment("total", 1).unwrap();
            leader.db.put(format!("r{round}-{i}"), "v").unwrap();
        }
        // Mid-stream: stop before the follower has necessarily caught up.
        follower_wait_some(&follower);
    }
    follower.stop();
    for i in 0..500 {
        leader.db.increment("total", 1).unwrap();
        leader.db.put(format!("away-{i}"), "v").unwrap();
    }
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    assert_eq!(follower.db().counter("total").unwrap(), 1400);
    assert_eq!(follower.db().stats().keys, leader.db.stats().keys);
}

fn follower_wait_some(follower: &Follower) {
    assert!(follower.wait_until(CONVERGE, |s| s.batches_applied > 0));
}

#[test]
fn a_follower_whose_segments_were_compacted_away_gets_a_snapshot_that_replaces_its_state() {
    let small_wal = leader_options()
        .with_segment_size_bytes_max(16 * 1024)
        .with_wal_retention_bytes_max(0);
    let leader = leader(small_wal, |o| o.snapshot_chunk_bytes = 4096);
    put_many(&leader.db, "early", 2_000);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    follower.stop();
    // While it is away: deletes, overwrites, and compaction that drops the
    // segments it would need.
    for i in 0..1_000 {
        leader.db.delete(format!("early{i:06}")).unwrap();
    }
    put_many(&leader.db, "late", 3_000);
    leader.db.compact_now().unwrap();
    leader.db.put("after-compaction", "1").unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    let status = follower.status();
    assert_eq!(status.snapshots_installed, 1, "{status:?}");
    assert_eq!(follower.db().get("early000001").unwrap(), None);
    assert_eq!(
        follower.db().get("late002999").unwrap().as_deref(),
        Some(&b"value 2999"[..])
    );
    // Compaction and rotation while it streams.
    for round in 0..5 {
        put_many(&leader.db, &format!("stream{round}-"), 500);
        leader.db.compact_now().unwrap();
    }
    converge(&follower, &leader);
    // The installed state survives a restart.
    follower.stop();
    let reopened = Db::open_with(dir.path(), Options::default().with_read_only(true)).unwrap();
    assert_eq!(reopened.digest().unwrap(), leader.db.digest().unwrap());
}

#[test]
fn a_second_follower_claiming_the_same_id_is_refused_while_the_first_converges() {
    let leader = leader(leader_options(), |_| {});
    put_many(&leader.db, "k", 1_000);
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut options = follower_options(&leader.addr(), &leader.token);
    options.follower_id = Some(42);
    let first = Follower::open(first_dir.path(), options.clone()).unwrap();
    converge(&first, &leader);
    let second = Follower::open(second_dir.path(), options).unwrap();
    assert!(second.wait_until(CONVERGE, |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("already connected"))
    }));
    leader.db.put("more", "1").unwrap();
    converge(&first, &leader);
    assert_eq!(second.status().batches_applied, 0);
    assert_eq!(second.db().stats().keys, 0);
    let connected = leader.server.as_ref().unwrap().followers();
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0].follower_id, 42);
}

#[cfg(feature = "auth")]
#[test]
fn followers_without_a_replicate_token_are_refused() {
    let leader = leader(leader_options(), |_| {});
    leader.db.put("secret", "data").unwrap();
    let (_, read_only_token) = leader
        .auth
        .create_api_key("replica", Scopes::of(&[Scope::Read]), None)
        .unwrap();
    let mut wrong = leader.token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let cases = [
        (String::new(), "Unauthenticated"),
        (wrong, "Unauthenticated"),
        (read_only_token.expose().to_string(), "Forbidden"),
    ];
    for (token, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let follower =
            Follower::open(dir.path(), follower_options(&leader.addr(), &token)).unwrap();
        assert!(
            follower.wait_until(CONVERGE, |s| s
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(expected))),
            "{expected}: {:?}",
            follower.status()
        );
        assert_eq!(follower.db().get("secret").unwrap(), None);
        assert_eq!(follower.status().batches_applied, 0);
        assert!(follower.db().follower_position().unwrap().is_none());
    }
}

/// WAL frames holding three puts (`a`, `b`, `c`, sequence numbers 1..=3),
/// taken from a real database's segment.
fn three_wal_frames() -> Vec<u8> {
    three_wal_frames_of(["a", "b", "c"], "rogue")
}

/// WAL frames holding three puts of `value` (sequence numbers 1..=3).
fn three_wal_frames_of(keys: [&str; 3], value: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for key in keys {
        db.put(key, value).unwrap();
    }
    db.close().unwrap();
    let segment = &common::segments(dir.path())[0];
    let bytes = std::fs::read(segment).unwrap();
    // The segment header is 32 bytes (docs/FORMAT.md).
    bytes[32..].to_vec()
}

/// Accepts one connection from the follower and reads its HELLO.
fn accept_hello(listener: &TcpListener) -> TcpStream {
    let (mut socket, _) = listener.accept().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut header = [0u8; 16];
    socket.read_exact(&mut header).unwrap();
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).unwrap();
    assert_eq!(header[4], 1, "HELLO first");
    socket
}

fn send(socket: &mut TcpStream, message: &Message) {
    socket
        .write_all(&message.to_frame_bytes().unwrap())
        .unwrap();
}

fn welcome(leader_seq: u64) -> Message {
    Message::Welcome {
        version: mergekv::replication::PROTOCOL_VERSION,
        stream: 0,
        epoch: 0,
        leader_seq,
        mode: StartMode::CatchUp,
        key_id: None,
    }
}

fn batch(stream: u64, first_seq: u64, frames: &[u8]) -> Message {
    Message::Batch {
        stream,
        epoch: 0,
        first_seq,
        last_seq: first_seq + 2,
        frame_count: 3,
        frames: frames.to_vec(),
    }
}

/// Reads until the follower closes the connection.
fn closed_by_follower(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_rogue_leader_gets_nothing_applied_and_the_follower_reconnects() {
    let frames = three_wal_frames();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let follower = Follower::open(dir.path(), follower_options(&addr, "any")).unwrap();
    let mut bad_checksum = batch(0, 1, &frames).to_frame_bytes().unwrap();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] ^= 0x40;
    let mut damaged_wal_frame = frames.clone();
    damaged_wal_frame[40] ^= 1;
    let mut huge = [0u8; 16];
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    huge[4] = 6;
    let crc = crc32c::crc32c(&huge[..12]);
    huge[12..].copy_from_slice(&crc.to_le_bytes());
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "wrong stream",
            batch(99, 1, &frames).to_frame_bytes().unwrap(),
        ),
        ("bad frame checksum", bad_checksum),
        (
            "damaged WAL frame",
            batch(0, 1, &damaged_wal_frame).to_frame_bytes().unwrap(),
        ),
        ("4 GiB length", huge.to_vec()),
        (
            "sequence gap",
            batch(0, 2, &frames).to_frame_bytes().unwrap(),
        ),
        (
            "out of order",
            Message::Ack {
                stream: 0,
                epoch: 0,
                seq: 1,
            }
            .to_frame_bytes()
            .unwrap(),
        ),
    ];
    for (name, attack) in attacks {
        let mut socket = accept_hello(&listener);
        send(&mut socket, &welcome(3));
        socket.write_all(&attack).unwrap();
        assert!(closed_by_follower(&mut socket), "{name}: not closed");
        assert_eq!(follower.db().stats().keys, 0, "{name}: applied something");
        assert!(
            follower.db().follower_position().unwrap().is_none(),
            "{name}"
        );
    }
    // The follower keeps reconnecting; an honest batch is applied.
    let mut socket = accept_hello(&listener);
    send(&mut socket, &welcome(3));
    send(&mut socket, &batch(0, 1, &frames));
    assert!(follower.wait_for_seq(3, CONVERGE));
    assert_eq!(
        follower.db().get("c").unwrap().as_deref(),
        Some(&b"rogue"[..])
    );
    let cursor = Cursor::from(follower.db().follower_position().unwrap().unwrap());
    assert_eq!(
        cursor,
        Cursor {
            stream: 0,
            epoch: 0,
            seq: 3
        }
    );
}

#[test]
fn a_promoted_copy_that_follows_again_is_reset_to_the_leaders_state() {
    let leader = leader(leader_options(), |_| {});
    put_many(&leader.db, "k", 500);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    follower.stop();
    assert!(Db::promote(dir.path()).unwrap());
    {
        let promoted = Db::open(dir.path()).unwrap();
        promoted.put("written-while-promoted", "x").unwrap();
        promoted.delete("k000001").unwrap();
    }
    leader.db.put("later", "1").unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    assert_eq!(follower.status().snapshots_installed, 1);
    assert_eq!(follower.db().get("written-while-promoted").unwrap(), None);
    assert!(follower.db().get("k000001").unwrap().is_some());
}

/// A frame header of `kind` announcing `payload_bytes`, with a valid
/// header checksum (docs/PROTOCOL.md).
fn header_announcing(kind: u8, payload_bytes: u32) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&payload_bytes.to_le_bytes());
    header[4] = kind;
    let crc = crc32c::crc32c(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Reads the leader's frames until it closes the connection; the last
/// message it sent, if any. Fails if it keeps the connection open.
fn read_until_closed(socket: &mut TcpStream) -> Option<Message> {
    socket.set_read_timeout(Some(CONVERGE)).unwrap();
    let mut last = None;
    loop {
        match read_frame(socket) {
            Ok(frame) => last = Some(Message::decode(&frame).unwrap()),
            Err(mergekv::replication::ProtocolError::Io {
                kind: std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut,
                ..
            }) => {
                panic!("the leader kept the connection open; last sent {last:?}")
            }
            Err(_) => return last,
        }
    }
}

fn assert_refused_with(message: Option<Message>, expected: ErrorCode) {
    match message {
        Some(Message::Error { code, .. }) if code == expected => {}
        other => panic!("expected ERROR({expected:?}), got {other:?}"),
    }
}

#[test]
fn an_unauthenticated_frame_larger_than_any_hello_is_refused_on_its_header() {
    // The deadline is far away: only the size can end the connection.
    let leader = leader(leader_options(), |o| o.handshake_timeout_ms = 600_000);
    for kind in [1u8, 6] {
        let mut socket = TcpStream::connect(leader.addr()).unwrap();
        socket
            .write_all(&header_announcing(kind, 200 << 20))
            .unwrap();
        // Payload bytes follow, as an attacker would send them; the leader
        // has refused the frame by then and reads none of it.
        let _ = socket.write_all(&vec![0u8; 64 * 1024]);
        assert_refused_with(read_until_closed(&mut socket), ErrorCode::Protocol);
    }
    // A follower is served as before.
    leader.db.put("a", "1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
}

#[test]
fn a_hello_trickled_a_byte_at_a_time_is_cut_off_at_the_handshake_deadline() {
    let leader = leader(leader_options(), |o| o.handshake_timeout_ms = 300);
    // The largest HELLO: 316 bytes at 20 ms each take over 6 s, while no
    // single read waits more than 20 ms.
    let hello = Message::Hello {
        version: mergekv::replication::PROTOCOL_VERSION,
        follower_id: 7,
        token: "t".repeat(mergekv::replication::message::TOKEN_BYTES_MAX),
        cursor: Cursor::default(),
    }
    .to_frame_bytes()
    .unwrap();
    let mut socket = TcpStream::connect(leader.addr()).unwrap();
    let sent = common::trickle_until_closed(&mut socket, &hello, Duration::from_millis(20));
    assert!(
        sent < hello.len(),
        "the leader waited for the whole trickled HELLO ({sent} bytes)"
    );
    let server = leader.server.as_ref().unwrap();
    assert!(common::wait_for(CONVERGE, || server
        .stats()
        .handshakes_pending
        == 0));
}

#[test]
fn connections_beyond_the_pending_handshake_limit_are_closed_at_once() {
    let leader = leader(leader_options(), |o| {
        o.handshakes_max = 4;
        o.handshake_timeout_ms = 600_000;
    });
    let server = leader.server.as_ref().unwrap();
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(leader.addr()).unwrap())
        .collect();
    assert!(
        common::wait_for(CONVERGE, || server.stats().handshakes_pending == 4),
        "{:?}",
        server.stats()
    );
    for _ in 0..3 {
        let mut excess = TcpStream::connect(leader.addr()).unwrap();
        assert_refused_with(read_until_closed(&mut excess), ErrorCode::Unavailable);
    }
    assert_eq!(server.stats().handshakes_pending, 4);
    assert!(server.stats().connections_refused >= 3);
    // Once the silent ones go, a follower gets in.
    drop(silent);
    assert!(common::wait_for(CONVERGE, || server
        .stats()
        .handshakes_pending
        == 0));
    leader.db.put("a", "1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
}

/// Where a follower stages a snapshot it receives (docs/PROTOCOL.md).
fn staged_snapshot(dir: &Path) -> std::path::PathBuf {
    dir.join("replication-incoming.snap")
}

#[test]
fn a_staged_snapshot_left_by_a_killed_follower_is_removed_at_open() {
    let leader = leader(leader_options(), |_| {});
    put_many(&leader.db, "k", 100);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    follower.stop();
    // What a follower killed between receiving (or installing) a snapshot
    // and deleting its staging file leaves behind.
    std::fs::write(staged_snapshot(dir.path()), vec![0x5a; 1 << 20]).unwrap();
    let follower = follow(dir.path(), &leader);
    assert!(
        !staged_snapshot(dir.path()).exists(),
        "the staged snapshot outlived the open"
    );
    put_many(&leader.db, "more", 100);
    converge(&follower, &leader);
}

#[test]
fn a_snapshot_transfer_cut_short_leaves_no_staged_file() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let follower = Follower::open(dir.path(), follower_options(&addr, "any")).unwrap();
    let mut socket = accept_hello(&listener);
    send(
        &mut socket,
        &Message::Welcome {
            version: mergekv::replication::PROTOCOL_VERSION,
            stream: 0,
            epoch: 0,
            leader_seq: 3,
            mode: StartMode::Snapshot,
            key_id: None,
        },
    );
    send(
        &mut socket,
        &Message::SnapshotBegin {
            stream: 0,
            epoch: 0,
            snapshot_seq: 3,
            total_bytes: 1 << 20,
        },
    );
    send(
        &mut socket,
        &Message::SnapshotChunk {
            stream: 0,
            epoch: 0,
            offset: 0,
            bytes: vec![7; 4096],
        },
    );
    let staged = staged_snapshot(dir.path());
    assert!(common::wait_for(CONVERGE, || std::fs::metadata(&staged)
        .is_ok_and(|m| m.len() == 4096)));
    // The leader goes away mid-transfer.
    drop(socket);
    assert!(
        common::wait_for(CONVERGE, || !staged.exists()),
        "the cut-short transfer left its staged file"
    );
    assert_eq!(follower.status().snapshots_installed, 0);
    assert!(follower.db().follower_position().unwrap().is_none());
}

/// The bytes of a real snapshot file holding one key, `from-snapshot` (as
/// a leader ships it: with its `_local` epoch too, which a follower does
/// not keep).
fn snapshot_file_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.put("from-snapshot", "1").unwrap();
    let (_, bytes) = common::shipped_snapshot(&db);
    db.close().unwrap();
    bytes
}

/// Sends a whole snapshot of `bytes` covering `snapshot_seq`, after a
/// WELCOME that asks for one.
fn send_snapshot(socket: &mut TcpStream, snapshot_seq: u64, bytes: &[u8]) {
    send(
        socket,
        &Message::Welcome {
            version: mergekv::replication::PROTOCOL_VERSION,
            stream: 0,
            epoch: 0,
            leader_seq: 3,
            mode: StartMode::Snapshot,
            key_id: None,
        },
    );
    send(
        socket,
        &Message::SnapshotBegin {
            stream: 0,
            epoch: 0,
            snapshot_seq,
            total_bytes: bytes.len() as u64,
        },
    );
    send(
        socket,
        &Message::SnapshotChunk {
            stream: 0,
            epoch: 0,
            offset: 0,
            bytes: bytes.to_vec(),
        },
    );
    send(
        socket,
        &Message::SnapshotEnd {
            stream: 0,
            epoch: 0,
            digest: *blake3::hash(bytes).as_bytes(),
        },
    );
}

#[test]
fn a_batch_reusing_sequence_numbers_with_other_writes_is_applied_not_taken_for_a_duplicate() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let follower = Follower::open(dir.path(), follower_options(&addr, "any")).unwrap();
    let mut socket = accept_hello(&listener);
    send(&mut socket, &welcome(3));
    send(&mut socket, &batch(0, 1, &three_wal_frames()));
    assert!(follower.wait_for_seq(3, CONVERGE));
    drop(socket);
    // The leader's history was cut back (say, a power loss took frames
    // that were shipped) and it reuses sequence numbers 1..=3 for other
    // writes under the same stream and epoch: a snapshot at 0, then them.
    let other = three_wal_frames_of(["x", "y", "z"], "after the cut");
    let mut socket = accept_hello(&listener);
    send_snapshot(&mut socket, 0, &snapshot_file_bytes());
    send(&mut socket, &batch(0, 1, &other));
    assert!(
        follower.wait_until(CONVERGE, |s| s.snapshots_installed == 1
            && s.batches_applied == 2),
        "{:?}",
        follower.status()
    );
    assert_eq!(
        follower.db().get("from-snapshot").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(follower.db().get("a").unwrap(), None);
    assert_eq!(
        follower.db().get("z").unwrap().as_deref(),
        Some(&b"after the cut"[..]),
        "the batch was taken for the one applied before at the same sequence numbers"
    );
}

/// A follower over a raw socket that connects, asks for a snapshot (its
/// cursor names another history) and reads it slowly: 64 KiB every 50 ms,
/// until the leader closes the connection (or refuses it) or `stop` is set.
fn slow_snapshot_reader(
    addr: String,
    token: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let Ok(mut socket) = TcpStream::connect(&addr) else {
            return 0;
        };
        let hello = Message::Hello {
            version: mergekv::replication::PROTOCOL_VERSION,
            follower_id: 99,
            token,
            cursor: Cursor {
                stream: 1,
                epoch: 1,
                seq: 1,
            },
        };
        let _ = socket.write_all(&hello.to_frame_bytes().unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match socket.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
            // The slowness is the point: the leader's sends block.
            std::thread::sleep(Duration::from_millis(50));
        }
        received
    })
}

#[test]
fn stopping_the_leader_does_not_wait_on_a_session_in_a_snapshot_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), leader_options()).unwrap();
    let (auth, token) = common::replication_auth(&db);
    // A snapshot far larger than the socket buffers hold: at 64 KiB per
    // 50 ms it would take the slow reader about 20 s.
    let value = vec![b'v'; 512 * 1024];
    for i in 0..48 {
        db.put(format!("big{i}"), &value).unwrap();
    }
    db.compact_now().unwrap();
    // Stop while the follower connects (racing the start of its session:
    // a session the stop did not see went on with the whole transfer), and
    // once it is in the middle of the transfer.
    let racing = std::iter::repeat_n(false, 20);
    for stop_mid_transfer in racing.chain([true, true]) {
        let mut options = ReplicationOptions::new(auth.clone());
        options.snapshot_chunk_bytes = 64 * 1024;
        let server = ReplicationServer::start(&db, "127.0.0.1:0", options).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader =
            slow_snapshot_reader(server.local_addr().to_string(), token.clone(), stop.clone());
        if stop_mid_transfer {
            assert!(common::wait_for(CONVERGE, || server
                .followers()
                .first()
                .is_some_and(|f| f.follower_id == 99)));
        }
        let (stopped, done) = std::sync::mpsc::channel();
        let stopper = std::thread::spawn(move || {
            server.stop();
            let _ = stopped.send(());
        });
        let result = done.recv_timeout(Duration::from_secs(15));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            result.is_ok(),
            "stop waited on the snapshot transfer (mid-transfer: {stop_mid_transfer})"
        );
        stopper.join().unwrap();
        reader.join().unwrap();
    }
}

#[test]
fn the_cursor_of_a_follower_that_does_not_return_is_removed_after_the_horizon() {
    let leader = leader(leader_options(), |o| o.follower_cursor_horizon_ms = 300);
    put_many(&leader.db, "k", 100);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    let cursor = format!("replica-{:016x}", follower.follower_id());
    assert!(leader.db.cursor(&cursor).is_some(), "held while connected");
    follower.stop();
    assert!(
        common::wait_for(CONVERGE, || leader.db.cursor(&cursor).is_none()),
        "the cursor of a follower gone past the horizon is still registered"
    );
    // Should it come back after all, it follows as before.
    put_many(&leader.db, "later", 100);
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    assert!(leader.db.cursor(&cursor).is_some());
}

#[test]
fn a_restarted_leader_still_expires_the_cursors_of_followers_from_before() {
    let mut leader = leader(leader_options(), |o| {
        o.follower_cursor_horizon_ms = u64::MAX;
    });
    put_many(&leader.db, "k", 100);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    let cursor = format!("replica-{:016x}", follower.follower_id());
    follower.stop();
    leader.server.take().unwrap().stop();
    assert!(leader.db.cursor(&cursor).is_some());
    // The next server knows the follower from the database alone.
    let mut options = ReplicationOptions::new(leader.auth.clone());
    options.follower_cursor_horizon_ms = 300;
    let _server = ReplicationServer::start(&leader.db, "127.0.0.1:0", options).unwrap();
    assert!(
        common::wait_for(CONVERGE, || leader.db.cursor(&cursor).is_none()),
        "the restarted leader did not expire the cursor"
    );
}

/// The age of a follower's cursor is kept with it: a leader restarted
/// more often than the horizon still forgets a follower that never
/// returns (the wall clock here is a manual one, so only the kept age
/// can expire the cursor).
#[test]
fn a_cursor_older_than_the_horizon_is_expired_by_a_new_server_at_once() {
    let clock = Arc::new(mergekv::ManualClock::new(1_000_000_000));
    let options = leader_options().with_wall_clock(clock.clone());
    let mut leader = leader(options, |o| o.follower_cursor_horizon_ms = u64::MAX);
    let cursor = "replica-00000000000000ab";
    leader.db.set_cursor(cursor, 1).unwrap();
    leader.server.take().unwrap().stop();
    clock.advance_ms(10_000);
    let mut options = ReplicationOptions::new(leader.auth.clone());
    options.follower_cursor_horizon_ms = 5_000;
    let _server = ReplicationServer::start(&leader.db, "127.0.0.1:0", options).unwrap();
    assert!(
        common::wait_for(CONVERGE, || leader.db.cursor(cursor).is_none()),
        "a cursor last set 10 s ago (by the wall clock) outlived a 5 s horizon"
    );
}

/// A repaired follower (its WAL cut, or its snapshot salvaged with chunks
/// lost) may lack data its stored position claims: it starts from a
/// snapshot, and the install settles the repair.
#[test]
fn a_repaired_follower_starts_from_a_snapshot() {
    let leader = leader(leader_options(), |_| {});
    put_many(&leader.db, "k", 300);
    let dir = tempfile::tempdir().unwrap();
    {
        let follower = follow(dir.path(), &leader);
        converge(&follower, &leader);
        assert_eq!(follower.status().snapshots_installed, 0, "a WAL catch-up");
    }
    // What a repair leaves: its marker (the data it dropped is gone).
    std::fs::write(dir.path().join("REPAIRED"), "salvaged a snapshot").unwrap();
    put_many(&leader.db, "m", 10);
    let follower = follow(dir.path(), &leader);
    assert!(
        follower.wait_until(CONVERGE, |s| s.snapshots_installed >= 1),
        "{:?}",
        follower.status()
    );
    converge(&follower, &leader);
    assert!(
        !dir.path().join("REPAIRED").exists(),
        "settled by the install"
    );
    drop(follower);
    let follower = follow(dir.path(), &leader);
    converge(&follower, &leader);
    assert_eq!(
        follower.status().snapshots_installed,
        0,
        "back to catching up"
    );
}

/// A copy of a follower's directory (a cloned VM, a restored backup beside
/// its original) gets an id of its own: both follow, side by side, each
/// under its own retention cursor.
#[test]
fn a_copied_follower_directory_follows_under_its_own_id() {
    let leader = leader(leader_options(), |_| {});
    put_many(&leader.db, "k", 100);
    let dir = tempfile::tempdir().unwrap();
    let original_id = {
        let follower = follow(dir.path(), &leader);
        converge(&follower, &leader);
        follower.follower_id()
    };
    let copy = common::copy_db(dir.path());
    let a = follow(dir.path(), &leader);
    let b = follow(copy.path(), &leader);
    assert_eq!(a.follower_id(), original_id);
    assert_ne!(b.follower_id(), original_id, "the copy has its own id");
    put_many(&leader.db, "m", 50);
    converge(&a, &leader);
    converge(&b, &leader);
    assert!(
        leader
            .db
            .cursor(&format!("replica-{:016x}", a.follower_id()))
            .is_some()
    );
    assert!(
        leader
            .db
            .cursor(&format!("replica-{:016x}", b.follower_id()))
            .is_some()
    );
}
