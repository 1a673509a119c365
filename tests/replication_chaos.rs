//! WAL shipping through a hostile network: a proxy in the test sits between
//! the follower and the leader and, in the leader → follower direction,
//! drops, duplicates and delays whole replication frames and cuts
//! connections; in the other direction it relays bytes and now and then
//! cuts. The follower must notice every lost or repeated frame (a gap or a
//! rewind closes the connection), resume from its durable cursor, and end
//! with exactly the leader's state, every increment counted once.
//!
//! A dropped frame followed only by heartbeats goes unnoticed (a heartbeat
//! says where the leader is, not what this connection carried) until the
//! next batch shows the gap. So the waits under chaos are for what earlier
//! rounds wrote, and turning chaos off cuts every connection.
//!
//! Seed: `MERGEKV_CHAOS_SEED` (default fixed, printed); rounds of writes
//! under chaos: `MERGEKV_CHAOS_ROUNDS` (default 4; more run if some kind of
//! fault has not happened yet).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Rng;
use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::server::{ReplicationOptions, ReplicationServer};
use mergekv::{Batch, Db, Options, SyncMode};

/// Long enough for a loaded 2-core machine; the waits end as soon as the
/// condition holds.
const CONVERGE: Duration = Duration::from_secs(60);
/// The seed when `MERGEKV_CHAOS_SEED` is not set.
const DEFAULT_SEED: u64 = 0x6d6b_7663_6861_6f73;
/// Rounds of writes under chaos when `MERGEKV_CHAOS_ROUNDS` is not set...
const DEFAULT_ROUNDS: u64 = 4;
/// ...and at most this many, when some kind of fault is still missing.
const ROUNDS_MAX: u64 = 40;
/// Counter keys the workload increments.
const COUNTERS: usize = 4;

/// Per leader → follower frame while chaos is on, in thousandths.
const DROP_PERMILLE: u64 = 30;
const DUPLICATE_PERMILLE: u64 = 30;
const DELAY_PERMILLE: u64 = 40;
const CUT_PERMILLE: u64 = 15;
/// Per chunk of follower → leader bytes while chaos is on, in thousandths.
const UPSTREAM_CUT_PERMILLE: u64 = 10;
/// A delayed frame waits up to this long (the delay is the fault itself).
const DELAY_MS_MAX: u64 = 10;
/// The replication frame header (docs/PROTOCOL.md): the payload length is
/// its first four bytes.
const FRAME_HEADER_BYTES: usize = 16;

// The leader and follower, as in tests/replication.rs.

struct Leader {
    _dir: tempfile::TempDir,
    db: Db,
    server: ReplicationServer,
    token: String,
}

fn leader() -> Leader {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().with_sync_mode(SyncMode::Never);
    let db = Db::open_with(dir.path(), options).unwrap();
    let (auth, token) = common::replication_auth(&db);
    let mut options = ReplicationOptions::new(auth);
    // Small batches and frequent heartbeats: many frames to perturb.
    options.batch_bytes_target = 2 * 1024;
    options.heartbeat_interval_ms = 20;
    let server = ReplicationServer::start(&db, "127.0.0.1:0", options).unwrap();
    Leader {
        _dir: dir,
        db,
        server,
        token,
    }
}

impl Leader {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn last_seq(&self) -> u64 {
        self.db.stats().wal.last_seq
    }
}

fn follow(dir: &Path, proxy: SocketAddr, token: &str) -> Follower {
    let mut options = FollowerOptions::new(proxy.to_string(), token);
    options.db_options.sync_mode = SyncMode::Never;
    // Quick to come back: every lost or repeated frame costs a reconnect.
    options.backoff_initial_ms = 5;
    options.backoff_max_ms = 100;
    options.idle_timeout_ms = 500;
    Follower::open(dir, options).unwrap()
}

// The proxy.

/// What the proxy did to the traffic.
#[derive(Default)]
struct Faults {
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    cut: AtomicU64,
    cut_upstream: AtomicU64,
    /// Frames read from the leader, perturbed or not.
    frames: AtomicU64,
    connections: AtomicU64,
}

impl Faults {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// True once every kind of leader → follower fault has happened.
    fn all_kinds(&self) -> bool {
        [&self.dropped, &self.duplicated, &self.delayed, &self.cut]
            .into_iter()
            .all(|c| Faults::get(c) > 0)
    }

    fn summary(&self) -> String {
        format!(
            "{} connections, {} frames from the leader; injected: {} dropped, {} duplicated, \
             {} delayed, {} cut (leader → follower), {} cut (follower → leader)",
            Faults::get(&self.connections),
            Faults::get(&self.frames),
            Faults::get(&self.dropped),
            Faults::get(&self.duplicated),
            Faults::get(&self.delayed),
            Faults::get(&self.cut),
            Faults::get(&self.cut_upstream),
        )
    }
}

/// One relayed connection: both sockets, kept to cut them from outside.
struct Link {
    follower: TcpStream,
    leader: TcpStream,
}

impl Link {
    fn cut(&self) {
        let _ = self.follower.shutdown(Shutdown::Both);
        let _ = self.leader.shutdown(Shutdown::Both);
    }
}

