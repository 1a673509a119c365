//! One sync round, a backup round, and a restore (see the module docs of
//! `bucket` and `docs/ARCHITECTURE.md`, "Bucket sync", for the rules).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::head::{
    Claim, Head, ObjectRef, Retired, SnapshotRef, claim_name, head_name, node_of_head_name,
    object_name, snapshot_name,
};
use super::local::{FormerTail, KeptHead, LocalState, decode_present, encode_present};
use super::store::{Listed, Written};
use super::{Bucket, BucketOptions};
use crate::clock::{NodeId, Stamp};
use crate::crypto::Keyring;
use crate::crypto::sealed::{self, SealedKind};
use crate::db::Db;
use crate::engine::Engine;
use crate::error::{BucketError, Error, Result};
use crate::options::Options;
use crate::sync::SyncCursor;
use crate::sync::exchange::{
    complete_cursor, forget_local, local_get, local_put, merge_local_cursor,
};

/// Objects and changes moved one way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// Objects (change objects and snapshots).
    pub objects: u64,
    /// Key records in them.
    pub changes: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// This copy's news, published.
    pub pushed: Transfer,
    /// Other copies' changes, downloaded and imported.
    pub pulled: Transfer,
    /// Changes the imports applied (not already held).
    pub applied: u64,
    /// A snapshot published this round, if one was.
    pub snapshot_published: Option<Transfer>,
    /// Snapshots imported to start from (a late join).
    pub snapshots_imported: u64,
    /// Copies with a head in the bucket, this one included.
    pub copies: usize,
    /// Copies silent past the horizon (no longer waited for).
    pub silent: Vec<NodeId>,
    /// Heads ignored: their copy never claimed its id in the bucket (or
    /// claimed it as another incarnation).
    pub unclaimed: Vec<NodeId>,
    /// Heads (or their claims) that could not be read, with why: skipped.
    pub unreadable: Vec<String>,
    /// Objects deleted (past the grace period).
    pub deleted: u64,
    /// Deletes that failed (tried again next round).
    pub delete_failed: u64,
    /// Whether this copy's head was written.
    pub head_written: bool,
    /// Requests this round made.
    pub requests: super::RequestCounts,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// What was downloaded and imported.
    pub pulled: Transfer,
    /// The snapshot started from (its object name), if any.
    pub snapshot: Option<String>,
    /// The time restored to, if one was asked for.
    pub at_ms: Option<u64>,
}

fn state_key(bucket: &Bucket) -> String {
    let id = blake3::hash(bucket.identity().as_bytes());
    format!("bucket/{}", &id.to_hex()[..16])
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::Network {
        what: "drawing a random nonce".into(),
        source: Arc::new(std::io::Error::other(e.to_string())),
    })?;
    Ok(u64::from_le_bytes(b))
}

fn bucket_err(e: BucketError) -> Error {
    Error::Bucket(e)
}

/// `HistoryGone` for copy `h`, merged here up to `p`, whose next object
/// kept is publication `oldest_seq`.
fn history_gone(h: &Head, p: Stamp, oldest_seq: u64) -> Error {
    bucket_err(BucketError::HistoryGone {
        origin: h.node,
        merged_seq: h
            .objects
            .iter()
            .filter(|x| x.last <= p)
            .map(|x| x.seq)
            .max()
            .unwrap_or(0),
        oldest_seq,
    })
}

fn malformed(object: &str, reason: impl Into<String>) -> Error {
    bucket_err(BucketError::Malformed {
        object: object.to_string(),
        reason: reason.into(),
    })
}

/// Seals a head or claim under the database's key, if it has one.
fn seal(keyring: &Keyring, name: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    sealed::seal(keyring, SealedKind::BucketObject, name.as_bytes(), bytes)
}

/// Opens a head or claim: sealed ones under the database's keys; one in
/// clear is refused by an encrypted database (anyone could have written
/// it).
fn unseal(keyring: &Keyring, name: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if sealed::is_sealed(&bytes) {
        return sealed::open(keyring, SealedKind::BucketObject, name.as_bytes(), &bytes);
    }
    if keyring.current().is_some() {
        return Err(malformed(
            name,
            "in clear, refused by an encrypted database",
        ));
    }
    Ok(bytes)
}

fn read_head(
    bucket: &Bucket,
    keyring: &Keyring,
    name: &str,
) -> Result<Option<(Head, Option<String>)>> {
    let Some((bytes, e_tag)) = bucket
        .objects()
        .get(name, super::head::HEAD_BYTES_MAX as u64)?
    else {
        return Ok(None);
    };
    let bytes = unseal(keyring, name, bytes)?;
    let head = Head::decode(&bytes).map_err(|r| malformed(name, r))?;
    Ok(Some((head, e_tag)))
}

/// Downloads `name`, checks its size and blake3 against what names it.
fn fetch_checked(
    bucket: &Bucket,
    name: &str,
    head: &str,
    size: u64,
    hash: &[u8; 32],
) -> Result<Vec<u8>> {
    let max = bucket.options.object_bytes_max;
    if size > max {
        return Err(malformed(
            name,
            format!("{size} bytes, more than object_bytes_max {max}"),
        ));
    }
    // The size the head gives is the most read (and what the download's
    // deadline is sized for).
    let Some((bytes, _)) = bucket.objects().get(name, size)? else {
        return Err(bucket_err(BucketError::MissingObject {
            object: name.to_string(),
            head: head.to_string(),
        }));
    };
    let found = blake3::hash(&bytes);
    if found.as_bytes() != hash || bytes.len() as u64 != size {
        return Err(bucket_err(BucketError::Tampered {
            object: name.to_string(),
            expected: hex(hash),
            found: found.to_hex().to_string(),
        }));
    }
    Ok(bytes)
}

/// Creates an immutable object and checks that all of it landed (a
/// store or proxy that cuts an upload short is caught here, and the cut
/// object removed, before any head names it).
fn upload(bucket: &Bucket, name: &str, bytes: &[u8]) -> Result<bool> {
    if bucket.objects().create(name, bytes)? == Written::Lost {
        // An attempt whose answer was lost may have landed, and the retry
        // then finds the name taken: by these very bytes, it is ours.
        let found = bucket.objects().get(name, bytes.len() as u64)?;
        return Ok(found.is_some_and(|(found, _)| found == bytes));
    }
    let landed = bucket.objects().size_of(name)?;
    if landed != Some(bytes.len() as u64) {
        bucket.objects().delete(name)?;
        return Err(malformed(
            name,
            format!(
                "the upload landed as {} of {} bytes; removed, published again next round",
                landed.map_or("nothing".to_string(), |n| n.to_string()),
                bytes.len()
            ),
        ));
    }
    Ok(true)
}

