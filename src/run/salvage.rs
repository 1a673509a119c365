//! Salvage: every entry of every block of a damaged run that checks out,
//! and exactly which blocks were lost.
//!
//! With a readable footer, node table and index, each block is tried where
//! the index puts it, and a block that fails is reported with its offset,
//! length, first and last key and entry count. When the footer or the
//! index is damaged, the file is walked frame by frame from the header: a
//! frame that checks out is taken whole (so nothing inside a good block,
//! such as a stored value that happens to look like a frame, is ever
//! read as one), and across damaged bytes every later offset is tried
//! until a frame checks out again. An index or node table found that way
//! is used as if the footer had named it. Blocks found by scanning are
//! kept only while their keys keep increasing.
//!
//! An encrypted run is salvaged the same way, each frame decrypted where
//! it lies; a frame whose checksum holds but whose tag fails (moved or
//! changed) is lost like a damaged one. Whether a run is encrypted is
//! what its header says, else its footer, else whether a key block checks
//! out after the header. Without its key, or with its key block damaged
//! (the salt is lost, so no frame can be decrypted), a salvage fails
//! rather than report every entry lost: a missing key must not turn into
//! a repair that drops the run's data.

use std::borrow::Cow;
use std::path::Path;

use crate::clock::NodeId;
use crate::crdt::KeyState;
use crate::crypto::{Domain, KeyBlock, Keyring};
use crate::error::{Error, Result};
use crate::io::Io;
use crate::record::StoreKey;

use super::block::count_entries;
use super::crypt::{RunCipher, plaintext};
use super::entry::materialize;
use super::format::{
    FOOTER_BYTES, FRAME_DATA_LZ4, FRAME_DATA_RAW, FRAME_INDEX, FRAME_NODES, Footer, Frame, Header,
    KEY_BLOCK_OFFSET, data_start, decode_footer, decode_header, read_frame,
};
use super::index::BlockIndex;
use super::parse_run_file_name;
use super::reader::{decode_node_table, decompress_frame, visit_block};

/// What a salvage kept and what it lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSalvage {
    /// Every entry of every block that checked out, in key order.
    pub entries: Vec<(StoreKey, KeyState)>,
    /// The blocks (or spans of unreadable bytes) lost, in file order.
    pub lost: Vec<LostBlock>,
    /// The node that wrote the run, if the header or footer says.
    pub node: Option<NodeId>,
}

/// A block (or span of bytes) a salvage could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostBlock {
    /// Where it starts in the file.
    pub offset_bytes: u64,
    /// Its length.
    pub len_bytes: u64,
    /// Its first key, when the index was readable.
    pub first_key: Option<Vec<u8>>,
    /// Its last key, when the index was readable.
    pub last_key: Option<Vec<u8>>,
    /// Its entry count, when the index was readable.
    pub entries: Option<u64>,
    /// Why it was lost.
    pub reason: String,
}

/// Salvages the run file at `path`; see the module docs. Fails on its
/// contents only for an encrypted run it cannot decrypt: with
/// `Error::Key(KeyError::Missing)` if `keyring` lacks the run's key, with
/// `Error::Corruption` if the key block is damaged.
pub fn salvage_run(io: &Io, path: &Path, keyring: &Keyring) -> Result<RunSalvage> {
    let bytes = io.read(path)?;
    salvage_bytes(&bytes, path, keyring)
}

/// Salvages a run file's bytes (`path` names it in errors, and gives the
/// run id if both the header and the footer are lost).
pub fn salvage_bytes(bytes: &[u8], path: &Path, keyring: &Keyring) -> Result<RunSalvage> {
    let header = decode_header(bytes).ok();
    let footer = footer_of(bytes);
    let cipher = salvage_cipher(bytes, path, keyring, header, footer)?;
    let cipher = cipher.as_ref();
    let data_start = data_start(cipher.is_some());
    let footer = footer.filter(|f| footer_fits(bytes, f, data_start, cipher.is_some()));
    let mut out = RunSalvage {
        node: header.map(|h| h.node).or(footer.map(|f| f.node)),
        ..RunSalvage::default()
    };
    let from_footer = footer.map(|f| {
        let nodes = section(bytes, f.nodes_offset, FRAME_NODES, cipher)
            .or_else(|| section(bytes, f.nodes_copy_offset, FRAME_NODES, cipher))
            .and_then(|p| decode_node_table(&p).ok());
        let index = section(bytes, f.index_offset, FRAME_INDEX, cipher)
            .and_then(|p| BlockIndex::decode(&p, data_start, Some(f.nodes_offset)).ok());
        (nodes, index)
    });
    let (mut nodes, mut index) = from_footer.unwrap_or((None, None));
    let scan = (nodes.is_none() || index.is_none())
        .then(|| scan_frames(bytes, footer, data_start, cipher.is_some()));
    let found = |kind: u8| {
        scan.iter().flatten().filter_map(move |piece| match piece {
            Piece::Frame { offset, frame, .. } if frame.kind == kind => {
                plaintext(cipher, frame, *offset).ok()
            }
            _ => None,
        })
    };
    if nodes.is_none() {
        nodes = found(FRAME_NODES).find_map(|p| decode_node_table(&p).ok());
    }
    if index.is_none() {
        index = found(FRAME_INDEX).find_map(|p| BlockIndex::decode(&p, data_start, None).ok());
    }
    match (index, &scan) {
        (Some(index), _) => salvage_by_index(bytes, &index, nodes.as_deref(), cipher, &mut out),
        (None, Some(pieces)) => {
            // The data ends where the footer says, else at the first
            // section found after it.
            let first_section = pieces.iter().find_map(|piece| match piece {
                Piece::Frame { offset, frame, .. }
                    if frame.kind != FRAME_DATA_RAW && frame.kind != FRAME_DATA_LZ4 =>
                {
                    Some(*offset)
                }
                _ => None,
            });
            let data_end = footer
                .map(|f| f.nodes_offset)
                .or(first_section)
                .unwrap_or_else(|| bytes.len().saturating_sub(FOOTER_BYTES) as u64);
            salvage_by_scan(pieces, data_end, nodes.as_deref(), cipher, &mut out);
        }
        (None, None) => {}
    }
    Ok(out)
}

