//! A leader shipping its write-ahead log to a read-only follower over TCP.
//!
//! The leader writes, then starts serving on a loopback port; a follower
//! connects, catches up on what was written before it came, and then
//! receives each new write as it happens. Writing to the follower is
//! refused: it is a read replica until promoted (`Db::promote`).
//!
//! Run it with `cargo run --example leader_follower`.

use std::sync::Arc;
use std::time::Duration;

use mergekv::replication::{
    ErrorCode, Follower, FollowerOptions, ReplicationAuth, ReplicationOptions, ReplicationServer,
};
use mergekv::{Batch, Db, Error, ScanOptions};

/// How long to wait for the follower before giving up. The wait ends as
/// soon as the follower has caught up, usually within milliseconds.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may follow: here, whoever presents one shared token. With the `auth`
/// feature, an `AuthService` can do this instead (API keys with the
/// `replicate` scope, see the README's "Leader and followers").
struct SharedToken(String);

impl ReplicationAuth for SharedToken {
    fn authorize_replication(&self, token: &str) -> Result<(), ErrorCode> {
        // Compare in constant time, so the time taken tells nothing about
        // how much of a guess was right.
        let (a, b) = (token.as_bytes(), self.0.as_bytes());
        let differ = a
            .iter()
            .zip(b)
            .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
        if differ == 0 {
            Ok(())
        } else {
            Err(ErrorCode::Unauthenticated)
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh folder under the system's temporary directory, removed when
    // `scratch` is dropped. Real copies would live on different machines.
    let scratch = tempfile::Builder::new()
        .prefix("mergekv-leader-follower-")
        .tempdir()?;

    // The leader writes 1,000 keys before any follower exists.
    let leader = Db::open(scratch.path().join("leader"))?;
    for chunk in 0..10 {
        let mut batch = Batch::new(); // one atomic, durable write of 100 keys
        for i in chunk * 100..(chunk + 1) * 100 {
            batch.put(format!("item:{i:04}"), format!("value {i}"));
        }
        leader.write(batch)?;
    }

    // Serve replication on a loopback port (port 0: the system picks a
    // free one). In production, pick a port, and enable the `tls` feature
    // and `ReplicationOptions::tls`: without TLS the token crosses the
    // network in clear.
    let token = "a long random secret shared out of band"; // from your secrets store
    let auth = Arc::new(SharedToken(token.to_string()));
    let server = ReplicationServer::start(&leader, "127.0.0.1:0", ReplicationOptions::new(auth))?;
    let address = server.local_addr().to_string();
    println!("leader serving replication on {address}");

    // The follower opens its own directory (read-only) and follows on a
    // background thread, reconnecting by itself if the connection drops.
    let follower = Follower::open(
        scratch.path().join("follower"),
        FollowerOptions::new(address.as_str(), token),
    )?;

    // Catch-up: wait, with a deadline, until the follower holds everything
    // up to the leader's latest sequence number (no fixed sleep).
    wait_for(&follower, &leader)?;
    let items = follower.db().scan(&ScanOptions::prefix("item:")).count();
    assert_eq!(items, 1000);
    println!("caught up: the follower holds {items} items");

    // Streaming: new writes on the leader reach the follower as they happen.
    leader.put("item:0000", "changed on the leader")?;
    leader.delete("item:0001")?;
    leader.increment("page-views", 42)?;
    wait_for(&follower, &leader)?;
    let replica = follower.db();
    assert_eq!(
        replica.get("item:0000")?.as_deref(),
        Some(&b"changed on the leader"[..])
    );
    assert_eq!(replica.get("item:0001")?, None);
    assert_eq!(replica.counter("page-views")?, 42);
    assert_eq!(replica.digest()?.root, leader.digest()?.root);
    let status = follower.status();
    println!(
        "streaming: the follower is at seq {} of {}, {} batches applied, lag {} seqs",
        status.position.seq, status.leader_seq, status.batches_applied, status.lag_seqs
    );

    // A follower is read-only.
    match replica.put("item:9999", "written on the follower") {
        Err(Error::ReadOnly { .. }) => println!("a write to the follower is refused"),
        other => return Err(format!("a write to the follower was not refused: {other:?}").into()),
    }

    follower.stop();
    server.stop();
    Ok(())
}

/// Waits until `follower` holds everything `leader` has written, or fails
/// after [`CATCH_UP_TIMEOUT`].
fn wait_for(follower: &Follower, leader: &Db) -> Result<(), Box<dyn std::error::Error>> {
    let target = leader.stats().wal.last_seq;
    if follower.wait_for_seq(target, CATCH_UP_TIMEOUT) {
        Ok(())
    } else {
        Err(format!(
            "the follower did not reach seq {target} within {CATCH_UP_TIMEOUT:?}: {:?}",
            follower.status()
        )
        .into())
    }
}
