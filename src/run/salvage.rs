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

use std::path::Path;

use crate::clock::NodeId;
use crate::crdt::KeyState;
use crate::error::Result;
use crate::io::Io;
use crate::record::StoreKey;

use super::block::count_entries;
use super::entry::materialize;
use super::format::{
    FOOTER_BYTES, FRAME_DATA_LZ4, FRAME_DATA_RAW, FRAME_INDEX, FRAME_NODES, Footer, HEADER_BYTES,
    decode_footer, decode_header, read_frame,
};
use super::index::BlockIndex;
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

/// Salvages the run file at `path`: never fails on its contents (only on
/// reading the file at all); see the module docs.
pub fn salvage_run(io: &Io, path: &Path) -> Result<RunSalvage> {
    let bytes = io.read(path)?;
    Ok(salvage_bytes(&bytes))
}

/// Salvages a run file's bytes.
pub fn salvage_bytes(bytes: &[u8]) -> RunSalvage {
    let header = decode_header(bytes).ok();
    let footer = footer_of(bytes);
    let mut out = RunSalvage {
        node: header.map(|h| h.node).or(footer.map(|f| f.node)),
        ..RunSalvage::default()
    };
    let from_footer = footer.map(|f| {
        let nodes = section(bytes, f.nodes_offset, FRAME_NODES)
            .or_else(|| section(bytes, f.nodes_copy_offset, FRAME_NODES))
            .and_then(|p| decode_node_table(p).ok());
        let index = section(bytes, f.index_offset, FRAME_INDEX)
            .and_then(|p| BlockIndex::decode(p, HEADER_BYTES as u64, Some(f.nodes_offset)).ok());
        (nodes, index)
    });
    let (mut nodes, mut index) = from_footer.unwrap_or((None, None));
    let scan = (nodes.is_none() || index.is_none()).then(|| scan_frames(bytes, footer));
    let found = |kind: u8| {
        scan.iter().flatten().filter_map(move |piece| match *piece {
            Piece::Frame {
                kind: k, payload, ..
            } if k == kind => Some(payload),
            _ => None,
        })
    };
    if nodes.is_none() {
        nodes = found(FRAME_NODES).find_map(|p| decode_node_table(p).ok());
    }
    if index.is_none() {
        index =
            found(FRAME_INDEX).find_map(|p| BlockIndex::decode(p, HEADER_BYTES as u64, None).ok());
    }
    match (index, &scan) {
        (Some(index), _) => salvage_by_index(bytes, &index, nodes.as_deref(), &mut out),
        (None, Some(pieces)) => {
            // The data ends where the footer says, else at the first
            // section found after it.
            let first_section = pieces.iter().find_map(|piece| match *piece {
                Piece::Frame { offset, kind, .. }
                    if kind != FRAME_DATA_RAW && kind != FRAME_DATA_LZ4 =>
                {
                    Some(offset)
                }
                _ => None,
            });
            let data_end = footer
                .map(|f| f.nodes_offset)
                .or(first_section)
                .unwrap_or_else(|| bytes.len().saturating_sub(FOOTER_BYTES) as u64);
            salvage_by_scan(pieces, data_end, nodes.as_deref(), &mut out);
        }
        (None, None) => {}
    }
    out
}

/// The footer, if it checks out and its offsets lie inside the file.
fn footer_of(bytes: &[u8]) -> Option<Footer> {
    let at = bytes.len().checked_sub(FOOTER_BYTES)?;
    let (footer, _) = decode_footer(bytes.get(at..)?).ok()?;
    let offsets = [
        HEADER_BYTES as u64,
        footer.nodes_offset,
        footer.index_offset,
        footer.filter_offset,
        footer.nodes_copy_offset,
        at as u64,
    ];
    offsets.is_sorted().then_some(footer)
}

/// The payload of the frame of type `kind` at `offset`, if it checks out.
fn section(bytes: &[u8], offset: u64, kind: u8) -> Option<&[u8]> {
    let frame = read_frame(bytes.get(usize::try_from(offset).ok()?..)?).ok()?;
    (frame.kind == kind).then_some(frame.payload)
}

fn salvage_by_index(
    bytes: &[u8],
    index: &BlockIndex,
    nodes: Option<&[NodeId]>,
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

/// The entries of the block frame `frame` (exactly one frame): all of
/// them, or why not. Without an index, the count comes from the block.
fn block_entries(
    frame: &[u8],
    entries: Option<usize>,
    nodes: &[NodeId],
    edges: Option<(&[u8], &[u8])>,
) -> std::result::Result<Vec<(StoreKey, KeyState)>, String> {
    let raw = decompress_frame(frame).map_err(|(_, why)| why)?;
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
        kind: u8,
        payload: &'a [u8],
        bytes: &'a [u8],
    },
    Gap {
        offset: u64,
        len: u64,
    },
}

/// Walks the file from the end of the header to the footer (the end of
/// the file if the footer is damaged): a frame that checks out is taken
/// whole; past damage, every offset is tried.
fn scan_frames(bytes: &[u8], footer: Option<Footer>) -> Vec<Piece<'_>> {
    let end = match footer {
        Some(_) => bytes.len().saturating_sub(FOOTER_BYTES),
        None => bytes.len(),
    };
    let region = bytes.get(..end).unwrap_or_default();
    let mut pieces = Vec::new();
    let mut gap: Option<usize> = None;
    let mut pos = HEADER_BYTES;
    while pos < end {
        match read_frame(region.get(pos..).unwrap_or_default()) {
            Ok(frame) => {
                if let Some(start) = gap.take() {
                    pieces.push(Piece::Gap {
                        offset: start as u64,
                        len: (pos - start) as u64,
                    });
                }
                pieces.push(Piece::Frame {
                    offset: pos as u64,
                    kind: frame.kind,
                    payload: frame.payload,
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
                kind: FRAME_DATA_RAW | FRAME_DATA_LZ4,
                bytes,
                ..
            } if offset < data_end => {
                let len = bytes.len() as u64;
                let Some(nodes) = nodes else {
                    out.lost
                        .push(lost(offset, len, "the node table is lost".into()));
                    continue;
                };
                match block_entries(bytes, None, nodes, None) {
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
