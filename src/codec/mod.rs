//! Byte encoding, in one place.
//!
//! - [`Writer`] and [`Reader`]: the hand-written little-endian primitives that
//!   every on-disk layout (segment headers, frames, records) is built from.
//!   The layouts themselves are documented in `docs/FORMAT.md`. `Reader`
//!   never panics: every read is bounds-checked and returns [`DecodeError`].
//! - [`encode_typed`] / [`decode_typed`]: serde + bincode 2 (standard
//!   configuration, little-endian), for the application's own values
//!   (`put_typed` / `get_typed`). This is the only place bincode appears in
//!   stored bytes: mergekv's own records (`_auth`, `_local`) have
//!   hand-written layouts, and bincode never defines a file or frame layout.
//! - `decode_legacy`: reads internal records written by releases before
//!   2026-12 in bincode, on a documented legacy path; nothing is written
//!   that way any more.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended `needed` bytes short of a field.
    Truncated {
        /// Offset of the field in the input.
        offset: usize,
        /// Bytes that were missing.
        needed: usize,
    },
    /// A field holds a value that is not allowed.
    Invalid {
        /// Offset of the field in the input.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { offset, needed } => {
                write!(
                    f,
                    "truncated at offset {offset} ({needed} more bytes needed)"
                )
            }
            DecodeError::Invalid { offset, reason } => write!(f, "at offset {offset}: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends little-endian fields to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `capacity_bytes`.
    pub fn with_capacity(capacity_bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity_bytes),
        }
    }

    /// Wraps an existing buffer, appending after its contents.
    pub fn from_vec(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a little-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Appends a `u32` length followed by the bytes.
    ///
    /// Callers enforce key and value limits far below 4 GiB before encoding.
    pub fn len_prefixed(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.bytes(v);
    }
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Overwrites four bytes at `offset` with a little-endian `u32`.
    ///
    /// # Panics
    ///
    /// If fewer than four bytes were written at `offset`. The offset is the
    /// encoder's own placeholder, never a value read from input, so this is a
    /// bug in the encoder; writing on silently would corrupt the encoding.
    #[expect(
        clippy::indexing_slicing,
        reason = "offset + 4 <= len is asserted on the line before"
    )]
    pub fn patch_u32(&mut self, offset: usize, v: u32) {
        assert!(
            offset
                .checked_add(4)
                .is_some_and(|end| end <= self.buf.len()),
            "patch_u32 at {offset} past the {} bytes written",
            self.buf.len()
        );
        self.buf[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
    /// The finished buffer.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads little-endian fields from a byte slice, never panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The current offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let Some(out) = self.buf.get(self.pos..self.pos.saturating_add(n)) else {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n.saturating_sub(self.remaining()),
            });
        };
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        Ok(out)
    }

    /// Reads the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a `u32` length and that many bytes, refusing lengths above `max_len`.
    pub fn len_prefixed(&mut self, max_len: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let len = self.u32()? as usize;
        if len > max_len {
            return Err(DecodeError::Invalid {
                offset: at,
                reason: format!("{what} length {len} exceeds limit {max_len}"),
            });
        }
        self.take(len)
    }

    /// Reads a `u32` length and that many bytes of UTF-8, refusing lengths
    /// above `max_len`.
    pub fn utf8(&mut self, max_len: usize, what: &str) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let bytes = self.len_prefixed(max_len, what)?;
        std::str::from_utf8(bytes).map_err(|_| Reader::invalid(at, format!("{what} is not UTF-8")))
    }

    /// Reads a presence byte: 0 for absent, 1 for present, anything else an
    /// error.
    pub fn present(&mut self, what: &str) -> Result<bool, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Reader::invalid(
                at,
                format!("{what}: presence byte {other}, expected 0 or 1"),
            )),
        }
    }

    /// Succeeds only if every byte was read: a layout has no trailing bytes.
    pub fn end(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(Reader::invalid(self.pos, format!("{n} trailing bytes"))),
        }
    }

    /// An error for an invalid field that started at `offset`.
    pub fn invalid(offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            offset,
            reason: reason.into(),
        }
    }
}

/// Upper bound on a typed value's encoded size, so a hostile value cannot make
/// the decoder allocate without limit.
pub const TYPED_VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_limit::<TYPED_VALUE_BYTES_MAX>()
}

/// Encodes an application value with serde + bincode 2 (standard
/// configuration: little-endian, variable-length integers), as
/// `put_typed` stores it.
///
/// The bytes are the user's value only: no mergekv record, file or frame
/// is laid out by bincode (`docs/FORMAT.md`, "Typed values"). A typed value
/// is as stable as the serde shape of `T` and bincode 2's encoding.
///
/// # Errors
///
/// [`Error::Decode`] if serde refuses the value or it encodes to more than
/// [`TYPED_VALUE_BYTES_MAX`].
pub fn encode_typed<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| Error::Decode {
        what: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Decodes an application value encoded by [`encode_typed`] (bincode 2,
/// standard configuration, little-endian); trailing bytes are an error.
///
/// # Errors
///
/// [`Error::Decode`] if the bytes are not a `T` in that encoding, are longer
/// than [`TYPED_VALUE_BYTES_MAX`], or have bytes after the value.
pub fn decode_typed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_typed_or_reason(bytes).map_err(|reason| Error::Decode {
        what: std::any::type_name::<T>(),
        reason,
    })
}

/// [`decode_typed`], failing with only the decoder's reason, for a caller
/// that names what it was decoding in an error of its own.
pub(crate) fn decode_typed_or_reason<T: DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes",
            bytes.len().saturating_sub(used)
        ));
    }
    Ok(value)
}

/// Decodes an internal record written in bincode by a release before
/// 2026-12 (`_auth` records, `_local` cursors and bucket state), with the
/// configuration those releases wrote it in. Read only: every write uses the
/// record's hand-written layout. `T` is a frozen private copy of the old
/// serde type, kept next to the record's codec (`legacy` modules), so a
/// change to a live type cannot change how old bytes are read.
pub(crate) fn decode_legacy<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(|e| {
            DecodeError::Invalid {
                offset: 0,
                reason: format!("legacy bincode record: {e}"),
            }
        })?;
    if used != bytes.len() {
        return Err(DecodeError::Invalid {
            offset: used,
            reason: format!(
                "legacy bincode record: {} trailing bytes",
                bytes.len() - used
            ),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_without_panicking() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0201);
        assert_eq!(
            r.u32(),
            Err(DecodeError::Truncated {
                offset: 2,
                needed: 3
            })
        );
    }

    #[test]
    fn len_prefixed_respects_limit() {
        let mut w = Writer::default();
        w.len_prefixed(b"hello");
        let bytes = w.into_vec();
        assert_eq!(Reader::new(&bytes).len_prefixed(5, "x").unwrap(), b"hello");
        assert!(matches!(
            Reader::new(&bytes).len_prefixed(4, "x"),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn typed_round_trip_and_garbage() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct User {
            name: String,
            age: u32,
        }
        let u = User {
            name: "ada".into(),
            age: 36,
        };
        let bytes = encode_typed(&u).unwrap();
        assert_eq!(decode_typed::<User>(&bytes).unwrap(), u);
        assert!(decode_typed::<User>(&bytes[..2]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_typed::<User>(&long).is_err());
    }
}
