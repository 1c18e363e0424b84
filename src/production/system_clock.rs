//! The system clock behind the `Clock` seam.
//!
//! Wall time comes from `SystemTime` but is never allowed to run backwards inside one process:
//! readings are anchored to a monotonic `Instant` taken at start-up, so an NTP step cannot
//! make the core see time reverse (it still must tolerate it across restarts).

use crate::seams::Clock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Clones share the anchor, so they read the same time.
#[derive(Clone, Debug)]
pub struct SystemClock {
    start_wall_micros: u64,
    start_instant: Instant,
}

impl SystemClock {
    #[allow(clippy::disallowed_methods)] // the production shell owns the system clock
    pub fn new() -> Self {
        let start_wall_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|duration| duration.as_micros() as u64)
            .unwrap_or(0);
        Self {
            start_wall_micros,
            start_instant: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the production clock is where the OS's time comes in
    fn now_micros(&self) -> u64 {
        self.start_wall_micros + self.start_instant.elapsed().as_micros() as u64
    }
}
