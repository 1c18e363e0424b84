//! Cluster membership on one node: bootstrapping a new cluster's directory, joining an
//! existing one through any member, keeping the directory's own group on its voters and
//! learners, and creating this node's replica of every partition the directory places here.
//!
//! It drives the node's partition host and never owns it: each call is given the host.
//!
//! Invariants:
//! - every member of the cluster replicates the system partition (its directory), as a voter
//!   or a learner, so every member has a copy of the directory that is a prefix of the
//!   committed one; it acts only on that copy, never on a guess;
//! - a partition's group is created here only from a committed directory entry that lists
//!   this node, with the entry's replica set as its founding voters; all founders read the
//!   same entry, so no two groups are ever created for one partition;
//! - the directory's group changes one step at a time, on its leader only: a member that is
//!   not in it is added as a learner, and learners that caught up are promoted (zones not
//!   yet holding a voter first) until it has the settings' voters;
//! - a join is answered only once its directory command applied (accepted or refused for a
//!   reason that will not change); anything else is "retry", and the joiner asks again.

use crate::coordinator::cluster_machine::{
    ClusterAnswer, ClusterOperation, ClusterOutcome, ClusterQuery, ClusterStateMachine,
};
use crate::coordinator::placement::{Placement, PlacementConfig, PlacementCounters};
use crate::directory::{
    ClusterMessage, ClusterName, ClusterSettings, Directory, DirectoryChange, DirectoryOperation,
    DirectoryOutcome, DirectoryRefusal, DirectoryStateMachine, JoinAnswer, Member, MemberState,
    SYSTEM_PARTITION,
};
use crate::ids::NodeId;
use crate::maps::{MapAnswer, MapOperation, MapOutcome, MapQuery};
use crate::partition::command::KvOperation;
use crate::partition::host::{HostOutput, PartitionHost, PartitionStart};
use crate::partition::kv_store::{ReadAnswer, ReadRequest, WriteOutcome};
use crate::partition::state_machine::StateMachine;
use crate::partition::PartitionId;
use crate::raft::ConfigChange;
use std::collections::{BTreeMap, BTreeSet};

/// What the cluster coordinator and the router need of the kinds a node's partitions run:
/// the directory (`None` for kinds without one, which never run a cluster).
pub trait ClusterKinds: StateMachine {
    fn directory_machine(&self) -> Option<&DirectoryStateMachine>;
    fn directory_machine_mut(&mut self) -> Option<&mut DirectoryStateMachine>;
    fn directory_operation(operation: DirectoryOperation) -> Option<Self::Operation>;
    fn directory_outcome(outcome: &Self::Outcome) -> Option<&DirectoryOutcome>;
    /// The key-value store's commands in this kind's terms (request handlers reach
    /// partitions as key-value stores).
    fn kv_operation(operation: KvOperation) -> Self::Operation;
    fn kv_query(query: ReadRequest) -> Self::Query;
    /// A key-value outcome or answer, `None` when it is another kind's.
    fn kv_outcome(outcome: Self::Outcome) -> Option<WriteOutcome>;
    fn kv_answer(answer: Self::Answer) -> Option<ReadAnswer>;
    /// A map's commands in this kind's terms, `None` for a kind without maps.
    fn map_operation(operation: MapOperation) -> Option<Self::Operation>;
    fn map_query(query: MapQuery) -> Option<Self::Query>;
    /// A map's outcome or answer, `None` when it is another kind's.
    fn map_outcome(outcome: Self::Outcome) -> Option<MapOutcome>;
    fn map_answer(answer: Self::Answer) -> Option<MapAnswer>;
    /// The partitions whose maps changed (applied, installed, removed) since the last call.
    fn take_touched_maps(&mut self) -> BTreeSet<PartitionId>;
}

impl ClusterKinds for ClusterStateMachine {
    fn directory_machine(&self) -> Option<&DirectoryStateMachine> {
        Some(self.directory())
    }

    fn directory_machine_mut(&mut self) -> Option<&mut DirectoryStateMachine> {
        Some(self.directory_mut())
    }

