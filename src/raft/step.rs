//! How a group takes one message: the term rules first (Raft §5.1 with pre-vote and the
//! leader lease), then the handler for the message and the role.
//!
//! Invariants: a message from a newer term moves this node to that term before anything
//! else, except a pre-vote (which changes nobody's term) and a campaign arriving while this
//! node hears from a live leader (ignored: the lease, unless the leader itself asked for it);
//! a message from an older term changes nothing, but a stale leader is told the newer term
//! so it steps down.

use crate::ids::NodeId;
use crate::raft::entry::{Entry, SnapshotMeta};
use crate::raft::group::{RaftGroup, RaftPlantedBug};
use crate::raft::log::Append;
use crate::raft::message::{AppendOutcome, Message, MessageBody};
use crate::raft::progress::ReplicationState;
use crate::raft::ready::Role;

impl RaftGroup {
    /// Takes one message addressed to this node (the caller checks the addressee and the
    /// sender, and the codec the message's form). Returns false when the group refused the
    /// message because it contradicts what the group knows for certain: an append that
    /// would replace a committed entry, or a second leader in this node's own term. Either
    /// means a broken or lying peer; nothing changed.
    pub fn step(&mut self, message: Message) -> bool {
        if message.to != self.state.id {
            return false;
        }
        // Anything but the leader's quiesce notice and the answers to it wakes a quiet group
        // (`Wake` wakes only the leader: see `step_local`).
        if !matches!(
            message.body,
            MessageBody::Heartbeat { quiesce: true, .. }
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::Wake
        ) {
            self.wake(false);
        }
        if message.term == 0 {
            self.step_local(message);
            return true;
        }
        if message.term > self.state.term {
            let is_campaign = matches!(
                message.body,
                MessageBody::PreVote { .. } | MessageBody::Vote { .. }
            );
            if is_campaign {
                let forced = matches!(message.body, MessageBody::Vote { transfer: true, .. });
                let in_lease = self.state.config.check_quorum
                    && self.state.leader.is_some()
                    && self.state.election_elapsed_ticks < self.state.config.election_timeout_ticks;
                if in_lease && !forced {
                    // A live leader is heard: a campaign now would only disrupt it.
                    return true;
                }
            }
            match message.body {
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true }
                    if self.state.role == Role::PreCandidate => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(message.term, Some(message.from));
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.state.term {
            match message.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                    // A leader that was cut off: tell it our term so it steps down.
                    self.send(
                        message.from,
                        MessageBody::HeartbeatResponse { read_round: 0 },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(
                        message.from,
                        MessageBody::PreVoteResponse { granted: false },
                    );
                }
                _ => {}
            }
            return true;
        }
        self.step_current(message)
    }

    /// Proposals and reads: no term attached.
    fn step_local(&mut self, message: Message) {
        match message.body {
            MessageBody::Propose { commands } => {
                if self.state.role == Role::Leader && !self.is_transferring() {
                    self.append_commands(commands);
                }
                // Elsewhere dropped: the proposer retries after its own timeout.
            }
            MessageBody::ReadIndex { context } => {
                if self.state.role == Role::Leader {
                    self.leader_read(message.from, context);
                }
            }
            MessageBody::ReadIndexResponse { context, index } => {
                self.push_read_state(context, index);
            }
            // The leader wakes and heartbeats again, which the asking learner hears. A
            // follower passes it on to its leader rather than waking itself: woken
            // followers of a leader that stays quiet would time out and elect, and a stale
            // learner (one removed without knowing it) would cause that every timeout.
            MessageBody::Wake => match (self.state.role, self.state.leader) {
                // One that is not in the group cannot be heard, and waking for it would
                // only keep the group from going quiet.
                (Role::Leader, _) if self.configuration().is_member(message.from) => {
                    self.wake(false);
                }
                (Role::Leader, _) => {}
                (_, Some(leader))
                    if leader != self.state.id
                        && leader != message.from
                        && self.configuration().is_member(message.from) =>
                {
                    self.send_untermed(leader, MessageBody::Wake);
                }
                _ => {}
            },
            other => {
                tracing::warn!(kind = other.kind(), from = %message.from, "untermed message dropped");
            }
        }
    }

