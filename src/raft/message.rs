//! The messages of one Raft group. The node wraps them with the group id and batches them
//! per peer; here they are plain values.
//!
//! `term` is the sender's term, except for the local requests (`Propose`, `ReadIndex` and
//! its answer), which carry term 0 and are not subject to the term rules. A pre-vote is sent
//! with the term the candidate would campaign in, without the candidate moving to it.

use crate::ids::NodeId;
use crate::raft::entry::{Entry, SnapshotMeta};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Would you vote for me in `term` (Raft thesis §9.6)? Changes nobody's term.
    PreVote {
        last_log_index: u64,
        last_log_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    Vote {
        last_log_index: u64,
        last_log_term: u64,
        /// Sent on a leader's `TimeoutNow`: overrides the voters' leader lease.
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    Append {
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
        leader_commit: u64,
    },
    AppendResponse {
        outcome: AppendOutcome,
    },
    Heartbeat {
        /// The leader's commit index, capped at what this follower is known to hold.
        leader_commit: u64,
        /// Acknowledging it confirms the leadership for the ReadIndex reads of this round.
        read_round: u64,
        /// The group is idle and everyone is caught up: stop ticking until woken (by any
        /// other message, or by the host when the leader's node goes silent).
        quiesce: bool,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// One chunk of the snapshot at `meta.index`, from byte `offset`.
    InstallSnapshot {
        meta: SnapshotMeta,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        done: bool,
    },
    /// The follower holds the snapshot at `index` up to `next_offset` bytes (the next chunk it
    /// wants). The end of an install is answered by an `AppendResponse` instead.
    SnapshotChunkResponse {
        index: u64,
        next_offset: u64,
    },
    /// Campaign now, without waiting or pre-voting: the leader is handing over to you.
    TimeoutNow,
    /// Commands a follower forwards to the leader.
    Propose {
        commands: Vec<Vec<u8>>,
    },
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex {
        context: u64,
    },
    ReadIndexResponse {
        context: u64,
        index: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to `match_index`, durably.
    Accepted { match_index: u64 },
    /// The follower does not hold the entry at `rejected_index` with the leader's term there;
    /// its log has `hint_term` at `hint_index`, the largest index not above the probe whose
    /// term is not above the leader's term there (fast back-off).
    Rejected {
        rejected_index: u64,
        hint_index: u64,
        hint_term: u64,
    },
}

impl MessageBody {
    /// A short name for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResponse { .. } => "pre_vote_response",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResponse { .. } => "vote_response",
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::InstallSnapshot { .. } => "install_snapshot",
            MessageBody::SnapshotChunkResponse { .. } => "snapshot_chunk_response",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::Propose { .. } => "propose",
            MessageBody::ReadIndex { .. } => "read_index",
            MessageBody::ReadIndexResponse { .. } => "read_index_response",
        }
    }

    /// Whether this message only says what the leader already holds durably or not at all
    /// (its replication traffic), so it may leave before the sender's current writes are
    /// durable. Everything else, votes and acknowledgements above all, waits for them.
    pub fn is_leader_replication(&self) -> bool {
        matches!(
            self,
            MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
        )
    }
}
