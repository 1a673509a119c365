//! The simulated disk: an in-memory file system that knows, at every
//! moment, what a power loss would keep. A test hook: a seam built from a
//! [`FaultInjector::with_disk`](super::FaultInjector::with_disk) injector
//! runs every file operation on a [`SimDisk`] instead of the real file
//! system.
//!
//! What is durable, as on a POSIX file system that promises no more than
//! POSIX does:
//!
//! - a file's bytes and size, as of its last fsync (`fdatasync` and
//!   `fsync` alike); writes and truncations since are *pending*;
//! - a directory's entries, as of its last fsync; creations, renames and
//!   removals since are *pending metadata operations*, kept in the order
//!   they were made. An fsync of a directory makes its own pending
//!   operations durable (and the earlier ones they depend on: those on the
//!   same directories), never its parent's entry for it, so a directory
//!   (or file) whose parent was never fsynced since its creation vanishes,
//!   with everything in it;
//! - a rename is atomic: after a power loss the file is under one name or
//!   the other.
//!
//! While recording (see [`SimDisk::record_crash_points`]), the disk keeps a
//! [`CrashPoint`] just before every fsync: what was durable then, and what
//! was pending. [`CrashPoint::cuts`] lists the ways a power loss at that
//! moment can leave the disk, and [`CrashPoint::survivor`] builds the disk
//! that survives one of them:
//!
//! - pending metadata operations: none, all, or any prefix of them (a
//!   journal writes them in order);
//! - pending data: none, all, the last write torn at a sector (512 B) or
//!   page (4 KiB) boundary, the last write with its size landed but one of
//!   its pages not (a hole that reads as zeros: pages of an unsynced write
//!   reach the disk in any order), or every page of every pending write
//!   kept or lost at random.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Error as IoError, ErrorKind};
use std::path::{Component, Path};
use std::sync::Arc;

use parking_lot::Mutex;

/// The smallest unit a disk writes whole: torn writes are cut at multiples
/// of it.
pub const SECTOR_BYTES: u64 = 512;
/// A page of the page cache: the unit in which unsynced writes reach the
/// disk, in any order.
pub const PAGE_BYTES: u64 = 4096;
/// Most cut positions tried per torn write and page size, and most pages
/// punched out as holes per write; the rest are sampled by the random cuts.
const SYSTEMATIC_CUTS_MAX: usize = 4;
/// Most metadata prefixes tried systematically at one crash point.
const META_PREFIXES_MAX: usize = 6;

type NodeId = u64;
const ROOT: NodeId = 0;

/// A pending change to a file's data.
#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, bytes: Arc<[u8]> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct FileNode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a power loss: the data as of the last fsync.
    durable: Arc<Vec<u8>>,
    /// Changes since the last fsync, in order.
    pending: Vec<FileOp>,
}

#[derive(Clone, Debug, Default)]
struct DirNode {
    /// What lookups see.
    entries: BTreeMap<String, NodeId>,
    /// What survives a power loss (before pending operations).
    durable: BTreeMap<String, NodeId>,
}

#[derive(Clone, Debug)]
enum Node {
    File(FileNode),
    Dir(DirNode),
}

/// A pending directory operation.
#[derive(Clone, Debug)]
enum MetaOp {
    Link {
        dir: NodeId,
        name: String,
        node: NodeId,
    },
    Unlink {
        dir: NodeId,
        name: String,
    },
    Rename {
        from_dir: NodeId,
        from_name: String,
        to_dir: NodeId,
        to_name: String,
        node: NodeId,
    },
}

impl MetaOp {
    fn dirs(&self) -> [NodeId; 2] {
        match self {
            MetaOp::Link { dir, .. } | MetaOp::Unlink { dir, .. } => [*dir, *dir],
            MetaOp::Rename {
                from_dir, to_dir, ..
            } => [*from_dir, *to_dir],
        }
    }

    /// Applies the operation to durable directory maps.
    fn apply(&self, dirs: &mut HashMap<NodeId, BTreeMap<String, NodeId>>) {
        match self {
            MetaOp::Link { dir, name, node } => {
                dirs.entry(*dir).or_default().insert(name.clone(), *node);
            }
            MetaOp::Unlink { dir, name } => {
                dirs.entry(*dir).or_default().remove(name);
            }
            MetaOp::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                node,
            } => {
                dirs.entry(*from_dir).or_default().remove(from_name);
                dirs.entry(*to_dir)
                    .or_default()
                    .insert(to_name.clone(), *node);
            }
        }
    }
}

