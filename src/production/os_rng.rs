//! The production `Rng`: one ChaCha stream seeded from the OS at start-up.

use crate::seams::SeededRng;
use rand_core::{OsRng, RngCore};

/// Draws the seed once from the OS; everything after is the same ChaCha stream the simulator
/// uses, so the production path and the simulated one differ only in the seed.
pub fn os_seeded_rng() -> SeededRng {
    SeededRng::from_seed(OsRng.next_u64())
}
