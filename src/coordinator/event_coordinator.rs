//! The event coordinator of one node: the AllData event store, its key generator, the peer
//! table, and every replica write this node coordinates or repairs, as a sans-IO state
//! machine. The node hands it the time and a random stream with each input; it stages writes
//! in its store, queues the messages it sends ([`EventCoordinator::take_sends`]) and the
//! answers it gives ([`EventCoordinator::take_outputs`]).
//!
//! What it owns: replica planning (placement over the peer table, with timed-out peers
//! suspected for a while), the write bookkeeping (active writes by id and by key, their
//! deadlines in order, writes awaiting the group commit), repairs of events held short of
//! their replication factor, and the closing of consolidation intervals.
//!
//! Invariants: nothing is acknowledged, to a client or to a peer, before the write is durable
//! (its group commit's sync returned), unless a canary plants the opposite on purpose; a store
//! whose commit failed is poisoned and refuses writes until the node restarts; a level the
//! nodes that are up cannot meet fails before anything is written; every write ends (see
//! `replica_write`), and a repair starts only for an event no write of this node is busy with.

use super::{CommitLevel, PutError, ReplicaWrite, WriteAction};
use crate::events::{
    EventKey, EventStore, IntervalClosed, KeyError, KeyGenerator, StageOutcome, StoreConfig,
    StoreError,
};
use crate::ids::{Location, NodeId};
use crate::placement::{self, PeerTable, ReplicaPlan, ReplicationStrategy};
use crate::seams::{Rng, SharedDisk};
use crate::wire::{Message, ReplicaRefusal};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A bug planted on purpose so that a canary scenario proves the checkers catch it. The
/// node's event side (its intake, this coordinator and its store) has these; Raft's are
/// `crate::raft::RaftPlantedBug`.
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

/// How a node coordinates and stores events.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub id: NodeId,
    pub location: Location,
    pub replication_factor: u32,
    pub strategy: ReplicationStrategy,
    pub default_commit_level: CommitLevel,
    /// A replica that has not answered by then is replaced ("get it done").
    pub replica_timeout_micros: u64,
    /// A timed-out peer is tried after healthy ones for this long.
    pub suspect_micros: u64,
    /// An event still short of its replication factor this long after this node first saw it
    /// unconfirmed is repaired by whichever holder notices.
    pub repair_delay_micros: u64,
    pub repair_interval_micros: u64,
    /// Repairs started per round, so a backlog never floods the network.
    pub repair_batch_max: usize,
    pub interval_check_micros: u64,
    pub store: StoreConfig,
    pub planted_bug: Option<PlantedBug>,
}

impl CoordinatorConfig {
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
        }
    }
}

/// What the coordinator answers or observes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorOutput {
    PutAnswered {
        request_id: u64,
        result: Result<EventKey, PutError>,
    },
    IntervalClosed(IntervalClosed),
}

/// What the coordinator has done since it opened, for metrics. Counting never changes
/// behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorCounters {
    /// Replica writes to a peer that failed or timed out.
    pub replica_failures: u64,
    /// Replica writes started on a spare peer after a failure or timeout ("get it done").
    pub respreads: u64,
    /// Repairs started by this node for events it holds short of their replication factor.
    pub repairs: u64,
    /// Group commits of the event store: each is one log append and one sync.
    pub group_commits: u64,
}