#[derive(Debug)]
struct Disk {
    nodes: HashMap<NodeId, Node>,
    next_node: NodeId,
    /// Directory operations not yet durable, in the order they were made.
    meta_pending: Vec<MetaOp>,
    /// Locked files and the handle holding each lock.
    locks: HashMap<NodeId, u64>,
    next_handle: u64,
    recording: bool,
    crash_points: Vec<CrashPoint>,
    crash_points_taken: usize,
    syncs: u64,
}

impl Default for Disk {
    fn default() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::Dir(DirNode::default()));
        Disk {
            nodes,
            next_node: ROOT + 1,
            meta_pending: Vec::new(),
            locks: HashMap::new(),
            next_handle: 1,
            recording: false,
            crash_points: Vec::new(),
            crash_points_taken: 0,
            syncs: 0,
        }
    }
}

fn not_found(what: &str) -> IoError {
    IoError::new(ErrorKind::NotFound, format!("simulated disk: no {what}"))
}

fn other(what: &str) -> IoError {
    IoError::other(format!("simulated disk: {what}"))
}

/// The names along an absolute or relative path (`.` is skipped; `..` and
/// prefixes are refused).
fn names(path: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(
                name.to_str()
                    .ok_or_else(|| other("path is not UTF-8"))?
                    .to_string(),
            ),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(other("`..` and path prefixes are not simulated"));
            }
        }
    }
    Ok(out)
}

impl Disk {
    fn dir(&self, node: NodeId) -> std::io::Result<&DirNode> {
        match self.nodes.get(&node) {
            Some(Node::Dir(dir)) => Ok(dir),
            Some(Node::File(_)) => Err(other("not a directory")),
            None => Err(not_found("directory")),
        }
    }

    fn dir_mut(&mut self, node: NodeId) -> std::io::Result<&mut DirNode> {
        match self.nodes.get_mut(&node) {
            Some(Node::Dir(dir)) => Ok(dir),
            Some(Node::File(_)) => Err(other("not a directory")),
            None => Err(not_found("directory")),
        }
    }

    fn file(&self, node: NodeId) -> std::io::Result<&FileNode> {
        match self.nodes.get(&node) {
            Some(Node::File(file)) => Ok(file),
            Some(Node::Dir(_)) => Err(other("is a directory")),
            None => Err(not_found("file")),
        }
    }

    fn file_mut(&mut self, node: NodeId) -> std::io::Result<&mut FileNode> {
        match self.nodes.get_mut(&node) {
            Some(Node::File(file)) => Ok(file),
            Some(Node::Dir(_)) => Err(other("is a directory")),
            None => Err(not_found("file")),
        }
    }

