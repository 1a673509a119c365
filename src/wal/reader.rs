//! Reads the WAL back in sequence order, for shipping to followers.
//!
//! A reader keeps its segment open and its offset, so streaming costs one
//! positioned read per frame, not a re-read of the segment. Only frames at
//! or below a caller-given sequence number (the shippable one) are returned,
//! so a frame that is still being written is never read half-way.

use super::Wal;
use super::format::{self, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::crypto::{Domain, FileCipher, KEY_BLOCK_BYTES, SharedKeyring};
use crate::error::{Error, Result};
use crate::io::{Io, IoFile};

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum WalRead {
    /// Whole frames, verbatim, covering `first_seq..=last_seq`.
    Frames {
        /// The first operation's sequence number.
        first_seq: u64,
        /// The last operation's sequence number.
        last_seq: u64,
        /// How many frames.
        frame_count: u32,
        /// The frames, back to back.
        bytes: Vec<u8>,
    },
    /// Nothing new at or below the given sequence number.
    UpToDate,
    /// The segment holding the next sequence number has been removed (a
    /// snapshot covers it): the reader's client needs a snapshot.
    Gone,
}

struct OpenSegment {
    first_seq: u64,
    /// Its header (the associated data of its frames binds it).
    header: format::SegmentHeader,
    file: IoFile,
    offset_bytes: u64,
    /// The segment's cipher, if it is encrypted.
    cipher: Option<FileCipher>,
}

/// A cursor over the WAL's frames.
pub struct WalReader {
    io: Io,
    keyring: SharedKeyring,
    next_seq: u64,
    segment: Option<OpenSegment>,
}

impl WalReader {
    /// A reader whose first frame will start at `next_seq`.
    pub fn new(io: Io, keyring: SharedKeyring, next_seq: u64) -> Self {
        WalReader {
            io,
            keyring,
            next_seq,
            segment: None,
        }
    }

    /// The sequence number the next frame must start at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Reads whole frames from the next sequence number, ending at or below
    /// `through_seq`, and stopping before `bytes_max` bytes (though always
    /// returning at least one frame when there is one). Frames of an
    /// encrypted segment are decrypted (and authenticated) and returned as
    /// frames in clear: what a reader ships is the log's content, not its
    /// on-disk encryption, which is bound to this copy's files.
    pub fn read(&mut self, wal: &Wal, through_seq: u64, bytes_max: usize) -> Result<WalRead> {
        let first_seq = self.next_seq;
        let mut out = Vec::new();
        let mut frame_count = 0u32;
        while self.next_seq <= through_seq {
            let Some(frame) = self.next_frame(wal)? else {
                if frame_count == 0 && self.segment.is_none() {
                    return Ok(WalRead::Gone);
                }
                break;
            };
            let (header, stored) =
                format::read_frame(&frame).map_err(|e| self.damaged(&format!("{e:?}")))?;
            let frame_last = header.first_seq + u64::from(header.op_count) - 1;
            let too_big = !out.is_empty() && out.len() + frame.len() > bytes_max;
            if frame_last > through_seq || too_big {
                break;
            }
            match self
                .segment
                .as_ref()
                .and_then(|s| s.cipher.as_ref().map(|c| (s, c)))
            {
                None => out.extend_from_slice(&frame),
                Some((segment, cipher)) => {
                    let plain = format::open_frame_payload(
                        Some(cipher),
                        &segment.header,
                        segment.offset_bytes,
                        &header,
                        stored,
                    )
                    .map_err(|e| self.damaged(&e))?;
                    format::encode_frame(&mut out, header.first_seq, header.op_count, &plain);
                }
            }
            frame_count += 1;
            self.advance(frame.len(), frame_last);
        }
        if frame_count == 0 {
            return Ok(WalRead::UpToDate);
        }
        Ok(WalRead::Frames {
            first_seq,
            last_seq: self.next_seq - 1,
            frame_count,
            bytes: out,
        })
    }

    fn advance(&mut self, frame_bytes: usize, frame_last: u64) {
        if let Some(segment) = &mut self.segment {
            segment.offset_bytes += frame_bytes as u64;
        }
        self.next_seq = frame_last + 1;
    }

    /// The frame starting at `next_seq`, without consuming it; `None` at
    /// the end of what is written, or (with no segment open) if the
    /// segment holding `next_seq` is gone.
    fn next_frame(&mut self, wal: &Wal) -> Result<Option<Vec<u8>>> {
        loop {
            if self.segment.is_none() && !self.open_segment_for_next(wal)? {
                return Ok(None);
            }
            match self.frame_at_offset()? {
                Some(frame) => {
                    let (header, _) =
                        format::read_frame(&frame).map_err(|e| self.damaged(&format!("{e:?}")))?;
                    if header.first_seq + u64::from(header.op_count) <= self.next_seq {
                        // Before the reader's position (while finding it in a
                        // freshly opened segment): skip.
                        if let Some(segment) = &mut self.segment {
                            segment.offset_bytes += frame.len() as u64;
                        }
                        continue;
                    }
                    if header.first_seq != self.next_seq {
                        return Err(self.damaged(&format!(
                            "frame starts at {}, expected {}",
                            header.first_seq, self.next_seq
                        )));
                    }
                    return Ok(Some(frame));
                }
                None => {
                    // The end of this segment's written bytes: move on only
                    // if a later segment holds the next sequence number.
                    let later = wal
                        .segment_ranges()
                        .iter()
                        .any(|r| r.first_seq == self.next_seq);
                    if !later {
                        return Ok(None);
                    }
                    self.segment = None;
                }
            }
        }
    }

    /// Opens the segment holding `next_seq`; false if it no longer exists.
    fn open_segment_for_next(&mut self, wal: &Wal) -> Result<bool> {
        let holder = wal
            .segment_ranges()
            .into_iter()
            .rev()
            .find(|r| r.first_seq <= self.next_seq);
        let Some(range) = holder else {
            return Ok(false);
        };
        let file = match self.io.open_read(&wal.segment_path(range.first_seq)) {
            Ok(file) => file,
            // Removed by a compaction between listing and opening.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut head = [0u8; SEGMENT_HEADER_BYTES + KEY_BLOCK_BYTES];
        let read = file.read_at(0, &mut head)?;
        let head = head.get(..read).unwrap_or_default();
        let corrupt = |reason: String| Error::corruption(file.path(), 0, reason);
        let header = format::decode_segment_header(head).map_err(|e| corrupt(e.to_string()))?;
        let cipher = match format::decode_segment_key_block(head, &header)
            .map_err(|e| corrupt(e.to_string()))?
        {
            None => None,
            Some(block) => Some(
                self.keyring
                    .read()
                    .cipher(&block, Domain::Wal, file.path())?,
            ),
        };
        self.segment = Some(OpenSegment {
            first_seq: range.first_seq,
            header,
            offset_bytes: format::segment_data_start(header.flags) as u64,
            file,
            cipher,
        });
        Ok(true)
    }

    /// The whole frame at the open segment's offset, or `None` if the bytes
    /// there do not yet hold a whole frame.
    fn frame_at_offset(&self) -> Result<Option<Vec<u8>>> {
        let Some(segment) = &self.segment else {
            return Ok(None);
        };
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if segment.file.read_at(segment.offset_bytes, &mut header)? < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if payload_len > format::FRAME_SEALED_PAYLOAD_BYTES_MAX {
            return Err(self.damaged("frame length beyond the limit"));
        }
        let mut frame = vec![0u8; FRAME_HEADER_BYTES + payload_len];
        let read = segment.file.read_at(segment.offset_bytes, &mut frame)?;
        Ok((read == frame.len()).then_some(frame))
    }

    fn damaged(&self, reason: &str) -> Error {
        match &self.segment {
            Some(segment) => Error::Corruption {
                path: segment.file.path().to_path_buf(),
                offset_bytes: segment.offset_bytes,
                reason: format!(
                    "while shipping from segment {}: {reason}",
                    segment.first_seq
                ),
            },
            None => Error::InvalidCommand {
                reason: format!("WAL reader: {reason}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::follower::decode_wal_frames;
    use crate::{Db, Options, SyncMode};

    fn small_segments_db(dir: &std::path::Path) -> Db {
        Db::open_with(
            dir,
            Options {
                sync_mode: SyncMode::Never,
                segment_size_bytes_max: 2048,
                compaction_wal_bytes_min: u64::MAX,
                ..Options::default()
            },
        )
        .unwrap()
    }

    /// Reads everything shippable in chunks of at most `bytes_max`; checks
    /// each chunk as a follower would; returns the last sequence number.
    fn drain(reader: &mut WalReader, db: &Db, bytes_max: usize) -> u64 {
        let mut last = reader.next_seq() - 1;
        // Only fsynced frames are shippable.
        db.engine().wal().sync_written().unwrap();
        loop {
            match reader
                .read(
                    db.engine().wal(),
                    db.engine().wal().shippable_seq(),
                    bytes_max,
                )
                .unwrap()
            {
                WalRead::Frames {
                    first_seq,
                    last_seq,
                    frame_count,
                    bytes,
                } => {
                    assert_eq!(first_seq, last + 1);
                    decode_wal_frames(&bytes, first_seq, last_seq, frame_count).unwrap();
                    assert!(bytes.len() <= bytes_max || frame_count == 1);
                    last = last_seq;
                }
                WalRead::UpToDate => return last,
                WalRead::Gone => panic!("segments gone"),
            }
        }
    }

    #[test]
    fn reads_every_frame_across_rotations_then_follows_new_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = small_segments_db(dir.path());
        for i in 0..200u32 {
            db.put(format!("key{i}"), vec![b'v'; 40]).unwrap();
        }
        assert!(
            db.engine().wal().segment_ranges().len() > 3,
            "several segments"
        );
        let mut reader = WalReader::new(db.io(), db.engine().wal().keyring().clone(), 1);
        assert_eq!(drain(&mut reader, &db, 1000), 200);
        for i in 0..50u32 {
            db.put(format!("more{i}"), "x").unwrap();
        }
        assert_eq!(drain(&mut reader, &db, 1000), 250);
        // A reader starting in the middle finds its place.
        let mut middle = WalReader::new(db.io(), db.engine().wal().keyring().clone(), 120);
        assert_eq!(drain(&mut middle, &db, 1 << 20), 250);
    }

    #[test]
    fn nothing_past_the_given_sequence_number_and_gone_after_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = small_segments_db(dir.path());
        for i in 0..100u32 {
            db.put(format!("key{i}"), vec![b'v'; 40]).unwrap();
        }
        let mut reader = WalReader::new(db.io(), db.engine().wal().keyring().clone(), 1);
        match reader.read(db.engine().wal(), 10, 1 << 20).unwrap() {
            WalRead::Frames { last_seq, .. } => assert_eq!(last_seq, 10),
            other => panic!("{other:?}"),
        }
        db.compact_now().unwrap();
        let mut late = WalReader::new(db.io(), db.engine().wal().keyring().clone(), 1);
        assert_eq!(
            late.read(db.engine().wal(), 100, 1 << 20).unwrap(),
            WalRead::Gone
        );
    }

    #[test]
    fn a_waiting_reader_wakes_when_a_write_becomes_shippable() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let db = small_segments_db(dir.path());
        db.put("a", "1").unwrap();
        assert_eq!(db.engine().wal().shippable_seq(), 0, "written, not synced");
        // In `Never` mode the waiting shipper syncs what is written.
        let now = db
            .engine()
            .wal()
            .wait_shippable_beyond(0, Duration::from_secs(30))
            .unwrap();
        assert_eq!(now, 1);
        let idle = db
            .engine()
            .wal()
            .wait_shippable_beyond(now, Duration::from_millis(5));
        assert_eq!(idle.unwrap(), now, "times out with nothing new");
        std::thread::scope(|scope| {
            scope.spawn(|| db.put("b", "2").unwrap());
            let woke = db
                .engine()
                .wal()
                .wait_shippable_beyond(now, Duration::from_secs(30));
            assert!(woke.unwrap() > now);
        });
    }

    #[test]
    fn in_interval_mode_only_what_the_flusher_synced_is_shippable() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_with(
            dir.path(),
            Options {
                // The flusher will not run during the test.
                sync_mode: SyncMode::Interval(3_600_000),
                ..Options::default()
            },
        )
        .unwrap();
        let wal = db.engine().wal();
        db.put("a", "1").unwrap();
        db.put("b", "2").unwrap();
        assert_eq!(wal.shippable_seq(), 0, "acknowledged, not synced");
        assert_eq!(
            wal.wait_shippable_beyond(0, Duration::from_millis(5))
                .unwrap(),
            0,
            "the shipper does not sync in Interval mode: the flusher does"
        );
        let mut reader = WalReader::new(db.io(), db.engine().wal().keyring().clone(), 1);
        assert_eq!(
            reader.read(wal, wal.shippable_seq(), 1 << 20).unwrap(),
            WalRead::UpToDate
        );
        wal.sync_written().unwrap();
        assert_eq!(wal.shippable_seq(), 2);
        assert!(matches!(
            reader.read(wal, wal.shippable_seq(), 1 << 20).unwrap(),
            WalRead::Frames { last_seq: 2, .. }
        ));
    }
}
