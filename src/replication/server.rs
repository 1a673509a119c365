//! The leader's transport: accepts followers over TCP (or TLS), drives a
//! [`LeaderMachine`] per connection, ships snapshots and WAL batches.
//!
//! One accept thread, and one thread per connection. A connection's thread
//! authenticates its HELLO, refuses a second live connection claiming the
//! same follower id, sends a snapshot if the follower needs one, then
//! streams durable WAL frames as group commits make them shippable, with
//! heartbeats when idle.
//!
//! Until its token has authenticated, a connection is a pending handshake:
//! at most `handshakes_max` of them at once (the accept thread closes any
//! more at once), each reading one frame no larger than a HELLO, all of
//! the handshake within `handshake_timeout_ms`. So unauthenticated peers
//! cost the leader a bounded number of threads and bytes, however many
//! connect and however slowly they send.
//!
//! Each follower's acknowledged position is registered with the compactor's retention hook under
//! `replica-<follower id>`, so the segments it still needs are kept (up to
//! `wal_retention_bytes_max`; beyond that it gets a snapshot next time).
//! A thread of its own forgets the cursors of followers away for longer
//! than `follower_cursor_horizon_ms` (see `retention.rs`).

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::ProtocolError;
use super::leader::LeaderMachine;
use super::message::{
    ErrorCode, FOLLOWER_PAYLOAD_BYTES_MAX, HELLO_PAYLOAD_BYTES_MAX, Message, StartMode,
};
use super::retention::FollowerRegistry;
use super::ship;
use super::transport::{Connection, TimedSocket, Transport};
#[cfg(feature = "auth")]
use crate::auth::{AuthService, Scope};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::wal::reader::{WalRead, WalReader};

