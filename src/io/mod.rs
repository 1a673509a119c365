//! The one file-system seam.
//!
//! Every file operation mergekv performs (open, write, fsync, rename, unlink,
//! truncate, read, directory listing) goes through [`Io`]. An `Io` may carry a
//! [`FaultInjector`], which makes the Nth operation of a chosen kind fail, so
//! tests can prove that every failure is fail-stop and loses nothing that was
//! acknowledged.
//!
//! Errors are returned as [`crate::Error::Io`], naming the operation and the
//! path, so a user reading the message knows which file to look at.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

pub use crate::error::IoOp;
use crate::error::{Error, Result};

/// The name `<prefix><seq as 20 digits><suffix>`: zero-padded so that names
/// sort in sequence order.
pub fn numbered_file_name(prefix: &str, seq: u64, suffix: &str) -> String {
    format!("{prefix}{seq:020}{suffix}")
}

/// The sequence number in a name made by [`numbered_file_name`], if `name`
/// is exactly such a name.
pub fn parse_numbered_file_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Makes chosen file operations fail, for tests.
///
/// `fail_nth(IoOp::Sync, 3)` makes the third fsync counted from that call
/// fail; `fail_from_nth` makes that one and every later one fail (a disk
/// that has gone bad stays bad). Clones share state.
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    inner: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    counts: [AtomicU64; IoOp::ALL.len()],
    plan: Mutex<Vec<FaultRule>>,
    injected: AtomicU64,
    /// Commits counted so far, and the one that must panic (0: none).
    commits: AtomicU64,
    commit_panic_at: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct FaultRule {
    op: IoOp,
    nth: u64,
    sticky: bool,
}

impl FaultInjector {
    /// An injector that fails nothing until told to.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `nth` (1-based, counted from now) operation of kind `op` fail.
    pub fn fail_nth(&self, op: IoOp, nth: u64) {
        let start = self.count(op);
        self.inner.plan.lock().push(FaultRule {
            op,
            nth: start + nth,
            sticky: false,
        });
    }

    /// Makes the `nth` operation of kind `op` and every later one fail.
    pub fn fail_from_nth(&self, op: IoOp, nth: u64) {
        let start = self.count(op);
        self.inner.plan.lock().push(FaultRule {
            op,
            nth: start + nth,
            sticky: true,
        });
    }

    /// Removes every planned failure.
    pub fn clear(&self) {
        self.inner.plan.lock().clear();
    }

    /// How many operations of kind `op` have been attempted so far.
    pub fn count(&self, op: IoOp) -> u64 {
        self.counter(op).load(Ordering::SeqCst)
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "op.index() < IoOp::ALL.len() == counts.len(): one counter per kind"
    )]
    fn counter(&self, op: IoOp) -> &AtomicU64 {
        &self.inner.counts[op.index()]
    }

    /// Makes the `nth` (1-based, counted from now) commit panic between its
    /// WAL append and its update of the state map, to prove that a panic
    /// on any commit path poisons the database instead of hanging it.
    pub fn panic_nth_commit(&self, nth: u64) {
        let start = self.inner.commits.load(Ordering::SeqCst);
        self.inner
            .commit_panic_at
            .store(start + nth, Ordering::SeqCst);
    }

    /// Counts one commit and says whether it must panic.
    pub(crate) fn commit_should_panic(&self) -> bool {
        let n = self.inner.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let panics = n == self.inner.commit_panic_at.load(Ordering::SeqCst);
        if panics {
            self.inner.injected.fetch_add(1, Ordering::SeqCst);
        }
        panics
    }

    /// How many failures have been injected so far.
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::SeqCst)
    }

    /// Counts one operation and says whether it must fail.
    fn should_fail(&self, op: IoOp) -> bool {
        let n = self.counter(op).fetch_add(1, Ordering::SeqCst) + 1;
        let fails = self
            .inner
            .plan
            .lock()
            .iter()
            .any(|rule| rule.op == op && (n == rule.nth || (rule.sticky && n >= rule.nth)));
        if fails {
            self.inner.injected.fetch_add(1, Ordering::SeqCst);
        }
        fails
    }
}

