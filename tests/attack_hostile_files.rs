//! Attack 5: hostile files. A MANIFEST rewritten with a valid checksum
//! (runs in a weird order, duplicated ids, huge counts, wrong entry counts),
//! run files swapped between ids, a run from another database dropped in,
//! truncated runs and manifests: an open (writable and read-only) must
//! return a typed error naming the file, or read correctly; never panic,
//! never a wrong value.

mod common;

use std::path::{Path, PathBuf};

use mergekv::{Batch, Db, Error, Options, RecoveryMode, ScanOptions, SyncMode, Value};

/// Byte offsets in a manifest (docs/FORMAT.md).
const HEADER: usize = 8 + 2 + 2 + 8 + 8 + 8 + 20 + 8 + 8;
const RUN_ENTRY: usize = 36;

struct Manifest {
    head: Vec<u8>,
    runs: Vec<[u8; RUN_ENTRY]>,
    tail: Vec<u8>,
}

impl Manifest {
    fn read(dir: &Path) -> Manifest {
        let bytes = std::fs::read(dir.join("MANIFEST")).unwrap();
        let body = &bytes[..bytes.len() - 4];
        let count = u32::from_le_bytes(body[HEADER..HEADER + 4].try_into().unwrap()) as usize;
        let runs = (0..count)
            .map(|i| {
                let at = HEADER + 4 + i * RUN_ENTRY;
                body[at..at + RUN_ENTRY].try_into().unwrap()
            })
            .collect();
        Manifest {
            head: body[..HEADER].to_vec(),
            runs,
            tail: body[HEADER + 4 + count * RUN_ENTRY..].to_vec(),
        }
    }

    fn write(&self, dir: &Path, count: Option<u32>) {
        let mut out = self.head.clone();
        out.extend((count.unwrap_or(self.runs.len() as u32)).to_le_bytes());
        for r in &self.runs {
            out.extend(r);
        }
        out.extend(&self.tail);
        let crc = crc32c::crc32c(&out);
        out.extend(crc.to_le_bytes());
        std::fs::write(dir.join("MANIFEST"), out).unwrap();
    }

    fn id(entry: &[u8; RUN_ENTRY]) -> u64 {
        u64::from_le_bytes(entry[..8].try_into().unwrap())
    }
}

fn opts() -> Options {
    Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_compaction_wal_bytes_min(u64::MAX)
        .with_compaction_interval_ms(0)
}

/// A database with three runs: the oldest holds k0..k99, the middle one
/// deletes k10..k19 and overwrites k20..k29, the newest adds n0..n9.
fn three_runs(dir: &Path, node_tag: &str) -> std::collections::BTreeMap<String, String> {
    let db = Db::open_with(dir, opts()).unwrap();
    let mut model = std::collections::BTreeMap::new();
    let mut b = Batch::new();
    for i in 0..100 {
        b.put(format!("k{i:02}"), format!("{node_tag}-v{i}"));
        model.insert(format!("k{i:02}"), format!("{node_tag}-v{i}"));
    }
    db.write(b).unwrap();
    db.compact_now().unwrap();
    let mut b = Batch::new();
    for i in 10..20 {
        b.delete(format!("k{i:02}"));
        model.remove(&format!("k{i:02}"));
    }
    for i in 20..30 {
        b.put(format!("k{i:02}"), format!("{node_tag}-w{i}"));
        model.insert(format!("k{i:02}"), format!("{node_tag}-w{i}"));
    }
    db.write(b).unwrap();
    // Flush without merging: a fresh compactor-free path is compact_now,
    // which merges every run; so write the middle run by reopening with a
    // tiny memtable instead.
    drop(db);
    let db = Db::open_with(
        dir,
        opts().with_memtable_bytes_max(1).with_compactor_tick_ms(1),
    )
    .unwrap();
    assert!(common::wait_for(std::time::Duration::from_secs(10), || {
        db.stats().compactor.runs >= 2
    }));
    let mut b = Batch::new();
    for i in 0..10 {
        b.put(format!("n{i}"), format!("{node_tag}-n{i}"));
        model.insert(format!("n{i}"), format!("{node_tag}-n{i}"));
    }
    db.write(b).unwrap();
    assert!(common::wait_for(std::time::Duration::from_secs(10), || {
        db.stats().compactor.runs >= 3 && db.stats().compactor.memtable_bytes == 0
    }));
    db.close().unwrap();
    model
}

fn contents(db: &Db) -> std::collections::BTreeMap<String, String> {
    db.scan(&ScanOptions::all())
        .map(|e| {
            let e = e.unwrap();
            let v = match e.value() {
                Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                Value::Counter(c) => c.to_string(),
            };
            (String::from_utf8_lossy(e.key()).into_owned(), v)
        })
        .collect()
}