    fn directory_operation(operation: DirectoryOperation) -> Option<ClusterOperation> {
        Some(ClusterOperation::Directory(operation))
    }

    fn directory_outcome(outcome: &ClusterOutcome) -> Option<&DirectoryOutcome> {
        match outcome {
            ClusterOutcome::Directory(outcome) => Some(outcome),
            ClusterOutcome::Kv(_) | ClusterOutcome::Misplaced | ClusterOutcome::Map(_) => None,
        }
    }

    fn kv_operation(operation: KvOperation) -> ClusterOperation {
        ClusterOperation::Kv(operation)
    }

    fn kv_query(query: ReadRequest) -> ClusterQuery {
        ClusterQuery::Kv(query)
    }

    fn kv_outcome(outcome: ClusterOutcome) -> Option<WriteOutcome> {
        match outcome {
            ClusterOutcome::Kv(outcome) => Some(outcome),
            _ => None,
        }
    }

    fn kv_answer(answer: ClusterAnswer) -> Option<ReadAnswer> {
        match answer {
            ClusterAnswer::Kv(answer) => Some(answer),
            _ => None,
        }
    }

    fn map_operation(operation: MapOperation) -> Option<ClusterOperation> {
        Some(ClusterOperation::Map(operation))
    }

    fn map_query(query: MapQuery) -> Option<ClusterQuery> {
        Some(ClusterQuery::Map(query))
    }

    fn map_outcome(outcome: ClusterOutcome) -> Option<MapOutcome> {
        match outcome {
            ClusterOutcome::Map(outcome) => Some(outcome),
            _ => None,
        }
    }

    fn map_answer(answer: ClusterAnswer) -> Option<MapAnswer> {
        match answer {
            ClusterAnswer::Map(answer) => Some(answer),
            _ => None,
        }
    }

    fn take_touched_maps(&mut self) -> BTreeSet<PartitionId> {
        self.maps_mut().take_touched()
    }
}

/// The key-value store alone holds no directory.
impl ClusterKinds for crate::partition::kv_store::KvStateMachine {
    fn directory_machine(&self) -> Option<&DirectoryStateMachine> {
        None
    }

    fn directory_machine_mut(&mut self) -> Option<&mut DirectoryStateMachine> {
        None
    }

    fn directory_operation(_: DirectoryOperation) -> Option<Self::Operation> {
        None
    }

    fn directory_outcome(_: &Self::Outcome) -> Option<&DirectoryOutcome> {
        None
    }

    fn kv_operation(operation: KvOperation) -> KvOperation {
        operation
    }

    fn kv_query(query: ReadRequest) -> ReadRequest {
        query
    }

    fn kv_outcome(outcome: WriteOutcome) -> Option<WriteOutcome> {
        Some(outcome)
    }

    fn kv_answer(answer: ReadAnswer) -> Option<ReadAnswer> {
        Some(answer)
    }

    fn map_operation(_: MapOperation) -> Option<KvOperation> {
        None
    }

    fn map_query(_: MapQuery) -> Option<ReadRequest> {
        None
    }

    fn map_outcome(_: WriteOutcome) -> Option<MapOutcome> {
        None
    }

    fn map_answer(_: ReadAnswer) -> Option<MapAnswer> {
        None
    }

    fn take_touched_maps(&mut self) -> BTreeSet<PartitionId> {
        BTreeSet::new()
    }
}

/// How this node becomes a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterStart {
    /// It founds a new cluster with these settings (or restarts as a member of it).
    Bootstrap(ClusterSettings),
    /// It joins the cluster through `seed`, any member (once known: the production shell
    /// learns the seed's id from its peer address, see [`ClusterCoordinator::set_seed`]).
    Join { seed: Option<NodeId> },
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node as the directory records it.
    pub member: Member,
    pub cluster_name: ClusterName,
    pub start: ClusterStart,
    /// Ticks between two join requests while no answer came.
    pub join_retry_ticks: u64,
    pub placement: PlacementConfig,
}