    /// The node at `path`, if it exists.
    fn lookup(&self, path: &Path) -> std::io::Result<Option<NodeId>> {
        let mut node = ROOT;
        for name in names(path)? {
            match self.dir(node)?.entries.get(&name) {
                Some(child) => node = *child,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// The directory holding `path`'s last component, and that name.
    fn parent_of(&self, path: &Path) -> std::io::Result<(NodeId, String)> {
        let mut parts = names(path)?;
        let name = parts.pop().ok_or_else(|| other("no file name"))?;
        let mut node = ROOT;
        for part in parts {
            node = *self
                .dir(node)?
                .entries
                .get(&part)
                .ok_or_else(|| not_found("parent directory"))?;
        }
        self.dir(node)?;
        Ok((node, name))
    }

    fn new_node(&mut self, node: Node) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        self.nodes.insert(id, node);
        id
    }

    fn link(&mut self, dir: NodeId, name: &str, node: NodeId) -> std::io::Result<()> {
        self.dir_mut(dir)?.entries.insert(name.to_string(), node);
        self.meta_pending.push(MetaOp::Link {
            dir,
            name: name.to_string(),
            node,
        });
        Ok(())
    }

    fn open_file(&mut self, path: &Path, how: Open) -> std::io::Result<NodeId> {
        let (dir, name) = self.parent_of(path)?;
        match self.dir(dir)?.entries.get(&name).copied() {
            Some(_) if how == Open::CreateNew => Err(IoError::new(
                ErrorKind::AlreadyExists,
                "simulated disk: file exists",
            )),
            Some(node) => {
                let file = self.file_mut(node)?;
                if how == Open::CreateTruncate && !file.data.is_empty() {
                    file.data.clear();
                    file.pending.push(FileOp::SetLen(0));
                }
                Ok(node)
            }
            None if how == Open::Existing => Err(not_found("file")),
            None => {
                let node = self.new_node(Node::File(FileNode::default()));
                self.link(dir, &name, node)?;
                Ok(node)
            }
        }
    }

    fn create_dir_all(&mut self, path: &Path) -> std::io::Result<()> {
        let mut node = ROOT;
        for name in names(path)? {
            node = match self.dir(node)?.entries.get(&name).copied() {
                Some(child) => {
                    self.dir(child)?;
                    child
                }
                None => {
                    let child = self.new_node(Node::Dir(DirNode::default()));
                    self.link(node, &name, child)?;
                    child
                }
            };
        }
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        let node = self
            .dir_mut(from_dir)?
            .entries
            .remove(&from_name)
            .ok_or_else(|| not_found("file to rename"))?;
        self.dir_mut(to_dir)?.entries.insert(to_name.clone(), node);
        self.meta_pending.push(MetaOp::Rename {
            from_dir,
            from_name,
            to_dir,
            to_name,
            node,
        });
        Ok(())
    }

    fn remove_file(&mut self, path: &Path) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        let node = *self
            .dir(dir)?
            .entries
            .get(&name)
            .ok_or_else(|| not_found("file to remove"))?;
        self.file(node)?;
        self.dir_mut(dir)?.entries.remove(&name);
        self.meta_pending.push(MetaOp::Unlink { dir, name });
        Ok(())
    }

    fn write(&mut self, node: NodeId, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let file = self.file_mut(node)?;
        let start = usize::try_from(offset).map_err(|_| other("offset too large"))?;
        let end = start + bytes.len();
        if file.data.len() < end {
            file.data.resize(end, 0);
        }
        if let Some(target) = file.data.get_mut(start..end) {
            target.copy_from_slice(bytes);
        }
        file.pending.push(FileOp::Write {
            offset,
            bytes: Arc::from(bytes),
        });
        Ok(())
    }

    fn set_len(&mut self, node: NodeId, len_bytes: u64) -> std::io::Result<()> {
        let file = self.file_mut(node)?;
        let len = usize::try_from(len_bytes).map_err(|_| other("length too large"))?;
        file.data.resize(len, 0);
        file.pending.push(FileOp::SetLen(len_bytes));
        Ok(())
    }

    fn record(&mut self, label: String) {
        if self.recording {
            let point = self.crash_point(label);
            self.crash_points.push(point);
        }
        self.crash_points_taken += usize::from(self.recording);
    }

    fn sync_file(&mut self, node: NodeId, label: String) -> std::io::Result<()> {
        self.file(node)?;
        self.record(label);
        self.syncs += 1;
        let file = self.file_mut(node)?;
        file.durable = Arc::new(file.data.clone());
        file.pending.clear();
        Ok(())
    }

    /// Makes `dir`'s pending operations durable, with the earlier ones on
    /// the same directories that they depend on.
    fn sync_dir(&mut self, dir: NodeId, label: String) -> std::io::Result<()> {
        self.dir(dir)?;
        self.record(label);
        self.syncs += 1;
        let mut involved: HashSet<NodeId> = HashSet::from([dir]);
        let mut forced = vec![false; self.meta_pending.len()];
        for (i, op) in self.meta_pending.iter().enumerate().rev() {
            if op.dirs().iter().any(|d| involved.contains(d)) {
                involved.extend(op.dirs());
                if let Some(flag) = forced.get_mut(i) {
                    *flag = true;
                }
            }
        }
        let mut durable = self.durable_dirs();
        let mut kept = Vec::new();
        for (op, forced) in std::mem::take(&mut self.meta_pending)
            .into_iter()
            .zip(forced)
        {
            if forced {
                op.apply(&mut durable);
            } else {
                kept.push(op);
            }
        }
        self.meta_pending = kept;
        for (id, entries) in durable {
            if let Ok(d) = self.dir_mut(id) {
                d.durable = entries;
            }
        }
        Ok(())
    }

    fn durable_dirs(&self) -> HashMap<NodeId, BTreeMap<String, NodeId>> {
        self.nodes
            .iter()
            .filter_map(|(id, node)| match node {
                Node::Dir(dir) => Some((*id, dir.durable.clone())),
                Node::File(_) => None,
            })
            .collect()
    }

    fn crash_point(&self, label: String) -> CrashPoint {
        let files = self
            .nodes
            .iter()
            .filter_map(|(id, node)| match node {
                Node::File(f) => Some((*id, (f.durable.clone(), f.pending.clone()))),
                Node::Dir(_) => None,
            })
            .collect();
        CrashPoint {
            index: self.crash_points_taken,
            label,
            dirs: self.durable_dirs(),
            meta_pending: self.meta_pending.clone(),
            files,
        }
    }
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Open {
    /// Create it; fail if it exists.
    CreateNew,
    /// Create it, or empty it if it exists.
    CreateTruncate,
    /// Create it if needed; keep what it holds.
    CreateKeep,
    /// It must exist.
    Existing,
}

/// An in-memory file system that knows what a power loss keeps; see the
/// module docs. Cheap to clone; clones share the disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<Disk>>,
}

impl SimDisk {
    /// An empty disk (just the root directory, durable).
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts (or stops) keeping a [`CrashPoint`] before every fsync.
    pub fn record_crash_points(&self, on: bool) {
        self.inner.lock().recording = on;
    }

