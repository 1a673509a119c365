//! Writing results: text lines or one JSON object, on a buffered stdout.

use std::fmt::Display;
use std::io::{BufWriter, StdoutLock, Write};

use mergekv::{FollowerPosition, Outcome, OutcomeKind, RepairReport, Stats, VerifyReport};

use serde::Serialize;

use crate::bytes::{KeyJson, ValueJson};
use crate::error::CliError;

/// Buffered stdout, in text or JSON mode. Flush before exiting.
pub struct Out {
    /// True with `--json`.
    pub json: bool,
    w: BufWriter<StdoutLock<'static>>,
}

impl Out {
    /// Stdout, in JSON mode if `json`.
    pub fn new(json: bool) -> Self {
        Out {
            json,
            w: BufWriter::new(std::io::stdout().lock()),
        }
    }

    /// Writes one line of text.
    pub fn line(&mut self, text: impl Display) -> Result<(), CliError> {
        writeln!(self.w, "{text}").map_err(CliError::stdout)
    }

    /// Writes `bytes` exactly, with nothing added.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.w.write_all(bytes).map_err(CliError::stdout)
    }

    /// Writes `value` as one line of JSON.
    pub fn json(&mut self, value: &impl Serialize) -> Result<(), CliError> {
        serde_json::to_writer(&mut self.w, value).map_err(|e| CliError::stdout(e.into()))?;
        self.line("")
    }

    /// Pushes what is buffered to stdout.
    pub fn flush(&mut self) -> Result<(), CliError> {
        self.w.flush().map_err(CliError::stdout)
    }
}

/// Lossy UTF-8 text of some bytes (for the demo's own keys and values,
/// which are text).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON name of an outcome kind.
pub fn outcome_name(kind: OutcomeKind) -> &'static str {
    match kind {
        OutcomeKind::Applied => "applied",
        OutcomeKind::Removed => "removed",
        OutcomeKind::IgnoredStale => "ignored_stale",
        OutcomeKind::Duplicate => "duplicate",
    }
}

/// `{"outcome":..,"seq":..,"stamp":..}`, plus `"counter"` for an increment.
#[derive(Serialize)]
pub struct OutcomeJson {
    outcome: &'static str,
    seq: u64,
    stamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    counter: Option<i64>,
}

impl From<&Outcome> for OutcomeJson {
    fn from(o: &Outcome) -> Self {
        OutcomeJson {
            outcome: outcome_name(o.kind),
            seq: o.seq,
            stamp: o.stamp.to_string(),
            counter: o.counter,
        }
    }
}

/// `get`'s object.
#[derive(Serialize)]
pub struct GetJson<'a> {
    /// The keyspace.
    pub keyspace: &'a str,
    /// The key: `"key"` or `"key_hex"`.
    #[serde(flatten)]
    pub key: KeyJson,
    /// False if the key is absent (and the exit code is 1).
    pub found: bool,
    /// The value, if found.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub value: Option<ValueJson>,
}

/// One entry of `scan`.
#[derive(Serialize)]
pub struct EntryJson {
    /// The key: `"key"` or `"key_hex"`.
    #[serde(flatten)]
    pub key: KeyJson,
    /// Its value.
    #[serde(flatten)]
    pub value: ValueJson,
}

/// `scan`'s object.
#[derive(Serialize)]
pub struct ScanJson<'a> {
    /// The keyspace.
    pub keyspace: &'a str,
    /// Entries returned.
    pub count: usize,
    /// The entries, in scan order.
    pub entries: Vec<EntryJson>,
}

/// `verify`'s object: the report, `"ok"`, and with `--repair` what repair
/// dropped (`null` if nothing needed repair).
#[derive(Serialize)]
pub struct VerifyJson<'a> {
    /// True if every file checks out.
    pub ok: bool,
    /// The report.
    #[serde(flatten)]
    pub report: &'a VerifyReport,
    /// With `--repair` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<Option<RepairReport>>,
}

/// The fields of [`Stats`] (as JSON: section, name) that describe the
/// process that opened the database, not the database: its options and
/// its counters since open. `stats` opens the database afresh, so they
/// would say only "0" and the CLI's own defaults; it leaves them out.
const PROCESS_FIELDS: &[(Option<&str>, &str)] = &[
    (None, "sync_mode"),
    (None, "worker_threads"),
    (None, "drift"),
    (Some("wal"), "frames_written"),
    (Some("wal"), "groups_written"),
    (Some("wal"), "syncs"),
    (Some("wal"), "bytes_written"),
    (Some("compactor"), "run_bytes_written"),
    (Some("compactor"), "cache_hits"),
    (Some("compactor"), "cache_misses"),
    (Some("compactor"), "cache_bytes"),
    (Some("compactor"), "compactions"),
    (Some("compactor"), "last_error"),
];

/// `stats --json`: the figures about the database, without
/// [`PROCESS_FIELDS`].
pub fn stats_state_json(s: &Stats) -> Result<serde_json::Value, CliError> {
    let mut value = serde_json::to_value(s).map_err(|e| CliError::stdout(e.into()))?;
    for (section, name) in PROCESS_FIELDS {
        let object = match section {
            None => Some(&mut value),
            Some(section) => value.get_mut(*section),
        };
        if let Some(serde_json::Value::Object(map)) = object {
            map.remove(*name);
        }
    }
    Ok(value)
}