/// The file-system seam. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Io {
    faults: Option<FaultInjector>,
}

/// A file opened through [`Io`]; every operation on it goes through the seam.
#[derive(Debug)]
pub struct IoFile {
    file: File,
    path: PathBuf,
    io: Io,
}

impl Io {
    /// A seam over the real file system, failing only where `faults` says.
    pub fn new(faults: Option<FaultInjector>) -> Self {
        Self { faults }
    }

    fn check(&self, op: IoOp, path: &Path) -> Result<()> {
        match &self.faults {
            Some(f) if f.should_fail(op) => {
                Err(Error::io(op, path, std::io::Error::other("injected fault")))
            }
            _ => Ok(()),
        }
    }

    fn wrap<T>(&self, op: IoOp, path: &Path, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| Error::io(op, path, e))
    }

    /// Creates a new file for appending, failing if it exists.
    pub fn create_new(&self, path: &Path) -> Result<IoFile> {
        self.check(IoOp::Open, path)?;
        let r = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path);
        let file = self.wrap(IoOp::Open, path, r)?;
        Ok(self.file(file, path))
    }

    /// Creates or truncates a file for writing.
    pub fn create_truncate(&self, path: &Path) -> Result<IoFile> {
        self.check(IoOp::Open, path)?;
        let r = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path);
        let file = self.wrap(IoOp::Open, path, r)?;
        Ok(self.file(file, path))
    }

    /// Opens an existing file for appending.
    pub fn open_append(&self, path: &Path) -> Result<IoFile> {
        self.check(IoOp::Open, path)?;
        let r = OpenOptions::new().read(true).append(true).open(path);
        let file = self.wrap(IoOp::Open, path, r)?;
        Ok(self.file(file, path))
    }

    /// Opens an existing file for reading only.
    pub fn open_read(&self, path: &Path) -> Result<IoFile> {
        self.check(IoOp::Open, path)?;
        let r = OpenOptions::new().read(true).open(path);
        let file = self.wrap(IoOp::Open, path, r)?;
        Ok(self.file(file, path))
    }

    /// Opens (creating if needed) a file without truncating it, for locking.
    pub fn open_lock_file(&self, path: &Path) -> Result<IoFile> {
        self.check(IoOp::Open, path)?;
        let r = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path);
        let file = self.wrap(IoOp::Open, path, r)?;
        Ok(self.file(file, path))
    }

    fn file(&self, file: File, path: &Path) -> IoFile {
        IoFile {
            file,
            path: path.to_path_buf(),
            io: self.clone(),
        }
    }

    /// Reads a whole file.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        self.check(IoOp::Read, path)?;
        self.wrap(IoOp::Read, path, fs::read(path))
    }

    /// Reads a whole file, or `None` if it does not exist.
    pub fn read_if_exists(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        self.check(IoOp::Read, path)?;
        match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(IoOp::Read, path, e)),
        }
    }

    /// The length of a file in bytes.
    pub fn len_bytes(&self, path: &Path) -> Result<u64> {
        self.check(IoOp::Read, path)?;
        self.wrap(IoOp::Read, path, fs::metadata(path).map(|m| m.len()))
    }

    /// Which file-system object `path` is: `(device, inode)` on Unix,
    /// `None` where the platform does not say. A copy of a directory is a
    /// new object; a directory renamed within its file system is not.
    pub fn object_id(&self, path: &Path) -> Result<Option<(u64, u64)>> {
        self.check(IoOp::Read, path)?;
        let metadata = self.wrap(IoOp::Read, path, fs::metadata(path))?;
        Ok(object_id_of(&metadata))
    }

    /// Lists the file names in a directory (names that are not UTF-8 are skipped).
    pub fn list_dir(&self, dir: &Path) -> Result<Vec<String>> {
        self.check(IoOp::Read, dir)?;
        let entries = self.wrap(IoOp::Read, dir, fs::read_dir(dir))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = self.wrap(IoOp::Read, dir, entry)?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Lists the file names in a directory; a directory that does not exist
    /// lists as empty.
    pub fn list_dir_if_exists(&self, dir: &Path) -> Result<Vec<String>> {
        match self.list_dir(dir) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Creates a directory and its parents.
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        self.check(IoOp::Open, dir)?;
        self.wrap(IoOp::Open, dir, fs::create_dir_all(dir))
    }

    /// Renames a file (atomic on POSIX file systems).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(IoOp::Rename, from)?;
        self.wrap(IoOp::Rename, from, fs::rename(from, to))
    }

    /// Removes a file.
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        self.check(IoOp::Remove, path)?;
        self.wrap(IoOp::Remove, path, fs::remove_file(path))
    }

    /// Makes a directory's entries (creations, renames, removals) durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.check(IoOp::Sync, dir)?;
        let dir_file = self.wrap(IoOp::Open, dir, File::open(dir))?;
        self.wrap(IoOp::Sync, dir, dir_file.sync_all())
    }

    /// Writes a file atomically: temp file, fsync, rename, directory fsync.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = self.create_truncate(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        self.rename(&tmp, path)?;
        let parent = path.parent().unwrap_or(Path::new("."));
        self.sync_dir(parent)
    }
}

