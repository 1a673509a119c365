//! TLS for replication connections (the `tls` feature): rustls with the
//! ring backend, over the same TCP socket, so timeouts and shutdown work
//! as for plain TCP.
//!
//! The leader sets [`crate::replication::server::ReplicationOptions::tls`]
//! to a `rustls::ServerConfig`; a follower sets
//! [`crate::replication::client::FollowerOptions::tls`] to a
//! `rustls::ClientConfig` and the name on the leader's certificate.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use super::transport::{TimedSocket, Transport};

/// A TLS session over a TCP socket, either side. rustls reads and writes
/// through the [`TimedSocket`], so the deadline of whatever the connection
/// is doing (a handshake included) bounds every socket call it makes.
pub(crate) enum TlsStream {
    /// The leader's side.
    Server(StreamOwned<ServerConnection, TimedSocket>),
    /// The follower's side.
    Client(StreamOwned<ClientConnection, TimedSocket>),
}

impl TlsStream {
    /// The leader's side. The handshake happens inside the first receive,
    /// under its deadline (for a new connection, the handshake deadline).
    pub fn server(tls: ServerConnection, socket: TimedSocket) -> TlsStream {
        TlsStream::Server(StreamOwned::new(tls, socket))
    }

    /// The follower's side, after a handshake finished by `deadline`.
    ///
    /// Done here rather than left to the first write, so a leader that
    /// accepts but never answers (or answers a byte at a time) is given up
    /// on at the connect deadline.
    pub fn client(
        mut tls: ClientConnection,
        mut socket: TimedSocket,
        deadline: Instant,
    ) -> std::io::Result<TlsStream> {
        socket.set_deadline(deadline);
        while tls.is_handshaking() {
            match tls.complete_io(&mut socket) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(TlsStream::Client(StreamOwned::new(tls, socket)))
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            TlsStream::Server(s) => s.read(buf),
            TlsStream::Client(s) => s.read(buf),
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            TlsStream::Server(s) => s.write(buf),
            TlsStream::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            TlsStream::Server(s) => s.flush(),
            TlsStream::Client(s) => s.flush(),
        }
    }
}

impl Transport for TlsStream {
    fn timed(&self) -> &TimedSocket {
        match self {
            TlsStream::Server(s) => &s.sock,
            TlsStream::Client(s) => &s.sock,
        }
    }

    fn timed_mut(&mut self) -> &mut TimedSocket {
        match self {
            TlsStream::Server(s) => &mut s.sock,
            TlsStream::Client(s) => &mut s.sock,
        }
    }
}
