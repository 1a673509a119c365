//! Attack 7: the upgrade path. The checked-in directory of the previous
//! format (`tests/fixtures/format-2026-12/`: snapshots, no manifest) is
//! copied onto a simulated disk, opened, written, compacted (its first
//! flush converts it to runs and a manifest and removes the old
//! snapshot), written and compacted again, with power cut at every crash
//! point, including those of the first open and the first flush. Every
//! survivor must open (writable and read-only), read as the fixture plus
//! an allowed prefix of the steps, with digest == recount, and go on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mergekv::io::{Io, SimDisk};
use mergekv::{Batch, Db, FaultInjector, Options, ScanOptions, SyncMode, Value};

const DB_DIR: &str = "/data/db";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2026-12")
}

type State = BTreeMap<String, String>;

fn contents(scan: impl Fn(&str) -> mergekv::Scan) -> State {
    let mut out = BTreeMap::new();
    for keyspace in ["default", "photos"] {
        for entry in scan(keyspace).map(Result::unwrap) {
            let key = String::from_utf8_lossy(entry.key()).into_owned();
            let value = match entry.into_value() {
                Value::Bytes(b) => format!("bytes:{}", String::from_utf8_lossy(&b)),
                Value::Counter(c) => format!("counter:{c}"),
            };
            out.insert(format!("{keyspace}/{key}"), value);
        }
    }
    out
}

fn db_contents(db: &Db) -> State {
    contents(|ks| db.keyspace(ks).unwrap().scan(&ScanOptions::all()))
}

fn expected() -> State {
    std::fs::read_to_string(fixture_dir().join("expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Copies the fixture onto `disk` under `DB_DIR`, durably.
fn install_fixture(disk: &SimDisk) {
    let io = Io::new(Some(FaultInjector::with_disk(disk.clone())));
    fn copy(io: &Io, src: &Path, dst: &Path) {
        io.create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let target = dst.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(io, &entry.path(), &target);
            } else if entry.file_name() != "expected.tsv" {
                let mut f = io.create_new(&target).unwrap();
                f.write_all(&std::fs::read(entry.path()).unwrap()).unwrap();
                f.sync_all().unwrap();
            }
        }
        io.sync_dir(dst).unwrap();
    }
    copy(&io, &fixture_dir(), Path::new(DB_DIR));
}

fn options(disk: &SimDisk) -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Always)
        .with_worker_threads(0)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
        .with_segment_size_bytes_max(4096)
        .with_faults(Some(FaultInjector::with_disk(disk.clone())))
}