/// `name: value` lines for `stats`: the database's state (not the
/// [`PROCESS_FIELDS`]).
pub fn stats_lines(s: &Stats) -> Vec<(&'static str, String)> {
    let w = &s.wal;
    vec![
        ("dir", s.dir.display().to_string()),
        ("node_id", s.node_id.clone()),
        ("keys", s.keys.to_string()),
        ("counters", s.counters.to_string()),
        ("tombstones", s.tombstones.to_string()),
        ("keyspaces", s.keys_by_keyspace.len().to_string()),
        ("segments", w.segments.to_string()),
        ("wal_bytes", w.wal_bytes.to_string()),
        ("last_seq", w.last_seq.to_string()),
        ("written_seq", w.written_seq.to_string()),
        ("synced_seq", w.synced_seq.to_string()),
        ("hlc", s.hlc.clone()),
        ("dedup_entries", w.dedup_entries.to_string()),
        (
            "snapshot_seq",
            s.compactor
                .snapshot_seq
                .map_or_else(|| "none".into(), |q| q.to_string()),
        ),
        ("snapshot_bytes", s.compactor.snapshot_bytes.to_string()),
        ("runs", s.compactor.runs.to_string()),
        ("memtable_bytes", s.compactor.memtable_bytes.to_string()),
        (
            "wal_bytes_since_snapshot",
            s.compactor.wal_bytes_since_snapshot.to_string(),
        ),
        ("cursors", s.cursors.len().to_string()),
        (
            "poisoned",
            s.poisoned.clone().unwrap_or_else(|| "no".into()),
        ),
        (
            "follower_of",
            s.follower_of.clone().unwrap_or_else(|| "none".into()),
        ),
    ]
    .into_iter()
    .chain(s.follower_position.iter().flat_map(follower_lines))
    .collect()
}

/// `keys[KEYSPACE]: N` lines for `stats`, one per keyspace with keys.
pub fn keyspace_lines(s: &Stats) -> Vec<(String, String)> {
    s.keys_by_keyspace
        .iter()
        .map(|(keyspace, keys)| (format!("keys[{keyspace}]"), keys.to_string()))
        .collect()
}

/// `name: value` lines for a follower's stored position.
pub fn follower_lines(p: &FollowerPosition) -> Vec<(&'static str, String)> {
    vec![
        (
            "follower_cursor",
            format!(
                "stream {:016x} epoch {:016x} seq {}",
                p.stream, p.epoch, p.seq
            ),
        ),
        ("follower_leader_seq", p.leader_seq.to_string()),
        ("follower_lag_seqs", p.lag_seqs().to_string()),
        ("follower_stored_ms", p.stored_ms.to_string()),
    ]
}

/// The text lines of a compaction report.
pub fn compaction_lines(r: &mergekv::CompactionReport) -> Vec<(&'static str, String)> {
    vec![
        ("snapshot_seq", r.snapshot_seq.to_string()),
        ("snapshot", r.snapshot_path.display().to_string()),
        ("snapshot_bytes", r.snapshot_bytes.to_string()),
        ("entries", r.entries.to_string()),
        ("bytes_before", r.bytes_before.to_string()),
        ("bytes_after", r.bytes_after.to_string()),
        ("segments_removed", r.segments_removed.to_string()),
        ("snapshots_removed", r.snapshots_removed.to_string()),
        ("tombstones_dropped", r.tombstones_dropped.to_string()),
        ("duration_ms", r.duration_ms.to_string()),
    ]
}

/// The text summary of a verify report.
pub fn verify_lines(r: &VerifyReport) -> Vec<String> {
    let mut lines = vec![format!(
        "checked {}: {} files, {} frames, {} ops",
        r.dir.display(),
        r.files_checked,
        r.frames,
        r.ops
    )];
    if r.snapshots_ok > 0 {
        lines.push(format!("snapshots: {} read back whole", r.snapshots_ok));
    }
    if let Some(t) = &r.torn_tail {
        lines.push(format!(
            "torn tail: {} at byte {} ({} bytes of an unacknowledged write; cut on next open)",
            t.segment.display(),
            t.offset_bytes,
            t.bytes_dropped
        ));
    }
    lines.extend(r.problems.iter().map(|p| format!("problem: {p}")));
    lines.push(match r.problems.len() {
        0 => "result: ok".to_string(),
        n => format!("result: {n} problem(s)"),
    });
    lines
}

/// The text account of what a repair dropped.
pub fn repair_lines(r: &RepairReport) -> Vec<String> {
    let later = if r.segments_dropped.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = r
            .segments_dropped
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(", later segments dropped: {}", names.join(", "))
    };
    vec![
        format!(
            "repair: {} damaged at byte {}: {}",
            r.segment.display(),
            r.offset_bytes,
            r.reason
        ),
        format!(
            "repair: dropped {} bytes ({} checksum-valid frames after the damage){later}",
            r.bytes_dropped, r.valid_frames_dropped
        ),
        format!("repair: dropped bytes saved in {}", r.quarantine.display()),
    ]
}
