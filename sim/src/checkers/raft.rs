//! Raft checkers, fed by every node's observations as they happen and by a look at the
//! cluster at the end.
//!
//! - election safety: at most one leader per partition and term, checked at every role change;
//! - up-to-date votes: a vote goes only to a candidate whose last log entry (as its request
//!   said) is at least as up to date as the voter's, judged on the wire as each vote leaves;
//! - commit safety: when an entry is first applied anywhere, no voter that lacks it could win
//!   an election (gather a majority of voters whose logs are no more up to date than its own):
//!   the Raft rule that makes a commit final, judged the moment it is relied on rather than
//!   when some later leader happens to overwrite it (Figure 8 needs that crash to show); and a
//!   leader moves its commit index past what it inherited only onto an entry of its own term
//!   (§5.4.2), judged after each of its node's steps;
//! - at most once: on each replica (per process life: a restart replays from the last
//!   checkpoint), a client command takes effect at most once, and never once a command of its
//!   session that took effect had carried a mark above it (its proposer had answered it, so
//!   what arrives now is a copy or a request given up on), judged at every apply;
//! - leader completeness: a leader of term T holds every entry applied by a node whose term
//!   was below T when it applied it (such an entry was committed before T), checked at every
//!   election;
//! - state machine safety: every replica applies the same entry at each index of a partition,
//!   checked at every apply (which also covers log matching and leader completeness for what
//!   was applied: a committed entry lost and replaced would apply differently somewhere);
//! - convergence (liveness): after healing, every live replica of a partition has a leader and
//!   has applied the same index by the end of the run;
//! - durability: after the final power cycle, a majority of every partition's voters still
//!   holds the last entry applied anywhere;
//! - linearizability of the kv history, per key (`linearizability`; batches and range reads
//!   projected onto their keys), range reads as one instant and batches as one (`atomicity`),
//!   and liveness of kv calls, reads and writes, issued once the cluster healed.

use super::Checker;
use crate::checkers::atomicity::{self, KvResponse, Projection};
use crate::checkers::linearizability::{check_history, CheckOutcome};
use crate::state_machine::{SimAnswer, SimOutcome};
use crate::world::{Violation, World};
use borough::ids::NodeId;
use borough::partition::host::HostOutput;
use borough::partition::PartitionId;
use borough::raft::{Message, MessageBody, Role};
use std::collections::{BTreeMap, BTreeSet};

/// A session's highest mark that took effect on a replica, and its ids at or above it that did.
type SessionTookEffect = (u64, BTreeSet<u64>);

/// Search steps per key before the linearizability check gives up on it: at least this many,
/// more for long histories (per operation on the busiest key). A correct history of the Raft
/// scenarios needs a few steps per operation; a broken one is usually refuted in well under a
/// million; the rest is headroom. Routed requests of named partitions may stay open for the
/// router's whole bound (5 s) while their first leader fails, so their histories have wide
/// windows: named-faults seed 3 needs between 2 and 20 million steps on one key of 301
/// operations (and passes).
const LINEARIZABILITY_STEPS_PER_KEY_MIN: u64 = 20_000_000;
const LINEARIZABILITY_STEPS_PER_OPERATION: u64 = 2_000;

#[derive(Debug, Default)]
pub struct RaftObservations {
    applied: BTreeMap<(PartitionId, u64), (u64, u64, NodeId)>,
    leaders: BTreeMap<(PartitionId, u64), NodeId>,
    /// The highest index applied anywhere per partition, with its term.
    highest_applied: BTreeMap<PartitionId, (u64, u64)>,
    /// Per partition and applier term, the highest entry (index, term) applied by a node in
    /// that term: everything a leader of a later term must hold.
    committed_before: BTreeMap<(PartitionId, u64), (u64, u64)>,
    /// Per partition, voter and term, the candidate the voter granted its vote to.
    votes: BTreeMap<(PartitionId, NodeId, u64), NodeId>,
    /// Per partition, candidate and term, the last log entry (index, term) its vote requests
    /// carried.
    vote_requests: BTreeMap<(PartitionId, NodeId, u64), (u64, u64)>,
    commit_safety_reported: usize,
    /// Per partition, leader and term: the commit index the leader held when first seen
    /// leading in that term.
    commit_inherited: BTreeMap<(PartitionId, NodeId, u64), u64>,
    /// Per partition, replica, its process life, proposer and proposer session: the highest
    /// mark a command that took effect there carried, and the request ids at or above it
    /// that took effect.
    took_effect: BTreeMap<(PartitionId, NodeId, u64, u32, u64), SessionTookEffect>,
    at_most_once_reported: usize,
    pub applies: u64,
    pub elections_won: u64,
    divergences_reported: usize,
}

