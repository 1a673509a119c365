//! The follower's transport: connects to the leader, drives a
//! [`FollowerMachine`], applies what it says through the database's durable
//! path, and reconnects with exponential backoff and jitter.
//!
//! One background thread per follower. Every message is validated whole by
//! the machine before anything is applied; any failure closes the
//! connection, and the next one resumes from the durable position.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use super::ProtocolError;
use super::apply;
use super::follower::{FollowerAction, FollowerMachine, SNAPSHOT_BYTES_MAX_DEFAULT};
use super::frame::FRAME_PAYLOAD_BYTES_MAX;
use super::message::Cursor;
use super::transport::{Connection, TimedSocket, Transport};
use crate::db::Db;
use crate::db::FollowerPosition;
use crate::engine::panic_message;
use crate::error::{Error, Result};
use crate::io::IoFile;
use crate::options::Options;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Name of the file a snapshot is received into, in the database directory.
/// It lives only while a transfer is under way: removed once its bytes are
/// verified and read back (before they are installed), when a transfer is
/// cut short, and at [`Follower::open`] (a follower killed mid-transfer or
/// mid-install leaves one behind).
use crate::meta::INCOMING_SNAPSHOT_FILE;

/// How a follower connects. Start from [`FollowerOptions::new`]. and change
/// what you need with the chainable `with_*` setters (one per field, each
/// taking the field's own type) or by assigning fields. The struct is
/// `#[non_exhaustive]`, so fields can be added in a minor release; code
/// outside this crate cannot build it with a struct literal.
#[derive(Clone)]
#[non_exhaustive]
pub struct FollowerOptions {
    /// The leader's address (`host:port`).
    pub leader: String,
    /// An API key with the `replicate` scope.
    pub token: String,
    /// The id to claim; by default this copy's node id.
    pub follower_id: Option<u64>,
    /// Options for the follower's own database (opened read-only).
    pub db_options: Options,
    /// How long a connection attempt may take (each of the TCP connect
    /// and, with TLS, the whole handshake).
    pub connect_timeout_ms: u64,
    /// Each message from the leader must have arrived whole within this
    /// long (plus `n / TRANSFER_BYTES_PER_SEC_MIN` seconds for a frame of
    /// `n` bytes, see [`super::transport::TRANSFER_BYTES_PER_SEC_MIN`]);
    /// otherwise the connection is closed and made again. The leader
    /// heartbeats when idle, so only a dead, stalled or trickling leader
    /// hits it. Sending the HELLO or an ACK has the same deadline.
    pub idle_timeout_ms: u64,
    /// First reconnect delay; doubles per failed attempt...
    pub backoff_initial_ms: u64,
    /// ...up to this. Each delay is drawn uniformly between half of it and
    /// all of it (jitter), so followers of a restarted leader spread out.
    pub backoff_max_ms: u64,
    /// Largest snapshot accepted, in bytes.
    pub snapshot_bytes_max: u64,
    /// TLS for the connection, with the name the leader's certificate
    /// must carry, if set.
    #[cfg(feature = "tls")]
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

impl std::fmt::Debug for FollowerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerOptions")
            .field("leader", &self.leader)
            .field("token", &"<redacted>")
            .field("follower_id", &self.follower_id)
            .finish_non_exhaustive()
    }
}

