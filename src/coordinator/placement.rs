//! The placement driver: moves every partition onto the replica set the ring gives it, one
//! restartable step at a time, and deletes the replicas a move left behind.
//!
//! Three parts, each acting only on this node's committed copy of the directory:
//! - on the directory's leader, the driver admits moves: a partition whose replicas differ
//!   from the ring's gets a `MovePartition` to the ring's set (fenced by its generation, so a
//!   stale driver's command changes nothing), while fewer than [`PlacementConfig::moves_max`]
//!   partitions move; and a leaving member that no partition holds any more is marked left;
//! - on each partition's leader, the steps: [`moves::next_step`] on the group's configuration
//!   as the leader holds it, towards the directory's replicas; once the group runs on them
//!   alone (that configuration committed), it asks the directory to `FinishMove`; it also
//!   hands leadership to the ring's owner (leader balance);
//! - on every node, the cleanup: a replica of a partition that settled without this node is
//!   deleted.
//!
//! Invariants:
//! - a step is read off the group's configuration alone, so a leader that crashes or loses
//!   its term mid-move leaves a state the next leader finishes; two leaders never act in one
//!   term, and Raft refuses a change while the last one is uncommitted;
//! - a learner is promoted only once its log reached the leader's commit index (less
//!   [`PlacementConfig::caught_up_lag_entries`]); a voter leaves only through a committed
//!   configuration (Raft's joint consensus), never the leader itself;
//! - a move finishes in the directory only after the leader saw the target configuration
//!   committed, so a replica deleted on that word is in no configuration that can still
//!   decide anything;
//! - leadership transfers of one partition are at least
//!   [`PlacementConfig::transfer_interval_ticks`] apart (a transfer pauses its writes).

use crate::coordinator::cluster::{directory_of, ClusterKinds};
use crate::coordinator::moves::{self, GroupView, MoveStep};
use crate::directory::{
    Directory, DirectoryOperation, MemberState, PartitionName, SYSTEM_PARTITION,
};
use crate::ids::NodeId;
use crate::partition::host::{PartitionHost, RequestError};
use crate::partition::PartitionId;
use std::collections::{BTreeMap, BTreeSet};

/// Bugs the simulator's canaries plant in the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementPlantedBug {
    /// Promote learners without waiting for them to catch up.
    PromoteBeforeCaughtUp,
}

#[derive(Clone, Debug)]
pub struct PlacementConfig {
    /// Partitions moving at once across the cluster.
    pub moves_max: usize,
    /// Ticks between two passes over the partitions.
    pub pass_interval_ticks: u64,
    /// Ticks between two leadership transfers of one partition.
    pub transfer_interval_ticks: u64,
    /// Ticks before a `FinishMove` (or a leave) is asked again.
    pub retry_ticks: u64,
    /// Entries a learner may trail the leader's commit index by and count as caught up.
    pub caught_up_lag_entries: u64,
    /// Ticks a member may go unheard by the directory's leader before it is declared dead
    /// (marked left): its replicas are then rebuilt elsewhere from the survivors.
    pub dead_after_ticks: u64,
    pub planted_bug: Option<PlacementPlantedBug>,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            moves_max: 8,
            pass_interval_ticks: 5,
            transfer_interval_ticks: 100,
            retry_ticks: 100,
            caught_up_lag_entries: 8,
            // Five minutes of 10 ms ticks.
            dead_after_ticks: 30_000,
            planted_bug: None,
        }
    }
}

/// What the driver did, for metrics and the simulator's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlacementCounters {
    pub moves_admitted: u64,
    pub moves_finished: u64,
    pub configuration_changes: u64,
    pub leadership_transfers: u64,
    pub replicas_deleted: u64,
    pub members_declared_dead: u64,
}

