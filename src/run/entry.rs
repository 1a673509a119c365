//! One entry of a data block: a key (prefix-compressed against the entry
//! before it) and the key's whole CRDT state, encoded compactly.
//!
//! Stamps are the bulk of a naive encoding (20 bytes each in the record
//! codec), so here a physical time is a zigzag varint delta from the
//! block's base time, a logical counter is a varint, and a node id is a
//! varint index into the run's node table; a register's logical counter
//! and node index are left out entirely when zero (a flag says so). An
//! empty floor costs nothing. Decoding checks everything the record codec
//! checks (limits, node order, non-empty counters), so every state read
//! back is one the rest of the crate accepts.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::{NodeId, Stamp};
use crate::codec::{DecodeError, Reader};
use crate::crdt::{Counter, KeyState, NodeTotals, Register};
use crate::error::{Error, Result};
use crate::record::limits::{FRAME_PAYLOAD_BYTES_MAX, RECORD_KEY_BYTES_MAX};

use super::format::{
    NODE_LIST_ENTRIES_MAX, NODE_TABLE_ENTRIES_MAX, get_len, get_varint, put_varint, unzigzag_delta,
    zigzag_delta,
};

/// The entry has a register part.
pub const ENTRY_REGISTER: u8 = 1 << 0;
/// The register holds a value (else it is a tombstone).
pub const ENTRY_VALUE: u8 = 1 << 1;
/// The register's floor is not empty.
pub const ENTRY_FLOOR: u8 = 1 << 2;
/// The register stamp's logical counter is not zero (a varint follows).
pub const ENTRY_LOGICAL: u8 = 1 << 3;
/// The register stamp's node index is not zero (a varint follows).
pub const ENTRY_NODE: u8 = 1 << 4;
/// The entry has a counter part.
pub const ENTRY_COUNTER: u8 = 1 << 5;
const ENTRY_FLAGS_KNOWN: u8 =
    ENTRY_REGISTER | ENTRY_VALUE | ENTRY_FLOOR | ENTRY_LOGICAL | ENTRY_NODE | ENTRY_COUNTER;
const ENTRY_REGISTER_ONLY: u8 = ENTRY_VALUE | ENTRY_FLOOR | ENTRY_LOGICAL | ENTRY_NODE;

/// The writer's node table: each distinct node gets the next index, in
/// order of first appearance.
#[derive(Debug, Default)]
pub struct NodeTableBuilder {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u64>,
}

impl NodeTableBuilder {
    /// The index of `node`, adding it if new.
    fn index_of(&mut self, node: NodeId) -> u64 {
        let next = self.ids.len() as u64;
        *self.index.entry(node).or_insert_with(|| {
            self.ids.push(node);
            next
        })
    }

    /// The nodes of `state` not yet in the table.
    fn new_nodes(&self, state: &KeyState) -> usize {
        let mut fresh: Vec<NodeId> = nodes_of(state)
            .filter(|n| !self.index.contains_key(n))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        fresh.len()
    }

    /// The table's nodes, in index order.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }
}

/// Every node a state names.
fn nodes_of(state: &KeyState) -> impl Iterator<Item = NodeId> + '_ {
    let register = state
        .register
        .iter()
        .flat_map(|reg| std::iter::once(reg.stamp.node).chain(reg.floor.iter().map(|f| f.0)));
    let counter = state
        .counter
        .iter()
        .flat_map(|c| c.totals.iter().flat_map(|t| [t.node, t.stamp.node]));
    register.chain(counter)
}