    /// How many crash points were taken while recording, since the disk
    /// was made: the index the next one will get.
    pub fn crash_points_taken(&self) -> usize {
        self.inner.lock().crash_points_taken
    }

    /// Takes the crash points kept so far, oldest first.
    pub fn take_crash_points(&self) -> Vec<CrashPoint> {
        std::mem::take(&mut self.inner.lock().crash_points)
    }

    /// The crash point of a power loss now (not kept in the list), with
    /// the index the next recorded one would get.
    pub fn crash_point_now(&self, label: &str) -> CrashPoint {
        self.inner.lock().crash_point(label.to_string())
    }

    /// fsyncs (of files and directories) done so far.
    pub fn syncs(&self) -> u64 {
        self.inner.lock().syncs
    }

    /// A file's contents as reads see them, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        self.read(path).ok()
    }

    pub(crate) fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let disk = self.inner.lock();
        let node = disk.lookup(path)?.ok_or_else(|| not_found("file"))?;
        Ok(disk.file(node)?.data.clone())
    }

    pub(crate) fn len_bytes(&self, path: &Path) -> std::io::Result<u64> {
        let disk = self.inner.lock();
        let node = disk.lookup(path)?.ok_or_else(|| not_found("file"))?;
        Ok(disk.file(node)?.data.len() as u64)
    }

    /// True if `path` is a directory, as lookups see it.
    pub fn is_dir(&self, path: &Path) -> bool {
        let disk = self.inner.lock();
        matches!(disk.lookup(path), Ok(Some(node)) if disk.dir(node).is_ok())
    }

    pub(crate) fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        let disk = self.inner.lock();
        let node = disk.lookup(path)?.ok_or_else(|| not_found("directory"))?;
        Ok(disk.dir(node)?.entries.keys().cloned().collect())
    }

    pub(crate) fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.lock().create_dir_all(path)
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.lock().rename(from, to)
    }

    pub(crate) fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.lock().remove_file(path)
    }

    pub(crate) fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        let mut disk = self.inner.lock();
        let node = disk.lookup(path)?.ok_or_else(|| not_found("directory"))?;
        disk.sync_dir(
            node,
            format!("before the fsync of directory {}", path.display()),
        )
    }

    pub(crate) fn open(&self, path: &Path, how: Open, append: bool) -> std::io::Result<SimFile> {
        let mut disk = self.inner.lock();
        let node = disk.open_file(path, how)?;
        let id = disk.next_handle;
        disk.next_handle += 1;
        Ok(SimFile {
            disk: self.clone(),
            node,
            id,
            pos: 0,
            append,
        })
    }
}

/// An open file on a [`SimDisk`]; its lock, if any, is released on drop.
#[derive(Debug)]
pub(crate) struct SimFile {
    disk: SimDisk,
    node: NodeId,
    id: u64,
    pos: u64,
    append: bool,
}

impl SimFile {
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut disk = self.disk.inner.lock();
        if self.append {
            self.pos = disk.file(self.node)?.data.len() as u64;
        }
        disk.write(self.node, self.pos, bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    pub(crate) fn sync(&self, path: &Path) -> std::io::Result<()> {
        let label = format!("before the fsync of {}", path.display());
        self.disk.inner.lock().sync_file(self.node, label)
    }

    /// Cuts or extends the file, and moves the position to its end.
    pub(crate) fn set_len(&mut self, len_bytes: u64) -> std::io::Result<()> {
        self.disk.inner.lock().set_len(self.node, len_bytes)?;
        self.pos = len_bytes;
        Ok(())
    }

    pub(crate) fn len_bytes(&self) -> std::io::Result<u64> {
        Ok(self.disk.inner.lock().file(self.node)?.data.len() as u64)
    }

    pub(crate) fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let disk = self.disk.inner.lock();
        let data = &disk.file(self.node)?.data;
        let start = usize::try_from(offset_bytes).unwrap_or(usize::MAX);
        let available = data.get(start..).unwrap_or_default();
        let n = available.len().min(buf.len());
        if let (Some(target), Some(source)) = (buf.get_mut(..n), available.get(..n)) {
            target.copy_from_slice(source);
        }
        Ok(n)
    }

