//! Salvage: every undamaged chunk of a damaged snapshot, for a repair when
//! no older snapshot and WAL can rebuild the state.
//!
//! Each chunk carries its own CRC-32C, so damage costs only the chunks it
//! touches. A chunk that does not check out is skipped, and the next one is
//! found by trying every later offset for a chunk header whose payload
//! checks out (a damaged length field hides where the next chunk starts).
//! What was lost is said as byte ranges and the keys either side of them.

use std::path::Path;

use crate::clock::{NodeId, Stamp};
use crate::error::Result;
use crate::io::Io;
pub use crate::wal::recovery::SalvageReport;

use super::{
    CHUNK_DEDUP, CHUNK_END, CHUNK_ENTRIES, CHUNK_HEADER_BYTES, LoadedSnapshot,
    SNAPSHOT_HEADER_BYTES, SnapshotMeta, decode_dedup, decode_entries, decode_header,
    parse_snapshot_file_name, read_chunk,
};

/// Every undamaged chunk of the snapshot at `path`, which belongs to
/// `node`. `None` if nothing can be salvaged (not even the covered sequence
/// number from the file name).
pub fn salvage_snapshot(
    io: &Io,
    path: &Path,
    node: NodeId,
) -> Result<Option<(LoadedSnapshot, SalvageReport)>> {
    let bytes = io.read(path)?;
    let mut report = SalvageReport {
        path: path.to_path_buf(),
        ..SalvageReport::default()
    };
    let meta = match decode_header(&bytes) {
        Ok(meta) => meta,
        Err(_) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(covered_seq) = parse_snapshot_file_name(name) else {
                return Ok(None);
            };
            report.header_damaged = true;
            SnapshotMeta {
                node,
                covered_seq,
                hlc: Stamp::ZERO,
                created_ms: 0,
            }
        }
    };
    let mut snapshot = LoadedSnapshot {
        path: path.to_path_buf(),
        meta,
        records: Vec::new(),
        dedup: Vec::new(),
        size_bytes: bytes.len() as u64,
    };
    let mut offset = SNAPSHOT_HEADER_BYTES;
    let mut skipped_from: Option<usize> = None;
    while offset + CHUNK_HEADER_BYTES <= bytes.len() {
        let Some((kind, next)) = take_chunk(&bytes, offset, &mut snapshot) else {
            skipped_from.get_or_insert(offset);
            offset += 1;
            continue;
        };
        if let Some(from) = skipped_from.take() {
            note_lost(&mut report, &snapshot, from, offset, kind);
        }
        if kind == CHUNK_END {
            break;
        }
        offset = next;
    }
    if let Some(from) = skipped_from {
        note_lost(&mut report, &snapshot, from, bytes.len(), CHUNK_END);
    }
    if report.header_damaged {
        let newest = snapshot
            .records
            .iter()
            .filter_map(|r| r.delta.newest_stamp())
            .max();
        snapshot.meta.hlc = newest.unwrap_or(Stamp::ZERO);
    }
    report.entries_kept = snapshot.records.len() as u64;
    Ok(Some((snapshot, report)))
}

/// Decodes the chunk at `offset` into `snapshot` if it checks out whole;
/// its kind and where the next chunk starts.
fn take_chunk(bytes: &[u8], offset: usize, snapshot: &mut LoadedSnapshot) -> Option<(u8, usize)> {
    let (kind, count, payload) = read_chunk(bytes, offset).ok()?;
    let payload_offset = offset + CHUNK_HEADER_BYTES;
    let next = payload_offset + payload.len();
    match kind {
        CHUNK_ENTRIES => {
            let mut records = Vec::new();
            decode_entries(payload, count, payload_offset, &mut records).ok()?;
            snapshot.records.extend(records);
        }
        CHUNK_DEDUP => {
            let mut dedup = Vec::new();
            decode_dedup(payload, count, payload_offset, &mut dedup).ok()?;
            snapshot.dedup.extend(dedup);
        }
        // Not checked against the digest: the point is to keep what checks
        // out chunk by chunk.
        CHUNK_END => {}
        _ => return None,
    }
    Some((kind, next))
}

