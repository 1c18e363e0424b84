//! A node's partitions: every Raft group the node hosts, driven together so that a round of
//! all of them costs one append and one sync of the node-wide Raft log (group commit), one
//! envelope per peer (all groups' messages to that peer batched), and one pass of applies
//! into the state machines.
//!
//! Invariants:
//! - the Ready contract of `raft::ready` is kept for every group in a round: replication
//!   messages may leave at once, everything else only after the round's sync; committed
//!   entries apply after it; a received snapshot is named in the log (synced) before the
//!   state machine installs it, so a crash in between recovers to the old state, never to a
//!   mix;
//! - a write is answered only by the node that proposed it, when the entry it proposed applies
//!   there (or with an error saying its outcome is unknown, after a timeout);
//! - a read is answered only after the group confirmed its leadership for it (ReadIndex) and
//!   the state machine applied up to the read's index: reads are linearizable;
//! - the Raft log drops entries only at or below a partition's checkpointed applied index;
//! - any storage failure poisons the host: it refuses every request until the node restarts.

use crate::ids::NodeId;
use crate::partition::command::Command;
use crate::partition::envelope::RaftEnvelope;
use crate::partition::pending::{Pending, PendingRequests};
use crate::partition::raft_log::{LiveLog, RaftLogError, RaftLogStore, RecoveredLog};
use crate::partition::replica_store::{AppliedCommand, AppliedPoint, CommandOutcome, ReplicaStore};
use crate::partition::state_machine::{StateMachine, StateMachineError};
use crate::partition::PartitionId;
use crate::raft::{
    Configuration, Entry, EntryKind, GroupStatus, Message, ProposeError, RaftConfig, RaftGroup,
    Ready, RecoveredState, RoleState, SnapshotMeta, BOOTSTRAP_INDEX,
};
use crate::seams::{Rng, SeededRng, SharedDisk};
use std::collections::BTreeMap;

/// Election timeouts between full recomputations of the peer set.
const PEER_REFRESH_ELECTION_TIMEOUTS: u64 = 64;

#[derive(Clone, Debug)]
pub struct HostConfig {
    pub raft: RaftConfig,
    pub log_segment_bytes_max: u64,
    /// Applied entries (across partitions) between checkpoints of the state machines.
    pub checkpoint_applied_entries: u64,
    /// Entries a partition's log keeps behind its last checkpoint. A follower sent a
    /// snapshot catches up from the log after installing it only if the entries after the
    /// snapshot are still there; without a tail, a checkpoint during every transfer (steady
    /// load, frequent checkpoints) would send it the next snapshot, and the next, for good.
    /// The cost is memory: up to this many entries per partition beyond the checkpoint.
    pub log_catch_up_entries: u64,
    /// Segments the Raft log may grow by before its live state is rewritten.
    pub log_checkpoint_segments: u64,
    /// Ticks a request waits for its answer before it is answered "outcome unknown".
    pub request_timeout_ticks: u64,
    /// Report every applied entry and role change in the outputs, for the simulator's
    /// checkers.
    pub report_applied: bool,
    /// A canary's planted bug: send acknowledgements and votes before the log is synced.
    /// Never set outside a canary scenario.
    pub acknowledge_before_sync: bool,
    /// A canary's planted bug: the state machine applies copies of commands (and commands
    /// their session overtook) as if new. Never set outside a canary scenario.
    pub apply_command_copies: bool,
    /// A canary's planted bug: a batch is proposed as one entry per operation, answered when
    /// the last applies, so readers can see part of it. Never set outside a canary scenario.
    pub split_batches: bool,
    /// A canary's planted bug: the Raft log is written but never synced, so a power loss
    /// takes what was acknowledged and applied. Never set outside a canary scenario.
    pub skip_log_sync: bool,
    /// A canary's planted bug: a read that finds no key is taken for a failing store, and
    /// poisons the host. Never set outside a canary scenario.
    pub poison_on_missing_key: bool,
    /// A canary's planted bug: recovery takes a torn tail of the Raft log (a crash during an
    /// unsynced write) for damage at rest, and keeps the node's replicas out. Never set
    /// outside a canary scenario (the node sets it with `PlantedBug::TornTailsAreDamage`).
    pub torn_tails_are_damage: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            // The host watches peer nodes, so idle groups may go quiet.
            raft: RaftConfig {
                quiesce_after_ticks: 40,
                ..RaftConfig::default()
            },
            log_segment_bytes_max: 16 * 1024 * 1024,
            checkpoint_applied_entries: 4096,
            log_catch_up_entries: 1024,
            log_checkpoint_segments: 4,
            request_timeout_ticks: 50,
            report_applied: false,
            acknowledge_before_sync: false,
            apply_command_copies: false,
            split_batches: false,
            skip_log_sync: false,
            poison_on_missing_key: false,
            torn_tails_are_damage: false,
        }
    }
}

