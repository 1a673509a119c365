//! `demo`: the story so far, in numbered steps, each checked.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mergekv::auth::{AuthService, MasterKey, Scope, Scopes};
use mergekv::replication::client::FollowerOptions;
use mergekv::replication::server::ReplicationOptions;
use mergekv::replication::{Follower, ReplicationServer};
use mergekv::{
    Batch, Db, EncryptionKey, Error, KeyError, KeySource, Options, OutcomeKind, ScanOptions, Value,
};
use serde::Serialize;

use crate::args::LOAD_BATCH_OPS_DEFAULT;
use crate::encryption::write_key_file;
use crate::error::{CliError, EXIT_USAGE};
use crate::load::Loader;
use crate::output::{Out, text};
use crate::progress::{Progress, per_second};

/// Steps, counting the summary.
const STEPS: usize = 15;
/// Writes streamed to the follower in step 12.
const STREAMED_WRITES: usize = 200;
/// Longest the demo waits for the follower.
const FOLLOWER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Concurrent incrementing threads in step 3.
const THREADS: usize = 8;
/// Increments per thread in step 3.
const INCREMENTS_PER_THREAD: usize = 250;
/// Keys written in step 4.
const LOAD_KEYS: usize = 100_000;
/// Bytes of garbage appended to the WAL in step 7.
const GARBAGE_BYTES: usize = 100;
/// The keyspaces the demo writes; snapshots cover them all.
const KEYSPACES: [&str; 5] = ["users", "orders", "metrics", "bulk", "shop"];

/// Everything the demo can see: (keyspace, key, value), in order.
type Snapshot = Vec<(&'static str, Vec<u8>, Value)>;

/// A step's function: returns its one-line result.
type StepFn<'o> = fn(&mut Demo<'o>) -> Result<String, CliError>;

#[derive(Serialize)]
struct Row {
    step: usize,
    what: &'static str,
    result: String,
    seconds: f64,
}

/// `demo`'s object under `--json`.
#[derive(Serialize)]
struct DemoJson<'a> {
    ok: bool,
    dir: &'a Path,
    kept: bool,
    seconds: f64,
    steps: &'a [Row],
}

struct Demo<'o> {
    dir: PathBuf,
    out: &'o mut Out,
    db: Option<Db>,
    /// The auth service of step 11, for step 12's replication key.
    auth: Option<Arc<AuthService>>,
    rows: Vec<Row>,
}

/// The file the demo leaves in its directory, so that a later run knows
/// the directory's contents are its own to clear.
pub const DEMO_MARKER: &str = "MERGEKV-DEMO";

/// What the marker file says.
const DEMO_MARKER_TEXT: &str =
    "This directory was made by `mergekv demo`; a later demo run clears it.\n";

/// `mergekv demo [--dir DIR]`.
pub fn demo(dir: Option<&Path>, out: &mut Out) -> Result<(), CliError> {
    let keep = dir.is_some();
    let dir = dir.map_or_else(fresh_temp_dir, Path::to_path_buf);
    prepare_dir(&dir)?;
    let started = Instant::now();
    let mut demo = Demo {
        dir: dir.clone(),
        out,
        db: None,
        auth: None,
        rows: Vec::new(),
    };
    if let Err(e) = demo.run() {
        drop(demo.db.take());
        return Err(kept_for_inspection(e, &dir));
    }
    demo.finish(keep, started)
}

/// Makes `dir` ready for a run: created if missing; if it holds a previous
/// run (its marker file), that run's files are removed; any other
/// non-empty directory is refused (exit 2), since the demo's checks count
/// on starting empty and its data must never mix with someone else's.
/// Leaves the marker in it.
fn prepare_dir(dir: &Path) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::data(format_args!("demo: {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    if !entries.is_empty() {
        if !dir.join(DEMO_MARKER).is_file() {
            return Err(CliError::new(
                EXIT_USAGE,
                format_args!(
                    "demo: {} is not empty and not a previous demo's directory (no \
                     {DEMO_MARKER} file); give an empty or new directory",
                    dir.display()
                ),
            ));
        }
        for path in entries {
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io)?;
        }
    }
    std::fs::write(dir.join(DEMO_MARKER), DEMO_MARKER_TEXT).map_err(io)
}

