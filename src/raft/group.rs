//! One Raft group as a deterministic state machine: it is fed ticks, messages and requests,
//! and hands back a [`Ready`] of what to persist, send and apply. It never touches the OS;
//! its only randomness (election timeouts) comes from the seeded stream it is given.
//!
//! Invariants kept here (the simulator's checkers verify them from outside):
//! - at most one vote per term, and the term and vote are durable before the vote is sent;
//! - a vote or pre-vote is granted only to a log at least as up to date (§5.4.1);
//! - a leader commits by counting only entries of its own term (§5.4.2); its own log counts
//!   towards a quorum only once durable;
//! - a configuration takes effect when its entry is appended (the latest one in the log, §6),
//!   and a leader proposes no change while its last one is uncommitted;
//! - nothing is applied before it is committed and durable locally.

use crate::ids::NodeId;
use crate::raft::configuration::{ConfigChange, ConfigChangeError, Configuration, VoteResult};
use crate::raft::entry::{Entry, EntryKind, HardState, Snapshot, SnapshotMeta};
use crate::raft::log::RaftLog;
use crate::raft::message::{Message, MessageBody};
use crate::raft::progress::{Progress, ProgressMap, ReplicationState};
use crate::raft::ready::{ReadState, Ready, Role, RoleState, SnapshotChunkRequest};
use crate::random::{Rng, SeededRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The index of the snapshot every founding member starts from: the empty state machine and
/// the founding configuration. A node that joins later starts below it, so it can only
/// catch up from a snapshot, which carries the configuration.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// Bugs the simulator's canaries plant to prove the checkers catch them. Never set outside a
/// canary scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftPlantedBug {
    /// Grant votes without checking that the candidate's log is up to date.
    VoteWithoutLogCheck,
    /// Commit an entry of an earlier term by counting its replicas (Raft Figure 8), and
    /// start a term without the empty entry that would otherwise mask it.
    CommitPreviousTermByCounting,
    /// Rebuild a group from its recovered hard state without its vote: a restarted node may
    /// vote twice in one term.
    ForgetVoteOnRestart,
    /// Answer a read at the leader's commit index at once, without the round that confirms
    /// a quorum still follows it: a deposed leader serves stale reads.
    ReadWithoutQuorumRound,
    /// A candidate (and a pre-candidate) wins with half of the voters' votes instead of a
    /// majority: two halves elect two leaders in one term.
    ElectWithHalfTheVotes,
    /// A leader takes a follower's refusal of an append as stale and never probes back: a
    /// follower that fell behind (or diverged) stays behind for good.
    IgnoreAppendRejections,
    /// A forwarded proposal or read carries the sender's term like every other message, where
    /// the protocol says term 0: every receiver's checks refuse it, so a follower's clients
    /// are never served.
    StampLocalRequestsWithTerm,
    /// A leader leaves a joint configuration as soon as it appended it, without waiting for
    /// it to commit: a voter is removed (or added) on the word of the new half alone.
    LeaveJointBeforeCommit,
}

/// Checks a snapshot image against the state machine's format (see `RaftConfig`).
pub type SnapshotCheck = fn(&[u8]) -> Result<(), String>;

/// A group's knobs. Time is counted in ticks of the driver's choosing.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` campaigns.
    pub election_timeout_ticks: u32,
    pub heartbeat_interval_ticks: u32,
    /// Ask for votes without raising terms first, so a node that was cut off cannot depose a
    /// healthy leader when it returns (thesis §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout steps down, and
    /// voters ignore campaigns while they hear from a leader (the leader lease).
    pub check_quorum: bool,
    /// Appends in flight to one follower in the pipelined state.
    pub inflight_max: usize,
    /// Entries and entry bytes per append message (at least one entry is always sent).
    pub append_entries_max: usize,
    pub append_bytes_max: usize,
    /// Entry bytes per Ready's committed entries (at least one).
    pub apply_bytes_max: usize,
    pub snapshot_chunk_bytes: usize,
    /// A leader whose group has been idle (everything committed, applied and on every
    /// follower) this long goes quiet with its followers: no ticks, no heartbeats. 0 never.
    /// Only safe with a driver that wakes quiet followers when the leader's node goes silent
    /// (the partition host does).
    pub quiesce_after_ticks: u32,
    /// Checks a received snapshot's image before it replaces the state machine: one that
    /// fails (corrupted in flight, or from a broken sender) is refused and asked for again,
    /// instead of failing the install.
    pub snapshot_check: Option<SnapshotCheck>,
    pub planted_bug: Option<RaftPlantedBug>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            inflight_max: 64,
            append_entries_max: 512,
            append_bytes_max: 1 << 20,
            apply_bytes_max: 4 << 20,
            snapshot_chunk_bytes: 1 << 20,
            quiesce_after_ticks: 0,
            snapshot_check: None,
            planted_bug: None,
        }
    }
}

/// What a group recovers from durable storage.
#[derive(Clone, Debug, Default)]
pub struct RecoveredState {
    pub hard_state: HardState,
    /// The snapshot the log starts after.
    pub snapshot: SnapshotMeta,
    /// The durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The index the state machine has durably applied.
    pub applied: u64,
}