/// Opens writable and read-only (each in a panic guard): each must be a
/// Corruption naming `expect_path` (if given) or open to `model`.
fn expect_typed_error_or_model(
    dir: &Path,
    what: &str,
    expect_path: Option<&Path>,
    model: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let ro = std::panic::catch_unwind(|| {
        Db::open_read_only(dir).map(|r| {
            r.scan(&ScanOptions::all())
                .map(|e| e.map(|e| String::from_utf8_lossy(e.key()).into_owned()))
                .collect::<mergekv::Result<Vec<_>>>()
        })
    });
    let rw = std::panic::catch_unwind(|| {
        Db::open_with(dir, opts()).map(|db| {
            let c = db
                .scan(&ScanOptions::all())
                .collect::<mergekv::Result<Vec<_>>>()
                .map(|_| contents(&db));
            let digest_ok =
                db.digest().ok().map(|d| d.root) == db.digest_recomputed().ok().map(|d| d.root);
            (c, digest_ok)
        })
    });
    match ro {
        Err(_) => problems.push(format!("{what}: read-only open panicked")),
        Ok(Err(Error::Corruption { path, .. })) if expect_path.is_none_or(|p| p == path) => {}
        Ok(Err(e)) => problems.push(format!("{what}: read-only open: unexpected error {e:?}")),
        Ok(Ok(Err(e))) => problems.push(format!("{what}: read-only scan error {e:?}")),
        Ok(Ok(Ok(keys))) => {
            if let Some(m) = model {
                if keys != m.keys().cloned().collect::<Vec<_>>() {
                    problems.push(format!(
                        "{what}: read-only open read wrong keys ({} vs {})",
                        keys.len(),
                        m.len()
                    ));
                }
            } else {
                problems.push(format!(
                    "{what}: read-only open succeeded ({} keys); expected an error",
                    keys.len()
                ));
            }
        }
    }
    match rw {
        Err(_) => problems.push(format!("{what}: writable open panicked")),
        Ok(Err(Error::Corruption { path, .. })) if expect_path.is_none_or(|p| p == path) => {}
        Ok(Err(e)) => problems.push(format!("{what}: writable open: unexpected error {e:?}")),
        Ok(Ok((Err(e), _))) => problems.push(format!("{what}: writable scan error {e:?}")),
        Ok(Ok((Ok(got), digest_ok))) => {
            match model {
                Some(m) if *m == got => {}
                Some(m) => problems.push(format!(
                    "{what}: writable open read a wrong state ({} vs {} keys)",
                    got.len(),
                    m.len()
                )),
                None => problems.push(format!(
                    "{what}: writable open succeeded; expected an error"
                )),
            }
            if !digest_ok {
                problems.push(format!("{what}: digest != recount"));
            }
        }
    }
    problems
}

fn fresh() -> (
    tempfile::TempDir,
    std::collections::BTreeMap<String, String>,
    Vec<PathBuf>,
) {
    let dir = tempfile::tempdir().unwrap();
    let model = three_runs(dir.path(), "A");
    let runs = common::runs(dir.path());
    assert_eq!(runs.len(), 3, "three runs");
    (dir, model, runs)
}