    pub(crate) fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        let data = self.disk.inner.lock().file(self.node)?.data.clone();
        self.pos = data.len() as u64;
        Ok(data)
    }

    /// True if no other handle holds this file's lock.
    pub(crate) fn lock_holder_is_none_or_self(&self) -> bool {
        let disk = self.disk.inner.lock();
        disk.locks
            .get(&self.node)
            .is_none_or(|holder| *holder == self.id)
    }

    pub(crate) fn try_lock(&self) -> bool {
        let mut disk = self.disk.inner.lock();
        let holder = *disk.locks.entry(self.node).or_insert(self.id);
        holder == self.id
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut disk = self.disk.inner.lock();
        if disk.locks.get(&self.node) == Some(&self.id) {
            disk.locks.remove(&self.node);
        }
    }
}

/// What was durable and what was pending at one moment: the states a power
/// loss then can leave are [`CrashPoint::cuts`].
#[derive(Clone, Debug)]
pub struct CrashPoint {
    index: usize,
    label: String,
    dirs: HashMap<NodeId, BTreeMap<String, NodeId>>,
    meta_pending: Vec<MetaOp>,
    files: HashMap<NodeId, (Arc<Vec<u8>>, Vec<FileOp>)>,
}

/// Which pending data survives, file by file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DataCut {
    /// Only what was fsynced.
    None,
    /// Everything written (what a process crash keeps).
    All,
    /// Everything but the last write of each file, which ends after its
    /// first `units` units of `unit_bytes` (counted from the write's start,
    /// units aligned to file offsets).
    Torn { unit_bytes: u64, units: usize },
    /// Everything, but unit `unit` of the last write of each file is a
    /// hole of zeros (its size landed, its data did not).
    Hole { unit_bytes: u64, unit: usize },
    /// Each page of each pending write kept or not, from `seed`; with
    /// `holes`, a lost page past the durable size reads as zeros.
    Random { seed: u64, holes: bool },
}

/// One way a power loss at a [`CrashPoint`] can leave the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerCut {
    /// Pending directory operations that landed: a prefix.
    meta_ops: usize,
    data: DataCut,
}

impl std::fmt::Display for PowerCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pending dir ops kept, data: ", self.meta_ops)?;
        match &self.data {
            DataCut::None => write!(f, "unsynced dropped"),
            DataCut::All => write!(f, "all kept"),
            DataCut::Torn { unit_bytes, units } => {
                write!(f, "last write torn after {units} x {unit_bytes} B")
            }
            DataCut::Hole { unit_bytes, unit } => {
                write!(
                    f,
                    "last write with a zeroed {unit_bytes} B hole at unit {unit}"
                )
            }
            DataCut::Random { seed, holes } => {
                write!(f, "pages kept at random (seed {seed}, holes {holes})")
            }
        }
    }
}

/// A small deterministic generator (xorshift64*) for the random cuts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The pieces of a write, cut at multiples of `unit_bytes` of the file
/// offset: `(start offset, bytes)`.
fn pieces(offset: u64, bytes: &[u8], unit_bytes: u64) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut at = offset;
    while !rest.is_empty() {
        let room = (unit_bytes - at % unit_bytes) as usize;
        let (piece, tail) = rest.split_at(room.min(rest.len()));
        out.push((at, piece));
        at += piece.len() as u64;
        rest = tail;
    }
    out
}

/// Up to `max` values spread over `0..n`: the ends first, then between.
fn spread(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut out: Vec<usize> = (0..max).map(|i| i * (n - 1) / (max - 1).max(1)).collect();
    out.dedup();
    out
}

impl CrashPoint {
    /// Its position among the crash points of its disk (0 for the first).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Where it was taken ("before the fsync of ...").
    pub fn label(&self) -> &str {
        &self.label
    }

    /// True if nothing was pending: every cut leaves the same disk.
    pub fn is_quiet(&self) -> bool {
        self.meta_pending.is_empty() && self.files.values().all(|(_, p)| p.is_empty())
    }

