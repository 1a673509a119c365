//! The applied watermark: the highest sequence number up to which every
//! batch the WAL assigned is in the state map (or, after a failure, never
//! will be).
//!
//! Batches complete out of order (workers apply their groups concurrently),
//! so completions ahead of the watermark wait in `ahead` until the gap
//! below them closes. Sequence numbers are assigned contiguously by the
//! WAL, so the watermark moves over every number exactly once.
//!
//! Snapshots are taken at the watermark (everything below it is in the
//! map), and a duplicate submission replies only once its original is
//! done, so an answer never precedes the original's visibility.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// Where the applied batches stand; waiters are woken by each completion
/// and by [`AppliedWatermark::poison`].
pub(crate) struct AppliedWatermark {
    state: Mutex<WatermarkState>,
    changed: Condvar,
}

struct WatermarkState {
    /// Every sequence number up to this one is done.
    watermark: u64,
    /// Done batches above the watermark: first sequence number → last.
    ahead: BTreeMap<u64, u64>,
    /// Set when a commit panicked: its batch may never complete, so every
    /// waiter must stop waiting.
    poisoned: Option<Arc<str>>,
}

impl AppliedWatermark {
    /// A watermark at `seq`: everything up to it is in the map (recovery
    /// replayed it).
    pub fn new(seq: u64) -> Self {
        Self {
            state: Mutex::new(WatermarkState {
                watermark: seq,
                ahead: BTreeMap::new(),
                poisoned: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// Records that the batch `first_seq ..= last_seq` is applied (or will
    /// never be, after a failure), and moves the watermark over every
    /// batch that is now contiguous with it.
    pub fn complete(&self, first_seq: u64, last_seq: u64) {
        debug_assert!(first_seq <= last_seq, "a batch holds at least one seq");
        let mut st = self.state.lock();
        debug_assert!(
            first_seq > st.watermark,
            "batch {first_seq} completed twice"
        );
        let duplicate = st.ahead.insert(first_seq, last_seq);
        debug_assert!(duplicate.is_none(), "batch {first_seq} completed twice");
        loop {
            let next = st.watermark + 1;
            let Some(last) = st.ahead.remove(&next) else {
                break;
            };
            st.watermark = last;
        }
        self.changed.notify_all();
    }

    /// The watermark now.
    pub fn current(&self) -> u64 {
        self.state.lock().watermark
    }

    /// Waits until the batch starting at `first_seq` is done.
    pub fn wait_done(&self, first_seq: u64) -> Result<()> {
        self.wait_until(|st| st.watermark >= first_seq || st.ahead.contains_key(&first_seq))
    }

    /// Waits until the watermark reaches `seq`.
    pub fn wait_through(&self, seq: u64) -> Result<()> {
        self.wait_until(|st| st.watermark >= seq)
    }

    fn wait_until(&self, done: impl Fn(&WatermarkState) -> bool) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            if done(&st) {
                return Ok(());
            }
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            self.changed.wait(&mut st);
        }
    }

    /// Stops every wait, now and later: a batch may never complete.
    pub fn poison(&self, cause: &Arc<str>) {
        let mut st = self.state.lock();
        st.poisoned.get_or_insert_with(|| cause.clone());
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_over_contiguous_completions() {
        let w = AppliedWatermark::new(10);
        w.complete(14, 15);
        assert_eq!(w.current(), 10);
        assert!(w.wait_done(14).is_ok(), "done ahead of the watermark");
        w.complete(11, 13);
        assert_eq!(w.current(), 15);
        w.complete(16, 16);
        assert_eq!(w.current(), 16);
    }

    #[test]
    fn poison_wakes_a_waiter() {
        let w = Arc::new(AppliedWatermark::new(0));
        let waiter = {
            let w = w.clone();
            std::thread::spawn(move || w.wait_through(5))
        };
        w.poison(&Arc::from("test"));
        assert!(matches!(
            waiter.join().unwrap(),
            Err(Error::Poisoned { .. })
        ));
        assert!(w.wait_through(1).is_err());
    }
}
