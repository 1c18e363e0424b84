//! The seams: the only ways the deterministic core touches the world.
//!
//! Every protocol component reads time through [`Clock`], sends through [`Network`], stores
//! through [`Disk`] and draws randomness from [`Rng`]. Production implements them over the OS
//! (`crate::production`); the simulator implements them over a seeded, virtual world. Nothing
//! else in the core may be nondeterministic, so a seed replays a run bit for bit.

mod clock;
mod disk;
mod network;

pub use crate::random::{Rng, SeededRng};
pub use clock::Clock;
pub use disk::{read_extent, Disk, DiskError, SharedDisk};
pub use network::Network;
