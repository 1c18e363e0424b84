//! Drives one sans-IO [`Node`] on its own thread: the production half of the simulator's world.
//!
//! The node thread owns the node and its disk; everything else talks to it through a bounded
//! inbox ([`NodeHandle`]). Each turn it takes every input that is waiting (up to a batch), fires
//! due timers, then flushes once, so all writes that arrived together share one commit and one
//! fsync (group commit). The partitions' Raft log syncs on a blocking thread while the loop
//! takes inputs (one round's sync out at a time; the round completes, and its acknowledgements
//! and answers leave, only when the sync reports); event writes sync on the loop, and new
//! inputs wait in the inbox meanwhile. When the inbox is full, client calls are refused as
//! overloaded and peer readers stop reading their sockets, which pushes back on the senders
//! through TCP. Memory stays bounded either way.

use crate::coordinator::cluster_machine::{
    ClusterAnswer, ClusterOperation, ClusterOutcome, ClusterQuery, ClusterStateMachine,
};
use crate::coordinator::router::{RouteError, RoutedOutcome, RoutedRequest};
use crate::coordinator::{CommitLevel, PutError};
use crate::directory::{MemberState, PartitionName};
use crate::events::{EventKey, StoreError};
use crate::feeds::{FeedError, SubscriptionId};
use crate::ids::{Location, NodeId};
use crate::node::{NodeConfig, NodeCounters, NodeOutput, NodeSeams};
use crate::production::feed_sink::{FeedSink, RenderedEvent};
use crate::production::file_disk::sync_duplicate;
use crate::production::{os_seeded_rng, FileDisk, SystemClock};
use crate::seams::{Clock, DiskError, Network};
use crate::wire::{Message, ReplicaRefusal};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Inputs taken in one turn before the group commit.
const BATCH_INPUTS_MAX: usize = 4096;

/// The sender id the node sees for replicas that arrive over the AllData HTTP peer endpoint;
/// its answers go back to the waiting HTTP request instead of the network.
pub const HTTP_PEER: NodeId = NodeId::UNATTRIBUTED;

/// The node the shell runs: its partitions hold the cluster directory and key-value data.
pub type Node = crate::node::Node<ClusterStateMachine>;

/// What a routed request of the shell came to.
pub type RoutedResult = Result<RoutedOutcome<ClusterOutcome, ClusterAnswer>, RouteError>;

/// Sends the node's messages to its peers (the TCP or the HTTP transport).
pub trait PeerSender: Send + Sync {
    fn send(&self, to: NodeId, message: Message);

    /// A member of the cluster directory listens at `peer_address`: dial it (a transport
    /// that only knows configured peers ignores this).
    fn learn_member(&self, _id: NodeId, _peer_address: std::net::SocketAddr) {}
}

/// The cluster as this node's copy of the directory has it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClusterView {
    pub node: u32,
    /// Joining, member, refused (with why), or `none` without a cluster.
    pub membership: String,
    pub cluster_name: Option<String>,
    pub replicas_per_partition: Option<u8>,
    pub directory_leader: Option<u32>,
    pub directory_voters: Vec<u32>,
    pub members: Vec<MemberView>,
    /// This node left the cluster and holds no replica: it may stop (and does).
    pub drained: bool,
    /// It left without a drain of its own (declared dead while away): the binary starts
    /// over on an empty data dir and joins as a new member.
    pub rejoin_as_new: bool,
    /// How many partitions the directory lists; at most `PARTITIONS_LISTED_MAX` are listed.
    pub partition_count: usize,
    /// Partitions moving between nodes now.
    pub moving_count: usize,
    pub partitions: Vec<PartitionView>,
}

