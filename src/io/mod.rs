//! The one file-system seam.
//!
//! Every file operation mergekv performs (open, write, fsync, rename, unlink,
//! truncate, read, directory listing, lock) goes through [`Io`]. An `Io` may
//! carry a [`FaultInjector`], which makes the Nth operation of a chosen kind
//! fail, so tests can prove that every failure is fail-stop and loses
//! nothing that was acknowledged; an injector made with
//! [`FaultInjector::with_disk`] also moves every operation onto a
//! [`SimDisk`], an in-memory file system that knows what a power loss would
//! keep (`sim.rs`), so tests can cut the power at every fsync.
//!
//! Directories are created durably ([`Io::create_dir_all`] fsyncs the
//! parent of each one), so nothing made durable inside a new directory can
//! be lost with the directory's entry.
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

mod sim;
pub use sim::{CrashPoint, PAGE_BYTES, PowerCut, SECTOR_BYTES, SimDisk};
use sim::{Open, SimFile};

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

/// The test hooks of the seam: makes chosen file operations fail, and
/// (with [`FaultInjector::with_disk`]) runs them on a simulated disk.
///
/// `fail_nth(IoOp::Sync, 3)` makes the third fsync counted from that call
/// fail; `fail_from_nth` makes that one and every later one fail (a disk
/// that has gone bad stays bad). A failed operation never reaches the disk.
/// Clones share state.
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
    /// The simulated disk every operation runs on, if any.
    disk: Option<SimDisk>,
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

    /// An injector that fails nothing until told to, and whose seams run
    /// every file operation on `disk` instead of the real file system
    /// (paths are then names on that disk only). For power-loss tests; see
    /// [`SimDisk`].
    pub fn with_disk(disk: SimDisk) -> Self {
        Self {
            inner: Arc::new(FaultState {
                disk: Some(disk),
                ..FaultState::default()
            }),
        }
    }

    /// The simulated disk, if the injector was made with one.
    pub fn disk(&self) -> Option<&SimDisk> {
        self.inner.disk.as_ref()
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
    /// The injector's simulated disk, if any: every operation goes there.
    disk: Option<SimDisk>,
}

/// A file opened through [`Io`]; every operation on it goes through the seam.
#[derive(Debug)]
pub struct IoFile {
    file: Backend,
    path: PathBuf,
    io: Io,
}

/// Where an [`IoFile`] lives.
#[derive(Debug)]
enum Backend {
    Os(File),
    Sim(SimFile),
}

impl Io {
    /// A seam over the real file system (or over the injector's simulated
    /// disk, if it has one), failing only where `faults` says.
    pub fn new(faults: Option<FaultInjector>) -> Self {
        let disk = faults.as_ref().and_then(|f| f.disk().cloned());
        Self { faults, disk }
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

    /// Opens `path` as `how` says; `append` makes every write go to the end.
    fn open_as(&self, path: &Path, how: Open, append: bool) -> Result<IoFile> {
        self.check(IoOp::Open, path)?;
        let file = match &self.disk {
            Some(disk) => {
                Backend::Sim(self.wrap(IoOp::Open, path, disk.open(path, how, append))?)
            }
            None => {
                let mut options = OpenOptions::new();
                options.read(true);
                match how {
                    Open::CreateNew => options.create_new(true),
                    Open::CreateTruncate => options.create(true).truncate(true),
                    Open::CreateKeep => options.create(true).truncate(false),
                    Open::Existing => &mut options,
                };
                if append {
                    options.append(true);
                } else {
                    options.write(true);
                }
                Backend::Os(self.wrap(IoOp::Open, path, options.open(path))?)
            }
        };
        Ok(IoFile {
            file,
            path: path.to_path_buf(),
            io: self.clone(),
        })
    }

    /// Creates a new file for appending, failing if it exists.
    pub fn create_new(&self, path: &Path) -> Result<IoFile> {
        self.open_as(path, Open::CreateNew, true)
    }

    /// Creates or truncates a file for writing.
    pub fn create_truncate(&self, path: &Path) -> Result<IoFile> {
        self.open_as(path, Open::CreateTruncate, false)
    }

    /// Opens an existing file for appending.
    pub fn open_append(&self, path: &Path) -> Result<IoFile> {
        self.open_as(path, Open::Existing, true)
    }

    /// Opens an existing file for reading only.
    pub fn open_read(&self, path: &Path) -> Result<IoFile> {
        if self.disk.is_some() {
            // Nothing writes through a read handle; the simulated disk
            // needs no read-only mode to keep that so.
            return self.open_as(path, Open::Existing, false);
        }
        self.check(IoOp::Open, path)?;
        let r = OpenOptions::new().read(true).open(path);
        let file = self.wrap(IoOp::Open, path, r)?;
        Ok(IoFile {
            file: Backend::Os(file),
            path: path.to_path_buf(),
            io: self.clone(),
        })
    }

    /// Opens (creating if needed) a file without truncating it, for locking.
    pub fn open_lock_file(&self, path: &Path) -> Result<IoFile> {
        self.open_as(path, Open::CreateKeep, false)
    }

    /// Reads a whole file.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        self.check(IoOp::Read, path)?;
        let r = match &self.disk {
            Some(disk) => disk.read(path),
            None => fs::read(path),
        };
        self.wrap(IoOp::Read, path, r)
    }