/// Where this node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipState {
    /// Founding: waiting to lead its one-voter directory and bootstrap it.
    Bootstrapping,
    /// Asking to join; accepted once the directory it has applied lists it.
    Joining,
    Member,
    /// It asked to leave: its replicas are moving away.
    Leaving,
    /// It left the cluster (drained, or declared dead): nothing depends on it any more.
    Left,
    /// The cluster refused it for good.
    Refused(String),
}

#[derive(Debug)]
pub struct ClusterCoordinator {
    config: ClusterConfig,
    tick: u64,
    state: MembershipState,
    /// The bootstrap command in flight, by request id.
    bootstrap_request: Option<u64>,
    /// When this node last asked to join.
    join_asked_tick: Option<u64>,
    /// Join commands this node proposed for others: request id to joiner.
    joins_in_flight: BTreeMap<u64, NodeId>,
    /// Join commands this node does not lead the directory to propose: the node routes them
    /// to its leader (a joiner may ask any member).
    joins_to_route: Vec<(NodeId, DirectoryOperation)>,
    /// Join commands routed to the directory's leader: router request id to joiner.
    joins_routed: BTreeMap<u64, NodeId>,
    outbox: Vec<(NodeId, ClusterMessage)>,
    placement: Placement,
    /// This node was asked to leave.
    leave_asked: bool,
    /// When this node, leading the directory, first saw each departed member still in its
    /// group.
    departed_seen_tick: BTreeMap<NodeId, u64>,
    /// When this node last handed the directory's leadership on (it was leaving).
    transfer_asked_tick: Option<u64>,
    /// When this node, leading the directory, last told each departed member so.
    departed_told_tick: BTreeMap<NodeId, u64>,
    /// The directory's group let this node go after it left: its copy of the directory no
    /// longer moves, so everything it holds goes.
    let_go: bool,
    /// This run saw the node leaving (asked to, or listed so): a drain, not a death.
    drain_seen: bool,
}

/// This node's copy of the directory, once it applied any of it.
pub fn directory_of<M: ClusterKinds>(host: &PartitionHost<M>) -> Option<&Directory> {
    host.machine()
        .directory_machine()?
        .directory(SYSTEM_PARTITION)
}

impl ClusterCoordinator {
    /// Starts membership on a host that was just opened: its replica of the directory's group
    /// (founding, or empty and waiting for the leader), and every replica a committed entry
    /// places here that a crash kept it from creating.
    pub fn open<M: ClusterKinds>(
        config: ClusterConfig,
        host: &mut PartitionHost<M>,
    ) -> Result<Self, crate::partition::host::RequestError> {
        let start = match &config.start {
            ClusterStart::Bootstrap(_) => PartitionStart::Bootstrap {
                voters: vec![config.member.id],
            },
            ClusterStart::Join { .. } => PartitionStart::Joining,
        };
        host.create_partition(SYSTEM_PARTITION, start)?;
        let state = match &config.start {
            ClusterStart::Bootstrap(_) => MembershipState::Bootstrapping,
            ClusterStart::Join { .. } => MembershipState::Joining,
        };
        let placement = Placement::new(config.placement.clone());
        let mut coordinator = Self {
            config,
            tick: 0,
            state,
            bootstrap_request: None,
            join_asked_tick: None,
            joins_in_flight: BTreeMap::new(),
            joins_to_route: Vec::new(),
            joins_routed: BTreeMap::new(),
            outbox: Vec::new(),
            placement,
            leave_asked: false,
            departed_seen_tick: BTreeMap::new(),
            transfer_asked_tick: None,
            departed_told_tick: BTreeMap::new(),
            let_go: false,
            drain_seen: false,
        };
        coordinator.create_every_placed_replica(host);
        coordinator.update_state(host);
        Ok(coordinator)
    }

    pub fn state(&self) -> &MembershipState {
        &self.state
    }

    /// The member a joining node asks (a joining node without one waits for it).
    pub fn set_seed(&mut self, seed: NodeId) {
        if let ClusterStart::Join { seed: current } = &mut self.config.start {
            *current = Some(seed);
        }
    }