#[derive(Debug, Clone)]
enum Step {
    Open,
    Put(&'static str, &'static str),
    PutPhoto(&'static str, &'static str),
    Delete(&'static str),
    Increment(&'static str, i64),
    Compact,
    Reopen,
}

fn apply(state: &mut State, step: &Step) {
    match step {
        Step::Put(k, v) => {
            state.insert(format!("default/{k}"), format!("bytes:{v}"));
        }
        Step::PutPhoto(k, v) => {
            state.insert(format!("photos/{k}"), format!("bytes:{v}"));
        }
        Step::Delete(k) => {
            state.remove(&format!("default/{k}"));
        }
        Step::Increment(k, d) => {
            let key = format!("default/{k}");
            let now = state
                .get(&key)
                .and_then(|v| v.strip_prefix("counter:"))
                .map(|c| c.parse::<i64>().unwrap())
                .unwrap_or(0);
            state.insert(key, format!("counter:{}", now + d));
        }
        Step::Open | Step::Compact | Step::Reopen => {}
    }
}

#[test]
fn an_old_format_directory_survives_power_loss_during_its_first_open_and_flush() {
    let base = expected();
    // Keys of the fixture to touch.
    let some_key = base
        .keys()
        .find(|k| k.starts_with("default/") && base[*k].starts_with("bytes:"))
        .unwrap()
        .trim_start_matches("default/")
        .to_string();
    let some_key: &'static str = Box::leak(some_key.into_boxed_str());
    let counter = base
        .iter()
        .find(|(k, v)| k.starts_with("default/") && v.starts_with("counter:"))
        .map(|(k, _)| {
            &*Box::leak(
                k.trim_start_matches("default/")
                    .to_string()
                    .into_boxed_str(),
            )
        })
        .unwrap_or("visits");
    let steps = vec![
        Step::Open,
        Step::Put("after-upgrade", "1"),
        Step::Compact, // the first flush: snapshot -> run + manifest
        Step::Delete(some_key),
        Step::Increment(counter, 7),
        Step::PutPhoto("new-photo", "p"),
        Step::Compact,
        Step::Reopen,
        Step::Put("last", "2"),
        Step::Compact,
    ];
    let disk = SimDisk::new();
    install_fixture(&disk);
    disk.record_crash_points(true);
    let opts = options(&disk);
    let mut started = Vec::new();
    let mut acked = Vec::new();
    let mut states = vec![base.clone()];
    let mut db: Option<Db> = None;
    for step in &steps {
        started.push(disk.crash_points_taken());
        match step {
            Step::Open => db = Some(Db::open_with(DB_DIR, opts.clone()).unwrap()),
            Step::Reopen => {
                db.take().unwrap().close().unwrap();
                db = Some(Db::open_with(DB_DIR, opts.clone()).unwrap());
            }
            Step::Put(k, v) => drop(db.as_ref().unwrap().put(k, v).unwrap()),
            Step::PutPhoto(k, v) => {
                let mut b = Batch::new();
                b.put_in("photos", k, v);
                drop(db.as_ref().unwrap().write(b).unwrap());
            }
            Step::Delete(k) => drop(db.as_ref().unwrap().delete(k).unwrap()),
            Step::Increment(k, d) => drop(db.as_ref().unwrap().increment(k, *d).unwrap()),
            Step::Compact => {
                let r = db.as_ref().unwrap().compact_now().unwrap();
                println!("{step:?}: {r:?}");
            }
        }
        acked.push(disk.crash_points_taken());
        let mut next = states.last().unwrap().clone();
        apply(&mut next, step);
        states.push(next);
        assert_eq!(
            db_contents(db.as_ref().unwrap()),
            *states.last().unwrap(),
            "live after {step:?}"
        );
    }
    let mut points = disk.take_crash_points();
    points.push(disk.crash_point_now("end"));
    disk.record_crash_points(false);
    drop(db);
    let mut problems = Vec::new();
    let mut opened = 0;
    for point in &points {
        let lo = acked.iter().take_while(|a| **a <= point.index()).count();
        let hi = started.iter().filter(|s| **s <= point.index()).count();
        for cut in point.cuts(7, 2) {
            let survivor = point.survivor(&cut);
            let context = format!(
                "crash point {} ({}), cut {cut}, allowed {lo}..={hi}",
                point.index(),
                point.label()
            );
            // Read-only first: it must not need a writable open's help.
            match Db::open_read_only_with(DB_DIR, options(&survivor)) {
                Ok(r) => {
                    let got = contents(|ks| r.keyspace(ks).unwrap().scan(&ScanOptions::all()));
                    if !(lo..=hi).any(|m| states[m] == got) {
                        problems.push(format!(
                            "{context}: read-only open read a state no prefix has"
                        ));
                    }
                }
                Err(e) => problems.push(format!("{context}: read-only open failed: {e}")),
            }
            let db = match Db::open_with(DB_DIR, options(&survivor)) {
                Ok(db) => db,
                Err(e) => {
                    problems.push(format!("{context}: open failed: {e}"));
                    continue;
                }
            };
            opened += 1;
            let got = db_contents(&db);
            let Some(m) = (lo..=hi).find(|m| states[*m] == got) else {
                let missing: Vec<_> = states[lo]
                    .keys()
                    .filter(|k| !got.contains_key(*k))
                    .collect();
                let extra: Vec<_> = got
                    .keys()
                    .filter(|k| !states[lo].contains_key(*k))
                    .collect();
                problems.push(format!(
                    "{context}: wrong state: missing {missing:?}, extra {extra:?}"
                ));
                continue;
            };
            if db.digest().unwrap().root != db.digest_recomputed().unwrap().root {
                problems.push(format!("{context}: digest != recount"));
            }
            if let Err(e) = db.compact_now() {
                problems.push(format!("{context}: compaction after reopen: {e}"));
                continue;
            }
            db.put("go-on", "1").unwrap();
            drop(db);
            let db = Db::open_with(DB_DIR, options(&survivor)).unwrap();
            let mut want = states[m].clone();
            want.insert("default/go-on".into(), "bytes:1".into());
            if db_contents(&db) != want {
                problems.push(format!(
                    "{context}: after compaction, write and reopen: wrong state"
                ));
            }
        }
    }
    println!("{} crash points, {opened} survivors opened", points.len());
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
