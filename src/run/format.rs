//! The byte layout of a run file: header, section frames, footer, and the
//! small primitives (varints, zigzag, the filter's key hash) the sections
//! are built from. `docs/FORMAT.md`, "Sorted run", lists every byte; the
//! offsets here are built from each other so the two cannot drift apart.

use crate::clock::NodeId;
use crate::codec::{DecodeError, Reader};
use crate::crypto::{KEY_BLOCK_BYTES, TAG_BYTES};

/// First eight bytes of every run file.
pub const RUN_MAGIC: [u8; 8] = *b"MKVRUN\0\x01";
/// Version of the layout described here.
pub const RUN_FORMAT_VERSION: u16 = 1;

/// Byte offset of the version in the header.
pub const HEADER_VERSION_OFFSET: usize = RUN_MAGIC.len();
/// Byte offset of the header flags (bit 0: [`RUN_FLAG_ENCRYPTED`]; every
/// other bit 0).
pub const HEADER_FLAGS_OFFSET: usize = HEADER_VERSION_OFFSET + 2;
/// Byte offset of the writer's node id.
pub const HEADER_NODE_OFFSET: usize = HEADER_FLAGS_OFFSET + 2;
/// Byte offset of the run id.
pub const HEADER_RUN_ID_OFFSET: usize = HEADER_NODE_OFFSET + 8;
/// Byte offset of the header checksum (CRC-32C of the bytes before it).
pub const HEADER_CRC_OFFSET: usize = HEADER_RUN_ID_OFFSET + 8;
/// Length of the header; the first data block of a run in clear starts
/// here.
pub const HEADER_BYTES: usize = HEADER_CRC_OFFSET + 4;
/// Byte offset of an encrypted run's key block (key id, salt, CRC-32C;
/// [`KeyBlock`](crate::crypto::KeyBlock)), right after the header.
pub const KEY_BLOCK_OFFSET: usize = HEADER_BYTES;
/// Where an encrypted run's first data block starts: after the header and
/// the key block.
pub const ENCRYPTED_DATA_OFFSET: usize = KEY_BLOCK_OFFSET + KEY_BLOCK_BYTES;

/// Header and footer flag: the run is encrypted (a key block follows the
/// header, and every frame's payload is AES-256-GCM ciphertext and tag).
pub const RUN_FLAG_ENCRYPTED: u16 = 1;
/// Every flag this build knows; a header or footer with another is refused.
const RUN_FLAGS_KNOWN: u16 = RUN_FLAG_ENCRYPTED;

/// Bytes of an encrypted frame's associated data: run id (u64), frame
/// offset (u64), format version (u16), frame type (u8), decompressed
/// length (u64; 0 unless the frame is `L`).
pub const FRAME_AAD_BYTES: usize = 8 + 8 + 2 + 1 + 8;

/// Footer: offset of the node table (where the data blocks end).
pub const FOOTER_NODES_OFFSET: usize = 0;
/// Footer: offset of the block index.
pub const FOOTER_INDEX_OFFSET: usize = FOOTER_NODES_OFFSET + 8;
/// Footer: offset of the filter.
pub const FOOTER_FILTER_OFFSET: usize = FOOTER_INDEX_OFFSET + 8;
/// Footer: offset of the node table's second copy.
pub const FOOTER_NODES_COPY_OFFSET: usize = FOOTER_FILTER_OFFSET + 8;
/// Footer: number of data blocks.
pub const FOOTER_BLOCKS_OFFSET: usize = FOOTER_NODES_COPY_OFFSET + 8;
/// Footer: number of entries.
pub const FOOTER_ENTRIES_OFFSET: usize = FOOTER_BLOCKS_OFFSET + 8;
/// Footer: number of tombstones.
pub const FOOTER_TOMBSTONES_OFFSET: usize = FOOTER_ENTRIES_OFFSET + 8;
/// Footer: the run id.
pub const FOOTER_RUN_ID_OFFSET: usize = FOOTER_TOMBSTONES_OFFSET + 8;
/// Footer: the writer's node id.
pub const FOOTER_NODE_OFFSET: usize = FOOTER_RUN_ID_OFFSET + 8;
/// Footer: flags (the header's, repeated).
pub const FOOTER_FLAGS_OFFSET: usize = FOOTER_NODE_OFFSET + 8;
/// Footer: CRC-32C of the footer bytes before it.
pub const FOOTER_CRC_OFFSET: usize = FOOTER_FLAGS_OFFSET + 2;
/// Footer: the format version. Version and magic come last, so a reader
/// of any version finds them at the same place from the end of the file.
pub const FOOTER_VERSION_OFFSET: usize = FOOTER_CRC_OFFSET + 4;
/// Footer: the magic, repeated.
pub const FOOTER_MAGIC_OFFSET: usize = FOOTER_VERSION_OFFSET + 2;
/// Length of the footer, which ends the file.
pub const FOOTER_BYTES: usize = FOOTER_MAGIC_OFFSET + RUN_MAGIC.len();

