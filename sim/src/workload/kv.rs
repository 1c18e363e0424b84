//! The key-value workload: clients reading, writing and deleting keys of the Raft partitions
//! through random replicas of each partition, in single-key calls, batches (2 to 4 keys
//! applied together) and range reads (random bounds, limit and direction), and the history
//! of what they saw.
//!
//! Every put writes a value unique to its call, so the checkers can tell writes apart. An
//! operation refused on the spot (no leader known, node down) never started and is not in the
//! history; a write answered "not applied" (its entry lost to a new leader) is dropped too. A
//! write with no answer in time, or whose node crashed, is indeterminate: it may have taken
//! effect at any point after its call, or never. A read that failed constrains nothing and is
//! dropped; one that got no answer at all is still counted, for liveness.

use crate::checkers::atomicity::{KeyWrite, KvCall as CheckedCall, KvRequest, KvResponse};
use crate::run_config::{PartitionsRun, WorkloadConfig};
use crate::state_machine::{SimAnswer, SimOperation, SimOutcome, SimQuery};
use crate::world::{Event, World};
use borough::coordinator::router::{RouteError, RoutedOutcome, RoutedRequest, RouterAnswer};
use borough::ids::NodeId;
use borough::partition::command::{BatchOperation, KvOperation};
use borough::partition::host::{HostOutput, RequestError};
use borough::partition::kv_store::{KeyBound, RangeQuery, ReadAnswer, ReadRequest};
use borough::partition::state_machine::StateMachineError;
use borough::partition::PartitionId;
use borough::seams::Rng;
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64;

#[derive(Clone, Debug)]
pub struct KvRecord {
    pub node: NodeId,
    pub call: CheckedCall,
    pub pending: bool,
}

#[derive(Debug, Default)]
pub struct KvHistory {
    pub records: BTreeMap<u64, KvRecord>,
    /// (node, the node's request id) of every pending operation, to its history id.
    pending: BTreeMap<(NodeId, u64), u64>,
    next_id: u64,
    /// Operations refused on the spot or known not to have taken effect.
    pub refused: u64,
    /// When each read that never got an answer was called: left out of the history (it
    /// constrains nothing) but not out of liveness.
    pub unanswered_reads: Vec<u64>,
    /// Routed answers that came out of the very step that took their call (a router can end
    /// a request at once), kept until the call is on record.
    early_routed: BTreeMap<(NodeId, u64), RouterAnswer<SimOutcome, SimAnswer>>,
}

impl KvHistory {
    /// The calls the linearizability and atomicity checkers judge.
    pub fn calls(&self) -> Vec<CheckedCall> {
        self.records
            .values()
            .map(|record| record.call.clone())
            .collect()
    }

    fn give_up(&mut self, history_id: u64) {
        let Some(record) = self.records.get_mut(&history_id) else {
            return;
        };
        if !record.pending {
            return;
        }
        record.pending = false;
        match record.call.request {
            KvRequest::Get { .. } | KvRequest::Range { .. } => {
                // A read that never returned constrains nothing.
                self.unanswered_reads.push(record.call.call_micros);
                self.records.remove(&history_id);
            }
            KvRequest::Write(_) | KvRequest::Batch(_) => {
                record.call.response = KvResponse::Indeterminate
            }
        }
    }

    /// Every operation pending at a crashed node will never be answered.
    pub fn node_crashed(&mut self, node: NodeId) {
        for history_id in crate::workload::take_pending_at(&mut self.pending, node) {
            self.give_up(history_id);
        }
        // Its next run numbers its requests from the start again.
        self.early_routed
            .retain(|(early_node, _), _| *early_node != node);
    }

    pub fn time_out(&mut self, history_id: u64) {
        if let Some(record) = self.records.get(&history_id) {
            if record.pending {
                let node = record.node;
                self.pending
                    .retain(|(pending_node, _), id| !(*pending_node == node && *id == history_id));
            }
        }
        self.give_up(history_id);
    }

    /// Whether a call sent to `node` still waits for its answer.
    pub fn waits_on(&self, node: NodeId) -> bool {
        self.pending.keys().any(|(target, _)| *target == node)
    }

    pub fn count(&self, predicate: impl Fn(&KvRecord) -> bool) -> usize {
        self.records
            .values()
            .filter(|record| predicate(record))
            .count()
    }
}

