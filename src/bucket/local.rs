//! What a copy keeps in its `_local` keyspace about a bucket, and the
//! hand-written layouts it is stored in (`docs/FORMAT.md`, "Local
//! records"). Records written before 2026-12 were bincode-encoded serde
//! structs; they are read (`legacy`), never written (see `sync::local` for
//! how the first byte tells them apart).

use std::collections::BTreeMap;

use super::head::HEAD_BYTES_MAX;
use crate::clock::Stamp;
use crate::codec::{DecodeError, Reader, Writer, decode_legacy};
use crate::error::{BucketError, Error, Result};
use crate::record::{decode_stamp, encode_stamp};
use crate::sync::local::{
    CURSOR_TAG, LocalRecord, begin, decode_cursor_entries, encode_cursor_entries, open,
};

/// Tag of a [`LocalState`] record, layout 1 (`_local` tags are listed at
/// [`CURSOR_TAG`]).
pub(crate) const BUCKET_STATE_TAG: u8 = CURSOR_TAG + 1;
/// Tag of a [`KeptHead`] record, layout 1.
pub(crate) const KEPT_HEAD_TAG: u8 = CURSOR_TAG + 2;
/// Tag of the record of when this copy's present stay began, layout 1.
pub(crate) const PRESENT_TAG: u8 = CURSOR_TAG + 3;

/// Longest version tag (a store's e-tag and version, joined by U+001F) a
/// `_local` record holds. Real ones are under a few hundred bytes.
pub(crate) const E_TAG_BYTES_MAX: usize = 64 * 1024;

/// Another copy's head as last downloaded at version `e_tag`, its claim
/// checked (in `_local`, under the state's key plus `/head/<node>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeptHead {
    pub(super) e_tag: String,
    pub(super) head: Vec<u8>,
}

/// See [`LocalState::former`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FormerTail {
    pub(super) node: u64,
    /// The former head's generation and nonce as this directory wrote it.
    pub(super) generation: u64,
    pub(super) nonce: u64,
    /// What it had published under that id.
    pub(super) published: Stamp,
}

/// A copy's sync state for one bucket, in its `_local` keyspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LocalState {
    /// The node id this state is for (a reidentified copy starts afresh).
    pub(super) node: u64,
    /// This directory's incarnation, named in its claim and head.
    pub(super) incarnation: [u8; 16],
    pub(super) claimed: bool,
    /// Our head as last written (its bytes before sealing), its version tag.
    pub(super) head: Option<Vec<u8>>,
    pub(super) head_e_tag: Option<String>,
    /// A head write begun and not known to have landed: (generation, nonce).
    pub(super) pending: Option<(u64, u64)>,
    /// The newest publication number used (names only ever grow).
    pub(super) last_seq: u64,
    /// When this copy last swept its folders for objects no head names.
    pub(super) last_sweep_ms: u64,
    /// The node id this directory synced under before it got a new one,
    /// with its head as last written: the writes under that id it had not
    /// published go out under the new id, if no one else writes that head.
    pub(super) former: Option<FormerTail>,
    /// Per origin, the newest stamp merged in its object order.
    pub(super) progress: BTreeMap<u64, Stamp>,
}

/// Refuses what a record could not be read back with.
fn check_len(what: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::Bucket(BucketError::Malformed {
            object: what.to_string(),
            reason: format!("{len} bytes, more than the {max} a local record holds"),
        }));
    }
    Ok(())
}

fn decode_error(what: &'static str) -> impl Fn(DecodeError) -> Error {
    move |e| Error::Decode {
        what,
        reason: e.to_string(),
    }
}

fn present<T>(w: &mut Writer, value: Option<T>, write: impl FnOnce(&mut Writer, T)) {
    match value {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            write(w, v);
        }
    }
}

