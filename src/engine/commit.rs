//! The one commit path: records (plus an optional idempotency id) → WAL
//! append → durable → merged into the map → the applied watermark moves.
//!
//! [`Engine::append`] and [`Engine::finish`] are its two halves: a group of
//! local batches appends each batch, then finishes them together, sharing
//! one wait for durability and one write lock on the map.
//! [`Engine::commit_records`] runs both for records that arrive already
//! built (imports, segments, replicated batches) and owns the fallback for
//! a batch too large for one WAL frame. [`Engine::guarded`] turns a panic
//! anywhere on the path into a poisoned database.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::clock::Stamp;
use crate::error::{Error, Result};
use crate::record::payload::PAYLOAD_HEADER_BYTES_MAX;
use crate::record::{FRAME_PAYLOAD_BYTES_MAX, Record, encode_payload, encoded_record_bytes};
use crate::state::{Applied, OutcomeKind};
use crate::wal::dedup::DedupEntry;
use crate::wal::{AppendRequest, Appended};

use super::Engine;

/// The idempotency id of a commit. A batch too large for one frame is
/// committed in chunks, chunk `i` under [`CommitId::chunk`]`(i)`; a retry
/// splits the same records the same way, so each chunk is caught as a
/// duplicate on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommitId(pub [u8; 32]);

impl CommitId {
    /// The id of chunk `index` of a split commit.
    fn chunk(&self, index: u64) -> [u8; 32] {
        let mut id = blake3::Hasher::new_derive_key("mergekv commit chunk v1");
        id.update(&self.0);
        id.update(&index.to_le_bytes());
        *id.finalize().as_bytes()
    }
}

/// What committing one batch did.
pub(crate) enum Committed {
    /// Written with sequence numbers from `first_seq`; one result per record.
    Applied {
        first_seq: u64,
        results: Vec<Applied>,
    },
    /// Its idempotency id was seen: the original batch, now done.
    Duplicate(DedupEntry),
}

/// Counts of what a commit of ready-made records did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CommitCounts {
    /// Records that changed the state.
    pub applied: u64,
    /// Records older than what the state held.
    pub stale: u64,
    /// Records of batches committed before (same idempotency id).
    pub duplicates: u64,
}

impl CommitCounts {
    fn add(&mut self, other: CommitCounts) {
        self.applied += other.applied;
        self.stale += other.stale;
        self.duplicates += other.duplicates;
    }
}