/// Frame type of a data block stored as it is.
pub const FRAME_DATA_RAW: u8 = b'R';
/// Frame type of a data block stored LZ4-compressed (block format).
pub const FRAME_DATA_LZ4: u8 = b'L';
/// Frame type of the node table.
pub const FRAME_NODES: u8 = b'N';
/// Frame type of the block index.
pub const FRAME_INDEX: u8 = b'I';
/// Frame type of the filter.
pub const FRAME_FILTER: u8 = b'F';

/// Entries between two restart points of a data block (a restart stores
/// its key whole).
pub const RESTART_INTERVAL: usize = 16;

/// Largest decompressed data block a reader accepts: one entry can carry
/// the largest value and key the record codec allows, plus its floor and
/// counter lists.
pub const BLOCK_RAW_BYTES_MAX: usize = crate::record::limits::FRAME_PAYLOAD_BYTES_MAX
    + crate::record::limits::RECORD_KEY_BYTES_MAX
    + 15 * 1024 * 1024;
/// An LZ4 block expands at most about 255 times (a one-byte match token
/// plus length bytes of 255); a claimed length beyond this is damage,
/// refused before the output is allocated.
pub const LZ4_EXPANSION_MAX: usize = 255;
/// Largest index, filter or node-table section a reader accepts.
pub const SECTION_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most key bytes the decoded block index may hold in memory (first and
/// last key of every block). The writer refuses a run that would exceed it.
pub const INDEX_KEY_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most distinct nodes one run's stamps, floors and counters may name.
pub const NODE_TABLE_ENTRIES_MAX: usize = 65_536;
/// Most floor entries or counter totals one key may hold (the record
/// codec's u16 count: a state with more could not be logged).
pub const NODE_LIST_ENTRIES_MAX: usize = u16::MAX as usize;
/// Longest a varint may be (a u64 in 7-bit groups).
pub const VARINT_BYTES_MAX: usize = 10;
/// Longest a frame header may be: type, two varint lengths, CRC.
pub const FRAME_HEADER_BYTES_MAX: usize = 1 + 2 * VARINT_BYTES_MAX + 4;

/// Appends `v` as a LEB128 varint (7 bits per byte, low first).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes [`put_varint`] writes for `v`.
#[cfg(test)]
pub fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a varint, refusing overlong spellings (one value, one encoding)
/// and values beyond 64 bits.
pub fn get_varint(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    let at = r.position();
    let mut v = 0u64;
    for i in 0..VARINT_BYTES_MAX {
        let byte = r.u8()?;
        let low = u64::from(byte & 0x7F);
        if i == VARINT_BYTES_MAX - 1 && byte > 1 {
            return Err(Reader::invalid(at, "varint exceeds 64 bits"));
        }
        v |= low << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(Reader::invalid(at, "overlong varint"));
            }
            return Ok(v);
        }
    }
    Err(Reader::invalid(at, "varint exceeds 64 bits"))
}

/// Reads a varint that must fit a `usize` no larger than `max`.
pub fn get_len(r: &mut Reader<'_>, max: usize, what: &str) -> Result<usize, DecodeError> {
    let at = r.position();
    let v = get_varint(r)?;
    match usize::try_from(v) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(Reader::invalid(
            at,
            format!("{what} {v} exceeds the limit {max}"),
        )),
    }
}