/// Partitions `ClusterView` lists at most.
pub const PARTITIONS_LISTED_MAX: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberView {
    pub id: u32,
    pub peer_address: String,
    pub http_address: String,
    pub zone: String,
    pub region: String,
    pub state: &'static str,
    /// Partitions the directory places on it.
    pub replicas: usize,
    /// Partitions it leads, as this node knows their leaders.
    pub leads: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PartitionView {
    /// The name's bytes: shown as text when they are UTF-8.
    #[serde(skip)]
    pub name: Vec<u8>,
    pub replicas: Vec<u32>,
    pub generation: u64,
    /// The leader as this node last saw it (its own replica's view, or its router's).
    pub leader: Option<u32>,
}

/// A partition as the directory places it, and this node's replica of it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlacement {
    pub generation: u64,
    /// Each replica with its member record (`None` if the directory lost it).
    pub replicas: Vec<(NodeId, Option<MemberView>)>,
    pub local: Option<ReplicaView>,
    pub routed_leader: Option<NodeId>,
}

/// One replica's own view of its group.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaView {
    pub node: u32,
    pub role: String,
    pub term: u64,
    pub leader: Option<u32>,
    pub commit_index: u64,
    pub applied_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub location: Location,
    pub poisoned: bool,
    pub active_writes: usize,
    pub unconfirmed_events: usize,
    /// Every member of the node's peer table: where it runs (once known) and whether it is up.
    pub members: Vec<(NodeId, Option<Location>, bool)>,
    pub counters: NodeCounters,
}

impl NodeStatus {
    /// The members placement counts as up.
    pub fn peers_up(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, _, up)| *up)
            .map(|(id, _, _)| *id)
            .collect()
    }
}

type Reply<T> = oneshot::Sender<T>;
type ScanReply = Reply<Result<Vec<(EventKey, Vec<u8>)>, String>>;
/// Waiting HTTP-peer replicas by the write id the node was given for them.
type HttpReplies = Rc<RefCell<BTreeMap<u64, Reply<Result<(), ReplicaRefusal>>>>>;

/// A put the node took: its key as soon as one is issued, and its answer once the commit
/// level is met (or cannot be).
#[derive(Debug)]
pub struct PendingPut {
    pub key: oneshot::Receiver<EventKey>,
    pub answer: oneshot::Receiver<Result<EventKey, PutError>>,
}

pub enum NodeInput {
    Put {
        event: Vec<u8>,
        commit_level: Option<CommitLevel>,
        key: Reply<EventKey>,
        reply: Reply<Result<EventKey, PutError>>,
    },
    Get {
        key: EventKey,
        reply: Reply<Result<Option<Vec<u8>>, String>>,
    },
    Scan {
        from: Option<EventKey>,
        to_exclusive: Option<EventKey>,
        limit: usize,
        reply: ScanReply,
    },
    PeerMessage {
        from: NodeId,
        message: Message,
    },
    /// A replica from the HTTP peer endpoint, answered once durable (or refused).
    HttpReplica {
        key: EventKey,
        event: Vec<u8>,
        reply: Reply<Result<(), ReplicaRefusal>>,
    },
    /// `generation` orders the reports of one peer: an older one than the last seen is stale.
    PeerUp {
        id: NodeId,
        location: Location,
        generation: u64,
    },
    PeerDown {
        id: NodeId,
        generation: u64,
    },
    /// A peer outside the configuration stayed down too long: no longer a member.
    PeerForgotten {
        id: NodeId,
        generation: u64,
    },
    Status {
        reply: Reply<NodeStatus>,
    },
    /// Drain this node out of its cluster.
    Leave {
        reply: Reply<Result<(), String>>,
    },
    /// A request for a named partition, routed to its leader.
    Routed {
        name: PartitionName,
        request: RoutedRequest<ClusterOperation, ClusterQuery>,
        reply: Reply<RoutedResult>,
    },
    /// A request for the handler of partition `name`, run on its leader.
    Request {
        name: PartitionName,
        body: Vec<u8>,
        timeout_micros: u64,
        reply: Reply<RoutedResult>,
    },
    /// The member to join through, once its id is known.
    JoinThrough {
        seed: NodeId,
    },
    Cluster {
        reply: Reply<ClusterView>,
    },
    Placement {
        name: PartitionName,
        reply: Reply<Option<PartitionPlacement>>,
    },
    /// Subscribe `sink` to the change feed of map `name`, from revision `from`.
    Subscribe {
        name: PartitionName,
        from: Option<u64>,
        sink: Arc<FeedSink>,
        reply: Reply<Result<SubscriptionId, FeedError>>,
    },
    Unsubscribe {
        id: SubscriptionId,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("the node is overloaded: its inbox is full, try again")]
    Overloaded,
    #[error("the node has stopped")]
    Stopped,
}