/// `<pid>-<millis>`: unique enough for one run of the demo.
fn run_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}-{millis}", std::process::id())
}

/// `<temp>/mergekv-demo-<pid>-<millis>`.
fn fresh_temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("mergekv-demo-{}", run_id()))
}

fn kept_for_inspection(e: CliError, dir: &Path) -> CliError {
    if e.message.is_empty() {
        return e;
    }
    CliError::new(
        e.code,
        format_args!("demo: {} (directory kept: {})", e.message, dir.display()),
    )
}

/// Fails the demo unless `ok`.
fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), CliError> {
    if ok {
        Ok(())
    } else {
        Err(CliError::data(format_args!("check failed: {}", what())))
    }
}

impl<'o> Demo<'o> {
    fn run(&mut self) -> Result<(), CliError> {
        let steps: [(&'static str, StepFn<'o>); STEPS - 1] = [
            ("open a database", Demo::open_step),
            (
                "put, get, delete and scan in two keyspaces",
                Demo::basics_step,
            ),
            ("increment one counter from 8 threads", Demo::counters_step),
            ("write 100k keys in load-style batches", Demo::load_step),
            ("retry an idempotent batch", Demo::idempotent_step),
            ("close and reopen", Demo::reopen_step),
            (
                "simulate a crash: garbage at the end of the WAL",
                Demo::crash_step,
            ),
            (
                "compact: write the state as sorted runs, drop the WAL they cover, reopen from them",
                Demo::compact_step,
            ),
            (
                "two copies write offline, then merge both ways",
                Demo::merge_step,
            ),
            (
                "three copies write offline, then converge through a file:// bucket",
                Demo::bucket_step,
            ),
            (
                "auth: a user, an API key and a secret, stored in the database",
                Demo::auth_step,
            ),
            (
                "a read-only follower on loopback catches up, then streams",
                Demo::replication_step,
            ),
            (
                "encryption at rest: a database under its own key",
                Demo::encryption_step,
            ),
            ("verify the directory", Demo::verify_step),
        ];
        for (i, (what, f)) in steps.into_iter().enumerate() {
            self.step(i + 1, what, f)?;
        }
        Ok(())
    }

    fn step(&mut self, step: usize, what: &'static str, f: StepFn<'o>) -> Result<(), CliError> {
        self.say(format_args!("[{step}/{STEPS}] {what}"))?;
        let started = Instant::now();
        let result = f(self).map_err(|e| {
            CliError::new(e.code, format_args!("step {step} ({what}): {}", e.message))
        })?;
        let seconds = started.elapsed().as_secs_f64();
        self.say(format_args!("      => {result} [{seconds:.2} s]"))?;
        self.rows.push(Row {
            step,
            what,
            result,
            seconds,
        });
        Ok(())
    }

    /// Narration: stdout in text mode, stderr under `--json`.
    fn say(&mut self, line: impl std::fmt::Display) -> Result<(), CliError> {
        if self.out.json {
            let _ = writeln!(std::io::stderr(), "{line}");
            return Ok(());
        }
        self.out.line(line)?;
        self.out.flush()
    }

    fn db(&self) -> Result<&Db, CliError> {
        self.db
            .as_ref()
            .ok_or_else(|| CliError::data("the demo database is not open"))
    }

    fn reopen(&mut self) -> Result<&Db, CliError> {
        self.close()?;
        Ok(self.db.insert(Db::open(&self.dir)?))
    }

    fn close(&mut self) -> Result<(), CliError> {
        match self.db.take() {
            Some(db) => Ok(db.close()?),
            None => Ok(()),
        }
    }

    fn snapshot(&self) -> Result<Snapshot, CliError> {
        let db = self.db()?;
        let mut all = Vec::new();
        for name in KEYSPACES {
            let ks = db.keyspace(name)?;
            for e in ks.scan(&ScanOptions::all()) {
                let e = e?;
                all.push((name, e.key().to_vec(), e.into_value()));
            }
        }
        Ok(all)
    }