/// `physical - base` as a zigzag-encoded unsigned number: small either
/// side of the base. Wrapping, so every `u64` pair has exactly one code.
pub fn zigzag_delta(physical: u64, base: u64) -> u64 {
    let d = physical.wrapping_sub(base) as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

/// The inverse of [`zigzag_delta`].
pub fn unzigzag_delta(code: u64, base: u64) -> u64 {
    let d = ((code >> 1) as i64) ^ -((code & 1) as i64);
    base.wrapping_add(d as u64)
}

/// The filter's key hash, part of the format (a filter is only as good as
/// the reader's agreement with the writer): every 8 bytes of the key (the
/// last group zero-padded), little-endian as `w`, go through
/// `h = rotl((h ^ w) * K, 29)`, starting from `S ^ (len * K)`, and the
/// result through MurmurHash3's 64-bit finaliser.
pub fn key_hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    const S: u64 = 0x243F_6A88_85A3_08D3;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut h = S ^ (key.len() as u64).wrapping_mul(K);
    let mut groups = key.chunks_exact(8);
    for group in &mut groups {
        let mut w = [0u8; 8];
        w.copy_from_slice(group);
        h = step(h, u64::from_le_bytes(w));
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        if let Some(head) = w.get_mut(..rest.len()) {
            head.copy_from_slice(rest);
        }
        h = step(h, u64::from_le_bytes(w));
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output
/// bit.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The length of the common prefix of `a` and `b`.
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The fixed header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The writer's node id.
    pub node: NodeId,
    /// The run id.
    pub run_id: u64,
    /// The run is encrypted ([`RUN_FLAG_ENCRYPTED`]).
    pub encrypted: bool,
}

/// Where the data blocks of a run start: after the header, and after the
/// key block too if the run is encrypted.
pub fn data_start(encrypted: bool) -> u64 {
    if encrypted {
        ENCRYPTED_DATA_OFFSET as u64
    } else {
        HEADER_BYTES as u64
    }
}

fn flags_of(encrypted: bool) -> u16 {
    if encrypted { RUN_FLAG_ENCRYPTED } else { 0 }
}

/// The header's bytes.
pub fn encode_header(header: Header) -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    let mut w = Vec::with_capacity(HEADER_BYTES);
    w.extend_from_slice(&RUN_MAGIC);
    w.extend_from_slice(&RUN_FORMAT_VERSION.to_le_bytes());
    w.extend_from_slice(&flags_of(header.encrypted).to_le_bytes());
    w.extend_from_slice(&header.node.0.to_le_bytes());
    w.extend_from_slice(&header.run_id.to_le_bytes());
    let crc = crc32c::crc32c(&w);
    w.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(w.len(), HEADER_BYTES);
    out.copy_from_slice(&w);
    out
}

/// Decodes the header at the start of `bytes`: `(offset, reason)` on any
/// problem.
pub fn decode_header(bytes: &[u8]) -> Result<Header, (u64, String)> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Err((0, format!("{} bytes, shorter than a header", bytes.len())));
    };
    if header.get(..RUN_MAGIC.len()) != Some(&RUN_MAGIC[..]) {
        return Err((0, "not a run file (bad magic)".into()));
    }
    let mut r = Reader::new(header);
    let fields = (|| {
        r.take(RUN_MAGIC.len())?;
        Ok::<_, DecodeError>((r.u16()?, r.u16()?, r.u64()?, r.u64()?, r.u32()?))
    })();
    let Ok((version, flags, node, run_id, crc)) = fields else {
        return Err((0, "header truncated".into()));
    };
    check_fixed(
        header,
        "header",
        (HEADER_VERSION_OFFSET, version),
        (HEADER_CRC_OFFSET, crc),
        (HEADER_FLAGS_OFFSET, flags),
    )?;
    Ok(Header {
        node: NodeId(node),
        run_id,
        encrypted: flags & RUN_FLAG_ENCRYPTED != 0,
    })
}

/// The checks a header and a footer share, in this order: the version
/// (so a newer format says so rather than failing its checksum), the
/// CRC-32C of the bytes before the checksum field, then that the flags
/// are ones this build knows. Each
/// field is given with its offset in `bytes`.
fn check_fixed(
    bytes: &[u8],
    what: &str,
    (version_at, version): (usize, u16),
    (crc_at, crc): (usize, u32),
    (flags_at, flags): (usize, u16),
) -> std::result::Result<(), (u64, String)> {
    if version != RUN_FORMAT_VERSION {
        return Err((version_at as u64, unsupported_version(version)));
    }
    let expected = bytes.get(..crc_at).map(crc32c::crc32c).unwrap_or_default();
    if crc != expected {
        return Err((crc_at as u64, format!("{what} checksum mismatch")));
    }
    if flags & !RUN_FLAGS_KNOWN != 0 {
        return Err((flags_at as u64, format!("unknown {what} flags {flags:#x}")));
    }
    Ok(())
}

