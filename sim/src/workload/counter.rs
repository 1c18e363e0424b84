//! The counter workload: clients adding to and reading the simulator's counter state machine
//! in the Raft partitions (`crate::state_machine`), through the nodes that hold each
//! partition, and the check of what they saw.
//!
//! An add refused on the spot (no leader known, node down or paused) never started; one
//! answered "not applied" (its entry lost to a new leader) never took effect; one with no
//! answer in time, or whose node crashed, may have taken effect at any point after its call,
//! or never. The check, per partition, holds every answered read and add to what a
//! linearizable counter could have said: at least the sum of the adds acknowledged before
//! the call, at most the sum of the adds called before the answer that may have taken
//! effect. Violations are reported under `linearizability`.

use crate::checkers::Checker;
use crate::run_config::WorkloadConfig;
use crate::state_machine::{CounterOperation, SimAnswer, SimOperation, SimOutcome, SimQuery};
use crate::world::{Event, Violation, World};
use borough::ids::NodeId;
use borough::partition::host::{HostOutput, RequestError};
use borough::partition::PartitionId;
use borough::seams::Rng;
use std::collections::BTreeMap;

/// What one counter call asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterRequest {
    Add { amount: u64 },
    Read,
}

/// What became of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterResponse {
    Pending,
    /// The counter's value the call saw (after the add, for an add).
    Value {
        value: u64,
        at_micros: u64,
    },
    /// Known not to have taken effect (an add), or to constrain nothing (a failed read).
    NotApplied,
    /// No answer: an add may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct CounterCall {
    pub node: NodeId,
    pub partition: u64,
    pub request: CounterRequest,
    pub call_micros: u64,
    pub response: CounterResponse,
}

#[derive(Debug, Default)]
pub struct CounterHistory {
    pub calls: BTreeMap<u64, CounterCall>,
    /// (node, the node's request id) of every pending call, to its history id.
    pending: BTreeMap<(NodeId, u64), u64>,
    next_id: u64,
    /// Calls refused on the spot.
    pub refused: u64,
}

impl CounterHistory {
    fn settle(&mut self, history_id: u64, response: CounterResponse) {
        if let Some(call) = self.calls.get_mut(&history_id) {
            if call.response == CounterResponse::Pending {
                call.response = response;
            }
        }
    }

    /// Every call pending at a crashed node will never be answered.
    pub fn node_crashed(&mut self, node: NodeId) {
        for history_id in crate::workload::take_pending_at(&mut self.pending, node) {
            self.settle(history_id, CounterResponse::Unknown);
        }
    }

    pub fn time_out(&mut self, history_id: u64) {
        self.pending.retain(|_, id| *id != history_id);
        self.settle(history_id, CounterResponse::Unknown);
    }

    pub fn count(&self, predicate: impl Fn(&CounterCall) -> bool) -> usize {
        self.calls.values().filter(|call| predicate(call)).count()
    }
}

pub fn client_operation(world: &mut World, index: usize) {
    if world.workload_stopped {
        return;
    }
    let workload: WorkloadConfig = world.config.workloads[index].clone();
    let rate = workload.rate_per_s.max(1);
    let next = world.now_micros() + world.draw(0, 2 * (1_000_000 / rate));
    world.schedule(next, Event::ClientCounter { workload: index });
    let Some(partitions) = world.config.partitions.clone() else {
        return;
    };
    let partition = world.draw(0, partitions.count - 1);
    let hosts = crate::workload::kv::routed_hosts(world, partition);
    let pick = world.rng.in_range(0, hosts.len() as u64 - 1) as usize;
    let target = world.index_of(hosts[pick]);
    let request = if world.rng.chance(workload.read_ratio) {
        CounterRequest::Read
    } else {
        CounterRequest::Add {
            amount: world.rng.in_range(1, 9),
        }
    };
    let now = world.now_micros();
    if !world.nodes[target].is_up() || world.nodes[target].paused_until > now {
        world.counter_history.refused += 1;
        return;
    }
    let mut started = None;
    world.with_node(target, |node| {
        started = Some(match request {
            CounterRequest::Add { amount } => node.partition_write(
                PartitionId(partition),
                SimOperation::Counter(CounterOperation::Add { amount }),
            ),
            CounterRequest::Read => node.partition_read(PartitionId(partition), SimQuery::Counter),
        });
    });
    let Some(Ok(request_id)) = started else {
        world.counter_history.refused += 1;
        return;
    };
    let node = world.nodes[target].id;
    let history = &mut world.counter_history;
    let history_id = history.next_id;
    history.next_id += 1;
    history.calls.insert(
        history_id,
        CounterCall {
            node,
            partition,
            request,
            call_micros: now,
            response: CounterResponse::Pending,
        },
    );
    history.pending.insert((node, request_id), history_id);
    world.trace.record(now, "counter", history_id, partition);
    world.schedule(
        now + workload.client_timeout_micros,
        Event::CounterTimeout { history_id },
    );
}

