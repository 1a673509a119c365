//! Opening: open the runs the manifest names, then replay the WAL after
//! what they cover. A directory written before runs existed (snapshots, no
//! manifest) opens the older way: the newest valid snapshot is loaded into
//! the memtable, and the first flush converts it (`compactor`).

use std::path::Path;
use std::sync::Arc;

use crate::clock::{NodeId, Stamp};
use crate::crypto::{KeyId, Keyring};
use crate::error::{Error, Result};
use crate::io::Io;
use crate::manifest::{self, Manifest};
use crate::meta::Meta;
use crate::options::Options;
use crate::record::{FramePayload, StoreKey};
use crate::run::{BlockCache, RUN_DIR, Run};
use crate::snapshot::{self, LoadedSnapshot, SNAPSHOT_DIR};
use crate::state::{Lower, State};
use crate::wal::dedup::{DedupEntry, DedupWindow};
use crate::wal::recovery::{self, QUARANTINE_DIR, RecoveryReport, SnapshotUsed};
use crate::wal::{WAL_DIR, WalStart};

/// Records replayed into the state map at a time: large enough that sorting
/// them pays off, small enough to bound the memory replay needs.
const REPLAY_CHUNK_RECORDS: usize = 1 << 20;

/// What opening rebuilt.
pub(crate) struct Recovered {
    pub state: State,
    pub wal_start: WalStart,
    pub max_stamp: Option<Stamp>,
    pub report: RecoveryReport,
    /// The manifest the runs were opened from.
    pub manifest: Option<Manifest>,
    /// Without a manifest: the loaded snapshot's covered sequence number.
    pub snapshot_seq: Option<u64>,
}

/// Where recovery reads from, and whether it may change anything.
pub(crate) struct RecoverFrom<'a> {
    pub io: &'a Io,
    pub dir: &'a Path,
    /// The ids the directory writes and wrote under, the current one first.
    pub nodes: &'a [NodeId],
    pub options: &'a Options,
    pub cache: &'a Arc<BlockCache>,
    /// The keys encrypted files are read with (checked before recovery).
    pub keyring: &'a Keyring,
    /// The database is encrypted and all its files are its own (no
    /// rotation from no key pending): a manifest without its key's MAC is
    /// refused as forged.
    pub manifest_mac_required: bool,
    /// META's `node_since_seq`: segments holding frames from there on must
    /// carry the current id (0: no such rule).
    pub node_since_seq: u64,
    /// False for a read-only open: nothing on disk is changed, a torn tail
    /// is read as the end of the log, and damage is an error.
    pub modify: bool,
}

/// Opens the state: the manifest's runs plus the WAL after them, or, in a
/// directory of the format before runs, the newest snapshot plus the WAL.
pub(crate) fn recover_state(from: &RecoverFrom<'_>) -> Result<Recovered> {
    match manifest::read_manifest_checked(
        from.io,
        from.dir,
        from.keyring,
        from.manifest_mac_required,
    )? {
        Some(manifest) => recover_from_manifest(from, manifest),
        None if from.modify => recover(from),
        None => recover_legacy_read_only(from),
    }
}

/// The runs `manifest` names, opened: a missing file or one that is not
/// the run named is [`Error::Corruption`] naming the file.
pub(crate) fn open_runs(
    io: &Io,
    dir: &Path,
    manifest: &Manifest,
    cache: &Arc<BlockCache>,
    keyring: &Keyring,
) -> Result<Vec<Arc<Run>>> {
    let run_dir = dir.join(RUN_DIR);
    let mut runs = Vec::with_capacity(manifest.runs.len());
    for entry in &manifest.runs {
        let path = run_dir.join(crate::run::run_file_name(entry.id));
        let run = match Run::open(io, &path, cache.clone(), keyring) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corruption(
                    &path,
                    0,
                    "the manifest names this run, but its file is missing",
                ));
            }
            other => other?,
        };
        let info = run.info();
        if info.id != entry.id || info.checksum != entry.checksum || info.entries != entry.entries {
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "not the run the manifest names (id {}, {} entries, checksum {:#x}; \
                     expected id {}, {} entries, checksum {:#x})",
                    info.id, info.entries, info.checksum, entry.id, entry.entries, entry.checksum
                ),
            ));
        }
        runs.push(run);
    }
    Ok(runs)
}

