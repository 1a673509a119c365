//! The small objects of a bucket: a copy's head and its claim. Pure:
//! encoding and decoding only (layouts in `docs/FORMAT.md`, "Bucket").
//!
//! Every such object ends with the blake3 hash of everything before it,
//! and is sealed under the database's key when the database has one (the
//! object's name is the sealed object's context, so a head cannot be
//! passed off as another copy's).

use crate::clock::{NodeId, Stamp};
use crate::codec::{Reader, Writer};
use crate::record::{decode_stamp, encode_stamp};
use crate::sync::SyncCursor;

/// First eight bytes of a head.
pub const HEAD_MAGIC: [u8; 8] = *b"MKVHEAD\x01";
/// First eight bytes of a claim.
pub const CLAIM_MAGIC: [u8; 8] = *b"MKVCLAM\x01";
/// Version of both layouts.
pub const BUCKET_FORMAT_VERSION: u16 = 1;
/// The largest head a reader takes, checked before it is downloaded.
pub const HEAD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// The most change objects one head may list.
pub const HEAD_OBJECTS_MAX: usize = 65_536;
/// The most entries a head's cursors and lists may hold.
pub const HEAD_ENTRIES_MAX: usize = 65_536;

/// One immutable object a copy published: its own changes with stamps in
/// `(after, last]`, a change stream (`docs/FORMAT.md`, "Change stream").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The copy's publication number (1, 2, ...): objects are merged in
    /// this order.
    pub seq: u64,
    /// Random, in the name: two writers under one id never collide.
    pub nonce: u64,
    /// The newest own stamp of the previous object (what this one follows).
    pub after: Stamp,
    /// The newest own stamp this object covers.
    pub last: Stamp,
    /// Key records in it.
    pub changes: u64,
    /// Its size.
    pub bytes: u64,
    /// blake3 of its bytes: a reader refuses anything else.
    pub hash: [u8; 32],
    /// Wall time when it was published (ms since the epoch).
    pub published_ms: u64,
}

/// A snapshot a copy published: every change it held (all origins), and
/// the cursor saying up to where, per origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The publisher's snapshot number.
    pub seq: u64,
    /// Random, in the name.
    pub nonce: u64,
    /// Per origin, the newest stamp up to which it holds everything.
    pub covers: SyncCursor,
    /// Key records in it.
    pub changes: u64,
    /// Its size.
    pub bytes: u64,
    /// blake3 of its bytes.
    pub hash: [u8; 32],
    /// Wall time when it was made (ms since the epoch).
    pub made_ms: u64,
}

/// An object dropped from a head, deleted once the grace period passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    /// Its name, relative to the bucket's prefix.
    pub name: String,
    /// Wall time when it was dropped from the head.
    pub since_ms: u64,
}

/// A copy's head: what it published and what it merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The copy.
    pub node: NodeId,
    /// The incarnation that claimed the node id.
    pub incarnation: [u8; 16],
    /// Bumped by one at every write of the head.
    pub generation: u64,
    /// Random per write: tells the writer its own write after a crash.
    pub nonce: u64,
    /// Wall time of this write (ms since the epoch).
    pub updated_ms: u64,
    /// A backup: it publishes and never pulls, so no copy waits for it
    /// (flags bit 0).
    pub backup_only: bool,
    /// `updated_ms` less this copy's tombstone grace: a reader takes the
    /// grace from it (the copy collects tombstones older than its grace
    /// at any time), and a copy joining with writes older than now less
    /// that grace could bring a deleted key back.
    pub collect_below_ms: u64,
    /// Live change objects, oldest first.
    pub objects: Vec<ObjectRef>,
    /// The copy's live snapshots, oldest first.
    pub snapshots: Vec<SnapshotRef>,
    /// Per origin, the newest stamp up to which the copy holds everything.
    pub merged: SyncCursor,
    /// Copies this one found silent past the horizon, with the generation
    /// of their head it last saw: it stopped waiting for them.
    pub expelled: Vec<(NodeId, u64)>,
    /// Objects dropped, to delete after the grace period.
    pub retired: Vec<Retired>,
}