    /// Reads a whole file, or `None` if it does not exist.
    pub fn read_if_exists(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        match self.read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The length of a file in bytes.
    pub fn len_bytes(&self, path: &Path) -> Result<u64> {
        self.check(IoOp::Read, path)?;
        let r = match &self.disk {
            Some(disk) => disk.len_bytes(path),
            None => fs::metadata(path).map(|m| m.len()),
        };
        self.wrap(IoOp::Read, path, r)
    }

    /// Which file-system object `path` is: `(device, inode)` on Unix,
    /// `None` where the platform does not say. A copy of a directory is a
    /// new object; a directory renamed within its file system is not.
    /// The simulated disk has no inodes: `None` (a copy cannot be told).
    pub fn object_id(&self, path: &Path) -> Result<Option<(u64, u64)>> {
        self.check(IoOp::Read, path)?;
        if self.disk.is_some() {
            return Ok(None);
        }
        let metadata = self.wrap(IoOp::Read, path, fs::metadata(path))?;
        Ok(object_id_of(&metadata))
    }

    /// Lists the file names in a directory (names that are not UTF-8 are skipped).
    pub fn list_dir(&self, dir: &Path) -> Result<Vec<String>> {
        self.check(IoOp::Read, dir)?;
        if let Some(disk) = &self.disk {
            return self.wrap(IoOp::Read, dir, disk.list_dir(dir));
        }
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

    /// Creates a directory and its parents, durably: returns once the
    /// parent of every directory it created, and the parent of `dir`
    /// itself, is fsynced, so the directory cannot vanish in a power loss
    /// and take what is later made durable inside it along. (The parent of
    /// an existing `dir` is fsynced too: a directory left by a crashed
    /// process may exist without its entry ever having been made durable.)
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let missing = self.missing_ancestors(dir);
        self.check(IoOp::Open, dir)?;
        let r = match &self.disk {
            Some(disk) => disk.create_dir_all(dir),
            None => fs::create_dir_all(dir),
        };
        self.wrap(IoOp::Open, dir, r)?;
        if missing.is_empty() {
            return self.sync_existing_entry(dir);
        }
        // Outermost first, so each is durable before anything inside it.
        for created in missing.iter().rev() {
            self.sync_dir(parent_dir(created))?;
        }
        Ok(())
    }

    /// Fsyncs the parent of an existing directory. A parent this process
    /// may not read (a directory it does not own, holding the database
    /// directory) cannot be opened to be fsynced: that is no failure, since
    /// the entry was not made by this library; a failed fsync still is.
    fn sync_existing_entry(&self, dir: &Path) -> Result<()> {
        match self.sync_dir(parent_dir(dir)) {
            Err(Error::Io {
                op: IoOp::Open,
                source,
                ..
            }) if source.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
            other => other,
        }
    }

    /// The directories on the way to `dir` (itself first) that do not exist.
    fn missing_ancestors<'a>(&self, dir: &'a Path) -> Vec<&'a Path> {
        dir.ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !self.is_dir(p))
            .collect()
    }

    fn is_dir(&self, path: &Path) -> bool {
        match &self.disk {
            Some(disk) => disk.is_dir(path),
            None => path.is_dir(),
        }
    }

    /// Renames a file (atomic on POSIX file systems).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(IoOp::Rename, from)?;
        let r = match &self.disk {
            Some(disk) => disk.rename(from, to),
            None => fs::rename(from, to),
        };
        self.wrap(IoOp::Rename, from, r)
    }

    /// Removes a file.
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        self.check(IoOp::Remove, path)?;
        let r = match &self.disk {
            Some(disk) => disk.remove_file(path),
            None => fs::remove_file(path),
        };
        self.wrap(IoOp::Remove, path, r)
    }

    /// Makes a directory's entries (creations, renames, removals) durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.check(IoOp::Sync, dir)?;
        if let Some(disk) = &self.disk {
            return self.wrap(IoOp::Sync, dir, disk.sync_dir(dir));
        }
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
        self.sync_dir(parent_dir(path))
    }
}