/// The footer at the end of `bytes`, if its checksum holds (its offsets
/// not yet checked: see [`footer_fits`]).
fn footer_of(bytes: &[u8]) -> Option<Footer> {
    let at = bytes.len().checked_sub(FOOTER_BYTES)?;
    decode_footer(bytes.get(at..)?)
        .ok()
        .map(|(footer, _)| footer)
}

/// Whether `footer` describes a file like `bytes`: in clear or encrypted
/// as the salvage found it, its offsets in order from the data's start to
/// the footer.
fn footer_fits(bytes: &[u8], footer: &Footer, data_start: u64, encrypted: bool) -> bool {
    let at = bytes.len().saturating_sub(FOOTER_BYTES) as u64;
    let offsets = [
        data_start,
        footer.nodes_offset,
        footer.index_offset,
        footer.filter_offset,
        footer.nodes_copy_offset,
        at,
    ];
    footer.encrypted == encrypted && offsets.is_sorted()
}

/// The cipher of an encrypted run, `None` for a run in clear. Whether it
/// is encrypted: the header says, else the footer, else whether a key
/// block checks out where it would be.
fn salvage_cipher(
    bytes: &[u8],
    path: &Path,
    keyring: &Keyring,
    header: Option<Header>,
    footer: Option<Footer>,
) -> Result<Option<RunCipher>> {
    let block = KeyBlock::decode(bytes.get(KEY_BLOCK_OFFSET..).unwrap_or_default());
    let encrypted = match (header, footer) {
        (Some(h), _) => h.encrypted,
        (None, Some(f)) => f.encrypted,
        (None, None) => block.is_ok(),
    };
    if !encrypted {
        return Ok(None);
    }
    let block = block.map_err(|why| {
        Error::corruption(
            path,
            KEY_BLOCK_OFFSET as u64,
            format!(
                "the run is encrypted and its key block is damaged ({why}): without its salt, \
                 the run cannot be decrypted"
            ),
        )
    })?;
    let file_name_id = || {
        path.file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_run_file_name)
    };
    let run_id = header
        .map(|h| h.run_id)
        .or(footer.map(|f| f.run_id))
        .or_else(file_name_id);
    let Some(run_id) = run_id else {
        return Err(Error::corruption(
            path,
            0,
            "the run is encrypted, and its id (bound into every frame) is lost with its \
             header, its footer and its file name",
        ));
    };
    let cipher = keyring.cipher(&block, Domain::Run, path)?;
    Ok(Some(RunCipher::new(cipher, run_id)))
}

/// The plaintext payload of the frame of type `kind` at `offset`, if it
/// checks out (and, encrypted, authenticates).
fn section<'a>(
    bytes: &'a [u8],
    offset: u64,
    kind: u8,
    cipher: Option<&RunCipher>,
) -> Option<Cow<'a, [u8]>> {
    let at = bytes.get(usize::try_from(offset).ok()?..)?;
    let frame = read_frame(at, cipher.is_some()).ok()?;
    if frame.kind != kind {
        return None;
    }
    plaintext(cipher, &frame, offset).ok()
}

fn salvage_by_index(
    bytes: &[u8],
    index: &BlockIndex,
    nodes: Option<&[NodeId]>,
    cipher: Option<&RunCipher>,
    out: &mut RunSalvage,
) {
    for i in 0..index.len() {
        let Some(meta) = index.block(i) else {
            break;
        };
        let (first, last) = (index.first_key(meta), index.last_key(meta));
        let kept = match nodes {
            None => Err("the node table is lost".to_string()),
            Some(nodes) => {
                let start = usize::try_from(meta.offset).unwrap_or(usize::MAX);
                let end =
                    start.saturating_add(usize::try_from(meta.frame_len).unwrap_or(usize::MAX));
                match bytes.get(start..end) {
                    None => Err("the file ends before the block".to_string()),
                    Some(frame) => block_entries(
                        frame,
                        (meta.offset, cipher),
                        Some(meta.entries as usize),
                        nodes,
                        Some((first, last)),
                    ),
                }
            }
        };
        match kept {
            Ok(entries) => out.entries.extend(entries),
            Err(reason) => out.lost.push(LostBlock {
                offset_bytes: meta.offset,
                len_bytes: meta.frame_len,
                first_key: Some(first.to_vec()),
                last_key: Some(last.to_vec()),
                entries: Some(meta.entries),
                reason,
            }),
        }
    }
}

