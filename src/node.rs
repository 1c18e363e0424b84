//! A Borough node: the composition of its event coordinator (`crate::coordinator`: the
//! AllData event store, its peers and replica writes), its partition host
//! (`crate::partition`: the Raft groups of its partitions) and, in a cluster of named
//! partitions, its membership (`coordinator::cluster`) and router (`coordinator::router`),
//! driven as one sans-IO state machine. The same `Node` runs under the production shell and
//! inside the simulator.
//!
//! The driver's loop, in both worlds:
//! 1. hand the node its inputs: `put_event`, `handle_message`, `handle_deadlines` (when
//!    `next_deadline_micros` has passed on the node's clock), and the partitions' requests;
//! 2. when `has_staged_writes`, call `flush` once the disk can take it: every write staged
//!    since the last flush shares one commit and one sync (group commit);
//! 3. collect `take_outputs` (client answers, interval-closed notices, partition answers).
//!
//! The node itself only routes: it reads the clock and hands the time and its random stream
//! to the coordinator, routes each peer message to the coordinator, the partition host, the
//! membership or the router, ticks the host (and membership and router with it), and sends
//! and collects what they produced, in the order they produced it. A request a node routes
//! to itself, and its answer, are taken at once without the network.
//!
//! Whom it listens to: messages arrive decoded and checked by the wire codec; the node takes
//! them only from members of its peer table (Raft traffic, replicas, confirmations) or, for
//! the event protocol, from [`NodeId::UNATTRIBUTED`] (the driver's name for the AllData HTTP
//! peer endpoints, which, like the original's, trust whoever reaches the peer port). Anything
//! else is refused and counted in `messages_refused`: an outsider must not write events, stop
//! their repair, or speak in a Raft group. A join request is taken from anyone who reaches
//! the peer port (a node asking to join is no member yet); routed requests only from members
//! of the peer table or the directory. Members are trusted to run the protocol; their
//! messages are checked for form, not for truth.

use crate::application::{
    Handler, HandlerCounters, HandlerPlantedBug, HandlerRuntime, HandlerRuntimeConfig,
};
use crate::coordinator::cluster::{
    directory_of, ClusterConfig, ClusterCoordinator, ClusterKinds, MembershipState,
};
use crate::coordinator::router::{
    RoutedOutcome, RoutedRequest, Router, RouterAnswer, RouterConfig,
};
use crate::coordinator::{
    CommitLevel, CoordinatorConfig, CoordinatorCounters, CoordinatorOutput, EventCoordinator,
    PlantedBug, PutError,
};
use crate::directory::{Directory, PartitionName};
use crate::events::{EventKey, EventStore, IntervalClosed, StoreError};
use crate::feeds::{FeedConfig, FeedCounters, FeedDelivery, FeedError, FeedHub, SubscriptionId};
use crate::ids::{Location, NodeId};
use crate::partition::host::{HostConfig, HostOutput, PartitionHost, PartitionStart, RequestError};
use crate::partition::kv_store::{KvStateMachine, ReadAnswer, WriteOutcome};
use crate::partition::route::RouteMessage;
use crate::partition::state_machine::StateMachine;
use crate::partition::PartitionId;
use crate::placement::PeerTable;
use crate::seams::{Clock, Network, Rng, SharedDisk};
use crate::wire::Message;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The event side: the coordinator, its store and placement, and a canary's planted bug.
    pub coordinator: CoordinatorConfig,
    /// Raft partitions on this node; `None` runs the event store alone.
    pub partitions: Option<PartitionsConfig>,
    /// Membership of a cluster of named partitions (needs `partitions`, and kinds with a
    /// directory); `None` places partitions by hand (the simulator's numbered partitions).
    pub cluster: Option<ClusterConfig>,
    /// How requests for partition names are routed (with `cluster`).
    pub router: RouterConfig,
    /// How the request handler runs (with `cluster`, once a handler is set).
    pub handlers: HandlerRuntimeConfig,
    /// How the change feeds of maps are served (with `cluster`).
    pub feeds: FeedConfig,
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
            coordinator: CoordinatorConfig::new(id, location),
            partitions: None,
            cluster: None,
            router: RouterConfig::default(),
            handlers: HandlerRuntimeConfig::default(),
            feeds: FeedConfig::default(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.coordinator.id
    }

    fn planted_bug(&self) -> Option<PlantedBug> {
        self.coordinator.planted_bug
    }
}