/// A copy's claim on its node id: the first writer of the name owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The node id claimed.
    pub node: NodeId,
    /// The incarnation that claimed it.
    pub incarnation: [u8; 16],
    /// Wall time of the claim.
    pub claimed_ms: u64,
}

/// Why a head or claim was refused.
pub type DecodeResult<T> = std::result::Result<T, String>;

fn encode_cursor(w: &mut Writer, cursor: &SyncCursor) {
    w.u32(cursor.seen.len() as u32);
    for (node, stamp) in &cursor.seen {
        w.u64(node.0);
        encode_stamp(w, *stamp);
    }
}

fn decode_cursor(r: &mut Reader<'_>) -> DecodeResult<SyncCursor> {
    let n = count(r, "cursor entries")?;
    let mut cursor = SyncCursor::new();
    for _ in 0..n {
        let node = NodeId(r.u64().map_err(|e| e.to_string())?);
        let stamp = decode_stamp(r).map_err(|e| e.to_string())?;
        if stamp.node != node {
            return Err(format!(
                "a cursor entry for {node} holds a stamp of {}",
                stamp.node
            ));
        }
        cursor.seen.insert(node, stamp);
    }
    Ok(cursor)
}

/// A count, checked against [`HEAD_ENTRIES_MAX`] and against the bytes
/// left (every entry takes at least 8), before anything is allocated.
fn count(r: &mut Reader<'_>, what: &str) -> DecodeResult<usize> {
    let n = r.u32().map_err(|e| e.to_string())? as usize;
    if n > HEAD_ENTRIES_MAX || n.saturating_mul(8) > r.remaining() {
        return Err(format!("{n} {what}: more than the object can hold"));
    }
    Ok(n)
}

fn finish(mut w: Writer) -> Vec<u8> {
    let hash = blake3::hash(w.as_slice());
    w.bytes(hash.as_bytes());
    w.into_vec()
}

/// Checks the magic, version and trailing hash; returns a reader over the
/// body.
fn open<'a>(bytes: &'a [u8], magic: &[u8; 8], what: &str) -> DecodeResult<Reader<'a>> {
    if bytes.len() < 8 + 2 + 2 + 32 {
        return Err(format!("{} bytes: too short for a {what}", bytes.len()));
    }
    let (body, hash) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != hash {
        return Err(format!(
            "the {what}'s hash does not match its bytes (damaged or cut)"
        ));
    }
    let mut r = Reader::new(body);
    if r.take(8).map_err(|e| e.to_string())? != magic {
        return Err(format!("not a {what} (bad magic)"));
    }
    let version = r.u16().map_err(|e| e.to_string())?;
    if version != BUCKET_FORMAT_VERSION {
        return Err(format!(
            "{what} version {version}, this build reads {BUCKET_FORMAT_VERSION}"
        ));
    }
    Ok(r)
}

fn array<const N: usize>(r: &mut Reader<'_>) -> DecodeResult<[u8; N]> {
    let mut out = [0u8; N];
    out.copy_from_slice(r.take(N).map_err(|e| e.to_string())?);
    Ok(out)
}

