//! Sync through an object store (feature `object-store`): many copies,
//! each writing offline, converge through a bucket (S3 or a compatible
//! server, GCS, Azure, a local folder, or memory) with no server of ours
//! and no coordinator.
//!
//! Each copy publishes its own writes as immutable change objects under
//! its node id (created only if absent), and keeps one small head object
//! naming its live objects, its snapshots and what it has merged from
//! every other copy (replaced only by a conditional update). A round
//! lists the heads, downloads only the heads that changed and only the
//! objects it has not merged, checks each object whole against the hash
//! its head gives, imports it through the normal idempotent import path,
//! publishes its own news, and updates its head. A copy that joins late
//! starts from a published snapshot. Objects every copy merged and a
//! snapshot covers are deleted after a grace period. Layout and rules:
//! `docs/FORMAT.md` ("Bucket") and `docs/ARCHITECTURE.md` ("Bucket sync").
//!
//! ```
//! # fn main() -> mergekv::Result<()> {
//! use mergekv::bucket::Bucket;
//! let bucket = Bucket::in_memory();
//! let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
//! let a = mergekv::Db::open(a_dir.path())?;
//! let b = mergekv::Db::open(b_dir.path())?;
//! a.put("greeting", "hello from a")?;
//! b.increment("visits", 2)?;
//! for db in [&a, &b, &a] {
//!     bucket.sync(db)?;
//! }
//! assert_eq!(b.get("greeting")?.as_deref(), Some(&b"hello from a"[..]));
//! assert_eq!(a.get_value("visits")?, Some(mergekv::Value::Counter(2)));
//! # Ok(())
//! # }
//! ```

pub mod head;
mod local;
mod round;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use parking_lot::Mutex;

use crate::clock::NodeId;
use crate::db::Db;
use crate::error::{BucketError, Error, Result};
use crate::options::Options;

pub use round::{RestoreReport, SyncReport, Transfer};
pub use store::{BucketFaults, Fault, Op, RequestCounts};

use head::Head;

/// A head as last downloaded: its version tag and contents.
type CachedHead = (Option<String>, Arc<Head>);
use store::Objects;

/// How a bucket is synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketOptions {
    /// How long an object stays in the bucket after no head names it any
    /// more, so a copy that read an older head can still fetch it
    /// (default one hour).
    pub grace_ms: u64,
    /// How long an object or snapshot stays named by its head after it
    /// is no longer needed, so a point-in-time restore can reach back
    /// that far (default one hour).
    pub retain_ms: u64,
    /// A copy whose head has not changed for this long is reported as
    /// silent, and the copies that notice stop waiting for it: they
    /// collect what it has not merged, and it must start afresh when it
    /// returns ([`BucketError::MustBootstrap`]). Default 30 days.
    pub silence_horizon_ms: u64,
    /// A copy rewrites its head at least this often, even with nothing
    /// new, so it is not taken for silent (default one day).
    pub heartbeat_ms: u64,
    /// A snapshot is published once this many change objects in the
    /// bucket are not covered by one (default 64).
    pub snapshot_after_objects: usize,
    /// Whether a round downloads other copies' changes (a backup only
    /// publishes).
    pub pull: bool,
    /// The largest change object or snapshot a round downloads (checked
    /// before the body is read); default 1 GiB.
    pub object_bytes_max: u64,
}

impl Default for BucketOptions {
    fn default() -> Self {
        const HOUR_MS: u64 = 3_600_000;
        BucketOptions {
            grace_ms: HOUR_MS,
            retain_ms: HOUR_MS,
            silence_horizon_ms: 30 * 24 * HOUR_MS,
            heartbeat_ms: 24 * HOUR_MS,
            snapshot_after_objects: 64,
            pull: true,
            object_bytes_max: 1 << 30,
        }
    }
}