/// How a partition starts on this node.
#[derive(Clone, Debug)]
pub enum PartitionStart {
    /// A founding replica of a new partition with these voters.
    Bootstrap { voters: Vec<NodeId> },
    /// A replica that joins an existing partition (as a learner): it catches up from a
    /// snapshot the leader sends.
    Joining,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("partition {0} is not on this node")]
    UnknownPartition(PartitionId),
    #[error("this node does not lead partition {partition} (leader: {leader:?})")]
    NotLeader {
        partition: PartitionId,
        leader: Option<NodeId>,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    State(#[from] StateMachineError),
    #[error("no answer in time: the write may or may not have been applied")]
    OutcomeUnknown,
    #[error("the partition store failed and refuses requests until the node restarts: {0}")]
    Poisoned(String),
    /// The Raft log lost synced records: restarting does not help, rebuilding does.
    #[error("the partition store is damaged and refuses requests: {0}")]
    Damaged(String),
    #[error("partition {0} is busy with a leadership transfer or membership change; retry")]
    Busy(PartitionId),
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(String),
}

/// Answers to this node's clients (a write's `Outcome` and a read's `Answer` are the state
/// machine's), and what the simulator's checkers observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostOutput<Outcome, Answer> {
    WriteAnswered {
        request_id: u64,
        result: Result<Outcome, RequestError>,
    },
    ReadAnswered {
        request_id: u64,
        result: Result<Answer, RequestError>,
    },
    /// An entry applied here (only with `report_applied`). `applier_term` is this node's
    /// term when it applied the entry: the entry was committed in that term or earlier.
    Applied {
        partition: PartitionId,
        index: u64,
        term: u64,
        digest: u64,
        applier_term: u64,
        /// The client command the entry carried, if any, and whether it took effect here
        /// (a copy or an overtaken command is skipped): what exactly-once is judged by.
        command: Option<AppliedCommandReport>,
    },
    /// A group's role, term or leader changed (only with `report_applied`).
    RoleChanged {
        partition: PartitionId,
        role_state: RoleState,
    },
}

/// Which command an applied entry carried, and whether it changed the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedCommandReport {
    pub proposer: u32,
    pub proposer_session: u64,
    pub request_id: u64,
    /// The command's mark: every request of its session below it had been answered.
    pub first_unanswered: u64,
    pub took_effect: bool,
}

#[derive(Debug)]
struct PendingWrite {
    partition: PartitionId,
    /// Where the local leader appended it (unknown when forwarded).
    appended_at: Option<(u64, u64)>,
    deadline_tick: u64,
}

#[derive(Debug)]
struct PendingRead<Query> {
    partition: PartitionId,
    request: Query,
    /// Known once the leader confirmed the read.
    read_index: Option<u64>,
    deadline_tick: u64,
}

impl Pending for PendingWrite {
    fn partition(&self) -> PartitionId {
        self.partition
    }
    fn deadline_tick(&self) -> u64 {
        self.deadline_tick
    }
}

impl<Query> Pending for PendingRead<Query> {
    fn partition(&self) -> PartitionId {
        self.partition
    }
    fn deadline_tick(&self) -> u64 {
        self.deadline_tick
    }
}

#[derive(Debug)]
struct CachedSnapshot {
    data: Vec<u8>,
    last_used_tick: u64,
}

/// Counters for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    pub rounds: u64,
    pub log_syncs: u64,
    pub entries_applied: u64,
    pub envelopes_sent: u64,
    pub messages_sent: u64,
    pub state_machine_checkpoints: u64,
    pub log_checkpoints: u64,
    pub snapshot_chunks_received: u64,
    pub snapshots_installed: u64,
    /// Messages refused: sent in another node's name, addressed to another node, or
    /// refused by a group (an append that contradicts what it committed).
    pub messages_refused: u64,
}

/// The output type of a host running state machine `M`.
pub type HostOutputOf<M> = HostOutput<<M as StateMachine>::Outcome, <M as StateMachine>::Answer>;

#[derive(Debug)]
pub struct PartitionHost<M: StateMachine> {
    id: NodeId,
    config: HostConfig,
    rng_seed: u64,
    /// This node's proposer incarnation, taken durably at every open: tells this run's
    /// proposals from those of earlier runs, and retires their sessions (`replica_store`).
    session: u64,
    /// Drawn at every open: offsets this run's read contexts, so a late answer to a read of
    /// an earlier run never matches a read of this one.
    read_salt: u64,
    groups: BTreeMap<PartitionId, RaftGroup>,
    store: ReplicaStore<M>,
    raft_log: RaftLogStore,
    outbox: BTreeMap<NodeId, RaftEnvelope>,
    outputs: Vec<HostOutputOf<M>>,
    next_request_id: u64,
    pending_writes: PendingRequests<PendingWrite>,
    pending_reads: PendingRequests<PendingRead<M::Query>>,
    snapshots: BTreeMap<(PartitionId, u64), CachedSnapshot>,
    /// When each peer node was last heard from (any envelope, empty ones included).
    peer_heard_tick: BTreeMap<NodeId, u64>,
    /// Partitions receiving a snapshot, with the tick their last chunk arrived.
    snapshot_chunk_tick: BTreeMap<PartitionId, u64>,
    /// The peer nodes of any group here: extended as groups are created, recomputed after a
    /// configuration change (`peers_stale`) and every `PEER_REFRESH_ELECTION_TIMEOUTS`.
    peers: std::collections::BTreeSet<NodeId>,
    peers_stale: bool,
    /// Groups that may have a Ready: only these are looked at in a round, so thousands of
    /// quiet groups cost nothing per message.
    touched: std::collections::BTreeSet<PartitionId>,
    /// A round waiting for its sync.
    prepared: Option<Vec<(PartitionId, Ready)>>,
    tick: u64,
    applied_since_checkpoint: u64,
    log_checkpoint_segment: u64,
    poisoned: Option<String>,
    counters: HostCounters,
}

