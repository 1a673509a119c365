//! [`StateView`]: a consistent snapshot of every layer, and [`ViewIter`],
//! the ordered merge of the layers' entries in a key range.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use crate::crdt::KeyState;
use crate::error::Result;
use crate::run::RunIter;

use super::{Lower, StateMap, StoreKey};

/// Entries taken from a memtable per refill: enough to amortise the range
/// lookup, small enough that a short scan stays cheap.
const MAP_CHUNK_ENTRIES: usize = 256;

/// A consistent snapshot of the state: the active memtable as it was (an
/// O(1) clone of a persistent map) and the lower layers it sat on. Writers
/// never wait for it, and runs merged away beneath it stay readable.
#[derive(Clone)]
pub struct StateView {
    active: StateMap,
    lower: Arc<Lower>,
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView")
            .field("active_keys", &self.active.len())
            .field("frozen", &self.lower.frozen.len())
            .field("runs", &self.lower.runs.len())
            .finish()
    }
}

impl StateView {
    pub(super) fn new(active: StateMap, lower: Arc<Lower>) -> Self {
        Self { active, lower }
    }

    /// A view of only the given layers (a state being built, a run set).
    pub fn of(active: StateMap, lower: Arc<Lower>) -> Self {
        Self { active, lower }
    }

    /// The whole state of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyState>> {
        // The active memtable holds each of its keys' whole state.
        if let Some(state) = self.active.get(key) {
            return Ok(Some(state.clone()));
        }
        self.lower.get(key)
    }

    /// Every key in `lower..upper` with its whole state, in key order (or
    /// reverse key order).
    pub fn range(&self, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>, reverse: bool) -> ViewIter {
        self.range_expecting(lower, upper, reverse, usize::MAX)
    }

    /// Every key, in key order, for a reader that reads each block once
    /// (a merge, an export, a shipped snapshot, a recount): blocks it reads
    /// from run files are not added to the block cache.
    pub fn iter_uncached(&self) -> ViewIter {
        let mut iter = self.range(Bound::Unbounded, Bound::Unbounded, false);
        for source in iter.single.iter_mut().chain(iter.sources.iter_mut()) {
            if let Source::Run(run_iter) = source {
                run_iter.set_fill_cache(false);
            }
        }
        iter
    }

    /// [`StateView::range`] for a caller that expects to take about
    /// `expected` entries (a scan with a limit): memtables are copied from
    /// that many at a time, not [`MAP_CHUNK_ENTRIES`].
    pub fn range_expecting(
        &self,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
        expected: usize,
    ) -> ViewIter {
        let chunk = expected.clamp(1, MAP_CHUNK_ENTRIES);
        let mut sources = Vec::with_capacity(1 + self.lower.frozen.len() + self.lower.runs.len());
        let maps = std::iter::once(&self.active).chain(self.lower.frozen.iter().map(|f| &f.map));
        for map in maps {
            if !map.is_empty() {
                sources.push(Source::Map(MapSource::new(
                    map.clone(),
                    lower.clone(),
                    upper.clone(),
                    reverse,
                    chunk,
                )));
            }
        }
        for run in &self.lower.runs {
            sources.push(Source::Run(run.iter(lower.clone(), upper.clone(), reverse)));
        }
        // One layer (a compacted database, a scan of the memtable alone):
        // its entries pass straight through, with nothing to merge.
        let single = sources.len() == 1;
        ViewIter {
            heads: sources.iter().map(|_| None).collect(),
            single: if single { sources.pop() } else { None },
            sources,
            reverse,
            failed: false,
        }
    }

    /// Every key with its whole state, in key order.
    pub fn iter(&self) -> ViewIter {
        self.range(Bound::Unbounded, Bound::Unbounded, false)
    }

    /// The digest sums of this state: the runs' sums (kept with them),
    /// moved for every key a memtable holds from what the runs hold for it
    /// to its whole state. Costs the keys changed since the last flush.
    pub fn digest_sums(&self) -> Result<super::DigestSums> {
        let mut sums = self.lower.runs_digest.clone();
        let runs = Lower {
            frozen: Vec::new(),
            runs: self.lower.runs.clone(),
            runs_digest: super::DigestSums::new(),
        };
        let memtables = StateView::of(
            self.active.clone(),
            Arc::new(Lower {
                frozen: self.lower.frozen.clone(),
                runs: Vec::new(),
                runs_digest: super::DigestSums::new(),
            }),
        );
        for entry in memtables.iter() {
            let (key, in_memory) = entry?;
            let before = runs.get(&key)?;
            let after = match &before {
                Some(b) => KeyState::merge(b, &in_memory),
                None => in_memory,
            };
            sums.replace(&key, before.as_ref(), Some(&after));
        }
        Ok(sums)
    }

    /// The layers below the active memtable.
    pub fn lower(&self) -> &Arc<Lower> {
        &self.lower
    }

    /// The active memtable as this view saw it.
    pub fn active(&self) -> &StateMap {
        &self.active
    }
}