/// Removes what a flush or merge cut short left in `runs/`: temp files and
/// runs the manifest does not name.
fn remove_garbage_runs(io: &Io, dir: &Path, manifest: &Manifest) -> Result<()> {
    let run_dir = dir.join(RUN_DIR);
    let names = io.list_dir_if_exists(&run_dir)?;
    let mut removed = false;
    for name in names {
        let named = crate::run::parse_run_file_name(&name)
            .is_some_and(|id| manifest.runs.iter().any(|r| r.id == id));
        if !named {
            tracing::debug!(file = %name, "removed a run file no manifest names");
            io.remove_file(&run_dir.join(&name))?;
            removed = true;
        }
    }
    if removed {
        io.sync_dir(&run_dir)?;
    }
    Ok(())
}

/// Repair mode: every run the manifest names is read in full; a damaged
/// (or missing) one is replaced by a run of every block that checks out,
/// the damaged file is moved to quarantine, and the report says which
/// blocks (key ranges, entry counts) were lost. `REPAIRED` is written
/// before anything changes, and the manifest is replaced last, so a crash
/// leaves the damaged run named (to salvage again) or the replacement;
/// the damaged file is removed only once no manifest names it.
fn repair_runs(
    from: &RecoverFrom<'_>,
    manifest: &mut Manifest,
) -> Result<Option<crate::wal::recovery::SalvageReport>> {
    let (io, dir) = (from.io, from.dir);
    let run_dir = dir.join(RUN_DIR);
    let mut report: Option<crate::wal::recovery::SalvageReport> = None;
    let check_cache = BlockCache::new(0);
    for position in 0..manifest.runs.len() {
        let Some(entry) = manifest.runs.get(position).copied() else {
            continue;
        };
        let one = Manifest {
            runs: vec![entry],
            ..manifest.clone()
        };
        let checked = open_runs(io, dir, &one, &check_cache, from.keyring)
            .and_then(|runs| runs.iter().try_for_each(|r| r.verify().map(drop)));
        let damage = match checked {
            Ok(()) => continue,
            Err(e @ Error::Corruption { .. }) => e,
            Err(e) => return Err(e),
        };
        let path = run_dir.join(crate::run::run_file_name(entry.id));
        if report.is_none() {
            recovery::mark_repaired(io, dir, &format!("salvaged {}: {damage}", path.display()))?;
        }
        let report = report.get_or_insert_with(|| crate::wal::recovery::SalvageReport {
            path: path.clone(),
            ..Default::default()
        });
        let exists = io.read_if_exists(&path)?.is_some();
        let salvage = if exists {
            crate::run::salvage_run(io, &path, from.keyring)?
        } else {
            crate::run::RunSalvage {
                entries: Vec::new(),
                lost: Vec::new(),
                node: None,
            }
        };
        if !exists {
            report.lost.push(format!(
                "{}: missing; its {} entries are lost",
                path.display(),
                entry.entries
            ));
        }
        for lost in &salvage.lost {
            let key = |k: &Option<Vec<u8>>| {
                k.as_ref().map_or_else(
                    || "?".to_string(),
                    |k| format!("{:?}", String::from_utf8_lossy(k)),
                )
            };
            report.lost.push(format!(
                "{} bytes {}..{}: {} entries from key {} to key {} ({})",
                path.display(),
                lost.offset_bytes,
                lost.offset_bytes + lost.len_bytes,
                lost.entries
                    .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
                key(&lost.first_key),
                key(&lost.last_key),
                lost.reason
            ));
        }
        report.entries_kept += salvage.entries.len() as u64;
        tracing::warn!(
            run = %path.display(),
            damage = %damage,
            missing = !exists,
            entries_kept = salvage.entries.len(),
            spans_lost = salvage.lost.len(),
            "damaged run salvaged"
        );
        if exists {
            // A copy: the file stays until a manifest no longer names it
            // (then the garbage sweep below removes it), so a crash before
            // that finds it to salvage again.
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            io.write_atomic(&quarantine_path(io, dir, &name)?, &io.read(&path)?)?;
        }
        let replacement = write_salvaged(from, manifest, &salvage)?;
        match replacement {
            Some(new_entry) => {
                if let Some(slot) = manifest.runs.get_mut(position) {
                    *slot = new_entry;
                }
            }
            None => {
                // Nothing was kept: the run is gone; a placeholder id 0
                // is removed below.
                if let Some(slot) = manifest.runs.get_mut(position) {
                    slot.id = 0;
                }
            }
        }
    }
    if report.is_none() {
        return Ok(None);
    }
    manifest.runs.retain(|r| r.id != 0);
    // What the runs hold changed: count their digest afresh.
    let runs = open_runs(io, dir, manifest, from.cache, from.keyring)?;
    let view = crate::state::StateView::of(
        Default::default(),
        Arc::new(Lower {
            frozen: Vec::new(),
            runs,
            runs_digest: crate::state::DigestSums::new(),
        }),
    );
    let mut digest = crate::state::DigestSums::new();
    for entry in view.iter_uncached() {
        let (key, state) = entry?;
        digest.add(&key, &state);
    }
    manifest.digest = digest;
    manifest.generation += 1;
    manifest::write_manifest(io, dir, manifest, from.keyring.current().map(|k| &**k))?;
    Ok(report)
}

