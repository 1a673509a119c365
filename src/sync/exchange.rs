//! Export and import orchestration over the engine: what `Db`'s sync
//! methods do. Change sets and segments are verified and drift-checked
//! before anything is applied, then committed through the engine's one
//! commit path under ids derived from their content, so a repeat changes
//! nothing and an interrupted import resumes. Per-peer and complete
//! cursors are stored in [`LOCAL_KEYSPACE`] after the data they cover.

use std::collections::HashSet;

use crate::command::Batch;
use crate::engine::{CommitId, Engine};
use crate::error::{Error, Result};
use crate::io::Io;
use crate::record::{Record, store_key};

use super::changeset::{self, ChangeSet};
use super::local;
use super::{
    COMPLETE_CURSOR_KEY, ImportReport, LOCAL_KEYSPACE, SegmentEntry, SegmentImport, SyncCursor,
    collect_changes, is_local, peer_cursor_key, segment_marker_key,
};
use crate::crypto::Keyring;
use crate::crypto::sealed::{self, SealedKind};

/// A change set of every change newer than `cursor` (restricted to
/// `buckets` of the digest if given), and the cursor to use next time.
pub(crate) fn export_changes(
    engine: &Engine,
    cursor: &SyncCursor,
    buckets: Option<&[usize]>,
) -> Result<(Vec<u8>, SyncCursor)> {
    // The complete cursor first, then the map: everything the cursor
    // claims (imports whose records were applied before their cursor was
    // merged; own writes up to `Engine::claimable`) is in a view taken
    // after it. (A view taken first could miss an import or a write that
    // landed between the two, which the cursor would then claim.)
    // A partial export advertises nothing: the receiver must not claim
    // what it was not sent.
    let complete = match buckets {
        None => complete_cursor(engine)?,
        Some(_) => SyncCursor::new(),
    };
    let view = engine.state().view();
    let records = collect_changes(&view, cursor, buckets)?;
    let mut after = cursor.clone();
    after.merge(&complete);
    let keyring = engine.wal().keyring().read().clone();
    let bytes = changeset::encode(engine.node(), &complete, &records);
    tracing::debug!(
        records = records.len(),
        bytes = bytes.len(),
        partial = buckets.is_some(),
        "change set exported"
    );
    Ok((
        sealed::seal(&keyring, SealedKind::ChangeSet, &[], bytes)?,
        after,
    ))
}

/// A change set of every change newer than `cursor` in the state `view`
/// shows, for a reader that is not the writer (a read-only open): the
/// complete cursor is the one stored in the view plus `own`, the newest
/// stamp of the copy's own writes.
pub(crate) fn export_from_view(
    view: &crate::state::StateView,
    keyring: &Keyring,
    node: crate::clock::NodeId,
    own: crate::clock::Stamp,
    cursor: &SyncCursor,
) -> Result<(Vec<u8>, SyncCursor)> {
    let records = collect_changes(view, cursor, None)?;
    let stored = view.get(&store_key(LOCAL_KEYSPACE, COMPLETE_CURSOR_KEY.as_bytes()))?;
    let mut complete: SyncCursor = match stored.and_then(|s| s.register.and_then(|r| r.value)) {
        Some(bytes) => local::decode_cursor(&bytes).map_err(local::cursor_error)?,
        None => SyncCursor::new(),
    };
    complete.merge(&SyncCursor {
        seen: [(own.node, own)].into_iter().collect(),
    });
    let mut after = cursor.clone();
    after.merge(&complete);
    let bytes = changeset::encode(node, &complete, &records);
    Ok((
        sealed::seal(keyring, SealedKind::ChangeSet, &[], bytes)?,
        after,
    ))
}

/// The change set in `bytes` in clear: opened with the copy's keys if it
/// is sealed (an encrypted copy's export), else as it is; an encrypted
/// copy refuses one in clear (sealing is what authenticates it).
fn open_change_set<'a>(engine: &Engine, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    let keyring = engine.wal().keyring().read().clone();
    if !sealed::is_sealed(bytes) {
        if keyring.current().is_some() {
            // Anyone can write a change set in clear: an encrypted copy
            // takes only what its keys authenticate.
            return Err(Error::Decode {
                what: "change set",
                reason: "a change set in clear, refused by an encrypted database".into(),
            });
        }
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    sealed::open(&keyring, SealedKind::ChangeSet, &[], bytes).map(std::borrow::Cow::Owned)
}

/// Per origin, the newest stamp up to which this copy holds everything.
pub(crate) fn complete_cursor(engine: &Engine) -> Result<SyncCursor> {
    let mut complete = stored_cursor(engine, COMPLETE_CURSOR_KEY)?.unwrap_or_default();
    // What this copy has issued and applied, not its high-water mark: a
    // mark raised by stamps only seen is not on disk, and a claim beyond
    // what a restart recovers would hide the writes issued after it; nor
    // a stamp of a write still on its way to the map (the caller's view,
    // taken before, may not have it).
    let own = engine.claimable();
    complete.merge(&SyncCursor {
        seen: [(own.node, own)].into_iter().collect(),
    });
    Ok(complete)
}

