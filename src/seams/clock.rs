//! The `Clock` seam: wall-clock time as one node sees it.
//!
//! The core never asks the OS for time. It reads `now_micros` here and asks its driver to wake
//! it at a local deadline (see `Node::next_deadline_micros`). In the simulator the reading is
//! skewed, drifts and jumps per node, so nothing may assume two nodes agree on the time or that
//! a clock never goes backwards.

/// Wall-clock time in microseconds since the Unix epoch, as this node sees it.
pub trait Clock {
    fn now_micros(&self) -> u64;
}