/// Divergent applies reported per run: one shows the bug, a thousand only bury it.
const VIOLATIONS_PER_CHECKER_MAX: usize = 20;

impl RaftObservations {
    /// Distinct entries applied somewhere: the entries the cluster committed.
    pub fn committed_entries(&self) -> u64 {
        self.applied.len() as u64
    }
}

/// One vote per term: a voter that grants its vote in a term grants it to that candidate
/// only, across restarts too (the vote is durable before it is sent). Judged on the wire, as
/// each granted vote leaves its node, so a forgotten vote is caught whether or not the second
/// candidate goes on to win.
pub fn on_vote_sent(world: &mut World, partition: PartitionId, message: &Message) {
    let MessageBody::VoteResponse { granted: true } = message.body else {
        return;
    };
    let (voter, candidate, term) = (message.from, message.to, message.term);
    check_vote_up_to_date(world, partition, voter, candidate, term);
    match world.raft.votes.get(&(partition, voter, term)) {
        Some(&earlier) if earlier != candidate => {
            let now = world.now_micros();
            world.violations.push(Violation {
                at_micros: now,
                checker: Checker::OneVotePerTerm,
                message: format!(
                    "{partition} term {term}: {voter} voted for {earlier}, then for {candidate}"
                ),
            });
        }
        Some(_) => {}
        None => {
            world.raft.votes.insert((partition, voter, term), candidate);
        }
    }
}

/// A candidate's vote request left it: remember the last entry it claimed.
pub fn on_vote_requested(world: &mut World, partition: PartitionId, message: &Message) {
    if let MessageBody::Vote {
        last_log_index,
        last_log_term,
        ..
    } = message.body
    {
        world.raft.vote_requests.insert(
            (partition, message.from, message.term),
            (last_log_index, last_log_term),
        );
    }
}

/// (last term, last index) ordered as Raft §5.4.1 compares logs: the later last term wins,
/// then the longer log. Written here, not borrowed from the code under test.
fn as_up_to_date_as(candidate: (u64, u64), other: (u64, u64)) -> bool {
    candidate >= other
}

/// The voter granted `candidate` its vote in `term`. Its log then ended at its last entry of a
/// term below `term` (it knew no leader of `term`, or it would not have voted): entries of
/// `term` it holds now came later, from the winner, and a conflict they truncated only makes
/// the voter's log look shorter, so a violation found this way is real.
fn check_vote_up_to_date(
    world: &mut World,
    partition: PartitionId,
    voter: NodeId,
    candidate: NodeId,
    term: u64,
) {
    let Some(&(candidate_index, candidate_term)) =
        world.raft.vote_requests.get(&(partition, candidate, term))
    else {
        return;
    };
    let Some(log) = group_on(world, voter, partition).map(|group| group.log()) else {
        return;
    };
    let mut index = log.last_index();
    while index > log.snapshot_index() && log.term(index).is_some_and(|at| at >= term) {
        index -= 1;
    }
    let Some(voter_term) = log.term(index) else {
        return;
    };
    if voter_term >= term {
        return; // a snapshot of the new term replaced it all: nothing left to judge by
    }
    if !as_up_to_date_as((candidate_term, candidate_index), (voter_term, index)) {
        let now = world.now_micros();
        world.violations.push(Violation {
            at_micros: now,
            checker: Checker::UpToDateVotes,
            message: format!(
                "{partition} term {term}: {voter} (log ending at index {index}, term {voter_term}) voted for {candidate}, whose log ends at index {candidate_index}, term {candidate_term}"
            ),
        });
    }
}

