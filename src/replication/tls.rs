//! TLS for replication connections (the `tls` feature): rustls with the
//! ring backend, over the same TCP socket, so timeouts and shutdown work
//! as for plain TCP.
//!
//! The leader sets [`crate::replication::server::ReplicationOptions::tls`]
//! to a `rustls::ServerConfig`; a follower sets
//! [`crate::replication::client::FollowerOptions::tls`] to a
//! `rustls::ClientConfig` and the name on the leader's certificate.

use std::io::{Read, Write};
use std::net::TcpStream;

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

    pub fn client(tls: ClientConnection, socket: TcpStream) -> TlsStream {
        TlsStream::Client(StreamOwned::new(tls, socket))
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