impl KeptHead {
    /// The record's bytes: marker, [`KEPT_HEAD_TAG`], e-tag, head.
    ///
    /// # Errors
    ///
    /// [`BucketError::Malformed`] if the e-tag or head is over its limit.
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        check_len("a head's version tag", self.e_tag.len(), E_TAG_BYTES_MAX)?;
        check_len("a kept head", self.head.len(), HEAD_BYTES_MAX)?;
        let mut w = begin(KEPT_HEAD_TAG);
        w.len_prefixed(self.e_tag.as_bytes());
        w.len_prefixed(&self.head);
        Ok(w.into_vec())
    }

    /// Reads the record, current or legacy.
    pub(super) fn decode(bytes: &[u8]) -> Result<KeptHead> {
        Self::decode_bytes(bytes).map_err(decode_error("kept bucket head"))
    }

    fn decode_bytes(bytes: &[u8]) -> std::result::Result<KeptHead, DecodeError> {
        let mut r = match open(bytes, KEPT_HEAD_TAG)? {
            LocalRecord::Legacy => return legacy::kept_head(bytes),
            LocalRecord::Current(r) => r,
        };
        let e_tag = r.utf8(E_TAG_BYTES_MAX, "version tag")?.to_owned();
        let head = r.len_prefixed(HEAD_BYTES_MAX, "head")?.to_vec();
        r.end()?;
        Ok(KeptHead { e_tag, head })
    }
}

impl LocalState {
    /// The record's bytes (layout in `docs/FORMAT.md`, "Local records").
    ///
    /// # Errors
    ///
    /// [`BucketError::Malformed`] if the head or its version tag is over
    /// its limit.
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        if let Some(e_tag) = &self.head_e_tag {
            check_len("our head's version tag", e_tag.len(), E_TAG_BYTES_MAX)?;
        }
        if let Some(head) = &self.head {
            check_len("our head", head.len(), HEAD_BYTES_MAX)?;
        }
        let mut w = begin(BUCKET_STATE_TAG);
        w.u64(self.node);
        w.bytes(&self.incarnation);
        w.u8(u8::from(self.claimed));
        present(&mut w, self.head.as_deref(), Writer::len_prefixed);
        present(&mut w, self.head_e_tag.as_deref(), |w, t| {
            w.len_prefixed(t.as_bytes());
        });
        present(&mut w, self.pending, |w, (generation, nonce)| {
            w.u64(generation);
            w.u64(nonce);
        });
        w.u64(self.last_seq);
        w.u64(self.last_sweep_ms);
        present(&mut w, self.former.as_ref(), |w, f| {
            w.u64(f.node);
            w.u64(f.generation);
            w.u64(f.nonce);
            encode_stamp(w, f.published);
        });
        encode_cursor_entries(&mut w, &self.progress);
        Ok(w.into_vec())
    }

    /// Reads the record, current or legacy.
    pub(super) fn decode(bytes: &[u8]) -> Result<LocalState> {
        Self::decode_bytes(bytes).map_err(decode_error("bucket sync state"))
    }

    fn decode_bytes(bytes: &[u8]) -> std::result::Result<LocalState, DecodeError> {
        let mut r = match open(bytes, BUCKET_STATE_TAG)? {
            LocalRecord::Legacy => return legacy::state(bytes),
            LocalRecord::Current(r) => r,
        };
        let r = &mut r;
        let state = LocalState {
            node: r.u64()?,
            incarnation: r.array()?,
            claimed: r.present("claimed")?,
            head: optional(r, "head", |r| {
                Ok(r.len_prefixed(HEAD_BYTES_MAX, "head")?.to_vec())
            })?,
            head_e_tag: optional(r, "head version tag", |r| {
                Ok(r.utf8(E_TAG_BYTES_MAX, "version tag")?.to_owned())
            })?,
            pending: optional(r, "pending", |r| Ok((r.u64()?, r.u64()?)))?,
            last_seq: r.u64()?,
            last_sweep_ms: r.u64()?,
            former: optional(r, "former", |r| {
                Ok(FormerTail {
                    node: r.u64()?,
                    generation: r.u64()?,
                    nonce: r.u64()?,
                    published: decode_stamp(r)?,
                })
            })?,
            progress: decode_cursor_entries(r)?,
        };
        r.end()?;
        Ok(state)
    }
}

/// The `bucket/<…>/present` record: marker, [`PRESENT_TAG`], the start of
/// the copy's present stay in ms, u64.
pub(super) fn encode_present(since_ms: u64) -> Vec<u8> {
    let mut w = begin(PRESENT_TAG);
    w.u64(since_ms);
    w.into_vec()
}

/// Reads a `present` record, current or legacy (a bincode `u64`).
pub(super) fn decode_present(bytes: &[u8]) -> std::result::Result<u64, DecodeError> {
    let mut r = match open(bytes, PRESENT_TAG)? {
        LocalRecord::Legacy => return decode_legacy::<u64>(bytes),
        LocalRecord::Current(r) => r,
    };
    let since_ms = r.u64()?;
    r.end()?;
    Ok(since_ms)
}