/// Writes what a salvage kept as a new run (the next id); `None` if it
/// kept nothing.
fn write_salvaged(
    from: &RecoverFrom<'_>,
    manifest: &mut Manifest,
    salvage: &crate::run::RunSalvage,
) -> Result<Option<crate::manifest::RunEntry>> {
    if salvage.entries.is_empty() {
        return Ok(None);
    }
    let id = manifest.next_run_id;
    manifest.next_run_id += 1;
    let node = from.nodes.first().copied().unwrap_or_default();
    let mut writer = crate::run::RunWriter::create(
        from.io,
        &from.dir.join(RUN_DIR),
        id,
        node,
        &crate::run::RunWriterOptions {
            key: from.keyring.current().cloned(),
            ..crate::run::RunWriterOptions::default()
        },
    )?;
    let mut last: Option<&StoreKey> = None;
    for (key, state) in &salvage.entries {
        // Salvage keeps key order; anything out of order is skipped.
        if last.is_some_and(|l| l >= key) {
            continue;
        }
        writer.add(key, state)?;
        last = Some(key);
    }
    let info = writer.finish()?;
    Ok(Some(crate::manifest::RunEntry {
        id: info.id,
        size_bytes: info.size_bytes,
        entries: info.entries,
        tombstones: info.tombstones,
        checksum: info.checksum,
    }))
}

fn recover_from_manifest(from: &RecoverFrom<'_>, mut manifest: Manifest) -> Result<Recovered> {
    let (io, dir) = (from.io, from.dir);
    if !from.nodes.contains(&manifest.node) {
        return Err(Error::corruption(
            &manifest::manifest_path(dir),
            0,
            format!(
                "manifest belongs to node {}, not to this directory ({})",
                manifest.node,
                from.nodes.first().copied().unwrap_or_default()
            ),
        ));
    }
    let salvage =
        if from.modify && from.options.recovery_mode == crate::options::RecoveryMode::Repair {
            repair_runs(from, &mut manifest)?
        } else {
            None
        };
    let runs = open_runs(io, dir, &manifest, from.cache, from.keyring)?;
    if from.modify {
        remove_garbage_runs(io, dir, &manifest)?;
    }
    let state = State::with_lower(Lower {
        frozen: Vec::new(),
        runs,
        runs_digest: manifest.digest.clone(),
    });
    let options = from.options;
    let mut dedup = DedupWindow::new(options.dedup_window_ms, options.dedup_window_entries_max);
    let now_ms = options.wall_clock.now_ms();
    for (id, entry) in &manifest.dedup {
        dedup.insert(*id, *entry, now_ms);
    }
    let mut report = RecoveryReport {
        runs: Some(crate::wal::recovery::RunsUsed {
            covered_seq: manifest.covered_seq,
            runs: manifest.runs.len(),
            entries: manifest
                .runs
                .iter()
                .fold(0u64, |sum, r| sum.saturating_add(r.entries)),
            bytes: manifest
                .runs
                .iter()
                .fold(0u64, |sum, r| sum.saturating_add(r.size_bytes)),
        }),
        salvage,
        ..RecoveryReport::default()
    };
    let (max_stamp, replayed) = replay_tail(
        from,
        &state,
        &mut dedup,
        Some(manifest.covered_seq),
        Some(manifest.hlc),
        from.options.recovery_mode,
    )?;
    copy_wal_report(&mut report, &replayed.report);
    let after = manifest.covered_seq.saturating_add(1);
    Ok(Recovered {
        state,
        wal_start: WalStart {
            next_seq: replayed.next_seq.max(after),
            segments: replayed.segments,
            dedup,
            start_fresh: replayed.next_seq < after,
        },
        max_stamp,
        report,
        manifest: Some(manifest),
        snapshot_seq: None,
    })
}

