//! The discrete-event world: virtual time, the event queue, and the nodes it drives.
//!
//! One seed decides everything: the world draws from its own ChaCha stream, each node from a
//! stream split per node and incarnation, each disk from its own. Events at the same virtual
//! time run in the order they were scheduled (a sequence number breaks ties), so a run is a pure
//! function of its seed. Virtual time jumps from event to event; nothing waits on a wall clock.
//!
//! After every step of a node the world drains what the node did: messages go to the network
//! model, client answers to the history, and the node's next deadline and any pending flush are
//! scheduled. A flush is a disk completion: it runs `fsync_latency` after the first write was
//! staged, and everything staged by then shares it (group commit).
//!
//! Every message travels as bytes in production's codec (`borough::wire`): encoded when it is
//! sent, with the production frame limit, and decoded and checked when it is delivered. A
//! message the codec will not encode is dropped and counted, as the TCP transport drops it; a
//! frame that does not decode (only the garbage peer sends those) reaches no node.

use crate::checkers::Checker;
use crate::clock::{ClockSkew, SimClock, VirtualTime};
use crate::disk::{DiskFaults, ProcessDisk, SimDisk};
use crate::network::{NetworkModel, Outbox, SimNetworkHandle};
use crate::run_config::RunConfig;
use crate::state_machine::{Node, SimNodeOutput as NodeOutput};
use crate::trace::Trace;
use crate::workload::History;
use borough::events::EventKey;
use borough::ids::{Location, NodeId};
use borough::node::NodeSeams;
use borough::partition::host::{HostOutput, PartitionStart};
use borough::partition::PartitionId;
use borough::raft::MessageBody;
use borough::seams::{Rng, SeededRng, SharedDisk};
use borough::wire::{self, Frame, Message};
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;
use std::sync::Arc;

/// Random streams: the world's, then one per disk, then one per node incarnation.
const DISK_STREAM_BASE: u64 = 1 << 20;
const NODE_STREAM_BASE: u64 = 1 << 32;

#[derive(Debug)]
pub enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        /// The frame's payload, as production's codec wrote it.
        frame: Vec<u8>,
        /// Set when the garbage peer forged or copied the frame: how.
        garbage: Option<crate::faults::garbage::GarbageKind>,
    },
    Timer {
        node: NodeId,
        incarnation: u64,
    },
    Flush {
        node: NodeId,
        incarnation: u64,
    },
    ClientPut {
        workload: usize,
    },
    ClientKv {
        workload: usize,
    },
    ClientLedger {
        workload: usize,
    },
    LedgerTimeout {
        history_id: u64,
    },
    ClientMap {
        workload: usize,
    },
    /// A feed subscriber leaves, or connects (again) to a random node.
    MapSubscriber {
        subscriber: usize,
    },
    ClientCounter {
        workload: usize,
    },
    CounterTimeout {
        history_id: u64,
    },
    /// A client's request that reached a paused node: it waits in the socket until the
    /// node resumes, since a paused process takes nothing, client requests included.
    DeferredPut(Box<crate::workload::PutCall>),
    DeferredKv(Box<crate::workload::kv::KvCall>),
    KvTimeout {
        history_id: u64,
    },
    ClientTimeout {
        request_id: u64,
    },
    Fault {
        index: usize,
    },
    FaultEnd(crate::faults::FaultEnd),
    Restart {
        node: NodeId,
    },
    Heal,
    StopWorkload,
    End,
    /// The next step of the membership plan (`faults::nodes`).
    NodesStep,
    /// A look at the draining nodes.
    NodesWatch,
}

/// Timer firings of one node in one simulated second above which it is spinning.
const TIMER_FIRINGS_PER_SECOND_MAX: u64 = 20_000;

/// A run's budget: events handled, events waiting, and bytes of frames in flight. The
/// largest scenarios use a few million events and hold a few thousand; a run past any of
/// these is a message storm (a bug driving nodes to send without bound) and ends with a
/// `run_budget` violation instead of taking the machine's memory.
#[derive(Clone, Copy, Debug)]
pub struct RunBudget {
    pub events_max: u64,
    pub queued_events_max: usize,
    pub queued_frame_bytes_max: u64,
}

impl Default for RunBudget {
    fn default() -> Self {
        Self {
            events_max: 200_000_000,
            queued_events_max: 2_000_000,
            queued_frame_bytes_max: 2 << 30,
        }
    }
}

/// A queued event, ordered by time, then by when it was scheduled.
#[derive(Debug)]
struct Scheduled {
    at_micros: u64,
    sequence: u64,
    event: Event,
}

