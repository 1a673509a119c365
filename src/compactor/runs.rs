//! Flushes and merges: frozen memtables written out as runs, runs merged,
//! and the manifest that names them.
//!
//! Every change follows one order, so a crash anywhere leaves a directory
//! that opens to every acknowledged write:
//! 1. the new run is written to a temp file, fsynced, read back and
//!    verified, renamed, and its directory fsynced (`RunWriter::finish`);
//! 2. the manifest naming it (and no longer naming what it replaces) is
//!    replaced atomically;
//! 3. only then does the in-memory state switch to it, and are replaced
//!    runs deleted and covered WAL segments truncated.
//!
//! A crash before 2 leaves a run file no manifest names: garbage, removed
//! at the next writable open. A crash after 2 leaves files the manifest no
//! longer names (the same), and WAL the manifest covers (replayed
//! harmlessly: merging is idempotent).

use std::sync::Arc;

use crate::crdt::KeyState;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest, RunEntry};
use crate::record::StoreKey;
use crate::run::{RUN_DIR, Run, RunFileInfo, RunWriter, RunWriterOptions};
use crate::snapshot::SNAPSHOT_DIR;
use crate::state::{DigestSums, Frozen, Lower, StateView};

use super::{Maintenance, TombstoneGc};

/// A background merge starts once this many runs in a row are of
/// comparable size (size-tiered merging).
pub const MERGE_RUNS_MIN: usize = 4;
/// A run joins the merge window of the newer runs when it is at most this
/// many times their total size.
pub const MERGE_SIZE_RATIO: u64 = 2;
/// Above this many runs, the newest [`MERGE_RUNS_MIN`] are merged whatever
/// their sizes.
pub const RUNS_MAX: usize = 16;

/// What one flush or merge wrote.
#[derive(Clone, Debug, Default)]
pub(crate) struct Written {
    pub runs_written: usize,
    pub bytes_written: u64,
    pub entries_written: u64,
    pub runs_merged: usize,
    pub tombstones_dropped: u64,
    pub last_run: Option<RunFileInfo>,
}

impl Maintenance {
    /// Writes every frozen memtable out as a run, oldest first, each
    /// installed by its own manifest update.
    pub(crate) fn flush_frozen(&self, out: &mut Written) -> Result<()> {
        loop {
            let lower = self.engine.state().lower();
            let Some(frozen) = lower.frozen.last().cloned() else {
                return Ok(());
            };
            drop(lower);
            self.flush_one(&frozen, out)?;
        }
    }

    fn flush_one(&self, frozen: &Frozen, out: &mut Written) -> Result<()> {
        let started = std::time::Instant::now();
        tracing::debug!(
            covered_seq = frozen.covered_seq,
            keys = frozen.map.len(),
            "memtable flush started"
        );
        let digest = self.digest_after_flush(frozen)?;
        let entries = frozen.map.iter().map(|(k, s)| Ok((k.clone(), s.clone())));
        let expected = Some(frozen.map.len() as u64);
        let new = self.write_runs(entries, expected, &mut |_, _| false)?;
        let mut manifest = self.next_manifest(frozen.covered_seq);
        manifest.runs.splice(0..0, new.entries());
        manifest.digest = digest.clone();
        self.write_manifest(&manifest, &new)?;
        let covered = frozen.covered_seq;
        self.engine.state().replace_lower(|lower| {
            let mut frozen = lower.frozen.clone();
            // The flushed one is the oldest: only this thread removes
            // frozen memtables, and a freeze adds the newest in front.
            debug_assert_eq!(frozen.last().map(|f| f.covered_seq), Some(covered));
            frozen.pop();
            let mut runs = new.opened();
            runs.extend(lower.runs.iter().cloned());
            Lower {
                frozen,
                runs,
                runs_digest: digest,
            }
        });
        *self.manifest.lock() = Some(manifest);
        self.remove_legacy_snapshots()?;
        tracing::debug!(
            covered_seq = covered,
            runs_written = new.runs.len(),
            entries = new.entries_total(),
            bytes = new.bytes_total(),
            duration_ms = millis(started.elapsed()),
            "memtable flushed"
        );
        out.add(new);
        Ok(())
    }