/// The key of the checker's history: partition and key together, since keys repeat across
/// partitions.
pub fn history_key(partition: u64, key: &[u8]) -> Vec<u8> {
    let mut history_key = format!("p{partition}/").into_bytes();
    history_key.extend_from_slice(key);
    history_key
}

pub fn client_operation(world: &mut World, index: usize) {
    if world.workload_stopped {
        return;
    }
    let workload: WorkloadConfig = world.config.workloads[index].clone();
    let rate = workload.rate_per_s.max(1);
    let next = world.now_micros() + world.draw(0, 2 * (1_000_000 / rate));
    world.schedule(next, Event::ClientKv { workload: index });
    let Some(partitions) = world.config.partitions.clone() else {
        return;
    };
    let partition = world.draw(0, partitions.count - 1);
    let key_number = world.draw(0, workload.keys_per_partition - 1);
    // Clients route to the nodes that hold the partition (its voters, unless membership
    // changes moved replicas), as a router reading the committed configuration would: a
    // replica whose addition never committed (its leader was deposed first) is no member,
    // and nobody will ever lead it.
    // With named partitions any node takes any request and routes it to the leader.
    let hosts: Vec<NodeId> = if partitions.named {
        crate::faults::nodes::members(world)
    } else {
        routed_hosts(world, partition)
    };
    if hosts.is_empty() {
        return;
    }
    let pick = world.rng.in_range(0, hosts.len() as u64 - 1) as usize;
    let target_id = hosts[pick];
    let target = world.index_of(target_id);
    let history_id = world.kv_history.next_id;
    world.kv_history.next_id += 1;
    let is_read = world.rng.chance(workload.read_ratio);
    let is_delete = !is_read && world.rng.chance(workload.delete_ratio);
    if !world.nodes[target].is_up() {
        world.kv_history.refused += 1;
        return;
    }
    // Each put writes a value unique to its call, so the checkers can tell writes apart (a
    // batch writes each of its keys once).
    let value = format!("v{history_id}").into_bytes();
    let (request, operation) = if is_read {
        if world.rng.chance(workload.range_ratio) {
            let query = draw_range(world, workload.keys_per_partition);
            let keys = keys_in_range(workload.keys_per_partition, &query)
                .into_iter()
                .map(|key| history_key(partition, &key))
                .collect();
            (
                KvRequest::Range {
                    keys,
                    limit: query.limit,
                },
                Operation::Read(ReadRequest::Range(query)),
            )
        } else {
            let key = key_name(key_number);
            (
                KvRequest::Get {
                    key: history_key(partition, &key),
                },
                Operation::Read(ReadRequest::Get { key }),
            )
        }
    } else {
        let writes = if workload.keys_per_partition >= 2 && world.rng.chance(workload.batch_ratio) {
            draw_batch(world, &workload, key_number, &value)
        } else {
            vec![(key_name(key_number), (!is_delete).then_some(value))]
        };
        write_call(partition, writes)
    };
    let now = world.now_micros();
    start_call(
        world,
        KvCall {
            history_id,
            target,
            incarnation: world.nodes[target].incarnation,
            partition,
            key_number,
            request,
            operation,
            call_micros: now,
            timeout_micros: workload.client_timeout_micros,
        },
    );
}

/// A batch of 2 to 4 distinct keys, `first` among them, each put `value` or deleted.
fn draw_batch(
    world: &mut World,
    workload: &WorkloadConfig,
    first: u64,
    value: &[u8],
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let size = world.draw(2, workload.keys_per_partition.min(4));
    let mut key_numbers = vec![first];
    while (key_numbers.len() as u64) < size {
        let candidate = world.draw(0, workload.keys_per_partition - 1);
        if !key_numbers.contains(&candidate) {
            key_numbers.push(candidate);
        }
    }
    key_numbers
        .into_iter()
        .map(|number| {
            let deletes = world.rng.chance(workload.delete_ratio);
            (key_name(number), (!deletes).then(|| value.to_vec()))
        })
        .collect()
}

