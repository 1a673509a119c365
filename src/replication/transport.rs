//! Moving frames over a byte stream: plain TCP, or TLS over TCP.
//!
//! Every wait on the network has a total deadline. [`TimedSocket`] gives
//! each read or write on the socket only the time left until the deadline
//! of the operation it is part of (a whole message received, a whole
//! message sent, a TLS handshake), so a peer that trickles a byte now and
//! then cannot stretch a wait past it, over TLS as well as TCP: rustls
//! reads and writes through the same socket.
//!
//! Reads go through a `FrameReader`, which keeps a partly received frame
//! in its own buffer: a read that times out (or would block) loses nothing,
//! so one thread can both stream batches and pick up ACKs without a second
//! reader thread. Its frame limit is set per connection: a leader reads no
//! more than a HELLO before the token has authenticated.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::ProtocolError;
use super::frame::{FRAME_HEADER_BYTES, Frame, decode_header};
use super::message::Message;

/// Bytes read from the socket at a time (at most; never past the frame
/// being received).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The slowest transfer a deadline allows for: a frame of `n` bytes gets
/// `n / TRANSFER_BYTES_PER_SEC_MIN` seconds on top of the base wait (the
/// idle timeout, the send timeout). A peer slower than this, or one that
/// trickles bytes, is cut off at the deadline.
pub const TRANSFER_BYTES_PER_SEC_MIN: u64 = 256 * 1024;

/// A read-only connection's wait for a message that has already arrived:
/// the socket is non-blocking then, so this only bounds a TLS record that
/// arrives in pieces.
const TRY_RECV_WAIT: Duration = Duration::from_millis(100);

/// Time allowed on top of a base wait to move `bytes` at
/// `bytes_per_sec_min`.
fn transfer_allowance(bytes: usize, bytes_per_sec_min: u64) -> Duration {
    Duration::from_millis((bytes as u64).saturating_mul(1000) / bytes_per_sec_min.max(1))
}

/// A TCP socket whose reads and writes all end at one deadline: each call
/// waits at most for the time left until it, and once it has passed they
/// fail with [`ErrorKind::TimedOut`] without touching the socket. There is
/// no "no deadline": a read or write before one is set fails the same way.
#[derive(Debug)]
pub struct TimedSocket {
    socket: TcpStream,
    deadline: Option<Instant>,
}

impl TimedSocket {
    /// Wraps a connected socket (blocking mode).
    pub fn new(socket: TcpStream) -> TimedSocket {
        TimedSocket {
            socket,
            deadline: None,
        }
    }

    /// The socket (for its address, blocking mode and shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Every read and write from now on must end by `deadline`.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    /// The time left until the deadline; an error once it has passed.
    fn time_left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "the operation's deadline has passed",
            ));
        }
        Ok(left)
    }
}

impl Read for TimedSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.time_left()?;
        self.socket.set_read_timeout(Some(left))?;
        self.socket.read(buf)
    }
}

impl Write for TimedSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.time_left()?;
        self.socket.set_write_timeout(Some(left))?;
        self.socket.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.socket.flush()
    }
}

/// A byte stream replication runs over.
pub trait Transport: Read + Write + Send {
    /// The socket underneath, to set deadlines on.
    fn timed(&self) -> &TimedSocket;
    /// The same, mutably.
    fn timed_mut(&mut self) -> &mut TimedSocket;
}

impl Transport for TimedSocket {
    fn timed(&self) -> &TimedSocket {
        self
    }

    fn timed_mut(&mut self) -> &mut TimedSocket {
        self
    }
}

/// Collects one frame at a time from whatever bytes have arrived.
pub(crate) struct FrameReader {
    buffer: Vec<u8>,
    /// Largest payload accepted; checked on the header, before any payload
    /// byte is read.
    payload_bytes_max: usize,
}

impl FrameReader {
    /// A reader that refuses frames with more than `payload_bytes_max`
    /// payload bytes (at most the protocol's own limit, which the header
    /// check applies too).
    pub fn new(payload_bytes_max: usize) -> FrameReader {
        FrameReader {
            buffer: Vec::new(),
            payload_bytes_max,
        }
    }