/// One memtable's entries in a range, taken a chunk at a time (the view
/// owns the map, so the iterator cannot borrow it).
struct MapSource {
    map: StateMap,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    buf: VecDeque<(StoreKey, KeyState)>,
    exhausted: bool,
    /// Entries copied per refill.
    chunk: usize,
}

impl MapSource {
    fn new(
        map: StateMap,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
        chunk: usize,
    ) -> Self {
        Self {
            map,
            lower,
            upper,
            reverse,
            buf: VecDeque::new(),
            exhausted: false,
            chunk,
        }
    }

    fn next(&mut self) -> Option<(StoreKey, KeyState)> {
        if self.buf.is_empty() && !self.exhausted {
            self.refill();
        }
        self.buf.pop_front()
    }

    fn refill(&mut self) {
        let bounds = (as_slice(&self.lower), as_slice(&self.upper));
        // An inverted range is empty (and `OrdMap::range` would panic on it).
        if is_empty_range(bounds) {
            self.exhausted = true;
            return;
        }
        let range = self.map.range::<_, [u8]>(bounds);
        let take = |(k, s): (&StoreKey, &KeyState)| (k.clone(), s.clone());
        let chunk: Vec<(StoreKey, KeyState)> = if self.reverse {
            range.rev().take(self.chunk).map(take).collect()
        } else {
            range.take(self.chunk).map(take).collect()
        };
        if chunk.len() < self.chunk {
            self.exhausted = true;
        }
        // A caller that wants more than it expected gets bigger chunks.
        self.chunk = (self.chunk * 2).min(MAP_CHUNK_ENTRIES);
        if let Some((last, _)) = chunk.last() {
            let after = Bound::Excluded(last.to_vec());
            if self.reverse {
                self.upper = after;
            } else {
                self.lower = after;
            }
        }
        self.buf.extend(chunk);
    }
}

/// True if no key can lie within `bounds`.
fn is_empty_range((lower, upper): (Bound<&[u8]>, Bound<&[u8]>)) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u))
        | (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        _ => false,
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

enum Source {
    Map(MapSource),
    Run(RunIter),
}

impl Source {
    fn next(&mut self) -> Option<Result<(StoreKey, KeyState)>> {
        match self {
            Source::Map(m) => m.next().map(Ok),
            Source::Run(r) => r.next(),
        }
    }
}

/// The ordered merge of every layer's entries in a range: each key once,
/// with the merge of its states. After an error (a damaged run, an I/O
/// failure) it yields that error and then nothing.
pub struct ViewIter {
    /// The only layer, when there is one: read directly.
    single: Option<Source>,
    sources: Vec<Source>,
    /// Each source's next entry, once pulled; `None` until pulled or once
    /// exhausted (an exhausted source is removed).
    heads: Vec<Option<(StoreKey, KeyState)>>,
    reverse: bool,
    failed: bool,
}

impl std::fmt::Debug for ViewIter {
    // By hand: the sources hold whole key states, too much to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewIter")
            .field(
                "sources",
                &(self.sources.len() + usize::from(self.single.is_some())),
            )
            .field("reverse", &self.reverse)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ViewIter {
    /// Pulls a head for every source that has none; drops exhausted ones.
    fn fill_heads(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.sources.len() {
            let has_head = self.heads.get(i).is_some_and(Option::is_some);
            if !has_head {
                let pulled = match self.sources.get_mut(i) {
                    Some(source) => source.next().transpose()?,
                    None => None,
                };
                match pulled {
                    Some(entry) => {
                        if let Some(slot) = self.heads.get_mut(i) {
                            *slot = Some(entry);
                        }
                    }
                    None => {
                        self.sources.swap_remove(i);
                        self.heads.swap_remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }
}

impl Iterator for ViewIter {
    type Item = Result<(StoreKey, KeyState)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(source) = &mut self.single {
            let next = source.next();
            if matches!(next, Some(Err(_))) {
                self.failed = true;
            }
            return next;
        }
        if let Err(e) = self.fill_heads() {
            self.failed = true;
            return Some(Err(e));
        }
        // One layer left (a compacted database, a scan within one run):
        // nothing to merge.
        if let [only] = self.heads.as_mut_slice() {
            return only.take().map(Ok);
        }
        // The smallest (or, in reverse, greatest) head key.
        let reverse = self.reverse;
        let best = self
            .heads
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .reduce(|a, b| {
                let b_first = if reverse { b > a } else { b < a };
                if b_first { b } else { a }
            })?
            .clone();
        let mut merged: Option<KeyState> = None;
        for head in &mut self.heads {
            if head.as_ref().is_some_and(|(k, _)| *k == best)
                && let Some((_, state)) = head.take()
            {
                match &mut merged {
                    Some(acc) => acc.merge_from(&state),
                    None => merged = Some(state),
                }
            }
        }
        merged.map(|state| Ok((best, state)))
    }
}
