//! # mergekv
//!
//! An embedded key-value database for applications whose copies must keep
//! working offline and merge later without losing anything.
//!
//! Every write is a command stamped with a hybrid logical clock, run by a
//! worker (a pool thread, or the caller when its worker is idle), appended
//! to a checksummed, group-committed write-ahead log,
//! and then applied to a concurrent in-memory map. Every value is a CRDT (a
//! last-writer-wins register or a PN-counter), so copies of a database can
//! exchange changes in any order and converge.
//!
//! ```
//! use mergekv::{Batch, Db, OutcomeKind, ScanOptions};
//!
//! # fn main() -> mergekv::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path())?;
//!
//! // Registers: last writer wins.
//! db.put("greeting", "hello")?;
//! assert_eq!(db.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//!
//! // Counters: increments from any thread (or any copy) add up.
//! db.increment("visits", 2)?;
//! let outcome = db.increment("visits", 3)?;
//! assert_eq!(outcome.counter, Some(5));
//!
//! // Keyspaces and atomic, idempotent batches.
//! let users = db.keyspace("users")?;
//! let mut batch = Batch::new();
//! batch
//!     .put_in("users", "ada", "Ada Lovelace")
//!     .put_in("users", "alan", "Alan Turing")
//!     .idempotency_key("import-42");
//! db.write(batch.clone())?;
//! let retry = db.write(batch)?;
//! assert_eq!(retry[0].kind, OutcomeKind::Duplicate);
//!
//! // Ordered scans.
//! // Reads can fail (the state is on disk): each entry is a `Result`.
//! let names = users
//!     .scan(&ScanOptions::prefix("a"))
//!     .map(|e| e.map(|e| e.key().to_vec()))
//!     .collect::<mergekv::Result<Vec<_>>>()?;
//! assert_eq!(names, vec![b"ada".to_vec(), b"alan".to_vec()]);
//!
//! // Reopen: everything acknowledged is still there.
//! drop(users);
//! db.close()?;
//! let db = Db::open(dir.path())?;
//! assert_eq!(db.counter("visits")?, 5);
//! # Ok(())
//! # }
//! ```
//!
//! ## The API at a glance
//!
//! | for | use |
//! |---|---|
//! | opening, writing, reading, closing | [`Db`] ([`Db::open`], [`Db::open_with`] and [`Options`]; `put`, `get`, `increment`, `write` of a [`Batch`]) |
//! | named keyspaces | [`Keyspace`] from [`Db::keyspace`] |
//! | ordered scans | [`ScanOptions`] (or `prefix`, `range`), yielding [`Entry`]s of a [`Value`] |
//! | a consistent multi-key read | [`ReadView`] from [`Db::view`], its [`ViewKeyspace`]s |
//! | reading beside a running writer | [`ReadOnlyDb`] from [`Db::open_read_only`] |
//! | durability and limits | [`Options`], [`SyncMode`], [`RecoveryMode`] |
//! | merging copies offline | [`Db::export_for`] / [`Db::import_from`] (change sets), [`Db::export_to`] / [`Db::import_stream`] (streams), [`SyncCursor`], [`sync`] |
//! | a leader and read-only followers | [`replication`]: `ReplicationServer`, `Follower` |
//! | sync through S3, GCS, Azure or a folder | `bucket::Bucket` (feature `object-store`) |
//! | users, API keys, secrets | `auth::AuthService` (feature `auth`) |
//! | encryption at rest | [`EncryptionKey`], [`KeySource`], [`Options::encryption_key`] |
//! | checking files, repairing | [`verify()`], [`RecoveryMode::Repair`], [`Db::recovery_report`] |
//! | clocks and stamps | [`Stamp`], [`NodeId`], [`ManualClock`] for deterministic tests |
//! | what went wrong | [`Error`] (every fallible call says which variants in its `# Errors`) |
//!
//! Modules hidden from these docs (`codec`, `crdt`, `io`, `fuzzing`, `run`,
//! and a few protocol internals) are public only for mergekv's own tests,
//! fuzz targets and benches: they are not part of the stable API.
//!
//! On top of the engine, the auth service (`auth::AuthService`, feature
//! `auth`) keeps users (argon2id), scoped API keys and AES-256-GCM
//! encrypted secrets in the database itself, so they persist and merge
//! like any data.
//!
//! ## Features
//!
//! - `auth`: the auth service (`auth`; argon2, aes-gcm).
//! - `tls`: TLS for replication connections (rustls, ring backend).
//! - `object-store`: sync through an object store (`bucket`; object_store,
//!   tokio, reqwest).
//! - `cli`: the `mergekv` program; turns on `auth` and `tls`.
//!
//! The default is `cli` and `object-store`; with `default-features = false`
//! the store comes alone (engine, replication, sync through files,
//! encryption at rest). A database written with `auth` opens and works
//! without it: its reserved `_auth` keyspace is kept untouched.
//!
//! See `docs/ARCHITECTURE.md` for the code map and `docs/FORMAT.md` for the
//! byte layouts.

#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::missing_errors_doc
)]

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "object-store")]
pub mod bucket;
pub mod clock;
// Hidden modules below are `pub` only so that mergekv's own integration
// tests, fuzz targets and benches (separate crates) can reach internals;
// they are not part of the stable API and may change in any release. (No
// outer `///` docs on them: rustdoc would resolve the module's own links
// from the crate root.)
// Byte readers and writers for the hand-written formats.
#[doc(hidden)]
pub mod codec;
pub mod command;
pub mod compactor;
// The CRDT states behind every value (tests and fuzz targets reach them).
#[doc(hidden)]
pub mod crdt;
pub mod crypto;
mod db;
mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
// The one seam for files, the simulated disk and fault injection: for
// mergekv's own tests.
#[doc(hidden)]
pub mod io;
mod manifest;
mod meta;
pub mod options;
mod record;
pub mod replication;
// The sorted-run file format. Public but hidden: the fuzz targets and
// the format tests reach it; it is not a supported API. (A `//` comment:
// an outer doc here would make rustdoc resolve the module's own links
// from the crate root.)
#[doc(hidden)]
pub mod run;
mod snapshot;
mod state;
pub mod sync;
pub mod verify;
mod wal;
mod worker;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "auth")]
pub use auth::{AuthOptions, AuthService};
pub use clock::{DriftPolicy, ManualClock, NodeId, Stamp, SystemClock, WallClock};
pub use command::{Batch, DEFAULT_KEYSPACE, Op, OpKind, Outcome, OutcomeKind};
pub use compactor::{CompactionReport, CompactorStats, CursorInfo, RekeyReport};
pub use crypto::{EncryptionKey, KeyId, KeySource};
pub use db::FollowerPosition;
pub use db::read::{Entry, ReadView, Scan, ScanOptions, Value, ViewKeyspace};
pub use db::{Db, EncryptionStatus, Keyspace, ReadOnlyDb, Stats};
pub use error::{Error, KeyError, Result};
// Test hooks (for `Options::faults`): not part of the stable API. `IoOp`
// stays documented as `error::IoOp`, the kind in `Error::Io`.
#[doc(hidden)]
pub use io::{FaultInjector, IoOp};
pub use meta::Renewal;
pub use options::{Options, RecoveryMode, SyncMode};
pub use sync::{ImportReport, SegmentEntry, SegmentImport, SyncCursor};
pub use verify::{VerifyReport, verify, verify_with};
pub use wal::WalStats;
pub use wal::recovery::{
    RecoveryReport, RepairReport, RunsUsed, SalvageReport, SnapshotUsed, TornTail,
};
