//! The worker pool.
//!
//! Each worker owns a bounded crossbeam channel. A batch is routed by a hash
//! of its first key, so every single-key command on a key goes through the
//! same worker and is stamped, logged and applied in submission order
//! (batches are ordered by their first key; their other keys merge by CRDT
//! rules, which do not depend on order). A worker takes
//! what is waiting in its queue (up to `worker_batch_commands_max`) and runs
//! it through [`Engine::execute`] as one group, sharing one wait for
//! durability. With `worker_threads = 0` there is no pool: callers run
//! `execute` themselves.
//!
//! A worker is an execution *slot* (a mutex) plus a queue and a thread.
//! Whoever holds the slot runs that worker's commands, so commands routed to
//! one worker never run concurrently. A caller that finds its worker idle (queue
//! empty, slot free) runs its batch itself, sparing two thread hand-offs
//! (a single writer then pays only for its fsync); otherwise it queues the
//! batch and the worker thread runs it, with whatever else is queued, as one
//! group. Commands that wait in a queue were submitted concurrently with
//! whatever runs first, so no order is lost.
//!
//! A panic inside a worker poisons the database with the panic message; the
//! callers of the lost jobs get [`Error::Poisoned`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

use crate::command::{Batch, Outcome};
use crate::engine::{Engine, panic_message};
use crate::error::{Error, Result};

/// The reply to one submitted batch.
pub(crate) type Reply = Result<Vec<Outcome>>;

struct Job {
    batch: Batch,
    reply: Sender<Reply>,
}

/// Routes batches to workers, or runs them inline.
pub(crate) struct Pool {
    senders: Vec<Sender<Job>>,
    slots: Vec<Arc<Mutex<()>>>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `options.worker_threads` workers over `engine`.
    pub fn start(engine: &Arc<Engine>) -> Result<Pool> {
        let threads = engine.options().worker_threads;
        let depth = engine.options().worker_queue_depth_max.max(1);
        let mut senders = Vec::with_capacity(threads);
        let mut slots = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let (tx, rx) = bounded(depth);
            let engine = engine.clone();
            let slot = Arc::new(Mutex::new(()));
            slots.push(slot.clone());
            let handle = std::thread::Builder::new()
                .name(format!("mergekv-worker-{index}"))
                .spawn(move || worker_loop(&engine, &rx, &slot))
                .map_err(|e| Error::Poisoned {
                    cause: Arc::from(format!("cannot start worker thread: {e}")),
                })?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(Pool {
            senders,
            slots,
            handles,
        })
    }

    /// Runs a batch to completion: through a worker, or inline.
    pub fn submit(&self, engine: &Engine, batch: Batch) -> Reply {
        if self.senders.is_empty() {
            return run_one(engine, batch);
        }
        let worker = route(&batch, self.senders.len());
        // Never taken: `route` is below the number of senders, and `start`
        // pushes a slot with each sender. Running inline is what a pool
        // without workers does.
        let (Some(sender), Some(slot)) = (self.senders.get(worker), self.slots.get(worker)) else {
            return run_one(engine, batch);
        };
        if sender.is_empty()
            && let Some(_slot) = slot.try_lock()
        {
            return run_one(engine, batch);
        }
        let (reply, receive) = bounded(1);
        sender
            .send(Job { batch, reply })
            .map_err(|_| Error::Closed)?;
        receive.recv().unwrap_or_else(|_| {
            // The worker dropped the job without replying: it panicked, and
            // has poisoned the database.
            engine.wal().check_usable().and(Err(Error::Closed))
        })
    }

    /// Stops the workers after they finish what is queued.
    pub fn shutdown(&mut self) {
        self.senders.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The worker for a batch: a hash of its first key, so one key always goes
/// to one worker.
fn route(batch: &Batch, workers: usize) -> usize {
    let key: &[u8] = batch.ops.first().map_or(&[], |op| &op.store_key);
    // FNV-1a: fast, and stable within a process.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % workers as u64) as usize
}

fn worker_loop(engine: &Engine, jobs: &Receiver<Job>, slot: &Mutex<()>) {
    let group_max = engine.options().worker_batch_commands_max.max(1);
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < group_max {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<Batch>, Vec<Sender<Reply>>) =
            group.into_iter().map(|j| (j.batch, j.reply)).unzip();
        let _slot = slot.lock();
        // On a panic the replies are dropped, which tells the callers.
        if let Some(results) = run_group(engine, batches) {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away no longer needs the answer.
                let _ = reply.send(result);
            }
        }
    }
}

/// Runs one batch on the calling thread.
fn run_one(engine: &Engine, batch: Batch) -> Reply {
    match run_group(engine, vec![batch]) {
        Some(mut results) => results.pop().unwrap_or(Err(Error::Closed)),
        None => engine.wal().check_usable().and(Err(Error::Closed)),
    }
}

/// Runs a group through the engine; a panic poisons the database (and
/// gives `None`) rather than unwinding into the caller or killing a worker.
fn run_group(engine: &Engine, batches: Vec<Batch>) -> Option<Vec<Reply>> {
    match catch_unwind(AssertUnwindSafe(|| engine.execute(batches))) {
        Ok(results) => Some(results),
        Err(panic) => {
            let message = panic_message(&panic);
            engine.poison(&format!("write path panicked: {message}"));
            None
        }
    }
}