impl FollowerOptions {
    /// Defaults for following `leader` with `token`.
    pub fn new(leader: impl Into<String>, token: impl Into<String>) -> FollowerOptions {
        FollowerOptions {
            leader: leader.into(),
            token: token.into(),
            follower_id: None,
            db_options: Options::default(),
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 5_000,
            backoff_initial_ms: 50,
            backoff_max_ms: 5_000,
            snapshot_bytes_max: SNAPSHOT_BYTES_MAX_DEFAULT,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

crate::options::chainable_setters!(FollowerOptions {
    leader: String => with_leader;
    token: String => with_token;
    follower_id: Option<u64> => with_follower_id;
    db_options: Options => with_db_options;
    connect_timeout_ms: u64 => with_connect_timeout_ms;
    idle_timeout_ms: u64 => with_idle_timeout_ms;
    backoff_initial_ms: u64 => with_backoff_initial_ms;
    backoff_max_ms: u64 => with_backoff_max_ms;
    snapshot_bytes_max: u64 => with_snapshot_bytes_max;
    #[cfg(feature = "tls")]
    tls: Option<(Arc<rustls::ClientConfig>, String)> => with_tls;
});

/// Where a follower stands, from [`Follower::status`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct FollowerStatus {
    /// The leader's address.
    pub leader: String,
    /// True while a connection is up and past its handshake.
    pub connected: bool,
    /// The durable position (the cursor and what was known of the leader
    /// when it was stored).
    pub position: FollowerPosition,
    /// The leader's durable sequence number, as last heard.
    pub leader_seq: u64,
    /// Sequence numbers behind the leader.
    pub lag_seqs: u64,
    /// How long the follower has been behind the leader's last known
    /// position, in milliseconds (0 when caught up).
    pub lag_ms: u64,
    /// Connections made (including the first).
    pub connects: u64,
    /// Batches applied.
    pub batches_applied: u64,
    /// Snapshots installed.
    pub snapshots_installed: u64,
    /// Why the last connection ended, if it did.
    pub last_error: Option<String>,
}

struct Shared {
    db: Db,
    options: FollowerOptions,
    follower_id: u64,
    stop: AtomicBool,
    status: Mutex<FollowerStatus>,
    /// Notified whenever the status changes.
    changed: Condvar,
    behind_since: Mutex<Option<Instant>>,
    /// The live socket, to shut down on stop.
    socket: Mutex<Option<TcpStream>>,
    /// This connection has said it caught up (said once per connection:
    /// under steady writes the lag touches 0 after every batch).
    caught_up_said: AtomicBool,
}

/// A running follower: a read-only database kept up to date from a
/// leader. Stops when dropped (the directory stays a follower's until
/// [`Db::promote`]).
pub struct Follower {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("dir", &self.shared.db.dir())
            .field("leader", &self.shared.options.leader)
            .finish()
    }
}

impl Follower {
    /// Opens (creating if needed) the database in `dir` as a read-only
    /// follower of `options.leader`, and starts following in a background
    /// thread. The directory is marked as a follower's: opening it for
    /// writing fails with [`Error::ReadOnly`] until [`Db::promote`].
    ///
    /// # Errors
    ///
    /// As [`Db::open_with`] for the follower's own database; [`Error::Io`] if
    /// the follower marker or a staged snapshot cannot be written or removed;
    /// [`Error::Decode`] if the stored position is damaged; [`Error::Network`]
    /// if the follower thread cannot be started. Connection failures are not
    /// errors here: the thread retries, and [`Follower::status`] reports them.
    pub fn open(dir: impl AsRef<Path>, options: FollowerOptions) -> Result<Follower> {
        let dir = dir.as_ref();
        let mut db_options = options.db_options.clone();
        db_options.read_only = true;
        let db = Db::open_with(dir, db_options)?;
        discard_staged_snapshot(&db)?;
        apply::mark_follower(&db, &options.leader)?;
        let position = db.follower_position()?.unwrap_or_default();
        let shared = Arc::new(Shared {
            follower_id: options.follower_id.unwrap_or(db.node_id().0),
            status: Mutex::new(FollowerStatus {
                leader: options.leader.clone(),
                position,
                leader_seq: position.leader_seq,
                lag_seqs: position.lag_seqs(),
                ..FollowerStatus::default()
            }),
            db,
            options,
            stop: AtomicBool::new(false),
            changed: Condvar::new(),
            behind_since: Mutex::new(None),
            socket: Mutex::new(None),
            caught_up_said: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mergekv-follower".into())
            .spawn(move || {
                let span = tracing::info_span!(
                    "mergekv.follower",
                    leader = %thread_shared.options.leader,
                    path = %thread_shared.db.dir().display(),
                    follower_id = thread_shared.follower_id,
                );
                let _entered = span.enter();
                follow_guarded(&thread_shared);
            })
            .map_err(|e| Error::Network {
                what: "starting the follower thread".into(),
                source: Arc::new(e),
            })?;
        Ok(Follower {
            shared,
            thread: Some(thread),
        })
    }

    /// The follower's database (read-only: writes fail with
    /// [`Error::ReadOnly`]).
    pub fn db(&self) -> &Db {
        &self.shared.db
    }

    /// The id this follower claims at the leader.
    pub fn follower_id(&self) -> u64 {
        self.shared.follower_id
    }

    /// Where it stands now.
    pub fn status(&self) -> FollowerStatus {
        let mut status = self.shared.status.lock().clone();
        status.lag_ms = lag_ms(&self.shared);
        status
    }

    /// Waits until the durable position reaches leader sequence number
    /// `seq`, or `timeout` passes; true if it did.
    pub fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.position.seq >= seq)
    }