/// The longest wait to send an ERROR before closing a connection (it is
/// best effort: the connection is closed either way).
const ERROR_SEND_WAIT: Duration = Duration::from_secs(1);
/// The expiry of followers' cursors runs at least this often...
const EXPIRY_CHECK_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// ...and at most this often (with a tiny horizon, in tests).
const EXPIRY_CHECK_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Connections made to wake the accept thread on stop, at most (each
/// waits up to a second; the first normally does it).
const WAKE_ATTEMPTS_MAX: usize = 30;
/// The default `follower_cursor_horizon_ms`: 7 days.
pub const FOLLOWER_CURSOR_HORIZON_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;

/// How a leader decides whether a HELLO's token may replicate.
pub trait ReplicationAuth: Send + Sync {
    /// `Ok` if `token` may follow this leader; otherwise the ERROR code to
    /// refuse with ([`ErrorCode::Unauthenticated`] or
    /// [`ErrorCode::Forbidden`]).
    ///
    /// # Errors
    ///
    /// The [`ErrorCode`] the leader refuses the follower with:
    /// [`ErrorCode::Unauthenticated`] for a token it does not accept,
    /// [`ErrorCode::Forbidden`] for one that may not replicate.
    fn authorize_replication(&self, token: &str) -> std::result::Result<(), ErrorCode>;
}

/// The auth service lets a token follow if its API key has the
/// `replicate` scope.
#[cfg(feature = "auth")]
impl ReplicationAuth for AuthService {
    fn authorize_replication(&self, token: &str) -> std::result::Result<(), ErrorCode> {
        match self.authorize(token, Scope::Replicate) {
            Ok(_) => Ok(()),
            Err(Error::Auth(crate::auth::AuthError::ScopeMissing { .. })) => {
                Err(ErrorCode::Forbidden)
            }
            Err(_) => Err(ErrorCode::Unauthenticated),
        }
    }
}

/// How a leader serves followers. Start from [`ReplicationOptions::new`]. and change
/// what you need with the chainable `with_*` setters (one per field, each
/// taking the field's own type) or by assigning fields. The struct is
/// `#[non_exhaustive]`, so fields can be added in a minor release; code
/// outside this crate cannot build it with a struct literal.
#[derive(Clone)]
#[non_exhaustive]
pub struct ReplicationOptions {
    /// Decides which tokens may follow.
    pub auth: Arc<dyn ReplicationAuth>,
    /// A HEARTBEAT goes out after this long without a BATCH.
    pub heartbeat_interval_ms: u64,
    /// A BATCH holds whole WAL frames up to about this many bytes (a
    /// larger single frame goes alone).
    pub batch_bytes_target: usize,
    /// Snapshot bytes per SNAPSHOT_CHUNK.
    pub snapshot_chunk_bytes: usize,
    /// Most followers connected at once; more are refused with
    /// [`ErrorCode::Unavailable`].
    pub followers_max: usize,
    /// Most connections awaiting authentication at once (accepted, HELLO
    /// not yet authenticated). The accept thread closes any connection
    /// beyond this at once, so unauthenticated peers hold at most this
    /// many threads.
    pub handshakes_max: usize,
    /// Total time a new connection has, from its accept, to finish the TLS
    /// handshake (if any) and deliver a HELLO whose token authenticates.
    /// It is a deadline for the whole handshake, not a timeout per read.
    pub handshake_timeout_ms: u64,
    /// Base time to send one message to a follower, all of it; a message
    /// of `n` bytes gets `n / TRANSFER_BYTES_PER_SEC_MIN` seconds more
    /// (see [`super::transport::TRANSFER_BYTES_PER_SEC_MIN`]). A follower
    /// that reads slower closes its session.
    pub send_timeout_ms: u64,
    /// A follower away this long (since its last session ended, or since
    /// this server started for one known from an earlier run) loses its
    /// retention cursor: it no longer holds back WAL truncation or
    /// tombstone GC, and if it returns after its segments are gone it gets
    /// a snapshot. Default [`FOLLOWER_CURSOR_HORIZON_MS_DEFAULT`] (7 days);
    /// `u64::MAX` keeps cursors for good.
    pub follower_cursor_horizon_ms: u64,
    /// TLS for every connection, if set.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ReplicationOptions {
    /// Defaults, with `auth` deciding who may follow.
    pub fn new(auth: Arc<dyn ReplicationAuth>) -> ReplicationOptions {
        ReplicationOptions {
            auth,
            heartbeat_interval_ms: 1000,
            batch_bytes_target: 4 * 1024 * 1024,
            snapshot_chunk_bytes: 1024 * 1024,
            followers_max: 64,
            handshakes_max: 32,
            handshake_timeout_ms: 10_000,
            send_timeout_ms: 30_000,
            follower_cursor_horizon_ms: FOLLOWER_CURSOR_HORIZON_MS_DEFAULT,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl std::fmt::Debug for ReplicationOptions {
    // By hand: `auth` is a trait object without `Debug`, and the TLS
    // configuration holds the private key; neither is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ReplicationOptions");
        d.field("auth", &"<dyn ReplicationAuth>")
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("batch_bytes_target", &self.batch_bytes_target)
            .field("snapshot_chunk_bytes", &self.snapshot_chunk_bytes)
            .field("followers_max", &self.followers_max)
            .field("handshakes_max", &self.handshakes_max)
            .field("handshake_timeout_ms", &self.handshake_timeout_ms)
            .field("send_timeout_ms", &self.send_timeout_ms)
            .field(
                "follower_cursor_horizon_ms",
                &self.follower_cursor_horizon_ms,
            );
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.as_ref().map(|_| "<rustls::ServerConfig>"));
        d.finish()
    }
}

crate::options::chainable_setters!(ReplicationOptions {
    auth: Arc<dyn ReplicationAuth> => with_auth;
    heartbeat_interval_ms: u64 => with_heartbeat_interval_ms;
    batch_bytes_target: usize => with_batch_bytes_target;
    snapshot_chunk_bytes: usize => with_snapshot_chunk_bytes;
    followers_max: usize => with_followers_max;
    handshakes_max: usize => with_handshakes_max;
    handshake_timeout_ms: u64 => with_handshake_timeout_ms;
    send_timeout_ms: u64 => with_send_timeout_ms;
    follower_cursor_horizon_ms: u64 => with_follower_cursor_horizon_ms;
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>> => with_tls;
});

/// Connection figures of a leader, from [`ReplicationServer::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections awaiting authentication now.
    pub handshakes_pending: usize,
    /// Connections closed at accept because `handshakes_max` were pending.
    pub connections_refused: u64,
}

/// A follower the leader is serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectedFollower {
    /// Its id (from its HELLO).
    pub follower_id: u64,
    /// Its address.
    pub peer: String,
    /// The last sequence number it acknowledged as durable.
    pub acked_seq: u64,
    /// The last sequence number sent to it.
    pub sent_seq: u64,
}