/// Entry `index` (of `term`) was just applied for the first time anywhere, so it is committed
/// and must stay: every voter that lacks it must be unable to win an election, i.e. the
/// voters whose logs are no more up to date than its own (itself included) must not make a
/// majority. Nodes down are left out of the count (their logs are not at hand), which can only
/// hide a violation, never invent one.
fn check_commit_safety(
    world: &mut World,
    applier: NodeId,
    partition: PartitionId,
    index: u64,
    term: u64,
) {
    if world.raft.commit_safety_reported >= VIOLATIONS_PER_CHECKER_MAX {
        return;
    }
    let Some(configuration) =
        group_on(world, applier, partition).map(|group| group.configuration().clone())
    else {
        return;
    };
    // (holds the entry, (last term, last index)) of every voter that is up.
    let mut logs: BTreeMap<NodeId, (bool, (u64, u64))> = BTreeMap::new();
    for voter in configuration
        .voters
        .iter()
        .chain(&configuration.voters_outgoing)
    {
        let Some(log) = group_on(world, *voter, partition).map(|group| group.log()) else {
            continue;
        };
        let holds = log.snapshot_index() >= index || log.term(index) == Some(term);
        logs.insert(*voter, (holds, (log.last_term(), log.last_index())));
    }
    for (&lacking, &(holds, last)) in &logs {
        if holds {
            continue;
        }
        let would_grant: Vec<NodeId> = logs
            .iter()
            .filter(|(_, (_, other))| as_up_to_date_as(last, *other))
            .map(|(voter, _)| *voter)
            .collect();
        let majority_of = |voters: &std::collections::BTreeSet<NodeId>| {
            voters.is_empty()
                || would_grant
                    .iter()
                    .filter(|voter| voters.contains(voter))
                    .count()
                    > voters.len() / 2
        };
        if majority_of(&configuration.voters) && majority_of(&configuration.voters_outgoing) {
            world.raft.commit_safety_reported += 1;
            let now = world.now_micros();
            world.violations.push(Violation {
                at_micros: now,
                checker: Checker::CommitSafety,
                message: format!(
                    "{partition} index {index} (term {term}) was applied by {applier}, but {lacking} lacks it and could still be elected: its log ends at index {}, term {}, at least as up to date as those of {would_grant:?}",
                    last.1, last.0
                ),
            });
            return;
        }
    }
}

/// After a step of the node at `index`: each group it leads moved its commit index, if at all,
/// onto an entry of its own term. An entry of an earlier term on a majority may still be
/// overwritten (Figure 8); it is committed only by an entry of the leader's term after it.
pub fn after_node_step(world: &mut World, index: usize) {
    if world.config.partitions.is_none() {
        return;
    }
    let id = world.nodes[index].id;
    let mut offences = Vec::new();
    if let Some(host) = world.nodes[index].node().and_then(|node| node.partitions()) {
        // Only the groups it leads: a pass over every group after every step cost the
        // simulator two thirds of its time at 10,000 groups.
        for &partition in host.leading() {
            let Some(group) = host.group(partition) else {
                continue;
            };
            if group.role() != Role::Leader {
                continue;
            }
            let (term, log) = (group.term(), group.log());
            let committed = log.committed();
            let inherited = *world
                .raft
                .commit_inherited
                .entry((partition, id, term))
                .or_insert(committed);
            let committed_term = log.term(committed);
            if committed > inherited
                && committed_term != Some(term)
                && world.raft.commit_safety_reported < VIOLATIONS_PER_CHECKER_MAX
            {
                offences.push(format!(
                    "{partition} term {term}: leader {id} moved its commit index from {inherited} to {committed}, an entry of term {committed_term:?}, not its own"
                ));
                // Once per leader and term is enough.
                world
                    .raft
                    .commit_inherited
                    .insert((partition, id, term), u64::MAX);
            }
        }
    }
    let now = world.now_micros();
    for message in offences {
        world.raft.commit_safety_reported += 1;
        world.violations.push(Violation {
            at_micros: now,
            checker: Checker::CommitSafety,
            message,
        });
    }
}