    /// The ways a power loss here can leave the disk: nothing pending kept,
    /// everything kept, prefixes of the directory operations, the last
    /// write of each file torn at sector and page boundaries or holed, and
    /// `random` cuts drawn from `seed`.
    pub fn cuts(&self, seed: u64, random: usize) -> Vec<PowerCut> {
        let meta = self.meta_pending.len();
        let cut = |meta_ops, data| PowerCut { meta_ops, data };
        let mut out = vec![cut(0, DataCut::None), cut(meta, DataCut::All)];
        if self.is_quiet() {
            out.truncate(1);
            return out;
        }
        let has_data = self.files.values().any(|(_, p)| !p.is_empty());
        if meta > 0 && has_data {
            out.push(cut(meta, DataCut::None));
            out.push(cut(0, DataCut::All));
        }
        for k in spread(meta.saturating_sub(1), META_PREFIXES_MAX) {
            out.push(cut(k + 1, DataCut::All));
        }
        let units = |unit_bytes| self.last_write_units(unit_bytes);
        for unit_bytes in [SECTOR_BYTES, PAGE_BYTES] {
            for kept in spread(units(unit_bytes), SYSTEMATIC_CUTS_MAX) {
                out.push(cut(
                    meta,
                    DataCut::Torn {
                        unit_bytes,
                        units: kept,
                    },
                ));
            }
        }
        let pages = units(PAGE_BYTES);
        if pages >= 3 {
            for unit in spread(pages - 2, SYSTEMATIC_CUTS_MAX) {
                let hole = DataCut::Hole {
                    unit_bytes: PAGE_BYTES,
                    unit: unit + 1,
                };
                out.push(cut(meta, hole));
            }
        }
        let mut rng = Rng(seed.max(1) ^ (self.index as u64).wrapping_mul(0x9e37_79b9));
        for _ in 0..random {
            let meta_ops = rng.below(meta as u64 + 1) as usize;
            let data = DataCut::Random {
                seed: rng.next(),
                holes: rng.below(2) == 0,
            };
            out.push(cut(meta_ops, data));
        }
        out.dedup();
        out
    }

    /// The most units of `unit_bytes` in the last pending write of any file.
    fn last_write_units(&self, unit_bytes: u64) -> usize {
        self.files
            .values()
            .filter_map(|(_, pending)| last_write(pending))
            .map(|(_, offset, bytes)| pieces(offset, bytes, unit_bytes).len())
            .max()
            .unwrap_or(0)
    }

    /// The disk a power loss here leaves under `cut`: everything on it is
    /// durable, and nothing is recorded on it until asked.
    pub fn survivor(&self, cut: &PowerCut) -> SimDisk {
        let mut dirs = self.dirs.clone();
        for op in self.meta_pending.iter().take(cut.meta_ops) {
            op.apply(&mut dirs);
        }
        let mut disk = Disk::default();
        let mut rng = Rng(match cut.data {
            DataCut::Random { seed, .. } => seed.max(1),
            _ => 1,
        });
        let mut stack = vec![ROOT];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let node = match (dirs.get(&id), self.files.get(&id)) {
                (Some(entries), _) => {
                    stack.extend(entries.values());
                    Node::Dir(DirNode {
                        entries: entries.clone(),
                        durable: entries.clone(),
                    })
                }
                (None, Some((durable, pending))) => {
                    let data = surviving_data(durable, pending, &cut.data, &mut rng);
                    Node::File(FileNode {
                        durable: Arc::new(data.clone()),
                        data,
                        pending: Vec::new(),
                    })
                }
                (None, None) => continue,
            };
            disk.nodes.insert(id, node);
            disk.next_node = disk.next_node.max(id + 1);
        }
        SimDisk {
            inner: Arc::new(Mutex::new(disk)),
        }
    }
}

/// The last write among `pending`: its index, offset and bytes.
fn last_write(pending: &[FileOp]) -> Option<(usize, u64, &[u8])> {
    pending
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, op)| match op {
            FileOp::Write { offset, bytes } => Some((i, *offset, &bytes[..])),
            FileOp::SetLen(_) => None,
        })
}

