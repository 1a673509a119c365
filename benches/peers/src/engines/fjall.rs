//! fjall: one keyspace; a durable put is `insert` then
//! `persist(PersistMode::SyncData)` (fdatasync of the journal), a durable
//! batch is a `WriteBatch` committed with `SyncData` durability.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::Store;
use crate::data::{Key, Value};

pub struct FjallStore {
    db: Database,
    ks: Keyspace,
}

impl FjallStore {
    pub fn open(dir: &Path, cache_bytes: Option<u64>) -> FjallStore {
        let mut builder = Database::builder(dir);
        if let Some(bytes) = cache_bytes {
            builder = builder.cache_size(bytes);
        }
        let db = builder.open().expect("fjall open");
        let ks = db
            .keyspace("bench", KeyspaceCreateOptions::default)
            .expect("fjall keyspace");
        FjallStore { db, ks }
    }
}

impl Store for FjallStore {
    fn put_durable(&self, key: &Key, value: &Value) {
        self.ks.insert(&key[..], &value[..]).expect("fjall insert");
        self.db
            .persist(PersistMode::SyncData)
            .expect("fjall persist");
    }

    fn write_batch_durable(&self, items: &[(Key, Value)]) {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for (k, v) in items {
            batch.insert(&self.ks, &k[..], &v[..]);
        }
        batch.commit().expect("fjall batch commit");
    }

    fn get(&self, key: &Key) -> Option<usize> {
        self.ks.get(key).expect("fjall get").map(|v| v.len())
    }

    fn scan_all(&self) -> (u64, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for guard in self.ks.iter() {
            let (_k, v) = guard.into_inner().expect("fjall iterate");
            n += 1;
            bytes += v.len() as u64;
        }
        (n, bytes)
    }

    fn scan_from(&self, start: &Key, count: usize) -> usize {
        let mut n = 0;
        for guard in self.ks.range(&start[..]..).take(count) {
            let (_k, v) = guard.into_inner().expect("fjall iterate");
            std::hint::black_box(v.len());
            n += 1;
        }
        n
    }

    /// fjall's public API has no compaction or flush call (its memtable
    /// flushes and compactions run in the background): persist the journal.
    fn compact(&mut self) {
        self.db
            .persist(PersistMode::SyncAll)
            .expect("fjall persist");
    }

    fn close(self: Box<Self>) {
        self.db
            .persist(PersistMode::SyncAll)
            .expect("fjall persist");
        drop(self);
    }
}