/// A read-only open of a directory of the format before runs: the newest
/// snapshot that reads back whole (changing nothing), then the WAL.
fn recover_legacy_read_only(from: &RecoverFrom<'_>) -> Result<Recovered> {
    let snap_dir = from.dir.join(SNAPSHOT_DIR);
    let mut loaded = None;
    // Damaged snapshots are passed over (and reported), as a writable open
    // does, but left where they are.
    let mut damaged: Vec<Error> = Vec::new();
    for (_, path) in snapshot::list_snapshots(from.io, &snap_dir)? {
        match snapshot::read_snapshot(from.io, &path, from.keyring) {
            Ok(snapshot) if from.nodes.contains(&snapshot.meta.node) => {
                loaded = Some(snapshot);
                break;
            }
            Ok(snapshot) => {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!(
                        "snapshot belongs to node {}, not to this directory",
                        snapshot.meta.node
                    ),
                ));
            }
            Err(e @ Error::Corruption { .. }) => damaged.push(e),
            Err(e) => return Err(e),
        }
    }
    let options = from.options;
    let state = State::new();
    let mut dedup = DedupWindow::new(options.dedup_window_ms, options.dedup_window_entries_max);
    let now_ms = options.wall_clock.now_ms();
    let mut report = RecoveryReport::default();
    let covered_seq = loaded.as_ref().map(|s| s.meta.covered_seq);
    let mut max_stamp = None;
    if let Some(snapshot) = loaded {
        report.snapshot = Some(SnapshotUsed {
            path: snapshot.path.clone(),
            covered_seq: snapshot.meta.covered_seq,
            entries: snapshot.records.len() as u64,
        });
        max_stamp = Some(snapshot.meta.hlc);
        for (id, entry) in snapshot.dedup {
            dedup.insert(id, entry, now_ms);
        }
        state.replay(snapshot.records)?;
    }
    let replayed = replay_tail(
        from,
        &state,
        &mut dedup,
        covered_seq,
        max_stamp,
        crate::options::RecoveryMode::Strict,
    );
    let (max_stamp, replayed) = match replayed {
        // Without the damaged snapshot the WAL cannot rebuild the state.
        Err(e @ Error::Corruption { .. }) => return Err(damaged.into_iter().next().unwrap_or(e)),
        other => other?,
    };
    report.snapshots_skipped = damaged.iter().map(ToString::to_string).collect();
    copy_wal_report(&mut report, &replayed.report);
    let after = covered_seq.map_or(1, |s| s.saturating_add(1));
    Ok(Recovered {
        state,
        wal_start: WalStart {
            next_seq: replayed.next_seq.max(after),
            segments: replayed.segments,
            dedup,
            start_fresh: replayed.next_seq < after,
        },
        max_stamp,
        report,
        manifest: None,
        snapshot_seq: covered_seq,
    })
}

fn copy_wal_report(report: &mut RecoveryReport, wal_report: &RecoveryReport) {
    report.segments_replayed = wal_report.segments_replayed;
    report.segments_skipped = wal_report.segments_skipped;
    report.frames_replayed = wal_report.frames_replayed;
    report.ops_replayed = wal_report.ops_replayed;
    report.torn_tail = wal_report.torn_tail.clone();
    report.repair = wal_report.repair.clone();
}