/// The message for a version this build does not read.
pub fn unsupported_version(version: u16) -> String {
    format!(
        "run format version {version} is not supported (this build reads version {RUN_FORMAT_VERSION})"
    )
}

/// The footer's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the node table: the data blocks end here.
    pub nodes_offset: u64,
    /// Offset of the block index.
    pub index_offset: u64,
    /// Offset of the filter.
    pub filter_offset: u64,
    /// Offset of the node table's copy (the footer follows it).
    pub nodes_copy_offset: u64,
    /// Data blocks.
    pub blocks: u64,
    /// Entries.
    pub entries: u64,
    /// Tombstones among them.
    pub tombstones: u64,
    /// The run id.
    pub run_id: u64,
    /// The writer's node id.
    pub node: NodeId,
    /// The run is encrypted ([`RUN_FLAG_ENCRYPTED`]; must equal the
    /// header's).
    pub encrypted: bool,
}

/// The footer's bytes and its checksum.
pub fn encode_footer(f: &Footer) -> ([u8; FOOTER_BYTES], u32) {
    let mut w = Vec::with_capacity(FOOTER_BYTES);
    for v in [
        f.nodes_offset,
        f.index_offset,
        f.filter_offset,
        f.nodes_copy_offset,
        f.blocks,
        f.entries,
        f.tombstones,
        f.run_id,
        f.node.0,
    ] {
        w.extend_from_slice(&v.to_le_bytes());
    }
    w.extend_from_slice(&flags_of(f.encrypted).to_le_bytes());
    debug_assert_eq!(w.len(), FOOTER_CRC_OFFSET);
    let crc = crc32c::crc32c(&w);
    w.extend_from_slice(&crc.to_le_bytes());
    w.extend_from_slice(&RUN_FORMAT_VERSION.to_le_bytes());
    w.extend_from_slice(&RUN_MAGIC);
    let mut out = [0u8; FOOTER_BYTES];
    out.copy_from_slice(&w);
    (out, crc)
}

/// Decodes a footer (exactly [`FOOTER_BYTES`]): the fields and its
/// checksum, or `(offset within the footer, reason)`.
pub fn decode_footer(bytes: &[u8]) -> Result<(Footer, u32), (u64, String)> {
    if bytes.len() != FOOTER_BYTES {
        return Err((0, format!("{} bytes, not a footer", bytes.len())));
    }
    if bytes.get(FOOTER_MAGIC_OFFSET..) != Some(&RUN_MAGIC[..]) {
        return Err((
            FOOTER_MAGIC_OFFSET as u64,
            "not a run file, or cut short (no footer magic at the end)".into(),
        ));
    }
    let mut r = Reader::new(bytes);
    let parsed = (|| {
        let mut v = [0u64; 9];
        for slot in &mut v {
            *slot = r.u64()?;
        }
        Ok::<_, DecodeError>((v, r.u16()?, r.u32()?, r.u16()?))
    })();
    let Ok((v, flags, crc, version)) = parsed else {
        return Err((0, "footer truncated".into()));
    };
    check_fixed(
        bytes,
        "footer",
        (FOOTER_VERSION_OFFSET, version),
        (FOOTER_CRC_OFFSET, crc),
        (FOOTER_FLAGS_OFFSET, flags),
    )?;
    let [
        nodes_offset,
        index_offset,
        filter_offset,
        nodes_copy_offset,
        blocks,
        entries,
        tombstones,
        run_id,
        node,
    ] = v;
    let footer = Footer {
        nodes_offset,
        index_offset,
        filter_offset,
        nodes_copy_offset,
        blocks,
        entries,
        tombstones,
        run_id,
        node: NodeId(node),
        encrypted: flags & RUN_FLAG_ENCRYPTED != 0,
    };
    Ok((footer, crc))
}

