//! Observability: the `tracing` events open, recovery, compaction (and its
//! failures in the background), bucket rounds and replication emit, with
//! their fields; and `Stats::to_prometheus` as valid exposition text.
//!
//! Background work (compaction, replication) runs on the database's own
//! threads, so the recorder is the global subscriber of this test binary,
//! and each test picks its own events by the `path` field of the span
//! they happened in (every background thread's span names its database).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::message::ErrorCode;
use mergekv::replication::server::{ReplicationAuth, ReplicationOptions, ReplicationServer};
use mergekv::{Db, FaultInjector, IoOp, Options, SyncMode};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Long enough for a loaded 2-core machine; waits end as soon as the
/// event is there.
const DEADLINE: Duration = Duration::from_secs(60);

/// One event as recorded: its level, message and fields, and the fields
/// of every span it happened in (innermost last; a field of an inner span
/// replaces an outer one's).
#[derive(Clone, Debug)]
struct Recorded {
    level: Level,
    fields: BTreeMap<String, String>,
    spans: Vec<&'static str>,
    span_fields: BTreeMap<String, String>,
}

impl Recorded {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }

    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .unwrap_or_else(|| panic!("no field {name} in {self:?}"))
    }

    fn num(&self, name: &str) -> u64 {
        self.field(name)
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number in {self:?}"))
    }
}

struct SpanData {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

/// A subscriber that keeps every span and event in memory.
#[derive(Default)]
struct Recorder {
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, SpanData>>,
    events: Mutex<Vec<Recorded>>,
    added: Condvar,
}

thread_local! {
    /// The spans this thread is in, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

fn current_span() -> Option<u64> {
    ENTERED.with(|e| e.borrow().last().copied())
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = if attrs.is_root() {
            None
        } else {
            attrs.parent().map(Id::into_u64).or_else(current_span)
        };
        self.spans.lock().unwrap().insert(
            id,
            SpanData {
                name: attrs.metadata().name(),
                fields,
                parent,
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(data) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut data.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut chain = Vec::new();
        let mut next = if event.is_root() {
            None
        } else {
            event.parent().map(Id::into_u64).or_else(current_span)
        };
        let spans = self.spans.lock().unwrap();
        while let Some(id) = next {
            let Some(data) = spans.get(&id) else { break };
            chain.push(data);
            next = data.parent;
        }
        let mut span_fields = BTreeMap::new();
        let mut names = Vec::new();
        for data in chain.iter().rev() {
            names.push(data.name);
            span_fields.extend(data.fields.clone());
        }
        drop(spans);
        self.events.lock().unwrap().push(Recorded {
            level: *event.metadata().level(),
            fields,
            spans: names,
            span_fields,
        });
        self.added.notify_all();
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|e| {
            let mut entered = e.borrow_mut();
            if let Some(at) = entered.iter().rposition(|id| *id == span.into_u64()) {
                entered.remove(at);
            }
        });
    }
}

/// The recorder, installed as this binary's global subscriber on first use.
fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static Recorder = Box::leak(Box::default());
        tracing::subscriber::set_global_default(Shared(recorder))
            .expect("no other global subscriber in this binary");
        recorder
    })
}

/// `Subscriber` for the leaked recorder (the global default takes it by
/// value).
struct Shared(&'static Recorder);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &Attributes<'_>) -> Id {
        self.0.new_span(a)
    }
    fn record(&self, s: &Id, v: &Record<'_>) {
        self.0.record(s, v)
    }
    fn record_follows_from(&self, s: &Id, f: &Id) {
        self.0.record_follows_from(s, f)
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, s: &Id) {
        self.0.enter(s)
    }
    fn exit(&self, s: &Id) {
        self.0.exit(s)
    }
}

/// The events recorded so far in a span whose `path` is `dir`.
fn events_for(dir: &Path) -> Vec<Recorded> {
    let path = dir.display().to_string();
    recorder()
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.span_fields.get("path") == Some(&path))
        .cloned()
        .collect()
}

/// The first event for `dir` with `message`, if any yet.
fn find(dir: &Path, message: &str) -> Option<Recorded> {
    events_for(dir).into_iter().find(|e| e.message() == message)
}

/// Waits (up to the deadline) for an event for `dir` with `message`.
fn wait_for(dir: &Path, message: &str) -> Recorded {
    let r = recorder();
    let until = Instant::now() + DEADLINE;
    let mut events = r.events.lock().unwrap();
    loop {
        drop(events);
        if let Some(found) = find(dir, message) {
            return found;
        }
        events = r.events.lock().unwrap();
        let left = until.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {message:?} event for {}; got {:#?}",
            dir.display(),
            events_for_locked(&events, dir)
        );
        events = r.added.wait_timeout(events, left).unwrap().0;
    }
}