/// Turns of one pump: each runs the handlers whose accesses resolved in the last, and hands
/// on what they filed.
const PUMP_TURNS_MAX: usize = 8;

/// The node's view of the world: the four seams.
pub struct NodeSeams {
    pub clock: Box<dyn Clock>,
    pub network: Box<dyn Network<Message>>,
    pub disk: SharedDisk,
    pub rng: Box<dyn Rng>,
}

/// What a node answers or observes; `Outcome` and `Answer` are its partitions' state
/// machine's (the key-value store's unless a node is built with another).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeOutput<Outcome = WriteOutcome, Answer = ReadAnswer> {
    PutAnswered {
        request_id: u64,
        result: Result<EventKey, PutError>,
    },
    IntervalClosed(IntervalClosed),
    /// Answers and observations of the node's Raft partitions.
    Partition(HostOutput<Outcome, Answer>),
    /// Answers to requests routed by partition name.
    Routed(RouterAnswer<Outcome, Answer>),
    /// Events of the change feeds subscribed to on this node.
    Feed(FeedDelivery),
}

/// The output type of a node whose partitions run state machine `M`.
pub type NodeOutputOf<M> = NodeOutput<<M as StateMachine>::Outcome, <M as StateMachine>::Answer>;

impl<Outcome, Answer> From<CoordinatorOutput> for NodeOutput<Outcome, Answer> {
    fn from(output: CoordinatorOutput) -> Self {
        match output {
            CoordinatorOutput::PutAnswered { request_id, result } => {
                NodeOutput::PutAnswered { request_id, result }
            }
            CoordinatorOutput::IntervalClosed(closed) => NodeOutput::IntervalClosed(closed),
        }
    }
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
    /// Group commits: each is one log append and one sync (the event store's and the
    /// partitions' rounds).
    pub group_commits: u64,
    /// Peer messages refused: from a node that is not a member, or refused by a partition.
    pub messages_refused: u64,
    /// What the request handler runtime did.
    pub handlers: HandlerCounters,
    /// What the change feeds did, and the subscriptions alive now.
    pub feeds: FeedCounters,
    pub feed_subscriptions: u64,
}

/// A node; its partitions run state machine `M` (the key-value store by default).
pub struct Node<M: ClusterKinds = KvStateMachine> {
    config: NodeConfig,
    seams: NodeSeams,
    events: EventCoordinator,
    partitions: Option<PartitionHost<M>>,
    /// Membership and routing, in a cluster of named partitions.
    cluster: Option<ClusterCoordinator>,
    router: Router<M>,
    /// The request handler's executor (idle until a handler is set).
    application: HandlerRuntime,
    /// The change feeds subscribed to on this node.
    feeds: FeedHub,
    /// Set when the partition store was found damaged at open (see `partition::raft_log`).
    partitions_damaged: Option<String>,
    next_raft_tick_micros: u64,
    outputs: Vec<NodeOutputOf<M>>,
    /// Partition rounds completed: each is one append and one sync of the Raft log.
    partition_rounds: u64,
    /// Messages refused at intake (the partition host counts its own refusals).
    messages_refused: u64,
    /// Routed requests the node made for itself (the placement driver's directory
    /// commands): their answers are not a client's.
    own_routed_requests: std::collections::BTreeSet<u64>,
}

impl<M: ClusterKinds> std::fmt::Debug for Node<M> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Node")
            .field("id", &self.config.id())
            .field("writes", &self.events.active_writes())
            .finish_non_exhaustive()
    }
}