impl Head {
    /// The head's bytes (before sealing).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256 + self.objects.len() * 112);
        w.bytes(&HEAD_MAGIC);
        w.u16(BUCKET_FORMAT_VERSION);
        w.u16(u16::from(self.backup_only));
        w.u64(self.node.0);
        w.bytes(&self.incarnation);
        w.u64(self.generation);
        w.u64(self.nonce);
        w.u64(self.updated_ms);
        w.u64(self.collect_below_ms);
        w.u32(self.objects.len() as u32);
        for o in &self.objects {
            w.u64(o.seq);
            w.u64(o.nonce);
            encode_stamp(&mut w, o.after);
            encode_stamp(&mut w, o.last);
            w.u64(o.changes);
            w.u64(o.bytes);
            w.bytes(&o.hash);
            w.u64(o.published_ms);
        }
        w.u32(self.snapshots.len() as u32);
        for s in &self.snapshots {
            w.u64(s.seq);
            w.u64(s.nonce);
            encode_cursor(&mut w, &s.covers);
            w.u64(s.changes);
            w.u64(s.bytes);
            w.bytes(&s.hash);
            w.u64(s.made_ms);
        }
        encode_cursor(&mut w, &self.merged);
        w.u32(self.expelled.len() as u32);
        for (node, generation) in &self.expelled {
            w.u64(node.0);
            w.u64(*generation);
        }
        w.u32(self.retired.len() as u32);
        for r in &self.retired {
            w.len_prefixed(r.name.as_bytes());
            w.u64(r.since_ms);
        }
        finish(w)
    }

    /// Reads a head's bytes (after opening the seal), checking every count
    /// against the bytes before allocating for it.
    ///
    /// # Errors
    ///
    /// A description of what is wrong if the bytes are not a well-formed head
    /// (bad magic or version, a count over its limit, objects out of order,
    /// trailing bytes).
    pub fn decode(bytes: &[u8]) -> DecodeResult<Head> {
        let mut r = open(bytes, &HEAD_MAGIC, "head")?;
        let e = |e: crate::codec::DecodeError| e.to_string();
        let flags = r.u16().map_err(e)?;
        if flags & !1 != 0 {
            return Err(format!("unknown head flags {flags:#x}"));
        }
        let node = NodeId(r.u64().map_err(e)?);
        let incarnation = array::<16>(&mut r)?;
        let generation = r.u64().map_err(e)?;
        let nonce = r.u64().map_err(e)?;
        let updated_ms = r.u64().map_err(e)?;
        let collect_below_ms = r.u64().map_err(e)?;
        let n = count(&mut r, "objects")?;
        if n > HEAD_OBJECTS_MAX {
            return Err(format!("{n} objects, more than {HEAD_OBJECTS_MAX}"));
        }
        let mut objects = Vec::with_capacity(n);
        for _ in 0..n {
            let o = ObjectRef {
                seq: r.u64().map_err(e)?,
                nonce: r.u64().map_err(e)?,
                after: decode_stamp(&mut r).map_err(e)?,
                last: decode_stamp(&mut r).map_err(e)?,
                changes: r.u64().map_err(e)?,
                bytes: r.u64().map_err(e)?,
                hash: array::<32>(&mut r)?,
                published_ms: r.u64().map_err(e)?,
            };
            if o.last.node != node || o.after.node != node || o.after > o.last {
                return Err(format!("object {} names stamps not of this copy", o.seq));
            }
            if objects.last().is_some_and(|p: &ObjectRef| p.seq >= o.seq) {
                return Err("objects out of order".into());
            }
            objects.push(o);
        }
        let n = count(&mut r, "snapshots")?;
        let mut snapshots = Vec::with_capacity(n);
        for _ in 0..n {
            let s = SnapshotRef {
                seq: r.u64().map_err(e)?,
                nonce: r.u64().map_err(e)?,
                covers: decode_cursor(&mut r)?,
                changes: r.u64().map_err(e)?,
                bytes: r.u64().map_err(e)?,
                hash: array::<32>(&mut r)?,
                made_ms: r.u64().map_err(e)?,
            };
            if snapshots
                .last()
                .is_some_and(|p: &SnapshotRef| p.seq >= s.seq)
            {
                return Err("snapshots out of order".into());
            }
            snapshots.push(s);
        }
        let merged = decode_cursor(&mut r)?;
        let n = count(&mut r, "expelled copies")?;
        let mut expelled = Vec::with_capacity(n);
        for _ in 0..n {
            expelled.push((NodeId(r.u64().map_err(e)?), r.u64().map_err(e)?));
        }
        let n = count(&mut r, "retired objects")?;
        let mut retired = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.len_prefixed(1024, "retired object name").map_err(e)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| "a retired object name is not UTF-8".to_string())?
                .to_string();
            retired.push(Retired {
                name,
                since_ms: r.u64().map_err(e)?,
            });
        }
        if r.remaining() != 0 {
            return Err(format!("{} bytes after the head", r.remaining()));
        }
        Ok(Head {
            node,
            incarnation,
            generation,
            nonce,
            updated_ms,
            backup_only: flags & 1 != 0,
            collect_below_ms,
            objects,
            snapshots,
            merged,
            expelled,
            retired,
        })
    }
}