    /// A message of the current term (or a pre-vote for the next one).
    fn step_current(&mut self, message: Message) -> bool {
        let from = message.from;
        match message.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => self.answer_campaign(from, message.term, true, last_log_index, last_log_term),
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => self.answer_campaign(from, message.term, false, last_log_index, last_log_term),
            MessageBody::PreVoteResponse { granted } => {
                if self.state.role == Role::PreCandidate {
                    self.record_vote(from, granted);
                }
            }
            MessageBody::VoteResponse { granted } => {
                if self.state.role == Role::Candidate {
                    self.record_vote(from, granted);
                }
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                if !self.hear_leader(from) {
                    return false;
                }
                return self.handle_append(
                    from,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                );
            }
            MessageBody::Heartbeat {
                leader_commit,
                read_round,
                quiesce,
            } => {
                if !self.hear_leader(from) {
                    return false;
                }
                let commit = leader_commit.min(self.state.log.last_index());
                self.state.log.commit_to(commit);
                // Quiet only when caught up: a lagging follower keeps ticking and asking.
                if quiesce && leader_commit == self.state.log.last_index() {
                    self.go_quiet();
                } else if quiesce {
                    self.wake(false);
                }
                self.send(from, MessageBody::HeartbeatResponse { read_round });
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                if !self.hear_leader(from) {
                    return false;
                }
                return self.handle_snapshot_chunk(from, meta, offset, data, done);
            }
            MessageBody::AppendResponse { outcome } => {
                if self.state.role == Role::Leader {
                    self.handle_append_response(from, outcome);
                }
            }
            MessageBody::HeartbeatResponse { read_round } => {
                if self.state.role == Role::Leader {
                    self.handle_heartbeat_response(from, read_round);
                }
            }
            MessageBody::SnapshotChunkResponse { index, next_offset } => {
                if self.state.role == Role::Leader {
                    self.handle_snapshot_chunk_response(from, index, next_offset);
                }
            }
            MessageBody::TimeoutNow => {
                if self.state.role != Role::Leader && self.configuration().is_voter(self.state.id) {
                    self.start_election(true);
                }
            }
            MessageBody::Propose { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::ReadIndexResponse { .. }
            | MessageBody::Wake => {
                tracing::warn!(from = %from, "local request with a term dropped");
            }
        }
        true
    }

    /// Replication traffic from the leader of this term: follow it. Returns false when this
    /// node leads the same term itself, which election safety rules out (the simulator's
    /// checker reports it; the message is dropped).
    fn hear_leader(&mut self, from: NodeId) -> bool {
        if self.state.role == Role::Leader {
            tracing::error!(node = %self.state.id, other = %from, term = self.state.term, "two leaders in one term");
            return false;
        }
        if self.state.role != Role::Follower {
            self.become_follower(self.state.term, Some(from));
        }
        self.state.leader = Some(from);
        self.state.election_elapsed_ticks = 0;
        true
    }

    fn answer_campaign(
        &mut self,
        from: NodeId,
        campaign_term: u64,
        pre_vote: bool,
        last_log_index: u64,
        last_log_term: u64,
    ) {
        let may_vote = self.state.vote == Some(from)
            || (self.state.vote.is_none() && self.state.leader.is_none())
            || (pre_vote && campaign_term > self.state.term);
        let log_ok = self.planted_bug() == Some(RaftPlantedBug::VoteWithoutLogCheck)
            || self.state.log.is_up_to_date(last_log_index, last_log_term);
        let granted = may_vote && log_ok;
        if pre_vote {
            // A granted pre-vote carries the campaign's term, a refusal ours.
            let term = if granted {
                campaign_term
            } else {
                self.state.term
            };
            self.send_with_term(from, term, MessageBody::PreVoteResponse { granted });
        } else {
            if granted {
                self.state.vote = Some(from);
                self.state.election_elapsed_ticks = 0;
            }
            self.send(from, MessageBody::VoteResponse { granted });
        }
    }

