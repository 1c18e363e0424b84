//! A Borough node: the event coordinator, its store and its peers, driven as a sans-IO state
//! machine. The same `Node` runs under the production shell and inside the simulator.
//!
//! The driver's loop, in both worlds:
//! 1. hand the node its inputs: `put_event`, `handle_message`, `handle_deadlines` (when
//!    `next_deadline_micros` has passed on the node's clock);
//! 2. when `has_staged_writes`, call `flush` once the disk can take it: every write staged
//!    since the last flush shares one commit and one sync (group commit);
//! 3. collect `take_outputs` (client answers, interval-closed notices).
//!
//! Invariants: nothing is acknowledged, to a client or to a peer, before the write is durable
//! (unless a canary plants the opposite on purpose); a store whose sync failed is poisoned and
//! the node refuses writes until it is restarted and recovers from disk.
//!
//! Whom it listens to: messages arrive decoded and checked by the wire codec; the node takes
//! them only from members of its peer table (Raft traffic, replicas, confirmations) or, for
//! the event protocol, from [`NodeId::UNATTRIBUTED`] (the driver's name for the AllData HTTP
//! peer endpoints, which, like the original's, trust whoever reaches the peer port). Anything
//! else is refused and counted in `messages_refused`: an outsider must not write events, stop
//! their repair, or speak in a Raft group. Members are trusted to run the protocol; their
//! messages are checked for form, not for truth.

use crate::coordinator::{CommitLevel, PutError, ReplicaWrite, WriteAction};
use crate::events::{
    EventKey, EventStore, IntervalClosed, KeyGenerator, StageOutcome, StoreConfig, StoreError,
};
use crate::ids::{Location, NodeId};
use crate::partition::command::KvOperation;
use crate::partition::host::{
    HostConfig, HostOutput, PartitionHost, PartitionStart, ReadRequest, RequestError,
};
use crate::partition::PartitionId;
use crate::placement::{self, PeerTable, ReplicaPlan, ReplicationStrategy};
use crate::seams::{Clock, Network, Rng, SharedDisk};
use crate::wire::{Message, ReplicaRefusal};
use std::collections::{BTreeMap, BTreeSet};

/// A bug planted on purpose so that a canary scenario proves the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Count the local replica as written as soon as it is staged, before its sync.
    AcknowledgeBeforeDurable,
    /// Take every message, from members or not.
    TrustAnySender,
    /// Answer a QUORUM put once one replica holds it, as if it were ONE.
    QuorumOfOne,
    /// Start the key generator without its durable reservation.
    ForgetKeyReservation,
    /// Write a put to only as many replicas as its commit level needs, and confirm it
    /// there: the event never reaches its replication factor, and no repair sees it short.
    ReplicateOnlyToCommitLevel,
    /// Plan a put's replicas without the strategy's zone and region spread.
    IgnoreZoneSpread,
    /// Re-arm the repair timer at the moment it fired instead of one interval on.
    RepairTimerNotAdvanced,
    /// Repair every event of a round with the first one's bytes (a loop that reads its
    /// event once): a replica that lacked a key stores another event under it.
    RepairReusesFirstEvent,
    /// Events replayed from the log at startup are left out of their intervals' summaries.
    ForgetReplayedIntervalCounts,
    /// Answer a put only once more replicas than its level needs hold it (`>` for `>=`):
    /// every level but ALL is answered late, and ALL never where no spare replica exists.
    AnswerOnlyPastRequired,
    /// Recovery takes a torn tail (a crash during an unsynced write) for damage at rest: the
    /// event log is cut there and counts it corrupt, the Raft log is refused.
    TornTailsAreDamage,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub location: Location,
    pub replication_factor: u32,
    pub strategy: ReplicationStrategy,
    pub default_commit_level: CommitLevel,
    /// A replica that has not answered by then is replaced ("get it done").
    pub replica_timeout_micros: u64,
    /// A timed-out peer is tried after healthy ones for this long.
    pub suspect_micros: u64,
    /// An event still short of its replication factor this long after its timestamp is
    /// repaired by whichever holder notices.
    pub repair_delay_micros: u64,
    pub repair_interval_micros: u64,
    /// Repairs started per round, so a backlog never floods the network.
    pub repair_batch_max: usize,
    pub interval_check_micros: u64,
    pub store: StoreConfig,
    pub planted_bug: Option<PlantedBug>,
    /// Raft partitions on this node; `None` runs the event store alone.
    pub partitions: Option<PartitionsConfig>,
}

