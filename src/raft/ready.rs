//! What a group hands its driver after a round of input, and the order the driver must act
//! on it in. This order is the group's durability contract:
//!
//! 1. send `messages` (the leader's replication traffic: it may leave before the leader's own
//!    writes are durable, Raft thesis §10.2.1);
//! 2. answer every `snapshot_requests` entry with [`crate::raft::RaftGroup::on_snapshot_chunk`];
//! 3. persist `snapshot` (then restore the state machine from it), `entries` (an entry at an
//!    index the durable log already holds replaces that entry and everything after it) and
//!    `hard_state`, and sync: one sync may cover the Readies of every group on the node;
//! 4. send `messages_after_persist` (votes and acknowledgements that promise durability);
//! 5. apply `committed_entries` in order, then serve each of `read_states` once the applied
//!    index reaches its index;
//! 6. call [`crate::raft::RaftGroup::advance`].

use crate::ids::NodeId;
use crate::raft::entry::{Entry, HardState, Snapshot};
use crate::raft::message::Message;

/// A linearizable read may be served once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: u64,
    pub index: u64,
}

/// The leader needs bytes of its snapshot at `index` to send to `to`, from `offset`, at most
/// `bytes_max` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotChunkRequest {
    pub to: NodeId,
    pub index: u64,
    pub offset: u64,
    pub bytes_max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Who leads, as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleState {
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub snapshot_requests: Vec<SnapshotChunkRequest>,
    /// Set when the role, term or known leader changed since the last Ready.
    pub role_state: Option<RoleState>,
}

impl Ready {
    /// Whether anything must be written before `messages_after_persist` may go.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}