fn events_for_locked(events: &[Recorded], dir: &Path) -> Vec<String> {
    let path = dir.display().to_string();
    events
        .iter()
        .filter(|e| e.span_fields.get("path") == Some(&path))
        .map(|e| format!("{} {}", e.level, e.message()))
        .collect()
}

fn quiet_options() -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_compaction_interval_ms(0)
        .with_compaction_wal_bytes_min(u64::MAX)
}

#[test]
fn opening_says_what_recovery_found() {
    recorder();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = Db::open_with(dir, quiet_options()).unwrap();
    for i in 0..25 {
        db.put(format!("k{i}"), "v").unwrap();
    }
    db.close().unwrap();
    let first = find(dir, "database opened").expect("the first open said so");
    assert_eq!(first.field("recovery"), "clean");
    assert_eq!(first.num("frames_replayed"), 0);

    recorder().events.lock().unwrap().clear_for(dir);
    let db = Db::open_with(dir, quiet_options()).unwrap();
    let opened = find(dir, "database opened").expect("an open says what it found");
    assert_eq!(opened.level, Level::INFO);
    assert_eq!(opened.spans, ["mergekv.open"]);
    assert_eq!(opened.span_fields["read_only"], "false");
    assert_eq!(opened.field("recovery"), "clean");
    assert_eq!(opened.num("frames_replayed"), 25);
    assert_eq!(opened.num("ops_replayed"), 25);
    assert!(opened.num("wal_segments_replayed") >= 1, "{opened:?}");
    assert_eq!(opened.num("runs"), 0);
    assert_eq!(opened.field("node"), db.node_id().to_string());
    opened.num("elapsed_ms");
    drop(db);

    // A torn tail: bytes after the last frame that are no frame.
    let wal = dir.join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0xAB; 13]);
    std::fs::write(last, &bytes).unwrap();
    recorder().events.lock().unwrap().clear_for(dir);
    let db = Db::open_with(dir, quiet_options()).unwrap();
    let cut = find(dir, "WAL torn tail cut").expect("the cut is a warning");
    assert_eq!(cut.level, Level::WARN);
    assert_eq!(cut.num("bytes_dropped"), 13);
    assert_eq!(cut.field("segment"), last.display().to_string());
    let opened = find(dir, "database opened").unwrap();
    assert_eq!(opened.field("recovery"), "torn_tail_cut");
    assert_eq!(opened.num("frames_replayed"), 25);
    drop(db);
}

#[test]
fn a_failed_open_is_an_error_event() {
    recorder();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("absent");
    let result = Db::open_with(&dir, Options::default().with_create_if_missing(false));
    assert!(result.is_err());
    let failed = find(&dir, "open failed").expect("the failure is an event");
    assert_eq!(failed.level, Level::ERROR);
    assert!(!failed.field("error").is_empty());
}

#[test]
fn compact_now_reports_the_flush_and_the_compaction() {
    recorder();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = Db::open_with(dir, quiet_options()).unwrap();
    for i in 0..100 {
        db.put(format!("k{i:03}"), vec![b'v'; 100]).unwrap();
    }
    let report = db.compact_now().unwrap();
    let finished = wait_for(dir, "compaction finished");
    assert_eq!(finished.level, Level::INFO);
    assert_eq!(finished.spans, ["mergekv.compactor"]);
    assert_eq!(finished.field("full"), "true");
    assert_eq!(finished.num("covered_seq"), report.snapshot_seq);
    assert_eq!(finished.num("bytes_written"), report.snapshot_bytes);
    assert_eq!(finished.num("runs_written"), report.runs_written as u64);
    assert_eq!(finished.num("runs"), 1);
    assert_eq!(finished.num("duration_ms"), report.duration_ms);
    let flushed = find(dir, "memtable flushed").expect("the flush is an event");
    assert_eq!(flushed.level, Level::DEBUG);
    assert_eq!(flushed.num("entries"), 100);
    assert!(flushed.num("bytes") > 0);
    assert!(find(dir, "compaction started").is_some());
    assert!(find(dir, "compaction failed").is_none());
}