fn optional<'a, T>(
    r: &mut Reader<'a>,
    what: &str,
    read: impl FnOnce(&mut Reader<'a>) -> std::result::Result<T, DecodeError>,
) -> std::result::Result<Option<T>, DecodeError> {
    if r.present(what)? {
        read(r).map(Some)
    } else {
        Ok(None)
    }
}

/// Reading bucket records written before 2026-12 (read only): frozen
/// private copies of the serde structs those releases bincode-encoded.
pub(super) mod legacy {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::{FormerTail, KeptHead, LocalState};
    use crate::codec::{DecodeError, decode_legacy};
    use crate::sync::local::legacy::StampV1;

    /// The old `KeptHead`.
    #[derive(Serialize, Deserialize)]
    pub(in crate::bucket) struct KeptHeadV1 {
        pub(in crate::bucket) e_tag: String,
        pub(in crate::bucket) head: Vec<u8>,
    }

    /// The old `FormerTail`.
    #[derive(Serialize, Deserialize)]
    pub(in crate::bucket) struct FormerTailV1 {
        pub(in crate::bucket) node: u64,
        pub(in crate::bucket) generation: u64,
        pub(in crate::bucket) nonce: u64,
        pub(in crate::bucket) published: StampV1,
    }

    /// The old `LocalState`.
    #[derive(Serialize, Deserialize)]
    pub(in crate::bucket) struct LocalStateV1 {
        pub(in crate::bucket) node: u64,
        pub(in crate::bucket) incarnation: [u8; 16],
        pub(in crate::bucket) claimed: bool,
        pub(in crate::bucket) head: Option<Vec<u8>>,
        pub(in crate::bucket) head_e_tag: Option<String>,
        pub(in crate::bucket) pending: Option<(u64, u64)>,
        pub(in crate::bucket) last_seq: u64,
        pub(in crate::bucket) last_sweep_ms: u64,
        pub(in crate::bucket) former: Option<FormerTailV1>,
        pub(in crate::bucket) progress: BTreeMap<u64, StampV1>,
    }

    pub(super) fn kept_head(bytes: &[u8]) -> Result<KeptHead, DecodeError> {
        let KeptHeadV1 { e_tag, head } = decode_legacy(bytes)?;
        Ok(KeptHead { e_tag, head })
    }

