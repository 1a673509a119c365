//! Hand-written layouts of the records kept in [`LOCAL_KEYSPACE`]
//! (`docs/FORMAT.md`, "Local records"): the header every such record starts
//! with, and the stored cursor (a peer's cursor, this copy's complete
//! cursor). The bucket's records (`bucket::local`) use the same header.
//!
//! A record starts with [`LOCAL_RECORD_MARKER`] (0xFF) then a tag byte
//! naming its kind and layout version. Records written before 2026-12 were
//! bincode-encoded serde structs (`legacy`) whose first field is a `u64`
//! or a length, which bincode writes as a varint: its first byte is a value
//! below 251 or one of the markers 0xFB, 0xFC, 0xFD (0xFE is for 128-bit
//! integers only); never 0xFF. So the first byte tells a legacy record from
//! a current one, and legacy records are read, never written.
//!
//! [`LOCAL_KEYSPACE`]: crate::record::LOCAL_KEYSPACE

use crate::clock::{NodeId, Stamp};
use crate::codec::{DecodeError, Reader, Writer};
use crate::record::{decode_stamp, encode_stamp};

use super::SyncCursor;

/// First byte of every hand-written `_local` record: a byte no bincode
/// varint (the first field of every legacy record) begins with.
pub(crate) const LOCAL_RECORD_MARKER: u8 = 0xff;
/// Tag of a stored [`SyncCursor`], layout 1. (The tags of all `_local`
/// records: 0x01 here; 0x02 bucket sync state and 0x03 kept head in
/// `bucket::local`, with the feature that uses them.)
pub(crate) const CURSOR_TAG: u8 = 0x01;

/// Most entries (origin nodes) a stored cursor may hold. Far above any
/// real number of copies; a cursor is also bounded by the bytes present
/// (each entry takes [`CURSOR_ENTRY_BYTES`]), checked before decoding.
pub(crate) const LOCAL_CURSOR_ENTRIES_MAX: usize = 1 << 20;
/// Bytes of one cursor entry: node u64 and stamp (20).
pub(crate) const CURSOR_ENTRY_BYTES: usize = 8 + 20;

/// What a `_local` record's first byte says it is.
pub(crate) enum LocalRecord<'a> {
    /// Written before 2026-12 in bincode: read it with the legacy decoder.
    Legacy,
    /// The current layout: a reader after the marker and tag.
    Current(Reader<'a>),
}

/// Starts a record of kind `tag`.
pub(crate) fn begin(tag: u8) -> Writer {
    let mut w = Writer::with_capacity(64);
    w.u8(LOCAL_RECORD_MARKER);
    w.u8(tag);
    w
}

/// Reads the header of a record that must be of kind `tag`.
pub(crate) fn open(bytes: &[u8], tag: u8) -> Result<LocalRecord<'_>, DecodeError> {
    let mut r = Reader::new(bytes);
    if r.u8()? != LOCAL_RECORD_MARKER {
        return Ok(LocalRecord::Legacy);
    }
    let found = r.u8()?;
    if found != tag {
        return Err(Reader::invalid(
            1,
            format!("local record tag {found:#04x}, expected {tag:#04x}"),
        ));
    }
    Ok(LocalRecord::Current(r))
}

/// Writes a cursor's entries: count u32, then node u64 and stamp each, in
/// increasing node order.
pub(crate) fn encode_cursor_entries(
    w: &mut Writer,
    entries: &std::collections::BTreeMap<u64, Stamp>,
) {
    w.u32(entries.len() as u32);
    for (node, stamp) in entries {
        w.u64(*node);
        encode_stamp(w, *stamp);
    }
}

/// Reads what [`encode_cursor_entries`] wrote: the count checked against
/// [`LOCAL_CURSOR_ENTRIES_MAX`] and the bytes left before anything is read,
/// nodes strictly increasing.
pub(crate) fn decode_cursor_entries(
    r: &mut Reader<'_>,
) -> Result<std::collections::BTreeMap<u64, Stamp>, DecodeError> {
    let at = r.position();
    let n = r.u32()? as usize;
    if n > LOCAL_CURSOR_ENTRIES_MAX || n.saturating_mul(CURSOR_ENTRY_BYTES) > r.remaining() {
        return Err(Reader::invalid(
            at,
            format!("{n} cursor entries: more than the limit or the bytes left"),
        ));
    }
    let mut out = std::collections::BTreeMap::new();
    let mut last: Option<u64> = None;
    for _ in 0..n {
        let entry_at = r.position();
        let node = r.u64()?;
        if last.is_some_and(|l| l >= node) {
            return Err(Reader::invalid(
                entry_at,
                "cursor entries not in increasing node order",
            ));
        }
        last = Some(node);
        out.insert(node, decode_stamp(r)?);
    }
    Ok(out)
}