impl IoFile {
    /// The path this file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.check(IoOp::Write, &self.path)?;
        let r = self.file.write_all(bytes);
        self.io.wrap(IoOp::Write, &self.path, r)
    }

    /// `fdatasync`: the data and the size needed to read it back are durable.
    pub fn sync_data(&self) -> Result<()> {
        self.io.check(IoOp::Sync, &self.path)?;
        self.io.wrap(IoOp::Sync, &self.path, self.file.sync_data())
    }

    /// `fsync`: data and all metadata are durable.
    pub fn sync_all(&self) -> Result<()> {
        self.io.check(IoOp::Sync, &self.path)?;
        self.io.wrap(IoOp::Sync, &self.path, self.file.sync_all())
    }

    /// Cuts the file to `len_bytes`.
    pub fn truncate(&mut self, len_bytes: u64) -> Result<()> {
        self.io.check(IoOp::Truncate, &self.path)?;
        let r = self.file.set_len(len_bytes);
        self.io.wrap(IoOp::Truncate, &self.path, r)?;
        let r = self.file.seek(SeekFrom::End(0));
        self.io.wrap(IoOp::Truncate, &self.path, r).map(|_| ())
    }

    /// The current length of the file.
    pub fn len_bytes(&self) -> Result<u64> {
        let r = self.file.metadata().map(|m| m.len());
        self.io.wrap(IoOp::Read, &self.path, r)
    }

    /// Reads up to `buf.len()` bytes at `offset_bytes`; fewer only at the
    /// end of the file. Returns how many were read.
    pub fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        self.io.check(IoOp::Read, &self.path)?;
        let mut filled = 0;
        while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            let r = self.file.read_at(rest, offset_bytes + filled as u64);
            match self.io.wrap(IoOp::Read, &self.path, r)? {
                0 => break,
                n => filled += n,
            }
        }
        debug_assert!(filled <= buf.len());
        Ok(filled)
    }

    /// Reads the whole file from the start.
    pub fn read_all(&mut self) -> Result<Vec<u8>> {
        self.io.check(IoOp::Read, &self.path)?;
        let mut out = Vec::new();
        let r = self
            .file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_end(&mut out));
        self.io.wrap(IoOp::Read, &self.path, r)?;
        Ok(out)
    }

    /// Takes an exclusive advisory lock without waiting; `Ok(false)` if
    /// another open file description holds it.
    pub fn try_lock_exclusive(&self) -> Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(IoOp::Open, &self.path, e)),
        }
    }
}

#[cfg(unix)]
fn object_id_of(metadata: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn object_id_of(_metadata: &fs::Metadata) -> Option<(u64, u64)> {
    None
}