impl Engine {
    /// Hands one batch's records to the WAL: sequence numbers assigned, or
    /// the original named if `dedup_id` was seen. Every `Queued` batch must
    /// reach [`Engine::finish`], which completes it on the watermark.
    pub(super) fn append(
        &self,
        records: &[Record],
        dedup_id: Option<&[u8; 32]>,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<Appended> {
        let op_count = u32::try_from(records.len())
            .map_err(|_| Error::limit("frame_ops_max", records.len(), u32::MAX as usize))?;
        self.wal.append(AppendRequest {
            payload: encode_payload(dedup_id.map(|id| (id, now_ms)), records)?,
            op_count,
            dedup_id,
            stamp,
            now_ms,
        })
    }

    /// Makes appended batches durable (one wait for all), merges the
    /// queued ones into the map under one write lock, and completes them on
    /// the watermark, also when durability failed (they will never be
    /// applied then). A duplicate waits for its original, after our own
    /// batches are done, so two groups holding each other's originals
    /// cannot wait in a cycle.
    pub(super) fn finish(
        &self,
        batches: &[(&[Record], Appended)],
    ) -> Result<Vec<Result<Committed>>> {
        let durable = self.wait_durable_all(batches);
        let applied = match &durable {
            Ok(()) => self.apply_queued(batches),
            Err(_) => {
                self.check_failed_durability();
                Vec::new()
            }
        };
        for (_, first_seq, last_seq) in queued(batches) {
            self.watermark.complete(first_seq, last_seq);
        }
        durable?;
        if applied.is_empty() && queued(batches).next().is_some() {
            // Applying failed and poisoned the database.
            self.check_usable()?;
        }
        let mut applied = applied.into_iter();
        // One result per batch: a poison while a duplicate waits for its
        // original fails that duplicate only, never a batch of the group
        // that is already durable and applied (its caller must not retry).
        Ok(batches
            .iter()
            .map(|(_, appended)| match *appended {
                Appended::Queued { first_seq, .. } => Ok(Committed::Applied {
                    first_seq,
                    results: applied.next().ok_or_else(|| {
                        self.broken_invariant("a queued batch without apply results")
                    })?,
                }),
                Appended::Duplicate(original) => {
                    self.wait_original(original.first_seq)?;
                    Ok(Committed::Duplicate(original))
                }
            })
            .collect())
    }

    /// Waits until the original of a duplicate is done, and then until it
    /// is known to be in the map: a batch is completed unapplied only after
    /// a failure poisoned the WAL (even one that was durable in an earlier
    /// WAL group, when its worker's group failed later), so a usable WAL
    /// checked after the wait means the original was applied.
    fn wait_original(&self, first_seq: u64) -> Result<()> {
        self.watermark.wait_done(first_seq)?;
        self.check_usable()
    }

    /// Merges the queued batches into the memtable. They are durable
    /// already, so a failure to apply them (a base that could not be read
    /// from a run) poisons the database: the state would otherwise miss a
    /// write the log holds, and a flush could claim to cover it.
    fn apply_queued(&self, batches: &[(&[Record], Appended)]) -> Vec<Vec<Applied>> {
        let queued: Vec<&[Record]> = queued(batches).map(|(r, _, _)| r).collect();
        if queued.is_empty() {
            return Vec::new();
        }
        self.maybe_inject_panic();
        match self.state.apply_many(&queued) {
            Ok(applied) => applied,
            Err(e) => {
                self.poison(&format!("a durable batch could not be applied: {e}"));
                Vec::new()
            }
        }
    }

    /// A batch is completed unapplied only when durability failed, and the
    /// WAL poisons itself on every such failure; if it has not, poison now,
    /// so no snapshot is ever taken at a watermark that passed it.
    fn check_failed_durability(&self) {
        if self.check_usable().is_ok() {
            self.broken_invariant("durability failed without poisoning the WAL");
        }
    }

    fn wait_durable_all(&self, batches: &[(&[Record], Appended)]) -> Result<()> {
        let last = batches
            .iter()
            .map(|(_, appended)| match *appended {
                Appended::Queued { last_seq, .. } => last_seq,
                Appended::Duplicate(e) => e.first_seq + u64::from(e.op_count) - 1,
            })
            .max();
        last.map_or(Ok(()), |seq| self.wal.wait_durable(seq))
    }

    /// Commits records that arrive ready-made (imported, or replicated) as
    /// one atomic WAL frame under `id` when they fit, else in chunks under
    /// `id.chunk(i)`. `tail` (a follower's position) goes in the same frame
    /// as the records, or alone under `id` after every chunk, so it is
    /// durable only once everything it covers is.
    pub fn commit_records(
        &self,
        mut records: Vec<Record>,
        id: CommitId,
        tail: Option<Record>,
    ) -> Result<CommitCounts> {
        self.guarded("commit", || {
            if records.is_empty() && tail.is_none() {
                return Ok(CommitCounts::default());
            }
            self.check_usable()?;
            let (bytes, largest) = record_sizes(&records);
            refuse_oversized(largest)?;
            let tail_bytes = tail.as_ref().map_or(0, encoded_record_bytes);
            if bytes + tail_bytes <= FRAME_RECORD_BYTES_MAX {
                records.extend(tail);
                return self.commit_one(&records, &id.0);
            }
            let mut counts = CommitCounts::default();
            for (index, chunk) in split_into_frames(&records).into_iter().enumerate() {
                counts.add(self.commit_one(chunk, &id.chunk(index as u64))?);
            }
            if let Some(tail) = tail {
                counts.add(self.commit_one(&[tail], &id.0)?);
            }
            Ok(counts)
        })
    }

    fn commit_one(&self, records: &[Record], id: &[u8; 32]) -> Result<CommitCounts> {
        if records.is_empty() {
            return Ok(CommitCounts::default());
        }
        // No sequence number is held here (each chunk is finished before
        // the next): waiting for a flush cannot hold the flush up.
        self.state.wait_for_room(|| self.check_usable())?;
        if records.iter().any(|r| r.delta.counter.is_some()) {
            self.state.note_counter();
        }
        let stamp = records
            .iter()
            .filter_map(|r| r.delta.newest_stamp())
            .max()
            .unwrap_or(Stamp::ZERO);
        let appended = self.append(records, Some(id), stamp, self.now_ms())?;
        let committed = self.finish(&[(records, appended)])?;
        let committed: Vec<Committed> = committed.into_iter().collect::<Result<_>>()?;
        Ok(count(&committed, records.len()))
    }

    /// Runs `f`; a panic inside poisons the database, wakes every waiter
    /// and comes back as [`Error::Poisoned`] instead of unwinding.
    pub fn guarded<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(result) => result,
            Err(panic) => {
                self.poison(&format!("{what} panicked: {}", panic_message(&panic)));
                Err(self.check_usable().err().unwrap_or(Error::Closed))
            }
        }
    }

    /// Poisons the database for an invariant found broken, and returns the
    /// error to give the caller.
    pub(super) fn broken_invariant(&self, what: &str) -> Error {
        debug_assert!(false, "broken invariant: {what}");
        self.poison(&format!("broken invariant: {what}"));
        self.check_usable().err().unwrap_or(Error::Closed)
    }

    /// A test's fault plan may ask for a panic between the WAL append and
    /// the map update: the worst place for one.
    #[expect(clippy::panic, reason = "only when a test's fault plan asks for it")]
    fn maybe_inject_panic(&self) {
        if self.faults().is_some_and(|f| f.commit_should_panic()) {
            panic!("injected panic on the commit path");
        }
    }
}