/// Replays the WAL after `covered_seq` into `state` and `dedup`; returns
/// the newest stamp seen (starting from `max_stamp`) and what replay found.
fn replay_tail(
    from: &RecoverFrom<'_>,
    state: &State,
    dedup: &mut DedupWindow,
    covered_seq: Option<u64>,
    mut max_stamp: Option<Stamp>,
    wal_mode: crate::options::RecoveryMode,
) -> Result<(Option<Stamp>, recovery::Replayed)> {
    let now_ms = from.options.wall_clock.now_ms();
    let mut pending = Vec::new();
    let mut failed: Option<Error> = None;
    let mut apply = |first_seq: u64, payload: FramePayload| {
        let batch_stamp = payload
            .records
            .iter()
            .filter_map(|r| r.delta.newest_stamp())
            .max();
        max_stamp = max_stamp.max(batch_stamp);
        if let (Some(mark), Some(stamp)) = (payload.dedup, batch_stamp) {
            let entry = DedupEntry {
                first_seq,
                op_count: payload.records.len() as u32,
                stamp,
                seen_ms: mark.seen_ms,
            };
            dedup.insert(mark.id, entry, now_ms);
        }
        pending.extend(payload.records);
        if pending.len() >= REPLAY_CHUNK_RECORDS
            && failed.is_none()
            && let Err(e) = state.replay(std::mem::take(&mut pending))
        {
            failed = Some(e);
        }
    };
    let mode = recovery::ReplayMode {
        recovery: wal_mode,
        modify: from.modify,
        covered_seq,
        read_covered: false,
        node_since_seq: from.node_since_seq,
    };
    let replayed = recovery::replay(
        from.io,
        &from.dir.join(WAL_DIR),
        from.nodes,
        from.keyring,
        mode,
        &mut apply,
    )?;
    if let Some(e) = failed {
        return Err(e);
    }
    state.replay(pending)?;
    Ok((max_stamp, replayed))
}

/// Loads the newest valid snapshot (moving damaged ones to quarantine) and
/// replays the WAL after it into a fresh state and dedup window. In repair
/// mode, when no valid snapshot and WAL can rebuild the state, the newest
/// damaged snapshot's undamaged chunks are salvaged instead.
///
/// `nodes` are the ids the directory writes and wrote under, the current
/// one first.
pub(crate) fn recover(from: &RecoverFrom<'_>) -> Result<Recovered> {
    let (io, dir, nodes, options, keyring) =
        (from.io, from.dir, from.nodes, from.options, from.keyring);
    let (loaded, mut damaged) = load_snapshot(io, dir, nodes, keyring)?;
    // A damaged snapshot is the problem to report, not a reason to repair
    // (and so discard) an intact WAL that no longer reaches back far enough.
    let wal_mode = if damaged.is_empty() {
        options.recovery_mode
    } else {
        crate::options::RecoveryMode::Strict
    };
    match rebuild(from, loaded, &damaged, wal_mode) {
        // Without the damaged snapshot the WAL cannot rebuild the state.
        Err(e @ Error::Corruption { .. }) if !damaged.is_empty() => {
            if options.recovery_mode != crate::options::RecoveryMode::Repair {
                return Err(damaged.first().map_or(e, |(_, error)| error.clone()));
            }
            let (path, error) = damaged.remove(0);
            let Some((salvaged, report)) = salvage(io, dir, nodes, keyring, &path)? else {
                return Err(error);
            };
            let mut recovered = rebuild(from, Some(salvaged), &damaged, options.recovery_mode)?;
            recovered
                .report
                .snapshots_skipped
                .insert(0, error.to_string());
            recovered.report.salvage = Some(report);
            Ok(recovered)
        }
        other => other,
    }
}

