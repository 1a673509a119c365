//! The block cache every run of a database shares: decompressed,
//! checksum-verified blocks, under a byte budget.
//!
//! The cache is split into [`CACHE_SHARDS`] shards, each with its own
//! lock and an equal share of the budget, so concurrent readers of
//! different blocks rarely meet on a lock. Each shard evicts by CLOCK (a
//! second-chance ring): a hit sets the entry's reference bit, and the hand
//! clears bits until it finds an entry without one. That is LRU's
//! behaviour for a hot set at the cost of one flag store per hit, and no
//! list to relink under the lock. Nothing is read from disk under a
//! shard's lock: a miss reads the block outside it and inserts after.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::format::fmix64;

/// Shards of a cache: enough that a few dozen reader threads rarely share
/// one, few enough that each shard's budget holds many blocks.
pub const CACHE_SHARDS: usize = 16;
/// Bytes charged per cached block on top of its length: the map entry,
/// the slot and the `Arc`'s header.
pub const CACHE_ENTRY_OVERHEAD_BYTES: u64 = 96;

/// A cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found their block.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Bytes charged for the blocks held now (lengths plus overhead).
    pub resident_bytes: u64,
    /// The budget.
    pub capacity_bytes: u64,
    /// Blocks dropped to make room.
    pub evictions: u64,
}

/// Which block: the run's process-unique cache id and the block's offset.
type BlockKey = (u64, u64);

#[derive(Debug)]
struct Slot {
    key: BlockKey,
    block: Arc<[u8]>,
    charge: u64,
    referenced: bool,
}

/// Hashes a block key with the mixer the cache already uses to pick a
/// shard: the map's default hasher (SipHash, built against hash flooding,
/// which block keys cannot mount) costs more than the rest of a hit.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fmix64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = fmix64(self.0 ^ v);
    }
}

type KeyMap = HashMap<BlockKey, usize, std::hash::BuildHasherDefault<KeyHasher>>;

#[derive(Debug, Default)]
struct Shard {
    map: KeyMap,
    /// Counted here, under the lock the lookup holds anyway: a counter
    /// shared by every reader would make two threads fight over its cache
    /// line on every get.
    hits: u64,
    misses: u64,
    evictions: u64,
    ring: Vec<Option<Slot>>,
    free: Vec<usize>,
    hand: usize,
    resident_bytes: u64,
}