struct ProxyShared {
    leader: SocketAddr,
    seed: u64,
    chaos: AtomicBool,
    stop: AtomicBool,
    faults: Faults,
    links: parking_lot::Mutex<HashMap<u64, Link>>,
    relays: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

/// A TCP proxy on loopback that perturbs replication traffic while its
/// chaos flag is on.
struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(leader: SocketAddr, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            leader,
            seed,
            chaos: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            faults: Faults::default(),
            links: parking_lot::Mutex::new(HashMap::new()),
            relays: parking_lot::Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(&listener, &accept_shared));
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Turns chaos off and cuts every live connection, so that no frame
    /// perturbed before the switch (a drop whose gap no later batch would
    /// reveal, say) outlives it: the follower reconnects over a clean
    /// link. A connection registered after the cut already sees chaos off.
    fn calm(&self) {
        self.shared.chaos.store(false, Ordering::SeqCst);
        for link in self.shared.links.lock().values() {
            link.cut();
        }
    }

    /// Stops the proxy (see `shutdown`).
    fn stop(mut self) {
        self.shutdown();
    }

    /// Stops accepting (waking the accept call with a connection of its
    /// own), cuts every connection and waits for all the threads.
    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return; // stopped already
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = accept.join();
        for link in self.shared.links.lock().values() {
            link.cut();
        }
        let relays = std::mem::take(&mut *self.shared.relays.lock());
        for relay in relays {
            let _ = relay.join();
        }
    }
}

impl Drop for Proxy {
    /// Also when a failed assertion unwinds past the proxy.
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ProxyShared>) {
    for (id, incoming) in (0u64..).zip(listener.incoming()) {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(follower) = incoming else { continue };
        // The leader is up for the whole test; if it refuses, the follower
        // sees its connection closed and tries again.
        let Ok(leader) = TcpStream::connect(shared.leader) else {
            continue;
        };
        Faults::bump(&shared.faults.connections);
        let _ = follower.set_nodelay(true);
        let _ = leader.set_nodelay(true);
        let link = Link {
            follower: follower.try_clone().unwrap(),
            leader: leader.try_clone().unwrap(),
        };
        shared.links.lock().insert(id, link);
        // Each connection, each direction, its own stream of decisions.
        let seed = shared.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let down = {
            let (from, to, shared) = (
                leader.try_clone().unwrap(),
                follower.try_clone().unwrap(),
                shared.clone(),
            );
            std::thread::spawn(move || relay_down(from, to, Rng::new(seed), id, &shared))
        };
        let up = {
            let shared = shared.clone();
            std::thread::spawn(move || relay_up(follower, leader, Rng::new(!seed), id, &shared))
        };
        let mut relays = shared.relays.lock();
        relays.retain(|r| !r.is_finished());
        relays.extend([down, up]);
    }
}

/// Closes both sockets of connection `id` and forgets it.
fn end_link(shared: &ProxyShared, id: u64) {
    if let Some(link) = shared.links.lock().remove(&id) {
        link.cut();
    }
}

/// One whole replication frame (header and payload), or `None` once the
/// connection ends.
fn read_frame(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut frame = vec![0u8; FRAME_HEADER_BYTES];
    from.read_exact(&mut frame).ok()?;
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    frame.resize(FRAME_HEADER_BYTES + len, 0);
    from.read_exact(&mut frame[FRAME_HEADER_BYTES..]).ok()?;
    Some(frame)
}

enum Fault {
    Drop,
    Duplicate,
    Delay(Duration),
    Cut,
}

/// The fault for the next frame, if any.
fn draw_fault(rng: &mut Rng) -> Option<Fault> {
    let roll = rng.below(1000);
    let mut bound = 0;
    let mut within = |permille| {
        bound += permille;
        roll < bound
    };
    if within(DROP_PERMILLE) {
        Some(Fault::Drop)
    } else if within(DUPLICATE_PERMILLE) {
        Some(Fault::Duplicate)
    } else if within(DELAY_PERMILLE) {
        Some(Fault::Delay(Duration::from_millis(
            1 + rng.below(DELAY_MS_MAX),
        )))
    } else if within(CUT_PERMILLE) {
        Some(Fault::Cut)
    } else {
        None
    }
}

/// Leader → follower, frame by frame, perturbed while chaos is on.
fn relay_down(mut from: TcpStream, mut to: TcpStream, mut rng: Rng, id: u64, shared: &ProxyShared) {
    let faults = &shared.faults;
    while let Some(frame) = read_frame(&mut from) {
        Faults::bump(&faults.frames);
        let fault = if shared.chaos.load(Ordering::SeqCst) {
            draw_fault(&mut rng)
        } else {
            None
        };
        let copies = match fault {
            None => 1,
            Some(Fault::Drop) => {
                Faults::bump(&faults.dropped);
                0
            }
            Some(Fault::Duplicate) => {
                Faults::bump(&faults.duplicated);
                2
            }
            Some(Fault::Delay(delay)) => {
                Faults::bump(&faults.delayed);
                // The delay is the injected fault, not synchronisation.
                std::thread::sleep(delay);
                1
            }
            Some(Fault::Cut) => {
                Faults::bump(&faults.cut);
                break;
            }
        };
        if (0..copies).any(|_| to.write_all(&frame).is_err()) {
            break;
        }
    }
    end_link(shared, id);
}