#[test]
fn hostile_manifests_and_run_files() {
    let mut problems = Vec::new();
    let manifest_path = |d: &Path| d.join("MANIFEST");

    // Runs named oldest first: reads merge every layer, so the state holds;
    // a compaction (GC on) keeps it.
    {
        let (dir, model, _) = fresh();
        let mut m = Manifest::read(dir.path());
        m.runs.reverse();
        m.write(dir.path(), None);
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "reversed run order",
            None,
            Some(&model),
        ));
        let db = Db::open_with(dir.path(), opts().with_tombstone_grace_ms(0)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        db.compact_now().unwrap();
        if contents(&db) != model {
            problems.push("reversed run order: a compaction changed the state".into());
        }
        if db.digest().unwrap().root != db.digest_recomputed().unwrap().root {
            problems.push("reversed run order: digest != recount after compaction".into());
        }
    }
    // A run named twice (the decoder must refuse it).
    {
        let (dir, model, _) = fresh();
        let mut m = Manifest::read(dir.path());
        let first = m.runs[0];
        m.runs.push(first);
        m.write(dir.path(), None);
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "duplicated run id",
            Some(&manifest_path(dir.path())),
            None,
        ));
        let _ = model;
    }
    // Huge run counts.
    for count in [4096u32, 4097, u32::MAX, 1000] {
        let (dir, _, _) = fresh();
        let m = Manifest::read(dir.path());
        m.write(dir.path(), Some(count));
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            &format!("run count {count}"),
            Some(&manifest_path(dir.path())),
            None,
        ));
    }
    // Wrong entry count / size for a named run.
    {
        let (dir, _, _) = fresh();
        let mut m = Manifest::read(dir.path());
        m.runs[1][16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        m.write(dir.path(), None);
        let id = Manifest::id(&m.runs[1]);
        let run = dir.path().join("runs").join(format!("run-{id:020}.run"));
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "entry count u64::MAX",
            Some(&run),
            None,
        ));
    }
    // Two run files swapped.
    {
        let (dir, _, runs) = fresh();
        let tmp = dir.path().join("swap");
        std::fs::rename(&runs[0], &tmp).unwrap();
        std::fs::rename(&runs[1], &runs[0]).unwrap();
        std::fs::rename(&tmp, &runs[1]).unwrap();
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "swapped runs",
            None,
            None,
        ));
    }
    // A run of another database, under the id of a named one.
    {
        let (dir, _, runs) = fresh();
        let other = tempfile::tempdir().unwrap();
        three_runs(other.path(), "B");
        let theirs = common::runs(other.path());
        for (mine, theirs) in runs.iter().zip(&theirs) {
            std::fs::copy(theirs, mine).unwrap();
        }
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "foreign runs under named ids",
            None,
            None,
        ));
    }
    // A run of another database under an id nobody names: garbage.
    {
        let (dir, model, _) = fresh();
        let other = tempfile::tempdir().unwrap();
        three_runs(other.path(), "B");
        for (i, theirs) in common::runs(other.path()).iter().enumerate() {
            std::fs::copy(
                theirs,
                dir.path()
                    .join("runs")
                    .join(format!("run-{:020}.run", 900 + i)),
            )
            .unwrap();
        }
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "foreign runs under unnamed ids",
            None,
            Some(&model),
        ));
    }
    // Every truncation of the smallest run, and of the manifest.
    {
        let (dir, model, runs) = fresh();
        let smallest = runs
            .iter()
            .min_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap()
            .clone();
        let bytes = std::fs::read(&smallest).unwrap();
        let backup = dir.path().join("backup");
        std::fs::create_dir(&backup).unwrap();
        let copy = common::copy_db(dir.path());
        let _ = copy;
        let step = (bytes.len() / 300).max(1);
        for len in (0..bytes.len()).step_by(step) {
            std::fs::write(&smallest, &bytes[..len]).unwrap();
            problems.extend(expect_typed_error_or_model(
                dir.path(),
                &format!("run truncated to {len} of {}", bytes.len()),
                Some(&smallest),
                None,
            ));
        }
        std::fs::write(&smallest, &bytes).unwrap();
        let mbytes = std::fs::read(dir.path().join("MANIFEST")).unwrap();
        for len in 0..mbytes.len() {
            if len % 97 != 0 && len + 40 < mbytes.len() {
                continue;
            }
            std::fs::write(dir.path().join("MANIFEST"), &mbytes[..len]).unwrap();
            problems.extend(expect_typed_error_or_model(
                dir.path(),
                &format!("manifest truncated to {len}"),
                Some(&manifest_path(dir.path())),
                None,
            ));
        }
        std::fs::write(dir.path().join("MANIFEST"), &mbytes).unwrap();
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "restored",
            None,
            Some(&model),
        ));
        // A repair of a truncated run salvages and names what it lost.
        std::fs::write(&smallest, &bytes[..bytes.len() / 2]).unwrap();
        let repaired = std::panic::catch_unwind(|| {
            Db::open_with(dir.path(), opts().with_recovery_mode(RecoveryMode::Repair))
                .map(|db| (db.notices(), contents(&db)))
        });
        match repaired {
            Err(_) => problems.push("repair of a truncated run panicked".into()),
            Ok(Err(e)) => problems.push(format!("repair of a truncated run failed: {e:?}")),
            Ok(Ok((notices, got))) => {
                // Whatever survived must be a value the model holds.
                for (k, v) in &got {
                    if model.get(k) != Some(v) && !k.starts_with("k1") {
                        problems.push(format!(
                            "repair: {k}={v} is not the model's {:?}",
                            model.get(k)
                        ));
                    }
                }
                println!(
                    "repair notices: {notices:?}; {} of {} keys kept",
                    got.len(),
                    model.len()
                );
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// A checksum-valid manifest whose runs claim `size_bytes = u64::MAX`:
/// recovery sums the sizes for its report (`recover_from_manifest`,
/// `RunsUsed::bytes`) with a plain `sum()`, which overflows: a panic in a
/// build with overflow checks (a wrapped figure otherwise).
#[test]
fn a_manifest_claiming_huge_run_sizes_is_an_error_or_a_correct_read_not_a_panic() {
    let mut problems = Vec::new();
    {
        // size_bytes is not checked against the file? A wrong one must not
        // cost a wrong value.
        let (dir, model, _) = fresh();
        let mut m = Manifest::read(dir.path());
        for r in &mut m.runs {
            r[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        }
        m.write(dir.path(), None);
        problems.extend(expect_typed_error_or_model(
            dir.path(),
            "size_bytes u64::MAX",
            None,
            Some(&model),
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
