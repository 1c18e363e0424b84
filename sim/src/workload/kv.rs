//! The key-value workload: clients reading, writing and deleting keys of the Raft partitions
//! through random replicas of each partition, and the history of what they saw.
//!
//! Every put writes a value unique to its request, so the linearizability checker can tell
//! writes apart. An operation refused on the spot (no leader known, node down) never started
//! and is not in the history; a write answered "not applied" (its entry lost to a new
//! leader) is dropped too. A write with no answer in time, or whose node crashed, is
//! indeterminate: it may have taken effect at any point after its call, or never. A read
//! that failed constrains nothing and is dropped.

use crate::checkers::linearizability::{Operation, OperationInput, OperationOutput};
use crate::run_config::WorkloadConfig;
use crate::world::{Event, World};
use borough::ids::NodeId;
use borough::partition::command::KvOperation;
use borough::partition::host::{HostOutput, ReadAnswer, ReadRequest, RequestError};
use borough::partition::kv_store::KvError;
use borough::partition::PartitionId;
use borough::seams::Rng;
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64;

#[derive(Clone, Debug)]
pub struct KvRecord {
    pub node: NodeId,
    pub operation: Operation,
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
}

impl KvHistory {
    /// The operations the linearizability checker judges.
    pub fn operations(&self) -> Vec<Operation> {
        self.records
            .values()
            .map(|record| record.operation.clone())
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
        match record.operation.input {
            OperationInput::Get { .. } => {
                // A read that never returned constrains nothing.
                self.records.remove(&history_id);
            }
            _ => record.operation.output = OperationOutput::Indeterminate,
        }
    }

    /// Every operation pending at a crashed node will never be answered.
    pub fn node_crashed(&mut self, node: NodeId) {
        let crashed: Vec<((NodeId, u64), u64)> = self
            .pending
            .range((node, 0)..=(node, u64::MAX))
            .map(|(key, id)| (*key, *id))
            .collect();
        for (key, history_id) in crashed {
            self.pending.remove(&key);
            self.give_up(history_id);
        }
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
    let key = format!("k{key_number}").into_bytes();
    // Clients route to the nodes that hold the partition (its voters, unless membership
    // changes moved replicas).
    let hosts = &world.partition_hosts[&partition];
    let pick = world.rng.in_range(0, hosts.len() as u64 - 1) as usize;
    let target_id = world.partition_hosts[&partition][pick];
    let target = world.index_of(target_id);
    let history_id = world.kv_history.next_id;
    world.kv_history.next_id += 1;
    let is_read = world.rng.chance(workload.read_ratio);
    let is_delete = !is_read && world.rng.chance(workload.delete_ratio);
    if !world.nodes[target].is_up() {
        world.kv_history.refused += 1;
        return;
    }
    let now = world.now_micros();
    let checked_key = history_key(partition, &key);
    let (input, request) = if is_read {
        (
            OperationInput::Get {
                key: checked_key.clone(),
            },
            None,
        )
    } else if is_delete {
        (
            OperationInput::Delete {
                key: checked_key.clone(),
            },
            Some(KvOperation::Delete { key: key.clone() }),
        )
    } else {
        let value = format!("v{history_id}").into_bytes();
        (
            OperationInput::Put {
                key: checked_key.clone(),
                value: value.clone(),
            },
            Some(KvOperation::Put {
                key: key.clone(),
                value,
            }),
        )
    };
    start_call(
        world,
        KvCall {
            history_id,
            target,
            incarnation: world.nodes[target].incarnation,
            partition,
            key_number,
            key,
            input,
            request,
            call_micros: now,
            timeout_micros: workload.client_timeout_micros,
        },
    );
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
    key: Vec<u8>,
    input: OperationInput,
    /// The write, or `None` for a read of `key`.
    request: Option<KvOperation>,
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
        key,
        input,
        request,
        call_micros,
        timeout_micros,
        ..
    } = call;
    let is_read = request.is_none();
    let mut started = None;
    world.with_node(target, |node| {
        started = Some(match request {
            Some(operation) => node.partition_write(PartitionId(partition), operation),
            None => node.partition_read(PartitionId(partition), ReadRequest::Get { key }),
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
    tracing::debug!(history_id, node = %target_id, request_id, partition, key_number, is_read, "kv call");
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
            operation: Operation {
                client: history_id,
                call_micros,
                return_micros: None,
                input,
                output: OperationOutput::Indeterminate,
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
}

/// A node answered one of its clients.
pub fn on_answer(world: &mut World, node: NodeId, output: &HostOutput) {
    let (request_id, outcome) = match output {
        HostOutput::WriteAnswered { request_id, result } => (
            *request_id,
            match result {
                Ok(_) => Answer::Done(OperationOutput::Ok),
                Err(RequestError::NotLeader { .. }) => Answer::NotApplied,
                Err(_) => Answer::Unknown,
            },
        ),
        HostOutput::ReadAnswered { request_id, result } => (
            *request_id,
            match result {
                Ok(ReadAnswer::Value(value)) => {
                    Answer::Done(OperationOutput::Value(Some(value.clone())))
                }
                Err(RequestError::Kv(KvError::KeyNotFound)) => {
                    Answer::Done(OperationOutput::Value(None))
                }
                Ok(ReadAnswer::Pairs(_)) | Err(_) => Answer::NotApplied,
            },
        ),
        HostOutput::Applied { .. } | HostOutput::RoleChanged { .. } => return,
    };
    let now = world.now_micros();
    let history = &mut world.kv_history;
    let Some(history_id) = history.pending.remove(&(node, request_id)) else {
        return;
    };
    let Some(record) = history.records.get_mut(&history_id) else {
        return;
    };
    if !record.pending {
        return;
    }
    tracing::debug!(history_id, answer = ?outcome, "kv answer");
    // What the client was told, values included: a run that answers otherwise is another run.
    let digest = match &outcome {
        Answer::Done(OperationOutput::Value(Some(value))) => xxh3_64(value),
        Answer::Done(OperationOutput::Value(None)) => 1,
        Answer::Done(_) => 2,
        Answer::NotApplied => 3,
        Answer::Unknown => 4,
    };
    match outcome {
        Answer::Done(output) => {
            record.pending = false;
            record.operation.return_micros = Some(now);
            record.operation.output = output;
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
    Done(OperationOutput),
    NotApplied,
    Unknown,
}