    fn open_step(&mut self) -> Result<String, CliError> {
        let db = self.reopen()?;
        let (node, frames) = (db.node_id(), db.recovery_report().frames_replayed);
        let dir = self.dir.display().to_string();
        self.say(format_args!(
            "      directory {dir} ({frames} frames already there)"
        ))?;
        Ok(format!("node id {node}"))
    }

    fn basics_step(&mut self) -> Result<String, CliError> {
        let db = self.db()?.clone();
        let (users, orders) = (db.keyspace("users")?, db.keyspace("orders")?);
        let puts = [
            (&users, "ada", "Ada Lovelace"),
            (&users, "alan", "Alan Turing"),
            (&users, "grace", "Grace Hopper"),
            (&orders, "ada", "3 analytical engines"),
        ];
        for (ks, key, value) in puts {
            ks.put(key, value)?;
            self.say(format_args!("      put {}/{key} = {value}", ks.name()))?;
        }
        let ada = users.get("ada")?.map(|v| text(&v)).unwrap_or_default();
        self.say(format_args!("      get users/ada -> {ada}"))?;
        ensure(ada == "Ada Lovelace", || format!("users/ada reads {ada:?}"))?;
        users.delete("grace")?;
        self.say("      del users/grace")?;
        ensure(users.get("grace")?.is_none(), || "grace survived".into())?;
        ensure(orders.get("alan")?.is_none(), || "keyspaces leak".into())?;
        let names: Vec<String> = users
            .scan(&ScanOptions::prefix("a"))
            .map(|e| e.map(|e| text(e.key())))
            .collect::<Result<_, _>>()?;
        let names = names.join(", ");
        self.say(format_args!("      scan users --prefix a -> {names}"))?;
        ensure(names == "ada, alan", || format!("prefix scan gave {names}"))?;
        Ok(format!(
            "scan users/a* = [{names}]; grace deleted; orders kept apart"
        ))
    }