/// A byte-budgeted, sharded block cache shared by every run of a
/// database (or of several). Blocks are keyed by their run's cache id, so
/// two runs never see each other's blocks.
#[derive(Debug)]
pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    capacity_bytes: u64,
    shard_budget_bytes: u64,
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` (block lengths plus
    /// [`CACHE_ENTRY_OVERHEAD_BYTES`] each); 0 caches nothing.
    pub fn new(capacity_bytes: u64) -> Arc<BlockCache> {
        Arc::new(BlockCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            capacity_bytes,
            shard_budget_bytes: capacity_bytes / CACHE_SHARDS as u64,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            capacity_bytes: self.capacity_bytes,
            ..CacheStats::default()
        };
        for shard in &self.shards {
            let shard = shard.lock();
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.evictions += shard.evictions;
            stats.resident_bytes += shard.resident_bytes;
        }
        stats
    }

    fn shard(&self, key: BlockKey) -> Option<&Mutex<Shard>> {
        let h = fmix64(key.0 ^ fmix64(key.1));
        self.shards.get((h % CACHE_SHARDS as u64) as usize)
    }

    /// The block, if cached; counts a hit or a miss.
    pub fn get(&self, run: u64, offset: u64) -> Option<Arc<[u8]>> {
        let key = (run, offset);
        let mut shard = self.shard(key)?.lock();
        let found = shard.map.get(&key).copied().and_then(|slot| {
            let entry = shard.ring.get_mut(slot)?.as_mut()?;
            entry.referenced = true;
            Some(entry.block.clone())
        });
        if found.is_some() {
            shard.hits += 1;
        } else {
            shard.misses += 1;
        }
        found
    }

    /// Caches a block read from disk, evicting others to stay within the
    /// shard's budget. A block larger than a shard's budget is not cached.
    pub fn insert(&self, run: u64, offset: u64, block: Arc<[u8]>) {
        let charge = block.len() as u64 + CACHE_ENTRY_OVERHEAD_BYTES;
        if charge > self.shard_budget_bytes {
            return;
        }
        let key = (run, offset);
        let Some(shard) = self.shard(key) else {
            return;
        };
        let mut shard = shard.lock();
        if shard.map.contains_key(&key) {
            return; // another reader cached it first
        }
        while shard.resident_bytes + charge > self.shard_budget_bytes {
            if !shard.evict_one() {
                return;
            }
            shard.evictions += 1;
        }
        shard.put(Slot {
            key,
            block,
            charge,
            referenced: false,
        });
        debug_assert!(shard.resident_bytes <= self.shard_budget_bytes);
    }

    /// Drops every block of run `run` (a run going away).
    pub fn forget(&self, run: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let doomed: Vec<usize> = shard
                .map
                .iter()
                .filter(|(k, _)| k.0 == run)
                .map(|(_, &slot)| slot)
                .collect();
            for slot in doomed {
                shard.remove(slot);
            }
        }
    }
}

impl Shard {
    fn put(&mut self, slot: Slot) {
        self.resident_bytes += slot.charge;
        let key = slot.key;
        let at = match self.free.pop() {
            Some(at) => {
                if let Some(place) = self.ring.get_mut(at) {
                    *place = Some(slot);
                }
                at
            }
            None => {
                self.ring.push(Some(slot));
                self.ring.len() - 1
            }
        };
        self.map.insert(key, at);
    }

    fn remove(&mut self, at: usize) {
        if let Some(slot) = self.ring.get_mut(at).and_then(Option::take) {
            self.map.remove(&slot.key);
            self.resident_bytes -= slot.charge;
            self.free.push(at);
        }
    }

    /// Moves the hand to the next entry without a reference bit, clearing
    /// the bits it passes, and evicts it. False if the shard is empty.
    fn evict_one(&mut self) -> bool {
        if self.map.is_empty() || self.ring.is_empty() {
            return false;
        }
        // Two turns suffice: the first clears every bit it passes.
        for _ in 0..2 * self.ring.len() {
            let at = self.hand % self.ring.len();
            self.hand = at + 1;
            match self.ring.get_mut(at) {
                Some(Some(slot)) if slot.referenced => slot.referenced = false,
                Some(Some(_)) => {
                    self.remove(at);
                    return true;
                }
                _ => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(len: usize, fill: u8) -> Arc<[u8]> {
        Arc::from(vec![fill; len])
    }

    #[test]
    fn hits_misses_and_the_budget() {
        let per = 1000 + CACHE_ENTRY_OVERHEAD_BYTES;
        let cache = BlockCache::new(per * CACHE_SHARDS as u64 * 3);
        assert!(cache.get(1, 0).is_none());
        cache.insert(1, 0, block(1000, 7));
        assert_eq!(cache.get(1, 0).unwrap()[0], 7);
        assert!(
            cache.get(2, 0).is_none(),
            "another run's block never aliases"
        );
        for offset in 0..1000 {
            cache.insert(3, offset, block(1000, 1));
        }
        let stats = cache.stats();
        assert!(stats.resident_bytes <= stats.capacity_bytes, "{stats:?}");
        assert!(stats.evictions > 0);
        assert_eq!((stats.hits, stats.misses), (1, 2));
        cache.forget(3);
        assert!(cache.stats().resident_bytes <= per);
    }

    #[test]
    fn a_referenced_block_outlives_an_unreferenced_one() {
        // One shard's budget holds two blocks; find three keys of one shard.
        let per = 100 + CACHE_ENTRY_OVERHEAD_BYTES;
        let cache = BlockCache::new(2 * per * CACHE_SHARDS as u64);
        let shard_of = |o: u64| (fmix64(9 ^ fmix64(o)) % CACHE_SHARDS as u64) as usize;
        let same: Vec<u64> = (0..10_000u64)
            .filter(|&o| shard_of(o) == shard_of(0))
            .take(3)
            .collect();
        cache.insert(9, same[0], block(100, 0));
        cache.insert(9, same[1], block(100, 1));
        assert!(cache.get(9, same[0]).is_some());
        cache.insert(9, same[2], block(100, 2));
        assert!(cache.get(9, same[0]).is_some(), "hot block kept");
        assert!(cache.get(9, same[1]).is_none(), "cold block evicted");
    }

    #[test]
    fn zero_capacity_and_oversized_blocks_are_not_cached() {
        let cache = BlockCache::new(0);
        cache.insert(1, 0, block(10, 0));
        assert!(cache.get(1, 0).is_none());
        let cache = BlockCache::new(CACHE_SHARDS as u64 * 1000);
        cache.insert(1, 0, block(2000, 0));
        assert!(cache.get(1, 0).is_none());
        assert_eq!(cache.stats().resident_bytes, 0);
    }
}