/// A stored cursor's bytes: marker, [`CURSOR_TAG`], entries (each stamp's
/// node is its entry's node).
pub(crate) fn encode_cursor(cursor: &SyncCursor) -> Vec<u8> {
    let mut w = begin(CURSOR_TAG);
    let entries = cursor.seen.iter().map(|(n, s)| (n.0, *s)).collect();
    encode_cursor_entries(&mut w, &entries);
    w.into_vec()
}

/// Reads a stored cursor, current or legacy.
pub(crate) fn decode_cursor(bytes: &[u8]) -> Result<SyncCursor, DecodeError> {
    let mut r = match open(bytes, CURSOR_TAG)? {
        LocalRecord::Legacy => return legacy::cursor(bytes),
        LocalRecord::Current(r) => r,
    };
    let mut cursor = SyncCursor::new();
    for (node, stamp) in decode_cursor_entries(&mut r)? {
        if stamp.node.0 != node {
            return Err(Reader::invalid(
                r.position(),
                format!(
                    "a cursor entry for {} holds a stamp of {}",
                    NodeId(node),
                    stamp.node
                ),
            ));
        }
        cursor.seen.insert(NodeId(node), stamp);
    }
    r.end()?;
    Ok(cursor)
}

/// `crate::Error::Decode` for a stored cursor that did not decode.
pub(crate) fn cursor_error(e: DecodeError) -> crate::Error {
    crate::Error::Decode {
        what: "stored sync cursor",
        reason: e.to_string(),
    }
}

/// Reading `_local` records written before 2026-12 (read only): frozen
/// private copies of the serde types those releases bincode-encoded.
pub(crate) mod legacy {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use crate::clock::{NodeId, Stamp};
    use crate::codec::{DecodeError, decode_legacy};

    use super::SyncCursor;

    /// The old `NodeId` (a newtype: bincode writes the `u64` as a varint).
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    pub(crate) struct NodeIdV1(pub(crate) u64);

    /// The old `Stamp`.
    #[derive(Clone, Copy, Serialize, Deserialize)]
    pub(crate) struct StampV1 {
        pub(crate) physical_ms: u64,
        pub(crate) logical: u32,
        pub(crate) node: NodeIdV1,
    }

    impl From<StampV1> for Stamp {
        fn from(s: StampV1) -> Stamp {
            Stamp {
                physical_ms: s.physical_ms,
                logical: s.logical,
                node: NodeId(s.node.0),
            }
        }
    }

    impl From<Stamp> for StampV1 {
        fn from(s: Stamp) -> StampV1 {
            StampV1 {
                physical_ms: s.physical_ms,
                logical: s.logical,
                node: NodeIdV1(s.node.0),
            }
        }
    }

    /// The old `SyncCursor`.
    #[derive(Serialize, Deserialize)]
    pub(crate) struct SyncCursorV1 {
        pub(crate) seen: BTreeMap<NodeIdV1, StampV1>,
    }