/// How the node runs its Raft partitions.
#[derive(Clone, Debug)]
pub struct PartitionsConfig {
    pub host: HostConfig,
    /// One Raft tick every this long on the node's clock.
    pub tick_micros: u64,
}

impl Default for PartitionsConfig {
    fn default() -> Self {
        Self {
            host: HostConfig::default(),
            tick_micros: 10_000,
        }
    }
}

impl NodeConfig {
    pub fn new(id: NodeId, location: Location) -> Self {
        Self {
            id,
            location,
            replication_factor: 3,
            strategy: ReplicationStrategy::default(),
            default_commit_level: CommitLevel::Quorum,
            replica_timeout_micros: 500_000,
            suspect_micros: 5_000_000,
            repair_delay_micros: 2_000_000,
            repair_interval_micros: 1_000_000,
            repair_batch_max: 64,
            interval_check_micros: 1_000_000,
            store: StoreConfig::default(),
            planted_bug: None,
            partitions: None,
        }
    }
}

/// The node's view of the world: the four seams.
pub struct NodeSeams {
    pub clock: Box<dyn Clock>,
    pub network: Box<dyn Network<Message>>,
    pub disk: SharedDisk,
    pub rng: Box<dyn Rng>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeOutput {
    PutAnswered {
        request_id: u64,
        result: Result<EventKey, PutError>,
    },
    IntervalClosed(IntervalClosed),
    /// Answers and observations of the node's Raft partitions.
    Partition(HostOutput),
}

/// What the node has done since it opened, for metrics. Counting never changes behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Replica writes to a peer that failed or timed out.
    pub replica_failures: u64,
    /// Replica writes started on a spare peer after a failure or timeout ("get it done").
    pub respreads: u64,
    /// Repairs started by this node for events it holds short of their replication factor.
    pub repairs: u64,
    /// Group commits: each is one log append and one sync.
    pub group_commits: u64,
    /// Peer messages refused: from a node that is not a member, or refused by a partition.
    pub messages_refused: u64,
}

fn count_failures_and_respreads(counters: &mut NodeCounters, actions: &[WriteAction]) {
    for action in actions {
        match action {
            WriteAction::Suspect(_) => counters.replica_failures += 1,
            WriteAction::SendReplicate(_) => counters.respreads += 1,
            _ => {}
        }
    }
}

/// Something staged in the store that is answered once the commit is known.
#[derive(Debug)]
enum AwaitingCommit {
    Local {
        write_id: u64,
    },
    Remote {
        from: NodeId,
        write_id: u64,
        key: EventKey,
    },
}

#[derive(Debug)]
struct ActiveWrite {
    write: ReplicaWrite,
    event: Vec<u8>,
    request_id: Option<u64>,
}