/// What the checkers and the node are asked for writes of (key, value or delete): one write,
/// or a batch of several.
fn write_call(partition: u64, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> (KvRequest, Operation) {
    let checked = |key: &[u8], value: &Option<Vec<u8>>| KeyWrite {
        key: history_key(partition, key),
        value: value.clone(),
    };
    if let [(key, value)] = writes.as_slice() {
        let operation = match value {
            Some(value) => KvOperation::Put {
                key: key.clone(),
                value: value.clone(),
            },
            None => KvOperation::Delete { key: key.clone() },
        };
        return (
            KvRequest::Write(checked(key, value)),
            Operation::Write(operation),
        );
    }
    let request = KvRequest::Batch(
        writes
            .iter()
            .map(|(key, value)| checked(key, value))
            .collect(),
    );
    let operations = writes
        .into_iter()
        .map(|(key, value)| match value {
            Some(value) => BatchOperation::Put { key, value },
            None => BatchOperation::Delete { key },
        })
        .collect();
    (request, Operation::Write(KvOperation::Batch(operations)))
}

fn key_name(number: u64) -> Vec<u8> {
    format!("k{number}").into_bytes()
}

/// A range query over the key space: bounds that are keys of it or open, a limit from one
/// to one past the key count (so answers are cut short now and then), either direction.
fn draw_range(world: &mut World, keys_per_partition: u64) -> RangeQuery {
    let bound = |world: &mut World| {
        (!world.rng.chance(0.2)).then(|| key_name(world.draw(0, keys_per_partition - 1)))
    };
    // Drawn as ever (start included, end excluded), so the scenarios' traces stay as pinned.
    let start = bound(world).map_or(KeyBound::Unbounded, KeyBound::Included);
    let end = bound(world).map_or(KeyBound::Unbounded, KeyBound::Excluded);
    RangeQuery {
        start,
        end,
        limit: world.draw(1, keys_per_partition + 1) as usize,
        reverse: world.rng.chance(0.3),
    }
}

/// The keys of the key space inside `query`'s bounds, in the query's order: what a correct
/// answer draws from.
fn keys_in_range(keys_per_partition: u64, query: &RangeQuery) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..keys_per_partition)
        .map(key_name)
        .filter(|key| {
            let after_start = match &query.start {
                KeyBound::Unbounded => true,
                KeyBound::Included(start) => key >= start,
                KeyBound::Excluded(start) => key > start,
            };
            let before_end = match &query.end {
                KeyBound::Unbounded => true,
                KeyBound::Included(end) => key <= end,
                KeyBound::Excluded(end) => key < end,
            };
            after_start && before_end
        })
        .collect();
    keys.sort();
    if query.reverse {
        keys.reverse();
    }
    keys
}

#[derive(Debug)]
enum Operation {
    Write(KvOperation),
    Read(ReadRequest),
}

/// A kv request on its way into its node.
#[derive(Debug)]
pub struct KvCall {
    history_id: u64,
    target: usize,
    /// The node's life the client connected to: a restart resets the connection.
    incarnation: u64,
    partition: u64,
    key_number: u64,
    /// What the checkers are told was asked.
    request: KvRequest,
    /// What the node is asked.
    operation: Operation,
    call_micros: u64,
    timeout_micros: u64,
}

/// Hands `call` to its node, or holds it until the node's pause ends (a paused process
/// takes nothing). The operation's call time stays when the client sent it. A node that went
/// down meanwhile never saw it: it is left out of the history, like any refused call.
pub fn start_call(world: &mut World, call: KvCall) {
    let target = call.target;
    if !world.nodes[target].is_up() || world.nodes[target].incarnation != call.incarnation {
        world.kv_history.refused += 1;
        return;
    }
    let paused_until = world.nodes[target].paused_until;
    if paused_until > world.now_micros() {
        world.schedule(paused_until, Event::DeferredKv(Box::new(call)));
        return;
    }
    let target_id = world.nodes[target].id;
    let KvCall {
        history_id,
        partition,
        key_number,
        request,
        operation,
        call_micros,
        timeout_micros,
        ..
    } = call;
    let mut started = None;
    let named = world
        .config
        .partitions
        .as_ref()
        .is_some_and(|partitions| partitions.named);
    world.with_node(target, |node| {
        started = Some(match (operation, named) {
            (Operation::Write(operation), false) => {
                node.partition_write(PartitionId(partition), SimOperation::Kv(operation))
            }
            (Operation::Read(read), false) => {
                node.partition_read(PartitionId(partition), SimQuery::Kv(read))
            }
            (Operation::Write(operation), true) => node
                .route_request(
                    PartitionsRun::name(partition),
                    RoutedRequest::Write(SimOperation::Kv(operation)),
                )
                .map(|request_id| request_id | ROUTED),
            (Operation::Read(read), true) => node
                .route_request(
                    PartitionsRun::name(partition),
                    RoutedRequest::Read(SimQuery::Kv(read)),
                )
                .map(|request_id| request_id | ROUTED),
        });
    });
    let request_id = match started {
        Some(Ok(request_id)) => request_id,
        // Refused on the spot (no leader known, poisoned, bad input): it never started.
        Some(Err(_)) | None => {
            world.kv_history.refused += 1;
            return;
        }
    };
    tracing::debug!(history_id, node = %target_id, request_id, partition, key_number, ?request, "kv call");
    world.trace.record(
        call_micros,
        "kv",
        history_id,
        (partition << 32) | key_number,
    );
    world.kv_history.records.insert(
        history_id,
        KvRecord {
            node: target_id,
            call: CheckedCall {
                id: history_id,
                call_micros,
                return_micros: None,
                request,
                response: KvResponse::Indeterminate,
            },
            pending: true,
        },
    );
    world
        .kv_history
        .pending
        .insert((target_id, request_id), history_id);
    let timeout_at = (call_micros + timeout_micros).max(world.now_micros());
    world.schedule(timeout_at, Event::KvTimeout { history_id });
    if let Some(answer) = world
        .kv_history
        .early_routed
        .remove(&(target_id, request_id))
    {
        on_routed_answer(world, target_id, answer);
    }
    // Early answers are taken by the call that follows them at once; any other is stale.
    world.kv_history.early_routed.clear();
}