    /// Returns false when the append contradicts a committed entry (refused).
    fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
        leader_commit: u64,
    ) -> bool {
        if prev_log_index < self.state.log.committed() {
            // Everything up to our commit index matches; say so and let the leader go on
            // from there.
            let match_index = self.state.log.committed();
            self.accept(from, match_index);
            return true;
        }
        let old_last_index = self.state.log.last_index();
        match self
            .state
            .log
            .try_append(prev_log_index, prev_log_term, entries)
        {
            Append::ContradictsCommitted { index } => {
                tracing::error!(
                    node = %self.state.id,
                    leader = %from,
                    term = self.state.term,
                    index,
                    committed = self.state.log.committed(),
                    "an append would replace a committed entry; refused"
                );
                return false;
            }
            Append::Appended {
                last_new,
                truncated_from,
            } => {
                if let Some(truncated_from) = truncated_from {
                    self.untrack_configurations_from(truncated_from);
                }
                let first_new = truncated_from.unwrap_or(old_last_index + 1);
                self.track_configurations_from(first_new);
                self.state.log.commit_to(leader_commit.min(last_new));
                self.accept(from, last_new);
            }
            Append::Mismatch => {
                let probe = prev_log_index.min(self.state.log.last_index());
                let (hint_index, hint_term) =
                    self.state.log.find_conflict_by_term(probe, prev_log_term);
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        outcome: AppendOutcome::Rejected {
                            rejected_index: prev_log_index,
                            hint_index,
                            hint_term,
                        },
                    },
                );
            }
        }
        true
    }

    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) -> bool {
        if meta.index <= self.state.log.committed() {
            *self.incoming_snapshot_mut() = None;
            let match_index = self.state.log.committed();
            self.accept(from, match_index);
            return true;
        }
        let incoming = self.incoming_snapshot_mut();
        if offset == 0 {
            *incoming = Some(Box::new((meta.clone(), Vec::new())));
        }
        let held = match incoming.as_deref() {
            Some((held_meta, buffer)) if *held_meta == meta => buffer.len() as u64,
            _ => 0,
        };
        if held != offset {
            // A chunk out of order (a lost or repeated one): say where we are.
            self.send(
                from,
                MessageBody::SnapshotChunkResponse {
                    index: meta.index,
                    next_offset: held,
                },
            );
            return true;
        }
        let (_, buffer) = incoming
            .as_deref_mut()
            .expect("a matching snapshot is being received");
        buffer.extend_from_slice(&data);
        let next_offset = buffer.len() as u64;
        if !done {
            self.send(
                from,
                MessageBody::SnapshotChunkResponse {
                    index: meta.index,
                    next_offset,
                },
            );
            return true;
        }
        let (meta, data) = *incoming
            .take()
            .expect("a matching snapshot is being received");
        if let Some(check) = self.state.config.snapshot_check {
            if let Err(problem) = check(&data) {
                // Not answered: the leader's transfer stays paused until a heartbeat answer
                // resumes it, so a sender whose image is always refused retries at the
                // heartbeat's pace, and logs this each time.
                tracing::error!(node = %self.state.id, leader = %from, index = meta.index, %problem, "a received snapshot is invalid; refused");
                return false;
            }
        }
        let index = meta.index;
        self.install_snapshot(meta, data);
        self.accept(from, index);
        true
    }

    /// Tells the leader this log matches its own up to `match_index` (sent once durable).
    fn accept(&mut self, leader: NodeId, match_index: u64) {
        self.send(
            leader,
            MessageBody::AppendResponse {
                outcome: AppendOutcome::Accepted { match_index },
            },
        );
    }

    fn handle_append_response(&mut self, from: NodeId, outcome: AppendOutcome) {
        let Some(progress) = self.state.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        match outcome {
            AppendOutcome::Accepted { match_index }
                if match_index > self.state.log.last_index() =>
            {
                // A follower holding more than its leader: leader completeness is broken
                // (only a planted bug gets here). Acting on it would loop forever between
                // probes and snapshots; the simulator's checkers report the cause.
                tracing::error!(
                    node = %self.state.id,
                    follower = %from,
                    match_index,
                    last_index = self.state.log.last_index(),
                    "a follower claims entries beyond the leader's log"
                );
            }
            AppendOutcome::Accepted { match_index } => {
                let updated = progress.on_accepted(match_index);
                match progress.state {
                    ReplicationState::Snapshot { index, .. } if match_index >= index => {
                        progress.become_probe();
                    }
                    ReplicationState::Probe => progress.become_replicate(),
                    _ => {}
                }
                if updated {
                    self.maybe_commit();
                }
                // Keep this follower's pipeline full.
                self.mark_append_due(from);
                if self.state.role == Role::Leader && self.transfer_target() == Some(from) {
                    self.maybe_send_timeout_now();
                }
            }
            AppendOutcome::Rejected {
                rejected_index,
                hint_index,
                hint_term,
            } => {
                let (probe_from, _) = self.state.log.find_conflict_by_term(hint_index, hint_term);
                let ignore = self.planted_bug() == Some(RaftPlantedBug::IgnoreAppendRejections);
                let progress = self.state.progress.get_mut(&from).expect("checked above");
                if !ignore && progress.on_rejected(rejected_index, probe_from) {
                    self.send_append(from, true);
                }
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        let last_index = self.state.log.last_index();
        let inflight_max = self.state.config.inflight_max;
        let Some(progress) = self.state.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.free_one_inflight_if_full(inflight_max);
        progress.read_round_acknowledged = progress.read_round_acknowledged.max(read_round);
        // A heartbeat answered means the link works: retry a probe or a snapshot chunk that
        // may have been lost.
        if matches!(
            progress.state,
            ReplicationState::Probe | ReplicationState::Snapshot { .. }
        ) {
            progress.paused = false;
        }
        if progress.match_index < last_index
            || matches!(progress.state, ReplicationState::Snapshot { .. })
        {
            self.send_append(from, true);
        }
        self.release_reads();
    }

    fn handle_snapshot_chunk_response(&mut self, from: NodeId, index: u64, next_offset: u64) {
        let Some(progress) = self.state.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if let ReplicationState::Snapshot { index: sending, .. } = progress.state {
            if sending == index {
                progress.state = ReplicationState::Snapshot {
                    index,
                    offset: next_offset,
                };
                progress.paused = false;
                self.send_append(from, false);
            }
        }
    }
}