    /// The runs' digest sums once `frozen` is flushed: each of its keys
    /// moves from what the runs hold for it to the merge of both (every
    /// run is older than every frozen memtable).
    fn digest_after_flush(&self, frozen: &Frozen) -> Result<DigestSums> {
        let lower = self.engine.state().lower();
        let runs = Lower {
            frozen: Vec::new(),
            runs: lower.runs.clone(),
            runs_digest: DigestSums::new(),
        };
        let mut digest = lower.runs_digest.clone();
        for (key, state) in frozen.map.iter() {
            let before = runs.get(key)?;
            let after = match &before {
                Some(b) => KeyState::merge(b, state),
                None => state.clone(),
            };
            digest.replace(key, before.as_ref(), Some(&after));
        }
        Ok(digest)
    }

    /// A manifest that covers `covered_seq` and otherwise names what the
    /// current one does.
    pub(super) fn next_manifest(&self, covered_seq: u64) -> Manifest {
        let engine = &self.engine;
        let current = self.manifest.lock().clone();
        let (generation, runs, previous_covered, digest) = match current {
            Some(m) => (m.generation + 1, m.runs, m.covered_seq, m.digest),
            None => (
                1,
                Vec::new(),
                0,
                self.engine.state().lower().runs_digest.clone(),
            ),
        };
        // Past every id handed out, abandoned runs' included.
        let next_run_id = *self.next_run_id.lock();
        let covered_seq = covered_seq.max(previous_covered);
        Manifest {
            node: engine.node(),
            generation,
            covered_seq,
            hlc: engine.high_water(),
            created_ms: engine.now_ms(),
            next_run_id,
            runs,
            digest,
            dedup: engine.wal().dedup_entries_through(covered_seq),
        }
    }

    /// Writes `entries` (in key order, each whole) as new runs, leaving
    /// out those `drop` says to: one run, or several with disjoint key
    /// ranges when one fills up ([`RunWriter::is_full`]: huge keys), so no
    /// amount of data is refused. Empty if nothing was left to write. On
    /// an error, the runs already finished are removed (no manifest names
    /// them).
    fn write_runs(
        &self,
        entries: impl Iterator<Item = Result<(StoreKey, KeyState)>>,
        expected: Option<u64>,
        drop: &mut dyn FnMut(&StoreKey, &KeyState) -> bool,
    ) -> Result<NewRuns> {
        let mut done = NewRuns::default();
        let result = self.write_runs_into(entries, expected, drop, &mut done);
        if let Err(e) = result {
            for (info, _) in &done.runs {
                self.discard(Some(info));
            }
            return Err(e);
        }
        Ok(done)
    }

    fn write_runs_into(
        &self,
        entries: impl Iterator<Item = Result<(StoreKey, KeyState)>>,
        expected: Option<u64>,
        drop: &mut dyn FnMut(&StoreKey, &KeyState) -> bool,
        done: &mut NewRuns,
    ) -> Result<()> {
        let mut writer: Option<RunWriter> = None;
        for entry in entries {
            let written = entry.and_then(|(key, state)| {
                if drop(&key, &state) {
                    return Ok(());
                }
                if writer.as_ref().is_some_and(RunWriter::is_full)
                    && let Some(full) = writer.take()
                {
                    done.runs.push(self.finish_run(full)?);
                }
                if writer.is_none() {
                    writer = Some(self.start_run(expected)?);
                }
                match writer.as_mut() {
                    Some(w) => w.add(&key, &state),
                    None => Ok(()),
                }
            });
            if let Err(e) = written {
                if let Some(w) = writer.take() {
                    w.abandon();
                }
                return Err(e);
            }
        }
        if let Some(w) = writer {
            done.runs.push(self.finish_run(w)?);
        }
        Ok(())
    }

