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
use crate::record::Record;
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
    Ok(salvage_bytes(&bytes, path, node))
}

/// [`salvage_snapshot`] of `bytes`, the contents of the file at `path`
/// (whose name gives the covered sequence number if the header is
/// damaged). Pure: no I/O.
pub fn salvage_bytes(
    bytes: &[u8],
    path: &Path,
    node: NodeId,
) -> Option<(LoadedSnapshot, SalvageReport)> {
    let mut report = SalvageReport {
        path: path.to_path_buf(),
        ..SalvageReport::default()
    };
    let meta = match decode_header(bytes) {
        Ok(meta) => meta,
        Err(_) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let covered_seq = parse_snapshot_file_name(name)?;
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
    };
    // A chunk found by resync (not where the previous one ended) may be
    // bytes inside a stored value that look like a chunk: it must also fit
    // (keys after the last kept one, no stamp far past when the snapshot
    // was written).
    let physical_max = (!report.header_damaged).then(|| {
        snapshot
            .meta
            .hlc
            .physical_ms
            .max(snapshot.meta.created_ms)
            .saturating_add(RESYNC_STAMP_SLACK_MS)
    });
    let mut offset = SNAPSHOT_HEADER_BYTES;
    let mut skipped_from: Option<usize> = None;
    let mut ended = false;
    // Set while trying where a damaged chunk's header says the next one
    // starts: if nothing checks out there, every byte after it is tried.
    let mut jumped = false;
    while offset + CHUNK_HEADER_BYTES <= bytes.len() {
        let before = snapshot.records.len();
        let last_key = snapshot.records.last().map(|r| display_key(&r.store_key));
        let fits = Fit {
            resynced: skipped_from.is_some(),
            physical_max,
        };
        let Some((kind, next)) = take_chunk(bytes, offset, &mut snapshot, fits) else {
            let from = *skipped_from.get_or_insert(offset);
            offset = match claimed_end(bytes, offset) {
                // A damaged payload behind an intact header: try where
                // that header says the next chunk starts first.
                Some(end) if offset == from && !jumped && end > offset => {
                    jumped = true;
                    end
                }
                _ if jumped => {
                    jumped = false;
                    from + 1
                }
                _ => offset + 1,
            };
            continue;
        };
        jumped = false;
        if let Some(from) = skipped_from.take() {
            let first_key = snapshot
                .records
                .get(before)
                .map(|r| display_key(&r.store_key));
            note_lost(
                &mut report,
                &snapshot,
                from,
                offset,
                kind,
                last_key,
                first_key,
            );
        }
        if kind == CHUNK_END {
            ended = true;
            break;
        }
        offset = next;
    }
    if let Some(from) = skipped_from {
        let last_key = snapshot.records.last().map(|r| display_key(&r.store_key));
        note_lost(
            &mut report,
            &snapshot,
            from,
            bytes.len(),
            CHUNK_END,
            last_key,
            None,
        );
    } else if !ended {
        report.lost.push(format!(
            "bytes {offset}..{}: the file ends without its end chunk (cut short?); keys after the last kept one may be lost",
            bytes.len()
        ));
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
    Some((snapshot, report))
}

/// How far past a snapshot's creation a stamp in a resynced chunk may be.
const RESYNC_STAMP_SLACK_MS: u64 = 24 * 60 * 60 * 1000;

/// What a chunk must fit besides its checksum.
#[derive(Clone, Copy)]
struct Fit {
    /// Found by trying offsets after damage.
    resynced: bool,
    /// Latest physical time a resynced chunk's stamps may have.
    physical_max: Option<u64>,
}

/// Decodes the chunk at `offset` into `snapshot` if it checks out whole
/// and fits where it is found: the end chunk only at the end of the file,
/// and a resynced entries chunk (a stored value may hold bytes that look
/// like a chunk) in strictly increasing key order after the last kept key,
/// with no stamp far past the snapshot's time. Its kind and where the next
/// chunk starts.
fn take_chunk(
    bytes: &[u8],
    offset: usize,
    snapshot: &mut LoadedSnapshot,
    fit: Fit,
) -> Option<(u8, usize)> {
    let (kind, count, payload) = read_chunk(bytes, offset).ok()?;
    let payload_offset = offset + CHUNK_HEADER_BYTES;
    let next = payload_offset + payload.len();
    match kind {
        CHUNK_ENTRIES => {
            let mut records = Vec::new();
            decode_entries(payload, count, payload_offset, &mut records).ok()?;
            if fit.resynced && !fits_after(&records, snapshot.records.last(), fit.physical_max) {
                return None;
            }
            snapshot.records.extend(records);
        }
        CHUNK_DEDUP => {
            let mut dedup = Vec::new();
            decode_dedup(payload, count, payload_offset, &mut dedup).ok()?;
            snapshot.dedup.extend(dedup);
        }
        // Not checked against the digest: the point is to keep what checks
        // out chunk by chunk.
        CHUNK_END if next == bytes.len() => {}
        _ => return None,
    }
    Some((kind, next))
}

/// True if `records` are in strictly increasing key order after `last`,
/// and none is stamped past `physical_max`.
fn fits_after(records: &[Record], last: Option<&Record>, physical_max: Option<u64>) -> bool {
    let mut previous = last.map(|r| r.store_key.as_slice());
    for record in records {
        if previous.is_some_and(|p| p >= record.store_key.as_slice()) {
            return false;
        }
        let stamp = record.delta.newest_stamp().map_or(0, |s| s.physical_ms);
        if physical_max.is_some_and(|max| stamp > max) {
            return false;
        }
        previous = Some(record.store_key.as_slice());
    }
    true
}

/// Where the chunk at `offset` ends by its header, if the header is
/// plausible (a known kind, zero reserved bytes, a length within bounds).
fn claimed_end(bytes: &[u8], offset: usize) -> Option<usize> {
    let header = bytes.get(offset..offset + CHUNK_HEADER_BYTES)?;
    let kind = *header.first()?;
    let reserved = header.get(1..4)?;
    let len = u32::from_le_bytes(header.get(8..12)?.try_into().ok()?) as usize;
    let known = matches!(kind, CHUNK_ENTRIES | CHUNK_DEDUP | CHUNK_END);
    let end = offset + CHUNK_HEADER_BYTES + len;
    (known && reserved == [0, 0, 0] && len <= super::CHUNK_PAYLOAD_BYTES_MAX && end <= bytes.len())
        .then_some(end)
}

fn display_key(store_key: &[u8]) -> String {
    match crate::record::split_store_key(store_key) {
        Some((keyspace, key)) => format!("{keyspace}/{}", String::from_utf8_lossy(key)),
        None => String::from_utf8_lossy(store_key).into_owned(),
    }
}

fn note_lost(
    report: &mut SalvageReport,
    snapshot: &LoadedSnapshot,
    from: usize,
    to: usize,
    next_kind: u8,
    after: Option<String>,
    before: Option<String>,
) {
    // Entries come before the dedup chunk: damage just before it or the
    // end chunk may have hit either.
    if next_kind != CHUNK_ENTRIES && snapshot.dedup.is_empty() {
        report.dedup_lost = true;
    }
    report.lost.push(format!(
        "bytes {from}..{to}: keys after {} and before {}",
        after.map_or_else(|| "the first".to_string(), |k| format!("{k:?}")),
        before.map_or_else(|| "the last".to_string(), |k| format!("{k:?}")),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{KeyState, Register};
    use crate::record::{Record, store_key};
    use crate::state::State;

    fn record(key: &str, physical_ms: u64, value: Vec<u8>) -> Record {
        Record {
            store_key: store_key("default", key.as_bytes()),
            delta: KeyState {
                register: Some(Register {
                    stamp: Stamp {
                        physical_ms,
                        logical: 0,
                        node: NodeId(3),
                    },
                    value: Some(value.into()),
                    floor: Vec::new(),
                }),
                counter: None,
            },
        }
    }

    fn snapshot_of(keys: usize, value_bytes: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let records: Vec<Record> = (0..keys)
            .map(|i| {
                record(
                    &format!("key-{i:05}"),
                    1 + i as u64,
                    vec![b'v'; value_bytes],
                )
            })
            .collect();
        snapshot_with(records)
    }

    fn snapshot_with(records: Vec<Record>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new();
        state.replay(records).unwrap();
        let meta = SnapshotMeta {
            node: NodeId(3),
            covered_seq: 42,
            hlc: Stamp::ZERO,
            created_ms: 1_000_000,
        };
        let written = super::super::write_snapshot(
            &Io::default(),
            dir.path(),
            &meta,
            state.view().iter(),
            &[],
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

    /// A stored value holding bytes that look like a chunk (here: a whole
    /// entries chunk for a key after every real one, stamped far in the
    /// future, then a fake end chunk) is not taken for one when damage
    /// before it makes the salvage try every offset.
    #[test]
    fn chunk_lookalikes_inside_a_value_are_not_salvaged() {
        let mut fake = super::super::ChunkBuilder::new(CHUNK_ENTRIES);
        crate::record::encode_record(
            &mut fake.payload,
            &record("zzz-injected", 4_000_000_000_000, b"mallory".to_vec()),
        );
        fake.count = 1;
        let mut planted = fake.take(crate::snapshot::ChunkSeal::NONE, 0);
        let mut end = super::super::ChunkBuilder::new(CHUNK_END);
        end.payload.bytes(&[0u8; 32]);
        planted.extend(end.take(crate::snapshot::ChunkSeal::NONE, 0));
        let mut records: Vec<Record> = (0..200)
            .map(|i| record(&format!("key-{i:05}"), 10 + i as u64, vec![b'v'; 500]))
            .collect();
        records[100] = record("key-00100", 110, planted);
        let (_dir, path) = snapshot_with(records);
        let mut bytes = std::fs::read(&path).unwrap();
        // Damage the length of the first entries chunk, which holds
        // key-00100's value: the salvage must try every offset after it.
        bytes[SNAPSHOT_HEADER_BYTES + 9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (loaded, report) = salvage_snapshot(&Io::default(), &path, NodeId(3))
            .unwrap()
            .unwrap();
        let keys: Vec<String> = loaded
            .records
            .iter()
            .map(|r| display_key(&r.store_key))
            .collect();
        assert!(!keys.iter().any(|k| k.contains("injected")), "{keys:?}");
        assert!(!report.lost.is_empty());
        assert!(
            report.lost.iter().all(|l| l.contains("after the first")),
            "the damage is in the first chunk: {:?}",
            report.lost
        );
        // Every kept key is a real one, in order, and the later chunks are kept.
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert!(
            keys.last().is_some_and(|k| k.ends_with("key-00199")),
            "{keys:?}"
        );
    }
}
