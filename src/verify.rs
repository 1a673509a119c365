//! Offline verification of a database directory, changing nothing.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::meta;
use crate::options::{Options, RecoveryMode};
use crate::snapshot;
use crate::wal::WAL_DIR;
use crate::wal::recovery::{self, TornTail};

/// What [`verify`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// The directory checked.
    pub dir: PathBuf,
    /// Files read.
    pub files_checked: usize,
    /// Snapshots that read back whole (a directory of the format before
    /// runs, not yet converted).
    pub snapshots_ok: usize,
    /// Runs named by the manifest whose every block checks out.
    pub runs_ok: usize,
    /// Frames (after the newest valid snapshot) whose checksums and contents are valid.
    pub frames: u64,
    /// Operations in those frames.
    pub ops: u64,
    /// A torn tail (an interrupted, never-acknowledged write) that the next
    /// open will cut off. Not a problem.
    pub torn_tail: Option<TornTail>,
    /// Damage found, one line each, naming the file and offset.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True if every file checks out.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every file of the database in `dir`: the identity file, every
/// run the manifest names (every block's checksum and entries), every
/// snapshot (chunk checksums, digest, record encoding) and each WAL segment
/// (headers, frame checksums, record encoding, sequence order).
/// Reads only; safe to run while the database is open elsewhere: it holds
/// the readers' shared lock, a frame being written at that moment shows
/// as a torn tail, and when the writer replaced the manifest meanwhile (a
/// flush or a merge deleted what was being read) the check starts over
/// (a few times at most). It also
/// recounts the digest of the runs and compares it with the one the
/// manifest keeps.
///
/// # Errors
///
/// As [`verify_with`].
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    verify_with(dir, &Options::default())
}

/// [`verify`] with options: the encryption keys (an encrypted database
/// is verified with its key, else [`Error::Key`]) and a fault plan for
/// tests; other options are ignored.
///
/// # Errors
///
/// [`Error::Key`] if a key in `options` cannot be read; [`Error::Locked`] if a
/// repair holds the directory; [`Error::Io`] if a file cannot be read. Damage
/// is not an error: the report lists it.
pub fn verify_with(dir: impl AsRef<Path>, options: &Options) -> Result<VerifyReport> {
    let dir = dir.as_ref();
    let io = Io::new(options.faults.clone());
    let keyring = options.keyring()?;
    let _lock = match io.open_read(&dir.join(crate::db::READERS_LOCK_FILE)) {
        Ok(file) => {
            if !file.try_lock_shared()? {
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Some(file)
        }
        Err(_) => None,
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let before = io.read_if_exists(&crate::manifest::manifest_path(dir))?;
        let report = verify_once(&io, dir, &keyring)?;
        let after = io.read_if_exists(&crate::manifest::manifest_path(dir))?;
        if report.is_ok() || before == after || tries >= crate::db::READ_ONLY_OPEN_TRIES_MAX {
            return Ok(report);
        }
    }
}

fn verify_once(io: &Io, dir: &Path, keyring: &Keyring) -> Result<VerifyReport> {
    let io = io.clone();
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        ..VerifyReport::default()
    };
    let meta = match meta::read_meta(&io, dir) {
        Ok(Some(meta)) => meta,
        Ok(None) => {
            report.problems.push(format!(
                "{}: missing (not a mergekv database?)",
                meta::meta_path(dir).display()
            ));
            return Ok(report);
        }
        Err(e) => {
            report.problems.push(e.to_string());
            return Ok(report);
        }
    };
    crate::db::check_keys(&io, dir, Some(&meta), keyring)?;
    report.files_checked += 1;
    match crate::compactor::Cursors::load(&io, dir) {
        Ok(_) => {}
        Err(e @ Error::Corruption { .. }) => report.problems.push(e.to_string()),
        Err(e) => return Err(e),
    }
    let snapshot_seq = check_snapshots(&io, dir, keyring, &mut report)?;
    let covered_seq = match check_runs(&io, dir, keyring, &mut report)? {
        Some(seq) => Some(seq),
        None => snapshot_seq,
    };
    let wal_dir = dir.join(WAL_DIR);
    let mut count = |_seq: u64, payload: crate::record::FramePayload| {
        report.frames += 1;
        report.ops += payload.records.len() as u64;
    };
    let mode = recovery::ReplayMode {
        recovery: RecoveryMode::Strict,
        modify: false,
        covered_seq,
        read_covered: true,
        node_since_seq: meta.node_since_seq,
    };
    let result = recovery::replay(&io, &wal_dir, &meta.lineage(), keyring, mode, &mut count);
    let segments = recovery::list_segments(&io, &wal_dir).map_or(0, |s| s.len());
    report.files_checked += segments;
    match result {
        Ok(replayed) => report.torn_tail = replayed.report.torn_tail,
        Err(e @ Error::Corruption { .. }) => report.problems.push(e.to_string()),
        Err(e) => return Err(e),
    }
    Ok(report)
}

