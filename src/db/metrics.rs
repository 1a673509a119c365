//! [`Stats`] as Prometheus text (exposition format 0.0.4), for a scrape
//! endpoint or a textfile collector. Every metric is listed in
//! `docs/ARCHITECTURE.md` ("Metrics"); a change here changes that table.

use std::fmt::{Display, Write};

use super::Stats;

/// A metric family's type line.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Families and their samples, in the text format.
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its HELP and TYPE lines. Every sample of `name`
    /// follows, before the next family.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = write!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn flag(on: bool) -> u8 {
    u8::from(on)
}

/// Milliseconds as seconds, Prometheus' base unit of time.
fn seconds(ms: u64) -> f64 {
    // Exact below 2^53 ms (285,000 years).
    ms as f64 / 1000.0
}

impl Stats {
    /// The content type of [`Stats::to_prometheus`]'s text, for an HTTP
    /// response.
    pub const PROMETHEUS_CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// These figures as Prometheus text exposition format 0.0.4
    /// (`# HELP`, `# TYPE`, then the samples of each family), every
    /// metric named `mergekv_*`, counters ending in `_total`, units in
    /// the names (bytes, seconds). Serve it with
    /// [`Stats::PROMETHEUS_CONTENT_TYPE`]. Counters count from this process's
    /// open of the database (a restart sets them back to 0, which
    /// Prometheus' `rate()` expects); gauges describe the database now.
    /// The metrics are listed in `docs/ARCHITECTURE.md`, "Metrics".
    /// CLI: `mergekv stats --prometheus`.
    pub fn to_prometheus(&self) -> String {
        self.exposition(true)
    }

    /// [`Stats::to_prometheus`] without the counters since open and the
    /// drift figures (this process's, not the database's): for a process
    /// that opened the database only to report on it, whose counters
    /// would all be 0 (`mergekv stats --prometheus`).
    pub fn to_prometheus_state(&self) -> String {
        self.exposition(false)
    }

    fn exposition(&self, with_process_counters: bool) -> String {
        let mut e = Exposition {
            text: String::new(),
        };
        self.state_metrics(&mut e);
        self.wal_metrics(&mut e);
        self.compactor_metrics(&mut e);
        if with_process_counters {
            self.process_counters(&mut e);
        }
        self.replication_metrics(&mut e);
        e.text
    }

    fn state_metrics(&self, e: &mut Exposition) {
        e.family(
            "mergekv_info",
            Kind::Gauge,
            "Always 1; the labels name this copy.",
        );
        e.sample("mergekv_info", &[("node_id", &self.node_id)], 1);
        e.single(
            "mergekv_keys",
            Kind::Gauge,
            "Keys that read as a value or a counter, in all keyspaces.",
            self.keys,
        );
        e.family(
            "mergekv_keyspace_keys",
            Kind::Gauge,
            "Keys that read as a value or a counter, by keyspace.",
        );
        for (keyspace, keys) in &self.keys_by_keyspace {
            e.sample("mergekv_keyspace_keys", &[("keyspace", keyspace)], keys);
        }
        e.single(
            "mergekv_counter_keys",
            Kind::Gauge,
            "Keys that read as a counter.",
            self.counters,
        );
        e.single(
            "mergekv_tombstones",
            Kind::Gauge,
            "Deleted keys whose tombstones are kept.",
            self.tombstones,
        );
        e.single(
            "mergekv_key_count_incomplete",
            Kind::Gauge,
            "1 if a run could not be read while counting keys (the counts are short).",
            flag(self.read_error.is_some()),
        );
        e.single(
            "mergekv_poisoned",
            Kind::Gauge,
            "1 if the database refuses writes after a failure (reopen it).",
            flag(self.poisoned.is_some()),
        );
        e.single(
            "mergekv_notices",
            Kind::Gauge,
            "Things this open did that its user should know (Db::notices).",
            self.notices.len(),
        );
    }

    fn wal_metrics(&self, e: &mut Exposition) {
        let w = &self.wal;
        e.single(
            "mergekv_wal_last_seq",
            Kind::Gauge,
            "Highest WAL sequence number assigned.",
            w.last_seq,
        );
        e.single(
            "mergekv_wal_synced_seq",
            Kind::Gauge,
            "Highest WAL sequence number known to be fsynced.",
            w.synced_seq,
        );
        e.single(
            "mergekv_wal_segments",
            Kind::Gauge,
            "WAL segment files.",
            w.segments,
        );
        e.single(
            "mergekv_wal_size_bytes",
            Kind::Gauge,
            "Bytes of the WAL segment files.",
            w.wal_bytes,
        );
        e.single(
            "mergekv_wal_uncovered_bytes",
            Kind::Gauge,
            "Bytes of WAL segments holding changes the runs do not cover yet.",
            self.compactor.wal_bytes_since_snapshot,
        );
        e.single(
            "mergekv_wal_dedup_entries",
            Kind::Gauge,
            "Idempotency keys remembered.",
            w.dedup_entries,
        );
    }