/// Appends a frame: type, stored length, raw length (LZ4 only), CRC-32C of
/// those header bytes and the payload, then the payload. For an encrypted
/// run, `payload` is already the ciphertext and its tag (and `raw_len`
/// still the decompressed length).
pub fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8], raw_len: usize) {
    let start = out.len();
    out.push(kind);
    put_varint(out, payload.len() as u64);
    if kind == FRAME_DATA_LZ4 {
        put_varint(out, raw_len as u64);
    }
    let mut crc = crc32c::crc32c(out.get(start..).unwrap_or_default());
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The associated data of an encrypted run's frame: run id, the frame's
/// offset in the file, the format version, the frame type and the
/// decompressed length (`L` only; 0 for any other type), so a frame moved
/// to another offset or another run, or retyped, fails authentication.
pub fn frame_aad(run_id: u64, offset: u64, kind: u8, raw_len: usize) -> [u8; FRAME_AAD_BYTES] {
    let raw_len = if kind == FRAME_DATA_LZ4 {
        raw_len as u64
    } else {
        0
    };
    let mut out = [0u8; FRAME_AAD_BYTES];
    let fields = run_id
        .to_le_bytes()
        .into_iter()
        .chain(offset.to_le_bytes())
        .chain(RUN_FORMAT_VERSION.to_le_bytes())
        .chain([kind])
        .chain(raw_len.to_le_bytes());
    for (slot, byte) in out.iter_mut().zip(fields) {
        *slot = byte;
    }
    out
}

/// A frame read from bytes whose checksum held.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Its type.
    pub kind: u8,
    /// The payload as stored (an encrypted run's: ciphertext, then tag).
    pub payload: &'a [u8],
    /// The decompressed length (the stored length unless LZ4).
    pub raw_len: usize,
    /// Bytes of the whole frame, header included.
    pub frame_len: usize,
}

