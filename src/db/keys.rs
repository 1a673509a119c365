//! The keys an open needs: checked against META and every file before
//! anything is read for recovery or changed, so a missing or wrong key is
//! a typed error that touches nothing.
//!
//! META names the database's key (the one every new file is encrypted
//! with). The rules:
//!
//! - META names no key and none is given: a database in clear.
//! - META names key K and K is the key given: an encrypted database.
//! - META names no key and one is given: refused
//!   ([`KeyError::NotEncrypted`]); encrypting an existing database is a
//!   rotation (`Db::rotate_encryption_key`). (A new database has no META
//!   yet: it is created naming the key given.)
//! - META names K, and the key given is another one, J, with K among the
//!   old keys given: a writable open takes this as a rotation to J (it
//!   writes META naming J; the compactor rewrites K's files). A read-only
//!   open just reads with both.
//! - Otherwise (K not given at all, or only old keys and no current
//!   one): refused, naming K. There is no rotation back to no key.
//!
//! A file in clear in an encrypted database is refused as forged, unless
//! META says a rotation from no key has not finished rewriting them.
//!
//! Then every file recovery reads (segments, the manifest's runs,
//! snapshots) must have its key in the ring; a file under a key the ring
//! lacks is refused naming that key, and, when the key is not META's, the
//! rotation that still needs it.

use std::path::Path;

use crate::crypto::{KeyId, Keyring};
use crate::engine;
use crate::error::{Error, KeyError, Result};
use crate::io::Io;
use crate::meta::Meta;

/// Checks the keys for an open of `dir` whose META (if it reads) is
/// `meta`. Reads headers only; changes nothing.
pub(crate) fn check(io: &Io, dir: &Path, meta: Option<&Meta>, keyring: &Keyring) -> Result<()> {
    let db_key = meta.and_then(|m| m.key_id);
    match (db_key, keyring.current_id()) {
        (None, Some(_)) if meta.is_some() => {
            return Err(Error::Key(KeyError::NotEncrypted {
                dir: dir.to_path_buf(),
            }));
        }
        // Old keys alone do not open an encrypted database: that would
        // write on in clear (a rotation to no key, which is not offered).
        (Some(needed), current) if current.is_none() || keyring.find(needed).is_none() => {
            let only_old = current.is_none() && keyring.find(needed).is_some();
            return Err(Error::Key(KeyError::Missing {
                what: if only_old {
                    format!(
                        "the database in {} (its key was given only as an old key: give it as \
                         the current one)",
                        dir.display()
                    )
                } else {
                    format!("the database in {}", dir.display())
                },
                needed,
                given: keyring.ids(),
                rotating_to: None,
            }));
        }
        _ => {}
    }
    // A file in clear in an encrypted database is forged (anyone can write
    // one) unless a rotation from no key is still rewriting them.
    if meta.is_some_and(Meta::all_files_encrypted)
        && let Some(path) = engine::files_in_clear(io, dir)?.into_iter().next()
    {
        return Err(Error::corruption(
            &path,
            0,
            "a file in clear in an encrypted database (not written by it: every file it \
             writes is encrypted)",
        ));
    }
    for (path, needed) in engine::key_ids_in_files(io, dir)? {
        if keyring.current_id().is_none() && keyring.find(needed).is_some() {
            // Old keys alone would write on in clear beside encrypted files.
            return Err(Error::Key(KeyError::Missing {
                what: format!(
                    "{} (its key was given only as an old key: give it as the current one)",
                    path.display()
                ),
                needed,
                given: Vec::new(),
                rotating_to: None,
            }));
        }
        if keyring.find(needed).is_none() {
            return Err(Error::Key(KeyError::Missing {
                what: path.display().to_string(),
                needed,
                given: keyring.ids(),
                rotating_to: db_key.filter(|k| *k != needed),
            }));
        }
    }
    Ok(())
}

/// Where encryption stands in `dir` for a database whose key is
/// `current`: the files under other keys (or in clear, if it has one).
/// `rewrite_pending` is left false for the caller to say.
pub(super) fn status(
    io: &Io,
    dir: &Path,
    current: Option<KeyId>,
) -> Result<super::EncryptionStatus> {
    let files = engine::key_ids_in_files(io, dir)?;
    let in_clear = match current {
        Some(_) => engine::files_in_clear(io, dir)?.len(),
        None => 0,
    };
    let mut other_key_ids: Vec<KeyId> = files
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| Some(*id) != current)
        .collect();
    let files_under_other_keys = other_key_ids.len() + in_clear;
    other_key_ids.sort();
    other_key_ids.dedup();
    Ok(super::EncryptionStatus {
        key_id: current,
        files_under_other_keys,
        other_key_ids,
        rewrite_pending: false,
    })
}