    /// Reads until a whole frame is buffered and returns it; `Ok(None)` if
    /// a read timed out or would block first (the bytes so far are kept).
    pub fn poll(&mut self, r: &mut impl Read) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            // Never read past the frame being received: its header is
            // checked, limit included, before any of its payload is asked
            // for, and the buffer grows only by what is asked for.
            let want = self.bytes_wanted().min(READ_CHUNK_BYTES);
            let start = self.buffer.len();
            self.buffer.resize(start + want, 0);
            let read = match self.buffer.get_mut(start..) {
                Some(spare) => r.read(spare),
                None => Ok(0),
            };
            let got = read.as_ref().map_or(0, |n| (*n).min(want));
            self.buffer.truncate(start + got);
            match read {
                Ok(0) => {
                    return Err(ProtocolError::io(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the peer closed the connection",
                    )));
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ProtocolError::io(e)),
            }
        }
    }

    /// The payload length of the frame being received, once its header has
    /// arrived (never more than the limit: a larger one is refused).
    fn announced_payload_bytes(&self) -> usize {
        self.buffer
            .first_chunk::<4>()
            .map_or(0, |len| u32::from_le_bytes(*len) as usize)
            .min(self.payload_bytes_max)
    }

    /// Bytes still missing from the frame being received (the header is
    /// checked, limit included, before any payload byte is asked for).
    fn bytes_wanted(&self) -> usize {
        let Some(&[l0, l1, l2, l3, ..]) = self.buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
            return FRAME_HEADER_BYTES - self.buffer.len();
        };
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        (FRAME_HEADER_BYTES + len).saturating_sub(self.buffer.len())
    }

    fn take_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let Some(header) = self.buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let (kind, len, payload_crc) = decode_header(header)?;
        if len > self.payload_bytes_max {
            return Err(ProtocolError::Oversized {
                bytes: len as u64,
                limit: self.payload_bytes_max as u64,
            });
        }
        if self.buffer.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let rest = self.buffer.split_off(FRAME_HEADER_BYTES + len);
        let mut frame_bytes = std::mem::replace(&mut self.buffer, rest);
        let payload = frame_bytes.split_off(FRAME_HEADER_BYTES);
        debug_assert_eq!(payload.len(), len);
        if crc32c::crc32c(&payload) != payload_crc {
            return Err(ProtocolError::Checksum {
                what: "frame payload",
            });
        }
        Ok(Some(Frame { kind, payload }))
    }
}

/// One replication connection: a transport and its frame reader.
pub(crate) struct Connection {
    stream: Box<dyn Transport>,
    reader: FrameReader,
    /// Base time to send one message (plus its transfer allowance).
    send_timeout: Duration,
    /// The slowest transfer the deadlines allow for
    /// ([`TRANSFER_BYTES_PER_SEC_MIN`] but in tests).
    bytes_per_sec_min: u64,
}

impl Connection {
    /// A connection reading frames of at most `payload_bytes_max` and
    /// sending each message within `send_timeout` plus its transfer
    /// allowance.
    pub fn new(
        stream: Box<dyn Transport>,
        payload_bytes_max: usize,
        send_timeout: Duration,
    ) -> Connection {
        Connection {
            stream,
            reader: FrameReader::new(payload_bytes_max),
            send_timeout,
            bytes_per_sec_min: TRANSFER_BYTES_PER_SEC_MIN,
        }
    }

    /// Changes the largest frame payload accepted from now on.
    pub fn set_payload_limit(&mut self, payload_bytes_max: usize) {
        self.reader.payload_bytes_max = payload_bytes_max;
    }

