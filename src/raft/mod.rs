//! Raft: one consensus group per partition, as a sans-IO state machine.
//!
//! A [`RaftGroup`] counts ticks, not time, and draws randomness only from the seeded stream
//! it is given, so the simulator replays it bit for bit. It implements leader election with
//! pre-vote and check-quorum, pipelined log replication with a bounded in-flight window and
//! fast back-off, commitment of current-term entries by quorum, snapshots sent in chunks,
//! membership change through learners and joint consensus, leadership transfer, ReadIndex
//! reads and proposal forwarding. The driver persists and sends what each [`Ready`] asks, in
//! the order `ready.rs` documents: that order is what makes acknowledgements durable.

pub mod configuration;
pub mod entry;
mod group;
pub mod log;
pub mod message;
pub mod progress;
mod ready;
mod step;

pub use configuration::{ConfigChange, ConfigChangeError, Configuration};
pub use entry::{Entry, EntryKind, HardState, Snapshot, SnapshotMeta};
pub use group::{
    GroupStatus, Proposal, ProposeError, RaftConfig, RaftGroup, RaftPlantedBug, RecoveredState,
    BOOTSTRAP_INDEX,
};
pub use message::{AppendOutcome, Message, MessageBody};
pub use ready::{ReadState, Ready, Role, RoleState, SnapshotChunkRequest};

#[cfg(test)]
mod tests;
