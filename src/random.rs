//! Randomness as a plain seeded value: the [`Rng`] trait (the randomness seam, re-exported by
//! `crate::seams`) and [`SeededRng`], the ChaCha stream behind it.
//!
//! A leaf module, so the lowest layers (Raft draws its election timeouts from a `SeededRng`
//! it is given) take randomness without naming the seams. The simulator hands each node its
//! own stream split from the run's seed; production seeds one from the OS once at start-up.
//! Helper methods are defined here, on top of `next_u64`, so both worlds draw identically
//! from the same stream.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

pub trait Rng {
    fn next_u64(&mut self) -> u64;

    /// A uniform draw from `[0, bound)`; `bound` must be positive.
    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value to return");
        // Rejection sampling keeps the draw unbiased.
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let value = self.next_u64();
            if value < zone {
                return value % bound;
            }
        }
    }

    /// A uniform draw from the inclusive range `[low, high]`.
    fn in_range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range [{low}, {high}]");
        if low == 0 && high == u64::MAX {
            return self.next_u64();
        }
        low + self.below(high - low + 1)
    }

    /// `true` with probability `ratio` (clamped to `[0, 1]`).
    fn chance(&mut self, ratio: f64) -> bool {
        if ratio <= 0.0 {
            return false;
        }
        if ratio >= 1.0 {
            return true;
        }
        self.unit() < ratio
    }

    /// A uniform draw from `[0, 1)` with 53 bits of precision.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A ChaCha8 stream: the simulator's per-node generator and production's OS-seeded one.
#[derive(Clone, Debug)]
pub struct SeededRng {
    inner: ChaCha8Rng,
}

impl SeededRng {
    pub fn from_seed(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent stream for `stream`, derived from `seed`: same seed and stream, same draws.
    pub fn split(seed: u64, stream: u64) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(seed);
        inner.set_stream(stream);
        Self { inner }
    }
}

impl Rng for SeededRng {
    fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_same_draws() {
        let mut first = SeededRng::split(7, 3);
        let mut second = SeededRng::split(7, 3);
        let mut other = SeededRng::split(7, 4);
        let a: Vec<u64> = (0..8).map(|_| first.next_u64()).collect();
        let b: Vec<u64> = (0..8).map(|_| second.next_u64()).collect();
        let c: Vec<u64> = (0..8).map(|_| other.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn in_range_stays_inside() {
        let mut rng = SeededRng::from_seed(1);
        for _ in 0..1000 {
            let value = rng.in_range(5, 9);
            assert!((5..=9).contains(&value));
        }
    }
}
