//! Encryption keys on the command line, and the database a command opens.
//!
//! The key comes from `--key-file FILE` or else the `MERGEKV_KEY`
//! environment variable; the old key of an unfinished rotation from
//! `--old-key-file FILE` or else `MERGEKV_OLD_KEY`. Never from an
//! argument's value, which other users can read in the process list. Both
//! are read (and checked) before anything is opened, so a missing or
//! malformed key creates nothing.

use std::path::{Path, PathBuf};

use mergekv::{Db, EncryptionKey, Error, KeyError, KeySource, Options, ReadOnlyDb};

use crate::args::Cli;
use crate::error::{CliError, EXIT_USAGE};

/// The environment variable holding the encryption key as 64 hex digits.
pub const KEY_ENV: &str = "MERGEKV_KEY";
/// The environment variable holding the old key of an unfinished rotation.
pub const OLD_KEY_ENV: &str = "MERGEKV_OLD_KEY";

/// The key in `file` if one is named, else the one in the environment
/// variable `var` if it is set (even empty: a set variable is meant);
/// `None` if neither.
pub fn read_key(file: Option<&Path>, var: &str) -> Result<Option<EncryptionKey>, CliError> {
    let source = match file {
        Some(path) => KeySource::File(path.to_path_buf()),
        None if std::env::var_os(var).is_some() => KeySource::Env(var.to_string()),
        None => return Ok(None),
    };
    Ok(Some(source.resolve()?))
}

/// Refuses the key flags for a command that opens no database of the
/// user's (`keygen`, `demo`): a key given there would be silently unused.
/// The variables are ignored there, as any exported variable a command
/// does not use is.
pub fn refuse_key_flags(cli: &Cli, command: &str) -> Result<(), CliError> {
    let flag = match (&cli.key_file, cli.old_key_file.is_empty()) {
        (Some(_), _) => "--key-file",
        (None, false) => "--old-key-file",
        (None, true) => return Ok(()),
    };
    Err(CliError::new(
        EXIT_USAGE,
        format_args!("`{command}` opens no database of yours: {flag} is not used there"),
    ))
}

/// The database a command works on: its directory and its keys, read
/// before it is opened.
pub struct Target {
    /// The database directory (`--data`).
    pub dir: PathBuf,
    /// The key it is (or is to be) encrypted with; `None` for one in clear.
    pub key: Option<EncryptionKey>,
    /// The old keys, during unfinished rotations.
    pub old_keys: Vec<EncryptionKey>,
}

impl Target {
    /// `--data` with the keys from the flags or the environment.
    pub fn from_cli(cli: &Cli) -> Result<Target, CliError> {
        Ok(Target {
            dir: cli.data.clone(),
            key: read_key(cli.key_file.as_deref(), KEY_ENV)?,
            old_keys: if cli.old_key_file.is_empty() {
                read_key(None, OLD_KEY_ENV)?.into_iter().collect()
            } else {
                cli.old_key_file
                    .iter()
                    .map(|f| read_key(Some(f), OLD_KEY_ENV).map(Option::into_iter))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .flatten()
                    .collect()
            },
        })
    }

    /// The default options with this target's keys.
    pub fn options(&self) -> Options {
        Options::default()
            .with_encryption_key(self.key.clone().map(KeySource::Key))
            .with_encryption_keys_old(self.old_keys.iter().cloned().map(KeySource::Key).collect())
    }

    /// [`Target::options`] that open only a database that exists: a
    /// command that only reads must not create one
    /// ([`mergekv::Error::NotADatabase`] instead).
    pub fn existing_only(&self) -> Options {
        self.options().with_create_if_missing(false)
    }

    /// Opens (creating if needed) for writing.
    pub fn open(&self) -> Result<Db, CliError> {
        self.open_with(self.options())
    }

    /// Opens with `options` (which should come from [`Target::options`]).
    pub fn open_with(&self, options: Options) -> Result<Db, CliError> {
        Db::open_with(&self.dir, options)
            .map(crate::commands::opened)
            .map_err(open_error)
    }

    /// Opens for reading beside whatever process writes the database (an
    /// application, a running follower): never blocks it, creates nothing.
    pub fn open_reader(&self) -> Result<ReadOnlyDb, CliError> {
        Db::open_read_only_with(&self.dir, self.options()).map_err(open_error)
    }
}

/// The error of an open, with where to give the key it names when none,
/// or not the old one, was given.
pub fn open_error(error: Error) -> CliError {
    let hint = match &error {
        Error::Key(KeyError::Missing {
            rotating_to: Some(_),
            ..
        }) => format!("; pass the old key with --old-key-file FILE or {OLD_KEY_ENV}"),
        Error::Key(KeyError::Missing { given, .. }) if given.is_empty() => {
            format!("; pass it with --key-file FILE or {KEY_ENV}")
        }
        _ => return error.into(),
    };
    let cli = CliError::from(error);
    CliError::new(cli.code, format_args!("{}{hint}", cli.message))
}
