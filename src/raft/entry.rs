//! Log entries, the hard state and snapshots: the values a Raft group persists.
//!
//! Invariants: entry indexes start at 1 and are contiguous in a log; an entry's term never
//! decreases along the log; a snapshot's metadata names the last index and term it covers and
//! the configuration in force at that index, so a log compacted below it can still answer
//! "what is the term at the snapshot index" and "who votes".

use crate::raft::configuration::Configuration;
use serde::{Deserialize, Serialize};

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A new leader's first entry: committing it commits everything before it (Raft §5.4.2)
    /// and lets the leader serve ReadIndex reads.
    Empty,
    /// An application command, opaque to Raft.
    Command(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A membership change; it takes effect when it commits.
    ConfigChange(crate::raft::configuration::ConfigChange),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub kind: EntryKind,
}

impl Entry {
    /// Bytes this entry adds to a message or the log, for flow control.
    pub fn payload_bytes(&self) -> usize {
        match &self.kind {
            EntryKind::Empty => 0,
            EntryKind::Command(bytes) => bytes.len(),
            EntryKind::ConfigChange(_) => 16,
        }
    }
}

/// The state that must be durable before the group says anything that depends on it: the
/// current term, the vote cast in it, and the highest index known committed (an
/// optimisation for recovery; losing it is safe).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<crate::ids::NodeId>,
    pub commit: u64,
}

/// What a snapshot covers: every entry up to `index` (whose term was `term`), and the
/// configuration in force after applying them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub configuration: Configuration,
}

/// A snapshot: its metadata and the application's state machine image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