pub struct Node {
    config: NodeConfig,
    seams: NodeSeams,
    store: EventStore,
    keys: KeyGenerator,
    peers: PeerTable,
    writes: BTreeMap<u64, ActiveWrite>,
    /// Every write's earliest replica deadline, ordered, so finding what is due never scans
    /// all writes; `indexed_deadlines` says which entry each write has.
    write_deadlines: BTreeSet<(u64, u64)>,
    indexed_deadlines: BTreeMap<u64, u64>,
    write_ids_by_key: BTreeMap<EventKey, u64>,
    next_write_id: u64,
    awaiting_commit: Vec<AwaitingCommit>,
    suspected_until: BTreeMap<NodeId, u64>,
    next_repair_micros: u64,
    /// When this node first saw each unconfirmed event it holds (its local clock).
    unconfirmed_since: BTreeMap<EventKey, u64>,
    next_interval_check_micros: u64,
    outputs: Vec<NodeOutput>,
    counters: NodeCounters,
    partitions: Option<PartitionHost>,
    /// Set when the partition store was found damaged at open (see `partition::raft_log`).
    partitions_damaged: Option<String>,
    next_raft_tick_micros: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Node")
            .field("id", &self.config.id)
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node: recovers the store and the key generator from disk.
    pub fn open(config: NodeConfig, seams: NodeSeams) -> Result<Self, StoreError> {
        assert!(
            config.replication_factor > 0,
            "replication factor must be positive"
        );
        let mut store_config = config.store.clone();
        store_config.forget_replayed_interval_counts =
            config.planted_bug == Some(PlantedBug::ForgetReplayedIntervalCounts);
        let torn_tails_are_damage = config.planted_bug == Some(PlantedBug::TornTailsAreDamage);
        store_config.torn_tails_are_damage = torn_tails_are_damage;
        let store = EventStore::open(seams.disk.clone(), store_config)?;
        let mut keys =
            KeyGenerator::open(config.id, seams.disk.as_ref()).map_err(StoreError::Disk)?;
        if config.planted_bug == Some(PlantedBug::ForgetKeyReservation) {
            keys.forget_reservation();
        }
        let now = seams.clock.now_micros();
        let mut seams = seams;
        let mut partitions_damaged = None;
        let partitions = match &config.partitions {
            // Drawn only when partitions run, so event-store runs keep their random streams.
            Some(partitions) => match PartitionHost::open(
                config.id,
                seams.disk.clone(),
                HostConfig {
                    torn_tails_are_damage,
                    ..partitions.host.clone()
                },
                seams.rng.next_u64(),
            ) {
                Ok(host) => Some(host),
                // The node still serves events; its partition replicas stay out until an
                // operator rebuilds them.
                Err(RequestError::Damaged(reason)) => {
                    tracing::error!(node = %config.id, %reason, "partition replicas out of service");
                    partitions_damaged = Some(reason);
                    None
                }
                Err(error) => return Err(StoreError::Corrupt(format!("partitions: {error}"))),
            },
            None => None,
        };
        // No host (none configured, or its store is damaged): no Raft deadline at all, or
        // a deadline nobody advances would fire forever.
        let next_raft_tick_micros = match (&config.partitions, &partitions) {
            (Some(settings), Some(_)) => now + settings.tick_micros,
            _ => u64::MAX / 2,
        };
        Ok(Self {
            partitions,
            partitions_damaged,
            next_raft_tick_micros,
            peers: PeerTable::new(config.id, config.location.clone()),
            store,
            keys,
            writes: BTreeMap::new(),
            write_deadlines: BTreeSet::new(),
            indexed_deadlines: BTreeMap::new(),
            write_ids_by_key: BTreeMap::new(),
            next_write_id: 0,
            awaiting_commit: Vec::new(),
            suspected_until: BTreeMap::new(),
            next_repair_micros: now + config.repair_interval_micros,
            unconfirmed_since: BTreeMap::new(),
            next_interval_check_micros: now,
            outputs: Vec::new(),
            counters: NodeCounters::default(),
            config,
            seams,
        })
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn counters(&self) -> NodeCounters {
        let refused_by_partitions = self
            .partitions
            .as_ref()
            .map_or(0, |host| host.counters().messages_refused);
        NodeCounters {
            messages_refused: self.counters.messages_refused + refused_by_partitions,
            ..self.counters
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The event stored here under `key`, if this node holds it durably.
    pub fn get_event(&self, key: &EventKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(key)
    }

    /// Events this node holds durably with keys in `[from, to)`, in key order, at most `limit`.
    pub fn scan_events(
        &self,
        from: Option<&EventKey>,
        to_exclusive: Option<&EventKey>,
        limit: usize,
    ) -> Result<Vec<(EventKey, Vec<u8>)>, StoreError> {
        self.store.range(from, to_exclusive, limit)
    }

    /// A member is up and runs at `location`: placement uses it.
    pub fn add_peer(&mut self, peer: NodeId, location: Location) {
        self.peers.add_peer(peer, location);
    }

    /// A member whose place is not known yet (configured, never heard from): it counts
    /// towards the cluster's size, and is down until `add_peer` says where it runs.
    pub fn add_unplaced_peer(&mut self, peer: NodeId) {
        self.peers.add_unplaced(peer);
    }

    /// A member went silent: it stays a member (and a replica's eventual home), but
    /// placement tries it last and commit levels count only the nodes that are up.
    pub fn mark_peer_down(&mut self, peer: NodeId) -> bool {
        self.peers.mark_down(peer)
    }

    /// Removes a member from the peer table.
    pub fn drop_peer(&mut self, peer: NodeId) -> bool {
        self.peers.drop_peer(peer)
    }

    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    fn now(&self) -> u64 {
        self.seams.clock.now_micros()
    }

    /// A client asks this node to coordinate a new event. The answer arrives as
    /// `NodeOutput::PutAnswered` with the same `request_id`. Returns the event's key when
    /// one was issued (the write started), so a client that stops waiting can still be told
    /// which key to check before it retries.
    pub fn put_event(
        &mut self,
        request_id: u64,
        event: Vec<u8>,
        commit_level: Option<CommitLevel>,
    ) -> Option<EventKey> {
        let commit_level = commit_level.unwrap_or(self.config.default_commit_level);
        match self.start_put(request_id, event, commit_level) {
            Ok(key) => Some(key),
            Err(error) => {
                self.outputs.push(NodeOutput::PutAnswered {
                    request_id,
                    result: Err(error),
                });
                None
            }
        }
    }

    fn start_put(
        &mut self,
        request_id: u64,
        event: Vec<u8>,
        commit_level: CommitLevel,
    ) -> Result<EventKey, PutError> {
        let max = self.config.store.max_event_bytes;
        if event.len() > max {
            return Err(PutError::EventTooLarge {
                len: event.len(),
                max,
            });
        }
        let strategy = if self.config.planted_bug == Some(PlantedBug::IgnoreZoneSpread) {
            ReplicationStrategy::default()
        } else {
            self.config.strategy
        };
        let plan = placement::plan(
            &self.peers,
            self.config.replication_factor,
            strategy,
            &self.suspected(),
            self.seams.rng.as_mut(),
        )?;
        // A level the nodes that are up cannot meet fails now, before anything is written.
        let replication_factor = self.config.replication_factor;
        let required = commit_level.required(replication_factor);
        let up = 1 + self.peers.up_count() as u32;
        if up < required {
            return Err(PutError::NotEnoughNodesUp {
                commit_level,
                required,
                replication_factor,
                up,
            });
        }
        if self.store.is_poisoned() {
            return Err(PutError::StoreUnavailable(StoreError::Poisoned.to_string()));
        }
        let now = self.now();
        let key = match self.keys.next(now, self.seams.disk.as_ref()) {
            Ok(key) => key,
            Err(error @ crate::events::KeyError::ClockOutOfRange(_)) => {
                return Err(PutError::StoreUnavailable(error.to_string()));
            }
            Err(error) => {
                // The reservation's sync failed: the disk is not to be trusted any more.
                self.store.poison();
                return Err(PutError::StoreUnavailable(error.to_string()));
            }
        };
        self.begin_write(
            key.clone(),
            event,
            plan,
            Some((request_id, commit_level)),
            now,
        );
        Ok(key)
    }

    /// Starts a replica write: a client's put (`client` set) or a repair by a holder.
    fn begin_write(
        &mut self,
        key: EventKey,
        event: Vec<u8>,
        plan: ReplicaPlan,
        client: Option<(u64, CommitLevel)>,
        now: u64,
    ) {
        let write_id = self.allocate_write_id();
        let commit_level = client.map(|(_, level)| match level {
            CommitLevel::Quorum if self.config.planted_bug == Some(PlantedBug::QuorumOfOne) => {
                CommitLevel::One
            }
            level => level,
        });
        let mut plan = plan;
        let mut replication_factor = self.config.replication_factor;
        if let (Some(level), Some(PlantedBug::ReplicateOnlyToCommitLevel)) =
            (commit_level, self.config.planted_bug)
        {
            replication_factor = level.required(replication_factor);
            plan.targets.truncate(replication_factor as usize);
        }
        let (mut write, actions) = ReplicaWrite::start(
            key.clone(),
            self.config.id,
            plan,
            replication_factor,
            commit_level,
            client.is_none(),
            now + self.config.replica_timeout_micros,
        );
        if self.config.planted_bug == Some(PlantedBug::AnswerOnlyPastRequired) {
            // Nothing is answered at start (no replica holds a client's event yet).
            write.plant_answer_only_past_required();
        }
        self.write_ids_by_key.insert(key, write_id);
        let request_id = client.map(|(request_id, _)| request_id);
        self.writes.insert(
            write_id,
            ActiveWrite {
                write,
                event,
                request_id,
            },
        );
        self.apply(write_id, actions);
    }

    fn allocate_write_id(&mut self) -> u64 {
        self.next_write_id += 1;
        self.next_write_id
    }

    fn suspected(&self) -> BTreeSet<NodeId> {
        let now = self.now();
        self.suspected_until
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(node, _)| *node)
            .collect()
    }

    /// Whether a message of this kind from `from` is taken (see the module doc).
    fn accepts(&self, from: NodeId, message: &Message) -> bool {
        if self.config.planted_bug == Some(PlantedBug::TrustAnySender) {
            return true;
        }
        if from == self.config.id {
            return false;
        }
        match message {
            Message::Replicate { .. } | Message::Confirm { .. } => {
                from == NodeId::UNATTRIBUTED || self.peers.is_member(from)
            }
            Message::ReplicateResult { .. } => self.peers.is_member(from),
            // Raft traffic needs partitions here to take it.
            Message::Raft(_) => self.peers.is_member(from) && self.partitions.is_some(),
        }
    }

    /// A message from a peer, already decoded and checked by the wire codec.
    pub fn handle_message(&mut self, from: NodeId, message: Message) {
        if !self.accepts(from, &message) {
            tracing::debug!(node = %self.config.id, %from, kind = message.kind(), "message refused: not from a member, or no partitions here");
            self.counters.messages_refused += 1;
            return;
        }
        match message {
            Message::Replicate {
                write_id,
                key,
                event,
            } => self.handle_replicate(from, write_id, key, event),
            Message::ReplicateResult {
                write_id,
                key,
                outcome,
            } => {
                let Some(active) = self.writes.get_mut(&write_id) else {
                    return;
                };
                if active.write.key() != &key {
                    return;
                }
                let deadline = self.seams.clock.now_micros() + self.config.replica_timeout_micros;
                let actions = match outcome {
                    Ok(()) => active.write.on_success(from),
                    Err(_) => {
                        self.counters.replica_failures += 1;
                        let actions = active.write.on_failure(from, deadline);
                        count_failures_and_respreads(&mut self.counters, &actions);
                        actions
                    }
                };
                self.apply(write_id, actions);
            }
            Message::Confirm { keys } => {
                if !self.store.is_poisoned() {
                    // Best effort: a lost confirm only costs a redundant repair later.
                    let _ = self.store.stage_confirm(&keys);
                }
            }
            Message::Raft(envelope) => {
                if let Some(host) = &mut self.partitions {
                    host.receive(from, envelope);
                    self.pump_partitions();
                }
            }
        }
    }

    // ---- partitions ----

    /// The node's Raft partitions, when it runs them.
    pub fn partitions(&self) -> Option<&PartitionHost> {
        self.partitions.as_ref()
    }

    fn host(&mut self) -> Result<&mut PartitionHost, RequestError> {
        if let Some(reason) = &self.partitions_damaged {
            return Err(RequestError::Damaged(reason.clone()));
        }
        self.partitions
            .as_mut()
            .ok_or(RequestError::UnknownPartition(PartitionId(u64::MAX)))
    }

    /// Why this node's partition replicas are out of service, if they are.
    pub fn partitions_damaged(&self) -> Option<&str> {
        self.partitions_damaged.as_deref()
    }

    pub fn create_partition(
        &mut self,
        partition: PartitionId,
        start: PartitionStart,
    ) -> Result<(), RequestError> {
        self.host()?.create_partition(partition, start)?;
        self.pump_partitions();
        Ok(())
    }

    /// Proposes a write to `partition`; the answer is a `NodeOutput::Partition`.
    pub fn partition_write(
        &mut self,
        partition: PartitionId,
        operation: KvOperation,
    ) -> Result<u64, RequestError> {
        let request_id = self.host()?.write(partition, operation)?;
        self.pump_partitions();
        Ok(request_id)
    }

    /// Starts a linearizable read of `partition`; the answer is a `NodeOutput::Partition`.
    pub fn partition_read(
        &mut self,
        partition: PartitionId,
        request: ReadRequest,
    ) -> Result<u64, RequestError> {
        let request_id = self.host()?.read(partition, request)?;
        self.pump_partitions();
        Ok(request_id)
    }

    /// Proposes a membership change of `partition`; this node must lead it.
    pub fn partition_change_membership(
        &mut self,
        partition: PartitionId,
        change: crate::raft::ConfigChange,
    ) -> Result<(), RequestError> {
        self.host()?.change_membership(partition, change)?;
        self.pump_partitions();
        Ok(())
    }

    /// Hands the leadership of `partition` (which this node leads) to `target`.
    pub fn partition_transfer_leadership(
        &mut self,
        partition: PartitionId,
        target: NodeId,
    ) -> Result<(), RequestError> {
        self.host()?.transfer_leadership(partition, target)?;
        self.pump_partitions();
        Ok(())
    }

    /// Ticks the partitions for the time that passed (a few ticks at most: after a pause or a
    /// clock jump, catching up tick by tick would only cause elections).
    fn tick_partitions(&mut self, now: u64) {
        let Some(tick_micros) = self
            .config
            .partitions
            .as_ref()
            .map(|partitions| partitions.tick_micros)
        else {
            return;
        };
        if let Some(host) = &mut self.partitions {
            let mut ticks = 0;
            while self.next_raft_tick_micros <= now && ticks < 3 {
                host.tick();
                self.next_raft_tick_micros += tick_micros;
                ticks += 1;
            }
            if self.next_raft_tick_micros <= now {
                self.next_raft_tick_micros = now + tick_micros;
            }
        }
        self.pump_partitions();
    }

    /// Starts the partitions' next round if one is due, and hands on what they produced.
    fn pump_partitions(&mut self) {
        let Some(host) = &mut self.partitions else {
            return;
        };
        host.prepare_round();
        for (to, envelope) in host.take_envelopes() {
            self.seams.network.send(to, Message::Raft(envelope));
        }
        self.outputs
            .extend(host.take_outputs().into_iter().map(NodeOutput::Partition));
    }

    fn handle_replicate(&mut self, from: NodeId, write_id: u64, key: EventKey, event: Vec<u8>) {
        let now = self.now();
        match self.store.stage_event(&key, &event, now) {
            Ok(StageOutcome::Staged) => self.awaiting_commit.push(AwaitingCommit::Remote {
                from,
                write_id,
                key,
            }),
            Ok(StageOutcome::AlreadyDurable) => {
                self.seams.network.send(
                    from,
                    Message::ReplicateResult {
                        write_id,
                        key,
                        outcome: Ok(()),
                    },
                );
            }
            Err(error) => {
                self.seams.network.send(
                    from,
                    Message::ReplicateResult {
                        write_id,
                        key,
                        outcome: Err(ReplicaRefusal::from(&error)),
                    },
                );
            }
        }
    }

    /// Fires every timer due on the node's clock: replica timeouts, repairs, interval closing.
    pub fn handle_deadlines(&mut self) {
        let now = self.now();
        if now >= self.next_raft_tick_micros {
            self.tick_partitions(now);
        }
        let due: Vec<u64> = self
            .write_deadlines
            .range(..=(now, u64::MAX))
            .map(|(_, write_id)| *write_id)
            .collect();
        for write_id in due {
            let next_deadline = now + self.config.replica_timeout_micros;
            let actions = match self.writes.get_mut(&write_id) {
                Some(active) => active.write.on_deadline(now, next_deadline),
                None => continue,
            };
            count_failures_and_respreads(&mut self.counters, &actions);
            self.apply(write_id, actions);
        }
        if now >= self.next_repair_micros {
            self.next_repair_micros = now + self.config.repair_interval_micros;
            if self.config.planted_bug == Some(PlantedBug::RepairTimerNotAdvanced) {
                self.next_repair_micros = now;
            }
            self.start_repairs(now);
        }
        if now >= self.next_interval_check_micros {
            self.next_interval_check_micros = now + self.config.interval_check_micros;
            // Closing an interval commits its own record; with writes staged it waits for
            // the next check rather than mixing into their group commit.
            if !self.store.is_poisoned() && !self.store.has_staged() {
                match self.store.advance_intervals(now) {
                    Ok(closed) => self
                        .outputs
                        .extend(closed.into_iter().map(NodeOutput::IntervalClosed)),
                    Err(error) => tracing::error!(%error, "closing intervals failed"),
                }
            }
        }
    }

    /// "Get it done" after the fact: every event this node holds that was never confirmed at
    /// the replication factor is re-spread from here once this node has seen it unconfirmed for
    /// the repair delay. The delay runs on this node's own observation, not on the key's
    /// timestamp, which another node's skewed clock wrote.
    fn start_repairs(&mut self, now: u64) {
        if self.store.is_poisoned() {
            return;
        }
        // With members down, a repair could not reach the replication factor: it waits for
        // them to return (or to be forgotten by the shell, for peers outside its
        // configuration) instead of failing over and over.
        if 1 + self.peers.up_count() < self.config.replication_factor as usize {
            return;
        }
        let unconfirmed = self.store.unconfirmed();
        self.unconfirmed_since
            .retain(|key, _| unconfirmed.contains(key));
        let mut candidates = Vec::new();
        for key in unconfirmed {
            let since = match self.unconfirmed_since.get(key) {
                Some(since) => *since,
                None => {
                    self.unconfirmed_since.insert(key.clone(), now);
                    now
                }
            };
            if candidates.len() < self.config.repair_batch_max
                && !self.write_ids_by_key.contains_key(key)
                && since.saturating_add(self.config.repair_delay_micros) <= now
            {
                candidates.push(key.clone());
            }
        }
        let suspected = self.suspected();
        let mut first_event = None;
        for key in candidates {
            let event = match self.store.get(&key) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%key, %error, "repair skipped: event unreadable");
                    continue;
                }
            };
            let event = match self.config.planted_bug {
                Some(PlantedBug::RepairReusesFirstEvent) => {
                    first_event.get_or_insert(event).clone()
                }
                _ => event,
            };
            let Ok(plan) = placement::plan(
                &self.peers,
                self.config.replication_factor,
                self.config.strategy,
                &suspected,
                self.seams.rng.as_mut(),
            ) else {
                return;
            };
            tracing::debug!(%key, "repairing an event short of its replication factor");
            self.counters.repairs += 1;
            self.begin_write(key, event, plan, None, now);
        }
    }

    /// Carries out a write's actions, and those its local outcome leads to.
    fn apply(&mut self, write_id: u64, actions: Vec<WriteAction>) {
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let Some(active) = self.writes.get_mut(&write_id) else {
                break;
            };
            match action {
                WriteAction::StageLocal => {
                    let now = self.seams.clock.now_micros();
                    let key = active.write.key().clone();
                    match self.store.stage_event(&key, &active.event, now) {
                        Ok(StageOutcome::Staged) => {
                            if self.config.planted_bug == Some(PlantedBug::AcknowledgeBeforeDurable)
                            {
                                queue.extend(active.write.on_success(self.config.id));
                            } else {
                                self.awaiting_commit
                                    .push(AwaitingCommit::Local { write_id });
                            }
                        }
                        Ok(StageOutcome::AlreadyDurable) => {
                            queue.extend(active.write.on_success(self.config.id))
                        }
                        Err(error) => {
                            tracing::warn!(%key, %error, "local replica refused");
                            let deadline = now + self.config.replica_timeout_micros;
                            queue.extend(active.write.on_failure(self.config.id, deadline));
                        }
                    }
                }
                WriteAction::SendReplicate(peer) => {
                    let message = Message::Replicate {
                        write_id,
                        key: active.write.key().clone(),
                        event: active.event.clone(),
                    };
                    self.seams.network.send(peer, message);
                }
                WriteAction::Answer(result) => {
                    if let Some(request_id) = active.request_id {
                        self.outputs
                            .push(NodeOutput::PutAnswered { request_id, result });
                    }
                }
                WriteAction::Confirm(holders) => {
                    let key = active.write.key().clone();
                    if active.write.successes().contains(&self.config.id)
                        && !self.store.is_poisoned()
                    {
                        let _ = self.store.stage_confirm(std::slice::from_ref(&key));
                    }
                    for holder in holders {
                        self.seams.network.send(
                            holder,
                            Message::Confirm {
                                keys: vec![key.clone()],
                            },
                        );
                    }
                }
                WriteAction::Suspect(peer) => {
                    let until = self.seams.clock.now_micros() + self.config.suspect_micros;
                    self.suspected_until.insert(peer, until);
                }
            }
        }
        if self
            .writes
            .get(&write_id)
            .is_some_and(|active| active.write.is_finished())
        {
            let finished = self.writes.remove(&write_id).expect("checked above");
            self.write_ids_by_key.remove(finished.write.key());
        }
        self.index_deadline(write_id);
    }

    /// Keeps `write_deadlines` in step with one write's earliest deadline.
    fn index_deadline(&mut self, write_id: u64) {
        let deadline = self
            .writes
            .get(&write_id)
            .and_then(|active| active.write.next_deadline_micros());
        let indexed = self.indexed_deadlines.remove(&write_id);
        if let Some(at) = indexed {
            self.write_deadlines.remove(&(at, write_id));
        }
        if let Some(at) = deadline {
            self.write_deadlines.insert((at, write_id));
            self.indexed_deadlines.insert(write_id, at);
        }
    }

    /// Whether `flush` has work: staged writes waiting for their commit.
    pub fn has_staged_writes(&self) -> bool {
        self.store.has_staged()
            || self
                .partitions
                .as_ref()
                .is_some_and(PartitionHost::has_prepared_round)
    }

    /// Group commit: one append and one sync for everything staged, then the answers that
    /// waited for it. A failed commit poisons the store and fails every waiting write.
    pub fn flush(&mut self) {
        if let Some(host) = &mut self.partitions {
            if host.has_prepared_round() {
                host.complete_round();
                self.counters.group_commits += 1;
            }
            self.pump_partitions();
        }
        if !self.store.has_staged() {
            return;
        }
        self.counters.group_commits += 1;
        let outcome = self
            .store
            .commit()
            .map(|_| ())
            .map_err(|error| ReplicaRefusal::from(&error));
        if let Err(error) = &outcome {
            tracing::error!(node = %self.config.id, %error, "commit failed; the store is poisoned until restart");
        }
        let now = self.now();
        for awaiting in std::mem::take(&mut self.awaiting_commit) {
            match awaiting {
                AwaitingCommit::Local { write_id } => {
                    let Some(active) = self.writes.get_mut(&write_id) else {
                        continue;
                    };
                    let actions = match &outcome {
                        Ok(()) => active.write.on_success(self.config.id),
                        Err(_) => active
                            .write
                            .on_failure(self.config.id, now + self.config.replica_timeout_micros),
                    };
                    self.apply(write_id, actions);
                }
                AwaitingCommit::Remote {
                    from,
                    write_id,
                    key,
                } => {
                    let outcome = outcome.clone();
                    self.seams.network.send(
                        from,
                        Message::ReplicateResult {
                            write_id,
                            key,
                            outcome,
                        },
                    );
                }
            }
        }
    }

    /// The earliest local time at which `handle_deadlines` has work.
    pub fn next_deadline_micros(&self) -> u64 {
        let earliest_write = self.write_deadlines.first().map(|(at, _)| *at);
        earliest_write
            .into_iter()
            .chain([
                self.next_repair_micros,
                self.next_interval_check_micros,
                self.next_raft_tick_micros,
            ])
            .min()
            .expect("the repair and interval timers always exist")
    }

    pub fn take_outputs(&mut self) -> Vec<NodeOutput> {
        std::mem::take(&mut self.outputs)
    }

    pub fn is_poisoned(&self) -> bool {
        self.store.is_poisoned()
            || self
                .partitions
                .as_ref()
                .is_some_and(PartitionHost::is_poisoned)
    }

    /// Writes this node is coordinating or repairing.
    pub fn active_writes(&self) -> usize {
        self.writes.len()
    }
}