/// A node answered one of its clients.
pub fn on_answer(world: &mut World, node: NodeId, output: &HostOutput<SimOutcome, SimAnswer>) {
    let (request_id, outcome) = match output {
        HostOutput::WriteAnswered { request_id, result } => (
            *request_id,
            match result {
                Ok(SimOutcome::Kv(_)) => Answer::Done(KvResponse::Written),
                // Not this workload's request.
                Ok(SimOutcome::Counter(_) | SimOutcome::Directory(_) | SimOutcome::Map(_)) => {
                    return
                }
                Err(RequestError::NotLeader { .. }) => Answer::NotApplied,
                Err(_) => Answer::Unknown,
            },
        ),
        HostOutput::ReadAnswered { request_id, result } => (
            *request_id,
            match result {
                Ok(SimAnswer::Kv(ReadAnswer::Value(value))) => {
                    Answer::Done(KvResponse::Value(Some(value.clone())))
                }
                Err(RequestError::State(StateMachineError::KeyNotFound)) => {
                    Answer::Done(KvResponse::Value(None))
                }
                // The workload's limits keep every range to one page.
                Ok(SimAnswer::Kv(ReadAnswer::Page(page))) => {
                    Answer::Done(KvResponse::Pairs(page.pairs.clone()))
                }
                // The workload never asks for sizes.
                Ok(
                    SimAnswer::Counter(_)
                    | SimAnswer::Map(_)
                    | SimAnswer::Kv(ReadAnswer::Size { .. }),
                ) => return,
                // No answer in time: for liveness, a read that never came back.
                Err(RequestError::OutcomeUnknown) => Answer::Unknown,
                Err(_) => Answer::NotApplied,
            },
        ),
        HostOutput::Applied { .. } | HostOutput::RoleChanged { .. } => return,
    };
    record_answer(world, (node, request_id), outcome);
}

/// Marks the request ids of routed calls in the pending map: the router numbers its
/// requests apart from the partition host.
const ROUTED: u64 = 1 << 63;

/// A routed answer that came out of the step that made call `request_id` at `node`, before
/// the call was on record (see `KvHistory::early_routed`).
pub fn take_early_routed(
    world: &mut World,
    node: NodeId,
    request_id: u64,
) -> Option<RouterAnswer<SimOutcome, SimAnswer>> {
    world
        .kv_history
        .early_routed
        .remove(&(node, request_id | ROUTED))
}

