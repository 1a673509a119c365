//! The one seam between the sync engine and an object store: five blocking
//! operations (list, get, create, update, delete) over the `object_store`
//! crate, each with a deadline per attempt, a total deadline, retries with
//! exponential backoff and jitter for transient failures, request counts,
//! and a fault hook for tests.
//!
//! `object_store` is async; a bucket owns a current-thread tokio runtime
//! and blocks on it, so the rest of mergekv stays synchronous.
//!
//! A local folder (`file://`) cannot do a conditional update in
//! `object_store` (no atomic compare-and-swap on a file); this seam does
//! it under an exclusive lock on a lock file beside the folder's heads
//! (every writer of the folder is mergekv and takes the same lock), then
//! replaces the object by an atomic rename, and fsyncs what it wrote.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use object_store::path::Path as StorePath;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::error::{BucketError, Error, Result};
use crate::io::IoOp;

/// Deadline of one request attempt.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline of one operation, its retries included.
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(120);
/// The slowest transfer a deadline allows for: an attempt that moves `n`
/// bytes gets `n` / this many seconds more (and its operation as much
/// again per attempt), so a large object is not cut off by a deadline
/// sized for small ones.
pub const TRANSFER_BYTES_PER_SEC_MIN: u64 = 1024 * 1024;

/// The deadline of one attempt that moves `bytes`.
fn attempt_deadline(bytes: u64) -> Duration {
    REQUEST_DEADLINE + Duration::from_secs(bytes / TRANSFER_BYTES_PER_SEC_MIN)
}
/// Attempts of one operation (the first included).
pub const ATTEMPTS_MAX: u32 = 6;
/// First backoff; doubled at each retry, with up to half again of jitter.
pub const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A kind of request, for counts and fault plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A listing of a folder.
    List,
    /// A download.
    Get,
    /// A create-if-absent.
    Create,
    /// A conditional replace (or create, for a first head).
    Update,
    /// A delete.
    Delete,
}

/// What a fault plan does to one request attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request fails as a network error would, before reaching the
    /// store.
    Fail,
    /// The request never answers: it counts as a timed-out attempt.
    TimeOut,
    /// For a create or update: only the first half of the bytes lands
    /// (a store that does not write atomically, or a broken proxy), and
    /// the request reports success.
    Truncate,
    /// The store refuses the credentials.
    Refuse,
    /// The request reaches the store and takes effect, but its answer is
    /// lost (a timeout after the store acted): the attempt fails and is
    /// retried.
    LandThenFail,
}

/// A test's plan of faults, asked before every request attempt.
pub trait BucketFaults: Send + Sync + std::fmt::Debug {
    /// The fault for this attempt of `op` on `name`, if any.
    fn fault(&self, op: Op, name: &str) -> Option<Fault>;
}

/// Requests made, by kind (attempts, retries included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// Listings.
    pub list: u64,
    /// Downloads.
    pub get: u64,
    /// Uploads (creates and updates).
    pub put: u64,
    /// Deletes.
    pub delete: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.list + self.get + self.put + self.delete
    }

    /// `self - before`, field by field.
    pub fn since(&self, before: &RequestCounts) -> RequestCounts {
        RequestCounts {
            list: self.list - before.list,
            get: self.get - before.get,
            put: self.put - before.put,
            delete: self.delete - before.delete,
            retried: self.retried - before.retried,
        }
    }
}

#[derive(Default, Debug)]
struct Counters {
    list: AtomicU64,
    get: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    retried: AtomicU64,
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its name, relative to the bucket's prefix.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// The store's version tag for it, if the store gives one.
    pub e_tag: Option<String>,
}

/// What a conditional write found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the store's version tag for what is there now.
    Done(Option<String>),
    /// Not written: the object exists (create) or changed (update).
    Lost,
}

/// Blocking access to one bucket prefix.
pub(crate) struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// For `file://`: the folder the prefix is, where writes are fsynced
    /// and updates locked.
    local: Option<PathBuf>,
    rt: tokio::runtime::Runtime,
    counters: Counters,
    faults: Option<Arc<dyn BucketFaults>>,
    /// Backoff grows from here (tests shorten it).
    backoff_start: Duration,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish_non_exhaustive()
    }
}