/// Where a proposal went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposal {
    /// Appended to this leader's log at `index` in `term`; it is committed if and when an
    /// entry with that index and term is applied.
    Appended { index: u64, term: u64 },
    /// Sent to the leader, who will append it if it still leads.
    Forwarded { leader: NodeId },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader is known; retry after an election")]
    NoLeader,
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("a configuration change is still uncommitted")]
    ConfigChangePending,
    #[error("invalid configuration change: {0}")]
    InvalidConfigChange(#[from] ConfigChangeError),
}

/// A summary for routing and for `info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub committed: u64,
    pub applied: u64,
    pub last_index: u64,
    pub configuration: Configuration,
}

#[derive(Clone, Debug)]
struct PendingRead {
    requester: NodeId,
    context: u64,
    index: u64,
    round: u64,
}

#[derive(Clone, Debug)]
struct Transfer {
    target: NodeId,
    elapsed_ticks: u32,
    /// `TimeoutNow` went out; it is sent once, and the transfer times out if it is lost.
    timeout_now_sent: bool,
}

/// What the last Ready asked the driver to make durable.
#[derive(Clone, Debug)]
struct Handed {
    last_entry: Option<(u64, u64)>,
}

/// One Raft group replica. A host keeps thousands in one ordered map, so the state sits
/// behind a single pointer: map nodes filled in key order end about half empty, and a group
/// held inline there cost nearly twice its size.
#[derive(Debug)]
pub struct RaftGroup {
    pub(super) state: Box<GroupState>,
}

#[derive(Debug)]
pub(super) struct GroupState {
    pub(super) id: NodeId,
    pub(super) config: RaftConfig,
    rng: SeededRng,
    pub(super) term: u64,
    pub(super) vote: Option<NodeId>,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    pub(super) log: RaftLog,
    /// Configurations by the index they took effect at, oldest first; the first is the
    /// snapshot's, the last is in force.
    configurations: Vec<(u64, Configuration)>,
    pub(super) progress: ProgressMap,
    votes: BTreeMap<NodeId, bool>,
    pub(super) election_elapsed_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    randomized_election_timeout_ticks: u32,
    transfer: Option<Transfer>,
    read_round: u64,
    read_broadcast_due: bool,
    /// Quiet: the group does not tick until something wakes it.
    quiet: bool,
    idle_ticks: u32,
    pending_reads: VecDeque<PendingRead>,
    reads_waiting_for_term_commit: Vec<(NodeId, u64)>,
    read_states: Vec<ReadState>,
    /// Boxed: snapshots are rare, and every group would otherwise carry room for two.
    incoming_snapshot: Option<Box<(SnapshotMeta, Vec<u8>)>>,
    installed_snapshot: Option<Box<Snapshot>>,
    snapshot_requests: Vec<SnapshotChunkRequest>,
    outbox: Vec<Message>,
    append_due: BTreeSet<NodeId>,
    commit_broadcast_due: bool,
    last_hard_state: HardState,
    last_role_state: RoleState,
    handed: Option<Handed>,
}

impl RaftGroup {
    /// A founding member of a group whose first voters are `voters`.
    pub fn bootstrap(
        id: NodeId,
        voters: impl IntoIterator<Item = NodeId>,
        config: RaftConfig,
        rng: SeededRng,
    ) -> Self {
        let state = RecoveredState {
            snapshot: SnapshotMeta {
                index: BOOTSTRAP_INDEX,
                term: 0,
                configuration: Configuration::with_voters(voters),
            },
            applied: BOOTSTRAP_INDEX,
            ..RecoveredState::default()
        };
        Self::recover(id, config, state, rng)
    }

    /// A node that will join an existing group (as a learner first): it knows nothing until
    /// the leader sends it a snapshot.
    pub fn joining(id: NodeId, config: RaftConfig, rng: SeededRng) -> Self {
        Self::recover(id, config, RecoveredState::default(), rng)
    }

    pub fn recover(id: NodeId, config: RaftConfig, state: RecoveredState, rng: SeededRng) -> Self {
        let forget_vote = config.planted_bug == Some(RaftPlantedBug::ForgetVoteOnRestart);
        assert!(config.election_timeout_ticks > config.heartbeat_interval_ticks);
        assert!(config.heartbeat_interval_ticks > 0 && config.inflight_max > 0);
        // Every message this group sends must pass a receiver's checks and fit a frame.
        assert!(
            config.snapshot_chunk_bytes > 0
                && config.snapshot_chunk_bytes <= crate::raft::message::SNAPSHOT_CHUNK_BYTES_MAX
                && config.append_bytes_max <= crate::raft::message::COMMAND_BYTES_MAX
                && config.append_entries_max <= crate::raft::message::ENTRIES_PER_MESSAGE_MAX,
            "Raft message sizes beyond what a receiver takes"
        );
        let log = RaftLog::recovered(
            state.snapshot.index,
            state.snapshot.term,
            state.entries,
            state.hard_state.commit,
            state.applied,
        );
        let mut group = Self {
            state: Box::new(GroupState {
                id,
                config,
                rng,
                term: state.hard_state.term,
                vote: if forget_vote {
                    None
                } else {
                    state.hard_state.vote
                },
                role: Role::Follower,
                leader: None,
                configurations: vec![(state.snapshot.index, state.snapshot.configuration)],
                progress: ProgressMap::default(),
                votes: BTreeMap::new(),
                election_elapsed_ticks: 0,
                heartbeat_elapsed_ticks: 0,
                randomized_election_timeout_ticks: 0,
                transfer: None,
                read_round: 0,
                read_broadcast_due: false,
                quiet: false,
                idle_ticks: 0,
                pending_reads: VecDeque::new(),
                reads_waiting_for_term_commit: Vec::new(),
                read_states: Vec::new(),
                incoming_snapshot: None,
                installed_snapshot: None,
                snapshot_requests: Vec::new(),
                outbox: Vec::new(),
                append_due: BTreeSet::new(),
                commit_broadcast_due: false,
                last_hard_state: HardState {
                    term: state.hard_state.term,
                    vote: state.hard_state.vote,
                    commit: log.committed(),
                },
                last_role_state: RoleState {
                    role: Role::Follower,
                    term: state.hard_state.term,
                    leader: None,
                },
                handed: None,
                log,
            }),
        };
        let recovered_from = group.state.log.first_index();
        group.track_configurations_from(recovered_from);
        group.reset_election_timeout();
        group
    }

