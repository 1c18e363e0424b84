//! The production shell's halves of the seams: the OS clock, real files with fsync, and an
//! OS-seeded random stream. This is the only module of the library allowed to touch the OS.

mod file_disk;
mod os_rng;
mod system_clock;

pub use file_disk::FileDisk;
pub use os_rng::os_seeded_rng;
pub use system_clock::SystemClock;