    pub fn take_messages(&mut self) -> Vec<(NodeId, ClusterMessage)> {
        std::mem::take(&mut self.outbox)
    }

    /// Directory commands for the node to route to the directory's leader.
    pub fn take_directory_requests(&mut self) -> Vec<DirectoryOperation> {
        self.placement.take_directory_requests()
    }

    /// Join commands for the node to route to the directory's leader, with their joiners;
    /// the node hands each routed request's id back through [`Self::join_routed`].
    pub fn take_joins_to_route(&mut self) -> Vec<(NodeId, DirectoryOperation)> {
        std::mem::take(&mut self.joins_to_route)
    }

    pub fn join_routed(&mut self, request_id: u64, joiner: NodeId) {
        self.joins_routed.insert(request_id, joiner);
    }

    /// Answers the joiner of a routed join; `false` when `request_id` is not one.
    pub fn on_routed_join_answer<M: ClusterKinds>(
        &mut self,
        request_id: u64,
        result: Result<&M::Outcome, String>,
    ) -> bool {
        let Some(joiner) = self.joins_routed.remove(&request_id) else {
            return false;
        };
        let answer = match result {
            Ok(outcome) => Self::join_answer(M::directory_outcome(outcome)),
            Err(error) => JoinAnswer::retry(error),
        };
        self.outbox
            .push((joiner, ClusterMessage::JoinAnswer(answer)));
        true
    }

    fn join_answer(outcome: Option<&DirectoryOutcome>) -> JoinAnswer {
        match outcome {
            Some(DirectoryOutcome::Joined(_)) => JoinAnswer::Accepted,
            // A new node under a departed member's id waits for that member's moves.
            Some(DirectoryOutcome::Refused(refusal @ DirectoryRefusal::LeftMemberStillHeld(_))) => {
                JoinAnswer::retry(refusal.to_string())
            }
            Some(DirectoryOutcome::Refused(refusal)) => JoinAnswer::refused(refusal.to_string()),
            other => JoinAnswer::retry(format!("unexpected directory outcome {other:?}")),
        }
    }

    pub fn placement_counters(&self) -> PlacementCounters {
        self.placement.counters()
    }

    /// Drains this node: asks the directory to mark it leaving (again every few seconds
    /// until it does); its replicas then move away, and the directory marks it left.
    pub fn leave(&mut self) {
        self.leave_asked = true;
    }

    fn me(&self) -> NodeId {
        self.config.member.id
    }

    /// A member once the directory it applied lists it; leaving and left as it says.
    fn update_state<M: ClusterKinds>(&mut self, host: &PartitionHost<M>) {
        if matches!(
            self.state,
            MembershipState::Refused(_) | MembershipState::Left
        ) {
            return;
        }
        let listed = directory_of(host)
            .and_then(|directory| directory.member(self.me()))
            .filter(|member| member.instance == self.config.member.instance);
        if let Some(member) = listed {
            self.drain_seen |= member.state == MemberState::Leaving;
            self.state = match member.state {
                MemberState::Active => MembershipState::Member,
                MemberState::Leaving => MembershipState::Leaving,
                MemberState::Left => MembershipState::Left,
            };
        }
    }