/// A node's router answered one of its clients (named partitions).
pub fn on_routed_answer(
    world: &mut World,
    node: NodeId,
    answer: RouterAnswer<SimOutcome, SimAnswer>,
) {
    let key = (node, answer.request_id | ROUTED);
    let history = &world.kv_history;
    let Some(record) = history
        .pending
        .get(&key)
        .and_then(|history_id| history.records.get(history_id))
    else {
        world.kv_history.early_routed.insert(key, answer);
        return;
    };
    let is_read = matches!(
        record.call.request,
        KvRequest::Get { .. } | KvRequest::Range { .. }
    );
    let not_applied = answer.not_applied;
    let outcome = match answer.result {
        Ok(RoutedOutcome::Wrote(SimOutcome::Kv(_))) if !is_read => {
            Answer::Done(KvResponse::Written)
        }
        Ok(RoutedOutcome::Read(SimAnswer::Kv(ReadAnswer::Value(value)))) if is_read => {
            Answer::Done(KvResponse::Value(Some(value)))
        }
        Ok(RoutedOutcome::Read(SimAnswer::Kv(ReadAnswer::Page(page)))) if is_read => {
            Answer::Done(KvResponse::Pairs(page.pairs))
        }
        Err(RouteError::Request(RequestError::State(StateMachineError::KeyNotFound)))
            if is_read =>
        {
            Answer::Done(KvResponse::Value(None))
        }
        // A write every node refused before proposing it never took effect.
        Err(_) if !is_read && not_applied => Answer::NotApplied,
        // Anything else ends the call without an outcome: a write may or may not have
        // applied (its router gave up, or its answer was lost), a read constrains nothing
        // (and counts, after the heal, as one the cluster did not serve).
        other => {
            tracing::debug!(?other, "routed call ended without an outcome");
            Answer::Unknown
        }
    };
    record_answer(world, key, outcome);
}

/// What a call's answer means for the history.
fn record_answer(world: &mut World, pending_key: (NodeId, u64), outcome: Answer) {
    let now = world.now_micros();
    let history = &mut world.kv_history;
    let Some(history_id) = history.pending.remove(&pending_key) else {
        return;
    };
    let Some(record) = history.records.get_mut(&history_id) else {
        return;
    };
    if !record.pending {
        return;
    }
    let mut outcome = outcome;
    if let (Answer::Done(KvResponse::Pairs(pairs)), KvRequest::Range { keys, .. }) =
        (&mut outcome, &record.call.request)
    {
        // The pairs' keys as the checkers name them, with the partition's prefix (a range
        // with no key in its bounds has no prefix to give: anything it returned is outside).
        if let Some(first) = keys.first() {
            let slash = first.iter().position(|byte| *byte == b'/').unwrap_or(0);
            let prefix = &first[..=slash];
            for (key, _) in pairs.iter_mut() {
                let mut checked_key = prefix.to_vec();
                checked_key.extend_from_slice(key);
                *key = checked_key;
            }
        }
    }
    tracing::debug!(history_id, answer = ?outcome, "kv answer");
    // What the client was told, values included: a run that answers otherwise is another run.
    let digest = match &outcome {
        Answer::Done(KvResponse::Value(Some(value))) => xxh3_64(value),
        Answer::Done(KvResponse::Value(None)) => 1,
        Answer::Done(KvResponse::Pairs(pairs)) => {
            let mut bytes = Vec::new();
            for (key, value) in pairs {
                bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
                bytes.extend_from_slice(key);
                bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
                bytes.extend_from_slice(value);
            }
            xxh3_64(&bytes) ^ 5
        }
        Answer::Done(_) => 2,
        Answer::NotApplied => 3,
        Answer::Unknown => 4,
    };
    match outcome {
        Answer::Done(response) => {
            record.pending = false;
            record.call.return_micros = Some(now);
            record.call.response = response;
        }
        Answer::NotApplied => {
            history.records.remove(&history_id);
            history.refused += 1;
        }
        Answer::Unknown => history.give_up(history_id),
    }
    world.trace.record(now, "kv_answer", history_id, digest);
}

#[derive(Debug)]
enum Answer {
    Done(KvResponse),
    NotApplied,
    Unknown,
}

/// The nodes clients send `partition`'s calls to: those the membership nemesis added, kept
/// only while the committed configuration (as the replica that committed furthest knows it)
/// has them as members; all of them if it has none (no replica yet).
pub(crate) fn routed_hosts(world: &World, partition: u64) -> Vec<NodeId> {
    let hosts = &world.partition_hosts[&partition];
    let committed = world
        .nodes
        .iter()
        .filter_map(|sim_node| sim_node.node()?.partitions()?.group(PartitionId(partition)))
        .max_by_key(|group| (group.log().committed(), group.term()))
        .map(|group| group.configuration_at(group.log().committed()));
    let members: Vec<NodeId> = hosts
        .iter()
        .copied()
        .filter(|host| {
            committed
                .as_ref()
                .is_none_or(|configuration| configuration.is_member(*host))
        })
        .collect();
    if members.is_empty() {
        hosts.clone()
    } else {
        members
    }
}