    /// Waits until `done` holds for the status, or `timeout` passes; true
    /// if it did.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&FollowerStatus) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut status = self.shared.status.lock();
        while !done(&status) {
            if self
                .shared
                .changed
                .wait_until(&mut status, deadline)
                .timed_out()
            {
                return done(&status);
            }
        }
        true
    }

    /// Stops following (closing the connection) and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        {
            // Under the status lock, so the follower thread cannot check
            // `stop` and then start its backoff wait after this notify
            // (a lost wakeup would hold `stop` for up to `backoff_max_ms`).
            let _status = self.shared.status.lock();
            self.shared.stop.store(true, Ordering::Release);
        }
        if let Some(socket) = self.shared.socket.lock().take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lag_ms(shared: &Shared) -> u64 {
    shared
        .behind_since
        .lock()
        .map_or(0, |since| since.elapsed().as_millis() as u64)
}

/// The reconnect delay before attempt `attempt` (0-based): exponential
/// from `initial_ms` up to `max_ms`, then drawn between half of that and
/// all of it by `random`.
pub fn backoff_delay_ms(attempt: u32, initial_ms: u64, max_ms: u64, random: u64) -> u64 {
    let ceiling = initial_ms
        .max(1)
        .saturating_mul(1u64 << attempt.min(32))
        .min(max_ms.max(1));
    let floor = ceiling / 2;
    floor + random % (ceiling - floor + 1)
}

/// Runs the follower; a panic in it poisons the database (fail-stop, like
/// any write path) and is reported in the status instead of vanishing
/// with the thread.
fn follow_guarded(shared: &Arc<Shared>) {
    let Err(panic) = catch_unwind(AssertUnwindSafe(|| follow_loop(shared))) else {
        return;
    };
    let cause = format!("follower thread panicked: {}", panic_message(&panic));
    shared.db.engine().poison(&cause);
    let mut status = shared.status.lock();
    status.connected = false;
    status.last_error = Some(cause);
    drop(status);
    shared.changed.notify_all();
}

fn follow_loop(shared: &Arc<Shared>) {
    let mut attempt = 0u32;
    while !shared.stop.load(Ordering::Acquire) {
        let mut progressed = false;
        let ended = run_connection(shared, &mut progressed);
        match &ended {
            Ok(()) => tracing::info!("disconnected from the leader: stopping"),
            Err(e) => tracing::warn!(error = %e, "disconnected from the leader"),
        }
        {
            let mut status = shared.status.lock();
            status.connected = false;
            if let Err(e) = ended {
                status.last_error = Some(e.to_string());
            }
        }
        shared.changed.notify_all();
        if let Err(e) = shared.db.engine().check_usable() {
            // Poisoned or closed: nothing more can be applied until reopen.
            if !matches!(e, Error::Closed) {
                tracing::error!(error = %e, "following stopped: the database is unusable");
            }
            return;
        }
        if progressed {
            attempt = 0;
        }
        let delay = backoff_delay_ms(
            attempt,
            shared.options.backoff_initial_ms,
            shared.options.backoff_max_ms,
            random_u64(),
        );
        if !shared.stop.load(Ordering::Acquire) {
            tracing::debug!(attempt, delay_ms = delay, "reconnecting to the leader");
        }
        attempt = attempt.saturating_add(1);
        let deadline = Instant::now() + Duration::from_millis(delay);
        let mut status = shared.status.lock();
        while !shared.stop.load(Ordering::Acquire) {
            if shared.changed.wait_until(&mut status, deadline).timed_out() {
                break;
            }
        }
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    Protocol(ProtocolError),
    Db(Error),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Protocol(e) => e.fmt(f),
            Ended::Db(e) => write!(f, "applying failed: {e}"),
        }
    }
}

impl From<ProtocolError> for Ended {
    fn from(e: ProtocolError) -> Self {
        Ended::Protocol(e)
    }
}

impl From<Error> for Ended {
    fn from(e: Error) -> Self {
        Ended::Db(e)
    }
}