    pub(super) fn state(bytes: &[u8]) -> Result<LocalState, DecodeError> {
        let old: LocalStateV1 = decode_legacy(bytes)?;
        Ok(LocalState {
            node: old.node,
            incarnation: old.incarnation,
            claimed: old.claimed,
            head: old.head,
            head_e_tag: old.head_e_tag,
            pending: old.pending,
            last_seq: old.last_seq,
            last_sweep_ms: old.last_sweep_ms,
            former: old.former.map(|f| FormerTail {
                node: f.node,
                generation: f.generation,
                nonce: f.nonce,
                published: f.published.into(),
            }),
            progress: old
                .progress
                .into_iter()
                .map(|(node, stamp)| (node, stamp.into()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::legacy::{FormerTailV1, KeptHeadV1, LocalStateV1};
    use super::*;
    use crate::clock::NodeId;
    use crate::codec::encode_typed;
    use crate::sync::local::LOCAL_RECORD_MARKER;
    use crate::sync::local::legacy::StampV1;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn stamp(physical_ms: u64, logical: u32, node: u64) -> Stamp {
        Stamp {
            physical_ms,
            logical,
            node: NodeId(node),
        }
    }

    // Bytes the release of 2026-12-03 wrote (printed by that code,
    // bincode 2 through `local_put_typed`) for the values below.
    const LEGACY_KEPT: &str = "0822657461672d31220401020304";
    const LEGACY_STATE: &str = "fdefcdab9078563412aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0101030506070104226532220107fcefbeadde2afd0028f129a201000001770309fd0028f129a201000003770277fd0028f129a20100000377fdefcdab9078563412fdf429f129a201000000fdefcdab9078563412";
    const LEGACY_STATE_DEFAULT: &str = "00000000000000000000000000000000000000000000000000";

    fn full_state() -> LocalState {
        let s1 = stamp(1_796_000_000_000, 3, 0x77);
        let s2 = stamp(1_796_000_000_500, 0, 0x1234_5678_90ab_cdef);
        LocalState {
            node: 0x1234_5678_90ab_cdef,
            incarnation: [0xaa; 16],
            claimed: true,
            head: Some(vec![5, 6, 7]),
            head_e_tag: Some("\"e2\"".into()),
            pending: Some((7, 0xdead_beef)),
            last_seq: 42,
            last_sweep_ms: 1_796_000_000_000,
            former: Some(FormerTail {
                node: 0x77,
                generation: 3,
                nonce: 9,
                published: s1,
            }),
            progress: [(0x77, s1), (0x1234_5678_90ab_cdef, s2)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn legacy_records_written_by_the_old_code_are_read_and_rewritten() {
        let kept = KeptHead {
            e_tag: "\"etag-1\"".into(),
            head: vec![1, 2, 3, 4],
        };
        assert_eq!(KeptHead::decode(&hex(LEGACY_KEPT)).unwrap(), kept);
        let again = kept.encode().unwrap();
        assert_eq!(&again[..2], &[LOCAL_RECORD_MARKER, KEPT_HEAD_TAG]);
        assert_eq!(KeptHead::decode(&again).unwrap(), kept);

        for (legacy, state) in [
            (LEGACY_STATE, full_state()),
            (LEGACY_STATE_DEFAULT, LocalState::default()),
        ] {
            assert_eq!(LocalState::decode(&hex(legacy)).unwrap(), state);
            let again = state.encode().unwrap();
            assert_eq!(&again[..2], &[LOCAL_RECORD_MARKER, BUCKET_STATE_TAG]);
            assert_eq!(LocalState::decode(&again).unwrap(), state);
        }
    }

    #[test]
    fn the_default_state_layout_is_as_documented() {
        let mut expected = vec![0xff, BUCKET_STATE_TAG];
        expected.extend_from_slice(&[0; 8]); // node
        expected.extend_from_slice(&[0; 16]); // incarnation
        expected.extend_from_slice(&[0, 0, 0, 0]); // claimed, head, e-tag, pending
        expected.extend_from_slice(&[0; 16]); // last seq, last sweep
        expected.push(0); // former
        expected.extend_from_slice(&[0; 4]); // progress entries
        assert_eq!(LocalState::default().encode().unwrap(), expected);
        let kept = KeptHead {
            e_tag: "e".into(),
            head: vec![9],
        };
        assert_eq!(
            kept.encode().unwrap(),
            vec![0xff, KEPT_HEAD_TAG, 1, 0, 0, 0, b'e', 1, 0, 0, 0, 9]
        );
    }

    #[test]
    fn over_limit_fields_are_refused_on_both_sides() {
        let kept = KeptHead {
            e_tag: "x".repeat(E_TAG_BYTES_MAX + 1),
            head: Vec::new(),
        };
        assert!(matches!(
            kept.encode(),
            Err(Error::Bucket(BucketError::Malformed { .. }))
        ));
        let mut w = begin(KEPT_HEAD_TAG);
        w.u32(u32::MAX);
        assert!(KeptHead::decode(w.as_slice()).is_err());
        let state = LocalState {
            head: Some(vec![0; HEAD_BYTES_MAX + 1]),
            ..LocalState::default()
        };
        assert!(state.encode().is_err());
        // The kinds are not interchangeable.
        let bytes = LocalState::default().encode().unwrap();
        assert!(KeptHead::decode(&bytes).is_err());
    }

    /// The bucket records of `db`'s `_local`, by key.
    fn bucket_records(db: &crate::Db) -> Vec<(Vec<u8>, Vec<u8>)> {
        let local = db.reserved_keyspace(crate::sync::LOCAL_KEYSPACE).unwrap();
        local
            .scan(&crate::ScanOptions::prefix("bucket/"))
            .map(|e| {
                let e = e.unwrap();
                let value = e.value().as_bytes().unwrap().to_vec();
                (e.key().to_vec(), value)
            })
            .collect()
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        State,
        KeptHead,
        Present,
    }

    fn kind(key: &[u8]) -> Kind {
        if key.ends_with(b"/present") {
            Kind::Present
        } else if key.windows(6).any(|w| w == b"/head/") {
            Kind::KeptHead
        } else {
            Kind::State
        }
    }

    /// `value` (current layout) as the code before hand-written layouts
    /// wrote it.
    fn to_legacy(kind: Kind, value: &[u8]) -> Vec<u8> {
        match kind {
            Kind::State => encode_typed(&legacy_state(&LocalState::decode(value).unwrap())),
            Kind::KeptHead => {
                let kept = KeptHead::decode(value).unwrap();
                encode_typed(&KeptHeadV1 {
                    e_tag: kept.e_tag,
                    head: kept.head,
                })
            }
            Kind::Present => encode_typed(&decode_present(value).unwrap()),
        }
        .unwrap()
    }

    #[test]
    fn a_round_reads_the_bucket_records_of_the_old_code_and_rewrites_them() {
        use std::sync::Arc;

        use crate::bucket::Bucket;
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        // A new `Bucket` value each time: nothing cached in memory, as in
        // a new process.
        let bucket = || Bucket::from_store(store.clone(), "", "memory://legacy").unwrap();
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = crate::Db::open(a_dir.path()).unwrap();
        let b = crate::Db::open(b_dir.path()).unwrap();
        a.put("from-a", "1").unwrap();
        bucket().sync(&a).unwrap();
        b.put("from-b", "1").unwrap();
        bucket().sync(&b).unwrap();
        // a's head changes once more (it merged b), then b keeps that one.
        bucket().sync(&a).unwrap();
        bucket().sync(&b).unwrap();
        // b's state, a's head as b downloaded it, and b's present stay, as
        // the old code wrote them.
        let records = bucket_records(&b);
        let kinds: Vec<Kind> = records.iter().map(|(k, _)| kind(k)).collect();
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        for k in [Kind::State, Kind::KeptHead, Kind::Present] {
            assert!(kinds.contains(&k), "{kinds:?}");
        }
        let value_of = |records: &[(Vec<u8>, Vec<u8>)], k: Kind| {
            records
                .iter()
                .find(|(key, _)| kind(key) == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let before = LocalState::decode(&value_of(&records, Kind::State)).unwrap();
        let present = decode_present(&value_of(&records, Kind::Present)).unwrap();
        let local = b.reserved_keyspace(crate::sync::LOCAL_KEYSPACE).unwrap();
        for (key, value) in &records {
            let old = to_legacy(kind(key), value);
            assert_ne!(old[0], LOCAL_RECORD_MARKER);
            local.put(key, old).unwrap();
        }

        // Read: the same incarnation (a misread state would start afresh
        // and take its own claim for a clone's), and a's unchanged head
        // taken from the kept copy, not downloaded.
        let fresh = bucket();
        let report = fresh.sync(&b).unwrap();
        assert!(report.unreadable.is_empty(), "{report:?}");
        // (Unread, the kept head would cost a download of the head and
        // of its claim.)
        assert_eq!(fresh.requests().get, 0, "{:?}", fresh.requests());
        // Rewritten by the next updates: b publishes (its state saved), a
        // publishes (b downloads its new head).
        b.put("more-b", "1").unwrap();
        bucket().sync(&b).unwrap();
        a.put("more-a", "1").unwrap();
        bucket().sync(&a).unwrap();
        bucket().sync(&b).unwrap();
        assert_eq!(b.get("more-a").unwrap().as_deref(), Some(&b"1"[..]));
        let records = bucket_records(&b);
        for (key, value) in &records {
            match kind(key) {
                Kind::State => assert_eq!(&value[..2], &[LOCAL_RECORD_MARKER, BUCKET_STATE_TAG]),
                Kind::KeptHead => assert_eq!(&value[..2], &[LOCAL_RECORD_MARKER, KEPT_HEAD_TAG]),
                // Written only when a stay begins: still the one read.
                Kind::Present => {}
            }
        }
        let after = LocalState::decode(&value_of(&records, Kind::State)).unwrap();
        assert_eq!(after.incarnation, before.incarnation);
        assert_eq!(after.node, before.node);
        assert_eq!(
            decode_present(&value_of(&records, Kind::Present)).unwrap(),
            present
        );
    }

    fn stamp_strategy() -> impl Strategy<Value = Stamp> {
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(p, l, n)| stamp(p, l, n))
    }

    fn state_strategy() -> impl Strategy<Value = LocalState> {
        (
            (any::<u64>(), any::<[u8; 16]>(), any::<bool>()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::option::of("\\PC{0,40}"),
            any::<Option<(u64, u64)>>(),
            (any::<u64>(), any::<u64>()),
            proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>(), stamp_strategy())),
            proptest::collection::btree_map(any::<u64>(), stamp_strategy(), 0..8),
        )
            .prop_map(
                |(
                    (node, incarnation, claimed),
                    head,
                    head_e_tag,
                    pending,
                    (last_seq, last_sweep_ms),
                    former,
                    progress,
                )| {
                    LocalState {
                        node,
                        incarnation,
                        claimed,
                        head,
                        head_e_tag,
                        pending,
                        last_seq,
                        last_sweep_ms,
                        former: former.map(|(node, generation, nonce, published)| FormerTail {
                            node,
                            generation,
                            nonce,
                            published,
                        }),
                        progress,
                    }
                },
            )
    }

    fn legacy_state(s: &LocalState) -> LocalStateV1 {
        LocalStateV1 {
            node: s.node,
            incarnation: s.incarnation,
            claimed: s.claimed,
            head: s.head.clone(),
            head_e_tag: s.head_e_tag.clone(),
            pending: s.pending,
            last_seq: s.last_seq,
            last_sweep_ms: s.last_sweep_ms,
            former: s.former.as_ref().map(|f| FormerTailV1 {
                node: f.node,
                generation: f.generation,
                nonce: f.nonce,
                published: StampV1::from(f.published),
            }),
            progress: s
                .progress
                .iter()
                .map(|(n, st)| (*n, StampV1::from(*st)))
                .collect(),
        }
    }

    fn check_damage<T>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<T>,
    ) -> std::result::Result<(), TestCaseError> {
        for len in 0..bytes.len() {
            prop_assert!(decode(&bytes[..len]).is_err(), "cut at {}", len);
        }
        for extra in [0u8, 1, 0xff] {
            let mut longer = bytes.to_vec();
            longer.push(extra);
            prop_assert!(decode(&longer).is_err(), "extended by {}", extra);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn states_round_trip_and_damage_is_an_error(state in state_strategy()) {
            let bytes = state.encode().unwrap();
            prop_assert_eq!(&LocalState::decode(&bytes).unwrap(), &state);
            check_damage(&bytes, LocalState::decode)?;
            let old = encode_typed(&legacy_state(&state)).unwrap();
            prop_assert_ne!(old[0], LOCAL_RECORD_MARKER);
            prop_assert_eq!(&LocalState::decode(&old).unwrap(), &state);
            check_damage(&old, LocalState::decode)?;
        }

        #[test]
        fn kept_heads_round_trip_and_damage_is_an_error(
            e_tag in "\\PC{0,40}",
            head in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let kept = KeptHead { e_tag: e_tag.clone(), head: head.clone() };
            let bytes = kept.encode().unwrap();
            prop_assert_eq!(&KeptHead::decode(&bytes).unwrap(), &kept);
            check_damage(&bytes, KeptHead::decode)?;
            let old = encode_typed(&KeptHeadV1 { e_tag, head }).unwrap();
            prop_assert_ne!(old[0], LOCAL_RECORD_MARKER);
            prop_assert_eq!(&KeptHead::decode(&old).unwrap(), &kept);
            check_damage(&old, KeptHead::decode)?;
        }

        #[test]
        fn present_records_round_trip_and_damage_is_an_error(since_ms in any::<u64>()) {
            let bytes = encode_present(since_ms);
            prop_assert_eq!(bytes.len(), 10);
            prop_assert_eq!(&bytes[..2], &[LOCAL_RECORD_MARKER, PRESENT_TAG]);
            prop_assert_eq!(decode_present(&bytes).unwrap(), since_ms);
            let as_result = |b: &[u8]| decode_present(b).map_err(decode_error("present"));
            check_damage(&bytes, as_result)?;
            // What the code before hand-written layouts stored: a bincode u64.
            let old = encode_typed(&since_ms).unwrap();
            prop_assert_ne!(old[0], LOCAL_RECORD_MARKER);
            prop_assert_eq!(decode_present(&old).unwrap(), since_ms);
            check_damage(&old, as_result)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(rest in proptest::collection::vec(any::<u8>(), 0..200)) {
            for header in [&[0xff, BUCKET_STATE_TAG][..], &[0xff, KEPT_HEAD_TAG], &[0x00], &[0xfd]] {
                let bytes = [header, &rest].concat();
                let _ = LocalState::decode(&bytes);
                let _ = KeptHead::decode(&bytes);
                let _ = decode_present(&bytes);
            }
        }
    }
}
