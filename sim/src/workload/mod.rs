//! Workloads: clients that put events at random nodes, and the history of what they saw.
//!
//! Each client put goes to a node drawn at random; a node that is down refuses the connection
//! (the put never started). A put whose answer does not arrive within the client timeout, or
//! whose node crashed first, is indeterminate: the event may or may not exist. Only
//! acknowledged puts carry guarantees, and the checkers hold the cluster to them.

pub mod counter;
pub mod kv;
pub mod ledger;
pub mod maps;

use crate::checkers::Checker;
use crate::run_config::{WorkloadConfig, WorkloadKind};
use crate::world::{Event, Violation, World};
use borough::coordinator::{CommitLevel, PutError};
use borough::events::EventKey;
use borough::ids::NodeId;
use borough::seams::Rng;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Pending,
    Acknowledged {
        key: EventKey,
        at_micros: u64,
    },
    Failed {
        error: PutError,
    },
    /// No answer in time, or the coordinator crashed: the event may or may not exist.
    Indeterminate,
}

#[derive(Clone, Debug)]
pub struct PutRecord {
    pub coordinator: NodeId,
    pub issued_micros: u64,
    pub commit_level: CommitLevel,
    pub event: Vec<u8>,
    pub outcome: PutOutcome,
}

#[derive(Debug, Default)]
pub struct History {
    pub puts: BTreeMap<u64, PutRecord>,
    /// Puts refused because their node was down: they never started.
    pub refused: u64,
    /// Which request each acknowledged key answered: a key answers one put only.
    pub acknowledged_keys: BTreeMap<EventKey, u64>,
    next_request_id: u64,
}

impl History {
    pub fn time_out(&mut self, request_id: u64, _now_micros: u64) {
        if let Some(record) = self.puts.get_mut(&request_id) {
            if record.outcome == PutOutcome::Pending {
                record.outcome = PutOutcome::Indeterminate;
            }
        }
    }

    /// Every put pending at a crashed coordinator will never be answered.
    pub fn node_crashed(&mut self, node: NodeId, _now_micros: u64) {
        for record in self.puts.values_mut() {
            if record.coordinator == node && record.outcome == PutOutcome::Pending {
                record.outcome = PutOutcome::Indeterminate;
            }
        }
    }

    pub fn acknowledged(&self) -> impl Iterator<Item = (&EventKey, &PutRecord)> {
        self.puts
            .values()
            .filter_map(|record| match &record.outcome {
                PutOutcome::Acknowledged { key, .. } => Some((key, record)),
                _ => None,
            })
    }

    pub fn count(&self, predicate: impl Fn(&PutOutcome) -> bool) -> usize {
        self.puts
            .values()
            .filter(|record| predicate(&record.outcome))
            .count()
    }
}

pub fn start(world: &mut World) {
    for index in 0..world.config.workloads.len() {
        let at = next_arrival(world, index);
        let event = match world.config.workloads[index].kind {
            WorkloadKind::Events => Event::ClientPut { workload: index },
            WorkloadKind::Kv => Event::ClientKv { workload: index },
            WorkloadKind::Counter => Event::ClientCounter { workload: index },
            WorkloadKind::Ledger => Event::ClientLedger { workload: index },
            WorkloadKind::Maps => {
                maps::start(world, index);
                Event::ClientMap { workload: index }
            }
        };
        world.schedule(at, event);
    }
}

/// Removes every call pending at `node` from a workload's `(node, request id) -> history id`
/// map and returns their history ids: a crashed node will answer none of them.
pub(crate) fn take_pending_at(
    pending: &mut BTreeMap<(NodeId, u64), u64>,
    node: NodeId,
) -> Vec<u64> {
    let keys: Vec<(NodeId, u64)> = pending
        .range((node, 0)..=(node, u64::MAX))
        .map(|(key, _)| *key)
        .collect();
    keys.into_iter()
        .filter_map(|key| pending.remove(&key))
        .collect()
}