    fn counters_step(&mut self) -> Result<String, CliError> {
        let metrics = self.db()?.keyspace("metrics")?;
        let before = metrics.counter("hits")?;
        let started = Instant::now();
        let work =
            || (0..INCREMENTS_PER_THREAD).try_for_each(|_| metrics.increment("hits", 1).map(drop));
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS).map(|_| s.spawn(work)).collect();
            workers.into_iter().try_for_each(|w| match w.join() {
                Ok(result) => Ok(result?),
                Err(_) => Err(CliError::data("an incrementing thread panicked")),
            })
        })?;
        let rate = per_second((THREADS * INCREMENTS_PER_THREAD) as u64, started.elapsed());
        let after = metrics.counter("hits")?;
        let expected = before + (THREADS * INCREMENTS_PER_THREAD) as i64;
        self.say(format_args!(
            "      metrics/hits: {before} -> {after} ({rate:.0} increments/s)"
        ))?;
        ensure(after == expected, || {
            format!("hits is {after}, expected {expected}")
        })?;
        Ok(format!(
            "{THREADS} threads x {INCREMENTS_PER_THREAD} increments: +{} exactly",
            after - before
        ))
    }

    fn load_step(&mut self) -> Result<String, CliError> {
        let db = self.db()?.clone();
        let started = Instant::now();
        let mut progress = Progress::new(Some(LOAD_KEYS as u64));
        let mut loader = Loader::new(&db, "bulk", LOAD_BATCH_OPS_DEFAULT);
        for i in 0..LOAD_KEYS {
            loader.put(
                format!("key-{i:06}").as_bytes(),
                format!("value-{i}").as_bytes(),
            )?;
            progress.update(loader.loaded, i as u64);
        }
        loader.flush()?;
        progress.finish(loader.loaded, LOAD_KEYS as u64);
        let elapsed = started.elapsed();
        let count = db
            .keyspace("bulk")?
            .scan(&ScanOptions::prefix("key-"))
            .count();
        ensure(count == LOAD_KEYS, || format!("bulk holds {count} keys"))?;
        Ok(format!(
            "{} keys in {} batches, {:.2} s ({:.0} keys/s)",
            loader.loaded,
            loader.batches,
            elapsed.as_secs_f64(),
            per_second(loader.loaded, elapsed)
        ))
    }

    fn idempotent_step(&mut self) -> Result<String, CliError> {
        let db = self.db()?.clone();
        let shop = db.keyspace("shop")?;
        let before = shop.counter("orders")?;
        let id = format!("order-{}", run_id());
        let mut batch = Batch::new();
        batch
            .increment_in("shop", "orders", 1)
            .put_in("shop", "last-order", &id)
            .idempotency_key(&id);
        let first = db.write(batch.clone())?;
        let retry = db.write(batch)?;
        let (first, retry) = (first[0], retry[0]);
        self.say(format_args!(
            "      write  {id}: {:?} at seq {}",
            first.kind, first.seq
        ))?;
        self.say(format_args!(
            "      retry  {id}: {:?} (seq {}, the original's)",
            retry.kind, retry.seq
        ))?;
        ensure(first.kind == OutcomeKind::Applied, || {
            format!("first write was {:?}", first.kind)
        })?;
        ensure(
            retry.kind == OutcomeKind::Duplicate && retry.seq == first.seq,
            || format!("retry was {:?}", retry.kind),
        )?;
        let after = shop.counter("orders")?;
        ensure(after == before + 1, || {
            format!("orders went {before} -> {after}")
        })?;
        Ok(format!(
            "retry -> Duplicate; shop/orders counted once ({before} -> {after})"
        ))
    }

    fn reopen_step(&mut self) -> Result<String, CliError> {
        let before = self.snapshot()?;
        let report = self.reopen()?.recovery_report().clone();
        self.say(format_args!(
            "      replayed {} segment(s), {} frames, {} ops",
            report.segments_replayed, report.frames_replayed, report.ops_replayed
        ))?;
        let after = self.snapshot()?;
        ensure(after == before, || {
            "the state changed across a reopen".into()
        })?;
        Ok(format!(
            "{} frames / {} ops replayed; all {} keys and counters intact",
            report.frames_replayed,
            report.ops_replayed,
            after.len()
        ))
    }

    fn crash_step(&mut self) -> Result<String, CliError> {
        let before = self.snapshot()?;
        self.close()?;
        let segment = last_segment(&self.dir)?;
        append_garbage(&segment)?;
        self.say(format_args!(
            "      appended {GARBAGE_BYTES} garbage bytes to {}",
            segment.display()
        ))?;
        let torn = self.reopen()?.recovery_report().torn_tail.clone();
        let torn = torn.ok_or_else(|| CliError::data("check failed: no torn tail was reported"))?;
        self.say(format_args!(
            "      reopen cut {} bytes at byte {}",
            torn.bytes_dropped, torn.offset_bytes
        ))?;
        ensure(torn.bytes_dropped == GARBAGE_BYTES as u64, || {
            format!("{} bytes were cut", torn.bytes_dropped)
        })?;
        let after = self.snapshot()?;
        ensure(after == before, || "acknowledged data was lost".into())?;
        let name = segment
            .file_name()
            .map(|n| text(n.as_encoded_bytes()))
            .unwrap_or_default();
        Ok(format!(
            "torn tail of {} bytes cut from {name}; all {} entries intact",
            torn.bytes_dropped,
            after.len()
        ))
    }

    fn compact_step(&mut self) -> Result<String, CliError> {
        let before = self.snapshot()?;
        let report = self.db()?.compact_now()?;
        self.say(format_args!(
            "      runs cover seq {}: {} run(s) live, {} bytes written in {} ms",
            report.snapshot_seq, report.runs, report.snapshot_bytes, report.duration_ms
        ))?;
        self.say(format_args!(
            "      {} WAL segment(s) removed; {} -> {} bytes on disk",
            report.segments_removed, report.bytes_before, report.bytes_after
        ))?;
        let recovery = self.reopen()?.recovery_report().clone();
        let runs = recovery.runs.clone().unwrap_or_default();
        self.say(format_args!(
            "      reopen opened {} run(s) (read on demand) and replayed {} segment(s), {} ops",
            runs.runs, recovery.segments_replayed, recovery.ops_replayed
        ))?;
        ensure(recovery.runs.is_some(), || {
            "reopen did not start from the runs".into()
        })?;
        let after = self.snapshot()?;
        ensure(after == before, || "compaction changed the state".into())?;
        Ok(format!(
            "runs cover seq {}: {} -> {} bytes; reopen replayed {} ops",
            report.snapshot_seq, report.bytes_before, report.bytes_after, recovery.ops_replayed
        ))
    }

    fn merge_step(&mut self) -> Result<String, CliError> {
        let laptop = Db::open(self.dir.join("copies").join("laptop"))?;
        let phone = Db::open(self.dir.join("copies").join("phone"))?;
        for (name, db, hits) in [("laptop", &laptop, 3), ("phone", &phone, 4)] {
            db.put("title", format!("edited on the {name}"))?;
            db.put(format!("note-from-{name}"), "offline")?;
            for _ in 0..hits {
                db.increment("hits", 1)?;
            }
            self.say(format_args!(
                "      {name}: title = {:?}, hits = {}",
                db.get("title")?.map(|v| text(&v)).unwrap_or_default(),
                db.counter("hits")?
            ))?;
        }
        let (to_phone, _) = laptop.export_for("phone")?;
        let into_phone = phone.import_from("laptop", &to_phone)?;
        let (to_laptop, _) = phone.export_for("laptop")?;
        let into_laptop = laptop.import_from("phone", &to_laptop)?;
        self.say(format_args!(
            "      laptop -> phone: {} bytes, {} applied, {} stale; phone -> laptop: {} bytes, {} applied, {} stale",
            to_phone.len(),
            into_phone.applied,
            into_phone.stale,
            to_laptop.len(),
            into_laptop.applied,
            into_laptop.stale
        ))?;
        let (a, b) = (laptop.digest()?, phone.digest()?);
        self.say(format_args!(
            "      digests: {} / {}",
            &a.root_hex()[..16],
            &b.root_hex()[..16]
        ))?;
        ensure(a.root == b.root, || "the copies did not converge".into())?;
        let hits = laptop.counter("hits")?;
        ensure(hits == 7, || format!("hits = {hits}, expected 3 + 4"))?;
        let title = laptop.get("title")?.map(|v| text(&v)).unwrap_or_default();
        Ok(format!(
            "equal digests; hits = 7 on both; title = {title:?} on both"
        ))
    }

    #[cfg(feature = "object-store")]
    fn bucket_step(&mut self) -> Result<String, CliError> {
        use mergekv::bucket::Bucket;
        // A bucket and copies of this run's own: the demo may run again
        // in the same directory.
        let base = self.dir.join(format!("bucket-{}", run_id()));
        let url = format!("file://{}", base.join("bucket").display());
        let bucket = Bucket::open(&url)?;
        self.say(format_args!("      bucket {url}"))?;
        let names = ["laptop", "phone", "tablet"];
        let mut copies = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let db = Db::open(base.join(name))?;
            db.put("title", format!("edited on the {name}"))?;
            db.put(format!("note-from-{name}"), "written offline")?;
            db.put("draft", "to be deleted")?;
            db.increment("likes", i as i64 + 1)?;
            copies.push(db);
        }
        // The tablet deletes the draft, offline too.
        if let Some(tablet) = copies.get(2) {
            tablet.delete("draft")?;
        }
        let (mut pushed, mut pulled, mut requests) = (0u64, 0u64, 0u64);
        // Rounds until one in which no copy had anything to say.
        for round in 1..=5 {
            let mut quiet = true;
            for (name, db) in names.iter().zip(&copies) {
                let r = bucket.sync(db)?;
                quiet &= !r.head_written;
                pushed += r.pushed.changes;
                pulled += r.pulled.changes;
                requests += r.requests.total();
                self.say(format_args!(
                    "      round {round}, {name}: pushed {} changes in {} objects, pulled {} changes from {} objects",
                    r.pushed.changes, r.pushed.objects, r.pulled.changes, r.pulled.objects
                ))?;
            }
            if quiet {
                break;
            }
        }
        let idle = copies.first().map(|db| bucket.sync(db)).transpose()?;
        if let Some(idle) = &idle {
            self.say(format_args!(
                "      an idle round: {} request(s) ({} list, {} get)",
                idle.requests.total(),
                idle.requests.list,
                idle.requests.get
            ))?;
        }
        let digests: Vec<_> = copies.iter().map(Db::digest).collect::<Result<_, _>>()?;
        ensure(digests.windows(2).all(|w| w[0].root == w[1].root), || {
            "the copies did not converge".into()
        })?;
        for db in &copies {
            let likes = db.counter("likes")?;
            ensure(likes == 6, || {
                format!("likes = {likes}, expected 1 + 2 + 3")
            })?;
            ensure(db.get("draft")?.is_none(), || {
                "the deleted draft came back".into()
            })?;
        }
        let title = copies
            .first()
            .map(|db| db.get("title"))
            .transpose()?
            .flatten()
            .map(|v| text(&v))
            .unwrap_or_default();
        for db in copies {
            db.close()?;
        }
        Ok(format!(
            "equal digests on 3 copies; likes = 6; draft deleted everywhere; title = {title:?}; \
             {pushed} changes pushed, {pulled} pulled, {requests} requests"
        ))
    }

    #[cfg(not(feature = "object-store"))]
    fn bucket_step(&mut self) -> Result<String, CliError> {
        Ok("skipped: this mergekv was built without the object-store feature".into())
    }

    fn auth_step(&mut self) -> Result<String, CliError> {
        const PASSWORD: &str = "correct horse battery staple";
        let db = self.db()?.clone();
        // A real deployment keeps this key outside the database directory.
        let auth = Arc::new(AuthService::open(&db, MasterKey::generate()?)?);
        let started = Instant::now();
        auth.create_user("ada", PASSWORD)?;
        let hash_ms = started.elapsed().as_secs_f64() * 1e3;
        auth.verify_password("ada", PASSWORD)?;
        let wrong = auth.verify_password("ada", "battery horse");
        let unknown = auth.verify_password("nobody", PASSWORD);
        ensure(
            matches!((&wrong, &unknown), (Err(a), Err(b)) if a.to_string() == b.to_string()),
            || "a wrong password and an unknown user must fail alike".into(),
        )?;
        self.say(format_args!(
            "      user ada: argon2id hash {hash_ms:.0} ms; wrong password and unknown user both: {}",
            wrong.err().map(|e| e.to_string()).unwrap_or_default()
        ))?;
        let scopes = Scopes::of(&[Scope::Read, Scope::Replicate]);
        let (info, token) = auth.create_api_key("ada", scopes, None)?;
        let checked = auth.authenticate_api_key(token.expose())?;
        self.say(format_args!(
            "      API key {} (token mk_{}_<64 hex>, shown once): authenticates as {} [{}]",
            info.key_id, info.key_id, checked.user, checked.scopes
        ))?;
        auth.put_secret("ada", "smtp-password", b"hunter2")?;
        let secret = auth.get_secret("ada", "smtp-password")?;
        ensure(secret.expose() == b"hunter2", || "secret round trip".into())?;
        auth.revoke_api_key(&info.key_id)?;
        let revoked = auth.authenticate_api_key(token.expose());
        ensure(revoked.is_err(), || {
            "a revoked key still authenticates".into()
        })?;
        self.say(format_args!(
            "      secret stored as AES-256-GCM under master key {}; after revoke: {}",
            auth.master_key_id(),
            revoked.err().map(|e| e.to_string()).unwrap_or_default()
        ))?;
        self.auth = Some(auth);
        Ok("password verified, token authenticated then revoked, secret round-tripped".into())
    }

    fn replication_step(&mut self) -> Result<String, CliError> {
        let db = self.db()?.clone();
        let auth = self
            .auth
            .take()
            .ok_or_else(|| CliError::data("step 11 left no auth service"))?;
        let (_, token) = auth.create_api_key("ada", Scopes::of(&[Scope::Replicate]), None)?;
        let server = ReplicationServer::start(&db, "127.0.0.1:0", ReplicationOptions::new(auth))?;
        let addr = server.local_addr().to_string();
        let started = Instant::now();
        let follower = Follower::open(
            self.dir.join("copies").join("follower"),
            FollowerOptions::new(&addr, token.expose()),
        )?;
        let caught_up = self.wait_for_follower(&follower, &db, "catch up")?;
        let catch_up_ms = started.elapsed().as_secs_f64() * 1e3;
        let status = follower.status();
        self.say(format_args!(
            "      leader on {addr}; follower caught up to seq {caught_up} ({} keys) in {catch_up_ms:.0} ms: {} snapshot(s), {} batch(es)",
            follower.db().stats().keys,
            status.snapshots_installed,
            status.batches_applied
        ))?;
        let started = Instant::now();
        for i in 0..STREAMED_WRITES {
            db.put(format!("live-{i}"), "streamed")?;
        }
        self.wait_for_follower(&follower, &db, "stream")?;
        let stream_ms = started.elapsed().as_secs_f64() * 1e3;
        ensure(follower.db().digest()? == db.digest()?, || {
            "follower digest differs from the leader's".into()
        })?;
        let refused = follower.db().put("local", "write");
        ensure(matches!(refused, Err(Error::ReadOnly { .. })), || {
            "a follower accepted a local write".into()
        })?;
        self.say(format_args!(
            "      {STREAMED_WRITES} more writes streamed in {stream_ms:.0} ms; digests equal; a local write: {}",
            refused.err().map(|e| e.to_string()).unwrap_or_default()
        ))?;
        follower.stop();
        server.stop();
        Ok(format!(
            "caught up in {catch_up_ms:.0} ms, streamed {STREAMED_WRITES} writes, digests equal, read-only"
        ))
    }

    /// Waits until the follower holds everything `leader` has written.
    fn wait_for_follower(
        &self,
        follower: &mergekv::replication::client::Follower,
        leader: &Db,
        what: &str,
    ) -> Result<u64, CliError> {
        let target = leader.stats().wal.last_seq;
        let reached = follower.wait_for_seq(target, FOLLOWER_WAIT);
        ensure(reached, || {
            format!(
                "the follower did not {what} to seq {target}: {:?}",
                follower.status()
            )
        })?;
        Ok(target)
    }

    fn encryption_step(&mut self) -> Result<String, CliError> {
        const SECRET: &str = "Ada's secret: the engine can compose music";
        let copies = self.dir.join("copies");
        let dir = copies.join("encrypted");
        // Beside the database, not in it, as a real key would be (and
        // better elsewhere still).
        let key_file = copies.join("encrypted.key");
        let key = self.demo_key(&key_file)?;
        let with_key =
            || Options::default().with_encryption_key(Some(KeySource::File(key_file.clone())));
        let db = Db::open_with(&dir, with_key())?;
        db.keyspace("notes")?.put("ada", SECRET)?;
        db.close()?;
        let (files, bytes, holding) = search_files(&dir, SECRET.as_bytes())?;
        ensure(holding.is_empty(), || {
            format!("{SECRET:?} is in clear in {}", holding.join(", "))
        })?;
        self.say(format_args!(
            "      put notes/ada; {files} files ({bytes} bytes) searched for {SECRET:?}: not found"
        ))?;
        let db = Db::open_with(&dir, with_key())?;
        let read = db.keyspace("notes")?.get("ada")?.map(|v| text(&v));
        db.close()?;
        ensure(read.as_deref() == Some(SECRET), || {
            format!("notes/ada reads {read:?}")
        })?;
        self.say("      reopened with the key: notes/ada reads back")?;
        let refused = Db::open_with(&dir, Options::default());
        let named = matches!(&refused,
            Err(Error::Key(KeyError::Missing { needed, .. })) if *needed == key.id());
        ensure(named, || {
            format!("an open without the key gave {refused:?}")
        })?;
        self.say(format_args!(
            "      without it: {}",
            refused.err().map(|e| e.to_string()).unwrap_or_default()
        ))?;
        Ok(format!(
            "no plaintext on disk; opens with key id {} only",
            key.id()
        ))
    }

    /// The demo's encryption key: made and written to `path` (mode 0600)
    /// on the first run, read back on a run in the same `--dir`.
    fn demo_key(&mut self, path: &Path) -> Result<EncryptionKey, CliError> {
        if path.exists() {
            let key = KeySource::File(path.to_path_buf()).resolve()?;
            self.say(format_args!(
                "      key id {} read from {} (made by an earlier run)",
                key.id(),
                path.display()
            ))?;
            return Ok(key);
        }
        let key = EncryptionKey::generate()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                CliError::data(format_args!("cannot create {}: {e}", dir.display()))
            })?;
        }
        write_key_file(path, &key.to_hex())?;
        self.say(format_args!(
            "      a fresh key, id {}, written to {} (mode 0600), as `mergekv keygen --out` does",
            key.id(),
            path.display()
        ))?;
        Ok(key)
    }

    fn verify_step(&mut self) -> Result<String, CliError> {
        self.close()?;
        let report = mergekv::verify(&self.dir)?;
        let summary = format!(
            "{} files, {} frames, {} ops",
            report.files_checked, report.frames, report.ops
        );
        self.say(format_args!("      {summary}"))?;
        ensure(report.is_ok(), || report.problems.join("; "))?;
        Ok(format!("{summary}: ok"))
    }

    fn finish(&mut self, keep: bool, started: Instant) -> Result<(), CliError> {
        self.say(format_args!("[{STEPS}/{STEPS}] summary"))?;
        for line in self.table() {
            self.say(line)?;
        }
        let cleanup = if keep {
            format!("kept {}", self.dir.display())
        } else {
            std::fs::remove_dir_all(&self.dir).map_err(|e| {
                CliError::data(format_args!("cannot remove {}: {e}", self.dir.display()))
            })?;
            format!("removed {}", self.dir.display())
        };
        let seconds = started.elapsed().as_secs_f64();
        self.say(format_args!("demo finished in {seconds:.2} s; {cleanup}"))?;
        if self.out.json {
            let json = DemoJson {
                ok: true,
                dir: &self.dir,
                kept: keep,
                seconds,
                steps: &self.rows,
            };
            return self.out.json(&json);
        }
        Ok(())
    }

    fn table(&self) -> Vec<String> {
        let width = self.rows.iter().map(|r| r.what.len()).max().unwrap_or(4);
        let mut lines = vec![format!("  step  {:<width$}  result", "what")];
        for r in &self.rows {
            lines.push(format!("  {:<4}  {:<width$}  {}", r.step, r.what, r.result));
        }
        lines
    }
}