#[test]
fn a_failing_background_compaction_is_an_error_event() {
    recorder();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let faults = FaultInjector::new();
    let db = Db::open_with(
        dir,
        Options::default()
            .with_sync_mode(SyncMode::Never)
            .with_memtable_bytes_max(8 * 1024)
            .with_compactor_tick_ms(5)
            .with_faults(Some(faults.clone())),
    )
    .unwrap();
    // Every rename fails: no run or manifest can be put in place (the WAL
    // needs none, so writes go on). Not an fsync failure: no poison.
    faults.fail_from_nth(IoOp::Rename, 1);
    // Until a write waits for room the failing flush cannot make (and
    // is told why): the compactor has failed by then.
    for i in 0..10_000 {
        if db.put(format!("k{i:05}"), vec![b'v'; 200]).is_err() {
            break;
        }
    }
    // Nobody asked for this compaction: the memtable filled.
    let failed = wait_for(dir, "compaction failed");
    assert_eq!(failed.level, Level::ERROR);
    assert_eq!(failed.field("full"), "false");
    assert!(
        failed.field("error").contains("rename"),
        "the error names the failed operation: {failed:?}"
    );
    faults.clear();
}

#[cfg(feature = "object-store")]
#[test]
fn a_bucket_round_says_what_it_moved() {
    recorder();
    let bucket = mergekv::bucket::Bucket::in_memory();
    let (a_tmp, b_tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Db::open_with(a_tmp.path(), quiet_options()).unwrap();
    let b = Db::open_with(b_tmp.path(), quiet_options()).unwrap();
    for i in 0..5 {
        a.put(format!("k{i}"), "v").unwrap();
    }
    bucket.sync(&a).unwrap();
    bucket.sync(&b).unwrap();
    let pushed = find(a_tmp.path(), "bucket round finished").expect("a's round");
    assert_eq!(pushed.level, Level::DEBUG);
    assert_eq!(pushed.spans, ["mergekv.bucket_round"]);
    assert!(pushed.num("pushed_objects") >= 1, "{pushed:?}");
    assert_eq!(pushed.num("pushed_changes"), 5);
    let pulled = find(b_tmp.path(), "bucket round finished").expect("b's round");
    assert_eq!(pulled.num("pulled_changes"), 5);
    assert_eq!(pulled.num("applied"), 5);
}

/// Lets every token replicate.
struct AnyToken;

impl ReplicationAuth for AnyToken {
    fn authorize_replication(&self, _token: &str) -> Result<(), ErrorCode> {
        Ok(())
    }
}

#[test]
fn replication_says_who_connected_caught_up_and_left() {
    recorder();
    let leader_tmp = tempfile::tempdir().unwrap();
    // Synced writes: the leader announces what is durable.
    let leader = Db::open_with(
        leader_tmp.path(),
        quiet_options().with_sync_mode(SyncMode::Always),
    )
    .unwrap();
    for i in 0..10 {
        leader.put(format!("k{i}"), "v").unwrap();
    }
    let mut options = ReplicationOptions::new(Arc::new(AnyToken));
    options.heartbeat_interval_ms = 50;
    let server = ReplicationServer::start(&leader, "127.0.0.1:0", options).unwrap();
    let follower_tmp = tempfile::tempdir().unwrap();
    let mut follower_options = FollowerOptions::new(server.local_addr().to_string(), "any token");
    follower_options.db_options.sync_mode = SyncMode::Never;
    follower_options.backoff_initial_ms = 10;
    let follower = Follower::open(follower_tmp.path(), follower_options).unwrap();
    let fdir = follower_tmp.path();
    let connected = wait_for(fdir, "connected to the leader");
    assert_eq!(connected.level, Level::INFO);
    assert_eq!(connected.spans, ["mergekv.follower"]);
    let caught_up = wait_for(fdir, "caught up with the leader");
    assert_eq!(caught_up.num("seq"), leader.stats().wal.last_seq);
    let seen = wait_for(leader_tmp.path(), "follower connected");
    assert_eq!(seen.num("follower_id"), follower.follower_id());
    assert!(!seen.field("peer").is_empty());
    server.stop();
    let gone = wait_for(leader_tmp.path(), "follower disconnected");
    assert_eq!(gone.num("follower_id"), follower.follower_id());
    gone.field("reason");
    let lost = wait_for(fdir, "disconnected from the leader");
    assert_eq!(lost.level, Level::WARN);
    lost.field("error");
    follower.stop();
}

/// Forgets what was recorded for one directory (so a second open's
/// events are told from the first's).
trait ClearFor {
    fn clear_for(&mut self, dir: &Path);
}

impl ClearFor for Vec<Recorded> {
    fn clear_for(&mut self, dir: &Path) {
        let path = dir.display().to_string();
        self.retain(|e| e.span_fields.get("path") != Some(&path));
    }
}

// --- Prometheus text ---

/// One sample line: its metric name, labels and value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `name{a="x",b="y"} value`, labels with `\\`, `\"`, `\n` escapes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            let (start, c) = chars.next().unwrap_or_else(|| panic!("unclosed {line:?}"));
            if c == '}' {
                end = Some(start + 1);
                break;
            }
            let c = if c == ',' { chars.next().unwrap().1 } else { c };
            let mut label = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                label.push(c);
            }
            assert!(valid_name(&label), "label name {label:?} in {line:?}");
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
            let mut value = String::new();
            loop {
                match chars
                    .next()
                    .unwrap_or_else(|| panic!("unclosed value in {line:?}"))
                {
                    (_, '"') => break,
                    (_, '\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    (_, c) => value.push(c),
                }
            }
            labels.insert(label, value);
            if end.is_some() {
                break;
            }
        }
        rest = &inner[end.unwrap()..];
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("value {value:?} is not a number in {line:?}"));
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Checks the text line by line (HELP and TYPE before each family's
/// samples, each family once, valid names, `_total` exactly on counters,
/// numeric values) and returns the samples.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "an empty line in:\n{text}");
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, doc) = help.split_once(' ').expect("HELP has a text");
            assert!(!doc.trim().is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            let (name, kind) = kind.split_once(' ').expect("TYPE has a kind");
            assert!(valid_name(name) && name.starts_with("mergekv_"), "{name}");
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "_total exactly on counters: {line}"
            );
            assert!(
                families
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "family {name} declared twice"
            );
            current = Some(name.to_string());
        } else {
            assert!(!line.starts_with('#'), "unknown comment {line:?}");
            let sample = parse_sample(line);
            assert!(valid_name(&sample.name), "{line}");
            assert_eq!(
                current.as_deref(),
                Some(sample.name.as_str()),
                "a sample outside its family (no TYPE just before): {line}"
            );
            samples.push(sample);
        }
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn prometheus_text_parses_and_follows_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open_with(tmp.path(), quiet_options()).unwrap();
    let before = parse_exposition(&db.stats().to_prometheus());
    assert_eq!(value(&before, "mergekv_keys", &[]), Some(0.0));
    assert_eq!(
        value(&before, "mergekv_keyspace_keys", &[("keyspace", "default")]),
        None
    );
    let frames_before = value(&before, "mergekv_wal_frames_written_total", &[]).unwrap();
    assert_eq!(
        value(
            &before,
            "mergekv_info",
            &[("node_id", &db.node_id().to_string())]
        ),
        Some(1.0)
    );

    for i in 0..7 {
        db.put(format!("k{i}"), "v").unwrap();
    }
    db.keyspace("users").unwrap().put("ada", "x").unwrap();
    db.increment("hits", 3).unwrap();
    db.set_cursor("peer \"quoted\"\\", 2).unwrap();
    let text = db.stats().to_prometheus();
    let after = parse_exposition(&text);
    assert_eq!(value(&after, "mergekv_keys", &[]), Some(9.0), "{text}");
    assert_eq!(
        value(&after, "mergekv_keyspace_keys", &[("keyspace", "default")]),
        Some(8.0)
    );
    assert_eq!(
        value(&after, "mergekv_keyspace_keys", &[("keyspace", "users")]),
        Some(1.0)
    );
    assert_eq!(value(&after, "mergekv_counter_keys", &[]), Some(1.0));
    assert_eq!(value(&after, "mergekv_wal_last_seq", &[]), Some(9.0));
    assert_eq!(
        value(&after, "mergekv_wal_frames_written_total", &[]),
        Some(frames_before + 9.0)
    );
    assert_eq!(
        value(
            &after,
            "mergekv_cursor_seq",
            &[("cursor", "peer \"quoted\"\\")]
        ),
        Some(2.0),
        "label values are escaped and read back"
    );
    assert_eq!(value(&after, "mergekv_poisoned", &[]), Some(0.0));

    db.compact_now().unwrap();
    let compacted = parse_exposition(&db.stats().to_prometheus());
    assert_eq!(value(&compacted, "mergekv_runs", &[]), Some(1.0));
    assert!(value(&compacted, "mergekv_runs_size_bytes", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&compacted, "mergekv_compactions_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&compacted, "mergekv_runs_covered_seq", &[]),
        Some(9.0)
    );

    // The state-only text has no counters, and is valid on its own.
    let state = parse_exposition(&db.stats().to_prometheus_state());
    assert!(state.iter().all(|s| !s.name.ends_with("_total")));
    assert_eq!(value(&state, "mergekv_keys", &[]), Some(9.0));
}