impl Scheduled {
    fn order(&self) -> (u64, u64) {
        (self.at_micros, self.sequence)
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

pub enum NodeState {
    Up(Box<Node>),
    Down,
}

pub struct SimNode {
    pub id: NodeId,
    pub location: Location,
    pub disk: SimDisk,
    /// The running process's handle on `disk`, killed at a crash.
    pub process_disk: Option<ProcessDisk>,
    pub skew: ClockSkew,
    pub state: NodeState,
    pub incarnation: u64,
    /// Virtual time the node's pending timer event fires at, if one is scheduled.
    pub timer_at: Option<u64>,
    pub flush_scheduled: bool,
    pub paused_until: u64,
    /// Until then the node's timers do not fire (`stall_timers`); it takes everything else.
    pub timers_stalled_until: u64,
    pub restart_scheduled: bool,
    /// The simulated second and the timer firings counted in it (see `busy_loop`).
    pub timer_window: (u64, u64),
    pub busy_loop_reported: bool,
}

impl SimNode {
    pub fn node(&self) -> Option<&Node> {
        match &self.state {
            NodeState::Up(node) => Some(node),
            NodeState::Down => None,
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, NodeState::Up(_))
    }
}

/// A safety violation a checker found, with when it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at_micros: u64,
    pub checker: crate::checkers::Checker,
    pub message: String,
}

pub struct World {
    pub config: RunConfig,
    pub now: VirtualTime,
    pub rng: SeededRng,
    pub nodes: Vec<SimNode>,
    pub network: NetworkModel,
    pub outbox: Outbox,
    pub history: History,
    pub trace: Trace,
    pub violations: Vec<Violation>,
    pub healed: bool,
    pub workload_stopped: bool,
    pub ended: bool,
    /// A node could not boot from its disk once faults were healed: the final checks, which
    /// power-cycle every node, cannot run.
    pub unbootable: bool,
    /// Nodes whose boot already found damage the `recovery` checker reported (a damaged
    /// store stays damaged: once per node is enough).
    pub damage_reported: BTreeSet<NodeId>,
    /// The run stopped at its canary's catch, before the end and the final checks.
    pub stopped_when_caught: bool,
    pub fault_state: crate::faults::FaultState,
    /// Whole nodes joining and leaving (`faults::nodes`).
    pub nodes_state: crate::faults::nodes::NodesState,
    /// Per (leader, partition, term), the last log index the promotion checker looked at.
    pub placement_watch: BTreeMap<(NodeId, borough::partition::PartitionId, u64), u64>,
    pub placement_reports: usize,
    pub steps: u64,
    pub messages_delivered: u64,
    pub interval_closures: Vec<(NodeId, u64)>,
    pub kv_history: crate::workload::kv::KvHistory,
    pub counter_history: crate::workload::counter::CounterHistory,
    pub ledger_history: crate::workload::ledger::LedgerHistory,
    pub maps_history: crate::workload::maps::MapsHistory,
    pub raft: crate::checkers::raft::RaftObservations,
    pub linearizability_unknown_keys: u64,
    /// Raft envelopes (network messages) and the Raft messages in them, sent by all nodes.
    pub raft_envelopes_sent: u64,
    pub raft_messages_sent: u64,
    /// Messages the codec would not encode (over the frame limit, or refused by the checks a
    /// receiver runs): dropped at the sender, and a `codec` violation.
    pub messages_unencodable: u64,
    /// Frames the codec refused at delivery.
    pub frames_refused: u64,
    /// What the garbage peer sent, and how much of it the nodes took (see `faults::garbage`).
    pub garbage: crate::faults::garbage::GarbageState,
    /// Per Raft partition, the nodes clients send its requests to: its voters at the start,
    /// then as membership changes add and remove replicas.
    pub partition_hosts: BTreeMap<u64, Vec<NodeId>>,
    /// Snapshots installed by node lives that ended (crashes and stops).
    snapshots_installed_before: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// Per event key, the replicas that told a coordinator it is durable on them (the
    /// acknowledgement-honesty checker counts them with the up nodes whose store holds it).
    pub durable_claims: BTreeMap<EventKey, BTreeSet<NodeId>>,
    /// Per node, the last event key it issued (keys must increase per node).
    pub last_key_issued: BTreeMap<NodeId, EventKey>,
    /// Bytes of the frames waiting in `queue`, for the run budget.
    queued_frame_bytes: u64,
    pub budget: RunBudget,
    next_sequence: u64,
}

impl World {
    pub fn new(config: RunConfig) -> Self {
        let now: VirtualTime = Rc::new(Cell::new(0));
        let nodes = config
            .nodes
            .iter()
            .map(|(id, location)| SimNode {
                id: *id,
                location: location.clone(),
                disk: SimDisk::new(SeededRng::split(
                    config.seed,
                    DISK_STREAM_BASE + id.0 as u64,
                )),
                process_disk: None,
                skew: ClockSkew::none(),
                state: NodeState::Down,
                incarnation: 0,
                timer_at: None,
                flush_scheduled: false,
                paused_until: 0,
                timers_stalled_until: 0,
                restart_scheduled: false,
                timer_window: (0, 0),
                busy_loop_reported: false,
            })
            .collect();
        let mut world = Self {
            rng: SeededRng::split(config.seed, 0),
            now,
            nodes,
            network: NetworkModel::default(),
            outbox: Rc::new(std::cell::RefCell::new(Vec::new())),
            history: History::default(),
            trace: Trace::new(),
            violations: Vec::new(),
            healed: false,
            workload_stopped: false,
            ended: false,
            unbootable: false,
            damage_reported: BTreeSet::new(),
            stopped_when_caught: false,
            fault_state: crate::faults::FaultState::default(),
            nodes_state: Default::default(),
            placement_watch: BTreeMap::new(),
            placement_reports: 0,
            steps: 0,
            messages_delivered: 0,
            interval_closures: Vec::new(),
            kv_history: Default::default(),
            counter_history: Default::default(),
            ledger_history: Default::default(),
            maps_history: Default::default(),
            raft: Default::default(),
            linearizability_unknown_keys: 0,
            raft_envelopes_sent: 0,
            raft_messages_sent: 0,
            messages_unencodable: 0,
            frames_refused: 0,
            garbage: Default::default(),
            partition_hosts: BTreeMap::new(),
            snapshots_installed_before: 0,
            queue: BinaryHeap::new(),
            queued_frame_bytes: 0,
            durable_claims: BTreeMap::new(),
            last_key_issued: BTreeMap::new(),
            budget: RunBudget::default(),
            next_sequence: 0,
            config,
        };
        if let Some(partitions) = world.config.partitions.clone().filter(|run| !run.named) {
            for partition in 0..partitions.count {
                let voters = partitions.voters(partition, &world.config.nodes);
                world.partition_hosts.insert(partition, voters);
            }
        }
        crate::faults::start(&mut world);
        crate::faults::nodes::start(&mut world);
        for index in 0..world.nodes.len() {
            world.start_node(index);
        }
        crate::workload::start(&mut world);
        let heal_at = world.config.safety_micros;
        world.schedule(heal_at, Event::Heal);
        world.schedule(world.config.workload_stop_micros(), Event::StopWorkload);
        world.schedule(world.config.end_micros(), Event::End);
        world
    }

