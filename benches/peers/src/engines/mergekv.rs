//! mergekv, through its public API only. This file is the one place the
//! benchmark touches mergekv: when `Options` gains a cache budget or a
//! read-only open, change `mergekv_options` (and `open`) here.

use std::path::Path;

use mergekv::{Batch, Db, Options, ScanOptions};

use super::Store;
use crate::data::{Key, Value};

/// The options every mergekv run uses: the defaults, with the cache budget
/// asked for (W12: 256 MiB; `None` everywhere else: the default budget).
pub fn mergekv_options(cache_bytes: Option<u64>) -> Options {
    let defaults = Options::default();
    let cache_bytes_max = cache_bytes.unwrap_or(defaults.cache_bytes_max);
    defaults.with_cache_bytes_max(cache_bytes_max)
}

pub struct MergekvStore {
    db: Db,
}

impl MergekvStore {
    pub fn open(dir: &Path, cache_bytes: Option<u64>) -> MergekvStore {
        let db = Db::open_with(dir, mergekv_options(cache_bytes)).expect("mergekv open");
        MergekvStore { db }
    }
}

impl Store for MergekvStore {
    fn put_durable(&self, key: &Key, value: &Value) {
        self.db.put(key, value).expect("mergekv put");
    }

    fn write_batch_durable(&self, items: &[(Key, Value)]) {
        let mut batch = Batch::new();
        for (k, v) in items {
            batch.put(k, v);
        }
        self.db.write(batch).expect("mergekv write");
    }

    fn get(&self, key: &Key) -> Option<usize> {
        self.db.get(key).expect("mergekv get").map(|v| v.len())
    }

    fn scan_all(&self) -> (u64, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for entry in self.db.scan(&ScanOptions::all()) {
            let entry = entry.expect("mergekv scan");
            n += 1;
            bytes += entry.value().as_bytes().map_or(0, |b| b.len() as u64);
        }
        (n, bytes)
    }

    fn scan_from(&self, start: &Key, count: usize) -> usize {
        let opts = ScanOptions::from_range(&start[..]..).limited(count);
        self.db.scan(&opts).count()
    }

    fn compact(&mut self) {
        self.db.compact_now().expect("mergekv compact_now");
    }

    fn close(self: Box<Self>) {
        self.db.close().expect("mergekv close");
    }
}
