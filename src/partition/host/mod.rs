//! A node's partitions: every Raft group the node hosts, running any [`StateMachine`],
//! driven together so that a round of all of them costs one append and one sync of the
//! node-wide Raft log (group commit), one envelope per peer (all groups' messages to that
//! peer batched), and one pass of applies into the state machines.
//!
//! This file owns the host's state, its opening and recovery, partition creation and the
//! outputs; `requests` the client requests and their answers, `routing` requests routed
//! from other nodes (and this node's own routed writes), `intake` the messages peers send,
//! `round` the round and its sync, `maintenance` ticks, the watch of peers and the
//! checkpoints.
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
use crate::partition::replica_store::{
    AppliedCommand, AppliedPoint, CommandOutcome, CommittedRun, RemovedVote, ReplicaStore,
    INCARNATION_BASE_MAX,
};
use crate::partition::state_machine::{StateMachine, StateMachineError};
use crate::partition::PartitionId;
use crate::raft::{
    Configuration, Entry, EntryKind, GroupStatus, Message, ProposeError, RaftConfig, RaftGroup,
    Ready, RecoveredState, Role, RoleState, SnapshotMeta, BOOTSTRAP_INDEX,
};
use crate::seams::{DiskError, Rng, SeededRng, SharedDisk};
use std::collections::{BTreeMap, BTreeSet};

mod intake;
mod maintenance;
mod requests;
mod round;
mod routing;
pub use routing::{decode_answer, error_of, refusal_of, SERVING_REQUESTS_MAX};
#[cfg(test)]
mod tests;

/// The least catch-up tail a partition keeps, however many share the node's
/// (`HostConfig::log_catch_up_entries_total`).
const LOG_CATCH_UP_ENTRIES_MIN: u64 = 16;

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
    /// The catch-up tails of all the node's partitions together, in entries: with many
    /// partitions each keeps an equal share (at least `LOG_CATCH_UP_ENTRIES_MIN`, at most
    /// `log_catch_up_entries`). Without it 1,000 busy partitions kept 1,024 entries each in
    /// memory, and every checkpoint of the Raft log rewrote them all (100 MiB, a 1 s stall).
    pub log_catch_up_entries_total: u64,
    /// Segments the Raft log may grow by before its live state is rewritten.
    pub log_checkpoint_segments: u64,
    /// Ticks a request waits for its answer before it is answered "outcome unknown".
    pub request_timeout_ticks: u64,
    /// The page cache of the replicas' database (`partitions.redb`).
    pub store_cache_bytes: usize,
    /// Report every applied entry and role change in the outputs, for the simulator's
    /// checkers.
    pub report_applied: bool,
    /// A canary's planted bug: send acknowledgements and votes before the log is synced.
    /// Never set outside a canary scenario.
    pub acknowledge_before_sync: bool,
    /// A canary's planted bug: the replica store's at-most-once check lets copies of commands
    /// (and commands their session overtook or retired) take effect as if new. Never set
    /// outside a canary scenario.
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
            log_catch_up_entries_total: 16 * 1024,
            log_checkpoint_segments: 4,
            request_timeout_ticks: 50,
            store_cache_bytes: crate::partition::replica_store::DEFAULT_CACHE_BYTES,
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
    /// A request handler refused the request; its message.
    #[error("{0}")]
    HandlerRefused(String),
    /// A request handler panicked, failed an access, or missed its deadline.
    #[error("{0}")]
    HandlerFailed(String),
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
    /// Replicas deleted from this node after their group removed them.
    pub replicas_removed: u64,
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
    /// The groups whose last Ready said this node leads them.
    leading: BTreeSet<PartitionId>,
    store: ReplicaStore<M>,
    raft_log: RaftLogStore,
    outbox: BTreeMap<NodeId, RaftEnvelope>,
    outputs: Vec<HostOutputOf<M>>,
    next_request_id: u64,
    pending_writes: PendingRequests<PendingWrite>,
    pending_reads: PendingRequests<PendingRead<M::Query>>,
    /// Routed writes this node originated, until its router is done with them.
    routed_writes: PendingRequests<routing::RoutedWrite>,
    /// Routed writes this node proposed as leader for their origins.
    serving_writes: BTreeMap<routing::ServingKey, routing::ServingWrite>,
    /// Routed reads this node serves: its read's request id to the origin, its session and
    /// its request id.
    serving_reads: BTreeMap<u64, (NodeId, u64, u64)>,
    route_outbox: Vec<(NodeId, crate::partition::route::RouteMessage)>,
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
    /// The prepared round's log records are written and their sync is the driver's
    /// ([`PartitionHost::write_round`]); only its report completes the round.
    awaiting_sync: bool,
    tick: u64,
    applied_since_checkpoint: u64,
    log_checkpoint_segment: u64,
    poisoned: Option<String>,
    counters: HostCounters,
    /// Replicas to delete once the round that is out completes.
    removals: BTreeSet<PartitionId>,
}

