//! The subcommands other than `load` and `demo`.

use std::io::Read;
use std::path::Path;

use mergekv::command::validate_keyspace_name;
use mergekv::{
    Db, Keyspace, RecoveryMode, RepairReport, ScanOptions, SyncCursor, Value, VerifyReport,
};

use crate::args::{
    Cli, Command, ExportArgs, GetArgs, ImportArgs, IncrArgs, KeyArgs, PutArgs, ScanArgs, StatsArgs,
    VerifyArgs,
};
use crate::bytes::{KeyJson, ValueJson};
use crate::error::{CliError, EXIT_USAGE, describe};
use crate::keys::{self, Target, open_error};
use crate::output::{self, EntryJson, GetJson, Out, OutcomeJson, ScanJson, VerifyJson};
use crate::{auth, bytes, demo, encryption, files, load, replicate};

/// Runs the command line; the error carries the exit code.
pub fn run(cli: &Cli) -> Result<(), CliError> {
    let mut out = Out::new(cli.json);
    let result = dispatch(cli, &mut out);
    let flushed = out.flush();
    result.and(flushed)
}

fn dispatch(cli: &Cli, out: &mut Out) -> Result<(), CliError> {
    match &cli.command {
        Command::Keygen(a) => {
            keys::refuse_key_flags(cli, "keygen")?;
            return encryption::keygen(a, out);
        }
        Command::Demo(a) => {
            keys::refuse_key_flags(cli, "demo")?;
            if let Some(dir) = &a.dir {
                files::check_dir_path(dir, "--dir")?;
            }
            return demo::demo(a.dir.as_deref(), out);
        }
        _ => files::check_dir_path(&cli.data, "--data")?,
    }
    // The keys first: a missing or malformed one must create nothing.
    let t = &Target::from_cli(cli)?;
    match &cli.command {
        Command::Put(a) => put(t, a, out),
        Command::Get(a) => get(t, a, out),
        Command::Del(a) => del(t, a, out),
        Command::Incr(a) => incr(t, a, out),
        Command::Scan(a) => scan(t, a, out),
        Command::Stats(a) => stats(t, a, out),
        Command::Compact => compact(t, out),
        Command::Export(a) => export(t, a, out),
        Command::Import(a) => import(t, a, out),
        Command::Digest => digest(t, out),
        Command::Verify(a) => verify(t, a, out),
        Command::Load(a) => load::load(t, a, out),
        Command::User(c) => auth::user(cli, t, c, out),
        Command::Apikey(c) => auth::apikey(cli, t, c, out),
        Command::Serve(a) => replicate::serve(cli, t, a, out),
        Command::Follow(a) => replicate::follow(t, a, out),
        Command::Promote => replicate::promote(t, out),
        Command::Reidentify => reidentify(t, out),
        Command::Rekey(a) => encryption::rekey(t, a, out),
        #[cfg(feature = "object-store")]
        Command::Sync(a) => crate::bucket::sync(t, a, out),
        #[cfg(feature = "object-store")]
        Command::Backup(a) => crate::bucket::backup(t, a, out),
        #[cfg(feature = "object-store")]
        Command::Restore(a) => crate::bucket::restore(t, a, out),
        #[cfg(not(feature = "object-store"))]
        Command::Sync(_) | Command::Backup(_) | Command::Restore(_) => Err(CliError::new(
            crate::error::EXIT_USAGE,
            "this mergekv was built without the object-store feature \
             (cargo install mergekv --features object-store)",
        )),
        Command::Keygen(_) | Command::Demo(_) => Ok(()),
    }
}

/// Passes an opened database on, after printing on stderr what its open
/// did that the user should know (a damaged snapshot set aside, a
/// repair, a new identity for a copied directory).
pub fn opened(db: Db) -> Db {
    for notice in db.notices() {
        eprintln!("mergekv: note: {notice}");
    }
    db
}

/// Opens the database after checking the keyspace name (so that a bad name
/// creates nothing).
fn open_keyspace(t: &Target, name: &str) -> Result<(Db, Keyspace), CliError> {
    validate_keyspace_name(name, false)?;
    let db = t.open()?;
    let keyspace = db.keyspace(name)?;
    Ok((db, keyspace))
}

/// Closes after a write, so that a failure to flush is reported.
fn close(db: Db, keyspace: Keyspace) -> Result<(), CliError> {
    drop(keyspace);
    Ok(db.close()?)
}