/// The queued batches of a group, with their sequence numbers.
fn queued<'a>(
    batches: &'a [(&'a [Record], Appended)],
) -> impl Iterator<Item = (&'a [Record], u64, u64)> + 'a {
    batches
        .iter()
        .filter_map(|(records, appended)| match *appended {
            Appended::Queued {
                first_seq,
                last_seq,
            } => Some((*records, first_seq, last_seq)),
            Appended::Duplicate(_) => None,
        })
}

fn count(committed: &[Committed], records: usize) -> CommitCounts {
    let mut counts = CommitCounts::default();
    for c in committed {
        match c {
            Committed::Applied { results, .. } => {
                for a in results {
                    match a.kind {
                        OutcomeKind::IgnoredStale => counts.stale += 1,
                        _ => counts.applied += 1,
                    }
                }
            }
            Committed::Duplicate(_) => counts.duplicates += records as u64,
        }
    }
    counts
}

/// Bytes a frame payload may hold for records, after its header.
const FRAME_RECORD_BYTES_MAX: usize = FRAME_PAYLOAD_BYTES_MAX - PAYLOAD_HEADER_BYTES_MAX;

/// Refuses, before anything is committed, a record no frame can hold, so
/// a split commit never lands the chunks before it and then fails.
fn refuse_oversized(largest_bytes: usize) -> Result<()> {
    if largest_bytes > FRAME_RECORD_BYTES_MAX {
        return Err(Error::limit(
            "frame_payload_bytes_max",
            largest_bytes,
            FRAME_RECORD_BYTES_MAX,
        ));
    }
    Ok(())
}

/// The encoded size of `records` and of the largest one, in one pass.
fn record_sizes(records: &[Record]) -> (usize, usize) {
    records
        .iter()
        .map(encoded_record_bytes)
        .fold((0, 0), |(sum, largest), size| {
            (sum + size, largest.max(size))
        })
}

/// Splits records into runs that each fit one frame, in order. A record
/// too large for any frame gets a run of its own, which the WAL refuses
/// with a typed error.
fn split_into_frames(records: &[Record]) -> Vec<&[Record]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, record) in records.iter().enumerate() {
        let size = encoded_record_bytes(record);
        if bytes + size > FRAME_RECORD_BYTES_MAX && i > start {
            runs.extend(records.get(start..i));
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    runs.extend(records.get(start..).filter(|rest| !rest.is_empty()));
    runs
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::NodeId;
    use crate::crdt::{KeyState, Register};
    use crate::record::sample_records;

    #[test]
    fn split_keeps_order_and_covers_every_record() {
        let records: Vec<Record> = sample_records().into_iter().cycle().take(10).collect();
        let runs = split_into_frames(&records);
        assert_eq!(runs.concat(), records);
        assert!(record_sizes(&records).0 <= FRAME_RECORD_BYTES_MAX);
    }

    fn register(key: &str, value: &Arc<[u8]>, physical_ms: u64) -> Record {
        Record {
            store_key: crate::record::store_key("default", key.as_bytes()),
            delta: KeyState {
                register: Some(Register {
                    stamp: Stamp {
                        physical_ms,
                        logical: 0,
                        node: NodeId(7),
                    },
                    value: Some(value.clone()),
                    floor: Vec::new(),
                }),
                counter: None,
            },
        }
    }

    fn counts(applied: u64, stale: u64, duplicates: u64) -> CommitCounts {
        CommitCounts {
            applied,
            stale,
            duplicates,
        }
    }

    #[test]
    fn a_commit_too_large_for_one_frame_is_split_and_each_chunk_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let value: Arc<[u8]> = vec![7u8; 100 << 20].into();
        let records: Vec<Record> = (0..3)
            .map(|i| register(&format!("k{i}"), &value, 1000))
            .collect();
        assert!(record_sizes(&records).0 > FRAME_RECORD_BYTES_MAX);
        assert_eq!(split_into_frames(&records).len(), 2);
        let db = crate::Db::open(dir.path()).unwrap();
        let e = db.engine();
        let first = e.commit_records(records.clone(), CommitId([1; 32]), None);
        assert_eq!(first.unwrap(), counts(3, 0, 0));
        let again = e.commit_records(records.clone(), CommitId([1; 32]), None);
        assert_eq!(
            again.unwrap(),
            counts(0, 0, 3),
            "every chunk is a duplicate"
        );
        // With a tail that no longer fits: chunks, then the tail alone.
        let tail = register("tail", &Arc::from(&b"t"[..]), 2000);
        let with_tail = e.commit_records(records.clone(), CommitId([2; 32]), Some(tail.clone()));
        assert_eq!(with_tail.unwrap(), counts(1, 3, 0));
        let retried = e.commit_records(records.clone(), CommitId([2; 32]), Some(tail));
        assert_eq!(retried.unwrap(), counts(0, 0, 4));
        assert_eq!(e.applied_watermark().unwrap(), e.wal().stats().last_seq);
        drop(db);
        let db = crate::Db::open(dir.path()).unwrap();
        let after_reopen = db.engine().commit_records(records, CommitId([1; 32]), None);
        assert_eq!(
            after_reopen.unwrap(),
            counts(0, 0, 3),
            "ids survive a reopen"
        );
        db.compact_now().unwrap();
    }

    #[test]
    fn a_record_no_frame_can_hold_is_refused_before_anything_lands() {
        let dir = tempfile::tempdir().unwrap();
        let small: Arc<[u8]> = Arc::from(&b"s"[..]);
        let huge: Arc<[u8]> = vec![1u8; FRAME_PAYLOAD_BYTES_MAX].into();
        let records = vec![
            register("a", &small, 5),
            register("b", &huge, 5),
            register("c", &small, 5),
        ];
        let db = crate::Db::open(dir.path()).unwrap();
        let result = db.engine().commit_records(records, CommitId([3; 32]), None);
        assert!(
            matches!(result, Err(Error::LimitExceeded { .. })),
            "{result:?}"
        );
        assert!(db.get("a").unwrap().is_none(), "nothing before it landed");
        assert!(db.engine().check_usable().is_ok());
        let empty = db
            .engine()
            .commit_records(Vec::new(), CommitId([4; 32]), None);
        assert_eq!(empty.unwrap(), counts(0, 0, 0));
    }

    /// The largest record a frame holds, after a small one: the snapshot
    /// chunk that would hold both must close first, or no open can read
    /// the snapshot back.
    #[test]
    fn a_near_limit_record_survives_compaction_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // Just below the size at which a snapshot chunk closes.
        let small: Arc<[u8]> = vec![4u8; 60 * 1024].into();
        let big: Arc<[u8]> = vec![5u8; FRAME_RECORD_BYTES_MAX - 1024].into();
        let db = crate::Db::open(dir.path()).unwrap();
        let e = db.engine();
        let first = e.commit_records(vec![register("a", &small, 5)], CommitId([5; 32]), None);
        assert_eq!(first.unwrap(), counts(1, 0, 0));
        let second = e.commit_records(vec![register("b", &big, 5)], CommitId([6; 32]), None);
        assert_eq!(second.unwrap(), counts(1, 0, 0));
        db.compact_now().unwrap();
        drop(db);
        let db = crate::Db::open(dir.path()).unwrap();
        assert_eq!(db.get("b").unwrap().map(|v| v.len()), Some(big.len()));
        assert_eq!(db.get("a").unwrap().map(|v| v.len()), Some(small.len()));
        assert!(
            !dir.path().join("quarantine").exists(),
            "the snapshot was read, not set aside"
        );
    }

    /// A batch durable in an earlier WAL group is completed unapplied when
    /// a later fsync of its worker's group fails; a duplicate of it that
    /// was already queued must not be told it is done.
    #[test]
    fn a_duplicate_of_a_batch_completed_unapplied_is_not_ok() {
        let dir = tempfile::tempdir().unwrap();
        let faults = crate::io::FaultInjector::new();
        let options = crate::Options {
            faults: Some(faults.clone()),
            ..crate::Options::default()
        };
        let db = crate::Db::open_with(dir.path(), options).unwrap();
        let e = db.engine();
        let value: Arc<[u8]> = Arc::from(&b"v"[..]);
        let a = [register("a", &value, 10)];
        let b = [register("b", &value, 11)];
        let id = [9u8; 32];
        let stamp = Stamp::ZERO;
        let queued_a = e.append(&a, Some(&id), stamp, 1).unwrap();
        let Appended::Queued { last_seq, .. } = queued_a else {
            panic!("a new id is queued: {queued_a:?}");
        };
        e.wal().wait_durable(last_seq).unwrap();
        let queued_b = e.append(&b, None, stamp, 1).unwrap();
        let duplicate = e.append(&a, Some(&id), stamp, 1).unwrap();
        assert!(matches!(duplicate, Appended::Duplicate(_)), "{duplicate:?}");
        faults.fail_from_nth(crate::IoOp::Sync, 1);
        let group = e.finish(&[(&a, queued_a), (&b, queued_b)]);
        assert!(group.is_err(), "the group's fsync failed");
        assert!(db.get("a").unwrap().is_none(), "durable, but never applied");
        let retried = e.finish(&[(&a, duplicate)]).unwrap();
        assert!(
            matches!(retried.as_slice(), [Err(Error::Poisoned { .. })]),
            "a duplicate is answered only once its original is visible"
        );
    }

    #[test]
    fn chunk_ids_differ_from_the_whole_and_each_other() {
        let id = CommitId([7; 32]);
        assert_ne!(id.chunk(0), id.0);
        assert_ne!(id.chunk(0), id.chunk(1));
    }
}