/// Inter-arrival times are uniform in [0, 2/rate]: the rate holds on average, arrivals jitter.
fn next_arrival(world: &mut World, index: usize) -> u64 {
    let rate = world.config.workloads[index].rate_per_s.max(1);
    let mean_micros = 1_000_000 / rate;
    world.now_micros() + world.draw(0, 2 * mean_micros)
}

pub fn client_put(world: &mut World, index: usize) {
    if world.workload_stopped {
        return;
    }
    let next = next_arrival(world, index);
    world.schedule(next, Event::ClientPut { workload: index });

    let workload: WorkloadConfig = world.config.workloads[index].clone();
    let target = world.draw(0, world.nodes.len() as u64 - 1) as usize;
    let level_index = world.draw(0, workload.commit_levels.len() as u64 - 1) as usize;
    let commit_level = workload.commit_levels[level_index];
    let length = workload.event_bytes.draw(&mut world.rng) as usize;
    let request_id = world.history.next_request_id;
    world.history.next_request_id += 1;
    let event = event_body(request_id, length, &mut world.rng);
    if !world.nodes[target].is_up() {
        world.history.refused += 1;
        return;
    }
    let now = world.now_micros();
    world.history.puts.insert(
        request_id,
        PutRecord {
            coordinator: world.nodes[target].id,
            issued_micros: now,
            commit_level,
            event: event.clone(),
            outcome: PutOutcome::Pending,
        },
    );
    world.schedule(
        now + workload.client_timeout_micros,
        Event::ClientTimeout { request_id },
    );
    world
        .trace
        .record(now, "put", request_id, world.nodes[target].id.0 as u64);
    start_put(
        world,
        PutCall {
            request_id,
            target,
            incarnation: world.nodes[target].incarnation,
            event,
            commit_level,
        },
    );
}

/// A put on its way into its node.
#[derive(Debug)]
pub struct PutCall {
    request_id: u64,
    target: usize,
    /// The node's life the client connected to: a restart resets the connection.
    incarnation: u64,
    event: Vec<u8>,
    commit_level: CommitLevel,
}

/// Hands `call` to its node, or holds it until the node's pause ends. A node that went down
/// meanwhile never sees it (the client's timeout makes it indeterminate).
pub fn start_put(world: &mut World, call: PutCall) {
    let target = call.target;
    if !world.nodes[target].is_up() || world.nodes[target].incarnation != call.incarnation {
        return;
    }
    let paused_until = world.nodes[target].paused_until;
    if paused_until > world.now_micros() {
        world.schedule(paused_until, Event::DeferredPut(Box::new(call)));
        return;
    }
    let mut issued = None;
    world.with_node(target, |node| {
        // The key also comes with the answer; a client that times out learns nothing here.
        issued = node.put_event(call.request_id, call.event, Some(call.commit_level));
    });
    if let Some(key) = issued {
        check_key_increasing(world, world.nodes[target].id, key);
    }
}

/// Keys increase per node: each key a node issues is above every key it issued before,
/// across clock steps backwards and restarts (its durable reservation).
fn check_key_increasing(world: &mut World, node: NodeId, key: EventKey) {
    let previous = world.last_key_issued.get(&node);
    if let Some(previous) = previous.filter(|previous| **previous >= key) {
        let message = format!("{node} issued {key} after {previous}");
        world.violations.push(Violation {
            at_micros: world.now_micros(),
            checker: Checker::KeysIncreasing,
            message,
        });
    }
    world.last_key_issued.insert(node, key);
}

/// A JSON event of about `length` bytes, unique per request.
fn event_body(request_id: u64, length: usize, rng: &mut dyn Rng) -> Vec<u8> {
    let mut body = format!("{{\"request\":{request_id},\"data\":\"").into_bytes();
    // Eight letters per draw: event bodies are the workload's bulk.
    while body.len() + 2 < length {
        let mut bits = rng.next_u64();
        for _ in 0..8 {
            if body.len() + 2 >= length {
                break;
            }
            body.push(b'a' + (bits % 26) as u8);
            bits /= 26;
        }
    }
    body.extend_from_slice(b"\"}");
    body
}