/// A node answered one of its clients.
pub fn on_answer(world: &mut World, node: NodeId, output: &HostOutput<SimOutcome, SimAnswer>) {
    let (request_id, response) = match output {
        HostOutput::WriteAnswered { request_id, result } => (
            *request_id,
            match result {
                Ok(SimOutcome::Counter(value)) => Some(*value),
                Ok(SimOutcome::Kv(_) | SimOutcome::Directory(_) | SimOutcome::Map(_)) => return,
                Err(RequestError::NotLeader { .. }) => None,
                Err(_) => {
                    answer(world, node, *request_id, CounterResponse::Unknown);
                    return;
                }
            },
        ),
        HostOutput::ReadAnswered { request_id, result } => (
            *request_id,
            match result {
                Ok(SimAnswer::Counter(value)) => Some(*value),
                Ok(SimAnswer::Kv(_) | SimAnswer::Map(_)) => return,
                Err(_) => None,
            },
        ),
        HostOutput::Applied { .. } | HostOutput::RoleChanged { .. } => return,
    };
    let at_micros = world.now_micros();
    let response = match response {
        Some(value) => CounterResponse::Value { value, at_micros },
        None => CounterResponse::NotApplied,
    };
    answer(world, node, request_id, response);
}

fn answer(world: &mut World, node: NodeId, request_id: u64, response: CounterResponse) {
    let history = &mut world.counter_history;
    if let Some(history_id) = history.pending.remove(&(node, request_id)) {
        history.settle(history_id, response);
    }
}

/// Holds every answered call to the bounds a linearizable counter keeps (see the module doc).
pub fn check(world: &mut World) {
    let found = violations(&world.counter_history.calls);
    let at_micros = world.now_micros();
    for message in found.into_iter().take(5) {
        world.violations.push(Violation {
            at_micros,
            checker: Checker::Linearizability,
            message,
        });
    }
}

/// Every answered call whose value no linearizable counter could have given.
fn violations(calls: &BTreeMap<u64, CounterCall>) -> Vec<String> {
    let mut by_partition: BTreeMap<u64, Vec<&CounterCall>> = BTreeMap::new();
    for call in calls.values() {
        by_partition.entry(call.partition).or_default().push(call);
    }
    let mut found = Vec::new();
    for (partition, calls) in by_partition {
        for (position, call) in calls.iter().enumerate() {
            let CounterResponse::Value { value, at_micros } = call.response else {
                continue;
            };
            let own = match call.request {
                CounterRequest::Add { amount } => amount,
                CounterRequest::Read => 0,
            };
            let (mut lowest, mut highest) = (own, own);
            for (other_position, other) in calls.iter().enumerate() {
                let CounterRequest::Add { amount } = other.request else {
                    continue;
                };
                if other_position == position {
                    continue;
                }
                match other.response {
                    // Acknowledged before this call began: it is in every value this call sees.
                    CounterResponse::Value {
                        at_micros: acknowledged,
                        ..
                    } if acknowledged < call.call_micros => {
                        lowest += amount;
                        highest += amount;
                    }
                    CounterResponse::NotApplied => {}
                    // Called before this call's answer: it may be in the value.
                    _ if other.call_micros <= at_micros => highest += amount,
                    _ => {}
                }
            }
            if value < lowest || value > highest {
                found.push(format!(
                    "partition {partition}: {:?} called at {} us at {} saw {value}, outside [{lowest}, {highest}]",
                    call.request, call.call_micros, call.node
                ));
            }
        }
        found.extend(order_violations(partition, &calls));
    }
    found
}