#[derive(Debug)]
pub struct Placement {
    config: PlacementConfig,
    tick: u64,
    /// Directory commands proposed here as the directory's leader, by request id.
    proposed: BTreeMap<u64, PartitionName>,
    last_transfer_tick: BTreeMap<PartitionId, u64>,
    /// When a directory command was last asked for, by what it asks.
    asked_tick: BTreeMap<String, u64>,
    /// Directory commands for the router to take to the directory's leader.
    directory_requests: Vec<DirectoryOperation>,
    /// The host tick this node was first seen leading the directory (in its current
    /// leadership): a member unheard since counts from there.
    leading_since_tick: Option<u64>,
    /// When this node (leading the directory) first saw each member in it: a member that
    /// just joined counts from there.
    member_seen_tick: BTreeMap<NodeId, u64>,
    counters: PlacementCounters,
}

impl Placement {
    pub fn new(config: PlacementConfig) -> Self {
        Self {
            config,
            tick: 0,
            proposed: BTreeMap::new(),
            last_transfer_tick: BTreeMap::new(),
            asked_tick: BTreeMap::new(),
            directory_requests: Vec::new(),
            leading_since_tick: None,
            member_seen_tick: BTreeMap::new(),
            counters: PlacementCounters::default(),
        }
    }

    pub fn counters(&self) -> PlacementCounters {
        self.counters
    }

    /// Commands for the directory that this node is not the leader to propose: the node
    /// routes them.
    pub fn take_directory_requests(&mut self) -> Vec<DirectoryOperation> {
        std::mem::take(&mut self.directory_requests)
    }

    /// Whether `request_id` is a directory command this driver proposed (its answer is the
    /// driver's: it only frees the slot).
    pub fn take_answer(&mut self, request_id: u64) -> bool {
        self.proposed.remove(&request_id).is_some()
    }

