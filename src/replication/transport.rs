//! Moving frames over a byte stream: plain TCP, or TLS over TCP.
//!
//! Reads go through [`FrameReader`], which keeps a partly received frame
//! in its own buffer: a read that times out (or would block) loses nothing,
//! so one thread can both stream batches and pick up ACKs without a second
//! reader thread, over TLS as well as TCP.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::ProtocolError;
use super::frame::{FRAME_HEADER_BYTES, Frame, decode_header};
use super::message::Message;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A byte stream replication runs over.
pub trait Transport: Read + Write + Send {
    /// The underlying socket (for timeouts, blocking mode and shutdown).
    fn socket(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

/// Collects one frame at a time from whatever bytes have arrived.
#[derive(Default)]
pub(crate) struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    /// Reads until a whole frame is buffered and returns it; `Ok(None)` if
    /// a read timed out or would block first (the bytes so far are kept).
    pub fn poll(&mut self, r: &mut impl Read) -> Result<Option<Frame>, ProtocolError> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            // Never read past the frame being received: its header is
            // checked, limit included, before any of its payload is asked for.
            let want = self.bytes_wanted() as u64;
            match Read::take(&mut *r, want).read(&mut chunk) {
                Ok(0) => {
                    return Err(ProtocolError::io(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the peer closed the connection",
                    )));
                }
                Ok(n) => self.buffer.extend(chunk.iter().take(n)),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ProtocolError::io(e)),
            }
        }
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
}

impl Connection {
    pub fn new(stream: Box<dyn Transport>) -> Connection {
        Connection {
            stream,
            reader: FrameReader::default(),
        }
    }

    /// Sends one message.
    pub fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        let bytes = message.to_frame_bytes()?;
        self.stream.write_all(&bytes).map_err(ProtocolError::io)?;
        self.stream.flush().map_err(ProtocolError::io)
    }

    /// Sends an ERROR (best effort: the connection is being closed anyway).
    pub fn send_error(&mut self, code: super::ErrorCode, message: &str) {
        let message = Message::Error {
            code,
            message: message.chars().take(256).collect(),
        };
        let _ = self.send(&message);
    }

    /// Waits up to `timeout` for the next message.
    pub fn recv(&mut self, timeout: Duration) -> Result<Message, ProtocolError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProtocolError::io(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("nothing received for {} ms", timeout.as_millis()),
                )));
            }
            self.stream
                .socket()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(ProtocolError::io)?;
            if let Some(frame) = self.reader.poll(&mut self.stream)? {
                return Message::decode(&frame);
            }
        }
    }

    /// A message that has already arrived, without waiting for one.
    pub fn try_recv(&mut self) -> Result<Option<Message>, ProtocolError> {
        let socket = self.stream.socket();
        socket.set_nonblocking(true).map_err(ProtocolError::io)?;
        let polled = self.reader.poll(&mut self.stream);
        self.stream
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
        let mut reader = FrameReader::default();
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
        let mut reader = FrameReader::default();
        assert!(matches!(
            reader.poll(&mut &header[..]),
            Err(ProtocolError::Oversized { .. })
        ));
    }
}