/// The longest value `put --value-file` reads; a larger file is refused
/// before it is read (the database refuses larger values anyway).
const VALUE_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The value of `put`: the argument (hex with `--hex`), or the exact bytes
/// of `--value-file` (stdin for `-`).
fn put_value(a: &PutArgs) -> Result<Vec<u8>, CliError> {
    let Some(path) = &a.value_file else {
        let value = a.value.as_deref().unwrap_or_default();
        return bytes::arg_bytes(value, a.hex.hex, "VALUE");
    };
    let failed = |e: std::io::Error| {
        CliError::new(
            EXIT_USAGE,
            format_args!("cannot read --value-file {}: {e}", path.display()),
        )
    };
    let mut value = Vec::new();
    let limit = VALUE_FILE_BYTES_MAX + 1;
    if path.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut value)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut value))
    }
    .map_err(failed)?;
    if value.len() as u64 > VALUE_FILE_BYTES_MAX {
        return Err(CliError::new(
            EXIT_USAGE,
            format_args!(
                "--value-file {} holds more than {VALUE_FILE_BYTES_MAX} bytes",
                path.display()
            ),
        ));
    }
    Ok(value)
}

fn put(t: &Target, a: &PutArgs, out: &mut Out) -> Result<(), CliError> {
    let key = bytes::arg_bytes(&a.key, a.hex.hex, "KEY")?;
    let value = put_value(a)?;
    let (db, ks) = open_keyspace(t, &a.ks.keyspace)?;
    let outcome = ks.put(&key, &value)?;
    close(db, ks)?;
    if out.json {
        out.json(&OutcomeJson::from(&outcome))?;
    }
    Ok(())
}

fn del(t: &Target, a: &KeyArgs, out: &mut Out) -> Result<(), CliError> {
    let key = bytes::arg_bytes(&a.key, a.hex.hex, "KEY")?;
    let (db, ks) = open_keyspace(t, &a.ks.keyspace)?;
    let outcome = ks.delete(&key)?;
    close(db, ks)?;
    if out.json {
        out.json(&OutcomeJson::from(&outcome))?;
    }
    Ok(())
}

fn incr(t: &Target, a: &IncrArgs, out: &mut Out) -> Result<(), CliError> {
    let key = bytes::arg_bytes(&a.key, a.hex.hex, "KEY")?;
    let (db, ks) = open_keyspace(t, &a.ks.keyspace)?;
    let outcome = ks.increment(&key, a.delta)?;
    close(db, ks)?;
    if out.json {
        return out.json(&OutcomeJson::from(&outcome));
    }
    let value = outcome.counter.unwrap_or_default();
    out.line(value)
}

/// A value as one line of text: bytes escaped (hex with `--hex`), a
/// counter as its number.
fn value_text(value: &Value, hex_output: bool) -> String {
    match value {
        Value::Bytes(b) => bytes::shown(b, hex_output),
        Value::Counter(c) => c.to_string(),
    }
}

fn get(t: &Target, a: &GetArgs, out: &mut Out) -> Result<(), CliError> {
    let key = bytes::arg_bytes(&a.key, a.hex.hex, "KEY")?;
    if a.raw && out.json {
        return Err(CliError::new(EXIT_USAGE, "--raw prints bytes, not JSON"));
    }
    validate_keyspace_name(&a.ks.keyspace, false)?;
    let db = t.open_reader()?;
    let ks = db.keyspace(&a.ks.keyspace)?;
    let value = ks.get_value(&key)?;
    if out.json {
        out.json(&GetJson {
            keyspace: &a.ks.keyspace,
            key: KeyJson::new(&key, a.hex.hex),
            found: value.is_some(),
            value: value.as_ref().map(|v| ValueJson::new(v, a.hex.hex)),
        })?;
    }
    match value {
        Some(_) if out.json => Ok(()),
        Some(Value::Bytes(b)) if a.raw => out.bytes(&b),
        Some(Value::Counter(c)) if a.raw => out.bytes(c.to_string().as_bytes()),
        Some(v) => out.line(value_text(&v, a.hex.hex)),
        None => {
            let missing = CliError::not_found(format_args!(
                "key \"{}\" not found in keyspace {:?}",
                bytes::shown(&key, a.hex.hex),
                a.ks.keyspace
            ));
            // Under --json, `"found": false` already says it.
            Err(if out.json {
                missing.told_in_output()
            } else {
                missing
            })
        }
    }
}

fn scan_options(a: &ScanArgs) -> Result<ScanOptions, CliError> {
    let bytes = |s: &Option<String>, what: &str| {
        s.as_deref()
            .map(|s| bytes::arg_bytes(s, a.hex.hex, what))
            .transpose()
    };
    let mut options = ScanOptions::all();
    options.prefix = bytes(&a.prefix, "--prefix")?;
    options.start = bytes(&a.start, "--start")?;
    options.end = bytes(&a.end, "--end")?;
    options.reverse = a.reverse;
    options.limit = a.limit;
    Ok(options)
}