    /// One tick of a member node: every `pass_interval_ticks`, a pass of all three parts.
    pub fn tick<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>, me: NodeId) {
        self.tick += 1;
        if !self
            .tick
            .is_multiple_of(self.config.pass_interval_ticks.max(1))
        {
            return;
        }
        self.admit_moves(host);
        self.step_partitions(host, me);
        self.delete_left_behind(host, me, false);
    }

    /// One tick of a node that left: the steps of the partitions it still leads (so their
    /// moves off it go on) every `pass_interval_ticks`, unless the directory's group let it
    /// go (its copy no longer moves), and the deletion of replicas left behind.
    pub fn tick_left<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        me: NodeId,
        let_go: bool,
    ) {
        self.tick += 1;
        let pass_due = self
            .tick
            .is_multiple_of(self.config.pass_interval_ticks.max(1));
        if pass_due && !let_go {
            self.step_partitions(host, me);
        }
        self.delete_left_behind(host, me, let_go);
    }

    /// Asks the directory (through its leader) to mark this node leaving.
    pub fn ask_to_leave(&mut self, me: NodeId) {
        self.ask(DirectoryOperation::SetMemberState {
            id: me,
            state: MemberState::Leaving,
        });
    }

    /// Queues a directory command unless it was asked for within `retry_ticks`.
    fn ask(&mut self, operation: DirectoryOperation) {
        let key = format!("{operation:?}");
        let due = self
            .asked_tick
            .get(&key)
            .is_none_or(|asked| self.tick >= asked + self.config.retry_ticks);
        if due {
            self.asked_tick.insert(key, self.tick);
            self.directory_requests.push(operation);
        }
        // Forget what was asked long ago: the map stays as small as the moves under way.
        let horizon = self.tick.saturating_sub(self.config.retry_ticks * 4);
        self.asked_tick.retain(|_, asked| *asked >= horizon);
    }

    /// On the directory's leader: admits moves up to `moves_max`, and marks left the leaving
    /// members nothing depends on any more.
    fn admit_moves<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>) {
        let Some(status) = host.status(SYSTEM_PARTITION) else {
            return;
        };
        if status.leader != Some(host.id()) {
            self.proposed.clear();
            self.leading_since_tick = None;
            self.member_seen_tick.clear();
            return;
        }
        let now = host.ticks();
        let leading_since = *self.leading_since_tick.get_or_insert(now);
        let Some(directory) = directory_of(host) else {
            return;
        };
        let mut operations = Vec::new();
        // Members unheard for `dead_after_ticks` are declared dead, one per pass (never this
        // node, and never so many that the directory's voters lose their quorum: its group
        // would not commit the change anyway).
        for member in directory.members() {
            self.member_seen_tick.entry(member.id).or_insert(now);
        }
        // One death at a time: while a partition still has a replica on a member that left
        // (a dead one's rebuild is under way: it is in the entry's replicas, or in the set a
        // move is still taking it away from), nobody else is declared dead, so two losses in
        // a row cannot take a group's quorum through the driver's own hand. (A leaving
        // member does not count: its drain may wait on a dead member.) Until a move away
        // from a dead replica finishes, the group's configuration may still count it: its
        // outgoing half in a joint configuration, or as a voter before the removal.
        let rebuilding = directory.partitions().any(|entry| {
            entry.holders().iter().any(|node| {
                directory
                    .member(*node)
                    .is_none_or(|member| member.state == MemberState::Left)
            })
        });
        let seen = &self.member_seen_tick;
        let dead = directory.members().find(|member| {
            !rebuilding
                && member.id != host.id()
                && member.state != MemberState::Left
                && host
                    .peer_heard_tick(member.id)
                    .unwrap_or(0)
                    .max(leading_since)
                    .max(seen.get(&member.id).copied().unwrap_or(now))
                    .saturating_add(self.config.dead_after_ticks)
                    <= now
        });
        if let Some(member) = dead {
            tracing::warn!(member = %member.id, "a member went unheard too long: declared dead");
            self.counters.members_declared_dead += 1;
            operations.push((
                None,
                DirectoryOperation::SetMemberState {
                    id: member.id,
                    state: MemberState::Left,
                },
            ));
        }
        let mut moving = directory.moving_count() + self.proposed.len();
        let in_flight: BTreeSet<&PartitionName> = self.proposed.values().collect();
        for entry in directory.partitions() {
            if in_flight.contains(&entry.name) {
                continue;
            }
            // A move under way is re-aimed only when its target holds a member that is no
            // longer active (it left, or was declared dead): it could never finish.
            let stranded = entry.replicas.iter().any(|node| {
                directory
                    .member(*node)
                    .is_none_or(|member| member.state != MemberState::Active)
            });
            if entry.is_moving() && !stranded {
                continue;
            }
            // A new move waits for a slot; re-aiming one under way takes none.
            if !entry.is_moving() && moving >= self.config.moves_max {
                continue;
            }
            let target = directory.ring_replicas(&entry.name);
            if target.is_empty() || target == entry.replicas {
                continue;
            }
            operations.push((
                Some(entry.name.clone()),
                DirectoryOperation::MovePartition {
                    name: entry.name.clone(),
                    generation: entry.generation,
                    replicas: target,
                },
            ));
            if !entry.is_moving() {
                moving += 1;
            }
        }
        for id in drained_members(directory) {
            // A voter of the directory is demoted first (the directory's group does that).
            if status.configuration.is_voter(id) {
                continue;
            }
            operations.push((
                None,
                DirectoryOperation::SetMemberState {
                    id,
                    state: MemberState::Left,
                },
            ));
        }
        for (name, operation) in operations {
            let Some(operation) = M::directory_operation(operation) else {
                return;
            };
            match host.write(SYSTEM_PARTITION, operation) {
                Ok(request_id) => {
                    if let Some(name) = name {
                        self.counters.moves_admitted += 1;
                        self.proposed.insert(request_id, name);
                    }
                }
                Err(RequestError::NotLeader { .. }) => return,
                Err(error) => {
                    tracing::debug!(%error, "the placement driver could not propose");
                    return;
                }
            }
        }
    }

    /// On each partition this node leads: the next step of its move, leader balance, and the
    /// word that a move finished.
    fn step_partitions<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>, me: NodeId) {
        let Some(directory) = directory_of(host) else {
            return;
        };
        let mut actions = Vec::new();
        for partition in host.leading().iter().copied() {
            if partition == SYSTEM_PARTITION {
                continue;
            }
            let (Some(group), Some(entry)) =
                (host.group(partition), directory.partition_by_id(partition))
            else {
                continue;
            };
            let status = group.status();
            if status.leader != Some(me) {
                continue;
            }
            let lag = self.config.caught_up_lag_entries;
            let promote_early =
                self.config.planted_bug == Some(PlacementPlantedBug::PromoteBeforeCaughtUp);
            let caught_up = |node: NodeId| {
                promote_early
                    || group
                        .matched_index(node)
                        .is_some_and(|matched| matched + lag >= status.committed)
            };
            let location = |node: NodeId| directory.member(node).map(|member| &member.location);
            let view = GroupView {
                configuration: &status.configuration,
                leader: me,
                caught_up: &caught_up,
                location: &location,
            };
            let step = moves::next_step(&view, &entry.replicas);
            let on_target = status.configuration.learners.is_empty()
                && !status.configuration.is_joint()
                && status.configuration.voters.len() == entry.replicas.len()
                && entry
                    .replicas
                    .iter()
                    .all(|node| status.configuration.voters.contains(node));
            if on_target && entry.is_moving() && group.configuration_committed() {
                actions.push(Action::Finish(DirectoryOperation::FinishMove {
                    name: entry.name.clone(),
                    generation: entry.generation,
                }));
            }
            match step {
                MoveStep::Change(change) => actions.push(Action::Change(partition, change)),
                MoveStep::TransferLeadership(target) => {
                    actions.push(Action::Transfer(partition, target));
                }
                MoveStep::Wait | MoveStep::Done => {}
            }
        }
        for action in actions {
            match action {
                Action::Finish(operation) => self.ask(operation),
                Action::Change(partition, change) => {
                    if host.change_membership(partition, change).is_ok() {
                        self.counters.configuration_changes += 1;
                    }
                }
                Action::Transfer(partition, target) => {
                    let due = self
                        .last_transfer_tick
                        .get(&partition)
                        .is_none_or(|last| self.tick >= last + self.config.transfer_interval_ticks);
                    if due && host.transfer_leadership(partition, target).is_ok() {
                        self.last_transfer_tick.insert(partition, self.tick);
                        self.counters.leadership_transfers += 1;
                    }
                }
            }
        }
        let horizon = self
            .tick
            .saturating_sub(self.config.transfer_interval_ticks);
        self.last_transfer_tick.retain(|_, last| *last >= horizon);
    }

    /// Deletes this node's replicas of partitions that settled without it (all of them,
    /// with `everything`: the node left and the directory's group let it go).
    pub fn delete_left_behind<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        me: NodeId,
        everything: bool,
    ) {
        let Some(directory) = directory_of(host) else {
            return;
        };
        let left_behind: Vec<PartitionId> = host
            .partitions()
            .filter(|partition| *partition != SYSTEM_PARTITION)
            .filter(|partition| {
                everything
                    || directory
                        .partition_by_id(*partition)
                        .is_some_and(|entry| !entry.is_moving() && !entry.replicas.contains(&me))
            })
            .collect();
        for partition in left_behind {
            match host.remove_partition(partition) {
                Ok(true) => self.counters.replicas_deleted += 1,
                Ok(false) => {} // done when the round that is out completes
                Err(error) => {
                    tracing::error!(%partition, %error, "could not delete a replica left behind");
                    return;
                }
            }
        }
    }
}

enum Action {
    Finish(DirectoryOperation),
    Change(PartitionId, crate::raft::ConfigChange),
    Transfer(PartitionId, NodeId),
}

/// Leaving members that no partition holds or is moving away from.
fn drained_members(directory: &Directory) -> Vec<NodeId> {
    let leaving: BTreeSet<NodeId> = directory
        .members()
        .filter(|member| member.state == MemberState::Leaving)
        .map(|member| member.id)
        .collect();
    if leaving.is_empty() {
        return Vec::new();
    }
    let mut held = BTreeSet::new();
    for entry in directory.partitions() {
        held.extend(entry.holders());
    }
    leaving.difference(&held).copied().collect()
}

#[cfg(test)]
mod tests;