/// Checks that `state` is one a reader will accept back, before anything
/// of it is written: `Error::InvalidCommand` otherwise (a state the map
/// cannot hold is the caller's bug, and a file that cannot be read back is
/// worse than no file).
pub fn check_state(state: &KeyState, table: &NodeTableBuilder) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::InvalidCommand {
            reason: format!("run entry: {reason}"),
        })
    };
    if state.register.is_none() && state.counter.is_none() {
        return refuse("a state with neither a register nor a counter");
    }
    if let Some(reg) = &state.register {
        if reg
            .value
            .as_ref()
            .is_some_and(|v| v.len() > FRAME_PAYLOAD_BYTES_MAX)
        {
            return refuse("value longer than frame_payload_bytes_max");
        }
        if reg.floor.len() > NODE_LIST_ENTRIES_MAX {
            return refuse("floor with more than 65,535 nodes");
        }
        if !reg.floor.is_sorted_by(|a, b| a.0 < b.0) {
            return refuse("floor nodes not strictly increasing");
        }
    }
    if let Some(counter) = &state.counter {
        if counter.totals.is_empty() {
            return refuse("counter part without totals");
        }
        if counter.totals.len() > NODE_LIST_ENTRIES_MAX {
            return refuse("counter with more than 65,535 nodes");
        }
        if !counter.totals.is_sorted_by(|a, b| a.node < b.node) {
            return refuse("counter nodes not strictly increasing");
        }
    }
    // Counting the state's nodes is enough unless the table is nearly
    // full; only then are the new ones told apart (which allocates).
    let named = nodes_of(state).count();
    if table.ids.len() + named > NODE_TABLE_ENTRIES_MAX
        && table.ids.len() + table.new_nodes(state) > NODE_TABLE_ENTRIES_MAX
    {
        return refuse("more distinct nodes than one run's node table holds");
    }
    Ok(())
}

/// Appends the entry for `key` after `prev` (the previous key of the
/// block, empty at a restart). The state must have passed
/// [`check_state`].
pub fn encode_entry(
    out: &mut Vec<u8>,
    prev: &[u8],
    key: &[u8],
    state: &KeyState,
    base_ms: u64,
    table: &mut NodeTableBuilder,
) {
    let shared = super::format::common_prefix(prev, key);
    let suffix = key.get(shared..).unwrap_or_default();
    put_varint(out, shared as u64);
    put_varint(out, suffix.len() as u64);
    out.extend_from_slice(suffix);
    let mut flags = 0u8;
    if let Some(reg) = &state.register {
        flags |= ENTRY_REGISTER;
        if reg.value.is_some() {
            flags |= ENTRY_VALUE;
        }
        if !reg.floor.is_empty() {
            flags |= ENTRY_FLOOR;
        }
        if reg.stamp.logical != 0 {
            flags |= ENTRY_LOGICAL;
        }
        if table.index_of(reg.stamp.node) != 0 {
            flags |= ENTRY_NODE;
        }
    }
    if state.counter.is_some() {
        flags |= ENTRY_COUNTER;
    }
    out.push(flags);
    if let Some(reg) = &state.register {
        put_varint(out, zigzag_delta(reg.stamp.physical_ms, base_ms));
        if flags & ENTRY_LOGICAL != 0 {
            put_varint(out, u64::from(reg.stamp.logical));
        }
        if flags & ENTRY_NODE != 0 {
            put_varint(out, table.index_of(reg.stamp.node));
        }
        if let Some(value) = &reg.value {
            put_varint(out, value.len() as u64);
            out.extend_from_slice(value);
        }
        if flags & ENTRY_FLOOR != 0 {
            put_varint(out, reg.floor.len() as u64);
            for &(node, p, n) in &reg.floor {
                put_varint(out, table.index_of(node));
                put_varint(out, p);
                put_varint(out, n);
            }
        }
    }
    if let Some(counter) = &state.counter {
        put_varint(out, counter.totals.len() as u64);
        for t in &counter.totals {
            put_varint(out, table.index_of(t.node));
            put_varint(out, t.p);
            put_varint(out, t.n);
            put_varint(out, zigzag_delta(t.stamp.physical_ms, base_ms));
            put_varint(out, u64::from(t.stamp.logical));
            put_varint(out, table.index_of(t.stamp.node));
        }
    }
}