fn scan(t: &Target, a: &ScanArgs, out: &mut Out) -> Result<(), CliError> {
    let options = scan_options(a)?;
    validate_keyspace_name(&a.ks.keyspace, false)?;
    let db = t.open_reader()?;
    let ks = db.keyspace(&a.ks.keyspace)?;
    let entries = ks.scan(&options);
    let hex = a.hex.hex;
    if !out.json {
        for e in entries {
            let e = e?;
            out.line(format_args!(
                "{}\t{}",
                bytes::shown(e.key(), hex),
                value_text(e.value(), hex)
            ))?;
        }
        return Ok(());
    }
    let entries: Vec<EntryJson> = entries
        .map(|e| {
            e.map(|e| EntryJson {
                key: KeyJson::new(e.key(), hex),
                value: ValueJson::new(e.value(), hex),
            })
        })
        .collect::<Result<_, _>>()?;
    out.json(&ScanJson {
        keyspace: &a.ks.keyspace,
        count: entries.len(),
        entries,
    })
}

fn stats(t: &Target, a: &StatsArgs, out: &mut Out) -> Result<(), CliError> {
    if a.prometheus {
        if out.json {
            return Err(CliError::new(
                crate::error::EXIT_USAGE,
                "stats: --prometheus and --json cannot be combined",
            ));
        }
        // The state only: this process's counters since open are all 0.
        let text = t.open_reader()?.stats().to_prometheus_state();
        return out.line(text.trim_end());
    }
    // A running follower's status file says more than its files do.
    if let Some(status) = replicate::running_follower_status(&t.dir) {
        return running_follower_stats(&status, out);
    }
    let db = t.open_reader()?;
    let (stats, encryption) = (db.stats(), db.encryption()?);
    if out.json {
        return out.json(&StatsJson {
            stats: output::stats_state_json(&stats)?,
            encryption: &encryption,
        });
    }
    let lines = output::stats_lines(&stats)
        .into_iter()
        .chain(encryption::status_lines(&encryption))
        .map(|(name, value)| (name.to_string(), value))
        .chain(output::keyspace_lines(&stats));
    for (name, value) in lines {
        out.line(format_args!("{name}: {value}"))?;
    }
    Ok(())
}

/// `stats`' object: the figures and the encryption status.
#[derive(serde::Serialize)]
struct StatsJson<'a> {
    #[serde(flatten)]
    stats: serde_json::Value,
    encryption: &'a mergekv::EncryptionStatus,
}

fn running_follower_stats(status: &serde_json::Value, out: &mut Out) -> Result<(), CliError> {
    if out.json {
        return out.json(status);
    }
    let field = |name: &str| status.get(name).cloned().unwrap_or_default();
    let position = field("position");
    let seq = position.get("seq").cloned().unwrap_or_default();
    out.line("running_follower: yes (from follower-status.json)")?;
    for (name, value) in [
        ("follower_of", field("leader")),
        ("connected", field("connected")),
        ("follower_cursor_seq", seq),
        ("follower_leader_seq", field("leader_seq")),
        ("follower_lag_seqs", field("lag_seqs")),
        ("follower_lag_ms", field("lag_ms")),
        ("last_error", field("last_error")),
    ] {
        out.line(format_args!("{name}: {value}"))?;
    }
    Ok(())
}

fn compact(t: &Target, out: &mut Out) -> Result<(), CliError> {
    let db = replicate::open_for_read(t)?;
    let report = db.compact_now()?;
    db.close()?;
    if out.json {
        return out.json(&report);
    }
    for (name, value) in output::compaction_lines(&report) {
        out.line(format_args!("{name}: {value}"))?;
    }
    Ok(())
}

fn export(t: &Target, a: &ExportArgs, out: &mut Out) -> Result<(), CliError> {
    let since = SyncCursor::parse(a.since.as_deref().unwrap_or(""))?;
    let db = t.open_reader()?;
    let (bytes, cursor) = db.export_since(&since)?;
    drop(db);
    files::write_atomically(&a.file, &bytes)
        .map_err(|e| CliError::data(format_args!("cannot write {}: {e}", a.file.display())))?;
    if out.json {
        return out.json(&serde_json::json!({"cursor": cursor.to_text(), "bytes": bytes.len()}));
    }
    out.line(cursor.to_text())
}