/// A file's bytes after a power loss: its durable bytes with the pending
/// changes `cut` keeps applied in order.
fn surviving_data(
    durable: &Arc<Vec<u8>>,
    pending: &[FileOp],
    cut: &DataCut,
    rng: &mut Rng,
) -> Vec<u8> {
    let mut data: Vec<u8> = durable.as_ref().clone();
    let last = last_write(pending).map(|(i, _, _)| i);
    // A random cut keeps, for each page, the writes that touch it up to a
    // random point: a page cache writes a page back whole, as of some
    // moment, so a page never holds a later write's bytes without an
    // earlier one's (the first version drew each write's piece of a page
    // on its own, and made such states, which no disk can leave).
    let mut page_cut: HashMap<u64, usize> = HashMap::new();
    if let DataCut::Random { .. } = cut {
        let mut touching: HashMap<u64, usize> = HashMap::new();
        for op in pending {
            if let FileOp::Write { offset, bytes } = op {
                for (at, _) in pieces(*offset, bytes, PAGE_BYTES) {
                    *touching.entry(at / PAGE_BYTES).or_default() += 1;
                }
            }
        }
        let mut pages: Vec<(u64, usize)> = touching.into_iter().collect();
        pages.sort_unstable();
        for (page, writes) in pages {
            page_cut.insert(page, rng.below(writes as u64 + 1) as usize);
        }
    }
    let mut page_seen: HashMap<u64, usize> = HashMap::new();
    for (i, op) in pending.iter().enumerate() {
        match op {
            FileOp::SetLen(len) => {
                let keep = match cut {
                    DataCut::None => false,
                    DataCut::Random { .. } => rng.below(2) == 0,
                    _ => true,
                };
                if keep {
                    data.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0);
                }
            }
            FileOp::Write { offset, bytes } => {
                let is_last = Some(i) == last;
                let (unit_bytes, holes) = match cut {
                    DataCut::Torn { unit_bytes, .. } => (*unit_bytes, false),
                    DataCut::Hole { unit_bytes, .. } => (*unit_bytes, true),
                    DataCut::Random { holes, .. } => (PAGE_BYTES, *holes),
                    DataCut::None | DataCut::All => (PAGE_BYTES, false),
                };
                for (n, (at, piece)) in pieces(*offset, bytes, unit_bytes).into_iter().enumerate() {
                    let keep = match cut {
                        DataCut::None => false,
                        DataCut::All => true,
                        DataCut::Torn { units, .. } => !is_last || n < *units,
                        DataCut::Hole { unit, .. } => !is_last || n != *unit,
                        DataCut::Random { .. } => {
                            let page = at / PAGE_BYTES;
                            let seen = page_seen.entry(page).or_default();
                            let keep = *seen < page_cut.get(&page).copied().unwrap_or(0);
                            *seen += 1;
                            keep
                        }
                    };
                    place(&mut data, at, piece, keep, holes);
                }
            }
        }
    }
    data
}