struct Shared {
    db: Db,
    options: ReplicationOptions,
    epoch: u64,
    stop: AtomicBool,
    followers: Mutex<HashMap<u64, ConnectedFollower>>,
    /// Sockets of live connections, to shut down on stop.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    sessions: Mutex<Vec<JoinHandle<()>>>,
    next_session: AtomicU64,
    /// Connections between accept and authentication.
    handshakes_pending: AtomicUsize,
    connections_refused: AtomicU64,
    /// The followers holding a retention cursor.
    registry: FollowerRegistry,
    /// Set (with `stop`) when stopping, to wake the expiry thread.
    stopping: Mutex<bool>,
    stopping_changed: Condvar,
}

/// A running leader; stops (closing every connection) when dropped.
pub struct ReplicationServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    expiry: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ReplicationServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationServer")
            .field("addr", &self.addr)
            .field("epoch", &self.shared.epoch)
            .finish()
    }
}

impl ReplicationServer {
    /// Serves `db`'s WAL to followers on `addr` (port 0 picks a free one;
    /// see [`ReplicationServer::local_addr`]), in background threads,
    /// until the returned handle is stopped or dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`Db::close`]; [`Error::ReadOnly`] if `db` is
    /// read-only (a follower cannot lead); [`Error::Network`] if `addr` cannot
    /// be bound or a server thread cannot be started; as [`Db::put`] if the
    /// leader's replication epoch cannot be read or stored (a new epoch is
    /// stored on the first start and after a repair), and
    /// [`Error::InvalidCommand`] if no randomness is available for it.
    pub fn start(
        db: &Db,
        addr: impl ToSocketAddrs,
        options: ReplicationOptions,
    ) -> Result<ReplicationServer> {
        db.check_writable()?;
        let listener =
            TcpListener::bind(addr).map_err(|e| network("binding the replication listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| network("reading the listener address", e))?;
        let shared = Arc::new(Shared {
            db: db.clone(),
            epoch: ship::replication_epoch(db)?,
            options,
            stop: AtomicBool::new(false),
            followers: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            sessions: Mutex::new(Vec::new()),
            next_session: AtomicU64::new(0),
            handshakes_pending: AtomicUsize::new(0),
            connections_refused: AtomicU64::new(0),
            registry: FollowerRegistry::load(db),
            stopping: Mutex::new(false),
            stopping_changed: Condvar::new(),
        });
        let expiry_shared = shared.clone();
        let expiry = std::thread::Builder::new()
            .name("mergekv-repl-expiry".into())
            .spawn(move || expiry_loop(&expiry_shared))
            .map_err(|e| network("starting the replication expiry thread", e))?;
        let mut server = ReplicationServer {
            addr,
            shared: shared.clone(),
            accept: None,
            expiry: Some(expiry),
        };
        let accept = std::thread::Builder::new()
            .name("mergekv-repl-accept".into())
            .spawn(move || accept_loop(&listener, &shared))
            .map_err(|e| network("starting the replication accept thread", e))?;
        server.accept = Some(accept);
        tracing::info!(
            path = %db.dir().display(),
            addr = %addr,
            epoch = server.shared.epoch,
            "replication leader started"
        );
        Ok(server)
    }
}

fn network(what: &str, e: std::io::Error) -> Error {
    Error::Network {
        what: what.to_string(),
        source: Arc::new(e),
    }
}

impl ReplicationServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The epoch it serves (see `docs/PROTOCOL.md`).
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Connection figures.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            handshakes_pending: self.shared.handshakes_pending.load(Ordering::Acquire),
            connections_refused: self.shared.connections_refused.load(Ordering::Relaxed),
        }
    }

    /// The followers connected now.
    pub fn followers(&self) -> Vec<ConnectedFollower> {
        let mut list: Vec<_> = self.shared.followers.lock().values().cloned().collect();
        list.sort_by_key(|f| f.follower_id);
        list
    }

    /// Stops accepting, closes every connection (telling followers the
    /// leader is going away) and waits for the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.accept.is_some() {
            tracing::info!(addr = %self.addr, "replication leader stopping");
        }
        self.shared.stop.store(true, Ordering::Release);
        *self.shared.stopping.lock() = true;
        self.shared.stopping_changed.notify_all();
        if let Some(handle) = self.expiry.take() {
            let _ = handle.join();
        }
        // Wake the accept call with a connection of our own; again if the
        // listen queue was full (say, under a flood of connections) and the
        // attempt timed out before the accept thread saw the stop.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        if let Some(handle) = self.accept.take() {
            for _ in 0..WAKE_ATTEMPTS_MAX {
                let woken = TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok();
                if woken || handle.is_finished() {
                    break;
                }
            }
            let _ = handle.join();
        }
        for socket in self.shared.sockets.lock().values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        let sessions = std::mem::take(&mut *self.shared.sessions.lock());
        for handle in sessions {
            let _ = handle.join();
        }
    }
}