/// A cheap, cloneable way in to the node thread.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    inbox: mpsc::Sender<NodeInput>,
}

impl NodeHandle {
    /// A handle onto any receiver of node inputs: `spawn_node` makes the real one; transport
    /// tests stand in for the node with a plain channel.
    pub fn from_sender(inbox: mpsc::Sender<NodeInput>) -> Self {
        Self { inbox }
    }

    /// Queues an input without waiting; refused when the inbox is full.
    pub fn try_submit(&self, input: NodeInput) -> Result<(), DriverError> {
        self.inbox.try_send(input).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => DriverError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => DriverError::Stopped,
        })
    }

    /// Queues an input, waiting for room: for peer readers, so a full inbox slows the sender.
    pub async fn submit(&self, input: NodeInput) -> Result<(), DriverError> {
        self.inbox
            .send(input)
            .await
            .map_err(|_| DriverError::Stopped)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> NodeInput) -> Result<T, DriverError> {
        let (reply, answer) = oneshot::channel();
        self.try_submit(make(reply))?;
        answer.await.map_err(|_| DriverError::Stopped)
    }

    /// Hands the node a put; the key and the answer come through the returned receivers.
    pub fn start_put(
        &self,
        event: Vec<u8>,
        commit_level: Option<CommitLevel>,
    ) -> Result<PendingPut, DriverError> {
        let (key, key_receiver) = oneshot::channel();
        let (reply, answer) = oneshot::channel();
        self.try_submit(NodeInput::Put {
            event,
            commit_level,
            key,
            reply,
        })?;
        Ok(PendingPut {
            key: key_receiver,
            answer,
        })
    }

    pub async fn put(
        &self,
        event: Vec<u8>,
        commit_level: Option<CommitLevel>,
    ) -> Result<Result<EventKey, PutError>, DriverError> {
        let pending = self.start_put(event, commit_level)?;
        pending.answer.await.map_err(|_| DriverError::Stopped)
    }

    pub async fn get(&self, key: EventKey) -> Result<Result<Option<Vec<u8>>, String>, DriverError> {
        self.call(|reply| NodeInput::Get { key, reply }).await
    }

    pub async fn scan(
        &self,
        from: Option<EventKey>,
        to_exclusive: Option<EventKey>,
        limit: usize,
    ) -> Result<Result<Vec<(EventKey, Vec<u8>)>, String>, DriverError> {
        self.call(|reply| NodeInput::Scan {
            from,
            to_exclusive,
            limit,
            reply,
        })
        .await
    }

    pub async fn http_replica(
        &self,
        key: EventKey,
        event: Vec<u8>,
    ) -> Result<Result<(), ReplicaRefusal>, DriverError> {
        self.call(|reply| NodeInput::HttpReplica { key, event, reply })
            .await
    }

    /// Drains this node: its replicas move away, then it leaves the directory; the server
    /// stops once nothing depends on it (`ClusterView::drained`).
    pub async fn leave(&self) -> Result<Result<(), String>, DriverError> {
        self.call(|reply| NodeInput::Leave { reply }).await
    }

    pub async fn status(&self) -> Result<NodeStatus, DriverError> {
        self.call(|reply| NodeInput::Status { reply }).await
    }

    /// Routes a request for partition `name` to its leader and waits for its answer (the
    /// router bounds the wait).
    pub async fn routed(
        &self,
        name: PartitionName,
        request: RoutedRequest<ClusterOperation, ClusterQuery>,
    ) -> Result<RoutedResult, DriverError> {
        self.call(|reply| NodeInput::Routed {
            name,
            request,
            reply,
        })
        .await
    }

    /// Sends `body` to the handler of partition `name` on its leader and waits for its reply
    /// (at most `timeout_micros`).
    pub async fn request(
        &self,
        name: PartitionName,
        body: Vec<u8>,
        timeout_micros: u64,
    ) -> Result<RoutedResult, DriverError> {
        self.call(|reply| NodeInput::Request {
            name,
            body,
            timeout_micros,
            reply,
        })
        .await
    }

    /// Subscribes `sink` to the change feed of map `name`; its events arrive in the sink.
    pub async fn subscribe(
        &self,
        name: PartitionName,
        from: Option<u64>,
        sink: Arc<FeedSink>,
    ) -> Result<Result<SubscriptionId, FeedError>, DriverError> {
        self.call(|reply| NodeInput::Subscribe {
            name,
            from,
            sink,
            reply,
        })
        .await
    }

    /// Ends a subscription (its connection closed). Queued behind the inputs before it;
    /// waits for room, so it is never lost to a full inbox.
    pub async fn unsubscribe(&self, id: SubscriptionId) {
        let _ = self.submit(NodeInput::Unsubscribe { id }).await;
    }

    pub async fn cluster(&self) -> Result<ClusterView, DriverError> {
        self.call(|reply| NodeInput::Cluster { reply }).await
    }

    pub async fn placement(
        &self,
        name: PartitionName,
    ) -> Result<Option<PartitionPlacement>, DriverError> {
        self.call(|reply| NodeInput::Placement { name, reply })
            .await
    }
}