/// What recovery makes of a partition's state machine point and its log.
fn recovered_state(point: &AppliedPoint, log: Option<RecoveredLog>) -> RecoveredState {
    let mut log = log.unwrap_or_default();
    // A term is a floor on what this node has seen; the entries it holds were written in
    // their terms, so it has seen at least the last one (a torn round can lose the hard
    // state written beside them). Raising a term is always safe; the vote was for an
    // older term.
    let last_entry_term = log.entries.last().map_or(0, |entry| entry.term);
    if last_entry_term > log.hard_state.term {
        log.hard_state.term = last_entry_term;
        log.hard_state.vote = None;
    }
    let snapshot = SnapshotMeta {
        index: point.index,
        term: point.term,
        configuration: point.configuration.clone(),
    };
    let base_ahead = log.base.is_some_and(|(index, _)| index > point.index);
    let mut entries: Vec<_> = if base_ahead {
        // A snapshot was named in the log but never installed: start from the old state and
        // let the leader send it again.
        Vec::new()
    } else {
        log.entries
            .into_iter()
            .filter(|entry| entry.index > point.index)
            .collect()
    };
    if entries
        .first()
        .is_some_and(|first| first.index != point.index + 1)
    {
        entries.clear();
    }
    RecoveredState {
        hard_state: log.hard_state,
        snapshot,
        entries,
        applied: point.index,
    }
}