/// Follower → leader (HELLO and ACKs), as raw bytes, now and then cut
/// while chaos is on.
fn relay_up(mut from: TcpStream, mut to: TcpStream, mut rng: Rng, id: u64, shared: &ProxyShared) {
    let mut buffer = [0u8; 4096];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.chaos.load(Ordering::SeqCst) && rng.below(1000) < UPSTREAM_CUT_PERMILLE {
            Faults::bump(&shared.faults.cut_upstream);
            break;
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    end_link(shared, id);
}

// The workload.

/// Writes one round of puts, deletes and increments, in batches and
/// singles; adds the increments to `totals`. A batch touches each key at
/// most once (the engine refuses more).
fn write_round(db: &Db, round: u64, rng: &mut Rng, totals: &mut [i64; COUNTERS]) {
    let mut delta = |rng: &mut Rng, counter: usize| {
        let delta = rng.below(9) as i64 - 3;
        totals[counter] += delta;
        delta
    };
    for b in 0..20u64 {
        let mut batch = Batch::new();
        for counter in 0..COUNTERS {
            batch.increment(format!("counter-{counter}"), delta(rng, counter));
        }
        for i in 0..25u64 {
            if rng.below(3) == 0 {
                // The previous batch's key at this index.
                batch.delete(format!("r{round}-b{}-{i}", b.saturating_sub(1)));
            } else {
                batch.put(
                    format!("r{round}-b{b}-{i}"),
                    format!("value {round} {b} {i}"),
                );
            }
        }
        db.write(batch).unwrap();
    }
    for i in 0..200u64 {
        match rng.below(4) {
            0 => {
                let counter = rng.below(COUNTERS as u64) as usize;
                db.increment(format!("counter-{counter}"), delta(rng, counter))
                    .unwrap();
            }
            1 => {
                // Some deletes hit keys of earlier rounds, some miss.
                let earlier = rng.below(round + 1);
                db.delete(format!("r{earlier}-s{}", rng.below(200)))
                    .unwrap();
            }
            _ => {
                db.put(format!("r{round}-s{i}"), format!("single {round} {i}"))
                    .unwrap();
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[test]
fn a_loopback_network_with_drops_duplicates_delays_and_disconnects_the_follower_converges() {
    let seed = env_u64("MERGEKV_CHAOS_SEED").unwrap_or(DEFAULT_SEED);
    let rounds = env_u64("MERGEKV_CHAOS_ROUNDS").unwrap_or(DEFAULT_ROUNDS);
    eprintln!("chaos seed {seed} (MERGEKV_CHAOS_SEED), {rounds} rounds");
    let started = Instant::now();
    let leader = leader();
    let proxy = Proxy::start(leader.addr(), seed);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), proxy.addr, &leader.token);

    let mut workload = Rng::new(seed.rotate_left(17));
    let mut totals = [0i64; COUNTERS];
    let mut round = 0;
    while round < rounds || (!proxy.faults().all_kinds() && round < ROUNDS_MAX) {
        let before = leader.last_seq();
        write_round(&leader.db, round, &mut workload, &mut totals);
        // Keep the follower working through the chaos, without waiting for
        // the very tail: a dropped last frame is only revealed by a later
        // batch (or by the cut in `calm`), and this round's writes bring
        // plenty of later batches for everything before them.
        assert!(
            follower.wait_for_seq(before, CONVERGE),
            "round {round}: follower stuck at {:?}, waiting for {before}; {}",
            follower.status(),
            proxy.faults().summary()
        );
        round += 1;
    }
    eprintln!("{round} rounds under chaos: {}", proxy.faults().summary());
    assert!(
        proxy.faults().all_kinds(),
        "some kind of fault never happened: {}",
        proxy.faults().summary()
    );

    proxy.calm();
    let target = leader.last_seq();
    assert!(
        follower.wait_for_seq(target, CONVERGE),
        "follower stuck at {:?}, leader at {target}",
        follower.status()
    );
    assert_eq!(follower.db().digest().unwrap(), leader.db.digest().unwrap());
    assert_eq!(follower.db().stats().keys, leader.db.stats().keys);
    for (counter, total) in totals.iter().enumerate() {
        let key = format!("counter-{counter}");
        assert_eq!(
            leader.db.counter(&key).unwrap(),
            *total,
            "{key} on the leader"
        );
        assert_eq!(
            follower.db().counter(&key).unwrap(),
            *total,
            "{key} on the follower"
        );
    }
    let status = follower.status();
    eprintln!(
        "converged at seq {target} after {:?}: {} connects, {} batches applied, last error {:?}",
        started.elapsed(),
        status.connects,
        status.batches_applied,
        status.last_error
    );
    assert!(status.connects > 1, "{status:?}");
    assert_eq!(status.snapshots_installed, 0, "the WAL was all kept");

    follower.stop();
    proxy.stop();
}