pub fn on_output(world: &mut World, node: NodeId, output: &HostOutput<SimOutcome, SimAnswer>) {
    let now = world.now_micros();
    match output {
        HostOutput::Applied {
            partition,
            index,
            term,
            digest,
            applier_term,
            command,
        } => {
            world.raft.applies += 1;
            if let Some(command) = command.filter(|command| command.took_effect) {
                let life = world.nodes[world.index_of(node)].incarnation;
                let (mark, took_effect) = world
                    .raft
                    .took_effect
                    .entry((
                        *partition,
                        node,
                        life,
                        command.proposer,
                        command.proposer_session,
                    ))
                    .or_default();
                let problem = if command.request_id < *mark {
                    Some(format!(
                        "after a command of that session had marked every request below {} answered",
                        *mark
                    ))
                } else if !took_effect.insert(command.request_id) {
                    Some("a second time".to_string())
                } else {
                    None
                };
                *mark = (*mark).max(command.first_unanswered.min(command.request_id));
                // Ids below the mark are refused by it; only the rest need remembering.
                *took_effect = took_effect.split_off(mark);
                if let Some(problem) = problem {
                    if world.raft.at_most_once_reported < VIOLATIONS_PER_CHECKER_MAX {
                        world.raft.at_most_once_reported += 1;
                        world.violations.push(Violation {
                            at_micros: now,
                            checker: Checker::AtMostOnce,
                            message: format!(
                                "{partition} index {index}: {node} applied request {} of proposer {} session {} {problem}",
                                command.request_id, command.proposer, command.proposer_session
                            ),
                        });
                    }
                }
            }
            let reported = world.raft.divergences_reported;
            let best = world
                .raft
                .committed_before
                .entry((*partition, *applier_term))
                .or_default();
            if *index > best.0 {
                *best = (*index, *term);
            }
            match world.raft.applied.get(&(*partition, *index)) {
                Some((first_term, first_digest, first_node))
                    if (*first_term, *first_digest) != (*term, *digest)
                        && reported < VIOLATIONS_PER_CHECKER_MAX =>
                {
                    world.raft.divergences_reported += 1;
                    let message = format!(
                        "{partition} index {index}: {node} applied term {term} (digest {digest:016x}), {first_node} applied term {first_term} (digest {first_digest:016x})"
                    );
                    world.violations.push(Violation {
                        at_micros: now,
                        checker: Checker::StateMachineSafety,
                        message,
                    });
                }
                Some(_) => {}
                None => {
                    world
                        .raft
                        .applied
                        .insert((*partition, *index), (*term, *digest, node));
                    check_commit_safety(world, node, *partition, *index, *term);
                }
            }
            let highest = world.raft.highest_applied.entry(*partition).or_default();
            if *index > highest.0 {
                *highest = (*index, *term);
            }
        }
        HostOutput::RoleChanged {
            partition,
            role_state,
        } => {
            if role_state.role != Role::Leader {
                return;
            }
            world.raft.elections_won += 1;
            check_leader_completeness(world, node, *partition, role_state.term);
            match world.raft.leaders.get(&(*partition, role_state.term)) {
                Some(other) if *other != node => {
                    let message = format!(
                        "{partition} term {}: both {other} and {node} became leader",
                        role_state.term
                    );
                    world.violations.push(Violation {
                        at_micros: now,
                        checker: Checker::ElectionSafety,
                        message,
                    });
                }
                Some(_) => {}
                None => {
                    world
                        .raft
                        .leaders
                        .insert((*partition, role_state.term), node);
                }
            }
        }
        HostOutput::WriteAnswered { .. } | HostOutput::ReadAnswered { .. } => {}
    }
}