/// Salvages the damaged snapshot at `path` and replaces it with a snapshot
/// of what was kept: its bytes are saved in quarantine first, and the
/// repair marked (the history lost keys), so a crash anywhere leaves the
/// damaged file to salvage again or the replacement.
fn salvage(
    io: &Io,
    dir: &Path,
    nodes: &[NodeId],
    keyring: &Keyring,
    path: &Path,
) -> Result<Option<(LoadedSnapshot, crate::wal::recovery::SalvageReport)>> {
    let current = nodes.first().copied().unwrap_or_default();
    let Some((mut salvaged, report)) = snapshot::salvage_snapshot(io, path, current)? else {
        return Ok(None);
    };
    if !nodes.contains(&salvaged.meta.node) {
        salvaged.meta.node = current;
    }
    tracing::warn!(
        snapshot = %path.display(),
        entries_kept = report.entries_kept,
        spans_lost = report.lost.len(),
        header_damaged = report.header_damaged,
        dedup_lost = report.dedup_lost,
        "damaged snapshot salvaged"
    );
    recovery::mark_repaired(io, dir, &format!("salvaged {}", path.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    io.write_atomic(&quarantine_path(io, dir, &name)?, &io.read(path)?)?;
    let state = State::new();
    state.replay(std::mem::take(&mut salvaged.records))?;
    let snap_dir = dir.join(SNAPSHOT_DIR);
    snapshot::write_snapshot(
        io,
        &snap_dir,
        &salvaged.meta,
        state.view().iter(),
        &salvaged.dedup,
    )?;
    Ok(Some((snapshot::read_snapshot(io, path, keyring)?, report)))
}

/// The state from `loaded` (if any) and the WAL after it; the `damaged`
/// snapshots are moved to quarantine once it is rebuilt.
fn rebuild(
    from: &RecoverFrom<'_>,
    loaded: Option<LoadedSnapshot>,
    damaged: &Damaged,
    wal_mode: crate::options::RecoveryMode,
) -> Result<Recovered> {
    let (io, dir, options) = (from.io, from.dir, from.options);
    let state = State::new();
    let mut dedup = DedupWindow::new(options.dedup_window_ms, options.dedup_window_entries_max);
    let now_ms = options.wall_clock.now_ms();
    let mut report = RecoveryReport::default();
    let mut max_stamp = None;
    let covered_seq = loaded.as_ref().map(|s| s.meta.covered_seq);
    if let Some(snapshot) = loaded {
        report.snapshot = Some(SnapshotUsed {
            path: snapshot.path.clone(),
            covered_seq: snapshot.meta.covered_seq,
            entries: snapshot.records.len() as u64,
        });
        max_stamp = Some(snapshot.meta.hlc);
        for (id, entry) in snapshot.dedup {
            dedup.insert(id, entry, now_ms);
        }
        state.replay(snapshot.records)?;
    }
    let (max_stamp, replayed) =
        replay_tail(from, &state, &mut dedup, covered_seq, max_stamp, wal_mode)?;
    for (path, error) in damaged {
        tracing::warn!(
            snapshot = %path.display(),
            error = %error,
            "damaged snapshot moved to quarantine; the state was rebuilt without it"
        );
        report.snapshots_skipped.push(error.to_string());
        quarantine(io, dir, path)?;
    }
    copy_wal_report(&mut report, &replayed.report);
    let after_snapshot = covered_seq.map_or(1, |s| s.saturating_add(1));
    Ok(Recovered {
        state,
        wal_start: WalStart {
            next_seq: replayed.next_seq.max(after_snapshot),
            segments: replayed.segments,
            dedup,
            // Appending at S + 1 to a segment that ends earlier would leave a
            // gap inside it; a new segment starting there is read correctly.
            start_fresh: replayed.next_seq < after_snapshot,
        },
        max_stamp,
        report,
        manifest: None,
        snapshot_seq: covered_seq,
    })
}

/// A snapshot that did not read back whole, and why.
type Damaged = Vec<(std::path::PathBuf, Error)>;

/// The newest snapshot that reads back whole, and the newer ones that did
/// not. Leftover temp files (a crash during a snapshot write) are removed.
fn load_snapshot(
    io: &Io,
    dir: &Path,
    nodes: &[NodeId],
    keyring: &Keyring,
) -> Result<(Option<LoadedSnapshot>, Damaged)> {
    let snap_dir = dir.join(SNAPSHOT_DIR);
    remove_temp_files(io, &snap_dir)?;
    let mut damaged = Vec::new();
    for (_, path) in snapshot::list_snapshots(io, &snap_dir)? {
        match snapshot::read_snapshot(io, &path, keyring) {
            Ok(loaded) if nodes.contains(&loaded.meta.node) => return Ok((Some(loaded), damaged)),
            Ok(loaded) => {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!(
                        "snapshot belongs to node {}, not to this directory ({})",
                        loaded.meta.node,
                        nodes.first().copied().unwrap_or_default()
                    ),
                ));
            }
            Err(e @ Error::Corruption { .. }) => damaged.push((path, e)),
            Err(e) => return Err(e),
        }
    }
    Ok((None, damaged))
}

fn remove_temp_files(io: &Io, snap_dir: &Path) -> Result<()> {
    let names = io.list_dir_if_exists(snap_dir)?;
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        io.remove_file(&snap_dir.join(name))?;
    }
    Ok(())
}

/// Moves a damaged file into `<dir>/quarantine/`, durably.
pub(crate) fn quarantine(io: &Io, dir: &Path, path: &Path) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let target = quarantine_path(io, dir, &name)?;
    io.rename(path, &target)?;
    io.sync_dir(target.parent().unwrap_or(dir))?;
    io.sync_dir(path.parent().unwrap_or(dir))
}