/// The directory holding `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
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
        let r = match &mut self.file {
            Backend::Os(file) => file.write_all(bytes),
            Backend::Sim(file) => file.write_all(bytes),
        };
        self.io.wrap(IoOp::Write, &self.path, r)
    }

    /// `fdatasync`: the data and the size needed to read it back are durable.
    pub fn sync_data(&self) -> Result<()> {
        self.io.check(IoOp::Sync, &self.path)?;
        let r = match &self.file {
            Backend::Os(file) => file.sync_data(),
            Backend::Sim(file) => file.sync(&self.path),
        };
        self.io.wrap(IoOp::Sync, &self.path, r)
    }

    /// `fsync`: data and all metadata are durable.
    pub fn sync_all(&self) -> Result<()> {
        self.io.check(IoOp::Sync, &self.path)?;
        let r = match &self.file {
            Backend::Os(file) => file.sync_all(),
            Backend::Sim(file) => file.sync(&self.path),
        };
        self.io.wrap(IoOp::Sync, &self.path, r)
    }

    /// Cuts the file to `len_bytes`.
    pub fn truncate(&mut self, len_bytes: u64) -> Result<()> {
        self.io.check(IoOp::Truncate, &self.path)?;
        let r = match &mut self.file {
            Backend::Os(file) => file
                .set_len(len_bytes)
                .and_then(|()| file.seek(SeekFrom::End(0)))
                .map(|_| ()),
            Backend::Sim(file) => file.set_len(len_bytes),
        };
        self.io.wrap(IoOp::Truncate, &self.path, r)
    }

    /// The current length of the file.
    pub fn len_bytes(&self) -> Result<u64> {
        let r = match &self.file {
            Backend::Os(file) => file.metadata().map(|m| m.len()),
            Backend::Sim(file) => file.len_bytes(),
        };
        self.io.wrap(IoOp::Read, &self.path, r)
    }

    /// Reads up to `buf.len()` bytes at `offset_bytes`; fewer only at the
    /// end of the file. Returns how many were read.
    pub fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        self.io.check(IoOp::Read, &self.path)?;
        let file = match &self.file {
            Backend::Os(file) => file,
            Backend::Sim(file) => {
                let r = file.read_at(offset_bytes, buf);
                return self.io.wrap(IoOp::Read, &self.path, r);
            }
        };
        let mut filled = 0;
        while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            let r = file.read_at(rest, offset_bytes + filled as u64);
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
        let r = match &mut self.file {
            Backend::Os(file) => {
                let mut out = Vec::new();
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| file.read_to_end(&mut out))
                    .map(|_| out)
            }
            Backend::Sim(file) => file.read_all(),
        };
        self.io.wrap(IoOp::Read, &self.path, r)
    }

    /// Takes a shared advisory lock without waiting; `Ok(false)` if an
    /// exclusive lock is held on it. (On the simulated disk: fails only if
    /// another handle holds it exclusively.)
    pub fn try_lock_shared(&self) -> Result<bool> {
        let file = match &self.file {
            Backend::Os(file) => file,
            Backend::Sim(file) => return Ok(file.lock_holder_is_none_or_self()),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(IoOp::Open, &self.path, e)),
        }
    }

    /// Takes an exclusive advisory lock without waiting; `Ok(false)` if
    /// another open file description holds it.
    pub fn try_lock_exclusive(&self) -> Result<bool> {
        let file = match &self.file {
            Backend::Os(file) => file,
            Backend::Sim(file) => return Ok(file.try_lock()),
        };
        match file.try_lock() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_directories_survive_a_power_loss_right_after() {
        let disk = SimDisk::new();
        let io = Io::new(Some(FaultInjector::with_disk(disk.clone())));
        io.create_dir_all(Path::new("/data/db/quarantine")).unwrap();
        let point = disk.crash_point_now("right after");
        for cut in point.cuts(1, 4) {
            let survivor = point.survivor(&cut);
            assert!(survivor.is_dir(Path::new("/data/db/quarantine")), "{cut}");
        }
        // A directory that exists already has its entry made durable too
        // (a crashed process may have created it without that).
        let disk = SimDisk::new();
        let faults = FaultInjector::with_disk(disk.clone());
        let io = Io::new(Some(faults.clone()));
        disk.create_dir_all(Path::new("/wal")).unwrap();
        let syncs = disk.syncs();
        io.create_dir_all(Path::new("/wal")).unwrap();
        assert_eq!(disk.syncs(), syncs + 1);
        let point = disk.crash_point_now("after");
        assert!(point.is_quiet());
    }
}