/// True if `state` is a tombstone the footer counts: a key that reads as
/// absent because of a delete (a register without a value that no newer
/// counter increment outranks), what a merge may one day drop.
pub fn is_tombstone(state: &KeyState) -> bool {
    matches!(state.visible(), crate::crdt::Visible::Absent)
        && state.register.as_ref().is_some_and(|r| r.value.is_none())
}

/// The base time of a block whose first entry holds `state`: the first
/// stamp it carries, so the first entry's delta is zero and the others',
/// written close in time, are small.
pub fn base_ms_of(state: &KeyState) -> u64 {
    match (&state.register, &state.counter) {
        (Some(reg), _) => reg.stamp.physical_ms,
        (None, Some(c)) => c.totals.first().map_or(0, |t| t.stamp.physical_ms),
        (None, None) => 0,
    }
}

/// What a block's entries are decoded against.
#[derive(Clone, Copy, Debug)]
pub struct DecodeContext<'a> {
    /// The run's node table.
    pub nodes: &'a [NodeId],
    /// The block's base time.
    pub base_ms: u64,
}

impl DecodeContext<'_> {
    fn node(&self, r: &mut Reader<'_>) -> Result<NodeId, DecodeError> {
        let at = r.position();
        let i = get_varint(r)?;
        usize::try_from(i)
            .ok()
            .and_then(|i| self.nodes.get(i))
            .copied()
            .ok_or_else(|| {
                Reader::invalid(
                    at,
                    format!("node index {i} beyond the {}-node table", self.nodes.len()),
                )
            })
    }

    fn logical(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
        let at = r.position();
        u32::try_from(get_varint(r)?)
            .map_err(|_| Reader::invalid(at, "logical counter beyond 32 bits"))
    }
}

/// A state as it lies in a block, checked but not yet copied out: what a
/// lookup skips over without allocating.
#[derive(Clone, Copy, Debug)]
pub struct StateView<'a> {
    register: Option<(Stamp, Option<&'a [u8]>)>,
    floor: Option<(usize, &'a [u8])>,
    counter: Option<(usize, &'a [u8])>,
}

/// Reads and checks the state after an entry's key.
pub fn decode_state<'a>(
    r: &mut Reader<'a>,
    cx: &DecodeContext<'_>,
) -> Result<StateView<'a>, DecodeError> {
    let at = r.position();
    let flags = r.u8()?;
    let has_register = flags & ENTRY_REGISTER != 0;
    if flags & !ENTRY_FLAGS_KNOWN != 0
        || (!has_register && flags & ENTRY_REGISTER_ONLY != 0)
        || (!has_register && flags & ENTRY_COUNTER == 0)
    {
        return Err(Reader::invalid(
            at,
            format!("invalid entry flags {flags:#x}"),
        ));
    }
    let mut view = StateView {
        register: None,
        floor: None,
        counter: None,
    };
    if has_register {
        let physical_ms = unzigzag_delta(get_varint(r)?, cx.base_ms);
        let logical = if flags & ENTRY_LOGICAL != 0 {
            let logical = DecodeContext::logical(r)?;
            nonzero(r, logical, "logical counter")?
        } else {
            0
        };
        let node = if flags & ENTRY_NODE != 0 {
            let at = r.position();
            let node = cx.node(r)?;
            if cx.nodes.first() == Some(&node) {
                return Err(Reader::invalid(at, "node index 0 spelled out"));
            }
            node
        } else {
            *cx.nodes
                .first()
                .ok_or_else(|| Reader::invalid(at, "a stamp but an empty node table"))?
        };
        let value = if flags & ENTRY_VALUE != 0 {
            let len = get_len(r, FRAME_PAYLOAD_BYTES_MAX, "value length")?;
            Some(r.take(len)?)
        } else {
            None
        };
        let stamp = Stamp {
            physical_ms,
            logical,
            node,
        };
        view.register = Some((stamp, value));
        if flags & ENTRY_FLOOR != 0 {
            view.floor = Some(node_list(r, cx, false)?);
        }
    }
    if flags & ENTRY_COUNTER != 0 {
        view.counter = Some(node_list(r, cx, true)?);
    }
    Ok(view)
}