/// The node's `Network` seam in production: peers through the transport, and answers to
/// HTTP-peer replicas back to their waiting requests.
struct ShellNetwork {
    peers: Arc<dyn PeerSender>,
    http_replies: HttpReplies,
}

impl Network<Message> for ShellNetwork {
    fn send(&mut self, to: NodeId, message: Message) {
        if to == HTTP_PEER {
            if let Message::ReplicateResult {
                write_id, outcome, ..
            } = message
            {
                if let Some(reply) = self.http_replies.borrow_mut().remove(&write_id) {
                    let _ = reply.send(outcome);
                }
            }
            return;
        }
        self.peers.send(to, message);
    }
}

/// Starts the node thread: opens (recovers) the node from `data_dir`, makes the configured
/// `members` members of its peer table (down until heard from), then serves its inbox until
/// every handle is dropped. Returns once the node is open, or with the error that stopped it
/// from opening.
pub fn spawn_node(
    config: NodeConfig,
    data_dir: PathBuf,
    members: Vec<NodeId>,
    peers: Arc<dyn PeerSender>,
    inbox_capacity: usize,
    handler: Option<Arc<dyn crate::application::Handler>>,
) -> Result<(NodeHandle, std::thread::JoinHandle<()>), StoreError> {
    let (inbox_sender, inbox) = mpsc::channel(inbox_capacity);
    let (opened_sender, opened) = std::sync::mpsc::channel();
    #[allow(clippy::disallowed_methods)] // the production shell runs the node on its own thread
    let thread = std::thread::Builder::new()
        .name(format!("node-{}", config.id().0))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime with timers builds");
            let clock = SystemClock::new();
            let peers_for_loop = Arc::clone(&peers);
            let http_replies = Rc::new(RefCell::new(BTreeMap::new()));
            let disk = match FileDisk::open(&data_dir) {
                Ok(disk) => Arc::new(disk),
                Err(error) => {
                    let _ = opened_sender.send(Err(StoreError::Disk(error)));
                    return;
                }
            };
            let opened_node = Node::open(
                config,
                NodeSeams {
                    clock: Box::new(clock.clone()),
                    network: Box::new(ShellNetwork {
                        peers,
                        http_replies: http_replies.clone(),
                    }),
                    disk: Arc::clone(&disk) as crate::seams::SharedDisk,
                    rng: Box::new(os_seeded_rng()),
                },
            );
            let node = match opened_node {
                Ok(mut node) => {
                    for member in members {
                        node.add_unplaced_peer(member);
                    }
                    if let Some(handler) = handler {
                        node.set_handler(handler);
                    }
                    let _ = opened_sender.send(Ok(()));
                    node
                }
                Err(error) => {
                    let _ = opened_sender.send(Err(error));
                    return;
                }
            };
            let loop_state = NodeLoop {
                node,
                disk,
                sync_out: None,
                peers: peers_for_loop,
                learned_members: BTreeMap::new(),
                members_synced_micros: 0,
                pending_routed: BTreeMap::new(),
                feed_sinks: BTreeMap::new(),
                clock,
                http_replies,
                pending_puts: BTreeMap::new(),
                next_request_id: 0,
                next_http_write_id: 0,
                peer_generations: BTreeMap::new(),
            };
            runtime.block_on(loop_state.run(inbox));
        })
        .expect("the OS starts a thread");
    match opened.recv() {
        Ok(Ok(())) => Ok((
            NodeHandle {
                inbox: inbox_sender,
            },
            thread,
        )),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(StoreError::Corrupt(
                "the node thread stopped while opening the store".to_string(),
            ))
        }
    }
}

