//! What the load generator sends: keys, values, the get/set mix and the key distribution.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    Uniform,
    /// Zipf with exponent `s` (1.0 is the classic; higher is more skewed).
    Zipf(f64),
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "zipf" => Ok(Distribution::Zipf(0.99)),
            other => match other.strip_prefix("zipf:").map(str::parse::<f64>) {
                Some(Ok(exp)) if exp > 0.0 && exp.is_finite() => Ok(Distribution::Zipf(exp)),
                _ => Err(format!(
                    "unknown distribution {other:?}: use uniform, zipf or zipf:EXPONENT"
                )),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Fraction of requests that are GETs (0.0 to 1.0).
    pub get_ratio: f64,
    pub distribution: Distribution,
    /// Ask for durable writes where the protocol can (nmdb SYNC).
    pub sync_writes: bool,
}

/// Picks key indexes in `0..n`.
pub struct KeyPicker {
    n: u64,
    /// Cumulative probabilities for Zipf (None = uniform).
    cdf: Option<Vec<f64>>,
}

/// Zipf tables above this many keys are not built (memory); larger key counts use a cheaper
/// approximation: the table over the first `ZIPF_TABLE_MAX` ranks, scaled.
const ZIPF_TABLE_MAX: u64 = 1 << 22;

impl KeyPicker {
    pub fn new(n: u64, distribution: Distribution) -> Self {
        let n = n.max(1);
        let cdf = match distribution {
            Distribution::Uniform => None,
            Distribution::Zipf(s) => {
                let size = n.min(ZIPF_TABLE_MAX);
                let mut total = 0.0;
                let mut cdf = Vec::with_capacity(size as usize);
                for rank in 1..=size {
                    total += 1.0 / (rank as f64).powf(s);
                    cdf.push(total);
                }
                for p in &mut cdf {
                    *p /= total;
                }
                Some(cdf)
            }
        };
        KeyPicker { n, cdf }
    }

    pub fn pick(&self, rng: &mut SmallRng) -> u64 {
        match &self.cdf {
            None => rng.random_range(0..self.n),
            Some(cdf) => {
                let u: f64 = rng.random();
                let rank = cdf.partition_point(|p| *p < u) as u64;
                // Spread ranks over the key space so hot keys are not neighbours.
                (rank.min(self.n - 1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.n
            }
        }
    }
}

/// The bytes of key `index`: `key:` and the zero-padded index, padded or cut to `size`.
pub fn key_bytes(index: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let text = format!("key:{index:016}");
    let bytes = text.as_bytes();
    if size <= bytes.len() {
        out.extend_from_slice(&bytes[bytes.len() - size.max(1)..]);
    } else {
        out.extend_from_slice(bytes);
        out.resize(size, b'.');
    }
}

pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_covers_the_range() {
        let picker = KeyPicker::new(10, Distribution::Uniform);
        let mut rng = rng(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[picker.pick(&mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|c| *c > 800 && *c < 1200), "{seen:?}");
    }

    #[test]
    fn zipf_is_skewed() {
        let picker = KeyPicker::new(1000, Distribution::Zipf(1.0));
        let mut rng = rng(2);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(picker.pick(&mut rng)).or_insert(0u32) += 1;
        }
        let mut sorted: Vec<_> = counts.values().copied().collect();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // With s = 1 over 1000 keys the hottest key takes about 13 %.
        assert!(sorted[0] > 10_000 && sorted[0] < 16_000, "{}", sorted[0]);
        assert!(counts.keys().all(|k| *k < 1000));
    }

    #[test]
    fn keys_have_the_requested_size() {
        let mut out = Vec::new();
        key_bytes(42, 16, &mut out);
        assert_eq!(out, b"0000000000000042");
        key_bytes(42, 24, &mut out);
        assert_eq!(out, b"key:0000000000000042....");
        assert_eq!(
            "zipf:1.2".parse::<Distribution>().unwrap(),
            Distribution::Zipf(1.2)
        );
        assert!("zipf:-1".parse::<Distribution>().is_err());
    }
}
