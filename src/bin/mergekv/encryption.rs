//! `keygen` and `rekey`: making keys and moving a database to a new one.
//!
//! A key is printed only by `keygen`, and only when it is not written to a
//! file; every other command names keys by their ids.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use mergekv::auth::MasterKey;
use mergekv::{
    Db, EncryptionKey, EncryptionStatus, Error, KeyError, KeyId, KeySource, RekeyReport,
};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::args::{KeygenArgs, RekeyArgs};
use crate::error::{CliError, EXIT_USAGE};
use crate::keys::{OLD_KEY_ENV, Target, open_error};
use crate::output::Out;

/// A fresh key, as text, with its id and what it is for.
struct NewKey {
    hex: Zeroizing<String>,
    id: String,
    kind: &'static str,
    given_with: &'static str,
}

fn new_key(auth: bool) -> Result<NewKey, CliError> {
    if auth {
        let key = MasterKey::generate()?;
        return Ok(NewKey {
            hex: key.to_hex(),
            id: key.id().to_string(),
            kind: "auth master key",
            given_with: "--master-key-file FILE or MERGEKV_MASTER_KEY",
        });
    }
    let key = EncryptionKey::generate()?;
    Ok(NewKey {
        hex: key.to_hex(),
        id: key.id().to_string(),
        kind: "encryption key",
        given_with: "--key-file FILE or MERGEKV_KEY",
    })
}

/// `keygen`'s object under `--json`.
#[derive(Serialize)]
struct KeygenJson<'a> {
    key_id: &'a str,
    kind: &'static str,
    /// With `--out`: where the key was written (the key itself is not shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a Path>,
    /// Without `--out` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

/// `mergekv keygen [--out FILE] [--auth]`.
pub fn keygen(a: &KeygenArgs, out: &mut Out) -> Result<(), CliError> {
    let key = new_key(a.auth)?;
    let about = format!(
        "{} with key id {}; pass it with {}",
        key.kind, key.id, key.given_with
    );
    let Some(path) = &a.out else {
        if out.json {
            return out.json(&KeygenJson {
                key_id: &key.id,
                kind: key.kind,
                file: None,
                key: Some(&key.hex),
            });
        }
        // The key alone on stdout, so `mergekv keygen > FILE` is a key
        // file; what it is goes to stderr.
        eprintln!("{about}");
        return out.line(key.hex.as_str());
    };
    write_key_file(path, &key.hex)?;
    if out.json {
        return out.json(&KeygenJson {
            key_id: &key.id,
            kind: key.kind,
            file: Some(path),
            key: None,
        });
    }
    eprintln!("{about}");
    out.line(format_args!(
        "wrote {} (key id {}) to {} (mode 0600)",
        key.kind,
        key.id,
        path.display()
    ))
}

/// Writes a new key file readable by its owner only, durably (the file and
/// its name), never over an existing file; on failure nothing is left.
pub fn write_key_file(path: &Path, hex: &str) -> Result<(), CliError> {
    let failed =
        |e: std::io::Error| CliError::data(format_args!("cannot write {}: {e}", path.display()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::new(
                EXIT_USAGE,
                format_args!(
                    "{} exists; keygen never overwrites a file (it may hold a key still needed)",
                    path.display()
                ),
            )
        } else {
            failed(e)
        }
    })?;
    let line = Zeroizing::new(format!("{hex}\n"));
    let written = file
        .write_all(line.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(failed(e));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(failed)
}

/// Where the database started from, for the report.
enum Start {
    /// It was not encrypted.
    Clear,
    /// It was encrypted with this key.
    Key(KeyId),
    /// An earlier `rekey` to the same new key had already begun.
    Resumed,
}

/// `rekey`'s object under `--json`.
#[derive(Serialize)]
struct RekeyJson<'a> {
    dir: &'a Path,
    key_id: KeyId,
    /// The key the database had before (`null`: none, or `resumed`).
    previous_key_id: Option<KeyId>,
    /// An earlier rotation to `key_id` was finished rather than begun.
    resumed: bool,
    #[serde(flatten)]
    report: &'a RekeyReport,
    /// Some file still needs another key (files left in clear need none).
    old_key_needed: bool,
    /// The keys those files need (empty for files in clear).
    other_key_ids: &'a [KeyId],
}