/// A replica created again on a node it left starts from its earlier replica's last term
/// and vote (unless its own log is further on): the node may have voted in that term, and
/// must not vote twice. Starting at the same term, not past it, keeps the leader that adds
/// it back from stepping down.
fn keep_removed_vote(log: &mut RecoveredLog, removed: RemovedVote) {
    if log.hard_state.term < removed.term {
        log.hard_state.term = removed.term;
        log.hard_state.vote = removed.vote;
    }
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
        let mut store =
            ReplicaStore::open_with_cache(disk.clone(), machine, config.store_cache_bytes)
                .map_err(damaged)?;
        let fresh_base = SeededRng::split(rng_seed, u64::MAX - 1).below(INCARNATION_BASE_MAX);
        let session = store.begin_incarnation(fresh_base).map_err(damaged)?;
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
        let mut removed_votes = BTreeMap::new();
        for partition in store.points().keys() {
            if let Some(vote) = store.removed_vote(*partition).map_err(damaged)? {
                removed_votes.insert(*partition, vote);
            }
        }
        for (partition, point) in store.points() {
            let mut log = recovered.remove(partition);
            if let Some(vote) = removed_votes.get(partition) {
                keep_removed_vote(log.get_or_insert_with(RecoveredLog::default), *vote);
            }
            let state = recovered_state(point, log);
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
            leading: BTreeSet::new(),
            outbox: BTreeMap::new(),
            outputs: Vec::new(),
            next_request_id: 0,
            pending_writes: PendingRequests::default(),
            pending_reads: PendingRequests::default(),
            routed_writes: PendingRequests::default(),
            serving_writes: BTreeMap::new(),
            serving_reads: BTreeMap::new(),
            route_outbox: Vec::new(),
            snapshots: BTreeMap::new(),
            peer_heard_tick: BTreeMap::new(),
            snapshot_chunk_tick: BTreeMap::new(),
            peers: std::collections::BTreeSet::new(),
            peers_stale: true,
            touched,
            prepared: None,
            awaiting_sync: false,
            tick: 0,
            applied_since_checkpoint: 0,
            log_checkpoint_segment,
            poisoned: None,
            counters: HostCounters::default(),
            removals: BTreeSet::new(),
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

    /// The state machine every partition here runs (its in-memory view, no transaction).
    pub fn machine(&self) -> &M {
        self.store.machine()
    }

    pub fn machine_mut(&mut self) -> &mut M {
        self.store.machine_mut()
    }

    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.groups.keys().copied()
    }

    pub fn status(&self, partition: PartitionId) -> Option<GroupStatus> {
        self.groups.get(&partition).map(RaftGroup::status)
    }

    /// The groups this node leads as of their last Ready: a pass over leaders costs their
    /// number, not the host's. A group that won an election since its last Ready is not in
    /// yet, and one that lost it is not out yet; its leader cannot commit anything before
    /// that Ready, since its followers have not heard from it.
    /// The host's tick when it last heard from `peer` (any envelope, empty ones included).
    pub fn peer_heard_tick(&self, peer: NodeId) -> Option<u64> {
        self.peer_heard_tick.get(&peer).copied()
    }

    /// Ticks since the host opened.
    pub fn ticks(&self) -> u64 {
        self.tick
    }

    pub fn leading(&self) -> &BTreeSet<PartitionId> {
        &self.leading
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
        let removed_vote = match self.store.removed_vote(partition) {
            Ok(vote) => vote,
            Err(error) => return Err(self.poison(error.to_string())),
        };
        if let Err(error) = self.store.create_partition(partition, point.clone()) {
            return Err(self.poison(error.to_string()));
        }
        let mut log = RecoveredLog::default();
        if let Some(vote) = removed_vote {
            keep_removed_vote(&mut log, vote);
        }
        let group = RaftGroup::recover(
            self.id,
            self.config.raft.clone(),
            recovered_state(&point, Some(log)),
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

    /// Deletes this node's replica of `partition`: the Raft log forgets it (synced), then
    /// its state, sessions and point go in one synced commit, remembering the last term and
    /// vote it had. Requests waiting on it fail. `Ok(false)`: a round is out; the removal
    /// is done as soon as it completes. Only for a replica its group no longer includes: the
    /// caller knows that from a committed configuration without it.
    pub fn remove_partition(&mut self, partition: PartitionId) -> Result<bool, RequestError> {
        self.check_usable()?;
        if !self.groups.contains_key(&partition) {
            return Ok(true);
        }
        if self.prepared.is_some() || self.awaiting_sync {
            self.removals.insert(partition);
            return Ok(false);
        }
        self.remove_now(partition)
    }

    /// The removals asked for while a round was out (see [`PartitionHost::remove_partition`]).
    pub(super) fn remove_deferred(&mut self) -> Result<(), RequestError> {
        for partition in std::mem::take(&mut self.removals) {
            self.remove_now(partition)?;
        }
        Ok(())
    }

    fn remove_now(&mut self, partition: PartitionId) -> Result<bool, RequestError> {
        let Some(group) = self.groups.get(&partition) else {
            return Ok(true);
        };
        let last_vote = RemovedVote {
            term: group.term(),
            vote: group.vote(),
        };
        self.raft_log.stage_removed(partition);
        if let Err(error) = self.raft_log.commit() {
            return Err(self.poison(error.to_string()));
        }
        if let Err(error) = self.store.remove_partition(partition, last_vote) {
            return Err(self.poison(error.to_string()));
        }
        self.groups.remove(&partition);
        self.leading.remove(&partition);
        self.touched.remove(&partition);
        self.snapshot_chunk_tick.remove(&partition);
        self.snapshots.retain(|(id, _), _| *id != partition);
        self.peers_stale = true;
        let writes: Vec<u64> = self
            .pending_writes
            .of_partition(partition)
            .map(|(request_id, _)| request_id)
            .collect();
        for request_id in writes {
            self.pending_writes.remove(request_id);
            self.outputs.push(HostOutput::WriteAnswered {
                request_id,
                result: Err(RequestError::UnknownPartition(partition)),
            });
        }
        let reads: Vec<u64> = self
            .pending_reads
            .of_partition(partition)
            .map(|(request_id, _)| request_id)
            .collect();
        for request_id in reads {
            self.answer_read(request_id, Err(RequestError::UnknownPartition(partition)));
        }
        self.counters.replicas_removed += 1;
        Ok(true)
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

/// The election-timeout stream of one group on one node. The node id is mixed in so that
/// nodes given the same seed still draw different timeouts (identical draws split every vote).
fn group_rng(rng_seed: u64, node: NodeId, partition: PartitionId) -> SeededRng {
    SeededRng::split(rng_seed ^ (u64::from(node.0) << 40), partition.0)
}
