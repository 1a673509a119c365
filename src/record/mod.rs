//! The record layer: what every part of the engine stores, ships and merges.
//!
//! A [`Record`] is one key's change: the CRDT fragment to merge into that
//! key's state, under its [`StoreKey`] (keyspace prefix + key). The WAL,
//! snapshots, change sets, digests and replication all encode records with
//! one codec (`codec.rs`), and a WAL frame's payload (`payload.rs`) is an
//! optional idempotency mark plus the records of one atomic batch. The
//! limits every reader enforces live in `limits.rs`.
//!
//! This module sits just above `crdt`: it imports only `clock`, `codec`,
//! `crdt` and `error`, so the WAL, the state map, snapshots and sync can
//! all build on it without importing each other.

pub mod codec;
pub mod key;
pub mod limits;
pub mod payload;

pub use codec::{
    decode_record, decode_records_to_end, decode_stamp, encode_record, encode_stamp,
    encoded_record_bytes,
};
pub use key::{LOCAL_KEYSPACE, StoreKey, keyspace_prefix, split_store_key, store_key};
pub use limits::{FRAME_OPS_MAX, FRAME_PAYLOAD_BYTES_MAX, RECORD_KEY_BYTES_MAX};
pub use payload::{FramePayload, decode_payload, encode_payload};

use crate::crdt::KeyState;

/// One key's change: the CRDT fragment to merge into that key's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The store key (keyspace prefix + key).
    pub store_key: StoreKey,
    /// What to merge.
    pub delta: KeyState,
}

/// Three records covering every record shape, for codec tests.
#[cfg(test)]
pub(crate) fn sample_records() -> Vec<Record> {
    test_records::sample_records()
}

#[cfg(test)]
mod test_records {
    use std::sync::Arc;

    use super::{Record, store_key};
    use crate::clock::{NodeId, Stamp};
    use crate::crdt::{Counter, KeyState, NodeTotals, Register};

    pub(crate) fn sample_records() -> Vec<Record> {
        let stamp = Stamp {
            physical_ms: 7,
            logical: 1,
            node: NodeId(3),
        };
        vec![
            Record {
                store_key: store_key("default", b"a"),
                delta: KeyState {
                    register: Some(Register {
                        stamp,
                        value: Some(Arc::from(&b"value"[..])),
                        floor: vec![(NodeId(1), 2, 3)],
                    }),
                    counter: None,
                },
            },
            Record {
                store_key: store_key("default", b"b"),
                delta: KeyState {
                    register: None,
                    counter: Some(Box::new(Counter {
                        totals: vec![NodeTotals {
                            node: NodeId(3),
                            p: 10,
                            n: 4,
                            stamp,
                        }],
                    })),
                },
            },
            Record {
                store_key: store_key("ks", b"c"),
                delta: KeyState {
                    register: Some(Register {
                        stamp,
                        value: None,
                        floor: Vec::new(),
                    }),
                    counter: None,
                },
            },
        ]
    }
}