fn check_leader_completeness(world: &mut World, node: NodeId, partition: PartitionId, term: u64) {
    let Some((index, entry_term)) = world
        .raft
        .committed_before
        .range((partition, 0)..(partition, term))
        .map(|(_, entry)| *entry)
        .max()
    else {
        return;
    };
    let Some(log) = group_on(world, node, partition).map(|group| group.log()) else {
        return;
    };
    let holds = log.snapshot_index() >= index || log.term(index) == Some(entry_term);
    if !holds {
        let message = format!(
            "{partition} term {term}: leader {node} lacks entry {index} (term {entry_term}), applied before its term; its log ends at {} (term {})",
            log.last_index(),
            log.last_term()
        );
        world.violations.push(Violation {
            at_micros: world.now_micros(),
            checker: Checker::LeaderCompleteness,
            message,
        });
    }
}

/// The up replica of `partition` furthest along (highest last index, then term): its view of
/// the configuration is the latest.
/// `node`'s replica of `partition`, if the node is up and holds one.
fn group_on(
    world: &World,
    node: NodeId,
    partition: PartitionId,
) -> Option<&borough::raft::RaftGroup> {
    world.nodes[world.index_of(node)]
        .node()?
        .partitions()?
        .group(partition)
}

fn most_advanced(world: &World, partition: PartitionId) -> Option<&borough::raft::RaftGroup> {
    world
        .nodes
        .iter()
        .filter_map(|node| node.node()?.partitions()?.group(partition))
        .max_by_key(|group| (group.log().last_index(), group.term()))
}

/// Before the final power cycle: the healed cluster converged.
pub fn check_converged(world: &mut World) {
    let Some(partitions) = world.config.partitions.clone() else {
        return;
    };
    let now = world.now_micros();
    for partition in partitions.partition_ids() {
        let id = PartitionId(partition);
        let mut applied = Vec::new();
        let mut leaders = Vec::new();
        let Some(configuration) =
            most_advanced(world, id).map(|group| group.configuration().clone())
        else {
            continue;
        };
        let members = configuration
            .voters
            .iter()
            .chain(&configuration.voters_outgoing)
            .chain(&configuration.learners);
        for voter in members
            .copied()
            .collect::<std::collections::BTreeSet<NodeId>>()
        {
            let index = world.index_of(voter);
            let Some(status) = world.nodes[index]
                .node()
                .and_then(|node| node.partitions())
                .and_then(|host| host.status(id))
            else {
                continue;
            };
            applied.push((voter, status.applied));
            if status.role == Role::Leader {
                leaders.push(voter);
            }
        }
        if leaders.is_empty() {
            world.violations.push(Violation {
                at_micros: now,
                checker: Checker::RaftLiveness,
                message: format!("{id} has no leader at the end of the healed phase"),
            });
        }
        let distinct: std::collections::BTreeSet<u64> =
            applied.iter().map(|(_, index)| *index).collect();
        if distinct.len() > 1 {
            world.violations.push(Violation {
                at_micros: now,
                checker: Checker::RaftLiveness,
                message: format!("{id} replicas did not converge: applied {applied:?}"),
            });
        }
    }
}