/// A bucket (a store and a prefix in it) that copies sync through.
///
/// One `Bucket` may serve several databases in one process; each keeps
/// its own sync state (in its `_local` keyspace). Calls block; from async
/// code, call them in `spawn_blocking`.
pub struct Bucket {
    objects: Objects,
    /// What names this bucket in a copy's sync state: the URL with its
    /// scheme's aliases and the prefix's slashes made canonical, so two
    /// spellings of one bucket share one state.
    identity: String,
    url: String,
    options: BucketOptions,
    /// Heads read before, by (reader, copy): a head whose version tag has
    /// not changed is not downloaded again.
    heads: Mutex<HashMap<(NodeId, NodeId), CachedHead>>,
    /// Claims checked: (copy, incarnation).
    claims: Mutex<std::collections::HashSet<(NodeId, [u8; 16])>>,
    /// Held for a round through this value (see [`round_turn`] for rounds
    /// through several values).
    round: Mutex<()>,
    /// Heads found unclaimed, by version: not downloaded again until they
    /// change.
    unclaimed: Mutex<std::collections::HashSet<(NodeId, Option<String>)>>,
    /// Per copy, the claim up to which a scan found nothing to publish.
    scanned: Mutex<HashMap<NodeId, crate::clock::Stamp>>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("url", &self.url)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// The bucket at `url`: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` or `file:///path` (a folder, created if
    /// missing). Credentials, region and endpoint come from each store's
    /// standard environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT`, ...;
    /// `AZURE_STORAGE_ACCOUNT_NAME`, ...). Nothing is contacted yet.
    ///
    /// # Errors
    ///
    /// [`BucketError::Url`] if `url` has an unknown scheme or no bucket name,
    /// its `file://` folder cannot be created, or the store cannot be
    /// configured from it; [`Error::Network`] if the bucket's runtime cannot
    /// be started.
    pub fn open(url: &str) -> Result<Bucket> {
        let (store, prefix, local) = open_url(url)?;
        Ok(Bucket {
            identity: url_identity(url, &prefix),
            objects: Objects::new(store, prefix, local)?,
            url: url.to_string(),
            options: BucketOptions::default(),
            heads: Mutex::new(HashMap::new()),
            claims: Mutex::new(std::collections::HashSet::new()),
            round: Mutex::new(()),
            scanned: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// A bucket in this process's memory (for tests and examples): every
    /// database synced through this `Bucket` value shares it.
    pub fn in_memory() -> Bucket {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        // Each in-memory bucket is a bucket of its own: a copy's sync
        // state (kept per bucket name) must not carry over to another.
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        let name = format!("memory://{:016x}", u64::from_le_bytes(id));
        Bucket::from_store(store, "", &name).unwrap_or_else(|_| unreachable_memory())
    }

    /// A bucket over any `object_store` store, under `prefix`; `name` is
    /// what reports and errors call it.
    ///
    /// # Errors
    ///
    /// [`BucketError::Url`] if `prefix` is not a valid object path;
    /// [`Error::Network`] if the bucket's runtime cannot be started.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, name: &str) -> Result<Bucket> {
        let prefix = store_prefix(name, prefix)?;
        Ok(Bucket {
            identity: format!("{name}|{}", prefix.as_ref()),
            objects: Objects::new(store, prefix, None)?,
            url: name.to_string(),
            options: BucketOptions::default(),
            heads: Mutex::new(HashMap::new()),
            claims: Mutex::new(std::collections::HashSet::new()),
            round: Mutex::new(()),
            scanned: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The same bucket with these options.
    pub fn with_options(mut self, options: BucketOptions) -> Bucket {
        self.options = options;
        self
    }

    /// The same bucket with a test's fault plan asked before every
    /// request (see [`BucketFaults`]); retries then back off from 1 ms.
    pub fn with_faults(mut self, faults: Arc<dyn BucketFaults>) -> Bucket {
        self.objects.set_faults(faults);
        self
    }

    /// The options in use.
    pub fn options(&self) -> &BucketOptions {
        &self.options
    }

    /// The URL (or name) the bucket was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests made so far through this bucket, by kind.
    pub fn requests(&self) -> RequestCounts {
        self.objects.counts()
    }

    /// One sync round for `db`: pull what it has not merged from every
    /// other copy, publish its own news, update its head, collect what
    /// no copy needs. See the module docs.
    ///
    /// # Errors
    ///
    /// [`Error::Bucket`] when the store cannot be reached or refuses, an
    /// object is damaged or missing, another directory writes under this
    /// copy's node id, or this copy must start afresh. What was merged
    /// before the failure stays merged; the next round goes on from there.
    pub fn sync(&self, db: &Db) -> Result<SyncReport> {
        db.check_writable()?;
        let _turn = self.round.lock();
        let _db_turn = round_turn(db, &self.identity);
        let _db_turn = _db_turn.lock();
        self.traced_round(db, true)
    }

    /// A backup round: publish `db`'s news (and a snapshot when one is
    /// due, or none exists yet), without pulling from other copies.
    ///
    /// # Errors
    ///
    /// As [`Bucket::sync`].
    pub fn backup(&self, db: &Db) -> Result<SyncReport> {
        db.check_writable()?;
        let _turn = self.round.lock();
        let _db_turn = round_turn(db, &self.identity);
        let _db_turn = _db_turn.lock();
        self.traced_round(db, false)
    }

    /// A round in a span naming the bucket and the database, with one
    /// event saying what it moved or why it failed.
    fn traced_round(&self, db: &Db, pull: bool) -> Result<SyncReport> {
        let span = tracing::info_span!(
            "mergekv.bucket_round",
            bucket = %self.identity,
            path = %db.dir().display(),
            pull,
        );
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let result = round::sync(self, db.engine(), pull);
        trace_round(&result, started.elapsed());
        result
    }

    /// A new database in `dir` (which must not hold one) with everything
    /// the bucket holds, or, with `at_ms`, only what was written at or
    /// before that time (HLC physical time, ms since the epoch; to within
    /// one publication). The new database is a copy of its own (a fresh
    /// node id); it does not join the bucket until synced.
    ///
    /// # Errors
    ///
    /// [`Error::Bucket`] as for [`Bucket::sync`], or
    /// [`BucketError::NothingToRestore`] when no snapshot is old enough;
    /// [`Error::InvalidCommand`] when `dir` already holds a database.
    pub fn restore(
        &self,
        dir: &Path,
        options: Options,
        at_ms: Option<u64>,
    ) -> Result<(Db, RestoreReport)> {
        let span = tracing::info_span!(
            "mergekv.bucket_restore",
            bucket = %self.identity,
            path = %dir.display(),
            at_ms,
        );
        let _entered = span.enter();
        let result = round::restore(self, dir, options, at_ms);
        match &result {
            Ok((_, r)) => tracing::info!(
                pulled_objects = r.pulled.objects,
                pulled_changes = r.pulled.changes,
                pulled_bytes = r.pulled.bytes,
                snapshot = r.snapshot.as_deref(),
                "bucket restore finished"
            ),
            Err(e) => tracing::error!(error = %e, "bucket restore failed"),
        }
        result
    }

    /// Creates the object `name` (relative to the bucket's prefix) unless
    /// it exists: `true` if this call created it. The primitive the
    /// engine publishes with (every object is created this way), for
    /// tools and tests.
    ///
    /// # Errors
    ///
    /// [`Error::Bucket`] when the store cannot be reached or refuses.
    pub fn create_object(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        Ok(self.objects.create(name, bytes)? != store::Written::Lost)
    }

    /// Replaces the object `name` if its version tag is still `expected`
    /// (or creates it if `expected` is `None` and it does not exist): the
    /// new version tag if this call won, `None` if another writer got
    /// there first (read it again and retry). The primitive heads are
    /// updated with.
    ///
    /// # Errors
    ///
    /// [`Error::Bucket`] when the store cannot be reached or refuses.
    pub fn update_object(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<Option<String>> {
        match self.objects.update(name, bytes, expected)? {
            store::Written::Done(tag) => Ok(Some(tag.unwrap_or_default())),
            store::Written::Lost => Ok(None),
        }
    }

    /// The bytes of the object `name` and its version tag, or `None` if
    /// there is none (at most `max_bytes`, checked before downloading).
    ///
    /// # Errors
    ///
    /// [`Error::Bucket`] when the store cannot be reached or refuses, or
    /// the object is larger than `max_bytes`.
    pub fn get_object(
        &self,
        name: &str,
        max_bytes: u64,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        self.objects.get(name, max_bytes)
    }

    /// The names and sizes of the objects directly under `dir`.
    ///
    /// # Errors
    ///
    /// [`Error::Bucket`] when the store cannot be reached or refuses.
    pub fn list_objects(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .objects
            .list(dir)?
            .into_iter()
            .map(|l| (l.name, l.size))
            .collect())
    }

    pub(crate) fn known_unclaimed(&self, node: NodeId, e_tag: &Option<String>) -> bool {
        e_tag.is_some() && self.unclaimed.lock().contains(&(node, e_tag.clone()))
    }

    pub(crate) fn note_unclaimed(&self, node: NodeId, e_tag: Option<String>) {
        self.unclaimed.lock().insert((node, e_tag));
    }

    pub(crate) fn scanned(&self, node: NodeId) -> Option<crate::clock::Stamp> {
        self.scanned.lock().get(&node).copied()
    }

    pub(crate) fn note_scanned(&self, node: NodeId, claim: crate::clock::Stamp) {
        self.scanned.lock().insert(node, claim);
    }

    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    pub(crate) fn objects(&self) -> &Objects {
        &self.objects
    }

    pub(crate) fn cached_head(
        &self,
        reader: NodeId,
        node: NodeId,
        e_tag: &Option<String>,
    ) -> Option<Arc<Head>> {
        let heads = self.heads.lock();
        let (tag, head) = heads.get(&(reader, node))?;
        (tag.is_some() && tag == e_tag).then(|| head.clone())
    }

    pub(crate) fn claim_known(&self, node: NodeId, incarnation: [u8; 16]) -> bool {
        self.claims.lock().contains(&(node, incarnation))
    }

    pub(crate) fn note_claim(&self, node: NodeId, incarnation: [u8; 16]) {
        self.claims.lock().insert((node, incarnation));
    }

    pub(crate) fn cache_head(
        &self,
        reader: NodeId,
        node: NodeId,
        e_tag: Option<String>,
        head: Arc<Head>,
    ) {
        self.heads.lock().insert((reader, node), (e_tag, head));
    }
}

/// The lock a round for `db` through the bucket `identity` holds, shared
/// by every `Bucket` value in the process: a copy's sync state is read at
/// the start of a round and written through it, so two rounds for one
/// database and bucket take turns (two at once would take each other's
/// head writes for a clone's).
fn round_turn(db: &Db, identity: &str) -> Arc<Mutex<()>> {
    type Turns = Mutex<HashMap<(usize, String), Arc<Mutex<()>>>>;
    static TURNS: std::sync::OnceLock<Turns> = std::sync::OnceLock::new();
    let engine = std::ptr::from_ref(db.engine()) as usize;
    TURNS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .entry((engine, identity.to_string()))
        .or_default()
        .clone()
}

/// Says what a round did (debug: one per round), or why it failed: at
/// warn when this copy must act (it joined too late, history it lacks is
/// gone, it was expelled), at error otherwise (the store, a damaged
/// object, a clone).
fn trace_round(result: &Result<SyncReport>, elapsed: std::time::Duration) {
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let r = match result {
        Ok(r) => r,
        Err(Error::Bucket(
            e @ (BucketError::HistoryGone { .. }
            | BucketError::StaleJoin { .. }
            | BucketError::MustBootstrap { .. }),
        )) => {
            tracing::warn!(error = %e, duration_ms, "bucket round refused: this copy must start afresh");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, duration_ms, "bucket round failed");
            return;
        }
    };
    tracing::debug!(
        pushed_objects = r.pushed.objects,
        pushed_changes = r.pushed.changes,
        pushed_bytes = r.pushed.bytes,
        pulled_objects = r.pulled.objects,
        pulled_changes = r.pulled.changes,
        pulled_bytes = r.pulled.bytes,
        applied = r.applied,
        snapshot_published = r.snapshot_published.is_some(),
        snapshots_imported = r.snapshots_imported,
        copies = r.copies,
        deleted = r.deleted,
        delete_failed = r.delete_failed,
        head_written = r.head_written,
        duration_ms,
        "bucket round finished"
    );
    if !r.silent.is_empty() {
        tracing::warn!(copies = ?r.silent, "copies silent past the horizon are no longer waited for");
    }
    if !r.unreadable.is_empty() {
        tracing::warn!(heads = ?r.unreadable, "unreadable heads skipped");
    }
}

/// [`Bucket::identity`] of a URL: `s3a` is `s3`, `azure` is `az`, and the
/// prefix (or a folder's path) has no leading, trailing or doubled slash.
fn url_identity(url: &str, prefix: &StorePath) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let scheme = match scheme {
        "s3a" => "s3",
        "azure" => "az",
        other => other,
    };
    if scheme == "file" {
        // One folder is one bucket however it is spelled: `.`, `..` and
        // symbolic links resolve (the folder exists by now: opening
        // creates it). Spelled two ways, a copy would not find its own
        // sync state and would take its own claim for a clone's.
        let raw = format!("/{}", rest.trim_start_matches('/'));
        let resolved = std::fs::canonicalize(&raw)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .unwrap_or(raw);
        let path: Vec<&str> = resolved.split('/').filter(|p| !p.is_empty()).collect();
        return format!("file:///{}", path.join("/"));
    }
    let bucket = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{bucket}/{}", prefix.as_ref())
}

fn unreachable_memory() -> Bucket {
    // `from_store` fails only when the tokio runtime cannot start, which
    // for a current-thread runtime means the process is out of resources.
    #[expect(clippy::panic, reason = "a current-thread runtime that cannot start")]
    {
        panic!("could not start the in-memory bucket's runtime")
    }
}

fn url_error(url: &str, reason: impl Into<String>) -> Error {
    Error::Bucket(BucketError::Url {
        url: url.to_string(),
        reason: reason.into(),
    })
}

fn store_prefix(url: &str, prefix: &str) -> Result<StorePath> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(StorePath::default());
    }
    StorePath::parse(trimmed).map_err(|e| url_error(url, e.to_string()))
}

/// The store, the prefix in it, and (for `file://`) the folder.
fn open_url(url: &str) -> Result<(Arc<dyn ObjectStore>, StorePath, Option<PathBuf>)> {
    use object_store::{ClientConfigKey, RetryConfig};
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(url_error(url, "expected s3://, gs://, az:// or file://"));
    };
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(url_error(
                url,
                "a file:// URL names an absolute path: file:///path",
            ));
        }
        let dir = PathBuf::from(rest);
        std::fs::create_dir_all(&dir)
            .map_err(|e| url_error(url, format!("cannot create the folder: {e}")))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| url_error(url, e.to_string()))?
            .with_automatic_cleanup(true);
        return Ok((Arc::new(store), StorePath::default(), Some(dir)));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(url_error(url, "no bucket name"));
    }
    // Our own layer retries with backoff and jitter under a deadline; the
    // client's retries are kept short so a dead endpoint is reported soon.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(20),
        ..RetryConfig::default()
    };
    let timeouts = [
        (ClientConfigKey::ConnectTimeout, "5s"),
        (ClientConfigKey::Timeout, "60s"),
    ];
    install_tls_provider();
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            for (k, v) in timeouts {
                b = b.with_config(AmazonS3ConfigKey::Client(k), v);
            }
            // Also the SDKs' name for a custom endpoint.
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                b = b.with_endpoint(endpoint);
            }
            Arc::new(b.build().map_err(|e| url_error(url, e.to_string()))?)
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            for (k, v) in timeouts {
                b = b.with_config(GoogleConfigKey::Client(k), v);
            }
            Arc::new(b.build().map_err(|e| url_error(url, e.to_string()))?)
        }
        "az" | "azure" => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry);
            for (k, v) in timeouts {
                b = b.with_config(AzureConfigKey::Client(k), v);
            }
            Arc::new(b.build().map_err(|e| url_error(url, e.to_string()))?)
        }
        other => {
            return Err(url_error(
                url,
                format!("unknown scheme {other}://; expected s3://, gs://, az:// or file://"),
            ));
        }
    };
    Ok((store, store_prefix(url, prefix)?, None))
}

/// rustls needs a process-wide crypto provider for HTTPS: ring, like the
/// rest of mergekv, unless the application installed one.
fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