    /// A legacy stored cursor. Entries are taken by their stamp's node, as
    /// the live cursor keys them.
    pub(crate) fn cursor(bytes: &[u8]) -> Result<SyncCursor, DecodeError> {
        let old: SyncCursorV1 = decode_legacy(bytes)?;
        let mut cursor = SyncCursor::new();
        cursor.merge(&SyncCursor {
            seen: old
                .seen
                .into_values()
                .map(|s| (NodeId(s.node.0), Stamp::from(s)))
                .collect(),
        });
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn stamp(physical_ms: u64, logical: u32, node: u64) -> Stamp {
        Stamp {
            physical_ms,
            logical,
            node: NodeId(node),
        }
    }

    /// Bytes the release of 2026-12-03 wrote for a cursor of two nodes and
    /// for the empty cursor (printed by that code, `codec::encode_typed`).
    const LEGACY_CURSOR: &str =
        "02abfd0028f129a201000003abfdf0debc9a785634120900fdf0debc9a78563412";

    #[test]
    fn legacy_cursors_written_by_the_old_code_are_read() {
        let mut expected = SyncCursor::new();
        expected.merge(&SyncCursor {
            seen: [
                (NodeId(0xab), stamp(1_796_000_000_000, 3, 0xab)),
                (
                    NodeId(0x1234_5678_9abc_def0),
                    stamp(9, 0, 0x1234_5678_9abc_def0),
                ),
            ]
            .into_iter()
            .collect(),
        });
        assert_eq!(decode_cursor(&hex(LEGACY_CURSOR)).unwrap(), expected);
        assert_eq!(decode_cursor(&[0x00]).unwrap(), SyncCursor::new());
        // Rewritten, it is the current layout and reads the same.
        let current = encode_cursor(&expected);
        assert_eq!(&current[..2], &[LOCAL_RECORD_MARKER, CURSOR_TAG]);
        assert_eq!(decode_cursor(&current).unwrap(), expected);
    }

    #[test]
    fn cursor_layout_is_as_documented() {
        let mut c = SyncCursor::new();
        c.merge(&SyncCursor {
            seen: [(NodeId(7), stamp(0x0102, 3, 7))].into_iter().collect(),
        });
        let mut expected = vec![0xff, 0x01, 1, 0, 0, 0];
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(&0x0102u64.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(encode_cursor(&c), expected);
        assert_eq!(
            encode_cursor(&SyncCursor::new()),
            vec![0xff, 0x01, 0, 0, 0, 0]
        );
    }

    #[test]
    fn cursor_entries_out_of_order_or_foreign_are_refused() {
        let mut w = begin(CURSOR_TAG);
        w.u32(2);
        for node in [9u64, 3] {
            w.u64(node);
            encode_stamp(&mut w, stamp(1, 0, node));
        }
        assert!(decode_cursor(w.as_slice()).is_err());
        let mut w = begin(CURSOR_TAG);
        w.u32(1);
        w.u64(4);
        encode_stamp(&mut w, stamp(1, 0, 5));
        assert!(decode_cursor(w.as_slice()).is_err());
        // Another kind's tag.
        assert!(decode_cursor(&[0xff, 0x03, 0, 0, 0, 0]).is_err());
        // A count beyond the bytes present, before anything is read.
        assert!(matches!(
            decode_cursor(&[0xff, 0x01, 0xff, 0xff, 0xff, 0x7f]),
            Err(DecodeError::Invalid { offset: 2, .. })
        ));
    }

    fn cursor_strategy() -> impl Strategy<Value = SyncCursor> {
        proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u64>()), 0..12).prop_map(
            |stamps| {
                let mut c = SyncCursor::new();
                c.merge(&SyncCursor {
                    seen: stamps
                        .into_iter()
                        .map(|(p, l, n)| (NodeId(n), stamp(p, l, n)))
                        .collect(),
                });
                c
            },
        )
    }

    proptest! {
        #[test]
        fn cursors_round_trip(cursor in cursor_strategy()) {
            prop_assert_eq!(decode_cursor(&encode_cursor(&cursor)).unwrap(), cursor);
        }

        #[test]
        fn legacy_cursors_round_trip(cursor in cursor_strategy()) {
            let old = legacy::SyncCursorV1 {
                seen: cursor
                    .seen
                    .iter()
                    .map(|(n, s)| (legacy::NodeIdV1(n.0), legacy::StampV1::from(*s)))
                    .collect(),
            };
            let bytes = crate::codec::encode_typed(&old).unwrap();
            prop_assert_ne!(bytes[0], LOCAL_RECORD_MARKER);
            prop_assert_eq!(decode_cursor(&bytes).unwrap(), cursor);
        }

        #[test]
        fn every_cut_or_extension_of_a_cursor_is_an_error(cursor in cursor_strategy(), extra in any::<u8>()) {
            let bytes = encode_cursor(&cursor);
            for len in 0..bytes.len() {
                prop_assert!(decode_cursor(&bytes[..len]).is_err(), "cut at {}", len);
            }
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(decode_cursor(&longer).is_err());
        }
    }
}