    pub fn tick<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>) {
        self.tick += 1;
        self.update_state(host);
        match (&self.state, &self.config.start) {
            (MembershipState::Bootstrapping, ClusterStart::Bootstrap(settings)) => {
                let settings = settings.clone();
                self.propose_bootstrap(host, settings);
            }
            (MembershipState::Joining, ClusterStart::Join { seed: Some(seed) }) => {
                let seed = *seed;
                let due = self
                    .join_asked_tick
                    .is_none_or(|asked| self.tick >= asked + self.config.join_retry_ticks);
                if due {
                    self.join_asked_tick = Some(self.tick);
                    let request = ClusterMessage::JoinRequest {
                        cluster_name: self.config.cluster_name.clone(),
                        member: self.config.member.clone(),
                    };
                    self.outbox.push((seed, request));
                }
            }
            _ => {}
        }
        if matches!(
            self.state,
            MembershipState::Member | MembershipState::Leaving
        ) {
            if self.leave_asked && self.state == MembershipState::Member {
                self.placement.ask_to_leave(self.me());
            }
            self.drive_directory_group(host);
            self.placement.tick(host, self.me());
        } else if self.state == MembershipState::Left {
            // A node that left keeps serving the groups that still count it (declared dead
            // while alive, its replicas are rebuilt elsewhere first), and deletes each replica
            // once its partition settled without it; the directory's group keeps it as long
            // as it is heard from, so its copy of the directory sees those moves. Then it
            // stops.
            // Until then it hands on what it leads: the directory, and each partition's
            // leadership (a move off a leader needs the leader's step).
            if !self.let_go {
                self.drive_directory_group(host);
            }
            self.placement.tick_left(host, self.me(), self.let_go);
        }
    }

    /// Whether the node left its cluster without draining in this run: declared dead while
    /// it was away (or already gone at startup). Its data dir can never join again; the
    /// binary starts over on an empty one, as a new member under the same id.
    pub fn left_without_draining(&self) -> bool {
        self.state == MembershipState::Left && !self.drain_seen && !self.leave_asked
    }

    /// Whether this node left its cluster and holds no replica but its copy of the
    /// directory: nothing depends on it, and it may stop.
    pub fn is_drained<M: ClusterKinds>(&self, host: &PartitionHost<M>) -> bool {
        self.state == MembershipState::Left
            && host
                .partitions()
                .all(|partition| partition == SYSTEM_PARTITION)
    }

    fn propose_bootstrap<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        settings: ClusterSettings,
    ) {
        let leads = host
            .status(SYSTEM_PARTITION)
            .is_some_and(|status| status.leader == Some(self.me()));
        if self.bootstrap_request.is_some() || !leads {
            return;
        }
        let operation = DirectoryOperation::Bootstrap {
            settings,
            first: self.config.member.clone(),
        };
        let Some(operation) = M::directory_operation(operation) else {
            return;
        };
        if let Ok(request_id) = host.write(SYSTEM_PARTITION, operation) {
            self.bootstrap_request = Some(request_id);
        }
    }

    /// Handles a message from a peer.
    pub fn receive<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        from: NodeId,
        message: ClusterMessage,
    ) {
        match message {
            ClusterMessage::JoinRequest {
                cluster_name,
                member,
            } => self.on_join_request(host, from, cluster_name, member),
            ClusterMessage::JoinAnswer(answer) => {
                if self.state != MembershipState::Joining {
                    return;
                }
                match answer {
                    JoinAnswer::Accepted | JoinAnswer::Retry(_) => {}
                    JoinAnswer::Refused(reason) => {
                        tracing::error!(%reason, "the cluster refused this node");
                        self.state = MembershipState::Refused(reason);
                    }
                }
            }
            ClusterMessage::Departed { instance } => {
                // Only the word of a member, about this very instance.
                let from_member = directory_of(host).is_some_and(|directory| {
                    directory
                        .member(from)
                        .is_some_and(|member| member.state != MemberState::Left)
                });
                if from_member
                    && instance == self.config.member.instance
                    && self.state != MembershipState::Left
                {
                    tracing::warn!(%from, "the cluster says this node left it: its replicas are deleted and it stops; start it on an empty data dir under a new id to join again");
                    self.state = MembershipState::Left;
                    self.let_go = true;
                }
            }
        }
    }

    fn on_join_request<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        from: NodeId,
        cluster_name: ClusterName,
        member: Member,
    ) {
        let answer = |answer| (from, ClusterMessage::JoinAnswer(answer));
        if member.id != from {
            let reason = format!(
                "{from} asked to join as {}: a node joins as itself",
                member.id
            );
            self.outbox.push(answer(JoinAnswer::refused(reason)));
            return;
        }
        let Some(ours) = directory_of(host).and_then(|directory| directory.settings()) else {
            let reason = format!("{} is not a member of a cluster yet", self.me());
            self.outbox.push(answer(JoinAnswer::retry(reason)));
            return;
        };
        if ours.cluster_name != cluster_name {
            let reason = format!(
                "this is cluster \"{}\"; a node of cluster \"{cluster_name}\" cannot join it",
                ours.cluster_name.as_str()
            );
            self.outbox.push(answer(JoinAnswer::refused(reason)));
            return;
        }
        let operation = DirectoryOperation::Join {
            cluster_name,
            member,
        };
        let leads = host
            .status(SYSTEM_PARTITION)
            .is_some_and(|status| status.leader == Some(self.me()));
        if !leads {
            // Routed to the directory's leader; one at a time per joiner (it asks again
            // every `join_retry_ticks`, and the routed request's answer answers it).
            let routed = self.joins_routed.values().any(|joiner| *joiner == from)
                || self
                    .joins_to_route
                    .iter()
                    .any(|(joiner, _)| *joiner == from);
            if !routed {
                self.joins_to_route.push((from, operation));
            }
            return;
        }
        let Some(operation) = M::directory_operation(operation) else {
            return;
        };
        match host.write(SYSTEM_PARTITION, operation) {
            Ok(request_id) => {
                self.joins_in_flight.insert(request_id, from);
            }
            Err(error) => self
                .outbox
                .push(answer(JoinAnswer::retry(error.to_string()))),
        }
    }

    /// Takes the answers to this coordinator's own requests out of a host output; gives back
    /// every other output.
    pub fn on_output<M: ClusterKinds>(
        &mut self,
        output: HostOutput<M::Outcome, M::Answer>,
    ) -> Option<HostOutput<M::Outcome, M::Answer>> {
        let HostOutput::WriteAnswered { request_id, result } = &output else {
            return Some(output);
        };
        if self.placement.take_answer(*request_id) {
            return None;
        }
        if self.bootstrap_request == Some(*request_id) {
            // Bootstrapped or not, the directory it applied says what to do next.
            self.bootstrap_request = None;
            return None;
        }
        let Some(joiner) = self.joins_in_flight.remove(request_id) else {
            return Some(output);
        };
        let answer = match result {
            Ok(outcome) => Self::join_answer(M::directory_outcome(outcome)),
            Err(error) => JoinAnswer::retry(error.to_string()),
        };
        self.outbox
            .push((joiner, ClusterMessage::JoinAnswer(answer)));
        None
    }

    /// Acts on what the directory applied since the last call: creates this node's replica
    /// of every partition newly placed here.
    pub fn on_directory_changes<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>) {
        let Some(machine) = host.machine_mut().directory_machine_mut() else {
            return;
        };
        let changes = machine.take_changes();
        let mut names = BTreeSet::new();
        let mut replaced = false;
        for (partition, change) in changes {
            if partition != SYSTEM_PARTITION {
                continue;
            }
            match change {
                DirectoryChange::Partition(name) => {
                    names.insert(name);
                }
                DirectoryChange::Replaced => replaced = true,
                DirectoryChange::Settings | DirectoryChange::Member(_) => {}
            }
        }
        if replaced {
            self.create_every_placed_replica(host);
        } else {
            for name in names {
                let entry = directory_of(host).and_then(|directory| directory.partition(&name));
                if let Some(entry) = entry.cloned() {
                    self.create_replica(host, entry.id, &entry.replicas, entry.generation);
                }
            }
        }
        self.update_state(host);
    }

    fn create_every_placed_replica<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>) {
        let Some(directory) = directory_of(host) else {
            return;
        };
        let placed: Vec<_> = directory
            .partitions()
            .filter(|entry| entry.replicas.contains(&self.me()))
            .map(|entry| (entry.id, entry.replicas.clone(), entry.generation))
            .collect();
        for (id, replicas, generation) in placed {
            self.create_replica(host, id, &replicas, generation);
        }
    }

    /// Creates this node's replica of a partition an entry places here (a no-op when it
    /// exists). A first-generation set founds the group; a later one (a move) joins it empty,
    /// for its leader to add.
    fn create_replica<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        id: crate::partition::PartitionId,
        replicas: &[NodeId],
        generation: u64,
    ) {
        if !replicas.contains(&self.me()) || host.group(id).is_some() {
            return;
        }
        let start = if generation == 1 {
            PartitionStart::Bootstrap {
                voters: replicas.to_vec(),
            }
        } else {
            PartitionStart::Joining
        };
        if let Err(error) = host.create_partition(id, start) {
            tracing::error!(partition = %id, %error, "could not create a placed replica");
        }
    }

    /// On the directory's leader: one step towards every member in its group and the
    /// settings' voters, zones spread.
    fn drive_directory_group<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>) {
        let Some(group) = host.group(SYSTEM_PARTITION) else {
            return;
        };
        let status = group.status();
        if status.leader != Some(self.me()) || status.configuration.is_joint() {
            return;
        }
        let Some(directory) = directory_of(host) else {
            return;
        };
        let Some(settings) = directory.settings() else {
            return;
        };
        let configuration = &status.configuration;
        let in_group =
            |id: &NodeId| configuration.voters.contains(id) || configuration.learners.contains(id);
        let members: Vec<&Member> = directory
            .members()
            .filter(|member| member.state != MemberState::Left)
            .collect();
        // A member that left stays in the group while it is heard from (it still deletes
        // its replicas as their moves settle, and must see those moves), and a grace period
        // after, so it learns it left.
        let grace = self.config.placement.retry_ticks;
        let now = self.tick;
        // One the group let go that is heard from again (it was away when declared dead)
        // is told so, every grace period: its copy of the directory no longer moves.
        let host_now = host.ticks();
        for member in directory.members() {
            let heard_lately = host
                .peer_heard_tick(member.id)
                .is_some_and(|heard| heard + grace >= host_now);
            if member.state != MemberState::Left
                || !heard_lately
                || member.id == self.me()
                || configuration.is_member(member.id)
            {
                continue;
            }
            let due = self
                .departed_told_tick
                .get(&member.id)
                .is_none_or(|told| now >= told + grace);
            if due {
                self.departed_told_tick.insert(member.id, now);
                let message = ClusterMessage::Departed {
                    instance: member.instance,
                };
                self.outbox.push((member.id, message));
            }
        }
        let mut departed = None;
        // The leader itself is not among them: it hands the directory on (below) once no
        // other change is due, and its own case must not hold the others up.
        let me = self.me();
        for node in configuration
            .voters
            .iter()
            .chain(&configuration.learners)
            .filter(|node| **node != me)
        {
            let gone = directory
                .member(*node)
                .is_none_or(|member| member.state == MemberState::Left);
            if !gone {
                self.departed_seen_tick.remove(node);
                continue;
            }
            // A voter that left gives its vote up at once, heard from or not (declared dead
            // while alive, it would otherwise keep a vote, and the group an even count).
            if configuration.voters.contains(node) {
                departed = departed.or(Some(*node));
                continue;
            }
            let heard_lately = host
                .peer_heard_tick(*node)
                .is_some_and(|heard| heard + grace >= host_now);
            if heard_lately {
                self.departed_seen_tick.remove(node);
                continue;
            }
            let seen = *self.departed_seen_tick.entry(*node).or_insert(now);
            if now >= seen + grace && departed.is_none() {
                departed = Some(*node);
            }
        }
        // Leaving, or declared dead while alive: either way it hands the directory on.
        let leaving_leader = directory
            .member(self.me())
            .is_some_and(|member| member.state != MemberState::Active);
        let successor = leaving_leader
            .then(|| {
                members.iter().find(|member| {
                    member.id != self.me()
                        && member.state == MemberState::Active
                        && configuration.voters.contains(&member.id)
                        && group.matched_index(member.id) >= Some(status.committed)
                })
            })
            .flatten()
            .map(|member| member.id);
        let change = if let Some(node) = departed {
            if configuration.voters.contains(&node) {
                Some(ConfigChange::Demote(node))
            } else {
                Some(ConfigChange::Remove(node))
            }
        } else {
            match members.iter().find(|member| !in_group(&member.id)) {
                Some(missing) => Some(ConfigChange::AddLearner(missing.id)),
                // A leaving leader changes no votes but one: with nobody to hand the
                // directory on to, it promotes an active learner that caught up.
                None if leaving_leader => match successor {
                    Some(_) => None,
                    None => members
                        .iter()
                        .find(|member| {
                            member.state == MemberState::Active
                                && configuration.learners.contains(&member.id)
                                && group.matched_index(member.id) >= Some(status.committed)
                        })
                        .map(|member| ConfigChange::Promote(member.id)),
                },
                None => self.next_voter_change(group, settings, &members),
            }
        };
        if let Some(change) = change {
            // Refused while an earlier change is pending: the next tick tries again.
            let _ = host.change_membership(SYSTEM_PARTITION, change);
        } else if let Some(successor) = successor {
            // A leaving leader hands the directory on before it is demoted.
            let due = self
                .transfer_asked_tick
                .is_none_or(|asked| now >= asked + grace);
            if due
                && host
                    .transfer_leadership(SYSTEM_PARTITION, successor)
                    .is_ok()
            {
                self.transfer_asked_tick = Some(now);
            }
        }
        self.departed_seen_tick.retain(|node, _| {
            configuration.voters.contains(node) || configuration.learners.contains(node)
        });
    }
}