impl<M: ClusterKinds + Default> Node<M> {
    /// Opens the node: recovers the event store, the key generator and the partitions from
    /// disk.
    pub fn open(config: NodeConfig, seams: NodeSeams) -> Result<Self, StoreError> {
        let now = seams.clock.now_micros();
        let events = EventCoordinator::open(config.coordinator.clone(), seams.disk.clone(), now)?;
        let mut seams = seams;
        let mut partitions_damaged = None;
        let partitions = match &config.partitions {
            // Drawn only when partitions run, so event-store runs keep their random streams.
            Some(partitions) => match PartitionHost::open(
                config.id(),
                seams.disk.clone(),
                HostConfig {
                    torn_tails_are_damage: config.planted_bug()
                        == Some(PlantedBug::TornTailsAreDamage),
                    ..partitions.host.clone()
                },
                seams.rng.next_u64(),
                M::default(),
            ) {
                Ok(host) => Some(host),
                // The node still serves events; its partition replicas stay out until an
                // operator rebuilds them.
                Err(RequestError::Damaged(reason)) => {
                    tracing::error!(node = %config.id(), %reason, "partition replicas out of service");
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
        let mut partitions = partitions;
        let cluster = match (&config.cluster, &mut partitions) {
            (Some(cluster), Some(host)) => Some(
                ClusterCoordinator::open(cluster.clone(), host)
                    .map_err(|error| StoreError::Corrupt(format!("cluster: {error}")))?,
            ),
            _ => None,
        };
        let router = Router::new(RouterConfig {
            tick_micros: config
                .partitions
                .as_ref()
                .map_or(config.router.tick_micros, |partitions| {
                    partitions.tick_micros
                }),
            ..config.router.clone()
        });
        let mut router = router;
        if config.handlers.planted_bug == Some(HandlerPlantedBug::ReadFollowerWithoutReadIndex) {
            router.plant_serve_handlers_on_own_replica();
        }
        let application = HandlerRuntime::new(config.handlers.clone());
        let feeds = FeedHub::new(config.feeds.clone());
        Ok(Self {
            config,
            seams,
            events,
            partitions,
            cluster,
            router,
            application,
            feeds,
            partitions_damaged,
            next_raft_tick_micros,
            outputs: Vec::new(),
            partition_rounds: 0,
            messages_refused: 0,
            own_routed_requests: std::collections::BTreeSet::new(),
        })
    }
}

impl<M: ClusterKinds> Node<M> {
    pub fn id(&self) -> NodeId {
        self.config.id()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn counters(&self) -> NodeCounters {
        let CoordinatorCounters {
            replica_failures,
            respreads,
            repairs,
            group_commits,
        } = self.events.counters();
        let refused_by_partitions = self
            .partitions
            .as_ref()
            .map_or(0, |host| host.counters().messages_refused);
        NodeCounters {
            replica_failures,
            respreads,
            repairs,
            group_commits: group_commits + self.partition_rounds,
            messages_refused: self.messages_refused + refused_by_partitions,
            handlers: self.application.counters(),
            feeds: self.feeds.counters(),
            feed_subscriptions: self.feeds.len() as u64,
        }
    }

    pub fn store(&self) -> &EventStore {
        self.events.store()
    }

    /// The event stored here under `key`, if this node holds it durably.
    pub fn get_event(&self, key: &EventKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.events.store().get(key)
    }

    /// Events this node holds durably with keys in `[from, to)`, in key order, at most `limit`.
    pub fn scan_events(
        &self,
        from: Option<&EventKey>,
        to_exclusive: Option<&EventKey>,
        limit: usize,
    ) -> Result<Vec<(EventKey, Vec<u8>)>, StoreError> {
        self.events.store().range(from, to_exclusive, limit)
    }

    /// A member is up and runs at `location`: placement uses it.
    pub fn add_peer(&mut self, peer: NodeId, location: Location) {
        self.events.peers_mut().add_peer(peer, location);
    }

    /// A member whose place is not known yet (configured, never heard from): it counts
    /// towards the cluster's size, and is down until `add_peer` says where it runs.
    pub fn add_unplaced_peer(&mut self, peer: NodeId) {
        self.events.peers_mut().add_unplaced(peer);
    }

    /// A member went silent: it stays a member (and a replica's eventual home), but
    /// placement tries it last and commit levels count only the nodes that are up.
    pub fn mark_peer_down(&mut self, peer: NodeId) -> bool {
        self.events.peers_mut().mark_down(peer)
    }

    /// Removes a member from the peer table.
    pub fn drop_peer(&mut self, peer: NodeId) -> bool {
        self.events.peers_mut().drop_peer(peer)
    }

    pub fn peers(&self) -> &PeerTable {
        self.events.peers()
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
        let now = self.now();
        let key = self.events.put_event(
            now,
            self.seams.rng.as_mut(),
            request_id,
            event,
            commit_level,
        );
        self.hand_on_event_work();
        key
    }

    /// Sends what the event coordinator sent and collects what it answered, in its order.
    fn hand_on_event_work(&mut self) {
        for (to, message) in self.events.take_sends() {
            self.seams.network.send(to, message);
        }
        self.outputs
            .extend(self.events.take_outputs().into_iter().map(NodeOutput::from));
    }

    /// Whether a message of this kind from `from` is taken (see the module doc).
    fn accepts(&self, from: NodeId, message: &Message) -> bool {
        if self.config.planted_bug() == Some(PlantedBug::TrustAnySender) {
            return true;
        }
        if from == self.config.id() {
            return false;
        }
        let peers = self.events.peers();
        match message {
            Message::Replicate { .. } | Message::Confirm { .. } => {
                from == NodeId::UNATTRIBUTED || peers.is_member(from)
            }
            Message::ReplicateResult { .. } => peers.is_member(from),
            // Raft traffic needs partitions here to take it.
            Message::Raft(_) => peers.is_member(from) && self.partitions.is_some(),
            // A node asking to join is not a member yet.
            Message::Cluster(_) => self.cluster.is_some(),
            Message::Route(_) => self.cluster.is_some() && self.is_cluster_member(from),
        }
    }

    /// A message from a peer, already decoded and checked by the wire codec.
    pub fn handle_message(&mut self, from: NodeId, message: Message) {
        if !self.accepts(from, &message) {
            tracing::debug!(node = %self.config.id(), %from, kind = message.kind(), "message refused: not from a member, or no partitions here");
            self.messages_refused += 1;
            return;
        }
        match message {
            Message::Raft(envelope) => {
                if let Some(host) = &mut self.partitions {
                    host.receive(from, envelope);
                    self.pump_partitions();
                }
            }
            Message::Cluster(message) => {
                if let (Some(cluster), Some(host)) = (&mut self.cluster, &mut self.partitions) {
                    cluster.receive(host, from, message);
                    self.pump_partitions();
                }
            }
            Message::Route(message) => {
                self.take_route(from, message);
                self.pump_partitions();
            }
            event_message => {
                let now = self.now();
                self.events.handle_message(now, from, event_message);
                self.hand_on_event_work();
            }
        }
    }

    // ---- partitions ----

    /// The node's Raft partitions, when it runs them.
    pub fn partitions(&self) -> Option<&PartitionHost<M>> {
        self.partitions.as_ref()
    }

    fn host(&mut self) -> Result<&mut PartitionHost<M>, RequestError> {
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
        operation: M::Operation,
    ) -> Result<u64, RequestError> {
        let request_id = self.host()?.write(partition, operation)?;
        self.pump_partitions();
        Ok(request_id)
    }

    /// Starts a linearizable read of `partition`; the answer is a `NodeOutput::Partition`.
    pub fn partition_read(
        &mut self,
        partition: PartitionId,
        request: M::Query,
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
                if let Some(cluster) = &mut self.cluster {
                    cluster.tick(host);
                    self.router.tick(host);
                }
                self.next_raft_tick_micros += tick_micros;
                ticks += 1;
            }
            if self.next_raft_tick_micros <= now {
                self.next_raft_tick_micros = now + tick_micros;
            }
            // Deadlines of handlers, and tasks left over from the last turn.
            self.application.run(host, &mut self.router, now);
        }
        self.pump_partitions();
    }

    /// Starts the partitions' next round if one is due, and hands on what they produced;
    /// runs the request handlers whose accesses resolved, and hands on what they did.
    fn pump_partitions(&mut self) {
        for _ in 0..PUMP_TURNS_MAX {
            self.pump_partitions_once();
            if !self.application.has_ready() {
                return;
            }
            let now = self.now();
            let Some(host) = &mut self.partitions else {
                return;
            };
            self.application.run(host, &mut self.router, now);
        }
        // Tasks still ready run at the next input or tick; what they did is handed on now.
        self.pump_partitions_once();
    }

    fn pump_partitions_once(&mut self) {
        let Some(host) = &mut self.partitions else {
            return;
        };
        // Feeds first: what the last round applied goes out now, and a relay's reads leave
        // with this pass's routes.
        self.feeds
            .pump(host, &mut self.router, self.cluster.is_some());
        self.outputs.extend(
            self.feeds
                .take_deliveries()
                .into_iter()
                .map(NodeOutput::Feed),
        );
        host.prepare_round();
        for (to, envelope) in host.take_envelopes() {
            self.seams.network.send(to, Message::Raft(envelope));
        }
        let outputs: Vec<_> = host
            .take_outputs()
            .into_iter()
            .filter_map(|output| self.application.take_host_output::<M>(output))
            .collect();
        match &mut self.cluster {
            Some(cluster) => {
                cluster.on_directory_changes(host);
                for output in outputs {
                    if let Some(output) = cluster.on_output::<M>(output) {
                        self.outputs.push(NodeOutput::Partition(output));
                    }
                }
                for (to, message) in cluster.take_messages() {
                    self.seams.network.send(to, Message::Cluster(message));
                }
                for operation in cluster.take_directory_requests() {
                    if let Some(operation) = M::directory_operation(operation) {
                        let request_id = self.router.submit_directory(host, operation);
                        self.own_routed_requests.insert(request_id);
                    }
                }
                for (joiner, operation) in cluster.take_joins_to_route() {
                    if let Some(operation) = M::directory_operation(operation) {
                        let request_id = self.router.submit_directory(host, operation);
                        cluster.join_routed(request_id, joiner);
                    }
                }
            }
            None => self
                .outputs
                .extend(outputs.into_iter().map(NodeOutput::Partition)),
        }
        self.hand_on_routes();
    }

    /// Sends the routed requests and answers the host queued; those for this node are taken
    /// here at once (a request routed to itself, and its answer).
    fn hand_on_routes(&mut self) {
        // Bounded: each pass answers what the last one served, and serving queues at most
        // one answer per request.
        for _ in 0..4 {
            let Some(host) = &mut self.partitions else {
                return;
            };
            let messages = host.take_route_messages();
            if messages.is_empty() {
                break;
            }
            let me = self.config.id();
            for (to, message) in messages {
                if to == me {
                    self.take_route(me, message);
                } else {
                    self.seams.network.send(to, Message::Route(message));
                }
            }
            if let Some(host) = &mut self.partitions {
                host.prepare_round();
                for (to, envelope) in host.take_envelopes() {
                    self.seams.network.send(to, Message::Raft(envelope));
                }
            }
        }
        for answer in self.router.take_answers() {
            if self.own_routed_requests.remove(&answer.request_id) {
                continue;
            }
            let Some(answer) = self.application.take_router_answer::<M>(answer) else {
                continue;
            };
            let Some(answer) = self.feeds.take_router_answer::<M>(answer) else {
                self.outputs.extend(
                    self.feeds
                        .take_deliveries()
                        .into_iter()
                        .map(NodeOutput::Feed),
                );
                continue;
            };
            if let Some(cluster) = &mut self.cluster {
                let result = match &answer.result {
                    Ok(RoutedOutcome::Wrote(outcome)) => Ok(outcome),
                    Ok(RoutedOutcome::Read(_) | RoutedOutcome::Replied(_)) => {
                        Err("a read answered a join".to_string())
                    }
                    Err(error) => Err(error.to_string()),
                };
                if cluster.on_routed_join_answer::<M>(answer.request_id, result) {
                    continue;
                }
            }
            self.outputs.push(NodeOutput::Routed(answer));
        }
    }

    /// A routed request (served by the host, or by the handler runtime) or an answer (taken
    /// by the router).
    fn take_route(&mut self, from: NodeId, message: RouteMessage) {
        let now = self.now();
        let Some(host) = &mut self.partitions else {
            return;
        };
        if matches!(message, RouteMessage::Handle { .. }) {
            self.application.serve(host, from, message, now);
            return;
        }
        self.router.take_route(host, from, message);
    }

    // ---- request handlers ----

    /// The application's request handler: this node runs it for the requests it serves as
    /// a partition's leader.
    pub fn set_handler(&mut self, handler: std::sync::Arc<dyn Handler>) {
        self.application.set_handler(handler);
    }

    pub fn handler_counters(&self) -> HandlerCounters {
        self.application.counters()
    }

    /// Handler tasks running here, and requests queued for one-at-a-time handlers.
    pub fn handler_load(&self) -> (usize, usize) {
        self.application.load()
    }

    /// A request for the handler of partition `name`, routed to its leader from here; the
    /// answer is a `NodeOutput::Routed` with the returned id (`RoutedOutcome::Replied`).
    /// The request waits `timeout_micros` at most.
    pub fn request(
        &mut self,
        name: PartitionName,
        body: Vec<u8>,
        timeout_micros: u64,
    ) -> Result<u64, RequestError> {
        let idempotent = self.application.idempotent();
        let request = RoutedRequest::Handle {
            body,
            idempotent,
            timeout_micros,
        };
        self.route_request(name, request)
    }

    // ---- change feeds ----

    /// Subscribes to the change feed of map `name` on this node, from revision `from` (the
    /// subscriber had every change up to it) or from nothing. Its events come out as
    /// `NodeOutput::Feed` deliveries naming the returned id: first `Ready` (or `Resumed`),
    /// then every change after it.
    pub fn subscribe(
        &mut self,
        name: PartitionName,
        from: Option<u64>,
    ) -> Result<SubscriptionId, FeedError> {
        if self.cluster.is_none() {
            return Err(FeedError::NoCluster);
        }
        let id = self.feeds.subscribe(name, from)?;
        self.pump_partitions();
        Ok(id)
    }

    /// Ends a subscription: nothing more is delivered for it.
    pub fn unsubscribe(&mut self, id: SubscriptionId) {
        self.feeds.unsubscribe(id);
    }

    pub fn feed_counters(&self) -> FeedCounters {
        self.feeds.counters()
    }

    /// Subscriptions alive on this node.
    pub fn feed_subscriptions(&self) -> usize {
        self.feeds.len()
    }

    /// Whether `from` is a member of this node's cluster (in its directory, or its peer
    /// table).
    fn is_cluster_member(&self, from: NodeId) -> bool {
        self.events.peers().is_member(from)
            || self
                .directory()
                .and_then(|directory| directory.member(from))
                .is_some()
    }

    // ---- the cluster ----

    /// This node's copy of the cluster directory, once it applied any.
    pub fn directory(&self) -> Option<&Directory> {
        directory_of(self.partitions.as_ref()?)
    }

    /// Where this node stands in its cluster (`None` outside a cluster).
    pub fn membership(&self) -> Option<&MembershipState> {
        self.cluster.as_ref().map(ClusterCoordinator::state)
    }

    /// The member to ask to join through (a node started to join, once the shell learned
    /// the seed's id from its address).
    pub fn join_through(&mut self, seed: NodeId) {
        if let Some(cluster) = &mut self.cluster {
            cluster.set_seed(seed);
        }
    }

    /// Drains this node from its cluster: its replicas move away, then the directory marks
    /// it left (see [`Node::membership`]).
    pub fn leave(&mut self) -> Result<(), RequestError> {
        match &mut self.cluster {
            Some(cluster) => {
                cluster.leave();
                Ok(())
            }
            None => Err(RequestError::Invalid(
                "this node runs no cluster of named partitions".into(),
            )),
        }
    }

    /// Whether this node left its cluster and nothing depends on it any more: it may stop.
    /// Whether the node left its cluster without a drain of its own (see
    /// [`ClusterCoordinator::left_without_draining`]).
    /// Never while its copy of the directory's group still counts it a voter or leader: a
    /// new instance under its id, with its votes forgotten, could vote twice in a term.
    pub fn left_without_draining(&self) -> bool {
        let me = self.config.id();
        let still_votes = self
            .partitions
            .as_ref()
            .and_then(|host| host.status(crate::directory::SYSTEM_PARTITION))
            .is_some_and(|status| status.leader == Some(me) || status.configuration.is_voter(me));
        !still_votes
            && self
                .cluster
                .as_ref()
                .is_some_and(ClusterCoordinator::left_without_draining)
    }

    pub fn is_drained(&self) -> bool {
        match (&self.cluster, &self.partitions) {
            (Some(cluster), Some(host)) => cluster.is_drained(host),
            _ => false,
        }
    }

    /// What the placement driver on this node did.
    pub fn placement_counters(&self) -> Option<crate::coordinator::placement::PlacementCounters> {
        self.cluster
            .as_ref()
            .map(ClusterCoordinator::placement_counters)
    }

    /// The leader this node's router last heard of for `partition`.
    pub fn routed_leader(&self, partition: PartitionId) -> Option<NodeId> {
        self.router.leader_of(partition)
    }

    /// A request for partition `name`, routed to its leader from here; the answer is a
    /// `NodeOutput::Routed` with the returned id.
    pub fn route_request(
        &mut self,
        name: PartitionName,
        request: RoutedRequest<M::Operation, M::Query>,
    ) -> Result<u64, RequestError> {
        if self.cluster.is_none() {
            return Err(RequestError::Invalid(
                "this node runs no cluster of named partitions".into(),
            ));
        }
        self.host()?;
        let Some(host) = &mut self.partitions else {
            return Err(RequestError::Invalid("this node runs no partitions".into()));
        };
        let request_id = self.router.submit(host, name, request);
        self.pump_partitions();
        Ok(request_id)
    }

    /// Fires every timer due on the node's clock: Raft ticks, replica timeouts, repairs,
    /// interval closing.
    pub fn handle_deadlines(&mut self) {
        let now = self.now();
        if now >= self.next_raft_tick_micros {
            self.tick_partitions(now);
        }
        self.events.handle_deadlines(now, self.seams.rng.as_mut());
        self.hand_on_event_work();
    }

    /// Whether `flush` has work: staged writes waiting for their commit.
    pub fn has_staged_writes(&self) -> bool {
        self.events.has_staged_writes()
            || self
                .partitions
                .as_ref()
                .is_some_and(PartitionHost::has_prepared_round)
    }

    /// Group commit: the partitions' prepared round, then one append and one sync for every
    /// event write staged, then the answers that waited for them. A failed commit poisons
    /// its store and fails every write waiting on it.
    pub fn flush(&mut self) {
        if let Some(host) = &mut self.partitions {
            if host.has_prepared_round() {
                host.complete_round();
                self.partition_rounds += 1;
            }
            self.pump_partitions();
        }
        let now = self.now();
        self.events.flush(now);
        self.hand_on_event_work();
    }

    /// [`Node::flush`] for a driver that syncs on another thread: the partitions' prepared
    /// round is written and the file to sync is returned instead of synced here; the driver
    /// reports the sync with [`Node::round_synced`], and meanwhile takes inputs (the round
    /// waits; nothing it holds back leaves before the report). Event writes still sync here.
    pub fn flush_detached(&mut self) -> Option<String> {
        let mut to_sync = None;
        if let Some(host) = &mut self.partitions {
            if host.has_prepared_round() && !host.is_awaiting_sync() {
                to_sync = host.write_round();
                if to_sync.is_none() {
                    self.partition_rounds += 1;
                }
            }
            self.pump_partitions();
        }
        let now = self.now();
        self.events.flush(now);
        self.hand_on_event_work();
        to_sync
    }

    /// The result of the sync [`Node::flush_detached`] asked for: completes the round.
    pub fn round_synced(&mut self, result: Result<(), crate::seams::DiskError>) {
        if let Some(host) = &mut self.partitions {
            host.round_synced(result);
            self.partition_rounds += 1;
            self.pump_partitions();
        }
    }

    /// The earliest local time at which `handle_deadlines` has work.
    pub fn next_deadline_micros(&self) -> u64 {
        self.events
            .next_deadline_micros()
            .min(self.next_raft_tick_micros)
    }

    pub fn take_outputs(&mut self) -> Vec<NodeOutputOf<M>> {
        std::mem::take(&mut self.outputs)
    }

    pub fn is_poisoned(&self) -> bool {
        self.events.is_poisoned()
            || self
                .partitions
                .as_ref()
                .is_some_and(PartitionHost::is_poisoned)
    }

    /// Writes this node is coordinating or repairing.
    pub fn active_writes(&self) -> usize {
        self.events.active_writes()
    }
}