    /// Sends one message, all of it within the send timeout plus the
    /// transfer allowance for its size.
    pub fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        let bytes = message.to_frame_bytes()?;
        let allowance = transfer_allowance(bytes.len(), self.bytes_per_sec_min);
        let deadline = Instant::now() + self.send_timeout + allowance;
        self.send_bytes(&bytes, deadline)
    }

    fn send_bytes(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), ProtocolError> {
        self.stream.timed_mut().set_deadline(deadline);
        self.stream.write_all(bytes).map_err(ProtocolError::io)?;
        self.stream.flush().map_err(ProtocolError::io)
    }

    /// Sends an ERROR by `deadline` (best effort: the connection is being
    /// closed anyway).
    pub fn send_error(&mut self, code: super::ErrorCode, message: &str, deadline: Instant) {
        let message = Message::Error {
            code,
            message: message.chars().take(256).collect(),
        };
        if let Ok(bytes) = message.to_frame_bytes() {
            let _ = self.send_bytes(&bytes, deadline);
        }
    }

    /// Waits for the next message: it must have arrived whole within
    /// `wait` plus the transfer allowance for the size its header
    /// announces.
    pub fn recv(&mut self, wait: Duration) -> Result<Message, ProtocolError> {
        let start = Instant::now();
        let rate = self.bytes_per_sec_min;
        self.recv_by(|announced| start + wait + transfer_allowance(announced, rate))
    }

    /// Waits for the next message, which must have arrived whole by
    /// `deadline`.
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Message, ProtocolError> {
        self.recv_by(|_| deadline)
    }

    fn recv_by(
        &mut self,
        deadline_for: impl Fn(usize) -> Instant,
    ) -> Result<Message, ProtocolError> {
        let start = Instant::now();
        loop {
            let deadline = deadline_for(self.reader.announced_payload_bytes());
            if Instant::now() >= deadline {
                return Err(ProtocolError::io(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "no whole message within {} ms",
                        deadline.saturating_duration_since(start).as_millis()
                    ),
                )));
            }
            self.stream.timed_mut().set_deadline(deadline);
            if let Some(frame) = self.reader.poll(&mut self.stream)? {
                return Message::decode(&frame);
            }
        }
    }

    /// A message that has already arrived, without waiting for one.
    pub fn try_recv(&mut self) -> Result<Option<Message>, ProtocolError> {
        let timed = self.stream.timed_mut();
        timed.set_deadline(Instant::now() + TRY_RECV_WAIT);
        timed
            .socket()
            .set_nonblocking(true)
            .map_err(ProtocolError::io)?;
        let polled = self.reader.poll(&mut self.stream);
        self.stream
            .timed()
            .socket()
            .set_nonblocking(false)
            .map_err(ProtocolError::io)?;
        match polled? {
            Some(frame) => Message::decode(&frame).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::frame::{FrameKind, encode_frame};

    /// Hands out its bytes a few at a time, then "times out" once between
    /// pieces, like a slow socket.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
        stalled: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.stalled = !self.stalled;
            if self.stalled {
                return Err(std::io::Error::new(ErrorKind::WouldBlock, "later"));
            }
            let n = self.step.min(buf.len()).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn a_frame_split_across_timeouts_arrives_whole() {
        let mut bytes = encode_frame(FrameKind::Ack, b"first").unwrap();
        bytes.extend(encode_frame(FrameKind::Ack, b"second").unwrap());
        let mut source = Trickle {
            bytes,
            at: 0,
            step: 3,
            stalled: false,
        };
        let mut reader = FrameReader::new(crate::replication::frame::FRAME_PAYLOAD_BYTES_MAX);
        let mut got = Vec::new();
        let mut polls = 0;
        while got.len() < 2 && polls < 1000 {
            if let Some(frame) = reader.poll(&mut source).unwrap() {
                got.push(frame.payload);
            }
            polls += 1;
        }
        assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
        assert!(polls > 2, "the reads did stall in between");
        let end = (0..4).find_map(|_| reader.poll(&mut source).err());
        assert!(end.is_some(), "then the end of the stream");
    }

    #[test]
    fn a_huge_announced_length_is_refused_before_buffering() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        header[4] = FrameKind::Batch as u8;
        let crc = crc32c::crc32c(&header[..12]);
        header[12..].copy_from_slice(&crc.to_le_bytes());
        let mut reader = FrameReader::new(crate::replication::frame::FRAME_PAYLOAD_BYTES_MAX);
        assert!(matches!(
            reader.poll(&mut &header[..]),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    /// Counts the bytes handed out, to show what a refusal read.
    struct Counted<'a> {
        bytes: &'a [u8],
        read: usize,
    }

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = Read::read(&mut self.bytes, buf)?;
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn a_frame_over_the_connections_limit_is_refused_on_its_header() {
        let payload = vec![7u8; 301];
        let bytes = encode_frame(FrameKind::Hello, &payload).unwrap();
        let mut source = Counted {
            bytes: &bytes,
            read: 0,
        };
        let mut reader = FrameReader::new(300);
        assert!(matches!(
            reader.poll(&mut source),
            Err(ProtocolError::Oversized {
                bytes: 301,
                limit: 300
            })
        ));
        assert_eq!(source.read, FRAME_HEADER_BYTES, "no payload byte was read");
        let mut reader = FrameReader::new(301);
        let frame = reader.poll(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(frame.payload, payload);
    }

    /// A socket pair over loopback: (ours, the peer's).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (ours, peer)
    }

    /// Sends `bytes` one at a time, a pause between each (the pause is the
    /// attack), until they run out or the other side closes.
    fn trickle(mut peer: TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for byte in bytes {
                if peer.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    #[test]
    fn a_peer_trickling_bytes_cannot_hold_a_receive_past_its_deadline() {
        let (ours, peer) = socket_pair();
        // A frame whose header announces more than the trickle will ever
        // send, so a byte keeps arriving well within any per-read timeout.
        let mut bytes = encode_frame(FrameKind::Ack, &[0u8; 1000]).unwrap();
        bytes.truncate(FRAME_HEADER_BYTES + 900);
        let trickler = trickle(peer, bytes);
        let (done, finished) = std::sync::mpsc::channel();
        let receiver = std::thread::spawn(move || {
            let mut conn = Connection::new(
                Box::new(TimedSocket::new(ours)),
                1000,
                Duration::from_secs(1),
            );
            let deadline = Instant::now() + Duration::from_millis(200);
            let _ = done.send(conn.recv_until(deadline));
        });
        // Generous: the receive must end at its 200 ms deadline, while
        // bytes keep coming for 9 s more.
        let result = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the receive outlived its deadline");
        assert!(
            matches!(
                &result,
                Err(ProtocolError::Io {
                    kind: ErrorKind::TimedOut,
                    ..
                })
            ),
            "{result:?}"
        );
        receiver.join().unwrap();
        trickler.join().unwrap();
    }

    #[test]
    fn a_peer_reading_slowly_cannot_hold_a_send_past_its_deadline() {
        let (ours, mut peer) = socket_pair();
        // Reads 64 KiB every 100 ms, so some write always makes progress
        // well within any per-write timeout.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reading = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !reading.load(std::sync::atomic::Ordering::Relaxed)
                && matches!(peer.read(&mut buf), Ok(n) if n > 0)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (done, finished) = std::sync::mpsc::channel();
        let sender = std::thread::spawn(move || {
            let mut conn = Connection::new(
                Box::new(TimedSocket::new(ours)),
                1000,
                Duration::from_millis(200),
            );
            // No slack for the size: the deadline is the 200 ms alone.
            conn.bytes_per_sec_min = u64::MAX;
            // 64 MiB would take the reader over 100 s.
            let batch = Message::SnapshotChunk {
                stream: 1,
                epoch: 1,
                offset: 0,
                bytes: vec![0u8; 64 * 1024 * 1024],
            };
            let _ = done.send(conn.send(&batch));
        });
        let result = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the send outlived its deadline");
        assert!(
            matches!(
                &result,
                Err(ProtocolError::Io {
                    kind: ErrorKind::TimedOut,
                    ..
                })
            ),
            "{result:?}"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().unwrap();
        reader.join().unwrap();
    }
}
