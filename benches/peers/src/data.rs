//! Keys, values and random numbers, the same for every engine.
//!
//! Key number `i` is 16 bytes: a bijective scramble of `i` (big-endian),
//! then `i` itself (big-endian). Consecutive numbers are far apart in key
//! order, so loading `0..N` inserts in random key order, and a key's place
//! in key order is known from its first 8 bytes alone.

pub const KEY_BYTES: usize = 16;
pub const VALUE_BYTES: usize = 100;
/// Keys per durable batch in W3 and in the builds.
pub const BATCH_KEYS: usize = 10_000;

pub type Key = [u8; KEY_BYTES];
pub type Value = [u8; VALUE_BYTES];

/// splitmix64's finaliser: a bijection on u64.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn key(i: u64) -> Key {
    let mut k = [0u8; KEY_BYTES];
    k[..8].copy_from_slice(&mix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// 100 random (incompressible) bytes, a function of `i`.
pub fn value(i: u64) -> Value {
    let mut rng = Rng::new(i ^ 0x05EE_D0F7_A1E5);
    let mut v = [0u8; VALUE_BYTES];
    rng.fill(&mut v);
    v
}

/// A small, fast, seedable generator (splitmix64).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `0..n` (n > 0; the bias is negligible for n ≪ 2^64).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// The numbers of `count` keys adjacent in key order, starting at a random
/// key chosen by `seed`: the W4 cached working set. Adjacent keys share
/// blocks and pages, so the set occupies about its own size in a block or
/// page cache (a scattered subset of the same size would touch every block).
pub fn contiguous_key_numbers(keys: u64, count: u64, seed: u64) -> Vec<u64> {
    let mut order: Vec<(u64, u64)> = (0..keys).map(|i| (mix(i), i)).collect();
    order.sort_unstable();
    let count = count.min(keys) as usize;
    let start = Rng::new(seed).below((keys as usize - count + 1) as u64) as usize;
    order[start..start + count]
        .iter()
        .map(|&(_, i)| i)
        .collect()
}