/// Reads the manifest and every block of every run it names; returns the
/// sequence number the runs cover (where the WAL must continue from), if
/// there is a manifest.
fn check_runs(
    io: &Io,
    dir: &Path,
    keyring: &Keyring,
    report: &mut VerifyReport,
) -> Result<Option<u64>> {
    let required = meta::read_meta(io, dir)
        .ok()
        .flatten()
        .is_some_and(|m| m.all_files_encrypted());
    let manifest = match crate::manifest::read_manifest_checked(io, dir, keyring, required) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return Ok(None),
        Err(e @ Error::Corruption { .. }) => {
            report.files_checked += 1;
            report.problems.push(e.to_string());
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    report.files_checked += 1;
    let cache = crate::run::BlockCache::new(0);
    for entry in &manifest.runs {
        report.files_checked += 1;
        let one = crate::manifest::Manifest {
            runs: vec![*entry],
            ..manifest.clone()
        };
        let checked = crate::engine::open_runs(io, dir, &one, &cache, keyring)
            .and_then(|runs| runs.iter().try_for_each(|r| r.verify().map(drop)));
        match checked {
            Ok(()) => report.runs_ok += 1,
            Err(e @ Error::Corruption { .. }) => report.problems.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if report.runs_ok == manifest.runs.len() {
        check_runs_digest(io, dir, &manifest, keyring, report)?;
    }
    Ok(Some(manifest.covered_seq))
}

/// Recounts the digest of what the runs hold and compares it with the
/// manifest's.
fn check_runs_digest(
    io: &Io,
    dir: &Path,
    manifest: &crate::manifest::Manifest,
    keyring: &Keyring,
    report: &mut VerifyReport,
) -> Result<()> {
    let cache = crate::run::BlockCache::new(0);
    let runs = crate::engine::open_runs(io, dir, manifest, &cache, keyring)?;
    let view = crate::state::StateView::of(
        Default::default(),
        std::sync::Arc::new(crate::state::Lower {
            frozen: Vec::new(),
            runs,
            runs_digest: crate::state::DigestSums::new(),
        }),
    );
    let mut sums = crate::state::DigestSums::new();
    for entry in view.iter_uncached() {
        match entry {
            Ok((key, state)) => sums.add(&key, &state),
            Err(e @ Error::Corruption { .. }) => {
                report.problems.push(e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    if sums != manifest.digest {
        report.problems.push(format!(
            "{}: the digest it keeps ({} keys) differs from the runs' ({} keys)",
            crate::manifest::manifest_path(dir).display(),
            manifest.digest.keys(),
            sums.keys()
        ));
    }
    Ok(())
}

/// Reads every snapshot back in full; returns the newest valid one's covered
/// sequence number (where the WAL must continue from).
fn check_snapshots(
    io: &Io,
    dir: &Path,
    keyring: &Keyring,
    report: &mut VerifyReport,
) -> Result<Option<u64>> {
    let mut newest_valid = None;
    for (seq, path) in snapshot::list_snapshots(io, &dir.join(snapshot::SNAPSHOT_DIR))? {
        report.files_checked += 1;
        match snapshot::read_snapshot(io, &path, keyring) {
            Ok(loaded) => {
                report.snapshots_ok += 1;
                newest_valid = newest_valid.or(Some(seq));
                drop(loaded);
            }
            Err(e @ Error::Corruption { .. }) => report.problems.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(newest_valid)
}
