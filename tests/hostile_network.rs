//! A leader under a hostile network (issue 12, defects 4 and 5): hundreds
//! of unauthenticated connections, some trickling a HELLO a byte at a
//! time, some announcing a huge HELLO and pushing bytes after it, all
//! reconnecting as soon as the leader closes them, while a legitimate
//! follower keeps streaming. The leader's threads and memory must stay
//! bounded (by `handshakes_max`, not by the number of attackers), and the
//! follower must keep receiving new writes throughout.
//!
//! The figures come from `/proc/self` (this process is the leader, the
//! follower and the attacker at once), so the file holds this one test
//! and nothing runs beside it. They are printed; run with
//! `cargo test --test hostile_network -- --nocapture` to see
//! them. Attackers: `MERGEKV_HOSTILE_CONNECTIONS` (default 500).
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::server::{ReplicationOptions, ReplicationServer};
use mergekv::{Db, Options, SyncMode};

/// Attackers when `MERGEKV_HOSTILE_CONNECTIONS` is not set.
const DEFAULT_CONNECTIONS: usize = 500;
/// Connections the leader lets wait for authentication at once.
const HANDSHAKES_MAX: usize = 16;
/// The leader's whole-handshake deadline: short, so the test is quick.
const HANDSHAKE_TIMEOUT_MS: u64 = 500;
/// A slow attacker sends one byte this often: each read the leader makes
/// gets a byte well within a per-read timeout of the handshake deadline.
const TRICKLE_INTERVAL: Duration = Duration::from_millis(200);
/// A slow attacker's frame: a header announcing a HELLO of the largest
/// size, then that many bytes (which do not make a HELLO).
const SLOW_PAYLOAD_BYTES: u32 = 300;
const SLOW_FRAME_BYTES: usize = 16 + SLOW_PAYLOAD_BYTES as usize;
/// A closed attacker connects again after this long.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);
/// An oversized attacker announces this much HELLO payload...
const OVERSIZED_ANNOUNCED_BYTES: u32 = 256 << 20;
/// ...and sends up to this much of it per connection.
const OVERSIZED_SENT_BYTES_MAX: usize = 4 << 20;
/// The attack goes on until the leader has closed this many attacker
/// connections per attacker (refused at accept or cut off later)...
const CLOSES_PER_ATTACKER: usize = 3;
/// ...and the follower has applied this many writes made during it...
const WRITES_DURING_ATTACK: u64 = 200;
/// ...and slow attackers that were let in (no refusal at accept) have been
/// cut off at the handshake deadline this many times over per slot.
const DEADLINE_CUTS_PER_SLOT: usize = 2;
/// Generous bound on the whole attack; it ends as soon as both hold.
const ATTACK_DEADLINE: Duration = Duration::from_secs(120);
/// Generous bound on the waits for a condition.
const CONVERGE: Duration = Duration::from_secs(60);
/// Threads a session may take to exit after giving back its handshake
/// slot, so a few more than `HANDSHAKES_MAX` can exist for a moment.
const EXITING_THREADS_SLACK: usize = 8;
/// The process's memory high-water mark may grow by at most this much
/// under the attack (measured: under 1 MiB). Were a HELLO read up to the
/// general frame limit, each oversized attacker let in would cost up to
/// `OVERSIZED_SENT_BYTES_MAX`.
const RSS_GROWTH_KIB_MAX: u64 = 8 * 1024;
/// Pause of the attack loop (the attack's own pace).
const TICK: Duration = Duration::from_millis(10);