/// Whether an error's text says the store refused (credentials,
/// permissions, no such bucket) rather than failed.
fn refusal_text(text: &str) -> bool {
    [
        "AccessDenied",
        "403 Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Is this error worth another attempt?
fn transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

enum Attempt<T> {
    Ok(T),
    /// Worth retrying (network, timeout, 5xx).
    Again(String),
    /// Final.
    Fail(Error),
}

impl Objects {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        local: Option<PathBuf>,
    ) -> Result<Objects> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Network {
                what: "starting the bucket's runtime".into(),
                source: Arc::new(e),
            })?;
        Ok(Objects {
            store,
            prefix,
            local,
            rt,
            counters: Counters::default(),
            faults: None,
            backoff_start: BACKOFF_START,
        })
    }

    pub(crate) fn set_faults(&mut self, faults: Arc<dyn BucketFaults>) {
        self.faults = Some(faults);
        // A test's faults are many: retry quickly.
        self.backoff_start = Duration::from_millis(1);
    }

    pub(crate) fn counts(&self) -> RequestCounts {
        let c = &self.counters;
        RequestCounts {
            list: c.list.load(Ordering::Relaxed),
            get: c.get.load(Ordering::Relaxed),
            put: c.put.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} (prefix {:?})", self.store, self.prefix.as_ref())
    }

    fn path(&self, name: &str) -> StorePath {
        let mut p = self.prefix.clone();
        for part in name.split('/').filter(|part| !part.is_empty()) {
            p = p.join(part);
        }
        p
    }

    fn relative(&self, path: &StorePath) -> String {
        let full = path.as_ref();
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            return full.to_string();
        }
        full.strip_prefix(prefix)
            .map(|s| s.trim_start_matches('/').to_string())
            .unwrap_or_else(|| full.to_string())
    }

    fn count(&self, op: Op) {
        let c = match op {
            Op::List => &self.counters.list,
            Op::Get => &self.counters.get,
            Op::Create | Op::Update => &self.counters.put,
            Op::Delete => &self.counters.delete,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts or
    /// the total deadline run out.
    fn run<T>(
        &self,
        op: Op,
        name: &str,
        attempt: impl FnMut(Option<Fault>) -> Attempt<T>,
    ) -> Result<T> {
        self.run_moving(op, name, 0, attempt)
    }

    /// [`Objects::run`] for an operation that moves `bytes` per attempt:
    /// no attempt starts that could end past the operation's deadline
    /// ([`OPERATION_DEADLINE`] plus the transfer time of every attempt).
    fn run_moving<T>(
        &self,
        op: Op,
        name: &str,
        bytes: u64,
        mut attempt: impl FnMut(Option<Fault>) -> Attempt<T>,
    ) -> Result<T> {
        let per_attempt = attempt_deadline(bytes);
        let total = OPERATION_DEADLINE + (per_attempt - REQUEST_DEADLINE) * ATTEMPTS_MAX;
        let started = Instant::now();
        let mut backoff = self.backoff_start;
        let mut last = String::new();
        for n in 0..ATTEMPTS_MAX {
            self.count(op);
            let fault = self.faults.as_ref().and_then(|f| f.fault(op, name));
            if fault == Some(Fault::Refuse) {
                return Err(Error::Bucket(BucketError::Refused {
                    store: self.describe(),
                    detail: format!("{op:?} {name}: access denied (injected)"),
                }));
            }
            match attempt(fault) {
                Attempt::Ok(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Again(why) => last = why,
            }
            if n + 1 == ATTEMPTS_MAX || started.elapsed() + backoff + per_attempt > total {
                break;
            }
            self.counters.retried.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(jittered(backoff));
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        Err(Error::Bucket(BucketError::Unreachable {
            store: self.describe(),
            detail: format!("{op:?} {name}: {last}"),
        }))
    }

    fn block<T>(
        &self,
        fault: Option<Fault>,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> std::result::Result<T, AttemptError> {
        self.block_for(fault, 0, fut)
    }

    /// [`Objects::block`] for an attempt that moves `bytes`.
    fn block_for<T>(
        &self,
        fault: Option<Fault>,
        bytes: u64,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> std::result::Result<T, AttemptError> {
        let deadline = attempt_deadline(bytes);
        match fault {
            Some(Fault::Fail) => {
                return Err(AttemptError::Again("connection reset (injected)".into()));
            }
            Some(Fault::TimeOut) => {
                return Err(AttemptError::Again(format!(
                    "no answer within {REQUEST_DEADLINE:?} (injected)"
                )));
            }
            _ => {}
        }
        match self
            .rt
            .block_on(async { tokio::time::timeout(deadline, fut).await })
        {
            Err(_) => Err(AttemptError::Again(format!(
                "no answer within {deadline:?}"
            ))),
            Ok(Ok(_)) if fault == Some(Fault::LandThenFail) => Err(AttemptError::Again(
                "the answer was lost after the store acted (injected)".into(),
            )),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(AttemptError::Store(e)),
        }
    }

    fn refused_or_again<T>(&self, e: object_store::Error) -> Attempt<T> {
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                Attempt::Fail(Error::Bucket(BucketError::Refused {
                    store: self.describe(),
                    detail: e.to_string(),
                }))
            }
            // object_store reports some refusals of S3 (a listing denied,
            // a bucket that does not exist) only as generic errors.
            e if refusal_text(&e.to_string()) => {
                Attempt::Fail(Error::Bucket(BucketError::Refused {
                    store: self.describe(),
                    detail: e.to_string(),
                }))
            }
            e if transient(&e) => Attempt::Again(e.to_string()),
            e => Attempt::Fail(Error::Bucket(BucketError::Refused {
                store: self.describe(),
                detail: e.to_string(),
            })),
        }
    }

    /// The objects directly under `dir` (relative to the prefix), with
    /// their sizes and version tags.
    pub(crate) fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let path = self.path(dir);
        self.run(Op::List, dir, |fault| {
            match self.block(fault, self.store.list_with_delimiter(Some(&path))) {
                Ok(listing) => Attempt::Ok(
                    listing
                        .objects
                        .into_iter()
                        .map(|m| Listed {
                            name: self.relative(&m.location),
                            size: m.size,
                            e_tag: version_tag(m.e_tag, m.version),
                        })
                        .collect(),
                ),
                Err(AttemptError::Again(why)) => Attempt::Again(why),
                Err(AttemptError::Store(object_store::Error::NotFound { .. })) => {
                    Attempt::Ok(Vec::new())
                }
                Err(AttemptError::Store(e)) => self.refused_or_again(e),
            }
        })
    }

    /// The bytes of `name` and its version tag, or `None` if there is no
    /// such object. An object larger than `max_bytes` is refused before
    /// its body is read.
    pub(crate) fn get(
        &self,
        name: &str,
        max_bytes: u64,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let path = self.path(name);
        self.run_moving(Op::Get, name, max_bytes, |fault| {
            let fetched = self.block_for(fault, max_bytes, async {
                let got = self.store.get_opts(&path, GetOptions::default()).await?;
                if got.meta.size > max_bytes {
                    return Ok(Err(got.meta.size));
                }
                let e_tag = version_tag(got.meta.e_tag.clone(), got.meta.version.clone());
                let bytes = got.bytes().await?;
                Ok(Ok((bytes.to_vec(), e_tag)))
            });
            match fetched {
                Ok(Ok(v)) => Attempt::Ok(Some(v)),
                Ok(Err(size)) => Attempt::Fail(Error::Bucket(BucketError::Malformed {
                    object: name.to_string(),
                    reason: format!(
                        "{size} bytes, more than the {max_bytes} such an object may hold"
                    ),
                })),
                Err(AttemptError::Again(why)) => Attempt::Again(why),
                Err(AttemptError::Store(object_store::Error::NotFound { .. })) => Attempt::Ok(None),
                Err(AttemptError::Store(e)) => self.refused_or_again(e),
            }
        })
    }

    /// Creates `name` unless it exists: [`Written::Lost`] if it does.
    pub(crate) fn create(&self, name: &str, bytes: &[u8]) -> Result<Written> {
        self.put(Op::Create, name, bytes, PutMode::Create)
    }

    /// Replaces `name` if its version tag is still `expected` (creates it
    /// if `expected` is `None` and it does not exist): [`Written::Lost`]
    /// if another writer got there first.
    pub(crate) fn update(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<Written> {
        let Some(e_tag) = expected else {
            return self.put(Op::Update, name, bytes, PutMode::Create);
        };
        if let Some(dir) = &self.local {
            return self.update_locked(dir, name, bytes, e_tag);
        }
        let (e_tag, version) = split_tag(e_tag);
        let mode = PutMode::Update(UpdateVersion { e_tag, version });
        self.put(Op::Update, name, bytes, mode)
    }

    fn put(&self, op: Op, name: &str, bytes: &[u8], mode: PutMode) -> Result<Written> {
        let path = self.path(name);
        let len = bytes.len() as u64;
        let written = self.run_moving(op, name, len, |fault| {
            let payload = match fault {
                Some(Fault::Truncate) => {
                    PutPayload::from(bytes.get(..bytes.len() / 2).unwrap_or_default().to_vec())
                }
                _ => PutPayload::from(bytes.to_vec()),
            };
            let opts = PutOptions {
                mode: mode.clone(),
                ..PutOptions::default()
            };
            match self.block_for(fault, len, self.store.put_opts(&path, payload, opts)) {
                Ok(r) => Attempt::Ok(Written::Done(version_tag(r.e_tag, r.version))),
                Err(AttemptError::Again(why)) => Attempt::Again(why),
                Err(AttemptError::Store(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                )) => Attempt::Ok(Written::Lost),
                Err(AttemptError::Store(e)) => self.refused_or_again(e),
            }
        })?;
        if written != Written::Lost {
            self.sync_local(name)?;
        }
        Ok(written)
    }

    /// A conditional replace in a local folder: under the folder's update
    /// lock, compare the version tag, then replace.
    fn update_locked(
        &self,
        dir: &std::path::Path,
        name: &str,
        bytes: &[u8],
        e_tag: &str,
    ) -> Result<Written> {
        let lock_path = dir.join(".mergekv-update.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(IoOp::Open, &lock_path, e))?;
        lock.lock()
            .map_err(|e| Error::io(IoOp::Open, &lock_path, e))?;
        let path = self.path(name);
        let current = self.run(Op::Get, name, |fault| {
            match self.block(fault, self.store.head(&path)) {
                Ok(meta) => Attempt::Ok(version_tag(meta.e_tag, meta.version)),
                Err(AttemptError::Again(why)) => Attempt::Again(why),
                Err(AttemptError::Store(object_store::Error::NotFound { .. })) => Attempt::Ok(None),
                Err(AttemptError::Store(e)) => self.refused_or_again(e),
            }
        })?;
        if current.as_deref() != Some(e_tag) {
            return Ok(Written::Lost);
        }
        // The lock is released when `lock` is dropped, after the rename.
        self.put(Op::Update, name, bytes, PutMode::Overwrite)
    }

    /// The size of `name` as the store has it, or `None` if it is absent.
    pub(crate) fn size_of(&self, name: &str) -> Result<Option<u64>> {
        let path = self.path(name);
        self.run(Op::Get, name, |fault| {
            match self.block(fault, self.store.head(&path)) {
                Ok(meta) => Attempt::Ok(Some(meta.size)),
                Err(AttemptError::Again(why)) => Attempt::Again(why),
                Err(AttemptError::Store(object_store::Error::NotFound { .. })) => Attempt::Ok(None),
                Err(AttemptError::Store(e)) => self.refused_or_again(e),
            }
        })
    }

    /// Deletes `name`; deleting what is gone is not an error.
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        self.run(Op::Delete, name, |fault| {
            match self.block(fault, self.store.delete(&path)) {
                Ok(()) => Attempt::Ok(()),
                Err(AttemptError::Again(why)) => Attempt::Again(why),
                Err(AttemptError::Store(object_store::Error::NotFound { .. })) => Attempt::Ok(()),
                Err(AttemptError::Store(e)) => self.refused_or_again(e),
            }
        })
    }

    /// In a local folder, fsyncs the file just written and its folder:
    /// an object is durable before anything names it.
    fn sync_local(&self, name: &str) -> Result<()> {
        let Some(dir) = &self.local else {
            return Ok(());
        };
        let file = dir.join(name);
        let sync =
            |p: &std::path::Path| -> std::io::Result<()> { std::fs::File::open(p)?.sync_all() };
        sync(&file).map_err(|e| Error::io(IoOp::Sync, &file, e))?;
        if let Some(parent) = file.parent() {
            sync(parent).map_err(|e| Error::io(IoOp::Sync, parent, e))?;
        }
        Ok(())
    }
}

/// One string for a store's version of an object: its e-tag and, for
/// stores that name versions otherwise (GCS generations), that version,
/// joined by U+001F. What a conditional update is given back.
fn version_tag(e_tag: Option<String>, version: Option<String>) -> Option<String> {
    match (e_tag, version) {
        (None, None) => None,
        (e, v) => Some(format!(
            "{}\u{1f}{}",
            e.unwrap_or_default(),
            v.unwrap_or_default()
        )),
    }
}

/// The parts of a [`version_tag`].
fn split_tag(tag: &str) -> (Option<String>, Option<String>) {
    let (e, v) = tag.split_once('\u{1f}').unwrap_or((tag, ""));
    let part = |p: &str| (!p.is_empty()).then(|| p.to_string());
    (part(e), part(v))
}

enum AttemptError {
    Again(String),
    Store(object_store::Error),
}

/// `base` plus up to half again, at random (so copies that failed together
/// do not retry together).
fn jittered(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = match getrandom::fill(&mut b) {
        Ok(()) => u16::from_le_bytes(b),
        Err(_) => 0,
    };
    base + base.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}