fn note_lost(
    report: &mut SalvageReport,
    snapshot: &LoadedSnapshot,
    from: usize,
    to: usize,
    next_kind: u8,
) {
    let after =
        snapshot
            .records
            .last()
            .map(|r| match crate::record::split_store_key(&r.store_key) {
                Some((keyspace, key)) => format!("{keyspace}/{}", String::from_utf8_lossy(key)),
                None => String::from_utf8_lossy(&r.store_key).into_owned(),
            });
    // Entries come before the dedup chunk: damage just before it or the
    // end chunk may have hit either.
    if next_kind != CHUNK_ENTRIES && snapshot.dedup.is_empty() {
        report.dedup_lost = true;
    }
    report.lost.push(format!(
        "bytes {from}..{to}: keys after {} and before the next kept chunk",
        after.map_or_else(|| "none (from the first)".to_string(), |k| format!("{k:?}"))
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{KeyState, Register};
    use crate::record::{Record, store_key};
    use crate::state::State;

    fn snapshot_of(keys: usize, value_bytes: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new();
        let records: Vec<Record> = (0..keys)
            .map(|i| Record {
                store_key: store_key("default", format!("key-{i:05}").as_bytes()),
                delta: KeyState {
                    register: Some(Register {
                        stamp: Stamp {
                            physical_ms: 1 + i as u64,
                            logical: 0,
                            node: NodeId(3),
                        },
                        value: Some(vec![b'v'; value_bytes].into()),
                        floor: Vec::new(),
                    }),
                    counter: None,
                },
            })
            .collect();
        state.replay(records);
        let meta = SnapshotMeta {
            node: NodeId(3),
            covered_seq: 42,
            hlc: Stamp::ZERO,
            created_ms: 1,
        };
        let written = super::super::write_snapshot(
            &Io::default(),
            dir.path(),
            &meta,
            &state.snapshot(),
            &[],
            |_, _| true,
        )
        .unwrap();
        (dir, written.path)
    }

    #[test]
    fn an_undamaged_snapshot_is_salvaged_whole() {
        let (_dir, path) = snapshot_of(100, 10);
        let (loaded, report) = salvage_snapshot(&Io::default(), &path, NodeId(3))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.records.len(), 100);
        assert_eq!(loaded.meta.covered_seq, 42);
        assert!(report.lost.is_empty());
    }

    /// About 46 chunks of ~64 KiB of entries: damage inside one costs that
    /// chunk only, wherever it is (payload, length field, header).
    #[test]
    fn damage_costs_only_the_chunks_it_touches() {
        let (_dir, path) = snapshot_of(3000, 1000);
        let bytes = std::fs::read(&path).unwrap();
        let whole = salvage_snapshot(&Io::default(), &path, NodeId(3))
            .unwrap()
            .unwrap()
            .0
            .records
            .len();
        assert_eq!(whole, 3000);
        let chunk_len =
            |at: usize| u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let first = SNAPSHOT_HEADER_BYTES;
        let second = first + CHUNK_HEADER_BYTES + chunk_len(first);
        for (what, offset) in [
            ("payload of the first chunk", first + 100),
            ("length field of the first chunk", first + 9),
            ("payload of the second chunk", second + 500),
            ("the header", 20),
        ] {
            let mut damaged = bytes.clone();
            damaged[offset] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let (loaded, report) = salvage_snapshot(&Io::default(), &path, NodeId(3))
                .unwrap()
                .unwrap();
            let kept = loaded.records.len();
            if what == "the header" {
                assert_eq!(kept, 3000, "{what}");
                assert!(report.header_damaged);
                assert_eq!(loaded.meta.covered_seq, 42, "from the file name");
            } else {
                assert!((3000 - 70..3000).contains(&kept), "{what}: kept {kept}");
                assert_eq!(report.lost.len(), 1, "{what}: {report:?}");
            }
        }
    }
}
