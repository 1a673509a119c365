//! The change-set byte format (see `docs/FORMAT.md`, "Change set").

use crate::clock::NodeId;
use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result};
use crate::record::{Record, decode_records_to_end, decode_stamp, encode_record, encode_stamp};

use super::SyncCursor;

/// First eight bytes of every change set.
pub const CHANGESET_MAGIC: [u8; 8] = *b"MKVCHG\0\x01";
/// Version of the layout.
pub const CHANGESET_FORMAT_VERSION: u16 = 1;
/// Length of the blake3 digest that ends a change set.
pub const CHANGESET_DIGEST_BYTES: usize = 32;
/// Most cursor entries (origin nodes) a change set may carry.
pub const CHANGESET_CURSOR_ENTRIES_MAX: usize = u16::MAX as usize;

/// A decoded, verified change set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    /// The node that exported it.
    pub origin: NodeId,
    /// The exporter's cursor after these changes.
    pub cursor: SyncCursor,
    /// The changes, one per key.
    pub records: Vec<Record>,
    /// blake3 of the content: the change set's identity.
    pub digest: [u8; 32],
}

/// Encodes a change set.
pub fn encode(origin: NodeId, cursor: &SyncCursor, records: &[Record]) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + records.len() * 64);
    w.bytes(&CHANGESET_MAGIC);
    w.u16(CHANGESET_FORMAT_VERSION);
    w.u16(0);
    w.u64(origin.0);
    w.u64(records.len() as u64);
    w.u32(cursor.seen.len() as u32);
    for (node, stamp) in &cursor.seen {
        w.u64(node.0);
        encode_stamp(&mut w, *stamp);
    }
    for record in records {
        encode_record(&mut w, record);
    }
    let digest = blake3::hash(w.as_slice());
    w.bytes(digest.as_bytes());
    w.into_vec()
}

/// Verifies and decodes a change set; any damage is
/// [`Error::Decode`] and nothing of it is used.
pub fn decode(bytes: &[u8]) -> Result<ChangeSet> {
    let fail = |reason: String| Error::Decode {
        what: "change set",
        reason,
    };
    if bytes.len() < CHANGESET_DIGEST_BYTES {
        return Err(fail("shorter than its digest".into()));
    }
    let (content, digest) = bytes.split_at(bytes.len() - CHANGESET_DIGEST_BYTES);
    if blake3::hash(content).as_bytes() != digest {
        return Err(fail("digest mismatch (damaged or truncated)".into()));
    }
    let mut out = decode_content(content).map_err(|e| fail(e.to_string()))?;
    out.digest.copy_from_slice(digest);
    Ok(out)
}

fn decode_content(content: &[u8]) -> std::result::Result<ChangeSet, DecodeError> {
    let mut r = Reader::new(content);
    if r.take(8)? != CHANGESET_MAGIC {
        return Err(Reader::invalid(0, "not a mergekv change set (bad magic)"));
    }
    let version = r.u16()?;
    if version != CHANGESET_FORMAT_VERSION {
        return Err(Reader::invalid(
            8,
            format!("unsupported change set version {version}"),
        ));
    }
    r.u16()?;
    let origin = NodeId(r.u64()?);
    let count = r.u64()?;
    let cursor_entries = r.u32()? as usize;
    if cursor_entries > CHANGESET_CURSOR_ENTRIES_MAX {
        return Err(Reader::invalid(28, "too many cursor entries"));
    }
    let mut cursor = SyncCursor::new();
    for _ in 0..cursor_entries {
        let node = NodeId(r.u64()?);
        cursor.seen.insert(node, decode_stamp(&mut r)?);
    }
    let records = decode_records_to_end(&mut r, count)?;
    Ok(ChangeSet {
        origin,
        cursor,
        records,
        digest: [0; 32],
    })
}
