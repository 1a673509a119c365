//! The run's Bloom filter: a lookup of an absent key usually reads no
//! block at all.
//!
//! The section is `[k: u8][bit array]` (empty when the writer was asked
//! for no filter). A key sets bits `(h + i·d) mod m` for `i < k`, where
//! `h` is [`key_hash`], `d` is `h` rotated by 32 bits and `m` is the bit
//! array's length in bits (double hashing: two hashes make all `k`). At
//! 10 bits per key and `k = 7` about 0.8 % of absent keys pass.

use crate::codec::{DecodeError, Reader};

use super::format::{SECTION_BYTES_MAX, key_hash};

/// Most probes per key a reader accepts.
pub const BLOOM_PROBES_MAX: u8 = 30;
/// Most bits per key a writer may be asked for.
pub const BLOOM_BITS_PER_KEY_MAX: u32 = 64;
/// The smallest bit array (bits), so a run of a few keys still filters.
const BLOOM_BITS_MIN: u64 = 64;

/// A Bloom filter over a run's keys.
#[derive(Clone, Debug, Default)]
pub struct Bloom {
    probes: u8,
    bits: Vec<u8>,
}

/// The probe count that minimises false positives at `bits_per_key`:
/// `bits_per_key · ln 2`, rounded, within `1..=BLOOM_PROBES_MAX`.
fn probes_for(bits_per_key: u32) -> u8 {
    let k = (f64::from(bits_per_key) * std::f64::consts::LN_2).round();
    (k as u8).clamp(1, BLOOM_PROBES_MAX)
}

impl Bloom {
    /// The filter section for keys whose hashes are `hashes`, at
    /// `bits_per_key` (0: no filter, an empty section). The bit array is
    /// capped at [`SECTION_BYTES_MAX`]; past that, more keys pass falsely.
    pub fn build(hashes: &[u64], bits_per_key: u32) -> Vec<u8> {
        if bits_per_key == 0 || hashes.is_empty() {
            return Vec::new();
        }
        let wanted = (hashes.len() as u64).saturating_mul(u64::from(bits_per_key));
        let bytes = wanted
            .max(BLOOM_BITS_MIN)
            .div_ceil(8)
            .min((SECTION_BYTES_MAX - 1) as u64) as usize;
        let mut bloom = Bloom {
            probes: probes_for(bits_per_key),
            bits: vec![0; bytes],
        };
        for &h in hashes {
            for (byte, mask) in bloom.positions(h) {
                if let Some(b) = bloom.bits.get_mut(byte) {
                    *b |= mask;
                }
            }
        }
        let mut out = Vec::with_capacity(1 + bloom.bits.len());
        out.push(bloom.probes);
        out.extend_from_slice(&bloom.bits);
        out
    }

    /// Reads a filter section (already checksummed).
    pub fn decode(section: &[u8]) -> Result<Bloom, DecodeError> {
        let Some((&probes, bits)) = section.split_first() else {
            return Ok(Bloom::default());
        };
        if probes == 0 || probes > BLOOM_PROBES_MAX {
            return Err(Reader::invalid(0, format!("{probes} filter probes")));
        }
        if (bits.len() as u64) * 8 < BLOOM_BITS_MIN {
            return Err(Reader::invalid(1, format!("{}-byte filter", bits.len())));
        }
        Ok(Bloom {
            probes,
            bits: bits.to_vec(),
        })
    }

    /// False only if `key` is certainly absent. A run without a filter
    /// says true.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        self.positions(key_hash(key))
            .all(|(byte, mask)| self.bits.get(byte).is_some_and(|b| b & mask != 0))
    }

    /// Bytes held in memory.
    pub fn resident_bytes(&self) -> usize {
        self.bits.capacity()
    }

    /// The `(byte, mask)` of each bit of the key whose hash is `h`.
    fn positions(&self, h: u64) -> impl Iterator<Item = (usize, u8)> + use<> {
        let m = (self.bits.len() as u64 * 8).max(1);
        let delta = h.rotate_left(32);
        (0..u64::from(self.probes)).map(move |i| {
            let bit = h.wrapping_add(i.wrapping_mul(delta)) % m;
            ((bit / 8) as usize, 1u8 << (bit % 8))
        })
    }
}