/// What real-time order alone rules out: a call that began after another was answered sees
/// at least that one's value (adds only raise the counter), and no two adds that took effect
/// see the same value (each raised it).
fn order_violations(partition: u64, calls: &[&CounterCall]) -> Vec<String> {
    let mut answered: Vec<(u64, u64)> = calls
        .iter()
        .filter_map(|call| match call.response {
            CounterResponse::Value { value, at_micros } => Some((at_micros, value)),
            _ => None,
        })
        .collect();
    answered.sort_unstable();
    // The highest value answered at or before each position, in answer order.
    let mut highest_so_far = Vec::with_capacity(answered.len());
    let mut highest = 0;
    for (_, value) in &answered {
        highest = highest.max(*value);
        highest_so_far.push(highest);
    }
    let mut found = Vec::new();
    let mut add_values = BTreeMap::new();
    for call in calls {
        let CounterResponse::Value { value, .. } = call.response else {
            continue;
        };
        let before = answered.partition_point(|(at_micros, _)| *at_micros < call.call_micros);
        if let Some(earlier) = before.checked_sub(1).map(|last| highest_so_far[last]) {
            if value < earlier {
                found.push(format!(
                    "partition {partition}: {:?} called at {} us at {} saw {value}, below {earlier} answered before it began",
                    call.request, call.call_micros, call.node
                ));
            }
        }
        if matches!(call.request, CounterRequest::Add { .. }) {
            if let Some(other) = add_values.insert(value, call.call_micros) {
                found.push(format!(
                    "partition {partition}: the adds called at {other} us and {} us both saw {value}",
                    call.call_micros
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(request: CounterRequest, call_micros: u64, response: CounterResponse) -> CounterCall {
        CounterCall {
            node: NodeId(1),
            partition: 0,
            request,
            call_micros,
            response,
        }
    }

    fn value(value: u64, at_micros: u64) -> CounterResponse {
        CounterResponse::Value { value, at_micros }
    }

    /// Adds of 2 (acknowledged at 10), 3 (no answer) and 4 (not applied), then reads.
    fn history(reads: &[(u64, u64, u64)]) -> BTreeMap<u64, CounterCall> {
        let mut calls = BTreeMap::new();
        calls.insert(0, call(CounterRequest::Add { amount: 2 }, 0, value(2, 10)));
        calls.insert(
            1,
            call(
                CounterRequest::Add { amount: 3 },
                5,
                CounterResponse::Unknown,
            ),
        );
        calls.insert(
            2,
            call(
                CounterRequest::Add { amount: 4 },
                6,
                CounterResponse::NotApplied,
            ),
        );
        for (offset, (called, answered, seen)) in reads.iter().enumerate() {
            calls.insert(
                10 + offset as u64,
                call(CounterRequest::Read, *called, value(*seen, *answered)),
            );
        }
        calls
    }

    #[test]
    fn reads_are_held_between_what_was_acknowledged_and_what_may_have_applied() {
        // The acknowledged 2 is in; the unknown 3 may or may not be.
        assert!(violations(&history(&[(20, 25, 2), (20, 25, 5)])).is_empty());
        // Below what was acknowledged before the read began (found by both rules).
        let found = violations(&history(&[(20, 25, 1)]));
        assert!(
            found.iter().any(|found| found.contains("outside [2, 5]")),
            "{found:?}"
        );
        // The add that did not apply counted.
        assert_eq!(violations(&history(&[(20, 25, 9)])).len(), 1);
        // A read answered before the unknown add was called cannot have seen it.
        assert_eq!(violations(&history(&[(1, 4, 5)])).len(), 1);
        // An add's own value includes itself.
        let mut calls = history(&[]);
        calls.insert(9, call(CounterRequest::Add { amount: 1 }, 30, value(1, 35)));
        let found = violations(&calls);
        assert!(
            found.iter().any(|found| found.contains("outside [3, 6]")),
            "the acknowledged 2 is missing: {found:?}"
        );
    }

    #[test]
    fn real_time_order_and_distinct_adds_are_held_too() {
        // Each read alone is within bounds (the unknown 3 may or may not have applied), but
        // the second began after the first saw 5, so it cannot see 2.
        let reads = history(&[(20, 25, 5), (30, 35, 2)]);
        let found = violations(&reads);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("below 5"), "{found:?}");
        // Two adds that both took effect cannot see the same value.
        let mut calls = history(&[]);
        calls.insert(9, call(CounterRequest::Add { amount: 3 }, 30, value(5, 40)));
        calls.insert(
            10,
            call(CounterRequest::Add { amount: 1 }, 31, value(5, 41)),
        );
        let found = violations(&calls);
        assert!(
            found.iter().any(|found| found.contains("both saw 5")),
            "{found:?}"
        );
    }
}
