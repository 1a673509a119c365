//! sled 0.34: the default tree; a durable put is `insert` then `flush`, a
//! durable batch is `apply_batch` then `flush`. sled's flush ends in
//! `sync_file_range`, not fdatasync (marked † in the table).

use std::path::Path;

use super::Store;
use crate::data::{Key, Value};

pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    pub fn open(dir: &Path, cache_bytes: Option<u64>) -> SledStore {
        let mut config = sled::Config::new().path(dir);
        if let Some(bytes) = cache_bytes {
            config = config.cache_capacity(bytes);
        }
        SledStore {
            db: config.open().expect("sled open"),
        }
    }
}

impl Store for SledStore {
    fn put_durable(&self, key: &Key, value: &Value) {
        self.db.insert(key, &value[..]).expect("sled insert");
        self.db.flush().expect("sled flush");
    }

    fn write_batch_durable(&self, items: &[(Key, Value)]) {
        let mut batch = sled::Batch::default();
        for (k, v) in items {
            batch.insert(&k[..], &v[..]);
        }
        self.db.apply_batch(batch).expect("sled apply_batch");
        self.db.flush().expect("sled flush");
    }

    fn get(&self, key: &Key) -> Option<usize> {
        self.db.get(key).expect("sled get").map(|v| v.len())
    }

    fn scan_all(&self) -> (u64, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for item in self.db.iter() {
            let (_k, v) = item.expect("sled iterate");
            n += 1;
            bytes += v.len() as u64;
        }
        (n, bytes)
    }

    fn scan_from(&self, start: &Key, count: usize) -> usize {
        let mut n = 0;
        for item in self.db.range(&start[..]..).take(count) {
            let (_k, v) = item.expect("sled iterate");
            std::hint::black_box(v.len());
            n += 1;
        }
        n
    }

    /// sled 0.34 has no compaction call (its segment cleaner runs by
    /// itself): flush.
    fn compact(&mut self) {
        self.db.flush().expect("sled flush");
    }

    fn close(self: Box<Self>) {
        self.db.flush().expect("sled flush");
        drop(self);
    }
}