/// What `peer` has reported seeing (empty if never heard from).
pub(crate) fn peer_cursor(engine: &Engine, peer: &str) -> Result<SyncCursor> {
    Ok(stored_cursor(engine, &peer_cursor_key(peer))?.unwrap_or_default())
}

/// Verifies, drift-checks and applies a change set; then records that
/// this copy holds everything its exporter did.
pub(crate) fn import(engine: &Engine, bytes: &[u8]) -> Result<ImportReport> {
    let bytes = open_change_set(engine, bytes)?;
    let mut changes = changeset::decode(&bytes)?;
    // Another copy's own bookkeeping is never ours to apply.
    changes.records.retain(|r| !is_local(&r.store_key));
    engine.receive_stamps(&changes.records)?;
    let cursor = changes.cursor.clone();
    check_cursor(engine, &cursor)?;
    let report = import_records(engine, changes)?;
    merge_local_cursor(engine, COMPLETE_CURSOR_KEY, &cursor)?;
    Ok(report)
}

/// [`import`], then stores the cursor `peer` exported with.
pub(crate) fn import_from(engine: &Engine, peer: &str, bytes: &[u8]) -> Result<ImportReport> {
    let report = import(engine, bytes)?;
    let changes = changeset::decode(&open_change_set(engine, bytes)?)?;
    merge_local_cursor(engine, &peer_cursor_key(peer), &changes.cursor)?;
    Ok(report)
}

/// One WAL frame when the change set fits (it then lands whole or not at
/// all), else chunks; the id is derived from the change set's digest.
fn import_records(engine: &Engine, changes: ChangeSet) -> Result<ImportReport> {
    // The id earlier versions used for a whole change set, so a change set
    // imported before an upgrade is still caught as a duplicate after it.
    let mut id = blake3::Hasher::new();
    id.update(&changes.digest);
    id.update(&u64::MAX.to_le_bytes());
    let id = CommitId(*id.finalize().as_bytes());
    let counts = engine.commit_records(changes.records, id, None)?;
    Ok(ImportReport {
        applied: counts.applied,
        stale: counts.stale,
        duplicates: counts.duplicates,
    })
}

/// The sealed WAL segments this copy can offer, by content hash.
pub(crate) fn segment_manifest(engine: &Engine) -> Result<Vec<SegmentEntry>> {
    let io = Io::new(engine.faults().cloned());
    let mut entries = Vec::new();
    for s in engine.wal().sealed_segments() {
        if let Some(bytes) = read_sealed(&io, &s.path)? {
            entries.push(SegmentEntry {
                hash: *blake3::hash(&bytes).as_bytes(),
                size_bytes: bytes.len() as u64,
            });
        }
    }
    Ok(entries)
}