/// Turns the loop may flush in a row without waiting for an input, a sync or a deadline.
const TURNS_WITHOUT_WAIT_MAX: u32 = 8;

/// How often the loop hands the directory's member addresses to the transport.
const MEMBER_SYNC_MICROS: u64 = 1_000_000;

struct NodeLoop {
    node: Node,
    /// The node's disk, to sync a round's log on a blocking thread.
    disk: Arc<FileDisk>,
    /// The sync of the round the node wrote, running on a blocking thread.
    sync_out: Option<tokio::task::JoinHandle<Result<(), DiskError>>>,
    peers: Arc<dyn PeerSender>,
    /// Member addresses handed to the transport, so each is handed once.
    learned_members: BTreeMap<NodeId, std::net::SocketAddr>,
    members_synced_micros: u64,
    pending_routed: BTreeMap<u64, Reply<RoutedResult>>,
    /// The sinks of the feeds subscribed to here, by subscription.
    feed_sinks: BTreeMap<SubscriptionId, Arc<FeedSink>>,
    clock: SystemClock,
    http_replies: HttpReplies,
    pending_puts: BTreeMap<u64, Reply<Result<EventKey, PutError>>>,
    next_request_id: u64,
    next_http_write_id: u64,
    /// The newest membership report applied per peer.
    peer_generations: BTreeMap<NodeId, u64>,
}