/// A field of `/proc/self/status` (a count, or kB for memory).
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Threads of this process whose name starts with `prefix` (thread names
/// are cut to 15 bytes in `/proc`).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// The leader's threads: accept, expiry and one per connection.
fn leader_threads() -> usize {
    threads_named("mergekv-repl")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Trickles a HELLO, a byte every `TRICKLE_INTERVAL`.
    Slow,
    /// Announces a huge HELLO and pushes payload after the header.
    Oversized,
}

/// One attacker: a connection, when it may act next, and what it sent.
struct Attacker {
    kind: Kind,
    socket: Option<TcpStream>,
    next: Instant,
    sent: usize,
}

/// What the attack saw.
#[derive(Default)]
struct Figures {
    connects: usize,
    closed_by_leader: usize,
    /// Slow attackers closed after their second byte but before the end
    /// of their frame: let in, then cut off at the handshake deadline (one
    /// refused at accept is closed at once).
    slow_cut_off: usize,
    leader_threads_max: usize,
    process_threads_max: u64,
    rss_kib_max: u64,
}

impl Attacker {
    fn act(&mut self, leader: SocketAddr, now: Instant, figures: &mut Figures) {
        if now < self.next {
            return;
        }
        let Some(socket) = &mut self.socket else {
            self.connect(leader, now, figures);
            return;
        };
        if common::closed_or_answered(socket) || !self.send_more(now) {
            self.socket = None;
            figures.closed_by_leader += 1;
            if self.kind == Kind::Slow && (2..SLOW_FRAME_BYTES).contains(&self.sent) {
                figures.slow_cut_off += 1;
            }
            self.next = now + RECONNECT_INTERVAL;
        }
    }

    fn connect(&mut self, leader: SocketAddr, now: Instant, figures: &mut Figures) {
        self.next = now + RECONNECT_INTERVAL;
        let Ok(socket) = TcpStream::connect_timeout(&leader, Duration::from_millis(100)) else {
            return;
        };
        socket.set_nonblocking(true).unwrap();
        figures.connects += 1;
        self.sent = 0;
        self.socket = Some(socket);
        self.next = now;
    }

    /// Sends the next bytes; false if the leader closed the connection.
    fn send_more(&mut self, now: Instant) -> bool {
        let Some(socket) = &mut self.socket else {
            return false;
        };
        let header = hello_header(match self.kind {
            Kind::Slow => SLOW_PAYLOAD_BYTES,
            Kind::Oversized => OVERSIZED_ANNOUNCED_BYTES,
        });
        let bytes: Vec<u8> = match self.kind {
            Kind::Slow => {
                self.next = now + TRICKLE_INTERVAL;
                vec![header.get(self.sent).copied().unwrap_or(b't')]
            }
            Kind::Oversized if self.sent < header.len() => header.to_vec(),
            Kind::Oversized if self.sent < OVERSIZED_SENT_BYTES_MAX => vec![0u8; 64 * 1024],
            Kind::Oversized => return true,
        };
        match socket.write(&bytes) {
            Ok(n) => {
                self.sent += n;
                true
            }
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        }
    }
}

/// A HELLO frame header announcing `payload_bytes`, with a valid header
/// checksum (docs/PROTOCOL.md).
fn hello_header(payload_bytes: u32) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&payload_bytes.to_le_bytes());
    header[4] = 1;
    let crc = crc32c::crc32c(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

fn connections() -> usize {
    std::env::var("MERGEKV_HOSTILE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CONNECTIONS)
}

#[test]
fn hundreds_of_slow_or_oversized_unauthenticated_connections_cost_bounded_threads_and_memory() {
    let leader_dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(
        leader_dir.path(),
        Options::default().with_sync_mode(SyncMode::Never),
    )
    .unwrap();
    let (auth, token) = common::replication_auth(&db);
    let mut options = ReplicationOptions::new(auth);
    options.heartbeat_interval_ms = 50;
    options.handshakes_max = HANDSHAKES_MAX;
    options.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
    let server = ReplicationServer::start(&db, "127.0.0.1:0", options).unwrap();
    let addr = server.local_addr();

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower_options = FollowerOptions::new(addr.to_string(), token);
    follower_options.db_options.sync_mode = SyncMode::Never;
    follower_options.backoff_initial_ms = 10;
    follower_options.backoff_max_ms = 200;
    let follower = Follower::open(follower_dir.path(), follower_options).unwrap();
    db.put("before", "the attack").unwrap();
    assert!(follower.wait_for_seq(db.stats().wal.last_seq, CONVERGE));

    let baseline_threads = proc_status("Threads:");
    let baseline_leader_threads = leader_threads();
    let baseline_rss_kib = proc_status("VmRSS:");
    let baseline_hwm_kib = proc_status("VmHWM:");
    let attackers_count = connections();
    let mut attackers: Vec<Attacker> = (0..attackers_count)
        .map(|i| Attacker {
            kind: if i % 2 == 0 {
                Kind::Slow
            } else {
                Kind::Oversized
            },
            socket: None,
            next: Instant::now(),
            sent: 0,
        })
        .collect();
    let mut figures = Figures::default();
    let attack_start = Instant::now();
    let seq_at_start = follower.status().position.seq;
    let mut writes = 0u64;
    loop {
        let now = Instant::now();
        for attacker in &mut attackers {
            attacker.act(addr, now, &mut figures);
        }
        db.put(format!("during{writes:06}"), "x").unwrap();
        writes += 1;
        figures.leader_threads_max = figures.leader_threads_max.max(leader_threads());
        figures.process_threads_max = figures.process_threads_max.max(proc_status("Threads:"));
        figures.rss_kib_max = figures.rss_kib_max.max(proc_status("VmRSS:"));
        let applied_during = follower.status().position.seq.saturating_sub(seq_at_start);
        if figures.closed_by_leader >= CLOSES_PER_ATTACKER * attackers_count
            && applied_during >= WRITES_DURING_ATTACK
            && figures.slow_cut_off >= DEADLINE_CUTS_PER_SLOT * HANDSHAKES_MAX
        {
            break;
        }
        assert!(
            attack_start.elapsed() < ATTACK_DEADLINE,
            "the attack did not reach its end: {} closed, {} slow ones cut off at the deadline, \
             {applied_during} applied, {:?}",
            figures.closed_by_leader,
            figures.slow_cut_off,
            follower.status()
        );
        // The attack's own pace.
        std::thread::sleep(TICK);
    }
    let hwm_kib = proc_status("VmHWM:");
    let stats = server.stats();
    drop(attackers);

    eprintln!(
        "hostile network: {attackers_count} attackers ({} connects, {} closed by the leader, \
         {} refused at accept, {} slow ones cut off at the handshake deadline) in {:.1} s; leader threads max {} (baseline {baseline_leader_threads}, \
         handshakes_max {HANDSHAKES_MAX}); process threads max {} (baseline {baseline_threads}); \
         VmRSS max {} KiB (baseline {baseline_rss_kib}); VmHWM {hwm_kib} KiB (before {baseline_hwm_kib}); \
         follower applied {} of {writes} writes during the attack",
        figures.connects,
        figures.closed_by_leader,
        stats.connections_refused,
        figures.slow_cut_off,
        attack_start.elapsed().as_secs_f64(),
        figures.leader_threads_max,
        figures.process_threads_max,
        figures.rss_kib_max,
        follower.status().position.seq.saturating_sub(seq_at_start),
    );

    let leader_threads_bound = baseline_leader_threads + HANDSHAKES_MAX + EXITING_THREADS_SLACK;
    assert!(
        figures.leader_threads_max <= leader_threads_bound,
        "leader threads reached {} (bound {leader_threads_bound})",
        figures.leader_threads_max
    );
    assert!(
        figures.process_threads_max
            <= baseline_threads + (HANDSHAKES_MAX + EXITING_THREADS_SLACK) as u64,
        "process threads reached {} (baseline {baseline_threads})",
        figures.process_threads_max
    );
    assert!(
        hwm_kib <= baseline_hwm_kib.max(baseline_rss_kib) + RSS_GROWTH_KIB_MAX,
        "memory high-water mark {hwm_kib} KiB (before {baseline_hwm_kib} KiB)"
    );
    // The follower received every write, and the attackers' slots and
    // threads are all given back.
    assert!(
        follower.wait_for_seq(db.stats().wal.last_seq, CONVERGE),
        "{:?}",
        follower.status()
    );
    assert_eq!(follower.db().digest().unwrap(), db.digest().unwrap());
    assert!(
        common::wait_for(CONVERGE, || server.stats().handshakes_pending == 0
            && leader_threads() <= baseline_leader_threads),
        "pending {}, leader threads {}",
        server.stats().handshakes_pending,
        leader_threads()
    );
    assert_eq!(server.followers().len(), 1, "the follower stayed connected");
}
