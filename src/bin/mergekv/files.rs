//! Paths the program is given, checked before the library sees them.

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