    pub fn now_micros(&self) -> u64 {
        self.now.get()
    }

    pub fn schedule(&mut self, at_micros: u64, event: Event) {
        if let Event::Deliver { frame, .. } = &event {
            self.queued_frame_bytes += frame.len() as u64;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.queue.push(Reverse(Scheduled {
            at_micros,
            sequence,
            event,
        }));
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    pub fn index_of(&self, node: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|candidate| candidate.id == node)
            .expect("node ids come from the world")
    }

    /// Runs to the end of the scenario.
    pub fn run(&mut self) {
        while let Some(Reverse(scheduled)) = self.queue.pop() {
            debug_assert!(
                scheduled.at_micros >= self.now.get(),
                "time never runs backwards"
            );
            self.now.set(scheduled.at_micros);
            crate::trace::set_log_time(scheduled.at_micros);
            self.steps += 1;
            if let Event::Deliver { frame, .. } = &scheduled.event {
                self.queued_frame_bytes -= frame.len() as u64;
            }
            let violations_before = self.violations.len();
            self.handle(scheduled.event);
            if self.ended {
                break;
            }
            if self.violations.len() > violations_before && self.caught() {
                // A canary caught by its checker has shown what it exists to show.
                self.stopped_when_caught = true;
                return;
            }
            if let Some(reason) = self.over_budget() {
                self.violations.push(Violation {
                    at_micros: self.now.get(),
                    checker: Checker::RunBudget,
                    message: reason,
                });
                // The world is out of bounds: checking it would only spend more.
                return;
            }
        }
        crate::checkers::finish(self);
        // The run is over: what the processes would write on their way out is not part of it.
        for node in &mut self.nodes {
            if let Some(process_disk) = node.process_disk.take() {
                process_disk.kill();
            }
        }
    }

    /// Whether the checker a canary names has caught it.
    fn caught(&self) -> bool {
        self.config.stop_when_caught_by.is_some_and(|checker| {
            self.violations
                .iter()
                .any(|violation| violation.checker == checker)
        })
    }

    /// Why the run must stop now, if it has spent its budget.
    fn over_budget(&self) -> Option<String> {
        let budget = self.budget;
        if self.steps > budget.events_max {
            return Some(format!(
                "the run handled more than {} events",
                budget.events_max
            ));
        }
        if self.queue.len() > budget.queued_events_max {
            return Some(format!(
                "more than {} events were waiting at once (a message storm?)",
                budget.queued_events_max
            ));
        }
        if self.queued_frame_bytes > budget.queued_frame_bytes_max {
            return Some(format!(
                "frames in flight held {} bytes, over {} (a message storm?)",
                self.queued_frame_bytes, budget.queued_frame_bytes_max
            ));
        }
        None
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                from,
                to,
                frame,
                garbage,
            } => self.deliver(from, to, frame, garbage),
            Event::Timer { node, incarnation } => {
                let index = self.index_of(node);
                let sim_node = &mut self.nodes[index];
                if sim_node.incarnation != incarnation || sim_node.timer_at != Some(self.now.get())
                {
                    return;
                }
                sim_node.timer_at = None;
                if self.defer_if_paused(index, Event::Timer { node, incarnation }) {
                    return;
                }
                let stalled_until = self.nodes[index].timers_stalled_until;
                if stalled_until > self.now.get() {
                    self.nodes[index].timer_at = Some(stalled_until);
                    self.schedule(stalled_until, Event::Timer { node, incarnation });
                    return;
                }
                self.count_timer_firing(index);
                self.with_node(index, |node| node.handle_deadlines());
            }
            Event::Flush { node, incarnation } => {
                let index = self.index_of(node);
                if self.nodes[index].incarnation != incarnation {
                    return;
                }
                if self.defer_if_paused(index, Event::Flush { node, incarnation }) {
                    return;
                }
                self.nodes[index].flush_scheduled = false;
                self.trace.record(self.now.get(), "flush", node.0 as u64, 0);
                let armed = self.fault_state.crash_during_sync_armed;
                if let Some(fault_index) =
                    armed.filter(|_| crate::faults::arm_crash_during_sync(self, index))
                {
                    if let NodeState::Up(node) = &mut self.nodes[index].state {
                        node.flush();
                    }
                    if crate::faults::after_flush_armed(self, index, fault_index) {
                        // Died mid-step: what it sent in this step never left the machine.
                        self.outbox.borrow_mut().clear();
                        return;
                    }
                    self.after_step(index);
                    return;
                }
                self.with_node(index, |node| node.flush());
            }
            Event::ClientPut { workload } => crate::workload::client_put(self, workload),
            Event::ClientKv { workload } => crate::workload::kv::client_operation(self, workload),
            Event::DeferredPut(call) => crate::workload::start_put(self, *call),
            Event::DeferredKv(call) => crate::workload::kv::start_call(self, *call),
            Event::KvTimeout { history_id } => self.kv_history.time_out(history_id),
            Event::ClientCounter { workload } => {
                crate::workload::counter::client_operation(self, workload)
            }
            Event::CounterTimeout { history_id } => self.counter_history.time_out(history_id),
            Event::ClientLedger { workload } => {
                crate::workload::ledger::client_operation(self, workload)
            }
            Event::LedgerTimeout { history_id } => self.ledger_history.time_out(history_id),
            Event::ClientMap { workload } => {
                crate::workload::maps::client_operation(self, workload)
            }
            Event::MapSubscriber { subscriber } => {
                crate::workload::maps::subscriber_turn(self, subscriber)
            }
            Event::ClientTimeout { request_id } => {
                self.history.time_out(request_id, self.now.get())
            }
            Event::Fault { index } => crate::faults::occur(self, index),
            Event::FaultEnd(end) => crate::faults::end(self, end),
            Event::Restart { node } => {
                let index = self.index_of(node);
                self.nodes[index].restart_scheduled = false;
                if !self.nodes[index].is_up() {
                    self.start_node(index);
                }
            }
            Event::Heal => crate::faults::heal(self),
            Event::StopWorkload => self.workload_stopped = true,
            Event::End => self.ended = true,
            Event::NodesStep => crate::faults::nodes::step(self),
            Event::NodesWatch => crate::faults::nodes::watch(self),
        }
    }

