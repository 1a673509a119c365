//! TLS for replication connections (the `tls` feature): rustls with the
//! ring backend, over the same TCP socket, so timeouts and shutdown work
//! as for plain TCP.
//!
//! The leader sets [`crate::replication::server::ReplicationOptions::tls`]
//! to a `rustls::ServerConfig`; a follower sets
//! [`crate::replication::client::FollowerOptions::tls`] to a
//! `rustls::ClientConfig` and the name on the leader's certificate.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use super::transport::Transport;

/// A TLS session over a TCP socket, either side.
pub(crate) enum TlsStream {
    /// The leader's side.
    Server(StreamOwned<ServerConnection, TcpStream>),
    /// The follower's side.
    Client(StreamOwned<ClientConnection, TcpStream>),
}

impl TlsStream {
    pub fn server(tls: ServerConnection, socket: TcpStream) -> TlsStream {
        TlsStream::Server(StreamOwned::new(tls, socket))
    }

    /// The follower's side, after a handshake of at most `timeout`.
    ///
    /// Done here rather than left to the first write: rustls would then
    /// handshake inside `write` on a socket with no read timeout, and a
    /// leader that accepts but never answers would hold the follower
    /// forever (over plain TCP the idle timeout of the first read ends
    /// such a connection). The socket's timeouts are cleared again after.
    pub fn client(
        mut tls: ClientConnection,
        mut socket: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<TlsStream> {
        let deadline = Instant::now() + timeout;
        while tls.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("not finished within {} ms", timeout.as_millis()),
                ));
            }
            socket.set_read_timeout(Some(left))?;
            socket.set_write_timeout(Some(left))?;
            match tls.complete_io(&mut socket) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        socket.set_read_timeout(None)?;
        socket.set_write_timeout(None)?;
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
    fn socket(&self) -> &TcpStream {
        match self {
            TlsStream::Server(s) => &s.sock,
            TlsStream::Client(s) => &s.sock,
        }
    }
}