/// A path in `<dir>/quarantine/` for `name` that holds nothing yet (a
/// second event never overwrites what a first one kept).
pub(crate) fn quarantine_path(io: &Io, dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let quarantine = dir.join(QUARANTINE_DIR);
    io.create_dir_all(&quarantine)?;
    let taken = io.list_dir(&quarantine)?;
    let mut candidate = name.to_string();
    let mut n = 1u32;
    while taken.contains(&candidate) {
        candidate = format!("{name}.{n}");
        n += 1;
    }
    Ok(quarantine.join(candidate))
}

/// Every node id the directory's snapshot, run, manifest and segment
/// headers carry, oldest files first, each once.
pub(crate) fn node_ids_in_files(io: &Io, dir: &Path, keyring: &Keyring) -> Result<Vec<NodeId>> {
    let mut ids: Vec<NodeId> = Vec::new();
    let mut note = |node: NodeId| {
        if !ids.contains(&node) {
            ids.push(node);
        }
    };
    for (_, path) in snapshot::list_snapshots(io, &dir.join(SNAPSHOT_DIR))?
        .into_iter()
        .rev()
    {
        if let Ok(meta) = snapshot::read_snapshot_header(io, &path) {
            note(meta.node);
        }
    }
    // The runs' writers (each footer names one), then the manifest's.
    let run_dir = dir.join(RUN_DIR);
    let mut run_names: Vec<String> = io
        .list_dir_if_exists(&run_dir)?
        .into_iter()
        .filter(|n| crate::run::parse_run_file_name(n).is_some())
        .collect();
    run_names.sort();
    let no_cache = BlockCache::new(0);
    for name in run_names {
        if let Ok(run) = Run::open(io, &run_dir.join(name), no_cache.clone(), keyring) {
            note(run.info().node);
        }
    }
    if let Ok(Some(m)) = manifest::read_manifest(io, dir) {
        note(m.node);
    }
    for (_, path) in recovery::list_segments(io, &dir.join(WAL_DIR)).unwrap_or_default() {
        if let Some(h) = crate::wal::read_segment_header(io, &path)? {
            note(h.node);
        }
    }
    Ok(ids)
}

/// The key id of every encrypted file recovery would read: WAL segments,
/// the runs the manifest names, and snapshots of the format before runs.
/// Files whose headers do not read are left out (recovery finds their
/// damage); nothing is changed.
pub(crate) fn key_ids_in_files(io: &Io, dir: &Path) -> Result<Vec<(std::path::PathBuf, KeyId)>> {
    let mut out = Vec::new();
    for (_, path) in recovery::list_segments(io, &dir.join(WAL_DIR)).unwrap_or_default() {
        if let Some(id) = crate::wal::read_segment_key_id(io, &path)? {
            out.push((path, id));
        }
    }
    if let Ok(Some(m)) = manifest::read_manifest(io, dir) {
        for run in &m.runs {
            let path = dir.join(RUN_DIR).join(crate::run::run_file_name(run.id));
            if let Some(id) = read_run_key_id(io, &path)? {
                out.push((path, id));
            }
        }
    }
    for (_, path) in snapshot::list_snapshots(io, &dir.join(SNAPSHOT_DIR))? {
        if let Some(id) = snapshot::read_snapshot_key_id(io, &path)? {
            out.push((path, id));
        }
    }
    Ok(out)
}

/// The files recovery reads (segments, the manifest's runs, snapshots)
/// that are in clear: in an encrypted database, what a rotation from no
/// key has yet to rewrite (or a forged file).
pub(crate) fn files_in_clear(io: &Io, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    // Only files whose header reads and says "in clear": one whose header
    // does not read (a creation cut short, damage) is recovery's to judge.
    let head = |path: &Path, len: usize| -> Result<Vec<u8>> {
        let file = match io.open_read(path) {
            Ok(file) => file,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; len];
        let read = file.read_at(0, &mut buf)?;
        buf.truncate(read);
        Ok(buf)
    };
    let mut out = Vec::new();
    for (_, path) in recovery::list_segments(io, &dir.join(WAL_DIR)).unwrap_or_default() {
        let bytes = head(&path, crate::wal::format::SEGMENT_HEADER_BYTES)?;
        if crate::wal::format::decode_segment_header(&bytes).is_ok()
            && !crate::wal::segment_is_encrypted(&bytes)
        {
            out.push(path);
        }
    }
    if let Ok(Some(m)) = manifest::read_manifest(io, dir) {
        for run in &m.runs {
            let path = dir.join(RUN_DIR).join(crate::run::run_file_name(run.id));
            let bytes = head(&path, 32)?;
            if run_header_says_clear(&bytes) {
                out.push(path);
            }
        }
    }
    for (_, path) in snapshot::list_snapshots(io, &dir.join(SNAPSHOT_DIR))? {
        let bytes = head(&path, snapshot::SNAPSHOT_HEADER_BYTES)?;
        if snapshot::header_says_clear(&bytes) {
            out.push(path);
        }
    }
    Ok(out)
}