    /// A node whose deadlines fire thousands of times in one simulated second is spinning
    /// on a deadline it never moves (real timers work in milliseconds): reported once per
    /// node, since the run would otherwise only get slow.
    fn count_timer_firing(&mut self, index: usize) {
        let second = self.now.get() / 1_000_000;
        let sim_node = &mut self.nodes[index];
        if sim_node.timer_window.0 != second {
            sim_node.timer_window = (second, 0);
        }
        sim_node.timer_window.1 += 1;
        if sim_node.timer_window.1 == TIMER_FIRINGS_PER_SECOND_MAX && !sim_node.busy_loop_reported {
            sim_node.busy_loop_reported = true;
            let id = sim_node.id;
            self.violations.push(Violation {
                at_micros: self.now.get(),
                checker: Checker::BusyLoop,
                message: format!(
                    "{id}'s deadlines fired {TIMER_FIRINGS_PER_SECOND_MAX} times within one simulated second"
                ),
            });
        }
    }

    /// A paused node handles nothing until its pause ends: the event waits.
    fn defer_if_paused(&mut self, index: usize, event: Event) -> bool {
        let until = self.nodes[index].paused_until;
        if until > self.now.get() {
            self.schedule(until, event);
            true
        } else {
            false
        }
    }

    fn deliver(
        &mut self,
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
        garbage: Option<crate::faults::garbage::GarbageKind>,
    ) {
        let index = self.index_of(to);
        if self.network.is_cut(from, to) || !self.nodes[index].is_up() {
            return;
        }
        if self.nodes[index].paused_until > self.now.get() {
            let until = self.nodes[index].paused_until;
            self.schedule(
                until,
                Event::Deliver {
                    from,
                    to,
                    frame,
                    garbage,
                },
            );
            return;
        }
        let message = match wire::decode_frame(&frame) {
            Ok(Frame::Message(message)) => message,
            // A hello or heartbeat means nothing to a node: the transport consumes them.
            Ok(Frame::Hello(_) | Frame::Heartbeat) => {
                crate::faults::garbage::on_ignored(self, garbage);
                return;
            }
            Err(error) => {
                self.frames_refused += 1;
                tracing::debug!(%from, %to, %error, "frame refused by the codec");
                if garbage.is_none() {
                    // A node's own message that the codec refuses would close a real link.
                    self.violations.push(Violation {
                        at_micros: self.now.get(),
                        checker: Checker::Codec,
                        message: format!("{to} refused a frame {from} sent: {error}"),
                    });
                }
                crate::faults::garbage::on_ignored(self, garbage);
                return;
            }
        };
        self.messages_delivered += 1;
        // The frame's bytes, not only its kind: a run that sends other contents is another run.
        self.trace.record(
            self.now.get(),
            message.kind(),
            ((from.0 as u64) << 32) | to.0 as u64,
            xxhash_rust::xxh3::xxh3_64(&frame),
        );
        let refused_before = self.nodes[index]
            .node()
            .map_or(0, |node| node.counters().messages_refused);
        self.with_node(index, |node| node.handle_message(from, message));
        if garbage.is_some() {
            let refused = self.nodes[index]
                .node()
                .is_some_and(|node| node.counters().messages_refused > refused_before);
            crate::faults::garbage::on_taken(self, from, to, garbage, refused);
        }
    }