impl NodeLoop {
    /// Records `generation` for `peer` and says whether it is newer than any applied so far.
    fn is_newest_report(&mut self, peer: NodeId, generation: u64) -> bool {
        let newest = self.peer_generations.entry(peer).or_insert(0);
        if generation <= *newest {
            tracing::debug!(%peer, generation, newest = *newest, "stale membership report dropped");
            return false;
        }
        *newest = generation;
        true
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<NodeInput>) {
        // Turns in a row that flushed without waiting: a flush that leaves staged writes
        // behind with no sync out (a poisoned store) must not spin.
        let mut turns_without_wait = 0;
        'turns: loop {
            // A prepared round (its replication already sent) is written and synced after
            // the inputs already queued, not after the next input or tick: waiting held a
            // follower's acknowledgement, and so the write, up to a tick. While its sync runs
            // on a blocking thread the loop goes on taking inputs; the round completes when
            // the sync reports.
            let ready_to_flush = self.node.has_staged_writes()
                && self.sync_out.is_none()
                && turns_without_wait < TURNS_WITHOUT_WAIT_MAX;
            if ready_to_flush {
                turns_without_wait += 1;
            } else {
                turns_without_wait = 0;
                let now = self.clock.now_micros();
                let wait_micros = self.node.next_deadline_micros().saturating_sub(now);
                tokio::select! {
                    input = inbox.recv() => match input {
                        Some(input) => self.handle(input),
                        None => break 'turns,
                    },
                    synced = async {
                        match self.sync_out.as_mut() {
                            Some(sync) => sync.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        self.sync_out = None;
                        let result = synced.unwrap_or_else(|_| {
                            Err(DiskError::SyncFailed("the sync thread stopped".to_string()))
                        });
                        self.node.round_synced(result);
                    },
                    _ = tokio::time::sleep(Duration::from_micros(wait_micros)) => {}
                }
            }
            for _ in 1..BATCH_INPUTS_MAX {
                match inbox.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => break 'turns,
                }
            }
            if self.clock.now_micros() >= self.node.next_deadline_micros() {
                self.node.handle_deadlines();
            }
            if self.node.has_staged_writes() && self.sync_out.is_none() {
                if let Some(file) = self.node.flush_detached() {
                    self.start_sync(file);
                }
            }
            self.deliver_outputs();
            let now = self.clock.now_micros();
            if now >= self.members_synced_micros + MEMBER_SYNC_MICROS {
                self.members_synced_micros = now;
                self.sync_members();
            }
        }
        // A sync still out finishes on its thread; the round it covers is never answered.
        tracing::info!(node = %self.node.id(), "node loop stopped");
    }

    /// Syncs `file` (the round the node just wrote) on a blocking thread.
    fn start_sync(&mut self, file: String) {
        let handle = match self.disk.duplicate_handle(&file) {
            Ok(handle) => handle,
            Err(error) => {
                self.node.round_synced(Err(error));
                return;
            }
        };
        self.sync_out = Some(tokio::task::spawn_blocking(move || {
            sync_duplicate(&file, &handle)
        }));
    }

    fn handle(&mut self, input: NodeInput) {
        match input {
            NodeInput::Put {
                event,
                commit_level,
                key,
                reply,
            } => {
                self.next_request_id += 1;
                let request_id = self.next_request_id;
                self.pending_puts.insert(request_id, reply);
                if let Some(issued) = self.node.put_event(request_id, event, commit_level) {
                    let _ = key.send(issued);
                }
            }
            NodeInput::Get { key, reply } => {
                let _ = reply.send(self.node.get_event(&key).map_err(|error| error.to_string()));
            }
            NodeInput::Scan {
                from,
                to_exclusive,
                limit,
                reply,
            } => {
                let found = self
                    .node
                    .scan_events(from.as_ref(), to_exclusive.as_ref(), limit)
                    .map_err(|error| error.to_string());
                let _ = reply.send(found);
            }
            NodeInput::PeerMessage { from, message } => self.node.handle_message(from, message),
            NodeInput::HttpReplica { key, event, reply } => {
                self.next_http_write_id += 1;
                let write_id = self.next_http_write_id;
                self.http_replies.borrow_mut().insert(write_id, reply);
                self.node.handle_message(
                    HTTP_PEER,
                    Message::Replicate {
                        write_id,
                        key,
                        event,
                    },
                );
            }
            NodeInput::PeerUp {
                id,
                location,
                generation,
            } => {
                if !self.is_newest_report(id, generation) {
                    return;
                }
                tracing::info!(peer = %id, %location, "peer up: placement uses it");
                self.node.add_peer(id, location);
            }
            NodeInput::PeerDown { id, generation } => {
                if !self.is_newest_report(id, generation) {
                    return;
                }
                if self.node.mark_peer_down(id) {
                    tracing::warn!(peer = %id, "peer down: placement tries it last, commit levels count it out");
                }
            }
            NodeInput::PeerForgotten { id, generation } => {
                if !self.is_newest_report(id, generation) {
                    return;
                }
                // A later hello from it starts over (its generations start over too).
                self.peer_generations.remove(&id);
                if self.node.drop_peer(id) {
                    tracing::warn!(peer = %id, "peer forgotten: no longer a member");
                }
            }
            NodeInput::Routed {
                name,
                request,
                reply,
            } => match self.node.route_request(name, request) {
                Ok(request_id) => {
                    self.pending_routed.insert(request_id, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(RouteError::Request(error)));
                }
            },
            NodeInput::Request {
                name,
                body,
                timeout_micros,
                reply,
            } => match self.node.request(name, body, timeout_micros) {
                Ok(request_id) => {
                    self.pending_routed.insert(request_id, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(RouteError::Request(error)));
                }
            },
            NodeInput::JoinThrough { seed } => self.node.join_through(seed),
            NodeInput::Cluster { reply } => {
                let _ = reply.send(self.cluster_view());
            }
            NodeInput::Leave { reply } => {
                let _ = reply.send(self.node.leave().map_err(|error| error.to_string()));
            }
            NodeInput::Placement { name, reply } => {
                let _ = reply.send(self.placement(&name));
            }
            NodeInput::Subscribe {
                name,
                from,
                sink,
                reply,
            } => match self.node.subscribe(name, from) {
                Ok(id) => {
                    if reply.send(Ok(id)).is_err() {
                        // The connection went away before it heard its id.
                        self.node.unsubscribe(id);
                    } else {
                        self.feed_sinks.insert(id, sink);
                    }
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            NodeInput::Unsubscribe { id } => {
                self.node.unsubscribe(id);
                self.feed_sinks.remove(&id);
            }
            NodeInput::Status { reply } => {
                let members = self
                    .node
                    .peers()
                    .iter()
                    .map(|(id, peer)| (id, peer.location.clone(), peer.up))
                    .collect();
                let _ = reply.send(NodeStatus {
                    id: self.node.id(),
                    location: self.node.config().coordinator.location.clone(),
                    poisoned: self.node.is_poisoned(),
                    active_writes: self.node.active_writes(),
                    unconfirmed_events: self.node.store().unconfirmed().len(),
                    members,
                    counters: self.node.counters(),
                });
            }
        }
    }

    /// Hands the transport every member address the directory lists that it was not given.
    fn sync_members(&mut self) {
        let Some(directory) = self.node.directory() else {
            return;
        };
        let me = self.node.id();
        let mut new = Vec::new();
        for member in directory.members() {
            if member.id == me || member.state == MemberState::Left {
                continue;
            }
            let Ok(address) = member.peer_address.as_str().parse::<std::net::SocketAddr>() else {
                continue;
            };
            if self.learned_members.get(&member.id) != Some(&address) {
                new.push((member.id, address));
            }
        }
        for (id, address) in new {
            tracing::info!(peer = %id, %address, "directory member handed to the transport");
            self.learned_members.insert(id, address);
            self.peers.learn_member(id, address);
        }
    }

    fn member_view(member: &crate::directory::Member) -> MemberView {
        MemberView {
            id: member.id.0,
            peer_address: member.peer_address.to_string(),
            http_address: member.http_address.to_string(),
            zone: member.location.zone.to_string(),
            region: member.location.region.to_string(),
            state: member.state.name(),
            replicas: 0,
            leads: 0,
        }
    }

    /// The leader of `partition` as this node knows it: its own replica's view, else its
    /// router's (while the directory still places the partition on that node: the router's
    /// word may predate a move).
    fn leader_of(&self, partition: crate::partition::PartitionId) -> Option<NodeId> {
        let holds = |node: &NodeId| {
            self.node
                .directory()
                .and_then(|directory| directory.partition_by_id(partition))
                .is_some_and(|entry| entry.holders().contains(node))
        };
        self.node
            .partitions()
            .and_then(|host| host.status(partition))
            .and_then(|status| status.leader)
            .or_else(|| self.node.routed_leader(partition).filter(holds))
    }

    fn cluster_view(&self) -> ClusterView {
        use crate::coordinator::cluster::MembershipState;
        let membership = match self.node.membership() {
            None => "none".to_string(),
            Some(MembershipState::Bootstrapping) => "founding".to_string(),
            Some(MembershipState::Joining) => "joining".to_string(),
            Some(MembershipState::Member) => "member".to_string(),
            Some(MembershipState::Leaving) => "leaving".to_string(),
            Some(MembershipState::Left) => "left".to_string(),
            Some(MembershipState::Refused(reason)) => format!("refused: {reason}"),
        };
        let system = self
            .node
            .partitions()
            .and_then(|host| host.status(crate::directory::SYSTEM_PARTITION));
        let directory = self.node.directory();
        let settings = directory.and_then(|directory| directory.settings());
        ClusterView {
            node: self.node.id().0,
            membership,
            cluster_name: settings.map(|settings| settings.cluster_name.as_str().to_string()),
            replicas_per_partition: settings.map(|settings| settings.replicas),
            directory_leader: system
                .as_ref()
                .and_then(|status| status.leader)
                .map(|id| id.0),
            directory_voters: system
                .map(|status| status.configuration.voters.iter().map(|id| id.0).collect())
                .unwrap_or_default(),
            members: directory
                .map(|directory| {
                    let mut replicas: BTreeMap<NodeId, usize> = BTreeMap::new();
                    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
                    for entry in directory.partitions() {
                        for node in &entry.replicas {
                            *replicas.entry(*node).or_default() += 1;
                        }
                        if let Some(leader) = self.leader_of(entry.id) {
                            *leads.entry(leader).or_default() += 1;
                        }
                    }
                    directory
                        .members()
                        .map(|member| {
                            let mut view = Self::member_view(member);
                            view.replicas = replicas.get(&member.id).copied().unwrap_or(0);
                            view.leads = leads.get(&member.id).copied().unwrap_or(0);
                            view
                        })
                        .collect()
                })
                .unwrap_or_default(),
            drained: self.node.is_drained(),
            rejoin_as_new: self.node.is_drained() && self.node.left_without_draining(),
            partition_count: directory.map_or(0, |directory| directory.partition_count()),
            moving_count: directory.map_or(0, |directory| directory.moving_count()),
            partitions: directory
                .map(|directory| {
                    directory
                        .partitions()
                        .take(PARTITIONS_LISTED_MAX)
                        .map(|entry| PartitionView {
                            name: entry.name.as_bytes().to_vec(),
                            replicas: entry.replicas.iter().map(|id| id.0).collect(),
                            generation: entry.generation,
                            leader: self.leader_of(entry.id).map(|id| id.0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn placement(&self, name: &PartitionName) -> Option<PartitionPlacement> {
        let directory = self.node.directory()?;
        let entry = directory.partition(name)?;
        let local = self
            .node
            .partitions()
            .and_then(|host| host.status(entry.id))
            .map(|status| ReplicaView {
                node: self.node.id().0,
                role: format!("{:?}", status.role).to_lowercase(),
                term: status.term,
                leader: status.leader.map(|id| id.0),
                commit_index: status.committed,
                applied_index: status.applied,
            });
        Some(PartitionPlacement {
            generation: entry.generation,
            replicas: entry
                .replicas
                .iter()
                .map(|id| (*id, directory.member(*id).map(Self::member_view)))
                .collect(),
            local,
            routed_leader: self.leader_of(entry.id),
        })
    }

    fn deliver_outputs(&mut self) {
        for output in self.node.take_outputs() {
            match output {
                NodeOutput::PutAnswered { request_id, result } => {
                    if let Some(reply) = self.pending_puts.remove(&request_id) {
                        let _ = reply.send(result);
                    }
                }
                NodeOutput::IntervalClosed(closed) => {
                    tracing::info!(
                        start_micros = closed.start_micros,
                        length_micros = closed.length_micros,
                        event_count = closed.event_count,
                        digest = %format!("{:016x}", closed.digest),
                        "consolidation interval closed"
                    );
                }
                // The shell does not run partitions yet (the config never enables them).
                // Answers to local partition requests: the shell only routes by name.
                NodeOutput::Partition(_) => {}
                NodeOutput::Routed(answer) => {
                    if let Some(reply) = self.pending_routed.remove(&answer.request_id) {
                        let _ = reply.send(answer.result);
                    }
                }
                NodeOutput::Feed(delivery) => {
                    // Rendered once, shared by every subscriber it goes to.
                    let rendered = Arc::new(RenderedEvent::render(&delivery.event));
                    for id in delivery.subscriptions {
                        let Some(sink) = self.feed_sinks.get(&id) else {
                            continue;
                        };
                        if !sink.push(Arc::clone(&rendered)) {
                            self.node.unsubscribe(id);
                            self.feed_sinks.remove(&id);
                        }
                    }
                }
            }
        }
    }
}