    fn start_run(&self, expected: Option<u64>) -> Result<RunWriter> {
        RunWriter::create(
            &self.io,
            &self.dir.join(RUN_DIR),
            self.reserve_run_id(),
            self.engine.node(),
            &RunWriterOptions {
                expected_entries: expected,
                key: self.engine.wal().keyring().read().current().cloned(),
                ..RunWriterOptions::default()
            },
        )
    }

    fn finish_run(&self, writer: RunWriter) -> Result<(RunFileInfo, Arc<Run>)> {
        let info = writer.finish()?;
        let keyring = self.engine.wal().keyring().read().clone();
        let run = Run::open(&self.io, &info.path, self.cache.clone(), &keyring)
            .inspect_err(|_| self.discard(Some(&info)))?;
        Ok((info, run))
    }

    /// The id for the next run; ids are never reused, also for runs that
    /// were abandoned (their files may linger until the next open).
    fn reserve_run_id(&self) -> u64 {
        let mut next = self.next_run_id.lock();
        let id = *next;
        *next = id + 1;
        id
    }

    /// Replaces the manifest with `manifest`, which names `new` (just
    /// written). If the new manifest never reached its name (its temp file
    /// could not be written or fsynced), `new` is garbage and is removed
    /// at once; once the rename was attempted, `new` stays whatever
    /// happens (the rename may have landed before a failed directory
    /// fsync, and then the manifest on disk needs it; if not, the next
    /// writable open removes it).
    pub(super) fn write_manifest(&self, manifest: &Manifest, new: &NewRuns) -> Result<()> {
        let path = manifest::manifest_path(&self.dir);
        let tmp = path.with_extension("tmp");
        let staged = (|| {
            let mut file = self.io.create_truncate(&tmp)?;
            let keyring = self.engine.wal().keyring().read().clone();
            file.write_all(&manifest.encode_with(keyring.current().map(|k| &**k)))?;
            file.sync_all()
        })();
        if let Err(e) = staged {
            let _ = self.io.remove_file(&tmp);
            for (info, _) in &new.runs {
                self.discard(Some(info));
            }
            return Err(e);
        }
        self.io.rename(&tmp, &path)?;
        self.io.sync_dir(&self.dir)
    }

    /// Best-effort removal of a run no manifest names (it is garbage either
    /// way; the next writable open removes what this leaves).
    fn discard(&self, info: Option<&RunFileInfo>) {
        if let Some(info) = info {
            let _ = self.io.remove_file(&info.path);
        }
    }