/// The entries of the block frame `frame` (exactly one frame, at
/// `offset`, decrypted with `cipher` if the run is encrypted): all of
/// them, or why not. Without an index, the count comes from the block.
fn block_entries(
    frame: &[u8],
    (offset, cipher): (u64, Option<&RunCipher>),
    entries: Option<usize>,
    nodes: &[NodeId],
    edges: Option<(&[u8], &[u8])>,
) -> std::result::Result<Vec<(StoreKey, KeyState)>, String> {
    let raw = decompress_frame(frame, offset, cipher).map_err(|(_, why)| why)?;
    let entries = match entries {
        Some(n) => n,
        None => count_entries(&raw, nodes).map_err(|e| e.to_string())?,
    };
    let mut out = Vec::new();
    visit_block(&raw, entries, nodes, edges, |key, state, cx| {
        out.push((StoreKey::from(key), materialize(state, cx)?));
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A frame found by walking the file, or a span where none was.
#[derive(Clone, Copy, Debug)]
enum Piece<'a> {
    Frame {
        offset: u64,
        frame: Frame<'a>,
        bytes: &'a [u8],
    },
    Gap {
        offset: u64,
        len: u64,
    },
}

/// Walks the file from `data_start` (the end of the header, or of the key
/// block) to the footer (the end of the file if the footer is damaged): a
/// frame that checks out is taken whole; past damage, every offset is
/// tried. An encrypted run's frames are `sealed` (carry a tag).
fn scan_frames(
    bytes: &[u8],
    footer: Option<Footer>,
    data_start: u64,
    sealed: bool,
) -> Vec<Piece<'_>> {
    let end = match footer {
        Some(_) => bytes.len().saturating_sub(FOOTER_BYTES),
        None => bytes.len(),
    };
    let region = bytes.get(..end).unwrap_or_default();
    let mut pieces = Vec::new();
    let mut gap: Option<usize> = None;
    let mut pos = usize::try_from(data_start).unwrap_or(usize::MAX);
    while pos < end {
        match read_frame(region.get(pos..).unwrap_or_default(), sealed) {
            Ok(frame) => {
                if let Some(start) = gap.take() {
                    pieces.push(Piece::Gap {
                        offset: start as u64,
                        len: (pos - start) as u64,
                    });
                }
                pieces.push(Piece::Frame {
                    offset: pos as u64,
                    frame,
                    bytes: region.get(pos..pos + frame.frame_len).unwrap_or_default(),
                });
                pos += frame.frame_len;
            }
            Err(_) => {
                gap.get_or_insert(pos);
                pos += 1;
            }
        }
    }
    if let Some(start) = gap {
        pieces.push(Piece::Gap {
            offset: start as u64,
            len: (end - start) as u64,
        });
    }
    pieces
}

/// Salvages the data blocks found by [`scan_frames`] before `data_end`,
/// keeping a block only if its keys lie above every key kept so far.
fn salvage_by_scan(
    pieces: &[Piece<'_>],
    data_end: u64,
    nodes: Option<&[NodeId]>,
    cipher: Option<&RunCipher>,
    out: &mut RunSalvage,
) {
    let mut last_kept: Option<Vec<u8>> = None;
    for piece in pieces {
        let lost = |offset: u64, len: u64, reason: String| LostBlock {
            offset_bytes: offset,
            len_bytes: len,
            first_key: None,
            last_key: None,
            entries: None,
            reason,
        };
        match *piece {
            Piece::Gap { offset, len } if offset < data_end => out.lost.push(lost(
                offset,
                len.min(data_end - offset),
                "unreadable bytes (a damaged block or frame header)".into(),
            )),
            Piece::Frame {
                offset,
                frame:
                    Frame {
                        kind: FRAME_DATA_RAW | FRAME_DATA_LZ4,
                        ..
                    },
                bytes,
            } if offset < data_end => {
                let len = bytes.len() as u64;
                let Some(nodes) = nodes else {
                    out.lost
                        .push(lost(offset, len, "the node table is lost".into()));
                    continue;
                };
                match block_entries(bytes, (offset, cipher), None, nodes, None) {
                    Ok(entries) => {
                        let above = match (&last_kept, entries.first()) {
                            (Some(last), Some(first)) => first.0.as_ref() > last.as_slice(),
                            _ => true,
                        };
                        if !above {
                            out.lost.push(lost(
                                offset,
                                len,
                                "a block whose keys do not follow the ones before".into(),
                            ));
                            continue;
                        }
                        if let Some(last) = entries.last() {
                            last_kept = Some(last.0.to_vec());
                        }
                        out.entries.extend(entries);
                    }
                    Err(reason) => out.lost.push(lost(offset, len, reason)),
                }
            }
            _ => {}
        }
    }
}