fn import(t: &Target, a: &ImportArgs, out: &mut Out) -> Result<(), CliError> {
    let bytes = std::fs::read(&a.file)
        .map_err(|e| CliError::data(format_args!("cannot read {}: {e}", a.file.display())))?;
    let db = t.open()?;
    let report = db.import(&bytes).map_err(|e| match e {
        // The database's own failure, not the change set's.
        mergekv::Error::Io { .. } | mergekv::Error::Poisoned { .. } => CliError::data(describe(&e)),
        // Sealed under a key this database was not given: refused as any
        // missing key is.
        e @ mergekv::Error::Key(_) => {
            let refused = CliError::from(e);
            CliError::new(
                refused.code,
                format_args!("{}: {}", a.file.display(), refused.message),
            )
        }
        e => CliError::data(format_args!("{}: {e}", a.file.display())),
    })?;
    db.close()?;
    if out.json {
        return out.json(&report);
    }
    out.line(format_args!("applied: {}", report.applied))?;
    out.line(format_args!("stale: {}", report.stale))?;
    out.line(format_args!("duplicates: {}", report.duplicates))
}

fn digest(t: &Target, out: &mut Out) -> Result<(), CliError> {
    let digest = t.open_reader()?.digest()?;
    if out.json {
        return out.json(&serde_json::json!({"root": digest.root_hex(), "keys": digest.keys}));
    }
    out.line(digest.root_hex())
}

/// True if `data` does not exist or is an empty directory: there is no
/// database to verify. (A directory holding files but no META is reported
/// by `verify` itself, as a damaged database.)
fn holds_nothing(data: &Path) -> bool {
    match std::fs::read_dir(data) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Prints a verify report; exit 3 if it found damage. `repair` is what
/// `--repair` dropped (`Some(None)`: nothing needed repair).
fn finish_verify(
    report: &VerifyReport,
    repair: Option<Option<RepairReport>>,
    out: &mut Out,
) -> Result<(), CliError> {
    if out.json {
        out.json(&VerifyJson {
            ok: report.is_ok(),
            report,
            repair,
        })?;
    } else {
        for line in output::verify_lines(report) {
            out.line(line)?;
        }
    }
    let Some(first) = report.problems.first() else {
        return Ok(());
    };
    let failed = CliError::data(format_args!(
        "{} failed verification ({} problem(s)); first: {first}",
        report.dir.display(),
        report.problems.len()
    ));
    // Under --json, the report's `"ok": false` already says it.
    Err(if out.json {
        failed.told_in_output()
    } else {
        failed
    })
}

fn verify(t: &Target, a: &VerifyArgs, out: &mut Out) -> Result<(), CliError> {
    if holds_nothing(&t.dir) {
        return Err(CliError::no_database(&t.dir));
    }
    let check = || mergekv::verify_with(&t.dir, &t.options()).map_err(open_error);
    let report = check()?;
    if !a.repair {
        return finish_verify(&report, None, out);
    }
    if report.is_ok() {
        if !out.json {
            out.line("repair: nothing to repair")?;
        }
        return finish_verify(&report, Some(None), out);
    }
    let repaired = repair(t, out)?;
    finish_verify(&check()?, Some(repaired), out)
}

/// Opens in repair mode and reports what was dropped (as text lines right
/// away; returned for the JSON object).
fn repair(t: &Target, out: &mut Out) -> Result<Option<RepairReport>, CliError> {
    // Repairing must never create a new, empty database instead.
    let options = t.existing_only().with_recovery_mode(RecoveryMode::Repair);
    let db = Db::open_with(&t.dir, options).map_err(open_error)?;
    let recovery = db.recovery_report().clone();
    let salvaged: Vec<String> = db
        .notices()
        .into_iter()
        .filter(|n| n.starts_with("salvaged"))
        .map(|n| format!("repair: {n}"))
        .collect();
    db.close()?;
    if !out.json {
        let mut lines = match &recovery.repair {
            Some(r) => output::repair_lines(r),
            None if salvaged.is_empty() => vec!["repair: nothing was dropped".to_string()],
            None => Vec::new(),
        };
        lines.extend(salvaged);
        for line in lines {
            out.line(line)?;
        }
    }
    Ok(recovery.repair)
}

fn reidentify(t: &Target, out: &mut Out) -> Result<(), CliError> {
    let options = t.existing_only().with_renew_identity(true);
    let db = Db::open_with(&t.dir, options).map_err(open_error)?;
    let new = db.node_id();
    let old = db.identity_renewed().map(|(old, _)| old);
    db.close()?;
    if out.json {
        return out.json(&serde_json::json!({
            "node_id": new.to_string(),
            "former_node_id": old.map(|o| o.to_string()),
        }));
    }
    match old {
        Some(old) => out.line(format_args!("node id {old} -> {new}")),
        None => out.line(format_args!("node id {new}: unchanged")),
    }
}