fn nonzero(r: &Reader<'_>, v: u32, what: &str) -> Result<u32, DecodeError> {
    if v == 0 {
        return Err(Reader::invalid(
            r.position(),
            format!("{what} 0 spelled out"),
        ));
    }
    Ok(v)
}

/// Checks a floor (`counter == false`) or counter list and returns its
/// count and bytes: non-empty, at most [`NODE_LIST_ENTRIES_MAX`], nodes
/// strictly increasing by id.
fn node_list<'a>(
    r: &mut Reader<'a>,
    cx: &DecodeContext<'_>,
    counter: bool,
) -> Result<(usize, &'a [u8]), DecodeError> {
    let at = r.position();
    let count = get_len(r, NODE_LIST_ENTRIES_MAX, "node list length")?;
    if count == 0 {
        return Err(Reader::invalid(at, "empty node list spelled out"));
    }
    let start = r.clone();
    let mut prev: Option<NodeId> = None;
    for _ in 0..count {
        let node_at = r.position();
        let node = cx.node(r)?;
        get_varint(r)?;
        get_varint(r)?;
        if counter {
            get_varint(r)?;
            DecodeContext::logical(r)?;
            cx.node(r)?;
        }
        if prev.is_some_and(|p| p >= node) {
            return Err(Reader::invalid(
                node_at,
                "list nodes are not strictly increasing",
            ));
        }
        prev = Some(node);
    }
    let len = r.position() - start.position();
    let mut bytes = start;
    Ok((count, bytes.take(len)?))
}

/// Copies a checked state out of its block.
pub fn materialize(view: &StateView<'_>, cx: &DecodeContext<'_>) -> Result<KeyState, DecodeError> {
    let register = match view.register {
        Some((stamp, value)) => Some(Register {
            stamp,
            value: value.map(Arc::from),
            floor: match view.floor {
                Some((count, bytes)) => read_floor(count, bytes, cx)?,
                None => Vec::new(),
            },
        }),
        None => None,
    };
    let counter = match view.counter {
        Some((count, bytes)) => Some(Box::new(read_counter(count, bytes, cx)?)),
        None => None,
    };
    Ok(KeyState { register, counter })
}

fn read_floor(
    count: usize,
    bytes: &[u8],
    cx: &DecodeContext<'_>,
) -> Result<Vec<(NodeId, u64, u64)>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut floor = Vec::with_capacity(count);
    for _ in 0..count {
        floor.push((cx.node(&mut r)?, get_varint(&mut r)?, get_varint(&mut r)?));
    }
    Ok(floor)
}

fn read_counter(
    count: usize,
    bytes: &[u8],
    cx: &DecodeContext<'_>,
) -> Result<Counter, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut totals = Vec::with_capacity(count);
    for _ in 0..count {
        let node = cx.node(&mut r)?;
        let p = get_varint(&mut r)?;
        let n = get_varint(&mut r)?;
        let physical_ms = unzigzag_delta(get_varint(&mut r)?, cx.base_ms);
        let logical = DecodeContext::logical(&mut r)?;
        let stamp = Stamp {
            physical_ms,
            logical,
            node: cx.node(&mut r)?,
        };
        totals.push(NodeTotals { node, p, n, stamp });
    }
    Ok(Counter { totals })
}

/// The key of an entry: the number of bytes shared with the previous key
/// and the rest. Both lengths are checked against the key limit.
pub fn decode_key_parts<'a>(r: &mut Reader<'a>) -> Result<(usize, &'a [u8]), DecodeError> {
    let shared = get_len(r, RECORD_KEY_BYTES_MAX, "shared key length")?;
    let at = r.position();
    let unshared = get_len(r, RECORD_KEY_BYTES_MAX, "key suffix length")?;
    if shared + unshared > RECORD_KEY_BYTES_MAX {
        return Err(Reader::invalid(
            at,
            format!("key of {} bytes exceeds the limit", shared + unshared),
        ));
    }
    Ok((shared, r.take(unshared)?))
}