impl<M: StateMachine> PartitionHost<M> {
    /// Opens the node's partition storage with state machine `machine` and recovers every
    /// partition on it.
    pub fn open(
        id: NodeId,
        disk: SharedDisk,
        mut config: HostConfig,
        rng_seed: u64,
        machine: M,
    ) -> Result<PartitionHost<M>, RequestError> {
        // Every group checks a received snapshot against this state machine's format.
        config.raft.snapshot_check = Some(ReplicaStore::<M>::check_snapshot_image);
        // A state machine store holding impossible values keeps this node's replicas out, as
        // a damaged log does; the node still serves everything else.
        let damaged = |error| match error {
            StateMachineError::Corrupt(reason) => {
                RequestError::Damaged(format!("partition store: {reason}"))
            }
            error => RequestError::from(error),
        };
        let mut store = ReplicaStore::open(disk.clone(), machine).map_err(damaged)?;
        let session = store.begin_incarnation().map_err(damaged)?;
        if config.apply_command_copies {
            store.plant_apply_copies();
        }
        let (mut raft_log, mut recovered) = RaftLogStore::open_with(
            disk,
            config.log_segment_bytes_max,
            config.torn_tails_are_damage,
        )
        .map_err(|error| match error {
            RaftLogError::DamagedAtRest(_) => RequestError::Damaged(error.to_string()),
            error => RequestError::Poisoned(error.to_string()),
        })?;
        if config.skip_log_sync {
            raft_log.plant_skip_sync();
        }
        let mut groups = BTreeMap::new();
        for (partition, point) in store.points() {
            let state = recovered_state(point, recovered.remove(partition));
            let group = RaftGroup::recover(
                id,
                config.raft.clone(),
                state,
                group_rng(rng_seed, id, *partition),
            );
            groups.insert(*partition, group);
        }
        let log_checkpoint_segment = raft_log.segment();
        let touched = groups.keys().copied().collect();
        Ok(PartitionHost {
            id,
            config,
            rng_seed,
            session,
            read_salt: SeededRng::split(rng_seed, u64::MAX).next_u64(),
            groups,
            store,
            raft_log,
            outbox: BTreeMap::new(),
            outputs: Vec::new(),
            next_request_id: 0,
            pending_writes: PendingRequests::default(),
            pending_reads: PendingRequests::default(),
            snapshots: BTreeMap::new(),
            peer_heard_tick: BTreeMap::new(),
            snapshot_chunk_tick: BTreeMap::new(),
            peers: std::collections::BTreeSet::new(),
            peers_stale: true,
            touched,
            prepared: None,
            tick: 0,
            applied_since_checkpoint: 0,
            log_checkpoint_segment,
            poisoned: None,
            counters: HostCounters::default(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn counters(&self) -> HostCounters {
        HostCounters {
            log_syncs: self.raft_log.syncs(),
            ..self.counters
        }
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.groups.keys().copied()
    }

    pub fn status(&self, partition: PartitionId) -> Option<GroupStatus> {
        self.groups.get(&partition).map(RaftGroup::status)
    }

    pub fn group(&self, partition: PartitionId) -> Option<&RaftGroup> {
        self.groups.get(&partition)
    }

    /// The bytes of keys and values `partition`'s state machine holds here.
    pub fn state_size_bytes(&self, partition: PartitionId) -> Result<u64, RequestError> {
        Ok(self.store.size_bytes(partition)?)
    }

    /// The proposer sessions `partition` remembers here for at-most-once: one per proposer
    /// node, however often the nodes restarted.
    pub fn session_count(&self, partition: PartitionId) -> Result<usize, RequestError> {
        Ok(self.store.session_count(partition)?)
    }

    /// Whether some partition here got a snapshot chunk within the last election timeout
    /// and has not installed that snapshot yet.
    pub fn is_receiving_snapshot(&self) -> bool {
        let recent_ticks = u64::from(self.config.raft.election_timeout_ticks);
        self.snapshot_chunk_tick
            .values()
            .any(|tick| tick + recent_ticks >= self.tick)
    }

    fn check_usable(&self) -> Result<(), RequestError> {
        match &self.poisoned {
            Some(reason) => Err(RequestError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, reason: String) -> RequestError {
        tracing::error!(node = %self.id, %reason, "partition host poisoned");
        self.poisoned.get_or_insert(reason.clone());
        RequestError::Poisoned(reason)
    }

    /// Adds a partition replica to this node, durably.
    pub fn create_partition(
        &mut self,
        partition: PartitionId,
        start: PartitionStart,
    ) -> Result<(), RequestError> {
        self.check_usable()?;
        if self.groups.contains_key(&partition) {
            return Ok(());
        }
        let point = match &start {
            PartitionStart::Bootstrap { voters } => AppliedPoint {
                index: BOOTSTRAP_INDEX,
                term: 0,
                configuration: Configuration::with_voters(voters.iter().copied()),
            },
            PartitionStart::Joining => AppliedPoint::default(),
        };
        if let Err(error) = self.store.create_partition(partition, point.clone()) {
            return Err(self.poison(error.to_string()));
        }
        let group = RaftGroup::recover(
            self.id,
            self.config.raft.clone(),
            recovered_state(&point, None),
            group_rng(self.rng_seed, self.id, partition),
        );
        self.groups.insert(partition, group);
        self.touched.insert(partition);
        // Only this group's members can be new peers: no pass over every group (creating
        // thousands of partitions one by one would be quadratic).
        let configuration = self.groups[&partition].configuration();
        let members: Vec<NodeId> = configuration
            .voters
            .iter()
            .chain(&configuration.voters_outgoing)
            .chain(&configuration.learners)
            .copied()
            .filter(|member| *member != self.id)
            .collect();
        self.peers.extend(members);
        Ok(())
    }

    fn refresh_peers(&mut self) {
        let mut peers = std::collections::BTreeSet::new();
        for group in self.groups.values() {
            let configuration = group.configuration();
            peers.extend(configuration.voters.iter().copied());
            peers.extend(configuration.voters_outgoing.iter().copied());
            peers.extend(configuration.learners.iter().copied());
        }
        peers.remove(&self.id);
        self.peers = peers;
    }

    // ---- client requests ----

    fn new_request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    /// The mark a new write of `partition` carries: its oldest write still waiting (or the
    /// new one). Every earlier write of the partition not waiting any more was answered, so
    /// its copies, and the write itself if it was given up on, must never apply now.
    fn first_unanswered(&self, partition: PartitionId, request_id: u64) -> u64 {
        self.pending_writes
            .of_partition(partition)
            .next()
            .map_or(request_id, |(oldest, _)| oldest.min(request_id))
    }

    /// Proposes a write; its answer comes out of [`PartitionHost::take_outputs`] with the
    /// returned request id. Bad input is refused here and changes nothing.
    pub fn write(
        &mut self,
        partition: PartitionId,
        operation: M::Operation,
    ) -> Result<u64, RequestError> {
        self.check_usable()?;
        self.store
            .machine()
            .validate(&operation)
            .map_err(RequestError::Invalid)?;
        let operation = self.plant_split_batch(partition, operation);
        let request_id = self.new_request_id();
        let first_unanswered = self.first_unanswered(partition, request_id);
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        let command = Command {
            proposer: self.id.0,
            proposer_session: self.session,
            request_id,
            first_unanswered,
            operation,
        };
        let appended_at = match group.propose(command.encode()) {
            Ok(crate::raft::Proposal::Appended { index, term }) => Some((index, term)),
            Ok(crate::raft::Proposal::Forwarded { .. }) => None,
            Err(error) => return Err(propose_refusal(partition, error)),
        };
        self.pending_writes.insert(
            request_id,
            PendingWrite {
                partition,
                appended_at,
                deadline_tick: self.tick + self.config.request_timeout_ticks,
            },
        );
        Ok(request_id)
    }

    /// The planted `split_batches` bug: every piece of a write but the last is proposed on
    /// its own, unanswered, ahead of the rest (so it applies first); the last is the write's
    /// answer. Without the bug the operation is returned unchanged.
    fn plant_split_batch(
        &mut self,
        partition: PartitionId,
        operation: M::Operation,
    ) -> M::Operation {
        if !self.config.split_batches {
            return operation;
        }
        let mut pieces = self.store.machine().split_for_canary(operation);
        let Some(last) = pieces.pop() else {
            unreachable!("a write splits into at least itself")
        };
        for piece in pieces {
            let request_id = self.new_request_id();
            let command = Command {
                proposer: self.id.0,
                proposer_session: self.session,
                request_id,
                first_unanswered: self.first_unanswered(partition, request_id),
                operation: piece,
            };
            if let Some(group) = self.groups.get_mut(&partition) {
                let _ = group.propose(command.encode());
            }
        }
        last
    }

    /// Starts a linearizable read; its answer comes out of [`PartitionHost::take_outputs`].
    pub fn read(&mut self, partition: PartitionId, request: M::Query) -> Result<u64, RequestError> {
        self.check_usable()?;
        let request_id = self.new_request_id();
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        if let Err(error) = group.read_index(read_context(self.read_salt, request_id)) {
            return Err(propose_refusal(partition, error));
        }
        self.pending_reads.insert(
            request_id,
            PendingRead {
                partition,
                request,
                read_index: None,
                deadline_tick: self.tick + self.config.request_timeout_ticks,
            },
        );
        Ok(request_id)
    }

    /// Proposes a membership change of `partition` (on its leader).
    pub fn change_membership(
        &mut self,
        partition: PartitionId,
        change: crate::raft::ConfigChange,
    ) -> Result<(), RequestError> {
        self.check_usable()?;
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        group
            .propose_config_change(change)
            .map(|_| ())
            .map_err(|error| propose_refusal(partition, error))
    }

    pub fn transfer_leadership(
        &mut self,
        partition: PartitionId,
        target: NodeId,
    ) -> Result<(), RequestError> {
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        group
            .transfer_leadership(target)
            .map_err(|error| propose_refusal(partition, error))
    }

    // ---- inputs ----

    /// Messages another node sent this one.
    pub fn receive(&mut self, from: NodeId, envelope: RaftEnvelope) {
        if self.poisoned.is_some() {
            return;
        }
        self.peer_heard_tick.insert(from, self.tick);
        for (partition, message) in envelope.messages {
            if message.from != from || message.to != self.id {
                // The transport vouches for the envelope's sender only: a message in another
                // node's name, or for another node, is refused.
                tracing::warn!(
                    node = %self.id,
                    %from,
                    claimed_from = %message.from,
                    to = %message.to,
                    kind = message.body.kind(),
                    "Raft message refused: its sender or addressee is not this link's"
                );
                self.counters.messages_refused += 1;
                continue;
            }
            match self.groups.get_mut(&partition) {
                Some(group) => {
                    if let crate::raft::MessageBody::InstallSnapshot { .. } = &message.body {
                        self.counters.snapshot_chunks_received += 1;
                        self.snapshot_chunk_tick.insert(partition, self.tick);
                    }
                    if !group.step(message) {
                        self.counters.messages_refused += 1;
                    }
                    self.touched.insert(partition);
                }
                _ => {
                    tracing::debug!(node = %self.id, %partition, "message for a partition not here")
                }
            }
        }
    }

    /// One tick of the node's clock for every group; requests past their deadline are
    /// answered "outcome unknown".
    pub fn tick(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        self.tick += 1;
        for (partition, group) in self.groups.iter_mut() {
            if !group.is_quiet() {
                group.tick();
                self.touched.insert(*partition);
            }
        }
        self.watch_peers();
        let now = self.tick;
        for request_id in self.pending_writes.expired(now) {
            self.pending_writes.remove(request_id);
            self.outputs.push(HostOutput::WriteAnswered {
                request_id,
                result: Err(RequestError::OutcomeUnknown),
            });
        }
        for request_id in self.pending_reads.expired(now) {
            self.pending_reads.remove(request_id);
            self.outputs.push(HostOutput::ReadAnswered {
                request_id,
                result: Err(RequestError::OutcomeUnknown),
            });
        }
        self.snapshots
            .retain(|_, snapshot| snapshot.last_used_tick + 200 > now);
    }

    /// Node-level liveness, so quiet groups cost nothing: every heartbeat interval each peer
    /// gets one envelope (empty when no group has anything for it), and a quiet follower
    /// whose leader's node has been silent for an election timeout is woken to elect.
    fn watch_peers(&mut self) {
        let raft = &self.config.raft;
        if raft.quiesce_after_ticks == 0 {
            return;
        }
        let heartbeat_ticks = u64::from(raft.heartbeat_interval_ticks);
        let silent_ticks = u64::from(raft.election_timeout_ticks);
        let now = self.tick;
        // A pass over every group only when a configuration changed, and now and then to
        // forget peers of changes a leader change undid (an extra peer only costs pings).
        if (self.peers_stale && now.is_multiple_of(silent_ticks))
            || now.is_multiple_of(silent_ticks * PEER_REFRESH_ELECTION_TIMEOUTS)
        {
            self.refresh_peers();
            self.peers_stale = false;
        }
        if now.is_multiple_of(heartbeat_ticks) {
            for peer in &self.peers {
                self.outbox.entry(*peer).or_default();
            }
        }
        let mut silent_peers = std::collections::BTreeSet::new();
        for peer in &self.peers {
            let heard = *self.peer_heard_tick.entry(*peer).or_insert(now);
            if now.saturating_sub(heard) > silent_ticks {
                silent_peers.insert(*peer);
            }
        }
        if silent_peers.is_empty() {
            return;
        }
        for (partition, group) in self.groups.iter_mut() {
            let Some(leader) = group.leader() else {
                continue;
            };
            if group.is_quiet() && silent_peers.contains(&leader) {
                group.wake(true);
                self.touched.insert(*partition);
            }
        }
    }

    // ---- the round ----

    /// Whether some group has something to persist, send or apply.
    pub fn has_work(&self) -> bool {
        self.poisoned.is_none()
            && self
                .touched
                .iter()
                .any(|partition| self.groups.get(partition).is_some_and(RaftGroup::has_ready))
    }

    /// Runs rounds until every group is idle, syncing inline (tests and tools; a driver with
    /// a disk to wait on uses [`PartitionHost::prepare_round`] and
    /// [`PartitionHost::complete_round`]).
    pub fn process(&mut self) {
        for _ in 0..8 {
            if !self.prepare_round() {
                if !self.has_work() {
                    break;
                }
                continue;
            }
            self.complete_round();
        }
    }

    /// Whether a prepared round waits for its sync.
    pub fn has_prepared_round(&self) -> bool {
        self.prepared.is_some()
    }

    /// Starts a round: takes every group's Ready, sends the replication traffic that may leave
    /// now, and stages the log writes. Returns true when the round waits for a sync (call
    /// [`PartitionHost::complete_round`] once the disk can take it); a round with nothing to
    /// write completes at once.
    pub fn prepare_round(&mut self) -> bool {
        if self.prepared.is_some() {
            return true;
        }
        if self.poisoned.is_some() {
            return false;
        }
        let mut readies: Vec<(PartitionId, Ready)> = Vec::new();
        // Every touched group is either taken now (and touched again when it advances) or
        // has nothing to do until something touches it: one look per touch, however often
        // the node asks for a round.
        for partition in std::mem::take(&mut self.touched) {
            if let Some(group) = self.groups.get_mut(&partition) {
                if group.has_ready() {
                    readies.push((partition, group.ready()));
                }
            }
        }
        if readies.is_empty() {
            return false;
        }
        self.counters.rounds += 1;
        if readies.iter().any(|(_, ready)| {
            ready.snapshot.is_some()
                || ready
                    .entries
                    .iter()
                    .any(|entry| matches!(entry.kind, EntryKind::ConfigChange(_)))
        }) {
            self.peers_stale = true;
        }
        for (partition, ready) in readies.iter_mut() {
            let partition = *partition;
            for message in std::mem::take(&mut ready.messages) {
                self.queue(partition, message);
            }
            if self.config.acknowledge_before_sync {
                for message in std::mem::take(&mut ready.messages_after_persist) {
                    self.queue(partition, message);
                }
            }
            for request in std::mem::take(&mut ready.snapshot_requests) {
                if let Err(error) = self.serve_snapshot_chunk(partition, request) {
                    self.fail(error);
                    return false;
                }
            }
            if let Some(snapshot) = &ready.snapshot {
                self.raft_log
                    .stage_base(partition, snapshot.meta.index, snapshot.meta.term);
            }
            self.raft_log
                .stage_entries(partition, std::mem::take(&mut ready.entries));
            if let Some(hard_state) = ready.hard_state {
                self.raft_log.stage_hard_state(partition, hard_state);
            }
        }
        self.prepared = Some(readies);
        if self.raft_log.has_staged() {
            true
        } else {
            self.complete_round();
            false
        }
    }

    /// Finishes the prepared round: one sync for every group's writes, then what waited for
    /// it (snapshots installed, acknowledgements sent, entries applied, reads served).
    pub fn complete_round(&mut self) {
        let Some(readies) = self.prepared.take() else {
            return;
        };
        if self.poisoned.is_some() {
            return;
        }
        if let Err(error) = self.complete(readies) {
            self.fail(error);
            return;
        }
        if let Err(error) = self.maintain() {
            self.fail(error);
        }
    }

    fn fail(&mut self, reason: String) {
        self.prepared = None;
        let _ = self.poison(reason);
        self.fail_all_requests();
    }

    fn complete(&mut self, mut readies: Vec<(PartitionId, Ready)>) -> Result<(), String> {
        // One sync for every group.
        self.raft_log.commit().map_err(|error| error.to_string())?;
        // Snapshots into the state machines, after the log names them.
        for (partition, ready) in readies.iter_mut() {
            if let Some(snapshot) = ready.snapshot.take() {
                let point = AppliedPoint {
                    index: snapshot.meta.index,
                    term: snapshot.meta.term,
                    configuration: snapshot.meta.configuration.clone(),
                };
                self.store
                    .install_snapshot(*partition, point, &snapshot.data)
                    .map_err(|error| error.to_string())?;
                self.snapshot_chunk_tick.remove(partition);
                self.counters.snapshots_installed += 1;
            }
        }
        // What waited for durability; then applies and reads; then advance.
        for (partition, mut ready) in readies {
            for message in std::mem::take(&mut ready.messages_after_persist) {
                self.queue(partition, message);
            }
            if !ready.committed_entries.is_empty() {
                let last = ready.committed_entries.last().expect("not empty").index;
                let configuration = self.groups[&partition].configuration_at(last);
                let applied = self
                    .store
                    .apply(partition, &ready.committed_entries, configuration)
                    .map_err(|error| error.to_string())?;
                self.counters.entries_applied += ready.committed_entries.len() as u64;
                self.applied_since_checkpoint += ready.committed_entries.len() as u64;
                if self.config.report_applied {
                    let applier_term = self.groups[&partition].term();
                    let commands: BTreeMap<u64, AppliedCommandReport> = applied
                        .iter()
                        .filter(|command| {
                            !matches!(command.outcome, CommandOutcome::Undecodable(_))
                        })
                        .map(|command| {
                            (
                                command.index,
                                AppliedCommandReport {
                                    proposer: command.proposer,
                                    proposer_session: command.proposer_session,
                                    request_id: command.request_id,
                                    first_unanswered: command.first_unanswered,
                                    took_effect: matches!(
                                        command.outcome,
                                        CommandOutcome::TookEffect(_)
                                    ),
                                },
                            )
                        })
                        .collect();
                    for entry in &ready.committed_entries {
                        self.outputs.push(HostOutput::Applied {
                            partition,
                            index: entry.index,
                            term: entry.term,
                            digest: entry_digest(entry),
                            applier_term,
                            command: commands.get(&entry.index).copied(),
                        });
                    }
                }
                self.answer_applied_writes(partition, &ready.committed_entries, applied);
            }
            for read_state in ready.read_states {
                // Only this session's read of this partition: a late answer from before a
                // restart, or one for another partition, confirms nothing here.
                let request_id = read_state.context.wrapping_sub(self.read_salt);
                match self.pending_reads.get_mut(request_id) {
                    Some(read) if read.partition == partition => {
                        read.read_index = Some(read_state.index);
                    }
                    _ => {}
                }
            }
            if let (Some(role_state), true) = (ready.role_state, self.config.report_applied) {
                self.outputs.push(HostOutput::RoleChanged {
                    partition,
                    role_state,
                });
            }
            self.groups
                .get_mut(&partition)
                .expect("a group with a Ready")
                .advance();
            self.touched.insert(partition);
            self.serve_reads(partition);
        }
        Ok(())
    }

    fn queue(&mut self, partition: PartitionId, message: Message) {
        let to = message.to;
        self.outbox
            .entry(to)
            .or_default()
            .messages
            .push((partition, message));
    }

    fn serve_snapshot_chunk(
        &mut self,
        partition: PartitionId,
        request: crate::raft::SnapshotChunkRequest,
    ) -> Result<(), String> {
        let applied_index = self.store.point(partition).map_or(0, |point| point.index);
        // A new transfer snapshots the state machine as it is now; a running one continues
        // from the image it started with.
        let index = if request.offset == 0 {
            applied_index
        } else {
            request.index
        };
        if !self.snapshots.contains_key(&(partition, index)) {
            if request.offset != 0 {
                // The image is gone: the next heartbeat restarts nothing, so let the leader
                // time the transfer out and start over.
                return Ok(());
            }
            let (point, data) = self
                .store
                .snapshot(partition)
                .map_err(|error| error.to_string())?;
            debug_assert_eq!(point.index, index);
            self.snapshots.insert(
                (partition, index),
                CachedSnapshot {
                    data,
                    last_used_tick: self.tick,
                },
            );
        }
        let cached = self
            .snapshots
            .get_mut(&(partition, index))
            .expect("cached above");
        cached.last_used_tick = self.tick;
        let start = (request.offset as usize).min(cached.data.len());
        let end = start
            .saturating_add(request.bytes_max)
            .min(cached.data.len());
        let chunk = cached.data[start..end].to_vec();
        let done = end == cached.data.len();
        if let Some(group) = self.groups.get_mut(&partition) {
            group.on_snapshot_chunk(request.to, index, request.offset, chunk, done);
            self.touched.insert(partition);
        }
        Ok(())
    }

    fn answer_applied_writes(
        &mut self,
        partition: PartitionId,
        entries: &[crate::raft::Entry],
        applied: Vec<AppliedCommand<M::Outcome>>,
    ) {
        for command in applied {
            if command.proposer != self.id.0 || command.proposer_session != self.session {
                continue;
            }
            // Within one session a request id names one write of one partition; a command
            // claiming otherwise was proposed in this node's name by someone else.
            let ours = self
                .pending_writes
                .get(command.request_id)
                .map(|write| write.partition == partition);
            if ours == Some(true) {
                self.pending_writes.remove(command.request_id);
                // A skipped copy says nothing for sure: the request either applied once
                // already (perhaps inside a snapshot this node installed, so it was never
                // answered) or was overtaken and never will.
                let result = match command.outcome {
                    CommandOutcome::TookEffect(outcome) => Ok(outcome),
                    CommandOutcome::Superseded | CommandOutcome::Undecodable(_) => {
                        Err(RequestError::OutcomeUnknown)
                    }
                };
                self.outputs.push(HostOutput::WriteAnswered {
                    request_id: command.request_id,
                    result,
                });
            }
        }
        // A write appended here whose index applied with another entry was lost in a
        // leadership change: it never committed, so it will never apply.
        let mut lost = Vec::new();
        for (request_id, write) in self.pending_writes.of_partition(partition) {
            if let Some((index, term)) = write.appended_at {
                if let Some(entry) = entries.iter().find(|entry| entry.index == index) {
                    if entry.term != term {
                        lost.push(request_id);
                    }
                }
            }
        }
        for request_id in lost {
            self.pending_writes.remove(request_id);
            self.outputs.push(HostOutput::WriteAnswered {
                request_id,
                result: Err(RequestError::NotLeader {
                    partition,
                    leader: self.groups.get(&partition).and_then(RaftGroup::leader),
                }),
            });
        }
    }

    fn serve_reads(&mut self, partition: PartitionId) {
        if self.pending_reads.of_partition(partition).next().is_none() {
            return;
        }
        let applied = self.store.point(partition).map_or(0, |point| point.index);
        let ready: Vec<u64> = self
            .pending_reads
            .of_partition(partition)
            .filter(|(_, read)| read.read_index.is_some_and(|index| index <= applied))
            .map(|(request_id, _)| request_id)
            .collect();
        for request_id in ready {
            let read = self.pending_reads.remove(request_id).expect("listed above");
            let result = self
                .store
                .read(partition, &read.request)
                .map_err(RequestError::from);
            if self.config.poison_on_missing_key
                && matches!(
                    result,
                    Err(RequestError::State(StateMachineError::KeyNotFound))
                )
            {
                self.fail("a read found no key".into());
                return;
            }
            self.outputs
                .push(HostOutput::ReadAnswered { request_id, result });
        }
    }

    /// Checkpoints the state machines and the log when due, and drops what they cover.
    fn maintain(&mut self) -> Result<(), String> {
        if self.applied_since_checkpoint >= self.config.checkpoint_applied_entries {
            self.store.checkpoint().map_err(|error| error.to_string())?;
            self.applied_since_checkpoint = 0;
            self.counters.state_machine_checkpoints += 1;
            for (partition, group) in self.groups.iter_mut() {
                let index = self
                    .store
                    .checkpointed_index(*partition)
                    .saturating_sub(self.config.log_catch_up_entries);
                if index > group.log().snapshot_index() {
                    group.compact(index);
                    self.touched.insert(*partition);
                }
            }
        }
        if self.raft_log.segment()
            >= self.log_checkpoint_segment + self.config.log_checkpoint_segments
            && !self.raft_log.has_staged()
        {
            let live: Vec<LiveLog<'_>> = self
                .groups
                .iter()
                .map(|(partition, group)| {
                    let log = group.log();
                    let base_index = log.snapshot_index();
                    let base_term = log.term(base_index).expect("the base term is kept");
                    // Only what is durable: entries appended since the last Ready are not.
                    let entries = (log.first_index()..=log.persisted())
                        .filter_map(|index| log.entry(index))
                        .collect();
                    LiveLog {
                        partition: *partition,
                        hard_state: group.durable_hard_state(),
                        base: (base_index, base_term),
                        entries,
                    }
                })
                .collect();
            self.raft_log
                .checkpoint(live)
                .map_err(|error: RaftLogError| error.to_string())?;
            self.log_checkpoint_segment = self.raft_log.segment();
            self.counters.log_checkpoints += 1;
        }
        Ok(())
    }

    fn fail_all_requests(&mut self) {
        let reason = self.poisoned.clone().unwrap_or_default();
        for request_id in self.pending_writes.take_all() {
            self.outputs.push(HostOutput::WriteAnswered {
                request_id,
                result: Err(RequestError::Poisoned(reason.clone())),
            });
        }
        for request_id in self.pending_reads.take_all() {
            self.outputs.push(HostOutput::ReadAnswered {
                request_id,
                result: Err(RequestError::Poisoned(reason.clone())),
            });
        }
    }

    // ---- outputs ----

    /// Everything for each peer since the last call: one envelope per peer, or several when
    /// a round's messages would not fit one frame (an empty one is a liveness ping).
    pub fn take_envelopes(&mut self) -> Vec<(NodeId, RaftEnvelope)> {
        let envelopes: Vec<(NodeId, RaftEnvelope)> = std::mem::take(&mut self.outbox)
            .into_iter()
            .flat_map(|(to, envelope)| {
                envelope
                    .into_frames()
                    .into_iter()
                    .map(move |part| (to, part))
            })
            .collect();
        self.counters.envelopes_sent += envelopes.len() as u64;
        self.counters.messages_sent += envelopes
            .iter()
            .map(|(_, envelope)| envelope.messages.len() as u64)
            .sum::<u64>();
        envelopes
    }

    pub fn take_outputs(&mut self) -> Vec<HostOutputOf<M>> {
        std::mem::take(&mut self.outputs)
    }
}

/// A stable digest of an entry, for checkers that compare what nodes applied.
pub fn entry_digest(entry: &Entry) -> u64 {
    let kind = match &entry.kind {
        EntryKind::Empty => 0,
        EntryKind::Command(bytes) => xxhash_rust::xxh3::xxh3_64(bytes),
        EntryKind::ConfigChange(change) => {
            xxhash_rust::xxh3::xxh3_64(&postcard::to_stdvec(change).expect("changes serialise"))
        }
    };
    kind ^ entry.term.rotate_left(17)
}

/// The context a read carries through Raft: its request id offset by the session, so an
/// answer to a read of an earlier run of this node (request ids restart at every open) never
/// matches a read of this one.
fn read_context(session: u64, request_id: u64) -> u64 {
    session.wrapping_add(request_id)
}

/// The election-timeout stream of one group on one node. The node id is mixed in so that
/// nodes given the same seed still draw different timeouts (identical draws split every vote).
fn group_rng(rng_seed: u64, node: NodeId, partition: PartitionId) -> SeededRng {
    SeededRng::split(rng_seed ^ (u64::from(node.0) << 40), partition.0)
}

fn propose_refusal(partition: PartitionId, error: ProposeError) -> RequestError {
    match error {
        ProposeError::NoLeader => RequestError::NotLeader {
            partition,
            leader: None,
        },
        ProposeError::NotLeader { leader } => RequestError::NotLeader { partition, leader },
        ProposeError::TransferInProgress | ProposeError::ConfigChangePending => {
            RequestError::Busy(partition)
        }
        ProposeError::InvalidConfigChange(error) => {
            RequestError::InvalidMembershipChange(error.to_string())
        }
    }
}