/// `mergekv rekey --new-key-file FILE`: rotates to the new key, then
/// rewrites every file under the old one now.
pub fn rekey(target: &Target, a: &RekeyArgs, out: &mut Out) -> Result<(), CliError> {
    let new = KeySource::File(a.new_key_file.clone()).resolve()?;
    let (db, from) = open_for_rekey(target, &new)?;
    if !matches!(from, Start::Resumed) {
        db.rotate_encryption_key(new.clone())?;
    }
    let report = db.complete_key_rotation()?;
    let status = db.encryption()?;
    db.close()?;
    print_rekey(target, &new, &from, &report, &status, out)
}

/// Opens the database for a rotation to `new`. A database whose key is
/// already `new` (an earlier rekey got as far as that, or the new key was
/// given as --key-file) is opened with `new` and the old key, and its
/// rotation finished; an open with `new` as the current key and the
/// database's key among the old ones performs the rotation itself.
fn open_for_rekey(target: &Target, new: &EncryptionKey) -> Result<(Db, Start), CliError> {
    let resuming = |old: Vec<EncryptionKey>| -> Result<(Db, Start), CliError> {
        let resumed = Target {
            dir: target.dir.clone(),
            key: Some(new.clone()),
            old_keys: Vec::new(),
        };
        let mut options = resumed.existing_only();
        options.encryption_keys_old = old.into_iter().map(Into::into).collect();
        Ok((resumed.open_with(options)?, Start::Resumed))
    };
    let old: Vec<EncryptionKey> = target.old_keys.clone();
    if target.key.as_ref().is_some_and(|k| k.id() == new.id()) {
        return resuming(old);
    }
    match Db::open_with(&target.dir, target.existing_only()) {
        Ok(db) => {
            let from = target
                .key
                .as_ref()
                .map_or(Start::Clear, |k| Start::Key(k.id()));
            Ok((crate::commands::opened(db), from))
        }
        // The database already needs the new key: the rekey that rotated
        // it was cut short. The key given is the old one.
        Err(Error::Key(KeyError::Missing { needed, .. })) if needed == new.id() => {
            resuming(target.key.iter().cloned().chain(old).collect())
        }
        Err(e) => Err(open_error(e)),
    }
}

fn print_rekey(
    target: &Target,
    new: &EncryptionKey,
    from: &Start,
    report: &RekeyReport,
    status: &EncryptionStatus,
    out: &mut Out,
) -> Result<(), CliError> {
    let old_key_needed = !status.other_key_ids.is_empty();
    let ids: Vec<String> = status.other_key_ids.iter().map(KeyId::to_string).collect();
    if report.files_left > 0 {
        let advice = if old_key_needed {
            format!(
                "keep the old key, and run rekey again with the new key as --key-file \
                 and the old one as --old-key-file (or {OLD_KEY_ENV})"
            )
        } else {
            "they are in clear; run rekey again to encrypt them".to_string()
        };
        eprintln!(
            "mergekv: note: {} file(s) are not yet under key id {}: {advice}",
            report.files_left,
            new.id()
        );
    }
    if out.json {
        return out.json(&RekeyJson {
            dir: &target.dir,
            key_id: new.id(),
            previous_key_id: match from {
                Start::Key(id) => Some(*id),
                Start::Clear | Start::Resumed => None,
            },
            resumed: matches!(from, Start::Resumed),
            report,
            old_key_needed,
            other_key_ids: &status.other_key_ids,
        });
    }
    let previous = match from {
        Start::Clear => "none (the database was not encrypted)".to_string(),
        Start::Key(id) => id.to_string(),
        Start::Resumed => {
            "none here: finished a rotation to this key already under way".to_string()
        }
    };
    for (name, value) in [
        ("key_id", new.id().to_string()),
        ("previous_key_id", previous),
        ("runs_rewritten", report.runs_rewritten.to_string()),
        ("segments_rewritten", report.segments_rewritten.to_string()),
        ("files_left", report.files_left.to_string()),
        (
            "old_key_needed",
            if old_key_needed {
                format!("yes: key id(s) {}", ids.join(", "))
            } else {
                "no".to_string()
            },
        ),
    ] {
        out.line(format_args!("{name}: {value}"))?;
    }
    Ok(())
}

/// `name: value` lines for `stats`.
pub fn status_lines(s: &EncryptionStatus) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        (
            "encryption",
            s.key_id
                .map_or_else(|| "not encrypted".to_string(), |id| format!("key id {id}")),
        ),
        (
            "files_under_other_keys",
            s.files_under_other_keys.to_string(),
        ),
    ];
    if !s.other_key_ids.is_empty() {
        let ids: Vec<String> = s.other_key_ids.iter().map(KeyId::to_string).collect();
        lines.push(("other_key_ids", ids.join(", ")));
    }
    lines
}
