//! Encryption of a run's frames (`docs/FORMAT.md`, "Sorted run",
//! "Encrypted runs"): one [`FileCipher`] per run file, under a salt drawn
//! when the file was created; each frame's payload sealed with its byte
//! offset in the file as the nonce and [`frame_aad`] as the associated
//! data.
//!
//! The CRC-32C of a frame covers the ciphertext, so a damaged frame is
//! still told by its checksum before any decryption; a frame whose
//! checksum holds but whose tag does not is the right bytes in the wrong
//! place (a block copied over another, a frame from another run) or a
//! deliberate change, reported as authentication failure.

use std::borrow::Cow;

use crate::crypto::{FileCipher, KeyBlock, KeyId};

use super::format::{Frame, frame_aad};

/// What a failed tag says, as the reason of an `Error::Corruption`.
pub const AUTHENTICATION_FAILED: &str =
    "authentication failed (changed, moved, or not this file's bytes)";

/// The cipher of one encrypted run, bound to its run id.
#[derive(Clone, Debug)]
pub struct RunCipher {
    cipher: FileCipher,
    run_id: u64,
}

impl RunCipher {
    /// The cipher for frames of run `run_id`.
    pub fn new(cipher: FileCipher, run_id: u64) -> Self {
        Self { cipher, run_id }
    }

    /// The key block the run's file carries.
    pub fn key_block(&self) -> KeyBlock {
        self.cipher.key_block()
    }

    /// The id of the key the run is encrypted with.
    pub fn key_id(&self) -> KeyId {
        self.cipher.key_block().key_id
    }

    /// The file cipher (for a writer handing its own to the read-back).
    pub fn file_cipher(&self) -> &FileCipher {
        &self.cipher
    }

    /// Encrypts the payload of the frame of type `kind` (decompressed
    /// length `raw_len`) that will start at `offset`, in place, and
    /// appends the tag.
    pub fn seal(&self, offset: u64, kind: u8, raw_len: usize, payload: &mut Vec<u8>) {
        let aad = frame_aad(self.run_id, offset, kind, raw_len);
        self.cipher.seal(offset, &aad, payload);
    }

    /// Checks and decrypts, in place, the payload (ciphertext then tag) of
    /// the frame of type `kind` at `offset`.
    pub fn open(
        &self,
        offset: u64,
        kind: u8,
        raw_len: usize,
        payload: &mut Vec<u8>,
    ) -> Result<(), &'static str> {
        let aad = frame_aad(self.run_id, offset, kind, raw_len);
        self.cipher
            .open(offset, &aad, payload)
            .map_err(|_| AUTHENTICATION_FAILED)
    }
}

/// The plaintext payload of `frame`, which lies at `offset` in the file:
/// the stored bytes as they are for a run in clear (`cipher` `None`),
/// else decrypted and authenticated. `Err(reason)` if the tag fails.
pub fn plaintext<'a>(
    cipher: Option<&RunCipher>,
    frame: &Frame<'a>,
    offset: u64,
) -> Result<Cow<'a, [u8]>, &'static str> {
    match cipher {
        None => Ok(Cow::Borrowed(frame.payload)),
        Some(cipher) => {
            let mut buf = frame.payload.to_vec();
            cipher.open(offset, frame.kind, frame.raw_len, &mut buf)?;
            Ok(Cow::Owned(buf))
        }
    }
}