/// Searches every file under `dir` for `needle`: the files and bytes read,
/// and the files that hold it.
fn search_files(dir: &Path, needle: &[u8]) -> Result<(usize, u64, Vec<String>), CliError> {
    let fail = |p: &Path, e: std::io::Error| {
        CliError::data(format_args!("cannot read {}: {e}", p.display()))
    };
    let (mut files, mut bytes, mut holding) = (0, 0, Vec::new());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).map_err(|e| fail(&next, e))? {
            let path = entry.map_err(|e| fail(&next, e))?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let content = std::fs::read(&path).map_err(|e| fail(&path, e))?;
            files += 1;
            bytes += content.len() as u64;
            if content.windows(needle.len()).any(|w| w == needle) {
                holding.push(path.display().to_string());
            }
        }
    }
    Ok((files, bytes, holding))
}

/// The highest-numbered `wal-*.seg` file under `dir/wal/`.
fn last_segment(dir: &Path) -> Result<PathBuf, CliError> {
    let wal = dir.join("wal");
    let entries = std::fs::read_dir(&wal)
        .map_err(|e| CliError::data(format_args!("cannot list {}: {e}", wal.display())))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| text(n.as_encoded_bytes()))
                .unwrap_or_default();
            name.starts_with("wal-") && name.ends_with(".seg")
        })
        .max()
        .ok_or_else(|| CliError::data(format_args!("no wal-*.seg file in {}", wal.display())))
}

/// What a crash in the middle of a write leaves: bytes that are no frame.
fn append_garbage(segment: &Path) -> Result<(), CliError> {
    let fail = |e: std::io::Error| {
        CliError::data(format_args!("cannot append to {}: {e}", segment.display()))
    };
    let mut file = OpenOptions::new()
        .append(true)
        .open(segment)
        .map_err(fail)?;
    let garbage: Vec<u8> = (0..GARBAGE_BYTES)
        .map(|i| 0xA5 ^ (i as u8).wrapping_mul(31))
        .collect();
    file.write_all(&garbage).map_err(fail)?;
    file.sync_all().map_err(fail)
}