    /// Snapshot files of the format before runs: once a manifest covers
    /// the state they held, they are never read again.
    pub(super) fn remove_legacy_snapshots(&self) -> Result<()> {
        let snap_dir = self.dir.join(SNAPSHOT_DIR);
        // Only the old format's files: a snapshot being shipped to a
        // follower (`ship-*`) is the shipper's to remove.
        let names: Vec<String> = self
            .io
            .list_dir_if_exists(&snap_dir)?
            .into_iter()
            .filter(|n| n.starts_with("snap-"))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        for name in &names {
            match self.io.remove_file(&snap_dir.join(name)) {
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        self.io.sync_dir(&snap_dir)
    }

    /// Merges runs if the policy asks for it (or every run, if `full`),
    /// dropping collectable tombstones when the merge reaches the oldest
    /// run.
    pub(crate) fn merge_runs(&self, full: bool, gc: &TombstoneGc, out: &mut Written) -> Result<()> {
        loop {
            let lower = self.engine.state().lower();
            let sizes: Vec<u64> = lower.runs.iter().map(|r| r.info().size_bytes).collect();
            let window = if full {
                let tombstones = lower.runs.iter().any(|r| r.info().tombstones > 0);
                // A run under another key than the current one is
                // rewritten even alone (a key rotation).
                let current = self.engine.wal().keyring().read().current_id();
                let mut stale_key = false;
                for r in lower.runs.iter() {
                    stale_key |=
                        crate::engine::read_run_key_id(&self.io, &r.info().path)? != current;
                }
                (sizes.len() > 1 || tombstones || stale_key).then_some(0..sizes.len())
            } else {
                pick_merge(&sizes)
            };
            let Some(window) = window else {
                return Ok(());
            };
            let chosen: Vec<Arc<Run>> = lower.runs.get(window.clone()).unwrap_or_default().to_vec();
            let reaches_bottom = window.end == lower.runs.len();
            drop(lower);
            self.merge_window(&chosen, reaches_bottom, gc, out)?;
            if full {
                return Ok(());
            }
        }
    }

    fn merge_window(
        &self,
        chosen: &[Arc<Run>],
        reaches_bottom: bool,
        gc: &TombstoneGc,
        out: &mut Written,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        tracing::debug!(
            runs = chosen.len(),
            bytes = chosen.iter().map(|r| r.info().size_bytes).sum::<u64>(),
            reaches_bottom,
            "run merge started"
        );
        let view = StateView::of(
            Default::default(),
            Arc::new(Lower {
                frozen: Vec::new(),
                runs: chosen.to_vec(),
                runs_digest: DigestSums::new(),
            }),
        );
        let mut dropped = 0u64;
        // What the runs hold without the dropped tombstones.
        let mut digest = self.engine.state().lower().runs_digest.clone();
        // Only a merge that reaches the oldest run may drop a tombstone:
        // an older run could still hold a value it deleted.
        let mut collect = |key: &StoreKey, state: &KeyState| {
            let collect = reaches_bottom && gc.collects(state);
            if collect {
                dropped += 1;
                digest.sub(key, state);
            }
            collect
        };
        let entries = view.iter_uncached();
        let expected = chosen
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.info().entries));
        let new = self.write_runs(entries, Some(expected), &mut collect)?;
        let ids: Vec<u64> = chosen.iter().map(|r| r.info().id).collect();
        let mut manifest = self.next_manifest(0);
        let position = manifest
            .runs
            .iter()
            .position(|r| ids.contains(&r.id))
            .unwrap_or(manifest.runs.len());
        manifest.runs.retain(|r| !ids.contains(&r.id));
        let position = position.min(manifest.runs.len());
        manifest.runs.splice(position..position, new.entries());
        manifest.digest = digest.clone();
        self.write_manifest(&manifest, &new)?;
        self.engine.state().replace_lower(|lower| {
            let mut runs = Vec::with_capacity(lower.runs.len());
            let mut placed = false;
            for r in &lower.runs {
                if ids.contains(&r.info().id) {
                    if !placed {
                        runs.extend(new.opened());
                        placed = true;
                    }
                } else {
                    runs.push(r.clone());
                }
            }
            Lower {
                frozen: lower.frozen.clone(),
                runs,
                runs_digest: digest,
            }
        });
        *self.manifest.lock() = Some(manifest);
        // Views taken before keep their open files; nothing new reads these.
        for r in chosen {
            self.io.remove_file(&r.info().path)?;
        }
        self.io.sync_dir(&self.dir.join(RUN_DIR))?;
        out.runs_merged += chosen.len();
        out.tombstones_dropped += dropped;
        tracing::debug!(
            runs_merged = chosen.len(),
            runs_written = new.runs.len(),
            entries = new.entries_total(),
            bytes = new.bytes_total(),
            tombstones_dropped = dropped,
            duration_ms = millis(started.elapsed()),
            "runs merged"
        );
        out.add(new);
        Ok(())
    }
}