    /// Runs `step` on an up node, then drains and schedules what it did.
    pub fn with_node(&mut self, index: usize, step: impl FnOnce(&mut Node)) {
        let NodeState::Up(node) = &mut self.nodes[index].state else {
            return;
        };
        let span = tracing::debug_span!("node", id = %node.id());
        let _entered = span.enter();
        step(node);
        self.after_step(index);
    }

    fn after_step(&mut self, index: usize) {
        let now = self.now.get();
        let sent: Vec<(NodeId, NodeId, Message)> = std::mem::take(&mut *self.outbox.borrow_mut());
        let mut granted_votes = Vec::new();
        let mut leader_appends = Vec::new();
        for (from, to, message) in sent {
            if let Message::ReplicateResult {
                key,
                outcome: Ok(()),
                ..
            } = &message
            {
                // Sent once the event is durable on `from`: from now on it holds a copy.
                self.durable_claims
                    .entry(key.clone())
                    .or_default()
                    .insert(from);
            }
            if let Message::Raft(envelope) = &message {
                for (partition, raft_message) in &envelope.messages {
                    if matches!(raft_message.body, MessageBody::Vote { .. }) {
                        crate::checkers::raft::on_vote_requested(self, *partition, raft_message);
                    }
                    if matches!(
                        raft_message.body,
                        MessageBody::VoteResponse { granted: true }
                    ) {
                        crate::checkers::raft::on_vote_sent(self, *partition, raft_message);
                        granted_votes.push((from, *partition, raft_message.term));
                    }
                    if let MessageBody::Append { leader_commit, .. } = raft_message.body {
                        leader_appends.push((from, *partition, raft_message.term, leader_commit));
                    }
                }
                self.raft_envelopes_sent += 1;
                self.raft_messages_sent += envelope.messages.len() as u64;
            }
            let frame = match wire::encode_message(&message) {
                Ok(frame) => frame,
                Err(error) => {
                    tracing::error!(%from, %to, kind = message.kind(), %error, "message not sent: the codec refused it");
                    if self.messages_unencodable == 0 {
                        // The first one now, with what it was (the total comes at the end).
                        self.violations.push(Violation {
                            at_micros: now,
                            checker: Checker::Codec,
                            message: format!(
                                "{from} built a {} message to {to} that the codec refuses: {error}",
                                message.kind()
                            ),
                        });
                    }
                    self.messages_unencodable += 1;
                    continue;
                }
            };
            if !self.nodes.iter().any(|node| node.id == to) {
                // To the garbage peer (only a node with a planted bug answers it): gone.
                continue;
            }
            self.garbage.capture(from, to, &frame);
            let base = self.link_latency_micros(from, to);
            for delay in self.network.transmit(from, to, base, &mut self.rng) {
                self.schedule(
                    now + delay,
                    Event::Deliver {
                        from,
                        to,
                        frame: frame.clone(),
                        garbage: None,
                    },
                );
            }
        }
        for (voter, partition, term) in granted_votes {
            crate::faults::vote_granted(self, voter, partition, term);
        }
        for (leader, partition, term, leader_commit) in leader_appends {
            crate::faults::leader_appended(self, leader, partition, term, leader_commit);
        }
        let epoch = self.config.epoch_micros;
        let sim_node = &mut self.nodes[index];
        let NodeState::Up(node) = &mut sim_node.state else {
            return;
        };
        let outputs = node.take_outputs();
        // The map changes its replicas applied in this step, by map name: recorded before
        // the feeds' deliveries of the same step are judged.
        let applied_maps: Vec<(Vec<u8>, u64, borough::maps::MapOperation)> = node
            .partitions()
            .map(|host| host.machine().take_applied_maps())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(partition, revision, operation)| {
                let name = node.directory()?.partition_by_id(partition)?.name.clone();
                Some((name.as_bytes().to_vec(), revision, operation))
            })
            .collect();
        let poisoned = node.is_poisoned();
        let needs_flush = node.has_staged_writes() && !sim_node.flush_scheduled;
        let deadline = sim_node
            .skew
            .virtual_micros_at(epoch, node.next_deadline_micros())
            .max(now + 1)
            .max(sim_node.timers_stalled_until);
        let (id, incarnation) = (sim_node.id, sim_node.incarnation);
        if needs_flush {
            sim_node.flush_scheduled = true;
        }
        let reschedule_timer = sim_node.timer_at.is_none_or(|at| deadline < at);
        if reschedule_timer {
            sim_node.timer_at = Some(deadline);
        }
        if needs_flush {
            let fsync_latency = self.config.fsync_latency_micros.draw(&mut self.rng);
            self.schedule(
                now + fsync_latency,
                Event::Flush {
                    node: id,
                    incarnation,
                },
            );
        }
        if reschedule_timer {
            self.schedule(
                deadline,
                Event::Timer {
                    node: id,
                    incarnation,
                },
            );
        }
        if !applied_maps.is_empty() {
            crate::workload::maps::record_applied(self, id, applied_maps);
        }
        for output in outputs {
            match output {
                NodeOutput::PutAnswered { request_id, result } => {
                    self.trace.record(
                        now,
                        "answer",
                        request_id,
                        result.as_ref().map_or(0, hash_key),
                    );
                    crate::checkers::on_answer(self, id, request_id, result);
                }
                NodeOutput::IntervalClosed(closed) => {
                    tracing::info!(node = %id, start_micros = closed.start_micros, events = closed.event_count, "interval closed");
                    self.interval_closures.push((id, closed.start_micros));
                }
                NodeOutput::Partition(output) => {
                    if let HostOutput::Applied {
                        partition,
                        index,
                        digest,
                        ..
                    } = &output
                    {
                        // Every apply with its entry's digest: the state each replica reached.
                        self.trace.record(
                            now,
                            "apply",
                            ((id.0 as u64) << 32) ^ partition.0,
                            digest ^ index.rotate_left(32),
                        );
                    }
                    crate::checkers::raft::on_output(self, id, &output);
                    crate::workload::kv::on_answer(self, id, &output);
                    crate::workload::counter::on_answer(self, id, &output);
                }
                NodeOutput::Routed(answer) => {
                    let answer = crate::workload::ledger::on_routed_answer(self, id, answer)
                        .and_then(|answer| {
                            crate::workload::maps::on_routed_answer(self, id, answer)
                        });
                    if let Some(answer) = answer {
                        crate::workload::kv::on_routed_answer(self, id, answer)
                    }
                }
                NodeOutput::Feed(delivery) => {
                    self.trace.record(
                        now,
                        "feed",
                        delivery.subscriptions.len() as u64,
                        delivery.event.revision(),
                    );
                    crate::workload::maps::on_delivery(self, id, delivery);
                }
            }
        }
        crate::checkers::raft::after_node_step(self, index);
        crate::checkers::placement::after_node_step(self, index);
        if poisoned && !self.nodes[index].restart_scheduled && !self.config.has_disk_faults() {
            // Only a failing disk may poison a store: nothing a peer or client says can.
            self.violations.push(Violation {
                at_micros: now,
                checker: Checker::NoPoison,
                message: format!("{id}'s store was poisoned without any disk fault"),
            });
        }
        if poisoned && !self.nodes[index].restart_scheduled {
            // The supervisor restarts a node whose store refused further writes.
            tracing::warn!(node = %id, "store poisoned: restarting the node");
            self.crash_node(index);
            let restart_at = now + 100_000;
            self.nodes[index].restart_scheduled = true;
            self.schedule(restart_at, Event::Restart { node: id });
        }
    }

    pub(crate) fn link_latency_micros(&mut self, from: NodeId, to: NodeId) -> u64 {
        let base = self.config.latency_micros.draw(&mut self.rng);
        let same_region = self.nodes[self.index_of(from)].location.region
            == self.nodes[self.index_of(to)].location.region;
        if same_region {
            base
        } else {
            base + self.config.cross_region_latency_micros.draw(&mut self.rng)
        }
    }

    /// Ends the node's process: its handle on the disk dies and its memory is gone. Returns
    /// false when it was not running.
    fn end_process(&mut self, index: usize) -> bool {
        self.snapshots_installed_before += self.snapshots_installed_on(index);
        let sim_node = &mut self.nodes[index];
        if !sim_node.is_up() {
            return false;
        }
        if let Some(process_disk) = sim_node.process_disk.take() {
            process_disk.kill();
        }
        sim_node.state = NodeState::Down;
        sim_node.incarnation += 1;
        sim_node.timer_at = None;
        sim_node.flush_scheduled = false;
        true
    }

    /// A process restart without power loss: memory is gone, the disk keeps what the
    /// process wrote (synced or not, as the operating system still holds it).
    pub fn stop_process(&mut self, index: usize) {
        if !self.end_process(index) {
            return;
        }
        let id = self.nodes[index].id;
        tracing::info!(node = %id, "process stopped");
        self.trace.record(self.now.get(), "stop", id.0 as u64, 0);
        self.history.node_crashed(id, self.now.get());
        self.kv_history.node_crashed(id);
        self.counter_history.node_crashed(id);
        self.ledger_history.node_crashed(id);
        self.maps_history.node_crashed(id);
    }

    /// Power loss: memory and unsynced writes are gone.
    pub fn crash_node(&mut self, index: usize) {
        if !self.end_process(index) {
            return;
        }
        let report = self.nodes[index].disk.crash();
        let id = self.nodes[index].id;
        tracing::info!(node = %id, torn = report.writes_torn, dropped = report.writes_dropped, "crash");
        self.trace
            .record(self.now.get(), "crash", id.0 as u64, report.writes_dropped);
        self.history.node_crashed(id, self.now.get());
        self.kv_history.node_crashed(id);
        self.counter_history.node_crashed(id);
        self.ledger_history.node_crashed(id);
        self.maps_history.node_crashed(id);
    }

    /// Boots (or reboots) a node from its durable disk image (never a spare not yet joined
    /// or a node gone for good).
    pub fn start_node(&mut self, index: usize) {
        if !self.nodes_state.may_start(self.nodes[index].id) {
            return;
        }
        let seed = self.config.seed;
        let sim_node = &mut self.nodes[index];
        sim_node.incarnation += 1;
        // A new process has a timer loop of its own.
        sim_node.timers_stalled_until = 0;
        let stream = NODE_STREAM_BASE + ((sim_node.id.0 as u64) << 16) + sim_node.incarnation;
        let seams = NodeSeams {
            clock: Box::new(SimClock {
                epoch_micros: self.config.epoch_micros,
                now: self.now.clone(),
                skew: sim_node.skew.clone(),
            }),
            network: Box::new(SimNetworkHandle {
                from: sim_node.id,
                outbox: self.outbox.clone(),
            }),
            disk: {
                let process_disk = ProcessDisk::new(sim_node.disk.clone());
                sim_node.process_disk = Some(process_disk.clone());
                Arc::new(process_disk) as SharedDisk
            },
            rng: Box::new(SeededRng::split(seed, stream)),
        };
        let id = sim_node.id;
        let node_config = self.config.node_config(id, sim_node.location.clone());
        match Node::open(node_config, seams) {
            Ok(mut node) => {
                if self.config.runs_ledger() {
                    node.set_handler(std::sync::Arc::new(borough_ledger::ledger_handler()));
                }
                crate::checkers::recovery::on_boot(self, index, &node);
                for (peer, location) in &self.config.nodes {
                    node.add_peer(*peer, location.clone());
                }
                // Named partitions are created by the directory, not by the scenario.
                if let Some(partitions) = self.config.partitions.as_ref().filter(|run| !run.named) {
                    for partition in 0..partitions.count {
                        let voters = partitions.voters(partition, &self.config.nodes);
                        if voters.contains(&id) {
                            // Idempotent: a restarted node recovers the partition instead.
                            let _ = node.create_partition(
                                PartitionId(partition),
                                PartitionStart::Bootstrap { voters },
                            );
                        }
                    }
                }
                self.nodes[index].state = NodeState::Up(Box::new(node));
                self.trace.record(self.now.get(), "start", id.0 as u64, 0);
                self.after_step(index);
            }
            Err(error) if !self.healed => {
                // Injected disk faults can fail a boot (a failed fsync while recovering): the
                // process exits, and its supervisor starts it again on what is durable.
                tracing::warn!(node = %id, %error, "boot failed under disk faults; retrying");
                if let Some(process_disk) = self.nodes[index].process_disk.take() {
                    process_disk.kill();
                }
                self.nodes[index].disk.crash();
                self.nodes[index].restart_scheduled = true;
                let retry_at = self.now.get() + 100_000;
                self.schedule(retry_at, Event::Restart { node: id });
            }
            Err(error) => {
                // Disk faults are healed: a node that cannot boot lost its durable state.
                self.violations.push(Violation {
                    at_micros: self.now.get(),
                    checker: Checker::Recovery,
                    message: format!("{id} failed to recover from its disk: {error}"),
                });
                self.unbootable = true;
                self.ended = true;
            }
        }
    }

    fn snapshots_installed_on(&self, index: usize) -> u64 {
        self.nodes[index]
            .node()
            .and_then(|node| node.partitions())
            .map_or(0, |host| host.counters().snapshots_installed)
    }

    /// Snapshots installed by every node in every life so far.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed_before
            + (0..self.nodes.len())
                .map(|index| self.snapshots_installed_on(index))
                .sum::<u64>()
    }

    /// Applies disk faults to one node's disk.
    pub fn set_node_disk_faults(&mut self, index: usize, faults: DiskFaults) {
        self.nodes[index].disk.set_faults(faults);
    }

    /// Applies disk faults to every node's disk.
    pub fn set_disk_faults(&mut self, faults: DiskFaults) {
        for node in &self.nodes {
            node.disk.set_faults(faults.clone());
        }
    }

    /// A clock jump changes when the node's deadlines fall in virtual time.
    pub fn reschedule_timer(&mut self, index: usize) {
        self.nodes[index].timer_at = None;
        self.with_node(index, |_| {});
    }

    pub fn draw(&mut self, low: u64, high: u64) -> u64 {
        self.rng.in_range(low, high)
    }
}

fn hash_key(key: &EventKey) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes())
}