/// The addresses of `leader`, looked up within `timeout`. The system
/// resolver has no deadline of its own, so the lookup runs on a thread of
/// its own; one that outlives the deadline ends when the resolver gives up
/// (its result is dropped).
fn resolve(leader: &str, timeout: Duration) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let (done, result) = crossbeam_channel::bounded(1);
    let name = leader.to_string();
    std::thread::Builder::new()
        .name("mergekv-resolve".into())
        .spawn(move || {
            let _ = done.send(name.to_socket_addrs().map(Iterator::collect));
        })?;
    match result.recv_timeout(timeout) {
        Ok(addrs) => addrs,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "looking up {leader} took longer than {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

fn connect(shared: &Shared) -> std::result::Result<Connection, ProtocolError> {
    let options = &shared.options;
    let timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
    let addrs = resolve(&options.leader, timeout).map_err(ProtocolError::io)?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                if let Ok(socket) = stream.try_clone() {
                    *shared.socket.lock() = Some(socket);
                }
                return wrap(stream, shared);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ProtocolError::io(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the leader address resolves to nothing",
        )
    })))
}

fn wrap(stream: TcpStream, shared: &Shared) -> std::result::Result<Connection, ProtocolError> {
    let socket = TimedSocket::new(stream);
    let idle = Duration::from_millis(shared.options.idle_timeout_ms.max(1));
    #[cfg(feature = "tls")]
    if let Some((config, name)) = &shared.options.tls {
        let server_name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            ProtocolError::Malformed {
                reason: format!("TLS server name {name:?}: {e}"),
            }
        })?;
        let tls = rustls::ClientConnection::new(config.clone(), server_name).map_err(|e| {
            ProtocolError::Malformed {
                reason: format!("TLS setup: {e}"),
            }
        })?;
        let handshake =
            Instant::now() + Duration::from_millis(shared.options.connect_timeout_ms.max(1));
        let stream = super::tls::TlsStream::client(tls, socket, handshake).map_err(|e| {
            ProtocolError::io(std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))
        })?;
        let stream: Box<dyn Transport> = Box::new(stream);
        return Ok(Connection::new(stream, FRAME_PAYLOAD_BYTES_MAX, idle));
    }
    let stream: Box<dyn Transport> = Box::new(socket);
    Ok(Connection::new(stream, FRAME_PAYLOAD_BYTES_MAX, idle))
}

/// One connection, from HELLO until it fails or the follower stops.
fn run_connection(shared: &Shared, progressed: &mut bool) -> std::result::Result<(), Ended> {
    let db = &shared.db;
    let options = &shared.options;
    let mut conn = connect(shared)?;
    if shared.stop.load(Ordering::Acquire) {
        return Ok(());
    }
    let keyring = db.engine().wal().keyring().read().clone();
    let mut machine = FollowerMachine::new(
        apply::start_cursor(db)?,
        options.snapshot_bytes_max,
        keyring,
    );
    conn.send(&machine.hello(shared.follower_id, &options.token))?;
    shared.status.lock().connects += 1;
    shared.caught_up_said.store(false, Ordering::Release);
    tracing::info!(cursor_seq = machine.cursor().seq, "connected to the leader");
    let mut staging: Option<IoFile> = None;
    let ended = serve_messages(shared, &mut conn, &mut machine, &mut staging, progressed);
    if staging.take().is_some() {
        // A transfer cut short: its bytes are never needed again (the next
        // connection starts a new one). Best effort; the next transfer
        // truncates the file and the next open removes it.
        let _ = discard_staged_snapshot(db);
    }
    ended
}

/// Takes messages and does what the machine says, until the connection
/// fails or the follower stops.
fn serve_messages(
    shared: &Shared,
    conn: &mut Connection,
    machine: &mut FollowerMachine,
    staging: &mut Option<IoFile>,
    progressed: &mut bool,
) -> std::result::Result<(), Ended> {
    let idle = Duration::from_millis(shared.options.idle_timeout_ms.max(1));
    while !shared.stop.load(Ordering::Acquire) {
        let message = conn.recv(idle)?;
        let before = machine.cursor();
        let actions = machine.on_message(message)?;
        let streaming = machine.is_streaming();
        for action in actions {
            let ack = perform(shared, action, before, staging, streaming)?;
            if ack {
                conn.send(&machine.ack())?;
                *progressed = true;
            }
        }
    }
    Ok(())
}