impl Maintenance {
    /// Writes `view` whole as one run and a manifest naming only it,
    /// covering `covered_seq` (a follower's installed state).
    pub(super) fn write_whole_state(
        &self,
        view: &StateView,
        covered_seq: u64,
        out: &mut Written,
    ) -> Result<(Vec<Arc<Run>>, DigestSums)> {
        let mut digest = DigestSums::new();
        let mut sum = |key: &StoreKey, state: &KeyState| {
            digest.add(key, state);
            false
        };
        let new = self.write_runs(view.iter_uncached(), None, &mut sum)?;
        let mut manifest = self.next_manifest(covered_seq);
        manifest.covered_seq = covered_seq;
        manifest.runs = new.entries().collect();
        manifest.digest = digest.clone();
        self.write_manifest(&manifest, &new)?;
        *self.manifest.lock() = Some(manifest);
        let runs = new.opened();
        out.add(new);
        Ok((runs, digest))
    }
}

/// Runs just written, not yet named by a manifest.
#[derive(Default)]
pub(crate) struct NewRuns {
    runs: Vec<(RunFileInfo, Arc<Run>)>,
}

impl NewRuns {
    /// Their manifest entries, in order.
    fn entries(&self) -> impl Iterator<Item = RunEntry> + '_ {
        self.runs.iter().map(|(info, _)| run_entry(info))
    }

    /// The opened runs, in order.
    fn opened(&self) -> Vec<Arc<Run>> {
        self.runs.iter().map(|(_, run)| run.clone()).collect()
    }

    /// Entries in them.
    fn entries_total(&self) -> u64 {
        self.runs.iter().map(|(info, _)| info.entries).sum()
    }

    /// Bytes of them.
    fn bytes_total(&self) -> u64 {
        self.runs.iter().map(|(info, _)| info.size_bytes).sum()
    }
}

/// A duration in whole milliseconds, for events.
pub(super) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Written {
    fn add(&mut self, new: NewRuns) {
        for (info, _) in new.runs {
            self.runs_written += 1;
            self.bytes_written += info.size_bytes;
            self.entries_written += info.entries;
            self.last_run = Some(info);
        }
    }
}

fn run_entry(info: &RunFileInfo) -> RunEntry {
    RunEntry {
        id: info.id,
        size_bytes: info.size_bytes,
        entries: info.entries,
        tombstones: info.tombstones,
        checksum: info.checksum,
    }
}

/// The runs (indexes into `sizes`, newest first) the size-tiered policy
/// merges next, if any: starting from the newest, each older run joins
/// while it is at most [`MERGE_SIZE_RATIO`] times the total of the runs
/// before it; a window of [`MERGE_RUNS_MIN`] or more is merged. Above
/// [`RUNS_MAX`] runs the newest `MERGE_RUNS_MIN` are merged anyway. Each
/// byte is rewritten about once per doubling of the data below it, so the
/// write amplification grows with log2(data / memtable size).
pub(crate) fn pick_merge(sizes: &[u64]) -> Option<std::ops::Range<usize>> {
    let mut total = 0u64;
    let mut end = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if i > 0 && size > total.saturating_mul(MERGE_SIZE_RATIO) {
            break;
        }
        total = total.saturating_add(size);
        end = i + 1;
    }
    if end >= MERGE_RUNS_MIN {
        return Some(0..end);
    }
    (sizes.len() > RUNS_MAX).then_some(0..MERGE_RUNS_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_merges_runs_of_comparable_size() {
        assert_eq!(pick_merge(&[]), None);
        assert_eq!(pick_merge(&[1, 1, 1]), None);
        assert_eq!(pick_merge(&[1, 1, 1, 1]), Some(0..4));
        // The fifth joins: 4 <= 2 * 4.
        assert_eq!(pick_merge(&[1, 1, 1, 1, 4]), Some(0..5));
        // A big old run stays out.
        assert_eq!(pick_merge(&[1, 1, 1, 1, 100]), Some(0..4));
        assert_eq!(pick_merge(&[1, 1, 100]), None);
        let many = vec![1u64 << 40; RUNS_MAX + 1];
        assert!(pick_merge(&many).is_some());
        // A new run beside a much bigger one: not yet.
        assert_eq!(pick_merge(&[1, 64, 256]), None);
    }
}