impl CoordinatorCounters {
    fn count_failures_and_respreads(&mut self, actions: &[WriteAction]) {
        for action in actions {
            match action {
                WriteAction::Suspect(_) => self.replica_failures += 1,
                WriteAction::SendReplicate(_) => self.respreads += 1,
                _ => {}
            }
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

#[derive(Debug)]
pub struct EventCoordinator {
    config: CoordinatorConfig,
    disk: SharedDisk,
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
    sends: Vec<(NodeId, Message)>,
    outputs: Vec<CoordinatorOutput>,
    counters: CoordinatorCounters,
}

impl EventCoordinator {
    /// Opens the coordinator at `now_micros`: recovers the store and the key generator from
    /// `disk`.
    pub fn open(
        config: CoordinatorConfig,
        disk: SharedDisk,
        now_micros: u64,
    ) -> Result<Self, StoreError> {
        assert!(
            config.replication_factor > 0,
            "replication factor must be positive"
        );
        let store = EventStore::open(
            disk.clone(),
            StoreConfig {
                forget_replayed_interval_counts: config.planted_bug
                    == Some(PlantedBug::ForgetReplayedIntervalCounts),
                torn_tails_are_damage: config.planted_bug == Some(PlantedBug::TornTailsAreDamage),
                ..config.store.clone()
            },
        )?;
        let mut keys = KeyGenerator::open(config.id, disk.as_ref()).map_err(StoreError::Disk)?;
        if config.planted_bug == Some(PlantedBug::ForgetKeyReservation) {
            keys.forget_reservation();
        }
        Ok(Self {
            peers: PeerTable::new(config.id, config.location.clone()),
            disk,
            store,
            keys,
            writes: BTreeMap::new(),
            write_deadlines: BTreeSet::new(),
            indexed_deadlines: BTreeMap::new(),
            write_ids_by_key: BTreeMap::new(),
            next_write_id: 0,
            awaiting_commit: Vec::new(),
            suspected_until: BTreeMap::new(),
            next_repair_micros: now_micros + config.repair_interval_micros,
            unconfirmed_since: BTreeMap::new(),
            next_interval_check_micros: now_micros,
            sends: Vec::new(),
            outputs: Vec::new(),
            counters: CoordinatorCounters::default(),
            config,
        })
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn counters(&self) -> CoordinatorCounters {
        self.counters
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    pub fn is_poisoned(&self) -> bool {
        self.store.is_poisoned()
    }

    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// The peer table, for the node's membership calls (add, place, mark down, drop).
    pub fn peers_mut(&mut self) -> &mut PeerTable {
        &mut self.peers
    }

    /// Writes this node is coordinating or repairing.
    pub fn active_writes(&self) -> usize {
        self.writes.len()
    }

    /// Messages to send, in the order they were made.
    pub fn take_sends(&mut self) -> Vec<(NodeId, Message)> {
        std::mem::take(&mut self.sends)
    }

    pub fn take_outputs(&mut self) -> Vec<CoordinatorOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// A client asks this node to coordinate a new event at `commit_level` (the configured
    /// default when `None`). The answer arrives as [`CoordinatorOutput::PutAnswered`] with
    /// the same `request_id`. Returns the event's key when one was issued (the write
    /// started), so a client that stops waiting can still be told which key to check before
    /// it retries.
    pub fn put_event(
        &mut self,
        now_micros: u64,
        rng: &mut dyn Rng,
        request_id: u64,
        event: Vec<u8>,
        commit_level: Option<CommitLevel>,
    ) -> Option<EventKey> {
        let commit_level = commit_level.unwrap_or(self.config.default_commit_level);
        match self.start_put(now_micros, rng, request_id, event, commit_level) {
            Ok(key) => Some(key),
            Err(error) => {
                self.outputs.push(CoordinatorOutput::PutAnswered {
                    request_id,
                    result: Err(error),
                });
                None
            }
        }
    }

    fn start_put(
        &mut self,
        now_micros: u64,
        rng: &mut dyn Rng,
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
            &self.suspected(now_micros),
            rng,
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
        let key = match self.keys.next(now_micros, self.disk.as_ref()) {
            Ok(key) => key,
            Err(error @ KeyError::ClockOutOfRange(_)) => {
                return Err(PutError::StoreUnavailable(error.to_string()));
            }
            Err(error) => {
                // The reservation's sync failed: the disk is not to be trusted any more.
                self.store.poison();
                return Err(PutError::StoreUnavailable(error.to_string()));
            }
        };
        self.begin_write(
            now_micros,
            key.clone(),
            event,
            plan,
            Some((request_id, commit_level)),
        );
        Ok(key)
    }

    /// Starts a replica write: a client's put (`client` set) or a repair by a holder.
    fn begin_write(
        &mut self,
        now_micros: u64,
        key: EventKey,
        event: Vec<u8>,
        plan: ReplicaPlan,
        client: Option<(u64, CommitLevel)>,
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
            now_micros + self.config.replica_timeout_micros,
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
        self.apply(now_micros, write_id, actions);
    }

    fn allocate_write_id(&mut self) -> u64 {
        self.next_write_id += 1;
        self.next_write_id
    }

    fn suspected(&self, now_micros: u64) -> BTreeSet<NodeId> {
        self.suspected_until
            .iter()
            .filter(|(_, until)| **until > now_micros)
            .map(|(node, _)| *node)
            .collect()
    }

    /// A message of the event protocol from `from`, already decoded and checked by the wire
    /// codec and taken by the node (who may send it is the node's to judge). Raft traffic is
    /// the partition host's: the node never routes it here, and it would be ignored.
    pub fn handle_message(&mut self, now_micros: u64, from: NodeId, message: Message) {
        match message {
            Message::Replicate {
                write_id,
                key,
                event,
            } => self.handle_replicate(now_micros, from, write_id, key, event),
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
                let deadline = now_micros + self.config.replica_timeout_micros;
                let actions = match outcome {
                    Ok(()) => active.write.on_success(from),
                    Err(_) => {
                        self.counters.replica_failures += 1;
                        let actions = active.write.on_failure(from, deadline);
                        self.counters.count_failures_and_respreads(&actions);
                        actions
                    }
                };
                self.apply(now_micros, write_id, actions);
            }
            Message::Confirm { keys } => {
                if !self.store.is_poisoned() {
                    // Best effort: a lost confirm only costs a redundant repair later.
                    let _ = self.store.stage_confirm(&keys);
                }
            }
            Message::Raft(_) | Message::Cluster(_) | Message::Route(_) => {}
        }
    }

    fn handle_replicate(
        &mut self,
        now_micros: u64,
        from: NodeId,
        write_id: u64,
        key: EventKey,
        event: Vec<u8>,
    ) {
        match self.store.stage_event(&key, &event, now_micros) {
            Ok(StageOutcome::Staged) => self.awaiting_commit.push(AwaitingCommit::Remote {
                from,
                write_id,
                key,
            }),
            Ok(StageOutcome::AlreadyDurable) => self.sends.push((
                from,
                Message::ReplicateResult {
                    write_id,
                    key,
                    outcome: Ok(()),
                },
            )),
            Err(error) => self.sends.push((
                from,
                Message::ReplicateResult {
                    write_id,
                    key,
                    outcome: Err(ReplicaRefusal::from(&error)),
                },
            )),
        }
    }

    /// Fires every timer due at `now_micros`: replica timeouts, repairs, interval closing.
    pub fn handle_deadlines(&mut self, now_micros: u64, rng: &mut dyn Rng) {
        let due: Vec<u64> = self
            .write_deadlines
            .range(..=(now_micros, u64::MAX))
            .map(|(_, write_id)| *write_id)
            .collect();
        for write_id in due {
            let next_deadline = now_micros + self.config.replica_timeout_micros;
            let actions = match self.writes.get_mut(&write_id) {
                Some(active) => active.write.on_deadline(now_micros, next_deadline),
                None => continue,
            };
            self.counters.count_failures_and_respreads(&actions);
            self.apply(now_micros, write_id, actions);
        }
        if now_micros >= self.next_repair_micros {
            self.next_repair_micros = now_micros + self.config.repair_interval_micros;
            if self.config.planted_bug == Some(PlantedBug::RepairTimerNotAdvanced) {
                self.next_repair_micros = now_micros;
            }
            self.start_repairs(now_micros, rng);
        }
        if now_micros >= self.next_interval_check_micros {
            self.next_interval_check_micros = now_micros + self.config.interval_check_micros;
            // Closing an interval commits its own record; with writes staged it waits for
            // the next check rather than mixing into their group commit.
            if !self.store.is_poisoned() && !self.store.has_staged() {
                match self.store.advance_intervals(now_micros) {
                    Ok(closed) => self
                        .outputs
                        .extend(closed.into_iter().map(CoordinatorOutput::IntervalClosed)),
                    Err(error) => tracing::error!(%error, "closing intervals failed"),
                }
            }
        }
    }

    /// "Get it done" after the fact: every event this node holds that was never confirmed at
    /// the replication factor is re-spread from here once this node has seen it unconfirmed for
    /// the repair delay. The delay runs on this node's own observation, not on the key's
    /// timestamp, which another node's skewed clock wrote.
    fn start_repairs(&mut self, now_micros: u64, rng: &mut dyn Rng) {
        if self.store.is_poisoned() {
            return;
        }
        // With members down, a repair could not reach the replication factor: it waits for
        // them to return (or to be forgotten by the shell, for peers outside its
        // configuration) instead of failing over and over.
        if 1 + self.peers.up_count() < self.config.replication_factor as usize {
            return;
        }
        let candidates = self.repair_candidates(now_micros);
        let suspected = self.suspected(now_micros);
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
                rng,
            ) else {
                return;
            };
            tracing::debug!(%key, "repairing an event short of its replication factor");
            self.counters.repairs += 1;
            self.begin_write(now_micros, key, event, plan, None);
        }
    }

    /// The unconfirmed events this node has held unconfirmed for the repair delay and no
    /// write of its own is busy with, at most a batch of them; notes when it first saw the
    /// others.
    fn repair_candidates(&mut self, now_micros: u64) -> Vec<EventKey> {
        let unconfirmed = self.store.unconfirmed();
        self.unconfirmed_since
            .retain(|key, _| unconfirmed.contains(key));
        let mut candidates = Vec::new();
        for key in unconfirmed {
            let since = *self
                .unconfirmed_since
                .entry(key.clone())
                .or_insert(now_micros);
            if candidates.len() < self.config.repair_batch_max
                && !self.write_ids_by_key.contains_key(key)
                && since.saturating_add(self.config.repair_delay_micros) <= now_micros
            {
                candidates.push(key.clone());
            }
        }
        candidates
    }

    /// Carries out a write's actions, and those its local outcome leads to.
    fn apply(&mut self, now_micros: u64, write_id: u64, actions: Vec<WriteAction>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let Some(active) = self.writes.get_mut(&write_id) else {
                break;
            };
            match action {
                WriteAction::StageLocal => queue.extend(self.stage_local(now_micros, write_id)),
                WriteAction::SendReplicate(peer) => {
                    let message = Message::Replicate {
                        write_id,
                        key: active.write.key().clone(),
                        event: active.event.clone(),
                    };
                    self.sends.push((peer, message));
                }
                WriteAction::Answer(result) => {
                    if let Some(request_id) = active.request_id {
                        self.outputs
                            .push(CoordinatorOutput::PutAnswered { request_id, result });
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
                        self.sends.push((
                            holder,
                            Message::Confirm {
                                keys: vec![key.clone()],
                            },
                        ));
                    }
                }
                WriteAction::Suspect(peer) => {
                    let until = now_micros + self.config.suspect_micros;
                    self.suspected_until.insert(peer, until);
                }
            }
        }
        let finished = self
            .writes
            .get(&write_id)
            .is_some_and(|active| active.write.is_finished());
        if finished {
            if let Some(active) = self.writes.remove(&write_id) {
                self.write_ids_by_key.remove(active.write.key());
            }
        }
        self.index_deadline(write_id);
    }

    /// Stages a write's event in the local store; returns what the local outcome leads to
    /// when it is known now (the event was already durable, or refused), or nothing while it
    /// waits for the group commit.
    fn stage_local(&mut self, now_micros: u64, write_id: u64) -> Vec<WriteAction> {
        let Some(active) = self.writes.get_mut(&write_id) else {
            return Vec::new();
        };
        let key = active.write.key().clone();
        match self.store.stage_event(&key, &active.event, now_micros) {
            Ok(StageOutcome::Staged) => {
                if self.config.planted_bug == Some(PlantedBug::AcknowledgeBeforeDurable) {
                    active.write.on_success(self.config.id)
                } else {
                    self.awaiting_commit
                        .push(AwaitingCommit::Local { write_id });
                    Vec::new()
                }
            }
            Ok(StageOutcome::AlreadyDurable) => active.write.on_success(self.config.id),
            Err(error) => {
                tracing::warn!(%key, %error, "local replica refused");
                let deadline = now_micros + self.config.replica_timeout_micros;
                active.write.on_failure(self.config.id, deadline)
            }
        }
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
    }

    /// Group commit: one append and one sync for everything staged, then the answers that
    /// waited for it. A failed commit poisons the store and fails every waiting write.
    pub fn flush(&mut self, now_micros: u64) {
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
        for awaiting in std::mem::take(&mut self.awaiting_commit) {
            match awaiting {
                AwaitingCommit::Local { write_id } => {
                    let Some(active) = self.writes.get_mut(&write_id) else {
                        continue;
                    };
                    let actions = match &outcome {
                        Ok(()) => active.write.on_success(self.config.id),
                        Err(_) => active.write.on_failure(
                            self.config.id,
                            now_micros + self.config.replica_timeout_micros,
                        ),
                    };
                    self.apply(now_micros, write_id, actions);
                }
                AwaitingCommit::Remote {
                    from,
                    write_id,
                    key,
                } => self.sends.push((
                    from,
                    Message::ReplicateResult {
                        write_id,
                        key,
                        outcome: outcome.clone(),
                    },
                )),
            }
        }
    }

    /// The earliest local time at which `handle_deadlines` has work.
    pub fn next_deadline_micros(&self) -> u64 {
        let earliest_write = self.write_deadlines.first().map(|(at, _)| *at);
        earliest_write
            .unwrap_or(u64::MAX)
            .min(self.next_repair_micros)
            .min(self.next_interval_check_micros)
    }
}
