//! Drives one sans-IO [`Node`] on its own thread: the production half of the simulator's world.
//!
//! The node thread owns the node and its disk; everything else talks to it through a bounded
//! inbox ([`NodeHandle`]). Each turn it takes every input that is waiting (up to a batch), fires
//! due timers, then flushes once, so all writes that arrived together share one commit and one
//! fsync (group commit). While a flush syncs, new inputs wait in the inbox; when the inbox is
//! full, client calls are refused as overloaded and peer readers stop reading their sockets,
//! which pushes back on the senders through TCP. Memory stays bounded either way.

use crate::coordinator::{CommitLevel, PutError};
use crate::events::{EventKey, StoreError};
use crate::ids::{Location, NodeId};
use crate::node::{Node, NodeConfig, NodeCounters, NodeOutput, NodeSeams};
use crate::production::{os_seeded_rng, FileDisk, SystemClock};
use crate::seams::{Clock, Network};
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

/// Sends the node's messages to its peers (the TCP or the HTTP transport).
pub trait PeerSender: Send + Sync {
    fn send(&self, to: NodeId, message: Message);
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

    pub async fn status(&self) -> Result<NodeStatus, DriverError> {
        self.call(|reply| NodeInput::Status { reply }).await
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
            let http_replies = Rc::new(RefCell::new(BTreeMap::new()));
            let opened_node = FileDisk::open(&data_dir)
                .map_err(StoreError::Disk)
                .and_then(|disk| {
                    Node::open(
                        config,
                        NodeSeams {
                            clock: Box::new(clock.clone()),
                            network: Box::new(ShellNetwork {
                                peers,
                                http_replies: http_replies.clone(),
                            }),
                            disk: Arc::new(disk),
                            rng: Box::new(os_seeded_rng()),
                        },
                    )
                });
            let node = match opened_node {
                Ok(mut node) => {
                    for member in members {
                        node.add_unplaced_peer(member);
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

struct NodeLoop {
    node: Node,
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
        loop {
            let now = self.clock.now_micros();
            let wait_micros = self.node.next_deadline_micros().saturating_sub(now);
            tokio::select! {
                input = inbox.recv() => match input {
                    Some(input) => self.handle(input),
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_micros(wait_micros)) => {}
            }
            for _ in 1..BATCH_INPUTS_MAX {
                match inbox.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            if self.clock.now_micros() >= self.node.next_deadline_micros() {
                self.node.handle_deadlines();
            }
            if self.node.has_staged_writes() {
                self.node.flush();
            }
            self.deliver_outputs();
        }
        tracing::info!(node = %self.node.id(), "node loop stopped");
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
                NodeOutput::Partition(_) => {}
                NodeOutput::Routed(_) => {}
            }
        }
    }
}