    // ---- accessors ----

    pub fn id(&self) -> NodeId {
        self.state.id
    }

    pub fn role(&self) -> Role {
        self.state.role
    }

    pub fn term(&self) -> u64 {
        self.state.term
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.state.leader
    }

    /// The vote this node cast in its current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.state.vote
    }

    pub fn configuration(&self) -> &Configuration {
        &self
            .state
            .configurations
            .last()
            .expect("a base configuration")
            .1
    }

    pub fn log(&self) -> &RaftLog {
        &self.state.log
    }

    pub fn status(&self) -> GroupStatus {
        GroupStatus {
            id: self.state.id,
            role: self.state.role,
            term: self.state.term,
            leader: self.state.leader,
            committed: self.state.log.committed(),
            applied: self.state.log.applied(),
            last_index: self.state.log.last_index(),
            configuration: self.configuration().clone(),
        }
    }

    /// On the leader, the highest index `peer` is known to hold (what deciding whether a
    /// learner has caught up needs); `None` elsewhere or for a node not in the group.
    pub fn matched_index(&self, peer: NodeId) -> Option<u64> {
        if self.state.role != Role::Leader {
            return None;
        }
        if peer == self.state.id {
            return Some(self.state.log.last_index());
        }
        self.state
            .progress
            .get(&peer)
            .map(|progress| progress.match_index)
    }

    /// Whether the latest configuration change is committed (then, on a leader, the next
    /// one may be proposed once an entry of its term is committed too).
    pub fn configuration_committed(&self) -> bool {
        self.last_configuration_index() <= self.state.log.committed()
    }

    /// The hard state the driver was last asked to persist (durable once that Ready is
    /// advanced).
    pub fn durable_hard_state(&self) -> HardState {
        self.state.last_hard_state
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.state.term,
            vote: self.state.vote,
            commit: self.state.log.committed(),
        }
    }

    fn role_state(&self) -> RoleState {
        RoleState {
            role: self.state.role,
            term: self.state.term,
            leader: self.state.leader,
        }
    }

    /// The configuration in force at `index` (for a snapshot taken there).
    pub fn configuration_at(&self, index: u64) -> Configuration {
        self.state
            .configurations
            .iter()
            .rev()
            .find(|(from, _)| *from <= index)
            .map(|(_, configuration)| configuration.clone())
            .unwrap_or_else(|| self.state.configurations[0].1.clone())
    }

    fn last_configuration_index(&self) -> u64 {
        self.state
            .configurations
            .last()
            .expect("a base configuration")
            .0
    }

    // ---- requests from the application ----

    /// Proposes a command. On a follower it is forwarded to the leader.
    pub fn propose(&mut self, command: Vec<u8>) -> Result<Proposal, ProposeError> {
        self.wake(false);
        match self.state.role {
            Role::Leader => {
                if self.state.transfer.is_some() {
                    return Err(ProposeError::TransferInProgress);
                }
                let index = self.append_as_leader(EntryKind::Command(command));
                Ok(Proposal::Appended {
                    index,
                    term: self.state.term,
                })
            }
            _ => match self.state.leader {
                Some(leader) => {
                    self.send_untermed(
                        leader,
                        MessageBody::Propose {
                            commands: vec![command],
                        },
                    );
                    Ok(Proposal::Forwarded { leader })
                }
                None => Err(ProposeError::NoLeader),
            },
        }
    }

    /// Proposes a membership change (on the leader only; one at a time).
    pub fn propose_config_change(
        &mut self,
        change: ConfigChange,
    ) -> Result<Proposal, ProposeError> {
        if self.state.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.state.leader,
            });
        }
        if self.state.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        // The last change must be committed, and so must an entry of this term, so the
        // configuration this leader reasons from is the committed one (thesis §4.1).
        if self.last_configuration_index() > self.state.log.committed()
            || self.state.log.term(self.state.log.committed()) != Some(self.state.term)
        {
            return Err(ProposeError::ConfigChangePending);
        }
        self.configuration().apply(change)?;
        let index = self.append_as_leader(EntryKind::ConfigChange(change));
        if self.planted_bug() == Some(RaftPlantedBug::LeaveJointBeforeCommit)
            && self.configuration().is_joint()
        {
            self.append_as_leader(EntryKind::ConfigChange(ConfigChange::LeaveJoint));
        }
        Ok(Proposal::Appended {
            index,
            term: self.state.term,
        })
    }

    /// Asks for a linearizable read. Once the group has confirmed it still leads, a
    /// [`ReadState`] with `context` comes out of a Ready: serve the read when applied reaches
    /// its index. On a follower the request goes to the leader.
    pub fn read_index(&mut self, context: u64) -> Result<(), ProposeError> {
        self.wake(false);
        match self.state.role {
            Role::Leader => {
                self.leader_read(self.state.id, context);
                Ok(())
            }
            _ => match self.state.leader {
                Some(leader) => {
                    self.send_untermed(leader, MessageBody::ReadIndex { context });
                    Ok(())
                }
                None => Err(ProposeError::NoLeader),
            },
        }
    }

    /// Hands leadership to `target` once its log is caught up. Proposals are refused until
    /// it takes over or an election timeout passes.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.wake(false);
        if self.state.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.state.leader,
            });
        }
        if target == self.state.id {
            return Ok(());
        }
        if !self.configuration().is_voter(target) {
            return Err(ProposeError::InvalidConfigChange(
                ConfigChangeError::NotAVoter(target),
            ));
        }
        self.state.transfer = Some(Transfer {
            target,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        });
        self.state.append_due.insert(target);
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// The application has captured its state machine up to `index` (at most the applied
    /// index) in a durable snapshot: drop the log below it. The leader sends this snapshot to
    /// followers that need entries below it.
    pub fn compact(&mut self, index: u64) {
        let index = index.min(self.state.log.applied());
        if index <= self.state.log.snapshot_index() {
            return;
        }
        let configuration = self.configuration_at(index);
        self.state.log.compact(index);
        // Keep one configuration at or below the new snapshot: the base.
        self.state.configurations.retain(|(from, _)| *from > index);
        self.state.configurations.insert(0, (index, configuration));
        // Transfers of an older snapshot restart with this one.
        for (peer, progress) in self.state.progress.iter_mut() {
            if matches!(progress.state, ReplicationState::Snapshot { index: old, .. } if old < index)
            {
                progress.become_snapshot(index);
                self.state.append_due.insert(*peer);
            }
        }
    }

    /// Bytes of a snapshot for `to`, from `offset` (answering a [`SnapshotChunkRequest`]);
    /// `done` when they reach its end. The first chunk (offset 0) may come from any snapshot
    /// the application holds at an index from the request's up to the applied index (it
    /// snapshots its state as it is); later chunks must come from that same snapshot.
    /// Ignored when the request is no longer current (a heartbeat will ask again).
    pub fn on_snapshot_chunk(
        &mut self,
        to: NodeId,
        index: u64,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) {
        if self.state.role != Role::Leader {
            return;
        }
        let snapshot_index = self.state.log.snapshot_index();
        let applied = self.state.log.applied();
        let Some(progress) = self.state.progress.get_mut(&to) else {
            return;
        };
        let ReplicationState::Snapshot {
            index: sending,
            offset: expected,
        } = progress.state
        else {
            return;
        };
        let acceptable = if offset == 0 {
            (snapshot_index.max(sending)..=applied.max(sending)).contains(&index)
        } else {
            index == sending
        };
        if offset != expected || !acceptable {
            return;
        }
        let Some(term) = self.state.log.term(index) else {
            return;
        };
        progress.state = ReplicationState::Snapshot { index, offset };
        let meta = SnapshotMeta {
            index,
            term,
            configuration: self.configuration_at(index),
        };
        self.send(
            to,
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            },
        );
    }

    // ---- time ----

    /// Whether the group is quiet (idle, not ticking).
    pub fn is_quiet(&self) -> bool {
        self.state.quiet
    }

    /// Leaves the quiet state: the group ticks again. `leader_lost` forgets the leader (the
    /// host saw its node go silent), so this node may vote and campaign at once.
    pub fn wake(&mut self, leader_lost: bool) {
        if leader_lost && self.state.role != Role::Leader {
            self.state.leader = None;
        }
        if self.state.quiet {
            self.state.quiet = false;
            self.state.idle_ticks = 0;
            self.state.election_elapsed_ticks = 0;
            self.state.heartbeat_elapsed_ticks = 0;
        }
    }

    /// Whether a leader has nothing left to do: the condition for going quiet.
    fn is_idle_leader(&self) -> bool {
        let last_index = self.state.log.last_index();
        self.state.role == Role::Leader
            && self.state.transfer.is_none()
            && self.state.pending_reads.is_empty()
            && self.state.reads_waiting_for_term_commit.is_empty()
            && self.state.append_due.is_empty()
            && !self.configuration().is_joint()
            && self.state.log.committed() == last_index
            && self.state.log.applied() == last_index
            && self.state.log.persisted() == last_index
            && self
                .state
                .progress
                .values()
                .all(|progress| progress.match_index == last_index)
    }

    /// One tick of the driver's clock.
    pub fn tick(&mut self) {
        if self.state.quiet {
            return;
        }
        if self.state.role == Role::Leader {
            self.tick_leader();
        } else {
            self.state.election_elapsed_ticks = self.state.election_elapsed_ticks.saturating_add(1);
            let timeout = self.state.randomized_election_timeout_ticks.max(1);
            let elapsed = self.state.election_elapsed_ticks;
            if elapsed >= timeout {
                if self.can_campaign() {
                    self.state.election_elapsed_ticks = 0;
                    self.start_election(false);
                } else if (elapsed - timeout).is_multiple_of(timeout) {
                    // Its clock keeps running: a learner that a joint configuration counts
                    // as a voter must see the old leader's lease run out, or it would never
                    // answer the candidates that need its vote (membership-nemesis seed 159).
                    self.wake_voters();
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        self.state.heartbeat_elapsed_ticks += 1;
        self.state.election_elapsed_ticks += 1;
        if self.state.election_elapsed_ticks >= self.state.config.election_timeout_ticks {
            self.state.election_elapsed_ticks = 0;
            if self.state.config.check_quorum {
                let mut active: BTreeSet<NodeId> = self
                    .state
                    .progress
                    .iter()
                    .filter(|(_, progress)| progress.recent_active)
                    .map(|(peer, _)| *peer)
                    .collect();
                active.insert(self.state.id);
                if !self.configuration().is_quorum(&active) {
                    tracing::debug!(
                        term = self.state.term,
                        "leader lost its quorum; stepping down"
                    );
                    self.become_follower(self.state.term, None);
                    return;
                }
                for progress in self.state.progress.values_mut() {
                    progress.recent_active = false;
                }
            }
        }
        if let Some(transfer) = &mut self.state.transfer {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= self.state.config.election_timeout_ticks {
                self.state.transfer = None;
            }
        }
        if self.state.config.quiesce_after_ticks > 0 && self.is_idle_leader() {
            self.state.idle_ticks += 1;
            if self.state.idle_ticks >= self.state.config.quiesce_after_ticks {
                self.broadcast_heartbeat_with(true);
                self.state.quiet = true;
                self.release_idle_buffers();
                return;
            }
        } else {
            self.state.idle_ticks = 0;
        }
        if self.state.heartbeat_elapsed_ticks >= self.state.config.heartbeat_interval_ticks {
            self.state.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
    }

    /// A learner that heard no leader for an election timeout asks every voter to wake: a
    /// quiet leader sends nothing, and a voter that went quiet does not campaign.
    fn wake_voters(&mut self) {
        let voters: Vec<NodeId> = self
            .configuration()
            .voters
            .iter()
            .chain(&self.configuration().voters_outgoing)
            .copied()
            .filter(|voter| *voter != self.state.id)
            .collect::<BTreeSet<NodeId>>()
            .into_iter()
            .collect();
        for voter in voters {
            self.send_untermed(voter, MessageBody::Wake);
        }
    }

    fn can_campaign(&self) -> bool {
        self.configuration().is_voter(self.state.id)
    }

    fn reset_election_timeout(&mut self) {
        let base = self.state.config.election_timeout_ticks;
        self.state.randomized_election_timeout_ticks =
            base + self.state.rng.below(u64::from(base)) as u32;
    }

    // ---- roles ----

    pub(super) fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.state.quiet = false;
        self.state.idle_ticks = 0;
        if term > self.state.term {
            self.state.term = term;
            self.state.vote = None;
        }
        self.state.role = Role::Follower;
        self.state.leader = leader;
        self.state.election_elapsed_ticks = 0;
        self.reset_election_timeout();
        self.state.progress.clear();
        self.state.votes.clear();
        self.state.transfer = None;
        self.state.pending_reads.clear();
        self.state.reads_waiting_for_term_commit.clear();
        self.state.append_due.clear();
        self.state.commit_broadcast_due = false;
        self.state.read_broadcast_due = false;
    }

    /// Starts a pre-vote, or (on a transfer, or without pre-vote) a real election.
    pub(super) fn start_election(&mut self, transfer: bool) {
        if self.state.config.pre_vote && !transfer {
            self.state.role = Role::PreCandidate;
            self.state.leader = None;
            self.state.votes.clear();
            self.state.votes.insert(self.state.id, true);
            self.reset_election_timeout();
            let body = MessageBody::PreVote {
                last_log_index: self.state.log.last_index(),
                last_log_term: self.state.log.last_term(),
            };
            for voter in self.other_voters() {
                self.state.outbox.push(Message {
                    from: self.state.id,
                    to: voter,
                    term: self.state.term + 1,
                    body: body.clone(),
                });
            }
            self.poll_election();
        } else {
            self.campaign(transfer);
        }
    }

    fn campaign(&mut self, transfer: bool) {
        self.state.term += 1;
        self.state.vote = Some(self.state.id);
        self.state.role = Role::Candidate;
        self.state.leader = None;
        self.state.votes.clear();
        self.state.votes.insert(self.state.id, true);
        self.state.election_elapsed_ticks = 0;
        self.reset_election_timeout();
        let body = MessageBody::Vote {
            last_log_index: self.state.log.last_index(),
            last_log_term: self.state.log.last_term(),
            transfer,
        };
        for voter in self.other_voters() {
            self.send(voter, body.clone());
        }
        self.poll_election();
    }

    fn other_voters(&self) -> Vec<NodeId> {
        let configuration = self.configuration();
        configuration
            .voters
            .union(&configuration.voters_outgoing)
            .copied()
            .filter(|voter| *voter != self.state.id)
            .collect()
    }

    pub(super) fn record_vote(&mut self, from: NodeId, granted: bool) {
        self.state.votes.entry(from).or_insert(granted);
        self.poll_election();
    }

    fn poll_election(&mut self) {
        let mut result = self.configuration().vote_result(&self.state.votes);
        if self.state.config.planted_bug == Some(RaftPlantedBug::ElectWithHalfTheVotes)
            && matches!(self.state.role, Role::Candidate | Role::PreCandidate)
        {
            let granted = self
                .state
                .votes
                .values()
                .filter(|granted| **granted)
                .count();
            if granted >= self.configuration().voters.len() / 2 {
                result = VoteResult::Won;
            }
        }
        match result {
            VoteResult::Pending => {}
            VoteResult::Lost => self.become_follower(self.state.term, None),
            VoteResult::Won => match self.state.role {
                Role::PreCandidate => self.campaign(false),
                Role::Candidate => self.become_leader(),
                Role::Follower | Role::Leader => {}
            },
        }
    }

    fn become_leader(&mut self) {
        self.state.role = Role::Leader;
        self.state.leader = Some(self.state.id);
        self.state.transfer = None;
        self.state.votes.clear();
        self.state.election_elapsed_ticks = 0;
        self.state.heartbeat_elapsed_ticks = 0;
        self.state.progress.clear();
        self.reconcile_progress();
        // Committing an entry of its own term commits everything before it (§5.4.2) and
        // lets the leader serve reads. The Figure 8 canary leaves it out: with it, the old
        // entries always reach a quorum together with it, which hides the planted bug.
        if self.state.config.planted_bug != Some(RaftPlantedBug::CommitPreviousTermByCounting) {
            self.append_as_leader(EntryKind::Empty);
        } else {
            let peers: Vec<NodeId> = self.state.progress.keys().copied().collect();
            self.state.append_due.extend(peers);
        }
        tracing::debug!(node = %self.state.id, term = self.state.term, "became leader");
    }

    /// Gives every member but this node a progress entry, and drops those of non-members.
    fn reconcile_progress(&mut self) {
        if self.state.role != Role::Leader {
            return;
        }
        let members = self.configuration().members();
        self.state.progress.retain(|peer, _| members.contains(peer));
        let next_index = self.state.log.last_index() + 1;
        for member in members {
            if member != self.state.id {
                self.state
                    .progress
                    .insert_if_absent(member, || Progress::new(next_index));
            }
        }
    }

    // ---- the log ----

    fn append_as_leader(&mut self, kind: EntryKind) -> u64 {
        let index = self.state.log.last_index() + 1;
        self.state.log.append(vec![Entry {
            term: self.state.term,
            index,
            kind,
        }]);
        self.track_configurations_from(index);
        let peers: Vec<NodeId> = self.state.progress.keys().copied().collect();
        self.state.append_due.extend(peers);
        index
    }

    /// Takes the configuration changes of the log's entries from `from` on into effect.
    pub(super) fn track_configurations_from(&mut self, from: u64) {
        for index in from..=self.state.log.last_index() {
            let Some(Entry {
                kind: EntryKind::ConfigChange(change),
                ..
            }) = self.state.log.entry(index)
            else {
                continue;
            };
            let change = *change;
            match self.configuration().apply(change) {
                Ok(next) => self.state.configurations.push((index, next)),
                // Every node refuses the same change on the same log, so it is a no-op.
                Err(refusal) => {
                    tracing::debug!(index, ?change, %refusal, "configuration change ignored")
                }
            }
        }
        self.reconcile_progress();
    }

    /// Forgets configurations whose entries were truncated from `from` on.
    pub(super) fn untrack_configurations_from(&mut self, from: u64) {
        let base = self.state.configurations[0].0;
        self.state
            .configurations
            .retain(|(index, _)| *index < from || *index == base);
    }

    /// Advances the leader's commit index to what a quorum holds, counting only entries of
    /// the current term. Returns whether it moved.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let persisted = self.state.log.persisted();
        let own_id = self.state.id;
        let progress = &self.state.progress;
        let candidate = self.configuration().committed_index(|node| {
            if node == own_id {
                persisted
            } else {
                progress
                    .get(&node)
                    .map_or(0, |progress| progress.match_index)
            }
        });
        if candidate <= self.state.log.committed() || candidate > self.state.log.last_index() {
            return false;
        }
        let counts_by_replicas =
            self.state.config.planted_bug == Some(RaftPlantedBug::CommitPreviousTermByCounting);
        if !counts_by_replicas && self.state.log.term(candidate) != Some(self.state.term) {
            return false;
        }
        self.state.log.commit_to(candidate);
        self.on_leader_commit();
        true
    }

    fn on_leader_commit(&mut self) {
        self.state.commit_broadcast_due = true;
        if self.state.log.term(self.state.log.committed()) == Some(self.state.term) {
            for (requester, context) in
                std::mem::take(&mut self.state.reads_waiting_for_term_commit)
            {
                self.leader_read(requester, context);
            }
        }
        let settled = self.last_configuration_index() <= self.state.log.committed();
        if settled && !self.configuration().is_voter(self.state.id) {
            // Removed or demoted, and the change is committed: let the others elect (§6).
            tracing::debug!(node = %self.state.id, "leader is no longer a voter; stepping down");
            self.become_follower(self.state.term, None);
            return;
        }
        if settled && self.configuration().is_joint() {
            self.append_as_leader(EntryKind::ConfigChange(ConfigChange::LeaveJoint));
        }
    }

    // ---- reads ----

    pub(super) fn leader_read(&mut self, requester: NodeId, context: u64) {
        if self.state.log.term(self.state.log.committed()) != Some(self.state.term) {
            self.state
                .reads_waiting_for_term_commit
                .push((requester, context));
            return;
        }
        let index = self.state.log.committed();
        let only_me: BTreeSet<NodeId> = [self.state.id].into_iter().collect();
        if self.configuration().is_quorum(&only_me)
            || self.state.config.planted_bug == Some(RaftPlantedBug::ReadWithoutQuorumRound)
        {
            self.answer_read(requester, context, index);
            return;
        }
        self.state.pending_reads.push_back(PendingRead {
            requester,
            context,
            index,
            round: self.state.read_round + 1,
        });
        self.state.read_broadcast_due = true;
    }

    fn answer_read(&mut self, requester: NodeId, context: u64, index: u64) {
        if requester == self.state.id {
            self.state.read_states.push(ReadState { context, index });
        } else {
            self.send_untermed(requester, MessageBody::ReadIndexResponse { context, index });
        }
    }

    /// Answers the reads whose round a quorum has acknowledged.
    pub(super) fn release_reads(&mut self) {
        while let Some(front) = self.state.pending_reads.front() {
            let round = front.round;
            let mut acknowledged: BTreeSet<NodeId> = self
                .state
                .progress
                .iter()
                .filter(|(_, progress)| progress.read_round_acknowledged >= round)
                .map(|(peer, _)| *peer)
                .collect();
            acknowledged.insert(self.state.id);
            if !self.configuration().is_quorum(&acknowledged) {
                break;
            }
            let read = self.state.pending_reads.pop_front().expect("front exists");
            self.answer_read(read.requester, read.context, read.index);
        }
    }

    pub(super) fn push_read_state(&mut self, context: u64, index: u64) {
        self.state.read_states.push(ReadState { context, index });
    }

    // ---- sending ----

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.state.outbox.push(Message {
            from: self.state.id,
            to,
            term: self.state.term,
            body,
        });
    }

    /// A local request (proposal, read) that the term rules do not apply to.
    pub(super) fn send_untermed(&mut self, to: NodeId, body: MessageBody) {
        let term = if self.planted_bug() == Some(RaftPlantedBug::StampLocalRequestsWithTerm) {
            self.state.term
        } else {
            0
        };
        self.state.outbox.push(Message {
            from: self.state.id,
            to,
            term,
            body,
        });
    }

    pub(super) fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        self.state.outbox.push(Message {
            from: self.state.id,
            to,
            term,
            body,
        });
    }

    pub(super) fn go_quiet(&mut self) {
        self.state.quiet = true;
        self.state.election_elapsed_ticks = 0;
        self.release_idle_buffers();
    }

    /// A quiet group may stay quiet for hours, and a host holds thousands: give back the room
    /// its buffers grew to while it was busy (they grow again on the next burst).
    fn release_idle_buffers(&mut self) {
        let state = &mut *self.state;
        state.log.release_idle_buffers();
        state.configurations.shrink_to_fit();
        state.progress.release_idle_buffers();
        if state.pending_reads.is_empty() {
            state.pending_reads = VecDeque::new();
        }
        if state.reads_waiting_for_term_commit.is_empty() {
            state.reads_waiting_for_term_commit = Vec::new();
        }
    }

    pub(super) fn mark_append_due(&mut self, peer: NodeId) {
        self.state.append_due.insert(peer);
    }

    fn broadcast_heartbeat(&mut self) {
        self.broadcast_heartbeat_with(false);
    }

    fn broadcast_heartbeat_with(&mut self, quiesce: bool) {
        let peers: Vec<(NodeId, u64)> = self
            .state
            .progress
            .iter()
            .map(|(peer, progress)| (*peer, progress.match_index))
            .collect();
        for (peer, match_index) in peers {
            self.send(
                peer,
                MessageBody::Heartbeat {
                    leader_commit: match_index.min(self.state.log.committed()),
                    read_round: self.state.read_round,
                    quiesce,
                },
            );
        }
    }

    /// Sends `to` what it lacks, if its flow control allows: entries, an empty append when
    /// `send_if_empty` (to carry the commit index or probe), or the next snapshot chunk.
    pub(super) fn send_append(&mut self, to: NodeId, send_if_empty: bool) {
        let inflight_max = self.state.config.inflight_max;
        let Some(progress) = self.state.progress.get_mut(&to) else {
            return;
        };
        if progress.is_paused(inflight_max) {
            return;
        }
        if let ReplicationState::Snapshot { index, offset } = progress.state {
            progress.paused = true;
            self.state.snapshot_requests.push(SnapshotChunkRequest {
                to,
                index,
                offset,
                bytes_max: self.state.config.snapshot_chunk_bytes,
            });
            return;
        }
        let prev_log_index = progress.next_index - 1;
        let prev_log_term = self.state.log.term(prev_log_index);
        let entries = self.state.log.entries_from(
            progress.next_index,
            self.state.config.append_entries_max,
            self.state.config.append_bytes_max,
        );
        match (prev_log_term, entries) {
            (Some(prev_log_term), Some(entries)) => {
                if entries.is_empty() && !send_if_empty {
                    return;
                }
                let last_index = prev_log_index + entries.len() as u64;
                progress.on_append_sent(last_index, !entries.is_empty());
                let leader_commit = self.state.log.committed();
                self.send(
                    to,
                    MessageBody::Append {
                        prev_log_index,
                        prev_log_term,
                        entries,
                        leader_commit,
                    },
                );
            }
            _ => {
                // The entries it needs are compacted: send the snapshot instead.
                let index = self.state.log.snapshot_index();
                progress.become_snapshot(index);
                progress.paused = true;
                self.state.snapshot_requests.push(SnapshotChunkRequest {
                    to,
                    index,
                    offset: 0,
                    bytes_max: self.state.config.snapshot_chunk_bytes,
                });
            }
        }
    }

    /// Turns the round's deferred sends into messages: one append per peer however many
    /// proposals arrived, and one heartbeat round for all reads that came in.
    fn flush(&mut self) {
        if self.state.role != Role::Leader {
            self.state.append_due.clear();
            self.state.commit_broadcast_due = false;
            self.state.read_broadcast_due = false;
            return;
        }
        if self.state.read_broadcast_due {
            self.state.read_broadcast_due = false;
            self.state.read_round += 1;
            self.state.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
        let peers: Vec<NodeId> = self.state.progress.keys().copied().collect();
        let broadcast_commit = std::mem::take(&mut self.state.commit_broadcast_due);
        let due = std::mem::take(&mut self.state.append_due);
        for peer in peers {
            if broadcast_commit || due.contains(&peer) {
                self.send_append(peer, broadcast_commit);
            }
        }
    }

    // ---- the Ready loop ----

    pub fn has_ready(&self) -> bool {
        self.state.handed.is_none()
            && (!self.state.outbox.is_empty()
                || self.state.log.has_unpersisted()
                || self.state.log.has_committed_to_apply()
                || self.hard_state() != self.state.last_hard_state
                || self.role_state() != self.state.last_role_state
                || self.state.installed_snapshot.is_some()
                || !self.state.read_states.is_empty()
                || !self.state.snapshot_requests.is_empty()
                || (self.state.role == Role::Leader
                    && (!self.state.append_due.is_empty()
                        || self.state.commit_broadcast_due
                        || self.state.read_broadcast_due)))
    }

    /// Everything the driver must do now (see [`Ready`] for the order). Call
    /// [`RaftGroup::advance`] once it is done, before the next `ready`.
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.state.handed.is_none(),
            "advance() the previous Ready before asking for the next"
        );
        self.flush();
        let hard_state = self.hard_state();
        let term_or_vote_changed = hard_state.term != self.state.last_hard_state.term
            || hard_state.vote != self.state.last_hard_state.vote;
        let snapshot = self
            .state
            .installed_snapshot
            .take()
            .map(|snapshot| *snapshot);
        let entries = self.state.log.take_unpersisted();
        let mut messages = Vec::new();
        let mut messages_after_persist = Vec::new();
        let is_leader = self.state.role == Role::Leader;
        for message in std::mem::take(&mut self.state.outbox) {
            let early = is_leader
                && !term_or_vote_changed
                && snapshot.is_none()
                && message.body.is_leader_replication();
            if early {
                messages.push(message);
            } else {
                messages_after_persist.push(message);
            }
        }
        let committed_entries = self
            .state
            .log
            .take_committed(self.state.config.apply_bytes_max);
        let role_state = self.role_state();
        let role_changed = role_state != self.state.last_role_state;
        self.state.last_role_state = role_state;
        let hard_state_changed = hard_state != self.state.last_hard_state;
        self.state.last_hard_state = hard_state;
        self.state.handed = Some(Handed {
            last_entry: entries.last().map(|entry| (entry.index, entry.term)),
        });
        Ready {
            hard_state: hard_state_changed.then_some(hard_state),
            snapshot,
            entries,
            messages,
            messages_after_persist,
            committed_entries,
            read_states: std::mem::take(&mut self.state.read_states),
            snapshot_requests: std::mem::take(&mut self.state.snapshot_requests),
            role_state: role_changed.then_some(role_state),
        }
    }

    /// The driver did everything the last Ready asked: its writes are durable.
    pub fn advance(&mut self) {
        let handed = self
            .state
            .handed
            .take()
            .expect("advance() without an outstanding Ready");
        if let Some((index, term)) = handed.last_entry {
            self.state.log.persisted_to(index, term);
        }
        if self.state.role == Role::Leader {
            self.maybe_commit();
        }
    }

    // ---- snapshots received ----

    pub(super) fn install_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        if self.state.log.matches(meta.index, meta.term) {
            // We hold that entry already: everything up to it is committed.
            self.state.log.commit_to(meta.index);
            return;
        }
        self.state.log.restore(&meta);
        self.state.configurations = vec![(meta.index, meta.configuration.clone())];
        self.state.installed_snapshot = Some(Box::new(Snapshot { meta, data }));
    }

    pub(super) fn incoming_snapshot_mut(&mut self) -> &mut Option<Box<(SnapshotMeta, Vec<u8>)>> {
        &mut self.state.incoming_snapshot
    }

    pub(super) fn planted_bug(&self) -> Option<RaftPlantedBug> {
        self.state.config.planted_bug
    }

    /// Tells the transfer's target to campaign once its log has caught up with ours.
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let last_index = self.state.log.last_index();
        let Some(transfer) = &mut self.state.transfer else {
            return;
        };
        let caught_up = self
            .state
            .progress
            .get(&transfer.target)
            .is_some_and(|progress| progress.match_index == last_index);
        if caught_up && !transfer.timeout_now_sent {
            transfer.timeout_now_sent = true;
            let target = transfer.target;
            self.send(target, MessageBody::TimeoutNow);
        }
    }

    pub(super) fn transfer_target(&self) -> Option<NodeId> {
        self.state.transfer.as_ref().map(|transfer| transfer.target)
    }

    pub(super) fn is_transferring(&self) -> bool {
        self.state.transfer.is_some()
    }

    pub(super) fn append_commands(&mut self, commands: Vec<Vec<u8>>) {
        for command in commands {
            self.append_as_leader(EntryKind::Command(command));
        }
    }
}