/// True if `bytes` hold a whole run header (magic, CRC-32C at 28 over the
/// 28 bytes before it) whose flags do not say encrypted.
fn run_header_says_clear(bytes: &[u8]) -> bool {
    let Some(header) = bytes.get(..32) else {
        return false;
    };
    let (body, crc) = header.split_at(28);
    let crc_ok =
        <[u8; 4]>::try_from(crc).is_ok_and(|c| crc32c::crc32c(body) == u32::from_le_bytes(c));
    let flags = body
        .get(10..12)
        .and_then(|f| <[u8; 2]>::try_from(f).ok())
        .map_or(1, u16::from_le_bytes);
    header.starts_with(b"MKVRUN\0\x01") && crc_ok && flags & 1 == 0
}

/// The key id in the header of the run at `path`, if it is encrypted and
/// its header and key block read (`None` for a run in clear, a missing
/// file, or a damaged header: opening it reports those).
pub(crate) fn read_run_key_id(io: &Io, path: &Path) -> Result<Option<KeyId>> {
    // The run header (docs/FORMAT.md): magic, version u16, flags u16 (bit
    // 0: encrypted), …, 32 bytes in all; the key block follows it.
    const RUN_HEADER_BYTES: usize = 32;
    const RUN_FLAGS_OFFSET: usize = 10;
    let file = match io.open_read(path) {
        Ok(file) => file,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut head = [0u8; RUN_HEADER_BYTES + crate::crypto::KEY_BLOCK_BYTES];
    let read = file.read_at(0, &mut head)?;
    if read < head.len() || !head.starts_with(b"MKVRUN\0\x01") {
        return Ok(None);
    }
    let flags = u16::from_le_bytes([head[RUN_FLAGS_OFFSET], head[RUN_FLAGS_OFFSET + 1]]);
    if flags & 1 == 0 {
        return Ok(None);
    }
    Ok(crate::crypto::KeyBlock::decode(&head[RUN_HEADER_BYTES..])
        .ok()
        .map(|b| b.key_id))
}

/// A new META for a directory whose META is damaged or missing: a fresh
/// node id, with every id its segment and snapshot headers carry as a
/// former one (so every file still opens). Fresh, because which id was
/// current cannot be told for sure (a copy that renewed its id and has
/// not written since carries only the old one), and writing under an id
/// another copy may also use would lose increments. `None` if no file
/// names an id: there is nothing to rebuild from.
pub(crate) fn rebuild_meta(
    io: &Io,
    dir: &Path,
    created_ms: u64,
    keyring: &Keyring,
) -> Result<Option<Meta>> {
    // Encrypted under the current key if any file is encrypted; in clear
    // if none is (a repair does not encrypt a database by the way: the
    // key check then refuses a key for it, as for any database in clear).
    let key_id = if key_ids_in_files(io, dir)?.is_empty() {
        None
    } else {
        keyring.current_id()
    };
    let mut former = node_ids_in_files(io, dir, keyring)?;
    if former.is_empty() {
        return Ok(None);
    }
    let excess = former
        .len()
        .saturating_sub(crate::meta::FORMER_NODE_IDS_MAX);
    former.drain(..excess);
    Ok(Some(Meta {
        node: crate::meta::fresh_node_id(&former),
        created_ms,
        home: io.object_id(dir)?,
        former,
        key_id,
        // Files in clear beside encrypted ones (a rotation from no key that
        // had not finished) are not refused after a rebuild: what META said
        // is lost.
        clear_files_pending: key_id.is_some(),
        node_since_seq: 0,
    }))
}