/// Does what the machine said; true if an ACK is due.
fn perform(
    shared: &Shared,
    action: FollowerAction,
    before: Cursor,
    staging: &mut Option<IoFile>,
    streaming: bool,
) -> std::result::Result<bool, Ended> {
    let db = &shared.db;
    let staging_path = staging_path(db.dir());
    match action {
        FollowerAction::LeaderPosition { leader_seq } => {
            note_leader(shared, leader_seq, true, streaming);
            Ok(false)
        }
        FollowerAction::SnapshotStart { .. } => {
            *staging = Some(db.io().create_truncate(&staging_path)?);
            Ok(false)
        }
        FollowerAction::SnapshotBytes { bytes, .. } => {
            let file = staging.as_mut().ok_or(ProtocolError::OutOfOrder {
                got: "SNAPSHOT_CHUNK",
                state: "no snapshot started",
            })?;
            file.write_all(&bytes)?;
            Ok(false)
        }
        FollowerAction::InstallSnapshot { cursor, leader_key } => {
            // No fsync of the staged bytes: they are read back now and
            // never again. Crash-safe order: read and check the snapshot,
            // remove the staged file, then install. A crash before the
            // install leaves the stored position where it was, so the next
            // connection gets a new snapshot; nothing refers to the staged
            // file after the read, and at most one copy of it is on disk
            // beside the installed state.
            drop(staging.take());
            let snapshot = apply::read_replicated(db, &staging_path, cursor.seq, leader_key)?;
            discard_staged_snapshot(db)?;
            let position = stored_position(shared, cursor);
            apply::install_replicated(db, snapshot, position)?;
            let mut status = shared.status.lock();
            status.snapshots_installed += 1;
            drop(status);
            tracing::info!(seq = cursor.seq, "leader snapshot installed");
            applied(shared, position);
            Ok(true)
        }
        FollowerAction::Apply { cursor, records } => {
            let position = stored_position(shared, cursor);
            let content = records.content_hash();
            apply::apply_replicated(
                db,
                records.into_records(),
                &content,
                before.seq.saturating_add(1),
                position,
            )?;
            shared.status.lock().batches_applied += 1;
            applied(shared, position);
            Ok(true)
        }
    }
}

fn staging_path(dir: &Path) -> PathBuf {
    dir.join(INCOMING_SNAPSHOT_FILE)
}

/// Removes the staged snapshot file, if there is one.
fn discard_staged_snapshot(db: &Db) -> Result<()> {
    match db.io().remove_file(&staging_path(db.dir())) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The position to store with data reaching `cursor`.
fn stored_position(shared: &Shared, cursor: Cursor) -> FollowerPosition {
    let leader_seq = shared.status.lock().leader_seq.max(cursor.seq);
    FollowerPosition {
        stream: cursor.stream,
        epoch: cursor.epoch,
        seq: cursor.seq,
        leader_seq,
        stored_ms: shared.db.wall_now_ms(),
    }
}

/// Records the leader's position (from a WELCOME or HEARTBEAT, or implied
/// by a batch) and starts or stops the lag clock.
fn note_leader(shared: &Shared, leader_seq: u64, announced: bool, streaming: bool) {
    let mut status = shared.status.lock();
    status.connected = true;
    // A WELCOME or HEARTBEAT says where the leader is (a new leader may be
    // at a lower number); a batch only shows it is at least that far.
    status.leader_seq = if announced {
        leader_seq
    } else {
        status.leader_seq.max(leader_seq)
    };
    status.lag_seqs = status.leader_seq.saturating_sub(status.position.seq);
    // Not while a snapshot is still to come: the position is then not
    // in the leader's history yet.
    let caught_up =
        (streaming && status.lag_seqs == 0 && !shared.caught_up_said.swap(true, Ordering::AcqRel))
            .then_some(status.position.seq);
    let mut behind = shared.behind_since.lock();
    match (status.lag_seqs, *behind) {
        (0, _) => *behind = None,
        (_, None) => *behind = Some(Instant::now()),
        (_, Some(_)) => {}
    }
    drop(behind);
    drop(status);
    shared.changed.notify_all();
    // Outside the status lock: a subscriber may do I/O.
    if let Some(seq) = caught_up {
        tracing::info!(seq, "caught up with the leader");
    }
}

fn applied(shared: &Shared, position: FollowerPosition) {
    {
        let mut status = shared.status.lock();
        status.position = position;
        status.last_error = None;
    }
    note_leader(shared, position.seq, false, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_address_is_resolved_within_its_deadline() {
        let addrs = resolve("127.0.0.1:4000", Duration::from_secs(5)).unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:4000".parse().unwrap()]);
        assert!(resolve("no port here", Duration::from_secs(5)).is_err());
    }
}
