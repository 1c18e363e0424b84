//! The run's compact trace, whose hash identifies the run, and log lines stamped with
//! simulated time.
//!
//! The trace is a running xxh3 over (virtual time, what happened, who, a digest of the
//! payload) for every delivery (the digest of the frame's bytes), flush, crash, start, Raft
//! apply (the entry's digest), client answer (the key or the value read) and fault. Two runs of
//! the same seed must produce the same hash; `--twice` checks exactly that, so a run that sends
//! other bytes or answers other values fails it even if its times and counts agree.
//!
//! Log lines carry the virtual time of the event being handled. The formatter reads it from a
//! thread-local the world sets before each event: logging is the simulator's side channel, not
//! part of the deterministic state, so the thread-local cannot change a run.

use std::cell::Cell;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use xxhash_rust::xxh3::Xxh3;

pub struct Trace {
    hasher: Xxh3,
    records: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl Trace {
    pub fn new() -> Self {
        Self {
            hasher: Xxh3::new(),
            records: 0,
        }
    }

    pub fn record(&mut self, at_micros: u64, what: &str, who: u64, digest: u64) {
        self.hasher.update(&at_micros.to_le_bytes());
        self.hasher.update(what.as_bytes());
        self.hasher.update(&who.to_le_bytes());
        self.hasher.update(&digest.to_le_bytes());
        self.records += 1;
    }

    pub fn hash(&self) -> u64 {
        self.hasher.digest()
    }

    pub fn records(&self) -> u64 {
        self.records
    }
}

thread_local! {
    static LOG_TIME_MICROS: Cell<u64> = const { Cell::new(0) };
}

pub fn set_log_time(virtual_micros: u64) {
    LOG_TIME_MICROS.with(|time| time.set(virtual_micros));
}

/// Stamps log lines with the simulated time, as seconds since the run started.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimulatedTime;

impl FormatTime for SimulatedTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> std::fmt::Result {
        let micros = LOG_TIME_MICROS.with(Cell::get);
        write!(
            writer,
            "t={}.{:06}s",
            micros / 1_000_000,
            micros % 1_000_000
        )
    }
}