impl Claim {
    /// The claim's bytes (before sealing).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(80);
        w.bytes(&CLAIM_MAGIC);
        w.u16(BUCKET_FORMAT_VERSION);
        w.u16(0);
        w.u64(self.node.0);
        w.bytes(&self.incarnation);
        w.u64(self.claimed_ms);
        finish(w)
    }

    /// Reads a claim's bytes (after opening the seal).
    ///
    /// # Errors
    ///
    /// A description of what is wrong if the bytes are not a well-formed claim.
    pub fn decode(bytes: &[u8]) -> DecodeResult<Claim> {
        let mut r = open(bytes, &CLAIM_MAGIC, "claim")?;
        let e = |e: crate::codec::DecodeError| e.to_string();
        let _flags = r.u16().map_err(e)?;
        let claim = Claim {
            node: NodeId(r.u64().map_err(e)?),
            incarnation: array::<16>(&mut r)?,
            claimed_ms: r.u64().map_err(e)?,
        };
        if r.remaining() != 0 {
            return Err(format!("{} bytes after the claim", r.remaining()));
        }
        Ok(claim)
    }
}

/// The name of a copy's head, relative to the bucket's prefix.
pub fn head_name(node: NodeId) -> String {
    format!("heads/{:016x}", node.0)
}

/// The name of a copy's claim.
pub fn claim_name(node: NodeId) -> String {
    format!("nodes/{:016x}/claim", node.0)
}

/// The name of a change object.
pub fn object_name(node: NodeId, seq: u64, nonce: u64) -> String {
    format!("nodes/{:016x}/changes/{seq:016x}-{nonce:016x}", node.0)
}

/// The name of a snapshot.
pub fn snapshot_name(node: NodeId, seq: u64, nonce: u64) -> String {
    format!("nodes/{:016x}/snapshots/{seq:016x}-{nonce:016x}", node.0)
}

/// The node id a head's name is for (`heads/<16 hex>`), if it is one.
pub fn node_of_head_name(name: &str) -> Option<NodeId> {
    let hex = name.strip_prefix("heads/")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(NodeId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ms: u64, node: u64) -> Stamp {
        Stamp {
            physical_ms: ms,
            logical: 3,
            node: NodeId(node),
        }
    }

    fn head() -> Head {
        let mut merged = SyncCursor::new();
        merged.seen.insert(NodeId(9), stamp(50, 9));
        Head {
            node: NodeId(7),
            incarnation: [4; 16],
            generation: 12,
            nonce: 99,
            updated_ms: 1_000,
            backup_only: true,
            collect_below_ms: 500,
            objects: vec![ObjectRef {
                seq: 3,
                nonce: 5,
                after: stamp(10, 7),
                last: stamp(20, 7),
                changes: 40,
                bytes: 4096,
                hash: [8; 32],
                published_ms: 950,
            }],
            snapshots: vec![SnapshotRef {
                seq: 1,
                nonce: 2,
                covers: merged.clone(),
                changes: 10,
                bytes: 100,
                hash: [1; 32],
                made_ms: 900,
            }],
            merged,
            expelled: vec![(NodeId(3), 4)],
            retired: vec![Retired {
                name: object_name(NodeId(7), 2, 1),
                since_ms: 800,
            }],
        }
    }

    #[test]
    fn heads_and_claims_round_trip() {
        let h = head();
        assert_eq!(Head::decode(&h.encode()).unwrap(), h);
        let c = Claim {
            node: NodeId(7),
            incarnation: [1; 16],
            claimed_ms: 5,
        };
        assert_eq!(Claim::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn every_byte_flipped_or_cut_is_refused_without_panic() {
        let bytes = head().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Head::decode(&b).is_err(), "byte {i}");
            assert!(Head::decode(&bytes[..i]).is_err(), "cut at {i}");
        }
    }

    #[test]
    fn names_parse_back() {
        assert_eq!(
            node_of_head_name(&head_name(NodeId(0xabc))),
            Some(NodeId(0xabc))
        );
        assert_eq!(node_of_head_name("heads/xyz"), None);
        assert_eq!(node_of_head_name("nodes/0000000000000abc/claim"), None);
    }
}