impl Drop for ReplicationServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let accepted_at = Instant::now();
        let Some(slot) = HandshakeSlot::take(shared) else {
            refuse_at_accept(stream, shared);
            continue;
        };
        // Registered here, before its thread runs, so a shutdown (which
        // joins this thread first) finds every session's socket.
        let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let Ok(socket) = stream.try_clone() else {
            continue;
        };
        shared.sockets.lock().insert(session, socket);
        let session_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("mergekv-repl-session".into())
            .spawn(move || serve_connection(stream, &session_shared, session, slot, accepted_at));
        match spawned {
            Ok(handle) => {
                let mut sessions = shared.sessions.lock();
                sessions.retain(|h| !h.is_finished());
                sessions.push(handle);
            }
            Err(_) => {
                shared.sockets.lock().remove(&session);
            }
        }
    }
}

/// A place among the `handshakes_max` connections awaiting authentication;
/// given back when dropped.
struct HandshakeSlot {
    shared: Arc<Shared>,
}

impl HandshakeSlot {
    fn take(shared: &Arc<Shared>) -> Option<HandshakeSlot> {
        let max = shared.options.handshakes_max;
        shared
            .handshakes_pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(HandshakeSlot {
            shared: shared.clone(),
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.shared
            .handshakes_pending
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes a connection accepted while `handshakes_max` others await
/// authentication. Over plain TCP it first says why, without waiting (the
/// socket is new, so its send buffer has room for one small frame).
fn refuse_at_accept(stream: TcpStream, shared: &Shared) {
    shared.connections_refused.fetch_add(1, Ordering::Relaxed);
    // Debug, not warn: a flood of connections must not flood the log.
    tracing::debug!("connection refused: too many awaiting authentication");
    #[cfg(feature = "tls")]
    if shared.options.tls.is_some() {
        return;
    }
    let refusal = Message::Error {
        code: ErrorCode::Unavailable,
        message: "too many connections awaiting authentication".into(),
    };
    if let (Ok(bytes), Ok(())) = (refusal.to_frame_bytes(), stream.set_nonblocking(true)) {
        let _ = (&stream).write(&bytes);
    }
}

fn serve_connection(
    stream: TcpStream,
    shared: &Arc<Shared>,
    session: u64,
    slot: HandshakeSlot,
    accepted_at: Instant,
) {
    let span = tracing::info_span!("mergekv.leader", path = %shared.db.dir().display());
    let _entered = span.enter();
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let handshake_deadline =
        accepted_at + Duration::from_millis(shared.options.handshake_timeout_ms);
    if let Some(mut conn) = wrap(stream, shared) {
        let mut session_state = Session {
            shared,
            peer,
            follower_id: None,
            machine: LeaderMachine::new(),
            key_id: None,
            handshake: Some(slot),
            handshake_deadline,
        };
        let ended = session_state.run(&mut conn);
        trace_session_end(session_state.follower_id, &session_state.peer, &ended);
        let error_deadline = Instant::now() + ERROR_SEND_WAIT;
        match ended {
            // Our own refusal: say why. The follower's ERROR or a dead
            // socket: nothing to say.
            Err(ProtocolError::Refused { code, message }) => {
                conn.send_error(code, &message, error_deadline);
            }
            Err(ProtocolError::Remote { .. } | ProtocolError::Io { .. }) | Ok(()) => {}
            Err(e) => conn.send_error(e.error_code(), &e.to_string(), error_deadline),
        }
        if let Some(id) = session_state.follower_id {
            let mut followers = shared.followers.lock();
            followers.remove(&id);
            // Under the followers lock: the expiry never sees the follower
            // gone with the contact of before this session.
            shared.registry.session_ended(id);
        }
    }
    shared.sockets.lock().remove(&session);
}

/// Says how a session ended: a follower that had connected, with the
/// reason (a lost socket or the follower's own ERROR at info, a protocol
/// error at warn); one refused before it connected, at warn.
fn trace_session_end(
    follower_id: Option<u64>,
    peer: &str,
    ended: &std::result::Result<(), ProtocolError>,
) {
    match (follower_id, ended) {
        (Some(id), Ok(())) => {
            tracing::info!(
                follower_id = id,
                peer,
                reason = "leader stopping",
                "follower disconnected"
            );
        }
        (Some(id), Err(e @ (ProtocolError::Io { .. } | ProtocolError::Remote { .. }))) => {
            tracing::info!(follower_id = id, peer, reason = %e, "follower disconnected");
        }
        (Some(id), Err(e)) => {
            tracing::warn!(follower_id = id, peer, reason = %e, "follower disconnected");
        }
        (None, Ok(())) => {}
        (None, Err(e)) => tracing::warn!(peer, reason = %e, "replication connection refused"),
    }
}

/// The connection over TLS if configured, plain TCP otherwise. It reads no
/// frame larger than a HELLO until the token has authenticated.
fn wrap(stream: TcpStream, shared: &Shared) -> Option<Connection> {
    let send_timeout = Duration::from_millis(shared.options.send_timeout_ms);
    let socket = TimedSocket::new(stream);
    #[cfg(feature = "tls")]
    if let Some(config) = &shared.options.tls {
        let tls = rustls::ServerConnection::new(config.clone()).ok()?;
        let stream: Box<dyn Transport> = Box::new(super::tls::TlsStream::server(tls, socket));
        return Some(Connection::new(
            stream,
            HELLO_PAYLOAD_BYTES_MAX,
            send_timeout,
        ));
    }
    let stream: Box<dyn Transport> = Box::new(socket);
    Some(Connection::new(
        stream,
        HELLO_PAYLOAD_BYTES_MAX,
        send_timeout,
    ))
}

struct Session<'a> {
    shared: &'a Arc<Shared>,
    peer: String,
    follower_id: Option<u64>,
    machine: LeaderMachine,
    /// Held until the token has authenticated.
    handshake: Option<HandshakeSlot>,
    /// The whole handshake (TLS, HELLO) ends by then.
    handshake_deadline: Instant,
    /// The key the WELCOME named (batches are sealed under it).
    key_id: Option<crate::crypto::KeyId>,
}

/// Closes a session with an ERROR of `code` saying `message`.
fn refuse(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
    ProtocolError::Refused {
        code,
        message: message.into(),
    }
}

impl Session<'_> {
    fn run(&mut self, conn: &mut Connection) -> std::result::Result<(), ProtocolError> {
        let options = &self.shared.options;
        let hello = conn.recv_until(self.handshake_deadline)?;
        let hello = self.machine.on_hello(hello)?;
        options
            .auth
            .authorize_replication(&hello.token)
            .map_err(|code| refuse(code, "the token may not replicate from this leader"))?;
        self.claim(hello.follower_id)?;
        // Authenticated: no longer a pending handshake, and from now on the
        // follower sends only ACKs (or an ERROR).
        self.handshake = None;
        conn.set_payload_limit(FOLLOWER_PAYLOAD_BYTES_MAX);
        self.check_stop()?;
        let db = &self.shared.db;
        let position = ship::leader_position(db, self.shared.epoch);
        self.key_id = position.key_id;
        let (welcome, mode) = self.machine.welcome(hello.cursor, position)?;
        conn.send(&welcome)?;
        tracing::info!(
            follower_id = hello.follower_id,
            peer = %self.peer,
            cursor_seq = hello.cursor.seq,
            start = ?mode,
            "follower connected"
        );
        let after_seq = match mode {
            StartMode::CatchUp => hello.cursor.seq,
            StartMode::Snapshot => self.send_snapshot(conn)?,
        };
        self.hold_wal(after_seq);
        self.stream(conn, after_seq)
    }

    /// Refuses to go on once the server is stopping.
    fn check_stop(&self) -> std::result::Result<(), ProtocolError> {
        if self.shared.stop.load(Ordering::Acquire) {
            return Err(refuse(
                ErrorCode::Unavailable,
                "the leader is shutting down",
            ));
        }
        Ok(())
    }

    /// Registers the follower id as live, or refuses a second connection
    /// claiming it.
    fn claim(&mut self, follower_id: u64) -> std::result::Result<(), ProtocolError> {
        let mut followers = self.shared.followers.lock();
        if followers.contains_key(&follower_id) {
            return Err(refuse(
                ErrorCode::DuplicateFollower,
                format!("follower {follower_id:016x} is already connected"),
            ));
        }
        if followers.len() >= self.shared.options.followers_max {
            return Err(refuse(ErrorCode::Unavailable, "too many followers"));
        }
        followers.insert(
            follower_id,
            ConnectedFollower {
                follower_id,
                peer: self.peer.clone(),
                acked_seq: 0,
                sent_seq: 0,
            },
        );
        self.follower_id = Some(follower_id);
        Ok(())
    }

    /// Keeps the WAL after `seq` for this follower (bounded by the
    /// retention limit). Past the cursor limit the follower simply is not
    /// held for, and gets a snapshot if it falls behind the WAL.
    fn hold_wal(&self, seq: u64) {
        if let Some(id) = self.follower_id {
            self.shared.registry.hold(id, seq);
            if let Some(f) = self.shared.followers.lock().get_mut(&id) {
                f.acked_seq = f.acked_seq.max(seq);
            }
        }
    }

    /// Sends the newest snapshot; returns the sequence number it covers.
    fn send_snapshot(&mut self, conn: &mut Connection) -> std::result::Result<u64, ProtocolError> {
        let db = &self.shared.db;
        let unavailable = |e: Error| refuse(ErrorCode::Unavailable, e.to_string());
        let snapshot = ship::snapshot_to_ship(db, |seq| self.hold_wal(seq)).map_err(unavailable)?;
        let (stream, epoch) = (db.node_id().0, self.shared.epoch);
        conn.send(&Message::SnapshotBegin {
            stream,
            epoch,
            snapshot_seq: snapshot.covered_seq,
            total_bytes: snapshot.size_bytes,
        })?;
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        let chunk_bytes = self.shared.options.snapshot_chunk_bytes.max(1);
        while offset < snapshot.size_bytes {
            self.check_stop()?;
            let want = chunk_bytes.min((snapshot.size_bytes - offset) as usize);
            let mut bytes = vec![0u8; want];
            let n = snapshot
                .file
                .read_at(offset, &mut bytes)
                .map_err(unavailable)?;
            if n == 0 {
                return Err(refuse(ErrorCode::Unavailable, "snapshot file ended early"));
            }
            bytes.truncate(n);
            hasher.update(&bytes);
            conn.send(&Message::SnapshotChunk {
                stream,
                epoch,
                offset,
                bytes,
            })?;
            offset += n as u64;
        }
        conn.send(&Message::SnapshotEnd {
            stream,
            epoch,
            digest: *hasher.finalize().as_bytes(),
        })?;
        self.machine.sent(snapshot.covered_seq);
        Ok(snapshot.covered_seq)
    }

    /// Ships durable WAL frames after `after_seq` for as long as the
    /// connection lives, with heartbeats when there is nothing to send.
    fn stream(
        &mut self,
        conn: &mut Connection,
        after_seq: u64,
    ) -> std::result::Result<(), ProtocolError> {
        let db = &self.shared.db;
        let wal = db.engine().wal();
        let options = &self.shared.options;
        let heartbeat = Duration::from_millis(options.heartbeat_interval_ms.max(1));
        // Short waits, so a stop is noticed promptly.
        let wait_slice = heartbeat.min(Duration::from_millis(100));
        let mut reader = WalReader::new(
            db.io(),
            db.engine().wal().keyring().clone(),
            after_seq.saturating_add(1),
        );
        let (stream, epoch) = (db.node_id().0, self.shared.epoch);
        let mut last_sent = Instant::now();
        loop {
            self.check_stop()?;
            self.take_acks(conn)?;
            let shipped_through = reader.next_seq() - 1;
            let shippable = wal
                .wait_shippable_beyond(shipped_through, wait_slice)
                .map_err(|e| refuse(ErrorCode::Unavailable, e.to_string()))?;
            let read = reader
                .read(wal, shippable, options.batch_bytes_target)
                .map_err(|e| refuse(ErrorCode::Unavailable, e.to_string()))?;
            match read {
                WalRead::Frames {
                    first_seq,
                    last_seq,
                    frame_count,
                    bytes,
                } => {
                    // An encrypted leader seals the frames it read (in
                    // clear) under its current key, bound to where they
                    // belong in the stream. A rotation since WELCOME ends
                    // the connection: the follower reconnects and learns
                    // the new key id.
                    let keyring = wal.keyring().read().clone();
                    if keyring.current_id() != self.key_id {
                        return Err(refuse(
                            ErrorCode::Unavailable,
                            "the leader's encryption key changed; reconnect",
                        ));
                    }
                    let context = super::follower::batch_context(
                        stream,
                        epoch,
                        first_seq,
                        last_seq,
                        frame_count,
                    );
                    let frames = crate::crypto::sealed::seal(
                        &keyring,
                        crate::crypto::sealed::SealedKind::ReplicationBatch,
                        &context,
                        bytes,
                    )
                    .map_err(|e| refuse(ErrorCode::Unavailable, e.to_string()))?;
                    conn.send(&Message::Batch {
                        stream,
                        epoch,
                        first_seq,
                        last_seq,
                        frame_count,
                        frames,
                    })?;
                    self.machine.sent(last_seq);
                    self.note_sent(last_seq);
                    last_sent = Instant::now();
                }
                WalRead::UpToDate if last_sent.elapsed() >= heartbeat => {
                    // The durable position, not what this session shipped:
                    // a stalled reader must not look caught up.
                    conn.send(&Message::Heartbeat {
                        stream,
                        epoch,
                        leader_seq: shippable.max(shipped_through),
                    })?;
                    last_sent = Instant::now();
                }
                WalRead::UpToDate => {}
                WalRead::Gone => {
                    return Err(refuse(
                        ErrorCode::Unavailable,
                        "the WAL this follower needs was compacted away; reconnect for a snapshot",
                    ));
                }
            }
        }
    }

    /// Takes every ACK that has arrived, and moves the retention cursor.
    fn take_acks(&mut self, conn: &mut Connection) -> std::result::Result<(), ProtocolError> {
        let mut newest = None;
        while let Some(message) = conn.try_recv()? {
            newest = Some(self.machine.on_ack(message)?);
        }
        if let Some(seq) = newest {
            self.hold_wal(seq);
        }
        Ok(())
    }

    fn note_sent(&self, seq: u64) {
        if let Some(id) = self.follower_id
            && let Some(f) = self.shared.followers.lock().get_mut(&id)
        {
            f.sent_seq = seq;
        }
    }
}

/// Forgets the cursors of followers away longer than the horizon, every
/// so often, until the server stops.
fn expiry_loop(shared: &Shared) {
    let horizon_ms = shared.options.follower_cursor_horizon_ms;
    let interval = Duration::from_millis(horizon_ms / 8)
        .clamp(EXPIRY_CHECK_INTERVAL_MIN, EXPIRY_CHECK_INTERVAL_MAX);
    let mut stopping = shared.stopping.lock();
    while !*stopping {
        if shared
            .stopping_changed
            .wait_for(&mut stopping, interval)
            .timed_out()
        {
            // Not under the stopping lock: the expiry writes to `_local`.
            parking_lot::MutexGuard::unlocked(&mut stopping, || {
                shared.registry.expire(&shared.followers, horizon_ms);
            });
        }
    }
}
