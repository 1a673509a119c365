//! The applied watermark: which queued batches are in the state map yet.
//!
//! Kept apart from the group commit, with its own lock and condition
//! variable, because it is not about the log: it is moving to the engine,
//! and appliers and the compactor then no longer contend with writers for
//! the WAL's lock. The WAL feeds it: it registers each batch in the order it
//! assigns sequence numbers, and halts it when it is poisoned or closed.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// Tracks queued batches until they are applied; waiters are woken on every
/// change, including a poison or a close, so none of them polls.
pub(super) struct AppliedTracker {
    state: Mutex<AppliedState>,
    /// Signalled, under `state`, whenever the watermark or the halt changes.
    changed: Condvar,
}

struct AppliedState {
    /// First sequence numbers of registered batches not yet applied: the
    /// watermark is just below the smallest.
    unapplied: BTreeSet<u64>,
    /// The last sequence number registered: the watermark when nothing is
    /// unapplied.
    last_registered: u64,
    poisoned: Option<Arc<str>>,
    closed: bool,
}

impl AppliedState {
    fn watermark(&self) -> u64 {
        self.unapplied
            .first()
            .map_or(self.last_registered, |first| first - 1)
    }

    /// The same precedence as the WAL's `check_usable`: poison before close.
    fn check_usable(&self) -> Result<()> {
        if let Some(cause) = &self.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

impl AppliedTracker {
    /// A tracker whose watermark starts at `last_registered` (everything
    /// recovered is applied).
    pub(super) fn new(last_registered: u64) -> Self {
        Self {
            state: Mutex::new(AppliedState {
                unapplied: BTreeSet::new(),
                last_registered,
                poisoned: None,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// Registers a queued batch. Must be called in the order sequence
    /// numbers are assigned (the WAL calls it under its own lock): a later
    /// batch registered first would let the watermark pass an earlier one.
    pub(super) fn register(&self, first_seq: u64, last_seq: u64) {
        let mut st = self.state.lock();
        debug_assert_eq!(
            first_seq,
            st.last_registered + 1,
            "batches are registered in sequence order, without gaps"
        );
        debug_assert!(first_seq <= last_seq);
        st.unapplied.insert(first_seq);
        st.last_registered = last_seq;
    }

    /// Marks batches (by first sequence number) as applied, or as never to
    /// be applied after a failure.
    pub(super) fn mark_applied(&self, first_seqs: &[u64]) {
        if first_seqs.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        for seq in first_seqs {
            st.unapplied.remove(seq);
        }
        self.changed.notify_all();
    }

    /// Waits until the batch starting at `first_seq` is applied, or the
    /// tracker is halted.
    pub(super) fn wait_applied(&self, first_seq: u64) {
        let mut st = self.state.lock();
        while st.unapplied.contains(&first_seq) && st.check_usable().is_ok() {
            self.changed.wait(&mut st);
        }
    }

    /// Waits until the watermark reaches `seq`; fails once halted.
    pub(super) fn wait_watermark(&self, seq: u64) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            st.check_usable()?;
            if st.watermark() >= seq {
                return Ok(());
            }
            self.changed.wait(&mut st);
        }
    }

    /// The watermark; fails once halted (see `Wal::applied_watermark`).
    pub(super) fn watermark(&self) -> Result<u64> {
        let st = self.state.lock();
        st.check_usable()?;
        Ok(st.watermark())
    }

    /// Halts for a poison; the first cause is kept.
    pub(super) fn poison(&self, cause: Arc<str>) {
        let mut st = self.state.lock();
        st.poisoned.get_or_insert(cause);
        self.changed.notify_all();
    }

    /// Halts for a close.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn the_watermark_stays_below_the_oldest_unapplied_batch() {
        let tracker = AppliedTracker::new(4);
        assert_eq!(tracker.watermark().unwrap(), 4);
        tracker.register(5, 7);
        tracker.register(8, 8);
        assert_eq!(tracker.watermark().unwrap(), 4);
        tracker.mark_applied(&[8]);
        assert_eq!(tracker.watermark().unwrap(), 4);
        tracker.mark_applied(&[5]);
        assert_eq!(tracker.watermark().unwrap(), 8);
    }

    /// Runs `wait` on a thread, then `halt`, and requires the waiter to be
    /// woken: the waits have no timeout, so a missing notify hangs it.
    fn woken_by(
        wait: impl FnOnce(&AppliedTracker) + Send + 'static,
        halt: impl FnOnce(&AppliedTracker),
    ) {
        let tracker = Arc::new(AppliedTracker::new(0));
        tracker.register(1, 1);
        let (started_tx, started) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let waiter = Arc::clone(&tracker);
        std::thread::spawn(move || {
            started_tx.send(()).unwrap();
            wait(&waiter);
            done_tx.send(()).unwrap();
        });
        started.recv().unwrap();
        halt(&tracker);
        done.recv_timeout(Duration::from_secs(30))
            .expect("the waiter was woken");
    }

    #[test]
    fn waiters_are_woken_by_a_poison() {
        woken_by(|t| t.wait_applied(1), |t| t.poison(Arc::from("test")));
        woken_by(
            |t| assert!(matches!(t.wait_watermark(1), Err(Error::Poisoned { .. }))),
            |t| t.poison(Arc::from("test")),
        );
    }

    #[test]
    fn waiters_are_woken_by_a_close_and_by_progress() {
        woken_by(
            |t| assert!(matches!(t.wait_watermark(1), Err(Error::Closed))),
            AppliedTracker::close,
        );
        woken_by(|t| t.wait_watermark(1).unwrap(), |t| t.mark_applied(&[1]));
    }

    #[test]
    fn the_first_poison_cause_is_kept_and_wins_over_a_close() {
        let tracker = AppliedTracker::new(0);
        tracker.close();
        tracker.poison(Arc::from("first"));
        tracker.poison(Arc::from("second"));
        match tracker.watermark() {
            Err(Error::Poisoned { cause }) => assert_eq!(&*cause, "first"),
            other => panic!("expected the first poison, got {other:?}"),
        }
    }
}
