//! Paths the program is given, checked before the library sees them, and
//! the files it writes outside the database.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::error::CliError;

/// Refuses a directory path given as `flag` (`--data DIR`) that exists but
/// is not a directory, or lies under a file: the operating system would
/// only say "File exists" or "Not a directory" about some file inside it.
/// A path that does not exist yet is fine (writes create it); one that
/// cannot be looked at is left for the open to report.
pub fn check_dir_path(path: &Path, flag: &str) -> Result<(), CliError> {
    let file = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_dir()));
    match file {
        None => Ok(()),
        Some(file) if file == path => Err(CliError::data(format_args!(
            "{flag} {} is not a directory",
            path.display()
        ))),
        Some(file) => Err(CliError::data(format_args!(
            "{flag} {}: {} is not a directory",
            path.display(),
            file.display()
        ))),
    }
}

/// Writes `bytes` to `path` whole or not at all: into a new temporary file
/// beside it, fsynced, then renamed over `path`; the directory is fsynced
/// so that the rename survives a power loss. On failure the temporary file
/// is removed and `path` is as it was, so a reader never finds half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = dir.join(temp_name(path)?);
    // create_new: a file of that name is someone else's, never ours to remove.
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `.NAME.PID.tmp`: hidden, and distinct for each running process.
fn temp_name(path: &Path) -> io::Result<OsString> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not end in a file name",
        )
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", std::process::id()));
    Ok(tmp)
}