/// Imports a bucket object (checked whole already), held to what its head
/// says: the stream's origin must be the head's copy, and the cursor taken
/// is the head's (`covers` of a snapshot, `{copy: last}` of a change
/// object), never the stream's own.
fn import_object(
    engine: &Engine,
    bytes: &[u8],
    name: &str,
    origin: NodeId,
    cursor: &SyncCursor,
    until: Option<Stamp>,
) -> Result<crate::sync::ImportReport> {
    let expected = crate::sync::stream::Expected { origin, cursor };
    crate::sync::stream::import_until(engine, &mut &bytes[..], until, Some(expected)).map_err(|e| {
        match e {
            Error::Decode { reason, .. } => malformed(name, reason),
            other => other,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn origin_floor(node: NodeId) -> Stamp {
    Stamp {
        physical_ms: 0,
        logical: 0,
        node,
    }
}

struct Round<'a> {
    bucket: &'a Bucket,
    engine: &'a Engine,
    keyring: Keyring,
    node: NodeId,
    now_ms: u64,
    key: String,
    st: LocalState,
    report: SyncReport,
    /// The bucket's copy of our head is missing or older than ours: write
    /// it this round even if nothing in it changed.
    force_head: bool,
    /// The former identity's tail went out this round (see
    /// `LocalState::former`).
    former_done: bool,
    /// A backup round: publishes, never pulls (said in the head).
    backup: bool,
}

impl Round<'_> {
    fn save(&self) -> Result<()> {
        local_put(self.engine, &self.key, self.st.encode()?)
    }

    /// Saves the state and makes it durable whatever the sync mode (it
    /// must survive a crash before the write it announces).
    fn save_durable(&self) -> Result<()> {
        self.save()?;
        self.engine.wal().sync_written()
    }

    fn options(&self) -> &BucketOptions {
        &self.bucket.options
    }

    fn clone_detected(&self, detail: impl Into<String>) -> Error {
        bucket_err(BucketError::CloneDetected {
            node: self.node,
            detail: detail.into(),
        })
    }

    /// Claims the node id in the bucket, once.
    fn claim(&mut self) -> Result<()> {
        if self.st.claimed {
            return Ok(());
        }
        let name = claim_name(self.node);
        let claim = Claim {
            node: self.node,
            incarnation: self.st.incarnation,
            claimed_ms: self.now_ms,
        };
        let bytes = seal(&self.keyring, &name, claim.encode())?;
        // Checked whole once written: a claim cut short would make every
        // other copy ignore this one.
        if !upload(self.bucket, &name, &bytes)? {
            let Some((found, _)) = self.bucket.objects().get(&name, 64 * 1024)? else {
                return Err(malformed(&name, "exists, then vanished"));
            };
            let found = unseal(&self.keyring, &name, found)?;
            let found = Claim::decode(&found).map_err(|r| malformed(&name, r))?;
            if found.incarnation != self.st.incarnation || found.node != self.node {
                return Err(self.clone_detected(format!(
                    "the bucket's claim on this id was made by another directory (incarnation {}, \
                     this one is {})",
                    hex(&found.incarnation),
                    hex(&self.st.incarnation)
                )));
            }
        }
        self.st.claimed = true;
        self.save()
    }

    /// Our head as the bucket has it, checked against what we last wrote.
    fn own_head(&mut self, listed: Option<&Listed>) -> Result<Head> {
        let ours = match &self.st.head {
            Some(bytes) => Some(Head::decode(bytes).map_err(|r| malformed("local head", r))?),
            None => None,
        };
        let name = head_name(self.node);
        let Some(listed) = listed else {
            // Never written, or lost by the store: (re)written this round.
            self.st.head_e_tag = None;
            self.force_head = true;
            return Ok(ours.unwrap_or_else(|| self.fresh_head()));
        };
        if listed.e_tag.is_some() && listed.e_tag == self.st.head_e_tag && ours.is_some() {
            return Ok(ours.unwrap_or_else(|| self.fresh_head()));
        }
        let Some((found, e_tag)) = read_head(self.bucket, &self.keyring, &name)? else {
            self.st.head_e_tag = None;
            self.force_head = true;
            return Ok(ours.unwrap_or_else(|| self.fresh_head()));
        };
        if found.node != self.node {
            return Err(malformed(
                &name,
                format!("a head of {} under this copy's name", found.node),
            ));
        }
        if found.incarnation != self.st.incarnation {
            return Err(self.clone_detected(format!(
                "the bucket's head for this id was written by another directory (incarnation {})",
                hex(&found.incarnation)
            )));
        }
        let ours_generation = ours.as_ref().map_or(0, |h| h.generation);
        let landed = self.st.pending == Some((found.generation, found.nonce));
        let same = ours
            .as_ref()
            .is_some_and(|h| h.generation == found.generation && h.nonce == found.nonce);
        if landed || same {
            // Our own write (one that landed before a crash, or the same
            // one under a new version tag).
            self.st.pending = None;
            self.st.head = Some(found.encode());
            self.st.head_e_tag = e_tag;
            self.save_durable()?;
            return Ok(found);
        }
        if found.generation >= ours_generation && ours_generation > 0 {
            return Err(self.clone_detected(format!(
                "the bucket's head for this id is at generation {}, this directory wrote up to {}",
                found.generation, ours_generation
            )));
        }
        // Older than ours: the store lost a write. Ours is rewritten.
        self.st.head_e_tag = e_tag;
        self.force_head = true;
        Ok(ours.unwrap_or_else(|| self.fresh_head()))
    }

    fn fresh_head(&self) -> Head {
        Head {
            node: self.node,
            incarnation: self.st.incarnation,
            generation: 0,
            nonce: 0,
            updated_ms: 0,
            backup_only: false,
            collect_below_ms: 0,
            objects: Vec::new(),
            snapshots: Vec::new(),
            merged: SyncCursor::new(),
            expelled: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// Other copies' heads: downloaded only when their version tag changed.
    fn other_heads(&mut self, listing: &[Listed]) -> Result<Vec<Arc<Head>>> {
        let mut heads = Vec::new();
        for l in listing {
            let Some(node) = node_of_head_name(&l.name) else {
                continue;
            };
            if node == self.node {
                continue;
            }
            if let Some(h) = self.bucket.cached_head(self.node, node, &l.e_tag) {
                heads.push(h);
                continue;
            }
            if self.bucket.known_unclaimed(node, &l.e_tag) {
                self.report.unclaimed.push(node);
                continue;
            }
            // Read by an earlier process at this version: kept in `_local`,
            // so a new process's idle round is one listing too.
            let kept_key = format!("{}/head/{:016x}", self.key, node.0);
            if let Some(e_tag) = &l.e_tag
                && let Some(bytes) = local_get(self.engine, &kept_key)?
                // A kept head is a cache: one that does not decode is a miss.
                && let Ok(kept) = KeptHead::decode(&bytes)
                && kept.e_tag == *e_tag
                && let Ok(head) = Head::decode(&kept.head)
                && head.node == node
            {
                let head = Arc::new(head);
                self.bucket.note_claim(node, head.incarnation);
                self.bucket
                    .cache_head(self.node, node, l.e_tag.clone(), head.clone());
                heads.push(head);
                continue;
            }
            // One head that cannot be read (damaged, another format, another
            // key) is skipped and reported: it must not stop every copy.
            let (head, e_tag) = match read_head(self.bucket, &self.keyring, &l.name) {
                Ok(Some(found)) => found,
                Ok(None) => continue, // deleted since the listing
                Err(
                    e
                    @ Error::Bucket(BucketError::Unreachable { .. } | BucketError::Refused { .. }),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    self.report.unreadable.push(format!("{}: {e}", l.name));
                    continue;
                }
            };
            if head.node != node {
                self.report
                    .unreadable
                    .push(format!("{}: holds the head of {}", l.name, head.node));
                continue;
            }
            // A head is taken only from a copy that claimed its id with
            // the incarnation the head names (checked once per copy and
            // incarnation).
            match self.claimed_by(&head) {
                Ok(true) => {}
                Ok(false) => {
                    self.bucket.note_unclaimed(node, e_tag);
                    self.report.unclaimed.push(head.node);
                    continue;
                }
                Err(
                    e
                    @ Error::Bucket(BucketError::Unreachable { .. } | BucketError::Refused { .. }),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    self.report
                        .unreadable
                        .push(format!("{}: {e}", claim_name(head.node)));
                    continue;
                }
            }
            let kept = e_tag.as_ref().map(|tag| KeptHead {
                e_tag: tag.clone(),
                head: head.encode(),
            });
            // Over a limit (an absurd version tag), it is just not kept.
            if let Some(Ok(bytes)) = kept.map(|k| k.encode()) {
                local_put(self.engine, &kept_key, bytes)?;
            }
            let head = Arc::new(head);
            self.bucket.cache_head(self.node, node, e_tag, head.clone());
            heads.push(head);
        }
        Ok(heads)
    }

    /// Refuses a first round whose own writes are older than what a live
    /// copy may have collected tombstones below (see `Head::collect_below_ms`).
    fn check_join(&self, live: &[Arc<Head>]) -> Result<()> {
        // A copy collects tombstones older than its grace at any time, not
        // only when it writes its head: the horizon is now less the
        // shortest grace a head shows.
        let Some(grace) = live
            .iter()
            .map(|h| h.updated_ms.saturating_sub(h.collect_below_ms))
            .min()
        else {
            return Ok(());
        };
        let horizon = self.now_ms.saturating_sub(grace);
        let node = self.node;
        let mut oldest: Option<u64> = None;
        for entry in self.engine.state().view().iter_uncached() {
            let (key, state) = entry?;
            if crate::sync::is_local(&key) {
                continue;
            }
            let own = state
                .register
                .iter()
                .map(|r| r.stamp)
                .chain(
                    state
                        .counter
                        .iter()
                        .flat_map(|c| c.totals.iter().map(|t| t.stamp)),
                )
                .filter(|s| s.node == node)
                .map(|s| s.physical_ms)
                .min();
            oldest = oldest.min(own).or(oldest).or(own);
        }
        match oldest {
            Some(oldest_ms) if oldest_ms < horizon => Err(bucket_err(BucketError::StaleJoin {
                node,
                oldest_write_ms: oldest_ms,
                horizon_ms: horizon,
            })),
            _ => Ok(()),
        }
    }

    /// Whether `head`'s copy claimed its node id with `head`'s incarnation.
    fn claimed_by(&self, head: &Head) -> Result<bool> {
        if self.bucket.claim_known(head.node, head.incarnation) {
            return Ok(true);
        }
        let name = claim_name(head.node);
        let Some((bytes, _)) = self.bucket.objects().get(&name, 64 * 1024)? else {
            return Ok(false);
        };
        let claim = Claim::decode(&unseal(&self.keyring, &name, bytes)?)
            .map_err(|r| malformed(&name, r))?;
        let ok = claim.node == head.node && claim.incarnation == head.incarnation;
        if ok {
            self.bucket.note_claim(head.node, head.incarnation);
        }
        Ok(ok)
    }

    fn progress(&self, origin: NodeId) -> Stamp {
        self.st
            .progress
            .get(&origin.0)
            .copied()
            .unwrap_or(origin_floor(origin))
    }

    /// Imports a snapshot (whole, checked), and counts every origin it
    /// covers as merged up to where it covers it.
    fn import_snapshot(&mut self, maker: &Head, s: &SnapshotRef) -> Result<()> {
        let name = snapshot_name(maker.node, s.seq, s.nonce);
        let bytes = fetch_checked(self.bucket, &name, &head_name(maker.node), s.bytes, &s.hash)?;
        let imported = import_object(self.engine, &bytes, &name, maker.node, &s.covers, None)?;
        self.report.pulled.objects += 1;
        self.report.pulled.changes += s.changes;
        self.report.pulled.bytes += s.bytes;
        self.report.applied += imported.applied;
        self.report.snapshots_imported += 1;
        for (origin, stamp) in &s.covers.seen {
            if *origin == self.node {
                continue;
            }
            // Only for copies nothing was merged from yet: for the others,
            // what lies between their progress and the snapshot is pulled
            // as objects, or is a gap (`HistoryGone`): a snapshot cannot
            // take back older changes already held.
            self.st.progress.entry(origin.0).or_insert(*stamp);
        }
        self.save()
    }

    /// Pulls what this copy has not merged from `h`'s objects, in order.
    fn pull_from(
        &mut self,
        h: &Head,
        snapshots: &[(Arc<Head>, SnapshotRef)],
        up_to: Option<Stamp>,
    ) -> Result<()> {
        let head = head_name(h.node);
        for o in &h.objects {
            let p = self.progress(h.node);
            if o.last <= p {
                continue;
            }
            if up_to.is_some_and(|limit| o.last > limit) {
                break;
            }
            if o.after > p && self.st.progress.contains_key(&h.node.0) {
                // Objects we never merged were collected while we held
                // older ones of this copy: a snapshot cannot take back
                // what we hold (a put whose delete was collected), so no
                // bridge: this copy must start afresh.
                return Err(history_gone(h, p, o.seq));
            }
            if o.after > p {
                // Nothing merged of this copy yet, and its first objects
                // were collected: a snapshot that covers up to this
                // object's start bridges the gap.
                let bridge = snapshots
                    .iter()
                    .filter(|(_, s)| s.covers.seen.get(&h.node).is_some_and(|c| *c >= o.after))
                    .max_by_key(|(_, s)| s.made_ms)
                    .cloned();
                match bridge {
                    Some((maker, s)) => self.import_snapshot(&maker, &s)?,
                    None => {
                        return Err(history_gone(h, p, o.seq));
                    }
                }
                if o.last <= self.progress(h.node) {
                    continue;
                }
            }
            let name = object_name(h.node, o.seq, o.nonce);
            let bytes = fetch_checked(self.bucket, &name, &head, o.bytes, &o.hash)?;
            let last = SyncCursor {
                seen: [(h.node, o.last)].into_iter().collect(),
            };
            let imported = import_object(self.engine, &bytes, &name, h.node, &last, None)?;
            self.report.pulled.objects += 1;
            self.report.pulled.changes += o.changes;
            self.report.pulled.bytes += o.bytes;
            self.report.applied += imported.applied;
            self.st.progress.insert(h.node.0, o.last);
            self.save()?;
        }
        // Its head says it published further than any object left: what
        // lies between was collected while this copy held older changes
        // of it (a snapshot cannot take those back).
        let p = self.progress(h.node);
        if up_to.is_none()
            && self.st.progress.contains_key(&h.node.0)
            && h.merged
                .seen
                .get(&h.node)
                .is_some_and(|published| *published > p)
        {
            return Err(history_gone(h, p, h.objects.first().map_or(0, |o| o.seq)));
        }
        Ok(())
    }

    /// Publishes this copy's writes newer than the last publication.
    fn publish(&mut self, own: &mut Head) -> Result<()> {
        let claim = self.engine.claimable();
        // What the head (as the bucket has it) says was published: an
        // object uploaded in a round whose head write failed is named by
        // no head, and its changes go out again in the next object.
        let published = own
            .merged
            .seen
            .get(&self.node)
            .copied()
            .unwrap_or(origin_floor(self.node));
        if claim <= published && self.st.former.is_none() {
            return Ok(());
        }
        // No data written since what was published, or since a scan that
        // found nothing to publish: only bookkeeping (this round's own
        // `_local` writes among it), and an idle round does not walk the
        // state again.
        let data = self.engine.data_issued();
        if self.st.former.is_none()
            && (data <= published || self.bucket.scanned(self.node).is_some_and(|m| data <= m))
        {
            return Ok(());
        }
        let node = self.node;
        // The former identity's unpublished writes, if this directory is
        // the one that continued it (no one wrote its head since).
        let former = match self.st.former.clone() {
            Some(f) if self.former_is_ours(&f)? => Some((NodeId(f.node), f.published)),
            _ => {
                self.st.former = None;
                None
            }
        };
        let view = self.engine.state().view();
        let select = move |s: Stamp| {
            (s.node == node && s > published && s <= claim)
                || former.is_some_and(|(n, p)| s.node == n && s > p)
        };
        let complete = SyncCursor {
            seen: [(node, claim)].into_iter().collect(),
        };
        let mut bytes = Vec::new();
        let written = crate::sync::stream::export_where(
            &view,
            node,
            &select,
            &complete,
            &self.keyring,
            &mut bytes,
        )?;
        drop(view);
        if former.is_some() {
            // Cleared once a head naming what went out is written.
            self.former_done = true;
            self.force_head = true;
        }
        if written.records == 0 {
            self.bucket.note_scanned(self.node, claim);
            // Nothing of ours is newer (overwritten by other copies, or
            // only bookkeeping): the next object still follows `published`.
            return Ok(());
        }
        let seq = own
            .objects
            .last()
            .map_or(0, |o| o.seq)
            .max(self.st.last_seq)
            + 1;
        self.st.last_seq = seq;
        let nonce = random_u64()?;
        let name = object_name(node, seq, nonce);
        if !upload(self.bucket, &name, &bytes)? {
            return Err(self.clone_detected(format!("{name} exists already")));
        }
        own.objects.push(ObjectRef {
            seq,
            nonce,
            after: published,
            last: claim,
            changes: written.records,
            bytes: bytes.len() as u64,
            hash: *blake3::hash(&bytes).as_bytes(),
            published_ms: self.now_ms,
        });
        own.merged.seen.insert(node, claim);
        self.report.pushed.objects += 1;
        self.report.pushed.changes += written.records;
        self.report.pushed.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Whether the head of a former identity is still as this directory
    /// last wrote it (then no other directory continues that identity).
    fn former_is_ours(&self, f: &FormerTail) -> Result<bool> {
        let name = head_name(NodeId(f.node));
        Ok(match read_head(self.bucket, &self.keyring, &name) {
            Ok(Some((h, _))) => h.generation == f.generation && h.nonce == f.nonce,
            Ok(None) => true,
            Err(
                e @ Error::Bucket(BucketError::Unreachable { .. } | BucketError::Refused { .. }),
            ) => {
                return Err(e);
            }
            Err(_) => false,
        })
    }

    /// Publishes a snapshot of everything this copy holds.
    fn publish_snapshot(&mut self, own: &mut Head) -> Result<()> {
        let complete = complete_cursor(self.engine)?;
        let view = self.engine.state().view();
        let mut bytes = Vec::new();
        let written = crate::sync::stream::export_where(
            &view,
            self.node,
            &|_| true,
            &complete,
            &self.keyring,
            &mut bytes,
        )?;
        drop(view);
        let seq = own.snapshots.last().map_or(0, |s| s.seq) + 1;
        let nonce = random_u64()?;
        let name = snapshot_name(self.node, seq, nonce);
        if !upload(self.bucket, &name, &bytes)? {
            return Err(self.clone_detected(format!("{name} exists already")));
        }
        own.snapshots.push(SnapshotRef {
            seq,
            nonce,
            covers: complete,
            changes: written.records,
            bytes: bytes.len() as u64,
            hash: *blake3::hash(&bytes).as_bytes(),
            made_ms: self.now_ms,
        });
        self.report.snapshot_published = Some(super::Transfer {
            objects: 1,
            changes: written.records,
            bytes: bytes.len() as u64,
        });
        Ok(())
    }

    /// Writes our head if anything in it changed (or the heartbeat is
    /// due), by a conditional update against the version we last saw.
    fn write_head(&mut self, before: &Head, mut own: Head) -> Result<()> {
        let changed = self.force_head
            || own.objects != before.objects
            || own.snapshots != before.snapshots
            || own.merged != before.merged
            || own.expelled != before.expelled
            || own.retired != before.retired
            || own.backup_only != self.backup
            || self.st.head_e_tag.is_none();
        let heartbeat =
            self.now_ms.saturating_sub(before.updated_ms) >= self.options().heartbeat_ms;
        if !changed && !heartbeat {
            return Ok(());
        }
        if own.objects.len() > super::head::HEAD_OBJECTS_MAX {
            // Collection is stalled (a copy that never merges, a retention
            // longer than the publications fit): refused before a head no
            // reader would take is written.
            return Err(malformed(
                &head_name(self.node),
                format!(
                    "{} live objects, more than a head may name ({}): collection is stalled; \
                     check for copies that never merge, or shorten retain_ms",
                    own.objects.len(),
                    super::head::HEAD_OBJECTS_MAX
                ),
            ));
        }
        own.backup_only = self.backup;
        own.generation = before.generation + 1;
        own.nonce = random_u64()?;
        own.updated_ms = self.now_ms;
        own.collect_below_ms = self
            .now_ms
            .saturating_sub(self.engine.options().tombstone_grace_ms);
        let name = head_name(self.node);
        let bytes = seal(&self.keyring, &name, own.encode())?;
        if bytes.len() > super::head::HEAD_BYTES_MAX {
            // Readers, this copy included, take no bigger head.
            return Err(malformed(
                &name,
                format!(
                    "{} bytes, more than a head may hold ({}): collection is stalled; check \
                     for copies that never merge, or shorten retain_ms",
                    bytes.len(),
                    super::head::HEAD_BYTES_MAX
                ),
            ));
        }
        self.st.pending = Some((own.generation, own.nonce));
        self.save_durable()?;
        let expected = self.st.head_e_tag.clone();
        match self
            .bucket
            .objects()
            .update(&name, &bytes, expected.as_deref())?
        {
            Written::Done(e_tag) => {
                if self.former_done {
                    self.st.former = None;
                }
                // The bucket itself is a peer: a tombstone of ours is kept
                // until a head of ours says it was published (and others'
                // until we hold them), or a delete could be collected here
                // before any other copy could see it.
                merge_local_cursor(self.engine, &self_peer_key(&self.key), &own.merged)?;
                self.st.pending = None;
                self.st.head = Some(own.encode());
                self.st.head_e_tag = e_tag;
                self.save()?;
                self.report.head_written = true;
                Ok(())
            }
            Written::Lost => {
                // An attempt whose answer was lost may have landed: then
                // the head is ours (this generation and nonce).
                match read_head(self.bucket, &self.keyring, &name)? {
                    Some((found, e_tag))
                        if found.generation == own.generation && found.nonce == own.nonce =>
                    {
                        self.st.pending = None;
                        self.st.head = Some(found.encode());
                        self.st.head_e_tag = e_tag;
                        self.save()?;
                        self.report.head_written = true;
                        Ok(())
                    }
                    _ => Err(self.clone_detected(
                        "another writer replaced this copy's head between its read and its update",
                    )),
                }
            }
        }
    }
}

/// The newest snapshot in the bucket (by when it was made), with its maker.
fn snapshots_of(heads: &[Arc<Head>]) -> Vec<(Arc<Head>, SnapshotRef)> {
    let mut all: Vec<_> = heads
        .iter()
        .flat_map(|h| h.snapshots.iter().map(move |s| (h.clone(), s.clone())))
        .collect();
    // One order every copy agrees on (a tie in time is broken by the
    // maker's id, then its number), so "the newest" is the same snapshot
    // for the copy that collects and for the one that joins.
    all.sort_by_key(|(h, s)| (s.made_ms, h.node, s.seq));
    all
}

pub(crate) fn sync(bucket: &Bucket, engine: &Engine, pull: bool) -> Result<SyncReport> {
    let before_requests = bucket.requests();
    let node = engine.node();
    let key = state_key(bucket);
    let mut st = match local_get(engine, &key)? {
        Some(bytes) => LocalState::decode(&bytes)?,
        None => LocalState::default(),
    };
    if st.node != node.0 {
        // A new copy, or one given a fresh identity: a new claim, head
        // and publication sequence; what it merged stays merged. Under a
        // fresh identity, what it wrote under the former one and had not
        // published is remembered (see `publish`).
        let former = st
            .head
            .as_deref()
            .and_then(|bytes| Head::decode(bytes).ok())
            .map(|h| FormerTail {
                node: h.node.0,
                generation: h.generation,
                nonce: h.nonce,
                published: h
                    .merged
                    .seen
                    .get(&h.node)
                    .copied()
                    .unwrap_or(origin_floor(h.node)),
            })
            .or(st.former.take());
        let progress = std::mem::take(&mut st.progress);
        st = LocalState {
            node: node.0,
            progress,
            former,
            ..LocalState::default()
        };
        getrandom::fill(&mut st.incarnation).map_err(|e| Error::Network {
            what: "drawing an incarnation id".into(),
            source: Arc::new(std::io::Error::other(e.to_string())),
        })?;
        // Durable before the claim names the incarnation: lost in a crash,
        // the next round would draw another and take its own claim for a
        // clone's.
        local_put(engine, &key, st.encode()?)?;
        engine.wal().sync_written()?;
    }
    let mut round = Round {
        bucket,
        engine,
        keyring: engine.wal().keyring().read().clone(),
        node,
        now_ms: engine.now_ms(),
        key,
        st,
        report: SyncReport::default(),
        force_head: false,
        former_done: false,
        backup: !(pull && bucket.options.pull),
    };
    let pull = pull && bucket.options.pull;
    let listing = bucket.objects().list("heads")?;
    let own_name = head_name(node);
    if round.st.head.is_some()
        && !listing.iter().any(|l| l.name == own_name)
        && bucket.objects().size_of(&claim_name(node))?.is_none()
    {
        // Our head and our claim are gone: the bucket was emptied (or
        // replaced). Everything of ours is published again from scratch.
        let LocalState {
            node,
            incarnation,
            progress,
            ..
        } = std::mem::take(&mut round.st);
        round.st = LocalState {
            node,
            incarnation,
            progress,
            ..LocalState::default()
        };
        round.save_durable()?;
    }
    round.claim()?;
    let before = round.own_head(listing.iter().find(|l| l.name == own_name))?;
    let others = round.other_heads(&listing)?;
    round.report.copies = others.len() + 1;
    // Another copy stopped waiting for this one: it must start afresh.
    if let Some(by) = others
        .iter()
        .find(|h| h.expelled.iter().any(|(n, _)| *n == node))
    {
        return Err(bucket_err(BucketError::MustBootstrap {
            node,
            expelled_by: by.node,
        }));
    }
    // A head saying it holds our writes beyond what we issued: another
    // directory writes under our id.
    let claimable = engine.claimable();
    if let Some(h) = others
        .iter()
        .find(|h| h.merged.seen.get(&node).is_some_and(|s| *s > claimable))
    {
        return Err(round.clone_detected(format!(
            "{} holds writes of this id up to {}, beyond what this directory issued ({claimable})",
            h.node,
            h.merged.seen.get(&node).copied().unwrap_or(Stamp::ZERO)
        )));
    }
    if round.backup && before.generation > 0 && !before.backup_only {
        return Err(bucket_err(BucketError::BackupOfSyncingCopy { node }));
    }
    let mut own = before.clone();
    let horizon = bucket.options.silence_horizon_ms;
    let now = round.now_ms;
    // Since when this copy has been here without a break longer than the
    // horizon: a copy back from a long absence is as stale as the others,
    // and measures their silence from its return, not from its own rounds.
    let present_key = format!("{}/present", round.key);
    let returning = before.generation == 0 || now.saturating_sub(before.updated_ms) > horizon;
    // One that does not decode counts as a return now (no one is found
    // silent on its account), and is written again.
    let stored = local_get(engine, &present_key)?.and_then(|b| decode_present(&b).ok());
    let present_since = match stored {
        Some(since) if !returning => since,
        stored => {
            if stored != Some(now) {
                local_put(engine, &present_key, encode_present(now))?;
            }
            now
        }
    };
    // A copy is silent when this one went on without it for longer than
    // the horizon: present all that time, it pulled everything the other
    // published before falling quiet. (Another copy's activity proves
    // nothing: it may be just back from the same long absence.)
    let (silent, live): (Vec<_>, Vec<_>) = others
        .iter()
        .cloned()
        .partition(|h| now.saturating_sub(h.updated_ms.max(present_since)) > horizon);
    // Backups publish and never pull: no one waits for them.
    let (backups, live): (Vec<_>, Vec<_>) = live.into_iter().partition(|h| h.backup_only);
    drop(backups);
    let expelled_already: BTreeSet<NodeId> = own.expelled.iter().map(|(n, _)| *n).collect();
    let snapshots = snapshots_of(&live);
    let mut failure: Option<Error> = None;
    // Copies all of whose listed objects this round merged.
    let mut pulled_whole: BTreeSet<NodeId> = BTreeSet::new();
    // A copy that only backed up here until now joins as a new one: no
    // one waited for it, and its writes may be older than deletes the
    // others forgot.
    let joining =
        (before.generation == 0 && round.st.head.is_none()) || (before.backup_only && pull);
    if joining {
        // Writes made before joining, older than deletes the bucket's
        // copies may already have forgotten, could bring those keys back.
        round.check_join(&live)?;
    }
    if pull {
        // A copy that never merged anything starts from the newest
        // snapshot rather than the whole history.
        if round.st.progress.is_empty()
            && let Some((maker, s)) = snapshots.last().cloned()
            && let Err(e) = round.import_snapshot(&maker, &s)
        {
            failure.get_or_insert(e);
        }
        for h in &live {
            match round.pull_from(h, &snapshots, None) {
                Ok(()) => pulled_whole.insert(h.node),
                Err(e) => {
                    failure.get_or_insert(e);
                    false
                }
            };
        }
        // A silent copy's objects, as far as the live copies merged them:
        // they hold them, so this copy must too (further, their deletes
        // may be forgotten already).
        for h in &silent {
            let held = live
                .iter()
                .filter_map(|l| l.merged.seen.get(&h.node).copied())
                .max();
            if let Some(held) = held
                && let Err(e) = round.pull_from(h, &snapshots, Some(held))
            {
                failure.get_or_insert(e);
            }
        }
    }
    // Copies silent past the horizon are no longer waited for.
    for h in &silent {
        round.report.silent.push(h.node);
        if !expelled_already.contains(&h.node) {
            own.expelled.push((h.node, h.generation));
        }
        // Only if there is a cursor to forget: an idle round writes nothing.
        if local_get(engine, &peer_key(h.node))?.is_some() {
            forget_local(engine, &peer_key(h.node))?;
        }
    }
    // Entries for copies whose head is gone are dropped.
    own.expelled
        .retain(|(n, _)| others.iter().any(|h| h.node == *n));
    // Tombstone GC waits for every live copy's head; a copy's cursor is
    // taken only once every object its head lists is merged here (it may
    // have seen a delete after publishing an older put of that key: the
    // tombstone must stay until we hold that put too).
    for h in &live {
        if pulled_whole.contains(&h.node) {
            merge_local_cursor(engine, &peer_key(h.node), &h.merged)?;
        }
    }
    // Our own news goes out even if some other copy's objects could not
    // be merged (a damaged object must not silence this copy).
    round.publish(&mut own)?;
    // What this copy holds of every copy: of the others, its complete
    // cursor; of itself, what it published (its complete cursor's own
    // entry moves with every local write, bookkeeping included, and would
    // make every round rewrite the head). Others' tombstone collection
    // waits on both.
    let published = own.merged.seen.get(&node).copied();
    own.merged = complete_cursor(engine)?;
    own.merged.seen.remove(&node);
    if let Some(published) = published {
        own.merged.seen.insert(node, published);
    }
    // A snapshot when enough objects are not covered by one.
    let mut every: Vec<Arc<Head>> = live.clone();
    every.push(Arc::new(own.clone()));
    let newest = snapshots_of(&every).last().map(|(_, s)| s.covers.clone());
    let uncovered = every
        .iter()
        .flat_map(|h| h.objects.iter())
        .filter(|o| {
            newest
                .as_ref()
                .and_then(|c| c.seen.get(&o.last.node))
                .is_none_or(|c| *c < o.last)
        })
        .count();
    let smallest_live = every.iter().map(|h| h.node).min() == Some(node);
    let due = uncovered >= bucket.options.snapshot_after_objects
        && (smallest_live || uncovered >= 2 * bucket.options.snapshot_after_objects);
    let first_backup = !pull && own.snapshots.is_empty() && !own.objects.is_empty();
    if due || first_backup {
        round.publish_snapshot(&mut own)?;
    }
    collect(&mut round, &mut own, &live)?;
    sweep(&mut round, &before, &own)?;
    round.write_head(&before, own)?;
    round.report.requests = bucket.requests().since(&before_requests);
    match failure {
        Some(e) => Err(e),
        None => Ok(round.report),
    }
}

/// The peer cursor standing for the bucket itself (see `write_head`).
fn self_peer_key(state_key: &str) -> String {
    crate::sync::peer_cursor_key(&format!("bucket-self:{state_key}"))
}

fn peer_key(node: NodeId) -> String {
    crate::sync::peer_cursor_key(&format!("bucket:{:016x}", node.0))
}

/// Drops from our head what no copy needs any more, and deletes what was
/// dropped more than the grace period ago.
fn collect(round: &mut Round<'_>, own: &mut Head, live: &[Arc<Head>]) -> Result<()> {
    let now = round.now_ms;
    let options = round.options().clone();
    let node = round.node;
    let all = snapshots_of(&{
        let mut v: Vec<Arc<Head>> = live.to_vec();
        v.push(Arc::new(own.clone()));
        v
    });
    let newest = all.last().map(|(_, s)| s.covers.clone());
    // A head that could not be read this round may be a copy that has not
    // merged what the others have: nothing new is retired until it reads.
    let hold = !round.report.unreadable.is_empty();
    let retained = |published_ms: u64| now.saturating_sub(published_ms) < options.retain_ms;
    // Whether a snapshot older than the retention covers `last` of ours:
    // then a restore to any time within the retention starts from it or
    // a newer one, and needs no object it covers.
    let covered_long_enough = |last: Stamp| {
        all.iter().any(|(_, s)| {
            !retained(s.made_ms) && s.covers.seen.get(&node).is_some_and(|c| *c >= last)
        })
    };
    // Own objects: merged by every live copy, covered by the newest
    // snapshot (a late joiner starts there), and by one older than the
    // retention.
    let mut keep = Vec::new();
    for o in std::mem::take(&mut own.objects) {
        let covered = newest
            .as_ref()
            .and_then(|c| c.seen.get(&node))
            .is_some_and(|c| *c >= o.last);
        let merged = live
            .iter()
            .all(|h| h.merged.seen.get(&node).is_some_and(|c| *c >= o.last));
        if !hold && covered && merged && covered_long_enough(o.last) && keep.is_empty() {
            own.retired.push(Retired {
                name: object_name(node, o.seq, o.nonce),
                since_ms: now,
            });
        } else {
            keep.push(o);
        }
    }
    own.objects = keep;
    // Own snapshots: all but the newest, once past the retention.
    while !hold
        && own
            .snapshots
            .get(1)
            .is_some_and(|next| !retained(next.made_ms))
    {
        let s = own.snapshots.remove(0);
        own.retired.push(Retired {
            name: snapshot_name(node, s.seq, s.nonce),
            since_ms: now,
        });
    }
    // Delete what was dropped long enough ago.
    let mut kept = Vec::new();
    for r in std::mem::take(&mut own.retired) {
        if now.saturating_sub(r.since_ms) >= options.grace_ms {
            // A delete that fails is tried again next round; it does not
            // stop this one (the head must still be written).
            match round.bucket.objects().delete(&r.name) {
                Ok(()) => round.report.deleted += 1,
                Err(_) => {
                    round.report.delete_failed += 1;
                    kept.push(r);
                }
            }
        } else {
            kept.push(r);
        }
    }
    // Names whose delete keeps failing are not carried for ever: past
    // `RETIRED_MAX` the oldest leave the head, and the sweep (which deletes
    // every numbered object of ours that no head names) tries them again.
    if kept.len() > RETIRED_MAX {
        kept.drain(..kept.len() - RETIRED_MAX);
    }
    own.retired = kept;
    Ok(())
}

/// The most names a head carries as retired (deleted after the grace
/// period); see `collect`.
const RETIRED_MAX: usize = 4_096;

/// Deletes this copy's own objects that no head names: uploads of rounds
/// whose head write failed (their changes went out again in a later
/// object). Only names this copy numbered (a publication number it has
/// used) are swept; at most once per grace period, in a round that writes
/// its head anyway, so idle rounds stay one listing.
fn sweep(round: &mut Round<'_>, before: &Head, own: &Head) -> Result<()> {
    let due = round.now_ms.saturating_sub(round.st.last_sweep_ms) >= round.options().grace_ms;
    let head_changes = round.force_head || own.objects != before.objects;
    if !due || !head_changes {
        return Ok(());
    }
    let node = round.node;
    // A claim that went away (a lifecycle rule, a cleanup) is made again
    // with the same incarnation, or every other copy would ignore us.
    if round.bucket.objects().size_of(&claim_name(node))?.is_none() {
        round.st.claimed = false;
        round.claim()?;
    }
    let named: BTreeSet<String> = own
        .objects
        .iter()
        .map(|o| object_name(node, o.seq, o.nonce))
        .chain(
            own.snapshots
                .iter()
                .map(|s| snapshot_name(node, s.seq, s.nonce)),
        )
        .chain(own.retired.iter().map(|r| r.name.clone()))
        .collect();
    for dir in ["changes", "snapshots"] {
        let folder = format!("nodes/{:016x}/{dir}", node.0);
        for l in round.bucket.objects().list(&folder)? {
            let seq = l
                .name
                .rsplit('/')
                .next()
                .and_then(|n| n.split_once('-'))
                .and_then(|(seq, _)| u64::from_str_radix(seq, 16).ok());
            let ours = match dir {
                "changes" => seq.is_some_and(|s| s <= round.st.last_seq),
                _ => seq.is_some_and(|s| s <= own.snapshots.last().map_or(0, |x| x.seq)),
            };
            if ours && !named.contains(&l.name) {
                // As in `collect`: a delete the store refuses (a bucket
                // without delete rights, a retention lock) is reported and
                // tried again at the next sweep; it must not stop the head.
                match round.bucket.objects().delete(&l.name) {
                    Ok(()) => round.report.deleted += 1,
                    Err(_) => round.report.delete_failed += 1,
                }
            }
        }
    }
    round.st.last_sweep_ms = round.now_ms;
    Ok(())
}

pub(crate) fn restore(
    bucket: &Bucket,
    dir: &Path,
    options: Options,
    at_ms: Option<u64>,
) -> Result<(Db, RestoreReport)> {
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if occupied || crate::meta::meta_path(dir).exists() {
        return Err(Error::InvalidCommand {
            reason: format!(
                "{} is not empty: restore makes a new database",
                dir.display()
            ),
        });
    }
    // Built beside `dir` and renamed into place only once whole: a restore
    // that fails leaves no database that looks complete.
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let staging = dir.with_file_name(format!(".{name}.restoring-{:016x}", random_u64()?));
    let built = restore_into(bucket, &staging, options.clone(), at_ms);
    let report = match built {
        Ok((db, report)) => {
            db.close()?;
            report
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(|e| Error::io(crate::io::IoOp::Remove, dir, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| Error::io(crate::io::IoOp::Rename, dir, e))?;
    Ok((Db::open_with(dir, options)?, report))
}

/// Why restoring from a snapshot covering `covers` (none: from the first
/// publications) would miss changes: the first copy whose next object
/// starts after what the snapshot holds of it. `None` when nothing is
/// missing.
fn restore_gap(
    heads: &[Arc<Head>],
    covers: Option<&SyncCursor>,
    until: Option<Stamp>,
) -> Option<String> {
    for h in heads {
        let mut p = covers
            .and_then(|c| c.seen.get(&h.node).copied())
            .unwrap_or(origin_floor(h.node));
        for o in &h.objects {
            if o.last <= p {
                continue;
            }
            if until.is_some_and(|u| o.after >= u) {
                break;
            }
            if o.after > p {
                return Some(format!(
                    "the changes of {} before publication {} are gone and no snapshot old \
                     enough covers them",
                    h.node, o.seq
                ));
            }
            p = o.last;
        }
    }
    None
}

fn restore_into(
    bucket: &Bucket,
    dir: &Path,
    options: Options,
    at_ms: Option<u64>,
) -> Result<(Db, RestoreReport)> {
    let db = Db::open_with(dir, options)?;
    let engine = db.engine();
    let keyring = engine.wal().keyring().read().clone();
    let listing = bucket.objects().list("heads")?;
    let mut heads = Vec::new();
    for l in &listing {
        let Some(node) = node_of_head_name(&l.name) else {
            continue;
        };
        if let Some((h, _)) = read_head(bucket, &keyring, &l.name)? {
            if h.node != node {
                return Err(malformed(&l.name, format!("holds the head of {}", h.node)));
            }
            // As a round does: only heads of copies that claimed their id.
            let claim = claim_name(node);
            let claimed = match bucket.objects().get(&claim, 64 * 1024)? {
                Some((bytes, _)) => Claim::decode(&unseal(&keyring, &claim, bytes)?)
                    .is_ok_and(|c| c.node == node && c.incarnation == h.incarnation),
                None => false,
            };
            if claimed {
                heads.push(Arc::new(h));
            }
        }
    }
    let until = at_ms.map(|ms| Stamp {
        physical_ms: ms,
        logical: u32::MAX,
        node: NodeId(u64::MAX),
    });
    let mut report = RestoreReport {
        at_ms,
        ..RestoreReport::default()
    };
    // The newest snapshot that holds nothing after `until` and from which
    // every copy's objects follow without a gap (a backup's snapshot, say,
    // covers only its own copy); failing all, no snapshot.
    let mut candidates: Vec<Option<(Arc<Head>, SnapshotRef)>> = snapshots_of(&heads)
        .into_iter()
        .rev()
        .filter(|(_, s)| until.is_none_or(|u| s.covers.seen.values().all(|c| *c <= u)))
        .map(Some)
        .collect();
    candidates.push(None);
    let mut first_gap = None;
    let mut snapshot = None;
    for candidate in candidates {
        match restore_gap(&heads, candidate.as_ref().map(|(_, s)| &s.covers), until) {
            None => {
                snapshot = Some(candidate);
                break;
            }
            Some(gap) => {
                first_gap.get_or_insert(gap);
            }
        }
    }
    let Some(snapshot) = snapshot else {
        return Err(bucket_err(BucketError::NothingToRestore {
            reason: first_gap.unwrap_or_default(),
        }));
    };
    let mut progress: BTreeMap<NodeId, Stamp> = BTreeMap::new();
    if let Some((maker, s)) = &snapshot {
        let name = snapshot_name(maker.node, s.seq, s.nonce);
        let bytes = fetch_checked(bucket, &name, &head_name(maker.node), s.bytes, &s.hash)?;
        import_object(engine, &bytes, &name, maker.node, &s.covers, until)?;
        report.pulled.objects += 1;
        report.pulled.changes += s.changes;
        report.pulled.bytes += s.bytes;
        report.snapshot = Some(name);
        progress.extend(s.covers.seen.iter().map(|(n, c)| (*n, *c)));
    }
    for h in &heads {
        let mut p = progress
            .get(&h.node)
            .copied()
            .unwrap_or(origin_floor(h.node));
        for o in &h.objects {
            if o.last <= p {
                continue;
            }
            if until.is_some_and(|u| o.after >= u) {
                break;
            }
            let name = object_name(h.node, o.seq, o.nonce);
            let bytes = fetch_checked(bucket, &name, &head_name(h.node), o.bytes, &o.hash)?;
            let last = SyncCursor {
                seen: [(h.node, o.last)].into_iter().collect(),
            };
            import_object(engine, &bytes, &name, h.node, &last, until)?;
            report.pulled.objects += 1;
            report.pulled.changes += o.changes;
            report.pulled.bytes += o.bytes;
            // Cut at `until`, the object is held only up to there: the
            // next round takes it again, whole.
            p = until.map_or(o.last, |u| o.last.min(u));
        }
        progress.insert(h.node, p);
    }
    // The restored copy's sync state for this bucket: what it holds of
    // every copy. Its first round then goes on from there (a gap since is
    // `HistoryGone`) instead of joining afresh, when deletes it never saw
    // may have been forgotten. Node 0 stands for "not yet claimed": the
    // round draws an incarnation and keeps the progress.
    let st = LocalState {
        node: 0,
        progress: progress.into_iter().map(|(n, p)| (n.0, p)).collect(),
        ..LocalState::default()
    };
    local_put(engine, &state_key(bucket), st.encode()?)?;
    engine.wal().sync_written()?;
    Ok((db, report))
}