impl ClusterCoordinator {
    /// The next step towards the settings' voters, spread over as many zones as the active
    /// members have: promote a caught-up learner (of a zone without a voter first); with one
    /// voter too many, demote one of a zone holding two; with enough voters but a zone left
    /// out that a caught-up learner could fill, promote it (the extra voter goes next).
    fn next_voter_change(
        &self,
        group: &crate::raft::RaftGroup,
        settings: &ClusterSettings,
        members: &[&Member],
    ) -> Option<ConfigChange> {
        let status = group.status();
        let configuration = &status.configuration;
        let active: Vec<&Member> = members
            .iter()
            .copied()
            .filter(|member| member.state == MemberState::Active)
            .collect();
        let wanted = usize::from(settings.directory_voters).min(active.len());
        let voters: Vec<&Member> = members
            .iter()
            .copied()
            .filter(|member| configuration.voters.contains(&member.id))
            .collect();
        let voter_zones: BTreeSet<_> = voters.iter().map(|member| &member.location).collect();
        let candidates: Vec<&Member> = active
            .iter()
            .copied()
            .filter(|member| {
                configuration.learners.contains(&member.id)
                    && group.matched_index(member.id) >= Some(status.committed)
            })
            .collect();
        let in_new_zone = candidates
            .iter()
            .find(|member| !voter_zones.contains(&member.location));
        if voters.len() < wanted {
            return in_new_zone
                .or(candidates.first())
                .map(|member| ConfigChange::Promote(member.id));
        }
        let leaving_voter = voters
            .iter()
            .find(|member| member.state != MemberState::Active && member.id != self.me());
        if let Some(member) = leaving_voter {
            // A leaving member's vote goes once another member took its place.
            if voters.len() > wanted {
                return Some(ConfigChange::Demote(member.id));
            }
            return in_new_zone
                .or(candidates.first())
                .map(|member| ConfigChange::Promote(member.id));
        }
        if voters.len() > wanted {
            let crowded = voters.iter().find(|member| {
                member.id != self.me()
                    && voters
                        .iter()
                        .filter(|other| other.location == member.location)
                        .count()
                        > 1
            });
            let any_other = voters.iter().find(|member| member.id != self.me());
            return crowded
                .or(any_other)
                .map(|member| ConfigChange::Demote(member.id));
        }
        let zones_possible = active
            .iter()
            .map(|member| &member.location)
            .collect::<BTreeSet<_>>()
            .len()
            .min(wanted);
        if voter_zones.len() < zones_possible {
            return in_new_zone.map(|member| ConfigChange::Promote(member.id));
        }
        None
    }
}

#[cfg(test)]
mod tests;