/// The bytes of a sealed segment, or `None` if compaction removed it
/// since the segment list was taken: it is no longer offered.
fn read_sealed(io: &Io, path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    match io.read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bytes of one of this copy's sealed segments, by its hash.
pub(crate) fn segment_bytes(engine: &Engine, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
    let io = Io::new(engine.faults().cloned());
    for s in engine.wal().sealed_segments() {
        let Some(bytes) = read_sealed(&io, &s.path)? else {
            continue;
        };
        if blake3::hash(&bytes).as_bytes() == hash {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// The entries of `peer_manifest` this copy has neither written nor
/// imported.
pub(crate) fn missing_segments(
    engine: &Engine,
    peer_manifest: &[SegmentEntry],
) -> Result<Vec<SegmentEntry>> {
    let own: HashSet<[u8; 32]> = segment_manifest(engine)?
        .into_iter()
        .map(|e| e.hash)
        .collect();
    peer_manifest
        .iter()
        .filter(|e| !own.contains(&e.hash))
        .filter_map(|e| match segment_imported(engine, &e.hash) {
            Ok(false) => Some(Ok(e.clone())),
            Ok(true) => None,
            Err(err) => Some(Err(err)),
        })
        .collect::<Result<Vec<_>>>()
}

fn segment_imported(engine: &Engine, hash: &[u8; 32]) -> Result<bool> {
    let key = store_key(LOCAL_KEYSPACE, segment_marker_key(hash).as_bytes());
    Ok(engine.state().get(&key)?.is_some_and(|s| !s.is_tombstone()))
}

/// Applies a peer's sealed segment, given with its content hash.
pub(crate) fn import_segment(
    engine: &Engine,
    bytes: &[u8],
    hash: &[u8; 32],
) -> Result<SegmentImport> {
    if blake3::hash(bytes).as_bytes() != hash {
        return Ok(SegmentImport::HashMismatch);
    }
    // The marker first: it is cheap, and reading our own segments is not.
    if segment_imported(engine, hash)? || segment_manifest(engine)?.iter().any(|e| &e.hash == hash)
    {
        return Ok(SegmentImport::Skipped);
    }
    let keyring = engine.wal().keyring().read().clone();
    if keyring.current().is_some() && !crate::wal::segment_is_encrypted(bytes) {
        // Anyone can write a segment in clear: an encrypted copy takes only
        // what its keys authenticate.
        return Err(Error::Decode {
            what: "WAL segment",
            reason: "a segment in clear, refused by an encrypted database".into(),
        });
    }
    let frames = crate::wal::recovery::read_whole_segment(bytes, &keyring)?.map_err(|reason| {
        Error::Decode {
            what: "WAL segment",
            reason,
        }
    })?;
    // Another copy's own bookkeeping is never ours to apply.
    let records: Vec<Record> = frames
        .into_iter()
        .flat_map(|f| f.records)
        .filter(|r| !is_local(&r.store_key))
        .collect();
    engine.receive_stamps(&records)?;
    let counts = engine.commit_records(records, derive_id("mergekv segment v1", hash), None)?;
    local_put(engine, &segment_marker_key(hash), vec![1u8])?;
    Ok(SegmentImport::Applied {
        keys_written: counts.applied,
        keys_skipped: counts.stale + counts.duplicates,
    })
}

/// Merges `cursor` into the local cursor stored under `key`, writing
/// only if that changes it (so a repeated import writes nothing).
/// Records that this copy holds everything `cursor` says (a change set's
/// or stream's exporter's complete cursor, taken once all of it is in).
pub(crate) fn merge_complete_cursor(engine: &Engine, cursor: &SyncCursor) -> Result<()> {
    check_cursor(engine, cursor)?;
    merge_local_cursor(engine, COMPLETE_CURSOR_KEY, cursor)
}

/// A cursor a peer sends is believed only so far: it must not say this
/// copy's own writes reach beyond what its clock has issued (only another
/// directory under its id, or a forger, could say that, and believing it
/// would make exports skip this copy's later writes).
fn check_cursor(engine: &Engine, cursor: &SyncCursor) -> Result<()> {
    let own = engine.node();
    if let Some(stamp) = cursor.seen.get(&own)
        && *stamp > engine.high_water()
    {
        return Err(Error::IdentityConflict {
            node: own,
            detail: format!(
                "a cursor says this copy's writes reach {stamp:?}, beyond what it has issued ({:?})",
                engine.high_water()
            ),
        });
    }
    Ok(())
}

/// Deletes a record of [`LOCAL_KEYSPACE`] (bookkeeping no longer needed).
pub(crate) fn forget_local(engine: &Engine, key: &str) -> Result<()> {
    let mut batch = Batch::new();
    batch.delete_in(LOCAL_KEYSPACE, key);
    let mut results = engine.execute(vec![batch]);
    results.pop().unwrap_or(Err(Error::Closed)).map(|_| ())
}

pub(crate) fn merge_local_cursor(engine: &Engine, key: &str, cursor: &SyncCursor) -> Result<()> {
    let stored = stored_cursor(engine, key)?;
    let mut merged = stored.clone().unwrap_or_default();
    merged.merge(cursor);
    // Stored even when empty: a peer cursor's presence is what makes the
    // tombstone collection wait for that peer at all.
    if stored.as_ref() != Some(&merged) {
        local_put(engine, key, local::encode_cursor(&merged))?;
    }
    Ok(())
}

fn derive_id(context: &str, content: &[u8; 32]) -> CommitId {
    let mut id = blake3::Hasher::new_derive_key(context);
    id.update(content);
    CommitId(*id.finalize().as_bytes())
}

/// The stored cursor at `key` of [`LOCAL_KEYSPACE`], if any (current
/// layout or legacy, see `sync::local`).
fn stored_cursor(engine: &Engine, key: &str) -> Result<Option<SyncCursor>> {
    local_get(engine, key)?
        .map(|b| local::decode_cursor(&b).map_err(local::cursor_error))
        .transpose()
}

/// The value at `key` of [`LOCAL_KEYSPACE`], if any. Each caller decodes
/// it with its record's layout (`sync::local`, `bucket::local`).
pub(crate) fn local_get(engine: &Engine, key: &str) -> Result<Option<std::sync::Arc<[u8]>>> {
    let store_key = store_key(LOCAL_KEYSPACE, key.as_bytes());
    Ok(engine
        .state()
        .get(&store_key)?
        .and_then(|s| s.register.and_then(|r| r.value)))
}

/// A durable write to [`LOCAL_KEYSPACE`], through the engine's write path.
pub(crate) fn local_put(engine: &Engine, key: &str, value: Vec<u8>) -> Result<()> {
    let mut batch = Batch::new();
    batch.put_in(LOCAL_KEYSPACE, key, value);
    let mut results = engine.execute(vec![batch]);
    results.pop().unwrap_or(Err(Error::Closed)).map(|_| ())
}
