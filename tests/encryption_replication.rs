//! Replication from an encrypted leader: a follower with the key catches
//! up, takes a snapshot and streams; one without it refuses before
//! applying anything.

mod common;

use std::time::Duration;

use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::server::{ReplicationOptions, ReplicationServer};
use mergekv::{Batch, Db, EncryptionKey, KeySource, Options, SyncMode};

const CONVERGE: Duration = Duration::from_secs(60);

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; 32])
}

fn put_many(db: &Db, prefix: &str, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut batch = Batch::new();
        for i in chunk {
            batch.put(format!("{prefix}{i:06}"), format!("SECRET-VALUE-{i}"));
        }
        db.write(batch).unwrap();
    }
}

fn follower_options(addr: &str, token: &str, k: Option<EncryptionKey>) -> FollowerOptions {
    let mut options = FollowerOptions::new(addr, token);
    options.db_options.sync_mode = SyncMode::Never;
    options.db_options.encryption_key = k.map(KeySource::Key);
    options.backoff_initial_ms = 10;
    options.backoff_max_ms = 200;
    options.idle_timeout_ms = 2_000;
    options
}

#[test]
fn an_encrypted_leader_ships_to_a_follower_with_its_key_by_catch_up_snapshot_and_stream() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = Db::open_with(
        leader_dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_segment_size_bytes_max(16 * 1024)
            .with_wal_retention_bytes_max(0)
            .with_encryption_key(Some(KeySource::Key(key(1)))),
    )
    .unwrap();
    let (auth, token) = common::replication_auth(&leader);
    let mut options = ReplicationOptions::new(auth);
    options.heartbeat_interval_ms = 50;
    options.snapshot_chunk_bytes = 4096;
    options.batch_bytes_target = 16 * 1024;
    let server = ReplicationServer::start(&leader, "127.0.0.1:0", options).unwrap();
    let addr = server.local_addr().to_string();
    put_many(&leader, "early", 2_000);

    // Catch-up, then streaming.
    let dir = tempfile::tempdir().unwrap();
    let follower =
        Follower::open(dir.path(), follower_options(&addr, &token, Some(key(1)))).unwrap();
    assert!(
        follower.wait_for_seq(leader.stats().wal.last_seq, CONVERGE),
        "{:?}",
        follower.status()
    );
    put_many(&leader, "streamed", 500);
    assert!(
        follower.wait_for_seq(leader.stats().wal.last_seq, CONVERGE),
        "{:?}",
        follower.status()
    );
    assert_eq!(follower.db().digest().unwrap(), leader.digest().unwrap());
    assert!(follower.status().batches_applied > 1);
    follower.stop();

    // Away while the leader compacts its WAL away: a snapshot next.
    put_many(&leader, "late", 3_000);
    leader.compact_now().unwrap();
    leader.put("after-compaction", "1").unwrap();
    let follower =
        Follower::open(dir.path(), follower_options(&addr, &token, Some(key(1)))).unwrap();
    assert!(
        follower.wait_for_seq(leader.stats().wal.last_seq, CONVERGE),
        "{:?}",
        follower.status()
    );
    assert_eq!(
        follower.status().snapshots_installed,
        1,
        "{:?}",
        follower.status()
    );
    assert_eq!(follower.db().digest().unwrap(), leader.digest().unwrap());
    assert_eq!(
        follower.db().get("late002999").unwrap().as_deref(),
        Some(&b"SECRET-VALUE-2999"[..])
    );
    follower.stop();
    drop(server);
    leader.close().unwrap();
    common::assert_nothing_in_clear(leader_dir.path(), &[b"SECRET-VALUE-"]);
    common::assert_nothing_in_clear(dir.path(), &[b"SECRET-VALUE-"]);
}

#[test]
fn a_follower_without_the_leaders_key_refuses_before_applying_anything() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = Db::open_with(
        leader_dir.path(),
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_encryption_key(Some(KeySource::Key(key(1)))),
    )
    .unwrap();
    let (auth, token) = common::replication_auth(&leader);
    let mut options = ReplicationOptions::new(auth);
    options.heartbeat_interval_ms = 50;
    let server = ReplicationServer::start(&leader, "127.0.0.1:0", options).unwrap();
    let addr = server.local_addr().to_string();
    put_many(&leader, "k", 100);
    for (name, k) in [("wrong key", Some(key(2))), ("no key", None)] {
        let dir = tempfile::tempdir().unwrap();
        let follower = Follower::open(dir.path(), follower_options(&addr, &token, k)).unwrap();
        let refused = common::wait_for(CONVERGE, || {
            follower
                .status()
                .last_error
                .is_some_and(|e| e.contains(&key(1).id().to_string()))
        });
        assert!(refused, "{name}: {:?}", follower.status());
        let status = follower.status();
        assert_eq!(status.batches_applied, 0, "{name}: {status:?}");
        assert_eq!(status.snapshots_installed, 0, "{name}: {status:?}");
        assert_eq!(follower.db().get("k000001").unwrap(), None, "{name}");
        follower.stop();
    }
}
