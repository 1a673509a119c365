//! Who this copy is: reading (or, in a repair, rebuilding) `META`, and
//! giving the copy a new node id when it must not write under the old one.
//!
//! A node id must be written under by one live directory only: two copies
//! issuing the same stamps and counter totals lose increments when they
//! merge. So an open renews the id (keeping the old one as a former id,
//! which its files still carry) when the directory is a copy of the one
//! the id was issued in, when a repair dropped writes this copy had made
//! (peers may hold them: new writes would reissue their totals), when META
//! had to be rebuilt, and when asked. The decision is made after recovery
//! has read every file, and META is written before the WAL writes anything
//! under the new id; the new id writes in a segment of its own.

use std::path::Path;

use crate::clock::NodeId;
use crate::crypto::Keyring;
use crate::engine;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::meta::{self, Meta, Renewal};
use crate::options::{Options, RecoveryMode};
use crate::snapshot::{self, SNAPSHOT_DIR};
use crate::wal::WAL_DIR;
use crate::wal::recovery::{self, RecoveryReport};

/// META as read (or rebuilt, or created) before recovery.
pub(super) struct Found {
    pub meta: Meta,
    /// META was rebuilt by this open (a repair): the id it replaced, if
    /// any file named one.
    pub rebuilt_from: Option<NodeId>,
}

/// Reads META. A damaged or missing one (beside existing files) is refused,
/// or in repair mode rebuilt from the node ids in the segment and snapshot
/// headers, the damaged bytes kept in quarantine. A new directory gets a
/// new META.
pub(super) fn find(io: &Io, dir: &Path, options: &Options, keyring: &Keyring) -> Result<Found> {
    let repair = options.recovery_mode == RecoveryMode::Repair;
    let damaged = match meta::read_meta(io, dir) {
        Ok(Some(meta)) => {
            return Ok(Found {
                meta,
                rebuilt_from: None,
            });
        }
        Err(Error::Corruption { path, .. }) if repair => Some(path),
        Err(e) => return Err(e),
        Ok(None) => match (repair, holds_files(io, dir)?) {
            (true, true) => None,
            (false, true) => return Err(orphan_files(dir)),
            (_, false) => {
                let meta =
                    meta::create_meta(io, dir, options.wall_clock.now_ms(), keyring.current_id())?;
                return Ok(Found {
                    meta,
                    rebuilt_from: None,
                });
            }
        },
    };
    let path = meta::meta_path(dir);
    let Some(rebuilt) = engine::rebuild_meta(io, dir, options.wall_clock.now_ms(), keyring)? else {
        return Err(Error::corruption(
            &path,
            0,
            "damaged or missing, and no segment or snapshot names the node id to rebuild it from",
        ));
    };
    // The keys against the rebuilt META, before it is written: a repair
    // with the wrong keys changes nothing either.
    super::keys::check(io, dir, Some(&rebuilt), keyring)?;
    if damaged.is_some() {
        // Kept first, replaced after: a crash between leaves one or the other.
        let bytes = io.read(&path)?;
        io.write_atomic(&engine::quarantine_path(io, dir, "META.damaged")?, &bytes)?;
    }
    meta::write_meta(io, dir, &rebuilt)?;
    Ok(Found {
        rebuilt_from: rebuilt.former.last().copied(),
        meta: rebuilt,
    })
}

/// True if a META-less directory holds WAL segments or snapshots: it is a
/// damaged database, not a new one.
pub(super) fn holds_files(io: &Io, dir: &Path) -> Result<bool> {
    // A missing (or unreadable) WAL directory has no segments to protect;
    // an unreadable one fails loudly a moment later, when replay reads it.
    let segments = recovery::list_segments(io, &dir.join(WAL_DIR)).unwrap_or_default();
    let snapshots = snapshot::list_snapshots(io, &dir.join(SNAPSHOT_DIR)).unwrap_or_default();
    let manifest = io
        .read_if_exists(&crate::manifest::manifest_path(dir))?
        .is_some();
    let runs = io
        .list_dir_if_exists(&dir.join(crate::run::RUN_DIR))?
        .iter()
        .any(|n| crate::run::parse_run_file_name(n).is_some());
    Ok(!segments.is_empty() || !snapshots.is_empty() || manifest || runs)
}

fn orphan_files(dir: &Path) -> Error {
    Error::corruption(
        &meta::meta_path(dir),
        0,
        "META is missing but WAL segments, runs or snapshots exist (a repair rebuilds it)",
    )
}

/// What recovery found that decides the identity: its report, and the
/// sequence number the log continues at.
pub(super) struct Recovery<'a> {
    pub report: &'a RecoveryReport,
    pub next_seq: u64,
}

/// After recovery: the META this open writes under, and the id it
/// replaced and why, if it gave the copy a new one. A version 1 META gets
/// its directory recorded.
pub(super) fn settle(
    io: &Io,
    dir: &Path,
    found: Found,
    recovery: Recovery<'_>,
    options: &Options,
    keyring: &Keyring,
    follower: bool,
) -> Result<(Meta, Option<(NodeId, Renewal)>)> {
    let (report, next_seq) = (recovery.report, recovery.next_seq);
    // A follower's directory is opened read-only, but its node id names it
    // to its leader (two followers under one id take turns being refused
    // and share one retention cursor) and stamps its own `_local` records:
    // a copy of one gets its own id too.
    let read_only = options.read_only && !follower;
    let here = io.object_id(dir)?;
    // A cut hole is as a repair: it may (rarely) have been an acknowledged
    // frame a disk zeroed a page of.
    let lossy_repair = report.repair.is_some()
        || report.torn_tail.as_ref().is_some_and(|t| t.hole.is_some())
        || report
            .salvage
            .as_ref()
            .is_some_and(|s| !s.lost.is_empty() || s.header_damaged);
    let why = meta::renewal_needed(&found.meta, here, options.renew_identity, read_only)
        .or((!read_only && lossy_repair).then_some(Renewal::Repaired));
    let Some(why) = why else {
        if let Some(old) = found.rebuilt_from {
            return Ok((found.meta, Some((old, Renewal::MetaRebuilt))));
        }
        if found.meta.home.is_none() && here.is_some() && !read_only {
            // Version 1: the directory was never recorded; record it now.
            let upgraded = Meta {
                home: here,
                ..found.meta
            };
            meta::write_meta(io, dir, &upgraded)?;
            return Ok((upgraded, None));
        }
        return Ok((found.meta, None));
    };
    let renewed = meta::renewed(&found.meta, here, || {
        engine::node_ids_in_files(io, dir, keyring)
    })?;
    // The new id writes from where the log continues; a segment holding
    // frames from there on under a former id is another copy's.
    let renewed = Meta {
        node_since_seq: next_seq,
        ..renewed
    };
    meta::write_meta(io, dir, &renewed)?;
    Ok((renewed, Some((found.meta.node, why))))
}