/// Reads the frame at the start of `bytes` (which may run on past it) and
/// checks its type is known, its lengths are within the limits and its
/// checksum holds. A `sealed` frame (an encrypted run's) carries a
/// [`TAG_BYTES`] tag after its ciphertext: its stored length may pass the
/// limit by that much, must hold the tag, and an LZ4 block's decompressed
/// length is checked against the ciphertext alone. `Err((offset within
/// bytes, reason))`.
pub fn read_frame(bytes: &[u8], sealed: bool) -> Result<Frame<'_>, (u64, String)> {
    let tag = if sealed { TAG_BYTES } else { 0 };
    let mut r = Reader::new(bytes);
    let fail = |at: usize, why: String| Err((at as u64, why));
    let Ok(kind) = r.u8() else {
        return fail(0, "frame header cut short".into());
    };
    let stored_max = match kind {
        FRAME_DATA_RAW | FRAME_DATA_LZ4 => BLOCK_RAW_BYTES_MAX,
        FRAME_NODES | FRAME_INDEX | FRAME_FILTER => SECTION_BYTES_MAX,
        other => return fail(0, format!("unknown frame type {other:#04x}")),
    } + tag;
    let stored_len = match get_len(&mut r, stored_max, "frame length") {
        Ok(n) => n,
        Err(e) => return fail(1, e.to_string()),
    };
    let Some(body_len) = stored_len.checked_sub(tag) else {
        return fail(
            1,
            format!("encrypted frame of {stored_len} bytes, shorter than its tag"),
        );
    };
    let raw_len = if kind == FRAME_DATA_LZ4 {
        let at = r.position();
        let raw = match get_len(&mut r, BLOCK_RAW_BYTES_MAX, "decompressed block length") {
            Ok(n) => n,
            Err(e) => return fail(at, e.to_string()),
        };
        if raw > body_len.saturating_mul(LZ4_EXPANSION_MAX) || raw == 0 {
            return fail(
                at,
                format!("decompressed length {raw} impossible from {body_len} stored bytes"),
            );
        }
        raw
    } else {
        stored_len
    };
    let header_len = r.position();
    let Ok(crc) = r.u32() else {
        return fail(header_len, "frame header cut short".into());
    };
    let Ok(payload) = r.take(stored_len) else {
        return fail(
            header_len,
            format!(
                "frame of {stored_len} bytes runs past the end ({} left)",
                bytes.len().saturating_sub(header_len + 4)
            ),
        );
    };
    let mut expected = crc32c::crc32c(bytes.get(..header_len).unwrap_or_default());
    expected = crc32c::crc32c_append(expected, payload);
    if crc != expected {
        return fail(header_len, "frame checksum mismatch".into());
    }
    Ok(Frame {
        kind,
        payload,
        raw_len,
        frame_len: r.position(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_overlong_spellings() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut r = Reader::new(&out);
            assert_eq!(get_varint(&mut r).unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
        assert!(
            get_varint(&mut Reader::new(&[0x80, 0x00])).is_err(),
            "overlong zero"
        );
        assert!(
            get_varint(&mut Reader::new(&[0xFF; 10])).is_err(),
            "past 64 bits"
        );
        let mut eleven = vec![0xFF; 9];
        eleven.push(0x02);
        assert!(
            get_varint(&mut Reader::new(&eleven)).is_err(),
            "past 64 bits"
        );
        assert!(get_varint(&mut Reader::new(&[0x80])).is_err(), "cut short");
    }

    #[test]
    fn zigzag_deltas_are_small_both_ways_and_invert_everywhere() {
        assert_eq!(zigzag_delta(100, 100), 0);
        assert_eq!(zigzag_delta(99, 100), 1);
        assert_eq!(zigzag_delta(101, 100), 2);
        for (p, b) in [(0, u64::MAX), (u64::MAX, 0), (5, 7), (1 << 63, 1)] {
            assert_eq!(unzigzag_delta(zigzag_delta(p, b), b), p);
        }
    }

    #[test]
    fn the_key_hash_is_stable() {
        // Part of the format: a change here makes every filter written so
        // far answer wrongly.
        assert_eq!(key_hash(b""), 0x7acd_bb98_b134_4213);
        assert_eq!(key_hash(b"\0sixteen bytes..."), 0xc0df_b4ce_e32f_9acd);
        assert_ne!(key_hash(b"a"), key_hash(b"a\0"), "length is hashed");
    }

    #[test]
    fn header_and_footer_round_trip_and_name_a_wrong_version() {
        // The sizes docs/FORMAT.md gives.
        assert_eq!((HEADER_BYTES, FOOTER_BYTES), (32, 88));
        assert_eq!((FOOTER_RUN_ID_OFFSET, FOOTER_CRC_OFFSET), (56, 74));
        let header = Header {
            node: NodeId(9),
            run_id: 42,
            encrypted: false,
        };
        let bytes = encode_header(header);
        assert_eq!(decode_header(&bytes).unwrap(), header);
        let mut other = bytes;
        other[HEADER_VERSION_OFFSET] = 7;
        let (_, why) = decode_header(&other).unwrap_err();
        assert!(why.contains("version 7 is not supported"), "{why}");

        let footer = Footer {
            nodes_offset: 1,
            index_offset: 2,
            filter_offset: 3,
            nodes_copy_offset: 4,
            blocks: 5,
            entries: 6,
            tombstones: 7,
            run_id: 8,
            node: NodeId(9),
            encrypted: false,
        };
        let (bytes, crc) = encode_footer(&footer);
        assert_eq!(decode_footer(&bytes).unwrap(), (footer, crc));
        let mut other = bytes;
        other[FOOTER_VERSION_OFFSET] = 2;
        let (_, why) = decode_footer(&other).unwrap_err();
        assert!(why.contains("version 2 is not supported"), "{why}");
    }

    #[test]
    fn frames_round_trip_and_check_their_crc() {
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_DATA_RAW, b"hello", 5);
        put_frame(&mut out, FRAME_INDEX, b"", 0);
        let first = read_frame(&out, false).unwrap();
        assert_eq!((first.kind, first.payload), (FRAME_DATA_RAW, &b"hello"[..]));
        let second = read_frame(&out[first.frame_len..], false).unwrap();
        assert_eq!(second.frame_len, out.len() - first.frame_len);
        for i in 0..first.frame_len {
            let mut damaged = out.clone();
            damaged[i] ^= 0x10;
            assert!(read_frame(&damaged, false).is_err(), "flip at {i}");
        }
        assert!(read_frame(&[0; 16], false).is_err(), "zeros are no frame");
    }
}