/// Writes one piece of a write into `data` if kept; if not, and `holes`,
/// the file still grows over it (zeros: the size landed, the data not).
fn place(data: &mut Vec<u8>, at: u64, piece: &[u8], keep: bool, holes: bool) {
    let start = usize::try_from(at).unwrap_or(usize::MAX);
    let end = start.saturating_add(piece.len());
    if !keep && !holes {
        return;
    }
    if data.len() < end {
        data.resize(end, 0);
    }
    if keep && let Some(target) = data.get_mut(start..end) {
        target.copy_from_slice(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    fn write(disk: &SimDisk, path: &str, bytes: &[u8]) -> SimFile {
        let mut f = disk.open(p(path), Open::CreateKeep, true).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn only_cut(point: &CrashPoint, data: DataCut, meta_ops: usize) -> SimDisk {
        point.survivor(&PowerCut { meta_ops, data })
    }

    #[test]
    fn a_random_cut_never_keeps_a_later_write_to_a_page_without_an_earlier_one() {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/d")).unwrap();
        disk.sync_dir(p("/")).unwrap();
        let f = write(&disk, "/d/a", b"");
        f.sync(p("/d/a")).unwrap();
        disk.sync_dir(p("/d")).unwrap();
        let mut f = disk.open(p("/d/a"), Open::CreateKeep, true).unwrap();
        f.write_all(&[b'A'; 100]).unwrap();
        f.write_all(&[b'B'; 100]).unwrap();
        let point = disk.crash_point_now("test");
        let mut seen = HashSet::new();
        for seed in 1..200u64 {
            for holes in [false, true] {
                let survivor = only_cut(
                    &point,
                    DataCut::Random {
                        seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        holes,
                    },
                    0,
                );
                let data = survivor.read_file(p("/d/a")).unwrap_or_default();
                let a = data
                    .get(..100)
                    .is_some_and(|d| d.iter().all(|&b| b == b'A'));
                let b = data
                    .get(100..200)
                    .is_some_and(|d| d.iter().all(|&b| b == b'B'));
                assert!(!b || a, "seed {seed}: the later write without the earlier");
                seen.insert((a, b));
            }
        }
        assert!(seen.contains(&(true, true)) && seen.contains(&(false, false)));
        assert!(
            seen.contains(&(true, false)),
            "a page written back between the two"
        );
    }

    #[test]
    fn unsynced_data_and_entries_are_lost_synced_ones_kept() {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/d")).unwrap();
        disk.sync_dir(p("/")).unwrap();
        let f = write(&disk, "/d/a", b"hello");
        f.sync(p("/d/a")).unwrap();
        let point = disk.crash_point_now("test");
        // The file's data is durable, its entry is not.
        let lost = only_cut(&point, DataCut::None, 0);
        assert!(lost.is_dir(p("/d")));
        assert_eq!(lost.read_file(p("/d/a")), None);
        disk.sync_dir(p("/d")).unwrap();
        let point = disk.crash_point_now("test");
        assert_eq!(
            only_cut(&point, DataCut::None, 0).read_file(p("/d/a")),
            Some(b"hello".to_vec())
        );
    }

    #[test]
    fn a_directory_whose_parent_was_never_synced_vanishes_with_its_contents() {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/db/wal")).unwrap();
        let f = write(&disk, "/db/wal/seg", b"frame");
        f.sync(p("/db/wal/seg")).unwrap();
        disk.sync_dir(p("/db/wal")).unwrap();
        disk.sync_dir(p("/db")).unwrap();
        let point = disk.crash_point_now("test");
        let survivor = only_cut(&point, DataCut::None, 0);
        assert!(!survivor.is_dir(p("/db")), "/ was never synced");
        disk.sync_dir(p("/")).unwrap();
        let point = disk.crash_point_now("test");
        let survivor = only_cut(&point, DataCut::None, 0);
        assert_eq!(
            survivor.read_file(p("/db/wal/seg")),
            Some(b"frame".to_vec())
        );
    }

    #[test]
    fn renames_are_atomic_and_made_durable_by_either_directory() {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/a")).unwrap();
        disk.create_dir_all(p("/b")).unwrap();
        disk.sync_dir(p("/")).unwrap();
        let f = write(&disk, "/a/x", b"x");
        f.sync(p("/a/x")).unwrap();
        disk.sync_dir(p("/a")).unwrap();
        disk.rename(p("/a/x"), p("/b/y")).unwrap();
        let point = disk.crash_point_now("test");
        for meta_ops in [0, 1] {
            let s = only_cut(&point, DataCut::All, meta_ops);
            let (old, new) = (s.read_file(p("/a/x")), s.read_file(p("/b/y")));
            assert!(old.is_some() != new.is_some(), "exactly one name");
        }
        disk.sync_dir(p("/a")).unwrap();
        let s = only_cut(&disk.crash_point_now("test"), DataCut::None, 0);
        assert_eq!(s.read_file(p("/b/y")), Some(b"x".to_vec()));
    }

    #[test]
    fn torn_and_holed_writes_cut_at_unit_boundaries() {
        let disk = SimDisk::new();
        disk.sync_dir(p("/")).unwrap();
        let f = write(&disk, "/f", &[1u8; 100]);
        f.sync(p("/f")).unwrap();
        disk.sync_dir(p("/")).unwrap();
        let mut f = f;
        f.write_all(&[2u8; 3 * 4096]).unwrap();
        let point = disk.crash_point_now("test");
        let torn = only_cut(
            &point,
            DataCut::Torn {
                unit_bytes: 512,
                units: 1,
            },
            0,
        );
        // The first piece ends at the first 512-byte boundary of the file.
        assert_eq!(torn.read_file(p("/f")).unwrap().len(), 512);
        let holed = only_cut(
            &point,
            DataCut::Hole {
                unit_bytes: 4096,
                unit: 1,
            },
            0,
        )
        .read_file(p("/f"))
        .unwrap();
        assert_eq!(holed.len(), 100 + 3 * 4096);
        assert!(
            holed[4096..8192].iter().all(|&b| b == 0),
            "the hole is zeros"
        );
        assert!(
            holed[8192..].iter().all(|&b| b == 2),
            "the last page landed"
        );
        assert!(
            holed[100..4096].iter().all(|&b| b == 2),
            "the first page landed"
        );
        let cuts = point.cuts(7, 3);
        assert!(cuts.len() >= 8, "{cuts:?}");
    }

    #[test]
    fn a_lock_is_held_until_its_handle_is_dropped() {
        let disk = SimDisk::new();
        let a = disk.open(p("/LOCK"), Open::CreateKeep, false).unwrap();
        let b = disk.open(p("/LOCK"), Open::CreateKeep, false).unwrap();
        assert!(a.try_lock());
        assert!(!b.try_lock());
        drop(a);
        assert!(b.try_lock());
    }
}