/// After the final power cycle: the last applied entry of each partition survived on a
/// majority of its voters, and the kv history is linearizable.
pub fn check_durable_and_linearizable(world: &mut World) {
    let Some(partitions) = world.config.partitions.clone() else {
        return;
    };
    let now = world.now_micros();
    for partition in partitions.partition_ids() {
        let id = PartitionId(partition);
        let Some(&(index, term)) = world.raft.highest_applied.get(&id) else {
            continue;
        };
        // The voters that committed the entry: those of the configuration in force at it
        // (both halves of a joint one).
        let configuration = most_advanced(world, id).map_or_else(
            || {
                borough::raft::Configuration::with_voters(
                    partitions.voters(partition, &world.config.nodes),
                )
            },
            |group| group.configuration_at(index),
        );
        for voters in [&configuration.voters, &configuration.voters_outgoing] {
            if voters.is_empty() {
                continue;
            }
            let holding = voters
                .iter()
                .filter(|voter| {
                    group_on(world, **voter, id).is_some_and(|group| {
                        let log = group.log();
                        log.snapshot_index() > index || log.term(index) == Some(term)
                    })
                })
                .count();
            if holding < voters.len() / 2 + 1 {
                world.violations.push(Violation {
                    at_micros: now,
                    checker: Checker::RaftDurability,
                    message: format!(
                        "{id}: entry {index} (term {term}) was applied but only {holding} of {} voters {voters:?} hold it after a power cycle",
                        voters.len()
                    ),
                });
            }
        }
    }
    let liveness_from = world.config.safety_micros + world.config.checks.liveness_bound_ms * 1000;
    let liveness_to = world.config.workload_stop_micros();
    let in_liveness_window =
        |call_micros: u64| call_micros >= liveness_from && call_micros < liveness_to;
    let stuck_writes = world.kv_history.count(|record| {
        in_liveness_window(record.call.call_micros)
            && record.call.response == KvResponse::Indeterminate
    });
    let stuck_reads = world
        .kv_history
        .unanswered_reads
        .iter()
        .filter(|call_micros| in_liveness_window(**call_micros))
        .count();
    if stuck_writes + stuck_reads > 0 {
        world.violations.push(Violation {
            at_micros: now,
            checker: Checker::RaftLiveness,
            message: format!(
                "kv calls issued after the cluster healed got no answer: {stuck_writes} writes, {stuck_reads} reads"
            ),
        });
    }
    let calls = world.kv_history.calls();
    for message in atomicity::check(&calls) {
        world.violations.push(Violation {
            at_micros: now,
            checker: Checker::Atomicity,
            message,
        });
    }
    if world.violations.iter().any(|violation| {
        matches!(
            violation.checker,
            Checker::StateMachineSafety | Checker::ElectionSafety | Checker::LeaderCompleteness
        )
    }) {
        // The run already failed on the protocol's own invariants; searching a history that
        // broken would only spend time (it is the slowest case of the search).
        return;
    }
    // Each key's history alone first (linearizability), then with every batch's keys tied
    // together (atomicity): a torn batch is named as such, a stale read as what it is.
    for (projection, checker) in [
        (Projection::KeyByKey, Checker::Linearizability),
        (Projection::BatchesTied, Checker::Atomicity),
    ] {
        let operations = atomicity::project(&calls, projection);
        let mut operations_per_key: BTreeMap<&[u8], u64> = BTreeMap::new();
        for operation in &operations {
            *operations_per_key.entry(operation.key()).or_default() += 1;
        }
        let busiest_key_operations = operations_per_key.values().copied().max().unwrap_or(0);
        let steps_per_key = LINEARIZABILITY_STEPS_PER_KEY_MIN
            .max(busiest_key_operations.saturating_mul(LINEARIZABILITY_STEPS_PER_OPERATION));
        match check_history(&operations, steps_per_key) {
            CheckOutcome::Linearizable => continue,
            CheckOutcome::NotLinearizable { key, explanation } => {
                let what = match projection {
                    Projection::KeyByKey => String::new(),
                    Projection::BatchesTied => "with each batch taking effect on all of its keys at once (each key alone is linearizable), ".to_string(),
                };
                world.violations.push(Violation {
                    at_micros: now,
                    checker,
                    message: format!("{what}key {}: {explanation}", String::from_utf8_lossy(&key)),
                });
            }
            // A search that gave up proves nothing, so it fails the run (and is counted
            // apart, so a sweep tells a slow search from a refuted history).
            unknown @ CheckOutcome::Unknown { .. } => {
                if let CheckOutcome::Unknown { unknown_keys, .. } = unknown {
                    world.linearizability_unknown_keys = unknown_keys as u64;
                }
                world.violations.push(Violation {
                    at_micros: now,
                    checker: Checker::Linearizability,
                    message: format!(
                        "the search ran out of budget, which is not a pass: {unknown}"
                    ),
                });
            }
        }
        // A refuted or unfinished history is not searched again.
        break;
    }
}
