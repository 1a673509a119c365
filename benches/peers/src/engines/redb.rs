//! redb: one table, one write transaction per durable commit (the default
//! durability, `Immediate`: fdatasync before `commit` returns), one read
//! transaction per get or scan.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::Store;
use crate::data::{Key, Value};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(dir: &Path, cache_bytes: Option<u64>) -> RedbStore {
        let path = dir.join("bench.redb");
        let mut builder = Database::builder();
        if let Some(bytes) = cache_bytes {
            builder.set_cache_size(bytes as usize);
        }
        let db = builder.create(path).expect("redb open");
        // Create the table, so that readers of an empty database find it.
        let txn = db.begin_write().expect("redb begin_write");
        txn.open_table(TABLE).expect("redb open_table");
        txn.commit().expect("redb commit");
        RedbStore { db }
    }
}

impl Store for RedbStore {
    fn put_durable(&self, key: &Key, value: &Value) {
        let txn = self.db.begin_write().expect("redb begin_write");
        {
            let mut table = txn.open_table(TABLE).expect("redb open_table");
            table.insert(&key[..], &value[..]).expect("redb insert");
        }
        txn.commit().expect("redb commit");
    }

    fn write_batch_durable(&self, items: &[(Key, Value)]) {
        let txn = self.db.begin_write().expect("redb begin_write");
        {
            let mut table = txn.open_table(TABLE).expect("redb open_table");
            for (k, v) in items {
                table.insert(&k[..], &v[..]).expect("redb insert");
            }
        }
        txn.commit().expect("redb commit");
    }

    fn get(&self, key: &Key) -> Option<usize> {
        let txn = self.db.begin_read().expect("redb begin_read");
        let table = txn.open_table(TABLE).expect("redb open_table");
        let guard = table.get(&key[..]).expect("redb get")?;
        Some(guard.value().len())
    }

    fn scan_all(&self) -> (u64, u64) {
        let txn = self.db.begin_read().expect("redb begin_read");
        let table = txn.open_table(TABLE).expect("redb open_table");
        let mut n = 0;
        let mut bytes = 0;
        for item in table.range::<&[u8]>(..).expect("redb range") {
            let (_k, v) = item.expect("redb iterate");
            n += 1;
            bytes += v.value().len() as u64;
        }
        (n, bytes)
    }

    fn scan_from(&self, start: &Key, count: usize) -> usize {
        let txn = self.db.begin_read().expect("redb begin_read");
        let table = txn.open_table(TABLE).expect("redb open_table");
        let mut n = 0;
        for item in table.range(&start[..]..).expect("redb range").take(count) {
            let (_k, v) = item.expect("redb iterate");
            std::hint::black_box(v.value().len());
            n += 1;
        }
        n
    }

    fn compact(&mut self) {
        while self.db.compact().expect("redb compact") {}
    }

    fn close(self: Box<Self>) {
        self.db.close().expect("redb close");
    }
}
