//! The messages of one Raft group. The node wraps them with the group id and batches them
//! per peer; here they are plain values.
//!
//! `term` is the sender's term, except for the local requests (`Propose`, `ReadIndex` and
//! its answer), which carry term 0 and are not subject to the term rules. A pre-vote is sent
//! with the term the candidate would campaign in, without the candidate moving to it.
//!
//! A message from another node is hostile until [`Message::check`] passed: the wire codec
//! runs it on every decoded message, so a group only ever steps messages whose terms and
//! indexes leave room to count up ([`TERM_MAX`], [`INDEX_MAX`]), whose entries follow one
//! another, whose sizes and counts are bounded, and whose configurations keep their
//! invariants. The check cannot tell a lie from the truth; Raft trusts its members.

use crate::ids::NodeId;
use crate::raft::entry::{Entry, EntryKind, SnapshotMeta};
use serde::{Deserialize, Serialize};

/// The highest term a message may carry: far beyond any real cluster's (one election per
/// nanosecond would take 146 years), and with room to add one without overflow.
pub const TERM_MAX: u64 = 1 << 62;
/// The highest log index or byte offset a message may carry.
pub const INDEX_MAX: u64 = 1 << 62;
/// Entries one append may carry, and commands one forwarded proposal.
pub const ENTRIES_PER_MESSAGE_MAX: usize = 8192;
/// The largest command an entry may carry: a partition command's own limits keep real ones
/// far below it.
pub const COMMAND_BYTES_MAX: usize = 2 * 1024 * 1024;
/// The largest snapshot chunk a message may carry.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Why a decoded message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid Raft message from {from} ({kind}): {reason}")]
pub struct InvalidMessage {
    pub from: NodeId,
    pub kind: &'static str,
    pub reason: String,
}

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
    /// A member that cannot campaign (a learner) heard no leader for an election timeout:
    /// it asks the voters to wake. A quiet group's leader sends nothing until woken, and a
    /// learner that missed the heartbeats of its term would otherwise never learn of it.
    /// Untermed: it changes no term and disrupts no leader.
    Wake,
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

impl Message {
    /// Checks what a well-formed message from another node looks like (see the module doc).
    pub fn check(&self) -> Result<(), InvalidMessage> {
        let refuse = |reason: String| InvalidMessage {
            from: self.from,
            kind: self.body.kind(),
            reason,
        };
        if self.from == self.to {
            return Err(refuse(format!("sent by {} to itself", self.from)));
        }
        let local = matches!(
            self.body,
            MessageBody::Propose { .. }
                | MessageBody::ReadIndex { .. }
                | MessageBody::ReadIndexResponse { .. }
                | MessageBody::Wake
        );
        if local && self.term != 0 {
            return Err(refuse(format!(
                "term {} on a proposal or read, which carry term 0",
                self.term
            )));
        }
        if self.term > TERM_MAX {
            return Err(refuse(format!("term {} is above {TERM_MAX}", self.term)));
        }
        let index = |name: &str, value: u64| {
            if value > INDEX_MAX {
                Err(refuse(format!("{name} {value} is above {INDEX_MAX}")))
            } else {
                Ok(())
            }
        };
        let past_term = |name: &str, value: u64| {
            if value > self.term {
                Err(refuse(format!(
                    "{name} {value} is above the message's term {}",
                    self.term
                )))
            } else {
                Ok(())
            }
        };
        match &self.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            }
            | MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => {
                index("last_log_index", *last_log_index)?;
                past_term("last_log_term", *last_log_term)?;
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                index("prev_log_index", *prev_log_index)?;
                index("leader_commit", *leader_commit)?;
                past_term("prev_log_term", *prev_log_term)?;
                check_entries(self.term, *prev_log_index, *prev_log_term, entries)
                    .map_err(refuse)?;
            }
            MessageBody::AppendResponse { outcome } => match *outcome {
                AppendOutcome::Accepted { match_index } => index("match_index", match_index)?,
                AppendOutcome::Rejected {
                    rejected_index,
                    hint_index,
                    hint_term,
                } => {
                    index("rejected_index", rejected_index)?;
                    index("hint_index", hint_index)?;
                    past_term("hint_term", hint_term)?;
                }
            },
            MessageBody::Heartbeat { leader_commit, .. } => {
                index("leader_commit", *leader_commit)?;
            }
            MessageBody::InstallSnapshot {
                meta, offset, data, ..
            } => {
                index("snapshot index", meta.index)?;
                index("offset", *offset)?;
                past_term("snapshot term", meta.term)?;
                if data.len() > SNAPSHOT_CHUNK_BYTES_MAX {
                    return Err(refuse(format!(
                        "a snapshot chunk of {} bytes, more than {SNAPSHOT_CHUNK_BYTES_MAX}",
                        data.len()
                    )));
                }
                meta.configuration.check().map_err(refuse)?;
            }
            MessageBody::SnapshotChunkResponse {
                index: at,
                next_offset,
            } => {
                index("snapshot index", *at)?;
                index("next_offset", *next_offset)?;
            }
            MessageBody::Propose { commands } => {
                if commands.len() > ENTRIES_PER_MESSAGE_MAX {
                    return Err(refuse(format!(
                        "{} commands, more than {ENTRIES_PER_MESSAGE_MAX}",
                        commands.len()
                    )));
                }
                if let Some(command) = commands.iter().find(|c| c.len() > COMMAND_BYTES_MAX) {
                    return Err(refuse(format!(
                        "a command of {} bytes, more than {COMMAND_BYTES_MAX}",
                        command.len()
                    )));
                }
            }
            MessageBody::ReadIndexResponse { index: at, .. } => index("read index", *at)?,
            MessageBody::PreVoteResponse { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::TimeoutNow
            | MessageBody::ReadIndex { .. }
            | MessageBody::Wake => {}
        }
        Ok(())
    }
}

/// An append's entries: a bounded count, in sequence after `prev_log_index`, indexes within
/// the limit, terms never going back and never above the message's `term`, each kind valid.
fn check_entries(
    term: u64,
    prev_log_index: u64,
    prev_log_term: u64,
    entries: &[Entry],
) -> Result<(), String> {
    if entries.len() > ENTRIES_PER_MESSAGE_MAX {
        return Err(format!(
            "{} entries, more than {ENTRIES_PER_MESSAGE_MAX}",
            entries.len()
        ));
    }
    let mut previous_term = prev_log_term;
    for (offset, entry) in entries.iter().enumerate() {
        let expected = prev_log_index + 1 + offset as u64;
        if entry.index != expected {
            return Err(format!(
                "entry index {} where {expected} follows",
                entry.index
            ));
        }
        if entry.index > INDEX_MAX {
            return Err(format!("entry index {} is above {INDEX_MAX}", entry.index));
        }
        if entry.term > term {
            return Err(format!(
                "entry term {} is above the message's term {term}",
                entry.term
            ));
        }
        if entry.term < previous_term {
            return Err(format!(
                "entry {} has term {} after term {previous_term}",
                entry.index, entry.term
            ));
        }
        previous_term = entry.term;
        check_entry_kind(entry)?;
    }
    Ok(())
}

fn check_entry_kind(entry: &Entry) -> Result<(), String> {
    match &entry.kind {
        EntryKind::Command(bytes) if bytes.len() > COMMAND_BYTES_MAX => Err(format!(
            "entry {} carries a command of {} bytes, more than {COMMAND_BYTES_MAX}",
            entry.index,
            bytes.len()
        )),
        _ => Ok(()),
    }
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
            MessageBody::Wake => "wake",
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
