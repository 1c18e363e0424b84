//! Simulated clocks: one true virtual time, and per node a skewed reading of it.
//!
//! A node reads `epoch + t + t * drift_ppm / 1e6 + offset`, where `t` is the virtual time since
//! the run started, `drift_ppm` is fixed per node and `offset` moves with clock jumps. The core
//! must tolerate all of it: nodes disagree on the time, and a jump backwards makes one node's
//! clock go back. Virtual time itself never goes backwards.

use borough::seams::Clock;
use std::cell::Cell;
use std::rc::Rc;

/// The world's virtual time in microseconds since the run started, shared with every clock.
pub type VirtualTime = Rc<Cell<u64>>;

/// One node's clock parameters, kept by the world across the node's restarts.
#[derive(Clone, Debug)]
pub struct ClockSkew {
    pub offset_micros: Rc<Cell<i64>>,
    pub drift_ppm: i64,
}

impl ClockSkew {
    pub fn none() -> Self {
        Self {
            offset_micros: Rc::new(Cell::new(0)),
            drift_ppm: 0,
        }
    }

    /// The node's reading at virtual time `virtual_micros`.
    pub fn local_micros(&self, epoch_micros: u64, virtual_micros: u64) -> u64 {
        let virtual_micros = virtual_micros as i128;
        let local = epoch_micros as i128
            + virtual_micros
            + virtual_micros * self.drift_ppm as i128 / 1_000_000
            + self.offset_micros.get() as i128;
        local.max(0) as u64
    }

    /// A virtual time at which the node reads at least `local_micros`: the first one, or a
    /// microsecond after it where the drift's integer rounding says so.
    pub fn virtual_micros_at(&self, epoch_micros: u64, local_micros: u64) -> u64 {
        let since_epoch =
            local_micros as i128 - epoch_micros as i128 - self.offset_micros.get() as i128;
        let scaled = since_epoch * 1_000_000;
        let rate = 1_000_000 + self.drift_ppm as i128;
        // Ceiling division, so the node's clock has reached the deadline at that time.
        let virtual_micros = (scaled + rate - 1).div_euclid(rate);
        virtual_micros.max(0) as u64
    }
}

#[derive(Debug)]
pub struct SimClock {
    pub epoch_micros: u64,
    pub now: VirtualTime,
    pub skew: ClockSkew,
}

impl Clock for SimClock {
    fn now_micros(&self) -> u64 {
        self.skew.local_micros(self.epoch_micros, self.now.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_conversion_inverts_the_reading() {
        for drift_ppm in [-200, 0, 150] {
            for offset in [-5_000_000i64, 0, 3_000] {
                let skew = ClockSkew {
                    offset_micros: Rc::new(Cell::new(offset)),
                    drift_ppm,
                };
                let epoch = 1_700_000_000_000_000;
                for local in [epoch + 10_000_000, epoch + 10_000_001, epoch + 123_456_789] {
                    let at = skew.virtual_micros_at(epoch, local);
                    assert!(skew.local_micros(epoch, at) >= local);
                    // Integer rounding of the drift may make it a microsecond late, never early.
                    assert!(at < 2 || skew.local_micros(epoch, at - 2) < local);
                }
            }
        }
    }
}