    fn compactor_metrics(&self, e: &mut Exposition) {
        let c = &self.compactor;
        e.single("mergekv_runs", Kind::Gauge, "Live sorted runs.", c.runs);
        e.single(
            "mergekv_runs_size_bytes",
            Kind::Gauge,
            "Bytes of the live runs.",
            c.snapshot_bytes,
        );
        if let Some(seq) = c.snapshot_seq {
            e.single(
                "mergekv_runs_covered_seq",
                Kind::Gauge,
                "WAL sequence number the runs cover (absent before the first flush).",
                seq,
            );
        }
        e.family(
            "mergekv_memtable_bytes",
            Kind::Gauge,
            "Estimated bytes of the memtables: the active one, and frozen ones not yet written out.",
        );
        e.sample(
            "mergekv_memtable_bytes",
            &[("memtable", "active")],
            c.memtable_bytes,
        );
        e.sample(
            "mergekv_memtable_bytes",
            &[("memtable", "frozen")],
            c.frozen_bytes,
        );
        e.single(
            "mergekv_block_cache_bytes",
            Kind::Gauge,
            "Bytes of run blocks in the block cache.",
            c.cache_bytes,
        );
        e.single(
            "mergekv_compaction_failing",
            Kind::Gauge,
            "1 if the last background compaction (or key rotation rewrite) failed.",
            flag(c.last_error.is_some()),
        );
        e.single(
            "mergekv_cursors",
            Kind::Gauge,
            "Registered cursors (readers holding back WAL truncation and tombstone GC).",
            self.cursors.len(),
        );
        e.family(
            "mergekv_cursor_seq",
            Kind::Gauge,
            "The WAL sequence number each registered cursor has reached.",
        );
        for (name, cursor) in &self.cursors {
            e.sample("mergekv_cursor_seq", &[("cursor", name)], cursor.seq);
        }
        e.family(
            "mergekv_cursor_needs_resync",
            Kind::Gauge,
            "1 for a cursor that fell past the WAL retention limit and must resync.",
        );
        for (name, cursor) in &self.cursors {
            e.sample(
                "mergekv_cursor_needs_resync",
                &[("cursor", name)],
                flag(cursor.needs_resync),
            );
        }
    }

    /// Counters since this process opened the database.
    fn process_counters(&self, e: &mut Exposition) {
        let (w, c, d) = (&self.wal, &self.compactor, &self.drift);
        e.single(
            "mergekv_wal_frames_written_total",
            Kind::Counter,
            "WAL frames (batches) written since open.",
            w.frames_written,
        );
        e.single(
            "mergekv_wal_group_commits_total",
            Kind::Counter,
            "WAL group commits (writes to the segment) since open.",
            w.groups_written,
        );
        e.single(
            "mergekv_wal_syncs_total",
            Kind::Counter,
            "fdatasync calls on WAL segments since open.",
            w.syncs,
        );
        e.single(
            "mergekv_wal_written_bytes_total",
            Kind::Counter,
            "Bytes written to WAL segments since open.",
            w.bytes_written,
        );
        e.single(
            "mergekv_run_written_bytes_total",
            Kind::Counter,
            "Bytes written to runs by flushes and merges since open.",
            c.run_bytes_written,
        );
        e.single(
            "mergekv_compactions_total",
            Kind::Counter,
            "Compactions finished since open.",
            c.compactions,
        );
        e.family(
            "mergekv_block_cache_requests_total",
            Kind::Counter,
            "Block cache lookups since open, by result (a miss reads the block from its file).",
        );
        e.sample(
            "mergekv_block_cache_requests_total",
            &[("result", "hit")],
            c.cache_hits,
        );
        e.sample(
            "mergekv_block_cache_requests_total",
            &[("result", "miss")],
            c.cache_misses,
        );
        e.single(
            "mergekv_clock_drift_max_ahead_seconds",
            Kind::Gauge,
            "Largest amount a received stamp was ahead of local time, since open.",
            seconds(d.max_ahead_ms),
        );
        e.family(
            "mergekv_clock_drift_stamps_total",
            Kind::Counter,
            "Received stamps beyond the drift bound since open, by what was done with them.",
        );
        e.sample(
            "mergekv_clock_drift_stamps_total",
            &[("outcome", "rejected")],
            d.rejected,
        );
        e.sample(
            "mergekv_clock_drift_stamps_total",
            &[("outcome", "accepted")],
            d.accepted_beyond_bound,
        );
    }

    fn replication_metrics(&self, e: &mut Exposition) {
        e.single(
            "mergekv_follower",
            Kind::Gauge,
            "1 if this copy is a replication follower.",
            flag(self.follower_of.is_some()),
        );
        if let Some(p) = &self.follower_position {
            e.single(
                "mergekv_follower_seq",
                Kind::Gauge,
                "The leader's WAL sequence number this follower has applied through.",
                p.seq,
            );
            e.single(
                "mergekv_follower_lag_seqs",
                Kind::Gauge,
                "Leader sequence numbers this follower lacked when its position was stored.",
                p.lag_seqs(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn milliseconds_become_seconds() {
        assert_eq!(seconds(1500).to_string(), "1.5");
        assert_eq!(seconds(0).to_string(), "0");
    }
}
